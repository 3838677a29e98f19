//! The runner owns one agent process from spawn to reaping: it starts the agent *contained* (under
//! the [`supervise`] program, so cancel, timeout or agentd's death leave no descendant alive), pumps
//! its stdout/stderr as bounded lines, and escalates signals on cancel or timeout.
//!
//! The tokio side spawns `<supervisor> __supervise <settings> -- <program> <args...>` with exactly
//! the given environment and working directory, stdin `/dev/null`, in its own process group; the
//! supervisor arms `PR_SET_PDEATHSIG(SIGKILL)` first thing and checks that the spawner is still its
//! parent. Which supervisor, where it records, and how it contains an unjailed tree are the
//! [`Supervisor`]'s, which the [`Launcher`] owns; each start passes them to the supervisor as
//! arguments ([`supervise::Settings`]), never through the environment, which is the agent's.
//! PDEATHSIG fires when the *thread* that spawned the process exits, so [`Process::spawn`] must be
//! called on a thread that lives as long as the job: any tokio worker thread (plain async code),
//! never inside `spawn_blocking` or `block_in_place`.
//!
//! Escalation on cancel or timeout: SIGTERM to the supervisor (forwarded to the agent's process
//! group), after `grace` SIGUSR1 (the supervisor kills the whole tree), after 2 more seconds
//! SIGKILL to the supervisor's process group.
//!
//! A jailed job (the default, see [`jail`]) always goes through the launch spec, which carries its
//! jail; its supervisor reports limits that were hit as [`Output::Notice`]s on its stdin socket.
//!
//! A job normally starts from a standby supervisor that did all of the above ahead of time and then
//! receives the job over its stdin ([`Launcher`]); the result is the same.
//!
//! Every tree carries a run marker and, given a run dir, is recorded there by its supervisor
//! ([`records`]); a supervisor that died without removing its record (SIGKILLed) has its tree
//! swept by marker when the run ends, and the records of a crashed agentd are swept at its next
//! start.

// The bridge forks its relay and closes raw fds in the child; each block has its SAFETY comment.
pub mod adopt;
#[allow(unsafe_code)]
pub mod bridge;
pub mod jail;
// The spool polls raw pipe fds (nix's poll feature is off); the block has its SAFETY comment.
#[allow(unsafe_code)]
pub mod journal;
mod lines;
pub mod records;
pub mod sockpath;
mod standby;
// The supervisor is the one module where unsafe code is the job: it forks, sets signal
// dispositions, clones into namespaces and drops capabilities between fork and exec. Each block
// carries its SAFETY comment; the rest of the crate denies unsafe code.
#[allow(unsafe_code)]
pub mod supervise;

pub use standby::Launcher;
pub use supervise::Containment;

use crate::domain::ExitStatus;
use crate::error::{Error, Reason, Result};
use lines::LineSplitter;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpid};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long the supervisor gets to kill the tree after SIGUSR1 before its group is SIGKILLed.
const TREE_KILL_WAIT: Duration = Duration::from_secs(2);

/// Size of each stream's read buffer.
const READ_BUF: usize = 64 * 1024;

/// After the supervisor exited, an output stream that stays silent this long is abandoned: every
/// process that could write to it should be dead, so someone escaped containment.
const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// After the supervisor exited, output streams are abandoned after this long in any case.
const DRAIN_CAP: Duration = Duration::from_secs(30);

/// The supervisor that contains agents, and what every one of them is told: the [`Launcher`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervisor {
    /// The executable: `agentd-supervise`, or agentd itself (both take `__supervise`).
    pub path: PathBuf,
    /// Where supervisors record their trees (see [`records`]); `None` records nothing.
    pub run_dir: Option<PathBuf>,
    /// How an unjailed tree is contained.
    pub containment: Containment,
}

impl Supervisor {
    /// `path` with no run records and the default containment.
    pub fn new(path: impl Into<PathBuf>) -> Supervisor {
        Supervisor {
            path: path.into(),
            run_dir: None,
            containment: Containment::default(),
        }
    }

