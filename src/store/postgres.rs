//! The Postgres [`Store`], shared by several agentd replicas: a pool of connections
//! (deadpool-postgres over tokio-postgres, async end to end), migrations applied at start under
//! an advisory lock, jobs claimed with `FOR UPDATE SKIP LOCKED` under leases, and store signals
//! over LISTEN/NOTIFY (`listen`), each NOTIFY sent in the transaction of the write it announces.
//!
//! Everything lives in the schema named first in the connection's `search_path`, so one database
//! can hold several independent stores (tests run each in its own schema).
//!
//! Write transactions lock the job rows they touch in `pk` order, so two of them never deadlock.

mod changes;
mod control;
mod events;
mod jobs;
mod leases;
mod ledger;
mod listen;
mod migrate;
mod presets;
mod rewinds;
mod rows;
mod sessions;
mod snapshots;
#[cfg(test)]
mod tests;
mod webhooks;

use crate::domain::{
    FileChange, Job, JobEvent, JobId, PageCursor, Session, SessionId, TenantId, Timestamp,
};
use crate::error::{Error, Result};
use crate::store::{
    AdmitLimits, Claimed, JobChange, JobFilter, JobWrite, Orphan, Store, StoreSignal,
};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use rows::{int, job_cols, session_cols};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Connections per store (per replica).
const POOL_SIZE: usize = 16;
/// How long a request waits for a free connection, or for a new one to be made.
const POOL_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Signals buffered per receiver; a receiver that falls further behind gets `Lagged` (a Resync).
const SIGNAL_BUFFER: usize = 1024;
/// First key of the per-tenant admission advisory lock: "agnu".
const ADMIT_LOCK: i32 = 0x6167_6e75;
/// The advisory lock claims take turns on when a per-tenant running cap is set: "agcl".
const CLAIM_LOCK: i64 = 0x6167_636c;
/// Times a transaction is retried after Postgres aborted it to break a deadlock.
const DEADLOCK_RETRIES: usize = 3;

/// Postgres's own message and SQLSTATE. A server error's DETAIL (which may quote row data) is left
/// out; connection errors never contain the password.
fn msg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} (SQLSTATE {})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

fn db(e: tokio_postgres::Error) -> Error {
    if is_outage(&e) {
        return Error::store_unavailable(format!("store: {}", msg(&e)));
    }
    Error::internal(format!("store: {}", msg(&e)))
}

/// Whether Postgres could not be reached or is going away, as opposed to refusing a statement:
/// a lost or refused connection (an I/O cause), or SQLSTATE class 08 (connection exception),
/// 57P01-57P03 (shutdown, cannot connect now) and 53300 (too many connections).
fn is_outage(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300");
    }
    e.is_closed()
        || std::error::Error::source(e)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
}

fn pool(e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => db(e),
        PoolError::Timeout(_) => Error::store_unavailable(format!(
            "store: no Postgres connection available within {}s",
            POOL_WAIT.as_secs()
        )),
        other => Error::internal(format!("store: {other}")),
    }
}

fn is_deadlock(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
}

