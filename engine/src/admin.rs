//! Reading jobs for admins: filtered listings with cursor pagination, one job with its
//! attempt history, and counts per kind and status. (The writes, cancel and retry, are in
//! [`crate::storage`] with every other status change.)

use std::ops::ControlFlow;
use std::sync::LazyLock;

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::oneshot;

use crate::batch::Batcher;
use crate::clock::Millis;
use crate::db::{Backend, Db};
use crate::error::{Error, Result};
use crate::job::JobState;

/// A job as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSummary {
    /// Id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// State.
    pub status: JobState,
    /// Attempts started.
    pub attempt: u32,
    /// Attempts in all.
    pub max_attempts: u32,
    /// Priority (lower first).
    pub priority: i32,
    /// Not fetched before this time (the next run while pending or retrying).
    pub run_at: Millis,
    /// Enqueued at.
    pub created_at: Millis,
    /// Finished at.
    pub finished_at: Option<Millis>,
    /// The latest error.
    pub last_error: Option<String>,
    /// A note from the handler (why it skipped).
    pub note: Option<String>,
    /// Unique key.
    pub unique_key: Option<String>,
}

/// One attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// 1-based within the current set of attempts (an admin retry starts a new set).
    pub attempt: u32,
    /// The worker that ran it.
    pub worker_id: String,
    /// Started at.
    pub started_at: Millis,
    /// Ended at (none while running).
    pub finished_at: Option<Millis>,
    /// `succeeded`, `skipped`, `retrying`, `failed`, `lease_expired`, `released` or
    /// `snoozed`; none while it runs.
    pub outcome: Option<String>,
    /// The error text (or the skip reason).
    pub error: Option<String>,
}

/// A job with its args and attempts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobDetail {
    /// The listed fields.
    #[serde(flatten)]
    pub job: JobSummary,
    /// The args, as stored.
    pub args: serde_json::Value,
    /// The worker holding it while running.
    pub locked_by: Option<String>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// Its finished durable steps ([`crate::steps`]), in order; empty for a job without.
    pub steps: Vec<crate::steps::StepRecord>,
    /// The job that enqueued it with [`crate::JobContext::fan_out`] and waits for it.
    pub parent_id: Option<i64>,
    /// The jobs it enqueued with [`crate::JobContext::fan_out`], in order (the first
    /// [`MAX_CHILDREN_SHOWN`]).
    pub children: Vec<ChildSummary>,
    /// What it waits for, while it waits holding no worker ([`crate::JobError::Waiting`]:
    /// a durable sleep, a signal, its children), until its `run_at` at the latest.
    pub waiting_for: Option<String>,
}

/// A child job, as its parent's detail lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildSummary {
    /// Id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// State.
    pub status: JobState,
    /// Finished at.
    pub finished_at: Option<Millis>,
}

/// How many children a job's detail lists.
pub const MAX_CHILDREN_SHOWN: usize = 500;

/// Which jobs to list. Newest first; pass the previous page's `next_cursor` to go on.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this state.
    pub status: Option<JobState>,
    /// Enqueued at or after.
    pub since: Option<Millis>,
    /// Enqueued before.
    pub until: Option<Millis>,
    /// Ids below this (the cursor).
    pub before_id: Option<i64>,
    /// Page size (1 to 500; default 50).
    pub limit: Option<u32>,
    /// Only jobs enqueued with this unique key (finished ones included).
    pub unique_key: Option<String>,
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize)]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<JobSummary>,
    /// Cursor for the next page, none on the last one.
    pub next_cursor: Option<i64>,
}

const SUMMARY_COLUMNS: &str = "id, kind, status, attempt, max_attempts, priority, run_at, created_at, \
                               finished_at, last_error, note, unique_key";

fn summary(row: &sqlx::any::AnyRow) -> Result<JobSummary> {
    let status: String = row.try_get(2)?;
    Ok(JobSummary {
        id: row.try_get(0)?,
        kind: row.try_get(1)?,
        status: status
            .parse()
            .map_err(|e: String| Error::Database(sqlx::Error::Protocol(e)))?,
        attempt: u32::try_from(row.try_get::<i32, _>(3)?).unwrap_or(0),
        max_attempts: u32::try_from(row.try_get::<i32, _>(4)?).unwrap_or(0),
        priority: row.try_get(5)?,
        run_at: row.try_get(6)?,
        created_at: row.try_get(7)?,
        finished_at: row.try_get(8)?,
        last_error: row.try_get(9)?,
        note: row.try_get(10)?,
        unique_key: row.try_get(11)?,
    })
}

