//! Rewinds in SQLite (issue #18): the hold a RewindSession keeps on its session while it swaps
//! the workspace, and the record of the rewind (conversations, which jobs it put the session back
//! before). Each function runs in one writer transaction, which also orders it against job admission.

use super::db;
use crate::domain::{JobId, SessionId, Timestamp};
use crate::error::{Error, Result};
use crate::store::{Rewind, conversations, rules};
use rusqlite::{Connection, OptionalExtension, params};

pub(super) fn hold(
    conn: &Connection,
    session: &SessionId,
    now: Timestamp,
    until: Timestamp,
) -> Result<()> {
    let held: Option<Option<i64>> = conn
        .prepare_cached("SELECT rewinding_until FROM sessions WHERE id = ?1")
        .and_then(|mut st| st.query_row([session.as_str()], |r| r.get(0)).optional())
        .map_err(db)?;
    let Some(held) = held else {
        return Err(Error::session_not_found(session.as_str()));
    };
    let busy = conn
        .prepare_cached(rules::BUSY_JOB)
        .and_then(|mut st| {
            st.query_row([session.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db)?;
    rules::hold_for_rewind(session, busy, held, now)?;
    set_hold(conn, session, Some(until))
}

pub(super) fn set_hold(
    conn: &Connection,
    session: &SessionId,
    until: Option<Timestamp>,
) -> Result<()> {
    conn.prepare_cached(rules::SET_HOLD)
        .and_then(|mut st| st.execute(params![until.map(Timestamp::micros), session.as_str()]))
        .map(|_| ())
        .map_err(db)
}

pub(super) fn rewind(conn: &Connection, r: &Rewind) -> Result<()> {
    conn.prepare_cached("UPDATE sessions SET conversation_id = ?2 WHERE id = ?1")
        .and_then(|mut st| st.execute(params![r.session.as_str(), r.conversation]))
        .map_err(db)?;
    set_hold(conn, &r.session, None)?;
    if let Some(agent) = &r.agent {
        let n = match &r.conversation {
            Some(c) => conn
                .prepare_cached(conversations::UPSERT)
                .and_then(|mut st| {
                    st.execute(params![r.session.as_str(), agent, c, r.at.micros()])
                }),
            None => conn
                .prepare_cached(conversations::DELETE)
                .and_then(|mut st| st.execute(params![r.session.as_str(), agent])),
        };
        n.map_err(db)?;
    }
    let mut mark = conn
        .prepare_cached(
            "INSERT INTO rewound_jobs (job_id, session_id, rewound) VALUES (?1, ?2, ?3) \
             ON CONFLICT (job_id) DO NOTHING",
        )
        .map_err(db)?;
    for job in &r.past {
        mark.execute(params![job.as_str(), r.session.as_str(), r.at.micros()])
            .map_err(db)?;
    }
    if let Some(job) = &r.current {
        conn.prepare_cached("DELETE FROM rewound_jobs WHERE job_id = ?1")
            .and_then(|mut st| st.execute([job.as_str()]))
            .map_err(db)?;
    }
    Ok(())
}

pub(super) fn rewound(conn: &Connection, session: &SessionId) -> Result<Vec<JobId>> {
    let mut st = conn
        .prepare_cached("SELECT job_id FROM rewound_jobs WHERE session_id = ?1 ORDER BY job_id")
        .map_err(db)?;
    let ids = st
        .query_map([session.as_str()], |r| r.get::<_, String>(0))
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(db)?;
    Ok(ids.into_iter().map(JobId::from_trusted).collect())
}
