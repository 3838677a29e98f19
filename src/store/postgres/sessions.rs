//! Sessions in Postgres: idempotent creation by request id, label-filtered pages, and deletion
//! that takes the session's jobs and events with it.

use super::{PgStore, db, rows};
use crate::domain::{PageCursor, Session, SessionId, TenantId};
use crate::error::Result;
use rows::{int, session_cols, to_json};
use std::collections::BTreeMap;
use tokio_postgres::error::SqlState;

impl PgStore {
    /// `create_session` once; `Ok(None)` when it lost a race on the request id.
    pub(super) async fn try_create_session(&self, s: &Session) -> Result<Option<Session>> {
        if let Some(rid) = &s.request_id {
            let rows = self
                .query(
                    concat!(
                        "SELECT ",
                        session_cols!(),
                        " FROM sessions WHERE tenant = $1 AND request_id = $2"
                    ),
                    &[&s.tenant.as_str(), rid],
                )
                .await?;
            if let Some(row) = rows.first() {
                return rows::session(row).map(Some);
            }
        }
        let labels = to_json(&s.labels, "session labels")?;
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "INSERT INTO sessions (id, tenant, labels, created, expires, ttl_us, request_id, \
                 conversation_id, job_count) VALUES ($1, $2, $3::text::jsonb, $4, $5, $6, $7, $8, $9)",
            )
            .await
            .map_err(db)?;
        let r = c
            .execute(
                &st,
                &[
                    &s.id.as_str(),
                    &s.tenant.as_str(),
                    &labels,
                    &s.created.micros(),
                    &s.expires.micros(),
                    &rows::ttl_micros(s.ttl),
                    &s.request_id,
                    &s.conversation_id,
                    &int(s.job_count),
                ],
            )
            .await;
        match r {
            Ok(_) => Ok(Some(s.clone())),
            Err(e) if s.request_id.is_some() && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Ok(None)
            }
            Err(e) => Err(db(e)),
        }
    }
}

pub(super) async fn list(
    store: &PgStore,
    tenant: &TenantId,
    labels: &BTreeMap<String, String>,
    after: Option<&PageCursor>,
    limit: usize,
) -> Result<Vec<Session>> {
    let labels = to_json(labels, "label filter")?;
    let limit = int(limit as u64);
    // Two statements rather than `$4 IS NULL OR …`, which would stop the index range scan.
    let rows = match after {
        None => {
            store
                .query(
                    concat!(
                        "SELECT ",
                        session_cols!(),
                        " FROM sessions WHERE tenant = $1 AND labels @> $2::text::jsonb \
                      ORDER BY created DESC, id DESC LIMIT $3"
                    ),
                    &[&tenant.as_str(), &labels, &limit],
                )
                .await?
        }
        Some(c) => {
            store
                .query(
                    concat!(
                        "SELECT ",
                        session_cols!(),
                        " FROM sessions WHERE tenant = $1 AND labels @> $2::text::jsonb \
                      AND (created, id) < ($4, $5) ORDER BY created DESC, id DESC LIMIT $3"
                    ),
                    &[
                        &tenant.as_str(),
                        &labels,
                        &limit,
                        &c.created.micros(),
                        &c.id,
                    ],
                )
                .await?
        }
    };
    rows::all(&rows, rows::session)
}

pub(super) async fn delete(store: &PgStore, id: &SessionId) -> Result<()> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    // Session first (no job can be added meanwhile), then its jobs (no append can run
    // meanwhile), so that the events deleted next are all there will ever be.
    let lock_session = tx
        .prepare_cached("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE")
        .await
        .map_err(db)?;
    let lock_jobs = tx
        .prepare_cached("SELECT pk FROM jobs WHERE session_id = $1 ORDER BY pk FOR UPDATE")
        .await
        .map_err(db)?;
    let del_events = tx
        .prepare_cached("DELETE FROM events WHERE job_pk = ANY($1)")
        .await
        .map_err(db)?;
    // Jobs and their outputs go by cascade.
    let del_session = tx
        .prepare_cached("DELETE FROM sessions WHERE id = $1")
        .await
        .map_err(db)?;
    if tx
        .query_opt(&lock_session, &[&id.as_str()])
        .await
        .map_err(db)?
        .is_none()
    {
        return Ok(());
    }
    let pks: Vec<i64> = rows::all(
        &tx.query(&lock_jobs, &[&id.as_str()]).await.map_err(db)?,
        |r| rows::get(r, 0, "jobs.pk"),
    )?;
    if !pks.is_empty() {
        tx.execute(&del_events, &[&pks]).await.map_err(db)?;
    }
    tx.execute(&del_session, &[&id.as_str()])
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}
