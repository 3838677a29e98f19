//! `agentd.v1.WebhookService`: the caller's webhook endpoints and their delivery log. Secrets
//! leave only in the answers of CreateWebhook and RotateWebhookSecret.

use super::{convert, tenant};
use crate::error::{Error, Reason};
use crate::pb;
use crate::pb::webhook_service_server::WebhookService;
use crate::store::{DeliveryFilter, DeliveryLog, DeliveryState, WebhookEndpoint};
use crate::webhooks::Webhooks;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct WebhookApi {
    hooks: Arc<Webhooks>,
}

impl WebhookApi {
    pub fn new(hooks: Arc<Webhooks>) -> Self {
        Self { hooks }
    }
}

fn webhook(e: &WebhookEndpoint) -> pb::Webhook {
    let now = crate::domain::Timestamp::now();
    pb::Webhook {
        id: e.id.clone(),
        url: e.url.clone(),
        events: e.events.clone(),
        created: Some(convert::ts(e.created)),
        previous_secret_expires: e.old_secret_until.filter(|t| *t > now).map(convert::ts),
    }
}

fn delivery(l: DeliveryLog) -> pb::WebhookDelivery {
    let d = l.delivery;
    let state = match d.state {
        DeliveryState::Pending => pb::DeliveryState::Pending,
        DeliveryState::Delivered => pb::DeliveryState::Delivered,
        DeliveryState::Failed => pb::DeliveryState::Failed,
    };
    pb::WebhookDelivery {
        id: d.id,
        webhook_id: d.endpoint_key,
        message_id: d.msg_id,
        event_type: d.event_type,
        job_id: d.job_id,
        state: state.into(),
        created: Some(convert::ts(d.created)),
        next_attempt: (d.state == DeliveryState::Pending).then(|| convert::ts(d.next_attempt)),
        attempts: l
            .attempts
            .into_iter()
            .map(|a| pb::DeliveryAttempt {
                time: Some(convert::ts(a.time)),
                status: u32::from(a.status),
                latency_ms: a.latency_ms,
                error: a.error,
            })
            .collect(),
    }
}

fn required(v: &str, field: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(
            Error::invalid(Reason::MissingField, field, format!("{field} is required")).into(),
        );
    }
    Ok(())
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook(
        &self,
        req: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let t = tenant(&req)?;
        let r = req.into_inner();
        required(&r.url, "url")?;
        let e = self.hooks.create(&t, &r.url, &r.events).await?;
        Ok(Response::new(pb::CreateWebhookResponse {
            webhook: Some(webhook(&e)),
            secret: e.secret,
        }))
    }

    async fn list_webhooks(
        &self,
        req: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let t = tenant(&req)?;
        let all = self.hooks.list(&t).await?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: all.iter().map(webhook).collect(),
        }))
    }

    async fn delete_webhook(
        &self,
        req: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let t = tenant(&req)?;
        let r = req.into_inner();
        required(&r.webhook_id, "webhook_id")?;
        self.hooks.delete(&t, &r.webhook_id).await?;
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    async fn test_webhook(
        &self,
        req: Request<pb::TestWebhookRequest>,
    ) -> Result<Response<pb::TestWebhookResponse>, Status> {
        let t = tenant(&req)?;
        let r = req.into_inner();
        required(&r.webhook_id, "webhook_id")?;
        let sent = self.hooks.test(&t, &r.webhook_id).await?;
        Ok(Response::new(pb::TestWebhookResponse {
            status: u32::from(sent.status),
            latency_ms: u64::try_from(sent.latency.as_millis()).unwrap_or(u64::MAX),
            error: sent.error,
        }))
    }

    async fn rotate_webhook_secret(
        &self,
        req: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let t = tenant(&req)?;
        let r = req.into_inner();
        required(&r.webhook_id, "webhook_id")?;
        let e = self.hooks.rotate(&t, &r.webhook_id).await?;
        Ok(Response::new(pb::RotateWebhookSecretResponse {
            webhook: Some(webhook(&e)),
            secret: e.secret,
        }))
    }

    async fn list_webhook_deliveries(
        &self,
        req: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let t = tenant(&req)?;
        let r = req.into_inner();
        let filter = DeliveryFilter {
            endpoint_key: (!r.webhook_id.is_empty()).then_some(r.webhook_id),
            job_id: (!r.job_id.is_empty()).then_some(r.job_id),
        };
        let found = self.hooks.deliveries(&t, &filter, r.limit as usize).await?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries: found.into_iter().map(delivery).collect(),
        }))
    }
}
