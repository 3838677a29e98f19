//! Streaming uploads into a workspace. Each file is written to a hidden temp file in its target
//! directory by a blocking writer task fed through a bounded channel (hashing as it goes), and
//! only renamed into place when the whole upload commits. Limits are checked per chunk, before
//! the bytes are handed to the writer.
//!
//! An upload that does not complete leaves nothing: any error, or dropping the `Upload` (the call
//! was cancelled or ran past its deadline), removes every temp file, and a dropped upload never
//! renames anything into place. Both hold even when the drop lands while blocking work is in
//! flight (which runs to its end regardless): each temp file is owned by a [`Target`] that
//! unlinks it when dropped unless it was renamed, and the commit checks, in the same atomic step
//! that starts the renames, that its upload was not abandoned.

use super::fsops::{self, kind_of, mkdir_beneath, stat_at};
use super::owner;
use super::path::{normalize_path, split_parent};
use super::{UploadHeader, WorkspaceLimits, blocking};
use crate::domain::{FileEntry, FileKind};
use crate::error::{Error, Reason, Result};
use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::renameat;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks in flight between the request stream and the writer thread (64 KiB each in practice).
const CHANNEL_CHUNKS: usize = 8;
const WRITE_BUFFER: usize = 256 * 1024;
const DEFAULT_MODE: u32 = 0o644;

/// Where an upload is in its life; moves only forward, from `LIVE` to one of the others.
const LIVE: u8 = 0;
const COMMITTING: u8 = 1;
const ABANDONED: u8 = 2;

/// A temp file and where it goes. Dropping it unlinks the temp file unless it was renamed into
/// place (blocking: drop it on the blocking pool, see [`remove_temps`]).
struct Target {
    rel: String,
    parent: Arc<OwnedFd>,
    name: String,
    temp: String,
    /// Size of the regular file this one replaces, if any (it stops counting once replaced).
    replaces: Option<u64>,
    renamed: bool,
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.renamed {
            return;
        }
        let removed = owner::in_dir(self.parent.as_fd(), |dir| {
            nix::unistd::unlinkat(
                dir,
                self.temp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
        });
        match removed {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => {
                tracing::warn!(path = %self.rel, error = %e, "could not remove upload temp file")
            }
        }
    }
}

struct Staged {
    target: Target,
    size: u64,
    sha256: String,
}

struct Current {
    target: Target,
    declared_size: Option<u64>,
    declared_sha256: Option<String>,
    written: u64,
    tx: mpsc::Sender<Bytes>,
    writer: JoinHandle<std::io::Result<(u64, String)>>,
}

/// An upload in progress. Nothing it writes is visible until [`Upload::commit`].
pub struct Upload {
    root: Arc<OwnedFd>,
    limits: WorkspaceLimits,
    /// Regular files and bytes in the workspace when the upload began.
    base_files: u64,
    base_bytes: u64,
    staged: Vec<Staged>,
    /// The staged files' paths and their directories, so a new file's conflicts are found by
    /// its own path's ancestors instead of a pass over every staged file.
    paths: StagedPaths,
    /// One descriptor per directory files went into, shared by its files' targets: an upload of
    /// 100,000 files (the default cap) must not hold 100,000 descriptors until it commits.
    parents: HashMap<String, Arc<OwnedFd>>,
    current: Option<Current>,
    /// The error that ended this upload; every later call answers it again.
    failed: Option<Error>,
    /// `LIVE`, `COMMITTING` or `ABANDONED`, shared with the blocking commit.
    state: Arc<AtomicU8>,
}

impl Upload {
    pub(crate) fn new(root: OwnedFd, limits: WorkspaceLimits, files: u64, bytes: u64) -> Self {
        Upload {
            root: Arc::new(root),
            limits,
            base_files: files,
            base_bytes: bytes,
            staged: Vec::new(),
            paths: StagedPaths::default(),
            parents: HashMap::new(),
            current: None,
            failed: None,
            state: Arc::new(AtomicU8::new(LIVE)),
        }
    }

