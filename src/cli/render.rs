//! How the client shows things: a job's events for a person (text as it arrives, one line per
//! tool call, a spinner while the agent thinks on a terminal, a summary at the end), tables, and
//! the JSON objects printed one per line with `--json`. The formatting functions are pure; only
//! [`Printer`] writes.

use crate::domain::civil_from_days;
use crate::pb;
use crate::pb::job_event::Kind;
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SPINNER: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Which standard stream a write goes to.
#[derive(Clone, Copy)]
enum To {
    Out,
    Err,
}

/// Writes to stdout/stderr from a dedicated thread fed by a bounded channel (so a slow terminal
/// or pipe never blocks the runtime, and a fast job waits for it), and owns the spinner line.
pub struct Printer {
    tx: Option<mpsc::Sender<(To, Vec<u8>)>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Whether stdout is a terminal: spinner and colours only then.
    pub tty: bool,
    spinner: Option<Spinner>,
}

struct Spinner {
    label: String,
    since: Instant,
    frame: usize,
    drawn: bool,
}

impl Printer {
    pub fn new() -> Printer {
        let (tx, mut rx) = mpsc::channel::<(To, Vec<u8>)>(64);
        let writer = std::thread::spawn(move || {
            while let Some((to, bytes)) = rx.blocking_recv() {
                // A closed pipe is not an error: the reader went away, as with `| head`.
                let _ = match to {
                    To::Out => {
                        let mut o = std::io::stdout().lock();
                        o.write_all(&bytes).and_then(|()| o.flush())
                    }
                    To::Err => {
                        let mut e = std::io::stderr().lock();
                        e.write_all(&bytes).and_then(|()| e.flush())
                    }
                };
            }
        });
        Printer {
            tx: Some(tx),
            writer: Some(writer),
            tty: std::io::IsTerminal::is_terminal(&std::io::stdout()),
            spinner: None,
        }
    }

    async fn write(&mut self, to: To, bytes: Vec<u8>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((to, bytes)).await;
        }
    }

    /// Writes everything still queued and stops the writer thread.
    pub async fn close(&mut self) {
        self.clear_spinner().await;
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }

    /// Writes `s` to stdout (clearing the spinner first).
    pub async fn out(&mut self, s: &str) {
        self.clear_spinner().await;
        self.write(To::Out, s.as_bytes().to_vec()).await;
    }

    pub async fn line(&mut self, s: &str) {
        self.out(&format!("{s}\n")).await;
    }

    pub async fn json(&mut self, v: &Value) {
        self.line(&v.to_string()).await;
    }

    /// A listing: with `--json` one object a line (`to_json`), else a table of `header` and one
    /// row per item (`to_row`).
    pub async fn listing<T>(
        &mut self,
        json: bool,
        items: &[T],
        to_json: impl Fn(&T) -> Value,
        header: &[&str],
        to_row: impl Fn(&T) -> Vec<String>,
    ) {
        if json {
            for item in items {
                self.json(&to_json(item)).await;
            }
        } else {
            let rows: Vec<Vec<String>> = items.iter().map(to_row).collect();
            self.out(&table(header, &rows)).await;
        }
    }

    pub async fn err(&mut self, s: &str) {
        self.clear_spinner().await;
        self.write(To::Err, format!("{s}\n").into_bytes()).await;
    }

    pub fn style(&self) -> Style {
        Style { color: self.tty }
    }

    /// Shows (on a terminal) a spinner with `label` until the next output.
    pub fn spin(&mut self, label: &str) {
        if !self.tty {
            return;
        }
        match &mut self.spinner {
            Some(s) if s.label == label => {}
            _ => {
                self.spinner = Some(Spinner {
                    label: label.to_owned(),
                    since: Instant::now(),
                    frame: 0,
                    drawn: false,
                })
            }
        }
    }

    pub fn spinning(&self) -> bool {
        self.spinner.is_some()
    }

    /// Redraws the spinner's line; called on a timer.
    pub async fn tick(&mut self) {
        let Some(s) = &mut self.spinner else { return };
        s.frame = (s.frame + 1) % SPINNER.len();
        let line = format!(
            "\r\x1b[2K\x1b[2m{} {} {}s\x1b[0m",
            SPINNER[s.frame],
            s.label,
            s.since.elapsed().as_secs()
        );
        s.drawn = true;
        self.write(To::Out, line.into_bytes()).await;
    }

    async fn clear_spinner(&mut self) {
        if let Some(s) = self.spinner.take()
            && s.drawn
        {
            self.write(To::Out, b"\r\x1b[2K".to_vec()).await;
        }
    }
}

