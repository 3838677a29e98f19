//! The `codex` kind: OpenAI Codex CLI run headless (`codex exec --json …`). Owns its argv, its
//! environment and `$CODEX_HOME/config.toml`, and the mapping of its JSON lines (`thread.started`,
//! `turn.*`, `item.*`, `error`) to job events.
//!
//! Codex keeps conversations under `$CODEX_HOME/sessions`; `CODEX_HOME` is always the session's
//! `<home>/.codex`, so a later job of the session can `resume` the thread.

use super::{
    AgentProfile, JsonLines, Launch, LaunchContext, Summary, args_have, check_choice,
    check_option_values, input_json_of, other, refuse_set_options, str_at, text_of, u64_at,
};
use crate::domain::{EventKind, JobSpec, PlanItem, Usage};
use crate::error::Result;
use serde_json::{Value, json};
use std::collections::HashSet;

/// Codex's sandbox policies, which is what a job's permission mode selects.
const SANDBOX_MODES: [&str; 3] = ["read-only", "workspace-write", "danger-full-access"];
/// Lets the agent edit the workspace and nothing else, without asking anyone.
const DEFAULT_SANDBOX: &str = "workspace-write";
/// Inside agentd's jail, which already confines the agent to its workspace.
const JAILED_SANDBOX: &str = "danger-full-access";
/// Profile args that already decide the sandbox.
const SANDBOX_FLAGS: [&str; 4] = [
    "-s",
    "--sandbox",
    "--dangerously-bypass-approvals-and-sandbox",
    "--full-auto",
];
const MODEL_FLAGS: [&str; 2] = ["-m", "--model"];
/// The job's output schema for `--output-schema`, under CODEX_HOME.
const OUTPUT_SCHEMA_FILE: &str = "agentd-output-schema.json";

pub(super) fn validate(profile: &AgentProfile, spec: &JobSpec) -> Result<()> {
    check_option_values(spec)?;
    refuse_set_options(profile, spec, &["allowed_tools", "max_turns"])?;
    check_choice(
        "permission_mode",
        spec.permission_mode.as_deref(),
        &SANDBOX_MODES,
    )?;
    // Codex refuses an option given twice, and which of two would win is the operator's call.
    if spec.permission_mode.is_some() && args_have(&profile.args, &SANDBOX_FLAGS) {
        return Err(super::unsupported(profile, "permission_mode"));
    }
    if spec.model.is_some() && args_have(&profile.args, &MODEL_FLAGS) {
        return Err(super::unsupported(profile, "model"));
    }
    Ok(())
}

pub(super) fn launch(profile: &AgentProfile, spec: &JobSpec, ctx: &LaunchContext) -> Launch {
    if spec.asks() {
        return app_server_launch(profile, ctx);
    }
    let mut args: Vec<String> = vec!["exec".into()];
    // `exec` comes first so that the profile's args are exec options, like the ones added here.
    args.extend(profile.args.iter().cloned());
    for flag in ["--json", "--skip-git-repo-check"] {
        if !args_have(&profile.args, &[flag]) {
            args.push(flag.into());
        }
    }
    if let Some(mode) = &spec.permission_mode {
        args.extend(["--sandbox".into(), mode.clone()]);
    } else if !args_have(&profile.args, &SANDBOX_FLAGS) {
        let mode = if ctx.jailed {
            JAILED_SANDBOX
        } else {
            DEFAULT_SANDBOX
        };
        args.extend(["--sandbox".into(), mode.into()]);
    }
    if let Some(model) = &spec.model {
        args.extend(["--model".into(), model.clone()]);
    }
    if let Some(s) = &spec.append_system_prompt {
        // Codex sends `developer_instructions` as a developer message after its own system
        // prompt. A `-c` value is parsed as TOML; a JSON string literal is a valid TOML basic
        // string, so any text arrives unchanged.
        args.extend([
            "-c".into(),
            format!("developer_instructions={}", Value::String(s.clone())),
        ]);
    }
    let codex_home = ctx.home.join(".codex");
    let mut files = Vec::new();
    if let Some(schema) = &spec.caps.output_schema {
        // Codex constrains its final message to the schema (the model's structured output).
        let path = codex_home.join(OUTPUT_SCHEMA_FILE);
        args.extend([
            "--output-schema".into(),
            path.to_string_lossy().into_owned(),
        ]);
        files.push((path, schema.clone().into_bytes()));
    }
    // Options must precede `resume`: after it, Codex rejects them (exit 2), except `--image`,
    // which `resume` has as its own option.
    if let Some(id) = ctx.resume_conversation {
        args.extend(["resume".into(), id.to_owned()]);
    }
    for image in ctx.images {
        // Codex reads the file itself and sends it as an image input; `=` keeps the variadic
        // `--image` from taking what follows. The absolute path is the same inside the jail.
        args.push(format!(
            "--image={}",
            ctx.workspace.join(&image.path).display()
        ));
    }
    // `-` reads the prompt from stdin (any size); `--` keeps it from being taken for an option.
    args.extend(["--".into(), "-".into()]);
    with_codex_home(profile, ctx, args, files, Some(spec.prompt.clone()))
}

