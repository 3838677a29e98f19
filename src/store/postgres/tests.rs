//! The contract suite and the scale-out behaviour on the Postgres named by
//! `AGENTD_TEST_DATABASE_URL`, each test in a fresh schema that is dropped afterwards, also when
//! the test fails. Built without that variable, these tests are reported as ignored (so `cargo
//! test` runs anywhere); `scripts/test` always sets it, starting a Postgres if it must. Set but
//! unreachable, the tests fail; they never skip themselves.

use super::*;
use crate::store::DynStore;
use crate::store::contract::{Harness, NO_LIMITS, job};
use std::path::Path;
use std::sync::Arc;

/// The Postgres of the tests: the variable at run time, else the one the tests were built with
/// (which is what turned them on, see build.rs).
fn database_url() -> String {
    std::env::var("AGENTD_TEST_DATABASE_URL")
        .ok()
        .or_else(|| option_env!("AGENTD_TEST_DATABASE_URL").map(String::from))
        .expect("the Postgres tests need AGENTD_TEST_DATABASE_URL")
}

/// One fresh schema; every `open` opens a new store on it.
pub(super) struct PgHarness {
    schema: String,
}

impl PgHarness {
    pub(super) fn new() -> Self {
        Self {
            schema: format!("agentd_test_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn url(&self) -> String {
        let base = database_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-csearch_path%3D{}", self.schema)
    }

    async fn pg(&self) -> PgStore {
        PgStore::open(&self.url())
            .await
            .unwrap_or_else(|e| panic!("AGENTD_TEST_DATABASE_URL is set but cannot be opened: {e}"))
    }
}

#[async_trait]
impl Harness for PgHarness {
    async fn open(&self) -> DynStore {
        Arc::new(self.pg().await)
    }
}

impl Drop for PgHarness {
    fn drop(&mut self) {
        // Drop runs outside any runtime's reach (maybe while unwinding), so the cleanup gets a
        // thread and a runtime of its own.
        let schema = self.schema.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let (client, conn) = database_url()
                    .parse::<tokio_postgres::Config>()?
                    .connect(NoTls)
                    .await?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!(
                        "DROP SCHEMA IF EXISTS {} CASCADE",
                        migrate::quote_ident(&schema)
                    ))
                    .await
            })
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!("cannot drop test schema {}: {e}", self.schema);
        }
    }
}

crate::store::contract::store_contract_tests!(
    PgHarness::new();
    #[cfg_attr(not(agentd_pg_tests), ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)")]
);

// ---- scale-out behaviour, on two stores (two pools, as two replicas would have) ----------------

use crate::domain::{EventKind, Finished, JobEvent, JobState, Outcome, Usage};
use crate::error::Reason;
use crate::store::{AdmitLimits, JobUpdate, JobWrite, Store};
use std::collections::{BTreeMap as Map, HashSet};

const T0: i64 = 1_700_000_000_000_000;

fn ts(s: i64) -> Timestamp {
    Timestamp(T0 + s * 1_000_000)
}

async fn new_session(store: &dyn Store, tenant: &str) -> Session {
    let s = Session {
        id: SessionId::generate(),
        tenant: TenantId(tenant.into()),
        labels: Map::new(),
        created: ts(0),
        expires: ts(3600),
        ttl: Duration::from_secs(3600),
        request_id: None,
        conversation_id: None,
        job_count: 0,
    };
    store.create_session(&s).await.expect("create_session")
}

async fn new_job(store: &dyn Store, s: &Session, created: Timestamp) -> Job {
    store
        .create_job(&job(s, created), ts(9999), &NO_LIMITS)
        .await
        .expect("create_job")
}

fn text(seq: u64) -> JobEvent {
    JobEvent {
        seq,
        time: Timestamp(T0 + seq as i64),
        raw: None,
        kind: EventKind::Text {
            text: format!("line {seq}"),
        },
    }
}

fn update(state: JobState) -> JobUpdate {
    JobUpdate {
        state,
        result: String::new(),
        usage: Usage::default(),
        conversation_id: None,
    }
}

