-- Workflows (engine/src/steps.rs). job_steps: the result of each finished step of a job, by its
-- position in the job's step sequence, so that a retry or a crash resumes after the last
-- finished step and never runs a finished one again. Same logical schema as
-- ../postgres/0003_workflows.sql. Pruned with its job (ON DELETE CASCADE).

CREATE TABLE job_steps (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL CHECK (seq >= 0),
    name        TEXT    NOT NULL,
    result      TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Signals sent to a job (Engine::signal), one per name, read by its wait_for_signal step.
CREATE TABLE job_signals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      INTEGER  NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    sent_at     INTEGER  NOT NULL,
    sent_by     TEXT    NOT NULL
);
CREATE UNIQUE INDEX job_signals_name ON job_signals (job_id, name);

-- A signal sent while the job was running: its attempt, if it ends waiting, is run again
-- at once instead of at its deadline (reset by every claim).
ALTER TABLE jobs ADD COLUMN wake_pending INTEGER NOT NULL DEFAULT 0;
