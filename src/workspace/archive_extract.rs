//! UploadArchive's extractor. The archive's bytes arrive through a bounded channel and are read
//! by one blocking thread that extracts into a staging directory beside the workspace (inside the
//! session directory, which the jailed agent cannot reach), checking every entry: plain relative
//! names only, links that stay inside, no devices or FIFOs, and the bomb guards (entries,
//! expanded bytes, expansion ratio) plus the workspace's own limits. Only when the whole archive
//! was read and checked are the staged entries moved into the workspace (`archive_merge`), so a
//! refused, truncated or abandoned archive writes nothing there; the staging directory is removed
//! in every case.
//!
//! Everything in the staging tree is created fd-relative with `O_NOFOLLOW`/`O_EXCL`, so an entry
//! can never be written through a symlink an earlier entry created.

use super::archive::ArchiveFormat;
use super::fsops::{self, DIR_FLAGS, kind_of, mkdir_beneath, stat_at};
use super::path::{link_stays_inside, normalize_dir, normalize_path, split_parent};
use super::{WorkspaceLimits, WsUsage};
use crate::domain::FileKind;
use crate::error::{Error, Reason, Result};
use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, fchmod};
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Chunks in flight between the request stream and the extractor.
pub(crate) const CHANNEL_CHUNKS: usize = 4;
/// Below this many expanded bytes the ratio is not judged (tiny archives compress oddly).
const RATIO_FLOOR: u64 = 1 << 20;
const COPY_BUFFER: usize = 256 * 1024;

/// UploadArchive's bomb guards, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub max_ratio: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_entries: 100_000,
            max_bytes: 8 << 30,
            max_ratio: 200,
        }
    }
}

/// What an extraction put into the staging directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// The staging directory of one upload; removed when dropped (blocking: drop it on the blocking
/// pool, which is where extraction and merging run).
pub(crate) struct Staging {
    pub(crate) path: PathBuf,
}

impl Staging {
    pub(crate) fn tree(&self) -> PathBuf {
        self.path.join("tree")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "could not remove an archive staging directory");
        }
    }
}

/// A `Read` over the chunks of the request stream, counting the bytes it hands out (the
/// compressed size, for the ratio). A closed channel is the end of the archive.
pub(crate) struct ChunkSource {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
    read: Arc<AtomicU64>,
}

impl ChunkSource {
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>, read: Arc<AtomicU64>) -> Self {
        ChunkSource {
            rx,
            current: Bytes::new(),
            read,
        }
    }
}

impl Read for ChunkSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Extraction state: the staging tree, the counters and the guards.
pub(crate) struct Extractor {
    tree: OwnedFd,
    /// The destination directory inside the workspace (for judging link targets).
    dest: String,
    limits: WorkspaceLimits,
    archive: ArchiveLimits,
    base: WsUsage,
    /// Archive bytes consumed so far (shared with the reader).
    consumed: Arc<AtomicU64>,
    summary: ExtractSummary,
    /// Regular files staged, by path: the only valid hard-link targets.
    regular: HashSet<String>,
    /// Directory modes, applied once everything is in (a read-only directory would refuse its
    /// own entries otherwise).
    dir_modes: Vec<(String, u32)>,
}

/// One entry as the formats describe it.
pub(crate) enum EntryKind {
    Dir,
    File,
    Symlink(Vec<u8>),
    HardLink(Vec<u8>),
    Special,
}

impl Extractor {
    pub(crate) fn new(
        tree: OwnedFd,
        dest: String,
        limits: WorkspaceLimits,
        archive: ArchiveLimits,
        base: WsUsage,
        consumed: Arc<AtomicU64>,
    ) -> Self {
        Extractor {
            tree,
            dest,
            limits,
            archive,
            base,
            consumed,
            summary: ExtractSummary::default(),
            regular: HashSet::new(),
            dir_modes: Vec::new(),
        }
    }

