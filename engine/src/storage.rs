//! Every SQL statement that touches `jobs` and `job_attempts`. No other module writes a job's
//! `status`: each change here is an UPDATE guarded by the state it leaves (River's rule), so
//! a late or concurrent writer changes nothing instead of overwriting a newer state.
//!
//! Lists of ids are written into the SQL as integer literals (they are `i64`s read from the
//! database, never user text), because sqlx's `Any` driver has no portable array binding;
//! such statements are not cached as prepared statements.

use std::fmt::Write as _;

use sqlx::{Acquire, AssertSqlSafe, Row};

use crate::clock::Millis;
use crate::db::{Backend, Db, DbConn};
use crate::error::{Error, Result};
use crate::job::{Enqueued, JobState};

/// The Postgres channel that wakes workers; the payload is the job kind.
pub const NOTIFY_CHANNEL: &str = "veza_jobs";

const UNFINISHED: &str = "('pending', 'running', 'retrying')";

/// A job row to insert, already encoded.
#[derive(Debug, Clone)]
pub struct InsertJob<'a> {
    /// Kind name.
    pub kind: &'a str,
    /// Args as JSON.
    pub args: &'a str,
    /// Lower runs first.
    pub priority: i32,
    /// Attempts in all.
    pub max_attempts: u32,
    /// First possible run.
    pub run_at: Millis,
    /// Unique key, if any.
    pub unique_key: Option<&'a str>,
}

/// Inserts a job on `conn` (the caller's transaction, if it has one), or returns the id of
/// the unfinished job that holds its unique key. On Postgres a job that is due now also
/// queues a NOTIFY, which Postgres delivers at commit (and folds into one per transaction
/// and kind), so a rolled-back enqueue wakes nobody.
pub async fn insert_job(conn: &mut DbConn, job: &InsertJob<'_>, now: Millis) -> Result<Enqueued> {
    // A holder can finish between our failed insert and our look-up; then insert again.
    for _ in 0..3 {
        let inserted: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO jobs (kind, args, status, priority, attempt, max_attempts, run_at, unique_key, created_at) \
             VALUES ($1, $2, 'pending', $3, 0, $4, $5, $6, $7) \
             ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN {UNFINISHED} DO NOTHING \
             RETURNING id"
        )))
        .bind(job.kind)
        .bind(job.args)
        .bind(job.priority)
        .bind(i64::from(job.max_attempts))
        .bind(job.run_at)
        .bind(job.unique_key)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = inserted {
            if job.run_at <= now && Backend::of(conn) == Backend::Postgres {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(NOTIFY_CHANNEL)
                    .bind(job.kind)
                    .execute(&mut *conn)
                    .await?;
            }
            return Ok(Enqueued::Inserted(id));
        }
        let key = job
            .unique_key
            .expect("only a unique key can make the insert a no-op");
        if let Some(id) = unfinished_holder(conn, key).await? {
            return Ok(Enqueued::Existing(id));
        }
    }
    Err(Error::Database(sqlx::Error::Protocol(format!(
        "unique key {:?} kept changing hands while enqueueing",
        job.unique_key
    ))))
}

async fn unfinished_holder(conn: &mut DbConn, key: &str) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT id FROM jobs WHERE unique_key = $1 AND status IN {UNFINISHED}"
    )))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?)
}

/// A job claimed by a worker, leased until it acks or renews.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// Args JSON.
    pub args: String,
    /// This attempt (1-based).
    pub attempt: u32,
    /// Attempts in all.
    pub max_attempts: u32,
    /// When it became due (for enqueue→start latency).
    pub run_at: Millis,
}

