-- Jobs that wait for later wait outside the claim's index. Same logical schema as
-- ../sqlite/0004_scheduled.sql.
--
-- The claim takes due jobs in (priority, run_at, id) order from `jobs_fetch`. A job due
-- tomorrow (a scheduled job, a retry's backoff, a workflow asleep or waiting for a signal)
-- used to sit in that index too, and since priority comes before run_at a claim could not
-- stop at the first job not yet due: every empty poll walked all of a kind's future jobs
-- (10,000 waiting jobs: 39,000 index entries read a second by an idle process). Now a job
-- written with `run_at` after the time of the write has `scheduled = 1` and waits in
-- `jobs_scheduled`, by time; the claim reads that index too, from its earliest entry, and
-- stops at the first one not yet due (engine/src/storage.rs, `claim_pick_sql`). The flag is
-- an index partition, not a state: admins still see `pending` or `retrying`, and a flag
-- that is stale either way costs a little reading, never a lost or early job (both reads
-- require `run_at <= now`).

ALTER TABLE jobs ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 0;

UPDATE jobs SET scheduled = 1
WHERE status IN ('pending', 'retrying')
  AND run_at > (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;

DROP INDEX jobs_fetch;
CREATE INDEX jobs_fetch ON jobs (kind, priority, run_at, id)
    WHERE status IN ('pending', 'retrying') AND scheduled = 0;
CREATE INDEX jobs_scheduled ON jobs (kind, run_at, id)
    WHERE status IN ('pending', 'retrying') AND scheduled = 1;