/// ANSI styling, on only for terminals.
#[derive(Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    pub fn dim(self, s: &str) -> String {
        self.paint("2", s)
    }
    pub fn tool(self, s: &str) -> String {
        self.paint("36", s)
    }
    pub fn bad(self, s: &str) -> String {
        self.paint("31", s)
    }
    pub fn good(self, s: &str) -> String {
        self.paint("32", s)
    }
}

/// Where a rendered piece of an event goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// To stdout, already newline-terminated.
    Out(String),
    /// To stderr, one line without its newline.
    Err(String),
}

/// Renders one event for a person; `None` for events a person does not need to see (usage,
/// keepalive-like `other` events, successful tool results). The `finished` event is rendered by
/// [`summary`] instead.
pub fn human_event(e: &pb::JobEvent, st: Style) -> Option<Piece> {
    match e.kind.as_ref()? {
        Kind::Started(s) => Some(Piece::Out(format!(
            "{}\n",
            st.dim(&format!("▶ {} started (pid {})", s.agent, s.pid))
        ))),
        Kind::Init(i) if !i.model.is_empty() => Some(Piece::Out(format!(
            "{}\n",
            st.dim(&format!("  model {}", i.model))
        ))),
        Kind::Text(t) => {
            let mut s = t.text.clone();
            if !s.ends_with('\n') {
                s.push('\n');
            }
            Some(Piece::Out(s))
        }
        Kind::ToolCall(c) => Some(Piece::Out(format!(
            "{}\n",
            st.tool(&format!("→ {}", tool_line(&c.name, &c.input_json)))
        ))),
        Kind::ToolResult(r) if r.is_error => Some(Piece::Out(format!(
            "{}\n",
            st.bad(&format!("  ✗ {}", one_line(&r.content, 160)))
        ))),
        Kind::Stderr(l) => Some(Piece::Err(format!("agent stderr: {}", l.line))),
        Kind::Unparsed(l) => Some(Piece::Err(format!("agent output: {}", l.line))),
        Kind::Truncated(t) => Some(Piece::Out(format!(
            "{}\n",
            st.bad(&format!("! output truncated: {}", t.reason))
        ))),
        Kind::LimitExceeded(l) => Some(Piece::Out(format!(
            "{}\n",
            st.bad(&format!("! limit exceeded: {}", l.message))
        ))),
        _ => None,
    }
}

/// One line for a tool call: its name and the one input field that says what it does.
pub fn tool_line(name: &str, input_json: &str) -> String {
    let input: Value = serde_json::from_str(input_json).unwrap_or(Value::Null);
    let key_fields = [
        "file_path",
        "command",
        "path",
        "pattern",
        "url",
        "query",
        "description",
    ];
    let detail = key_fields
        .iter()
        .find_map(|k| input.get(k).and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| match &input {
            Value::Null => String::new(),
            Value::Object(m) if m.is_empty() => String::new(),
            v => v.to_string(),
        });
    if detail.is_empty() {
        name.to_owned()
    } else {
        format!("{name} {}", one_line(&detail, 120))
    }
}

/// The first line of `s`, cut to `max` characters with an ellipsis.
pub fn one_line(s: &str, max: usize) -> String {
    let first = s.lines().next().unwrap_or("");
    let more = s.lines().nth(1).is_some();
    let mut out: String = first.chars().take(max).collect();
    if first.chars().count() > max || more {
        out.push('…');
    }
    out
}

