//! The use cases behind the API: sessions, jobs, files, usage and the TTL reaper. [`Core`] owns the
//! store handle, the event log, the workspaces and this replica's running jobs, and is the only
//! thing the API layer calls. Every operation takes the caller's tenant and answers NOT_FOUND for
//! ids of other tenants, exactly as for ids that do not exist.
//!
//! Which job runs where is decided by the store, so that several replicas can share one: the
//! dispatcher claims runnable jobs under a lease (`dispatch`), the lease keeper renews them and
//! settles the jobs of replicas that stopped renewing, and store signals carry other replicas'
//! commits and cancel requests to this one. With the embedded store there is one replica and the
//! same code runs unchanged.

mod adopt;
mod caps;
mod control;
mod control_relay;
mod dispatch;
mod env;
mod files;
pub mod history;
mod info;
mod jail;
mod jobs;
mod pieces;
mod presets;
mod reaper;
mod rewind;
mod run;
mod sessions;
mod tenant_watch;
mod usage;

pub use env::ENV_ALLOWLIST;
pub use files::UploadSink;
pub use info::AgentStatus;
pub use jobs::{JobView, SubmitJob};
pub use pieces::{Piece, PieceDone, PiecedUploads};
pub use presets::PresetView;
pub use rewind::{ForkSession, Rewound};
pub use sessions::{CreateSession, SessionView};
pub use tenant_watch::{ChangeEvents, WatchFilter, WatchItem, WatchedChange};

use crate::config::Config;
use crate::domain::{JobId, SessionId};
use crate::error::{Error, Reason, Result};
use crate::events::EventLog;
use crate::runner::Launcher;
use crate::runner::jail::probe::HostSupport;
use crate::shutdown::Shutdown;
use crate::store::DynStore;
use crate::workspace::{ArchiveLimits, WorkspaceLimits, Workspaces};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// A running job's controls.
#[derive(Clone)]
struct RunHandle {
    cancel: CancellationToken,
    /// Why the job was cancelled; the first reason given wins.
    reason: Arc<OnceLock<String>>,
    /// Becomes `true` once the job's final state is stored.
    done: watch::Receiver<bool>,
    /// The job's controller, once it runs with permission_mode `ask` (issue #17).
    control: Arc<OnceLock<control::ControlHandle>>,
}

/// The application core. Shared as `Arc<Core>`.
pub struct Core {
    config: Arc<Config>,
    store: DynStore,
    events: Arc<EventLog>,
    workspaces: Workspaces,
    shutdown: Shutdown,
    /// Cancelled after running jobs have recorded their final events on shutdown, so streams end
    /// only once those events are readable.
    streams_stop: CancellationToken,
    /// Cleared on shutdown: new work is refused and no more jobs are claimed.
    accepting: AtomicBool,
    /// Jobs this replica claimed and runs (including claimed ones about to start).
    running: Mutex<HashMap<JobId, RunHandle>>,
    deleting: Mutex<HashSet<SessionId>>,
    wake: Notify,
    /// Wakes the delivery of control messages (issue #17) recorded for jobs this replica runs.
    control_wake: Notify,
    /// Held while claiming jobs and starting them (the dispatcher, or a submission claiming
    /// right behind its insert), so the free slots are counted by one claimer at a time.
    dispatching: tokio::sync::Mutex<()>,
    /// Agent profiles as probed at start.
    agents: Vec<AgentStatus>,
    /// Starts agents, from standby supervisors when ready.
    launcher: Arc<Launcher>,
    /// What the host offers the jail, probed at start.
    host: HostSupport,
    /// What every jail hides ([`jail::hidden`]).
    jail_hide: Vec<std::path::PathBuf>,
    /// The model gateway, when a profile routes through it.
    gateway: Option<Arc<crate::gateway::Gateway>>,
    /// The config file's presets and catalogs; SIGHUP swaps it (`core::presets`).
    catalog: crate::presets::SharedCatalog,
    /// The webhook outbox, attached once it started (it follows this core's change sequence);
    /// controllers read it when an agent asks for a permission.
    webhooks: Arc<OnceLock<Arc<crate::webhooks::Webhooks>>>,
    /// Each watched tenant's latest change read, shared by its watchers (`tenant_watch`).
    feeds: tenant_watch::Feeds,
}

/// How long a cancel waits for a job owned by another replica to end before answering with the
/// job as it is then (the owner may be dead: its lease expiry settles the job later).
const REMOTE_CANCEL_WAIT_EXTRA: std::time::Duration = std::time::Duration::from_secs(5);

