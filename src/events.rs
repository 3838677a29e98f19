//! The event log: the only way job events and job state changes reach the store, and the way
//! readers follow a job live.
//!
//! Writes go through one writer task that takes everything queued at that moment and appends it
//! in one store transaction (group commit: one commit for many events, across jobs). Only after the
//! commit are readers woken, through a per-job `watch` carrying the last committed seq, so a reader
//! can never see a seq that is not durable. Notifications carry no data: readers always read the
//! store after their cursor, so a slow reader simply reads further behind and never holds up an
//! agent, and a reader that reconnects with its last seq loses nothing.

use crate::domain::{JobEvent, JobId};
use crate::error::{Error, Result};
use crate::store::{DynStore, JobWrite};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most events returned to a reader in one batch.
const READ_BATCH: usize = 1000;
/// Queued writes before writers wait (backpressure, bounded memory).
const WRITE_QUEUE: usize = 1024;

struct WriteRequest {
    write: JobWrite,
    done: oneshot::Sender<Result<()>>,
}

/// Appends job writes to the store in batches and wakes readers after each commit.
pub struct EventLog {
    store: DynStore,
    tx: mpsc::Sender<WriteRequest>,
    watchers: Mutex<HashMap<JobId, watch::Sender<u64>>>,
}

/// What a reader of a job's log receives.
#[derive(Debug)]
pub enum StreamItem {
    /// Consecutive events; the batch ends with the job's `Finished` event when the job is done.
    Events(Vec<JobEvent>),
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
        });
        tracker.spawn(writer(Arc::downgrade(&log), log.store.clone(), rx, stop));
        log
    }

    /// Durably appends `write`; returns once it is committed and readers were woken.
    pub async fn write(&self, write: JobWrite) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(WriteRequest { write, done })
            .await
            .map_err(|_| Error::internal("event log writer stopped"))?;
        rx.await
            .map_err(|_| Error::internal("event log writer stopped"))?
    }

    fn watchers(&self) -> MutexGuard<'_, HashMap<JobId, watch::Sender<u64>>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that changes whenever new events of `job` are committed.
    fn watch(&self, job: &JobId) -> watch::Receiver<u64> {
        self.watchers()
            .entry(job.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn release(&self, job: &JobId) {
        let mut w = self.watchers();
        if w.get(job).is_some_and(|tx| tx.receiver_count() == 0) {
            w.remove(job);
        }
    }

    /// Wakes the readers of `job`: events up to `seq` are committed (by this process's writer or,
    /// through a store signal, by another replica).
    pub fn notify(&self, job: &JobId, seq: u64) {
        if let Some(tx) = self.watchers().get(job) {
            tx.send_if_modified(|last| {
                if seq > *last {
                    *last = seq;
                }
                // Always wake: a reader re-reads the store after its own cursor anyway.
                true
            });
        }
    }

    /// Wakes every reader (signals from other replicas may have been missed).
    pub fn notify_all(&self) {
        for tx in self.watchers().values() {
            tx.send_modify(|_| {});
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
            let mut cursor = after_seq;
            let outcome = loop {
                let events = match log.store.read_events(&job, cursor, READ_BATCH).await {
                    Ok(e) => e,
                    Err(e) => break Err(e),
                };
                if let Some(first) = events.first()
                    && first.seq != cursor + 1
                {
                    // Seqs have no gaps, so a jump means the events before `first` were pruned.
                    break Err(Error::out_of_range(
                        crate::error::Reason::CursorExpired,
                        format!(
                            "events after seq {cursor} of job {job} are no longer retained; \
                             the oldest retained event has seq {}: resume with after_seq >= {}",
                            first.seq,
                            first.seq - 1
                        ),
                    ));
                }
                if let Some(last) = events.last() {
                    cursor = last.seq;
                    let done = last.kind.is_finished();
                    if tx.send(Ok(StreamItem::Events(events))).await.is_err() {
                        break Ok(());
                    }
                    if done {
                        break Ok(());
                    }
                    continue;
                }
                // Caught up: wait for a commit, a keepalive tick, the reader leaving or shutdown.
                tokio::select! {
                    changed = watch.changed() => {
                        if changed.is_err() {
                            // Sender replaced/removed: re-subscribe, then re-read the store.
                            watch = log.watch(&job);
                        }
                    }
                    _ = tokio::time::sleep(keepalive) => {
                        if tx.send(Ok(StreamItem::Keepalive)).await.is_err() {
                            break Ok(());
                        }
                    }
                    _ = tx.closed() => break Ok(()),
                    _ = stop.cancelled() => {
                        // Jobs record their final events before the stop token fires for readers,
                        // so one last read delivers them.
                        match log.store.read_events(&job, cursor, READ_BATCH).await {
                            Ok(events) if !events.is_empty() => {
                                let _ = tx.send(Ok(StreamItem::Events(events))).await;
                            }
                            _ => {}
                        }
                        break Err(Error::unavailable(
                            crate::error::Reason::ShuttingDown,
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
            let last = req.write.events.last().map(|e| e.seq);
            waiters.push((req.write.job_id.clone(), last, req.done));
            writes.push(req.write);
        }
        let results: Vec<Result<()>> = match store.append(writes.clone()).await {
            Ok(()) => waiters.iter().map(|_| Ok(())).collect(),
            // One bad write must not fail the other jobs' writes that shared its transaction:
            // retry each alone so only the offender sees the error.
            Err(e) if writes.len() > 1 => {
                tracing::warn!(error = %e, "batched append failed; retrying writes one by one");
                let mut rs = Vec::with_capacity(writes.len());
                for w in writes {
                    rs.push(store.append(vec![w]).await);
                }
                rs
            }
            Err(e) => vec![Err(e)],
        };
        let log = log.upgrade();
        for ((job, last, done), result) in waiters.into_iter().zip(results) {
            match &result {
                Ok(()) => {
                    if let (Some(log), Some(seq)) = (&log, last) {
                        log.notify(&job, seq);
                    }
                }
                Err(e) => tracing::error!(job = %job, error = %e, "event log append failed"),
            }
            let _ = done.send(result);
        }
    }
}
