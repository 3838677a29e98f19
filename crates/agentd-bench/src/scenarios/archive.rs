//! DownloadArchive of a large workspace (20,000 files, 300 MB; 2,000 files, 16 MB with --quick)
//! as one tar stream, against the bare chunk stream of the same server: DownloadFile of one file
//! holding the same bytes. Both run in the same server, alternated, best of three each; the
//! goal (issue #18) is the archive at 75% of the file's throughput or more. The tree goes in
//! through UploadArchive, whose throughput is reported too.

use crate::harness::{Agentd, Clients, Env, mono_ns};
use crate::report::{Goal, Metric};
use agentd::pb;
use anyhow::{Result, ensure};

const CHUNK: usize = 1 << 20;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tar of `files` files of `each` bytes under `tree/`, 100 per directory.
fn tree_tar(files: usize, each: usize) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::with_capacity(files * (each + 1024)));
    let block = noise(each * 7, 7);
    for i in 0..files {
        let mut h = tar::Header::new_gnu();
        h.set_size(each as u64);
        h.set_mode(0o644);
        let start = (i * 31) % (block.len() - each);
        let path = format!("tree/d{:03}/f{i:05}.bin", i / 100);
        b.append_data(&mut h, path, &block[start..start + each])?;
    }
    Ok(b.into_inner()?)
}

async fn upload_tree(c: &mut Clients, session: &str, tar: Vec<u8>) -> Result<f64> {
    let total = tar.len() as f64;
    let header = pb::UploadArchiveRequest {
        session_id: session.into(),
        part: Some(pb::upload_archive_request::Part::Header(
            pb::UploadArchiveHeader {
                format: pb::ArchiveFormat::Tar as i32,
                dest: String::new(),
            },
        )),
    };
    let tar = bytes::Bytes::from(tar);
    let chunks: Vec<_> = (0..tar.len())
        .step_by(CHUNK)
        .map(|i| pb::UploadArchiveRequest {
            session_id: String::new(),
            part: Some(pb::upload_archive_request::Part::Chunk(
                tar.slice(i..(i + CHUNK).min(tar.len())),
            )),
        })
        .collect();
    let t0 = mono_ns();
    c.files
        .upload_archive(tokio_stream::iter(std::iter::once(header).chain(chunks)))
        .await?;
    Ok(total / 1e6 / ((mono_ns() - t0) as f64 / 1e9))
}

async fn upload_file(c: &mut Clients, session: &str, total: usize) -> Result<()> {
    let block = bytes::Bytes::from(noise(CHUNK, 11));
    let header = pb::UploadFilesRequest {
        session_id: session.into(),
        part: Some(pb::upload_files_request::Part::Header(
            pb::UploadFileHeader {
                path: "same.bin".into(),
                ..Default::default()
            },
        )),
    };
    let msgs = std::iter::once(header).chain((0..total.div_ceil(CHUNK)).map(move |i| {
        let n = CHUNK.min(total - i * CHUNK);
        pb::UploadFilesRequest {
            session_id: String::new(),
            part: Some(pb::upload_files_request::Part::Chunk(block.slice(..n))),
        }
    }));
    c.files.upload_files(tokio_stream::iter(msgs)).await?;
    Ok(())
}

/// Seconds to download the tree as a tar, and the archive's size.
async fn archive_once(c: &mut Clients, session: &str) -> Result<(f64, usize)> {
    let t0 = mono_ns();
    let mut s = c
        .files
        .download_archive(pb::DownloadArchiveRequest {
            session_id: session.into(),
            paths: vec!["tree".into()],
            format: pb::ArchiveFormat::Tar as i32,
            job_id: String::new(),
        })
        .await?
        .into_inner();
    let mut got = 0;
    while let Some(m) = s.message().await? {
        got += m.chunk.len();
    }
    Ok(((mono_ns() - t0) as f64 / 1e9, got))
}

/// Seconds to download the one file, and its size.
async fn file_once(c: &mut Clients, session: &str) -> Result<(f64, usize)> {
    let t0 = mono_ns();
    let mut s = c
        .files
        .download_file(pb::DownloadFileRequest {
            session_id: session.into(),
            path: "same.bin".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut got = 0;
    while let Some(m) = s.message().await? {
        if let Some(pb::download_file_response::Part::Chunk(b)) = m.part {
            got += b.len();
        }
    }
    Ok(((mono_ns() - t0) as f64 / 1e9, got))
}

pub async fn archive(env: &Env) -> Result<Vec<Metric>> {
    let (files, each) = env.size((2_000, 8 << 10), (20_000, 15_000));
    let payload = files * each;
    let a = Agentd::start(env, &[])?;
    let mut c = a.clients().await?;
    let s = c.session().await?;
    let up = upload_tree(&mut c, &s, tree_tar(files, each)?).await?;
    upload_file(&mut c, &s, payload).await?;

    let (mut best_archive, mut best_file) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let (t, got) = archive_once(&mut c, &s).await?;
        ensure!(
            got > payload,
            "the archive has {got} bytes for {payload} of files"
        );
        best_archive = best_archive.min(t);
        let (t, got) = file_once(&mut c, &s).await?;
        ensure!(got == payload, "downloaded {got} bytes of {payload}");
        best_file = best_file.min(t);
    }
    // Both as the workspace's content bytes per second: tar's headers are the archive's cost.
    let mbps = |secs: f64| payload as f64 / 1e6 / secs;
    let size = format!("{files}files_{}MB", payload / 1_000_000);
    Ok(vec![
        Metric::new(
            &format!("download_archive.tar.{size}"),
            mbps(best_archive),
            "MB/s",
        )
        .baseline(mbps(best_file))
        .goal(Goal::RatioAtLeast(0.75)),
        Metric::new(&format!("upload_archive.tar.{size}"), up, "MB/s").goal(Goal::None),
    ])
}
