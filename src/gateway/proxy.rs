//! The gateway's HTTP side: routes `/gw/<profile>/<api path>`, checks the job token, refuses
//! calls over budget, forwards to the upstream with the real key, and streams the answer back
//! frame by frame while [`Metered`] reads its usage. The gateway's own refusals are shaped like
//! the provider's errors, so each CLI reports them as it would a provider's.

use super::meter::Meter;
use super::{Api, Gateway, Grant, upstream};
use crate::domain::{ModelCall, Timestamp};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

/// Largest request body forwarded (a long conversation with images stays well below it).
pub const MAX_REQUEST_BYTES: usize = 32 << 20;

type Out = Either<Full<Bytes>, Either<Metered, Incoming>>;

/// Accepts TCP connections until `stop`; each connection is served on its own task.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener, stop: CancellationToken) {
    accept_loop(gw, stop, || async {
        let (s, _) = listener.accept().await?;
        // Each SSE event is written whole: send it at once.
        let _ = s.set_nodelay(true);
        Ok(TokioIo::new(s))
    })
    .await
}

/// The same on agentd's unix socket, which jobs with `network = "gateway"` reach through their
/// namespace's bridge.
pub async fn serve_unix(gw: Arc<Gateway>, listener: UnixListener, stop: CancellationToken) {
    accept_loop(gw, stop, || async {
        Ok(TokioIo::new(listener.accept().await?.0))
    })
    .await
}

async fn accept_loop<IO, F, Fut>(gw: Arc<Gateway>, stop: CancellationToken, mut accept: F)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<IO>>,
{
    loop {
        let io = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = accept() => match accepted {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(gw.clone(), io, stop.clone()));
    }
}

async fn connection<IO>(gw: Arc<Gateway>, io: IO, stop: CancellationToken)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let gw = gw.clone();
        async move { Ok::<_, Infallible>(handle(gw, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = stop.cancelled() => {}
    }
}

/// `/gw/<profile>/<rest>` → (profile, `/<rest>`).
fn route(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/gw/")?;
    let slash = rest.find('/')?;
    Some((&rest[..slash], &rest[slash..]))
}

/// The job token, wherever the CLI puts its key: `x-api-key` (Anthropic), `Authorization: Bearer`
/// (OpenAI), `x-goog-api-key` or `?key=` (Gemini).
fn token_of(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers();
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    header("x-api-key")
        .or_else(|| {
            header("authorization")
                .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_owned()))
        })
        .or_else(|| header("x-goog-api-key"))
        .or_else(|| {
            req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("key=").map(str::to_owned))
            })
        })
}

async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<Out> {
    if super::egress::is_proxy_request(&req) {
        return super::egress::handle(gw, req).await.map(|b| match b {
            Either::Left(text) => Either::Left(text),
            Either::Right(origin) => Either::Right(Either::Right(origin)),
        });
    }
    let Some((profile, rest)) = route(req.uri().path()).map(|(p, r)| (p.to_owned(), r.to_owned()))
    else {
        return refuse(
            Api::Openai,
            StatusCode::NOT_FOUND,
            "not_found",
            "no such gateway route",
        );
    };
    let Some(up) = gw.config.upstreams.get(&profile).cloned() else {
        return refuse(
            Api::Openai,
            StatusCode::NOT_FOUND,
            "not_found",
            "no such gateway profile",
        );
    };
    let api = up.api;
    let grant = match token_of(&req).and_then(|t| gw.grant(&t)) {
        Some(g) if g.profile == profile => g,
        // Forged, expired (its job ended) or another profile's: all look the same.
        _ => {
            return refuse(
                api,
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid or expired agentd job token",
            );
        }
    };
    if let Err(message) = gw.admit(&grant).await {
        grant.hooks.budget_exceeded(message.clone());
        return refuse(
            api,
            StatusCode::TOO_MANY_REQUESTS,
            "budget_exceeded",
            &message,
        );
    }
    let (out, asked) = match prepare(&up, &rest, req).await {
        Ok(x) => x,
        Err(refusal) => return *refusal,
    };
    let start = Instant::now();
    let mut call = Call {
        gw: gw.clone(),
        grant,
        start,
        model: asked,
        api,
        status: 0,
    };
    match tokio::time::timeout(gw.timeout, upstream::send(out)).await {
        Ok(Ok(resp)) => {
            call.status = u32::from(resp.status().as_u16());
            respond(resp, call, gw.timeout)
        }
        Ok(Err(e)) => {
            tracing::warn!(profile = %profile, error = %e, "upstream unreachable");
            call.end_detached(Meter::default());
            refuse(
                api,
                StatusCode::BAD_GATEWAY,
                "api_error",
                "the model upstream is unreachable",
            )
        }
        Err(_) => {
            call.end_detached(Meter::default());
            refuse(
                api,
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                "the model upstream did not answer in time",
            )
        }
    }
}

