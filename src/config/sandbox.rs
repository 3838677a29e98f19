//! The jail's settings: server-wide defaults (`[sandbox]`) and per-profile overrides
//! (`[agents.<name>.sandbox]`), resolved once into each profile's effective [`Sandbox`].

use super::{ConfigError, bad};
use crate::runner::jail::{Limits, Network};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Defaults when neither `[sandbox]` nor the profile sets a key.
const MEMORY_MB: u64 = 4096;
const MAX_PIDS: u64 = 1024;
const CPU_MILLIS: u64 = 2000;
const TMP_MB: u64 = 512;
const WORKSPACE_MB: u64 = 10240;
/// Twice what an upload may bring (`--max-files-per-session`): room for what a job makes, while
/// the job's two snapshots (about 2 KB of agentd's memory per entry at their peak) stay bounded.
const WORKSPACE_FILES: u64 = 200_000;
const CGROUP_PARENT: &str = "agentd";
/// Host uid and gid of jailed agents when agentd runs as root: far above the ids of any
/// distribution's users, and owned by nobody else on the host.
const HOST_ID: u32 = 2_000_000;

const MIB: u64 = 1 << 20;

/// `[sandbox]` and `[agents.<name>.sandbox]` as written; unset keys inherit.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSandbox {
    enabled: Option<bool>,
    network: Option<Network>,
    memory_mb: Option<u64>,
    max_pids: Option<u64>,
    cpu_millis: Option<u64>,
    tmp_mb: Option<u64>,
    workspace_mb: Option<u64>,
    workspace_files: Option<u64>,
    #[serde(default)]
    read_only: Vec<PathBuf>,
    #[serde(default)]
    read_write: Vec<PathBuf>,
    /// Hosts the egress proxy lets the agent reach (`host` or `*.domain`).
    #[serde(default)]
    allow_hosts: Vec<String>,
    /// Server-wide only.
    cgroup_parent: Option<String>,
    host_uid: Option<u32>,
    host_gid: Option<u32>,
}

impl FileSandbox {
    /// Whether the table names a network itself.
    pub(super) fn names_network(sandbox: Option<&FileSandbox>) -> bool {
        sandbox.is_some_and(|s| s.network.is_some())
    }

    /// The network a profile gets when its own table names none (gateway profiles: `gateway`).
    pub(super) fn default_network(sandbox: Option<FileSandbox>, network: Network) -> FileSandbox {
        let mut s = sandbox.unwrap_or_default();
        s.network.get_or_insert(network);
        s
    }
}

/// One profile's effective jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// `false` only by explicit opt-out (`enabled = false` or `--no-sandbox`), which is logged.
    pub enabled: bool,
    pub network: Network,
    pub limits: Limits,
    pub read_only: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
    /// Hosts the egress proxy lets the agent reach through CONNECT (`host` or `*.domain`);
    /// anything else is refused with an `egress_denied` event.
    pub allow_hosts: Vec<String>,
}

/// The jail settings of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Job cgroups live under `<controller root>/<cgroup_parent>/`.
    pub cgroup_parent: String,
    /// The host ids agents run as when agentd is root; `None` when it is not (they then run as
    /// agentd's own uid, the only one an unprivileged user namespace can map).
    pub host_ids: Option<(u32, u32)>,
    pub profiles: BTreeMap<String, Sandbox>,
}

impl SandboxConfig {
    /// The effective jail of `profile` (a profile without an entry runs unjailed, which cannot
    /// happen for a configured profile).
    pub fn of(&self, profile: &str) -> Option<&Sandbox> {
        self.profiles.get(profile).filter(|s| s.enabled)
    }

    /// Whether any profile runs jailed.
    pub fn any_enabled(&self) -> bool {
        self.profiles.values().any(|s| s.enabled)
    }
}

/// Resolves every profile's jail. `off` is `--no-sandbox`.
pub(super) fn resolve(
    global: Option<FileSandbox>,
    profiles: BTreeMap<String, Option<FileSandbox>>,
    off: bool,
) -> Result<SandboxConfig, ConfigError> {
    let global = global.unwrap_or_default();
    let cgroup_parent = global
        .cgroup_parent
        .clone()
        .unwrap_or_else(|| CGROUP_PARENT.to_owned());
    if cgroup_parent.is_empty()
        || cgroup_parent.starts_with('/')
        || cgroup_parent.split('/').any(|c| c.is_empty() || c == "..")
    {
        return Err(bad(format!(
            "sandbox.cgroup_parent {cgroup_parent:?} must be a relative path without '..'"
        )));
    }
    let root = nix::unistd::geteuid().is_root();
    let host_ids = root.then(|| {
        (
            global.host_uid.unwrap_or(HOST_ID),
            global.host_gid.unwrap_or(HOST_ID),
        )
    });
    if host_ids.is_some_and(|(u, g)| u == 0 || g == 0) {
        return Err(bad("sandbox.host_uid and sandbox.host_gid must not be 0"));
    }
    let mut out = BTreeMap::new();
    for (name, own) in profiles {
        let own = own.unwrap_or_default();
        if own.cgroup_parent.is_some() || own.host_uid.is_some() || own.host_gid.is_some() {
            return Err(bad(format!(
                "agents.{name}.sandbox: cgroup_parent, host_uid and host_gid are server-wide \
                 ([sandbox])"
            )));
        }
        let sandbox = merge(&name, &global, &own, off)?;
        if !sandbox.enabled {
            tracing::warn!(agent = %name, "the sandbox is OFF for this agent: its jobs run unjailed");
        }
        out.insert(name, sandbox);
    }
    Ok(SandboxConfig {
        cgroup_parent,
        host_ids,
        profiles: out,
    })
}

