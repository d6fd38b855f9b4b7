-- The job engine's tables. Same logical schema as ../sqlite/0001_jobs.sql.
-- Times are BIGINT milliseconds since the Unix epoch (see engine/src/clock.rs).

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT    NOT NULL,
    args             TEXT    NOT NULL,                 -- JSON of the kind's args struct
    status           TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'succeeded', 'retrying', 'failed', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,       -- lower runs first
    attempt          INTEGER NOT NULL DEFAULT 0,       -- attempts started so far
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_at           BIGINT  NOT NULL,                 -- not fetched before this time
    unique_key       TEXT,
    created_at       BIGINT  NOT NULL,
    started_at       BIGINT,                           -- start of the latest attempt
    finished_at      BIGINT,
    locked_by        TEXT,                             -- worker id holding the lease
    lease_expires_at BIGINT,
    last_error       TEXT,
    note             TEXT,                             -- e.g. why the job was skipped
    CONSTRAINT finished_iff_final
        CHECK ((status IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL)),
    CONSTRAINT leased_iff_running
        CHECK ((status = 'running') = (locked_by IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- The fetch path: one kind's runnable jobs in the order they are claimed.
CREATE INDEX jobs_fetch ON jobs (kind, priority, run_at, id) WHERE status IN ('pending', 'retrying');
-- At most one unfinished job per unique key.
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'running', 'retrying');
-- The lease rescuer.
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE status = 'running';
-- The pruner.
CREATE INDEX jobs_finished ON jobs (status, finished_at) WHERE finished_at IS NOT NULL;
-- Admin listings and counts by kind and status.
CREATE INDEX jobs_kind_status ON jobs (kind, status, id);

-- One row per attempt: the history an admin reads, errors included.
CREATE TABLE job_attempts (
    id          BIGSERIAL PRIMARY KEY,
    job_id      BIGINT  NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    worker_id   TEXT    NOT NULL,
    started_at  BIGINT  NOT NULL,
    finished_at BIGINT,
    outcome     TEXT CHECK (outcome IN ('succeeded', 'skipped', 'retrying', 'failed', 'lease_expired', 'released')),
    error       TEXT
);
CREATE INDEX job_attempts_job ON job_attempts (job_id, attempt);

-- Named schedules: the row is the lock. A tick is taken by compare-and-set on next_run_at.
CREATE TABLE schedules (
    name        TEXT PRIMARY KEY,
    next_run_at BIGINT NOT NULL,
    last_run_at BIGINT,
    last_job_id BIGINT
);

-- Audit trail of every state change of a domain row (and of admin actions on jobs).
CREATE TABLE transitions (
    id          BIGSERIAL PRIMARY KEY,
    entity      TEXT   NOT NULL,
    entity_id   TEXT   NOT NULL,
    from_status TEXT   NOT NULL,
    to_status   TEXT   NOT NULL,
    actor       TEXT   NOT NULL,
    at          BIGINT NOT NULL,
    note        TEXT
);
CREATE INDEX transitions_entity ON transitions (entity, entity_id, id);

-- A job table churns: vacuum and analyze it sooner than the defaults would.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
