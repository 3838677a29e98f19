//! `agentd.v1.JobService`.

use super::{convert, tenant, wire};
use crate::core::{Core, SubmitJob};
use crate::events::{SharedEvent, StreamItem};
use crate::pb;
use crate::pb::job_service_server::JobService;
use crate::store::JobFilter;
use crate::telemetry::{TraceParent, metrics, trace};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub struct JobApi {
    core: Arc<Core>,
}

impl JobApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub(super) fn submit_request(r: pb::SubmitJobRequest) -> SubmitJob {
    SubmitJob {
        session_id: r.session_id,
        agent: r.agent,
        prompt: r.prompt,
        model: r.model,
        timeout_seconds: r.timeout_seconds,
        env: r.env.into_iter().collect(),
        allowed_tools: r.allowed_tools,
        max_turns: r.max_turns,
        append_system_prompt: r.append_system_prompt,
        permission_mode: r.permission_mode,
        request_id: r.request_id,
        max_cost_usd: r.max_cost_usd,
        max_tokens: r.max_tokens,
        webhook_url: r.webhook_url,
        allow_rules: r.allow_rules,
        deny_rules: r.deny_rules,
        permission_timeout_seconds: r.permission_timeout_seconds,
        preset: r.preset,
        variables: r.variables.into_iter().collect(),
        mcp_servers: r.mcp_servers,
        subagents: r.subagents,
        skills: r.skills,
        stream_deltas: r.stream_deltas,
        output_schema: r.output_schema,
        system_prompt: r.system_prompt,
        disallowed_tools: r.disallowed_tools,
        attachments: r.attachments,
    }
}

/// The caller's trace context travels with the job (stored in its spec env), so the job's spans
/// and the agent's `TRACEPARENT` continue that trace; an explicit env entry wins.
pub(super) fn with_trace(mut submit: SubmitJob, traceparent: Option<TraceParent>) -> SubmitJob {
    if let Some(tp) = traceparent {
        submit
            .env
            .entry(trace::ENV.to_owned())
            .or_insert_with(|| tp.as_str().to_owned());
    }
    submit
}

/// Core stream items → (events, keepalive) pairs, errors → statuses.
fn items(
    rx: tokio::sync::mpsc::Receiver<crate::error::Result<StreamItem>>,
) -> impl Stream<Item = Result<(Vec<Arc<SharedEvent>>, bool), Status>> {
    ReceiverStream::new(rx).map(|item| match item {
        Ok(StreamItem::Events(evs)) => {
            metrics().events_streamed(evs.len());
            Ok((evs, false))
        }
        Ok(StreamItem::Keepalive) => Ok((Vec::new(), true)),
        Err(e) => Err(e.into()),
    })
}

pub(super) fn events(evs: Vec<Arc<SharedEvent>>) -> Vec<pb::JobEvent> {
    evs.into_iter()
        .map(|e| convert::event(e.into_event()))
        .collect()
}

