//! The reaper: deletes expired sessions (rows and workspace) that have no running job, and prunes
//! the events of finished jobs older than the retention period.

use super::Core;
use crate::domain::Timestamp;
use std::sync::Arc;

/// Rows deleted per prune call, so one sweep never holds the store's writer for long.
const PRUNE_BATCH: usize = 10_000;

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
            match self.store.expired_sessions(Timestamp::now(), 100).await {
                Ok(expired) => {
                    for s in expired {
                        // A running job keeps its session alive; its end extends the expiry.
                        if self.is_deleting(&s.id) {
                            continue;
                        }
                        match self.running_job_of(&s.id).await {
                            Ok(None) => {}
                            Ok(Some(_)) => continue,
                            Err(e) => {
                                tracing::warn!(session = %s.id, error = %e, "cannot check for a running job");
                                continue;
                            }
                        }
                        match self.delete_session_inner(&s.id, "session expired").await {
                            Ok(_) => tracing::info!(session = %s.id, "expired session deleted"),
                            Err(e) => {
                                tracing::warn!(session = %s.id, error = %e, "cannot delete expired session")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list expired sessions"),
            }
            self.prune_events().await;
        }
    }
}
