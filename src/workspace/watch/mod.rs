//! WatchFiles: one inotify watch ([`tree`]) per watched session, shared by all its streams. Raw
//! changes cross from the tree's thread into a bounded channel; a coalescer task
//! gathers them over a short window (a file written in many pieces becomes one MODIFIED, created
//! then deleted becomes nothing), reads each survivor's kind and size fd-relative (never following
//! a link), numbers them and appends them to a bounded ring. Streams read the ring from their
//! cursor, so each costs no memory of its own; a cursor that fell off the ring is CURSOR_EXPIRED.
//!
//! Sequence numbers start at the watch's creation time in microseconds, so a cursor from an
//! earlier watch of the same session (dropped a minute after its last stream left) can never be
//! mistaken for one of the current watch.
//!
//! A watch that cannot go on (the workspace grew past [`tree::MAX_DIRS`] directories, or the
//! host's inotify limit) ends its streams with WATCH_LIMIT_REACHED once they have read what it
//! published; the next WatchFiles starts a new watch, or is refused for the same reason.
//!
//! A rewind replaces the workspace directory under a live watch, whose inotify watches stay on
//! the replaced tree. `suspend` before the swap makes the coalescer drop what the old tree still
//! reports (its removal would read as every file deleted); `rearm` after it watches the new tree
//! and publishes one reset marker: an OVERFLOW event with `from_path` [`RESET_MARKER`], which
//! clients already treat as "list the files again". Raw events carry the generation of the
//! inotify watcher that saw them, so nothing of the old tree leaks past the marker.

mod bounds;
mod tree;

pub use bounds::{MAX_WATCHED, MAX_WATCHED_PER_TENANT};

use super::fsops::{self, kind_of, open_parent, stat_at};
use super::path::{normalize_dir, split_parent};
use crate::domain::{FileKind, SessionId, TenantId};
use crate::error::{Error, Reason, Result};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Events kept per session for resuming streams.
pub const RING_EVENTS: usize = 4096;
/// Raw events queued between notify's thread and the coalescer; beyond it they are dropped and an
/// OVERFLOW event says so.
const RAW_QUEUE: usize = 4096;
/// Paths pending in one coalescing window; beyond it the window is flushed early.
const MAX_PENDING: usize = 2048;
/// How long changes are gathered before they are published.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// How long a watch outlives its last stream, so a reconnecting client can resume.
const LINGER: Duration = Duration::from_secs(60);
/// The `from_path` of the OVERFLOW event published when a rewind replaced the workspace.
pub const RESET_MARKER: &str = "(rewound)";

/// A raw change, tagged with the generation of the watcher that saw it.
type Raw = (u64, tree::Change);

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Created,
    Modified,
    Deleted,
    Renamed,
    Overflow,
}

/// One coalesced change of a watched workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub seq: u64,
    pub change: ChangeType,
    pub path: String,
    /// The old path of a rename.
    pub from_path: String,
    pub kind: Option<FileKind>,
    pub size: u64,
    /// Microseconds since the Unix epoch.
    pub time_micros: i64,
}

struct Ring {
    events: VecDeque<WatchEvent>,
    next_seq: u64,
}

/// The shared watch of one session.
struct SessionWatch {
    ring: Mutex<Ring>,
    published: watch::Sender<u64>,
    streams: AtomicUsize,
    /// Set when raw events were dropped; the coalescer turns it into an OVERFLOW event.
    overflow: Arc<AtomicBool>,
    /// Set when the session is deleted or the watch failed: streams end.
    closed: AtomicBool,
    /// Why the watch failed, told to each stream once it has read what was published.
    failure: Mutex<Option<Error>>,
    /// Bumped by `suspend` and `rearm`: raw events of an older watcher are dropped.
    generation: AtomicU64,
    /// What the watcher feeds; a re-armed watcher feeds the same coalescer.
    raw_tx: mpsc::Sender<Raw>,
    /// The workspace as the coalescer reads it, replaced by `rearm`.
    ws: Mutex<Arc<OwnedFd>>,
    /// Kept alive with the watch; dropping it stops inotify (and the coalescer, once the watch
    /// itself is gone).
    watcher: Mutex<Option<tree::TreeWatch>>,
    /// Its place in the counts of watched sessions, through which its directories are counted.
    slot: bounds::Slot,
}

