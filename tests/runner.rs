//! The runner with real processes: the agentd binary as supervisor, `sh` scripts as agents.
//! Each test uses its own unique `sleep` duration so parallel tests never see each other's processes.

use agentd::domain::ExitStatus;
use agentd::runner::supervise::SUBCOMMAND;
use agentd::runner::{
    Containment, Launcher, Line, Output, Process, ProcessSpec, RunControl, RunOutcome, StopCause,
    Supervisor,
};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_agentd");
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A process to run and the supervisor to run it under (in agentd, the launcher's).
#[derive(Clone)]
struct Spec {
    process: ProcessSpec,
    supervisor: Supervisor,
}

impl Deref for Spec {
    type Target = ProcessSpec;
    fn deref(&self) -> &ProcessSpec {
        &self.process
    }
}

impl DerefMut for Spec {
    fn deref_mut(&mut self) -> &mut ProcessSpec {
        &mut self.process
    }
}

fn spec(program: &str, args: &[&str]) -> Spec {
    Spec {
        process: ProcessSpec {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec![("PATH".into(), PATH.into())],
            cwd: std::env::temp_dir(),
            max_line_bytes: 1 << 20,
            jail: None,
            stdin: Default::default(),
        },
        supervisor: Supervisor::new(SUPERVISOR),
    }
}

fn sh(script: &str) -> Spec {
    spec("sh", &["-c", script])
}

/// In the fallback containment: the subreaper without a PID namespace.
fn no_ns(mut spec: Spec) -> Spec {
    spec.supervisor.containment = Containment::Subreaper;
    spec
}

/// Spawns `spec` under a supervisor of its own.
fn spawn(spec: Spec) -> agentd::error::Result<Process> {
    Process::spawn(&spec.supervisor, spec.process)
}

fn control(timeout: Duration, grace: Duration) -> RunControl {
    RunControl {
        cancel: CancellationToken::new(),
        timeout,
        grace,
    }
}

fn relaxed() -> RunControl {
    control(Duration::from_secs(60), Duration::from_secs(5))
}

struct Ran {
    outcome: RunOutcome,
    stdout: Vec<Line>,
    stderr: Vec<Line>,
}

impl Ran {
    fn stdout_texts(&self) -> Vec<&str> {
        self.stdout.iter().map(|l| l.text.as_str()).collect()
    }
    fn stderr_texts(&self) -> Vec<&str> {
        self.stderr.iter().map(|l| l.text.as_str()).collect()
    }
}

async fn run(spec: Spec, control: RunControl) -> Ran {
    run_process(spawn(spec).expect("spawn"), control).await
}

async fn run_process(process: Process, control: RunControl) -> Ran {
    let (tx, mut rx) = mpsc::channel(16);
    let collect = tokio::spawn(async move {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(o) = rx.recv().await {
            match o {
                Output::Stdout(l) => stdout.push(l),
                Output::Stderr(l) => stderr.push(l),
                Output::Notice(n) => panic!("an unjailed run got a notice: {n:?}"),
                Output::Event(e) => panic!("a bare process has no gateway: {e:?}"),
            }
        }
        (stdout, stderr)
    });
    let outcome = tokio::time::timeout(Duration::from_secs(60), process.run(tx, control))
        .await
        .expect("run did not return");
    let (stdout, stderr) = collect.await.unwrap();
    Ran {
        outcome,
        stdout,
        stderr,
    }
}

/// Pids of live `sleep <arg>` processes, wherever they are.
fn sleepers(arg: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if argv.first().is_some_and(|a0| a0.ends_with(b"sleep")) && argv.contains(&arg.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

async fn wait_for_sleeper(arg: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleepers(arg).is_empty() {
        assert!(Instant::now() < deadline, "sleep {arg} never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_gone(arg: &str) {
    let left = sleepers(arg);
    assert!(left.is_empty(), "sleep {arg} still alive: {left:?}");
}

fn line(text: &str) -> Line {
    Line {
        text: text.into(),
        truncated: false,
    }
}

// ---- output, exit status, exec errors ----

async fn check_output_and_exit(spec: Spec) {
    let ran = run(spec, relaxed()).await;
    assert_eq!(ran.stdout, vec![line("one"), line("three")]);
    assert_eq!(ran.stderr, vec![line("two"), line("four")]);
    assert_eq!(
        ran.outcome,
        RunOutcome {
            exit: ExitStatus::Code(3),
            stop: None
        }
    );
}

const ECHO_SCRIPT: &str = "echo one; echo two >&2; printf 'three\\r\\n'; echo four >&2; exit 3";

#[tokio::test]
async fn echo_lines_in_order_and_exit_code() {
    check_output_and_exit(sh(ECHO_SCRIPT)).await;
}

#[tokio::test]
async fn echo_lines_in_order_and_exit_code_fallback() {
    check_output_and_exit(no_ns(sh(ECHO_SCRIPT))).await;
}

#[tokio::test]
async fn signal_death_is_propagated() {
    for spec in [sh("kill -TERM $$"), no_ns(sh("kill -TERM $$"))] {
        let ran = run(spec, relaxed()).await;
        assert_eq!(ran.outcome.exit, ExitStatus::Signal(15));
        assert_eq!(ran.outcome.stop, None);
    }
    // A core-dumping signal too, without leaving a core file behind.
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh("kill -SEGV $$");
    spec.cwd = dir.path().to_owned();
    let ran = run(spec, relaxed()).await;
    assert_eq!(ran.outcome.exit, ExitStatus::Signal(11));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn program_not_found_is_127_with_one_stderr_line() {
    for spec in [
        spec("no-such-agent-xyz", &["a"]),
        no_ns(spec("no-such-agent-xyz", &["a"])),
    ] {
        let ran = run(spec, relaxed()).await;
        assert_eq!(ran.outcome.exit, ExitStatus::Code(127));
        assert_eq!(
            ran.stderr_texts(),
            vec![r#"agentd: cannot execute "no-such-agent-xyz": No such file or directory"#]
        );
        assert!(ran.stdout.is_empty());
    }
}

#[tokio::test]
async fn program_not_executable_is_126() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    let ran = run(spec(file.to_str().unwrap(), &[]), relaxed()).await;
    assert_eq!(ran.outcome.exit, ExitStatus::Code(126));
    assert_eq!(
        ran.stderr_texts(),
        vec![format!(
            "agentd: cannot execute {:?}: Permission denied",
            file.to_str().unwrap()
        )]
    );
}

#[tokio::test]
async fn environment_and_cwd_are_exactly_the_given_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let runs = tempfile::tempdir().unwrap();
    for no_namespace in [false, true] {
        let mut spec = spec("env", &[]);
        spec.env.push(("FOO".into(), "bar baz".into()));
        spec.supervisor.run_dir = Some(runs.path().to_owned());
        if no_namespace {
            spec = no_ns(spec);
        }
        let ran = run(spec, relaxed()).await;
        let mut env = ran.stdout_texts();
        env.sort();
        // The run marker is the one addition; the record's location is not passed on.
        let token = env.remove(0);
        let token = token.strip_prefix("AGENTD_RUN_TOKEN=").expect(token);
        assert!(
            token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "{token}"
        );
        assert_eq!(env, vec!["FOO=bar baz", &format!("PATH={PATH}")]);
        assert_eq!(
            std::fs::read_dir(runs.path()).unwrap().count(),
            0,
            "a finished run leaves no record"
        );
    }
    let mut spec = spec("pwd", &["-P"]);
    spec.cwd = cwd.clone();
    let ran = run(spec, relaxed()).await;
    assert_eq!(ran.stdout_texts(), vec![cwd.to_str().unwrap()]);
}

/// Nothing blocked, no standard signal ignored (agentd's parent may ignore some; the test harness
/// ignores SIGPIPE), stdin is empty.
#[tokio::test]
async fn agent_starts_with_default_signal_state_and_no_stdin() {
    for spec in [
        sh("grep -E '^Sig(Blk|Ign)' /proc/self/status; cat; echo eof"),
        no_ns(sh(
            "grep -E '^Sig(Blk|Ign)' /proc/self/status; cat; echo eof",
        )),
    ] {
        let ran = run(spec, relaxed()).await;
        let out = ran.stdout_texts();
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], "SigBlk:\t0000000000000000");
        let ignored = u64::from_str_radix(out[1].trim_start_matches("SigIgn:\t"), 16).unwrap();
        // Bits 0..31 are signals 1..32; glibc reserves 32 and 33 and won't let them be reset.
        assert_eq!(ignored & 0x7fff_ffff, 0, "{}", out[1]);
        assert_eq!(out[2], "eof");
    }
}

/// In ns mode the agent is PID 2 and /proc shows the namespace's PIDs.
#[tokio::test]
async fn agent_sees_its_own_pid_namespace_in_proc() {
    let ran = run(
        sh("echo $$; cat /proc/$$/comm; ls /proc | grep -c '^[0-9]'"),
        relaxed(),
    )
    .await;
    let out = ran.stdout_texts();
    assert_eq!(out[..2], ["2", "sh"], "{out:?}");
    // ns-init, sh, ls and grep at most.
    let visible: u32 = out[2].parse().unwrap();
    assert!(visible <= 4, "{out:?}");
}

/// A repository above the workspace (agentd's data dir inside a checkout) is not the job's: its
/// `.git` (a directory here, a worktree's file one level down) looks empty to the agent, in a
/// directly started supervisor and in a standby; the workspace's own `.git` and the host's view
/// stay as they were.
#[tokio::test]
async fn repositories_above_the_workspace_are_hidden() {
    let top = tempfile::tempdir().unwrap();
    let repo = top.path().join("repo");
    let worktree = repo.join("wt");
    let workspace = worktree.join("data/sessions/s1/workspace");
    std::fs::create_dir_all(workspace.join(".git")).unwrap();
    std::fs::create_dir_all(repo.join(".git")).unwrap();
    std::fs::write(repo.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(worktree.join(".git"), "gitdir: ../.git\n").unwrap();
    std::fs::write(workspace.join(".git/HEAD"), "ref: refs/heads/mine\n").unwrap();
    let script = format!(
        "ls -A {repo}/.git | wc -l; wc -c < {wt}/.git; cat .git/HEAD",
        repo = repo.display(),
        wt = worktree.display()
    );
    let mut direct = sh(&script);
    direct.cwd = workspace.clone();
    let ran = run(direct.clone(), relaxed()).await;
    assert_eq!(
        ran.stdout_texts(),
        ["0", "0", "ref: refs/heads/mine"],
        "{:?}",
        ran.stderr_texts()
    );
    let launcher = ready_launcher(&direct).await;
    let process = launcher.spawn(direct.process).await.expect("spawn");
    assert!(process.from_standby());
    let ran = run_process(process, relaxed()).await;
    assert_eq!(
        ran.stdout_texts(),
        ["0", "0", "ref: refs/heads/mine"],
        "{:?}",
        ran.stderr_texts()
    );
    launcher.close();
    // Only the job's mount namespace was changed.
    assert!(repo.join(".git/HEAD").is_file());
    assert_eq!(
        std::fs::read_to_string(worktree.join(".git")).unwrap(),
        "gitdir: ../.git\n"
    );
}

#[tokio::test]
async fn long_line_is_truncated_and_next_line_is_intact() {
    let ran = run(
        sh("head -c 5000000 /dev/zero | tr '\\0' a; echo; echo next"),
        relaxed(),
    )
    .await;
    assert_eq!(ran.stdout.len(), 2);
    assert!(ran.stdout[0].truncated);
    assert_eq!(ran.stdout[0].text.len(), 1 << 20);
    assert!(ran.stdout[0].text.bytes().all(|b| b == b'a'));
    assert_eq!(ran.stdout[1], line("next"));
    assert_eq!(ran.outcome.exit, ExitStatus::Code(0));
}

#[tokio::test]
async fn dropped_receiver_does_not_block_the_agent() {
    let process = spawn(sh("yes hello | head -n 300000; echo done >&2")).unwrap();
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let outcome = tokio::time::timeout(Duration::from_secs(30), process.run(tx, relaxed()))
        .await
        .expect("run blocked");
    assert_eq!(outcome.exit, ExitStatus::Code(0));
}

#[tokio::test]
async fn invalid_spec_is_rejected_before_spawning() {
    let err = spawn(sh("echo\0")).unwrap_err();
    assert_eq!(err.reason(), agentd::error::Reason::InvalidField);
}

// ---- containment ----

/// Starts `script` (which must start `setsid sleep <grandchild>`), waits until the grandchild
/// runs, then stops the run with `stop` and checks nothing is left.
async fn check_stop_kills_tree(
    spec: Spec,
    grandchild: &str,
    control: RunControl,
    stop: Option<CancellationToken>,
) -> (RunOutcome, Duration) {
    let process = spawn(spec).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let started = Instant::now();
    let running = tokio::spawn(process.run(tx, control));
    wait_for_sleeper(grandchild).await;
    let stopping = Instant::now();
    if let Some(token) = stop {
        token.cancel();
    }
    let outcome = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("run did not return")
        .unwrap();
    let took = if outcome.stop == Some(StopCause::TimedOut) {
        started.elapsed()
    } else {
        stopping.elapsed()
    };
    assert_gone(grandchild);
    drain.await.unwrap();
    (outcome, took)
}

#[tokio::test]
async fn cancel_kills_setsid_grandchild() {
    let c = control(Duration::from_secs(60), Duration::from_secs(20));
    let token = c.cancel.clone();
    let (outcome, took) =
        check_stop_kills_tree(sh("setsid sleep 3217 & sleep 3218"), "3217", c, Some(token)).await;
    assert_eq!(outcome.stop, Some(StopCause::Cancelled));
    // Graceful: the agent died of the forwarded SIGTERM, long before the grace period ended.
    assert_eq!(outcome.exit, ExitStatus::Signal(15));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_gone("3218");
}

#[tokio::test]
async fn timeout_kills_setsid_grandchild() {
    let c = control(Duration::from_millis(1500), Duration::from_secs(20));
    let (outcome, took) =
        check_stop_kills_tree(sh("setsid sleep 3227 & sleep 3228"), "3227", c, None).await;
    assert_eq!(outcome.stop, Some(StopCause::TimedOut));
    assert_eq!(outcome.exit, ExitStatus::Signal(15));
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert_gone("3228");
}

#[tokio::test]
async fn agent_ignoring_sigterm_ends_by_escalation() {
    let c = control(Duration::from_secs(60), Duration::from_millis(500));
    let token = c.cancel.clone();
    let (outcome, took) = check_stop_kills_tree(
        sh("trap '' TERM; setsid sleep 3237 & sleep 3238"),
        "3237",
        c,
        Some(token),
    )
    .await;
    assert_eq!(outcome.stop, Some(StopCause::Cancelled));
    assert_eq!(outcome.exit, ExitStatus::Signal(9));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert_gone("3238");
}

#[tokio::test]
async fn finished_agent_leaves_no_grandchild() {
    let (outcome, _) = check_stop_kills_tree(
        sh("setsid sleep 3247 & sleep 1; echo done"),
        "3247",
        relaxed(),
        None,
    )
    .await;
    assert_eq!(
        outcome,
        RunOutcome {
            exit: ExitStatus::Code(0),
            stop: None
        }
    );
}

#[tokio::test]
async fn fallback_cancel_kills_setsid_grandchild() {
    let c = control(Duration::from_secs(60), Duration::from_secs(20));
    let token = c.cancel.clone();
    let (outcome, took) = check_stop_kills_tree(
        no_ns(sh("setsid sleep 3257 & sleep 3258")),
        "3257",
        c,
        Some(token),
    )
    .await;
    assert_eq!(outcome.stop, Some(StopCause::Cancelled));
    assert_eq!(outcome.exit, ExitStatus::Signal(15));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_gone("3258");
}

#[tokio::test]
async fn fallback_finished_agent_leaves_no_grandchild() {
    let (outcome, _) = check_stop_kills_tree(
        no_ns(sh("setsid sleep 3267 & sleep 1; exit 4")),
        "3267",
        relaxed(),
        None,
    )
    .await;
    assert_eq!(outcome.exit, ExitStatus::Code(4));
}

#[tokio::test]
async fn fallback_ignoring_sigterm_ends_by_escalation() {
    let c = control(Duration::from_millis(800), Duration::from_millis(300));
    let (outcome, _) = check_stop_kills_tree(
        no_ns(sh("trap '' TERM; setsid sleep 3277 & sleep 3278")),
        "3277",
        c,
        None,
    )
    .await;
    assert_eq!(outcome.stop, Some(StopCause::TimedOut));
    assert_eq!(outcome.exit, ExitStatus::Signal(9));
    assert_gone("3278");
}

async fn wait_gone(arg: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sleepers(arg).is_empty() {
        assert!(
            Instant::now() < deadline,
            "sleep {arg} survived: {:?}",
            sleepers(arg)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The thread that spawned the supervisor dies (as when agentd dies): PDEATHSIG kills the
/// supervisor, which takes ns-init and the whole namespace with it.
#[tokio::test]
async fn spawning_thread_death_kills_the_tree() {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let process = spawn(sh("setsid sleep 3287 & sleep 3288")).unwrap();
            wait_for_sleeper("3287").await;
            ready_tx.send(process.pid()).unwrap();
            // No kill_on_drop, no run: only the thread's death may kill it.
            std::mem::forget(process);
        });
        drop(rt);
    });
    let pid = ready_rx.recv().unwrap();
    thread.join().unwrap();
    wait_gone("3287").await;
    wait_gone("3288").await;
    // Reap the supervisor zombie we still own.
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}

/// SIGKILL of the supervisor itself (no chance to clean up) kills the whole tree in ns mode.
#[tokio::test]
async fn killing_the_supervisor_kills_the_tree() {
    let mut supervisor = std::process::Command::new(SUPERVISOR)
        .args([SUBCOMMAND, "sh", "-c", "setsid sleep 3297 & sleep 3298"])
        .env_clear()
        .env("PATH", PATH)
        .spawn()
        .unwrap();
    wait_for_sleeper("3297").await;
    supervisor.kill().unwrap();
    supervisor.wait().unwrap();
    wait_gone("3297").await;
    wait_gone("3298").await;
}

// ---- run records: what outlives a killed supervisor ----

/// The records in a run dir, as (token, content).
fn records_in(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let token = name.strip_suffix(".run")?.to_owned();
            Some((token, std::fs::read_to_string(e.path()).unwrap_or_default()))
        })
        .collect();
    out.sort();
    out
}

/// In the fallback mode a SIGKILLed supervisor leaves a setsid'd grandchild alive; its record is
/// still there, so the runner sweeps the tree by its marker before `run` returns.
#[tokio::test]
async fn fallback_supervisor_killed_by_sigkill_leaves_nothing_behind() {
    let runs = tempfile::tempdir().unwrap();
    let mut spec = no_ns(sh("setsid sleep 3307 & sleep 3308"));
    spec.supervisor.run_dir = Some(runs.path().to_owned());
    let process = spawn(spec).unwrap();
    let pid = process.pid();
    let (tx, mut rx) = mpsc::channel(16);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let running = tokio::spawn(process.run(tx, relaxed()));
    wait_for_sleeper("3307").await;
    let records = records_in(runs.path());
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(
        records[0]
            .1
            .starts_with(&format!("pid={pid}\npgid={pid}\nstart=")),
        "{records:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("run did not return")
        .unwrap();
    drain.await.unwrap();
    assert_eq!(outcome.exit, ExitStatus::Signal(9));
    assert_gone("3307");
    assert_gone("3308");
    assert!(records_in(runs.path()).is_empty(), "record not removed");
}

/// What a crashed agentd leaves: a record whose supervisor is gone and a marked process that
/// escaped. The start-up claim kills it (and not an unmarked one), then removes the record.
#[tokio::test]
async fn startup_sweep_kills_marked_leftovers_only() {
    use agentd::runner::records::{RUN_TOKEN_ENV, claim, run_dir};
    let data = tempfile::tempdir().unwrap();
    let dir = run_dir(data.path());
    std::fs::create_dir_all(&dir).unwrap();
    let token = "00112233445566778899aabbccddeeff";
    // A recycled pid: our own, with another start time, must not be killed.
    std::fs::write(
        dir.join(format!("{token}.run")),
        format!(
            "pid={}\npgid={}\nstart=1\n",
            std::process::id(),
            std::process::id()
        ),
    )
    .unwrap();
    let mut marked = std::process::Command::new("setsid")
        .args(["sleep", "3317"])
        .env(RUN_TOKEN_ENV, token)
        .spawn()
        .unwrap();
    let mut other = std::process::Command::new("sleep")
        .arg("3318")
        .env(RUN_TOKEN_ENV, "ffffffffffffffffffffffffffffffff")
        .spawn()
        .unwrap();
    wait_for_sleeper("3317").await;
    wait_for_sleeper("3318").await;
    let (_lock, swept) = tokio::task::spawn_blocking({
        let data = data.path().to_owned();
        move || claim(&data, None)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(swept.records, 1);
    assert_eq!(swept.killed, 1, "{swept:?}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(marked.wait().unwrap().signal(), Some(9));
    assert!(records_in(&dir).is_empty());
    assert!(
        other.try_wait().unwrap().is_none(),
        "an unrecorded token was killed"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}

// ---- standby supervisors (the launcher) ----

/// A launcher for `spec`'s supervisor, run dir and containment mode, with its one standby ready.
async fn ready_launcher(spec: &Spec) -> Arc<Launcher> {
    let launcher = Launcher::new(spec.supervisor.clone(), 1, None);
    launcher.warm();
    wait_ready(&launcher).await;
    launcher
}

async fn wait_ready(launcher: &Launcher) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while launcher.ready() == 0 {
        assert!(Instant::now() < deadline, "no standby became ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The pid in the one record of `runs`, once the standby has written it.
async fn standby_record(runs: &std::path::Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = records_in(runs);
        assert!(records.len() <= 1, "{records:?}");
        if let Some((_, content)) = records.first()
            && let Some(pid) = content.lines().next().and_then(|l| l.strip_prefix("pid="))
        {
            return pid.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the standby wrote no record");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Spawns `spec` through a standby (asserting it was one).
async fn standby_spawn(spec: Spec) -> (Process, Arc<Launcher>) {
    let launcher = ready_launcher(&spec).await;
    let process = launcher.spawn(spec.process).await.expect("spawn");
    assert!(process.from_standby(), "a standby was ready but not used");
    (process, launcher)
}

async fn run_standby(spec: Spec, control: RunControl) -> Ran {
    let (process, _launcher) = standby_spawn(spec).await;
    run_process(process, control).await
}

#[tokio::test]
async fn standby_runs_output_exit_code_and_signal_death_as_a_fresh_supervisor() {
    for spec in [sh(ECHO_SCRIPT), no_ns(sh(ECHO_SCRIPT))] {
        let ran = run_standby(spec, relaxed()).await;
        assert_eq!(ran.stdout, vec![line("one"), line("three")]);
        assert_eq!(ran.stderr, vec![line("two"), line("four")]);
        assert_eq!(ran.outcome.exit, ExitStatus::Code(3));
    }
    for spec in [sh("kill -TERM $$"), no_ns(sh("kill -TERM $$"))] {
        let ran = run_standby(spec, relaxed()).await;
        assert_eq!(ran.outcome.exit, ExitStatus::Signal(15));
    }
    for spec in [
        spec("no-such-agent-xyz", &["a"]),
        no_ns(spec("no-such-agent-xyz", &["a"])),
    ] {
        let ran = run_standby(spec, relaxed()).await;
        assert_eq!(ran.outcome.exit, ExitStatus::Code(127));
        assert_eq!(
            ran.stderr_texts(),
            vec![r#"agentd: cannot execute "no-such-agent-xyz": No such file or directory"#]
        );
    }
}

/// The agent gets exactly the spec's environment (plus the run marker), working directory, PATH
/// lookup, default signal state and an empty stdin, although its supervisor was started before
/// any of that was known; the supervisor itself never holds the agent's environment.
#[tokio::test]
async fn standby_agent_gets_the_specs_environment_cwd_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let bin = cwd.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tool = bin.join("only-here-tool");
    std::fs::write(&tool, "#!/bin/sh\necho tool \"$@\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let runs = tempfile::tempdir().unwrap();
    let path = format!("{}:{PATH}", bin.display());
    for no_namespace in [false, true] {
        let mut spec = sh("env | sort; pwd -P; only-here-tool a 'b c'; \
             grep -E '^Sig(Blk|Ign)' /proc/self/status; cat; echo eof; sleep 0.3");
        spec.env = vec![
            ("PATH".into(), path.clone()),
            ("SECRET_TOKEN".into(), "s3cr3t-standby-value".into()),
        ];
        spec.cwd = cwd.clone();
        spec.supervisor.run_dir = Some(runs.path().to_owned());
        if no_namespace {
            spec = no_ns(spec);
        }
        let (process, _launcher) = standby_spawn(spec).await;
        let environ = std::fs::read(format!("/proc/{}/environ", process.pid())).unwrap();
        assert!(
            !String::from_utf8_lossy(&environ).contains("s3cr3t"),
            "the supervisor holds the agent's environment"
        );
        let ran = run_process(process, relaxed()).await;
        let out = ran.stdout_texts();
        assert_eq!(out.len(), 9, "{out:?} {:?}", ran.stderr_texts());
        let token = out[0].strip_prefix("AGENTD_RUN_TOKEN=").expect(out[0]);
        assert!(token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(out[1], format!("PATH={path}"));
        // `sh` adds PWD (it is not in the spec); nothing else is there.
        assert_eq!(out[2], format!("PWD={}", cwd.display()));
        assert_eq!(out[3], "SECRET_TOKEN=s3cr3t-standby-value");
        assert_eq!(out[4], cwd.to_str().unwrap());
        assert_eq!(out[5], "tool a b c");
        assert_eq!(out[6], "SigBlk:\t0000000000000000");
        let ignored = u64::from_str_radix(out[7].trim_start_matches("SigIgn:\t"), 16).unwrap();
        assert_eq!(ignored & 0x7fff_ffff, 0, "{}", out[7]);
        assert_eq!(out[8], "eof");
        assert_eq!(ran.outcome.exit, ExitStatus::Code(0));
        // The replacement standby has its own record; the finished run's is gone.
        assert!(
            records_in(runs.path()).iter().all(|(t, _)| t != token),
            "a finished run leaves no record"
        );
    }
}

#[tokio::test]
async fn standby_agent_sees_its_own_pid_namespace() {
    let ran = run_standby(sh("echo $$; ls /proc | grep -c '^[0-9]'"), relaxed()).await;
    let out = ran.stdout_texts();
    assert_eq!(out[0], "2", "{out:?}");
    let visible: u32 = out[1].parse().unwrap();
    assert!(visible <= 4, "{out:?}");
}

#[tokio::test]
async fn standby_cancel_and_timeout_kill_the_tree() {
    for (script, grandchild, no_namespace) in [
        ("setsid sleep 3327 & sleep 3328", "3327", false),
        ("setsid sleep 3337 & sleep 3338", "3337", true),
    ] {
        let mut spec = sh(script);
        if no_namespace {
            spec = no_ns(spec);
        }
        let (process, _launcher) = standby_spawn(spec).await;
        let c = control(Duration::from_secs(60), Duration::from_secs(20));
        let token = c.cancel.clone();
        let (tx, mut rx) = mpsc::channel(16);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let running = tokio::spawn(process.run(tx, c));
        wait_for_sleeper(grandchild).await;
        token.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("run did not return")
            .unwrap();
        drain.await.unwrap();
        assert_eq!(outcome.stop, Some(StopCause::Cancelled));
        assert_eq!(outcome.exit, ExitStatus::Signal(15));
        assert_gone(grandchild);
    }
    let (process, _launcher) =
        standby_spawn(sh("trap '' TERM; setsid sleep 3347 & sleep 3348")).await;
    let c = control(Duration::from_millis(800), Duration::from_millis(300));
    let (tx, mut rx) = mpsc::channel(16);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let outcome = tokio::time::timeout(Duration::from_secs(30), process.run(tx, c))
        .await
        .expect("run did not return");
    drain.await.unwrap();
    assert_eq!(outcome.stop, Some(StopCause::TimedOut));
    assert_eq!(outcome.exit, ExitStatus::Signal(9));
    assert_gone("3347");
    assert_gone("3348");
}

/// A taken standby is replaced; closing the launcher kills the ready one and removes its record;
/// afterwards jobs still start, each with a supervisor of its own.
#[tokio::test]
async fn launcher_refills_and_close_leaves_nothing_behind() {
    let runs = tempfile::tempdir().unwrap();
    let mut base = sh("echo hi");
    base.supervisor.run_dir = Some(runs.path().to_owned());
    let launcher = ready_launcher(&base).await;
    for _ in 0..3 {
        wait_ready(&launcher).await;
        let process = launcher.spawn(base.process.clone()).await.unwrap();
        assert!(process.from_standby());
        let ran = run_process(process, relaxed()).await;
        assert_eq!(ran.stdout_texts(), vec!["hi"]);
    }
    wait_ready(&launcher).await;
    let standby_pid = standby_record(runs.path()).await;
    launcher.close();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !records_in(runs.path()).is_empty()
        || std::fs::read_to_string(format!("/proc/{standby_pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(
            Instant::now() < deadline,
            "the closed launcher left its standby behind"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(launcher.ready(), 0);
    let process = launcher.spawn(base.process.clone()).await.unwrap();
    assert!(!process.from_standby());
    assert_eq!(
        run_process(process, relaxed()).await.stdout_texts(),
        vec!["hi"]
    );
    assert_eq!(launcher.ready(), 0, "a closed launcher started a standby");
}

/// A standby killed while it waited is noticed at the next start, which then gets a supervisor of
/// its own. (A spec cannot ask for another containment than the standby's: the launcher owns it.)
#[tokio::test]
async fn dead_standbys_are_not_used() {
    let runs = tempfile::tempdir().unwrap();
    let mut base = sh("echo ok");
    base.supervisor.run_dir = Some(runs.path().to_owned());
    let launcher = ready_launcher(&base).await;
    let pid = standby_record(runs.path()).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Dead (a zombie until the launcher looks at it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(Instant::now() < deadline, "the standby did not die");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let process = launcher.spawn(base.process.clone()).await.unwrap();
    assert!(!process.from_standby(), "a dead standby was used");
    assert_eq!(
        run_process(process, relaxed()).await.stdout_texts(),
        vec!["ok"]
    );
    // A new one replaced it.
    wait_ready(&launcher).await;
    let process = launcher.spawn(base.process).await.unwrap();
    assert!(process.from_standby());
    assert_eq!(
        run_process(process, relaxed()).await.stdout_texts(),
        vec!["ok"]
    );
}

/// The scheduling policy of `pid` (field 41 of its stat; 0 = SCHED_OTHER, 5 = SCHED_IDLE).
fn policy(pid: i32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    // Fields from 3 on; policy is field 41.
    after_comm.split(' ').nth(41 - 3).unwrap().parse().unwrap()
}

/// Where the test process may leave SCHED_IDLE again (root here), a standby sets up at the idle
/// priority, and is back at the normal one, with its agent, once it has a job.
#[tokio::test]
async fn standby_sets_up_at_idle_priority_and_runs_the_agent_at_normal_priority() {
    let reversible = std::thread::spawn(|| {
        let p = nix::libc::sched_param { sched_priority: 0 };
        // SAFETY: only reads `p`; changes this short-lived thread's own policy.
        unsafe {
            nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &p) == 0
                && nix::libc::sched_setscheduler(0, nix::libc::SCHED_OTHER, &p) == 0
        }
    })
    .join()
    .unwrap();
    for no_namespace in [false, true] {
        let runs = tempfile::tempdir().unwrap();
        let mut spec = sh("awk '{print $41}' /proc/self/stat; sleep 0.5");
        spec.supervisor.run_dir = Some(runs.path().to_owned());
        if no_namespace {
            spec = no_ns(spec);
        }
        let launcher = ready_launcher(&spec).await;
        let standby = standby_record(runs.path()).await;
        assert_eq!(policy(standby), if reversible { 5 } else { 0 });
        let process = launcher.spawn(spec.process).await.unwrap();
        assert!(process.from_standby());
        assert_eq!(process.pid(), standby);
        assert_eq!(
            policy(standby),
            0,
            "the supervisor stayed at the idle priority"
        );
        let ran = run_process(process, relaxed()).await;
        assert_eq!(ran.stdout_texts(), vec!["0"], "{:?}", ran.stderr_texts());
    }
}
