//! `agentd usage`: the tenant's metered model usage from the gateway's ledger (totals, grouped by
//! day, session, agent or model), or every model call of one job.

use super::conn::{CliError, Conn};
use super::render::{self, Printer};
use super::{UsageArgs, UsageBy, exit};
use crate::pb;
use serde_json::json;

pub async fn usage(
    conn: &Conn,
    json: bool,
    a: &UsageArgs,
    p: &mut Printer,
) -> Result<i32, CliError> {
    match &a.job {
        Some(job) => calls(conn, json, job, p).await,
        None => totals(conn, json, a, p).await,
    }
}

/// The start of the range `--days N` names: midnight UTC N-1 days ago.
fn since(days: u32) -> prost_types::Timestamp {
    let now = crate::domain::Timestamp::now().micros();
    let back = i64::from(days.saturating_sub(1)) * 86_400_000_000;
    let micros = crate::gateway::day_start(now) - back;
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: 0,
    }
}

async fn totals(conn: &Conn, json: bool, a: &UsageArgs, p: &mut Printer) -> Result<i32, CliError> {
    let group_by = match a.by {
        None => pb::UsageGroupBy::Unspecified,
        Some(UsageBy::Day) => pb::UsageGroupBy::Day,
        Some(UsageBy::Session) => pb::UsageGroupBy::Session,
        Some(UsageBy::Agent) => pb::UsageGroupBy::Agent,
        Some(UsageBy::Model) => pb::UsageGroupBy::Model,
    };
    let buckets = conn
        .usage()
        .get_usage(pb::GetUsageRequest {
            start_time: a.days.map(since),
            end_time: None,
            group_by: group_by as i32,
        })
        .await
        .map_err(CliError::rpc("getting the usage"))?
        .into_inner()
        .buckets;
    if json {
        for b in &buckets {
            p.json(&json!({"type": "usage", "key": b.key, "calls": b.calls,
                           "input_tokens": b.input_tokens, "output_tokens": b.output_tokens,
                           "cache_read_tokens": b.cache_read_tokens,
                           "cache_write_tokens": b.cache_write_tokens,
                           "cost_usd": b.cost_usd, "unpriced_calls": b.unpriced_calls}))
                .await;
        }
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = buckets
        .iter()
        .map(|b| {
            vec![
                if b.key.is_empty() {
                    "total".into()
                } else {
                    b.key.clone()
                },
                b.calls.to_string(),
                b.input_tokens.to_string(),
                b.output_tokens.to_string(),
                format!("{}/{}", b.cache_read_tokens, b.cache_write_tokens),
                format!("${:.4}", b.cost_usd),
                b.unpriced_calls.to_string(),
            ]
        })
        .collect();
    let header = [
        "GROUP",
        "CALLS",
        "INPUT",
        "OUTPUT",
        "CACHE R/W",
        "COST",
        "UNPRICED",
    ];
    p.out(&render::table(&header, &rows)).await;
    Ok(exit::OK)
}

async fn calls(conn: &Conn, json: bool, job: &str, p: &mut Printer) -> Result<i32, CliError> {
    let calls = conn
        .usage()
        .list_model_calls(pb::ListModelCallsRequest {
            job_id: job.to_owned(),
        })
        .await
        .map_err(CliError::rpc("listing the job's model calls"))?
        .into_inner()
        .calls;
    if json {
        for c in &calls {
            p.json(
                &json!({"type": "model_call", "time": render::fmt_time(c.time.as_ref()),
                           "model": c.model, "api": c.api, "status": c.status,
                           "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
                           "cache_read_tokens": c.cache_read_tokens,
                           "cache_write_tokens": c.cache_write_tokens,
                           "cost_usd": c.cost_usd, "latency_ms": c.latency_ms}),
            )
            .await;
        }
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = calls
        .iter()
        .map(|c| {
            vec![
                render::fmt_time(c.time.as_ref()),
                c.model.clone(),
                c.status.to_string(),
                c.input_tokens.to_string(),
                c.output_tokens.to_string(),
                c.cost_usd.map_or("unpriced".into(), |u| format!("${u:.4}")),
                format!("{} ms", c.latency_ms),
            ]
        })
        .collect();
    let header = [
        "TIME", "MODEL", "STATUS", "INPUT", "OUTPUT", "COST", "LATENCY",
    ];
    p.out(&render::table(&header, &rows)).await;
    Ok(exit::OK)
}
