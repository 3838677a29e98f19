-- The usage ledger (issue #16): one row per model call through the gateway. It references no
-- session or job row on purpose: deleting a session or pruning events keeps what was spent.
-- Times are microseconds like every other time; cost_usd is NULL for an unpriced model.
CREATE TABLE model_calls (
    pk                  bigserial PRIMARY KEY,
    tenant              text NOT NULL,
    session_id          text NOT NULL,
    job_id              text NOT NULL,
    agent               text NOT NULL,
    time                bigint NOT NULL,
    model               text NOT NULL,
    api                 text NOT NULL,
    status              bigint NOT NULL,
    input_tokens        bigint NOT NULL,
    output_tokens       bigint NOT NULL,
    cache_read_tokens   bigint NOT NULL,
    cache_write_tokens  bigint NOT NULL,
    cost_usd            double precision,
    latency_ms          bigint NOT NULL
);
-- Usage of a tenant over a time range (GetUsage, budgets); the calls of one job.
CREATE INDEX model_calls_tenant_time ON model_calls (tenant, time);
CREATE INDEX model_calls_job ON model_calls (job_id, pk);
