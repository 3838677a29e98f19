//! A store outage answers UNAVAILABLE with `STORE_UNAVAILABLE` and RetryInfo, not INTERNAL: the
//! server reaches the Postgres of `AGENTD_TEST_DATABASE_URL` through a TCP relay owned by the
//! test, which then cuts every connection and stops listening, as a database host going away
//! would. Once the relay listens again, the same calls work.
//!
//! Built without `AGENTD_TEST_DATABASE_URL` the test is reported as ignored (see build.rs).

mod common;

use common::pg::{database_url, psql};
use common::*;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic_types::StatusExt;

/// `url` with its `host:port` replaced by `addr` (user, database and options kept).
fn via(url: &str, addr: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, target) = match authority.rsplit_once('@') {
        Some((u, t)) => (format!("{u}@"), t),
        None => (String::new(), authority),
    };
    let target = if target.contains(':') {
        target.to_owned()
    } else {
        format!("{target}:5432")
    };
    (format!("{scheme}://{user}{addr}{tail}"), target)
}

/// Accepts on `listener` and relays each connection to `target` until aborted; aborting drops the
/// listener and every relayed socket.
fn relay(listener: TcpListener, target: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            conns.spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    })
}

/// agentd on a Postgres schema of its own, reached through the test's relay.
struct Outage {
    server: TestServer,
    /// The relay's address, and the Postgres it relays to.
    addr: String,
    target: String,
    up: Option<JoinHandle<()>>,
    schema: String,
}

impl Outage {
    async fn start(args: &[&str]) -> Outage {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr").to_string();
        let schema = format!("agentd_o_{}", uuid::Uuid::new_v4().simple());
        let (url, target) = via(&database_url(), &addr);
        let sep = if url.contains('?') { '&' } else { '?' };
        let store = format!("{url}{sep}options=-csearch_path%3D{schema}");
        let up = relay(listener, target.clone());
        let mut all = vec!["--store".to_owned(), store];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let server = TestServer::start_with(Options {
            args: all,
            ..Default::default()
        });
        Outage {
            server,
            addr,
            target,
            up: Some(up),
            schema,
        }
    }

    /// Cuts every connection and stops listening, as a database host going away would.
    async fn cut(&mut self) {
        if let Some(mut up) = self.up.take() {
            up.abort();
            let _ = (&mut up).await;
        }
    }

    /// Listens again at the same address.
    async fn restore(&mut self) {
        let listener = TcpListener::bind(&self.addr).await.expect("rebind relay");
        self.up = Some(relay(listener, self.target.clone()));
    }

    /// Stops agentd and drops its schema.
    fn end(self) {
        let schema = self.schema.clone();
        drop(self);
        psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn a_lost_postgres_answers_unavailable_with_retry_info_then_recovers() {
    let mut db = Outage::start(&[]).await;
    let server = &db.server;
    let mut c = server.clients(KEY_A).await;
    let session = c.create_session(&[]).await;

    db.cut().await;
    for (what, got) in [
        (
            "CreateSession",
            c.sessions
                .create_session(agentd::pb::CreateSessionRequest::default())
                .await
                .map(|_| ()),
        ),
        (
            "GetSession",
            c.sessions
                .get_session(agentd::pb::GetSessionRequest {
                    session_id: session.session_id.clone(),
                })
                .await
                .map(|_| ()),
        ),
    ] {
        let st = got.expect_err(what);
        assert_eq!(st.code(), Code::Unavailable, "{what}: {st:?}");
        assert_eq!(reason(&st), "STORE_UNAVAILABLE", "{what}: {st:?}");
        let retry = st.get_error_details().retry_info().map(|r| r.retry_delay);
        assert!(
            matches!(retry, Some(Some(d)) if d > Duration::ZERO),
            "{what}: RetryInfo with a delay, got {retry:?}"
        );
        // Neither the database's address nor its user reaches the caller.
        assert!(
            !st.message().contains(&db.target),
            "{what}: {}",
            st.message()
        );
    }

    db.restore().await;
    let mut back = false;
    for _ in 0..100 {
        let got = c
            .sessions
            .get_session(agentd::pb::GetSessionRequest {
                session_id: session.session_id.clone(),
            })
            .await;
        if got.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "the store never came back after the relay listened again"
    );
    db.end();
}

/// A job whose end could not be stored (the store was gone until agentd gave up retrying, about a
/// minute) is failed once the store is back: its own replica kept renewing its lease, so it stayed
/// RUNNING until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(agentd_pg_tests),
    ignore = "needs Postgres: set AGENTD_TEST_DATABASE_URL (scripts/test does)"
)]
async fn a_job_that_ended_during_an_outage_is_failed_once_the_store_is_back() {
    let mut db = Outage::start(&["--lease-seconds", "3"]).await;
    let server = &db.server;
    let mut c = server.clients(KEY_A).await;
    let session = c.create_session(&[]).await.session_id;
    let job = c.submit(&session, "bash sleep 2").await;
    c.wait_state(
        &job.job_id,
        agentd::pb::JobState::Running,
        Duration::from_secs(30),
    )
    .await;

    db.cut().await;
    // The agent ends meanwhile; agentd retries storing its end for about a minute, then gives up.
    tokio::time::sleep(Duration::from_secs(70)).await;
    db.restore().await;
    let mut last = None;
    for _ in 0..150 {
        if let Some(got) = c
            .jobs
            .get_job(agentd::pb::GetJobRequest {
                job_id: job.job_id.clone(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().job)
        {
            if got.state == agentd::pb::JobState::Failed as i32 {
                assert!(
                    got.error_message.contains("store was unavailable"),
                    "{got:?}"
                );
                db.end();
                return;
            }
            last = Some(got);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the job was not settled within 15 s of the store's return: {last:?}");
}
