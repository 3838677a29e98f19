//! The `agentd` binary: `agentd serve` runs the server; `run`, `sessions`, `jobs`, `files` and
//! `agents` are the client (see `agentd::cli`); the hidden `__supervise` entry is the per-job
//! process supervisor (see `runner::supervise`), dispatched before any runtime or thread exists
//! because it forks.

#![deny(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agentd",
    version,
    about = "Runs CLI coding agents in sessions, over gRPC",
    after_help = agentd::cli::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(Box<agentd::config::ServeArgs>),
    #[command(flatten)]
    Client(agentd::cli::ClientCommand),
}

fn main() -> anyhow::Result<()> {
    // The supervisor entries run before any runtime or thread exists.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(code) = agentd::runner::supervise::dispatch(&args) {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    // The client prints what matters itself; its logs are for debugging only.
    let (default_filter, log_format) = match &cli.command {
        Command::Serve(a) => ("info", a.ops.log_format),
        Command::Client(_) => ("warn", agentd::config::LogFormat::Text),
    };
    agentd::telemetry::init_logging(log_format, default_filter);
    match cli.command {
        Command::Serve(args) => {
            // agentd's memory and /proc/<pid>/environ hold every tenant's secrets and the
            // providers' keys: no process of the same uid (a job of a non-root deploy, a
            // debugger) may read or trace it.
            nix::sys::prctl::set_dumpable(false).context("cannot make agentd non-dumpable")?;
            // A configuration mistake is the operator's to fix: the one line that says what,
            // exit code 2 like any usage error, and never a backtrace (anyhow would print one
            // under RUST_BACKTRACE).
            let config = match agentd::config::Config::from_args(*args) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("agentd: {e}");
                    std::process::exit(agentd::cli::exit::USAGE);
                }
            };
            let served = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?
                .block_on(serve(config));
            // Outside the runtime: sends any buffered OTLP spans.
            agentd::telemetry::flush();
            served
        }
        Command::Client(cmd) => std::process::exit(agentd::cli::main(cmd)),
    }
}

async fn serve(config: agentd::config::Config) -> anyhow::Result<()> {
    let stop = agentd::shutdown::signal();
    let hangups = agentd::shutdown::hangups();
    eprintln!("agentd effective configuration:\n{config}");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on port 0; printed once
    // the server is serving, so a server refused at start-up (data dir in use) never prints it.
    let ready = move || println!("agentd listening on {addr}");
    agentd::server::serve(config, listener, ready, stop, hangups).await?;
    Ok(())
}
