//! The config file's catalogs (#20): `[presets.<name>]`, `[mcp.<name>]`, `[subagents.<name>]`,
//! `[skills.<name>]`, checked into a [`Catalog`]. Also what a SIGHUP reload reads: the whole file
//! must still parse, but only the catalog is taken from it.

use super::{ConfigError, bad};
use crate::agents::AgentProfile;
use crate::presets::{Catalog, CatalogPath, McpServer, Preset};
use std::collections::BTreeMap;
use std::path::Path;

/// The catalog tables of the TOML file (fields of `FileConfig`, which denies unknown fields and
/// so cannot flatten this).
#[derive(Debug, Default)]
pub(super) struct FileCatalog {
    pub presets: BTreeMap<String, Preset>,
    pub mcp: BTreeMap<String, McpServer>,
    pub subagents: BTreeMap<String, CatalogPath>,
    pub skills: BTreeMap<String, CatalogPath>,
}

/// A catalog entry's name: it becomes part of tool names (`mcp__<name>__tool`) and file names.
fn check_entry_name(table: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{table}.{name:?}: names must be [A-Za-z0-9_-]{{1,64}}"
        )))
    }
}

fn check_mcp(name: &str, m: &McpServer) -> Result<(), ConfigError> {
    match (&m.command, &m.url) {
        (Some(c), None) if !c.is_empty() => Ok(()),
        (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {
            if m.args.is_empty() && m.env.is_empty() {
                Ok(())
            } else {
                Err(bad(format!(
                    "mcp.{name}: args and env belong to a command, not a url"
                )))
            }
        }
        _ => Err(bad(format!(
            "mcp.{name}: give either `command` (with optional args, env) or an http(s) `url`"
        ))),
    }
}

/// Validates the catalog tables against the configured agents.
pub(super) fn resolve(
    file: FileCatalog,
    agents: &BTreeMap<String, AgentProfile>,
) -> Result<Catalog, ConfigError> {
    let mut catalog = Catalog::default();
    for (name, m) in file.mcp {
        check_entry_name("mcp", &name)?;
        check_mcp(&name, &m)?;
        catalog.mcp.insert(name, m);
    }
    for (table, entries, want_dir) in [
        ("subagents", file.subagents, false),
        ("skills", file.skills, true),
    ] {
        for (name, entry) in entries {
            check_entry_name(table, &name)?;
            let meta = std::fs::metadata(&entry.path)
                .map_err(|e| bad(format!("{table}.{name}.path {}: {e}", entry.path.display())))?;
            if !entry.path.is_absolute() || meta.is_dir() != want_dir {
                return Err(bad(format!(
                    "{table}.{name}.path must be an absolute path to a {}",
                    if want_dir {
                        "directory (holding SKILL.md)"
                    } else {
                        "markdown file"
                    }
                )));
            }
            if want_dir && !entry.path.join("SKILL.md").is_file() {
                return Err(bad(format!("skills.{name}.path has no SKILL.md")));
            }
            let map = if want_dir {
                &mut catalog.skills
            } else {
                &mut catalog.subagents
            };
            map.insert(name, entry.path);
        }
    }
    for (name, preset) in &file.presets {
        crate::presets::check_name(name).map_err(|e| bad(format!("presets.{name:?}: {e}")))?;
        catalog
            .check_preset(preset)
            .map_err(|e| bad(format!("presets.{name}: {e}")))?;
        if let Some(agent) = &preset.agent
            && !agents.contains_key(agent)
        {
            return Err(bad(format!(
                "presets.{name}.agent {agent:?} is not a configured profile"
            )));
        }
    }
    catalog.presets = file.presets;
    Ok(catalog)
}

/// Reads the catalog of the config file again (SIGHUP). The file must parse as a whole; the
/// agent profiles it names are checked against the running ones (those are not reloaded).
pub fn reload(
    path: &Path,
    agents: &BTreeMap<String, AgentProfile>,
) -> Result<Catalog, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let file = toml::from_str::<super::FileConfig>(&text)
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let catalog = FileCatalog {
        presets: file.presets,
        mcp: file.mcp,
        subagents: file.subagents,
        skills: file.skills,
    };
    resolve(catalog, agents)
}
