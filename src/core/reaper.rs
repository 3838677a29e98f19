//! The TTL reaper: deletes expired sessions (rows and workspace) that have no running job.

use super::Core;
use crate::domain::Timestamp;
use std::sync::Arc;

impl Core {
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
                        if self.running_job_of(&s.id).is_some() || self.is_deleting(&s.id) {
                            continue;
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
        }
    }
}
