//! The client subcommands themselves, and `follow`: the event stream that reattaches from the
//! last seq seen when the connection breaks.

use super::archive;
use super::ask::Asker;
use super::conn::{CliError, Conn, is_transport};
use super::render::{self, Piece, Printer};
use super::transfer::{self, Dest};
use super::{ClientArgs, ClientCommand, FilesCommand, JobsCommand, RunArgs, SessionsCommand, exit};
use crate::pb;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `follow` keeps trying to reattach without receiving anything before giving up.
const REATTACH_FOR: Duration = Duration::from_secs(60);
/// How often the spinner is redrawn.
const SPINNER_TICK: Duration = Duration::from_millis(100);

pub async fn dispatch(cmd: ClientCommand) -> Result<i32, CliError> {
    let mut p = Printer::new();
    let r = dispatch_with(cmd, &mut p).await;
    p.close().await;
    r
}

async fn dispatch_with(cmd: ClientCommand, p: &mut Printer) -> Result<i32, CliError> {
    match cmd {
        ClientCommand::Run(args) => {
            let conn = connect(&args.client)?;
            run(&conn, &args, p).await
        }
        ClientCommand::Sessions { client, command } => {
            sessions(&connect(&client)?, client.json, command, p).await
        }
        ClientCommand::Jobs { client, command } => {
            jobs(&connect(&client)?, client.json, command, p).await
        }
        ClientCommand::Files { client, command } => {
            files(&connect(&client)?, client.json, command, p).await
        }
        ClientCommand::Agents { client } => agents(&connect(&client)?, client.json, p).await,
        ClientCommand::Usage { client, args } => {
            super::usage::usage(&connect(&client)?, client.json, &args, p).await
        }
        ClientCommand::Presets { client, command } => {
            super::presets::presets(&connect(&client)?, client.json, command, p).await
        }
        ClientCommand::Webhooks { client, command } => {
            super::webhooks::webhooks(&connect(&client)?, client.json, command, p).await
        }
        ClientCommand::Diff {
            client,
            job_id,
            paths,
        } => super::history::diff(&connect(&client)?, client.json, &job_id, &paths, p).await,
        ClientCommand::Fork {
            client,
            job_id,
            before,
            labels,
        } => {
            let conn = connect(&client)?;
            super::history::fork(&conn, client.json, &job_id, before, &labels, p).await
        }
        ClientCommand::Rewind {
            client,
            session_id,
            job_id,
            before,
        } => {
            let conn = connect(&client)?;
            super::history::rewind(&conn, client.json, &session_id, &job_id, before, p).await
        }
    }
}

fn connect(c: &ClientArgs) -> Result<Conn, CliError> {
    Conn::new(&c.server, c.api_key.as_deref())
}

fn outcome(state: i32) -> i32 {
    if state == pb::JobState::Succeeded as i32 {
        exit::OK
    } else {
        exit::JOB_FAILED
    }
}

async fn create_session(
    conn: &Conn,
    ttl: Option<u32>,
    labels: &[(String, String)],
) -> Result<pb::Session, CliError> {
    conn.sessions()
        .create_session(pb::CreateSessionRequest {
            files: vec![],
            ttl_seconds: ttl.unwrap_or(0),
            labels: labels.iter().cloned().collect(),
            request_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .map_err(CliError::rpc("creating the session"))?
        .into_inner()
        .session
        .ok_or_else(|| CliError::Local("the server returned no session".into()))
}

async fn upload_dir(
    conn: &Conn,
    session_id: &str,
    dir: &Path,
    excludes: &[String],
    json: bool,
    p: &mut Printer,
) -> Result<(), CliError> {
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "--dir {}: not a directory",
            dir.display()
        )));
    }
    if !json {
        p.spin(&format!("uploading {}", dir.display()));
    }
    let sum = transfer::upload(&mut conn.files(), session_id, dir, "", excludes).await?;
    for s in &sum.skipped {
        p.err(&format!("agentd: skipped {s}")).await;
    }
    if json {
        p.json(
            &json!({"type": "upload", "session_id": session_id, "files": sum.files,
                       "bytes": sum.bytes, "skipped": sum.skipped}),
        )
        .await;
    } else {
        p.line(&p.style().dim(&format!(
            "uploaded {} files ({} bytes) from {}",
            sum.files,
            sum.bytes,
            dir.display()
        )))
        .await;
    }
    Ok(())
}

