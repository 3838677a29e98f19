//! A standby supervisor waits for its job at the idle CPU priority; once it has one, every thread
//! of it and of the tree under it is back at the normal priority. With adoption on (the
//! product's default), the supervisor has a second thread, the spool that carries the agent's
//! output to agentd: left at SCHED_IDLE, it only runs when a core is otherwise idle, and on a
//! busy host the job's output reaches agentd late.
//!
//! A binary of its own: adoption is switched on for the whole test process.

mod common;

use agentd::runner::jail::Jail;
use agentd::runner::{Launcher, Output, ProcessSpec, RunControl, Supervisor};
use common::minimal_jail;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_agentd");
const SCHED_IDLE: u32 = 5;

/// Field `n` (1-based, as in proc(5)) of a `stat` file's text.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(n - 3)
}

/// The scheduling policy (field 41) of every live thread of `pid`, as (tid, policy).
fn thread_policies(pid: i32) -> Vec<(i32, u32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            Some((tid, stat_field(&stat, 41)?.parse().ok()?))
        })
        .collect()
}

/// `root` and its descendants, from one scan of /proc.
fn tree(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ppid) = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| stat_field(&s, 4).and_then(|p| p.parse::<i32>().ok()))
        {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found
}

/// The waiting standby: this process's child started as `__supervise-standby`.
fn standby_pid() -> Option<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        (stat_field(&stat, 4)? == me
            && String::from_utf8_lossy(&cmd).contains("__supervise-standby"))
        .then_some(pid)
    })
}

/// Whether this process may leave SCHED_IDLE again (root here): only then do standbys wait at it.
fn idle_is_reversible() -> bool {
    std::thread::spawn(|| {
        let p = nix::libc::sched_param { sched_priority: 0 };
        // SAFETY: only reads `p`; changes this short-lived thread's own policy.
        unsafe {
            nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &p) == 0
                && nix::libc::sched_setscheduler(0, nix::libc::SCHED_OTHER, &p) == 0
        }
    })
    .join()
    .unwrap()
}

/// Takes a standby (unjailed, or jailed when `jail` is given) for a job that prints a line and
/// sleeps, and checks, while it runs, that no thread of its tree is at SCHED_IDLE.
async fn check(jail: Option<Jail>, sleep: &str) {
    let runs = tempfile::tempdir().unwrap();
    let supervisor = Supervisor {
        run_dir: Some(runs.path().to_owned()),
        ..Supervisor::new(SUPERVISOR)
    };
    let launcher = Launcher::new(supervisor, 1, jail.as_ref().map(|j| j.shape.clone()));
    launcher.warm();
    // Ready, and its spool thread started (it is the supervisor's second thread).
    let deadline = Instant::now() + Duration::from_secs(20);
    let standby = loop {
        if launcher.ready() == 1
            && let Some(pid) = standby_pid()
            && thread_policies(pid).len() >= 2
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no standby with its spool thread"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    if idle_is_reversible() {
        assert!(
            thread_policies(standby)
                .iter()
                .all(|&(_, p)| p == SCHED_IDLE),
            "a waiting standby is at the idle priority: {:?}",
            thread_policies(standby)
        );
    }
    let cwd = match &jail {
        Some(j) => j.spec.workspace.clone(),
        None => std::env::temp_dir(),
    };
    let spec = ProcessSpec {
        program: "sh".into(),
        args: vec!["-c".into(), format!("echo started; sleep {sleep}")],
        env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
        cwd,
        max_line_bytes: 1 << 20,
        jail,
        stdin: Default::default(),
    };
    let process = launcher.spawn(spec).await.expect("spawn");
    assert!(process.from_standby(), "the standby was not used");
    assert_eq!(process.pid(), standby);
    let (tx, mut rx) = mpsc::channel(16);
    let control = RunControl {
        cancel: CancellationToken::new(),
        timeout: Duration::from_secs(60),
        grace: Duration::from_secs(5),
    };
    let running = tokio::spawn(process.run(tx, control));
    // The agent is running once its first line is through.
    let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no output");
    assert!(
        matches!(&first, Some(Output::Stdout(l)) if l.text == "started"),
        "{first:?}"
    );
    let threads: Vec<(i32, i32, u32)> = tree(standby)
        .into_iter()
        .flat_map(|pid| {
            thread_policies(pid)
                .into_iter()
                .map(move |(tid, p)| (pid, tid, p))
        })
        .collect();
    assert!(
        threads.iter().filter(|(pid, _, _)| *pid == standby).count() >= 2,
        "the supervisor's spool thread is gone: {threads:?}"
    );
    let idle: Vec<_> = threads
        .iter()
        .filter(|(_, _, p)| *p == SCHED_IDLE)
        .collect();
    assert!(
        idle.is_empty(),
        "threads (pid, tid, policy) of a running job left at the idle priority: {idle:?}"
    );
    while rx.recv().await.is_some() {}
    let outcome = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("run did not return")
        .unwrap();
    assert_eq!(outcome.exit, agentd::domain::ExitStatus::Code(0));
    launcher.close();
}

#[tokio::test]
async fn every_thread_of_a_standby_runs_the_job_at_normal_priority() {
    agentd::runner::adopt::enable(1 << 20, Duration::from_secs(30));
    check(None, "0.3").await;
    let dir = tempfile::tempdir().unwrap();
    check(Some(minimal_jail(dir.path())), "0.31").await;
}
