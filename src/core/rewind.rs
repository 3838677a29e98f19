//! RewindSession and ForkSession (issue #18): a session's workspace put back to one side of a
//! finished job (its snapshot in the history) and its agent's conversation to the same point;
//! or a new session of the same tenant started from there, the parent untouched.
//!
//! Conversations: an agent whose every job ends with its own immutable conversation id
//! (`agents::ConversationHistory::PerJob`, Claude resuming with `--fork-session`) is taken back by
//! pointing the session's resume id at the chosen job's, and forked by copying that
//! conversation's files into the new session's HOME. An agent that grows one conversation in
//! place cannot go back, so those calls are refused with UNSUPPORTED_OPTION naming it, unless the
//! point needs no earlier conversation (before the session's first conversation, or after its
//! newest job).

use super::Core;
use super::sessions::{CreateSession, SessionView};
use crate::agents::{self, ConversationHistory};
use crate::domain::{EventKind, Job, JobId, SessionId, TenantId, Timestamp};
use crate::error::{Error, Reason, Result};
use crate::store::{JobFilter, Rewind, SnapPoint};
use std::collections::BTreeMap;

/// A rewind's outcome.
pub struct Rewound {
    pub session: SessionView,
    /// The jobs newly marked rewound past, oldest first.
    pub past: Vec<JobId>,
}

/// A fork request, validated at the edge only for its shape.
pub struct ForkSession {
    pub job_id: String,
    pub point: SnapPoint,
    pub labels: BTreeMap<String, String>,
    pub ttl_seconds: u32,
}

impl Core {
    /// Puts `session_id`'s workspace and conversation back to `point` of `job_id`.
    pub async fn rewind_session(
        &self,
        tenant: &TenantId,
        session_id: &str,
        job_id: &str,
        point: SnapPoint,
    ) -> Result<Rewound> {
        let session = self.owned_session(tenant, session_id).await?;
        let job = self.finished_job(tenant, job_id).await?;
        if job.session_id != session.id {
            return Err(Error::job_not_found(job_id));
        }
        self.refuse_busy(&session.id).await?;
        let jobs = self.session_jobs(&session.id).await?;
        let newest = jobs.last().is_some_and(|j| j.id == job.id);
        let conversation = self
            .conversation_at(&job, point, newest && point == SnapPoint::After, "rewind")
            .await?;
        let tree = self.snapshot_tree(&job.id, point).await?;
        self.workspaces.restore_snapshot(&session.id, tree).await?;
        let marks = self.store.rewound_jobs(&session.id).await?;
        let past: Vec<JobId> = jobs
            .iter()
            .skip_while(|j| j.id != job.id)
            .filter(|j| point == SnapPoint::Before || j.id != job.id)
            .map(|j| j.id.clone())
            .filter(|id| !marks.contains(id))
            .collect();
        self.store
            .rewind_session(&Rewind {
                session: session.id.clone(),
                conversation: conversation.clone(),
                past: past.clone(),
                current: (point == SnapPoint::After).then(|| job.id.clone()),
                at: Timestamp::now(),
            })
            .await?;
        self.resume_from(&session.id, &job, conversation.as_deref())
            .await?;
        tracing::info!(session = %session.id, job = %job.id, point = point.as_str(),
            rewound = past.len(), "session rewound");
        let session = self.get_session(tenant, session_id).await?;
        Ok(Rewound { session, past })
    }

    /// Creates a new session from `point` of a finished job: its snapshot as the workspace, a
    /// fork of the job's conversation. Returns the new session and the parent's id.
    pub async fn fork_session(
        &self,
        tenant: &TenantId,
        req: ForkSession,
    ) -> Result<(SessionView, SessionId)> {
        let job = self.finished_job(tenant, &req.job_id).await?;
        let conversation = self.conversation_at(&job, req.point, false, "fork").await?;
        let tree = self.snapshot_tree(&job.id, req.point).await?;
        let child = self
            .create_session(
                tenant,
                CreateSession {
                    files: Vec::new(),
                    ttl_seconds: req.ttl_seconds,
                    labels: req.labels,
                    request_id: None,
                },
            )
            .await?;
        let id = child.session.id.clone();
        if let Err(e) = self.fill_fork(&job, &id, tree, conversation).await {
            let _ = self.delete_session_inner(&id, "fork failed").await;
            return Err(e);
        }
        tracing::info!(session = %id, parent = %job.session_id, job = %job.id,
            point = req.point.as_str(), "session forked");
        let view = self.get_session(tenant, id.as_str()).await?;
        Ok((view, job.session_id))
    }

