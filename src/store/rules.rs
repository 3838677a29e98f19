//! The rules both store backends enforce, written once: admission (a session's queue, a tenant's
//! active jobs) and the append checks (the job exists, its log is open, the events continue it),
//! with their reasons and messages. The backends only count and lock; the verdict is here.

use crate::domain::{JobEvent, JobId, SessionId, TenantId};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, Timestamp};

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
