//! Job use cases: submit (validated, idempotent, queued), get, list, cancel and follow events.

use super::Core;
use super::sessions::validate_request_id;
use crate::domain::{
    EventKind, Finished, Job, JobBudget, JobEvent, JobId, JobSpec, JobState, Outcome, PageCursor,
    TenantId, Timestamp, Usage,
};
use crate::error::{Error, Reason, Result};
use crate::events::StreamItem;
use crate::store::{AdmitLimits, JobFilter, JobUpdate, JobWrite};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A submit request as the API edge hands it over (not yet validated against the server).
pub struct SubmitJob {
    pub session_id: String,
    pub agent: String,
    pub prompt: String,
    pub model: String,
    pub timeout_seconds: u32,
    pub env: BTreeMap<String, String>,
    pub allowed_tools: Vec<String>,
    pub max_turns: u32,
    pub append_system_prompt: String,
    pub permission_mode: String,
    pub request_id: String,
    /// 0: no budget.
    pub max_cost_usd: f64,
    /// 0: no budget.
    pub max_tokens: u64,
    /// Empty: none.
    pub webhook_url: String,
    /// A preset of the caller or of the config file; empty: none.
    pub preset: String,
    /// Values of the preset's `{{variables}}`.
    pub variables: BTreeMap<String, String>,
    /// Names from the operator's catalogs.
    pub mcp_servers: Vec<String>,
    pub subagents: Vec<String>,
    pub skills: Vec<String>,
    /// Permission rules of the job (`Tool(pattern)`), for permission_mode `ask`.
    pub allow_rules: Vec<String>,
    pub deny_rules: Vec<String>,
    /// 0: the server default.
    pub permission_timeout_seconds: u32,
    /// The capability options (#20), checked by `core::caps`; empty strings: unset.
    pub stream_deltas: bool,
    pub output_schema: String,
    pub system_prompt: String,
    pub disallowed_tools: Vec<String>,
    pub attachments: Vec<String>,
}

/// The two-way control options of a submit: rules and a timeout only make sense when the job
/// asks, and the timeout cannot outlast the longest job.
fn control(
    mode: &str,
    allow_rules: Vec<String>,
    deny_rules: Vec<String>,
    timeout_seconds: u32,
    max: Duration,
) -> Result<crate::domain::JobControl> {
    use crate::domain::permission::validate_rules;
    validate_rules("allow_rules", &allow_rules)?;
    validate_rules("deny_rules", &deny_rules)?;
    let asks = mode == crate::domain::PERMISSION_ASK;
    let field = match () {
        _ if !allow_rules.is_empty() => "allow_rules",
        _ if !deny_rules.is_empty() => "deny_rules",
        _ if timeout_seconds > 0 => "permission_timeout_seconds",
        _ => "",
    };
    if !asks && !field.is_empty() {
        return Err(Error::invalid(
            Reason::InvalidField,
            field,
            format!("{field} applies only with permission_mode \"ask\""),
        ));
    }
    let timeout = (timeout_seconds > 0).then(|| Duration::from_secs(timeout_seconds.into()));
    if timeout.is_some_and(|t| t > max) {
        return Err(Error::invalid(
            Reason::InvalidField,
            "permission_timeout_seconds",
            format!(
                "permission_timeout_seconds must be at most {}",
                max.as_secs()
            ),
        ));
    }
    Ok(crate::domain::JobControl {
        allow_rules,
        deny_rules,
        permission_timeout: timeout,
    })
}

/// A job with its live queue position.
pub struct JobView {
    pub job: Job,
    pub queue_position: Option<u32>,
    /// A RewindSession went back past this job (issue #18).
    pub rewound_past: bool,
}

