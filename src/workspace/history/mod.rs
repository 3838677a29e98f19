//! Workspace history (issue #18): a content-addressed snapshot of the workspace before and after
//! every job, and what is computed from two of them (exact changes, unified diffs). Owns the
//! object store under `<workspace root>/.history` — beside the session directories, so replicas
//! that share the workspace root share it too, and outside every jail (a jail mounts only its own
//! workspace and HOME). The store (database) keeps which snapshot belongs to which job; this
//! module keeps only content.
//!
//! Own store rather than a git object store through `gix`: a snapshot needs no commits, refs or
//! zlib (compressing a 300 MB tree is most of `git add`'s time), objects are plain files that
//! any reader (archives, rewind) opens directly, and GC is a walk over a live set. Measured in
//! agentd-bench `snapshot`.
//!
//! Public reading API (for archives, rewind, fork): [`History::tree`] lists a snapshot,
//! [`History::open_file`] opens one file's content.

mod cas;
mod changes;
pub mod diff;
mod gc;
mod listings;
mod restore;
mod take;

pub use changes::changes;
pub use gc::GcStats;
pub use take::TakeStats;

use crate::domain::{FileEntry, FileKind, Timestamp};
use crate::error::{Error, Reason, Result};
use cas::Cas;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

/// One entry of a snapshot. Regular files name their content by `blob` (SHA-256 hex); symlinks
/// keep their `target`. The stat fields let the next snapshot skip unchanged files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    pub kind: FileKind,
    pub mode: u32,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub mtime_ns: i64,
    #[serde(default)]
    pub ctime_ns: i64,
    #[serde(default)]
    pub ino: u64,
}

impl TreeEntry {
    /// The public description of this entry at `path`.
    pub fn describe(&self, path: &str) -> FileEntry {
        FileEntry {
            path: path.to_owned(),
            kind: self.kind,
            size: self.size,
            mode: self.mode,
            modified: Timestamp(self.mtime_ns / 1000),
            sha256: self.blob.clone(),
            symlink_target: self.target.clone(),
        }
    }

    /// Same content, kind and mode (stat fields aside).
    pub fn same_content(&self, other: &TreeEntry) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && self.blob == other.blob
            && self.target == other.target
    }
}

/// A snapshot's listing: every regular file, directory and symlink of the workspace by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// When the walk began (ns since the epoch).
    pub taken_ns: i64,
    pub entries: BTreeMap<String, TreeEntry>,
}

impl Tree {
    pub fn get(&self, path: &str) -> Option<&TreeEntry> {
        self.entries.get(path)
    }

    /// Bytes of regular files (what a restore writes).
    pub fn bytes(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.kind == FileKind::Regular)
            .map(|e| e.size)
            .sum()
    }

    /// Every content this tree needs.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        self.entries.values().filter_map(|e| e.blob.as_deref())
    }

    /// The snapshot's id: the SHA-256 of what a client can read of it (each entry's path, kind,
    /// mode, size, content or target and mtime), not of the stats kept only to skip unchanged
    /// files next time (ctime, inode, when the walk began). So an unchanged workspace snapshots
    /// to the same id, and its listing need not be written again.
    pub fn id(&self) -> String {
        // Encoded into one buffer, hashed in large pieces: a call into the hasher per field
        // costs more than the hashing itself for a listing of many small entries.
        fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
            buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            buf.extend_from_slice(bytes);
        }
        let mut h = Sha256::new();
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(b"agentd-tree/2\0");
        for (path, e) in &self.entries {
            field(&mut buf, path.as_bytes());
            buf.push(match e.kind {
                FileKind::Regular => b'f',
                FileKind::Directory => b'd',
                FileKind::Symlink => b'l',
            });
            buf.extend_from_slice(&e.mode.to_le_bytes());
            buf.extend_from_slice(&e.size.to_le_bytes());
            buf.extend_from_slice(&e.mtime_ns.to_le_bytes());
            field(&mut buf, e.blob.as_deref().unwrap_or_default().as_bytes());
            field(&mut buf, e.target.as_deref().unwrap_or_default().as_bytes());
            if buf.len() >= 1 << 16 {
                h.update(&buf);
                buf.clear();
            }
        }
        h.update(&buf);
        hex::encode(h.finalize())
    }
}

/// A snapshot just taken: its id ([`Tree::id`]), listing and cost. The listing is
/// shared: a job holds its before-snapshot's for its whole run and hands it to its after-snapshot.
#[derive(Debug, Clone)]
pub struct Taken {
    pub id: String,
    pub tree: Arc<Tree>,
    pub stats: TakeStats,
}

