//! The embedded SQLite [`Store`]: one file in WAL mode, one writer thread that group-commits
//! whatever writes are queued (so thousands of event appends per second cost a handful of
//! commits), a checkpointer thread that copies the WAL into the database file beside it
//! (`sqlite/checkpoint.rs`), and a small pool of read connections used from `spawn_blocking`.
//! rusqlite is synchronous and never runs on the async runtime.
//!
//! Claims and leases follow the trait's contract even though the store is not `shared`: each claim
//! is a write in an IMMEDIATE transaction, so two handles on one file never claim the same job.
//!
//! Durability: `synchronous=NORMAL` under WAL means a committed write survives the process being
//! killed (the case we care about: crash, `kill -9`), while a power loss may drop the last commits.

mod changes;
mod checkpoint;
mod conn;
mod control;
mod ledger;
mod ops;
mod presets;
mod rewinds;
mod snapshots;
mod webhooks;
mod writer;

use crate::domain::{
    FileChange, Job, JobEvent, JobId, PageCursor, Session, SessionId, TenantId, Timestamp,
};
use crate::error::{Error, Result};
use crate::store::{
    AdmitLimits, Claimed, JobChange, JobFilter, JobWrite, Orphan, Store, StoreSignal,
};
use async_trait::async_trait;
use conn::Readers;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use writer::Writer;

/// Every rusqlite failure is the server's problem. The message is SQLite's own, which names the
/// table or constraint but never row data. A database that cannot be written now (disk full or
/// failing, file read-only or unopenable, locked past the busy timeout) is an outage the caller
/// may retry; anything else is a bug.
fn db(e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(
            C::DiskFull
            | C::SystemIoFailure
            | C::ReadOnly
            | C::CannotOpen
            | C::DatabaseBusy
            | C::DatabaseLocked,
        ) => Error::store_unavailable(format!("store: {e}")),
        _ => Error::internal(format!("store: {e}")),
    }
}

