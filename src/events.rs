//! The event log: the only way job events and job state changes reach the store, and the way
//! readers follow a job live.
//!
//! Writes go through one writer task that takes everything queued at that moment and appends it
//! in one store transaction (group commit: one commit for many events, across jobs). Only after the
//! commit are readers woken, through a per-job `watch` carrying the last committed seq, so a reader
//! can never see a seq that is not durable. A slow reader simply reads further behind and never
//! holds up an agent, and a reader that reconnects with its last seq loses nothing.
//!
//! While a job has readers, the events this process commits for it are also kept in a short
//! in-memory window, so readers that keep up tail from memory instead of each re-reading the store
//! after every commit (with many readers on one job that read was most of the cost). A reader
//! goes back to the store whenever the window cannot serve it: when it attaches, when it lags
//! behind the window, for events another replica committed (known only through a notification),
//! and after every keepalive tick or missed-signals wake-up.

use crate::domain::{JobEvent, JobId};
use crate::error::{Error, Reason, Result};
use crate::store::{DynStore, JobWrite};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most events returned to a reader in one batch.
const READ_BATCH: usize = 1000;
/// Queued writes before writers wait (backpressure, bounded memory).
const WRITE_QUEUE: usize = 1024;
/// Most recent committed events kept in memory per job that has readers.
const WINDOW: usize = 4096;
/// About how many bytes of events one response message carries (by [`approx_size`]): a quarter
/// of the 4 MiB that tonic's clients and the generated SDKs accept by default, so that a batch
/// of large events (tool results) is never a message those clients refuse. An event larger than
/// this still goes out, alone (see [`MessageBytes`]).
pub const MESSAGE_BYTES: usize = 1 << 20;

/// About how many bytes an event takes on the wire: its JSON form, which is no smaller than its
/// protobuf one for the text that dominates events. Counted without building the JSON.
pub fn approx_size(e: &JobEvent) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Serializing plain data into a counter cannot fail; were it to, the raw line still counts.
    let _ = serde_json::to_writer(&mut n, &e.kind);
    n.0 + e.raw.as_ref().map_or(0, String::len) + 16
}

/// The byte budget of one response message, the one rule for every stream that carries events
/// (StreamJobEvents, RunJob, Attach, WatchJobs' `include_events`): items are added while their
/// sizes add up to at most [`MESSAGE_BYTES`], and the first always fits.
#[derive(Debug, Default)]
pub struct MessageBytes {
    bytes: usize,
    items: usize,
}

impl MessageBytes {
    /// Counts an item of `size` bytes if it fits; false when it belongs in the next message.
    pub fn add(&mut self, size: usize) -> bool {
        if self.items > 0 && self.bytes + size > MESSAGE_BYTES {
            return false;
        }
        self.items += 1;
        self.bytes += size;
        true
    }

    /// The bytes counted so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Consecutive events cut into messages by [`MessageBytes`], in order.
fn messages(mut events: Vec<Arc<SharedEvent>>) -> Vec<Vec<Arc<SharedEvent>>> {
    let mut cuts = Vec::new();
    let mut budget = MessageBytes::default();
    for (i, e) in events.iter().enumerate() {
        if !budget.add(e.size()) {
            cuts.push(i);
            budget = MessageBytes::default();
            budget.add(e.size());
        }
    }
    let mut out = Vec::with_capacity(cuts.len() + 1);
    for at in cuts.into_iter().rev() {
        out.push(events.split_off(at));
    }
    out.push(events);
    out.reverse();
    out
}

/// What a job's readers are told on each wake-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Mark {
    /// The highest seq known to be committed.
    seq: u64,
    /// Bumped when readers must re-read the store (signals from other replicas may be lost).
    resync: u64,
}

/// A committed event as readers receive it. Events tailed from the window are shared by every
/// reader of the job, with room for the API edge to keep the event's encoding, made by the first
/// reader that needs it and reused by all the others.
#[derive(Debug)]
pub struct SharedEvent {
    pub event: JobEvent,
    encoded: OnceLock<bytes::Bytes>,
    /// [`approx_size`], also counted once for all readers.
    size: OnceLock<usize>,
}

impl SharedEvent {
    fn new(event: JobEvent) -> Arc<SharedEvent> {
        Arc::new(SharedEvent {
            event,
            encoded: OnceLock::new(),
            size: OnceLock::new(),
        })
    }

