//! Following a tenant's jobs (issue #19): `watch_jobs` streams the tenant's change sequence
//! (every job creation, start and finish, see `Store::read_changes`) from a cursor, filtered;
//! `wait_job` answers once one job is final. Both read the store only, and are woken by the event
//! log's change notifications (this replica's commits, and other replicas' through store
//! signals), with a periodic re-read in case a signal was lost.
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
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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
    pub change: JobChange,
    /// Set with `include_events`.
    pub events: Option<ChangeEvents>,
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
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let outcome = core
                .follow_changes(&tenant, matcher, start, changes, &tx)
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
        mut matcher: Matcher,
        mut cursor: u64,
        mut changes: tokio::sync::watch::Receiver<u64>,
        tx: &mpsc::Sender<Result<WatchItem>>,
    ) -> Result<()> {
        let keepalive = self.config.timing.stream_keepalive;
        let mut last_sent = tokio::time::Instant::now();
        let quiet = tokio::time::sleep(keepalive);
        tokio::pin!(quiet);
        loop {
            changes.borrow_and_update();
            let batch = self.store.read_changes(tenant, cursor, READ_BATCH).await?;
            let full = batch.len() >= READ_BATCH;
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
