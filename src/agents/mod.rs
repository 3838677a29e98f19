//! Agent adapters: the only place that knows how each agent CLI is invoked and what its output
//! means. Per agent kind, an adapter turns a job into what to execute ([`launch`]), refuses job
//! options the kind cannot honour ([`validate`]), and turns the agent's stdout lines into job
//! events ([`parser`]). Adding a kind means one module here and one arm in each function below;
//! nothing else in the crate matches on [`AgentKind`].

mod acp;
mod claude;
mod codex;
mod codex_app;
mod command;
pub mod gateway;
mod gemini;
pub mod interactive;
pub mod mcp;
mod opencode;

use crate::domain::{EventKind, JobSpec, Usage};
use crate::error::{Error, Reason, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which adapter runs a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// Claude Code in headless stream-json mode.
    Claude,
    /// Any operator command: the prompt is its last argument, each stdout line is text.
    Command,
    /// OpenAI Codex CLI (`codex exec --json`).
    Codex,
    /// OpenCode (`opencode run --format json`).
    Opencode,
    /// Gemini CLI (`gemini --output-format stream-json`).
    Gemini,
}

impl AgentKind {
    /// The executable used when a profile names none (`None`: the profile must name one).
    pub fn default_command(self) -> Option<&'static str> {
        match self {
            AgentKind::Claude => Some("claude"),
            AgentKind::Command => None,
            AgentKind::Codex => Some("codex"),
            AgentKind::Opencode => Some("opencode"),
            AgentKind::Gemini => Some("gemini"),
        }
    }

    /// The name operators write in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Claude => "claude",
            AgentKind::Command => "command",
            AgentKind::Codex => "codex",
            AgentKind::Opencode => "opencode",
            AgentKind::Gemini => "gemini",
        }
    }
}

impl std::fmt::Display for AgentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Operator configuration of one agent profile (built by the config module). `env` holds operator
/// secrets such as `ANTHROPIC_API_KEY`: never log or echo them (`Debug` shows only their names).
#[derive(Clone, PartialEq)]
pub struct AgentProfile {
    pub name: String,
    pub kind: AgentKind,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The agent's own configuration file content (e.g. Codex `config.toml`), written into the
    /// session's private HOME by the adapter that knows where it goes; may hold secrets.
    pub config: Option<String>,
}

impl std::fmt::Debug for AgentProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProfile")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &RedactedEnv(&self.env))
            .field("config", &self.config.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Shows environment variable names with their values replaced.
struct RedactedEnv<'a>(&'a BTreeMap<String, String>);

impl std::fmt::Debug for RedactedEnv<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

/// Where and how one job runs. The caller runs the agent with `workspace` as its working directory
/// and `home` as `HOME`: agents keep conversation state under HOME keyed by the working directory,
/// so resuming only works when both are the same as in the earlier job.
#[derive(Debug, Clone, Copy)]
pub struct LaunchContext<'a> {
    pub workspace: &'a Path,
    pub home: &'a Path,
    /// The agent's conversation id to continue, from the session's previous job.
    pub resume_conversation: Option<&'a str>,
    /// Whether the job runs in agentd's jail, which is then the agent's sandbox: an agent's own
    /// (Codex's bubblewrap helper) cannot work inside it, since new namespaces are refused there.
    pub jailed: bool,
    /// The MCP servers the job selected from the operator's catalog (`agents::mcp`).
    pub mcp: mcp::Servers<'a>,
    /// The job's attachments that are images, read when the job starts, for kinds that take
    /// images ([`CAP_IMAGES`]); the others only see the paths in the prompt.
    pub images: &'a [Image],
}

/// An attachment given to the agent as an image: its bytes as agentd read them when the job
/// started (sniffed, at most [`MAX_IMAGE_BYTES`]).
#[derive(Clone, PartialEq)]
pub struct Image {
    /// Workspace-relative, as the job named it.
    pub path: String,
    pub media_type: &'static str,
    pub data: Vec<u8>,
}

