//! Session use cases: create (with files, idempotent), get, list, delete (cancelling its jobs).

use super::{Core, lock};
use crate::domain::{Job, PageCursor, Session, SessionId, TenantId, Timestamp};
use crate::error::{Error, Reason, Result};
use crate::store::JobFilter;
use crate::workspace::{NewFile, WsUsage};
use std::collections::BTreeMap;
use std::time::Duration;

/// A validated-at-the-edge create request (paths and limits are checked here and below).
pub struct CreateSession {
    pub files: Vec<NewFile>,
    /// Zero means the default.
    pub ttl_seconds: u32,
    pub labels: BTreeMap<String, String>,
    pub request_id: Option<String>,
}

/// A session with the live facts the API shows.
pub struct SessionView {
    pub session: Session,
    pub usage: WsUsage,
    pub running_job: Option<String>,
}

pub(super) fn validate_labels(labels: &BTreeMap<String, String>, field: &str) -> Result<()> {
    if labels.len() > 64 {
        return Err(Error::invalid(
            Reason::InvalidField,
            field,
            format!("{field}: at most 64 labels, got {}", labels.len()),
        ));
    }
    for (k, v) in labels {
        let ok_key = !k.is_empty()
            && k.len() <= 63
            && k.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if !ok_key {
            return Err(Error::invalid(
                Reason::InvalidField,
                format!("{field}[{k:?}]"),
                format!("{field}: key {k:?} must be 1-63 characters of [a-z0-9_.-]"),
            ));
        }
        if v.len() > 256 {
            return Err(Error::invalid(
                Reason::InvalidField,
                format!("{field}[{k:?}]"),
                format!("{field}: value of {k:?} is longer than 256 bytes"),
            ));
        }
    }
    Ok(())
}

pub(super) fn validate_request_id(id: &Option<String>) -> Result<()> {
    match id {
        Some(id) if id.len() > 128 || id.chars().any(char::is_control) => Err(Error::invalid(
            Reason::InvalidField,
            "request_id",
            "request_id must be at most 128 printable characters",
        )),
        _ => Ok(()),
    }
}

impl Core {
    pub async fn create_session(
        &self,
        tenant: &TenantId,
        req: CreateSession,
    ) -> Result<SessionView> {
        self.check_accepting()?;
        validate_labels(&req.labels, "labels")?;
        validate_request_id(&req.request_id)?;
        let limits = &self.config.limits;
        let ttl = match req.ttl_seconds {
            0 => limits.session_ttl_default,
            s if Duration::from_secs(s.into()) > limits.session_ttl_max => {
                return Err(Error::invalid(
                    Reason::InvalidField,
                    "ttl_seconds",
                    format!(
                        "ttl_seconds {s} exceeds the server maximum of {}",
                        limits.session_ttl_max.as_secs()
                    ),
                ));
            }
            s => Duration::from_secs(s.into()),
        };
        let now = Timestamp::now();
        let session = Session {
            id: SessionId::generate(),
            tenant: tenant.clone(),
            labels: req.labels,
            created: now,
            expires: now.saturating_add(ttl),
            ttl,
            request_id: req.request_id,
            conversation_id: None,
            job_count: 0,
        };
        // Files first, row second: a session row never points at a missing workspace. If the row
        // insert loses an idempotency race, the winner's session is returned and ours removed.
        let usage = self.workspaces.create(&session.id, req.files).await?;
        let stored = match self.store.create_session(&session).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.workspaces.remove(&session.id).await;
                return Err(e);
            }
        };
        if stored.id != session.id {
            let _ = self.workspaces.remove(&session.id).await;
            return self.view(stored).await;
        }
        Ok(SessionView {
            session: stored,
            usage,
            running_job: None,
        })
    }

    pub(super) async fn owned_session(&self, tenant: &TenantId, id: &str) -> Result<Session> {
        if id.is_empty() {
            return Err(Error::invalid(
                Reason::MissingField,
                "session_id",
                "session_id is required",
            ));
        }
        let parsed = SessionId::parse(id).ok_or_else(|| Error::session_not_found(id))?;
        self.store
            .get_session(tenant, &parsed)
            .await?
            .ok_or_else(|| Error::session_not_found(id))
    }

    async fn view(&self, session: Session) -> Result<SessionView> {
        let usage = self
            .workspaces
            .usage(&session.id)
            .await
            .unwrap_or(WsUsage { files: 0, bytes: 0 });
        let running_job = self
            .running_job_of(&session.id)
            .await?
            .map(|j| j.id.to_string());
        Ok(SessionView {
            session,
            usage,
            running_job,
        })
    }

    pub async fn get_session(&self, tenant: &TenantId, id: &str) -> Result<SessionView> {
        let s = self.owned_session(tenant, id).await?;
        self.view(s).await
    }

    pub async fn list_sessions(
        &self,
        tenant: &TenantId,
        labels: &BTreeMap<String, String>,
        after: Option<PageCursor>,
        limit: usize,
    ) -> Result<(Vec<SessionView>, Option<PageCursor>)> {
        validate_labels(labels, "label_filter")?;
        let rows = self
            .store
            .list_sessions(tenant, labels, after.as_ref(), limit + 1)
            .await?;
        let (rows, next) = super::paginate(rows, limit, |s| PageCursor {
            created: s.created,
            id: s.id.to_string(),
        });
        let mut out = Vec::with_capacity(rows.len());
        for s in rows {
            out.push(self.view(s).await?);
        }
        Ok((out, next))
    }

    /// Deletes a session: refuses new jobs for it, cancels queued and running ones, waits for the
    /// running agent's tree to be gone, then removes the rows and the workspace.
    pub async fn delete_session(&self, tenant: &TenantId, id: &str) -> Result<u32> {
        let session = self.owned_session(tenant, id).await?;
        self.delete_session_inner(&session.id, "session deleted")
            .await
    }

    pub(super) async fn delete_session_inner(&self, id: &SessionId, reason: &str) -> Result<u32> {
        lock(&self.deleting).insert(id.clone());
        let result = async {
            let mut cancelled = 0u32;
            // Oldest first, so the running job is cancelled before the queued ones behind it get
            // a chance to start.
            let mut jobs = self.unfinished_jobs_of(id).await?;
            jobs.reverse();
            for job in jobs {
                if self.cancel(&job, reason).await? {
                    cancelled += 1;
                }
            }
            self.store.delete_session(id).await?;
            self.workspaces.remove(id).await?;
            if let Err(e) = self.forget_history(id).await {
                tracing::warn!(session = %id, error = %e, "cannot free the session's history");
            }
            Ok(cancelled)
        }
        .await;
        lock(&self.deleting).remove(id);
        result
    }

    /// The session's queued and running jobs, newest first.
    async fn unfinished_jobs_of(&self, id: &SessionId) -> Result<Vec<Job>> {
        let filter = JobFilter {
            states: vec!["QUEUED", "RUNNING"],
        };
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_jobs(id, &filter, after.as_ref(), 500)
                .await?;
            let full = page.len() == 500;
            after = page.last().map(|j| PageCursor {
                created: j.created,
                id: j.id.to_string(),
            });
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    /// The session's running job, on whichever replica.
    pub(super) async fn running_job_of(&self, id: &SessionId) -> Result<Option<Job>> {
        let filter = JobFilter {
            states: vec!["RUNNING"],
        };
        Ok(self.store.list_jobs(id, &filter, None, 1).await?.pop())
    }

    pub(super) fn is_deleting(&self, id: &SessionId) -> bool {
        lock(&self.deleting).contains(id)
    }
}
