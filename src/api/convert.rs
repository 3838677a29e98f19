//! Conversions between the domain and `agentd.v1` messages, and opaque page tokens.

use crate::core::{JobView, SessionView};
use crate::domain::{
    ChangeKind, EventKind, ExitStatus, FileChange, FileEntry, FileKind, FinalState, JobEvent,
    JobState, Outcome, PageCursor, Timestamp, Usage,
};
use crate::error::{Error, Reason, Result};
use crate::pb;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub fn ts(t: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.seconds_nanos();
    prost_types::Timestamp { seconds, nanos }
}

/// Page size with a default and a ceiling; negative is refused.
pub fn page_size(n: i32, default: usize, max: usize) -> Result<usize> {
    match n {
        0 => Ok(default),
        n if n < 0 => Err(Error::invalid(
            Reason::InvalidField,
            "page_size",
            format!("page_size must not be negative, got {n}"),
        )),
        n => Ok((n as usize).min(max)),
    }
}

fn bad_token() -> Error {
    Error::invalid(
        Reason::InvalidPageToken,
        "page_token",
        "page_token is not a token from this listing",
    )
}

/// Wraps a listing position as an opaque token; `kind` keeps tokens of different listings apart.
fn encode_token(kind: &str, body: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}|{body}"))
}

/// The body of a token of listing `kind`; `None` for the empty token (first page).
fn decode_token(kind: &str, token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad_token())?;
    let text = String::from_utf8(raw).map_err(|_| bad_token())?;
    match text.split_once('|') {
        Some((k, body)) if k == kind => Ok(Some(body.to_owned())),
        _ => Err(bad_token()),
    }
}

/// Token for a newest-first listing position (sessions `s`, jobs `j`).
pub fn encode_cursor(kind: &str, c: &PageCursor) -> String {
    encode_token(kind, &format!("{}|{}", c.created.micros(), c.id))
}

pub fn decode_cursor(kind: &str, token: &str) -> Result<Option<PageCursor>> {
    let Some(body) = decode_token(kind, token)? else {
        return Ok(None);
    };
    let (micros, id) = body.split_once('|').ok_or_else(bad_token)?;
    let micros: i64 = micros.parse().map_err(|_| bad_token())?;
    Ok(Some(PageCursor {
        created: Timestamp(micros),
        id: id.to_owned(),
    }))
}

/// Listings in path order, whose tokens hold the last path returned.
#[derive(Clone, Copy)]
pub enum PathListing {
    /// ListFiles.
    Files,
    /// GetJobOutputs.
    Outputs,
}

impl PathListing {
    fn kind(self) -> &'static str {
        match self {
            PathListing::Files => "f",
            PathListing::Outputs => "o",
        }
    }
}

/// Token for a position in a listing in path order (the last path returned).
pub fn encode_path_token(listing: PathListing, path: &str) -> String {
    encode_token(listing.kind(), path)
}

pub fn decode_path_token(listing: PathListing, token: &str) -> Result<Option<String>> {
    decode_token(listing.kind(), token)
}

pub fn session(v: SessionView) -> pb::Session {
    let s = v.session;
    pb::Session {
        session_id: s.id.to_string(),
        labels: s.labels.into_iter().collect(),
        create_time: Some(ts(s.created)),
        expire_time: Some(ts(s.expires)),
        ttl_seconds: u32::try_from(s.ttl.as_secs()).unwrap_or(u32::MAX),
        file_count: v.usage.files,
        total_bytes: v.usage.bytes,
        job_count: s.job_count,
        running_job_id: v.running_job.unwrap_or_default(),
        conversation_id: s.conversation_id.unwrap_or_default(),
    }
}

pub fn final_state(s: FinalState) -> pb::JobState {
    match s {
        FinalState::Succeeded => pb::JobState::Succeeded,
        FinalState::Failed => pb::JobState::Failed,
        FinalState::Cancelled => pb::JobState::Cancelled,
        FinalState::TimedOut => pb::JobState::TimedOut,
    }
}

/// The state names the store filters on, from the wire enum.
pub fn state_name(s: i32) -> Result<&'static str> {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Queued) => Ok("QUEUED"),
        Ok(pb::JobState::Running) => Ok("RUNNING"),
        Ok(pb::JobState::Succeeded) => Ok("SUCCEEDED"),
        Ok(pb::JobState::Failed) => Ok("FAILED"),
        Ok(pb::JobState::Cancelled) => Ok("CANCELLED"),
        Ok(pb::JobState::TimedOut) => Ok("TIMED_OUT"),
        _ => Err(Error::invalid(
            Reason::InvalidField,
            "states",
            format!("states: {s} is not a valid JobState"),
        )),
    }
}

