//! The outbox's two loops. The fan-out turns each tenant's new job changes into deliveries (one
//! per subscribed endpoint, plus the job's own `webhook_url`) and moves the tenant's cursor in
//! the same store transaction. The sender claims due deliveries under a lease (never more than
//! `per_endpoint_concurrency` per receiver, `max_concurrency` in all), posts each in its own task
//! under a timeout, and records the attempt: delivered, retried later with exponential backoff
//! and jitter, or failed once the retry period is over. A replica that dies mid-send leaves a
//! lease that runs out; the message is then sent again (at least once).

use super::{Webhooks, config, envelope, job_data};
use crate::domain::{JobState, TenantId, Timestamp};
use crate::error::{Reason, Result};
use crate::shutdown::Shutdown;
use crate::store::{Attempt, AttemptOutcome, Delivery, NewDelivery};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// Tenants looked at per fan-out round, and changes read per tenant at a time.
const BACKLOG_BATCH: usize = 64;
const CHANGES_BATCH: usize = 256;
/// How often both loops look at the store without a wake-up (retries come due by time; signals
/// may be lost).
const POLL: Duration = Duration::from_millis(200);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

pub(super) async fn fan_out_loop(
    me: Arc<Webhooks>,
    mut changes: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    loop {
        match fan_out_round(&me).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "webhook fan-out failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// One pass over the tenants with new changes; `true` when there may be more right away.
async fn fan_out_round(me: &Webhooks) -> Result<bool> {
    let backlog = me.store.webhook_backlog(BACKLOG_BATCH).await?;
    let mut more = backlog.len() == BACKLOG_BATCH;
    for (tenant, cursor) in backlog {
        more |= fan_out(me, &tenant, cursor).await?;
    }
    Ok(more)
}

/// Enqueues the deliveries of the tenant's changes after `cursor`; `true` if it read a full batch.
async fn fan_out(me: &Webhooks, tenant: &TenantId, cursor: u64) -> Result<bool> {
    // Read before the changes: if every change after the cursor belongs to a deleted job, the
    // cursor may move up to here and no further.
    let last = me.store.last_change(tenant).await?;
    let changes = match me.store.read_changes(tenant, cursor, CHANGES_BATCH).await {
        Ok(c) => c,
        Err(e) if e.reason() == Reason::CursorExpired => {
            tracing::warn!(tenant = %tenant.as_str(), "webhook cursor behind retention; skipping");
            me.store
                .enqueue_webhooks(tenant, cursor, last, vec![])
                .await?;
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let Some(to) = changes.last().map(|c| c.seq) else {
        me.store
            .enqueue_webhooks(tenant, cursor, last, vec![])
            .await?;
        return Ok(false);
    };
    let endpoints = me.store.webhooks(tenant).await?;
    let mut out = Vec::new();
    for c in &changes {
        let (kind, short) = match c.job.state {
            JobState::Running { .. } => (config::EVENT_STARTED, "started"),
            JobState::Finished(_) => (config::EVENT_FINISHED, "finished"),
            JobState::Queued => continue,
        };
        let msg_id = format!("msg_{}_{short}", c.job.id);
        let payload = envelope(kind, c.time, job_data(&c.job)).to_string();
        let new = |key: String, url: &str| NewDelivery {
            id: format!("whd_{}", uuid::Uuid::now_v7().simple()),
            endpoint_key: key,
            url: url.to_owned(),
            msg_id: msg_id.clone(),
            event_type: kind.to_owned(),
            job_id: c.job.id.to_string(),
            payload: payload.clone(),
        };
        // An endpoint hears of what happened after it was created, not before.
        for e in &endpoints {
            if e.created <= c.time && e.events.iter().any(|t| t == kind) {
                out.push(new(e.id.clone(), &e.url));
            }
        }
        if let (Some(url), config::EVENT_FINISHED) = (&c.job.spec.webhook_url, kind) {
            out.push(new(format!("job:{}", c.job.id), url));
        }
    }
    let added = !out.is_empty();
    if me.store.enqueue_webhooks(tenant, cursor, to, out).await? && added {
        me.added.notify_one();
    }
    Ok(changes.len() == CHANGES_BATCH)
}

pub(super) async fn send_loop(me: Arc<Webhooks>, shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(me.config.max_concurrency));
    let stop = shutdown.token().clone();
    loop {
        let free = slots.available_permits();
        let claimed = match free {
            0 => Vec::new(),
            _ => claim(&me, free).await,
        };
        let full = free > 0 && claimed.len() == free;
        for d in claimed {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let (me, stop) = (me.clone(), stop.clone());
            shutdown.spawn(async move {
                tokio::select! {
                    // The lease runs out and the message is sent again by whoever is there.
                    _ = stop.cancelled() => {}
                    _ = deliver(&me, d) => {}
                }
                drop(permit);
            });
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = me.added.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn claim(me: &Webhooks, n: usize) -> Vec<Delivery> {
    let now = Timestamp::now();
    // Long enough for one attempt, short enough that a dead replica's messages go out soon.
    let lease = now.saturating_add(me.config.timeout * 2 + Duration::from_secs(5));
    me.store
        .claim_webhook_deliveries(&me.owner, now, lease, n, me.config.per_endpoint_concurrency)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "claiming webhook deliveries failed");
            Vec::new()
        })
}

/// One attempt at `d`, recorded.
async fn deliver(me: &Webhooks, d: Delivery) {
    let now = Timestamp::now();
    let sent = match receiver(me, &d).await {
        Ok((url, secrets)) => {
            let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let body = bytes::Bytes::from(d.payload.clone());
            me.post(&url, &d.msg_id, &secrets, body, now).await
        }
        Err(error) => super::send::Sent {
            status: 0,
            latency: Duration::ZERO,
            error,
        },
    };
    let delivered = (200..300).contains(&sent.status);
    let outcome = if delivered {
        AttemptOutcome::Delivered
    } else {
        let next = Timestamp::now().saturating_add(backoff(me.config.retry_base, d.attempts + 1));
        match next.since(d.created) >= me.config.retry_period {
            true => AttemptOutcome::Failed,
            false => AttemptOutcome::Retry(next),
        }
    };
    let attempt = Attempt {
        time: now,
        status: sent.status,
        latency_ms: u64::try_from(sent.latency.as_millis()).unwrap_or(u64::MAX),
        error: sent.error,
    };
    match me
        .store
        .finish_webhook_attempt(&d.id, &me.owner, &attempt, outcome)
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::warn!(delivery = %d.id, "webhook delivery lease lost mid-attempt"),
        Err(e) => {
            tracing::warn!(delivery = %d.id, error = %e, "recording a webhook attempt failed")
        }
    }
}

/// Where `d` goes now and the secrets that sign it: the endpoint's current URL and secrets, or a
/// job URL with the operator's job secret. `Err` when neither exists any more.
async fn receiver(
    me: &Webhooks,
    d: &Delivery,
) -> std::result::Result<(String, Vec<String>), String> {
    if d.endpoint_key.starts_with("job:") {
        let secret = me
            .config
            .job_url_secret
            .clone()
            .ok_or("no [webhooks] job_url_secret is configured to sign job webhooks")?;
        return Ok((d.url.clone(), vec![secret]));
    }
    let endpoints = me
        .store
        .webhooks(&d.tenant)
        .await
        .map_err(|e| format!("reading the endpoint: {e}"))?;
    let e = endpoints
        .into_iter()
        .find(|e| e.id == d.endpoint_key)
        .ok_or("the endpoint was deleted")?;
    let now = Timestamp::now();
    let secrets = e
        .signing_secrets(now)
        .into_iter()
        .map(str::to_owned)
        .collect();
    Ok((e.url, secrets))
}

/// `base · 2^(attempt-1)`, at most an hour, times a random factor in [0.5, 1.0) so receivers
/// that failed together do not get their retries together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(MAX_BACKOFF);
    let r = uuid::Uuid::new_v4().as_u128() as u16;
    d.mul_f64(0.5 + f64::from(r) / f64::from(u16::MAX) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(5);
        for n in 1..=6u32 {
            let b = backoff(base, n);
            let full = base * (1 << (n - 1));
            assert!(b >= full / 2 && b <= full, "attempt {n}: {b:?}");
        }
        assert!(backoff(base, 40) <= MAX_BACKOFF);
    }
}
