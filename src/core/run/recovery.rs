//! Start-up recovery: jobs a previous process of this store left unfinished.

use super::finish::FinishFacts;
use super::sink::Sink;
use crate::core::Core;
use crate::domain::{EventKind, Job, JobState, Outcome, Timestamp};
use crate::error::Result;

impl Core {
    /// Start-up recovery. With an unshared store every unfinished job was this process's before
    /// it stopped: started ones can't be resumed (their agent died with it) and fail with a
    /// reason, claimed ones go back to the queue. A shared store leaves other replicas' jobs to
    /// lease expiry, since those replicas are alive and own them; only this replica's own are
    /// settled here.
    pub(in crate::core) async fn recover(&self) -> Result<()> {
        if self.store.shared() {
            return self.recover_own().await;
        }
        // Every lease of an unshared store is expired from this process's point of view. Bounded,
        // in case some orphan can't be settled (it is logged, and settled at a later tick).
        for _ in 0..1000 {
            if !self.settle_orphans(Timestamp(i64::MAX)).await {
                break;
            }
        }
        // Rows from before leases existed: running without an owner.
        for job in self.store.unfinished_jobs().await? {
            // Adopted from the previous process (issue #23): it runs here.
            if self.is_running_here(&job.id) {
                continue;
            }
            if let JobState::Running { started } = job.state {
                let msg = "the server restarted while the job was running".to_owned();
                match self.fail_interrupted(&job, started, msg).await {
                    // Ended meanwhile: an adopted job whose journal was complete (its agent had
                    // ended) finishes within moments, between the listing above and the check
                    // of `is_running_here`. Failing the start for it made agentd exit before it
                    // listened (issue #23).
                    Err(e) if e.reason() == crate::error::Reason::JobFinished => {}
                    other => other?,
                }
            }
        }
        Ok(())
    }

    /// A replica restarted under the same `--replica-id` owns what its previous process owned:
    /// the jobs it did not adopt (their agent died with that process, or the tree died with no
    /// journaled end) would otherwise have their leases renewed by it for ever, and never be
    /// settled by anyone. Started ones fail, claimed ones go back to the queue.
    async fn recover_own(&self) -> Result<()> {
        let me = &self.config.replica_id;
        for id in self.store.renew_leases(me, self.lease_until()).await? {
            if self.is_running_here(&id) {
                continue;
            }
            let Some(job) = self.store.get_job(&id).await? else {
                continue;
            };
            let settled = match job.state {
                JobState::Running { started } => {
                    let msg = "the server restarted while the job was running".to_owned();
                    self.fail_interrupted(&job, started, msg).await
                }
                JobState::Queued => self.store.release_job(&id, me).await.map(|_| ()),
                JobState::Finished(_) => Ok(()),
            };
            if let Err(e) = settled {
                // Settled elsewhere meanwhile, or store trouble (tried again at the next start).
                tracing::warn!(job = %id, error = %e, "cannot settle a job of this replica's previous process");
            }
        }
        Ok(())
    }

    /// The permission request a job left unanswered, described, if any: the event log is its
    /// durable record (a request without its resolution).
    async fn pending_permission(&self, job: &Job) -> Option<String> {
        if !job.spec.asks() {
            return None;
        }
        let mut open: Vec<(String, String)> = Vec::new();
        let mut after = 0;
        loop {
            let events = match self.store.read_events(&job.id, after, 1000).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot read the job's events");
                    return None;
                }
            };
            let Some(last) = events.last() else { break };
            after = last.seq;
            for e in events {
                match e.kind {
                    EventKind::PermissionRequest {
                        request_id, tool, ..
                    } => open.push((request_id, tool)),
                    EventKind::PermissionResolved { request_id, .. } => {
                        open.retain(|(id, _)| *id != request_id)
                    }
                    _ => {}
                }
            }
        }
        let (id, tool) = open.pop()?;
        Some(format!("permission request {id} ({tool})"))
    }

    /// Ends a started job whose agent is gone (server restart, lost replica) as FAILED, keeping
    /// what it had reported.
    pub(in crate::core) async fn fail_interrupted(
        &self,
        job: &Job,
        started: Timestamp,
        message: String,
    ) -> Result<()> {
        let mut sink = Sink {
            core: self,
            job: job.id.clone(),
            next_seq: job.last_seq + 1,
            secrets: Vec::new(),
        };
        let mut facts = match self.pending_permission(job).await {
            Some(pending) => FinishFacts::outcome(Outcome::PermissionPending {
                message: format!("{message} with {pending} pending: nobody can answer it now"),
            }),
            None => FinishFacts::failed(message),
        };
        facts.result = job.result.clone();
        facts.usage = job.usage.clone();
        facts.conversation_id = job.conversation_id.clone();
        self.finish(&mut sink, Some(started), facts).await
    }
}
