//! RewindSession, ForkSession and archives of a job's snapshot over the real server (issue #18),
//! with the stand-in Claude (tests/fixtures/fake-claude), which keeps its transcript under HOME
//! like the real CLI and answers `turn N: …` where N counts the user prompts of the transcript it
//! resumed: so a reply says which conversation the job continued.

mod common;

use agentd::pb;
use common::*;
use std::collections::BTreeMap;
use std::io::Read;
use tonic::Code;

async fn run(c: &mut Clients, session: &str, prompt: &str) -> pb::Job {
    let job = c.submit(session, prompt).await;
    let job = c.wait(&job.job_id).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    job
}

async fn rewind(
    c: &mut Clients,
    session: &str,
    job: &str,
    point: pb::SnapshotPoint,
) -> Result<pb::RewindSessionResponse, tonic::Status> {
    c.sessions
        .rewind_session(pb::RewindSessionRequest {
            session_id: session.into(),
            job_id: job.into(),
            point: point as i32,
        })
        .await
        .map(|r| r.into_inner())
}

async fn fork(
    c: &mut Clients,
    job: &str,
    point: pb::SnapshotPoint,
) -> Result<pb::ForkSessionResponse, tonic::Status> {
    c.sessions
        .fork_session(pb::ForkSessionRequest {
            job_id: job.into(),
            point: point as i32,
            labels: [("from".to_string(), "fork".to_string())].into(),
            ttl_seconds: 0,
        })
        .await
        .map(|r| r.into_inner())
}

async fn jobs_rewound(c: &mut Clients, session: &str) -> BTreeMap<String, bool> {
    c.jobs
        .list_jobs(pb::ListJobsRequest {
            session_id: session.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| (j.job_id, j.rewound_past))
        .collect()
}

fn resumed(events: &[pb::JobEvent]) -> String {
    match &events[0].kind {
        Some(pb::job_event::Kind::Started(s)) => s.resumed_conversation_id.clone(),
        k => panic!("first event is not started: {k:?}"),
    }
}

async fn file(c: &mut Clients, session: &str, path: &str) -> Option<String> {
    c.download(session, path)
        .await
        .ok()
        .map(|b| String::from_utf8(b).unwrap())
}

/// Three jobs: a.txt edited by each, b.txt added by the first and renamed by the second, c.txt
/// deleted by the third.
async fn three_jobs(c: &mut Clients) -> (String, [pb::Job; 3]) {
    let s = c
        .create_session(&[("a.txt", b"zero\n"), ("c.txt", b"c\n")])
        .await;
    let sid = s.session_id;
    let j1 = run(c, &sid, "bash echo one > a.txt && echo b > b.txt ; first").await;
    let j2 = run(
        c,
        &sid,
        "bash echo two > a.txt && mv b.txt moved.txt ; second",
    )
    .await;
    let j3 = run(c, &sid, "bash echo three > a.txt && rm c.txt ; third").await;
    assert_eq!(j3.result, "turn 3: third");
    (sid, [j1, j2, j3])
}

#[tokio::test]
async fn rewind_restores_the_bytes_and_the_conversation_and_marks_later_jobs() {
    let mut server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let (sid, [j1, j2, j3]) = three_jobs(&mut c).await;
    // Every Claude job ends with its own conversation (resumed with --fork-session).
    assert_ne!(j1.conversation_id, j2.conversation_id);
    assert_ne!(j2.conversation_id, j3.conversation_id);

    let r = rewind(&mut c, &sid, &j2.job_id, pb::SnapshotPoint::Before)
        .await
        .unwrap();
    assert_eq!(r.rewound_job_ids, [j2.job_id.clone(), j3.job_id.clone()]);
    let session = r.session.unwrap();
    assert_eq!(session.conversation_id, j1.conversation_id);
    // The workspace is byte for byte what job 1 left.
    assert_eq!(file(&mut c, &sid, "a.txt").await.as_deref(), Some("one\n"));
    assert_eq!(file(&mut c, &sid, "b.txt").await.as_deref(), Some("b\n"));
    assert_eq!(file(&mut c, &sid, "c.txt").await.as_deref(), Some("c\n"));
    assert_eq!(file(&mut c, &sid, "moved.txt").await, None);
    let marks = jobs_rewound(&mut c, &sid).await;
    assert_eq!(marks.len(), 3, "rewound jobs stay listed");
    assert!(!marks[&j1.job_id] && marks[&j2.job_id] && marks[&j3.job_id]);
    assert!(c.get_job(&j2.job_id).await.rewound_past);

    // The next job continues job 1's conversation: its second prompt, not its fourth.
    let j4 = c.submit(&sid, "fourth").await;
    let events = c.events(&j4.job_id, 0).await;
    assert_eq!(resumed(&events), j1.conversation_id);
    let j4 = c.get_job(&j4.job_id).await;
    assert_eq!(j4.result, "turn 2: fourth");
    assert!(!j4.rewound_past);

    // After a restart the marks, the snapshots and the conversations are all still there.
    server.restart();
    let mut c = server.clients(KEY_A).await;
    assert!(c.get_job(&j3.job_id).await.rewound_past);
    let r = rewind(&mut c, &sid, &j3.job_id, pb::SnapshotPoint::After)
        .await
        .unwrap();
    assert_eq!(r.rewound_job_ids, std::slice::from_ref(&j4.job_id));
    assert_eq!(
        file(&mut c, &sid, "a.txt").await.as_deref(),
        Some("three\n")
    );
    assert_eq!(file(&mut c, &sid, "c.txt").await, None);
    assert!(!c.get_job(&j3.job_id).await.rewound_past);
    let j5 = run(&mut c, &sid, "fifth").await;
    assert_eq!(j5.result, "turn 4: fifth");
}

#[tokio::test]
async fn rewind_is_refused_while_a_job_runs_and_for_unfinished_jobs() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[("a.txt", b"a\n")]).await;
    let sid = s.session_id;
    let j1 = run(&mut c, &sid, "bash echo one > a.txt").await;
    let long = c.submit(&sid, "bash sleep 60").await;
    let err = rewind(&mut c, &sid, &j1.job_id, pb::SnapshotPoint::Before)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "SESSION_BUSY");
    let err = fork(&mut c, &long.job_id, pb::SnapshotPoint::Before)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "JOB_NOT_FINISHED");
    // Nothing was touched.
    assert_eq!(file(&mut c, &sid, "a.txt").await.as_deref(), Some("one\n"));
    c.jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: long.job_id.clone(),
        })
        .await
        .unwrap();
    rewind(&mut c, &sid, &j1.job_id, pb::SnapshotPoint::Before)
        .await
        .unwrap();
    assert_eq!(file(&mut c, &sid, "a.txt").await.as_deref(), Some("a\n"));
}