    /// The settings a supervisor started now gets (`jail` for a standby's).
    fn settings(&self, jail: Option<jail::Shape>) -> supervise::Settings {
        supervise::Settings {
            containment: self.containment,
            parent: Some(getpid().as_raw()),
            run_dir: self.run_dir.clone(),
            adopt: adopt::setting(),
            jail,
        }
    }
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Executable name (resolved against `PATH` of `env`) or path.
    pub program: String,
    pub args: Vec<String>,
    /// The complete environment of the agent.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Lines longer than this are cut and marked truncated.
    pub max_line_bytes: usize,
    /// The jail to run the agent in; `None` runs it with containment only.
    pub jail: Option<jail::Jail>,
    /// What the agent reads on its standard input.
    pub stdin: Stdin,
}

/// The agent's standard input: the one way into a running agent that the runner offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stdin {
    /// `/dev/null`.
    #[default]
    Null,
    /// A regular file, opened by the supervisor right before it execs the agent (inside the jail,
    /// so the path must be one the agent can see), never following a symlink. How a prompt too
    /// large for argv reaches the agent.
    File(PathBuf),
}

impl Stdin {
    /// The environment entry that tells the supervisor about it ([`supervise::STDIN_FILE_ENV`]).
    fn env(&self) -> Option<(String, String)> {
        match self {
            Stdin::Null => None,
            Stdin::File(path) => Some((
                supervise::STDIN_FILE_ENV.to_owned(),
                path.to_string_lossy().into_owned(),
            )),
        }
    }
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Lossy UTF-8, without the trailing `\n` or `\r\n`; cut at a character boundary at or below
    /// `max_line_bytes` when truncated.
    pub text: String,
    pub truncated: bool,
}

/// A line from one of the two output streams, or word from the supervisor about the jail.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Stdout(Line),
    Stderr(Line),
    /// A limit of the jail was hit.
    Notice(jail::Notice),
    /// An event about the job from outside its process: a model call through agentd's gateway,
    /// an egress attempt its proxy refused.
    Event(crate::domain::EventKind),
}

/// Why the runner stopped the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    Cancelled,
    TimedOut,
}

/// How a run is bounded.
#[derive(Debug, Clone)]
pub struct RunControl {
    pub cancel: tokio_util::sync::CancellationToken,
    /// Counted from the start of [`Process::run`].
    pub timeout: Duration,
    /// SIGTERM → wait this long → SIGUSR1 (tree kill) → 2 s → SIGKILL.
    pub grace: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// The agent's exit, as seen through the supervisor (which mirrors it).
    pub exit: ExitStatus,
    /// Set when the runner stopped the process (even if it then exited on its own).
    pub stop: Option<StopCause>,
}

/// A spawned, contained agent process.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pid: i32,
    stdout: ChildStdout,
    stderr: ChildStderr,
    max_line_bytes: usize,
    leftovers: Leftovers,
    /// Whether a standby supervisor runs it.
    from_standby: bool,
    /// The supervisor's notices about a jailed job ([`jail::Notice`], one JSON line each).
    notices: Option<tokio::net::UnixStream>,
}

/// Sweeps a tree's marked processes if its supervisor could not clean up: awaited at the end of
/// [`Process::run`], or in the background when a `Process` is dropped without running (its
/// supervisor is then SIGKILLed).
#[derive(Debug)]
struct Leftovers {
    run_dir: Option<PathBuf>,
    token: String,
    /// Where a jailed job's cgroup lives, once it has one.
    cgroup_parent: Option<String>,
}

impl Leftovers {
    async fn sweep(mut self) {
        let (Some(dir), token) = (self.run_dir.take(), std::mem::take(&mut self.token)) else {
            return;
        };
        let cg = self.cgroup_parent.take();
        match tokio::task::spawn_blocking(move || records::sweep_one(&dir, &token, cg.as_deref()))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                killed = n,
                "killed processes that outlived their supervisor"
            ),
            Err(e) => tracing::warn!(error = %e, "sweeping a job's leftover processes failed"),
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let Some(dir) = self.run_dir.take() else {
            return;
        };
        let token = std::mem::take(&mut self.token);
        let cg = self.cgroup_parent.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || records::sweep_one(&dir, &token, cg.as_deref()));
        } else {
            records::sweep_one(&dir, &token, cg.as_deref());
        }
    }
}

