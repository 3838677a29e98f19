-- The usage ledger (issue #16): one row per model call through the gateway. It references no
-- session or job row on purpose: deleting a session or pruning events keeps what was spent.
-- Times are microseconds like every other time; cost_usd is NULL for an unpriced model.
CREATE TABLE model_calls (
    pk                  INTEGER PRIMARY KEY,
    tenant              TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    job_id              TEXT NOT NULL,
    agent               TEXT NOT NULL,
    time                INTEGER NOT NULL,
    model               TEXT NOT NULL,
    api                 TEXT NOT NULL,
    status              INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    cache_read_tokens   INTEGER NOT NULL,
    cache_write_tokens  INTEGER NOT NULL,
    cost_usd            REAL,
    latency_ms          INTEGER NOT NULL
);
-- Usage of a tenant over a time range (GetUsage, budgets); the calls of one job.
CREATE INDEX model_calls_tenant_time ON model_calls (tenant, time);
CREATE INDEX model_calls_job ON model_calls (job_id, pk);
