//! Presets and catalogs in the job use cases (#20): a submit request made from a preset, the
//! catalog names a job selects, and the swap of the config file's catalog on SIGHUP.

use super::Core;
use super::jobs::SubmitJob;
use crate::agents::{AgentKind, AgentProfile};
use crate::domain::{CatalogSelection, JobSpec, TenantId, Timestamp};
use crate::error::{Error, Reason, Result};
use crate::presets::{self, Catalog, JobFields, Preset, TenantPreset};
use crate::runner::jail::Install;
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl Core {
    /// The live catalog of the config file.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.get()
    }

    /// Re-reads the config file's catalog (SIGHUP). An invalid file is refused and the catalog in
    /// use stays; the error says why.
    pub fn reload_catalog(&self) -> std::result::Result<(), String> {
        let Some(path) = &self.config.config_file else {
            return Err("no config file to reload (--config is unset)".into());
        };
        let next =
            crate::config::reload_catalog(path, &self.config.agents).map_err(|e| e.to_string())?;
        tracing::info!(
            presets = next.presets.len(),
            mcp = next.mcp.len(),
            subagents = next.subagents.len(),
            skills = next.skills.len(),
            "config catalog reloaded"
        );
        self.catalog.replace(next);
        Ok(())
    }

    /// The preset `name` as the caller sees it: its own first, then the config file's.
    pub(super) async fn find_preset(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<Preset>> {
        if let Some(own) = self.store.get_preset(tenant, name).await? {
            return Ok(Some(own.preset));
        }
        Ok(self.catalog().presets.get(name).cloned())
    }

    /// Fills a submit request from its preset (when it names one) and returns it with the
    /// preset's name.
    pub(super) async fn apply_preset(
        &self,
        tenant: &TenantId,
        mut req: SubmitJob,
    ) -> Result<(SubmitJob, Option<String>)> {
        if req.preset.is_empty() {
            presets::reject_variables(&req.variables)?;
            return Ok((req, None));
        }
        let name = std::mem::take(&mut req.preset);
        let preset = self.find_preset(tenant, &name).await?.ok_or_else(|| {
            Error::invalid(
                Reason::UnknownPreset,
                "preset",
                format!("no preset named {name:?}"),
            )
        })?;
        let mut fields = take_fields(&mut req);
        presets::apply(&preset, &req.variables, &mut fields)?;
        put_fields(&mut req, fields);
        Ok((req, Some(name)))
    }

    /// The catalog names of a job exist, and its agent can use them: MCP servers need an agent
    /// with an MCP client; subagents and skills are Claude's and are mounted read-only, which
    /// only the jail can do.
    pub(super) fn check_catalog_selection(
        &self,
        profile: &AgentProfile,
        spec: &JobSpec,
    ) -> Result<()> {
        let sel = &spec.catalog;
        self.catalog()
            .check_selection(&sel.mcp_servers, &sel.subagents, &sel.skills)?;
        let unsupported = |field: &str, why: &str| {
            Error::invalid(
                Reason::UnsupportedOption,
                field,
                format!(
                    "agent {:?} (kind {}) cannot take {field}: {why}",
                    profile.name, profile.kind
                ),
            )
        };
        if !sel.mcp_servers.is_empty() && profile.kind == AgentKind::Command {
            return Err(unsupported("mcp_servers", "it has no MCP client"));
        }
        for (field, set) in [("subagents", &sel.subagents), ("skills", &sel.skills)] {
            if set.is_empty() {
                continue;
            }
            if profile.kind != AgentKind::Claude {
                return Err(unsupported(field, "only Claude Code reads them"));
            }
            if self.config.sandbox.of(&profile.name).is_none() {
                return Err(unsupported(
                    field,
                    "they are mounted read-only, which needs the jail",
                ));
            }
        }
        Ok(())
    }
}

