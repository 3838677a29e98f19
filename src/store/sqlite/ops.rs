//! The SQL of every store operation, as synchronous functions on a connection, plus the mapping
//! between rows and domain types. Write functions run on the writer thread inside a savepoint;
//! read functions on a pooled read connection.

use super::db;
use crate::domain::{
    FileChange, Job, JobEvent, JobId, JobState, PageCursor, Session, SessionId, TenantId, Timestamp,
};
use crate::error::{Error, Result};
use crate::store::{AdmitLimits, Claimed, JobFilter, JobWrite, Orphan, StartFacts, rules};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::time::Duration;

macro_rules! session_cols {
    () => {
        "id, tenant, labels, created, expires, ttl_us, request_id, conversation_id, job_count"
    };
}

macro_rules! job_cols {
    () => {
        "id, session_id, tenant, created, spec, state, request_id, result, usage, \
         conversation_id, last_seq"
    };
}

/// A column that does not hold what this build wrote. The message names the column only: the
/// serde error could quote stored (client) data.
#[derive(Debug)]
struct Corrupt(&'static str);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {} does not hold valid JSON for its type", self.0)
    }
}

impl std::error::Error for Corrupt {}

pub(super) fn json_col<T: DeserializeOwned>(
    row: &Row<'_>,
    idx: usize,
    name: &'static str,
) -> rusqlite::Result<T> {
    let text = row.get_ref(idx)?.as_str()?;
    serde_json::from_str(text).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(Corrupt(name)))
    })
}

pub(super) fn to_json<T: Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::internal(format!("store: cannot encode {what}: {e}")))
}

/// Reads a column this store only ever fills with non-negative integers.
pub(super) fn uint(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

/// SQLite integers are i64; counts and limits beyond that range mean "no limit".
pub(super) fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn ttl_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn session_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: SessionId::from_trusted(row.get(0)?),
        tenant: TenantId(row.get(1)?),
        labels: json_col(row, 2, "sessions.labels")?,
        created: Timestamp(row.get(3)?),
        expires: Timestamp(row.get(4)?),
        ttl: Duration::from_micros(uint(row, 5)?),
        request_id: row.get(6)?,
        conversation_id: row.get(7)?,
        job_count: uint(row, 8)?,
    })
}

fn job_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    job_row_at(row, 0)
}

/// A job whose `job_cols!()` start at column `at`.
pub(super) fn job_row_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Job> {
    Ok(Job {
        id: JobId::from_trusted(row.get(at)?),
        session_id: SessionId::from_trusted(row.get(at + 1)?),
        tenant: TenantId(row.get(at + 2)?),
        created: Timestamp(row.get(at + 3)?),
        spec: json_col(row, at + 4, "jobs.spec")?,
        state: json_col(row, at + 5, "jobs.state")?,
        request_id: row.get(at + 6)?,
        result: row.get(at + 7)?,
        usage: json_col(row, at + 8, "jobs.usage")?,
        conversation_id: row.get(at + 9)?,
        last_seq: uint(row, at + 10)?,
    })
}

fn event_row(row: &Row<'_>) -> rusqlite::Result<JobEvent> {
    Ok(JobEvent {
        seq: uint(row, 0)?,
        time: Timestamp(row.get(1)?),
        raw: row.get(2)?,
        kind: json_col(row, 3, "events.kind")?,
    })
}

// ---- sessions ----------------------------------------------------------------------------------

pub(super) fn create_session(conn: &Connection, s: &Session) -> Result<Session> {
    if let Some(rid) = &s.request_id {
        let existing = conn
            .prepare_cached(concat!(
                "SELECT ",
                session_cols!(),
                " FROM sessions WHERE tenant = ?1 AND request_id = ?2"
            ))
            .and_then(|mut st| {
                st.query_row(params![s.tenant.as_str(), rid], session_row)
                    .optional()
            })
            .map_err(db)?;
        if let Some(existing) = existing {
            return Ok(existing);
        }
    }
    let labels = to_json(&s.labels, "session labels")?;
    conn.prepare_cached(concat!(
        "INSERT INTO sessions (",
        session_cols!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            s.id.as_str(),
            s.tenant.as_str(),
            labels,
            s.created.micros(),
            s.expires.micros(),
            ttl_micros(s.ttl),
            s.request_id,
            s.conversation_id,
            sql_int(s.job_count),
        ])
    })
    .map_err(db)?;
    Ok(s.clone())
}

