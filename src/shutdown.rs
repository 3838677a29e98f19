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

/// SIGHUP, which asks for a reload of the config file's catalog (presets, MCP servers, subagents,
/// skills; #20). Installed when created, like [`signal`]: SIGHUP's default action would kill a
/// server still starting.
pub struct Hangups(Option<tokio::signal::unix::Signal>);

impl Hangups {
    /// Resolves at the next SIGHUP; never, when the handler could not be installed.
    pub async fn next(&mut self) {
        match &mut self.0 {
            Some(s) => {
                if s.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Runs `reload` (blocking: it reads files) at each SIGHUP until shutdown; a refused
    /// reload is logged and changes nothing.
    pub async fn serve<F>(mut self, stop: Shutdown, reload: F)
    where
        F: Fn() -> Result<(), String> + Send + Sync + 'static,
    {
        let reload = std::sync::Arc::new(reload);
        loop {
            tokio::select! {
                _ = stop.triggered() => return,
                _ = self.next() => {
                    tracing::info!("SIGHUP received: reloading the config file's catalog");
                    let r = reload.clone();
                    let outcome = tokio::task::spawn_blocking(move || r())
                        .await
                        .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")));
                    if let Err(e) = outcome {
                        tracing::error!(error = %e, "config reload refused; the previous configuration stays");
                    }
                }
            }
        }
    }
}

/// Installs the SIGHUP handler now (call it first thing, with [`signal`]).
pub fn hangups() -> Hangups {
    use tokio::signal::unix::{SignalKind, signal};
    Hangups(signal(SignalKind::hangup()).ok())
}
