//! Bad input, table-driven, for every RPC: each behaviour is its own test on its own server,
//! against a workspace an agent furnished with links and a FIFO; after each, nothing was written
//! outside the workspace, the refused calls changed nothing and the data dir holds only what it should.

use super::*;
use crate::common::*;
use agentd::pb;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

use Code::{
    Cancelled, DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, OutOfRange,
    ResourceExhausted,
};

// ---------------------------------------------------------------------------------------------
// 6. Bad input, table-driven, for every RPC.

/// What a case must answer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Want {
    /// Success.
    Ok,
    /// This code with this ErrorInfo reason.
    Err(Code, &'static str),
}

pub(crate) struct Table {
    failures: Vec<String>,
    count: usize,
}

impl Table {
    fn check<T>(&mut self, name: &str, got: Result<T, tonic::Status>, want: Want) {
        self.count += 1;
        let ok = match (&got, want) {
            (Ok(_), Want::Ok) => true,
            (Err(e), Want::Err(code, why)) => e.code() == code && reason(e) == why,
            _ => false,
        };
        if !ok {
            let got = match &got {
                Ok(_) => "OK".to_owned(),
                Err(e) => format!("{:?} {:?} ({})", e.code(), reason(e), e.message()),
            };
            self.failures
                .push(format!("{name}: want {want:?}, got {got}"));
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} bad-input cases answered wrongly:\n  {}",
            self.failures.len(),
            self.count,
            self.failures.join("\n  ")
        );
    }
}

/// Every regular file, directory and link under `dir`, with file contents, never following links.
pub(crate) fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let Ok(e) = e else { continue };
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let ft = e.file_type();
        let what = if ft.is_symlink() {
            format!("-> {}", std::fs::read_link(e.path()).unwrap().display())
        } else if ft.is_dir() {
            "dir".to_owned()
        } else if ft.is_file() {
            let c = std::fs::read(e.path()).unwrap_or_default();
            format!(
                "file {} bytes {:x}",
                c.len(),
                c.iter().map(|b| *b as u64).sum::<u64>()
            )
        } else {
            "special".to_owned()
        };
        out.insert(rel, what);
    }
    out
}

pub(crate) fn header(session: &str, path: &str) -> pb::UploadFilesRequest {
    pb::UploadFilesRequest {
        session_id: session.into(),
        part: Some(pb::upload_files_request::Part::Header(
            pb::UploadFileHeader {
                path: path.into(),
                ..Default::default()
            },
        )),
    }
}

pub(crate) fn chunk(data: Vec<u8>) -> pb::UploadFilesRequest {
    pb::UploadFilesRequest {
        session_id: String::new(),
        part: Some(pb::upload_files_request::Part::Chunk(data.into())),
    }
}

