-- Workspace history (issue #18): which content-addressed snapshot (a tree id in the object store
-- under the workspace root) was taken before and after each job. The rows are the live set of the
-- history's collector: a tree no row names is deleted with every content only it used.
CREATE TABLE snapshots (
    job_id      TEXT NOT NULL,
    point       TEXT NOT NULL,            -- 'BEFORE' | 'AFTER'
    session_id  TEXT NOT NULL,
    tree        TEXT NOT NULL,            -- lowercase hex SHA-256 of the tree
    bytes_added INTEGER NOT NULL,         -- content this snapshot stored that was not stored yet
    created     INTEGER NOT NULL,         -- µs since the epoch
    PRIMARY KEY (job_id, point)
) WITHOUT ROWID;
CREATE INDEX snapshots_session ON snapshots (session_id, created);
CREATE INDEX snapshots_created ON snapshots (created);
