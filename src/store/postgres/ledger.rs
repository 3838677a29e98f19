//! The usage ledger in Postgres: appending model calls and reading them back by tenant.

use super::PgStore;
use super::rows::{get, int, uint};
use crate::domain::{JobId, ModelCall, SessionId, TenantId, Timestamp};
use crate::error::Result;
use crate::store::{LEDGER_COLS, LedgerRow, UsageBucket, UsageFilter, usage_sql};
use tokio_postgres::Row;

pub(super) async fn record(store: &PgStore, r: &LedgerRow) -> Result<()> {
    let c = &r.call;
    let sql = format!(
        "INSERT INTO model_calls ({LEDGER_COLS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    );
    store
        .execute(
            &sql,
            &[
                &r.tenant.as_str(),
                &r.session.as_str(),
                &r.job.as_str(),
                &r.agent,
                &c.time.micros(),
                &c.model,
                &c.api,
                &i64::from(c.status),
                &int(c.input_tokens),
                &int(c.output_tokens),
                &int(c.cache_read_tokens),
                &int(c.cache_write_tokens),
                &c.cost_usd,
                &int(c.latency_ms),
            ],
        )
        .await?;
    Ok(())
}

pub(super) async fn usage(
    store: &PgStore,
    tenant: &TenantId,
    f: &UsageFilter,
) -> Result<Vec<UsageBucket>> {
    // `$1` is compared with text columns; the key of an ungrouped query is a text literal.
    let sql = usage_sql(f.group).replacen("SELECT ''", "SELECT ''::text", 1);
    let rows = store
        .query(
            &sql,
            &[
                &tenant.as_str(),
                &f.since.micros(),
                &f.until.micros(),
                &f.session.as_ref().map_or("", |s| s.as_str()),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(UsageBucket {
                key: get(r, 0, "usage.key")?,
                calls: uint(r, 1, "usage.calls")?,
                input_tokens: uint(r, 2, "usage.input_tokens")?,
                output_tokens: uint(r, 3, "usage.output_tokens")?,
                cache_read_tokens: uint(r, 4, "usage.cache_read_tokens")?,
                cache_write_tokens: uint(r, 5, "usage.cache_write_tokens")?,
                cost_usd: get(r, 6, "usage.cost_usd")?,
                unpriced_calls: uint(r, 7, "usage.unpriced_calls")?,
            })
        })
        .collect()
}

pub(super) async fn model_calls(
    store: &PgStore,
    tenant: &TenantId,
    job: &JobId,
) -> Result<Vec<LedgerRow>> {
    let sql = format!(
        "SELECT {LEDGER_COLS} FROM model_calls WHERE job_id = $1 AND tenant = $2 ORDER BY pk"
    );
    let rows = store
        .query(&sql, &[&job.as_str(), &tenant.as_str()])
        .await?;
    rows.iter().map(row).collect()
}

fn row(r: &Row) -> Result<LedgerRow> {
    let n = |i: usize| uint(r, i, "model_calls");
    Ok(LedgerRow {
        tenant: TenantId(get(r, 0, "model_calls.tenant")?),
        session: SessionId::from_trusted(get(r, 1, "model_calls.session_id")?),
        job: JobId::from_trusted(get(r, 2, "model_calls.job_id")?),
        agent: get(r, 3, "model_calls.agent")?,
        call: ModelCall {
            time: Timestamp(get(r, 4, "model_calls.time")?),
            model: get(r, 5, "model_calls.model")?,
            api: get(r, 6, "model_calls.api")?,
            status: u32::try_from(n(7)?).unwrap_or(0),
            input_tokens: n(8)?,
            output_tokens: n(9)?,
            cache_read_tokens: n(10)?,
            cache_write_tokens: n(11)?,
            cost_usd: get(r, 12, "model_calls.cost_usd")?,
            latency_ms: n(13)?,
        },
    })
}
