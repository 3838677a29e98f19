-- agentd Postgres schema, version 1. Times are microseconds since the Unix epoch
-- (domain::Timestamp). Ids compare bytewise (COLLATE "C") so that paging order is the same as in
-- SQLite and in Rust, whatever the database's collation. JSON columns are text holding what serde
-- wrote, except session labels, which are jsonb for the containment filter.

CREATE TABLE sessions (
    id              text COLLATE "C" PRIMARY KEY,
    tenant          text COLLATE "C" NOT NULL,
    labels          jsonb NOT NULL,
    created         bigint NOT NULL,
    expires         bigint NOT NULL,
    ttl_us          bigint NOT NULL,
    request_id      text COLLATE "C",
    conversation_id text,
    job_count       bigint NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX sessions_request ON sessions (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX sessions_listing ON sessions (tenant, created DESC, id DESC);
CREATE INDEX sessions_expiry ON sessions (expires, id);

-- Events and outputs refer to a job by `pk`, a small integer, rather than by its text id.
-- `owner`/`lease_until` are set while a replica holds the job (claimed or running);
-- `cancel_reason` is the first cancel request, kept for an owner that missed the signal.
CREATE TABLE jobs (
    pk              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              text COLLATE "C" NOT NULL UNIQUE,
    session_id      text COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    tenant          text COLLATE "C" NOT NULL,
    created         bigint NOT NULL,
    spec            text NOT NULL,
    state           text NOT NULL,
    state_name      text NOT NULL,
    request_id      text COLLATE "C",
    result          text NOT NULL,
    usage           text NOT NULL,
    conversation_id text,
    last_seq        bigint NOT NULL,
    owner           text,
    lease_until     bigint,
    cancel_reason   text
);
CREATE UNIQUE INDEX jobs_request ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_listing ON jobs (session_id, created DESC, id DESC);
-- Queries must repeat this exact predicate for the planner to use the partial indexes.
CREATE INDEX jobs_unfinished ON jobs (created, id) WHERE state_name IN ('QUEUED', 'RUNNING');
CREATE INDEX jobs_session_unfinished ON jobs (session_id, created, id)
    WHERE state_name IN ('QUEUED', 'RUNNING');
CREATE INDEX jobs_tenant_unfinished ON jobs (tenant) WHERE state_name IN ('QUEUED', 'RUNNING');
CREATE INDEX jobs_owned ON jobs (owner, lease_until) WHERE owner IS NOT NULL;

-- No foreign key to jobs: its per-row check would cost about as much as the insert itself. Appends
-- lock the job row first and delete_session locks the rows of the jobs it deletes before deleting
-- their events, so no event outlives its job.
CREATE TABLE events (
    job_pk bigint NOT NULL,
    seq    bigint NOT NULL,
    time   bigint NOT NULL,
    raw    text,
    kind   text NOT NULL,
    PRIMARY KEY (job_pk, seq)
);

CREATE TABLE job_outputs (
    job_pk  bigint PRIMARY KEY REFERENCES jobs (pk) ON DELETE CASCADE,
    changes text NOT NULL
);
