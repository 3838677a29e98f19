//! Streamed file transfer. Uploads walk a local file or directory on a blocking thread that reads
//! each file in chunks into a small bounded channel feeding `UploadFiles`, so no file is ever held
//! in memory whole; a local read error aborts the call (the server then commits nothing) instead
//! of ending the stream cleanly. Downloads write chunks to a temporary file next to the
//! destination and rename it into place once the SHA-256 matches.

use super::conn::{CliError, Svc};
use crate::pb;
use crate::pb::file_service_client::FileServiceClient;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

/// Bytes per upload chunk; the protocol allows up to 1 MiB.
const CHUNK: usize = 256 * 1024;
/// Messages buffered between the reading thread and the RPC.
const CHANNEL_DEPTH: usize = 8;

/// One local file to upload.
#[derive(Debug, Clone)]
struct Entry {
    local: PathBuf,
    remote: String,
    mode: u32,
    size: u64,
}

/// What an upload did.
#[derive(Debug, Default)]
pub struct UploadSummary {
    pub files: u64,
    pub bytes: u64,
    /// Local paths that were not uploaded (symlinks, special files, non-UTF-8 names), with why.
    pub skipped: Vec<String>,
}

/// Joins a workspace directory and a relative path with `/`.
fn join_remote(prefix: &str, rel: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        rel.to_owned()
    } else {
        format!("{prefix}/{rel}")
    }
}

/// Lists what to upload from `local` (a file or a directory), in a stable order.
fn collect(
    local: &Path,
    remote: &str,
    excludes: &[String],
) -> Result<(Vec<Entry>, Vec<String>), CliError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(local)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", local.display())))?;
    if meta.is_file() {
        let name = if remote.is_empty() {
            local
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    CliError::Usage(format!("{} has no UTF-8 file name", local.display()))
                })?
                .to_owned()
        } else {
            remote.trim_matches('/').to_owned()
        };
        let entry = Entry {
            local: local.to_owned(),
            remote: name,
            mode: meta.permissions().mode() & 0o777,
            size: meta.len(),
        };
        return Ok((vec![entry], vec![]));
    }
    if !meta.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is neither a regular file nor a directory",
            local.display()
        )));
    }
    let mut entries = vec![];
    let mut skipped = vec![];
    let walk = walkdir::WalkDir::new(local)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0
                || !excludes
                    .iter()
                    .any(|x| e.file_name().to_str() == Some(x.as_str()))
        });
    for item in walk {
        let item =
            item.map_err(|e| CliError::Local(format!("cannot walk {}: {e}", local.display())))?;
        let ft = item.file_type();
        if ft.is_dir() {
            continue;
        }
        let rel = item.path().strip_prefix(local).unwrap_or(item.path());
        if !ft.is_file() {
            skipped.push(format!(
                "{} ({})",
                item.path().display(),
                if ft.is_symlink() {
                    "symlink"
                } else {
                    "not a regular file"
                }
            ));
            continue;
        }
        let Some(rel) = rel.to_str() else {
            skipped.push(format!("{} (name is not UTF-8)", item.path().display()));
            continue;
        };
        let meta = item
            .metadata()
            .map_err(|e| CliError::Local(format!("cannot read {}: {e}", item.path().display())))?;
        entries.push(Entry {
            local: item.path().to_owned(),
            remote: join_remote(remote, rel),
            mode: meta.permissions().mode() & 0o777,
            size: meta.len(),
        });
    }
    Ok((entries, skipped))
}

type Msg = Result<pb::UploadFilesRequest, CliError>;

/// Reads every entry in chunks and sends them; returns each remote path's SHA-256. Runs on a
/// blocking thread.
fn read_all(
    session_id: &str,
    entries: &[Entry],
    tx: &mpsc::Sender<Msg>,
) -> Result<HashMap<String, String>, ()> {
    let mut hashes = HashMap::new();
    let send = |m: Msg| tx.blocking_send(m).map_err(|_| ());
    for e in entries {
        let header = pb::UploadFilesRequest {
            session_id: session_id.to_owned(),
            part: Some(pb::upload_files_request::Part::Header(
                pb::UploadFileHeader {
                    path: e.remote.clone(),
                    mode: Some(e.mode),
                    size: Some(e.size),
                    sha256: String::new(),
                },
            )),
        };
        let file = match std::fs::File::open(&e.local) {
            Ok(f) => f,
            Err(err) => {
                let _ = send(Err(CliError::Local(format!(
                    "cannot open {}: {err}",
                    e.local.display()
                ))));
                return Err(());
            }
        };
        send(Ok(header))?;
        // Never more than the announced size: a file growing meanwhile is caught by the server's
        // size check rather than sending unbounded data.
        let mut reader = file.take(e.size);
        let mut hasher = Sha256::new();
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let _ = send(Err(CliError::Local(format!(
                        "cannot read {}: {err}",
                        e.local.display()
                    ))));
                    return Err(());
                }
            };
            buf.truncate(n);
            hasher.update(&buf);
            send(Ok(pb::UploadFilesRequest {
                session_id: String::new(),
                part: Some(pb::upload_files_request::Part::Chunk(buf.into())),
            }))?;
        }
        hashes.insert(e.remote.clone(), hex::encode(hasher.finalize()));
    }
    Ok(hashes)
}