    /// Ends the previous file (checking its declared size and checksum) and starts a new one.
    pub async fn start_file(&mut self, header: UploadHeader) -> Result<()> {
        self.check_alive()?;
        if let Err(e) = self.finish_current().await {
            return Err(self.fail(e).await);
        }
        match self.open_file(header).await {
            Ok(current) => {
                self.current = Some(current);
                Ok(())
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    /// Appends to the current file. Limits are enforced before the bytes are written.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<()> {
        self.check_alive()?;
        let Some(current) = &self.current else {
            return Err(Error::invalid(
                Reason::MissingField,
                "header",
                "a chunk arrived before any file header",
            ));
        };
        let len = chunk.len() as u64;
        let written = current.written.saturating_add(len);
        let rel = current.target.rel.clone();
        if written > self.limits.max_file_bytes {
            let e = Error::exhausted(
                Reason::FileTooLarge,
                format!(
                    "file {rel:?} exceeds the limit of {} bytes per file",
                    self.limits.max_file_bytes
                ),
            );
            return Err(self.fail(e).await);
        }
        if let Some(declared) = current.declared_size
            && written > declared
        {
            let e = Error::invalid(
                Reason::SizeMismatch,
                "header.size",
                format!("file {rel:?} is longer than its declared size of {declared} bytes"),
            );
            return Err(self.fail(e).await);
        }
        let (_, session_bytes) = self.projected();
        if session_bytes.saturating_add(len) > self.limits.max_session_bytes {
            let e = Error::exhausted(
                Reason::SessionTooLarge,
                format!(
                    "writing {rel:?} exceeds the session limit of {} bytes",
                    self.limits.max_session_bytes
                ),
            );
            return Err(self.fail(e).await);
        }
        let tx = current.tx.clone();
        if tx.send(chunk).await.is_err() {
            // The writer stopped early: its result says why.
            let e = match self.current.take() {
                Some(c) => {
                    let e = writer_error(c.writer.await, &c.target.rel);
                    remove_temps(vec![c.target]).await;
                    e
                }
                None => Error::internal("upload writer vanished"),
            };
            return Err(self.fail(e).await);
        }
        if let Some(c) = self.current.as_mut() {
            c.written = written;
        }
        Ok(())
    }

    /// Ends the last file and renames every file into place, in order (a later file with the same
    /// path has already replaced the earlier one). Returns the entries, with sha256.
    pub async fn commit(mut self) -> Result<Vec<FileEntry>> {
        self.check_alive()?;
        if let Err(e) = self.finish_current().await {
            return Err(self.fail(e).await);
        }
        let staged = std::mem::take(&mut self.staged);
        let state = self.state.clone();
        let result = blocking(move || commit_blocking(staged, &state)).await;
        match result {
            Ok(Ok(entries)) => Ok(entries),
            // The blocking task already removed whatever temp files were left.
            Ok(Err(e)) | Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn check_alive(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Files and bytes the workspace would hold if the upload committed now.
    fn projected(&self) -> (u64, u64) {
        let mut files = self.base_files;
        let mut bytes = self.base_bytes;
        let targets = self
            .staged
            .iter()
            .map(|s| (&s.target, s.size))
            .chain(self.current.iter().map(|c| (&c.target, c.written)));
        for (target, size) in targets {
            match target.replaces {
                Some(old) => bytes = bytes.saturating_sub(old),
                None => files += 1,
            }
            bytes = bytes.saturating_add(size);
        }
        (files, bytes)
    }

    async fn open_file(&mut self, header: UploadHeader) -> Result<Current> {
        let rel = normalize_path(&header.path, "header.path")?;
        if let Some(size) = header.size
            && size > self.limits.max_file_bytes
        {
            return Err(Error::exhausted(
                Reason::FileTooLarge,
                format!(
                    "file {rel:?} declares {size} bytes; the limit is {} bytes per file",
                    self.limits.max_file_bytes
                ),
            ));
        }
        let declared_sha256 = match header.sha256 {
            Some(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Some(_) => {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    "header.sha256",
                    format!("sha256 of {rel:?} must be 64 hex digits"),
                ));
            }
            None => None,
        };
        if let Some(a) = self.paths.conflict(&rel) {
            return Err(Error::invalid(
                Reason::InvalidPath,
                "header.path",
                format!("path {rel:?} conflicts with {a:?} uploaded earlier in this request"),
            ));
        }
        // A later file with the same path wins: drop the earlier temp now.
        if self.paths.files.contains(&rel)
            && let Some(i) = self.staged.iter().position(|s| s.target.rel == rel)
        {
            let earlier = self.staged.remove(i);
            remove_temps(vec![earlier.target]).await;
        }
        let mode = header.mode.unwrap_or(DEFAULT_MODE) & 0o777;
        let root = self.root.clone();
        let rel2 = rel.clone();
        let parent_rel = split_parent(&rel).0.to_owned();
        let known = self.parents.get(&parent_rel).cloned();
        let (target, file) = blocking(move || create_temp(&root, &rel2, known)).await??;
        self.parents
            .entry(parent_rel)
            .or_insert_with(|| Arc::clone(&target.parent));

        let mut next = self.projected();
        if target.replaces.is_none() {
            next.0 += 1;
        } else if let Some(old) = target.replaces {
            next.1 = next.1.saturating_sub(old);
        }
        if next.0 > self.limits.max_files {
            remove_temps(vec![target]).await;
            return Err(Error::exhausted(
                Reason::TooManyFiles,
                format!(
                    "adding {rel:?} exceeds the limit of {} files per session",
                    self.limits.max_files
                ),
            ));
        }
        if let Some(size) = header.size
            && next.1.saturating_add(size) > self.limits.max_session_bytes
        {
            remove_temps(vec![target]).await;
            return Err(Error::exhausted(
                Reason::SessionTooLarge,
                format!(
                    "file {rel:?} of {size} bytes exceeds the session limit of {} bytes",
                    self.limits.max_session_bytes
                ),
            ));
        }

        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let writer = tokio::task::spawn_blocking(move || write_file(file, rx, mode));
        Ok(Current {
            target,
            declared_size: header.size,
            declared_sha256,
            written: 0,
            tx,
            writer,
        })
    }

    /// Closes the current file's writer and checks it against its header.
    async fn finish_current(&mut self) -> Result<()> {
        let Some(current) = self.current.take() else {
            return Ok(());
        };
        let Current {
            target,
            declared_size,
            declared_sha256,
            tx,
            writer,
            ..
        } = current;
        drop(tx);
        let (size, sha256) = match writer.await {
            Ok(Ok(v)) => v,
            other => {
                let e = writer_error(other, &target.rel);
                remove_temps(vec![target]).await;
                return Err(e);
            }
        };
        let mismatch = if declared_size.is_some_and(|d| d != size) {
            Some(Error::invalid(
                Reason::SizeMismatch,
                "header.size",
                format!(
                    "file {:?} has {size} bytes, its header declared {}",
                    target.rel,
                    declared_size.unwrap_or_default()
                ),
            ))
        } else if declared_sha256.as_ref().is_some_and(|d| *d != sha256) {
            Some(Error::invalid(
                Reason::ChecksumMismatch,
                "header.sha256",
                format!(
                    "file {:?} has sha256 {sha256}, its header declared another",
                    target.rel
                ),
            ))
        } else {
            None
        };
        if let Some(e) = mismatch {
            remove_temps(vec![target]).await;
            return Err(e);
        }
        self.paths.add(&target.rel);
        self.staged.push(Staged {
            target,
            size,
            sha256,
        });
        Ok(())
    }

    /// Ends the upload: removes every temp file (awaited, so callers see a clean workspace).
    async fn fail(&mut self, e: Error) -> Error {
        let mut targets: Vec<Target> = self.staged.drain(..).map(|s| s.target).collect();
        if let Some(current) = self.current.take() {
            drop(current.tx);
            // The writer only holds the (soon unlinked) fd; it ends on its own.
            targets.push(current.target);
        }
        remove_temps(targets).await;
        self.failed = Some(e.clone());
        e
    }

    fn pending_targets(&mut self) -> Vec<Target> {
        let mut targets: Vec<Target> = self.staged.drain(..).map(|s| s.target).collect();
        if let Some(current) = self.current.take() {
            targets.push(current.target);
        }
        targets
    }
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field(
                "staged",
                &self
                    .staged
                    .iter()
                    .map(|s| &s.target.rel)
                    .collect::<Vec<_>>(),
            )
            .field("current", &self.current.as_ref().map(|c| &c.target.rel))
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // A commit still on its way to the blocking pool must not rename anything any more; one
        // that already started finishes (the renames are the upload's last step).
        let _ = self
            .state
            .compare_exchange(LIVE, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
        let targets = self.pending_targets();
        if targets.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || drop(targets));
            }
            Err(_) => drop(targets),
        }
    }
}

/// The paths of an upload's staged files, and each directory above them with one file below it.
#[derive(Default)]
struct StagedPaths {
    files: HashSet<String>,
    dirs: HashMap<String, String>,
}

impl StagedPaths {
    fn add(&mut self, rel: &str) {
        self.files.insert(rel.to_owned());
        for dir in ancestors(rel) {
            if self.dirs.contains_key(dir) {
                break;
            }
            self.dirs.insert(dir.to_owned(), rel.to_owned());
        }
    }