/// The final line of a job: state, duration, cost, turns and tokens (and the error, if any).
pub fn summary(fin: &pb::JobFinished, duration: Option<Duration>, st: Style) -> String {
    let state = state_name(fin.state);
    let mut parts = vec![];
    if let Some(d) = duration {
        parts.push(fmt_duration(d));
    }
    if let Some(u) = &fin.usage {
        if let Some(c) = u.cost_usd {
            parts.push(format!("${c:.4}"));
        }
        if u.num_turns > 0 {
            parts.push(format!(
                "{} turn{}",
                u.num_turns,
                if u.num_turns == 1 { "" } else { "s" }
            ));
        }
        if u.input_tokens + u.output_tokens > 0 {
            parts.push(format!(
                "{} in / {} out tokens",
                u.input_tokens, u.output_tokens
            ));
        }
    }
    let head = if fin.state == pb::JobState::Succeeded as i32 {
        st.good(&format!("✓ {state}"))
    } else {
        st.bad(&format!("✗ {state}"))
    };
    let mut line = if parts.is_empty() {
        head
    } else {
        format!("{head} · {}", parts.join(" · "))
    };
    if !fin.error_message.is_empty() {
        line.push_str(&format!(
            "\n  {}",
            st.bad(&one_line(&fin.error_message, 300))
        ));
    }
    line
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let total = d.as_secs();
        format!("{}m{:02}s", total / 60, total % 60)
    }
}

/// The time between two timestamps, when both are known and ordered.
pub fn between(
    a: Option<&prost_types::Timestamp>,
    b: Option<&prost_types::Timestamp>,
) -> Option<Duration> {
    let (a, b) = (a?, b?);
    let nanos =
        |t: &prost_types::Timestamp| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    let d = nanos(b) - nanos(a);
    u64::try_from(d).ok().map(Duration::from_nanos)
}

pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Queued) => "queued",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        Ok(pb::JobState::TimedOut) => "timed_out",
        _ => "unspecified",
    }
}

fn file_type_name(t: i32) -> &'static str {
    match pb::FileType::try_from(t) {
        Ok(pb::FileType::Regular) => "file",
        Ok(pb::FileType::Directory) => "dir",
        Ok(pb::FileType::Symlink) => "symlink",
        _ => "unknown",
    }
}

pub fn change_name(k: i32) -> &'static str {
    match pb::ChangeKind::try_from(k) {
        Ok(pb::ChangeKind::Added) => "added",
        Ok(pb::ChangeKind::Modified) => "modified",
        Ok(pb::ChangeKind::Deleted) => "deleted",
        _ => "unspecified",
    }
}

/// `s`, or `-` for an empty cell.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// RFC 3339 in UTC, second precision; empty when unset.
pub fn fmt_time(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return String::new();
    };
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Aligns rows into columns separated by two spaces; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let fmt_row = |cells: Vec<String>| {
        let n = cells.len();
        let mut line = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 < n {
                let pad = widths[i].saturating_sub(c.chars().count());
                line.push_str(&c);
                line.push_str(&" ".repeat(pad + 2));
            } else {
                line.push_str(&c);
            }
        }
        line.trim_end().to_owned() + "\n"
    };
    let mut out = fmt_row(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        out.push_str(&fmt_row(r.clone()));
    }
    out
}

// ---- JSON objects (one per line with --json) ----

fn usage_json(u: Option<&pb::Usage>) -> Value {
    match u {
        None => Value::Null,
        Some(u) => json!({
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cache_read_input_tokens": u.cache_read_input_tokens,
            "cache_creation_input_tokens": u.cache_creation_input_tokens,
            "cost_usd": u.cost_usd,
            "num_turns": u.num_turns,
            "duration_ms": u.duration_ms,
        }),
    }
}

fn exit_json(e: Option<&pb::ExitStatus>) -> Value {
    match e.and_then(|e| e.status.as_ref()) {
        Some(pb::exit_status::Status::Code(c)) => json!({ "code": c }),
        Some(pb::exit_status::Status::Signal(s)) => json!({ "signal": s }),
        None => Value::Null,
    }
}

