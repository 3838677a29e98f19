//! Store health behind `grpc.health.v1`: a cheap read probe and a write probe (through the store's
//! writer) run on their own schedules; the store-backed services turn NOT_SERVING only after
//! `--health-probe-failures` consecutive failures of one probe, and back to SERVING on that probe's
//! first success. A single slow probe under load is therefore not an outage. Also refreshes the
//! queued-jobs gauge, on its own task so that a slow count never delays a probe.

use crate::domain::{JobState, Timestamp};
use crate::error::Result;
use crate::store::DynStore;
use crate::telemetry::metrics;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often each probe runs; a probe that takes longer than its interval counts as failed.
#[derive(Debug, Clone, Copy)]
pub struct ProbeTiming {
    pub read: Duration,
    pub write: Duration,
    pub queue_gauge: Duration,
}

impl Default for ProbeTiming {
    fn default() -> Self {
        Self {
            read: Duration::from_secs(10),
            write: Duration::from_secs(30),
            queue_gauge: Duration::from_secs(10),
        }
    }
}

/// The two probes, each with its own run of failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Read,
    Write,
}

/// Decides health from probe outcomes: unhealthy while any probe has failed `threshold` times in
/// a row.
#[derive(Debug)]
pub struct Verdict {
    threshold: u32,
    failures: [u32; 2],
    serving: bool,
}

impl Verdict {
    /// Starts SERVING: the store just opened, or the server would not be starting.
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: [0; 2],
            serving: true,
        }
    }

    /// Records one outcome; returns the new serving state when it changed.
    pub fn record(&mut self, probe: Probe, ok: bool) -> Option<bool> {
        let run = &mut self.failures[probe as usize];
        *run = if ok { 0 } else { run.saturating_add(1) };
        let serving = self.failures.iter().all(|&f| f < self.threshold);
        (serving != self.serving).then(|| {
            self.serving = serving;
            serving
        })
    }
}

/// Health names that need the store: these go NOT_SERVING while it fails. The server chooses them
/// (ServerInfo answers from memory and stays SERVING).
pub type StoreServices = &'static [&'static str];

/// Starts the probes and the gauge refresh; the returned task ends once `stop` is cancelled and
/// all of them have stopped.
pub fn spawn(
    health: HealthReporter,
    services: StoreServices,
    store: DynStore,
    failures: u32,
    timing: ProbeTiming,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let reporter = Arc::new(Reporter {
        health,
        services,
        verdict: Mutex::new(Verdict::new(failures)),
        stop: stop.clone(),
    });
    metrics().set_store_up(true);
    let mut tasks = JoinSet::new();
    let s = store.clone();
    tasks.spawn(reporter.clone().run(Probe::Read, timing.read, move || {
        let s = s.clone();
        async move { read_probe(&s).await }
    }));
    let s = store.clone();
    tasks.spawn(reporter.run(Probe::Write, timing.write, move || {
        let s = s.clone();
        async move { s.append(Vec::new()).await }
    }));
    tasks.spawn(refresh_queue_gauge(store, timing.queue_gauge, stop));
    tokio::spawn(async move { while tasks.join_next().await.is_some() {} })
}

/// A read that touches the store's read path and an index but returns nothing.
async fn read_probe(store: &DynStore) -> Result<()> {
    store.expired_sessions(Timestamp(i64::MIN), 1).await?;
    Ok(())
}

async fn refresh_queue_gauge(store: DynStore, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        match store.unfinished_jobs().await {
            Ok(jobs) => metrics().set_queued(
                jobs.iter()
                    .filter(|j| matches!(j.state, JobState::Queued))
                    .count(),
            ),
            Err(e) => tracing::debug!(error = %e, "cannot count queued jobs"),
        }
    }
}

struct Reporter {
    health: HealthReporter,
    services: StoreServices,
    /// Held across the status update, so two probes' changes are published in order.
    verdict: Mutex<Verdict>,
    stop: CancellationToken,
}

