//! The Agent Client Protocol (ACP, JSON-RPC 2.0 over stdio, one JSON object per line), spoken
//! with agents run under permission_mode `ask` that have it (`opencode acp`, `gemini --acp`): the
//! handshake (`initialize`, then `session/new`, or `session/load` for the session's
//! conversation, then `session/prompt`), `session/request_permission` as permission
//! requests answered with the agent's own once-options, further input as more `session/prompt`s
//! (the agent runs them in turn), `session/cancel` for an interrupt, and the mapping of its
//! `session/update`s to job events (text, tool call and result, usage, init).
//!
//! An agent that keeps no conversation whose every turn was cancelled (Gemini CLI drops a turn
//! cancelled while the model answers, so a session whose only turn was interrupted is gone) cannot
//! load it in the session's next job: with `new_if_unloadable` that job starts a new conversation
//! instead (an `other` event `conversation_not_loaded` says so), rather than failing every job of
//! the session from then on.
//!
//! ACP's answers carry no message: a denial's message reaches the model as a further prompt
//! (`Permission denied: …`) sent once the denied turn ended (OpenCode ends a turn at a
//! rejection, and a prompt sent meanwhile ends with it unseen), whose end then stands for the
//! end of the turn that was denied.

use super::interactive::{Interactive, Signal, id_text, line, locked, refusal, request};
use super::{Image, JsonLines, OutputParser, Summary, input_json_of, other, str_at};
use crate::domain::{EventKind, Usage};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

const ID_INIT: &str = "agentd-init";
const ID_SESSION: &str = "agentd-session";
/// A prompt of the caller's (the job's prompt, SendInput).
const ID_PROMPT: &str = "agentd-prompt-";
/// A prompt agentd sends on its own (a denial's message).
const ID_NOTE: &str = "agentd-note-";

/// What the handshake asks of the agent for one job.
#[derive(Debug, Clone, Default)]
pub(super) struct Setup {
    /// The session's conversation to continue.
    pub resume: Option<String>,
    pub cwd: String,
    /// When `session/load` fails, `session/new` instead (see the top of this file).
    pub new_if_unloadable: bool,
    /// The agent replays a loaded conversation after answering `session/load`, up to its first
    /// `available_commands_update` (Gemini CLI: it starts the replay without waiting for it and
    /// sends its commands on the next timer tick; its stdout, a pipe, is written synchronously, so
    /// the whole replay is out first). Otherwise the replay ends with the answer (OpenCode).
    pub replay_ends_with_commands: bool,
}

/// One run's ACP connection (its state is the conversation's: session, open requests).
pub(super) struct Acp {
    setup: Setup,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    session: Option<String>,
    /// The conversation could not be loaded: a new one was asked for.
    fresh: bool,
    /// Prompts waiting for the session (each its content blocks).
    waiting: Vec<Value>,
    /// Open permission requests: the agent's id as sent, and its options.
    requests: HashMap<String, (Value, Value)>,
    /// Denial messages for the model, sent when the running turn ends.
    note: Option<String>,
    /// agentd's own prompts not answered yet, and caller turns that ended meanwhile.
    notes: u32,
    held: u32,
    interrupt_pending: bool,
    /// Caller prompts sent and not answered yet.
    in_flight: u32,
    /// Caller input held until the running turn ends: sent mid-turn, an agent such as OpenCode
    /// folds it into that turn, and the two turns' texts run together.
    held_input: std::collections::VecDeque<Value>,
}

