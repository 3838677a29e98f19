//! Assembles and runs a server: opens the store, starts the core, mounts the three agentd
//! services behind authentication plus health and reflection (both v1 and v1alpha, since grpcurl
//! 1.8 only speaks v1alpha) without it, and serves until `stop` resolves, then drains in the fixed
//! order documented in `shutdown`.
//!
//! It also owns the transport: h2c or TLS/mTLS (rustls), HTTP/2 keepalive and maximum connection
//! age, gzip, optional gRPC-Web (+ CORS), the web console's pages (`console`) and its optional
//! listener, the per-RPC telemetry layer, the metrics listener, and
//! the store probes (`health`) that turn health NOT_SERVING while the store is unusable.

use crate::api::{
    AuthInterceptor, FileApi, JobApi, PresetApi, ServerInfoApi, SessionApi, UsageApi, WebhookApi,
};
use crate::auth::Authenticator;
use crate::config::{Config, TlsFiles, Transport};
use crate::core::Core;
use crate::pb;
use crate::shutdown::Shutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding::Gzip;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(crate::error::Error),
    /// The core refused to start (a profile's sandbox the host cannot give, a store read at
    /// start): its message says what, and it is not always the store.
    #[error("cannot start: {0}")]
    Start(crate::error::Error),
    #[error("{0}")]
    RunDir(crate::error::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot read {flag} {path}: {source}")]
    TlsFile {
        flag: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for the model gateway on {addr}: {source}")]
    Gateway {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for the console on {addr}: {source}")]
    Console {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// How long open calls get to finish once the transport stops accepting new ones.
const TRANSPORT_DRAIN: Duration = Duration::from_secs(5);

/// Largest CreateSession request (inline files); other requests keep tonic's 4 MiB default.
pub const MAX_CREATE_SESSION_BYTES: usize = 64 << 20;

/// HTTP/2 flow-control windows. h2 charges each received DATA frame under 256 bytes
/// `256 - payload` bytes until the handler reads it, against a budget of half the connection
/// window, and closes the whole connection (GOAWAY ENHANCE_YOUR_CALM) when it runs out. A client
/// streaming tiny messages (an upload of many small files, one message per frame) faster than
/// its handler writes them may have a stream window of them unread: with hyper's 1 MiB for both,
/// about 2,400 frames of ~20 bytes closed the connection. A stream window of 256 KiB holds at
/// most 52,428 of the smallest gRPC message (5 bytes), charged 13.2 MB, within the 16 MiB budget
/// of a 32 MiB connection window; loopback and LAN uploads are not slowed by the smaller stream
/// window (the bench's upload and archive scenarios).
const STREAM_WINDOW: u32 = 256 << 10;
const CONNECTION_WINDOW: u32 = 32 << 20;

type SessionSvc = pb::session_service_server::SessionServiceServer<SessionApi>;
type JobSvc = pb::job_service_server::JobServiceServer<JobApi>;
type FileSvc = pb::file_service_server::FileServiceServer<FileApi>;
type InfoSvc = pb::server_info_service_server::ServerInfoServiceServer<ServerInfoApi>;
type UsageSvc = pb::usage_service_server::UsageServiceServer<UsageApi>;
type WebhookSvc = pb::webhook_service_server::WebhookServiceServer<WebhookApi>;
type PresetSvc = pb::preset_service_server::PresetServiceServer<PresetApi>;

const SERVICES: [&str; 7] = [
    <SessionSvc as NamedService>::NAME,
    <JobSvc as NamedService>::NAME,
    <FileSvc as NamedService>::NAME,
    <InfoSvc as NamedService>::NAME,
    <UsageSvc as NamedService>::NAME,
    <WebhookSvc as NamedService>::NAME,
    <PresetSvc as NamedService>::NAME,
];

/// Health names that need the store: these (and the overall "") go NOT_SERVING while it fails.
/// ServerInfo answers from memory and stays SERVING.
const STORE_SERVICES: [&str; 7] = [
    <SessionSvc as NamedService>::NAME,
    <JobSvc as NamedService>::NAME,
    <FileSvc as NamedService>::NAME,
    <UsageSvc as NamedService>::NAME,
    <WebhookSvc as NamedService>::NAME,
    <PresetSvc as NamedService>::NAME,
    "",
];

/// Headers a browser may send / read on cross-origin gRPC-Web calls.
const CORS_ALLOW_HEADERS: [&str; 9] = [
    "authorization",
    "x-api-key",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "traceparent",
    "tracestate",
    "x-request-id",
];
const CORS_EXPOSE_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
];

async fn read_pem(flag: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ServeError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| ServeError::TlsFile {
            flag,
            path: path.display().to_string(),
            source,
        })
}

async fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, ServeError> {
    let cert = read_pem("--tls-cert", &files.cert).await?;
    let key = read_pem("--tls-key", &files.key).await?;
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &files.client_ca {
        // Client certificates become mandatory: a client without one fails the handshake.
        tls = tls.client_ca_root(Certificate::from_pem(
            read_pem("--tls-client-ca", ca).await?,
        ));
    }
    Ok(tls)
}

fn cors_layer(t: &Transport) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if !t.grpc_web || t.grpc_web_allow_origins.is_empty() {
        return None;
    }
    let origin = if t.grpc_web_allow_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Config validated every origin as a header value.
        AllowOrigin::list(
            t.grpc_web_allow_origins
                .iter()
                .filter_map(|o| http::HeaderValue::from_str(o).ok()),
        )
    };
    let names = |list: &[&'static str]| {
        list.iter()
            .map(|h| http::HeaderName::from_static(h))
            .collect::<Vec<_>>()
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([http::Method::POST, http::Method::OPTIONS])
            .allow_headers(names(&CORS_ALLOW_HEADERS))
            .expose_headers(names(&CORS_EXPOSE_HEADERS))
            .max_age(Duration::from_secs(24 * 3600)),
    )
}