impl Image {
    /// The bytes in standard base64, as every protocol's inline image carries them.
    pub fn base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&self.data)
    }

    /// The image as a `data:` URL.
    pub fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.media_type, self.base64())
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.path)
            .field("media_type", &self.media_type)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// Largest attachment given as an image: the Anthropic API's per-image limit. A larger one is
/// only named in the prompt.
pub const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;
/// Most image bytes one job carries (its stdin holds them base64 for Claude).
pub const MAX_IMAGES_TOTAL: usize = 20 * 1024 * 1024;

/// The image type of a file by its first bytes (the formats' own signatures), for the four
/// formats every agent's model API takes; the file name is not trusted.
pub fn sniff_image(head: &[u8]) -> Option<&'static str> {
    match head {
        [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, ..] => Some("image/png"),
        [0xff, 0xd8, 0xff, ..] => Some("image/jpeg"),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some("image/gif"),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Some("image/webp"),
        _ => None,
    }
}

/// What to execute for one job. No shell is involved: `program` and `args` become argv as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    /// Agent-specific variables; the caller merges them with the allowlisted base environment, the
    /// profile env and the job env.
    pub env: Vec<(String, String)>,
    /// Configuration files to write before starting: absolute paths under `home`, and contents.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// What the agent reads on stdin: the prompt, for every agent that can take it there (one
    /// argv string is capped at 128 KiB by Linux, a prompt may be larger); `None`: `/dev/null`.
    pub stdin: Option<String>,
}

/// One event parsed from an agent's output, with the line it came from when that is worth keeping.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub kind: EventKind,
    pub raw: Option<String>,
}

/// Turns one agent's stdout into events, line by line, and remembers what it said about the run.
pub trait OutputParser: Send {
    /// One stdout line (already cut if it was over-long: `truncated`). Returns the events it
    /// produces, in order. Never panics on any input.
    fn parse_line(&mut self, line: &str, truncated: bool) -> Vec<Parsed>;
    /// What the agent said about the run so far (called after exit).
    fn summary(&self) -> Summary;
}

/// An agent whose stdout is JSON lines, one object per line: reading the line is done once here
/// (the [`OutputParser`] of every implementor), each agent says only what its objects mean. A blank
/// line is nothing; a line that is not an object of the protocol, or was cut, is kept verbatim as
/// [`EventKind::Unparsed`]; every event of a line keeps the line as its raw form.
pub trait JsonLines: Send {
    /// Whether every JSON object is the protocol's (JSON-RPC: ACP, Codex's app server) rather
    /// than only objects with a string `type` (the stream-json shape every other agent prints).
    const ANY_OBJECT: bool = false;

    /// The events one object of the protocol stands for, in order.
    fn interpret(&mut self, v: &Value) -> Vec<EventKind>;

    /// What the agent said about the run so far ([`OutputParser::summary`]).
    fn summarize(&self) -> Summary;
}

impl<A: JsonLines> OutputParser for A {
    fn parse_line(&mut self, line: &str, truncated: bool) -> Vec<Parsed> {
        if line.trim().is_empty() {
            return Vec::new();
        }
        match protocol_object(line, A::ANY_OBJECT) {
            Some(v) => with_raw(self.interpret(&v), line),
            None => vec![unparsed(line, truncated)],
        }
    }

    fn summary(&self) -> Summary {
        self.summarize()
    }
}

/// What an agent reported about its run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub conversation_id: Option<String>,
    /// The final answer text.
    pub result: Option<String>,
    /// Set when the agent itself reported failure: its own words.
    pub error: Option<String>,
    pub usage: Usage,
    /// The answer as the agent's own structured output (a JSON text), where it has one.
    pub structured: Option<String>,
}

