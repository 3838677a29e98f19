//! Jobs in Postgres: admission and insert in one transaction (session row lock, queue and tenant
//! caps under an advisory lock), listing by page, queue positions, and a job's recorded outputs.

use super::{ADMIT_LOCK, PgStore, changes, db, listen, rows};
use crate::domain::{FileChange, Job, JobId, PageCursor, SessionId, Timestamp};
use crate::error::{Error, Result};
use crate::store::{AdmitLimits, JobFilter, JobUpdate, rules};
use rows::{int, job_cols, to_json};
use tokio_postgres::error::SqlState;

impl PgStore {
    /// `create_job` once; `Ok(None)` when it lost a race on the request id and should look again.
    pub(super) async fn try_create_job(
        &self,
        job: &Job,
        session_expires: Timestamp,
        limits: &AdmitLimits,
    ) -> Result<Option<Job>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        if let Some(rid) = &job.request_id {
            let st = tx
                .prepare_cached(concat!(
                    "SELECT ",
                    job_cols!(),
                    " FROM jobs WHERE tenant = $1 AND request_id = $2"
                ))
                .await
                .map_err(db)?;
            if let Some(row) = tx
                .query_opt(&st, &[&job.tenant.as_str(), rid])
                .await
                .map_err(db)?
            {
                return rows::job(&row).map(Some);
            }
        }
        // The session row lock orders this job after any other being added to the session; the
        // tenant is part of the match so a job can never land in another tenant's session.
        // The same lock orders it against a rewind taking its hold.
        let st = tx
            .prepare_cached(
                "SELECT rewinding_until FROM sessions WHERE id = $1 AND tenant = $2 FOR UPDATE",
            )
            .await
            .map_err(db)?;
        let Some(row) = tx
            .query_opt(&st, &[&job.session_id.as_str(), &job.tenant.as_str()])
            .await
            .map_err(db)?
        else {
            return Err(Error::session_not_found(job.session_id.as_str()));
        };
        let held: Option<i64> = rows::get(&row, 0, "sessions.rewinding_until")?;
        rules::admit_while_rewinding(&job.session_id, held, job.created)?;
        if limits.max_queued_in_session != usize::MAX {
            let st = tx
                .prepare_cached(
                    "SELECT count(*) FROM jobs WHERE session_id = $1 \
                     AND state_name IN ('QUEUED', 'RUNNING') AND state_name = 'QUEUED' \
                     AND owner IS NULL",
                )
                .await
                .map_err(db)?;
            let row = tx
                .query_one(&st, &[&job.session_id.as_str()])
                .await
                .map_err(db)?;
            let queued = rows::uint(&row, 0, "count")?;
            rules::admit_to_session(&job.session_id, queued, limits.max_queued_in_session)?;
        }
        if limits.max_active_for_tenant > 0 {
            // Jobs of one tenant may be added to different sessions at once, on any replica:
            // this lock makes the count and the insert one step for the tenant.
            let st = tx
                .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2 || '/' || $3))")
                .await
                .map_err(db)?;
            tx.execute(&st, &[&ADMIT_LOCK, &self.schema, &job.tenant.as_str()])
                .await
                .map_err(db)?;
            let st = tx
                .prepare_cached(
                    "SELECT count(*) FROM jobs WHERE tenant = $1 \
                     AND state_name IN ('QUEUED', 'RUNNING')",
                )
                .await
                .map_err(db)?;
            let row = tx
                .query_one(&st, &[&job.tenant.as_str()])
                .await
                .map_err(db)?;
            let active = rows::uint(&row, 0, "count")?;
            rules::admit_for_tenant(&job.tenant, active, limits.max_active_for_tenant)?;
        }
        let st = tx
            .prepare_cached(
                "UPDATE sessions SET job_count = job_count + 1, expires = $2 WHERE id = $1",
            )
            .await
            .map_err(db)?;
        tx.execute(&st, &[&job.session_id.as_str(), &session_expires.micros()])
            .await
            .map_err(db)?;
        let spec = to_json(&job.spec, "job spec")?;
        let state = to_json(&job.state, "job state")?;
        let usage = to_json(&job.usage, "job usage")?;
        let st = tx
            .prepare_cached(concat!(
                "INSERT INTO jobs (",
                job_cols!(),
                ", state_name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ))
            .await
            .map_err(db)?;
        let inserted = tx
            .execute(
                &st,
                &[
                    &job.id.as_str(),
                    &job.session_id.as_str(),
                    &job.tenant.as_str(),
                    &job.created.micros(),
                    &spec,
                    &state,
                    &job.request_id,
                    &job.result,
                    &usage,
                    &job.conversation_id,
                    &int(job.last_seq),
                    &job.state.name(),
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if job.request_id.is_some() && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Ok(None);
            }
            Err(e) => return Err(db(e)),
        }
        self.notify_in(&tx, listen::JOBS_CHANGED).await?;
        let queued = JobUpdate {
            state: job.state.clone(),
            result: job.result.clone(),
            usage: job.usage.clone(),
            conversation_id: job.conversation_id.clone(),
        };
        let mut change = vec![changes::Change::of(
            job.tenant.as_str(),
            &job.id,
            &queued,
            job.last_seq,
        )?];
        changes::record(&tx, &mut change).await.map_err(db)?;
        self.notify_in(&tx, listen::JOB_CHANGES).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(job.clone()))
    }
}

