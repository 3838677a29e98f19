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

/// A submit request's fields that a preset can set, as the core receives them (empty or zero
/// means "not set", as on the wire).
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
}

/// Fills `job` from `preset`: a field the job sets must be listed in `overridable` (else
/// PRESET_OVERRIDE_DENIED naming it); the rest come from the preset; the prompt is the rendered
/// template when the preset has one.
pub fn apply(preset: &Preset, vars: &BTreeMap<String, String>, job: &mut JobFields) -> Result<()> {
    fn take<T: Clone>(
        p: &Preset,
        field: &str,
        job_set: bool,
        preset_value: Option<&T>,
        slot: &mut T,
    ) -> Result<()> {
        if job_set {
            if !p.may_override(field) {
                return Err(Error::invalid(
                    Reason::PresetOverrideDenied,
                    field,
                    format!(
                        "the preset does not let a job set {field} (overridable: {:?})",
                        p.overridable
                    ),
                ));
            }
        } else if let Some(v) = preset_value {
            *slot = v.clone();
        }
        Ok(())
    }
    let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    take(
        preset,
        "agent",
        !job.agent.is_empty(),
        preset.agent.as_ref(),
        &mut job.agent,
    )?;
    take(
        preset,
        "model",
        !job.model.is_empty(),
        preset.model.as_ref(),
        &mut job.model,
    )?;
    take(
        preset,
        "append_system_prompt",
        !job.append_system_prompt.is_empty(),
        preset.append_system_prompt.as_ref(),
        &mut job.append_system_prompt,
    )?;
    take(
        preset,
        "permission_mode",
        !job.permission_mode.is_empty(),
        preset.permission_mode.as_ref(),
        &mut job.permission_mode,
    )?;
    take(
        preset,
        "allowed_tools",
        !job.allowed_tools.is_empty(),
        some_vec(&preset.allowed_tools).as_ref(),
        &mut job.allowed_tools,
    )?;
    take(
        preset,
        "max_turns",
        job.max_turns > 0,
        preset.max_turns.as_ref(),
        &mut job.max_turns,
    )?;
    take(
        preset,
        "timeout_seconds",
        job.timeout_seconds > 0,
        preset.timeout_seconds.as_ref(),
        &mut job.timeout_seconds,
    )?;
    take(
        preset,
        "max_cost_usd",
        job.max_cost_usd != 0.0,
        preset.max_cost_usd.as_ref(),
        &mut job.max_cost_usd,
    )?;
    take(
        preset,
        "max_tokens",
        job.max_tokens > 0,
        preset.max_tokens.as_ref(),
        &mut job.max_tokens,
    )?;
    take(
        preset,
        "mcp_servers",
        !job.mcp_servers.is_empty(),
        some_vec(&preset.mcp_servers).as_ref(),
        &mut job.mcp_servers,
    )?;
    take(
        preset,
        "subagents",
        !job.subagents.is_empty(),
        some_vec(&preset.subagents).as_ref(),
        &mut job.subagents,
    )?;
    take(
        preset,
        "skills",
        !job.skills.is_empty(),
        some_vec(&preset.skills).as_ref(),
        &mut job.skills,
    )?;
    let preset_env = (!preset.env.is_empty()).then(|| preset.env.clone());
    take(
        preset,
        "env",
        !job.env.is_empty(),
        preset_env.as_ref(),
        &mut job.env,
    )?;
    match &preset.prompt_template {
        Some(t) if job.prompt.is_empty() => job.prompt = template::render(t, vars)?,
        Some(_) => {
            take::<String>(preset, "prompt", true, None, &mut job.prompt)?;
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
mod tests;