    /// A staged file that `rel` cannot sit beside: one that is a directory above `rel`, or one
    /// below `rel` (which makes `rel` a directory).
    fn conflict(&self, rel: &str) -> Option<&str> {
        ancestors(rel)
            .find_map(|dir| self.files.get(dir))
            .or_else(|| self.dirs.get(rel))
            .map(String::as_str)
    }
}

/// The directories above `rel`, nearest first: `a/b/c` → `a/b`, `a`.
fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.rmatch_indices('/').map(move |(i, _)| &rel[..i])
}

fn writer_error(
    result: std::result::Result<std::io::Result<(u64, String)>, tokio::task::JoinError>,
    rel: &str,
) -> Error {
    match result {
        Ok(Ok(_)) => Error::internal(format!("writer for {rel:?} stopped early")),
        Ok(Err(e)) => Error::internal(format!("cannot write {rel:?}: {e}")),
        Err(e) => Error::internal(format!("writer for {rel:?} failed: {e}")),
    }
}

/// Removes the temp files (by dropping their targets) on the blocking pool, and waits for it.
async fn remove_temps(targets: Vec<Target>) {
    if targets.is_empty() {
        return;
    }
    if let Err(e) = blocking(move || drop(targets)).await {
        tracing::warn!(error = %e, "could not remove upload temp files");
    }
}

