//! DownloadArchive and UploadArchive against the real server: every format round-trips a
//! workspace byte for byte (read back by Python's own tarfile/zipfile, then extracted into a new
//! session), links are archived as links and never followed, and the hostile-archive table is
//! refused with its stable reason and nothing written.

mod common;

use agentd::pb;
use common::{KEY_A, KEY_B, Options, TestServer, reason};
use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use tonic::Code;

const FORMATS: [(pb::ArchiveFormat, &str); 3] = [
    (pb::ArchiveFormat::Tar, "tar"),
    (pb::ArchiveFormat::TarGz, "tar_gz"),
    (pb::ArchiveFormat::Zip, "zip"),
];

fn server() -> TestServer {
    TestServer::start_with(Options {
        args: [
            "--archive-max-entries",
            "1000",
            "--archive-max-bytes",
            "8388608",
            "--archive-max-ratio",
            "50",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
}

fn ws_dir(server: &TestServer, session: &str) -> PathBuf {
    server
        .data_dir
        .join("sessions")
        .join(session)
        .join("workspace")
}

async fn download(
    c: &mut common::Clients,
    session: &str,
    format: pb::ArchiveFormat,
    paths: &[&str],
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = c
        .files
        .download_archive(pb::DownloadArchiveRequest {
            session_id: session.into(),
            paths: paths.iter().map(|p| (*p).into()).collect(),
            format: format as i32,
            job_id: String::new(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        assert!(msg.chunk.len() <= 1 << 20, "chunks are at most 1 MiB");
        out.extend_from_slice(&msg.chunk);
    }
    Ok(out)
}

async fn upload(
    c: &mut common::Clients,
    session: &str,
    format: pb::ArchiveFormat,
    dest: &str,
    bytes: &[u8],
) -> Result<pb::UploadArchiveResponse, tonic::Status> {
    let mut msgs = vec![pb::UploadArchiveRequest {
        session_id: session.into(),
        part: Some(pb::upload_archive_request::Part::Header(
            pb::UploadArchiveHeader {
                format: format as i32,
                dest: dest.into(),
            },
        )),
    }];
    for chunk in bytes.chunks(64 << 10) {
        msgs.push(pb::UploadArchiveRequest {
            session_id: String::new(),
            part: Some(pb::upload_archive_request::Part::Chunk(
                chunk.to_vec().into(),
            )),
        });
    }
    Ok(c.files
        .upload_archive(tokio_stream::iter(msgs))
        .await?
        .into_inner())
}

/// Every entry beneath `dir` (not followed): kind, permission bits, content hash or link target.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let e = e.expect("walk");
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let md = e.path().symlink_metadata().unwrap();
        let mode = md.permissions().mode() & 0o7777;
        let what = if md.file_type().is_symlink() {
            format!(
                "symlink {}",
                std::fs::read_link(e.path()).unwrap().display()
            )
        } else if md.is_dir() {
            format!("dir {mode:o}")
        } else {
            let data = std::fs::read(e.path()).unwrap();
            format!("file {mode:o} {}", sha256(&data))
        };
        out.insert(rel, what);
    }
    out
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn python(args: &[&str]) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/archives.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "archives.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The archive as Python reads it, in the same shape as [`tree`].
fn inspect(bytes: &[u8], fmt: &str) -> BTreeMap<String, String> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), bytes).unwrap();
    let json = python(&["inspect", tmp.path().to_str().unwrap(), fmt]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
    let mut out = BTreeMap::new();
    for e in entries {
        let mode = e["mode"].as_u64().unwrap();
        let what = match e["type"].as_str().unwrap() {
            "symlink" => format!("symlink {}", e["link"].as_str().unwrap()),
            "dir" => format!("dir {mode:o}"),
            "file" => format!("file {mode:o} {}", e["sha256"].as_str().unwrap()),
            other => panic!("unexpected entry type {other}"),
        };
        let name = e["name"].as_str().unwrap().to_owned();
        assert!(out.insert(name.clone(), what).is_none(), "{name} twice");
    }
    out
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A workspace with modes, nested and empty directories, an inside symlink, a long name and a
/// file of several chunks.
fn populate(ws: &Path) {
    std::fs::create_dir_all(ws.join("src/deep/er")).unwrap();
    std::fs::write(ws.join("src/main.py"), b"print(1)\n").unwrap();
    std::fs::write(ws.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    chmod(&ws.join("run.sh"), 0o755);
    std::fs::write(ws.join("src/deep/er/secret.txt"), b"only me").unwrap();
    chmod(&ws.join("src/deep/er/secret.txt"), 0o600);
    std::fs::create_dir(ws.join("empty")).unwrap();
    chmod(&ws.join("empty"), 0o750);
    symlink("src/main.py", ws.join("main-link")).unwrap();
    let long = format!("src/{}.txt", "n".repeat(150));
    std::fs::write(ws.join(long), b"long name").unwrap();
    let mut big = vec![0u8; (3 << 20) + 17];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut big).unwrap();
    std::fs::write(ws.join("big.bin"), big).unwrap();
    std::fs::write(ws.join("empty.txt"), b"").unwrap();
}

#[tokio::test]
async fn every_format_round_trips_a_workspace_byte_for_byte() {
    let server = server();
    let mut a = server.clients(KEY_A).await;
    let s = a.create_session(&[]).await;
    let ws = ws_dir(&server, &s.session_id);
    populate(&ws);
    let want = tree(&ws);
    assert!(want.len() >= 10, "{want:?}");

    for (format, name) in FORMATS {
        let bytes = download(&mut a, &s.session_id, format, &[]).await.unwrap();
        assert_eq!(inspect(&bytes, name), want, "{name} as Python reads it");

        let copy = a.create_session(&[]).await;
        let done = upload(&mut a, &copy.session_id, format, "", &bytes)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(done.entries as usize, want.len(), "{name}");
        assert_eq!(
            tree(&ws_dir(&server, &copy.session_id)),
            want,
            "{name} extracted"
        );

        // Into a subdirectory, through the API's own listing.
        upload(&mut a, &copy.session_id, format, "again/here", &bytes)
            .await
            .unwrap();
        let again = tree(&ws_dir(&server, &copy.session_id).join("again/here"));
        assert_eq!(again, want, "{name} into a subdirectory");
    }
}

#[tokio::test]
async fn paths_select_entries_and_links_are_never_followed() {
    let server = server();
    let mut a = server.clients(KEY_A).await;
    let s = a
        .create_session(&[("keep/a.txt", b"a"), ("other/b.txt", b"b")])
        .await;
    let ws = ws_dir(&server, &s.session_id);
    // What a hostile agent plants: links to host files and directories.
    symlink("/etc/passwd", ws.join("leak")).unwrap();
    symlink("/etc", ws.join("etc")).unwrap();
    symlink("../../..", ws.join("keep/up")).unwrap();

    let bytes = download(&mut a, &s.session_id, pb::ArchiveFormat::Tar, &[])
        .await
        .unwrap();
    let got = inspect(&bytes, "tar");
    assert_eq!(got["leak"], "symlink /etc/passwd");
    assert_eq!(got["etc"], "symlink /etc");
    assert_eq!(got["keep/up"], "symlink ../../..");
    assert!(
        !got.keys()
            .any(|k| k.starts_with("etc/") || k.starts_with("keep/up/")),
        "a link was followed: {got:?}"
    );
    let passwd = std::fs::read("/etc/passwd").unwrap();
    assert!(
        !bytes
            .windows(passwd.len().min(64))
            .any(|w| w == &passwd[..passwd.len().min(64)]),
        "host file content leaked into the archive"
    );

    let only = download(
        &mut a,
        &s.session_id,
        pb::ArchiveFormat::Zip,
        &["keep", "keep/a.txt"],
    )
    .await
    .unwrap();
    let got: Vec<String> = inspect(&only, "zip").into_keys().collect();
    assert_eq!(got, ["keep", "keep/a.txt", "keep/up"]);

    for path in ["etc/passwd", "keep/up/etc/passwd"] {
        let err = download(&mut a, &s.session_id, pb::ArchiveFormat::Tar, &[path])
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "SYMLINK_ESCAPE", "{path}: {err:?}");
    }
    let err = download(&mut a, &s.session_id, pb::ArchiveFormat::Tar, &["../x"])
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INVALID_PATH");
    let err = download(&mut a, &s.session_id, pb::ArchiveFormat::Tar, &["missing"])
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "FILE_NOT_FOUND");
    let err = download(&mut a, &s.session_id, pb::ArchiveFormat::Unspecified, &[])
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "MISSING_FIELD");
}

