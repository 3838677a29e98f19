//! The client half of the `agentd` binary: `run`, `sessions`, `jobs`, `files` and `agents`.
//! It owns the command line of those subcommands, the connection to a server (target, API key),
//! rendering a job's events for a person or as JSON lines, streamed uploads and downloads, and the
//! mapping of every failure to a documented exit code ([`exit`]).
//!
//! It talks to the server only through the generated clients in [`crate::pb`], like any other
//! client would; it shares no state with the server modules.

mod archive;
mod ask;
mod commands;
mod conn;
mod history;
mod presets;
mod render;
mod transfer;
mod usage;
mod watch;
mod webhooks;

pub use conn::CliError;

use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Exit codes of the client subcommands. Stable: scripts switch on them.
pub mod exit {
    /// Success (for `run` and `jobs logs -f`: the job succeeded).
    pub const OK: i32 = 0;
    /// The job failed, was cancelled or timed out.
    pub const JOB_FAILED: i32 = 1;
    /// Usage error: bad flags or arguments, or a request the server rejected as invalid.
    pub const USAGE: i32 = 2;
    /// The server could not be reached, or the connection broke for good.
    pub const UNAVAILABLE: i32 = 3;
    /// Not found, or not allowed (wrong or missing API key).
    pub const NOT_FOUND: i32 = 4;
    /// The server refused the request for another reason: a limit, a state that does not allow
    /// it, an internal error; or a local file could not be read or written.
    pub const OTHER: i32 = 5;
    /// Interrupted by a second Ctrl-C.
    pub const INTERRUPTED: i32 = 130;
}

/// Help text shared by the client subcommands.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
    0  success (run, jobs logs -f: the job succeeded)
    1  the job failed, was cancelled or timed out
    2  usage error, or the server rejected the request as invalid
    3  the server is unreachable or the connection broke for good
    4  not found, or not allowed (missing or wrong API key)
    5  other refusal (limits, job state, server error) or a local file error
  130  interrupted";

