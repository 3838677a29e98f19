//! Presets and the operator's catalogs (#20): named job templates (in the config file and per
//! tenant in the store), MCP servers, Claude subagent definitions and skill folders. Owns their
//! types and validation, how a preset turns a submit request into a job (defaults, the
//! `overridable` list, the prompt template), and the catalog that a SIGHUP reload swaps.
//!
//! Jobs name catalog entries; nothing a client sends can describe a server or a file itself, so a
//! job cannot run an MCP server or install a definition the operator did not configure.

pub mod template;

use crate::error::{Error, Reason, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// One MCP server of the operator's catalog (`[mcp.<name>]`): a command the agent starts inside
/// the job's sandbox, or a URL it connects to. `env` may hold secrets: never log it.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub url: Option<String>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("url", &self.url)
            .finish()
    }
}

/// A file or folder of the catalog (`[subagents.<name>] path = …`, `[skills.<name>] path = …`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogPath {
    pub path: PathBuf,
}

/// A named job template. The same shape in the config file (`[presets.<name>]`, TOML) and in the
/// store (a tenant's, JSON). Unset fields leave the job's own value or the server default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preset {
    pub description: Option<String>,
    pub agent: Option<String>,
    pub model: Option<String>,
    pub append_system_prompt: Option<String>,
    pub permission_mode: Option<String>,
    pub allowed_tools: Vec<String>,
    pub max_turns: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    pub mcp_servers: Vec<String>,
    pub subagents: Vec<String>,
    pub skills: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The prompt, with `{{variables}}` (see [`template`]); unset: the job gives its prompt.
    pub prompt_template: Option<String>,
    /// Replaces the agent's system prompt.
    pub system_prompt: Option<String>,
    pub disallowed_tools: Vec<String>,
    /// A JSON Schema the final answer must satisfy (as text, as on the wire).
    pub output_schema: Option<String>,
    pub stream_deltas: bool,
    /// Workspace files the agent is given (paths relative to the session's workspace).
    pub attachments: Vec<String>,
    /// Permission rules for permission_mode `ask`.
    pub allow_rules: Vec<String>,
    pub deny_rules: Vec<String>,
    pub permission_timeout_seconds: Option<u32>,
    pub webhook_url: Option<String>,
    /// Fields a job using the preset may set itself ([`OVERRIDABLE`] names).
    pub overridable: Vec<String>,
}

/// The job fields a preset may let a job override.
pub const OVERRIDABLE: &[&str] = &[
    "agent",
    "model",
    "prompt",
    "append_system_prompt",
    "permission_mode",
    "allowed_tools",
    "max_turns",
    "timeout_seconds",
    "max_cost_usd",
    "max_tokens",
    "mcp_servers",
    "subagents",
    "skills",
    "env",
    "system_prompt",
    "disallowed_tools",
    "output_schema",
    "stream_deltas",
    "attachments",
    "allow_rules",
    "deny_rules",
    "permission_timeout_seconds",
    "webhook_url",
];

/// A preset's name: short, printable, usable on a command line.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            Reason::InvalidField,
            "name",
            "a preset name is 1-64 characters of [A-Za-z0-9._-]",
        ))
    }
}

impl Preset {
    /// Checks what can be checked without the server's state: the template, the overridable
    /// names, the limits' signs. Names of agents and catalog entries are checked against the
    /// catalog by [`Catalog::check_preset`].
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = &self.prompt_template {
            template::check("prompt_template", t)?;
            if t.contains('\0') || t.len() > 1 << 20 {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    "prompt_template",
                    "prompt_template must be at most 1 MiB with no NUL byte",
                ));
            }
        }
        if let Some(bad) = self
            .overridable
            .iter()
            .find(|o| !OVERRIDABLE.contains(&o.as_str()))
        {
            return Err(Error::invalid(
                Reason::InvalidField,
                "overridable",
                format!(
                    "overridable: {bad:?} is not a job field; one of {}",
                    OVERRIDABLE.join(", ")
                ),
            ));
        }
        if let Some(schema) = &self.output_schema {
            crate::domain::compile_output_schema(schema)?;
        }
        crate::domain::permission::validate_rules("allow_rules", &self.allow_rules)?;
        crate::domain::permission::validate_rules("deny_rules", &self.deny_rules)?;
        if self.max_cost_usd.is_some_and(|c| !c.is_finite() || c < 0.0) {
            return Err(Error::invalid(
                Reason::InvalidField,
                "max_cost_usd",
                "max_cost_usd must be a finite number of dollars, at least 0",
            ));
        }
        for (field, value) in [
            ("description", &self.description),
            ("agent", &self.agent),
            ("model", &self.model),
            ("append_system_prompt", &self.append_system_prompt),
            ("permission_mode", &self.permission_mode),
            ("system_prompt", &self.system_prompt),
            ("output_schema", &self.output_schema),
            ("webhook_url", &self.webhook_url),
        ] {
            if value.as_deref().is_some_and(|v| v.contains('\0')) {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    field,
                    format!("{field} must not contain a NUL byte"),
                ));
            }
        }
        Ok(())
    }

    fn may_override(&self, field: &str) -> bool {
        self.overridable.iter().any(|o| o == field)
    }
}

