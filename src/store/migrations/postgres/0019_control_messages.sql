-- Two-way control across replicas (issue #17): answers, input and interrupts for a job, kept
-- until the replica running it delivers them (`done`) and says how that went (`refusal`: the
-- controller's error reason, NULL when delivered). An answer claims its permission request: the
-- first one wins, decided by the unique index below; a claim on a request the job never made is
-- released (its refusal takes it out of the index), so it cannot block a later request of that id.
CREATE TABLE control_messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          text COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind            text NOT NULL,             -- answer | input | interrupt
    request_id      text COLLATE "C",          -- answers only
    allow           boolean NOT NULL DEFAULT false,
    body            text NOT NULL DEFAULT '',  -- the answer's message, the input's text
    created         bigint NOT NULL,           -- µs since the epoch
    done            boolean NOT NULL DEFAULT false,
    refusal         text,
    refusal_message text
);
CREATE UNIQUE INDEX control_messages_answer_once ON control_messages (job_id, request_id)
    WHERE kind = 'answer' AND (refusal IS NULL OR refusal <> 'PERMISSION_REQUEST_NOT_FOUND');
CREATE INDEX control_messages_undelivered ON control_messages (job_id) WHERE NOT done;