pub(super) fn get_session(
    conn: &Connection,
    tenant: Option<&TenantId>,
    id: &SessionId,
) -> Result<Option<Session>> {
    let mut st = conn
        .prepare_cached(concat!(
            "SELECT ",
            session_cols!(),
            " FROM sessions WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)"
        ))
        .map_err(db)?;
    st.query_row(
        params![id.as_str(), tenant.map(TenantId::as_str)],
        session_row,
    )
    .optional()
    .map_err(db)
}

/// Sessions carrying every wanted label: no wanted (key, value) pair is missing from `labels`.
/// Both sides are JSON objects so one cached statement serves any label set.
macro_rules! has_labels {
    () => {
        "NOT EXISTS (SELECT 1 FROM json_each(?2) AS want WHERE NOT EXISTS ( \
             SELECT 1 FROM json_each(sessions.labels) AS have \
             WHERE have.key = want.key AND have.value = want.value))"
    };
}

pub(super) fn list_sessions(
    conn: &Connection,
    tenant: &TenantId,
    labels: &BTreeMap<String, String>,
    after: Option<&PageCursor>,
    limit: usize,
) -> Result<Vec<Session>> {
    let labels = to_json(labels, "label filter")?;
    let limit = sql_int(limit as u64);
    // Two statements rather than `?3 IS NULL OR …`, which would stop the index range scan.
    let mut st;
    let rows = match after {
        None => {
            st = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    session_cols!(),
                    " FROM sessions WHERE tenant = ?1 AND ",
                    has_labels!(),
                    " ORDER BY created DESC, id DESC LIMIT ?3"
                ))
                .map_err(db)?;
            st.query_map(params![tenant.as_str(), labels, limit], session_row)
        }
        Some(c) => {
            st = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    session_cols!(),
                    " FROM sessions WHERE tenant = ?1 AND ",
                    has_labels!(),
                    " AND (created, id) < (?4, ?5) ORDER BY created DESC, id DESC LIMIT ?3"
                ))
                .map_err(db)?;
            st.query_map(
                params![tenant.as_str(), labels, limit, c.created.micros(), c.id],
                session_row,
            )
        }
    };
    rows.and_then(|r| r.collect()).map_err(db)
}

pub(super) fn prune_events(conn: &Connection, before: Timestamp, limit: usize) -> Result<u64> {
    let n = conn
        .prepare_cached(
            "DELETE FROM events WHERE (job_pk, seq) IN (
                 SELECT e.job_pk, e.seq FROM events e JOIN jobs j ON j.pk = e.job_pk
                 WHERE j.state_name IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT')
                   AND e.time < ?1 AND e.seq < j.last_seq
                 LIMIT ?2)",
        )
        .and_then(|mut st| st.execute(params![before.micros(), limit as i64]))
        .map_err(db)?;
    Ok(n as u64)
}

pub(super) fn set_session_expiry(
    conn: &Connection,
    id: &SessionId,
    expires: Timestamp,
) -> Result<()> {
    let n = conn
        .prepare_cached("UPDATE sessions SET expires = ?2 WHERE id = ?1")
        .and_then(|mut st| st.execute(params![id.as_str(), expires.micros()]))
        .map_err(db)?;
    if n == 0 {
        return Err(Error::session_not_found(id.as_str()));
    }
    Ok(())
}

pub(super) fn delete_session(conn: &Connection, id: &SessionId) -> Result<()> {
    // Explicit deletes, children first: cheaper than letting each cascade level discover its rows.
    for sql in [
        "DELETE FROM events WHERE job_pk IN (SELECT pk FROM jobs WHERE session_id = ?1)",
        "DELETE FROM job_output_parts WHERE job_pk IN (SELECT pk FROM jobs WHERE session_id = ?1)",
        "DELETE FROM jobs WHERE session_id = ?1",
        "DELETE FROM sessions WHERE id = ?1",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut st| st.execute([id.as_str()]))
            .map_err(db)?;
    }
    Ok(())
}