/// `user@host:port/db` of a connection config, for messages (never the password).
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// The Postgres-backed store. Cheap to share behind an `Arc`; dropping it stops the signal
/// listener and closes the pool's connections.
pub struct PgStore {
    pool: Pool,
    schema: String,
    channel: String,
    signals: broadcast::Sender<StoreSignal>,
    _listener: DropGuard,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`), brings its schema up
    /// to date and starts listening for other replicas' signals.
    pub async fn open(url: &str) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::internal(format!("store: invalid Postgres URL: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("agentd");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let target = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::internal(format!("store: cannot build the pool: {e}")))?;
        let mut client = pool.get().await.map_err(|e| {
            let e = pool_error_text(e);
            Error::internal(format!("store: cannot connect to Postgres {target}: {e}"))
        })?;
        let schema = migrate::migrate(&mut client).await?;
        drop(client);

        let channel = migrate::channel(&schema);
        let (signals, _) = broadcast::channel(SIGNAL_BUFFER);
        let stop = CancellationToken::new();
        tokio::spawn(listen::run(
            config,
            channel.clone(),
            signals.clone(),
            stop.clone(),
        ));
        tracing::info!(postgres = %target, schema = %schema, "store opened");
        Ok(Self {
            pool,
            schema,
            channel,
            signals,
            _listener: stop.drop_guard(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool)
    }

    /// One statement that runs in its own transaction, on a pooled connection.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(db)?;
        c.query(&st, params).await.map_err(db)
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(db)?;
        c.execute(&st, params).await.map_err(db)
    }

    async fn notify_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        payload: &str,
    ) -> Result<()> {
        let st = tx
            .prepare_cached("SELECT pg_notify($1, $2)")
            .await
            .map_err(db)?;
        tx.execute(&st, &[&self.channel, &payload])
            .await
            .map_err(db)?;
        Ok(())
    }
}

/// Why a write transaction did not go through: a database failure (maybe worth retrying) or a
/// refusal by the store's own checks.
enum Fail {
    Db(tokio_postgres::Error),
    Refused(Error),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Refused(e)
    }
}

fn pool_error_text(e: PoolError) -> String {
    match e {
        PoolError::Backend(e) => msg(&e),
        PoolError::Timeout(_) => "timed out".into(),
        other => other.to_string(),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_session(&self, session: &Session) -> Result<Session> {
        for _ in 0..2 {
            if let Some(s) = self.try_create_session(session).await? {
                return Ok(s);
            }
        }
        Err(Error::internal(
            "store: a session with this request id keeps appearing and disappearing",
        ))
    }

    async fn get_session(&self, tenant: &TenantId, id: &SessionId) -> Result<Option<Session>> {
        let rows = self
            .query(
                concat!(
                    "SELECT ",
                    session_cols!(),
                    " FROM sessions WHERE id = $1 AND tenant = $2"
                ),
                &[&id.as_str(), &tenant.as_str()],
            )
            .await?;
        rows.first().map(rows::session).transpose()
    }

    async fn get_session_any(&self, id: &SessionId) -> Result<Option<Session>> {
        let rows = self
            .query(
                concat!("SELECT ", session_cols!(), " FROM sessions WHERE id = $1"),
                &[&id.as_str()],
            )
            .await?;
        rows.first().map(rows::session).transpose()
    }

    async fn list_sessions(
        &self,
        tenant: &TenantId,
        labels: &BTreeMap<String, String>,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Result<Vec<Session>> {
        sessions::list(self, tenant, labels, after, limit).await
    }

    async fn set_session_expiry(&self, id: &SessionId, expires: Timestamp) -> Result<()> {
        let n = self
            .execute(
                "UPDATE sessions SET expires = $2 WHERE id = $1",
                &[&id.as_str(), &expires.micros()],
            )
            .await?;
        if n == 0 {
            return Err(Error::session_not_found(id.as_str()));
        }
        Ok(())
    }

    async fn delete_session(&self, id: &SessionId) -> Result<()> {
        sessions::delete(self, id).await
    }

    async fn expired_sessions(&self, now: Timestamp, limit: usize) -> Result<Vec<Session>> {
        let rows = self
            .query(
                concat!(
                    "SELECT ",
                    session_cols!(),
                    " FROM sessions WHERE expires <= $1 ORDER BY expires, id LIMIT $2"
                ),
                &[&now.micros(), &int(limit as u64)],
            )
            .await?;
        rows::all(&rows, rows::session)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn create_job(
        &self,
        job: &Job,
        session_expires: Timestamp,
        limits: &AdmitLimits,
    ) -> Result<Job> {
        for _ in 0..2 {
            if let Some(j) = self.try_create_job(job, session_expires, limits).await? {
                return Ok(j);
            }
        }
        Err(Error::internal(
            "store: a job with this request id keeps appearing and disappearing",
        ))
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>> {
        let rows = self
            .query(
                concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = $1"),
                &[&id.as_str()],
            )
            .await?;
        rows.first().map(rows::job).transpose()
    }

    async fn list_jobs(
        &self,
        session: &SessionId,
        filter: &JobFilter,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        jobs::list(self, session, filter, after, limit).await
    }

    async fn unfinished_jobs(&self) -> Result<Vec<Job>> {
        let rows = self
            .query(
                concat!(
                    "SELECT ",
                    job_cols!(),
                    " FROM jobs WHERE state_name IN ('QUEUED', 'RUNNING') ORDER BY created, id"
                ),
                &[],
            )
            .await?;
        rows::all(&rows, rows::job)
    }

    async fn latest_succeeded_job(&self, session: &SessionId) -> Result<Option<Job>> {
        let rows = self
            .query(
                concat!(
                    "SELECT ",
                    job_cols!(),
                    " FROM jobs WHERE session_id = $1 AND state_name = 'SUCCEEDED' \
                      ORDER BY created DESC, id DESC LIMIT 1"
                ),
                &[&session.as_str()],
            )
            .await?;
        rows.first().map(rows::job).transpose()
    }

    async fn append(&self, writes: Vec<JobWrite>) -> Result<()> {
        if writes.is_empty() {
            // The health probe's write: a round trip on a pooled connection.
            self.execute("SELECT 1", &[]).await?;
            return Ok(());
        }
        self.write_events(&writes, false).await.map(|_| ())
    }

    async fn read_events(
        &self,
        job: &JobId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>> {
        events::read(self, job, after_seq, limit).await
    }

    async fn prune_events(&self, before: Timestamp, limit: usize) -> Result<u64> {
        events::prune(self, before, limit).await
    }

    async fn claim_jobs_within(
        &self,
        replica: &str,
        lease_until: Timestamp,
        limit: usize,
        tenant_max_running: usize,
    ) -> Result<Vec<Claimed>> {
        leases::claim_within(self, replica, lease_until, limit, tenant_max_running).await
    }

    async fn renew_leases(&self, replica: &str, lease_until: Timestamp) -> Result<Vec<JobId>> {
        leases::renew(self, replica, lease_until).await
    }

    async fn expired_leases_within(
        &self,
        now: Timestamp,
        running_before: Timestamp,
        limit: usize,
    ) -> Result<Vec<Orphan>> {
        leases::expired(self, now, running_before, limit).await
    }

    async fn take_over_job(
        &self,
        job: &JobId,
        from: &str,
        to: &str,
        lease_until: Timestamp,
    ) -> Result<bool> {
        leases::take_over(self, job, (from, to), lease_until).await
    }

    async fn take_over_orphan(
        &self,
        orphan: &Orphan,
        to: &str,
        lease_until: Timestamp,
    ) -> Result<bool> {
        leases::take_over_orphan(self, orphan, to, lease_until).await
    }

    async fn release_job(&self, job: &JobId, owner: &str) -> Result<bool> {
        leases::release(self, job, owner).await
    }

    async fn finish_unclaimed(&self, write: JobWrite) -> Result<bool> {
        self.write_events(std::slice::from_ref(&write), true).await
    }

    async fn request_cancel(&self, job: &JobId, reason: &str) -> Result<()> {
        leases::request_cancel(self, job, reason).await
    }

    async fn cancel_requests(&self, replica: &str) -> Result<Vec<(JobId, String)>> {
        leases::cancel_requests(self, replica).await
    }

    async fn queue_position(&self, job: &JobId) -> Result<Option<u32>> {
        jobs::queue_position(self, job).await
    }

    fn signals(&self) -> Option<broadcast::Receiver<StoreSignal>> {
        Some(self.signals.subscribe())
    }

    async fn put_job_outputs(&self, job: &JobId, changes: &[FileChange]) -> Result<()> {
        jobs::put_outputs(self, job, changes).await
    }

    async fn get_job_outputs(
        &self,
        job: &JobId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileChange>> {
        jobs::get_outputs(self, job, after, limit).await
    }

    async fn put_snapshot(&self, row: &crate::store::SnapshotRow) -> Result<()> {
        snapshots::put(self, row).await
    }

    async fn snapshots(
        &self,
        filter: &crate::store::SnapshotFilter,
    ) -> Result<Vec<crate::store::SnapshotRow>> {
        snapshots::list(self, filter).await
    }

    async fn newest_snapshot(
        &self,
        session: &SessionId,
    ) -> Result<Option<crate::store::SnapshotRow>> {
        snapshots::newest(self, session).await
    }

    async fn snapshot_bytes(&self) -> Result<u64> {
        snapshots::bytes(self).await
    }

    async fn delete_snapshots(&self, keys: &[(JobId, crate::store::SnapPoint)]) -> Result<u64> {
        snapshots::delete(self, keys).await
    }

    async fn hold_for_rewind(
        &self,
        session: &SessionId,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<()> {
        rewinds::hold(self, session, now, until).await
    }

    async fn release_rewind(&self, session: &SessionId) -> Result<()> {
        rewinds::release(self, session).await
    }

    async fn rewind_session(&self, rewind: &crate::store::Rewind) -> Result<()> {
        rewinds::rewind(self, rewind).await
    }

    async fn rewound_jobs(&self, session: &SessionId) -> Result<Vec<JobId>> {
        rewinds::rewound(self, session).await
    }

    async fn record_model_call(&self, row: &crate::store::LedgerRow) -> Result<()> {
        ledger::record(self, row).await
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        filter: &crate::store::UsageFilter,
    ) -> Result<Vec<crate::store::UsageBucket>> {
        ledger::usage(self, tenant, filter).await
    }

    async fn model_calls(
        &self,
        tenant: &TenantId,
        job: &JobId,
    ) -> Result<Vec<crate::store::LedgerRow>> {
        ledger::model_calls(self, tenant, job).await
    }

    async fn read_changes(
        &self,
        tenant: &TenantId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobChange>> {
        self.changes_after(tenant, after, limit).await
    }

    async fn last_change(&self, tenant: &TenantId) -> Result<u64> {
        self.last_change_of(tenant).await
    }

    async fn job_change_marks(
        &self,
        tenant: &TenantId,
        job: &JobId,
        before: u64,
    ) -> Result<Vec<crate::store::ChangeMark>> {
        self.change_marks_of(tenant, job, before).await
    }

    async fn prune_changes(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.prune_changes_before(before, limit).await
    }

    async fn put_webhook(&self, endpoint: &crate::store::WebhookEndpoint) -> Result<()> {
        self.put_webhook_row(endpoint).await
    }

    async fn webhooks(&self, tenant: &TenantId) -> Result<Vec<crate::store::WebhookEndpoint>> {
        self.webhook_rows(tenant).await
    }

    async fn delete_webhook(&self, tenant: &TenantId, id: &str) -> Result<bool> {
        self.delete_webhook_row(tenant, id).await
    }

    async fn rotate_webhook_secret(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
        old_until: Timestamp,
    ) -> Result<Option<crate::store::WebhookEndpoint>> {
        self.rotate_webhook_row(tenant, id, secret, old_until).await
    }

    async fn webhook_backlog(&self, limit: usize) -> Result<Vec<(TenantId, u64)>> {
        self.webhook_backlog_rows(limit).await
    }

    async fn enqueue_webhooks(
        &self,
        tenant: &TenantId,
        from: u64,
        to: u64,
        deliveries: Vec<crate::store::NewDelivery>,
    ) -> Result<bool> {
        self.enqueue_webhook_rows(tenant, from, to, &deliveries)
            .await
    }

    async fn add_webhook_deliveries(
        &self,
        tenant: &TenantId,
        deliveries: Vec<crate::store::NewDelivery>,
    ) -> Result<()> {
        self.add_webhook_rows(tenant, &deliveries).await
    }

    async fn claim_webhook_deliveries(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        per_endpoint: usize,
    ) -> Result<Vec<crate::store::Delivery>> {
        self.claim_webhook_rows(owner, now, lease_until, limit, per_endpoint)
            .await
    }

    async fn finish_webhook_attempt(
        &self,
        id: &str,
        owner: &str,
        attempt: &crate::store::Attempt,
        outcome: crate::store::AttemptOutcome,
    ) -> Result<bool> {
        self.finish_webhook_row(id, owner, attempt, outcome).await
    }

    async fn webhook_deliveries(
        &self,
        tenant: &TenantId,
        filter: &crate::store::DeliveryFilter,
        limit: usize,
    ) -> Result<Vec<crate::store::DeliveryLog>> {
        self.webhook_delivery_rows(tenant, filter, limit).await
    }

    async fn create_preset(&self, preset: &crate::presets::TenantPreset) -> Result<()> {
        presets::create(self, preset).await
    }

    async fn get_preset(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<crate::presets::TenantPreset>> {
        presets::get_one(self, tenant, name).await
    }

    async fn list_presets(&self, tenant: &TenantId) -> Result<Vec<crate::presets::TenantPreset>> {
        presets::list(self, tenant).await
    }

    async fn update_preset(&self, preset: &crate::presets::TenantPreset) -> Result<bool> {
        presets::update(self, preset).await
    }

    async fn delete_preset(&self, tenant: &TenantId, name: &str) -> Result<bool> {
        presets::delete(self, tenant, name).await
    }

    async fn agent_conversation(&self, session: &SessionId, agent: &str) -> Result<Option<String>> {
        let rows = self
            .query(
                crate::store::conversations::SELECT,
                &[&session.to_string(), &agent],
            )
            .await?;
        rows.first()
            .map(|r| rows::get(r, 0, "agent_conversations.conversation_id"))
            .transpose()
    }

    async fn set_agent_conversation(
        &self,
        session: &SessionId,
        agent: &str,
        conversation: &str,
        now: Timestamp,
    ) -> Result<()> {
        self.execute(
            crate::store::conversations::UPSERT,
            &[&session.to_string(), &agent, &conversation, &now.micros()],
        )
        .await
        .map(|_| ())
    }

    async fn send_control(
        &self,
        job: &JobId,
        c: &crate::store::control::Control,
        delivered: bool,
        now: Timestamp,
    ) -> Result<Option<i64>> {
        control::send(self, job, c, delivered, now.micros()).await
    }

    async fn pending_controls(
        &self,
        replica: &str,
    ) -> Result<Vec<crate::store::control::ControlMessage>> {
        control::pending(self, replica).await
    }

    async fn settle_control(&self, id: i64, refusal: Option<(&str, &str)>) -> Result<()> {
        control::settle(self, id, refusal).await
    }

    async fn control_outcome(
        &self,
        id: i64,
    ) -> Result<Option<crate::store::control::ControlOutcome>> {
        control::outcome(self, id).await
    }
}
