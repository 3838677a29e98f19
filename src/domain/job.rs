//! Jobs: what to run (`JobSpec`) and the state machine of a run (`JobState`). A job's state is an
//! enum carrying exactly the data each state has, so "finished without an end time" or "running
//! with an exit code" cannot be written down.

use super::{ExitStatus, FinalState, JobId, SessionId, TenantId, Timestamp, Usage};
use crate::error::{Error, Reason, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a job runs: validated, with defaults already applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Agent profile name (never empty: the default is resolved at submit time).
    pub agent: String,
    pub prompt: String,
    pub model: Option<String>,
    pub timeout: Duration,
    /// Client-given environment; already checked against the forbidden names.
    pub env: BTreeMap<String, String>,
    pub allowed_tools: Vec<String>,
    pub max_turns: Option<u32>,
    pub append_system_prompt: Option<String>,
    pub permission_mode: Option<String>,
    /// Limits of the job's model calls through the gateway.
    #[serde(default)]
    pub budget: JobBudget,
    /// Where this job's `job.finished` webhook goes (`SubmitJobRequest.webhook_url`), under a
    /// prefix the operator allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Two-way control (issue #17): the job's permission rules and answer timeout.
    #[serde(default)]
    pub control: JobControl,
    /// The preset it came from and the operator catalog entries it uses (#20).
    #[serde(default)]
    pub catalog: CatalogSelection,
    /// The agent capabilities it asks for beyond the basics (#20): deltas, a schema, prompts.
    #[serde(default)]
    pub caps: JobCaps,
}

/// `output_schema` as a validator; a schema that is not JSON or not a valid schema is the
/// caller's error. Here because both a job and a preset holding one are checked by it.
pub fn compile_output_schema(schema: &str) -> Result<jsonschema::Validator> {
    let value: serde_json::Value = serde_json::from_str(schema).map_err(|e| {
        Error::invalid(
            Reason::InvalidField,
            "output_schema",
            format!("output_schema is not JSON: {e}"),
        )
    })?;
    jsonschema::validator_for(&value).map_err(|e| {
        Error::invalid(
            Reason::InvalidField,
            "output_schema",
            format!("output_schema is not a valid JSON Schema: {e}"),
        )
    })
}

/// A job's capability options (#20); each is checked against its agent at submit time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobCaps {
    /// Stream `text_delta`/`thinking_delta` events (ignored by agents without them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream_deltas: bool,
    /// A JSON Schema the final answer must satisfy (already checked to compile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<String>,
    /// Replaces the agent's system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disallowed_tools: Vec<String>,
    /// Workspace-relative paths of files given to the agent with the prompt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<String>,
}

/// What a job takes from the operator's catalogs, by name: resolved to commands and files only
/// when the job starts, so a definition's secrets are never stored with the job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogSelection {
    /// The preset the job was made from, for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subagents: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skills: Vec<String>,
}

/// The permission mode under which every tool call not decided by a rule is asked of the caller.
pub const PERMISSION_ASK: &str = "ask";

/// A job's own permission rules (`Tool(pattern)`) and how long a permission request waits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobControl {
    pub allow_rules: Vec<String>,
    pub deny_rules: Vec<String>,
    /// Unset: the server's default.
    pub permission_timeout: Option<Duration>,
}

impl JobSpec {
    /// Whether the caller answers this job's permission requests (permission_mode `ask`).
    pub fn asks(&self) -> bool {
        self.permission_mode.as_deref() == Some(PERMISSION_ASK)
    }
}

/// A job's own model budget (`SubmitJobRequest.max_cost_usd`, `max_tokens`); unset: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct JobBudget {
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
}

/// How a finished job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Failed {
        message: String,
    },
    Cancelled {
        reason: String,
    },
    TimedOut {
        after: Duration,
    },
    /// A limit of the job's jail (`memory`, `pids`, `tmp`, `workspace`) ended it.
    LimitExceeded {
        limit: String,
        message: String,
    },
    /// A model budget of the job or its tenant was spent; the gateway refused the next call.
    BudgetExceeded {
        message: String,
    },
    /// InterruptJob stopped the agent's turn; its conversation goes on in the next job.
    Interrupted,
    /// agentd stopped while a permission request of the job waited for its answer.
    PermissionPending {
        message: String,
    },
    /// The answer did not satisfy the job's output_schema (#20).
    OutputSchema {
        message: String,
    },
    /// agentd stopped leaving the job running, and no agentd adopted it within the adopt timeout:
    /// its supervisor ended the tree (issue #23).
    AdoptionTimeout {
        message: String,
    },
}

