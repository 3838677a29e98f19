//! Configuration: command-line flags with environment fallbacks (clap) plus an optional TOML file
//! for agent profiles and API keys. Everything is validated once, here, into [`Config`]; nothing
//! else reads the environment or the file. `Display` prints the effective configuration with every
//! secret redacted.

mod catalog;
mod sandbox;
pub use catalog::reload as reload_catalog;
pub use sandbox::{Sandbox, SandboxConfig};

use crate::agents::{AgentKind, AgentProfile};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `agentd serve` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC (h2c).
    #[arg(long, env = "AGENTD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory for the database and the session workspaces.
    #[arg(long, env = "AGENTD_DATA_DIR", default_value = "./agentd-data")]
    pub data_dir: PathBuf,
    /// Where sessions, jobs and events are stored: `sqlite:///path/to/file.db` or
    /// `postgres://user@host/db` (shared by several replicas). Empty: `<data-dir>/agentd.db`.
    #[arg(
        long,
        env = "AGENTD_DATABASE_URL",
        default_value = "",
        hide_env_values = true
    )]
    pub store: String,
    /// Directory holding the session workspaces; replicas sharing a Postgres store must all mount
    /// the same one. Default: `<data-dir>/sessions`.
    #[arg(long, env = "AGENTD_WORKSPACE_ROOT")]
    pub workspace_root: Option<PathBuf>,
    /// This process's name among replicas (shown in the reason of jobs it loses). Default:
    /// `<hostname>-<pid>-<random>`, new at every start.
    #[arg(long, env = "AGENTD_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Seconds a replica's claim on a job lasts without renewal (renewed every third of it); a
    /// replica that dies loses its running jobs (FAILED) this long after its last renewal.
    #[arg(long, env = "AGENTD_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Optional TOML file with agent profiles, default agent and API keys.
    #[arg(long, env = "AGENTD_CONFIG")]
    pub config: Option<PathBuf>,
    /// API keys as comma-separated `tenant:key` pairs.
    #[arg(long, env = "AGENTD_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Serve without authentication, even on a non-loopback address (everyone is tenant `default`).
    #[arg(long, env = "AGENTD_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// The Claude Code executable for the built-in `claude` profile.
    #[arg(long, env = "AGENTD_CLAUDE_BIN", default_value = "claude")]
    pub claude_bin: String,
    /// Agent profile used when a job names none (overrides the config file's `default_agent`).
    #[arg(long, env = "AGENTD_DEFAULT_AGENT")]
    pub default_agent: Option<String>,
    /// Maximum number of jobs this replica runs at once across all sessions.
    #[arg(long, env = "AGENTD_MAX_CONCURRENT_JOBS", default_value_t = 8)]
    pub max_concurrent_jobs: usize,
    /// Maximum number of queued jobs per session.
    #[arg(
        long,
        env = "AGENTD_MAX_QUEUED_JOBS_PER_SESSION",
        default_value_t = 100
    )]
    pub max_queued_jobs_per_session: usize,
    /// Job timeout when a job asks for none, in seconds.
    #[arg(long, env = "AGENTD_JOB_TIMEOUT_DEFAULT", default_value_t = 1800)]
    pub job_timeout_default: u32,
    /// How long a permission request (permission_mode `ask`) waits for an answer before it is
    /// denied, when the job gives no permission_timeout_seconds; in seconds.
    #[arg(long, env = "AGENTD_PERMISSION_TIMEOUT_DEFAULT", default_value_t = 300)]
    pub permission_timeout_default: u32,
    /// Largest job timeout a job may ask for, in seconds.
    #[arg(long, env = "AGENTD_JOB_TIMEOUT_MAX", default_value_t = 7200)]
    pub job_timeout_max: u32,
    /// Session time to live when a session asks for none, in seconds.
    #[arg(long, env = "AGENTD_SESSION_TTL_DEFAULT", default_value_t = 3600)]
    pub session_ttl_default: u32,
    /// Largest session time to live a session may ask for, in seconds.
    #[arg(long, env = "AGENTD_SESSION_TTL_MAX", default_value_t = 7 * 24 * 3600)]
    pub session_ttl_max: u32,
    /// Maximum number of files in one session's workspace.
    #[arg(long, env = "AGENTD_MAX_FILES_PER_SESSION", default_value_t = 100_000)]
    pub max_files_per_session: u64,
    /// Maximum total bytes of one session's workspace.
    #[arg(long, env = "AGENTD_MAX_SESSION_BYTES", default_value_t = 8 << 30)]
    pub max_session_bytes: u64,
    /// Maximum size of one file.
    #[arg(long, env = "AGENTD_MAX_FILE_BYTES", default_value_t = 2 << 30)]
    pub max_file_bytes: u64,
    /// Most entries (files, directories, links) in one archive given to UploadArchive.
    #[arg(long, env = "AGENTD_ARCHIVE_MAX_ENTRIES", default_value_t = 100_000)]
    pub archive_max_entries: u64,
    /// Most bytes one archive given to UploadArchive may expand to.
    #[arg(long, env = "AGENTD_ARCHIVE_MAX_BYTES", default_value_t = 8 << 30)]
    pub archive_max_bytes: u64,
    /// Largest expansion (extracted bytes / archive bytes) accepted from UploadArchive once the
    /// archive has expanded past 1 MiB: a zip or gzip bomb is stopped long before it fills a disk.
    #[arg(long, env = "AGENTD_ARCHIVE_MAX_RATIO", default_value_t = 200)]
    pub archive_max_ratio: u64,
    /// Most bytes of agent output stored per job; beyond it a `truncated` event ends the log.
    #[arg(long, env = "AGENTD_JOB_OUTPUT_MAX_BYTES", default_value_t = 1 << 30)]
    pub job_output_max_bytes: u64,
    /// Most events stored per job; beyond it a `truncated` event ends the log.
    #[arg(
        long,
        env = "AGENTD_JOB_OUTPUT_MAX_EVENTS",
        default_value_t = 1_000_000
    )]
    pub job_output_max_events: u64,
    /// Seconds to keep the events of finished jobs (their final event is kept forever); 0 keeps
    /// everything. Streams resuming from a pruned cursor answer OUT_OF_RANGE.
    #[arg(long, env = "AGENTD_EVENT_RETENTION_SECONDS", default_value_t = 0)]
    pub event_retention_seconds: u64,
    /// Most queued plus running jobs per tenant; 0 means no limit.
    #[arg(long, env = "AGENTD_TENANT_MAX_ACTIVE_JOBS", default_value_t = 0)]
    pub tenant_max_active_jobs: usize,
    /// Most running jobs per tenant (across replicas); more wait queued; 0 means no limit.
    #[arg(long, env = "AGENTD_TENANT_MAX_RUNNING_JOBS", default_value_t = 0)]
    pub tenant_max_running_jobs: usize,
    /// Requests per second allowed per tenant (bursts of twice as many); 0 means no limit.
    #[arg(long, env = "AGENTD_TENANT_RATE_LIMIT", default_value_t = 0)]
    pub tenant_rate_limit: u32,
    /// Longest prompt a job may have, in bytes (it reaches the agent on stdin, not in argv).
    #[arg(long, env = "AGENTD_MAX_PROMPT_BYTES", default_value_t = 1 << 20)]
    pub max_prompt_bytes: usize,
    /// Seconds between SIGTERM and the forced kill of a job's process tree.
    #[arg(long, env = "AGENTD_KILL_GRACE_SECONDS", default_value_t = 5)]
    pub kill_grace_seconds: u64,
    /// Supervisors kept started ahead of time, each waiting for a job (its spawn, exec and
    /// namespace set-up then cost the job nothing); 0 starts one per job instead.
    #[arg(long, env = "AGENTD_STANDBY_SUPERVISORS", default_value_t = 1)]
    pub standby_supervisors: usize,
    /// How a job that runs unjailed is contained: `pid-namespace` (a PID namespace of its own,
    /// or the subreaper where the kernel refuses one) or `subreaper` (only the subreaper, which
    /// cannot reach a descendant that left the job's process group once the supervisor is
    /// SIGKILLed; for testing that mode).
    #[arg(long, env = "AGENTD_CONTAINMENT", value_enum, default_value_t)]
    pub containment: crate::runner::Containment,
    /// Run every agent unjailed (see the README's threat model before you do): the explicit,
    /// logged opt-out from the sandbox for all profiles.
    #[arg(long, env = "AGENTD_NO_SANDBOX", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_sandbox: bool,
    /// Seconds running jobs get to finish on server shutdown before they are cancelled
    /// (`--on-shutdown cancel`).
    #[arg(long, env = "AGENTD_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// What a stopping agentd does with running jobs: `keep` leaves them running under their
    /// supervisors for the next agentd on this data dir to adopt (SIGTERM stops accepting work,
    /// drains calls and exits; a crash leaves them too); `cancel` cancels them after the grace.
    #[arg(long, env = "AGENTD_ON_SHUTDOWN", default_value = "keep", value_parser = ["keep", "cancel"])]
    pub on_shutdown: String,
    /// Seconds a job left running by a stopped agentd waits to be adopted before its supervisor
    /// ends it (the job is then FAILED with ADOPTION_TIMEOUT).
    #[arg(long, env = "AGENTD_ADOPT_TIMEOUT", default_value_t = 600)]
    pub adopt_timeout: u64,
    /// Seconds between keepalive messages on a quiet event stream.
    #[arg(long, env = "AGENTD_STREAM_KEEPALIVE_SECONDS", default_value_t = 15)]
    pub stream_keepalive_seconds: u64,
    /// Seconds between sweeps for expired sessions.
    #[arg(long, env = "AGENTD_REAPER_INTERVAL_SECONDS", default_value_t = 30)]
    pub reaper_interval_seconds: u64,
    /// Consecutive failures of a store health probe before health turns NOT_SERVING (the first
    /// success turns it back).
    #[arg(long, env = "AGENTD_HEALTH_PROBE_FAILURES", default_value_t = 3)]
    pub health_probe_failures: u32,
    /// Where the model gateway listens (only when a profile has `[agents.<name>.gateway]`);
    /// loopback, port 0 picks a free one.
    #[arg(long, env = "AGENTD_GATEWAY_LISTEN", default_value = "127.0.0.1:0")]
    pub gateway_listen: SocketAddr,
    /// Longest wait for a model upstream's response headers, and between two chunks of its body.
    #[arg(long, env = "AGENTD_GATEWAY_TIMEOUT_SECONDS", default_value_t = 600)]
    pub gateway_timeout_seconds: u64,
    /// Observability and transport flags (boxed: they would make every `ServeArgs` move large).
    #[command(flatten)]
    pub ops: Box<OpsArgs>,
}

