//! Several agentd replicas as separate processes on one Postgres store (the one
//! `AGENTD_TEST_DATABASE_URL` names, each test in its own schema) and one shared workspace root: any replica
//! answers any RPC, a job runs on exactly one replica, streams on other replicas see its events
//! live, a replica killed with -9 loses nothing acknowledged, and its jobs are settled by the others.
//!
//! Built without `AGENTD_TEST_DATABASE_URL` these tests are reported as ignored (see build.rs;
//! `scripts/test` always sets it, starting a Postgres if it must); set, an unreachable Postgres
//! fails them.

mod common;

use agentd::pb;
use common::mock_model::{MockModel, claude_profile, genuine_claude};
use common::pg::Schema;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Seconds a replica's lease lasts in these tests (renewed every second).
const LEASE: u64 = 3;

/// Replicas sharing one schema and one workspace root. Dropping it kills them and drops the schema.
struct Cluster {
    schema: Schema,
    root: tempfile::TempDir,
    replicas: Vec<TestServer>,
    metrics: Vec<String>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            schema: Schema::new("agentd_r"),
            root: tempfile::tempdir().expect("workspace root"),
            replicas: Vec::new(),
            metrics: Vec::new(),
        }
    }

    fn store_url(&self) -> String {
        self.schema.store_url()
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    /// Starts replica `name` (`--on-shutdown keep`, the default); returns its index.
    fn start(&mut self, name: &str, extra: &[&str]) -> usize {
        self.start_env(name, extra, Vec::new())
    }

    /// Starts replica `name` whose jobs end with it (`--on-shutdown cancel`): the failover tests
    /// of that mode, where a lost replica's jobs are settled at its lease's expiry.
    fn start_cancelling(&mut self, name: &str) -> usize {
        self.start_env(name, &[], vec![cancel_on_shutdown()])
    }

    /// Starts replica `name` whose supervisors outlive it (`--on-shutdown keep`, issue #23).
    fn start_keeping(&mut self, name: &str, adopt_timeout: u64) -> usize {
        let env = vec![
            ("AGENTD_ON_SHUTDOWN".into(), "keep".into()),
            ("AGENTD_ADOPT_TIMEOUT".into(), adopt_timeout.to_string()),
        ];
        self.start_env(name, &[], env)
    }

    fn start_env(&mut self, name: &str, extra: &[&str], env: Vec<(String, String)>) -> usize {
        self.start_with(
            name,
            extra,
            Options {
                env,
                ..Default::default()
            },
        )
    }

    /// Starts replica `name` with `config` (TOML: the agent profiles); returns its index.
    fn start_configured(&mut self, name: &str, config: &str) -> usize {
        self.start_with(
            name,
            &[],
            Options {
                config: Some(config.to_owned()),
                ..Default::default()
            },
        )
    }

    /// Starts replica `name` on the cluster's store and workspace root, with `opts` besides.
    fn start_with(&mut self, name: &str, extra: &[&str], opts: Options) -> usize {
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = [
            "--store",
            &self.store_url(),
            "--workspace-root",
            &self.root.path().display().to_string(),
            "--replica-id",
            name,
            "--lease-seconds",
            &LEASE.to_string(),
            "--metrics-listen",
            &metrics,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        self.replicas
            .push(TestServer::start_with(Options { args, ..opts }));
        self.metrics.push(metrics);
        self.replicas.len() - 1
    }

    async fn clients(&self, i: usize) -> Clients {
        self.replicas[i].clients(KEY_A).await
    }

    /// A new session on replica `i` with a job of `prompt`, once that job runs (on `i` when it is
    /// the only replica); returns that replica's clients, the session and the job.
    async fn running_on(&self, i: usize, prompt: &str) -> (Clients, String, pb::Job) {
        let mut c = self.clients(i).await;
        let session = c.create_session(&[]).await.session_id;
        let job = c.submit(&session, prompt).await;
        c.wait_state(&job.job_id, pb::JobState::Running, Duration::from_secs(30))
            .await;
        (c, session, job)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The schema (a field) is dropped after this, once nothing uses it.
        for r in &mut self.replicas {
            r.kill9();
        }
    }
}

/// Reads a stream until `n` events arrived, returning them (the stream is then dropped, as by a
/// client whose connection broke).
async fn read_some(c: &mut Clients, job: &str, n: usize) -> Vec<pb::JobEvent> {
    let mut out = Vec::new();
    let what = format!("{n} events");
    c.follow_until(job, Duration::from_secs(30), &what, |e| {
        out.push(e.clone());
        (out.len() >= n).then_some(())
    })
    .await;
    out
}

fn seqs(events: &[pb::JobEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn assert_complete(events: &[pb::JobEvent], what: &str) {
    let s = seqs(events);
    let want: Vec<u64> = (1..=s.len() as u64).collect();
    assert_eq!(
        s, want,
        "{what}: seqs must be 1..=n with no gap or duplicate"
    );
    assert_eq!(
        events.last().map(kind),
        Some("finished"),
        "{what}: ends with the finished event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn a_lost_replica_loses_nothing_and_its_jobs_are_settled_by_the_others() {
    let mut cl = Cluster::new();
    // A alone first, so that A is the one running the job.
    let a = cl.start_cancelling("replica-a");
    let (mut ca, session, j1) = cl.running_on(a, "lines 20 ; sleep 120").await;
    let b = cl.start_cancelling("replica-b");
    let c = cl.start_cancelling("replica-c");
    let (mut cb, mut cc) = (cl.clients(b).await, cl.clients(c).await);

    // Any replica answers, for jobs it does not run too.
    let seen_by_b = cb.get_job(&j1.job_id).await;
    assert_eq!(seen_by_b.state, pb::JobState::Running as i32);
    // The session's next job, submitted on C, waits behind the running one.
    let j2 = cc.submit(&session, "after the loss").await;
    assert_eq!(j2.state, pb::JobState::Queued as i32);

    // Streams on B and C follow the job A runs, live.
    let follow =
        |mut cl: Clients, job: String| tokio::spawn(async move { cl.events(&job, 0).await });
    let on_b = follow(cl.clients(b).await, j1.job_id.clone());
    let on_c = follow(cl.clients(c).await, j1.job_id.clone());
    // A client streaming from A has the first events when A dies.
    let from_a = read_some(&mut ca, &j1.job_id, 21).await;
    let last = from_a.last().expect("events").seq;

    let killed_at = std::time::Instant::now();
    cl.replicas[a].kill9();

    // The client reattaches to B from its last seq and loses nothing.
    let rest = cb.events(&j1.job_id, last).await;
    let mut whole = from_a.clone();
    whole.extend(rest);
    assert_complete(&whole, "reattached stream");
    let on_b = on_b.await.expect("stream on B");
    let on_c = on_c.await.expect("stream on C");
    assert_complete(&on_b, "stream on B");
    assert_complete(&on_c, "stream on C");
    assert_eq!(seqs(&on_b), seqs(&whole));
    assert_eq!(seqs(&on_c), seqs(&whole));
    assert_eq!(
        texts(&on_b)[..20],
        (1..=20).map(|i| format!("line {i}")).collect::<Vec<_>>()[..]
    );

    // The lost job failed, naming the lost replica, once its lease ran out.
    let j1_final = cc.get_job(&j1.job_id).await;
    assert_eq!(j1_final.state, pb::JobState::Failed as i32, "{j1_final:?}");
    assert!(
        j1_final.error_message.contains("replica-a"),
        "reason names the lost replica: {:?}",
        j1_final.error_message
    );
    assert!(
        killed_at.elapsed() >= Duration::from_secs(LEASE - 1),
        "settled only after the lease ran out"
    );
    // The queued job was taken by a surviving replica and ran.
    let j2_final = cb
        .wait_state(&j2.job_id, pb::JobState::Succeeded, Duration::from_secs(60))
        .await;
    assert!(j2_final.result.contains("after the loss"), "{j2_final:?}");
    // The lost replica's agent did not outlive it.
    let root = cl.root().to_path_buf();
    assert!(
        eventually(Duration::from_secs(10), || procs_under(&root).is_empty()).await,
        "processes left in the workspaces: {:?}",
        procs_under(&root)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn cancel_on_one_replica_stops_the_job_running_on_another() {
    let mut cl = Cluster::new();
    let a = cl.start("replica-a", &[]);
    let (mut ca, _, job) = cl.running_on(a, "sleep 120").await;
    let b = cl.start("replica-b", &[]);
    let mut cb = cl.clients(b).await;
    let cancelled = cb.cancel(&job.job_id).await;
    assert_eq!(
        cancelled.state,
        pb::JobState::Cancelled as i32,
        "cancel returns once the owner stored the final state: {cancelled:?}"
    );
    assert!(
        cancelled.error_message.contains("cancelled by request"),
        "{cancelled:?}"
    );
    let root: PathBuf = cl.root().to_path_buf();
    assert!(
        eventually(Duration::from_secs(10), || procs_under(&root).is_empty()).await,
        "the agent's tree is gone: {:?}",
        procs_under(&root)
    );
    // A stream on A (the owner) and one on B see the same complete log.
    let on_a = ca.events(&job.job_id, 0).await;
    let on_b = cb.events(&job.job_id, 0).await;
    assert_complete(&on_a, "on A");
    assert_eq!(seqs(&on_a), seqs(&on_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn fifty_jobs_spread_over_three_replicas_each_run_once_in_session_order() {
    const SESSIONS: usize = 10;
    const PER_SESSION: usize = 5;
    let mut cl = Cluster::new();
    let ids: Vec<usize> = ["replica-a", "replica-b", "replica-c"]
        .iter()
        .map(|n| cl.start(n, &["--max-concurrent-jobs", "3"]))
        .collect();
    let mut clients = Vec::new();
    for &i in &ids {
        clients.push(cl.clients(i).await);
    }
    let mut sessions = Vec::new();
    for s in 0..SESSIONS {
        sessions.push(clients[s % 3].create_session(&[]).await.session_id);
    }
    // Round-robin over replicas and sessions; each job appends its token to its session's file.
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut jobs = Vec::new();
    for n in 0..SESSIONS * PER_SESSION {
        let session = &sessions[n % SESSIONS];
        let token = format!("tok-{n}");
        let prompt = format!("bash echo {token} >> runs.txt ; sleep 0.2");
        jobs.push(clients[n % 3].submit(session, &prompt).await.job_id);
        expected.entry(session.clone()).or_default().push(token);
    }
    for (n, job) in jobs.iter().enumerate() {
        let done = clients[(n + 1) % 3]
            .wait_state(job, pb::JobState::Succeeded, Duration::from_secs(180))
            .await;
        assert_eq!(done.job_id, *job);
    }
    for (session, tokens) in &expected {
        let file = clients[0]
            .download(session, "runs.txt")
            .await
            .expect("download runs.txt");
        let lines: Vec<String> = String::from_utf8(file)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            &lines, tokens,
            "session {session}: every job ran exactly once, in submission order"
        );
    }
    // The work was shared: every job finished on exactly one replica, and more than one worked.
    let mut per_replica = Vec::new();
    for m in &cl.metrics {
        let page = scrape(m).await;
        per_replica
            .push(sample(&page, r#"agentd_jobs_finished_total{state="SUCCEEDED"}"#) as usize);
    }
    assert_eq!(
        per_replica.iter().sum::<usize>(),
        SESSIONS * PER_SESSION,
        "{per_replica:?}"
    );
    assert!(
        per_replica.iter().filter(|n| **n > 0).count() >= 2,
        "jobs spread over the replicas: {per_replica:?}"
    );
}

/// Jobs that finished SUCCEEDED on the replica whose metrics listen at `addr`.
async fn succeeded_on(addr: &str) -> usize {
    sample(
        &scrape(addr).await,
        r#"agentd_jobs_finished_total{state="SUCCEEDED"}"#,
    ) as usize
}

/// [`succeeded_on`] once it reached `want`, or as it is after 5 s: the counter goes up right
/// after the job's final write, so a client that already saw the job final may scrape first.
async fn succeeded_on_reaching(addr: &str, want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = succeeded_on(addr).await;
        if n >= want || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts replica A (supervisors outlive it) with a streaming job running on it, then B.
async fn cluster_with_a_job_on_a(adopt_timeout: u64, rounds: usize) -> (Cluster, String) {
    let mut cl = Cluster::new();
    let a = cl.start_keeping("replica-a", adopt_timeout);
    let (_, _, job) = cl.running_on(a, &streaming(rounds)).await;
    cl.start_keeping("replica-b", adopt_timeout);
    (cl, job.job_id)
}

/// Issue #23 with replicas: replica A is killed with -9 mid-job while B runs on, and restarts
/// within its lease: A adopts the job, which ends SUCCEEDED there with its whole output once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn a_replica_restarted_within_its_lease_adopts_its_job() {
    let rounds = 15;
    let (mut cl, job) = cluster_with_a_job_on_a(600, rounds).await;
    let (a, b) = (0, 1);
    let mut cb = cl.clients(b).await;
    let before = read_some(&mut cb, &job, 4).await;
    cl.replicas[a].kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cl.replicas[a].restart();
    let rest = cb.events(&job, before.last().map_or(0, |e| e.seq)).await;
    let all = cb.events(&job, 0).await;
    let done = cb.get_job(&job).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    assert_complete(&all, "the adopted job's log");
    assert_eq!(texts(&all), streamed(rounds));
    let held: Vec<pb::JobEvent> = before.into_iter().chain(rest).collect();
    assert_eq!(held, all, "a stream held on B saw a gap or a duplicate");
    assert_eq!(
        succeeded_on_reaching(&cl.metrics[a], 1).await,
        1,
        "finished on A"
    );
    assert_eq!(succeeded_on(&cl.metrics[b]).await, 0, "not on B");
}

/// A stays down past its lease (three leases) while B sweeps for orphans: B does not fail the
/// job, whose supervisor still runs it, and A, back, adopts it to a SUCCEEDED end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn a_replica_down_past_its_lease_still_adopts_and_no_other_replica_fails_its_job() {
    let rounds = 60;
    let (mut cl, job) = cluster_with_a_job_on_a(600, rounds).await;
    let (a, b) = (0, 1);
    let mut cb = cl.clients(b).await;
    read_some(&mut cb, &job, 4).await;
    cl.replicas[a].kill9();
    let down = std::time::Instant::now();
    while down.elapsed() < Duration::from_secs(3 * LEASE) {
        let j = cb.get_job(&job).await;
        assert_eq!(
            j.state,
            pb::JobState::Running as i32,
            "B settled a job whose supervisor still runs it: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cl.replicas[a].restart();
    let all = cb.events(&job, 0).await;
    let done = cb.get_job(&job).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{done:?}");
    assert_complete(&all, "the adopted job's log");
    assert_eq!(texts(&all), streamed(rounds));
    assert_eq!(
        succeeded_on_reaching(&cl.metrics[a], 1).await,
        1,
        "finished on A"
    );
}

/// A never comes back: its supervisor ends the tree at the adopt timeout, and only then does B
/// settle the job (taking it over, one lease generation on). A, restarting afterwards, cannot
/// adopt it any more: the job stays FAILED with B's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn a_lost_replica_job_is_failed_only_after_the_adopt_timeout() {
    let adopt_timeout = 4;
    let (mut cl, job) = cluster_with_a_job_on_a(adopt_timeout, 200).await;
    let (a, b) = (0, 1);
    let mut cb = cl.clients(b).await;
    read_some(&mut cb, &job, 4).await;
    cl.replicas[a].kill9();
    let down = std::time::Instant::now();
    let done = cb
        .wait_state(&job, pb::JobState::Failed, Duration::from_secs(60))
        .await;
    let waited = down.elapsed();
    assert!(
        waited >= Duration::from_secs(adopt_timeout),
        "failed after {waited:?}, before the supervisor's adopt timeout"
    );
    assert!(
        done.error_message.contains("replica-a") && done.error_message.contains("adopt"),
        "{done:?}"
    );
    let root = cl.root().to_path_buf();
    assert!(
        eventually(Duration::from_secs(10), || procs_under(&root).is_empty()).await,
        "the unadopted tree outlived its adopt timeout: {:?}",
        procs_under(&root)
    );
    cl.replicas[a].restart();
    let mut ca = cl.clients(a).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = ca.get_job(&job).await;
    assert_eq!(after, cb.get_job(&job).await);
    assert_eq!(after.state, pb::JobState::Failed as i32, "{after:?}");
    assert_eq!(after.error_message, done.error_message);
}

/// A replica restarted under the same id owns what its previous process owned: a job whose agent
/// died with that process (supervisors die with agentd here, `--on-shutdown cancel`) is failed at
/// once, not renewed by the new process for ever, and the session's next job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn a_replica_restarted_under_its_id_settles_what_it_cannot_adopt() {
    let mut cl = Cluster::new();
    let a = cl.start_cancelling("replica-a");
    let (mut ca, session, job) = cl.running_on(a, "sleep 120").await;
    let next = ca.submit(&session, "after the restart").await;
    cl.replicas[a].restart();
    let mut ca = cl.clients(a).await;
    let done = ca
        .wait_state(
            &job.job_id,
            pb::JobState::Failed,
            Duration::from_secs(4 * LEASE),
        )
        .await;
    assert!(done.error_message.contains("server restarted"), "{done:?}");
    let next = ca
        .wait_state(
            &next.job_id,
            pb::JobState::Succeeded,
            Duration::from_secs(60),
        )
        .await;
    assert!(next.result.contains("after the restart"), "{next:?}");
}

/// A cluster whose replicas will run the genuine Claude Code against the scripted model: the
/// cluster, the model (its log in the workspace root) and the replicas' config.
fn claude_cluster() -> (Cluster, MockModel, String) {
    let cl = Cluster::new();
    let mock = MockModel::start(cl.root(), &[]);
    let config = claude_profile(&genuine_claude(), &mock.base);
    (cl, mock, config)
}

/// Follows `job` until its first permission request.
async fn first_permission_request(c: &mut Clients, job: &str) -> pb::PermissionRequest {
    c.follow_until(
        job,
        Duration::from_secs(120),
        "a permission request",
        |e| match &e.kind {
            Some(pb::job_event::Kind::PermissionRequest(r)) => Some(r.clone()),
            _ => None,
        },
    )
    .await
}

/// Two-way control across replicas (issue #17): a job that asks runs on A (genuine Claude Code
/// against the scripted model); its permission request answered through B reaches A's agent and
/// the tool runs; a second answer, through A, is refused because the first one won in the
/// store; another tenant's answer through B learns nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn control_answers_reach_the_job_from_any_replica() {
    let (mut cl, mock, config) = claude_cluster();
    let start = |cl: &mut Cluster, name: &str| cl.start_configured(name, &config);
    // A alone first, so that A is the one running the job.
    let a = start(&mut cl, "replica-a");
    let mut ca = cl.clients(a).await;
    let session = ca.create_session(&[]).await;
    let job = ca
        .submit_request(pb::SubmitJobRequest {
            session_id: session.session_id.clone(),
            agent: "claude".into(),
            prompt: "write across.txt answered on another replica".into(),
            permission_mode: "ask".into(),
            permission_timeout_seconds: 120,
            timeout_seconds: 180,
            ..Default::default()
        })
        .await;
    let req = first_permission_request(&mut ca, &job.job_id).await;
    assert_eq!(req.tool, "Write");
    let b = start(&mut cl, "replica-b");
    let mut cb = cl.clients(b).await;
    assert!(
        ca.download(&session.session_id, "across.txt")
            .await
            .is_err()
    );

    let answer = |allow: bool| pb::RespondToPermissionRequest {
        job_id: job.job_id.clone(),
        request_id: req.request_id.clone(),
        allow,
        message: String::new(),
    };
    // Another tenant, through B: the job does not exist for it.
    let mut other = cl.replicas[b].clients(KEY_B).await;
    let st = other
        .jobs
        .respond_to_permission(answer(true))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::NotFound, "{st:?}");
    cb.jobs
        .respond_to_permission(answer(true))
        .await
        .expect("the answer through B is delivered by A");
    let st = ca
        .jobs
        .respond_to_permission(answer(false))
        .await
        .expect_err("a second answer, through A");
    assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
    assert_eq!(reason(&st), "PERMISSION_DECIDED");

    let done = cb
        .wait_state(
            &job.job_id,
            pb::JobState::Succeeded,
            Duration::from_secs(150),
        )
        .await;
    let written = cb.download(&session.session_id, "across.txt").await;
    assert_eq!(
        written.ok().as_deref(),
        Some(&b"answered on another replica\n"[..]),
        "{done:?}"
    );
    let events = cb.events(&job.job_id, 0).await;
    let resolved: Vec<(String, bool)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::PermissionResolved(r)) => Some((r.who.clone(), r.allow)),
            _ => None,
        })
        .collect();
    assert_eq!(resolved, [("caller".to_owned(), true)]);
    // The model's next request after the tool carried its result.
    let requests = mock.requests_text();
    assert!(requests.contains("Tool said"), "{requests}");
}

/// Submits `prompt` under `ask` in `session` (Claude, as `genuine_claude` configures it).
async fn submit_asking(c: &mut Clients, session: &str, prompt: &str) -> pb::Job {
    c.submit_request(pb::SubmitJobRequest {
        session_id: session.into(),
        agent: "claude".into(),
        prompt: prompt.into(),
        permission_mode: "ask".into(),
        timeout_seconds: 180,
        ..Default::default()
    })
    .await
}

/// Follows `job` until its agent reported its start (so the job runs on the replica `c` talks to
/// when that replica is the only one).
async fn until_init(c: &mut Clients, job: &str) {
    c.follow_until(job, Duration::from_secs(120), "the agent's start", |e| {
        (kind(e) == "init").then_some(())
    })
    .await
}

/// SendInput and InterruptJob across replicas (issue #17): two jobs that ask run on A (genuine
/// Claude Code against the scripted model, each in its own session, both started before B
/// exists); input sent through B reaches A's agent on its next model request, an interrupt sent
/// through B ends the other job CANCELLED (INTERRUPTED) and the session's next job continues its
/// conversation; once a job is final, more input or another interrupt gets JOB_FINISHED from
/// either replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn control_input_and_interrupts_reach_the_job_from_any_replica() {
    let (mut cl, mock, config) = claude_cluster();
    let a = cl.start_configured("replica-a", &config);
    let mut ca = cl.clients(a).await;
    let talk = ca.create_session(&[]).await.session_id;
    let stop = ca.create_session(&[]).await.session_id;
    // The first turn's model answer waits long enough for B to start and the input to arrive
    // mid-turn; the second one's never comes before the interrupt.
    let talking = submit_asking(&mut ca, &talk, "delay 25 remember kiwi").await;
    let stopped = submit_asking(&mut ca, &stop, "delay 120 remember papaya").await;
    until_init(&mut ca, &talking.job_id).await;
    until_init(&mut ca, &stopped.job_id).await;
    let b = cl.start_configured("replica-b", &config);
    let mut cb = cl.clients(b).await;

    cb.jobs
        .send_input(pb::SendInputRequest {
            job_id: talking.job_id.clone(),
            text: "remember mango".into(),
        })
        .await
        .expect("input through B, delivered by A");
    cb.jobs
        .interrupt_job(pb::InterruptJobRequest {
            job_id: stopped.job_id.clone(),
        })
        .await
        .expect("interrupt through B, delivered by A");

    let done = cb
        .wait_state(
            &talking.job_id,
            pb::JobState::Succeeded,
            Duration::from_secs(150),
        )
        .await;
    let requests = mock.requests_text();
    assert_eq!(
        done.result, "I will remember mango.",
        "{done:?}\n{requests}"
    );
    assert!(
        requests.contains("\"prompt\": \"remember mango\""),
        "the model's next request carries the input\n{requests}"
    );
    let events = cb.events(&talking.job_id, 0).await;
    let inputs: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Input(i)) => Some(i.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(inputs, ["remember mango"]);

    let ended = ca
        .wait_state(
            &stopped.job_id,
            pb::JobState::Cancelled,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(ended.reason, "INTERRUPTED", "{ended:?}");
    let next = submit_asking(&mut cb, &stop, "recall").await;
    let next = cb
        .wait_state(
            &next.job_id,
            pb::JobState::Succeeded,
            Duration::from_secs(150),
        )
        .await;
    assert_eq!(next.result, "You asked me to remember papaya.", "{next:?}");

    // Final jobs take no more control, whichever replica is asked.
    for c in [&mut ca, &mut cb] {
        for job in [&talking.job_id, &stopped.job_id] {
            let st = c
                .jobs
                .interrupt_job(pb::InterruptJobRequest {
                    job_id: job.clone(),
                })
                .await
                .expect_err("an interrupt of a final job");
            assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
            assert_eq!(reason(&st), "JOB_FINISHED", "{st:?}");
            let st = c
                .jobs
                .send_input(pb::SendInputRequest {
                    job_id: job.clone(),
                    text: "too late".into(),
                })
                .await
                .expect_err("input for a final job");
            assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
            assert_eq!(reason(&st), "JOB_FINISHED", "{st:?}");
        }
    }
}
