//! Behaviour of workspaces against real directories, symlinks, FIFOs and uploads.

use super::*;
use crate::domain::ChangeKind;
use sha2::{Digest, Sha256};
use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;

const BIG: WorkspaceLimits = WorkspaceLimits {
    max_files: 1000,
    max_session_bytes: 1 << 30,
    max_file_bytes: 1 << 30,
};

struct Fixture {
    _tmp: tempfile::TempDir,
    ws: Workspaces,
    sid: SessionId,
    dir: PathBuf,
}

async fn fixture(limits: WorkspaceLimits, files: &[(&str, &[u8])]) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspaces::new(tmp.path().join("sessions"), limits);
    let sid = SessionId::generate();
    ws.create(&sid, new_files(files)).await.unwrap();
    let dir = ws.workspace_dir(&sid);
    Fixture {
        _tmp: tmp,
        ws,
        sid,
        dir,
    }
}

fn new_files(files: &[(&str, &[u8])]) -> Vec<NewFile> {
    files
        .iter()
        .map(|(p, c)| NewFile {
            path: p.to_string(),
            content: Bytes::copy_from_slice(c),
            mode: None,
        })
        .collect()
}

fn header(path: &str) -> UploadHeader {
    UploadHeader {
        path: path.into(),
        ..Default::default()
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

async fn upload(f: &Fixture, files: &[(&str, &[u8])]) -> Result<Vec<FileEntry>> {
    let mut up = f.ws.begin_upload(&f.sid).await?;
    for (path, content) in files {
        up.start_file(header(path)).await?;
        up.write_chunk(Bytes::copy_from_slice(content)).await?;
    }
    up.commit().await
}

/// Every upload temp file anywhere under `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
        .map(|e| e.path().to_owned())
        .collect()
}

fn reason(r: Result<impl std::fmt::Debug>) -> Reason {
    r.expect_err("expected an error").reason()
}

fn field_of(e: &Error) -> &str {
    match e {
        Error::InvalidArgument { field, .. } => field,
        other => panic!("not an invalid-argument error: {other:?}"),
    }
}

#[tokio::test]
async fn create_writes_files_dirs_and_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspaces::new(tmp.path().join("root"), BIG);
    let sid = SessionId::generate();
    let files = vec![
        NewFile {
            path: "./src//main.rs".into(),
            content: Bytes::from_static(b"fn main() {}"),
            mode: Some(0o755),
        },
        NewFile {
            path: "README".into(),
            content: Bytes::from_static(b"old"),
            mode: None,
        },
        NewFile {
            path: "README".into(),
            content: Bytes::from_static(b"newer"),
            mode: None,
        },
    ];
    let usage = ws.create(&sid, files).await.unwrap();
    assert_eq!(
        usage,
        WsUsage {
            files: 2,
            bytes: 17
        }
    );
    assert!(ws.exists(&sid).await);
    let dir = ws.workspace_dir(&sid);
    assert_eq!(
        std::fs::read(dir.join("src/main.rs")).unwrap(),
        b"fn main() {}"
    );
    assert_eq!(std::fs::read(dir.join("README")).unwrap(), b"newer");
    let mode = std::fs::metadata(dir.join("src/main.rs"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(ws.home_dir(&sid).is_dir());
    assert_eq!(ws.usage(&sid).await.unwrap(), usage);
    // The home directory is not part of the workspace.
    std::fs::write(ws.home_dir(&sid).join("secret"), b"token").unwrap();
    assert_eq!(ws.usage(&sid).await.unwrap(), usage);
    let (entries, _) = ws.list(&sid, "", false, None, 0).await.unwrap();
    assert!(entries.iter().all(|e| !e.path.contains("secret")));

    ws.remove(&sid).await.unwrap();
    assert!(!ws.exists(&sid).await);
    assert!(!ws.workspace_dir(&sid).exists());
    ws.remove(&sid).await.unwrap();
}

#[tokio::test]
async fn create_checks_everything_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = WorkspaceLimits {
        max_files: 2,
        max_session_bytes: 10,
        max_file_bytes: 6,
    };
    let ws = Workspaces::new(tmp.path().join("root"), limits);
    let sid = SessionId::generate();

    let err = ws
        .create(&sid, new_files(&[("ok", b"1"), ("../escape", b"2")]))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::InvalidPath);
    assert_eq!(field_of(&err), "files[1].path");
    assert!(!ws.exists(&sid).await);

    type Case<'a> = (&'a [(&'a str, &'a [u8])], Reason);
    let cases: [Case; 4] = [
        (
            &[("a", b"1"), ("b", b"2"), ("c", b"3")],
            Reason::TooManyFiles,
        ),
        (
            &[("a", b"123456"), ("b", b"123456")],
            Reason::SessionTooLarge,
        ),
        (&[("a", b"1234567")], Reason::FileTooLarge),
        (&[("a", b"1"), ("a/b", b"2")], Reason::InvalidPath),
    ];
    for (files, want) in cases {
        assert_eq!(reason(ws.create(&sid, new_files(files)).await), want);
        assert!(!ws.exists(&sid).await);
        assert!(!tmp.path().join("root").join(sid.as_str()).exists());
    }
    // Duplicates count once.
    ws.create(
        &sid,
        new_files(&[("a", b"123"), ("a", b"123456"), ("b", b"1")]),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn missing_sessions_are_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspaces::new(tmp.path().to_owned(), BIG);
    let sid = SessionId::generate();
    assert!(!ws.exists(&sid).await);
    assert_eq!(reason(ws.usage(&sid).await), Reason::SessionNotFound);
    assert_eq!(
        reason(ws.open_read(&sid, "a", 0, false).await),
        Reason::SessionNotFound
    );
    assert_eq!(reason(ws.begin_upload(&sid).await), Reason::SessionNotFound);
    assert_eq!(
        reason(ws.list(&sid, "", false, None, 10).await),
        Reason::SessionNotFound
    );
    ws.remove(&sid).await.unwrap();
}