/// Claims up to `limit` due jobs of `kind` for `worker`, leasing them until `lease_until`,
/// and opens an attempt row for each, all in one transaction. Postgres skips rows other
/// workers hold (`FOR UPDATE SKIP LOCKED`); SQLite has a single writer, so it needs nothing.
pub async fn claim(
    db: &Db,
    backend: Backend,
    kind: &str,
    worker: &str,
    now: Millis,
    lease_until: Millis,
    limit: usize,
) -> Result<Vec<ClaimedJob>> {
    let sql = match backend {
        Backend::Postgres => {
            "WITH picked AS ( \
                 SELECT id FROM jobs \
                 WHERE kind = $1 AND status IN ('pending', 'retrying') AND run_at <= $2 \
                 ORDER BY priority, run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE jobs SET status = 'running', attempt = jobs.attempt + 1, locked_by = $4, \
                 lease_expires_at = $5, started_at = $2 \
             FROM picked WHERE jobs.id = picked.id \
             RETURNING jobs.id, jobs.args, jobs.attempt, jobs.max_attempts, jobs.run_at"
        }
        Backend::Sqlite => {
            "UPDATE jobs SET status = 'running', attempt = attempt + 1, locked_by = $4, \
                 lease_expires_at = $5, started_at = $2 \
             WHERE id IN ( \
                 SELECT id FROM jobs \
                 WHERE kind = $1 AND status IN ('pending', 'retrying') AND run_at <= $2 \
                 ORDER BY priority, run_at, id LIMIT $3) \
             RETURNING id, args, attempt, max_attempts, run_at"
        }
    };
    let mut tx = db.begin().await?;
    let rows = sqlx::query(sql)
        .bind(kind)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(worker)
        .bind(lease_until)
        .fetch_all(&mut *tx)
        .await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        jobs.push(ClaimedJob {
            id: row.try_get(0)?,
            kind: kind.to_owned(),
            args: row.try_get(1)?,
            attempt: u32::try_from(row.try_get::<i32, _>(2)?).unwrap_or(0),
            max_attempts: u32::try_from(row.try_get::<i32, _>(3)?).unwrap_or(1),
            run_at: row.try_get(4)?,
        });
    }
    let ids = id_list(jobs.iter().map(|j| j.id));
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at) \
         SELECT id, attempt, locked_by, started_at FROM jobs WHERE id IN ({ids})"
    )))
    .persistent(false)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(jobs)
}

/// How an attempt ended, as the worker decided from the handler's result and the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Done (with a note when the handler skipped its work on purpose).
    Succeeded {
        /// Why it was skipped, if it was.
        skipped: Option<String>,
    },
    /// Failed, will run again at `run_at`.
    Retry {
        /// The error text.
        error: String,
        /// Next attempt.
        run_at: Millis,
    },
    /// Failed for good.
    Fail {
        /// The error text.
        error: String,
    },
}

/// One finished attempt to record.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Job id.
    pub id: i64,
    /// Attempt number.
    pub attempt: u32,
    /// How it ended.
    pub end: AttemptEnd,
}

