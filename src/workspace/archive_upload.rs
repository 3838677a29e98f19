//! The async side of UploadArchive and the final move: chunks go to the extractor thread
//! (`archive_extract`) through a bounded channel; once the stream ended cleanly and the archive
//! was extracted and checked in full, the staged tree is merged into the workspace: new names are
//! renamed in whole (one rename per new directory tree), existing directories are descended into,
//! existing files are replaced by rename. Conflicts (a file where the workspace has a directory,
//! or the reverse) are found before the first rename.
//!
//! Dropping an [`ArchiveUpload`] (the call was cancelled) never merges: the extractor sees the
//! channel close, fails or finishes into its staging directory, which is removed with it.

use super::archive::ArchiveFormat;
use super::archive_extract::{
    self, ArchiveLimits, CHANNEL_CHUNKS, ChunkSource, ExtractSummary, Extractor, Staging,
};
use super::fsops::{self, DIR_FLAGS, kind_of, mkdir_beneath, stat_at};
use super::owner;
use super::{WorkspaceLimits, WsUsage};
use crate::domain::FileKind;
use crate::error::{Error, Reason, Result};
use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{RenameFlags, openat, renameat, renameat2};
use nix::sys::stat::Mode;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

type Extracted = Result<(Staging, ExtractSummary)>;

/// An archive upload in progress.
pub struct ArchiveUpload {
    tx: Option<mpsc::Sender<Bytes>>,
    task: JoinHandle<Extracted>,
    ws: Arc<OwnedFd>,
    dest: String,
}

pub(crate) struct UploadPlan {
    pub ws: OwnedFd,
    pub session_dir: std::path::PathBuf,
    pub dest: String,
    pub format: ArchiveFormat,
    pub limits: WorkspaceLimits,
    pub archive: ArchiveLimits,
    pub base: WsUsage,
}

impl ArchiveUpload {
    /// Creates the staging directory and starts the extractor thread.
    pub(crate) fn start(plan: UploadPlan) -> Result<Self> {
        let (staging, tree) = archive_extract::create_staging(&plan.session_dir)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let consumed = Arc::new(AtomicU64::new(0));
        let extractor = Extractor::new(
            tree,
            plan.dest.clone(),
            plan.limits,
            plan.archive,
            plan.base,
            consumed.clone(),
        );
        let format = plan.format;
        let task = tokio::task::spawn_blocking(move || {
            let source = ChunkSource::new(rx, consumed);
            extractor.run(format, source).map(|s| (staging, s))
        });
        Ok(ArchiveUpload {
            tx: Some(tx),
            task,
            ws: Arc::new(plan.ws),
            dest: plan.dest,
        })
    }

    /// Hands one chunk to the extractor; if it already stopped, its error.
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let Some(tx) = &self.tx else {
            return Err(Error::internal("archive upload already finished"));
        };
        if tx.send(chunk).await.is_ok() {
            return Ok(());
        }
        self.tx = None;
        match (&mut self.task).await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) => Err(Error::invalid(
                Reason::InvalidArchive,
                "archive",
                "bytes follow the end of the archive",
            )),
            Err(e) => Err(Error::internal(format!("archive extractor failed: {e}"))),
        }
    }

    /// Ends the archive, waits for the extraction, then moves everything into the workspace.
    pub async fn finish(mut self) -> Result<ExtractSummary> {
        self.tx = None;
        let (staging, summary) = (&mut self.task)
            .await
            .map_err(|e| Error::internal(format!("archive extractor failed: {e}")))??;
        let ws = self.ws.clone();
        let dest = self.dest.clone();
        super::blocking(move || {
            let result = merge(ws.as_fd(), &dest, &staging);
            drop(staging);
            result
        })
        .await??;
        Ok(summary)
    }
}

/// Moves the staged tree into `dest` of the workspace (blocking).
fn merge(ws: BorrowedFd<'_>, dest: &str, staging: &Staging) -> Result<()> {
    let tree = fsops::open_root(&staging.tree())?
        .ok_or_else(|| Error::internal("the archive staging directory vanished"))?;
    let existing = match fsops::open_beneath(ws, dest, DIR_FLAGS) {
        Ok(fd) => Some(fd),
        Err(Errno::ENOENT) => None,
        Err(e) => return Err(fsops::explain(ws, dest, e, Reason::NotADirectory)),
    };
    if let Some(dir) = &existing {
        check_conflicts(tree.as_fd(), dir.as_fd(), dest)?;
    }
    let target = match existing {
        Some(fd) => fd,
        None => mkdir_beneath(ws, dest, dest)?,
    };
    move_entries(tree.as_fd(), target.as_fd(), dest)
}

