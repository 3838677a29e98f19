//! Control messages across replicas (issue #17). Every answer first claims its permission request
//! in the store, so the first answer wins whichever replica took it; then it goes to the job's
//! controller when the job runs here, or waits in the store for the replica that runs it. That
//! replica delivers it (`deliver_controls`, woken by the store's signal, with a slow tick for a
//! missed one) and records how it went, which the replica that took the call waits for and
//! answers with. Input and interrupts for a job running here skip the store.

use super::Core;
use super::control::Route;
use crate::domain::{JobId, Timestamp};
use crate::error::{Error, Reason, Result};
use crate::store::control::{Control, ControlOutcome};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long the replica that took a call waits for the job's owner to deliver its message.
const RELAY_WAIT: Duration = Duration::from_secs(30);
/// The waiter's first look at the message's outcome, doubling up to the last.
const LOOK_FIRST: Duration = Duration::from_millis(10);
const LOOK_MAX: Duration = Duration::from_millis(200);
/// The owner's look at its messages when no signal came (SQLite has no signals).
const DELIVERY_TICK: Duration = Duration::from_secs(1);

impl Core {
    /// Delivers `control` by its route; the controller's verdict is the caller's answer.
    pub(super) async fn relay(&self, route: Route, control: Control) -> Result<()> {
        match route {
            Route::Here(job, h) => {
                let claim = match &control {
                    Control::Answer { .. } => Some(self.record(&job, &control, true).await?),
                    _ => None,
                };
                let verdict = h.deliver(control).await;
                if let Some(id) = claim {
                    self.settle_control(id, &verdict).await;
                }
                verdict
            }
            Route::Elsewhere(job) => {
                let id = self.record(&job, &control, false).await?;
                // The job may be starting here: its controller is about to exist.
                self.control_wake.notify_one();
                self.await_delivery(&job, id).await
            }
        }
    }

    /// Records `control`; an answer whose request another answer claimed is refused here.
    async fn record(&self, job: &JobId, control: &Control, delivered: bool) -> Result<i64> {
        let sent = self
            .store
            .send_control(job, control, delivered, Timestamp::now())
            .await?;
        sent.ok_or_else(|| {
            let request = match control {
                Control::Answer { request_id, .. } => request_id.as_str(),
                _ => "",
            };
            Error::precondition(
                Reason::PermissionDecided,
                format!("permission request {request:?} was already decided"),
            )
        })
    }

    /// Records the controller's verdict on message `id` (a refused answer to an unknown request
    /// gives up its claim).
    async fn settle_control(&self, id: i64, verdict: &Result<()>) {
        let refusal = verdict
            .as_ref()
            .err()
            .map(|e| (e.reason().as_str(), e.to_string()));
        let refusal = refusal.as_ref().map(|(r, m)| (*r, m.as_str()));
        if let Err(e) = self.store.settle_control(id, refusal).await {
            tracing::warn!(message = id, error = %e, "cannot record a control message's outcome");
        }
    }

    /// Waits for the owner's verdict on message `id`, or the job's end, or [`RELAY_WAIT`].
    async fn await_delivery(&self, job: &JobId, id: i64) -> Result<()> {
        let deadline = Instant::now() + RELAY_WAIT;
        let mut pause = LOOK_FIRST;
        loop {
            match self.store.control_outcome(id).await? {
                Some(ControlOutcome::Delivered) => return Ok(()),
                Some(ControlOutcome::Refused { reason, message }) => {
                    return Err(refusal(&reason, message));
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::precondition(
                    Reason::JobNotControllable,
                    format!(
                        "the replica running job {job} did not take the message within {}s",
                        RELAY_WAIT.as_secs()
                    ),
                ));
            }
            if pause == LOOK_MAX
                && let Some(j) = self.store.get_job(job).await?
                && j.state.is_finished()
            {
                return Err(Error::precondition(
                    Reason::JobFinished,
                    format!("job {job} finished as {}", j.state.name()),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LOOK_MAX);
        }
    }

    /// Delivers the messages other replicas recorded for jobs running here, until shutdown.
    pub(super) async fn deliver_controls(self: Arc<Self>) {
        let mut tick = tokio::time::interval(DELIVERY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.control_wake.notified() => {}
                _ = self.shutdown.triggered() => return,
            }
            self.deliver_pending().await;
        }
    }

    async fn deliver_pending(&self) {
        let messages = match self.store.pending_controls(&self.config.replica_id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read control messages");
                return;
            }
        };
        for m in messages {
            // A job not started yet: its controller takes the message once it exists.
            let Some(h) = self.controller(&m.job) else {
                continue;
            };
            let verdict = h.deliver(m.control).await;
            self.settle_control(m.id, &verdict).await;
        }
    }
}

/// The controller's refusal, recorded by the owner, as the error it was there.
fn refusal(reason: &str, message: String) -> Error {
    let was = |r: Reason| r.as_str() == reason;
    if was(Reason::PermissionDecided) {
        Error::precondition(Reason::PermissionDecided, message)
    } else if was(Reason::PermissionRequestNotFound) {
        Error::not_found(Reason::PermissionRequestNotFound, message)
    } else if was(Reason::JobFinished) {
        Error::precondition(Reason::JobFinished, message)
    } else {
        Error::internal(message)
    }
}
