//! Materializing a snapshot: a fresh directory filled from the store. Writing into a directory
//! this function created itself (never into a live workspace) is what makes it safe: no entry in
//! it was made by an agent.
//!
//! Entries are made relative to a descriptor of that directory, never by a path through it: a
//! snapshot's paths may be as long as the API allows (4,096 bytes), and prefixed with the
//! directory's own path they would pass the kernel's PATH_MAX (a fork or rewind of such a job
//! failed with "File name too long").

use super::super::fsops::{self, DIR_FLAGS};
use super::super::path::split_parent;
use super::{History, Tree};
use crate::domain::FileKind;
use crate::error::{Error, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fchmod, mkdirat};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

fn io(what: &str, path: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("history: cannot restore {what} {path:?}: {e}"))
}

pub(super) fn restore_into(h: &History, tree: &Tree, dest: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(|e| io("into", &dest.display().to_string(), e))?;
    let root = fsops::open_root(dest)?
        .ok_or_else(|| io("into", &dest.display().to_string(), "it vanished"))?;
    let mut parents = Parents::default();
    // BTreeMap order puts every directory before what it holds.
    for (path, e) in &tree.entries {
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::internal(format!(
                "history: tree holds a bad path {path:?}"
            )));
        }
        let (parent, name) = split_parent(path);
        let dir = parents.open(root.as_fd(), parent, path)?;
        match e.kind {
            FileKind::Directory => mkdirat(dir, name, Mode::from_bits_truncate(0o700))
                .map_err(|err| io("directory", path, err))?,
            FileKind::Symlink => {
                nix::unistd::symlinkat(e.target.as_deref().unwrap_or(""), dir, name)
                    .map_err(|err| io("symlink", path, err))?
            }
            FileKind::Regular => {
                let blob = e.blob.as_deref().unwrap_or("");
                let mut src = h.open_blob(blob)?;
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd = nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(0o600))
                    .map_err(|err| io("file", path, err))?;
                let mut out = std::fs::File::from(fd);
                std::io::copy(&mut src, &mut out).map_err(|err| io("file", path, err))?;
                fchmod(&out, Mode::from_bits_truncate(e.mode & 0o7777))
                    .map_err(|err| io("mode of", path, err))?;
            }
        }
    }
    drop(parents);
    // Directory modes last: a read-only directory would refuse its own entries.
    for (path, e) in tree.entries.iter().rev() {
        if e.kind == FileKind::Directory {
            let fd = fsops::open_beneath(root.as_fd(), path, DIR_FLAGS)
                .map_err(|err| io("directory", path, err))?;
            fchmod(&fd, Mode::from_bits_truncate(e.mode & 0o7777))
                .map_err(|err| io("mode of", path, err))?;
        }
    }
    Ok(())
}

/// The directory the last entry went into, kept open for its siblings.
#[derive(Default)]
struct Parents {
    last: Option<(String, OwnedFd)>,
}

impl Parents {
    /// The restored directory `rel` (`""`: the root), open.
    fn open<'a>(
        &'a mut self,
        root: BorrowedFd<'a>,
        rel: &str,
        entry: &str,
    ) -> Result<BorrowedFd<'a>> {
        if rel.is_empty() {
            return Ok(root);
        }
        if self.last.as_ref().is_none_or(|(at, _)| at != rel) {
            let fd = fsops::open_beneath(root, rel, DIR_FLAGS)
                .map_err(|err| io("the directory of", entry, err))?;
            self.last = Some((rel.to_owned(), fd));
        }
        match &self.last {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(io("the directory of", entry, "not open")),
        }
    }
}