pub(crate) async fn upload_msgs(
    c: &mut Clients,
    msgs: Vec<pb::UploadFilesRequest>,
) -> Result<pb::UploadFilesResponse, tonic::Status> {
    c.files
        .upload_files(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

pub(crate) fn file(path: &str, content: &[u8]) -> pb::FileContent {
    pb::FileContent {
        path: path.into(),
        content: content.to_vec().into(),
        mode: None,
    }
}

/// Messages shaped like agentd's, but with `bytes` where agentd has `string`, to put invalid
/// UTF-8 on the wire.
pub(crate) mod raw {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileContent {
        #[prost(bytes = "vec", tag = "1")]
        pub path: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub content: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateSessionRequest {
        #[prost(message, repeated, tag = "1")]
        pub files: Vec<FileContent>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DownloadFileRequest {
        #[prost(string, tag = "1")]
        pub session_id: String,
        #[prost(bytes = "vec", tag = "2")]
        pub path: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeleteFileRequest {
        #[prost(string, tag = "1")]
        pub session_id: String,
        #[prost(bytes = "vec", tag = "2")]
        pub path: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}
}

/// A unary call with a hand-made request message, as another client could send it.
pub(crate) async fn raw_unary<Req>(
    ch: &tonic::transport::Channel,
    method: &'static str,
    req: Req,
) -> Result<(), tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let mut r = tonic::Request::new(req);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {KEY_A}").parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    let codec = tonic_prost::ProstCodec::<Req, raw::Empty>::default();
    grpc.unary(r, path, codec).await.map(|_| ())
}

/// Same, for a server-streaming method: the status of the call or of its first message.
pub(crate) async fn raw_server_stream<Req>(
    ch: &tonic::transport::Channel,
    method: &'static str,
    req: Req,
) -> Result<(), tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let mut r = tonic::Request::new(req);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {KEY_A}").parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    let codec = tonic_prost::ProstCodec::<Req, raw::Empty>::default();
    let mut s = grpc.server_streaming(r, path, codec).await?.into_inner();
    s.message().await.map(|_| ())
}

pub(crate) async fn download_first(
    c: &mut Clients,
    session: &str,
    path: &str,
) -> Result<(), tonic::Status> {
    c.download(session, path).await.map(|_| ())
}

pub(crate) async fn stream_first(
    c: &mut Clients,
    job: &str,
    after: u64,
) -> Result<(), tonic::Status> {
    let mut s = c
        .jobs
        .stream_job_events(stream_req(job, after))
        .await?
        .into_inner();
    s.message().await.map(|_| ())
}

pub(crate) const MAX_FILE: usize = 1_100_000;
pub(crate) const MAX_SESSION: usize = 2_000_000;
pub(crate) const MAX_FILES: usize = 5;
pub(crate) const TTL_MAX: u32 = 86_400;

/// The server, the clients and the furnished workspace every bad-input test starts from.
pub(crate) struct Fixture {
    server: TestServer,
    c: Clients,
    t: Table,
    outside: tempfile::TempDir,
    outside_before: BTreeMap<String, String>,
    out: String,
    sid: String,
    setup: pb::Job,
    ws: PathBuf,
    ws_before: BTreeMap<String, String>,
    eid: String,
}

impl Fixture {
    async fn new() -> Fixture {
        let server = TestServer::start_with(Options {
            args: vec![
                "--max-file-bytes".into(),
                MAX_FILE.to_string(),
                "--max-session-bytes".into(),
                MAX_SESSION.to_string(),
                "--max-files-per-session".into(),
                MAX_FILES.to_string(),
                "--session-ttl-max".into(),
                TTL_MAX.to_string(),
                "--job-timeout-max".into(),
                "600".into(),
                "--job-timeout-default".into(),
                "60".into(),
            ],
            ..Default::default()
        });
        let mut c = server.clients(KEY_A).await;
        let t = Table {
            failures: Vec::new(),
            count: 0,
        };
        // A directory outside every workspace that agent-made symlinks point at.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("target.txt"), b"outside").unwrap();
        let outside_before = tree(outside.path());
        let out = outside.path().display().to_string();

        // A workspace furnished by an agent with what clients cannot create themselves.
        let s = c
            .create_session(&[("keep.txt", b"keep"), ("real/f.txt", b"inside")])
            .await;
        let sid = s.session_id.clone();
        let setup = c
            .submit(
                &sid,
                &format!(
                    "bash ln -s {out}/target.txt leak && ln -s {out} outdir && ln -s real alias \
                     && ln -s keep.txt inlink && mkfifo pipe && mkdir full && echo x > full/x"
                ),
            )
            .await;
        let setup = c.wait(&setup.job_id).await;
        assert_eq!(setup.state, pb::JobState::Succeeded as i32, "{setup:?}");
        let ws = workspace(&server, &sid);
        let ws_before = tree(&ws);
        let s_empty = c.create_session(&[]).await;
        let eid = s_empty.session_id.clone();
        Fixture {
            server,
            c,
            t,
            outside,
            outside_before,
            out,
            sid,
            setup,
            ws,
            ws_before,
            eid,
        }
    }

    /// Nothing escaped: no refused upload left a file or a staged temp, nothing outside changed,
    /// the data dir holds only the store, the sessions and the run records.
    fn finish(self) {
        let Fixture {
            server,
            t,
            outside,
            outside_before,
            eid,
            ..
        } = self;
        let ews = workspace(&server, &eid);
        for p in [
            "slow.bin",
            "huge.bin",
            "sized.txt",
            "sha.txt",
            "a.txt",
            "b.txt",
            "empty4",
        ] {
            assert!(!ews.join(p).exists(), "{p} was written by a refused upload");
        }
        // An aborted upload's temp files are removed once the server sees the stream end, which
        // may be a moment after the client gave up.
        let staged = || -> Vec<String> {
            tree(&ews)
                .into_keys()
                .filter(|k| k.contains(".agentd-upload-"))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !staged().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let staged = staged();
        assert!(
            staged.is_empty(),
            "staged upload files left behind: {staged:?}"
        );
        assert_eq!(
            tree(outside.path()),
            outside_before,
            "written outside the workspace"
        );
        // Nothing escaped into the data dir either: only the store, the sessions directory and the
        // run records.
        let top: BTreeSet<String> = std::fs::read_dir(&server.data_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("agentd.db"))
            .collect();
        assert_eq!(
            top,
            BTreeSet::from(["run".to_owned(), "sessions".to_owned()]),
            "unexpected entries in the data dir"
        );
        eprintln!("bad input: {} cases checked", t.count);
        t.finish();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_are_refused_by_every_rpc_that_takes_one() {
    let mut f = Fixture::new().await;
    paths(&mut f).await;
    f.finish();
}

#[allow(unused_variables)]
async fn paths(f: &mut Fixture) {
    let Fixture {
        server,
        c,
        t,
        outside,
        outside_before,
        out,
        sid,
        setup,
        ws,
        ws_before,
        eid,
    } = f;
    // --- paths, through every RPC that takes one ---
    let long_name = "n".repeat(256);
    let max_name = "m".repeat(255);
    let path_4097 = format!("{}/{}", "d".repeat(255), "p".repeat(4097 - 256));
    let bad_paths: Vec<(&str, String)> = vec![
        ("dotdot", "../x".into()),
        ("inner dotdot", "a/../../x".into()),
        ("absolute", "/etc/passwd".into()),
        ("NUL", "a\0b".into()),
        ("empty", String::new()),
        ("dot", ".".into()),
        ("dot slash", "./".into()),
        ("256-byte component", long_name.clone()),
        ("4097-byte path", path_4097.clone()),
        ("reserved temp prefix", ".agentd-upload-x".into()),
    ];
    for (what, p) in &bad_paths {
        let want = Want::Err(InvalidArgument, "INVALID_PATH");
        let r = c
            .sessions
            .create_session(pb::CreateSessionRequest {
                files: vec![file(p, b"x")],
                ..Default::default()
            })
            .await;
        t.check(&format!("CreateSession path {what}"), r, want);
        let r = upload_msgs(c, vec![header(eid, p), chunk(b"x".to_vec())]).await;
        t.check(&format!("UploadFiles path {what}"), r, want);
        t.check(
            &format!("DownloadFile path {what}"),
            download_first(c, sid, p).await,
            want,
        );
        let r = c
            .files
            .delete_file(pb::DeleteFileRequest {
                session_id: sid.clone(),
                path: p.clone(),
                recursive: true,
            })
            .await;
        t.check(&format!("DeleteFile path {what}"), r, want);
        // ListFiles takes a directory: the root ("", ".", "./") is valid there.
        if !["empty", "dot", "dot slash"].contains(what) {
            let r = c
                .files
                .list_files(pb::ListFilesRequest {
                    session_id: sid.clone(),
                    path: p.clone(),
                    ..Default::default()
                })
                .await;
            t.check(&format!("ListFiles path {what}"), r, want);
        }
    }
    for p in ["", ".", "./"] {
        let r = c
            .files
            .list_files(pb::ListFilesRequest {
                session_id: sid.clone(),
                path: p.into(),
                ..Default::default()
            })
            .await;
        t.check(&format!("ListFiles root as {p:?}"), r, Want::Ok);
    }
    // At the limits: a 255-byte name and a 4096-byte path are valid names.
    let deep: String = {
        // 15 components of 255 bytes, then 254 and 1: 4,080 bytes and 16 slashes.
        let mut comps: Vec<String> = (0..15).map(|i| format!("{i:x}").repeat(255)).collect();
        comps.push("y".repeat(254));
        comps.push("z".into());
        comps.join("/")
    };
    assert_eq!(deep.len(), 4096);
    let r = upload_msgs(c, vec![header(eid, &max_name), chunk(b"x".to_vec())]).await;
    t.check("UploadFiles 255-byte name", r, Want::Ok);
    let r = upload_msgs(c, vec![header(eid, &deep), chunk(b"x".to_vec())]).await;
    t.check("UploadFiles 4096-byte path", r, Want::Ok);
    t.check(
        "DownloadFile 4096-byte path",
        download_first(c, eid, &deep).await,
        Want::Ok,
    );
    // A trailing slash is normalised away (documented: `a/` names `a`).
    let r = upload_msgs(c, vec![header(eid, "trail.txt/"), chunk(b"t".to_vec())]).await;
    t.check("UploadFiles trailing slash", r, Want::Ok);
    assert_eq!(c.download(eid, "trail.txt").await.ok(), Some(b"t".to_vec()));
    t.check(
        "DownloadFile trailing slash",
        download_first(c, sid, "keep.txt/").await,
        Want::Ok,
    );

    // Invalid UTF-8 where a path is expected (protobuf strings must be UTF-8).
    let ch = server.channel().await;
    let bad_utf8 = b"bad\xff\xfe.txt".to_vec();
    let r = raw_unary(
        &ch,
        "/agentd.v1.SessionService/CreateSession",
        raw::CreateSessionRequest {
            files: vec![raw::FileContent {
                path: bad_utf8.clone(),
                content: b"x".to_vec(),
            }],
        },
    )
    .await;
    t.check(
        "CreateSession invalid UTF-8 path",
        r,
        Want::Err(InvalidArgument, "MALFORMED_REQUEST"),
    );
    let r = raw_server_stream(
        &ch,
        "/agentd.v1.FileService/DownloadFile",
        raw::DownloadFileRequest {
            session_id: sid.clone(),
            path: bad_utf8.clone(),
        },
    )
    .await;
    t.check(
        "DownloadFile invalid UTF-8 path",
        r,
        Want::Err(InvalidArgument, "MALFORMED_REQUEST"),
    );
    let r = raw_unary(
        &ch,
        "/agentd.v1.FileService/DeleteFile",
        raw::DeleteFileRequest {
            session_id: sid.clone(),
            path: bad_utf8.clone(),
        },
    )
    .await;
    t.check(
        "DeleteFile invalid UTF-8 path",
        r,
        Want::Err(InvalidArgument, "MALFORMED_REQUEST"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_made_links_and_fifos_are_never_followed_or_opened() {
    let mut f = Fixture::new().await;
    symlinks(&mut f).await;
    f.finish();
}

#[allow(unused_variables)]
async fn symlinks(f: &mut Fixture) {
    let Fixture {
        server,
        c,
        t,
        outside,
        outside_before,
        out,
        sid,
        setup,
        ws,
        ws_before,
        eid,
    } = f;
    // --- symlinks, FIFOs and other non-files made by the agent ---
    let esc = Want::Err(FailedPrecondition, "SYMLINK_ESCAPE");
    let notreg = Want::Err(FailedPrecondition, "NOT_A_REGULAR_FILE");
    let notdir = Want::Err(FailedPrecondition, "NOT_A_DIRECTORY");
    t.check(
        "DownloadFile link out (last component)",
        download_first(c, sid, "leak").await,
        esc,
    );
    t.check(
        "DownloadFile through link out (parent)",
        download_first(c, sid, "outdir/target.txt").await,
        esc,
    );
    t.check(
        "DownloadFile through link in (parent)",
        download_first(c, sid, "alias/f.txt").await,
        esc,
    );
    t.check(
        "DownloadFile link in (last component)",
        download_first(c, sid, "inlink").await,
        notreg,
    );
    t.check(
        "DownloadFile FIFO",
        tokio::time::timeout(Duration::from_secs(10), download_first(c, sid, "pipe"))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("download of a FIFO hung"))),
        notreg,
    );
    t.check(
        "DownloadFile directory",
        download_first(c, sid, "real").await,
        notreg,
    );
    t.check(
        "DownloadFile file as a directory",
        download_first(c, sid, "keep.txt/x").await,
        notdir,
    );
    for (what, p) in [
        ("through link out (parent)", "outdir/new.txt"),
        ("through link in (parent)", "alias/new.txt"),
        ("under link out, nested", "outdir/sub/new.txt"),
    ] {
        let r = upload_msgs(c, vec![header(sid, p), chunk(b"w".to_vec())]).await;
        t.check(&format!("UploadFiles {what}"), r, esc);
    }
    let r = upload_msgs(c, vec![header(sid, "keep.txt/x"), chunk(b"w".to_vec())]).await;
    t.check("UploadFiles under a regular file", r, notdir);
    for (what, p) in [
        ("through link out (parent)", "outdir"),
        ("link in to a directory", "alias"),
    ] {
        let r = c
            .files
            .list_files(pb::ListFilesRequest {
                session_id: sid.clone(),
                path: p.into(),
                ..Default::default()
            })
            .await;
        t.check(
            &format!("ListFiles {what}"),
            r,
            if p == "outdir" { esc } else { notdir },
        );
    }
    let r = c
        .files
        .list_files(pb::ListFilesRequest {
            session_id: sid.clone(),
            path: "keep.txt".into(),
            ..Default::default()
        })
        .await;
    t.check("ListFiles a regular file", r, notdir);
    for (what, p, recursive, want) in [
        ("through link out (parent)", "outdir/target.txt", false, esc),
        ("through link in (parent)", "alias/f.txt", false, esc),
        (
            "non-empty dir",
            "full",
            false,
            Want::Err(FailedPrecondition, "DIRECTORY_NOT_EMPTY"),
        ),
        (
            "missing",
            "missing.txt",
            false,
            Want::Err(NotFound, "FILE_NOT_FOUND"),
        ),
    ] {
        let r = c
            .files
            .delete_file(pb::DeleteFileRequest {
                session_id: sid.clone(),
                path: p.into(),
                recursive,
            })
            .await;
        t.check(&format!("DeleteFile {what}"), r, want);
    }
    // The listing shows links as links, never what they point at, and hides FIFOs.
    let listed = c
        .files
        .list_files(pb::ListFilesRequest {
            session_id: sid.clone(),
            include_sha256: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .files;
    let paths: Vec<&str> = listed.iter().map(|f| f.path.as_str()).collect();
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("outdir/") || p.starts_with("alias/")),
        "{paths:?}"
    );
    assert!(!paths.contains(&"pipe"), "FIFO listed: {paths:?}");
    // Outputs of the job that made the FIFO and links: computed without following or hanging.
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        c.files.get_job_outputs(pb::GetJobOutputsRequest {
            session_id: sid.clone(),
            job_id: setup.job_id.clone(),
            ..Default::default()
        }),
    )
    .await
    .expect("GetJobOutputs with a FIFO in the workspace hung");
    t.check("GetJobOutputs with links and a FIFO", r, Want::Ok);

    // Nothing was written outside, and the refused calls changed nothing inside.
    assert_eq!(
        tree(outside.path()),
        *outside_before,
        "written outside the workspace"
    );
    assert_eq!(tree(ws), *ws_before, "refused calls changed the workspace");
    for p in ["new.txt", "sub"] {
        assert!(!outside.path().join(p).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_work_at_each_limit_and_fail_one_byte_over() {
    let mut f = Fixture::new().await;
    sizes(&mut f).await;
    f.finish();
}

#[allow(unused_variables)]
async fn sizes(f: &mut Fixture) {
    let Fixture {
        server,
        c,
        t,
        outside,
        outside_before,
        out,
        sid,
        setup,
        ws,
        ws_before,
        eid,
    } = f;
    // --- sizes: at each limit it works, one byte over it is refused ---
    let sl = c.create_session(&[]).await.session_id;
    let big = vec![b'a'; MAX_FILE];
    let r = upload_msgs(
        c,
        vec![
            header(&sl, "max.bin"),
            chunk(big[..1 << 20].to_vec()),
            chunk(big[1 << 20..].to_vec()),
        ],
    )
    .await;
    t.check("UploadFiles file of max_file_bytes", r, Want::Ok);
    // On an empty session, so that only the per-file limit is crossed.
    let sf = c.create_session(&[]).await.session_id;
    let mut over = big.clone();
    over.push(b'a');
    let r = upload_msgs(
        c,
        vec![
            header(&sf, "over.bin"),
            chunk(over[..1 << 20].to_vec()),
            chunk(over[1 << 20..].to_vec()),
        ],
    )
    .await;
    t.check(
        "UploadFiles file of max_file_bytes + 1",
        r,
        Want::Err(ResourceExhausted, "FILE_TOO_LARGE"),
    );
    let rest = MAX_SESSION - MAX_FILE;
    let r = upload_msgs(
        c,
        vec![header(&sl, "rest.bin"), chunk(vec![b'b'; rest + 1])],
    )
    .await;
    t.check(
        "UploadFiles to max_session_bytes + 1",
        r,
        Want::Err(ResourceExhausted, "SESSION_TOO_LARGE"),
    );
    let r = upload_msgs(c, vec![header(&sl, "rest.bin"), chunk(vec![b'b'; rest])]).await;
    t.check("UploadFiles to max_session_bytes", r, Want::Ok);
    let r = upload_msgs(c, vec![header(&sl, "empty1")]).await;
    t.check("UploadFiles empty file to the file count 3", r, Want::Ok);
    let r = upload_msgs(c, vec![header(&sl, "empty2"), header(&sl, "empty3")]).await;
    t.check("UploadFiles to max_files_per_session", r, Want::Ok);
    let r = upload_msgs(c, vec![header(&sl, "empty4")]).await;
    t.check(
        "UploadFiles to max_files_per_session + 1",
        r,
        Want::Err(ResourceExhausted, "TOO_MANY_FILES"),
    );
    let sc = c.create_session(&[]).await.session_id;
    let r = upload_msgs(c, vec![header(&sc, "c.bin"), chunk(vec![0; (1 << 20) + 1])]).await;
    t.check(
        "UploadFiles chunk of 1 MiB + 1",
        r,
        Want::Err(InvalidArgument, "INVALID_FIELD"),
    );
    let files: Vec<pb::FileContent> = (0..=MAX_FILES)
        .map(|i| file(&format!("f{i}"), b""))
        .collect();
    let r = c
        .sessions
        .create_session(pb::CreateSessionRequest {
            files: files.clone(),
            ..Default::default()
        })
        .await;
    t.check(
        "CreateSession max_files_per_session + 1",
        r,
        Want::Err(ResourceExhausted, "TOO_MANY_FILES"),
    );
    let r = c
        .sessions
        .create_session(pb::CreateSessionRequest {
            files: vec![file("a", &over)],
            ..Default::default()
        })
        .await;
    t.check(
        "CreateSession file of max_file_bytes + 1",
        r,
        Want::Err(ResourceExhausted, "FILE_TOO_LARGE"),
    );
    let r = c
        .sessions
        .create_session(pb::CreateSessionRequest {
            files: vec![
                file("a", &big),
                file("b", &vec![0; MAX_SESSION - MAX_FILE + 1]),
            ],
            ..Default::default()
        })
        .await;
    t.check(
        "CreateSession max_session_bytes + 1",
        r,
        Want::Err(ResourceExhausted, "SESSION_TOO_LARGE"),
    );
    for (what, ttl, want) in [
        ("ttl_seconds max", TTL_MAX, Want::Ok),
        (
            "ttl_seconds max + 1",
            TTL_MAX + 1,
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
    ] {
        let r = c
            .sessions
            .create_session(pb::CreateSessionRequest {
                ttl_seconds: ttl,
                ..Default::default()
            })
            .await;
        t.check(&format!("CreateSession {what}"), r, want);
    }
    let label_cases: Vec<(&str, BTreeMap<String, String>, Want)> = vec![
        (
            "label key 63",
            [("k".repeat(63), "v".into())].into(),
            Want::Ok,
        ),
        (
            "label key 64",
            [("k".repeat(64), "v".into())].into(),
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "label value 256",
            [("k".into(), "v".repeat(256))].into(),
            Want::Ok,
        ),
        (
            "label value 257",
            [("k".into(), "v".repeat(257))].into(),
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "64 labels",
            (0..64).map(|i| (format!("k{i}"), "v".into())).collect(),
            Want::Ok,
        ),
        (
            "65 labels",
            (0..65).map(|i| (format!("k{i}"), "v".into())).collect(),
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "empty label key",
            [(String::new(), "v".into())].into(),
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
    ];
    for (what, labels, want) in label_cases {
        let r = c
            .sessions
            .create_session(pb::CreateSessionRequest {
                labels: labels.clone().into_iter().collect(),
                ..Default::default()
            })
            .await;
        t.check(&format!("CreateSession {what}"), r, want);
        let r = c
            .sessions
            .list_sessions(pb::ListSessionsRequest {
                label_filter: labels.into_iter().collect(),
                ..Default::default()
            })
            .await;
        t.check(&format!("ListSessions filter {what}"), r, want);
    }
    for (what, id, want) in [
        ("request_id 128", "r".repeat(128), Want::Ok),
        (
            "request_id 129",
            "r".repeat(129),
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "request_id with a control char",
            "r\u{7}".into(),
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
    ] {
        let r = c
            .sessions
            .create_session(pb::CreateSessionRequest {
                request_id: id.clone(),
                ..Default::default()
            })
            .await;
        t.check(&format!("CreateSession {what}"), r, want);
        let r = c
            .jobs
            .submit_job(pb::SubmitJobRequest {
                session_id: eid.clone(),
                prompt: "hi".into(),
                request_id: id,
                ..Default::default()
            })
            .await;
        t.check(&format!("SubmitJob {what}"), r, want);
    }
    let base = pb::SubmitJobRequest {
        session_id: eid.clone(),
        prompt: "hi".into(),
        ..Default::default()
    };
    let job_cases: Vec<(&str, pb::SubmitJobRequest, Want)> = vec![
        (
            "prompt 1 MiB",
            pb::SubmitJobRequest {
                prompt: "p".repeat(1 << 20),
                ..base.clone()
            },
            Want::Ok,
        ),
        (
            "prompt 1 MiB + 1",
            pb::SubmitJobRequest {
                prompt: "p".repeat((1 << 20) + 1),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "prompt with NUL",
            pb::SubmitJobRequest {
                prompt: "a\0b".into(),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "blank prompt",
            pb::SubmitJobRequest {
                prompt: " \n\t".into(),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "MISSING_FIELD"),
        ),
        (
            "timeout max",
            pb::SubmitJobRequest {
                timeout_seconds: 600,
                ..base.clone()
            },
            Want::Ok,
        ),
        (
            "env value 64 KiB",
            pb::SubmitJobRequest {
                env: [("V".to_string(), "v".repeat(64 * 1024))].into(),
                ..base.clone()
            },
            Want::Ok,
        ),
        (
            "env value 64 KiB + 1",
            pb::SubmitJobRequest {
                env: [("V".to_string(), "v".repeat(64 * 1024 + 1))].into(),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "env name 256",
            pb::SubmitJobRequest {
                env: [("V".repeat(256), "v".to_string())].into(),
                ..base.clone()
            },
            Want::Ok,
        ),
        (
            "env name 257",
            pb::SubmitJobRequest {
                env: [("V".repeat(257), "v".to_string())].into(),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "env name with '='",
            pb::SubmitJobRequest {
                env: [("A=B".to_string(), "v".to_string())].into(),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "env name empty",
            pb::SubmitJobRequest {
                env: [(String::new(), "v".to_string())].into(),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "env name reserved for the server",
            pb::SubmitJobRequest {
                env: [("AGENTD_RUN_TOKEN".to_string(), "v".to_string())].into(),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "FORBIDDEN_ENV"),
        ),
        (
            "allowed tool 256",
            pb::SubmitJobRequest {
                allowed_tools: vec!["T".repeat(256)],
                ..base.clone()
            },
            Want::Ok,
        ),
        (
            "allowed tool 257",
            pb::SubmitJobRequest {
                allowed_tools: vec!["T".repeat(257)],
                ..base.clone()
            },
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "allowed tool empty",
            pb::SubmitJobRequest {
                allowed_tools: vec![String::new()],
                ..base.clone()
            },
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "model with NUL",
            pb::SubmitJobRequest {
                model: "m\0".into(),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "append_system_prompt with NUL",
            pb::SubmitJobRequest {
                append_system_prompt: "s\0".into(),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        ),
        (
            "empty session_id",
            pb::SubmitJobRequest {
                session_id: String::new(),
                ..base.clone()
            },
            Want::Err(InvalidArgument, "MISSING_FIELD"),
        ),
    ];
    for (what, req, want) in job_cases {
        let r = c.jobs.submit_job(req.clone()).await;
        t.check(&format!("SubmitJob {what}"), r, want);
        if matches!(want, Want::Err(..)) {
            let r = c
                .jobs
                .run_job(pb::RunJobRequest { job: Some(req) })
                .await
                .map(|_| ());
            t.check(&format!("RunJob {what}"), r, want);
        }
    }
    let r = c
        .jobs
        .run_job(pb::RunJobRequest { job: None })
        .await
        .map(|_| ());
    t.check(
        "RunJob without job",
        r,
        Want::Err(InvalidArgument, "MISSING_FIELD"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_counts_and_unknown_enum_values_are_refused() {
    let mut f = Fixture::new().await;
    counts(&mut f).await;
    f.finish();
}

#[allow(unused_variables)]
async fn counts(f: &mut Fixture) {
    let Fixture {
        server,
        c,
        t,
        outside,
        outside_before,
        out,
        sid,
        setup,
        ws,
        ws_before,
        eid,
    } = f;
    let base = pb::SubmitJobRequest {
        session_id: eid.clone(),
        prompt: "hi".into(),
        ..Default::default()
    };
    // --- counts and unknown enum values ---
    for (what, states) in [
        ("state 99", vec![99]),
        ("state UNSPECIFIED", vec![0]),
        ("state -1", vec![-1]),
    ] {
        let r = c
            .jobs
            .list_jobs(pb::ListJobsRequest {
                session_id: eid.clone(),
                states,
                ..Default::default()
            })
            .await;
        t.check(
            &format!("ListJobs {what}"),
            r,
            Want::Err(InvalidArgument, "INVALID_FIELD"),
        );
    }
    let neg = Want::Err(InvalidArgument, "INVALID_FIELD");
    t.check(
        "ListSessions page_size -1",
        c.sessions
            .list_sessions(pb::ListSessionsRequest {
                page_size: -1,
                ..Default::default()
            })
            .await,
        neg,
    );
    t.check(
        "ListJobs page_size -1",
        c.jobs
            .list_jobs(pb::ListJobsRequest {
                session_id: eid.clone(),
                page_size: -1,
                ..Default::default()
            })
            .await,
        neg,
    );
    t.check(
        "ListFiles page_size -1",
        c.files
            .list_files(pb::ListFilesRequest {
                session_id: eid.clone(),
                page_size: -1,
                ..Default::default()
            })
            .await,
        neg,
    );
    t.check(
        "ListJobs bad page_token",
        c.jobs
            .list_jobs(pb::ListJobsRequest {
                session_id: eid.clone(),
                page_token: "bm9wZQ".into(),
                ..Default::default()
            })
            .await,
        Want::Err(InvalidArgument, "INVALID_PAGE_TOKEN"),
    );
    t.check(
        "ListFiles bad page_token",
        c.files
            .list_files(pb::ListFilesRequest {
                session_id: eid.clone(),
                page_token: "%%%".into(),
                ..Default::default()
            })
            .await,
        Want::Err(InvalidArgument, "INVALID_PAGE_TOKEN"),
    );
    // A session listing token is not a job listing token.
    let page = c
        .sessions
        .list_sessions(pb::ListSessionsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    t.check(
        "ListJobs with a ListSessions token",
        c.jobs
            .list_jobs(pb::ListJobsRequest {
                session_id: eid.clone(),
                page_token: page.next_page_token.clone(),
                ..Default::default()
            })
            .await,
        Want::Err(InvalidArgument, "INVALID_PAGE_TOKEN"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_required_fields_are_refused() {
    let mut f = Fixture::new().await;
    empty_fields(&mut f).await;
    f.finish();
}

#[allow(unused_variables)]
async fn empty_fields(f: &mut Fixture) {
    let Fixture {
        server,
        c,
        t,
        outside,
        outside_before,
        out,
        sid,
        setup,
        ws,
        ws_before,
        eid,
    } = f;
    // --- empty required fields ---
    let missing = Want::Err(InvalidArgument, "MISSING_FIELD");
    t.check(
        "GetSession empty id",
        c.sessions
            .get_session(pb::GetSessionRequest {
                session_id: String::new(),
            })
            .await,
        missing,
    );
    t.check(
        "DeleteSession empty id",
        c.sessions
            .delete_session(pb::DeleteSessionRequest {
                session_id: String::new(),
            })
            .await,
        missing,
    );
    t.check(
        "GetJob empty id",
        c.jobs
            .get_job(pb::GetJobRequest {
                job_id: String::new(),
            })
            .await,
        missing,
    );
    t.check(
        "CancelJob empty id",
        c.jobs
            .cancel_job(pb::CancelJobRequest {
                job_id: String::new(),
            })
            .await,
        missing,
    );
    t.check(
        "StreamJobEvents empty id",
        stream_first(c, "", 0).await,
        missing,
    );
    t.check(
        "ListJobs empty session",
        c.jobs.list_jobs(pb::ListJobsRequest::default()).await,
        missing,
    );
    t.check(
        "ListFiles empty session",
        c.files.list_files(pb::ListFilesRequest::default()).await,
        missing,
    );
    t.check(
        "DownloadFile empty session",
        download_first(c, "", "keep.txt").await,
        missing,
    );
    t.check(
        "DeleteFile empty session",
        c.files
            .delete_file(pb::DeleteFileRequest {
                path: "keep.txt".into(),
                ..Default::default()
            })
            .await,
        missing,
    );
    t.check(
        "GetJobOutputs empty session",
        c.files
            .get_job_outputs(pb::GetJobOutputsRequest::default())
            .await,
        missing,
    );
    t.check(
        "UploadFiles empty stream",
        upload_msgs(c, vec![]).await,
        missing,
    );
    t.check(
        "UploadFiles no session_id",
        upload_msgs(c, vec![header("", "a.txt")]).await,
        missing,
    );
    t.check(
        "UploadFiles message with no part",
        upload_msgs(
            c,
            vec![pb::UploadFilesRequest {
                session_id: eid.clone(),
                part: None,
            }],
        )
        .await,
        missing,
    );
    t.check(
        "UploadFiles chunk before any header",
        upload_msgs(
            c,
            vec![pb::UploadFilesRequest {
                session_id: eid.clone(),
                part: Some(pb::upload_files_request::Part::Chunk(b"x".to_vec().into())),
            }],
        )
        .await,
        missing,
    );
    t.check(
        "UploadFiles session_id changes midway",
        upload_msgs(c, vec![header(eid, "a.txt"), header(sid, "b.txt")]).await,
        Want::Err(InvalidArgument, "INVALID_FIELD"),
    );
    t.check(
        "UploadFiles size mismatch",
        upload_msgs(
            c,
            vec![
                pb::UploadFilesRequest {
                    session_id: eid.clone(),
                    part: Some(pb::upload_files_request::Part::Header(
                        pb::UploadFileHeader {
                            path: "sized.txt".into(),
                            size: Some(5),
                            ..Default::default()
                        },
                    )),
                },
                chunk(b"four".to_vec()),
            ],
        )
        .await,
        Want::Err(InvalidArgument, "SIZE_MISMATCH"),
    );
    t.check(
        "UploadFiles malformed sha256",
        upload_msgs(
            c,
            vec![pb::UploadFilesRequest {
                session_id: eid.clone(),
                part: Some(pb::upload_files_request::Part::Header(
                    pb::UploadFileHeader {
                        path: "sha.txt".into(),
                        sha256: "not-hex".into(),
                        ..Default::default()
                    },
                )),
            }],
        )
        .await,
        Want::Err(InvalidArgument, "INVALID_FIELD"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_states_and_cursors_are_refused() {
    let mut f = Fixture::new().await;
    states_and_cursors(&mut f).await;
    f.finish();
}

#[allow(unused_variables)]
async fn states_and_cursors(f: &mut Fixture) {
    let Fixture {
        server,
        c,
        t,
        outside,
        outside_before,
        out,
        sid,
        setup,
        ws,
        ws_before,
        eid,
    } = f;
    // --- states and cursors ---
    let done = c.submit(eid, "hi").await;
    c.wait(&done.job_id).await;
    t.check(
        "CancelJob finished job",
        c.jobs
            .cancel_job(pb::CancelJobRequest {
                job_id: done.job_id.clone(),
            })
            .await,
        Want::Err(FailedPrecondition, "JOB_FINISHED"),
    );
    t.check(
        "DownloadFile offset past the end",
        {
            let r = c
                .files
                .download_file(pb::DownloadFileRequest {
                    session_id: sid.clone(),
                    path: "keep.txt".into(),
                    offset: 5,
                    include_sha256: false,
                })
                .await;
            match r {
                Ok(s) => s.into_inner().message().await.map(|_| ()),
                Err(e) => Err(e),
            }
        },
        Want::Err(OutOfRange, "OFFSET_OUT_OF_RANGE"),
    );
    t.check(
        "DownloadFile offset at the end",
        {
            let r = c
                .files
                .download_file(pb::DownloadFileRequest {
                    session_id: sid.clone(),
                    path: "keep.txt".into(),
                    offset: 4,
                    include_sha256: false,
                })
                .await;
            match r {
                Ok(s) => s.into_inner().message().await.map(|_| ()),
                Err(e) => Err(e),
            }
        },
        Want::Ok,
    );
    let s_nojob = c.create_session(&[]).await.session_id;
    t.check(
        "GetJobOutputs with no succeeded job",
        c.files
            .get_job_outputs(pb::GetJobOutputsRequest {
                session_id: s_nojob.clone(),
                job_id: String::new(),
                ..Default::default()
            })
            .await,
        Want::Err(NotFound, "NO_SUCCEEDED_JOB"),
    );
    t.check(
        "GetJobOutputs job of another session",
        c.files
            .get_job_outputs(pb::GetJobOutputsRequest {
                session_id: s_nojob,
                job_id: done.job_id.clone(),
                ..Default::default()
            })
            .await,
        Want::Err(NotFound, "JOB_NOT_FOUND"),
    );
    let running = c.submit(eid, "sleep 30").await;
    t.check(
        "GetJobOutputs running job",
        c.files
            .get_job_outputs(pb::GetJobOutputsRequest {
                session_id: eid.clone(),
                job_id: running.job_id.clone(),
                ..Default::default()
            })
            .await,
        Want::Err(FailedPrecondition, "JOB_NOT_FINISHED"),
    );

    let r = c
        .jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: running.job_id.clone(),
        })
        .await;
    t.check("CancelJob running job", r, Want::Ok);
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused() {
    let mut f = Fixture::new().await;
    oversized_message(&mut f).await;
    f.finish();
}

#[allow(unused_variables)]
async fn oversized_message(f: &mut Fixture) {
    let Fixture {
        server,
        c,
        t,
        outside,
        outside_before,
        out,
        sid,
        setup,
        ws,
        ws_before,
        eid,
    } = f;
    let base = pb::SubmitJobRequest {
        session_id: eid.clone(),
        prompt: "hi".into(),
        ..Default::default()
    };
    // --- an oversized message (> 4 MiB) ---
    let r = c
        .jobs
        .submit_job(pb::SubmitJobRequest {
            prompt: "p".repeat(5 << 20),
            ..base.clone()
        })
        .await;
    t.check(
        "SubmitJob message of 5 MiB",
        r,
        Want::Err(ResourceExhausted, "MESSAGE_TOO_LARGE"),
    );
    let r = upload_msgs(c, vec![header(eid, "huge.bin"), chunk(vec![0; 5 << 20])]).await;
    t.check(
        "UploadFiles message of 5 MiB",
        r,
        Want::Err(ResourceExhausted, "MESSAGE_TOO_LARGE"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_commits_nothing() {
    let mut f = Fixture::new().await;
    expired_deadline(&mut f).await;
    f.finish();
}

#[allow(unused_variables)]
async fn expired_deadline(f: &mut Fixture) {
    let Fixture {
        server,
        c,
        t,
        outside,
        outside_before,
        out,
        sid,
        setup,
        ws,
        ws_before,
        eid,
    } = f;
    // --- an expired deadline on a slow call: an upload that dribbles in ---
    let slow = async_stream_upload(eid.clone());
    let mut req = tonic::Request::new(slow);
    req.set_timeout(Duration::from_millis(1));
    let r = c.files.upload_files(req).await;
    // tonic (client and server alike) reports an expired grpc-timeout as CANCELLED, not
    // DEADLINE_EXCEEDED; what the server must guarantee is that nothing was committed.
    match &r {
        Err(e) if matches!(e.code(), DeadlineExceeded | Cancelled) => {}
        other => t
            .failures
            .push(format!("UploadFiles with a 1 ms deadline: got {other:?}")),
    }
}

/// An upload that sends a header and then one small chunk every 200 ms, for 2 s.
pub(crate) fn async_stream_upload(
    session: String,
) -> impl tokio_stream::Stream<Item = pb::UploadFilesRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        if tx.send(header(&session, "slow.bin")).await.is_err() {
            return;
        }
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if tx.send(chunk(vec![1; 100])).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
