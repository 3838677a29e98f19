//! agentd runs CLI coding agents (Claude Code, operator-defined commands, …) as subprocesses in
//! per-session workspaces and streams what they do over gRPC.
//!
//! # Map of the modules
//! Data flows one way, top to bottom; a module only imports the ones below it.
//! ```text
//! main.rs        parse config, init tracing, run (and the hidden `supervise` entry of the runner)
//! bin/           agentd-supervise (the runner's supervisor alone: execs fast); the bench (#8) is
//!                its own crate, crates/agentd-bench
//! cli/           the client subcommands (run, sessions, jobs, files, agents) over the generated clients
//! config         clap + TOML configuration, validated once; secrets redacted when printed
//! server         mounts services, health, reflection, auth; transport (TLS, gRPC-Web); serves
//! console        the web console: its built pages embedded, served for GETs beside the gRPC services
//! health         store probes behind grpc.health (a read and a write, each on its own schedule;
//!                NOT_SERVING after N consecutive failures); the queued-jobs gauge
//! telemetry      Prometheus metrics + listener; per-RPC span, request id and metrics; traceparent
//! shutdown       CancellationToken + TaskTracker, and the fixed drain order
//! auth           API keys → tenants (constant-time comparison)
//! api/           the only place that knows tonic and prost: convert, call the core, map errors
//! core/          the use cases: sessions, jobs (submit, cancel), run/ (one job, as steps), files,
//!                TTL reaper; dispatch claims
//!                jobs under leases so several replicas can share one store
//!                core/tenant_watch: WatchJobs and WaitJob over each tenant's change sequence (#19)
//!                core/adopt: at start, jobs a previous agentd left running are adopted (#23)
//! webhooks/      signed job notifications from a durable outbox in the store, the SSRF guard
//!                and WebhookService's use cases (issue #19)
//! gateway/       the model gateway: per-job tokens, forwarding to each profile's upstream with the
//!                real key, metering every answer, the usage ledger rows, budgets (issue #16)
//! events         the event log: seq assignment, batched appends to the store, wake-ups, replay+tail
//! presets/       job presets (strict `{{var}}` templates, overridable fields) and the operator's
//!                catalogs of MCP servers, Claude subagents and skills; the SIGHUP-swapped catalog
//! agents/        one adapter per agent kind: job → argv/env/config files; stdout lines → events
//! runner/        spawns an agent contained in a supervisor (kept on standby ahead of jobs), pumps
//!                its output, cancels whole trees; runner/jail/ is the sandbox every job runs in
//!                (namespaces, assembled root, Landlock, seccomp, cgroups, the limit watch)
//!                runner/journal is the spool format of supervisors that outlive agentd (#23),
//!                supervise/spool their side of adoption, runner/adopt agentd's (claims, the
//!                agentd-adopt/1 handshake, replaying a journal); core/adopt takes the jobs over
//! workspace/     per-session directories; safe path resolution; uploads, downloads, diffs
//! store/         the `Store` trait (sessions, jobs, events, claims and leases, each tenant's job
//!                change sequence); SQLite and Postgres
//! domain/        plain types with no I/O: ids, sessions, job specs and state machine, events
//! error          the one error enum with stable reason codes (mapped to gRPC in api::status)
//! ```
//!
//! Unsafe code is denied here; the few functions that call the kernel directly (fork, prctl,
//! pidfds, capabilities) allow it locally, each block with a SAFETY comment, and so does
//! `runner::supervise`, whose work between fork and exec is nothing else. ARCHITECTURE.md is the
//! longer map.

#![deny(unsafe_code)]

pub mod agents;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod core;
pub mod domain;
pub mod error;
pub mod events;
pub mod gateway;
pub mod health;
pub mod presets;
pub mod runner;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod webhooks;
pub mod workspace;

/// Generated protobuf and gRPC code for `agentd.v1`. Only `api` and tests should touch it.
pub mod pb {
    tonic::include_proto!("agentd.v1");
    pub use crate::api::wire::StreamJobEventsResponse;

    /// Encoded file descriptor set of the agentd.v1 protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("agentd_descriptor");
}
