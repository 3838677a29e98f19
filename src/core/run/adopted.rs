//! Running an adopted job (issue #23) to its end: the second half of `execute` for a job whose
//! agent a previous agentd started. The supervisor's journal is replayed through the same pump
//! (adapter parse, output caps, redaction) as live output; the events the previous process had
//! already stored are counted and skipped, so the log goes on with no gap and no duplicate.

use super::finish::FinishFacts;
use super::pump::{AbortOnDrop, Controlled, Pump};
use super::sink::Sink;
use super::verdict::{Ended, verdict};
use crate::agents::interactive::Interactive;
use crate::core::control::Asked;
use crate::core::{Core, RunHandle};
use crate::domain::{EventKind, Job, JobState, Outcome, Timestamp};
use crate::error::Result;
use crate::runner::adopt::Attached;
use crate::runner::{Output, RunControl, StopCause};
use crate::store::SnapPoint;
use crate::workspace::history::Tree;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

impl Core {
    /// Follows an adopted job's journal to its end and records the outcome. Never fails: every
    /// failure becomes the job's outcome.
    pub(in crate::core) async fn run_adopted(
        &self,
        job: Job,
        handle: &RunHandle,
        a: Attached,
        gateway: Option<String>,
    ) {
        let id = job.id.clone();
        let secrets = self.job_secrets(&job);
        let mut sink = Sink {
            core: self,
            job: job.id.clone(),
            next_seq: job.last_seq + 1,
            secrets,
        };
        match self
            .follow_adopted(&job, handle, a, gateway, &mut sink)
            .await
        {
            Ok(()) => {}
            Err(e) if e.reason() == crate::error::Reason::JobFinished => {
                tracing::info!(job = %id, error = %e, "adopted job was settled elsewhere");
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "adopted job failed inside the server");
                let secrets = std::mem::take(&mut sink.secrets);
                self.settle_failed(&id, secrets, format!("internal error: {e}"))
                    .await;
            }
        }
    }

    async fn follow_adopted(
        &self,
        job: &Job,
        handle: &RunHandle,
        a: Attached,
        gateway: Option<String>,
        sink: &mut Sink<'_>,
    ) -> Result<()> {
        let JobState::Running { started } = job.state else {
            return Ok(());
        };
        let Some(profile) = self.config.agents.get(&job.spec.agent) else {
            a.kill().await;
            let msg = format!("agent profile {:?} is no longer configured", job.spec.agent);
            return self
                .finish(sink, Some(started), FinishFacts::failed(msg))
                .await;
        };
        let limits = &self.config.limits;
        let protocol = self.protocol_of(job, profile);
        // The parser the live run used, so that the replay makes the same events.
        let parser = protocol.as_ref().and_then(|p| p.parser());
        let mut pump = Pump::new(
            parser.unwrap_or_else(|| crate::agents::parser(profile)),
            job.state.clone(),
            job.conversation_id.clone(),
            (limits.job_output_max_bytes, limits.job_output_max_events),
        );
        let stored = self.stored_output_events(job).await?;
        (pump.skip, pump.skip_notices) = (stored.lines, stored.notices);
        (pump.delta_bytes, pump.drop_deltas) = (stored.delta_bytes, stored.trailing_deltas);
        let left = job
            .spec
            .timeout
            .saturating_sub(Timestamp::now().since(started));
        let control = RunControl {
            cancel: handle.cancel.clone(),
            timeout: left,
            grace: self.config.timing.kill_grace,
        };
        let (tx, mut rx) = mpsc::channel::<Output>(1024);
        let budget_hit: Arc<OnceLock<String>> = Arc::default();
        // Held while the agent runs: its model calls go on through this process's gateway.
        let access = gateway.and_then(|t| self.regrant(job, t, &tx, handle, &budget_hit));
        if let Some(a) = &access {
            sink.secrets.push(a.key().to_owned());
        }
        let denied: Arc<OnceLock<String>> = Arc::default();
        if let Some(protocol) = protocol {
            pump.control =
                Some(self.orphan_control(job, handle, protocol, stored.asked, &denied, &tx));
        }
        let running = crate::telemetry::metrics().job_running();
        let run = tokio::spawn(a.run(tx, control));
        if let Err(e) = pump.run(sink, &mut rx, None).await {
            run.abort();
            return Err(e);
        }
        let adopted = match run.await {
            Ok(adopted) => adopted,
            Err(e) => {
                let msg = format!("adopted job's follower failed: {e}");
                return self
                    .finish(sink, Some(started), FinishFacts::failed(msg))
                    .await;
            }
        };
        drop(access);
        let summary = pump.parser.summary();
        let stderr_tail: Vec<String> = pump.stderr_tail.iter().cloned().collect();
        let (outcome, result) = if let Some(message) = denied.get() {
            let outcome = Outcome::PermissionPending {
                message: message.clone(),
            };
            (outcome, summary.result.clone().unwrap_or_default())
        } else if adopted.adopt_timed_out && adopted.outcome.stop.is_none() {
            let message = "no agentd adopted the job within the adopt timeout after agentd \
                           stopped; its supervisor ended it";
            let outcome = Outcome::AdoptionTimeout {
                message: message.into(),
            };
            (outcome, summary.result.clone().unwrap_or_default())
        } else {
            let outcome = verdict(Ended {
                stop: adopted.outcome.stop,
                exit: adopted.outcome.exit,
                limit_hit: pump.limit_hit.take(),
                budget_hit: budget_hit.get().cloned(),
                cancel_reason: handle.reason.get().cloned(),
                timeout: job.spec.timeout,
                agent_error: summary.error.clone(),
                stderr_tail: &stderr_tail,
                interrupted: false,
            });
            crate::core::caps::structured(&job.spec, outcome, &summary)
        };
        match adopted.outcome.stop {
            Some(StopCause::Cancelled) => crate::telemetry::metrics().kill_escalation("cancelled"),
            Some(StopCause::TimedOut) => crate::telemetry::metrics().kill_escalation("timed_out"),
            None => {}
        }
        let facts = FinishFacts {
            outcome,
            exit: Some(adopted.outcome.exit),
            result,
            usage: pump.metered.over(summary.usage),
            conversation_id: summary.conversation_id.or(pump.conversation.take()),
        };
        drop(running);
        self.end_as_started(job, sink, started, facts).await
    }

    /// What `execute` does after the agent ended, so that an adopted job ends as if it had never
    /// changed hands: its outputs from the before-snapshot its first process took, the session's
    /// conversation for the next job, the final write, the session's TTL.
    async fn end_as_started(
        &self,
        job: &Job,
        sink: &mut Sink<'_>,
        started: Timestamp,
        facts: FinishFacts,
    ) -> Result<()> {
        let session = self.store.get_session_any(&job.session_id).await?;
        if let Some(session) = &session {
            match self.before_tree(job).await {
                Ok(before) => self.record_outputs(job, session, Arc::new(before)).await?,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "no before-snapshot: the adopted job's outputs are not recorded")
                }
            }
            if let Some(id) = &facts.conversation_id {
                self.store
                    .set_agent_conversation(&session.id, &job.spec.agent, id, Timestamp::now())
                    .await?;
            }
        }
        self.finish(sink, Some(started), facts).await?;
        if let Some(session) = &session {
            self.extend_session(session).await;
        }
        Ok(())
    }

    /// The workspace as the job's first process snapshotted it before starting the agent.
    async fn before_tree(&self, job: &Job) -> Result<Tree> {
        let id = self.snapshot_tree(&job.id, SnapPoint::Before).await?;
        self.workspaces.with_history(move |h| h.tree(&id)).await
    }

    /// The secrets of a job's profile, redacted from its events.
    pub(in crate::core) fn job_secrets(&self, job: &Job) -> Vec<String> {
        self.config
            .agents
            .get(&job.spec.agent)
            .map(|p| p.env.values().filter(|v| v.len() >= 6).cloned().collect())
            .unwrap_or_default()
    }

    /// What a job's stored events say (see [`Stored`]).
    async fn stored_output_events(&self, job: &Job) -> Result<Stored> {
        let mut stored = Stored::default();
        let mut after = 0;
        loop {
            let events = self.store.read_events(&job.id, after, 1000).await?;
            let Some(last) = events.last() else {
                return Ok(stored);
            };
            after = last.seq;
            for e in &events {
                if super::pump::is_delta_limit(&e.kind) {
                    stored.delta_bytes = super::pump::DELTA_MAX_BYTES;
                    stored.trailing_deltas = true;
                } else if let EventKind::TextDelta { text } | EventKind::ThinkingDelta { text } =
                    &e.kind
                {
                    stored.delta_bytes += text.len() as u64;
                    stored.trailing_deltas = true;
                } else if from_output(&e.kind) {
                    stored.lines += 1;
                    stored.trailing_deltas = false;
                } else if matches!(e.kind, EventKind::LimitExceeded { .. }) {
                    stored.notices += 1;
                } else {
                    stored.asked.see(&e.kind);
                }
            }
        }
    }

    /// The interactive protocol an `ask` job's agent was started with (its parser and the
    /// requests in its output), for the job's own profile and conversation.
    fn protocol_of(
        &self,
        job: &Job,
        profile: &crate::agents::AgentProfile,
    ) -> Option<Arc<dyn Interactive>> {
        if !job.spec.asks() {
            return None;
        }
        let workspace = self.workspaces.workspace_dir(&job.session_id);
        let home = self.workspaces.home_dir(&job.session_id);
        let ctx = crate::agents::LaunchContext {
            workspace: &workspace,
            home: &home,
            resume_conversation: job.conversation_id.as_deref(),
            jailed: self.config.sandbox.of(&job.spec.agent).is_some(),
            mcp: &[],
            images: &[],
        };
        crate::agents::interactive::protocol(profile, &job.spec, &ctx).map(Arc::from)
    }

    /// The adopted `ask` job's controller ([`crate::core::control::start_orphaned`]): a request
    /// it must deny ends the job through its cancel token, `denied` saying why.
    fn orphan_control(
        &self,
        job: &Job,
        handle: &RunHandle,
        protocol: Arc<dyn Interactive>,
        asked: Asked,
        denied: &Arc<OnceLock<String>>,
        tx: &mpsc::Sender<Output>,
    ) -> Controlled {
        let timeout = job
            .spec
            .control
            .permission_timeout
            .unwrap_or(self.config.permission_timeout_default);
        let (cancel, why) = (handle.cancel.clone(), denied.clone());
        let deny = Arc::new(move |message: String| {
            let _ = why.set(message);
            cancel.cancel();
        });
        let (ctl, task) = crate::core::control::start_orphaned(asked, timeout, deny, tx);
        let _ = handle.control.set(ctl.clone());
        Controlled {
            handle: ctl,
            protocol,
            _task: AbortOnDrop(task),
        }
    }
}

