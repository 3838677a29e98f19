//! Blocking, fd-relative filesystem primitives for workspaces. Every client path is resolved
//! beneath an fd of the workspace directory and no symlink is ever followed: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or, where the kernel lacks it, one `openat` per
//! component with `O_NOFOLLOW`. Callers run these on blocking threads only.

use super::owner::{self, LentDir};
use super::path::{MAX_PATH_BYTES, TEMP_PREFIX, link_stays_inside, split_parent};
use crate::domain::{FileEntry, FileKind, Timestamp};
use crate::error::{Error, Reason, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `openat2` answered ENOSYS, so later calls go straight to the fallback.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

pub(crate) const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Flags for opening something we are about to read: `O_NONBLOCK` so a FIFO that slipped past the
/// type check cannot block the thread, `O_NOCTTY` so a tty cannot become ours.
const READ_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

/// Creates a fresh file (mode 0600) under one of agentd's temp names in `dir`, never through a
/// link, as its owner where a job closed `dir`: what is written there is renamed into place.
/// Returns its name and the file.
pub(crate) fn create_temp(dir: BorrowedFd<'_>) -> nix::Result<(String, std::fs::File)> {
    let temp = format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = owner::in_dir(dir, |dir| {
        openat(dir, temp.as_str(), flags, Mode::from_bits_truncate(0o600))
    })?;
    Ok((temp, std::fs::File::from(fd)))
}

/// Opens a session's workspace directory itself (trusted server path, last component not
/// followed). `None` when it does not exist.
pub(crate) fn open_root(dir: &Path) -> Result<Option<OwnedFd>> {
    let opened = match nix::fcntl::open(dir, DIR_FLAGS, Mode::empty()) {
        // A job may have closed its own workspace or HOME (`chmod 000 .`); agentd owns both.
        Err(Errno::EACCES) => match (dir.parent(), dir.file_name()) {
            (Some(parent), Some(name)) => nix::fcntl::open(parent, DIR_FLAGS, Mode::empty())
                .and_then(|parent| owner::openat_owned(parent.as_fd(), name, DIR_FLAGS)),
            _ => Err(Errno::EACCES),
        },
        other => other,
    };
    match opened {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(Error::internal(format!(
            "cannot open workspace directory: {e}"
        ))),
    }
}

/// Opens the normalised path `rel` beneath `root` with `flags` (plus `O_NOFOLLOW|O_CLOEXEC`),
/// following no symlink anywhere. `""` opens the root itself.
pub(crate) fn open_beneath(root: BorrowedFd<'_>, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let target = if rel.is_empty() { "." } else { rel };
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how = OpenHow::new().flags(flags).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        // EAGAIN only happens when a concurrent rename races the lookup: retrying is correct.
        for _ in 0..8 {
            match openat2(root, target, how) {
                Err(Errno::EAGAIN) => continue,
                Err(Errno::ENOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                // A directory on the way (or the target) whose mode denies agentd, which may
                // own it: one component at a time, lending the owner's permissions.
                Err(Errno::EACCES) => return open_beneath_fallback(root, rel, flags),
                other => return other,
            }
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            return Err(Errno::EAGAIN);
        }
    }
    open_beneath_fallback(root, rel, flags)
}

/// Component-by-component resolution for kernels without `openat2`. Safe because every
/// component is a plain name (normalised: no `..`) opened with `O_NOFOLLOW`.
pub(crate) fn open_beneath_fallback(
    root: BorrowedFd<'_>,
    rel: &str,
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if rel.is_empty() {
        return owner::openat_owned(root, ".", flags);
    }
    let (parent, name) = split_parent(rel);
    let mut current: Option<OwnedFd> = None;
    for component in parent.split('/').filter(|c| !c.is_empty()) {
        let dir = match &current {
            Some(fd) => fd.as_fd(),
            None => root,
        };
        current = Some(owner::openat_owned(dir, component, DIR_FLAGS)?);
    }
    let dir = match &current {
        Some(fd) => fd.as_fd(),
        None => root,
    };
    owner::openat_owned(dir, name, flags)
}

/// Opens the directory that contains `rel`'s last component; errors are explained.
pub(crate) fn open_parent(
    root: BorrowedFd<'_>,
    rel: &str,
    final_reason: Reason,
) -> Result<OwnedFd> {
    let (parent, _) = split_parent(rel);
    open_beneath(root, parent, DIR_FLAGS).map_err(|e| explain(root, rel, e, final_reason))
}

/// `lstat` of one name in an open directory; `None` when absent.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &str) -> Result<Option<FileStat>> {
    match owner::in_dir(dir, |dir| fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(Error::internal(format!("cannot stat {name:?}: {e}"))),
    }
}

