//! WatchFiles against the real server and a job of the stand-in agent, jailed, writing, renaming
//! and deleting files: the stream sees each change once, coalesced, in order, resumes from a
//! sequence number, filters by path, answers CURSOR_EXPIRED for a cursor it no longer holds, and
//! ends when the session is deleted; a rewind re-arms it on the restored workspace.

mod common;

use agentd::pb;
use common::{KEY_A, KEY_B, TestServer, reason};
use std::time::Duration;
use tonic::Code;
use tonic::codec::Streaming;

type Events = Streaming<pb::WatchFilesResponse>;

async fn watch(
    c: &mut common::Clients,
    session: &str,
    paths: &[&str],
    after_seq: u64,
) -> Result<Events, tonic::Status> {
    Ok(c.files
        .watch_files(pb::WatchFilesRequest {
            session_id: session.into(),
            paths: paths.iter().map(|p| (*p).into()).collect(),
            after_seq,
        })
        .await?
        .into_inner())
}

fn label(e: &pb::FileEvent) -> String {
    let kind = match pb::FileEventKind::try_from(e.kind).unwrap() {
        pb::FileEventKind::Created => "created",
        pb::FileEventKind::Modified => "modified",
        pb::FileEventKind::Deleted => "deleted",
        pb::FileEventKind::Renamed => "renamed",
        pb::FileEventKind::Overflow if e.from_path == agentd::workspace::RESET_MARKER => {
            return "reset".into();
        }
        pb::FileEventKind::Overflow => "overflow",
        pb::FileEventKind::Unspecified => "?",
    };
    if e.from_path.is_empty() {
        format!("{kind} {}", e.path)
    } else {
        format!("{kind} {} -> {}", e.from_path, e.path)
    }
}

/// Reads events until one is labelled `last` (or the time runs out).
async fn until(events: &mut Events, last: &str) -> Vec<pb::FileEvent> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Ok(Some(msg))) = tokio::time::timeout_at(deadline, events.message()).await {
        let e = msg.event.expect("event");
        let done = label(&e) == last;
        got.push(e);
        if done {
            break;
        }
    }
    got
}

const JOB: &str = "write a.txt one ; sleep 0.3 ; write dir/b.txt two ; sleep 0.3 ; \
                   bash mv a.txt c.txt ; sleep 0.3 ; bash rm dir/b.txt";

