//! The egress proxy for everything else an agent runs (`npm install`, `pip`, `git clone`): HTTP
//! CONNECT on the gateway's own listeners, authorised by the job token as the proxy password
//! (`HTTPS_PROXY=http://agentd:<token>@…`), tunnelling only to hosts in the profile's
//! `[agents.<name>.sandbox] allow_hosts`. Every refused attempt becomes an `egress_denied` event
//! of the job. Plain-HTTP requests in absolute form (`GET http://host/path`, what `HTTP_PROXY`
//! clients send) are forwarded to allowed hosts the same way, their answer streamed back.

use super::{Gateway, Grant};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the proxy answers: its own short text, or an origin's streamed body.
pub type ProxyBody = Either<Full<Bytes>, Incoming>;

/// Whether a request is for the proxy rather than the model routes.
pub fn is_proxy_request<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT || req.uri().scheme().is_some()
}

/// Whether `host` is one of `allowed` (`host`, or `*.domain` for its subdomains).
pub fn allowed(allowed: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|a| match a.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => *a == host,
    })
}

/// The job token from `Proxy-Authorization: Basic base64(user:token)`.
fn token(req: &Request<Incoming>) -> Option<String> {
    let v = req
        .headers()
        .get(header::PROXY_AUTHORIZATION)?
        .to_str()
        .ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.split_once(':').map(|(_, t)| t.to_owned())
}

fn answer(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(format!("{text}\n")))));
    *r.status_mut() = status;
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"agentd\""),
        );
    }
    r
}

/// `(host, port)` a proxy request is for.
fn target(req: &Request<Incoming>) -> Option<(String, u16)> {
    let uri = req.uri();
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    Some((host.to_owned(), port))
}

/// Answers one proxy request; a granted CONNECT goes on as a tunnel once the answer is sent.
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<ProxyBody> {
    let Some(grant) = token(&req).and_then(|t| gw.grant(&t)) else {
        return answer(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "agentd egress proxy: a running job's token is required",
        );
    };
    let Some((host, port)) = target(&req) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "agentd egress proxy: no target host",
        );
    };
    if !allowed(&grant.allow_hosts, &host) {
        deny(&grant, host.clone(), port);
        return answer(
            StatusCode::FORBIDDEN,
            &format!("agentd egress proxy: {host}:{port} is not in this agent's allow_hosts"),
        );
    }
    if req.method() != Method::CONNECT {
        return forward(req, gw.timeout).await;
    }
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        _ => {
            return answer(
                StatusCode::BAD_GATEWAY,
                "agentd egress proxy: cannot connect",
            );
        }
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(up) = upgrade.await {
            let mut up = TokioIo::new(up);
            let _ = tokio::io::copy_bidirectional(&mut up, &mut upstream).await;
        }
    });
    answer(StatusCode::OK, "")
}

/// Headers that concern this hop only (RFC 9110 §7.6.1), never passed on.
pub(super) fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Forwards a plain-HTTP request in absolute form to its (allowed) origin and streams the answer
/// back. The job token (`Proxy-Authorization`) stays here.
async fn forward(req: Request<Incoming>, timeout: Duration) -> Response<ProxyBody> {
    let refuse = |status, text| answer(status, &format!("agentd egress proxy: {text}"));
    if req.uri().scheme_str() != Some("http") {
        // `https://` in absolute form would have the proxy speak TLS for the client: CONNECT is
        // the way to an HTTPS origin.
        return refuse(StatusCode::BAD_REQUEST, "use CONNECT for https");
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, super::proxy::MAX_REQUEST_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
    else {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    };
    let mut out = Request::builder()
        .method(parts.method)
        .uri(parts.uri.clone());
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            out = out.header(name, value);
        }
    }
    if let Some(authority) = parts.uri.authority() {
        out = out.header(header::HOST, authority.as_str());
    }
    let Ok(out) = out
        .header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(body))
    else {
        return refuse(StatusCode::BAD_REQUEST, "bad request");
    };
    let resp = match tokio::time::timeout(timeout, super::upstream::send(out)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "egress proxy: origin unreachable");
            return refuse(StatusCode::BAD_GATEWAY, "cannot connect");
        }
        Err(_) => return refuse(StatusCode::GATEWAY_TIMEOUT, "the origin did not answer"),
    };
    let (parts, body) = resp.into_parts();
    let mut back = Response::builder().status(parts.status);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) || name == header::CONTENT_LENGTH {
            back = back.header(name, value);
        }
    }
    back.body(Either::Right(body))
        .unwrap_or_else(|_| refuse(StatusCode::BAD_GATEWAY, "bad origin headers"))
}

fn deny(grant: &Grant, host: String, port: u16) {
    tracing::info!(job = %grant.job, %host, port, "egress denied");
    grant.hooks.egress_denied(host, port);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_hosts_and_subdomains_only() {
        let list = vec!["registry.npmjs.org".to_owned(), "*.github.com".to_owned()];
        assert!(allowed(&list, "registry.npmjs.org"));
        assert!(allowed(&list, "REGISTRY.npmjs.org."));
        assert!(allowed(&list, "codeload.github.com"));
        assert!(!allowed(&list, "github.com"));
        assert!(!allowed(&list, "evilgithub.com"));
        assert!(!allowed(&list, "registry.npmjs.org.evil.com"));
        assert!(!allowed(&[], "anything"));
    }
}
