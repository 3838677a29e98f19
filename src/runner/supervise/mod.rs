//! The containment supervisor: the synchronous program agentd re-executes itself as
//! (`agentd __supervise <program> <args...>`) to run one agent so that nothing the agent starts can
//! outlive the job. It runs before any tokio runtime exists, is single-threaded, and so may fork.
//!
//! # Modes
//! * **PID namespace (preferred).** The supervisor calls `unshare(CLONE_NEWPID)` and forks
//!   "ns-init", PID 1 of a fresh PID namespace. ns-init arms `PR_SET_PDEATHSIG(SIGKILL)`, forks the
//!   agent (PID 2, its own process group), reaps every process of the namespace, and when the agent
//!   exits it reports the agent's wait status to the supervisor over a pipe and exits. When PID 1 of
//!   a namespace exits, the kernel SIGKILLs every process in it (even ones that called `setsid` or
//!   double-forked, like Claude's Bash tool) and only then lets ns-init be reaped, so once the
//!   supervisor has reaped ns-init the tree is gone. Killing the supervisor kills ns-init (PDEATHSIG)
//!   and with it the namespace. Needs `CAP_SYS_ADMIN` (agentd runs as root here). When a mount
//!   namespace can be created too, ns-init mounts a fresh `/proc` in it (made private first, so
//!   nothing propagates to the host), so PIDs seen through `/proc` (`ps`, `pkill`, `/proc/$$`)
//!   match the job's own PIDs; otherwise the agent sees the host's `/proc`.
//! * **Subreaper (fallback)** when `unshare` fails (an unprivileged container) or when the runner
//!   asks for it ([`Containment::Subreaper`], which tests use to exercise the mode). The
//!   supervisor becomes a child subreaper and
//!   forks the agent in its own process group; orphaned descendants are reparented to the supervisor,
//!   which finds every descendant by scanning `/proc/*/stat` (this kernel has no
//!   `/proc/<pid>/task/*/children`) and SIGKILLs them until it has no child left. Limitation: if the
//!   supervisor itself is SIGKILLed (agentd died, or the final escalation step), only the agent
//!   (which has PDEATHSIG armed) dies; descendants that left its process group survive until the
//!   runner (final escalation) or the next start of agentd sweeps them by their run marker.
//!
//! # Signals
//! The supervisor (and ns-init) block SIGTERM, SIGINT, SIGUSR1 and SIGCHLD and take them with
//! `sigwait`, so there are no signal handlers to keep async-signal-safe. Blocked signals are queued
//! even for a namespace's PID 1 (which otherwise drops signals it has no handler for).
//! * SIGTERM / SIGINT: forwarded to the agent's process group (in ns mode via ns-init): graceful.
//! * SIGUSR1: kill the whole tree now, then exit as if killed by SIGKILL.
//!
//! # Standby supervisors
//! Started as `agentd __supervise-standby` (no program), the supervisor does everything above that
//! does not depend on the job (parent check, run record, namespaces, ns-init and its `/proc`)
//! ahead of time and then waits on its stdin for the launch spec ([`encode_spec`]): program,
//! arguments, environment and working directory. In the namespace modes ns-init has even forked
//! the agent's process ahead ([`ahead_pipes`]): it reads the spec to EOF, points its stdin at
//! `/dev/null`, hands the spec to the waiting process and tells it to exec; in the fallback mode
//! the supervisor reads it and forks the agent as above. The runner keeps one ready per server ([`super::Launcher`]), which takes a job start's
//! spawn, exec and namespace set-up (≈ 2 ms here) off the path of the job. EOF before any spec means
//! the standby is not needed: it exits 0 and removes its record.
//!
//! # Settings
//! How to run comes on the command line ([`settings`]): containment, parent, run dir, adoption
//! and a standby's jail. The supervisor's environment is the agent's alone.
//!
//! # Run record
//! When the runner asks for one (see [`super::records`]), the supervisor writes a record of itself
//! before it starts anything and removes it once the tree is gone; the agent keeps the
//! `AGENTD_RUN_TOKEN` marker in its environment. What a killed supervisor leaves behind is then
//! found and killed by the next start-up sweep.
//!
//! # Exit status
//! The supervisor exits with the agent's exit code, or re-raises the signal that killed the agent on
//! itself, so its parent sees what the agent did. If the program cannot be executed, one line
//! `agentd: cannot execute "<program>": <reason>` goes to stderr and the exit code is 127 (not
//! found) or 126 (found but not executable). The program is resolved with execvp semantics against
//! the `PATH` of the supervisor's environment, which is exactly the agent's environment.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::prctl;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, kill, killpg, raise, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execvpe, fork, getpid, getppid, pipe2, read, setpgid};
use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use super::jail::JailSpec;
use super::records::{OwnRecord, stat_field};
pub use settings::{Adoption, Containment, Settings};

mod jailed;
pub mod settings;
pub mod spool;

/// `argv[1]` that makes the agentd binary act as the supervisor.
pub const SUBCOMMAND: &str = "__supervise";

/// `argv[1]` for a standby supervisor: the launch spec comes later, on its stdin.
pub const STANDBY_SUBCOMMAND: &str = "__supervise-standby";

/// A file the agent gets as its stdin instead of `/dev/null` (the runner sets it from
/// [`super::Stdin::File`]). Opened by whoever execs the agent, as its last step before dropping
/// privileges, so the path is the agent's own (inside a jail's root). Not passed on to the agent.
pub const STDIN_FILE_ENV: &str = "AGENTD_STDIN_FILE";