impl Reporter {
    async fn run<F, Fut>(self: Arc<Self>, probe: Probe, every: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.stop.cancelled() => return,
            }
            let ok = match tokio::time::timeout(every, check()).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(probe = ?probe, error = %e, "store probe failed");
                    false
                }
                Err(_) => {
                    tracing::warn!(probe = ?probe, "store probe timed out");
                    false
                }
            };
            metrics().set_store_up(ok);
            let mut verdict = self.verdict.lock().await;
            // After shutdown began the server owns the status (everything NOT_SERVING).
            if let Some(serving) = verdict.record(probe, ok)
                && !self.stop.is_cancelled()
            {
                let status = if serving {
                    tracing::info!("store usable again: health SERVING");
                    ServingStatus::Serving
                } else {
                    tracing::error!(probe = ?probe, "store probes keep failing: health NOT_SERVING");
                    ServingStatus::NotServing
                };
                for name in self.services {
                    self.health.set_service_status(*name, status).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_server::Health;

    #[test]
    fn not_serving_only_after_consecutive_failures_and_back_on_first_success() {
        let mut v = Verdict::new(3);
        assert_eq!(v.record(Probe::Read, false), None);
        assert_eq!(v.record(Probe::Read, false), None);
        // A success in between restarts the count.
        assert_eq!(v.record(Probe::Read, true), None);
        assert_eq!(v.record(Probe::Read, false), None);
        assert_eq!(v.record(Probe::Read, false), None);
        assert_eq!(v.record(Probe::Read, false), Some(false));
        assert_eq!(v.record(Probe::Read, false), None, "no repeated change");
        assert_eq!(v.record(Probe::Read, true), Some(true));
    }

    #[test]
    fn each_probe_keeps_its_own_count() {
        let mut v = Verdict::new(2);
        // A working read path does not hide a failing writer.
        assert_eq!(v.record(Probe::Write, false), None);
        assert_eq!(v.record(Probe::Read, true), None);
        assert_eq!(v.record(Probe::Write, false), Some(false));
        assert_eq!(v.record(Probe::Read, true), None);
        // Both failing: health returns only once neither is at the threshold.
        assert_eq!(v.record(Probe::Read, false), None);
        assert_eq!(v.record(Probe::Read, false), None);
        assert_eq!(v.record(Probe::Write, true), None, "reads still failing");
        assert_eq!(v.record(Probe::Read, true), Some(true));
    }

    #[test]
    fn a_threshold_below_one_means_one() {
        let mut v = Verdict::new(0);
        assert_eq!(v.record(Probe::Read, false), Some(false));
        assert_eq!(v.record(Probe::Read, true), Some(true));
    }

    async fn status_of(svc: &impl Health, name: &str) -> Wire {
        let req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: name.to_owned(),
        });
        let resp = svc.check(req).await.unwrap().into_inner();
        Wire::try_from(resp.status).unwrap()
    }

    /// The reporter drives the real health service: a flapping probe flips the store-backed
    /// names only after the threshold and leaves the others alone.
    #[tokio::test]
    async fn health_follows_the_probes_per_service() {
        const STORE: &[&str] = &["agentd.v1.JobService", ""];
        let health = HealthReporter::new();
        for name in ["agentd.v1.JobService", "agentd.v1.ServerInfoService", ""] {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let svc = tonic_health::server::HealthService::from_health_reporter(health.clone());
        let stop = CancellationToken::new();
        let reporter = Arc::new(Reporter {
            health,
            services: STORE,
            verdict: Mutex::new(Verdict::new(3)),
            stop: stop.clone(),
        });
        let ok = Arc::new(AtomicBool::new(true));
        let failed = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn(reporter.run(Probe::Read, Duration::from_millis(5), {
            let (ok, failed) = (ok.clone(), failed.clone());
            move || {
                let ok = ok.load(Ordering::SeqCst);
                if !ok {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err(crate::error::Error::internal("disk I/O error"))
                    }
                }
            }
        }));
        let wait_for = |name: &'static str, want: Wire| {
            let svc = &svc;
            async move {
                for _ in 0..500 {
                    if status_of(svc, name).await == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                false
            }
        };
        ok.store(false, Ordering::SeqCst);
        assert!(wait_for("agentd.v1.JobService", Wire::NotServing).await);
        assert!(
            failed.load(Ordering::SeqCst) >= 3,
            "turned NOT_SERVING before three failures"
        );
        assert_eq!(status_of(&svc, "").await, Wire::NotServing);
        assert_eq!(
            status_of(&svc, "agentd.v1.ServerInfoService").await,
            Wire::Serving,
            "info needs no store"
        );
        ok.store(true, Ordering::SeqCst);
        assert!(wait_for("agentd.v1.JobService", Wire::Serving).await);
        assert_eq!(status_of(&svc, "").await, Wire::Serving);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn probes_pass_against_a_real_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        read_probe(&store).await.unwrap();
        store.append(Vec::new()).await.unwrap();
    }
}
