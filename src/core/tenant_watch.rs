//! Following a tenant's jobs (issue #19): `watch_jobs` streams the tenant's change sequence
//! (every job creation, start and finish, see `Store::read_changes`) from a cursor, filtered;
//! `wait_job` answers once one job is final. Both read the store only, and are woken by the event
//! log's change notifications (this replica's commits, and other replicas' through store
//! signals), with a periodic re-read in case a signal was lost.
//!
//! The watchers of one tenant share their reads: woken by the same signal, each would read the
//! same new changes (with 100 watchers, 100 store reads per change: in the `watch` bench's
//! profile, SQLite, the allocator and the blocking threads' wake-ups were most of the server's
//! time, the conversion and encoding of the changes under 3%), so the first one reads them for
//! all (`ChangeFeed`).
//!
//! With `include_events` each change also carries the job's events since the job's previous
//! change the watch admits: the change rows keep the job's last event seq of their moment, so a
//! watcher resuming from its cursor gets every event of its jobs once, in order, with the changes.

use super::Core;
use super::jobs::JobView;
use crate::domain::{JobEvent, JobState, SessionId, TenantId};
use crate::error::{Error, Reason, Result};
use crate::events::{MessageBytes, approx_size};
use crate::store::JobChange;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Changes read from the store at a time.
const READ_BATCH: usize = 256;
/// Messages buffered per watcher: a slow watcher reads the store further behind instead of
/// holding memory.
const WATCH_BUFFER: usize = 8;
/// With `include_events`: most events one change carries; their bytes per message are capped
/// like every stream's ([`MessageBytes`]). With the messages buffered, these bound a watcher's
/// memory.
const EVENTS_PER_CHANGE: usize = 1000;
const WATCH_BUFFER_WITH_EVENTS: usize = 2;
/// Events read from the store at a time while filling one change: small, so the byte cap stops
/// the reading before much is held.
const EVENTS_READ: usize = 100;
/// Sessions whose label match a watcher remembers before it forgets them all.
const SESSION_CACHE: usize = 4096;
/// Changes deleted per prune call.
const PRUNE_BATCH: usize = 10_000;
/// WaitJob's wait when the request names none, and the longest it may name.
const WAIT_DEFAULT: Duration = Duration::from_secs(60);
const WAIT_MAX_SECONDS: u32 = 3600;

/// Which changes a watcher receives; empty parts match everything.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    pub session_id: String,
    pub labels: BTreeMap<String, String>,
    pub agents: Vec<String>,
    /// State names as in [`crate::domain::JobState::name`].
    pub states: Vec<&'static str>,
    /// Not a filter: each change also carries the job's events since its previous admitted one.
    pub include_events: bool,
}

impl WatchFilter {
    fn admits_state(&self, state: &str) -> bool {
        self.states.is_empty() || self.states.contains(&state)
    }
}

/// What a watcher receives.
#[derive(Debug)]
pub enum WatchItem {
    /// Matching changes, in cursor order.
    Changes(Vec<WatchedChange>),
    /// Nothing matching for a while (or the stream's start): the position read up to.
    Keepalive { cursor: u64 },
}

/// A change as a watcher receives it.
#[derive(Debug)]
pub struct WatchedChange {
    /// Shared with the tenant's other watchers.
    pub change: Arc<JobChange>,
    /// Set with `include_events`.
    pub events: Option<ChangeEvents>,
}

/// The change feeds of the tenants that have watchers.
#[derive(Default)]
pub(super) struct Feeds(Mutex<HashMap<TenantId, Weak<ChangeFeed>>>);

impl Feeds {
    /// The tenant's feed, shared with its other watchers while any holds it.
    fn get(&self, tenant: &TenantId) -> Arc<ChangeFeed> {
        // A poisoned lock only means a panic mid-insert; the map is still valid.
        let mut feeds = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feeds.get(tenant).and_then(Weak::upgrade) {
            return feed;
        }
        feeds.retain(|_, f| f.strong_count() > 0);
        let feed = Arc::new(ChangeFeed::default());
        feeds.insert(tenant.clone(), Arc::downgrade(&feed));
        feed
    }
}

/// The latest read of one tenant's changes. Watchers woken by one signal find it fresh after
/// the first of them read, and take their changes from it; one far behind it reads alone.
#[derive(Default)]
struct ChangeFeed {
    latest: tokio::sync::Mutex<Option<Page>>,
}

/// Changes after `after`, as one read found them.
struct Page {
    /// The change signal's value when the read began: the page holds every change committed
    /// before that signal was sent.
    signal: u64,
    after: u64,
    changes: Vec<Arc<JobChange>>,
    /// The read filled its limit: changes after the last may exist.
    full: bool,
}

