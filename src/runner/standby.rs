//! The launcher: starts contained agents from a supervisor started ahead of time.
//!
//! Most of a job's start-up cost that agentd adds is containment: spawning and exec'ing the
//! supervisor, the PID and mount namespaces with their `/proc`, the run record (≈ 2 ms on these
//! machines, BENCHMARKS.md). None of it depends on the job, so the launcher keeps a *standby*
//! supervisor that has done all of it and waits on its stdin for the launch spec
//! ([`supervise::encode_spec`]). A job start then costs writing the spec to a pipe: even the
//! agent's process is forked ahead and waits for it. Each standby taken is replaced in the background; when none is ready
//! (a burst of starts, or standbys turned off), a supervisor is started for the job as before,
//! with the same result.
//!
//! The set-up runs at the idle CPU priority (SCHED_IDLE) where agentd may raise it back afterwards:
//! a replacement is started while the job that took the last standby is starting, and on two
//! cores it would otherwise compete with that job's agent for the CPU. The runner restores the
//! supervisor's priority when it hands it a job, ns-init its own once the spec arrived, so the
//! agent never runs at the idle priority.
//!
//! A standby runs with an environment holding only the run marker; the agent's environment
//! (secrets included) exists only in the spec it reads and in the agent itself. Standbys are
//! started, like every supervisor, from tokio worker threads (see [`Process::spawn`] on
//! `PR_SET_PDEATHSIG`), die with agentd, and are SIGKILLed and swept (their run record removed)
//! when the launcher closes.

use super::jail::Shape;
use super::{Leftovers, Process, ProcessSpec, Supervisor, records, supervise, validate};
use crate::error::{Error, Result};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStderr, ChildStdout};

/// Starts agents, from a standby supervisor when one is ready.
pub struct Launcher {
    /// Which supervisor every job gets, where it records, and how it contains: the one place
    /// these are decided.
    supervisor: Supervisor,
    /// Standbys to keep ready; 0 starts a supervisor per job.
    keep: usize,
    /// Whether standbys set up at the idle CPU priority (see [`idle_priority_is_reversible`]).
    idle_setup: bool,
    state: Mutex<State>,
}

/// The containment a standby was built for: a jail of a shape, or none.
type Kind = Option<Shape>;

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher")
            .field("supervisor", &self.supervisor)
            .field("keep", &self.keep)
            .field("ready", &self.ready())
            .finish()
    }
}

#[derive(Default)]
struct State {
    ready: Vec<Standby>,
    /// Standbys being started.
    starting: usize,
    closed: bool,
    /// What standbys are built for: the kind of the last job started (most jobs of a server
    /// share one).
    kind: Kind,
}

/// A supervisor that set up its containment and waits for a launch spec.
struct Standby {
    kind: Kind,
    child: Child,
    pid: i32,
    /// Its stdin: the launch spec goes in, notices come out.
    channel: tokio::net::UnixStream,
    stdout: ChildStdout,
    stderr: ChildStderr,
    leftovers: Leftovers,
}

impl Launcher {
    /// A launcher starting every job under `supervisor` and keeping `keep` of them on standby.
    /// Standbys are started on first use; call [`Launcher::warm`] to have them ready earlier.
    /// `jail` is the shape of the jail most jobs will want (the default profile's), `None` when
    /// they run unjailed.
    pub fn new(supervisor: Supervisor, keep: usize, jail: Option<Shape>) -> Arc<Launcher> {
        Arc::new(Launcher {
            supervisor,
            keep,
            idle_setup: idle_priority_is_reversible(),
            state: Mutex::new(State {
                kind: jail,
                ..State::default()
            }),
        })
    }

