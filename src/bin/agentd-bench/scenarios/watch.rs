//! Issue #19: many WatchJobs streams following one tenant while its jobs finish. Measures how
//! long after a change is stored each watcher receives it (store clock to watcher clock: both
//! are this machine's wall clock).

use crate::harness::{Agentd, Env, ms, percentile};
use crate::report::{Goal, Metric};
use agentd::pb;
use anyhow::{Context, Result, ensure};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn ts_ns(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

/// Follows from `cursor` until `jobs` final changes arrived; returns each change's delay (ns).
async fn watcher(
    mut c: pb::job_service_client::JobServiceClient<tonic::transport::Channel>,
    cursor: u64,
    jobs: usize,
) -> Result<Vec<u64>> {
    let mut s = c
        .watch_jobs(pb::WatchJobsRequest {
            after_cursor: Some(cursor),
            ..Default::default()
        })
        .await?
        .into_inner();
    let (mut delays, mut finals) = (Vec::new(), 0);
    while finals < jobs {
        let msg = tokio::time::timeout(Duration::from_secs(300), s.message())
            .await
            .context("watcher starved for 300 s")??
            .context("watch stream ended")?;
        let now = wall_ns();
        for ch in &msg.changes {
            let at = ch.time.as_ref().context("change without time")?;
            delays.push(u64::try_from(now - ts_ns(at)).unwrap_or(0));
            let state = ch.job.as_ref().map_or(0, |j| j.state);
            if state >= pb::JobState::Succeeded as i32 {
                finals += 1;
            }
        }
    }
    Ok(delays)
}

pub async fn watch(env: &Env) -> Result<Vec<Metric>> {
    let (jobs, watchers, sessions) = (env.size(100, 1000), env.size(10, 100), env.size(10, 50));
    let a = Agentd::start(env, &[])?;
    let mut c = a.clients().await?;
    let mut ids = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        ids.push(c.session().await?);
    }
    // The present cursor: a watch from now starts with a keepalive that carries it.
    let mut first = c
        .jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await?
        .into_inner();
    let start = first.message().await?.context("no first message")?.cursor;
    drop(first);
    let mut tasks = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        tasks.push(tokio::spawn(watcher(c.jobs.clone(), start, jobs)));
    }
    let t0 = std::time::Instant::now();
    for i in 0..jobs {
        c.submit(&ids[i % sessions], "hello").await?;
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let took = t0.elapsed().as_secs_f64();
    ensure!(all.len() >= jobs * watchers, "watchers saw too few changes");
    Ok(vec![
        Metric::new(
            "watch.change_to_watcher.p50",
            ms(percentile(&mut all, 50.0)),
            "ms",
        )
        .goal(Goal::None),
        Metric::new(
            "watch.change_to_watcher.p99",
            ms(percentile(&mut all, 99.0)),
            "ms",
        )
        .goal(Goal::AtMost(20.0)),
        Metric::new("watch.jobs_per_s", jobs as f64 / took, "jobs/s").goal(Goal::None),
    ])
}
