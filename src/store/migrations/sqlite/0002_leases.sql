-- agentd SQLite schema, version 2: jobs are claimed under leases (see store::Store::claim_jobs).
-- A job's owner is the replica that claimed it; it is cleared when the job finishes, so an owned
-- job is always unfinished. `lease_until` is in microseconds like every other time.

ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until INTEGER;
-- The first reason a cancel was requested for; the owner ends the job when it sees it.
ALTER TABLE jobs ADD COLUMN cancel_reason TEXT;

-- Claiming and queue positions walk the queue in creation order. Queries must repeat the exact
-- WHERE term of a partial index for the planner to use it.
CREATE INDEX jobs_queued ON jobs (created, id) WHERE state_name = 'QUEUED';
-- "Is this the oldest unfinished job of its session?" is one probe here.
CREATE INDEX jobs_session_unfinished ON jobs (session_id, created, id)
    WHERE state_name IN ('QUEUED', 'RUNNING');
-- Renewals and cancel requests by owner; expired leases by lease end.
CREATE INDEX jobs_owner ON jobs (owner) WHERE owner IS NOT NULL;
CREATE INDEX jobs_lease ON jobs (lease_until, id) WHERE owner IS NOT NULL;
-- The tenant's unfinished jobs, counted when admitting a job.
CREATE INDEX jobs_tenant_unfinished ON jobs (tenant) WHERE state_name IN ('QUEUED', 'RUNNING');
