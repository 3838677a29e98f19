//! Soak: 100 concurrent jobs and 1,000 concurrent event streams for N minutes, with sessions
//! created and expiring underneath. Reports the server's RSS, open file descriptors and the data
//! dir's disk usage at the start, while running and at the end; fails on any error. Not part of
//! the default run: `scripts/soak [--minutes N]` runs it with `--ignored`.

mod common;

use agentd::pb;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Session TTL: longer than one job, so sessions expire after their work, while others run.
const SESSION_TTL: u32 = 20;
/// One job: ~10 s of mixed output, sleeps and a file write.
const PROMPT: &str = "lines 50 ; sleep 5 ; write out.txt soak ; lines 50 ; sleep 5";

#[derive(Default)]
struct Counters {
    jobs: AtomicU64,
    sessions: AtomicU64,
    streams: AtomicU64,
    events: AtomicU64,
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    sessions_on_disk: usize,
    sessions_bytes: u64,
    db_bytes: u64,
}

fn sample(server: &TestServer, t0: Instant) -> Sample {
    let sessions = server.data_dir.join("sessions");
    Sample {
        at: t0.elapsed(),
        rss_kib: status_kib(server.pid(), "VmRSS").unwrap_or(0),
        fds: fd_count(server.pid()),
        sessions_on_disk: std::fs::read_dir(&sessions).map(|d| d.count()).unwrap_or(0),
        sessions_bytes: dir_bytes(&sessions),
        db_bytes: std::fs::read_dir(&server.data_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("agentd.db"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0),
    }
}

fn show(label: &str, s: &Sample, c: &Counters) {
    eprintln!(
        "soak {label:>5} t={:>6.1}s rss={:>4} MiB fds={:>4} sessions_on_disk={:>4} \
         sessions_bytes={:>9} db_bytes={:>10} | jobs={} sessions={} streams={} events={}",
        s.at.as_secs_f64(),
        s.rss_kib / 1024,
        s.fds,
        s.sessions_on_disk,
        s.sessions_bytes,
        s.db_bytes,
        c.jobs.load(Ordering::Relaxed),
        c.sessions.load(Ordering::Relaxed),
        c.streams.load(Ordering::Relaxed),
        c.events.load(Ordering::Relaxed),
    );
}

/// What each open descriptor of a process points at, sorted (sockets and pipes by kind only).
fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| {
                    let t = t.display().to_string();
                    match t.split_once(":[") {
                        Some((kind, _)) => kind.to_owned(),
                        None => t,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Streams one job from the start to its finished event; checks order and the final state.
async fn follow(mut c: Clients, job: String, counters: Arc<Counters>) -> Result<(), String> {
    let mut s = c
        .jobs
        .stream_job_events(pb::StreamJobEventsRequest {
            job_id: job.clone(),
            after_seq: 0,
        })
        .await
        .map_err(|e| format!("stream {job}: {e:?}"))?
        .into_inner();
    let mut next = 1;
    let mut last = None;
    while let Some(m) = s
        .message()
        .await
        .map_err(|e| format!("stream {job}: {e:?}"))?
    {
        for e in m.events {
            if e.seq != next {
                return Err(format!("stream {job}: seq {} where {next} was due", e.seq));
            }
            next += 1;
            last = Some(e);
        }
    }
    counters.streams.fetch_add(1, Ordering::Relaxed);
    counters.events.fetch_add(next - 1, Ordering::Relaxed);
    match last.as_ref().map(kind) {
        Some("finished") => Ok(()),
        other => Err(format!("stream {job} ended without finished: {other:?}")),
    }
}

/// One of the concurrent job slots: new session, one job followed by `streams` clients, check
/// the outcome, abandon the session to the reaper; again until `until`.
async fn worker(
    ch: tonic::transport::Channel,
    streams: usize,
    until: Instant,
    counters: Arc<Counters>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut c = Clients::new(ch.clone(), KEY_A);
    while Instant::now() < until && errors.is_empty() {
        let session = match c
            .sessions
            .create_session(pb::CreateSessionRequest {
                ttl_seconds: SESSION_TTL,
                files: vec![pb::FileContent {
                    path: "in.txt".into(),
                    content: vec![b's'; 4096].into(),
                    mode: None,
                }],
                ..Default::default()
            })
            .await
        {
            Ok(r) => r
                .into_inner()
                .session
                .map(|s| s.session_id)
                .unwrap_or_default(),
            Err(e) => {
                errors.push(format!("create session: {e:?}"));
                break;
            }
        };
        counters.sessions.fetch_add(1, Ordering::Relaxed);
        let job = match c
            .jobs
            .submit_job(pb::SubmitJobRequest {
                session_id: session.clone(),
                prompt: PROMPT.into(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner().job.map(|j| j.job_id).unwrap_or_default(),
            Err(e) => {
                errors.push(format!("submit: {e:?}"));
                break;
            }
        };
        let followers: Vec<_> = (0..streams)
            .map(|_| {
                tokio::spawn(follow(
                    Clients::new(ch.clone(), KEY_A),
                    job.clone(),
                    counters.clone(),
                ))
            })
            .collect();
        for f in followers {
            match f.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("follower panicked: {e}")),
            }
        }
        match c
            .jobs
            .get_job(pb::GetJobRequest {
                job_id: job.clone(),
            })
            .await
        {
            Ok(r) => {
                let j = r.into_inner().job.unwrap_or_default();
                if j.state != pb::JobState::Succeeded as i32 {
                    errors.push(format!(
                        "job {job} ended {:?}: {}",
                        j.state, j.error_message
                    ));
                }
            }
            Err(e) => errors.push(format!("get job {job}: {e:?}")),
        }
        match c.download(&session, "out.txt").await {
            Ok(b) if b == b"soak" => {}
            other => errors.push(format!("download from {session}: {other:?}")),
        }
        counters.jobs.fetch_add(1, Ordering::Relaxed);
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak test: run by scripts/soak"]
async fn soak_concurrent_jobs_and_streams_with_expiring_sessions() {
    let minutes = env_u64("SOAK_MINUTES", 5);
    let jobs = env_u64("SOAK_JOBS", 100) as usize;
    let streams = env_u64("SOAK_STREAMS", 1000) as usize;
    let per_job = streams.div_ceil(jobs);
    let server = TestServer::start_with(Options {
        args: vec![
            "--max-concurrent-jobs".into(),
            jobs.to_string(),
            "--reaper-interval-seconds".into(),
            "1".into(),
        ],
        ..Default::default()
    });
    // Ten connections, as ten client processes would have; opened before the baseline.
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(server.channel().await);
    }
    // Warm up, so that the baseline includes what the server opens lazily (connections, store
    // files): every connection makes a call, and one job runs in a session that is deleted.
    for ch in &channels {
        let mut c = Clients::new(ch.clone(), KEY_A);
        c.sessions
            .list_sessions(pb::ListSessionsRequest::default())
            .await
            .expect("warm-up call");
    }
    {
        let mut c = Clients::new(channels[0].clone(), KEY_A);
        let s = c.create_session(&[]).await;
        let j = c.submit(&s.session_id, "lines 10").await;
        c.wait(&j.job_id).await;
        c.sessions
            .delete_session(pb::DeleteSessionRequest {
                session_id: s.session_id,
            })
            .await
            .expect("warm-up delete");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start_fds = fd_targets(server.pid());
    let counters = Arc::new(Counters::default());
    let t0 = Instant::now();
    let start = sample(&server, t0);
    show("start", &start, &counters);
    eprintln!(
        "soak: {minutes} min, {jobs} concurrent jobs, {per_job} streams each ({} streams)",
        jobs * per_job
    );

    let until = Instant::now() + Duration::from_secs(minutes * 60);
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..jobs {
        workers.spawn(worker(
            channels[i % channels.len()].clone(),
            per_job,
            until,
            counters.clone(),
        ));
    }
    // Health, polled with Check (a Watch held open would delay shutdown), must stay SERVING.
    let not_serving = Arc::new(AtomicU64::new(0));
    let health_poll = {
        let mut h = health;
        let not_serving = not_serving.clone();
        tokio::spawn(async move {
            while Instant::now() < until {
                let st = h
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "agentd.v1.JobService".into(),
                    })
                    .await
                    .map(|r| r.into_inner().status);
                let serving = tonic_health::pb::health_check_response::ServingStatus::Serving;
                if st.as_ref().ok() != Some(&(serving as i32)) {
                    eprintln!("soak: health check answered {st:?}");
                    not_serving.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    loop {
        tokio::select! {
            done = workers.join_next() => match done {
                Some(Ok(errs)) => errors.extend(errs),
                Some(Err(e)) => errors.push(format!("worker panicked: {e}")),
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_secs(15)) => {
                let s = sample(&server, t0);
                show("run", &s, &counters);
                samples.push(s);
            }
        }
    }
    let _ = health_poll.await;
    let not_serving = not_serving.load(Ordering::Relaxed);
    if not_serving > 0 {
        errors.push(format!(
            "health was not SERVING in {not_serving} of the 1 s checks under load"
        ));
    }
    let busy = sample(&server, t0);
    show("busy", &busy, &counters);

    // Every session expires after its TTL; the reaper must bring the disk back to where it was.
    let sessions_dir = server.data_dir.join("sessions");
    let emptied = eventually(Duration::from_secs(SESSION_TTL as u64 * 3 + 30), || {
        std::fs::read_dir(&sessions_dir)
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    })
    .await;
    // Let the allocator and the store settle before the final figures.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = sample(&server, t0);
    show("end", &end, &counters);
    let peak_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let peak_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    eprintln!(
        "soak summary: rss start {} MiB, peak {} MiB, end {} MiB; fds start {}, peak {}, end {}; \
         sessions bytes start {}, end {}; db bytes start {}, end {}; {} jobs, {} sessions, \
         {} streams, {} events; {} errors",
        start.rss_kib / 1024,
        peak_rss / 1024,
        end.rss_kib / 1024,
        start.fds,
        peak_fds,
        end.fds,
        start.sessions_bytes,
        end.sessions_bytes,
        start.db_bytes,
        end.db_bytes,
        counters.jobs.load(Ordering::Relaxed),
        counters.sessions.load(Ordering::Relaxed),
        counters.streams.load(Ordering::Relaxed),
        counters.events.load(Ordering::Relaxed),
        errors.len()
    );
    let end_fds = fd_targets(server.pid());
    if end_fds != start_fds {
        eprintln!("soak: fds at start {start_fds:?}\nsoak: fds at end {end_fds:?}");
    }
    // The store opens reader connections on demand (a bounded pool), so its files are counted
    // apart from everything else, which must be exactly as before the load.
    let db = server.data_dir.join("agentd.db").display().to_string();
    let (start_store, start_other): (Vec<_>, Vec<_>) =
        start_fds.iter().partition(|t| t.starts_with(&db));
    let (end_store, end_other): (Vec<_>, Vec<_>) = end_fds.iter().partition(|t| t.starts_with(&db));
    eprintln!(
        "soak: store fds {} at start, {} at the end; other fds {} at start, {} at the end",
        start_store.len(),
        end_store.len(),
        start_other.len(),
        end_other.len()
    );
    assert!(
        errors.is_empty(),
        "{} errors, first ones: {:#?}",
        errors.len(),
        &errors[..errors.len().min(20)]
    );
    assert!(
        counters.jobs.load(Ordering::Relaxed) >= jobs as u64,
        "too little work was done"
    );
    assert!(
        emptied,
        "expired sessions were not all reaped: {} left",
        end.sessions_on_disk
    );
    assert_eq!(
        end.sessions_bytes, start.sessions_bytes,
        "workspace disk not back to baseline"
    );
    // Per kind (sockets, pipes, files): no more open at the end than at the start (a client
    // connection the server closed meanwhile makes one fewer, which is fine).
    let count = |v: &[&String], k: &str| v.iter().filter(|t| t.as_str() == k).count();
    for k in end_other.iter().map(|k| k.as_str()) {
        assert!(
            count(&end_other, k) <= count(&start_other, k),
            "file descriptors leaked: {} {k:?} at the end, {} at the start",
            count(&end_other, k),
            count(&start_other, k)
        );
    }
    assert!(
        end_store.len() <= 32,
        "store files open {} times at the end",
        end_store.len()
    );
    assert!(
        end.rss_kib <= peak_rss.max(start.rss_kib) + 16 * 1024 && end.rss_kib < 512 * 1024,
        "RSS grew after the load ended: peak {} MiB, end {} MiB",
        peak_rss / 1024,
        end.rss_kib / 1024
    );
    assert!(
        procs_under(&sessions_dir).is_empty(),
        "agent processes left: {:?}",
        procs_under(&sessions_dir)
    );
}
