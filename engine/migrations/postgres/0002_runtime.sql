-- The apalis runtime (engine/src/worker): same logical schema as ../sqlite/0002_runtime.sql.
--
-- * A job carries its backoff (base and cap, ms) beside max_attempts, so any process that
--   rescues it retries it on the job's own policy, registered or not.
-- * `releases` counts attempts handed back at shutdown or snoozed by their handler: they
--   keep their attempt number (each attempt number appears once in job_attempts) and add
--   one to max_attempts instead, up to a cap (engine::storage::MAX_RELEASES).
-- * Attempt rows are written when an attempt ends (in the same statement as the job's
--   status), so the outcomes gain `snoozed`.
-- * A schedule remembers the expression it was created with, so a changed expression
--   moves its next run.

ALTER TABLE jobs ADD COLUMN releases INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN backoff_base_ms BIGINT NOT NULL DEFAULT 1000;
ALTER TABLE jobs ADD COLUMN backoff_cap_ms BIGINT NOT NULL DEFAULT 3600000;

ALTER TABLE job_attempts DROP CONSTRAINT IF EXISTS job_attempts_outcome_check;
ALTER TABLE job_attempts ADD CONSTRAINT job_attempts_outcome_check CHECK (outcome IN
    ('succeeded', 'skipped', 'retrying', 'failed', 'lease_expired', 'released', 'snoozed'));

ALTER TABLE schedules ADD COLUMN expression TEXT;

-- /v1/queues, /metrics and the dashboard count the attempts finished in the last hour.
-- (IF NOT EXISTS: a database migrated before the engine had its own migrator has it.)
CREATE INDEX IF NOT EXISTS job_attempts_finished ON job_attempts (finished_at);
