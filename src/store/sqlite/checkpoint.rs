//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1,000 pages, on
//! the connection that committed: here the one writer thread. Copying the WAL into the database
//! file, reading it back and syncing both took about a quarter of the writer's time under a flood
//! of events (perf, BENCHMARKS.md), time in which no event was committed. Instead, the writer's
//! WAL hook wakes a checkpointer thread with a connection of its own, which runs PASSIVE
//! checkpoints: they never wait for or block the writer or readers, so the copying overlaps with
//! the next commits. Should the WAL still grow past [`INLINE_PAGES`] (while the writer keeps
//! appending, a pass of the checkpointer never catches up with it, and only a checkpoint that
//! caught up lets the WAL start over), the writer waits for the checkpointer's current pass and
//! then checkpoints the rest itself, between two of its transactions, as SQLite would have; so the
//! WAL stays bounded.

use super::{conn, db};
use crate::error::{Error, Result};
use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

/// WAL pages after which the checkpointer is woken (SQLite's own auto-checkpoint threshold).
const WAKE_PAGES: i32 = 1000;
/// WAL pages after which the writer checkpoints itself (≈ 64 MiB with 4 KiB pages).
const INLINE_PAGES: i32 = 16_000;

/// Checkpoints done so far, by whom.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) background: AtomicU64,
    pub(super) inline: AtomicU64,
    /// The WAL's length in frames when a background pass last copied all of it (so that the
    /// next commit starts the WAL over): what a test waits for, since a pass that began before
    /// the latest commit counts as a pass without having caught up with it.
    pub(super) caught_up_frames: AtomicU64,
}

/// Starts the checkpointer for the database at `path` and hands the writer connection's
/// checkpoints to it. The thread ends when `writer` is closed (its hook, holding the only sender,
/// is dropped then); the last connection to close checkpoints what is left, as usual.
pub(super) fn install(writer: &mut Connection, path: &Path) -> Result<Arc<Counts>> {
    install_with(writer, path, WAKE_PAGES, INLINE_PAGES)
}

fn install_with(
    writer: &mut Connection,
    path: &Path,
    wake_pages: i32,
    inline_pages: i32,
) -> Result<Arc<Counts>> {
    let own = conn::open_raw(path)?;
    let counts = Arc::new(Counts::default());
    // SQLite refuses a second checkpoint while one runs (SQLITE_BUSY, with no waiting); this lets
    // the writer wait for the checkpointer's pass instead.
    let turn = Arc::new(Mutex::new(()));
    let (wake, woken) = sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("agentd-store-ckpt".into())
        .spawn({
            let (counts, turn) = (Arc::clone(&counts), Arc::clone(&turn));
            move || run(own, woken, &counts, &turn)
        })
        .map_err(|e| Error::internal(format!("store: cannot start checkpointer thread: {e}")))?;
    let hook_counts = Arc::clone(&counts);
    writer
        .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
            if pages >= inline_pages {
                let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
                // Never an error from here: SQLite would report it as the failure of a statement
                // whose transaction has already committed.
                match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                    Ok(_) => {
                        hook_counts.inline.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(error = %e, "store: inline checkpoint skipped"),
                }
            } else if pages >= wake_pages {
                // Full means a wake-up is already pending; gone means the thread died, and the
                // inline checkpoint above still bounds the WAL.
                if let Err(TrySendError::Disconnected(())) = wake.try_send(()) {
                    tracing::warn!("store: the checkpointer thread is gone");
                }
            }
            Ok(())
        }))
        .map_err(db)?;
    Ok(counts)
}

