//! `agentd.v1.SessionService`.

use super::{convert, tenant};
use crate::core::{Core, CreateSession};
use crate::pb;
use crate::pb::session_service_server::SessionService;
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
}