#[tokio::test]
async fn a_jobs_writes_arrive_in_order_and_resume_from_a_cursor() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let s = a.create_session(&[("seed.txt", b"seed")]).await;
    let mut all = watch(&mut a, &s.session_id, &[], 0).await.unwrap();
    let mut only_dir = watch(&mut a, &s.session_id, &["dir"], 0).await.unwrap();

    let job = a.submit(&s.session_id, JOB).await;
    let got = until(&mut all, "deleted dir/b.txt").await;
    let labels: Vec<String> = got.iter().map(label).collect();
    let want = [
        "created a.txt",
        "created dir",
        "created dir/b.txt",
        "renamed a.txt -> c.txt",
        "deleted dir/b.txt",
    ];
    assert_eq!(labels, want, "{got:#?}");
    let done = a.wait(&job.job_id).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);

    // Kinds and sizes are read after the change, sequence numbers increase by one.
    assert_eq!(got[0].r#type, pb::FileType::Regular as i32);
    assert_eq!(got[0].size, 3);
    assert_eq!(got[1].r#type, pb::FileType::Directory as i32);
    assert_eq!(got[3].size, 3);
    assert_eq!(got[4].r#type, pb::FileType::Unspecified as i32);
    for pair in got.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "{got:#?}");
    }

    let dir_labels: Vec<String> = until(&mut only_dir, "deleted dir/b.txt")
        .await
        .iter()
        .map(label)
        .collect();
    assert_eq!(
        dir_labels,
        ["created dir", "created dir/b.txt", "deleted dir/b.txt"]
    );

    // Resuming after the second event replays exactly the rest.
    let mut resumed = watch(&mut a, &s.session_id, &[], got[1].seq).await.unwrap();
    let again: Vec<String> = until(&mut resumed, "deleted dir/b.txt")
        .await
        .iter()
        .map(label)
        .collect();
    assert_eq!(again, want[2..]);

    // A cursor the watch never issued, or from long before it started, is expired.
    for cursor in [1, got[4].seq + 1_000] {
        let err = match watch(&mut a, &s.session_id, &[], cursor).await {
            Err(e) => e,
            Ok(mut stream) => stream.message().await.unwrap_err(),
        };
        assert_eq!(err.code(), Code::OutOfRange, "{cursor}: {err:?}");
        assert_eq!(reason(&err), "CURSOR_EXPIRED");
    }

    // Deleting the session ends the streams.
    a.sessions
        .delete_session(pb::DeleteSessionRequest {
            session_id: s.session_id.clone(),
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match all.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends when its session is deleted");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn other_tenants_and_bad_paths_are_refused() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let s = a.create_session(&[]).await;
    let err = watch(&mut b, &s.session_id, &[], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason(&err), "SESSION_NOT_FOUND");
    let err = watch(&mut a, &s.session_id, &["../x"], 0)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INVALID_PATH");
    let err = watch(&mut a, "ses_missing", &[], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// A stream open while its session is rewound follows the restored directory: one reset marker
/// (OVERFLOW, from_path RESET_MARKER), nothing of the replaced tree's removal, then the next
/// job's writes in the new tree.
#[tokio::test]
async fn history3_a_rewind_resets_the_stream_and_it_watches_the_restored_workspace() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let s = a.create_session(&[("seed.txt", b"seed")]).await;
    let sid = s.session_id.clone();
    let j1 = a
        .submit(&sid, "write a.txt one ; write dir/b.txt two")
        .await;
    let j1 = a.wait(&j1.job_id).await;
    assert_eq!(j1.state, pb::JobState::Succeeded as i32);
    let mut all = watch(&mut a, &sid, &[], 0).await.unwrap();
    a.sessions
        .rewind_session(pb::RewindSessionRequest {
            session_id: sid.clone(),
            job_id: j1.job_id.clone(),
            point: pb::SnapshotPoint::Before as i32,
        })
        .await
        .unwrap();
    let reset = until(&mut all, "reset").await;
    let labels: Vec<String> = reset.iter().map(label).collect();
    assert_eq!(labels, ["reset"], "{reset:#?}");

    let j2 = a
        .submit(&sid, "write new.txt fresh ; bash rm seed.txt")
        .await;
    let got = until(&mut all, "deleted seed.txt").await;
    let labels: Vec<String> = got.iter().map(label).collect();
    assert_eq!(labels, ["created new.txt", "deleted seed.txt"], "{got:#?}");
    assert_eq!(got[0].seq, reset[0].seq + 1);
    assert_eq!(
        a.wait(&j2.job_id).await.state,
        pb::JobState::Succeeded as i32
    );

    // A stream opened after the rewind resumes across the marker.
    let mut resumed = watch(&mut a, &sid, &[], reset[0].seq - 1).await.unwrap();
    let again: Vec<String> = until(&mut resumed, "deleted seed.txt")
        .await
        .iter()
        .map(label)
        .collect();
    assert_eq!(again, ["reset", "created new.txt", "deleted seed.txt"]);
}

/// Attack: a job links its workspace to the host's session root (every tenant's workspaces), then
/// its tenant watches the session. The watch must not follow the link (agentd's own view of the
/// host is not the jail's): nothing another tenant's job changes reaches the stream, nor any
/// path below the link.
#[tokio::test]
async fn a_link_to_the_host_in_the_workspace_is_not_watched_through() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let victim = a.create_session(&[("secret.txt", b"one")]).await;
    let own = b.create_session(&[]).await;
    let root = server.data_dir.join("sessions");
    let linked = b
        .submit(
            &own.session_id,
            &format!("bash ln -s {} hostlink && ln -s / slash", root.display()),
        )
        .await;
    assert_eq!(
        b.wait(&linked.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    let mut stream = watch(&mut b, &own.session_id, &[], 0).await.unwrap();
    let touched = a
        .submit(
            &victim.session_id,
            "bash echo two >> secret.txt && mkdir fresh && echo x > fresh/f.txt",
        )
        .await;
    assert_eq!(
        a.wait(&touched.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    let done = b.submit(&own.session_id, "write done.txt yes").await;
    let got = until(&mut stream, "created done.txt").await;
    assert_eq!(
        b.wait(&done.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    let labels: Vec<String> = got.iter().map(label).collect();
    assert_eq!(
        labels.last().map(String::as_str),
        Some("created done.txt"),
        "{labels:?}"
    );
    for e in &got {
        for p in [&e.path, &e.from_path] {
            assert!(
                !p.starts_with("hostlink/") && !p.starts_with("slash/"),
                "the watch followed a link out of the workspace: {labels:?}"
            );
        }
    }
}

/// A workspace that grows past the directories a watch follows ends its streams with a stable
/// reason (not a watch that silently misses changes), is refused while it stays that large, and
/// is watched again once it shrank. One tenant's tree cannot take the host's inotify watches.
#[tokio::test]
async fn a_workspace_past_the_watched_directories_bound_ends_the_stream_with_a_reason() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let s = a.create_session(&[]).await;
    let mut stream = watch(&mut a, &s.session_id, &[], 0).await.unwrap();
    let grow = a
        .submit(
            &s.session_id,
            "bash mkdir -p many && cd many && seq 1 20000 | sed s/^/d/ | xargs mkdir",
        )
        .await;
    assert_eq!(
        a.wait(&grow.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    let err = ended.expect_err("it ends with an error");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(reason(&err), "WATCH_LIMIT_REACHED");
    let err = watch(&mut a, &s.session_id, &[], 0).await.unwrap_err();
    assert_eq!(reason(&err), "WATCH_LIMIT_REACHED", "{err:?}");
    let shrink = a.submit(&s.session_id, "bash rm -rf many").await;
    assert_eq!(
        a.wait(&shrink.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    let mut again = watch(&mut a, &s.session_id, &[], 0).await.unwrap();
    let last = a.submit(&s.session_id, "write back.txt yes").await;
    let got = until(&mut again, "created back.txt").await;
    assert_eq!(got.last().map(label).as_deref(), Some("created back.txt"));
    assert_eq!(
        a.wait(&last.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
}

/// One tenant cannot take every watch the host allows: past its bound of watched sessions its
/// next WatchFiles is refused with a stable reason, and another tenant still watches.
#[tokio::test]
async fn a_tenant_watches_a_bounded_number_of_sessions_and_others_still_watch() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let mut held = Vec::new();
    for _ in 0..agentd::workspace::MAX_WATCHED_PER_TENANT {
        let s = a.create_session(&[]).await;
        held.push(
            watch(&mut a, &s.session_id, &[], 0)
                .await
                .expect("within the bound"),
        );
    }
    let one_more = a.create_session(&[]).await;
    let err = watch(&mut a, &one_more.session_id, &[], 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(reason(&err), "WATCH_LIMIT_REACHED");
    let theirs = b.create_session(&[]).await;
    let mut stream = watch(&mut b, &theirs.session_id, &[], 0)
        .await
        .expect("B still watches");
    let job = b.submit(&theirs.session_id, "write b.txt yes").await;
    let got = until(&mut stream, "created b.txt").await;
    assert_eq!(got.last().map(label).as_deref(), Some("created b.txt"));
    assert_eq!(
        b.wait(&job.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    drop(held);
}
