//! SIGTERM mid-job: not serving, refusing work, ending streams, exiting in time.

use super::*;
use crate::common::*;
use agentd::pb;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tonic::Code;

// ---------------------------------------------------------------------------------------------
// 5. SIGTERM mid-job, with a stream open, a health watcher and a second client submitting.

#[derive(Debug)]
pub(crate) enum Seen {
    Health(i32),
    Submit(Result<String, (Code, String)>),
    Finished,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn sigterm_goes_not_serving_refuses_work_and_ends_streams_while_a_client_submits()
{
    use tonic_health::pb::health_check_response::ServingStatus;
    // SIGTERM cancels running jobs only under `--on-shutdown cancel`.
    let mut server = TestServer::start_with(Options::default().cancelling());
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let job = c.submit(&s.session_id, "grandchild 6301 ; sleep 60").await;
    assert!(eventually(Duration::from_secs(10), || !sleepers("6301").is_empty()).await);
    let mut b = server.clients(KEY_B).await;
    let sb = b.create_session(&[]).await;

    let t0 = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Duration, Seen)>(1024);
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "agentd.v1.JobService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let htx = tx.clone();
    tokio::spawn(async move {
        while let Ok(Some(m)) = watch.message().await {
            let _ = htx.send((t0.elapsed(), Seen::Health(m.status))).await;
            // Dropped once seen: a watch held open is its own test below.
            if m.status == ServingStatus::NotServing as i32 {
                break;
            }
        }
    });
    let mut stream = c
        .jobs
        .stream_job_events(stream_req(&job.job_id, 0))
        .await
        .unwrap()
        .into_inner();
    let stx = tx.clone();
    let reader = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Ok(Some(m)) = stream.message().await {
            events.extend(m.events);
        }
        if events.last().is_some_and(|e| kind(e) == "finished") {
            let _ = stx.send((t0.elapsed(), Seen::Finished)).await;
        }
        events
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let submitter = {
        let stop = stop.clone();
        let sid = sb.session_id.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = b
                    .jobs
                    .submit_job(pb::SubmitJobRequest {
                        session_id: sid.clone(),
                        prompt: "sleep 0.2".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().job.unwrap().job_id)
                    .map_err(|e| (e.code(), reason(&e)));
                let transport_gone = matches!(&r, Err((Code::Unavailable, why)) if why.is_empty());
                let _ = tx.send((t0.elapsed(), Seen::Submit(r))).await;
                if transport_gone {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    drop(tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term_at = t0.elapsed();
    let (st, mut server) = tokio::task::spawn_blocking(move || {
        let st = server.terminate();
        (st, server)
    })
    .await
    .unwrap();
    assert!(st.success(), "agentd exited with {st:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = submitter.await;
    let events = reader.await.unwrap();
    let mut log = Vec::new();
    while let Some(x) = rx.recv().await {
        log.push(x);
    }
    log.sort_by_key(|(t, _)| *t);

    let not_serving = log
        .iter()
        .find(|(_, s)| matches!(s, Seen::Health(h) if *h == ServingStatus::NotServing as i32))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("health never turned NOT_SERVING: {log:?}"));
    let finished_at = log
        .iter()
        .find(|(_, s)| matches!(s, Seen::Finished))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("the open stream got no finished event: {log:?}"));
    assert!(
        not_serving <= finished_at,
        "health turned NOT_SERVING at {not_serving:?}, after the job ended at {finished_at:?}"
    );
    let fin = finished(&events);
    assert_eq!(fin.state, pb::JobState::Cancelled as i32);
    assert!(
        fin.error_message.contains("shutdown"),
        "{}",
        fin.error_message
    );
    // Submissions: accepted until the drain began, then UNAVAILABLE and never accepted again.
    let mut refused = 0;
    let mut accepted_before_term = Vec::new();
    for (t, s) in &log {
        if let Seen::Submit(r) = s {
            match r {
                Ok(id) => {
                    assert_eq!(refused, 0, "a submit was accepted at {t:?} after a refusal");
                    assert!(
                        *t <= not_serving + Duration::from_millis(100),
                        "job {id} accepted at {t:?}, after NOT_SERVING at {not_serving:?}"
                    );
                    accepted_before_term.push(id.clone());
                }
                Err((code, why)) => {
                    // Without a reason the refusal is the transport's (the server exited with
                    // the call in flight): UNAVAILABLE, or CANCELLED when h2 reset the stream.
                    let cut = why.is_empty() && *code == Code::Cancelled;
                    assert!(
                        *code == Code::Unavailable || cut,
                        "submit during drain: {code:?} {why}"
                    );
                    if !why.is_empty() {
                        assert_eq!(why, "SHUTTING_DOWN");
                        refused += 1;
                    }
                }
            }
        }
    }
    assert!(
        refused >= 3,
        "expected several SHUTTING_DOWN refusals during the 2 s drain, got {refused}: {log:?}"
    );
    eprintln!(
        "sigterm: sent at {term_at:?}, NOT_SERVING at {not_serving:?}, finished at {finished_at:?}, \
         {refused} refusals, {} accepted before",
        accepted_before_term.len()
    );
    assert!(sleepers("6301").is_empty());

    server.restart();
    let mut c = server.clients(KEY_A).await;
    let j = c.get_job(&job.job_id).await;
    assert_eq!(j.state, pb::JobState::Cancelled as i32);
    assert!(j.error_message.contains("shutdown"));
    // Only the jobs accepted before the drain exist in B's session.
    let mut b = server.clients(KEY_B).await;
    let listed = b
        .jobs
        .list_jobs(pb::ListJobsRequest {
            session_id: sb.session_id.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let ids: BTreeSet<String> = listed.iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(ids, accepted_before_term.into_iter().collect());
}

/// Load balancers and meshes keep a Health.Watch stream open for good; SIGTERM must still end
/// the process (the watch is told NOT_SERVING, then closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn sigterm_exits_even_while_a_health_watch_stays_open() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut server = TestServer::start();
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(m)) = watch.message().await {
            seen.push(m.status);
        }
        seen
    });
    let t0 = Instant::now();
    let st = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("agentd did not exit within 30 s of SIGTERM while a health watch was open");
    assert!(st.success(), "agentd exited with {st:?}");
    // Shutdown grace (2 s here, no job to wait for anyway) + the server's 5 s transport drain,
    // with room to spare; anything near 15 s means a background task hit its 10 s stop timeout.
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        t0.elapsed()
    );
    let seen = watcher.await.unwrap();
    assert!(
        seen.contains(&(ServingStatus::NotServing as i32)),
        "{seen:?}"
    );
}

/// A SIGTERM that arrives while agentd is still starting (here: as soon as it has printed its
/// configuration, before it opens the store or listens) starts the drain instead of killing the
/// process by the default action: agentd exits 0, having stopped cleanly.
#[test]
pub(crate) fn sigterm_during_start_up_is_a_clean_exit() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    for _ in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join("data"))
            .env("AGENTD_API_KEYS", format!("a:{KEY_A}"))
            .env("AGENTD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = stderr.next().and_then(|l| l.ok()).unwrap_or_default();
        assert!(
            first.starts_with("agentd effective configuration"),
            "{first}"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        std::thread::spawn(move || for _ in stderr {});
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "agentd did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "agentd ended with {status:?}");
    }
}
