//! The behaviour every [`Store`] backend must show, as backend-agnostic async checks. A backend
//! runs the whole suite with one line in its tests:
//! `crate::store::contract::store_contract_tests!(MyHarness::new());`, where the harness opens a
//! store on a fresh database (and opening it again reaches the same data, for the reopen check).

use crate::domain::{
    ChangeKind, EventKind, ExitStatus, FileChange, FileEntry, FileKind, FinalState, Finished, Job,
    JobEvent, JobId, JobSpec, JobState, Outcome, PageCursor, Session, SessionId, TenantId,
    Timestamp, Usage,
};
use crate::error::{Error, Reason};
use crate::store::{
    AdmitLimits, ChangeMark, Claimed, DynStore, JobFilter, JobUpdate, JobWrite, LedgerRow, Orphan,
    Store, UsageFilter, UsageGroup,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Limits that never refuse, for tests about other things.
pub const NO_LIMITS: AdmitLimits = AdmitLimits {
    max_queued_in_session: usize::MAX,
    max_active_for_tenant: 0,
};

/// Opens the backend under test. Each harness owns one fresh database; every `open` returns a
/// new store handle on that same database.
#[async_trait]
pub trait Harness: Send + Sync {
    async fn open(&self) -> DynStore;
}

/// Generates one `#[tokio::test]` per contract check, each with a fresh harness from `$harness`
/// and the attribute given after it, if any (the Postgres suite's opt-in gate).
macro_rules! store_contract_tests {
    ($harness:expr) => {
        $crate::store::contract::store_contract_tests!($harness; #[doc = "A contract check."]);
    };
    ($harness:expr; #[$attr:meta]) => {
        $crate::store::contract::store_contract_tests!(@each $harness; $attr;
            session_crud,
            session_idempotency,
            session_label_filter,
            session_paging,
            expired_sessions_listing,
            job_create_and_idempotency,
            list_jobs_filter_and_paging,
            unfinished_jobs_order,
            append_consecutive,
            append_refuses_gap_repeat_unknown,
            read_events_cursor_and_limit,
            finished_update_sets_conversation,
            latest_succeeded,
            job_outputs,
            job_outputs_in_pages,
            snapshots_index,
            rewind_marks,
            rewind_holds,
            delete_session_cascades,
            survives_reopen,
            concurrent_appends,
            many_events_in_order,
            prune_keeps_last_event_of_finished_jobs,
            claims_are_exclusive_across_stores,
            claims_keep_session_order,
            claims_carry_what_the_start_reads,
            claims_share_slots_fairly_between_tenants,
            claims_respect_the_tenant_running_cap,
            renew_returns_only_owned_unfinished,
            expired_leases_listing,
            release_restores_queue_place,
            take_over_moves_only_a_running_job_of_its_owner,
            orphans_are_fenced_by_lease_generation,
            finish_unclaimed_only_when_unclaimed,
            cancel_requests_keep_first_reason,
            queue_positions,
            admit_limits_queue_full,
            admit_limits_tenant_active,
            admit_retry_bypasses_limits,
            append_refuses_finished_job_and_clears_owner,
            ledger_outlives_sessions_and_groups_per_tenant,
            change_sequence_per_tenant,
            change_sequence_under_concurrent_writers,
            pruned_changes_expire_cursors,
            pruning_keeps_the_changes_of_jobs_still_changing,
            change_marks_of_one_job,
            a_failed_final_append_holds_back_its_webhook_until_retried,
            webhook_endpoints_are_tenant_scoped,
            webhook_cursor_moves_once,
            webhook_claims_are_exclusive_and_capped,
            webhook_attempts_are_logged_by_the_owner,
            presets_per_tenant,
            conversations_per_agent,
            control_messages_reach_the_owner_and_answers_claim_once,
        );
    };
    (@each $harness:expr; $attr:meta; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[$attr]
            async fn $name() {
                let harness = $harness;
                $crate::store::contract::$name(&harness).await;
            }
        )*
    };
}
pub(crate) use store_contract_tests;

pub use super::contract_webhooks::*;

// ---- fixtures ----------------------------------------------------------------------------------

const T0: i64 = 1_700_000_000_000_000;

fn ts(offset_s: i64) -> Timestamp {
    Timestamp(T0 + offset_s * 1_000_000)
}

fn tenant(name: &str) -> TenantId {
    TenantId(name.to_owned())
}

/// A session of tenant `t` living an hour (also used by other modules' tests).
pub(crate) fn session(t: &str, created: Timestamp) -> Session {
    Session {
        id: SessionId::generate(),
        tenant: tenant(t),
        labels: BTreeMap::new(),
        created,
        expires: Timestamp(created.0 + 3_600_000_000),
        ttl: Duration::from_secs(3600),
        request_id: None,
        conversation_id: None,
        job_count: 0,
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A queued job of `s` with every spec field set (also used by other modules' tests).
pub(crate) fn job(s: &Session, created: Timestamp) -> Job {
    Job {
        id: JobId::generate(),
        session_id: s.id.clone(),
        tenant: s.tenant.clone(),
        spec: JobSpec {
            agent: "claude".into(),
            prompt: "fix the \"bug\" ✓".into(),
            model: Some("sonnet".into()),
            timeout: Duration::from_millis(90_500),
            env: labels(&[("A", "1"), ("B", "two")]),
            allowed_tools: vec!["Read".into(), "Edit".into()],
            max_turns: Some(7),
            append_system_prompt: None,
            permission_mode: Some("acceptEdits".into()),
            budget: crate::domain::JobBudget {
                max_cost_usd: Some(0.25),
                max_tokens: Some(5000),
            },
            webhook_url: Some("https://hooks.example.com/j".into()),
            control: crate::domain::JobControl {
                allow_rules: vec!["Bash(git status*)".into()],
                deny_rules: vec!["WebFetch".into()],
                permission_timeout: Some(Duration::from_secs(42)),
            },
            catalog: crate::domain::CatalogSelection {
                preset: Some("review".into()),
                mcp_servers: vec!["echo".into()],
                subagents: vec!["reviewer".into()],
                skills: vec!["pdf".into()],
            },
            caps: crate::domain::JobCaps {
                stream_deltas: true,
                output_schema: Some(r#"{"type":"object"}"#.into()),
                system_prompt: Some("be terse".into()),
                disallowed_tools: vec!["Bash".into()],
                attachments: vec!["img/a.png".into()],
            },
        },
        created,
        state: JobState::Queued,
        request_id: None,
        result: String::new(),
        usage: Usage::default(),
        conversation_id: None,
        last_seq: 0,
    }
}

fn text(seq: u64, s: &str) -> JobEvent {
    JobEvent {
        seq,
        time: Timestamp(T0 + seq as i64),
        raw: Some(format!("{{\"type\":\"text\",\"n\":{seq}}}")),
        kind: EventKind::Text { text: s.to_owned() },
    }
}

fn texts(from: u64, to: u64) -> Vec<JobEvent> {
    (from..=to).map(|n| text(n, &format!("line {n}"))).collect()
}

fn usage() -> Usage {
    Usage {
        input_tokens: 120,
        output_tokens: 45,
        cache_read_input_tokens: 3,
        cache_creation_input_tokens: 4,
        cost_usd: Some(0.25),
        num_turns: 2,
        duration_ms: 1500,
    }
}

fn running(started: Timestamp) -> JobUpdate {
    JobUpdate {
        state: JobState::Running { started },
        result: String::new(),
        usage: Usage::default(),
        conversation_id: None,
    }
}

fn finished(outcome: Outcome, conversation: Option<&str>) -> JobUpdate {
    JobUpdate {
        state: JobState::Finished(Finished {
            started: Some(ts(1)),
            ended: ts(2),
            outcome,
            exit: Some(ExitStatus::Code(0)),
        }),
        result: "done".into(),
        usage: usage(),
        conversation_id: conversation.map(str::to_owned),
    }
}

fn write(job: &Job, events: Vec<JobEvent>, update: Option<JobUpdate>) -> JobWrite {
    JobWrite {
        job_id: job.id.clone(),
        events,
        update,
    }
}

async fn new_session(store: &dyn Store, s: Session) -> Session {
    store.create_session(&s).await.expect("create_session")
}

async fn new_job(store: &dyn Store, s: &Session, created: Timestamp) -> Job {
    let j = job(s, created);
    store
        .create_job(&j, Timestamp(created.0 + 1), &NO_LIMITS)
        .await
        .expect("create_job")
}

/// Moves a job to a final state through the same path the runner uses.
async fn finish(store: &dyn Store, j: &Job, outcome: Outcome) {
    store
        .append(vec![write(j, vec![], Some(running(ts(1))))])
        .await
        .expect("append running");
    store
        .append(vec![write(j, vec![], Some(finished(outcome, None)))])
        .await
        .expect("append finished");
}

fn ids<T, I: std::fmt::Display>(items: &[T], id: impl Fn(&T) -> &I) -> Vec<String> {
    items.iter().map(|i| id(i).to_string()).collect()
}

// ---- sessions ----------------------------------------------------------------------------------

pub async fn session_crud(h: &dyn Harness) {
    let store = h.open().await;
    let mut s = session("acme", ts(0));
    s.labels = labels(&[("env", "prod"), ("owner", "ünïcode \"q\"")]);
    s.ttl = Duration::from_micros(1_234_567);
    s.conversation_id = Some("conv-0".into());
    let created = new_session(&*store, s.clone()).await;
    assert_eq!(created, s);

    assert_eq!(
        store.get_session(&tenant("acme"), &s.id).await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        store.get_session(&tenant("other"), &s.id).await.unwrap(),
        None,
        "another tenant must not see the session"
    );
    assert_eq!(store.get_session_any(&s.id).await.unwrap(), Some(s.clone()));
    let missing = SessionId::generate();
    assert_eq!(store.get_session_any(&missing).await.unwrap(), None);

    store.set_session_expiry(&s.id, ts(99)).await.unwrap();
    let got = store.get_session_any(&s.id).await.unwrap().unwrap();
    assert_eq!(got.expires, ts(99));
    let err = store.set_session_expiry(&missing, ts(1)).await.unwrap_err();
    assert_eq!(err.reason(), Reason::SessionNotFound);

    store.delete_session(&s.id).await.unwrap();
    assert_eq!(store.get_session_any(&s.id).await.unwrap(), None);
    // Deleting what is already gone is fine.
    store.delete_session(&s.id).await.unwrap();
}

pub async fn session_idempotency(h: &dyn Harness) {
    let store = h.open().await;
    let mut first = session("acme", ts(0));
    first.request_id = Some("req-1".into());
    new_session(&*store, first.clone()).await;

    let mut retry = session("acme", ts(5));
    retry.request_id = Some("req-1".into());
    let got = store.create_session(&retry).await.unwrap();
    assert_eq!(got, first, "a retried request returns the original session");
    assert_eq!(store.get_session_any(&retry.id).await.unwrap(), None);

    // The same request id from another tenant is a different request.
    let mut other = session("globex", ts(6));
    other.request_id = Some("req-1".into());
    assert_eq!(store.create_session(&other).await.unwrap(), other);

    // Sessions without a request id never collide.
    let a = new_session(&*store, session("acme", ts(7))).await;
    let b = new_session(&*store, session("acme", ts(8))).await;
    let listed = store
        .list_sessions(&tenant("acme"), &BTreeMap::new(), None, 100)
        .await
        .unwrap();
    assert_eq!(
        ids(&listed, |s| &s.id),
        ids(&[b, a, first], |s: &Session| &s.id)
    );
}

pub async fn session_label_filter(h: &dyn Harness) {
    let store = h.open().await;
    let mut both = session("acme", ts(3));
    both.labels = labels(&[("env", "prod"), ("team", "a"), ("we.ird key", "v\"1")]);
    let mut prod = session("acme", ts(2));
    prod.labels = labels(&[("env", "prod")]);
    let mut dev = session("acme", ts(1));
    dev.labels = labels(&[("env", "dev"), ("team", "a")]);
    let mut foreign = session("globex", ts(4));
    foreign.labels = labels(&[("env", "prod")]);
    for s in [&both, &prod, &dev, &foreign] {
        new_session(&*store, s.clone()).await;
    }
    let acme = tenant("acme");
    let cases: Vec<(BTreeMap<String, String>, Vec<&Session>)> = vec![
        (labels(&[]), vec![&both, &prod, &dev]),
        (labels(&[("env", "prod")]), vec![&both, &prod]),
        (labels(&[("team", "a")]), vec![&both, &dev]),
        (labels(&[("env", "prod"), ("team", "a")]), vec![&both]),
        (labels(&[("we.ird key", "v\"1")]), vec![&both]),
        (labels(&[("env", "staging")]), vec![]),
        (labels(&[("nope", "prod")]), vec![]),
    ];
    for (filter, want) in cases {
        let got = store
            .list_sessions(&acme, &filter, None, 100)
            .await
            .unwrap();
        assert_eq!(
            ids(&got, |s| &s.id),
            want.iter().map(|s| s.id.to_string()).collect::<Vec<_>>(),
            "filter {filter:?}"
        );
    }
}

pub async fn session_paging(h: &dyn Harness) {
    let store = h.open().await;
    let mut all = Vec::new();
    for i in 0..23 {
        // Pairs of sessions share a creation time, so the id must break ties.
        let mut s = session("acme", ts(i / 2));
        if i % 3 == 0 {
            s.labels = labels(&[("k", "v")]);
        }
        all.push(new_session(&*store, s).await);
        new_session(&*store, session("globex", ts(i / 2))).await;
    }
    let mut expected = all.clone();
    expected.sort_by(|a, b| (b.created, b.id.as_str()).cmp(&(a.created, a.id.as_str())));

    for (filter, want) in [
        (labels(&[]), expected.clone()),
        (
            labels(&[("k", "v")]),
            expected
                .iter()
                .filter(|s| !s.labels.is_empty())
                .cloned()
                .collect::<Vec<_>>(),
        ),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<PageCursor> = None;
        loop {
            let page = store
                .list_sessions(&tenant("acme"), &filter, cursor.as_ref(), 4)
                .await
                .unwrap();
            assert!(page.len() <= 4);
            let Some(last) = page.last() else { break };
            cursor = Some(PageCursor {
                created: last.created,
                id: last.id.to_string(),
            });
            seen.extend(page);
        }
        assert_eq!(
            ids(&seen, |s| &s.id),
            ids(&want, |s| &s.id),
            "filter {filter:?}"
        );
    }
}

pub async fn expired_sessions_listing(h: &dyn Harness) {
    let store = h.open().await;
    let mut made = Vec::new();
    for (i, exp) in [50, 10, 30, 40, 20].into_iter().enumerate() {
        let mut s = session(if i % 2 == 0 { "acme" } else { "globex" }, ts(0));
        s.expires = ts(exp);
        made.push(new_session(&*store, s).await);
    }
    let got = store.expired_sessions(ts(30), 100).await.unwrap();
    let exp: Vec<Timestamp> = got.iter().map(|s| s.expires).collect();
    assert_eq!(
        exp,
        vec![ts(10), ts(20), ts(30)],
        "at or before now, oldest first"
    );
    let got = store.expired_sessions(ts(100), 2).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].expires, ts(10));
    assert!(store.expired_sessions(ts(9), 100).await.unwrap().is_empty());
    // Extending the expiry takes a session off the list.
    store
        .set_session_expiry(&made[1].id, ts(1000))
        .await
        .unwrap();
    let got = store.expired_sessions(ts(30), 100).await.unwrap();
    assert_eq!(
        got.iter().map(|s| s.expires).collect::<Vec<_>>(),
        vec![ts(20), ts(30)]
    );
}

// ---- jobs --------------------------------------------------------------------------------------

pub async fn job_create_and_idempotency(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let mut j = job(&s, ts(1));
    j.request_id = Some("job-req".into());
    assert_eq!(store.create_job(&j, ts(500), &NO_LIMITS).await.unwrap(), j);
    assert_eq!(store.get_job(&j.id).await.unwrap(), Some(j.clone()));
    let sess = store.get_session_any(&s.id).await.unwrap().unwrap();
    assert_eq!(sess.job_count, 1);
    assert_eq!(sess.expires, ts(500));

    let mut retry = job(&s, ts(2));
    retry.request_id = Some("job-req".into());
    assert_eq!(
        store.create_job(&retry, ts(900), &NO_LIMITS).await.unwrap(),
        j
    );
    assert_eq!(store.get_job(&retry.id).await.unwrap(), None);
    let sess = store.get_session_any(&s.id).await.unwrap().unwrap();
    assert_eq!(sess.job_count, 1, "a retried submission changes nothing");
    assert_eq!(sess.expires, ts(500));

    let second = new_job(&*store, &s, ts(3)).await;
    let sess = store.get_session_any(&s.id).await.unwrap().unwrap();
    assert_eq!(sess.job_count, 2);
    assert_eq!(sess.expires, Timestamp(second.created.0 + 1));

    // No job in a missing session, nor in another tenant's session.
    let ghost = session("acme", ts(0));
    let err = store
        .create_job(&job(&ghost, ts(1)), ts(5), &NO_LIMITS)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::SessionNotFound);
    let mut intruder = job(&s, ts(4));
    intruder.tenant = tenant("globex");
    let err = store
        .create_job(&intruder, ts(5), &NO_LIMITS)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::SessionNotFound);
    assert_eq!(store.get_job(&intruder.id).await.unwrap(), None);
    assert_eq!(store.get_job(&JobId::generate()).await.unwrap(), None);
}

pub async fn list_jobs_filter_and_paging(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let other = new_session(&*store, session("acme", ts(0))).await;
    let mut jobs = Vec::new();
    for i in 0..13 {
        let j = new_job(&*store, &s, ts(i / 3)).await;
        match i % 4 {
            0 => {}
            1 => store
                .append(vec![write(&j, vec![], Some(running(ts(1))))])
                .await
                .unwrap(),
            2 => finish(&*store, &j, Outcome::Succeeded).await,
            _ => {
                finish(
                    &*store,
                    &j,
                    Outcome::Failed {
                        message: "boom".into(),
                    },
                )
                .await
            }
        }
        jobs.push(store.get_job(&j.id).await.unwrap().unwrap());
        new_job(&*store, &other, ts(i)).await;
    }
    jobs.sort_by(|a, b| (b.created, b.id.as_str()).cmp(&(a.created, a.id.as_str())));

    for states in [
        vec![],
        vec!["SUCCEEDED"],
        vec!["QUEUED", "RUNNING"],
        vec!["FAILED", "SUCCEEDED"],
        vec!["CANCELLED"],
    ] {
        let want: Vec<&Job> = jobs
            .iter()
            .filter(|j| states.is_empty() || states.contains(&j.state.name()))
            .collect();
        let filter = JobFilter {
            states: states.clone(),
        };
        let mut seen = Vec::new();
        let mut cursor: Option<PageCursor> = None;
        loop {
            let page = store
                .list_jobs(&s.id, &filter, cursor.as_ref(), 3)
                .await
                .unwrap();
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            cursor = Some(PageCursor {
                created: last.created,
                id: last.id.to_string(),
            });
            seen.extend(page);
        }
        assert_eq!(
            seen,
            want.into_iter().cloned().collect::<Vec<_>>(),
            "states {states:?}"
        );
    }
}

pub async fn unfinished_jobs_order(h: &dyn Harness) {
    let store = h.open().await;
    let a = new_session(&*store, session("acme", ts(0))).await;
    let b = new_session(&*store, session("globex", ts(0))).await;
    let a1 = new_job(&*store, &a, ts(5)).await;
    let b1 = new_job(&*store, &b, ts(1)).await;
    let a2 = new_job(&*store, &a, ts(3)).await;
    let b2 = new_job(&*store, &b, ts(4)).await;
    let a3 = new_job(&*store, &a, ts(2)).await;
    store
        .append(vec![write(&a2, vec![], Some(running(ts(3))))])
        .await
        .unwrap();
    finish(&*store, &b2, Outcome::Succeeded).await;
    store
        .append(vec![write(
            &a3,
            vec![],
            Some(JobUpdate {
                state: JobState::Finished(Finished {
                    started: None,
                    ended: ts(3),
                    outcome: Outcome::Cancelled {
                        reason: "user".into(),
                    },
                    exit: None,
                }),
                result: String::new(),
                usage: Usage::default(),
                conversation_id: None,
            }),
        )])
        .await
        .unwrap();
    let got = store.unfinished_jobs().await.unwrap();
    assert_eq!(
        ids(&got, |j| &j.id),
        ids(&[b1, a2.clone(), a1], |j: &Job| &j.id)
    );
    assert_eq!(got[1].state, JobState::Running { started: ts(3) });
}

// ---- events ------------------------------------------------------------------------------------

pub async fn append_consecutive(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let j = new_job(&*store, &s, ts(1)).await;
    store
        .append(vec![write(&j, texts(1, 3), None)])
        .await
        .unwrap();
    assert_eq!(store.get_job(&j.id).await.unwrap().unwrap().last_seq, 3);
    // Two writes for the same job in one batch continue each other.
    store
        .append(vec![
            write(&j, texts(4, 5), None),
            write(&j, texts(6, 6), Some(running(ts(1)))),
            write(&j, vec![], None),
        ])
        .await
        .unwrap();
    let got = store.get_job(&j.id).await.unwrap().unwrap();
    assert_eq!(got.last_seq, 6);
    assert_eq!(got.state, JobState::Running { started: ts(1) });
    let events = store.read_events(&j.id, 0, 100).await.unwrap();
    assert_eq!(events, texts(1, 6));
    // An empty batch is a no-op.
    store.append(vec![]).await.unwrap();
}

/// What a refused write must leave exactly as it was: some jobs (rows and event logs) and their
/// session. `check` compares the store now with the capture.
struct Unchanged {
    jobs: Vec<(Job, Vec<JobEvent>)>,
    session: Session,
}

impl Unchanged {
    async fn capture(store: &dyn Store, jobs: &[&Job], session: &Session) -> Self {
        let mut captured = Vec::new();
        for j in jobs {
            let row = store.get_job(&j.id).await.unwrap().unwrap();
            let events = store.read_events(&j.id, 0, 100_000).await.unwrap();
            captured.push((row, events));
        }
        let session = store.get_session_any(&session.id).await.unwrap().unwrap();
        Self {
            jobs: captured,
            session,
        }
    }

    async fn check(&self, store: &dyn Store, what: &str) {
        for (row, events) in &self.jobs {
            let now = store.get_job(&row.id).await.unwrap().unwrap();
            assert_eq!(&now, row, "{what}: job {} changed", row.id);
            let now = store.read_events(&row.id, 0, 100_000).await.unwrap();
            assert_eq!(&now, events, "{what}: events of job {} changed", row.id);
        }
        let now = store
            .get_session_any(&self.session.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now, self.session, "{what}: the session changed");
    }
}

pub async fn append_refuses_gap_repeat_unknown(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let a = new_job(&*store, &s, ts(1)).await;
    let b = new_job(&*store, &s, ts(2)).await;
    store
        .append(vec![write(&a, texts(1, 3), None)])
        .await
        .unwrap();
    let before = Unchanged::capture(&*store, &[&a, &b], &s).await;

    let ghost = job(&s, ts(3));
    let bad_batches: Vec<(&str, Vec<JobWrite>)> = vec![
        ("gap", vec![write(&a, texts(5, 6), None)]),
        ("repeat", vec![write(&a, texts(3, 4), None)]),
        ("restart", vec![write(&a, texts(1, 1), None)]),
        (
            "hole inside a write",
            vec![write(&a, vec![text(4, "x"), text(6, "y")], None)],
        ),
        ("unknown job", vec![write(&ghost, texts(1, 1), None)]),
        (
            "valid writes before a bad one",
            vec![
                write(
                    &b,
                    texts(1, 2),
                    Some(finished(Outcome::Succeeded, Some("conv-x"))),
                ),
                write(&a, texts(4, 4), Some(running(ts(1)))),
                write(&a, texts(4, 4), None),
            ],
        ),
        (
            "same job twice from the same seq",
            vec![write(&b, texts(1, 1), None), write(&b, texts(1, 1), None)],
        ),
    ];
    for (what, batch) in bad_batches {
        let err = store.append(batch).await.unwrap_err();
        assert!(matches!(err, Error::Internal { .. }), "{what}: {err:?}");
        before.check(&*store, what).await;
    }
    // The log still continues normally afterwards.
    store
        .append(vec![write(&a, texts(4, 4), None)])
        .await
        .unwrap();
    assert_eq!(store.read_events(&a.id, 0, 100).await.unwrap(), texts(1, 4));
}

pub async fn read_events_cursor_and_limit(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let j = new_job(&*store, &s, ts(1)).await;
    let other = new_job(&*store, &s, ts(2)).await;
    let kinds = vec![
        EventKind::Started {
            agent: "claude".into(),
            command: "claude -p".into(),
            pid: 4242,
            resumed_conversation_id: Some("c0".into()),
        },
        EventKind::Init {
            conversation_id: "c1".into(),
            model: "sonnet".into(),
            tools: vec!["Read".into(), "Bash".into()],
            agent_version: "2.1.0".into(),
        },
        EventKind::Text {
            text: "multi\nline \u{1F600} \"quoted\"".into(),
        },
        EventKind::ToolCall {
            id: "t1".into(),
            name: "Bash".into(),
            input_json: "{\"command\":\"ls\"}".into(),
        },
        EventKind::ToolResult {
            id: "t1".into(),
            is_error: true,
            content: String::new(),
        },
        EventKind::Usage(usage()),
        EventKind::Stderr {
            line: "warn".into(),
            truncated: true,
        },
        EventKind::Unparsed {
            line: "{not json".into(),
            truncated: false,
        },
        EventKind::Other {
            r#type: "system".into(),
        },
        EventKind::Truncated {
            reason: "too many events".into(),
        },
        EventKind::LimitExceeded {
            limit: "memory".into(),
            message: "memory: limit 64 MiB reached; the kernel killed process 7 (python3)".into(),
        },
        EventKind::Finished {
            state: FinalState::TimedOut,
            exit: Some(ExitStatus::Signal(9)),
            result: String::new(),
            error_message: "timed out after 90s".into(),
            usage: usage(),
            reason: String::new(),
        },
    ];
    let events: Vec<JobEvent> = kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| JobEvent {
            seq: i as u64 + 1,
            time: Timestamp(T0 + i as i64 * 7),
            raw: (i % 2 == 0).then(|| format!("raw line {i}")),
            kind,
        })
        .collect();
    store
        .append(vec![
            write(&j, events.clone(), None),
            write(&other, texts(1, 2), None),
        ])
        .await
        .unwrap();
    assert_eq!(store.read_events(&j.id, 0, 3).await.unwrap(), events[..3]);
    assert_eq!(store.read_events(&j.id, 3, 100).await.unwrap(), events[3..]);
    assert_eq!(store.read_events(&j.id, 9, 1).await.unwrap(), events[9..10]);
    let last = events.len() as u64;
    assert!(
        store
            .read_events(&j.id, last, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.read_events(&j.id, 0, 0).await.unwrap().is_empty());
    assert!(
        store
            .read_events(&JobId::generate(), 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.read_events(&other.id, 0, 100).await.unwrap(),
        texts(1, 2)
    );
}

pub async fn finished_update_sets_conversation(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let j = new_job(&*store, &s, ts(1)).await;
    // A conversation id reported while running does not move the session yet.
    let mut run = running(ts(1));
    run.conversation_id = Some("conv-early".into());
    store
        .append(vec![write(&j, texts(1, 1), Some(run))])
        .await
        .unwrap();
    let got = store.get_job(&j.id).await.unwrap().unwrap();
    assert_eq!(got.conversation_id.as_deref(), Some("conv-early"));
    let sess = store.get_session_any(&s.id).await.unwrap().unwrap();
    assert_eq!(sess.conversation_id, None);

    let done = finished(Outcome::Succeeded, Some("conv-1"));
    store
        .append(vec![write(&j, texts(2, 2), Some(done.clone()))])
        .await
        .unwrap();
    let got = store.get_job(&j.id).await.unwrap().unwrap();
    assert_eq!(got.state, done.state);
    assert_eq!(got.result, "done");
    assert_eq!(got.usage, usage());
    assert_eq!(got.conversation_id.as_deref(), Some("conv-1"));
    assert_eq!(got.last_seq, 2);
    let sess = store.get_session_any(&s.id).await.unwrap().unwrap();
    assert_eq!(sess.conversation_id.as_deref(), Some("conv-1"));

    // A job finishing without a conversation id leaves the session's alone.
    let k = new_job(&*store, &s, ts(2)).await;
    finish(
        &*store,
        &k,
        Outcome::Failed {
            message: "x".into(),
        },
    )
    .await;
    let sess = store.get_session_any(&s.id).await.unwrap().unwrap();
    assert_eq!(sess.conversation_id.as_deref(), Some("conv-1"));
}

pub async fn latest_succeeded(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let other = new_session(&*store, session("acme", ts(0))).await;
    assert_eq!(store.latest_succeeded_job(&s.id).await.unwrap(), None);
    let j1 = new_job(&*store, &s, ts(1)).await;
    let j2 = new_job(&*store, &s, ts(2)).await;
    let j3 = new_job(&*store, &s, ts(3)).await;
    let _j4 = new_job(&*store, &s, ts(4)).await;
    let o1 = new_job(&*store, &other, ts(9)).await;
    finish(&*store, &j1, Outcome::Succeeded).await;
    assert_eq!(
        store
            .latest_succeeded_job(&s.id)
            .await
            .unwrap()
            .map(|j| j.id),
        Some(j1.id.clone())
    );
    finish(&*store, &j3, Outcome::Succeeded).await;
    finish(
        &*store,
        &j2,
        Outcome::Failed {
            message: "no".into(),
        },
    )
    .await;
    finish(&*store, &o1, Outcome::Succeeded).await;
    let got = store.latest_succeeded_job(&s.id).await.unwrap().unwrap();
    assert_eq!(got.id, j3.id);
    assert_eq!(got.state.name(), "SUCCEEDED");
}

// ---- outputs and deletion ----------------------------------------------------------------------

fn change(path: &str, kind: ChangeKind) -> FileChange {
    FileChange {
        path: path.to_owned(),
        kind,
        entry: (kind != ChangeKind::Deleted).then(|| FileEntry {
            path: path.to_owned(),
            kind: FileKind::Regular,
            size: 12,
            mode: 0o644,
            modified: ts(1),
            sha256: Some("ab".repeat(32)),
            symlink_target: None,
        }),
        from_path: (kind == ChangeKind::Renamed).then(|| format!("old/{path}")),
        before: None,
    }
}

fn snap(j: &Job, point: crate::store::SnapPoint, tree: char, at: i64) -> crate::store::SnapshotRow {
    crate::store::SnapshotRow {
        job: j.id.clone(),
        point,
        session: j.session_id.clone(),
        tree: tree.to_string().repeat(64),
        bytes_added: 7,
        created: ts(at),
    }
}

pub async fn rewind_marks(h: &dyn Harness) {
    use crate::store::Rewind;
    let store = h.open().await;
    let s1 = new_session(&*store, session("acme", ts(0))).await;
    let s2 = new_session(&*store, session("acme", ts(0))).await;
    let j2 = new_job(&*store, &s1, ts(2)).await;
    let j3 = new_job(&*store, &s1, ts(3)).await;
    store
        .set_agent_conversation(&s1.id, "claude", "c3", ts(4))
        .await
        .unwrap();
    store
        .set_agent_conversation(&s1.id, "codex", "x3", ts(4))
        .await
        .unwrap();
    let rewind = |past: Vec<JobId>, current: Option<JobId>, conv: Option<&str>| Rewind {
        session: s1.id.clone(),
        agent: Some("claude".into()),
        conversation: conv.map(str::to_owned),
        past,
        current,
        at: ts(9),
    };
    store
        .rewind_session(&rewind(
            vec![j2.id.clone(), j3.id.clone()],
            None,
            Some("c1"),
        ))
        .await
        .unwrap();
    let marks = store.rewound_jobs(&s1.id).await.unwrap();
    let mut want = vec![j2.id.clone(), j3.id.clone()];
    want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(marks, want);
    assert!(store.rewound_jobs(&s2.id).await.unwrap().is_empty());
    let got = store.get_session_any(&s1.id).await.unwrap().unwrap();
    assert_eq!(got.conversation_id.as_deref(), Some("c1"));
    let of = |agent: &'static str| {
        let (store, id) = (store.clone(), s1.id.clone());
        async move { store.agent_conversation(&id, agent).await.unwrap() }
    };
    assert_eq!(of("claude").await.as_deref(), Some("c1"), "the agent's own");
    assert_eq!(of("codex").await.as_deref(), Some("x3"), "another agent's");
    // Marking again keeps the marks; `current` loses its own; no conversation clears it, the
    // agent's own too (a point before its first conversation).
    store
        .rewind_session(&rewind(vec![j3.id.clone()], Some(j2.id.clone()), None))
        .await
        .unwrap();
    assert_eq!(
        store.rewound_jobs(&s1.id).await.unwrap(),
        vec![j3.id.clone()]
    );
    let got = store.get_session_any(&s1.id).await.unwrap().unwrap();
    assert_eq!(got.conversation_id, None);
    assert_eq!(of("claude").await, None);
    assert_eq!(of("codex").await.as_deref(), Some("x3"));
    // The marks go with their session.
    store.delete_session(&s1.id).await.unwrap();
    assert!(store.rewound_jobs(&s1.id).await.unwrap().is_empty());
}

/// A rewind hold (issue #18) is taken atomically with the check that no job of the session is
/// queued or running, and while it holds, no job of the session is admitted; it ends with the
/// rewind's record or its release, or lapses by itself.
pub async fn rewind_holds(h: &dyn Harness) {
    use crate::store::Rewind;
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let other = new_session(&*store, session("acme", ts(0))).await;
    let j1 = new_job(&*store, &s, ts(1)).await;
    let busy = store
        .hold_for_rewind(&s.id, ts(2), ts(100))
        .await
        .unwrap_err();
    assert_eq!(busy.reason(), Reason::SessionBusy, "{busy}");
    assert!(busy.to_string().contains(j1.id.as_str()), "{busy}");
    finish(&*store, &j1, Outcome::Succeeded).await;
    store.hold_for_rewind(&s.id, ts(3), ts(100)).await.unwrap();
    let again = store
        .hold_for_rewind(&s.id, ts(4), ts(100))
        .await
        .unwrap_err();
    assert_eq!(again.reason(), Reason::SessionBusy, "one rewind at a time");
    let refused = store
        .create_job(&job(&s, ts(5)), ts(6), &NO_LIMITS)
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), Reason::SessionBusy, "{refused}");
    assert!(matches!(
        refused,
        Error::Unavailable {
            retry_after: Some(_),
            ..
        }
    ));
    new_job(&*store, &other, ts(5)).await;
    // A hold left by a crash lapses: a job created after it is admitted.
    new_job(&*store, &s, ts(100)).await;
    assert_eq!(
        store
            .list_jobs(&s.id, &JobFilter::default(), None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    let s2 = new_session(&*store, session("acme", ts(0))).await;
    store.hold_for_rewind(&s2.id, ts(1), ts(100)).await.unwrap();
    store.release_rewind(&s2.id).await.unwrap();
    new_job(&*store, &s2, ts(2)).await;
    let s3 = new_session(&*store, session("acme", ts(0))).await;
    store.hold_for_rewind(&s3.id, ts(1), ts(100)).await.unwrap();
    store
        .rewind_session(&Rewind {
            session: s3.id.clone(),
            agent: None,
            conversation: None,
            past: Vec::new(),
            current: None,
            at: ts(2),
        })
        .await
        .unwrap();
    new_job(&*store, &s3, ts(3)).await;
    let gone = store
        .hold_for_rewind(&SessionId::generate(), ts(1), ts(2))
        .await
        .unwrap_err();
    assert_eq!(gone.reason(), Reason::SessionNotFound);
}

pub async fn snapshots_index(h: &dyn Harness) {
    use crate::store::{SnapPoint, SnapshotFilter};
    let store = h.open().await;
    assert_eq!(store.snapshot_bytes().await.unwrap(), 0, "no snapshot yet");
    let s1 = new_session(&*store, session("acme", ts(0))).await;
    let s2 = new_session(&*store, session("acme", ts(0))).await;
    let j1 = new_job(&*store, &s1, ts(1)).await;
    let j2 = new_job(&*store, &s2, ts(2)).await;
    for r in [
        snap(&j1, SnapPoint::After, 'b', 20),
        snap(&j1, SnapPoint::Before, 'a', 10),
        snap(&j2, SnapPoint::Before, 'c', 15),
    ] {
        store.put_snapshot(&r).await.unwrap();
    }
    let all = store.snapshots(&SnapshotFilter::default()).await.unwrap();
    let trees: String = all.iter().map(|r| &r.tree[..1]).collect();
    assert_eq!(trees, "acb", "oldest first across sessions");
    let newest = |s: &crate::domain::Session| {
        let (store, id) = (&store, s.id.clone());
        async move { store.newest_snapshot(&id).await.unwrap().map(|r| r.tree) }
    };
    assert_eq!(newest(&s1).await.as_deref(), Some(&*"b".repeat(64)));
    assert_eq!(newest(&s2).await.as_deref(), Some(&*"c".repeat(64)));
    assert_eq!(
        all[0],
        snap(&j1, SnapPoint::Before, 'a', 10),
        "every field round-trips"
    );
    let of_job = SnapshotFilter {
        job: Some(j1.id.clone()),
        session: None,
    };
    assert_eq!(store.snapshots(&of_job).await.unwrap().len(), 2);
    let of_s2 = SnapshotFilter {
        job: None,
        session: Some(s2.id.clone()),
    };
    assert_eq!(
        store.snapshots(&of_s2).await.unwrap(),
        vec![snap(&j2, SnapPoint::Before, 'c', 15)]
    );
    // Same job and point: replaced, not doubled.
    store
        .put_snapshot(&snap(&j1, SnapPoint::After, 'd', 30))
        .await
        .unwrap();
    let got = store.snapshots(&of_job).await.unwrap();
    assert_eq!(got.iter().map(|r| &r.tree[..1]).collect::<String>(), "ad");
    assert_eq!(newest(&s1).await.as_deref(), Some(&*"d".repeat(64)));
    assert_eq!(
        store.snapshot_bytes().await.unwrap(),
        3 * 7,
        "the sum over every session, the replaced row counted once"
    );
    let n = store
        .delete_snapshots(&[
            (j1.id.clone(), SnapPoint::Before),
            (JobId::generate(), SnapPoint::After),
        ])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(store.snapshots(&of_job).await.unwrap().len(), 1);
    assert_eq!(store.snapshot_bytes().await.unwrap(), 2 * 7);
    drop(store);
    let store = h.open().await;
    assert_eq!(
        store
            .snapshots(&SnapshotFilter::default())
            .await
            .unwrap()
            .len(),
        2,
        "survives a reopen"
    );
}

pub async fn job_outputs(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let j = new_job(&*store, &s, ts(1)).await;
    assert_eq!(all(&*store, &j.id).await, vec![]);
    let changes = vec![
        change("src/z.rs", ChangeKind::Modified),
        change("README.md", ChangeKind::Added),
        change("a/b.txt", ChangeKind::Deleted),
        change("moved.txt", ChangeKind::Renamed),
    ];
    store.put_job_outputs(&j.id, &changes).await.unwrap();
    let mut sorted = changes.clone();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(all(&*store, &j.id).await, sorted);

    let replaced = vec![change("only.txt", ChangeKind::Added)];
    store.put_job_outputs(&j.id, &replaced).await.unwrap();
    assert_eq!(all(&*store, &j.id).await, replaced);
    store.put_job_outputs(&j.id, &[]).await.unwrap();
    assert_eq!(all(&*store, &j.id).await, vec![]);

    let err = store
        .put_job_outputs(&JobId::generate(), &changes)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::JobNotFound);
}