    /// Extracts the whole archive read from `input`.
    pub(crate) fn run(
        mut self,
        format: ArchiveFormat,
        input: ChunkSource,
    ) -> Result<ExtractSummary> {
        match format {
            ArchiveFormat::Tar => self.tar(input)?,
            ArchiveFormat::TarGz => self.tar(flate2::read::GzDecoder::new(input))?,
            ArchiveFormat::Zip => self.zip(input)?,
        }
        self.apply_dir_modes()?;
        Ok(self.summary)
    }

    fn tar<R: Read>(&mut self, input: R) -> Result<()> {
        let mut archive = tar::Archive::new(input);
        let entries = archive.entries().map_err(corrupt)?;
        for entry in entries {
            let mut entry = entry.map_err(corrupt)?;
            let header = entry.header();
            let mode = header.mode().unwrap_or(0o644);
            let mtime = header.mtime().ok();
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink(link_name(&entry)?),
                tar::EntryType::Link => EntryKind::HardLink(link_name(&entry)?),
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    EntryKind::Special
                }
                // pax global headers only carry defaults for later entries.
                tar::EntryType::XGlobalHeader => continue,
                other => {
                    return Err(invalid(format!(
                        "entry {:?} has the unsupported type {other:?}",
                        String::from_utf8_lossy(&entry.path_bytes())
                    )));
                }
            };
            let name = entry.path_bytes().into_owned();
            let size = entry.size();
            self.entry(&name, kind, mode, mtime, size, &mut entry)?;
        }
        drain(archive.into_inner())
    }

    /// Adds one entry to the staging tree after checking it.
    pub(crate) fn entry(
        &mut self,
        name: &[u8],
        kind: EntryKind,
        mode: u32,
        mtime: Option<u64>,
        size: u64,
        content: &mut dyn Read,
    ) -> Result<()> {
        let Some(rel) = self.entry_path(name)? else {
            return Ok(()); // the archive's own root, "./"
        };
        self.summary.entries += 1;
        if self.summary.entries > self.archive.max_entries {
            return Err(Error::exhausted(
                Reason::TooManyFiles,
                format!(
                    "the archive has more than {} entries",
                    self.archive.max_entries
                ),
            ));
        }
        match kind {
            EntryKind::Dir => self.make_dir(&rel, mode),
            EntryKind::File => self.make_file(&rel, mode, mtime, size, content),
            EntryKind::Symlink(target) => self.make_symlink(&rel, &target),
            EntryKind::HardLink(target) => self.make_hardlink(&rel, &target),
            EntryKind::Special => Err(Error::precondition(
                Reason::NotARegularFile,
                format!(
                    "entry {rel:?} is a device, FIFO or socket; only files, directories and links are extracted"
                ),
            )),
        }
    }

    /// The normalised name of an entry; `None` for the root itself. Absolute names and `..` are
    /// refused, never stripped: an archive that tries them is hostile or broken.
    fn entry_path(&self, name: &[u8]) -> Result<Option<String>> {
        let name = std::str::from_utf8(name).map_err(|_| {
            Error::invalid(
                Reason::InvalidPath,
                "archive",
                format!("entry {:?} is not UTF-8", String::from_utf8_lossy(name)),
            )
        })?;
        let rel = normalize_dir(name, "archive").map_err(|e| match e {
            Error::InvalidArgument { message, .. } => Error::invalid(
                Reason::InvalidPath,
                "archive",
                format!("archive entry: {message}"),
            ),
            other => other,
        })?;
        if rel.is_empty() {
            return Ok(None);
        }
        Ok(Some(rel))
    }

    fn ws_path(&self, rel: &str) -> String {
        if self.dest.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.dest)
        }
    }

    /// The parent directory of `rel` in the staging tree, created as needed, and the entry's
    /// name; an entry already there (a duplicate name) is removed unless it is a directory.
    fn prepare(&self, rel: &str, want_dir: bool) -> Result<(OwnedFd, String)> {
        let (parent_rel, name) = split_parent(rel);
        let parent = mkdir_beneath(self.tree.as_fd(), parent_rel, rel).map_err(|e| match e {
            Error::FailedPrecondition { .. } => Error::invalid(
                Reason::InvalidPath,
                "archive",
                format!("entry {rel:?} lies beneath a symlink or a file of the archive"),
            ),
            other => other,
        })?;
        match stat_at(parent.as_fd(), name)?.as_ref().and_then(kind_of) {
            None => {}
            Some(FileKind::Directory) if want_dir => {}
            Some(FileKind::Directory) => {
                return Err(Error::invalid(
                    Reason::InvalidPath,
                    "archive",
                    format!("entry {rel:?} is both a directory and a file in the archive"),
                ));
            }
            Some(_) if want_dir => {
                return Err(Error::invalid(
                    Reason::InvalidPath,
                    "archive",
                    format!("entry {rel:?} is both a file and a directory in the archive"),
                ));
            }
            Some(_) => {
                nix::unistd::unlinkat(
                    parent.as_fd(),
                    name,
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                )
                .map_err(|e| Error::internal(format!("cannot replace {rel:?}: {e}")))?;
            }
        }
        Ok((parent, name.to_owned()))
    }

    fn make_dir(&mut self, rel: &str, mode: u32) -> Result<()> {
        let (parent, name) = self.prepare(rel, true)?;
        match nix::sys::stat::mkdirat(
            parent.as_fd(),
            name.as_str(),
            Mode::from_bits_truncate(0o700),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::internal(format!("cannot create {rel:?}: {e}"))),
        }
        self.dir_modes.push((rel.to_owned(), mode & 0o777));
        Ok(())
    }

    fn make_file(
        &mut self,
        rel: &str,
        mode: u32,
        mtime: Option<u64>,
        size: u64,
        content: &mut dyn Read,
    ) -> Result<()> {
        if size > self.limits.max_file_bytes {
            return Err(file_too_large(rel, self.limits.max_file_bytes));
        }
        self.summary.files += 1;
        if self.base.files + self.summary.files > self.limits.max_files {
            return Err(Error::exhausted(
                Reason::TooManyFiles,
                format!(
                    "extracting {rel:?} exceeds the limit of {} files per session",
                    self.limits.max_files
                ),
            ));
        }
        let (parent, name) = self.prepare(rel, false)?;
        let fd = openat(
            parent.as_fd(),
            name.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| Error::internal(format!("cannot create {rel:?}: {e}")))?;
        let mut out = std::fs::File::from(fd);
        self.copy(rel, content, &mut out)?;
        fchmod(&out, Mode::from_bits_truncate(mode & 0o777))
            .map_err(|e| Error::internal(format!("cannot set the mode of {rel:?}: {e}")))?;
        if let Some(secs) = mtime.and_then(|s| i64::try_from(s).ok()) {
            let t = nix::sys::time::TimeSpec::new(secs, 0);
            let _ = nix::sys::stat::futimens(&out, &t, &t);
        }
        self.regular.insert(rel.to_owned());
        Ok(())
    }

    /// Copies one file's content, enforcing every size guard before the bytes are written.
    fn copy(&mut self, rel: &str, content: &mut dyn Read, out: &mut std::fs::File) -> Result<()> {
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut written = 0u64;
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(e)),
            };
            written += n as u64;
            self.summary.bytes += n as u64;
            self.check_sizes(rel, written)?;
            out.write_all(&buf[..n])
                .map_err(|e| Error::internal(format!("cannot write {rel:?}: {e}")))?;
        }
        Ok(())
    }

    fn check_sizes(&self, rel: &str, written: u64) -> Result<()> {
        if written > self.limits.max_file_bytes {
            return Err(file_too_large(rel, self.limits.max_file_bytes));
        }
        let total = self.summary.bytes;
        if total > self.archive.max_bytes {
            return Err(Error::exhausted(
                Reason::SessionTooLarge,
                format!(
                    "the archive expands to more than {} bytes",
                    self.archive.max_bytes
                ),
            ));
        }
        if self.base.bytes.saturating_add(total) > self.limits.max_session_bytes {
            return Err(Error::exhausted(
                Reason::SessionTooLarge,
                format!(
                    "extracting {rel:?} exceeds the session limit of {} bytes",
                    self.limits.max_session_bytes
                ),
            ));
        }
        let consumed = self.consumed.load(Ordering::Relaxed).max(1);
        if total > RATIO_FLOOR && total / consumed > self.archive.max_ratio {
            return Err(Error::exhausted(
                Reason::CompressionRatioTooHigh,
                format!(
                    "the archive expands more than {} times its size",
                    self.archive.max_ratio
                ),
            ));
        }
        Ok(())
    }

    fn make_symlink(&mut self, rel: &str, target: &[u8]) -> Result<()> {
        let target = std::str::from_utf8(target)
            .ok()
            .filter(|t| !t.is_empty() && !t.contains('\0'))
            .ok_or_else(|| invalid(format!("symlink {rel:?} has an empty or non-UTF-8 target")))?;
        if !link_stays_inside(&self.ws_path(rel), target) {
            return Err(Error::precondition(
                Reason::SymlinkEscape,
                format!("symlink {rel:?} points outside the workspace ({target:?})"),
            ));
        }
        let (parent, name) = self.prepare(rel, false)?;
        nix::unistd::symlinkat(target, parent.as_fd(), name.as_str())
            .map_err(|e| Error::internal(format!("cannot create symlink {rel:?}: {e}")))
    }

    fn make_hardlink(&mut self, rel: &str, target: &[u8]) -> Result<()> {
        let escape = || {
            Error::precondition(
                Reason::SymlinkEscape,
                format!(
                    "hard link {rel:?} points at {:?}, which is not a file earlier in the archive",
                    String::from_utf8_lossy(target)
                ),
            )
        };
        let target = std::str::from_utf8(target).map_err(|_| escape())?;
        let target = normalize_path(target, "archive").map_err(|_| escape())?;
        if !self.regular.contains(&target) {
            return Err(escape());
        }
        let (tparent_rel, tname) = split_parent(&target);
        let tparent =
            fsops::open_beneath(self.tree.as_fd(), tparent_rel, DIR_FLAGS).map_err(|_| escape())?;
        let (parent, name) = self.prepare(rel, false)?;
        nix::unistd::linkat(
            tparent.as_fd(),
            tname,
            parent.as_fd(),
            name.as_str(),
            AtFlags::empty(),
        )
        .map_err(|e| Error::internal(format!("cannot create hard link {rel:?}: {e}")))?;
        self.regular.insert(rel.to_owned());
        Ok(())
    }

    fn apply_dir_modes(&mut self) -> Result<()> {
        // Deepest first, so a read-only parent is set after its children.
        self.dir_modes.sort_by(|a, b| b.0.cmp(&a.0));
        for (rel, mode) in &self.dir_modes {
            let Ok(fd) = fsops::open_beneath(self.tree.as_fd(), rel, DIR_FLAGS) else {
                continue;
            };
            // Owner rwx is kept so the tree can still be moved and removed.
            fchmod(&fd, Mode::from_bits_truncate(mode | 0o700))
                .map_err(|e| Error::internal(format!("cannot set the mode of {rel:?}: {e}")))?;
        }
        Ok(())
    }

    fn zip(&mut self, mut input: ChunkSource) -> Result<()> {
        // zip's directory is at the end: spool the archive (bounded by the byte guard, on disk
        // beside the staging tree) and read it from its central directory.
        let spool = self.spool(&mut input)?;
        let mut archive = zip::ZipArchive::new(spool).map_err(zip_corrupt)?;
        for i in 0..archive.len() {
            let mut file = archive.by_index(i).map_err(zip_corrupt)?;
            let name = file.name_raw().to_vec();
            let unix = file.unix_mode();
            let mode = unix.unwrap_or(if file.is_dir() { 0o755 } else { 0o644 });
            let size = file.size();
            let kind = match unix.map(|m| m & 0o170_000) {
                Some(0o020_000 | 0o060_000 | 0o010_000 | 0o140_000) => EntryKind::Special,
                _ if file.is_dir() => EntryKind::Dir,
                _ if file.is_symlink() => {
                    let mut target = Vec::new();
                    (&mut file)
                        .take(4096)
                        .read_to_end(&mut target)
                        .map_err(corrupt)?;
                    EntryKind::Symlink(target)
                }
                _ => EntryKind::File,
            };
            let mtime = file.last_modified().and_then(zip_mtime);
            self.entry(&name, kind, mode, mtime, size, &mut file)?;
        }
        Ok(())
    }

    fn spool(&mut self, input: &mut ChunkSource) -> Result<std::fs::File> {
        let fd = openat(
            self.tree.as_fd(),
            "..",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::internal(format!("cannot open the staging directory: {e}")))?;
        let spool = openat(
            fd.as_fd(),
            "archive.zip",
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| Error::internal(format!("cannot create the zip spool: {e}")))?;
        let mut spool = std::fs::File::from(spool);
        let cap = self.archive.max_bytes.min(self.limits.max_session_bytes);
        let copied = io::copy(&mut input.take(cap.saturating_add(1)), &mut spool)?;
        if copied > cap {
            return Err(Error::exhausted(
                Reason::SessionTooLarge,
                format!("the archive is larger than {cap} bytes"),
            ));
        }
        io::Seek::rewind(&mut spool)?;
        Ok(spool)
    }
}

