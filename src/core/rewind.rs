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
use std::time::Duration;

/// How long a rewind holds its session at most: the swap of even a large workspace takes
/// seconds; a hold left by a crash lapses after this and the session takes jobs again.
const REWIND_HOLD: Duration = Duration::from_secs(300);

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
    /// Puts `session_id`'s workspace and conversation back to `point` of `job_id`. The store holds
    /// the session for the whole swap (refused while a job is queued or running, and no job is
    /// admitted until the rewind is recorded or the hold released), so a job never starts on a
    /// half-rewound session.
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
        let now = Timestamp::now();
        let until = Timestamp(now.micros() + REWIND_HOLD.as_micros() as i64);
        self.store.hold_for_rewind(&session.id, now, until).await?;
        let past = match self.rewind_held(&session.id, &job, point).await {
            Ok(past) => past,
            Err(e) => {
                if let Err(release) = self.store.release_rewind(&session.id).await {
                    tracing::warn!(session = %session.id, error = %release,
                        "could not release a failed rewind's hold; it lapses by itself");
                }
                return Err(e);
            }
        };
        tracing::info!(session = %session.id, job = %job.id, point = point.as_str(),
            rewound = past.len(), "session rewound");
        let session = self.get_session(tenant, session_id).await?;
        Ok(Rewound { session, past })
    }

    /// The rewind under the session's hold: the workspace swapped, then the conversations, the
    /// marks and the hold's end recorded in one store transaction.
    async fn rewind_held(
        &self,
        session: &SessionId,
        job: &Job,
        point: SnapPoint,
    ) -> Result<Vec<JobId>> {
        let jobs = self.session_jobs(session).await?;
        let newest = jobs.last().is_some_and(|j| j.id == job.id);
        let conversation = self
            .conversation_at(job, point, newest && point == SnapPoint::After, "rewind")
            .await?;
        let tree = self.snapshot_tree(&job.id, point).await?;
        self.workspaces.restore_snapshot(session, tree).await?;
        let marks = self.store.rewound_jobs(session).await?;
        let past: Vec<JobId> = jobs
            .iter()
            .skip_while(|j| j.id != job.id)
            .filter(|j| point == SnapPoint::Before || j.id != job.id)
            .map(|j| j.id.clone())
            .filter(|id| !marks.contains(id))
            .collect();
        self.store
            .rewind_session(&Rewind {
                session: session.clone(),
                agent: self.rewound_agent(job),
                conversation,
                past: past.clone(),
                current: (point == SnapPoint::After).then(|| job.id.clone()),
                at: Timestamp::now(),
            })
            .await?;
        Ok(past)
    }

    /// The agent whose own conversation a rewind or fork to `job` sets: jobs resume their own
    /// agent's conversation (#20). None when its profile is gone (nothing can resume it).
    fn rewound_agent(&self, job: &Job) -> Option<String> {
        self.config
            .agents
            .get(&job.spec.agent)
            .map(|_| job.spec.agent.clone())
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
                agent: self.rewound_agent(job),
                conversation,
                past: Vec::new(),
                current: None,
                at: Timestamp::now(),
            })
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
