//! The supervisor in jail mode (see [`crate::runner::jail`] for what the jail is).
//!
//! Three processes, as in the PID-namespace mode, with the jail split between them:
//! - the **supervisor** stays on the host side: it maps the user namespace's ids, puts ns-init
//!   into the job's cgroup, gives it the normal priority back once it is set up (or the job
//!   came first), sets the job's limits from the launch spec ns-init passes on, watches them on
//!   a SIGALRM tick and reports [`Notice`]s to agentd on the channel it was started with (its
//!   stdin, a socket), tells agentd how the agent ended as soon as ns-init says the tree is gone
//!   (before the teardown), and then removes the cgroup;
//! - **ns-init**, cloned into new user, PID, mount, IPC and UTS (and network) namespaces, builds
//!   the job-independent root while the supervisor is a standby (and pivots into it there, where
//!   the kernel allows: see [`fs`]), forks the agent ahead of its job, reads the launch spec from
//!   agentd itself on the inherited channel and passes it to the supervisor and the agent, adds
//!   the job's paths meanwhile, pivots if it has not, and tells the agent to go once agentd's
//!   word ([`super::GO`], after the spec on the same channel: agentd writes the job's files and
//!   takes its before-snapshot while the jail is built) has come and the supervisor says the
//!   limits are set and watched;
//! - the **agent**, forked while the supervisor is a standby (so a job's start pays for no fork,
//!   see [`super::ahead_pipes`]), decodes the spec, waits for the word, drops to [`INSIDE_ID`]
//!   with no capabilities, `no_new_privs`, Landlock and the seccomp filter, and execs.