/// Reads what follows the end-of-archive blocks: the record padding, and for tar.gz the gzip
/// trailer, whose check is what reveals a truncated or corrupt compressed stream. Anything beyond
/// a little padding is refused rather than read forever.
fn drain<R: Read>(input: R) -> Result<()> {
    const MAX_TRAILER: u64 = 1 << 20;
    let n = io::copy(&mut input.take(MAX_TRAILER + 1), &mut io::sink()).map_err(corrupt)?;
    if n > MAX_TRAILER {
        return Err(invalid("data follows the end of the archive".to_owned()));
    }
    Ok(())
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<Vec<u8>> {
    entry
        .link_name_bytes()
        .map(|c| c.into_owned())
        .ok_or_else(|| invalid("a link entry has no target".to_owned()))
}

fn zip_mtime(t: zip::DateTime) -> Option<u64> {
    let days = days_from_civil(
        i64::from(t.year()),
        i64::from(t.month()),
        i64::from(t.day()),
    );
    let secs = days * 86_400
        + i64::from(t.hour()) * 3600
        + i64::from(t.minute()) * 60
        + i64::from(t.second());
    u64::try_from(secs).ok()
}

/// (year, month, day) → days since 1970-01-01 (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn file_too_large(rel: &str, max: u64) -> Error {
    Error::exhausted(
        Reason::FileTooLarge,
        format!("entry {rel:?} exceeds the limit of {max} bytes per file"),
    )
}

fn invalid(message: String) -> Error {
    Error::invalid(Reason::InvalidArchive, "archive", message)
}

fn corrupt(e: io::Error) -> Error {
    invalid(format!("the archive is truncated or corrupt: {e}"))
}

fn zip_corrupt(e: zip::result::ZipError) -> Error {
    invalid(format!("the zip archive is truncated or corrupt: {e}"))
}

/// Opens (creating) the staging directory `<session dir>/.archive-<uuid>/tree`.
pub(crate) fn create_staging(session_dir: &std::path::Path) -> Result<(Staging, OwnedFd)> {
    use std::os::unix::fs::DirBuilderExt;
    let staging = Staging {
        path: session_dir.join(format!(".archive-{}", uuid::Uuid::new_v4().simple())),
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(staging.tree())
        .map_err(|e| Error::internal(format!("cannot create an archive staging directory: {e}")))?;
    let fd = fsops::open_root(&staging.tree())?
        .ok_or_else(|| Error::internal("the archive staging directory vanished"))?;
    Ok((staging, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 1, 1), 19_723);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }
}
