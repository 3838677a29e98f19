//! The launcher: starts contained agents from a supervisor started ahead of time.
//!
//! Most of a job's start-up cost that agentd adds is containment: spawning and exec'ing the
//! supervisor, the PID and mount namespaces with their `/proc`, the run record (≈ 2 ms on these
//! machines, BENCHMARKS.md). None of it depends on the job, so the launcher keeps a *standby*
//! supervisor that has done all of it and waits on its stdin for the launch spec
//! ([`supervise::encode_spec`]). A job start then costs writing the spec to a pipe and one fork
//! inside the namespace. Each standby taken is replaced in the background; when none is ready
//! (a burst of starts, or standbys turned off), a supervisor is started for the job as before,
//! with the same result.
//!
//! The set-up runs at the idle CPU priority (SCHED_IDLE) where agentd may raise it back afterwards:
//! a replacement is started while the job that took the last standby is starting, and on two
//! cores it would otherwise compete with that job's agent for the CPU. The runner restores the
//! supervisor's priority when it hands it a job, ns-init its own once the spec arrived, so the
//! agent never runs at the idle priority.
//!
//! A standby runs with an environment holding only agentd's own markers; the agent's environment
//! (secrets included) exists only in the spec it reads and in the agent itself. Standbys are
//! started, like every supervisor, from tokio worker threads (see [`Process::spawn`] on
//! `PR_SET_PDEATHSIG`), die with agentd, and are SIGKILLed and swept (their run record removed)
//! when the launcher closes.

use super::{Leftovers, Process, ProcessSpec, records, supervise, validate};
use crate::error::{Error, Result};
use nix::unistd::getpid;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

/// Starts agents, from a standby supervisor when one is ready.
pub struct Launcher {
    supervisor: PathBuf,
    run_dir: Option<PathBuf>,
    /// Standbys to keep ready; 0 starts a supervisor per job.
    keep: usize,
    /// Standbys use the fallback containment ([`supervise::NO_NS_ENV`]).
    fallback: bool,
    /// Whether standbys set up at the idle CPU priority (see [`idle_priority_is_reversible`]).
    idle_setup: bool,
    state: Mutex<State>,
}

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
}

/// A supervisor that set up its containment and waits for a launch spec.
struct Standby {
    child: Child,
    pid: i32,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
    leftovers: Leftovers,
}

