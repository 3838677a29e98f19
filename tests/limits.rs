//! Stream keepalives, output caps, event retention, and per-tenant limits with RetryInfo.

mod common;

use agentd::pb;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

fn retry_after(st: &tonic::Status) -> Option<Duration> {
    st.get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
}

#[tokio::test]
async fn quiet_streams_get_unnumbered_keepalives() {
    let server = TestServer::start_with(Options {
        args: vec!["--stream-keepalive-seconds".into(), "1".into()],
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let job = c.submit(&s.session_id, "sleep 2.5").await;
    let mut stream = c.stream(&job.job_id, 0).await;
    let (mut keepalives, mut events) = (0, Vec::new());
    while let Some(m) = stream.message().await.unwrap() {
        if m.keepalive {
            assert!(m.events.is_empty(), "keepalives carry no events");
            keepalives += 1;
        }
        events.extend(m.events);
    }
    assert!(keepalives >= 1, "no keepalive during a 2.5 s quiet period");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "keepalives take no seq");
    }
    assert_eq!(kind(events.last().unwrap()), "finished");
}

#[tokio::test]
async fn output_caps_end_in_one_visible_truncation_event() {
    let server = TestServer::start_with(Options {
        args: vec!["--job-output-max-events".into(), "20".into()],
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let job = c
        .submit(&s.session_id, "lines 200 ; write after.txt still ran")
        .await;
    let events = c.events(&job.job_id, 0).await;
    let truncated: Vec<_> = events.iter().filter(|e| kind(e) == "truncated").collect();
    assert_eq!(truncated.len(), 1, "exactly one truncation event");
    assert!(events.len() <= 20 + 3, "stored {} events", events.len());
    assert_eq!(kind(events.last().unwrap()), "finished");
    let job = c.get_job(&job.job_id).await;
    assert_eq!(
        job.state,
        pb::JobState::Succeeded as i32,
        "truncation is not a failure"
    );
    assert!(
        !job.conversation_id.is_empty(),
        "summary kept after truncation"
    );
    // The agent was never blocked: its later work happened.
    assert_eq!(
        c.download(&s.session_id, "after.txt").await.unwrap(),
        b"still ran"
    );
}

#[tokio::test]
async fn pruned_cursors_answer_out_of_range() {
    let server = TestServer::start_with(Options {
        args: vec![
            "--event-retention-seconds".into(),
            "1".into(),
            "--reaper-interval-seconds".into(),
            "1".into(),
        ],
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let job = c.submit(&s.session_id, "lines 5").await;
    let all = c.events(&job.job_id, 0).await;
    let last = all.last().unwrap().seq;
    let mut expired = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut st = c.stream(&job.job_id, 0).await;
        match st.message().await {
            Err(e) => {
                expired = Some(e);
                break;
            }
            Ok(_) => continue,
        }
    }
    let e = expired.expect("events were never pruned");
    assert_eq!(e.code(), Code::OutOfRange);
    assert_eq!(reason(&e), "CURSOR_EXPIRED");
    // The final event is kept forever.
    let tail = c.events(&job.job_id, last - 1).await;
    assert_eq!(tail.len(), 1);
    assert_eq!(kind(&tail[0]), "finished");
}

#[tokio::test]
async fn tenant_job_limit_and_session_queue_limit_carry_retry_info() {
    let server = TestServer::start_with(Options {
        args: vec![
            "--tenant-max-active-jobs".into(),
            "2".into(),
            "--max-queued-jobs-per-session".into(),
            "1".into(),
        ],
        ..Default::default()
    });
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let s1 = a.create_session(&[]).await;
    let s2 = a.create_session(&[]).await;
    let j1 = a.submit(&s1.session_id, "sleep 30").await;
    // Only unclaimed queued jobs count against the session's queue: wait until j1 left the queue.
    a.wait_state(&j1.job_id, pb::JobState::Running, Duration::from_secs(10))
        .await;
    let j2 = a.submit(&s1.session_id, "sleep 30").await;
    let err = a
        .jobs
        .submit_job(pb::SubmitJobRequest {
            session_id: s2.session_id.clone(),
            prompt: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(reason(&err), "TOO_MANY_JOBS");
    assert!(retry_after(&err).is_some());
    // Another tenant is not affected.
    let sb = b.create_session(&[]).await;
    let jb = b.submit(&sb.session_id, "hi").await;
    assert_eq!(
        b.wait(&jb.job_id).await.state,
        pb::JobState::Succeeded as i32
    );

    // Cancelling frees the tenant's slot.
    a.jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: j2.job_id.clone(),
        })
        .await
        .unwrap();
    let j3 = a.submit(&s1.session_id, "hi").await;
    a.jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: j1.job_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        a.wait(&j3.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    let _j4 = a.submit(&s1.session_id, "sleep 30").await;
    let _j5 = a.submit(&s2.session_id, "hi").await;
    let err = a
        .jobs
        .submit_job(pb::SubmitJobRequest {
            session_id: s1.session_id.clone(),
            prompt: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        ["TOO_MANY_JOBS", "QUEUE_FULL"].contains(&reason(&err).as_str()),
        "{err:?}"
    );
    assert!(retry_after(&err).is_some());
}

#[tokio::test]
async fn session_queue_limit() {
    let server = TestServer::start_with(Options {
        args: vec!["--max-queued-jobs-per-session".into(), "1".into()],
        ..Default::default()
    });
    let mut a = server.clients(KEY_A).await;
    let s = a.create_session(&[]).await;
    let running = a.submit(&s.session_id, "sleep 30").await;
    // Wait until the first job left the queue, so exactly one more fits.
    a.wait_state(
        &running.job_id,
        pb::JobState::Running,
        Duration::from_secs(10),
    )
    .await;
    let _queued = a.submit(&s.session_id, "hi").await;
    let err = a
        .jobs
        .submit_job(pb::SubmitJobRequest {
            session_id: s.session_id.clone(),
            prompt: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(reason(&err), "QUEUE_FULL");
    assert!(retry_after(&err).is_some());
}

#[tokio::test]
async fn tenant_rate_limit_answers_resource_exhausted_with_retry_info() {
    let server = TestServer::start_with(Options {
        args: vec!["--tenant-rate-limit".into(), "5".into()],
        ..Default::default()
    });
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let mut limited = None;
    for _ in 0..40 {
        if let Err(e) = a
            .sessions
            .list_sessions(pb::ListSessionsRequest::default())
            .await
        {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("40 calls at once were never limited at 5/s");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(reason(&e), "RATE_LIMITED");
    let wait = retry_after(&e).expect("RetryInfo");
    assert!(wait <= Duration::from_secs(1));
    assert!(
        b.sessions
            .list_sessions(pb::ListSessionsRequest::default())
            .await
            .is_ok()
    );
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    assert!(
        a.sessions
            .list_sessions(pb::ListSessionsRequest::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn api_keys_from_the_config_file_are_stored_as_digests() {
    use sha2::Digest;
    let key = "tenant-c-config-key";
    let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    let server = TestServer::start_with(Options {
        config: Some(format!(
            "[[api_keys]]\ntenant = \"c\"\nsha256 = \"{digest}\"\n"
        )),
        ..Default::default()
    });
    let mut c = server.clients(key).await;
    let mut a = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    // The env keys still work beside the file's, and tenants stay apart.
    let err = a
        .sessions
        .get_session(pb::GetSessionRequest {
            session_id: s.session_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut wrong = server.clients(&digest).await;
    let err = wrong
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "the digest itself is not a key"
    );
}

/// `--max-concurrent-jobs` holds when many submissions race (each may claim right behind its
/// insert, beside the dispatcher): the agents' own start/end stamps never overlap more than the
/// limit allows, and the limit is reached, so the jobs did run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_jobs_holds_under_racing_submissions() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    // Jailed agents run as an unprivileged uid: the shared directory must let them write.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let server = TestServer::start_with(Options {
        args: vec!["--max-concurrent-jobs".into(), "2".into()],
        config: Some(format!(
            r#"
[agents.slot]
kind = "command"
command = "sh"
args = ["-c", "echo \"start $(date +%s%N)\" >> '{log}'; sleep 0.3; echo \"end $(date +%s%N)\" >> '{log}'"]

[agents.slot.sandbox]      # the jobs share a log outside their workspaces
read_write = ["{dir}"]
"#,
            log = log.display(),
            dir = dir.path().display()
        )),
        ..Default::default()
    });
    let c = server.clients(KEY_A).await;
    let mut submits = Vec::new();
    for _ in 0..8 {
        let mut c = c.clone();
        submits.push(tokio::spawn(async move {
            let s = c.create_session(&[]).await;
            let job = c.submit_to(&s.session_id, "slot", "go").await;
            c.wait(&job.job_id).await
        }));
    }
    for s in submits {
        assert_eq!(s.await.unwrap().state, pb::JobState::Succeeded as i32);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut marks: Vec<(u128, i32)> = text
        .lines()
        .map(|l| {
            let (what, at) = l.split_once(' ').expect(l);
            (at.parse().expect(l), if what == "start" { 1 } else { -1 })
        })
        .collect();
    assert_eq!(marks.len(), 16, "{text}");
    // Ends sort before starts at the same instant.
    marks.sort();
    let (mut running, mut most) = (0, 0);
    for (_, d) in marks {
        running += d;
        most = most.max(running);
    }
    assert_eq!(
        most, 2,
        "at most 2 jobs may run at once, and 8 jobs reach 2:\n{text}"
    );
}

fn started(j: &pb::Job) -> Option<(i64, i32)> {
    j.start_time.as_ref().map(|t| (t.seconds, t.nanos))
}

/// Slots are shared between tenants: with 2 slots, tenant A's backlog of 10 jobs (in 10 sessions,
/// all runnable) does not keep tenant B's later job waiting until A's queue drains; B's job starts
/// as soon as a slot frees, before A's third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_backlog_does_not_take_every_slot() {
    let server = TestServer::start_with(Options {
        args: vec!["--max-concurrent-jobs".into(), "2".into()],
        ..Default::default()
    });
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let mut a_jobs = Vec::new();
    for i in 0..10 {
        let s = a.create_session(&[]).await;
        // A's first job ends well before the others, so that one slot frees at a time: with two
        // free at once, A's next job and B's would tie at 0 running and A's, older, would go first.
        let prompt = if i == 0 { "sleep 1" } else { "sleep 3" };
        a_jobs.push(a.submit(&s.session_id, prompt).await.job_id);
    }
    let s = b.create_session(&[]).await;
    let b_job = b.submit(&s.session_id, "sleep 0.1").await.job_id;
    let b_done = b.wait(&b_job).await;
    assert_eq!(b_done.state, pb::JobState::Succeeded as i32);
    let b_start = started(&b_done).expect("B's job started");
    let mut a_before = 0;
    for id in &a_jobs {
        let j = a.get_job(id).await;
        if started(&j).is_some_and(|t| t < b_start) {
            a_before += 1;
        }
    }
    assert_eq!(
        a_before, 2,
        "B's job must start right after A's first two (the two slots), not behind A's backlog"
    );
}

/// `--tenant-max-running-jobs`: a tenant at its cap waits although slots are free, and other
/// tenants still get them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_running_cap_waits_for_its_own_jobs() {
    let server = TestServer::start_with(Options {
        args: vec![
            "--max-concurrent-jobs".into(),
            "4".into(),
            "--tenant-max-running-jobs".into(),
            "1".into(),
        ],
        ..Default::default()
    });
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let s1 = a.create_session(&[]).await;
    let s2 = a.create_session(&[]).await;
    let first = a.submit(&s1.session_id, "sleep 30").await.job_id;
    let second = a.submit(&s2.session_id, "hi").await.job_id;
    let s = b.create_session(&[]).await;
    let other = b.submit(&s.session_id, "hi").await.job_id;
    assert_eq!(b.wait(&other).await.state, pb::JobState::Succeeded as i32);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.get_job(&second).await.state,
        pb::JobState::Queued as i32,
        "A already runs its 1 job"
    );
    a.jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: first.clone(),
        })
        .await
        .expect("cancel");
    assert_eq!(a.wait(&second).await.state, pb::JobState::Succeeded as i32);
}
