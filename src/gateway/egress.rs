//! The egress proxy for everything else an agent runs (`npm install`, `pip`, `git clone`): HTTP
//! CONNECT on the gateway's own listeners, authorised by the job token as the proxy password
//! (`HTTPS_PROXY=http://agentd:<token>@…`), tunnelling only to hosts in the profile's
//! `[agents.<name>.sandbox] allow_hosts`. Every refused attempt becomes an `egress_denied` event
//! of the job. Plain-HTTP proxying is refused (with the same event for a host not allowed): what
//! the tools fetch goes over HTTPS.

use super::{Gateway, Grant};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

fn answer(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
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
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
        return answer(
            StatusCode::NOT_IMPLEMENTED,
            "agentd egress proxy: only CONNECT (HTTPS) is proxied",
        );
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