/// Every change recorded for `job`.
async fn all(store: &dyn Store, job: &JobId) -> Vec<FileChange> {
    store.get_job_outputs(job, None, 1_000_000).await.unwrap()
}

/// A job that changed thousands of files is read a page at a time, across the parts it is
/// stored in, in bytewise path order (uppercase before lowercase, '/' before letters), and a
/// shorter record replaces every part of a longer one.
pub async fn job_outputs_in_pages(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let j = new_job(&*store, &s, ts(1)).await;
    let mut changes: Vec<FileChange> = (0..2_500)
        .map(|i| change(&format!("d{}/f{i:05}", i % 7), ChangeKind::Added))
        .chain(["B", "a", "a/b", "a-b", "Z/z", "é"].map(|p| change(p, ChangeKind::Modified)))
        .collect();
    changes.reverse();
    store.put_job_outputs(&j.id, &changes).await.unwrap();
    let mut expected: Vec<String> = changes.iter().map(|c| c.path.clone()).collect();
    expected.sort();
    for limit in [1, 7, 999, 1_000, 1_001, 2_506, 5_000] {
        let mut seen: Vec<String> = Vec::new();
        loop {
            let after = seen.last().cloned();
            let page = store
                .get_job_outputs(&j.id, after.as_deref(), limit)
                .await
                .unwrap();
            assert!(page.len() <= limit, "a page of {limit} held {}", page.len());
            let done = page.len() < limit;
            seen.extend(page.into_iter().map(|c| c.path));
            if done || limit == 1 && seen.len() > 40 {
                break;
            }
        }
        if limit == 1 {
            assert_eq!(seen, expected[..seen.len()], "pages of one");
        } else {
            assert_eq!(seen, expected, "pages of {limit}");
        }
    }
    // From the middle of a part, and after the last path.
    let mid = &expected[1_234];
    let page = store.get_job_outputs(&j.id, Some(mid), 3).await.unwrap();
    let paths: Vec<&str> = page.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, expected[1_235..1_238]);
    let last = expected.last().unwrap();
    assert!(
        store
            .get_job_outputs(&j.id, Some(last), 10)
            .await
            .unwrap()
            .is_empty()
    );

    store
        .put_job_outputs(&j.id, &[change("only.txt", ChangeKind::Added)])
        .await
        .unwrap();
    let page = store.get_job_outputs(&j.id, None, 5_000).await.unwrap();
    assert_eq!(page, vec![change("only.txt", ChangeKind::Added)]);
}