/// `args` run with the session's CODEX_HOME, its config.toml and `files`.
fn with_codex_home(
    profile: &AgentProfile,
    ctx: &LaunchContext,
    args: Vec<String>,
    mut files: Vec<(std::path::PathBuf, Vec<u8>)>,
    stdin: Option<String>,
) -> Launch {
    let codex_home = ctx.home.join(".codex");
    // Written on every job, even empty: the agent can write CODEX_HOME, and an `[mcp_servers]`
    // table it left there must not start a server the job did not select.
    let config = config_toml(profile.config.as_deref(), ctx.mcp);
    files.push((codex_home.join("config.toml"), config.into_bytes()));
    Launch {
        program: profile.command.clone(),
        args,
        env: vec![(
            "CODEX_HOME".into(),
            codex_home.to_string_lossy().into_owned(),
        )],
        files,
        stdin,
    }
}

/// `codex app-server` for a job that asks (`codex_app`): the thread's options (sandbox, model,
/// instructions, the thread to resume) travel in the protocol's handshake; of the profile's
/// args, which are `exec` options, only the config overrides apply to the app server.
fn app_server_launch(profile: &AgentProfile, ctx: &LaunchContext) -> Launch {
    let mut args: Vec<String> = vec!["app-server".into()];
    let mut profile_args = profile.args.iter();
    while let Some(a) = profile_args.next() {
        if CONFIG_FLAGS.contains(&a.as_str()) {
            args.push(a.clone());
            args.extend(profile_args.next().cloned());
        } else if CONFIG_FLAGS.iter().any(|f| a.starts_with(&format!("{f}="))) {
            args.push(a.clone());
        }
    }
    // The controller writes the protocol on the job's pipe.
    with_codex_home(profile, ctx, args, Vec::new(), None)
}

/// Profile args that `codex app-server` takes as well as `exec` (each with a value).
const CONFIG_FLAGS: [&str; 4] = ["-c", "--config", "--enable", "--disable"];

/// The app-server protocol for one job: the same sandbox choice as `exec`, the job's model and
/// instructions, and the session's thread when there is one.
pub(super) fn app_protocol(spec: &JobSpec, ctx: &LaunchContext) -> super::codex_app::CodexApp {
    let sandbox = if ctx.jailed {
        JAILED_SANDBOX
    } else {
        DEFAULT_SANDBOX
    };
    super::codex_app::CodexApp::new(super::codex_app::Setup {
        resume: ctx.resume_conversation.map(str::to_owned),
        cwd: ctx.workspace.to_string_lossy().into_owned(),
        sandbox: sandbox.to_owned(),
        model: spec.model.clone(),
        developer_instructions: spec.append_system_prompt.clone(),
        // Checked as JSON at submit; were it not, the turn would go unconstrained and agentd's
        // own check of the answer would still judge it.
        output_schema: spec
            .caps
            .output_schema
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok()),
    })
}

