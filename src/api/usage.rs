//! `agentd.v1.UsageService`: the usage ledger, the caller's tenant only.

use super::{convert, tenant};
use crate::core::Core;
use crate::domain::Timestamp;
use crate::error::{Error, Reason};
use crate::pb;
use crate::pb::usage_service_server::UsageService;
use crate::store::UsageGroup;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct UsageApi {
    core: Arc<Core>,
}

impl UsageApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

/// A request timestamp in microseconds; out-of-range values are refused naming the field.
fn micros(t: Option<prost_types::Timestamp>, field: &str) -> Result<Option<Timestamp>, Error> {
    let Some(t) = t else { return Ok(None) };
    t.seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos) / 1000))
        .filter(|_| (0..1_000_000_000).contains(&t.nanos))
        .map(|m| Some(Timestamp(m)))
        .ok_or_else(|| {
            Error::invalid(
                Reason::InvalidField,
                field,
                format!("{field} is out of range"),
            )
        })
}

fn group(g: i32) -> Result<Option<UsageGroup>, Error> {
    match pb::UsageGroupBy::try_from(g) {
        Ok(pb::UsageGroupBy::Unspecified) => Ok(None),
        Ok(pb::UsageGroupBy::Day) => Ok(Some(UsageGroup::Day)),
        Ok(pb::UsageGroupBy::Session) => Ok(Some(UsageGroup::Session)),
        Ok(pb::UsageGroupBy::Agent) => Ok(Some(UsageGroup::Agent)),
        Ok(pb::UsageGroupBy::Model) => Ok(Some(UsageGroup::Model)),
        Err(_) => Err(Error::invalid(
            Reason::InvalidField,
            "group_by",
            format!("unknown group_by {g}"),
        )),
    }
}

#[tonic::async_trait]
impl UsageService for UsageApi {
    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let since = micros(r.start_time, "start_time")?;
        let until = micros(r.end_time, "end_time")?;
        let buckets = self
            .core
            .usage(&tenant, since, until, group(r.group_by)?)
            .await?;
        Ok(Response::new(pb::GetUsageResponse {
            buckets: buckets
                .into_iter()
                .map(|b| pb::UsageBucket {
                    key: b.key,
                    calls: b.calls,
                    input_tokens: b.input_tokens,
                    output_tokens: b.output_tokens,
                    cache_read_tokens: b.cache_read_tokens,
                    cache_write_tokens: b.cache_write_tokens,
                    cost_usd: b.cost_usd,
                    unpriced_calls: b.unpriced_calls,
                })
                .collect(),
        }))
    }

    async fn list_model_calls(
        &self,
        req: Request<pb::ListModelCallsRequest>,
    ) -> Result<Response<pb::ListModelCallsResponse>, Status> {
        let tenant = tenant(&req)?;
        let rows = self
            .core
            .model_calls(&tenant, &req.get_ref().job_id)
            .await?;
        Ok(Response::new(pb::ListModelCallsResponse {
            calls: rows
                .into_iter()
                .map(|r| pb::ModelCall {
                    job_id: r.job.to_string(),
                    session_id: r.session.to_string(),
                    agent: r.agent,
                    ..convert::model_call(r.call)
                })
                .collect(),
        }))
    }
}
