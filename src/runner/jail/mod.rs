//! The jail: what a job's agent may see and do. Built by the supervisor between its fork and the
//! agent's exec (see [`super::supervise`]); nothing above the runner knows about the kernel.
//!
//! - [`cgroup`]: per-job resource limits (memory, pids, CPU) on cgroup v1 or v2, and the
//!   counters that say when a limit was hit.

pub mod cgroup;
