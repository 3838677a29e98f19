//! Webhooks (issue #19): signed notifications of a tenant's job events, delivered at least once
//! from a durable outbox in the store. This module owns the endpoints' use cases (create, list,
//! delete, rotate, test, the delivery log), turning the tenant change sequence into deliveries
//! (`outbox`), sending them under the SSRF guard (`ssrf`, `send`) with Standard Webhooks
//! signatures (`sign`), and the `[webhooks]` configuration (`config`).
//!
//! Why the change sequence: each job state change is already written there in the transaction of
//! the change itself, so a per-tenant cursor over it (moved in the transaction that inserts the
//! deliveries) makes enqueueing exact across crashes and replicas without touching the job path.

pub mod config;
mod outbox;
pub mod send;
pub mod sign;
pub mod ssrf;

use crate::domain::{Job, TenantId, Timestamp};
use crate::error::{Error, Reason, Result};
use crate::shutdown::Shutdown;
use crate::store::{DeliveryFilter, DeliveryLog, DynStore, NewDelivery, WebhookEndpoint};
use config::WebhookConfig;
use std::sync::Arc;
use tokio::sync::watch;

/// Endpoints one tenant may create through the API.
pub const MAX_ENDPOINTS_PER_TENANT: usize = 32;
/// Deliveries one ListWebhookDeliveries answers at most.
pub const MAX_LIST: usize = 200;

/// The webhook use cases and the outbox's background tasks. Shared as `Arc<Webhooks>`.
pub struct Webhooks {
    store: DynStore,
    config: WebhookConfig,
    /// This replica, as the owner of the deliveries it claims.
    owner: String,
    /// Wakes the sender when deliveries were added.
    added: tokio::sync::Notify,
}

impl Webhooks {
    /// Writes the configured endpoints to the store and starts the outbox: the fan-out from the
    /// change sequence (woken by `changes`) and the sender. Both stop with `shutdown`.
    pub async fn start(
        store: DynStore,
        config: WebhookConfig,
        replica: &str,
        changes: watch::Receiver<u64>,
        shutdown: &Shutdown,
    ) -> Result<Arc<Self>> {
        for e in &config.endpoints {
            store
                .put_webhook(&WebhookEndpoint {
                    id: e.id.clone(),
                    tenant: TenantId(e.tenant.clone()),
                    url: e.url.clone(),
                    events: e.events.clone(),
                    secret: e.secret.clone(),
                    old_secret: None,
                    old_secret_until: None,
                    created: Timestamp::now(),
                })
                .await?;
        }
        let me = Arc::new(Self {
            store,
            config,
            owner: format!("{replica}/{}", uuid::Uuid::new_v4().simple()),
            added: tokio::sync::Notify::new(),
        });
        shutdown.spawn(outbox::fan_out_loop(
            me.clone(),
            changes,
            shutdown.token().clone(),
        ));
        shutdown.spawn(outbox::send_loop(me.clone(), shutdown.clone()));
        Ok(me)
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// Creates an endpoint with a new secret; the answer is the only time the secret is shown.
    pub async fn create(
        &self,
        tenant: &TenantId,
        url: &str,
        events: &[String],
    ) -> Result<WebhookEndpoint> {
        let events = config::check_events(events)
            .map_err(|m| Error::invalid(Reason::InvalidField, "events", m))?;
        self.check_receiver(url, "url").await?;
        let existing = self.store.webhooks(tenant).await?;
        if existing.len() >= MAX_ENDPOINTS_PER_TENANT {
            return Err(Error::exhausted(
                Reason::TooManyJobs,
                format!("a tenant may have at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints"),
            ));
        }
        let e = WebhookEndpoint {
            id: format!("wh_{}", uuid::Uuid::now_v7().simple()),
            tenant: tenant.clone(),
            url: url.to_owned(),
            events,
            secret: sign::new_secret(),
            old_secret: None,
            old_secret_until: None,
            created: Timestamp::now(),
        };
        self.store.put_webhook(&e).await?;
        Ok(e)
    }

    /// Checks a receiver URL's form and, resolving it now, that it is not a refused address (it is
    /// checked again at every delivery: DNS answers change).
    async fn check_receiver(&self, url: &str, field: &str) -> Result<()> {
        let uri = config::check_url(url)
            .map_err(|m| Error::invalid(Reason::InvalidField, field, format!("{field} {m}")))?;
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = uri.host().unwrap_or_default();
        self.config
            .guard
            .resolve(host, port)
            .await
            .map(|_| ())
            .map_err(|r| Error::invalid(Reason::WebhookUrlRefused, field, r.0))
    }

    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<WebhookEndpoint>> {
        self.store.webhooks(tenant).await
    }

    async fn get(&self, tenant: &TenantId, id: &str) -> Result<WebhookEndpoint> {
        self.store
            .webhooks(tenant)
            .await?
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| not_found(id))
    }

