//! The webhook outbox in Postgres (SQL shared with SQLite in `store::webhooks`). Claims lock the
//! picked rows with `FOR UPDATE SKIP LOCKED`, so replicas claiming at once take disjoint rows
//! without waiting for each other; a cursor moves only from the value its mover read.

use super::{PgStore, db};
use crate::domain::{TenantId, Timestamp};
use crate::error::Result;
use crate::store::webhooks::{self as w, Cols};
use crate::store::{
    Attempt, AttemptOutcome, Delivery, DeliveryFilter, DeliveryLog, NewDelivery, WebhookEndpoint,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

impl Cols for Row {
    fn text(&self, i: usize) -> Result<String> {
        self.try_get(i).map_err(db)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        self.try_get(i).map_err(db)
    }
    fn int(&self, i: usize) -> Result<i64> {
        self.try_get(i).map_err(db)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        self.try_get(i).map_err(db)
    }
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn insert(
    c: &deadpool_postgres::Transaction<'_>,
    tenant: &TenantId,
    d: &[NewDelivery],
) -> Result<()> {
    let st = c.prepare_cached(w::INSERT_DELIVERY).await.map_err(db)?;
    let now = Timestamp::now().0;
    for d in d {
        let p: [&(dyn ToSql + Sync); 9] = [
            &d.id,
            &tenant.as_str(),
            &d.endpoint_key,
            &d.url,
            &d.msg_id,
            &d.event_type,
            &d.job_id,
            &d.payload,
            &now,
        ];
        c.execute(&st, &p).await.map_err(db)?;
    }
    Ok(())
}

impl PgStore {
    pub(super) async fn put_webhook_row(&self, e: &WebhookEndpoint) -> Result<()> {
        let c = self.client().await?;
        let events = e.events.join(",");
        let until = e.old_secret_until.map(|t| t.0);
        c.execute(
            w::PUT_ENDPOINT,
            &[
                &e.id,
                &e.tenant.as_str(),
                &e.url,
                &events,
                &e.secret,
                &e.old_secret,
                &until,
                &e.created.0,
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    pub(super) async fn webhook_rows(&self, tenant: &TenantId) -> Result<Vec<WebhookEndpoint>> {
        let c = self.client().await?;
        let rows = c
            .query(w::LIST_ENDPOINTS, &[&tenant.as_str()])
            .await
            .map_err(db)?;
        rows.iter().map(w::endpoint_from).collect()
    }

    pub(super) async fn delete_webhook_row(&self, tenant: &TenantId, id: &str) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .execute(w::DELETE_ENDPOINT, &[&tenant.as_str(), &id])
            .await
            .map_err(db)?;
        Ok(n > 0)
    }

    pub(super) async fn rotate_webhook_row(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
        old_until: Timestamp,
    ) -> Result<Option<WebhookEndpoint>> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                w::ROTATE_SECRET,
                &[&tenant.as_str(), &id, &secret, &old_until.0],
            )
            .await
            .map_err(db)?;
        row.as_ref().map(w::endpoint_from).transpose()
    }

    pub(super) async fn webhook_backlog_rows(&self, limit: usize) -> Result<Vec<(TenantId, u64)>> {
        let c = self.client().await?;
        let rows = c
            .query(w::BACKLOG, &[&int(limit as u64)])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let seq = u64::try_from(r.int(1)?).unwrap_or(0);
                Ok((TenantId(r.text(0)?), seq))
            })
            .collect()
    }

    pub(super) async fn enqueue_webhook_rows(
        &self,
        tenant: &TenantId,
        from: u64,
        to: u64,
        d: &[NewDelivery],
    ) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let moved = tx
            .execute(w::ADVANCE_CURSOR, &[&tenant.as_str(), &int(from), &int(to)])
            .await
            .map_err(db)?;
        if moved == 0 {
            return Ok(false);
        }
        insert(&tx, tenant, d).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    pub(super) async fn add_webhook_rows(
        &self,
        tenant: &TenantId,
        d: &[NewDelivery],
    ) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        insert(&tx, tenant, d).await?;
        tx.commit().await.map_err(db)
    }

    pub(super) async fn claim_webhook_rows(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        per_endpoint: usize,
    ) -> Result<Vec<Delivery>> {
        let c = self.client().await?;
        let rows = c
            .query(
                &w::claim_sql("FOR UPDATE SKIP LOCKED"),
                &[
                    &now.0,
                    &owner,
                    &lease_until.0,
                    &int(per_endpoint as u64),
                    &int(limit as u64),
                ],
            )
            .await
            .map_err(db)?;
        let mut out = rows
            .iter()
            .map(w::delivery_from)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (a.next_attempt, &a.id).cmp(&(b.next_attempt, &b.id)));
        Ok(out)
    }

    pub(super) async fn finish_webhook_row(
        &self,
        id: &str,
        owner: &str,
        a: &Attempt,
        outcome: AttemptOutcome,
    ) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let (status, latency) = (i64::from(a.status), int(a.latency_ms));
        let logged = tx
            .execute(
                w::INSERT_ATTEMPT,
                &[&id, &owner, &a.time.0, &status, &latency, &a.error],
            )
            .await
            .map_err(db)?;
        if logged == 0 {
            return Ok(false);
        }
        let (state, next, finished) = w::outcome_cols(outcome, a.time);
        let error = (!a.error.is_empty()).then_some(a.error.as_str());
        tx.execute(
            w::FINISH_ATTEMPT,
            &[
                &id, &owner, &state, &next, &status, &error, &latency, &finished,
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    pub(super) async fn webhook_delivery_rows(
        &self,
        tenant: &TenantId,
        f: &DeliveryFilter,
        limit: usize,
    ) -> Result<Vec<DeliveryLog>> {
        let c = self.client().await?;
        let rows = c
            .query(
                &w::list_deliveries_sql(),
                &[
                    &tenant.as_str(),
                    &f.endpoint_key.as_deref().unwrap_or(""),
                    &f.job_id.as_deref().unwrap_or(""),
                    &int(limit as u64),
                ],
            )
            .await
            .map_err(db)?;
        let st = c.prepare(w::LIST_ATTEMPTS).await.map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let delivery = w::delivery_from(r)?;
            let attempts = c
                .query(&st, &[&delivery.id])
                .await
                .map_err(db)?
                .iter()
                .map(w::attempt_from)
                .collect::<Result<Vec<_>>>()?;
            out.push(DeliveryLog { delivery, attempts });
        }
        Ok(out)
    }
}