#[tokio::test]
async fn symlink_to_a_file_outside_is_never_followed() {
    let f = fixture(BIG, &[("a.txt", b"inside")]).await;
    symlink("/etc/passwd", f.dir.join("leak")).unwrap();
    symlink("a.txt", f.dir.join("inner")).unwrap();
    let passwd_before = std::fs::read("/etc/passwd").unwrap();

    assert_eq!(
        reason(f.ws.open_read(&f.sid, "leak", 0, false).await),
        Reason::SymlinkEscape
    );
    assert_eq!(
        reason(f.ws.open_read(&f.sid, "./leak", 0, true).await),
        Reason::SymlinkEscape
    );
    assert_eq!(
        reason(f.ws.open_read(&f.sid, "inner", 0, false).await),
        Reason::NotARegularFile
    );
    // Uploading onto the link is refused too, and writes nothing anywhere.
    assert_eq!(
        reason(upload(&f, &[("leak", b"pwned")]).await),
        Reason::SymlinkEscape
    );
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);
    assert!(temp_files(&f.dir).is_empty());
    // Listing reports the link as a link.
    let (entries, _) = f.ws.list(&f.sid, "", true, None, 0).await.unwrap();
    let leak = entries.iter().find(|e| e.path == "leak").unwrap();
    assert_eq!(leak.kind, FileKind::Symlink);
    assert_eq!(leak.symlink_target.as_deref(), Some("/etc/passwd"));
    assert_eq!(leak.size, "/etc/passwd".len() as u64);
    assert_eq!(leak.sha256, None);
    assert_eq!(
        reason(f.ws.list(&f.sid, "leak", false, None, 0).await),
        Reason::SymlinkEscape
    );
    assert_eq!(
        reason(f.ws.list(&f.sid, "inner", false, None, 0).await),
        Reason::NotADirectory
    );
}

