//! Webhooks (issue #19) against the real server and a real receiver on loopback: signed
//! deliveries retried until the receiver takes them (exactly one success, every attempt logged),
//! the outbox surviving kill -9, secret rotation signing with both secrets, the SSRF guard (the
//! refused address table, names resolving to loopback, redirects), per-job URLs limited to the
//! operator's prefixes, and the bad-input table with stable reasons.

mod common;

use agentd::pb;
use agentd::webhooks::sign;
use common::receiver::{Received, Receiver};
use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;

/// Whether one of the `v1,` signatures in `r`'s header is `secret`'s over its id, time and body.
fn signed_by(r: &Received, secret: &str) -> bool {
    let ts: i64 = r.headers["webhook-timestamp"].parse().unwrap();
    let want = sign::signature(secret, &r.headers["webhook-id"], ts, &r.body).unwrap();
    r.headers["webhook-signature"].split(' ').any(|s| s == want)
}

fn config(extra: &str) -> Options {
    Options {
        config: Some(format!(
            "[webhooks]\nretry_base_ms = 50\ntimeout_seconds = 1\n{extra}\n"
        )),
        ..Default::default()
    }
}

const LOOPBACK_ALLOWED: &str = "allow_cidrs = [\"127.0.0.1/32\"]";

async fn create(c: &mut Clients, url: &str, events: &[&str]) -> pb::CreateWebhookResponse {
    c.webhooks
        .create_webhook(pb::CreateWebhookRequest {
            url: url.into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
        })
        .await
        .expect("create webhook")
        .into_inner()
}

async fn deliveries(c: &mut Clients, webhook_id: &str) -> Vec<pb::WebhookDelivery> {
    c.webhooks
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            webhook_id: webhook_id.into(),
            limit: 200,
            ..Default::default()
        })
        .await
        .expect("list deliveries")
        .into_inner()
        .deliveries
}

