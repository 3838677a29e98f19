//! Persistence: the [`Store`] trait is the source of truth for sessions, jobs and every job
//! event. `sqlite` is the embedded default; other backends (Postgres) implement the same trait and
//! must pass the same contract suite (`contract`).
//!
//! Several agentd processes (replicas) may share one store when it is [`Store::shared`]. The store
//! then also decides who runs what: a replica claims queued jobs under a lease it renews
//! ([`Store::claim_jobs`], [`Store::renew_leases`]); a job whose lease expired is an orphan that
//! any replica can settle ([`Store::expired_leases`]); and [`Store::signals`] tells every replica
//! what the others committed, so nothing needs polling in the normal case. Lease times are the
//! callers' clocks (replicas are expected to run NTP; the lease is tens of seconds).
//!
//! Invariants every backend keeps:
//! - a job's events are stored with consecutive seqs from 1; `append` refuses a gap or a repeat;
//! - a [`JobWrite`] (events plus the job row update) is applied atomically, so a reader that sees a
//!   `Finished` event also sees the job in its final state;
//! - tenant scoping happens here for sessions (`get_session` takes the tenant), so a forgotten
//!   check in the core cannot leak another tenant's session.

pub mod control;
pub mod conversations;
pub mod postgres;
pub mod presets;
mod rules;
pub mod sqlite;
pub mod webhooks;

#[cfg(test)]
pub mod contract;
#[cfg(test)]
mod contract_webhooks;

use crate::domain::{
    FileChange, Job, JobEvent, JobId, JobState, PageCursor, Session, SessionId, TenantId,
    Timestamp, Usage,
};
use crate::error::Result;
use crate::presets::TenantPreset;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A shared handle to the configured store.
pub type DynStore = Arc<dyn Store>;

/// Opens the store a URL names: `postgres://…` or `postgresql://…` (shared by replicas), or
/// `sqlite://<path>`; empty means SQLite at `<data_dir>/agentd.db`. Errors never show the URL's
/// password.
pub async fn open(url: &str, data_dir: &Path) -> Result<DynStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PgStore::open(url).await?));
    }
    let path = match url.strip_prefix("sqlite://") {
        _ if url.is_empty() => data_dir.join("agentd.db"),
        Some("") => data_dir.join("agentd.db"),
        Some(path) => Path::new(path).to_path_buf(),
        None => {
            let scheme = url.split_once("://").map_or("", |(s, _)| s);
            return Err(crate::error::Error::invalid(
                crate::error::Reason::InvalidField,
                "store",
                format!(
                    "unsupported store URL scheme {scheme:?}: use postgres://, postgresql:// or \
                     sqlite://"
                ),
            ));
        }
    };
    Ok(Arc::new(sqlite::SqliteStore::open(&path).await?))
}

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

/// What [`Store::read_changes`] answers for a cursor whose following changes were pruned.
pub(crate) fn cursor_expired(after: u64, pruned: u64) -> crate::error::Error {
    crate::error::Error::out_of_range(
        crate::error::Reason::CursorExpired,
        format!(
            "job changes after cursor {after} are no longer retained; the oldest retained \
             change follows cursor {pruned}: resume with after_cursor >= {pruned}"
        ),
    )
}

/// Limits checked in the same transaction that inserts a job, so they hold across replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmitLimits {
    /// Queued (not yet started) jobs one session may have; a new job beyond it is refused.
    pub max_queued_in_session: usize,
    /// Queued plus running jobs one tenant may have; 0 = unlimited.
    pub max_active_for_tenant: usize,
}

/// A job a replica has just claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub job: Job,
    /// Set when a cancel was requested before the claim; the job must end without starting.
    pub cancel_reason: Option<String>,
    /// What the job's start reads besides the job, when the backend read it in the claim's own
    /// transaction (SQLite's writer does, at no extra round trip); `None`: the runner reads it.
    pub start: Option<StartFacts>,
}

/// The rows a job's start needs besides the job itself: its session (`None`: deleted), the
/// agent's conversation in it ([`Store::agent_conversation`]) and the session's newest snapshot
/// ([`Store::newest_snapshot`]). Read when the job is claimed, they stay true until it starts:
/// only a running job of the session changes the last two, and a claimed job is the only one.
#[derive(Debug, Clone, PartialEq)]
pub struct StartFacts {
    pub session: Option<Session>,
    pub conversation: Option<String>,
    pub newest_snapshot: Option<SnapshotRow>,
}

