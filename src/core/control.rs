//! Two-way control of a running job (issue #17): the job's controller owns the write end of the
//! agent's stdin pipe (a FIFO in its HOME), keeps the pending permission requests with their
//! fail-closed deadlines, applies the permission rules, and turns the caller's answers, input and
//! interrupts into the agent's own protocol ([`crate::agents::interactive`]). Everything it
//! decides is also an event of the job, sent into the run's output channel so it is numbered and
//! stored in order with the agent's own events. A message for a job that runs elsewhere goes
//! through the store (`control_relay`).

use super::Core;
use crate::agents::interactive::{Interactive, Signal};
use crate::domain::permission::{self, PermissionRules};
use crate::domain::{EventKind, Job, JobId, TenantId};
use crate::error::{Error, Reason, Result};
use crate::runner::Output;
use crate::store::control::Control;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Messages queued for one controller: signals seen in the agent's output, requests of callers.
const INBOX: usize = 256;

/// Where a controlled job's stdin pipe lives in the session's HOME (the agent sees it there).
const PIPE_FILE: &str = ".agentd-stdin";

/// What a controller is asked to do.
pub(super) enum Command {
    /// From the agent's output.
    Agent(Signal),
    Respond {
        request_id: String,
        allow: bool,
        message: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Input {
        text: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Interrupt {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A running job's way into its controller (kept in its run handle).
#[derive(Clone)]
pub(super) struct ControlHandle {
    tx: mpsc::Sender<Command>,
    /// Set once InterruptJob reached the agent: the job ends CANCELLED, reason INTERRUPTED.
    interrupted: Arc<AtomicBool>,
}

impl ControlHandle {
    /// Whether InterruptJob reached the agent.
    pub(super) fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Acquire)
    }

    /// Hands a signal from the agent's output over without waiting: the pump must never wait on
    /// the controller, which waits on the pump's channel to record its events.
    pub(super) fn observe(&self, protocol: &dyn Interactive, line: &str) {
        if let Some(signal) = protocol.observe(line)
            && self.tx.try_send(Command::Agent(signal)).is_err()
        {
            tracing::warn!("a job's controller is not keeping up; a signal was dropped");
        }
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Command) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| finishing())?;
        answer.await.map_err(|_| finishing())?
    }
}

fn finishing() -> Error {
    Error::precondition(Reason::JobFinished, "the job is finishing")
}

/// Everything a controller needs for one run.
pub(super) struct Setup {
    pub protocol: Arc<dyn Interactive>,
    pub operator: PermissionRules,
    pub job: PermissionRules,
    pub timeout: std::time::Duration,
    pub workspace: String,
    pub notify: Notify,
}

/// Who hears of a request left to the caller besides the job's event stream: the tenant's
/// webhook endpoints subscribed to `job.permission_requested` (issue #19).
pub(super) struct Notify {
    /// Read at each request: the outbox is attached after the core starts.
    pub webhooks: Arc<std::sync::OnceLock<Arc<crate::webhooks::Webhooks>>>,
    pub job: Job,
}

impl Notify {
    /// Enqueues the message off the controller's path: a slow store never delays the agent's
    /// answers, and a failed enqueue is logged, not fatal to the job.
    fn permission_requested(&self, request_id: &str, detail: Value) {
        let Some(webhooks) = self.webhooks.get().cloned() else {
            return;
        };
        let (job, request_id) = (self.job.clone(), request_id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = webhooks
                .permission_requested(&job, &request_id, detail)
                .await
            {
                tracing::warn!(job = %job.id, error = %e, "cannot enqueue a permission webhook");
            }
        });
    }
}

/// Where [`open_pipe`] makes the agent's input pipe.
pub(super) fn pipe_path(home: &Path) -> PathBuf {
    home.join(PIPE_FILE)
}

/// Creates the FIFO the agent reads as its stdin in the session's HOME (replacing whatever an
/// earlier job left at that name, without following links) and opens its write end. Opened
/// read-write so that the open neither blocks nor fails before the agent opens its end, and the
/// agent never sees EOF before agentd closes it.
pub(super) async fn open_pipe(
    workspaces: &crate::workspace::Workspaces,
    session: &crate::domain::SessionId,
) -> Result<pipe::Sender> {
    let fd = workspaces.home_fifo(session, PIPE_FILE).await?;
    // Checks it is a FIFO open for writing.
    pipe::Sender::from_owned_fd(fd)
        .map_err(|e| Error::internal(format!("cannot open the agent's input pipe: {e}")))
}