/// The operator's catalogs and presets from the config file; replaced whole on SIGHUP.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub presets: BTreeMap<String, Preset>,
    pub mcp: BTreeMap<String, McpServer>,
    pub subagents: BTreeMap<String, PathBuf>,
    pub skills: BTreeMap<String, PathBuf>,
}

/// The current catalog, shared by the core and swapped by a config reload. Readers clone the
/// `Arc` and never hold the lock across an await.
#[derive(Debug, Clone, Default)]
pub struct SharedCatalog(Arc<RwLock<Arc<Catalog>>>);

impl SharedCatalog {
    pub fn new(catalog: Catalog) -> Self {
        SharedCatalog(Arc::new(RwLock::new(Arc::new(catalog))))
    }

    pub fn get(&self) -> Arc<Catalog> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, catalog: Catalog) {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = Arc::new(catalog);
    }
}

impl Catalog {
    /// Checks the names a job or preset selects against the catalog, naming the first unknown.
    pub fn check_selection(
        &self,
        mcp: &[String],
        subagents: &[String],
        skills: &[String],
    ) -> Result<()> {
        let lists: [(&str, &[String], Reason, Vec<&String>); 3] = [
            (
                "mcp_servers",
                mcp,
                Reason::UnknownMcpServer,
                self.mcp.keys().collect(),
            ),
            (
                "subagents",
                subagents,
                Reason::UnknownSubagent,
                self.subagents.keys().collect(),
            ),
            (
                "skills",
                skills,
                Reason::UnknownSkill,
                self.skills.keys().collect(),
            ),
        ];
        for (field, names, reason, known) in lists {
            for (i, n) in names.iter().enumerate() {
                if !known.contains(&n) {
                    let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                    return Err(Error::invalid(
                        reason,
                        format!("{field}[{i}]"),
                        format!(
                            "{field}[{i}]: {n:?} is not in the operator's catalog (configured: {})",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
            }
            let mut sorted: Vec<&String> = names.iter().collect();
            sorted.sort();
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    field,
                    format!("{field} names an entry twice"),
                ));
            }
        }
        Ok(())
    }

    /// A preset's full check: its own rules and its catalog names.
    pub fn check_preset(&self, preset: &Preset) -> Result<()> {
        preset.validate()?;
        self.check_selection(&preset.mcp_servers, &preset.subagents, &preset.skills)
    }
}

/// A submit request's fields that a preset can set, as the core receives them (empty, zero or
/// false means "not set", as on the wire).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct JobFields {
    pub agent: String,
    pub prompt: String,
    pub model: String,
    pub append_system_prompt: String,
    pub permission_mode: String,
    pub allowed_tools: Vec<String>,
    pub max_turns: u32,
    pub timeout_seconds: u32,
    pub max_cost_usd: f64,
    pub max_tokens: u64,
    pub mcp_servers: Vec<String>,
    pub subagents: Vec<String>,
    pub skills: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub system_prompt: String,
    pub disallowed_tools: Vec<String>,
    pub output_schema: String,
    pub stream_deltas: bool,
    pub attachments: Vec<String>,
    pub allow_rules: Vec<String>,
    pub deny_rules: Vec<String>,
    pub permission_timeout_seconds: u32,
    pub webhook_url: String,
}

/// The wire's "not set": a job field holding its unset value takes the preset's.
trait Unset {
    fn is_unset(&self) -> bool;
}

impl Unset for String {
    fn is_unset(&self) -> bool {
        self.is_empty()
    }
}

impl Unset for Vec<String> {
    fn is_unset(&self) -> bool {
        self.is_empty()
    }
}

impl Unset for BTreeMap<String, String> {
    fn is_unset(&self) -> bool {
        self.is_empty()
    }
}

impl Unset for u32 {
    fn is_unset(&self) -> bool {
        *self == 0
    }
}

impl Unset for u64 {
    fn is_unset(&self) -> bool {
        *self == 0
    }
}

impl Unset for f64 {
    fn is_unset(&self) -> bool {
        *self == 0.0
    }
}

impl Unset for bool {
    fn is_unset(&self) -> bool {
        !*self
    }
}

