//! The per-job containment supervisor as a small executable of its own. agentd prefers it when it
//! sits next to the agentd binary: the supervisor is exec'ed once per job, and this binary, holding
//! only `runner::supervise`, loads in about half the page faults of the whole server (measured
//! here: ~1 ms less per job; see BENCHMARKS.md). Without it agentd re-executes itself as
//! `agentd __supervise`, which behaves the same.
//!
//! Usage (by the runner): `agentd-supervise __supervise <settings> -- <program> <args...>`, or
//! `agentd-supervise __supervise-standby <settings>` with the launch spec to come on stdin
//! (`runner::supervise::settings`).

#![deny(unsafe_code)]

use agentd::runner::supervise;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // The runner passes the same argv to either executable; a bare program is `__supervise`'s.
    let code = supervise::dispatch(&args).unwrap_or_else(|| supervise::main(&args));
    std::process::exit(code);
}
