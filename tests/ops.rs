//! Operations, end to end against the real binary: Prometheus metrics around a job, TLS and
//! mutual TLS with certificates generated here, W3C `traceparent` reaching the agent, gRPC-Web
//! over HTTP/1.1, gzip, request ids, and JSON log lines carrying span fields.

mod common;

use agentd::pb;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// With a metrics token (from a file), `/metrics` answers 401 without it and the page with it.
#[tokio::test]
async fn a_metrics_token_is_required_when_configured() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-token-0123456789\n").unwrap();
    let _server = TestServer::start_with(Options {
        args: vec![
            "--metrics-listen".into(),
            metrics_addr.clone(),
            "--metrics-token-file".into(),
            token_file.to_string_lossy().into_owned(),
        ],
        ..Default::default()
    });
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            &metrics_addr
        )
        .is_ok())
        .await,
        "metrics listener never came up"
    );
    let get = |auth: &'static str| {
        let addr = metrics_addr.clone();
        async move {
            let req = format!("GET /metrics HTTP/1.1\r\nhost: x\r\n{auth}\r\n");
            String::from_utf8(raw_http(&addr, req.as_bytes()).await).unwrap()
        }
    };
    let refused = get("").await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(!refused.contains("agentd_"), "{refused}");
    let wrong = get("authorization: Bearer not-the-token-0123\r\n").await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let page = get("authorization: Bearer scrape-token-0123456789\r\n").await;
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("agentd_jobs_running"), "{page}");
}