impl Process {
    /// Spawns the agent under a `supervisor` started for it alone (the [`Launcher`] spawns from
    /// standbys too). Errors only if the supervisor itself can't start (or the spec cannot be
    /// passed to a process: NUL bytes, bad environment names). That the agent's program cannot be
    /// executed shows as exit code 127/126 and a line on stderr instead.
    pub fn spawn(supervisor: &Supervisor, spec: ProcessSpec) -> Result<Process> {
        validate(&spec)?;
        let token = records::new_token();
        let settings = supervisor
            .settings(None)
            .to_args()
            .map_err(Error::internal)?;
        let mut cmd = tokio::process::Command::new(&supervisor.path);
        cmd.arg(supervise::SUBCOMMAND)
            .args(settings)
            .arg("--")
            .arg(&spec.program)
            .args(&spec.args)
            .env_clear()
            .envs(
                spec.env
                    .iter()
                    .filter(|(k, _)| k != supervise::STDIN_FILE_ENV)
                    .map(|(k, v)| (k, v)),
            )
            .envs(spec.stdin.env())
            .env(records::RUN_TOKEN_ENV, &token);
        cmd.current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // No pre_exec closure: without one std spawns with posix_spawn (vfork) instead of forking
        // this whole multi-threaded process, which costs a page-table copy per job. The supervisor
        // arms its own parent-death signal first thing and checks it is still our child.
        let mut child = cmd.spawn().map_err(|e| {
            Error::internal(format!(
                "cannot start the agent supervisor {:?} in {:?}: {e}",
                supervisor.path, spec.cwd
            ))
        })?;
        let (Some(pid), Some(stdout), Some(stderr)) =
            (child.id(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Error::internal(
                "supervisor started without its output pipes",
            ));
        };
        let pid = i32::try_from(pid)
            .map_err(|_| Error::internal(format!("supervisor pid {pid} out of range")))?;
        widen_stdout(&stdout);
        Ok(Process {
            child,
            pid,
            stdout,
            stderr,
            max_line_bytes: spec.max_line_bytes,
            leftovers: Leftovers {
                run_dir: supervisor.run_dir.clone(),
                token,
                cgroup_parent: None,
            },
            from_standby: false,
            notices: None,
        })
    }

    /// The supervisor's pid (also its process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The run token that marks the tree and names its run record.
    pub fn token(&self) -> &str {
        &self.leftovers.token
    }

    /// Whether a standby supervisor ran it ([`Launcher`]).
    pub fn from_standby(&self) -> bool {
        self.from_standby
    }

    /// Pumps output into `out` (bounded; awaiting send is fine = backpressure), enforces the
    /// timeout and cancel token with the escalation above, waits for exit, and returns once the
    /// process has exited AND both output streams were fully read and sent. If `out` is dropped,
    /// output is drained and discarded so the agent never blocks on a full pipe.
    pub async fn run(self, out: mpsc::Sender<Output>, control: RunControl) -> RunOutcome {
        let Process {
            mut child,
            pid,
            stdout,
            stderr,
            max_line_bytes,
            leftovers,
            from_standby: _,
            notices,
        } = self;
        let (exited_tx, exited_rx) = watch::channel(None);
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        let waiter = async move {
            let mut ended = Some(ended_rx);
            let outcome =
                wait_with_escalation(&mut child, Pid::from_raw(pid), &control, &mut ended).await;
            if outcome.early {
                // The supervisor said the tree is gone and now tears the jail down: reaped (and
                // swept, should it die unclean) in the background.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                    leftovers.sweep().await;
                });
            } else {
                // Before the drain: a survivor holding the output pipes would keep them open.
                leftovers.sweep().await;
            }
            let _ = exited_tx.send(Some(Instant::now()));
            outcome.run
        };
        let (outcome, (), (), ()) = tokio::join!(
            waiter,
            pump(
                stdout,
                out.clone(),
                Output::Stdout,
                max_line_bytes,
                exited_rx.clone()
            ),
            pump(
                stderr,
                out.clone(),
                Output::Stderr,
                max_line_bytes,
                exited_rx.clone()
            ),
            pump_notices(notices, out, ended_tx, exited_rx),
        );
        outcome
    }
}

