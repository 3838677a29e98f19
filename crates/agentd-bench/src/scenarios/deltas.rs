//! `stream_deltas` (#20): what the text deltas cost the events that were there before, and how
//! fast a delta reaches a subscriber. The stand-in agent speaks Claude stream-json as a `claude`
//! profile: one job without deltas ("before"), one with a delta before each text ("after"), in
//! the same run.

use crate::harness::{Agentd, Env, mono_ns, ms, percentile, stamp, succeeded, text};
use crate::report::{Goal, Metric};
use agentd::pb;
use anyhow::{Context, Result, anyhow, ensure};

/// Arrival − stamp of every text event (`t <ns>`) and every delta (`d <ns> `, merged ones
/// counted by their first stamp).
#[derive(Default)]
struct Seen {
    text: Vec<u64>,
    delta: Vec<u64>,
}

async fn run_job(a: &Agentd, n: usize, deltas: bool) -> Result<Seen> {
    let mut c = a.clients().await?;
    let s = c.session().await?;
    let mut stream = c
        .jobs
        .run_job(pb::RunJobRequest {
            job: Some(pb::SubmitJobRequest {
                session_id: s,
                agent: "claude".into(),
                prompt: format!("claude 10000 {n} {}", u8::from(deltas)),
                stream_deltas: deltas,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let mut seen = Seen::default();
    while let Some(msg) = stream.message().await? {
        let now = mono_ns();
        for e in &msg.events {
            if let Some(t) = text(e).and_then(|l| stamp(l, "t")) {
                seen.text.push(now.saturating_sub(t));
            }
            if let Some(pb::job_event::Kind::TextDelta(d)) = &e.kind
                && let Some(t) = stamp(&d.text, "d")
            {
                seen.delta.push(now.saturating_sub(t));
            }
            if let Some(pb::job_event::Kind::Finished(f)) = &e.kind {
                succeeded(f)?;
                return Ok(seen);
            }
        }
    }
    Err(anyhow!("RunJob stream ended before its finished event"))
}

pub async fn deltas(env: &Env) -> Result<Vec<Metric>> {
    let n = env.size(100, 1000);
    let toml = format!(
        "[agents.claude]\nkind = \"claude\"\ncommand = {:?}\nargs = [\"__agent\"]\n",
        env.me.display().to_string()
    );
    let a = Agentd::start_with(env, &toml, &[])?;
    let mut before = run_job(&a, n, false).await.context("job without deltas")?;
    let mut after = run_job(&a, n, true).await.context("job with deltas")?;
    ensure!(
        before.text.len() == n && after.text.len() == n,
        "expected {n} texts, got {} and {}",
        before.text.len(),
        after.text.len()
    );
    ensure!(!after.delta.is_empty(), "no delta arrived");
    let base = ms(percentile(&mut before.text, 50.0));
    Ok(vec![
        Metric::new(
            "deltas.text.p50",
            ms(percentile(&mut after.text, 50.0)),
            "ms",
        )
        .baseline(base)
        .goal(Goal::RatioAtMost(1.5)),
        Metric::new(
            "deltas.delta.p50",
            ms(percentile(&mut after.delta, 50.0)),
            "ms",
        )
        .baseline(base)
        .goal(Goal::AtMost(2.0)),
    ])
}
