//! SQLite connections: opening and configuring them, the schema migrations, and the small pool of
//! read connections. rusqlite is synchronous, so every use of a connection happens on a blocking
//! thread (`spawn_blocking` for reads, the writer thread for writes, the checkpointer thread for
//! checkpoints).

use super::db;
use crate::error::{Error, Result};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Migrations in order; `PRAGMA user_version` holds how many have been applied.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_leases.sql"),
    include_str!("../migrations/sqlite/0010_usage.sql"),
    include_str!("../migrations/sqlite/0013_job_changes.sql"),
    include_str!("../migrations/sqlite/0014_webhooks.sql"),
    include_str!("../migrations/sqlite/0016_presets.sql"),
    include_str!("../migrations/sqlite/0012_snapshots.sql"),
    include_str!("../migrations/sqlite/0017_agent_conversations.sql"),
    include_str!("../migrations/sqlite/0018_rewinds.sql"),
    include_str!("../migrations/sqlite/0019_control_messages.sql"),
    include_str!("../migrations/sqlite/0022_rewind_holds.sql"),
    include_str!("../migrations/sqlite/0020_lease_gen.sql"),
    include_str!("../migrations/sqlite/0023_job_changes_by_job.sql"),
    include_str!("../migrations/sqlite/0024_job_output_parts.sql"),
];

/// How long a connection waits for a lock held by another connection (a second process, a
/// checkpoint) before reporting SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads that may run at once; the machine has few cores and each read occupies a blocking thread.
const MAX_READERS: usize = 4;

pub(super) fn open_raw(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::internal(format!("store: cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    conn.set_prepared_statement_cache_capacity(64);
    // Plans that never depend on the values bound. Without it SQLite (3.54) lets the planner
    // look at the values of a statement with ORDER BY or LIMIT (the claim, the newest snapshot,
    // every event and change read) and then compiles the cached statement again whenever a
    // value differs from the last, which is every time here: ~0.5 ms of SQL compilation on the
    // writer in each job's claim on the machines of BENCHMARKS.md. agentd never runs ANALYZE,
    // so those values had nothing to tell the planner anyway.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(db)?;
    Ok(conn)
}

/// Opens the write connection: WAL, synchronous=NORMAL (a commit survives a crash of the process,
/// not of the machine, and costs no fsync), foreign keys on; then brings the schema up to date.
pub(super) fn open_writer(path: &Path) -> Result<Connection> {
    let mut conn = open_raw(path)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
        .map_err(db)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::internal(format!(
            "store: {} cannot use WAL journal mode (got {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(db)?;
    conn.pragma_update(None, "foreign_keys", true).map_err(db)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(db)?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    // IMMEDIATE: two processes opening the same file must not both apply a migration.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let current: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db)?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(Error::internal(format!(
            "store: database schema version {current} is newer than this build supports ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)
            .map_err(|e| Error::internal(format!("store: migration {}: {e}", i + 1)))?;
    }
    if current < MIGRATIONS.len() {
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(db)?;
    }
    tx.commit().map_err(db)
}

/// Idle read connections plus a bound on concurrent reads. WAL lets these read committed data
/// while the writer is inside a transaction.
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(MAX_READERS)),
        }
    }

    fn take(&self) -> Result<Connection> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => {
                let conn = open_raw(&self.path)?;
                // A read connection must never write, whatever a bug asks of it.
                conn.pragma_update(None, "query_only", true).map_err(db)?;
                Ok(conn)
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < MAX_READERS {
            idle.push(conn);
        }
    }

    /// Runs `f` with a read connection on a blocking thread.
    pub(super) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("store: read pool closed"))?;
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = readers.take()?;
            let out = f(&conn);
            readers.give_back(conn);
            out
        })
        .await
        .map_err(|e| Error::internal(format!("store: read task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// A cached statement whose plan SQLite could tie to its values (ORDER BY with LIMIT, a
    /// bound LIMIT) runs with other values without being compiled again.
    #[test]
    fn new_values_do_not_recompile_a_cached_statement() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agentd.db");
        let writer = open_writer(&path).expect("writer");
        let reader = Readers::new(path).take().expect("reader");
        for conn in [&writer, &reader] {
            for sql in [
                "SELECT job_id FROM snapshots WHERE session_id = ?1 \
                 ORDER BY created DESC LIMIT 1",
                "SELECT id FROM jobs ORDER BY pk LIMIT ?1",
            ] {
                let mut st = conn.prepare_cached(sql).expect("prepare");
                for value in 1..=4_i64 {
                    let mut rows = st.query([value]).expect("query");
                    while rows.next().expect("row").is_some() {}
                }
                assert_eq!(st.get_status(StatementStatus::RePrepare), 0, "{sql}");
            }
        }
    }
}