/// Every session's watch. Cheap to clone.
#[derive(Clone, Default)]
pub struct Watches {
    map: Arc<Mutex<HashMap<SessionId, Arc<SessionWatch>>>>,
    bounds: bounds::Bounds,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watches")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A stream's view of a session's watch.
pub struct Subscription {
    watch: Arc<SessionWatch>,
    watches: Watches,
    session: SessionId,
    cursor: u64,
    filter: Vec<String>,
    rx: watch::Receiver<u64>,
    /// The watch's failure was told to this stream.
    told: bool,
}

impl Watches {
    /// Subscribes to the session's changes after `after_seq` (0: only new ones), starting its
    /// watch if none runs (`tenant`'s, counted against its bound). `ws` is the workspace, open
    /// (the caller checked the session).
    pub async fn subscribe(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        ws: OwnedFd,
        paths: &[String],
        after_seq: u64,
    ) -> Result<Subscription> {
        let mut filter = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            filter.push(normalize_dir(p, &format!("paths[{i}]"))?);
        }
        if filter.iter().any(String::is_empty) {
            filter.clear();
        }
        let existing = lock(&self.map).get(session).cloned();
        let watch = match existing {
            Some(w) if !w.closed.load(Ordering::SeqCst) => w,
            _ => self.start(tenant, session, ws).await?,
        };
        watch.streams.fetch_add(1, Ordering::SeqCst);
        let sub = Subscription {
            rx: watch.published.subscribe(),
            watch,
            watches: self.clone(),
            session: session.clone(),
            cursor: 0,
            filter,
            told: false,
        };
        sub.position(after_seq)
    }

    async fn start(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        ws: OwnedFd,
    ) -> Result<Arc<SessionWatch>> {
        let slot = self.bounds.session(tenant)?;
        let (raw_tx, raw_rx) = mpsc::channel(RAW_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let ws = Arc::new(ws);
        let watcher = arm(raw_tx.clone(), overflow.clone(), 0, ws.clone(), slot.dirs()).await?;
        let first = u64::try_from(now_micros()).unwrap_or(1).max(1);
        let (published, _) = watch::channel(first - 1);
        let sw = Arc::new(SessionWatch {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                next_seq: first,
            }),
            published,
            streams: AtomicUsize::new(0),
            overflow,
            closed: AtomicBool::new(false),
            failure: Mutex::new(None),
            generation: AtomicU64::new(0),
            raw_tx,
            ws: Mutex::new(ws),
            watcher: Mutex::new(Some(watcher)),
            slot,
        });
        let mut map = lock(&self.map);
        if let Some(w) = map.get(session)
            && !w.closed.load(Ordering::SeqCst)
        {
            // Another stream started one meanwhile: use it, drop ours.
            return Ok(w.clone());
        }
        map.insert(session.clone(), sw.clone());
        drop(map);
        tokio::spawn(coalesce(Arc::downgrade(&sw), raw_rx));
        Ok(sw)
    }

    /// The session's workspace directory is about to be replaced (a rewind): from now on the
    /// current watcher's events are dropped. A no-op when nothing watches the session.
    pub fn suspend(&self, session: &SessionId) {
        if let Some(w) = lock(&self.map).get(session) {
            w.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The session's workspace directory was replaced (or its replacement failed): watches the
    /// directory now open at `ws` and publishes the reset marker. If the new tree cannot be
    /// watched the session's streams end (the client reconnects and gets the error), rather than
    /// watch nothing in silence.
    pub async fn rearm(&self, session: &SessionId, ws: OwnedFd) {
        let Some(sw) = lock(&self.map).get(session).cloned() else {
            return;
        };
        let generation = sw.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let ws = Arc::new(ws);
        let armed = arm(
            sw.raw_tx.clone(),
            sw.overflow.clone(),
            generation,
            ws.clone(),
            sw.slot.dirs(),
        )
        .await;
        match armed {
            Ok(watcher) => {
                *lock(&sw.ws) = ws;
                // The old watcher goes only now: until here its events were already dropped.
                drop(lock(&sw.watcher).replace(watcher));
                let marker = event(
                    ChangeType::Overflow,
                    String::new(),
                    RESET_MARKER.to_owned(),
                    None,
                    0,
                    now_micros(),
                );
                publish(&sw, vec![marker]);
            }
            Err(e) => {
                tracing::warn!(session = %session, error = %e,
                    "cannot watch the rewound workspace; its watch streams end");
                self.remove(session);
            }
        }
    }

    /// Stops the session's watch (the session is being deleted); its streams end.
    pub fn remove(&self, session: &SessionId) {
        let removed = lock(&self.map).remove(session);
        if let Some(w) = removed {
            w.closed.store(true, Ordering::SeqCst);
            w.published.send_modify(|_| {});
        }
    }

    fn release(&self, session: &SessionId, watch: &Arc<SessionWatch>) {
        if watch.streams.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let this = self.clone();
        let session = session.clone();
        let weak = Arc::downgrade(watch);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            this.remove(&session);
            return;
        };
        handle.spawn(async move {
            tokio::time::sleep(LINGER).await;
            let mut map = lock(&this.map);
            if let Some(w) = weak.upgrade()
                && w.streams.load(Ordering::SeqCst) == 0
                && map.get(&session).is_some_and(|m| Arc::ptr_eq(m, &w))
            {
                map.remove(&session);
            }
        });
    }
}

