//! Process lifecycle: kill -9 and restart on the same data dir, SIGTERM drain, TTL reaping.

mod common;

use agentd::pb;
use common::*;
use std::time::Duration;

/// Under `--on-shutdown cancel` (tests/adopt.rs has `keep`, the default).
#[tokio::test]
async fn restart_after_kill9_keeps_everything_and_fails_interrupted_jobs() {
    let mut server = TestServer::start_with(
        Options {
            args: vec!["--max-concurrent-jobs".into(), "1".into()],
            ..Default::default()
        }
        .cancelling(),
    );
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[("in.txt", b"input")]).await;
    let done = c.submit(&s.session_id, "write out.txt result").await;
    let done_events = c.events(&done.job_id, 0).await;
    let done = c.get_job(&done.job_id).await;

    let s2 = c.create_session(&[]).await;
    let running = c.submit(&s2.session_id, "grandchild 4721 ; sleep 60").await;
    let queued = c
        .submit(&s.session_id, "write later.txt ran after restart")
        .await;
    assert!(eventually(Duration::from_secs(10), || !sleepers("4721").is_empty()).await);
    assert_eq!(
        c.get_job(&queued.job_id).await.state,
        pb::JobState::Queued as i32
    );

    server.restart();
    // The agent and its detached grandchild did not outlive the server.
    assert!(
        eventually(Duration::from_secs(5), || sleepers("4721").is_empty()).await,
        "agent tree outlived a kill -9 of the server"
    );
    let mut c = server.clients(KEY_A).await;
    let again = c.get_job(&done.job_id).await;
    assert_eq!(again, done, "finished job unchanged");
    assert_eq!(
        c.events(&done.job_id, 0).await,
        done_events,
        "events unchanged"
    );
    assert_eq!(
        c.download(&s.session_id, "out.txt").await.unwrap(),
        b"result"
    );
    assert_eq!(c.download(&s.session_id, "in.txt").await.unwrap(), b"input");

    let r = c.get_job(&running.job_id).await;
    assert_eq!(r.state, pb::JobState::Failed as i32);
    assert!(r.error_message.contains("restarted"), "{}", r.error_message);
    let ev = c.events(&running.job_id, 0).await;
    assert!(matches!(
        ev.last().and_then(|e| e.kind.clone()),
        Some(pb::job_event::Kind::Finished(_))
    ));

    let q = c.wait(&queued.job_id).await;
    assert_eq!(q.state, pb::JobState::Succeeded as i32);
    assert_eq!(
        c.download(&s.session_id, "later.txt").await.unwrap(),
        b"ran after restart"
    );
}

#[tokio::test]
async fn sigterm_drains_running_jobs_and_exits_zero() {
    let mut server = TestServer::start_with(Options::default().cancelling());
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let job = c.submit(&s.session_id, "grandchild 4731 ; sleep 60").await;
    assert!(eventually(Duration::from_secs(10), || !sleepers("4731").is_empty()).await);
    let mut stream = c.stream(&job.job_id, 0).await;
    let reader = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Ok(Some(m)) = stream.message().await {
            events.extend(m.events);
        }
        events
    });
    let status = tokio::task::spawn_blocking(move || {
        let st = server.terminate();
        (st, server)
    })
    .await
    .unwrap();
    let (st, mut server) = status;
    assert!(st.success(), "agentd exited with {st:?}");
    let events = reader.await.unwrap();
    match events.last().and_then(|e| e.kind.clone()) {
        Some(pb::job_event::Kind::Finished(f)) => {
            assert_eq!(f.state, pb::JobState::Cancelled as i32);
            assert!(f.error_message.contains("shutdown"), "{}", f.error_message);
        }
        other => panic!("stream did not end with the finished event: {other:?}"),
    }
    assert!(sleepers("4731").is_empty());
    server.restart();
    let mut c = server.clients(KEY_A).await;
    assert_eq!(
        c.get_job(&job.job_id).await.state,
        pb::JobState::Cancelled as i32
    );
}

#[tokio::test]
async fn expired_sessions_are_reaped_and_jobs_extend_expiry() {
    let server = TestServer::start_with(Options {
        args: vec!["--reaper-interval-seconds".into(), "1".into()],
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let s = c
        .sessions
        .create_session(pb::CreateSessionRequest {
            ttl_seconds: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let keep = c
        .sessions
        .create_session(pb::CreateSessionRequest {
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let expire0 = s.expire_time.unwrap().seconds;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let j = c.submit(&s.session_id, "hi").await;
    c.wait(&j.job_id).await;
    let after = c
        .sessions
        .get_session(pb::GetSessionRequest {
            session_id: s.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert!(
        after.expire_time.unwrap().seconds > expire0,
        "submitting extended the expiry"
    );
    let dir = server.data_dir.join("sessions").join(&s.session_id);
    assert!(
        eventually(Duration::from_secs(10), || !dir.exists()).await,
        "workspace not reaped"
    );
    let err = c
        .sessions
        .get_session(pb::GetSessionRequest {
            session_id: s.session_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        c.sessions
            .get_session(pb::GetSessionRequest {
                session_id: keep.session_id.clone()
            })
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn delete_session_cancels_running_job_and_removes_workspace() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let j = c.submit(&s.session_id, "grandchild 4741 ; sleep 60").await;
    assert!(eventually(Duration::from_secs(10), || !sleepers("4741").is_empty()).await);
    let q = c.submit(&s.session_id, "hi").await;
    let del = c
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            session_id: s.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.cancelled_jobs, 2);
    assert!(sleepers("4741").is_empty());
    assert!(
        !server
            .data_dir
            .join("sessions")
            .join(&s.session_id)
            .exists()
    );
    for id in [&j.job_id, &q.job_id] {
        let e = c
            .jobs
            .get_job(pb::GetJobRequest { job_id: id.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
}
