//! What the server offers: each agent profile with whether its executable exists and its version
//! (asked once at start, so answering is free), plus the limits.

use super::Core;
use crate::agents::AgentProfile;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One profile as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStatus {
    pub name: String,
    pub kind: String,
    pub command: String,
    pub available: bool,
    pub version: String,
    pub problem: String,
}

/// Finds an executable the way `execvp` would with the server's PATH.
fn resolve(command: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if command.contains('/') {
        let p = PathBuf::from(command);
        return is_exec(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(command))
            .find(|p| is_exec(p))
    })
}

async fn probe(profile: AgentProfile) -> AgentStatus {
    let mut status = AgentStatus {
        name: profile.name.clone(),
        kind: profile.kind.to_string(),
        command: profile.command.clone(),
        available: false,
        version: String::new(),
        problem: String::new(),
    };
    let found = tokio::task::spawn_blocking({
        let c = profile.command.clone();
        move || resolve(&c)
    })
    .await
    .ok()
    .flatten();
    let Some(exe) = found else {
        status.problem = format!("executable {:?} not found", profile.command);
        return status;
    };
    status.available = true;
    let Some(scratch) = Scratch::create(&profile.name).await else {
        status.problem = "cannot create a private directory to run `--version` in".to_owned();
        return status;
    };
    let run = tokio::process::Command::new(&exe)
        .arg("--version")
        .env_clear()
        .envs(probe_env(&profile, &scratch.0))
        .current_dir(&scratch.0)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let outcome = tokio::time::timeout(Duration::from_secs(10), run).await;
    scratch.remove().await;
    match outcome {
        Ok(Ok(out)) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            status.version = text.lines().next().unwrap_or_default().trim().to_owned();
        }
        Ok(Ok(out)) => status.problem = format!("`--version` exited with {}", out.status),
        Ok(Err(e)) => status.problem = format!("cannot run `--version`: {e}"),
        Err(_) => status.problem = "`--version` did not answer within 10s".to_owned(),
    }
    status
}

/// `--version` runs the operator's command outside any jail, before any job: it gets none of
/// agentd's environment (which holds every tenant's API key and the providers' keys), only the
/// variables a job's agent would get from the server plus the profile's own (minus provider keys,
/// which a version needs no more than a gateway profile's agent does), and an empty private
/// directory as its cwd and HOME, so whatever an agent CLI writes at start lands nowhere shared.
fn probe_env(profile: &AgentProfile, home: &Path) -> Vec<(String, String)> {
    let mut env = super::env::agent_env(home, &[], &profile.env, &Default::default());
    env.retain(|(k, _)| !crate::agents::gateway::is_provider_env(k));
    env
}

/// The private directory a probe runs in, removed after it.
struct Scratch(PathBuf);

impl Scratch {
    async fn create(profile: &str) -> Option<Scratch> {
        let dir = std::env::temp_dir().join(format!(
            "agentd-probe-{}-{}",
            profile
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>(),
            uuid::Uuid::new_v4().simple()
        ));
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir).ok()?;
            Some(Scratch(dir))
        })
        .await
        .ok()
        .flatten()
    }

    async fn remove(self) {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&self.0)).await;
    }
}

/// Probes every profile concurrently.
pub(super) async fn probe_all<'a>(
    profiles: impl Iterator<Item = &'a AgentProfile>,
) -> Vec<AgentStatus> {
    let mut set = tokio::task::JoinSet::new();
    for p in profiles {
        set.spawn(probe(p.clone()));
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(s) = r {
            out.push(s);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

impl Core {
    /// The agent profiles as probed at start.
    pub fn agents(&self) -> &[AgentStatus] {
        &self.agents
    }
}
