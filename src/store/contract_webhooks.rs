//! The webhook outbox part of the store contract (see `contract`): endpoints are tenant-scoped,
//! the cursor moves once, claims are exclusive and respect the per-receiver cap and leases, and
//! attempts are logged only by the delivery's owner.

use super::contract::{Harness, NO_LIMITS, job, session};
use crate::domain::{TenantId, Timestamp};
use crate::store::{
    Attempt, AttemptOutcome, DeliveryFilter, DeliveryState, NewDelivery, WebhookEndpoint,
};

fn tenant(n: &str) -> TenantId {
    TenantId(n.to_owned())
}

fn endpoint(id: &str, t: &str) -> WebhookEndpoint {
    WebhookEndpoint {
        id: id.to_owned(),
        tenant: tenant(t),
        url: format!("https://example.com/{id}"),
        events: vec!["job.finished".into(), "job.started".into()],
        secret: "whsec_AAAA".into(),
        old_secret: None,
        old_secret_until: None,
        created: Timestamp(1_000),
    }
}

fn delivery(key: &str, msg: &str) -> NewDelivery {
    NewDelivery {
        id: format!("whd_{key}_{msg}"),
        endpoint_key: key.to_owned(),
        url: format!("https://example.com/{key}"),
        msg_id: msg.to_owned(),
        event_type: "job.finished".into(),
        job_id: "job_1".into(),
        payload: "{\"type\":\"job.finished\"}".into(),
    }
}

fn attempt(status: u16) -> Attempt {
    Attempt {
        time: Timestamp::now(),
        status,
        latency_ms: 12,
        error: if status == 200 {
            String::new()
        } else {
            format!("HTTP {status}")
        },
    }
}

pub async fn webhook_endpoints_are_tenant_scoped(h: &dyn Harness) {
    let store = h.open().await;
    store.put_webhook(&endpoint("wh_a", "acme")).await.unwrap();
    store.put_webhook(&endpoint("wh_b", "other")).await.unwrap();
    let mine = store.webhooks(&tenant("acme")).await.unwrap();
    assert_eq!(mine, vec![endpoint("wh_a", "acme")]);
    // Another tenant can neither delete nor rotate it.
    assert!(
        !store
            .delete_webhook(&tenant("other"), "wh_a")
            .await
            .unwrap()
    );
    let until = Timestamp(9_000);
    assert!(
        store
            .rotate_webhook_secret(&tenant("other"), "wh_a", "whsec_BBBB", until)
            .await
            .unwrap()
            .is_none()
    );
    let rotated = store
        .rotate_webhook_secret(&tenant("acme"), "wh_a", "whsec_BBBB", until)
        .await
        .unwrap()
        .expect("rotated");
    assert_eq!(rotated.secret, "whsec_BBBB");
    assert_eq!(rotated.old_secret.as_deref(), Some("whsec_AAAA"));
    assert_eq!(rotated.signing_secrets(Timestamp(8_999)).len(), 2);
    assert_eq!(rotated.signing_secrets(until), vec!["whsec_BBBB"]);
    // Putting it again (a config endpoint at start) updates it and keeps its creation time.
    let mut again = endpoint("wh_a", "acme");
    again.url = "https://example.com/moved".into();
    again.created = Timestamp(5_000);
    store.put_webhook(&again).await.unwrap();
    let got = store.webhooks(&tenant("acme")).await.unwrap();
    assert_eq!(got[0].url, "https://example.com/moved");
    assert_eq!(got[0].created, Timestamp(1_000));
    assert!(store.delete_webhook(&tenant("acme"), "wh_a").await.unwrap());
    assert!(store.webhooks(&tenant("acme")).await.unwrap().is_empty());
    assert_eq!(store.webhooks(&tenant("other")).await.unwrap().len(), 1);
}

