//! The kernel side of WatchFiles: one inotify instance per watched workspace, read by a thread of
//! its own, with every directory watched through a descriptor agentd opened beneath the workspace,
//! never through a path.
//!
//! Why not the `notify` crate, which this replaced: it walked the tree by path and followed
//! symlinks, as agentd sees the host. A job's `ln -s <workspace root> link` made its tenant's
//! watch follow every tenant's workspaces and report their file names, and `ln -s / link`
//! walked the host's `/proc` until one directory there failed the whole watch (INTERNAL). Path
//! lookups also fail past PATH_MAX and race an agent that swaps a new directory for a link.
//!
//! Here a directory is watched through `/proc/thread-self/fd/<its parent's fd>/<name>` with
//! `IN_DONT_FOLLOW | IN_ONLYDIR` (a link put in its place is refused), or through its own
//! descriptor. Directories are nodes (parent, name) keyed by watch descriptor, so a renamed
//! directory keeps its watches and everything below it is named by its new path at once. The
//! walk is [`fsops::walk`]'s: bounded in depth, lending agentd the owner's permissions where a job
//! closed a directory, skipping what it cannot open. At most [`MAX_DIRS`] directories are watched
//! per workspace, so one tenant cannot take the host's inotify watches (shared by every process of
//! agentd's user) from the others.

use super::super::fsops::{self, DIR_FLAGS};
use super::super::owner::{self, LentDir};
use super::super::path::{MAX_PATH_BYTES, TEMP_PREFIX, split_parent};
use super::bounds::DirBudget;
use crate::domain::FileKind;
use crate::error::{Error, Reason, Result};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Directories watched per workspace at most.
pub const MAX_DIRS: usize = 16_384;

/// What the tree saw, named by workspace-relative paths (upload temp names never appear).
#[derive(Debug, Clone)]
pub(super) enum Change {
    Created {
        rel: String,
        dir: bool,
    },
    Modified(String),
    Deleted(String),
    Renamed {
        from: String,
        to: String,
    },
    /// The kernel dropped events (its queue overflowed), or a new directory could not be watched:
    /// changes may have been missed.
    Lost,
    /// The watch cannot go on (a limit); it stops after this.
    Failed(Error),
}

#[cfg(test)]
impl PartialEq for Change {
    fn eq(&self, other: &Change) -> bool {
        match (self, other) {
            (Change::Failed(a), Change::Failed(b)) => a.reason() == b.reason(),
            (Change::Failed(_), _) | (_, Change::Failed(_)) => false,
            _ => format!("{self:?}") == format!("{other:?}"),
        }
    }
}

/// The running watch; dropping it stops its thread, which closes the inotify instance (and with
/// it every watch).
pub(super) struct TreeWatch {
    _stop: OwnedFd,
}

/// Watches the workspace open at `ws` and everything below it, then reports changes to `send`
/// from a thread of its own until the returned value is dropped (blocking: the initial walk).
pub(super) fn arm(
    ws: BorrowedFd<'_>,
    mut budget: DirBudget,
    send: Box<dyn FnMut(Change) + Send>,
) -> Result<TreeWatch> {
    let ino =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| match e {
            Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM => host_limit(),
            e => Error::internal(format!("cannot start watching the workspace: {e}")),
        })?;
    let ws = ws
        .try_clone_to_owned()
        .map_err(|e| Error::internal(format!("cannot duplicate the workspace fd: {e}")))?;
    // A job may have closed the workspace itself (`chmod 000 .`): agentd owns it.
    let lent = ws
        .try_clone()
        .map(LentDir::new)
        .map_err(|e| Error::internal(format!("cannot duplicate the workspace fd: {e}")))?;
    let root = ino
        .add_watch(
            format!("/proc/thread-self/fd/{}", lent.as_fd().as_raw_fd()).as_str(),
            mask(),
        )
        .map_err(|e| match e {
            Errno::ENOSPC => host_limit(),
            e => Error::internal(format!("cannot watch the workspace: {e}")),
        })?;
    drop(lent);
    if let Err(e) = budget.take() {
        let _ = ino.rm_watch(root);
        return Err(e);
    }
    let mut tree = Tree {
        ino,
        ws,
        root,
        nodes: HashMap::from([(
            root,
            Node {
                parent: None,
                name: String::new(),
            },
        )]),
        children: HashMap::new(),
        missed: Vec::new(),
        budget,
    };
    tree.rescan()?;
    let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::internal(format!("cannot create a pipe: {e}")))?;
    std::thread::Builder::new()
        .name("agentd-watch".into())
        .spawn(move || tree.run(&stop_r, send))
        .map_err(|e| Error::internal(format!("cannot start the watch thread: {e}")))?;
    Ok(TreeWatch { _stop: stop_w })
}

