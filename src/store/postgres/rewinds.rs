//! Rewind marks in Postgres (issue #18): which jobs a RewindSession put their session back before.

use super::{PgStore, db};
use crate::domain::{JobId, SessionId};
use crate::error::Result;
use crate::store::Rewind;

pub(super) async fn rewind(store: &PgStore, r: &Rewind) -> Result<()> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    tx.execute(
        "UPDATE sessions SET conversation_id = $2 WHERE id = $1",
        &[&r.session.as_str(), &r.conversation],
    )
    .await
    .map_err(db)?;
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