/// Exit code when the supervisor cannot set itself up (fork or pipe failure).
const SETUP_FAILED: i32 = 126;

/// How long the fallback mode keeps killing descendants before giving up (a process stuck in
/// uninterruptible sleep cannot die; the parent's escalation then SIGKILLs the supervisor).
const TREE_KILL_LIMIT: Duration = Duration::from_secs(10);

/// Runs the supervisor subcommand named by `args[0]` (the arguments after the executable), if it
/// is one; both the agentd binary and `agentd-supervise` call this before anything else.
pub fn dispatch(args: &[OsString]) -> Option<i32> {
    let (first, rest) = args.split_first()?;
    match first.to_str()? {
        STANDBY_SUBCOMMAND => Some(main_standby(rest)),
        SUBCOMMAND => Some(main(rest)),
        crate::runner::jail::probe::SUBCOMMAND => {
            let rest: Vec<String> = rest.iter().map(lossy).collect();
            Some(crate::runner::jail::probe::main(&rest))
        }
        _ => None,
    }
}

/// The supervisor entry point. `args` are the arguments after [`SUBCOMMAND`]: the [`Settings`],
/// then the program and its arguments. Returns the exit code to exit with (when the agent died of
/// a signal, the supervisor re-raises it and does not return at all, unless that signal does not
/// terminate).
pub fn main(args: &[OsString]) -> i32 {
    let (settings, program) = match Settings::parse(args) {
        Ok(parsed) => parsed,
        Err(msg) => return setup_failed(&msg),
    };
    if settings.jail.is_some() {
        return setup_failed("a jail comes with a launch spec (__supervise-standby)");
    }
    if let Err(msg) = die_with_parent(&settings) {
        return setup_failed(&msg);
    }
    // The runner builds argv from UTF-8 strings, so nothing is lost in the conversion.
    let program: Vec<String> = program.iter().map(lossy).collect();
    match Agent::new(&program) {
        Ok(agent) => run(Source::Ready(agent), &settings),
        Err(msg) => {
            let _ = writeln!(std::io::stderr(), "agentd: {msg}");
            127
        }
    }
}

/// The entry point of a standby supervisor ([`STANDBY_SUBCOMMAND`]): as [`main`], with the agent
/// read from stdin once the containment is set up. With [`Settings::jail`] the job runs in a jail
/// of that shape ([`jailed`]).
pub fn main_standby(args: &[OsString]) -> i32 {
    let settings = match Settings::parse(args) {
        Ok((settings, [])) => settings,
        Ok(_) => return setup_failed("unexpected arguments"),
        Err(msg) => return setup_failed(&msg),
    };
    if let Err(msg) = die_with_parent(&settings) {
        return setup_failed(&msg);
    }
    run(Source::Stdin, &settings)
}

fn lossy(arg: &OsString) -> String {
    arg.to_string_lossy().into_owned()
}

/// Says why the supervisor cannot start and gives the exit code for it.
fn setup_failed(msg: &str) -> i32 {
    let _ = writeln!(std::io::stderr(), "agentd: supervisor: {msg}");
    SETUP_FAILED
}

fn run(source: Source, settings: &Settings) -> i32 {
    // Written before anything is started, removed once the tree is gone: a record left behind
    // means this supervisor was killed and the start-up sweep has work to do.
    let record = match OwnRecord::write(settings.run_dir.as_deref()) {
        Ok(record) => record,
        Err(msg) => return setup_failed(&msg),
    };
    if let Err(msg) = spool::prepare(settings) {
        return setup_failed(&msg);
    }
    let end = supervise(source, settings);
    spool::finish(match &end {
        Ok(end) => end.encode(),
        Err(code) => End::Code(*code).encode(),
    });
    if let Some(record) = record {
        record.remove();
    }
    match end {
        Ok(end) => exit_like(end),
        Err(code) => code,
    }
}

/// The tree is gone: the rest of its output is handed over (the spool's) and this process lets go
/// of agentd's output pipes, so agentd reads their end now, not when this process exits after the
/// jail's teardown. Nothing is written to stdout or stderr after this.
fn tree_gone(end: End) {
    spool::finish(end.encode());
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// Arms SIGKILL on the parent's death, then checks the parent named in [`Settings::parent`] is
/// still the parent (it may have died before the prctl, when nobody would kill us later). Without
/// one (the supervisor run by hand) only the signal is armed.
fn die_with_parent(settings: &Settings) -> Result<(), String> {
    // An adoptable supervisor outlives agentd on purpose ([`spool`]).
    if settings.adopt.is_none() {
        prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("cannot set PDEATHSIG: {e}"))?;
    }
    let Some(want) = settings.parent else {
        return Ok(());
    };
    if getppid() != Pid::from_raw(want) {
        return Err("agentd exited before the supervisor started".into());
    }
    Ok(())
}

/// Runs the agent in the best containment available (the jail when a shape is given); the tree is
/// gone when this returns.
fn supervise(source: Source, settings: &Settings) -> Result<End, i32> {
    let handled = handled_signals();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled), None) {
        let _ = writeln!(
            std::io::stderr(),
            "agentd: supervisor cannot block signals: {e}"
        );
        return Err(SETUP_FAILED);
    }
    let end = match (&settings.jail, settings.containment) {
        (Some(shape), _) => jailed::run(shape.clone(), settings.run_dir.as_deref(), &handled),
        (None, Containment::Subreaper) => run_subreaper(source, &handled),
        (None, Containment::PidNamespace) => run_namespaced(source, &handled),
    };
    end.map_err(|msg| {
        let _ = writeln!(std::io::stderr(), "agentd: supervisor: {msg}");
        SETUP_FAILED
    })
}

