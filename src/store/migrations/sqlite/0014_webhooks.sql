-- Webhooks (issue #19). `webhook_endpoints`: a tenant's receivers (created through the API, or
-- from the config file with ids `cfg_…`); `old_secret` still signs until `old_secret_until` after
-- a rotation. `webhook_cursors`: how far each tenant's change sequence (0013) has been turned into
-- deliveries; it moves in the transaction that inserts them, so a crash repeats nothing and loses
-- nothing. `webhook_deliveries` is the outbox: one message for one receiver, claimed under a lease
-- (`owner`, `lease_until`) by the replica that sends it; `endpoint_key` is the endpoint's id or
-- `job:<job id>` for a job's own `webhook_url`, and (`endpoint_key`, `msg_id`) is unique so a
-- message is enqueued once per receiver. `webhook_attempts`: the delivery log.
CREATE TABLE webhook_endpoints (
    id               TEXT PRIMARY KEY NOT NULL,
    tenant           TEXT NOT NULL,
    url              TEXT NOT NULL,
    events           TEXT NOT NULL,            -- comma-separated event types
    secret           TEXT NOT NULL,
    old_secret       TEXT,
    old_secret_until INTEGER,
    created          INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant, created);

CREATE TABLE webhook_cursors (
    tenant TEXT PRIMARY KEY NOT NULL,
    seq    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE webhook_deliveries (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant       TEXT NOT NULL,
    endpoint_key TEXT NOT NULL,
    url          TEXT NOT NULL,
    msg_id       TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created      INTEGER NOT NULL,
    state        TEXT NOT NULL,                -- PENDING, DELIVERED, FAILED
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    owner        TEXT,
    lease_until  INTEGER,
    last_status  INTEGER,
    last_error   TEXT,
    last_latency_ms INTEGER,
    finished     INTEGER
) WITHOUT ROWID;
CREATE UNIQUE INDEX webhook_deliveries_msg ON webhook_deliveries (endpoint_key, msg_id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt);
CREATE INDEX webhook_deliveries_tenant ON webhook_deliveries (tenant, created);

CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL,
    n           INTEGER NOT NULL,
    time        INTEGER NOT NULL,
    status      INTEGER NOT NULL,              -- HTTP status, 0 when there was no answer
    latency_ms  INTEGER NOT NULL,
    error       TEXT NOT NULL,
    PRIMARY KEY (delivery_id, n)
) WITHOUT ROWID;
