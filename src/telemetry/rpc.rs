//! The per-RPC tower layer: gives every call a request id (the caller's `x-request-id` when sane,
//! else a fresh one, echoed back in the response headers), opens the `rpc` span that every log
//! line of the call is written in, and counts the call by method and final gRPC status with its
//! latency once the response has fully gone out (streams included).

use super::metrics::metrics;
use super::trace::TraceParent;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::body::Body;
use tracing::Instrument;

/// Response and request header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What the layer learned about a call; handlers find it in the request extensions.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub traceparent: Option<TraceParent>,
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLayer;

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
}

/// A caller's request id is kept only if short and plain, so it is safe in logs.
fn sane_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    ok.then(|| s.to_owned())
}

/// `grpc-timeout` as a duration (`<digits><H|M|S|m|u|n>`).
fn grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The canonical name of a numeric gRPC status.
pub fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "CANCELLED",
        b"2" => "UNKNOWN",
        b"3" => "INVALID_ARGUMENT",
        b"4" => "DEADLINE_EXCEEDED",
        b"5" => "NOT_FOUND",
        b"6" => "ALREADY_EXISTS",
        b"7" => "PERMISSION_DENIED",
        b"8" => "RESOURCE_EXHAUSTED",
        b"9" => "FAILED_PRECONDITION",
        b"10" => "ABORTED",
        b"11" => "OUT_OF_RANGE",
        b"12" => "UNIMPLEMENTED",
        b"13" => "INTERNAL",
        b"14" => "UNAVAILABLE",
        b"15" => "DATA_LOSS",
        b"16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Records the call exactly once: with the status seen, or, if dropped before one was seen, as
/// DEADLINE_EXCEEDED when the caller's deadline passed and CANCELLED otherwise.
struct Record {
    method: String,
    start: Instant,
    deadline: Option<Duration>,
    done: bool,
}

impl Record {
    fn finish(&mut self, code: &'static str) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed();
        metrics().rpc(&self.method, code, elapsed);
        if code != "OK" {
            tracing::debug!(method = %self.method, code, elapsed_ms = elapsed.as_millis() as u64, "rpc failed");
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let code = match self.deadline {
            Some(d) if self.start.elapsed() >= d => "DEADLINE_EXCEEDED",
            _ => "CANCELLED",
        };
        self.finish(code);
    }
}

/// The response body, watched for the trailers that carry the final status.
struct Observed {
    inner: Body,
    record: Record,
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    let name = code_name(code.as_bytes());
                    self.record.finish(name);
                }
            }
            Poll::Ready(Some(Err(_))) => self.record.finish("INTERNAL"),
            // gRPC always ends with trailers; a body ending without them did not complete.
            Poll::Ready(None) => self.record.finish("UNKNOWN"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<S, B> tower::Service<Request<B>> for RpcService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let headers = req.headers();
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(sane_request_id)
            .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
        let traceparent = headers
            .get(super::trace::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let deadline = headers.get("grpc-timeout").and_then(grpc_timeout);
        let span = tracing::info_span!(
            "rpc",
            method = %method,
            request_id = %request_id,
            trace_id = tracing::field::Empty,
        );
        if let Some(tp) = &traceparent {
            tp.adopt(&span);
        }
        req.extensions_mut().insert(RequestContext {
            request_id: request_id.clone(),
            traceparent,
        });
        let mut record = Record {
            method,
            start: Instant::now(),
            deadline,
            done: false,
        };
        // The clone is ready only if polled; the one that was polled takes this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(req);
        Box::pin(
            async move {
                let mut resp = call.await.inspect_err(|_| record.finish("UNKNOWN"))?;
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    resp.headers_mut().insert(REQUEST_ID_HEADER, v);
                }
                crate::api::status::reclassify_transport(resp.headers_mut());
                // A trailers-only response (most errors) carries the status in its headers.
                if let Some(code) = resp.headers().get("grpc-status") {
                    record.finish(code_name(code.as_bytes()));
                    return Ok(resp);
                }
                Ok(resp.map(|inner| Body::new(Observed { inner, record })))
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout_and_request_ids() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(grpc_timeout(&h("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&h("3S")), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout(&h("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&h("12x")), None);
        assert_eq!(grpc_timeout(&h("")), None);
        assert_eq!(sane_request_id(&h("req-1.a:b")), Some("req-1.a:b".into()));
        assert_eq!(sane_request_id(&h("has space")), None);
        assert_eq!(sane_request_id(&h(&"x".repeat(129))), None);
        assert_eq!(code_name(b"5"), "NOT_FOUND");
        assert_eq!(code_name(b"99"), "UNKNOWN");
    }
}