fn merge(
    name: &str,
    global: &FileSandbox,
    own: &FileSandbox,
    off: bool,
) -> Result<Sandbox, ConfigError> {
    let pick = |o: Option<u64>, g: Option<u64>, d: u64| o.or(g).unwrap_or(d);
    // 0 means unbounded for the cgroup limits and the workspace.
    let bounded = |mb: u64, scale: u64| (mb > 0).then_some(mb.saturating_mul(scale));
    let tmp_mb = pick(own.tmp_mb, global.tmp_mb, TMP_MB);
    if tmp_mb == 0 {
        return Err(bad(format!(
            "agents.{name}.sandbox.tmp_mb must be at least 1"
        )));
    }
    let paths = |key: &str, list: &[PathBuf]| -> Result<Vec<PathBuf>, ConfigError> {
        list.iter()
            .map(|p| {
                if !p.is_absolute() {
                    return Err(bad(format!(
                        "agents.{name}.sandbox.{key}: {} is not an absolute path",
                        p.display()
                    )));
                }
                p.canonicalize()
                    .map_err(|e| bad(format!("agents.{name}.sandbox.{key}: {}: {e}", p.display())))
            })
            .collect()
    };
    let mut read_only = paths("read_only", &global.read_only)?;
    read_only.extend(paths("read_only", &own.read_only)?);
    let mut read_write = paths("read_write", &global.read_write)?;
    read_write.extend(paths("read_write", &own.read_write)?);
    Ok(Sandbox {
        enabled: !off && own.enabled.or(global.enabled).unwrap_or(true),
        network: own.network.or(global.network).unwrap_or_default(),
        limits: Limits {
            memory_bytes: bounded(pick(own.memory_mb, global.memory_mb, MEMORY_MB), MIB),
            max_pids: bounded(pick(own.max_pids, global.max_pids, MAX_PIDS), 1),
            cpu_millis: bounded(pick(own.cpu_millis, global.cpu_millis, CPU_MILLIS), 1),
            tmp_bytes: tmp_mb.saturating_mul(MIB),
            workspace_bytes: bounded(
                pick(own.workspace_mb, global.workspace_mb, WORKSPACE_MB),
                MIB,
            ),
            workspace_files: bounded(
                pick(own.workspace_files, global.workspace_files, WORKSPACE_FILES),
                1,
            ),
        },
        read_only,
        read_write,
        allow_hosts: global
            .allow_hosts
            .iter()
            .chain(&own.allow_hosts)
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> FileSandbox {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn profile_keys_override_the_server_defaults_which_override_built_ins() {
        let global = parse("memory_mb = 100\nnetwork = \"none\"\ntmp_mb = 8");
        let own =
            parse("memory_mb = 50\nmax_pids = 0\nread_only = [\"/usr\"]\nworkspace_files = 9");
        let cfg = resolve(
            Some(global),
            BTreeMap::from([("a".to_owned(), Some(own)), ("b".to_owned(), None)]),
            false,
        )
        .unwrap();
        let a = &cfg.profiles["a"];
        assert!(a.enabled);
        assert_eq!(a.network, Network::None);
        assert_eq!(a.limits.memory_bytes, Some(50 * MIB));
        assert_eq!(a.limits.max_pids, None, "0 means unbounded");
        assert_eq!(a.limits.tmp_bytes, 8 * MIB);
        assert_eq!(a.limits.workspace_files, Some(9));
        assert_eq!(a.read_only, vec![PathBuf::from("/usr")]);
        let b = &cfg.profiles["b"];
        assert_eq!(b.limits.memory_bytes, Some(100 * MIB));
        assert_eq!(b.limits.max_pids, Some(MAX_PIDS));
        assert_eq!(b.limits.workspace_bytes, Some(WORKSPACE_MB * MIB));
        assert_eq!(b.limits.workspace_files, Some(WORKSPACE_FILES));
        assert_eq!(cfg.cgroup_parent, "agentd");
    }

    #[test]
    fn opt_outs_and_bad_values() {
        let off = resolve(
            None,
            BTreeMap::from([("a".to_owned(), Some(parse("enabled = false")))]),
            false,
        )
        .unwrap();
        assert!(off.of("a").is_none());
        let flag = resolve(None, BTreeMap::from([("a".to_owned(), None)]), true).unwrap();
        assert!(!flag.any_enabled());
        for (global, own, want) in [
            ("cgroup_parent = \"../x\"", "", "cgroup_parent"),
            ("", "cgroup_parent = \"x\"", "server-wide"),
            ("", "tmp_mb = 0", "tmp_mb"),
            ("", "read_only = [\"relative\"]", "absolute"),
            ("", "read_write = [\"/does/not/exist\"]", "/does/not/exist"),
        ] {
            let err = resolve(
                Some(parse(global)),
                BTreeMap::from([("a".to_owned(), Some(parse(own)))]),
                false,
            )
            .unwrap_err();
            assert!(err.to_string().contains(want), "{err} (wanted {want})");
        }
        assert!(toml::from_str::<FileSandbox>("network = \"bridge\"").is_err());
        assert!(toml::from_str::<FileSandbox>("unknown = 1").is_err());
    }
}
