//! Snapshots of a workspace's metadata and the diff between two of them: what a job changed.
//! A snapshot holds no content hashes (cheap to take before and after every job); hashes are
//! computed only for the files a diff reports.

use super::fsops::{self, kind_of, mtime_ns};
use crate::domain::{ChangeKind, FileChange, FileEntry, FileKind, Timestamp};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

/// Metadata of one entry at snapshot time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapEntry {
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub kind: FileKind,
}

/// Every reportable entry (regular files, directories, symlinks) of a workspace, by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    entries: BTreeMap<String, SnapEntry>,
}

impl Snapshot {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<&SnapEntry> {
        self.entries.get(path)
    }
}

/// Walks the whole workspace (blocking).
pub(crate) fn take(root: OwnedFd) -> Result<Snapshot> {
    let mut entries = BTreeMap::new();
    fsops::walk(root, "", &mut |v| {
        if let (Some(rel), Some(kind)) = (v.rel, kind_of(v.stat)) {
            let size = match kind {
                FileKind::Directory => 0,
                _ => u64::try_from(v.stat.st_size).unwrap_or(0),
            };
            entries.insert(
                rel.to_owned(),
                SnapEntry {
                    size,
                    mtime_ns: mtime_ns(v.stat),
                    mode: v.stat.st_mode & 0o7777,
                    kind,
                },
            );
        }
        Ok(())
    })?;
    Ok(Snapshot { entries })
}

/// The changes from `before` to `after`, sorted by path, directories left out.
pub(crate) fn changes(before: &Snapshot, after: &Snapshot) -> Vec<(String, ChangeKind)> {
    let is_file = |e: &SnapEntry| e.kind != FileKind::Directory;
    let mut out: BTreeMap<&str, ChangeKind> = BTreeMap::new();
    for (path, a) in after.entries.iter().filter(|(_, e)| is_file(e)) {
        match before.entries.get(path) {
            Some(b) if is_file(b) => {
                if b != a {
                    out.insert(path, ChangeKind::Modified);
                }
            }
            _ => {
                out.insert(path, ChangeKind::Added);
            }
        }
    }
    for path in before
        .entries
        .iter()
        .filter(|(_, e)| is_file(e))
        .map(|(p, _)| p)
    {
        if !after.entries.get(path).is_some_and(is_file) {
            out.insert(path, ChangeKind::Deleted);
        }
    }
    out.into_iter().map(|(p, k)| (p.to_owned(), k)).collect()
}

/// Fills the entries of added and modified files from the workspace as it is now, with sha256.
/// A file that changed again or vanished since `after` is described from `after`, without hash.
pub(crate) fn describe(
    root: OwnedFd,
    after: &Snapshot,
    changes: Vec<(String, ChangeKind)>,
) -> Result<Vec<FileChange>> {
    let mut out = Vec::with_capacity(changes.len());
    for (path, kind) in changes {
        let entry = match kind {
            ChangeKind::Deleted => None,
            _ => Some(match current_entry(&root, &path) {
                Some(e) => e,
                None => from_snapshot(&path, after.entries.get(&path)),
            }),
        };
        out.push(FileChange {
            path,
            kind,
            entry,
            from_path: None,
            before: None,
        });
    }
    Ok(out)
}

fn current_entry(root: &OwnedFd, path: &str) -> Option<FileEntry> {
    let parent =
        fsops::open_parent(root.as_fd(), path, crate::error::Reason::NotARegularFile).ok()?;
    let (_, name) = super::path::split_parent(path);
    let st = fsops::stat_at(parent.as_fd(), name).ok()??;
    if kind_of(&st) == Some(FileKind::Directory) {
        return None;
    }
    fsops::entry_from_stat(path.to_owned(), &st, parent.as_fd(), name, true).ok()?
}

fn from_snapshot(path: &str, e: Option<&SnapEntry>) -> FileEntry {
    let e = e.copied().unwrap_or(SnapEntry {
        size: 0,
        mtime_ns: 0,
        mode: 0,
        kind: FileKind::Regular,
    });
    FileEntry {
        path: path.to_owned(),
        kind: e.kind,
        size: e.size,
        mode: e.mode,
        modified: Timestamp(e.mtime_ns / 1000),
        sha256: None,
        symlink_target: None,
    }
}
