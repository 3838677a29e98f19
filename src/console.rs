//! The web console's HTTP side: the single-page app built from `console/` (its `dist/` is
//! committed and embedded here, so neither a build nor a release needs Node), served for the GET
//! and HEAD requests of the gRPC listener, as a tower layer in front of the gRPC services.
//!
//! gRPC and gRPC-Web calls are always POST, so a GET or HEAD never reaches them: every such
//! request is answered here, everything else passes through untouched. The page talks to the
//! same listener over gRPC-Web with the same API keys and tenancy as any client; nothing here
//! reads a key or a tenant.
//!
//! Caching: Vite names every asset under `assets/` after its content hash, so those are cached
//! for a year as immutable; `index.html` (the one unhashed name, which points at them) is
//! revalidated on every load with its ETag. A strict Content-Security-Policy allows only this
//! origin's scripts, styles and calls.
//!
//! On a loopback listener a browser's requests must name a loopback host (`host`: the
//! DNS-rebinding guard), or they are refused before reaching a page or a service.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

mod host;
pub use host::HostGuard;

#[derive(rust_embed::Embed)]
#[folder = "console/dist/"]
struct Assets;

/// Scripts and styles come from this origin only (no inline code, no eval); calls go to this
/// origin only; the page cannot be framed (clickjacking) nor post forms anywhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; font-src 'self'; manifest-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// Wraps the gRPC services: GET/HEAD are the console's, the rest goes to `inner`. Always in the
/// stack (off, it only passes calls through), so the stack has one type with or without it.
#[derive(Clone, Debug)]
pub struct ConsoleLayer {
    on: bool,
    /// Serve the pages only on connections to this bound local address (the `--console-listen`
    /// listener); unset: on every connection.
    only_on: Option<SocketAddr>,
    guard: HostGuard,
}

impl ConsoleLayer {
    pub fn new(on: bool, only_on: Option<SocketAddr>) -> ConsoleLayer {
        ConsoleLayer {
            on,
            only_on,
            guard: HostGuard::default(),
        }
    }

    /// Host names a browser may use besides the loopback ones (`--console-hosts`).
    pub fn with_hosts(self, hosts: &[String]) -> ConsoleLayer {
        ConsoleLayer {
            guard: HostGuard::new(hosts),
            ..self
        }
    }
}

impl<S> tower::Layer<S> for ConsoleLayer {
    type Service = ConsoleService<S>;
    fn layer(&self, inner: S) -> ConsoleService<S> {
        ConsoleService {
            inner,
            on: self.on,
            only_on: self.only_on,
            guard: self.guard.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConsoleService<S> {
    inner: S,
    on: bool,
    only_on: Option<SocketAddr>,
    guard: HostGuard,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ReqBody> tower::Service<Request<ReqBody>> for ConsoleService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let local = local_addr(&req);
        if self.on && !self.guard.allows(&req, local) {
            let resp = plain(StatusCode::MISDIRECTED_REQUEST, "host not allowed");
            return Box::pin(async move { Ok(resp) });
        }
        let page = self.on && matches!(*req.method(), Method::GET | Method::HEAD);
        if page && self.only_on.is_none_or(|want| local == Some(want)) {
            let resp = respond(&req);
            return Box::pin(async move { Ok(resp) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(tonic::body::Body::new))
        })
    }
}

/// The bound local address the request's connection came in on.
fn local_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(|c| c.local_addr())
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|c| c.get_ref().local_addr())
        })
}

/// The answer to a GET or HEAD: an asset, the app shell for the app's own routes, or 404.
fn respond<B>(req: &Request<B>) -> Response<tonic::body::Body> {
    let path = req.uri().path().trim_start_matches('/');
    let (name, file) = match Assets::get(path) {
        Some(f) if !path.is_empty() => (path, f),
        // Missing hashed assets are real 404s (a stale page must not get HTML as script); any
        // other path is one of the app's own views, which the shell renders from the URL.
        _ if path.starts_with("assets/") || path.contains('.') => {
            return plain(StatusCode::NOT_FOUND, "not found");
        }
        _ => match Assets::get("index.html") {
            Some(f) => ("index.html", f),
            None => return plain(StatusCode::NOT_FOUND, "the console was built without pages"),
        },
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let cache = if name.starts_with("assets/") {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, content_type(name))
        .header(header::CACHE_CONTROL, cache)
        .header(header::ETAG, etag);
    resp = security_headers(resp);
    let body = if fresh || req.method() == Method::HEAD {
        resp = resp.status(if fresh {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::OK
        });
        if !fresh {
            resp = resp.header(header::CONTENT_LENGTH, file.data.len());
        }
        Bytes::new()
    } else {
        Bytes::from(file.data.into_owned())
    };
    resp.body(tonic::body::Body::new(Full::new(body)))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "bad response"))
}

fn security_headers(b: http::response::Builder) -> http::response::Builder {
    b.header(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    )
    .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
    .header(header::REFERRER_POLICY, "no-referrer")
    .header(header::X_FRAME_OPTIONS, "DENY")
    .header("cross-origin-opener-policy", "same-origin")
}

fn plain(status: StatusCode, msg: &'static str) -> Response<tonic::body::Body> {
    let mut resp = Response::new(tonic::body::Body::new(Full::new(Bytes::from_static(
        msg.as_bytes(),
    ))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The few types Vite emits; anything else is served as opaque bytes (and `nosniff` keeps the
/// browser from guessing).
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_and_its_assets_are_embedded() {
        let index = Assets::get("index.html").expect("console/dist/index.html is committed");
        let html = String::from_utf8_lossy(&index.data);
        for asset in Assets::iter().filter(|n| n.starts_with("assets/") && n.ends_with(".js")) {
            assert!(html.contains(asset.as_ref()), "index.html loads {asset}");
        }
        assert!(
            !html.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
    }

    #[test]
    fn types_follow_the_extension() {
        assert_eq!(
            content_type("assets/a-1.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
