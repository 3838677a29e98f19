//! Sharing the work with other replicas through the store: claiming runnable jobs (the dispatcher),
//! renewing this replica's leases and settling the jobs of replicas whose leases ran out (the lease
//! keeper), and acting on what other replicas committed (store signals).
//!
//! Nothing here trusts a signal: a lost wake-up only delays things until the next poll tick, and a
//! replica that is slow rather than dead is fenced off by the store, which refuses writes to a job
//! another replica already finished.

use super::{Core, RunHandle, lock};
use crate::domain::{JobId, JobState, Timestamp};
use crate::error::Result;
use crate::store::{Claimed, Orphan, StoreSignal};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// How often the dispatcher looks for runnable jobs without being woken: other replicas' queue
/// changes arrive as signals, so this only bounds the delay after a lost signal.
const POLL_SHARED: Duration = Duration::from_secs(1);
/// With an unshared store every queue change happens in this process and wakes the dispatcher.
const POLL_LOCAL: Duration = Duration::from_secs(5);
/// Orphans settled per lease-keeper tick at most.
const ORPHAN_BATCH: usize = 100;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Core {
    pub(super) fn lease_until(&self) -> Timestamp {
        Timestamp::now().saturating_add(self.config.timing.lease)
    }

    /// Claims and starts every job this replica may run, whenever woken or at each poll tick.
    pub(super) async fn dispatch(self: Arc<Self>) {
        let poll = if self.store.shared() {
            POLL_SHARED
        } else {
            POLL_LOCAL
        };
        loop {
            {
                let _turn = self.dispatching.lock().await;
                match self.claim_free().await {
                    Ok(claims) => {
                        for c in claims {
                            self.start_claimed(c);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot claim jobs"),
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = self.shutdown.triggered() => return,
            }
        }
    }

    /// Claims runnable jobs for this replica's free slots (none while shutting down), the least
    /// busy tenant first and none beyond a tenant's running cap (`Store::claim_jobs_within`).
    /// Callers hold `dispatching` until they have started what they claimed
    /// ([`Core::start_claimed`]), so that two claims never count the same free slot.
    pub(super) async fn claim_free(&self) -> Result<Vec<Claimed>> {
        if !self.accepting.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let free = self
            .config
            .limits
            .max_concurrent_jobs
            .saturating_sub(lock(&self.running).len());
        if free == 0 {
            return Ok(Vec::new());
        }
        self.store
            .claim_jobs_within(
                &self.config.replica_id,
                self.lease_until(),
                free,
                self.config.limits.tenant_max_running_jobs,
            )
            .await
    }

    pub(super) fn start_claimed(self: &Arc<Self>, claimed: Claimed) {
        let Claimed {
            job,
            cancel_reason,
            start,
        } = claimed;
        self.spawn_running(job.id.clone(), cancel_reason, |core, handle| async move {
            core.run_job(job, &handle, start).await;
        });
    }

    /// Runs job `id` here, claimed or adopted alike: registers its handle in `running` (where
    /// cancel and control find it; `cancel_reason` cancels it before `run` starts), spawns
    /// `run` on the shutdown tracker, and once `run` has stored the job's end takes the job out
    /// of `running`, marks it done and wakes the dispatcher.
    pub(super) fn spawn_running<F, Fut>(
        self: &Arc<Self>,
        id: JobId,
        cancel_reason: Option<String>,
        run: F,
    ) where
        F: FnOnce(Arc<Self>, RunHandle) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (done_tx, done_rx) = watch::channel(false);
        let handle = RunHandle {
            control: Arc::default(),
            cancel: CancellationToken::new(),
            reason: Arc::new(OnceLock::new()),
            done: done_rx,
        };
        if let Some(reason) = cancel_reason {
            let _ = handle.reason.set(reason);
            handle.cancel.cancel();
        }
        lock(&self.running).insert(id.clone(), handle.clone());
        let run = run(Arc::clone(self), handle);
        let core = Arc::clone(self);
        self.shutdown.spawn(async move {
            run.await;
            lock(&core.running).remove(&id);
            let _ = done_tx.send(true);
            // A slot and the job's session are free again.
            core.wake.notify_one();
        });
    }

    /// Renews this replica's leases every third of the lease, cancels local jobs another replica
    /// took over, picks up cancel requests whose signal was missed, and settles orphans.
    pub(super) async fn keep_leases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.timing.lease / 3);
        let mut suspects = HashSet::new();
        let mut unrun = HashSet::new();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.triggered() => return,
            }
            if let Some(owned) = self.renew(&mut suspects).await {
                self.settle_unrun(&owned, &mut unrun).await;
            }
            self.poll_cancel_requests().await;
            self.settle_orphans(Timestamp::now()).await;
        }
    }

    /// `suspects` carries, from one renewal to the next, the running jobs that were missing from
    /// the renewed set: a job that just finished here normally is also missing for the moment
    /// between its final write and its removal from `running`, so only a job missing twice in a
    /// row (a third of a lease apart) and finished in the store counts as taken away.
    /// Returns the jobs whose lease was renewed.
    async fn renew(&self, suspects: &mut HashSet<JobId>) -> Option<HashSet<JobId>> {
        let owned = match self
            .store
            .renew_leases(&self.config.replica_id, self.lease_until())
            .await
        {
            Ok(ids) => ids.into_iter().collect::<HashSet<JobId>>(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew job leases");
                return None;
            }
        };
        // A job that is running here but no longer ours was settled by another replica (our lease
        // ran out, e.g. while the store was unreachable): stop the agent, its result would be refused.
        // Jobs claimed in the last moment are in `owned` since the claim precedes the renewal.
        let missing: HashSet<JobId> = lock(&self.running)
            .keys()
            .filter(|j| !owned.contains(*j))
            .cloned()
            .collect();
        for job in missing.intersection(suspects) {
            if let Ok(Some(j)) = self.store.get_job(job).await
                && j.state.is_finished()
                && self.is_running_here(job)
            {
                tracing::warn!(job = %job, "lost the lease on a running job: stopping its agent");
                self.cancel_running(job, "this replica lost its lease on the job");
            }
        }
        *suspects = missing;
        Some(owned)
    }

    /// Fails the jobs this replica holds in the store but runs no more: a run whose end could
    /// not be stored (the store was unavailable until `settle_failed` gave up). Nobody else
    /// would settle them, since the renewals keep their leases alive; they stayed RUNNING until
    /// a restart. `unrun` carries the ones seen at the last renewal: a job is registered as
    /// running right after its claim commits, so only one missing twice in a row (a third of a
    /// lease apart) is taken for one whose run ended.
    async fn settle_unrun(&self, owned: &HashSet<JobId>, unrun: &mut HashSet<JobId>) {
        let now: HashSet<JobId> = owned
            .iter()
            .filter(|j| !self.is_running_here(j))
            .cloned()
            .collect();
        for job in now.intersection(unrun) {
            tracing::warn!(job = %job, "a job ended here without its end stored: failing it");
            self.settle_failed(
                job,
                Vec::new(),
                "the job ended while the store was unavailable, and how it ended could not be \
                 recorded"
                    .into(),
            )
            .await;
        }
        *unrun = now;
    }

    async fn poll_cancel_requests(&self) {
        match self.store.cancel_requests(&self.config.replica_id).await {
            Ok(reqs) => {
                for (job, reason) in reqs {
                    self.cancel_running(&job, &reason);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read cancel requests"),
        }
    }

    /// Settles jobs whose owner's lease ended before `now`: a started job cannot be resumed by
    /// anyone else (its agent ran on the lost replica), so it fails naming that replica; a claimed
    /// job that had not started goes back to the queue for any replica. Returns whether a full
    /// batch was found (there may be more).
    pub(super) async fn settle_orphans(&self, now: Timestamp) -> bool {
        let running_before = Timestamp(now.micros().saturating_sub(micros(self.adoption_grace())));
        let orphans = match self
            .store
            .expired_leases_within(now, running_before, ORPHAN_BATCH)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list expired leases");
                return false;
            }
        };
        let full = orphans.len() == ORPHAN_BATCH;
        let mut released = false;
        for orphan in orphans {
            released |= self.settle(orphan).await;
        }
        if released {
            self.wake.notify_one();
        }
        full
    }

    /// How long after its lease ran out a started job may still be running under a supervisor
    /// that outlived its replica (issue #23): that replica, restarted, adopts it until the
    /// supervisor's adopt timeout, after which the supervisor has ended the tree itself. Failing
    /// it sooner would fail a job that is still running. Zero with an unshared store, whose only
    /// process has adopted what it could before recovery, or when supervisors die with agentd.
    fn adoption_grace(&self) -> Duration {
        match self.config.timing.adopt_timeout {
            Some(t) if self.store.shared() => t + self.config.timing.kill_grace,
            _ => Duration::ZERO,
        }
    }

    /// Returns whether the job went back to the queue.
    async fn settle(&self, orphan: Orphan) -> bool {
        let (job, owner, lease_until) = (&orphan.job, &orphan.owner, orphan.lease_until);
        if *owner == self.config.replica_id && self.is_running_here(&job.id) {
            // Our own lease expired while we still run it (store trouble): the next renewal
            // takes it back if nobody settled it meanwhile.
            return false;
        }
        match job.state {
            JobState::Queued => match self.store.release_job(&job.id, owner).await {
                Ok(released) => {
                    if released {
                        tracing::warn!(job = %job.id, replica = %owner, "replica lost before starting a claimed job: queued again");
                    }
                    released
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot release an orphaned job");
                    false
                }
            },
            JobState::Running { started } => {
                // Fenced by the lease generation: a job its replica adopted again meanwhile
                // (restarted, issue #23) moved on a generation, and is not failed here.
                match self
                    .store
                    .take_over_orphan(&orphan, &self.config.replica_id, self.lease_until())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return false,
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %e, "cannot take over an orphaned job");
                        return false;
                    }
                }
                let message = if self.store.shared() {
                    let adopt = if self.adoption_grace().is_zero() {
                        ""
                    } else {
                        " (and it did not come back to adopt the job within the adopt timeout)"
                    };
                    format!(
                        "replica {owner} was lost while running the job: its lease ran out {:.1}s \
                         before another replica noticed{adopt}",
                        Timestamp::now().since(lease_until).as_secs_f64()
                    )
                } else {
                    "the server restarted while the job was running".to_owned()
                };
                match self.fail_interrupted(job, started, message).await {
                    Ok(()) => {
                        tracing::warn!(job = %job.id, replica = %owner, "marked an interrupted job FAILED")
                    }
                    // Another replica settled it first, or the owner wrote meanwhile (then it is
                    // alive and renews; a later tick looks again).
                    Err(e) => tracing::debug!(job = %job.id, error = %e, "orphan not settled"),
                }
                false
            }
            JobState::Finished(_) => false,
        }
    }

    /// Acts on other replicas' commits: wakes this replica's readers and dispatcher, and stops
    /// jobs this replica runs when someone asked to cancel them.
    pub(super) async fn follow_signals(self: Arc<Self>, mut rx: broadcast::Receiver<StoreSignal>) {
        loop {
            let signal = tokio::select! {
                s = rx.recv() => s,
                _ = self.shutdown.triggered() => return,
            };
            match signal {
                Ok(StoreSignal::Events { job, seq }) => self.events.notify(&job, seq),
                Ok(StoreSignal::JobsChanged) => self.wake.notify_one(),
                Ok(StoreSignal::JobChanges) => self.events.job_changed(),
                Ok(StoreSignal::Control { job }) => {
                    if self.is_running_here(&job) {
                        self.control_wake.notify_one();
                    }
                }
                Ok(StoreSignal::CancelRequested { job, reason }) => {
                    self.cancel_running(&job, &reason);
                }
                Ok(StoreSignal::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.events.notify_all();
                    self.events.job_changed();
                    self.wake.notify_one();
                    self.poll_cancel_requests().await;
                    self.control_wake.notify_one();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
