//! Running one job, as named steps: `prepare` (profile, launch, HOME files, stdin, env, jail,
//! the gateway grant, the workspace's before-snapshot), launch, the event pump (`pump`), the
//! `verdict` from what happened, the outputs recorder, and `finish` (final event and row).
//! `recovery` settles what a previous process left; `sink` numbers and writes events.

mod adopted;
mod finish;
mod gateway;
mod pump;
mod recovery;
mod sink;
mod verdict;

use super::{Core, RunHandle};
use crate::agents::interactive::Interactive;
use crate::agents::{self, AgentProfile, LaunchContext};
use crate::domain::{EventKind, Job, JobState, Outcome, Session, Timestamp, Usage};
use crate::error::{Error, Reason, Result};
use crate::runner::jail::{Bridge, Network};
use crate::runner::{Output, ProcessSpec, RunControl, Stdin, StopCause};
use crate::store::{JobUpdate, SnapPoint, SnapshotRow, StartFacts};
use crate::telemetry::{TraceParent, metrics, trace};
use crate::workspace::history::{Basis, Taken, Tree};
use finish::FinishFacts;
use pump::Pump;
use sink::{INPUT_FILE, Sink, input_path};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;
use tracing::Instrument;
use verdict::{Ended, verdict};

/// The loopback port of a `network = "gateway"` job's own namespace where its bridge to agentd's
/// gateway listens (the namespace is the job's alone, so any fixed port is free).
const BRIDGE_PORT: u16 = 4317;
/// Attempts to record the failure of a job that failed inside the server, and their backoff
/// (about a minute in all).
const SETTLE_ATTEMPTS: usize = 16;
const SETTLE_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const SETTLE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// A workspace of this many entries leaves tens of MB freed behind a job's snapshots (two
/// listings, the diff, the outputs' JSON), which glibc's per-thread arenas keep: a job that made
/// 100,000 files left agentd at 158 MB resident, 55 MB after `malloc_trim`.
const LARGE_WORKSPACE: usize = 20_000;

