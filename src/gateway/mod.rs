//! The model gateway: agentd's own HTTP endpoint for the model APIs the agent CLIs speak
//! (Anthropic Messages, OpenAI Responses and Chat Completions, Gemini generateContent and
//! streamGenerateContent) under `/gw/<profile>/…`. It owns the per-job tokens (minted when a job
//! starts, revoked when it ends, valid only for the job's profile), the forwarding to each
//! profile's upstream with the real provider key added on the way out, the metering of every
//! answer as it streams past, the per-call record (a `model_call` event in the job's stream and a
//! row of the usage ledger in the store) and the budgets checked before each call.
//!
//! The agent only ever holds its job token and the gateway's base URL; the provider key stays in
//! this process's memory.

pub mod config;
mod egress;
pub mod meter;
mod proxy;
pub(crate) mod upstream;

pub use crate::domain::civil_from_days;
use crate::domain::{JobId, ModelCall, SessionId, TenantId, Timestamp};
use crate::store::{DynStore, UsageFilter};
use config::GatewayConfig;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Api, Budgets, FileGateway, Price, Upstream};

/// What the gateway tells the job that owns a token.
pub trait GrantHooks: Send + Sync {
    /// A model call of the job ended (answered, failed or cut off).
    fn model_call(&self, call: ModelCall);
    /// A budget is spent: the call was refused, and the job must end `BUDGET_EXCEEDED`.
    fn budget_exceeded(&self, message: String);
    /// The egress proxy refused a connection to a host outside the profile's `allow_hosts`.
    fn egress_denied(&self, host: String, port: u16);
}

/// A running job's right to call its profile's upstream.
pub struct Grant {
    pub job: JobId,
    pub tenant: TenantId,
    pub session: SessionId,
    pub profile: String,
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    pub hooks: Arc<dyn GrantHooks>,
    /// Hosts the egress proxy may connect the job to.
    pub allow_hosts: Vec<String>,
    /// What the job's calls cost so far (tokens, USD).
    spent: Mutex<(u64, f64)>,
}

impl Grant {
    pub fn new(
        job: JobId,
        tenant: TenantId,
        session: SessionId,
        profile: String,
        limits: (Option<f64>, Option<u64>),
        hooks: Arc<dyn GrantHooks>,
    ) -> Self {
        Self {
            job,
            tenant,
            session,
            profile,
            max_cost_usd: limits.0,
            max_tokens: limits.1,
            hooks,
            allow_hosts: Vec::new(),
            spent: Mutex::new((0, 0.0)),
        }
    }