/// The listing a snapshot starts from: a file whose stat matches its entry there is not read
/// again. Any listing of the same workspace is a safe one (an entry is only reused on a whole
/// stat match, older than the listing by the racy margin); the closer to the workspace, the
/// fewer files are read.
#[derive(Debug, Clone)]
pub enum Basis {
    /// None: every file is read (a session's first snapshot).
    Nothing,
    /// A listing in the history, by tree id (the session's newest snapshot): read and parsed,
    /// unless this process took it lately and still holds it.
    Stored(String),
    /// A listing already in memory (a job's before-snapshot, for its after-snapshot): neither
    /// read nor parsed again, which for a workspace of many files is most of the listing's cost.
    Held(Arc<Tree>),
}

/// Handle on the object store. Every method blocks: call them on blocking threads.
#[derive(Debug, Clone)]
pub struct History {
    cas: Cas,
    /// The listings taken lately, shared by every clone of the handle.
    listings: Arc<listings::Listings>,
}

impl History {
    pub fn open(dir: &Path) -> Result<History> {
        Ok(History {
            cas: Cas::open(dir)?,
            listings: Arc::new(listings::Listings::new(listings::ENTRIES)),
        })
    }

    /// Snapshots the workspace open at `root`; `prev` (the session's latest snapshot) lets
    /// unchanged files be reused without reading them. With `hand_to` (a jailed job's agent ids
    /// on a root agentd), the walk also gives every entry not yet theirs to them.
    pub fn take(
        &self,
        root: OwnedFd,
        prev: Option<&Tree>,
        hand_to: Option<(u32, u32)>,
    ) -> Result<Taken> {
        let (tree, stats) = take::take(&self.cas, root, prev, hand_to)?;
        let id = tree.id();
        // Nothing changed since `prev`, down to every stat: its listing, stored under the same
        // id, is this one (but for when the walk began, whose older value only makes the racy
        // rule stricter). For a workspace of many files, encoding and writing the listing is
        // most of a snapshot that reads no file.
        let unchanged = prev.is_some_and(|p| p.entries == tree.entries);
        if !(unchanged && self.cas.keep_tree(&id)) {
            let json = serde_json::to_vec(&tree)
                .map_err(|e| Error::internal(format!("history: cannot encode a tree: {e}")))?;
            self.cas.put_tree(&id, &json)?;
        }
        let tree = Arc::new(tree);
        self.listings.put(&id, &tree);
        Ok(Taken { id, tree, stats })
    }

    /// The listing of snapshot `id` as a basis for the next snapshot: the one this process took
    /// when it is still held, else read back like [`History::tree`].
    pub fn listing(&self, id: &str) -> Result<Arc<Tree>> {
        if let Some(tree) = self.listings.get(id) {
            return Ok(tree);
        }
        self.tree(id).map(Arc::new)
    }

    /// The listing of snapshot `id`; SNAPSHOT_NOT_FOUND once it was collected.
    pub fn tree(&self, id: &str) -> Result<Tree> {
        let missing = || {
            Error::not_found(
                Reason::SnapshotNotFound,
                format!("snapshot {id:?} is not in the history (evicted by retention?)"),
            )
        };
        if !cas::is_id(id) {
            return Err(missing());
        }
        let bytes = self.cas.read_tree(id)?.ok_or_else(missing)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("history: tree {id} is corrupt: {e}")))
    }

    /// Opens the content of the regular file `path` of `tree`.
    pub fn open_file(&self, tree: &Tree, path: &str) -> Result<std::fs::File> {
        match tree.get(path) {
            Some(TreeEntry {
                kind: FileKind::Regular,
                blob: Some(b),
                ..
            }) => self.open_blob(b),
            Some(_) => Err(crate::workspace::fsops::not_regular(path)),
            None => Err(crate::workspace::fsops::not_found(path)),
        }
    }

    /// Opens a content by its hash.
    pub fn open_blob(&self, hash: &str) -> Result<std::fs::File> {
        if !cas::is_id(hash) {
            return Err(Error::internal("history: malformed blob id"));
        }
        self.cas.open_blob(hash)
    }

    /// Reads a whole content (for diffs; callers cap the size first).
    pub fn read_blob(&self, hash: &str) -> Result<Vec<u8>> {
        let mut f = self.open_blob(hash)?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut out)
            .map_err(|e| Error::internal(format!("history: cannot read an object: {e}")))?;
        Ok(out)
    }

    /// Writes `tree` into `dest`, a directory that must not exist yet (created 0700 here, so
    /// nothing in it can be a link planted by an agent): files copied from the store with their
    /// modes, directories, symlinks as stored. For rewind and fork, which then swap it in.
    pub fn restore_into(&self, tree: &Tree, dest: &Path) -> Result<()> {
        restore::restore_into(self, tree, dest)
    }

    /// Deletes every tree not in `live` and every content no live tree uses.
    pub fn gc(&self, live: &std::collections::HashSet<String>) -> Result<GcStats> {
        gc::collect(self, live)
    }
}

#[cfg(test)]
mod tests;
