//! `agentd diff JOB`, `agentd fork JOB`, `agentd rewind SESSION JOB` (issue #18): a job's unified
//! diff from its snapshots, a new session from one side of a job, a session put back there.

use super::conn::{CliError, Conn};
use super::exit;
use super::render::{self, Printer};
use crate::pb;
use serde_json::json;

fn point(before: bool) -> i32 {
    if before {
        pb::SnapshotPoint::Before as i32
    } else {
        pb::SnapshotPoint::After as i32
    }
}

/// Prints the job's unified diff (the text as the server streams it; `--json`: one object per
/// chunk).
pub async fn diff(
    conn: &Conn,
    json: bool,
    job_id: &str,
    paths: &[String],
    p: &mut Printer,
) -> Result<i32, CliError> {
    let mut stream = conn
        .files()
        .get_job_diff(pb::GetJobDiffRequest {
            job_id: job_id.to_owned(),
            paths: paths.to_vec(),
            context_lines: None,
            max_bytes: 0,
        })
        .await
        .map_err(CliError::rpc("getting the diff"))?
        .into_inner();
    while let Some(m) = stream
        .message()
        .await
        .map_err(CliError::rpc("reading the diff"))?
    {
        let text = String::from_utf8_lossy(&m.chunk);
        if json {
            p.json(&json!({"type": "diff", "job_id": job_id, "text": text,
                           "truncated": m.truncated}))
                .await;
        } else {
            p.out(&text).await;
        }
    }
    Ok(exit::OK)
}

/// Creates a session from one side of a job and prints it.
pub async fn fork(
    conn: &Conn,
    json: bool,
    job_id: &str,
    before: bool,
    labels: &[(String, String)],
    p: &mut Printer,
) -> Result<i32, CliError> {
    let r = conn
        .sessions()
        .fork_session(pb::ForkSessionRequest {
            job_id: job_id.to_owned(),
            point: point(before),
            labels: labels.iter().cloned().collect(),
            ttl_seconds: 0,
        })
        .await
        .map_err(CliError::rpc("forking the session"))?
        .into_inner();
    let s = r.session.unwrap_or_default();
    if json {
        let mut v = render::session_json(&s);
        v["parent_session_id"] = json!(r.parent_session_id);
        p.json(&v).await;
    } else {
        p.line(&s.session_id).await;
    }
    Ok(exit::OK)
}

/// Puts a session back to one side of a job and prints which jobs it went back past.
pub async fn rewind(
    conn: &Conn,
    json: bool,
    session_id: &str,
    job_id: &str,
    before: bool,
    p: &mut Printer,
) -> Result<i32, CliError> {
    let r = conn
        .sessions()
        .rewind_session(pb::RewindSessionRequest {
            session_id: session_id.to_owned(),
            job_id: job_id.to_owned(),
            point: point(before),
        })
        .await
        .map_err(CliError::rpc("rewinding the session"))?
        .into_inner();
    if json {
        p.json(
            &json!({"type": "rewound", "session_id": session_id, "job_id": job_id,
                       "before": before, "rewound_job_ids": r.rewound_job_ids}),
        )
        .await;
    } else {
        let side = if before { "before" } else { "after" };
        p.line(&format!(
            "session {session_id} is back {side} job {job_id}; rewound past: {}",
            if r.rewound_job_ids.is_empty() {
                "none".to_owned()
            } else {
                r.rewound_job_ids.join(", ")
            }
        ))
        .await;
    }
    Ok(exit::OK)
}
