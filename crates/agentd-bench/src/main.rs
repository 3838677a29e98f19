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
    /// Another agentd executable (e.g. the previous build) to compare with: the scenarios run
    /// against both, alternating, for --runs rounds, and each figure gets the ratio of the two
    /// and a verdict against the noise between rounds (see BENCHMARKS.md, "How to reproduce").
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Rounds of the comparison with --baseline (each round runs both executables once).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Exit with status 1 when a goal is missed (with --baseline: when a figure is slower).
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
    let agentd = match &args.agentd {
        Some(p) => p.clone(),
        None => me.with_file_name("agentd"),
    };
    for exe in std::iter::once(&agentd).chain(&args.baseline) {
        if !exe.is_file() {
            bail!(
                "no agentd executable at {} (build it, or pass --agentd)",
                exe.display()
            );
        }
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
    let code = match &args.baseline {
        None => measure(&rt, &env, &args),
        Some(baseline) => compare(&rt, env, baseline.clone(), &args),
    };
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

/// Runs the chosen scenarios once against `env.agentd`; the failed ones are named in the log.
fn run_scenarios(
    rt: &tokio::runtime::Runtime,
    env: &harness::Env,
    args: &Args,
    print_json: bool,
) -> (Vec<report::Metric>, Vec<&'static str>) {
    let mut metrics = Vec::new();
    let mut failed = Vec::new();
    for s in scenarios::ALL {
        if !args.only.is_empty() && !args.only.iter().any(|n| n == s.name) {
            continue;
        }
        eprintln!("agentd-bench: {} …", s.name);
        let started = std::time::Instant::now();
        match rt.block_on((s.run)(env)) {
            Ok(ms) => {
                eprintln!(
                    "agentd-bench: {} done in {:.1}s",
                    s.name,
                    started.elapsed().as_secs_f64()
                );
                if print_json {
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
    (metrics, failed)
}

/// The bench proper: agentd against the raw mechanisms, with the goals of issue #8.
fn measure(rt: &tokio::runtime::Runtime, env: &harness::Env, args: &Args) -> Result<i32> {
    let (metrics, failed) = run_scenarios(rt, env, args, args.json);
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

/// `env.agentd` against `baseline`, in the same run: `--runs` rounds, each running the scenarios
/// against both, the first of the two alternating so that a drift of the machine's load falls on
/// both alike.
fn compare(
    rt: &tokio::runtime::Runtime,
    env: harness::Env,
    baseline: PathBuf,
    args: &Args,
) -> Result<i32> {
    let branch = env.agentd.clone();
    let mut env = env;
    let mut rounds: [Vec<Vec<report::Metric>>; 2] = [Vec::new(), Vec::new()];
    let mut failed = Vec::new();
    for round in 0..args.runs {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            env.agentd = [&branch, &baseline][which].clone();
            eprintln!(
                "agentd-bench: round {}/{} with {}",
                round + 1,
                args.runs,
                env.agentd.display()
            );
            let (metrics, f) = run_scenarios(rt, &env, args, false);
            failed.extend(f);
            rounds[which].push(metrics);
        }
    }
    let [ours, theirs] = rounds;
    let figures = report::compare(&ours, &theirs);
    if args.json {
        for f in &figures {
            println!("{}", f.json());
        }
    } else {
        println!(
            "\nagentd-bench{} — this agentd {}, baseline {}, {} rounds — {}\n",
            if args.quick { " --quick" } else { "" },
            branch.display(),
            baseline.display(),
            args.runs,
            machine()
        );
        print!("{}", report::comparison_table(&figures));
    }
    if !failed.is_empty() {
        failed.sort_unstable();
        failed.dedup();
        eprintln!("agentd-bench: scenarios failed: {}", failed.join(", "));
        return Ok(2);
    }
    let slower: Vec<&str> = figures
        .iter()
        .filter(|f| f.verdict() == report::Verdict::Slower)
        .map(|f| f.name.as_str())
        .collect();
    if !slower.is_empty() {
        eprintln!(
            "agentd-bench: slower than the baseline: {}",
            slower.join(", ")
        );
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
