//! The `gemini` kind: Gemini CLI run headless (`gemini --output-format stream-json`, the prompt on
//! stdin).
//! Owns its argv, its environment, `$HOME/.gemini/settings.json` and `$HOME/.gemini/GEMINI.md`,
//! the `@path` that gives it an image attachment, and the mapping of its JSON lines (`init`,
//! `message`, `tool_use`, `tool_result`, `error`, `result`) to job events.
//!
//! Gemini keeps conversations under `$HOME/.gemini/tmp/<project>`, keyed by the working
//! directory, so a later job of the session (same HOME and cwd) can `--resume` them.

use super::{
    AgentProfile, JsonLines, Launch, LaunchContext, Summary, args_have, check_choice,
    check_option_values, input_json_of, other, refuse_set_options, str_at, text_of, u64_at,
};
use crate::domain::{EventKind, JobSpec, Usage};
use crate::error::Result;
use serde_json::Value;

/// Gemini's approval modes, which is what a job's permission mode selects.
/// Gemini CLI's todo tool (`todos: [{description, status}]`).
const TODO_TOOL: &str = "write_todos";

const APPROVAL_MODES: [&str; 4] = ["default", "auto_edit", "yolo", "plan"];
/// Profile args that already decide approvals.
const APPROVAL_FLAGS: [&str; 3] = ["-y", "--yolo", "--approval-mode"];

/// Used when the profile gives no settings: API-key auth (without it Gemini exits 41), folder
/// trust off (else an untrusted workspace silently overrides the approval mode), no usage
/// statistics and no update checks.
const DEFAULT_SETTINGS: &str = r#"{
  "security": {
    "auth": { "selectedType": "gemini-api-key" },
    "folderTrust": { "enabled": false }
  },
  "general": { "enableAutoUpdate": false, "enableAutoUpdateNotification": false },
  "privacy": { "usageStatisticsEnabled": false }
}
"#;

pub(super) fn validate(profile: &AgentProfile, spec: &JobSpec) -> Result<()> {
    check_option_values(spec)?;
    // `--allowed-tools` only skips confirmation (a no-op next to yolo) and the turn limit is a
    // per-conversation setting, so neither means what the job asks for.
    refuse_set_options(profile, spec, &["allowed_tools", "max_turns"])?;
    check_choice(
        "permission_mode",
        spec.permission_mode.as_deref(),
        &APPROVAL_MODES,
    )?;
    // Given twice, the approval mode becomes a list and Gemini refuses to start ("Invalid
    // approval mode: yolo,plan"). A repeated `--model` is fine: the last one, the job's, wins.
    if spec.permission_mode.is_some() && args_have(&profile.args, &APPROVAL_FLAGS) {
        return Err(super::unsupported(profile, "permission_mode"));
    }
    Ok(())
}

pub(super) fn launch(profile: &AgentProfile, spec: &JobSpec, ctx: &LaunchContext) -> Launch {
    if spec.asks() {
        return acp_launch(profile, spec, ctx);
    }
    let mut args = profile.args.clone();
    if let Some(model) = &spec.model {
        args.extend(["--model".into(), model.clone()]);
    }
    // No `--prompt`: with stdin not a terminal, Gemini runs headless on what stdin holds.
    args.extend(["--output-format".into(), "stream-json".into()]);
    if let Some(mode) = &spec.permission_mode {
        args.extend(["--approval-mode".into(), mode.clone()]);
    } else if !args_have(&profile.args, &APPROVAL_FLAGS) {
        // Nobody can approve a tool call in a headless run.
        args.push("--yolo".into());
    }
    if let Some(id) = ctx.resume_conversation {
        args.extend(["--resume".into(), id.to_owned()]);
    }
    allow_mcp(&mut args, ctx);
    with_settings(profile, spec, ctx, args, Some(spec.prompt.clone()))
}

/// Image extensions Gemini CLI sends as inline image data when a prompt's `@path` names such a
/// file (it tells images by extension, and reads a named image only then).
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "gif", "webp"];

/// A workspace file as an `@path` of Gemini's prompt, which Gemini CLI reads itself (headless
/// too) and sends as an `inlineData` part when it is an image: every ASCII character other than
/// a letter, digit, `/`, `_`, `-` or `.` escaped with `\`, which its parser takes literally.
/// `None` for a name Gemini would not send as an image (no image extension) or cannot be told
/// (a backslash, which it reads as a separator, or a control character).
pub(super) fn at_path(path: &str) -> Option<String> {
    let ext = std::path::Path::new(path).extension()?.to_str()?;
    if !IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
        || path.chars().any(|c| c == '\\' || c.is_control())
    {
        return None;
    }
    let mut out = String::with_capacity(path.len() + 1);
    out.push('@');
    for c in path.chars() {
        if c.is_ascii() && !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.')) {
            out.push('\\');
        }
        out.push(c);
    }
    Some(out)
}