/// Starts a controller writing to `pipe`, its first words `first` (the protocol's prompt
/// message, [`Interactive::prompt`]). Its events go to `events` (weakly held: the run's output
/// channel must close when the agent's output ends).
pub(super) fn start(
    setup: Setup,
    pipe: pipe::Sender,
    first: String,
    events: &mpsc::Sender<Output>,
) -> (ControlHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let interrupted = Arc::new(AtomicBool::new(false));
    let controller = Controller {
        setup,
        pipe: Some(pipe),
        events: events.downgrade(),
        pending: HashMap::new(),
        decided: HashSet::new(),
        open_turns: 1,
        interrupts: 0,
        interrupted: interrupted.clone(),
    };
    let task = tokio::spawn(controller.run(rx, first));
    (ControlHandle { tx, interrupted }, task)
}

struct Pending {
    input: Value,
    deadline: Instant,
}

struct Controller {
    setup: Setup,
    /// Closed (dropped) once the agent has answered every message: it then ends.
    pipe: Option<pipe::Sender>,
    events: mpsc::WeakSender<Output>,
    pending: HashMap<String, Pending>,
    decided: HashSet<String>,
    /// User messages sent whose turn has not ended yet.
    open_turns: u64,
    interrupts: u64,
    interrupted: Arc<AtomicBool>,
}

