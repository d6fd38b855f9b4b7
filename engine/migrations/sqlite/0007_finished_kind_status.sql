-- jobs_kind_status indexes finished jobs only. Same logical schema as
-- ../postgres/0007_finished_kind_status.sql.
--
-- Every index on `jobs` is written by every insert, and by every update that changes a
-- column it holds (a status change does): (kind, status, id) over all rows took an entry
-- for the job's insert, its claim and its end, about a fifth of a bulk insert's server
-- time on Postgres (20,000 rows: 112–146 ms with it, 86–101 ms without, 2026-12-06). Its
-- readers are the counts per kind and status (admin::stats, /metrics) and the job list
-- filtered by both. The jobs not yet finished are few beside those kept, and each has an
-- index of its own already: due and waiting ones jobs_fetch, scheduled ones
-- jobs_scheduled, running ones jobs_running_lease; admin::stats counts each part through
-- its own index (engine/tests/fetch_plan.rs).
DROP INDEX jobs_kind_status;
CREATE INDEX jobs_kind_status ON jobs (kind, status, id) WHERE finished_at IS NOT NULL;
