//! Running one job: prepare the agent's launch, spawn it contained, turn its output into events
//! (written in batches through the event log), decide the outcome, record what changed in the
//! workspace. Also start-up recovery of jobs a previous process left behind.

use super::{Core, RunHandle};
use crate::agents::{self, LaunchContext};
use crate::domain::{
    EventKind, ExitStatus, Finished, Job, JobEvent, JobId, JobState, Outcome, Session, Timestamp,
    Usage,
};
use crate::error::{Reason, Result};
use crate::events::Pending;
use crate::runner::jail::{Bridge, Network};
use crate::runner::{Output, ProcessSpec, RunControl, StopCause};
use crate::store::{JobUpdate, JobWrite};
use crate::telemetry::{TraceParent, metrics, trace};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;
use tracing::Instrument;

/// Output lines taken from the runner at a time.
const MAX_BATCH: usize = 512;
/// Events parsed ahead while a batch commits; beyond this the pump waits for the store.
const MAX_PARSED: usize = 4 * MAX_BATCH;
/// The loopback port of a `network = "gateway"` job's own namespace where its bridge to agentd's
/// gateway listens (the namespace is the job's alone, so any fixed port is free).
const BRIDGE_PORT: u16 = 4317;
/// Stderr lines kept to explain a failure when the agent gave no error of its own.
const STDERR_TAIL: usize = 5;
/// Attempts to record the failure of a job that failed inside the server, and their backoff
/// (about a minute in all).
const SETTLE_ATTEMPTS: usize = 16;
const SETTLE_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const SETTLE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Appends events to one job's log with consecutive seqs.
struct Sink<'a> {
    core: &'a Core,
    job: JobId,
    next_seq: u64,
    secrets: Vec<String>,
}

impl Sink<'_> {
    fn event(&mut self, kind: EventKind, raw: Option<String>) -> JobEvent {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut ev = JobEvent {
            seq,
            time: Timestamp::now(),
            raw,
            kind,
        };
        redact_event(&mut ev, &self.secrets);
        ev
    }

    async fn write(&self, events: Vec<JobEvent>, update: Option<JobUpdate>) -> Result<()> {
        match self.submit(events, update).await? {
            Some(w) => w.committed().await,
            None => Ok(()),
        }
    }

    /// Queues a write without waiting for its commit (`None` when there is nothing to write).
    async fn submit(
        &self,
        events: Vec<JobEvent>,
        update: Option<JobUpdate>,
    ) -> Result<Option<InFlight>> {
        if events.is_empty() && update.is_none() {
            return Ok(None);
        }
        let (n, start) = (events.len(), std::time::Instant::now());
        let pending = self
            .core
            .events
            .submit(JobWrite {
                job_id: self.job.clone(),
                events,
                update,
            })
            .await?;
        Ok(Some(InFlight { pending, n, start }))
    }
}

/// What the event pump waits for.
enum Next {
    /// This many outputs were received (0: the agent's output has ended).
    Batch(usize),
    /// The batch in flight was committed, or failed.
    Committed(Result<()>),
}

/// A batch handed to the event log whose commit is still to be awaited.
struct InFlight {
    pending: Pending,
    n: usize,
    start: std::time::Instant,
}

impl InFlight {
    async fn committed(mut self) -> Result<()> {
        let written = (&mut self.pending).await;
        self.settle(written)
    }

    /// Records the outcome of the commit once it is known.
    fn settle(self, written: Result<()>) -> Result<()> {
        metrics().store_write(self.start.elapsed());
        if written.is_ok() {
            metrics().events_written(self.n);
        }
        written
    }
}

/// Stops a task when its owner goes (a job's controller ends with its run, on every path).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Replaces operator secret values wherever an agent might echo them.
/// Where a job's stdin text is kept while it runs: in the session's HOME, which the agent sees at
/// the same path inside its jail.
const INPUT_FILE: &str = ".agentd-stdin";

/// Writes the agent's stdin text into its HOME. Whatever an earlier job left at that name (the
/// agent owns HOME: it may be a symlink to a host file) is removed first and the file created
/// anew without following links, so agentd never writes through the agent's links.
async fn write_input(home: &std::path::Path, text: &str) -> Result<std::path::PathBuf> {
    use tokio::io::AsyncWriteExt;
    let path = home.join(INPUT_FILE);
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .await?;
    file.write_all(text.as_bytes()).await?;
    file.flush().await?;
    Ok(path)
}

