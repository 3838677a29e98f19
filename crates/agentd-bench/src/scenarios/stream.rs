//! Events from the agent's stdout to subscribers: latency, throughput, fan-out, replay.

use crate::harness::{Agentd, Bare, Clients, Env, mono_ns, ms, percentile, stamp, succeeded, text};
use crate::report::{Goal, Metric};
use anyhow::{Result, bail, ensure};
use std::time::Duration;

/// Per tick line received: arrival − stamp.
fn tick_latencies(lat: &mut Vec<u64>) -> impl FnMut(u64, &[agentd::pb::JobEvent]) + '_ {
    move |now, evs| {
        for e in evs {
            if let Some(t) = text(e).and_then(|l| stamp(l, "t")) {
                lat.push(now.saturating_sub(t));
            }
        }
    }
}

pub async fn latency(env: &Env) -> Result<Vec<Metric>> {
    let n = env.size(100, 1000);
    let script = format!("ticks 10000 {n} 0");

    let bare = Bare::start(env)?;
    let mut base = Vec::with_capacity(n);
    let f = bare
        .clients()
        .await?
        .follow(&format!("child:{script}"), tick_latencies(&mut base))
        .await?;
    succeeded(&f)?;
    drop(bare);

    let a = Agentd::start(env, &[])?;
    let mut c = a.clients().await?;
    let s = c.session().await?;
    let mut ours = Vec::with_capacity(n);
    succeeded(&c.run(&s, &script, tick_latencies(&mut ours)).await?)?;

    ensure!(
        ours.len() == n && base.len() == n,
        "expected {n} ticks, got {} (agentd) and {} (bare)",
        ours.len(),
        base.len()
    );
    Ok(vec![
        Metric::new("latency.p50", ms(percentile(&mut ours, 50.0)), "ms")
            .baseline(ms(percentile(&mut base, 50.0)))
            .goal(Goal::RatioAtMost(1.5)),
        Metric::new("latency.p99", ms(percentile(&mut ours, 99.0)), "ms")
            .baseline(ms(percentile(&mut base, 99.0)))
            .goal(Goal::RatioAtMost(2.0)),
    ])
}

/// Counts flood lines and notes when the last one arrived.
fn count_flood<'a>(
    count: &'a mut u64,
    last: &'a mut u64,
) -> impl FnMut(u64, &[agentd::pb::JobEvent]) + 'a {
    move |now, evs| {
        let k = evs
            .iter()
            .filter(|e| text(e).is_some_and(|t| t.starts_with('x')))
            .count() as u64;
        if k > 0 {
            *count += k;
            *last = now;
        }
    }
}

pub async fn throughput(env: &Env) -> Result<Vec<Metric>> {
    let n: u64 = env.size(20_000, 500_000);
    let script = format!("flood {n}");

    let bare = Bare::start(env)?;
    let mut bc = bare.clients().await?;
    let (mut count, mut last) = (0, 0);
    let start = mono_ns();
    succeeded(
        &bc.follow(
            &format!("child:{script}"),
            count_flood(&mut count, &mut last),
        )
        .await?,
    )?;
    ensure!(count == n, "bare relay delivered {count} of {n} lines");
    let base = n as f64 / ((last - start) as f64 / 1e9);
    drop(bare);

    let a = Agentd::start(env, &[])?;
    let mut c = a.clients().await?;
    let s = c.session().await?;
    let (mut count, mut last) = (0, 0);
    let start = mono_ns();
    succeeded(
        &c.run(&s, &script, count_flood(&mut count, &mut last))
            .await?,
    )?;
    ensure!(count == n, "agentd delivered {count} of {n} lines");
    let ours = n as f64 / ((last - start) as f64 / 1e9);
    Ok(vec![
        Metric::new("throughput", ours, "ev/s")
            .baseline(base)
            .goal(Goal::RatioAtLeast(0.5)),
    ])
}

pub async fn fanout(env: &Env) -> Result<Vec<Metric>> {
    let subscribers: usize = env.size(50, 1000);
    let seconds: u64 = env.size(1, 3);
    let delay_ms: u64 = env.size(500, 2000);
    let a = Agentd::start(env, &[])?;
    let mut c = a.clients().await?;
    let s = c.session().await?;
    let job = c
        .submit(&s, &format!("ticks 1000 {} {delay_ms}", seconds * 1000))
        .await?;
    // At most 100 streams per connection, as a client library would spread them.
    let mut conns = Vec::new();
    for _ in 0..subscribers.div_ceil(100) {
        conns.push(Clients::new(a.proc.channel().await?));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..subscribers {
        let mut c = conns[i % conns.len()].clone();
        let job = job.clone();
        tasks.spawn(async move {
            let mut first = None;
            let mut seen = Vec::with_capacity(4096);
            let f = c
                .follow(&job, |now, evs| {
                    first.get_or_insert(now);
                    for e in evs {
                        if let Some(t) = text(e).and_then(|l| stamp(l, "t")) {
                            seen.push((t, now.saturating_sub(t)));
                        }
                    }
                })
                .await?;
            succeeded(&f)?;
            anyhow::Ok((first.unwrap_or(u64::MAX), seen))
        });
    }
    let mut all = Vec::with_capacity(subscribers);
    while let Some(r) = tasks.join_next().await {
        all.push(r??);
    }
    // Count only lines stamped after every subscriber was attached (had its first message), so
    // that replay to late subscribers does not count as delivery latency.
    let attached = all.iter().map(|(f, _)| *f).max().unwrap_or(0);
    let mut lat: Vec<u64> = all
        .iter()
        .flat_map(|(_, seen)| seen.iter().filter(|(t, _)| *t > attached).map(|(_, l)| *l))
        .collect();
    if lat.len() < subscribers * (seconds as usize * 1000) / 2 {
        bail!(
            "only {} deliveries after every subscriber attached (raise the delay)",
            lat.len()
        );
    }
    Ok(vec![
        Metric::new(
            &format!("fanout.{subscribers}subs.p50"),
            ms(percentile(&mut lat, 50.0)),
            "ms",
        ),
        Metric::new(
            &format!("fanout.{subscribers}subs.p99"),
            ms(percentile(&mut lat, 99.0)),
            "ms",
        )
        .goal(Goal::AtMost(20.0)),
    ])
}

pub async fn replay(env: &Env) -> Result<Vec<Metric>> {
    let n: u64 = env.size(50_000, 1_000_000);
    let max = (n + 10).to_string();
    let a = Agentd::start(env, &["--job-output-max-events", &max])?;
    let mut c = a.clients().await?;
    let s = c.session().await?;
    let job = c.submit(&s, &format!("flood {n}")).await?;
    let j = c.wait_final(&job, Duration::from_secs(600)).await?;
    ensure!(
        j.state == agentd::pb::JobState::Succeeded as i32,
        "flood job ended {:?}: {}",
        j.state,
        j.error_message
    );
    let mut count = 0u64;
    let start = mono_ns();
    succeeded(&c.follow(&job, |_, evs| count += evs.len() as u64).await?)?;
    let secs = (mono_ns() - start) as f64 / 1e9;
    // started + n lines + finished
    ensure!(
        count == n + 2,
        "replayed {count} events, expected {}",
        n + 2
    );
    Ok(vec![
        Metric::new("replay", count as f64 / secs, "ev/s").goal(Goal::AtLeast(500_000.0)),
    ])
}