/// What a job's stored events say for the replay of its journal: how many came from its agent's
/// output and how many from the jail's notices (the ones a replay produces again, each in the
/// same order; the rest, started, model calls, permission traffic, come from elsewhere), and its
/// permission requests.
#[derive(Default)]
struct Stored {
    lines: u64,
    notices: u64,
    /// The bytes of the stored deltas (the budget already spent), and whether the log's last
    /// output events are deltas (see [`super::pump::Pump::drop_deltas`]).
    delta_bytes: u64,
    trailing_deltas: bool,
    asked: Asked,
}

/// Whether an event kind is made from an agent's output lines by the pump.
fn from_output(kind: &EventKind) -> bool {
    // Every kind named, so that a new one is decided here: one the parser makes but this
    // misses shifts the replay's count, and the job's last events are stored twice.
    match kind {
        EventKind::Init { .. }
        | EventKind::Text { .. }
        | EventKind::ToolCall { .. }
        | EventKind::ToolResult { .. }
        | EventKind::Usage(_)
        | EventKind::Stderr { .. }
        | EventKind::Unparsed { .. }
        | EventKind::Other { .. }
        | EventKind::Truncated { .. }
        | EventKind::Thinking { .. }
        | EventKind::Plan { .. } => true,
        // Deltas are counted apart (merged as stored); the rest come from agentd itself.
        EventKind::TextDelta { .. }
        | EventKind::ThinkingDelta { .. }
        | EventKind::Started { .. }
        | EventKind::LimitExceeded { .. }
        | EventKind::Finished { .. }
        | EventKind::ModelCall(_)
        | EventKind::EgressDenied { .. }
        | EventKind::PermissionRequest { .. }
        | EventKind::PermissionResolved { .. }
        | EventKind::Input { .. } => false,
    }
}