/// The SQLite-backed store. Cheap to share behind an `Arc`; dropping it stops the writer thread
/// once the writes already queued are done.
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<Readers>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn::open_writer(&path)?;
            checkpoint::install(&mut conn, &path)?;
            Ok(Self {
                writer: Writer::spawn(conn)?,
                readers: Arc::new(Readers::new(path)),
            })
        })
        .await
        .map_err(|e| Error::internal(format!("store: open task failed: {e}")))?
    }

    /// Finishes the writes already queued and closes the write connection. Writes after this fail;
    /// reads keep working until the store is dropped.
    pub async fn close(&self) {
        self.writer.close().await;
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_session(&self, session: &Session) -> Result<Session> {
        let session = session.clone();
        self.writer
            .write(move |c| ops::create_session(c, &session))
            .await
    }

    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.readers
            .read(move |c| ops::get_session(c, Some(&tenant), &id))
            .await
    }

    async fn get_session_any(&self, id: &SessionId) -> Result<Option<Session>> {
        let id = id.clone();
        self.readers
            .read(move |c| ops::get_session(c, None, &id))
            .await
    }

    async fn list_sessions(
        &self,
        tenant: &TenantId,
        labels: &BTreeMap<String, String>,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Result<Vec<Session>> {
        let (tenant, labels, after) = (tenant.clone(), labels.clone(), after.cloned());
        self.readers
            .read(move |c| ops::list_sessions(c, &tenant, &labels, after.as_ref(), limit))
            .await
    }

    async fn prune_events(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.writer
            .write(move |c| ops::prune_events(c, before, limit))
            .await
    }

    async fn set_session_expiry(&self, id: &SessionId, expires: Timestamp) -> Result<()> {
        let id = id.clone();
        self.writer
            .write(move |c| ops::set_session_expiry(c, &id, expires))
            .await
    }

    async fn delete_session(&self, id: &SessionId) -> Result<()> {
        let id = id.clone();
        self.writer
            .write(move |c| ops::delete_session(c, &id))
            .await
    }

    async fn expired_sessions(&self, now: Timestamp, limit: usize) -> Result<Vec<Session>> {
        self.readers
            .read(move |c| ops::expired_sessions(c, now, limit))
            .await
    }

    fn shared(&self) -> bool {
        false
    }

    async fn claim_jobs_within(
        &self,
        replica: &str,
        lease_until: Timestamp,
        limit: usize,
        tenant_max_running: usize,
    ) -> Result<Vec<Claimed>> {
        let replica = replica.to_owned();
        self.writer
            .write(move |c| ops::claim_jobs(c, &replica, lease_until, limit, tenant_max_running))
            .await
    }

    async fn renew_leases(&self, replica: &str, lease_until: Timestamp) -> Result<Vec<JobId>> {
        let replica = replica.to_owned();
        self.writer
            .write(move |c| ops::renew_leases(c, &replica, lease_until))
            .await
    }

    async fn expired_leases_within(
        &self,
        now: Timestamp,
        running_before: Timestamp,
        limit: usize,
    ) -> Result<Vec<Orphan>> {
        self.readers
            .read(move |c| ops::expired_leases(c, now, running_before, limit))
            .await
    }

    async fn take_over_orphan(
        &self,
        orphan: &Orphan,
        to: &str,
        lease_until: Timestamp,
    ) -> Result<bool> {
        let (job, owner, gen_, to) = (
            orphan.job.id.clone(),
            orphan.owner.clone(),
            orphan.lease_gen,
            to.to_owned(),
        );
        self.writer
            .write(move |c| ops::take_over_orphan(c, (&job, &owner, gen_), &to, lease_until))
            .await
    }

    async fn take_over_job(
        &self,
        job: &JobId,
        from: &str,
        to: &str,
        lease_until: Timestamp,
    ) -> Result<bool> {
        let (job, from, to) = (job.clone(), from.to_owned(), to.to_owned());
        self.writer
            .write(move |c| ops::take_over_job(c, &job, (&from, &to), lease_until))
            .await
    }

    async fn release_job(&self, job: &JobId, owner: &str) -> Result<bool> {
        let (job, owner) = (job.clone(), owner.to_owned());
        self.writer
            .write(move |c| ops::release_job(c, &job, &owner))
            .await
    }

    async fn finish_unclaimed(&self, write: JobWrite) -> Result<bool> {
        self.writer
            .write(move |c| ops::finish_unclaimed(c, &write))
            .await
    }

    async fn request_cancel(&self, job: &JobId, reason: &str) -> Result<()> {
        let (job, reason) = (job.clone(), reason.to_owned());
        self.writer
            .write(move |c| ops::request_cancel(c, &job, &reason))
            .await
    }

    async fn cancel_requests(&self, replica: &str) -> Result<Vec<(JobId, String)>> {
        let replica = replica.to_owned();
        self.readers
            .read(move |c| ops::cancel_requests(c, &replica))
            .await
    }

    async fn queue_position(&self, job: &JobId) -> Result<Option<u32>> {
        let job = job.clone();
        self.readers
            .read(move |c| ops::queue_position(c, &job))
            .await
    }

    /// Only this process writes an unshared store, and it wakes itself.
    fn signals(&self) -> Option<tokio::sync::broadcast::Receiver<StoreSignal>> {
        None
    }

    async fn create_job(
        &self,
        job: &Job,
        session_expires: Timestamp,
        limits: &AdmitLimits,
    ) -> Result<Job> {
        let (job, limits) = (job.clone(), *limits);
        self.writer
            .write(move |c| ops::create_job(c, &job, session_expires, &limits))
            .await
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>> {
        let id = id.clone();
        self.readers.read(move |c| ops::get_job(c, &id)).await
    }

    async fn list_jobs(
        &self,
        session: &SessionId,
        filter: &JobFilter,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        let (session, filter, after) = (session.clone(), filter.clone(), after.cloned());
        self.readers
            .read(move |c| ops::list_jobs(c, &session, &filter, after.as_ref(), limit))
            .await
    }

    async fn unfinished_jobs(&self) -> Result<Vec<Job>> {
        self.readers.read(ops::unfinished_jobs).await
    }

    async fn latest_succeeded_job(&self, session: &SessionId) -> Result<Option<Job>> {
        let session = session.clone();
        self.readers
            .read(move |c| ops::latest_succeeded_job(c, &session))
            .await
    }

    async fn append(&self, writes: Vec<JobWrite>) -> Result<()> {
        self.writer.write(move |c| ops::append(c, &writes)).await
    }

    async fn read_events(
        &self,
        job: &JobId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>> {
        let job = job.clone();
        self.readers
            .read(move |c| ops::read_events(c, &job, after_seq, limit))
            .await
    }

    async fn put_job_outputs(&self, job: &JobId, changes: &[FileChange]) -> Result<()> {
        let (job, changes) = (job.clone(), changes.to_vec());
        self.writer
            .write(move |c| ops::put_job_outputs(c, &job, &changes))
            .await
    }

    async fn get_job_outputs(
        &self,
        job: &JobId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileChange>> {
        let (job, after) = (job.clone(), after.map(str::to_owned));
        self.readers
            .read(move |c| ops::get_job_outputs(c, &job, after.as_deref(), limit))
            .await
    }

    async fn put_snapshot(&self, row: &crate::store::SnapshotRow) -> Result<()> {
        let row = row.clone();
        self.writer.write(move |c| snapshots::put(c, &row)).await
    }

    async fn snapshots(
        &self,
        filter: &crate::store::SnapshotFilter,
    ) -> Result<Vec<crate::store::SnapshotRow>> {
        let filter = filter.clone();
        self.readers
            .read(move |c| snapshots::list(c, &filter))
            .await
    }

    async fn newest_snapshot(
        &self,
        session: &SessionId,
    ) -> Result<Option<crate::store::SnapshotRow>> {
        let session = session.clone();
        self.readers
            .read(move |c| snapshots::newest(c, &session))
            .await
    }

    async fn snapshot_bytes(&self) -> Result<u64> {
        self.readers.read(snapshots::bytes).await
    }

    async fn delete_snapshots(&self, keys: &[(JobId, crate::store::SnapPoint)]) -> Result<u64> {
        let keys = keys.to_vec();
        self.writer
            .write(move |c| snapshots::delete(c, &keys))
            .await
    }

    async fn hold_for_rewind(
        &self,
        session: &SessionId,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<()> {
        let session = session.clone();
        self.writer
            .write(move |c| rewinds::hold(c, &session, now, until))
            .await
    }

    async fn release_rewind(&self, session: &SessionId) -> Result<()> {
        let session = session.clone();
        self.writer
            .write(move |c| rewinds::set_hold(c, &session, None))
            .await
    }

    async fn rewind_session(&self, rewind: &crate::store::Rewind) -> Result<()> {
        let rewind = rewind.clone();
        self.writer
            .write(move |c| rewinds::rewind(c, &rewind))
            .await
    }

    async fn rewound_jobs(&self, session: &SessionId) -> Result<Vec<JobId>> {
        let session = session.clone();
        self.readers
            .read(move |c| rewinds::rewound(c, &session))
            .await
    }

    async fn record_model_call(&self, row: &crate::store::LedgerRow) -> Result<()> {
        let row = row.clone();
        self.writer.write(move |c| ledger::record(c, &row)).await
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        filter: &crate::store::UsageFilter,
    ) -> Result<Vec<crate::store::UsageBucket>> {
        let (tenant, filter) = (tenant.clone(), filter.clone());
        self.readers
            .read(move |c| ledger::usage(c, &tenant, &filter))
            .await
    }

    async fn model_calls(
        &self,
        tenant: &TenantId,
        job: &JobId,
    ) -> Result<Vec<crate::store::LedgerRow>> {
        let (tenant, job) = (tenant.clone(), job.clone());
        self.readers
            .read(move |c| ledger::model_calls(c, &tenant, &job))
            .await
    }

    async fn read_changes(
        &self,
        tenant: &TenantId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobChange>> {
        let tenant = tenant.clone();
        self.readers
            .read(move |c| changes::read_changes(c, &tenant, after, limit))
            .await
    }

    async fn last_change(&self, tenant: &TenantId) -> Result<u64> {
        let tenant = tenant.clone();
        self.readers
            .read(move |c| changes::last_change(c, &tenant))
            .await
    }

    async fn job_change_marks(
        &self,
        tenant: &TenantId,
        job: &JobId,
        before: u64,
    ) -> Result<Vec<crate::store::ChangeMark>> {
        let (tenant, job) = (tenant.clone(), job.clone());
        self.readers
            .read(move |c| changes::job_change_marks(c, &tenant, &job, before))
            .await
    }

    async fn prune_changes(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.writer
            .write(move |c| changes::prune_changes(c, before, limit))
            .await
    }
    async fn put_webhook(&self, endpoint: &crate::store::WebhookEndpoint) -> Result<()> {
        let e = endpoint.clone();
        self.writer.write(move |c| webhooks::put(c, &e)).await
    }

    async fn webhooks(&self, tenant: &TenantId) -> Result<Vec<crate::store::WebhookEndpoint>> {
        let tenant = tenant.clone();
        self.readers.read(move |c| webhooks::list(c, &tenant)).await
    }

    async fn delete_webhook(&self, tenant: &TenantId, id: &str) -> Result<bool> {
        let (tenant, id) = (tenant.clone(), id.to_owned());
        self.writer
            .write(move |c| webhooks::delete(c, &tenant, &id))
            .await
    }

    async fn rotate_webhook_secret(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
        old_until: Timestamp,
    ) -> Result<Option<crate::store::WebhookEndpoint>> {
        let (tenant, id, secret) = (tenant.clone(), id.to_owned(), secret.to_owned());
        self.writer
            .write(move |c| webhooks::rotate(c, &tenant, &id, &secret, old_until))
            .await
    }

    async fn webhook_backlog(&self, limit: usize) -> Result<Vec<(TenantId, u64)>> {
        self.readers
            .read(move |c| webhooks::backlog(c, limit))
            .await
    }

    async fn enqueue_webhooks(
        &self,
        tenant: &TenantId,
        from: u64,
        to: u64,
        deliveries: Vec<crate::store::NewDelivery>,
    ) -> Result<bool> {
        let tenant = tenant.clone();
        self.writer
            .write(move |c| webhooks::enqueue(c, &tenant, from, to, &deliveries))
            .await
    }

    async fn add_webhook_deliveries(
        &self,
        tenant: &TenantId,
        deliveries: Vec<crate::store::NewDelivery>,
    ) -> Result<()> {
        let tenant = tenant.clone();
        self.writer
            .write(move |c| webhooks::add(c, &tenant, &deliveries))
            .await
    }

    async fn claim_webhook_deliveries(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        per_endpoint: usize,
    ) -> Result<Vec<crate::store::Delivery>> {
        let owner = owner.to_owned();
        self.writer
            .write(move |c| webhooks::claim(c, &owner, now, lease_until, limit, per_endpoint))
            .await
    }

    async fn finish_webhook_attempt(
        &self,
        id: &str,
        owner: &str,
        attempt: &crate::store::Attempt,
        outcome: crate::store::AttemptOutcome,
    ) -> Result<bool> {
        let (id, owner, attempt) = (id.to_owned(), owner.to_owned(), attempt.clone());
        self.writer
            .write(move |c| webhooks::finish(c, &id, &owner, &attempt, outcome))
            .await
    }

    async fn webhook_deliveries(
        &self,
        tenant: &TenantId,
        filter: &crate::store::DeliveryFilter,
        limit: usize,
    ) -> Result<Vec<crate::store::DeliveryLog>> {
        let (tenant, filter) = (tenant.clone(), filter.clone());
        self.readers
            .read(move |c| webhooks::deliveries(c, &tenant, &filter, limit))
            .await
    }

    async fn create_preset(&self, preset: &crate::presets::TenantPreset) -> Result<()> {
        let p = preset.clone();
        self.writer.write(move |c| presets::create(c, &p)).await
    }

    async fn get_preset(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<crate::presets::TenantPreset>> {
        let (tenant, name) = (tenant.clone(), name.to_owned());
        self.readers
            .read(move |c| presets::get(c, &tenant, &name))
            .await
    }

    async fn list_presets(&self, tenant: &TenantId) -> Result<Vec<crate::presets::TenantPreset>> {
        let tenant = tenant.clone();
        self.readers.read(move |c| presets::list(c, &tenant)).await
    }

    async fn update_preset(&self, preset: &crate::presets::TenantPreset) -> Result<bool> {
        let p = preset.clone();
        self.writer.write(move |c| presets::update(c, &p)).await
    }

    async fn delete_preset(&self, tenant: &TenantId, name: &str) -> Result<bool> {
        let (tenant, name) = (tenant.clone(), name.to_owned());
        self.writer
            .write(move |c| presets::delete(c, &tenant, &name))
            .await
    }

    async fn agent_conversation(&self, session: &SessionId, agent: &str) -> Result<Option<String>> {
        let (session, agent) = (session.clone(), agent.to_owned());
        self.readers
            .read(move |c| ops::agent_conversation(c, &session, &agent))
            .await
    }

    async fn set_agent_conversation(
        &self,
        session: &SessionId,
        agent: &str,
        conversation: &str,
        now: Timestamp,
    ) -> Result<()> {
        let args = (
            session.to_string(),
            agent.to_owned(),
            conversation.to_owned(),
        );
        self.writer
            .write(move |c| {
                c.prepare_cached(crate::store::conversations::UPSERT)
                    .and_then(|mut st| {
                        st.execute(rusqlite::params![args.0, args.1, args.2, now.micros()])
                    })
                    .map(|_| ())
                    .map_err(db)
            })
            .await
    }

    async fn send_control(
        &self,
        job: &JobId,
        c: &crate::store::control::Control,
        delivered: bool,
        now: Timestamp,
    ) -> Result<Option<i64>> {
        let (job, c) = (job.clone(), c.clone());
        self.writer
            .write(move |conn| control::send(conn, &job, &c, delivered, now.micros()))
            .await
    }

    async fn pending_controls(
        &self,
        replica: &str,
    ) -> Result<Vec<crate::store::control::ControlMessage>> {
        let replica = replica.to_owned();
        self.readers
            .read(move |c| control::pending(c, &replica))
            .await
    }

    async fn settle_control(&self, id: i64, refusal: Option<(&str, &str)>) -> Result<()> {
        let refusal = refusal.map(|(r, m)| (r.to_owned(), m.to_owned()));
        self.writer
            .write(move |c| {
                let refusal = refusal.as_ref().map(|(r, m)| (r.as_str(), m.as_str()));
                control::settle(c, id, refusal)
            })
            .await
    }

    async fn control_outcome(
        &self,
        id: i64,
    ) -> Result<Option<crate::store::control::ControlOutcome>> {
        self.readers.read(move |c| control::outcome(c, id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DynStore;
    use crate::store::contract::Harness;

    /// A fresh database file in a temporary directory; every `open` opens that same file.
    struct SqliteHarness {
        dir: tempfile::TempDir,
    }

    impl SqliteHarness {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }
    }

    #[async_trait]
    impl Harness for SqliteHarness {
        async fn open(&self) -> DynStore {
            Arc::new(
                SqliteStore::open(&self.dir.path().join("agentd.db"))
                    .await
                    .expect("open store"),
            )
        }
    }

    crate::store::contract::store_contract_tests!(SqliteHarness::new());

    #[tokio::test]
    async fn opens_in_wal_mode_with_current_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let raw = rusqlite::Connection::open(&path).unwrap();
        let mode: String = raw
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let version: i64 = raw
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, conn::MIGRATIONS.len() as i64);
        drop(store);
        // Opening an up-to-date database again applies nothing and works.
        SqliteStore::open(&path).await.unwrap();
    }

    /// A database written by schema 1 (before leases) upgrades in place: its rows keep working,
    /// its queued jobs can be claimed, and its started jobs (which have no owner) still hold their
    /// session's queue.
    #[tokio::test]
    async fn upgrades_a_schema_1_database_in_place() {
        use crate::domain::{JobState, Usage};
        use crate::store::JobUpdate;
        use crate::store::contract::NO_LIMITS;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let spec = r#"{"agent":"a","prompt":"p","model":null,"timeout":{"secs":1,"nanos":0},
                   "env":{},"allowed_tools":[],"max_turns":null,"append_system_prompt":null,
                   "permission_mode":null}"#;
        let queued = serde_json::to_string(&JobState::Queued).unwrap();
        let running = serde_json::to_string(&JobState::Running {
            started: Timestamp(5),
        })
        .unwrap();
        let usage = serde_json::to_string(&Usage::default()).unwrap();
        let (s1, s2) = (SessionId::generate(), SessionId::generate());
        let (old_queued, old_running, behind) =
            (JobId::generate(), JobId::generate(), JobId::generate());
        let old_outputs: Vec<crate::domain::FileChange> = ["a.txt", "b/c.txt"]
            .map(|path| crate::domain::FileChange {
                path: path.into(),
                kind: crate::domain::ChangeKind::Deleted,
                entry: None,
                from_path: None,
                before: None,
            })
            .to_vec();
        {
            let raw = rusqlite::Connection::open(&path).unwrap();
            raw.execute_batch(include_str!("migrations/sqlite/0001_init.sql"))
                .unwrap();
            raw.pragma_update(None, "user_version", 1).unwrap();
            for s in [&s1, &s2] {
                raw.execute(
                    "INSERT INTO sessions (id, tenant, labels, created, expires, ttl_us, job_count) \
                     VALUES (?1, 't', '{}', 1, 9999999999999999, 1000000, 1)",
                    [s.as_str()],
                )
                .unwrap();
            }
            for (id, session, created, state, name) in [
                (&old_queued, &s1, 2, &queued, "QUEUED"),
                (&old_running, &s2, 3, &running, "RUNNING"),
                (&behind, &s2, 4, &queued, "QUEUED"),
            ] {
                raw.execute(
                    "INSERT INTO jobs (id, session_id, tenant, created, spec, state, state_name, \
                     result, usage, last_seq) VALUES (?1, ?2, 't', ?3, ?4, ?5, ?6, '', ?7, 0)",
                    rusqlite::params![
                        id.as_str(),
                        session.as_str(),
                        created,
                        spec,
                        state,
                        name,
                        usage
                    ],
                )
                .unwrap();
            }
            // Outputs as one list per job, as stored before they were cut into parts.
            for (id, changes) in [(&old_queued, &old_outputs), (&old_running, &vec![])] {
                raw.execute(
                    "INSERT INTO job_outputs (job_pk, changes) SELECT pk, ?2 FROM jobs WHERE id = ?1",
                    rusqlite::params![id.as_str(), serde_json::to_string(changes).unwrap()],
                )
                .unwrap();
            }
        }

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            store.get_job_outputs(&old_queued, None, 10).await.unwrap(),
            old_outputs
        );
        assert_eq!(
            store
                .get_job_outputs(&old_queued, Some("a.txt"), 10)
                .await
                .unwrap(),
            old_outputs[1..]
        );
        assert!(
            store
                .get_job_outputs(&old_running, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let version: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, conn::MIGRATIONS.len() as i64);
        let got = store.get_job(&old_running).await.unwrap().unwrap();
        assert_eq!(
            got.state,
            JobState::Running {
                started: Timestamp(5)
            }
        );
        assert_eq!(store.unfinished_jobs().await.unwrap().len(), 3);
        assert_eq!(store.queue_position(&behind).await.unwrap(), Some(2));
        assert!(
            store
                .expired_leases(Timestamp(i64::MAX), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let claimed = store.claim_jobs("r1", Timestamp(100), 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        assert_eq!(claimed[0].job.id, old_queued);

        // Finishing clears the owner column itself, not just what the queries show.
        let done = JobUpdate {
            state: JobState::Finished(crate::domain::Finished {
                started: Some(Timestamp(6)),
                ended: Timestamp(7),
                outcome: crate::domain::Outcome::Succeeded,
                exit: None,
            }),
            result: String::new(),
            usage: Usage::default(),
            conversation_id: None,
        };
        store
            .append(vec![JobWrite {
                job_id: old_queued.clone(),
                events: vec![],
                update: Some(done),
            }])
            .await
            .unwrap();
        let owner: Option<String> = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT owner FROM jobs WHERE id = ?1",
                [old_queued.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(owner, None);
        // New jobs go in as usual.
        let session = store.get_session_any(&s1).await.unwrap().unwrap();
        let mut fresh = store.get_job(&behind).await.unwrap().unwrap();
        fresh.id = JobId::generate();
        fresh.session_id = session.id.clone();
        fresh.created = Timestamp(8);
        store
            .create_job(&fresh, Timestamp(9), &NO_LIMITS)
            .await
            .unwrap();
        let claimed = store.claim_jobs("r1", Timestamp(100), 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].job.id, fresh.id);
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let Err(err) = SqliteStore::open(&path).await else {
            panic!("a newer schema must be refused")
        };
        assert!(err.to_string().contains("version 99"), "{err}");
    }

    #[tokio::test]
    async fn unopenable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("a.db");
        let Err(err) = SqliteStore::open(&path).await else {
            panic!("opening under a missing directory must fail")
        };
        assert!(err.to_string().contains("a.db"), "{err}");
    }

    #[tokio::test]
    async fn close_refuses_writes_but_keeps_reads() {
        let h = SqliteHarness::new();
        let path = h.dir.path().join("agentd.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let s = crate::domain::Session {
            id: SessionId::generate(),
            tenant: TenantId("t".into()),
            labels: BTreeMap::new(),
            created: Timestamp(1),
            expires: Timestamp(2),
            ttl: std::time::Duration::from_secs(1),
            request_id: None,
            conversation_id: None,
            job_count: 0,
        };
        store.create_session(&s).await.unwrap();
        store.close().await;
        let err = store
            .set_session_expiry(&s.id, Timestamp(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Internal { .. }));
        assert_eq!(store.get_session_any(&s.id).await.unwrap(), Some(s));
    }

    /// Rough throughput, for humans: `cargo test --release --lib store::sqlite::tests::throughput
    /// -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn throughput() {
        use crate::domain::{EventKind, JobEvent};
        use crate::store::JobWrite;
        const TOTAL: u64 = 1_000_000;
        let h = SqliteHarness::new();
        let store = h.open().await;
        let sess = crate::domain::Session {
            id: SessionId::generate(),
            tenant: TenantId("t".into()),
            labels: BTreeMap::new(),
            created: Timestamp(1),
            expires: Timestamp(2),
            ttl: std::time::Duration::from_secs(1),
            request_id: None,
            conversation_id: None,
            job_count: 0,
        };
        store.create_session(&sess).await.unwrap();
        let job = Job {
            id: JobId::generate(),
            session_id: sess.id.clone(),
            tenant: sess.tenant.clone(),
            spec: serde_json::from_str(
                r#"{"agent":"a","prompt":"p","model":null,"timeout":{"secs":1,"nanos":0},
                   "env":{},"allowed_tools":[],"max_turns":null,"append_system_prompt":null,
                   "permission_mode":null}"#,
            )
            .unwrap(),
            created: Timestamp(1),
            state: crate::domain::JobState::Queued,
            request_id: None,
            result: String::new(),
            usage: Default::default(),
            conversation_id: None,
            last_seq: 0,
        };
        store
            .create_job(&job, Timestamp(3), &crate::store::contract::NO_LIMITS)
            .await
            .unwrap();
        let start = std::time::Instant::now();
        for b in 0..TOTAL / 100 {
            let events = (b * 100 + 1..=b * 100 + 100)
                .map(|n| JobEvent {
                    seq: n,
                    time: Timestamp(n as i64),
                    raw: Some(format!(r#"{{"type":"assistant","n":{n}}}"#)),
                    kind: EventKind::Text {
                        text: format!("some assistant text number {n}"),
                    },
                })
                .collect();
            store
                .append(vec![JobWrite {
                    job_id: job.id.clone(),
                    events,
                    update: None,
                }])
                .await
                .unwrap();
        }
        let appended = start.elapsed();
        let start = std::time::Instant::now();
        let mut after = 0;
        loop {
            let page = store.read_events(&job.id, after, 2000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
        }
        let read = start.elapsed();
        assert_eq!(after, TOTAL);
        eprintln!(
            "append: {:.0} events/s, replay: {:.0} events/s",
            TOTAL as f64 / appended.as_secs_f64(),
            TOTAL as f64 / read.as_secs_f64()
        );
    }
}
