//! Control messages in Postgres (issue #17): the shared SQL of `store::control`, a recorded
//! message signalling the job's owner in the same statement (`k <job>`), so it is heard only if
//! it committed.

use super::{PgStore, listen, rows};
use crate::domain::JobId;
use crate::error::Result;
use crate::store::control::{self, Control, ControlMessage, ControlOutcome};

pub(super) async fn send(
    store: &PgStore,
    job: &JobId,
    c: &Control,
    delivered: bool,
    now: i64,
) -> Result<Option<i64>> {
    let (kind, request, allow, body) = c.columns();
    let sql = format!(
        "WITH i AS ({}), n AS (SELECT pg_notify($8, {}) FROM i) SELECT i.id FROM i, n",
        control::INSERT,
        listen::CONTROL_PAYLOAD_SQL
    );
    let rows = store
        .query(
            &sql,
            &[
                &job.as_str(),
                &kind,
                &request,
                &allow,
                &body,
                &now,
                &delivered,
                &store.channel,
            ],
        )
        .await?;
    rows.first()
        .map(|r| rows::get(r, 0, "control_messages.id"))
        .transpose()
}

pub(super) async fn pending(store: &PgStore, replica: &str) -> Result<Vec<ControlMessage>> {
    let rows = store.query(control::PENDING, &[&replica]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let kind: String = rows::get(r, 2, "control_messages.kind")?;
        let c = Control::from_columns(
            &kind,
            rows::get(r, 3, "control_messages.request_id")?,
            rows::get(r, 4, "control_messages.allow")?,
            rows::get(r, 5, "control_messages.body")?,
        );
        if let Some(control) = c {
            out.push(ControlMessage {
                id: rows::get(r, 0, "control_messages.id")?,
                job: JobId::from_trusted(rows::get(r, 1, "control_messages.job_id")?),
                control,
            });
        }
    }
    Ok(out)
}

pub(super) async fn settle(store: &PgStore, id: i64, refusal: Option<(&str, &str)>) -> Result<()> {
    let (reason, message) = refusal.unzip();
    store
        .execute(control::SETTLE, &[&reason, &message, &id])
        .await
        .map(|_| ())
}

pub(super) async fn outcome(store: &PgStore, id: i64) -> Result<Option<ControlOutcome>> {
    let rows = store.query(control::OUTCOME, &[&id]).await?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let done: bool = rows::get(r, 0, "control_messages.done")?;
    if !done {
        return Ok(None);
    }
    Ok(Some(ControlOutcome::from_columns(
        rows::get(r, 1, "control_messages.refusal")?,
        rows::get(r, 2, "control_messages.refusal_message")?,
    )))
}
