//! Plain domain types with no I/O and no protobuf: identifiers, sessions, job specifications, the
//! job state machine and job events. Everything below the API edge speaks these types.

mod event;
mod file;
mod job;
pub mod permission;

pub use event::{EventKind, ExitStatus, FinalState, JobEvent, ModelCall, PlanItem, Usage};
pub use file::{ChangeKind, FileChange, FileEntry, FileKind, PAGE_BYTES, page_fit};
pub use job::{
    CatalogSelection, Finished, Job, JobBudget, JobCaps, JobControl, JobSpec, JobState, Outcome,
    PERMISSION_ASK, compile_output_schema,
};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time with microsecond precision, stored as microseconds since the Unix epoch.
/// One representation everywhere (store columns, ordering, page tokens) avoids conversions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(u64::try_from(self.0 - earlier.0).unwrap_or(0))
    }

    pub fn seconds_nanos(self) -> (i64, i32) {
        let secs = self.0.div_euclid(1_000_000);
        let nanos = (self.0.rem_euclid(1_000_000) * 1000) as i32;
        (secs, nanos)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }
}

/// Generates a prefixed, time-ordered, unguessable identifier, e.g. `ses_0192f3c1…`.
/// UUIDv7 keeps ids roughly sortable by creation while its 74 random bits make them unguessable.
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        #[doc = concat!("Identifier with the `", $prefix, "_` prefix.")]
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Self {
                Self(new_id($prefix))
            }

            /// Accepts an id given by a client; `None` when it cannot be one of ours (such ids are
            /// answered NOT_FOUND, exactly like ids of other tenants).
            pub fn parse(s: &str) -> Option<Self> {
                let rest = s.strip_prefix(concat!($prefix, "_"))?;
                (rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| Self(s.to_owned()))
            }

            /// Wraps an id read back from the store, which only ever holds valid ids.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(SessionId, "ses");
id_type!(JobId, "job");

/// The tenant an API key belongs to. Every session and job is owned by exactly one tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TenantId(pub String);

impl TenantId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A session row: a workspace where jobs run one at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: SessionId,
    pub tenant: TenantId,
    pub labels: BTreeMap<String, String>,
    pub created: Timestamp,
    pub expires: Timestamp,
    pub ttl: Duration,
    /// Idempotency key given at creation.
    pub request_id: Option<String>,
    /// The agent conversation the next job continues (from the latest job that reported one).
    pub conversation_id: Option<String>,
    /// Number of jobs ever submitted.
    pub job_count: u64,
}

/// A position in a newest-first listing: items strictly older than this come next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    pub created: Timestamp,
    pub id: String,
}

/// The UTC date (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (Howard
/// Hinnant's civil-from-days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