/// One field of the merge: a value the job sets must be overridable (else
/// PRESET_OVERRIDE_DENIED naming it); an unset one takes the preset's, if it has one.
fn merge<T: Clone + Unset>(
    p: &Preset,
    field: &str,
    slot: &mut T,
    preset: Option<&T>,
) -> Result<()> {
    if !slot.is_unset() {
        if p.may_override(field) {
            return Ok(());
        }
        return Err(Error::invalid(
            Reason::PresetOverrideDenied,
            field,
            format!(
                "the preset does not let a job set {field} (overridable: {:?})",
                p.overridable
            ),
        ));
    }
    if let Some(v) = preset.filter(|v| !v.is_unset()) {
        *slot = v.clone();
    }
    Ok(())
}

/// Fills `job` from `preset`: a field the job sets must be listed in `overridable` (else
/// PRESET_OVERRIDE_DENIED naming it); the rest come from the preset; the prompt is the rendered
/// template when the preset has one. Every field of [`JobFields`] goes through [`merge`], so a
/// field a preset cannot hold is not one a job can slip past it either.
pub fn apply(p: &Preset, vars: &BTreeMap<String, String>, job: &mut JobFields) -> Result<()> {
    merge(p, "agent", &mut job.agent, p.agent.as_ref())?;
    merge(p, "model", &mut job.model, p.model.as_ref())?;
    merge(
        p,
        "append_system_prompt",
        &mut job.append_system_prompt,
        p.append_system_prompt.as_ref(),
    )?;
    merge(
        p,
        "permission_mode",
        &mut job.permission_mode,
        p.permission_mode.as_ref(),
    )?;
    merge(
        p,
        "allowed_tools",
        &mut job.allowed_tools,
        Some(&p.allowed_tools),
    )?;
    merge(p, "max_turns", &mut job.max_turns, p.max_turns.as_ref())?;
    merge(
        p,
        "timeout_seconds",
        &mut job.timeout_seconds,
        p.timeout_seconds.as_ref(),
    )?;
    merge(
        p,
        "max_cost_usd",
        &mut job.max_cost_usd,
        p.max_cost_usd.as_ref(),
    )?;
    merge(p, "max_tokens", &mut job.max_tokens, p.max_tokens.as_ref())?;
    merge(p, "mcp_servers", &mut job.mcp_servers, Some(&p.mcp_servers))?;
    merge(p, "subagents", &mut job.subagents, Some(&p.subagents))?;
    merge(p, "skills", &mut job.skills, Some(&p.skills))?;
    merge(p, "env", &mut job.env, Some(&p.env))?;
    merge(
        p,
        "system_prompt",
        &mut job.system_prompt,
        p.system_prompt.as_ref(),
    )?;
    merge(
        p,
        "disallowed_tools",
        &mut job.disallowed_tools,
        Some(&p.disallowed_tools),
    )?;
    merge(
        p,
        "output_schema",
        &mut job.output_schema,
        p.output_schema.as_ref(),
    )?;
    merge(
        p,
        "stream_deltas",
        &mut job.stream_deltas,
        Some(&p.stream_deltas),
    )?;
    merge(p, "attachments", &mut job.attachments, Some(&p.attachments))?;
    merge(p, "allow_rules", &mut job.allow_rules, Some(&p.allow_rules))?;
    merge(p, "deny_rules", &mut job.deny_rules, Some(&p.deny_rules))?;
    merge(
        p,
        "permission_timeout_seconds",
        &mut job.permission_timeout_seconds,
        p.permission_timeout_seconds.as_ref(),
    )?;
    merge(
        p,
        "webhook_url",
        &mut job.webhook_url,
        p.webhook_url.as_ref(),
    )?;
    match &p.prompt_template {
        Some(t) if job.prompt.is_empty() => job.prompt = template::render(t, vars)?,
        Some(_) => {
            merge::<String>(p, "prompt", &mut job.prompt, None)?;
            reject_variables(vars)?;
        }
        None => reject_variables(vars)?,
    }
    Ok(())
}

/// Variables without a template to fill are a client bug worth saying.
pub fn reject_variables(vars: &BTreeMap<String, String>) -> Result<()> {
    match vars.keys().next() {
        Some(k) => Err(Error::invalid(
            Reason::UnknownVariable,
            format!("variables[{k:?}]"),
            "variables are only used with a preset that has a prompt_template (and no prompt)",
        )),
        None => Ok(()),
    }
}

/// A tenant's own preset, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPreset {
    pub tenant: crate::domain::TenantId,
    pub name: String,
    pub preset: Preset,
    pub created: crate::domain::Timestamp,
    pub updated: crate::domain::Timestamp,
}

#[cfg(test)]
pub(crate) mod tests;