/// Holds a job between its agent's end and the storing of that end, for as long as
/// `AGENTD_TEST_HOLD_END_MS` says: the tests' way into the window where a killed agentd leaves a
/// finished agent's job RUNNING (issue #23). Unset, as it is outside tests, it costs nothing.
async fn hold_end_for_tests() {
    static HOLD: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    let hold = HOLD.get_or_init(|| {
        std::env::var("AGENTD_TEST_HOLD_END_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(hold) = hold {
        tokio::time::sleep(*hold).await;
    }
}

/// Everything a job needs to start, once `prepare` succeeded.
struct Prepared<'c> {
    session: Session,
    profile: &'c AgentProfile,
    spec: ProcessSpec,
    resume: Option<String>,
    /// The gateway grant: held while the agent runs, dropped when it ends.
    access: Option<(crate::gateway::Access, Vec<(String, String)>)>,
    budget_hit: Arc<OnceLock<String>>,
    /// What must be in place before the agent may run ([`Core::ready_to_start`]): awaited while
    /// the launcher builds the job's jail.
    ready: std::pin::Pin<Box<dyn std::future::Future<Output = Result<Ready>> + Send + 'c>>,
    tx: mpsc::Sender<Output>,
    rx: mpsc::Receiver<Output>,
}

/// What [`Core::ready_to_start`] does: the job's HOME files and renames, its input (a file, or
/// the pipe of a job that asks), its before-snapshot unless the turn has one.
struct StartWork {
    session: crate::domain::SessionId,
    job: crate::domain::JobId,
    home_files: Vec<(std::path::PathBuf, Vec<u8>)>,
    renames: Option<crate::workspace::Rename>,
    input: Option<String>,
    /// Under `ask`: the controller's first words and the agent's protocol.
    asks: Option<(String, Box<dyn Interactive>)>,
    before: Option<Taken>,
    /// What the before-snapshot starts from.
    basis: Basis,
    /// The jailed agent's host ids, when the before-snapshot's walk hands the workspace to
    /// them (`JailSpec::workspace_handed`).
    hand_to: Option<(u32, u32)>,
}

/// What [`Core::ready_to_start`] made.
struct Ready {
    before: Taken,
    /// The before-snapshot's row, when this turn took it: not stored yet.
    before_row: Option<SnapshotRow>,
    /// Under permission_mode `ask`: what its controller needs.
    pipe: Option<AskPipe>,
}

/// A job that asks: the agent's protocol, the write end of its stdin pipe, and the first message
/// the controller writes there (the prompt and the job's images, in the protocol's shape).
struct AskPipe {
    protocol: Arc<dyn Interactive>,
    sender: tokio::net::unix::pipe::Sender,
    first: String,
}

/// What the first turn of an `output_schema` job leaves to its corrective turn: the workspace
/// before the job (its outputs span both turns), its start and its usage.
struct FirstTurn {
    before: Taken,
    started: Timestamp,
    usage: Usage,
}

/// `prepare` either readies the job or settles it without starting anything.
enum Prep<'c> {
    Ready(Box<Prepared<'c>>),
    Settle(FinishFacts),
}

impl Core {
    /// Runs one job to its final state. Never fails: every failure becomes the job's outcome.
    /// `start`: what the claim already read for the start, if anything.
    pub(super) async fn run_job(&self, job: Job, handle: &RunHandle, start: Option<StartFacts>) {
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
            match self.execute(&job, handle, &mut sink, start).await {
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

    async fn execute(
        &self,
        job: &Job,
        handle: &RunHandle,
        sink: &mut Sink<'_>,
        start: Option<StartFacts>,
    ) -> Result<()> {
        self.execute_turn(job, handle, sink, None, start).await
    }

    /// One run of the agent; `first` is set for the corrective turn of an `output_schema` job
    /// whose first answer was rejected (#20), which continues the job where that one ended.
    async fn execute_turn(
        &self,
        job: &Job,
        handle: &RunHandle,
        sink: &mut Sink<'_>,
        first: Option<FirstTurn>,
        start: Option<StartFacts>,
    ) -> Result<()> {
        let before = first.as_ref().map(|f| f.before.clone());
        let p = match self.prepare(job, handle, sink, before, start).await? {
            Prep::Ready(p) => *p,
            Prep::Settle(facts) => return self.finish(sink, None, facts).await,
        };
        let program = p.spec.program.clone();
        let stdin = p.spec.stdin.clone();
        let agent_span =
            tracing::info_span!("agent", program = %program, pid = tracing::field::Empty);
        // The job's jail is built while its files and before-snapshot are made; its agent runs
        // once they are. When they fail, nothing was started: the job fails inside the server.
        let (spawned, ready) = self
            .launcher
            .spawn_when(p.spec, p.ready)
            .instrument(agent_span.clone())
            .await?;
        let Ready {
            before,
            before_row,
            pipe,
        } = ready;
        // The before-snapshot's row commits while the agent starts: the snapshot itself (what
        // the workspace held) was taken before, and nothing reads the row until the job ends.
        let recorded = match &before_row {
            Some(row) => self.store.put_snapshot(row).await,
            None => Ok(()),
        };
        let process = match spawned {
            Ok(process) => process,
            Err(e) => {
                recorded?;
                let msg = format!("cannot start agent {program:?}: {e}");
                return self.finish(sink, None, FinishFacts::failed(msg)).await;
            }
        };
        // Without its before-snapshot the job's outputs could not be told: the job fails inside
        // the server, as when the row was stored before the start, and the agent just started
        // goes (dropping the process kills its supervisor and with it the tree).
        if let Err(e) = recorded {
            drop(process);
            return Err(e);
        }
        let started = Timestamp::now();
        agent_span.record("pid", process.pid());
        let gateway_token = p.access.as_ref().map(|(a, _)| a.token.clone());
        let claim = self
            .claim_for_adoption(job, process.token(), gateway_token)
            .await;
        let running = metrics().job_running();
        tracing::info!(job = %job.id, session = %p.session.id, agent = %job.spec.agent, pid = process.pid(), "job started");
        let state = job.state.transition(JobState::Running { started })?;
        let ev = sink.event(
            EventKind::Started {
                agent: job.spec.agent.clone(),
                command: program,
                pid: process.pid(),
                resumed_conversation_id: p.resume.clone(),
            },
            None,
        );
        let update = JobUpdate {
            state: state.clone(),
            result: String::new(),
            usage: Usage::default(),
            conversation_id: p.resume.clone(),
        };
        // Not awaited here: the pump starts while it commits and the first output lines join it
        // in the event log's queue (often in the same commit).
        let started_write = sink.submit(vec![ev], Some(update)).await?;

        let control = RunControl {
            cancel: handle.cancel.clone(),
            timeout: job.spec.timeout,
            grace: self.config.timing.kill_grace,
        };
        let limits = &self.config.limits;
        // A protocol with its own output (a JSON-RPC agent) has its own parser.
        let parser = pipe.as_ref().and_then(|pipe| pipe.protocol.parser());
        let mut pump = Pump::new(
            parser.unwrap_or_else(|| agents::parser(p.profile)),
            state,
            p.resume,
            (limits.job_output_max_bytes, limits.job_output_max_events),
        );
        pump.control = pipe.map(|pipe| self.start_control(job, handle, &p.session, pipe, &p.tx));
        let run = tokio::spawn(process.run(p.tx, control).instrument(agent_span));
        let mut rx = p.rx;
        if let Err(e) = pump.run(sink, &mut rx, started_write).await {
            // Nothing more of this run can be recorded (the job is about to be marked failed, or
            // another replica settled it): stop the agent instead of leaving it running
            // unobserved. Dropping the process kills its supervisor and with it the whole tree.
            run.abort();
            self.forget(claim).await;
            return Err(e);
        }
        let outcome = run.await;
        if let Stdin::File(path) = &stdin {
            // The agent read it (or never will): a large prompt need not linger in its HOME.
            let _ = tokio::fs::remove_file(path).await;
        }
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                let msg = format!("agent supervisor task failed: {e}");
                let finished = self
                    .finish(sink, Some(started), FinishFacts::failed(msg))
                    .await;
                self.forget(claim).await;
                return finished;
            }
        };
        let summary = pump.parser.summary();
        match outcome.stop {
            Some(StopCause::Cancelled) => metrics().kill_escalation("cancelled"),
            Some(StopCause::TimedOut) => metrics().kill_escalation("timed_out"),
            None => {}
        }
        // The gateway's grant ends with the agent: a call after this is refused.
        drop(p.access);
        let stderr_tail: Vec<String> = pump.stderr_tail.iter().cloned().collect();
        let exit = outcome.exit;
        let verdict = verdict(Ended {
            stop: outcome.stop,
            exit,
            limit_hit: pump.limit_hit.take(),
            budget_hit: p.budget_hit.get().cloned(),
            cancel_reason: handle.reason.get().cloned(),
            timeout: job.spec.timeout,
            agent_error: summary.error.clone(),
            stderr_tail: &stderr_tail,
            interrupted: pump.control.take().is_some_and(|c| c.handle.interrupted()),
        });
        let (verdict, result) = super::caps::structured(&job.spec, verdict, &summary);
        let mut facts = FinishFacts {
            outcome: verdict,
            exit: Some(exit),
            result,
            usage: pump.metered.over(summary.usage),
            conversation_id: summary.conversation_id.or(pump.conversation.take()),
        };
        let started = match &first {
            Some(f) => {
                facts.usage = super::caps::add_usage(&f.usage, &facts.usage);
                f.started
            }
            None => started,
        };
        if let (None, Outcome::OutputSchema { message }, Some(conversation)) =
            (&first, &facts.outcome, &facts.conversation_id)
        {
            // One corrective turn in the same conversation, told what was wrong.
            self.store
                .set_agent_conversation(
                    &p.session.id,
                    &job.spec.agent,
                    conversation,
                    Timestamp::now(),
                )
                .await?;
            let mut next = job.clone();
            next.spec.prompt = super::caps::corrective_prompt(
                next.spec.caps.output_schema.as_deref().unwrap_or_default(),
                message,
            );
            next.last_seq = sink.next_seq - 1;
            let first = FirstTurn {
                before,
                started,
                usage: facts.usage,
            };
            drop(running);
            // The corrective turn is a new run with its own claim; a restart between the two
            // fails the job as interrupted, which replaying the first turn could not undo.
            self.forget(claim).await;
            // The conversation just changed: the corrective turn reads its facts anew.
            return Box::pin(self.execute_turn(&next, handle, sink, Some(first), None)).await;
        }
        hold_end_for_tests().await;
        let ended = async {
            // Both before the job is final (its outputs are part of it; the session's next job
            // may start as soon as it is), and independent of each other: written together, they
            // share a commit where the store groups what is queued (SQLite's writer).
            let conversation = async {
                match &facts.conversation_id {
                    Some(id) => {
                        self.store
                            .set_agent_conversation(
                                &p.session.id,
                                &job.spec.agent,
                                id,
                                Timestamp::now(),
                            )
                            .await
                    }
                    None => Ok(()),
                }
            };
            tokio::try_join!(
                self.record_outputs(job, &p.session, Arc::clone(&before.tree)),
                conversation,
            )?;
            // Not running any more once a reader can see it final (a scrape right after must
            // agree).
            drop(running);
            self.finish(sink, Some(started), facts).await
        }
        .await;
        // Only now: until the end is stored, the journal is what a restarted agentd would end
        // the job from (issue #23).
        self.forget(claim).await;
        ended?;
        self.after_finish(job, &p.session).await;
        Ok(())
    }

    /// Everything before the spawn: the session and profile still exist and the job is not
    /// cancelled; the adapter's launch, its HOME files and stdin; the env, the gateway grant and
    /// the jail; the workspace's before-snapshot.
    async fn prepare<'c>(
        &'c self,
        job: &Job,
        handle: &RunHandle,
        sink: &mut Sink<'_>,
        before: Option<Taken>,
        start: Option<StartFacts>,
    ) -> Result<Prep<'c>> {
        let snapshot_due = before.is_none();
        let (session, resume, latest_tree) = match start {
            Some(f) => (
                f.session,
                f.conversation,
                f.newest_snapshot.filter(|_| snapshot_due).map(|r| r.tree),
            ),
            None => self.start_facts(job, snapshot_due).await?,
        };
        let Some(session) = session else {
            return Ok(Prep::Settle(FinishFacts::failed(
                "session was deleted".into(),
            )));
        };
        if handle.cancel.is_cancelled() {
            let reason = handle.reason.get().cloned().unwrap_or_default();
            return Ok(Prep::Settle(FinishFacts::outcome(Outcome::Cancelled {
                reason,
            })));
        }
        let Some(profile) = self.config.agents.get(&job.spec.agent) else {
            let msg = format!("agent profile {:?} is no longer configured", job.spec.agent);
            return Ok(Prep::Settle(FinishFacts::failed(msg)));
        };
        let workspace = self.workspaces.workspace_dir(&session.id);
        let home = self.workspaces.home_dir(&session.id);
        let sandbox = self.config.sandbox.of(&job.spec.agent);
        let mut extras = match self.resolve_catalog(&job.spec.catalog, &home) {
            Ok(e) => e,
            Err(msg) => return Ok(Prep::Settle(FinishFacts::failed(msg))),
        };
        let images = self
            .attachment_images(&session.id, &job.spec, profile.kind)
            .await;
        let ctx = LaunchContext {
            workspace: &workspace,
            home: &home,
            resume_conversation: resume.as_deref(),
            jailed: sandbox.is_some(),
            mcp: &extras.mcp,
            images: &images,
        };
        let mut launch = match agents::launch(profile, &job.spec, &ctx) {
            Ok(l) => l,
            Err(e) => return Ok(Prep::Settle(FinishFacts::failed(e.to_string()))),
        };
        // A jailed standby mounts each install on its directory while `ready` runs: the
        // directories must exist before the spec reaches it, not as part of `ready`.
        self.workspaces
            .write_home_files(&session.id, std::mem::take(&mut extras.placeholders))
            .await?;
        let home_files = std::mem::take(&mut launch.files);
        let renames = agents::home_renames(profile, &job.spec, &ctx);
        // Under `ask` the agent reads a pipe its controller writes (prompt, answers, input); the
        // controller's first words are the prompt and the job's images, in the protocol's shape.
        let asks = job
            .spec
            .asks()
            .then(|| agents::interactive::protocol(profile, &job.spec, &ctx))
            .flatten()
            .map(|protocol| {
                let text = agents::first_prompt(profile.kind, &job.spec, &images);
                (protocol.prompt(&text, &images), protocol)
            });
        let stdin = match (&asks, &launch.stdin) {
            (Some(_), _) => Stdin::File(super::control::pipe_path(&home)),
            (None, Some(_)) => Stdin::File(input_path(&home)),
            (None, None) => Stdin::Null,
        };
        // A jailed agent runs as ids of its own; the before-snapshot's walk gives it what agentd
        // wrote (the jail would otherwise walk the whole workspace again before the agent runs).
        let hand_to = self
            .config
            .sandbox
            .host_ids
            .filter(|_| sandbox.is_some() && before.is_none());
        let work = StartWork {
            session: session.id.clone(),
            job: job.id.clone(),
            home_files,
            renames,
            input: launch.stdin.take(),
            asks,
            before,
            basis: latest_tree.map_or(Basis::Nothing, Basis::Stored),
            hand_to,
        };
        let ready = Box::pin(self.ready_to_start(work));

        let (tx, rx) = mpsc::channel::<Output>(1024);
        let budget_hit: Arc<OnceLock<String>> = Arc::default();
        let in_netns = sandbox.is_some_and(|s| s.network == Network::Gateway);
        let access = self.gateway_access(job, &mut launch, &tx, handle, &budget_hit, in_netns);
        let mut env = super::env::agent_env(&home, &launch.env, &profile.env, &job.spec.env);
        if let Some((access, overrides)) = &access {
            super::env::route_through_gateway(&mut env, overrides, access.key());
            sink.secrets.push(access.key().to_owned());
        }
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
                &self.jail_hide,
                sandbox,
                &launch.program,
                path,
                &workspace,
                &home,
            );
            jail.spec.installs = std::mem::take(&mut extras.installs);
            jail.spec.workspace_handed = hand_to.is_some();
            if let (Some(gw), true) = (&self.gateway, in_netns) {
                jail.spec.bridges = vec![Bridge {
                    port: BRIDGE_PORT,
                    socket: gw.socket().to_path_buf(),
                }];
            }
            jail
        });
        let spec = ProcessSpec {
            program: launch.program,
            args: launch.args,
            env,
            cwd: workspace,
            max_line_bytes: self.config.limits.max_line_bytes,
            jail,
            stdin,
        };
        Ok(Prep::Ready(Box::new(Prepared {
            session,
            profile,
            spec,
            resume,
            access,
            budget_hit,
            ready,
            tx,
            rx,
        })))
    }

    /// HOME's files, the agent's input (also in HOME, under names of agentd's own) and the
    /// workspace's before-snapshot: the last work before the agent may run. They do not touch one
    /// another: blocking work each, waited for together rather than one thread hand-over after
    /// the other on the job's start.
    async fn ready_to_start(&self, w: StartWork) -> Result<Ready> {
        let home_files = async {
            self.workspaces
                .write_home_files(&w.session, w.home_files)
                .await?;
            if let Some(rename) = w.renames {
                self.workspaces
                    .rename_home_files(&w.session, rename)
                    .await?;
            }
            Ok::<_, Error>(())
        };
        let input = async {
            Ok::<_, Error>(match (w.asks, w.input) {
                (Some((first, protocol)), _) => {
                    let sender = super::control::open_pipe(&self.workspaces, &w.session).await?;
                    Some(AskPipe {
                        first,
                        protocol: Arc::from(protocol),
                        sender,
                    })
                }
                (None, Some(text)) => {
                    self.workspaces
                        .write_home_input(&w.session, INPUT_FILE, text.into_bytes())
                        .await?;
                    None
                }
                (None, None) => None,
            })
        };
        // Its row is stored once the agent starts (`execute_turn`).
        let snapshot = async {
            Ok::<_, Error>(match w.before {
                Some(taken) => (taken, None),
                None => {
                    let (taken, row) = self
                        .take_unrecorded(&w.session, &w.job, SnapPoint::Before, w.basis, w.hand_to)
                        .await?;
                    (taken, Some(row))
                }
            })
        };
        let ((), pipe, (before, before_row)) = tokio::try_join!(home_files, input, snapshot)?;
        Ok(Ready {
            before,
            before_row,
            pipe,
        })
    }

    /// What [`StartFacts`] holds, read here: three independent reads, waited for together. The
    /// session; the agent's own conversation (a session that switched agents must never hand
    /// one agent another's id, #20; a deleted session has none); the listing the before-snapshot
    /// starts from (a corrective turn has its snapshot already).
    async fn start_facts(
        &self,
        job: &Job,
        snapshot_due: bool,
    ) -> Result<(Option<Session>, Option<String>, Option<String>)> {
        let latest_tree = async {
            if snapshot_due {
                self.latest_tree(&job.session_id).await
            } else {
                Ok(None)
            }
        };
        tokio::try_join!(
            self.store.get_session_any(&job.session_id),
            self.store
                .agent_conversation(&job.session_id, &job.spec.agent),
            latest_tree,
        )
    }

    /// With adoption on, records which job the supervisor of `token` runs, so that the next
    /// agentd can adopt it if this one stops (issue #23). Returns the token to forget at the end.
    async fn claim_for_adoption(
        &self,
        job: &Job,
        token: &str,
        gateway: Option<String>,
    ) -> Option<String> {
        if !crate::runner::adopt::enabled() {
            return None;
        }
        let dir = crate::runner::records::run_dir(&self.config.data_dir);
        let claim = crate::runner::adopt::Claim {
            token: token.to_owned(),
            job: job.id.to_string(),
            replica: self.config.replica_id.clone(),
            gateway,
        };
        let written =
            tokio::task::spawn_blocking(move || crate::runner::adopt::write_claim(&dir, &claim))
                .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(job = %job.id, "cannot record the job for adoption; it ends with agentd");
        }
        Some(token.to_owned())
    }

    /// [`Self::forget_claim`] of a claim that may not have been written.
    async fn forget(&self, claim: Option<String>) {
        if let Some(token) = claim {
            self.forget_claim(token).await;
        }
    }

    /// Removes a finished job's claim and journal.
    pub(in crate::core) async fn forget_claim(&self, token: String) {
        let dir = crate::runner::records::run_dir(&self.config.data_dir);
        let _ =
            tokio::task::spawn_blocking(move || crate::runner::adopt::forget(&dir, &token)).await;
    }

    /// What the job changed in the workspace, from its two snapshots, stored with the job. The
    /// after-snapshot starts from the before-snapshot's listing, which the caller holds: neither
    /// the store is asked for the session's newest snapshot nor its listing read back and parsed
    /// (for a workspace of many files, a large part of the snapshot's time). A snapshot that
    /// cannot be taken loses the outputs, not the job.
    async fn record_outputs(&self, job: &Job, session: &Session, before: Arc<Tree>) -> Result<()> {
        let after = self
            .take_unrecorded(
                &session.id,
                &job.id,
                SnapPoint::After,
                Basis::Held(Arc::clone(&before)),
                None,
            )
            .await;
        let (after, row) = match after {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot snapshot workspace");
                return Ok(());
            }
        };
        let changes = Self::outputs_of(&before, &after.tree);
        // The snapshot's row and the outputs do not depend on each other: written together,
        // they share a commit where the store groups what is queued (SQLite's writer).
        let (row_stored, outputs_stored) = tokio::join!(
            self.store.put_snapshot(&row),
            self.store.put_job_outputs(&job.id, &changes),
        );
        if let Err(e) = row_stored {
            tracing::warn!(job = %job.id, error = %e, "cannot record the after-snapshot");
        }
        if after.tree.entries.len() >= LARGE_WORKSPACE {
            drop(changes);
            // Nobody waits for it: trimming a large heap takes a few ms.
            drop(tokio::task::spawn_blocking(give_back_freed_memory));
        }
        outputs_stored
    }

    /// The history's retention, once the job is final: nobody waits for it.
    async fn after_finish(&self, job: &Job, session: &Session) {
        if let Err(e) = self.enforce_retention(&session.id).await {
            tracing::warn!(job = %job.id, error = %e, "cannot apply history retention");
        }
        self.extend_session(session).await;
    }

    /// Starts a controlled job's controller (its rules, its timeout) and hands it to the job's
    /// run handle, where RespondToPermission, SendInput and InterruptJob find it.
    fn start_control(
        &self,
        job: &Job,
        handle: &RunHandle,
        session: &Session,
        pipe: AskPipe,
        tx: &mpsc::Sender<Output>,
    ) -> pump::Controlled {
        let AskPipe {
            protocol,
            sender,
            first,
        } = pipe;
        let c = &job.spec.control;
        let setup = super::control::Setup {
            protocol: protocol.clone(),
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
            workspace: self
                .workspaces
                .workspace_dir(&session.id)
                .to_string_lossy()
                .into_owned(),
            notify: super::control::Notify {
                webhooks: self.webhooks.clone(),
                job: job.clone(),
            },
        };
        let (ctl, task) = super::control::start(setup, sender, first, tx);
        let _ = handle.control.set(ctl.clone());
        // Messages recorded before the controller existed can be delivered now.
        self.control_wake.notify_one();
        pump::Controlled {
            handle: ctl,
            protocol,
            _task: pump::AbortOnDrop(task),
        }
    }
}

/// Returns the heap's free pages to the kernel, so a container's memory limit sees what agentd
/// holds, not what it once held.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn give_back_freed_memory() {
    // SAFETY: malloc_trim only releases free memory of glibc's own arenas; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back_freed_memory() {}