/// Polls `f` every 50 ms until it is true; panics with `what` after `within`.
async fn until<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the endpoint's newest delivery is DELIVERED.
async fn until_delivered(c: &Clients, webhook_id: &str) {
    until(Duration::from_secs(30), "delivered", || {
        let (mut c, id) = (c.clone(), webhook_id.to_owned());
        async move {
            deliveries(&mut c, &id)
                .await
                .first()
                .is_some_and(|d| d.state == pb::DeliveryState::Delivered as i32)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_failing_three_times_gets_exactly_one_success() {
    let (rx, port) = Receiver::start().await;
    rx.fail_first.store(3, Ordering::SeqCst);
    let server = TestServer::start_with(config(LOOPBACK_ALLOWED));
    let mut a = server.clients(KEY_A).await;
    let hook = create(&mut a, &format!("http://127.0.0.1:{port}/in"), &[]).await;
    let id = hook.webhook.clone().unwrap().id;
    assert!(hook.secret.starts_with("whsec_"));
    let s = a.create_session(&[]).await;
    let job = a.submit(&s.session_id, "hello").await.job_id;
    a.wait(&job).await;

    let mut a2 = a.clone();
    until_delivered(&a2, &id).await;
    let got = rx.received();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(got.iter().filter(|r| r.status == 200).count(), 1);
    // Every attempt is the same message, signed with the endpoint's secret.
    let msg_id = &got[0].headers["webhook-id"];
    for r in &got {
        assert_eq!(&r.headers["webhook-id"], msg_id);
        assert!(signed_by(r, &hook.secret), "{r:?}");
        assert_eq!(r.path, "/in");
    }
    let body: serde_json::Value = serde_json::from_slice(&got[3].body).unwrap();
    assert_eq!(body["type"], "job.finished");
    assert_eq!(body["data"]["job_id"], job.as_str());
    assert_eq!(body["data"]["state"], "SUCCEEDED");

    let log = deliveries(&mut a2, &id).await;
    assert_eq!(log.len(), 1, "{log:#?}");
    let d = &log[0];
    assert_eq!(&d.message_id, msg_id);
    assert_eq!(d.job_id, job);
    assert_eq!(
        d.attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![500, 500, 500, 200]
    );
    assert_eq!(d.attempts[0].error, "HTTP 500");
    assert!(d.attempts[3].error.is_empty());
    // Nothing more arrives later (exactly one success).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(rx.received().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_deliveries_survive_kill_9() {
    let (rx, port) = Receiver::start().await;
    rx.fail_first.store(usize::MAX, Ordering::SeqCst);
    rx.fail_status.store(503, Ordering::SeqCst);
    let mut server = TestServer::start_with(config(&format!(
        "{LOOPBACK_ALLOWED}\nper_endpoint_concurrency = 2"
    )));
    let mut a = server.clients(KEY_A).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let url = format!("http://127.0.0.1:{port}/e{i}");
        ids.push(
            create(&mut a, &url, &["job.finished"])
                .await
                .webhook
                .unwrap()
                .id,
        );
    }
    // 10 jobs × 5 endpoints = 50 deliveries.
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let s = a.create_session(&[]).await;
        for k in 0..5 {
            jobs.push(a.submit(&s.session_id, &format!("job {k}")).await.job_id);
        }
    }
    for j in &jobs {
        a.wait(j).await;
    }
    let a2 = a.clone();
    until(Duration::from_secs(60), "50 deliveries tried", || {
        let mut a = a2.clone();
        async move {
            let all = deliveries(&mut a, "").await;
            all.len() == 50 && all.iter().all(|d| !d.attempts.is_empty())
        }
    })
    .await;
    assert!(rx.received().iter().all(|r| r.status == 503));

    // The receiver recovers while agentd is dead; the new process delivers everything.
    rx.fail_first.store(0, Ordering::SeqCst);
    server.kill9();
    let before = rx.received().len();
    server.restart();
    let mut a = server.clients(KEY_A).await;
    let a3 = a.clone();
    until(
        Duration::from_secs(90),
        "all 50 delivered after restart",
        || {
            let mut a = a3.clone();
            async move {
                let all = deliveries(&mut a, "").await;
                all.len() == 50
                    && all
                        .iter()
                        .all(|d| d.state == pb::DeliveryState::Delivered as i32)
            }
        },
    )
    .await;
    let ok: Vec<_> = rx.received()[before..]
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| (r.path.clone(), r.headers["webhook-id"].clone()))
        .collect();
    let distinct: std::collections::HashSet<_> = ok.iter().cloned().collect();
    assert_eq!(distinct.len(), 50, "{ok:?}");
    for j in &jobs {
        let per_job = deliveries(&mut a, "").await;
        assert_eq!(per_job.iter().filter(|d| &d.job_id == j).count(), 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_signs_with_both_secrets_during_the_overlap() {
    let (rx, port) = Receiver::start().await;
    let server = TestServer::start_with(config(LOOPBACK_ALLOWED));
    let mut a = server.clients(KEY_A).await;
    let hook = create(&mut a, &format!("http://127.0.0.1:{port}/r"), &[]).await;
    let id = hook.webhook.unwrap().id;
    let rotated = a
        .webhooks
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            webhook_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, hook.secret);
    assert!(rotated.webhook.unwrap().previous_secret_expires.is_some());
    let t = a
        .webhooks
        .test_webhook(pb::TestWebhookRequest {
            webhook_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.status, 200, "{t:?}");
    let got = rx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["webhook-signature"].split(' ').count(), 2);
    assert!(signed_by(&got[0], &hook.secret));
    assert!(signed_by(&got[0], &rotated.secret));
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["type"], "webhook.test");
    assert!(!signed_by(&got[0], &sign::new_secret()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ssrf_guard_refuses_internal_addresses() {
    let (rx, port) = Receiver::start().await;
    // No allow_cidrs: loopback is refused like any internal address.
    let server = TestServer::start_with(config(&format!(
        "job_url_prefixes = [\"http://localhost:{port}/\"]\njob_url_secret = \"{}\"",
        sign::new_secret()
    )));
    let mut a = server.clients(KEY_A).await;
    for url in [
        format!("http://127.0.0.1:{port}/x"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/x".to_owned(),
        "http://10.255.255.254:8080/x".to_owned(),
        "http://192.168.1.1/x".to_owned(),
        "http://100.64.0.1/x".to_owned(),
        format!("http://[::1]:{port}/x"),
        "http://[fd00:ec2::254]/x".to_owned(),
        "http://[::ffff:127.0.0.1]/x".to_owned(),
        format!("http://localhost:{port}/x"),
    ] {
        let e = a
            .webhooks
            .create_webhook(pb::CreateWebhookRequest {
                url: url.clone(),
                events: vec![],
            })
            .await
            .expect_err(&url);
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert_eq!(reason(&e), "WEBHOOK_URL_REFUSED", "{url}");
    }
    // A job URL the operator allows by prefix is still checked when it is sent: `localhost`
    // resolves to loopback, so no request ever reaches the receiver.
    let s = a.create_session(&[]).await;
    let job = a
        .submit_request(pb::SubmitJobRequest {
            session_id: s.session_id.clone(),
            prompt: "x".into(),
            webhook_url: format!("http://localhost:{port}/job"),
            ..Default::default()
        })
        .await
        .job_id;
    a.wait(&job).await;
    let key = format!("job:{job}");
    let a2 = a.clone();
    until(Duration::from_secs(30), "two refused attempts", || {
        let (mut a, key) = (a2.clone(), key.clone());
        async move {
            deliveries(&mut a, &key)
                .await
                .first()
                .is_some_and(|d| d.attempts.len() >= 2)
        }
    })
    .await;
    let d = &deliveries(&mut a, &key).await[0];
    assert_eq!(d.state, pb::DeliveryState::Pending as i32);
    assert!(d.attempts[0].error.contains("refused address"), "{d:?}");
    assert_eq!(d.attempts[0].status, 0);
    assert!(rx.received().is_empty(), "{:?}", rx.received());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_are_not_followed() {
    let (rx, port) = Receiver::start().await;
    let (target, target_port) = Receiver::start().await;
    *rx.redirect.lock().unwrap() = Some(format!("http://127.0.0.1:{target_port}/stolen"));
    let server = TestServer::start_with(config(LOOPBACK_ALLOWED));
    let mut a = server.clients(KEY_A).await;
    let hook = create(&mut a, &format!("http://127.0.0.1:{port}/r"), &[]).await;
    for to in [
        format!("http://127.0.0.1:{target_port}/stolen"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        *rx.redirect.lock().unwrap() = Some(to);
        let t = a
            .webhooks
            .test_webhook(pb::TestWebhookRequest {
                webhook_id: hook.webhook.clone().unwrap().id,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.status, 302);
        assert!(t.error.contains("redirects are not followed"), "{t:?}");
    }
    assert_eq!(rx.received().len(), 2);
    assert!(target.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_webhook_input_is_refused_with_stable_reasons() {
    let secret = sign::new_secret();
    let server = TestServer::start_with(config(&format!(
        "job_url_prefixes = [\"https://hooks.example.com/\"]\njob_url_secret = \"{secret}\""
    )));
    let mut a = server.clients(KEY_A).await;
    let cases: Vec<(pb::CreateWebhookRequest, &str)> = vec![
        (pb::CreateWebhookRequest::default(), "MISSING_FIELD"),
        (
            pb::CreateWebhookRequest {
                url: "ftp://93.184.215.14/x".into(),
                events: vec![],
            },
            "INVALID_FIELD",
        ),
        (
            pb::CreateWebhookRequest {
                url: "http://user:pw@93.184.215.14/x".into(),
                events: vec![],
            },
            "INVALID_FIELD",
        ),
        (
            pb::CreateWebhookRequest {
                url: "not a url".into(),
                events: vec![],
            },
            "INVALID_FIELD",
        ),
        (
            pb::CreateWebhookRequest {
                url: format!("http://93.184.215.14/{}", "x".repeat(3000)),
                events: vec![],
            },
            "INVALID_FIELD",
        ),
        (
            pb::CreateWebhookRequest {
                url: "https://93.184.215.14/x".into(),
                events: vec!["job.exploded".into()],
            },
            "INVALID_FIELD",
        ),
    ];
    for (req, want) in cases {
        let e = a
            .webhooks
            .create_webhook(req.clone())
            .await
            .expect_err(&format!("{req:?}"));
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}");
        assert_eq!(reason(&e), want, "{req:?}");
    }
    for id in ["", "wh_nope", "cfg_x", "../../etc"] {
        let e = a
            .webhooks
            .delete_webhook(pb::DeleteWebhookRequest {
                webhook_id: id.into(),
            })
            .await
            .unwrap_err();
        let want = if id.is_empty() {
            (Code::InvalidArgument, "MISSING_FIELD")
        } else {
            (Code::NotFound, "WEBHOOK_NOT_FOUND")
        };
        assert_eq!((e.code(), reason(&e).as_str()), want, "{id:?}");
    }
    // Job URLs: only under the operator's prefixes.
    let s = a.create_session(&[]).await;
    for (url, want) in [
        ("https://evil.test/x", "WEBHOOK_URL_NOT_ALLOWED"),
        (
            "https://hooks.example.com.evil.test/x",
            "WEBHOOK_URL_NOT_ALLOWED",
        ),
        ("http://hooks.example.com/x", "WEBHOOK_URL_NOT_ALLOWED"),
        ("https://x@hooks.example.com/x", "INVALID_FIELD"),
        ("gopher://hooks.example.com/", "INVALID_FIELD"),
    ] {
        let e = a
            .jobs
            .submit_job(pb::SubmitJobRequest {
                session_id: s.session_id.clone(),
                prompt: "x".into(),
                webhook_url: url.into(),
                ..Default::default()
            })
            .await
            .expect_err(url);
        assert_eq!(e.code(), Code::InvalidArgument, "{url}");
        assert_eq!(reason(&e), want, "{url}");
    }
    let ok = a
        .jobs
        .submit_job(pb::SubmitJobRequest {
            session_id: s.session_id.clone(),
            prompt: "x".into(),
            webhook_url: "https://hooks.example.com/done".into(),
            ..Default::default()
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

/// `agentd webhooks …` as a user runs it: through the environment's server and key.
fn cli(server: &TestServer, key: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentd"))
        .arg("webhooks")
        .args(args)
        .env("AGENTD_URL", format!("http://{}", server.addr))
        .env("AGENTD_API_KEY", key)
        .env_remove("AGENTD_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run agentd webhooks");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn one_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not one JSON line {text:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_manages_the_tenants_own_endpoints() {
    let (rx, port) = Receiver::start().await;
    let server = TestServer::start_with(config(LOOPBACK_ALLOWED));
    let url = format!("http://127.0.0.1:{port}/cli");
    let (code, out) = cli(
        &server,
        KEY_A,
        &["create", &url, "--event", "job.finished", "--json"],
    );
    assert_eq!(code, 0, "{out}");
    let created = one_json(&out);
    let id = created["id"].as_str().expect("id").to_owned();
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(created["events"], serde_json::json!(["job.finished"]));

    let (code, out) = cli(&server, KEY_A, &["list", "--json"]);
    assert_eq!(
        (code, one_json(&out)["id"].as_str()),
        (0, Some(id.as_str()))
    );
    assert!(!out.contains("whsec_"), "the list shows no secret: {out}");
    // Another tenant neither sees nor touches it.
    let (code, out) = cli(&server, KEY_B, &["ls"]);
    assert_eq!(code, 0);
    assert!(!out.contains(&id), "{out}");
    for args in [["delete", &id], ["test", &id], ["rotate", &id]] {
        assert_eq!(cli(&server, KEY_B, &args).0, 4, "tenant B: {args:?}");
    }
    // A refused address is the caller's mistake (exit 2).
    assert_eq!(cli(&server, KEY_A, &["create", "http://10.1.2.3/x"]).0, 2);

    let (code, out) = cli(&server, KEY_A, &["test", &id]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("delivered: HTTP 200"), "{out}");
    let tested = rx.received();
    assert_eq!(tested.len(), 1);
    assert!(signed_by(&tested[0], &secret));

    let mut a = server.clients(KEY_A).await;
    let s = a.create_session(&[]).await;
    let job = a.submit(&s.session_id, "hello").await.job_id;
    a.wait(&job).await;
    until_delivered(&a, &id).await;
    let (code, out) = cli(
        &server,
        KEY_A,
        &["deliveries", &id, "--job", &job, "--json"],
    );
    assert_eq!(code, 0, "{out}");
    let d = one_json(&out);
    assert_eq!(
        (
            d["state"].as_str(),
            d["event_type"].as_str(),
            d["job_id"].as_str()
        ),
        (Some("delivered"), Some("job.finished"), Some(job.as_str())),
        "{d}"
    );
    assert_eq!(d["attempts"][0]["status"], 200, "{d}");
    let (code, out) = cli(&server, KEY_A, &["deliveries"]);
    assert_eq!(code, 0);
    assert!(out.contains("delivered") && out.contains(&job), "{out}");

    let (code, out) = cli(&server, KEY_A, &["rotate", &id, "--json"]);
    assert_eq!(code, 0, "{out}");
    let rotated = one_json(&out);
    assert_ne!(rotated["secret"].as_str(), Some(secret.as_str()));
    assert!(rotated["previous_secret_expires"].is_string(), "{rotated}");

    assert_eq!(cli(&server, KEY_A, &["rm", &id]).0, 0);
    assert_eq!(cli(&server, KEY_A, &["delete", &id]).0, 4);
    assert_eq!(cli(&server, KEY_A, &["list", "--json"]).1.trim(), "");
}