fn host_limit() -> Error {
    Error::exhausted(
        Reason::WatchLimitReached,
        "the host's inotify limit is reached; retry later or raise \
         fs.inotify.max_user_watches / max_user_instances",
    )
}

fn too_many_dirs() -> Error {
    Error::exhausted(
        Reason::WatchLimitReached,
        format!(
            "the workspace has more than {MAX_DIRS} directories, more than WatchFiles follows; \
             list the files instead"
        ),
    )
}

/// A watched directory: its parent's watch (`None` for the workspace itself) and its name there.
struct Node {
    parent: Option<WatchDescriptor>,
    name: String,
}

struct Tree {
    ino: Inotify,
    ws: OwnedFd,
    /// The workspace's own watch.
    root: WatchDescriptor,
    nodes: HashMap<WatchDescriptor, Node>,
    /// (parent, name) → the watch of that directory.
    children: HashMap<(WatchDescriptor, String), WatchDescriptor>,
    /// New directories not found where the tree thought they were: an ancestor may have been
    /// renamed meanwhile, an event the tree has not read yet. Tried again after each read, a few
    /// times, with the paths as the tree knows them then.
    missed: Vec<Missed>,
    /// One of the tenant's directories per node (given back as nodes go, and with the tree).
    budget: DirBudget,
}

/// A new directory (`name` in `parent`) that could not be opened yet.
struct Missed {
    parent: WatchDescriptor,
    name: String,
    tries: u8,
}

/// Reads after which a missed directory is given up (it was removed again).
const MISSED_TRIES: u8 = 3;
/// Missed directories held at most; beyond, changes may be missed (an OVERFLOW).
const MISSED_MAX: usize = 1024;

/// What a watch asks for. IN_ONLYDIR: whatever the path names must be a directory.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ONLYDIR
}

/// One of agentd's temp names (uploads, archives, tree removal): never reported, never watched.
fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// What [`Tree::add_new`] did.
enum Added {
    Yes,
    /// Not there (yet): in [`Tree::missed`].
    NotFound,
    /// Not to be watched, or not a directory any more.
    No,
}

/// A directory that moved away from where it was (its rename's first half).
struct MovedFrom {
    cookie: u32,
    parent: WatchDescriptor,
    name: String,
    dir: bool,
}