/// How the agent (or the tree) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Code(i32),
    Signal(Signal),
}

impl End {
    fn from_wait(status: WaitStatus) -> Option<End> {
        match status {
            WaitStatus::Exited(_, code) => Some(End::Code(code)),
            WaitStatus::Signaled(_, sig, _) => Some(End::Signal(sig)),
            _ => None,
        }
    }

    /// How agentd sees this end (the supervisor exits the same way, [`exit_like`]).
    fn tree_end(self) -> crate::runner::jail::TreeEnd {
        match self {
            End::Code(code) => crate::runner::jail::TreeEnd::Code(code),
            End::Signal(sig) => crate::runner::jail::TreeEnd::Signal(sig as i32),
        }
    }

    fn encode(self) -> [u8; 8] {
        let (kind, value) = match self {
            End::Code(c) => (0i32, c),
            End::Signal(s) => (1i32, s as i32),
        };
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&kind.to_le_bytes());
        buf[4..].copy_from_slice(&value.to_le_bytes());
        buf
    }

    fn decode(buf: [u8; 8]) -> Option<End> {
        let kind = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let value = i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        match kind {
            0 => Some(End::Code(value)),
            1 => Signal::try_from(value).ok().map(End::Signal),
            _ => None,
        }
    }
}

/// What to exec, prepared before forking so the child only has to call exec.
struct Agent {
    display: String,
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Set when the agent came from a launch spec: the supervisor's own working directory and
    /// environment are not the agent's then.
    place: Option<Place>,
    /// The file to open as the agent's stdin ([`STDIN_FILE_ENV`]); `None` keeps `/dev/null`.
    stdin: Option<CString>,
}

struct Place {
    cwd: CString,
    /// The agent's `PATH`, which `program` is resolved against.
    path: Option<std::ffi::OsString>,
}

/// Where the agent to run comes from.
enum Source {
    /// From the command line and the supervisor's own environment and working directory.
    Ready(Agent),
    /// From a launch spec on stdin (a standby supervisor).
    Stdin,
}

/// Why no agent was started.
enum NoAgent {
    /// Stdin closed before a spec arrived: the standby was not needed.
    Unused,
    Failed(String),
}

impl Source {
    /// The agent; for a standby, blocks until the launch spec arrived (and then points stdin at
    /// `/dev/null`, which the agent inherits).
    fn resolve(self) -> Result<Agent, NoAgent> {
        match self {
            Source::Ready(agent) => Ok(agent),
            Source::Stdin => read_launch_spec().map(|(_, agent)| agent),
        }
    }
}

/// A standby's launch spec, read from stdin to EOF, and its agent; then this process is back at
/// the normal CPU priority (the runner may have set the standby up at the idle one, and what it
/// forks inherits it) with `/dev/null` as its stdin.
fn read_launch_spec() -> Result<(Vec<u8>, Agent), NoAgent> {
    let spec = read_framed(&mut std::io::stdin().lock())
        .map_err(|e| NoAgent::Failed(format!("cannot read the launch spec: {e}")))?;
    if spec.is_empty() {
        return Err(NoAgent::Unused);
    }
    let (agent, _) = decode_spec(&spec).map_err(NoAgent::Failed)?;
    normal_priority_and_null_stdin().map_err(NoAgent::Failed)?;
    Ok((spec, agent))
}

fn normal_priority_and_null_stdin() -> Result<(), String> {
    super::standby::set_policy(0, libc::SCHED_OTHER)
        .map_err(|e| format!("cannot restore the normal CPU priority: {e}"))?;
    let null =
        std::fs::File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("cannot redirect stdin: {e}"))?;
    Ok(())
}

/// ns-init's side of the agent forked ahead of its job (see [`ahead_pipes`]).
struct Ahead {
    /// The launch spec goes in, then EOF.
    spec: OwnedFd,
    /// One byte: exec now. EOF (ns-init gone or gave up): exit.
    start: OwnedFd,
}

/// The agent-to-be's side.
struct Waiting {
    spec: OwnedFd,
    start: OwnedFd,
}

/// The pipes to an agent forked while its supervisor is a standby. Forking a process of the
/// supervisor's size costs about a millisecond on the VMs agentd runs on (its page tables are
/// copied, then its pages faulted copy-on-write), more than the rest of the hand-over: forked
/// ahead, the agent-to-be waits for the launch spec (and decodes it while ns-init prepares the
/// job), then for the word to exec, and the job's start pays neither.
fn ahead_pipes() -> Result<(Ahead, Waiting), String> {
    let p = || pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot create a pipe: {e}"));
    let (spec_r, spec_w) = p()?;
    let (start_r, start_w) = p()?;
    Ok((
        Ahead {
            spec: spec_w,
            start: start_w,
        },
        Waiting {
            spec: spec_r,
            start: start_r,
        },
    ))
}

impl Ahead {
    /// Hands the agent-to-be its launch spec (which it decodes while this side goes on).
    fn hand(self, spec: &[u8]) -> Result<Handed, String> {
        write_all(std::os::fd::AsFd::as_fd(&self.spec), spec)
            .map_err(|e| format!("cannot hand the agent its job: {e}"))?;
        // Closing the pipe tells it the spec is whole.
        drop(self.spec);
        Ok(Handed(self.start))
    }
}

/// An agent-to-be that has its launch spec.
struct Handed(OwnedFd);