impl Page {
    /// The changes after `cursor`, when this page holds all of them a watcher that saw signal
    /// `seen` must get (with whether more may follow them).
    fn serve(&self, cursor: u64, seen: u64) -> Option<(Vec<Arc<JobChange>>, bool)> {
        let last = self.changes.last().map_or(self.after, |c| c.seq);
        if self.signal < seen || cursor < self.after || (self.full && cursor >= last) {
            return None;
        }
        let from = self.changes.partition_point(|c| c.seq <= cursor);
        Some((self.changes[from..].to_vec(), self.full))
    }
}

impl ChangeFeed {
    /// The tenant's changes after `cursor` (up to a read batch, and whether more may follow),
    /// including every change committed before the signal `seen` that the watcher saw last;
    /// with `resync`, read from the store whatever the page holds.
    async fn read(
        &self,
        core: &Core,
        tenant: &TenantId,
        cursor: u64,
        (seen, resync): (u64, bool),
        signal: &watch::Receiver<u64>,
    ) -> Result<(Vec<Arc<JobChange>>, bool)> {
        let mut latest = self.latest.lock().await;
        if let Some(page) = latest.as_ref() {
            if !resync && let Some(served) = page.serve(cursor, seen) {
                return Ok(served);
            }
            if cursor < page.after {
                // Behind the others: its read would not serve them.
                drop(latest);
                let page = Self::page(core, tenant, cursor, seen).await?;
                return Ok((page.changes, page.full));
            }
        }
        // Read for every watcher at this position, holding the lock so that the others woken
        // with it wait for this read instead of making their own.
        let now = *signal.borrow();
        let page = Self::page(core, tenant, cursor, now).await?;
        let served = (page.changes.clone(), page.full);
        *latest = Some(page);
        Ok(served)
    }

    async fn page(core: &Core, tenant: &TenantId, after: u64, signal: u64) -> Result<Page> {
        let changes = core.store.read_changes(tenant, after, READ_BATCH).await?;
        Ok(Page {
            signal,
            after,
            full: changes.len() >= READ_BATCH,
            changes: changes.into_iter().map(Arc::new).collect(),
        })
    }
}

/// The job's events a change carries (`include_events`).
#[derive(Debug, Default)]
pub struct ChangeEvents {
    /// The job's last event seq at its previous change the watch admits (0: none); the events
    /// are those after it up to the change's `job.last_seq`, fewer where retention pruned some.
    pub after_seq: u64,
    pub events: Vec<JobEvent>,
    /// The cap cut `events` short: the rest are to be read from the event log.
    pub truncated: bool,
}

/// A filter bound to one tenant, with the label verdicts of the sessions it has seen.
struct Matcher {
    filter: WatchFilter,
    session: Option<SessionId>,
    sessions: HashMap<SessionId, bool>,
}

impl Matcher {
    async fn matches(&mut self, core: &Core, tenant: &TenantId, change: &JobChange) -> bool {
        let job = &change.job;
        let f = &self.filter;
        if self.session.as_ref().is_some_and(|s| *s != job.session_id)
            || (!f.agents.is_empty() && !f.agents.contains(&job.spec.agent))
            || (!f.states.is_empty() && !f.states.contains(&job.state.name()))
        {
            return false;
        }
        if f.labels.is_empty() {
            return true;
        }
        if let Some(&known) = self.sessions.get(&job.session_id) {
            return known;
        }
        // A session that is gone, or cannot be read now, does not match; only answers from the
        // store are remembered.
        let Ok(session) = core.store.get_session(tenant, &job.session_id).await else {
            return false;
        };
        let verdict = session.is_some_and(|s| {
            f.labels
                .iter()
                .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == v))
        });
        if self.sessions.len() >= SESSION_CACHE {
            self.sessions.clear();
        }
        self.sessions.insert(job.session_id.clone(), verdict);
        verdict
    }
}

