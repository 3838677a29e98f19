//! Every bad input answers its precise code and reason, and writes nothing; auth and tenant
//! isolation hold for every RPC that takes an id.

mod common;

use agentd::pb;
use common::*;
use std::path::Path;
use tonic::Code;

fn files_in(dir: &Path) -> Vec<String> {
    walk(dir, dir)
}

fn walk(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(root, &p));
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn upload_msgs(session: &str, files: &[(&str, &[u8], &str)]) -> Vec<pb::UploadFilesRequest> {
    let mut v = Vec::new();
    for (path, content, sha) in files {
        v.push(pb::UploadFilesRequest {
            session_id: session.into(),
            part: Some(pb::upload_files_request::Part::Header(
                pb::UploadFileHeader {
                    path: (*path).into(),
                    sha256: (*sha).into(),
                    ..Default::default()
                },
            )),
        });
        for chunk in content.chunks(1000) {
            v.push(pb::UploadFilesRequest {
                session_id: String::new(),
                part: Some(pb::upload_files_request::Part::Chunk(chunk.to_vec().into())),
            });
        }
    }
    v
}

#[tokio::test]
async fn bad_paths_are_refused_and_nothing_is_written() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let long = "x".repeat(300);
    for bad in [
        "../escape",
        "/etc/passwd",
        "a/../../b",
        "nul\0byte",
        long.as_str(),
        "",
    ] {
        let err = c
            .sessions
            .create_session(pb::CreateSessionRequest {
                files: vec![pb::FileContent {
                    path: bad.into(),
                    content: b"x".to_vec().into(),
                    mode: None,
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert_eq!(reason(&err), "INVALID_PATH", "{bad:?}");
    }
    // No session directory was left behind by the refused creations.
    assert!(files_in(&server.data_dir.join("sessions")).is_empty());

    let s = c.create_session(&[("keep.txt", b"keep")]).await;
    let ws = server
        .data_dir
        .join("sessions")
        .join(&s.session_id)
        .join("workspace");
    for bad in ["../x", "/abs", "a/../../x"] {
        let err = c
            .files
            .upload_files(tokio_stream::iter(upload_msgs(
                &s.session_id,
                &[("ok.txt", b"fine", ""), (bad, b"bad", "")],
            )))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(reason(&err), "INVALID_PATH");
        let err = c.download(&s.session_id, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
    // All-or-nothing: the valid file of a refused upload is not there either.
    assert_eq!(files_in(&ws), vec!["keep.txt"]);

    // Checksum mismatch leaves nothing.
    let err = c
        .files
        .upload_files(tokio_stream::iter(upload_msgs(
            &s.session_id,
            &[("sum.txt", b"abc", &"0".repeat(64))],
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "CHECKSUM_MISMATCH");
    assert_eq!(files_in(&ws), vec!["keep.txt"]);

    // A good upload with the right checksum works and reports it.
    let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let up = c
        .files
        .upload_files(tokio_stream::iter(upload_msgs(
            &s.session_id,
            &[("dir/abc.txt", b"abc", sha)],
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(up.files[0].sha256, sha);
    assert_eq!(
        c.download(&s.session_id, "dir/abc.txt").await.unwrap(),
        b"abc"
    );
    // Resume a download from an offset.
    let mut st = c
        .files
        .download_file(pb::DownloadFileRequest {
            session_id: s.session_id.clone(),
            path: "dir/abc.txt".into(),
            offset: 1,
            include_sha256: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = st.message().await.unwrap() {
        if let Some(pb::download_file_response::Part::Chunk(b)) = m.part {
            got.extend_from_slice(&b);
        }
    }
    assert_eq!(got, b"bc");
    let err = c
        .files
        .download_file(pb::DownloadFileRequest {
            session_id: s.session_id.clone(),
            path: "dir/abc.txt".into(),
            offset: 10,
            include_sha256: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let err = c.download(&s.session_id, "missing.txt").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason(&err), "FILE_NOT_FOUND");
}

#[tokio::test]
async fn symlinks_out_of_the_workspace_are_never_followed() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    // The agent creates links out of the workspace, as an agent may.
    let j = c
        .submit(
            &s.session_id,
            "bash ln -s /etc/passwd leak && ln -s /tmp outdir",
        )
        .await;
    assert_eq!(
        c.wait(&j.job_id).await.state,
        pb::JobState::Succeeded as i32
    );
    let err = c.download(&s.session_id, "leak").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err), "SYMLINK_ESCAPE");
    let marker = format!("agentd-escape-{}", s.session_id);
    let err = c
        .files
        .upload_files(tokio_stream::iter(upload_msgs(
            &s.session_id,
            &[(&format!("outdir/{marker}"), b"x", "")],
        )))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "wrote through a symlink"
    );
    let err = c
        .files
        .upload_files(tokio_stream::iter(upload_msgs(
            &s.session_id,
            &[("leak", b"overwrite", "")],
        )))
        .await;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(!passwd.contains("overwrite"));
    let _ = err;
    // Listing shows the link without following it.
    let files = c
        .files
        .list_files(pb::ListFilesRequest {
            session_id: s.session_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .files;
    let leak = files
        .iter()
        .find(|f| f.path == "leak")
        .expect("leak listed");
    assert_eq!(leak.r#type, pb::FileType::Symlink as i32);
    assert!(!files.iter().any(|f| f.path.starts_with("outdir/")));
}

#[tokio::test]
async fn limits_answer_resource_exhausted_and_leave_nothing() {
    let server = TestServer::start_with(Options {
        args: vec![
            "--max-file-bytes".into(),
            "1000".into(),
            "--max-session-bytes".into(),
            "3000".into(),
            "--max-files-per-session".into(),
            "3".into(),
        ],
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let ws = server
        .data_dir
        .join("sessions")
        .join(&s.session_id)
        .join("workspace");
    let big = vec![b'x'; 1500];
    let err = c
        .files
        .upload_files(tokio_stream::iter(upload_msgs(
            &s.session_id,
            &[("big.bin", &big, "")],
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(reason(&err), "FILE_TOO_LARGE");
    let mid = vec![b'y'; 900];
    let many: Vec<(String, &[u8])> = (0..4).map(|i| (format!("f{i}"), mid.as_slice())).collect();
    let refs: Vec<(&str, &[u8], &str)> = many.iter().map(|(p, c)| (p.as_str(), *c, "")).collect();
    let err = c
        .files
        .upload_files(tokio_stream::iter(upload_msgs(&s.session_id, &refs)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(["TOO_MANY_FILES", "SESSION_TOO_LARGE"].contains(&reason(&err).as_str()));
    assert!(files_in(&ws).is_empty(), "{:?}", files_in(&ws));
    let err = c
        .sessions
        .create_session(pb::CreateSessionRequest {
            files: vec![pb::FileContent {
                path: "big".into(),
                content: big.clone().into(),
                mode: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn bad_job_requests_are_refused_precisely() {
    let server = TestServer::start_with(Options {
        args: vec![
            "--job-timeout-max".into(),
            "60".into(),
            "--job-timeout-default".into(),
            "30".into(),
        ],
        ..Default::default()
    });
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let base = pb::SubmitJobRequest {
        session_id: s.session_id.clone(),
        prompt: "hi".into(),
        ..Default::default()
    };
    let cases: Vec<(pb::SubmitJobRequest, Code, &str)> = vec![
        (
            pb::SubmitJobRequest {
                prompt: String::new(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            pb::SubmitJobRequest {
                agent: "nope".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "UNKNOWN_AGENT",
        ),
        (
            pb::SubmitJobRequest {
                timeout_seconds: 61,
                ..base.clone()
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            pb::SubmitJobRequest {
                env: [("PATH".to_string(), "/x".to_string())].into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "FORBIDDEN_ENV",
        ),
        (
            pb::SubmitJobRequest {
                env: [("LD_PRELOAD".to_string(), "x".to_string())].into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "FORBIDDEN_ENV",
        ),
        (
            pb::SubmitJobRequest {
                env: [("ANTHROPIC_BASE_URL".to_string(), "x".to_string())].into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "FORBIDDEN_ENV",
        ),
        (
            pb::SubmitJobRequest {
                env: [("OPENAI_API_KEY".to_string(), "x".to_string())].into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "FORBIDDEN_ENV",
        ),
        (
            pb::SubmitJobRequest {
                env: [("HOME".to_string(), "/".to_string())].into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "FORBIDDEN_ENV",
        ),
        (
            pb::SubmitJobRequest {
                env: [("AGENTD_RUN_TOKEN".to_string(), "x".to_string())].into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "FORBIDDEN_ENV",
        ),
        (
            pb::SubmitJobRequest {
                session_id: "ses_nope".into(),
                ..base.clone()
            },
            Code::NotFound,
            "SESSION_NOT_FOUND",
        ),
        // Capability options (#20): a schema that is no schema, paths out of the workspace or
        // not in it, empty tool names.
        (
            pb::SubmitJobRequest {
                output_schema: "{\"type\": 12}".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            pb::SubmitJobRequest {
                attachments: vec!["../../etc/passwd".into()],
                ..base.clone()
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            pb::SubmitJobRequest {
                attachments: vec!["missing.png".into()],
                ..base.clone()
            },
            Code::InvalidArgument,
            "FILE_NOT_FOUND",
        ),
        (
            pb::SubmitJobRequest {
                disallowed_tools: vec![" ".into()],
                ..base.clone()
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            pb::SubmitJobRequest {
                system_prompt: "a\0b".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
    ];
    for (req, code, why) in cases {
        let err = c.jobs.submit_job(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert_eq!(reason(&err), why, "{req:?}");
        assert!(!err.message().is_empty());
    }
    // The server's own names are reserved; the violation names the variable.
    let err = c
        .jobs
        .submit_job(pb::SubmitJobRequest {
            env: [("AGENTD_CONTAINMENT".to_string(), "1".to_string())].into(),
            ..base.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "FORBIDDEN_ENV");
    let violations = {
        use tonic_types::StatusExt;
        err.get_error_details()
            .bad_request()
            .map(|b| b.field_violations.clone())
            .unwrap_or_default()
    };
    assert!(
        violations
            .iter()
            .any(|v| v.field.contains("AGENTD_CONTAINMENT")),
        "{violations:?}"
    );
    let listed = c
        .jobs
        .list_jobs(pb::ListJobsRequest {
            session_id: s.session_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "refused submissions created no job");

    let err = c
        .jobs
        .get_job(pb::GetJobRequest {
            job_id: format!("job_{}", "0".repeat(32)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason(&err), "JOB_NOT_FOUND");
    let err = c
        .jobs
        .get_job(pb::GetJobRequest {
            job_id: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .sessions
        .list_sessions(pb::ListSessionsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INVALID_PAGE_TOKEN");
    let err = c
        .sessions
        .create_session(pb::CreateSessionRequest {
            labels: [("Bad Key".to_string(), "v".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// Sends `actions` on one Attach stream (message_id = index + 1), closes it, and returns each
/// message's answer by message_id: Ok(()) for an ack, Err((code, reason)) for an error.
async fn attach_answers(
    c: &mut Clients,
    actions: Vec<pb::attach_request::Action>,
) -> Vec<Result<(), (i32, String)>> {
    let n = actions.len();
    let msgs: Vec<pb::AttachRequest> = actions
        .into_iter()
        .enumerate()
        .map(|(i, a)| pb::AttachRequest {
            message_id: i as u64 + 1,
            action: Some(a),
        })
        .collect();
    let mut rx = c
        .jobs
        .attach(tokio_stream::iter(msgs))
        .await
        .expect("attach")
        .into_inner();
    let mut answers = vec![None; n];
    while let Some(msg) = rx.message().await.expect("attach message") {
        let (id, answer) = match msg.kind {
            Some(pb::attach_response::Kind::Ack(a)) => (a.message_id, Ok(())),
            Some(pb::attach_response::Kind::Error(e)) => (e.message_id, Err((e.code, e.reason))),
            _ => continue,
        };
        let slot = usize::try_from(id).expect("id") - 1;
        assert!(answers[slot].is_none(), "message {id} answered twice");
        answers[slot] = Some(answer);
    }
    answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.unwrap_or_else(|| panic!("message {} was not answered", i + 1)))
        .collect()
}

/// The control RPCs (RespondToPermission, SendInput, InterruptJob) and Attach's client messages
/// refuse bad input with its precise code and reason; Attach answers each on the stream.
#[tokio::test]
async fn bad_control_requests_are_refused_precisely() {
    use pb::attach_request::Action;
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let done = c.submit(&s.session_id, "write out.txt x").await;
    c.wait(&done.job_id).await;
    let nobody = format!("job_{}", "0".repeat(32));
    let respond = |job: &str, request_id: &str| pb::RespondToPermissionRequest {
        job_id: job.into(),
        request_id: request_id.into(),
        allow: true,
        message: String::new(),
    };
    let input = |job: &str, text: &str| pb::SendInputRequest {
        job_id: job.into(),
        text: text.into(),
    };
    let interrupt = |job: &str| pb::InterruptJobRequest { job_id: job.into() };
    let cases: Vec<(Action, Code, &str)> = vec![
        (
            Action::Respond(respond(&done.job_id, "")),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            Action::Respond(respond(&done.job_id, &"r".repeat(300))),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            Action::Respond(respond(&done.job_id, "req\0x")),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            Action::Respond(respond(&nobody, "req_1")),
            Code::NotFound,
            "JOB_NOT_FOUND",
        ),
        (
            Action::Respond(respond("garbage", "req_1")),
            Code::NotFound,
            "JOB_NOT_FOUND",
        ),
        (
            Action::Respond(respond(&done.job_id, "req_1")),
            Code::FailedPrecondition,
            "JOB_FINISHED",
        ),
        (
            Action::Input(input(&done.job_id, " ")),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            Action::Input(input(&done.job_id, "a\0b")),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            Action::Input(input(&nobody, "hi")),
            Code::NotFound,
            "JOB_NOT_FOUND",
        ),
        (
            Action::Input(input(&done.job_id, "hi")),
            Code::FailedPrecondition,
            "JOB_FINISHED",
        ),
        (
            Action::Interrupt(interrupt(&nobody)),
            Code::NotFound,
            "JOB_NOT_FOUND",
        ),
        (
            Action::Interrupt(interrupt(&done.job_id)),
            Code::FailedPrecondition,
            "JOB_FINISHED",
        ),
    ];
    for (action, code, why) in &cases {
        let err = match action.clone() {
            Action::Respond(r) => c.jobs.respond_to_permission(r).await.map(|_| ()),
            Action::Input(r) => c.jobs.send_input(r).await.map(|_| ()),
            Action::Interrupt(r) => c.jobs.interrupt_job(r).await.map(|_| ()),
            _ => unreachable!("only unary control RPCs in the table"),
        }
        .unwrap_err();
        assert_eq!(err.code(), *code, "{action:?}: {err:?}");
        assert_eq!(reason(&err), *why, "{action:?}");
        assert!(!err.message().is_empty());
    }

    // The same on one Attach stream, plus what only Attach has; each error answers its message
    // and the stream goes on to the next.
    let mut actions: Vec<Action> = cases.iter().map(|(a, _, _)| a.clone()).collect();
    let mut expected: Vec<(Code, &str)> = cases.iter().map(|(_, c, w)| (*c, *w)).collect();
    let attach_only: Vec<(Action, Code, &str)> = vec![
        // No job attached yet: a control message must name its job.
        (
            Action::Interrupt(interrupt("")),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            Action::Attach(pb::AttachJob {
                job_id: nobody.clone(),
                after_seq: 0,
            }),
            Code::NotFound,
            "JOB_NOT_FOUND",
        ),
        (
            Action::Submit(Box::new(pb::SubmitJobRequest {
                session_id: s.session_id.clone(),
                ..Default::default()
            })),
            Code::InvalidArgument,
            "MISSING_FIELD",
        ),
        (
            Action::Submit(Box::new(pb::SubmitJobRequest {
                session_id: "ses_nope".into(),
                prompt: "hi".into(),
                ..Default::default()
            })),
            Code::NotFound,
            "SESSION_NOT_FOUND",
        ),
    ];
    for (a, code, why) in attach_only {
        actions.push(a);
        expected.push((code, why));
    }
    let answers = attach_answers(&mut c, actions.clone()).await;
    for ((answer, (code, why)), action) in answers.iter().zip(&expected).zip(&actions) {
        assert_eq!(
            answer,
            &Err((*code as i32, (*why).to_owned())),
            "{action:?}"
        );
    }
    // A message without an action.
    let mut rx = c
        .jobs
        .attach(tokio_stream::iter(vec![pb::AttachRequest {
            message_id: 7,
            action: None,
        }]))
        .await
        .expect("attach")
        .into_inner();
    match rx.message().await.expect("answer").and_then(|m| m.kind) {
        Some(pb::attach_response::Kind::Error(e)) => {
            assert_eq!((e.message_id, e.reason.as_str()), (7, "MISSING_FIELD"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn auth_and_tenant_isolation_for_every_rpc_with_an_id() {
    let server = TestServer::start();
    let mut a = server.clients(KEY_A).await;
    let mut b = server.clients(KEY_B).await;
    let mut anon = server.clients("").await;
    let mut wrong = server.clients("not-a-valid-key").await;

    let err = anon
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err), "MISSING_CREDENTIALS");
    let err = wrong
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err), "INVALID_CREDENTIALS");

    // x-api-key works too.
    let ch = server.channel().await;
    let mut xk = pb::session_service_client::SessionServiceClient::with_interceptor(
        ch.clone(),
        |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("x-api-key", KEY_A.parse().unwrap());
            Ok(r)
        },
    );
    assert!(
        xk.list_sessions(pb::ListSessionsRequest::default())
            .await
            .is_ok()
    );

    // Health needs no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let st = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "agentd.v1.JobService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let s = a.create_session(&[("a.txt", b"secret of a")]).await;
    let j = a.submit(&s.session_id, "write out.txt x").await;
    a.wait(&j.job_id).await;
    let sid = s.session_id.clone();
    let jid = j.job_id.clone();

    let nf = |r: Result<(), tonic::Status>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::NotFound, "{what}: {e:?}");
    };
    nf(
        b.sessions
            .get_session(pb::GetSessionRequest {
                session_id: sid.clone(),
            })
            .await
            .map(|_| ()),
        "GetSession",
    );
    nf(
        b.sessions
            .delete_session(pb::DeleteSessionRequest {
                session_id: sid.clone(),
            })
            .await
            .map(|_| ()),
        "DeleteSession",
    );
    nf(
        b.jobs
            .submit_job(pb::SubmitJobRequest {
                session_id: sid.clone(),
                prompt: "x".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "SubmitJob",
    );
    nf(
        b.files
            .get_job_diff(pb::GetJobDiffRequest {
                job_id: jid.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "GetJobDiff",
    );
    nf(
        b.jobs
            .get_job(pb::GetJobRequest {
                job_id: jid.clone(),
            })
            .await
            .map(|_| ()),
        "GetJob",
    );
    nf(
        b.jobs
            .list_jobs(pb::ListJobsRequest {
                session_id: sid.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "ListJobs",
    );
    nf(
        b.jobs
            .cancel_job(pb::CancelJobRequest {
                job_id: jid.clone(),
            })
            .await
            .map(|_| ()),
        "CancelJob",
    );
    nf(
        b.jobs
            .stream_job_events(pb::StreamJobEventsRequest {
                job_id: jid.clone(),
                after_seq: 0,
            })
            .await
            .map(|_| ()),
        "StreamJobEvents",
    );
    nf(
        b.jobs
            .run_job(pb::RunJobRequest {
                job: Some(pb::SubmitJobRequest {
                    session_id: sid.clone(),
                    prompt: "x".into(),
                    ..Default::default()
                }),
            })
            .await
            .map(|_| ()),
        "RunJob",
    );
    nf(b.download(&sid, "a.txt").await.map(|_| ()), "DownloadFile");
    nf(
        b.files
            .list_files(pb::ListFilesRequest {
                session_id: sid.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "ListFiles",
    );
    nf(
        b.files
            .get_job_outputs(pb::GetJobOutputsRequest {
                session_id: sid.clone(),
                job_id: jid.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "GetJobOutputs",
    );
    nf(
        b.files
            .delete_file(pb::DeleteFileRequest {
                session_id: sid.clone(),
                path: "a.txt".into(),
                recursive: false,
            })
            .await
            .map(|_| ()),
        "DeleteFile",
    );
    nf(
        b.files
            .upload_files(tokio_stream::iter(vec![pb::UploadFilesRequest {
                session_id: sid.clone(),
                part: Some(pb::upload_files_request::Part::Header(
                    pb::UploadFileHeader {
                        path: "b.txt".into(),
                        ..Default::default()
                    },
                )),
            }]))
            .await
            .map(|_| ()),
        "UploadFiles",
    );
    nf(
        b.files
            .download_archive(pb::DownloadArchiveRequest {
                session_id: sid.clone(),
                format: pb::ArchiveFormat::Tar as i32,
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "DownloadArchive",
    );
    nf(
        b.files
            .upload_archive(tokio_stream::iter(vec![pb::UploadArchiveRequest {
                session_id: sid.clone(),
                part: Some(pb::upload_archive_request::Part::Header(
                    pb::UploadArchiveHeader {
                        format: pb::ArchiveFormat::Tar as i32,
                        dest: String::new(),
                    },
                )),
            }]))
            .await
            .map(|_| ()),
        "UploadArchive",
    );
    nf(
        b.files
            .watch_files(pb::WatchFilesRequest {
                session_id: sid.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "WatchFiles",
    );
    nf(
        b.jobs
            .respond_to_permission(pb::RespondToPermissionRequest {
                job_id: jid.clone(),
                request_id: "req_1".into(),
                allow: true,
                message: String::new(),
            })
            .await
            .map(|_| ()),
        "RespondToPermission",
    );
    nf(
        b.jobs
            .send_input(pb::SendInputRequest {
                job_id: jid.clone(),
                text: "hi".into(),
            })
            .await
            .map(|_| ()),
        "SendInput",
    );
    nf(
        b.jobs
            .interrupt_job(pb::InterruptJobRequest {
                job_id: jid.clone(),
            })
            .await
            .map(|_| ()),
        "InterruptJob",
    );
    {
        use pb::attach_request::Action;
        let answers = attach_answers(
            &mut b,
            vec![
                Action::Attach(pb::AttachJob {
                    job_id: jid.clone(),
                    after_seq: 0,
                }),
                Action::Submit(Box::new(pb::SubmitJobRequest {
                    session_id: sid.clone(),
                    prompt: "x".into(),
                    ..Default::default()
                })),
                Action::Respond(pb::RespondToPermissionRequest {
                    job_id: jid.clone(),
                    request_id: "req_1".into(),
                    allow: true,
                    message: String::new(),
                }),
                Action::Input(pb::SendInputRequest {
                    job_id: jid.clone(),
                    text: "hi".into(),
                }),
                Action::Interrupt(pb::InterruptJobRequest {
                    job_id: jid.clone(),
                }),
            ],
        )
        .await;
        for (i, a) in answers.iter().enumerate() {
            let (code, _) = a.as_ref().expect_err("B's Attach message was done");
            assert_eq!(
                *code,
                Code::NotFound as i32,
                "Attach message {}: {a:?}",
                i + 1
            );
        }
    }
    // B's own session can't be used to reach A's job either.
    let sb = b.create_session(&[]).await;
    nf(
        b.files
            .download_archive(pb::DownloadArchiveRequest {
                session_id: sb.session_id.clone(),
                format: pb::ArchiveFormat::Tar as i32,
                job_id: jid.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "DownloadArchive of A's job through B's session",
    );
    nf(
        b.sessions
            .rewind_session(pb::RewindSessionRequest {
                session_id: sid.clone(),
                job_id: jid.clone(),
                point: pb::SnapshotPoint::Before as i32,
            })
            .await
            .map(|_| ()),
        "RewindSession",
    );
    nf(
        b.sessions
            .rewind_session(pb::RewindSessionRequest {
                session_id: sb.session_id.clone(),
                job_id: jid.clone(),
                point: pb::SnapshotPoint::Before as i32,
            })
            .await
            .map(|_| ()),
        "RewindSession of B's session to A's job",
    );
    nf(
        b.sessions
            .fork_session(pb::ForkSessionRequest {
                job_id: jid.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "ForkSession",
    );
    nf(
        b.files
            .get_job_outputs(pb::GetJobOutputsRequest {
                session_id: sb.session_id.clone(),
                job_id: jid.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "GetJobOutputs cross",
    );
    let listed = b
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 1);

    // Nothing changed for A.
    assert_eq!(a.download(&sid, "a.txt").await.unwrap(), b"secret of a");
    assert!(a.download(&sid, "b.txt").await.is_err());
    assert_eq!(a.get_job(&jid).await.state, pb::JobState::Succeeded as i32);
    assert!(
        a.sessions
            .get_session(pb::GetSessionRequest {
                session_id: sid.clone()
            })
            .await
            .is_ok()
    );
    webhook_rpcs_are_tenant_scoped(&mut a, &mut b).await;
}

/// WebhookService: B can neither see nor touch A's endpoint or its deliveries.
#[tokio::test]
async fn rewind_and_fork_bad_input_has_stable_reasons() {
    let server = TestServer::start();
    let mut c = server.clients(KEY_A).await;
    let s = c.create_session(&[]).await;
    let other = c.create_session(&[]).await;
    let job = c.submit(&s.session_id, "hi").await;
    let job = c.wait(&job.job_id).await;
    let rw = |session: &str, job: &str, point: i32| pb::RewindSessionRequest {
        session_id: session.into(),
        job_id: job.into(),
        point,
    };
    let sid = s.session_id.as_str();
    let jid = job.job_id.as_str();
    let cases: Vec<(pb::RewindSessionRequest, Code, &str)> = vec![
        (rw("", jid, 0), Code::InvalidArgument, "MISSING_FIELD"),
        (rw(sid, "", 0), Code::InvalidArgument, "MISSING_FIELD"),
        (rw(sid, jid, 7), Code::InvalidArgument, "INVALID_FIELD"),
        (rw(sid, "job_nope", 0), Code::NotFound, "JOB_NOT_FOUND"),
        (rw(sid, "../../etc", 0), Code::NotFound, "JOB_NOT_FOUND"),
        (rw("ses_nope", jid, 0), Code::NotFound, "SESSION_NOT_FOUND"),
        (
            rw(&other.session_id, jid, 0),
            Code::NotFound,
            "JOB_NOT_FOUND",
        ),
    ];
    for (req, code, why) in cases {
        let e = c.sessions.rewind_session(req.clone()).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why), "{req:?}");
    }
    let fk = |job: &str, point: i32, label: &str, ttl: u32| pb::ForkSessionRequest {
        job_id: job.into(),
        point,
        labels: [(label.to_string(), "v".to_string())].into(),
        ttl_seconds: ttl,
    };
    let cases: Vec<(pb::ForkSessionRequest, Code, &str)> = vec![
        (fk("", 0, "k", 0), Code::InvalidArgument, "MISSING_FIELD"),
        (fk(jid, -1, "k", 0), Code::InvalidArgument, "INVALID_FIELD"),
        (fk("job_nope", 0, "k", 0), Code::NotFound, "JOB_NOT_FOUND"),
        (
            fk(jid, 0, "Bad Key", 0),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            fk(jid, 0, "k", u32::MAX),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
    ];
    let before = c
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions
        .len();
    for (req, code, why) in cases {
        let e = c.sessions.fork_session(req.clone()).await.unwrap_err();
        assert_eq!((e.code(), reason(&e).as_str()), (code, why), "{req:?}");
    }
    let after = c
        .sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(
        after.len(),
        before,
        "a refused fork leaves no session behind"
    );
}

async fn webhook_rpcs_are_tenant_scoped(a: &mut Clients, b: &mut Clients) {
    // A literal public address: no DNS needed, and nothing is sent to it here.
    let created = a
        .webhooks
        .create_webhook(pb::CreateWebhookRequest {
            url: "https://93.184.215.14/hook".into(),
            events: vec![],
        })
        .await
        .expect("create webhook")
        .into_inner();
    let id = created.webhook.expect("webhook").id;
    let nf = |r: Result<(), tonic::Status>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::NotFound, "{what}: {e:?}");
        assert_eq!(reason(&e), "WEBHOOK_NOT_FOUND", "{what}");
    };
    let wid = || id.clone();
    nf(
        b.webhooks
            .delete_webhook(pb::DeleteWebhookRequest { webhook_id: wid() })
            .await
            .map(|_| ()),
        "DeleteWebhook",
    );
    nf(
        b.webhooks
            .test_webhook(pb::TestWebhookRequest { webhook_id: wid() })
            .await
            .map(|_| ()),
        "TestWebhook",
    );
    nf(
        b.webhooks
            .rotate_webhook_secret(pb::RotateWebhookSecretRequest { webhook_id: wid() })
            .await
            .map(|_| ()),
        "RotateWebhookSecret",
    );
    let theirs = b
        .webhooks
        .list_webhooks(pb::ListWebhooksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.webhooks.is_empty(), "{theirs:?}");
    let deliveries = b
        .webhooks
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            webhook_id: wid(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deliveries.deliveries.is_empty());
    // A's endpoint is intact, and listing never shows a secret.
    let mine = a
        .webhooks
        .list_webhooks(pb::ListWebhooksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.webhooks.len(), 1);
    assert!(!format!("{mine:?}").contains(&created.secret));
}
