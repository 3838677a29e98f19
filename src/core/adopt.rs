//! Adoption at start (issue #23): the jobs a previous agentd on this data dir left running under
//! their supervisors (`--on-shutdown keep`, or a crash) are taken over before recovery would
//! fail them. For each claim in the run dir (`runner::adopt`): the job must still be RUNNING and
//! still the previous process's (an owner compare-and-swap in the store, so only one agentd
//! adopts it); the supervisor must still be the recorded process and speak our protocol. Then
//! the job runs on here like any other: cancel, timeout and the output caps apply. A supervisor
//! whose job was cancelled, deleted or finished meanwhile is told to end its tree; one that
//! speaks another protocol version is refused and its job failed, never half-attached.

use super::Core;
use crate::domain::{Job, JobId, JobState};
use crate::runner::adopt::{self, Attached, Claim, Refusal};
use std::sync::Arc;

impl Core {
    /// Adopts every job a previous process left running here; runs before recovery, which then
    /// leaves the adopted jobs alone (they run here).
    pub(super) async fn adopt(self: &Arc<Self>) {
        if !adopt::enabled() {
            return;
        }
        let dir = crate::runner::records::run_dir(&self.config.data_dir);
        let (claims, unclaimed) = tokio::task::spawn_blocking(move || {
            let claims = adopt::claims(&dir);
            let unclaimed = adopt::unclaimed(&dir, &claims);
            (claims, unclaimed)
        })
        .await
        .unwrap_or_default();
        let started = std::time::Instant::now();
        let n = claims.len();
        for token in unclaimed {
            // Its job was never recorded as started: recovery queues it again.
            self.end_tree(token).await;
        }
        for claim in claims {
            self.adopt_one(claim).await;
        }
        if n > 0 {
            tracing::info!(
                claims = n,
                adopted = self.running_count(),
                ms = started.elapsed().as_millis() as u64,
                "adopted the jobs a previous agentd left running"
            );
        }
    }

    async fn adopt_one(self: &Arc<Self>, claim: Claim) {
        let dir = crate::runner::records::run_dir(&self.config.data_dir);
        let id = JobId::from_trusted(claim.job.clone());
        let job = match self.store.get_job(&id).await {
            Ok(job) => job,
            Err(e) => {
                // Left for the next start; its supervisor waits until its adopt timeout.
                tracing::warn!(job = %id, error = %e, "cannot read a job to adopt");
                return;
            }
        };
        let max_line = self.config.limits.max_line_bytes;
        let attached = adopt::attach(&dir, &claim.token, max_line).await;
        let running = job.filter(|j| matches!(j.state, JobState::Running { .. }));
        match (running, attached) {
            (_, Err(Refusal::Busy)) => {
                tracing::warn!(job = %id, "another agentd is attached to the job's supervisor");
            }
            (_, Err(Refusal::Gone)) => {
                // Its tree died with nothing journaled to the end: recovery fails the job.
                self.forget_claim(claim.token).await;
            }
            (None, Ok(a)) => {
                tracing::info!(job = %id, "the job of a surviving supervisor ended meanwhile; ending its tree");
                a.kill().await;
                self.forget_claim(claim.token).await;
            }
            (None, Err(Refusal::Incompatible(_))) => self.end_tree(claim.token).await,
            (Some(job), Err(Refusal::Incompatible(answer))) => {
                tracing::warn!(job = %id, answer = %answer, "cannot adopt a supervisor of another version; cancelling its job");
                if self.take_over(&job, &claim).await {
                    self.end_tree(claim.token).await;
                    let msg = format!(
                        "agentd restarted and cannot adopt the job's supervisor, which speaks \
                         another adoption protocol ({answer:?}, want {})",
                        crate::runner::supervise::spool::PROTOCOL
                    );
                    self.settle_failed(&job.id, self.job_secrets(&job), msg)
                        .await;
                }
            }
            (Some(job), Ok(a)) => {
                if !self.take_over(&job, &claim).await {
                    // Another agentd adopted it, or the lease keeper settled it meanwhile.
                    return;
                }
                tracing::info!(job = %id, pid = a.pid(), "adopted a running job");
                self.start_adopted(job, a, claim);
            }
        }
    }

    /// The owner compare-and-swap: from the replica that started the job to this one.
    async fn take_over(&self, job: &Job, claim: &Claim) -> bool {
        match self
            .store
            .take_over_job(
                &job.id,
                &claim.replica,
                &self.config.replica_id,
                self.lease_until(),
            )
            .await
        {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot take over a job");
                false
            }
        }
    }

    async fn end_tree(&self, token: String) {
        let dir = crate::runner::records::run_dir(&self.config.data_dir);
        let cg = Some(self.config.sandbox.cgroup_parent.clone());
        let t = token.clone();
        let _ =
            tokio::task::spawn_blocking(move || adopt::kill_tree(&dir, &t, cg.as_deref())).await;
        self.forget_claim(token).await;
    }

    /// Registers an adopted job as running here (cancel finds it) and follows it to its end.
    fn start_adopted(self: &Arc<Self>, job: Job, a: Attached, claim: Claim) {
        self.spawn_running(job.id.clone(), None, |core, handle| async move {
            core.run_adopted(job, &handle, a, claim.gateway).await;
            core.forget_claim(claim.token).await;
        });
    }
}