/// `agentd serve` flags for metrics, logs and the transport (TLS, keepalive, gRPC-Web).
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// Address of a separate plain-HTTP listener serving Prometheus metrics at `/metrics`; off
    /// when unset.
    #[arg(long, env = "AGENTD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// File holding a bearer token that `/metrics` requires (`authorization: Bearer <token>`);
    /// without it or `AGENTD_METRICS_TOKEN`, anyone reaching the metrics port may read them.
    #[arg(
        long,
        env = "AGENTD_METRICS_TOKEN_FILE",
        conflicts_with = "metrics_token"
    )]
    pub metrics_token_file: Option<PathBuf>,
    /// The `/metrics` bearer token itself (prefer the file: the environment leaks to children).
    #[arg(
        long,
        env = "AGENTD_METRICS_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    pub metrics_token: Option<String>,
    /// Log line format on stderr.
    #[arg(long, env = "AGENTD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// PEM certificate chain for TLS; with `--tls-key`, the server speaks TLS instead of h2c.
    #[arg(long, env = "AGENTD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "AGENTD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "AGENTD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Seconds between HTTP/2 keepalive pings on idle connections; 0 disables them.
    #[arg(
        long,
        env = "AGENTD_HTTP2_KEEPALIVE_INTERVAL_SECONDS",
        default_value_t = 30
    )]
    pub http2_keepalive_interval_seconds: u64,
    /// Seconds to wait for a keepalive ping's answer before closing the connection.
    #[arg(
        long,
        env = "AGENTD_HTTP2_KEEPALIVE_TIMEOUT_SECONDS",
        default_value_t = 20
    )]
    pub http2_keepalive_timeout_seconds: u64,
    /// Seconds after which a connection is sent GOAWAY so clients reconnect (and load balancers
    /// rebalance); 0 keeps connections forever.
    #[arg(long, env = "AGENTD_MAX_CONNECTION_AGE_SECONDS", default_value_t = 0)]
    pub max_connection_age_seconds: u64,
    /// Seconds in-flight calls get to finish after the GOAWAY of `--max-connection-age-seconds`.
    #[arg(
        long,
        env = "AGENTD_MAX_CONNECTION_AGE_GRACE_SECONDS",
        default_value_t = 300
    )]
    pub max_connection_age_grace_seconds: u64,
    /// Also accept gRPC-Web (HTTP/1.1 and HTTP/2), for browsers.
    #[arg(long, env = "AGENTD_GRPC_WEB")]
    pub grpc_web: bool,
    /// Gzip responses for clients that accept gzip (most gRPC clients announce it). Off by
    /// default: inside a data centre or mesh, compressing every event batch costs both ends more
    /// CPU than the bytes save. Gzip requests are always accepted.
    #[arg(long, env = "AGENTD_SEND_GZIP")]
    pub send_gzip: bool,
    /// Comma-separated origins allowed to make cross-origin gRPC-Web calls (`*` for any); none
    /// when unset, so only same-origin pages (or a proxy) can use gRPC-Web.
    #[arg(long, env = "AGENTD_GRPC_WEB_ALLOW_ORIGINS", requires = "grpc_web")]
    pub grpc_web_allow_origins: Option<String>,
    /// Serve the web console (a browser client of this API over gRPC-Web, which it turns on) at
    /// `/`. Default: on when `--listen` is a loopback address, off elsewhere; `--console=false`
    /// turns it off.
    #[arg(
        long,
        env = "AGENTD_CONSOLE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub console: Option<bool>,
    /// Serve the console on this extra address instead of `--listen` (with the API beside it, so
    /// the page's calls stay same-origin).
    #[arg(long, env = "AGENTD_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,
    /// Comma-separated host names a browser may reach the console and gRPC-Web by, besides
    /// `localhost` and loopback addresses (e.g. an SSH tunnel's or a local proxy's name). Other
    /// names are refused on loopback listeners (DNS rebinding); once set, on every listener.
    #[arg(long, env = "AGENTD_CONSOLE_HOSTS", value_delimiter = ',')]
    pub console_hosts: Vec<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, span fields (request_id, job, trace_id) included.
    Json,
}

