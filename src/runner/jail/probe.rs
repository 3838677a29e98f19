//! What the host offers the jail, asked of the kernel in a process of its own (the supervisor
//! binary's `__jail-probe`, single-threaded, so it may fork and unshare): agentd reports it in
//! ServerInfo and refuses to start when a profile needs something missing.

use super::{cgroup, writes};
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use serde::{Deserialize, Serialize};

/// `argv[1]` of the supervisor binary that prints [`HostSupport`] as JSON.
pub const SUBCOMMAND: &str = "__jail-probe";

/// The jail's building blocks the host offers to agentd's user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSupport {
    pub user_ns: bool,
    pub mount_ns: bool,
    pub pid_ns: bool,
    pub net_ns: bool,
    pub seccomp: bool,
    /// 0 when the kernel has no Landlock.
    pub landlock_abi: u32,
    /// `v1`, `v2`, or empty when no usable cgroup hierarchy was found.
    pub cgroup_version: String,
    /// Controllers agentd can use under its cgroup parent (`memory`, `pids`, `cpu`).
    pub cgroup_controllers: Vec<String>,
}

impl HostSupport {
    /// What the jail cannot do without, in words; empty when it has everything.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        for (ok, what) in [
            (self.user_ns, "user namespaces"),
            (self.mount_ns, "mount namespaces"),
            (self.pid_ns, "PID namespaces"),
            (self.seccomp, "seccomp"),
        ] {
            if !ok {
                missing.push(what);
            }
        }
        missing
    }
}

/// Probes in this process; call only from a single-threaded process.
#[allow(unsafe_code)]
pub fn run(cgroup_parent: &str) -> HostSupport {
    let user = CloneFlags::CLONE_NEWUSER;
    let cg = cgroup::probe(cgroup_parent);
    HostSupport {
        user_ns: try_unshare(user),
        mount_ns: try_unshare(user | CloneFlags::CLONE_NEWNS),
        pid_ns: try_unshare(user | CloneFlags::CLONE_NEWPID),
        net_ns: try_unshare(user | CloneFlags::CLONE_NEWNET),
        // SAFETY: PR_GET_SECCOMP only reads this process's mode.
        seccomp: unsafe { libc::prctl(libc::PR_GET_SECCOMP) } >= 0,
        landlock_abi: writes::kernel_abi(),
        cgroup_version: match cg.version {
            Some(cgroup::Version::V1) => "v1".into(),
            Some(cgroup::Version::V2) => "v2".into(),
            None => String::new(),
        },
        cgroup_controllers: cg.controllers,
    }
}

/// Whether a child may unshare `flags` (the child exits at once; this process is unchanged).
#[allow(unsafe_code)]
fn try_unshare(flags: CloneFlags) -> bool {
    // SAFETY: called from a single-threaded process; the child only unshares and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = if unshare(flags).is_ok() { 0 } else { 1 };
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            matches!(waitpid(child, None), Ok(WaitStatus::Exited(_, 0)))
        }
        Err(_) => false,
    }
}

/// The probe's entry point: prints the JSON on stdout.
pub fn main(args: &[String]) -> i32 {
    let parent = args.first().map(String::as_str).unwrap_or("agentd");
    match serde_json::to_string(&run(parent)) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            eprintln!("agentd: probe: {e}");
            1
        }
    }
}
