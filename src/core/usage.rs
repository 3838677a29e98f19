//! Reading the usage ledger for a tenant (UsageService): totals over a range, grouped, and the
//! model calls of one job, which stay readable after the job's session is gone.

use super::Core;
use crate::domain::{JobId, TenantId, Timestamp};
use crate::error::{Error, Reason, Result};
use crate::store::{LedgerRow, UsageBucket, UsageFilter, UsageGroup};

impl Core {
    /// The tenant's usage over `[since, until)` (unset: unbounded), grouped by `group`.
    pub async fn usage(
        &self,
        tenant: &TenantId,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
        group: Option<UsageGroup>,
    ) -> Result<Vec<UsageBucket>> {
        let filter = UsageFilter {
            since: since.unwrap_or(Timestamp(i64::MIN)),
            until: until.unwrap_or(Timestamp(i64::MAX)),
            group,
            session: None,
        };
        if filter.since >= filter.until {
            return Err(Error::invalid(
                Reason::InvalidField,
                "end_time",
                "end_time must be after start_time",
            ));
        }
        let mut buckets = self.store.usage(tenant, &filter).await?;
        if group == Some(UsageGroup::Day) {
            for b in &mut buckets {
                if let Ok(days) = b.key.parse::<i64>() {
                    let (y, m, d) = crate::gateway::civil_from_days(days);
                    b.key = format!("{y:04}-{m:02}-{d:02}");
                }
            }
        }
        Ok(buckets)
    }

    /// Every model call of one of the tenant's jobs, oldest first. A job whose session was
    /// deleted still answers from the ledger; a job with no calls must exist.
    pub async fn model_calls(&self, tenant: &TenantId, job_id: &str) -> Result<Vec<LedgerRow>> {
        if job_id.is_empty() {
            return Err(Error::invalid(
                Reason::MissingField,
                "job_id",
                "job_id is required",
            ));
        }
        let id = JobId::parse(job_id).ok_or_else(|| Error::job_not_found(job_id))?;
        let rows = self.store.model_calls(tenant, &id).await?;
        if rows.is_empty() {
            self.owned_job(tenant, job_id).await?;
        }
        Ok(rows)
    }
}
