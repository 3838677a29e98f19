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
