//! DownloadArchive's writer: part or all of a workspace written as tar, tar.gz or zip by one
//! blocking thread into a bounded channel of 1 MiB chunks, so memory stays a few MiB whatever the
//! workspace's size and a slow client only makes the thread wait. Entries are reached fd-relative
//! through `fsops::walk` and opened with `O_NOFOLLOW`: symlinks are stored as symlinks, never
//! followed, so a link the agent planted cannot put a host file into the archive. FIFOs, sockets
//! and devices are left out.

use super::fsops::{self, DIR_FLAGS, kind_of, open_parent, stat_at};
use super::path::{normalize_dir, split_parent};
use crate::domain::{FileKind, civil_from_days};
use crate::error::{Error, Reason, Result};
use bytes::Bytes;
use nix::sys::stat::FileStat;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use tokio::sync::mpsc;

/// Size of each chunk sent (the size of DownloadFile's chunks).
pub const ARCHIVE_CHUNK: usize = 1 << 20;
/// Chunks buffered between the writer thread and the client.
const CHANNEL_CHUNKS: usize = 4;

/// The container format of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Tar,
    TarGz,
    Zip,
}

/// A `Write` that cuts what it is given into chunks and sends each through a bounded channel,
/// blocking the (blocking-pool) thread while the channel is full. A dropped receiver (the client
/// went away) turns into `BrokenPipe`, which ends the writer.
pub(crate) struct ChunkSink {
    tx: mpsc::Sender<Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChunkSink {
    pub(crate) fn new(tx: mpsc::Sender<Result<Bytes>>) -> Self {
        ChunkSink {
            tx,
            buf: Vec::with_capacity(ARCHIVE_CHUNK),
        }
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(ARCHIVE_CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    /// Sends what is buffered; the end of the archive.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.send_buf()
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = ARCHIVE_CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == ARCHIVE_CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks go out when full; a flush (the compressors call it) must not send small ones.
        Ok(())
    }
}

/// What an archive entry's header says: from a live file's stat or a snapshot's entry.
pub(super) struct Meta {
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub size: u64,
}

impl Meta {
    fn of(st: &FileStat) -> Meta {
        Meta {
            mode: st.st_mode,
            mtime: st.st_mtime,
            size: u64::try_from(st.st_size).unwrap_or(0),
        }
    }
}

/// One archive being written: an entry at a time, then `finish`.
pub(super) trait ArchiveOut {
    fn dir(&mut self, rel: &str, st: &Meta) -> io::Result<()>;
    fn file(&mut self, rel: &str, st: &Meta, content: &mut dyn Read) -> io::Result<()>;
    fn symlink(&mut self, rel: &str, st: &Meta, target: &OsString) -> io::Result<()>;
    fn finish(self: Box<Self>) -> io::Result<()>;
}

struct TarOut<W: Write> {
    builder: tar::Builder<W>,
    /// Finishes the inner writer (the gzip trailer, then the last chunk).
    close: fn(W) -> io::Result<()>,
}

fn tar_header(st: &Meta, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.mode & 0o7777);
    h.set_mtime(u64::try_from(st.mtime).unwrap_or(0));
    h.set_size(size);
    h
}

impl<W: Write> ArchiveOut for TarOut<W> {
    fn dir(&mut self, rel: &str, st: &Meta) -> io::Result<()> {
        let mut h = tar_header(st, tar::EntryType::Directory, 0);
        self.builder
            .append_data(&mut h, format!("{rel}/"), io::empty())
    }

    fn file(&mut self, rel: &str, st: &Meta, content: &mut dyn Read) -> io::Result<()> {
        let size = st.size;
        let mut h = tar_header(st, tar::EntryType::Regular, size);
        self.builder.append_data(&mut h, rel, content)
    }

    fn symlink(&mut self, rel: &str, st: &Meta, target: &OsString) -> io::Result<()> {
        let mut h = tar_header(st, tar::EntryType::Symlink, 0);
        self.builder.append_link(&mut h, rel, target)
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        let inner = self.builder.into_inner()?;
        (self.close)(inner)
    }
}

struct ZipOut {
    zip: zip::ZipWriter<zip::write::StreamWriter<ChunkSink>>,
}

fn zip_options(st: &Meta) -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default()
        .unix_permissions(st.mode & 0o7777)
        .last_modified_time(zip_time(st.mtime))
}