pub(super) fn expired_sessions(
    conn: &Connection,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<Session>> {
    let mut st = conn
        .prepare_cached(concat!(
            "SELECT ",
            session_cols!(),
            " FROM sessions WHERE expires <= ?1 ORDER BY expires, id LIMIT ?2"
        ))
        .map_err(db)?;
    st.query_map(params![now.micros(), sql_int(limit as u64)], session_row)
        .and_then(|r| r.collect())
        .map_err(db)
}

// ---- jobs --------------------------------------------------------------------------------------

pub(super) fn create_job(
    conn: &Connection,
    job: &Job,
    session_expires: Timestamp,
    limits: &AdmitLimits,
) -> Result<Job> {
    if let Some(rid) = &job.request_id {
        let existing = conn
            .prepare_cached(concat!(
                "SELECT ",
                job_cols!(),
                " FROM jobs WHERE tenant = ?1 AND request_id = ?2"
            ))
            .and_then(|mut st| {
                st.query_row(params![job.tenant.as_str(), rid], job_row)
                    .optional()
            })
            .map_err(db)?;
        if let Some(existing) = existing {
            return Ok(existing);
        }
    }
    // The tenant is part of the match so a job can never land in another tenant's session.
    let held: Option<Option<i64>> = conn
        .prepare_cached("SELECT rewinding_until FROM sessions WHERE id = ?1 AND tenant = ?2")
        .and_then(|mut st| {
            st.query_row(params![job.session_id.as_str(), job.tenant.as_str()], |r| {
                r.get(0)
            })
            .optional()
        })
        .map_err(db)?;
    let Some(held) = held else {
        return Err(Error::session_not_found(job.session_id.as_str()));
    };
    rules::admit_while_rewinding(&job.session_id, held, job.created)?;
    // Checked here, in the insert's transaction, so concurrent submissions cannot both slip in.
    admit(conn, job, limits)?;
    let n = conn
        .prepare_cached(
            "UPDATE sessions SET job_count = job_count + 1, expires = ?3 \
             WHERE id = ?1 AND tenant = ?2",
        )
        .and_then(|mut st| {
            st.execute(params![
                job.session_id.as_str(),
                job.tenant.as_str(),
                session_expires.micros()
            ])
        })
        .map_err(db)?;
    if n == 0 {
        return Err(Error::session_not_found(job.session_id.as_str()));
    }
    let spec = to_json(&job.spec, "job spec")?;
    let state = to_json(&job.state, "job state")?;
    let usage = to_json(&job.usage, "job usage")?;
    conn.prepare_cached(concat!(
        "INSERT INTO jobs (",
        job_cols!(),
        ", state_name) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            job.id.as_str(),
            job.session_id.as_str(),
            job.tenant.as_str(),
            job.created.micros(),
            spec,
            state,
            job.request_id,
            job.result,
            usage,
            job.conversation_id,
            sql_int(job.last_seq),
            job.state.name(),
        ])
    })
    .map_err(db)?;
    super::changes::record(
        conn,
        &super::changes::Snapshot {
            tenant: job.tenant.as_str(),
            job: &job.id,
            state: &job.state,
            result: &job.result,
            usage: &job.usage,
            conversation_id: job.conversation_id.as_deref(),
            last_seq: job.last_seq,
        },
    )?;
    Ok(job.clone())
}

fn count(conn: &Connection, sql: &str, key: &str) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached(sql)
        .and_then(|mut st| st.query_row([key], |r| r.get(0)))
        .map_err(db)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Refuses a job beyond the session's queue or the tenant's active-job limit.