/// Records a batch of finished attempts in one transaction (one commit, one fsync, for the
/// lot). Returns the ids whose rows were no longer `running` under this worker's lease (a
/// rescuer took them after the lease expired): their result is dropped, not forced.
pub async fn ack(db: &Db, worker: &str, now: Millis, acks: &[Ack]) -> Result<Vec<i64>> {
    let mut conn = db.acquire().await?;
    let mut tx = conn.begin().await?;
    let mut lost = Vec::new();

    // The common case, plain successes, in two statements whatever their number. Each row
    // is matched on (id, attempt), so a late ack of an older attempt never completes a newer
    // one that another claim started after a lease expiry. The plain `id IN (…)` comes
    // first so that Postgres drives the match from the primary key: a row-value list alone
    // plans as a nested-loop semi join over every running row (250 ms per 100 acks with
    // 8,000 jobs running, measured).
    let plain: Vec<(i64, u32)> = acks
        .iter()
        .filter(|a| matches!(a.end, AttemptEnd::Succeeded { skipped: None }))
        .map(|a| (a.id, a.attempt))
        .collect();
    if !plain.is_empty() {
        let done: Vec<(i64, i32)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE jobs SET status = 'succeeded', finished_at = $1, locked_by = NULL, \
                 lease_expires_at = NULL \
             WHERE id IN ({}) AND (id, attempt) IN (VALUES {}) \
                 AND status = 'running' AND locked_by = $2 \
             RETURNING id, attempt",
            id_list(plain.iter().map(|(id, _)| *id)),
            pair_list(&plain)
        )))
        .bind(now)
        .bind(worker)
        .persistent(false)
        .fetch_all(&mut *tx)
        .await?;
        let done: Vec<(i64, u32)> = done
            .into_iter()
            .map(|(id, attempt)| (id, u32::try_from(attempt).unwrap_or(0)))
            .collect();
        if !done.is_empty() {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE job_attempts SET finished_at = $1, outcome = 'succeeded' \
                 WHERE job_id IN ({}) AND (job_id, attempt) IN (VALUES {}) \
                     AND worker_id = $2 AND finished_at IS NULL",
                id_list(done.iter().map(|(id, _)| *id)),
                pair_list(&done)
            )))
            .bind(now)
            .bind(worker)
            .persistent(false)
            .execute(&mut *tx)
            .await?;
        }
        lost.extend(
            plain
                .iter()
                .filter(|p| !done.contains(p))
                .map(|(id, _)| *id),
        );
    }

    for a in acks {
        let (status, outcome, error, run_at, note): (
            JobState,
            &str,
            Option<&str>,
            Option<Millis>,
            Option<&str>,
        ) = match &a.end {
            AttemptEnd::Succeeded { skipped: None } => continue,
            AttemptEnd::Succeeded {
                skipped: Some(reason),
            } => (JobState::Succeeded, "skipped", None, None, Some(reason)),
            AttemptEnd::Retry { error, run_at } => (
                JobState::Retrying,
                "retrying",
                Some(error),
                Some(*run_at),
                None,
            ),
            AttemptEnd::Fail { error } => (JobState::Failed, "failed", Some(error), None, None),
        };
        let finished_at = status.is_final().then_some(now);
        let n = sqlx::query(
            "UPDATE jobs SET status = $1, finished_at = $2, run_at = COALESCE($3, run_at), \
                 last_error = COALESCE($4, last_error), note = COALESCE($5, note), \
                 locked_by = NULL, lease_expires_at = NULL \
             WHERE id = $6 AND status = 'running' AND locked_by = $7 AND attempt = $8",
        )
        .bind(status.as_str())
        .bind(finished_at)
        .bind(run_at)
        .bind(error)
        .bind(note)
        .bind(a.id)
        .bind(worker)
        .bind(i64::from(a.attempt))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            lost.push(a.id);
            continue;
        }
        sqlx::query(
            "UPDATE job_attempts SET finished_at = $1, outcome = $2, error = COALESCE($3, $4) \
             WHERE job_id = $5 AND attempt = $6 AND finished_at IS NULL",
        )
        .bind(now)
        .bind(outcome)
        .bind(error)
        .bind(note)
        .bind(a.id)
        .bind(i64::from(a.attempt))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(lost)
}

/// Extends the leases of the jobs `worker` is running. Returns how many rows it renewed.
pub async fn renew_leases(db: &Db, worker: &str, ids: &[i64], until: Millis) -> Result<u64> {
    let mut renewed = 0;
    for chunk in ids.chunks(500) {
        renewed += sqlx::query(AssertSqlSafe(format!(
            "UPDATE jobs SET lease_expires_at = $1 \
             WHERE id IN ({}) AND status = 'running' AND locked_by = $2",
            id_list(chunk.iter().copied())
        )))
        .bind(until)
        .bind(worker)
        .persistent(false)
        .execute(db)
        .await?
        .rows_affected();
    }
    Ok(renewed)
}

/// A job whose worker stopped renewing its lease.
#[derive(Debug, Clone)]
pub struct ExpiredLease {
    /// Job id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// The attempt that was cut off.
    pub attempt: u32,
    /// Attempts in all.
    pub max_attempts: u32,
    /// The worker that held it.
    pub locked_by: String,
}

