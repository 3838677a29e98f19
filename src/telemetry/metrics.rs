//! The process-wide Prometheus metrics and the plain-HTTP listener that serves them
//! (`--metrics-listen`, off by default; with `--metrics-token-file` only to callers presenting
//! that bearer token). Metrics are global (one server per process) so any layer
//! can count without the registry being threaded through every constructor.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    tenant: String,
    model: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~33 s; agent jobs get their own, coarser buckets.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

fn job_histogram() -> Histogram {
    // 1 s … ~4.5 h.
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// Every metric agentd exports. See [`metrics`] for the instance.
pub struct Metrics {
    registry: Registry,
    rpc_handled: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<RpcLabels>,
    jobs_submitted: Counter,
    jobs_finished: Family<StateLabels, Counter>,
    job_duration: HistogramFamily<StateLabels>,
    jobs_queued: Gauge,
    jobs_running: Gauge,
    events_written: Counter,
    events_streamed: Counter,
    upload_bytes: Counter,
    download_bytes: Counter,
    kill_escalations: Family<CauseLabels, Counter>,
    store_write: Histogram,
    store_up: Gauge,
    model_calls: Family<ModelLabels, Counter>,
    model_tokens: Family<ModelLabels, Counter>,
    model_cost: Family<ModelLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("agentd");
        let m = Metrics {
            rpc_handled: Family::default(),
            rpc_duration: Family::new_with_constructor(latency_histogram),
            jobs_submitted: Counter::default(),
            jobs_finished: Family::default(),
            job_duration: Family::new_with_constructor(job_histogram),
            jobs_queued: Gauge::default(),
            jobs_running: Gauge::default(),
            events_written: Counter::default(),
            events_streamed: Counter::default(),
            upload_bytes: Counter::default(),
            download_bytes: Counter::default(),
            kill_escalations: Family::default(),
            store_write: latency_histogram(),
            store_up: Gauge::default(),
            model_calls: Family::default(),
            model_tokens: Family::default(),
            model_cost: Family::default(),
            registry: Registry::default(),
        };
        // Counters get the `_total` suffix from the encoder.
        registry.register(
            "rpc_handled",
            "RPCs completed, by full method and gRPC status code",
            m.rpc_handled.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "RPC latency until the last response byte, by method and status code",
            m.rpc_duration.clone(),
        );
        registry.register(
            "jobs_submitted",
            "SubmitJob calls that returned a job",
            m.jobs_submitted.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs that reached a final state, by state",
            m.jobs_finished.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Run time of jobs that started, by final state",
            m.job_duration.clone(),
        );
        registry.register(
            "jobs_queued",
            "Jobs waiting to run (queue depth), as of the last store probe",
            m.jobs_queued.clone(),
        );
        registry.register(
            "jobs_running",
            "Jobs whose agent is running",
            m.jobs_running.clone(),
        );
        registry.register(
            "events_written",
            "Job events written to the event log",
            m.events_written.clone(),
        );
        registry.register(
            "events_streamed",
            "Job events sent to clients on event streams",
            m.events_streamed.clone(),
        );
        registry.register(
            "upload_bytes",
            "File content bytes received by UploadFiles",
            m.upload_bytes.clone(),
        );
        registry.register(
            "download_bytes",
            "File content bytes sent by DownloadFile",
            m.download_bytes.clone(),
        );
        registry.register(
            "kill_escalations",
            "Jobs whose process tree had to be signalled to stop, by cause",
            m.kill_escalations.clone(),
        );
        registry.register(
            "store_write_seconds",
            "Latency of event-log writes (batched store transactions)",
            m.store_write.clone(),
        );
        registry.register(
            "store_up",
            "1 when the last store probe (a write and a read) succeeded, else 0",
            m.store_up.clone(),
        );
        registry.register(
            "gateway_model_calls",
            "Model calls through the gateway, by tenant and model",
            m.model_calls.clone(),
        );
        registry.register(
            "gateway_tokens",
            "Tokens metered by the gateway (input, output and cache), by tenant and model",
            m.model_tokens.clone(),
        );
        registry.register(
            "gateway_cost_usd",
            "Cost of priced model calls through the gateway, by tenant and model",
            m.model_cost.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One finished RPC. `method` is the full path (`/agentd.v1.JobService/SubmitJob`).
    pub fn rpc(&self, method: &str, code: &str, elapsed: Duration) {
        let labels = RpcLabels {
            method: method.to_owned(),
            code: code.to_owned(),
        };
        self.rpc_handled.get_or_create(&labels).inc();
        self.rpc_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// One model call through the gateway; `cost` is unset for an unpriced model.
    pub fn model_call(&self, tenant: &str, model: &str, tokens: u64, cost: Option<f64>) {
        let labels = ModelLabels {
            tenant: tenant.to_owned(),
            model: model.to_owned(),
        };
        self.model_calls.get_or_create(&labels).inc();
        self.model_tokens.get_or_create(&labels).inc_by(tokens);
        if let Some(c) = cost {
            self.model_cost.get_or_create(&labels).inc_by(c);
        }
    }

    pub fn job_submitted(&self) {
        self.jobs_submitted.inc();
    }

    /// A job reached `state` (SUCCEEDED, FAILED, …); `ran` is its run time if it started.
    pub fn job_finished(&self, state: &str, ran: Option<Duration>) {
        let labels = StateLabels {
            state: state.to_owned(),
        };
        self.jobs_finished.get_or_create(&labels).inc();
        if let Some(d) = ran {
            self.job_duration
                .get_or_create(&labels)
                .observe(d.as_secs_f64());
        }
    }

    /// Marks one job running until the guard drops.
    pub fn job_running(&'static self) -> RunningGuard {
        self.jobs_running.inc();
        RunningGuard(self)
    }

    pub fn set_queued(&self, n: usize) {
        self.jobs_queued.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn events_written(&self, n: usize) {
        self.events_written.inc_by(n as u64);
    }

    pub fn events_streamed(&self, n: usize) {
        self.events_streamed.inc_by(n as u64);
    }

    pub fn uploaded(&self, bytes: usize) {
        self.upload_bytes.inc_by(bytes as u64);
    }

    pub fn downloaded(&self, bytes: usize) {
        self.download_bytes.inc_by(bytes as u64);
    }

    /// The runner had to signal a job's tree (`cause`: cancelled, timed_out).
    pub fn kill_escalation(&self, cause: &str) {
        self.kill_escalations
            .get_or_create(&CauseLabels {
                cause: cause.to_owned(),
            })
            .inc();
    }

    pub fn store_write(&self, elapsed: Duration) {
        self.store_write.observe(elapsed.as_secs_f64());
    }

    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Decrements the running-jobs gauge when dropped.
pub struct RunningGuard(&'static Metrics);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.jobs_running.dec();
    }
}

/// Largest request head the metrics listener reads.
const MAX_HEAD: usize = 8 << 10;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may read `/metrics`: anyone, or only callers sending `authorization: Bearer <token>`
/// (compared as SHA-256 digests in constant time, so timing reveals nothing of the token).
#[derive(Clone)]
pub struct MetricsAccess(Option<Arc<[u8; 32]>>);

impl MetricsAccess {
    pub fn new(token: Option<&str>) -> Self {
        Self(token.map(|t| Arc::new(Sha256::digest(t.as_bytes()).into())))
    }

    fn allows(&self, head: &[u8]) -> bool {
        let Some(want) = &self.0 else {
            return true;
        };
        let presented = head
            .split(|b| *b == b'\n')
            .filter_map(|line| {
                let line = std::str::from_utf8(line).ok()?.trim();
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("authorization")
                    .then(|| value.trim())
            })
            .find_map(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        presented.is_some_and(|t| {
            let got: [u8; 32] = Sha256::digest(t.as_bytes()).into();
            bool::from(got.ct_eq(&**want))
        })
    }
}

/// Serves `GET /metrics` (HTTP/1.x, one request per connection) until `stop` is cancelled.
pub async fn serve(listener: TcpListener, access: MetricsAccess, stop: CancellationToken) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            () = stop.cancelled() => return,
        };
        match conn {
            Ok((stream, _)) => {
                let access = access.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(IO_TIMEOUT, answer(stream, &access)).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, access: &MetricsAccess) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/metrics") if !access.allows(&head) => (
            "401 Unauthorized\r\nwww-authenticate: Bearer",
            "text/plain",
            "a bearer token is required\n".to_owned(),
        ),
        (b"GET", b"/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics().encode(),
        ),
        (b"GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        get_with(addr, path, "").await
    }

    async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n{headers}\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_counts_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, MetricsAccess::new(None), stop.clone()));
        metrics().uploaded(1234);
        metrics().rpc("/t.S/M", "NOT_FOUND", Duration::from_millis(3));
        metrics().job_finished("SUCCEEDED", Some(Duration::from_secs(2)));
        let page = get(addr, "/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        let line = page
            .lines()
            .find(|l| l.starts_with("agentd_upload_bytes_total "))
            .unwrap();
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1234, "{line}");
        assert!(
            page.contains(r#"agentd_rpc_handled_total{method="/t.S/M",code="NOT_FOUND"} 1"#),
            "{page}"
        );
        assert!(
            page.contains(
                r#"agentd_rpc_duration_seconds_count{method="/t.S/M",code="NOT_FOUND"} 1"#
            )
        );
        assert!(page.contains(r#"agentd_jobs_finished_total{state="SUCCEEDED"}"#));
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_token_keeps_metrics_from_callers_without_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = "metrics-token-0123456789";
        let access = MetricsAccess::new(Some(token));
        let task = tokio::spawn(serve(listener, access, stop.clone()));
        for refused in [
            "",
            "authorization: Bearer wrong-token-0123456789\r\n",
            "authorization: Basic bWV0cmljcy10b2tlbi0wMTIzNDU2Nzg5\r\n",
            "authorization: Bearer metrics-token-012345678\r\n",
            "x-authorization: Bearer metrics-token-0123456789\r\n",
        ] {
            let page = get_with(addr, "/metrics", refused).await;
            assert!(page.starts_with("HTTP/1.1 401"), "{refused:?}: {page}");
            assert!(page.contains("www-authenticate: Bearer"), "{page}");
            assert!(!page.contains("agentd_"), "{refused:?}: {page}");
        }
        for accepted in [
            format!("authorization: Bearer {token}\r\n"),
            format!("Authorization: bearer  {token} \r\n"),
        ] {
            let page = get_with(addr, "/metrics", &accepted).await;
            assert!(page.starts_with("HTTP/1.1 200 OK"), "{accepted:?}: {page}");
            assert!(page.contains("agentd_jobs_running"), "{page}");
        }
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn running_guard_counts_down() {
        // A private instance: the global one is shared with tests running jobs.
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let g = m.job_running();
        let g2 = m.job_running();
        assert_eq!(m.jobs_running.get(), 2);
        drop(g);
        assert_eq!(m.jobs_running.get(), 1);
        drop(g2);
        assert!(m.encode().contains("agentd_jobs_running 0"));
    }
}