fn admit(conn: &Connection, job: &Job, limits: &AdmitLimits) -> Result<()> {
    // Claimed jobs have left the queue as far as the session's limit is concerned: they are about
    // to start. The `IN` term lets the planner use the partial index.
    let queued = count(
        conn,
        "SELECT count(*) FROM jobs WHERE session_id = ?1 \
         AND state_name IN ('QUEUED', 'RUNNING') AND state_name = 'QUEUED' AND owner IS NULL",
        job.session_id.as_str(),
    )?;
    rules::admit_to_session(&job.session_id, queued, limits.max_queued_in_session)?;
    if limits.max_active_for_tenant > 0 {
        let active = count(
            conn,
            "SELECT count(*) FROM jobs WHERE tenant = ?1 AND state_name IN ('QUEUED', 'RUNNING')",
            job.tenant.as_str(),
        )?;
        rules::admit_for_tenant(&job.tenant, active, limits.max_active_for_tenant)?;
    }
    Ok(())
}

pub(super) fn get_job(conn: &Connection, id: &JobId) -> Result<Option<Job>> {
    let mut st = conn
        .prepare_cached(concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = ?1"))
        .map_err(db)?;
    st.query_row([id.as_str()], job_row).optional().map_err(db)
}

/// Jobs whose state is among the wanted ones; `?2` is a JSON array, or NULL for every state.
macro_rules! in_states {
    () => {
        "(?2 IS NULL OR state_name IN (SELECT value FROM json_each(?2)))"
    };
}

pub(super) fn list_jobs(
    conn: &Connection,
    session: &SessionId,
    filter: &JobFilter,
    after: Option<&PageCursor>,
    limit: usize,
) -> Result<Vec<Job>> {
    let states = if filter.states.is_empty() {
        None
    } else {
        Some(to_json(&filter.states, "state filter")?)
    };
    let limit = sql_int(limit as u64);
    let mut st;
    let rows = match after {
        None => {
            st = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    job_cols!(),
                    " FROM jobs WHERE session_id = ?1 AND ",
                    in_states!(),
                    " ORDER BY created DESC, id DESC LIMIT ?3"
                ))
                .map_err(db)?;
            st.query_map(params![session.as_str(), states, limit], job_row)
        }
        Some(c) => {
            st = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    job_cols!(),
                    " FROM jobs WHERE session_id = ?1 AND ",
                    in_states!(),
                    " AND (created, id) < (?4, ?5) ORDER BY created DESC, id DESC LIMIT ?3"
                ))
                .map_err(db)?;
            st.query_map(
                params![session.as_str(), states, limit, c.created.micros(), c.id],
                job_row,
            )
        }
    };
    rows.and_then(|r| r.collect()).map_err(db)
}

pub(super) fn unfinished_jobs(conn: &Connection) -> Result<Vec<Job>> {
    let mut st = conn
        .prepare_cached(concat!(
            "SELECT ",
            job_cols!(),
            " FROM jobs WHERE state_name IN ('QUEUED', 'RUNNING') ORDER BY created, id"
        ))
        .map_err(db)?;
    st.query_map([], job_row)
        .and_then(|r| r.collect())
        .map_err(db)
}

pub(super) fn latest_succeeded_job(conn: &Connection, session: &SessionId) -> Result<Option<Job>> {
    let mut st = conn
        .prepare_cached(concat!(
            "SELECT ",
            job_cols!(),
            " FROM jobs WHERE session_id = ?1 AND state_name = 'SUCCEEDED' \
              ORDER BY created DESC, id DESC LIMIT 1"
        ))
        .map_err(db)?;
    st.query_row([session.as_str()], job_row)
        .optional()
        .map_err(db)
}

// ---- claims and leases -------------------------------------------------------------------------