/// Checks a job's options against what the profile's agent kind supports, at submit time.
pub fn validate(profile: &AgentProfile, spec: &JobSpec) -> Result<()> {
    check_no_nul("prompt", &spec.prompt)?;
    for (field, value) in [
        ("model", spec.model.as_deref()),
        ("append_system_prompt", spec.append_system_prompt.as_deref()),
        ("permission_mode", spec.permission_mode.as_deref()),
    ] {
        if let Some(v) = value {
            check_no_nul(field, v)?;
        }
    }
    for tool in &spec.allowed_tools {
        check_no_nul("allowed_tools", tool)?;
    }
    if spec.asks() {
        if !interactive::controls(profile.kind).contains(&interactive::CONTROL_ASK) {
            return Err(unsupported_control(profile, "permission_mode", "ask"));
        }
        // The caller answers instead of the agent's own mode: nothing else to check.
        let rest = JobSpec {
            permission_mode: None,
            ..spec.clone()
        };
        return validate(profile, &rest);
    }
    check_caps(profile, spec)?;
    match profile.kind {
        AgentKind::Claude => check_option_values(spec),
        AgentKind::Command => command::validate(profile, spec),
        AgentKind::Codex => codex::validate(profile, spec),
        AgentKind::Opencode => opencode::validate(profile, spec),
        AgentKind::Gemini => gemini::validate(profile, spec),
    }
}

/// A job streams `text_delta`/`thinking_delta` events (`stream_deltas`).
pub const CAP_STREAM_DELTAS: &str = "stream_deltas";
/// The agent reports its reasoning as `thinking` events.
pub const CAP_THINKING: &str = "thinking";
/// The agent's todo/plan updates are `plan` events.
pub const CAP_PLAN: &str = "plan";
/// The agent itself holds its answer to `output_schema` (agentd validates it either way).
pub const CAP_OUTPUT_SCHEMA_NATIVE: &str = "output_schema_native";
/// `system_prompt` replaces the agent's system prompt.
pub const CAP_SYSTEM_PROMPT: &str = "system_prompt";
/// `disallowed_tools` are refused by the agent.
pub const CAP_DISALLOWED_TOOLS: &str = "disallowed_tools";
/// `attachments` reach the agent with the prompt.
pub const CAP_ATTACHMENTS: &str = "attachments";
/// Attachments that are images reach the model as images (without it, only their paths).
pub const CAP_IMAGES: &str = "images";

/// The #20 capabilities of a kind (ServerInfo's AgentInfo.capabilities); an option whose
/// capability is missing is refused at submit, except `stream_deltas`, which is a wish.
pub fn capabilities(kind: AgentKind) -> &'static [&'static str] {
    match kind {
        AgentKind::Claude => &[
            CAP_STREAM_DELTAS,
            CAP_THINKING,
            CAP_PLAN,
            CAP_OUTPUT_SCHEMA_NATIVE,
            CAP_SYSTEM_PROMPT,
            CAP_DISALLOWED_TOOLS,
            CAP_ATTACHMENTS,
            CAP_IMAGES,
        ],
        AgentKind::Codex => &[
            CAP_THINKING,
            CAP_PLAN,
            CAP_OUTPUT_SCHEMA_NATIVE,
            CAP_ATTACHMENTS,
            CAP_IMAGES,
        ],
        // OpenCode's JSON events carry reasoning (with `--thinking`) and its todo tool; Gemini's
        // stream-json drops the model's thoughts, and offers its todo tool to Gemini 2 models.
        AgentKind::Opencode => &[CAP_THINKING, CAP_PLAN, CAP_ATTACHMENTS, CAP_IMAGES],
        AgentKind::Gemini => &[CAP_PLAN, CAP_ATTACHMENTS, CAP_IMAGES],
        AgentKind::Command => &[],
    }
}

/// Refuses the capability options the kind cannot honour, naming the agent.
fn check_caps(profile: &AgentProfile, spec: &JobSpec) -> Result<()> {
    let caps = &spec.caps;
    let has = |cap: &str| capabilities(profile.kind).contains(&cap);
    for (field, set) in [
        (CAP_SYSTEM_PROMPT, caps.system_prompt.is_some()),
        (CAP_DISALLOWED_TOOLS, !caps.disallowed_tools.is_empty()),
        (CAP_ATTACHMENTS, !caps.attachments.is_empty()),
    ] {
        if set && !has(field) {
            return Err(unsupported(profile, field));
        }
    }
    if caps.output_schema.is_some() && profile.kind == AgentKind::Command {
        return Err(unsupported(profile, "output_schema"));
    }
    if let Some(s) = &caps.system_prompt {
        check_no_nul("system_prompt", s)?;
    }
    for tool in &caps.disallowed_tools {
        check_no_nul("disallowed_tools", tool)?;
    }
    Ok(())
}