impl Acp {
    pub(super) fn new(setup: Setup) -> Acp {
        Acp {
            setup,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    fn open_session(&self, resume: Option<&str>) -> String {
        let mut params = json!({"cwd": self.setup.cwd, "mcpServers": []});
        let method = match resume {
            Some(id) => {
                params["sessionId"] = json!(id);
                "session/load"
            }
            None => "session/new",
        };
        request(ID_SESSION, method, params)
    }
}

/// A prompt's content blocks holding only text.
fn text_content(text: &str) -> Value {
    json!([{"type": "text", "text": text}])
}

/// The text and an ACP `image` block per image (base64 `data` and its `mimeType`), which the
/// agents that advertise `promptCapabilities.image` (OpenCode) send to the model as an image.
fn content_with_images(text: &str, images: &[Image]) -> Value {
    let mut blocks = vec![json!({"type": "text", "text": text})];
    blocks.extend(
        images
            .iter()
            .map(|i| json!({"type": "image", "mimeType": i.media_type, "data": i.base64()})),
    );
    Value::Array(blocks)
}

impl State {
    fn prompt(&mut self, session: &str, prefix: &str, content: Value) -> String {
        self.next_id += 1;
        if prefix == ID_PROMPT {
            self.in_flight += 1;
        }
        let params = json!({"sessionId": session, "prompt": content});
        request(
            &format!("{prefix}{}", self.next_id),
            "session/prompt",
            params,
        )
    }

    fn cancel(&mut self) -> String {
        match &self.session {
            Some(session) => {
                self.interrupt_pending = false;
                let cancel = json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": session}});
                line(cancel)
            }
            None => {
                self.interrupt_pending = true;
                String::new()
            }
        }
    }

    /// The answer to one of agentd's own requests, and what it means for the controller.
    fn answered(&mut self, id: &str, v: &Value, resumed: Option<&str>) -> Option<Signal> {
        if id == ID_INIT {
            return None;
        }
        if id == ID_SESSION {
            if v.get("error").is_some() {
                // No session: the first turn cannot run (the parser records why).
                return Some(Signal::TurnEnded);
            }
            let found = v.pointer("/result/sessionId").and_then(Value::as_str);
            let session = found.or(resumed)?.to_owned();
            self.session = Some(session.clone());
            // One turn at a time: the first prompt now, what came after it once that turn ends.
            let mut waiting = std::mem::take(&mut self.waiting).into_iter();
            let mut out = waiting
                .next()
                .map(|content| self.prompt(&session, ID_PROMPT, content))
                .unwrap_or_default();
            self.held_input.extend(waiting);
            if self.interrupt_pending {
                out.push_str(&self.cancel());
            }
            return Some(Signal::Send(out));
        }
        if id.starts_with(ID_NOTE) {
            self.notes = self.notes.saturating_sub(1);
            if self.held > 0 {
                self.held -= 1;
                return Some(self.turn_ended());
            }
            return None;
        }
        if id.starts_with(ID_PROMPT) {
            self.in_flight = self.in_flight.saturating_sub(1);
            // A denial's message is still to come: this turn ends with it.
            if let (Some(note), Some(session)) = (self.note.take(), self.session.clone()) {
                self.notes += 1;
                self.held += 1;
                return Some(Signal::Send(self.prompt(
                    &session,
                    ID_NOTE,
                    text_content(&note),
                )));
            }
            if self.notes > 0 {
                self.held += 1;
                return None;
            }
            return Some(self.turn_ended());
        }
        None
    }

    /// A caller turn ended: the next held input, if any, starts its own turn now.
    fn turn_ended(&mut self) -> Signal {
        match (self.held_input.pop_front(), self.session.clone()) {
            (Some(content), Some(session)) => {
                Signal::TurnEndedThen(self.prompt(&session, ID_PROMPT, content))
            }
            _ => Signal::TurnEnded,
        }
    }

    fn asked(&mut self, id: &Value, method: &str, params: &Value) -> Signal {
        if method != "session/request_permission" {
            // fs/*, terminal/* and the like: agentd offered none of them.
            return refusal(id, method);
        }
        let key = id_text(id);
        let call = params.get("toolCall").unwrap_or(&Value::Null);
        let options = params.get("options").cloned().unwrap_or(json!([]));
        self.requests
            .insert(key.clone(), (id.clone(), options.clone()));
        let (tool, input) = tool_of(call);
        Signal::Permission {
            id: key,
            tool,
            input,
            suggestion: Some(options),
        }
    }
}

/// An ACP tool call as an agent-independent tool (`Bash`, `Write`, `Edit`, `Read`, `WebFetch`,
/// else the agent's own title) and its input: the agent's raw input with the fields the
/// permission rules look at (`command`, `file_path`, `url`).
fn tool_of(call: &Value) -> (String, Value) {
    let raw = call.get("rawInput").cloned().unwrap_or(json!({}));
    let mut input = match raw {
        Value::Object(m) => m,
        other => {
            let mut m = serde_json::Map::new();
            m.insert("input".into(), other);
            m
        }
    };
    let path = call
        .pointer("/locations/0/path")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| first_str(&input, &["file_path", "filePath", "filepath", "path"]));
    let kind = str_at(call, "kind").unwrap_or("other");
    let title = str_at(call, "title").unwrap_or_default();
    let tool = match kind {
        "execute" => "Bash",
        "edit" if creates(call) => "Write",
        "edit" | "delete" | "move" => "Edit",
        "read" => "Read",
        "fetch" => "WebFetch",
        "search" => "Grep",
        _ if title.is_empty() => "Tool",
        _ => title,
    };
    if let Some(p) = path {
        input.entry("file_path").or_insert(json!(p));
    }
    if tool == "Bash"
        && let Some(c) = first_str(&input, &["cmd"])
    {
        input.entry("command").or_insert(json!(c));
    }
    (tool.to_owned(), Value::Object(input))
}

fn first_str(m: &serde_json::Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| m.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
}

/// Whether an edit only creates files: every diff it shows starts from nothing.
fn creates(call: &Value) -> bool {
    let diffs: Vec<&Value> = call
        .get("content")
        .and_then(Value::as_array)
        .map(|c| {
            c.iter()
                .filter(|d| str_at(d, "type") == Some("diff"))
                .collect()
        })
        .unwrap_or_default();
    !diffs.is_empty()
        && diffs
            .iter()
            .all(|d| d.get("oldText").is_none_or(|t| t.is_null() || t == ""))
}

/// The option of `kinds` (in order of preference) the agent offered.
fn option(options: &Value, kinds: &[&str]) -> Option<Value> {
    let list = options.as_array()?;
    kinds.iter().find_map(|k| {
        list.iter()
            .find(|o| str_at(o, "kind") == Some(k))
            .and_then(|o| o.get("optionId").cloned())
    })
}

impl Interactive for Acp {
    fn prompt(&self, text: &str, images: &[Image]) -> String {
        self.state().waiting.push(content_with_images(text, images));
        let params = json!({
            "protocolVersion": 1,
            // agentd serves no files and no terminals: the agent uses its own.
            "clientCapabilities": {"fs": {"readTextFile": false, "writeTextFile": false}, "terminal": false},
        });
        request(ID_INIT, "initialize", params) + &self.open_session(self.setup.resume.as_deref())
    }