pub(super) fn claim_jobs(
    conn: &Connection,
    replica: &str,
    lease_until: Timestamp,
    limit: usize,
    tenant_max_running: usize,
) -> Result<Vec<Claimed>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Runnable: queued, unowned, and no older unfinished job of its session (whoever owns it).
    // A tenant's k-th runnable job (oldest first) would make its running count `running + k - 1`
    // when picked: ordering by that load, then age, picks the least busy tenant each time.
    let mut found: Vec<(i64, Job, Option<String>)> = conn
        .prepare_cached(concat!(
            "WITH run AS ( \
               SELECT tenant, count(*) AS n FROM jobs \
               WHERE state_name IN ('QUEUED', 'RUNNING') \
                 AND (owner IS NOT NULL OR state_name = 'RUNNING') GROUP BY tenant), \
             cand AS ( \
               SELECT j.pk, j.tenant, \
                 row_number() OVER (PARTITION BY j.tenant ORDER BY j.created, j.id) AS k \
               FROM jobs AS j WHERE state_name = 'QUEUED' AND owner IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM jobs AS o WHERE o.session_id = j.session_id \
                   AND o.state_name IN ('QUEUED', 'RUNNING') \
                   AND (o.created, o.id) < (j.created, j.id))), \
             ranked AS ( \
               SELECT cand.pk AS rpk, coalesce(run.n, 0) + cand.k - 1 AS load \
               FROM cand LEFT JOIN run ON run.tenant = cand.tenant) \
             SELECT pk, cancel_reason, ",
            job_cols!(),
            " FROM jobs JOIN ranked ON ranked.rpk = jobs.pk \
              WHERE ?2 = 0 OR load < ?2 \
              ORDER BY load, created, id LIMIT ?1"
        ))
        .and_then(|mut st| {
            st.query_map(
                params![sql_int(limit as u64), sql_int(tenant_max_running as u64)],
                |r| Ok((r.get(0)?, job_row_at(r, 2)?, r.get(1)?)),
            )?
            .collect()
        })
        .map_err(db)?;
    found.sort_by(|(_, a, _), (_, b, _)| {
        (a.created, a.id.as_str()).cmp(&(b.created, b.id.as_str()))
    });
    let mut claim = conn
        .prepare_cached("UPDATE jobs SET owner = ?2, lease_until = ?3 WHERE pk = ?1")
        .map_err(db)?;
    let mut claimed = Vec::with_capacity(found.len());
    for (pk, job, cancel_reason) in found {
        claim
            .execute(params![pk, replica, lease_until.micros()])
            .map_err(db)?;
        let start = Some(start_facts(conn, &job)?);
        claimed.push(Claimed {
            job,
            cancel_reason,
            start,
        });
    }
    Ok(claimed)
}

/// Read in the claim's transaction, where they cost no thread hand-over of their own.
fn start_facts(conn: &Connection, job: &Job) -> Result<StartFacts> {
    Ok(StartFacts {
        session: get_session(conn, None, &job.session_id)?,
        conversation: agent_conversation(conn, &job.session_id, &job.spec.agent)?,
        newest_snapshot: super::snapshots::newest(conn, &job.session_id)?,
    })
}

pub(super) fn agent_conversation(
    conn: &Connection,
    session: &SessionId,
    agent: &str,
) -> Result<Option<String>> {
    conn.prepare_cached(crate::store::conversations::SELECT)
        .and_then(|mut st| {
            st.query_row(params![session.as_str(), agent], |r| r.get(0))
                .optional()
        })
        .map_err(db)
}

pub(super) fn renew_leases(
    conn: &Connection,
    replica: &str,
    lease_until: Timestamp,
) -> Result<Vec<JobId>> {
    conn.prepare_cached(
        "UPDATE jobs SET lease_until = ?2 \
         WHERE owner = ?1 AND state_name IN ('QUEUED', 'RUNNING') RETURNING id",
    )
    .and_then(|mut st| {
        st.query_map(params![replica, lease_until.micros()], |r| {
            Ok(JobId::from_trusted(r.get(0)?))
        })?
        .collect()
    })
    .map_err(db)
}

