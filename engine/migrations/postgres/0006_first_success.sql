-- A job that succeeds at its first attempt writes no attempt row: its job row already
-- holds everything that row would (who ran it, when it started and ended, the skip note).
-- Same logical schema as ../sqlite/0006_first_success.sql.
--
-- Most jobs succeed at their first attempt, and the attempt row was a third of the rows a
-- job wrote (an insert with three indexes and a foreign-key check, beside the claim's and
-- the ack's updates of `jobs`): the ack of a batch took twice as long with it. Oban and
-- River keep no per-attempt rows at all; here the rows stay for every attempt that says
-- something the job row cannot (a retry, a failure, a snooze, a release, an expired lease,
-- any success after those).
--
-- `locked_by` of a succeeded job now names the worker that ran its successful attempt
-- (apalis's `lock_by` means the same). Readers of the history read `job_attempts_all`,
-- which adds the first-attempt successes, derived from their job rows, to the rows of
-- `job_attempts`, each with its job's kind (the counts per kind read the view alone: the
-- first-attempt successes, most of them, need no join; an attempt row's kind costs one
-- lookup by key). An attempt number still appears
-- once per job: a first-attempt success is the job's only attempt.

-- Existing first-attempt successes: their worker moves to the job row, their row goes.
UPDATE jobs SET locked_by = a.worker_id
FROM job_attempts a
WHERE a.job_id = jobs.id AND a.attempt = 1 AND jobs.attempt = 1 AND jobs.status = 'succeeded';

DELETE FROM job_attempts a
USING jobs j
WHERE a.job_id = j.id AND a.attempt = 1 AND j.attempt = 1 AND j.status = 'succeeded';

CREATE VIEW job_attempts_all AS
    SELECT a.id, a.job_id, j.kind, a.attempt, a.worker_id, a.started_at, a.finished_at,
           a.outcome, a.error
    FROM job_attempts a JOIN jobs j ON j.id = a.job_id
    UNION ALL
    SELECT 0, id, kind, 1, COALESCE(locked_by, ''), COALESCE(started_at, finished_at),
           finished_at, CASE WHEN note IS NULL THEN 'succeeded' ELSE 'skipped' END, note
    FROM jobs
    WHERE status = 'succeeded' AND attempt = 1;
