//! The one writer thread. It owns the write connection and executes write requests sent over a
//! bounded channel. Whatever is queued when it wakes up runs in a single transaction (group
//! commit), each request inside its own savepoint so that a failing request is undone alone while
//! the others commit. A request's caller hears back only after the commit, so nobody ever acts on
//! data that could still roll back.

use super::db;
use crate::error::{Error, Result};
use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use tokio::sync::{mpsc, oneshot};

/// Requests that may wait for the writer; senders wait (backpressure) when it is full.
const QUEUE: usize = 1024;
/// Most requests committed in one transaction, so one huge backlog cannot starve the replies.
const MAX_GROUP: usize = 256;

/// A write request as the writer thread sees it.
trait Work: Send {
    /// Runs the request inside the current savepoint; `false` when it failed (and must be undone).
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Reports the outcome once the transaction has committed (or failed to).
    fn finish(self: Box<Self>, committed: Result<()>);
}

struct Request<T, F> {
    f: Option<F>,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Work for Request<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn apply(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        // A panic must not take the writer thread (and with it every later write) down.
        let outcome = catch_unwind(AssertUnwindSafe(|| f(conn)))
            .unwrap_or_else(|_| Err(Error::internal("store: a write request panicked")));
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<()>) {
        let reply = match (committed, self.outcome) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(Error::internal("store: write request was not executed")),
        };
        // The caller may have gone away; the write stands regardless.
        let _ = self.reply.send(reply);
    }
}

enum Msg {
    Work(Box<dyn Work>),
    Close(oneshot::Sender<()>),
}

/// Handle to the writer thread. Dropping every handle stops the thread after the queued work.
pub(super) struct Writer {
    tx: mpsc::Sender<Msg>,
}

fn closed() -> Error {
    Error::internal("store: closed")
}

impl Writer {
    pub(super) fn spawn(conn: Connection) -> Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("agentd-store-writer".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| Error::internal(format!("store: cannot start writer thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Runs `f` in the writer's transaction and returns its result after the commit. When `f`
    /// fails, everything it did is undone. If the caller stops waiting, the write still happens.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let work = Box::new(Request {
            f: Some(f),
            outcome: None,
            reply,
        });
        self.tx.send(Msg::Work(work)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Finishes the queued writes, then closes the write connection; later writes fail.
    pub(super) async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Msg>) {
    let mut group: Vec<Box<dyn Work>> = Vec::with_capacity(MAX_GROUP);
    let mut acks = Vec::new();
    while let Some(msg) = rx.blocking_recv() {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Work(w) => group.push(w),
                Msg::Close(ack) => {
                    // Refuse new requests; those already queued are still received and run.
                    rx.close();
                    acks.push(ack);
                }
            }
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group(&conn, &mut group);
        }
    }
    // Lets SQLite refresh its planner statistics; failure here is harmless.
    let _ = conn.execute_batch("PRAGMA optimize");
    drop(conn);
    for ack in acks {
        let _ = ack.send(());
    }
}

fn commit_group(conn: &Connection, group: &mut Vec<Box<dyn Work>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = db(e);
        for w in group.drain(..) {
            w.finish(Err(e.clone()));
        }
        return;
    }
    let mut broken = None;
    for w in group.iter_mut() {
        if let Err(e) = run_in_savepoint(conn, w.as_mut()) {
            broken = Some(e);
            break;
        }
    }
    let outcome = match broken {
        Some(e) => Err(e),
        None => conn.execute_batch("COMMIT").map_err(db),
    };
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for w in group.drain(..) {
        w.finish(outcome.clone());
    }
}