/// The submit request's preset-able fields, moved out for [`presets::apply`].
fn take_fields(req: &mut SubmitJob) -> JobFields {
    use std::mem::take;
    JobFields {
        agent: take(&mut req.agent),
        prompt: take(&mut req.prompt),
        model: take(&mut req.model),
        append_system_prompt: take(&mut req.append_system_prompt),
        permission_mode: take(&mut req.permission_mode),
        allowed_tools: take(&mut req.allowed_tools),
        max_turns: req.max_turns,
        timeout_seconds: req.timeout_seconds,
        max_cost_usd: req.max_cost_usd,
        max_tokens: req.max_tokens,
        mcp_servers: take(&mut req.mcp_servers),
        subagents: take(&mut req.subagents),
        skills: take(&mut req.skills),
        env: take(&mut req.env),
        system_prompt: take(&mut req.system_prompt),
        disallowed_tools: take(&mut req.disallowed_tools),
        output_schema: take(&mut req.output_schema),
        stream_deltas: req.stream_deltas,
        attachments: take(&mut req.attachments),
        allow_rules: take(&mut req.allow_rules),
        deny_rules: take(&mut req.deny_rules),
        permission_timeout_seconds: req.permission_timeout_seconds,
        webhook_url: take(&mut req.webhook_url),
    }
}

/// Puts the merged fields back; the request then goes through the same checks as any job.
fn put_fields(req: &mut SubmitJob, f: JobFields) {
    req.agent = f.agent;
    req.prompt = f.prompt;
    req.model = f.model;
    req.append_system_prompt = f.append_system_prompt;
    req.permission_mode = f.permission_mode;
    req.allowed_tools = f.allowed_tools;
    req.max_turns = f.max_turns;
    req.timeout_seconds = f.timeout_seconds;
    req.max_cost_usd = f.max_cost_usd;
    req.max_tokens = f.max_tokens;
    req.mcp_servers = f.mcp_servers;
    req.subagents = f.subagents;
    req.skills = f.skills;
    req.env = f.env;
    req.system_prompt = f.system_prompt;
    req.disallowed_tools = f.disallowed_tools;
    req.output_schema = f.output_schema;
    req.stream_deltas = f.stream_deltas;
    req.attachments = f.attachments;
    req.allow_rules = f.allow_rules;
    req.deny_rules = f.deny_rules;
    req.permission_timeout_seconds = f.permission_timeout_seconds;
    req.webhook_url = f.webhook_url;
}

/// A preset as a caller sees it.
#[derive(Debug, Clone)]
pub struct PresetView {
    pub name: String,
    pub preset: Preset,
    /// The operator's, from the config file.
    pub read_only: bool,
    pub created: Option<Timestamp>,
    pub updated: Option<Timestamp>,
}

impl PresetView {
    fn own(p: TenantPreset) -> Self {
        PresetView {
            name: p.name,
            preset: p.preset,
            read_only: false,
            created: Some(p.created),
            updated: Some(p.updated),
        }
    }

    fn operator(name: &str, preset: &Preset) -> Self {
        PresetView {
            name: name.to_owned(),
            preset: preset.clone(),
            read_only: true,
            created: None,
            updated: None,
        }
    }
}

fn not_found(name: &str) -> Error {
    Error::not_found(Reason::PresetNotFound, format!("preset {name:?} not found"))
}

impl Core {
    /// Everything a tenant's preset must satisfy to be stored: the same checks as the config
    /// file's, against the live catalog and the profiles, and the job env rules.
    fn check_tenant_preset(&self, name: &str, preset: &Preset) -> Result<()> {
        presets::check_name(name)?;
        self.catalog().check_preset(preset)?;
        if let Some(agent) = &preset.agent
            && !self.config.agents.contains_key(agent)
        {
            return Err(Error::invalid(
                Reason::UnknownAgent,
                "agent",
                format!("unknown agent {agent:?}"),
            ));
        }
        super::jobs::check_env(&preset.env)?;
        // The capability fields get the job's own checks, so a preset that stores fine is one
        // whose jobs are not refused for it.
        super::caps::job_caps(
            preset.stream_deltas,
            preset.output_schema.clone().unwrap_or_default(),
            preset.system_prompt.clone().unwrap_or_default(),
            preset.disallowed_tools.clone(),
            preset.attachments.clone(),
        )?;
        if let Some(url) = &preset.webhook_url {
            self.job_webhook_url(url.clone())?;
        }
        Ok(())
    }

    pub async fn create_preset(
        &self,
        tenant: &TenantId,
        name: String,
        preset: Preset,
    ) -> Result<PresetView> {
        self.check_tenant_preset(&name, &preset)?;
        let now = Timestamp::now();
        let row = TenantPreset {
            tenant: tenant.clone(),
            name,
            preset,
            created: now,
            updated: now,
        };
        self.store.create_preset(&row).await?;
        Ok(PresetView::own(row))
    }

