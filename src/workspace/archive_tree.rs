//! DownloadArchive of a snapshot: the same archive writer as the live workspace's, fed from a
//! history tree and its contents instead of a directory walk. Nothing is read from a workspace,
//! so an agent's links cannot matter: symlinks are stored as the snapshot recorded them.

use super::archive::{self, ArchiveOut, Meta, write_error};
use super::history::{History, Tree, TreeEntry};
use super::path::normalize_dir;
use crate::domain::FileKind;
use crate::error::{Error, Result};
use bytes::Bytes;
use std::ffi::OsString;
use tokio::sync::mpsc;

/// The tree's entries the request selects (empty `paths`: all), in path order. A path the
/// snapshot does not hold fails the call before the stream starts.
pub(crate) fn select(tree: &Tree, paths: &[String]) -> Result<Vec<String>> {
    let mut rels = Vec::with_capacity(paths.len());
    for (i, p) in paths.iter().enumerate() {
        let rel = normalize_dir(p, &format!("paths[{i}]"))?;
        if !rel.is_empty() && tree.get(&rel).is_none() {
            return Err(super::fsops::not_found(&rel));
        }
        rels.push(rel);
    }
    let wanted = |path: &str| {
        rels.is_empty()
            || rels.iter().any(|r| {
                r.is_empty()
                    || path == r
                    || (path.starts_with(r.as_str()) && path.as_bytes().get(r.len()) == Some(&b'/'))
            })
    };
    Ok(tree.entries.keys().filter(|p| wanted(p)).cloned().collect())
}

fn meta(e: &TreeEntry) -> Meta {
    Meta {
        mode: e.mode,
        mtime: e.mtime_ns.div_euclid(1_000_000_000),
        size: e.size,
    }
}

/// Writes the archive of `selected` entries of `tree` (blocking). Failures go down the channel.
pub(crate) fn write_tree_archive(
    h: History,
    tree: Tree,
    selected: Vec<String>,
    format: archive::ArchiveFormat,
    tx: mpsc::Sender<Result<Bytes>>,
) {
    let mut out = archive::open_out(format, archive::ChunkSink::new(tx.clone()));
    let result = selected
        .iter()
        .try_for_each(|rel| write_entry(&h, &tree, rel, out.as_mut()))
        .and_then(|()| out.finish().map_err(write_error));
    if let Err(e) = result
        && !tx.is_closed()
    {
        let _ = tx.blocking_send(Err(e));
    }
}

fn write_entry(h: &History, tree: &Tree, rel: &str, out: &mut dyn ArchiveOut) -> Result<()> {
    let Some(e) = tree.get(rel) else {
        return Ok(());
    };
    match e.kind {
        FileKind::Directory => out.dir(rel, &meta(e)).map_err(write_error),
        FileKind::Symlink => {
            let target = OsString::from(e.target.clone().unwrap_or_default());
            out.symlink(rel, &meta(e), &target).map_err(write_error)
        }
        FileKind::Regular => {
            let file = h.open_file(tree, rel)?;
            // The store's content has exactly the recorded size unless the store was damaged:
            // say so rather than archive a short entry.
            let len = file
                .metadata()
                .map_err(|err| Error::internal(format!("history: cannot stat {rel:?}: {err}")))?
                .len();
            if len != e.size {
                return Err(Error::internal(format!(
                    "history: content of {rel:?} has {len} bytes, the snapshot says {}",
                    e.size
                )));
            }
            let mut content = std::io::BufReader::with_capacity(archive::ARCHIVE_CHUNK, file);
            out.file(rel, &meta(e), &mut content).map_err(write_error)
        }
    }
}
