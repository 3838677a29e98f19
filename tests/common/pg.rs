//! The tests' Postgres: the one `AGENTD_TEST_DATABASE_URL` names, each test in a schema of its
//! own. The tests that need it are built as ignored without that variable (see build.rs);
//! `scripts/test` always sets it.

/// The variable at run time, else the one the tests were built with (which turned them on).
pub fn database_url() -> String {
    std::env::var("AGENTD_TEST_DATABASE_URL")
        .ok()
        .or_else(|| option_env!("AGENTD_TEST_DATABASE_URL").map(String::from))
        .expect("the Postgres tests need AGENTD_TEST_DATABASE_URL")
}

/// Runs `sql` with psql, stopping at the first error.
pub fn psql(sql: &str) {
    let st = std::process::Command::new("psql")
        .arg(database_url())
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .status()
        .expect("run psql");
    assert!(
        st.success(),
        "psql {sql:?} failed on AGENTD_TEST_DATABASE_URL={}",
        database_url()
    );
}

/// A fresh schema (agentd's migrations create it), dropped however the test ends.
pub struct Schema(pub String);

impl Schema {
    /// A schema named `<prefix>_<random>`, once the Postgres answers.
    pub fn new(prefix: &str) -> Schema {
        psql("SELECT 1");
        Schema(format!("{prefix}_{}", uuid::Uuid::new_v4().simple()))
    }

    /// The `--store` URL that puts agentd in this schema.
    pub fn store_url(&self) -> String {
        format!("{}?options=-csearch_path%3D{}", database_url(), self.0)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
    }
}