impl Outcome {
    pub fn final_state(&self) -> FinalState {
        match self {
            Outcome::Succeeded => FinalState::Succeeded,
            Outcome::Failed { .. }
            | Outcome::LimitExceeded { .. }
            | Outcome::BudgetExceeded { .. }
            | Outcome::PermissionPending { .. }
            | Outcome::OutputSchema { .. } => FinalState::Failed,
            Outcome::AdoptionTimeout { .. } => FinalState::Failed,
            Outcome::Cancelled { .. } | Outcome::Interrupted => FinalState::Cancelled,
            Outcome::TimedOut { .. } => FinalState::TimedOut,
        }
    }

    /// Why the job did not succeed, in words; empty for success.
    pub fn message(&self) -> String {
        match self {
            Outcome::Succeeded => String::new(),
            Outcome::Failed { message } => message.clone(),
            Outcome::Cancelled { reason } => format!("cancelled: {reason}"),
            Outcome::TimedOut { after } => format!("timed out after {}s", after.as_secs()),
            Outcome::LimitExceeded { message, .. } => message.clone(),
            Outcome::BudgetExceeded { message } => message.clone(),
            Outcome::Interrupted => "interrupted by the caller".into(),
            Outcome::PermissionPending { message } => message.clone(),
            Outcome::OutputSchema { message } => message.clone(),
            Outcome::AdoptionTimeout { message } => message.clone(),
        }
    }

    /// A stable, machine-readable code for why the job ended as it did; empty when the state
    /// says it all.
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::LimitExceeded { .. } => "LIMIT_EXCEEDED",
            Outcome::BudgetExceeded { .. } => Reason::BudgetExceeded.as_str(),
            Outcome::Interrupted => Reason::Interrupted.as_str(),
            Outcome::PermissionPending { .. } => Reason::PermissionPendingAtRestart.as_str(),
            Outcome::OutputSchema { .. } => Reason::OutputSchema.as_str(),
            Outcome::AdoptionTimeout { .. } => Reason::AdoptionTimeout.as_str(),
            _ => "",
        }
    }
}

/// Everything known about a job that has reached its final state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    /// Unset when the job never started (cancelled while queued, failed to spawn).
    pub started: Option<Timestamp>,
    pub ended: Timestamp,
    pub outcome: Outcome,
    /// Unset when no process ran.
    pub exit: Option<ExitStatus>,
}

/// The job state machine: Queued → Running → Finished, or Queued → Finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Running { started: Timestamp },
    Finished(Finished),
}

impl JobState {
    pub fn is_finished(&self) -> bool {
        matches!(self, JobState::Finished(_))
    }

    /// The one place that decides which transitions are legal.
    pub fn transition(&self, next: JobState) -> Result<JobState> {
        let ok = matches!(
            (self, &next),
            (JobState::Queued, JobState::Running { .. })
                | (
                    JobState::Queued,
                    JobState::Finished(Finished { started: None, .. })
                )
                | (
                    JobState::Running { .. },
                    JobState::Finished(Finished {
                        started: Some(_),
                        ..
                    })
                )
        );
        if ok {
            Ok(next)
        } else {
            Err(Error::precondition(
                Reason::JobFinished,
                format!(
                    "illegal job transition from {} to {}",
                    self.name(),
                    next.name()
                ),
            ))
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Running { .. } => "RUNNING",
            JobState::Finished(f) => f.outcome.final_state().name(),
        }
    }
}

/// A job row.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub session_id: SessionId,
    pub tenant: TenantId,
    pub spec: JobSpec,
    pub created: Timestamp,
    pub state: JobState,
    /// Idempotency key given at submission.
    pub request_id: Option<String>,
    /// The agent's final answer text.
    pub result: String,
    pub usage: Usage,
    /// The agent's own conversation id, once it reported one.
    pub conversation_id: Option<String>,
    /// Highest stored event seq.
    pub last_seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(started: Option<Timestamp>) -> JobState {
        JobState::Finished(Finished {
            started,
            ended: Timestamp(2),
            outcome: Outcome::Succeeded,
            exit: None,
        })
    }

    #[test]
    fn legal_transitions_are_accepted() {
        let running = JobState::Running {
            started: Timestamp(1),
        };
        assert!(JobState::Queued.transition(running.clone()).is_ok());
        assert!(JobState::Queued.transition(finished(None)).is_ok());
        assert!(running.transition(finished(Some(Timestamp(1)))).is_ok());
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let running = JobState::Running {
            started: Timestamp(1),
        };
        assert!(finished(None).transition(running.clone()).is_err());
        assert!(finished(None).transition(JobState::Queued).is_err());
        assert!(running.transition(JobState::Queued).is_err());
        // A running job always has a start time when it finishes.
        assert!(running.transition(finished(None)).is_err());
    }
}
