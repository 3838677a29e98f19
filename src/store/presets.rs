//! Tenants' presets (#20): the SQL both backends run (its `$n` placeholders are valid SQLite
//! too) and the rules they share: one name per tenant, at most [`MAX_PER_TENANT`].

use crate::domain::{TenantId, Timestamp};
use crate::error::{Error, Reason, Result};
use crate::presets::{Preset, TenantPreset};

/// Most presets one tenant may keep (a listing returns them all).
pub const MAX_PER_TENANT: usize = 500;

pub const INSERT: &str = "INSERT INTO presets (tenant, name, body, created, updated) \
     SELECT $1, $2, $3, $4, $5 WHERE (SELECT count(*) FROM presets WHERE tenant = $1) < $6 \
     ON CONFLICT (tenant, name) DO NOTHING";
pub const SELECT_ONE: &str =
    "SELECT tenant, name, body, created, updated FROM presets WHERE tenant = $1 AND name = $2";
pub const SELECT_ALL: &str =
    "SELECT tenant, name, body, created, updated FROM presets WHERE tenant = $1 ORDER BY name";
/// (SQLite numbers `$n` parameters in order of first appearance: keep them in order.)
pub const UPDATE: &str =
    "UPDATE presets SET body = $1, updated = $2 WHERE tenant = $3 AND name = $4";
pub const DELETE: &str = "DELETE FROM presets WHERE tenant = $1 AND name = $2";
pub const COUNT: &str = "SELECT count(*) FROM presets WHERE tenant = $1";

/// The stored form of a preset's body.
pub fn body(p: &Preset) -> Result<String> {
    serde_json::to_string(p).map_err(|e| Error::internal(format!("cannot encode a preset: {e}")))
}

/// A row back into a preset.
pub fn row(
    tenant: String,
    name: String,
    body: &str,
    created: i64,
    updated: i64,
) -> Result<TenantPreset> {
    let preset = serde_json::from_str(body)
        .map_err(|_| Error::internal(format!("preset {name:?} has an unreadable body")))?;
    Ok(TenantPreset {
        tenant: TenantId(tenant),
        name,
        preset,
        created: Timestamp(created),
        updated: Timestamp(updated),
    })
}

/// Why an insert changed no row: the name is taken, or the tenant has too many.
pub fn refused(count: i64, name: &str) -> Error {
    if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_PER_TENANT {
        Error::exhausted(
            Reason::TooManyJobs,
            format!("a tenant keeps at most {MAX_PER_TENANT} presets"),
        )
    } else {
        Error::AlreadyExists {
            reason: Reason::PresetExists,
            message: format!("preset {name:?} already exists"),
        }
    }
}

pub fn max() -> i64 {
    i64::try_from(MAX_PER_TENANT).unwrap_or(i64::MAX)
}