    /// Standbys ready now.
    pub fn ready(&self) -> usize {
        self.state().ready.len()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding it; the lists stay
        // valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts standbys in the background until `keep` are ready or starting. Must be called from
    /// within the tokio runtime.
    pub fn warm(self: &Arc<Self>) {
        let (missing, kind) = {
            let mut st = self.state();
            if st.closed {
                return;
            }
            let kind = st.kind.clone();
            let ready = st.ready.iter().filter(|s| s.kind == kind).count();
            let missing = self.keep.saturating_sub(ready + st.starting);
            st.starting += missing;
            (missing, kind)
        };
        for _ in 0..missing {
            let me = Arc::clone(self);
            let kind = kind.clone();
            // A worker thread, not a blocking one: the supervisor dies with the thread that
            // spawned it.
            tokio::spawn(async move {
                let started = me.start_standby(kind, me.idle_setup);
                let mut st = me.state();
                st.starting -= 1;
                match started {
                    Ok(standby) if !st.closed => st.ready.push(standby),
                    // Dropped outside the lock: killed and swept.
                    Ok(standby) => {
                        drop(st);
                        drop(standby);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot start a standby supervisor"),
                }
            });
        }
    }

    /// Spawns the agent of `spec` now: [`Launcher::spawn_when`] with nothing to wait for.
    pub async fn spawn(self: &Arc<Self>, spec: ProcessSpec) -> Result<Process> {
        self.spawn_when(spec, std::future::ready(Ok(()))).await?.0
    }

    /// Spawns the agent of `spec` once `ready` has completed: through a standby when one of its
    /// jail's shape is ready, else by starting a supervisor for it. A jailed standby gets the
    /// spec at once and builds the job's part of the jail while `ready` runs (the caller's last
    /// work before the agent may run: its files, the workspace's before-snapshot); its agent
    /// execs only once `ready` succeeded. Elsewhere the spec is handed over after `ready`.
    ///
    /// `Err`: `ready` failed, and nothing was started (a staged standby is killed). Otherwise
    /// `ready`'s value and the spawn's outcome, which errs as [`Process::spawn`].
    pub async fn spawn_when<T>(
        self: &Arc<Self>,
        spec: ProcessSpec,
        ready: impl Future<Output = Result<T>>,
    ) -> Result<(Result<Process>, T)> {
        if let Err(e) = validate(&spec) {
            return Ok((Err(e), ready.await?));
        }
        let launched = self.launch_when(spec, ready).await;
        // Only now: the replacement's spawn would otherwise delay this job's own start. Also when
        // `ready` failed: a standby it staged is gone.
        self.warm();
        launched
    }

    /// [`Launcher::spawn_when`] of a valid spec, without the refill.
    async fn launch_when<T>(
        &self,
        spec: ProcessSpec,
        ready: impl Future<Output = Result<T>>,
    ) -> Result<(Result<Process>, T)> {
        let kind = spec.jail.as_ref().map(|j| j.shape.clone());
        // Only a jailed standby builds anything from the spec while `ready` runs; others are
        // taken once it is done, so a failure leaves them waiting.
        let mut standby = match kind {
            Some(_) => match self.take(kind) {
                Some(standby) => standby,
                None => {
                    let value = ready.await?;
                    return Ok((self.spawn_fresh(spec).await, value));
                }
            },
            None => {
                let value = ready.await?;
                return Ok((self.spawn_now(self.take(kind), spec).await, value));
            }
        };
        let pid = standby.pid;
        let (staged, value) = tokio::join!(standby.stage(&spec), ready);
        // On failure the staged standby is dropped, which kills it: its agent never runs.
        let value = value?;
        let spawned = match staged {
            Ok(()) => standby.go(&spec).await,
            Err(e) => Err(e),
        };
        match spawned {
            Ok(process) => Ok((Ok(process), value)),
            // It died meanwhile (killed from outside): start one for this job instead.
            Err(e) => {
                tracing::warn!(pid, error = %e, "standby supervisor unusable");
                Ok((self.spawn_fresh(spec).await, value))
            }
        }
    }

    /// Spawns the agent of `spec` now, through `standby` when given.
    async fn spawn_now(&self, standby: Option<Standby>, spec: ProcessSpec) -> Result<Process> {
        let Some(standby) = standby else {
            return self.spawn_fresh(spec).await;
        };
        let pid = standby.pid;
        match standby.launch(&spec).await {
            Ok(process) => Ok(process),
            // It died meanwhile (killed from outside): start one for this job instead.
            Err(e) => {
                tracing::warn!(pid, error = %e, "standby supervisor unusable");
                self.spawn_fresh(spec).await
            }
        }
    }

    /// A supervisor started for this job alone: jailed jobs take their jail through the launch
    /// spec like a standby does, others as arguments.
    async fn spawn_fresh(&self, spec: ProcessSpec) -> Result<Process> {
        match &spec.jail {
            Some(jail) => {
                let standby = self.start_standby(Some(jail.shape.clone()), false)?;
                standby.launch(&spec).await
            }
            None => Process::spawn(&self.supervisor, spec),
        }
    }

    /// A ready standby of `kind` that is still alive; standbys of another kind are dropped
    /// (killed), since the next ones will be built for this kind.
    fn take(&self, kind: Kind) -> Option<Standby> {
        let mut st = self.state();
        if st.kind != kind {
            st.kind = kind;
            let stale: Vec<Standby> = std::mem::take(&mut st.ready);
            drop(st);
            drop(stale);
            return None;
        }
        while let Some(mut standby) = st.ready.pop() {
            if matches!(standby.child.try_wait(), Ok(None)) {
                return Some(standby);
            }
        }
        None
    }

    /// Stops keeping standbys and kills the ready ones (their records are swept). Part of the
    /// shutdown drain, after the last job started.
    pub fn close(&self) {
        let ready = {
            let mut st = self.state();
            st.closed = true;
            std::mem::take(&mut st.ready)
        };
        drop(ready);
    }

    fn start_standby(&self, kind: Kind, idle: bool) -> Result<Standby> {
        let token = records::new_token();
        let settings = self.supervisor.settings(kind.clone()).to_args();
        let mut cmd = tokio::process::Command::new(&self.supervisor.path);
        cmd.arg(supervise::STANDBY_SUBCOMMAND)
            .args(settings.map_err(Error::internal)?);
        // A socket rather than a pipe: the spec goes in, and the supervisor's notices come back.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .and_then(|(a, b)| {
                a.set_nonblocking(true)?;
                Ok((a, b))
            })
            .map_err(|e| Error::internal(format!("cannot create a socket pair: {e}")))?;
        let channel = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| Error::internal(format!("cannot register a socket: {e}")))?;
        cmd.env_clear().env(records::RUN_TOKEN_ENV, &token);
        cmd.current_dir("/")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            Error::internal(format!(
                "cannot start the agent supervisor {:?}: {e}",
                self.supervisor.path
            ))
        })?;
        let leftovers = Leftovers {
            run_dir: self.supervisor.run_dir.clone(),
            token,
            cgroup_parent: kind.as_ref().and_then(|s| s.cgroup_parent.clone()),
        };
        // The child holds its end now; ours must not keep it open.
        drop(cmd);
        let (Some(pid), Some(stdout), Some(stderr)) =
            (child.id(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Error::internal("supervisor started without its pipes"));
        };
        let pid = i32::try_from(pid)
            .map_err(|_| Error::internal(format!("supervisor pid {pid} out of range")))?;
        super::widen_stdout(&stdout);
        // Its set-up (exec, namespaces, /proc) is background work: at the idle priority it only
        // takes CPU that jobs starting meanwhile do not want. What it forks before this lands
        // keeps the normal priority, which is harmless.
        if idle && set_policy(pid, libc::SCHED_IDLE).is_err() {
            tracing::debug!(pid, "cannot lower a standby supervisor's priority");
        }
        Ok(Standby {
            kind,
            child,
            pid,
            channel,
            stdout,
            stderr,
            leftovers,
        })
    }
}