pub(super) fn expired_leases(
    conn: &Connection,
    now: Timestamp,
    running_before: Timestamp,
    limit: usize,
) -> Result<Vec<Orphan>> {
    conn.prepare_cached(concat!(
        "SELECT owner, lease_until, lease_gen, ",
        job_cols!(),
        " FROM jobs WHERE owner IS NOT NULL AND lease_until < ?1 \
          AND (state_name = 'QUEUED' OR (state_name = 'RUNNING' AND lease_until < ?3)) \
          ORDER BY lease_until, id LIMIT ?2"
    ))
    .and_then(|mut st| {
        st.query_map(
            params![now.micros(), sql_int(limit as u64), running_before.micros()],
            |r| {
                Ok(Orphan {
                    owner: r.get(0)?,
                    lease_until: Timestamp(r.get(1)?),
                    lease_gen: r.get::<_, i64>(2)? as u64,
                    job: job_row_at(r, 3)?,
                })
            },
        )?
        .collect()
    })
    .map_err(db)
}

pub(super) fn take_over_job(
    conn: &Connection,
    job: &JobId,
    (from, to): (&str, &str),
    lease_until: Timestamp,
) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE jobs SET owner = ?3, lease_until = ?4, lease_gen = lease_gen + 1 \
             WHERE id = ?1 AND owner = ?2 AND state_name = 'RUNNING'",
        )
        .and_then(|mut st| st.execute(params![job.as_str(), from, to, lease_until.micros()]))
        .map_err(db)?;
    Ok(n == 1)
}

pub(super) fn take_over_orphan(
    conn: &Connection,
    orphan: (&JobId, &str, u64),
    to: &str,
    lease_until: Timestamp,
) -> Result<bool> {
    let (job, owner, gen_) = orphan;
    let n = conn
        .prepare_cached(
            "UPDATE jobs SET owner = ?4, lease_until = ?5, lease_gen = lease_gen + 1 \
             WHERE id = ?1 AND owner = ?2 AND lease_gen = ?3 \
               AND state_name IN ('QUEUED', 'RUNNING')",
        )
        .and_then(|mut st| {
            st.execute(params![
                job.as_str(),
                owner,
                sql_int(gen_),
                to,
                lease_until.micros()
            ])
        })
        .map_err(db)?;
    Ok(n == 1)
}

pub(super) fn release_job(conn: &Connection, job: &JobId, owner: &str) -> Result<bool> {
    // Its place in the queue is its creation time, which nothing here changes.
    let n = conn
        .prepare_cached(
            "UPDATE jobs SET owner = NULL, lease_until = NULL \
             WHERE id = ?1 AND owner = ?2 AND state_name = 'QUEUED'",
        )
        .and_then(|mut st| st.execute(params![job.as_str(), owner]))
        .map_err(db)?;
    Ok(n == 1)
}

pub(super) fn finish_unclaimed(conn: &Connection, write: &JobWrite) -> Result<bool> {
    let unclaimed = conn
        .prepare_cached(
            "SELECT 1 FROM jobs WHERE id = ?1 AND state_name = 'QUEUED' AND owner IS NULL",
        )
        .and_then(|mut st| st.exists([write.job_id.as_str()]))
        .map_err(db)?;
    if !unclaimed {
        return Ok(false);
    }
    append(conn, std::slice::from_ref(write))?;
    Ok(true)
}

pub(super) fn request_cancel(conn: &Connection, job: &JobId, reason: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE jobs SET cancel_reason = coalesce(cancel_reason, ?2) \
         WHERE id = ?1 AND state_name IN ('QUEUED', 'RUNNING')",
    )
    .and_then(|mut st| st.execute(params![job.as_str(), reason]))
    .map_err(db)?;
    Ok(())
}

pub(super) fn cancel_requests(conn: &Connection, replica: &str) -> Result<Vec<(JobId, String)>> {
    conn.prepare_cached(
        "SELECT id, cancel_reason FROM jobs WHERE owner = ?1 AND cancel_reason IS NOT NULL \
         AND state_name IN ('QUEUED', 'RUNNING') ORDER BY created, id",
    )
    .and_then(|mut st| {
        st.query_map([replica], |r| {
            Ok((JobId::from_trusted(r.get(0)?), r.get(1)?))
        })?
        .collect()
    })
    .map_err(db)
}