    /// The event's [`approx_size`].
    pub fn size(&self) -> usize {
        *self.size.get_or_init(|| approx_size(&self.event))
    }

    /// The event's encoding: `encode`d on the first call, the same bytes afterwards.
    pub fn encoded(&self, encode: impl FnOnce(&JobEvent) -> bytes::Bytes) -> bytes::Bytes {
        self.encoded.get_or_init(|| encode(&self.event)).clone()
    }

    /// The event itself, moved out when nobody else holds it (events read from the store).
    pub fn into_event(self: Arc<Self>) -> JobEvent {
        Arc::try_unwrap(self).map_or_else(|shared| shared.event.clone(), |own| own.event)
    }
}

/// A job that has readers: its wake-ups and its recent committed events.
struct Tail {
    tx: watch::Sender<Mark>,
    /// Consecutive committed events, oldest first, at most [`WINDOW`].
    window: VecDeque<Arc<SharedEvent>>,
}

/// What the window can give a reader at `cursor`.
enum Recent {
    /// The events after the cursor (up to a read batch).
    Events(Vec<Arc<SharedEvent>>),
    /// Nothing is committed after the cursor.
    CaughtUp,
    /// The window does not cover the cursor: read the store.
    Miss,
}

struct WriteRequest {
    write: JobWrite,
    done: oneshot::Sender<Result<()>>,
}

/// Appends job writes to the store in batches and wakes readers after each commit.
pub struct EventLog {
    store: DynStore,
    tx: mpsc::Sender<WriteRequest>,
    watchers: Mutex<HashMap<JobId, Tail>>,
    /// Bumped whenever some job's state may have changed (a committed write with a row update,
    /// a submission, another replica's signal): tenant watchers and waiters re-read the store.
    changes: watch::Sender<u64>,
}

/// A submitted write whose commit has not been awaited yet. As a future it resolves once the
/// write is committed and readers were woken, or with why it failed.
#[must_use = "a write's outcome is only known by awaiting its commit"]
pub struct Pending(oneshot::Receiver<Result<()>>);

impl Future for Pending {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.map_err(|_| Error::internal("event log writer stopped"))
                .and_then(|r| r)
        })
    }
}

/// What a reader of a job's log receives.
#[derive(Debug)]
pub enum StreamItem {
    /// Consecutive events, at most a message's worth ([`MessageBytes`]); the last batch ends
    /// with the job's `Finished` event when the job is done. Events from the window are shared
    /// with the job's other readers; events read from the store are this reader's alone.
    Events(Vec<Arc<SharedEvent>>),
    /// Nothing happened for a while: a message that keeps proxies from cutting the stream.
    Keepalive,
}

impl EventLog {
    /// Starts the writer task. It runs until `stop` fires (the last step of shutdown, after every
    /// job has stored its final state) or every handle is dropped, and commits whatever is queued
    /// before it ends; the tracker waits for it.
    pub fn start(store: DynStore, tracker: &TaskTracker, stop: CancellationToken) -> Arc<EventLog> {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let log = Arc::new(EventLog {
            store,
            tx,
            watchers: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
        });
        tracker.spawn(writer(Arc::downgrade(&log), log.store.clone(), rx, stop));
        log
    }

    /// Durably appends `write`; returns once it is committed and readers were woken.
    pub async fn write(&self, write: JobWrite) -> Result<()> {
        self.submit(write).await?.await
    }