impl Controller {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, first: String) {
        self.write(&first).await;
        loop {
            let next = self.pending.values().map(|p| p.deadline).min();
            let cmd = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => return,
                },
                () = sleep_until(next) => {
                    self.expire().await;
                    continue;
                }
            };
            self.handle(cmd).await;
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Agent(Signal::Permission {
                id,
                tool,
                input,
                suggestion,
            }) => self.asked(id, tool, input, suggestion).await,
            Command::Agent(Signal::Send(text)) => self.write(&text).await,
            Command::Agent(Signal::TurnEnded) => {
                self.open_turns = self.open_turns.saturating_sub(1);
                if self.open_turns == 0 || self.interrupted.load(Ordering::Acquire) {
                    // Nothing more to say: EOF lets the agent end.
                    self.pipe = None;
                }
            }
            Command::Agent(Signal::TurnEndedThen(next)) => {
                // The held message's turn is still open, so the input stays open too.
                self.open_turns = self.open_turns.saturating_sub(1);
                if self.interrupted.load(Ordering::Acquire) {
                    self.pipe = None;
                } else {
                    self.write(&next).await;
                }
            }
            Command::Respond {
                request_id,
                allow,
                message,
                reply,
            } => {
                let r = self.respond(request_id, allow, message).await;
                let _ = reply.send(r);
            }
            Command::Input { text, reply } => {
                let r = self.input(text).await;
                let _ = reply.send(r);
            }
            Command::Interrupt { reply } => {
                let r = self.interrupt().await;
                let _ = reply.send(r);
            }
        }
    }

    async fn asked(&mut self, id: String, tool: String, input: Value, suggestion: Option<Value>) {
        let s = &self.setup;
        if let Some(d) = permission::decide(&s.operator, &s.job, &tool, &input, &s.workspace) {
            let message = format!("decided by the rule {}", d.rule);
            self.decide(&id, &input, d.allow, &message, "rule").await;
            return;
        }
        let timeout = self.setup.timeout;
        // The tool's input stays out: it may hold values only the event log's redaction knows;
        // the receiver reads it from the job's events (`request_id` names the event).
        let detail = serde_json::json!({ "tool": tool, "timeout_seconds": timeout.as_secs() });
        self.setup.notify.permission_requested(&id, detail);
        self.emit(EventKind::PermissionRequest {
            request_id: id.clone(),
            tool,
            input_json: input.to_string(),
            suggestion_json: suggestion.map(|v| v.to_string()).unwrap_or_default(),
            timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
        })
        .await;
        self.pending.insert(
            id,
            Pending {
                input,
                deadline: Instant::now() + timeout,
            },
        );
    }

    async fn respond(&mut self, id: String, allow: bool, message: String) -> Result<()> {
        let Some(p) = self.pending.remove(&id) else {
            return Err(if self.decided.contains(&id) {
                Error::precondition(
                    Reason::PermissionDecided,
                    format!("permission request {id:?} was already decided"),
                )
            } else {
                Error::not_found(
                    Reason::PermissionRequestNotFound,
                    format!("no permission request {id:?} in this job"),
                )
            });
        };
        let message = if message.is_empty() && !allow {
            "denied by the caller".to_owned()
        } else {
            message
        };
        self.decide(&id, &p.input, allow, &message, "caller").await;
        Ok(())
    }

    /// Denies every request whose deadline has passed: fail-closed.
    async fn expire(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(p) = self.pending.remove(&id) {
                let message = format!("no answer within {}s: denied", self.setup.timeout.as_secs());
                self.decide(&id, &p.input, false, &message, "timeout").await;
            }
        }
    }

    async fn decide(&mut self, id: &str, input: &Value, allow: bool, message: &str, who: &str) {
        self.decided.insert(id.to_owned());
        let answer = self.setup.protocol.answer(id, allow, message, input);
        self.write(&answer).await;
        self.emit(EventKind::PermissionResolved {
            request_id: id.to_owned(),
            who: who.to_owned(),
            allow,
            message: message.to_owned(),
        })
        .await;
    }

    async fn input(&mut self, text: String) -> Result<()> {
        if self.pipe.is_none() || self.interrupted.load(Ordering::Acquire) {
            return Err(finishing());
        }
        let msg = self.setup.protocol.user_message(&text);
        self.open_turns += 1;
        self.write(&msg).await;
        self.emit(EventKind::Input { text }).await;
        Ok(())
    }

    async fn interrupt(&mut self) -> Result<()> {
        if self.pipe.is_none() {
            return Err(finishing());
        }
        self.interrupts += 1;
        self.interrupted.store(true, Ordering::Release);
        let msg = self.setup.protocol.interrupt(self.interrupts);
        self.write(&msg).await;
        Ok(())
    }

    async fn write(&mut self, text: &str) {
        let Some(pipe) = &mut self.pipe else { return };
        if let Err(e) = pipe.write_all(text.as_bytes()).await {
            tracing::warn!(error = %e, "cannot write to the agent's input");
            self.pipe = None;
        }
    }

    async fn emit(&self, kind: EventKind) {
        if let Some(tx) = self.events.upgrade() {
            let _ = tx.send(Output::Event(kind)).await;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where a control message for a job goes.
pub(super) enum Route {
    /// The job runs in this process: straight to its controller.
    Here(JobId, ControlHandle),
    /// Through the store, to whichever replica runs (or will run) the job.
    Elsewhere(JobId),
}

impl Core {
    /// Where `control` of a job of `tenant` goes; NOT_FOUND for anyone else's job.
    async fn control_of(&self, tenant: &TenantId, id: &str, control: &str) -> Result<Route> {
        let job: Job = self.owned_job(tenant, id).await?;
        if job.state.is_finished() {
            return Err(Error::precondition(
                Reason::JobFinished,
                format!("job {id} already finished as {}", job.state.name()),
            ));
        }
        let profile = self.config.agents.get(&job.spec.agent);
        if let Some(p) = profile
            && !crate::agents::interactive::controls(p.kind).contains(&control)
        {
            return Err(crate::agents::unsupported_control(p, "job_id", control));
        }
        if !job.spec.asks() {
            return Err(Error::precondition(
                Reason::JobNotControllable,
                format!("job {id} was not submitted with permission_mode \"ask\""),
            ));
        }
        Ok(match self.controller(&job.id) {
            Some(h) => Route::Here(job.id, h),
            None => Route::Elsewhere(job.id),
        })
    }

    /// RespondToPermission: the first answer wins, whichever replica took it.
    pub async fn respond_to_permission(
        &self,
        tenant: &TenantId,
        job_id: &str,
        request_id: String,
        allow: bool,
        message: String,
    ) -> Result<()> {
        check_text("request_id", &request_id, 256)?;
        check_text("message", &message, 64 << 10)
            .or_else(|e| if message.is_empty() { Ok(()) } else { Err(e) })?;
        let route = self
            .control_of(tenant, job_id, crate::agents::interactive::CONTROL_ASK)
            .await?;
        let control = Control::Answer {
            request_id,
            allow,
            message,
        };
        self.relay(route, control).await
    }

    /// SendInput: a user message for the agent's next turn.
    pub async fn send_input(&self, tenant: &TenantId, job_id: &str, text: String) -> Result<()> {
        check_text("text", &text, self.config.limits.max_prompt_bytes)?;
        let route = self
            .control_of(tenant, job_id, crate::agents::interactive::CONTROL_INPUT)
            .await?;
        self.relay(route, Control::Input { text }).await
    }

    /// InterruptJob: stops the agent's turn; the job ends CANCELLED, reason INTERRUPTED.
    pub async fn interrupt_job(&self, tenant: &TenantId, job_id: &str) -> Result<()> {
        let route = self
            .control_of(
                tenant,
                job_id,
                crate::agents::interactive::CONTROL_INTERRUPT,
            )
            .await?;
        self.relay(route, Control::Interrupt).await
    }

    pub(super) fn controller(&self, job: &JobId) -> Option<ControlHandle> {
        super::lock(&self.running)
            .get(job)
            .and_then(|h| h.control.get().cloned())
    }
}

impl ControlHandle {
    /// Hands `control` to the controller and waits for its verdict.
    pub(super) async fn deliver(&self, control: Control) -> Result<()> {
        match control {
            Control::Answer {
                request_id,
                allow,
                message,
            } => {
                self.ask(|reply| Command::Respond {
                    request_id,
                    allow,
                    message,
                    reply,
                })
                .await
            }
            Control::Input { text } => self.ask(|reply| Command::Input { text, reply }).await,
            Control::Interrupt => self.ask(|reply| Command::Interrupt { reply }).await,
        }
    }
}

/// A required text field: set, at most `max` bytes, no NUL.
fn check_text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(
            Reason::MissingField,
            field,
            format!("{field} is required"),
        ));
    }
    if value.len() > max || value.contains('\0') {
        return Err(Error::invalid(
            Reason::InvalidField,
            field,
            format!("{field} must be at most {max} bytes with no NUL byte"),
        ));
    }
    Ok(())
}