    pub async fn delete(&self, tenant: &TenantId, id: &str) -> Result<()> {
        match self.store.delete_webhook(tenant, id).await? {
            true => Ok(()),
            false => Err(not_found(id)),
        }
    }

    /// Gives the endpoint a new secret (answered once); the old one keeps signing, beside the new
    /// one, for the configured overlap.
    pub async fn rotate(&self, tenant: &TenantId, id: &str) -> Result<WebhookEndpoint> {
        let until = Timestamp::now().saturating_add(self.config.rotation_overlap);
        self.store
            .rotate_webhook_secret(tenant, id, &sign::new_secret(), until)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Sends a `webhook.test` message to the endpoint now (not through the outbox) and reports
    /// how the receiver answered.
    pub async fn test(&self, tenant: &TenantId, id: &str) -> Result<send::Sent> {
        let e = self.get(tenant, id).await?;
        let msg_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let now = Timestamp::now();
        let body = envelope(
            config::EVENT_TEST,
            now,
            serde_json::json!({ "endpoint_id": e.id }),
        );
        let body = bytes::Bytes::from(body.to_string());
        Ok(self
            .post(&e.url, &msg_id, &e.signing_secrets(now), body, now)
            .await)
    }

    pub async fn deliveries(
        &self,
        tenant: &TenantId,
        filter: &DeliveryFilter,
        limit: usize,
    ) -> Result<Vec<DeliveryLog>> {
        let limit = if limit == 0 { 50 } else { limit.min(MAX_LIST) };
        self.store.webhook_deliveries(tenant, filter, limit).await
    }

    /// The hook for permission requests (issue #17): enqueues a `job.permission_requested`
    /// message for every endpoint of the job's tenant that subscribed to it. `request_id` makes
    /// the message id, so calling twice for one request sends it once.
    pub async fn permission_requested(
        &self,
        job: &Job,
        request_id: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        let now = Timestamp::now();
        let mut data = job_data(job);
        data["permission"] = detail;
        data["request_id"] = serde_json::Value::String(request_id.to_owned());
        let payload = envelope(config::EVENT_PERMISSION, now, data).to_string();
        let msg_id = format!("msg_{}_perm_{request_id}", job.id);
        let endpoints = self.store.webhooks(&job.tenant).await?;
        let deliveries = endpoints
            .iter()
            .filter(|e| e.events.iter().any(|t| t == config::EVENT_PERMISSION))
            .map(|e| NewDelivery {
                id: format!("whd_{}", uuid::Uuid::now_v7().simple()),
                endpoint_key: e.id.clone(),
                url: e.url.clone(),
                msg_id: msg_id.clone(),
                event_type: config::EVENT_PERMISSION.to_owned(),
                job_id: job.id.to_string(),
                payload: payload.clone(),
            })
            .collect();
        self.store
            .add_webhook_deliveries(&job.tenant, deliveries)
            .await?;
        self.added.notify_one();
        Ok(())
    }

    /// Signs and POSTs one message.
    async fn post(
        &self,
        url: &str,
        msg_id: &str,
        secrets: &[&str],
        body: bytes::Bytes,
        now: Timestamp,
    ) -> send::Sent {
        let ts = now.0.div_euclid(1_000_000);
        let signature = sign::header(secrets, msg_id, ts, &body);
        let post = send::Post {
            url,
            msg_id,
            timestamp: ts,
            signature: &signature,
            body,
        };
        send::post(&self.config.guard, post, self.config.timeout).await
    }
}

fn not_found(id: &str) -> Error {
    Error::not_found(
        Reason::WebhookNotFound,
        format!("webhook endpoint {id:?} not found"),
    )
}

/// Whether a job's `webhook_url` is one the operator allows: it starts with one of the
/// configured prefixes (which end at a host or path boundary), and has a valid form.
pub fn check_job_url(config: &WebhookConfig, url: &str) -> Result<()> {
    let field = "webhook_url";
    config::check_url(url)
        .map_err(|m| Error::invalid(Reason::InvalidField, field, format!("{field} {m}")))?;
    let allowed = config.job_url_prefixes.iter().any(|p| {
        url.strip_prefix(p.as_str())
            .is_some_and(|rest| p.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?']))
    });
    if !allowed {
        return Err(Error::invalid(
            Reason::WebhookUrlNotAllowed,
            field,
            "webhook_url is not under a URL prefix the operator allows ([webhooks] \
             job_url_prefixes)",
        ));
    }
    Ok(())
}

/// The Standard Webhooks payload shape: `{type, timestamp, data}`.
pub fn envelope(kind: &str, at: Timestamp, data: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "type": kind, "timestamp": rfc3339(at), "data": data })
}

