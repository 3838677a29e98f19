//! Issue #23: running jobs survive an agentd restart. The server runs with `--on-shutdown keep`
//! here (the harness defaults to `cancel`); supervisors outlive it, spool their agent's output,
//! and the next agentd on the same data dir adopts them.

mod common;

use agentd::pb;
use common::{KEY_A, Options, TestServer, eventually, kind, texts};
use std::time::Duration;

fn keep(adopt_timeout: u64) -> Options {
    Options {
        env: vec![
            ("AGENTD_ON_SHUTDOWN".into(), "keep".into()),
            ("AGENTD_ADOPT_TIMEOUT".into(), adopt_timeout.to_string()),
        ],
        ..Default::default()
    }
}

/// A job that streams for about `rounds` × 0.2 s: each round three texts and a sleep.
fn streaming(rounds: usize) -> String {
    vec!["lines 3 ; sleep 0.2"; rounds].join(" ; ")
}

/// The texts `streaming(rounds)` reports, in order (the stand-in ends its turn with one more).
fn streamed(rounds: usize) -> Vec<String> {
    (0..rounds)
        .flat_map(|_| ["line 1", "line 2", "line 3", "sleeping 0.2s"])
        .chain(["turn 1: done"])
        .map(str::to_owned)
        .collect()
}

/// Events of a job, one per seq from 1, none missing or repeated.
fn assert_contiguous(events: &[pb::JobEvent]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, want, "event seqs have a gap or a repeat");
}

/// Holds a stream of `job` from seq `after` until it breaks (agentd died) or ends; returns what
/// it saw.
async fn hold_stream(addr: String, job: String, after: u64) -> Vec<pb::JobEvent> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = common::Clients::new(ch, KEY_A);
    let mut out = Vec::new();
    let Ok(s) = c
        .jobs
        .stream_job_events(pb::StreamJobEventsRequest {
            job_id: job,
            after_seq: after,
        })
        .await
    else {
        return out;
    };
    let mut s = s.into_inner();
    while let Ok(Some(msg)) = s.message().await {
        out.extend(msg.events);
    }
    out
}

/// kill -9 agentd `delay` into a streaming job, start it again, and check the job ends SUCCEEDED
/// with every line once, in order, also for a client that held a stream across the restart.
async fn survive_kill9(rounds: usize, delay: Duration) {
    let mut s = TestServer::start_with(keep(600));
    let mut c = s.clients(KEY_A).await;
    let session = c.create_session(&[]).await;
    let job = c.submit(&session.session_id, &streaming(rounds)).await;
    let held = tokio::spawn(hold_stream(s.addr.clone(), job.job_id.clone(), 0));
    tokio::time::sleep(delay).await;
    s.kill9();
    let before = held.await.unwrap();
    // The agent goes on while nobody is attached.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.restart();
    let mut c = s.clients(KEY_A).await;
    // The client that held a stream resumes from its cursor.
    let cursor = before.last().map_or(0, |e| e.seq);
    let after = c.events(&job.job_id, cursor).await;
    let done = c.get_job(&job.job_id).await;
    let all = c.events(&job.job_id, 0).await;
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "job {done:?}\nevents {:?}",
        all.iter().map(kind).collect::<Vec<_>>()
    );
    assert_contiguous(&all);
    assert_eq!(texts(&all), streamed(rounds), "killed after {delay:?}");
    assert!(
        before.iter().all(|e| kind(e) != "finished"),
        "the job ended before agentd was killed: nothing was adopted"
    );
    assert!(!after.is_empty(), "nothing came after the restart");
    let resumed: Vec<pb::JobEvent> = before.into_iter().chain(after).collect();
    assert_eq!(resumed, all, "the held stream saw a gap or a duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_kill9_of_agentd_mid_stream() {
    survive_kill9(8, Duration::from_millis(900)).await;
}