/// Environment names a job may not set: the server's (`AGENTD_*`, e.g. the run marker the start-up
/// sweep looks for, which a job must not forge or clear) and the operator's.
/// Job env names that would redirect the agent's traffic, replace its provider settings or config
/// location, or load code into it: a job must not route around the gateway or the jail.
const FORBIDDEN_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "FTP_PROXY",
    "NODE_OPTIONS",
    "NODE_PATH",
    "NODE_EXTRA_CA_CERTS",
    "NODE_TLS_REJECT_UNAUTHORIZED",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "CODEX_HOME",
    "CLAUDE_CONFIG_DIR",
    "GEMINI_CLI_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PERL5LIB",
    "PERL5OPT",
    "RUBYOPT",
    "RUBYLIB",
    "BASH_ENV",
    "ENV",
    "BUN_OPTIONS",
    "DENO_CERT",
];

/// Prefixes of forbidden job env names: agentd's own, the loader's, and every provider's and
/// agent CLI's settings (`ANTHROPIC_*`, `CLAUDE_CODE_*`, `OPENAI_*`, `OPENCODE_*`, `GEMINI_*`,
/// `GOOGLE_*`, …).
const FORBIDDEN_ENV_PREFIXES: &[&str] = &[
    "AGENTD_",
    "LD_",
    "ANTHROPIC_",
    "CLAUDE_CODE_",
    "OPENAI_",
    "CODEX_",
    "OPENCODE_",
    "GEMINI_",
    "GOOGLE_",
];

/// Whether a job may not set env `name` (case-insensitive).
pub(crate) fn forbidden_env(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    FORBIDDEN_ENV.contains(&upper.as_str())
        || FORBIDDEN_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
        || upper.ends_with("_BASE_URL")
        || upper.ends_with("_API_KEY")
        || upper.ends_with("_PROXY")
}

pub(super) fn check_env(env: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in env {
        let field = format!("env[{k:?}]");
        let valid_name = !k.is_empty()
            && k.len() <= 256
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            return Err(Error::invalid(
                Reason::InvalidField,
                field,
                format!("env name {k:?} must match [A-Za-z_][A-Za-z0-9_]*"),
            ));
        }
        if forbidden_env(k) {
            return Err(Error::invalid(
                Reason::ForbiddenEnv,
                field,
                format!(
                    "env {k:?} may not be set by a job (PATH, HOME, AGENTD_*, LD_*, *_BASE_URL, \
                     *_API_KEY, provider, proxy, CA, config-location and code-loading variables \
                     belong to the server and the operator)"
                ),
            ));
        }
        if v.contains('\0') || v.len() > 64 * 1024 {
            return Err(Error::invalid(
                Reason::InvalidField,
                field,
                format!("env {k:?}: value must be under 64 KiB with no NUL byte"),
            ));
        }
    }
    Ok(())
}

/// The final event and row of a job cancelled before it started.
fn cancelled_write(job: &Job, reason: &str) -> JobWrite {
    let outcome = Outcome::Cancelled {
        reason: reason.to_owned(),
    };
    let now = Timestamp::now();
    let state = JobState::Finished(Finished {
        started: None,
        ended: now,
        outcome: outcome.clone(),
        exit: None,
    });
    let event = JobEvent {
        seq: job.last_seq + 1,
        time: now,
        raw: None,
        kind: EventKind::Finished {
            state: outcome.final_state(),
            exit: None,
            result: String::new(),
            error_message: outcome.message(),
            usage: Usage::default(),
            reason: outcome.reason().to_owned(),
        },
    };
    JobWrite {
        job_id: job.id.clone(),
        events: vec![event],
        update: Some(JobUpdate {
            state,
            result: String::new(),
            usage: Usage::default(),
            conversation_id: None,
        }),
    }
}

impl Core {
    /// A job's own webhook URL, when given: only under the operator's allowed prefixes.
    pub(super) fn job_webhook_url(&self, url: String) -> Result<Option<String>> {
        if url.is_empty() {
            return Ok(None);
        }
        crate::webhooks::check_job_url(&self.config.webhooks, &url)?;
        Ok(Some(url))
    }
}

