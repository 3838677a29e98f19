//! Rewinds in Postgres (issue #18): the hold a RewindSession keeps on its session while it swaps
//! the workspace, and the record of the rewind (conversations, which jobs it put the session back
//! before). The hold is taken under the session row's lock, the same lock job admission takes, so
//! a job and a hold can never both get in.

use super::{PgStore, db};
use crate::domain::{JobId, SessionId, Timestamp};
use crate::error::{Error, Result};
use crate::store::{Rewind, conversations, rules};

pub(super) async fn hold(
    store: &PgStore,
    session: &SessionId,
    now: Timestamp,
    until: Timestamp,
) -> Result<()> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    let Some(row) = tx
        .query_opt(
            "SELECT rewinding_until FROM sessions WHERE id = $1 FOR UPDATE",
            &[&session.as_str()],
        )
        .await
        .map_err(db)?
    else {
        return Err(Error::session_not_found(session.as_str()));
    };
    let held: Option<i64> = super::rows::get(&row, 0, "sessions.rewinding_until")?;
    let busy = tx
        .query_opt(rules::BUSY_JOB, &[&session.as_str()])
        .await
        .map_err(db)?
        .map(|r| -> Result<(String, String)> {
            Ok((
                super::rows::get(&r, 0, "jobs.id")?,
                super::rows::get(&r, 1, "jobs.state_name")?,
            ))
        })
        .transpose()?;
    rules::hold_for_rewind(session, busy, held, now)?;
    tx.execute(rules::SET_HOLD, &[&until.micros(), &session.as_str()])
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn release(store: &PgStore, session: &SessionId) -> Result<()> {
    store
        .execute(rules::SET_HOLD, &[&None::<i64>, &session.as_str()])
        .await
        .map(|_| ())
}

pub(super) async fn rewind(store: &PgStore, r: &Rewind) -> Result<()> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    tx.execute(
        "UPDATE sessions SET conversation_id = $2, rewinding_until = NULL WHERE id = $1",
        &[&r.session.as_str(), &r.conversation],
    )
    .await
    .map_err(db)?;
    if let Some(agent) = &r.agent {
        let session = r.session.as_str();
        match &r.conversation {
            Some(conv) => {
                tx.execute(
                    conversations::UPSERT,
                    &[&session, agent, conv, &r.at.micros()],
                )
                .await
            }
            None => tx.execute(conversations::DELETE, &[&session, agent]).await,
        }
        .map_err(db)?;
    }
    let past: Vec<&str> = r.past.iter().map(JobId::as_str).collect();
    tx.execute(
        "INSERT INTO rewound_jobs (job_id, session_id, rewound) \
         SELECT j, $2, $3 FROM unnest($1::text[]) AS j ON CONFLICT (job_id) DO NOTHING",
        &[&past, &r.session.as_str(), &r.at.micros()],
    )
    .await
    .map_err(db)?;
    if let Some(job) = &r.current {
        tx.execute(
            "DELETE FROM rewound_jobs WHERE job_id = $1",
            &[&job.as_str()],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

pub(super) async fn rewound(store: &PgStore, session: &SessionId) -> Result<Vec<JobId>> {
    let rows = store
        .query(
            "SELECT job_id FROM rewound_jobs WHERE session_id = $1 ORDER BY job_id",
            &[&session.as_str()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id: String = super::rows::get(r, 0, "rewound_jobs.job_id")?;
            Ok(JobId::from_trusted(id))
        })
        .collect()
}
