//! Issue #23: running jobs survive a restart of agentd. N jobs stream a line every 20 ms; agentd
//! is killed with SIGKILL and started again on the same data dir; measured is the time from the
//! new process's start to every job adopted and streaming again (each has stored a line the old
//! process never saw), and every job's lines are counted once finished (lost must be 0).

use crate::harness::{Agentd, Env, mono_ns, ms, succeeded};
use crate::report::{Goal, Metric};
use agentd::pb;
use anyhow::{Context, Result, ensure};
use std::time::Duration;

/// Lines per job, one every 20 ms: long enough to outlive the restart.
const LINES: u64 = 400;

pub async fn restart(env: &Env) -> Result<Vec<Metric>> {
    let mut out = Vec::new();
    for n in [1, env.size(10, 100)] {
        out.extend(restart_with(env, n).await?);
    }
    Ok(out)
}

async fn restart_with(env: &Env, n: usize) -> Result<Vec<Metric>> {
    let cap = (n + 1).to_string();
    let extra = ["--on-shutdown", "keep", "--max-concurrent-jobs", &cap];
    let mut a = Agentd::start(env, &extra)?;
    // The baseline: the same restart with no job to adopt.
    let t0 = mono_ns();
    a.restart_after_kill9(env, &extra)?;
    let mut c = a.clients().await?;
    c.session().await?;
    let plain = mono_ns() - t0;
    let mut jobs = Vec::with_capacity(n);
    for _ in 0..n {
        let s = c.session().await?;
        jobs.push(c.submit(&s, &format!("ticks 20000 {LINES} 0")).await?);
    }
    // Every job running and streaming before the kill.
    let mut before = vec![0u64; n];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while before.iter().any(|&s| s < 3) {
        ensure!(tokio::time::Instant::now() < deadline, "jobs did not start");
        for (i, j) in jobs.iter().enumerate() {
            before[i] = last_seq(&mut c, j).await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = mono_ns();
    a.restart_after_kill9(env, &extra)?;
    let mut c = a.clients().await?;
    // Streaming again: each job stored past what it had when the old process died... and past
    // what the journal replay alone restores, by one more line per job.
    let mut seen = vec![false; n];
    let mut floor = vec![0u64; n];
    for (i, j) in jobs.iter().enumerate() {
        floor[i] = last_seq(&mut c, j).await?.max(before[i]);
    }
    while seen.iter().any(|s| !s) {
        for (i, j) in jobs.iter().enumerate() {
            if !seen[i] && last_seq(&mut c, j).await? > floor[i] {
                seen[i] = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let adopted = mono_ns() - t0;
    let mut lost = 0u64;
    for j in &jobs {
        let mut lines = 0u64;
        let fin = c
            .follow(j, |_, evs| {
                lines += evs.iter().filter(|e| is_line(e)).count() as u64;
            })
            .await?;
        succeeded(&fin).with_context(|| format!("job {j}"))?;
        lost += LINES.saturating_sub(lines);
        ensure!(
            lines <= LINES,
            "job {j} has {lines} lines of {LINES}: duplicates"
        );
    }
    Ok(vec![
        Metric::new(
            &format!("restart N={n}: start → all adopted and streaming"),
            ms(adopted),
            "ms",
        )
        .baseline(ms(plain)),
        Metric::new(
            &format!("restart N={n}: events lost"),
            lost as f64,
            "events",
        )
        .goal(Goal::AtMost(0.0)),
    ])
}

async fn last_seq(c: &mut crate::harness::Clients, job: &str) -> Result<u64> {
    Ok(c.jobs
        .get_job(pb::GetJobRequest { job_id: job.into() })
        .await?
        .into_inner()
        .job
        .context("no job")?
        .last_seq)
}

/// An output line of the stand-in's `ticks` (the command profile makes a text event of it).
fn is_line(e: &pb::JobEvent) -> bool {
    crate::harness::text(e).is_some_and(|t| t.starts_with("t "))
}
