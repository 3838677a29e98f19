//! Per-session directories: `<root>/<session>/workspace` (where the agent runs and every client
//! path resolves) and `<root>/<session>/home` (the agent's private HOME, never reachable through
//! this API). Owns safe path handling, uploads, downloads, listings, deletion, limits, and the
//! snapshots and diffs that tell what a job changed.
//!
//! Security rule: client operations never follow a symlink, anywhere in a path. Resolution is
//! fd-relative (see `fsops`), so an agent that plants `leak -> /etc/passwd` or swaps a directory
//! for a symlink cannot make the server read or write outside the workspace. All blocking work
//! runs on blocking threads.

mod archive;
mod archive_extract;
mod archive_tree;
mod archive_upload;
pub(crate) mod fsops;
pub mod history;
mod home;
mod owner;
mod path;
mod remove;
mod rewind;
mod snapshot;
mod upload;
mod watch;

pub use archive::{ARCHIVE_CHUNK, ArchiveFormat};
pub use archive_extract::{ArchiveLimits, ExtractSummary};
pub use archive_upload::ArchiveUpload;
pub use home::Rename;
pub use path::{MAX_COMPONENT_BYTES, MAX_PATH_BYTES, TEMP_PREFIX, normalize_dir, normalize_path};
pub use snapshot::{SnapEntry, Snapshot};
pub use upload::Upload;
pub use watch::{
    ChangeType, MAX_WATCHED, MAX_WATCHED_PER_TENANT, RESET_MARKER, RING_EVENTS, Subscription,
    WatchEvent,
};

use crate::domain::{FileChange, FileEntry, FileKind, SessionId, TenantId, page_fit};
use crate::error::{Error, Reason, Result};
use bytes::Bytes;
use fsops::{DIR_FLAGS, kind_of, open_parent, stat_at};
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Page size used when a listing asks for `limit == 0`.
pub const DEFAULT_LIST_LIMIT: usize = 1000;

/// Per-session limits, enforced on create and while uploads stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceLimits {
    /// Regular files in the workspace.
    pub max_files: u64,
    /// Total bytes of the workspace's regular files.
    pub max_session_bytes: u64,
    pub max_file_bytes: u64,
}

/// A file given at session creation.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path: String,
    pub content: Bytes,
    /// Permission bits (`& 0o777`); `0o644` when unset.
    pub mode: Option<u32>,
}

/// The header of one file of an upload.
#[derive(Debug, Clone, Default)]
pub struct UploadHeader {
    pub path: String,
    /// Permission bits (`& 0o777`); `0o644` when unset.
    pub mode: Option<u32>,
    /// When set, the file must have exactly this many bytes.
    pub size: Option<u64>,
    /// When set, the content's lowercase or uppercase hex SHA-256.
    pub sha256: Option<String>,
}

/// Regular files and their total size in a workspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsUsage {
    pub files: u64,
    pub bytes: u64,
}

/// Handle on all session workspaces under one root. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Workspaces {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    limits: WorkspaceLimits,
    archive: ArchiveLimits,
    watches: watch::Watches,
    /// Opened on first use (creating its directories needs a blocking thread).
    history: std::sync::OnceLock<history::History>,
}

impl Workspaces {
    pub fn new(root: PathBuf, limits: WorkspaceLimits) -> Self {
        Self::with_archive_limits(root, limits, ArchiveLimits::default())
    }

