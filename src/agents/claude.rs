//! The `claude` kind: Claude Code run headless (`claude -p --output-format stream-json --verbose`,
//! the prompt on stdin). Owns its argv and environment, and the mapping of its stream-json lines (one JSON
//! object per line: `system`, `assistant`, `user`, `result`, …) to job events.

use super::{
    AgentProfile, JsonLines, Launch, LaunchContext, Summary, input_json_of, other, plan_of_todos,
    str_at, text_of, u64_at,
};
use crate::domain::{EventKind, JobSpec, Usage};
use serde_json::Value;

/// Keeps an unattended CLI quiet and offline apart from its model API.
const QUIET_ENV: [(&str, &str); 4] = [
    ("DISABLE_TELEMETRY", "1"),
    ("DISABLE_ERROR_REPORTING", "1"),
    ("DISABLE_AUTOUPDATER", "1"),
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
];

/// Makes Claude Code offer its TodoWrite tool, whose input is always the whole plan (a typed
/// `plan` event). Claude Code 2.1.330 offers todo tools only to the models on its own list (or
/// with `CLAUDE_CODE_ENABLE_TODO_TOOLS`), and then the Task* tools (TaskCreate, TaskUpdate, …,
/// each call one change to a list it keeps) unless `CLAUDE_CODE_ENABLE_TASKS` is false, when it
/// offers TodoWrite. Seen with the genuine CLI and the test model: with neither set it offers
/// no todo tool at all; with only the first, the Task* tools; with both, TodoWrite.
const TODO_ENV: [(&str, &str); 2] = [
    ("CLAUDE_CODE_ENABLE_TASKS", "0"),
    ("CLAUDE_CODE_ENABLE_TODO_TOOLS", "1"),
];

/// The job's MCP servers for `--mcp-config`, under `~/.claude` (a file rather than an argv JSON
/// string: their env may hold secrets, which argv shows to every process of the host).
const MCP_CONFIG: &str = "agentd-mcp.json";

const SKIP_PERMISSIONS: &str = "--dangerously-skip-permissions";
const BYPASS_MODE: &str = "bypassPermissions";

/// Gives the job's images to Claude as image content blocks: the prompt on stdin becomes one
/// stream-json user message (`--input-format stream-json`) holding the text and a base64 block per
/// image, which is how the Agent SDK sends images; stdin's end then ends the run as a plain
/// prompt's does. (A job that asks sends the same message through its controller.)
pub(super) fn send_images(launch: &mut Launch, spec: &JobSpec, images: &[super::Image]) {
    if images.is_empty() || spec.asks() {
        return;
    }
    let Some(text) = launch.stdin.take() else {
        return;
    };
    launch.stdin = Some(user_message(&text, images));
    // Right after `-p`: the variadic `--allowedTools` at the end must not swallow it.
    let at = launch
        .args
        .iter()
        .position(|a| a == "-p")
        .map_or(0, |i| i + 1);
    launch.args.splice(
        at..at,
        ["--input-format".to_owned(), "stream-json".to_owned()],
    );
}

/// A stream-json user message, as one line: the text alone, or the text and a base64 image
/// block per image.
pub(super) fn user_message(text: &str, images: &[super::Image]) -> String {
    let content = if images.is_empty() {
        serde_json::json!(text)
    } else {
        let mut blocks = vec![serde_json::json!({"type": "text", "text": text})];
        blocks.extend(images.iter().map(|i| {
            serde_json::json!({
                "type": "image",
                "source": {
                    "type": "base64",
                    "media_type": i.media_type,
                    "data": i.base64(),
                }
            })
        }));
        Value::Array(blocks)
    };
    let message = serde_json::json!({
        "type": "user",
        "message": {"role": "user", "content": content},
        "parent_tool_use_id": null,
        "session_id": ""
    });
    format!("{message}\n")
}

/// The transcript of conversation `id` relative to HOME, when the agent runs in `workspace`:
/// Claude keeps it under `~/.claude/projects/<the working directory, every character other than
/// an ASCII letter or digit made '-'>/<id>.jsonl`. `None` for an id that is not a plain name
/// (the id comes from the agent's output).
pub(super) fn transcript(workspace: &std::path::Path, id: &str) -> Option<std::path::PathBuf> {
    let plain = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let project: String = workspace
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    plain.then(|| {
        std::path::Path::new(".claude/projects")
            .join(project)
            .join(format!("{id}.jsonl"))
    })
}