impl Core {
    /// Follows the tenant's job changes after `after` (`None`: from now on). The stream never
    /// ends by itself: it stops when the receiver is dropped, on shutdown, or on a store error.
    pub async fn watch_jobs(
        self: &Arc<Self>,
        tenant: &TenantId,
        filter: WatchFilter,
        after: Option<u64>,
    ) -> Result<mpsc::Receiver<Result<WatchItem>>> {
        let session = if filter.session_id.is_empty() {
            None
        } else {
            Some(self.owned_session(tenant, &filter.session_id).await?.id)
        };
        // Subscribed before the first read, so no change committed after it is slept through.
        let changes = self.events.changes();
        let start = match after {
            Some(cursor) => {
                // Checked now, so a bad cursor is the call's error rather than the stream's.
                self.store.read_changes(tenant, cursor, 1).await?;
                cursor
            }
            None => self.store.last_change(tenant).await?,
        };
        let matcher = Matcher {
            filter,
            session,
            sessions: HashMap::new(),
        };
        let buffer = if matcher.filter.include_events {
            WATCH_BUFFER_WITH_EVENTS
        } else {
            WATCH_BUFFER
        };
        let (tx, rx) = mpsc::channel(buffer);
        if after.is_none() {
            let _ = tx.try_send(Ok(WatchItem::Keepalive { cursor: start }));
        }
        let core = Arc::clone(self);
        let feed = self.feeds.get(tenant);
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let outcome = core
                .follow_changes(&tenant, &feed, matcher, start, changes, &tx)
                .await;
            if let Err(e) = outcome {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    async fn follow_changes(
        &self,
        tenant: &TenantId,
        feed: &ChangeFeed,
        mut matcher: Matcher,
        mut cursor: u64,
        mut changes: tokio::sync::watch::Receiver<u64>,
        tx: &mpsc::Sender<Result<WatchItem>>,
    ) -> Result<()> {
        let keepalive = self.config.timing.stream_keepalive;
        let mut last_sent = tokio::time::Instant::now();
        let quiet = tokio::time::sleep(keepalive);
        tokio::pin!(quiet);
        // Set when the keepalive timer fires: the next read goes to the store even if no signal
        // came, in case one was lost.
        let mut resync = false;
        loop {
            let seen = *changes.borrow_and_update();
            let (batch, full) = feed
                .read(self, tenant, cursor, (seen, resync), &changes)
                .await?;
            resync = false;
            let (mut out, mut budget) = (Vec::new(), MessageBytes::default());
            for c in batch {
                cursor = c.seq;
                if !matcher.matches(self, tenant, &c).await {
                    continue;
                }
                let (events, size) = if matcher.filter.include_events {
                    let (e, size) = self.change_events(tenant, &matcher.filter, &c).await?;
                    (Some(e), size)
                } else {
                    (None, 0)
                };
                // A change whose events would make the message too big starts the next one.
                if !budget.add(size) {
                    if tx.send(Ok(WatchItem::Changes(out))).await.is_err() {
                        return Ok(());
                    }
                    (out, budget) = (Vec::new(), MessageBytes::default());
                    budget.add(size);
                }
                out.push(WatchedChange { change: c, events });
            }
            if !out.is_empty() {
                if tx.send(Ok(WatchItem::Changes(out))).await.is_err() {
                    return Ok(());
                }
                last_sent = tokio::time::Instant::now();
            }
            if full {
                continue;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                () = &mut quiet => {
                    if last_sent.elapsed() >= keepalive {
                        if tx.send(Ok(WatchItem::Keepalive { cursor })).await.is_err() {
                            return Ok(());
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                    // The loop re-reads the store: a lost signal delays a watcher at most this.
                    resync = true;
                    quiet.as_mut().reset(last_sent + keepalive);
                }
                () = tx.closed() => return Ok(()),
                () = self.streams_stop.cancelled() => {
                    return Err(Error::unavailable(
                        Reason::ShuttingDown,
                        "server is shutting down; resume from your last cursor on another server",
                    ));
                }
            }
        }
    }

    /// The events change `c` carries, with about how many bytes they take: the job's events
    /// after [`Core::events_start`] up to its last seq at the change, capped.
    async fn change_events(
        &self,
        tenant: &TenantId,
        filter: &WatchFilter,
        c: &JobChange,
    ) -> Result<(ChangeEvents, usize)> {
        let after_seq = self.events_start(tenant, filter, c).await?;
        let until = c.job.last_seq;
        let mut out = ChangeEvents {
            after_seq,
            ..ChangeEvents::default()
        };
        let (mut next, mut budget) = (after_seq, MessageBytes::default());
        'read: while next < until {
            let want = (EVENTS_PER_CHANGE - out.events.len()).clamp(1, EVENTS_READ);
            let read = self.store.read_events(&c.job.id, next, want).await?;
            if read.is_empty() {
                break; // pruned (or deleted) since the change was read
            }
            for e in read {
                if e.seq > until {
                    break 'read;
                }
                if out.events.len() >= EVENTS_PER_CHANGE || !budget.add(approx_size(&e)) {
                    out.truncated = true;
                    break 'read;
                }
                next = e.seq;
                out.events.push(e);
            }
        }
        Ok((out, budget.bytes()))
    }

    /// The job's last event seq at its latest change before `c` that the watch's state filter
    /// admits (0 when there is none), so that each event goes with exactly one change the
    /// watcher receives. A job's states only move forward (QUEUED, RUNNING, final), so a change
    /// whose earlier states the filter all skips needs no look-up.
    async fn events_start(
        &self,
        tenant: &TenantId,
        filter: &WatchFilter,
        c: &JobChange,
    ) -> Result<u64> {
        let earlier: &[&str] = match c.job.state {
            JobState::Queued => &[],
            JobState::Running { .. } => &["QUEUED"],
            JobState::Finished(_) => &["QUEUED", "RUNNING"],
        };
        if !earlier.iter().any(|s| filter.admits_state(s)) {
            return Ok(0);
        }
        let marks = self
            .store
            .job_change_marks(tenant, &c.job.id, c.seq)
            .await?;
        Ok(marks
            .iter()
            .rev()
            .find(|m| filter.admits_state(m.state))
            .map_or(0, |m| m.last_seq))
    }

    /// Deletes job changes older than the event retention (watch cursors from before then
    /// answer CURSOR_EXPIRED), in batches like the events.
    pub(super) async fn prune_changes(&self) {
        let retention = self.config.limits.event_retention;
        if retention.is_zero() {
            return;
        }
        let before = crate::domain::Timestamp(
            crate::domain::Timestamp::now()
                .micros()
                .saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX)),
        );
        loop {
            match self.store.prune_changes(before, PRUNE_BATCH).await {
                Ok(n) if (n as usize) < PRUNE_BATCH => return,
                Ok(_) if self.shutdown.is_triggered() => return,
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune job changes");
                    return;
                }
            }
        }
    }

