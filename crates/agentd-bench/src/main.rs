//! `agentd-bench`: measures the real `agentd` binary against the raw mechanism underneath each of
//! its paths, measured side by side in the same run (issue #8). The machine is shared and noisy,
//! so what holds is the ratio between the two, never an absolute time.
//!
//! The same executable is also the stand-in agent (`__agent`, see `agent`) and the bare tonic
//! baseline server (`__bare`, see `bare`); both hidden entries are dispatched before any runtime
//! starts.
//!
//! Modules: `harness` (processes, clients, clock, /proc), `report` (metrics, goals, output),
//! `scenarios` (one function per scenario).

mod agent;
mod bare;
mod harness;
mod procwatch;
mod report;
mod scenarios;

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::path::PathBuf;

/// Measures agentd against raw baselines in the same run and prints a table (or JSON lines).
#[derive(Parser)]
#[command(name = "agentd-bench", version)]
struct Args {
    /// Smaller sizes (finishes in well under a minute); figures are then only indicative.
    #[arg(long)]
    quick: bool,
    /// One JSON object per metric and line instead of the table.
    #[arg(long)]
    json: bool,
    /// Only these scenarios (comma-separated; see --list).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The agentd executable (default: `agentd` next to this one).
    #[arg(long)]
    agentd: Option<PathBuf>,
    /// Exit with status 1 when a goal is missed.
    #[arg(long)]
    strict: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// The genuine agent CLIs the `genuine` scenario runs (from `.cache/agents`, installed by
    /// `scripts/install-agents`): comma-separated kinds, or `all`.
    #[arg(long, value_delimiter = ',', default_value = "claude")]
    agents: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__agent") => std::process::exit(agent::main(&args[2..])),
        Some("__bare") => {
            if let Err(e) = bare::main(&args[2..]) {
                eprintln!("bare server: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    match run(Args::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("agentd-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(args: Args) -> Result<i32> {
    if args.list {
        for s in scenarios::ALL {
            println!("{:<11} {}", s.name, s.about);
        }
        return Ok(0);
    }
    for name in &args.only {
        if !scenarios::ALL.iter().any(|s| s.name == name) {
            bail!("unknown scenario {name:?} (see --list)");
        }
    }
    let me = std::env::current_exe().context("own path")?;
    let agentd = match args.agentd {
        Some(p) => p,
        None => me.with_file_name("agentd"),
    };
    if !agentd.is_file() {
        bail!(
            "no agentd executable at {} (build it, or pass --agentd)",
            agentd.display()
        );
    }
    let env = harness::Env {
        agentd,
        me,
        // This crate lives in crates/agentd-bench of the repository.
        repo: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .canonicalize()
            .context("the repository this bench was built from")?,
        quick: args.quick,
        agents: scenarios::genuine::agents(&args.agents)?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut metrics = Vec::new();
    let mut failed = Vec::new();
    for s in scenarios::ALL {
        if !args.only.is_empty() && !args.only.iter().any(|n| n == s.name) {
            continue;
        }
        eprintln!("agentd-bench: {} …", s.name);
        let started = std::time::Instant::now();
        match rt.block_on((s.run)(&env)) {
            Ok(ms) => {
                eprintln!(
                    "agentd-bench: {} done in {:.1}s",
                    s.name,
                    started.elapsed().as_secs_f64()
                );
                if args.json {
                    for m in &ms {
                        println!("{}", m.json());
                    }
                }
                metrics.extend(ms);
            }
            Err(e) => {
                eprintln!("agentd-bench: {} FAILED: {e:#}", s.name);
                failed.push(s.name);
            }
        }
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    if !args.json {
        println!(
            "\nagentd-bench{} — {}\n",
            if args.quick { " --quick" } else { "" },
            machine()
        );
        print!("{}", report::table(&metrics));
    }
    let missed: Vec<&str> = metrics
        .iter()
        .filter(|m| m.met() == Some(false))
        .map(|m| m.name.as_str())
        .collect();
    if !failed.is_empty() {
        eprintln!("agentd-bench: scenarios failed: {}", failed.join(", "));
        return Ok(2);
    }
    if !missed.is_empty() {
        eprintln!("agentd-bench: goals missed: {}", missed.join(", "));
        if args.strict {
            return Ok(1);
        }
    }
    Ok(0)
}

/// CPU model and count, for the record.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{n} × {cpu}")
}