#[tokio::test]
async fn symlinked_directory_is_refused_for_every_operation() {
    let f = fixture(BIG, &[]).await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("existing"), b"keep").unwrap();
    symlink(outside.path(), f.dir.join("d")).unwrap();

    assert_eq!(
        reason(upload(&f, &[("d/x", b"data")]).await),
        Reason::SymlinkEscape
    );
    assert_eq!(
        reason(upload(&f, &[("d/new/deeper", b"data")]).await),
        Reason::SymlinkEscape
    );
    let outside_names: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside_names, vec![std::ffi::OsString::from("existing")]);
    assert_eq!(
        reason(f.ws.open_read(&f.sid, "d/existing", 0, false).await),
        Reason::SymlinkEscape
    );
    assert_eq!(
        reason(f.ws.list(&f.sid, "d", false, None, 0).await),
        Reason::SymlinkEscape
    );
    assert_eq!(
        reason(f.ws.delete(&f.sid, "d/existing", false).await),
        Reason::SymlinkEscape
    );
    // Deleting the link removes only the link.
    assert_eq!(f.ws.delete(&f.sid, "d", true).await.unwrap(), 1);
    assert!(outside.path().join("existing").exists());
    assert!(!f.dir.join("d").exists());
}

#[test]
fn fallback_resolution_refuses_symlinks_too() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
    std::fs::write(tmp.path().join("a/b/f"), b"x").unwrap();
    symlink("/etc", tmp.path().join("a/etc")).unwrap();
    symlink("/etc/passwd", tmp.path().join("a/pw")).unwrap();
    let root = fsops::open_root(tmp.path()).unwrap().unwrap();
    let ro = nix::fcntl::OFlag::O_RDONLY;
    for resolve in [fsops::open_beneath, fsops::open_beneath_fallback] {
        assert!(resolve(root.as_fd(), "a/b/f", ro).is_ok());
        assert!(resolve(root.as_fd(), "", DIR_FLAGS).is_ok());
        assert!(resolve(root.as_fd(), "a/etc/passwd", ro).is_err());
        assert!(resolve(root.as_fd(), "a/etc", DIR_FLAGS).is_err());
        assert_eq!(resolve(root.as_fd(), "a/pw", ro).unwrap_err(), Errno::ELOOP);
        assert_eq!(
            resolve(root.as_fd(), "a/missing", ro).unwrap_err(),
            Errno::ENOENT
        );
    }
}

#[tokio::test]
async fn fifo_is_never_opened() {
    let f = fixture(BIG, &[]).await;
    nix::unistd::mkfifo(
        &f.dir.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        f.ws.open_read(&f.sid, "pipe", 0, true),
    )
    .await
    .expect("opening a FIFO must not block");
    assert_eq!(reason(r), Reason::NotARegularFile);
    assert_eq!(
        reason(upload(&f, &[("pipe", b"x")]).await),
        Reason::NotARegularFile
    );
    let (entries, _) = f.ws.list(&f.sid, "", true, None, 0).await.unwrap();
    assert!(
        entries.is_empty(),
        "special files are not listed: {entries:?}"
    );
    // A directory is not readable as a file either.
    std::fs::create_dir(f.dir.join("sub")).unwrap();
    assert_eq!(
        reason(f.ws.open_read(&f.sid, "sub", 0, false).await),
        Reason::NotARegularFile
    );
}

#[tokio::test]
async fn reads_start_at_the_offset() {
    let f = fixture(BIG, &[("dir/data.bin", b"0123456789")]).await;
    for (offset, want) in [(0u64, &b"0123456789"[..]), (3, b"3456789"), (10, b"")] {
        let (entry, mut file) =
            f.ws.open_read(&f.sid, "dir//data.bin", offset, true)
                .await
                .unwrap();
        assert_eq!(entry.path, "dir/data.bin");
        assert_eq!(entry.size, 10);
        assert_eq!(entry.kind, FileKind::Regular);
        assert_eq!(entry.sha256.as_deref(), Some(sha(b"0123456789").as_str()));
        let mut got = Vec::new();
        file.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, want);
    }
    let (entry, _) =
        f.ws.open_read(&f.sid, "dir/data.bin", 0, false)
            .await
            .unwrap();
    assert_eq!(entry.sha256, None);
    assert_eq!(
        reason(f.ws.open_read(&f.sid, "dir/data.bin", 11, false).await),
        Reason::OffsetOutOfRange
    );
    assert_eq!(
        reason(f.ws.open_read(&f.sid, "dir/missing", 0, false).await),
        Reason::FileNotFound
    );
    assert_eq!(
        reason(f.ws.open_read(&f.sid, "nodir/x", 0, false).await),
        Reason::FileNotFound
    );
    assert_eq!(
        reason(f.ws.open_read(&f.sid, "dir/data.bin/x", 0, false).await),
        Reason::NotADirectory
    );
    let err =
        f.ws.open_read(&f.sid, "/etc/passwd", 0, false)
            .await
            .unwrap_err();
    assert_eq!(err.reason(), Reason::InvalidPath);
    assert_eq!(field_of(&err), "path");
}