async fn claim_data_dir(
    data_dir: &std::path::Path,
    cgroup_parent: Option<String>,
) -> Result<crate::runner::records::RunLock, ServeError> {
    let dir = data_dir.to_owned();
    // Supervisors waiting for adoption are left for `Core::start` (issue #23).
    let keep = crate::runner::adopt::enabled();
    let (lock, swept) = tokio::task::spawn_blocking(move || {
        crate::runner::records::claim_keeping(&dir, cgroup_parent.as_deref(), keep)
    })
    .await
    .map_err(|e| ServeError::RunDir(crate::error::Error::internal(e.to_string())))?
    .map_err(ServeError::RunDir)?;
    if swept.records > 0 {
        tracing::warn!(
            records = swept.records,
            killed = swept.killed,
            "swept the processes of jobs a previous run left behind"
        );
    }
    Ok(lock)
}

/// Serves on `listener` until `stop` resolves; returns after a clean drain. `ready` runs once the
/// data dir is claimed, the store is open and calls are being served (not before: a server that
/// is about to be refused must not announce itself).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    ready: impl FnOnce(),
    stop: impl Future<Output = ()> + Send + 'static,
    hangups: crate::shutdown::Hangups,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    if let Some(timeout) = config.timing.adopt_timeout {
        // Journals hold at most twice the output a job may keep: the caps trip before the bound.
        let bound = config.limits.job_output_max_bytes.saturating_mul(2);
        crate::runner::adopt::enable(bound, timeout);
    }
    // Before the store opens: refuse a second agentd on this data dir, and kill what a crashed
    // previous run left behind (see `runner::records`). Held until `serve` returns.
    let _run_lock =
        claim_data_dir(&config.data_dir, Some(config.sandbox.cgroup_parent.clone())).await?;
    let store = crate::store::open(&config.store, &config.data_dir)
        .await
        .map_err(ServeError::Store)?;
    tracing::info!(
        replica = %config.replica_id,
        store = %crate::config::redact_url(&config.store),
        shared = store.shared(),
        "store open"
    );
    let shutdown = Shutdown::new();
    // Stopped once the running jobs are drained: their model calls may go on until then.
    let gateway_stop = CancellationToken::new();
    let gateway = match config.gateway.enabled() {
        true => Some(
            crate::gateway::Gateway::start(
                config.gateway.clone(),
                store.clone(),
                (
                    config.gateway_listen,
                    config.data_dir.join("gateway").join("gateway.sock"),
                ),
                config.gateway_timeout,
                gateway_stop.clone(),
            )
            .await
            .map_err(|source| ServeError::Gateway {
                addr: config.gateway_listen,
                source,
            })?,
        ),
        false => None,
    };
    if let Some(gw) = &gateway {
        // Tests and scripts read this line to learn the gateway's port when it listens on port 0
        // (a port picked free beforehand can be taken by then).
        println!("agentd gateway listening on {}", gw.addr());
    }
    let core = Core::start(config.clone(), store.clone(), shutdown.clone(), gateway)
        .await
        .map_err(ServeError::Start)?;
    let webhooks = crate::webhooks::Webhooks::start(
        store.clone(),
        config.webhooks.clone(),
        &config.replica_id,
        core.job_changes(),
        &shutdown,
    )
    .await
    .map_err(ServeError::Store)?;
    core.attach_webhooks(webhooks.clone());
    {
        let core = core.clone();
        shutdown.spawn(hangups.serve(shutdown.clone(), move || core.reload_catalog()));
    }

    let (health, health_svc) = tonic_health::server::health_reporter();
    for name in SERVICES.iter().copied().chain([""]) {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    let auth = AuthInterceptor::new(
        Authenticator::new(config.api_keys.clone()),
        crate::auth::RateLimiter::new(config.limits.tenant_rate_limit),
    );
    let t = &config.transport;
    // Gzip requests are always accepted; responses are gzipped only when configured.
    macro_rules! gzip {
        ($svc:expr) => {{
            let svc = $svc.accept_compressed(Gzip);
            if t.send_gzip {
                svc.send_compressed(Gzip)
            } else {
                svc
            }
        }};
    }
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(t.keepalive_interval)
        .http2_keepalive_timeout(Some(t.keepalive_timeout))
        .accept_http1(t.grpc_web);
    if let Some(age) = t.max_connection_age {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(t.max_connection_age_grace);
    }
    if let Some(files) = &t.tls {
        builder = builder.tls_config(tls_config(files).await?)?;
    }
    let console_listener = match t.console_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Console { addr, source })?,
        ),
        None => None,
    };
    let console_only_on = console_listener.as_ref().and_then(|l| l.local_addr().ok());
    // Outermost first: the console answers GETs (gRPC is always POST), CORS answers preflights,
    // gRPC-Web translates to gRPC, and the telemetry layer then sees every call as plain gRPC.
    let router = builder
        .layer(
            crate::console::ConsoleLayer::new(t.console, console_only_on)
                .with_hosts(&t.console_hosts),
        )
        .layer(tower::util::option_layer(cors_layer(t)))
        .layer(tower::util::option_layer(
            t.grpc_web.then(tonic_web::GrpcWebLayer::new),
        ))
        .layer(crate::telemetry::rpc::RpcLayer)
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            // CreateSession carries inline files; larger content belongs in UploadFiles.
            gzip!(
                SessionSvc::new(SessionApi::new(core.clone()))
                    .max_decoding_message_size(MAX_CREATE_SESSION_BYTES)
            ),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            gzip!(JobSvc::new(JobApi::new(core.clone()))),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            gzip!(FileSvc::new(FileApi::new(core.clone()))),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            gzip!(InfoSvc::new(ServerInfoApi::new(core.clone()))),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            gzip!(UsageSvc::new(UsageApi::new(core.clone()))),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            gzip!(WebhookSvc::new(WebhookApi::new(webhooks))),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            gzip!(PresetSvc::new(PresetApi::new(core.clone()))),
            auth,
        ));

    let telemetry_stop = CancellationToken::new();
    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Metrics { addr, source })?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving metrics");
        shutdown.spawn(crate::telemetry::metrics::serve(
            listener,
            crate::telemetry::metrics::MetricsAccess::new(config.metrics_token.as_deref()),
            telemetry_stop.clone(),
        ));
    }
    let probe = crate::health::spawn(
        health.clone(),
        &STORE_SERVICES,
        store.clone(),
        config.health_probe_failures,
        crate::health::ProbeTiming::default(),
        telemetry_stop.clone(),
    );

    let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
    // Nagle's algorithm would hold each small event message back until the previous one is
    // acknowledged (tens of ms on a live stream): every message is written whole, so send at once.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let console_stop = CancellationToken::new();
    if let Some(listener) = console_listener {
        // The same services (and the API keys they check) beside the pages, so the console's
        // calls are same-origin; it stops with the main listener.
        tracing::info!(addr = ?console_only_on, "serving the console");
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = console_stop.clone();
        let console_router = router.clone();
        shutdown.spawn(async move {
            if let Err(e) = console_router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "console listener failed");
            }
        });
    }
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = server_stopped.await;
        console_stop.cancel();
    }));
    tracing::info!("serving");
    ready();
    stop.await;

    // The drain order (see `shutdown`): health first, so balancers stop sending work ...
    tracing::info!("shutting down: health NOT_SERVING");
    telemetry_stop.cancel();
    let _ = probe.await;
    for name in SERVICES.iter().copied().chain([""]) {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    // ... then refuse new work, stop claiming jobs, cancel running jobs and record their final
    // states, and let streams deliver those final events (with `--on-shutdown keep`: leave
    // them running for the next agentd, issue #23) ...
    let keep = config.timing.adopt_timeout.is_some();
    if keep {
        core.leave();
    } else {
        core.drain().await;
    }
    gateway_stop.cancel();
    // ... then stop the transport: in-flight calls get a bounded time to finish (job streams
    // already have their final event; a health Watch or a client that never hangs up would keep a
    // graceful shutdown waiting forever), then remaining connections are dropped ...
    let _ = server_stop.send(());
    let mut server = server;
    let served = match tokio::time::timeout(TRANSPORT_DRAIN, &mut server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                "open calls did not end within {}s of shutdown; closing their connections",
                TRANSPORT_DRAIN.as_secs()
            );
            server.abort();
            Ok(Ok(()))
        }
    };
    if keep {
        // Running jobs stay with their supervisors: exit without the destructors that would
        // stop them. What the event log had not committed yet is in their journals.
        tracing::info!(
            running = core.running_count(),
            "stopped; running jobs left for the next agentd"
        );
        std::process::exit(0);
    }
    // ... then background tasks, and finally the event log writer and the store.
    shutdown.trigger();
    drop(core);
    if tokio::time::timeout(Duration::from_secs(10), shutdown.wait_tasks())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop within 10s");
    }
    tracing::info!("stopped");
    match served {
        Ok(r) => r.map_err(ServeError::from),
        Err(e) => {
            tracing::error!(error = %e, "server task failed");
            Ok(())
        }
    }
}
