//! Assembles and runs a server: opens the store, starts the core, mounts the three agentd
//! services behind authentication plus health and reflection (both v1 and v1alpha, since grpcurl
//! 1.8 only speaks v1alpha) without it, and serves until `stop` resolves, then drains in the fixed
//! order documented in `shutdown`.

use crate::api::{AuthInterceptor, FileApi, JobApi, ServerInfoApi, SessionApi};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::core::Core;
use crate::pb;
use crate::shutdown::Shutdown;
use crate::store::DynStore;
use crate::store::sqlite::SqliteStore;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
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
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Largest CreateSession request (inline files); other requests keep tonic's 4 MiB default.
pub const MAX_CREATE_SESSION_BYTES: usize = 64 << 20;

type SessionSvc = pb::session_service_server::SessionServiceServer<SessionApi>;
type JobSvc = pb::job_service_server::JobServiceServer<JobApi>;
type FileSvc = pb::file_service_server::FileServiceServer<FileApi>;
type InfoSvc = pb::server_info_service_server::ServerInfoServiceServer<ServerInfoApi>;

const SERVICES: [&str; 4] = [
    <SessionSvc as NamedService>::NAME,
    <JobSvc as NamedService>::NAME,
    <FileSvc as NamedService>::NAME,
    <InfoSvc as NamedService>::NAME,
];

/// Serves on `listener` until `stop` resolves; returns after a clean drain.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let store: DynStore = Arc::new(
        SqliteStore::open(&config.data_dir.join("agentd.db"))
            .await
            .map_err(ServeError::Store)?,
    );
    let shutdown = Shutdown::new();
    let core = Core::start(config.clone(), store, shutdown.clone())
        .await
        .map_err(ServeError::Store)?;

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
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            // CreateSession carries inline files; larger content belongs in UploadFiles.
            SessionSvc::new(SessionApi::new(core.clone()))
                .max_decoding_message_size(MAX_CREATE_SESSION_BYTES),
            auth.clone(),
        ))
        .add_service(pb::job_service_server::JobServiceServer::with_interceptor(
            JobApi::new(core.clone()),
            auth.clone(),
        ))
        .add_service(
            pb::file_service_server::FileServiceServer::with_interceptor(
                FileApi::new(core.clone()),
                auth.clone(),
            ),
        )
        .add_service(
            pb::server_info_service_server::ServerInfoServiceServer::with_interceptor(
                ServerInfoApi::new(core.clone()),
                auth,
            ),
        );

    let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async {
            let _ = server_stopped.await;
        },
    ));
    tracing::info!("serving");
    stop.await;

    // The drain order (see `shutdown`): health first, so balancers stop sending work ...
    tracing::info!("shutting down: health NOT_SERVING");
    for name in SERVICES.iter().copied().chain([""]) {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    // ... then refuse new work, stop the scheduler, cancel running jobs and record their final
    // states, and let streams deliver those final events ...
    core.drain().await;
    // ... then stop the transport (in-flight calls finish) ...
    let _ = server_stop.send(());
    let served = server.await;
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