#[tokio::test]
async fn upload_is_invisible_until_commit_and_returns_hashes() {
    let f = fixture(BIG, &[("keep", b"old")]).await;
    let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
    up.start_file(UploadHeader {
        path: "new/dir/a.txt".into(),
        mode: Some(0o600),
        size: Some(11),
        sha256: Some(sha(b"hello world").to_uppercase()),
    })
    .await
    .unwrap();
    up.write_chunk(Bytes::from_static(b"hello ")).await.unwrap();
    up.write_chunk(Bytes::from_static(b"world")).await.unwrap();
    up.start_file(header("keep")).await.unwrap();
    up.write_chunk(Bytes::from_static(b"first")).await.unwrap();
    up.start_file(header("keep")).await.unwrap();
    up.write_chunk(Bytes::from_static(b"second wins"))
        .await
        .unwrap();
    assert!(!f.dir.join("new/dir/a.txt").exists());
    assert_eq!(std::fs::read(f.dir.join("keep")).unwrap(), b"old");
    let (entries, _) = f.ws.list(&f.sid, "", false, None, 0).await.unwrap();
    assert!(
        entries.iter().all(|e| !e.path.contains(TEMP_PREFIX)),
        "{entries:?}"
    );

    let entries = up.commit().await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].path, "new/dir/a.txt");
    assert_eq!(entries[0].size, 11);
    assert_eq!(entries[0].mode, 0o600);
    assert_eq!(
        entries[0].sha256.as_deref(),
        Some(sha(b"hello world").as_str())
    );
    assert_eq!(entries[1].path, "keep");
    assert_eq!(
        entries[1].sha256.as_deref(),
        Some(sha(b"second wins").as_str())
    );
    assert_eq!(
        std::fs::read(f.dir.join("new/dir/a.txt")).unwrap(),
        b"hello world"
    );
    assert_eq!(std::fs::read(f.dir.join("keep")).unwrap(), b"second wins");
    assert!(temp_files(&f.dir).is_empty());
}

#[tokio::test]
async fn dropped_upload_leaves_nothing() {
    let f = fixture(BIG, &[]).await;
    let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
    up.start_file(header("a")).await.unwrap();
    up.write_chunk(Bytes::from(vec![7u8; 100_000]))
        .await
        .unwrap();
    up.start_file(header("sub/b")).await.unwrap();
    up.write_chunk(Bytes::from_static(b"partial"))
        .await
        .unwrap();
    assert_eq!(temp_files(&f.dir).len(), 2);
    drop(up);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !temp_files(&f.dir).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "temp files left behind"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!f.dir.join("a").exists());
    assert!(!f.dir.join("sub/b").exists());
}

