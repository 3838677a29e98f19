//! Collection: every tree the store no longer names is deleted, then every content that no
//! remaining tree uses. Mark and sweep over the live set keeps no reference counts that a crash
//! could leave wrong; a snapshot taken during a sweep is safe because its tree is written (and
//! named in the store) a moment later: trees and contents written (or found again, which
//! touches them) within `GRACE` are kept, so a snapshot in flight on any replica loses nothing.

use super::History;
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Longer than any snapshot takes between writing its first object and the store naming it.
pub(crate) const GRACE: Duration = Duration::from_secs(15 * 60);

fn fresh(path: &Path, now: SystemTime) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| now.duration_since(t).map_or(true, |age| age < GRACE))
}

/// What a collection freed and what remains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub trees_deleted: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    /// Bytes of content still stored.
    pub bytes_kept: u64,
}

fn io(e: std::io::Error) -> Error {
    Error::internal(format!("history: gc: {e}"))
}

fn names(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(io)?;
                if let Some(n) = e.file_name().to_str() {
                    out.push(n.to_owned());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    Ok(out)
}

pub(super) fn collect(h: &History, live: &HashSet<String>) -> Result<GcStats> {
    let now = SystemTime::now();
    let mut stats = GcStats::default();
    let mut keep: HashSet<String> = HashSet::new();
    for id in names(&h.cas.trees_dir())? {
        if live.contains(&id) || fresh(&h.cas.tree_path(&id), now) {
            match h.tree(&id) {
                Ok(t) => keep.extend(t.blobs().map(str::to_owned)),
                // A live tree we cannot read keeps nothing alive; say so rather than fail GC.
                Err(e) => tracing::warn!(tree = %id, error = %e, "history: unreadable tree"),
            }
        } else {
            std::fs::remove_file(h.cas.tree_path(&id)).map_err(io)?;
            stats.trees_deleted += 1;
        }
    }
    let objects = h.cas.objects_dir();
    for prefix in names(&objects)? {
        let dir = objects.join(&prefix);
        for rest in names(&dir)? {
            let path = dir.join(&rest);
            let len = std::fs::symlink_metadata(&path)
                .map(|m| m.len())
                .unwrap_or(0);
            if keep.contains(&format!("{prefix}{rest}")) || fresh(&path, now) {
                stats.bytes_kept += len;
            } else {
                std::fs::remove_file(&path).map_err(io)?;
                stats.blobs_deleted += 1;
                stats.bytes_freed += len;
            }
        }
    }
    Ok(stats)
}