impl Handed {
    /// Tells it to exec.
    fn start(self) -> Result<(), String> {
        nix::unistd::write(&self.0, &[1])
            .map(drop)
            .map_err(|e| format!("cannot start the agent: {e}"))
    }
}

impl Waiting {
    /// Reads the launch spec to its end and makes what `prepare` makes of it, then waits for the
    /// word to exec. Exits quietly when either never comes (no job, or ns-init gave up).
    fn job<T>(self, prepare: impl FnOnce(&[u8]) -> T) -> T {
        let mut spec = Vec::new();
        let read_whole = std::io::Read::read_to_end(&mut std::fs::File::from(self.spec), &mut spec);
        if read_whole.is_err() || spec.is_empty() {
            _exit(0)
        }
        let prepared = prepare(&spec);
        if !matches!(read(&self.start, &mut [0u8; 1]), Ok(1)) {
            _exit(0)
        }
        prepared
    }
}

/// The agent forked ahead by a PID-namespace standby's ns-init: waits for its job, then execs it.
fn agent_ahead(waiting: Waiting) -> ! {
    let fail = |msg: String| -> ! {
        let _ = writeln!(std::io::stderr(), "agentd: ns-init: {msg}");
        _exit(SETUP_FAILED)
    };
    // Its stdin was forked before ns-init let go of the runner's channel.
    normal_priority_and_null_stdin().unwrap_or_else(|e| fail(e));
    let agent = waiting.job(|spec| decode_spec(spec).unwrap_or_else(|e| fail(e)).0);
    exec_agent(&agent, None)
}

/// Format tag of the launch spec, bumped on any change (the runner and the supervisor may come
/// from different builds during an upgrade). The spec's framing on the channel
/// ([`frame_spec`]) is not part of it: a reader of the other framing fails on the length (or the
/// tag) instead.
const SPEC_VERSION: &str = "agentd-launch-2";

/// The largest launch spec a supervisor accepts (prompts and environments are bounded far below).
const MAX_SPEC_BYTES: u64 = 256 << 20;

/// The launch spec as it goes over a standby's channel: its length (8 bytes, little-endian),
/// then the spec. The length, not the channel's EOF, ends it, because a jailed standby's channel
/// carries one more byte after it: the word that the job may start ([`GO`]).
pub fn frame_spec(spec: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + spec.len());
    out.extend_from_slice(&(spec.len() as u64).to_le_bytes());
    out.extend_from_slice(spec);
    out
}

/// The byte a jailed standby's ns-init waits for after the spec before its agent may exec: agentd
/// sends the spec as soon as it is built and this once the job's files and before-snapshot are
/// in place, so the jail is built while agentd does those. EOF instead: the job was given up.
pub const GO: u8 = b'g';

/// Reads one framed spec ([`frame_spec`]) and nothing after it; EOF before it: no spec (empty).
fn read_framed(from: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    match from.read_exact(&mut len) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Vec::new()),
        other => other?,
    }
    let len = u64::from_le_bytes(len);
    if len > MAX_SPEC_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a launch spec of {len} bytes"),
        ));
    }
    let mut spec = Vec::new();
    from.by_ref().take(len).read_to_end(&mut spec)?;
    if spec.len() as u64 != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(spec)
}

/// The launch spec a standby supervisor reads from stdin: NUL-terminated fields, namely the
/// version tag, the job's [`JailSpec`] as JSON (empty when unjailed), the working directory, the
/// argument count, the arguments (program first), then `NAME=value` environment entries up to the
/// end. Callers have rejected NUL bytes in every part (JSON escapes its own).
pub fn encode_spec(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    cwd: &std::path::Path,
    jail: Option<&JailSpec>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(bytes);
        out.push(0);
    };
    field(SPEC_VERSION.as_bytes());
    // Serializing plain paths and numbers cannot fail.
    let jail = jail
        .and_then(|j| serde_json::to_vec(j).ok())
        .unwrap_or_default();
    field(&jail);
    field(cwd.as_os_str().as_bytes());
    field((args.len() + 1).to_string().as_bytes());
    field(program.as_bytes());
    for a in args {
        field(a.as_bytes());
    }
    for (k, v) in env {
        field(format!("{k}={v}").as_bytes());
    }
    out
}

/// The jail part of a launch spec, read by the supervisor before ns-init gets the whole spec.
fn decode_jail(spec: &[u8]) -> Result<Option<JailSpec>, String> {
    let mut fields = spec.split(|&b| b == 0);
    if fields.next() != Some(SPEC_VERSION.as_bytes()) {
        return Err(format!("launch spec is not {SPEC_VERSION}"));
    }
    match fields.next() {
        None => Err("launch spec has no jail".into()),
        Some([]) => Ok(None),
        Some(json) => serde_json::from_slice(json)
            .map(Some)
            .map_err(|e| format!("launch spec has a bad jail: {e}")),
    }
}

