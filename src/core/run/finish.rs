//! The end of a job: its final event and row stored together, the fallback that records a job
//! which failed inside the server (retrying while the store is down), the session's TTL renewal.

use super::sink::{Sink, redact};
use super::{SETTLE_ATTEMPTS, SETTLE_BACKOFF_MAX, SETTLE_BACKOFF_MIN};
use crate::core::Core;
use crate::domain::{
    EventKind, ExitStatus, Finished, JobId, JobState, Outcome, Session, Timestamp, Usage,
};
use crate::error::{Reason, Result};
use crate::store::JobUpdate;
use crate::telemetry::metrics;

/// What the final event and row say.
pub(super) struct FinishFacts {
    pub(super) outcome: Outcome,
    pub(super) exit: Option<ExitStatus>,
    pub(super) result: String,
    pub(super) usage: Usage,
    pub(super) conversation_id: Option<String>,
}

impl FinishFacts {
    pub(super) fn outcome(outcome: Outcome) -> Self {
        Self {
            outcome,
            exit: None,
            result: String::new(),
            usage: Usage::default(),
            conversation_id: None,
        }
    }

    pub(super) fn failed(message: String) -> Self {
        Self::outcome(Outcome::Failed { message })
    }
}

impl Core {
    /// Stores the final event and the final job row together.
    pub(super) async fn finish(
        &self,
        sink: &mut Sink<'_>,
        started: Option<Timestamp>,
        facts: FinishFacts,
    ) -> Result<()> {
        let current = match started {
            Some(s) => JobState::Running { started: s },
            None => JobState::Queued,
        };
        let ended = Timestamp::now();
        let state = current.transition(JobState::Finished(Finished {
            started,
            ended,
            outcome: facts.outcome.clone(),
            exit: facts.exit,
        }))?;
        let mut result = facts.result;
        redact(&mut result, &sink.secrets);
        tracing::info!(job = %sink.job, state = facts.outcome.final_state().name(), exit = ?facts.exit, "job finished");
        let ev = sink.event(
            EventKind::Finished {
                state: facts.outcome.final_state(),
                exit: facts.exit,
                result: result.clone(),
                error_message: facts.outcome.message(),
                usage: facts.usage.clone(),
                reason: facts.outcome.reason().to_owned(),
            },
            None,
        );
        sink.write(
            vec![ev],
            Some(JobUpdate {
                state,
                result,
                usage: facts.usage,
                conversation_id: facts.conversation_id,
            }),
        )
        .await?;
        metrics().job_finished(
            facts.outcome.final_state().name(),
            started.map(|s| ended.since(s)),
        );
        Ok(())
    }

    /// Records a job that failed inside the server as FAILED. The store may be what failed, and
    /// events the sink numbered may never have been stored, so each attempt starts from the
    /// stored row (its last seq and start time); attempts repeat with backoff while the store
    /// fails, since a job left RUNNING would never end for its watchers and waiters.
    pub(in crate::core) async fn settle_failed(
        &self,
        id: &JobId,
        secrets: Vec<String>,
        message: String,
    ) {
        let mut delay = SETTLE_BACKOFF_MIN;
        for _ in 0..SETTLE_ATTEMPTS {
            let attempt = match self.store.get_job(id).await {
                Ok(Some(job)) if !job.state.is_finished() => {
                    let started = match job.state {
                        JobState::Running { started } => Some(started),
                        _ => None,
                    };
                    let mut sink = Sink {
                        core: self,
                        job: id.clone(),
                        next_seq: job.last_seq + 1,
                        secrets: secrets.clone(),
                    };
                    let mut facts = FinishFacts::failed(message.clone());
                    facts.result = job.result;
                    facts.usage = job.usage;
                    facts.conversation_id = job.conversation_id;
                    self.finish(&mut sink, started, facts).await
                }
                // Finished (settled elsewhere) or deleted meanwhile.
                Ok(_) => return,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(()) => return,
                Err(e) if e.reason() == Reason::JobFinished => return,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "cannot record the job's failure yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(SETTLE_BACKOFF_MAX);
                }
            }
        }
        tracing::error!(job = %id, "gave up recording the job's failure; it is settled at restart or when its lease expires");
    }

    pub(super) async fn extend_session(&self, session: &Session) {
        let expires = Timestamp::now().saturating_add(session.ttl);
        if expires > session.expires
            && let Err(e) = self.store.set_session_expiry(&session.id, expires).await
        {
            tracing::warn!(session = %session.id, error = %e, "cannot extend session expiry");
        }
    }
}