/// The statement of [`list_jobs`] (`$1` kind, `$2` status, `$3`/`$4` enqueued since/until,
/// `$5` the cursor, `$6` the limit, `$7` the unique key), public for the query-plan test.
/// Absent filters bind NULL and match everything: one prepared statement serves all. Only
/// finished jobs are in `jobs_kind_status` (engine migration 0007): the third line tells
/// that a finished state's jobs are finished, so that Postgres' plan for the values given
/// reads a kind's failed jobs from that index, newest first.
#[doc(hidden)]
pub static LIST_JOBS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {SUMMARY_COLUMNS} FROM jobs \
         WHERE ($1 IS NULL OR kind = $1) AND ($2 IS NULL OR status = $2) \
           AND ($2 IS NULL OR $2 IN ('pending', 'running', 'retrying') OR finished_at IS NOT NULL) \
           AND ($3 IS NULL OR created_at >= $3) AND ($4 IS NULL OR created_at < $4) \
           AND ($5 IS NULL OR id < $5) AND ($7 IS NULL OR unique_key = $7) \
         ORDER BY id DESC LIMIT $6"
    )
});

/// Lists jobs matching `filter`, newest first, one page at a time. The cursor is the last
/// id seen, so pages stay stable while new jobs are inserted at the top.
pub async fn list_jobs(db: &Db, filter: &JobFilter) -> Result<JobPage> {
    let limit = i64::from(filter.limit.unwrap_or(50).clamp(1, 500));
    let rows = sqlx::query(AssertSqlSafe(LIST_JOBS_SQL.as_str()))
        .bind(filter.kind.as_deref())
        .bind(filter.status.map(JobState::as_str))
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.before_id)
        .bind(limit + 1)
        .bind(filter.unique_key.as_deref())
        .fetch_all(db)
        .await?;
    let mut jobs = rows.iter().map(summary).collect::<Result<Vec<_>>>()?;
    let next_cursor = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok(JobPage { jobs, next_cursor })
}

/// The statement of [`get_jobs`] on `backend` (`$1` the ids, a JSON array), public for the
/// query-plan test. One statement, so that each job, its attempts, its steps and its
/// children are one snapshot (and one round trip for the whole batch). Every row has the
/// same columns: `part` 0 is the job (its columns 0–14 and 25), `part` 1 an attempt, `part`
/// 2 a step, `part` 3 a child (columns 16–24, read by [`detail`]); column 26 is the job the
/// row belongs to, and rows come ordered by it. Each part reads its own table by the jobs'
/// ids, nothing is joined: on Postgres, starting the executor for a plan of joins cost more
/// than running it.
#[doc(hidden)]
pub fn get_jobs_sql(backend: Backend) -> &'static str {
    static SQLITE: LazyLock<String> = LazyLock::new(|| build_get_jobs_sql(Backend::Sqlite));
    static POSTGRES: LazyLock<String> = LazyLock::new(|| build_get_jobs_sql(Backend::Postgres));
    match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    }
}

fn build_get_jobs_sql(backend: Backend) -> String {
    let of_ids = |column: &str| crate::db::id_in_list(backend, column, "$1");
    let job: Vec<String> = SUMMARY_COLUMNS
        .split(',')
        .map(|c| format!("j.{}", c.trim()))
        .collect();
    let job = job.join(", ");
    // The job's columns, empty on the rows of the other parts.
    let no_job = ["NULL"; 15].join(", ");
    format!(
        "SELECT {job}, j.args, j.locked_by, j.started_at, 0 AS part, j.id AS ord, \
                CAST(NULL AS INTEGER), CAST(NULL AS TEXT), CAST(NULL AS BIGINT), \
                CAST(NULL AS BIGINT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), \
                CAST(NULL AS TEXT), CAST(NULL AS TEXT), j.parent_id, j.id AS owner \
         FROM jobs j WHERE {jobs} \
         UNION ALL \
         SELECT {no_job}, 1, a.id, a.attempt, a.worker_id, a.started_at, a.finished_at, \
                a.outcome, a.error, NULL, NULL, NULL, a.job_id \
         FROM job_attempts_all a WHERE {attempts} \
         UNION ALL \
         SELECT {no_job}, 2, s.seq, s.attempt, NULL, NULL, s.finished_at, NULL, NULL, \
                s.name, s.result, NULL, s.job_id \
         FROM job_steps s WHERE {steps} \
         UNION ALL \
         SELECT {no_job}, 3, c.id, NULL, NULL, NULL, c.finished_at, NULL, NULL, c.kind, c.status, \
                NULL, c.parent_id \
         FROM (SELECT id, kind, status, finished_at, parent_id, \
                      ROW_NUMBER() OVER (PARTITION BY parent_id ORDER BY id) AS n \
               FROM jobs WHERE {children}) AS c \
         WHERE c.n <= {MAX_CHILDREN_SHOWN} \
         ORDER BY owner, part, ord",
        jobs = of_ids("j.id"),
        attempts = of_ids("a.job_id"),
        steps = of_ids("s.job_id"),
        children = of_ids("parent_id"),
    )
}