/// Files of the agent's own state that agentd renames in HOME before the job starts; only Gemini
/// CLI under `ask` needs that (see `gemini::set_aside`).
pub fn home_renames(
    profile: &AgentProfile,
    spec: &JobSpec,
    ctx: &LaunchContext,
) -> Option<crate::workspace::Rename> {
    match profile.kind {
        AgentKind::Gemini => gemini::set_aside(spec, ctx),
        _ => None,
    }
}

/// What to execute for `spec` under `profile`. Assumes [`validate`] accepted the job.
pub fn launch(profile: &AgentProfile, spec: &JobSpec, ctx: &LaunchContext) -> Result<Launch> {
    let mut launch = match profile.kind {
        AgentKind::Claude => claude::launch(profile, spec, ctx),
        AgentKind::Command => command::launch(profile, spec),
        AgentKind::Codex => codex::launch(profile, spec, ctx),
        AgentKind::Opencode => opencode::launch(profile, spec, ctx),
        AgentKind::Gemini => gemini::launch(profile, spec, ctx),
    };
    if let Some(prompt) = &mut launch.stdin {
        prompt.push_str(&prompt_notes(profile.kind, spec, ctx.images));
    }
    if profile.kind == AgentKind::Claude {
        claude::send_images(&mut launch, spec, ctx.images);
    }
    Ok(launch)
}

/// Whether the job's attachments that are images go to the model as images: the kind takes
/// them, whether its prompt goes on stdin or, under `ask`, as its protocol's first message
/// ([`interactive::Interactive::prompt`]).
pub fn takes_images(kind: AgentKind) -> bool {
    capabilities(kind).contains(&CAP_IMAGES)
}

/// The first user message's text of a job that asks (its controller sends it): the prompt with
/// the same notes a one-shot job's stdin carries.
pub fn first_prompt(kind: AgentKind, spec: &JobSpec, images: &[Image]) -> String {
    let mut prompt = spec.prompt.clone();
    prompt.push_str(&prompt_notes(kind, spec, images));
    prompt
}

/// What the prompt itself must carry of the job's options: the attachments to read, and the
/// schema where the agent has no native structured output (agentd validates the answer).
fn prompt_notes(kind: AgentKind, spec: &JobSpec, images: &[Image]) -> String {
    let mut notes = String::new();
    if !spec.caps.attachments.is_empty() {
        notes
            .push_str("\n\nAttached files (paths relative to the working directory; read them):\n");
        for path in &spec.caps.attachments {
            let image = images.iter().any(|i| &i.path == path);
            // Gemini CLI reads an `@path` of the prompt itself and sends an image file it names
            // as inline data.
            let at = (kind == AgentKind::Gemini && image)
                .then(|| gemini::at_path(path))
                .flatten();
            if let Some(at) = at {
                notes.push_str(&format!("- {at} (also given to you as an image)\n"));
            } else if image && kind != AgentKind::Gemini {
                notes.push_str(&format!("- {path} (also given to you as an image)\n"));
            } else {
                notes.push_str(&format!("- {path}\n"));
            }
        }
    }
    if let Some(schema) = &spec.caps.output_schema
        && !capabilities(kind).contains(&CAP_OUTPUT_SCHEMA_NATIVE)
    {
        notes.push_str(&format!(
            "\n\nAnswer with only a JSON value (no other text, no code fence) that satisfies this \
             JSON Schema:\n{schema}\n"
        ));
    }
    notes
}

/// A todo tool's input (`todos: [{content or description, status}]`, the shape OpenCode's and
/// Gemini's share) as a plan event: the input is always the whole list.
fn plan_of_todos(input: Option<&Value>) -> Option<EventKind> {
    let todos = input?.get("todos")?.as_array()?;
    let field = |t: &Value, k: &str| t.get(k).and_then(Value::as_str).map(str::to_owned);
    let items = todos
        .iter()
        .map(|t| crate::domain::PlanItem {
            content: field(t, "content")
                .or_else(|| field(t, "description"))
                .unwrap_or_default(),
            status: field(t, "status").unwrap_or_default(),
        })
        .collect();
    Some(EventKind::Plan { items })
}

