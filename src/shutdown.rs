//! The one shutdown mechanism: a `CancellationToken` that says "stop" and a `TaskTracker` that
//! knows every background task. The drain order is fixed and lives in [`crate::server::serve`]:
//! 1. health → NOT_SERVING, and the job core refuses new work (UNAVAILABLE);
//! 2. the dispatcher stops claiming jobs;
//! 3. running agents get SIGTERM, a grace period, then the tree kill; each job records its final
//!    state (CANCELLED, reason "shutdown") and final event;
//!    then the standby supervisors are killed (no job can start any more);
//! 4. the event log flushes and streams end with their final event;
//! 5. the gRPC server stops and the store closes.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cloneable handle shared by everything that must stop on shutdown.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Signals every holder to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been triggered.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Waits for every tracked task to finish.
    pub async fn wait_tasks(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled: a SIGTERM that arrives while the server is still starting (opening the
/// store, sweeping run records) must begin the drain as soon as it can, not kill the process by
/// the default action and leave what it started behind. Call it first thing.
pub fn signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers we can only wait forever; the process is killed the hard
            // way.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