async fn run(conn: &Conn, a: &RunArgs, p: &mut Printer) -> Result<i32, CliError> {
    if let Some(out) = &a.out
        && out.exists()
        && !out.is_dir()
    {
        return Err(CliError::Usage(format!(
            "--out {}: not a directory",
            out.display()
        )));
    }
    let json = a.client.json;
    let created = a.session.is_none();
    let session_id = match &a.session {
        Some(id) => id.clone(),
        None => {
            let s = create_session(conn, a.ttl, &a.labels).await?;
            if json {
                p.json(&render::session_json(&s)).await;
            } else {
                p.line(&p.style().dim(&format!("session {}", s.session_id)))
                    .await;
            }
            s.session_id
        }
    };
    let job = match submit(conn, a, &session_id, json, p).await {
        Ok(job) => job,
        Err(e) => {
            // A session this command created for a job that never started is useless: remove it
            // rather than leave it to its TTL. Best effort; the original error is what matters.
            if created {
                let _ = conn
                    .sessions()
                    .delete_session(pb::DeleteSessionRequest {
                        session_id: session_id.clone(),
                    })
                    .await;
            }
            return Err(e);
        }
    };
    if json {
        p.json(&render::job_json(&job)).await;
    } else {
        p.line(
            &p.style()
                .dim(&format!("job {} ({})", job.job_id, job.agent)),
        )
        .await;
    }
    if a.detach {
        if !json {
            p.line(&job.job_id).await;
        }
        return Ok(exit::OK);
    }
    let run = RunFollow {
        asker: a
            .ask
            .then(|| Asker::start(conn.clone(), job.job_id.clone())),
    };
    let fin = follow(conn, &job.job_id, 0, None, json, Some(&run), p).await?;
    let Some(fin) = fin else {
        return Err(CliError::Local(format!(
            "the event stream of job {} ended before the job finished",
            job.job_id
        )));
    };
    let code = outcome(fin.state);
    if code == exit::OK
        && let Some(out) = &a.out
    {
        download_outputs(conn, &session_id, &job.job_id, out, json, p).await?;
    } else if code == exit::OK && !json {
        let changes = outputs(conn, &session_id, &job.job_id).await?;
        if !changes.is_empty() {
            p.line(&p.style().dim(&format!(
                "{} file(s) changed; `--out DIR` downloads them, or `agentd files get {session_id} PATH`",
                changes.len()
            )))
            .await;
        }
    }
    if !json {
        p.line(&p.style().dim(&format!(
            "session {session_id} · job {} · continue with `agentd run --session {session_id} \"...\"`",
            job.job_id
        )))
        .await;
    }
    Ok(code)
}

/// Uploads `--dir` (if any) and submits the job.
async fn submit(
    conn: &Conn,
    a: &RunArgs,
    session_id: &str,
    json: bool,
    p: &mut Printer,
) -> Result<pb::Job, CliError> {
    if let Some(dir) = &a.dir {
        upload_dir(conn, session_id, dir, &a.exclude, json, p).await?;
    }
    conn.jobs()
        .submit_job(pb::SubmitJobRequest {
            session_id: session_id.to_owned(),
            agent: a.agent.clone().unwrap_or_default(),
            prompt: a.prompt.clone(),
            model: a.model.clone().unwrap_or_default(),
            timeout_seconds: a.timeout.unwrap_or(0),
            env: a.env.iter().cloned().collect(),
            allowed_tools: a.allowed_tools.clone(),
            max_turns: a.max_turns.unwrap_or(0),
            append_system_prompt: a.append_system_prompt.clone().unwrap_or_default(),
            request_id: uuid::Uuid::new_v4().to_string(),
            permission_mode: if a.ask {
                "ask".to_owned()
            } else {
                a.permission_mode.clone().unwrap_or_default()
            },
            max_cost_usd: a.max_cost_usd.unwrap_or(0.0),
            max_tokens: a.max_tokens.unwrap_or(0),
            preset: a.preset.clone().unwrap_or_default(),
            variables: a.vars.iter().cloned().collect(),
            mcp_servers: a.mcp_servers.clone(),
            subagents: a.subagents.clone(),
            skills: a.skills.clone(),
            ..Default::default()
        })
        .await
        .map_err(CliError::rpc("submitting the job"))?
        .into_inner()
        .job
        .ok_or_else(|| CliError::Local("the server returned no job".into()))
}