    async fn fill_fork(
        &self,
        job: &Job,
        child: &SessionId,
        tree: String,
        conversation: Option<String>,
    ) -> Result<()> {
        self.workspaces.restore_snapshot(child, tree).await?;
        if let (Some(conv), Some(p)) = (&conversation, self.config.agents.get(&job.spec.agent)) {
            let from = agents::conversation_files(
                p.kind,
                &self.workspaces.workspace_dir(&job.session_id),
                conv,
            );
            let to =
                agents::conversation_files(p.kind, &self.workspaces.workspace_dir(child), conv);
            if let (Some(from), Some(to)) = (from, to) {
                let pairs = from.into_iter().zip(to).collect();
                self.workspaces
                    .copy_home_files(&job.session_id, child, pairs)
                    .await?;
            }
        }
        self.store
            .rewind_session(&Rewind {
                session: child.clone(),
                conversation: conversation.clone(),
                past: Vec::new(),
                current: None,
                at: Timestamp::now(),
            })
            .await?;
        self.resume_from(child, job, conversation.as_deref()).await
    }

    /// Points the next job of `job`'s agent in `session` at `conversation`: jobs resume their own
    /// agent's conversation (#20), so a rewind or fork sets that one, not only the session's.
    async fn resume_from(
        &self,
        session: &SessionId,
        job: &Job,
        conversation: Option<&str>,
    ) -> Result<()> {
        let Some(conversation) = conversation else {
            return Ok(());
        };
        self.store
            .set_agent_conversation(session, &job.spec.agent, conversation, Timestamp::now())
            .await
    }

    /// A finished job of the tenant (a snapshot after it exists only then).
    async fn finished_job(&self, tenant: &TenantId, job_id: &str) -> Result<Job> {
        let job = self.owned_job(tenant, job_id).await?;
        if !job.state.is_finished() {
            return Err(Error::precondition(
                Reason::JobNotFinished,
                format!("job {job_id} has not finished; rewind or fork from it once it has"),
            ));
        }
        Ok(job)
    }

    /// SESSION_BUSY while a job of the session is queued or running: a rewind under a running
    /// agent would swap its working directory away, and a queued job would start from a
    /// workspace its submitter did not see.
    async fn refuse_busy(&self, session: &SessionId) -> Result<()> {
        let filter = JobFilter {
            states: vec!["QUEUED", "RUNNING"],
        };
        if let Some(j) = self.store.list_jobs(session, &filter, None, 1).await?.pop() {
            return Err(Error::precondition(
                Reason::SessionBusy,
                format!(
                    "session {session} has job {} {}; rewind once it has finished (or cancel it)",
                    j.id,
                    j.state.name().to_lowercase()
                ),
            ));
        }
        Ok(())
    }

    /// Every job of the session, oldest first.
    async fn session_jobs(&self, session: &SessionId) -> Result<Vec<Job>> {
        let mut jobs = self
            .store
            .list_jobs(session, &JobFilter::default(), None, usize::MAX >> 1)
            .await?;
        jobs.sort_by(|a, b| (a.created, a.id.as_str()).cmp(&(b.created, b.id.as_str())));
        Ok(jobs)
    }

    /// The conversation id the session resumes from at `point` of `job`: the job's own after it,
    /// the one it resumed before it. Refused for an agent that cannot go back in its
    /// conversation, unless `current` (the point is where the conversation already is) or the
    /// point has no conversation yet.
    async fn conversation_at(
        &self,
        job: &Job,
        point: SnapPoint,
        current: bool,
        what: &str,
    ) -> Result<Option<String>> {
        let conversation = match point {
            SnapPoint::After => job.conversation_id.clone(),
            SnapPoint::Before => self.resumed_by(&job.id).await?,
        };
        let Some(profile) = self.config.agents.get(&job.spec.agent) else {
            // The profile is gone: nothing can resume the conversation anyway.
            return Ok(None);
        };
        let supported = match agents::conversation_history(profile.kind) {
            ConversationHistory::PerJob | ConversationHistory::Stateless => true,
            ConversationHistory::InPlace => conversation.is_none() || current,
        };
        if !supported {
            return Err(agents::unsupported_history(
                &profile.name,
                profile.kind,
                what,
            ));
        }
        Ok(conversation)
    }

    /// The conversation a job resumed, from its Started event.
    async fn resumed_by(&self, job: &JobId) -> Result<Option<String>> {
        let events = self.store.read_events(job, 0, 1).await?;
        Ok(events.into_iter().find_map(|e| match e.kind {
            EventKind::Started {
                resumed_conversation_id,
                ..
            } => resumed_conversation_id,
            _ => None,
        }))
    }
}