pub fn event_json(job_id: &str, e: &pb::JobEvent) -> Value {
    let (kind, data) = match &e.kind {
        Some(Kind::Started(s)) => (
            "started",
            json!({"agent": s.agent, "command": s.command, "pid": s.pid,
                   "resumed_conversation_id": s.resumed_conversation_id}),
        ),
        Some(Kind::Init(i)) => (
            "init",
            json!({"conversation_id": i.conversation_id, "model": i.model, "tools": i.tools,
                   "agent_version": i.agent_version}),
        ),
        Some(Kind::Text(t)) => ("text", json!({ "text": t.text })),
        Some(Kind::ToolCall(c)) => (
            "tool_call",
            json!({"id": c.id, "name": c.name,
                   "input": serde_json::from_str::<Value>(&c.input_json).unwrap_or(Value::String(c.input_json.clone()))}),
        ),
        Some(Kind::ToolResult(r)) => (
            "tool_result",
            json!({"id": r.id, "is_error": r.is_error, "content": r.content}),
        ),
        Some(Kind::Usage(u)) => ("usage", json!({ "usage": usage_json(Some(u)) })),
        Some(Kind::Stderr(l)) => ("stderr", json!({"line": l.line, "truncated": l.truncated})),
        Some(Kind::Unparsed(l)) => (
            "unparsed",
            json!({"line": l.line, "truncated": l.truncated}),
        ),
        Some(Kind::Other(o)) => ("other", json!({ "other_type": o.r#type })),
        Some(Kind::Truncated(t)) => ("truncated", json!({ "reason": t.reason })),
        Some(Kind::LimitExceeded(l)) => (
            "limit_exceeded",
            json!({ "limit": l.limit, "message": l.message }),
        ),
        Some(Kind::ModelCall(c)) => (
            "model_call",
            json!({"model": c.model, "api": c.api, "status": c.status,
                   "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
                   "cache_read_tokens": c.cache_read_tokens,
                   "cache_write_tokens": c.cache_write_tokens, "cost_usd": c.cost_usd,
                   "latency_ms": c.latency_ms}),
        ),
        Some(Kind::EgressDenied(d)) => ("egress_denied", json!({"host": d.host, "port": d.port})),
        Some(Kind::PermissionRequest(r)) => (
            "permission_request",
            json!({"request_id": r.request_id, "tool": r.tool,
                   "input": serde_json::from_str::<Value>(&r.input_json).unwrap_or(Value::String(r.input_json.clone())),
                   "suggestion": serde_json::from_str::<Value>(&r.suggestion_json).unwrap_or(Value::Null),
                   "timeout_seconds": r.timeout_seconds}),
        ),
        Some(Kind::PermissionResolved(r)) => (
            "permission_resolved",
            json!({"request_id": r.request_id, "who": r.who, "allow": r.allow, "message": r.message}),
        ),
        Some(Kind::Input(i)) => ("input", json!({ "text": i.text })),
        Some(Kind::TextDelta(t)) => ("text_delta", json!({ "text": t.text })),
        Some(Kind::ThinkingDelta(t)) => ("thinking_delta", json!({ "text": t.text })),
        Some(Kind::Thinking(t)) => ("thinking", json!({ "text": t.text })),
        Some(Kind::Plan(p)) => (
            "plan",
            json!({"items": p.items.iter()
                .map(|i| json!({"content": i.content, "status": i.status}))
                .collect::<Vec<_>>()}),
        ),
        Some(Kind::Finished(f)) => (
            "finished",
            json!({"state": state_name(f.state), "exit_status": exit_json(f.exit_status.as_ref()),
                   "result": f.result, "error_message": f.error_message,
                   "reason": f.reason, "usage": usage_json(f.usage.as_ref())}),
        ),
        None => ("unknown", json!({})),
    };
    let mut v = json!({
        "type": "event",
        "job_id": job_id,
        "seq": e.seq,
        "time": fmt_time(e.time.as_ref()),
        "kind": kind,
    });
    if let (Value::Object(m), Value::Object(d)) = (&mut v, data) {
        m.extend(d);
    }
    v
}

pub fn job_json(j: &pb::Job) -> Value {
    json!({
        "type": "job",
        "job_id": j.job_id,
        "session_id": j.session_id,
        "agent": j.agent,
        "model": j.model,
        "prompt": j.prompt,
        "state": state_name(j.state),
        "create_time": fmt_time(j.create_time.as_ref()),
        "start_time": fmt_time(j.start_time.as_ref()),
        "end_time": fmt_time(j.end_time.as_ref()),
        "queue_position": j.queue_position,
        "exit_status": exit_json(j.exit_status.as_ref()),
        "error_message": j.error_message,
        "result": j.result,
        "usage": usage_json(j.usage.as_ref()),
        "conversation_id": j.conversation_id,
        "timeout_seconds": j.timeout_seconds,
        "last_seq": j.last_seq,
    })
}

pub fn session_json(s: &pb::Session) -> Value {
    json!({
        "type": "session",
        "session_id": s.session_id,
        "labels": s.labels,
        "create_time": fmt_time(s.create_time.as_ref()),
        "expire_time": fmt_time(s.expire_time.as_ref()),
        "ttl_seconds": s.ttl_seconds,
        "file_count": s.file_count,
        "total_bytes": s.total_bytes,
        "job_count": s.job_count,
        "running_job_id": s.running_job_id,
        "conversation_id": s.conversation_id,
    })
}

pub fn file_json(f: &pb::FileInfo) -> Value {
    json!({
        "type": "file",
        "path": f.path,
        "file_type": file_type_name(f.r#type),
        "size": f.size,
        "mode": format!("{:o}", f.mode),
        "modify_time": fmt_time(f.modify_time.as_ref()),
        "sha256": f.sha256,
        "symlink_target": f.symlink_target,
    })
}

pub fn file_row(f: &pb::FileInfo, sha: bool) -> Vec<String> {
    let mut r = vec![
        file_type_name(f.r#type).to_owned(),
        format!("{:o}", f.mode & 0o7777),
        f.size.to_string(),
        fmt_time(f.modify_time.as_ref()),
    ];
    if sha {
        r.push(f.sha256.clone());
    }
    r.push(if f.symlink_target.is_empty() {
        f.path.clone()
    } else {
        format!("{} -> {}", f.path, f.symlink_target)
    });
    r
}

pub fn job_details(j: &pb::Job) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("job", j.job_id.clone()),
        ("session", j.session_id.clone()),
        ("state", state_name(j.state).to_owned()),
        ("agent", j.agent.clone()),
    ];
    if !j.model.is_empty() {
        rows.push(("model", j.model.clone()));
    }
    rows.push(("prompt", one_line(&j.prompt, 200)));
    rows.push(("created", fmt_time(j.create_time.as_ref())));
    if j.start_time.is_some() {
        rows.push(("started", fmt_time(j.start_time.as_ref())));
    }
    if j.end_time.is_some() {
        rows.push(("ended", fmt_time(j.end_time.as_ref())));
    }
    if let Some(d) = between(j.start_time.as_ref(), j.end_time.as_ref()) {
        rows.push(("duration", fmt_duration(d)));
    }
    if j.state == pb::JobState::Queued as i32 {
        rows.push(("queue position", j.queue_position.to_string()));
    }
    match exit_json(j.exit_status.as_ref()) {
        Value::Null => {}
        v => rows.push(("exit", v.to_string())),
    }
    if let Some(u) = &j.usage {
        if let Some(c) = u.cost_usd {
            rows.push(("cost", format!("${c:.4}")));
        }
        rows.push((
            "tokens",
            format!("{} in / {} out", u.input_tokens, u.output_tokens),
        ));
        rows.push(("turns", u.num_turns.to_string()));
    }
    if !j.error_message.is_empty() {
        rows.push(("error", j.error_message.clone()));
    }
    if !j.result.is_empty() {
        rows.push(("result", j.result.clone()));
    }
    rows.push(("timeout", format!("{}s", j.timeout_seconds)));
    rows.push(("events", j.last_seq.to_string()));
    details(&rows)
}

pub fn session_details(s: &pb::Session) -> String {
    let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    details(&[
        ("session", s.session_id.clone()),
        ("created", fmt_time(s.create_time.as_ref())),
        ("expires", fmt_time(s.expire_time.as_ref())),
        ("ttl", format!("{}s", s.ttl_seconds)),
        ("files", s.file_count.to_string()),
        ("bytes", s.total_bytes.to_string()),
        ("jobs", s.job_count.to_string()),
        ("running job", s.running_job_id.clone()),
        ("conversation", s.conversation_id.clone()),
        ("labels", labels.join(",")),
    ])
}

fn details(rows: &[(&str, String)]) -> String {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Style = Style { color: false };

    fn ev(kind: Kind) -> pb::JobEvent {
        pb::JobEvent {
            seq: 7,
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            raw: String::new(),
            kind: Some(kind),
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = |s| {
            fmt_time(Some(&prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            }))
        };
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        assert_eq!(t(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(t(-1), "1969-12-31T23:59:59Z");
        assert_eq!(fmt_time(None), "");
    }

    #[test]
    fn tool_calls_are_one_line_with_their_key_input() {
        let call = ev(Kind::ToolCall(pb::ToolCall {
            id: "t1".into(),
            name: "Bash".into(),
            input_json: r#"{"command":"python3 hello.py\necho more","description":"run"}"#.into(),
        }));
        assert_eq!(
            human_event(&call, PLAIN),
            Some(Piece::Out("→ Bash python3 hello.py…\n".into()))
        );
        assert_eq!(tool_line("TodoWrite", "{}"), "TodoWrite");
        assert_eq!(tool_line("X", r#"{"n":1}"#), r#"X {"n":1}"#);
        let ok = ev(Kind::ToolResult(pb::ToolResult {
            id: "t1".into(),
            is_error: false,
            content: "hi".into(),
        }));
        assert_eq!(human_event(&ok, PLAIN), None);
        let bad = ev(Kind::ToolResult(pb::ToolResult {
            id: "t1".into(),
            is_error: true,
            content: "Exit code 2\nboom".into(),
        }));
        assert_eq!(
            human_event(&bad, PLAIN),
            Some(Piece::Out("  ✗ Exit code 2…\n".into()))
        );
    }

    #[test]
    fn text_is_printed_as_is_and_stderr_goes_to_stderr() {
        let t = ev(Kind::Text(pb::TextEvent {
            text: "hello".into(),
        }));
        assert_eq!(human_event(&t, PLAIN), Some(Piece::Out("hello\n".into())));
        let e = ev(Kind::Stderr(pb::OutputLine {
            line: "warn".into(),
            truncated: false,
        }));
        assert_eq!(
            human_event(&e, PLAIN),
            Some(Piece::Err("agent stderr: warn".into()))
        );
    }

    #[test]
    fn summary_has_state_duration_cost_and_error() {
        let fin = pb::JobFinished {
            state: pb::JobState::Failed as i32,
            error_message: "API Error: 500 boom".into(),
            usage: Some(pb::Usage {
                cost_usd: Some(0.0012),
                num_turns: 1,
                input_tokens: 100,
                output_tokens: 20,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            summary(&fin, Some(Duration::from_millis(2340)), PLAIN),
            "✗ failed · 2.3s · $0.0012 · 1 turn · 100 in / 20 out tokens\n  API Error: 500 boom"
        );
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn event_json_is_flat_and_typed() {
        let call = ev(Kind::ToolCall(pb::ToolCall {
            id: "t1".into(),
            name: "Write".into(),
            input_json: r#"{"file_path":"a.txt"}"#.into(),
        }));
        let v = event_json("job_1", &call);
        assert_eq!(v["type"], "event");
        assert_eq!(v["kind"], "tool_call");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["input"]["file_path"], "a.txt");
        assert_eq!(v["time"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }
}
