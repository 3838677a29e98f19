//! The seed flow and the job lifecycle, end to end through the generated client against the real
//! server and the stand-in Claude.

mod common;

use agentd::pb;
use common::*;
use std::time::Duration;

fn finished(events: &[pb::JobEvent]) -> pb::JobFinished {
    match events.last().and_then(|e| e.kind.clone()) {
        Some(pb::job_event::Kind::Finished(f)) => f,
        other => panic!("last event is not finished: {other:?}"),
    }
}

fn assert_gapless(events: &[pb::JobEvent], from: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, from + i as u64, "seq gap or duplicate at index {i}");
    }
}

#[tokio::test]
async fn seed_flow_create_run_stream_list_download_outputs_delete() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let session = c
        .create_session(&[("README.md", b"# project\n"), ("src/lib.py", b"x = 1\n")])
        .await;
    assert_eq!(session.file_count, 2);
    assert!(session.session_id.starts_with("ses_"));

    let job = c
        .submit(&session.session_id, "write hello.py print('hi')")
        .await;
    assert_eq!(job.agent, "claude", "empty agent means the default profile");
    let events = c.events(&job.job_id, 0).await;
    assert_gapless(&events, 1);
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    assert_eq!(kinds.first(), Some(&"started"));
    for k in ["init", "tool_call", "tool_result", "usage", "finished"] {
        assert!(kinds.contains(&k), "missing {k} in {kinds:?}");
    }
    // Agent events keep the agent's original JSON line.
    let init = events.iter().find(|e| kind(e) == "init").unwrap();
    assert!(init.raw.starts_with('{') && init.raw.contains("\"subtype\":\"init\""));
    let call = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(pb::job_event::Kind::ToolCall(t)) => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(call.name, "Write");
    assert!(call.input_json.contains("hello.py"));
    let fin = finished(&events);
    assert_eq!(fin.state, pb::JobState::Succeeded as i32);

    let job = c.get_job(&job.job_id).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert_eq!(job.last_seq, events.len() as u64);
    assert!(job.end_time.is_some() && job.start_time.is_some());
    assert!(!job.conversation_id.is_empty());
    assert!(job.usage.as_ref().and_then(|u| u.cost_usd).unwrap_or(0.0) > 0.0);
    assert_eq!(
        job.exit_status.and_then(|e| e.status),
        Some(pb::exit_status::Status::Code(0))
    );

    let files = c
        .files
        .list_files(pb::ListFilesRequest {
            session_id: session.session_id.clone(),
            include_sha256: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .files;
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert!(
        paths.contains(&"hello.py") && paths.contains(&"src/lib.py"),
        "{paths:?}"
    );
    let hello = files.iter().find(|f| f.path == "hello.py").unwrap();
    assert_eq!(hello.sha256.len(), 64);

    let content = c.download(&session.session_id, "hello.py").await.unwrap();
    assert_eq!(String::from_utf8(content).unwrap().trim(), "print('hi')");

    let outputs = c
        .files
        .get_job_outputs(pb::GetJobOutputsRequest {
            session_id: session.session_id.clone(),
            job_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outputs.job_id, job.job_id);
    assert_eq!(outputs.changes.len(), 1, "{:?}", outputs.changes);
    assert_eq!(outputs.changes[0].path, "hello.py");
    assert_eq!(outputs.changes[0].kind, pb::ChangeKind::Added as i32);

    // The next job continues the conversation from the same workspace and HOME.
    let job2 = c
        .submit(&session.session_id, "write hello.py print('again')")
        .await;
    let events2 = c.events(&job2.job_id, 0).await;
    let started = match &events2[0].kind {
        Some(pb::job_event::Kind::Started(s)) => s.clone(),
        k => panic!("{k:?}"),
    };
    assert_eq!(started.resumed_conversation_id, job.conversation_id);
    assert_eq!(finished(&events2).state, pb::JobState::Succeeded as i32);
    let job2 = c.get_job(&job2.job_id).await;
    // Claude resumes with `--fork-session`: each job ends with its own conversation id.
    assert!(!job2.conversation_id.is_empty());
    assert_ne!(job2.conversation_id, job.conversation_id);
    let outputs2 = c
        .files
        .get_job_outputs(pb::GetJobOutputsRequest {
            session_id: session.session_id.clone(),
            job_id: job2.job_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outputs2.changes[0].kind, pb::ChangeKind::Modified as i32);

    let del = c
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            session_id: session.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.cancelled_jobs, 0);
    let err = c
        .sessions
        .get_session(pb::GetSessionRequest {
            session_id: session.session_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        !server
            .data_dir
            .join("sessions")
            .join(&session.session_id)
            .exists()
    );
    let err = c
        .jobs
        .get_job(pb::GetJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::NotFound,
        "a deleted session's jobs are gone"
    );
}

#[tokio::test]
async fn replay_from_cursor_mid_job_and_after_the_end() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let job = c
        .submit(&s.session_id, "lines 50 ; sleep 1 ; lines 50")
        .await;

    // Read part of the stream while the job runs, then drop it.
    let mut stream = c.stream(&job.job_id, 0).await;
    let mut seen: Vec<pb::JobEvent> = Vec::new();
    while seen.len() < 20 {
        let m = stream.message().await.unwrap().unwrap();
        seen.extend(m.events);
    }
    drop(stream);
    let cursor = seen.last().unwrap().seq;
    // Reattach from the last seen seq: no gap, no duplicate.
    let rest = c.events(&job.job_id, cursor).await;
    seen.extend(rest);
    assert_gapless(&seen, 1);
    assert_eq!(finished(&seen).state, pb::JobState::Succeeded as i32);
    assert!(texts(&seen).len() >= 100);

    // Dropping the stream did not affect the job; replay after the end works too.
    let total = seen.len() as u64;
    let tail = c.events(&job.job_id, total - 3).await;
    assert_eq!(
        tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![total - 2, total - 1, total]
    );
    let none = c.events(&job.job_id, total).await;
    assert!(none.is_empty());
    let all = c.events(&job.job_id, 0).await;
    assert_eq!(all, seen, "a replay equals the live stream");
}

#[tokio::test]
async fn run_job_submits_and_streams_in_one_call() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let mut stream = c
        .jobs
        .run_job(pb::RunJobRequest {
            job: Some(pb::SubmitJobRequest {
                session_id: s.session_id.clone(),
                prompt: "say hello".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let job = first.job.expect("first message carries the job");
    assert_eq!(job.state, pb::JobState::Queued as i32);
    let mut events = first.events;
    while let Some(m) = stream.message().await.unwrap() {
        assert!(m.job.is_none());
        events.extend(m.events);
    }
    assert_gapless(&events, 1);
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
}

#[tokio::test]
async fn idempotent_create_and_submit_and_listing() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let req = pb::CreateSessionRequest {
        request_id: "req-1".into(),
        labels: [("team".to_string(), "infra".to_string())].into(),
        ..Default::default()
    };
    let a = c
        .sessions
        .create_session(req.clone())
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let b = c
        .sessions
        .create_session(req)
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(a.session_id, b.session_id);

    let submit = pb::SubmitJobRequest {
        session_id: a.session_id.clone(),
        prompt: "hi".into(),
        request_id: "job-req-1".into(),
        ..Default::default()
    };
    let j1 = c
        .jobs
        .submit_job(submit.clone())
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let j2 = c.submit_request(submit).await;
    assert_eq!(j1.job_id, j2.job_id);
    c.wait(&j1.job_id).await;

    for _ in 0..4 {
        c.create_session(&[]).await;
    }
    // Paging: newest first, no duplicates, all found.
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .sessions
            .list_sessions(pb::ListSessionsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.sessions.len() <= 2);
        ids.extend(page.sessions.into_iter().map(|s| s.session_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids.len(), 5);
    let mut dedup = ids.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 5);
    let labelled = c
        .sessions
        .list_sessions(pb::ListSessionsRequest {
            label_filter: [("team".to_string(), "infra".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(labelled.sessions.len(), 1);
    assert_eq!(labelled.sessions[0].session_id, a.session_id);

    let jobs = c
        .jobs
        .list_jobs(pb::ListJobsRequest {
            session_id: a.session_id.clone(),
            states: vec![pb::JobState::Succeeded as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jobs.jobs.len(), 1);
    let none = c
        .jobs
        .list_jobs(pb::ListJobsRequest {
            session_id: a.session_id.clone(),
            states: vec![pb::JobState::Failed as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.jobs.is_empty());
}

#[tokio::test]
async fn cancel_and_timeout_leave_no_descendant() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;

    let job = c.submit(&s.session_id, "grandchild 4711 ; sleep 60").await;
    assert!(
        eventually(Duration::from_secs(10), || !sleepers("4711").is_empty()).await,
        "the stand-in started its detached grandchild"
    );
    // A queued job behind it shows its position.
    let queued = c.submit(&s.session_id, "hi").await;
    assert_eq!(queued.state, pb::JobState::Queued as i32);
    assert!(queued.queue_position >= 1);
    let cancelled_queued = c.cancel(&queued.job_id).await;
    assert_eq!(cancelled_queued.state, pb::JobState::Cancelled as i32);
    let qe = c.events(&queued.job_id, 0).await;
    assert_eq!(
        qe.len(),
        1,
        "a job cancelled while queued has just its finished event"
    );

    let cancelled = c.cancel(&job.job_id).await;
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    assert!(
        cancelled.error_message.contains("cancel"),
        "{}",
        cancelled.error_message
    );
    assert!(sleepers("4711").is_empty(), "grandchild survived cancel");
    let ev = c.events(&job.job_id, 0).await;
    assert_eq!(finished(&ev).state, pb::JobState::Cancelled as i32);
    // Cancelling again is a no-op; cancelling a succeeded job is refused.
    assert!(
        c.jobs
            .cancel_job(pb::CancelJobRequest {
                job_id: job.job_id.clone()
            })
            .await
            .is_ok()
    );

    let timed = c
        .jobs
        .submit_job(pb::SubmitJobRequest {
            session_id: s.session_id.clone(),
            prompt: "grandchild 4712 ; sleep 60".into(),
            timeout_seconds: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let timed = c.wait(&timed.job_id).await;
    assert_eq!(timed.state, pb::JobState::TimedOut as i32);
    assert!(sleepers("4712").is_empty(), "grandchild survived timeout");

    let ok = c.submit(&s.session_id, "hi").await;
    let ok = c.wait(&ok.job_id).await;
    assert_eq!(ok.state, pb::JobState::Succeeded as i32);
    let err = c
        .jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: ok.job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&err), "JOB_FINISHED");
}

#[tokio::test]
async fn agent_failures_carry_the_agents_own_words() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;

    let j = c.submit(&s.session_id, "fail overloaded").await;
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state, pb::JobState::Failed as i32);
    assert!(j.error_message.contains("API Error"), "{}", j.error_message);

    let j = c
        .submit(&s.session_id, "stderr something broke ; exit 3")
        .await;
    let ev = c.events(&j.job_id, 0).await;
    assert!(ev.iter().any(|e| kind(e) == "stderr"));
    let j = c.get_job(&j.job_id).await;
    assert_eq!(j.state, pb::JobState::Failed as i32);
    assert_eq!(
        j.exit_status.and_then(|e| e.status),
        Some(pb::exit_status::Status::Code(3))
    );
    assert!(
        j.error_message.contains("something broke"),
        "{}",
        j.error_message
    );
}

#[tokio::test]
async fn agent_environment_is_scrubbed_and_job_env_applies() {
    let server = TestServer::start_with(Options {
        env: vec![("AGENTD_TEST_LEAK".into(), "server-secret".into())],
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let j = c
        .jobs
        .submit_job(pb::SubmitJobRequest {
            session_id: s.session_id.clone(),
            prompt: "echo-env MY_FLAG ; echo-env AGENTD_TEST_LEAK ; echo-env HOME".into(),
            env: [("MY_FLAG".to_string(), "on".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let ev = c.events(&j.job_id, 0).await;
    let t = texts(&ev).join("\n");
    assert!(t.contains("on"), "{t}");
    assert!(!t.contains("server-secret"), "server env leaked: {t}");
    assert!(
        t.contains("/home"),
        "HOME is the session's private home: {t}"
    );
    assert!(!t.contains("/workspace"), "{t}");
}

#[tokio::test]
async fn jobs_of_one_session_run_in_order_one_at_a_time() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            c.submit(
                &s.session_id,
                &format!("bash echo {i} >> order.txt ; sleep 0.2"),
            )
            .await
            .job_id,
        );
    }
    for id in &ids {
        assert_eq!(c.wait(id).await.state, pb::JobState::Succeeded as i32);
    }
    let order = c.download(&s.session_id, "order.txt").await.unwrap();
    assert_eq!(String::from_utf8(order).unwrap(), "0\n1\n2\n3\n");
    let jobs: Vec<pb::Job> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(c.get_job(id).await);
        }
        v
    };
    for w in jobs.windows(2) {
        let end = w[0].end_time.unwrap();
        let start = w[1].start_time.unwrap();
        assert!(
            (start.seconds, start.nanos) >= (end.seconds, end.nanos),
            "jobs overlapped"
        );
    }
}

#[tokio::test]
async fn operator_command_profile_runs_and_secrets_are_redacted() {
    let server = TestServer::start_with(Options {
        config: Some(
            r#"
[agents.shell]
kind = "command"
command = "sh"
args = ["-c", "echo \"prompt: $0\"; echo \"token: $SHELL_TOKEN\"; echo done > made-by-shell.txt"]
env = { SHELL_TOKEN = "operator-secret-123" }
"#
            .into(),
        ),
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let job = c.submit_to(&s.session_id, "shell", "list the files").await;
    let events = c.events(&job.job_id, 0).await;
    let t = texts(&events);
    assert_eq!(t, vec!["prompt: list the files", "token: [REDACTED]"]);
    let job = c.get_job(&job.job_id).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert!(
        !job.result.contains("operator-secret-123"),
        "{}",
        job.result
    );
    assert!(job.result.contains("prompt: list the files"));
    let outputs = c
        .files
        .get_job_outputs(pb::GetJobOutputsRequest {
            session_id: s.session_id.clone(),
            job_id: job.job_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outputs.changes[0].path, "made-by-shell.txt");

    // An option the command kind cannot honour is refused, naming it.
    let err = c
        .jobs
        .submit_job(pb::SubmitJobRequest {
            session_id: s.session_id.clone(),
            agent: "shell".into(),
            prompt: "x".into(),
            max_turns: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(reason(&err), "UNSUPPORTED_OPTION");
    assert!(err.message().contains("max_turns"), "{}", err.message());
}

#[tokio::test]
async fn server_info_lists_agents_with_versions_and_limits() {
    let server = TestServer::start_with(Options {
        args: vec!["--max-concurrent-jobs".into(), "3".into()],
        env: vec![("AGENTD_DEFAULT_AGENT".into(), "claude".into())],
        ..Default::default()
    });
    let got = server.server_info().await;
    assert_eq!(got.default_agent, "claude");
    let claude = got.agents.iter().find(|a| a.name == "claude").unwrap();
    assert!(claude.available);
    assert_eq!(claude.kind, "claude");
    assert_eq!(claude.version, "2.1.197 (Claude Code)");
    assert_eq!(got.limits.unwrap().max_concurrent_jobs, 3);
}

/// Many readers following one job live (each live event is encoded once and the same bytes go
/// to every reader) all receive the same complete, gapless log, equal to a replay after the job
/// ended; readers attaching mid-job from a cursor receive exactly its suffix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_live_readers_receive_identical_complete_logs() {
    let server = TestServer::start_with(Options {
        config: Some(
            r#"
[agents.ticker]
kind = "command"
command = "sh"
args = ["-c", "i=1; while [ $i -le 150 ]; do echo \"tick $i ü\"; i=$((i+1)); sleep 0.005; done"]
"#
            .into(),
        ),
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let job = c.submit_to(&s.session_id, "ticker", "go").await;
    let mut readers = Vec::new();
    for i in 0..24u64 {
        let mut c = c.clone();
        let id = job.job_id.clone();
        // A third attach from a cursor, after letting the job get going.
        let after = if i % 3 == 2 { 40 } else { 0 };
        readers.push(tokio::spawn(async move {
            if after > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            (after, c.events(&id, after).await)
        }));
    }
    let mut live = Vec::new();
    for r in readers {
        live.push(r.await.unwrap());
    }
    let replay = c.events(&job.job_id, 0).await;
    // started, 150 lines, finished.
    assert_eq!(replay.len(), 152);
    assert_gapless(&replay, 1);
    assert_eq!(finished(&replay).state, pb::JobState::Succeeded as i32);
    match &replay[1].kind {
        Some(pb::job_event::Kind::Text(t)) => assert_eq!(t.text, "tick 1 ü"),
        other => panic!("{other:?}"),
    }
    for (after, events) in live {
        assert_eq!(events, replay[after as usize..], "reader from {after}");
    }
}

/// A job's env overrides the profile's for the same name, whether the job's supervisor was on
/// standby or started for it: the agent's environment holds the name once, with the job's value
/// (the standby path once passed both values to execve, where Python and glibc read the first and
/// sh the last). `envdump` shows the environment exactly as the agent was exec'd with it
/// (/proc/self/environ of the sh the supervisor started); the stand-in Claude shows what a
/// Python agent and its shell tools read.
#[tokio::test]
async fn job_env_overrides_profile_env_with_and_without_standby() {
    for standby in ["1", "0"] {
        let server = TestServer::start_with(Options {
            args: vec!["--standby-supervisors".into(), standby.into()],
            config: Some(format!(
                r#"
[agents.claude]
kind = "claude"
command = {:?}
env = {{ FOO = "profile" }}

[agents.envdump]
kind = "command"
command = "sh"
args = ["-c", "tr '\\0' '\\n' < /proc/$$/environ | grep '^FOO='"]
env = {{ FOO = "profile" }}
"#,
                fake_claude().to_string_lossy()
            )),
            ..Default::default()
        });
        let mut c = server.clients(KEY_A).await;
        let s = c.create_session(&[]).await;
        for (agent, prompt) in [
            ("envdump", "go"),
            ("envdump", "again"),
            ("claude", "echo-env FOO ; bash echo \"sh: $FOO\""),
        ] {
            // Time for a standby to be (re)started, so that the job takes it.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let job = c
                .submit_request(pb::SubmitJobRequest {
                    session_id: s.session_id.clone(),
                    agent: agent.into(),
                    prompt: prompt.into(),
                    env: [("FOO".to_owned(), "job".to_owned())].into(),
                    ..Default::default()
                })
                .await;
            let events = c.events(&job.job_id, 0).await;
            let t = texts(&events);
            if agent == "envdump" {
                assert_eq!(t, vec!["FOO=job"], "standby {standby}: environ as exec'd");
                continue;
            }
            assert!(t.iter().any(|l| l == "FOO=job"), "standby {standby}: {t:?}");
            let bash: Vec<String> = events
                .iter()
                .filter_map(|e| match &e.kind {
                    Some(pb::job_event::Kind::ToolResult(r)) => Some(r.content.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(bash, vec!["sh: job"], "standby {standby}");
        }
    }
}