impl Tree {
    fn run(mut self, stop: &OwnedFd, mut send: Box<dyn FnMut(Change) + Send>) {
        loop {
            let mut fds = [
                PollFd::new(self.ino.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return send(Change::Failed(Error::internal(format!("poll: {e}")))),
            }
            if fds[1].any().unwrap_or(true) {
                return; // the watch was dropped
            }
            let events = match self.ino.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    return send(Change::Failed(Error::internal(format!(
                        "cannot read the workspace's changes: {e}"
                    ))));
                }
            };
            if let Err(e) = self.handle(events, &mut send) {
                return send(Change::Failed(e));
            }
        }
    }

    /// One read's events, in order. A rename's two halves come together in one read (the kernel
    /// queues them as a pair); a half without its pair moved in or out of the tree.
    fn handle(&mut self, events: Vec<InotifyEvent>, send: &mut dyn FnMut(Change)) -> Result<()> {
        let mut moved: Option<MovedFrom> = None;
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Directories created meanwhile would otherwise stay unwatched for good.
                send(Change::Lost);
                self.rescan()?;
                continue;
            }
            if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                self.forget(ev.wd);
                continue;
            }
            // Events about a watched directory itself carry no name; its parent reports them.
            // A name that is not UTF-8 cannot be named to clients.
            let Some(name) = ev.name.and_then(|n| n.into_string().ok()) else {
                continue;
            };
            if !self.nodes.contains_key(&ev.wd) {
                continue;
            }
            let dir = ev.mask.contains(AddWatchFlags::IN_ISDIR);
            if let Some(from) = moved.take() {
                if ev.mask.contains(AddWatchFlags::IN_MOVED_TO) && ev.cookie == from.cookie {
                    self.renamed(from, ev.wd, name, send)?;
                    continue;
                }
                self.moved_out(from, send);
            }
            if ev.mask.contains(AddWatchFlags::IN_MOVED_FROM) {
                moved = Some(MovedFrom {
                    cookie: ev.cookie,
                    parent: ev.wd,
                    name,
                    dir,
                });
            } else if ev
                .mask
                .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            {
                if dir {
                    self.add_new(ev.wd, &name, send)?;
                }
                if let Some(rel) = self.visible(ev.wd, &name) {
                    send(Change::Created { rel, dir });
                }
            } else if ev.mask.contains(AddWatchFlags::IN_DELETE) {
                if let Some(rel) = self.visible(ev.wd, &name) {
                    send(Change::Deleted(rel));
                }
            } else if ev.mask.contains(AddWatchFlags::IN_MODIFY)
                && let Some(rel) = self.visible(ev.wd, &name)
            {
                send(Change::Modified(rel));
            }
        }
        if let Some(from) = moved {
            self.moved_out(from, send);
        }
        self.retry_missed(send)
    }

    /// Tries the missed directories again, now that this read's renames are known; one found is
    /// reported created where it is (its contents are the coalescer's to find).
    fn retry_missed(&mut self, send: &mut dyn FnMut(Change)) -> Result<()> {
        for m in std::mem::take(&mut self.missed) {
            if !self.nodes.contains_key(&m.parent)
                || self.children.contains_key(&(m.parent, m.name.clone()))
            {
                continue;
            }
            match self.add_new(m.parent, &m.name, send)? {
                Added::Yes => {
                    if let Some(rel) = self.visible(m.parent, &m.name) {
                        send(Change::Created { rel, dir: true });
                    }
                }
                // `add_new` recorded it afresh: count this try.
                Added::NotFound => {
                    let tries = m.tries + 1;
                    if let Some(again) = self
                        .missed
                        .iter_mut()
                        .find(|x| x.parent == m.parent && x.name == m.name)
                    {
                        again.tries = tries;
                    }
                }
                Added::No => {}
            }
        }
        self.missed.retain(|m| m.tries < MISSED_TRIES);
        Ok(())
    }

    /// A rename inside the tree: a directory's node moves with it, so its watches (and the paths
    /// they report) follow. Reported by what clients may see of each side.
    fn renamed(
        &mut self,
        from: MovedFrom,
        parent: WatchDescriptor,
        name: String,
        send: &mut dyn FnMut(Change),
    ) -> Result<()> {
        let old = self.visible(from.parent, &from.name);
        if from.dir {
            match self.children.remove(&(from.parent, from.name)) {
                Some(wd) if !is_temp(&name) => {
                    self.place(wd, parent, &name);
                }
                Some(wd) => self.unwatch(wd),
                // Never watched (beyond the bound, or under a name that could not be, such as
                // agentd's temp names): watch it now.
                None => {
                    self.add_new(parent, &name, send)?;
                }
            }
        }
        let new = self.visible(parent, &name);
        match (old, new) {
            (Some(from), Some(to)) => send(Change::Renamed { from, to }),
            (None, Some(rel)) => send(Change::Created { rel, dir: from.dir }),
            (Some(rel), None) => send(Change::Deleted(rel)),
            (None, None) => {}
        }
        Ok(())
    }

    /// Something moved out of the tree: gone, as far as the workspace is concerned.
    fn moved_out(&mut self, from: MovedFrom, send: &mut dyn FnMut(Change)) {
        if let Some(rel) = self.visible(from.parent, &from.name) {
            send(Change::Deleted(rel));
        }
        if let Some(wd) = self.children.remove(&(from.parent, from.name)) {
            self.unwatch(wd);
        }
    }

    /// Stops watching the directory `top` and everything below it.
    fn unwatch(&mut self, top: WatchDescriptor) {
        let below: Vec<WatchDescriptor> = self
            .nodes
            .keys()
            .copied()
            .filter(|&w| self.is_within(w, top))
            .collect();
        for w in below {
            let _ = self.ino.rm_watch(w);
            self.forget(w);
        }
    }

    /// A directory appeared at `name` in `parent` (created, or moved in): it and everything
    /// already below it are watched. Not under one of agentd's temp names: nothing there is
    /// reported, and tree removal moves deep directories up under such names by the hundred.
    fn add_new(
        &mut self,
        parent: WatchDescriptor,
        name: &str,
        send: &mut dyn FnMut(Change),
    ) -> Result<Added> {
        if is_temp(name) {
            return Ok(Added::No);
        }
        let Some(rel) = self.path(parent, name) else {
            return Ok(Added::No);
        };
        if rel.len() > MAX_PATH_BYTES {
            return Ok(Added::No);
        }
        let fd = match fsops::open_beneath(self.ws.as_fd(), &rel, DIR_FLAGS) {
            Ok(fd) => fd,
            // Removed again, or an ancestor was renamed and the tree has not read it yet.
            Err(Errno::ENOENT) => return Ok(self.miss(parent, name, send)),
            // Replaced by something that is not a directory (a link included).
            Err(_) => return Ok(Added::No),
        };
        let Some(wd) = self.watch_fd(fd.as_fd(), parent, name)? else {
            send(Change::Lost);
            return Ok(Added::No);
        };
        self.add_subtree(fd, &rel, wd)?;
        Ok(Added::Yes)
    }

    /// Records a new directory not found, to be tried again after this read.
    fn miss(&mut self, parent: WatchDescriptor, name: &str, send: &mut dyn FnMut(Change)) -> Added {
        if self.missed.len() >= MISSED_MAX {
            send(Change::Lost);
        } else if !self
            .missed
            .iter()
            .any(|m| m.parent == parent && m.name == name)
        {
            self.missed.push(Missed {
                parent,
                name: name.to_owned(),
                tries: 0,
            });
        }
        Added::NotFound
    }

    /// Watches whatever directory the tree does not watch yet.
    fn rescan(&mut self) -> Result<()> {
        let fd = self
            .ws
            .try_clone()
            .map_err(|e| Error::internal(format!("cannot duplicate the workspace fd: {e}")))?;
        self.add_subtree(fd, "", self.root)
    }

    /// Watches every directory below `fd` (the watched directory `wd`, at `rel`).
    fn add_subtree(&mut self, fd: OwnedFd, rel: &str, wd: WatchDescriptor) -> Result<()> {
        let mut at: HashMap<String, WatchDescriptor> = HashMap::from([(rel.to_owned(), wd)]);
        fsops::walk(fd, rel, &mut |v| {
            let Some(r) = v.rel else { return Ok(()) };
            if fsops::kind_of(v.stat) != Some(FileKind::Directory) {
                return Ok(());
            }
            let Some(&parent) = at.get(split_parent(r).0) else {
                return Ok(());
            };
            if let Some(w) = self.watch_named(v.dir, v.name, parent)? {
                at.insert(r.to_owned(), w);
            }
            Ok(())
        })
    }

    /// Watches the directory `name` in the open directory `dir` without following a link there.
    fn watch_named(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &str,
        parent: WatchDescriptor,
    ) -> Result<Option<WatchDescriptor>> {
        let path = format!("/proc/thread-self/fd/{}/{name}", dir.as_raw_fd());
        match self
            .ino
            .add_watch(path.as_str(), mask() | AddWatchFlags::IN_DONT_FOLLOW)
        {
            Ok(wd) => self.place_new(wd, parent, name).map(Some),
            // A job closed it (agentd, not root, needs read permission to watch): agentd owns it.
            Err(Errno::EACCES) => match owner::openat_owned(dir, name, DIR_FLAGS) {
                Ok(fd) => self.watch_fd(fd.as_fd(), parent, name),
                Err(_) => Ok(None),
            },
            Err(Errno::ENOSPC) => Err(host_limit()),
            // Gone, or no longer a directory (a link put in its place is refused here).
            Err(_) => Ok(None),
        }
    }

    /// Watches the open directory `fd` (named `name` in `parent`), lending agentd the owner's
    /// permissions on it for the call.
    fn watch_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        parent: WatchDescriptor,
        name: &str,
    ) -> Result<Option<WatchDescriptor>> {
        let Ok(lent) = fd.try_clone_to_owned().map(LentDir::new) else {
            return Ok(None);
        };
        // The magic link is the directory itself: following it is what is meant.
        let path = format!("/proc/thread-self/fd/{}", lent.as_fd().as_raw_fd());
        match self.ino.add_watch(path.as_str(), mask()) {
            Ok(wd) => self.place_new(wd, parent, name).map(Some),
            Err(Errno::ENOSPC) => Err(host_limit()),
            Err(_) => Ok(None),
        }
    }

    /// [`Tree::place`] of a watch just added, unless it is one too many.
    fn place_new(
        &mut self,
        wd: WatchDescriptor,
        parent: WatchDescriptor,
        name: &str,
    ) -> Result<WatchDescriptor> {
        if !self.nodes.contains_key(&wd) {
            let room = if self.nodes.len() >= MAX_DIRS {
                Err(too_many_dirs())
            } else {
                self.budget.take()
            };
            if let Err(e) = room {
                let _ = self.ino.rm_watch(wd);
                return Err(e);
            }
        }
        Ok(self.place(wd, parent, name))
    }

    /// Records that `wd` is the directory `name` in `parent`. The kernel answers an inode watched
    /// already with its existing descriptor, whose node then moves here.
    fn place(
        &mut self,
        wd: WatchDescriptor,
        parent: WatchDescriptor,
        name: &str,
    ) -> WatchDescriptor {
        if let Some(old) = self.nodes.get(&wd)
            && let Some(p) = old.parent
        {
            let key = (p, old.name.clone());
            if self.children.get(&key) == Some(&wd) {
                self.children.remove(&key);
            }
        }
        self.nodes.insert(
            wd,
            Node {
                parent: Some(parent),
                name: name.to_owned(),
            },
        );
        self.children.insert((parent, name.to_owned()), wd);
        wd
    }

    /// The watch `wd` is gone (its directory was deleted, or its watch removed).
    fn forget(&mut self, wd: WatchDescriptor) {
        let Some(node) = self.nodes.remove(&wd) else {
            return;
        };
        self.budget.give();
        if let Some(p) = node.parent {
            let key = (p, node.name);
            if self.children.get(&key) == Some(&wd) {
                self.children.remove(&key);
            }
        }
    }

    /// The workspace-relative path of `name` in the watched directory `dir`.
    fn path(&self, dir: WatchDescriptor, name: &str) -> Option<String> {
        let mut parts = vec![name];
        let mut at = dir;
        // Bounded: a path has fewer components than bytes.
        for _ in 0..=MAX_PATH_BYTES {
            let node = self.nodes.get(&at)?;
            match node.parent {
                None => {
                    parts.reverse();
                    return Some(parts.join("/"));
                }
                Some(p) => {
                    parts.push(&node.name);
                    at = p;
                }
            }
        }
        None
    }

    /// [`Tree::path`], when clients may see it: no component is an upload's temp name, and it
    /// is not longer than any path the API accepts.
    fn visible(&self, dir: WatchDescriptor, name: &str) -> Option<String> {
        let rel = self.path(dir, name)?;
        (rel.len() <= MAX_PATH_BYTES && !rel.split('/').any(is_temp)).then_some(rel)
    }

    /// Whether the watched directory `wd` is `top` or below it.
    fn is_within(&self, wd: WatchDescriptor, top: WatchDescriptor) -> bool {
        let mut at = Some(wd);
        for _ in 0..=MAX_PATH_BYTES {
            match at {
                Some(w) if w == top => return true,
                Some(w) => at = self.nodes.get(&w).and_then(|n| n.parent),
                None => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::bounds::Bounds;
    use super::*;
    use crate::domain::TenantId;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A budget as large as the host's share.
    fn budget() -> DirBudget {
        let slot = Bounds::default()
            .session(&TenantId("t".into()))
            .expect("slot");
        slot.dirs()
    }

    fn start(dir: &std::path::Path) -> (TreeWatch, mpsc::Receiver<Change>) {
        let (tx, rx) = mpsc::channel();
        let ws = std::fs::File::open(dir).expect("open");
        let w = arm(
            ws.as_fd(),
            budget(),
            Box::new(move |c| {
                let _ = tx.send(c);
            }),
        )
        .expect("arm");
        (w, rx)
    }

    /// Changes until `last` is among them (or the time runs out).
    fn until(rx: &mpsc::Receiver<Change>, last: &Change) -> Vec<Change> {
        let mut got = Vec::new();
        while let Ok(c) = rx.recv_timeout(Duration::from_secs(5)) {
            let done = &c == last;
            got.push(c);
            if done {
                break;
            }
        }
        got
    }

    #[test]
    fn a_renamed_directory_reports_under_its_new_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        let (_w, rx) = start(dir.path());
        std::fs::rename(dir.path().join("a"), dir.path().join("z")).expect("rename");
        std::fs::write(dir.path().join("z/b/f.txt"), "x").expect("write");
        let want = Change::Created {
            rel: "z/b/f.txt".into(),
            dir: false,
        };
        let got = until(&rx, &want);
        assert_eq!(
            got.first(),
            Some(&Change::Renamed {
                from: "a".into(),
                to: "z".into()
            }),
            "{got:?}"
        );
        assert_eq!(got.last(), Some(&want), "{got:?}");
    }

    #[test]
    fn a_directory_made_and_moved_before_its_event_is_read_is_watched_where_it_went() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        let (_w, rx) = start(dir.path());
        // Faster than the watch's thread: when it reads that `a/b` was made, `a` is `c` already.
        std::fs::create_dir(dir.path().join("a/b")).expect("mkdir");
        std::fs::rename(dir.path().join("a"), dir.path().join("c")).expect("rename");
        let renamed = Change::Renamed {
            from: "a".into(),
            to: "c".into(),
        };
        let got = until(&rx, &renamed);
        assert_eq!(got.last(), Some(&renamed), "{got:?}");
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(dir.path().join("c/b/f.txt"), "x").expect("write");
        let want = Change::Created {
            rel: "c/b/f.txt".into(),
            dir: false,
        };
        let got = until(&rx, &want);
        assert_eq!(got.last(), Some(&want), "{got:?}");
    }

    #[test]
    fn links_are_not_followed_and_a_new_tree_is_watched_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).expect("link");
        let elsewhere = tempfile::tempdir().expect("temp dir");
        let (_w, rx) = start(dir.path());
        // A tree made elsewhere and moved in is watched below its top too.
        let staged = elsewhere.path().join("staging");
        std::fs::create_dir_all(staged.join("x/y")).expect("mkdir");
        std::fs::write(outside.path().join("host.txt"), "h").expect("write");
        std::fs::rename(&staged, dir.path().join("moved")).expect("rename");
        // Reported once the tree below it is watched (what was written before is the
        // coalescer's to find: it scans a new directory).
        let moved = Change::Created {
            rel: "moved".into(),
            dir: true,
        };
        assert_eq!(until(&rx, &moved).last(), Some(&moved));
        std::fs::write(dir.path().join("moved/x/y/deep.txt"), "d").expect("write");
        let want = Change::Created {
            rel: "moved/x/y/deep.txt".into(),
            dir: false,
        };
        let got = until(&rx, &want);
        assert_eq!(got.last(), Some(&want), "{got:?}");
        assert!(
            got.iter().all(|c| !format!("{c:?}").contains("host.txt")),
            "{got:?}"
        );
    }

    /// More short-lived directories than the bound, never many at once (a package manager's
    /// temp dirs): each one's watch is forgotten with it, so the watch goes on.
    #[test]
    fn directories_made_and_removed_by_the_thousand_do_not_count_against_the_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_w, rx) = start(dir.path());
        for i in 0..MAX_DIRS + 2_000 {
            let d = dir.path().join(format!("t{i}"));
            std::fs::create_dir(&d).expect("mkdir");
            std::fs::write(d.join("f"), "x").expect("write");
            std::fs::remove_file(d.join("f")).expect("rm");
            std::fs::remove_dir(&d).expect("rmdir");
        }
        std::fs::write(dir.path().join("last.txt"), "x").expect("write");
        let want = Change::Created {
            rel: "last.txt".into(),
            dir: false,
        };
        let mut failed = None;
        let mut seen = false;
        while let Ok(c) = rx.recv_timeout(Duration::from_secs(20)) {
            if let Change::Failed(e) = &c {
                failed = Some(e.to_string());
            }
            if c == want {
                seen = true;
                break;
            }
        }
        assert_eq!(failed, None);
        assert!(seen, "the last write was not seen");
    }

    /// Each watched directory holds one of the tenant's: given back when it goes, and past the
    /// tenant's bound the watch stops with the reason.
    #[test]
    fn watched_directories_are_counted_against_the_tenants_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        for d in ["a", "b", "c"] {
            std::fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        let bounds = Bounds::with_dirs(8);
        let slot = bounds.session(&TenantId("t".into())).expect("slot");
        let (tx, rx) = mpsc::channel();
        let ws = std::fs::File::open(dir.path()).expect("open");
        let w = arm(
            ws.as_fd(),
            slot.dirs(),
            Box::new(move |c| {
                let _ = tx.send(c);
            }),
        )
        .expect("arm");
        assert_eq!(
            bounds.held().1,
            4,
            "the workspace and its three directories"
        );
        std::fs::remove_dir(dir.path().join("a")).expect("rmdir");
        let gone = Change::Deleted("a".into());
        assert_eq!(until(&rx, &gone).last(), Some(&gone));
        settles(&bounds, 3);
        for i in 0..6 {
            std::fs::create_dir(dir.path().join(format!("n{i}"))).expect("mkdir");
        }
        let got = until(&rx, &Change::Failed(too_many_dirs()));
        match got.last() {
            Some(Change::Failed(e)) => {
                assert_eq!(e.reason(), Reason::WatchLimitReached);
                assert!(e.to_string().contains("this tenant"), "{e}");
            }
            other => panic!("the watch went on: {other:?} {got:?}"),
        }
        drop(w);
        // The stopped tree's directories went back with it.
        settles(&bounds, 0);
    }

    /// Waits (a little) for the directories held to come to `want`: the tree's thread forgets a
    /// directory when the kernel says its watch is gone, which may come after its deletion.
    fn settles(bounds: &Bounds, want: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while bounds.held().1 != want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(bounds.held().1, want);
    }

    #[test]
    fn more_directories_than_the_bound_are_refused_with_a_stable_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        for i in 0..MAX_DIRS {
            std::fs::create_dir(dir.path().join(format!("d{i}"))).expect("mkdir");
        }
        let ws = std::fs::File::open(dir.path()).expect("open");
        let Err(e) = arm(ws.as_fd(), budget(), Box::new(|_| {})) else {
            panic!("armed over the bound");
        };
        assert_eq!(e.reason(), Reason::WatchLimitReached, "{e}");
    }
}