/// Starts watching the workspace open at `ws`, feeding `raw_tx` with changes tagged
/// `generation`.
async fn arm(
    raw_tx: mpsc::Sender<Raw>,
    overflow: Arc<AtomicBool>,
    generation: u64,
    ws: Arc<OwnedFd>,
    budget: bounds::DirBudget,
) -> Result<tree::TreeWatch> {
    super::blocking(move || {
        let send = move |change: tree::Change| {
            if let tree::Change::Failed(_) = change {
                // The last word of a watch that stops: it must not be lost to a full queue (this
                // is the tree's own thread, which may block).
                let _ = raw_tx.blocking_send((generation, change));
            } else if raw_tx.try_send((generation, change)).is_err() {
                overflow.store(true, Ordering::Relaxed);
            }
        };
        tree::arm(ws.as_fd(), budget, Box::new(send))
    })
    .await?
}

impl Subscription {
    fn position(mut self, after_seq: u64) -> Result<Self> {
        let ring = lock(&self.watch.ring);
        let oldest = ring.events.front().map_or(ring.next_seq, |e| e.seq);
        self.cursor = if after_seq == 0 {
            ring.next_seq - 1
        } else if after_seq >= ring.next_seq || after_seq + 1 < oldest {
            return Err(expired(after_seq));
        } else {
            after_seq
        };
        drop(ring);
        Ok(self)
    }

    /// The next events after the cursor that match the filter, waiting for some. `None` when the
    /// watch ended (the session was deleted).
    pub async fn next(&mut self) -> Option<Result<Vec<WatchEvent>>> {
        loop {
            match self.take() {
                Err(e) => return Some(Err(e)),
                Ok(batch) if !batch.is_empty() => return Some(Ok(batch)),
                Ok(_) => {}
            }
            if self.watch.closed.load(Ordering::SeqCst) || self.rx.changed().await.is_err() {
                return self.ending();
            }
        }
    }

    /// The end of the stream: the watch's failure, told once, when it failed.
    fn ending(&mut self) -> Option<Result<Vec<WatchEvent>>> {
        if std::mem::replace(&mut self.told, true) {
            return None;
        }
        lock(&self.watch.failure).clone().map(Err)
    }

