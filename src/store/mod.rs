//! Persistence: the [`Store`] trait is the source of truth for sessions, jobs and every job
//! event. `sqlite` is the embedded default; other backends (Postgres) implement the same trait and
//! must pass the same contract suite (`contract`).
//!
//! Invariants every backend keeps:
//! - a job's events are stored with consecutive seqs from 1; `append` refuses a gap or a repeat;
//! - a [`JobWrite`] (events plus the job row update) is applied atomically, so a reader that sees a
//!   `Finished` event also sees the job in its final state;
//! - tenant scoping happens here for sessions (`get_session` takes the tenant), so a forgotten
//!   check in the core cannot leak another tenant's session.

pub mod sqlite;

#[cfg(test)]
pub mod contract;

use crate::domain::{
    FileChange, Job, JobEvent, JobId, JobState, PageCursor, Session, SessionId, TenantId,
    Timestamp, Usage,
};
use crate::error::Result;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A shared handle to the configured store.
pub type DynStore = Arc<dyn Store>;

/// The job row fields that change while a job runs. Applied together with a batch of events.
#[derive(Debug, Clone, PartialEq)]
pub struct JobUpdate {
    pub state: JobState,
    pub result: String,
    pub usage: Usage,
    pub conversation_id: Option<String>,
}

/// Events for one job, and optionally its new row state, written in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct JobWrite {
    pub job_id: JobId,
    /// Consecutive seqs continuing the job's stored `last_seq` (may be empty).
    pub events: Vec<JobEvent>,
    /// When set, the job row takes these values. When the state is `Finished` and a
    /// conversation id is set, the session's `conversation_id` is updated too.
    pub update: Option<JobUpdate>,
}

/// Filters for [`Store::list_jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Final/current state names as in [`JobState::name`] (`QUEUED`, `RUNNING`, `SUCCEEDED`, …);
    /// empty means all.
    pub states: Vec<&'static str>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a session. If the tenant already has a session with the same `request_id`, nothing
    /// is inserted and that existing session is returned instead.
    async fn create_session(&self, session: &Session) -> Result<Session>;

    /// The tenant's session with this id, if it exists.
    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>>;

    /// The session with this id whatever its tenant (for background work such as the scheduler).
    async fn get_session_any(&self, id: &SessionId) -> Result<Option<Session>>;

    /// The tenant's sessions, newest first (by `created`, then id), strictly after `after`,
    /// carrying every label in `labels`, at most `limit`.
    async fn list_sessions(
        &self,
        tenant: &TenantId,
        labels: &BTreeMap<String, String>,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Result<Vec<Session>>;

    /// Sets a session's expiry time.
    async fn set_session_expiry(&self, id: &SessionId, expires: Timestamp) -> Result<()>;

    /// Deletes a session with all its jobs, events and recorded outputs. Deleting a missing
    /// session is not an error.
    async fn delete_session(&self, id: &SessionId) -> Result<()>;

    /// Sessions whose expiry is at or before `now`, oldest expiry first, at most `limit`.
    async fn expired_sessions(&self, now: Timestamp, limit: usize) -> Result<Vec<Session>>;

    /// Inserts a queued job, increments its session's `job_count` and sets the session's expiry
    /// to `session_expires`. If the tenant already has a job with the same `request_id`, nothing
    /// changes and that existing job is returned instead.
    async fn create_job(&self, job: &Job, session_expires: Timestamp) -> Result<Job>;

    /// The job with this id, whatever its tenant (the core compares tenants).
    async fn get_job(&self, id: &JobId) -> Result<Option<Job>>;

    /// A session's jobs, newest first, strictly after `after`, at most `limit`.
    async fn list_jobs(
        &self,
        session: &SessionId,
        filter: &JobFilter,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Result<Vec<Job>>;

    /// Every job that is queued or running, oldest first (start-up recovery and scheduling).
    async fn unfinished_jobs(&self) -> Result<Vec<Job>>;

    /// The session's most recent job (by creation) that succeeded, if any.
    async fn latest_succeeded_job(&self, session: &SessionId) -> Result<Option<Job>>;

    /// Applies several job writes, in order, atomically as a whole. Fails (changing nothing)
    /// if any job does not exist or any seq does not continue its job's log.
    async fn append(&self, writes: Vec<JobWrite>) -> Result<()>;

    /// Up to `limit` events of a job with seq > `after_seq`, in seq order.
    async fn read_events(&self, job: &JobId, after_seq: u64, limit: usize)
    -> Result<Vec<JobEvent>>;

    /// Deletes stored events older than `before` of finished jobs, always keeping each job's last
    /// (`Finished`) event; at most `limit` rows per call. Returns how many were deleted. Readers
    /// notice pruning as a gap before the first retained seq.
    async fn prune_events(&self, before: Timestamp, limit: usize) -> Result<u64>;

    /// Records the files a job changed (replacing any earlier record for that job).
    async fn put_job_outputs(&self, job: &JobId, changes: &[FileChange]) -> Result<()>;

    /// The files a job changed, in path order; `None` if none were recorded for it.
    async fn get_job_outputs(&self, job: &JobId) -> Result<Option<Vec<FileChange>>>;
}
