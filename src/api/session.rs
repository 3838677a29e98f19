//! `agentd.v1.SessionService`.

use super::{convert, tenant};
use crate::core::{Core, CreateSession, ForkSession};
use crate::error::{Error, Reason};
use crate::pb;
use crate::pb::session_service_server::SessionService;
use crate::store::SnapPoint;
use crate::workspace::NewFile;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct SessionApi {
    core: Arc<Core>,
}

impl SessionApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn create_session(
        &self,
        req: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let files = r
            .files
            .into_iter()
            .map(|f| NewFile {
                path: f.path,
                content: f.content,
                mode: f.mode,
            })
            .collect();
        let view = self
            .core
            .create_session(
                &tenant,
                CreateSession {
                    files,
                    ttl_seconds: r.ttl_seconds,
                    labels: r.labels.into_iter().collect(),
                    request_id: (!r.request_id.is_empty()).then_some(r.request_id),
                },
            )
            .await?;
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(convert::session(view)),
        }))
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let tenant = tenant(&req)?;
        let view = self
            .core
            .get_session(&tenant, &req.get_ref().session_id)
            .await?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(convert::session(view)),
        }))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let limit = convert::page_size(r.page_size, 100, 1000)?;
        let after = convert::decode_cursor("s", &r.page_token)?;
        let labels = r.label_filter.into_iter().collect();
        let (views, next) = self
            .core
            .list_sessions(&tenant, &labels, after, limit)
            .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: views.into_iter().map(convert::session).collect(),
            next_page_token: next
                .map(|c| convert::encode_cursor("s", &c))
                .unwrap_or_default(),
        }))
    }

    async fn delete_session(
        &self,
        req: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        let tenant = tenant(&req)?;
        let cancelled = self
            .core
            .delete_session(&tenant, &req.get_ref().session_id)
            .await?;
        Ok(Response::new(pb::DeleteSessionResponse {
            cancelled_jobs: cancelled,
        }))
    }

    async fn rewind_session(
        &self,
        req: Request<pb::RewindSessionRequest>,
    ) -> Result<Response<pb::RewindSessionResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let point = snap_point(r.point, "point")?;
        let out = self
            .core
            .rewind_session(&tenant, &r.session_id, &r.job_id, point)
            .await?;
        Ok(Response::new(pb::RewindSessionResponse {
            session: Some(convert::session(out.session)),
            rewound_job_ids: out.past.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn fork_session(
        &self,
        req: Request<pb::ForkSessionRequest>,
    ) -> Result<Response<pb::ForkSessionResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let point = snap_point(r.point, "point")?;
        let (view, parent) = self
            .core
            .fork_session(
                &tenant,
                ForkSession {
                    job_id: r.job_id,
                    point,
                    labels: r.labels.into_iter().collect(),
                    ttl_seconds: r.ttl_seconds,
                },
            )
            .await?;
        Ok(Response::new(pb::ForkSessionResponse {
            session: Some(convert::session(view)),
            parent_session_id: parent.to_string(),
        }))
    }
}

/// A snapshot point; unspecified means after the job.
fn snap_point(n: i32, field: &str) -> Result<SnapPoint, Status> {
    match pb::SnapshotPoint::try_from(n) {
        Ok(pb::SnapshotPoint::Before) => Ok(SnapPoint::Before),
        Ok(pb::SnapshotPoint::After | pb::SnapshotPoint::Unspecified) => Ok(SnapPoint::After),
        Err(_) => Err(Error::invalid(
            Reason::InvalidField,
            field,
            format!("{field} {n} is not a snapshot point"),
        )
        .into()),
    }
}