pub(super) fn launch(profile: &AgentProfile, spec: &JobSpec, ctx: &LaunchContext) -> Launch {
    let mut args = profile.args.clone();
    // Without a prompt argument, `-p` reads the prompt from stdin: any size, and a prompt that
    // starts with `-` cannot be taken for an option.
    args.push("-p".into());
    args.extend(["--output-format", "stream-json", "--verbose"].map(String::from));
    if spec.asks() {
        // Two-way control: user messages and permission answers arrive on stdin as stream-json
        // (written by agentd's controller, which also sends the prompt); every permission
        // prompt becomes a `control_request` on stdout.
        args.extend(
            [
                "--input-format",
                "stream-json",
                "--permission-prompt-tool",
                "stdio",
            ]
            .map(String::from),
        );
    }
    if let Some(id) = ctx.resume_conversation {
        // A new id for every job, its transcript a copy: each job's conversation stays as it
        // ended, which is what RewindSession and ForkSession resume from (issue #18).
        args.extend(["--resume".into(), id.to_owned(), "--fork-session".into()]);
    }
    if let Some(model) = &spec.model {
        args.extend(["--model".into(), model.clone()]);
    }
    if let Some(n) = spec.max_turns {
        args.extend(["--max-turns".into(), n.to_string()]);
    }
    if let Some(s) = &spec.append_system_prompt {
        args.extend(["--append-system-prompt".into(), s.clone()]);
    }
    caps_args(spec, &mut args);
    let profile_mode = profile_permission_mode(&profile.args);
    let bypass = match (&spec.permission_mode, &profile_mode) {
        // Claude's default mode: whatever it would ask, it asks agentd.
        (Some(_), _) if spec.asks() => false,
        (Some(mode), _) => {
            args.extend(["--permission-mode".into(), mode.clone()]);
            mode == BYPASS_MODE
        }
        (None, Some(mode)) => mode == BYPASS_MODE,
        // Nobody can answer a permission prompt in a headless run: without a mode, skip them.
        (None, None) => {
            args.push(SKIP_PERMISSIONS.into());
            true
        }
    };
    let mut files = Vec::new();
    if !ctx.mcp.is_empty() {
        let path = ctx.home.join(".claude").join(MCP_CONFIG);
        args.extend(["--mcp-config".into(), path.to_string_lossy().into_owned()]);
        files.push((path, super::mcp::claude(ctx.mcp).to_string().into_bytes()));
    }
    // Only the servers agentd gives: none from ~/.claude.json, the workspace's .mcp.json or
    // settings, all of which the jailed agent can write.
    if !super::args_have(&profile.args, &["--strict-mcp-config"]) {
        args.push("--strict-mcp-config".into());
    }
    if !spec.caps.disallowed_tools.is_empty() {
        // Variadic like `--allowedTools`: one `=`-joined argument cannot swallow what follows.
        args.push(format!(
            "--disallowedTools={}",
            spec.caps.disallowed_tools.join(",")
        ));
    }
    if !spec.allowed_tools.is_empty() {
        // `--allowedTools` takes a variadic list, so it goes last: nothing after it can be
        // swallowed as a tool name. One argument per tool keeps names with spaces intact.
        args.push("--allowedTools".into());
        args.extend(spec.allowed_tools.iter().cloned());
    }
    let mut env: Vec<(String, String)> = QUIET_ENV
        .iter()
        .chain(&TODO_ENV)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if bypass {
        // Claude refuses to skip permissions as root unless told it is sandboxed; agentd's
        // per-job containment is that sandbox.
        env.push(("IS_SANDBOX".into(), "1".into()));
    }
    Launch {
        program: profile.command.clone(),
        args,
        env,
        files,
        // Under `ask` the controller writes the prompt as the first user message.
        stdin: (!spec.asks()).then(|| spec.prompt.clone()),
    }
}