#[tokio::test]
async fn a_fork_diverges_while_the_parent_is_untouched_and_outlives_it() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let (sid, [j1, _j2, j3]) = three_jobs(&mut c).await;
    let f = fork(&mut c, &j1.job_id, pb::SnapshotPoint::After)
        .await
        .unwrap();
    assert_eq!(f.parent_session_id, sid);
    let child = f.session.unwrap();
    assert_ne!(child.session_id, sid);
    assert_eq!(child.labels["from"], "fork");
    assert_eq!(child.conversation_id, j1.conversation_id);
    let cid = child.session_id;
    assert_eq!(file(&mut c, &cid, "a.txt").await.as_deref(), Some("one\n"));
    assert_eq!(file(&mut c, &cid, "b.txt").await.as_deref(), Some("b\n"));

    // The fork's next job continues job 1's conversation in the fork's own HOME.
    let k1 = run(&mut c, &cid, "bash echo forked > a.txt ; in the fork").await;
    assert_eq!(k1.result, "turn 2: in the fork");
    assert_eq!(
        file(&mut c, &cid, "a.txt").await.as_deref(),
        Some("forked\n")
    );
    // The parent is as its third job left it, and continues its own conversation.
    assert_eq!(
        file(&mut c, &sid, "a.txt").await.as_deref(),
        Some("three\n")
    );
    assert_eq!(jobs_rewound(&mut c, &sid).await.len(), 3);
    let p4 = run(&mut c, &sid, "parent").await;
    assert_eq!(p4.result, "turn 4: parent");
    assert_ne!(j3.conversation_id, k1.conversation_id);

    // Deleting the parent leaves the fork whole: its files and its conversation.
    c.sessions
        .delete_session(pb::DeleteSessionRequest {
            session_id: sid.clone(),
        })
        .await
        .unwrap();
    let k2 = run(&mut c, &cid, "still here").await;
    assert_eq!(k2.result, "turn 3: still here");
    assert_eq!(file(&mut c, &cid, "b.txt").await.as_deref(), Some("b\n"));
    // A fork of the fork, from before its first job: the parent's job-1 state again.
    let g = fork(&mut c, &k1.job_id, pb::SnapshotPoint::Before)
        .await
        .unwrap();
    let gid = g.session.unwrap().session_id;
    assert_eq!(file(&mut c, &gid, "a.txt").await.as_deref(), Some("one\n"));
}

