//! `agentd jobs watch` (one line per change of the caller's jobs, reattaching from the last
//! cursor when the connection breaks) and `agentd jobs wait` (issue #19).

use super::conn::{CliError, Conn, is_transport};
use super::exit;
use super::render::{self, Printer};
use crate::pb;
use serde_json::json;
use std::time::{Duration, Instant};

/// How long `watch` keeps trying to reattach without receiving anything before giving up.
const REATTACH_FOR: Duration = Duration::from_secs(60);

/// What `agentd jobs watch` follows.
pub struct WatchArgs {
    pub session: Option<String>,
    pub labels: Vec<(String, String)>,
    pub agents: Vec<String>,
    pub states: Vec<i32>,
    pub after_cursor: Option<u64>,
    /// Ask for each change's events (`include_events`) and show them.
    pub events: bool,
}

fn change_json(c: &pb::JobChange, events: bool) -> serde_json::Value {
    let job = c.job.as_ref().map(render::job_json);
    let mut v =
        json!({ "cursor": c.cursor, "time": render::fmt_time(c.time.as_ref()), "job": job });
    if events {
        let id = c.job.as_ref().map_or("", |j| j.job_id.as_str());
        let evs: Vec<_> = c.events.iter().map(|e| render::event_json(id, e)).collect();
        v["events"] = json!(evs);
        v["events_after_seq"] = json!(c.events_after_seq);
        v["events_truncated"] = json!(c.events_truncated);
    }
    v
}

/// A change's events under its row, one line each; a capped list says how to read the rest.
fn event_rows(c: &pb::JobChange, st: render::Style) -> Vec<String> {
    let mut out: Vec<String> = c
        .events
        .iter()
        .filter_map(|e| {
            let text = match render::human_event(e, st)? {
                render::Piece::Out(s) | render::Piece::Err(s) => s,
            };
            Some(format!(
                "{:>14}  {}",
                e.seq,
                render::one_line(text.trim_end(), 100)
            ))
        })
        .collect();
    if c.events_truncated {
        let after = c.events.last().map_or(c.events_after_seq, |e| e.seq);
        let job = c.job.as_ref().map_or("", |j| j.job_id.as_str());
        out.push(format!(
            "{:>14}  … more: agentd jobs logs {job} --after-seq {after}",
            ""
        ));
    }
    out
}

fn change_row(c: &pb::JobChange) -> String {
    let Some(j) = &c.job else {
        return format!("{:>8}  -", c.cursor);
    };
    let detail = if j.error_message.is_empty() {
        render::one_line(&j.result, 60)
    } else {
        render::one_line(&j.error_message, 60)
    };
    format!(
        "{:>8}  {}  {:<26}  {:<10}  {:<10}  {}",
        c.cursor,
        render::fmt_time(c.time.as_ref()),
        j.job_id,
        render::state_name(j.state),
        j.agent,
        detail
    )
}

/// Follows until interrupted (or the server refuses); never ends by itself.
pub async fn watch(
    conn: &Conn,
    json: bool,
    args: WatchArgs,
    p: &mut Printer,
) -> Result<i32, CliError> {
    let mut cursor = args.after_cursor;
    let mut jobs = conn.jobs();
    let mut last_progress = Instant::now();
    let mut backoff = Duration::from_millis(200);
    if !json {
        p.line("  CURSOR  TIME                 JOB                         STATE       AGENT       RESULT")
            .await;
    }
    loop {
        let req = pb::WatchJobsRequest {
            session_id: args.session.clone().unwrap_or_default(),
            labels: args.labels.iter().cloned().collect(),
            agents: args.agents.clone(),
            states: args.states.clone(),
            after_cursor: cursor,
            include_events: args.events,
        };
        let mut stream = match jobs.watch_jobs(req).await {
            Ok(s) => s.into_inner(),
            Err(st) if is_transport(&st) && last_progress.elapsed() < REATTACH_FOR => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(st) => return Err(CliError::rpc(String::from("watching jobs"))(st)),
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
            };
            match msg {
                Ok(Some(m)) => {
                    last_progress = Instant::now();
                    backoff = Duration::from_millis(200);
                    for c in &m.changes {
                        if json {
                            p.json(&change_json(c, args.events)).await;
                            continue;
                        }
                        p.line(&change_row(c)).await;
                        for row in event_rows(c, p.style()) {
                            p.line(&row).await;
                        }
                    }
                    cursor = Some(m.cursor);
                }
                Ok(None) => break,
                Err(st) if is_transport(&st) => break,
                Err(st) => return Err(CliError::rpc(String::from("watching jobs"))(st)),
            }
        }
    }
}

/// Waits for the job to be final and prints it; the exit code says how it ended, and a wait
/// that timed out exits with `exit::OTHER`.
pub async fn wait(
    conn: &Conn,
    json: bool,
    job_id: &str,
    timeout: u32,
    p: &mut Printer,
) -> Result<i32, CliError> {
    let r = conn
        .jobs()
        .wait_job(pb::WaitJobRequest {
            job_id: job_id.to_owned(),
            timeout_seconds: timeout,
        })
        .await
        .map_err(CliError::rpc(format!("waiting for job {job_id}")))?
        .into_inner();
    let job = r
        .job
        .ok_or_else(|| CliError::Local("the server returned no job".into()))?;
    if json {
        p.json(&json!({ "timed_out": r.timed_out, "job": render::job_json(&job) }))
            .await;
    } else {
        p.out(&render::job_details(&job)).await;
        if r.timed_out {
            p.line(&format!(
                "job {job_id} is not finished yet (wait timed out)"
            ))
            .await;
        }
    }
    Ok(if r.timed_out {
        exit::OTHER
    } else if job.state == pb::JobState::Succeeded as i32 {
        exit::OK
    } else {
        exit::JOB_FAILED
    })
}