fn zip_err(e: zip::result::ZipError) -> io::Error {
    match e {
        zip::result::ZipError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl ArchiveOut for ZipOut {
    fn dir(&mut self, rel: &str, st: &Meta) -> io::Result<()> {
        self.zip
            .add_directory(format!("{rel}/"), zip_options(st))
            .map_err(zip_err)
    }

    fn file(&mut self, rel: &str, st: &Meta, content: &mut dyn Read) -> io::Result<()> {
        let size = st.size;
        let options = zip_options(st)
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(size >= u64::from(u32::MAX));
        self.zip.start_file(rel, options).map_err(zip_err)?;
        io::copy(content, &mut self.zip)?;
        Ok(())
    }

    fn symlink(&mut self, rel: &str, st: &Meta, target: &OsString) -> io::Result<()> {
        self.zip
            .add_symlink(rel, target.to_string_lossy(), zip_options(st))
            .map_err(zip_err)
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        let stream = self.zip.finish().map_err(zip_err)?;
        stream.into_inner().finish()
    }
}

/// A zip timestamp (local fields, 1980–2107; outside that the format's earliest).
fn zip_time(secs: i64) -> zip::DateTime {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (Ok(y), Ok(m), Ok(d)) = (u16::try_from(y), u8::try_from(m), u8::try_from(d)) else {
        return zip::DateTime::default();
    };
    let (h, mi, s) = (
        (rem / 3600) as u8,
        ((rem % 3600) / 60) as u8,
        (rem % 60) as u8,
    );
    zip::DateTime::from_date_and_time(y, m, d, h, mi, s).unwrap_or_default()
}

pub(super) fn open_out(format: ArchiveFormat, sink: ChunkSink) -> Box<dyn ArchiveOut> {
    match format {
        ArchiveFormat::Tar => Box::new(TarOut {
            builder: new_builder(sink),
            close: ChunkSink::finish,
        }),
        ArchiveFormat::TarGz => {
            // Level 1: gzip here is for the wire, and the fast level keeps the download close to
            // disk speed while still shrinking source trees several times.
            let gz = flate2::write::GzEncoder::new(sink, flate2::Compression::fast());
            Box::new(TarOut {
                builder: new_builder(gz),
                close: |gz| gz.finish()?.finish(),
            })
        }
        ArchiveFormat::Zip => Box::new(ZipOut {
            zip: zip::ZipWriter::new_stream(sink),
        }),
    }
}

fn new_builder<W: Write>(w: W) -> tar::Builder<W> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    b
}

/// A top-level entry the client asked for, resolved before the stream starts.
pub(crate) struct Root {
    rel: String,
    kind: FileKind,
}

/// Normalises and resolves the requested paths (empty: the whole workspace), so a missing or
/// unsafe path is an error of the call, not of the stream. Nested duplicates are dropped.
pub(crate) fn resolve_roots(ws: BorrowedFd<'_>, paths: &[String]) -> Result<Vec<Root>> {
    let mut rels = Vec::with_capacity(paths.len());
    for (i, p) in paths.iter().enumerate() {
        rels.push(normalize_dir(p, &format!("paths[{i}]"))?);
    }
    if rels.is_empty() || rels.iter().any(String::is_empty) {
        return Ok(vec![Root {
            rel: String::new(),
            kind: FileKind::Directory,
        }]);
    }
    rels.sort();
    rels.dedup();
    let mut roots: Vec<Root> = Vec::new();
    for rel in rels {
        if roots
            .last()
            .is_some_and(|r| rel.starts_with(&format!("{}/", r.rel)))
        {
            continue;
        }
        let parent = open_parent(ws, &rel, Reason::NotARegularFile)?;
        let (_, name) = split_parent(&rel);
        let st = stat_at(parent.as_fd(), name)?.ok_or_else(|| fsops::not_found(&rel))?;
        let Some(kind) = kind_of(&st) else {
            return Err(fsops::not_regular(&rel));
        };
        roots.push(Root { rel, kind });
    }
    Ok(roots)
}

/// Writes the archive of `roots` (blocking). Every failure is also sent down the channel, so the
/// client sees the stream end with an error instead of a short archive that looks complete.
pub(crate) fn write_archive(
    ws: OwnedFd,
    roots: Vec<Root>,
    format: ArchiveFormat,
    tx: mpsc::Sender<Result<Bytes>>,
) {
    let mut out = open_out(format, ChunkSink::new(tx.clone()));
    let result = roots
        .iter()
        .try_for_each(|root| write_root(ws.as_fd(), root, out.as_mut()))
        .and_then(|()| out.finish().map_err(write_error));
    if let Err(e) = result
        && !tx.is_closed()
    {
        let _ = tx.blocking_send(Err(e));
    }
}

pub(super) fn write_error(e: io::Error) -> Error {
    Error::internal(format!("cannot write the archive: {e}"))
}

fn write_root(ws: BorrowedFd<'_>, root: &Root, out: &mut dyn ArchiveOut) -> Result<()> {
    if root.kind != FileKind::Directory {
        let parent = open_parent(ws, &root.rel, Reason::NotARegularFile)?;
        let (_, name) = split_parent(&root.rel);
        let Some(st) = stat_at(parent.as_fd(), name)? else {
            return Ok(());
        };
        return write_entry(out, parent.as_fd(), name, &root.rel, &st);
    }
    let dir = fsops::open_beneath(ws, &root.rel, DIR_FLAGS)
        .map_err(|e| fsops::explain(ws, &root.rel, e, Reason::NotADirectory))?;
    if !root.rel.is_empty() {
        let st = nix::sys::stat::fstat(&dir)
            .map_err(|e| Error::internal(format!("cannot stat {:?}: {e}", root.rel)))?;
        out.dir(&root.rel, &Meta::of(&st)).map_err(write_error)?;
    }
    fsops::walk(dir, &root.rel, &mut |v| match v.rel {
        Some(rel) => write_entry(out, v.dir, v.name, rel, v.stat),
        // A name that is not UTF-8 cannot be named in the API, so it is not archived either.
        None => Ok(()),
    })
}

fn write_entry(
    out: &mut dyn ArchiveOut,
    dir: BorrowedFd<'_>,
    name: &str,
    rel: &str,
    st: &FileStat,
) -> Result<()> {
    match kind_of(st) {
        Some(FileKind::Directory) => out.dir(rel, &Meta::of(st)).map_err(write_error),
        Some(FileKind::Symlink) => match nix::fcntl::readlinkat(dir, name) {
            Ok(target) => out
                .symlink(rel, &Meta::of(st), &target)
                .map_err(write_error),
            // Removed since the walk saw it.
            Err(_) => Ok(()),
        },
        Some(FileKind::Regular) => {
            let (file, st) = match fsops::open_regular(dir, name, rel) {
                Ok(f) => f,
                // Removed or replaced (by a FIFO, a link…) since the walk saw it: skipped.
                Err(Error::NotFound { .. } | Error::FailedPrecondition { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            let size = u64::try_from(st.st_size).unwrap_or(0);
            let mut content = ExactSize::new(file, size);
            if size > SMALL_FILE {
                let mut content = io::BufReader::with_capacity(ARCHIVE_CHUNK, content);
                return out
                    .file(rel, &Meta::of(&st), &mut content)
                    .map_err(write_error);
            }
            // Small files (most of a source tree) are read whole into a buffer kept for the
            // whole archive: no allocation per file, one write into the archive.
            let n = usize::try_from(size).unwrap_or(0);
            SMALL_BUF
                .with_borrow_mut(|buf| {
                    buf.resize(n, 0);
                    content.read_exact(&mut buf[..n])?;
                    out.file(rel, &Meta::of(&st), &mut &buf[..n])
                })
                .map_err(write_error)
        }
        None => Ok(()),
    }
}

/// Files up to this size are archived from one reused buffer.
const SMALL_FILE: u64 = 256 * 1024;

thread_local! {
    /// The reused buffer of small files (blocking-pool threads live on between archives).
    static SMALL_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads exactly `size` bytes: a file that shrank while it was archived is padded with zeros and
/// one that grew is cut, so the entry always matches the size its header announced.
struct ExactSize {
    file: std::io::Take<std::fs::File>,
    left: u64,
}

impl ExactSize {
    fn new(file: std::fs::File, size: u64) -> Self {
        ExactSize {
            file: file.take(size),
            left: size,
        }
    }
}

impl Read for ExactSize {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let mut n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A channel sized for [`write_archive`].
pub(crate) fn channel() -> (mpsc::Sender<Result<Bytes>>, mpsc::Receiver<Result<Bytes>>) {
    mpsc::channel(CHANNEL_CHUNKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let t = zip_time(1_700_000_000);
        assert_eq!(
            (t.year(), t.month(), t.day(), t.hour(), t.minute()),
            (2023, 11, 14, 22, 13)
        );
    }
}
