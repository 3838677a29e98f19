//! Each tenant's change sequence in SQLite (see `Store::read_changes`). The one writer thread
//! serializes every write, so taking the next seq from `change_seqs` in the transaction of the
//! change keeps a tenant's seqs gapless and visible in order.

use super::db;
use super::ops::{job_row_at, json_col, sql_int, to_json, uint};
use crate::domain::{JobId, JobState, TenantId, Timestamp, Usage};
use crate::error::{Error, Result};
use crate::store::{ChangeMark, JobChange};
use rusqlite::{Connection, OptionalExtension, params};

/// A job's state right after a change, as the change row keeps it.
pub(super) struct Snapshot<'a> {
    pub tenant: &'a str,
    pub job: &'a JobId,
    pub state: &'a JobState,
    pub result: &'a str,
    pub usage: &'a Usage,
    pub conversation_id: Option<&'a str>,
    pub last_seq: u64,
}

/// Appends one change to the tenant's sequence; returns its seq.
pub(super) fn record(conn: &Connection, s: &Snapshot<'_>) -> Result<u64> {
    let seq: i64 = conn
        .prepare_cached(
            "INSERT INTO change_seqs (tenant, last_seq) VALUES (?1, 1) \
             ON CONFLICT (tenant) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        )
        .and_then(|mut st| st.query_row([s.tenant], |r| r.get(0)))
        .map_err(db)?;
    conn.prepare_cached(
        "INSERT INTO job_changes (tenant, seq, job_id, time, state, result, usage, \
         conversation_id, last_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.tenant,
            seq,
            s.job.as_str(),
            Timestamp::now().micros(),
            to_json(s.state, "job state").map_err(to_sql)?,
            s.result,
            to_json(s.usage, "job usage").map_err(to_sql)?,
            s.conversation_id,
            sql_int(s.last_seq),
        ])
    })
    .map_err(db)?;
    Ok(u64::try_from(seq).unwrap_or(0))
}

fn to_sql(e: Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(e.to_string())))
}

/// `(last_seq, pruned_through)` of the tenant's sequence.
fn bounds(conn: &Connection, tenant: &TenantId) -> Result<(u64, u64)> {
    let row = conn
        .prepare_cached("SELECT last_seq, pruned_through FROM change_seqs WHERE tenant = ?1")
        .and_then(|mut st| {
            st.query_row([tenant.as_str()], |r| Ok((uint(r, 0)?, uint(r, 1)?)))
                .optional()
        })
        .map_err(db)?;
    Ok(row.unwrap_or((0, 0)))
}

pub(super) fn last_change(conn: &Connection, tenant: &TenantId) -> Result<u64> {
    Ok(bounds(conn, tenant)?.0)
}

pub(super) fn read_changes(
    conn: &Connection,
    tenant: &TenantId,
    after: u64,
    limit: usize,
) -> Result<Vec<JobChange>> {
    // One read transaction: the bounds and the rows come from the same snapshot.
    conn.execute_batch("BEGIN").map_err(db)?;
    let out = read_in_snapshot(conn, tenant, after, limit);
    conn.execute_batch("COMMIT").map_err(db)?;
    out
}

fn read_in_snapshot(
    conn: &Connection,
    tenant: &TenantId,
    after: u64,
    limit: usize,
) -> Result<Vec<JobChange>> {
    let (_, pruned) = bounds(conn, tenant)?;
    if after < pruned {
        return Err(crate::store::cursor_expired(after, pruned));
    }
    conn.prepare_cached(
        "SELECT j.id, j.session_id, j.tenant, j.created, j.spec, c.state, j.request_id, \
                c.result, c.usage, c.conversation_id, c.last_seq, c.seq, c.time \
         FROM job_changes c JOIN jobs j ON j.id = c.job_id \
         WHERE c.tenant = ?1 AND c.seq > ?2 ORDER BY c.seq LIMIT ?3",
    )
    .and_then(|mut st| {
        st.query_map(
            params![tenant.as_str(), sql_int(after), sql_int(limit as u64)],
            |r| {
                Ok(JobChange {
                    job: job_row_at(r, 0)?,
                    seq: uint(r, 11)?,
                    time: Timestamp(r.get(12)?),
                })
            },
        )?
        .collect()
    })
    .map_err(db)
}

pub(super) fn job_change_marks(
    conn: &Connection,
    tenant: &TenantId,
    job: &JobId,
    before: u64,
) -> Result<Vec<ChangeMark>> {
    conn.prepare_cached(
        "SELECT seq, state, last_seq FROM job_changes \
         WHERE job_id = ?1 AND tenant = ?2 AND seq < ?3 ORDER BY seq",
    )
    .and_then(|mut st| {
        st.query_map(
            params![job.as_str(), tenant.as_str(), sql_int(before)],
            |r| {
                Ok(ChangeMark {
                    seq: uint(r, 0)?,
                    state: json_col::<JobState>(r, 1, "job_changes.state")?.name(),
                    last_seq: uint(r, 2)?,
                })
            },
        )?
        .collect()
    })
    .map_err(db)
}

/// Deletes changes older than `before` of jobs that are gone, or final with their final change
/// older than `before` too: a job still changing keeps its earlier changes, whose marks its later
/// change needs (see `Store::prune_changes`). Expires cursors up to the last change of every job
/// it touched, so a batch that leaves some of a job's changes for the next one never lets a
/// cursor read the rest without their marks.
pub(super) fn prune_changes(conn: &Connection, before: Timestamp, limit: usize) -> Result<u64> {
    let gone = conn
        .prepare_cached(
            "DELETE FROM job_changes WHERE (tenant, seq) IN (
                 SELECT c.tenant, c.seq FROM job_changes c
                 WHERE c.time < ?1
                   AND NOT EXISTS (SELECT 1 FROM job_changes l
                                   WHERE l.job_id = c.job_id AND l.seq > c.seq AND l.time >= ?1)
                   AND NOT EXISTS (SELECT 1 FROM jobs j
                                   WHERE j.id = c.job_id AND j.state_name IN ('QUEUED', 'RUNNING'))
                 ORDER BY c.time LIMIT ?2)
             RETURNING tenant, seq, job_id",
        )
        .and_then(|mut st| {
            st.query_map(params![before.micros(), sql_int(limit as u64)], |r| {
                Ok((r.get::<_, String>(0)?, uint(r, 1)?, r.get::<_, String>(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(db)?;
    let mut through: std::collections::HashMap<&str, u64> = Default::default();
    let mut jobs = std::collections::HashSet::new();
    for (tenant, seq, job) in &gone {
        let e = through.entry(tenant.as_str()).or_default();
        *e = (*e).max(*seq);
        if jobs.insert(job.as_str()) {
            let left: Option<i64> = conn
                .prepare_cached("SELECT max(seq) FROM job_changes WHERE job_id = ?1")
                .and_then(|mut st| st.query_row([job], |r| r.get(0)))
                .map_err(db)?;
            let left = left.map_or(0, |s| u64::try_from(s).unwrap_or(0));
            *e = (*e).max(left);
        }
    }
    for (tenant, seq) in through {
        conn.prepare_cached(
            "UPDATE change_seqs SET pruned_through = max(pruned_through, ?2) WHERE tenant = ?1",
        )
        .and_then(|mut st| st.execute(params![tenant, sql_int(seq)]))
        .map_err(db)?;
    }
    Ok(gone.len() as u64)
}
