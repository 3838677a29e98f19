//! What the jail costs a job's start (issue #15): SubmitJob → agent running with the jail on,
//! with `[sandbox] enabled = false`, and, as the raw baseline, Debian's `bwrap` starting the same
//! agent directly with an equivalent jail. Then a check, not an assumption, that the jailed jobs
//! left no cgroup directory and no mount behind.

use crate::harness::{Agentd, Env, TempDir, mono_ns, ms, percentile, stamp};
use crate::report::{Goal, Metric};
use anyhow::{Context, Result, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

fn bwrap() -> Result<PathBuf> {
    let p = PathBuf::from("/usr/bin/bwrap");
    if !p.exists() {
        bail!("bwrap is missing: `apt-get install -y bubblewrap` (scripts/bench installs it)");
    }
    Ok(p)
}

/// bwrap's arguments for a jail like agentd's: every namespace, system directories read-only,
/// the agent's executable, a private /proc, /dev and /tmp, the workspace read-write.
fn bwrap_args(me: &Path, ws: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["--unshare-all", "--die-with-parent", "--new-session"]
        .map(String::from)
        .into();
    for (flag, path) in [("--ro-bind", "/usr"), ("--ro-bind", "/etc")] {
        a.extend([flag.into(), path.into(), path.into()]);
    }
    // Merged /usr: /bin, /lib… are symlinks into it; elsewhere they are directories.
    for dir in ["/bin", "/sbin", "/lib", "/lib64"] {
        match std::fs::read_link(dir) {
            Ok(target) => a.extend([
                "--symlink".into(),
                target.to_string_lossy().into_owned(),
                dir.into(),
            ]),
            Err(_) => a.extend(["--ro-bind-try".into(), dir.into(), dir.into()]),
        }
    }
    let me = me.to_string_lossy().into_owned();
    let ws = ws.to_string_lossy().into_owned();
    a.extend(["--ro-bind".into(), me.clone(), me.clone()]);
    a.extend(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"].map(String::from));
    a.extend([
        "--bind".into(),
        ws.clone(),
        ws.clone(),
        "--chdir".into(),
        ws,
    ]);
    a.extend([me, "__agent".into(), "hello".into()]);
    a
}

/// bwrap spawned → the agent's `hello` stamp.
async fn bwrap_hello(env: &Env, ws: &Path) -> Result<u64> {
    let t0 = mono_ns();
    let mut child = tokio::process::Command::new(bwrap()?)
        .args(bwrap_args(&env.me, ws))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start bwrap")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = lines.next_line().await?.context("no line from bwrap")?;
    let t_agent = stamp(&line, "h").with_context(|| format!("not a hello line: {line:?}"))?;
    while lines.next_line().await?.is_some() {}
    ensure!(child.wait().await?.success(), "bwrap hello failed");
    Ok(t_agent - t0)
}

/// Directories under `<controller>/<parent>` in every mounted cgroup hierarchy (job cgroups).
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for r in roots.flatten() {
        let dir = r.path().join(parent);
        if dir.is_dir() {
            out.extend(
                walkdir::WalkDir::new(&dir)
                    .min_depth(1)
                    .into_iter()
                    .flatten()
                    .filter(|e| e.file_type().is_dir())
                    .map(|e| e.into_path())
                    .filter(|d| !is_standbys(d)),
            );
        }
    }
    out
}

/// Whether the processes in cgroup `dir` are all a waiting standby supervisor's: the cgroup it
/// made for its next job is not a finished job's leftover.
fn is_standbys(dir: &Path) -> bool {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let pids: Vec<&str> = procs.split_whitespace().collect();
    !pids.is_empty()
        && pids.iter().all(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__supervise-standby"))
        })
}

/// Removes the parent and what is left under it, deepest first.
fn remove_cgroups(parent: &str) {
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for r in roots.flatten() {
        let dir = r.path().join(parent);
        let mut all: Vec<PathBuf> = walkdir::WalkDir::new(&dir)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_dir())
            .map(|e| e.into_path())
            .collect();
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in all {
            let _ = std::fs::remove_dir(&p);
        }
    }
}

/// Mounts of the host's namespace that mention `needle`.
fn mounts_mentioning(needle: &str) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Creates the cgroup parent under each v1 controller, as an operator does for agentd (which
/// refuses to start a jail with limits without it). Where a controller is not mounted (v2 only)
/// there is nothing to create: agentd then finds its parent in the unified hierarchy.
fn create_cgroups(parent: &str) -> Result<()> {
    for c in ["memory", "pids", "cpu"] {
        let root = Path::new("/sys/fs/cgroup").join(c);
        if root.is_dir() {
            let dir = root.join(parent);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
    }
    Ok(())
}

pub async fn sandbox(env: &Env) -> Result<Vec<Metric>> {
    let n = env.size(5, 30);
    bwrap()?;
    let parent = format!("agentd-bench-{}", std::process::id());
    create_cgroups(&parent)?;
    let result = measure(env, n, &parent).await;
    remove_cgroups(&parent);
    result
}

async fn measure(env: &Env, n: usize, parent: &str) -> Result<Vec<Metric>> {
    let jailed = Agentd::start_with(
        env,
        &format!("[sandbox]\nenabled = true\ncgroup_parent = {parent:?}\n"),
        &[],
    )?;
    let open = Agentd::start_with(env, "[sandbox]\nenabled = false\n", &[])?;
    let ws = TempDir::new("bwrap-ws")?;
    let (mut cj, mut co) = (jailed.clients().await?, open.clients().await?);
    let (sj, so) = (cj.session().await?, co.session().await?);
    // One unmeasured round each, so first-use costs count for none of them.
    cj.submit_to_agent(&sj).await?;
    co.submit_to_agent(&so).await?;
    bwrap_hello(env, ws.path()).await?;
    let (mut j, mut o, mut b) = (vec![], vec![], vec![]);
    for _ in 0..n {
        j.push(cj.submit_to_agent(&sj).await?);
        o.push(co.submit_to_agent(&so).await?);
        b.push(bwrap_hello(env, ws.path()).await?);
    }
    // Every job is final; give the cleanup that follows a finished job a moment, then count.
    let data_dir = jailed.dir().join("data").to_string_lossy().into_owned();
    let deadline = mono_ns() + 5_000_000_000;
    let left = loop {
        let left = cgroup_dirs(parent).len() + mounts_mentioning(&data_dir);
        if left == 0 || mono_ns() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (j50, o50, b50) = (
        ms(percentile(&mut j, 50.0)),
        ms(percentile(&mut o, 50.0)),
        ms(percentile(&mut b, 50.0)),
    );
    Ok(vec![
        Metric::new("sandbox.submit_to_agent.jailed.p50", j50, "ms")
            .baseline(o50)
            .goal(Goal::RatioAtMost(2.0)),
        Metric::new("sandbox.submit_to_agent.jailed_vs_bwrap.p50", j50, "ms")
            .baseline(b50)
            .goal(Goal::RatioAtMost(0.5)),
        Metric::new(
            "sandbox.submit_to_agent.jailed.p99",
            ms(percentile(&mut j, 99.0)),
            "ms",
        )
        .baseline(ms(percentile(&mut o, 99.0))),
        Metric::new("sandbox.submit_to_agent.unjailed.p50", o50, "ms"),
        Metric::new("sandbox.bwrap_to_agent.p50", b50, "ms"),
        Metric::new("sandbox.leftover_cgroups_and_mounts", left as f64, "").goal(Goal::AtMost(0.0)),
    ])
}