/// Splits `limit + 1` rows fetched for a page into the page and the cursor of the next one.
fn paginate<T>(
    mut rows: Vec<T>,
    limit: usize,
    cursor_of: impl Fn(&T) -> crate::domain::PageCursor,
) -> (Vec<T>, Option<crate::domain::PageCursor>) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(cursor_of)
    } else {
        None
    };
    (rows, next)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Core {
    /// Builds the core, recovers jobs interrupted by a previous stop, and starts the dispatcher
    /// and the TTL reaper.
    pub async fn start(
        config: Arc<Config>,
        store: DynStore,
        shutdown: Shutdown,
        gateway: Option<Arc<crate::gateway::Gateway>>,
    ) -> Result<Arc<Core>> {
        let workspaces = Workspaces::with_archive_limits(
            config.workspace_root.clone(),
            WorkspaceLimits {
                max_files: config.limits.max_files_per_session,
                max_session_bytes: config.limits.max_session_bytes,
                max_file_bytes: config.limits.max_file_bytes,
            },
            ArchiveLimits {
                max_entries: config.limits.archive_max_entries,
                max_bytes: config.limits.archive_max_bytes,
                max_ratio: config.limits.archive_max_ratio,
            },
        );
        let events = EventLog::start(store.clone(), shutdown.tracker(), shutdown.token().clone());
        let agents = info::probe_all(config.agents.values()).await;
        for a in &agents {
            if a.available {
                tracing::info!(agent = %a.name, version = %a.version, "agent available");
            } else {
                tracing::warn!(agent = %a.name, problem = %a.problem, "agent unavailable");
            }
        }
        let host = jail::probe_host(&config).await?;
        let jail_hide = {
            let config = Arc::clone(&config);
            tokio::task::spawn_blocking(move || jail::hidden(&config))
                .await
                .map_err(|e| Error::internal(format!("cannot resolve agentd's own paths: {e}")))?
        };
        let default_jail = config
            .sandbox
            .of(&config.default_agent)
            .map(|s| jail::shape(&config, s));
        let supervisor = crate::runner::Supervisor {
            path: config.supervisor.clone(),
            run_dir: Some(crate::runner::records::run_dir(&config.data_dir)),
            containment: config.containment,
        };
        let launcher = Launcher::new(supervisor, config.standby_supervisors, default_jail);
        let catalog = crate::presets::SharedCatalog::new(config.catalog.clone());
        let core = Arc::new(Core {
            catalog,
            agents,
            host,
            jail_hide,
            launcher,
            config,
            store,
            events,
            workspaces,
            shutdown: shutdown.clone(),
            streams_stop: CancellationToken::new(),
            accepting: AtomicBool::new(true),
            running: Mutex::new(HashMap::new()),
            deleting: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            control_wake: Notify::new(),
            dispatching: tokio::sync::Mutex::new(()),
            gateway,
            webhooks: Arc::new(OnceLock::new()),
            feeds: tenant_watch::Feeds::default(),
        });
        core.adopt().await;
        core.recover().await?;
        core.launcher.warm();
        if let Some(signals) = core.store.signals() {
            shutdown.spawn(Arc::clone(&core).follow_signals(signals));
        }
        shutdown.spawn(Arc::clone(&core).dispatch());
        shutdown.spawn(Arc::clone(&core).keep_leases());
        shutdown.spawn(Arc::clone(&core).deliver_controls());
        shutdown.spawn(Arc::clone(&core).reap_expired());
        Ok(core)
    }

    /// Ticks whenever some job's state changed (this replica's commits and, through store
    /// signals, other replicas'): what the webhook outbox waits on.
    pub fn job_changes(&self) -> watch::Receiver<u64> {
        self.events.changes()
    }

    /// Hands the started webhook outbox to the core, for `job.permission_requested` messages.
    pub fn attach_webhooks(&self, webhooks: Arc<crate::webhooks::Webhooks>) {
        let _ = self.webhooks.set(webhooks);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the host offers the jobs' sandbox.
    pub fn host_support(&self) -> &HostSupport {
        &self.host
    }

    /// Refuses new work once shutdown began.
    fn check_accepting(&self) -> Result<()> {
        if self.accepting.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::unavailable(
                Reason::ShuttingDown,
                "server is shutting down and accepts no new work",
            ))
        }
    }

    /// The drain of the job core on shutdown (steps 1–4 of the order in `shutdown`): refuse new
    /// work, stop starting jobs, give running jobs the shutdown grace period to finish on their
    /// own, cancel the rest with reason "shutdown" and wait until each has stored its final state,
    /// then let streams finish.
    pub async fn drain(&self) {
        self.accepting.store(false, Ordering::Release);
        let handles: Vec<RunHandle> = lock(&self.running).values().cloned().collect();
        let all_done = async {
            for h in &handles {
                let mut done = h.done.clone();
                let _ = done.wait_for(|d| *d).await;
            }
        };
        if tokio::time::timeout(self.config.timing.shutdown_grace, all_done)
            .await
            .is_err()
        {
            for h in &handles {
                let _ = h.reason.set("shutdown".to_owned());
                h.cancel.cancel();
            }
            for mut h in handles {
                let _ = h.done.wait_for(|d| *d).await;
            }
        }
        // No job starts any more (claims stopped with `accepting`).
        self.launcher.close();
        self.streams_stop.cancel();
    }

    /// Shutdown with `--on-shutdown keep` (issue #23): refuse new work and stop claiming jobs,
    /// but leave running ones to their supervisors; streams end so clients reconnect to the
    /// next agentd.
    pub fn leave(&self) {
        self.accepting.store(false, Ordering::Release);
        self.launcher.close();
        self.streams_stop.cancel();
    }

    /// How many jobs run here.
    pub fn running_count(&self) -> usize {
        lock(&self.running).len()
    }

    /// Cancels a running job; returns whether it was running.
    fn cancel_running(&self, job: &JobId, reason: &str) -> Option<watch::Receiver<bool>> {
        let h = lock(&self.running).get(job).cloned()?;
        let _ = h.reason.set(reason.to_owned());
        h.cancel.cancel();
        Some(h.done)
    }

    fn is_running_here(&self, job: &JobId) -> bool {
        lock(&self.running).contains_key(job)
    }
}