fn decode_spec(spec: &[u8]) -> Result<(Agent, Option<JailSpec>), String> {
    let body = spec
        .strip_suffix(&[0])
        .ok_or("launch spec does not end with a NUL byte")?;
    let jail = decode_jail(body)?;
    let mut fields = body.split(|&b| b == 0).skip(2);
    let mut next = |what: &str| {
        fields
            .next()
            .ok_or_else(|| format!("launch spec has no {what}"))
    };
    let cwd = next("working directory")?.to_vec();
    let argc: usize = std::str::from_utf8(next("argument count")?)
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n >= 1)
        .ok_or("launch spec has a bad argument count")?;
    let mut argv = Vec::with_capacity(argc);
    for _ in 0..argc {
        argv.push(next("argument")?.to_vec());
    }
    let (stdin, envp) = split_stdin(fields.map(<[u8]>::to_vec).collect());
    let path = envp
        .iter()
        .find_map(|kv| kv.strip_prefix(b"PATH="))
        .map(|p| std::ffi::OsStr::from_bytes(p).to_owned());
    // No field holds a NUL (they were split on it), so these cannot fail.
    let c = |bytes: Vec<u8>| CString::new(bytes).map_err(|_| "NUL in launch spec".to_owned());
    let agent = Agent {
        display: String::from_utf8_lossy(&argv[0]).into_owned(),
        program: c(argv[0].clone())?,
        argv: argv.into_iter().map(c).collect::<Result<_, _>>()?,
        envp: envp.into_iter().map(c).collect::<Result<_, _>>()?,
        place: Some(Place { cwd: c(cwd)?, path }),
        stdin: stdin.map(c).transpose()?,
    };
    Ok((agent, jail))
}

impl Agent {
    fn new(args: &[String]) -> Result<Agent, String> {
        let Some(display) = args.first().cloned() else {
            return Err(format!("{SUBCOMMAND}: missing program"));
        };
        let argv = args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                CString::new(a.as_bytes()).map_err(|_| format!("argument {i} contains a NUL byte"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let program = argv[0].clone();
        let (stdin, envp) = split_stdin(
            std::env::vars_os()
                .map(|(k, v)| {
                    let mut kv = k.as_bytes().to_vec();
                    kv.push(b'=');
                    kv.extend_from_slice(v.as_bytes());
                    kv
                })
                .collect(),
        );
        Ok(Agent {
            display,
            program,
            argv,
            envp: envp
                .into_iter()
                .filter_map(|kv| CString::new(kv).ok())
                .collect(),
            place: None,
            stdin: stdin.and_then(|p| CString::new(p).ok()),
        })
    }
}

/// Takes the [`STDIN_FILE_ENV`] entry (the last one wins) out of `NAME=value` entries.
fn split_stdin(envp: Vec<Vec<u8>>) -> (Option<Vec<u8>>, Vec<Vec<u8>>) {
    let prefix = format!("{STDIN_FILE_ENV}=");
    let mut stdin = None;
    let rest = envp
        .into_iter()
        .filter_map(|kv| match kv.strip_prefix(prefix.as_bytes()) {
            Some(path) => {
                stdin = Some(path.to_vec());
                None
            }
            None => Some(kv),
        })
        .collect();
    (stdin, rest)
}

/// Ends a forked child. `exit` (rather than `_exit`, which nix does not offer) is fine here: the
/// supervisor is single-threaded, so no lock can be held by a thread that did not survive the fork.
fn _exit(code: i32) -> ! {
    std::process::exit(code)
}

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGCHLD,
        // The jail's limit watch ticks on it, and hears of writes to the job's /tmp.
        Signal::SIGALRM,
        Signal::SIGIO,
    ] {
        set.add(sig);
    }
    set
}

/// Runs in the forked child: becomes the agent. Never returns.
fn exec_agent(agent: &Agent, supervisor: Option<Pid>) -> ! {
    // Own process group, so graceful signals reach the agent and its ordinary children only.
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    if let Some(supervisor) = supervisor {
        // Fallback mode: without a namespace, at least the agent dies with the supervisor.
        if prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != supervisor {
            _exit(SETUP_FAILED);
        }
    }
    enter_place(agent);
    exec_now(agent)
}

/// Moves into the agent's working directory and takes its `PATH` (for a spec'd agent), then its
/// stdin.
fn enter_place(agent: &Agent) {
    enter_cwd(agent);
    take_stdin(agent);
}

/// Points stdin at the agent's input file, if it has one. `O_NOFOLLOW`: the file lies in the
/// agent's own HOME, where a symlink left by an earlier job must not redirect it elsewhere.
fn take_stdin(agent: &Agent) {
    let Some(path) = &agent.stdin else {
        return;
    };
    let opened = nix::fcntl::open(
        path.as_c_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .and_then(|fd| nix::unistd::dup2_stdin(&fd));
    if let Err(e) = opened {
        let _ = writeln!(
            std::io::stderr(),
            "agentd: cannot open the agent's input {path:?}: {}",
            e.desc()
        );
        _exit(126);
    }
}

/// The working directory and `PATH` of a spec'd agent.
fn enter_cwd(agent: &Agent) {
    if let Some(place) = &agent.place {
        if let Err(e) = nix::unistd::chdir(place.cwd.as_c_str()) {
            let _ = writeln!(
                std::io::stderr(),
                "agentd: cannot enter the working directory {:?}: {}",
                place.cwd,
                e.desc()
            );
            _exit(126);
        }
        // execvpe resolves the program against this process's PATH, which must be the agent's.
        // SAFETY: this forked child is single-threaded; nothing else reads the environment.
        unsafe {
            match &place.path {
                Some(path) => std::env::set_var("PATH", path),
                None => std::env::remove_var("PATH"),
            }
        }
    }
}

/// Gives the agent the default signal state and execs it; on failure reports it and exits
/// 127/126. Never returns.
fn exec_now(agent: &Agent) -> ! {
    // The Rust runtime ignores SIGPIPE, agentd's own parent may have ignored others, and the
    // supervisor blocks signals; all of that would be inherited across exec, so give the agent the
    // default state (glibc's reserved real-time signals 32/33 cannot be touched and are left).
    for sig in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: installing SIG_DFL registers no handler code, so no handler-safety rules apply.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let err = match execvpe(&agent.program, &agent.argv, &agent.envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let _ = writeln!(
        std::io::stderr(),
        "agentd: cannot execute {:?}: {}",
        agent.display,
        err.desc()
    );
    _exit(match err {
        Errno::ENOENT | Errno::ENOTDIR => 127,
        _ => 126,
    })
}

/// Waits for signals until `target` (a child) has exited, reaping every child on the way.
/// `on_signal` handles SIGTERM/SIGINT/SIGUSR1 and may end the wait early.
fn wait_for(
    target: Pid,
    handled: &SigSet,
    mut on_signal: impl FnMut(Signal) -> Option<End>,
) -> End {
    loop {
        let Ok(sig) = handled.wait() else { continue };
        if sig != Signal::SIGCHLD {
            if let Some(end) = on_signal(sig) {
                return end;
            }
            continue;
        }
        // SIGCHLDs coalesce: reap everything that has exited.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    if status.pid() == Some(target)
                        && let Some(end) = End::from_wait(status)
                    {
                        return end;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return End::Code(SETUP_FAILED),
                Err(_) => break,
            }
        }
    }
}

/// Blocks until `pid` has been reaped.
fn reap_blocking(pid: Pid) -> Option<End> {
    loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(end) = End::from_wait(status) {
                    return Some(end);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// `clone` with namespace flags and fork semantics (the child continues here on a copy of this
/// stack). `None` in the child.
fn clone_child(flags: CloneFlags) -> Result<Option<Pid>, String> {
    let flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: as fork: the supervisor is single-threaded; with a null stack pointer the kernel
    // gives the child a copy-on-write copy of this one, and no other argument is used.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match rc {
        -1 => Err(format!(
            "cannot create the job's namespaces: {}",
            std::io::Error::last_os_error()
        )),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as i32))),
    }
}