pub async fn webhook_cursor_moves_once(h: &dyn Harness) {
    let store = h.open().await;
    let s = store
        .create_session(&session("acme", Timestamp(1)))
        .await
        .unwrap();
    store
        .create_job(&job(&s, Timestamp(2)), Timestamp(3), &NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(
        store.webhook_backlog(10).await.unwrap(),
        vec![(tenant("acme"), 0)]
    );
    let d = vec![delivery("wh_a", "msg_1")];
    assert!(
        store
            .enqueue_webhooks(&tenant("acme"), 0, 1, d.clone())
            .await
            .unwrap()
    );
    // A second mover from the same cursor (another replica) changes nothing.
    assert!(
        !store
            .enqueue_webhooks(&tenant("acme"), 0, 1, d.clone())
            .await
            .unwrap()
    );
    assert!(store.webhook_backlog(10).await.unwrap().is_empty());
    // The same message for the same receiver is enqueued once.
    store
        .add_webhook_deliveries(&tenant("acme"), d)
        .await
        .unwrap();
    let all = store
        .webhook_deliveries(&tenant("acme"), &DeliveryFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].delivery.state, DeliveryState::Pending);
    assert!(
        store
            .webhook_deliveries(&tenant("other"), &DeliveryFilter::default(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn webhook_claims_are_exclusive_and_capped(h: &dyn Harness) {
    let (a, b) = (h.open().await, h.open().await);
    let mut d: Vec<_> = (0..5).map(|i| delivery("slow", &format!("m{i}"))).collect();
    d.extend((0..3).map(|i| delivery("fast", &format!("m{i}"))));
    a.add_webhook_deliveries(&tenant("acme"), d).await.unwrap();
    let now = Timestamp::now();
    let lease = Timestamp(now.0 + 60_000_000);
    let (ca, cb) = tokio::join!(
        a.claim_webhook_deliveries("r1", now, lease, 100, 2),
        b.claim_webhook_deliveries("r2", now, lease, 100, 2),
    );
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    let mut ids: Vec<_> = ca.iter().chain(&cb).map(|d| d.id.clone()).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a delivery was claimed twice");
    let slow = ca
        .iter()
        .chain(&cb)
        .filter(|d| d.endpoint_key == "slow")
        .count();
    assert!(
        slow <= 2 + 1,
        "the per-receiver cap held only loosely: {slow}"
    );
    assert!(slow >= 2);
    // Nothing more of `slow` while its leases hold.
    let more = a
        .claim_webhook_deliveries("r3", now, lease, 100, 2)
        .await
        .unwrap();
    assert!(more.iter().all(|d| d.endpoint_key != "slow"));
    // Once the leases run out, someone else may take them.
    let later = Timestamp(lease.0 + 1);
    let retaken = a
        .claim_webhook_deliveries("r3", later, Timestamp(later.0 + 60_000_000), 100, 2)
        .await
        .unwrap();
    assert_eq!(
        retaken.iter().filter(|d| d.endpoint_key == "slow").count(),
        2
    );
}

pub async fn webhook_attempts_are_logged_by_the_owner(h: &dyn Harness) {
    let store = h.open().await;
    store
        .add_webhook_deliveries(&tenant("acme"), vec![delivery("wh_a", "m1")])
        .await
        .unwrap();
    let now = Timestamp::now();
    let lease = Timestamp(now.0 + 60_000_000);
    let got = store
        .claim_webhook_deliveries("r1", now, lease, 10, 4)
        .await
        .unwrap();
    let id = got[0].id.clone();
    // Not the owner: fenced off.
    assert!(
        !store
            .finish_webhook_attempt(&id, "r2", &attempt(500), AttemptOutcome::Failed)
            .await
            .unwrap()
    );
    let retry_at = Timestamp(now.0 + 3_600_000_000);
    assert!(
        store
            .finish_webhook_attempt(&id, "r1", &attempt(500), AttemptOutcome::Retry(retry_at))
            .await
            .unwrap()
    );
    // Not due before its retry time.
    assert!(
        store
            .claim_webhook_deliveries("r1", now, lease, 10, 4)
            .await
            .unwrap()
            .is_empty()
    );
    let later = Timestamp(retry_at.0 + 1);
    let again = store
        .claim_webhook_deliveries("r1", later, Timestamp(later.0 + 1), 10, 4)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert!(
        store
            .finish_webhook_attempt(&id, "r1", &attempt(200), AttemptOutcome::Delivered)
            .await
            .unwrap()
    );
    let log = store
        .webhook_deliveries(&tenant("acme"), &DeliveryFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(log[0].delivery.state, DeliveryState::Delivered);
    assert_eq!(log[0].delivery.attempts, 2);
    assert_eq!(log[0].delivery.last_status, Some(200));
    assert_eq!(
        log[0].attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![500, 200]
    );
    assert_eq!(log[0].attempts[0].error, "HTTP 500");
    // A delivered message is never claimed again.
    assert!(
        store
            .claim_webhook_deliveries("r1", Timestamp(later.0 + 10), lease, 10, 4)
            .await
            .unwrap()
            .is_empty()
    );
    let by_job = DeliveryFilter {
        endpoint_key: None,
        job_id: Some("job_other".into()),
    };
    assert!(
        store
            .webhook_deliveries(&tenant("acme"), &by_job, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