#[tokio::test]
async fn size_and_checksum_mismatches_are_refused() {
    let f = fixture(BIG, &[]).await;
    let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
    let err = up.write_chunk(Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(
        (err.reason(), field_of(&err)),
        (Reason::MissingField, "header")
    );

    let cases = [
        (
            Some(5),
            None,
            &b"abc"[..],
            Reason::SizeMismatch,
            "header.size",
        ),
        (Some(2), None, b"abc", Reason::SizeMismatch, "header.size"),
        (
            None,
            Some(sha(b"other")),
            b"abc",
            Reason::ChecksumMismatch,
            "header.sha256",
        ),
        (
            None,
            Some("xyz".to_string()),
            b"abc",
            Reason::InvalidField,
            "header.sha256",
        ),
    ];
    for (size, sha256, content, want, field) in cases {
        let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
        up.start_file(header("ok")).await.unwrap();
        up.write_chunk(Bytes::from_static(b"fine")).await.unwrap();
        let result = async {
            up.start_file(UploadHeader {
                path: "bad".into(),
                mode: None,
                size,
                sha256,
            })
            .await?;
            up.write_chunk(Bytes::copy_from_slice(content)).await?;
            up.start_file(header("after")).await
        }
        .await;
        let err = result.unwrap_err();
        assert_eq!((err.reason(), field_of(&err)), (want, field));
        // The upload is over: it keeps answering the error and commits nothing.
        assert_eq!(up.commit().await.unwrap_err().reason(), want);
        assert!(temp_files(&f.dir).is_empty());
        assert!(!f.dir.join("ok").exists() && !f.dir.join("bad").exists());
    }
}

#[tokio::test]
async fn file_limit_stops_the_stream_and_cleans_up() {
    let limits = WorkspaceLimits {
        max_files: 100,
        max_session_bytes: 1000,
        max_file_bytes: 100,
    };
    let f = fixture(limits, &[]).await;
    let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
    up.start_file(header("first")).await.unwrap();
    up.write_chunk(Bytes::from(vec![1u8; 10])).await.unwrap();
    up.start_file(header("big")).await.unwrap();
    up.write_chunk(Bytes::from(vec![1u8; 60])).await.unwrap();
    let err = up
        .write_chunk(Bytes::from(vec![1u8; 60]))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::FileTooLarge);
    assert!(
        err.to_string().contains("\"big\"") && err.to_string().contains("100"),
        "{err}"
    );
    assert!(temp_files(&f.dir).is_empty());
    assert!(!f.dir.join("big").exists() && !f.dir.join("first").exists());
    assert_eq!(
        reason(up.write_chunk(Bytes::from_static(b"x")).await),
        Reason::FileTooLarge
    );

    // A declared size over the limit is refused before any byte arrives.
    let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
    let r = up
        .start_file(UploadHeader {
            path: "declared".into(),
            size: Some(101),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(r), Reason::FileTooLarge);
    assert!(temp_files(&f.dir).is_empty());
}

#[tokio::test]
async fn session_limits_count_existing_and_staged_files() {
    let limits = WorkspaceLimits {
        max_files: 3,
        max_session_bytes: 100,
        max_file_bytes: 100,
    };
    let f = fixture(limits, &[("existing", &[0u8; 50])]).await;

    // 50 on disk + 30 staged + 30 more > 100.
    let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
    up.start_file(header("a")).await.unwrap();
    up.write_chunk(Bytes::from(vec![1u8; 30])).await.unwrap();
    up.start_file(header("b")).await.unwrap();
    up.write_chunk(Bytes::from(vec![1u8; 15])).await.unwrap();
    let err = up
        .write_chunk(Bytes::from(vec![1u8; 15]))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::SessionTooLarge);
    assert!(temp_files(&f.dir).is_empty());
    assert!(!f.dir.join("a").exists() && !f.dir.join("b").exists());

    // Overwriting a file frees its bytes: 90 replaces 50.
    upload(&f, &[("existing", &[2u8; 90])]).await.unwrap();
    assert_eq!(
        f.ws.usage(&f.sid).await.unwrap(),
        WsUsage {
            files: 1,
            bytes: 90
        }
    );

    // Files: 1 existing + 2 new is the limit; a third new one is refused at its header.
    let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
    for p in ["x", "y", "existing"] {
        up.start_file(header(p)).await.unwrap();
    }
    assert_eq!(
        reason(up.start_file(header("z")).await),
        Reason::TooManyFiles
    );
    assert!(temp_files(&f.dir).is_empty());
    assert!(!f.dir.join("x").exists());
}