pub async fn delete_session_cascades(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let keep = new_session(&*store, session("acme", ts(0))).await;
    let j1 = new_job(&*store, &s, ts(1)).await;
    let j2 = new_job(&*store, &s, ts(2)).await;
    let k = new_job(&*store, &keep, ts(3)).await;
    store
        .append(vec![
            write(&j1, texts(1, 5), None),
            write(&j2, texts(1, 2), None),
            write(&k, texts(1, 3), None),
        ])
        .await
        .unwrap();
    store
        .put_job_outputs(&j1.id, &[change("a", ChangeKind::Added)])
        .await
        .unwrap();
    store
        .put_job_outputs(&k.id, &[change("b", ChangeKind::Added)])
        .await
        .unwrap();

    store.delete_session(&s.id).await.unwrap();
    assert_eq!(store.get_session_any(&s.id).await.unwrap(), None);
    for j in [&j1, &j2] {
        assert_eq!(store.get_job(&j.id).await.unwrap(), None);
        assert!(store.read_events(&j.id, 0, 100).await.unwrap().is_empty());
        assert!(
            store
                .get_job_outputs(&j.id, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert!(
        store
            .list_jobs(&s.id, &JobFilter::default(), None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let unfinished = store.unfinished_jobs().await.unwrap();
    assert_eq!(ids(&unfinished, |j| &j.id), vec![k.id.to_string()]);
    // The other session is untouched.
    assert!(store.get_session_any(&keep.id).await.unwrap().is_some());
    assert_eq!(store.read_events(&k.id, 0, 100).await.unwrap(), texts(1, 3));
    assert_eq!(
        store.get_job_outputs(&k.id, None, 10).await.unwrap(),
        vec![change("b", ChangeKind::Added)]
    );
    // Its events still append after the neighbour's deletion.
    store
        .append(vec![write(&k, texts(4, 4), None)])
        .await
        .unwrap();
}

pub async fn survives_reopen(h: &dyn Harness) {
    let store = h.open().await;
    let mut s = session("acme", ts(0));
    s.labels = labels(&[("env", "prod")]);
    s.request_id = Some("r".into());
    let s = new_session(&*store, s).await;
    let j = new_job(&*store, &s, ts(1)).await;
    store
        .append(vec![write(
            &j,
            texts(1, 50),
            Some(finished(Outcome::Succeeded, Some("conv-9"))),
        )])
        .await
        .unwrap();
    store
        .put_job_outputs(&j.id, &[change("x", ChangeKind::Added)])
        .await
        .unwrap();
    let session_before = store.get_session_any(&s.id).await.unwrap().unwrap();
    let job_before = store.get_job(&j.id).await.unwrap().unwrap();
    drop(store);

    let store = h.open().await;
    assert_eq!(
        store.get_session_any(&s.id).await.unwrap(),
        Some(session_before)
    );
    assert_eq!(store.get_job(&j.id).await.unwrap(), Some(job_before));
    assert_eq!(
        store.read_events(&j.id, 0, 1000).await.unwrap(),
        texts(1, 50)
    );
    assert_eq!(
        store.get_job_outputs(&j.id, None, 10).await.unwrap(),
        vec![change("x", ChangeKind::Added)]
    );
    // Idempotency keys survive too.
    let mut retry = session("acme", ts(5));
    retry.request_id = Some("r".into());
    assert_eq!(store.create_session(&retry).await.unwrap().id, s.id);
    // The finished job's log stays closed; a new job's log opens.
    let err = store
        .append(vec![write(&j, texts(51, 51), None)])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::JobFinished);
    let k = new_job(&*store, &s, ts(2)).await;
    store
        .append(vec![write(&k, texts(1, 1), None)])
        .await
        .unwrap();
}

/// Many writers at once: every valid write lands exactly once, in order per job, and the invalid
/// ones fail without disturbing the valid writes they may share a commit with.
pub async fn concurrent_appends(h: &dyn Harness) {
    const JOBS: usize = 8;
    const BATCHES: u64 = 40;
    const PER_BATCH: u64 = 5;
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let mut tasks = Vec::new();
    for i in 0..JOBS {
        let j = new_job(&*store, &s, ts(i as i64)).await;
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for b in 0..BATCHES {
                let from = b * PER_BATCH + 1;
                store
                    .append(vec![write(&j, texts(from, from + PER_BATCH - 1), None)])
                    .await
                    .expect("valid append");
                // Replaying the same seqs must fail every time.
                if store
                    .append(vec![write(&j, texts(from, from), None)])
                    .await
                    .is_err()
                {
                    refused += 1;
                }
            }
            (j.id, refused)
        }));
    }
    for t in tasks {
        let (id, refused) = t.await.expect("task");
        assert_eq!(refused, BATCHES);
        let events = store.read_events(&id, 0, 10_000).await.unwrap();
        assert_eq!(events, texts(1, BATCHES * PER_BATCH));
        assert_eq!(
            store.get_job(&id).await.unwrap().unwrap().last_seq,
            BATCHES * PER_BATCH
        );
    }
}

/// 100k events in batches of 100 read back complete and in order (a sanity check, no timing).
pub async fn many_events_in_order(h: &dyn Harness) {
    const TOTAL: u64 = 100_000;
    const BATCH: u64 = 100;
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let j = new_job(&*store, &s, ts(1)).await;
    for b in 0..TOTAL / BATCH {
        let from = b * BATCH + 1;
        let events = (from..from + BATCH)
            .map(|n| JobEvent {
                seq: n,
                time: Timestamp(T0 + n as i64),
                // Rows with and without a raw line, at every position of a multi-row insert.
                raw: (n % 3 == 0).then(|| format!("raw {n}")),
                kind: EventKind::Text {
                    text: format!("event {n}"),
                },
            })
            .collect();
        store.append(vec![write(&j, events, None)]).await.unwrap();
    }
    let mut after = 0;
    let mut seen = BTreeSet::new();
    loop {
        let page = store.read_events(&j.id, after, 4096).await.unwrap();
        let Some(last) = page.last() else { break };
        for e in &page {
            assert_eq!(e.seq, after + 1, "events come in seq order without gaps");
            assert_eq!(
                e.kind,
                EventKind::Text {
                    text: format!("event {}", e.seq)
                }
            );
            assert_eq!(e.time, Timestamp(T0 + e.seq as i64));
            assert_eq!(e.raw, (e.seq % 3 == 0).then(|| format!("raw {}", e.seq)));
            after = e.seq;
            seen.insert(e.seq);
        }
        assert_eq!(last.seq, after);
    }
    assert_eq!(seen.len() as u64, TOTAL);
    assert_eq!(store.get_job(&j.id).await.unwrap().unwrap().last_seq, TOTAL);
}

pub async fn prune_keeps_last_event_of_finished_jobs(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let done = new_job(&*store, &s, ts(1)).await;
    let live = new_job(&*store, &s, ts(2)).await;
    // `text(n)` events carry time T0 + n.
    store
        .append(vec![
            write(&done, texts(1, 9), Some(running(ts(1)))),
            write(&live, texts(1, 5), Some(running(ts(2)))),
        ])
        .await
        .unwrap();
    store
        .append(vec![write(
            &done,
            texts(10, 10),
            Some(finished(Outcome::Succeeded, None)),
        )])
        .await
        .unwrap();
    // Only events older than T0 + 6 of the finished job: seqs 1..=5, in batches of 2.
    let before = Timestamp(T0 + 6);
    let mut total = 0;
    loop {
        let n = store.prune_events(before, 2).await.unwrap();
        assert!(n <= 2);
        total += n;
        if n == 0 {
            break;
        }
    }
    assert_eq!(total, 5);
    let left = store.read_events(&done.id, 0, 100).await.unwrap();
    assert_eq!(
        left.first().map(|e| e.seq),
        Some(6),
        "a reader sees the gap"
    );
    assert_eq!(left.len(), 5);
    // The running job keeps everything; the last event of a finished job always stays.
    assert_eq!(store.read_events(&live.id, 0, 100).await.unwrap().len(), 5);
    while store.prune_events(Timestamp(i64::MAX), 100).await.unwrap() > 0 {}
    let left = store.read_events(&done.id, 0, 100).await.unwrap();
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![10]);
}