fn redact(s: &mut String, secrets: &[String]) {
    for secret in secrets {
        if s.contains(secret.as_str()) {
            *s = s.replace(secret.as_str(), "[REDACTED]");
        }
    }
}

fn redact_event(ev: &mut JobEvent, secrets: &[String]) {
    if secrets.is_empty() {
        return;
    }
    if let Some(raw) = &mut ev.raw {
        redact(raw, secrets);
    }
    match &mut ev.kind {
        EventKind::Text { text } => redact(text, secrets),
        EventKind::ToolCall { input_json, .. } => redact(input_json, secrets),
        EventKind::ToolResult { content, .. } => redact(content, secrets),
        EventKind::Stderr { line, .. } | EventKind::Unparsed { line, .. } => redact(line, secrets),
        EventKind::Finished {
            result,
            error_message,
            ..
        } => {
            redact(result, secrets);
            redact(error_message, secrets);
        }
        _ => {}
    }
}

impl Core {
    /// The rules and timeout of a controlled job.
    fn control_setup(
        &self,
        job: &Job,
        protocol: Arc<dyn agents::interactive::Interactive>,
        workspace: &std::path::Path,
    ) -> super::control::Setup {
        let c = &job.spec.control;
        super::control::Setup {
            protocol,
            operator: self
                .config
                .permissions
                .get(&job.spec.agent)
                .cloned()
                .unwrap_or_default(),
            job: crate::domain::permission::PermissionRules {
                allow: c.allow_rules.clone(),
                deny: c.deny_rules.clone(),
            },
            timeout: c
                .permission_timeout
                .unwrap_or(self.config.permission_timeout_default),
            workspace: workspace.to_string_lossy().into_owned(),
        }
    }