/// Running jobs whose lease ran out before `now` (at most `limit`).
pub async fn expired_leases(db: &Db, now: Millis, limit: i64) -> Result<Vec<ExpiredLease>> {
    let rows = sqlx::query(
        "SELECT id, kind, attempt, max_attempts, locked_by FROM jobs \
         WHERE status = 'running' AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(ExpiredLease {
                id: row.try_get(0)?,
                kind: row.try_get(1)?,
                attempt: u32::try_from(row.try_get::<i32, _>(2)?).unwrap_or(0),
                max_attempts: u32::try_from(row.try_get::<i32, _>(3)?).unwrap_or(1),
                locked_by: row.try_get(4)?,
            })
        })
        .collect()
}

/// Ends an attempt whose lease expired: the attempt counts, so the job is retried at
/// `retry_at` or, when that was its last attempt (`retry_at = None`), fails. Guarded by the
/// lease still being expired, so a worker that renewed in the meantime keeps its job, and
/// two rescuers cannot both act. Returns true if this call rescued it.
pub async fn rescue(
    db: &Db,
    lease: &ExpiredLease,
    now: Millis,
    retry_at: Option<Millis>,
) -> Result<bool> {
    let error = format!(
        "lease expired: worker {} stopped renewing it (crashed, killed or cut off from the database)",
        lease.locked_by
    );
    let (status, outcome) = match retry_at {
        Some(_) => (JobState::Retrying, "lease_expired"),
        None => (JobState::Failed, "lease_expired"),
    };
    let mut tx = db.begin().await?;
    let n = sqlx::query(
        "UPDATE jobs SET status = $1, finished_at = $2, run_at = COALESCE($3, run_at), \
             last_error = $4, locked_by = NULL, lease_expires_at = NULL \
         WHERE id = $5 AND status = 'running' AND attempt = $6 AND lease_expires_at < $7",
    )
    .bind(status.as_str())
    .bind(status.is_final().then_some(now))
    .bind(retry_at)
    .bind(&error)
    .bind(lease.id)
    .bind(i64::from(lease.attempt))
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 1 {
        sqlx::query(
            "UPDATE job_attempts SET finished_at = $1, outcome = $2, error = $3 \
             WHERE job_id = $4 AND attempt = $5 AND finished_at IS NULL",
        )
        .bind(now)
        .bind(outcome)
        .bind(&error)
        .bind(lease.id)
        .bind(i64::from(lease.attempt))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(n == 1)
}

/// Hands jobs this worker could not finish before shutdown back to the queue, due now, for
/// another worker. The cut-off attempt is recorded as `released` and given back: a deploy
/// does not use up a job's attempts (the next attempt reuses its number).
pub async fn release(db: &Db, worker: &str, ids: &[i64], now: Millis) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let list = id_list(ids.iter().copied());
    let mut tx = db.begin().await?;
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE job_attempts SET finished_at = $1, outcome = 'released', \
             error = 'released at shutdown before it finished' \
         WHERE job_id IN ({list}) AND worker_id = $2 AND finished_at IS NULL"
    )))
    .bind(now)
    .bind(worker)
    .persistent(false)
    .execute(&mut *tx)
    .await?;
    let n = sqlx::query(AssertSqlSafe(format!(
        "UPDATE jobs SET status = 'pending', attempt = attempt - 1, run_at = $1, locked_by = NULL, \
             lease_expires_at = NULL \
         WHERE id IN ({list}) AND status = 'running' AND locked_by = $2"
    )))
    .bind(now)
    .bind(worker)
    .persistent(false)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n)
}

/// `(1, 2), (3, 4)`: (id, attempt) pairs for an `IN (VALUES …)` list.
fn pair_list(pairs: &[(i64, u32)]) -> String {
    let mut s = String::new();
    for (i, (id, attempt)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "({id}, {attempt})");
    }
    s
}

/// `1, 2, 3`: integer ids for an `IN (…)` list.
fn id_list(ids: impl Iterator<Item = i64>) -> String {
    let mut s = String::new();
    for (i, id) in ids.enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{id}");
    }
    s
}