// ---- claims, leases, cancel requests, admission ------------------------------------------------

fn cancelled(j: &Job, reason: &str) -> JobWrite {
    let outcome = Outcome::Cancelled {
        reason: reason.to_owned(),
    };
    write(
        j,
        vec![JobEvent {
            seq: j.last_seq + 1,
            time: ts(3),
            raw: None,
            kind: EventKind::Finished {
                state: FinalState::Cancelled,
                exit: None,
                result: String::new(),
                error_message: reason.to_owned(),
                usage: Usage::default(),
                reason: String::new(),
            },
        }],
        Some(JobUpdate {
            state: JobState::Finished(Finished {
                started: None,
                ended: ts(3),
                outcome,
                exit: None,
            }),
            result: String::new(),
            usage: Usage::default(),
            conversation_id: None,
        }),
    )
}

fn claimed_ids(claims: &[Claimed]) -> Vec<String> {
    ids(claims, |c| &c.job.id)
}

fn job_ids(jobs: &[&Job]) -> Vec<String> {
    jobs.iter().map(|j| j.id.to_string()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Several claimers on two store handles of one database, racing: every runnable job is claimed
/// exactly once.
pub async fn claims_are_exclusive_across_stores(h: &dyn Harness) {
    const SESSIONS: i64 = 60;
    let one = h.open().await;
    let two = h.open().await;
    let mut all = Vec::new();
    for i in 0..SESSIONS {
        let s = new_session(&*one, session("acme", ts(0))).await;
        all.push(new_job(&*one, &s, ts(i)).await.id.to_string());
    }
    let mut tasks = Vec::new();
    for (n, store) in [&one, &two, &one, &two].into_iter().enumerate() {
        let store = store.clone();
        let replica = format!("r{n}");
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            // Bounded, so a store that hands out a job twice fails here instead of spinning.
            for _ in 0..=SESSIONS {
                let got = store
                    .claim_jobs(&replica, ts(100), 3)
                    .await
                    .expect("claim_jobs");
                if got.is_empty() {
                    break;
                }
                assert!(got.len() <= 3);
                for c in &got {
                    assert_eq!(c.job.state, JobState::Queued, "a claimed job stays queued");
                    assert_eq!(c.cancel_reason, None);
                }
                mine.extend(claimed_ids(&got));
                tokio::task::yield_now().await;
            }
            assert!(
                store
                    .claim_jobs(&replica, ts(100), 3)
                    .await
                    .unwrap()
                    .is_empty(),
                "claims never ran dry"
            );
            (replica, mine)
        }));
    }
    let mut every = Vec::new();
    for t in tasks {
        let (replica, mine) = t.await.expect("claimer");
        // The store agrees on who owns what.
        let owned = one.renew_leases(&replica, ts(200)).await.unwrap();
        assert_eq!(
            sorted(ids(&owned, |j| j)),
            sorted(mine.clone()),
            "{replica}"
        );
        every.extend(mine);
    }
    assert_eq!(sorted(every), sorted(all), "each job claimed exactly once");
    assert!(
        one.claim_jobs("late", ts(100), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Each pick goes to the tenant with the fewest running (or claimed) jobs, ties to the oldest job:
/// one tenant's backlog cannot take every slot.
pub async fn claims_share_slots_fairly_between_tenants(h: &dyn Harness) {
    let store = h.open().await;
    // acme: five jobs in five sessions (all runnable at once), older than globex's and initech's.
    let mut acme = Vec::new();
    for i in 0..5 {
        let s = new_session(&*store, session("acme", ts(0))).await;
        acme.push(new_job(&*store, &s, ts(1 + i)).await);
    }
    let g = new_session(&*store, session("globex", ts(0))).await;
    let g1 = new_job(&*store, &g, ts(10)).await;
    let g2 = new_job(
        &*store,
        &new_session(&*store, session("globex", ts(0))).await,
        ts(11),
    )
    .await;
    let i = new_session(&*store, session("initech", ts(0))).await;
    let i1 = new_job(&*store, &i, ts(12)).await;

    // Every tenant at 0: the oldest job of each (acme's first, then globex, then initech).
    let got = store.claim_jobs("r1", ts(100), 3).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&acme[0], &g1, &i1]));
    // acme 1, globex 1, initech 0 with nothing left: acme's next (older) before globex's.
    let got = store.claim_jobs("r1", ts(100), 2).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&acme[1], &g2]));
    // A running job counts like a claimed one: acme has 2, and only acme has work left.
    store
        .append(vec![write(&acme[0], vec![], Some(running(ts(20))))])
        .await
        .unwrap();
    let got = store.claim_jobs("r1", ts(100), 10).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&acme[2], &acme[3], &acme[4]]));
}