    pub fn with_archive_limits(
        root: PathBuf,
        limits: WorkspaceLimits,
        archive: ArchiveLimits,
    ) -> Self {
        Workspaces {
            inner: Arc::new(Inner {
                root,
                limits,
                archive,
                watches: watch::Watches::default(),
                history: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn limits(&self) -> &WorkspaceLimits {
        &self.inner.limits
    }

    fn session_dir(&self, session: &SessionId) -> PathBuf {
        self.inner.root.join(session.as_str())
    }

    pub fn workspace_dir(&self, session: &SessionId) -> PathBuf {
        self.session_dir(session).join("workspace")
    }

    pub fn home_dir(&self, session: &SessionId) -> PathBuf {
        self.session_dir(session).join("home")
    }

    /// Creates both directories and writes the files, all or nothing (on error the session
    /// directory is removed). Paths and limits are checked before anything is written; errors
    /// name `files[i].path`. A later file with the same path wins.
    pub async fn create(&self, session: &SessionId, files: Vec<NewFile>) -> Result<WsUsage> {
        let files = self.validate_new_files(files)?;
        let root = self.inner.root.clone();
        let session_dir = self.session_dir(session);
        let ws_dir = self.workspace_dir(session);
        let home_dir = self.home_dir(session);
        let id = session.as_str().to_owned();
        blocking(move || {
            std::fs::create_dir_all(&root)
                .map_err(|e| Error::internal(format!("cannot create workspace root: {e}")))?;
            match std::fs::DirBuilder::new().mode(0o700).create(&session_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::internal(format!(
                        "a workspace for session {id:?} already exists"
                    )));
                }
                Err(e) => {
                    return Err(Error::internal(format!(
                        "cannot create the directory of session {id:?}: {e}"
                    )));
                }
            }
            let result = populate(&ws_dir, &home_dir, files);
            if result.is_err()
                && let Err(e) = remove_session_dir(&session_dir)
            {
                tracing::warn!(session = %id, error = %e, "could not remove a failed workspace");
            }
            result
        })
        .await?
    }

    /// Paths normalised, duplicates resolved (last wins), limits checked.
    fn validate_new_files(&self, files: Vec<NewFile>) -> Result<Vec<(String, NewFile)>> {
        let limits = self.limits();
        let mut by_path: BTreeMap<String, (usize, NewFile)> = BTreeMap::new();
        for (i, file) in files.into_iter().enumerate() {
            let field = format!("files[{i}].path");
            let rel = normalize_path(&file.path, &field)?;
            if file.content.len() as u64 > limits.max_file_bytes {
                return Err(Error::exhausted(
                    Reason::FileTooLarge,
                    format!(
                        "file {rel:?} ({field}) has {} bytes; the limit is {} bytes per file",
                        file.content.len(),
                        limits.max_file_bytes
                    ),
                ));
            }
            by_path.insert(rel, (i, file));
        }
        // A file that is also another file's parent directory cannot be created.
        let mut previous: Option<&String> = None;
        for (rel, (i, _)) in &by_path {
            if let Some(prev) = previous
                && rel.len() > prev.len()
                && rel.starts_with(prev.as_str())
                && rel.as_bytes()[prev.len()] == b'/'
            {
                return Err(Error::invalid(
                    Reason::InvalidPath,
                    format!("files[{i}].path"),
                    format!("path {rel:?} lies under {prev:?}, which is also given as a file"),
                ));
            }
            previous = Some(rel);
        }
        if by_path.len() as u64 > limits.max_files {
            return Err(Error::exhausted(
                Reason::TooManyFiles,
                format!(
                    "{} files given; the limit is {} files per session",
                    by_path.len(),
                    limits.max_files
                ),
            ));
        }
        let total: u64 = by_path.values().map(|(_, f)| f.content.len() as u64).sum();
        if total > limits.max_session_bytes {
            return Err(Error::exhausted(
                Reason::SessionTooLarge,
                format!(
                    "files total {total} bytes; the limit is {} bytes per session",
                    limits.max_session_bytes
                ),
            ));
        }
        Ok(by_path.into_iter().map(|(rel, (_, f))| (rel, f)).collect())
    }

    /// Removes the session's directories (and stops its file watch). Idempotent.
    pub async fn remove(&self, session: &SessionId) -> Result<()> {
        self.inner.watches.remove(session);
        let dir = self.session_dir(session);
        blocking(move || remove_session_dir(&dir)).await?
    }

    pub async fn exists(&self, session: &SessionId) -> bool {
        tokio::fs::symlink_metadata(self.workspace_dir(session))
            .await
            .is_ok_and(|m| m.is_dir())
    }

    /// Regular files and bytes in the workspace (not home).
    pub async fn usage(&self, session: &SessionId) -> Result<WsUsage> {
        let this = self.clone();
        let session = session.clone();
        blocking(move || {
            let root = this.open_ws(&session)?;
            usage_of(root)
        })
        .await?
    }

    /// Lists everything beneath `dir`, recursively, sorted by path: regular files, directories and
    /// symlinks (never followed); upload temp files and special files are left out. Entries come
    /// after the cursor `after` (a path), at most `limit` of them (`0` means
    /// [`DEFAULT_LIST_LIMIT`]) and about [`PAGE_BYTES`](crate::domain::PAGE_BYTES); the second
    /// value is the cursor of the next page, if any.
    pub async fn list(
        &self,
        session: &SessionId,
        dir: &str,
        include_sha256: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<FileEntry>, Option<String>)> {
        let dir = normalize_dir(dir, "dir")?;
        let after = after.map(str::to_owned);
        let limit = if limit == 0 {
            DEFAULT_LIST_LIMIT
        } else {
            limit
        };
        let this = self.clone();
        let session = session.clone();
        blocking(move || {
            let root = this.open_ws(&session)?;
            let start = fsops::open_beneath(root.as_fd(), &dir, DIR_FLAGS).map_err(|e| {
                if e == Errno::ENOTDIR && !dir.is_empty() {
                    match parent_kind(&root, &dir) {
                        Some(FileKind::Regular) => {
                            return Error::precondition(
                                Reason::NotADirectory,
                                format!("dir {dir:?} is not a directory"),
                            );
                        }
                        Some(FileKind::Symlink) | Some(FileKind::Directory) | None => {}
                    }
                }
                fsops::explain(root.as_fd(), &dir, e, Reason::NotADirectory)
            })?;
            let mut entries = Vec::new();
            fsops::walk(start, &dir, &mut |v| {
                let Some(rel) = v.rel else { return Ok(()) };
                if after.as_deref().is_some_and(|a| rel <= a) {
                    return Ok(());
                }
                if let Some(entry) =
                    fsops::entry_from_stat(rel.to_owned(), v.stat, v.dir, v.name, false)?
                {
                    entries.push(entry);
                }
                Ok(())
            })?;
            entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
            // A page also ends at about 2 MiB of paths, counting the hashes still to come.
            let hash = |e: &FileEntry| {
                if include_sha256 && e.kind == FileKind::Regular {
                    64
                } else {
                    0
                }
            };
            let fit = page_fit(&entries, limit, |e| e.page_weight() + hash(e));
            let next = if entries.len() > fit {
                entries.truncate(fit);
                entries.last().map(|e| e.path.clone())
            } else {
                None
            };
            if include_sha256 {
                // Hashes only for the page returned, not for the whole walk.
                for entry in entries.iter_mut().filter(|e| e.kind == FileKind::Regular) {
                    let (_, name) = path::split_parent(&entry.path);
                    if let Ok(parent) =
                        open_parent(root.as_fd(), &entry.path, Reason::NotARegularFile)
                    {
                        entry.sha256 = fsops::sha256_at(parent.as_fd(), name)?;
                    }
                }
            }
            Ok((entries, next))
        })
        .await?
    }

    /// Opens a regular file for download, positioned at `offset`.
    pub async fn open_read(
        &self,
        session: &SessionId,
        path: &str,
        offset: u64,
        include_sha256: bool,
    ) -> Result<(FileEntry, tokio::fs::File)> {
        let rel = normalize_path(path, "path")?;
        let this = self.clone();
        let session = session.clone();
        let (entry, file) = blocking(move || {
            let root = this.open_ws(&session)?;
            let parent = open_parent(root.as_fd(), &rel, Reason::NotARegularFile)?;
            let (_, name) = path::split_parent(&rel);
            let st = stat_at(parent.as_fd(), name)?.ok_or_else(|| fsops::not_found(&rel))?;
            match kind_of(&st) {
                Some(FileKind::Regular) => {}
                Some(FileKind::Symlink) => {
                    let target = nix::fcntl::readlinkat(parent.as_fd(), name)
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    return Err(fsops::symlink_error(
                        &rel,
                        &rel,
                        &target,
                        true,
                        Reason::NotARegularFile,
                    ));
                }
                _ => return Err(fsops::not_regular(&rel)),
            }
            let (mut file, st) = fsops::open_regular(parent.as_fd(), name, &rel)?;
            let size = u64::try_from(st.st_size).unwrap_or(0);
            if offset > size {
                return Err(Error::out_of_range(
                    Reason::OffsetOutOfRange,
                    format!("offset {offset} is past the end of {rel:?} ({size} bytes)"),
                ));
            }
            let sha256 = if include_sha256 {
                Some(fsops::sha256_of(&mut file)?)
            } else {
                None
            };
            file.seek(SeekFrom::Start(offset))?;
            let mut entry = fsops::entry_from_stat(rel.clone(), &st, parent.as_fd(), name, false)?
                .ok_or_else(|| fsops::not_regular(&rel))?;
            entry.sha256 = sha256;
            Ok((entry, file))
        })
        .await??;
        Ok((entry, tokio::fs::File::from_std(file)))
    }

    /// Starts an upload; limits count the workspace's usage at this moment.
    pub async fn begin_upload(&self, session: &SessionId) -> Result<Upload> {
        let this = self.clone();
        let session = session.clone();
        blocking(move || {
            let root = this.open_ws(&session)?;
            let dup = root
                .try_clone()
                .map_err(|e| Error::internal(format!("cannot duplicate workspace fd: {e}")))?;
            let usage = usage_of(dup)?;
            Ok(Upload::new(
                root,
                this.inner.limits,
                usage.files,
                usage.bytes,
            ))
        })
        .await?
    }

    /// Starts streaming an archive of `paths` (empty: everything). Paths are resolved first, so a
    /// missing session or path fails the call; later failures end the stream with an error.
    pub async fn download_archive(
        &self,
        session: &SessionId,
        paths: Vec<String>,
        format: ArchiveFormat,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Bytes>>> {
        let this = self.clone();
        let session = session.clone();
        let (ws, roots) = blocking(move || {
            let ws = this.open_ws(&session)?;
            let roots = archive::resolve_roots(ws.as_fd(), &paths)?;
            Ok::<_, Error>((ws, roots))
        })
        .await??;
        let (tx, rx) = archive::channel();
        tokio::task::spawn_blocking(move || archive::write_archive(ws, roots, format, tx));
        Ok(rx)
    }

    /// Starts streaming an archive of `paths` (empty: everything) of the history's snapshot
    /// `tree_id`, as DownloadArchive does for the live workspace.
    pub async fn download_snapshot_archive(
        &self,
        tree_id: String,
        paths: Vec<String>,
        format: ArchiveFormat,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Bytes>>> {
        let this = self.clone();
        let (h, tree, selected) = blocking(move || {
            let h = this.history()?;
            let tree = h.tree(&tree_id)?;
            let selected = archive_tree::select(&tree, &paths)?;
            Ok::<_, Error>((h, tree, selected))
        })
        .await??;
        let (tx, rx) = archive::channel();
        tokio::task::spawn_blocking(move || {
            archive_tree::write_tree_archive(h, tree, selected, format, tx)
        });
        Ok(rx)
    }

    /// Starts extracting an archive into the directory `dest` (empty: the root); nothing is
    /// visible in the workspace until [`ArchiveUpload::finish`].
    pub async fn begin_archive_upload(
        &self,
        session: &SessionId,
        format: ArchiveFormat,
        dest: &str,
    ) -> Result<ArchiveUpload> {
        let dest = normalize_dir(dest, "header.dest")?;
        let this = self.clone();
        let session = session.clone();
        blocking(move || {
            let ws = this.open_ws(&session)?;
            let dup = ws
                .try_clone()
                .map_err(|e| Error::internal(format!("cannot duplicate workspace fd: {e}")))?;
            let base = usage_of(dup)?;
            ArchiveUpload::start(archive_upload::UploadPlan {
                ws,
                session_dir: this.session_dir(&session),
                dest,
                format,
                limits: this.inner.limits,
                archive: this.inner.archive,
                base,
            })
        })
        .await?
    }

    /// Subscribes to the workspace's file changes after `after_seq` (0: from now on).
    pub async fn watch(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        paths: &[String],
        after_seq: u64,
    ) -> Result<Subscription> {
        let this = self.clone();
        let s = session.clone();
        let ws = blocking(move || this.open_ws(&s)).await??;
        self.inner
            .watches
            .subscribe(tenant, session, ws, paths, after_seq)
            .await
    }

    /// Deletes a file, symlink (the link itself) or directory. A non-empty directory needs
    /// `recursive`. Returns how many non-directory entries were removed.
    pub async fn delete(&self, session: &SessionId, path: &str, recursive: bool) -> Result<u64> {
        let rel = normalize_path(path, "path")?;
        let this = self.clone();
        let session = session.clone();
        blocking(move || {
            let root = this.open_ws(&session)?;
            let parent = open_parent(root.as_fd(), &rel, Reason::NotARegularFile)?;
            let (_, name) = path::split_parent(&rel);
            let st = stat_at(parent.as_fd(), name)?.ok_or_else(|| fsops::not_found(&rel))?;
            if kind_of(&st) != Some(FileKind::Directory) {
                let removed = owner::in_dir(parent.as_fd(), |dir| {
                    nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                });
                return match removed {
                    Ok(()) => Ok(1),
                    Err(Errno::ENOENT) => Err(fsops::not_found(&rel)),
                    Err(e) => Err(Error::internal(format!("cannot delete {rel:?}: {e}"))),
                };
            }
            if recursive {
                return remove::remove_tree(parent.as_fd(), std::ffi::OsStr::new(name));
            }
            let removed = owner::in_dir(parent.as_fd(), |dir| {
                nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir)
            });
            match removed {
                Ok(()) => Ok(0),
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => Err(Error::precondition(
                    Reason::DirectoryNotEmpty,
                    format!("directory {rel:?} is not empty; delete it recursively"),
                )),
                Err(Errno::ENOENT) => Err(fsops::not_found(&rel)),
                Err(e) => Err(Error::internal(format!("cannot delete {rel:?}: {e}"))),
            }
        })
        .await?
    }

    /// Writes agentd's configuration files for the agent into the session's HOME, never through
    /// a symlink the agent left there (see `home`).
    pub async fn write_home_files(
        &self,
        session: &SessionId,
        files: Vec<(PathBuf, Vec<u8>)>,
    ) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let home = self.home_dir(session);
        blocking(move || home::write_files(&home, &files)).await?
    }

    /// Writes a job's input as `name` in the session's HOME (not durably: it matters only while
    /// the job runs), never through a symlink the agent left there.
    pub async fn write_home_input(
        &self,
        session: &SessionId,
        name: &'static str,
        content: Vec<u8>,
    ) -> Result<()> {
        let home = self.home_dir(session);
        blocking(move || home::write_top_file(&home, name, &content)).await?
    }

    /// Makes the FIFO `name` in the session's HOME (replacing whatever is there) and opens it
    /// read-write, non-blocking.
    pub async fn home_fifo(
        &self,
        session: &SessionId,
        name: &'static str,
    ) -> Result<std::os::fd::OwnedFd> {
        let home = self.home_dir(session);
        blocking(move || home::make_fifo(&home, name)).await?
    }

    /// Renames files of the agent's own state in the session's HOME (see [`Rename`]); returns how
    /// many.
    pub async fn rename_home_files(&self, session: &SessionId, rename: Rename) -> Result<usize> {
        let home = self.home_dir(session);
        blocking(move || home::rename_files(&home, &rename)).await?
    }

    /// Metadata of every entry of the workspace (no hashes).
    pub async fn snapshot(&self, session: &SessionId) -> Result<Snapshot> {
        let this = self.clone();
        let session = session.clone();
        blocking(move || snapshot::take(this.open_ws(&session)?)).await?
    }

    /// Changes between two snapshots of the same workspace: regular files and symlinks added,
    /// modified (size, mtime, mode or kind differ) or deleted, sorted by path; directories are
    /// not reported. Added and modified entries are read from the workspace now, with sha256.
    pub async fn diff(
        &self,
        session: &SessionId,
        before: &Snapshot,
        after: &Snapshot,
    ) -> Result<Vec<FileChange>> {
        let changes = snapshot::changes(before, after);
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let this = self.clone();
        let session = session.clone();
        let after = after.clone();
        blocking(move || snapshot::describe(this.open_ws(&session)?, &after, changes)).await?
    }

    /// The workspace history's object store, `<root>/.history` (no session id starts with a
    /// dot). Blocking on first use.
    pub fn history(&self) -> Result<history::History> {
        if let Some(h) = self.inner.history.get() {
            return Ok(h.clone());
        }
        let h = history::History::open(&self.inner.root.join(".history"))?;
        Ok(self.inner.history.get_or_init(|| h).clone())
    }

    /// Snapshots a session's workspace into the history, reusing the unchanged files of `basis`
    /// (a stored listing this process took lately is not read back: `History::listing`), and
    /// handing what is not theirs to `hand_to` on the way (`History::take`).
    pub async fn take_snapshot(
        &self,
        session: &SessionId,
        basis: history::Basis,
        hand_to: Option<(u32, u32)>,
    ) -> Result<history::Taken> {
        let this = self.clone();
        let session = session.clone();
        blocking(move || {
            let h = this.history()?;
            let prev = match basis {
                history::Basis::Nothing => None,
                history::Basis::Stored(id) => h.listing(&id).ok(),
                history::Basis::Held(tree) => Some(tree),
            };
            h.take(this.open_ws(&session)?, prev.as_deref(), hand_to)
        })
        .await?
    }

    /// Runs `f` with the history on a blocking thread.
    pub async fn with_history<T: Send + 'static>(
        &self,
        f: impl FnOnce(&history::History) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        blocking(move || f(&this.history()?)).await?
    }

    /// Opens the workspace directory; a missing one means the session does not exist.
    fn open_ws(&self, session: &SessionId) -> Result<OwnedFd> {
        fsops::open_root(&self.workspace_dir(session))?
            .ok_or_else(|| Error::session_not_found(session.as_str()))
    }
}

/// Runs blocking filesystem work off the async runtime.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("workspace task failed: {e}")))
}

