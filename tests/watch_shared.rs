//! WatchJobs' watchers of one tenant share their store reads (`core::tenant_watch::ChangeFeed`):
//! many watchers at different positions (from now, from the start, joining midway) each still
//! get every change of their tenant once, in order, exactly as a later read of the sequence
//! returns it, and none of another tenant's.

mod common;

use agentd::pb;
use common::*;
use std::time::Duration;

/// Reads changes until every job in `jobs` has a final change (keepalives skipped).
async fn follow(
    mut c: Clients,
    after: u64,
    jobs: usize,
) -> Result<Vec<pb::JobChange>, tonic::Status> {
    let mut s = c
        .jobs
        .watch_jobs(pb::WatchJobsRequest {
            after_cursor: Some(after),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out: Vec<pb::JobChange> = Vec::new();
    let finals = |out: &[pb::JobChange]| {
        out.iter()
            .filter(|c| {
                c.job
                    .as_ref()
                    .is_some_and(|j| j.state >= pb::JobState::Succeeded as i32)
            })
            .count()
    };
    while finals(&out) < jobs {
        let msg = tokio::time::timeout(Duration::from_secs(60), s.message())
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no change for 60 s"))??
            .ok_or_else(|| tonic::Status::aborted("the stream ended"))?;
        out.extend(msg.changes);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_sharing_reads_each_get_every_change_once_in_order() {
    let server = TestServer::start_with(Options {
        env: vec![("AGENTD_STREAM_KEEPALIVE_SECONDS".into(), "1".into())],
        ..Default::default()
    });
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let sessions = [
        a.create_session(&[]).await.session_id,
        a.create_session(&[]).await.session_id,
    ];
    let other = b.create_session(&[]).await.session_id;
    // Some history first, so that watchers from the start read behind the others.
    let (early, late) = (4, 16);
    for i in 0..early {
        let job = a.submit(&sessions[i % 2], "hello").await.job_id;
        a.wait(&job).await;
    }
    let now = a
        .jobs
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .expect("a first keepalive")
        .cursor;
    let mut watchers = Vec::new();
    for i in 0..24 {
        let from = if i % 4 == 0 { 0 } else { now };
        let jobs = if from == 0 { early + late } else { late };
        watchers.push((
            from,
            tokio::spawn(follow(server.clients(KEY_A).await, from, jobs)),
        ));
    }
    let mut submitted = Vec::new();
    for i in 0..late {
        submitted.push(a.submit(&sessions[i % 2], "hello").await.job_id);
        b.submit(&other, "hello").await;
        if i == late / 2 {
            // Joining midway, from now and from the start.
            for from in [now, 0] {
                let jobs = if from == 0 { early + late } else { late };
                watchers.push((
                    from,
                    tokio::spawn(follow(server.clients(KEY_A).await, from, jobs)),
                ));
            }
        }
    }
    for job in &submitted {
        a.wait(job).await;
    }
    // The sequence as one reader sees it afterwards, one change per job state.
    let whole = follow(server.clients(KEY_A).await, 0, early + late)
        .await
        .unwrap();
    assert_eq!(whole.len(), 3 * (early + late), "{whole:#?}");
    let mut last = 0;
    for c in &whole {
        assert!(c.cursor > last, "cursors increase: {whole:#?}");
        last = c.cursor;
    }
    for (from, w) in watchers {
        let seen = w.await.expect("watcher task").expect("watch");
        let want: Vec<&pb::JobChange> = whole.iter().filter(|c| c.cursor > from).collect();
        let got: Vec<&pb::JobChange> = seen.iter().collect();
        assert_eq!(got, want, "the watcher from {from}");
    }
}
