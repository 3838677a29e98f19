//! Bringing a Postgres schema up to date at start. Several replicas may start at once, so every
//! step runs under a transaction-scoped advisory lock keyed by the target schema: the first one
//! migrates, the others wait and then find nothing to do.
//!
//! The target schema is the first entry of the connection's `search_path` (a URL's
//! `options=-csearch_path%3D<schema>` sets it); it is created when missing, so each test or
//! deployment can live in its own schema.

use super::db;
use crate::error::{Error, Result};
use tokio_postgres::Client;

/// Migrations in order; the version of `MIGRATIONS[i]` is `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0010_usage.sql"),
    include_str!("../migrations/postgres/0013_job_changes.sql"),
    include_str!("../migrations/postgres/0014_webhooks.sql"),
    include_str!("../migrations/postgres/0016_presets.sql"),
    include_str!("../migrations/postgres/0012_snapshots.sql"),
    include_str!("../migrations/postgres/0017_agent_conversations.sql"),
    include_str!("../migrations/postgres/0018_rewinds.sql"),
    include_str!("../migrations/postgres/0019_control_messages.sql"),
    include_str!("../migrations/postgres/0022_rewind_holds.sql"),
    include_str!("../migrations/postgres/0020_lease_gen.sql"),
    include_str!("../migrations/postgres/0023_job_changes_by_job.sql"),
    include_str!("../migrations/postgres/0024_job_output_parts.sql"),
];

/// First key of the migration advisory lock (the second is the schema's hash): "agnt".
const MIGRATE_LOCK: i32 = 0x6167_6e74;

/// Double-quotes an identifier for SQL.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The schema this connection's unqualified names resolve to once it exists: the first
/// `search_path` entry (`$user` meaning the user's name).
async fn target_schema(client: &Client) -> Result<String> {
    let row = client
        .query_one(
            "SELECT current_setting('search_path'), current_user::text",
            &[],
        )
        .await
        .map_err(db)?;
    let path: String = row.try_get(0).map_err(db)?;
    let user: String = row.try_get(1).map_err(db)?;
    let first = path.split(',').map(str::trim).find(|s| !s.is_empty());
    let name = match first {
        None => return Err(Error::internal("store: the search_path names no schema")),
        Some("\"$user\"") | Some("$user") => user,
        Some(s) if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') => {
            s[1..s.len() - 1].replace("\"\"", "\"")
        }
        Some(s) => s.to_owned(),
    };
    Ok(name)
}

/// Creates the target schema if needed and applies the migrations it lacks. Returns the schema.
pub(super) async fn migrate(client: &mut Client) -> Result<String> {
    let schema = target_schema(client).await?;
    let lock = "SELECT pg_advisory_xact_lock($1, hashtext($2))";

    // Its own transaction, committed before the tables are made, so that every connection's
    // search_path resolves to it from then on.
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(lock, &[&MIGRATE_LOCK, &schema])
        .await
        .map_err(db)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        quote_ident(&schema)
    ))
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;

    let tx = client.transaction().await.map_err(db)?;
    tx.execute(lock, &[&MIGRATE_LOCK, &schema])
        .await
        .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS agentd_schema_version (
             version integer PRIMARY KEY,
             applied bigint NOT NULL DEFAULT (extract(epoch FROM now()) * 1000000)::bigint
         )",
    )
    .await
    .map_err(db)?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM agentd_schema_version",
            &[],
        )
        .await
        .map_err(db)?;
    let current: i32 = row.try_get(0).map_err(db)?;
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(Error::internal(format!(
            "store: schema {schema:?} is at version {current}, newer than this build knows \
             ({known}); run a newer agentd"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(|e| {
            Error::internal(format!(
                "store: migration {version} failed: {}",
                super::msg(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO agentd_schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db)?;
        tracing::info!(schema = %schema, version, "applied store migration");
    }
    tx.commit().await.map_err(db)?;
    Ok(schema)
}

/// The NOTIFY channel of a schema: one per schema, so that stores in different schemas of one
/// database never wake each other. Channel names are identifiers (at most 63 bytes), so a long
/// schema name is replaced by its hash.
pub(super) fn channel(schema: &str) -> String {
    use sha2::{Digest, Sha256};
    if schema.len() <= 48 {
        format!("agentd.{schema}")
    } else {
        let digest = Sha256::digest(schema.as_bytes());
        format!("agentd.{}", &hex::encode(digest)[..32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_fit_an_identifier() {
        assert_eq!(channel("agentd_test_1"), "agentd.agentd_test_1");
        let long = channel(&"x".repeat(200));
        assert!(long.len() < 64, "{long}");
        assert_ne!(long, channel(&"y".repeat(200)));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
