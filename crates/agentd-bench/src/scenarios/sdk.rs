//! The SDKs as applications use them: the Python (grpcio) and TypeScript (Connect) clients read a
//! finished 200k-event job from agentd, which batches events per message, and the same number of
//! events from the bare server, one event per message.

use crate::harness::{Agentd, Bare, Env};
use crate::report::{Goal, Metric};
use anyhow::{Context, Result, bail, ensure};
use std::process::Stdio;
use std::time::Duration;

/// Runs a consumer; returns events per second after checking it read `want` events.
async fn consume(mut cmd: tokio::process::Command, want: u64) -> Result<f64> {
    let out = cmd
        .env_remove("AGENTD_API_KEY")
        .env_remove("AGENTD_URL")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("run {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{cmd:?} printed {:?}", String::from_utf8_lossy(&out.stdout)))?;
    let events = v["events"].as_u64().context("no events")?;
    let seconds = v["seconds"].as_f64().context("no seconds")?;
    ensure!(
        events == want,
        "{cmd:?} read {events} events, expected {want}"
    );
    Ok(events as f64 / seconds)
}

pub async fn sdk(env: &Env) -> Result<Vec<Metric>> {
    let n: u64 = env.size(20_000, 200_000);
    let python = env.repo.join(".cache/venv/bin/python");
    let ts = env.repo.join("clients/typescript");
    if !python.is_file() {
        bail!(
            "no {} (scripts/bench or scripts/test-sdks installs it)",
            python.display()
        );
    }
    if !ts.join("dist/index.js").is_file() || !ts.join("node_modules").is_dir() {
        bail!("the TypeScript SDK is not built (cd clients/typescript && npm ci && npm run build)");
    }
    let a = Agentd::start(env, &[])?;
    let mut c = a.clients().await?;
    let s = c.session().await?;
    let job = c.submit(&s, &format!("flood {n}")).await?;
    c.wait_final(&job, Duration::from_secs(300)).await?;
    let bare = Bare::start(env)?;
    let synthetic = format!("synthetic:{n}");

    let py = |addr: &str, job: &str| {
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(env.repo.join("clients/python/bench/consume.py"))
            .args(["--target", addr, "--job", job])
            .env("PYTHONPATH", env.repo.join("clients/python/src"));
        cmd
    };
    let node = |addr: &str, job: &str| {
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(ts.join("bench/consume.mjs")).args([
            "--url",
            &format!("http://{addr}"),
            "--job",
            job,
        ]);
        cmd
    };
    // agentd's job: started + n lines + finished; the bare stream: n lines + finished.
    let py_ours = consume(py(&a.proc.addr, &job), n + 2).await?;
    let py_base = consume(py(&bare.proc.addr, &synthetic), n + 1).await?;
    let ts_ours = consume(node(&a.proc.addr, &job), n + 2).await?;
    let ts_base = consume(node(&bare.proc.addr, &synthetic), n + 1).await?;
    Ok(vec![
        Metric::new("sdk.python", py_ours, "ev/s")
            .baseline(py_base)
            .goal(Goal::RatioAtLeast(2.0)),
        Metric::new("sdk.typescript", ts_ours, "ev/s")
            .baseline(ts_base)
            .goal(Goal::RatioAtLeast(2.0)),
    ])
}