impl Standby {
    /// Hands the job to the standby at once: the spec, then the word to go.
    async fn launch(mut self, spec: &ProcessSpec) -> Result<Process> {
        self.stage(spec).await?;
        self.go(spec).await
    }

    /// Hands the standby the job's launch spec ([`supervise::frame_spec`]): a jailed one builds
    /// the job's part of the jail from it and waits for [`Standby::go`]; another starts the agent.
    async fn stage(&mut self, spec: &ProcessSpec) -> Result<()> {
        // Back to the normal priority before it forks the agent (in the fallback mode) and while
        // it forwards signals; ns-init restores its own once it has the spec. Every thread of it:
        // the spool thread (adoption) was started while it waited at the idle priority, and it
        // carries the agent's output to agentd for the whole job.
        set_process_policy(self.pid, libc::SCHED_OTHER).map_err(|e| {
            Error::internal(format!(
                "cannot restore the standby supervisor's priority: {e}"
            ))
        })?;
        // The stdin file is the spec's to say, not the job environment's.
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            .filter(|(k, _)| k != supervise::STDIN_FILE_ENV)
            .cloned()
            .chain(spec.stdin.env())
            .collect();
        env.push((
            records::RUN_TOKEN_ENV.to_owned(),
            self.leftovers.token.clone(),
        ));
        let bytes = supervise::frame_spec(&supervise::encode_spec(
            &spec.program,
            &spec.args,
            &env,
            &spec.cwd,
            spec.jail.as_ref().map(|j| &j.spec),
        ));
        self.channel.write_all(&bytes).await.map_err(|e| {
            Error::internal(format!(
                "cannot hand the job to the standby supervisor: {e}"
            ))
        })
    }