/// The operator's config.toml with the job's MCP servers as `[mcp_servers]` (replacing any the
/// operator's text has: the catalog is where operators configure MCP servers).
fn config_toml(base: Option<&str>, servers: super::mcp::Servers) -> String {
    let base = base.unwrap_or("");
    if servers.is_empty() {
        return base.to_owned();
    }
    let table = super::mcp::codex(servers);
    match base.parse::<toml::Table>() {
        Ok(mut t) => {
            t.insert("mcp_servers".into(), toml::Value::Table(table));
            t.to_string()
        }
        // Not TOML: Codex will say so itself; the servers are appended as their own tables.
        Err(_) => {
            let mut wrapper = toml::Table::new();
            wrapper.insert("mcp_servers".into(), toml::Value::Table(table));
            format!("{base}\n{wrapper}")
        }
    }
}

/// Item types that are tool uses: a call when they start, a result when they complete.
const TOOL_ITEMS: [&str; 4] = [
    "command_execution",
    "file_change",
    "mcp_tool_call",
    "web_search",
];

/// Parses `codex exec --json`. Remembers the thread id, the last agent message, usage over the
/// run's turns, and what failed.
#[derive(Debug, Default)]
pub(super) struct CodexParser {
    thread_id: Option<String>,
    last_message: Option<String>,
    /// `turn.failed`: the turn is over and failed.
    failure: Option<String>,
    /// The latest top-level `error`; Codex also reports errors it then recovers from (stream
    /// reconnects), so a later completed turn clears it.
    pending_error: Option<String>,
    usage: Usage,
    /// Tool items whose start was reported (their completion then adds only the result).
    started: HashSet<String>,
}

impl JsonLines for CodexParser {
    fn summarize(&self) -> Summary {
        let error = self.failure.clone().or_else(|| self.pending_error.clone());
        Summary {
            conversation_id: self.thread_id.clone(),
            result: if error.is_none() {
                self.last_message.clone()
            } else {
                None
            },
            error,
            usage: self.usage.clone(),
            structured: None,
        }
    }

    /// One `codex exec --json` line (also the app server's messages, rewritten: `codex_app`).
    fn interpret(&mut self, v: &Value) -> Vec<EventKind> {
        let ty = str_at(v, "type").unwrap_or_default();
        match ty {
            "thread.started" => {
                let id = str_at(v, "thread_id").unwrap_or_default().to_owned();
                if !id.is_empty() {
                    self.thread_id = Some(id.clone());
                }
                vec![EventKind::Init {
                    conversation_id: id,
                    model: String::new(),
                    tools: Vec::new(),
                    agent_version: String::new(),
                }]
            }
            "item.started" | "item.completed" => match v.get("item") {
                Some(item) => self.item(item, ty == "item.completed"),
                None => vec![other(ty)],
            },
            "turn.completed" => {
                let u = v.get("usage").unwrap_or(&Value::Null);
                self.usage.input_tokens += u64_at(u, "input_tokens");
                self.usage.output_tokens += u64_at(u, "output_tokens");
                self.usage.cache_read_input_tokens += u64_at(u, "cached_input_tokens");
                self.usage.cache_creation_input_tokens += u64_at(u, "cache_write_input_tokens");
                self.usage.num_turns = self.usage.num_turns.saturating_add(1);
                self.pending_error = None;
                // Totals so far, so the last usage event of a job is its usage.
                vec![EventKind::Usage(self.usage.clone())]
            }
            "turn.failed" => {
                let message = v
                    .get("error")
                    .and_then(|e| str_at(e, "message"))
                    .unwrap_or("turn failed");
                self.failure = Some(message.to_owned());
                vec![other(ty)]
            }
            "error" => {
                if let Some(m) = str_at(v, "message") {
                    self.pending_error = Some(m.to_owned());
                }
                vec![other(ty)]
            }
            _ => vec![other(ty)],
        }
    }
}