#[tokio::test]
async fn hostile_archives_are_refused_with_their_reason_and_nothing_written() {
    let server = server();
    let mut a = server.clients(KEY_A).await;
    let s = a.create_session(&[("existing.txt", b"before")]).await;
    let ws = ws_dir(&server, &s.session_id);
    std::fs::create_dir(ws.join("sub")).unwrap();
    let before = tree(&ws);
    let dir = tempfile::tempdir().unwrap();
    python(&["hostile", dir.path().to_str().unwrap()]);

    use pb::ArchiveFormat::{Tar, TarGz, Zip};
    let table = [
        ("traversal.tar", Tar, "INVALID_PATH"),
        ("traversal_deep.tar", Tar, "INVALID_PATH"),
        ("absolute.tar", Tar, "INVALID_PATH"),
        ("traversal.zip", Zip, "INVALID_PATH"),
        ("symlink_out.tar", Tar, "SYMLINK_ESCAPE"),
        ("symlink_abs.tar", Tar, "SYMLINK_ESCAPE"),
        ("symlink_out.zip", Zip, "SYMLINK_ESCAPE"),
        ("symlink_then_write.tar", Tar, "INVALID_PATH"),
        ("hardlink_out.tar", Tar, "SYMLINK_ESCAPE"),
        ("hardlink_up.tar", Tar, "SYMLINK_ESCAPE"),
        ("device.tar", Tar, "NOT_A_REGULAR_FILE"),
        ("fifo.tar", Tar, "NOT_A_REGULAR_FILE"),
        ("too_many.tar", Tar, "TOO_MANY_FILES"),
        ("too_big.tar", Tar, "SESSION_TOO_LARGE"),
        ("ratio.tar.gz", TarGz, "COMPRESSION_RATIO_TOO_HIGH"),
        ("ratio.zip", Zip, "COMPRESSION_RATIO_TOO_HIGH"),
        ("truncated.tar", Tar, "INVALID_ARCHIVE"),
        ("truncated.tar.gz", TarGz, "INVALID_ARCHIVE"),
        ("corrupt.tar", Tar, "INVALID_ARCHIVE"),
        ("corrupt.zip", Zip, "INVALID_ARCHIVE"),
        // The right bytes under the wrong format.
        ("ratio.zip", TarGz, "INVALID_ARCHIVE"),
    ];
    for (file, format, want) in table {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        for dest in ["", "sub"] {
            let err = upload(&mut a, &s.session_id, format, dest, &bytes)
                .await
                .expect_err(file);
            assert_eq!(reason(&err), want, "{file} into {dest:?}: {err:?}");
            assert_ne!(err.code(), Code::Internal, "{file}");
            assert_eq!(tree(&ws), before, "{file} wrote into the workspace");
        }
    }
    // Nothing escaped, and no staging directory was left behind.
    let session_dir = ws.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(session_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        {
            let mut l = left.clone();
            l.sort();
            l
        },
        ["home", "workspace"],
        "{left:?}"
    );
    assert!(!session_dir.join("escaped.txt").exists());
    assert!(
        !ws.parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("escaped.txt")
            .exists()
    );
    assert!(!Path::new("/tmp/agentd-absolute-escape.txt").exists());
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test]
async fn an_upload_merges_into_the_workspace_and_a_conflict_writes_nothing() {
    let server = server();
    let mut a = server.clients(KEY_A).await;
    let s = a
        .create_session(&[("a.txt", b"old"), ("d/keep.txt", b"keep")])
        .await;
    let ws = ws_dir(&server, &s.session_id);
    let done = upload(
        &mut a,
        &s.session_id,
        pb::ArchiveFormat::Tar,
        "",
        &tar_of(&[("a.txt", b"new"), ("d/new.txt", b"n"), ("e/f.txt", b"f")]),
    )
    .await
    .unwrap();
    assert_eq!((done.files, done.bytes), (3, 5));
    assert_eq!(std::fs::read(ws.join("a.txt")).unwrap(), b"new");
    assert_eq!(std::fs::read(ws.join("d/keep.txt")).unwrap(), b"keep");
    assert_eq!(std::fs::read(ws.join("d/new.txt")).unwrap(), b"n");
    assert_eq!(std::fs::read(ws.join("e/f.txt")).unwrap(), b"f");

    // `d` is a directory in the workspace: a file of that name is refused before anything moves.
    let before = tree(&ws);
    let err = upload(
        &mut a,
        &s.session_id,
        pb::ArchiveFormat::Tar,
        "",
        &tar_of(&[("zz-first.txt", b"1"), ("d", b"not a dir")]),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&err), "NOT_A_REGULAR_FILE", "{err:?}");
    assert_eq!(tree(&ws), before);

    // A destination through a symlink the agent planted is refused.
    symlink("/tmp", ws.join("tmp-link")).unwrap();
    let err = upload(
        &mut a,
        &s.session_id,
        pb::ArchiveFormat::Tar,
        "tmp-link/x",
        &tar_of(&[("a.txt", b"x")]),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&err), "SYMLINK_ESCAPE", "{err:?}");
}

#[tokio::test]
async fn other_tenants_and_bad_headers() {
    let server = server();
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let s = a.create_session(&[("a.txt", b"secret")]).await;
    let err = download(&mut b, &s.session_id, pb::ArchiveFormat::Tar, &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason(&err), "SESSION_NOT_FOUND");
    let err = upload(
        &mut b,
        &s.session_id,
        pb::ArchiveFormat::Tar,
        "",
        &tar_of(&[("x", b"x")]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!ws_dir(&server, &s.session_id).join("x").exists());

    let err = upload(
        &mut a,
        &s.session_id,
        pb::ArchiveFormat::Unspecified,
        "",
        b"",
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&err), "MISSING_FIELD");
    let err = upload(&mut a, &s.session_id, pb::ArchiveFormat::Tar, "../up", b"")
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INVALID_PATH");
    // An empty tar stream is not an archive with nothing in it but nothing at all: accepted as
    // empty (tar has no magic to miss), and writes nothing.
    let done = upload(&mut a, &s.session_id, pb::ArchiveFormat::Tar, "", b"")
        .await
        .unwrap();
    assert_eq!(done.entries, 0);
}
