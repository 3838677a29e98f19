//! The web console's server side, against the real binary: the embedded pages are served for GETs
//! on the gRPC listener (types, caching, CSP), gRPC and gRPC-Web keep working beside them, the
//! console is on by default on loopback and can be turned off or moved to its own listener, and
//! UploadFileChunk (the console's upload: gRPC-Web cannot stream a request) behaves.
//! The browser side (Playwright driving Chromium) is `scripts/console --test`.

mod common;

use agentd::pb;
use common::{KEY_A, KEY_B, Options, TestServer, free_port, raw_http, reason};

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{extra}\r\n")
        .into_bytes()
}

/// (status line, lower-cased headers, body) of a raw HTTP/1.1 answer.
fn parse(resp: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP head");
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, resp[split + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The hashed script the shell loads, e.g. `/assets/index-AbC123.js`.
fn script_of(html: &str) -> String {
    let at = html
        .find("src=\"/assets/")
        .expect("index.html loads a script")
        + 5;
    let end = html[at..].find('"').unwrap() + at;
    html[at..end].to_owned()
}

#[tokio::test]
async fn the_shell_is_served_with_a_strict_policy_and_revalidated() {
    let server = TestServer::start();
    let (status, headers, body) = parse(&raw_http(&server.addr, &get("/", "")).await);
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    let csp = header(&headers, "content-security-policy").expect("a CSP");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("<div id=\"app\"></div>"), "{html}");

    // The ETag makes a reload a 304 with no body.
    let etag = header(&headers, "etag").expect("an ETag").to_owned();
    let again = raw_http(
        &server.addr,
        &get("/", &format!("if-none-match: {etag}\r\n")),
    )
    .await;
    let (status, _, body) = parse(&again);
    assert!(status.contains(" 304 "), "{status}");
    assert!(body.is_empty());

    // A view's own URL (a deep link or a reload) gets the same shell.
    let (status, _, deep) = parse(&raw_http(&server.addr, &get("/jobs/abc", "")).await);
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(String::from_utf8(deep).unwrap(), html);
}

#[tokio::test]
async fn hashed_assets_are_immutable_and_missing_ones_are_404() {
    let server = TestServer::start();
    let (_, _, body) = parse(&raw_http(&server.addr, &get("/", "")).await);
    let script = script_of(&String::from_utf8(body).unwrap());
    let (status, headers, js) = parse(&raw_http(&server.addr, &get(&script, "")).await);
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        header(&headers, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert!(js.len() > 1000, "the bundle is served whole");

    // HEAD: the same headers, no body.
    let head = format!("HEAD {script} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    let (status, headers, body) = parse(&raw_http(&server.addr, head.as_bytes()).await);
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        header(&headers, "content-length"),
        Some(js.len().to_string().as_str())
    );
    assert!(body.is_empty());

    // A stale page asking for an asset that is gone must not get HTML as script.
    for path in ["/assets/index-gone.js", "/favicon.ico", "/assets/"] {
        let (status, headers, _) = parse(&raw_http(&server.addr, &get(path, "")).await);
        assert!(status.contains(" 404 "), "{path}: {status}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    // Paths cannot climb out of the embedded set.
    let (status, _, body) = parse(&raw_http(&server.addr, &get("/../Cargo.toml", "")).await);
    assert!(
        !String::from_utf8_lossy(&body).contains("[package]"),
        "{status}"
    );
}

/// A gRPC-Web unary call over HTTP/1.1 (empty message), as the console's transport sends it.
fn grpc_web(path: &str, key: &str) -> Vec<u8> {
    let body = [0u8, 0, 0, 0, 0];
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/grpc-web+proto\r\n\
         x-grpc-web: 1\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_api_still_answers_beside_the_pages_with_the_same_keys() {
    let server = TestServer::start();
    // Native gRPC (HTTP/2) through the generated clients.
    let mut a = server.clients(KEY_A).await;
    let session = a.create_session(&[("hello.txt", b"hi")]).await;
    // gRPC-Web over HTTP/1.1, as the page calls: authenticated, tenant-scoped.
    let ok = raw_http(
        &server.addr,
        &grpc_web("/agentd.v1.SessionService/ListSessions", KEY_A),
    )
    .await;
    assert!(
        contains(&ok, b"grpc-status:0"),
        "{}",
        String::from_utf8_lossy(&ok)
    );
    assert!(contains(&ok, session.session_id.as_bytes()));
    let other = raw_http(
        &server.addr,
        &grpc_web("/agentd.v1.SessionService/ListSessions", KEY_B),
    )
    .await;
    assert!(contains(&other, b"grpc-status:0"));
    assert!(!contains(&other, session.session_id.as_bytes()));
    let denied = raw_http(
        &server.addr,
        &grpc_web("/agentd.v1.SessionService/ListSessions", "not-a-key"),
    )
    .await;
    // A trailers-only answer carries the status as a header.
    assert!(
        contains(&denied, b"grpc-status:16") || contains(&denied, b"grpc-status: 16"),
        "UNAUTHENTICATED: {}",
        String::from_utf8_lossy(&denied)
    );
    // A GET never reaches a service, even at a service's path.
    let (status, headers, _) = parse(
        &raw_http(
            &server.addr,
            &get("/agentd.v1.SessionService/ListSessions", ""),
        )
        .await,
    );
    assert!(status.contains(" 404 "), "{status}");
    assert!(header(&headers, "grpc-status").is_none());
}

#[tokio::test]
async fn the_console_can_be_turned_off() {
    let server = TestServer::start_with(Options {
        args: vec!["--console=false".into()],
        ..Default::default()
    });
    let resp = raw_http(&server.addr, &get("/", "")).await;
    assert!(!contains(&resp, b"<div id=\"app\">"));
    assert!(!contains(&resp, b" 200 OK"));
    // gRPC itself is unaffected.
    let mut a = server.clients(KEY_A).await;
    a.create_session(&[]).await;
}

#[tokio::test]
async fn the_console_can_have_its_own_listener() {
    let port = free_port();
    let console = format!("127.0.0.1:{port}");
    let server = TestServer::start_with(Options {
        args: vec!["--console-listen".into(), console.clone()],
        ..Default::default()
    });
    let (status, _, body) = parse(&raw_http(&console, &get("/", "")).await);
    assert!(status.contains(" 200 "), "{status}");
    assert!(contains(&body, b"<div id=\"app\">"));
    // The page's calls are same-origin: the API answers on the console's port too ...
    let ok = raw_http(
        &console,
        &grpc_web("/agentd.v1.ServerInfoService/GetServerInfo", KEY_A),
    )
    .await;
    assert!(
        contains(&ok, b"grpc-status:0"),
        "{}",
        String::from_utf8_lossy(&ok)
    );
    // ... and the main listener no longer serves the pages.
    let main = raw_http(&server.addr, &get("/", "")).await;
    assert!(!contains(&main, b"<div id=\"app\">"));
}

fn piece(
    session: &str,
    id: &str,
    offset: u64,
    chunk: &[u8],
    last: bool,
) -> pb::UploadFileChunkRequest {
    pb::UploadFileChunkRequest {
        session_id: session.into(),
        upload_id: id.into(),
        header: None,
        offset,
        chunk: chunk.to_vec().into(),
        last,
    }
}

/// UploadFileChunk, the console's upload (gRPC-Web cannot stream a request): pieces append in
/// order, nothing is visible before the last one, a misplaced or replayed piece is refused
/// without harming the upload, and another tenant cannot touch it.
#[tokio::test]
async fn uploads_in_unary_pieces_commit_atomically() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let s = a.create_session(&[]).await.session_id;
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    let (p1, rest) = data.split_at(1 << 20);
    let (p2, p3) = rest.split_at(1 << 20);
    let mut first = piece(&s, "up-1", 0, p1, false);
    first.header = Some(pb::UploadFileHeader {
        path: "dir/big.bin".into(),
        size: Some(data.len() as u64),
        ..Default::default()
    });
    let r = a.files.upload_file_chunk(first.clone()).await.unwrap();
    assert_eq!(r.into_inner().received, p1.len() as u64);
    // Staged, not visible yet.
    assert_eq!(
        reason(&a.download(&s, "dir/big.bin").await.unwrap_err()),
        "FILE_NOT_FOUND"
    );
    // A replayed piece (a retry after a lost answer) is refused; the upload goes on.
    let st = a
        .files
        .upload_file_chunk(piece(&s, "up-1", 0, p1, false))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::OutOfRange);
    assert_eq!(reason(&st), "OFFSET_OUT_OF_RANGE");
    assert!(
        st.message().contains(&format!("offset {}", p1.len())),
        "{}",
        st.message()
    );
    // The same upload id under another tenant is another (absent) upload.
    let st = b
        .files
        .upload_file_chunk(piece(&s, "up-1", p1.len() as u64, p2, false))
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "UPLOAD_NOT_FOUND");
    // Another tenant cannot start an upload into this session either.
    let st = b.files.upload_file_chunk(first).await.unwrap_err();
    assert_eq!(reason(&st), "SESSION_NOT_FOUND");
    a.files
        .upload_file_chunk(piece(&s, "up-1", p1.len() as u64, p2, false))
        .await
        .unwrap();
    let done = a
        .files
        .upload_file_chunk(piece(&s, "up-1", (p1.len() + p2.len()) as u64, p3, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.received, data.len() as u64);
    let file = done.file.expect("the committed file");
    assert_eq!(
        (file.path.as_str(), file.size),
        ("dir/big.bin", data.len() as u64)
    );
    assert_eq!(a.download(&s, "dir/big.bin").await.unwrap(), data);
    // Committed uploads are gone; a chunk over 1 MiB is refused up front.
    let st = a
        .files
        .upload_file_chunk(piece(&s, "up-1", 0, b"x", true))
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "UPLOAD_NOT_FOUND");
    let mut huge = piece(&s, "up-2", 0, &vec![0u8; (1 << 20) + 1], true);
    huge.header = Some(pb::UploadFileHeader {
        path: "h".into(),
        ..Default::default()
    });
    let st = a.files.upload_file_chunk(huge).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
}

/// A size promised in the header and not kept fails the commit, leaving nothing behind.
#[tokio::test]
async fn a_piece_upload_that_breaks_its_header_leaves_nothing() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let s = a.create_session(&[]).await.session_id;
    let mut first = piece(&s, "short", 0, b"abc", true);
    first.header = Some(pb::UploadFileHeader {
        path: "short.txt".into(),
        size: Some(10),
        ..Default::default()
    });
    let st = a.files.upload_file_chunk(first).await.unwrap_err();
    assert_eq!(reason(&st), "SIZE_MISMATCH");
    assert_eq!(
        reason(&a.download(&s, "short.txt").await.unwrap_err()),
        "FILE_NOT_FOUND"
    );
    let listed = a
        .files
        .list_files(pb::ListFilesRequest {
            session_id: s,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.files.is_empty(),
        "no temp file left: {:?}",
        listed.files
    );
}

/// A request as a DNS-rebinding page sends it: the attacker's name in `Host`.
fn get_as(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").into_bytes()
}

fn grpc_web_as(host: &str, path: &str, key: &str) -> Vec<u8> {
    let req = String::from_utf8(grpc_web(path, key)).expect("ASCII");
    req.replacen("host: localhost", &format!("host: {host}"), 1)
        .into_bytes()
}

#[tokio::test]
async fn a_rebound_host_name_gets_neither_the_pages_nor_the_api() {
    let server = TestServer::start_with(Options {
        args: vec!["--console-hosts".into(), "agentd.tunnel".into()],
        ..Default::default()
    });
    let mut a = server.clients(KEY_A).await;
    let session = a.create_session(&[("secret.txt", b"tenant a")]).await;
    let port = server.addr.rsplit_once(':').map(|(_, p)| p).unwrap();

    // The attack: evil.example re-pointed at 127.0.0.1, same port, so the browser treats the
    // answers as evil.example's own. Neither the pages nor a gRPC-Web call (with a key the
    // attacker guessed or phished: the guard must not rely on the key) are answered.
    let evil = format!("evil.example:{port}");
    for path in ["/", "/assets/", "/jobs/x"] {
        let (status, _, body) = parse(&raw_http(&server.addr, &get_as(&evil, path)).await);
        assert!(status.contains(" 421 "), "{path}: {status}");
        assert!(!contains(&body, b"<div id=\"app\">"));
    }
    let call = grpc_web_as(&evil, "/agentd.v1.SessionService/ListSessions", KEY_A);
    let resp = raw_http(&server.addr, &call).await;
    let (status, headers, _) = parse(&resp);
    assert!(status.contains(" 421 "), "{status}");
    assert!(header(&headers, "grpc-status").is_none());
    assert!(!contains(&resp, session.session_id.as_bytes()));

    // The names that cannot be re-pointed, and the configured one, are served.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("agentd.tunnel:{port}"),
    ] {
        let (status, _, body) = parse(&raw_http(&server.addr, &get_as(&host, "/")).await);
        assert!(status.contains(" 200 "), "{host}: {status}");
        assert!(contains(&body, b"<div id=\"app\">"));
        let call = grpc_web_as(&host, "/agentd.v1.SessionService/ListSessions", KEY_A);
        let ok = raw_http(&server.addr, &call).await;
        assert!(contains(&ok, session.session_id.as_bytes()), "{host}");
    }
    // Native gRPC clients are not browsers: unaffected.
    a.create_session(&[]).await;
}