/// What a claim hands over for the job's start, where the backend reads it, is what separate
/// reads return: the session, the job agent's conversation (not another agent's), the session's
/// newest snapshot. A store with one writer reads it in the claim's transaction.
pub async fn claims_carry_what_the_start_reads(h: &dyn Harness) {
    use crate::store::SnapPoint;
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let first = new_job(&*store, &s, ts(1)).await;
    finish(&*store, &first, Outcome::Succeeded).await;
    store
        .put_snapshot(&snap(&first, SnapPoint::Before, 'a', 2))
        .await
        .unwrap();
    store
        .put_snapshot(&snap(&first, SnapPoint::After, 'b', 3))
        .await
        .unwrap();
    let next = new_job(&*store, &s, ts(4)).await;
    let agent = next.spec.agent.clone();
    store
        .set_agent_conversation(&s.id, &agent, "c-1", ts(5))
        .await
        .unwrap();
    store
        .set_agent_conversation(&s.id, "another-agent", "x-1", ts(6))
        .await
        .unwrap();
    let got = store.claim_jobs("r1", ts(100), 10).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&next]));
    let Some(facts) = &got[0].start else {
        assert!(
            store.shared(),
            "a store with one writer reads them in the claim"
        );
        return;
    };
    assert_eq!(
        facts.session,
        store.get_session_any(&s.id).await.unwrap(),
        "the session as a read returns it"
    );
    assert_eq!(facts.conversation.as_deref(), Some("c-1"));
    assert_eq!(
        facts.newest_snapshot,
        Some(snap(&first, SnapPoint::After, 'b', 3)),
        "the newest snapshot"
    );
}

/// A tenant at its running cap gets no more jobs until one of its own ends; others still do.
pub async fn claims_respect_the_tenant_running_cap(h: &dyn Harness) {
    let store = h.open().await;
    let mut acme = Vec::new();
    for i in 0..3 {
        let s = new_session(&*store, session("acme", ts(0))).await;
        acme.push(new_job(&*store, &s, ts(1 + i)).await);
    }
    let g = new_session(&*store, session("globex", ts(0))).await;
    let g1 = new_job(&*store, &g, ts(10)).await;
    let got = store.claim_jobs_within("r1", ts(100), 10, 2).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&acme[0], &acme[1], &g1]));
    assert!(
        store
            .claim_jobs_within("r2", ts(100), 10, 2)
            .await
            .unwrap()
            .is_empty(),
        "acme is at its cap of 2 (claims by any replica count)"
    );
    store
        .append(vec![write(&acme[0], vec![], Some(running(ts(20))))])
        .await
        .unwrap();
    assert!(
        store
            .claim_jobs_within("r2", ts(100), 10, 2)
            .await
            .unwrap()
            .is_empty(),
        "running jobs count too"
    );
    finish(&*store, &acme[0], Outcome::Succeeded).await;
    let got = store.claim_jobs_within("r2", ts(100), 10, 2).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&acme[2]]));
    // 0 means no cap.
    let s = new_session(&*store, session("acme", ts(0))).await;
    let more = new_job(&*store, &s, ts(30)).await;
    let got = store.claim_jobs_within("r2", ts(100), 10, 0).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&more]));
}

pub async fn claims_keep_session_order(h: &dyn Harness) {
    let store = h.open().await;
    let other = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let t = new_session(&*store, session("globex", ts(0))).await;
    let u = new_session(&*store, session("acme", ts(0))).await;
    let s1 = new_job(&*store, &s, ts(1)).await;
    let s2 = new_job(&*store, &s, ts(2)).await;
    let t1 = new_job(&*store, &t, ts(4)).await;
    let u1 = new_job(&*store, &u, ts(3)).await;
    let u2 = new_job(&*store, &u, ts(5)).await;

    // Oldest first overall, limited.
    let got = store.claim_jobs("r1", ts(100), 1).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&s1]));
    assert_eq!(got[0].job, s1, "the claim returns the stored job");
    // s2 waits behind s1 even though another replica owns s1.
    let got = other.claim_jobs("r2", ts(100), 10).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&u1, &t1]));
    assert!(
        other
            .claim_jobs("r2", ts(100), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get_job(&s1.id).await.unwrap().unwrap().state,
        JobState::Queued
    );
    // Running, s1 still holds its session.
    store
        .append(vec![write(&s1, vec![], Some(running(ts(6))))])
        .await
        .unwrap();
    assert!(
        other
            .claim_jobs("r2", ts(100), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A started job without an owner (a row from before leases) holds its session too.
    store
        .append(vec![write(&u1, vec![], Some(running(ts(6))))])
        .await
        .unwrap();
    store
        .append(vec![write(
            &u1,
            vec![],
            Some(finished(Outcome::Succeeded, None)),
        )])
        .await
        .unwrap();
    let got = other.claim_jobs("r2", ts(100), 10).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&u2]));
    // Once s1 finishes, s2 is next.
    store
        .append(vec![write(
            &s1,
            vec![],
            Some(finished(Outcome::Succeeded, None)),
        )])
        .await
        .unwrap();
    let got = other.claim_jobs("r2", ts(100), 10).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&s2]));
    assert!(
        store
            .claim_jobs("r1", ts(100), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.claim_jobs("r1", ts(100), 0).await.unwrap().is_empty());
}

pub async fn renew_returns_only_owned_unfinished(h: &dyn Harness) {
    let store = h.open().await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        let s = new_session(&*store, session("acme", ts(0))).await;
        jobs.push(new_job(&*store, &s, ts(i)).await);
    }
    let (a, b, c) = (&jobs[0], &jobs[1], &jobs[2]);
    store.claim_jobs("r1", ts(10), 2).await.unwrap();
    store.claim_jobs("r2", ts(10), 2).await.unwrap();
    finish(&*store, a, Outcome::Succeeded).await;
    store
        .append(vec![write(b, vec![], Some(running(ts(2))))])
        .await
        .unwrap();
    let renewed = store.renew_leases("r1", ts(50)).await.unwrap();
    assert_eq!(ids(&renewed, |j| j), job_ids(&[b]));
    let renewed = store.renew_leases("r2", ts(20)).await.unwrap();
    assert_eq!(ids(&renewed, |j| j), job_ids(&[c]));
    assert!(
        store
            .renew_leases("nobody", ts(50))
            .await
            .unwrap()
            .is_empty()
    );
    // The renewal moved the leases: at ts(30) only r2's has run out.
    let expired = store.expired_leases(ts(30), 10).await.unwrap();
    assert_eq!(ids(&expired, |o| &o.job.id), job_ids(&[c]));
    assert_eq!(expired[0].lease_until, ts(20));
}

pub async fn expired_leases_listing(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let t = new_session(&*store, session("acme", ts(0))).await;
    let u = new_session(&*store, session("acme", ts(0))).await;
    let a = new_job(&*store, &s, ts(1)).await;
    let b = new_job(&*store, &t, ts(2)).await;
    let _unclaimed = new_job(&*store, &u, ts(3)).await;
    store.claim_jobs("r1", ts(20), 1).await.unwrap();
    store.claim_jobs("r2", ts(10), 1).await.unwrap();
    assert!(
        store.expired_leases(ts(10), 10).await.unwrap().is_empty(),
        "strictly before now"
    );
    let got = store.expired_leases(ts(11), 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job, b);
    assert_eq!(got[0].owner, "r2");
    assert_eq!(got[0].lease_until, ts(10));
    // Oldest lease first; a started job is still an orphan; the limit holds.
    store
        .append(vec![write(&a, texts(1, 2), Some(running(ts(4))))])
        .await
        .unwrap();
    let got = store.expired_leases(ts(21), 10).await.unwrap();
    assert_eq!(ids(&got, |o| &o.job.id), job_ids(&[&b, &a]));
    assert_eq!(got[1].owner, "r1");
    assert_eq!(got[1].job.state, JobState::Running { started: ts(4) });
    assert_eq!(got[1].job.last_seq, 2);
    assert_eq!(store.expired_leases(ts(21), 1).await.unwrap().len(), 1);
    // A finished job is nobody's orphan.
    finish(&*store, &b, Outcome::Succeeded).await;
    let got = store.expired_leases(Timestamp(i64::MAX), 10).await.unwrap();
    assert_eq!(ids(&got, |o| &o.job.id), job_ids(&[&a]));
}

pub async fn release_restores_queue_place(h: &dyn Harness) {
    let store = h.open().await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        let s = new_session(&*store, session("acme", ts(0))).await;
        jobs.push(new_job(&*store, &s, ts(i)).await);
    }
    let a = &jobs[0];
    let got = store.claim_jobs("r1", ts(10), 1).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[a]));
    assert!(!store.release_job(&a.id, "r2").await.unwrap(), "not r2's");
    assert!(!store.release_job(&JobId::generate(), "r1").await.unwrap());
    assert!(store.release_job(&a.id, "r1").await.unwrap());
    assert!(
        !store.release_job(&a.id, "r1").await.unwrap(),
        "already released"
    );
    assert!(
        store
            .expired_leases(Timestamp(i64::MAX), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.renew_leases("r1", ts(10)).await.unwrap().is_empty());
    assert_eq!(store.queue_position(&a.id).await.unwrap(), Some(1));
    // Back in its original place: the next claim takes it first.
    let got = store.claim_jobs("r2", ts(10), 1).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[a]));
    // A started job cannot be released.
    store
        .append(vec![write(a, vec![], Some(running(ts(4))))])
        .await
        .unwrap();
    assert!(!store.release_job(&a.id, "r2").await.unwrap());
    assert_eq!(
        store.get_job(&a.id).await.unwrap().unwrap().state,
        JobState::Running { started: ts(4) }
    );
    assert_eq!(
        store.renew_leases("r2", ts(20)).await.unwrap(),
        vec![a.id.clone()]
    );
}

pub async fn take_over_moves_only_a_running_job_of_its_owner(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let a = new_job(&*store, &s, ts(1)).await;
    let got = store.claim_jobs("r1", ts(10), 1).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[&a]));
    // Not started yet: nothing to adopt.
    assert!(
        !store
            .take_over_job(&a.id, "r1", "r2", ts(20))
            .await
            .unwrap()
    );
    store
        .append(vec![write(&a, vec![], Some(running(ts(4))))])
        .await
        .unwrap();
    assert!(
        !store
            .take_over_job(&a.id, "r9", "r2", ts(20))
            .await
            .unwrap(),
        "not r9's"
    );
    assert!(
        !store
            .take_over_job(&JobId::generate(), "r1", "r2", ts(20))
            .await
            .unwrap()
    );
    assert!(
        store
            .take_over_job(&a.id, "r1", "r2", ts(20))
            .await
            .unwrap()
    );
    // The swap happened once: a second adopter loses.
    assert!(
        !store
            .take_over_job(&a.id, "r1", "r3", ts(20))
            .await
            .unwrap()
    );
    assert!(store.renew_leases("r1", ts(30)).await.unwrap().is_empty());
    assert_eq!(
        store.renew_leases("r2", ts(30)).await.unwrap(),
        vec![a.id.clone()]
    );
    store
        .append(vec![write(
            &a,
            vec![],
            Some(finished(Outcome::Succeeded, None)),
        )])
        .await
        .unwrap();
    assert!(
        !store
            .take_over_job(&a.id, "r2", "r3", ts(40))
            .await
            .unwrap()
    );
}