/// `gemini --acp` for a job that asks (`acp`): the profile's args without its approval flags,
/// so Gemini's default mode asks the client (agentd) before every tool that is not read-only;
/// the conversation continues through `session/load`, not `--resume`.
fn acp_launch(profile: &AgentProfile, spec: &JobSpec, ctx: &LaunchContext) -> Launch {
    let mut args = without_approval_flags(&profile.args);
    if let Some(model) = &spec.model {
        args.extend(["--model".into(), model.clone()]);
    }
    args.push("--acp".into());
    allow_mcp(&mut args, ctx);
    // The controller writes the protocol on the job's pipe.
    with_settings(profile, spec, ctx, args, None)
}

/// The conversation's chat files, set aside before `gemini --acp` loads it. Its `session/load`
/// first starts a recording of its own for the id it is given, in a file named
/// `session-<minute, UTC>-<first 8 characters of the id>.jsonl` under
/// `~/.gemini/tmp/<project>/chats/`, and only then looks the conversation up. Within the minute
/// the conversation began that is the conversation's own file: the new recording appends a
/// record that resets its messages, the lookup finds nothing to resume ("No previous sessions
/// found for this project") and the turns are lost (seen with 0.61: a load a few seconds after
/// the first job fails, one in the next minute works). With a mark before the id, Gemini still
/// lists the file, finds the conversation in it and appends the resumed turns to it, and its
/// own new recording can never have that name. Headless `--resume` looks the conversation up
/// before it records anything, so it needs none of this.
pub(super) fn set_aside(spec: &JobSpec, ctx: &LaunchContext) -> Option<crate::workspace::Rename> {
    let id = ctx.resume_conversation.filter(|_| spec.asks())?;
    let short: String = id.chars().take(8).collect();
    Some(crate::workspace::Rename {
        parent: ".gemini/tmp".into(),
        child: "chats".into(),
        prefix: "session-".into(),
        suffix: format!("-{short}.jsonl"),
        mark: "-agentd".into(),
    })
}

/// `args` without `-y`, `--yolo` and `--approval-mode[=]<mode>`.
fn without_approval_flags(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if a == "--approval-mode" {
            skip_value = true;
        } else if !(APPROVAL_FLAGS.contains(&a.as_str()) || a.starts_with("--approval-mode=")) {
            out.push(a.clone());
        }
    }
    out
}

/// Only the job's servers may start, whatever the agent's own settings (user or workspace,
/// both writable by it) define; an empty list would allow all, hence a name none can have.
fn allow_mcp(args: &mut Vec<String>, ctx: &LaunchContext) {
    args.push("--allowed-mcp-server-names".into());
    match ctx.mcp.is_empty() {
        true => args.push(super::mcp::NONE_ALLOWED.into()),
        false => args.extend(ctx.mcp.iter().map(|(n, _)| n.clone())),
    }
}

/// The launch of `args` with the settings and memory files every Gemini job gets.
fn with_settings(
    profile: &AgentProfile,
    spec: &JobSpec,
    ctx: &LaunchContext,
    args: Vec<String>,
    stdin: Option<String>,
) -> Launch {
    let dot_gemini = ctx.home.join(".gemini");
    let mut settings = profile
        .config
        .clone()
        .unwrap_or_else(|| DEFAULT_SETTINGS.to_owned());
    if !ctx.mcp.is_empty() {
        // The user settings, rewritten on every job. (Gemini refuses a system settings file in a
        // directory the agent can write, so the servers cannot go above the workspace's
        // settings; `--allowed-mcp-server-names` above still admits only the catalog's names.)
        settings =
            super::mcp::json_with(Some(&settings), "mcpServers", super::mcp::gemini(ctx.mcp));
    }
    // Gemini puts `~/.gemini/GEMINI.md` into its system instruction. Written on every job (empty
    // when unset) so that an earlier job's text does not linger in the session's HOME.
    let memory = spec.append_system_prompt.clone().unwrap_or_default();
    Launch {
        program: profile.command.clone(),
        args,
        env: vec![("GEMINI_CLI_NO_RELAUNCH".into(), "1".into())],
        files: vec![
            (dot_gemini.join("settings.json"), settings.into_bytes()),
            (dot_gemini.join("GEMINI.md"), memory.into_bytes()),
        ],
        stdin,
    }
}