/// Kind of the last component of `rel` (not followed), if it can be found safely.
fn parent_kind(root: &OwnedFd, rel: &str) -> Option<FileKind> {
    let parent = open_parent(root.as_fd(), rel, Reason::NotADirectory).ok()?;
    let (_, name) = path::split_parent(rel);
    kind_of(&stat_at(parent.as_fd(), name).ok()??)
}

fn usage_of(root: OwnedFd) -> Result<WsUsage> {
    let mut usage = WsUsage::default();
    fsops::walk(root, "", &mut |v| {
        if kind_of(v.stat) == Some(FileKind::Regular) {
            usage.files += 1;
            usage.bytes = usage
                .bytes
                .saturating_add(u64::try_from(v.stat.st_size).unwrap_or(0));
        }
        Ok(())
    })?;
    Ok(usage)
}

/// Creates the workspace and home directories and writes the initial files (blocking).
fn populate(ws_dir: &Path, home_dir: &Path, files: Vec<(String, NewFile)>) -> Result<WsUsage> {
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(ws_dir)
        .map_err(|e| Error::internal(format!("cannot create workspace directory: {e}")))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(home_dir)
        .map_err(|e| Error::internal(format!("cannot create home directory: {e}")))?;
    let root = fsops::open_root(ws_dir)?
        .ok_or_else(|| Error::internal("workspace directory vanished after creation"))?;
    for (rel, file) in files {
        let (parent_rel, name) = path::split_parent(&rel);
        let parent = fsops::mkdir_beneath(root.as_fd(), parent_rel, &rel)?;
        let mode = file.mode.unwrap_or(0o644) & 0o777;
        let fd = nix::fcntl::openat(
            parent.as_fd(),
            name,
            nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_TRUNC
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(mode),
        )
        .map_err(|e| Error::internal(format!("cannot create {rel:?}: {e}")))?;
        let mut out = std::fs::File::from(fd);
        out.write_all(&file.content)
            .map_err(|e| Error::internal(format!("cannot write {rel:?}: {e}")))?;
        // The umask may have narrowed the mode given at open.
        out.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::internal(format!("cannot set the mode of {rel:?}: {e}")))?;
    }
    usage_of(root)
}

/// Removes a session directory; absent is fine. An agent may leave directories without write
/// permission, or nested far past PATH_MAX: see [`remove`].
fn remove_session_dir(dir: &Path) -> Result<()> {
    remove::remove_dir(dir)
}

#[cfg(test)]
mod tests;