fn finished(outcome: Outcome) -> JobState {
    JobState::Finished(Finished {
        started: None,
        ended: ts(5),
        outcome,
        exit: None,
    })
}

/// Finishes a job the way its owner does: starts it, then stores its final event and state.
async fn run_to_end(store: &dyn Store, j: &Job) {
    store
        .append(vec![JobWrite {
            job_id: j.id.clone(),
            events: vec![text(1)],
            update: Some(update(JobState::Running { started: ts(1) })),
        }])
        .await
        .expect("start");
    store
        .append(vec![JobWrite {
            job_id: j.id.clone(),
            events: vec![text(2)],
            update: Some(update(finished(Outcome::Succeeded))),
        }])
        .await
        .expect("finish");
}

/// Receives signals until one matches, or panics after a generous wait (a missing signal is the
/// failure being tested, not a slow machine).
async fn expect_signal(
    rx: &mut broadcast::Receiver<StoreSignal>,
    what: &str,
    want: impl Fn(&StoreSignal) -> bool,
) {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.recv().await {
                Ok(s) if want(&s) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("signals closed"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {what} signal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn claims_never_overlap_and_keep_each_session_in_order() {
    const SESSIONS: usize = 4;
    const PER_SESSION: i64 = 4;
    let h = PgHarness::new();
    let (a, b): (DynStore, DynStore) = (h.open().await, h.open().await);
    let mut order: Map<SessionId, Vec<JobId>> = Map::new();
    for _ in 0..SESSIONS {
        let s = new_session(&*a, "acme").await;
        for i in 0..PER_SESSION {
            let j = new_job(&*a, &s, ts(i)).await;
            order.entry(s.id.clone()).or_default().push(j.id);
        }
    }
    // Two replicas claim at once, repeatedly, finishing what they claimed before claiming again.
    let worker = |store: DynStore, name: &'static str| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut idle = 0;
            while idle < 20 {
                let claims = store.claim_jobs(name, ts(100), 3).await.expect("claim");
                if claims.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                for c in claims {
                    assert_eq!(c.cancel_reason, None);
                    // Still the oldest unfinished job of its session, and nobody else's.
                    let unfinished = store.unfinished_jobs().await.expect("unfinished");
                    let first = unfinished
                        .iter()
                        .find(|j| j.session_id == c.job.session_id)
                        .expect("claimed job is unfinished");
                    assert_eq!(first.id, c.job.id, "claimed a job that is not the oldest");
                    run_to_end(&*store, &c.job).await;
                    mine.push(c.job.id);
                }
            }
            mine
        })
    };
    let ta = worker(a.clone(), "replica-a");
    let tb = worker(b.clone(), "replica-b");
    let (ra, rb) = (ta.await.expect("a"), tb.await.expect("b"));
    let all: Vec<&JobId> = ra.iter().chain(&rb).collect();
    let unique: HashSet<&JobId> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        SESSIONS * PER_SESSION as usize,
        "each job claimed once"
    );
    assert_eq!(unique.len(), all.len());
    for jobs in order.values() {
        for j in jobs {
            assert_eq!(
                a.get_job(j).await.unwrap().unwrap().state.name(),
                "SUCCEEDED"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn leases_renew_expire_and_release() {
    let h = PgHarness::new();
    let store = h.open().await;
    let s1 = new_session(&*store, "acme").await;
    let s2 = new_session(&*store, "acme").await;
    let j1 = new_job(&*store, &s1, ts(1)).await;
    let j2 = new_job(&*store, &s2, ts(2)).await;
    let j1b = new_job(&*store, &s1, ts(3)).await;

    let claimed = store.claim_jobs("a", ts(10), 1).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.id, j1.id, "oldest first");
    let claimed = store.claim_jobs("b", ts(20), 5).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| &c.job.id).collect::<Vec<_>>(),
        vec![&j2.id],
        "j1b waits behind j1 of its session, even while j1 is only claimed"
    );
    // A claimed job stays QUEUED and keeps its place in the queue.
    assert_eq!(store.queue_position(&j1.id).await.unwrap(), Some(1));
    assert_eq!(store.queue_position(&j2.id).await.unwrap(), Some(2));
    assert_eq!(store.queue_position(&j1b.id).await.unwrap(), Some(3));
    assert_eq!(
        store.queue_position(&JobId::generate()).await.unwrap(),
        None
    );

    assert_eq!(
        store.renew_leases("a", ts(30)).await.unwrap(),
        vec![j1.id.clone()]
    );
    assert!(
        store
            .renew_leases("nobody", ts(30))
            .await
            .unwrap()
            .is_empty()
    );
    let orphans = store.expired_leases(ts(25), 10).await.unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].job.id, j2.id);
    assert_eq!(orphans[0].owner, "b");
    assert_eq!(orphans[0].lease_until, ts(20));
    let orphans = store.expired_leases(ts(99), 10).await.unwrap();
    assert_eq!(
        orphans.iter().map(|o| &o.job.id).collect::<Vec<_>>(),
        vec![&j2.id, &j1.id],
        "oldest lease first"
    );
    assert_eq!(store.expired_leases(ts(99), 1).await.unwrap().len(), 1);

    // Release: only by its owner, only while not started.
    assert!(!store.release_job(&j2.id, "a").await.unwrap());
    assert!(store.release_job(&j2.id, "b").await.unwrap());
    assert!(!store.release_job(&j2.id, "b").await.unwrap());
    assert!(store.renew_leases("b", ts(40)).await.unwrap().is_empty());
    let again = store.claim_jobs("c", ts(50), 5).await.unwrap();
    assert_eq!(
        again.iter().map(|c| &c.job.id).collect::<Vec<_>>(),
        vec![&j2.id]
    );

    // Started jobs cannot be released; finished ones drop out of leases and the session moves on.
    store
        .append(vec![JobWrite {
            job_id: j1.id.clone(),
            events: vec![text(1)],
            update: Some(update(JobState::Running { started: ts(1) })),
        }])
        .await
        .unwrap();
    assert!(!store.release_job(&j1.id, "a").await.unwrap());
    assert_eq!(store.queue_position(&j1.id).await.unwrap(), None);
    assert_eq!(
        store.renew_leases("a", ts(60)).await.unwrap(),
        vec![j1.id.clone()]
    );
    store
        .append(vec![JobWrite {
            job_id: j1.id.clone(),
            events: vec![text(2)],
            update: Some(update(finished(Outcome::Succeeded))),
        }])
        .await
        .unwrap();
    assert!(store.renew_leases("a", ts(70)).await.unwrap().is_empty());
    assert!(
        store
            .expired_leases(Timestamp(i64::MAX), 10)
            .await
            .unwrap()
            .iter()
            .all(|o| o.job.id != j1.id)
    );
    let next = store.claim_jobs("a", ts(80), 5).await.unwrap();
    assert_eq!(
        next.iter().map(|c| &c.job.id).collect::<Vec<_>>(),
        vec![&j1b.id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn finished_jobs_are_fenced_and_unclaimed_ones_finish_atomically() {
    let h = PgHarness::new();
    let store = h.open().await;
    let s = new_session(&*store, "acme").await;
    let j = new_job(&*store, &s, ts(1)).await;
    let k = new_job(&*store, &s, ts(2)).await;
    let cancel = |job: &Job| JobWrite {
        job_id: job.id.clone(),
        events: vec![text(1)],
        update: Some(update(finished(Outcome::Cancelled {
            reason: "user".into(),
        }))),
    };
    // Claimed: finish_unclaimed refuses and changes nothing.
    assert_eq!(store.claim_jobs("a", ts(10), 5).await.unwrap().len(), 1);
    assert!(!store.finish_unclaimed(cancel(&j)).await.unwrap());
    assert_eq!(
        store.get_job(&j.id).await.unwrap().unwrap().state,
        JobState::Queued
    );
    assert!(store.read_events(&j.id, 0, 10).await.unwrap().is_empty());
    // Unclaimed: it applies the write.
    assert!(store.finish_unclaimed(cancel(&k)).await.unwrap());
    let got = store.get_job(&k.id).await.unwrap().unwrap();
    assert_eq!(got.state.name(), "CANCELLED");
    assert_eq!(got.last_seq, 1);
    assert!(!store.finish_unclaimed(cancel(&k)).await.unwrap());
    assert!(
        !store
            .finish_unclaimed(cancel(&job(&s, ts(9))))
            .await
            .unwrap(),
        "missing job"
    );

    // A replica that lost its job (settled elsewhere) can write nothing more to it.
    run_to_end(&*store, &j).await;
    let late = JobWrite {
        job_id: j.id.clone(),
        events: vec![text(3)],
        update: None,
    };
    let err = store.append(vec![late]).await.unwrap_err();
    assert_eq!(err.reason(), Reason::JobFinished);
    assert_eq!(store.read_events(&j.id, 0, 10).await.unwrap().len(), 2);
    // Nor can a batch finish a job and then write to it.
    let m = new_job(&*store, &s, ts(3)).await;
    let err = store
        .append(vec![
            JobWrite {
                job_id: m.id.clone(),
                events: vec![text(1)],
                update: Some(update(finished(Outcome::Succeeded))),
            },
            JobWrite {
                job_id: m.id.clone(),
                events: vec![text(2)],
                update: None,
            },
        ])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::JobFinished);
    assert_eq!(
        store.get_job(&m.id).await.unwrap().unwrap().state,
        JobState::Queued
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn cancel_requests_reach_the_owner() {
    let h = PgHarness::new();
    let (a, b) = (h.open().await, h.open().await);
    let mut on_a = a.signals().expect("a shared store signals");
    let s = new_session(&*a, "acme").await;
    let j = new_job(&*a, &s, ts(1)).await;
    let claimed = a.claim_jobs("replica-a", ts(10), 5).await.unwrap();
    assert_eq!(claimed[0].cancel_reason, None);

    b.request_cancel(&j.id, "cancelled by request")
        .await
        .unwrap();
    b.request_cancel(&j.id, "second reason").await.unwrap();
    expect_signal(&mut on_a, "cancel", |s| {
        *s == StoreSignal::CancelRequested {
            job: j.id.clone(),
            reason: "cancelled by request".into(),
        }
    })
    .await;
    assert_eq!(
        a.cancel_requests("replica-a").await.unwrap(),
        vec![(j.id.clone(), "cancelled by request".to_owned())],
        "the first reason is kept"
    );
    assert!(a.cancel_requests("replica-b").await.unwrap().is_empty());

    // A job cancelled before it is claimed carries the request into the claim.
    let k = new_job(&*a, &new_session(&*a, "acme").await, ts(2)).await;
    b.request_cancel(&k.id, "early").await.unwrap();
    let claimed = b.claim_jobs("replica-b", ts(10), 5).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.id, k.id);
    assert_eq!(claimed[0].cancel_reason.as_deref(), Some("early"));

    // Finished or missing jobs: no-op.
    run_to_end(&*a, &j).await;
    assert!(a.cancel_requests("replica-a").await.unwrap().is_empty());
    a.request_cancel(&j.id, "late").await.unwrap();
    a.request_cancel(&JobId::generate(), "ghost").await.unwrap();
    assert!(a.cancel_requests("replica-a").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn signals_cross_stores_and_resync_after_reconnect() {
    let h = PgHarness::new();
    let (a, b) = (h.pg().await, h.open().await);
    let mut rx = a.signals().expect("signals");
    let s = new_session(&*b, "acme").await;
    let j = new_job(&*b, &s, ts(1)).await;
    expect_signal(&mut rx, "jobs changed", |s| *s == StoreSignal::JobsChanged).await;
    b.append(vec![JobWrite {
        job_id: j.id.clone(),
        events: vec![text(1), text(2), text(3)],
        update: None,
    }])
    .await
    .unwrap();
    expect_signal(&mut rx, "events", |s| {
        *s == StoreSignal::Events {
            job: j.id.clone(),
            seq: 3,
        }
    })
    .await;

    // Cut the listeners' connections (both stores'): they come back and say that signals may have
    // been missed.
    let c = a.client().await.unwrap();
    // Store b's listener connects in the background: on a busy machine it may not have sent its
    // LISTEN yet (nothing above waits for it), so wait until both are listening.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let row = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN ' || quote_ident($1)",
                &[&a.channel],
            )
            .await
            .unwrap();
        let listening: i64 = row.get(0);
        if listening >= 2 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let killed = c
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query = 'LISTEN ' || quote_ident($1)",
            &[&a.channel],
        )
        .await
        .unwrap();
    assert_eq!(killed, 2, "one listener connection per store");
    expect_signal(&mut rx, "resync", |s| *s == StoreSignal::Resync).await;
    // And it listens again.
    b.append(vec![JobWrite {
        job_id: j.id.clone(),
        events: vec![text(4)],
        update: None,
    }])
    .await
    .unwrap();
    expect_signal(&mut rx, "events after reconnect", |s| {
        *s == StoreSignal::Events {
            job: j.id.clone(),
            seq: 4,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn admission_limits_hold_across_stores() {
    let h = PgHarness::new();
    let (a, b) = (h.open().await, h.open().await);
    let s = new_session(&*a, "acme").await;
    let queue_of_two = AdmitLimits {
        max_queued_in_session: 2,
        max_active_for_tenant: 0,
    };
    a.create_job(&job(&s, ts(1)), ts(10), &queue_of_two)
        .await
        .unwrap();
    b.create_job(&job(&s, ts(2)), ts(10), &queue_of_two)
        .await
        .unwrap();
    let err = a
        .create_job(&job(&s, ts(3)), ts(10), &queue_of_two)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::QueueFull);
    assert!(matches!(
        err,
        Error::ResourceExhausted {
            retry_after: Some(d),
            ..
        } if d == Duration::from_secs(5)
    ));
    assert_eq!(
        a.get_session_any(&s.id).await.unwrap().unwrap().job_count,
        2
    );

    // Eight submissions at once to different sessions of one tenant, limit 3: exactly 3 pass.
    let tenant_of_three = AdmitLimits {
        max_queued_in_session: usize::MAX,
        max_active_for_tenant: 3,
    };
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let s = new_session(&*store, "globex").await;
        tasks.push(tokio::spawn(async move {
            store
                .create_job(&job(&s, ts(i)), ts(10), &tenant_of_three)
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.reason(), Reason::TooManyJobs),
        }
    }
    assert_eq!(ok, 3);
    // A retried submission is answered with the original job before any limit is checked.
    let mut first = job(&s, ts(4));
    first.request_id = Some("r1".into());
    let s3 = new_session(&*a, "initech").await;
    first.session_id = s3.id.clone();
    first.tenant = s3.tenant.clone();
    let one = AdmitLimits {
        max_queued_in_session: 1,
        max_active_for_tenant: 1,
    };
    let created = a.create_job(&first, ts(10), &one).await.unwrap();
    let mut retry = job(&s3, ts(5));
    retry.request_id = Some("r1".into());
    assert_eq!(b.create_job(&retry, ts(10), &one).await.unwrap(), created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn replicas_starting_together_migrate_once() {
    let h = PgHarness::new();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = h.url();
            tokio::spawn(async move { PgStore::open(&url).await.map(|_| ()) })
        })
        .collect();
    for o in opens {
        o.await.unwrap().expect("concurrent open");
    }
    let store = h.pg().await;
    let c = store.client().await.unwrap();
    let versions: Vec<i32> = c
        .query("SELECT version FROM agentd_schema_version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: Vec<i32> = (1..=super::migrate::MIGRATIONS.len() as i32).collect();
    assert_eq!(versions, want);
    let all: Vec<i32> = (1..=super::migrate::MIGRATIONS.len() as i32).collect();
    assert_eq!(versions, all);
    // A schema from a newer build is refused.
    c.execute(
        "INSERT INTO agentd_schema_version (version) VALUES (99)",
        &[],
    )
    .await
    .unwrap();
    let Err(err) = PgStore::open(&h.url()).await else {
        panic!("a newer schema must be refused")
    };
    assert!(err.to_string().contains("version 99"), "{err}");
}

#[tokio::test]
async fn connection_errors_never_show_the_password() {
    // Port 1 on loopback: refused at once.
    let url = "postgres://agentd:hunter2secret@127.0.0.1:1/test?password=hunter3secret";
    let Err(err) = crate::store::open(url, Path::new("/nonexistent")).await else {
        panic!("nothing listens on port 1")
    };
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("hunter2secret") && !text.contains("hunter3secret"),
        "{text}"
    );
    assert!(text.contains("agentd@127.0.0.1:1/test"), "{text}");
}

#[tokio::test]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn open_picks_the_backend_from_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let default = crate::store::open("", dir.path()).await.unwrap();
    assert!(!default.shared());
    assert!(dir.path().join("agentd.db").exists());
    let path = dir.path().join("other.db");
    let sqlite = crate::store::open(&format!("sqlite://{}", path.display()), dir.path())
        .await
        .unwrap();
    assert!(!sqlite.shared());
    assert!(path.exists());
    let h = PgHarness::new();
    let pg = crate::store::open(
        &h.url().replacen("postgres://", "postgresql://", 1),
        dir.path(),
    )
    .await
    .unwrap();
    assert!(pg.shared());
    assert!(pg.signals().is_some());
    let err = crate::store::open("mysql://u:pw@h/db", dir.path())
        .await
        .err()
        .expect("unknown scheme");
    assert_eq!(err.reason(), Reason::InvalidField);
    assert!(!err.to_string().contains("pw"), "{err}");
}

/// Rough throughput, for humans: `cargo test --release --lib store::postgres::tests::throughput
/// -- --ignored --nocapture`. Appends of 100 events per call, from one writer and from eight
/// writers at once (one job each), then a replay of one job's log in pages of 2000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    const PER_JOB: u64 = 100_000;
    const BATCH: u64 = 100;
    let h = PgHarness::new();
    let store = h.open().await;
    let s = new_session(&*store, "acme").await;
    let append_all = |store: DynStore, j: Job, total: u64| async move {
        for b in 0..total / BATCH {
            let events = (b * BATCH + 1..=b * BATCH + BATCH)
                .map(|n| JobEvent {
                    seq: n,
                    time: Timestamp(n as i64),
                    raw: Some(format!(r#"{{"type":"assistant","n":{n}}}"#)),
                    kind: EventKind::Text {
                        text: format!("some assistant text number {n}"),
                    },
                })
                .collect();
            store
                .append(vec![JobWrite {
                    job_id: j.id.clone(),
                    events,
                    update: None,
                }])
                .await
                .expect("append");
        }
    };

    let one = new_job(&*store, &s, ts(1)).await;
    let start = std::time::Instant::now();
    append_all(store.clone(), one.clone(), PER_JOB).await;
    let single = PER_JOB as f64 / start.elapsed().as_secs_f64();

    let mut tasks = Vec::new();
    let start = std::time::Instant::now();
    for i in 0..8 {
        let j = new_job(&*store, &new_session(&*store, "acme").await, ts(i)).await;
        tasks.push(tokio::spawn(append_all(store.clone(), j, PER_JOB / 8)));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let eight = PER_JOB as f64 / start.elapsed().as_secs_f64();

    let start = std::time::Instant::now();
    let mut after = 0;
    loop {
        let page = store.read_events(&one.id, after, 2000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
    }
    let replay = PER_JOB as f64 / start.elapsed().as_secs_f64();
    assert_eq!(after, PER_JOB);
    eprintln!(
        "postgres append, 1 job: {single:.0} events/s; 8 jobs at once: {eight:.0} events/s; \
         replay: {replay:.0} events/s"
    );
}
