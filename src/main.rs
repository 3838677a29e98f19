//! The `agentd` binary: `agentd serve` runs the server; the hidden `__supervise` entry is the
//! per-job process supervisor (see `runner::supervise`), dispatched before any runtime or thread
//! exists because it forks.

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agentd",
    version,
    about = "Runs CLI coding agents in sessions, over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(agentd::config::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == agentd::runner::supervise::SUBCOMMAND)
    {
        // The runner builds this argv from UTF-8 strings, so nothing is lost here.
        let rest = args[2..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        std::process::exit(agentd::runner::supervise::main(rest));
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(args) => {
            let config = agentd::config::Config::from_args(args)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?
                .block_on(serve(config))
        }
    }
}

async fn serve(config: agentd::config::Config) -> anyhow::Result<()> {
    eprintln!("agentd effective configuration:\n{config}");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("agentd listening on {addr}");
    agentd::server::serve(config, listener, agentd::shutdown::signal()).await?;
    Ok(())
}
