-- Rewind (issue #18): the jobs a RewindSession put the session back before. They stay listed (their
-- rows and snapshots are untouched); this table only marks them. Gone with their session.
CREATE TABLE rewound_jobs (
    job_id     text COLLATE "C" PRIMARY KEY,
    session_id text COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    rewound    BIGINT NOT NULL           -- µs since the epoch
);
CREATE INDEX rewound_jobs_session ON rewound_jobs (session_id);