/// Reads the agent's request (bounded) into the upstream's, and the model it asks for.
async fn prepare(
    up: &super::Upstream,
    rest: &str,
    req: Request<Incoming>,
) -> Result<(Request<Full<Bytes>>, String), Box<Response<Out>>> {
    let api = up.api;
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(Box::new(refuse(
                api,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "request body over the gateway's limit or cut off",
            )));
        }
    };
    let asked = model_asked(&body, rest);
    outgoing(
        up,
        rest,
        parts.uri.query(),
        parts.method,
        &parts.headers,
        body,
    )
    .map(|out| (out, asked))
    .map_err(|m| {
        Box::new(refuse(
            api,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &m,
        ))
    })
}

/// Headers a proxy must not forward (hop-by-hop), and every header that could carry a key.
fn dropped(name: &HeaderName) -> bool {
    super::egress::hop_by_hop(name)
        || matches!(
            name.as_str(),
            "authorization"
                | "x-api-key"
                | "x-goog-api-key"
                // Usage is read from the answer: ask for it uncompressed.
                | "accept-encoding"
        )
}

/// The request to the upstream: same method, path, query (minus any `key=`), headers and body,
/// with the real key added the way the provider expects it.
fn outgoing(
    up: &super::Upstream,
    rest: &str,
    query: Option<&str>,
    method: hyper::Method,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let query: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("key="))
        .collect();
    let mut uri = format!("{}{rest}", up.url);
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&query.join("&"));
    }
    let mut b = Request::builder().method(method).uri(&uri);
    for (name, value) in headers {
        if !dropped(name) {
            b = b.header(name, value);
        }
    }
    let parsed: hyper::Uri = uri.parse().map_err(|_| "bad upstream path".to_owned())?;
    if let Some(authority) = parsed.authority() {
        b = b.header(header::HOST, authority.as_str());
    }
    let key = HeaderValue::from_str(up.key.expose()).map_err(|_| "bad key".to_owned())?;
    b = match up.api {
        Api::Anthropic => b.header("x-api-key", key),
        Api::Gemini => b.header("x-goog-api-key", key),
        Api::Openai => {
            let bearer = HeaderValue::from_str(&format!("Bearer {}", up.key.expose()))
                .map_err(|_| "bad key".to_owned())?;
            b.header(header::AUTHORIZATION, bearer)
        }
    };
    b.header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .map_err(|_| "cannot build the upstream request".to_owned())
}