    fn take(&mut self) -> Result<Vec<WatchEvent>> {
        let ring = lock(&self.watch.ring);
        let oldest = ring.events.front().map_or(ring.next_seq, |e| e.seq);
        if self.cursor + 1 < oldest {
            // This stream read slower than the ring turned over.
            return Err(expired(self.cursor));
        }
        let skip = usize::try_from(self.cursor + 1 - oldest).unwrap_or(usize::MAX);
        let batch: Vec<WatchEvent> = ring
            .events
            .iter()
            .skip(skip)
            .filter(|e| self.matches(e))
            .cloned()
            .collect();
        self.cursor = ring.next_seq - 1;
        Ok(batch)
    }

    fn matches(&self, e: &WatchEvent) -> bool {
        if self.filter.is_empty() || e.change == ChangeType::Overflow {
            return true;
        }
        let under = |p: &str| {
            self.filter
                .iter()
                .any(|f| p == f || (p.starts_with(f.as_str()) && p.as_bytes()[f.len()] == b'/'))
        };
        under(&e.path) || (!e.from_path.is_empty() && under(&e.from_path))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.watches.release(&self.session, &self.watch);
    }
}

fn expired(after: u64) -> Error {
    Error::out_of_range(
        Reason::CursorExpired,
        format!(
            "changes after {after} are no longer held (the last {RING_EVENTS} per session are); \
             list the files again and watch from now"
        ),
    )
}

/// A change gathered in the current window.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    change: ChangeType,
    path: String,
    from_path: String,
}

