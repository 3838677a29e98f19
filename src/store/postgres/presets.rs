//! Tenants' presets in Postgres (the SQL is shared: `store::presets`).

use super::PgStore;
use super::rows::get;
use crate::domain::TenantId;
use crate::error::Result;
use crate::presets::TenantPreset;
use crate::store::presets as sql;
use tokio_postgres::Row;

fn build(r: &Row) -> Result<TenantPreset> {
    let body: String = get(r, 2, "presets.body")?;
    sql::row(
        get(r, 0, "presets.tenant")?,
        get(r, 1, "presets.name")?,
        &body,
        get(r, 3, "presets.created")?,
        get(r, 4, "presets.updated")?,
    )
}

pub(super) async fn create(store: &PgStore, p: &TenantPreset) -> Result<()> {
    let body = sql::body(&p.preset)?;
    let n = store
        .execute(
            sql::INSERT,
            &[
                &p.tenant.as_str(),
                &p.name,
                &body,
                &p.created.micros(),
                &p.updated.micros(),
                &sql::max(),
            ],
        )
        .await?;
    if n == 1 {
        return Ok(());
    }
    let rows = store.query(sql::COUNT, &[&p.tenant.as_str()]).await?;
    let count: i64 = match rows.first() {
        Some(r) => get(r, 0, "count")?,
        None => 0,
    };
    Err(sql::refused(count, &p.name))
}

pub(super) async fn get_one(
    store: &PgStore,
    tenant: &TenantId,
    name: &str,
) -> Result<Option<TenantPreset>> {
    let rows = store
        .query(sql::SELECT_ONE, &[&tenant.as_str(), &name])
        .await?;
    rows.first().map(build).transpose()
}

pub(super) async fn list(store: &PgStore, tenant: &TenantId) -> Result<Vec<TenantPreset>> {
    let rows = store.query(sql::SELECT_ALL, &[&tenant.as_str()]).await?;
    rows.iter().map(build).collect()
}

pub(super) async fn update(store: &PgStore, p: &TenantPreset) -> Result<bool> {
    let body = sql::body(&p.preset)?;
    let n = store
        .execute(
            sql::UPDATE,
            &[&body, &p.updated.micros(), &p.tenant.as_str(), &p.name],
        )
        .await?;
    Ok(n > 0)
}

pub(super) async fn delete(store: &PgStore, tenant: &TenantId, name: &str) -> Result<bool> {
    Ok(store
        .execute(sql::DELETE, &[&tenant.as_str(), &name])
        .await?
        > 0)
}