fn fork_or_err() -> Result<ForkResult, String> {
    // SAFETY: the supervisor is single-threaded (it runs before any runtime or thread is started),
    // so the child may do anything the parent could, including allocating.
    unsafe { fork() }.map_err(|e| format!("cannot fork: {e}"))
}

/// PID-namespace mode: ns-init is cloned into a new PID namespace (and, where it can be had, a
/// private mount namespace, so ns-init can mount a /proc that matches the new PID numbers).
/// Cloned, not unshared: after `unshare(CLONE_NEWPID)` this process could no longer start a
/// thread (EINVAL), and the spool of a job that outlives agentd is one. Without the namespaces,
/// the subreaper mode.
fn run_namespaced(source: Source, handled: &SigSet) -> Result<End, String> {
    // `life`: ns-init holds the read end; EOF there means the supervisor is gone.
    let (life_r, life_w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| format!("cannot create a pipe: {e}"))?;
    // `status`: ns-init writes the agent's end here before exiting.
    let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (cloned, own_proc) = match clone_child(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS) {
        Ok(cloned) => (cloned, true),
        Err(_) => match clone_child(CloneFlags::CLONE_NEWPID) {
            Ok(cloned) => (cloned, false),
            Err(_) => return run_subreaper(source, handled),
        },
    };
    match cloned {
        None => {
            drop(life_w);
            drop(status_r);
            if own_proc {
                mount_proc();
            }
            ns_init(source, handled, life_r, status_w, own_proc)
        }
        Some(init) => {
            spool::start();
            drop(life_r);
            drop(status_w);
            let end = wait_for(init, handled, |sig| match sig {
                Signal::SIGUSR1 => {
                    // Killing PID 1 makes the kernel kill the whole namespace; ns-init is only
                    // reapable once every process in it is gone.
                    let _ = kill(init, Signal::SIGKILL);
                    reap_blocking(init);
                    Some(End::Signal(Signal::SIGKILL))
                }
                _ => {
                    let _ = kill(init, sig);
                    None
                }
            });
            drop(life_w);
            let mut buf = [0u8; 8];
            match read(&status_r, &mut buf) {
                Ok(8) => Ok(End::decode(buf).unwrap_or(end)),
                _ => Ok(end),
            }
        }
    }
}

/// Mounts a fresh /proc for the new PID namespace (in the private mount namespace), so `$$`,
/// `ps`, `pgrep`/`pkill` and `/proc/<pid>` inside the job agree with the PIDs the job sees. Best
/// effort: on failure the agent sees the host's /proc, as without a mount namespace.
fn mount_proc() {
    use nix::mount::{MsFlags, mount};
    // Private first, so neither this nor anything the agent mounts propagates to the host.
    let private = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    );
    if private.is_ok() {
        let _ = mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        );
    }
}

