//! The jail: what a job's agent may see and do. Built by the supervisor between its fork and the
//! agent's exec (see [`super::supervise`]); nothing above the runner knows about the kernel.
//!
//! A jailed job gets, in this order:
//! - user, PID, mount, IPC and UTS namespaces (and a network namespace with only `lo` when its
//!   profile says `network = "none"`), created by ns-init's `clone`. The agent is uid/gid
//!   [`INSIDE_ID`] there, mapped to an unprivileged host uid ([`Shape::host_ids`] when agentd runs
//!   as root, agentd's own uid otherwise), so setuid binaries and file capabilities do nothing;
//! - a root assembled from bind mounts ([`fs`]): system directories read-only, its workspace and
//!   HOME read-write at the paths it already uses, a size-capped `/tmp`, a minimal `/dev`, its own
//!   `/proc`; then `pivot_root`, so nothing else of the host exists for it;
//! - Landlock ([`writes`]) as a second layer: writes only beneath the read-write paths;
//! - `no_new_privs`, every capability dropped, a seccomp filter ([`seccomp`]) refusing the calls
//!   that reach the kernel's less-audited parts or could undo the above, with `EPERM`;
//! - a cgroup ([`cgroup`]) bounding memory, processes and CPU, watched by the supervisor
//!   ([`watch`]), which reports each limit that was hit as a [`Notice`].
//!
//! The part that does not depend on the job (namespaces, the system part of the root, `/proc`,
//! `/dev`, the `pivot_root` where the kernel can clone mounts from a detached tree, the cgroup
//! and the move into it, the seccomp filter's compilation) is built by standby supervisors ahead
//! of time; a job pays for its own bind mounts, its limits, Landlock and the exec.

pub mod cgroup;
pub mod fs;
pub mod probe;
pub mod seccomp;
pub mod watch;
pub mod writes;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The uid and gid of the agent inside its user namespace.
pub const INSIDE_ID: u32 = 1000;

/// Which network a job has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network namespace.
    #[default]
    Host,
    /// A network namespace of its own with only loopback.
    None,
    /// A network namespace of its own whose only way out is agentd's model gateway, reached on
    /// a loopback port bridged to agentd's unix socket (`runner::bridge`).
    Gateway,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
            Network::Gateway => "gateway",
        }
    }
}

/// What a jail is made of before the job is known: every job of one shape can take a standby
/// built for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub network: Network,
    /// Host uid and gid the agent runs as when agentd is root; `None` maps it to agentd's own
    /// (the only mapping an unprivileged user namespace allows).
    pub host_ids: Option<(u32, u32)>,
    /// The cgroup parent the job's cgroup is created under, ahead of the job (moving a process
    /// into a v1 cgroup waits for an RCU grace period, ~10 ms here); `None`: no cgroup limits.
    pub cgroup_parent: Option<String>,
}

/// Resource limits of one job; `None` leaves a resource unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub max_pids: Option<u64>,
    pub cpu_millis: Option<u64>,
    /// Size of the private `/tmp`.
    pub tmp_bytes: u64,
    /// What the workspace may hold in all; also the largest file the agent may write.
    pub workspace_bytes: Option<u64>,
    /// How many files, directories and links the workspace and HOME may hold together: every
    /// one of them is an entry in the job's snapshots, held in agentd's memory.
    #[serde(default)]
    pub workspace_files: Option<u64>,
}

/// The job's part of the jail, sent with the launch spec. Every path is absolute and canonical
/// (the runner resolves them before the supervisor sees them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSpec {
    pub workspace: PathBuf,
    pub home: PathBuf,
    /// Host paths visible read-only at the same path (the agent's installation, the profile's
    /// `read_only`).
    pub read_only: Vec<PathBuf>,
    /// Host paths visible read-write at the same path (the profile's `read_write`).
    pub read_write: Vec<PathBuf>,
    /// Host paths that must not be visible even where a read-only directory contains them
    /// (agentd's config, binary, data dir).
    pub hide: Vec<PathBuf>,
    pub limits: Limits,
    /// Loopback ports of the job's own network namespace forwarded to unix sockets of agentd
    /// (`network = "gateway"`).
    #[serde(default)]
    pub bridges: Vec<Bridge>,
    /// Directories under `home` replaced, for the job, by a read-only view of operator files
    /// (Claude subagents and skills, #20).
    #[serde(default)]
    pub installs: Vec<Install>,
    /// agentd's before-snapshot gave the workspace to the agent's ids on its walk (agentd is
    /// root): only HOME is left for the jail to hand over.
    #[serde(default)]
    pub workspace_handed: bool,
}

/// A directory of the job's HOME that shows exactly `entries`, read-only: an empty read-only
/// tmpfs over it with each entry bind-mounted read-only. The agent can neither change these nor
/// add to them, and what it left in the directory is hidden for the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    /// An existing directory under `home` (agentd creates it beneath an fd first); refused when
    /// any component below `home` is a symlink.
    pub dir: PathBuf,
    /// File or directory names in `dir`, and the host paths shown there.
    pub entries: Vec<(String, PathBuf)>,
}

/// One loopback port inside the job's network namespace, forwarded to a unix socket outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    pub port: u16,
    /// An absolute host path; it need not be visible in the jail.
    pub socket: PathBuf,
}

/// A jail for one job: the shape a standby may have prepared, and the job's own part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    pub shape: Shape,
    pub spec: JailSpec,
}

/// What the supervisor tells agentd about a job's limits, one JSON object per line on the
/// channel it shares with the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// `memory`, `pids`, `tmp` or `workspace`.
    pub limit: String,
    /// What happened and what was done, for people.
    pub message: String,
    /// Set when the limit ended the job.
    #[serde(default)]
    pub fatal: bool,
}

/// How a jailed job's tree ended, told to agentd (`{"ended": …}` on the notice channel) as soon
/// as it is gone, ahead of the supervisor's own exit, which mirrors it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeEnd {
    Code(i32),
    Signal(i32),
}

/// One line on the notice channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Word {
    Notice(Notice),
    Ended { ended: TreeEnd },
}

impl Notice {
    pub fn new(limit: &str, message: String, fatal: bool) -> Notice {
        Notice {
            limit: limit.to_owned(),
            message,
            fatal,
        }
    }
}