#[tokio::test]
async fn metrics_scraped_before_and_after_a_job_show_it() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = TestServer::start_with(Options {
        args: vec!["--metrics-listen".into(), metrics_addr.clone()],
        ..Default::default()
    });
    let succeeded = r#"agentd_jobs_finished_total{state="SUCCEEDED"}"#;
    let submits = r#"agentd_rpc_handled_total{method="/agentd.v1.JobService/SubmitJob",code="OK"}"#;
    let before = scrape(&metrics_addr).await;
    assert!(
        before.contains("# TYPE agentd_store_write_seconds histogram"),
        "{before}"
    );
    assert_eq!(sample(&before, "agentd_store_up"), 1.0, "{before}");
    assert_eq!(sample(&before, succeeded), 0.0);

    let mut c = server.clients(KEY_A).await;
    let session = c.create_session(&[("a.txt", b"hello")]).await;
    let job = c
        .submit(&session.session_id, "write out.txt done ; lines 3")
        .await;
    let job = c.wait(&job.job_id).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    let _ = c.download(&session.session_id, "out.txt").await.unwrap();
    // A failing call is counted under its status code.
    let missing = c
        .jobs
        .get_job(pb::GetJobRequest {
            job_id: "job_does_not_exist".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let after = scrape(&metrics_addr).await;
    assert_eq!(sample(&after, succeeded), 1.0, "{after}");
    assert_eq!(sample(&after, submits), 1.0, "{after}");
    assert_eq!(sample(&after, "agentd_jobs_submitted_total"), 1.0);
    assert_eq!(
        sample(
            &after,
            r#"agentd_rpc_handled_total{method="/agentd.v1.JobService/GetJob",code="NOT_FOUND"}"#
        ),
        1.0,
        "{after}"
    );
    // The event stream ended with the job: counted once, with its latency observed.
    assert_eq!(
        sample(
            &after,
            r#"agentd_rpc_duration_seconds_count{method="/agentd.v1.JobService/StreamJobEvents",code="OK"}"#
        ),
        1.0,
        "{after}"
    );
    let written = sample(&after, "agentd_events_written_total");
    assert!(
        written >= job.last_seq as f64,
        "{written} < {}",
        job.last_seq
    );
    assert!(sample(&after, "agentd_events_streamed_total") >= job.last_seq as f64);
    assert!(sample(&after, "agentd_download_bytes_total") >= 4.0);
    assert!(sample(&after, "agentd_store_write_seconds_count") >= 1.0);
    assert_eq!(
        sample(
            &after,
            r#"agentd_job_duration_seconds_count{state="SUCCEEDED"}"#
        ),
        1.0
    );
    assert_eq!(sample(&after, "agentd_jobs_running"), 0.0);
}

#[tokio::test]
async fn traceparent_reaches_the_agent_environment() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let session = c.create_session(&[]).await;
    let mut req = tonic::Request::new(pb::SubmitJobRequest {
        session_id: session.session_id.clone(),
        prompt: "echo-env TRACEPARENT".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let job = c.submit_request(req).await;
    let events = c.events(&job.job_id, 0).await;
    let seen = texts(&events);
    assert!(
        seen.contains(&format!("TRACEPARENT={TRACEPARENT}")),
        "{seen:?}"
    );

    // Without (or with a malformed) traceparent the agent gets none.
    let mut req = tonic::Request::new(pb::SubmitJobRequest {
        session_id: session.session_id.clone(),
        prompt: "echo-env TRACEPARENT".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
    let job = c.submit_request(req).await;
    let seen = texts(&c.events(&job.job_id, 0).await);
    assert!(
        seen.contains(&"TRACEPARENT is not set".to_owned()),
        "{seen:?}"
    );
}

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    /// A client identity signed by a CA the server does not trust.
    rogue_cert: String,
    rogue_key: String,
}

fn ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "agentd test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(params, key))
}

fn leaf(
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let (ca, issuer) = ca();
    let (server_cert, server_key) = leaf(&["localhost", "127.0.0.1"], ServerAuth, &issuer);
    let (client_cert, client_key) = leaf(&["client-a"], ClientAuth, &issuer);
    let (_, rogue_issuer) = self::ca();
    let (rogue_cert, rogue_key) = leaf(&["rogue"], ClientAuth, &rogue_issuer);
    Pki {
        ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
        rogue_cert,
        rogue_key,
    }
}

fn write_pki(dir: &std::path::Path, pki: &Pki) -> (String, String, String) {
    let p = |n: &str, content: &str| {
        let path = dir.join(n);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    };
    (
        p("server.pem", &pki.server_cert),
        p("server.key", &pki.server_key),
        p("ca.pem", &pki.ca),
    )
}

async fn tls_channel(
    addr: &str,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn server_info(ch: Channel) -> Result<pb::GetServerInfoResponse, tonic::Status> {
    let mut info = pb::server_info_service_client::ServerInfoServiceClient::new(ch);
    let mut req = tonic::Request::new(pb::GetServerInfoRequest::default());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {KEY_A}").parse().unwrap());
    req.set_timeout(Duration::from_secs(10));
    info.get_server_info(req).await.map(|r| r.into_inner())
}

/// Connects and calls; a refused handshake may surface at either step.
async fn tls_call(addr: &str, ca: &str, identity: Option<(&str, &str)>) -> Result<(), String> {
    let ch = tls_channel(addr, ca, identity)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    server_info(ch)
        .await
        .map(|_| ())
        .map_err(|s| format!("call: {s:?}"))
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_file) = write_pki(dir.path(), &pki);

    // Server-side TLS: a client trusting the CA gets through; plaintext h2c does not.
    let server = TestServer::start_with(Options {
        args: vec![
            "--tls-cert".into(),
            cert.clone(),
            "--tls-key".into(),
            key.clone(),
        ],
        ..Default::default()
    });
    tls_call(&server.addr, &pki.ca, None).await.unwrap();
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            server_info(ch).await.is_err(),
            "h2c must not work on a TLS port"
        );
    }
    // A client that does not trust the server's CA refuses it.
    let (other_ca, _) = ca();
    assert!(tls_call(&server.addr, &other_ca, None).await.is_err());
    drop(server);

    // Mutual TLS: only clients with a certificate from the client CA get through.
    let server = TestServer::start_with(Options {
        args: vec![
            "--tls-cert".into(),
            cert,
            "--tls-key".into(),
            key,
            "--tls-client-ca".into(),
            ca_file,
        ],
        ..Default::default()
    });
    tls_call(
        &server.addr,
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .await
    .unwrap();
    let err = tls_call(&server.addr, &pki.ca, None)
        .await
        .expect_err("a client without a certificate must be refused under mTLS");
    assert!(!err.is_empty());
    let err = tls_call(
        &server.addr,
        &pki.ca,
        Some((&pki.rogue_cert, &pki.rogue_key)),
    )
    .await
    .expect_err("a certificate from another CA must be refused");
    assert!(!err.is_empty());
}

/// A gRPC-Web unary call over HTTP/1.1: 5-byte frame header + message; the answer carries data
/// frames and a trailer frame (flag 0x80) with the status.
fn grpc_web_request(path: &str, message: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/grpc-web+proto\r\n\
         x-grpc-web: 1\r\ncontent-length: {}\r\nconnection: close\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

#[tokio::test]
async fn grpc_web_requests_succeed() {
    let server = TestServer::start_with(Options {
        args: vec![
            "--grpc-web".into(),
            "--grpc-web-allow-origins".into(),
            "https://ui.example".into(),
        ],
        ..Default::default()
    });
    // Health (no auth): SERVING is field 1 = 1.
    let resp = raw_http(
        &server.addr,
        &grpc_web_request("/grpc.health.v1.Health/Check", b"", ""),
    )
    .await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/grpc-web+proto")
    );
    assert!(contains(&resp, &[0, 0, 0, 0, 2, 0x08, 0x01]), "{text}");
    assert!(contains(&resp, b"grpc-status:0"), "{text}");

    // An authenticated agentd call, with its request id echoed back.
    let auth = format!("authorization: Bearer {KEY_A}\r\nx-request-id: web-req-1\r\n");
    let resp = raw_http(
        &server.addr,
        &grpc_web_request("/agentd.v1.ServerInfoService/GetServerInfo", b"", &auth),
    )
    .await;
    let text = String::from_utf8_lossy(&resp);
    assert!(contains(&resp, b"grpc-status:0"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-request-id: web-req-1"),
        "{text}"
    );
    // Without credentials the status is UNAUTHENTICATED (16).
    let resp = raw_http(
        &server.addr,
        &grpc_web_request("/agentd.v1.ServerInfoService/GetServerInfo", b"", ""),
    )
    .await;
    assert!(
        contains(&resp, b"grpc-status: 16") || contains(&resp, b"grpc-status:16"),
        "{}",
        String::from_utf8_lossy(&resp)
    );

    // A browser's CORS preflight from an allowed origin.
    let preflight = "OPTIONS /agentd.v1.JobService/StreamJobEvents HTTP/1.1\r\nhost: localhost\r\n\
                     origin: https://ui.example\r\naccess-control-request-method: POST\r\n\
                     access-control-request-headers: authorization,content-type,x-grpc-web\r\n\
                     connection: close\r\n\r\n";
    let resp = raw_http(&server.addr, preflight.as_bytes()).await;
    let text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("access-control-allow-origin: https://ui.example"),
        "{text}"
    );
}

#[tokio::test]
async fn grpc_web_is_off_by_default() {
    // The web console (on by default on loopback) needs gRPC-Web; without it, it stays off.
    let server = TestServer::start_with(Options {
        args: vec!["--console=false".into()],
        ..Default::default()
    });
    let resp = raw_http(
        &server.addr,
        &grpc_web_request("/grpc.health.v1.Health/Check", b"", ""),
    )
    .await;
    assert!(!contains(&resp, b"grpc-status:0"));
}

#[tokio::test]
async fn gzip_and_request_ids() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let mut jobs = c
        .jobs
        .clone()
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let session = c.create_session(&[]).await;
    // A gzip request body is accepted (an unsupported encoding would be UNIMPLEMENTED).
    let mut req = tonic::Request::new(pb::SubmitJobRequest {
        session_id: session.session_id.clone(),
        prompt: "x".repeat(10_000),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-request-id", "ops-test-42".parse().unwrap());
    let resp = jobs.submit_job(req).await.unwrap();
    assert_eq!(
        resp.metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap(),
        "ops-test-42"
    );
    let job_id = resp.into_inner().job.unwrap().job_id;
    // Without one, the server makes one up; errors carry it too.
    let err = c
        .jobs
        .get_job(pb::GetJobRequest {
            job_id: "job_nope".into(),
        })
        .await
        .unwrap_err();
    let rid = err
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(rid.len(), 32, "{rid}");
    // Responses stay uncompressed unless the server is told to gzip them.
    let resp = jobs
        .get_job(pb::GetJobRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(resp.metadata().get("grpc-encoding"), None);
}

#[tokio::test]
async fn send_gzip_compresses_responses_for_clients_that_accept_it() {
    let server = TestServer::start_with(Options {
        args: vec!["--send-gzip".into()],
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let session = c.create_session(&[]).await;
    let job = c.submit(&session.session_id, "x").await;
    let get = |job_id: String| pb::GetJobRequest { job_id };
    let mut accepting = c.jobs.clone().accept_compressed(CompressionEncoding::Gzip);
    let resp = accepting.get_job(get(job.job_id.clone())).await.unwrap();
    assert_eq!(
        resp.metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    assert_eq!(resp.into_inner().job.unwrap().job_id, job.job_id);
    // A client that does not announce gzip still gets plain responses.
    let resp = c.jobs.get_job(get(job.job_id.clone())).await.unwrap();
    assert_eq!(resp.metadata().get("grpc-encoding"), None);
}

#[tokio::test]
async fn json_logs_carry_request_ids_and_job_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let log_path = tmp.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env("AGENTD_API_KEYS", format!("a:{KEY_A}"))
        .env("AGENTD_CLAUDE_BIN", fake_claude())
        .env("AGENTD_LOG", "info,agentd::telemetry=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().expect("agentd exited").unwrap();
        if let Some(a) = l.strip_prefix("agentd listening on ") {
            break a.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = Clients::new(ch, KEY_A);
    let session = c.create_session(&[]).await;
    let mut req = tonic::Request::new(pb::SubmitJobRequest {
        session_id: session.session_id.clone(),
        prompt: "hello".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let job = c.submit_request(req).await;
    c.wait(&job.job_id).await;
    let mut req = tonic::Request::new(pb::GetJobRequest {
        job_id: "job_missing".into(),
    });
    req.metadata_mut()
        .insert("x-request-id", "json-req-7".parse().unwrap());
    assert!(c.jobs.get_job(req).await.is_err());
    // Give the writer a moment, then stop the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();

    let log = std::fs::read_to_string(&log_path).unwrap();
    // The effective configuration is printed as plain text before logging starts.
    let entries: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started = entries
        .iter()
        .find(|e| e["fields"]["message"] == "job started")
        .unwrap_or_else(|| panic!("no job started line in {log}"));
    assert_eq!(started["span"]["name"], "job", "{started}");
    assert_eq!(started["span"]["job"], job.job_id.as_str(), "{started}");
    assert_eq!(
        started["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{started}"
    );
    let failed = entries
        .iter()
        .find(|e| e["fields"]["message"] == "rpc failed")
        .unwrap_or_else(|| panic!("no rpc failed line in {log}"));
    assert_eq!(failed["span"]["request_id"], "json-req-7", "{failed}");
    assert_eq!(failed["fields"]["code"], "NOT_FOUND", "{failed}");
}

/// With `--features otlp` and an endpoint configured, spans are exported over OTLP/gRPC: a
/// listener standing in for the collector sees the HTTP/2 connection preface.
#[cfg(feature = "otlp")]
#[tokio::test]
async fn otlp_export_connects_to_the_collector() {
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let server = TestServer::start_with(Options {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            ("AGENTD_LOG".into(), "info".into()),
        ],
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let session = c.create_session(&[]).await;
    let job = c.submit(&session.session_id, "hello").await;
    c.wait(&job.job_id).await;
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(15), collector.accept())
        .await
        .expect("the exporter connects within 15s")
        .unwrap();
    let mut preface = [0u8; 14];
    conn.read_exact(&mut preface).await.unwrap();
    assert_eq!(&preface, b"PRI * HTTP/2.0");
}
