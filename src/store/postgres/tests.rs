//! The contract suite and the scale-out behaviour on the Postgres this machine runs (URL from
//! `AGENTD_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test), each test in a
//! fresh schema that is dropped afterwards, also when the test fails. An unreachable Postgres fails
//! the tests; they never skip.

use super::*;
use crate::store::DynStore;
use crate::store::contract::Harness;
use std::sync::Arc;

fn database_url() -> String {
    std::env::var("AGENTD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// One fresh schema; every `open` opens a new store on it.
pub(super) struct PgHarness {
    schema: String,
}

impl PgHarness {
    pub(super) fn new() -> Self {
        Self {
            schema: format!("agentd_test_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn url(&self) -> String {
        let base = database_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-csearch_path%3D{}", self.schema)
    }

    async fn pg(&self) -> PgStore {
        PgStore::open(&self.url())
            .await
            .unwrap_or_else(|e| panic!("open the Postgres store (is Postgres running?): {e}"))
    }
}

#[async_trait]
impl Harness for PgHarness {
    async fn open(&self) -> DynStore {
        Arc::new(self.pg().await)
    }
}

impl Drop for PgHarness {
    fn drop(&mut self) {
        // Drop runs outside any runtime's reach (maybe while unwinding), so the cleanup gets a
        // thread and a runtime of its own.
        let schema = self.schema.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let (client, conn) = database_url()
                    .parse::<tokio_postgres::Config>()?
                    .connect(NoTls)
                    .await?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!(
                        "DROP SCHEMA IF EXISTS {} CASCADE",
                        migrate::quote_ident(&schema)
                    ))
                    .await
            })
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!("cannot drop test schema {}: {e}", self.schema);
        }
    }
}

crate::store::contract::store_contract_tests!(PgHarness::new());