/// Whether an agent's conversation can be taken back to the end of an earlier job (RewindSession)
/// and copied into another session (ForkSession), issue #18.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationHistory {
    /// Every job ends with its own conversation id whose transcript no later job changes (Claude
    /// resumes with `--fork-session`); [`conversation_files`] names its files.
    PerJob,
    /// The agent keeps no conversation (operator commands).
    Stateless,
    /// One conversation grows in place across jobs (Codex's rollout file, OpenCode's and Gemini's
    /// session stores): resuming it always continues from its latest message.
    InPlace,
}

pub fn conversation_history(kind: AgentKind) -> ConversationHistory {
    match kind {
        AgentKind::Claude => ConversationHistory::PerJob,
        AgentKind::Command => ConversationHistory::Stateless,
        AgentKind::Codex | AgentKind::Opencode | AgentKind::Gemini => ConversationHistory::InPlace,
    }
}

/// The files (relative to HOME) holding conversation `id` of an agent that ran in `workspace`,
/// for a fork to copy into the new session's HOME; `None` when the kind keeps none this way or
/// the id is not a plain name.
pub fn conversation_files(kind: AgentKind, workspace: &Path, id: &str) -> Option<Vec<PathBuf>> {
    match kind {
        AgentKind::Claude => claude::transcript(workspace, id).map(|p| vec![p]),
        _ => None,
    }
}

/// The refusal for rewinding or forking a conversation the agent cannot go back in.
pub fn unsupported_history(profile_name: &str, kind: AgentKind, what: &str) -> Error {
    Error::invalid(
        Reason::UnsupportedOption,
        "job_id",
        format!(
            "agent {profile_name:?} (kind {kind}) cannot {what} its conversation: it continues \
             one conversation in place, so no earlier point of it can be resumed"
        ),
    )
}

/// A fresh parser for one run of an agent of this profile.
pub fn parser(profile: &AgentProfile) -> Box<dyn OutputParser> {
    match profile.kind {
        AgentKind::Claude => Box::new(claude::ClaudeParser::default()),
        AgentKind::Command => Box::new(command::CommandParser::default()),
        AgentKind::Codex => Box::new(codex::CodexParser::default()),
        AgentKind::Opencode => Box::new(opencode::OpencodeParser::default()),
        AgentKind::Gemini => Box::new(gemini::GeminiParser::default()),
    }
}

/// A NUL byte cannot be passed in argv; refusing it at submit time beats failing at spawn.
fn check_no_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(
            Reason::InvalidField,
            field,
            format!("{field} must not contain a NUL character"),
        ));
    }
    Ok(())
}

/// The refusal for a job option an agent kind cannot honour.
fn unsupported(profile: &AgentProfile, field: &str) -> Error {
    Error::invalid(
        Reason::UnsupportedOption,
        field,
        format!(
            "agent {:?} (kind {}) does not support {field}",
            profile.name, profile.kind
        ),
    )
}

/// The refusal for a two-way control (issue #17) that an agent kind cannot do.
pub fn unsupported_control(profile: &AgentProfile, field: &str, control: &str) -> Error {
    Error::invalid(
        Reason::UnsupportedOption,
        field,
        format!(
            "agent {:?} (kind {}) does not support the {control} control",
            profile.name, profile.kind
        ),
    )
}

/// The option-value checks every kind with real options shares: an option that is set must say
/// something (an empty model or tool name is a client bug, not a request for the default).
fn check_option_values(spec: &JobSpec) -> Result<()> {
    if spec.max_turns == Some(0) {
        return Err(Error::invalid(
            Reason::InvalidField,
            "max_turns",
            "max_turns must be at least 1",
        ));
    }
    for (field, value) in [
        ("model", spec.model.as_deref()),
        ("permission_mode", spec.permission_mode.as_deref()),
    ] {
        if value.is_some_and(|v| v.trim().is_empty()) {
            return Err(Error::invalid(
                Reason::InvalidField,
                field,
                format!("{field} must not be empty when set"),
            ));
        }
    }
    if spec.allowed_tools.iter().any(|t| t.trim().is_empty()) {
        return Err(Error::invalid(
            Reason::InvalidField,
            "allowed_tools",
            "allowed_tools must not contain empty names",
        ));
    }
    Ok(())
}