use super::{
    _exit, Agent, End, SETUP_FAILED, clone_child, decode_jail, decode_spec, enter_place, exec_now,
    reap_blocking, wait_for, write_all,
};
use crate::runner::jail::{self, INSIDE_ID, JailSpec, Network, Shape, fs, seccomp, watch, writes};
use crate::runner::records::RUN_TOKEN_ENV;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::unistd::{ForkResult, Gid, Pid, Uid, pipe2, read, setpgid};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The supervisor's side, recording in `run_dir` when given. Returns how the agent (or the tree)
/// ended.
pub(super) fn run(shape: Shape, run_dir: Option<&Path>, handled: &SigSet) -> Result<End, String> {
    let token = std::env::var(RUN_TOKEN_ENV).unwrap_or_else(|_| std::process::id().to_string());
    let run_dir = run_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    // The new root is mounted here, inside ns-init's mount namespace only; on the host it stays
    // an empty directory, removed below (or by the next start-up sweep after a kill).
    let root = run_dir.join(format!("{token}.root"));
    std::fs::create_dir(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let end = supervise(shape, &token, &root, handled);
    let _ = std::fs::remove_dir(&root);
    end
}

/// Pipes between the supervisor and ns-init.
struct Pipes {
    /// EOF at ns-init means the supervisor is gone.
    life: (OwnedFd, OwnedFd),
    /// ns-init writes the agent's end here.
    status: (OwnedFd, OwnedFd),
    /// One byte once the id maps are written.
    go: (OwnedFd, OwnedFd),
    /// One byte once ns-init has set up everything it can ahead of the job.
    prepared: (OwnedFd, OwnedFd),
    /// One byte once ns-init is back at the normal priority: what it forks from then on (the
    /// agent, ahead of its job) is too.
    raised: (OwnedFd, OwnedFd),
    /// The launch spec as ns-init read it from agentd, then EOF (nothing: no job).
    spec: (OwnedFd, OwnedFd),
    /// One byte once the job's limits are set and watched (EOF: they could not be).
    limited: (OwnedFd, OwnedFd),
    /// One byte once the job's root is entered (EOF: ns-init failed).
    ready: (OwnedFd, OwnedFd),
}

fn pipes() -> Result<Pipes, String> {
    let p = |flags| pipe2(flags).map_err(|e| format!("cannot create a pipe: {e}"));
    Ok(Pipes {
        life: p(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?,
        status: p(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?,
        go: p(OFlag::O_CLOEXEC)?,
        prepared: p(OFlag::O_CLOEXEC)?,
        raised: p(OFlag::O_CLOEXEC)?,
        spec: p(OFlag::O_CLOEXEC)?,
        limited: p(OFlag::O_CLOEXEC)?,
        ready: p(OFlag::O_CLOEXEC)?,
    })
}

fn supervise(shape: Shape, token: &str, root: &Path, handled: &SigSet) -> Result<End, String> {
    let Pipes {
        life: (life_r, life_w),
        status: (status_r, status_w),
        go: (go_r, go_w),
        prepared: (prepared_r, prepared_w),
        raised: (raised_r, raised_w),
        spec: (spec_r, spec_w),
        limited: (limited_r, limited_w),
        ready: (ready_r, ready_w),
    } = pipes()?;
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if matches!(shape.network, Network::None | Network::Gateway) {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let Some(init) = clone_child(flags)? else {
        drop((
            life_w, status_r, go_w, prepared_r, raised_w, spec_r, limited_w, ready_r,
        ));
        let pipes = InitPipes {
            life_r,
            status_w,
            go_r,
            prepared_w,
            raised_r,
            spec_w,
            limited_r,
            ready_w,
        };
        ns_init(shape, root, pipes)
    };
    drop((
        life_r, status_w, go_r, prepared_w, raised_r, spec_w, limited_r, ready_w,
    ));
    super::spool::start();
    let abandon = |msg: String| {
        let _ = kill(init, Signal::SIGKILL);
        reap_blocking(init);
        msg
    };
    write_id_maps(init, &shape).map_err(abandon)?;
    // Ahead of the job: the move into the cgroup is the slowest step of a jail (v1).
    let cgroup = job_cgroup(shape.cgroup_parent.as_deref(), token, init).map_err(abandon)?;
    nix::unistd::write(&go_w, &[1]).map_err(|e| abandon(format!("cannot start ns-init: {e}")))?;
    drop(go_w);

    // A standby waits here for its job. ns-init reads the launch spec from agentd itself (one
    // process less between agentd and the agent) and passes it on; this side only has to give
    // ns-init the normal priority in time, which it does as soon as ns-init is set up or the
    // job arrives, whichever is first.
    wait_prepared_or_job(&prepared_r);
    let raised = normal_priority(init);
    if raised.is_ok() {
        let _ = nix::unistd::write(&raised_w, &[1]);
    }
    drop((prepared_r, raised_w));
    let spec = read_to_end(spec_r).map_err(|e| abandon(format!("cannot read the job: {e}")))?;
    if spec.is_empty() {
        // No job (agentd closed the channel: exit 0), or ns-init failed (it said why on stderr).
        return Ok(reap_blocking(init).unwrap_or(End::Code(SETUP_FAILED)));
    }
    raised.map_err(abandon)?;
    let notices = notice_channel().map_err(abandon)?;
    let jail = match decode_jail(&spec) {
        Ok(Some(jail)) => jail,
        Ok(None) => {
            return Err(abandon(
                "the launch spec of a jailed job has no jail".into(),
            ));
        }
        Err(e) => return Err(abandon(e)),
    };
    if let Err(e) = limit(cgroup.as_ref(), &jail) {
        return Err(abandon(e));
    }
    // The job's /tmp, held open so that its fill level can still be read after the job ended.
    // Nothing when ns-init failed (it said why on stderr, and its exit is the job's).
    let entered = matches!(read(&ready_r, &mut [0u8; 1]), Ok(1));
    let tmp = entered
        .then(|| std::fs::File::open(format!("/proc/{init}/root/tmp")).ok())
        .flatten();
    drop(ready_r);

    // Writes into /tmp raise SIGIO, so a /tmp filled and emptied between two ticks is seen too;
    // so does ns-init's word that the tree is gone.
    let tmp_writes = watch_writes(init);
    // Best effort: without the signal the word is read once ns-init is reaped.
    let _ = signal_when_readable(&status_r);
    let mut watch = watch::Watch::new(cgroup, jail, tmp, Some(notices));
    tick(watch::TICK);
    // Only now may the agent start: with the watch in place before its first write, a /tmp it
    // fills and empties at once is seen too.
    if entered {
        nix::unistd::write(&limited_w, &[1])
            .map_err(|e| abandon(format!("cannot hand over the job: {e}")))?;
    }
    drop(limited_w);
    let mut announced = None;
    let end = wait_for(init, handled, |sig| match sig {
        Signal::SIGUSR1 => Some(kill_tree(init)),
        Signal::SIGIO => {
            if let Some(w) = &tmp_writes {
                while w.read_events().is_ok_and(|e| !e.is_empty()) {}
            }
            if announced.is_none() {
                watch.tmp_written();
                if let Some(end) = read_status(&status_r) {
                    announce(&mut watch, end);
                    announced = Some(end);
                }
            }
            None
        }
        Signal::SIGALRM => match watch.tick() {
            watch::Verdict::Stop => Some(kill_tree(init)),
            watch::Verdict::Continue => None,
        },
        _ => {
            let _ = kill(init, sig);
            None
        }
    });
    drop(life_w);
    let end = match announced {
        Some(end) => end,
        None => {
            // Without the signal (or when the tree was killed), the word is read once ns-init is
            // reaped.
            let end = read_status(&status_r).unwrap_or(end);
            announce(&mut watch, end);
            end
        }
    };
    watch.clean_up();
    Ok(end)
}

/// The tree is gone (ns-init has reaped everything but itself and closed its output): the last
/// look at the limits, then agentd is told how the agent ended and given its output's end, so
/// the job finishes now and not after the namespaces' and the cgroup's teardown (tens of ms, much
/// more on a busy host), which follows.
fn announce(watch: &mut watch::Watch, end: End) {
    tick(std::time::Duration::ZERO);
    watch.finish(end == End::Signal(Signal::SIGKILL));
    super::tree_gone(end);
    watch.ended(end.tree_end());
}

/// Blocks until ns-init says it is set up (or is gone) or the launch spec (or EOF) arrives on
/// stdin, the channel ns-init reads it from.
fn wait_prepared_or_job(prepared: &OwnedFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let mut fds = [
        PollFd::new(prepared.as_fd(), PollFlags::POLLIN),
        PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
    ];
    while matches!(poll(&mut fds, PollTimeout::NONE), Err(Errno::EINTR)) {}
}

/// ns-init's 8-byte word of how the agent ended, once it is there.
fn read_status(status_r: &OwnedFd) -> Option<End> {
    let mut buf = [0u8; 8];
    match read(status_r, &mut buf) {
        Ok(8) => End::decode(buf),
        _ => None,
    }
}

/// Asks for SIGIO to this process when `fd` (made non-blocking) becomes readable; false when the
/// kernel refused.
fn signal_when_readable(fd: impl std::os::fd::AsFd) -> bool {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd());
    // SAFETY: fcntl on a descriptor the caller holds, with integer arguments only.
    unsafe {
        libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) == 0
            && libc::fcntl(fd, libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK) == 0
    }
}

/// Puts ns-init (and so the agent it forks) back at the normal priority. A standby is set up at
/// SCHED_IDLE, which ns-init inherits; inside its user namespace it lacks the host's CAP_SYS_NICE
/// and cannot leave SCHED_IDLE itself, so the supervisor, still on the host's side, does it. An
/// agent left at SCHED_IDLE only runs when a core is otherwise idle: on a busy host it starves.
fn normal_priority(init: Pid) -> Result<(), String> {
    let set = crate::runner::standby::set_policy(init.as_raw(), libc::SCHED_OTHER);
    // SAFETY: sched_getscheduler only reads the policy of the given pid.
    let policy = unsafe { libc::sched_getscheduler(init.as_raw()) };
    match set {
        Ok(()) => Ok(()),
        Err(_) if policy != libc::SCHED_IDLE && policy >= 0 => Ok(()),
        Err(e) => Err(format!("cannot give the job the normal priority: {e}")),
    }
}

/// An inotify watch on the job's `/tmp` that signals SIGIO to this process when it has events.
fn watch_writes(init: Pid) -> Option<nix::sys::inotify::Inotify> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    ino.add_watch(
        format!("/proc/{init}/root/tmp").as_str(),
        AddWatchFlags::IN_MODIFY,
    )
    .ok()?;
    signal_when_readable(&ino).then_some(ino)
}

/// Kills ns-init, which takes the whole PID namespace with it, and waits until it is gone.
fn kill_tree(init: Pid) -> End {
    let _ = kill(init, Signal::SIGKILL);
    reap_blocking(init);
    End::Signal(Signal::SIGKILL)
}

/// Maps the agent's [`INSIDE_ID`] to its host ids. As root, inside root stays host root (ns-init
/// needs to reach agentd's files to bind them; it has no capability on the host); unprivileged,
/// only agentd's own ids can be mapped, and `setgroups` must be denied first.
fn write_id_maps(init: Pid, shape: &Shape) -> Result<(), String> {
    let write = |file: &str, text: String| {
        let path = format!("/proc/{init}/{file}");
        std::fs::write(&path, text).map_err(|e| format!("cannot write {path}: {e}"))
    };
    match shape.host_ids {
        Some((uid, gid)) => {
            write("uid_map", format!("0 0 1\n{INSIDE_ID} {uid} 1\n"))?;
            write("gid_map", format!("0 0 1\n{INSIDE_ID} {gid} 1\n"))
        }
        None => {
            write("setgroups", "deny".into())?;
            write("uid_map", format!("{INSIDE_ID} {} 1\n", Uid::current()))?;
            write("gid_map", format!("{INSIDE_ID} {} 1\n", Gid::current()))
        }
    }
}

/// Stdin is a socket whose other end agentd reads notices from: keep it as a file, and give
/// stdin `/dev/null` for everything started from here.
fn notice_channel() -> Result<std::fs::File, String> {
    let channel = nix::unistd::dup(std::io::stdin())
        .map_err(|e| format!("cannot keep the notice channel: {e}"))?;
    let _ = nix::fcntl::fcntl(
        &channel,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let null =
        std::fs::File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("cannot redirect stdin: {e}"))?;
    Ok(std::fs::File::from(channel))
}

/// The job's cgroup, named after its run token, with ns-init in it (no limits yet).
fn job_cgroup(
    parent: Option<&str>,
    token: &str,
    init: Pid,
) -> Result<Option<jail::cgroup::JobCgroup>, String> {
    let Some(parent) = parent else {
        return Ok(None);
    };
    let cg = jail::cgroup::JobCgroup::create(parent, token, &jail::cgroup::Limits::default())?;
    cg.attach(init.as_raw())?;
    Ok(Some(cg))
}

/// Sets the job's limits on its cgroup; a job that asks for limits without one fails closed.
fn limit(cgroup: Option<&jail::cgroup::JobCgroup>, jail: &JailSpec) -> Result<(), String> {
    let limits = jail::cgroup::Limits {
        memory_bytes: jail.limits.memory_bytes,
        max_pids: jail.limits.max_pids,
        cpu_millis: jail.limits.cpu_millis,
    };
    match cgroup {
        Some(cg) => cg.apply(&limits),
        None if limits == jail::cgroup::Limits::default() => Ok(()),
        None => Err("the job has resource limits but its jail has no cgroup".into()),
    }
}

/// Arms (or, with zero, disarms) the SIGALRM tick of the limit watch.
fn tick(every: std::time::Duration) {
    let tv = libc::timeval {
        tv_sec: every.as_secs() as libc::time_t,
        tv_usec: every.subsec_micros() as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: setitimer reads `timer` and writes nothing back (null old value).
    unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
}

/// ns-init's ends of the pipes to the supervisor.
struct InitPipes {
    life_r: OwnedFd,
    status_w: OwnedFd,
    go_r: OwnedFd,
    prepared_w: OwnedFd,
    raised_r: OwnedFd,
    spec_w: OwnedFd,
    limited_r: OwnedFd,
    ready_w: OwnedFd,
}

/// ns-init: builds the jail and runs the agent in it. Never returns.
fn ns_init(shape: Shape, root: &Path, pipes: InitPipes) -> ! {
    let InitPipes {
        life_r,
        status_w,
        go_r,
        prepared_w,
        raised_r,
        spec_w,
        limited_r,
        ready_w,
    } = pipes;
    let fail = |msg: String| -> ! {
        let _ = writeln!(std::io::stderr(), "agentd: jail: {msg}");
        _exit(SETUP_FAILED)
    };
    if prctl::set_pdeathsig(Signal::SIGKILL).is_err() {
        _exit(SETUP_FAILED);
    }
    if !matches!(read(&life_r, &mut [0u8; 1]), Err(Errno::EAGAIN)) {
        _exit(SETUP_FAILED);
    }
    // The channel from agentd: the launch spec comes in on it, then it is the supervisor's
    // notice channel, never the job's (kept close-on-exec, closed once the spec is read).
    let job_in = nix::unistd::dup(std::io::stdin())
        .ok()
        .filter(|fd| {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .is_ok()
        })
        .unwrap_or_else(|| fail("cannot keep the job's channel".into()));
    match std::fs::File::open("/dev/null") {
        Ok(null) if nix::unistd::dup2_stdin(&null).is_ok() => {}
        _ => fail("cannot redirect stdin".into()),
    }
    if !matches!(read(&go_r, &mut [0u8; 1]), Ok(1)) {
        _exit(SETUP_FAILED);
    }
    drop(go_r);
    // Nothing inside may attach to this process, which holds the namespace's capabilities. Only
    // now: a non-dumpable process's /proc files belong to root, and an unprivileged supervisor
    // had to write its id maps there first.
    let _ = prctl::set_dumpable(false);
    let mut jail_root = fs::prepare(root).unwrap_or_else(|e| fail(e));
    if matches!(shape.network, Network::None | Network::Gateway) {
        fs::loopback_up().unwrap_or_else(|e| fail(e));
    }
    let _ = nix::unistd::sethostname("agentd");
    // Compiled ahead of the job, like the rest of the standby's set-up.
    let filters = seccomp::filters().unwrap_or_else(|e| fail(e));
    let _ = nix::unistd::write(&prepared_w, &[1]);
    drop(prepared_w);
    // Forked at the normal priority (EOF instead: the supervisor could not raise it and gives
    // the job up when it comes).
    let _ = read(&raised_r, &mut [0u8; 1]);
    drop(raised_r);
    // EOF once the agent exec'd (or died trying).
    let (execed_r, execed_w) =
        pipe2(OFlag::O_CLOEXEC).unwrap_or_else(|e| fail(format!("pipe: {e}")));
    let (ahead, waiting) = super::ahead_pipes().unwrap_or_else(|e| fail(e));
    let agent_pid = match super::fork_or_err() {
        Ok(ForkResult::Child) => {
            // Nothing of the job's hand-over may stay open here: the supervisor reads the spec
            // to its EOF, and the runner's channel becomes the supervisor's.
            drop((
                ahead, job_in, status_w, spec_w, limited_r, ready_w, execed_r,
            ));
            agent_ahead(waiting, shape, &filters)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(msg) => fail(msg),
    };
    drop((waiting, execed_w));

    let mut job_in = std::fs::File::from(job_in);
    let spec = super::read_framed(&mut job_in)
        .unwrap_or_else(|e| fail(format!("cannot read the job: {e}")));
    // The supervisor needs the job too (its limits and what to watch); it sets the limits while
    // this side builds the job's root.
    write_all(spec_w.as_fd(), &spec)
        .unwrap_or_else(|e| fail(format!("cannot pass the job on: {e}")));
    drop(spec_w);
    if spec.is_empty() {
        _exit(0);
    }
    let handed = ahead.hand(&spec).unwrap_or_else(|e| fail(e));
    let jail = match decode_jail(&spec) {
        Ok(Some(jail)) => jail,
        Ok(None) => fail("the job has no jail".into()),
        Err(e) => fail(e),
    };
    if !jail.bridges.is_empty() {
        crate::runner::bridge::spawn(&jail.bridges, |dir| jail_root.open_host_dir(dir))
            .unwrap_or_else(|e| fail(e));
    }
    fs::enter(&jail_root, &jail).unwrap_or_else(|e| fail(e));
    let _ = nix::unistd::write(&ready_w, &[1]);
    drop(ready_w);
    // The job's files (HOME's, its input) and its before-snapshot are agentd's to finish first:
    // the agent must not see the workspace before the snapshot of it, nor HOME half written, and
    // what is handed to the agent's id below must be all there is.
    let mut go = [0u8; 1];
    let told = loop {
        match job_in.read(&mut go) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => break read,
        }
    };
    if !matches!(told, Ok(1)) || go[0] != super::GO {
        _exit(SETUP_FAILED);
    }
    drop(job_in);
    if shape.host_ids.is_some() {
        // Files agentd wrote (uploads, the agent's config) belong to it; the agent's id must be
        // able to change them.
        if !jail.workspace_handed {
            give_to_agent(&jail.workspace);
        }
        give_to_agent(&jail.home);
    }
    // Not before the job's limits are set.
    if !matches!(read(&limited_r, &mut [0u8; 1]), Ok(1)) {
        _exit(SETUP_FAILED);
    }
    drop(limited_r);
    // A standby was set up at the idle priority; the supervisor has put ns-init back at the normal
    // one (see `normal_priority`), which the agent inherits.
    handed.start().unwrap_or_else(|e| fail(e));
    // The host tree's copy goes once the agent has exec'd (its copy is close-on-exec): closing
    // the last descriptor unmounts it, which is not the job's start to wait for.
    if let Some(host) = jail_root.take_host() {
        while matches!(read(&execed_r, &mut [0u8; 1]), Err(Errno::EINTR)) {}
        drop(host);
    }
    drop(execed_r);
    let _ = setpgid(agent_pid, agent_pid);
    let end = wait_for(agent_pid, &super::handled_signals(), |sig| {
        if matches!(sig, Signal::SIGTERM | Signal::SIGINT) {
            let _ = killpg(agent_pid, sig);
        }
        None
    });
    end_the_tree();
    let _ = nix::unistd::write(&status_w, &end.encode());
    _exit(0)
}

/// What the kernel would do when ns-init exits, done before: every other process of the
/// namespace killed and reaped, and ns-init's own copies of the output pipes closed. After this
/// nothing of the job can write to the workspace or the output, so the supervisor may report
/// the end at once instead of after the namespaces' teardown.
fn end_the_tree() {
    loop {
        // -1 from a namespace's init: every process of the namespace but init.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        match nix::sys::wait::waitpid(None, None) {
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

fn read_to_end(fd: OwnedFd) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Gives every file under `dir` not yet the agent's to [`INSIDE_ID`] (best effort: a file of an
/// id the namespace does not map stays as it is).
fn give_to_agent(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        let owned = entry
            .metadata()
            .is_ok_and(|m| m.uid() == INSIDE_ID && m.gid() == INSIDE_ID);
        if !owned {
            let _ = std::os::unix::fs::lchown(entry.path(), Some(INSIDE_ID), Some(INSIDE_ID));
        }
    }
}

/// The agent, forked ahead of its job (see [`super::ahead_pipes`]). What does not depend on the
/// job is done while the standby waits: it becomes [`INSIDE_ID`] with no capability,
/// `no_new_privs`, and installs the system-call filter (whose load alone took ~0.3 ms of the
/// job's start on the VMs of BENCHMARKS.md). Then it decodes the launch spec while ns-init
/// prepares the job and, once told, locks the writes to the job's paths and execs.
fn agent_ahead(waiting: super::Waiting, shape: Shape, filters: &seccomp::Filters) -> ! {
    let fail = |msg: String| -> ! {
        let _ = writeln!(std::io::stderr(), "agentd: jail: {msg}");
        _exit(SETUP_FAILED)
    };
    drop_privileges(&shape).unwrap_or_else(|e| fail(e));
    prctl::set_no_new_privs().unwrap_or_else(|e| fail(format!("no_new_privs: {e}")));
    filters.apply().unwrap_or_else(|e| fail(e));
    let (agent, jail, writable) = waiting.job(|spec| match decode_spec(spec) {
        Ok((agent, Some(jail))) => {
            let writable: Vec<PathBuf> = [&jail.workspace, &jail.home]
                .into_iter()
                .cloned()
                .chain(jail.read_write.iter().cloned())
                .chain(writes::ALWAYS_WRITABLE.iter().map(PathBuf::from))
                .collect();
            (agent, jail, writable)
        }
        Ok((_, None)) => fail("the job has no jail".into()),
        Err(e) => fail(e),
    });
    exec_jailed(&agent, &jail, &writable)
}

/// The agent's side once its job's root is in place (unprivileged and filtered already): its
/// working directory and stdin, the file size cap, Landlock over the job's writable paths,
/// exec. Never returns.
fn exec_jailed(agent: &Agent, jail: &JailSpec, writable: &[PathBuf]) -> ! {
    let fail = |msg: String| -> ! {
        let _ = writeln!(std::io::stderr(), "agentd: jail: {msg}");
        _exit(SETUP_FAILED)
    };
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    enter_place(agent);
    if let Some(max) = jail.limits.workspace_bytes {
        // No single file beyond the workspace cap; the total is the supervisor's watch.
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE, max, max);
    }
    match writes::restrict(writable) {
        Ok(true) => {}
        // Fail closed where the kernel has Landlock but refused it.
        Ok(false) if writes::kernel_abi() == 0 => {}
        Ok(false) => fail("landlock is available but was not enforced".into()),
        Err(e) => fail(e),
    }
    exec_now(agent)
}

/// Becomes [`INSIDE_ID`] with no capability left in any set.
fn drop_privileges(shape: &Shape) -> Result<(), String> {
    let id = |e: Errno| format!("cannot drop privileges: {e}");
    if shape.host_ids.is_some() {
        nix::unistd::setgroups(&[]).map_err(id)?;
    }
    let gid = Gid::from_raw(INSIDE_ID);
    let uid = Uid::from_raw(INSIDE_ID);
    // The bounding set first: dropping it needs CAP_SETPCAP, which the uid change takes away.
    for cap in 0..=63 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number; unknown ones fail with EINVAL.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        // Capabilities are numbered without gaps: past the kernel's last one, none is left (a
        // syscall each on the job's start otherwise).
        if rc != 0 && Errno::last() == Errno::EINVAL {
            break;
        }
    }
    // SAFETY: clears the ambient set; takes no pointers.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    nix::unistd::setresgid(gid, gid, gid).map_err(id)?;
    nix::unistd::setresuid(uid, uid, uid).map_err(id)?;
    // Unprivileged, the uid was INSIDE_ID all along and the change above kept the capabilities of
    // the namespace's creator: clear them explicitly.
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data structs, all initialized and alive.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(id(Errno::last()));
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
