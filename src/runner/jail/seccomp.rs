//! The jail's system-call filter: calls that could undo the jail (mounts, new namespaces, another
//! root), reach into other processes, or open the kernel's large and rarely-needed surfaces
//! (BPF, perf, keyrings, modules, io_uring) fail with `EPERM`; the process is never killed, so
//! tools that probe for a feature fall back as they would on a locked-down host.
//!
//! `clone3` passes its flags in memory a filter cannot read, so it fails with `ENOSYS`: libc then
//! falls back to `clone`, whose flags the filter checks.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;

/// Calls refused outright.
const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_clock_adjtime,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_pidfd_getfd,
];

/// `clone` flags that create namespaces.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// The two programs to install, in this order: the `EPERM` list, then the `ENOSYS` one.
pub struct Filters {
    pub deny: BpfProgram,
    pub nosys: BpfProgram,
}

/// Compiles the filters for this machine's architecture.
pub fn filters() -> Result<Filters, String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: unsupported architecture: {e}"))?;
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    // clone with any namespace flag; the flags are the first argument on x86_64 and aarch64.
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let bit = flag as u64;
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(bit), bit)
                .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("seccomp: {e}"))?;
    deny.insert(libc::SYS_clone, clone_rules);
    // Typing into the controlling terminal of whoever owns it.
    let tiocsti =
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::TIOCSTI)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| format!("seccomp: {e}"))?;
    deny.insert(libc::SYS_ioctl, vec![tiocsti]);
    let compile = |rules, errno: i32| -> Result<BpfProgram, String> {
        SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .and_then(BpfProgram::try_from)
        .map_err(|e| format!("seccomp: {e}"))
    };
    Ok(Filters {
        deny: compile(deny, libc::EPERM)?,
        nosys: compile(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            libc::ENOSYS,
        )?,
    })
}

impl Filters {
    /// Installs both on the calling thread (after `no_new_privs`; it is inherited across exec).
    pub fn apply(&self) -> Result<(), String> {
        seccompiler::apply_filter(&self.deny).map_err(|e| format!("seccomp: {e}"))?;
        seccompiler::apply_filter(&self.nosys).map_err(|e| format!("seccomp: {e}"))
    }
}

#[cfg(test)]
#[allow(unsafe_code)] // the test forks to try the refused calls in a filtered child
mod tests {
    use super::*;

    /// In a forked child: install the filters, then report what a few calls return.
    #[test]
    fn refuses_with_eperm_and_enosys_and_keeps_the_rest() {
        let filters = filters().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only makes raw system calls and writes to a pipe before _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let _ = nix::sys::prctl::set_no_new_privs();
                let code = match filters.apply() {
                    Err(_) => 1,
                    Ok(()) => {
                        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                        // SAFETY: plain system calls with harmless arguments.
                        let unshare = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
                        let unshare_errno = errno();
                        let clone3 = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
                        let clone3_errno = errno();
                        let bpf = unsafe { libc::syscall(libc::SYS_bpf, 0, 0usize, 0) };
                        let bpf_errno = errno();
                        let pid = unsafe { libc::getpid() };
                        let ok = unshare == -1
                            && unshare_errno == libc::EPERM
                            && clone3 == -1
                            && clone3_errno == libc::ENOSYS
                            && bpf == -1
                            && bpf_errno == libc::EPERM
                            && pid > 0
                            && std::fs::metadata("/").is_ok();
                        if ok { 0 } else { 2 }
                    }
                };
                let _ = nix::unistd::write(&w, &[code]);
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let mut buf = [9u8; 1];
                let _ = nix::unistd::read(&r, &mut buf);
                let _ = nix::sys::wait::waitpid(child, None);
                assert_eq!(
                    buf[0], 0,
                    "filter did not behave (1: not installed, 2: wrong results)"
                );
            }
        }
    }
}