    fn observe(&self, text: &str) -> Option<Signal> {
        let v: Value = serde_json::from_str(text).ok()?;
        let mut state = self.state();
        match (v.get("id"), str_at(&v, "method")) {
            (Some(id), Some(method)) => {
                Some(state.asked(id, method, v.get("params").unwrap_or(&Value::Null)))
            }
            (Some(Value::String(id)), None) if unloadable(&self.setup, id, &v) && !state.fresh => {
                state.fresh = true;
                Some(Signal::Send(self.open_session(None)))
            }
            (Some(Value::String(id)), None) => {
                let resumed = self.setup.resume.as_deref().filter(|_| !state.fresh);
                state.answered(id, &v, resumed)
            }
            _ => None,
        }
    }

    fn answer(&self, id: &str, allow: bool, message: &str, _input: &Value) -> String {
        let mut state = self.state();
        let Some((raw, options)) = state.requests.remove(id) else {
            return String::new();
        };
        // Never an `always` option for a denial: it would outlive the job in the agent's config.
        let chosen = if allow {
            option(&options, &["allow_once", "allow_always"])
        } else {
            option(&options, &["reject_once"])
        };
        let outcome = match chosen {
            Some(option_id) => json!({"outcome": "selected", "optionId": option_id}),
            None => json!({"outcome": "cancelled"}),
        };
        let reply = line(json!({"jsonrpc": "2.0", "id": raw, "result": {"outcome": outcome}}));
        if !allow && !message.is_empty() {
            let note = format!("Permission denied: {message}");
            state.note = Some(match state.note.take() {
                Some(earlier) => format!("{earlier}\n{note}"),
                None => note,
            });
        }
        reply
    }