/// The #20 capability flags: partial messages for deltas, the replaced system prompt and the
/// native structured output (the CLI makes the model answer through a schema-checked tool).
fn caps_args(spec: &JobSpec, args: &mut Vec<String>) {
    let caps = &spec.caps;
    if caps.stream_deltas {
        args.push("--include-partial-messages".into());
    }
    if let Some(s) = &caps.system_prompt {
        args.extend(["--system-prompt".into(), s.clone()]);
    }
    if let Some(schema) = &caps.output_schema {
        args.extend(["--json-schema".into(), schema.clone()]);
    }
}

/// The permission mode the operator's profile args already choose, if any
/// (`--dangerously-skip-permissions` counts as bypassing).
fn profile_permission_mode(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == SKIP_PERMISSIONS {
            return Some(BYPASS_MODE.into());
        }
        if a == "--permission-mode" {
            return Some(it.next().cloned().unwrap_or_default());
        }
        if let Some(mode) = a.strip_prefix("--permission-mode=") {
            return Some(mode.to_owned());
        }
    }
    None
}

/// Parses stream-json. Remembers the conversation id, the `result` event and any `API Error: …`
/// text the CLI printed as an assistant message, for the summary.
#[derive(Debug, Default)]
pub(super) struct ClaudeParser {
    conversation_id: Option<String>,
    outcome: Option<ResultEvent>,
    api_error: Option<String>,
}

/// What the `result` line said.
#[derive(Debug)]
struct ResultEvent {
    is_error: bool,
    subtype: String,
    text: Option<String>,
    errors: Vec<String>,
    usage: Usage,
    /// The answer to `--json-schema`, as the CLI checked it.
    structured: Option<String>,
}

impl JsonLines for ClaudeParser {
    fn summarize(&self) -> Summary {
        let mut summary = Summary {
            conversation_id: self.conversation_id.clone(),
            ..Summary::default()
        };
        match &self.outcome {
            Some(r) if r.is_error => {
                let own_words = r.text.clone().filter(|t| !t.is_empty());
                summary.error = Some(
                    own_words
                        .or_else(|| self.api_error.clone())
                        .unwrap_or_else(|| describe_failure(&r.subtype, &r.errors)),
                );
                summary.usage = r.usage.clone();
            }
            Some(r) => {
                summary.result = Some(r.text.clone().unwrap_or_default());
                summary.structured.clone_from(&r.structured);
                summary.usage = r.usage.clone();
            }
            // No result line (killed, crashed): only an API error it printed is worth reporting.
            None => summary.error = self.api_error.clone(),
        }
        summary
    }

    fn interpret(&mut self, v: &Value) -> Vec<EventKind> {
        if self.conversation_id.is_none()
            && let Some(id) = str_at(v, "session_id").filter(|s| !s.is_empty())
        {
            self.conversation_id = Some(id.to_owned());
        }
        let ty = str_at(v, "type").unwrap_or_default();
        let subtype = str_at(v, "subtype");
        match (ty, subtype) {
            ("system", Some("init")) => vec![EventKind::Init {
                conversation_id: str_at(v, "session_id").unwrap_or_default().to_owned(),
                model: str_at(v, "model").unwrap_or_default().to_owned(),
                tools: strings_at(v, "tools"),
                agent_version: str_at(v, "claude_code_version")
                    .unwrap_or_default()
                    .to_owned(),
            }],
            ("assistant", _) => self.assistant(v),
            ("stream_event", _) => stream_delta(v).into_iter().collect(),
            ("user", _) => user(v),
            ("result", _) => {
                let usage = usage_of(v);
                self.outcome = Some(ResultEvent {
                    is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(false)
                        || subtype.is_some_and(|s| s != "success"),
                    subtype: subtype.unwrap_or("unknown").to_owned(),
                    text: str_at(v, "result").map(String::from),
                    structured: v
                        .get("structured_output")
                        .filter(|s| !s.is_null())
                        .map(Value::to_string),
                    errors: strings_at(v, "errors"),
                    usage: usage.clone(),
                });
                vec![EventKind::Usage(usage)]
            }
            (ty, Some(sub)) => vec![other(format!("{ty}/{sub}"))],
            (ty, None) => vec![other(ty.to_owned())],
        }
    }
}