#[tokio::test]
async fn upload_path_conflicts_are_refused() {
    let f = fixture(BIG, &[("file", b"x")]).await;
    std::fs::create_dir(f.dir.join("adir")).unwrap();
    assert_eq!(
        reason(upload(&f, &[("adir", b"x")]).await),
        Reason::NotARegularFile
    );
    assert_eq!(
        reason(upload(&f, &[("file/sub", b"x")]).await),
        Reason::NotADirectory
    );
    assert_eq!(
        reason(upload(&f, &[("p", b"x"), ("p/q", b"y")]).await),
        Reason::InvalidPath
    );
    let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
    let err = up.start_file(header("a/../b")).await.unwrap_err();
    assert_eq!(
        (err.reason(), field_of(&err)),
        (Reason::InvalidPath, "header.path")
    );
    assert!(temp_files(&f.dir).is_empty());
}

#[tokio::test]
async fn delete_rules() {
    let f = fixture(
        BIG,
        &[("a.txt", b"a"), ("tree/x", b"x"), ("tree/sub/y", b"y")],
    )
    .await;
    std::fs::create_dir(f.dir.join("empty")).unwrap();
    symlink("/etc/passwd", f.dir.join("tree/link")).unwrap();

    assert_eq!(f.ws.delete(&f.sid, "a.txt", false).await.unwrap(), 1);
    assert!(!f.dir.join("a.txt").exists());
    assert_eq!(
        reason(f.ws.delete(&f.sid, "a.txt", false).await),
        Reason::FileNotFound
    );
    assert_eq!(f.ws.delete(&f.sid, "empty", false).await.unwrap(), 0);
    assert!(!f.dir.join("empty").exists());
    assert_eq!(
        reason(f.ws.delete(&f.sid, "tree", false).await),
        Reason::DirectoryNotEmpty
    );
    assert_eq!(f.ws.delete(&f.sid, "tree/link", false).await.unwrap(), 1);
    assert!(Path::new("/etc/passwd").exists());
    assert_eq!(f.ws.delete(&f.sid, "tree", true).await.unwrap(), 2);
    assert!(!f.dir.join("tree").exists());
    assert_eq!(
        reason(f.ws.delete(&f.sid, "", true).await),
        Reason::InvalidPath
    );
    assert_eq!(
        reason(f.ws.delete(&f.sid, ".", true).await),
        Reason::InvalidPath
    );
    assert!(f.dir.is_dir());
}

#[tokio::test]
async fn listing_is_sorted_paged_and_hides_temp_files() {
    let f = fixture(
        BIG,
        &[("b", b"bb"), ("a/2", b"2"), ("a/1", b"1"), ("c/d/e", b"e")],
    )
    .await;
    std::fs::write(f.dir.join(format!("{TEMP_PREFIX}stale")), b"x").unwrap();
    let (all, next) = f.ws.list(&f.sid, ".", true, None, 0).await.unwrap();
    let paths: Vec<_> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["a", "a/1", "a/2", "b", "c", "c/d", "c/d/e"]);
    assert_eq!(next, None);
    assert_eq!(all[0].kind, FileKind::Directory);
    assert_eq!(all[0].sha256, None);
    assert_eq!(all[3].sha256.as_deref(), Some(sha(b"bb").as_str()));
    assert_eq!(all[3].size, 2);

    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) =
            f.ws.list(&f.sid, "", false, cursor.as_deref(), 3)
                .await
                .unwrap();
        assert!(page.len() <= 3);
        pages.extend(page.into_iter().map(|e| e.path));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, paths);

    let (sub, _) = f.ws.list(&f.sid, "c/", false, None, 0).await.unwrap();
    let sub: Vec<_> = sub.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(sub, ["c/d", "c/d/e"]);
    assert_eq!(
        reason(f.ws.list(&f.sid, "b", false, None, 0).await),
        Reason::NotADirectory
    );
    assert_eq!(
        reason(f.ws.list(&f.sid, "nope", false, None, 0).await),
        Reason::FileNotFound
    );
    assert_eq!(
        reason(f.ws.list(&f.sid, "/", false, None, 0).await),
        Reason::InvalidPath
    );
}