/// Every change of a job, page after page.
async fn outputs(
    conn: &Conn,
    session_id: &str,
    job_id: &str,
) -> Result<Vec<pb::FileChange>, CliError> {
    let mut changes = Vec::new();
    let mut request = pb::GetJobOutputsRequest {
        session_id: session_id.to_owned(),
        job_id: job_id.to_owned(),
        ..Default::default()
    };
    loop {
        let page = conn
            .files()
            .get_job_outputs(request.clone())
            .await
            .map_err(CliError::rpc("listing the job's outputs"))?
            .into_inner();
        changes.extend(page.changes);
        if page.next_page_token.is_empty() {
            return Ok(changes);
        }
        // The later pages are of the job the first one answered for.
        request.job_id = page.job_id;
        request.page_token = page.next_page_token;
    }
}

/// Bytes of paths asked for in one DownloadArchive request: a request must fit the 4 MiB the
/// server accepts, and a job may have changed tens of thousands of files.
const ARCHIVE_PATH_BYTES: usize = 1 << 20;

/// `paths` cut into the path lists of successive DownloadArchive requests.
fn archive_batches(paths: Vec<String>) -> Vec<Vec<String>> {
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0;
    for p in paths {
        let len = p.len() + 8; // the field's tag and length
        match batches.last_mut() {
            Some(b) if bytes + len <= ARCHIVE_PATH_BYTES => b.push(p),
            _ => {
                bytes = 0;
                batches.push(vec![p]);
            }
        }
        bytes += len;
    }
    batches
}

