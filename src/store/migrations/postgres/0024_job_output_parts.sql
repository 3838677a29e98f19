-- A job's outputs in parts of at most 1,000 changes, in path order, so a page of GetJobOutputs
-- reads the parts it needs instead of the whole list (a job that ran `npm install` changes tens
-- of thousands of files); a job that changed nothing has no part. `last_path` is the part's last
-- path: a page after a path skips every part of the job that ends before it. It compares
-- bytewise (COLLATE "C"), as the paths are sorted.
-- A list stored before this migration becomes its job's only part.
CREATE TABLE job_output_parts (
    job_pk    bigint NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
    part      integer NOT NULL,
    last_path text COLLATE "C" NOT NULL,
    changes   text NOT NULL,
    PRIMARY KEY (job_pk, part)
);
INSERT INTO job_output_parts (job_pk, part, last_path, changes)
    SELECT job_pk, 0, COALESCE(changes::jsonb -> -1 ->> 'path', ''), changes
    FROM job_outputs WHERE jsonb_array_length(changes::jsonb) > 0;
DROP TABLE job_outputs;
