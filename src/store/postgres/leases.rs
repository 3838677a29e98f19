//! Claims and leases in Postgres: runnable jobs claimed with `FOR UPDATE SKIP LOCKED` under a
//! lease, renewal, orphans of replicas whose lease ran out, owner changes fenced by the lease
//! generation (adoption, settling an orphan), and cancel requests between replicas.

use super::{CLAIM_LOCK, PgStore, db, listen, rows};
use crate::domain::{JobId, Timestamp};
use crate::error::Result;
use crate::store::{Claimed, Orphan};
use rows::{JOB_COLS, int, job_cols, job_cols_j};

pub(super) async fn claim_within(
    store: &PgStore,
    replica: &str,
    lease_until: Timestamp,
    limit: usize,
    tenant_max_running: usize,
) -> Result<Vec<Claimed>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Runnable: queued, unowned, and nothing else of its session is older or already held
    // (the second half keeps a session's jobs one at a time even if clocks disagreed on
    // `created`). A tenant's k-th runnable job (oldest first) would make its running count
    // `running + k - 1` when picked: ordering by that load, then age, picks the least busy
    // tenant each time. Rows another replica is locking are skipped, not waited for; the
    // runnable test is repeated where the rows are locked, so that it is checked again on
    // the latest row versions.
    const CLAIM: &str = concat!(
        "WITH run AS ( \
           SELECT tenant, count(*) AS n FROM jobs \
           WHERE state_name IN ('QUEUED', 'RUNNING') \
             AND (owner IS NOT NULL OR state_name = 'RUNNING') GROUP BY tenant), \
         cand AS ( \
           SELECT c.pk, c.tenant, c.created, c.id, \
             row_number() OVER (PARTITION BY c.tenant ORDER BY c.created, c.id) AS k \
           FROM jobs c \
           WHERE c.state_name IN ('QUEUED', 'RUNNING') AND c.state_name = 'QUEUED' \
             AND c.owner IS NULL \
             AND NOT EXISTS ( \
               SELECT 1 FROM jobs o \
               WHERE o.session_id = c.session_id AND o.pk <> c.pk \
                 AND o.state_name IN ('QUEUED', 'RUNNING') \
                 AND ((o.created, o.id) < (c.created, c.id) \
                      OR o.owner IS NOT NULL OR o.state_name = 'RUNNING'))), \
         ranked AS ( \
           SELECT cand.pk, coalesce(run.n, 0) + cand.k - 1 AS load, cand.created, cand.id \
           FROM cand LEFT JOIN run ON run.tenant = cand.tenant \
           WHERE $4::bigint = 0 OR coalesce(run.n, 0) + cand.k - 1 < $4::bigint), \
         pick AS ( \
           SELECT c.pk FROM jobs c JOIN ranked r ON r.pk = c.pk \
           WHERE c.state_name IN ('QUEUED', 'RUNNING') AND c.state_name = 'QUEUED' \
             AND c.owner IS NULL \
             AND NOT EXISTS ( \
               SELECT 1 FROM jobs o \
               WHERE o.session_id = c.session_id AND o.pk <> c.pk \
                 AND o.state_name IN ('QUEUED', 'RUNNING') \
                 AND ((o.created, o.id) < (c.created, c.id) \
                      OR o.owner IS NOT NULL OR o.state_name = 'RUNNING')) \
           ORDER BY r.load, r.created, r.id LIMIT $3 \
           FOR UPDATE OF c SKIP LOCKED) \
         UPDATE jobs AS j SET owner = $1, lease_until = $2 FROM pick \
         WHERE j.pk = pick.pk RETURNING ",
        job_cols_j!(),
        ", j.cancel_reason"
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
        &replica,
        &lease_until.micros(),
        &int(limit as u64),
        &int(tenant_max_running as u64),
    ];
    let rows = if tenant_max_running == 0 {
        store.query(CLAIM, &params).await?
    } else {
        // Replicas claiming at once would each see the tenant below its cap: with a cap,
        // claims take turns.
        let mut c = store.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK])
            .await
            .map_err(db)?;
        let st = tx.prepare_cached(CLAIM).await.map_err(db)?;
        let rows = tx.query(&st, &params).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows
    };
    let mut claimed = rows
        .iter()
        .map(|r| {
            Ok(Claimed {
                job: rows::job(r)?,
                cancel_reason: rows::get(r, JOB_COLS, "jobs.cancel_reason")?,
                // A query of their own would cost the round trip the runner's reads cost.
                start: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    claimed.sort_by(|a, b| {
        (a.job.created, a.job.id.as_str()).cmp(&(b.job.created, b.job.id.as_str()))
    });
    Ok(claimed)
}

pub(super) async fn renew(
    store: &PgStore,
    replica: &str,
    lease_until: Timestamp,
) -> Result<Vec<JobId>> {
    let rows = store
        .query(
            "WITH mine AS ( \
               SELECT pk FROM jobs WHERE owner = $1 AND state_name IN ('QUEUED', 'RUNNING') \
               ORDER BY pk FOR UPDATE) \
             UPDATE jobs AS j SET lease_until = $2 FROM mine WHERE j.pk = mine.pk \
             RETURNING j.id",
            &[&replica, &lease_until.micros()],
        )
        .await?;
    rows::all(&rows, |r| {
        rows::get(r, 0, "jobs.id").map(JobId::from_trusted)
    })
}

pub(super) async fn expired(
    store: &PgStore,
    now: Timestamp,
    running_before: Timestamp,
    limit: usize,
) -> Result<Vec<Orphan>> {
    let rows = store
        .query(
            concat!(
                "SELECT ",
                job_cols!(),
                ", owner, lease_until, lease_gen FROM jobs \
                  WHERE owner IS NOT NULL AND lease_until < $1 \
                    AND (state_name = 'QUEUED' \
                         OR (state_name = 'RUNNING' AND lease_until < $3)) \
                  ORDER BY lease_until, id LIMIT $2"
            ),
            &[&now.micros(), &int(limit as u64), &running_before.micros()],
        )
        .await?;
    rows::all(&rows, |r| {
        Ok(Orphan {
            job: rows::job(r)?,
            owner: rows::get(r, JOB_COLS, "jobs.owner")?,
            lease_until: Timestamp(rows::get(r, JOB_COLS + 1, "jobs.lease_until")?),
            lease_gen: rows::uint(r, JOB_COLS + 2, "jobs.lease_gen")?,
        })
    })
}

pub(super) async fn take_over(
    store: &PgStore,
    job: &JobId,
    (from, to): (&str, &str),
    lease_until: Timestamp,
) -> Result<bool> {
    let rows = store
        .query(
            "UPDATE jobs SET owner = $3, lease_until = $4, lease_gen = lease_gen + 1 \
             WHERE id = $1 AND owner = $2 AND state_name = 'RUNNING' RETURNING 1",
            &[&job.as_str(), &from, &to, &lease_until.micros()],
        )
        .await?;
    Ok(!rows.is_empty())
}

pub(super) async fn take_over_orphan(
    store: &PgStore,
    orphan: &Orphan,
    to: &str,
    lease_until: Timestamp,
) -> Result<bool> {
    let rows = store
        .query(
            "UPDATE jobs SET owner = $4, lease_until = $5, lease_gen = lease_gen + 1 \
             WHERE id = $1 AND owner = $2 AND lease_gen = $3 \
               AND state_name IN ('QUEUED', 'RUNNING') RETURNING 1",
            &[
                &orphan.job.id.as_str(),
                &orphan.owner,
                &int(orphan.lease_gen),
                &to,
                &lease_until.micros(),
            ],
        )
        .await?;
    Ok(!rows.is_empty())
}

pub(super) async fn release(store: &PgStore, job: &JobId, owner: &str) -> Result<bool> {
    // One statement, so the NOTIFY commits with the release.
    let rows = store
        .query(
            "WITH u AS ( \
               UPDATE jobs SET owner = NULL, lease_until = NULL \
               WHERE id = $1 AND owner = $2 AND state_name = 'QUEUED' RETURNING 1) \
             SELECT pg_notify($3, 'j') FROM u",
            &[&job.as_str(), &owner, &store.channel],
        )
        .await?;
    Ok(!rows.is_empty())
}

pub(super) async fn request_cancel(store: &PgStore, job: &JobId, reason: &str) -> Result<()> {
    store
        .query(
            &format!(
                "WITH u AS ( \
               UPDATE jobs SET cancel_reason = coalesce(cancel_reason, $2) \
               WHERE id = $1 AND state_name IN ('QUEUED', 'RUNNING') RETURNING cancel_reason) \
             SELECT pg_notify($3, {}) FROM u",
                listen::CANCEL_PAYLOAD_SQL
            ),
            &[&job.as_str(), &reason, &store.channel],
        )
        .await?;
    Ok(())
}

pub(super) async fn cancel_requests(
    store: &PgStore,
    replica: &str,
) -> Result<Vec<(JobId, String)>> {
    let rows = store
        .query(
            "SELECT id, cancel_reason FROM jobs WHERE owner = $1 \
             AND cancel_reason IS NOT NULL AND state_name IN ('QUEUED', 'RUNNING') \
             ORDER BY created, id",
            &[&replica],
        )
        .await?;
    rows::all(&rows, |r| {
        Ok((
            JobId::from_trusted(rows::get(r, 0, "jobs.id")?),
            rows::get(r, 1, "jobs.cancel_reason")?,
        ))
    })
}
