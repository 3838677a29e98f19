//! `JobService/Attach`: one bidirectional stream for a service. Owns the stream's session: the
//! jobs it follows (each a forwarding task of the core's event stream), the job a control message
//! without a job id means, and turning every client message into an ack or an error carrying its
//! `message_id`, so that one failed message never ends the stream.

use super::job::{events, submit_request, with_trace};
use super::{convert, status};
use crate::core::Core;
use crate::domain::TenantId;
use crate::error::{Error, Reason, Result};
use crate::events::StreamItem;
use crate::pb;
use crate::pb::attach_request::Action;
use crate::telemetry::{TraceParent, metrics};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::{Status, Streaming};

/// Server messages waiting for a slow client; followers wait when it is full.
const OUTBOX: usize = 64;

/// Jobs one stream may follow at once (each holds a store reader and a task).
const MAX_FOLLOWED: usize = 64;

pub(super) type Outbox = mpsc::Receiver<std::result::Result<pb::AttachResponse, Status>>;

/// Starts the stream's session; its server messages come out of the returned receiver.
pub(super) fn start(
    core: Arc<Core>,
    tenant: TenantId,
    traceparent: Option<TraceParent>,
    inbound: Streaming<pb::AttachRequest>,
) -> Outbox {
    let (tx, rx) = mpsc::channel(OUTBOX);
    let session = Session {
        core,
        tenant,
        traceparent,
        out: tx,
        followed: HashMap::new(),
        last_job: None,
    };
    tokio::spawn(session.run(inbound));
    rx
}

struct Session {
    core: Arc<Core>,
    tenant: TenantId,
    traceparent: Option<TraceParent>,
    out: mpsc::Sender<std::result::Result<pb::AttachResponse, Status>>,
    followed: HashMap<String, JoinHandle<()>>,
    last_job: Option<String>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::AttachRequest>) {
        loop {
            match inbound.message().await {
                Ok(Some(msg)) => {
                    let answer = self.handle(msg).await;
                    if self.out.send(Ok(answer)).await.is_err() {
                        break;
                    }
                }
                // The client is done sending: the stream ends once its jobs have finished.
                Ok(None) => {
                    for (_, task) in self.followed.drain() {
                        let _ = task.await;
                    }
                    return;
                }
                Err(st) => {
                    let _ = self.out.send(Err(st)).await;
                    break;
                }
            }
        }
        // The client went away: nobody reads the followers' events any more.
        for (_, task) in self.followed.drain() {
            task.abort();
        }
    }

    async fn handle(&mut self, msg: pb::AttachRequest) -> pb::AttachResponse {
        let id = msg.message_id;
        let result = match msg.action {
            Some(action) => self.act(action).await,
            None => Err(Error::invalid(
                Reason::MissingField,
                "action",
                "action is required",
            )),
        };
        match result {
            Ok(job) => pb::AttachResponse {
                kind: Some(pb::attach_response::Kind::Ack(Box::new(pb::AttachAck {
                    message_id: id,
                    job,
                }))),
            },
            Err(e) => error(id, e),
        }
    }

    async fn act(&mut self, action: Action) -> Result<Option<pb::Job>> {
        match action {
            Action::Submit(r) => {
                let submit = with_trace(submit_request(*r), self.traceparent.clone());
                self.room()?;
                let view = self.core.submit_job(&self.tenant, submit).await?;
                metrics().job_submitted();
                let job = convert::job(view);
                self.follow(&job.job_id, 0).await?;
                Ok(Some(job))
            }
            Action::Attach(r) => {
                self.room()?;
                let view = self.core.get_job(&self.tenant, &r.job_id).await?;
                let job = convert::job(view);
                self.follow(&job.job_id, r.after_seq).await?;
                Ok(Some(job))
            }
            Action::Detach(r) => {
                if let Some(task) = self.followed.remove(&r.job_id) {
                    task.abort();
                }
                Ok(None)
            }
            Action::Respond(r) => {
                let job = self.job_id(r.job_id)?;
                self.core
                    .respond_to_permission(&self.tenant, &job, r.request_id, r.allow, r.message)
                    .await?;
                Ok(None)
            }
            Action::Input(r) => {
                let job = self.job_id(r.job_id)?;
                self.core.send_input(&self.tenant, &job, r.text).await?;
                Ok(None)
            }
            Action::Interrupt(r) => {
                let job = self.job_id(r.job_id)?;
                self.core.interrupt_job(&self.tenant, &job).await?;
                Ok(None)
            }
        }
    }

    /// RESOURCE_EXHAUSTED once the stream follows as many unfinished jobs as it may.
    fn room(&mut self) -> Result<()> {
        self.followed.retain(|_, task| !task.is_finished());
        if self.followed.len() >= MAX_FOLLOWED {
            return Err(Error::exhausted(
                Reason::AttachLimit,
                format!("one Attach stream follows at most {MAX_FOLLOWED} unfinished jobs"),
            ));
        }
        Ok(())
    }

    /// The job a control message names, or the one this stream submitted or attached to last.
    fn job_id(&self, named: String) -> Result<String> {
        if !named.is_empty() {
            return Ok(named);
        }
        self.last_job.clone().ok_or_else(|| {
            Error::invalid(
                Reason::MissingField,
                "job_id",
                "job_id is required before the stream submitted or attached to a job",
            )
        })
    }

    /// Forwards the job's events after `after_seq` into the stream until its `finished` event.
    async fn follow(&mut self, job_id: &str, after_seq: u64) -> Result<()> {
        let rx = self
            .core
            .stream_events(&self.tenant, job_id, after_seq)
            .await?;
        let out = self.out.clone();
        let task = tokio::spawn(forward(job_id.to_owned(), rx, out));
        if let Some(earlier) = self.followed.insert(job_id.to_owned(), task) {
            earlier.abort();
        }
        self.last_job = Some(job_id.to_owned());
        Ok(())
    }
}

async fn forward(
    job_id: String,
    mut rx: mpsc::Receiver<Result<StreamItem>>,
    out: mpsc::Sender<std::result::Result<pb::AttachResponse, Status>>,
) {
    while let Some(item) = rx.recv().await {
        let (evs, keepalive) = match item {
            Ok(StreamItem::Events(evs)) => {
                metrics().events_streamed(evs.len());
                (events(evs), false)
            }
            Ok(StreamItem::Keepalive) => (Vec::new(), true),
            Err(e) => {
                let _ = out.send(Ok(error(0, e))).await;
                return;
            }
        };
        let msg = pb::AttachResponse {
            kind: Some(pb::attach_response::Kind::Events(pb::AttachEvents {
                job_id: job_id.clone(),
                events: evs,
                keepalive,
            })),
        };
        if out.send(Ok(msg)).await.is_err() {
            return;
        }
    }
}

/// What the message's unary RPC would have answered, as a message of the stream.
fn error(message_id: u64, e: Error) -> pb::AttachResponse {
    let reason = e.reason().as_str().to_owned();
    let st = status::to_status(e);
    pb::AttachResponse {
        kind: Some(pb::attach_response::Kind::Error(pb::AttachError {
            message_id,
            code: st.code() as i32,
            reason,
            message: st.message().to_owned(),
        })),
    }
}
