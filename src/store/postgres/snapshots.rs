//! The workspace history's index in Postgres: which tree was taken on which side of which job.

use super::PgStore;
use super::rows::{get, int, uint};
use crate::domain::{JobId, SessionId, Timestamp};
use crate::error::{Error, Result};
use crate::store::{SnapPoint, SnapshotFilter, SnapshotRow};

pub(super) async fn put(store: &PgStore, r: &SnapshotRow) -> Result<()> {
    store
        .execute(
            "INSERT INTO snapshots (job_id, point, session_id, tree, bytes_added, created) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (job_id, point) DO UPDATE SET tree = excluded.tree, \
             bytes_added = excluded.bytes_added, created = excluded.created",
            &[
                &r.job.as_str(),
                &r.point.as_str(),
                &r.session.as_str(),
                &r.tree,
                &int(r.bytes_added),
                &r.created.micros(),
            ],
        )
        .await?;
    Ok(())
}

/// The columns [`decode`] reads, in its order.
const COLUMNS: &str = "job_id, point, session_id, tree, bytes_added, created";

pub(super) async fn list(store: &PgStore, f: &SnapshotFilter) -> Result<Vec<SnapshotRow>> {
    let rows = store
        .query(
            &format!(
                "SELECT {COLUMNS} FROM snapshots \
                 WHERE ($1::text IS NULL OR job_id = $1) AND ($2::text IS NULL OR session_id = $2) \
                 ORDER BY created, job_id, point"
            ),
            &[
                &f.job.as_ref().map(JobId::as_str),
                &f.session.as_ref().map(SessionId::as_str),
            ],
        )
        .await?;
    rows.iter().map(decode).collect()
}

/// A row of [`COLUMNS`].
fn decode(r: &tokio_postgres::Row) -> Result<SnapshotRow> {
    let point: &str = get(r, 1, "snapshots.point")?;
    Ok(SnapshotRow {
        job: JobId::from_trusted(get(r, 0, "snapshots.job_id")?),
        point: SnapPoint::parse(point)
            .ok_or_else(|| Error::internal("store: snapshots.point is not a point"))?,
        session: SessionId::from_trusted(get(r, 2, "snapshots.session_id")?),
        tree: get(r, 3, "snapshots.tree")?,
        bytes_added: uint(r, 4, "snapshots.bytes_added")?,
        created: Timestamp(get(r, 5, "snapshots.created")?),
    })
}

/// The last row `list` would give for the session, by the `(session_id, created)` index.
pub(super) async fn newest(store: &PgStore, session: &SessionId) -> Result<Option<SnapshotRow>> {
    let rows = store
        .query(
            &format!(
                "SELECT {COLUMNS} FROM snapshots WHERE session_id = $1 \
                 ORDER BY created DESC, job_id DESC, point DESC LIMIT 1"
            ),
            &[&session.as_str()],
        )
        .await?;
    rows.first().map(decode).transpose()
}

pub(super) async fn bytes(store: &PgStore) -> Result<u64> {
    let rows = store
        .query(
            "SELECT coalesce(sum(bytes_added), 0)::BIGINT FROM snapshots",
            &[],
        )
        .await?;
    match rows.first() {
        Some(r) => uint(r, 0, "sum(snapshots.bytes_added)"),
        None => Ok(0),
    }
}

pub(super) async fn delete(store: &PgStore, keys: &[(JobId, SnapPoint)]) -> Result<u64> {
    let jobs: Vec<&str> = keys.iter().map(|(j, _)| j.as_str()).collect();
    let points: Vec<&str> = keys.iter().map(|(_, p)| p.as_str()).collect();
    store
        .execute(
            "DELETE FROM snapshots s USING unnest($1::text[], $2::text[]) AS k(job_id, point) \
             WHERE s.job_id = k.job_id AND s.point = k.point",
            &[&jobs, &points],
        )
        .await
}