    fn user_message(&self, text: &str) -> String {
        let mut state = self.state();
        match state.session.clone() {
            Some(_) if state.in_flight > 0 || state.held > 0 || state.notes > 0 => {
                state.held_input.push_back(text_content(text));
                String::new()
            }
            Some(session) => state.prompt(&session, ID_PROMPT, text_content(text)),
            None => {
                state.waiting.push(text_content(text));
                String::new()
            }
        }
    }

    fn interrupt(&self, _n: u64) -> String {
        self.state().cancel()
    }

    fn parser(&self) -> Option<Box<dyn OutputParser>> {
        Some(Box::new(AcpParser {
            loading: self.setup.resume.is_some(),
            session: self.setup.resume.clone(),
            new_if_unloadable: self.setup.new_if_unloadable,
            replay_ends_with_commands: self.setup.replay_ends_with_commands,
            ..AcpParser::default()
        }))
    }
}

/// Whether `v`, the answer to `id`, is a refused `session/load` the job goes on from with a new
/// conversation.
fn unloadable(setup: &Setup, id: &str, v: &Value) -> bool {
    setup.new_if_unloadable
        && setup.resume.is_some()
        && id == ID_SESSION
        && v.get("error").is_some()
}

/// Updates that say nothing a job's events keep.
const QUIET: [&str; 6] = [
    "available_commands_update",
    "current_mode_update",
    "config_option_update",
    "session_info_update",
    "usage_update",
    "user_message_chunk",
];

/// Reads an ACP agent's output as job events.
#[derive(Debug, Default)]
pub(super) struct AcpParser {
    /// Until `session/load` is answered (or see [`Setup`]) the agent replays the conversation:
    /// not this job's.
    loading: bool,
    /// `session/load` was answered.
    loaded: bool,
    replay_ends_with_commands: bool,
    session: Option<String>,
    /// A refused load is followed by a new conversation, not an error (see [`Setup`]).
    new_if_unloadable: bool,
    /// The agent message being streamed, chunk by chunk.
    text: String,
    last_text: Option<String>,
    /// Tool calls seen, by id: their name and input, until they finish.
    calls: HashMap<String, (String, Value)>,
    finished: HashSet<String>,
    error: Option<String>,
    usage: Usage,
}

impl JsonLines for AcpParser {
    const ANY_OBJECT: bool = true;

    fn summarize(&self) -> Summary {
        let pending = (!self.text.is_empty()).then(|| self.text.clone());
        Summary {
            conversation_id: self.session.clone(),
            result: if self.error.is_none() {
                pending.or_else(|| self.last_text.clone())
            } else {
                None
            },
            error: self.error.clone(),
            usage: self.usage.clone(),
            structured: None,
        }
    }

    fn interpret(&mut self, v: &Value) -> Vec<EventKind> {
        let params = v.get("params").unwrap_or(&Value::Null);
        match (v.get("id").and_then(Value::as_str), str_at(v, "method")) {
            (_, Some("session/update")) if !self.loading => {
                let update = params.get("update").unwrap_or(&Value::Null);
                self.update(update)
            }
            (_, Some("session/update")) => {
                let update = params.pointer("/update/sessionUpdate");
                if self.loaded && update == Some(&json!("available_commands_update")) {
                    self.loading = false;
                }
                Vec::new()
            }
            (_, Some(method)) => {
                // A request of the agent's is never part of a replay.
                self.loading = false;
                let mut events = self.flush();
                events.push(other(method));
                events
            }
            (Some(id), None) => self.answer(id, v),
            (None, None) => Vec::new(),
        }
    }
}

impl AcpParser {
    fn update(&mut self, u: &Value) -> Vec<EventKind> {
        let kind = str_at(u, "sessionUpdate").unwrap_or_default();
        if kind == "agent_message_chunk" {
            if let Some(t) = u.pointer("/content/text").and_then(Value::as_str) {
                self.text.push_str(t);
            }
            return Vec::new();
        }
        let mut events = self.flush();
        match kind {
            "tool_call" | "tool_call_update" => events.extend(self.tool(u)),
            k if QUIET.contains(&k) || k.ends_with("_chunk") => {}
            k => events.push(other(k)),
        }
        events
    }

