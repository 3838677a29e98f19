//! A job's jail, from its profile's sandbox settings: what of the host it sees (its workspace and
//! HOME, the agent's installation, the profile's paths) and how it is bounded.

use crate::config::{Config, Sandbox};
use crate::error::{Error, Result};
use crate::runner::jail::probe::{self, HostSupport};
use crate::runner::jail::{Jail, JailSpec, Shape};
use std::path::{Path, PathBuf};

/// Asks the host what it offers the jail (in a process of its own: probing forks) and refuses to
/// go on when a profile's sandbox needs something missing: the jail fails closed.
pub(super) async fn probe_host(config: &Config) -> Result<HostSupport> {
    let out = tokio::process::Command::new(&config.supervisor)
        .arg(probe::SUBCOMMAND)
        .arg(&config.sandbox.cgroup_parent)
        .env_clear()
        .output()
        .await
        .map_err(|e| Error::internal(format!("cannot probe the sandbox: {e}")))?;
    let host: HostSupport = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::internal(format!(
            "cannot probe the sandbox: {e}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    tracing::info!(?host, "sandbox support");
    for (name, sandbox) in &config.sandbox.profiles {
        if !sandbox.enabled {
            continue;
        }
        let mut missing: Vec<String> = host.missing().into_iter().map(str::to_owned).collect();
        if sandbox.network != crate::runner::jail::Network::Host && !host.net_ns {
            missing.push("network namespaces".into());
        }
        for (wanted, controller) in [
            (sandbox.limits.memory_bytes.is_some(), "memory"),
            (sandbox.limits.max_pids.is_some(), "pids"),
            (sandbox.limits.cpu_millis.is_some(), "cpu"),
        ] {
            if wanted && !host.cgroup_controllers.iter().any(|c| c == controller) {
                missing.push(format!(
                    "the cgroup controller {controller:?} under {:?}",
                    config.sandbox.cgroup_parent
                ));
            }
        }
        if !missing.is_empty() {
            return Err(Error::unavailable(
                crate::error::Reason::SandboxUnavailable,
                format!(
                    "the sandbox of agent {name:?} needs what this host does not offer agentd: {} \
                 (see the README's sandbox section; `enabled = false` under \
                 [agents.{name}.sandbox] opts out)",
                    missing.join(", ")
                ),
            ));
        }
    }
    Ok(host)
}

/// What no jail may show even where a read-only directory contains it: agentd's data dir, its
/// config file, its own executable and the supervisor's, resolved once at start (none of them
/// moves while agentd runs: the store is open in the data dir, the executable is this process's).
pub(super) fn hidden(config: &Config) -> Vec<PathBuf> {
    let mut hide: Vec<PathBuf> = [
        Some(config.data_dir.clone()),
        config.config_file.clone(),
        std::env::current_exe().ok(),
        Some(config.supervisor.clone()),
    ]
    .into_iter()
    .flatten()
    .filter_map(|p| p.canonicalize().ok())
    .collect();
    hide.sort();
    hide.dedup();
    hide
}

/// The jail for one job of a profile whose sandbox is on. `program` is what the adapter runs and
/// `path` the agent's `PATH`, against which a bare name is resolved here, so that the
/// installation it belongs to can be made visible; `hide` is [`hidden`]'s.
pub(super) fn for_job(
    config: &Config,
    hide: &[PathBuf],
    sandbox: &Sandbox,
    program: &str,
    path: Option<&str>,
    workspace: &Path,
    home: &Path,
) -> Jail {
    let mut read_only = sandbox.read_only.clone();
    read_only.extend(installation(program, path));
    Jail {
        shape: shape(config, sandbox),
        spec: JailSpec {
            workspace: workspace.to_path_buf(),
            home: home.to_path_buf(),
            read_only,
            read_write: sandbox.read_write.clone(),
            hide: hide.to_vec(),
            limits: sandbox.limits,
            bridges: Vec::new(),
            installs: Vec::new(),
            workspace_handed: false,
        },
    }
}

/// What a standby for jobs of this profile is built as.
pub(super) fn shape(config: &Config, sandbox: &Sandbox) -> Shape {
    let l = &sandbox.limits;
    let bounded = l.memory_bytes.is_some() || l.max_pids.is_some() || l.cpu_millis.is_some();
    Shape {
        network: sandbox.network,
        host_ids: config.sandbox.host_ids,
        cgroup_parent: bounded.then(|| config.sandbox.cgroup_parent.clone()),
    }
}

/// The agent's executable, resolved, and — when it lives in an npm tree — the whole
/// `node_modules` it belongs to (its dependencies and helper binaries are siblings there).
fn installation(program: &str, path: Option<&str>) -> Vec<PathBuf> {
    let Some(found) = resolve(program, path) else {
        return Vec::new();
    };
    let mut out = vec![found.clone()];
    if let Ok(real) = found.canonicalize() {
        if let Some(tree) = real
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "node_modules"))
        {
            out.push(tree.to_path_buf());
        }
        out.push(real);
    }
    out
}

/// `program` as execvp would find it.
fn resolve(program: &str, path: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npm_installations_bring_their_node_modules() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("node_modules/@x/cli");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::create_dir_all(dir.path().join("node_modules/.bin")).unwrap();
        std::fs::write(pkg.join("cli.js"), "").unwrap();
        std::os::unix::fs::symlink("../@x/cli/cli.js", dir.path().join("node_modules/.bin/x"))
            .unwrap();
        let bin = dir.path().join("node_modules/.bin");
        let got = installation("x", Some(&format!("/nonexistent:{}", bin.display())));
        let root = dir.path().canonicalize().unwrap();
        assert!(got.contains(&root.join("node_modules")), "{got:?}");
        assert!(
            got.contains(&root.join("node_modules/@x/cli/cli.js")),
            "{got:?}"
        );
        assert!(installation("surely-not-a-program", Some("/usr/bin")).is_empty());
        assert_eq!(
            installation("/bin/sh", None).first(),
            Some(&PathBuf::from("/bin/sh"))
        );
    }
}