/// An unfinished job whose owner stopped renewing its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    pub job: Job,
    /// The replica that held the lease.
    pub owner: String,
    /// When the lease ran out.
    pub lease_until: Timestamp,
    /// The job's lease generation when listed: settling it is a compare-and-swap on it
    /// ([`Store::take_over_orphan`]).
    pub lease_gen: u64,
}

/// What other replicas (and this one) committed. Signals carry no data a reader relies on: they
/// only say when to look at the store again, and may be lost or repeated.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSignal {
    /// Events of `job` up to `seq` are committed.
    Events { job: JobId, seq: u64 },
    /// A job was queued, released or finished: dispatchers should try to claim.
    JobsChanged,
    /// Someone asked for `job` to be cancelled; its owner should stop it.
    CancelRequested { job: JobId, reason: String },
    /// Signals may have been missed (listener reconnected, receiver lagged): look at everything.
    Resync,
    /// Some tenant's change sequence grew ([`Store::read_changes`]): watchers should read it.
    JobChanges,
    /// A control message for `job` was recorded ([`Store::send_control`]): its owner delivers it.
    Control { job: JobId },
}

/// One entry of a tenant's change sequence: a job as it was right after one of its state changes
/// (created, started, finished). Seqs number a tenant's changes from 1 without gaps.
#[derive(Debug, Clone, PartialEq)]
pub struct JobChange {
    pub seq: u64,
    pub time: Timestamp,
    pub job: Job,
}

/// One retained change of a job as WatchJobs' `include_events` needs it: the state the job
/// changed into and the job's last event seq at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeMark {
    pub seq: u64,
    /// As [`crate::domain::JobState::name`].
    pub state: &'static str,
    pub last_seq: u64,
}

/// Which side of a job a snapshot was taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SnapPoint {
    Before,
    After,
}

impl SnapPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapPoint::Before => "BEFORE",
            SnapPoint::After => "AFTER",
        }
    }

    pub fn parse(s: &str) -> Option<SnapPoint> {
        match s {
            "BEFORE" => Some(SnapPoint::Before),
            "AFTER" => Some(SnapPoint::After),
            _ => None,
        }
    }
}

/// One snapshot of the workspace history: the tree (in `workspace::history`) taken on one side
/// of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub job: JobId,
    pub point: SnapPoint,
    pub session: SessionId,
    pub tree: String,
    pub bytes_added: u64,
    pub created: Timestamp,
}

/// What [`Store::rewind_session`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewind {
    pub session: SessionId,
    /// The agent profile whose own conversation (#20) becomes `conversation`: set, or cleared
    /// when `conversation` is none (a point before that agent's first conversation).
    pub agent: Option<String>,
    pub conversation: Option<String>,
    pub past: Vec<JobId>,
    pub current: Option<JobId>,
    pub at: Timestamp,
}

