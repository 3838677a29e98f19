//! Tenants' presets in SQLite (the SQL is shared: `store::presets`).

use super::db;
use crate::domain::TenantId;
use crate::error::Result;
use crate::presets::TenantPreset;
use crate::store::presets as sql;
use rusqlite::{Connection, OptionalExtension, Row, params};

fn from_row(r: &Row<'_>) -> rusqlite::Result<(String, String, String, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn build(t: (String, String, String, i64, i64)) -> Result<TenantPreset> {
    sql::row(t.0, t.1, &t.2, t.3, t.4)
}

pub(super) fn create(c: &Connection, p: &TenantPreset) -> Result<()> {
    let body = sql::body(&p.preset)?;
    let n = c
        .prepare_cached(sql::INSERT)
        .and_then(|mut st| {
            st.execute(params![
                p.tenant.as_str(),
                p.name,
                body,
                p.created.micros(),
                p.updated.micros(),
                sql::max()
            ])
        })
        .map_err(db)?;
    if n == 1 {
        return Ok(());
    }
    let count: i64 = c
        .query_row(sql::COUNT, params![p.tenant.as_str()], |r| r.get(0))
        .map_err(db)?;
    Err(sql::refused(count, &p.name))
}

pub(super) fn get(c: &Connection, tenant: &TenantId, name: &str) -> Result<Option<TenantPreset>> {
    c.prepare_cached(sql::SELECT_ONE)
        .and_then(|mut st| {
            st.query_row(params![tenant.as_str(), name], from_row)
                .optional()
        })
        .map_err(db)?
        .map(build)
        .transpose()
}

pub(super) fn list(c: &Connection, tenant: &TenantId) -> Result<Vec<TenantPreset>> {
    let rows = c
        .prepare_cached(sql::SELECT_ALL)
        .and_then(|mut st| {
            st.query_map(params![tenant.as_str()], from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(db)?;
    rows.into_iter().map(build).collect()
}

pub(super) fn update(c: &Connection, p: &TenantPreset) -> Result<bool> {
    let body = sql::body(&p.preset)?;
    let n = c
        .prepare_cached(sql::UPDATE)
        .and_then(|mut st| st.execute(params![body, p.updated.micros(), p.tenant.as_str(), p.name]))
        .map_err(db)?;
    Ok(n > 0)
}

pub(super) fn delete(c: &Connection, tenant: &TenantId, name: &str) -> Result<bool> {
    let n = c
        .prepare_cached(sql::DELETE)
        .and_then(|mut st| st.execute(params![tenant.as_str(), name]))
        .map_err(db)?;
    Ok(n > 0)
}
