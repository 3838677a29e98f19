//! Workspace history use cases (issue #18): a snapshot on each side of every job, the job's exact
//! outputs computed from the two, its unified diff, retention and collection. The object store is
//! `workspace::history`; the store (database) says which tree belongs to which job.

use super::Core;
use crate::domain::{FileChange, JobId, SessionId, TenantId, Timestamp};
use crate::error::{Error, Reason, Result};
use crate::store::{SnapPoint, SnapshotFilter, SnapshotRow};
use crate::workspace::history::{self, Basis, Taken, Tree, diff};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Snapshots kept per session (oldest go first; the newest is never evicted).
pub const KEEP_PER_SESSION: usize = 200;
/// Bytes of content the history may hold, estimated from what each snapshot added.
pub const MAX_HISTORY_BYTES: u64 = 20 << 30;
/// Default cap of a diff's text.
pub const DEFAULT_DIFF_BYTES: u64 = 16 << 20;

/// One collection at a time per process: two sweeps would only do the same work twice.
static COLLECTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a diff is asked for.
#[derive(Debug, Clone)]
pub struct DiffRequest {
    pub job_id: String,
    pub paths: Vec<String>,
    pub context_lines: Option<u32>,
    pub max_bytes: u64,
}

/// A piece of a streamed diff.
#[derive(Debug, Clone)]
pub struct DiffChunk {
    pub text: String,
    pub truncated: bool,
}

impl Core {
    /// The tree of the session's newest snapshot: the listing a new one starts from.
    pub(super) async fn latest_tree(&self, session: &SessionId) -> Result<Option<String>> {
        Ok(self.store.newest_snapshot(session).await?.map(|r| r.tree))
    }

    /// A snapshot over `basis`, not recorded yet: the caller stores the row when it suits it (a
    /// job's before-snapshot, beside its agent's start). Collection keeps the tree meanwhile (its
    /// `GRACE`).
    pub(super) async fn take_unrecorded(
        &self,
        session: &SessionId,
        job: &JobId,
        point: SnapPoint,
        basis: Basis,
        hand_to: Option<(u32, u32)>,
    ) -> Result<(Taken, SnapshotRow)> {
        let taken = self
            .workspaces
            .take_snapshot(session, basis, hand_to)
            .await?;
        let row = SnapshotRow {
            job: job.clone(),
            point,
            session: session.clone(),
            tree: taken.id.clone(),
            bytes_added: taken.stats.bytes_added,
            created: Timestamp::now(),
        };
        tracing::debug!(job = %job, point = point.as_str(), files = taken.stats.files,
            read = taken.stats.files_read, bytes_added = taken.stats.bytes_added, "snapshot taken");
        Ok((taken, row))
    }

    /// The exact changes between a job's two snapshots.
    pub(super) fn outputs_of(before: &Tree, after: &Tree) -> Vec<FileChange> {
        history::changes(before, after)
    }

    /// The tree id of the snapshot taken on `point` of `job`; SNAPSHOT_NOT_FOUND when it was never
    /// taken (the job has not reached that point) or was evicted.
    pub(super) async fn snapshot_tree(&self, job: &JobId, point: SnapPoint) -> Result<String> {
        self.store
            .snapshots(&SnapshotFilter {
                job: Some(job.clone()),
                session: None,
            })
            .await?
            .into_iter()
            .find(|r| r.point == point)
            .map(|r| r.tree)
            .ok_or_else(|| {
                Error::not_found(
                    Reason::SnapshotNotFound,
                    format!(
                        "job {job} has no {} snapshot (not taken yet, or evicted)",
                        point.as_str()
                    ),
                )
            })
    }

    /// The trees taken before and after a finished job of this tenant.
    async fn job_trees(&self, tenant: &TenantId, job_id: &str) -> Result<(Tree, Tree)> {
        let job = self.owned_job(tenant, job_id).await?;
        if !job.state.is_finished() {
            return Err(Error::precondition(
                Reason::JobNotFinished,
                format!("job {job_id} has not finished; its diff is known when it ends"),
            ));
        }
        let rows = self
            .store
            .snapshots(&SnapshotFilter {
                job: Some(job.id.clone()),
                session: None,
            })
            .await?;
        let tree_of = |p: SnapPoint| {
            rows.iter()
                .find(|r| r.point == p)
                .map(|r| r.tree.clone())
                .ok_or_else(|| {
                    Error::not_found(
                        Reason::SnapshotNotFound,
                        format!(
                            "job {job_id} has no {} snapshot (never taken, or evicted)",
                            p.as_str()
                        ),
                    )
                })
        };
        let (b, a) = (tree_of(SnapPoint::Before)?, tree_of(SnapPoint::After)?);
        self.workspaces
            .with_history(move |h| Ok((h.tree(&b)?, h.tree(&a)?)))
            .await
    }