/// Room asked for in an agent's stdout pipe, largest first. Some CLIs (Gemini CLI, a Node
/// program) echo the prompt as one stdout line and exit before a write that did not fit in the
/// pipe has completed, losing the rest of their output when agentd reads slower than they exit:
/// with room for a large prompt's echo the write completes at once. Best effort: beyond
/// `/proc/sys/fs/pipe-max-size` (1 MiB by default) the kernel wants `CAP_SYS_RESOURCE`. Pages
/// are only allocated as the pipe fills.
const STDOUT_PIPE_BYTES: [libc::c_int; 2] = [4 << 20, 1 << 20];

/// Widens the agent's stdout pipe as far as the kernel allows ([`STDOUT_PIPE_BYTES`]).
fn widen_stdout(stdout: &ChildStdout) {
    for size in STDOUT_PIPE_BYTES {
        if nix::fcntl::fcntl(stdout, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size)).is_ok() {
            return;
        }
    }
}

fn validate(spec: &ProcessSpec) -> Result<()> {
    if spec.program.is_empty() {
        return Err(Error::invalid(
            Reason::MissingField,
            "program",
            "program is empty",
        ));
    }
    if spec.program.contains('\0') {
        return Err(Error::invalid(
            Reason::InvalidField,
            "program",
            "program contains a NUL byte",
        ));
    }
    if let Some(i) = spec.args.iter().position(|a| a.contains('\0')) {
        return Err(Error::invalid(
            Reason::InvalidField,
            format!("args[{i}]"),
            format!("argument {i} contains a NUL byte"),
        ));
    }
    for (name, value) in &spec.env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(Error::invalid(
                Reason::InvalidField,
                "env",
                format!("environment variable name {name:?} is empty or contains '=' or NUL"),
            ));
        }
        if value.contains('\0') {
            return Err(Error::invalid(
                Reason::InvalidField,
                format!("env.{name}"),
                format!("the value of environment variable {name} contains a NUL byte"),
            ));
        }
    }
    if let Stdin::File(path) = &spec.stdin
        && (path.as_os_str().as_encoded_bytes().contains(&0) || path.to_str().is_none())
    {
        return Err(Error::invalid(
            Reason::InvalidField,
            "stdin",
            "the stdin file's path must be UTF-8 without a NUL byte",
        ));
    }
    Ok(())
}

fn exit_status(status: std::io::Result<std::process::ExitStatus>) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Code(-1),
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot wait for the agent supervisor");
            ExitStatus::Code(-1)
        }
    }
}

/// A run's outcome, and whether it came from the supervisor's word rather than its exit.
struct Waited {
    run: RunOutcome,
    early: bool,
}

async fn wait_with_escalation(
    child: &mut Child,
    pid: Pid,
    control: &RunControl,
    ended: &mut Option<tokio::sync::oneshot::Receiver<ExitStatus>>,
) -> Waited {
    let waited = |(exit, early), stop| Waited {
        run: RunOutcome { exit, stop },
        early,
    };
    let stop = tokio::select! {
        biased;
        end = tree_end(child, ended) => return waited(end, None),
        () = control.cancel.cancelled() => StopCause::Cancelled,
        () = tokio::time::sleep(control.timeout) => StopCause::TimedOut,
    };
    // The child is not reaped until `wait` returns, so `pid` cannot have been reused.
    for (sig, patience) in [
        (Signal::SIGTERM, control.grace),
        (Signal::SIGUSR1, TREE_KILL_WAIT),
    ] {
        let _ = kill(pid, sig);
        if let Ok(end) = tokio::time::timeout(patience, tree_end(child, ended)).await {
            return waited(end, Some(stop));
        }
    }
    tracing::warn!(
        pid = pid.as_raw(),
        "supervisor ignored SIGUSR1; killing its process group"
    );
    let _ = killpg(pid, Signal::SIGKILL);
    waited((exit_status(child.wait().await), false), Some(stop))
}

