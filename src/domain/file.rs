//! Files in a workspace as the rest of the system sees them: listings and what a job changed.

use super::Timestamp;
use serde::{Deserialize, Serialize};

/// The kind of a workspace entry. Symlinks are reported, never followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
}

/// Metadata of one workspace entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path with `/` separators, never starting with `/` and never containing `..`.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub modified: Timestamp,
    /// Lowercase hex SHA-256, when it was asked for (regular files only).
    pub sha256: Option<String>,
    /// Link target as stored, for symlinks.
    pub symlink_target: Option<String>,
}

/// How a job changed a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    /// Moved from `FileChange::from_path` with the same content (and maybe a new mode).
    Renamed,
}

/// One file a job changed. `entry` is the file after the job; `None` for deletions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: String,
    pub kind: ChangeKind,
    pub entry: Option<FileEntry>,
    /// The path before the job, for renames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_path: Option<String>,
    /// The file before the job (content hash, mode, kind, link target); `None` for additions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<FileEntry>,
}

/// About how many bytes of paths one page of a file listing or of a job's outputs holds: a page
/// must fit the 4 MiB a gRPC client accepts by default, and a path may be 4 KiB long.
pub const PAGE_BYTES: usize = 2 << 20;

impl FileEntry {
    /// What the entry weighs against [`PAGE_BYTES`]: its strings plus room for the rest.
    pub fn page_weight(&self) -> usize {
        64 + self.path.len()
            + self.sha256.as_ref().map_or(0, String::len)
            + self.symlink_target.as_ref().map_or(0, String::len)
    }
}

impl FileChange {
    /// What the change weighs against [`PAGE_BYTES`].
    pub fn page_weight(&self) -> usize {
        self.path.len()
            + self.from_path.as_ref().map_or(0, String::len)
            + self.entry.as_ref().map_or(0, FileEntry::page_weight)
            + self.before.as_ref().map_or(0, FileEntry::page_weight)
    }
}

/// How many of `items` (at least one) go in a page of at most `limit` and about [`PAGE_BYTES`].
pub fn page_fit<T>(items: &[T], limit: usize, weight: impl Fn(&T) -> usize) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for item in items.iter().take(limit) {
        bytes += weight(item);
        if n > 0 && bytes > PAGE_BYTES {
            break;
        }
        n += 1;
    }
    n
}