fn budget(max_cost_usd: f64, max_tokens: u64) -> Result<JobBudget> {
    if !max_cost_usd.is_finite() || max_cost_usd < 0.0 {
        return Err(Error::invalid(
            Reason::InvalidField,
            "max_cost_usd",
            "max_cost_usd must be a finite number of dollars, at least 0",
        ));
    }
    Ok(JobBudget {
        max_cost_usd: (max_cost_usd > 0.0).then_some(max_cost_usd),
        max_tokens: (max_tokens > 0).then_some(max_tokens),
    })
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl Core {
    /// Validates and queues a job. The same `request_id` returns the job it created first.
    pub async fn submit_job(
        self: &Arc<Self>,
        tenant: &TenantId,
        req: SubmitJob,
    ) -> Result<JobView> {
        self.check_accepting()?;
        let (req, preset) = self.apply_preset(tenant, req).await?;
        if req.prompt.trim().is_empty() {
            return Err(Error::invalid(
                Reason::MissingField,
                "prompt",
                "prompt is required",
            ));
        }
        let max = self.config.limits.max_prompt_bytes;
        if req.prompt.len() > max || req.prompt.contains('\0') {
            return Err(Error::invalid(
                Reason::InvalidField,
                "prompt",
                format!("prompt must be at most {max} bytes with no NUL byte"),
            ));
        }
        let request_id = opt(req.request_id);
        validate_request_id(&request_id)?;
        check_env(&req.env)?;
        let session = self.owned_session(tenant, &req.session_id).await?;
        let agent = if req.agent.is_empty() {
            self.config.default_agent.clone()
        } else {
            req.agent
        };
        let profile = self.config.agents.get(&agent).ok_or_else(|| {
            Error::invalid(
                Reason::UnknownAgent,
                "agent",
                format!(
                    "unknown agent {agent:?}; configured: {}",
                    self.config
                        .agents
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let limits = &self.config.limits;
        let timeout = match req.timeout_seconds {
            0 => limits.job_timeout_default,
            s if Duration::from_secs(s.into()) > limits.job_timeout_max => {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    "timeout_seconds",
                    format!(
                        "timeout_seconds {s} exceeds the server maximum of {}",
                        limits.job_timeout_max.as_secs()
                    ),
                ));
            }
            s => Duration::from_secs(s.into()),
        };
        for (i, t) in req.allowed_tools.iter().enumerate() {
            if t.is_empty() || t.len() > 256 || t.chars().any(char::is_control) {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    format!("allowed_tools[{i}]"),
                    format!("allowed_tools[{i}] must be 1-256 printable characters"),
                ));
            }
        }
        let spec = JobSpec {
            agent,
            prompt: req.prompt,
            model: opt(req.model),
            timeout,
            env: req.env,
            allowed_tools: req.allowed_tools,
            max_turns: (req.max_turns > 0).then_some(req.max_turns),
            append_system_prompt: opt(req.append_system_prompt),
            permission_mode: opt(req.permission_mode.clone()),
            budget: budget(req.max_cost_usd, req.max_tokens)?,
            webhook_url: self.job_webhook_url(req.webhook_url)?,
            control: control(
                req.permission_mode.as_str(),
                req.allow_rules,
                req.deny_rules,
                req.permission_timeout_seconds,
                limits.job_timeout_max,
            )?,
            catalog: crate::domain::CatalogSelection {
                preset,
                mcp_servers: req.mcp_servers,
                subagents: req.subagents,
                skills: req.skills,
            },
            caps: super::caps::job_caps(
                req.stream_deltas,
                req.output_schema,
                req.system_prompt,
                req.disallowed_tools,
                req.attachments,
            )?,
        };
        crate::agents::validate(profile, &spec)?;
        self.check_catalog_selection(profile, &spec)?;
        self.check_attachments(&session.id, &spec.caps).await?;
        let budgeted = spec.budget.max_cost_usd.is_some() || spec.budget.max_tokens.is_some();
        if budgeted && !self.config.gateway.upstreams.contains_key(&spec.agent) {
            // Only calls through the gateway are metered: a budget elsewhere would never hold.
            let field = match spec.budget.max_cost_usd {
                Some(_) => "max_cost_usd",
                None => "max_tokens",
            };
            return Err(Error::invalid(
                Reason::UnsupportedOption,
                field,
                format!(
                    "agent {:?} has no [gateway]: its model calls cannot be budgeted",
                    spec.agent
                ),
            ));
        }
        if self.is_deleting(&session.id) {
            return Err(Error::session_not_found(&req.session_id));
        }
        let now = Timestamp::now();
        let job = Job {
            id: JobId::generate(),
            session_id: session.id.clone(),
            tenant: tenant.clone(),
            spec,
            created: now,
            state: JobState::Queued,
            request_id,
            result: String::new(),
            usage: Usage::default(),
            conversation_id: None,
            last_seq: 0,
        };
        // The store checks the queue and tenant limits in the insert's transaction, so they
        // hold across replicas.
        let admit = AdmitLimits {
            max_queued_in_session: limits.max_queued_jobs_per_session,
            max_active_for_tenant: limits.tenant_max_active_jobs,
        };
        let insert = self.store.create_job(
            &job,
            now.saturating_add(session.ttl).max(session.expires),
            &admit,
        );
        // A store with one writer commits what is queued together (SQLite): a claim queued right
        // behind the insert shares its commit, and the job starts without waiting for the
        // dispatcher's own claim (a commit and a wake-up later). Shared stores leave it to the
        // dispatcher, where the claim would run beside the uncommitted insert and find nothing.
        let turn = if self.store.shared() {
            None
        } else {
            self.dispatching.try_lock().ok()
        };
        let (stored, started_now) = match turn {
            Some(_turn) => {
                let (stored, claims) = tokio::join!(insert, self.claim_free());
                let claims = claims.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot claim jobs");
                    Vec::new()
                });
                let mine = claims.iter().any(|c| c.job.id == job.id);
                for c in claims {
                    self.start_claimed(c);
                }
                (stored?, mine)
            }
            None => (insert.await?, false),
        };
        if stored.id == job.id {
            self.events.job_changed();
        }
        if stored.id == job.id && !started_now {
            self.wake.notify_one();
        }
        if started_now {
            // Claimed in the insert's own commit and starting: first in line, which the store
            // would say too (a claimed job stays QUEUED until its start is stored). Not asked, so
            // the store's readers leave the CPU to the start that is under way.
            return Ok(JobView {
                job: stored,
                queue_position: Some(1),
                rewound_past: false,
            });
        }
        self.job_view(stored).await
    }

    pub(super) async fn job_view(&self, job: Job) -> Result<JobView> {
        let queue_position = match job.state {
            JobState::Queued => self.store.queue_position(&job.id).await?,
            _ => None,
        };
        Ok(JobView {
            job,
            queue_position,
            rewound_past: false,
        })
    }

    pub(super) async fn owned_job(&self, tenant: &TenantId, id: &str) -> Result<Job> {
        if id.is_empty() {
            return Err(Error::invalid(
                Reason::MissingField,
                "job_id",
                "job_id is required",
            ));
        }
        let parsed = JobId::parse(id).ok_or_else(|| Error::job_not_found(id))?;
        match self.store.get_job(&parsed).await? {
            Some(j) if &j.tenant == tenant => Ok(j),
            _ => Err(Error::job_not_found(id)),
        }
    }

    pub async fn get_job(&self, tenant: &TenantId, id: &str) -> Result<JobView> {
        let job = self.owned_job(tenant, id).await?;
        let mut view = self.job_view(job).await?;
        if view.job.state.is_finished() {
            let marks = self.store.rewound_jobs(&view.job.session_id).await?;
            view.rewound_past = marks.contains(&view.job.id);
        }
        Ok(view)
    }

    pub async fn list_jobs(
        &self,
        tenant: &TenantId,
        session_id: &str,
        filter: &JobFilter,
        after: Option<PageCursor>,
        limit: usize,
    ) -> Result<(Vec<JobView>, Option<PageCursor>)> {
        let session = self.owned_session(tenant, session_id).await?;
        let rows = self
            .store
            .list_jobs(&session.id, filter, after.as_ref(), limit + 1)
            .await?;
        let (rows, next) = super::paginate(rows, limit, |j| PageCursor {
            created: j.created,
            id: j.id.to_string(),
        });
        let marks = self.store.rewound_jobs(&session.id).await?;
        let mut views = Vec::with_capacity(rows.len());
        for j in rows {
            let mut view = self.job_view(j).await?;
            view.rewound_past = marks.contains(&view.job.id);
            views.push(view);
        }
        Ok((views, next))
    }

    /// Cancels a job. A queued job nobody claimed ends at once; a running one (on this replica or
    /// another) is signalled and this returns after its final state is stored. Cancelling an
    /// already cancelled job is a no-op.
    pub async fn cancel_job(&self, tenant: &TenantId, id: &str) -> Result<JobView> {
        let job = self.owned_job(tenant, id).await?;
        if let JobState::Finished(f) = &job.state {
            return match f.outcome {
                Outcome::Cancelled { .. } => self.job_view(job).await,
                _ => Err(Error::precondition(
                    Reason::JobFinished,
                    format!("job {id} already finished as {}", job.state.name()),
                )),
            };
        }
        self.cancel(&job, "cancelled by request").await?;
        let job = self.owned_job(tenant, id).await?;
        self.job_view(job).await
    }

    /// Cancels an unfinished job wherever it is and waits (bounded) until it has ended. Returns
    /// whether it ended cancelled by this call's doing (not already finished).
    pub(super) async fn cancel(&self, job: &Job, reason: &str) -> Result<bool> {
        if matches!(job.state, JobState::Queued)
            && self
                .store
                .finish_unclaimed(cancelled_write(job, reason))
                .await?
        {
            self.events.notify(&job.id, job.last_seq + 1);
            self.events.job_changed();
            crate::telemetry::metrics().job_finished("CANCELLED", None);
            // The session's next job may start now.
            self.wake.notify_one();
            return Ok(true);
        }
        // Claimed or running, here or elsewhere. The request is recorded first, so an owner that
        // claims or starts the job after this point still sees it.
        self.store.request_cancel(&job.id, reason).await?;
        if let Some(mut done) = self.cancel_running(&job.id, reason) {
            let _ = done.wait_for(|d| *d).await;
            return Ok(true);
        }
        let wait = self.config.timing.kill_grace
            + self.config.timing.lease
            + super::REMOTE_CANCEL_WAIT_EXTRA;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.store.get_job(&job.id).await? {
                Some(j) if !j.state.is_finished() => {}
                _ => return Ok(true),
            }
            // Claimed by this replica after the request: stop it here.
            if let Some(mut done) = self.cancel_running(&job.id, reason) {
                let _ = done.wait_for(|d| *d).await;
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Follows a job's events after `after_seq` (replay, then live, ending after `finished`).
    pub async fn stream_events(
        &self,
        tenant: &TenantId,
        id: &str,
        after_seq: u64,
    ) -> Result<mpsc::Receiver<Result<StreamItem>>> {
        let job = self.owned_job(tenant, id).await?;
        if job.state.is_finished() && after_seq >= job.last_seq {
            // Nothing will ever follow: end at once instead of waiting.
            let (_, rx) = mpsc::channel(1);
            return Ok(rx);
        }
        Ok(self.events.follow(
            job.id,
            after_seq,
            self.config.timing.stream_keepalive,
            self.streams_stop.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_owned(), "v".to_owned())])
    }

    #[test]
    fn env_rules() {
        for bad in [
            "PATH",
            "HOME",
            "LD_PRELOAD",
            "ANTHROPIC_BASE_URL",
            "OPENAI_API_KEY",
            "path",
            "AGENTD_RUN_TOKEN",
            "agentd_supervise_no_ns",
        ] {
            let e = check_env(&env(bad)).unwrap_err();
            assert_eq!(e.reason(), Reason::ForbiddenEnv, "{bad}");
        }
        for bad in ["", "1X", "A-B", "A B"] {
            assert_eq!(
                check_env(&env(bad)).unwrap_err().reason(),
                Reason::InvalidField,
                "{bad:?}"
            );
        }
        assert!(check_env(&env("MY_SETTING")).is_ok());
        assert!(check_env(&env("API_KEY_HINT")).is_ok());
    }
}