/// The current status of a job, or `JobNotFound`.
pub async fn status_of(conn: &mut DbConn, id: i64) -> Result<JobState> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let status = status.ok_or(Error::JobNotFound(id))?;
    status
        .parse()
        .map_err(|e: String| Error::Database(sqlx::Error::Protocol(e)))
}

/// A no-op write on job `id`, first in a read-then-write transaction: on SQLite it takes the
/// write lock now (waiting up to the busy timeout), instead of failing at once with
/// "database is locked" when a worker writes between our read and our write (a deferred
/// transaction cannot upgrade past a newer write); on Postgres it locks the row.
async fn write_first(conn: &mut DbConn, id: i64) -> Result<()> {
    sqlx::query("UPDATE jobs SET id = id WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Cancels a job that is waiting (`pending` or `retrying`), with an audit row naming `actor`.
pub async fn cancel(db: &Db, id: i64, actor: &crate::Actor, now: Millis) -> Result<JobState> {
    let mut tx = db.begin().await?;
    write_first(&mut tx, id).await?;
    let from = status_of(&mut tx, id).await?;
    let n = sqlx::query(
        "UPDATE jobs SET status = 'cancelled', finished_at = $1 \
         WHERE id = $2 AND status IN ('pending', 'retrying')",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(Error::InvalidJobState {
            id,
            state: from,
            operation: "cancel",
            expected: "pending or retrying",
        });
    }
    crate::state_machine::record(
        &mut tx,
        "job",
        &id.to_string(),
        from.as_str(),
        "cancelled",
        actor,
        None,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(JobState::Cancelled)
}

/// Puts a `failed` or `cancelled` job back to `pending`, due now, with a fresh set of
/// attempts; its attempt history is kept. Refused while another unfinished job holds its
/// unique key.
pub async fn retry(db: &Db, id: i64, actor: &crate::Actor, now: Millis) -> Result<JobState> {
    let mut tx = db.begin().await?;
    write_first(&mut tx, id).await?;
    let from = status_of(&mut tx, id).await?;
    if !matches!(from, JobState::Failed | JobState::Cancelled) {
        return Err(Error::InvalidJobState {
            id,
            state: from,
            operation: "retry",
            expected: "failed or cancelled",
        });
    }
    let updated = sqlx::query(
        "UPDATE jobs SET status = 'pending', attempt = 0, run_at = $1, finished_at = NULL, note = NULL \
         WHERE id = $2 AND status = $3",
    )
    .bind(now)
    .bind(id)
    .bind(from.as_str())
    .execute(&mut *tx)
    .await;
    let n = match updated {
        Ok(r) => r.rows_affected(),
        Err(e) if crate::error::is_unique_violation(&e) => {
            drop(tx);
            let mut conn = db.acquire().await?;
            let key: Option<String> =
                sqlx::query_scalar("SELECT unique_key FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?;
            let holder = match key {
                Some(k) => unfinished_holder(&mut conn, &k).await?.unwrap_or(0),
                None => 0,
            };
            return Err(Error::UniqueKeyHeld { id, holder });
        }
        Err(e) => return Err(e.into()),
    };
    if n == 0 {
        let state = status_of(&mut tx, id).await?;
        return Err(Error::InvalidJobState {
            id,
            state,
            operation: "retry",
            expected: "failed or cancelled",
        });
    }
    crate::state_machine::record(
        &mut tx,
        "job",
        &id.to_string(),
        from.as_str(),
        "pending",
        actor,
        None,
        now,
    )
    .await?;
    if Backend::of(&tx) == Backend::Postgres {
        let kind: String = sqlx::query_scalar("SELECT kind FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(kind)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(JobState::Pending)
}

/// Deletes up to `batch` jobs in `status` finished before `before`, with their attempts.
/// Returns how many it deleted; call again until it returns less than `batch`.
pub async fn prune_batch(db: &Db, status: JobState, before: Millis, batch: i64) -> Result<u64> {
    let mut tx = db.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE status = $1 AND finished_at < $2 ORDER BY finished_at LIMIT $3",
    )
    .bind(status.as_str())
    .bind(before)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let list = id_list(ids.iter().copied());
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM job_attempts WHERE job_id IN ({list})"
    )))
    .persistent(false)
    .execute(&mut *tx)
    .await?;
    let n = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM jobs WHERE id IN ({list}) AND status = $1"
    )))
    .bind(status.as_str())
    .persistent(false)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n)
}

