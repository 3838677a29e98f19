//! Rewind marks in SQLite (issue #18): which jobs a RewindSession put their session back before.

use super::db;
use crate::domain::{JobId, SessionId};
use crate::error::Result;
use crate::store::Rewind;
use rusqlite::{Connection, params};

pub(super) fn rewind(conn: &Connection, r: &Rewind) -> Result<()> {
    conn.prepare_cached("UPDATE sessions SET conversation_id = ?2 WHERE id = ?1")
        .and_then(|mut st| st.execute(params![r.session.as_str(), r.conversation]))
        .map_err(db)?;
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
