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
mod ledger;
mod listen;
mod migrate;
mod presets;
mod rows;
mod snapshots;
#[cfg(test)]
mod tests;
mod webhooks;

use crate::domain::{
    FileChange, Job, JobEvent, JobId, JobState, PageCursor, Session, SessionId, TenantId, Timestamp,
};
use crate::error::{Error, Reason, Result};
use crate::store::{
    AdmitLimits, Claimed, JobChange, JobFilter, JobUpdate, JobWrite, Orphan, Store, StoreSignal,
};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use rows::{JOB_COLS, int, job_cols, job_cols_j, session_cols, to_json};
use std::collections::{BTreeMap, HashMap};
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

    /// Runs `append`'s transaction, retried when Postgres broke a deadlock by aborting it.
    async fn write_events(&self, writes: &[JobWrite], only_unclaimed: bool) -> Result<bool> {
        let mut attempt = 0;
        loop {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            match self.apply(&tx, writes, only_unclaimed).await {
                Ok(false) => return Ok(false),
                Ok(true) => match tx.commit().await {
                    Ok(()) => return Ok(true),
                    Err(e) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {}
                    Err(e) => return Err(db(e)),
                },
                Err(Fail::Db(e)) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {}
                Err(Fail::Db(e)) => return Err(db(e)),
                Err(Fail::Refused(e)) => return Err(e),
            }
            attempt += 1;
        }
    }

    /// Applies `writes` in `tx` (see [`Store::append`]), with the NOTIFYs announcing them. With
    /// `only_unclaimed`, does nothing and answers `false` unless the (single) job exists and is
    /// QUEUED and unowned.
    async fn apply(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        writes: &[JobWrite],
        only_unclaimed: bool,
    ) -> Result<bool, Fail> {
        if writes.is_empty() {
            return Ok(true);
        }
        let mut ids: Vec<&str> = writes.iter().map(|w| w.job_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let lock = tx
            .prepare_cached(
                "SELECT id, pk, last_seq, state_name, session_id, owner IS NULL, tenant FROM jobs \
                 WHERE id = ANY($1) ORDER BY pk FOR UPDATE",
            )
            .await?;
        let found = tx.query(&lock, &[&ids]).await?;
        if only_unclaimed && found.is_empty() {
            // Deleted meanwhile: nothing to cancel.
            return Ok(false);
        }

        struct Pending<'a> {
            pk: i64,
            session_id: String,
            last_seq: u64,
            stored_seq: u64,
            finished: bool,
            update: Option<&'a JobUpdate>,
            tenant: String,
            /// The state name after the writes seen so far, to spot the ones that change it.
            state_name: String,
        }
        let mut jobs: HashMap<String, Pending> = HashMap::with_capacity(found.len());
        for row in &found {
            let state_name: &str = rows::get(row, 3, "jobs.state_name")?;
            let unowned: bool = rows::get(row, 5, "jobs.owner")?;
            if only_unclaimed && (state_name != "QUEUED" || !unowned) {
                return Ok(false);
            }
            let last_seq = rows::uint(row, 2, "jobs.last_seq")?;
            jobs.insert(
                rows::get(row, 0, "jobs.id")?,
                Pending {
                    pk: rows::get(row, 1, "jobs.pk")?,
                    session_id: rows::get(row, 4, "jobs.session_id")?,
                    last_seq,
                    stored_seq: last_seq,
                    finished: !matches!(state_name, "QUEUED" | "RUNNING"),
                    update: None,
                    tenant: rows::get(row, 6, "jobs.tenant")?,
                    state_name: state_name.to_owned(),
                },
            );
        }

        let n: usize = writes.iter().map(|w| w.events.len()).sum();
        let (mut pks, mut seqs, mut times) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut raws, mut kinds) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut changed = Vec::new();
        for w in writes {
            let Some(j) = jobs.get_mut(w.job_id.as_str()) else {
                return Err(Error::internal(format!(
                    "store: append to job {} which does not exist",
                    w.job_id
                ))
                .into());
            };
            // Fences off a replica that lost its lease while another one settled the job.
            if j.finished {
                return Err(Error::precondition(
                    Reason::JobFinished,
                    format!("job {} already finished; its log is closed", w.job_id),
                )
                .into());
            }
            let mut expected = j.last_seq + 1;
            for e in &w.events {
                if e.seq != expected {
                    return Err(Error::internal(format!(
                        "store: event seq {} of job {} does not continue its log \
                         (expected {expected})",
                        e.seq, w.job_id
                    ))
                    .into());
                }
                pks.push(j.pk);
                seqs.push(int(e.seq));
                times.push(e.time.micros());
                raws.push(e.raw.as_deref());
                kinds.push(to_json(&e.kind, "event")?);
                expected += 1;
            }
            j.last_seq = expected - 1;
            if let Some(u) = &w.update {
                j.update = Some(u);
                j.finished = u.state.is_finished();
                if u.state.name() != j.state_name {
                    j.state_name = u.state.name().to_owned();
                    changed.push(changes::Change::of(&j.tenant, &w.job_id, u, j.last_seq)?);
                }
            }
        }

        // The job rows, each with its last update of the batch.
        let (mut u_pk, mut u_seq, mut u_state, mut u_name) = (vec![], vec![], vec![], vec![]);
        let (mut u_result, mut u_usage, mut u_conv, mut u_fin) = (vec![], vec![], vec![], vec![]);
        let (mut conv_sessions, mut convs) = (vec![], vec![]);
        let mut notes = Vec::new();
        let mut jobs_changed = false;
        for (id, j) in &jobs {
            if j.last_seq != j.stored_seq {
                notes.push(listen::events_payload(id, j.last_seq));
            }
            if j.update.is_none() && j.last_seq == j.stored_seq {
                continue;
            }
            u_pk.push(j.pk);
            u_seq.push(int(j.last_seq));
            match j.update {
                Some(u) => {
                    u_state.push(Some(to_json(&u.state, "job state")?));
                    u_name.push(Some(u.state.name()));
                    u_result.push(Some(u.result.as_str()));
                    u_usage.push(Some(to_json(&u.usage, "job usage")?));
                    u_conv.push(u.conversation_id.as_deref());
                    u_fin.push(j.finished);
                    if j.finished {
                        jobs_changed = true;
                        if let (JobState::Finished(_), Some(conv)) = (&u.state, &u.conversation_id)
                        {
                            conv_sessions.push(j.session_id.as_str());
                            convs.push(conv.as_str());
                        }
                    }
                }
                None => {
                    u_state.push(None);
                    u_name.push(None);
                    u_result.push(None);
                    u_usage.push(None);
                    u_conv.push(None);
                    u_fin.push(false);
                }
            }
        }
        if jobs_changed {
            notes.push(listen::JOBS_CHANGED.to_owned());
        }
        if !changed.is_empty() {
            notes.push(listen::JOB_CHANGES.to_owned());
        }

        let insert = tx
            .prepare_cached(
                "INSERT INTO events (job_pk, seq, time, raw, kind) \
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::text[])",
            )
            .await?;
        let update = tx
            .prepare_cached(
                "UPDATE jobs AS j SET \
                   last_seq = u.last_seq, \
                   state = coalesce(u.state, j.state), \
                   state_name = coalesce(u.state_name, j.state_name), \
                   result = coalesce(u.result, j.result), \
                   usage = coalesce(u.usage, j.usage), \
                   conversation_id = CASE WHEN u.state IS NULL THEN j.conversation_id \
                                          ELSE u.conv END, \
                   owner = CASE WHEN u.fin THEN NULL ELSE j.owner END, \
                   lease_until = CASE WHEN u.fin THEN NULL ELSE j.lease_until END \
                 FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], \
                             $6::text[], $7::text[], $8::bool[]) \
                   AS u(pk, last_seq, state, state_name, result, usage, conv, fin) \
                 WHERE j.pk = u.pk",
            )
            .await?;
        let conversation = tx
            .prepare_cached(
                "UPDATE sessions AS s SET conversation_id = u.conv \
                 FROM UNNEST($1::text[], $2::text[]) AS u(id, conv) WHERE s.id = u.id",
            )
            .await?;
        let notify = tx
            .prepare_cached("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .await?;
        // Sent together: tokio-postgres pipelines requests that are in flight at once.
        let inserted = async {
            if pks.is_empty() {
                return Ok(0);
            }
            tx.execute(&insert, &[&pks, &seqs, &times, &raws, &kinds])
                .await
        };
        let updated = async {
            if u_pk.is_empty() {
                return Ok(0);
            }
            tx.execute(
                &update,
                &[
                    &u_pk, &u_seq, &u_state, &u_name, &u_result, &u_usage, &u_conv, &u_fin,
                ],
            )
            .await
        };
        let conversed = async {
            if conv_sessions.is_empty() {
                return Ok(0);
            }
            tx.execute(&conversation, &[&conv_sessions, &convs]).await
        };
        let notified = async {
            if notes.is_empty() {
                return Ok(0);
            }
            tx.execute(&notify, &[&self.channel, &notes]).await
        };
        tokio::try_join!(inserted, updated, conversed, notified)?;
        // Last, so the tenants' sequence rows are locked for as short a time as possible.
        changes::record(tx, &mut changed).await?;
        Ok(true)
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

    /// `create_job` once; `Ok(None)` when it lost a race on the request id and should look again.
    async fn try_create_job(
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
        let st = tx
            .prepare_cached("SELECT 1 FROM sessions WHERE id = $1 AND tenant = $2 FOR UPDATE")
            .await
            .map_err(db)?;
        if tx
            .query_opt(&st, &[&job.session_id.as_str(), &job.tenant.as_str()])
            .await
            .map_err(db)?
            .is_none()
        {
            return Err(Error::session_not_found(job.session_id.as_str()));
        }
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
            let queued: i64 = rows::get(&row, 0, "count")?;
            if usize::try_from(queued).unwrap_or(usize::MAX) >= limits.max_queued_in_session {
                return Err(Error::ResourceExhausted {
                    reason: Reason::QueueFull,
                    message: format!(
                        "session {} already has {} queued jobs (the maximum)",
                        job.session_id, limits.max_queued_in_session
                    ),
                    retry_after: Some(Duration::from_secs(5)),
                });
            }
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
            let active: i64 = rows::get(&row, 0, "count")?;
            let max = limits.max_active_for_tenant;
            if usize::try_from(active).unwrap_or(usize::MAX) >= max {
                return Err(Error::ResourceExhausted {
                    reason: Reason::TooManyJobs,
                    message: format!(
                        "tenant {:?} already has {max} queued or running jobs (the maximum)",
                        job.tenant.as_str()
                    ),
                    retry_after: Some(Duration::from_secs(5)),
                });
            }
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

    /// `create_session` once; `Ok(None)` when it lost a race on the request id.
    async fn try_create_session(&self, s: &Session) -> Result<Option<Session>> {
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
        let labels = to_json(labels, "label filter")?;
        let limit = int(limit as u64);
        // Two statements rather than `$4 IS NULL OR …`, which would stop the index range scan.
        let rows = match after {
            None => {
                self.query(
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
                self.query(
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
        let mut c = self.client().await?;
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
        let states: Option<Vec<&str>> = (!filter.states.is_empty()).then(|| filter.states.clone());
        let limit = int(limit as u64);
        let rows = match after {
            None => {
                self.query(
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
                self.query(
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
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .query(
                "SELECT seq, time, raw, kind FROM events \
                 WHERE job_pk = (SELECT pk FROM jobs WHERE id = $1) AND seq > $2 \
                 ORDER BY seq LIMIT $3",
                &[&job.as_str(), &int(after_seq), &int(limit as u64)],
            )
            .await?;
        rows::all(&rows, rows::event)
    }

    async fn prune_events(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.execute(
            "DELETE FROM events WHERE (job_pk, seq) IN ( \
                 SELECT e.job_pk, e.seq FROM events e JOIN jobs j ON j.pk = e.job_pk \
                 WHERE j.state_name IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT') \
                   AND e.time < $1 AND e.seq < j.last_seq \
                 LIMIT $2)",
            &[&before.micros(), &int(limit as u64)],
        )
        .await
    }

    async fn claim_jobs_within(
        &self,
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
            self.query(CLAIM, &params).await?
        } else {
            // Replicas claiming at once would each see the tenant below its cap: with a cap,
            // claims take turns.
            let mut c = self.client().await?;
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
                })
            })
            .collect::<Result<Vec<_>>>()?;
        claimed.sort_by(|a, b| {
            (a.job.created, a.job.id.as_str()).cmp(&(b.job.created, b.job.id.as_str()))
        });
        Ok(claimed)
    }

    async fn renew_leases(&self, replica: &str, lease_until: Timestamp) -> Result<Vec<JobId>> {
        let rows = self
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

    async fn expired_leases(&self, now: Timestamp, limit: usize) -> Result<Vec<Orphan>> {
        let rows = self
            .query(
                concat!(
                    "SELECT ",
                    job_cols!(),
                    ", owner, lease_until FROM jobs \
                      WHERE owner IS NOT NULL AND lease_until < $1 \
                        AND state_name IN ('QUEUED', 'RUNNING') \
                      ORDER BY lease_until, id LIMIT $2"
                ),
                &[&now.micros(), &int(limit as u64)],
            )
            .await?;
        rows::all(&rows, |r| {
            Ok(Orphan {
                job: rows::job(r)?,
                owner: rows::get(r, JOB_COLS, "jobs.owner")?,
                lease_until: Timestamp(rows::get(r, JOB_COLS + 1, "jobs.lease_until")?),
            })
        })
    }

    async fn take_over_job(
        &self,
        job: &JobId,
        from: &str,
        to: &str,
        lease_until: Timestamp,
    ) -> Result<bool> {
        let rows = self
            .query(
                "UPDATE jobs SET owner = $3, lease_until = $4 \
                 WHERE id = $1 AND owner = $2 AND state_name = 'RUNNING' RETURNING 1",
                &[&job.as_str(), &from, &to, &lease_until.micros()],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn release_job(&self, job: &JobId, owner: &str) -> Result<bool> {
        // One statement, so the NOTIFY commits with the release.
        let rows = self
            .query(
                "WITH u AS ( \
                   UPDATE jobs SET owner = NULL, lease_until = NULL \
                   WHERE id = $1 AND owner = $2 AND state_name = 'QUEUED' RETURNING 1) \
                 SELECT pg_notify($3, 'j') FROM u",
                &[&job.as_str(), &owner, &self.channel],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn finish_unclaimed(&self, write: JobWrite) -> Result<bool> {
        self.write_events(std::slice::from_ref(&write), true).await
    }

    async fn request_cancel(&self, job: &JobId, reason: &str) -> Result<()> {
        self.query(
            &format!(
                "WITH u AS ( \
                   UPDATE jobs SET cancel_reason = coalesce(cancel_reason, $2) \
                   WHERE id = $1 AND state_name IN ('QUEUED', 'RUNNING') RETURNING cancel_reason) \
                 SELECT pg_notify($3, {}) FROM u",
                listen::CANCEL_PAYLOAD_SQL
            ),
            &[&job.as_str(), &reason, &self.channel],
        )
        .await?;
        Ok(())
    }

    async fn cancel_requests(&self, replica: &str) -> Result<Vec<(JobId, String)>> {
        let rows = self
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

    async fn queue_position(&self, job: &JobId) -> Result<Option<u32>> {
        let rows = self
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

    fn signals(&self) -> Option<broadcast::Receiver<StoreSignal>> {
        Some(self.signals.subscribe())
    }

    async fn put_job_outputs(&self, job: &JobId, changes: &[FileChange]) -> Result<()> {
        let mut sorted: Vec<&FileChange> = changes.iter().collect();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        let changes = to_json(&sorted, "job outputs")?;
        let n = self
            .execute(
                "INSERT INTO job_outputs (job_pk, changes) SELECT pk, $2 FROM jobs WHERE id = $1 \
                 ON CONFLICT (job_pk) DO UPDATE SET changes = excluded.changes",
                &[&job.as_str(), &changes],
            )
            .await?;
        if n == 0 {
            return Err(Error::job_not_found(job.as_str()));
        }
        Ok(())
    }

    async fn get_job_outputs(&self, job: &JobId) -> Result<Option<Vec<FileChange>>> {
        let rows = self
            .query(
                "SELECT changes FROM job_outputs \
                 WHERE job_pk = (SELECT pk FROM jobs WHERE id = $1)",
                &[&job.as_str()],
            )
            .await?;
        match rows.first() {
            Some(r) => {
                let text: &str = rows::get(r, 0, "job_outputs.changes")?;
                serde_json::from_str(text).map(Some).map_err(|_| {
                    Error::internal("store: column job_outputs.changes does not hold valid JSON")
                })
            }
            None => Ok(None),
        }
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

    async fn delete_snapshots(&self, keys: &[(JobId, crate::store::SnapPoint)]) -> Result<u64> {
        snapshots::delete(self, keys).await
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
}