fn names_of(dir: BorrowedFd<'_>) -> Result<Vec<OsString>> {
    let fd = openat(dir, ".", DIR_FLAGS, Mode::empty())
        .map_err(|e| Error::internal(format!("cannot reopen a directory: {e}")))?;
    let mut d = nix::dir::Dir::from_fd(fd)
        .map_err(|e| Error::internal(format!("cannot read a directory: {e}")))?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| Error::internal(format!("cannot read a directory: {e}")))?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(std::ffi::OsStr::from_bytes(n).to_owned());
        }
    }
    Ok(names)
}

fn join(prefix: &str, name: &OsString) -> String {
    let name = name.to_string_lossy();
    if prefix.is_empty() {
        name.into_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

fn kind_at(dir: BorrowedFd<'_>, name: &OsString) -> Result<Option<FileKind>> {
    let Some(name) = name.to_str() else {
        return Ok(None);
    };
    Ok(stat_at(dir, name)?.as_ref().and_then(kind_of))
}

/// Refuses, before anything moves, a staged file where the workspace has a directory or the
/// reverse (or a symlink where a staged directory must be descended into).
fn check_conflicts(staged: BorrowedFd<'_>, ws: BorrowedFd<'_>, prefix: &str) -> Result<()> {
    for name in names_of(staged)? {
        let rel = join(prefix, &name);
        let ours = kind_at(staged, &name)?;
        let theirs = kind_at(ws, &name)?;
        match (ours, theirs) {
            (_, None) => {}
            (Some(FileKind::Directory), Some(FileKind::Directory)) => {
                let (a, b) = (open_dir(staged, &name, &rel)?, open_dir(ws, &name, &rel)?);
                check_conflicts(a.as_fd(), b.as_fd(), &rel)?;
            }
            (Some(FileKind::Directory), Some(FileKind::Symlink)) => {
                return Err(Error::precondition(
                    Reason::SymlinkEscape,
                    format!("{rel:?} is a symlink in the workspace; symlinks are never followed"),
                ));
            }
            (Some(FileKind::Directory), Some(_)) => {
                return Err(Error::precondition(
                    Reason::NotADirectory,
                    format!("{rel:?} is a directory in the archive but not in the workspace"),
                ));
            }
            (_, Some(FileKind::Directory)) => {
                return Err(Error::precondition(
                    Reason::NotARegularFile,
                    format!("{rel:?} is a directory in the workspace but not in the archive"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Opens a directory of the staged tree, or of the workspace, where a job may have closed it to
/// everyone (agentd owns it: [`owner`]).
fn open_dir(dir: BorrowedFd<'_>, name: &OsString, rel: &str) -> Result<OwnedFd> {
    owner::openat_owned(dir, name.as_os_str(), DIR_FLAGS)
        .map_err(|e| Error::internal(format!("cannot open directory {rel:?}: {e}")))
}

fn move_entries(staged: BorrowedFd<'_>, ws: BorrowedFd<'_>, prefix: &str) -> Result<()> {
    for name in names_of(staged)? {
        let rel = join(prefix, &name);
        // Into a directory a job may have made read-only: agentd owns it.
        let moved = owner::in_dir(ws, |ws| {
            renameat2(
                staged,
                name.as_os_str(),
                ws,
                name.as_os_str(),
                RenameFlags::RENAME_NOREPLACE,
            )
        });
        match moved {
            Ok(()) => continue,
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::internal(format!("cannot move {rel:?} in: {e}"))),
        }
        let both_dirs = kind_at(staged, &name)? == Some(FileKind::Directory)
            && kind_at(ws, &name)? == Some(FileKind::Directory);
        if both_dirs {
            let (a, b) = (open_dir(staged, &name, &rel)?, open_dir(ws, &name, &rel)?);
            move_entries(a.as_fd(), b.as_fd(), &rel)?;
        } else {
            owner::in_dir(ws, |ws| {
                renameat(staged, name.as_os_str(), ws, name.as_os_str())
            })
            .map_err(|e| Error::internal(format!("cannot move {rel:?} in: {e}")))?;
        }
    }
    Ok(())
}