    /// Lets the staged job start (a jailed one's agent waits for [`supervise::GO`]); closing our
    /// side of the channel tells the supervisor nothing more comes.
    async fn go(mut self, spec: &ProcessSpec) -> Result<Process> {
        let go: &[u8] = if spec.jail.is_some() {
            &[supervise::GO]
        } else {
            &[]
        };
        let written = async {
            self.channel.write_all(go).await?;
            self.channel.shutdown().await
        }
        .await;
        written.map_err(|e| {
            Error::internal(format!(
                "cannot hand the job to the standby supervisor: {e}"
            ))
        })?;
        Ok(Process {
            child: self.child,
            pid: self.pid,
            stdout: self.stdout,
            stderr: self.stderr,
            max_line_bytes: spec.max_line_bytes,
            leftovers: self.leftovers,
            from_standby: true,
            notices: spec.jail.is_some().then_some(self.channel),
        })
    }
}

/// Sets the scheduling policy of every thread of process `pid`: its main thread first, so that a
/// thread it starts from then on inherits the policy, then each thread it had started before
/// (a policy belongs to a thread, and [`set_policy`] of the pid changes the main one only). A
/// thread that ended meanwhile is skipped. Reads `/proc/<pid>/task`, which costs a few
/// microseconds and never touches a disk, so it stays on the caller's thread.
fn set_process_policy(pid: i32, policy: libc::c_int) -> std::io::Result<()> {
    set_policy(pid, policy)?;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if tid == pid {
            continue;
        }
        match set_policy(tid, policy) {
            // Ended since the listing.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Sets the scheduling policy of thread `pid` (a process's pid names its main thread; 0 is the
/// calling thread).
#[allow(unsafe_code)]
pub(super) fn set_policy(pid: i32, policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads `param`, which lives across the call.
    if unsafe { libc::sched_setscheduler(pid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a process with agentd's credentials may leave SCHED_IDLE again (CAP_SYS_NICE, or a
/// high enough RLIMIT_NICE): tried once on a thread of its own, which ends with the test. Only
/// then do standbys set up at the idle priority, since they must return to the normal one.
fn idle_priority_is_reversible() -> bool {
    std::thread::spawn(|| {
        set_policy(0, libc::SCHED_IDLE).is_ok() && set_policy(0, libc::SCHED_OTHER).is_ok()
    })
    .join()
    .unwrap_or(false)
}