/// Refuses the first of `fields` that the job sets (for options a kind cannot honour).
fn refuse_set_options(profile: &AgentProfile, spec: &JobSpec, fields: &[&str]) -> Result<()> {
    for &field in fields {
        let set = match field {
            "model" => spec.model.is_some(),
            "allowed_tools" => !spec.allowed_tools.is_empty(),
            "max_turns" => spec.max_turns.is_some(),
            "append_system_prompt" => spec.append_system_prompt.is_some(),
            "permission_mode" => spec.permission_mode.is_some(),
            _ => false,
        };
        if set {
            return Err(unsupported(profile, field));
        }
    }
    Ok(())
}

/// Checks a permission mode against the values the agent accepts.
fn check_choice(field: &str, value: Option<&str>, choices: &[&str]) -> Result<()> {
    match value {
        Some(v) if !choices.contains(&v) => Err(Error::invalid(
            Reason::InvalidField,
            field,
            format!("{field} must be one of {}", choices.join(", ")),
        )),
        _ => Ok(()),
    }
}

/// Whether the operator's profile args already give one of these options (`--opt`, `--opt=v`,
/// or a short `-o`): the adapter then leaves it alone, since these CLIs refuse an option given
/// twice.
fn args_have(args: &[String], names: &[&str]) -> bool {
    args.iter().any(|a| {
        names.iter().any(|n| {
            a == n
                || (n.starts_with("--")
                    && a.strip_prefix(n).is_some_and(|rest| rest.starts_with('=')))
        })
    })
}

/// A stdout line as a JSON object of a [`JsonLines`] protocol: any object, or only one with a
/// string `type`.
fn protocol_object(line: &str, any_object: bool) -> Option<Value> {
    match serde_json::from_str::<Value>(line) {
        Ok(v @ Value::Object(_)) if any_object || v.get("type").is_some_and(Value::is_string) => {
            Some(v)
        }
        _ => None,
    }
}

/// A line that is not an event of the agent's protocol: kept verbatim.
fn unparsed(line: &str, truncated: bool) -> Parsed {
    Parsed {
        kind: EventKind::Unparsed {
            line: line.to_owned(),
            truncated,
        },
        raw: None,
    }
}