/// How the tree ended: the jailed supervisor's word that it is gone ([`jail::TreeEnd`], ahead of
/// the jail's teardown), or the supervisor's exit, whichever comes first. `true` with the word.
async fn tree_end(
    child: &mut Child,
    ended: &mut Option<tokio::sync::oneshot::Receiver<ExitStatus>>,
) -> (ExitStatus, bool) {
    if let Some(rx) = ended.as_mut() {
        tokio::select! {
            biased;
            word = rx => match word {
                Ok(exit) => return (exit, true),
                // No word will come (no jail, or the channel closed): the exit tells.
                Err(_) => *ended = None,
            },
            status = child.wait() => return (exit_status(status), false),
        }
    }
    (exit_status(child.wait().await), false)
}

/// Resolves once a stream should be abandoned: the supervisor has exited and the stream was
/// silent for [`DRAIN_IDLE`], or [`DRAIN_CAP`] has passed since the exit.
async fn drain_deadline(exited: &mut watch::Receiver<Option<Instant>>) {
    let at = match exited.wait_for(Option::is_some).await {
        Ok(at) => *at,
        Err(_) => None,
    };
    match at {
        Some(at) => {
            tokio::time::sleep_until((Instant::now() + DRAIN_IDLE).min(at + DRAIN_CAP)).await;
        }
        None => std::future::pending().await,
    }
}

async fn pump(
    mut stream: impl AsyncRead + Unpin,
    out: mpsc::Sender<Output>,
    wrap: fn(Line) -> Output,
    max_line_bytes: usize,
    mut exited: watch::Receiver<Option<Instant>>,
) {
    let mut out = Some(out);
    let mut splitter = LineSplitter::new(max_line_bytes);
    let mut buf = vec![0u8; READ_BUF];
    let mut lines = Vec::new();
    loop {
        let n = tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading agent output failed");
                    0
                }
            },
            () = drain_deadline(&mut exited) => {
                tracing::warn!("agent output still open after the supervisor exited; abandoning it");
                0
            }
        };
        if n == 0 {
            lines.extend(splitter.finish());
        } else {
            splitter.push(&buf[..n], &mut lines);
        }
        for line in lines.drain(..) {
            if let Some(tx) = &out
                && tx.send(wrap(line)).await.is_err()
            {
                // Nobody listens any more; keep draining so the agent never blocks.
                out = None;
            }
        }
        if n == 0 {
            return;
        }
    }
}

