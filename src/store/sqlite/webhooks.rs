//! The webhook outbox in SQLite (SQL shared with Postgres in `store::webhooks`). Every write runs
//! on the one writer thread inside its own savepoint, so a claim or a cursor move is atomic and
//! no two claims overlap.

use super::db;
use super::ops::sql_int;
use crate::domain::{TenantId, Timestamp};
use crate::error::{Error, Result};
use crate::store::WebhookEndpoint;
use crate::store::webhooks::{self as w, Cols, sqlite_sql};
use crate::store::{Attempt, AttemptOutcome, Delivery, DeliveryFilter, DeliveryLog, NewDelivery};
use rusqlite::{Connection, Row, params};

impl Cols for Row<'_> {
    fn text(&self, i: usize) -> Result<String> {
        self.get(i).map_err(db)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        self.get(i).map_err(db)
    }
    fn int(&self, i: usize) -> Result<i64> {
        self.get(i).map_err(db)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        self.get(i).map_err(db)
    }
}

/// Runs `sql` and decodes every row with `f`.
fn rows<T>(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut st = conn.prepare_cached(&sqlite_sql(sql)).map_err(db)?;
    let mut q = st.query(p).map_err(db)?;
    let mut out = Vec::new();
    while let Some(r) = q.next().map_err(db)? {
        out.push(f(r)?);
    }
    Ok(out)
}

fn exec(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<usize> {
    conn.prepare_cached(&sqlite_sql(sql))
        .and_then(|mut st| st.execute(p))
        .map_err(db)
}

pub(super) fn put(conn: &Connection, e: &WebhookEndpoint) -> Result<()> {
    exec(
        conn,
        w::PUT_ENDPOINT,
        params![
            e.id,
            e.tenant.as_str(),
            e.url,
            e.events.join(","),
            e.secret,
            e.old_secret,
            e.old_secret_until.map(|t| t.0),
            e.created.0
        ],
    )?;
    Ok(())
}

pub(super) fn list(conn: &Connection, tenant: &TenantId) -> Result<Vec<WebhookEndpoint>> {
    rows(conn, w::LIST_ENDPOINTS, [tenant.as_str()], |r| {
        w::endpoint_from(r)
    })
}

pub(super) fn delete(conn: &Connection, tenant: &TenantId, id: &str) -> Result<bool> {
    Ok(exec(conn, w::DELETE_ENDPOINT, [tenant.as_str(), id])? > 0)
}

pub(super) fn rotate(
    conn: &Connection,
    tenant: &TenantId,
    id: &str,
    secret: &str,
    old_until: Timestamp,
) -> Result<Option<WebhookEndpoint>> {
    let found = rows(
        conn,
        w::ROTATE_SECRET,
        params![tenant.as_str(), id, secret, old_until.0],
        |r| w::endpoint_from(r),
    )?;
    Ok(found.into_iter().next())
}

pub(super) fn backlog(conn: &Connection, limit: usize) -> Result<Vec<(TenantId, u64)>> {
    rows(conn, w::BACKLOG, [sql_int(limit as u64)], |r| {
        let seq = u64::try_from(r.int(1)?).unwrap_or(0);
        Ok((TenantId(r.text(0)?), seq))
    })
}

fn insert(conn: &Connection, tenant: &TenantId, d: &[NewDelivery]) -> Result<()> {
    let now = Timestamp::now().0;
    for d in d {
        exec(
            conn,
            w::INSERT_DELIVERY,
            params![
                d.id,
                tenant.as_str(),
                d.endpoint_key,
                d.url,
                d.msg_id,
                d.event_type,
                d.job_id,
                d.payload,
                now
            ],
        )?;
    }
    Ok(())
}

pub(super) fn enqueue(
    conn: &Connection,
    tenant: &TenantId,
    from: u64,
    to: u64,
    d: &[NewDelivery],
) -> Result<bool> {
    let moved = exec(
        conn,
        w::ADVANCE_CURSOR,
        params![tenant.as_str(), sql_int(from), sql_int(to)],
    )?;
    if moved == 0 {
        return Ok(false);
    }
    insert(conn, tenant, d)?;
    Ok(true)
}

pub(super) fn add(conn: &Connection, tenant: &TenantId, d: &[NewDelivery]) -> Result<()> {
    insert(conn, tenant, d)
}

pub(super) fn claim(
    conn: &Connection,
    owner: &str,
    now: Timestamp,
    lease_until: Timestamp,
    limit: usize,
    per_endpoint: usize,
) -> Result<Vec<Delivery>> {
    let mut out = rows(
        conn,
        &w::claim_sql(""),
        params![
            now.0,
            owner,
            lease_until.0,
            sql_int(per_endpoint as u64),
            sql_int(limit as u64)
        ],
        |r| w::delivery_from(r),
    )?;
    out.sort_by(|a, b| (a.next_attempt, &a.id).cmp(&(b.next_attempt, &b.id)));
    Ok(out)
}

pub(super) fn finish(
    conn: &Connection,
    id: &str,
    owner: &str,
    a: &Attempt,
    outcome: AttemptOutcome,
) -> Result<bool> {
    let latency = sql_int(a.latency_ms);
    let logged = exec(
        conn,
        w::INSERT_ATTEMPT,
        params![id, owner, a.time.0, i64::from(a.status), latency, a.error],
    )?;
    if logged == 0 {
        return Ok(false);
    }
    let (state, next, finished) = w::outcome_cols(outcome, a.time);
    let error = (!a.error.is_empty()).then_some(a.error.as_str());
    let n = exec(
        conn,
        w::FINISH_ATTEMPT,
        params![
            id,
            owner,
            state,
            next,
            i64::from(a.status),
            error,
            latency,
            finished
        ],
    )?;
    if n == 0 {
        return Err(Error::internal(
            "store: a webhook attempt lost its delivery",
        ));
    }
    Ok(true)
}

pub(super) fn deliveries(
    conn: &Connection,
    tenant: &TenantId,
    f: &DeliveryFilter,
    limit: usize,
) -> Result<Vec<DeliveryLog>> {
    let found = rows(
        conn,
        &w::list_deliveries_sql(),
        params![
            tenant.as_str(),
            f.endpoint_key.as_deref().unwrap_or(""),
            f.job_id.as_deref().unwrap_or(""),
            sql_int(limit as u64)
        ],
        |r| w::delivery_from(r),
    )?;
    found
        .into_iter()
        .map(|delivery| {
            let attempts = rows(conn, w::LIST_ATTEMPTS, [delivery.id.as_str()], |r| {
                w::attempt_from(r)
            })?;
            Ok(DeliveryLog { delivery, attempts })
        })
        .collect()
}
