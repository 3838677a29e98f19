-- Webhooks (issue #19). `webhook_endpoints`: a tenant's receivers (created through the API, or
-- from the config file with ids `cfg_…`); `old_secret` still signs until `old_secret_until` after
-- a rotation. `webhook_cursors`: how far each tenant's change sequence (0013) has been turned into
-- deliveries; it moves in the transaction that inserts them, so a crash repeats nothing and loses
-- nothing. `webhook_deliveries` is the outbox: one message for one receiver, claimed under a lease
-- (`owner`, `lease_until`) by the replica that sends it; `endpoint_key` is the endpoint's id or
-- `job:<job id>` for a job's own `webhook_url`, and (`endpoint_key`, `msg_id`) is unique so a
-- message is enqueued once per receiver. `webhook_attempts`: the delivery log.
CREATE TABLE webhook_endpoints (
    id               text COLLATE "C" PRIMARY KEY,
    tenant           text NOT NULL,
    url              text NOT NULL,
    events           text NOT NULL,            -- comma-separated event types
    secret           text NOT NULL,
    old_secret       text,
    old_secret_until bigint,
    created          bigint NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant, created);

CREATE TABLE webhook_cursors (
    tenant text COLLATE "C" PRIMARY KEY,
    seq    bigint NOT NULL
);

CREATE TABLE webhook_deliveries (
    id           text COLLATE "C" PRIMARY KEY,
    tenant       text NOT NULL,
    endpoint_key text NOT NULL,
    url          text NOT NULL,
    msg_id       text NOT NULL,
    event_type   text NOT NULL,
    job_id       text NOT NULL,
    payload      text NOT NULL,
    created      bigint NOT NULL,
    state        text NOT NULL,                -- PENDING, DELIVERED, FAILED
    attempts     bigint NOT NULL DEFAULT 0,
    next_attempt bigint NOT NULL,
    owner        text,
    lease_until  bigint,
    last_status  bigint,
    last_error   text,
    last_latency_ms bigint,
    finished     bigint
);
CREATE UNIQUE INDEX webhook_deliveries_msg ON webhook_deliveries (endpoint_key, msg_id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt);
CREATE INDEX webhook_deliveries_tenant ON webhook_deliveries (tenant, created);

CREATE TABLE webhook_attempts (
    delivery_id text NOT NULL,
    n           bigint NOT NULL,
    time        bigint NOT NULL,
    status      bigint NOT NULL,              -- HTTP status, 0 when there was no answer
    latency_ms  bigint NOT NULL,
    error       text NOT NULL,
    PRIMARY KEY (delivery_id, n)
);
