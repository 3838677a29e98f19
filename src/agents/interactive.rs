//! The agents' interactive protocols (issue #17): what agentd writes on a running agent's stdin
//! (the prompt as a user message, answers to its permission requests, more user messages, an
//! interrupt) and which of its stdout lines are such requests or end a turn. One implementation
//! per agent that has such a protocol; the core drives it (core::control) and never sees its
//! wire format.

use super::{AgentKind, AgentProfile, Image, LaunchContext, OutputParser};
use crate::domain::JobSpec;
use serde_json::{Value, json};

/// The two-way controls, as ServerInfo names them.
pub const CONTROL_ASK: &str = "ask";
pub const CONTROL_INPUT: &str = "input";
pub const CONTROL_INTERRUPT: &str = "interrupt";

/// Something an agent's output line tells the controller.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// The agent waits for an answer before it runs a tool.
    Permission {
        /// The agent's own id of the request.
        id: String,
        tool: String,
        /// The tool's input, as the agent will run it.
        input: Value,
        /// The agent's own suggestion (JSON), if it gives one.
        suggestion: Option<Value>,
    },
    /// The agent finished a turn (its answer to one user message, or an interrupted one).
    TurnEnded,
    /// The protocol's own reply to the line (a handshake step, a refusal): written as it is.
    Send(String),
    /// A turn ended and the caller's next message, held back until then, is written now (for an
    /// agent that would fold a message sent mid-turn into the running turn).
    TurnEndedThen(String),
}

/// An agent's interactive protocol over its stdin and stdout, one JSON object per line.
pub trait Interactive: Send + Sync {
    /// The first turn's user message: its text and the job's images, each as the protocol's
    /// own image content.
    fn prompt(&self, text: &str, images: &[Image]) -> String;
    /// Reads one stdout line for a [`Signal`].
    fn observe(&self, line: &str) -> Option<Signal>;
    /// The answer to a permission request.
    fn answer(&self, id: &str, allow: bool, message: &str, input: &Value) -> String;
    /// A further user message.
    fn user_message(&self, text: &str) -> String;
    /// Asks the agent to stop its current turn; `n` numbers agentd's own requests.
    fn interrupt(&self, n: u64) -> String;
    /// The parser of the agent's output under this protocol, when it is not the headless one.
    fn parser(&self) -> Option<Box<dyn OutputParser>> {
        None
    }
}

/// The controls an agent kind supports (listed in ServerInfo).
pub fn controls(kind: AgentKind) -> &'static [&'static str] {
    match kind {
        AgentKind::Claude | AgentKind::Codex | AgentKind::Opencode | AgentKind::Gemini => {
            &[CONTROL_ASK, CONTROL_INPUT, CONTROL_INTERRUPT]
        }
        // A configured command has no protocol agentd knows.
        AgentKind::Command => &[],
    }
}

/// The protocol of a profile's agent for one job, when it has one agentd speaks.
pub fn protocol(
    profile: &AgentProfile,
    spec: &JobSpec,
    ctx: &LaunchContext,
) -> Option<Box<dyn Interactive>> {
    match profile.kind {
        AgentKind::Claude => Some(Box::new(Claude)),
        AgentKind::Codex => Some(Box::new(super::codex::app_protocol(spec, ctx))),
        AgentKind::Opencode | AgentKind::Gemini => {
            Some(Box::new(super::acp::Acp::new(super::acp::Setup {
                resume: ctx.resume_conversation.map(str::to_owned),
                cwd: ctx.workspace.to_string_lossy().into_owned(),
                new_if_unloadable: profile.kind == AgentKind::Gemini,
                replay_ends_with_commands: profile.kind == AgentKind::Gemini,
            })))
        }
        AgentKind::Command => None,
    }
}

/// Claude Code's `--input-format stream-json` with `--permission-prompt-tool stdio`: user
/// messages in, `control_request`s (`can_use_tool`) out, answered with `control_response`s; an
/// `interrupt` control request stops the turn, which still ends with its `result` line.
struct Claude;

/// One JSON object as a line of the agent's input.
pub(super) fn line(v: Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// A JSON-RPC 2.0 request of agentd's, as a line.
pub(super) fn request(id: &str, method: &str, params: Value) -> String {
    line(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
}

/// A JSON-RPC agent's request that agentd does not serve, refused at once so it never waits.
pub(super) fn refusal(id: &Value, method: &str) -> Signal {
    let message = format!("agentd does not serve {method}");
    Signal::Send(line(json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": -32601, "message": message}
    })))
}