/// Events shared with other readers go out as their one encoding (see `api::wire`); events
/// this reader alone holds (read from the store) are converted as they are.
fn stream_response(evs: Vec<Arc<SharedEvent>>, keepalive: bool) -> pb::StreamJobEventsResponse {
    if evs.iter().any(|e| Arc::strong_count(e) > 1) {
        let encoded = evs
            .iter()
            .map(|e| e.encoded(|ev| wire::encode_event(&convert::event(ev.clone()))))
            .collect();
        pb::StreamJobEventsResponse {
            events: Vec::new(),
            keepalive,
            encoded,
        }
    } else {
        pb::StreamJobEventsResponse {
            events: events(evs),
            keepalive,
            encoded: Vec::new(),
        }
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let tenant = tenant(&req)?;
        let traceparent = TraceParent::from_metadata(req.metadata());
        let submit = with_trace(submit_request(req.into_inner()), traceparent);
        let view = self.core.submit_job(&tenant, submit).await?;
        metrics().job_submitted();
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(convert::job(view)),
        }))
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let tenant = tenant(&req)?;
        let view = self.core.get_job(&tenant, &req.get_ref().job_id).await?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(convert::job(view)),
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let limit = convert::page_size(r.page_size, 100, 1000)?;
        let after = convert::decode_cursor("j", &r.page_token)?;
        let filter = JobFilter {
            states: r
                .states
                .iter()
                .map(|s| convert::state_name(*s))
                .collect::<Result<_, _>>()?,
        };
        let (views, next) = self
            .core
            .list_jobs(&tenant, &r.session_id, &filter, after, limit)
            .await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: views.into_iter().map(convert::job).collect(),
            next_page_token: next
                .map(|c| convert::encode_cursor("j", &c))
                .unwrap_or_default(),
        }))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let tenant = tenant(&req)?;
        let view = self.core.cancel_job(&tenant, &req.get_ref().job_id).await?;
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(convert::job(view)),
        }))
    }

    type StreamJobEventsStream = BoxStream<pb::StreamJobEventsResponse>;

    async fn stream_job_events(
        &self,
        req: Request<pb::StreamJobEventsRequest>,
    ) -> Result<Response<Self::StreamJobEventsStream>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let rx = self
            .core
            .stream_events(&tenant, &r.job_id, r.after_seq)
            .await?;
        let stream = items(rx).map(|r| r.map(|(evs, keepalive)| stream_response(evs, keepalive)));
        Ok(Response::new(Box::pin(stream)))
    }

    type RunJobStream = BoxStream<pb::RunJobResponse>;

    async fn run_job(
        &self,
        req: Request<pb::RunJobRequest>,
    ) -> Result<Response<Self::RunJobStream>, Status> {
        let tenant = tenant(&req)?;
        let traceparent = TraceParent::from_metadata(req.metadata());
        let submit = req.into_inner().job.ok_or_else(|| {
            Status::from(crate::error::Error::invalid(
                crate::error::Reason::MissingField,
                "job",
                "job is required",
            ))
        })?;
        let view = self
            .core
            .submit_job(&tenant, with_trace(submit_request(submit), traceparent))
            .await?;
        metrics().job_submitted();
        let job_id = view.job.id.to_string();
        let rx = self.core.stream_events(&tenant, &job_id, 0).await?;
        let first = pb::RunJobResponse {
            job: Some(convert::job(view)),
            events: Vec::new(),
            keepalive: false,
        };
        let rest = items(rx).map(|r| {
            r.map(|(evs, keepalive)| pb::RunJobResponse {
                job: None,
                events: events(evs),
                keepalive,
            })
        });
        Ok(Response::new(Box::pin(
            tokio_stream::once(Ok(first)).chain(rest),
        )))
    }
    type WatchJobsStream = BoxStream<pb::WatchJobsResponse>;

    async fn watch_jobs(
        &self,
        req: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let filter = super::watch::filter(&r)?;
        let rx = self
            .core
            .watch_jobs(&tenant, filter, r.after_cursor)
            .await?;
        Ok(Response::new(Box::pin(super::watch::responses(rx))))
    }

    async fn wait_job(
        &self,
        req: Request<pb::WaitJobRequest>,
    ) -> Result<Response<pb::WaitJobResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.get_ref();
        let (view, timed_out) = self
            .core
            .wait_job(&tenant, &r.job_id, r.timeout_seconds)
            .await?;
        Ok(Response::new(pb::WaitJobResponse {
            job: Some(convert::job(view)),
            timed_out,
        }))
    }

    async fn respond_to_permission(
        &self,
        req: Request<pb::RespondToPermissionRequest>,
    ) -> Result<Response<pb::RespondToPermissionResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        self.core
            .respond_to_permission(&tenant, &r.job_id, r.request_id, r.allow, r.message)
            .await?;
        Ok(Response::new(pb::RespondToPermissionResponse {}))
    }

    async fn send_input(
        &self,
        req: Request<pb::SendInputRequest>,
    ) -> Result<Response<pb::SendInputResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        self.core.send_input(&tenant, &r.job_id, r.text).await?;
        Ok(Response::new(pb::SendInputResponse {}))
    }

    async fn interrupt_job(
        &self,
        req: Request<pb::InterruptJobRequest>,
    ) -> Result<Response<pb::InterruptJobResponse>, Status> {
        let tenant = tenant(&req)?;
        self.core
            .interrupt_job(&tenant, &req.get_ref().job_id)
            .await?;
        Ok(Response::new(pb::InterruptJobResponse {}))
    }

    type AttachStream = BoxStream<pb::AttachResponse>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let tenant = tenant(&req)?;
        let traceparent = TraceParent::from_metadata(req.metadata());
        let rx = super::attach::start(self.core.clone(), tenant, traceparent, req.into_inner());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