/// One job with its args and attempt history.
pub async fn get_job(db: &Db, id: i64) -> Result<JobDetail> {
    let backend = Backend::of_pool(db);
    get_jobs(db, backend, &[id])
        .await?
        .pop()
        .unwrap_or(Err(Error::JobNotFound(id)))
}

/// Jobs `ids` with their args and attempt histories, in one statement: one answer per id,
/// in order (`Err(JobNotFound)` for an id with no job).
pub async fn get_jobs(db: &Db, backend: Backend, ids: &[i64]) -> Result<Vec<Result<JobDetail>>> {
    let rows = sqlx::query(AssertSqlSafe(get_jobs_sql(backend)))
        .bind(crate::db::id_list(ids))
        .fetch_all(db)
        .await?;
    // Each job's rows, by the job they belong to (they come ordered by it).
    let mut found = std::collections::HashMap::new();
    let mut rest = rows.as_slice();
    while let Some(first) = rest.first() {
        let owner: i64 = first.try_get(26)?;
        let len = rest
            .iter()
            .position(|r| r.try_get::<i64, _>(26).map_or(true, |o| o != owner))
            .unwrap_or(rest.len());
        found.insert(owner, &rest[..len]);
        rest = &rest[len..];
    }
    Ok(ids
        .iter()
        .map(|id| match found.get(id) {
            Some(rows) => detail(*id, rows),
            None => Err(Error::JobNotFound(*id)),
        })
        .collect())
}

/// Most job details one statement of [`DetailReads`] reads.
const MAX_READ_GROUP: usize = 64;

/// Statements of [`DetailReads`] running at once, each on a connection of the pool: two,
/// so that a slow read (a job with megabytes of args) does not hold up every other. On
/// this project's 2-core bench one reader read a little faster than two (bigger groups)
/// and four slower (2026-12-06, `api/benches/README.md`).
const READERS: usize = 2;

/// A caller of [`crate::Engine::job_detail`] waiting for its group's read.
type DetailRequest = (i64, oneshot::Sender<Result<JobDetail>>);

/// Group read of job details, behind [`crate::Engine::job_detail`] (every `GET
/// /v1/jobs/{id}`): the ids asked for while the previous read ran are read by one statement
/// of [`get_jobs`] ([`crate::batch`]). On Postgres a statement costs more to start and to
/// send than to run for a few ids, so thirty-two concurrent requests pay for a few
/// statements, not thirty-two. Each answer is as fresh as one read alone: its statement
/// starts after the request arrived.
pub(crate) struct DetailReads {
    queue: Batcher<DetailRequest>,
}