    fn spent(&self) -> (u64, f64) {
        *self.spent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What an agent is given instead of a key. Revokes the token when dropped.
pub struct Access {
    pub token: String,
    /// `http://127.0.0.1:<port>/gw/<profile>` (the host's loopback; a job in its own network
    /// namespace uses [`Access::base_url_at_authority`] instead).
    pub base_url: String,
    profile: String,
    gateway: Arc<Gateway>,
}

impl Access {
    /// The egress proxy URL for the job's `HTTPS_PROXY`, at `authority` (`host:port`).
    pub fn proxy_url(&self, authority: &str) -> String {
        format!("http://agentd:{}@{authority}", self.token)
    }

    /// The base URL at `authority` (`host:port`): the gateway's own listener, or the bridge in
    /// the job's network namespace.
    pub fn base_url_at_authority(&self, authority: &str) -> String {
        format!("http://{authority}/gw/{}", self.profile)
    }

    /// The real key of the job's upstream, only to scrub it from anything the job may see.
    pub fn key(&self) -> &str {
        self.gateway.key_of(&self.profile).unwrap_or_default()
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        self.gateway.lock().remove(&self.token);
    }
}

/// The gateway of one agentd process.
pub struct Gateway {
    config: GatewayConfig,
    store: DynStore,
    addr: SocketAddr,
    /// The unix socket jobs in their own network namespace reach through their bridge.
    socket: std::path::PathBuf,
    grants: Mutex<HashMap<String, Arc<Grant>>>,
    /// Per tenant, what finished calls spent that the ledger does not hold yet (tokens, USD), so
    /// a budget check between a call's end and its ledger row still counts it.
    unledgered: Arc<Mutex<HashMap<TenantId, (u64, f64)>>>,
    /// Held for reading across a budget check's ledger query and its read of `unledgered`, and
    /// for writing while a row moves from `unledgered` into the ledger: otherwise a check could
    /// query the ledger just before a row lands and read `unledgered` just after it left, and
    /// miss that call entirely (a sequential agent got one call over its budget).
    ledger_move: Arc<tokio::sync::RwLock<()>>,
    /// Longest wait for the upstream's response headers, and between two chunks of its body.
    timeout: std::time::Duration,
}

impl Gateway {
    /// Binds the gateway's listeners (TCP on `listen`, and the unix socket `socket`, which it
    /// replaces) and serves them until `stop`.
    pub async fn start(
        config: GatewayConfig,
        store: DynStore,
        (listen, socket): (SocketAddr, std::path::PathBuf),
        timeout: std::time::Duration,
        stop: CancellationToken,
    ) -> std::io::Result<Arc<Gateway>> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        if let Some(dir) = socket.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let _ = tokio::fs::remove_file(&socket).await;
        let unix = bind_unix(&socket).await?;
        // Jailed ids connect through the bridge: the job token is what authorises a call.
        tokio::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .await?;
        let gw = Arc::new(Gateway {
            config,
            store,
            addr,
            socket,
            grants: Mutex::new(HashMap::new()),
            unledgered: Arc::default(),
            ledger_move: Arc::default(),
            timeout,
        });
        tracing::info!(%addr, "model gateway listening");
        tokio::spawn(proxy::serve(gw.clone(), listener, stop.clone()));
        tokio::spawn(proxy::serve_unix(gw.clone(), unix, stop));
        Ok(gw)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Whether `profile` is routed through the gateway.
    pub fn routes(&self, profile: &str) -> bool {
        self.config.upstreams.contains_key(profile)
    }

    /// The upstream key of `profile`, for scrubbing it from anything a job could see.
    pub fn key_of(&self, profile: &str) -> Option<&str> {
        self.config.upstreams.get(profile).map(|u| u.key.expose())
    }

    /// Mints a token for a job that is about to start. `None` if the profile has no gateway.
    pub fn mint(self: &Arc<Self>, grant: Grant) -> Option<Access> {
        let token = format!(
            "agj_{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.mint_as(grant, token)
    }

    /// Grants `token` again, after a restart, to the adopted job whose agent holds it in its
    /// environment (issue #23). `None` if the profile has no gateway.
    pub fn mint_as(self: &Arc<Self>, grant: Grant, token: String) -> Option<Access> {
        if !self.routes(&grant.profile) {
            return None;
        }
        let base_url = format!("http://{}/gw/{}", self.addr, grant.profile);
        let profile = grant.profile.clone();
        self.lock().insert(token.clone(), Arc::new(grant));
        Some(Access {
            token,
            base_url,
            profile,
            gateway: self.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Grant>>> {
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn grant(&self, token: &str) -> Option<Arc<Grant>> {
        self.lock().get(token).cloned()
    }

    /// Refuses a call when a budget of its job or tenant is spent (the message says which).
    async fn admit(&self, grant: &Grant) -> Result<(), String> {
        let (tokens, usd) = grant.spent();
        if grant.max_tokens.is_some_and(|m| tokens >= m) {
            return Err(format!("the job's token budget ({tokens} used) is spent"));
        }
        if grant.max_cost_usd.is_some_and(|m| usd >= m) {
            return Err(format!("the job's cost budget (${usd:.4} used) is spent"));
        }
        let b = self.config.budgets;
        let now = Timestamp::now().micros();
        let session = Some(grant.session.clone());
        for (whose, since, session, usd_max, tok_max) in [
            (
                "tenant's daily",
                day_start(now),
                None,
                b.tenant_daily_usd,
                b.tenant_daily_tokens,
            ),
            (
                "tenant's monthly",
                month_start(now),
                None,
                b.tenant_monthly_usd,
                b.tenant_monthly_tokens,
            ),
            (
                "session's",
                i64::MIN,
                session,
                b.session_usd,
                b.session_tokens,
            ),
        ] {
            if usd_max <= 0.0 && tok_max == 0 {
                continue;
            }
            let filter = UsageFilter {
                since: Timestamp(since),
                until: Timestamp(i64::MAX),
                group: None,
                session,
            };
            let moving = self.ledger_move.read().await;
            let spent = match self.store.usage(&grant.tenant, &filter).await {
                Ok(rows) => rows.into_iter().next().unwrap_or_default(),
                // Fail closed: a budget that cannot be checked is not granted.
                Err(e) => return Err(format!("the budget cannot be checked: {e}")),
            };
            // Calls that ended but are not in the ledger yet count too (all of the tenant's:
            // for a session budget that errs on the safe side).
            let (pending_tokens, pending_usd) = self
                .unledgered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&grant.tenant)
                .copied()
                .unwrap_or_default();
            drop(moving);
            if (usd_max > 0.0 && spent.cost_usd + pending_usd >= usd_max)
                || (tok_max > 0 && spent.tokens() + pending_tokens >= tok_max)
            {
                return Err(format!("the {whose} budget is spent"));
            }
        }
        Ok(())
    }

    /// Records a finished call: the job's running total, its event, the ledger row. The row is
    /// written by the returned future; the caller awaits it before the agent sees the end of the
    /// answer, so the job's next call (and any replica's budget check after it) finds it in the
    /// store. Until it is written the call counts in this replica's unledgered total.
    fn record(&self, grant: &Grant, mut call: ModelCall) -> Settle {
        call.cost_usd = self.config.prices.get(&call.model).map(|p| {
            let t = meter::Tokens {
                input: call.input_tokens,
                output: call.output_tokens,
                cache_read: call.cache_read_tokens,
                cache_write: call.cache_write_tokens,
            };
            t.cost(p)
        });
        {
            let mut spent = grant.spent.lock().unwrap_or_else(|e| e.into_inner());
            spent.0 += call.tokens();
            spent.1 += call.cost_usd.unwrap_or(0.0);
        }
        crate::telemetry::metrics().model_call(
            grant.tenant.as_str(),
            &call.model,
            call.tokens(),
            call.cost_usd,
        );
        grant.hooks.model_call(call.clone());
        let row = crate::store::LedgerRow {
            tenant: grant.tenant.clone(),
            session: grant.session.clone(),
            job: grant.job.clone(),
            agent: grant.profile.clone(),
            call,
        };
        let spent = (row.call.tokens(), row.call.cost_usd.unwrap_or(0.0));
        pending(&self.unledgered, &row.tenant, spent, 1.0);
        let (store, unledgered) = (self.store.clone(), self.unledgered.clone());
        let moving = self.ledger_move.clone();
        Box::pin(async move {
            let _moving = moving.write().await;
            if let Err(e) = store.record_model_call(&row).await {
                tracing::error!(job = %row.job, error = %e, "cannot record a model call in the ledger");
            }
            pending(&unledgered, &row.tenant, spent, -1.0);
        })
    }
}

/// The write of a call's ledger row (see [`Gateway::record`]).
pub type Settle = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Writes a ledger row no one waits for (the agent hung up, or the call never got an answer).
fn settle_detached(settle: Settle) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(settle);
    }
}

/// Adds (`sign` 1) or removes (-1) a call's spend from the tenant's not-yet-ledgered total.
fn pending(
    map: &Mutex<HashMap<TenantId, (u64, f64)>>,
    tenant: &TenantId,
    (tokens, usd): (u64, f64),
    sign: f64,
) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let entry = map.entry(tenant.clone()).or_default();
    if sign > 0.0 {
        entry.0 += tokens;
    } else {
        entry.0 = entry.0.saturating_sub(tokens);
    }
    entry.1 = (entry.1 + sign * usd).max(0.0);
    if entry.0 == 0 && entry.1 == 0.0 {
        map.remove(tenant);
    }
}

const DAY_MICROS: i64 = 86_400_000_000;

/// Start of the UTC day of `micros`.
pub fn day_start(micros: i64) -> i64 {
    micros - micros.rem_euclid(DAY_MICROS)
}

/// Start of the UTC month of `micros`.
pub fn month_start(micros: i64) -> i64 {
    let days = micros.div_euclid(DAY_MICROS);
    let (_, _, day) = civil_from_days(days);
    (days - i64::from(day) + 1) * DAY_MICROS
}

/// Binds `socket` through its directory's descriptor: the data dir may be too long for a socket
/// path.
async fn bind_unix(socket: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    let dir = socket
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let name = socket
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fd = tokio::task::spawn_blocking(move || crate::runner::sockpath::open_dir(&dir))
        .await
        .map_err(std::io::Error::other)??;
    tokio::net::UnixListener::bind(crate::runner::sockpath::via(&fd, &name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_utc_midnight_and_the_first_of_the_month() {
        // 2026-12-05T19:20:00Z
        let t = 1_796_498_400_000_000;
        assert_eq!(day_start(t), 1_796_428_800_000_000); // 2026-12-05T00:00Z
        assert_eq!(month_start(t), 1_796_083_200_000_000); // 2026-12-01T00:00Z
        assert_eq!(month_start(0), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_792), (2026, 12, 5));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