impl Launcher {
    /// A launcher keeping `keep` standbys run from `supervisor`, recording their trees in
    /// `run_dir`, in the fallback containment when `fallback` is set (specs then need
    /// [`supervise::NO_NS_ENV`] to use them; see [`Launcher::spawn`]). Standbys are started on
    /// first use; call [`Launcher::warm`] to have them ready earlier.
    pub fn new(
        supervisor: PathBuf,
        run_dir: Option<PathBuf>,
        keep: usize,
        fallback: bool,
    ) -> Arc<Launcher> {
        Arc::new(Launcher {
            supervisor,
            run_dir,
            keep,
            fallback,
            idle_setup: idle_priority_is_reversible(),
            state: Mutex::new(State::default()),
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
        let missing = {
            let mut st = self.state();
            if st.closed {
                return;
            }
            let missing = self.keep.saturating_sub(st.ready.len() + st.starting);
            st.starting += missing;
            missing
        };
        for _ in 0..missing {
            let me = Arc::clone(self);
            // A worker thread, not a blocking one: the supervisor dies with the thread that
            // spawned it.
            tokio::spawn(async move {
                let started = me.start_standby();
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

    /// Spawns the agent of `spec`: through a standby when one is ready and fits, else by starting
    /// a supervisor for it ([`Process::spawn`]). A standby fits when `spec` names this launcher's
    /// supervisor and run dir and asks for the fallback containment ([`supervise::NO_NS_ENV`] in
    /// its environment or agentd's) exactly when the standbys use it. Errors as
    /// [`Process::spawn`].
    pub async fn spawn(self: &Arc<Self>, spec: ProcessSpec) -> Result<Process> {
        validate(&spec)?;
        let wants_fallback = super::fallback_forced()
            || spec
                .env
                .iter()
                .any(|(k, v)| k == supervise::NO_NS_ENV && v == "1");
        let fits = spec.supervisor == self.supervisor
            && spec.run_dir == self.run_dir
            && wants_fallback == self.fallback;
        let standby = if fits { self.take() } else { None };
        let spawned = match standby {
            Some(standby) => {
                let pid = standby.pid;
                match standby.launch(&spec).await {
                    Ok(process) => Ok(process),
                    // It died meanwhile (killed from outside): start one for this job instead.
                    Err(e) => {
                        tracing::warn!(pid, error = %e, "standby supervisor unusable");
                        Process::spawn(spec)
                    }
                }
            }
            None => Process::spawn(spec),
        };
        // Only now: the replacement's spawn would otherwise delay this job's own start.
        self.warm();
        spawned
    }

    /// A ready standby that is still alive.
    fn take(&self) -> Option<Standby> {
        let mut st = self.state();
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

    fn start_standby(&self) -> Result<Standby> {
        let token = records::new_token();
        let mut cmd = tokio::process::Command::new(&self.supervisor);
        cmd.arg(supervise::STANDBY_SUBCOMMAND)
            .env_clear()
            .env(records::RUN_TOKEN_ENV, &token)
            .env(supervise::PARENT_ENV, getpid().to_string());
        if let Some(dir) = &self.run_dir {
            cmd.env(records::RUN_DIR_ENV, dir);
        }
        if self.fallback {
            cmd.env(supervise::NO_NS_ENV, "1");
        }
        cmd.current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            Error::internal(format!(
                "cannot start the agent supervisor {:?}: {e}",
                self.supervisor
            ))
        })?;
        let leftovers = Leftovers {
            run_dir: self.run_dir.clone(),
            token,
        };
        let (Some(pid), Some(stdin), Some(stdout), Some(stderr)) = (
            child.id(),
            child.stdin.take(),
            child.stdout.take(),
            child.stderr.take(),
        ) else {
            return Err(Error::internal("supervisor started without its pipes"));
        };
        let pid = i32::try_from(pid)
            .map_err(|_| Error::internal(format!("supervisor pid {pid} out of range")))?;
        // Its set-up (exec, namespaces, /proc) is background work: at the idle priority it only
        // takes CPU that jobs starting meanwhile do not want. What it forks before this lands
        // keeps the normal priority, which is harmless.
        if self.idle_setup && set_policy(pid, libc::SCHED_IDLE).is_err() {
            tracing::debug!(pid, "cannot lower a standby supervisor's priority");
        }
        Ok(Standby {
            child,
            pid,
            stdin,
            stdout,
            stderr,
            leftovers,
        })
    }
}

impl Standby {
    /// Hands the job to the standby. The spec is written whole and stdin closed, which tells the
    /// supervisor it is complete.
    async fn launch(mut self, spec: &ProcessSpec) -> Result<Process> {
        // Back to the normal priority before it forks the agent (in the fallback mode) and while
        // it forwards signals; ns-init restores its own once it has the spec.
        set_policy(self.pid, libc::SCHED_OTHER).map_err(|e| {
            Error::internal(format!(
                "cannot restore the standby supervisor's priority: {e}"
            ))
        })?;
        // The supervisor's own markers are not the agent's business (as `Agent::new` filters them).
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            .filter(|(k, _)| k != supervise::NO_NS_ENV)
            .cloned()
            .collect();
        env.push((
            records::RUN_TOKEN_ENV.to_owned(),
            self.leftovers.token.clone(),
        ));
        let bytes = supervise::encode_spec(&spec.program, &spec.args, &env, &spec.cwd);
        let written = async {
            self.stdin.write_all(&bytes).await?;
            self.stdin.shutdown().await
        }
        .await;
        written.map_err(|e| {
            Error::internal(format!(
                "cannot hand the job to the standby supervisor: {e}"
            ))
        })?;
        drop(self.stdin);
        Ok(Process {
            child: self.child,
            pid: self.pid,
            stdout: self.stdout,
            stderr: self.stderr,
            max_line_bytes: spec.max_line_bytes,
            leftovers: self.leftovers,
            from_standby: true,
        })
    }
}

/// Sets the scheduling policy of process `pid` (its only thread: supervisors are single-threaded;
/// 0 is the calling thread).
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