impl DetailReads {
    /// Starts the readers of `db` (needs a tokio runtime).
    pub(crate) fn start(db: Db, backend: Backend) -> Self {
        let queue = Batcher::start(READERS, MAX_READ_GROUP, move |group: Vec<DetailRequest>| {
            let db = db.clone();
            async move {
                let ids: Vec<i64> = group.iter().map(|(id, _)| *id).collect();
                match get_jobs(&db, backend, &ids).await {
                    Ok(details) => {
                        for ((_, reply), detail) in group.into_iter().zip(details) {
                            let _ = reply.send(detail);
                        }
                    }
                    Err(e) => {
                        let mut group = group.into_iter();
                        let first = group.next();
                        for (_, reply) in group {
                            let _ = reply.send(Err(e.copy_for_another_caller()));
                        }
                        if let Some((_, reply)) = first {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                ControlFlow::Continue(())
            }
        });
        Self { queue }
    }

    /// Job `id`'s detail, read with whatever else is asked for meanwhile.
    pub(crate) async fn read(&self, id: i64) -> Result<JobDetail> {
        let (reply, answer) = oneshot::channel();
        if !self.queue.send((id, reply)) {
            return Err(Error::ShuttingDown);
        }
        answer.await.unwrap_or(Err(Error::ShuttingDown))
    }
}

/// The detail of job `id` from its rows of [`get_jobs_sql`] (the job's row first, if the
/// job is there: children may outlive a pruned parent).
fn detail(id: i64, rows: &[sqlx::any::AnyRow]) -> Result<JobDetail> {
    let row = rows
        .first()
        .filter(|r| r.try_get::<i32, _>(15).is_ok_and(|part| part == 0))
        .ok_or(Error::JobNotFound(id))?;
    let job = summary(row)?;
    let args: String = row.try_get(12)?;
    let mut attempts = Vec::with_capacity(rows.len());
    let mut steps = Vec::new();
    let mut children = Vec::new();
    for r in &rows[1..] {
        let part: i32 = r.try_get(15)?;
        let attempt =
            || -> Result<u32> { Ok(u32::try_from(r.try_get::<i32, _>(17)?).unwrap_or(0)) };
        match part {
            1 => attempts.push(AttemptRecord {
                attempt: attempt()?,
                worker_id: r.try_get(18)?,
                started_at: r.try_get(19)?,
                finished_at: r.try_get(20)?,
                outcome: r.try_get(21)?,
                error: r.try_get(22)?,
            }),
            2 => steps.push(crate::steps::StepRecord {
                seq: u32::try_from(r.try_get::<i64, _>(16)?).unwrap_or(0),
                name: r.try_get(23)?,
                result: r.try_get(24)?,
                attempt: attempt()?,
                finished_at: r.try_get::<Option<Millis>, _>(20)?.unwrap_or_default(),
            }),
            _ => {
                let status: String = r.try_get(24)?;
                children.push(ChildSummary {
                    id: r.try_get(16)?,
                    kind: r.try_get(23)?,
                    status: status.parse().unwrap_or(JobState::Failed),
                    finished_at: r.try_get(20)?,
                });
            }
        }
    }
    // A succeeded job keeps the worker that ran it in `locked_by` (its first attempt's
    // record, migration 0006_first_success): it holds a lease only while running.
    let locked_by = row
        .try_get::<Option<String>, _>(13)?
        .filter(|_| job.status == JobState::Running);
    let parent_id: Option<i64> = row.try_get(25)?;
    // Waiting: its latest attempt ended snoozed, saying what for (a snooze without a
    // reason, `Outcome::Snooze`, waits for nothing but time and says nothing).
    let waiting_for = match (job.status, attempts.last()) {
        (JobState::Pending, Some(last)) if last.outcome.as_deref() == Some("snoozed") => {
            last.error.clone()
        }
        _ => None,
    };
    // An attempt's row is written when it ends: the one running now is read off the job.
    if job.status == JobState::Running {
        attempts.push(AttemptRecord {
            attempt: job.attempt,
            worker_id: locked_by.clone().unwrap_or_default(),
            started_at: row
                .try_get::<Option<Millis>, _>(14)?
                .unwrap_or(job.created_at),
            finished_at: None,
            outcome: None,
            error: None,
        });
    }
    Ok(JobDetail {
        job,
        args: serde_json::from_str(&args).unwrap_or(serde_json::Value::String(args)),
        locked_by,
        attempts,
        steps,
        parent_id,
        children,
        waiting_for,
    })
}

/// Counts for one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindStats {
    /// Kind.
    pub kind: String,
    /// Jobs per state (every state present, zeros included).
    pub counts: std::collections::BTreeMap<&'static str, i64>,
    /// How long the oldest due, unclaimed job has waited since its `run_at`, in ms.
    pub oldest_pending_age_ms: Option<i64>,
}

/// Jobs per kind and status, in parts that each read their own partial index (a status
/// may come in two parts: a pending job due and one scheduled): finished jobs, many, from
/// `jobs_kind_status`, which indexes them alone (engine migration 0007); the jobs waiting
/// and running, few beside them, from the claim's and the rescuer's indexes. Each part's
/// condition is its index's condition, word for word, so that SQLite sees the index serves
/// it too. Public for the query-plan test.
#[doc(hidden)]
pub const COUNTS_SQL: &str = "\
    SELECT kind, status, COUNT(*) FROM jobs WHERE finished_at IS NOT NULL \
    GROUP BY kind, status \
    UNION ALL \
    SELECT kind, status, COUNT(*) FROM jobs \
    WHERE status IN ('pending', 'retrying') AND scheduled = 0 GROUP BY kind, status \
    UNION ALL \
    SELECT kind, status, COUNT(*) FROM jobs \
    WHERE status IN ('pending', 'retrying') AND scheduled = 1 GROUP BY kind, status \
    UNION ALL \
    SELECT kind, status, COUNT(*) FROM jobs WHERE status = 'running' GROUP BY kind, status";

/// The `run_at` of each kind's oldest job due by `$1` and not yet claimed: from the claim's
/// two indexes (a job that came due may still be flagged scheduled until a claim reads
/// it). Public for the query-plan test.
#[doc(hidden)]
pub const OLDEST_DUE_SQL: &str = "\
    SELECT kind, MIN(run_at) FROM ( \
        SELECT kind, run_at FROM jobs \
        WHERE status IN ('pending', 'retrying') AND scheduled = 0 AND run_at <= $1 \
        UNION ALL \
        SELECT kind, run_at FROM jobs \
        WHERE status IN ('pending', 'retrying') AND scheduled = 1 AND run_at <= $1 \
    ) AS due GROUP BY kind";

/// Counts per kind × state, and the age of each kind's oldest due job.
pub async fn stats(db: &Db, now: Millis) -> Result<Vec<KindStats>> {
    let mut by_kind: std::collections::BTreeMap<String, KindStats> = Default::default();
    let rows = sqlx::query(COUNTS_SQL).fetch_all(db).await?;
    for row in rows {
        let kind: String = row.try_get(0)?;
        let status: String = row.try_get(1)?;
        let count: i64 = row.try_get(2)?;
        let entry = by_kind.entry(kind.clone()).or_insert_with(|| KindStats {
            kind,
            counts: JobState::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
            ..KindStats::default()
        });
        if let Ok(state) = status.parse::<JobState>() {
            *entry.counts.entry(state.as_str()).or_default() += count;
        }
    }
    let oldest = sqlx::query(OLDEST_DUE_SQL).bind(now).fetch_all(db).await?;
    for row in oldest {
        let kind: String = row.try_get(0)?;
        let min_run_at: Option<i64> = row.try_get(1)?;
        if let (Some(entry), Some(t)) = (by_kind.get_mut(&kind), min_run_at) {
            entry.oldest_pending_age_ms = Some(now - t);
        }
    }
    Ok(by_kind.into_values().collect())
}

/// Attempts of one kind finished (any outcome) before `now`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Throughput {
    /// In the last minute.
    pub last_minute: i64,
    /// In the last hour.
    pub last_hour: i64,
}

/// The statement of [`throughput`]: `$1` a minute ago, `$2` an hour ago (public for the
/// query-plan test).
#[doc(hidden)]
pub const THROUGHPUT_SQL: &str = "SELECT kind, SUM(CASE WHEN finished_at >= $1 THEN 1 ELSE 0 END), \
     COUNT(*) FROM job_attempts_all WHERE finished_at >= $2 GROUP BY kind";

/// Attempts finished per kind over the last minute and hour (kinds without any are
/// absent), from the view `job_attempts_all`, read through the `job_attempts_finished` and
/// `jobs_finished` indexes. Kept out of [`stats`], which `/metrics` and every dashboard
/// refresh read and which need no throughput.
pub async fn throughput(
    db: &Db,
    now: Millis,
) -> Result<std::collections::BTreeMap<String, Throughput>> {
    let rows = sqlx::query(THROUGHPUT_SQL)
        .bind(now - 60_000)
        .bind(now - 3_600_000)
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                Throughput {
                    last_minute: row.try_get(1)?,
                    last_hour: row.try_get(2)?,
                },
            ))
        })
        .collect()
}