    /// Runs one job to its final state. Never fails: every failure becomes the job's outcome.
    pub(super) async fn run_job(&self, job: Job, handle: &RunHandle) {
        let id = &job.id;
        let profile = self.config.agents.get(&job.spec.agent);
        let secrets: Vec<String> = profile
            .map(|p| p.env.values().filter(|v| v.len() >= 6).cloned().collect())
            .unwrap_or_default();
        let mut sink = Sink {
            core: self,
            job: job.id.clone(),
            next_seq: job.last_seq + 1,
            secrets,
        };
        // The job span continues the submitter's trace: its TRACEPARENT (taken from the
        // SubmitJob metadata by the API edge) is also what the agent receives.
        let span = tracing::info_span!(
            "job",
            job = %job.id,
            session = %job.session_id,
            agent = %job.spec.agent,
            trace_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        if let Some(tp) = job
            .spec
            .env
            .get(trace::ENV)
            .and_then(|v| TraceParent::parse(v))
        {
            tp.adopt(&span);
            span.record("parent_span_id", tp.parent_id());
        }
        async {
            match self.execute(&job, handle, &mut sink).await {
                Ok(()) => {}
                // Another replica settled the job after this one lost its lease: expected
                // fencing, and a final event could not be stored either.
                Err(e) if e.reason() == Reason::JobFinished => {
                    tracing::info!(job = %id, error = %e, "job was settled by another replica");
                }
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "job failed inside the server");
                    let secrets = std::mem::take(&mut sink.secrets);
                    self.settle_failed(id, secrets, format!("internal error: {e}"))
                        .await;
                }
            }
        }
        .instrument(span)
        .await;
    }

    async fn execute(&self, job: &Job, handle: &RunHandle, sink: &mut Sink<'_>) -> Result<()> {
        let Some(session) = self.store.get_session_any(&job.session_id).await? else {
            return self
                .finish(
                    sink,
                    None,
                    FinishFacts::failed("session was deleted".into()),
                )
                .await;
        };
        if handle.cancel.is_cancelled() {
            let reason = handle.reason.get().cloned().unwrap_or_default();
            return self
                .finish(
                    sink,
                    None,
                    FinishFacts::outcome(Outcome::Cancelled { reason }),
                )
                .await;
        }
        let Some(profile) = self.config.agents.get(&job.spec.agent) else {
            let msg = format!("agent profile {:?} is no longer configured", job.spec.agent);
            return self.finish(sink, None, FinishFacts::failed(msg)).await;
        };
        let workspace = self.workspaces.workspace_dir(&session.id);
        let home = self.workspaces.home_dir(&session.id);
        let resume = session.conversation_id.clone();
        let sandbox = self.config.sandbox.of(&job.spec.agent);
        let mut launch = match agents::launch(
            profile,
            &job.spec,
            &LaunchContext {
                workspace: &workspace,
                home: &home,
                resume_conversation: resume.as_deref(),
                jailed: sandbox.is_some(),
            },
        ) {
            Ok(l) => l,
            Err(e) => {
                return self
                    .finish(sink, None, FinishFacts::failed(e.to_string()))
                    .await;
            }
        };
        self.workspaces
            .write_home_files(&session.id, std::mem::take(&mut launch.files))
            .await?;
        // Under `ask` the agent reads a pipe its controller writes (prompt, answers, input).
        let protocol = job
            .spec
            .asks()
            .then(|| agents::interactive::protocol(profile))
            .flatten();
        let mut pipe = None;
        let stdin = match (&launch.stdin, &protocol) {
            (_, Some(_)) => {
                let (path, sender) = super::control::open_pipe(&home).await?;
                pipe = Some(sender);
                crate::runner::Stdin::File(path)
            }
            (Some(text), None) => crate::runner::Stdin::File(write_input(&home, text).await?),
            (None, None) => crate::runner::Stdin::Null,
        };
        let before = self.workspaces.snapshot(&session.id).await?;

        let (tx, mut rx) = mpsc::channel::<Output>(1024);
        let budget_hit: Arc<OnceLock<String>> = Arc::default();
        let in_netns = sandbox.is_some_and(|s| s.network == Network::Gateway);
        let access = self.gateway_access(job, &mut launch, &tx, handle, &budget_hit, in_netns);
        let mut env = super::env::agent_env(&home, &launch.env, &profile.env, &job.spec.env);
        if let Some((access, overrides)) = &access {
            super::env::route_through_gateway(&mut env, overrides, access.key());
            sink.secrets.push(access.key().to_owned());
        }
        let bridges: Vec<Bridge> = match (&self.gateway, in_netns) {
            (Some(gw), true) => vec![Bridge {
                port: BRIDGE_PORT,
                socket: gw.socket().to_path_buf(),
            }],
            _ => Vec::new(),
        };
        let jail = sandbox.map(|sandbox| {
            // The host's temp dir does not exist in the jail; its own /tmp does.
            env.retain(|(k, _)| k != "TMPDIR");
            env.push(("TMPDIR".into(), "/tmp".into()));
            let path = env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_str());
            let mut jail = super::jail::for_job(
                &self.config,
                sandbox,
                &launch.program,
                path,
                &workspace,
                &home,
            );
            jail.spec.bridges = bridges;
            jail
        });

        let agent_span =
            tracing::info_span!("agent", program = %launch.program, pid = tracing::field::Empty);
        let spawned = self
            .launcher
            .spawn(ProcessSpec {
                supervisor: self.config.supervisor.clone(),
                program: launch.program.clone(),
                args: launch.args.clone(),
                env,
                cwd: workspace.clone(),
                max_line_bytes: self.config.limits.max_line_bytes,
                run_dir: Some(crate::runner::records::run_dir(&self.config.data_dir)),
                jail,
                stdin: stdin.clone(),
            })
            .instrument(agent_span.clone())
            .await;
        let process = match spawned {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("cannot start agent {:?}: {e}", launch.program);
                return self.finish(sink, None, FinishFacts::failed(msg)).await;
            }
        };
        let started = Timestamp::now();
        agent_span.record("pid", process.pid());
        let running = metrics().job_running();
        tracing::info!(job = %job.id, session = %session.id, agent = %job.spec.agent, pid = process.pid(), "job started");
        let state = job.state.transition(JobState::Running { started })?;
        let ev = sink.event(
            EventKind::Started {
                agent: job.spec.agent.clone(),
                command: launch.program.clone(),
                pid: process.pid(),
                resumed_conversation_id: resume.clone(),
            },
            None,
        );
        // Not awaited here: the pump starts while it commits and the first output lines join it
        // in the event log's queue (often in the same commit).
        let started_write = sink
            .submit(
                vec![ev],
                Some(JobUpdate {
                    state: state.clone(),
                    result: String::new(),
                    usage: Usage::default(),
                    conversation_id: resume.clone(),
                }),
            )
            .await?;

        let control = RunControl {
            cancel: handle.cancel.clone(),
            timeout: job.spec.timeout,
            grace: self.config.timing.kill_grace,
        };
        let mut controlled = match (protocol, pipe) {
            (Some(protocol), Some(pipe)) => {
                let protocol: Arc<dyn agents::interactive::Interactive> = Arc::from(protocol);
                let setup = self.control_setup(job, protocol.clone(), &workspace);
                let (ctl, task) = super::control::start(setup, pipe, &job.spec.prompt, &tx);
                let _ = handle.control.set(ctl.clone());
                Some((ctl, protocol, AbortOnDrop(task)))
            }
            _ => None,
        };
        let run = tokio::spawn(process.run(tx, control).instrument(agent_span));
        let mut parser = agents::parser(profile);
        let mut stderr_tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL);
        let mut buf = Vec::with_capacity(MAX_BATCH);
        let mut conversation = resume;
        let mut recorded = conversation.clone();
        let mut cap = OutputCap::new(
            self.config.limits.job_output_max_bytes,
            self.config.limits.job_output_max_events,
        );
        // One batch commits while the next is read and parsed; that one is queued as soon as the
        // commit ends, with everything that arrived meanwhile. Batches grow while the store is
        // busy (fewer commits and reader wake-ups than one batch per arrival) and at most one is
        // in flight, so seqs reach the event log in order.
        let mut in_flight: Option<InFlight> = started_write;
        // A limit of the jail that ended the job, as its supervisor reported it.
        let mut limit_hit: Option<crate::runner::jail::Notice> = None;
        let mut events: Vec<JobEvent> = Vec::new();
        let mut ended = false;
        // The running total of the job's model calls through the gateway.
        let mut metered = Metered::default();
        let pumped: Result<()> = async {
            loop {
                if in_flight.is_none() {
                    // Record the conversation id as soon as the agent reports it, so a job
                    // interrupted by a crash still lets the session's next job resume it.
                    let update = (conversation != recorded || metered.dirty).then(|| {
                        recorded.clone_from(&conversation);
                        metered.dirty = false;
                        JobUpdate {
                            state: state.clone(),
                            result: String::new(),
                            usage: metered.total.clone(),
                            conversation_id: conversation.clone(),
                        }
                    });
                    in_flight = sink.submit(std::mem::take(&mut events), update).await?;
                }
                let next = match &mut in_flight {
                    // A commit that ends before more output arrives is settled right away, so its
                    // outcome and timing are not held back by a quiet agent.
                    Some(w) if !ended && events.len() < MAX_PARSED => tokio::select! {
                        biased;
                        written = &mut w.pending => Next::Committed(written),
                        n = rx.recv_many(&mut buf, MAX_BATCH) => Next::Batch(n),
                    },
                    // Output ended, or enough is parsed: wait for the store (backpressure).
                    Some(w) => Next::Committed((&mut w.pending).await),
                    None if ended => break,
                    None => Next::Batch(rx.recv_many(&mut buf, MAX_BATCH).await),
                };
                match next {
                    Next::Committed(written) => {
                        if let Some(w) = in_flight.take() {
                            w.settle(written)?;
                        }
                        continue;
                    }
                    Next::Batch(0) => {
                        ended = true;
                        continue;
                    }
                    Next::Batch(_) => {}
                }
                for out in buf.drain(..) {
                    match out {
                        Output::Stdout(line) => {
                            // The parser sees every line, kept or not, so the summary
                            // (conversation, result, usage) stays right after truncation.
                            if let Some((ctl, protocol, _)) = &controlled {
                                ctl.observe(protocol.as_ref(), &line.text);
                            }
                            let parsed = parser.parse_line(&line.text, line.truncated);
                            for p in &parsed {
                                if let EventKind::Init {
                                    conversation_id, ..
                                } = &p.kind
                                    && !conversation_id.is_empty()
                                {
                                    conversation = Some(conversation_id.clone());
                                }
                            }
                            match cap.admit(line.text.len(), parsed.len()) {
                                Admit::Keep => events
                                    .extend(parsed.into_iter().map(|p| sink.event(p.kind, p.raw))),
                                Admit::Truncate(reason) => {
                                    events.push(sink.event(EventKind::Truncated { reason }, None))
                                }
                                Admit::Drop => {}
                            }
                        }
                        Output::Stderr(line) => {
                            if stderr_tail.len() == STDERR_TAIL {
                                stderr_tail.pop_front();
                            }
                            stderr_tail.push_back(line.text.clone());
                            match cap.admit(line.text.len(), 1) {
                                Admit::Keep => events.push(sink.event(
                                    EventKind::Stderr {
                                        line: line.text,
                                        truncated: line.truncated,
                                    },
                                    None,
                                )),
                                Admit::Truncate(reason) => {
                                    events.push(sink.event(EventKind::Truncated { reason }, None))
                                }
                                Admit::Drop => {}
                            }
                        }
                        Output::Event(kind) => {
                            // Few, and what the tenant is charged for or must know: never
                            // dropped by the caps.
                            if let EventKind::ModelCall(call) = &kind {
                                metered.add(call);
                            }
                            events.push(sink.event(kind, None));
                        }
                        Output::Notice(notice) => {
                            // Few and important: never dropped by the output caps.
                            if notice.fatal {
                                limit_hit = Some(notice.clone());
                            }
                            events.push(sink.event(
                                EventKind::LimitExceeded {
                                    limit: notice.limit,
                                    message: notice.message,
                                },
                                None,
                            ));
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = pumped {
            // Nothing more of this run can be recorded (the job is about to be marked failed, or
            // another replica settled it): stop the agent instead of leaving it running
            // unobserved. Dropping the process kills its supervisor and with it the whole tree.
            run.abort();
            return Err(e);
        }
        let outcome = run.await;
        if let crate::runner::Stdin::File(path) = &stdin {
            // The agent read it (or never will): a large prompt need not linger in its HOME.
            let _ = tokio::fs::remove_file(path).await;
        }
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                let msg = format!("agent supervisor task failed: {e}");
                return self
                    .finish(sink, Some(started), FinishFacts::failed(msg))
                    .await;
            }
        };
        let summary = parser.summary();
        match outcome.stop {
            Some(StopCause::Cancelled) => metrics().kill_escalation("cancelled"),
            Some(StopCause::TimedOut) => metrics().kill_escalation("timed_out"),
            None => {}
        }
        // The gateway's grant ends with the agent: a call after this is refused.
        drop(access);
        let interrupted = controlled
            .take()
            .is_some_and(|(ctl, _, _)| ctl.interrupted.load(Ordering::Acquire));
        let verdict = match (outcome.stop, limit_hit) {
            _ if budget_hit.get().is_some() => Outcome::BudgetExceeded {
                message: budget_hit.get().cloned().unwrap_or_default(),
            },
            (None, None) if interrupted => Outcome::Interrupted,
            (Some(StopCause::Cancelled), _) => Outcome::Cancelled {
                reason: handle
                    .reason
                    .get()
                    .cloned()
                    .unwrap_or_else(|| "cancelled".into()),
            },
            (Some(StopCause::TimedOut), _) => Outcome::TimedOut {
                after: job.spec.timeout,
            },
            (None, Some(hit)) => Outcome::LimitExceeded {
                limit: hit.limit,
                message: hit.message,
            },
            (None, None) if outcome.exit.success() && summary.error.is_none() => Outcome::Succeeded,
            (None, None) => Outcome::Failed {
                message: summary
                    .error
                    .clone()
                    .or_else(|| {
                        (!stderr_tail.is_empty())
                            .then(|| stderr_tail.iter().cloned().collect::<Vec<_>>().join("\n"))
                    })
                    .map(|m| format!("agent failed ({}): {m}", outcome.exit))
                    .unwrap_or_else(|| format!("agent exited with {}", outcome.exit)),
            },
        };
        match self.workspaces.snapshot(&session.id).await {
            Ok(after) => match self.workspaces.diff(&session.id, &before, &after).await {
                Ok(changes) => self.store.put_job_outputs(&job.id, &changes).await?,
                Err(e) => tracing::warn!(job = %job.id, error = %e, "cannot diff workspace"),
            },
            Err(e) => tracing::warn!(job = %job.id, error = %e, "cannot snapshot workspace"),
        }
        let facts = FinishFacts {
            outcome: verdict,
            exit: Some(outcome.exit),
            result: summary.result.unwrap_or_default(),
            usage: metered.over(summary.usage),
            conversation_id: summary.conversation_id.or(conversation),
        };
        // Not running any more once a reader can see it final (a scrape right after must agree).
        drop(running);
        self.finish(sink, Some(started), facts).await?;
        self.extend_session(&session).await;
        Ok(())
    }

    /// Stores the final event and the final job row together.
    async fn finish(
        &self,
        sink: &mut Sink<'_>,
        started: Option<Timestamp>,
        facts: FinishFacts,
    ) -> Result<()> {
        let current = match started {
            Some(s) => JobState::Running { started: s },
            None => JobState::Queued,
        };
        let ended = Timestamp::now();
        let state = current.transition(JobState::Finished(Finished {
            started,
            ended,
            outcome: facts.outcome.clone(),
            exit: facts.exit,
        }))?;
        let mut result = facts.result;
        redact(&mut result, &sink.secrets);
        tracing::info!(job = %sink.job, state = facts.outcome.final_state().name(), exit = ?facts.exit, "job finished");
        let ev = sink.event(
            EventKind::Finished {
                state: facts.outcome.final_state(),
                exit: facts.exit,
                result: result.clone(),
                error_message: facts.outcome.message(),
                usage: facts.usage.clone(),
                reason: facts.outcome.reason().to_owned(),
            },
            None,
        );
        sink.write(
            vec![ev],
            Some(JobUpdate {
                state,
                result,
                usage: facts.usage,
                conversation_id: facts.conversation_id,
            }),
        )
        .await?;
        metrics().job_finished(
            facts.outcome.final_state().name(),
            started.map(|s| ended.since(s)),
        );
        Ok(())
    }

    /// Records a job that failed inside the server as FAILED. The store may be what failed, and
    /// events the sink numbered may never have been stored, so each attempt starts from the
    /// stored row (its last seq and start time); attempts repeat with backoff while the store
    /// fails, since a job left RUNNING would never end for its watchers and waiters.
    async fn settle_failed(&self, id: &JobId, secrets: Vec<String>, message: String) {
        let mut delay = SETTLE_BACKOFF_MIN;
        for _ in 0..SETTLE_ATTEMPTS {
            let attempt = match self.store.get_job(id).await {
                Ok(Some(job)) if !job.state.is_finished() => {
                    let started = match job.state {
                        JobState::Running { started } => Some(started),
                        _ => None,
                    };
                    let mut sink = Sink {
                        core: self,
                        job: id.clone(),
                        next_seq: job.last_seq + 1,
                        secrets: secrets.clone(),
                    };
                    let mut facts = FinishFacts::failed(message.clone());
                    facts.result = job.result;
                    facts.usage = job.usage;
                    facts.conversation_id = job.conversation_id;
                    self.finish(&mut sink, started, facts).await
                }
                // Finished (settled elsewhere) or deleted meanwhile.
                Ok(_) => return,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(()) => return,
                Err(e) if e.reason() == Reason::JobFinished => return,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "cannot record the job's failure yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(SETTLE_BACKOFF_MAX);
                }
            }
        }
        tracing::error!(job = %id, "gave up recording the job's failure; it is settled at restart or when its lease expires");
    }

    async fn extend_session(&self, session: &Session) {
        let expires = Timestamp::now().saturating_add(session.ttl);
        if expires > session.expires
            && let Err(e) = self.store.set_session_expiry(&session.id, expires).await
        {
            tracing::warn!(session = %session.id, error = %e, "cannot extend session expiry");
        }
    }

    /// Start-up recovery. With an unshared store every unfinished job was this process's before
    /// it stopped: started ones can't be resumed (their agent died with it) and fail with a
    /// reason, claimed ones go back to the queue. A shared store leaves this to lease expiry,
    /// since the other replicas are alive and own their jobs.
    pub(super) async fn recover(&self) -> Result<()> {
        if self.store.shared() {
            return Ok(());
        }
        // Every lease of an unshared store is expired from this process's point of view. Bounded,
        // in case some orphan can't be settled (it is logged, and settled at a later tick).
        for _ in 0..1000 {
            if !self.settle_orphans(Timestamp(i64::MAX)).await {
                break;
            }
        }
        // Rows from before leases existed: running without an owner.
        for job in self.store.unfinished_jobs().await? {
            if let JobState::Running { started } = job.state {
                let msg = "the server restarted while the job was running".to_owned();
                self.fail_interrupted(&job, started, msg).await?;
            }
        }
        Ok(())
    }

    /// The permission request a job left unanswered, described, if any: the event log is its
    /// durable record (a request without its resolution).
    async fn pending_permission(&self, job: &Job) -> Option<String> {
        if !job.spec.asks() {
            return None;
        }
        let mut open: Vec<(String, String)> = Vec::new();
        let mut after = 0;
        loop {
            let events = match self.store.read_events(&job.id, after, 1000).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot read the job's events");
                    return None;
                }
            };
            let Some(last) = events.last() else { break };
            after = last.seq;
            for e in events {
                match e.kind {
                    EventKind::PermissionRequest {
                        request_id, tool, ..
                    } => open.push((request_id, tool)),
                    EventKind::PermissionResolved { request_id, .. } => {
                        open.retain(|(id, _)| *id != request_id)
                    }
                    _ => {}
                }
            }
        }
        let (id, tool) = open.pop()?;
        Some(format!("permission request {id} ({tool})"))
    }

    /// Ends a started job whose agent is gone (server restart, lost replica) as FAILED, keeping
    /// what it had reported.
    pub(super) async fn fail_interrupted(
        &self,
        job: &Job,
        started: Timestamp,
        message: String,
    ) -> Result<()> {
        let mut sink = Sink {
            core: self,
            job: job.id.clone(),
            next_seq: job.last_seq + 1,
            secrets: Vec::new(),
        };
        let mut facts = match self.pending_permission(job).await {
            Some(pending) => FinishFacts::outcome(Outcome::PermissionPending {
                message: format!("{message} with {pending} pending: nobody can answer it now"),
            }),
            None => FinishFacts::failed(message),
        };
        facts.result = job.result.clone();
        facts.usage = job.usage.clone();
        facts.conversation_id = job.conversation_id.clone();
        self.finish(&mut sink, Some(started), facts).await
    }
}