/// Creates the parent directories and a temp file next to the destination.
/// `known` is the parent directory when an earlier file of the upload already opened it.
fn create_temp(
    root: &OwnedFd,
    rel: &str,
    known: Option<Arc<OwnedFd>>,
) -> Result<(Target, std::fs::File)> {
    let (parent_rel, name) = split_parent(rel);
    let parent = match known {
        Some(parent) => parent,
        None => Arc::new(mkdir_beneath(root.as_fd(), parent_rel, rel)?),
    };
    let replaces = match stat_at(parent.as_fd(), name)? {
        None => None,
        Some(st) => match kind_of(&st) {
            Some(FileKind::Regular) => Some(u64::try_from(st.st_size).unwrap_or(0)),
            Some(FileKind::Directory) => {
                return Err(Error::precondition(
                    Reason::NotARegularFile,
                    format!("path {rel:?} is a directory"),
                ));
            }
            Some(FileKind::Symlink) => {
                let target = nix::fcntl::readlinkat(parent.as_fd(), name)
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(fsops::symlink_error(
                    rel,
                    rel,
                    &target,
                    true,
                    Reason::NotARegularFile,
                ));
            }
            None => return Err(fsops::not_regular(rel)),
        },
    };
    let (temp, file) = fsops::create_temp(parent.as_fd())
        .map_err(|e| Error::internal(format!("cannot create a temp file for {rel:?}: {e}")))?;
    Ok((
        Target {
            rel: rel.to_owned(),
            parent,
            name: name.to_owned(),
            temp,
            replaces,
            renamed: false,
        },
        file,
    ))
}

