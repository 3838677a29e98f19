//! Two-way control (issue #17): a permission request answered by the caller, until the tool ran.
//! Through agentd, the clock starts when the caller receives the `permission_request` event and
//! stops when it receives the tool's `tool_result` event (answer RPC → controller → the agent's
//! stdin → tool → stdout → event log → stream). The baseline is the same agent (the stand-in
//! Claude, speaking Claude Code's stream-json control protocol) driven directly over its pipes,
//! from its `control_request` line to its tool result line, in the same run.

use crate::harness::{Agentd, Env, TempDir, mono_ns, ms, percentile, succeeded};
use crate::report::{Goal, Metric};
use agentd::pb;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A prompt of `n` file writes: `n` permission requests, one after the other.
fn prompt(n: usize) -> String {
    (0..n)
        .map(|i| format!("write f{i}.txt x"))
        .collect::<Vec<_>>()
        .join(" ; ")
}

pub async fn control(env: &Env) -> Result<Vec<Metric>> {
    let n = env.size(20, 200);
    let fake = env.repo.join("tests/fixtures/fake-claude");
    let mut ours = through_agentd(env, &fake, n).await?;
    let mut base = direct(&fake, n).await?;
    let p = |v: &mut Vec<u64>, q: f64| ms(percentile(v, q));
    Ok(vec![
        Metric::new("control.p50", p(&mut ours, 50.0), "ms")
            .baseline(p(&mut base, 50.0))
            .goal(Goal::OverheadAtMost(10.0)),
        Metric::new("control.p99", p(&mut ours, 99.0), "ms")
            .baseline(p(&mut base, 99.0))
            .goal(Goal::OverheadAtMost(50.0)),
    ])
}

/// Answers every request of one `ask` job as soon as it is seen; returns the round trips in ns.
async fn through_agentd(env: &Env, fake: &Path, n: usize) -> Result<Vec<u64>> {
    let config = format!(
        "default_agent = \"claude\"\n[agents.claude]\nkind = \"claude\"\ncommand = {:?}\n",
        fake.display().to_string()
    );
    let a = Agentd::start_in(&std::env::temp_dir(), env, &config, &[])?;
    let mut c = a.clients().await?;
    let session = c.session().await?;
    let job = c
        .jobs
        .submit_job(pb::SubmitJobRequest {
            session_id: session,
            prompt: prompt(n),
            permission_mode: "ask".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .context("no job in the answer")?
        .job_id;
    let mut s = c.stream(&job).await?;
    let mut asked_at = None;
    let mut trips = Vec::with_capacity(n);
    while let Some(msg) = s.message().await? {
        for e in msg.events {
            match e.kind {
                Some(pb::job_event::Kind::PermissionRequest(r)) => {
                    asked_at = Some(mono_ns());
                    c.jobs
                        .respond_to_permission(pb::RespondToPermissionRequest {
                            job_id: job.clone(),
                            request_id: r.request_id,
                            allow: true,
                            message: String::new(),
                        })
                        .await?;
                }
                Some(pb::job_event::Kind::ToolResult(_)) => {
                    if let Some(t0) = asked_at.take() {
                        trips.push(mono_ns() - t0);
                    }
                }
                Some(pb::job_event::Kind::Finished(f)) => {
                    succeeded(&f)?;
                    return counted(trips, n);
                }
                _ => {}
            }
        }
    }
    bail!("the stream of {job} ended before its finished event")
}

/// The same exchange with the agent spawned directly, its pipes driven by this process.
async fn direct(fake: &Path, n: usize) -> Result<Vec<u64>> {
    let dir = TempDir::new("control-direct")?;
    let mut child = tokio::process::Command::new(fake)
        .args(["-p", "--output-format", "stream-json", "--verbose"])
        .args([
            "--input-format",
            "stream-json",
            "--permission-prompt-tool",
            "stdio",
        ])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", fake.display()))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = json!({"type": "user", "message": {"role": "user", "content": prompt(n)}});
    stdin.write_all(format!("{first}\n").as_bytes()).await?;
    let mut asked_at = None;
    let mut trips = Vec::with_capacity(n);
    while let Some(line) = lines.next_line().await? {
        let v: Value = serde_json::from_str(&line).with_context(|| format!("line {line:?}"))?;
        match v["type"].as_str() {
            Some("control_request") => {
                asked_at = Some(mono_ns());
                let answer = json!({"type": "control_response", "response": {
                    "subtype": "success", "request_id": v["request_id"],
                    "response": {"behavior": "allow", "updatedInput": v["request"]["input"]}}});
                stdin.write_all(format!("{answer}\n").as_bytes()).await?;
            }
            Some("user") if line.contains("\"tool_result\"") => {
                if let Some(t0) = asked_at.take() {
                    trips.push(mono_ns() - t0);
                }
            }
            Some("result") => {
                drop(stdin);
                child.wait().await?;
                return counted(trips, n);
            }
            _ => {}
        }
    }
    bail!("the agent's output ended before its result")
}

fn counted(trips: Vec<u64>, n: usize) -> Result<Vec<u64>> {
    if trips.len() != n {
        bail!("{} round trips measured, {n} expected", trips.len());
    }
    Ok(trips)
}
