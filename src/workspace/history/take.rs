//! Taking a snapshot: one walk of the workspace (fd-relative, never following a symlink) that
//! reuses the hash of every file whose stat is unchanged since the previous snapshot, the way
//! git's index does, so only changed files are read.

use super::cas::Cas;
use super::{Tree, TreeEntry};
use crate::domain::FileKind;
use crate::error::Result;
use crate::workspace::fsops::{self, kind_of, mtime_ns};
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, fstatat};
use nix::unistd::{Gid, Uid, fchown, fchownat};
use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd};

/// What a snapshot cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TakeStats {
    pub files: u64,
    /// Files whose content was read (the others were reused by stat).
    pub files_read: u64,
    /// Bytes of content newly stored (not already in the store).
    pub bytes_added: u64,
}

/// Timestamps come from the kernel's coarse clock, which may lag by a tick or more: a change
/// this close to the previous snapshot's start is not trusted to show in the stat.
const RACY_NS: i64 = 50_000_000;

fn ctime_ns(st: &FileStat) -> i64 {
    st.st_ctime
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_ctime_nsec)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The hash of `prev` may stand for the file now only if its stat is identical and the file
/// was not modified in the same instant the previous snapshot looked at it ("racy" entries in
/// git's terms: a write in that instant could leave mtime unchanged).
fn reusable(prev: &TreeEntry, st: &FileStat, size: u64, taken_ns: i64) -> Option<String> {
    let same = prev.kind == FileKind::Regular
        && prev.size == size
        && prev.mtime_ns == mtime_ns(st)
        && prev.ctime_ns == ctime_ns(st)
        && prev.ino == st.st_ino
        && prev.mode == st.st_mode & 0o7777
        && ctime_ns(st) < taken_ns.saturating_sub(RACY_NS);
    if same { prev.blob.clone() } else { None }
}

/// Gives the entry `name` of `dir` to `ids` when it is not theirs yet; returns its stat after
/// (the change moved its ctime, which the listing must hold for the next snapshot to trust it).
/// Best effort, like the jail's own hand-over: an entry that cannot be changed stays as it is.
fn hand_over(dir: BorrowedFd<'_>, name: &str, st: &FileStat, ids: (u32, u32)) -> Option<FileStat> {
    if (st.st_uid, st.st_gid) == ids {
        return None;
    }
    let (uid, gid) = (Uid::from_raw(ids.0), Gid::from_raw(ids.1));
    fchownat(
        dir,
        name,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok()?;
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
}

/// Snapshots the workspace at `root`. With `hand_to`, every entry not owned by those ids (what
/// agentd wrote: uploads, restores) is given to them on the way, the workspace root included:
/// the job's agent runs as them and must be able to change its files, and this walk is the one
/// pass over a workspace that may hold many files before the agent starts.
pub(super) fn take(
    cas: &Cas,
    root: OwnedFd,
    prev: Option<&Tree>,
    hand_to: Option<(u32, u32)>,
) -> Result<(Tree, TakeStats)> {
    let taken_ns = now_ns();
    let mut entries = BTreeMap::new();
    let mut stats = TakeStats::default();
    if let Some((uid, gid)) = hand_to {
        let _ = fchown(&root, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    }
    fsops::walk(root, "", &mut |v| {
        let (Some(rel), Some(kind)) = (v.rel, kind_of(v.stat)) else {
            return Ok(());
        };
        let handed = hand_to.and_then(|ids| hand_over(v.dir, v.name, v.stat, ids));
        let st = handed.as_ref().unwrap_or(v.stat);
        let size = match kind {
            FileKind::Directory => 0,
            _ => u64::try_from(st.st_size).unwrap_or(0),
        };
        let mut entry = TreeEntry {
            kind,
            mode: st.st_mode & 0o7777,
            size,
            blob: None,
            target: None,
            mtime_ns: mtime_ns(st),
            ctime_ns: ctime_ns(st),
            ino: st.st_ino,
        };
        match kind {
            FileKind::Regular => {
                stats.files += 1;
                let old = prev
                    .and_then(|p| p.entries.get(rel))
                    .and_then(|e| reusable(e, st, size, prev.map_or(0, |p| p.taken_ns)));
                entry.blob = match old {
                    Some(h) => Some(h),
                    None => match store_file(cas, v.dir, v.name, rel)? {
                        Some((hash, added, real_size)) => {
                            stats.files_read += 1;
                            stats.bytes_added += added;
                            entry.size = real_size;
                            Some(hash)
                        }
                        // Vanished or replaced by something else mid-walk: not in this snapshot.
                        None => return Ok(()),
                    },
                };
            }
            FileKind::Symlink => {
                entry.target = Some(
                    nix::fcntl::readlinkat(v.dir, v.name)
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
            FileKind::Directory => {}
        }
        entries.insert(rel.to_owned(), entry);
        Ok(())
    })?;
    Ok((Tree { taken_ns, entries }, stats))
}

/// Copies one file into the store: (hash, bytes newly stored, size read).
fn store_file(
    cas: &Cas,
    dir: std::os::fd::BorrowedFd<'_>,
    name: &str,
    rel: &str,
) -> Result<Option<(String, u64, u64)>> {
    let (mut file, st) = match fsops::open_regular(dir, name, rel) {
        Ok(f) => f,
        Err(crate::error::Error::NotFound { .. })
        | Err(crate::error::Error::FailedPrecondition { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = u64::try_from(st.st_size).unwrap_or(0);
    // Counting what was read keeps the entry honest if the file grew while we copied it.
    let mut counted = CountingReader {
        inner: &mut file,
        n: 0,
    };
    let (hash, added) = cas.put_reader(&mut counted, size)?;
    Ok(Some((hash, added, counted.n)))
}

struct CountingReader<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: std::io::Read> std::io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}