    /// The job once it is final, or as it is when `timeout_seconds` (0: a minute) pass first;
    /// the flag says whether the wait timed out.
    pub async fn wait_job(
        &self,
        tenant: &TenantId,
        id: &str,
        timeout_seconds: u32,
    ) -> Result<(JobView, bool)> {
        if timeout_seconds > WAIT_MAX_SECONDS {
            return Err(Error::invalid(
                Reason::InvalidField,
                "timeout_seconds",
                format!("timeout_seconds must be at most {WAIT_MAX_SECONDS}"),
            ));
        }
        let wait = match timeout_seconds {
            0 => WAIT_DEFAULT,
            s => Duration::from_secs(u64::from(s)),
        };
        let deadline = tokio::time::Instant::now() + wait;
        let recheck = self.config.timing.stream_keepalive;
        let mut changes = self.events.changes();
        loop {
            changes.borrow_and_update();
            let job = self.owned_job(tenant, id).await?;
            if job.state.is_finished() {
                return Ok((self.job_view(job).await?, false));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok((self.job_view(job).await?, true));
            }
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep_until(deadline.min(now + recheck)) => {}
                () = self.streams_stop.cancelled() => {
                    return Err(Error::unavailable(
                        Reason::ShuttingDown,
                        "server is shutting down; wait again on another server",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Timestamp;
    use crate::store::contract;

    fn page(signal: u64, after: u64, seqs: &[u64], full: bool) -> Page {
        let session = contract::session("t", Timestamp(1));
        let job = contract::job(&session, Timestamp(1));
        Page {
            signal,
            after,
            changes: seqs
                .iter()
                .map(|&seq| {
                    Arc::new(JobChange {
                        seq,
                        time: Timestamp(1),
                        job: job.clone(),
                    })
                })
                .collect(),
            full,
        }
    }

    fn seqs(served: Option<(Vec<Arc<JobChange>>, bool)>) -> Option<(Vec<u64>, bool)> {
        served.map(|(cs, full)| (cs.iter().map(|c| c.seq).collect(), full))
    }

    /// A page serves a watcher only what it holds entirely: the changes after the watcher's
    /// cursor, when the read began after the signal the watcher saw and started at or before
    /// the cursor; past the end of a full page, the store must be read.
    #[test]
    fn a_page_serves_only_watchers_it_holds_everything_for() {
        let p = page(5, 10, &[11, 12, 13], false);
        assert_eq!(seqs(p.serve(10, 5)), Some((vec![11, 12, 13], false)));
        assert_eq!(seqs(p.serve(12, 4)), Some((vec![13], false)));
        assert_eq!(seqs(p.serve(13, 5)), Some((vec![], false)), "caught up");
        assert_eq!(seqs(p.serve(20, 5)), Some((vec![], false)), "ahead of it");
        assert_eq!(seqs(p.serve(10, 6)), None, "read before the signal seen");
        assert_eq!(seqs(p.serve(9, 5)), None, "starts after the cursor");

        let full = page(5, 10, &[11, 12, 13], true);
        assert_eq!(seqs(full.serve(11, 5)), Some((vec![12, 13], true)));
        assert_eq!(seqs(full.serve(13, 5)), None, "more may follow a full page");

        let empty = page(5, 10, &[], false);
        assert_eq!(seqs(empty.serve(10, 5)), Some((vec![], false)));
    }
}