/// Applies one request in a savepoint, undoing it alone on failure. An `Err` means the whole
/// transaction is lost (SQLite rolled it back itself, e.g. on a full disk), so every request in
/// the group must fail.
fn run_in_savepoint(conn: &Connection, w: &mut dyn Work) -> Result<()> {
    conn.execute_batch("SAVEPOINT request").map_err(db)?;
    let ok = w.apply(conn);
    if conn.is_autocommit() {
        return Err(Error::internal(
            "store: the database aborted the write transaction",
        ));
    }
    let end = if ok {
        "RELEASE request"
    } else {
        "ROLLBACK TO request; RELEASE request"
    };
    conn.execute_batch(end).map_err(db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    impl Writer {
        /// Requests waiting in the queue.
        fn queued(&self) -> usize {
            QUEUE - self.tx.capacity()
        }
    }

    fn setup() -> (tempfile::TempDir, std::path::PathBuf, Arc<Writer>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER NOT NULL)")
            .expect("schema");
        let writer = Arc::new(Writer::spawn(conn).expect("spawn"));
        (dir, path, writer)
    }

    fn insert(conn: &Connection, x: i64) -> Result<()> {
        conn.execute("INSERT INTO t (x) VALUES (?1)", [x])
            .map(|_| ())
            .map_err(db)
    }

    async fn wait_queued(writer: &Writer, n: usize) {
        while writer.queued() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn rows(path: &std::path::Path) -> Vec<i64> {
        let conn = Connection::open(path).expect("open");
        let mut st = conn.prepare("SELECT x FROM t ORDER BY x").expect("prepare");
        st.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// Requests queued behind a busy writer commit together, and the failing one among them is
    /// undone alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_requests_share_one_commit_and_fail_alone() {
        let (_dir, path, writer) = setup();
        let (started_tx, started_rx) = oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .write(move |c| {
                        let _ = started_tx.send(());
                        let _ = release_rx.recv();
                        insert(c, 1)
                    })
                    .await
            }
        });
        started_rx.await.expect("blocker started");

        // Each request is queued before the next is sent, so the queue order is known.
        let mut tasks = Vec::new();
        for x in 2..=4 {
            let writer2 = writer.clone();
            tasks.push(tokio::spawn(async move {
                writer2.write(move |c| insert(c, x).map(|()| true)).await
            }));
            wait_queued(&writer, tasks.len()).await;
        }
        tasks.push(tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .write(|c| {
                        insert(c, 100)?;
                        Err(Error::internal("refused on purpose"))
                    })
                    .await
            }
        }));
        wait_queued(&writer, tasks.len()).await;
        // The last request checks, from inside the group, that the earlier requests of its group
        // are visible to the writer but not yet committed for anybody else.
        tasks.push(tokio::spawn({
            let writer = writer.clone();
            let path = path.clone();
            async move {
                writer
                    .write(move |c| {
                        let own: i64 = c
                            .query_row("SELECT count(*) FROM t WHERE x BETWEEN 2 AND 4", [], |r| {
                                r.get(0)
                            })
                            .map_err(db)?;
                        let others = rows(&path);
                        insert(c, 5)?;
                        Ok(own == 3 && !others.contains(&2))
                    })
                    .await
            }
        }));
        wait_queued(&writer, tasks.len()).await;
        release_tx.send(()).expect("release");
        blocker.await.expect("join").expect("blocker write");

        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.expect("join"));
        }
        assert!(matches!(outcomes[3], Err(Error::Internal { .. })));
        assert!(outcomes[..3].iter().all(|o| matches!(o, Ok(true))));
        assert!(
            matches!(outcomes[4], Ok(true)),
            "the group was not committed as one transaction: {:?}",
            outcomes[4]
        );
        assert_eq!(rows(&path), vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_panicking_request_fails_alone() {
        let (_dir, path, writer) = setup();
        let err = writer
            .write(|c| -> Result<()> {
                insert(c, 7)?;
                panic!("bug in a write request")
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        writer
            .write(|c| insert(c, 8))
            .await
            .expect("writer still alive");
        assert_eq!(rows(&path), vec![8]);
    }

    #[tokio::test]
    async fn close_finishes_queued_writes_then_refuses() {
        let (_dir, path, writer) = setup();
        writer.write(|c| insert(c, 1)).await.expect("write");
        writer.close().await;
        let err = writer.write(|c| insert(c, 2)).await.unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
        assert_eq!(rows(&path), vec![1]);
        // Closing twice is harmless.
        writer.close().await;
    }
}