/// The job's model calls through the gateway, summed as their events arrive.
#[derive(Default)]
struct Metered {
    total: Usage,
    calls: u64,
    /// The total changed since the job row last got it.
    dirty: bool,
}

impl Metered {
    fn add(&mut self, c: &crate::domain::ModelCall) {
        let t = &mut self.total;
        t.input_tokens += c.input_tokens;
        t.output_tokens += c.output_tokens;
        t.cache_read_input_tokens += c.cache_read_tokens;
        t.cache_creation_input_tokens += c.cache_write_tokens;
        if let Some(cost) = c.cost_usd {
            *t.cost_usd.get_or_insert(0.0) += cost;
        }
        self.calls += 1;
        self.dirty = true;
    }

    /// The job's usage: the gateway's metering when the job called through it, whatever the CLI
    /// reported; turns, duration (and cost, for unpriced models) from the CLI.
    fn over(&self, reported: Usage) -> Usage {
        if self.calls == 0 {
            return reported;
        }
        Usage {
            cost_usd: self.total.cost_usd.or(reported.cost_usd),
            num_turns: reported.num_turns,
            duration_ms: reported.duration_ms,
            ..self.total.clone()
        }
    }
}

/// What the gateway tells a running job: its model calls become events in its stream, and a
/// spent budget stops it.
struct JobHooks {
    /// Weak: the job's output ends when the process's senders are gone, whatever the gateway holds.
    events: mpsc::WeakSender<Output>,
    cancel: tokio_util::sync::CancellationToken,
    reason: Arc<OnceLock<String>>,
    budget: Arc<OnceLock<String>>,
}