/// PID 1 of the agent's namespace. Never returns; its exit takes the namespace down.
fn ns_init(
    source: Source,
    handled: &SigSet,
    life_r: OwnedFd,
    status_w: OwnedFd,
    own_mounts: bool,
) -> ! {
    let fail = |msg: String| -> ! {
        let _ = writeln!(std::io::stderr(), "agentd: ns-init: {msg}");
        _exit(SETUP_FAILED)
    };
    if prctl::set_pdeathsig(Signal::SIGKILL).is_err() {
        _exit(SETUP_FAILED);
    }
    // The supervisor may have died before PDEATHSIG was armed: then its end of `life` is closed.
    if !matches!(read(&life_r, &mut [0u8; 1]), Err(Errno::EAGAIN)) {
        _exit(SETUP_FAILED);
    }
    let agent_pid = match source {
        Source::Ready(agent) => {
            if own_mounts {
                hide_enclosing_repos(&agent);
            }
            match fork_or_err() {
                Ok(ForkResult::Child) => exec_agent(&agent, None),
                Ok(ForkResult::Parent { child }) => child,
                Err(msg) => fail(msg),
            }
        }
        Source::Stdin => {
            let (ahead, waiting) = ahead_pipes().unwrap_or_else(|e| fail(e));
            let pid = match fork_or_err() {
                Ok(ForkResult::Child) => {
                    drop((ahead, life_r, status_w));
                    agent_ahead(waiting)
                }
                Ok(ForkResult::Parent { child }) => child,
                Err(msg) => fail(msg),
            };
            drop(waiting);
            // Waiting at the normal priority costs nothing, and a standby set up at the idle one
            // would be woken by its job at the idle one: on a busy host, only once a core is
            // otherwise idle (0.7-1.1 ms into the job's start, measured in the `sandbox` bench).
            // Failing here, `read_launch_spec` says why.
            let _ = super::standby::set_policy(0, libc::SCHED_OTHER);
            let (spec, agent) = match read_launch_spec() {
                Ok(read) => read,
                Err(NoAgent::Unused) => _exit(0),
                Err(NoAgent::Failed(msg)) => fail(msg),
            };
            let handed = ahead.hand(&spec).unwrap_or_else(|e| fail(e));
            if own_mounts {
                hide_enclosing_repos(&agent);
            }
            handed.start().unwrap_or_else(|e| fail(e));
            pid
        }
    };
    // Also set here so a signal forwarded right after the fork already reaches the group.
    let _ = setpgid(agent_pid, agent_pid);
    let end = wait_for(agent_pid, handled, |sig| {
        if matches!(sig, Signal::SIGTERM | Signal::SIGINT) {
            let _ = killpg(agent_pid, sig);
        }
        None
    });
    let _ = nix::unistd::write(&status_w, &end.encode());
    _exit(0)
}

/// Covers every `.git` in the directories above the agent's working directory, in the job's own
/// mount namespace (never call it in the host's): an empty read-only tmpfs over a `.git`
/// directory, `/dev/null` over a `.git` file (a worktree's). When agentd's data dir lies inside a
/// git work tree (`./agentd-data` of agentd run from a checkout), agents otherwise take the
/// operator's repository for the job's: Claude Code reads its refs and runs `git status`,
/// `git log`, `rg` over it, +70–150 ms per job (BENCHMARKS.md, issue #22), and an agent's own
/// `git commit` would land there. The working directory itself may be a repository the session
/// uploaded: it stays. Best effort: a failure leaves the job as it was.
fn hide_enclosing_repos(agent: &Agent) {
    use nix::mount::{MsFlags, mount};
    let cwd = match &agent.place {
        Some(place) => std::path::PathBuf::from(std::ffi::OsStr::from_bytes(place.cwd.as_bytes())),
        None => match std::env::current_dir() {
            Ok(cwd) => cwd,
            Err(_) => return,
        },
    };
    let mut found = cwd
        .ancestors()
        .skip(1)
        .map(|dir| dir.join(".git"))
        .filter_map(|git| std::fs::symlink_metadata(&git).ok().map(|m| (git, m)))
        .peekable();
    if found.peek().is_none() {
        return;
    }
    // mount_proc made the namespace private already; again here, so that nothing below can ever
    // propagate to the host even if that step failed.
    let private = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    );
    if private.is_err() {
        return;
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (git, meta) in found {
        let _ = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                &git,
                Some("tmpfs"),
                flags,
                Some("size=4k,mode=0555"),
            )
        } else if meta.is_file() {
            mount(
                Some("/dev/null"),
                &git,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        } else {
            Ok(())
        };
    }
}

/// Fallback mode: this process is a child subreaper and cleans up descendants itself.
fn run_subreaper(source: Source, handled: &SigSet) -> Result<End, String> {
    prctl::set_child_subreaper(true).map_err(|e| format!("cannot become a subreaper: {e}"))?;
    let agent = match source.resolve() {
        Ok(agent) => agent,
        Err(NoAgent::Unused) => return Ok(End::Code(0)),
        Err(NoAgent::Failed(msg)) => return Err(msg),
    };
    let me = getpid();
    let agent_pid = match fork_or_err()? {
        ForkResult::Child => exec_agent(&agent, Some(me)),
        ForkResult::Parent { child } => child,
    };
    spool::start();
    let _ = setpgid(agent_pid, agent_pid);
    let end = wait_for(agent_pid, handled, |sig| match sig {
        Signal::SIGUSR1 => {
            kill_descendants(me);
            Some(End::Signal(Signal::SIGKILL))
        }
        _ => {
            let _ = killpg(agent_pid, sig);
            None
        }
    });
    // A finished job leaves nothing behind.
    kill_descendants(me);
    Ok(end)
}

