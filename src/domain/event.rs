//! Job events: the numbered log of what happened in a job. Stored as-is by the store and
//! converted to `agentd.v1.JobEvent` at the API edge.

use super::Timestamp;
use serde::{Deserialize, Serialize};

/// One event of a job's log. `seq` starts at 1 and has no gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub seq: u64,
    pub time: Timestamp,
    /// The agent's original output line, for events parsed from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    pub kind: EventKind,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// The final states a job can end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinalState {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl FinalState {
    pub fn name(self) -> &'static str {
        match self {
            FinalState::Succeeded => "SUCCEEDED",
            FinalState::Failed => "FAILED",
            FinalState::Cancelled => "CANCELLED",
            FinalState::TimedOut => "TIMED_OUT",
        }
    }
}

/// Token, cost and turn usage as reported by an agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cost_usd: Option<f64>,
    pub num_turns: u32,
    pub duration_ms: u64,
}

/// What happened. Mirrors the `agentd.v1.JobEvent.kind` oneof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum EventKind {
    Started {
        agent: String,
        command: String,
        pid: i32,
        #[serde(default)]
        resumed_conversation_id: Option<String>,
    },
    Init {
        conversation_id: String,
        model: String,
        tools: Vec<String>,
        agent_version: String,
    },
    Text {
        text: String,
    },
    ToolCall {
        id: String,
        name: String,
        input_json: String,
    },
    ToolResult {
        id: String,
        is_error: bool,
        content: String,
    },
    Usage(Usage),
    Stderr {
        line: String,
        truncated: bool,
    },
    Unparsed {
        line: String,
        truncated: bool,
    },
    Other {
        r#type: String,
    },
    Truncated {
        reason: String,
    },
    /// A limit of the job's jail was hit; `limit` is `memory`, `pids`, `tmp` or `workspace`.
    LimitExceeded {
        limit: String,
        message: String,
    },
    Finished {
        state: FinalState,
        exit: Option<ExitStatus>,
        result: String,
        error_message: String,
        usage: Usage,
        /// [`crate::domain::Outcome::reason`].
        #[serde(default)]
        reason: String,
    },
    /// One model call that went through agentd's gateway, metered from the provider's answer.
    ModelCall(ModelCall),
    /// The egress proxy refused a connection to a host outside the profile's `allow_hosts`.
    EgressDenied {
        host: String,
        port: u16,
    },
    /// The agent asks whether it may run a tool (permission_mode `ask`).
    PermissionRequest {
        request_id: String,
        tool: String,
        input_json: String,
        suggestion_json: String,
        timeout_seconds: u32,
    },
    /// A permission request was decided; `who` is `caller`, `rule` or `timeout`.
    PermissionResolved {
        request_id: String,
        who: String,
        allow: bool,
        message: String,
    },
    /// A user message delivered to the running agent.
    Input {
        text: String,
    },
    /// A piece of answer text as the model produced it (`stream_deltas`).
    TextDelta {
        text: String,
    },
    /// A piece of reasoning as the model produced it (`stream_deltas`).
    ThinkingDelta {
        text: String,
    },
    /// The model's reasoning, or its summary.
    Thinking {
        text: String,
    },
    /// The agent's plan or todo list as it now stands.
    Plan {
        items: Vec<PlanItem>,
    },
}

/// One step of an agent's plan; `status` is `pending`, `in_progress` or `completed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    pub content: String,
    pub status: String,
}

impl EventKind {
    pub fn is_finished(&self) -> bool {
        matches!(self, EventKind::Finished { .. })
    }

    /// A streamed piece of a later complete event: bounded separately, kept without its raw line.
    pub fn is_delta(&self) -> bool {
        matches!(
            self,
            EventKind::TextDelta { .. } | EventKind::ThinkingDelta { .. }
        )
    }
}

/// One model call through the gateway: what the upstream was asked and answered, and what it
/// cost. Also a row of the usage ledger, which outlives the job and its session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCall {
    pub time: Timestamp,
    /// The model the provider answered with (else the one asked for).
    pub model: String,
    /// `anthropic`, `openai` or `gemini`.
    pub api: String,
    /// The upstream's HTTP status; 0 when it never answered (unreachable, timed out).
    pub status: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// `None`: the model has no configured price (metered in tokens only).
    pub cost_usd: Option<f64>,
    /// From the request to the end of the answer.
    pub latency_ms: u64,
}

impl ModelCall {
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
    }
}
