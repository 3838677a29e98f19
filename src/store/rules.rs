//! The rules both store backends enforce, written once: admission (a session's queue, a tenant's
//! active jobs, a rewind holding the session), rewind holds (no job queued or running, one rewind
//! at a time) and the append checks (the job exists, its log is open, the events continue it),
//! with their reasons and messages. The backends only count and lock; the verdict is here. Also
//! how a job's outputs are cut into stored parts and read back a page at a time.

use crate::domain::{FileChange, JobEvent, JobId, SessionId, TenantId, Timestamp};
use crate::error::{Error, Reason, Result};
use std::time::Duration;

/// How long a client refused by an admission limit should wait: jobs typically take seconds.
const RETRY_ADMIT: Duration = Duration::from_secs(5);

/// Refuses a job when its session already has `queued` unclaimed jobs of `max` allowed.
pub(crate) fn admit_to_session(session: &SessionId, queued: u64, max: usize) -> Result<()> {
    if queued < u64::try_from(max).unwrap_or(u64::MAX) {
        return Ok(());
    }
    Err(Error::ResourceExhausted {
        reason: Reason::QueueFull,
        message: format!("session {session} already has {max} queued jobs (the maximum)"),
        retry_after: Some(RETRY_ADMIT),
    })
}

/// Refuses a job when its tenant already has `active` queued or running jobs of `max` allowed
/// (0: no limit).
pub(crate) fn admit_for_tenant(tenant: &TenantId, active: u64, max: usize) -> Result<()> {
    if max == 0 || active < u64::try_from(max).unwrap_or(u64::MAX) {
        return Ok(());
    }
    Err(Error::ResourceExhausted {
        reason: Reason::TooManyJobs,
        message: format!(
            "tenant {:?} already has {max} queued or running jobs (the maximum)",
            tenant.as_str()
        ),
        retry_after: Some(RETRY_ADMIT),
    })
}

/// How long a client refused because a rewind holds the session should wait: a rewind swaps a
/// directory, it takes a moment.
const RETRY_REWIND: Duration = Duration::from_secs(1);

/// SQL both backends run for rewind holds. Its `$n` placeholders are valid SQLite too, where they
/// are numbered by first appearance: hence `$1` first.
pub(crate) const BUSY_JOB: &str = "SELECT id, state_name FROM jobs WHERE session_id = $1 \
     AND state_name IN ('QUEUED', 'RUNNING') ORDER BY created, id LIMIT 1";
pub(crate) const SET_HOLD: &str = "UPDATE sessions SET rewinding_until = $1 WHERE id = $2";

/// Refuses a job while a rewind holds its session (`held_until` in the future): the job would
/// start on a workspace being swapped.
pub(crate) fn admit_while_rewinding(
    session: &SessionId,
    held_until: Option<i64>,
    now: Timestamp,
) -> Result<()> {
    if held_until.is_none_or(|until| until <= now.micros()) {
        return Ok(());
    }
    Err(Error::Unavailable {
        reason: Reason::SessionBusy,
        message: format!("session {session} is being rewound; submit the job again once it is"),
        retry_after: Some(RETRY_REWIND),
    })
}

/// Refuses to hold `session` for a rewind while it has a queued or running job (`busy`: its id
/// and state name) or another rewind holds it.
pub(crate) fn hold_for_rewind(
    session: &SessionId,
    busy: Option<(String, String)>,
    held_until: Option<i64>,
    now: Timestamp,
) -> Result<()> {
    if let Some((job, state)) = busy {
        return Err(Error::precondition(
            Reason::SessionBusy,
            format!(
                "session {session} has job {job} {}; rewind once it has finished (or cancel it)",
                state.to_lowercase()
            ),
        ));
    }
    if held_until.is_some_and(|until| until > now.micros()) {
        return Err(Error::precondition(
            Reason::SessionBusy,
            format!("session {session} is already being rewound"),
        ));
    }
    Ok(())
}

/// An append to a job the store does not have: a bug in the caller, never the client's doing.
pub(crate) fn missing_job(job: &JobId) -> Error {
    Error::internal(format!("store: append to job {job} which does not exist"))
}

