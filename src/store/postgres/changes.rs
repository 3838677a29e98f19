//! Each tenant's change sequence in Postgres (see `Store::read_changes`). A change takes the next
//! seq from its tenant's `change_seqs` row with an upsert whose row lock is held until commit, so
//! a later change of that tenant (on any replica) waits for this one to commit or roll back: the
//! seqs stay gapless and become visible in order, which is what makes a cursor exact.

use super::rows::{self, JOB_COLS, int, job_cols_j, to_json};
use super::{PgStore, db};
use crate::domain::{JobId, JobState, TenantId, Timestamp};
use crate::error::Result;
use crate::store::{ChangeMark, JobChange, JobUpdate};

/// A change to record: the job's state right after it.
pub(super) struct Change {
    tenant: String,
    job_id: String,
    state: String,
    result: String,
    usage: String,
    conversation_id: Option<String>,
    last_seq: i64,
}

impl Change {
    pub(super) fn of(tenant: &str, job: &JobId, u: &JobUpdate, last_seq: u64) -> Result<Self> {
        Ok(Self {
            tenant: tenant.to_owned(),
            job_id: job.as_str().to_owned(),
            state: to_json(&u.state, "job state")?,
            result: u.result.clone(),
            usage: to_json(&u.usage, "job usage")?,
            conversation_id: u.conversation_id.clone(),
            last_seq: int(last_seq),
        })
    }
}

/// Records `changes` in `tx`. Tenants' sequence rows are locked in tenant order, so two
/// transactions that change jobs of the same tenants cannot deadlock on them.
pub(super) async fn record(
    tx: &deadpool_postgres::Transaction<'_>,
    changes: &mut [Change],
) -> std::result::Result<(), tokio_postgres::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    // Stable: one job's changes keep their order.
    changes.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    let st = tx
        .prepare_cached(
            "WITH s AS (INSERT INTO change_seqs AS s (tenant, last_seq) VALUES ($1, 1) \
               ON CONFLICT (tenant) DO UPDATE SET last_seq = s.last_seq + 1 RETURNING last_seq) \
             INSERT INTO job_changes (tenant, seq, job_id, time, state, result, usage, \
               conversation_id, last_seq) \
             SELECT $1, s.last_seq, $2, $3, $4, $5, $6, $7, $8 FROM s",
        )
        .await?;
    let now = Timestamp::now().micros();
    for c in changes.iter() {
        tx.execute(
            &st,
            &[
                &c.tenant,
                &c.job_id,
                &now,
                &c.state,
                &c.result,
                &c.usage,
                &c.conversation_id,
                &c.last_seq,
            ],
        )
        .await?;
    }
    Ok(())
}

impl PgStore {
    pub(super) async fn changes_after(
        &self,
        tenant: &TenantId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobChange>> {
        let mut c = self.client().await?;
        // REPEATABLE READ: the pruning mark and the rows come from one snapshot.
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let pruned = tx
            .query_opt(
                "SELECT pruned_through FROM change_seqs WHERE tenant = $1",
                &[&tenant.as_str()],
            )
            .await
            .map_err(db)?;
        if let Some(row) = pruned {
            let pruned = rows::uint(&row, 0, "change_seqs.pruned_through")?;
            if after < pruned {
                return Err(crate::store::cursor_expired(after, pruned));
            }
        }
        let st = tx
            .prepare_cached(concat!(
                "SELECT ",
                job_cols_j!(),
                ", c.seq, c.time, c.state, c.result, c.usage, c.conversation_id, c.last_seq \
                 FROM job_changes c JOIN jobs j ON j.id = c.job_id \
                 WHERE c.tenant = $1 AND c.seq > $2 ORDER BY c.seq LIMIT $3"
            ))
            .await
            .map_err(db)?;
        let found = tx
            .query(&st, &[&tenant.as_str(), &int(after), &int(limit as u64)])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows::all(&found, change)
    }

    pub(super) async fn last_change_of(&self, tenant: &TenantId) -> Result<u64> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT last_seq FROM change_seqs WHERE tenant = $1",
                &[&tenant.as_str()],
            )
            .await
            .map_err(db)?;
        row.map_or(Ok(0), |r| rows::uint(&r, 0, "change_seqs.last_seq"))
    }

    pub(super) async fn change_marks_of(
        &self,
        tenant: &TenantId,
        job: &JobId,
        before: u64,
    ) -> Result<Vec<ChangeMark>> {
        let c = self.client().await?;
        let found = c
            .query(
                "SELECT seq, state, last_seq FROM job_changes \
                 WHERE job_id = $1 AND tenant = $2 AND seq < $3 ORDER BY seq",
                &[&job.as_str(), &tenant.as_str(), &int(before)],
            )
            .await
            .map_err(db)?;
        rows::all(&found, |r| {
            Ok(ChangeMark {
                seq: rows::uint(r, 0, "job_changes.seq")?,
                state: rows::json::<JobState>(r, 1, "job_changes.state")?.name(),
                last_seq: rows::uint(r, 2, "job_changes.last_seq")?,
            })
        })
    }

    pub(super) async fn prune_changes_before(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<u64> {
        let c = self.client().await?;
        // One statement: the rows go and every touched tenant's mark moves in one commit. `j`
        // reads the snapshot from before the delete, so it sees each touched job's last change
        // even when this batch leaves it for the next (the rules: `Store::prune_changes`).
        let row = c
            .query_one(
                "WITH d AS (DELETE FROM job_changes WHERE (tenant, seq) IN ( \
                     SELECT c.tenant, c.seq FROM job_changes c WHERE c.time < $1 \
                       AND NOT EXISTS (SELECT 1 FROM job_changes l \
                         WHERE l.job_id = c.job_id AND l.seq > c.seq AND l.time >= $1) \
                       AND NOT EXISTS (SELECT 1 FROM jobs j \
                         WHERE j.id = c.job_id AND j.state_name IN ('QUEUED', 'RUNNING')) \
                     ORDER BY c.time LIMIT $2) \
                   RETURNING tenant, seq, job_id), \
                 j AS (SELECT c.tenant, max(c.seq) AS seq FROM job_changes c \
                   WHERE c.job_id IN (SELECT job_id FROM d) GROUP BY c.tenant), \
                 m AS (UPDATE change_seqs AS s SET pruned_through = greatest(s.pruned_through, \
                     j.seq) FROM j WHERE s.tenant = j.tenant) \
                 SELECT count(*) FROM d",
                &[&before.micros(), &int(limit as u64)],
            )
            .await
            .map_err(db)?;
        rows::uint(&row, 0, "count")
    }
}

/// A change row: the job's columns with its state, result, usage, conversation and last seq as
/// the change recorded them.
fn change(row: &tokio_postgres::Row) -> Result<JobChange> {
    let mut job = rows::job(row)?;
    let at = JOB_COLS;
    let snapshot = JobUpdate {
        state: rows::json(row, at + 2, "job_changes.state")?,
        result: rows::get(row, at + 3, "job_changes.result")?,
        usage: rows::json(row, at + 4, "job_changes.usage")?,
        conversation_id: rows::get(row, at + 5, "job_changes.conversation_id")?,
    };
    job.state = snapshot.state;
    job.result = snapshot.result;
    job.usage = snapshot.usage;
    job.conversation_id = snapshot.conversation_id;
    job.last_seq = rows::uint(row, at + 6, "job_changes.last_seq")?;
    Ok(JobChange {
        seq: rows::uint(row, at, "job_changes.seq")?,
        time: Timestamp(rows::get(row, at + 1, "job_changes.time")?),
        job,
    })
}
