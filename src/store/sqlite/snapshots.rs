//! The workspace history's index in SQLite: which tree was taken on which side of which job.

use super::db;
use crate::domain::{JobId, SessionId, Timestamp};
use crate::error::{Error, Result};
use crate::store::{SnapPoint, SnapshotFilter, SnapshotRow};
use rusqlite::{Connection, OptionalExtension, Row, params};

pub(super) fn put(conn: &Connection, r: &SnapshotRow) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO snapshots (job_id, point, session_id, tree, bytes_added, created) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (job_id, point) DO UPDATE SET tree = excluded.tree, \
         bytes_added = excluded.bytes_added, created = excluded.created",
    )
    .and_then(|mut st| {
        st.execute(params![
            r.job.as_str(),
            r.point.as_str(),
            r.session.as_str(),
            r.tree,
            i64::try_from(r.bytes_added).unwrap_or(i64::MAX),
            r.created.micros(),
        ])
    })
    .map_err(db)?;
    Ok(())
}

/// A row of [`COLUMNS`], in its order.
type Raw = (String, String, String, String, i64, i64);

const COLUMNS: &str = "job_id, point, session_id, tree, bytes_added, created";

fn row(r: &Row) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

pub(super) fn list(conn: &Connection, f: &SnapshotFilter) -> Result<Vec<SnapshotRow>> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM snapshots \
                 WHERE (?1 IS NULL OR job_id = ?1) AND (?2 IS NULL OR session_id = ?2) \
                 ORDER BY created, job_id, point"
        ))
        .map_err(db)?;
    let rows = st
        .query_map(
            params![
                f.job.as_ref().map(JobId::as_str),
                f.session.as_ref().map(SessionId::as_str)
            ],
            row,
        )
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(db)?;
    rows.into_iter().map(decode).collect()
}

fn decode((job, point, session, tree, bytes, created): Raw) -> Result<SnapshotRow> {
    Ok(SnapshotRow {
        job: JobId::from_trusted(job),
        point: SnapPoint::parse(&point)
            .ok_or_else(|| Error::internal("store: snapshots.point is not a point"))?,
        session: SessionId::from_trusted(session),
        tree,
        bytes_added: u64::try_from(bytes).unwrap_or(0),
        created: Timestamp(created),
    })
}

/// The last row `list` would give for the session, by the `(session_id, created)` index.
pub(super) fn newest(conn: &Connection, session: &SessionId) -> Result<Option<SnapshotRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM snapshots WHERE session_id = ?1 \
         ORDER BY created DESC, job_id DESC, point DESC LIMIT 1"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut st| st.query_row([session.as_str()], row).optional())
        .map_err(db)?
        .map(decode)
        .transpose()
}

pub(super) fn bytes(conn: &Connection) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT coalesce(sum(bytes_added), 0) FROM snapshots")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(db)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(super) fn delete(conn: &Connection, keys: &[(JobId, SnapPoint)]) -> Result<u64> {
    let mut st = conn
        .prepare_cached("DELETE FROM snapshots WHERE job_id = ?1 AND point = ?2")
        .map_err(db)?;
    let mut n = 0u64;
    for (job, point) in keys {
        n += st
            .execute(params![job.as_str(), point.as_str()])
            .map_err(db)? as u64;
    }
    Ok(n)
}