    /// The streamed agent message, as one text event.
    fn flush(&mut self) -> Vec<EventKind> {
        if self.text.is_empty() {
            return Vec::new();
        }
        let text = std::mem::take(&mut self.text);
        self.last_text = Some(text.clone());
        vec![EventKind::Text { text }]
    }

    /// A tool call is reported once it finished: its call and its result together.
    fn tool(&mut self, u: &Value) -> Vec<EventKind> {
        let Some(id) = str_at(u, "toolCallId").map(str::to_owned) else {
            return Vec::new();
        };
        let entry = self
            .calls
            .entry(id.clone())
            .or_insert_with(|| (String::new(), json!({})));
        if entry.0.is_empty()
            && let Some(t) = str_at(u, "title")
        {
            entry.0 = t.to_owned();
        }
        if let Some(raw) = u
            .get("rawInput")
            .filter(|r| r.as_object().is_some_and(|m| !m.is_empty()))
        {
            entry.1 = raw.clone();
        }
        let status = str_at(u, "status").unwrap_or_default();
        if !matches!(status, "completed" | "failed") || !self.finished.insert(id.clone()) {
            return Vec::new();
        }
        let (name, input) = self.calls.remove(&id).unwrap_or_default();
        vec![
            EventKind::ToolCall {
                id: id.clone(),
                name,
                input_json: input_json_of(Some(&input)),
            },
            EventKind::ToolResult {
                id,
                is_error: status == "failed",
                content: tool_output(u),
            },
        ]
    }

    fn answer(&mut self, id: &str, v: &Value) -> Vec<EventKind> {
        let mut events = self.flush();
        if id == ID_SESSION && self.loading && self.new_if_unloadable && v.get("error").is_some() {
            // The answer to the `session/new` sent instead comes next.
            self.loading = false;
            self.session = None;
            events.push(other("conversation_not_loaded"));
            return events;
        }
        if let Some(e) = v.get("error") {
            let message = str_at(e, "message").unwrap_or("the agent refused the request");
            self.error = Some(message.to_owned());
            events.push(other("error"));
            return events;
        }
        if id == ID_SESSION {
            self.loaded = true;
            self.loading = self.loading && self.replay_ends_with_commands;
            let found = v.pointer("/result/sessionId").and_then(Value::as_str);
            if let Some(s) = found {
                self.session = Some(s.to_owned());
            }
            events.push(EventKind::Init {
                conversation_id: self.session.clone().unwrap_or_default(),
                model: String::new(),
                tools: Vec::new(),
                agent_version: String::new(),
            });
        } else if id.starts_with(ID_PROMPT) || id.starts_with(ID_NOTE) {
            // Should the commands never come, a turn's end still ends the replay.
            self.loading = false;
            let u = v.pointer("/result/usage").unwrap_or(&Value::Null);
            let count = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            // Gemini CLI reports a turn's tokens only in its own `_meta`.
            let quota = v.pointer("/result/_meta/quota/token_count");
            let quota = |k: &str| quota.and_then(|q| q.get(k)).and_then(Value::as_u64);
            self.usage.input_tokens += quota("input_tokens").unwrap_or(count("inputTokens"));
            self.usage.output_tokens += quota("output_tokens").unwrap_or(count("outputTokens"));
            self.usage.cache_read_input_tokens += count("cachedReadTokens");
            self.usage.cache_creation_input_tokens += count("cachedWriteTokens");
            self.usage.num_turns = self.usage.num_turns.saturating_add(1);
            // Totals so far, so the last usage event of a job is its usage.
            events.push(EventKind::Usage(self.usage.clone()));
        }
        events
    }
}

/// A finished tool call's output: its text content, else its raw output.
fn tool_output(u: &Value) -> String {
    let texts: Vec<&str> = u
        .get("content")
        .and_then(Value::as_array)
        .map(|c| {
            c.iter()
                .filter_map(|b| b.pointer("/content/text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if !texts.is_empty() {
        return texts.join("\n");
    }
    match u.get("rawOutput") {
        Some(Value::Object(m)) => super::text_of(m.get("output").or(m.get("error"))),
        other => super::text_of(other),
    }
}

#[cfg(test)]
#[path = "acp_tests.rs"]
mod tests;