/// The request stream of an upload. On a local error it reports the error and then never ends,
/// so the call is dropped (the HTTP/2 stream reset) rather than completed with half the files.
struct UploadStream {
    rx: mpsc::Receiver<Msg>,
    failed: Option<oneshot::Sender<CliError>>,
    broken: bool,
}

impl tokio_stream::Stream for UploadStream {
    type Item = pb::UploadFilesRequest;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.broken {
            return Poll::Pending;
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(m))) => Poll::Ready(Some(m)),
            Poll::Ready(Some(Err(e))) => {
                self.broken = true;
                if let Some(tx) = self.failed.take() {
                    let _ = tx.send(e);
                }
                Poll::Pending
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Uploads `local` (a file or a directory, recursively) into `remote` of the session. For a
/// file, `remote` is its path in the workspace (its name when empty); for a directory, the
/// workspace directory to upload into (the root when empty). Names in `excludes` are skipped.
pub async fn upload(
    files: &mut FileServiceClient<Svc>,
    session_id: &str,
    local: &Path,
    remote: &str,
    excludes: &[String],
) -> Result<UploadSummary, CliError> {
    let (local_c, remote_c, excludes_c) = (local.to_owned(), remote.to_owned(), excludes.to_vec());
    let (entries, skipped) =
        tokio::task::spawn_blocking(move || collect(&local_c, &remote_c, &excludes_c))
            .await
            .map_err(|e| CliError::Local(format!("listing {} failed: {e}", local.display())))??;
    let mut summary = UploadSummary {
        skipped,
        ..Default::default()
    };
    if entries.is_empty() {
        return Ok(summary);
    }
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let (err_tx, err_rx) = oneshot::channel();
    let sid = session_id.to_owned();
    let reader = tokio::task::spawn_blocking(move || read_all(&sid, &entries, &tx));
    let stream = UploadStream {
        rx,
        failed: Some(err_tx),
        broken: false,
    };
    let response = tokio::select! {
        r = files.upload_files(stream) => r.map_err(CliError::rpc(format!("uploading {}", local.display())))?,
        Ok(e) = err_rx => return Err(e),
    }
    .into_inner();
    let hashes = reader
        .await
        .map_err(|e| CliError::Local(format!("reading {} failed: {e}", local.display())))?
        .map_err(|()| CliError::Local(format!("reading {} stopped early", local.display())))?;
    for f in &response.files {
        if let Some(h) = hashes.get(&f.path)
            && !f.sha256.is_empty()
            && *h != f.sha256
        {
            return Err(CliError::Local(format!(
                "{}: the server stored different content than was read (did the file change during the upload?)",
                f.path
            )));
        }
        summary.files += 1;
        summary.bytes += f.size;
    }
    Ok(summary)
}

/// `out` joined with a server-supplied relative path, refusing anything that could land outside
/// `out` (absolute paths, `..`, empty).
pub fn local_path(out: &Path, remote: &str) -> Result<PathBuf, CliError> {
    let rel = Path::new(remote);
    let ok = !remote.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(CliError::Local(format!(
            "refusing to write server path {remote:?} outside the output directory"
        )));
    }
    Ok(out.join(rel))
}

/// Stdout for downloads, each chunk written on the blocking pool so the runtime never waits on a
/// slow pipe.
pub(super) struct BlockingStdout;

impl BlockingStdout {
    pub(super) async fn write(&self, chunk: &[u8]) -> std::io::Result<()> {
        let chunk = chunk.to_vec();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut o = std::io::stdout().lock();
            o.write_all(&chunk).and_then(|()| o.flush())
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

enum Sink {
    File(tokio::fs::File),
    Stdout(BlockingStdout),
}

impl Sink {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.write_all(chunk).await,
            Sink::Stdout(o) => o.write(chunk).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.flush().await,
            Sink::Stdout(_) => Ok(()),
        }
    }
}

/// Where a download goes.
pub enum Dest {
    File(PathBuf),
    Stdout,
}