pub(super) async fn list(
    store: &PgStore,
    session: &SessionId,
    filter: &JobFilter,
    after: Option<&PageCursor>,
    limit: usize,
) -> Result<Vec<Job>> {
    let states: Option<Vec<&str>> = (!filter.states.is_empty()).then(|| filter.states.clone());
    let limit = int(limit as u64);
    let rows = match after {
        None => {
            store
                .query(
                    concat!(
                        "SELECT ",
                        job_cols!(),
                        " FROM jobs WHERE session_id = $1 \
                      AND ($2::text[] IS NULL OR state_name = ANY($2)) \
                      ORDER BY created DESC, id DESC LIMIT $3"
                    ),
                    &[&session.as_str(), &states, &limit],
                )
                .await?
        }
        Some(c) => {
            store
                .query(
                    concat!(
                        "SELECT ",
                        job_cols!(),
                        " FROM jobs WHERE session_id = $1 \
                      AND ($2::text[] IS NULL OR state_name = ANY($2)) \
                      AND (created, id) < ($4, $5) ORDER BY created DESC, id DESC LIMIT $3"
                    ),
                    &[
                        &session.as_str(),
                        &states,
                        &limit,
                        &c.created.micros(),
                        &c.id,
                    ],
                )
                .await?
        }
    };
    rows::all(&rows, rows::job)
}

pub(super) async fn queue_position(store: &PgStore, job: &JobId) -> Result<Option<u32>> {
    let rows = store
        .query(
            "SELECT 1 \
               + (SELECT count(*) FROM jobs AS q WHERE q.session_id = j.session_id \
                    AND q.state_name = 'QUEUED' AND (q.created, q.id) < (j.created, j.id)) \
               + (SELECT count(*) FROM jobs AS q WHERE q.tenant = j.tenant \
                    AND q.session_id <> j.session_id \
                    AND q.state_name IN ('QUEUED', 'RUNNING') AND q.state_name = 'QUEUED' \
                    AND (q.created, q.id) < (j.created, j.id) \
                    AND NOT EXISTS (SELECT 1 FROM jobs AS o \
                      WHERE o.session_id = q.session_id \
                      AND o.state_name IN ('QUEUED', 'RUNNING') \
                      AND (o.created, o.id) < (q.created, q.id))) \
             FROM jobs AS j WHERE j.id = $1 AND j.state_name = 'QUEUED'",
            &[&job.as_str()],
        )
        .await?;
    match rows.first() {
        Some(r) => {
            let n: i64 = rows::get(r, 0, "position")?;
            Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
        }
        None => Ok(None),
    }
}

pub(super) async fn put_outputs(
    store: &PgStore,
    job: &JobId,
    changes: &[FileChange],
) -> Result<()> {
    let parts = rules::output_parts(changes)?;
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    let st = tx
        .prepare_cached("SELECT pk FROM jobs WHERE id = $1")
        .await
        .map_err(db)?;
    let Some(row) = tx.query_opt(&st, &[&job.as_str()]).await.map_err(db)? else {
        return Err(Error::job_not_found(job.as_str()));
    };
    let pk: i64 = rows::get(&row, 0, "jobs.pk")?;
    let st = tx
        .prepare_cached("DELETE FROM job_output_parts WHERE job_pk = $1")
        .await
        .map_err(db)?;
    tx.execute(&st, &[&pk]).await.map_err(db)?;
    let (numbers, last_paths, jsons): (Vec<i32>, Vec<&str>, Vec<&str>) = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let n = i32::try_from(i).unwrap_or(i32::MAX);
            (n, p.last_path.as_str(), p.changes.as_str())
        })
        .collect();
    let st = tx
        .prepare_cached(
            "INSERT INTO job_output_parts (job_pk, part, last_path, changes) \
             SELECT $1, * FROM unnest($2::integer[], $3::text[], $4::text[])",
        )
        .await
        .map_err(db)?;
    tx.execute(&st, &[&pk, &numbers, &last_paths, &jsons])
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn get_outputs(
    store: &PgStore,
    job: &JobId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<FileChange>> {
    // '' sorts before every path: the first page reads from the first part.
    let parts = rows::int(rules::output_parts_for(limit) as u64);
    let rows = store
        .query(
            "SELECT changes FROM job_output_parts \
             WHERE job_pk = (SELECT pk FROM jobs WHERE id = $1) AND last_path > $2 \
             ORDER BY part LIMIT $3",
            &[&job.as_str(), &after.unwrap_or(""), &parts],
        )
        .await?;
    let jsons = rows
        .iter()
        .map(|r| rows::get::<&str>(r, 0, "job_output_parts.changes"))
        .collect::<Result<Vec<_>>>()?;
    rules::outputs_page(jsons, after, limit)
}
