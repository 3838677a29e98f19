//! The reaper never deletes a session under a queued or running job.

use super::*;
use crate::common::*;
use agentd::pb;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// 8. The reaper never deletes a session under a queued or running job.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn the_reaper_skips_sessions_with_queued_or_running_jobs() {
    let server = TestServer::start_with(Options {
        args: vec![
            "--reaper-interval-seconds".into(),
            "1".into(),
            "--max-concurrent-jobs".into(),
            "1".into(),
        ],
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let create = |ttl: u32| pb::CreateSessionRequest {
        ttl_seconds: ttl,
        ..Default::default()
    };
    let busy = c
        .sessions
        .create_session(create(3600))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let short = c
        .sessions
        .create_session(create(1))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    // The only slot is taken for 4 s, so `short`'s job waits in the queue well past its TTL,
    // then runs for 2 s, again past its TTL.
    let hog = c.submit(&busy.session_id, "sleep 4").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get_job(&hog.job_id).await.state != pb::JobState::Running as i32 {
        assert!(Instant::now() < deadline, "the first job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = c.submit(&short.session_id, "sleep 2").await;
    let expiry = |s: pb::Session| {
        let t = s.expire_time.unwrap();
        (t.seconds, t.nanos)
    };
    let get_short = {
        let sessions = c.sessions.clone();
        let id = short.session_id.clone();
        move || {
            let mut sessions = sessions.clone();
            let id = id.clone();
            async move {
                sessions
                    .get_session(pb::GetSessionRequest { session_id: id })
                    .await
                    .map(|r| r.into_inner().session.unwrap())
            }
        }
    };
    let submitted = expiry(get_short().await.unwrap());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let still = get_short()
        .await
        .expect("a session with a queued job was reaped");
    assert_eq!(
        c.get_job(&waiting.job_id).await.state,
        pb::JobState::Queued as i32,
        "the job should still be waiting for the slot"
    );
    assert!(
        expiry(still) > submitted,
        "the reaper moved the busy session's expiry on"
    );
    let done = c.wait(&waiting.job_id).await;
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "the job ran to its end: {}",
        done.error_message
    );
    assert_eq!(
        c.wait(&hog.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    // Idle now, it expires for real.
    let dir = workspace(&server, &short.session_id);
    assert!(
        eventually(Duration::from_secs(15), || !dir.exists()).await,
        "the idle expired session was never reaped"
    );
}