/// Events parsed from `line`, each keeping the line as its raw form.
fn with_raw(kinds: Vec<EventKind>, line: &str) -> Vec<Parsed> {
    kinds
        .into_iter()
        .map(|kind| Parsed {
            kind,
            raw: Some(line.to_owned()),
        })
        .collect()
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A JSON value as the text of an event field: strings as they are, anything else as JSON,
/// nothing as empty.
fn text_of(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A tool input as a JSON object text (`{}` when the agent gave none).
fn input_json_of(v: Option<&Value>) -> String {
    v.filter(|i| !i.is_null())
        .map_or_else(|| "{}".to_owned(), Value::to_string)
}

fn other(r#type: impl Into<String>) -> EventKind {
    EventKind::Other {
        r#type: r#type.into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// Asserts that `validate` refuses each of `options` (job options a kind cannot honour),
    /// set on its own, with UNSUPPORTED_OPTION naming it after `who` (`agent "x" (kind y)`).
    pub(crate) fn refuses_each_option(p: &AgentProfile, who: &str, options: &[&str]) {
        for &name in options {
            let mut s = spec("hi");
            match name {
                "model" => s.model = Some("m".into()),
                "allowed_tools" => s.allowed_tools = vec!["Bash".into()],
                "max_turns" => s.max_turns = Some(3),
                "append_system_prompt" => s.append_system_prompt = Some("be brief".into()),
                "permission_mode" => s.permission_mode = Some("plan".into()),
                other => panic!("no job option {other:?}"),
            }
            match validate(p, &s) {
                Err(Error::InvalidArgument {
                    reason: Reason::UnsupportedOption,
                    field,
                    message,
                }) => {
                    assert_eq!(field, name);
                    assert_eq!(message, format!("{who} does not support {name}"));
                }
                other => panic!("{name}: expected UNSUPPORTED_OPTION, got {other:?}"),
            }
        }
    }

    pub(crate) fn spec(prompt: &str) -> JobSpec {
        JobSpec {
            agent: "claude".into(),
            prompt: prompt.into(),
            model: None,
            timeout: Duration::from_secs(60),
            env: BTreeMap::new(),
            allowed_tools: Vec::new(),
            max_turns: None,
            append_system_prompt: None,
            permission_mode: None,
            budget: Default::default(),
            webhook_url: None,
            control: Default::default(),
            catalog: Default::default(),
            caps: Default::default(),
        }
    }

    /// The launch context adapter tests use: fixed workspace and HOME paths.
    pub(crate) fn ctx(resume: Option<&str>) -> LaunchContext<'_> {
        LaunchContext {
            workspace: Path::new("/ws/s1"),
            home: Path::new("/home/s1"),
            resume_conversation: resume,
            jailed: false,
            mcp: &[],
            images: &[],
        }
    }

    /// The stdin a launch asks for, as the core gives it: a file holding the text, or nothing.
    pub(crate) fn stdin_of(l: &Launch, home: &Path) -> std::process::Stdio {
        match &l.stdin {
            Some(text) => {
                let path = home.join(".agentd-stdin");
                std::fs::write(&path, text).unwrap();
                std::fs::File::open(&path).unwrap().into()
            }
            None => std::process::Stdio::null(),
        }
    }

    /// Every line of `text` through a fresh parser of `profile`, and the summary at the end.
    pub(crate) fn parse_with(profile: &AgentProfile, text: &str) -> (Vec<Parsed>, Summary) {
        let mut p = parser(profile);
        let events = text.lines().flat_map(|l| p.parse_line(l, false)).collect();
        (events, p.summary())
    }

    pub(crate) fn kinds(events: &[Parsed]) -> Vec<&EventKind> {
        events.iter().map(|e| &e.kind).collect()
    }

    pub(crate) fn profile(kind: AgentKind, command: &str, args: &[&str]) -> AgentProfile {
        AgentProfile {
            name: kind.as_str().into(),
            kind,
            command: command.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::from([("ANTHROPIC_API_KEY".into(), "sk-secret-value".into())]),
            config: None,
        }
    }

    #[test]
    fn profile_debug_hides_env_values() {
        let p = profile(AgentKind::Claude, "claude", &[]);
        let shown = format!("{p:?}");
        assert!(shown.contains("ANTHROPIC_API_KEY"), "{shown}");
        assert!(!shown.contains("sk-secret-value"), "{shown}");
    }

    #[test]
    fn nul_in_any_argv_field_is_refused_naming_the_field() {
        let p = profile(AgentKind::Claude, "claude", &[]);
        let mut s = spec("hi\0there");
        let err = validate(&p, &s).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument { field, .. } if field == "prompt"));
        s.prompt = "ok".into();
        s.allowed_tools = vec!["Bash\0".into()];
        let err = validate(&p, &s).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { field, reason: Reason::InvalidField, .. } if field == "allowed_tools")
        );
    }

    #[test]
    fn kind_parses_from_config_names() {
        let k: AgentKind = serde_json::from_str("\"claude\"").unwrap();
        assert_eq!(k, AgentKind::Claude);
        let k: AgentKind = serde_json::from_str("\"command\"").unwrap();
        assert_eq!(k, AgentKind::Command);
        for kind in [AgentKind::Codex, AgentKind::Opencode, AgentKind::Gemini] {
            let k: AgentKind = serde_json::from_str(&format!("\"{kind}\"")).unwrap();
            assert_eq!(k, kind);
            assert_eq!(kind.default_command(), Some(kind.as_str()));
        }
        assert!(serde_json::from_str::<AgentKind>("\"open_code\"").is_err());
        assert!(serde_json::from_str::<AgentKind>("\"Claude\"").is_err());
    }

    #[test]
    fn images_are_known_by_their_bytes_not_their_names() {
        let cases: [(&[u8], Option<&str>); 7] = [
            (b"\x89PNG\r\n\x1a\n\0\0", Some("image/png")),
            (b"\xff\xd8\xff\xe0JFIF", Some("image/jpeg")),
            (b"GIF89a\x01\0", Some("image/gif")),
            (b"GIF87a", Some("image/gif")),
            (b"RIFF\x10\0\0\0WEBPVP8 ", Some("image/webp")),
            (b"RIFF\x10\0\0\0WAVEfmt ", None),
            (b"\x89PNG\r\n", None),
        ];
        for (head, want) in cases {
            assert_eq!(sniff_image(head), want, "{head:?}");
        }
    }

    #[test]
    fn images_go_to_claude_as_base64_blocks_and_to_codex_and_opencode_as_files() {
        let p = profile(AgentKind::Claude, "claude", &[]);
        let mut s = spec("look");
        s.caps.attachments = vec!["a.png".into(), "notes.txt".into()];
        s.allowed_tools = vec!["Read".into()];
        let images = [Image {
            path: "a.png".into(),
            media_type: "image/png",
            data: b"\x89PNG\r\n\x1a\nrest".to_vec(),
        }];
        let ctx = LaunchContext {
            images: &images,
            ..ctx(None)
        };
        let l = launch(&p, &s, &ctx).unwrap();
        let at = l.args.iter().position(|a| a == "--input-format").unwrap();
        assert_eq!(l.args[at + 1], "stream-json");
        assert!(at < l.args.iter().position(|a| a == "--allowedTools").unwrap());
        let stdin = l.stdin.unwrap();
        assert_eq!(stdin.lines().count(), 1);
        let msg: Value = serde_json::from_str(&stdin).unwrap();
        let content = &msg["message"]["content"];
        let text = content[0]["text"].as_str().unwrap();
        assert!(text.starts_with("look"), "{text}");
        assert!(
            text.contains("- a.png (also given to you as an image)"),
            "{text}"
        );
        assert!(text.contains("- notes.txt\n"), "{text}");
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD
            .decode(content[1]["source"]["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, images[0].data);
        assert_eq!(content[1]["source"]["media_type"], "image/png");

        let codex = profile(AgentKind::Codex, "codex", &[]);
        let l = launch(&codex, &s, &ctx).unwrap();
        let flag = l.args.iter().position(|a| a == "--image=/ws/s1/a.png");
        let dash = l.args.iter().position(|a| a == "-");
        assert!(flag.is_some() && flag < dash, "{:?}", l.args);

        let opencode = profile(AgentKind::Opencode, "opencode", &[]);
        let l = launch(&opencode, &s, &ctx).unwrap();
        assert!(
            l.args.contains(&"--file=/ws/s1/a.png".to_owned()),
            "{:?}",
            l.args
        );

        // Gemini is told `@path`, which it reads and sends as inline data itself.
        let gemini = profile(AgentKind::Gemini, "gemini", &[]);
        let text = launch(&gemini, &s, &ctx).unwrap().stdin.unwrap();
        assert!(
            text.contains("- @a.png (also given to you as an image)\n"),
            "{text}"
        );
        assert!(text.contains("- notes.txt\n"), "{text}");
        // A command takes none.
        assert!(!takes_images(AgentKind::Command));

        // A job that asks gets them in its first message (the protocols' tests look at its
        // shape); its text names the attachments as a one-shot job's stdin does.
        s.permission_mode = Some(crate::domain::PERMISSION_ASK.into());
        let text = first_prompt(AgentKind::Claude, &s, &images);
        assert!(text.starts_with("look\n\nAttached files"), "{text}");
        assert!(
            text.contains("- a.png (also given to you as an image)\n"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod fake_claude_tests;
#[cfg(test)]
mod genuine_tests;
#[cfg(test)]
mod jsonl_tests;
