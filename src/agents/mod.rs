//! Agent adapters: the only place that knows how each agent CLI is invoked and what its output
//! means. Per agent kind, an adapter turns a job into what to execute ([`launch`]), refuses job
//! options the kind cannot honour ([`validate`]), and turns the agent's stdout lines into job
//! events ([`parser`]). Adding a kind means one module here and one arm in each function below;
//! nothing else in the crate matches on [`AgentKind`].

mod claude;
mod command;

use crate::domain::{EventKind, JobSpec, Usage};
use crate::error::{Error, Reason, Result};
use serde::Deserialize;
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
}

impl AgentKind {
    /// The executable used when a profile names none (`None`: the profile must name one).
    pub fn default_command(self) -> Option<&'static str> {
        match self {
            AgentKind::Claude => Some("claude"),
            AgentKind::Command => None,
        }
    }

    /// The name operators write in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Claude => "claude",
            AgentKind::Command => "command",
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

/// What an agent reported about its run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub conversation_id: Option<String>,
    /// The final answer text.
    pub result: Option<String>,
    /// Set when the agent itself reported failure: its own words.
    pub error: Option<String>,
    pub usage: Usage,
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
    match profile.kind {
        AgentKind::Claude => claude::validate(spec),
        AgentKind::Command => command::validate(profile, spec),
    }
}

/// What to execute for `spec` under `profile`. Assumes [`validate`] accepted the job.
pub fn launch(profile: &AgentProfile, spec: &JobSpec, ctx: &LaunchContext) -> Result<Launch> {
    match profile.kind {
        AgentKind::Claude => Ok(claude::launch(profile, spec, ctx)),
        AgentKind::Command => Ok(command::launch(profile, spec)),
    }
}

/// A fresh parser for one run of an agent of this profile.
pub fn parser(profile: &AgentProfile) -> Box<dyn OutputParser> {
    match profile.kind {
        AgentKind::Claude => Box::new(claude::ClaudeParser::default()),
        AgentKind::Command => Box::new(command::CommandParser::default()),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

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
        }
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
        assert!(serde_json::from_str::<AgentKind>("\"Claude\"").is_err());
    }
}

#[cfg(test)]
mod fake_claude_tests;
