-- Each tenant's change sequence (issue #19): one row per job state change (created, started,
-- finished), numbered per tenant from 1 without gaps, written in the transaction of the change
-- itself so a watcher that resumes after seq N misses nothing and sees nothing twice. A row keeps
-- the job's state as it was right after that change; the job's other columns are joined when
-- read (a deleted job's rows are skipped). `pruned_through`: rows up to it were deleted, so an
-- older cursor has expired.
CREATE TABLE change_seqs (
    tenant         TEXT PRIMARY KEY NOT NULL,
    last_seq       INTEGER NOT NULL,
    pruned_through INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE job_changes (
    tenant          TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    job_id          TEXT NOT NULL,
    time            INTEGER NOT NULL,
    state           TEXT NOT NULL,             -- JSON of domain::JobState
    result          TEXT NOT NULL,
    usage           TEXT NOT NULL,             -- JSON of domain::Usage
    conversation_id TEXT,
    last_seq        INTEGER NOT NULL,
    PRIMARY KEY (tenant, seq)
) WITHOUT ROWID;
CREATE INDEX job_changes_time ON job_changes (time);
