//! A job's life: start-up, the whole job, cancellation.

use crate::harness::{
    Agentd, Clients, Env, alive, mono_ns, ms, percentile, stamp, succeeded, text, tree,
};
use crate::report::{Goal, Metric};
use agentd::pb;
use anyhow::{Context, Result, bail, ensure};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// The baseline: tokio spawns the stand-in agent's `hello` directly. Returns (spawn → agent
/// running, spawn → first line read, spawn → exit).
async fn direct_hello(env: &Env) -> Result<(u64, u64, u64)> {
    let t0 = mono_ns();
    let mut child = tokio::process::Command::new(&env.me)
        .args(["__agent", "hello"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = lines.next_line().await?.context("no line")?;
    let t_line = mono_ns();
    let t_agent = stamp(&line, "h").context("not a hello line")?;
    while lines.next_line().await?.is_some() {}
    ensure!(child.wait().await?.success(), "hello failed");
    let t_exit = mono_ns();
    Ok((t_agent - t0, t_line - t0, t_exit - t0))
}

/// agentd with a session, after one unmeasured round each way, so that first-use costs (page
/// cache, connection) count for neither side.
async fn warmed(env: &Env) -> Result<(Agentd, Clients, String)> {
    let a = Agentd::start(env, &[])?;
    let mut c = a.clients().await?;
    let s = c.session().await?;
    direct_hello(env).await?;
    succeeded(&c.run(&s, "hello", |_, _| {}).await?)?;
    Ok((a, c, s))
}

pub async fn startup(env: &Env) -> Result<Vec<Metric>> {
    let n = env.size(5, 30);
    let (_agentd, mut c, s) = warmed(env).await?;
    let (mut submit, mut first, mut b_start, mut b_line) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        let (start, line, _) = direct_hello(env).await?;
        b_start.push(start);
        b_line.push(line);

        submit.push(c.submit_to_agent(&s).await?);

        let t0 = mono_ns();
        let mut at = None;
        succeeded(
            &c.run(&s, "hello", |now, evs| {
                if at.is_none() && evs.iter().any(|e| text(e).is_some()) {
                    at = Some(now);
                }
            })
            .await?,
        )?;
        first.push(at.context("no hello event")? - t0);
    }
    Ok(vec![
        Metric::new(
            "startup.submit_to_agent.p50",
            ms(percentile(&mut submit, 50.0)),
            "ms",
        )
        .baseline(ms(percentile(&mut b_start, 50.0)))
        .goal(Goal::RatioPlus(1.5, 1.0)),
        Metric::new(
            "startup.runjob_to_first_event.p50",
            ms(percentile(&mut first, 50.0)),
            "ms",
        )
        .baseline(ms(percentile(&mut b_line, 50.0)))
        .goal(Goal::RatioPlus(1.5, 1.0)),
    ])
}

pub async fn whole_job(env: &Env) -> Result<Vec<Metric>> {
    let n = env.size(5, 30);
    let (_agentd, mut c, s) = warmed(env).await?;
    let (mut ours, mut base) = (vec![], vec![]);
    for _ in 0..n {
        base.push(direct_hello(env).await?.2);
        let t0 = mono_ns();
        succeeded(&c.run(&s, "hello", |_, _| {}).await?)?;
        ours.push(mono_ns() - t0);
    }
    Ok(vec![
        Metric::new("job.whole.p50", ms(percentile(&mut ours, 50.0)), "ms")
            .baseline(ms(percentile(&mut base, 50.0)))
            .goal(Goal::OverheadAtMost(5.0)),
    ])
}

pub async fn cancel(env: &Env) -> Result<Vec<Metric>> {
    let n = env.size(3, 20);
    let a = Agentd::start(env, &[])?;
    let mut c = a.clients().await?;
    let s = c.session().await?;
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let job = c.submit(&s, "tree").await?;
        let mut stream = c
            .jobs
            .stream_job_events(pb::StreamJobEventsRequest {
                job_id: job.clone(),
                after_seq: 0,
            })
            .await?
            .into_inner();
        // Wait until the agent and its child run: the started event names the supervisor.
        let mut supervisor = None;
        let mut ready = false;
        while !ready {
            let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .context("tree agent not ready within 30 s")??
                .context("stream ended before the agent was ready")?;
            for e in &msg.events {
                match &e.kind {
                    Some(pb::job_event::Kind::Started(st)) => supervisor = Some(st.pid as u32),
                    Some(pb::job_event::Kind::Text(t)) if t.text.starts_with("ready ") => {
                        ready = true
                    }
                    _ => {}
                }
            }
        }
        let pids = tree(supervisor.context("no started event")?);
        ensure!(
            pids.len() >= 3,
            "expected supervisor, agent and its child, found {pids:?}"
        );
        let t0 = mono_ns();
        c.jobs
            .cancel_job(pb::CancelJobRequest {
                job_id: job.clone(),
            })
            .await?;
        let deadline = t0 + 30_000_000_000;
        while pids.iter().any(|p| alive(*p)) {
            if mono_ns() > deadline {
                bail!("processes of the job's tree still alive 30 s after CancelJob");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        took.push(mono_ns() - t0);
        // The stream ends with the finished event (the job is CANCELLED).
        while let Some(msg) = stream.message().await? {
            if msg.events.iter().any(|e| {
                matches!(e.kind, Some(pb::job_event::Kind::Finished(ref f))
                    if f.state == pb::JobState::Cancelled as i32)
            }) {
                break;
            }
        }
    }
    Ok(vec![
        Metric::new(
            "cancel.tree_gone.p50",
            ms(percentile(&mut took, 50.0)),
            "ms",
        )
        .goal(Goal::AtMost(300.0)),
        Metric::new(
            "cancel.tree_gone.p99",
            ms(percentile(&mut took, 99.0)),
            "ms",
        ),
    ])
}
