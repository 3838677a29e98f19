//! One HTTP/1.1 exchange with an upstream: connect (TCP, then TLS for https with the system's
//! root certificates), send the request, hand back the response whose body streams on.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an upstream did not answer; the text is for logs (it never holds the key).
pub type UpstreamError = String;

/// Sends `req` (absolute URI) and waits for the response headers.
pub async fn send(mut req: Request<Full<Bytes>>) -> Result<Response<Incoming>, UpstreamError> {
    let uri = req.uri().clone();
    // On the wire an origin server gets the origin form (`/path?query`); the absolute form is
    // for proxies.
    *req.uri_mut() = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| "bad upstream path")?;
    let host = uri.host().ok_or("upstream URL has no host")?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| format!("connecting to {host}:{port} timed out"))?
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if https {
        let name = pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("bad upstream host name {host:?}: {e}"))?;
        let tls = TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        exchange(TokioIo::new(tls), req).await
    } else {
        exchange(TokioIo::new(tcp), req).await
    }
}

async fn exchange<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, UpstreamError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // Drives the connection until the response body is read (or dropped).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("upstream request: {e}"))
}

/// The client TLS settings: ring, and the roots of `SSL_CERT_FILE` or the system bundle.
pub(crate) fn tls_config() -> Result<Arc<ClientConfig>, UpstreamError> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            use pki_types::pem::PemObject;
            let path = std::env::var("SSL_CERT_FILE")
                .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".to_owned());
            let mut roots = RootCertStore::empty();
            let certs = pki_types::CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("cannot read root certificates {path}: {e}"))?;
            for cert in certs.flatten() {
                let _ = roots.add(cert);
            }
            let config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}
