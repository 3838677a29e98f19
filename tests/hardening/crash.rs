//! Crashes: kill -9 mid-job, repeatedly, with and without PID namespaces, and the data dir lock.

use super::*;
use crate::common::*;
use agentd::pb;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// 2. Processes: kill -9 mid-job, 20 times in a row on the same data dir.

/// Everything a client was told about before a crash.
pub(crate) struct Acked {
    session: String,
    files: Vec<(String, Vec<u8>)>,
    done: pb::Job,
    done_events: Vec<pb::JobEvent>,
    interrupted: String,
    /// Events of the interrupted job the client had received before the crash.
    interrupted_seen: Vec<pb::JobEvent>,
    /// After the first restart: the interrupted job's full log, which must never change again.
    interrupted_final: Option<(pb::Job, Vec<pb::JobEvent>)>,
    sleeper: String,
}

pub(crate) async fn upload(
    c: &mut Clients,
    session: &str,
    files: &[(&str, &[u8])],
) -> Result<pb::UploadFilesResponse, tonic::Status> {
    let mut msgs = Vec::new();
    for (path, content) in files {
        msgs.push(pb::UploadFilesRequest {
            session_id: session.into(),
            part: Some(pb::upload_files_request::Part::Header(
                pb::UploadFileHeader {
                    path: (*path).into(),
                    ..Default::default()
                },
            )),
        });
        for chunk in content.chunks(1 << 20) {
            msgs.push(pb::UploadFilesRequest {
                session_id: String::new(),
                part: Some(pb::upload_files_request::Part::Chunk(chunk.to_vec().into())),
            });
        }
    }
    c.files
        .upload_files(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// Reads a job's stream until an event satisfies `until`; returns what was read.
pub(crate) async fn read_until(
    c: &mut Clients,
    job: &str,
    until: impl Fn(&pb::JobEvent) -> bool,
) -> Vec<pb::JobEvent> {
    let mut st = c
        .jobs
        .stream_job_events(stream_req(job, 0))
        .await
        .expect("stream")
        .into_inner();
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), st.message())
            .await
            .expect("event within 20 s")
            .expect("stream message")
            .expect("stream ended early");
        for e in m.events {
            let stop = until(&e);
            out.push(e);
            if stop {
                return out;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn kill9_twenty_times_loses_nothing_acknowledged_and_leaves_no_process() {
    // Jobs end with agentd here; under `keep` they are adopted (tests/adopt.rs).
    let mut server = TestServer::start_with(Options::default().cancelling());
    let sessions_dir = server.data_dir.join("sessions");
    let mut acked: Vec<Acked> = Vec::new();
    for round in 0..20u32 {
        let round_start = Instant::now();
        let mut c = server.clients(KEY_A).await;
        let inline = format!("inline {round}").into_bytes();
        let s = c.create_session(&[("in.txt", &inline)]).await;
        let sid = s.session_id.clone();
        let uploaded = format!("uploaded {round}").into_bytes();
        upload(&mut c, &sid, &[("up/u.txt", &uploaded)])
            .await
            .expect("upload");
        let done = c
            .submit(&sid, &format!("write out.txt result {round}"))
            .await;
        let done_events = c.events(&done.job_id, 0).await;
        let done = c.get_job(&done.job_id).await;
        assert_eq!(done.state, pb::JobState::Succeeded as i32);
        let sleeper = (6100 + round).to_string();
        let running = c
            .submit(&sid, &format!("grandchild {sleeper} ; sleep 60"))
            .await;
        let seen = read_until(&mut c, &running.job_id, |e| {
            texts(std::slice::from_ref(e))
                .iter()
                .any(|t| t.starts_with("grandchild pid"))
        })
        .await;
        assert!(
            eventually(Duration::from_secs(10), || !sleepers(&sleeper).is_empty()).await,
            "round {round}: grandchild never started"
        );
        acked.push(Acked {
            session: sid.clone(),
            files: vec![
                ("in.txt".into(), inline),
                ("up/u.txt".into(), uploaded),
                ("out.txt".into(), format!("result {round}").into_bytes()),
            ],
            done,
            done_events,
            interrupted: running.job_id.clone(),
            interrupted_seen: seen,
            interrupted_final: None,
            sleeper,
        });

        let setup_time = round_start.elapsed();
        server.restart();
        let restart_time = round_start.elapsed();

        // No agent, supervisor or grandchild from before the crash is alive.
        let stale = |acked: &[Acked]| {
            let mut v: Vec<String> = acked
                .iter()
                .flat_map(|a| sleepers(&a.sleeper))
                .map(|p| format!("sleeper pid {p}"))
                .collect();
            v.extend(
                procs_under(&sessions_dir)
                    .into_iter()
                    .map(|(p, cmd)| format!("pid {p} {cmd:?}")),
            );
            v
        };
        assert!(
            eventually(Duration::from_secs(5), || stale(&acked).is_empty()).await,
            "round {round}: processes outlived kill -9 of the server: {:?}",
            stale(&acked)
        );

        let swept_time = round_start.elapsed();
        let mut c = server.clients(KEY_A).await;
        let n = acked.len();
        for (i, a) in acked.iter_mut().enumerate() {
            let what = format!("round {round}, session of round {i}");
            c.sessions
                .get_session(pb::GetSessionRequest {
                    session_id: a.session.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("{what}: session lost: {e:?}"));
            assert_eq!(c.get_job(&a.done.job_id).await, a.done, "{what}: job");
            // Contents and whole event logs of every earlier round are re-read every fifth
            // round (streams and downloads are the slow calls); the newest round's always.
            if round % 5 == 4 || i + 1 == n {
                for (path, content) in &a.files {
                    let got = c
                        .download(&a.session, path)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {path}: {e:?}"));
                    assert_eq!(&got, content, "{what}: {path}");
                }
                assert_eq!(
                    c.events(&a.done.job_id, 0).await,
                    a.done_events,
                    "{what}: events"
                );
            }
            let job = c.get_job(&a.interrupted).await;
            match &a.interrupted_final {
                Some((fin_job, fin_events)) => {
                    assert_eq!(&job, fin_job, "{what}: interrupted job changed");
                    if round % 5 == 4 {
                        let events = c.events(&a.interrupted, 0).await;
                        assert_eq!(
                            &events, fin_events,
                            "{what}: interrupted job's events changed"
                        );
                    }
                }
                None => {
                    let events = c.events(&a.interrupted, 0).await;
                    assert_eq!(job.state, pb::JobState::Failed as i32, "{what}");
                    assert!(
                        job.error_message.contains("restarted"),
                        "{what}: {}",
                        job.error_message
                    );
                    assert!(
                        events.starts_with(&a.interrupted_seen),
                        "{what}: acknowledged events of the interrupted job were lost"
                    );
                    assert_gapless(&events);
                    let fin = finished(&events);
                    assert_eq!(fin.state, pb::JobState::Failed as i32, "{what}");
                    assert_eq!(
                        events.iter().filter(|e| kind(e) == "finished").count(),
                        1,
                        "{what}"
                    );
                    a.interrupted_final = Some((job, events));
                }
            }
        }
        let listed = c
            .sessions
            .list_sessions(pb::ListSessionsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .sessions;
        assert_eq!(listed.len(), acked.len(), "round {round}: session count");
        eprintln!(
            "kill9 round {round}: setup {setup_time:?}, restarted {restart_time:?}, swept \
             {swept_time:?}, verified {:?}",
            round_start.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. The start-up sweep and the data dir lock, in the containment fallback (no PID namespaces),
//    where a killed server's supervisors cannot take setsid'd descendants with them.

/// Tokens of the run records in a data dir.
pub(crate) fn run_tokens(server: &TestServer) -> BTreeSet<String> {
    std::fs::read_dir(server.data_dir.join("run"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".run").map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose environment carries one of `tokens` as `AGENTD_RUN_TOKEN`.
pub(crate) fn marked(tokens: &BTreeSet<String>) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let carries = environ.split(|b| *b == 0).any(|v| {
            v.strip_prefix(b"AGENTD_RUN_TOKEN=")
                .is_some_and(|t| tokens.contains(&*String::from_utf8_lossy(t)))
        });
        if carries {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn kill9_in_the_fallback_containment_leaves_nothing_after_restart() {
    let mut server = TestServer::start_with(Options {
        // The fallback is the containment of unjailed jobs on hosts without namespaces.
        env: vec![
            ("AGENTD_CONTAINMENT".into(), "subreaper".into()),
            ("AGENTD_NO_SANDBOX".into(), "1".into()),
            // The sweep of what a killed agentd left, not adoption (tests/adopt.rs).
            cancel_on_shutdown(),
        ],
        ..Default::default()
    });
    let sessions_dir = server.data_dir.join("sessions");
    for round in 0..3u32 {
        let mut c = server.clients(KEY_A).await;
        let s = c.create_session(&[]).await;
        let sleeper = (7310 + round).to_string();
        let job = c
            .submit(&s.session_id, &format!("grandchild {sleeper} ; sleep 60"))
            .await;
        assert!(
            eventually(Duration::from_secs(10), || !sleepers(&sleeper).is_empty()).await,
            "round {round}: grandchild never started"
        );
        // The running job's record and the standby supervisor's (started for the next job).
        assert!(
            eventually(Duration::from_secs(5), || run_tokens(&server).len() == 2).await,
            "round {round}: records: {:?}",
            run_tokens(&server)
        );
        let tokens = run_tokens(&server);
        let before = marked(&tokens);
        assert!(
            before.len() >= 3,
            "round {round}: supervisor, agent and grandchild carry the marker: {before:?}"
        );

        server.kill9();
        // This is the gap the sweep closes: in this mode the setsid'd grandchild outlives the
        // server, its supervisor and the agent.
        assert!(
            !sleepers(&sleeper).is_empty(),
            "round {round}: the grandchild died with the server; the test would prove nothing"
        );
        server.restart();
        // The sweep runs before the store opens, so once a call is answered it is done.
        let mut c = server.clients(KEY_A).await;
        let job = c.get_job(&job.job_id).await;
        assert_eq!(job.state, pb::JobState::Failed as i32, "round {round}");
        assert!(
            eventually(Duration::from_secs(5), || marked(&tokens).is_empty()
                && sleepers(&sleeper).is_empty()
                && procs_under(&sessions_dir).is_empty())
            .await,
            "round {round}: processes from before the crash survived the restart: marked \
             {:?}, sleepers {:?}, in workspaces {:?}",
            marked(&tokens),
            sleepers(&sleeper),
            procs_under(&sessions_dir)
        );
        assert!(
            run_tokens(&server).is_disjoint(&tokens),
            "round {round}: swept records were not removed"
        );
    }
    // A job on the restarted server runs (from the standby, whose record becomes the job's) and
    // ends normally, leaving no record; only the standby started after it has one.
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    assert!(
        eventually(Duration::from_secs(5), || run_tokens(&server).len() == 1).await,
        "the restarted server has no standby: {:?}",
        run_tokens(&server)
    );
    let standby = run_tokens(&server);
    let job = c.submit(&s.session_id, "hi").await;
    assert_eq!(
        c.wait(&job.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            let now = run_tokens(&server);
            now.len() == 1 && now.is_disjoint(&standby)
        })
        .await,
        "a finished job left its record: {:?} (standby before the job: {standby:?})",
        run_tokens(&server)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[("keep.txt", b"kept")]).await;
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_agentd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .env("AGENTD_API_KEYS", format!("a:{KEY_A}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second agentd kept running on a data dir already in use");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut second.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(!status.success(), "{status:?}");
    // Scripts wait for this line to know a server is up: a refused one must not print it.
    assert!(
        !stdout.contains("listening"),
        "a refused server announced itself: {stdout}"
    );
    assert!(
        stderr.contains("another agentd")
            && stderr.contains(&server.pid().to_string())
            && stderr.contains(&server.data_dir.display().to_string()),
        "the refusal should name the holder and the data dir: {stderr}"
    );
    // The first server is unaffected.
    assert_eq!(
        c.download(&s.session_id, "keep.txt").await.unwrap(),
        b"kept"
    );
    let job = c.submit(&s.session_id, "hi").await;
    assert_eq!(
        c.wait(&job.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
}