/// Downloads one workspace file to `dest`; returns its size. A file is written under a temporary
/// name and renamed into place only when complete and its SHA-256 matches.
pub async fn download(
    files: &mut FileServiceClient<Svc>,
    session_id: &str,
    remote: &str,
    dest: &Dest,
) -> Result<u64, CliError> {
    let what = || format!("downloading {remote}");
    let mut stream = files
        .download_file(pb::DownloadFileRequest {
            session_id: session_id.to_owned(),
            path: remote.to_owned(),
            offset: 0,
            include_sha256: true,
        })
        .await
        .map_err(CliError::rpc(what()))?
        .into_inner();
    let info = match stream.message().await.map_err(CliError::rpc(what()))? {
        Some(pb::DownloadFileResponse {
            part: Some(pb::download_file_response::Part::Info(i)),
        }) => i,
        _ => {
            return Err(CliError::Local(format!(
                "{}: the server did not start with the file's info",
                what()
            )));
        }
    };
    let (mut sink, tmp) = match dest {
        Dest::Stdout => (Sink::Stdout(BlockingStdout), None),
        Dest::File(path) => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| CliError::Local(format!("cannot create {}: {e}", parent.display())))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = parent.join(format!(".{name}.agentd-part"));
            let f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| CliError::Local(format!("cannot create {}: {e}", tmp.display())))?;
            (Sink::File(f), Some((tmp, path.clone())))
        }
    };
    let result = async {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(m) = stream.message().await.map_err(CliError::rpc(what()))? {
            if let Some(pb::download_file_response::Part::Chunk(c)) = m.part {
                hasher.update(&c);
                size += c.len() as u64;
                sink.write(&c)
                    .await
                    .map_err(|e| CliError::Local(format!("{}: write failed: {e}", what())))?;
            }
        }
        sink.flush()
            .await
            .map_err(|e| CliError::Local(format!("{}: write failed: {e}", what())))?;
        let got = hex::encode(hasher.finalize());
        if size != info.size || (!info.sha256.is_empty() && got != info.sha256) {
            return Err(CliError::Local(format!(
                "{}: received {size} bytes that do not match the file's size {} or SHA-256",
                what(),
                info.size
            )));
        }
        Ok(size)
    }
    .await;
    drop(sink);
    if let Some((tmp, path)) = tmp {
        match &result {
            Ok(_) => {
                use std::os::unix::fs::PermissionsExt;
                let mode = if info.mode == 0 {
                    0o644
                } else {
                    info.mode & 0o777
                };
                let perm = std::fs::Permissions::from_mode(mode);
                tokio::fs::set_permissions(&tmp, perm).await.map_err(|e| {
                    CliError::Local(format!("cannot set the mode of {}: {e}", tmp.display()))
                })?;
                tokio::fs::rename(&tmp, &path).await.map_err(|e| {
                    CliError::Local(format!("cannot write {}: {e}", path.display()))
                })?;
            }
            Err(_) => {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_walks_sorted_skips_symlinks_and_excludes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src/.git")).unwrap();
        std::fs::write(d.path().join("b.txt"), "b").unwrap();
        std::fs::write(d.path().join("src/a.py"), "print(1)").unwrap();
        std::fs::write(d.path().join("src/.git/HEAD"), "ref").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        let (entries, skipped) = collect(d.path(), "up", &[".git".into()]).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.remote.as_str()).collect();
        assert_eq!(names, ["up/b.txt", "up/src/a.py"]);
        assert_eq!(entries[1].size, 8);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("link (symlink)"), "{skipped:?}");

        let (one, _) = collect(&d.path().join("b.txt"), "", &[]).unwrap();
        assert_eq!(one[0].remote, "b.txt");
        let (renamed, _) = collect(&d.path().join("b.txt"), "/x/c.txt", &[]).unwrap();
        assert_eq!(renamed[0].remote, "x/c.txt");
        assert!(matches!(
            collect(&d.path().join("missing"), "", &[]),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn reading_streams_chunks_and_reports_errors_in_band() {
        let d = tempfile::tempdir().unwrap();
        let big = vec![7u8; CHUNK * 2 + 5];
        std::fs::write(d.path().join("big"), &big).unwrap();
        let (entries, _) = collect(d.path(), "", &[]).unwrap();
        let (tx, mut rx) = mpsc::channel(1000);
        let hashes = read_all("ses_1", &entries, &tx).unwrap();
        drop(tx);
        let mut chunks = vec![];
        while let Some(m) = rx.blocking_recv() {
            match m.unwrap().part {
                Some(pb::upload_files_request::Part::Chunk(c)) => chunks.push(c.len()),
                Some(pb::upload_files_request::Part::Header(h)) => {
                    assert_eq!(h.size, Some(big.len() as u64))
                }
                None => panic!("empty part"),
            }
        }
        assert_eq!(chunks, [CHUNK, CHUNK, 5]);
        assert_eq!(hashes["big"], hex::encode(Sha256::digest(&big)));

        // A file that vanished between listing and reading becomes an error message.
        std::fs::remove_file(d.path().join("big")).unwrap();
        let (tx, mut rx) = mpsc::channel(10);
        assert!(read_all("ses_1", &entries, &tx).is_err());
        drop(tx);
        let first = rx.blocking_recv().unwrap();
        assert!(matches!(first, Err(CliError::Local(m)) if m.contains("cannot open")));
    }

    #[test]
    fn server_paths_cannot_escape_the_output_directory() {
        let out = Path::new("/tmp/out");
        assert_eq!(
            local_path(out, "a/b.txt").unwrap(),
            PathBuf::from("/tmp/out/a/b.txt")
        );
        for bad in ["", "../x", "a/../../x", "/etc/passwd"] {
            assert!(local_path(out, bad).is_err(), "{bad:?} accepted");
        }
    }
}
