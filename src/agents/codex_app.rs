//! Codex under permission_mode `ask` (issue #17): `codex app-server`, JSON-RPC 2.0 over stdio, one
//! JSON object per line. Owns the handshake (`initialize`, `thread/start` or `thread/resume` for
//! the session's thread, then `turn/start` with the prompt and the job's images), the answers to
//! Codex's approval requests (`item/commandExecution/requestApproval`,
//! `item/fileChange/requestApproval`), further input (`turn/start`, which joins the running turn
//! when there is one), `turn/interrupt`, and the mapping of its notifications to the events `codex
//! exec --json` gives (by rewriting them into that shape for [`CodexParser`]), so that jobs that
//! ask look like jobs that don't.
//!
//! Codex's approval answers carry no message; a denial's message reaches the model as a user
//! message steered into the same turn (`turn/steer`), written before the answer so that the
//! model's next request carries both.

use super::codex::CodexParser;
use super::interactive::{Interactive, Signal, id_text, line, locked, refusal, request};
use super::{Image, JsonLines, OutputParser, Summary, str_at};
use crate::domain::EventKind;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

/// agentd's own request ids, told apart from Codex's (numbers) by their prefix.
const ID_THREAD: &str = "agentd-thread";
const ID_TURN: &str = "agentd-turn-";

/// What the handshake asks of Codex for one job.
#[derive(Debug, Clone, Default)]
pub(super) struct Setup {
    /// The session's thread to continue.
    pub resume: Option<String>,
    pub cwd: String,
    pub sandbox: String,
    pub model: Option<String>,
    pub developer_instructions: Option<String>,
    /// The job's `output_schema` (checked JSON at submit): every turn agentd starts carries it
    /// as `outputSchema`, the app server's constraint on the turn's final message, as `codex
    /// exec --output-schema` does for a job that does not ask.
    pub output_schema: Option<Value>,
}

/// `codex app-server`'s protocol for one run (its state is the conversation's: thread, turn,
/// open approval requests).
pub(super) struct CodexApp {
    setup: Setup,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    thread: Option<String>,
    /// The running turn.
    turn: Option<String>,
    /// Turns agentd started (a `turn/start` answered with one of these joined it).
    turns: HashSet<String>,
    /// User messages waiting for the thread (each its `input` items).
    waiting: Vec<Value>,
    interrupt_pending: bool,
    /// Open approval requests: Codex's id as sent, and the turn asking.
    requests: HashMap<String, (Value, String)>,
    /// File changes by item id (an approval request names only the item).
    changes: HashMap<String, Value>,
    /// The job's schema for every turn's final message (see [`Setup::output_schema`]).
    output_schema: Option<Value>,
}