/// The optional TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    default_agent: Option<String>,
    sandbox: Option<sandbox::FileSandbox>,
    #[serde(default)]
    agents: BTreeMap<String, FileAgent>,
    #[serde(default)]
    api_keys: Vec<FileApiKey>,
    /// `[prices."<model>"]`, for the gateway's metering.
    #[serde(default)]
    prices: BTreeMap<String, crate::gateway::Price>,
    /// `[budgets]`: tenant budgets enforced by the gateway.
    budgets: Option<crate::gateway::Budgets>,
    /// `[webhooks]`: SSRF exceptions, job URL prefixes, retries, operator endpoints.
    webhooks: Option<crate::webhooks::config::FileWebhooks>,
    /// `[presets.*]`, `[mcp.*]`, `[subagents.*]`, `[skills.*]` (#20; see `config::catalog`).
    #[serde(default)]
    presets: BTreeMap<String, crate::presets::Preset>,
    #[serde(default)]
    mcp: BTreeMap<String, crate::presets::McpServer>,
    #[serde(default)]
    subagents: BTreeMap<String, crate::presets::CatalogPath>,
    #[serde(default)]
    skills: BTreeMap<String, crate::presets::CatalogPath>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAgent {
    kind: AgentKind,
    command: Option<String>,
    /// The agent's own config file content, written into the session HOME by its adapter.
    config: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    sandbox: Option<sandbox::FileSandbox>,
    /// Route the agent's model calls through agentd's gateway to this upstream.
    gateway: Option<crate::gateway::FileGateway>,
    /// `[agents.<name>.permissions]`: the operator's tool rules for jobs that ask (`allow`,
    /// `deny`, each `Tool(pattern)`); its deny rules win over any job's.
    #[serde(default)]
    permissions: crate::domain::permission::PermissionRules,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApiKey {
    tenant: String,
    /// Hex SHA-256 of the key, so plain keys need not be stored.
    sha256: String,
}

/// One accepted API key, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct ApiKey {
    pub tenant: String,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ApiKey {{ tenant: {:?}, sha256: <redacted> }}",
            self.tenant
        )
    }
}