fn run(conn: Connection, woken: Receiver<()>, counts: &Counts, turn: &Mutex<()>) {
    while woken.recv().is_ok() {
        let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
        // (busy, WAL frames, frames checkpointed); busy is never set by a PASSIVE checkpoint.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match done {
            Ok((log, copied)) => {
                if log == copied
                    && let Ok(frames) = u64::try_from(log)
                {
                    counts.caught_up_frames.fetch_max(frames, Ordering::Relaxed);
                }
                counts.background.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "store: background checkpoint failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that keeps committing gets its WAL checkpointed by the background thread: the
    /// WAL stays far below the inline threshold and the writer never checkpoints itself.
    #[test]
    fn the_checkpointer_keeps_the_wal_short_without_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut writer = conn::open_writer(&path).unwrap();
        let counts = install(&mut writer, &path).unwrap();
        writer
            .execute_batch("CREATE TABLE blobs (b BLOB NOT NULL)")
            .unwrap();
        let blob = vec![7u8; 64 * 1024];
        let wal = dir.path().join("c.db-wal");
        let mut largest_wal = 0;
        let mut last_len = 0;
        // 40 MiB in 1 MiB transactions: 10,000 pages, five times the wake-up threshold.
        for _ in 0..40 {
            let tx = writer.transaction().unwrap();
            for _ in 0..16 {
                tx.execute("INSERT INTO blobs (b) VALUES (?1)", [&blob])
                    .unwrap();
            }
            tx.commit().unwrap();
            largest_wal = largest_wal.max(std::fs::metadata(&wal).unwrap().len());
            // A little room between commits, as between an agent's batches. On a loaded machine
            // the checkpointer thread may not get a core within it: once the WAL is past the
            // wake-up mark, give it (a bounded) time to run, since what is tested is that the
            // background pass keeps the WAL short, not how soon the scheduler runs it.
            std::thread::sleep(std::time::Duration::from_millis(5));
            let wake_bytes = u64::try_from(WAKE_PAGES).unwrap() * 4096;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let len = std::fs::metadata(&wal).unwrap().len();
            // The file only grows while no checkpoint has let the WAL start over. Then wait for a
            // pass that copied every frame written so far (a pass that began before this commit
            // and finished after it has not), so the next commit starts the WAL over.
            let growing = len > wake_bytes && len > last_len;
            last_len = len;
            let frames = len.saturating_sub(32) / (4096 + 24);
            while growing
                && counts.caught_up_frames.load(Ordering::Relaxed) < frames
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert!(counts.background.load(Ordering::Relaxed) >= 1);
        assert_eq!(counts.inline.load(Ordering::Relaxed), 0);
        // Checkpointed pages let the WAL start over instead of growing to all 40 MiB.
        assert!(largest_wal < 24 << 20, "WAL grew to {largest_wal} bytes");
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 640);
    }

    /// Commits going on back to back (no pause for the checkpointer to catch up) take the WAL
    /// past the inline threshold while background checkpoints run: every commit still succeeds
    /// (a checkpoint that finds the other one busy is skipped, never reported as the commit's
    /// error), both kinds of checkpoint happen, and the WAL stays bounded.
    #[test]
    fn back_to_back_commits_never_fail_and_the_wal_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut writer = conn::open_writer(&path).unwrap();
        let counts = install_with(&mut writer, &path, 8, 64).unwrap();
        writer
            .execute_batch("CREATE TABLE blobs (b BLOB NOT NULL)")
            .unwrap();
        let blob = vec![7u8; 16 * 1024];
        let wal = dir.path().join("c.db-wal");
        let mut largest_wal = 0;
        for _ in 0..400 {
            let tx = writer.transaction().unwrap();
            for _ in 0..4 {
                tx.execute("INSERT INTO blobs (b) VALUES (?1)", [&blob])
                    .unwrap();
            }
            tx.commit().expect("a commit failed");
            largest_wal = largest_wal.max(std::fs::metadata(&wal).unwrap().len());
        }
        assert!(counts.background.load(Ordering::Relaxed) >= 1);
        assert!(counts.inline.load(Ordering::Relaxed) >= 1);
        // 400 commits of 64 KiB would make a 25 MiB WAL if nothing were checkpointed.
        assert!(largest_wal < 4 << 20, "WAL grew to {largest_wal} bytes");
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1600);
    }
}