/// Gathers raw events into windows and publishes them until the watch is dropped. Events of an
/// older watcher generation (a replaced workspace) are dropped.
async fn coalesce(watch: std::sync::Weak<SessionWatch>, mut raw: mpsc::Receiver<Raw>) {
    while let Some((generation, first)) = raw.recv().await {
        let current = |g: u64| {
            watch
                .upgrade()
                .is_some_and(|sw| sw.generation.load(Ordering::SeqCst) == g)
        };
        let mut window = Window::default();
        if current(generation) {
            window.add(first);
        }
        let deadline = tokio::time::Instant::now() + DEBOUNCE;
        while window.pending.len() < MAX_PENDING {
            match tokio::time::timeout_at(deadline, raw.recv()).await {
                Ok(Some((g, ev))) if current(g) => window.add(ev),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let Some(sw) = watch.upgrade() else { return };
        if sw.overflow.swap(false, Ordering::Relaxed) {
            window.overflow = true;
        }
        let failure = window.failure.take();
        let ws = lock(&sw.ws).clone();
        let generation = sw.generation.load(Ordering::SeqCst);
        let Ok(events) = super::blocking(move || window.describe(ws.as_fd())).await else {
            continue;
        };
        // A rewind during `describe` replaced the tree these events were read from.
        if sw.generation.load(Ordering::SeqCst) == generation {
            publish(&sw, events);
        }
        if let Some(e) = failure {
            tracing::warn!(error = %e, "a workspace watch stopped; its streams end");
            *lock(&sw.failure) = Some(e);
            sw.closed.store(true, Ordering::SeqCst);
            sw.published.send_modify(|_| {});
        }
    }
}

fn publish(sw: &SessionWatch, events: Vec<WatchEvent>) {
    if events.is_empty() {
        return;
    }
    let mut ring = lock(&sw.ring);
    for mut e in events {
        e.seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.events.len() == RING_EVENTS {
            ring.events.pop_front();
        }
        ring.events.push_back(e);
    }
    let last = ring.next_seq - 1;
    drop(ring);
    sw.published.send_replace(last);
}

#[derive(Default)]
struct Window {
    pending: Vec<Pending>,
    index: HashMap<String, usize>,
    /// Directories created in this window: scanned, since files written into them before their
    /// own inotify watch was added raise no event.
    new_dirs: Vec<String>,
    overflow: bool,
    /// The watch stopped: why.
    failure: Option<Error>,
}

impl Window {
    fn add(&mut self, change: tree::Change) {
        match change {
            tree::Change::Created { rel, dir } => {
                if dir {
                    self.new_dirs.push(rel.clone());
                }
                self.set(rel, ChangeType::Created);
            }
            tree::Change::Modified(rel) => self.set(rel, ChangeType::Modified),
            tree::Change::Deleted(rel) => self.set(rel, ChangeType::Deleted),
            tree::Change::Renamed { from, to } => self.rename(from, to),
            tree::Change::Lost => self.overflow = true,
            tree::Change::Failed(e) => {
                self.overflow = true;
                self.failure = Some(e);
            }
        }
    }

    fn set(&mut self, path: String, change: ChangeType) {
        let Some(&i) = self.index.get(&path) else {
            self.index.insert(path.clone(), self.pending.len());
            self.pending.push(Pending {
                change,
                path,
                from_path: String::new(),
            });
            return;
        };
        let old = self.pending[i].change;
        self.pending[i].change = match (old, change) {
            // Born in this window: still new, whatever happened to it since, unless it died.
            (ChangeType::Created, ChangeType::Deleted) => ChangeType::Overflow,
            (ChangeType::Created, _) => ChangeType::Created,
            (ChangeType::Deleted, ChangeType::Created) => ChangeType::Modified,
            (ChangeType::Renamed, ChangeType::Modified) => ChangeType::Renamed,
            (_, new) => new,
        };
    }

    /// `from` was renamed to `to`. A path born in this window is only created where it ended; one
    /// renamed twice is renamed from its first name.
    fn rename(&mut self, from: String, to: String) {
        let earlier = self
            .index
            .get(&from)
            .map(|&i| (self.pending[i].change, self.pending[i].from_path.clone()));
        for p in [&from, &to] {
            if let Some(i) = self.index.remove(p) {
                self.pending[i].change = ChangeType::Overflow; // tombstone, skipped
            }
        }
        let (change, from_path) = match earlier {
            Some((ChangeType::Created, _)) => (ChangeType::Created, String::new()),
            Some((ChangeType::Renamed, first)) if first == to => {
                (ChangeType::Modified, String::new())
            }
            Some((ChangeType::Renamed, first)) => (ChangeType::Renamed, first),
            _ => (ChangeType::Renamed, from),
        };
        self.index.insert(to.clone(), self.pending.len());
        self.pending.push(Pending {
            change,
            path: to,
            from_path,
        });
    }

    /// The window's events with each entry's kind and size read now (blocking).
    fn describe(mut self, ws: std::os::fd::BorrowedFd<'_>) -> Vec<WatchEvent> {
        self.scan_new_dirs(ws);
        let now = now_micros();
        let mut out = Vec::with_capacity(self.pending.len() + 1);
        if self.overflow {
            out.push(event(
                ChangeType::Overflow,
                String::new(),
                String::new(),
                None,
                0,
                now,
            ));
        }
        for p in self.pending {
            if p.change == ChangeType::Overflow {
                continue; // created and deleted, or superseded by a rename
            }
            let (kind, size) = if p.change == ChangeType::Deleted {
                (None, 0)
            } else {
                match lstat(ws, &p.path) {
                    Some(found) => found,
                    // Gone again before we looked: it will have its own DELETED, or none.
                    None if p.change == ChangeType::Created => continue,
                    None => (None, 0),
                }
            };
            out.push(event(p.change, p.path, p.from_path, kind, size, now));
        }
        out
    }

    fn scan_new_dirs(&mut self, ws: std::os::fd::BorrowedFd<'_>) {
        for dir in std::mem::take(&mut self.new_dirs) {
            let Ok(fd) = fsops::open_beneath(ws, &dir, fsops::DIR_FLAGS) else {
                continue;
            };
            let mut found = Vec::new();
            let _ = fsops::walk(fd, &dir, &mut |v| {
                if let Some(rel) = v.rel
                    && found.len() < MAX_PENDING
                {
                    found.push(rel.to_owned());
                }
                Ok(())
            });
            // Everything under a directory born in this window was born in it too, whatever the
            // events say: a file written before the directory's own watch was added is seen only
            // by its later writes (MODIFIED) or not at all.
            for rel in found {
                match self.index.get(&rel) {
                    None => self.set(rel, ChangeType::Created),
                    Some(&i)
                        if matches!(
                            self.pending[i].change,
                            ChangeType::Modified | ChangeType::Deleted
                        ) =>
                    {
                        self.pending[i].change = ChangeType::Created;
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

fn event(
    change: ChangeType,
    path: String,
    from_path: String,
    kind: Option<FileKind>,
    size: u64,
    time_micros: i64,
) -> WatchEvent {
    WatchEvent {
        seq: 0,
        change,
        path,
        from_path,
        kind,
        size,
        time_micros,
    }
}

fn lstat(ws: std::os::fd::BorrowedFd<'_>, rel: &str) -> Option<(Option<FileKind>, u64)> {
    let parent = open_parent(ws, rel, Reason::NotARegularFile).ok()?;
    let (_, name) = split_parent(rel);
    let st = stat_at(parent.as_fd(), name).ok()??;
    let kind = kind_of(&st);
    let size = match kind {
        Some(FileKind::Regular) | Some(FileKind::Symlink) => u64::try_from(st.st_size).unwrap_or(0),
        _ => 0,
    };
    Some((kind, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(events: &[(&str, ChangeType)]) -> Vec<(String, ChangeType)> {
        let mut w = Window::default();
        for (p, c) in events {
            w.set((*p).to_owned(), *c);
        }
        w.pending
            .into_iter()
            .filter(|p| p.change != ChangeType::Overflow)
            .map(|p| (p.path, p.change))
            .collect()
    }

    #[test]
    fn a_window_coalesces_per_path_in_first_seen_order() {
        use ChangeType::*;
        let got = window(&[
            ("a", Created),
            ("b", Modified),
            ("a", Modified),
            ("c", Created),
            ("c", Deleted),
            ("b", Modified),
            ("d", Deleted),
            ("d", Created),
        ]);
        assert_eq!(
            got,
            vec![
                ("a".into(), Created),
                ("b".into(), Modified),
                ("d".into(), Modified)
            ]
        );
    }

    #[test]
    fn a_file_in_a_new_directory_is_created_even_when_only_its_later_write_was_seen() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        std::fs::write(dir.path().join("d/early.txt"), "x").expect("write");
        std::fs::write(dir.path().join("d/unseen.txt"), "y").expect("write");
        let mut w = Window::default();
        // The directory's creation was seen; `early.txt` was written before its watch was
        // added, so only its second write raised an event; `unseen.txt` raised none.
        w.new_dirs.push("d".into());
        w.set("d".into(), ChangeType::Created);
        w.set("d/early.txt".into(), ChangeType::Modified);
        let ws = std::fs::File::open(dir.path()).expect("open");
        let got: Vec<(String, ChangeType)> = w
            .describe(std::os::fd::AsFd::as_fd(&ws))
            .into_iter()
            .map(|e| (e.path, e.change))
            .collect();
        assert_eq!(
            got,
            vec![
                ("d".into(), ChangeType::Created),
                ("d/early.txt".into(), ChangeType::Created),
                ("d/unseen.txt".into(), ChangeType::Created),
            ]
        );
    }

    #[test]
    fn a_rename_pair_becomes_one_event() {
        let mut w = Window::default();
        w.set("old".into(), ChangeType::Modified);
        w.rename("old".into(), "new".into());
        let live: Vec<_> = w
            .pending
            .iter()
            .filter(|p| p.change != ChangeType::Overflow)
            .collect();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].change, ChangeType::Renamed);
        assert_eq!(
            (live[0].path.as_str(), live[0].from_path.as_str()),
            ("new", "old")
        );
    }
}