/// Limits applied to requests.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_concurrent_jobs: usize,
    pub max_queued_jobs_per_session: usize,
    pub job_timeout_default: Duration,
    pub job_timeout_max: Duration,
    pub session_ttl_default: Duration,
    pub session_ttl_max: Duration,
    pub max_files_per_session: u64,
    pub max_session_bytes: u64,
    pub max_file_bytes: u64,
    /// UploadArchive's bomb guards: entries, expanded bytes, expansion ratio.
    pub archive_max_entries: u64,
    pub archive_max_bytes: u64,
    pub archive_max_ratio: u64,
    /// Longest stdout/stderr line kept whole; longer lines are cut and marked.
    pub max_line_bytes: usize,
    pub job_output_max_bytes: u64,
    pub job_output_max_events: u64,
    /// Zero keeps events forever.
    pub event_retention: Duration,
    /// Zero means unlimited.
    pub tenant_max_active_jobs: usize,
    /// Zero means unlimited.
    pub tenant_max_running_jobs: usize,
    /// Zero means unlimited.
    pub tenant_rate_limit: u32,
    /// Longest prompt accepted, in bytes.
    pub max_prompt_bytes: usize,
}

/// Timing of background work and shutdown.
#[derive(Debug, Clone)]
pub struct Timing {
    pub kill_grace: Duration,
    pub shutdown_grace: Duration,
    pub stream_keepalive: Duration,
    pub reaper_interval: Duration,
    /// How long a claim on a job lasts without renewal.
    pub lease: Duration,
    /// `--on-shutdown keep`: running jobs outlive agentd and are adopted by the next one; how
    /// long they wait for it. `None`: they are cancelled on shutdown and die with agentd.
    pub adopt_timeout: Option<Duration>,
}

/// Files of the server's TLS identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Set for mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// Transport behaviour of the gRPC listener.
#[derive(Debug, Clone)]
pub struct Transport {
    /// Unset: plaintext h2c.
    pub tls: Option<TlsFiles>,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub max_connection_age: Option<Duration>,
    pub max_connection_age_grace: Duration,
    pub grpc_web: bool,
    /// Gzip responses to clients that accept it.
    pub send_gzip: bool,
    /// Origins allowed for cross-origin gRPC-Web; `*` means any.
    pub grpc_web_allow_origins: Vec<String>,
    /// Serve the web console's assets (implies `grpc_web`).
    pub console: bool,
    /// The console's own listener; unset: the console is served on `listen`.
    pub console_listen: Option<SocketAddr>,
    /// Host names browsers may use besides the loopback ones (`console::HostGuard`).
    pub console_hosts: Vec<String>,
}

/// The validated configuration of a server. `Debug` prints the redacted `Display` form.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The store URL as given (may hold a password: print it only through [`redact_url`]).
    pub store: String,
    pub workspace_root: PathBuf,
    pub replica_id: String,
    /// Accepted API keys; empty means authentication is off (only allowed on loopback or with
    /// `insecure_no_auth`).
    pub api_keys: Vec<ApiKey>,
    pub insecure_no_auth: bool,
    pub agents: BTreeMap<String, AgentProfile>,
    pub default_agent: String,
    pub limits: Limits,
    pub timing: Timing,
    /// The executable run as the per-job process supervisor (`<exe> __supervise …`):
    /// `agentd-supervise` when it sits next to the agentd binary, else agentd itself.
    pub supervisor: PathBuf,
    /// Supervisors kept ready for the next jobs (`runner::Launcher`).
    pub standby_supervisors: usize,
    /// How the supervisor contains an unjailed job.
    pub containment: crate::runner::Containment,
    /// Each profile's jail.
    pub sandbox: SandboxConfig,
    /// Files a jail must hide even where a visible directory holds them (the config file).
    pub config_file: Option<PathBuf>,
    pub transport: Transport,
    /// Where Prometheus metrics are served; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// The bearer token `/metrics` requires; anyone may read them when unset.
    pub metrics_token: Option<String>,
    pub log_format: LogFormat,
    /// Consecutive failures of a store probe that turn health NOT_SERVING (at least 1).
    pub health_probe_failures: u32,
    /// Upstreams, prices and budgets of the model gateway (holds provider keys: never printed).
    pub gateway: crate::gateway::config::GatewayConfig,
    pub gateway_listen: SocketAddr,
    pub gateway_timeout: Duration,
    /// `[webhooks]` (holds endpoint secrets: never printed).
    pub webhooks: crate::webhooks::config::WebhookConfig,
    /// Each profile's operator permission rules (issue #17).
    pub permissions: BTreeMap<String, crate::domain::permission::PermissionRules>,
    /// How long a permission request waits when the job does not say.
    pub permission_timeout_default: Duration,
    /// Presets, MCP servers, subagents and skills of the config file, as read at start (the core
    /// holds the live one, which SIGHUP replaces).
    pub catalog: crate::presets::Catalog,
}