impl CodexParser {
    fn item(&mut self, item: &Value, completed: bool) -> Vec<EventKind> {
        let item_type = str_at(item, "type").unwrap_or_default();
        let id = str_at(item, "id").unwrap_or_default().to_owned();
        let stage = if completed {
            "item.completed"
        } else {
            "item.started"
        };
        if item_type == "agent_message" {
            if !completed {
                return vec![other(format!("{stage}/{item_type}"))];
            }
            let text = str_at(item, "text").unwrap_or_default().to_owned();
            self.last_message = Some(text.clone());
            return vec![EventKind::Text { text }];
        }
        match (item_type, completed) {
            ("reasoning", true) => {
                let text = text_of(item.get("text"));
                return vec![EventKind::Thinking { text }];
            }
            ("todo_list", _) => return vec![plan_of(item)],
            _ => {}
        }
        if !TOOL_ITEMS.contains(&item_type) {
            // Reasoning, todo lists, and `error` items (warnings such as missing model metadata).
            return vec![other(format!("{stage}/{item_type}"))];
        }
        let mut events = Vec::new();
        let announced = self.started.contains(&id);
        if !announced {
            events.push(tool_call(item_type, &id, item));
        }
        if completed {
            self.started.remove(&id);
            events.push(tool_result(item_type, id, item));
        } else {
            self.started.insert(id);
        }
        events
    }
}

/// A `todo_list` item (`items: [{text, completed}]`) as the plan it now is.
fn plan_of(item: &Value) -> EventKind {
    let items = item
        .get("items")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|i| PlanItem {
                    content: text_of(i.get("text")),
                    status: if i.get("completed").and_then(Value::as_bool) == Some(true) {
                        "completed".into()
                    } else {
                        "pending".into()
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    EventKind::Plan { items }
}

fn tool_call(item_type: &str, id: &str, item: &Value) -> EventKind {
    let (name, input) = match item_type {
        "command_execution" => (
            item_type.to_owned(),
            json!({ "command": item.get("command") }),
        ),
        "file_change" => (
            item_type.to_owned(),
            json!({ "changes": item.get("changes") }),
        ),
        "web_search" => (item_type.to_owned(), json!({ "query": item.get("query") })),
        // mcp_tool_call: the MCP tool's own name and arguments.
        _ => (
            format!(
                "{}.{}",
                str_at(item, "server").unwrap_or_default(),
                str_at(item, "tool").unwrap_or_default()
            ),
            item.get("arguments").cloned().unwrap_or(Value::Null),
        ),
    };
    EventKind::ToolCall {
        id: id.to_owned(),
        name,
        input_json: input_json_of(Some(&input)),
    }
}

fn tool_result(item_type: &str, id: String, item: &Value) -> EventKind {
    let status = str_at(item, "status").unwrap_or_default();
    let failed_status = matches!(status, "failed" | "declined");
    let (is_error, content) = match item_type {
        "command_execution" => {
            let exit_code = item.get("exit_code").and_then(Value::as_i64);
            (
                failed_status || exit_code.is_some_and(|c| c != 0),
                text_of(item.get("aggregated_output")),
            )
        }
        "mcp_tool_call" => match item.get("error").filter(|e| !e.is_null()) {
            Some(e) => (true, text_of(e.get("message").or(Some(e)))),
            None => (failed_status, text_of(item.get("result"))),
        },
        "file_change" => (failed_status, text_of(item.get("changes"))),
        _ => (failed_status, String::new()),
    };
    EventKind::ToolResult {
        id,
        is_error,
        content,
    }
}

#[cfg(test)]
#[path = "codex_tests.rs"]
mod tests;
