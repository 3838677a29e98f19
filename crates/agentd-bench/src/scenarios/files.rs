//! Moving files: a 1 GiB upload and download with sha256, and how much the server's peak RSS grows
//! meanwhile; the baseline is the bare server moving the same chunks (hashing and writing them to
//! a file on upload, reading them from it on download).

use crate::harness::{Agentd, Bare, Clients, Env, mono_ns, peak_kib, reset_peak, rss_kib};
use crate::report::{Goal, Metric};
use agentd::pb;
use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

const CHUNK: usize = 1 << 20;

/// One pass in each direction: (upload MB/s, upload RSS growth MiB, download MB/s, download RSS
/// growth MiB).
async fn round_trip(
    c: &mut Clients,
    pid: u32,
    session: &str,
    block: &bytes::Bytes,
    chunks: usize,
    sha: &str,
) -> Result<(f64, f64, f64, f64)> {
    let total = (chunks * CHUNK) as f64;
    let before = rss_kib(pid)?;
    reset_peak(pid)?;
    let header = pb::UploadFilesRequest {
        session_id: session.into(),
        part: Some(pb::upload_files_request::Part::Header(
            pb::UploadFileHeader {
                path: "big.bin".into(),
                size: Some(total as u64),
                ..Default::default()
            },
        )),
    };
    let block = block.clone();
    let msgs = std::iter::once(header).chain((0..chunks).map(move |_| pb::UploadFilesRequest {
        session_id: String::new(),
        part: Some(pb::upload_files_request::Part::Chunk(block.clone())),
    }));
    let t0 = mono_ns();
    let files = c
        .files
        .upload_files(tokio_stream::iter(msgs))
        .await?
        .into_inner()
        .files;
    let up = total / 1e6 / ((mono_ns() - t0) as f64 / 1e9);
    let up_rss = peak_kib(pid)?.saturating_sub(before) as f64 / 1024.0;
    let f = files.first().context("no file in the upload answer")?;
    ensure!(f.sha256 == sha, "upload sha256 {} != {sha}", f.sha256);

    let before = rss_kib(pid)?;
    reset_peak(pid)?;
    let t0 = mono_ns();
    let mut s = c
        .files
        .download_file(pb::DownloadFileRequest {
            session_id: session.into(),
            path: "big.bin".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut h = Sha256::new();
    let mut got = 0usize;
    while let Some(m) = s.message().await? {
        if let Some(pb::download_file_response::Part::Chunk(b)) = m.part {
            got += b.len();
            h.update(&b);
        }
    }
    let down = total / 1e6 / ((mono_ns() - t0) as f64 / 1e9);
    let down_rss = peak_kib(pid)?.saturating_sub(before) as f64 / 1024.0;
    ensure!(got == chunks * CHUNK, "downloaded {got} bytes");
    ensure!(hex::encode(h.finalize()) == sha, "download sha256 differs");
    Ok((up, up_rss, down, down_rss))
}

pub async fn transfer(env: &Env) -> Result<Vec<Metric>> {
    let chunks: usize = env.size(32, 1024);
    // Incompressible content; the same block repeated, so the client costs no copies.
    let mut block = vec![0u8; CHUNK];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let block = bytes::Bytes::from(block);
    let mut h = Sha256::new();
    for _ in 0..chunks {
        h.update(&block);
    }
    let sha = hex::encode(h.finalize());

    let bare = Bare::start(env)?;
    let mut bc = bare.clients().await?;
    let base = round_trip(&mut bc, bare.pid(), "bare", &block, chunks, &sha).await?;
    drop(bare);

    let a = Agentd::start(env, &[])?;
    let mut c = a.clients().await?;
    let s = c.session().await?;
    let ours = round_trip(&mut c, a.pid(), &s, &block, chunks, &sha).await?;
    let size = if chunks >= 1024 {
        format!("{}GiB", chunks / 1024)
    } else {
        format!("{chunks}MiB")
    };
    Ok(vec![
        Metric::new(&format!("upload.{size}"), ours.0, "MB/s")
            .baseline(base.0)
            .goal(Goal::RatioAtLeast(0.75)),
        Metric::new("upload.rss_growth", ours.1, "MiB")
            .baseline(base.1)
            .goal(Goal::AtMost(32.0)),
        Metric::new(&format!("download.{size}"), ours.2, "MB/s")
            .baseline(base.2)
            .goal(Goal::RatioAtLeast(0.75)),
        Metric::new("download.rss_growth", ours.3, "MiB")
            .baseline(base.3)
            .goal(Goal::AtMost(32.0)),
    ])
}