/// What a message says about a job.
pub fn job_data(job: &Job) -> serde_json::Value {
    let mut data = serde_json::json!({
        "job_id": job.id.as_str(),
        "session_id": job.session_id.as_str(),
        "agent": job.spec.agent,
        "state": job.state.name(),
        "created": rfc3339(job.created),
    });
    if let crate::domain::JobState::Finished(f) = &job.state {
        data["result"] = serde_json::Value::String(job.result.clone());
        data["message"] = serde_json::Value::String(f.outcome.message());
        data["reason"] = serde_json::Value::String(f.outcome.reason().to_owned());
        data["ended"] = serde_json::Value::String(rfc3339(f.ended));
        data["usage"] = serde_json::json!({
            "input_tokens": job.usage.input_tokens,
            "output_tokens": job.usage.output_tokens,
            "cost_usd": job.usage.cost_usd,
            "num_turns": job.usage.num_turns,
            "duration_ms": job.usage.duration_ms,
        });
    }
    data
}

/// `2026-01-02T03:04:05.678901Z`.
fn rfc3339(t: Timestamp) -> String {
    let secs = t.0.div_euclid(1_000_000);
    let micros = t.0.rem_euclid(1_000_000);
    let (y, m, d) = crate::gateway::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_urls_must_be_under_an_allowed_prefix() {
        let c = WebhookConfig {
            job_url_prefixes: vec![
                "https://hooks.example.com".into(),
                "http://a.test/in/".into(),
            ],
            ..Default::default()
        };
        for ok in [
            "https://hooks.example.com/x",
            "https://hooks.example.com",
            "http://a.test/in/job",
        ] {
            assert!(check_job_url(&c, ok).is_ok(), "{ok}");
        }
        for (bad, reason) in [
            (
                "https://hooks.example.com.evil.test/x",
                Reason::WebhookUrlNotAllowed,
            ),
            (
                "https://hooks.example.com@evil.test/x",
                Reason::InvalidField,
            ),
            ("http://a.test/other", Reason::WebhookUrlNotAllowed),
            ("ftp://hooks.example.com/x", Reason::InvalidField),
            ("not a url", Reason::InvalidField),
        ] {
            assert_eq!(
                check_job_url(&c, bad).unwrap_err().reason(),
                reason,
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(Timestamp(1_614_265_330_000_123)),
            "2021-02-25T15:02:10.000123Z"
        );
    }
}
