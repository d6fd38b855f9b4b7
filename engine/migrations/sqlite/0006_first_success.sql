-- A job that succeeds at its first attempt writes no attempt row. Same logical schema as
-- ../postgres/0006_first_success.sql, whose comment says why.

UPDATE jobs SET locked_by = (
    SELECT a.worker_id FROM job_attempts a WHERE a.job_id = jobs.id AND a.attempt = 1
)
WHERE attempt = 1 AND status = 'succeeded'
  AND EXISTS (SELECT 1 FROM job_attempts a WHERE a.job_id = jobs.id AND a.attempt = 1);

DELETE FROM job_attempts
WHERE attempt = 1
  AND job_id IN (SELECT id FROM jobs WHERE attempt = 1 AND status = 'succeeded');

CREATE VIEW job_attempts_all AS
    SELECT a.id, a.job_id, j.kind, a.attempt, a.worker_id, a.started_at, a.finished_at,
           a.outcome, a.error
    FROM job_attempts a JOIN jobs j ON j.id = a.job_id
    UNION ALL
    SELECT 0, id, kind, 1, COALESCE(locked_by, ''), COALESCE(started_at, finished_at),
           finished_at, CASE WHEN note IS NULL THEN 'succeeded' ELSE 'skipped' END, note
    FROM jobs
    WHERE status = 'succeeded' AND attempt = 1;