/// Where the server is and how to authenticate; accepted by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Server address: host:port or http://host:port (plaintext h2c).
    #[arg(
        long,
        alias = "url",
        env = "AGENTD_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// API key, sent as `authorization: Bearer <key>`.
    #[arg(long, env = "AGENTD_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print one JSON object per line instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The client subcommands, flattened into the binary's top-level command.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create a session from a directory, run a prompt in it, stream what the agent does and
    /// download what it changed.
    #[command(after_help = EXIT_CODES_HELP)]
    Run(Box<RunArgs>),
    /// List, show, create or delete sessions.
    #[command(after_help = EXIT_CODES_HELP)]
    Sessions {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// List, show or cancel jobs, and print or follow their events.
    #[command(after_help = EXIT_CODES_HELP)]
    Jobs {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// List, download, upload or delete files of a session's workspace.
    #[command(after_help = EXIT_CODES_HELP)]
    Files {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: FilesCommand,
    },
    /// Show the agents (and limits) the server offers.
    #[command(after_help = EXIT_CODES_HELP)]
    Agents {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List, show, create or delete job presets (`agentd run --preset NAME --var k=v`).
    #[command(after_help = EXIT_CODES_HELP)]
    Presets {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: presets::PresetsCommand,
    },
    /// Create, list, delete, rotate or test your webhook endpoints, and read their delivery log.
    #[command(after_help = EXIT_CODES_HELP)]
    Webhooks {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: webhooks::WebhooksCommand,
    },
    /// Print a finished job's unified diff (from the snapshots taken before and after it).
    #[command(after_help = EXIT_CODES_HELP)]
    Diff {
        #[command(flatten)]
        client: ClientArgs,
        job_id: String,
        /// Only changes at or under these workspace paths.
        paths: Vec<String>,
    },
    /// Create a new session from a finished job: its workspace as the job left it (or as it
    /// found it, with --before) and a fork of the job's conversation. Prints the new session id.
    #[command(after_help = EXIT_CODES_HELP)]
    Fork {
        #[command(flatten)]
        client: ClientArgs,
        job_id: String,
        /// From before the job instead of after it.
        #[arg(long)]
        before: bool,
        /// A label of the new session, KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_pair)]
        labels: Vec<(String, String)>,
    },
    /// Put a session's workspace and conversation back to after a job of it (or before it, with
    /// --before); later jobs stay listed, marked rewound past.
    #[command(after_help = EXIT_CODES_HELP)]
    Rewind {
        #[command(flatten)]
        client: ClientArgs,
        session_id: String,
        job_id: String,
        /// Back to before the job instead of after it.
        #[arg(long)]
        before: bool,
    },
    /// Show the tenant's metered model usage (the gateway's ledger), or one job's model calls.
    #[command(after_help = EXIT_CODES_HELP)]
    Usage {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: UsageArgs,
    },
}

/// `agentd usage`.
#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// Totals per `day`, `session`, `agent` or `model`; one total without it.
    #[arg(long, value_enum)]
    pub by: Option<UsageBy>,
    /// Only the last N UTC days, today included; all time without it.
    #[arg(long, value_name = "N")]
    pub days: Option<u32>,
    /// List every model call of this job instead of totals.
    #[arg(long, value_name = "JOB_ID", conflicts_with_all = ["by", "days"])]
    pub job: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum UsageBy {
    Day,
    Session,
    Agent,
    Model,
}

/// `agentd run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Directory uploaded into a new session before the job runs (streamed, recursively;
    /// symlinks and special files are skipped). Without it the session starts empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run in this existing session instead of creating one (`--dir` is then uploaded into it).
    #[arg(long, value_name = "SESSION_ID")]
    pub session: Option<String>,
    /// Download the files the job added or modified into this directory when it succeeds (it
    /// may be the same as `--dir`), as one archive stream.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Skip files and directories with this name when uploading `--dir` (repeatable), e.g. `.git`.
    #[arg(long, value_name = "NAME")]
    pub exclude: Vec<String>,
    /// Agent profile; the server's default when absent (see `agentd agents`).
    #[arg(long)]
    pub agent: Option<String>,
    /// Model passed to the agent.
    #[arg(long)]
    pub model: Option<String>,
    /// Job timeout in seconds; the server default when absent.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// Maximum number of agent turns.
    #[arg(long)]
    pub max_turns: Option<u32>,
    /// Tool the agent may use without asking (repeatable), e.g. `Bash`, `Write`.
    #[arg(long = "allowed-tool", value_name = "TOOL")]
    pub allowed_tools: Vec<String>,
    /// Agent permission mode, e.g. `acceptEdits`.
    #[arg(long, conflicts_with = "ask")]
    pub permission_mode: Option<String>,
    /// Ask on the terminal before each tool call no rule decides (permission mode `ask`): the
    /// tool and its input are shown, `y` allows, `n` (or `n: reason`) denies. Without a terminal
    /// the answers are read from stdin, one line per request.
    #[arg(long, conflicts_with = "detach")]
    pub ask: bool,
    /// Text appended to the agent's system prompt.
    #[arg(long)]
    pub append_system_prompt: Option<String>,
    /// Budget of the job in USD (priced models, metered by the model gateway): the job ends
    /// `BUDGET_EXCEEDED` once spent.
    #[arg(long, value_name = "USD")]
    pub max_cost_usd: Option<f64>,
    /// Budget of the job in tokens (input, output and cache, metered by the model gateway).
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens: Option<u64>,
    /// Extra environment variable for the agent, `NAME=VALUE` (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub env: Vec<(String, String)>,
    /// Session time to live in seconds (new sessions only).
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<u32>,
    /// Session label `KEY=VALUE` (repeatable; new sessions only).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// Submit the job, print its id and return without waiting.
    #[arg(long)]
    pub detach: bool,
    /// Make the job from this preset (see `agentd presets ls`).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// A variable of the preset's prompt template, `NAME=VALUE` (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub vars: Vec<(String, String)>,
    /// An MCP server of the operator's catalog (repeatable).
    #[arg(long = "mcp", value_name = "NAME")]
    pub mcp_servers: Vec<String>,
    /// A Claude subagent definition of the operator's catalog (repeatable).
    #[arg(long = "subagent", value_name = "NAME")]
    pub subagents: Vec<String>,
    /// A skill of the operator's catalog (repeatable).
    #[arg(long = "skill", value_name = "NAME")]
    pub skills: Vec<String>,
    /// The prompt (may be left out with a `--preset` that has a prompt template).
    #[arg(default_value = "")]
    pub prompt: String,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions, newest first.
    Ls {
        /// Only sessions with this label `KEY=VALUE` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
        labels: Vec<(String, String)>,
    },
    /// Show one session.
    Get { session_id: String },
    /// Create a session, optionally uploading a directory into it; prints its id.
    Create {
        /// Directory to upload (recursively).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Skip files and directories with this name (repeatable).
        #[arg(long, value_name = "NAME")]
        exclude: Vec<String>,
        /// Time to live in seconds.
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<u32>,
        /// Label `KEY=VALUE` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
        labels: Vec<(String, String)>,
    },
    /// Delete a session (cancels its jobs, removes its workspace).
    Rm { session_id: String },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List a session's jobs, newest first.
    Ls {
        session_id: String,
        /// Only jobs in this state (repeatable): queued, running, succeeded, failed, cancelled,
        /// timed_out.
        #[arg(long = "state", value_parser = parse_state)]
        states: Vec<i32>,
    },
    /// Show one job.
    Get { job_id: String },
    /// Cancel a queued or running job.
    Cancel { job_id: String },
    /// Print a job's stored events; with `-f`, follow them until the job ends (reconnecting
    /// from the last event seen when the connection breaks).
    Logs {
        job_id: String,
        /// Follow until the job finishes; the exit code then tells how it ended.
        #[arg(short, long)]
        follow: bool,
        /// Only events after this seq.
        #[arg(long, default_value_t = 0, value_name = "N")]
        after_seq: u64,
    },
    /// Follow every job of the caller: one line per creation, start and finish, reattaching
    /// from the last cursor when the connection breaks. Runs until interrupted.
    Watch {
        /// Only jobs of this session.
        #[arg(long, value_name = "SESSION_ID")]
        session: Option<String>,
        /// Only jobs whose session has this label (repeatable): KEY=VALUE.
        #[arg(long = "label", value_parser = parse_pair, value_name = "KEY=VALUE")]
        labels: Vec<(String, String)>,
        /// Only jobs of this agent profile (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Only changes into this state (repeatable).
        #[arg(long = "state", value_parser = parse_state)]
        states: Vec<i32>,
        /// Replay retained changes after this cursor first (0: all of them); without it, from now.
        #[arg(long, value_name = "CURSOR")]
        after_cursor: Option<u64>,
        /// Show each job's events under its changes (each event once, with the change it led to).
        #[arg(long)]
        events: bool,
    },
    /// Wait until a job is final and show it; the exit code tells how it ended (5 when the wait
    /// timed out first).
    Wait {
        job_id: String,
        /// Longest wait in seconds (at most 3600); the server's default (60) when absent.
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        timeout: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// List the files under a directory of the workspace, recursively.
    Ls {
        session_id: String,
        /// Directory inside the workspace; the root when absent.
        #[arg(default_value = "")]
        path: String,
        /// Also show each file's SHA-256.
        #[arg(long)]
        sha256: bool,
    },
    /// Download one file (`-o -` writes it to stdout).
    Get {
        session_id: String,
        /// Path inside the workspace.
        path: String,
        /// Local destination; the file's name in the current directory when absent.
        #[arg(short, long, value_name = "DEST")]
        output: Option<PathBuf>,
    },
    /// Upload a local file or directory (recursively, streamed).
    Put {
        session_id: String,
        /// Local file or directory.
        local: PathBuf,
        /// Destination path inside the workspace: the file's path, or the directory to upload
        /// into. The file's name (or the workspace root for a directory) when absent.
        remote: Option<String>,
        /// Skip files and directories with this name (repeatable).
        #[arg(long, value_name = "NAME")]
        exclude: Vec<String>,
    },
    /// Download the workspace (or some of its paths) as one archive: tar.gz, or tar / zip when
    /// the file name ends so (`-o -` writes it to stdout, as tar.gz unless `--format` says).
    Archive {
        session_id: String,
        /// Files or directories to include; everything when absent.
        paths: Vec<String>,
        /// Local destination, e.g. `ws.tar.gz`, `ws.zip`.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// tar, tar.gz or zip; from the file name when absent.
        #[arg(long)]
        format: Option<String>,
    },
    /// Delete a file, or a directory with `-r`.
    Rm {
        session_id: String,
        path: String,
        /// Delete a non-empty directory.
        #[arg(short, long)]
        recursive: bool,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn parse_state(s: &str) -> Result<i32, String> {
    use crate::pb::JobState;
    let st = match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "queued" => JobState::Queued,
        "running" => JobState::Running,
        "succeeded" => JobState::Succeeded,
        "failed" => JobState::Failed,
        "cancelled" | "canceled" => JobState::Cancelled,
        "timed_out" => JobState::TimedOut,
        _ => {
            return Err(format!(
                "unknown state {s:?}: use queued, running, succeeded, failed, cancelled or timed_out"
            ));
        }
    };
    Ok(st as i32)
}

/// Runs a client subcommand to completion and returns the process exit code. Errors are printed
/// to stderr here (as a JSON line with `--json`).
pub fn main(cmd: ClientCommand) -> i32 {
    let json = match &cmd {
        ClientCommand::Run(a) => a.client.json,
        ClientCommand::Sessions { client, .. }
        | ClientCommand::Jobs { client, .. }
        | ClientCommand::Files { client, .. }
        | ClientCommand::Usage { client, .. }
        | ClientCommand::Presets { client, .. }
        | ClientCommand::Webhooks { client, .. }
        | ClientCommand::Diff { client, .. }
        | ClientCommand::Fork { client, .. }
        | ClientCommand::Rewind { client, .. }
        | ClientCommand::Agents { client } => client.json,
    };
    // One thread is plenty for a client, and keeps it light on a busy machine.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentd: cannot start the tokio runtime: {e}");
            return exit::OTHER;
        }
    };
    match rt.block_on(commands::dispatch(cmd)) {
        Ok(code) => code,
        Err(e) => {
            if json {
                eprintln!("{}", e.to_json());
            } else {
                eprintln!("agentd: {e}");
            }
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_states_parse() {
        assert_eq!(
            parse_pair("A=b=c").unwrap(),
            ("A".to_owned(), "b=c".to_owned())
        );
        assert!(parse_pair("=x").is_err());
        assert!(parse_pair("novalue").is_err());
        assert_eq!(
            parse_state("timed-out").unwrap(),
            crate::pb::JobState::TimedOut as i32
        );
        assert!(parse_state("done").unwrap_err().contains("\"done\""));
    }
}
