//! The mapping between Postgres rows and domain types, and the column lists every query selects
//! in that order.

use crate::domain::{Job, JobEvent, JobId, Session, SessionId, TenantId, Timestamp};
use crate::error::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

macro_rules! session_cols {
    () => {
        "id, tenant, labels::text, created, expires, ttl_us, request_id, conversation_id, job_count"
    };
}
pub(super) use session_cols;

macro_rules! job_cols {
    () => {
        "id, session_id, tenant, created, spec, state, request_id, result, usage, \
         conversation_id, last_seq"
    };
}
pub(super) use job_cols;

/// Job columns qualified by the alias `j`, for queries that join or update from another relation.
macro_rules! job_cols_j {
    () => {
        "j.id, j.session_id, j.tenant, j.created, j.spec, j.state, j.request_id, j.result, \
         j.usage, j.conversation_id, j.last_seq"
    };
}
pub(super) use job_cols_j;

/// Number of columns in `job_cols!`, where extra selected columns start.
pub(super) const JOB_COLS: usize = 11;

/// A column that does not hold what this build wrote. The message names the column only: the
/// decoding error could quote stored (client) data.
fn corrupt(name: &str) -> Error {
    Error::internal(format!(
        "store: column {name} does not hold a valid value for its type"
    ))
}

pub(super) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize, name: &str) -> Result<T> {
    row.try_get(idx).map_err(|_| corrupt(name))
}

pub(super) fn json<T: DeserializeOwned>(row: &Row, idx: usize, name: &str) -> Result<T> {
    let text: &str = get(row, idx, name)?;
    serde_json::from_str(text).map_err(|_| corrupt(name))
}

/// A column this store only ever fills with non-negative integers.
pub(super) fn uint(row: &Row, idx: usize, name: &str) -> Result<u64> {
    let v: i64 = get(row, idx, name)?;
    u64::try_from(v).map_err(|_| corrupt(name))
}

pub(super) fn to_json<T: Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::internal(format!("store: cannot encode {what}: {e}")))
}

/// Postgres integers are i64; counts and limits beyond that range mean "no limit".
pub(super) fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn ttl_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(super) fn session(row: &Row) -> Result<Session> {
    Ok(Session {
        id: SessionId::from_trusted(get(row, 0, "sessions.id")?),
        tenant: TenantId(get(row, 1, "sessions.tenant")?),
        labels: json(row, 2, "sessions.labels")?,
        created: Timestamp(get(row, 3, "sessions.created")?),
        expires: Timestamp(get(row, 4, "sessions.expires")?),
        ttl: Duration::from_micros(uint(row, 5, "sessions.ttl_us")?),
        request_id: get(row, 6, "sessions.request_id")?,
        conversation_id: get(row, 7, "sessions.conversation_id")?,
        job_count: uint(row, 8, "sessions.job_count")?,
    })
}

pub(super) fn job(row: &Row) -> Result<Job> {
    Ok(Job {
        id: JobId::from_trusted(get(row, 0, "jobs.id")?),
        session_id: SessionId::from_trusted(get(row, 1, "jobs.session_id")?),
        tenant: TenantId(get(row, 2, "jobs.tenant")?),
        created: Timestamp(get(row, 3, "jobs.created")?),
        spec: json(row, 4, "jobs.spec")?,
        state: json(row, 5, "jobs.state")?,
        request_id: get(row, 6, "jobs.request_id")?,
        result: get(row, 7, "jobs.result")?,
        usage: json(row, 8, "jobs.usage")?,
        conversation_id: get(row, 9, "jobs.conversation_id")?,
        last_seq: uint(row, 10, "jobs.last_seq")?,
    })
}

pub(super) fn event(row: &Row) -> Result<JobEvent> {
    Ok(JobEvent {
        seq: uint(row, 0, "events.seq")?,
        time: Timestamp(get(row, 1, "events.time")?),
        raw: get(row, 2, "events.raw")?,
        kind: json(row, 3, "events.kind")?,
    })
}

pub(super) fn all<T>(rows: &[Row], f: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}