/// `<hostname>-<pid>-<4 random hex>`: readable in a job's failure reason, unique per start.
/// The small supervisor binary installed beside `exe` (what `cargo build` and the deploy files
/// produce), or `exe` itself, which can act as the supervisor too. The small one starts faster:
/// it is exec'ed for every job.
fn supervisor_beside(exe: &Path) -> PathBuf {
    exe.parent()
        .map(|dir| dir.join("agentd-supervise"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| exe.to_path_buf())
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agentd".into());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &rand[..4])
}

/// A URL with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    // A password may also hide in the query (`?password=`).
    let tail = if tail.contains("password=") {
        tail.split('&')
            .map(|kv| match kv.split_once("password=") {
                Some((pre, _)) => format!("{pre}password=***"),
                None => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    } else {
        tail.to_owned()
    };
    format!("{scheme}://{authority}{tail}")
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Config {
    /// Validates flags and reads the config file they name.
    pub fn from_args(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };

        let mut api_keys = Vec::new();
        if let Some(list) = &args.api_keys {
            for (i, item) in list.split(',').map(str::trim).enumerate() {
                if item.is_empty() {
                    continue;
                }
                let (tenant, key) = item
                    .split_once(':')
                    .ok_or_else(|| bad(format!("AGENTD_API_KEYS entry {i} is not `tenant:key`")))?;
                if tenant.is_empty() || key.len() < 8 {
                    return Err(bad(format!(
                        "AGENTD_API_KEYS entry {i} needs a tenant and a key of at least 8 characters"
                    )));
                }
                api_keys.push(ApiKey {
                    tenant: tenant.to_owned(),
                    sha256: Sha256::digest(key.as_bytes()).into(),
                });
            }
        }
        for (i, k) in file.api_keys.iter().enumerate() {
            let digest: [u8; 32] = hex::decode(&k.sha256)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| bad(format!("api_keys[{i}].sha256 is not 64 hex digits")))?;
            if k.tenant.is_empty() {
                return Err(bad(format!("api_keys[{i}].tenant is empty")));
            }
            api_keys.push(ApiKey {
                tenant: k.tenant.clone(),
                sha256: digest,
            });
        }
        if api_keys.is_empty() && !args.insecure_no_auth && !args.listen.ip().is_loopback() {
            return Err(bad(format!(
                "no API keys configured: refusing to listen on non-loopback {} \
                 (set AGENTD_API_KEYS or pass --insecure-no-auth)",
                args.listen
            )));
        }

        let mut agents = BTreeMap::new();
        let mut sandboxes = BTreeMap::from([("claude".to_owned(), None)]);
        agents.insert(
            "claude".to_owned(),
            AgentProfile {
                name: "claude".to_owned(),
                kind: AgentKind::Claude,
                command: args.claude_bin.clone(),
                args: Vec::new(),
                env: BTreeMap::new(),
                config: None,
            },
        );
        let webhooks = crate::webhooks::config::resolve(file.webhooks).map_err(bad)?;
        let mut upstreams = BTreeMap::new();
        let global_network = sandbox::FileSandbox::names_network(file.sandbox.as_ref());
        let mut permissions = BTreeMap::new();
        for (name, mut a) in file.agents {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(format!("agent name {name:?} must be [A-Za-z0-9_-]+")));
            }
            let command = match a.command {
                Some(c) if !c.is_empty() => c,
                _ if a.kind == AgentKind::Claude => args.claude_bin.clone(),
                _ => a
                    .kind
                    .default_command()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(format!("agents.{name}.command is required")))?,
            };
            // A provider key in the profile's env goes behind the gateway too, unless the operator
            // chose a network for the profile (or all of them) and so the direct route.
            if a.gateway.is_none()
                && !global_network
                && !sandbox::FileSandbox::names_network(a.sandbox.as_ref())
            {
                a.gateway = crate::gateway::config::from_provider_env(a.kind, &a.env);
            }
            let own_sandbox = match a.gateway.is_some() {
                // Behind the gateway, the job's network is the gateway's unless the profile says
                // otherwise.
                true => Some(sandbox::FileSandbox::default_network(
                    a.sandbox,
                    crate::runner::jail::Network::Gateway,
                )),
                false => a.sandbox,
            };
            sandboxes.insert(name.clone(), own_sandbox);
            crate::domain::permission::validate_rules(
                &format!("agents.{name}.permissions.allow"),
                &a.permissions.allow,
            )
            .and_then(|()| {
                crate::domain::permission::validate_rules(
                    &format!("agents.{name}.permissions.deny"),
                    &a.permissions.deny,
                )
            })
            .map_err(|e| bad(e.to_string()))?;
            permissions.insert(name.clone(), a.permissions);
            if let Some(g) = a.gateway {
                let up = crate::gateway::config::resolve_upstream(&name, a.kind, g).map_err(bad)?;
                upstreams.insert(name.clone(), up);
            }
            agents.insert(
                name.clone(),
                AgentProfile {
                    name,
                    kind: a.kind,
                    command,
                    args: a.args,
                    env: a.env,
                    config: a.config,
                },
            );
        }
        let sandbox = sandbox::resolve(file.sandbox, sandboxes, args.no_sandbox)?;
        let catalog = catalog::resolve(
            catalog::FileCatalog {
                presets: file.presets,
                mcp: file.mcp,
                subagents: file.subagents,
                skills: file.skills,
            },
            &agents,
        )?;
        let default_agent = args
            .default_agent
            .or(file.default_agent)
            .unwrap_or_else(|| "claude".to_owned());
        if !agents.contains_key(&default_agent) {
            return Err(bad(format!(
                "default agent {default_agent:?} is not a configured profile"
            )));
        }

        if args.max_prompt_bytes == 0 {
            return Err(bad("--max-prompt-bytes must be at least 1"));
        }
        if args.max_concurrent_jobs == 0 {
            return Err(bad("--max-concurrent-jobs must be at least 1"));
        }
        if args.job_timeout_default == 0 || args.job_timeout_default > args.job_timeout_max {
            return Err(bad(
                "--job-timeout-default must be between 1 and --job-timeout-max",
            ));
        }
        if args.session_ttl_default == 0 || args.session_ttl_default > args.session_ttl_max {
            return Err(bad(
                "--session-ttl-default must be between 1 and --session-ttl-max",
            ));
        }
        let tls = match (&args.ops.tls_cert, &args.ops.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.ops.tls_client_ca.clone(),
            }),
            (None, None) if args.ops.tls_client_ca.is_some() => {
                return Err(bad("--tls-client-ca needs --tls-cert and --tls-key"));
            }
            (None, None) => None,
            _ => return Err(bad("--tls-cert and --tls-key must be given together")),
        };
        if let Some(t) = &tls {
            for (flag, path) in [("--tls-cert", &t.cert), ("--tls-key", &t.key)]
                .into_iter()
                .chain(t.client_ca.as_ref().map(|p| ("--tls-client-ca", p)))
            {
                if !path.is_file() {
                    return Err(bad(format!(
                        "{flag} {} is not a readable file",
                        path.display()
                    )));
                }
            }
        }
        if args.ops.metrics_listen.is_some_and(|m| m == args.listen) {
            return Err(bad("--metrics-listen must differ from --listen"));
        }
        let metrics_token = match (&args.ops.metrics_token_file, &args.ops.metrics_token) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("--metrics-token-file {}: {e}", path.display())))?,
            ),
            (None, token) => token.clone(),
        }
        .map(|t| t.trim().to_owned());
        if metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(bad(
                "the metrics token (--metrics-token-file / AGENTD_METRICS_TOKEN) needs at least 16 characters",
            ));
        }
        let grpc_web_allow_origins: Vec<String> = args
            .ops
            .grpc_web_allow_origins
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        for o in &grpc_web_allow_origins {
            if o != "*" && http::HeaderValue::from_str(o).is_err() {
                return Err(bad(format!(
                    "--grpc-web-allow-origins: {o:?} is not a valid origin"
                )));
            }
        }
        let console = match (args.ops.console, args.ops.console_listen) {
            (Some(false), Some(_)) => {
                return Err(bad(
                    "--console-listen needs the console on (not --console=false)",
                ));
            }
            (_, Some(c)) if c == args.listen || args.ops.metrics_listen == Some(c) => {
                return Err(bad(format!(
                    "--console-listen {c} is already in use by another listener"
                )));
            }
            (Some(on), _) => on,
            (None, Some(_)) => true,
            (None, None) => args.listen.ip().is_loopback(),
        };
        let transport = Transport {
            tls,
            keepalive_interval: (args.ops.http2_keepalive_interval_seconds > 0)
                .then(|| Duration::from_secs(args.ops.http2_keepalive_interval_seconds)),
            keepalive_timeout: Duration::from_secs(args.ops.http2_keepalive_timeout_seconds.max(1)),
            max_connection_age: (args.ops.max_connection_age_seconds > 0)
                .then(|| Duration::from_secs(args.ops.max_connection_age_seconds)),
            max_connection_age_grace: Duration::from_secs(
                args.ops.max_connection_age_grace_seconds,
            ),
            grpc_web: args.ops.grpc_web || console,
            send_gzip: args.ops.send_gzip,
            grpc_web_allow_origins,
            console,
            console_listen: args.ops.console_listen,
            console_hosts: args
                .ops
                .console_hosts
                .iter()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect(),
        };
        // Absolute, because agents run with their workspace as cwd and HOME under the data dir:
        // a relative HOME would resolve inside the workspace.
        let data_dir = std::path::absolute(&args.data_dir).map_err(|e| {
            bad(format!(
                "cannot resolve data dir {}: {e}",
                args.data_dir.display()
            ))
        })?;
        let workspace_root = match &args.workspace_root {
            Some(p) => std::path::absolute(p).map_err(|e| {
                bad(format!(
                    "cannot resolve workspace root {}: {e}",
                    p.display()
                ))
            })?,
            None => data_dir.join("sessions"),
        };
        let replica_id = match &args.replica_id {
            Some(r) if r.is_empty() || r.len() > 128 || r.chars().any(char::is_control) => {
                return Err(bad("--replica-id must be 1-128 printable characters"));
            }
            Some(r) => r.clone(),
            None => default_replica_id(),
        };
        if args.lease_seconds < 3 {
            return Err(bad("--lease-seconds must be at least 3"));
        }
        let exe = std::env::current_exe()
            .map_err(|e| bad(format!("cannot locate the agentd executable: {e}")))?;
        let supervisor = supervisor_beside(&exe);

        Ok(Config {
            listen: args.listen,
            data_dir,
            store: args.store.clone(),
            workspace_root,
            replica_id,
            api_keys,
            insecure_no_auth: args.insecure_no_auth,
            agents,
            default_agent,
            limits: Limits {
                max_concurrent_jobs: args.max_concurrent_jobs,
                max_queued_jobs_per_session: args.max_queued_jobs_per_session,
                job_timeout_default: Duration::from_secs(args.job_timeout_default.into()),
                job_timeout_max: Duration::from_secs(args.job_timeout_max.into()),
                session_ttl_default: Duration::from_secs(args.session_ttl_default.into()),
                session_ttl_max: Duration::from_secs(args.session_ttl_max.into()),
                max_files_per_session: args.max_files_per_session,
                max_session_bytes: args.max_session_bytes,
                max_file_bytes: args.max_file_bytes,
                archive_max_entries: args.archive_max_entries,
                archive_max_bytes: args.archive_max_bytes,
                archive_max_ratio: args.archive_max_ratio.max(1),
                max_line_bytes: 16 << 20,
                job_output_max_bytes: args.job_output_max_bytes,
                job_output_max_events: args.job_output_max_events,
                event_retention: Duration::from_secs(args.event_retention_seconds),
                tenant_max_active_jobs: args.tenant_max_active_jobs,
                tenant_max_running_jobs: args.tenant_max_running_jobs,
                tenant_rate_limit: args.tenant_rate_limit,
                max_prompt_bytes: args.max_prompt_bytes,
            },
            timing: Timing {
                kill_grace: Duration::from_secs(args.kill_grace_seconds),
                shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
                stream_keepalive: Duration::from_secs(args.stream_keepalive_seconds.max(1)),
                reaper_interval: Duration::from_secs(args.reaper_interval_seconds.max(1)),
                lease: Duration::from_secs(args.lease_seconds),
                adopt_timeout: (args.on_shutdown == "keep")
                    .then(|| Duration::from_secs(args.adopt_timeout.max(1))),
            },
            supervisor,
            standby_supervisors: args.standby_supervisors,
            containment: args.containment,
            sandbox,
            config_file: args.config.as_ref().and_then(|p| p.canonicalize().ok()),
            transport,
            metrics_listen: args.ops.metrics_listen,
            metrics_token,
            log_format: args.ops.log_format,
            health_probe_failures: args.health_probe_failures.max(1),
            gateway: crate::gateway::config::GatewayConfig {
                upstreams,
                prices: file.prices,
                budgets: file.budgets.unwrap_or_default(),
            },
            gateway_listen: args.gateway_listen,
            gateway_timeout: Duration::from_secs(args.gateway_timeout_seconds.max(1)),
            webhooks,
            permissions,
            permission_timeout_default: Duration::from_secs(
                args.permission_timeout_default.max(1).into(),
            ),
            catalog,
        })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for Config {
    /// The effective configuration, secrets redacted: agent env values and API keys never print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "listen = {}", self.listen)?;
        writeln!(f, "data_dir = {}", self.data_dir.display())?;
        if !self.store.is_empty() {
            writeln!(f, "store = {}", redact_url(&self.store))?;
        }
        writeln!(f, "workspace_root = {}", self.workspace_root.display())?;
        writeln!(f, "replica_id = {}", self.replica_id)?;
        let tenants: std::collections::BTreeSet<&str> =
            self.api_keys.iter().map(|k| k.tenant.as_str()).collect();
        if self.api_keys.is_empty() {
            writeln!(f, "auth = off (loopback or --insecure-no-auth)")?;
        } else {
            writeln!(
                f,
                "auth = {} key(s) for tenants {:?}",
                self.api_keys.len(),
                tenants
            )?;
        }
        writeln!(f, "default_agent = {}", self.default_agent)?;
        for a in self.agents.values() {
            let env: Vec<String> = a.env.keys().map(|k| format!("{k}=<redacted>")).collect();
            writeln!(
                f,
                "agent {} = kind {}, command {:?}, args {:?}, env [{}]{}",
                a.name,
                a.kind,
                a.command,
                a.args,
                env.join(", "),
                if a.config.is_some() {
                    ", config file <redacted>"
                } else {
                    ""
                }
            )?;
        }
        for (name, up) in &self.gateway.upstreams {
            // The URL may carry credentials like a store URL; the key never prints.
            writeln!(
                f,
                "gateway {name} = {} api {}, key <redacted>",
                redact_url(&up.url),
                up.api.as_str()
            )?;
        }
        writeln!(f, "webhooks = {:?}", self.webhooks)?;
        for (name, s) in &self.sandbox.profiles {
            writeln!(f, "sandbox {name} = {s:?}")?;
        }
        match &self.metrics_listen {
            Some(m) if self.metrics_token.is_some() => {
                writeln!(f, "metrics_listen = {m} (bearer token required)")?
            }
            Some(m) => writeln!(f, "metrics_listen = {m}")?,
            None => writeln!(f, "metrics_listen = off")?,
        }
        writeln!(f, "log_format = {:?}", self.log_format)?;
        writeln!(f, "health_probe_failures = {}", self.health_probe_failures)?;
        writeln!(
            f,
            "supervisor = {} ({} on standby, {} containment)",
            self.supervisor.display(),
            self.standby_supervisors,
            self.containment
        )?;
        write!(
            f,
            "limits = {:?}\ntiming = {:?}\ntransport = {:?}",
            self.limits, self.timing, self.transport
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["agentd"];
        v.extend_from_slice(args);
        Config::from_args(T::try_parse_from(v).expect("flags parse").a)
    }

    #[test]
    fn supervisor_is_the_small_binary_beside_agentd_when_there_is_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("agentd");
        std::fs::write(&exe, b"").expect("write");
        assert_eq!(supervisor_beside(&exe), exe);
        // A directory of that name is not an executable to run.
        std::fs::create_dir(dir.path().join("agentd-supervise")).expect("mkdir");
        assert_eq!(supervisor_beside(&exe), exe);
        std::fs::remove_dir(dir.path().join("agentd-supervise")).expect("rmdir");
        std::fs::write(dir.path().join("agentd-supervise"), b"").expect("write");
        assert_eq!(supervisor_beside(&exe), dir.path().join("agentd-supervise"));

        // One standby by default, none on request; both shown in the effective configuration.
        let d = parse(&[]).expect("defaults");
        assert_eq!(d.standby_supervisors, 1);
        assert!(format!("{d}").contains("(1 on standby, "), "{d}");
        let none = parse(&["--standby-supervisors", "0"]).expect("valid");
        assert_eq!(none.standby_supervisors, 0);

        // Containment: a PID namespace by default, the subreaper on request.
        use crate::runner::Containment;
        assert_eq!(d.containment, Containment::PidNamespace);
        let sub = parse(&["--containment", "subreaper"]).expect("valid");
        assert_eq!(sub.containment, Containment::Subreaper);
        assert!(format!("{sub}").contains("subreaper containment"), "{sub}");
    }

    #[test]
    fn store_url_password_never_prints() {
        let c = parse(&[
            "--store",
            "postgres://agentd:hunter2secret@db.internal:5432/agentd?sslmode=require",
            "--replica-id",
            "r1",
        ])
        .expect("valid");
        let shown = format!("{c}");
        assert!(!shown.contains("hunter2secret"), "{shown}");
        assert!(
            shown.contains("postgres://agentd:***@db.internal:5432/agentd?sslmode=require"),
            "{shown}"
        );
        assert!(shown.contains("replica_id = r1"), "{shown}");
        assert_eq!(
            redact_url("postgres://u@h/db?user=x&password=p4ss"),
            "postgres://u@h/db?user=x&password=***"
        );
        assert_eq!(redact_url("sqlite:///a/b.db"), "sqlite:///a/b.db");
        assert!(parse(&["--lease-seconds", "1"]).is_err());
        assert!(parse(&["--replica-id", ""]).is_err());
        let d = parse(&[]).expect("defaults");
        assert_eq!(d.workspace_root, d.data_dir.join("sessions"));
        assert_ne!(d.replica_id, parse(&[]).expect("defaults").replica_id);
        assert_eq!(d.health_probe_failures, 3);
        let one = parse(&["--health-probe-failures", "0"]).expect("clamped");
        assert_eq!(one.health_probe_failures, 1);
    }

    #[test]
    fn refuses_non_loopback_without_keys() {
        let err = parse(&["--listen", "0.0.0.0:1"]).unwrap_err();
        assert!(err.to_string().contains("no API keys"), "{err}");
        assert!(parse(&["--listen", "0.0.0.0:1", "--insecure-no-auth"]).is_ok());
        assert!(parse(&["--listen", "0.0.0.0:1", "--api-keys", "a:secretkey1"]).is_ok());
    }

    #[test]
    fn config_file_profiles_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentd.toml");
        std::fs::write(
            &path,
            r#"
default_agent = "echo"
[agents.echo]
kind = "command"
command = "echo"
args = ["-n"]
env = { ECHO_API_KEY = "very-secret-value" }
[[api_keys]]
tenant = "team-a"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"#,
        )
        .unwrap();
        let cfg = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(cfg.default_agent, "echo");
        assert_eq!(cfg.agents["echo"].kind, AgentKind::Command);
        assert_eq!(cfg.api_keys.len(), 1);
        let printed = cfg.to_string();
        assert!(printed.contains("ECHO_API_KEY=<redacted>"), "{printed}");
        assert!(!printed.contains("very-secret-value"), "{printed}");
        assert!(!format!("{cfg:?}").contains("9f86d0"));
        assert!(!format!("{cfg:?}").contains("very-secret-value"));
    }

    #[test]
    fn transport_flags() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "x").unwrap();
        std::fs::write(&key, "x").unwrap();
        let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let cfg = parse(&[]).unwrap();
        assert!(cfg.transport.tls.is_none(), "h2c is the default");
        assert_eq!(
            cfg.transport.keepalive_interval,
            Some(Duration::from_secs(30))
        );
        assert_eq!(cfg.transport.max_connection_age, None);
        assert!(cfg.metrics_listen.is_none());
        let cfg = parse(&["--tls-cert", c, "--tls-key", k, "--tls-client-ca", c]).unwrap();
        let tls = cfg.transport.tls.unwrap();
        assert_eq!(tls.client_ca.as_deref(), Some(cert.as_path()));
        // clap refuses half a TLS identity; a missing file is named.
        assert!(T::try_parse_from(["agentd", "--tls-cert", c]).is_err());
        let missing = dir.path().join("nope.pem");
        let err = parse(&["--tls-cert", c, "--tls-key", missing.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("--tls-key"), "{err}");
        let cfg = parse(&[
            "--max-connection-age-seconds",
            "60",
            "--http2-keepalive-interval-seconds",
            "0",
            "--grpc-web",
            "--grpc-web-allow-origins",
            "https://a.example, *",
            "--log-format",
            "json",
            "--metrics-listen",
            "127.0.0.1:9090",
        ])
        .unwrap();
        assert_eq!(
            cfg.transport.max_connection_age,
            Some(Duration::from_secs(60))
        );
        assert_eq!(cfg.transport.keepalive_interval, None);
        assert!(cfg.transport.grpc_web);
        assert_eq!(
            cfg.transport.grpc_web_allow_origins,
            ["https://a.example", "*"]
        );
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert!(cfg.to_string().contains("metrics_listen = 127.0.0.1:9090"));
        assert!(parse(&["--metrics-listen", "127.0.0.1:50051"]).is_err());
    }

    #[test]
    fn refuses_unknown_default_agent_and_bad_keys() {
        assert!(parse(&["--default-agent", "nope"]).is_err());
        assert!(parse(&["--api-keys", "nokey"]).is_err());
        assert!(parse(&["--api-keys", "a:short"]).is_err());
    }

    #[test]
    fn the_console_is_on_by_default_on_loopback_only() {
        let cfg = parse(&[]).unwrap();
        assert!(cfg.transport.console && cfg.transport.grpc_web);
        let open = ["--listen", "0.0.0.0:50051", "--insecure-no-auth"];
        let cfg = parse(&open).unwrap();
        assert!(!cfg.transport.console && !cfg.transport.grpc_web);
        let cfg = parse(&[&open[..], &["--console"]].concat()).unwrap();
        assert!(cfg.transport.console && cfg.transport.grpc_web);
        let cfg = parse(&["--console=false"]).unwrap();
        assert!(!cfg.transport.console && !cfg.transport.grpc_web);
        let cfg = parse(&["--console-listen", "127.0.0.1:8080"]).unwrap();
        assert_eq!(
            cfg.transport.console_listen,
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert!(cfg.transport.console);
        let err = parse(&["--console=false", "--console-listen", "127.0.0.1:8080"]).unwrap_err();
        assert!(err.to_string().contains("--console-listen"), "{err}");
        let err = parse(&["--console-listen", "127.0.0.1:50051"]).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