impl JobHooks {
    fn send(&self, kind: EventKind) {
        if let (Some(tx), Ok(rt)) = (self.events.upgrade(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = tx.send(Output::Event(kind)).await;
            });
        }
    }
}

impl crate::gateway::GrantHooks for JobHooks {
    fn model_call(&self, call: crate::domain::ModelCall) {
        self.send(EventKind::ModelCall(call));
    }

    fn egress_denied(&self, host: String, port: u16) {
        self.send(EventKind::EgressDenied { host, port });
    }

    fn budget_exceeded(&self, message: String) {
        let _ = self.budget.set(message);
        let _ = self.reason.set("budget exceeded".to_owned());
        self.cancel.cancel();
    }
}

impl Core {
    /// A gateway token for the job when its profile routes through the gateway, with the env
    /// that points the agent at it (the adapter's rewrite of `launch` included).
    fn gateway_access(
        &self,
        job: &Job,
        launch: &mut agents::Launch,
        tx: &mpsc::Sender<Output>,
        handle: &RunHandle,
        budget: &Arc<OnceLock<String>>,
        in_netns: bool,
    ) -> Option<(crate::gateway::Access, Vec<(String, String)>)> {
        let gateway = self.gateway.as_ref()?;
        let profile = self.config.agents.get(&job.spec.agent)?;
        let hooks = JobHooks {
            events: tx.downgrade(),
            cancel: handle.cancel.clone(),
            reason: handle.reason.clone(),
            budget: budget.clone(),
        };
        let mut grant = crate::gateway::Grant::new(
            job.id.clone(),
            job.tenant.clone(),
            job.session_id.clone(),
            job.spec.agent.clone(),
            (job.spec.budget.max_cost_usd, job.spec.budget.max_tokens),
            Arc::new(hooks),
        );
        let allow_hosts = self
            .config
            .sandbox
            .of(&job.spec.agent)
            .map(|s| s.allow_hosts.clone())
            .unwrap_or_default();
        grant.allow_hosts.clone_from(&allow_hosts);
        let access = gateway.mint(grant)?;
        let authority = match in_netns {
            true => format!("127.0.0.1:{BRIDGE_PORT}"),
            false => gateway.addr().to_string(),
        };
        let base = access.base_url_at_authority(&authority);
        let mut env = agents::gateway::via_gateway(profile, launch, &base, &access.token);
        if !allow_hosts.is_empty() {
            // Everything else the agent runs goes through the egress proxy; the gateway itself
            // is reached directly.
            let proxy = access.proxy_url(&authority);
            for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                env.push((name.to_owned(), proxy.clone()));
            }
            for name in ["NO_PROXY", "no_proxy"] {
                env.push((name.to_owned(), "127.0.0.1,localhost".to_owned()));
            }
        }
        Some((access, env))
    }
}

