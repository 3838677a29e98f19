//! A cancel storm: 200 running jobs cancelled at once.

use super::*;
use crate::common::*;
use agentd::pb;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// 3. Cancel storm: 200 running jobs cancelled at once.

/// The arguments of the live `sleep N` processes among `wanted`, in one scan of /proc.
pub(crate) fn live_sleepers(wanted: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let parts: Vec<&[u8]> = cmd.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
            if parts.len() == 2 && parts[0].ends_with(b"sleep") {
                let arg = String::from_utf8_lossy(parts[1]).into_owned();
                if wanted.contains(&arg) {
                    out.insert(arg);
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn cancel_storm_of_200_running_jobs_leaves_no_descendant() {
    const N: usize = 200;
    let server = TestServer::start_with(Options {
        args: vec!["--max-concurrent-jobs".into(), N.to_string()],
        ..Default::default()
    });
    let ch = server.channel().await;
    let wanted: BTreeSet<String> = (0..N).map(|i| (62000 + i).to_string()).collect();
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..N {
        let ch = ch.clone();
        submits.spawn(async move {
            let mut c = Clients::new(ch, KEY_A);
            let s = c.create_session(&[]).await;
            c.submit(
                &s.session_id,
                &format!("grandchild {} ; sleep 60", 62000 + i),
            )
            .await
            .job_id
        });
    }
    let jobs: Vec<String> = submits.join_all().await;
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(90), || live_sleepers(&wanted).len()
            == N)
        .await,
        "only {} of {N} jobs got their grandchild running",
        live_sleepers(&wanted).len()
    );
    eprintln!(
        "cancel storm: {N} jobs running after {:?}",
        started.elapsed()
    );
    let mut c = Clients::new(ch.clone(), KEY_A);
    for j in jobs.iter().step_by(10) {
        assert_eq!(c.get_job(j).await.state, pb::JobState::Running as i32);
    }

    let t0 = Instant::now();
    let mut cancels = tokio::task::JoinSet::new();
    for j in jobs.clone() {
        let ch = ch.clone();
        cancels.spawn(async move {
            let mut c = Clients::new(ch, KEY_A);
            c.jobs
                .cancel_job(pb::CancelJobRequest { job_id: j.clone() })
                .await
                .map_err(|e| format!("{j}: {e:?}"))
                .map(|_| ())
        });
    }
    let errors: Vec<String> = cancels
        .join_all()
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(errors.is_empty(), "cancel failed: {errors:?}");
    let mut ends = tokio::task::JoinSet::new();
    for j in jobs.clone() {
        let ch = ch.clone();
        ends.spawn(async move {
            let mut c = Clients::new(ch, KEY_A);
            let events = tokio::time::timeout(Duration::from_secs(60), c.events(&j, 0))
                .await
                .unwrap_or_else(|_| panic!("{j}: stream did not end within 60 s of the cancel"));
            let state = c.get_job(&j).await.state;
            (j, finished(&events).state, state)
        });
    }
    for (j, streamed, stored) in ends.join_all().await {
        assert_eq!(
            streamed,
            pb::JobState::Cancelled as i32,
            "{j}: finished event"
        );
        assert_eq!(stored, pb::JobState::Cancelled as i32, "{j}: stored state");
    }
    eprintln!("cancel storm: all {N} CANCELLED after {:?}", t0.elapsed());
    let sessions_dir = server.data_dir.join("sessions");
    assert!(
        eventually(Duration::from_secs(5), || live_sleepers(&wanted).is_empty()
            && procs_under(&sessions_dir).is_empty())
        .await,
        "descendants survived the cancel storm: sleepers {:?}, in workspaces {:?}",
        live_sleepers(&wanted),
        procs_under(&sessions_dir)
    );
}