/// Turns the supervisor's notice lines into [`Output::Notice`]s until it closes the channel, and
/// passes its word of the tree's end to `ended`.
async fn pump_notices(
    notices: Option<tokio::net::UnixStream>,
    out: mpsc::Sender<Output>,
    ended: tokio::sync::oneshot::Sender<ExitStatus>,
    exited: watch::Receiver<Option<Instant>>,
) {
    let Some(stream) = notices else { return };
    let mut ended = Some(ended);
    // Notices are short; a longer line is not one.
    const MAX_NOTICE: usize = 4096;
    let (tx, mut rx) = mpsc::channel(16);
    let lines = pump(stream, tx, Output::Stdout, MAX_NOTICE, exited);
    let forward = async {
        while let Some(Output::Stdout(line)) = rx.recv().await {
            match serde_json::from_str::<jail::Word>(&line.text) {
                Ok(jail::Word::Notice(notice)) => {
                    let _ = out.send(Output::Notice(notice)).await;
                }
                Ok(jail::Word::Ended { ended: end }) => {
                    if let Some(tx) = ended.take() {
                        let _ = tx.send(match end {
                            jail::TreeEnd::Code(code) => ExitStatus::Code(code),
                            jail::TreeEnd::Signal(sig) => ExitStatus::Signal(sig),
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable notice from a supervisor"),
            }
        }
    };
    tokio::join!(lines, forward);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, truncated: bool) -> Line {
        Line {
            text: text.to_owned(),
            truncated,
        }
    }

    #[test]
    fn validate_names_the_offending_field() {
        let spec = ProcessSpec {
            program: "sh".into(),
            args: vec!["ok".into(), "bad\0".into()],
            env: vec![],
            cwd: "/".into(),
            max_line_bytes: 10,
            jail: None,
            stdin: Stdin::Null,
        };
        let err = validate(&spec).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { ref field, .. } if field == "args[1]"),
            "{err:?}"
        );
        let spec = ProcessSpec {
            args: vec![],
            env: vec![("A=B".into(), "x".into())],
            ..spec
        };
        assert!(validate(&spec).is_err());
        let spec = ProcessSpec {
            env: vec![("SECRET".into(), "x\0y".into())],
            ..spec
        };
        let err = validate(&spec).unwrap_err();
        assert!(!err.to_string().contains("x\0y"));
        assert!(matches!(err, Error::InvalidArgument { ref field, .. } if field == "env.SECRET"));
    }

    #[tokio::test]
    async fn spawn_fails_cleanly_without_supervisor() {
        let supervisor = Supervisor::new("/nonexistent/agentd");
        let err = Process::spawn(
            &supervisor,
            ProcessSpec {
                program: "true".into(),
                args: vec![],
                env: vec![],
                cwd: "/".into(),
                max_line_bytes: 10,
                jail: None,
                stdin: Stdin::Null,
            },
        )
        .unwrap_err();
        assert_eq!(err.reason(), Reason::Internal);
        assert!(err.to_string().contains("/nonexistent/agentd"), "{err}");
    }

    #[tokio::test]
    async fn the_supervisors_word_of_the_end_reaches_the_waiter_while_it_still_runs() {
        use tokio::io::AsyncWriteExt;
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        let (_exited_tx, exited_rx) = watch::channel(None);
        let notice = jail::Notice::new("pids", "pids: limit reached".into(), false);
        let mut lines = serde_json::to_vec(&jail::Word::Notice(notice.clone())).unwrap();
        lines.extend(b"\n{\"ended\":{\"signal\":9}}\n");
        // The supervisor stays alive (its end of the channel open) while agentd reads the word.
        theirs.write_all(&lines).await.unwrap();
        let pumping = tokio::spawn(pump_notices(Some(ours), tx, ended_tx, exited_rx));
        assert_eq!(ended_rx.await.unwrap(), ExitStatus::Signal(9));
        assert_eq!(rx.recv().await, Some(Output::Notice(notice)));
        drop(theirs);
        pumping.await.unwrap();
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn pump_sends_lines_in_order() {
        let (tx, mut rx) = mpsc::channel(1);
        let (_exited_tx, exited_rx) = watch::channel(None);
        let input = b"one\ntwo\r\nthree".to_vec();
        let pumping = tokio::spawn(async move {
            pump(&input[..], tx, Output::Stderr, 1024, exited_rx).await;
        });
        let mut got = Vec::new();
        while let Some(o) = rx.recv().await {
            got.push(o);
        }
        pumping.await.unwrap();
        assert_eq!(
            got,
            ["one", "two", "three"]
                .map(|t| Output::Stderr(line(t, false)))
                .to_vec()
        );
    }

    #[tokio::test]
    async fn pump_drains_when_receiver_is_dropped() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let (_exited_tx, exited_rx) = watch::channel(None);
        let mut data = vec![b'y'; 3 * READ_BUF];
        data.push(b'\n');
        let mut input = data.repeat(50);
        input.extend_from_slice(b"last");
        tokio::time::timeout(
            Duration::from_secs(5),
            pump(&input[..], tx, Output::Stdout, 1024, exited_rx),
        )
        .await
        .expect("pump blocked on a dropped receiver");
    }
}