/// Per-job output limits: once either is reached, one `Truncated` event is stored and further
/// output is dropped (the agent keeps running and is never blocked).
struct OutputCap {
    max_bytes: u64,
    max_events: u64,
    bytes: u64,
    events: u64,
    tripped: bool,
}

enum Admit {
    Keep,
    Truncate(String),
    Drop,
}

impl OutputCap {
    fn new(max_bytes: u64, max_events: u64) -> Self {
        Self {
            max_bytes,
            max_events,
            bytes: 0,
            events: 0,
            tripped: false,
        }
    }

    /// Decides about one output line of `bytes` that produced `events` events.
    fn admit(&mut self, bytes: usize, events: usize) -> Admit {
        if self.tripped {
            return Admit::Drop;
        }
        let bytes = self.bytes + bytes as u64;
        let events = self.events + events as u64;
        if bytes > self.max_bytes || events > self.max_events {
            self.tripped = true;
            return Admit::Truncate(format!(
                "job output limit reached ({} bytes / {} events); further output was dropped",
                self.max_bytes, self.max_events
            ));
        }
        self.bytes = bytes;
        self.events = events;
        Admit::Keep
    }
}

/// What the final event and row say.
struct FinishFacts {
    outcome: Outcome,
    exit: Option<ExitStatus>,
    result: String,
    usage: Usage,
    conversation_id: Option<String>,
}