#[tokio::test]
async fn an_archive_of_a_job_is_its_snapshot() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let (sid, [j1, _j2, j3]) = three_jobs(&mut c).await;
    let tar = |bytes: Vec<u8>| -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut a = tar::Archive::new(&bytes[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            out.insert(path, s);
        }
        out
    };
    let mut get = async |job: &str, paths: &[&str]| -> Result<Vec<u8>, tonic::Status> {
        let mut s = c
            .files
            .download_archive(pb::DownloadArchiveRequest {
                session_id: sid.clone(),
                paths: paths.iter().map(|p| p.to_string()).collect(),
                format: pb::ArchiveFormat::Tar as i32,
                job_id: job.into(),
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.message().await? {
            out.extend_from_slice(&m.chunk);
        }
        Ok(out)
    };
    let want: BTreeMap<String, String> = [("a.txt", "one\n"), ("b.txt", "b\n"), ("c.txt", "c\n")]
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
    assert_eq!(tar(get(&j1.job_id, &[]).await.unwrap()), want);
    let want3: BTreeMap<String, String> = [("a.txt", "three\n"), ("moved.txt", "b\n")]
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
    assert_eq!(tar(get(&j3.job_id, &[]).await.unwrap()), want3);
    let only: Vec<String> = tar(get(&j1.job_id, &["b.txt"]).await.unwrap())
        .into_keys()
        .collect();
    assert_eq!(only, ["b.txt"]);
    let err = get(&j3.job_id, &["b.txt"]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// SubmitJob raced against RewindSession: whichever gets the session first, no job ever runs on a
/// half-rewound workspace. A rewind that wins holds the session until it is recorded (submits
/// meanwhile answer UNAVAILABLE, SESSION_BUSY, and a job accepted after it sees the whole rewound
/// tree); a submit that wins makes the rewind SESSION_BUSY and its job sees the tree untouched.
/// Each accepted job lists `d` twice, 0.3 s apart, from its working directory: a swap under it
/// would show in the two counts (or lose counts.txt with the replaced directory).
#[tokio::test]
async fn history3_submit_raced_against_rewind_never_sees_a_half_rewound_workspace() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[("a.txt", b"a\n")]).await;
    let sid = s.session_id;
    let big = run(
        &mut c,
        &sid,
        "bash mkdir d && for i in $(seq 1500); do echo $i > d/f$i; done ; big",
    )
    .await;
    let small = run(&mut c, &sid, "bash rm -r d ; small").await;
    const PROBE: &str = "bash (ls d 2>/dev/null | wc -l; sleep 0.3; ls d 2>/dev/null | wc -l) \
                         > counts.txt ; probe";
    let (mut held, mut rewound, mut refused) = (0, 0, 0);
    let mut files_now = 0; // `small` is the newest job: no `d`
    for round in 0..8u64 {
        let (target, files) = if round % 2 == 0 {
            (&big.job_id, 1500)
        } else {
            (&small.job_id, 0)
        };
        let mut rc = c.clone();
        let (rsid, rjob) = (sid.clone(), target.clone());
        let rewinder =
            tokio::spawn(
                async move { rewind(&mut rc, &rsid, &rjob, pb::SnapshotPoint::After).await },
            );
        tokio::time::sleep(std::time::Duration::from_millis(round * 4)).await;
        let mut accepted = None;
        // Bounded by time, not tries: a rewind of 1,500 files takes seconds on a loaded machine.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < until {
            let r = c
                .jobs
                .submit_job(pb::SubmitJobRequest {
                    session_id: sid.clone(),
                    prompt: PROBE.into(),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(r) => {
                    accepted = r.into_inner().job;
                    break;
                }
                Err(e) => {
                    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                    assert_eq!(reason(&e), "SESSION_BUSY", "{e:?}");
                    held += 1;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let accepted = accepted.expect("a submit gets in once the rewind is done");
        let outcome = rewinder.await.unwrap();
        match outcome {
            Ok(_) => {
                rewound += 1;
                files_now = files;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                assert_eq!(reason(&e), "SESSION_BUSY", "{e:?}");
                refused += 1;
            }
        }
        let job = c.wait(&accepted.job_id).await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
        let counts = file(&mut c, &sid, "counts.txt")
            .await
            .unwrap_or_else(|| panic!("round {round}: the probe's output was lost"));
        let want = format!("{files_now}\n{files_now}\n");
        assert_eq!(counts, want, "round {round}: the probe saw another tree");
    }
    eprintln!("rewinds {rewound}, refused {refused}, submits held off {held}");
    assert!(rewound > 0, "no rewind got in");
    assert!(held > 0, "no submit met a rewind's hold");
}

/// A job may leave paths up to the API's 4,096 bytes: its snapshot is forked and rewound to
/// whole, though the restore's own directory makes every such path longer than the kernel's
/// PATH_MAX.
#[tokio::test]
async fn a_snapshot_with_paths_near_the_limit_forks_and_rewinds() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[("a.txt", b"a\n")]).await.session_id;
    // 20 directories of 200 bytes and a file: a path of 4,019 + 1 + 60 = 4,080 bytes.
    let deep = format!("{}/{}", vec!["d".repeat(200); 20].join("/"), "f".repeat(60));
    assert_eq!(deep.len(), 4_080);
    let job = run(
        &mut c,
        &s,
        &format!(
            "bash python3 -c \"import os; p='{deep}'; os.makedirs(os.path.dirname(p)); \
             open(p, 'w').write('deep')\""
        ),
    )
    .await;
    assert_eq!(file(&mut c, &s, &deep).await.as_deref(), Some("deep"));
    let forked = fork(&mut c, &job.job_id, pb::SnapshotPoint::After)
        .await
        .expect("ForkSession of a snapshot with a 4,080-byte path")
        .session
        .expect("session")
        .session_id;
    assert_eq!(file(&mut c, &forked, &deep).await.as_deref(), Some("deep"));
    rewind(&mut c, &s, &job.job_id, pb::SnapshotPoint::After)
        .await
        .expect("RewindSession to a snapshot with a 4,080-byte path");
    assert_eq!(file(&mut c, &s, &deep).await.as_deref(), Some("deep"));
}
