//! Appending a running job's events: consecutive seqs, secret redaction, batches queued on the
//! event log without waiting for their commit; and the stdin file the agent reads its prompt from.

use crate::domain::{EventKind, JobEvent, JobId, Timestamp};
use crate::error::Result;
use crate::events::Pending;
use crate::store::{JobUpdate, JobWrite};
use crate::telemetry::metrics;

use super::super::Core;

/// Appends events to one job's log with consecutive seqs.
pub(super) struct Sink<'a> {
    pub(super) core: &'a Core,
    pub(super) job: JobId,
    pub(super) next_seq: u64,
    pub(super) secrets: Vec<String>,
}

impl Sink<'_> {
    pub(super) fn event(&mut self, kind: EventKind, raw: Option<String>) -> JobEvent {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut ev = JobEvent {
            seq,
            time: Timestamp::now(),
            raw,
            kind,
        };
        redact_event(&mut ev, &self.secrets);
        ev
    }

    pub(super) async fn write(
        &self,
        events: Vec<JobEvent>,
        update: Option<JobUpdate>,
    ) -> Result<()> {
        match self.submit(events, update).await? {
            Some(w) => w.committed().await,
            None => Ok(()),
        }
    }

    /// Queues a write without waiting for its commit (`None` when there is nothing to write).
    pub(super) async fn submit(
        &self,
        events: Vec<JobEvent>,
        update: Option<JobUpdate>,
    ) -> Result<Option<InFlight>> {
        if events.is_empty() && update.is_none() {
            return Ok(None);
        }
        let (n, start) = (events.len(), std::time::Instant::now());
        let pending = self
            .core
            .events
            .submit(JobWrite {
                job_id: self.job.clone(),
                events,
                update,
            })
            .await?;
        Ok(Some(InFlight { pending, n, start }))
    }
}

/// A batch handed to the event log whose commit is still to be awaited.
pub(super) struct InFlight {
    pub(super) pending: Pending,
    n: usize,
    start: std::time::Instant,
}

impl InFlight {
    pub(super) async fn committed(mut self) -> Result<()> {
        let written = (&mut self.pending).await;
        self.settle(written)
    }

    /// Records the outcome of the commit once it is known.
    pub(super) fn settle(self, written: Result<()>) -> Result<()> {
        metrics().store_write(self.start.elapsed());
        if written.is_ok() {
            metrics().events_written(self.n);
        }
        written
    }
}

/// Where a job's stdin text is kept while it runs: in the session's HOME, which the agent sees at
/// the same path inside its jail.
pub(super) const INPUT_FILE: &str = ".agentd-stdin";

/// Where the agent's input is written (`Workspaces::write_home_input`).
pub(super) fn input_path(home: &std::path::Path) -> std::path::PathBuf {
    home.join(INPUT_FILE)
}

/// Replaces operator secret values wherever an agent might echo them.
pub(super) fn redact(s: &mut String, secrets: &[String]) {
    for secret in secrets {
        if s.contains(secret.as_str()) {
            *s = s.replace(secret.as_str(), "[REDACTED]");
        }
    }
}

pub(super) fn redact_event(ev: &mut JobEvent, secrets: &[String]) {
    if secrets.is_empty() {
        return;
    }
    if let Some(raw) = &mut ev.raw {
        redact(raw, secrets);
    }
    match &mut ev.kind {
        EventKind::Text { text }
        | EventKind::TextDelta { text }
        | EventKind::ThinkingDelta { text }
        | EventKind::Thinking { text } => redact(text, secrets),
        EventKind::Plan { items } => {
            for item in items {
                redact(&mut item.content, secrets);
            }
        }
        EventKind::ToolCall { input_json, .. } => redact(input_json, secrets),
        EventKind::ToolResult { content, .. } => redact(content, secrets),
        EventKind::Stderr { line, .. } | EventKind::Unparsed { line, .. } => redact(line, secrets),
        EventKind::Finished {
            result,
            error_message,
            ..
        } => {
            redact(result, secrets);
            redact(error_message, secrets);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_covers_text_raw_and_results() {
        let secrets = vec!["sk-very-secret".to_owned()];
        let mut ev = JobEvent {
            seq: 1,
            time: Timestamp(0),
            raw: Some(r#"{"text":"key sk-very-secret"}"#.into()),
            kind: EventKind::Text {
                text: "my key is sk-very-secret!".into(),
            },
        };
        redact_event(&mut ev, &secrets);
        assert_eq!(ev.raw.as_deref(), Some(r#"{"text":"key [REDACTED]"}"#));
        assert_eq!(
            ev.kind,
            EventKind::Text {
                text: "my key is [REDACTED]!".into()
            }
        );
    }
}