/// Most rows one multi-row INSERT of [`insert_jobs`] writes: 6 bound values a row, far
/// under SQLite's 32,766 and Postgres' 65,535 parameters.
pub const INSERT_CHUNK: usize = 500;

/// Inserts many jobs on `conn` (the caller's transaction, if it has one) and returns their
/// ids in the order of `jobs`: one multi-row INSERT, with bound parameters, per run of up to
/// [`INSERT_CHUNK`] rows.
///
/// Unique keys are not handled by the batched statement: a row that has one is inserted in
/// its place through [`insert_job`], so its key is honoured and its id is that of the
/// unfinished job holding the key, if one does (as [`Enqueued::id`]).
///
/// On Postgres, one NOTIFY per kind that has a job due now is queued, delivered at commit
/// (rows with a unique key send theirs through [`insert_job`]; Postgres folds duplicates).
pub async fn insert_jobs(
    conn: &mut DbConn,
    jobs: &[InsertJob<'_>],
    now: Millis,
) -> Result<Vec<i64>> {
    let backend = Backend::of(conn);
    let mut ids = Vec::with_capacity(jobs.len());
    let mut due_kinds: Vec<&str> = Vec::new();
    let mut rest = jobs;
    while let Some(first) = rest.first() {
        if first.unique_key.is_some() {
            ids.push(insert_job(conn, first, now).await?.id());
            rest = &rest[1..];
            continue;
        }
        let run = rest
            .iter()
            .take(INSERT_CHUNK)
            .take_while(|j| j.unique_key.is_none())
            .count();
        let (chunk, tail) = rest.split_at(run);
        rest = tail;

        let mut sql = String::from(
            "INSERT INTO jobs (kind, args, status, priority, attempt, max_attempts, run_at, created_at) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            match backend {
                // Anonymous parameters: SQLite finds the slot of a `$N` by walking its list
                // of named parameters, so binding N of them costs O(N²) (7× slower at 500
                // rows a statement).
                Backend::Sqlite => sql.push_str("(?, ?, 'pending', ?, 0, ?, ?, ?)"),
                Backend::Postgres => {
                    let p = 1 + 6 * i;
                    let _ = write!(
                        sql,
                        "(${}, ${}, 'pending', ${}, 0, ${}, ${}, ${})",
                        p,
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5
                    );
                }
            }
        }
        sql.push_str(" RETURNING id");
        let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
        for job in chunk {
            query = query
                .bind(job.kind)
                .bind(job.args)
                .bind(job.priority)
                .bind(i64::from(job.max_attempts))
                .bind(job.run_at)
                .bind(now);
        }
        let mut inserted = query.fetch_all(&mut *conn).await?;
        if inserted.len() != chunk.len() {
            return Err(Error::Database(sqlx::Error::Protocol(format!(
                "bulk insert of {} jobs returned {} ids",
                chunk.len(),
                inserted.len()
            ))));
        }
        // One statement draws its ids in row order (AUTOINCREMENT / the sequence), while
        // the order RETURNING reports them in is unspecified: ascending ids are row order.
        inserted.sort_unstable();
        ids.extend(inserted);
        for job in chunk {
            if job.run_at <= now && !due_kinds.contains(&job.kind) {
                due_kinds.push(job.kind);
            }
        }
    }
    if backend == Backend::Postgres {
        for kind in due_kinds {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(kind)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    #[test]
    fn id_list_is_comma_separated() {
        assert_eq!(super::id_list([1, 22, 333].into_iter()), "1, 22, 333");
        assert_eq!(super::id_list(std::iter::empty()), "");
    }
}
