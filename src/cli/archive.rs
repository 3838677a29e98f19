//! Archives on the client side: `agentd files archive` saves a DownloadArchive stream to a file
//! (temporary name, renamed when complete), and `agentd run --out` fetches a job's outputs as ONE
//! tar stream and unpacks its regular files into the output directory on a blocking thread fed by
//! a bounded channel. The archive's content is the agent's, so unpacking trusts none of it: only
//! regular files are written, each path through `transfer::local_path` (no `..`, nothing
//! absolute), under a temporary name renamed into place.

use super::conn::{CliError, Svc};
use super::transfer::{BlockingStdout, local_path};
use crate::pb;
use crate::pb::file_service_client::FileServiceClient;
use bytes::Bytes;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// The archive format a file name asks for: `.zip`, `.tar`, else tar.gz.
pub fn format_for(path: &Path) -> pb::ArchiveFormat {
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".zip") {
        pb::ArchiveFormat::Zip
    } else if name.ends_with(".tar") {
        pb::ArchiveFormat::Tar
    } else {
        pb::ArchiveFormat::TarGz
    }
}

async fn open_stream(
    files: &mut FileServiceClient<Svc>,
    session_id: &str,
    paths: Vec<String>,
    format: pb::ArchiveFormat,
) -> Result<tonic::Streaming<pb::DownloadArchiveResponse>, CliError> {
    Ok(files
        .download_archive(pb::DownloadArchiveRequest {
            session_id: session_id.to_owned(),
            paths,
            format: format as i32,
            job_id: String::new(),
        })
        .await
        .map_err(CliError::rpc("downloading the archive"))?
        .into_inner())
}

/// Saves the archive of `paths` (everything when empty) to `dest` (`-`: stdout); returns its
/// size in bytes.
pub async fn save(
    files: &mut FileServiceClient<Svc>,
    session_id: &str,
    paths: Vec<String>,
    format: pb::ArchiveFormat,
    dest: &Path,
) -> Result<u64, CliError> {
    let mut stream = open_stream(files, session_id, paths, format).await?;
    let to_stdout = dest.as_os_str() == "-";
    let tmp = dest.with_file_name(format!(
        ".{}.agentd-part",
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut file = if to_stdout {
        None
    } else {
        Some(
            tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| CliError::Local(format!("cannot create {}: {e}", tmp.display())))?,
        )
    };
    let result = async {
        let mut size = 0u64;
        let failed = |e: std::io::Error| CliError::Local(format!("write failed: {e}"));
        while let Some(m) = stream
            .message()
            .await
            .map_err(CliError::rpc("downloading the archive"))?
        {
            size += m.chunk.len() as u64;
            match file.as_mut() {
                Some(f) => f.write_all(&m.chunk).await.map_err(failed)?,
                None => BlockingStdout.write(&m.chunk).await.map_err(failed)?,
            }
        }
        if let Some(f) = file.as_mut() {
            f.flush().await.map_err(failed)?;
        }
        Ok(size)
    }
    .await;
    drop(file);
    if to_stdout {
        return result;
    }
    match &result {
        Ok(_) => tokio::fs::rename(&tmp, dest)
            .await
            .map_err(|e| CliError::Local(format!("cannot write {}: {e}", dest.display())))?,
        Err(_) => {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
    }
    result
}

/// Downloads the regular files `paths` of the workspace as one tar stream and writes them under
/// `out`; returns each file's workspace path, local path and size.
pub async fn unpack_into(
    files: &mut FileServiceClient<Svc>,
    session_id: &str,
    paths: Vec<String>,
    out: &Path,
) -> Result<Vec<(String, PathBuf, u64)>, CliError> {
    let mut stream = open_stream(files, session_id, paths, pb::ArchiveFormat::Tar).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let out = out.to_owned();
    let writer = tokio::task::spawn_blocking(move || unpack(ChannelRead::new(rx), &out));
    let mut failed = None;
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                if tx.send(m.chunk).await.is_err() {
                    break; // the writer stopped: its result says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                failed = Some(CliError::rpc("downloading the outputs")(e));
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| CliError::Local(format!("unpacking failed: {e}")))?;
    if let Some(e) = failed {
        return Err(e);
    }
    written
}

/// A blocking `Read` over the chunks of the download.
struct ChannelRead {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelRead {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelRead {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.current = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn unpack(input: ChannelRead, out: &Path) -> Result<Vec<(String, PathBuf, u64)>, CliError> {
    let bad = |e: std::io::Error| CliError::Local(format!("the outputs archive is broken: {e}"));
    let mut archive = tar::Archive::new(input);
    let mut written = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let remote = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let dest = local_path(out, &remote)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let size = write_file(&mut entry, &dest, mode)?;
        written.push((remote, dest, size));
    }
    Ok(written)
}

fn write_file(content: &mut dyn Read, dest: &Path, mode: u32) -> Result<u64, CliError> {
    use std::os::unix::fs::PermissionsExt;
    let local = |what: &str, p: &Path, e: std::io::Error| {
        CliError::Local(format!("cannot {what} {}: {e}", p.display()))
    };
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| local("create", parent, e))?;
    let tmp = parent.join(format!(
        ".{}.agentd-part",
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| local("create", &tmp, e))?;
        let size = std::io::copy(content, &mut f).map_err(|e| local("write", &tmp, e))?;
        f.flush().map_err(|e| local("write", &tmp, e))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| local("set the mode of", &tmp, e))?;
        std::fs::rename(&tmp, dest).map_err(|e| local("write", dest, e))?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_file_name() {
        assert_eq!(format_for(Path::new("x.zip")), pb::ArchiveFormat::Zip);
        assert_eq!(format_for(Path::new("x.TAR")), pb::ArchiveFormat::Tar);
        assert_eq!(format_for(Path::new("x.tar.gz")), pb::ArchiveFormat::TarGz);
        assert_eq!(format_for(Path::new("x.tgz")), pb::ArchiveFormat::TarGz);
    }

    #[test]
    fn unpacking_writes_only_regular_files_inside_the_output() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o755);
        b.append_data(&mut h, "a/run.sh", &b"hi"[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "link", "/etc/passwd").unwrap();
        let bytes = b.into_inner().unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Bytes::from(bytes)).unwrap();
        drop(tx);
        let dir = tempfile::tempdir().unwrap();
        let got = unpack(ChannelRead::new(rx), dir.path()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(std::fs::read(dir.path().join("a/run.sh")).unwrap(), b"hi");
        assert!(!dir.path().join("link").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("a/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