    pub async fn get_preset(&self, tenant: &TenantId, name: &str) -> Result<PresetView> {
        if let Some(own) = self.store.get_preset(tenant, name).await? {
            return Ok(PresetView::own(own));
        }
        self.catalog()
            .presets
            .get(name)
            .map(|p| PresetView::operator(name, p))
            .ok_or_else(|| not_found(name))
    }

    pub async fn list_presets(&self, tenant: &TenantId) -> Result<Vec<PresetView>> {
        let own = self.store.list_presets(tenant).await?;
        let catalog = self.catalog();
        let mut out: Vec<PresetView> = own.into_iter().map(PresetView::own).collect();
        out.extend(
            catalog
                .presets
                .iter()
                .map(|(n, p)| PresetView::operator(n, p)),
        );
        Ok(out)
    }

    pub async fn update_preset(
        &self,
        tenant: &TenantId,
        name: String,
        preset: Preset,
    ) -> Result<PresetView> {
        self.check_tenant_preset(&name, &preset)?;
        let Some(old) = self.store.get_preset(tenant, &name).await? else {
            return Err(self.missing_own(&name));
        };
        let row = TenantPreset {
            preset,
            updated: Timestamp::now(),
            ..old
        };
        if !self.store.update_preset(&row).await? {
            return Err(not_found(&name));
        }
        Ok(PresetView::own(row))
    }

    pub async fn delete_preset(&self, tenant: &TenantId, name: &str) -> Result<()> {
        if self.store.delete_preset(tenant, name).await? {
            Ok(())
        } else {
            Err(self.missing_own(name))
        }
    }

    /// A change to a preset the caller does not own: the operator's cannot be changed, anything
    /// else does not exist (another tenant's looks the same as none).
    fn missing_own(&self, name: &str) -> Error {
        if self.catalog().presets.contains_key(name) {
            Error::precondition(
                Reason::PresetReadOnly,
                format!("preset {name:?} is the operator's (config file): read-only"),
            )
        } else {
            not_found(name)
        }
    }
}

/// A job's catalog selection, resolved against the live catalog when it starts.
#[derive(Debug, Default)]
pub(super) struct Extras {
    pub mcp: Vec<(String, crate::presets::McpServer)>,
    /// Read-only directories of the jail (subagents, skills).
    pub installs: Vec<Install>,
    /// Files agentd writes into HOME first, so that each install's directory exists as a real
    /// directory (created beneath an fd, never through a link of the agent's).
    pub placeholders: Vec<(PathBuf, Vec<u8>)>,
}

/// Where Claude reads user subagents and skills, relative to HOME.
const CLAUDE_AGENTS: &str = ".claude/agents";
const CLAUDE_SKILLS: &str = ".claude/skills";
const PLACEHOLDER: &str = ".agentd-installed";

impl Core {
    /// The catalog entries a job named, as they are now; `Err` (the job's failure message) when
    /// one was removed from the catalog since the job was submitted.
    pub(super) fn resolve_catalog(
        &self,
        sel: &CatalogSelection,
        home: &Path,
    ) -> std::result::Result<Extras, String> {
        let catalog = self.catalog();
        let gone =
            |what: &str, n: &str| format!("{what} {n:?} is no longer in the operator's catalog");
        let mut out = Extras::default();
        for n in &sel.mcp_servers {
            let s = catalog.mcp.get(n).ok_or_else(|| gone("MCP server", n))?;
            out.mcp.push((n.clone(), s.clone()));
        }
        for (names, map, dir, suffix, what) in [
            (
                &sel.subagents,
                &catalog.subagents,
                CLAUDE_AGENTS,
                ".md",
                "subagent",
            ),
            (&sel.skills, &catalog.skills, CLAUDE_SKILLS, "", "skill"),
        ] {
            if names.is_empty() {
                continue;
            }
            let mut entries = Vec::new();
            for n in names {
                let path = map.get(n).ok_or_else(|| gone(what, n))?;
                entries.push((format!("{n}{suffix}"), path.clone()));
            }
            let dir = home.join(dir);
            out.placeholders.push((dir.join(PLACEHOLDER), Vec::new()));
            out.installs.push(Install { dir, entries });
        }
        Ok(out)
    }
}