/// Parses stream-json. Remembers the session id, the last assistant message (Gemini streams it
/// in chunks: consecutive `delta` messages form one), usage and how the run ended.
#[derive(Debug, Default)]
pub(super) struct GeminiParser {
    session_id: Option<String>,
    /// The assistant message being streamed, or the last one once something else happened.
    message: String,
    /// Whether the last event was an assistant message chunk (a new chunk then continues it).
    in_message: bool,
    any_message: bool,
    result: Option<Outcome>,
    /// The latest `error` event of severity error (warnings are not failures).
    last_error: Option<String>,
    usage: Usage,
}

#[derive(Debug)]
enum Outcome {
    Success,
    Error(String),
}

impl JsonLines for GeminiParser {
    fn summarize(&self) -> Summary {
        let error = match &self.result {
            Some(Outcome::Error(m)) => Some(m.clone()),
            Some(Outcome::Success) => None,
            // No result line (killed, crashed): only an error it reported is worth keeping.
            None => self.last_error.clone(),
        };
        Summary {
            conversation_id: self.session_id.clone(),
            result: if error.is_none() && self.any_message {
                Some(self.message.clone())
            } else {
                None
            },
            error,
            usage: self.usage.clone(),
            structured: None,
        }
    }

    fn interpret(&mut self, v: &Value) -> Vec<EventKind> {
        let ty = str_at(v, "type").unwrap_or_default();
        let assistant_chunk = ty == "message" && str_at(v, "role") == Some("assistant");
        let continues = self.in_message && assistant_chunk;
        self.in_message = assistant_chunk;
        match ty {
            "init" => {
                let id = str_at(v, "session_id").unwrap_or_default().to_owned();
                if !id.is_empty() {
                    self.session_id = Some(id.clone());
                }
                vec![EventKind::Init {
                    conversation_id: id,
                    model: str_at(v, "model").unwrap_or_default().to_owned(),
                    tools: Vec::new(),
                    agent_version: String::new(),
                }]
            }
            "message" if assistant_chunk => {
                let text = text_of(v.get("content"));
                let delta = v.get("delta").and_then(Value::as_bool).unwrap_or(false);
                if !(continues && delta) {
                    self.message.clear();
                }
                self.message.push_str(&text);
                self.any_message = true;
                vec![EventKind::Text { text }]
            }
            "message" => vec![other(format!(
                "message/{}",
                str_at(v, "role").unwrap_or("unknown")
            ))],
            "tool_use" => {
                let name = str_at(v, "tool_name").unwrap_or_default().to_owned();
                // Its todo tool's input is the whole plan (offered for Gemini 2 models).
                let plan = (name == TODO_TOOL)
                    .then(|| super::plan_of_todos(v.get("parameters")))
                    .flatten();
                let call = EventKind::ToolCall {
                    id: str_at(v, "tool_id").unwrap_or_default().to_owned(),
                    name,
                    input_json: input_json_of(v.get("parameters")),
                };
                plan.into_iter().chain([call]).collect()
            }
            "tool_result" => {
                let is_error = str_at(v, "status") != Some("success");
                let error_text = v.get("error").and_then(|e| str_at(e, "message"));
                let content = match (is_error, error_text) {
                    (true, Some(m)) => m.to_owned(),
                    _ => text_of(v.get("output")),
                };
                vec![EventKind::ToolResult {
                    id: str_at(v, "tool_id").unwrap_or_default().to_owned(),
                    is_error,
                    content,
                }]
            }
            "error" => {
                if str_at(v, "severity") == Some("error")
                    && let Some(m) = str_at(v, "message")
                {
                    self.last_error = Some(m.to_owned());
                }
                vec![other(ty)]
            }
            "result" => {
                let stats = v.get("stats").unwrap_or(&Value::Null);
                self.usage = Usage {
                    input_tokens: u64_at(stats, "input_tokens"),
                    output_tokens: u64_at(stats, "output_tokens"),
                    cache_read_input_tokens: u64_at(stats, "cached"),
                    duration_ms: u64_at(stats, "duration_ms"),
                    ..Usage::default()
                };
                self.result = Some(if str_at(v, "status") == Some("success") {
                    Outcome::Success
                } else {
                    Outcome::Error(
                        v.get("error")
                            .and_then(|e| str_at(e, "message"))
                            .map_or_else(
                                || {
                                    format!(
                                        "gemini reported status {:?}",
                                        str_at(v, "status").unwrap_or_default()
                                    )
                                },
                                String::from,
                            ),
                    )
                });
                vec![EventKind::Usage(self.usage.clone())]
            }
            _ => vec![other(ty)],
        }
    }
}

#[cfg(test)]
#[path = "gemini_tests.rs"]
mod tests;