/// SIGKILLs every descendant of `me` and reaps until `me` has no children left.
fn kill_descendants(me: Pid) {
    let started = Instant::now();
    loop {
        for pid in descendants(me) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return,
                Err(_) => break,
            }
        }
        if started.elapsed() > TREE_KILL_LIMIT {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes all of `bytes`, through interrupted writes (the supervisor's pipes and sockets).
pub(super) fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// All descendants of `root`, from one scan of `/proc/*/stat`.
fn descendants(root: Pid) -> Vec<Pid> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for pid in crate::runner::records::proc_pids() {
        // The process may be gone already: skip it.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(ppid) = parse_ppid(&stat)
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut stack = vec![root.as_raw()];
    while let Some(pid) = stack.pop() {
        if let Some(kids) = children.get(&pid) {
            for &kid in kids {
                found.push(Pid::from_raw(kid));
                stack.push(kid);
            }
        }
    }
    found
}

/// The ppid field of `/proc/<pid>/stat`.
fn parse_ppid(stat: &str) -> Option<i32> {
    stat_field(stat, 4)?.parse().ok()
}

/// Exits the way the agent did: returns its exit code, or re-raises its fatal signal.
fn exit_like(end: End) -> i32 {
    match end {
        End::Code(code) => code,
        End::Signal(sig) => {
            // A core-dumping signal must not leave a core of the supervisor in the workspace.
            let _ = prctl::set_dumpable(false);
            // SAFETY: installing SIG_DFL registers no handler code; the Rust runtime's own
            // SIGSEGV/SIGBUS handlers must be replaced so the signal is fatal as for the agent.
            let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
            let mut only = SigSet::empty();
            only.add(sig);
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&only), None);
            let _ = raise(sig);
            // Still alive: the signal's default action does not terminate.
            128 + sig as i32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ppid_handles_odd_command_names() {
        assert_eq!(parse_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn descendants_finds_grandchildren() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 2917 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let child_pid = Pid::from_raw(child.id() as i32);
        let is_sleep = |pid: &Pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x002917\x00")
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let found = descendants(getpid());
            if found.iter().any(is_sleep) || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let saw_grandchild = found.iter().any(is_sleep);
        let _ = killpg(child_pid, Signal::SIGKILL);
        child.wait().unwrap();
        assert!(found.contains(&child_pid), "{found:?}");
        assert!(saw_grandchild, "grandchild not found: {found:?}");
    }

    #[test]
    fn launch_spec_round_trips() {
        let args = vec!["-c".to_owned(), String::new(), "a b=c".to_owned()];
        let env = vec![
            ("FOO".to_owned(), "x=y z".to_owned()),
            ("PATH".to_owned(), "/opt/bin:/bin".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ];
        let spec = encode_spec("sh", &args, &env, std::path::Path::new("/tmp/w s"), None);
        let (agent, jail) = decode_spec(&spec).unwrap();
        assert!(jail.is_none());
        assert_eq!(agent.display, "sh");
        assert_eq!(agent.program.as_bytes(), b"sh");
        let argv: Vec<&[u8]> = agent.argv.iter().map(|a| a.as_bytes()).collect();
        assert_eq!(argv, [&b"sh"[..], b"-c", b"", b"a b=c"]);
        let envp: Vec<&[u8]> = agent.envp.iter().map(|a| a.as_bytes()).collect();
        assert_eq!(envp, [&b"FOO=x=y z"[..], b"PATH=/opt/bin:/bin", b"EMPTY="]);
        let place = agent.place.unwrap();
        assert_eq!(place.cwd.as_bytes(), b"/tmp/w s");
        assert_eq!(
            place.path.as_deref(),
            Some(std::ffi::OsStr::new("/opt/bin:/bin"))
        );

        // No PATH given: none is set for the agent either.
        let spec = encode_spec("sh", &[], &[], std::path::Path::new("/"), None);
        assert!(decode_spec(&spec).unwrap().0.place.unwrap().path.is_none());
    }

    #[test]
    fn a_framed_spec_is_read_whole_and_nothing_after_it() {
        let spec = encode_spec(
            "sh",
            &["-c".into(), "true".into()],
            &[],
            std::path::Path::new("/"),
            None,
        );
        let mut channel = frame_spec(&spec);
        channel.push(GO);
        let mut r = channel.as_slice();
        assert_eq!(read_framed(&mut r).unwrap(), spec);
        // The word to go stays for whoever reads it next.
        assert_eq!(r, [GO]);
        // EOF before a spec: no job.
        assert!(read_framed(&mut [].as_slice()).unwrap().is_empty());
        // A spec cut short, and a length no spec has, are errors, not a job.
        let cut = &frame_spec(&spec)[..spec.len()];
        assert!(read_framed(&mut &cut[..]).is_err());
        let huge = (MAX_SPEC_BYTES + 1).to_le_bytes();
        assert!(read_framed(&mut &huge[..]).is_err());
    }

    #[test]
    fn malformed_launch_specs_are_refused() {
        let good = encode_spec(
            "sh",
            &["x".to_owned()],
            &[],
            std::path::Path::new("/"),
            None,
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "does not end with a NUL"),
            (
                b"agentd-launch-1\0/\x001\0sh\0".to_vec(),
                "is not agentd-launch-2",
            ),
            (
                b"agentd-launch-2\0\0/\0zero\0sh\0".to_vec(),
                "bad argument count",
            ),
            (
                b"agentd-launch-2\0\0/\x000\0".to_vec(),
                "bad argument count",
            ),
            (
                b"agentd-launch-2\0\0/\x003\0sh\0".to_vec(),
                "has no argument",
            ),
            (b"agentd-launch-2\0\0".to_vec(), "has no working directory"),
            (b"agentd-launch-2\0{\0/\x001\0sh\0".to_vec(), "bad jail"),
        ];
        for (spec, want) in cases {
            let err = decode_spec(&spec).err().expect("refused");
            assert!(err.contains(want), "{err} (wanted {want})");
        }
    }

    #[test]
    fn end_round_trips_through_the_status_pipe_encoding() {
        for end in [
            End::Code(0),
            End::Code(-3),
            End::Code(255),
            End::Signal(Signal::SIGTERM),
            End::Signal(Signal::SIGKILL),
        ] {
            assert_eq!(End::decode(end.encode()), Some(end));
        }
        assert_eq!(End::decode([9, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