/// Issue #23 with replicas: a started job whose replica died stays unlisted until
/// `running_before` (its supervisor may still be adopted), and settling it is a compare-and-swap
/// on the generation listed, which any owner change moves on.
pub async fn orphans_are_fenced_by_lease_generation(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let t = new_session(&*store, session("acme", ts(0))).await;
    let a = new_job(&*store, &s, ts(1)).await;
    let q = new_job(&*store, &t, ts(2)).await;
    store.claim_jobs("r1", ts(10), 2).await.unwrap();
    store
        .append(vec![write(&a, vec![], Some(running(ts(4))))])
        .await
        .unwrap();
    // A claimed job that never started is an orphan once its lease ends; a started one only
    // once it ended before `running_before`.
    let got = store
        .expired_leases_within(ts(11), ts(5), 10)
        .await
        .unwrap();
    assert_eq!(ids(&got, |o| &o.job.id), job_ids(&[&q]));
    let got = store
        .expired_leases_within(ts(11), ts(11), 10)
        .await
        .unwrap();
    assert_eq!(ids(&got, |o| &o.job.id), job_ids(&[&a, &q]));
    let listed = got.into_iter().find(|o| o.job.id == a.id).unwrap();
    assert_eq!(listed.owner, "r1");
    // Its replica came back and adopted it after it was listed: the stale listing cannot
    // settle it, neither can a listing of another owner.
    assert!(
        store
            .take_over_job(&a.id, "r1", "r1", ts(30))
            .await
            .unwrap()
    );
    assert!(!store.take_over_orphan(&listed, "r2", ts(40)).await.unwrap());
    let relisted = Orphan {
        owner: "r9".into(),
        ..listed.clone()
    };
    assert!(
        !store
            .take_over_orphan(&relisted, "r2", ts(40))
            .await
            .unwrap()
    );
    let renewed = store.renew_leases("r1", ts(50)).await.unwrap();
    assert_eq!(sorted(ids(&renewed, |j| j)), sorted(job_ids(&[&a, &q])));
    // Lost again; listed afresh (one generation on), r2 takes it over once, and the replica
    // coming back after that cannot adopt it.
    let fresh = store
        .expired_leases_within(ts(51), ts(51), 10)
        .await
        .unwrap();
    let fresh = fresh.into_iter().find(|o| o.job.id == a.id).unwrap();
    assert_eq!(fresh.lease_gen, listed.lease_gen + 1);
    assert!(store.take_over_orphan(&fresh, "r2", ts(60)).await.unwrap());
    assert!(!store.take_over_orphan(&fresh, "r3", ts(60)).await.unwrap());
    assert!(
        !store
            .take_over_job(&a.id, "r1", "r1", ts(70))
            .await
            .unwrap()
    );
    let renewed = store.renew_leases("r2", ts(80)).await.unwrap();
    assert_eq!(ids(&renewed, |j| j), job_ids(&[&a]));
    // A finished job is nobody's to take over.
    store
        .append(vec![write(
            &a,
            vec![],
            Some(finished(
                Outcome::Failed {
                    message: "lost".into(),
                },
                None,
            )),
        )])
        .await
        .unwrap();
    let done = Orphan {
        lease_gen: fresh.lease_gen + 1,
        owner: "r2".into(),
        ..fresh
    };
    assert!(!store.take_over_orphan(&done, "r3", ts(90)).await.unwrap());
}

pub async fn finish_unclaimed_only_when_unclaimed(h: &dyn Harness) {
    let store = h.open().await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        let s = new_session(&*store, session("acme", ts(0))).await;
        jobs.push(new_job(&*store, &s, ts(i)).await);
    }
    let (a, b, c) = (&jobs[0], &jobs[1], &jobs[2]);
    // b is claimed, c is started without a claim; a is free.
    store.claim_jobs("r1", ts(10), 2).await.unwrap();
    assert!(store.release_job(&a.id, "r1").await.unwrap());
    store
        .append(vec![write(c, texts(1, 1), Some(running(ts(1))))])
        .await
        .unwrap();
    let c = store.get_job(&c.id).await.unwrap().unwrap();

    let w = cancelled(a, "by user");
    assert!(store.finish_unclaimed(w.clone()).await.unwrap());
    let got = store.get_job(&a.id).await.unwrap().unwrap();
    assert_eq!(Some(&got.state), w.update.as_ref().map(|u| &u.state));
    assert_eq!(store.read_events(&a.id, 0, 10).await.unwrap(), w.events);
    assert_eq!(store.queue_position(&a.id).await.unwrap(), None);
    // Finished now: a second attempt changes nothing.
    assert!(
        !store
            .finish_unclaimed(cancelled(&got, "again"))
            .await
            .unwrap()
    );
    assert_eq!(store.read_events(&a.id, 0, 10).await.unwrap(), w.events);

    for (j, what) in [(b, "claimed"), (&c, "started")] {
        let before = store.get_job(&j.id).await.unwrap().unwrap();
        let events = store.read_events(&j.id, 0, 10).await.unwrap();
        assert!(
            !store
                .finish_unclaimed(cancelled(&before, "x"))
                .await
                .unwrap(),
            "{what}"
        );
        assert_eq!(
            store.get_job(&j.id).await.unwrap().unwrap(),
            before,
            "{what}"
        );
        assert_eq!(
            store.read_events(&j.id, 0, 10).await.unwrap(),
            events,
            "{what}"
        );
    }
    assert_eq!(
        store.renew_leases("r1", ts(10)).await.unwrap(),
        vec![b.id.clone()]
    );
}

pub async fn cancel_requests_keep_first_reason(h: &dyn Harness) {
    let store = h.open().await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        let s = new_session(&*store, session("acme", ts(0))).await;
        jobs.push(new_job(&*store, &s, ts(i)).await);
    }
    let (a, b, c) = (&jobs[0], &jobs[1], &jobs[2]);
    store.claim_jobs("r1", ts(10), 1).await.unwrap();
    assert!(store.cancel_requests("r1").await.unwrap().is_empty());
    store.request_cancel(&a.id, "first").await.unwrap();
    store.request_cancel(&a.id, "second").await.unwrap();
    assert_eq!(
        store.cancel_requests("r1").await.unwrap(),
        vec![(a.id.clone(), "first".to_owned())]
    );
    assert!(store.cancel_requests("r2").await.unwrap().is_empty());
    // A request made before the claim travels with it.
    store.request_cancel(&b.id, "early").await.unwrap();
    let got = store.claim_jobs("r2", ts(10), 1).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[b]));
    assert_eq!(got[0].cancel_reason.as_deref(), Some("early"));
    assert_eq!(
        store.cancel_requests("r2").await.unwrap(),
        vec![(b.id.clone(), "early".to_owned())]
    );
    // Finished, missing: no-ops; a finished job's request is no longer listed.
    finish(&*store, a, Outcome::Succeeded).await;
    assert!(store.cancel_requests("r1").await.unwrap().is_empty());
    store.request_cancel(&a.id, "late").await.unwrap();
    store
        .request_cancel(&JobId::generate(), "ghost")
        .await
        .unwrap();
    assert_eq!(
        store.get_job(&a.id).await.unwrap().unwrap().state.name(),
        "SUCCEEDED"
    );
    // An unclaimed job's request shows up for whoever claims it.
    store.request_cancel(&c.id, "c").await.unwrap();
    let got = store.claim_jobs("r1", ts(10), 5).await.unwrap();
    assert_eq!(claimed_ids(&got), job_ids(&[c]));
    assert_eq!(got[0].cancel_reason.as_deref(), Some("c"));
}

pub async fn control_messages_reach_the_owner_and_answers_claim_once(h: &dyn Harness) {
    use crate::store::control::{Control, ControlOutcome, RELEASED};
    let (store, other) = (h.open().await, h.open().await);
    let s = new_session(&*store, session("acme", ts(0))).await;
    let a = new_job(&*store, &s, ts(1)).await;
    store.claim_jobs("r1", ts(10), 1).await.unwrap();
    assert!(store.pending_controls("r1").await.unwrap().is_empty());
    let answer = |id: &str| Control::Answer {
        request_id: id.into(),
        allow: true,
        message: "go".into(),
    };
    let input = Control::Input {
        text: "more".into(),
    };
    // Taken by another replica: waits for the owner, in order.
    let i = other
        .send_control(&a.id, &input, false, ts(11))
        .await
        .unwrap();
    let seven = other
        .send_control(&a.id, &answer("7"), false, ts(12))
        .await
        .unwrap();
    let pending = store.pending_controls("r1").await.unwrap();
    let got: Vec<(Option<i64>, &Control)> =
        pending.iter().map(|m| (Some(m.id), &m.control)).collect();
    assert_eq!(got, vec![(i, &input), (seven, &answer("7"))]);
    assert!(pending.iter().all(|m| m.job == a.id));
    assert!(store.pending_controls("r2").await.unwrap().is_empty());
    // The first answer to a request holds it, whichever handle took the second.
    assert_eq!(
        store
            .send_control(&a.id, &answer("7"), true, ts(13))
            .await
            .unwrap(),
        None
    );
    // Delivered by its taker: never pending, and it claims its request too.
    let eight = store
        .send_control(&a.id, &answer("8"), true, ts(14))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.pending_controls("r1").await.unwrap().len(), 2);
    assert_eq!(
        other
            .send_control(&a.id, &answer("8"), false, ts(15))
            .await
            .unwrap(),
        None
    );

    // Outcomes: none until settled, then the owner's verdict.
    let (i, seven) = (i.unwrap(), seven.unwrap());
    assert_eq!(other.control_outcome(i).await.unwrap(), None);
    store.settle_control(i, None).await.unwrap();
    assert_eq!(
        other.control_outcome(i).await.unwrap(),
        Some(ControlOutcome::Delivered)
    );
    store
        .settle_control(seven, Some(("PERMISSION_DECIDED", "timed out")))
        .await
        .unwrap();
    assert_eq!(
        other.control_outcome(seven).await.unwrap(),
        Some(ControlOutcome::Refused {
            reason: "PERMISSION_DECIDED".into(),
            message: "timed out".into()
        })
    );
    assert!(store.pending_controls("r1").await.unwrap().is_empty());
    // A decided request stays claimed; an answer to a request the job never made is released.
    assert_eq!(
        other
            .send_control(&a.id, &answer("7"), false, ts(16))
            .await
            .unwrap(),
        None
    );
    assert_eq!(RELEASED, Reason::PermissionRequestNotFound.as_str());
    store
        .settle_control(eight, Some((RELEASED, "no such request")))
        .await
        .unwrap();
    assert!(
        other
            .send_control(&a.id, &answer("8"), false, ts(17))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.control_outcome(i64::MAX).await.unwrap(), None);

    // Concurrent answers to one request from two handles: exactly one wins.
    let mut racers = Vec::new();
    for k in 0..8 {
        let st = if k % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let (job, c) = (a.id.clone(), answer("race"));
        racers.push(tokio::spawn(async move {
            st.send_control(&job, &c, false, ts(20)).await.unwrap()
        }));
    }
    let mut won = 0;
    for r in racers {
        won += usize::from(r.await.unwrap().is_some());
    }
    assert_eq!(won, 1);
    // A finished job's messages are nobody's to deliver.
    finish(&*store, &a, Outcome::Succeeded).await;
    assert!(store.pending_controls("r1").await.unwrap().is_empty());
}

pub async fn queue_positions(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let u = new_session(&*store, session("acme", ts(0))).await;
    let v = new_session(&*store, session("acme", ts(0))).await;
    let t = new_session(&*store, session("globex", ts(0))).await;
    // Inserted out of creation order on purpose: positions follow creation time.
    let s2 = new_job(&*store, &s, ts(20)).await;
    let t1 = new_job(&*store, &t, ts(10)).await;
    let s1 = new_job(&*store, &s, ts(5)).await;
    let u1 = new_job(&*store, &u, ts(15)).await;
    let t2 = new_job(&*store, &t, ts(30)).await;
    let v1 = new_job(&*store, &v, ts(1)).await;
    let v2 = new_job(&*store, &v, ts(2)).await;
    // Claimed jobs are still queued; v1 starts, so v2 waits behind it.
    assert_eq!(store.claim_jobs("r1", ts(100), 10).await.unwrap().len(), 4);
    store
        .append(vec![write(&v1, vec![], Some(running(ts(40))))])
        .await
        .unwrap();
    let pos = |j: &Job| {
        let (store, id) = (store.clone(), j.id.clone());
        async move { store.queue_position(&id).await.unwrap() }
    };
    // A position counts only the asking tenant's jobs that start first: the older queued jobs of
    // its own session, and the tenant's other runnable jobs created before it. Other tenants'
    // jobs never count (their load is not this tenant's business), nor do jobs blocked behind a
    // running job of their own session (v2 does not start before s1).
    assert_eq!(pos(&v1).await, None, "a running job has no position");
    assert_eq!(pos(&v2).await, Some(1));
    assert_eq!(pos(&s1).await, Some(1));
    assert_eq!(pos(&u1).await, Some(2), "after s1");
    assert_eq!(pos(&s2).await, Some(3), "after s1 (its session) and u1");
    assert_eq!(
        pos(&t1).await,
        Some(1),
        "acme's jobs do not count for globex"
    );
    assert_eq!(pos(&t2).await, Some(2));
    store
        .append(vec![write(&s1, vec![], Some(running(ts(41))))])
        .await
        .unwrap();
    assert_eq!(pos(&s1).await, None);
    assert_eq!(pos(&u1).await, Some(1));
    assert_eq!(pos(&s2).await, Some(2), "after u1");
    finish(&*store, &t1, Outcome::Succeeded).await;
    assert_eq!(pos(&t1).await, None);
    assert_eq!(pos(&t2).await, Some(1));
    assert_eq!(
        store.queue_position(&JobId::generate()).await.unwrap(),
        None
    );
}

fn refused(err: &Error, reason: Reason) {
    match err {
        Error::ResourceExhausted {
            reason: r,
            retry_after,
            ..
        } => {
            assert_eq!(*r, reason, "{err:?}");
            assert_eq!(*retry_after, Some(Duration::from_secs(5)), "{err:?}");
        }
        other => panic!("expected ResourceExhausted({reason}), got {other:?}"),
    }
}