pub(crate) fn kind_of(st: &FileStat) -> Option<FileKind> {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => Some(FileKind::Regular),
        SFlag::S_IFDIR => Some(FileKind::Directory),
        SFlag::S_IFLNK => Some(FileKind::Symlink),
        _ => None,
    }
}

pub(crate) fn mtime_ns(st: &FileStat) -> i64 {
    st.st_mtime
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_mtime_nsec)
}

/// The error for a failed resolution of `rel`, found by walking the path again with `lstat` to
/// name the component at fault. `final_reason` is used when the last component is a symlink that
/// stays inside the workspace (the operation needed something else there).
pub(crate) fn explain(
    root: BorrowedFd<'_>,
    rel: &str,
    errno: Errno,
    final_reason: Reason,
) -> Error {
    if !matches!(
        errno,
        Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV
    ) {
        return Error::internal(format!("cannot resolve {rel:?}: {errno}"));
    }
    let components: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let mut current: Option<OwnedFd> = None;
    for (i, component) in components.iter().enumerate() {
        let dir = match &current {
            Some(fd) => fd.as_fd(),
            None => root,
        };
        let prefix = components[..=i].join("/");
        let is_last = i + 1 == components.len();
        let st = match stat_at(dir, component) {
            Ok(Some(st)) => st,
            Ok(None) => return not_found(rel),
            Err(e) => return e,
        };
        match kind_of(&st) {
            Some(FileKind::Symlink) => {
                let target = readlinkat(dir, *component)
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return symlink_error(rel, &prefix, &target, is_last, final_reason);
            }
            Some(FileKind::Directory) if !is_last => {
                match openat(dir, *component, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => current = Some(fd),
                    Err(Errno::ENOENT) => return not_found(rel),
                    Err(e) => return Error::internal(format!("cannot open {prefix:?}: {e}")),
                }
            }
            _ if !is_last => {
                return Error::precondition(
                    Reason::NotADirectory,
                    format!("{prefix:?} in path {rel:?} is not a directory"),
                );
            }
            _ => {}
        }
    }
    // The tree changed between the failure and this walk; report what the kernel said.
    match errno {
        Errno::ENOENT => not_found(rel),
        Errno::ENOTDIR => Error::precondition(
            Reason::NotADirectory,
            format!("a component of path {rel:?} is not a directory"),
        ),
        _ => Error::precondition(
            Reason::SymlinkEscape,
            format!("path {rel:?} crosses a symlink; symlinks are never followed"),
        ),
    }
}

pub(crate) fn symlink_error(
    rel: &str,
    link: &str,
    target: &str,
    is_last: bool,
    final_reason: Reason,
) -> Error {
    if is_last && link_stays_inside(link, target) {
        let what = match final_reason {
            Reason::NotADirectory => "not a directory",
            _ => "not a regular file",
        };
        Error::precondition(
            final_reason,
            format!("path {rel:?} is a symlink ({what}); symlinks are never followed"),
        )
    } else if is_last {
        Error::precondition(
            Reason::SymlinkEscape,
            format!("path {rel:?} is a symlink leading outside the workspace"),
        )
    } else {
        Error::precondition(
            Reason::SymlinkEscape,
            format!("{link:?} in path {rel:?} is a symlink; symlinks are never followed"),
        )
    }
}

pub(crate) fn not_found(rel: &str) -> Error {
    Error::not_found(Reason::FileNotFound, format!("path {rel:?} not found"))
}

