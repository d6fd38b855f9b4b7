-- The apalis runtime (engine/src/worker): same logical schema as ../postgres/0002_runtime.sql
-- (see there for why). SQLite cannot alter a CHECK constraint, so job_attempts is rebuilt.

ALTER TABLE jobs ADD COLUMN releases INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN backoff_base_ms INTEGER NOT NULL DEFAULT 1000;
ALTER TABLE jobs ADD COLUMN backoff_cap_ms INTEGER NOT NULL DEFAULT 3600000;

CREATE TABLE job_attempts_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    worker_id   TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT CHECK (outcome IN
        ('succeeded', 'skipped', 'retrying', 'failed', 'lease_expired', 'released', 'snoozed')),
    error       TEXT
);
INSERT INTO job_attempts_new (id, job_id, attempt, worker_id, started_at, finished_at, outcome, error)
    SELECT id, job_id, attempt, worker_id, started_at, finished_at, outcome, error FROM job_attempts;
DROP TABLE job_attempts;
ALTER TABLE job_attempts_new RENAME TO job_attempts;
CREATE INDEX job_attempts_job ON job_attempts (job_id, attempt);
CREATE INDEX job_attempts_finished ON job_attempts (finished_at);

ALTER TABLE schedules ADD COLUMN expression TEXT;
