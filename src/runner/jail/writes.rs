//! Landlock as the jail's second layer: after the mount namespace decided what exists, Landlock
//! decides where the agent may write (create, remove, rename, truncate, write, ioctl devices):
//! beneath the read-write paths only. A kernel without Landlock (ABI 0) or an older ABI is
//! handled by the crate's best-effort mode; the probe reports the ABI (ServerInfo).

use landlock::{
    ABI, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, path_beneath_rules,
};
use std::path::Path;

/// The newest ABI this code knows how to use; older kernels get what they support.
const TARGET_ABI: ABI = ABI::V5;

/// Paths every jail may write besides the job's own.
pub const ALWAYS_WRITABLE: &[&str] = &[
    "/tmp",
    "/dev/shm",
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/pts",
];

/// Restricts the calling thread (and what it execs) to writing beneath `writable`. Returns
/// whether the kernel enforced it at all. Needs `no_new_privs` first.
pub fn restrict<P: AsRef<Path>>(writable: &[P]) -> Result<bool, String> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_write(TARGET_ABI))
        .and_then(|r| r.create())
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                writable.iter().map(AsRef::as_ref),
                AccessFs::from_write(TARGET_ABI),
            ))
        })
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("landlock: {e}"))?;
    Ok(status.ruleset != RulesetStatus::NotEnforced)
}

/// The kernel's Landlock ABI version (0: none), asked of the kernel itself since
/// `/sys/kernel/security` is often not mounted.
#[allow(unsafe_code)]
pub fn kernel_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute and size 0 this call only returns the ABI version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).unwrap_or(0)
}
