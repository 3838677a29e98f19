//! The console's DNS-rebinding guard: which `Host` a browser's request may name.
//!
//! A page on `http://evil.example:PORT` whose name the attacker re-points at 127.0.0.1 becomes
//! same-origin with a loopback agentd: the browser then sends it our pages and lets its script call
//! the API. The browser still says the name it was told in `Host`, so on a loopback connection only
//! names that cannot be re-pointed are accepted: `localhost` and `*.localhost` (browsers resolve
//! those themselves), loopback IP literals, the listener's own IP, and the names the operator
//! configured (`--console-hosts`, e.g. an SSH tunnel's or a local proxy's name). With configured
//! names the guard holds on every listener, not only loopback ones.
//!
//! Only what a browser sends is checked: GET, HEAD and OPTIONS, gRPC-Web, and anything carrying
//! `Origin`. Native gRPC clients (HTTP/2, `application/grpc`, no `Origin`) are not browsers and
//! pass whatever `:authority` they use.

use http::{Method, Request, header};
use std::net::{IpAddr, SocketAddr};

/// The guard of one listener set: the names configured besides the loopback ones.
#[derive(Clone, Debug, Default)]
pub struct HostGuard {
    extra: std::sync::Arc<[String]>,
}

impl HostGuard {
    pub fn new(extra: &[String]) -> HostGuard {
        let extra: Vec<String> = extra.iter().map(|h| h.to_ascii_lowercase()).collect();
        HostGuard {
            extra: extra.into(),
        }
    }

    /// Whether `req`, which arrived on a connection to `local`, may be answered.
    pub fn allows<B>(&self, req: &Request<B>, local: Option<SocketAddr>) -> bool {
        let loopback = local.is_some_and(|a| a.ip().is_loopback());
        if !from_browser(req) || (!loopback && self.extra.is_empty()) {
            return true;
        }
        match host_of(req) {
            Some(name) => self.names(&name, local),
            None => false,
        }
    }

    fn names(&self, name: &str, local: Option<SocketAddr>) -> bool {
        if self.extra.iter().any(|h| h == name) {
            return true;
        }
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || local.is_some_and(|a| a.ip() == ip),
            Err(_) => false,
        }
    }
}

/// What only a browser (or someone posing as one) sends.
fn from_browser<B>(req: &Request<B>) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if req.headers().contains_key(header::ORIGIN) {
        return true;
    }
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc-web"))
}

/// The host name the request names, lower-cased, without its port: HTTP/2's `:authority` (in
/// the URI), else HTTP/1.1's `Host`.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str().to_owned(),
        None => req.headers().get(header::HOST)?.to_str().ok()?.to_owned(),
    };
    let authority = authority
        .rsplit_once('@')
        .map_or(&authority[..], |(_, h)| h);
    let name = match authority.strip_prefix('[') {
        // `[v6]` or `[v6]:port`: keep the brackets' content.
        Some(rest) => format!("[{}]", rest.split_once(']')?.0),
        None => authority.split(':').next()?.to_owned(),
    };
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, host: &str, content_type: Option<&str>) -> Request<()> {
        let mut b = Request::builder()
            .method(method)
            .uri("/")
            .header(header::HOST, host);
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(()).expect("request")
    }

    const LOOP: Option<SocketAddr> = Some(SocketAddr::new(
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        8080,
    ));

    #[test]
    fn loopback_names_pass_and_rebound_names_do_not() {
        let g = HostGuard::new(&[]);
        for ok in [
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:1",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:8080",
        ] {
            assert!(g.allows(&req(Method::GET, ok, None), LOOP), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "",
            "[::1",
        ] {
            assert!(!g.allows(&req(Method::GET, bad, None), LOOP), "{bad}");
            let web = req(Method::POST, bad, Some("application/grpc-web+proto"));
            assert!(!g.allows(&web, LOOP), "gRPC-Web {bad}");
        }
    }

    #[test]
    fn native_grpc_and_non_loopback_listeners_are_not_checked() {
        let g = HostGuard::new(&[]);
        let native = req(Method::POST, "evil.example", Some("application/grpc"));
        assert!(g.allows(&native, LOOP));
        let public = Some("10.0.0.5:80".parse().expect("addr"));
        assert!(g.allows(&req(Method::GET, "agentd.example", None), public));
    }

    #[test]
    fn configured_names_pass_and_then_hold_everywhere() {
        let g = HostGuard::new(&["Agentd.Internal".to_owned()]);
        let public = Some("10.0.0.5:80".parse().expect("addr"));
        assert!(g.allows(&req(Method::GET, "agentd.internal:443", None), public));
        assert!(g.allows(&req(Method::GET, "agentd.internal", None), LOOP));
        assert!(!g.allows(&req(Method::GET, "evil.example", None), public));
        let mut with_origin = req(Method::POST, "evil.example", Some("application/grpc"));
        with_origin.headers_mut().insert(
            header::ORIGIN,
            http::HeaderValue::from_static("http://evil.example"),
        );
        assert!(!g.allows(&with_origin, LOOP));
    }
}