/// Builds the listing entry for `rel` from its `lstat`; `None` for kinds we do not report
/// (FIFOs, sockets, devices).
pub(crate) fn entry_from_stat(
    rel: String,
    st: &FileStat,
    dir: BorrowedFd<'_>,
    name: &str,
    include_sha256: bool,
) -> Result<Option<FileEntry>> {
    let Some(kind) = kind_of(st) else {
        return Ok(None);
    };
    let symlink_target = match kind {
        FileKind::Symlink => Some(
            readlinkat(dir, name)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        _ => None,
    };
    let sha256 = match kind {
        FileKind::Regular if include_sha256 => sha256_at(dir, name)?,
        _ => None,
    };
    Ok(Some(FileEntry {
        path: rel,
        kind,
        size: if kind == FileKind::Directory {
            0
        } else {
            u64::try_from(st.st_size).unwrap_or(0)
        },
        mode: st.st_mode & 0o7777,
        modified: Timestamp(
            st.st_mtime
                .saturating_mul(1_000_000)
                .saturating_add(st.st_mtime_nsec / 1000),
        ),
        sha256,
        symlink_target,
    }))
}

/// Opens a regular file for reading; anything else (FIFO, device, directory, symlink) is refused.
pub(crate) fn open_regular(
    dir: BorrowedFd<'_>,
    name: &str,
    rel: &str,
) -> Result<(std::fs::File, FileStat)> {
    let fd = match owner::openat_owned(dir, name, READ_FLAGS) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Err(not_found(rel)),
        Err(Errno::ELOOP) => {
            return Err(Error::precondition(
                Reason::NotARegularFile,
                format!("path {rel:?} is a symlink; symlinks are never followed"),
            ));
        }
        Err(e) => return Err(Error::internal(format!("cannot open {rel:?}: {e}"))),
    };
    let st = fstat(&fd).map_err(|e| Error::internal(format!("cannot stat {rel:?}: {e}")))?;
    if kind_of(&st) != Some(FileKind::Regular) {
        return Err(not_regular(rel));
    }
    // Back to blocking mode: O_NONBLOCK only guarded the open itself.
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(|e| Error::internal(format!("cannot set flags on {rel:?}: {e}")))?;
    Ok((std::fs::File::from(fd), st))
}

pub(crate) fn not_regular(rel: &str) -> Error {
    Error::precondition(
        Reason::NotARegularFile,
        format!("path {rel:?} is not a regular file"),
    )
}