pub(super) fn queue_position(conn: &Connection, job: &JobId) -> Result<Option<u32>> {
    let n: Option<i64> = conn
        .prepare_cached(
            "SELECT 1 \
               + (SELECT count(*) FROM jobs AS q WHERE q.session_id = j.session_id \
                    AND q.state_name = 'QUEUED' AND (q.created, q.id) < (j.created, j.id)) \
               + (SELECT count(*) FROM jobs AS q WHERE q.tenant = j.tenant \
                    AND q.session_id <> j.session_id \
                    AND q.state_name IN ('QUEUED', 'RUNNING') AND q.state_name = 'QUEUED' \
                    AND (q.created, q.id) < (j.created, j.id) \
                    AND NOT EXISTS (SELECT 1 FROM jobs AS o WHERE o.session_id = q.session_id \
                      AND o.state_name IN ('QUEUED', 'RUNNING') \
                      AND (o.created, o.id) < (q.created, q.id))) \
             FROM jobs AS j WHERE j.id = ?1 AND j.state_name = 'QUEUED'",
        )
        .and_then(|mut st| st.query_row([job.as_str()], |r| r.get(0)).optional())
        .map_err(db)?;
    Ok(n.map(|n| u32::try_from(n).unwrap_or(u32::MAX)))
}

// ---- events ------------------------------------------------------------------------------------

pub(super) fn append(conn: &Connection, writes: &[JobWrite]) -> Result<()> {
    let mut find = conn
        .prepare_cached(
            "SELECT pk, last_seq, session_id, state_name IN ('QUEUED', 'RUNNING'), tenant, \
             state_name FROM jobs WHERE id = ?1",
        )
        .map_err(db)?;
    for w in writes {
        type Found = (i64, u64, String, bool, String, String);
        let found: Option<Found> = find
            .query_row([w.job_id.as_str()], |r| {
                Ok((
                    r.get(0)?,
                    uint(r, 1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .optional()
            .map_err(db)?;
        let Some((pk, last_seq, session_id, unfinished, tenant, state_name)) = found else {
            return Err(rules::missing_job(&w.job_id));
        };
        let new_last = rules::check_append(&w.job_id, !unfinished, last_seq, &w.events)?;
        insert_events(conn, pk, &w.events)?;
        match &w.update {
            Some(u) => {
                let state = to_json(&u.state, "job state")?;
                let usage = to_json(&u.usage, "job usage")?;
                conn.prepare_cached(
                    "UPDATE jobs SET last_seq = ?2, state = ?3, state_name = ?4, result = ?5, \
                     usage = ?6, conversation_id = ?7, \
                     owner = CASE WHEN ?4 IN ('QUEUED', 'RUNNING') THEN owner END, \
                     lease_until = CASE WHEN ?4 IN ('QUEUED', 'RUNNING') THEN lease_until END \
                     WHERE pk = ?1",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        pk,
                        sql_int(new_last),
                        state,
                        u.state.name(),
                        u.result,
                        usage,
                        u.conversation_id
                    ])
                })
                .map_err(db)?;
                if let (JobState::Finished(_), Some(conv)) = (&u.state, &u.conversation_id) {
                    conn.prepare_cached("UPDATE sessions SET conversation_id = ?2 WHERE id = ?1")
                        .and_then(|mut st| st.execute(params![session_id, conv]))
                        .map_err(db)?;
                }
                if u.state.name() != state_name {
                    super::changes::record(
                        conn,
                        &super::changes::Snapshot {
                            tenant: &tenant,
                            job: &w.job_id,
                            state: &u.state,
                            result: &u.result,
                            usage: &u.usage,
                            conversation_id: u.conversation_id.as_deref(),
                            last_seq: new_last,
                        },
                    )?;
                }
            }
            None if new_last != last_seq => {
                conn.prepare_cached("UPDATE jobs SET last_seq = ?2 WHERE pk = ?1")
                    .and_then(|mut st| st.execute(params![pk, sql_int(new_last)]))
                    .map_err(db)?;
            }
            None => {}
        }
    }
    Ok(())
}

/// Rows per multi-row INSERT: one statement execution per this many events instead of one per
/// event (most of an event's insert cost was the statement round, not the B-tree).
const INSERT_ROWS: usize = 32;

fn insert_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO events (job_pk, seq, time, raw, kind) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?)");
    }
    sql
}

