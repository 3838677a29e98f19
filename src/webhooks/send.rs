//! One webhook POST: to the address the SSRF guard pinned (TLS to the URL's host name for
//! https), with the signature headers, under one overall timeout; redirects are never followed
//! (a 3xx is a failed attempt) and at most `MAX_RESPONSE_BYTES` of the answer are read.

use super::ssrf::Guard;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How much of a receiver's answer is read (and thrown away) before the connection is dropped.
pub const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// What came of one POST.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// The HTTP status; 0 when there was none.
    pub status: u16,
    pub latency: Duration,
    /// Empty for a 2xx.
    pub error: String,
}

/// A message ready to send.
pub struct Post<'a> {
    pub url: &'a str,
    pub msg_id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: Bytes,
}

/// Sends `post` and reports the outcome; never fails otherwise.
pub async fn post(guard: &Guard, p: Post<'_>, timeout: Duration) -> Sent {
    let start = Instant::now();
    let outcome = tokio::time::timeout(timeout, exchange(guard, &p)).await;
    let latency = start.elapsed();
    match outcome {
        Err(_) => Sent {
            status: 0,
            latency,
            error: format!("no answer within {}s", timeout.as_secs_f32()),
        },
        Ok(Err(error)) => Sent {
            status: 0,
            latency,
            error,
        },
        Ok(Ok(status)) => Sent {
            status,
            latency,
            error: match status {
                200..=299 => String::new(),
                300..=399 => format!("HTTP {status}: redirects are not followed"),
                _ => format!("HTTP {status}"),
            },
        },
    }
}

async fn exchange(guard: &Guard, p: &Post<'_>) -> Result<u16, String> {
    let uri: http::Uri = p.url.parse().map_err(|_| "bad URL".to_owned())?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = guard.resolve(&host, port).await.map_err(|r| r.0)?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let req = Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "agentd-webhooks/1")
        .header("webhook-id", p.msg_id)
        .header("webhook-timestamp", p.timestamp.to_string())
        .header("webhook-signature", p.signature)
        .body(Full::new(p.body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    if https {
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(bare)
            .map_err(|e| format!("bad host name {host:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(crate::gateway::upstream::tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        roundtrip(TokioIo::new(tls), req).await
    } else {
        roundtrip(TokioIo::new(tcp), req).await
    }
}

async fn roundtrip<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<u16, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    // Drain a bounded part of the body so a keep-alive peer sees the exchange complete; more is
    // not read (the connection is dropped with it).
    let _ = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await;
    conn.abort();
    Ok(status)
}