/// A JSON-RPC id as the text of a permission request id.
pub(super) fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A protocol's state behind its lock: a panic while holding it leaves nothing half-written
/// that matters more than the job's control.
pub(super) fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Interactive for Claude {
    fn prompt(&self, text: &str, images: &[Image]) -> String {
        super::claude::user_message(text, images)
    }

    fn observe(&self, text: &str) -> Option<Signal> {
        // Cheap test first: most lines are neither.
        if !text.contains("\"control_request\"") && !text.contains("\"result\"") {
            return None;
        }
        let v: Value = serde_json::from_str(text).ok()?;
        match v.get("type")?.as_str()? {
            "result" => Some(Signal::TurnEnded),
            "control_request" => {
                let req = v.get("request")?;
                if req.get("subtype")?.as_str()? != "can_use_tool" {
                    return None;
                }
                Some(Signal::Permission {
                    id: v.get("request_id")?.as_str()?.to_owned(),
                    tool: req.get("tool_name")?.as_str()?.to_owned(),
                    input: req.get("input").cloned().unwrap_or(json!({})),
                    suggestion: req.get("permission_suggestions").cloned(),
                })
            }
            _ => None,
        }
    }

    fn answer(&self, id: &str, allow: bool, message: &str, input: &Value) -> String {
        let decision = if allow {
            json!({"behavior": "allow", "updatedInput": input})
        } else {
            json!({"behavior": "deny", "message": message})
        };
        line(json!({
            "type": "control_response",
            "response": {"subtype": "success", "request_id": id, "response": decision}
        }))
    }

    fn user_message(&self, text: &str) -> String {
        super::claude::user_message(text, &[])
    }

    fn interrupt(&self, n: u64) -> String {
        line(json!({
            "type": "control_request",
            "request_id": format!("agentd-interrupt-{n}"),
            "request": {"subtype": "interrupt"}
        }))
    }
}

/// Helpers of the JSON-RPC protocols' tests.
#[cfg(test)]
pub(super) mod test_lines {
    use super::Signal;
    use serde_json::Value;

    /// Each line of an agent's input, parsed.
    pub(in crate::agents) fn lines(text: &str) -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    /// The lines a protocol replies with.
    pub(in crate::agents) fn sent(signal: Option<Signal>) -> Vec<Value> {
        match signal {
            Some(Signal::Send(text)) => lines(&text),
            other => panic!("expected a reply, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_permission_request_and_turn_end_are_seen() {
        let p = Claude;
        let line = r#"{"type":"control_request","request_id":"r1","request":{"subtype":"can_use_tool","tool_name":"Write","input":{"file_path":"/w/a.txt","content":"hi"},"permission_suggestions":[{"type":"setMode"}]}}"#;
        match p.observe(line) {
            Some(Signal::Permission {
                id,
                tool,
                input,
                suggestion,
            }) => {
                assert_eq!((id.as_str(), tool.as_str()), ("r1", "Write"));
                assert_eq!(input["file_path"], "/w/a.txt");
                assert!(suggestion.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            p.observe(r#"{"type":"result","subtype":"success"}"#),
            Some(Signal::TurnEnded)
        );
        assert_eq!(p.observe(r#"{"type":"assistant","text":"result"}"#), None);
        assert_eq!(p.observe("not json \"result\""), None);
    }

    #[test]
    fn claude_answers_are_one_json_line_each() {
        let p = Claude;
        let deny = p.answer("r1", false, "no \"push\"", &json!({}));
        assert!(deny.ends_with('\n') && deny.matches('\n').count() == 1);
        let v: Value = serde_json::from_str(&deny).unwrap();
        assert_eq!(v["response"]["response"]["behavior"], "deny");
        assert_eq!(v["response"]["response"]["message"], "no \"push\"");
        let v: Value = serde_json::from_str(&p.answer("r2", true, "", &json!({"a": 1}))).unwrap();
        assert_eq!(v["response"]["response"]["updatedInput"]["a"], 1);
        let v: Value = serde_json::from_str(&p.user_message("line1\nline2")).unwrap();
        assert_eq!(v["message"]["content"], "line1\nline2");
        assert_eq!(
            p.prompt("line1\nline2", &[]),
            p.user_message("line1\nline2")
        );
    }

    #[test]
    fn claude_first_message_carries_images_as_base64_blocks() {
        use base64::Engine as _;
        let images = [crate::agents::Image {
            path: "a.png".into(),
            media_type: "image/png",
            data: b"\x89PNG\r\n\x1a\nrest".to_vec(),
        }];
        let first = Claude.prompt("look", &images);
        assert!(first.ends_with('\n') && first.matches('\n').count() == 1);
        let v: Value = serde_json::from_str(&first).unwrap();
        let content = &v["message"]["content"];
        assert_eq!(content[0], json!({"type": "text", "text": "look"}));
        assert_eq!(content[1]["type"], "image");
        assert_eq!(content[1]["source"]["media_type"], "image/png");
        let data = base64::engine::general_purpose::STANDARD
            .decode(content[1]["source"]["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, images[0].data);
    }
}
