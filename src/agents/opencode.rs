//! The `opencode` kind: OpenCode run headless (`opencode run --format json …`). Owns its argv, its
//! environment and config file, and the mapping of its JSON lines (`step_start`, `text`,
//! `tool_use`, `step_finish`, `error`) to job events.
//!
//! OpenCode keeps conversations in `$HOME/.local/share/opencode`, so the session's private HOME is
//! what lets a later job continue with `-s <sessionID>`. It prints no final result event: the
//! job's result is its last text.

use super::{
    AgentProfile, JsonLines, Launch, LaunchContext, Summary, args_have, check_option_values,
    input_json_of, other, refuse_set_options, str_at, text_of,
};
use crate::domain::{EventKind, JobSpec, Usage};
use crate::error::Result;
use serde_json::Value;
use std::path::PathBuf;

/// Keeps an unattended OpenCode from fetching model lists, updating itself, or downloading
/// language servers when it edits a file.
/// OpenCode's todo tool (`todos: [{content, status, priority}]`): its input is the whole plan.
const TODO_TOOL: &str = "todowrite";

const QUIET_ENV: [(&str, &str); 3] = [
    ("OPENCODE_DISABLE_MODELS_FETCH", "1"),
    ("OPENCODE_DISABLE_AUTOUPDATE", "1"),
    ("OPENCODE_DISABLE_LSP_DOWNLOAD", "1"),
];

/// Where the profile's config goes, relative to the session HOME (OpenCode's own default place).
const CONFIG_PATH: &str = ".config/opencode/opencode.json";
/// OpenCode's global config directory, relative to the session HOME.
const CONFIG_DIR: &str = ".config/opencode";

pub(super) fn validate(profile: &AgentProfile, spec: &JobSpec) -> Result<()> {
    check_option_values(spec)?;
    // OpenCode's tools, step limit, prompt and permissions live in its config file (the
    // operator's), not on its command line.
    refuse_set_options(
        profile,
        spec,
        &[
            "allowed_tools",
            "max_turns",
            "append_system_prompt",
            "permission_mode",
        ],
    )
}

pub(super) fn launch(profile: &AgentProfile, spec: &JobSpec, ctx: &LaunchContext) -> Launch {
    if spec.asks() {
        return acp_launch(profile, spec, ctx);
    }
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(profile.args.iter().cloned());
    if !args_have(&profile.args, &["--format"]) {
        args.extend(["--format".into(), "json".into()]);
    }
    // Nobody can answer a permission prompt in a headless run (OpenCode would reject the tool
    // call); `--auto` approves what the operator's config does not explicitly deny.
    if !args_have(&profile.args, &["--auto"]) {
        args.push("--auto".into());
    }
    // Without it the reasoning parts never reach the JSON events (`thinking` events).
    if !args_have(&profile.args, &["--thinking"]) {
        args.push("--thinking".into());
    }
    if let Some(model) = &spec.model {
        args.extend(["--model".into(), model.clone()]);
    }
    if let Some(id) = ctx.resume_conversation {
        args.extend(["--session".into(), id.to_owned()]);
    }
    for image in ctx.images {
        // A file part of the message, which OpenCode sends as an image to a model whose config
        // says it takes them; `=` keeps the array option from taking what follows.
        args.push(format!(
            "--file={}",
            ctx.workspace.join(&image.path).display()
        ));
    }
    // No message argument: `run` reads the message from stdin when it is not a terminal.
    let (env, files) = environment(config_with_mcp(profile, ctx), ctx);
    Launch {
        program: profile.command.clone(),
        args,
        env,
        files,
        stdin: Some(spec.prompt.clone()),
    }
}

/// `opencode acp` for a job that asks (`acp`): the operator's config with every tool that
/// would run unasked set to `ask` (what the operator denies stays denied), and the job's model.
/// The profile's args are `run` options and do not apply.
fn acp_launch(profile: &AgentProfile, spec: &JobSpec, ctx: &LaunchContext) -> Launch {
    let mut config: serde_json::Map<String, Value> =
        serde_json::from_str(&config_with_mcp(profile, ctx)).unwrap_or_default();
    let permission = config.remove("permission").unwrap_or(Value::Null);
    config.insert("permission".into(), asking(&permission));
    if let Some(model) = &spec.model {
        config.insert("model".into(), Value::String(model.clone()));
    }
    let (env, files) = environment(Value::Object(config).to_string(), ctx);
    Launch {
        program: profile.command.clone(),
        args: vec!["acp".into()],
        env,
        files,
        // The controller writes the protocol on the job's pipe.
        stdin: None,
    }
}

/// OpenCode's permission settings with each tool's `allow` turned into `ask`; `deny`s stay.
fn asking(permission: &Value) -> Value {
    let ask = |v: Option<&Value>| match v {
        Some(Value::String(s)) if s == "deny" => Value::String(s.clone()),
        Some(Value::Object(patterns)) => {
            let mut kept: serde_json::Map<String, Value> = patterns
                .iter()
                .filter(|(_, a)| a.as_str() == Some("deny"))
                .map(|(p, a)| (p.clone(), a.clone()))
                .collect();
            kept.insert("*".into(), "ask".into());
            Value::Object(kept)
        }
        _ => "ask".into(),
    };
    let mut out = serde_json::Map::new();
    for tool in ["edit", "bash", "webfetch"] {
        out.insert(tool.into(), ask(permission.get(tool)));
    }
    Value::Object(out)
}