async fn download_outputs(
    conn: &Conn,
    session_id: &str,
    job_id: &str,
    out: &Path,
    json: bool,
    p: &mut Printer,
) -> Result<(), CliError> {
    let changes = outputs(conn, session_id, job_id).await?;
    let mut wanted = Vec::new();
    for c in changes {
        let kind = render::change_name(c.kind);
        let regular = c
            .file
            .as_ref()
            .is_some_and(|f| f.r#type == pb::FileType::Regular as i32);
        if c.kind != pb::ChangeKind::Deleted as i32 && regular {
            // Checked before anything is requested: a path that cannot land inside `out`.
            transfer::local_path(out, &c.path)?;
            wanted.push((c.path, kind));
            continue;
        }
        // Deletions are reported, never applied locally: the output directory is the user's.
        if json {
            p.json(&json!({"type": "output", "path": c.path, "change": kind, "downloaded": false}))
                .await;
        } else {
            p.line(&format!("  {kind:<8} {} (not downloaded)", c.path))
                .await;
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let kinds: std::collections::HashMap<String, &str> = wanted.iter().cloned().collect();
    let paths = wanted.into_iter().map(|(p, _)| p).collect();
    let mut written = Vec::new();
    for batch in archive_batches(paths) {
        written.extend(archive::unpack_into(&mut conn.files(), session_id, batch, out).await?);
    }
    for (path, dest, size) in written {
        let kind = kinds.get(&path).copied().unwrap_or("modified");
        if json {
            p.json(
                &json!({"type": "output", "path": path, "change": kind, "downloaded": true,
                           "local_path": dest.display().to_string(), "size": size}),
            )
            .await;
        } else {
            p.line(&format!("  {kind:<8} {path} → {}", dest.display()))
                .await;
        }
    }
    Ok(())
}

/// What following the job of `agentd run` adds to following any job.
struct RunFollow {
    asker: Option<Asker>,
}

/// Prints a job's events after `after`, reattaching from the last seq seen on transport errors.
/// Stops after the `finished` event (returned), or once `until` is reached. Following the job of
/// `agentd run` (`run` set), a first Ctrl-C cancels the job (the stream goes on to show how it
/// ends) and a second one gives up, and `--ask` answers its permission requests.
async fn follow(
    conn: &Conn,
    job_id: &str,
    after: u64,
    until: Option<u64>,
    json: bool,
    run: Option<&RunFollow>,
    p: &mut Printer,
) -> Result<Option<pb::JobFinished>, CliError> {
    let cancel_on_interrupt = run.is_some();
    let asker = run.and_then(|r| r.asker.as_ref());
    let mut last = after;
    if until.is_some_and(|u| u <= last) {
        return Ok(None);
    }
    let mut started_at: Option<prost_types::Timestamp> = None;
    let mut last_progress = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut tick = tokio::time::interval(SPINNER_TICK);
    let mut cancelled = false;
    let mut jobs = conn.jobs();
    if !json {
        p.spin("waiting for the agent");
    }
    loop {
        let attempt = async {
            jobs.stream_job_events(pb::StreamJobEventsRequest {
                job_id: job_id.to_owned(),
                after_seq: last,
            })
            .await
        };
        let mut stream = match attempt.await {
            Ok(s) => s.into_inner(),
            Err(st) if is_transport(&st) && last_progress.elapsed() < REATTACH_FOR => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(st) => return Err(CliError::rpc(format!("streaming job {job_id}"))(st)),
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tick.tick(), if p.spinning() => { p.tick().await; continue; }
                r = tokio::signal::ctrl_c(), if cancel_on_interrupt => {
                    if r.is_err() || cancelled {
                        return Err(CliError::Interrupted);
                    }
                    cancelled = true;
                    p.err(&format!("agentd: cancelling job {job_id} (Ctrl-C again to stop waiting)")).await;
                    jobs.cancel_job(pb::CancelJobRequest { job_id: job_id.to_owned() })
                        .await
                        .map_err(CliError::rpc(format!("cancelling job {job_id}")))?;
                    continue;
                }
            };
            match msg {
                Ok(Some(m)) => {
                    last_progress = Instant::now();
                    backoff = Duration::from_millis(200);
                    for e in m.events {
                        // After a reattach the server may repeat what we already printed.
                        if e.seq <= last {
                            continue;
                        }
                        last = e.seq;
                        if let Some(pb::job_event::Kind::Started(_)) = &e.kind {
                            started_at = e.time;
                        }
                        if let (Some(asker), Some(pb::job_event::Kind::PermissionRequest(r))) =
                            (asker, &e.kind)
                        {
                            asker.offer(r);
                        }
                        if json {
                            p.json(&render::event_json(job_id, &e)).await;
                        } else if let Some(pb::job_event::Kind::Finished(f)) = &e.kind {
                            let d = render::between(started_at.as_ref(), e.time.as_ref());
                            let s = render::summary(f, d, p.style());
                            p.line(&s).await;
                        } else {
                            match render::human_event(&e, p.style()) {
                                Some(Piece::Out(s)) => p.out(&s).await,
                                Some(Piece::Err(s)) => p.err(&s).await,
                                None => {}
                            }
                            p.spin("thinking");
                        }
                        if let Some(pb::job_event::Kind::Finished(f)) = e.kind {
                            return Ok(Some(f));
                        }
                        if until.is_some_and(|u| last >= u) {
                            return Ok(None);
                        }
                    }
                }
                // The server ends the stream after `finished`; ending earlier means it went away.
                Ok(None) => break,
                Err(st) if is_transport(&st) => break,
                Err(st) => return Err(CliError::rpc(format!("streaming job {job_id}"))(st)),
            }
        }
        if last_progress.elapsed() >= REATTACH_FOR {
            return Err(CliError::Rpc {
                what: format!("streaming job {job_id}"),
                status: tonic::Status::unavailable(format!(
                    "no events for {}s after the connection broke (last seq {last})",
                    REATTACH_FOR.as_secs()
                )),
            });
        }
        if !json {
            p.spin("reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn get_job(conn: &Conn, job_id: &str) -> Result<pb::Job, CliError> {
    conn.jobs()
        .get_job(pb::GetJobRequest {
            job_id: job_id.to_owned(),
        })
        .await
        .map_err(CliError::rpc(format!("getting job {job_id}")))?
        .into_inner()
        .job
        .ok_or_else(|| CliError::Local("the server returned no job".into()))
}

async fn sessions(
    conn: &Conn,
    json: bool,
    cmd: SessionsCommand,
    p: &mut Printer,
) -> Result<i32, CliError> {
    let mut client = conn.sessions();
    match cmd {
        SessionsCommand::Ls { labels } => {
            let first = pb::ListSessionsRequest {
                page_size: 1000,
                label_filter: labels.iter().cloned().collect(),
                ..Default::default()
            };
            let all = all_pages("listing sessions", first, |r| {
                let mut client = client.clone();
                async move { client.list_sessions(r).await }
            })
            .await?;
            let header = [
                "SESSION", "CREATED", "EXPIRES", "FILES", "BYTES", "JOBS", "RUNNING", "LABELS",
            ];
            p.listing(json, &all, render::session_json, &header, |s| {
                let mut labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                vec![
                    s.session_id.clone(),
                    render::fmt_time(s.create_time.as_ref()),
                    render::fmt_time(s.expire_time.as_ref()),
                    s.file_count.to_string(),
                    s.total_bytes.to_string(),
                    s.job_count.to_string(),
                    render::or_dash(&s.running_job_id),
                    labels.join(","),
                ]
            })
            .await;
        }
        SessionsCommand::Get { session_id } => {
            let s = client
                .get_session(pb::GetSessionRequest {
                    session_id: session_id.clone(),
                })
                .await
                .map_err(CliError::rpc(format!("getting session {session_id}")))?
                .into_inner()
                .session
                .ok_or_else(|| CliError::Local("the server returned no session".into()))?;
            if json {
                p.json(&render::session_json(&s)).await;
            } else {
                p.out(&render::session_details(&s)).await;
            }
        }
        SessionsCommand::Create {
            dir,
            exclude,
            ttl,
            labels,
        } => {
            let s = create_session(conn, ttl, &labels).await?;
            if let Some(dir) = dir {
                if json {
                    p.json(&render::session_json(&s)).await;
                }
                upload_dir(conn, &s.session_id, &dir, &exclude, json, p).await?;
            } else if json {
                p.json(&render::session_json(&s)).await;
            }
            if !json {
                p.line(&s.session_id).await;
            }
        }
        SessionsCommand::Rm { session_id } => {
            let r = client
                .delete_session(pb::DeleteSessionRequest {
                    session_id: session_id.clone(),
                })
                .await
                .map_err(CliError::rpc(format!("deleting session {session_id}")))?
                .into_inner();
            if json {
                p.json(&json!({"type": "deleted", "session_id": session_id,
                               "cancelled_jobs": r.cancelled_jobs}))
                    .await;
            } else {
                p.line(&format!(
                    "deleted session {session_id} ({} job(s) cancelled)",
                    r.cancelled_jobs
                ))
                .await;
            }
        }
    }
    Ok(exit::OK)
}

async fn jobs(conn: &Conn, json: bool, cmd: JobsCommand, p: &mut Printer) -> Result<i32, CliError> {
    match cmd {
        JobsCommand::Ls { session_id, states } => {
            let client = conn.jobs();
            let what = format!("listing the jobs of {session_id}");
            let first = pb::ListJobsRequest {
                session_id,
                page_size: 1000,
                states,
                ..Default::default()
            };
            let all = all_pages(&what, first, |r| {
                let mut client = client.clone();
                async move { client.list_jobs(r).await }
            })
            .await?;
            let header = ["JOB", "STATE", "AGENT", "CREATED", "DURATION", "PROMPT"];
            p.listing(json, &all, render::job_json, &header, |j| {
                vec![
                    j.job_id.clone(),
                    render::state_name(j.state).to_owned(),
                    j.agent.clone(),
                    render::fmt_time(j.create_time.as_ref()),
                    render::between(j.start_time.as_ref(), j.end_time.as_ref())
                        .map(render::fmt_duration)
                        .unwrap_or_else(|| "-".into()),
                    render::one_line(&j.prompt, 50),
                ]
            })
            .await;
            Ok(exit::OK)
        }
        JobsCommand::Get { job_id } => {
            let j = get_job(conn, &job_id).await?;
            if json {
                p.json(&render::job_json(&j)).await;
            } else {
                p.out(&render::job_details(&j)).await;
            }
            Ok(exit::OK)
        }
        JobsCommand::Cancel { job_id } => {
            let j = conn
                .jobs()
                .cancel_job(pb::CancelJobRequest {
                    job_id: job_id.clone(),
                })
                .await
                .map_err(CliError::rpc(format!("cancelling job {job_id}")))?
                .into_inner()
                .job
                .ok_or_else(|| CliError::Local("the server returned no job".into()))?;
            if json {
                p.json(&render::job_json(&j)).await;
            } else {
                p.line(&format!(
                    "cancelling job {job_id} (state {})",
                    render::state_name(j.state)
                ))
                .await;
            }
            Ok(exit::OK)
        }
        JobsCommand::Logs {
            job_id,
            follow: f,
            after_seq,
        } => {
            let until = if f {
                None
            } else {
                Some(get_job(conn, &job_id).await?.last_seq)
            };
            let fin = follow(conn, &job_id, after_seq, until, json, None, p).await?;
            Ok(match fin {
                Some(fin) if f => outcome(fin.state),
                _ => exit::OK,
            })
        }
        JobsCommand::Watch {
            session,
            labels,
            agents,
            states,
            after_cursor,
            events,
        } => {
            let args = super::watch::WatchArgs {
                session,
                labels,
                agents,
                states,
                after_cursor,
                events,
            };
            super::watch::watch(conn, json, args, p).await
        }
        JobsCommand::Wait { job_id, timeout } => {
            super::watch::wait(conn, json, &job_id, timeout, p).await
        }
    }
}

async fn files(
    conn: &Conn,
    json: bool,
    cmd: FilesCommand,
    p: &mut Printer,
) -> Result<i32, CliError> {
    let mut client = conn.files();
    match cmd {
        FilesCommand::Ls {
            session_id,
            path,
            sha256,
        } => {
            let what = format!("listing files of {session_id}");
            let first = pb::ListFilesRequest {
                session_id,
                path,
                include_sha256: sha256,
                page_size: 10_000,
                ..Default::default()
            };
            let all = all_pages(&what, first, |r| {
                let mut client = client.clone();
                async move { client.list_files(r).await }
            })
            .await?;
            let mut header = vec!["TYPE", "MODE", "SIZE", "MODIFIED"];
            if sha256 {
                header.push("SHA256");
            }
            header.push("PATH");
            p.listing(json, &all, render::file_json, &header, |f| {
                render::file_row(f, sha256)
            })
            .await;
        }
        FilesCommand::Get {
            session_id,
            path,
            output,
        } => {
            let dest = match output {
                Some(o) if o.as_os_str() == "-" => Dest::Stdout,
                Some(o) if o.is_dir() => Dest::File(
                    o.join(
                        Path::new(&path)
                            .file_name()
                            .ok_or_else(|| CliError::Usage(format!("{path:?} names no file")))?,
                    ),
                ),
                Some(o) => Dest::File(o),
                None => Dest::File(PathBuf::from(Path::new(&path).file_name().ok_or_else(
                    || CliError::Usage(format!("{path:?} names no file; give -o DEST")),
                )?)),
            };
            let size = transfer::download(&mut client, &session_id, &path, &dest).await?;
            if let Dest::File(d) = &dest {
                if json {
                    p.json(&json!({"type": "download", "path": path,
                                   "local_path": d.display().to_string(), "size": size}))
                        .await;
                } else {
                    p.err(&format!("{path} → {} ({size} bytes)", d.display()))
                        .await;
                }
            }
        }
        FilesCommand::Put {
            session_id,
            local,
            remote,
            exclude,
        } => {
            let sum = transfer::upload(
                &mut client,
                &session_id,
                &local,
                remote.as_deref().unwrap_or(""),
                &exclude,
            )
            .await?;
            for s in &sum.skipped {
                p.err(&format!("agentd: skipped {s}")).await;
            }
            if json {
                p.json(
                    &json!({"type": "upload", "session_id": session_id, "files": sum.files,
                               "bytes": sum.bytes, "skipped": sum.skipped}),
                )
                .await;
            } else {
                p.line(&format!(
                    "uploaded {} files ({} bytes)",
                    sum.files, sum.bytes
                ))
                .await;
            }
        }
        FilesCommand::Archive {
            session_id,
            paths,
            output,
            format,
        } => {
            let format = match format.as_deref() {
                None => archive::format_for(&output),
                Some("tar") => pb::ArchiveFormat::Tar,
                Some("tar.gz" | "tgz") => pb::ArchiveFormat::TarGz,
                Some("zip") => pb::ArchiveFormat::Zip,
                Some(other) => {
                    return Err(CliError::Usage(format!(
                        "--format {other:?}: use tar, tar.gz or zip"
                    )));
                }
            };
            let size = archive::save(&mut client, &session_id, paths, format, &output).await?;
            if output.as_os_str() != "-" {
                if json {
                    p.json(&json!({"type": "archive", "session_id": session_id,
                                   "local_path": output.display().to_string(), "size": size}))
                        .await;
                } else {
                    p.err(&format!(
                        "{session_id} → {} ({size} bytes)",
                        output.display()
                    ))
                    .await;
                }
            }
        }
        FilesCommand::Rm {
            session_id,
            path,
            recursive,
        } => {
            let r = client
                .delete_file(pb::DeleteFileRequest {
                    session_id: session_id.clone(),
                    path: path.clone(),
                    recursive,
                })
                .await
                .map_err(CliError::rpc(format!("deleting {path}")))?
                .into_inner();
            if json {
                p.json(&json!({"type": "deleted", "path": path,
                               "deleted_files": r.deleted_files}))
                    .await;
            } else {
                p.line(&format!("deleted {path} ({} file(s))", r.deleted_files))
                    .await;
            }
        }
    }
    Ok(exit::OK)
}

async fn agents(conn: &Conn, json: bool, p: &mut Printer) -> Result<i32, CliError> {
    let info = conn
        .info()
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .map_err(CliError::rpc("getting the server info"))?
        .into_inner();
    let header = [
        "AGENT",
        "KIND",
        "AVAILABLE",
        "VERSION",
        "COMMAND",
        "PROBLEM",
    ];
    let to_json = |a: &pb::AgentInfo| {
        json!({"type": "agent", "name": a.name, "kind": a.kind,
               "command": a.command, "available": a.available,
               "version": a.version, "problem": a.problem,
               "default": a.name == info.default_agent})
    };
    p.listing(json, &info.agents, to_json, &header, |a| {
        vec![
            if a.name == info.default_agent {
                format!("{} (default)", a.name)
            } else {
                a.name.clone()
            },
            a.kind.clone(),
            if a.available { "yes" } else { "no" }.into(),
            render::or_dash(&a.version),
            a.command.clone(),
            a.problem.clone(),
        ]
    })
    .await;
    if json {
        return Ok(exit::OK);
    }
    if let Some(l) = &info.limits {
        p.line(&p.style().dim(&format!(
            "agentd {} · {} concurrent jobs · job timeout {}s (max {}s) · session TTL {}s (max {}s)",
            info.version,
            l.max_concurrent_jobs,
            l.job_timeout_default_seconds,
            l.job_timeout_max_seconds,
            l.session_ttl_default_seconds,
            l.session_ttl_max_seconds
        )))
        .await;
    }
    Ok(exit::OK)
}

/// A listing request that pages with a token.
trait PagedRequest: Clone {
    fn set_page_token(&mut self, token: String);
}

/// A listing's answer: one page of items and the next page's token (empty after the last).
trait Page {
    type Item;
    fn into_page(self) -> (Vec<Self::Item>, String);
}

macro_rules! paged {
    ($request:ident, $response:ident, $items:ident: $item:ident) => {
        impl PagedRequest for pb::$request {
            fn set_page_token(&mut self, token: String) {
                self.page_token = token;
            }
        }

        impl Page for pb::$response {
            type Item = pb::$item;
            fn into_page(self) -> (Vec<pb::$item>, String) {
                (self.$items, self.next_page_token)
            }
        }
    };
}

paged!(ListSessionsRequest, ListSessionsResponse, sessions: Session);
paged!(ListJobsRequest, ListJobsResponse, jobs: Job);
paged!(ListFilesRequest, ListFilesResponse, files: FileInfo);

/// Every item of a paged listing: `call` sends `first`, then the same request with each next
/// page's token until a page comes without one.
async fn all_pages<Q, P, F, Fut>(
    what: &str,
    first: Q,
    mut call: F,
) -> Result<Vec<P::Item>, CliError>
where
    Q: PagedRequest,
    P: Page,
    F: FnMut(Q) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<P>, tonic::Status>>,
{
    let mut all = Vec::new();
    let mut request = first;
    loop {
        let (items, next) = call(request.clone())
            .await
            .map_err(CliError::rpc(what))?
            .into_inner()
            .into_page();
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        request.set_page_token(next);
    }
}
