-- WatchJobs' include_events (issue #19) looks up a job's earlier changes to know from which event
-- seq a change's events start; without this index that lookup scans the tenant's whole sequence.
CREATE INDEX job_changes_job ON job_changes (job_id, seq);