/// The operator's config with the job's MCP servers.
fn config_with_mcp(profile: &AgentProfile, ctx: &LaunchContext) -> String {
    match (&profile.config, ctx.mcp.is_empty()) {
        (base, false) => {
            super::mcp::json_with(base.as_deref(), "mcp", super::mcp::opencode(ctx.mcp))
        }
        (Some(c), true) => c.clone(),
        (None, true) => "{}".to_owned(),
    }
}

/// Environment variables (name, value) and files (path, bytes) of a launch.
type EnvAndFiles = (Vec<(String, String)>, Vec<(PathBuf, Vec<u8>)>);

/// The environment and config files of every OpenCode job.
fn environment(config: String, ctx: &LaunchContext) -> EnvAndFiles {
    let mut env: Vec<(String, String)> = QUIET_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // A workspace `opencode.json` or `.opencode/` (which the agent can write) must not add MCP
    // servers or anything else to the operator's config.
    env.push(("OPENCODE_DISABLE_PROJECT_CONFIG".into(), "1".into()));
    // OpenCode merges every global config file it finds (`config.json`, `opencode.json`,
    // `opencode.jsonc` under ~/.config/opencode), all of which the agent can write: agentd
    // rewrites all three on every job, so only the operator's config and the job's MCP servers
    // count.
    let path = ctx.home.join(CONFIG_PATH);
    env.push((
        "OPENCODE_CONFIG".into(),
        path.to_string_lossy().into_owned(),
    ));
    let dir = ctx.home.join(CONFIG_DIR);
    let files = vec![
        (path, config.into_bytes()),
        (dir.join("config.json"), b"{}".to_vec()),
        (dir.join("opencode.jsonc"), b"{}".to_vec()),
    ];
    (env, files)
}

/// Parses `opencode run --format json`. Remembers the session id, the last text, usage summed
/// over steps, and the error OpenCode reported.
#[derive(Debug, Default)]
pub(super) struct OpencodeParser {
    session_id: Option<String>,
    last_text: Option<String>,
    error: Option<String>,
    usage: Usage,
}

impl JsonLines for OpencodeParser {
    fn summarize(&self) -> Summary {
        Summary {
            conversation_id: self.session_id.clone(),
            result: if self.error.is_none() {
                self.last_text.clone()
            } else {
                None
            },
            error: self.error.clone(),
            usage: self.usage.clone(),
            structured: None,
        }
    }

    fn interpret(&mut self, v: &Value) -> Vec<EventKind> {
        let mut events = Vec::new();
        // OpenCode has no init event; every event names the session, so the first one stands in.
        if self.session_id.is_none()
            && let Some(id) = str_at(v, "sessionID").filter(|s| !s.is_empty())
        {
            self.session_id = Some(id.to_owned());
            events.push(EventKind::Init {
                conversation_id: id.to_owned(),
                model: String::new(),
                tools: Vec::new(),
                agent_version: String::new(),
            });
        }
        let ty = str_at(v, "type").unwrap_or_default();
        let part = v.get("part").unwrap_or(&Value::Null);
        match ty {
            "text" => {
                let text = str_at(part, "text").unwrap_or_default().to_owned();
                self.last_text = Some(text.clone());
                events.push(EventKind::Text { text });
            }
            // Only with `--thinking`: the model's reasoning, whole.
            "reasoning" => match str_at(part, "text").filter(|t| !t.is_empty()) {
                Some(text) => events.push(EventKind::Thinking {
                    text: text.to_owned(),
                }),
                None => events.push(other(ty)),
            },
            // Reported once the tool has finished: the call and its result together.
            "tool_use" => {
                let id = str_at(part, "callID").unwrap_or_default().to_owned();
                let state = part.get("state").unwrap_or(&Value::Null);
                if str_at(part, "tool") == Some(TODO_TOOL)
                    && let Some(plan) = super::plan_of_todos(state.get("input"))
                {
                    events.push(plan);
                }
                events.push(EventKind::ToolCall {
                    id: id.clone(),
                    name: str_at(part, "tool").unwrap_or_default().to_owned(),
                    input_json: input_json_of(state.get("input")),
                });
                let is_error = str_at(state, "status") == Some("error");
                let content = if is_error {
                    text_of(state.get("error"))
                } else {
                    text_of(state.get("output"))
                };
                events.push(EventKind::ToolResult {
                    id,
                    is_error,
                    content,
                });
            }
            "step_finish" => {
                let tokens = part.get("tokens").unwrap_or(&Value::Null);
                let count = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
                let cache = tokens.get("cache").unwrap_or(&Value::Null);
                let u = &mut self.usage;
                u.input_tokens += count(tokens, "input");
                u.output_tokens += count(tokens, "output");
                u.cache_read_input_tokens += count(cache, "read");
                u.cache_creation_input_tokens += count(cache, "write");
                if let Some(cost) = part.get("cost").and_then(Value::as_f64) {
                    u.cost_usd = Some(u.cost_usd.unwrap_or(0.0) + cost);
                }
                u.num_turns = u.num_turns.saturating_add(1);
                // Totals so far, so the last usage event of a job is its usage.
                events.push(EventKind::Usage(self.usage.clone()));
            }
            "error" => {
                self.error = Some(error_text(v.get("error").unwrap_or(&Value::Null)));
                events.push(other(ty));
            }
            _ => events.push(other(ty)),
        }
        events
    }
}

/// OpenCode's own words for an error: `data.message` (e.g. the provider's message), else its
/// name.
fn error_text(e: &Value) -> String {
    e.get("data")
        .and_then(|d| str_at(d, "message"))
        .or_else(|| str_at(e, "message"))
        .or_else(|| str_at(e, "name"))
        .map_or_else(|| "opencode reported an error".to_owned(), String::from)
}

#[cfg(test)]
#[path = "opencode_tests.rs"]
mod tests;
