//! Control messages in SQLite (issue #17; one replica, so they only ever hold the claims of
//! answers delivered here): the shared SQL of `store::control`.

use super::db;
use crate::domain::JobId;
use crate::error::Result;
use crate::store::control::{self, Control, ControlMessage, ControlOutcome};
use rusqlite::{Connection, OptionalExtension, params};

pub(super) fn send(
    conn: &Connection,
    job: &JobId,
    c: &Control,
    delivered: bool,
    now: i64,
) -> Result<Option<i64>> {
    let (kind, request, allow, body) = c.columns();
    conn.prepare_cached(control::INSERT)
        .and_then(|mut st| {
            st.query_row(
                params![job.as_str(), kind, request, allow, body, now, delivered],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(db)
}

pub(super) fn pending(conn: &Connection, replica: &str) -> Result<Vec<ControlMessage>> {
    let mut st = conn.prepare_cached(control::PENDING).map_err(db)?;
    let rows = st
        .query_map([replica], |r| {
            let (id, job, kind): (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let c = Control::from_columns(&kind, r.get(3)?, r.get(4)?, r.get(5)?);
            Ok(c.map(|control| ControlMessage {
                id,
                job: JobId::from_trusted(job),
                control,
            }))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(db)?;
    Ok(rows.into_iter().flatten().collect())
}

pub(super) fn settle(conn: &Connection, id: i64, refusal: Option<(&str, &str)>) -> Result<()> {
    let (reason, message) = refusal.unzip();
    conn.prepare_cached(control::SETTLE)
        .and_then(|mut st| st.execute(params![reason, message, id]))
        .map(|_| ())
        .map_err(db)
}

pub(super) fn outcome(conn: &Connection, id: i64) -> Result<Option<ControlOutcome>> {
    let row: Option<(bool, Option<String>, Option<String>)> = conn
        .prepare_cached(control::OUTCOME)
        .and_then(|mut st| {
            st.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(db)?;
    Ok(row
        .filter(|(done, _, _)| *done)
        .map(|(_, reason, message)| ControlOutcome::from_columns(reason, message)))
}
