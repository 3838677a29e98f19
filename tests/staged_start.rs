//! A jailed job's start in two steps (`Launcher::spawn_when`): the standby gets the launch spec at
//! once and builds the job's part of the jail while agentd finishes the job's files and its
//! before-snapshot; the agent execs only once those are done, and never when they failed.

use agentd::domain::ExitStatus;
mod common;

use agentd::runner::jail::Jail;
use agentd::runner::{Launcher, Output, ProcessSpec, RunControl, Supervisor};
use common::minimal_jail;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_agentd");

fn spec(jail: Jail, script: &str) -> ProcessSpec {
    ProcessSpec {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
        cwd: jail.spec.workspace.clone(),
        max_line_bytes: 1 << 20,
        jail: Some(jail),
        stdin: Default::default(),
    }
}

/// A launcher whose one standby, jailed like `jail`, is ready; and that standby's pid (told from
/// the other tests' by its run dir, `runs`).
async fn ready_launcher(jail: &Jail, runs: &Path) -> (Arc<Launcher>, i32) {
    let supervisor = Supervisor {
        run_dir: Some(runs.to_owned()),
        ..Supervisor::new(SUPERVISOR)
    };
    let launcher = Launcher::new(supervisor, 1, Some(jail.shape.clone()));
    launcher.warm();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if launcher.ready() == 1
            && let Some(pid) = child_named(std::process::id() as i32, &runs.to_string_lossy())
        {
            return (launcher, pid);
        }
        assert!(Instant::now() < deadline, "no standby got ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The children of `parent`, from /proc.
fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: i32 = stat[stat.rfind(')')? + 2..]
                .split(' ')
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

fn child_named(parent: i32, needle: &str) -> Option<i32> {
    children(parent).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

/// Whether the mount namespace of the standby's ns-init (its only child) has `path` mounted.
fn jail_has_mount(standby: i32, path: &Path) -> bool {
    let Some(init) = children(standby).first().copied() else {
        return false;
    };
    let want = path.to_string_lossy().into_owned();
    std::fs::read_to_string(format!("/proc/{init}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').map_or(0, |i| i + 2)..].starts_with('Z'))
}

/// Every line and how the run ended.
async fn run(process: agentd::runner::Process) -> (Vec<String>, ExitStatus) {
    let (tx, mut rx) = mpsc::channel(64);
    let control = RunControl {
        cancel: CancellationToken::new(),
        timeout: Duration::from_secs(30),
        grace: Duration::from_secs(2),
    };
    let running = tokio::spawn(process.run(tx, control));
    let mut lines = Vec::new();
    while let Some(out) = rx.recv().await {
        match out {
            Output::Stdout(l) | Output::Stderr(l) => lines.push(l.text),
            _ => {}
        }
    }
    let outcome = running.await.unwrap();
    (lines, outcome.exit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jail_is_built_while_agentd_gets_ready_and_the_agent_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let jail = minimal_jail(dir.path());
    let workspace = jail.spec.workspace.clone();
    let (launcher, standby) = ready_launcher(&jail, runs.path()).await;
    assert!(
        !jail_has_mount(standby, &workspace),
        "the waiting standby cannot know the job's workspace yet"
    );
    // What agentd does before the agent may run: here, a file the agent must find.
    let ready = {
        let workspace = workspace.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !jail_has_mount(standby, &workspace) {
                if Instant::now() > deadline {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The jail has its workspace, and the agent has not run: it would have failed on
            // the file missing, and its exit would have ended the tree.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let waiting = alive(standby);
            std::fs::write(workspace.join("ready.txt"), "made before the agent ran\n").unwrap();
            Ok(waiting)
        }
    };
    let (spawned, built_ahead) = launcher
        .spawn_when(spec(jail, "cat ready.txt"), ready)
        .await
        .expect("ready");
    assert!(
        built_ahead,
        "the workspace was not mounted in the jail while agentd got ready"
    );
    let process = spawned.expect("spawn");
    assert!(process.from_standby(), "the standby was not used");
    assert_eq!(process.pid(), standby);
    let (lines, code) = run(process).await;
    assert_eq!(
        (lines, code),
        (
            vec!["made before the agent ran".to_owned()],
            ExitStatus::Code(0)
        )
    );
    launcher.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_getting_ready_fails_nothing_runs_and_the_standby_goes() {
    let dir = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let jail = minimal_jail(dir.path());
    let workspace: PathBuf = jail.spec.workspace.clone();
    let (launcher, standby) = ready_launcher(&jail, runs.path()).await;
    let ready = {
        let workspace = workspace.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !jail_has_mount(standby, &workspace) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err::<(), _>(agentd::error::Error::internal("the before-snapshot failed"))
        }
    };
    let got = launcher
        .spawn_when(spec(jail, "echo ran > ran.txt"), ready)
        .await;
    let err = got.expect_err("a failed ready is the call's error");
    assert!(
        err.to_string().contains("the before-snapshot failed"),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(standby) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!alive(standby), "the staged standby was left running");
    // Whatever was left of its tree is gone with it; the agent never ran.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !workspace.join("ran.txt").exists(),
        "the agent ran although agentd was not ready"
    );
    // The standby it took is replaced, as after a start.
    let deadline = Instant::now() + Duration::from_secs(20);
    while launcher.ready() == 0 {
        assert!(
            Instant::now() < deadline,
            "no standby replaced the one given up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    launcher.close();
}