/// Which snapshots [`Store::snapshots`] returns; both unset means all of them.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    pub job: Option<JobId>,
    pub session: Option<SessionId>,
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

    /// Whether other processes may use this store at the same time (Postgres: yes; SQLite: no, so
    /// at start-up every job left unfinished in it belongs to a previous run of this process).
    fn shared(&self) -> bool;

    /// Inserts a queued job, increments its session's `job_count` and sets the session's expiry
    /// to `session_expires`. If the tenant already has a job with the same `request_id`, nothing
    /// changes and that existing job is returned instead (before any limit is checked).
    /// Otherwise `limits` are checked atomically with the insert: a session with
    /// `max_queued_in_session` queued jobs answers `ResourceExhausted(QueueFull)` and a tenant with
    /// `max_active_for_tenant` unfinished jobs `ResourceExhausted(TooManyJobs)`, both with a
    /// `retry_after` of 5 s and nothing written.
    async fn create_job(
        &self,
        job: &Job,
        session_expires: Timestamp,
        limits: &AdmitLimits,
    ) -> Result<Job>;

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
    /// if any job does not exist, any seq does not continue its job's log, or any job is already
    /// finished (which fences off a replica that lost its lease). A finished job's owner is cleared.
    async fn append(&self, writes: Vec<JobWrite>) -> Result<()>;

    /// Up to `limit` events of a job with seq > `after_seq`, in seq order.
    async fn read_events(&self, job: &JobId, after_seq: u64, limit: usize)
    -> Result<Vec<JobEvent>>;

    /// Deletes stored events older than `before` of finished jobs, always keeping each job's last
    /// (`Finished`) event; at most `limit` rows per call. Returns how many were deleted. Readers
    /// notice pruning as a gap before the first retained seq.
    async fn prune_events(&self, before: Timestamp, limit: usize) -> Result<u64>;

    /// Claims up to `limit` runnable jobs for `replica`, each leased until `lease_until`, with no
    /// cap per tenant ([`Store::claim_jobs_within`]).
    async fn claim_jobs(
        &self,
        replica: &str,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        self.claim_jobs_within(replica, lease_until, limit, 0).await
    }

    /// Claims up to `limit` runnable jobs for `replica`, each leased until `lease_until`.
    /// Runnable: state QUEUED, no owner, and the oldest unfinished job of its session (so a
    /// session's jobs run one at a time and in order, whichever replica runs them). Fair share
    /// between tenants: each pick goes to the tenant with the fewest running jobs (RUNNING, or
    /// claimed by any replica, counting this call's picks), ties to the oldest job; a tenant with
    /// `tenant_max_running` such jobs (0: no cap) gets none. No two callers ever claim the same
    /// job; a claimed job stays QUEUED until its owner starts it. Answered oldest first.
    async fn claim_jobs_within(
        &self,
        replica: &str,
        lease_until: Timestamp,
        limit: usize,
        tenant_max_running: usize,
    ) -> Result<Vec<Claimed>>;

    /// Extends to `lease_until` the lease of every unfinished job `replica` owns, and returns
    /// their ids (a job missing from the answer was taken away, e.g. settled as an orphan).
    async fn renew_leases(&self, replica: &str, lease_until: Timestamp) -> Result<Vec<JobId>>;

    /// Unfinished owned jobs whose lease ended before `now`, oldest lease first, at most `limit`.
    async fn expired_leases(&self, now: Timestamp, limit: usize) -> Result<Vec<Orphan>> {
        self.expired_leases_within(now, now, limit).await
    }

    /// Owned jobs whose lease ended: QUEUED ones before `now`, RUNNING ones before
    /// `running_before` (a started job's supervisor may outlive its replica and be adopted
    /// until then, issue #23). Oldest lease first, at most `limit`.
    async fn expired_leases_within(
        &self,
        now: Timestamp,
        running_before: Timestamp,
        limit: usize,
    ) -> Result<Vec<Orphan>>;

    /// Moves a running job from replica `from` to `to`, leased until `lease_until`, adding one to
    /// its lease generation: how a restarted agentd adopts the job its previous process left
    /// running (issue #23). A compare-and-swap: false (changing nothing) unless the job is
    /// RUNNING and still `from`'s, so only one process adopts it.
    async fn take_over_job(
        &self,
        job: &JobId,
        from: &str,
        to: &str,
        lease_until: Timestamp,
    ) -> Result<bool>;

    /// Takes an orphan over for `to` (which then settles it), leased until `lease_until`, adding
    /// one to its lease generation. A compare-and-swap on what was listed: false (changing
    /// nothing) unless the job is unfinished, still the listed owner's and still at the listed
    /// generation, so a job its owner adopted again meanwhile is never settled by another replica.
    async fn take_over_orphan(
        &self,
        orphan: &Orphan,
        to: &str,
        lease_until: Timestamp,
    ) -> Result<bool>;

    /// Gives a claimed job that has not started (state QUEUED, owned by `owner`) back to the
    /// queue, in its original place. `false`, changing nothing, if it is not in that state.
    async fn release_job(&self, job: &JobId, owner: &str) -> Result<bool>;

    /// Applies `write` (a job's `Finished` event and final row) only if the job is still QUEUED
    /// and unowned, atomically with that check: cancelling a job nobody has claimed. `false`,
    /// changing nothing, if it was claimed, started or finished meanwhile.
    async fn finish_unclaimed(&self, write: JobWrite) -> Result<bool>;

    /// Records that `job` should be cancelled (the first reason is kept) and signals its owner
    /// with [`StoreSignal::CancelRequested`]. No-op for a finished or missing job.
    async fn request_cancel(&self, job: &JobId, reason: &str) -> Result<()>;

    /// Unfinished jobs owned by `replica` that have a cancel request, with its reason (for a
    /// replica that may have missed the signal).
    async fn cancel_requests(&self, replica: &str) -> Result<Vec<(JobId, String)>>;

    /// 1-based position of a QUEUED job (claimed or not) in its tenant's start order: 1 + the
    /// older QUEUED jobs of its session + the tenant's runnable QUEUED jobs (no older unfinished
    /// job in their session) of other sessions created before it. Other tenants' jobs never
    /// count. `None` if the job is not queued.
    async fn queue_position(&self, job: &JobId) -> Result<Option<u32>>;

    /// Signals of commits by every process sharing the store, including this one. `None` when the
    /// store is not shared (this process's own wake-ups are all there is).
    fn signals(&self) -> Option<tokio::sync::broadcast::Receiver<StoreSignal>>;

    /// Records the files a job changed (replacing any earlier record for that job).
    async fn put_job_outputs(&self, job: &JobId, changes: &[FileChange]) -> Result<()>;

    /// The files a job changed, in path order: those after `after`, at most `limit`; none when
    /// none were recorded for it.
    async fn get_job_outputs(
        &self,
        job: &JobId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileChange>>;

    /// Records a snapshot (replacing the row of the same job and point).
    async fn put_snapshot(&self, row: &SnapshotRow) -> Result<()>;

    /// Snapshots matching `filter`, oldest first (by `created`, then job and point).
    async fn snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<SnapshotRow>>;

    /// The session's newest snapshot: the last one [`Store::snapshots`] lists for it, read alone
    /// (a job's start asks for it, and a session keeps up to 200).
    async fn newest_snapshot(&self, session: &SessionId) -> Result<Option<SnapshotRow>>;

    /// What every recorded snapshot added to the history, in bytes (the total retention caps),
    /// summed by the store: every job's end asks, and the rows themselves are only read when
    /// the total is over the cap.
    async fn snapshot_bytes(&self) -> Result<u64>;

    /// Forgets these snapshots (the history's collector then frees what only they used);
    /// returns how many rows went.
    async fn delete_snapshots(&self, keys: &[(JobId, SnapPoint)]) -> Result<u64>;

    /// Holds `session` for a rewind until `until` (issue #18): refused with SESSION_BUSY while a
    /// job of the session is queued or running or another unlapsed hold exists, checked in the
    /// same transaction that sets the hold; while it holds, [`Store::create_job`] refuses the
    /// session's jobs (UNAVAILABLE, SESSION_BUSY). `rewind_session` or `release_rewind` ends it.
    async fn hold_for_rewind(
        &self,
        session: &SessionId,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<()>;

    /// Ends a rewind hold without recording a rewind (the swap failed).
    async fn release_rewind(&self, session: &SessionId) -> Result<()>;

    /// Records a rewind of `session` (issue #18) in one transaction: the session's conversation
    /// id and `agent`'s own conversation become `conversation` (the agent's entry is removed when
    /// it is none), the `past` jobs are marked rewound past (kept when already marked),
    /// `current`, the job the session is back after, loses its mark, and the rewind hold ends.
    async fn rewind_session(&self, rewind: &Rewind) -> Result<()>;

    /// The jobs of `session` marked rewound past.
    async fn rewound_jobs(&self, session: &SessionId) -> Result<Vec<JobId>>;

    /// Appends one model call to the usage ledger. Ledger rows are never deleted with their
    /// session or job.
    async fn record_model_call(&self, row: &LedgerRow) -> Result<()>;

    /// The tenant's ledger totals over `[since, until)`, one bucket per group key in key order
    /// (one bucket with an empty key when `group` is `None`; no bucket when nothing was spent).
    async fn usage(&self, tenant: &TenantId, filter: &UsageFilter) -> Result<Vec<UsageBucket>>;

    /// The ledger rows of one of the tenant's jobs, oldest first.
    async fn model_calls(&self, tenant: &TenantId, job: &JobId) -> Result<Vec<LedgerRow>>;

    /// Up to `limit` of the tenant's changes with seq > `after`, in seq order. Every job state
    /// change (`create_job`, an `append` whose update changes the state name) adds one in its own
    /// transaction, and a tenant's seqs become visible in order (no reader ever sees seq n+1
    /// before n). Changes of deleted jobs are skipped. `OutOfRange(CursorExpired)` when changes
    /// after `after` were pruned.
    async fn read_changes(
        &self,
        tenant: &TenantId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobChange>>;

    /// The seq of the tenant's latest change (0 if none).
    async fn last_change(&self, tenant: &TenantId) -> Result<u64>;

    /// The retained changes of one of the tenant's jobs with seq < `before`, oldest first (none
    /// for a job of another tenant).
    async fn job_change_marks(
        &self,
        tenant: &TenantId,
        job: &JobId,
        before: u64,
    ) -> Result<Vec<ChangeMark>>;

    /// Deletes changes older than `before`, at most `limit`, remembering per tenant up to where,
    /// so that older cursors answer `CursorExpired`. Returns how many were deleted. A job's
    /// changes go only once the job is gone, or final with its final change older than `before`
    /// too (a later change needs its job's earlier ones as marks, see `job_change_marks`), and
    /// deleting any of them expires the cursors up to the job's last change.
    async fn prune_changes(&self, before: Timestamp, limit: usize) -> Result<u64>;

    /// Inserts a webhook endpoint, or updates the URL, events and secrets of the one with its id
    /// (keeping its creation time).
    async fn put_webhook(&self, endpoint: &WebhookEndpoint) -> Result<()>;

    /// The tenant's webhook endpoints, oldest first.
    async fn webhooks(&self, tenant: &TenantId) -> Result<Vec<WebhookEndpoint>>;

    /// Deletes one of the tenant's endpoints; `false` if it has none with this id. Its pending
    /// deliveries stay and fail when they come due.
    async fn delete_webhook(&self, tenant: &TenantId, id: &str) -> Result<bool>;

    /// Makes `secret` the endpoint's secret; the previous one still signs until `old_until`.
    /// `None` if the tenant has no endpoint with this id.
    async fn rotate_webhook_secret(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
        old_until: Timestamp,
    ) -> Result<Option<WebhookEndpoint>>;

    /// Up to `limit` tenants whose change sequence is ahead of their webhook cursor, each with
    /// that cursor (0 when it never moved), in tenant order.
    async fn webhook_backlog(&self, limit: usize) -> Result<Vec<(TenantId, u64)>>;

    /// Atomically: inserts `deliveries` (skipping any whose endpoint already has that message)
    /// and moves the tenant's webhook cursor from `from` to `to`. `false`, changing nothing, when
    /// the cursor is no longer at `from` (another replica moved it first).
    async fn enqueue_webhooks(
        &self,
        tenant: &TenantId,
        from: u64,
        to: u64,
        deliveries: Vec<NewDelivery>,
    ) -> Result<bool>;

    /// Inserts deliveries outside the change sequence (e.g. permission requests), skipping any
    /// whose endpoint already has that message.
    async fn add_webhook_deliveries(
        &self,
        tenant: &TenantId,
        deliveries: Vec<NewDelivery>,
    ) -> Result<()>;

    /// Claims up to `limit` pending deliveries due at `now` for `owner` until `lease_until`
    /// (unowned, or whose lease ran out), oldest due first, such that no receiver has more than
    /// `per_endpoint` unexpired leases. No two callers claim the same delivery.
    async fn claim_webhook_deliveries(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        per_endpoint: usize,
    ) -> Result<Vec<Delivery>>;

    /// Logs an attempt of a delivery `owner` holds and applies its outcome (releasing the lease).
    /// `false`, changing nothing, if `owner` no longer holds it.
    async fn finish_webhook_attempt(
        &self,
        id: &str,
        owner: &str,
        attempt: &Attempt,
        outcome: AttemptOutcome,
    ) -> Result<bool>;

    /// The tenant's deliveries matching `filter`, newest first, at most `limit`, each with its
    /// attempts.
    async fn webhook_deliveries(
        &self,
        tenant: &TenantId,
        filter: &DeliveryFilter,
        limit: usize,
    ) -> Result<Vec<DeliveryLog>>;
    /// Adds a tenant's preset: ALREADY_EXISTS (PRESET_EXISTS) when the name is taken,
    /// RESOURCE_EXHAUSTED past `presets::MAX_PER_TENANT`.
    async fn create_preset(&self, preset: &TenantPreset) -> Result<()>;

    async fn get_preset(&self, tenant: &TenantId, name: &str) -> Result<Option<TenantPreset>>;

    /// The tenant's presets by name.
    async fn list_presets(&self, tenant: &TenantId) -> Result<Vec<TenantPreset>>;

    /// Replaces a preset's body (keeping its creation time); false when there is none.
    async fn update_preset(&self, preset: &TenantPreset) -> Result<bool>;

    /// False when there was none.
    async fn delete_preset(&self, tenant: &TenantId, name: &str) -> Result<bool>;

    /// The conversation `agent` (a profile name) last had in the session, to resume (#20).
    async fn agent_conversation(&self, session: &SessionId, agent: &str) -> Result<Option<String>>;

    /// Records `agent`'s conversation in the session (replacing its previous one); nothing when
    /// the session is gone.
    async fn set_agent_conversation(
        &self,
        session: &SessionId,
        agent: &str,
        conversation: &str,
        now: Timestamp,
    ) -> Result<()>;

    /// Records a control message for `job` (issue #17) and signals its owner
    /// ([`StoreSignal::Control`]); `delivered`: the caller delivers it itself (the job runs in
    /// its process), so no owner picks it up. An answer claims its permission request
    /// atomically: `None`, recording nothing, when another answer to it holds the claim.
    async fn send_control(
        &self,
        job: &JobId,
        control: &control::Control,
        delivered: bool,
        now: Timestamp,
    ) -> Result<Option<i64>>;

    /// Undelivered control messages of the unfinished jobs `replica` owns, oldest first.
    async fn pending_controls(&self, replica: &str) -> Result<Vec<control::ControlMessage>>;

    /// Marks message `id` delivered (`refusal` `None`) or refused with the controller's
    /// (reason, message); refused with [`control::RELEASED`], an answer gives up its claim.
    async fn settle_control(&self, id: i64, refusal: Option<(&str, &str)>) -> Result<()>;

    /// What became of message `id`; `None` while it waits for its owner (or is unknown).
    async fn control_outcome(&self, id: i64) -> Result<Option<control::ControlOutcome>>;
}

pub use webhooks::{
    Attempt, AttemptOutcome, Delivery, DeliveryFilter, DeliveryLog, DeliveryState, NewDelivery,
    WebhookEndpoint,
};

/// One row of the usage ledger: a model call and whose it was.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    pub tenant: TenantId,
    pub session: SessionId,
    pub job: JobId,
    /// The agent profile.
    pub agent: String,
    pub call: crate::domain::ModelCall,
}

/// How ledger rows are grouped by [`Store::usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    /// UTC day; the key is `YYYY-MM-DD`.
    Day,
    Session,
    Agent,
    Model,
}