impl CodexApp {
    pub(super) fn new(setup: Setup) -> CodexApp {
        let state = State {
            output_schema: setup.output_schema.clone(),
            ..State::default()
        };
        CodexApp {
            setup,
            state: Mutex::new(state),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    fn handshake(&self) -> String {
        let s = &self.setup;
        let mut params = json!({
            "cwd": s.cwd,
            "approvalPolicy": "untrusted",
            "sandbox": s.sandbox,
        });
        if let Some(m) = &s.model {
            params["model"] = json!(m);
        }
        if let Some(d) = &s.developer_instructions {
            params["developerInstructions"] = json!(d);
        }
        let method = match &s.resume {
            Some(id) => {
                params["threadId"] = json!(id);
                "thread/resume"
            }
            None => "thread/start",
        };
        let init = json!({"name": "agentd", "version": env!("CARGO_PKG_VERSION")});
        [
            request("agentd-init", "initialize", json!({"clientInfo": init})),
            line(json!({"jsonrpc": "2.0", "method": "initialized"})),
            request(ID_THREAD, method, params),
        ]
        .concat()
    }
}

fn text_input(text: &str) -> Value {
    json!([{"type": "text", "text": text}])
}

/// The text and an `image` input item per image, its bytes as a `data:` URL (the bytes agentd
/// read and checked, not a path Codex would read again).
fn input_with_images(text: &str, images: &[Image]) -> Value {
    let mut items = vec![json!({"type": "text", "text": text})];
    items.extend(
        images
            .iter()
            .map(|i| json!({"type": "image", "url": i.data_url()})),
    );
    Value::Array(items)
}

impl State {
    fn turn_start(&mut self, thread: &str, input: Value) -> String {
        self.next_id += 1;
        let id = format!("{ID_TURN}{}", self.next_id);
        let mut params = json!({"threadId": thread, "input": input});
        if let Some(schema) = &self.output_schema {
            params["outputSchema"] = schema.clone();
        }
        request(&id, "turn/start", params)
    }

    fn interrupt(&mut self) -> String {
        match (&self.thread, &self.turn) {
            (Some(thread), Some(turn)) => {
                self.interrupt_pending = false;
                self.next_id += 1;
                let id = format!("agentd-interrupt-{}", self.next_id);
                request(
                    &id,
                    "turn/interrupt",
                    json!({"threadId": thread, "turnId": turn}),
                )
            }
            // No turn yet: sent once one starts.
            _ => {
                self.interrupt_pending = true;
                String::new()
            }
        }
    }

    /// The answer to one of agentd's own requests, and what it means for the controller.
    fn answered(&mut self, id: &str, v: &Value) -> Option<Signal> {
        if id == ID_THREAD {
            let Some(thread) = v.pointer("/result/thread/id").and_then(Value::as_str) else {
                // No thread: the first turn cannot run (the parser records why).
                return Some(Signal::TurnEnded);
            };
            self.thread = Some(thread.to_owned());
            let waiting = std::mem::take(&mut self.waiting);
            let out: String = waiting
                .into_iter()
                .map(|input| self.turn_start(thread, input))
                .collect();
            return Some(Signal::Send(out));
        }
        if !id.starts_with(ID_TURN) {
            return None;
        }
        let Some(turn) = v.pointer("/result/turn/id").and_then(Value::as_str) else {
            // A refused turn/start: that message's turn is over.
            return Some(Signal::TurnEnded);
        };
        if !self.turns.insert(turn.to_owned()) {
            // The message joined the running turn: it ends with that turn's end.
            return Some(Signal::TurnEnded);
        }
        self.turn = Some(turn.to_owned());
        self.interrupt_pending
            .then(|| Signal::Send(self.interrupt()))
    }

    fn notified(&mut self, method: &str, params: &Value) -> Option<Signal> {
        match method {
            "turn/started" => {
                self.turn = str_at(params.get("turn")?, "id").map(str::to_owned);
                self.interrupt_pending
                    .then(|| Signal::Send(self.interrupt()))
            }
            "turn/completed" => {
                self.turn = None;
                Some(Signal::TurnEnded)
            }
            "item/started" => {
                let item = params.get("item")?;
                if str_at(item, "type") == Some("fileChange") {
                    let id = str_at(item, "id")?.to_owned();
                    self.changes
                        .insert(id, item.get("changes").cloned().unwrap_or(json!([])));
                }
                None
            }
            _ => None,
        }
    }

    fn asked(&mut self, id: &Value, method: &str, params: &Value) -> Signal {
        let key = id_text(id);
        let turn = str_at(params, "turnId").unwrap_or_default().to_owned();
        let (tool, input) = match method {
            "item/commandExecution/requestApproval" => ("Bash", command_input(params)),
            "item/fileChange/requestApproval" => {
                let item = str_at(params, "itemId").unwrap_or_default();
                let changes = self.changes.get(item).cloned().unwrap_or(json!([]));
                file_input(&changes)
            }
            // Codex asks something agentd has no question for: refused, so it never waits.
            _ => {
                return refusal(id, method);
            }
        };
        self.requests.insert(key.clone(), (id.clone(), turn));
        Signal::Permission {
            id: key,
            tool: tool.to_owned(),
            input,
            suggestion: params.get("reason").filter(|r| !r.is_null()).cloned(),
        }
    }
}

/// A command approval as the `Bash` tool's input: the command the model wrote (Codex wraps it in
/// `bash -lc`), so that `Bash(git status*)` rules see it as written.
fn command_input(params: &Value) -> Value {
    let argv = params
        .get("proposedExecpolicyAmendment")
        .and_then(Value::as_array);
    let inner = match argv.map(Vec::as_slice) {
        Some([_, flag, cmd]) if matches!(flag.as_str(), Some("-lc" | "-c")) => cmd.as_str(),
        _ => None,
    };
    let command = inner.or_else(|| str_at(params, "command")).unwrap_or("");
    json!({"command": command, "cwd": params.get("cwd")})
}

/// A file change approval as the `Write` tool's input (every change adds a file) or `Edit`'s:
/// the first path as `file_path`, so that `Write(src/**)` rules see it, and every change.
fn file_input(changes: &Value) -> (&'static str, Value) {
    let list = changes.as_array().map(Vec::as_slice).unwrap_or_default();
    let adds = !list.is_empty()
        && list
            .iter()
            .all(|c| c.pointer("/kind/type").and_then(Value::as_str) == Some("add"));
    let path = list.first().and_then(|c| str_at(c, "path")).unwrap_or("");
    let tool = if adds { "Write" } else { "Edit" };
    (tool, json!({"file_path": path, "changes": changes}))
}

impl Interactive for CodexApp {
    fn prompt(&self, text: &str, images: &[Image]) -> String {
        self.state().waiting.push(input_with_images(text, images));
        self.handshake()
    }

    fn observe(&self, text: &str) -> Option<Signal> {
        let v: Value = serde_json::from_str(text).ok()?;
        let mut state = self.state();
        match (v.get("id"), str_at(&v, "method")) {
            (Some(id), Some(method)) => {
                Some(state.asked(id, method, v.get("params").unwrap_or(&Value::Null)))
            }
            (None, Some(method)) => state.notified(method, v.get("params").unwrap_or(&Value::Null)),
            (Some(Value::String(id)), None) => state.answered(id, &v),
            _ => None,
        }
    }

    fn answer(&self, id: &str, allow: bool, message: &str, _input: &Value) -> String {
        let mut state = self.state();
        let Some((raw, turn)) = state.requests.remove(id) else {
            return String::new();
        };
        let decision = if allow { "accept" } else { "decline" };
        let reply = line(json!({"jsonrpc": "2.0", "id": raw, "result": {"decision": decision}}));
        let steer = match (state.thread.clone(), allow || message.is_empty()) {
            (Some(thread), false) => {
                state.next_id += 1;
                let params = json!({
                    "threadId": thread,
                    "expectedTurnId": turn,
                    "input": text_input(&format!("Permission denied: {message}")),
                });
                request(
                    &format!("agentd-steer-{}", state.next_id),
                    "turn/steer",
                    params,
                )
            }
            _ => String::new(),
        };
        steer + &reply
    }

    fn user_message(&self, text: &str) -> String {
        let mut state = self.state();
        match state.thread.clone() {
            Some(thread) => state.turn_start(&thread, text_input(text)),
            None => {
                state.waiting.push(text_input(text));
                String::new()
            }
        }
    }

    fn interrupt(&self, _n: u64) -> String {
        self.state().interrupt()
    }

    fn parser(&self) -> Option<Box<dyn OutputParser>> {
        Some(Box::new(CodexAppParser::default()))
    }
}

/// Notifications that say nothing a job's events keep (token deltas, status flags).
const QUIET: [&str; 6] = [
    "thread/status/changed",
    "thread/tokenUsage/updated",
    "account/rateLimits/updated",
    "remoteControl/status/changed",
    "serverRequest/resolved",
    "thread/started",
];

/// Reads `codex app-server`'s output as [`CodexParser`] reads `codex exec --json`.
#[derive(Debug, Default)]
pub(super) struct CodexAppParser {
    inner: CodexParser,
    /// The running turn's token counts, summed over its model calls.
    turn_usage: [u64; 4],
}

impl JsonLines for CodexAppParser {
    const ANY_OBJECT: bool = true;

    fn interpret(&mut self, v: &Value) -> Vec<EventKind> {
        self.exec_form(v)
            .map(|e| self.inner.interpret(&e))
            .unwrap_or_default()
    }

    fn summarize(&self) -> Summary {
        self.inner.summarize()
    }
}

impl CodexAppParser {
    /// The `codex exec --json` line an app-server message stands for, if it stands for one.
    fn exec_form(&mut self, v: &Value) -> Option<Value> {
        let params = v.get("params").unwrap_or(&Value::Null);
        match (v.get("id"), str_at(v, "method")) {
            (Some(_), Some(method)) => Some(json!({"type": method})),
            (Some(id), None) if id.as_str() == Some(ID_THREAD) => Some(thread_answer(v)),
            (_, None) => None,
            (None, Some(method)) => self.notification(method, params),
        }
    }

    fn notification(&mut self, method: &str, params: &Value) -> Option<Value> {
        match method {
            "item/started" | "item/completed" => {
                let ty = method.replace('/', ".");
                Some(json!({"type": ty, "item": snake_item(params.get("item")?)}))
            }
            "thread/tokenUsage/updated" => {
                let last = params.pointer("/tokenUsage/last")?;
                let keys = [
                    "inputTokens",
                    "outputTokens",
                    "cachedInputTokens",
                    "cacheWriteInputTokens",
                ];
                for (sum, k) in self.turn_usage.iter_mut().zip(keys) {
                    *sum += last.get(k).and_then(Value::as_u64).unwrap_or(0);
                }
                None
            }
            "turn/completed" => Some(self.turn_completed(params)),
            "error" if params.get("willRetry") != Some(&Value::Bool(true)) => {
                let message = params.pointer("/error/message").and_then(Value::as_str);
                Some(json!({"type": "error", "message": message.unwrap_or("codex error")}))
            }
            m if QUIET.contains(&m) || m.ends_with("Delta") || m.ends_with("/delta") => None,
            m => Some(json!({"type": m})),
        }
    }

    fn turn_completed(&mut self, params: &Value) -> Value {
        let [input, output, cached, written] = std::mem::take(&mut self.turn_usage);
        let status = params.pointer("/turn/status").and_then(Value::as_str);
        if status == Some("failed") {
            let message = params
                .pointer("/turn/error/message")
                .and_then(Value::as_str)
                .unwrap_or("turn failed");
            return json!({"type": "turn.failed", "error": {"message": message}});
        }
        json!({"type": "turn.completed", "usage": {
            "input_tokens": input,
            "output_tokens": output,
            "cached_input_tokens": cached,
            "cache_write_input_tokens": written,
        }})
    }
}

/// The answer to `thread/start` or `thread/resume`: the thread, or why there is none.
fn thread_answer(v: &Value) -> Value {
    match v.pointer("/result/thread/id").and_then(Value::as_str) {
        Some(id) => json!({"type": "thread.started", "thread_id": id}),
        None => {
            let why = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no thread");
            json!({"type": "turn.failed", "error": {"message": format!("codex could not open the thread: {why}")}})
        }
    }
}

/// An app-server item (camelCase type and fields) in `codex exec --json`'s form (snake_case).
fn snake_item(item: &Value) -> Value {
    let Some(fields) = item.as_object() else {
        return item.clone();
    };
    fields
        .iter()
        .map(|(k, v)| {
            let v = match (k.as_str(), v) {
                ("type", Value::String(t)) => Value::String(snake(t)),
                _ => v.clone(),
            };
            (snake(k), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[path = "codex_app_tests.rs"]
mod tests;