pub fn exit(e: ExitStatus) -> pb::ExitStatus {
    pb::ExitStatus {
        status: Some(match e {
            ExitStatus::Code(c) => pb::exit_status::Status::Code(c),
            ExitStatus::Signal(s) => pb::exit_status::Status::Signal(s),
        }),
    }
}

pub fn usage(u: Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_read_input_tokens: u.cache_read_input_tokens,
        cache_creation_input_tokens: u.cache_creation_input_tokens,
        cost_usd: u.cost_usd,
        num_turns: u.num_turns,
        duration_ms: u.duration_ms,
    }
}

pub fn job(v: JobView) -> pb::Job {
    let j = v.job;
    let schema = j.spec.caps.output_schema.is_some();
    let mut out = pb::Job {
        job_id: j.id.to_string(),
        session_id: j.session_id.to_string(),
        agent: j.spec.agent,
        model: j.spec.model.unwrap_or_default(),
        prompt: j.spec.prompt,
        create_time: Some(ts(j.created)),
        queue_position: v.queue_position.unwrap_or(0),
        result: j.result,
        usage: Some(usage(j.usage)),
        conversation_id: j.conversation_id.unwrap_or_default(),
        timeout_seconds: u32::try_from(j.spec.timeout.as_secs()).unwrap_or(u32::MAX),
        last_seq: j.last_seq,
        rewound_past: v.rewound_past,
        ..Default::default()
    };
    match j.state {
        JobState::Queued => out.state = pb::JobState::Queued as i32,
        JobState::Running { started } => {
            out.state = pb::JobState::Running as i32;
            out.start_time = Some(ts(started));
        }
        JobState::Finished(f) => {
            out.state = final_state(f.outcome.final_state()) as i32;
            out.start_time = f.started.map(ts);
            out.end_time = Some(ts(f.ended));
            out.exit_status = f.exit.map(exit);
            if !matches!(f.outcome, Outcome::Succeeded) {
                out.error_message = f.outcome.message();
            }
            out.reason = f.outcome.reason().to_owned();
            // With a schema, a successful job's result is the validated JSON (run/schema.rs).
            if matches!(f.outcome, Outcome::Succeeded) && schema {
                out.structured_result.clone_from(&out.result);
            }
        }
    }
    out
}

fn line(line: String, truncated: bool) -> pb::OutputLine {
    pb::OutputLine { line, truncated }
}

pub fn event(e: JobEvent) -> pb::JobEvent {
    use pb::job_event::Kind;
    let kind = match e.kind {
        EventKind::Started {
            agent,
            command,
            pid,
            resumed_conversation_id,
        } => Kind::Started(pb::JobStarted {
            agent,
            command,
            pid,
            resumed_conversation_id: resumed_conversation_id.unwrap_or_default(),
        }),
        EventKind::Init {
            conversation_id,
            model,
            tools,
            agent_version,
        } => Kind::Init(pb::AgentInit {
            conversation_id,
            model,
            tools,
            agent_version,
        }),
        EventKind::Text { text } => Kind::Text(pb::TextEvent { text }),
        EventKind::ToolCall {
            id,
            name,
            input_json,
        } => Kind::ToolCall(pb::ToolCall {
            id,
            name,
            input_json,
        }),
        EventKind::ToolResult {
            id,
            is_error,
            content,
        } => Kind::ToolResult(pb::ToolResult {
            id,
            is_error,
            content,
        }),
        EventKind::Usage(u) => Kind::Usage(usage(u)),
        EventKind::Stderr { line: l, truncated } => Kind::Stderr(line(l, truncated)),
        EventKind::Unparsed { line: l, truncated } => Kind::Unparsed(line(l, truncated)),
        EventKind::Other { r#type } => Kind::Other(pb::OtherEvent { r#type }),
        EventKind::Truncated { reason } => Kind::Truncated(pb::OutputTruncated { reason }),
        EventKind::LimitExceeded { limit, message } => {
            Kind::LimitExceeded(pb::LimitExceeded { limit, message })
        }
        EventKind::Finished {
            state,
            exit: ex,
            result,
            error_message,
            usage: u,
            reason,
        } => Kind::Finished(pb::JobFinished {
            state: final_state(state) as i32,
            exit_status: ex.map(exit),
            result,
            error_message,
            usage: Some(usage(u)),
            reason,
        }),
        EventKind::ModelCall(c) => Kind::ModelCall(model_call(c)),
        EventKind::EgressDenied { host, port } => Kind::EgressDenied(pb::EgressDenied {
            host,
            port: u32::from(port),
        }),
        EventKind::PermissionRequest {
            request_id,
            tool,
            input_json,
            suggestion_json,
            timeout_seconds,
        } => Kind::PermissionRequest(pb::PermissionRequest {
            request_id,
            tool,
            input_json,
            suggestion_json,
            timeout_seconds,
        }),
        EventKind::PermissionResolved {
            request_id,
            who,
            allow,
            message,
        } => Kind::PermissionResolved(pb::PermissionResolved {
            request_id,
            who,
            allow,
            message,
        }),
        EventKind::Input { text } => Kind::Input(pb::InputEvent { text }),
        EventKind::TextDelta { text } => Kind::TextDelta(pb::TextEvent { text }),
        EventKind::ThinkingDelta { text } => Kind::ThinkingDelta(pb::TextEvent { text }),
        EventKind::Thinking { text } => Kind::Thinking(pb::TextEvent { text }),
        EventKind::Plan { items } => Kind::Plan(pb::PlanEvent {
            items: items
                .into_iter()
                .map(|i| pb::PlanItem {
                    content: i.content,
                    status: i.status,
                })
                .collect(),
        }),
    };
    pb::JobEvent {
        seq: e.seq,
        time: Some(ts(e.time)),
        raw: e.raw.unwrap_or_default(),
        kind: Some(kind),
    }
}

pub fn file(f: FileEntry) -> pb::FileInfo {
    pb::FileInfo {
        path: f.path,
        r#type: match f.kind {
            FileKind::Regular => pb::FileType::Regular,
            FileKind::Directory => pb::FileType::Directory,
            FileKind::Symlink => pb::FileType::Symlink,
        } as i32,
        size: f.size,
        mode: f.mode,
        modify_time: Some(ts(f.modified)),
        sha256: f.sha256.unwrap_or_default(),
        symlink_target: f.symlink_target.unwrap_or_default(),
    }
}