    /// Streams a job's unified diff, file by file, into a bounded channel.
    pub async fn job_diff(
        &self,
        tenant: &TenantId,
        mut req: DiffRequest,
    ) -> Result<mpsc::Receiver<Result<DiffChunk>>> {
        for (i, p) in req.paths.iter_mut().enumerate() {
            *p = crate::workspace::normalize_path(p, &format!("paths[{i}]"))?;
        }
        let (before, after) = self.job_trees(tenant, &req.job_id).await?;
        let changes: Vec<FileChange> = history::changes(&before, &after)
            .into_iter()
            .filter(|c| diff::selected(c, &req.paths))
            .collect();
        let context = req.context_lines.map_or(3, |n| n.min(10_000) as usize);
        let cap = if req.max_bytes == 0 {
            DEFAULT_DIFF_BYTES
        } else {
            req.max_bytes
        };
        let (tx, rx) = mpsc::channel(4);
        let ws = self.workspaces.clone();
        // Shared, not copied per file: a job that added 60,000 files copied both listings
        // 60,000 times (minutes of CPU for one diff).
        let (before, after) = (Arc::new(before), Arc::new(after));
        tokio::spawn(async move {
            let mut sent = 0u64;
            for c in changes {
                let (b, a) = (Arc::clone(&before), Arc::clone(&after));
                let text = ws
                    .with_history(move |h| diff::file_diff(h, &b, &a, &c, context))
                    .await;
                let chunk = match text {
                    Ok(t) if sent + t.len() as u64 > cap => {
                        let _ = tx
                            .send(Ok(DiffChunk {
                                text: diff::TRUNCATED_MARKER.to_owned(),
                                truncated: true,
                            }))
                            .await;
                        return;
                    }
                    Ok(t) => {
                        sent += t.len() as u64;
                        Ok(DiffChunk {
                            text: t,
                            truncated: false,
                        })
                    }
                    Err(e) => Err(e),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Drops the session's oldest snapshots past `KEEP_PER_SESSION` and the oldest of all past
    /// `MAX_HISTORY_BYTES` (never a session's newest), then collects what they alone used.
    pub(super) async fn enforce_retention(&self, session: &SessionId) -> Result<()> {
        let mine = self
            .store
            .snapshots(&SnapshotFilter {
                session: Some(session.clone()),
                job: None,
            })
            .await?;
        let mut evict: Vec<(JobId, SnapPoint)> = mine
            .iter()
            .take(mine.len().saturating_sub(KEEP_PER_SESSION))
            .map(|r| (r.job.clone(), r.point))
            .collect();
        // Every job's end asks: the store sums, and the rows of every session (up to
        // `KEEP_PER_SESSION` each) are only read when the total is over the cap.
        if self.store.snapshot_bytes().await? > MAX_HISTORY_BYTES {
            let all = self.store.snapshots(&SnapshotFilter::default()).await?;
            let mut total: u64 = all.iter().map(|r| r.bytes_added).sum();
            evict.extend(over_cap(&all, &mut total, MAX_HISTORY_BYTES));
        }
        if evict.is_empty() {
            return Ok(());
        }
        self.store.delete_snapshots(&evict).await?;
        self.collect_history().await.map(drop)
    }

    /// Forgets a deleted session's snapshots and frees what only they used.
    pub(super) async fn forget_history(&self, session: &SessionId) -> Result<()> {
        let keys: Vec<_> = self
            .store
            .snapshots(&SnapshotFilter {
                session: Some(session.clone()),
                job: None,
            })
            .await?
            .into_iter()
            .map(|r| (r.job, r.point))
            .collect();
        if !keys.is_empty() {
            self.store.delete_snapshots(&keys).await?;
        }
        self.collect_history().await.map(drop)
    }

    /// Deletes every tree and content no recorded snapshot uses.
    pub async fn collect_history(&self) -> Result<history::GcStats> {
        let _one = COLLECTING.lock().await;
        let live: HashSet<String> = self
            .store
            .snapshots(&SnapshotFilter::default())
            .await?
            .into_iter()
            .map(|r| r.tree)
            .collect();
        let stats = self.workspaces.with_history(move |h| h.gc(&live)).await?;
        tracing::debug!(?stats, "history collected");
        Ok(stats)
    }
}

/// The oldest snapshots to drop until `total` fits `cap`, keeping each session's newest.
fn over_cap(all: &[SnapshotRow], total: &mut u64, cap: u64) -> Vec<(JobId, SnapPoint)> {
    let mut newest: std::collections::HashMap<&SessionId, &SnapshotRow> = Default::default();
    for r in all {
        newest.insert(&r.session, r);
    }
    let mut out = Vec::new();
    for r in all {
        if *total <= cap {
            break;
        }
        if newest.get(&r.session).is_some_and(|n| std::ptr::eq(*n, r)) {
            continue;
        }
        *total = total.saturating_sub(r.bytes_added);
        out.push((r.job.clone(), r.point));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(session: &str, job: u8, bytes: u64) -> SnapshotRow {
        SnapshotRow {
            job: JobId::from_trusted(format!("job_{job}")),
            point: SnapPoint::After,
            session: SessionId::from_trusted(session.into()),
            tree: String::new(),
            bytes_added: bytes,
            created: Timestamp(i64::from(job)),
        }
    }

    #[test]
    fn the_cap_evicts_oldest_first_but_never_a_sessions_newest() {
        let all = vec![
            row("a", 1, 50),
            row("b", 2, 50),
            row("a", 3, 50),
            row("b", 4, 50),
        ];
        let mut total = 200;
        let out = over_cap(&all, &mut total, 100);
        let jobs: Vec<_> = out.iter().map(|(j, _)| j.as_str()).collect();
        assert_eq!(jobs, ["job_1", "job_2"]);
        assert_eq!(total, 100);
        // However far over the cap, the newest of each session stays.
        let mut total = 200;
        let out = over_cap(&all, &mut total, 0);
        let jobs: Vec<_> = out.iter().map(|(j, _)| j.as_str()).collect();
        assert_eq!(jobs, ["job_1", "job_2"]);
    }
}