/// What an adopted `ask` job's event log says about its permission requests (issue #23).
#[derive(Debug, Default)]
pub(super) struct Asked {
    /// Requested and not resolved: the agent waits for an answer, in the order asked.
    pub open: Vec<(String, String)>,
    /// Requested or resolved: already in the log.
    pub known: HashSet<String>,
}

impl Asked {
    /// Folds one stored event in.
    pub(super) fn see(&mut self, kind: &EventKind) {
        match kind {
            EventKind::PermissionRequest {
                request_id, tool, ..
            } => {
                self.known.insert(request_id.clone());
                self.open.push((request_id.clone(), tool.clone()));
            }
            EventKind::PermissionResolved { request_id, .. } => {
                self.known.insert(request_id.clone());
                self.open.retain(|(id, _)| id != request_id);
            }
            _ => {}
        }
    }
}

/// The controller of an adopted `ask` job (issue #23). The agent's input was a FIFO whose only
/// writer was the previous agentd: it ended with that process, and nothing written now can reach
/// the agent. So nothing may wait for an answer: every request still open (pending in the log, or
/// asked in output the previous agentd never got to record) is resolved denied, `who =
/// "restart"`, as an event, and `deny` ends the job with that message. Requests already in the
/// log are not asked again when the journal's replay shows them. Answers, input and interrupts
/// are refused with the reason.
pub(super) fn start_orphaned(
    asked: Asked,
    timeout: std::time::Duration,
    deny: Arc<dyn Fn(String) + Send + Sync>,
    events: &mpsc::Sender<Output>,
) -> (ControlHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel(INBOX);
    let Asked { open, mut known } = asked;
    // Settled here, before the adopted job's output is followed, not in the task below: an agent
    // that already exited (its input ended with the old agentd) is replayed at once, and the job
    // must not be judged before its open requests are resolved (the task may not have run yet).
    // The events channel is new and holds far more than a job's open requests.
    for (id, tool) in open {
        let message = restart_denial(&id, &tool);
        let _ = events.try_send(Output::Event(resolved_by_restart(&id, &message)));
        deny(message);
    }
    let events = events.downgrade();
    let task = tokio::spawn(async move {
        let emit = |kind: EventKind| {
            let events = events.clone();
            async move {
                if let Some(tx) = events.upgrade() {
                    let _ = tx.send(Output::Event(kind)).await;
                }
            }
        };
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Agent(Signal::Permission {
                    id,
                    tool,
                    input,
                    suggestion,
                }) if known.insert(id.clone()) => {
                    emit(EventKind::PermissionRequest {
                        request_id: id.clone(),
                        tool: tool.clone(),
                        input_json: input.to_string(),
                        suggestion_json: suggestion.map(|v| v.to_string()).unwrap_or_default(),
                        timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
                    })
                    .await;
                    let message = restart_denial(&id, &tool);
                    emit(resolved_by_restart(&id, &message)).await;
                    deny(message);
                }
                Command::Agent(_) => {}
                Command::Respond { reply, .. }
                | Command::Input { reply, .. }
                | Command::Interrupt { reply } => {
                    let _ = reply.send(Err(input_lost()));
                }
            }
        }
    });
    let handle = ControlHandle {
        tx,
        interrupted: Arc::new(AtomicBool::new(false)),
    };
    (handle, task)
}

fn restart_denial(id: &str, tool: &str) -> String {
    format!(
        "agentd restarted with permission request {id} ({tool}) pending; the agent's input \
         ended with the previous agentd, so no answer can reach it: denied by the restart"
    )
}

fn resolved_by_restart(id: &str, message: &str) -> EventKind {
    EventKind::PermissionResolved {
        request_id: id.to_owned(),
        who: "restart".to_owned(),
        allow: false,
        message: message.to_owned(),
    }
}

fn input_lost() -> Error {
    Error::precondition(
        Reason::JobNotControllable,
        "agentd restarted while the job ran: the agent's input ended with the previous agentd, \
         so the job can no longer be answered, sent input or interrupted (cancel still works)",
    )
}
