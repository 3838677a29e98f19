//! `agentd webhooks create|list|delete|rotate|test|deliveries`: the caller's own webhook endpoints
//! and their delivery log (WebhookService, issue #19). A new or rotated secret is printed once,
//! as the server answers it once.

use super::conn::{CliError, Conn};
use super::exit;
use super::render::{self, Printer};
use crate::pb;
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Create an endpoint; prints its id and its signing secret (shown only now).
    Create {
        /// Where to POST: an http(s) URL the server's SSRF guard allows.
        url: String,
        /// An event type to send (repeatable): job.finished (the default), job.started,
        /// job.permission_requested.
        #[arg(long = "event", value_name = "TYPE")]
        events: Vec<String>,
    },
    /// List your endpoints.
    #[command(visible_alias = "ls")]
    List,
    /// Delete an endpoint.
    #[command(visible_alias = "rm")]
    Delete { webhook_id: String },
    /// Give an endpoint a new secret (printed once); the old one keeps signing for a while.
    Rotate { webhook_id: String },
    /// POST a signed `webhook.test` message now and show how the receiver answered.
    Test { webhook_id: String },
    /// The delivery log, newest first: attempts, status and latency.
    Deliveries {
        /// Only this endpoint's deliveries.
        webhook_id: Option<String>,
        /// Only deliveries about this job.
        #[arg(long = "job", value_name = "JOB_ID")]
        job_id: Option<String>,
        /// At most this many (server default 50, at most 200).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
}

fn hook_json(w: &pb::Webhook) -> serde_json::Value {
    json!({"type": "webhook", "id": w.id, "url": w.url, "events": w.events,
           "created": render::fmt_time(w.created.as_ref()),
           "previous_secret_expires": w.previous_secret_expires.as_ref().map(|t| render::fmt_time(Some(t)))})
}

fn delivery_state(s: i32) -> &'static str {
    match pb::DeliveryState::try_from(s) {
        Ok(pb::DeliveryState::Pending) => "pending",
        Ok(pb::DeliveryState::Delivered) => "delivered",
        Ok(pb::DeliveryState::Failed) => "failed",
        _ => "unknown",
    }
}

fn delivery_json(d: &pb::WebhookDelivery) -> serde_json::Value {
    let attempts: Vec<_> = d
        .attempts
        .iter()
        .map(|a| {
            json!({"time": render::fmt_time(a.time.as_ref()), "status": a.status,
                   "latency_ms": a.latency_ms, "error": a.error})
        })
        .collect();
    json!({"type": "delivery", "id": d.id, "webhook_id": d.webhook_id, "message_id": d.message_id,
           "event_type": d.event_type, "job_id": d.job_id, "state": delivery_state(d.state),
           "created": render::fmt_time(d.created.as_ref()), "attempts": attempts})
}

fn delivery_row(d: &pb::WebhookDelivery) -> Vec<String> {
    let last = d.attempts.last();
    vec![
        d.id.clone(),
        d.webhook_id.clone(),
        d.event_type.clone(),
        d.job_id.clone(),
        delivery_state(d.state).into(),
        d.attempts.len().to_string(),
        last.map_or("-".into(), |a| match a.status {
            0 => "-".into(),
            s => s.to_string(),
        }),
        last.map_or("-".into(), |a| format!("{}ms", a.latency_ms)),
        last.map_or(String::new(), |a| render::one_line(&a.error, 60)),
    ]
}

/// Prints a created or rotated endpoint and its one-time secret.
async fn secret_out(p: &mut Printer, json: bool, w: &pb::Webhook, secret: &str) {
    if json {
        let mut v = hook_json(w);
        v["secret"] = json!(secret);
        p.json(&v).await;
    } else {
        p.line(&format!("{}\nsecret: {secret}  (shown only now)", w.id))
            .await;
    }
}

pub(super) async fn webhooks(
    conn: &Conn,
    json: bool,
    cmd: WebhooksCommand,
    p: &mut Printer,
) -> Result<i32, CliError> {
    let mut c = conn.webhooks();
    match cmd {
        WebhooksCommand::Create { url, events } => {
            let r = c
                .create_webhook(pb::CreateWebhookRequest { url, events })
                .await
                .map_err(CliError::rpc("creating the webhook"))?
                .into_inner();
            secret_out(p, json, &r.webhook.unwrap_or_default(), &r.secret).await;
        }
        WebhooksCommand::List => {
            let list = c
                .list_webhooks(pb::ListWebhooksRequest {})
                .await
                .map_err(CliError::rpc("listing webhooks"))?
                .into_inner()
                .webhooks;
            let header = ["WEBHOOK", "URL", "EVENTS", "CREATED"];
            p.listing(json, &list, hook_json, &header, |w| {
                vec![
                    w.id.clone(),
                    w.url.clone(),
                    w.events.join(","),
                    render::fmt_time(w.created.as_ref()),
                ]
            })
            .await;
        }
        WebhooksCommand::Delete { webhook_id } => {
            c.delete_webhook(pb::DeleteWebhookRequest {
                webhook_id: webhook_id.clone(),
            })
            .await
            .map_err(CliError::rpc("deleting the webhook"))?;
            if json {
                p.json(&json!({"type": "deleted", "webhook": webhook_id}))
                    .await;
            }
        }
        WebhooksCommand::Rotate { webhook_id } => {
            let r = c
                .rotate_webhook_secret(pb::RotateWebhookSecretRequest { webhook_id })
                .await
                .map_err(CliError::rpc("rotating the webhook's secret"))?
                .into_inner();
            secret_out(p, json, &r.webhook.unwrap_or_default(), &r.secret).await;
        }
        WebhooksCommand::Test { webhook_id } => {
            let r = c
                .test_webhook(pb::TestWebhookRequest { webhook_id })
                .await
                .map_err(CliError::rpc("testing the webhook"))?
                .into_inner();
            return Ok(test_out(p, json, &r).await);
        }
        WebhooksCommand::Deliveries {
            webhook_id,
            job_id,
            limit,
        } => {
            let list = c
                .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                    webhook_id: webhook_id.unwrap_or_default(),
                    job_id: job_id.unwrap_or_default(),
                    limit,
                })
                .await
                .map_err(CliError::rpc("listing webhook deliveries"))?
                .into_inner()
                .deliveries;
            let header = [
                "DELIVERY", "WEBHOOK", "EVENT", "JOB", "STATE", "ATTEMPTS", "STATUS", "LATENCY",
                "ERROR",
            ];
            p.listing(json, &list, delivery_json, &header, delivery_row)
                .await;
        }
    }
    Ok(exit::OK)
}

/// A test that the receiver did not take (no 2xx) exits with OTHER, so scripts can check it.
async fn test_out(p: &mut Printer, json: bool, r: &pb::TestWebhookResponse) -> i32 {
    let ok = (200..300).contains(&r.status);
    if json {
        p.json(&json!({"type": "test", "ok": ok, "status": r.status,
                        "latency_ms": r.latency_ms, "error": r.error}))
            .await;
    } else if ok {
        p.line(&format!(
            "delivered: HTTP {} in {}ms",
            r.status, r.latency_ms
        ))
        .await;
    } else {
        let why = if r.error.is_empty() {
            format!("HTTP {}", r.status)
        } else {
            r.error.clone()
        };
        p.line(&format!("not delivered: {why} ({}ms)", r.latency_ms))
            .await;
    }
    if ok { exit::OK } else { exit::OTHER }
}
