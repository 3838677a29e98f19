-- Each tenant's change sequence (issue #19): one row per job state change (created, started,
-- finished), numbered per tenant from 1 without gaps. The seq is taken from the tenant's
-- `change_seqs` row, whose lock is held until commit, so a tenant's seqs become visible in order
-- across replicas: a watcher that resumes after seq N misses nothing and sees nothing twice. A
-- row keeps the job's state right after that change; the job's other columns are joined when
-- read. `pruned_through`: rows up to it were deleted, so an older cursor has expired.
CREATE TABLE change_seqs (
    tenant         text COLLATE "C" PRIMARY KEY,
    last_seq       bigint NOT NULL,
    pruned_through bigint NOT NULL DEFAULT 0
);

CREATE TABLE job_changes (
    tenant          text COLLATE "C" NOT NULL,
    seq             bigint NOT NULL,
    job_id          text COLLATE "C" NOT NULL,
    time            bigint NOT NULL,
    state           text NOT NULL,
    result          text NOT NULL,
    usage           text NOT NULL,
    conversation_id text,
    last_seq        bigint NOT NULL,
    PRIMARY KEY (tenant, seq)
);
CREATE INDEX job_changes_time ON job_changes (time);
