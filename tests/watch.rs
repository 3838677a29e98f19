//! WatchJobs and WaitJob (issue #19) against the real server: a tenant's job changes arrive once,
//! in per-job order, never another tenant's; a watcher that reconnects with its last cursor
//! misses nothing and sees nothing twice, across a kill -9 and across two Postgres replicas;
//! filters, CURSOR_EXPIRED after pruning, WaitJob's answer and timeout, and the bad-input table.

mod common;

use agentd::pb;
use common::pg::Schema;
use common::*;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

type Changes = tonic::Streaming<pb::WatchJobsResponse>;

async fn watch(c: &mut Clients, req: pb::WatchJobsRequest) -> Result<Changes, tonic::Status> {
    c.jobs.watch_jobs(req).await.map(|r| r.into_inner())
}

fn from(cursor: u64) -> pb::WatchJobsRequest {
    pb::WatchJobsRequest {
        after_cursor: Some(cursor),
        ..Default::default()
    }
}

/// From `cursor` on, each change with its events.
fn with_events(cursor: u64) -> pb::WatchJobsRequest {
    pb::WatchJobsRequest {
        include_events: true,
        ..from(cursor)
    }
}

/// The tenant's present cursor: a watch from the present starts with a keepalive carrying it.
async fn now(c: &mut Clients) -> u64 {
    watch(c, pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .message()
        .await
        .unwrap()
        .expect("first message")
        .cursor
}

fn is_final(state: i32) -> bool {
    state >= pb::JobState::Succeeded as i32
}

/// Reads changes until `done` says the collection is complete (keepalives skipped); panics after
/// `within`.
async fn collect(
    s: &mut Changes,
    out: &mut Vec<pb::JobChange>,
    within: Duration,
    done: impl Fn(&[pb::JobChange]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done(out) {
        let msg = tokio::time::timeout_at(deadline, s.message())
            .await
            .unwrap_or_else(|_| panic!("no complete set of changes within {within:?}: {out:#?}"))
            .expect("watch message")
            .expect("the watch stream never ends by itself");
        out.extend(msg.changes);
    }
}

/// True once every job in `jobs` has a final change in `seen`.
fn all_final(jobs: &[String]) -> impl Fn(&[pb::JobChange]) -> bool + '_ {
    move |seen| {
        jobs.iter().all(|j| {
            seen.iter().any(|c| {
                c.job
                    .as_ref()
                    .is_some_and(|x| &x.job_id == j && is_final(x.state))
            })
        })
    }
}

/// Every job's changes are QUEUED, RUNNING, then one final state, each once; cursors strictly
/// increase; nothing of another job appears.
fn check_sequences(seen: &[pb::JobChange], jobs: &[String]) {
    let mut last = 0;
    let mut per_job: HashMap<&str, Vec<i32>> = HashMap::new();
    for c in seen {
        assert!(c.cursor > last, "cursors must increase: {seen:#?}");
        last = c.cursor;
        let job = c.job.as_ref().expect("job");
        assert!(jobs.contains(&job.job_id), "unexpected job {}", job.job_id);
        per_job.entry(&job.job_id).or_default().push(job.state);
    }
    for j in jobs {
        let states = &per_job[j.as_str()];
        assert_eq!(states.len(), 3, "job {j}: {states:?}");
        assert_eq!(
            states[0],
            pb::JobState::Queued as i32,
            "job {j}: {states:?}"
        );
        assert_eq!(
            states[1],
            pb::JobState::Running as i32,
            "job {j}: {states:?}"
        );
        assert!(is_final(states[2]), "job {j}: {states:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_sees_each_change_once_and_resumes_from_its_cursor() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let mut s = watch(&mut a, pb::WatchJobsRequest::default())
        .await
        .unwrap();
    let first = s.message().await.unwrap().expect("first message");
    assert!(first.keepalive && first.changes.is_empty(), "{first:?}");
    let start = first.cursor;

    let (s1, s2) = (a.create_session(&[]).await, a.create_session(&[]).await);
    let other = b.create_session(&[]).await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(a.submit(&s1.session_id, &format!("one {i}")).await.job_id);
        jobs.push(a.submit(&s2.session_id, &format!("two {i}")).await.job_id);
        b.submit(&other.session_id, "not yours").await;
    }
    // Half the changes on the first stream, then a reconnect from the last cursor received.
    let mut seen = Vec::new();
    collect(&mut s, &mut seen, Duration::from_secs(60), |c| c.len() >= 9).await;
    drop(s);
    let resume = seen.last().unwrap().cursor;
    let mut s = watch(&mut a, from(resume)).await.unwrap();
    collect(&mut s, &mut seen, Duration::from_secs(60), all_final(&jobs)).await;
    check_sequences(&seen, &jobs);
    assert_eq!(
        seen[0].cursor,
        start + 1,
        "the first change follows the start cursor"
    );
    // Without a filter, a tenant's cursors have no gaps.
    for w in seen.windows(2) {
        assert_eq!(w[1].cursor, w[0].cursor + 1);
    }
    let finished = seen
        .iter()
        .rev()
        .find(|c| is_final(c.job.as_ref().unwrap().state));
    let job = finished.unwrap().job.as_ref().unwrap();
    assert!(job.result.starts_with("turn "), "{job:?}");
    assert!(job.usage.as_ref().is_some_and(|u| u.output_tokens > 0));

    // A replay from 0 gives the same changes again, exactly.
    let mut replay = watch(&mut a, from(start)).await.unwrap();
    let mut again = Vec::new();
    collect(&mut replay, &mut again, Duration::from_secs(30), |c| {
        c.len() >= seen.len()
    })
    .await;
    assert_eq!(again.len(), seen.len());
    for (x, y) in again.iter().zip(&seen) {
        assert_eq!(x, y);
    }
}

/// Each job's events as its changes carried them, checked to continue one another: a change's
/// events start right after `events_after_seq`, which is the job's last seq at its previous
/// change seen, and end at the change's own `job.last_seq`.
fn events_per_job(seen: &[pb::JobChange]) -> HashMap<String, Vec<pb::JobEvent>> {
    let mut out: HashMap<String, Vec<pb::JobEvent>> = HashMap::new();
    let mut upto: HashMap<String, u64> = HashMap::new();
    for c in seen {
        let job = c.job.as_ref().expect("job");
        let prev = upto.insert(job.job_id.clone(), job.last_seq).unwrap_or(0);
        assert_eq!(
            c.events_after_seq, prev,
            "where {}'s events start",
            job.job_id
        );
        assert!(!c.events_truncated, "{c:?}");
        let seqs: Vec<u64> = c.events.iter().map(|e| e.seq).collect();
        let want: Vec<u64> = (prev + 1..=job.last_seq).collect();
        assert_eq!(seqs, want, "job {} change {}", job.job_id, c.cursor);
        out.entry(job.job_id.clone())
            .or_default()
            .extend(c.events.iter().cloned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn include_events_gives_every_event_once_across_a_resume() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let start = now(&mut a).await;
    let mut s = watch(&mut a, with_events(start)).await.unwrap();
    let session = a.create_session(&[]).await;
    let mut jobs = Vec::new();
    for i in 0..4 {
        let prompt = format!("lines {} ; sleep 0.2 ; lines 3", 5 + i);
        jobs.push(a.submit(&session.session_id, &prompt).await.job_id);
    }
    // A disconnect half-way, then a resume from the last cursor received.
    let mut seen = Vec::new();
    collect(&mut s, &mut seen, Duration::from_secs(60), |c| c.len() >= 6).await;
    drop(s);
    let resume = seen.last().unwrap().cursor;
    let mut s = watch(&mut a, with_events(resume)).await.unwrap();
    collect(&mut s, &mut seen, Duration::from_secs(60), all_final(&jobs)).await;
    check_sequences(&seen, &jobs);
    let carried = events_per_job(&seen);
    for j in &jobs {
        let log = a.events(j, 0).await;
        assert!(log.len() > 8, "job {j}: {} events", log.len());
        assert_eq!(
            carried[j], log,
            "job {j}: the changes carried its whole log, once"
        );
    }

    // Admitting only final changes, the final change carries the job's whole log.
    let mut s = watch(
        &mut a,
        pb::WatchJobsRequest {
            states: vec![pb::JobState::Succeeded as i32],
            ..with_events(start)
        },
    )
    .await
    .unwrap();
    let mut finals = Vec::new();
    collect(
        &mut s,
        &mut finals,
        Duration::from_secs(30),
        all_final(&jobs),
    )
    .await;
    assert_eq!(finals.len(), jobs.len());
    for (j, log) in events_per_job(&finals) {
        assert_eq!(log, carried[&j], "job {j}");
    }

    // Without the flag, changes carry no events.
    let mut s = watch(&mut a, from(start)).await.unwrap();
    let mut plain = Vec::new();
    collect(
        &mut s,
        &mut plain,
        Duration::from_secs(30),
        all_final(&jobs),
    )
    .await;
    assert!(
        plain
            .iter()
            .all(|c| c.events.is_empty() && c.events_after_seq == 0)
    );
}

/// A job of `prompt` run to its end on a fresh server, then watched from the start with its
/// events: the server, tenant A's clients, the job, and its one change (SUCCEEDED), checked to
/// carry fewer events than the job has (`events_truncated`) from its first one on.
async fn one_capped_change(prompt: &str) -> (TestServer, Clients, pb::Job, pb::JobChange) {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let session = a.create_session(&[]).await;
    let job = a.submit(&session.session_id, prompt).await.job_id;
    let done = a.wait(&job).await;
    let mut s = watch(
        &mut a,
        pb::WatchJobsRequest {
            states: vec![pb::JobState::Succeeded as i32],
            ..with_events(0)
        },
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    collect(
        &mut s,
        &mut seen,
        Duration::from_secs(30),
        all_final(std::slice::from_ref(&job)),
    )
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    let change = seen.remove(0);
    assert!(change.events_truncated, "{done:?} is over the cap");
    assert_eq!(change.events_after_seq, 0);
    (server, a, done, change)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn include_events_caps_a_change_and_the_rest_streams_from_where_it_stopped() {
    let (_server, mut a, done, change) = one_capped_change("lines 2500").await;
    let job = &done.job_id;
    assert!(done.last_seq > 2500, "{done:?}");
    let seqs: Vec<u64> = change.events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=1000).collect::<Vec<_>>(),
        "the first 1,000, in order"
    );
    // The rest, from the event log after the last one carried: together, the whole log.
    let mut all = change.events.clone();
    all.extend(a.events(job, 1000).await);
    assert_eq!(all, a.events(job, 0).await);
    assert_eq!(all.last().map(|e| e.seq), Some(done.last_seq));
}

/// About how many bytes of events one change carries at most (the server's cap).
const EVENT_BYTES_CAP: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn include_events_caps_a_change_by_bytes_and_the_rest_streams_from_where_it_stopped() {
    use prost::Message;
    // Five tool results of 200,000 bytes each (twice that with their raw lines): far fewer than
    // 1,000 events, about 2 MiB (a StreamJobEvents batch carries them all in one message, which
    // must stay under the clients' 4 MiB limit).
    let big = ["bash printf '%0200000d' 0"; 5].join(" ; ");
    let (_server, mut a, done, change) = one_capped_change(&big).await;
    let job = &done.job_id;
    let log = a.events(job, 0).await;
    let total: usize = log.iter().map(Message::encoded_len).sum();
    assert!(
        log.len() < 100 && total > EVENT_BYTES_CAP * 3 / 2,
        "{} events, {total} bytes",
        log.len()
    );
    let carried = &change.events;
    let n = carried.len();
    assert!(n > 0 && n < log.len(), "{n} of {} events", log.len());
    assert_eq!(carried[..], log[..n], "the log's first events, in order");
    // Capped by bytes: what it carries fits the cap, and one more event would not have. (The
    // server counts an event's JSON form, a little larger than the protobuf one measured here.)
    let bytes: usize = carried.iter().map(Message::encoded_len).sum();
    assert!(bytes <= EVENT_BYTES_CAP, "{bytes} bytes carried");
    let next = log[n].encoded_len();
    assert!(
        bytes + next > EVENT_BYTES_CAP - 4096,
        "{bytes} bytes carried, the next event has {next}"
    );
    // The rest, from the event log after the last event carried: together, the whole log, each
    // event once.
    let last = carried.last().unwrap().seq;
    let mut all = carried.clone();
    all.extend(a.events(job, last).await);
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=done.last_seq).collect::<Vec<_>>());
    assert_eq!(all, log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_select_sessions_labels_agents_and_states() {
    let server = TestServer::start_with(Options {
        env: vec![("AGENTD_STREAM_KEEPALIVE_SECONDS".into(), "1".into())],
        ..Default::default()
    });
    let mut a = server.clients(KEY_A).await;
    let labelled = a
        .sessions
        .create_session(pb::CreateSessionRequest {
            labels: [("team".to_owned(), "red".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let plain = a.create_session(&[]).await;
    let by_label = watch(
        &mut a,
        pb::WatchJobsRequest {
            labels: [("team".to_owned(), "red".to_owned())].into(),
            states: vec![pb::JobState::Succeeded as i32],
            after_cursor: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let by_session = watch(
        &mut a,
        pb::WatchJobsRequest {
            session_id: plain.session_id.clone(),
            after_cursor: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let no_agent = watch(
        &mut a,
        pb::WatchJobsRequest {
            agents: vec!["no-such-agent".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let red = a.submit(&labelled.session_id, "red").await.job_id;
    let other = a.submit(&plain.session_id, "plain").await.job_id;
    let last = a.submit(&plain.session_id, "plain again").await.job_id;

    let mut s = by_label;
    let mut got = Vec::new();
    collect(&mut s, &mut got, Duration::from_secs(60), |c| !c.is_empty()).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let job = got[0].job.as_ref().unwrap();
    assert_eq!(
        (job.job_id.as_str(), job.state),
        (red.as_str(), pb::JobState::Succeeded as i32)
    );

    let mut s = by_session;
    let mut got = Vec::new();
    let both = [other.clone(), last.clone()];
    collect(&mut s, &mut got, Duration::from_secs(60), all_final(&both)).await;
    check_sequences(&got, &both);

    // A filter that matches nothing still moves the cursor: its keepalives say how far it read.
    a.wait(&last).await;
    let mut s = no_agent;
    let mut cursor = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cursor < got.last().unwrap().cursor {
        let msg = tokio::time::timeout_at(deadline, s.message())
            .await
            .expect("keepalive in time")
            .unwrap()
            .unwrap();
        assert!(msg.changes.is_empty(), "{msg:?}");
        cursor = msg.cursor;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sequence_survives_kill_9() {
    let mut server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let session = a.create_session(&[]).await;
    let done = a.submit(&session.session_id, "before").await.job_id;
    a.wait(&done).await;
    let mut s = watch(&mut a, from(0)).await.unwrap();
    let mut before = Vec::new();
    collect(
        &mut s,
        &mut before,
        Duration::from_secs(30),
        all_final(std::slice::from_ref(&done)),
    )
    .await;
    let cursor = before.last().unwrap().cursor;

    server.restart();
    let mut a = server.clients(KEY_A).await;
    let mut s = watch(&mut a, from(cursor)).await.unwrap();
    let after = a.submit(&session.session_id, "after").await.job_id;
    let mut seen = Vec::new();
    collect(
        &mut s,
        &mut seen,
        Duration::from_secs(60),
        all_final(std::slice::from_ref(&after)),
    )
    .await;
    check_sequences(&seen, &[after]);
    assert_eq!(seen[0].cursor, cursor + 1, "{seen:#?}");
}

/// A server, tenant A's clients, and a job of A running `prompt` in a new session.
async fn slow_job(prompt: &str) -> (TestServer, Clients, String) {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let session = a.create_session(&[]).await;
    let job = a.submit(&session.session_id, prompt).await.job_id;
    (server, a, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_job_answers_when_final_or_when_the_timeout_passes() {
    let (_server, mut a, slow) = slow_job("sleep 4").await;
    let early = a
        .jobs
        .wait_job(pb::WaitJobRequest {
            job_id: slow.clone(),
            timeout_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(early.timed_out, "{early:?}");
    assert!(!is_final(early.job.unwrap().state));

    let done = a
        .jobs
        .wait_job(pb::WaitJobRequest {
            job_id: slow.clone(),
            timeout_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!done.timed_out, "{done:?}");
    let job = done.job.unwrap();
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    // The answer is the final job as stored, result included.
    assert_eq!(job, a.get_job(&slow).await);

    // A job that is already final answers at once, even with the longest timeout.
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        a.jobs.wait_job(pb::WaitJobRequest {
            job_id: slow,
            timeout_seconds: 3600,
        }),
    )
    .await
    .expect("a final job answers at once")
    .unwrap()
    .into_inner();
    assert!(!again.timed_out);
}

/// A server that keeps changes and events for a second, pruning every second.
fn short_retention() -> TestServer {
    TestServer::start_with(Options {
        args: [
            "--event-retention-seconds",
            "1",
            "--reaper-interval-seconds",
            "1",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
}

/// Watches with `req` every 200 ms until the server refuses it (up to `tries` times): the refusal.
async fn refused(
    c: &mut Clients,
    req: pb::WatchJobsRequest,
    tries: usize,
) -> Option<tonic::Status> {
    for _ in 0..tries {
        match watch(c, req.clone()).await {
            Err(st) => return Some(st),
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pruned_cursor_is_expired() {
    let server = short_retention();
    let mut a = server.clients(KEY_A).await;
    let session = a.create_session(&[]).await;
    let job = a.submit(&session.session_id, "old").await.job_id;
    a.wait(&job).await;
    let st = refused(&mut a, from(0), 100)
        .await
        .expect("changes older than the retention are pruned");
    assert_eq!(st.code(), Code::OutOfRange, "{st:?}");
    assert_eq!(reason(&st), "CURSOR_EXPIRED");
    // The present is always a valid place to start from.
    let mut s = watch(&mut a, pb::WatchJobsRequest::default())
        .await
        .unwrap();
    let first = s.message().await.unwrap().unwrap();
    assert!(first.keepalive && first.cursor >= 3, "{first:?}");
    watch(&mut a, from(first.cursor)).await.unwrap();
}

/// WaitJob until `job` is final (a job's event stream may start pruned under a short retention).
async fn wait_final(c: &mut Clients, job: &str) -> pb::Job {
    let done = c
        .jobs
        .wait_job(pb::WaitJobRequest {
            job_id: job.to_owned(),
            timeout_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!done.timed_out, "{done:?}");
    done.job.expect("job")
}

/// The watch's next change of `job` (others skipped).
async fn next_change_of(s: &mut Changes, job: &str) -> pb::JobChange {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let msg = tokio::time::timeout_at(deadline, s.message())
            .await
            .unwrap_or_else(|_| panic!("no change of job {job} within 60 s"))
            .expect("watch message")
            .expect("the watch stream never ends by itself");
        if let Some(c) = msg
            .changes
            .into_iter()
            .find(|c| c.job.as_ref().is_some_and(|j| j.job_id == job))
        {
            return c;
        }
    }
}

/// A job that runs longer than the retention: its earlier changes outlive the retention while
/// it runs, so its final change still starts its events right after the ones its RUNNING change
/// carried (before, they were pruned and the final change carried the job's events from the
/// start again). A cursor before pruned changes answers CURSOR_EXPIRED instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_outliving_the_retention_gets_each_event_once() {
    let server = short_retention();
    let mut a = server.clients(KEY_A).await;
    let start = now(&mut a).await;
    let mut live = watch(&mut a, with_events(start)).await.unwrap();
    let session = a.create_session(&[]).await;
    // Runs until the test creates `go` in its workspace.
    let long = a
        .submit(
            &session.session_id,
            "bash while [ ! -f go ]; do sleep 0.05; done ; lines 3",
        )
        .await
        .job_id;
    let queued = next_change_of(&mut live, &long).await;
    let running = next_change_of(&mut live, &long).await;
    let running_job = running.job.as_ref().unwrap();
    assert_eq!(running_job.state, pb::JobState::Running as i32);
    assert!(running_job.last_seq >= 1, "{running:?}");
    assert_eq!(
        running.events.last().map(|e| e.seq),
        Some(running_job.last_seq)
    );

    // A job that starts and ends after the long one's RUNNING change (in another session, so
    // it does not queue behind it): once a cursor before its last change has expired, the
    // pruning has passed the long job's earlier changes too.
    let other = a.create_session(&[]).await;
    let marker = a.submit(&other.session_id, "marker").await.job_id;
    wait_final(&mut a, &marker).await;
    let mut marker_final = next_change_of(&mut live, &marker).await;
    while !is_final(marker_final.job.as_ref().unwrap().state) {
        marker_final = next_change_of(&mut live, &marker).await;
    }
    let st = refused(&mut a, with_events(marker_final.cursor - 1), 150)
        .await
        .expect("the marker's changes are pruned");
    assert_eq!(reason(&st), "CURSOR_EXPIRED", "{st:?}");
    assert_eq!(
        reason(&watch(&mut a, with_events(queued.cursor)).await.unwrap_err()),
        "CURSOR_EXPIRED"
    );

    // A second watcher resumes after the marker, the last cursor that is honoured.
    let mut resumed = watch(&mut a, with_events(marker_final.cursor))
        .await
        .unwrap();
    let ws = server.data_dir.join("sessions").join(&session.session_id);
    std::fs::write(ws.join("workspace/go"), b"").expect("write go");
    let done = wait_final(&mut a, &long).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    for s in [&mut live, &mut resumed] {
        let fin = next_change_of(s, &long).await;
        let job = fin.job.as_ref().unwrap();
        assert!(is_final(job.state), "{fin:?}");
        assert_eq!(
            fin.events_after_seq, running_job.last_seq,
            "the final change continues where the RUNNING change stopped"
        );
        assert!(!fin.events_truncated);
        let seqs: Vec<u64> = fin.events.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(seqs.last(), Some(&job.last_seq));
        let first = *seqs.first().unwrap();
        assert!(
            first > running_job.last_seq,
            "no event of the RUNNING change again: {seqs:?}"
        );
        // The finished job's oldest events may be pruned before a change is read, never twice
        // sent: if the change starts later than where it continues, the log lost those events.
        if first > running_job.last_seq + 1 {
            let gone = a
                .jobs
                .stream_job_events(pb::StreamJobEventsRequest {
                    job_id: long.clone(),
                    after_seq: running_job.last_seq,
                })
                .await
                .unwrap()
                .into_inner()
                .message()
                .await
                .expect_err("the events the change lacks are pruned");
            assert_eq!(reason(&gone), "CURSOR_EXPIRED", "{gone:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_and_other_tenants_ids() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let theirs = b.create_session(&[]).await;
    let their_job = b.submit(&theirs.session_id, "theirs").await.job_id;
    let watches: Vec<(&str, pb::WatchJobsRequest, Code, &str)> = vec![
        (
            "another tenant's session",
            pb::WatchJobsRequest {
                session_id: theirs.session_id.clone(),
                ..Default::default()
            },
            Code::NotFound,
            "SESSION_NOT_FOUND",
        ),
        (
            "a malformed session id",
            pb::WatchJobsRequest {
                session_id: "nope".into(),
                ..Default::default()
            },
            Code::NotFound,
            "SESSION_NOT_FOUND",
        ),
        (
            "an unknown state",
            pb::WatchJobsRequest {
                states: vec![99],
                ..Default::default()
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            "an empty agent name",
            pb::WatchJobsRequest {
                agents: vec![String::new()],
                ..Default::default()
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            "too many agents",
            pb::WatchJobsRequest {
                agents: (0..65).map(|i| format!("a{i}")).collect(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            "too many labels",
            pb::WatchJobsRequest {
                labels: (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
    ];
    for (what, req, code, why) in watches {
        let st = watch(&mut a, req).await.expect_err(what);
        assert_eq!(
            (st.code(), reason(&st).as_str()),
            (code, why),
            "{what}: {st:?}"
        );
    }
    let waits: Vec<(&str, pb::WaitJobRequest, Code, &str)> = vec![
        (
            "no job id",
            pb::WaitJobRequest::default(),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            "another tenant's job",
            pb::WaitJobRequest {
                job_id: their_job.clone(),
                timeout_seconds: 1,
            },
            Code::NotFound,
            "JOB_NOT_FOUND",
        ),
        (
            "a malformed job id",
            pb::WaitJobRequest {
                job_id: "job_/../x".into(),
                timeout_seconds: 1,
            },
            Code::NotFound,
            "JOB_NOT_FOUND",
        ),
        (
            "a timeout over an hour",
            pb::WaitJobRequest {
                job_id: their_job.clone(),
                timeout_seconds: 3601,
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
    ];
    for (what, req, code, why) in waits {
        let st = a.jobs.wait_job(req).await.expect_err(what);
        assert_eq!(
            (st.code(), reason(&st).as_str()),
            (code, why),
            "{what}: {st:?}"
        );
    }
    // Tenant B's own watch sees its job; A's sees nothing of it.
    let mut s = watch(&mut b, from(0)).await.unwrap();
    let mut got = Vec::new();
    collect(
        &mut s,
        &mut got,
        Duration::from_secs(60),
        all_final(std::slice::from_ref(&their_job)),
    )
    .await;
    let mut s = watch(&mut a, from(0)).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(2), s.message()).await;
    assert!(quiet.is_err(), "tenant A saw something: {quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn two_postgres_replicas_share_one_sequence() {
    let (_schema, root, url) = pg_store("agentd_w");
    let servers = [
        pg_replica(&url, root.path(), "w1"),
        pg_replica(&url, root.path(), "w2"),
    ];
    let mut c = [
        servers[0].clients(KEY_A).await,
        servers[1].clients(KEY_A).await,
    ];
    let mut jobs = Vec::new();
    for i in 0..6 {
        let session = c[i % 2].create_session(&[]).await;
        for k in 0..3 {
            let job = c[(i + k) % 2]
                .submit(&session.session_id, &format!("p{k}"))
                .await;
            jobs.push(job.job_id);
        }
    }
    // The watcher hops between replicas every few changes, resuming from its last cursor, with
    // each change's events (read through the Postgres change marks).
    let mut seen: Vec<pb::JobChange> = Vec::new();
    let mut hop = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !all_final(&jobs)(&seen) {
        let cursor = seen.last().map_or(0, |x| x.cursor);
        let mut s = watch(&mut c[hop % 2], with_events(cursor)).await.unwrap();
        let want = seen.len() + 5;
        let done = |got: &[pb::JobChange]| got.len() >= want || all_final(&jobs)(got);
        while !done(&seen) {
            let msg = tokio::time::timeout_at(deadline, s.message())
                .await
                .unwrap_or_else(|_| panic!("changes missing: {seen:#?}"))
                .unwrap()
                .unwrap();
            seen.extend(msg.changes);
        }
        hop += 1;
    }
    check_sequences(&seen, &jobs);
    for w in seen.windows(2) {
        assert_eq!(
            w[1].cursor,
            w[0].cursor + 1,
            "no gap, no repeat across replicas"
        );
    }
    let carried = events_per_job(&seen);
    for j in &jobs {
        assert_eq!(
            carried[j],
            c[0].events(j, 0).await,
            "job {j}: its whole log, once"
        );
    }
}

/// A fresh schema in the test Postgres (dropped when the guard goes), a shared workspace root,
/// and the store URL that selects the schema.
fn pg_store(prefix: &str) -> (Schema, tempfile::TempDir, String) {
    let schema = Schema::new(prefix);
    let url = schema.store_url();
    (schema, tempfile::tempdir().unwrap(), url)
}

/// One replica on the shared store and workspace root.
fn pg_replica(url: &str, root: &std::path::Path, name: &str) -> TestServer {
    TestServer::start_with(Options {
        args: [
            "--store",
            url,
            "--workspace-root",
            &root.display().to_string(),
            "--replica-id",
            name,
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
}

/// A number in `0..n`, different each call.
fn random_below(n: usize) -> usize {
    (uuid::Uuid::new_v4().as_u128() % n as u128) as usize
}

/// Issue #19's acceptance test: 200 jobs submitted across 3 replicas, one watcher that drops its
/// stream after a random number of messages (sometimes mid-batch of what it asked for) and
/// resumes on a random replica from its last cursor: every change arrives once, in per-job
/// order, with no gap in the tenant's sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn a_watcher_hopping_across_three_replicas_sees_200_jobs_once() {
    const JOBS: usize = 200;
    let (_schema, root, url) = pg_store("agentd_w3");
    let servers = [
        pg_replica(&url, root.path(), "r1"),
        pg_replica(&url, root.path(), "r2"),
        pg_replica(&url, root.path(), "r3"),
    ];
    let mut c = Vec::new();
    for s in &servers {
        c.push(s.clients(KEY_A).await);
    }
    let mut sessions = Vec::new();
    for i in 0..20 {
        sessions.push(c[i % 3].create_session(&[]).await.session_id);
    }
    // Submitted while the watcher already follows, from every replica.
    let submitter = {
        let (mut c, sessions) = (c.clone(), sessions.clone());
        tokio::spawn(async move {
            let mut jobs = Vec::new();
            for i in 0..JOBS {
                let job = c[i % 3]
                    .submit(&sessions[i % sessions.len()], "hello")
                    .await;
                jobs.push(job.job_id);
            }
            jobs
        })
    };
    let mut seen: Vec<pb::JobChange> = Vec::new();
    let mut hops = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let enough = |seen: &[pb::JobChange]| seen.len() >= 3 * JOBS;
    while !enough(&seen) {
        let cursor = seen.last().map_or(0, |x| x.cursor);
        let mut s = watch(&mut c[random_below(3)], from(cursor)).await.unwrap();
        let messages = 1 + random_below(8);
        for _ in 0..messages {
            let msg = tokio::time::timeout_at(deadline, s.message())
                .await
                .unwrap_or_else(|_| panic!("changes missing after {} of {}", seen.len(), 3 * JOBS))
                .unwrap()
                .unwrap();
            seen.extend(msg.changes);
            if enough(&seen) {
                break;
            }
        }
        drop(s);
        hops += 1;
    }
    let jobs = submitter.await.unwrap();
    check_sequences(&seen, &jobs);
    for w in seen.windows(2) {
        assert_eq!(w[1].cursor, w[0].cursor + 1, "no gap, no repeat");
    }
    assert!(hops > 3, "the watcher reconnected only {hops} times");
}

/// `agentd jobs wait` exits as the job ended (5 when the wait timed out first); `agentd jobs
/// watch --json` prints each change as a JSON line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_wait_and_watch() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let (server, mut a, slow) = slow_job("sleep 3").await;
    let cli = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_agentd"));
        c.args(args)
            .env("AGENTD_URL", &server.addr)
            .env("AGENTD_API_KEY", KEY_A)
            .env_remove("AGENTD_LOG")
            .stdin(Stdio::null());
        c
    };
    let early = cli(&["jobs", "wait", &slow, "--timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(early.status.code(), Some(5), "{early:?}");
    let done = cli(&["jobs", "wait", &slow, "--json"]).output().unwrap();
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    let v: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(v["timed_out"], false, "{v}");

    let mut child = cli(&["jobs", "watch", "--after-cursor", "0", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut cursors = Vec::new();
    while cursors.len() < 3 {
        let line = lines.next().expect("a change line").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        cursors.push(v["cursor"].as_u64().unwrap());
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(cursors, [1, 2, 3]);

    // --events: the final change (the only one admitted) carries the job's whole log.
    let log = a.events(&slow, 0).await;
    let mut out = cli(&[
        "jobs",
        "watch",
        "--after-cursor",
        "0",
        "--state",
        "succeeded",
        "--events",
        "--json",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let line = BufReader::new(out.stdout.take().unwrap())
        .lines()
        .next()
        .expect("a change line")
        .unwrap();
    let _ = out.kill();
    let _ = out.wait();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["events_after_seq"], 0, "{v}");
    assert_eq!(v["events_truncated"], false, "{v}");
    let seqs: Vec<u64> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, log.iter().map(|e| e.seq).collect::<Vec<_>>(), "{v}");
}