/// The model a request asks for: its JSON `model`, or Gemini's `/models/<m>:<verb>` path.
fn model_asked(body: &[u8], rest: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Asked {
        model: Option<String>,
    }
    if let Ok(Asked { model: Some(m) }) = serde_json::from_slice::<Asked>(body) {
        return m.chars().take(200).collect();
    }
    rest.split_once("/models/")
        .and_then(|(_, m)| m.split(':').next())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// The upstream's answer, passed on as it arrives.
fn respond(resp: Response<Incoming>, call: Call, idle: Duration) -> Response<Out> {
    let (parts, body) = resp.into_parts();
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut out = Response::builder().status(parts.status);
    for (name, value) in &parts.headers {
        if !dropped(name) || name == header::CONTENT_LENGTH {
            out = out.header(name, value);
        }
    }
    let body = Metered {
        inner: body,
        meter: Meter::new(sse),
        idle,
        sleep: Box::pin(tokio::time::sleep(idle)),
        call: Some(call),
        settling: None,
    };
    out.body(Either::Right(Either::Left(body)))
        .unwrap_or_else(|_| {
            refuse(
                Api::Openai,
                StatusCode::BAD_GATEWAY,
                "api_error",
                "bad upstream headers",
            )
        })
}

/// A refusal by the gateway itself, in the provider's error shape.
fn refuse(api: Api, status: StatusCode, kind: &str, message: &str) -> Response<Out> {
    let body = match api {
        Api::Anthropic => serde_json::json!({
            "type": "error", "error": { "type": kind, "message": message }
        }),
        Api::Openai => serde_json::json!({
            "error": { "type": kind, "code": kind, "message": message }
        }),
        Api::Gemini => serde_json::json!({
            "error": { "code": status.as_u16(), "message": message, "status": kind.to_uppercase() }
        }),
    };
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// One call in flight, recorded exactly once when its answer ends.
struct Call {
    gw: Arc<Gateway>,
    grant: Arc<Grant>,
    start: Instant,
    model: String,
    api: Api,
    status: u32,
}

impl Call {
    /// Records the call; the returned future writes its ledger row.
    fn end(self, mut meter: Meter) -> super::Settle {
        let t = meter.finish();
        let model = if meter.model.is_empty() {
            self.model
        } else {
            std::mem::take(&mut meter.model)
        };
        let call = ModelCall {
            time: Timestamp::now(),
            model,
            api: self.api.as_str().to_owned(),
            status: self.status,
            input_tokens: t.input,
            output_tokens: t.output,
            cache_read_tokens: t.cache_read,
            cache_write_tokens: t.cache_write,
            cost_usd: None,
            latency_ms: u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        self.gw.record(&self.grant, call)
    }

    /// Records a call whose answer no one reads to its end.
    fn end_detached(self, meter: Meter) {
        super::settle_detached(self.end(meter));
    }
}

/// The upstream's body, frame by frame, fed to the meter on the way; the call is recorded when it
/// ends, fails, stalls longer than `idle`, or the agent hangs up. Its last frame (or error) is
/// held back until the call's ledger row is written.
pub struct Metered {
    inner: Incoming,
    meter: Meter,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    call: Option<Call>,
    /// The ledger write under way, and what the body ends with once it is done.
    settling: Option<(super::Settle, Option<std::io::Error>)>,
}

type Polled = Poll<Option<Result<Frame<Bytes>, std::io::Error>>>;

impl Metered {
    /// Starts recording the call; the body ends with `last` once its row is written.
    fn end(&mut self, last: Option<std::io::Error>, cx: &mut Context<'_>) -> Polled {
        if let Some(call) = self.call.take() {
            self.settling = Some((call.end(std::mem::take(&mut self.meter)), last));
            return self.settle(cx);
        }
        Poll::Ready(last.map(Err))
    }

    fn settle(&mut self, cx: &mut Context<'_>) -> Polled {
        let Some((settle, _)) = self.settling.as_mut() else {
            return Poll::Ready(None);
        };
        if settle.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let last = self.settling.take().and_then(|(_, last)| last);
        Poll::Ready(last.map(Err))
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        if this.settling.is_some() {
            return this.settle(cx);
        }
        if this.call.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.meter.feed(data);
                }
                let deadline = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.end(Some(std::io::Error::other(e)), cx),
            Poll::Ready(None) => this.end(None, cx),
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_ready() {
                    let stalled = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the model upstream stalled",
                    );
                    return this.end(Some(stalled), cx);
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.end_detached(std::mem::take(&mut self.meter));
        }
        if let Some((settle, _)) = self.settling.take() {
            super::settle_detached(settle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_models() {
        assert_eq!(
            route("/gw/claude/v1/messages"),
            Some(("claude", "/v1/messages"))
        );
        assert_eq!(route("/gw/claude"), None);
        assert_eq!(route("/v1/messages"), None);
        assert_eq!(model_asked(br#"{"model":"m1"}"#, "/v1/messages"), "m1");
        assert_eq!(
            model_asked(b"{}", "/v1beta/models/gem-2:streamGenerateContent"),
            "gem-2"
        );
    }
}
