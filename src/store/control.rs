//! Two-way control messages across replicas (issue #17): the answers, input and interrupts sent
//! to a replica that does not run the job, kept in `control_messages` until the job's owner
//! delivers them, and the SQL both backends run (its `$n` placeholders are valid SQLite too).
//! The first answer to a permission request wins here, atomically: the table's unique index
//! admits one live answer per request, whichever replica took it.

use crate::domain::JobId;

/// What a caller asks of a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Answer {
        request_id: String,
        allow: bool,
        message: String,
    },
    Input {
        text: String,
    },
    Interrupt,
}

/// A control message waiting for its job's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMessage {
    pub id: i64,
    pub job: JobId,
    pub control: Control,
}

/// What the job's owner made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOutcome {
    Delivered,
    /// The controller's error: its stable reason and message.
    Refused {
        reason: String,
        message: String,
    },
}

/// The refusal that releases an answer's claim: the job never made that request (yet), so a
/// later answer to a request of that id must still be able to win.
pub const RELEASED: &str = "PERMISSION_REQUEST_NOT_FOUND";

impl Control {
    /// The row's `kind`, `request_id`, `allow` and `body`.
    pub(super) fn columns(&self) -> (&'static str, Option<&str>, bool, &str) {
        match self {
            Control::Answer {
                request_id,
                allow,
                message,
            } => ("answer", Some(request_id), *allow, message),
            Control::Input { text } => ("input", None, false, text),
            Control::Interrupt => ("interrupt", None, false, ""),
        }
    }

    /// The message a row holds; `None` for a kind this version does not know.
    pub(super) fn from_columns(
        kind: &str,
        request_id: Option<String>,
        allow: bool,
        body: String,
    ) -> Option<Control> {
        match kind {
            "answer" => Some(Control::Answer {
                request_id: request_id?,
                allow,
                message: body,
            }),
            "input" => Some(Control::Input { text: body }),
            "interrupt" => Some(Control::Interrupt),
            _ => None,
        }
    }
}

impl ControlOutcome {
    /// The outcome of a settled row's `refusal` and `refusal_message`.
    pub(super) fn from_columns(refusal: Option<String>, message: Option<String>) -> Self {
        match refusal {
            None => ControlOutcome::Delivered,
            Some(reason) => ControlOutcome::Refused {
                reason,
                message: message.unwrap_or_default(),
            },
        }
    }
}

/// Inserts a message ($1 job, $2 kind, $3 request id, $4 allow, $5 body, $6 created, $7 done);
/// an answer to a request already claimed inserts nothing and returns no row.
pub const INSERT: &str = "INSERT INTO control_messages \
     (job_id, kind, request_id, allow, body, created, done) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING id";

/// Undelivered messages of the unfinished jobs `$1` owns, oldest first.
pub const PENDING: &str = "SELECT m.id, m.job_id, m.kind, m.request_id, m.allow, m.body \
     FROM control_messages AS m JOIN jobs AS j ON j.id = m.job_id \
     WHERE NOT m.done AND j.owner = $1 AND j.state_name IN ('QUEUED', 'RUNNING') \
     ORDER BY m.id LIMIT 256";

/// Marks message $3 delivered ($1 NULL) or refused ($1 reason, $2 message). (SQLite numbers `$n`
/// by first appearance, so they appear here in order.)
pub const SETTLE: &str =
    "UPDATE control_messages SET done = true, refusal = $1, refusal_message = $2 WHERE id = $3";

/// Message $1's state: done, refusal, refusal message.
pub const OUTCOME: &str =
    "SELECT done, refusal, refusal_message FROM control_messages WHERE id = $1";
