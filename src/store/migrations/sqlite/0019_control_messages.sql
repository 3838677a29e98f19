-- Two-way control across replicas (issue #17): answers, input and interrupts for a job, kept
-- until the replica running it delivers them (`done`) and says how that went (`refusal`: the
-- controller's error reason, NULL when delivered). An answer claims its permission request: the
-- first one wins, decided by the unique index below; a claim on a request the job never made is
-- released (its refusal takes it out of the index), so it cannot block a later request of that id.
CREATE TABLE control_messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,             -- answer | input | interrupt
    request_id      TEXT,                      -- answers only
    allow           INTEGER NOT NULL DEFAULT 0,
    body            TEXT NOT NULL DEFAULT '',  -- the answer's message, the input's text
    created         INTEGER NOT NULL,          -- µs since the epoch
    done            INTEGER NOT NULL DEFAULT 0,
    refusal         TEXT,
    refusal_message TEXT
);
CREATE UNIQUE INDEX control_messages_answer_once ON control_messages (job_id, request_id)
    WHERE kind = 'answer' AND (refusal IS NULL OR refusal <> 'PERMISSION_REQUEST_NOT_FOUND');
CREATE INDEX control_messages_undelivered ON control_messages (job_id) WHERE done = 0;