pub async fn admit_limits_queue_full(h: &dyn Harness) {
    let store = h.open().await;
    let limits = AdmitLimits {
        max_queued_in_session: 2,
        max_active_for_tenant: 0,
    };
    let s = new_session(&*store, session("acme", ts(0))).await;
    let other = new_session(&*store, session("acme", ts(0))).await;
    for i in 0..2 {
        store
            .create_job(&job(&s, ts(i)), ts(100), &limits)
            .await
            .unwrap();
    }
    let before = store.get_session_any(&s.id).await.unwrap().unwrap();
    let extra = job(&s, ts(5));
    let err = store
        .create_job(&extra, ts(200), &limits)
        .await
        .unwrap_err();
    refused(&err, Reason::QueueFull);
    assert_eq!(
        store.get_job(&extra.id).await.unwrap(),
        None,
        "nothing written"
    );
    assert_eq!(store.get_session_any(&s.id).await.unwrap().unwrap(), before);
    // Another session has its own queue.
    store
        .create_job(&job(&other, ts(6)), ts(100), &limits)
        .await
        .unwrap();
    // A claimed job has left the queue.
    let got = store.claim_jobs("r1", ts(100), 1).await.unwrap();
    assert_eq!(got[0].job.session_id, s.id);
    store.create_job(&extra, ts(200), &limits).await.unwrap();
    let err = store
        .create_job(&job(&s, ts(7)), ts(200), &limits)
        .await
        .unwrap_err();
    refused(&err, Reason::QueueFull);
}

pub async fn admit_limits_tenant_active(h: &dyn Harness) {
    let store = h.open().await;
    let limits = AdmitLimits {
        max_queued_in_session: usize::MAX,
        max_active_for_tenant: 3,
    };
    let s = new_session(&*store, session("acme", ts(0))).await;
    let t = new_session(&*store, session("acme", ts(0))).await;
    let g = new_session(&*store, session("globex", ts(0))).await;
    let a = store
        .create_job(&job(&s, ts(1)), ts(100), &limits)
        .await
        .unwrap();
    let b = store
        .create_job(&job(&t, ts(2)), ts(100), &limits)
        .await
        .unwrap();
    store
        .create_job(&job(&s, ts(3)), ts(100), &limits)
        .await
        .unwrap();
    // Running jobs count as well as queued ones.
    store
        .append(vec![write(&a, vec![], Some(running(ts(4))))])
        .await
        .unwrap();
    let extra = job(&t, ts(5));
    let err = store
        .create_job(&extra, ts(100), &limits)
        .await
        .unwrap_err();
    refused(&err, Reason::TooManyJobs);
    assert_eq!(store.get_job(&extra.id).await.unwrap(), None);
    assert_eq!(
        store
            .get_session_any(&t.id)
            .await
            .unwrap()
            .unwrap()
            .job_count,
        1
    );
    // Other tenants are not affected.
    for i in 0..3 {
        store
            .create_job(&job(&g, ts(i)), ts(100), &limits)
            .await
            .unwrap();
    }
    // A finished job frees its slot; 0 means unlimited.
    finish(&*store, &b, Outcome::Succeeded).await;
    store.create_job(&extra, ts(100), &limits).await.unwrap();
    let err = store
        .create_job(&job(&t, ts(6)), ts(100), &limits)
        .await
        .unwrap_err();
    refused(&err, Reason::TooManyJobs);
    let unlimited = AdmitLimits {
        max_queued_in_session: usize::MAX,
        max_active_for_tenant: 0,
    };
    store
        .create_job(&job(&t, ts(6)), ts(100), &unlimited)
        .await
        .unwrap();
}

pub async fn admit_retry_bypasses_limits(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let mut first = job(&s, ts(1));
    first.request_id = Some("once".into());
    let first = store.create_job(&first, ts(100), &NO_LIMITS).await.unwrap();
    let full = AdmitLimits {
        max_queued_in_session: 1,
        max_active_for_tenant: 1,
    };
    let mut retry = job(&s, ts(2));
    retry.request_id = Some("once".into());
    assert_eq!(
        store.create_job(&retry, ts(200), &full).await.unwrap(),
        first
    );
    let zero = AdmitLimits {
        max_queued_in_session: 0,
        max_active_for_tenant: 1,
    };
    assert_eq!(
        store.create_job(&retry, ts(200), &zero).await.unwrap(),
        first
    );
    // A new request at the same limits is refused.
    let mut fresh = job(&s, ts(3));
    fresh.request_id = Some("twice".into());
    let err = store.create_job(&fresh, ts(200), &full).await.unwrap_err();
    refused(&err, Reason::QueueFull);
    let sess = store.get_session_any(&s.id).await.unwrap().unwrap();
    assert_eq!(sess.job_count, 1);
    assert_eq!(sess.expires, ts(100));
}

pub async fn append_refuses_finished_job_and_clears_owner(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let t = new_session(&*store, session("acme", ts(0))).await;
    let a = new_job(&*store, &s, ts(1)).await;
    let b = new_job(&*store, &t, ts(2)).await;
    store.claim_jobs("r1", ts(10), 2).await.unwrap();
    store
        .append(vec![write(&a, texts(1, 2), Some(running(ts(3))))])
        .await
        .unwrap();
    store
        .append(vec![write(
            &a,
            texts(3, 3),
            Some(finished(Outcome::Succeeded, Some("conv-a"))),
        )])
        .await
        .unwrap();
    // Its owner is cleared: no renewal, no orphan, no cancel request listed.
    assert_eq!(
        store.renew_leases("r1", ts(20)).await.unwrap(),
        vec![b.id.clone()]
    );
    let orphans = store.expired_leases(Timestamp(i64::MAX), 10).await.unwrap();
    assert_eq!(ids(&orphans, |o| &o.job.id), job_ids(&[&b]));
    assert!(!store.release_job(&a.id, "r1").await.unwrap());

    let before = Unchanged::capture(&*store, &[&a, &b], &s).await;
    let bad: Vec<(&str, Vec<JobWrite>)> = vec![
        ("events", vec![write(&a, texts(4, 4), None)]),
        ("row only", vec![write(&a, vec![], Some(running(ts(9))))]),
        (
            "second finish",
            vec![write(
                &a,
                texts(4, 4),
                Some(finished(
                    Outcome::Failed {
                        message: "late".into(),
                    },
                    Some("conv-z"),
                )),
            )],
        ),
        (
            "valid write first",
            vec![write(&b, texts(1, 1), None), write(&a, texts(4, 4), None)],
        ),
        (
            "finished within the batch",
            vec![
                write(&b, texts(1, 1), Some(finished(Outcome::Succeeded, None))),
                write(&b, texts(2, 2), None),
            ],
        ),
    ];
    for (what, batch) in bad {
        let err = store.append(batch).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::FailedPrecondition {
                    reason: Reason::JobFinished,
                    ..
                }
            ),
            "{what}: {err:?}"
        );
        before.check(&*store, what).await;
    }
    assert_eq!(
        store.renew_leases("r1", ts(30)).await.unwrap(),
        vec![b.id.clone()]
    );
}

/// A ledger row of `job` at `time` (micros) for `model`, with `cost` (`None`: unpriced).
fn ledger_row(job: &Job, agent: &str, model: &str, time: i64, cost: Option<f64>) -> LedgerRow {
    LedgerRow {
        tenant: job.tenant.clone(),
        session: job.session_id.clone(),
        job: job.id.clone(),
        agent: agent.into(),
        call: crate::domain::ModelCall {
            time: Timestamp(time),
            model: model.into(),
            api: "anthropic".into(),
            status: 200,
            input_tokens: 100,
            output_tokens: 20,
            cache_read_tokens: 7,
            cache_write_tokens: 3,
            cost_usd: cost,
            latency_ms: 12,
        },
    }
}

pub async fn ledger_outlives_sessions_and_groups_per_tenant(h: &dyn Harness) {
    const DAY: i64 = 86_400_000_000;
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let other = new_session(&*store, session("globex", ts(0))).await;
    let j = new_job(&*store, &s, ts(1)).await;
    let k = new_job(&*store, &other, ts(2)).await;
    let rows = [
        ledger_row(&j, "claude", "m1", DAY + 5, Some(0.5)),
        ledger_row(&j, "claude", "m2", DAY + 6, None),
        ledger_row(&j, "codex", "m1", 2 * DAY + 1, Some(0.25)),
        ledger_row(&k, "claude", "m1", DAY + 7, Some(9.0)),
    ];
    for r in &rows {
        store.record_model_call(r).await.unwrap();
    }
    store.delete_session(&s.id).await.unwrap();
    let acme = tenant("acme");
    let calls = store.model_calls(&acme, &j.id).await.unwrap();
    assert_eq!(
        calls,
        rows[..3].to_vec(),
        "the ledger outlives the session, in order"
    );
    assert!(
        store.model_calls(&acme, &k.id).await.unwrap().is_empty(),
        "other tenant's job"
    );
    let all = |group| UsageFilter {
        since: Timestamp(i64::MIN),
        until: Timestamp(i64::MAX),
        group,
        session: None,
    };
    let total = store.usage(&acme, &all(None)).await.unwrap();
    assert_eq!(total.len(), 1);
    let t = &total[0];
    assert_eq!((t.calls, t.input_tokens, t.output_tokens), (3, 300, 60));
    assert_eq!(
        (t.cache_read_tokens, t.cache_write_tokens, t.unpriced_calls),
        (21, 9, 1)
    );
    assert!((t.cost_usd - 0.75).abs() < 1e-9, "{}", t.cost_usd);
    let by_day = store
        .usage(&acme, &all(Some(UsageGroup::Day)))
        .await
        .unwrap();
    let keys: Vec<_> = by_day.iter().map(|b| (b.key.as_str(), b.calls)).collect();
    assert_eq!(keys, vec![("1", 2), ("2", 1)]);
    let by_model = store
        .usage(&acme, &all(Some(UsageGroup::Model)))
        .await
        .unwrap();
    let keys: Vec<_> = by_model.iter().map(|b| (b.key.as_str(), b.calls)).collect();
    assert_eq!(keys, vec![("m1", 2), ("m2", 1)]);
    let by_agent = store
        .usage(&acme, &all(Some(UsageGroup::Agent)))
        .await
        .unwrap();
    assert_eq!(by_agent.len(), 2);
    let by_session = store
        .usage(&acme, &all(Some(UsageGroup::Session)))
        .await
        .unwrap();
    assert_eq!(by_session[0].key, s.id.to_string());
    let day2 = UsageFilter {
        since: Timestamp(2 * DAY),
        until: Timestamp(3 * DAY),
        group: None,
        session: None,
    };
    assert_eq!(store.usage(&acme, &day2).await.unwrap()[0].calls, 1);
    let none = UsageFilter {
        since: Timestamp(10 * DAY),
        until: Timestamp(11 * DAY),
        group: None,
        session: None,
    };
    assert!(store.usage(&acme, &none).await.unwrap().is_empty());
    let of_session = |session: &Session| UsageFilter {
        session: Some(session.id.clone()),
        ..all(None)
    };
    assert_eq!(
        store.usage(&acme, &of_session(&s)).await.unwrap()[0].calls,
        3
    );
    assert!(
        store
            .usage(&acme, &of_session(&other))
            .await
            .unwrap()
            .is_empty(),
        "other tenant's session"
    );
    assert!(
        store
            .usage(&tenant("nobody"), &all(None))
            .await
            .unwrap()
            .is_empty()
    );
}

// ---- change sequence (issue #19) ---------------------------------------------------------------

/// (seq, job, state name) of a tenant's changes after `after`.
async fn changes(store: &dyn Store, t: &str, after: u64) -> Vec<(u64, JobId, &'static str)> {
    store
        .read_changes(&tenant(t), after, 10_000)
        .await
        .expect("read_changes")
        .into_iter()
        .map(|c| (c.seq, c.job.id, c.job.state.name()))
        .collect()
}

pub async fn change_sequence_per_tenant(h: &dyn Harness) {
    let store = h.open().await;
    let a = new_session(&*store, session("acme", ts(0))).await;
    let b = new_session(&*store, session("other", ts(0))).await;
    assert_eq!(store.last_change(&tenant("acme")).await.unwrap(), 0);
    let j1 = new_job(&*store, &a, ts(1)).await;
    let theirs = new_job(&*store, &b, ts(1)).await;
    let j2 = new_job(&*store, &a, ts(2)).await;
    // Events without a state change and a conversation update add no change.
    store
        .append(vec![write(&j1, texts(1, 3), Some(running(ts(3))))])
        .await
        .unwrap();
    let mut conv = running(ts(3));
    conv.conversation_id = Some("c1".into());
    store
        .append(vec![write(&j1, texts(4, 5), Some(conv))])
        .await
        .unwrap();
    // Two state changes of one job in one batch are two changes.
    store
        .append(vec![
            write(&j2, vec![], Some(running(ts(4)))),
            write(&j2, vec![], Some(finished(Outcome::Succeeded, None))),
        ])
        .await
        .unwrap();
    finish(&*store, &theirs, Outcome::Succeeded).await;
    let got = changes(&*store, "acme", 0).await;
    let want = vec![
        (1, j1.id.clone(), "QUEUED"),
        (2, j2.id.clone(), "QUEUED"),
        (3, j1.id.clone(), "RUNNING"),
        (4, j2.id.clone(), "RUNNING"),
        (5, j2.id.clone(), "SUCCEEDED"),
    ];
    assert_eq!(got, want);
    assert_eq!(changes(&*store, "acme", 3).await, want[3..].to_vec());
    assert_eq!(store.last_change(&tenant("acme")).await.unwrap(), 5);
    assert_eq!(changes(&*store, "other", 0).await.len(), 3);
    // A change carries the job as it was then: j1's RUNNING change has its last seq of then.
    let all = store.read_changes(&tenant("acme"), 0, 10).await.unwrap();
    assert_eq!(all[2].job.last_seq, 3);
    assert_eq!(all[4].job.result, "done");
    assert_eq!(all[4].job.usage, usage());
    assert_eq!(all[4].job.spec, j2.spec);
    assert_eq!(
        store
            .read_changes(&tenant("acme"), 0, 2)
            .await
            .unwrap()
            .len(),
        2
    );
    // A deleted job's changes are skipped; the others keep their seqs.
    store.delete_session(&b.id).await.unwrap();
    assert!(changes(&*store, "other", 0).await.is_empty());
}