/// The writer task: drains chunks into the file, hashing as it goes, then applies the mode.
fn write_file(
    file: std::fs::File,
    mut rx: mpsc::Receiver<Bytes>,
    mode: u32,
) -> std::io::Result<(u64, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        out.write_all(&chunk)?;
        size += chunk.len() as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Renames every staged file into place (dropping `staged` on any error removes the temp files).
fn commit_blocking(mut staged: Vec<Staged>, state: &AtomicU8) -> Result<Vec<FileEntry>> {
    if state
        .compare_exchange(LIVE, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Nobody waits for this answer: the call was dropped.
        return Err(Error::internal(
            "the upload was abandoned before it committed",
        ));
    }
    // Refuse before renaming anything if a destination became something we cannot replace.
    for s in &staged {
        let t = &s.target;
        let problem = match stat_at(t.parent.as_fd(), &t.name) {
            Ok(Some(st)) => match kind_of(&st) {
                Some(FileKind::Directory) => Some(Error::precondition(
                    Reason::NotARegularFile,
                    format!("path {:?} is a directory", t.rel),
                )),
                Some(FileKind::Symlink) => Some(Error::precondition(
                    Reason::SymlinkEscape,
                    format!(
                        "path {:?} is a symlink; symlinks are never written through",
                        t.rel
                    ),
                )),
                _ => None,
            },
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = problem {
            return Err(e);
        }
    }
    for s in &mut staged {
        let t = &mut s.target;
        let moved = owner::in_dir(t.parent.as_fd(), |dir| {
            renameat(dir, t.temp.as_str(), dir, t.name.as_str())
        });
        if let Err(e) = moved {
            return Err(Error::internal(format!(
                "cannot move {:?} into place: {e}",
                t.rel
            )));
        }
        t.renamed = true;
    }
    let mut entries = Vec::with_capacity(staged.len());
    for s in staged {
        let t = &s.target;
        let st = stat_at(t.parent.as_fd(), &t.name)?
            .ok_or_else(|| Error::internal(format!("{:?} vanished after upload", t.rel)))?;
        if let Some(mut entry) =
            fsops::entry_from_stat(t.rel.clone(), &st, t.parent.as_fd(), &t.name, false)?
        {
            entry.sha256 = Some(s.sha256);
            entries.push(entry);
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::path::TEMP_PREFIX;
    use std::path::Path;

    fn upload(dir: &Path) -> Upload {
        let root = std::fs::File::open(dir).unwrap();
        let limits = WorkspaceLimits {
            max_files: 100,
            max_session_bytes: 1 << 20,
            max_file_bytes: 1 << 20,
        };
        Upload::new(OwnedFd::from(root), limits, 0, 0)
    }

    fn header(path: &str) -> UploadHeader {
        UploadHeader {
            path: path.into(),
            mode: None,
            size: None,
            sha256: None,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Files of one directory share its descriptor until the commit, and a path that makes a
    /// staged file a directory, or sits below one, is refused whichever comes first.
    #[tokio::test]
    async fn one_descriptor_per_directory_and_conflicts_by_ancestry() {
        let dir = tempfile::tempdir().unwrap();
        let mut up = upload(dir.path());
        for i in 0..30 {
            let d = ["x", "x/y", ""][i % 3];
            let path = if d.is_empty() {
                format!("f{i}")
            } else {
                format!("{d}/f{i}")
            };
            up.start_file(header(&path)).await.unwrap();
            up.write_chunk(Bytes::from_static(b"hi")).await.unwrap();
        }
        up.start_file(header("x/y/z/last")).await.unwrap();
        up.finish_current().await.unwrap();
        let mut fds: Vec<*const OwnedFd> = up
            .staged
            .iter()
            .map(|s| Arc::as_ptr(&s.target.parent))
            .collect();
        fds.sort();
        fds.dedup();
        assert_eq!(
            fds.len(),
            4,
            "x, x/y, x/y/z and the root: one descriptor each"
        );
        for (path, with) in [
            ("x/f0/below", "x/f0"),
            ("f2/below/deeper", "f2"),
            ("x/y/z", "x/y/z/last"),
        ] {
            let Err(e) = up.open_file(header(path)).await else {
                panic!("{path} was taken beside {with}");
            };
            assert_eq!(e.reason(), Reason::InvalidPath, "{path}");
            assert!(e.to_string().contains(&format!("{with:?}")), "{path}: {e}");
        }
        // Neither above nor below a staged file: fine, and so is the same path again.
        for path in ["x/y2/f", "x/f0", "x/yy"] {
            up.start_file(header(path)).await.unwrap();
        }
        let entries = up.commit().await.unwrap();
        assert_eq!(
            entries.len(),
            30 + 1 + 2,
            "x/f0 once, replaced by the later file"
        );
    }

    /// What the runtime does with the result of a blocking task whose caller was dropped: the
    /// temp file it created goes with it.
    #[test]
    fn a_dropped_target_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = OwnedFd::from(std::fs::File::open(dir.path()).unwrap());
        let (target, file) = create_temp(&root, "sub/a.txt", None).unwrap();
        drop(file);
        assert_eq!(names(dir.path()).len(), 1);
        assert!(names(dir.path())[0].starts_with(TEMP_PREFIX));
        drop(target);
        assert!(names(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_upload_renames_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut up = upload(dir.path());
        up.start_file(header("slow.bin")).await.unwrap();
        up.write_chunk(Bytes::from_static(b"data")).await.unwrap();
        up.finish_current().await.unwrap();
        let staged = std::mem::take(&mut up.staged);
        let state = up.state.clone();
        // The call is dropped while its commit waits for a blocking thread.
        drop(up);
        let err = blocking(move || commit_blocking(staged, &state))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.reason(), Reason::Internal);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[tokio::test]
    async fn a_commit_that_started_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let mut up = upload(dir.path());
        up.start_file(header("a.txt")).await.unwrap();
        up.write_chunk(Bytes::from_static(b"data")).await.unwrap();
        let entries = up.commit().await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(names(dir.path()), ["a.txt"]);
    }

    #[tokio::test]
    async fn a_dropped_upload_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut up = upload(dir.path());
        up.start_file(header("done.txt")).await.unwrap();
        up.write_chunk(Bytes::from_static(b"one")).await.unwrap();
        up.start_file(header("d/half.txt")).await.unwrap();
        up.write_chunk(Bytes::from_static(b"tw")).await.unwrap();
        assert_eq!(names(dir.path()).len(), 2);
        drop(up);
        // The removal runs on the blocking pool.
        for _ in 0..500 {
            if names(dir.path()).is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("temp files left: {:?}", names(dir.path()));
    }
}