impl ClaudeParser {
    /// One event per content block.
    fn assistant(&mut self, v: &Value) -> Vec<EventKind> {
        let Some(blocks) = content_blocks(v) else {
            return vec![other("assistant")];
        };
        // The CLI reports model API failures as a synthetic assistant message with a top-level
        // `error` and text `API Error: …`.
        let flagged = v.get("error").is_some_and(|e| !e.is_null());
        let mut events = Vec::with_capacity(blocks.len());
        for b in blocks {
            if str_at(b, "name") == Some(TODO_TOOL)
                && let Some(plan) = plan_of_todos(b.get("input"))
            {
                events.push(plan);
            }
            events.push(self.block(b, flagged));
        }
        events
    }

    fn block(&mut self, b: &Value, flagged: bool) -> EventKind {
        match str_at(b, "type").unwrap_or_default() {
            "thinking" => EventKind::Thinking {
                text: str_at(b, "thinking").unwrap_or_default().to_owned(),
            },
            "text" => {
                let text = str_at(b, "text").unwrap_or_default().to_owned();
                if flagged || text.starts_with("API Error") {
                    self.api_error = Some(text.clone());
                }
                EventKind::Text { text }
            }
            "tool_use" => EventKind::ToolCall {
                id: str_at(b, "id").unwrap_or_default().to_owned(),
                name: str_at(b, "name").unwrap_or_default().to_owned(),
                input_json: input_json_of(b.get("input")),
            },
            t => other(format!("assistant/{t}")),
        }
    }
}

/// Claude's todo tool: its input is the whole plan.
const TODO_TOOL: &str = "TodoWrite";

/// A partial-message line (`--include-partial-messages`): text and thinking pieces become
/// deltas; the rest of the stream (block starts and stops, tool input pieces) is dropped, since
/// the complete message follows as its own line.
fn stream_delta(v: &Value) -> Option<EventKind> {
    let delta = v.get("event")?.get("delta")?;
    match str_at(delta, "type")? {
        "text_delta" => Some(EventKind::TextDelta {
            text: str_at(delta, "text")?.to_owned(),
        }),
        "thinking_delta" => Some(EventKind::ThinkingDelta {
            text: str_at(delta, "thinking")?.to_owned(),
        }),
        _ => None,
    }
}

/// Tool results, one event per block; other user content (an interruption notice, an echoed
/// prompt) is only noted.
fn user(v: &Value) -> Vec<EventKind> {
    let Some(blocks) = content_blocks(v) else {
        return vec![other("user/text")];
    };
    blocks
        .iter()
        .map(|b| match str_at(b, "type").unwrap_or_default() {
            "tool_result" => EventKind::ToolResult {
                id: str_at(b, "tool_use_id").unwrap_or_default().to_owned(),
                is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                content: text_of(b.get("content")),
            },
            t => other(format!("user/{t}")),
        })
        .collect()
}

fn usage_of(v: &Value) -> Usage {
    let usage = v.get("usage").unwrap_or(&Value::Null);
    let tokens = |key: &str| u64_at(usage, key);
    Usage {
        input_tokens: tokens("input_tokens"),
        output_tokens: tokens("output_tokens"),
        cache_read_input_tokens: tokens("cache_read_input_tokens"),
        cache_creation_input_tokens: tokens("cache_creation_input_tokens"),
        cost_usd: v.get("total_cost_usd").and_then(Value::as_f64),
        num_turns: v
            .get("num_turns")
            .and_then(Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        duration_ms: u64_at(v, "duration_ms"),
    }
}

/// A failure the CLI gave no text for, e.g. `error_max_turns: Reached maximum number of turns (1)`.
fn describe_failure(subtype: &str, errors: &[String]) -> String {
    if errors.is_empty() {
        subtype.to_owned()
    } else {
        format!("{subtype}: {}", errors.join("; "))
    }
}

fn content_blocks(v: &Value) -> Option<&Vec<Value>> {
    v.get("message")?
        .get("content")?
        .as_array()
        .filter(|a| !a.is_empty())
}

/// The strings of the array at `key` (none when it is missing; other items skipped).
fn strings_at(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "claude_tests.rs"]
mod tests;
