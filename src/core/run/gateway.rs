//! A job's link to the model gateway: its token and the env that points the agent at it, the
//! hooks through which the gateway reports model calls, refused egress and a spent budget into
//! the job, and the running total of what it metered.

use super::BRIDGE_PORT;
use crate::agents;
use crate::core::{Core, RunHandle};
use crate::domain::{EventKind, Job, Usage};
use crate::runner::Output;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// The job's model calls through the gateway, summed as their events arrive.
#[derive(Default)]
pub(super) struct Metered {
    pub(super) total: Usage,
    calls: u64,
    /// The total changed since the job row last got it.
    pub(super) dirty: bool,
}

impl Metered {
    pub(super) fn add(&mut self, c: &crate::domain::ModelCall) {
        let t = &mut self.total;
        t.input_tokens += c.input_tokens;
        t.output_tokens += c.output_tokens;
        t.cache_read_input_tokens += c.cache_read_tokens;
        t.cache_creation_input_tokens += c.cache_write_tokens;
        if let Some(cost) = c.cost_usd {
            *t.cost_usd.get_or_insert(0.0) += cost;
        }
        self.calls += 1;
        self.dirty = true;
    }

    /// The job's usage: the gateway's metering when the job called through it, whatever the CLI
    /// reported; turns, duration (and cost, for unpriced models) from the CLI.
    pub(super) fn over(&self, reported: Usage) -> Usage {
        if self.calls == 0 {
            return reported;
        }
        Usage {
            cost_usd: self.total.cost_usd.or(reported.cost_usd),
            num_turns: reported.num_turns,
            duration_ms: reported.duration_ms,
            ..self.total.clone()
        }
    }
}

/// What the gateway tells a running job: its model calls become events in its stream, and a
/// spent budget stops it.
struct JobHooks {
    /// Weak: the job's output ends when the process's senders are gone, whatever the gateway holds.
    events: mpsc::WeakSender<Output>,
    cancel: tokio_util::sync::CancellationToken,
    reason: Arc<OnceLock<String>>,
    budget: Arc<OnceLock<String>>,
}

impl JobHooks {
    fn send(&self, kind: EventKind) {
        if let (Some(tx), Ok(rt)) = (self.events.upgrade(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = tx.send(Output::Event(kind)).await;
            });
        }
    }
}

impl crate::gateway::GrantHooks for JobHooks {
    fn model_call(&self, call: crate::domain::ModelCall) {
        self.send(EventKind::ModelCall(call));
    }

    fn egress_denied(&self, host: String, port: u16) {
        self.send(EventKind::EgressDenied { host, port });
    }

    fn budget_exceeded(&self, message: String) {
        let _ = self.budget.set(message);
        let _ = self.reason.set("budget exceeded".to_owned());
        self.cancel.cancel();
    }
}

impl Core {
    /// A gateway token for the job when its profile routes through the gateway, with the env
    /// that points the agent at it (the adapter's rewrite of `launch` included).
    pub(super) fn gateway_access(
        &self,
        job: &Job,
        launch: &mut agents::Launch,
        tx: &mpsc::Sender<Output>,
        handle: &RunHandle,
        budget: &Arc<OnceLock<String>>,
        in_netns: bool,
    ) -> Option<(crate::gateway::Access, Vec<(String, String)>)> {
        let gateway = self.gateway.as_ref()?;
        let profile = self.config.agents.get(&job.spec.agent)?;
        let (grant, allow_hosts) = self.job_grant(job, tx, handle, budget);
        let access = gateway.mint(grant)?;
        let authority = match in_netns {
            true => format!("127.0.0.1:{BRIDGE_PORT}"),
            false => gateway.addr().to_string(),
        };
        let base = access.base_url_at_authority(&authority);
        let mut env = agents::gateway::via_gateway(profile, launch, &base, &access.token);
        if !allow_hosts.is_empty() {
            // Everything else the agent runs goes through the egress proxy; the gateway itself
            // is reached directly.
            let proxy = access.proxy_url(&authority);
            for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                env.push((name.to_owned(), proxy.clone()));
            }
            for name in ["NO_PROXY", "no_proxy"] {
                env.push((name.to_owned(), "127.0.0.1,localhost".to_owned()));
            }
        }
        Some((access, env))
    }
}

impl Core {
    /// The gateway grant of a job, reporting into `tx` and `handle`, and its egress allow list.
    fn job_grant(
        &self,
        job: &Job,
        tx: &mpsc::Sender<Output>,
        handle: &RunHandle,
        budget: &Arc<OnceLock<String>>,
    ) -> (crate::gateway::Grant, Vec<String>) {
        let hooks = JobHooks {
            events: tx.downgrade(),
            cancel: handle.cancel.clone(),
            reason: handle.reason.clone(),
            budget: budget.clone(),
        };
        let mut grant = crate::gateway::Grant::new(
            job.id.clone(),
            job.tenant.clone(),
            job.session_id.clone(),
            job.spec.agent.clone(),
            (job.spec.budget.max_cost_usd, job.spec.budget.max_tokens),
            Arc::new(hooks),
        );
        let allow_hosts = self
            .config
            .sandbox
            .of(&job.spec.agent)
            .map(|s| s.allow_hosts.clone())
            .unwrap_or_default();
        grant.allow_hosts.clone_from(&allow_hosts);
        (grant, allow_hosts)
    }

    /// An adopted job's gateway token, granted again by this process's gateway (issue #23): the
    /// agent keeps calling with the token in its environment. Reaching the gateway needs the same
    /// address as before (a fixed `--gateway-listen`; jobs in their own network namespace reach
    /// it through the bridge's socket path, which does not change).
    pub(super) fn regrant(
        &self,
        job: &Job,
        token: String,
        tx: &mpsc::Sender<Output>,
        handle: &RunHandle,
        budget: &Arc<OnceLock<String>>,
    ) -> Option<crate::gateway::Access> {
        let gateway = self.gateway.as_ref()?;
        let (grant, _) = self.job_grant(job, tx, handle, budget);
        gateway.mint_as(grant, token)
    }
}