pub fn change(c: FileChange) -> pb::FileChange {
    pb::FileChange {
        path: c.path,
        kind: match c.kind {
            ChangeKind::Added => pb::ChangeKind::Added,
            ChangeKind::Modified => pb::ChangeKind::Modified,
            ChangeKind::Deleted => pb::ChangeKind::Deleted,
            ChangeKind::Renamed => pb::ChangeKind::Renamed,
        } as i32,
        file: c.entry.map(file),
        from_path: c.from_path.unwrap_or_default(),
        before: c.before.map(file),
    }
}

/// A gateway model call (without its job, session and agent, which the caller adds when needed).
pub fn model_call(c: crate::domain::ModelCall) -> pb::ModelCall {
    pb::ModelCall {
        time: Some(ts(c.time)),
        model: c.model,
        api: c.api,
        status: c.status,
        input_tokens: c.input_tokens,
        output_tokens: c.output_tokens,
        cache_read_tokens: c.cache_read_tokens,
        cache_write_tokens: c.cache_write_tokens,
        cost_usd: c.cost_usd,
        latency_ms: c.latency_ms,
        job_id: String::new(),
        session_id: String::new(),
        agent: String::new(),
    }
}

pub fn file_event(e: crate::workspace::WatchEvent) -> pb::FileEvent {
    use crate::workspace::ChangeType;
    let kind = match e.change {
        ChangeType::Created => pb::FileEventKind::Created,
        ChangeType::Modified => pb::FileEventKind::Modified,
        ChangeType::Deleted => pb::FileEventKind::Deleted,
        ChangeType::Renamed => pb::FileEventKind::Renamed,
        ChangeType::Overflow => pb::FileEventKind::Overflow,
    };
    let r#type = match e.kind {
        Some(FileKind::Regular) => pb::FileType::Regular,
        Some(FileKind::Directory) => pb::FileType::Directory,
        Some(FileKind::Symlink) => pb::FileType::Symlink,
        None => pb::FileType::Unspecified,
    };
    pb::FileEvent {
        seq: e.seq,
        kind: kind as i32,
        path: e.path,
        from_path: e.from_path,
        r#type: r#type as i32,
        size: e.size,
        time: Some(ts(Timestamp(e.time_micros))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_misuse() {
        let c = PageCursor {
            created: Timestamp(123),
            id: "ses_x".into(),
        };
        let t = encode_cursor("s", &c);
        assert_eq!(decode_cursor("s", &t).unwrap(), Some(c));
        assert!(decode_cursor("j", &t).is_err());
        assert!(decode_cursor("s", "!!!").is_err());
        assert_eq!(decode_cursor("s", "").unwrap(), None);
        assert_eq!(
            decode_path_token(
                PathListing::Files,
                &encode_path_token(PathListing::Files, "a/b")
            )
            .unwrap()
            .unwrap(),
            "a/b"
        );
        // A token of one path listing is not one of the other.
        let outputs = encode_path_token(PathListing::Outputs, "a/b");
        assert!(decode_path_token(PathListing::Files, &outputs).is_err());
    }
}