#[tokio::test]
async fn diff_reports_added_modified_and_deleted_files() {
    let f = fixture(
        BIG,
        &[
            ("same", b"same"),
            ("grow", b"1"),
            ("touch", b"abcd"),
            ("chmod", b"m"),
            ("gone", b"g"),
        ],
    )
    .await;
    std::fs::create_dir(f.dir.join("olddir")).unwrap();
    let before = f.ws.snapshot(&f.sid).await.unwrap();
    assert_eq!(before.get("olddir").unwrap().kind, FileKind::Directory);

    std::fs::write(f.dir.join("grow"), b"12").unwrap();
    // Same size, new content: only the mtime tells.
    std::fs::write(f.dir.join("touch"), b"wxyz").unwrap();
    let later = SystemTime::now() + Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(f.dir.join("touch"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    std::fs::set_permissions(f.dir.join("chmod"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(f.dir.join("gone")).unwrap();
    std::fs::create_dir_all(f.dir.join("newdir/deep")).unwrap();
    std::fs::write(f.dir.join("newdir/deep/added"), b"new").unwrap();
    symlink("/etc/passwd", f.dir.join("link")).unwrap();
    std::fs::remove_dir(f.dir.join("olddir")).unwrap();

    let after = f.ws.snapshot(&f.sid).await.unwrap();
    let changes = f.ws.diff(&f.sid, &before, &after).await.unwrap();
    let summary: Vec<_> = changes.iter().map(|c| (c.path.as_str(), c.kind)).collect();
    assert_eq!(
        summary,
        [
            ("chmod", ChangeKind::Modified),
            ("gone", ChangeKind::Deleted),
            ("grow", ChangeKind::Modified),
            ("link", ChangeKind::Added),
            ("newdir/deep/added", ChangeKind::Added),
            ("touch", ChangeKind::Modified),
        ]
    );
    let by_path = |p: &str| changes.iter().find(|c| c.path == p).unwrap();
    assert_eq!(by_path("gone").entry, None);
    let touched = by_path("touch").entry.clone().unwrap();
    assert_eq!(touched.sha256.as_deref(), Some(sha(b"wxyz").as_str()));
    assert_eq!(touched.size, 4);
    assert_eq!(by_path("chmod").entry.as_ref().unwrap().mode, 0o600);
    let link = by_path("link").entry.clone().unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(link.symlink_target.as_deref(), Some("/etc/passwd"));
    assert_eq!(link.sha256, None);
    assert_eq!(
        by_path("newdir/deep/added")
            .entry
            .as_ref()
            .unwrap()
            .sha256
            .as_deref(),
        Some(sha(b"new").as_str())
    );

    assert!(f.ws.diff(&f.sid, &after, &after).await.unwrap().is_empty());
}

#[tokio::test]
async fn large_upload_streams_through_the_writer() {
    let f = fixture(BIG, &[]).await;
    let chunk = Bytes::from((0..65536u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let mut hasher = Sha256::new();
    let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
    up.start_file(UploadHeader {
        path: "big.bin".into(),
        size: Some(64 * 65536),
        ..Default::default()
    })
    .await
    .unwrap();
    for _ in 0..64 {
        hasher.update(&chunk);
        up.write_chunk(chunk.clone()).await.unwrap();
    }
    let entries = up.commit().await.unwrap();
    assert_eq!(entries[0].size, 64 * 65536);
    assert_eq!(
        entries[0].sha256.as_deref(),
        Some(hex::encode(hasher.finalize()).as_str())
    );
    assert_eq!(
        std::fs::metadata(f.dir.join("big.bin")).unwrap().len(),
        64 * 65536
    );
}

/// Rough throughput figure: `cargo test --release --lib workspace::tests::upload_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; writes 256 MiB"]
async fn upload_throughput() {
    let f = fixture(BIG, &[]).await;
    let chunk = Bytes::from(vec![42u8; 64 * 1024]);
    let n = 4096;
    let started = std::time::Instant::now();
    let mut up = f.ws.begin_upload(&f.sid).await.unwrap();
    up.start_file(header("big")).await.unwrap();
    for _ in 0..n {
        up.write_chunk(chunk.clone()).await.unwrap();
    }
    let entries = up.commit().await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(entries[0].size, n * 64 * 1024);
    println!("{:.0} MB/s", (n * 64 * 1024) as f64 / secs / 1e6);
}

/// A snapshot over a listing held in memory reuses its unchanged files exactly as one over the
/// same listing read back from the history, and a changed file is read again under either.
#[tokio::test]
async fn a_held_listing_is_reused_like_a_stored_one() {
    let f = fixture(BIG, &[("a.txt", b"one\n"), ("dir/b.txt", b"two\n")]).await;
    // Files older than the racy-timestamp margin when the first listing is taken, so that its
    // stats can be trusted by the snapshots over it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let first =
        f.ws.take_snapshot(&f.sid, history::Basis::Nothing, None)
            .await
            .unwrap();
    assert_eq!(first.stats.files_read, 2, "no listing: every file is read");
    let held =
        f.ws.take_snapshot(&f.sid, history::Basis::Held(Arc::clone(&first.tree)), None)
            .await
            .unwrap();
    let stored =
        f.ws.take_snapshot(&f.sid, history::Basis::Stored(first.id.clone()), None)
            .await
            .unwrap();
    assert_eq!(held.stats.files_read, 0, "held: nothing read again");
    assert_eq!(stored.stats.files_read, 0, "stored: nothing read again");
    assert_eq!(held.tree.entries, first.tree.entries);
    std::fs::write(f.dir.join("a.txt"), b"changed\n").unwrap();
    let after =
        f.ws.take_snapshot(&f.sid, history::Basis::Held(Arc::clone(&first.tree)), None)
            .await
            .unwrap();
    assert_eq!(after.stats.files_read, 1, "only the changed file is read");
    let changes = history::changes(&first.tree, &after.tree);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].path, "a.txt");
    assert_eq!(changes[0].kind, ChangeKind::Modified);
}

/// An agent can nest directories far past PATH_MAX. Listing such a tree stops where paths pass
/// MAX_PATH_BYTES (no client could name what is below, and each level's path is as long as all
/// above it), and deleting it, a directory or the whole session, removes every level.
#[tokio::test]
async fn a_tree_nested_past_path_max_is_listed_to_the_bound_and_deleted_whole() {
    let f = fixture(BIG, &[("keep.txt", b"k")]).await;
    super::remove::tests::chain(&f.dir, 5_000);
    // Some 4 MB of paths: more than one page.
    let mut entries = Vec::new();
    let mut after = None;
    loop {
        let (page, next) =
            f.ws.list(&f.sid, "", false, after.as_deref(), 10_000)
                .await
                .unwrap();
        entries.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let longest = entries.iter().map(|e| e.path.len()).max().unwrap_or(0);
    assert!(
        longest <= MAX_PATH_BYTES,
        "a path of {longest} bytes was listed"
    );
    // `d/`… up to the bound: 2,048 levels, the file at the first, not the leaf.
    let dirs = entries
        .iter()
        .filter(|e| e.kind == FileKind::Directory)
        .count();
    assert_eq!(dirs, MAX_PATH_BYTES / 2, "levels listed");
    assert!(entries.iter().any(|e| e.path == "d/f"));
    assert!(entries.iter().any(|e| e.path == "keep.txt"));
    assert!(!entries.iter().any(|e| e.path.ends_with("/leaf")));

    assert_eq!(
        f.ws.delete(&f.sid, "d", true).await.unwrap(),
        6,
        "five files and the leaf"
    );
    let (entries, _) = f.ws.list(&f.sid, "", false, None, 0).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        ["keep.txt"]
    );

    super::remove::tests::chain(&f.dir, 30_000);
    f.ws.remove(&f.sid).await.unwrap();
    assert!(!f.dir.exists());
}
