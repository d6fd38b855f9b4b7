-- Durable steps (engine/src/steps.rs): the result of each finished step of a job, by its
-- position in the job's step sequence, so that a retry or a crash resumes after the last
-- finished step and never runs a finished one again. Same logical schema as
-- ../postgres/0003_steps.sql. Pruned with its job (ON DELETE CASCADE).

CREATE TABLE job_steps (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL CHECK (seq >= 0),
    name        TEXT    NOT NULL,
    result      TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
);