pub async fn change_sequence_under_concurrent_writers(h: &dyn Harness) {
    const JOBS: usize = 12;
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let mut tasks = Vec::new();
    for i in 0..JOBS {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let j = new_job(&*store, &s, ts(i as i64)).await;
            finish(&*store, &j, Outcome::Succeeded).await;
            j.id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    let got = changes(&*store, "acme", 0).await;
    let seqs: Vec<u64> = got.iter().map(|c| c.0).collect();
    assert_eq!(seqs, (1..=3 * JOBS as u64).collect::<Vec<_>>(), "gapless");
    for id in ids {
        let states: Vec<&str> = got.iter().filter(|c| c.1 == id).map(|c| c.2).collect();
        assert_eq!(states, ["QUEUED", "RUNNING", "SUCCEEDED"]);
    }
}

/// A job's marks say from which event seq each of its changes' events start (WatchJobs'
/// `include_events`): its own changes only, before the bound, each with the job's last seq then.
pub async fn change_marks_of_one_job(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let j = new_job(&*store, &s, ts(1)).await;
    let other = new_job(&*store, &s, ts(1)).await;
    store
        .append(vec![write(&j, texts(1, 3), Some(running(ts(3))))])
        .await
        .unwrap();
    store
        .append(vec![write(&other, texts(1, 2), None)])
        .await
        .unwrap();
    store
        .append(vec![write(
            &j,
            texts(4, 6),
            Some(finished(Outcome::Succeeded, None)),
        )])
        .await
        .unwrap();
    let mark = |seq, state, last_seq| ChangeMark {
        seq,
        state,
        last_seq,
    };
    let all = vec![
        mark(1, "QUEUED", 0),
        mark(3, "RUNNING", 3),
        mark(4, "SUCCEEDED", 6),
    ];
    let acme = tenant("acme");
    assert_eq!(
        store
            .job_change_marks(&acme, &j.id, u64::MAX)
            .await
            .unwrap(),
        all
    );
    assert_eq!(
        store.job_change_marks(&acme, &j.id, 4).await.unwrap(),
        all[..2].to_vec(),
        "only changes before the bound"
    );
    assert!(
        store
            .job_change_marks(&acme, &j.id, 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .job_change_marks(&tenant("other"), &j.id, u64::MAX)
            .await
            .unwrap()
            .is_empty(),
        "another tenant learns nothing of the job"
    );
}

pub async fn pruned_changes_expire_cursors(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let j = new_job(&*store, &s, ts(1)).await;
    finish(&*store, &j, Outcome::Succeeded).await;
    let future = Timestamp(Timestamp::now().0 + 60_000_000);
    assert_eq!(store.prune_changes(future, 2).await.unwrap(), 2);
    let err = store
        .read_changes(&tenant("acme"), 1, 10)
        .await
        .expect_err("cursor 1 is before what was pruned");
    assert_eq!(err.reason(), Reason::CursorExpired);
    // The job's last change is left for the next batch, but a cursor before it has expired
    // already: that change would come without the marks of the job's earlier ones.
    let err = store
        .read_changes(&tenant("acme"), 2, 10)
        .await
        .expect_err("cursor 2 is before the last change of a job partly pruned");
    assert_eq!(err.reason(), Reason::CursorExpired);
    assert_eq!(store.prune_changes(future, 10).await.unwrap(), 1);
    assert!(changes(&*store, "acme", 3).await.is_empty());
    assert!(store.read_changes(&tenant("acme"), 2, 10).await.is_err());
    // The sequence goes on after pruning.
    new_job(&*store, &s, ts(2)).await;
    assert_eq!(changes(&*store, "acme", 3).await.len(), 1);
}

/// Pruning keeps the changes of a job that is still changing: the job's later change needs
/// their marks (WatchJobs' `include_events`), else a watcher would get again the events it had
/// with them. A final job's changes go once its final change is old too, all together as far as
/// cursors can tell.
pub async fn pruning_keeps_the_changes_of_jobs_still_changing(h: &dyn Harness) {
    let store = h.open().await;
    let acme = tenant("acme");
    let s = new_session(&*store, session("acme", ts(0))).await;
    let long = new_job(&*store, &s, ts(1)).await;
    store
        .append(vec![write(&long, texts(1, 3), Some(running(ts(2))))])
        .await
        .unwrap();
    let short = new_job(&*store, &s, ts(3)).await;
    finish(&*store, &short, Outcome::Succeeded).await;
    // Change times are the store's clock: `retained` falls after all five changes so far.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let retained = Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        store.prune_changes(retained, 100).await.unwrap(),
        3,
        "the finished job's changes go, the running job's stay"
    );
    let err = store.read_changes(&acme, 4, 10).await.unwrap_err();
    assert_eq!(err.reason(), Reason::CursorExpired);
    assert!(changes(&*store, "acme", 5).await.is_empty());
    let mark = |seq, state, last_seq| ChangeMark {
        seq,
        state,
        last_seq,
    };
    let earlier = vec![mark(1, "QUEUED", 0), mark(2, "RUNNING", 3)];
    // The job ends after its first changes passed the retention: its final change still finds
    // them.
    store
        .append(vec![write(
            &long,
            texts(4, 6),
            Some(finished(Outcome::Succeeded, None)),
        )])
        .await
        .unwrap();
    assert_eq!(
        changes(&*store, "acme", 5).await,
        vec![(6, long.id.clone(), "SUCCEEDED")]
    );
    assert_eq!(
        store.job_change_marks(&acme, &long.id, 6).await.unwrap(),
        earlier
    );
    assert_eq!(
        store.prune_changes(retained, 100).await.unwrap(),
        0,
        "its final change is retained, so are the others"
    );
    assert_eq!(
        store.job_change_marks(&acme, &long.id, 6).await.unwrap(),
        earlier
    );
    // Once the final change is old too they go; a batch that takes only the first of them
    // expires the cursors up to the last.
    let future = Timestamp(Timestamp::now().0 + 60_000_000);
    assert_eq!(store.prune_changes(future, 1).await.unwrap(), 1);
    let err = store.read_changes(&acme, 5, 10).await.unwrap_err();
    assert_eq!(err.reason(), Reason::CursorExpired);
    assert!(changes(&*store, "acme", 6).await.is_empty());
    assert_eq!(store.prune_changes(future, 10).await.unwrap(), 2);
    assert!(
        store
            .job_change_marks(&acme, &long.id, u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The webhook outbox follows the change sequence, and a job's final change is written in the
/// same transaction as its final state: a final append that fails leaves no change (nothing to
/// deliver about a job that is not final), and the append that retries it (the run's own retry,
/// or recovery settling the job) leaves the change the outbox then picks up. No webhook is lost
/// between the two, and none is sent for a state that was never stored.
pub async fn a_failed_final_append_holds_back_its_webhook_until_retried(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let j = new_job(&*store, &s, ts(1)).await;
    store
        .append(vec![write(&j, texts(1, 3), Some(running(ts(2))))])
        .await
        .unwrap();
    // The outbox has seen everything so far.
    assert_eq!(
        store.webhook_backlog(10).await.unwrap(),
        vec![(tenant("acme"), 0)]
    );
    assert!(
        store
            .enqueue_webhooks(&tenant("acme"), 0, 2, vec![])
            .await
            .unwrap()
    );
    // A final append that cannot be stored (its events do not continue the log).
    let failed = store
        .append(vec![write(
            &j,
            texts(9, 9),
            Some(finished(Outcome::Succeeded, None)),
        )])
        .await;
    assert!(failed.is_err());
    assert!(store.webhook_backlog(10).await.unwrap().is_empty());
    let now = store.get_job(&j.id).await.unwrap().unwrap();
    assert!(!now.state.is_finished(), "{:?}", now.state);
    // Retried: the final state and its change arrive together.
    store
        .append(vec![write(
            &j,
            texts(4, 4),
            Some(finished(Outcome::Succeeded, None)),
        )])
        .await
        .unwrap();
    assert_eq!(
        store.webhook_backlog(10).await.unwrap(),
        vec![(tenant("acme"), 2)]
    );
    assert_eq!(
        changes(&*store, "acme", 2).await,
        vec![(3, j.id.clone(), "SUCCEEDED")]
    );
}

/// Each agent keeps its own conversation in a session (#20): switching agents never hands one
/// agent another's id; a newer conversation replaces the agent's older one; none after the
/// session is deleted, and none is recorded for a session that is gone.
pub async fn conversations_per_agent(h: &dyn Harness) {
    let store = h.open().await;
    let s = new_session(&*store, session("acme", ts(0))).await;
    let other = new_session(&*store, session("acme", ts(0))).await;
    assert_eq!(
        store.agent_conversation(&s.id, "claude").await.unwrap(),
        None
    );
    store
        .set_agent_conversation(&s.id, "claude", "c-1", ts(1))
        .await
        .unwrap();
    store
        .set_agent_conversation(&s.id, "codex", "x-1", ts(2))
        .await
        .unwrap();
    let of = |agent: &'static str| {
        let (store, id) = (store.clone(), s.id.clone());
        async move { store.agent_conversation(&id, agent).await.unwrap() }
    };
    assert_eq!(of("claude").await.as_deref(), Some("c-1"));
    assert_eq!(of("codex").await.as_deref(), Some("x-1"));
    assert_eq!(of("gemini").await, None);
    assert_eq!(
        store.agent_conversation(&other.id, "claude").await.unwrap(),
        None,
        "another session's conversation leaked"
    );
    store
        .set_agent_conversation(&s.id, "claude", "c-2", ts(3))
        .await
        .unwrap();
    assert_eq!(of("claude").await.as_deref(), Some("c-2"));
    assert_eq!(of("codex").await.as_deref(), Some("x-1"));
    store.delete_session(&s.id).await.unwrap();
    assert_eq!(of("claude").await, None);
    store
        .set_agent_conversation(&s.id, "claude", "c-3", ts(4))
        .await
        .unwrap();
    assert_eq!(of("claude").await, None, "recorded for a deleted session");
}

/// Tenants' presets: CRUD, one name per tenant, tenants never see each other's.
pub async fn presets_per_tenant(h: &dyn Harness) {
    use crate::presets::{Preset, TenantPreset};
    let store = h.open().await;
    let acme = TenantId("acme".into());
    let other = TenantId("other".into());
    let preset = Preset {
        model: Some("sonnet".into()),
        prompt_template: Some("Review {{file}} ✓".into()),
        overridable: vec!["model".into()],
        mcp_servers: vec!["echo".into()],
        env: labels(&[("A", "1")]),
        max_cost_usd: Some(0.5),
        system_prompt: Some("You review.".into()),
        output_schema: Some(r#"{"type":"object"}"#.into()),
        stream_deltas: true,
        attachments: vec!["img/a.png".into()],
        deny_rules: vec!["Bash(rm *)".into()],
        permission_timeout_seconds: Some(30),
        ..Preset::default()
    };
    let row = |t: &TenantId, name: &str, at: i64| TenantPreset {
        tenant: t.clone(),
        name: name.into(),
        preset: preset.clone(),
        created: ts(at),
        updated: ts(at),
    };
    store.create_preset(&row(&acme, "review", 1)).await.unwrap();
    store.create_preset(&row(&acme, "alpha", 2)).await.unwrap();
    // The same name in another tenant is another preset.
    store
        .create_preset(&row(&other, "review", 3))
        .await
        .unwrap();
    let err = store
        .create_preset(&row(&acme, "review", 4))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::PresetExists);

    assert_eq!(
        store.get_preset(&acme, "review").await.unwrap(),
        Some(row(&acme, "review", 1))
    );
    assert_eq!(store.get_preset(&acme, "nope").await.unwrap(), None);
    let names: Vec<String> = store
        .list_presets(&acme)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["alpha", "review"]);

    let mut changed = row(&acme, "review", 1);
    changed.preset.model = None;
    changed.updated = ts(9);
    assert!(store.update_preset(&changed).await.unwrap());
    assert_eq!(
        store.get_preset(&acme, "review").await.unwrap(),
        Some(changed)
    );
    assert!(!store.update_preset(&row(&acme, "nope", 1)).await.unwrap());
    assert_eq!(
        store.get_preset(&other, "review").await.unwrap(),
        Some(row(&other, "review", 3)),
        "another tenant's preset of the same name is untouched"
    );

    assert!(store.delete_preset(&acme, "review").await.unwrap());
    assert!(!store.delete_preset(&acme, "review").await.unwrap());
    assert!(store.get_preset(&other, "review").await.unwrap().is_some());
}