fn insert_events(conn: &Connection, pk: i64, events: &[JobEvent]) -> Result<()> {
    let mut kinds = Vec::with_capacity(INSERT_ROWS);
    // Two statement shapes only (full chunks, then single rows), so both stay in the cache.
    let full = events.len() - events.len() % INSERT_ROWS;
    let chunks = events[..full]
        .chunks(INSERT_ROWS)
        .chain(events[full..].chunks(1));
    for chunk in chunks {
        kinds.clear();
        for e in chunk {
            kinds.push(to_json(&e.kind, "event")?);
        }
        let mut st = conn.prepare_cached(&insert_sql(chunk.len())).map_err(db)?;
        for (i, (e, kind)) in chunk.iter().zip(&kinds).enumerate() {
            let at = i * 5;
            st.raw_bind_parameter(at + 1, pk).map_err(db)?;
            st.raw_bind_parameter(at + 2, sql_int(e.seq)).map_err(db)?;
            st.raw_bind_parameter(at + 3, e.time.micros()).map_err(db)?;
            st.raw_bind_parameter(at + 4, e.raw.as_deref())
                .map_err(db)?;
            st.raw_bind_parameter(at + 5, kind.as_str()).map_err(db)?;
        }
        st.raw_execute().map_err(db)?;
    }
    Ok(())
}

pub(super) fn read_events(
    conn: &Connection,
    job: &JobId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<JobEvent>> {
    let mut st = conn
        .prepare_cached(
            "SELECT seq, time, raw, kind FROM events \
             WHERE job_pk = (SELECT pk FROM jobs WHERE id = ?1) AND seq > ?2 \
             ORDER BY seq LIMIT ?3",
        )
        .map_err(db)?;
    st.query_map(
        params![job.as_str(), sql_int(after_seq), sql_int(limit as u64)],
        event_row,
    )
    .and_then(|r| r.collect())
    .map_err(db)
}

// ---- outputs -----------------------------------------------------------------------------------

pub(super) fn put_job_outputs(
    conn: &Connection,
    job: &JobId,
    changes: &[FileChange],
) -> Result<()> {
    let parts = rules::output_parts(changes)?;
    let pk: i64 = conn
        .prepare_cached("SELECT pk FROM jobs WHERE id = ?1")
        .and_then(|mut st| st.query_row([job.as_str()], |r| r.get(0)).optional())
        .map_err(db)?
        .ok_or_else(|| Error::job_not_found(job.as_str()))?;
    conn.prepare_cached("DELETE FROM job_output_parts WHERE job_pk = ?1")
        .and_then(|mut st| st.execute([pk]))
        .map_err(db)?;
    let mut st = conn
        .prepare_cached(
            "INSERT INTO job_output_parts (job_pk, part, last_path, changes) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(db)?;
    for (i, p) in parts.iter().enumerate() {
        st.execute(params![pk, sql_int(i as u64), p.last_path, p.changes])
            .map_err(db)?;
    }
    Ok(())
}

pub(super) fn get_job_outputs(
    conn: &Connection,
    job: &JobId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<FileChange>> {
    let mut st = conn
        .prepare_cached(
            "SELECT changes FROM job_output_parts \
             WHERE job_pk = (SELECT pk FROM jobs WHERE id = ?1) AND last_path > ?2 \
             ORDER BY part LIMIT ?3",
        )
        .map_err(db)?;
    // '' sorts before every path: the first page reads from the first part.
    let parts: Vec<String> = st
        .query_map(
            params![
                job.as_str(),
                after.unwrap_or(""),
                sql_int(rules::output_parts_for(limit) as u64)
            ],
            |r| r.get(0),
        )
        .and_then(|rows| rows.collect())
        .map_err(db)?;
    rules::outputs_page(parts.iter().map(String::as_str), after, limit)
}