/// Checks that `job` may still be written and that `events` continue its log after `last_seq`;
/// answers the new last seq. A finished job's log is closed: this fences off a replica that lost
/// its lease while another one settled the job.
pub(crate) fn check_append(
    job: &JobId,
    finished: bool,
    last_seq: u64,
    events: &[JobEvent],
) -> Result<u64> {
    if finished {
        return Err(Error::precondition(
            Reason::JobFinished,
            format!("job {job} already finished; its log is closed"),
        ));
    }
    let mut expected = last_seq + 1;
    for e in events {
        if e.seq != expected {
            return Err(Error::internal(format!(
                "store: event seq {} of job {job} does not continue its log (expected {expected})",
                e.seq
            )));
        }
        expected += 1;
    }
    Ok(expected - 1)
}

/// Changes per stored part of a job's outputs: a page reads a few parts, never the whole list.
pub(crate) const OUTPUT_PART: usize = 1000;

/// One stored part of a job's outputs: its last path, and its changes as JSON.
pub(crate) struct OutputPart {
    pub last_path: String,
    pub changes: String,
}

/// A job's outputs as stored: sorted by path, cut into parts of [`OUTPUT_PART`] (none when
/// nothing changed).
pub(crate) fn output_parts(changes: &[FileChange]) -> Result<Vec<OutputPart>> {
    let mut sorted: Vec<&FileChange> = changes.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    sorted
        .chunks(OUTPUT_PART)
        .map(|part| {
            let changes = serde_json::to_string(part)
                .map_err(|e| Error::internal(format!("store: cannot encode job outputs: {e}")))?;
            let last_path = part.last().map(|c| c.path.clone()).unwrap_or_default();
            Ok(OutputPart { last_path, changes })
        })
        .collect()
}

/// How many parts, from the first that ends after the page's start, hold a page of `limit`
/// changes: the first is entered midway and the last may be short, hence the two more (a list
/// stored before parts existed is one part, of any length).
pub(crate) fn output_parts_for(limit: usize) -> usize {
    limit / OUTPUT_PART + 2
}

/// A page out of the parts read (JSON, in part order): the changes after `after`, at most
/// `limit`.
pub(crate) fn outputs_page<'a>(
    parts: impl IntoIterator<Item = &'a str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<FileChange>> {
    let mut page = Vec::new();
    for json in parts {
        let changes: Vec<FileChange> = serde_json::from_str(json).map_err(|_| {
            Error::internal("store: a part of a job's outputs does not hold valid JSON")
        })?;
        let fresh = changes
            .into_iter()
            .filter(|c| after.is_none_or(|a| c.path.as_str() > a));
        page.extend(fresh.take(limit - page.len()));
        if page.len() == limit {
            break;
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    fn event(seq: u64) -> JobEvent {
        JobEvent {
            seq,
            time: Timestamp::now(),
            raw: None,
            kind: EventKind::Text {
                text: String::new(),
            },
        }
    }

    #[test]
    fn admission_refuses_at_the_limit_with_its_reason() {
        let s = SessionId::generate();
        assert!(admit_to_session(&s, 1, 2).is_ok());
        let e = admit_to_session(&s, 2, 2).unwrap_err();
        assert_eq!(e.reason(), Reason::QueueFull);
        let t = TenantId("acme".into());
        assert!(admit_for_tenant(&t, 100, 0).is_ok(), "0 means no limit");
        assert_eq!(
            admit_for_tenant(&t, 3, 3).unwrap_err().reason(),
            Reason::TooManyJobs
        );
    }

    #[test]
    fn appends_must_continue_an_open_log() {
        let j = JobId::generate();
        assert_eq!(
            check_append(&j, false, 4, &[event(5), event(6)]).unwrap(),
            6
        );
        assert_eq!(check_append(&j, false, 4, &[]).unwrap(), 4);
        assert_eq!(
            check_append(&j, true, 4, &[event(5)]).unwrap_err().reason(),
            Reason::JobFinished
        );
        assert_eq!(
            check_append(&j, false, 4, &[event(6)])
                .unwrap_err()
                .reason(),
            Reason::Internal
        );
    }
}