/// Lowercase hex SHA-256 of a regular file in `dir`; `None` if it vanished or is not regular.
pub(crate) fn sha256_at(dir: BorrowedFd<'_>, name: &str) -> Result<Option<String>> {
    match open_regular(dir, name, name) {
        Ok((mut file, _)) => Ok(Some(sha256_of(&mut file)?)),
        Err(Error::NotFound { .. }) | Err(Error::FailedPrecondition { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn sha256_of(file: &mut std::fs::File) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Opens (creating as needed) the directory `rel` beneath `root`, one component at a time and
/// never through a symlink. `field_path` is the client path, for messages.
pub(crate) fn mkdir_beneath(root: BorrowedFd<'_>, rel: &str, field_path: &str) -> Result<OwnedFd> {
    let mut current: Option<OwnedFd> = None;
    let components: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for (i, component) in components.iter().enumerate() {
        let dir = match &current {
            Some(fd) => fd.as_fd(),
            None => root,
        };
        let mut attempt = 0;
        let fd = loop {
            match owner::openat_owned(dir, *component, DIR_FLAGS) {
                Ok(fd) => break fd,
                Err(Errno::ENOENT) if attempt < 3 => {
                    attempt += 1;
                    let made = owner::in_dir(dir, |dir| {
                        mkdirat(dir, *component, Mode::from_bits_truncate(0o755))
                    });
                    match made {
                        Ok(()) | Err(Errno::EEXIST) => continue,
                        Err(e) => {
                            return Err(Error::internal(format!(
                                "cannot create directory {:?}: {e}",
                                components[..=i].join("/")
                            )));
                        }
                    }
                }
                Err(e @ (Errno::ENOTDIR | Errno::ELOOP | Errno::ENOENT)) => {
                    return Err(explain(root, field_path, e, Reason::NotADirectory));
                }
                Err(e) => {
                    return Err(Error::internal(format!(
                        "cannot open directory {:?}: {e}",
                        components[..=i].join("/")
                    )));
                }
            }
        };
        current = Some(fd);
    }
    match current {
        Some(fd) => Ok(fd),
        // A job may have closed the directory itself: agentd owns it.
        None => owner::openat_owned(root, ".", DIR_FLAGS)
            .map_err(|e| Error::internal(format!("cannot reopen workspace: {e}"))),
    }
}

/// One entry met by [`walk`].
pub(crate) struct Visit<'a> {
    /// Path relative to the workspace root; `None` when a component is not UTF-8 or the path is
    /// longer than [`MAX_PATH_BYTES`] (such entries still count towards usage but cannot be named
    /// by clients).
    pub rel: Option<&'a str>,
    /// The path is longer than [`MAX_PATH_BYTES`]; a directory this deep is not descended into.
    pub too_deep: bool,
    pub name: &'a str,
    pub dir: BorrowedFd<'a>,
    pub stat: &'a FileStat,
}

/// Visits every entry beneath the directory `start` (whose path is `prefix`), depth first,
/// never following symlinks and skipping upload temp files. Directories are opened lazily so
/// only the ancestors of pending entries hold descriptors.
///
/// No directory whose path is longer than [`MAX_PATH_BYTES`] is descended into. No client can
/// name what is below it, and an agent can nest directories without end: each level's path is as
/// long as all the levels above it, so the paths of a tree 20,000 deep take 400 MB, and every
/// level holds a descriptor while its siblings wait.
pub(crate) fn walk(
    start: OwnedFd,
    prefix: &str,
    visit: &mut dyn FnMut(&Visit<'_>) -> Result<()>,
) -> Result<()> {
    walk_with(start, prefix, Some(TEMP_PREFIX), visit)
}

/// [`walk`], agentd's own upload temp files included: what a job's limit watch counts, where a
/// name must not hide what it holds.
pub(crate) fn walk_all(
    start: OwnedFd,
    visit: &mut dyn FnMut(&Visit<'_>) -> Result<()>,
) -> Result<()> {
    walk_with(start, "", None, visit)
}

fn walk_with(
    start: OwnedFd,
    prefix: &str,
    skip: Option<&str>,
    visit: &mut dyn FnMut(&Visit<'_>) -> Result<()>,
) -> Result<()> {
    struct Pending {
        parent: Option<Arc<LentDir>>,
        name: OsString,
        rel: Option<String>,
        /// The path's length in bytes, UTF-8 or not.
        len: usize,
    }
    let mut start = Some(start);
    let mut stack = vec![Pending {
        parent: None,
        name: OsString::from("."),
        rel: Some(prefix.to_owned()),
        len: prefix.len(),
    }];
    let skip = skip.map(str::as_bytes);
    while let Some(pending) = stack.pop() {
        let fd = match (&pending.parent, start.take()) {
            (None, Some(fd)) => fd,
            (Some(parent), _) => {
                match owner::openat_owned(parent.as_fd(), pending.name.as_os_str(), DIR_FLAGS) {
                    Ok(fd) => fd,
                    // Replaced or removed since we saw it: there is nothing (safe) to descend into.
                    // Or closed to agentd even as its owner (not agentd's): the rest of the tree is
                    // still walked, so one such directory cannot break every listing and snapshot.
                    Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EACCES) => continue,
                    Err(e) => return Err(Error::internal(format!("cannot open directory: {e}"))),
                }
            }
            (None, None) => continue,
        };
        // Held while its entries are visited and its subdirectories wait to be opened.
        let fd = Arc::new(LentDir::new(fd));
        let names = read_names(fd.as_fd(), skip)?;
        for name in names {
            let st = match fstatat(fd.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Gone, or in a directory agentd could read but not search, not even as owner.
                Err(Errno::ENOENT | Errno::EACCES) => continue,
                Err(e) => return Err(Error::internal(format!("cannot stat entry: {e}"))),
            };
            let len = match pending.len {
                0 => name.len(),
                n => n + 1 + name.len(),
            };
            let too_deep = len > MAX_PATH_BYTES;
            let name_str = name.to_str();
            let rel = match (&pending.rel, name_str) {
                _ if too_deep => None,
                (Some(p), Some(n)) if p.is_empty() => Some(n.to_owned()),
                (Some(p), Some(n)) => Some(format!("{p}/{n}")),
                _ => None,
            };
            visit(&Visit {
                rel: rel.as_deref(),
                too_deep,
                name: name_str.unwrap_or(""),
                dir: fd.as_fd(),
                stat: &st,
            })?;
            if !too_deep && kind_of(&st) == Some(FileKind::Directory) {
                stack.push(Pending {
                    parent: Some(fd.clone()),
                    name,
                    rel,
                    len,
                });
            }
        }
    }
    Ok(())
}

/// The names in directory `fd` but `.`, `..` and those starting with `skip`.
pub(crate) fn read_names(fd: BorrowedFd<'_>, skip: Option<&[u8]>) -> Result<Vec<OsString>> {
    let reader = fd
        .try_clone_to_owned()
        .map_err(|e| Error::internal(format!("cannot duplicate directory fd: {e}")))?;
    let mut dir = nix::dir::Dir::from_fd(reader)
        .map_err(|e| Error::internal(format!("cannot read directory: {e}")))?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| Error::internal(format!("cannot read directory: {e}")))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." || skip.is_some_and(|s| name.starts_with(s)) {
            continue;
        }
        names.push(std::ffi::OsStr::from_bytes(name).to_owned());
    }
    Ok(names)
}
