//! The usage ledger in SQLite: appending model calls and reading them back by tenant.

use super::db;
use crate::domain::{JobId, ModelCall, SessionId, TenantId, Timestamp};
use crate::error::Result;
use crate::store::{LEDGER_COLS, LedgerRow, UsageBucket, UsageFilter, usage_sql};
use rusqlite::{Connection, Row, params};

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn record(conn: &Connection, r: &LedgerRow) -> Result<()> {
    let c = &r.call;
    conn.prepare_cached(&format!(
        "INSERT INTO model_calls ({LEDGER_COLS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            r.tenant.as_str(),
            r.session.as_str(),
            r.job.as_str(),
            r.agent,
            c.time.micros(),
            c.model,
            c.api,
            i64::from(c.status),
            i(c.input_tokens),
            i(c.output_tokens),
            i(c.cache_read_tokens),
            i(c.cache_write_tokens),
            c.cost_usd,
            i(c.latency_ms),
        ])
    })
    .map_err(db)?;
    Ok(())
}

pub(super) fn usage(
    conn: &Connection,
    tenant: &TenantId,
    f: &UsageFilter,
) -> Result<Vec<UsageBucket>> {
    let mut st = conn.prepare_cached(&usage_sql(f.group)).map_err(db)?;
    let rows = st
        .query_map(
            params![
                tenant.as_str(),
                f.since.micros(),
                f.until.micros(),
                session(f)
            ],
            |r| {
                Ok(UsageBucket {
                    key: r.get(0)?,
                    calls: u(r.get(1)?),
                    input_tokens: u(r.get(2)?),
                    output_tokens: u(r.get(3)?),
                    cache_read_tokens: u(r.get(4)?),
                    cache_write_tokens: u(r.get(5)?),
                    cost_usd: r.get(6)?,
                    unpriced_calls: u(r.get(7)?),
                })
            },
        )
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

fn session(f: &UsageFilter) -> &str {
    f.session.as_ref().map_or("", |s| s.as_str())
}

pub(super) fn model_calls(
    conn: &Connection,
    tenant: &TenantId,
    job: &JobId,
) -> Result<Vec<LedgerRow>> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {LEDGER_COLS} FROM model_calls WHERE job_id = ?1 AND tenant = ?2 ORDER BY pk"
        ))
        .map_err(db)?;
    let rows = st
        .query_map(params![job.as_str(), tenant.as_str()], row)
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

fn row(r: &Row<'_>) -> rusqlite::Result<LedgerRow> {
    Ok(LedgerRow {
        tenant: TenantId(r.get(0)?),
        session: SessionId::from_trusted(r.get(1)?),
        job: JobId::from_trusted(r.get(2)?),
        agent: r.get(3)?,
        call: ModelCall {
            time: Timestamp(r.get(4)?),
            model: r.get(5)?,
            api: r.get(6)?,
            status: u32::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
            input_tokens: u(r.get(8)?),
            output_tokens: u(r.get(9)?),
            cache_read_tokens: u(r.get(10)?),
            cache_write_tokens: u(r.get(11)?),
            cost_usd: r.get(12)?,
            latency_ms: u(r.get(13)?),
        },
    })
}