impl FinishFacts {
    fn outcome(outcome: Outcome) -> Self {
        Self {
            outcome,
            exit: None,
            result: String::new(),
            usage: Usage::default(),
            conversation_id: None,
        }
    }

    fn failed(message: String) -> Self {
        Self::outcome(Outcome::Failed { message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_cap_truncates_once_then_drops() {
        let mut cap = OutputCap::new(10, 3);
        assert!(matches!(cap.admit(4, 1), Admit::Keep));
        assert!(matches!(cap.admit(6, 1), Admit::Keep));
        assert!(matches!(cap.admit(1, 1), Admit::Truncate(_)));
        assert!(matches!(cap.admit(0, 1), Admit::Drop));
        let mut by_events = OutputCap::new(1000, 2);
        assert!(matches!(by_events.admit(1, 2), Admit::Keep));
        assert!(matches!(by_events.admit(1, 1), Admit::Truncate(_)));
    }

    #[test]
    fn redaction_covers_text_raw_and_results() {
        let secrets = vec!["sk-very-secret".to_owned()];
        let mut ev = JobEvent {
            seq: 1,
            time: Timestamp(0),
            raw: Some(r#"{"text":"key sk-very-secret"}"#.into()),
            kind: EventKind::Text {
                text: "my key is sk-very-secret!".into(),
            },
        };
        redact_event(&mut ev, &secrets);
        assert_eq!(ev.raw.as_deref(), Some(r#"{"text":"key [REDACTED]"}"#));
        assert_eq!(
            ev.kind,
            EventKind::Text {
                text: "my key is [REDACTED]!".into()
            }
        );
    }
}