impl UsageGroup {
    /// The SQL expression of the group key (the same in SQLite and Postgres): days are counted
    /// from the epoch here and rendered as dates by the caller.
    pub fn sql_key(self) -> &'static str {
        match self {
            UsageGroup::Day => "CAST(time / 86400000000 AS TEXT)",
            UsageGroup::Session => "session_id",
            UsageGroup::Agent => "agent",
            UsageGroup::Model => "model",
        }
    }
}

/// A range of the ledger and how to group it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageFilter {
    pub since: Timestamp,
    pub until: Timestamp,
    pub group: Option<UsageGroup>,
    /// Only this session's calls.
    pub session: Option<SessionId>,
}

/// Totals of a group of ledger rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageBucket {
    pub key: String,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Of the priced calls only.
    pub cost_usd: f64,
    /// Calls of models without a configured price.
    pub unpriced_calls: u64,
}

impl UsageBucket {
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
    }
}

/// The SQL every backend runs for [`Store::usage`], with `$1` tenant, `$2` since, `$3` until,
/// `$4` the session or `''` for all (SQLite reads `$n` as numbered parameters too).
pub fn usage_sql(group: Option<UsageGroup>) -> String {
    let sum = |c: &str| format!("CAST(coalesce(sum({c}), 0) AS BIGINT)");
    let (key, group_by) = match group {
        Some(g) => (g.sql_key(), " GROUP BY 1"),
        None => ("''", ""),
    };
    format!(
        "SELECT {key} AS k, count(*), {}, {}, {}, {}, \
         CAST(coalesce(sum(cost_usd), 0) AS DOUBLE PRECISION), count(*) - count(cost_usd) \
         FROM model_calls WHERE tenant = $1 AND time >= $2 AND time < $3 \
         AND ($4 = '' OR session_id = $4){group_by} \
         HAVING count(*) > 0 ORDER BY 1",
        sum("input_tokens"),
        sum("output_tokens"),
        sum("cache_read_tokens"),
        sum("cache_write_tokens"),
    )
}

/// The columns of a ledger row, in the order the backends select and insert them.
pub const LEDGER_COLS: &str = "tenant, session_id, job_id, agent, time, model, api, status, \
     input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_ms";
