//! `replicas` (issues #6 and #8): jobs/s of one many-session workload on 1, 2 and 3 agentd
//! replicas sharing a Postgres store and a workspace root, next to the single server on its
//! embedded SQLite measured in the same run (the baseline). Each Postgres measurement gets a fresh
//! schema, dropped afterwards. The scenario fails unless every job ran exactly once: one `started`
//! event and one line of its own in its log, one line in its session's `runs.txt` in submission
//! order, and the replicas' finished-job counters adding up to the number of jobs.
//!
//! All replicas share this machine's cores with Postgres and the client, so more replicas add
//! capacity only where one replica leaves cores idle; the figures say nothing of several machines.

use crate::harness::{Agentd, Clients, Env, TempDir, succeeded, text};
use crate::report::Metric;
use agentd::pb;
use anyhow::{Context, Result, bail, ensure};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for one job's stream to reach its finished event.
const JOB_WITHIN: Duration = Duration::from_secs(120);

fn database_url() -> String {
    std::env::var("AGENTD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `url` without the password of its user part, for messages.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsable URL)".into();
    };
    let (auth, host) = match rest.split_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    match auth {
        Some(a) => {
            let user = a.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => format!("{scheme}://{host}"),
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| {
        format!(
            "Postgres at {} is unreachable: the replicas scenario needs it (set \
             AGENTD_TEST_DATABASE_URL, or start it with: pg_ctlcluster $(ls /etc/postgresql) main start)",
            redacted(url)
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("agentd-bench: replicas: Postgres connection: {e}");
        }
    });
    Ok(client)
}

/// Where one measurement runs.
enum Store {
    /// One agentd on its embedded SQLite.
    Sqlite,
    /// This many replicas on one fresh Postgres schema.
    Postgres(usize),
}

/// The workload's size.
struct Load {
    sessions: usize,
    jobs: usize,
}

/// What one measurement found.
struct Outcome {
    jobs_per_s: f64,
    /// Jobs each replica ran (from its metrics).
    per_replica: Vec<u64>,
}

pub async fn replicas(env: &Env) -> Result<Vec<Metric>> {
    let load = Load {
        sessions: env.size(10, 50),
        jobs: env.size(40, 200),
    };
    let url = database_url();
    // Before anything starts: an unreachable Postgres fails the scenario, never skips it.
    connect(&url).await?;
    let base = measure(env, &url, Store::Sqlite, &load).await?;
    let mut out = Vec::new();
    for n in 1..=3 {
        let o = measure(env, &url, Store::Postgres(n), &load).await?;
        out.push(
            Metric::new(&format!("replicas.postgres_{n}"), o.jobs_per_s, "jobs/s")
                .baseline(base.jobs_per_s),
        );
        eprintln!(
            "agentd-bench: replicas: postgres×{n}: {:.0} jobs/s, jobs per replica {:?} \
             (sqlite×1: {:.0} jobs/s)",
            o.jobs_per_s, o.per_replica, base.jobs_per_s
        );
    }
    Ok(out)
}

/// Runs the workload on `store`; a Postgres schema is dropped whatever the outcome.
async fn measure(env: &Env, url: &str, store: Store, load: &Load) -> Result<Outcome> {
    match store {
        Store::Sqlite => {
            let m = free_addr()?;
            let a = Agentd::start(env, &["--metrics-listen", &m])?;
            workload(&[(a, m)], load).await
        }
        Store::Postgres(n) => {
            let schema = format!("agentd_bench_{}", uuid::Uuid::new_v4().simple());
            let sep = if url.contains('?') { '&' } else { '?' };
            let store_url = format!("{url}{sep}options=-csearch_path%3D{schema}");
            let outcome = async {
                let root = TempDir::new("replicas-root")?;
                let root_arg = root.path().display().to_string();
                let mut replicas = Vec::with_capacity(n);
                for i in 0..n {
                    let m = free_addr()?;
                    let id = format!("bench-{i}");
                    let a = Agentd::start(
                        env,
                        &[
                            "--store",
                            &store_url,
                            "--workspace-root",
                            &root_arg,
                            "--replica-id",
                            &id,
                            "--metrics-listen",
                            &m,
                        ],
                    )?;
                    replicas.push((a, m));
                }
                workload(&replicas, load).await
                // The replicas are killed here, before their schema goes.
            }
            .await;
            let dropped = drop_schema(url, &schema).await;
            let outcome = outcome?;
            dropped?;
            Ok(outcome)
        }
    }
}

async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    connect(url)
        .await?
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .with_context(|| format!("drop schema {schema}"))
}

/// A free loopback port for a metrics listener (agentd does not announce that one's port).
fn free_addr() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// What a job's event log showed.
struct Seen {
    started: usize,
    own_lines: usize,
    other_marks: Vec<String>,
}

