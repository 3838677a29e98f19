-- agentd SQLite schema, version 1. Times are microseconds since the Unix epoch (domain::Timestamp).

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY NOT NULL,
    tenant          TEXT NOT NULL,
    labels          TEXT NOT NULL,             -- JSON object, string → string
    created         INTEGER NOT NULL,
    expires         INTEGER NOT NULL,
    ttl_us          INTEGER NOT NULL,
    request_id      TEXT,
    conversation_id TEXT,
    job_count       INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX sessions_request ON sessions (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX sessions_listing ON sessions (tenant, created DESC, id DESC);
CREATE INDEX sessions_expiry ON sessions (expires, id);

-- `pk` is the rowid: events and outputs refer to a job by this small integer rather than by its
-- 36-byte id, which keeps every event row (and its primary key) short.
CREATE TABLE jobs (
    pk              INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    session_id      TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    tenant          TEXT NOT NULL,
    created         INTEGER NOT NULL,
    spec            TEXT NOT NULL,             -- JSON of domain::JobSpec
    state           TEXT NOT NULL,             -- JSON of domain::JobState
    state_name      TEXT NOT NULL,             -- JobState::name(), for filtering
    request_id      TEXT,
    result          TEXT NOT NULL,
    usage           TEXT NOT NULL,             -- JSON of domain::Usage
    conversation_id TEXT,
    last_seq        INTEGER NOT NULL
);
CREATE UNIQUE INDEX jobs_request ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_listing ON jobs (session_id, created DESC, id DESC);
-- Queries must repeat this exact WHERE term for the planner to use the partial index.
CREATE INDEX jobs_unfinished ON jobs (created, id) WHERE state_name IN ('QUEUED', 'RUNNING');

-- One row per event. `kind` is the JSON of domain::EventKind; time and raw are separate columns
-- so that decoding a row is one small JSON parse.
CREATE TABLE events (
    job_pk INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    time   INTEGER NOT NULL,
    raw    TEXT,
    kind   TEXT NOT NULL,
    PRIMARY KEY (job_pk, seq)
) WITHOUT ROWID;

CREATE TABLE job_outputs (
    job_pk  INTEGER PRIMARY KEY REFERENCES jobs (pk) ON DELETE CASCADE,
    changes TEXT NOT NULL                      -- JSON array of domain::FileChange, path order
);
