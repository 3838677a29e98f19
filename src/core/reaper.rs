//! The reaper: deletes expired sessions (rows and workspace) that have no queued or running job,
//! and prunes the events of finished jobs older than the retention period.

use super::Core;
use crate::domain::{Session, Timestamp};
use crate::store::JobFilter;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Rows deleted per prune call, so one sweep never holds the store's writer for long.
const PRUNE_BATCH: usize = 10_000;
/// Expired sessions fetched per tick.
const EXPIRED_BATCH: usize = 100;
/// Expired sessions deleted at the same time: one at a time falls behind when many sessions
/// expire together (each deletion waits on the store and on removing a workspace tree), while
/// unbounded would flood the store writer and the blocking pool.
const DELETE_CONCURRENCY: usize = 8;

impl Core {
    async fn prune_events(&self) {
        let retention = self.config.limits.event_retention;
        if retention.is_zero() {
            return;
        }
        let now = Timestamp::now();
        let before = Timestamp(now.micros().saturating_sub(retention.as_micros() as i64));
        loop {
            match self.store.prune_events(before, PRUNE_BATCH).await {
                Ok(n) if (n as usize) < PRUNE_BATCH => return,
                Ok(_) if self.shutdown.is_triggered() => return,
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune events");
                    return;
                }
            }
        }
    }

    pub(super) async fn reap_expired(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.timing.reaper_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.triggered() => return,
            }
            self.reap_once().await;
            self.prune_events().await;
            self.prune_changes().await;
        }
    }

    /// Deletes (or postpones) one batch of expired sessions, [`DELETE_CONCURRENCY`] at a time.
    async fn reap_once(self: &Arc<Self>) {
        let expired = match self
            .store
            .expired_sessions(Timestamp::now(), EXPIRED_BATCH)
            .await
        {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list expired sessions");
                return;
            }
        };
        let mut busy = JoinSet::new();
        for session in expired {
            if self.shutdown.is_triggered() {
                break;
            }
            if busy.len() >= DELETE_CONCURRENCY {
                busy.join_next().await;
            }
            let core = Arc::clone(self);
            busy.spawn(async move { core.reap(session).await });
        }
        while busy.join_next().await.is_some() {}
    }

    async fn reap(&self, s: Session) {
        if self.is_deleting(&s.id) {
            return;
        }
        // A session with work pending is in use: deleting it would cancel a job mid-run (or
        // before it started). Its expiry moves on by one TTL instead, which also keeps it out of
        // the next batches, so it cannot crowd idle expired sessions out of them; a job's end
        // extends it again anyway.
        let pending = JobFilter {
            states: vec!["QUEUED", "RUNNING"],
        };
        match self.store.list_jobs(&s.id, &pending, None, 1).await {
            Ok(jobs) if jobs.is_empty() => {}
            Ok(jobs) => {
                let expires = Timestamp::now().saturating_add(s.ttl);
                match self.store.set_session_expiry(&s.id, expires).await {
                    Ok(()) => tracing::debug!(
                        session = %s.id,
                        job = %jobs[0].id,
                        "expired session has a pending job: expiry moved on"
                    ),
                    Err(e) => {
                        tracing::warn!(session = %s.id, error = %e, "cannot move a busy session's expiry")
                    }
                }
                return;
            }
            Err(e) => {
                tracing::warn!(session = %s.id, error = %e, "cannot check for pending jobs");
                return;
            }
        }
        match self.delete_session_inner(&s.id, "session expired").await {
            Ok(_) => tracing::info!(session = %s.id, "expired session deleted"),
            Err(e) => tracing::warn!(session = %s.id, error = %e, "cannot delete expired session"),
        }
    }
}