/// `load.jobs` `mark` jobs over `load.sessions` sessions, each submitted to the next replica in
/// turn (as a round-robin load balancer would) and followed on another one; the clock runs from
/// the first SubmitJob until every job's finished event arrived. Then checks that each job ran
/// exactly once.
async fn workload(replicas: &[(Agentd, String)], load: &Load) -> Result<Outcome> {
    let r = replicas.len();
    let mut clients = Vec::with_capacity(r);
    for (a, _) in replicas {
        clients.push(a.clients().await?);
    }
    let mut sessions = Vec::with_capacity(load.sessions);
    for s in 0..load.sessions {
        sessions.push(clients[s % r].session().await?);
    }

    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (s, session) in sessions.iter().enumerate() {
        let (clients, session) = (clients.clone(), session.clone());
        // Job n belongs to session n % sessions, so the sessions' jobs interleave in n.
        let ns: Vec<usize> = (s..load.jobs).step_by(load.sessions).collect();
        tasks.spawn(async move {
            let mut jobs = Vec::with_capacity(ns.len());
            for &n in &ns {
                let job = clients[n % r]
                    .clone()
                    .submit(&session, &format!("mark j{n}"))
                    .await
                    .with_context(|| format!("submit job {n}"))?;
                jobs.push((n, job));
            }
            let mut seen = Vec::with_capacity(jobs.len());
            for (n, job) in jobs {
                let own = format!("m j{n}");
                let mut s = Seen {
                    started: 0,
                    own_lines: 0,
                    other_marks: Vec::new(),
                };
                let mut c = clients[(n + 1) % r].clone();
                let finished = tokio::time::timeout(
                    JOB_WITHIN,
                    c.follow(&job, |_, evs| {
                        for e in evs {
                            if matches!(e.kind, Some(pb::job_event::Kind::Started(_))) {
                                s.started += 1;
                            }
                            match text(e) {
                                Some(t) if t == own => s.own_lines += 1,
                                Some(t) if t.starts_with("m ") => s.other_marks.push(t.to_owned()),
                                _ => {}
                            }
                        }
                    }),
                )
                .await
                .with_context(|| format!("job {n} ({job}) not finished within {JOB_WITHIN:?}"))?
                .with_context(|| format!("follow job {n} ({job})"))?;
                succeeded(&finished).with_context(|| format!("job {n} ({job})"))?;
                seen.push((n, job, s));
            }
            anyhow::Ok((session, ns, seen))
        });
    }
    let mut done = Vec::with_capacity(load.sessions);
    while let Some(res) = tasks.join_next().await {
        done.push(res.context("session task")??);
    }
    let wall = t0.elapsed();

    for (session, ns, seen) in &done {
        for (n, job, s) in seen {
            ensure!(
                s.started == 1 && s.own_lines == 1 && s.other_marks.is_empty(),
                "job {n} ({job}) did not run exactly once: {} started events, {} lines of its own, \
                 other jobs' lines {:?}",
                s.started,
                s.own_lines,
                s.other_marks
            );
        }
        // The workspace is the one place a second run would leave a trace outside the event log.
        let want: Vec<String> = ns.iter().map(|n| format!("j{n}")).collect();
        let runs = download(&mut clients[(ns[0] + 2) % r].clone(), session, "runs.txt").await?;
        let got: Vec<&str> = std::str::from_utf8(&runs)
            .context("runs.txt is not UTF-8")?
            .lines()
            .collect();
        ensure!(
            got == want,
            "session {session}: runs.txt holds {got:?}, want each job once in submission order \
             {want:?}"
        );
    }
    let mut per_replica = Vec::with_capacity(r);
    for (_, m) in replicas {
        per_replica.push(finished_jobs(m).await?);
    }
    let total: u64 = per_replica.iter().sum();
    ensure!(
        total == load.jobs as u64,
        "the replicas report {total} finished jobs ({per_replica:?}) for {} submitted",
        load.jobs
    );
    Ok(Outcome {
        jobs_per_s: load.jobs as f64 / wall.as_secs_f64(),
        per_replica,
    })
}

async fn download(c: &mut Clients, session: &str, path: &str) -> Result<Vec<u8>> {
    let mut s = c
        .files
        .download_file(pb::DownloadFileRequest {
            session_id: session.into(),
            path: path.into(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("download {path} of session {session}"))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        if let Some(pb::download_file_response::Part::Chunk(c)) = m.part {
            out.extend_from_slice(&c);
        }
    }
    Ok(out)
}

/// `agentd_jobs_finished_total{state="SUCCEEDED"}` from the metrics listener at `addr`.
async fn finished_jobs(addr: &str) -> Result<u64> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to the metrics listener {addr}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        .await?;
    let mut page = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut page))
        .await
        .context("metrics page within 20 s")??;
    if !page.starts_with("HTTP/1.1 200") {
        bail!("metrics listener {addr} answered {:?}", page.lines().next());
    }
    let series = r#"agentd_jobs_finished_total{state="SUCCEEDED"} "#;
    Ok(page
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .map(|v| v.trim().parse::<f64>())
        .transpose()
        .context("metrics: not a number")?
        .unwrap_or(0.0) as u64)
}