    /// Queues `write` behind every write submitted before it (waiting only while the queue is
    /// full) and returns without waiting for the commit, so a job can prepare its next batch
    /// meanwhile. Writes are committed in submission order; a job's later write can only succeed
    /// if its earlier ones did, since its seqs would not continue the stored log otherwise.
    pub async fn submit(&self, write: JobWrite) -> Result<Pending> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(WriteRequest { write, done })
            .await
            .map_err(|_| Error::internal("event log writer stopped"))?;
        Ok(Pending(rx))
    }

    /// Wakes whoever follows job state changes ([`EventLog::changes`]).
    pub fn job_changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever some job's state may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn watchers(&self) -> MutexGuard<'_, HashMap<JobId, Tail>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that changes whenever new events of `job` are committed.
    fn watch(&self, job: &JobId) -> watch::Receiver<Mark> {
        self.watchers()
            .entry(job.clone())
            .or_insert_with(|| Tail {
                tx: watch::channel(Mark::default()).0,
                window: VecDeque::new(),
            })
            .tx
            .subscribe()
    }

    fn release(&self, job: &JobId) {
        let mut w = self.watchers();
        if w.get(job).is_some_and(|t| t.tx.receiver_count() == 0) {
            w.remove(job);
        }
    }

    /// Wakes the readers of `job`: events up to `seq` are committed (by this process's writer or,
    /// through a store signal, by another replica).
    pub fn notify(&self, job: &JobId, seq: u64) {
        if let Some(t) = self.watchers().get(job) {
            t.tx.send_if_modified(|m| {
                m.seq = m.seq.max(seq);
                // Always wake: a reader that cannot use the window re-reads the store anyway.
                true
            });
        }
    }

    /// Puts events this process just committed into the window of `job` (if it has readers) and
    /// wakes them.
    fn committed(&self, job: &JobId, events: Vec<JobEvent>) {
        let mut w = self.watchers();
        let Some(t) = w.get_mut(job) else {
            return;
        };
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        let first = events.first().map_or(0, |e| e.seq);
        if t.window.back().is_some_and(|b| b.event.seq + 1 != first) {
            // Not consecutive (another writer's events in between): start over from these.
            t.window.clear();
        }
        t.window.extend(events.into_iter().map(SharedEvent::new));
        let excess = t.window.len().saturating_sub(WINDOW);
        t.window.drain(..excess);
        t.tx.send_modify(|m| m.seq = m.seq.max(last));
    }

    /// What the window holds for a reader of `job` at `cursor`.
    fn recent(&self, job: &JobId, cursor: u64) -> Recent {
        let w = self.watchers();
        let Some(t) = w.get(job) else {
            return Recent::Miss;
        };
        if cursor >= t.tx.borrow().seq {
            return Recent::CaughtUp;
        }
        match (t.window.front(), t.window.back()) {
            (Some(front), Some(back))
                if front.event.seq <= cursor + 1 && back.event.seq > cursor =>
            {
                let skip = (cursor + 1 - front.event.seq) as usize;
                Recent::Events(t.window.range(skip..).take(READ_BATCH).cloned().collect())
            }
            _ => Recent::Miss,
        }
    }

    /// Wakes every reader and sends it back to the store (signals from other replicas may have
    /// been missed).
    pub fn notify_all(&self) {
        for t in self.watchers().values() {
            t.tx.send_modify(|m| m.resync += 1);
        }
    }

    /// Follows `job` from `after_seq`: replays what is stored, then waits for more, ending after
    /// the `Finished` event. Items go into a bounded channel fed by a task, which stops as soon as
    /// the receiver is dropped (a dropped stream never affects the job).
    pub fn follow(
        self: &Arc<Self>,
        job: JobId,
        after_seq: u64,
        keepalive: Duration,
        stop: CancellationToken,
    ) -> mpsc::Receiver<Result<StreamItem>> {
        let (tx, rx) = mpsc::channel(4);
        let log = Arc::clone(self);
        tokio::spawn(async move {
            let mut watch = log.watch(&job);
            let mut resync = watch.borrow_and_update().resync;
            let mut cursor = after_seq;
            // The store first, until a short read shows the reader reached what was committed
            // when it subscribed; every later commit of this process is then in the window.
            let mut from_store = true;
            // One timer for the whole stream, re-armed only when it fires: re-creating it for every
            // wait cost a timer-wheel insert and removal per event and reader (with 1,000 readers
            // of a busy job, several percent of the server's CPU).
            let mut last_sent = tokio::time::Instant::now();
            let quiet = tokio::time::sleep(keepalive);
            tokio::pin!(quiet);
            let outcome = 'follow: loop {
                let recent = if from_store {
                    Recent::Miss
                } else {
                    log.recent(&job, cursor)
                };
                let events = match recent {
                    Recent::Events(e) => e,
                    Recent::CaughtUp => Vec::new(),
                    Recent::Miss => match log.store.read_events(&job, cursor, READ_BATCH).await {
                        Ok(e) => {
                            from_store = e.len() >= READ_BATCH;
                            e.into_iter().map(SharedEvent::new).collect()
                        }
                        Err(e) => break Err(e),
                    },
                };
                if let Some(first) = events.first().map(|e| &e.event)
                    && first.seq != cursor + 1
                {
                    // Seqs have no gaps, so a jump means the events before `first` were pruned.
                    break Err(Error::out_of_range(
                        Reason::CursorExpired,
                        format!(
                            "events after seq {cursor} of job {job} are no longer retained; \
                             the oldest retained event has seq {}: resume with after_seq >= {}",
                            first.seq,
                            first.seq - 1
                        ),
                    ));
                }
                if let Some(last) = events.last().map(|e| &e.event) {
                    cursor = last.seq;
                    let done = last.kind.is_finished();
                    for message in messages(events) {
                        if tx.send(Ok(StreamItem::Events(message))).await.is_err() {
                            break 'follow Ok(());
                        }
                    }
                    last_sent = tokio::time::Instant::now();
                    if done {
                        break Ok(());
                    }
                    continue;
                }
                // Caught up: wait for a commit, `keepalive` without a message sent, the reader
                // leaving or shutdown.
                tokio::select! {
                    changed = watch.changed() => {
                        if changed.is_err() {
                            // Sender replaced/removed: re-subscribe, then re-read the store.
                            watch = log.watch(&job);
                            from_store = true;
                        }
                        let now = watch.borrow_and_update().resync;
                        if now != resync {
                            resync = now;
                            from_store = true;
                        }
                    }
                    () = &mut quiet => {
                        if last_sent.elapsed() >= keepalive {
                            if tx.send(Ok(StreamItem::Keepalive)).await.is_err() {
                                break Ok(());
                            }
                            last_sent = tokio::time::Instant::now();
                            // A lost signal from another replica delays a reader at most this long.
                            from_store = true;
                        }
                        quiet.as_mut().reset(last_sent + keepalive);
                    }
                    _ = tx.closed() => break Ok(()),
                    _ = stop.cancelled() => {
                        // Jobs record their final events before the stop token fires for readers,
                        // so one last read delivers them.
                        match log.store.read_events(&job, cursor, READ_BATCH).await {
                            Ok(events) if !events.is_empty() => {
                                let events = events.into_iter().map(SharedEvent::new).collect();
                                for message in messages(events) {
                                    if tx.send(Ok(StreamItem::Events(message))).await.is_err() {
                                        break;
                                    }
                                }
                            }
                            _ => {}
                        }
                        break Err(Error::unavailable(
                            Reason::ShuttingDown,
                            "server is shutting down; resume from your last seq on another server",
                        ));
                    }
                }
            };
            drop(watch);
            log.release(&job);
            if let Err(e) = outcome {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }
}

async fn writer(
    log: std::sync::Weak<EventLog>,
    store: DynStore,
    mut rx: mpsc::Receiver<WriteRequest>,
    stop: CancellationToken,
) {
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(256);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, 256) => n,
            _ = stop.cancelled() => {
                // Refuse new writes, but commit what is already queued.
                rx.close();
                rx.recv_many(&mut batch, 256).await
            }
        };
        if n == 0 {
            break;
        }
        let mut writes = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for req in batch.drain(..) {
            waiters.push(req.done);
            writes.push(req.write);
        }
        let results: Vec<Result<()>> = match store.append(writes.clone()).await {
            Ok(()) => waiters.iter().map(|_| Ok(())).collect(),
            // One bad write must not fail the other jobs' writes that shared its transaction:
            // retry each alone so only the offender sees the error.
            Err(e) if writes.len() > 1 => {
                tracing::warn!(error = %e, "batched append failed; retrying writes one by one");
                let mut rs = Vec::with_capacity(writes.len());
                for w in &writes {
                    rs.push(store.append(vec![w.clone()]).await);
                }
                rs
            }
            Err(e) => vec![Err(e)],
        };
        let log = log.upgrade();
        let mut state_changed = false;
        for ((write, done), result) in writes.into_iter().zip(waiters).zip(results) {
            match &result {
                Ok(()) => {
                    state_changed |= write.update.is_some();
                    if let Some(log) = &log {
                        log.committed(&write.job_id, write.events);
                    }
                }
                // Expected fencing: another replica settled the job after this one lost its lease.
                Err(e) if e.reason() == Reason::JobFinished => tracing::info!(
                    job = %write.job_id,
                    error = %e,
                    "event log append refused: job already finished"
                ),
                Err(e) => {
                    tracing::error!(job = %write.job_id, error = %e, "event log append failed")
                }
            }
            let _ = done.send(result);
        }
        if let Some(log) = &log
            && state_changed
        {
            log.job_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, Finished, JobState, Outcome, Timestamp, Usage};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{JobUpdate, contract, contract::NO_LIMITS};
    use std::io::Write;

    /// Collects formatted log lines so a test can check their levels.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn take(&self) -> String {
            String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().expect("log buffer")))
                .into_owned()
        }
    }

    fn update(state: JobState) -> Option<JobUpdate> {
        Some(JobUpdate {
            state,
            result: String::new(),
            usage: Usage::default(),
            conversation_id: None,
        })
    }

    fn text(seq: u64) -> JobEvent {
        JobEvent {
            seq,
            time: Timestamp(seq as i64),
            raw: None,
            kind: EventKind::Text { text: "x".into() },
        }
    }

    /// Events are cut into messages of at most [`MESSAGE_BYTES`], in order, each with at least
    /// one event (one larger than the cap goes alone).
    #[test]
    fn messages_hold_at_most_a_message_of_bytes() {
        let sized = |seq, len| {
            let mut e = text(seq);
            e.kind = EventKind::Text {
                text: "x".repeat(len),
            };
            SharedEvent::new(e)
        };
        let small: Vec<_> = (1..=1000).map(|s| sized(s, 10)).collect();
        assert_eq!(messages(small).len(), 1, "small events: one message");

        let third = MESSAGE_BYTES / 3;
        let events: Vec<_> = [third, third, third, 2 * MESSAGE_BYTES, 10, third]
            .into_iter()
            .zip(1..)
            .map(|(len, seq)| sized(seq, len))
            .collect();
        let cut = messages(events);
        let seqs: Vec<Vec<u64>> = cut
            .iter()
            .map(|m| m.iter().map(|e| e.event.seq).collect())
            .collect();
        // Three thirds and their overhead pass the cap: the third starts a new message.
        assert_eq!(seqs, [vec![1, 2], vec![3], vec![4], vec![5, 6]]);
        for m in &cut {
            let bytes: usize = m.iter().map(|e| e.size()).sum();
            assert!(m.len() == 1 || bytes <= MESSAGE_BYTES, "{bytes}");
        }
    }

    /// An append refused because the job is already finished (fencing after a lost lease) is
    /// logged at INFO; any other failed append stays an ERROR.
    #[tokio::test]
    async fn appends_to_finished_jobs_are_not_errors() {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .finish();
        // The runtime has one thread, so the writer task logs through this subscriber too.
        let _guard = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().expect("tempdir");
        let store: DynStore = Arc::new(
            SqliteStore::open(&dir.path().join("agentd.db"))
                .await
                .expect("open store"),
        );
        let now = Timestamp(1_000_000);
        let session = store
            .create_session(&contract::session("t", now))
            .await
            .expect("session");
        let job = store
            .create_job(&contract::job(&session, now), now, &NO_LIMITS)
            .await
            .expect("job");

        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let log = EventLog::start(store, &tracker, stop.clone());
        let write = |events, update| JobWrite {
            job_id: job.id.clone(),
            events,
            update,
        };
        log.write(write(vec![], update(JobState::Running { started: now })))
            .await
            .expect("running");
        let done = JobState::Finished(Finished {
            started: Some(now),
            ended: now,
            outcome: Outcome::Succeeded,
            exit: None,
        });
        log.write(write(vec![text(1)], update(done)))
            .await
            .expect("finished");
        logs.take();

        let late = log.write(write(vec![text(2)], None)).await.unwrap_err();
        assert_eq!(late.reason(), Reason::JobFinished, "{late}");
        let lines = logs.take();
        assert!(
            lines.contains("INFO") && lines.contains("job already finished"),
            "{lines}"
        );
        assert!(!lines.contains("ERROR"), "{lines}");

        // A write to a job that does not exist is a bug, not fencing.
        let unknown = JobWrite {
            job_id: JobId::generate(),
            events: vec![text(1)],
            update: None,
        };
        assert!(log.write(unknown).await.is_err());
        let lines = logs.take();
        assert!(
            lines.contains("ERROR") && lines.contains("event log append failed"),
            "{lines}"
        );

        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
