//! Every SQL statement that touches `jobs` and `job_attempts`. No other module writes a job's
//! `status`: each change here is an UPDATE guarded by the state it leaves (River's rule), so
//! a late or concurrent writer changes nothing instead of overwriting a newer state.
//!
//! sqlx's `Any` driver binds no arrays, so a list of rows travels in the form measured
//! fastest for its statement: leases to renew as one JSON text (`json_to_recordset` on
//! Postgres, `json_each` on SQLite); on Postgres, acknowledgements as JSON too and new jobs
//! as the text of a Postgres array per column (`unnest`), each one fixed SQL text, prepared
//! and cached; on SQLite, where the JSON functions cost a sixth of the writer's time,
//! acknowledgements and new jobs as a multi-row `VALUES` of anonymous `?` parameters.
//!
//! # Whose clock
//!
//! Run times (`run_at`, backoff) and history (`started_at`, `finished_at`) come from the
//! engine's [`crate::Clock`]. Leases are different: a lease written by one host and judged
//! expired by another must not depend on two hosts' clocks agreeing. On Postgres with the
//! system clock, every lease time (`lease_expires_at`, the claim's "due by now", the
//! rescuer's "expired before now") is therefore read from the database's own clock, so a
//! host whose clock runs ahead can neither steal a live lease nor claim early. A test
//! clock ([`crate::Clock::manual`]) is used as is (`LeaseNow::At`). SQLite has one host.

use std::fmt::Write as _;
use std::sync::LazyLock;

use serde_json::json;
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::clock::Millis;
use crate::db::{Backend, Db, DbConn, Tx};
use crate::error::{Error, Result};
use crate::job::{Enqueued, JobState, RetryPolicy};

/// The Postgres channel that wakes workers; the payload is the job kind.
pub const NOTIFY_CHANNEL: &str = "veza_jobs";

/// Attempts a job may hand back at shutdown without using them up: after this many, a
/// released attempt counts like any other (a job that never fits in a deploy's shutdown
/// budget must still end).
pub const MAX_RELEASES: u32 = 5;

/// Longest error or note text stored, in bytes (longer ones are cut, marked `…`).
pub const MAX_TEXT_BYTES: usize = 8 * 1024;

const UNFINISHED: &str = "('pending', 'running', 'retrying')";

/// Milliseconds since the epoch by the database's clock (Postgres), at the start of the
/// statement. `statement_timestamp()`, not `clock_timestamp()`: a stable value can bound an
/// index scan, a volatile one cannot — with `clock_timestamp()` the claim's "due by now"
/// was a filter, and every empty claim read all of a kind's jobs waiting for later.
const PG_NOW: &str = "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT";

/// "Now" for lease arithmetic: the database's clock, or a given time (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseNow {
    /// The database's clock (Postgres with the system clock).
    Database,
    /// This time, from the engine's clock (SQLite, or a test clock).
    At(Millis),
}

impl LeaseNow {
    /// The bind value: `NULL` selects the database's clock through `COALESCE`.
    fn bind(self) -> Option<Millis> {
        match self {
            Self::Database => None,
            Self::At(t) => Some(t),
        }
    }
}

/// `COALESCE($n, <database now>)` on Postgres, `$n` on SQLite (public for the query-plan
/// test, which explains the statement the code runs).
#[doc(hidden)]
pub fn lease_now_sql(backend: Backend, param: usize) -> String {
    match backend {
        Backend::Postgres => format!("COALESCE(${param}::BIGINT, {PG_NOW})"),
        Backend::Sqlite => format!("${param}"),
    }
}

/// Error and note texts as stored: no NUL (Postgres refuses it in text), at most
/// [`MAX_TEXT_BYTES`] (cut on a character boundary).
pub fn sanitize(text: &str) -> String {
    let mut clean: String = text.chars().filter(|c| *c != '\0').collect();
    if clean.len() > MAX_TEXT_BYTES {
        let mut cut = MAX_TEXT_BYTES;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
        clean.push('…');
    }
    clean
}

// --- Enqueue --------------------------------------------------------------------------

/// A job row to insert, already encoded.
#[derive(Debug, Clone)]
pub struct InsertJob<'a> {
    /// Kind name.
    pub kind: &'a str,
    /// Args as JSON.
    pub args: &'a str,
    /// Lower runs first.
    pub priority: i32,
    /// The job's retry policy: attempts in all, backoff base and cap (stored on the row).
    pub retry: RetryPolicy,
    /// First possible run.
    pub run_at: Millis,
    /// Unique key, if any.
    pub unique_key: Option<&'a str>,
    /// The job that waits for this one ([`crate::JobContext::fan_out`]), if any.
    pub parent_id: Option<i64>,
}

/// The columns `max_attempts`, `backoff_base_ms` and `backoff_cap_ms` of a job's row.
struct RetryColumns {
    max_attempts: i64,
    base_ms: i64,
    cap_ms: i64,
}

impl InsertJob<'_> {
    /// Its retry policy as stored on its row (at least one attempt; times in ms), the same
    /// for every insert statement.
    fn retry_columns(&self) -> RetryColumns {
        RetryColumns {
            max_attempts: i64::from(self.retry.max_attempts.max(1)),
            base_ms: crate::clock::duration_ms(self.retry.base),
            cap_ms: crate::clock::duration_ms(self.retry.cap),
        }
    }
}

/// Whether an insert queues a Postgres NOTIFY in the caller's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// Queue `pg_notify` in the transaction (delivered at commit): for callers that commit
    /// a transaction the engine does not see.
    InTransaction,
    /// The caller wakes workers after its commit ([`crate::JobTx::commit`]), once per kind
    /// and outside the transaction, so concurrent enqueues do not queue on NOTIFY's lock.
    AfterCommit,
}

/// `scheduled`: 1 for a job written to run later (see [`claim_pick_sql`]).
const INSERT_COLUMNS: &str = "kind, args, status, priority, attempt, max_attempts, backoff_base_ms, backoff_cap_ms, run_at, unique_key, created_at, scheduled, parent_id";

/// Inserts a job on `conn` (the caller's transaction, if it has one), or returns the id of
/// the unfinished job that holds its unique key.
pub async fn insert_job(
    conn: &mut DbConn,
    job: &InsertJob<'_>,
    now: Millis,
    notify: Notify,
) -> Result<Enqueued> {
    let retry = job.retry_columns();
    // A holder can finish between our failed insert and our look-up; then insert again.
    for _ in 0..3 {
        let inserted: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO jobs ({INSERT_COLUMNS}) \
             VALUES ($1, $2, 'pending', $3, 0, $4, $5, $6, $7, $8, $9, CASE WHEN $7 > $9 THEN 1 ELSE 0 END, $10) \
             ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN {UNFINISHED} DO NOTHING \
             RETURNING id"
        )))
        .bind(job.kind)
        .bind(job.args)
        .bind(job.priority)
        .bind(retry.max_attempts)
        .bind(retry.base_ms)
        .bind(retry.cap_ms)
        .bind(job.run_at)
        .bind(job.unique_key)
        .bind(now)
        .bind(job.parent_id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = inserted {
            if job.run_at <= now && notify == Notify::InTransaction {
                notify_in_transaction(conn, &[job.kind]).await?;
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

/// Queues one NOTIFY per kind on `conn` (Postgres; a no-op on SQLite), delivered at commit.
pub async fn notify_in_transaction(conn: &mut DbConn, kinds: &[&str]) -> Result<()> {
    if Backend::of(conn) != Backend::Postgres {
        return Ok(());
    }
    for kind in kinds {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(*kind)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn unfinished_holder(conn: &mut DbConn, key: &str) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT id FROM jobs WHERE unique_key = $1 AND status IN {UNFINISHED}"
    )))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Most rows one INSERT of [`insert_jobs`] writes: on SQLite, 8 bound values a row, far
/// under its 32,766 parameters; on Postgres, seven array texts whatever the size.
pub const INSERT_CHUNK: usize = 1_000;

/// Inserts many jobs on `conn` (the caller's transaction, if it has one) and returns their
/// ids in the order of `jobs`: one INSERT per run of up to [`INSERT_CHUNK`] rows (a
/// multi-row `VALUES` on SQLite, `unnest` of bound arrays on Postgres).
///
/// Unique keys (and parents) are not handled by the batched statement: a row that has one is
/// inserted in its place through [`insert_job`], so its key is honoured and its id is that of the
/// unfinished job holding the key, if one does (as [`Enqueued::id`]). With
/// [`Notify::AfterCommit`] the caller wakes the [`due_kinds`] after its commit.
pub async fn insert_jobs(
    conn: &mut DbConn,
    jobs: &[InsertJob<'_>],
    now: Millis,
    notify: Notify,
) -> Result<Vec<i64>> {
    let backend = Backend::of(conn);
    let mut ids = Vec::with_capacity(jobs.len());
    let mut rest = jobs;
    while let Some(first) = rest.first() {
        if first.unique_key.is_some() || first.parent_id.is_some() {
            ids.push(insert_job(conn, first, now, notify).await?.id());
            rest = &rest[1..];
            continue;
        }
        let run = rest
            .iter()
            .take(INSERT_CHUNK)
            .take_while(|j| j.unique_key.is_none() && j.parent_id.is_none())
            .count();
        let (chunk, tail) = rest.split_at(run);
        rest = tail;

        let inserted = match backend {
            Backend::Sqlite => insert_values_sqlite(conn, chunk, now).await?,
            Backend::Postgres => insert_arrays_pg(conn, chunk, now).await?,
        };
        ids.extend(inserted);
    }
    if notify == Notify::InTransaction {
        // (A keyed row queued its own through `insert_job`.)
        let batched = jobs
            .iter()
            .filter(|j| j.unique_key.is_none() && j.parent_id.is_none());
        notify_in_transaction(conn, &due_kinds(batched, now)).await?;
    }
    Ok(ids)
}

/// The kinds of `jobs` with a job due at `now`, each once: whose workers to wake once the
/// rows are committed.
pub fn due_kinds<'a: 'j, 'j>(
    jobs: impl IntoIterator<Item = &'j InsertJob<'a>>,
    now: Millis,
) -> Vec<&'a str> {
    let mut kinds: Vec<&'a str> = Vec::new();
    for job in jobs {
        if job.run_at <= now && !kinds.contains(&job.kind) {
            kinds.push(job.kind);
        }
    }
    kinds
}

/// SQLite's bulk insert: one multi-row `VALUES`, 8 anonymous parameters a row (SQLite
/// finds the slot of a `$N` by walking its list of named parameters, so binding N of them
/// costs O(N²): 7× slower at 500 rows a statement). Returns the ids in row order.
///
/// Without `RETURNING`: SQLite buffers returned rows in a temporary table and sqlx hands
/// each over from its connection thread. The ids are read off the statement instead: the
/// table is `AUTOINCREMENT` and nothing else writes between the statement's rows (one
/// writer, no insert trigger), so its rows take consecutive ids up to the last one.
async fn insert_values_sqlite(
    conn: &mut DbConn,
    chunk: &[InsertJob<'_>],
    now: Millis,
) -> Result<Vec<i64>> {
    let mut sql = format!("INSERT INTO jobs ({INSERT_COLUMNS}) VALUES ");
    for (i, job) in chunk.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        // The flag as a literal: the common chunk (every job due now) keeps one text.
        sql.push_str(if job.run_at > now {
            "(?, ?, 'pending', ?, 0, ?, ?, ?, ?, NULL, ?, 1, NULL)"
        } else {
            "(?, ?, 'pending', ?, 0, ?, ?, ?, ?, NULL, ?, 0, NULL)"
        });
    }
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for job in chunk {
        let retry = job.retry_columns();
        query = query
            .bind(job.kind)
            .bind(job.args)
            .bind(job.priority)
            .bind(retry.max_attempts)
            .bind(retry.base_ms)
            .bind(retry.cap_ms)
            .bind(job.run_at)
            .bind(now);
    }
    let written = query.execute(&mut *conn).await?.rows_affected();
    // (sqlx's `Any` driver drops SQLite's last insert id from the result: asked apart.)
    let last: i64 = sqlx::query_scalar("SELECT last_insert_rowid()")
        .fetch_one(&mut *conn)
        .await?;
    if written != chunk.len() as u64 {
        return Err(Error::Database(sqlx::Error::Protocol(format!(
            "bulk insert of {} jobs wrote {written} rows",
            chunk.len()
        ))));
    }
    let n = i64::try_from(chunk.len()).unwrap_or(i64::MAX);
    Ok((last - n + 1..=last).collect())
}

/// Postgres' bulk insert: one fixed statement that unnests a column array per field, each
/// bound as the text of a Postgres array (sqlx's `Any` driver binds no arrays). Against a
/// multi-row `VALUES` of bound parameters it is planned once for every size and binds
/// eight parameters in all instead of eight a row: 1.7–2.0× the rows a second on the
/// server (psql, 20,000 rows in calls of 1,000, 2026-12-06). Returns the ids in row order.
async fn insert_arrays_pg(
    conn: &mut DbConn,
    chunk: &[InsertJob<'_>],
    now: Millis,
) -> Result<Vec<i64>> {
    let mut kinds = PgArray::default();
    let mut args = PgArray::default();
    let mut priorities = PgArray::default();
    let mut max_attempts = PgArray::default();
    let mut bases = PgArray::default();
    let mut caps = PgArray::default();
    let mut run_ats = PgArray::default();
    for job in chunk {
        kinds.text(job.kind);
        args.text(job.args);
        priorities.number(job.priority);
        let retry = job.retry_columns();
        max_attempts.number(retry.max_attempts);
        bases.number(retry.base_ms);
        caps.number(retry.cap_ms);
        run_ats.number(job.run_at);
    }
    let mut inserted: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(INSERT_ARRAYS_SQL_PG.as_str()))
        .bind(kinds.finish())
        .bind(args.finish())
        .bind(priorities.finish())
        .bind(max_attempts.finish())
        .bind(bases.finish())
        .bind(caps.finish())
        .bind(run_ats.finish())
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    if inserted.len() != chunk.len() {
        return Err(Error::Database(sqlx::Error::Protocol(format!(
            "bulk insert of {} jobs returned {} ids",
            chunk.len(),
            inserted.len()
        ))));
    }
    // The sequence draws the ids in row order, while the order RETURNING reports them in
    // is unspecified: ascending ids are row order.
    inserted.sort_unstable();
    Ok(inserted)
}

static INSERT_ARRAYS_SQL_PG: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO jobs ({INSERT_COLUMNS}) \
         SELECT kind, args, 'pending', priority, 0, max_attempts, base, cap, run_at, NULL, $8, \
                CASE WHEN run_at > $8 THEN 1 ELSE 0 END, NULL \
         FROM unnest($1::text::text[], $2::text::text[], $3::text::int[], $4::text::int[], \
                     $5::text::bigint[], $6::text::bigint[], $7::text::bigint[]) \
              AS new (kind, args, priority, max_attempts, base, cap, run_at) \
         RETURNING id"
    )
});

/// The text of a one-dimensional Postgres array (`{"a","b"}`, `{1,2}`), built element by
/// element: text elements quoted with `"` and `\` escaped, so any string round-trips.
#[derive(Default)]
struct PgArray(String);

impl PgArray {
    fn separator(&mut self) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
    }

    fn text(&mut self, value: &str) {
        self.separator();
        self.0.reserve(value.len() + 2);
        self.0.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                self.0.push('\\');
            }
            self.0.push(c);
        }
        self.0.push('"');
    }

    fn number(&mut self, value: impl std::fmt::Display) {
        self.separator();
        let _ = write!(self.0, "{value}");
    }

    fn finish(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}

// --- Claim and acknowledge --------------------------------------------------------------

/// A job claimed by a worker, leased until it acks or renews.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Id.
    pub id: i64,
    /// Args JSON.
    pub args: String,
    /// This attempt (1-based).
    pub attempt: u32,
    /// Attempts in all.
    pub max_attempts: u32,
    /// Attempts handed back at shutdown so far (see [`MAX_RELEASES`]).
    pub releases: u32,
    /// When it became due (for enqueue→start latency).
    pub run_at: Millis,
    /// The job's backoff, as stored on its row.
    pub retry: RetryPolicy,
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
    /// The handler asked to run again at `run_at` without using an attempt.
    Snoozed {
        /// Next attempt.
        run_at: Millis,
        /// What it waits for ([`crate::JobError::Waiting`]), kept on its attempt row.
        waiting_for: Option<String>,
    },
    /// Cut off at shutdown and handed back, due now. While the job has been released fewer
    /// than [`MAX_RELEASES`] times the attempt is given back (`max_attempts + 1`).
    Released {
        /// The attempt is given back.
        give_back: bool,
    },
    /// Claimed ahead but never started (shutdown): the claim is undone, no attempt is
    /// recorded, the attempt number is free again.
    Unclaimed,
}

impl AttemptEnd {
    /// The outcome recorded on the attempt row (`None`: no row).
    pub fn outcome(&self) -> Option<&'static str> {
        Some(match self {
            Self::Succeeded { skipped: None } => "succeeded",
            Self::Succeeded { skipped: Some(_) } => "skipped",
            Self::Retry { .. } => "retrying",
            Self::Fail { .. } => "failed",
            Self::Snoozed { .. } => "snoozed",
            Self::Released { .. } => "released",
            Self::Unclaimed => return None,
        })
    }

    /// The job's status after it.
    pub fn status(&self) -> JobState {
        match self {
            Self::Succeeded { .. } => JobState::Succeeded,
            Self::Retry { .. } => JobState::Retrying,
            Self::Fail { .. } => JobState::Failed,
            Self::Snoozed { .. } | Self::Released { .. } | Self::Unclaimed => JobState::Pending,
        }
    }
}

/// One finished attempt to record.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Job id.
    pub id: i64,
    /// Attempt number.
    pub attempt: u32,
    /// When the handler started (engine clock).
    pub started_at: Millis,
    /// How it ended.
    pub end: AttemptEnd,
}

impl Ack {
    /// Whether this ack writes a `job_attempts` row. A job that succeeds (or skips) at its
    /// first attempt writes none: that attempt is the job's only one, and its job row holds
    /// all the row would (the worker in `locked_by`, `started_at`, `finished_at`, the skip
    /// note); the view `job_attempts_all` reads it from there (engine migration
    /// 0006_first_success). An unclaim writes none either: no attempt was made. The
    /// Postgres statement spells the same rule in SQL (`FIRST_SUCCESS`).
    pub fn writes_attempt_row(&self) -> bool {
        match self.end {
            AttemptEnd::Unclaimed => false,
            AttemptEnd::Succeeded { .. } => self.attempt != 1,
            _ => true,
        }
    }

    /// The JSON object of this ack, as [`exchange`] unpacks it.
    fn to_json(&self, now: Millis) -> serde_json::Value {
        let (error, note, run_at) = match &self.end {
            AttemptEnd::Succeeded { skipped } => (None, skipped.as_deref().map(sanitize), None),
            AttemptEnd::Retry { error, run_at } => (Some(sanitize(error)), None, Some(*run_at)),
            AttemptEnd::Fail { error } => (Some(sanitize(error)), None, None),
            AttemptEnd::Snoozed { run_at, .. } => (None, None, Some(*run_at)),
            AttemptEnd::Released { .. } => (
                Some("released at shutdown before it finished".to_owned()),
                None,
                Some(now),
            ),
            AttemptEnd::Unclaimed => (None, None, Some(now)),
        };
        let bump = match self.end {
            AttemptEnd::Snoozed { .. } | AttemptEnd::Released { give_back: true } => 1,
            _ => 0,
        };
        json!({
            "id": self.id,
            "attempt": self.attempt,
            "status": self.end.status().as_str(),
            "outcome": self.end.outcome(),
            // A released job's error goes to its attempt row, not to `last_error`.
            "error": error.clone().filter(|_| !matches!(self.end, AttemptEnd::Released { .. })),
            // The attempt row's text: the error, why it skipped or what it waits for.
            "history": error.or(note.clone()).or_else(|| match &self.end {
                AttemptEnd::Snoozed { waiting_for, .. } => waiting_for.as_deref().map(sanitize),
                _ => None,
            }),
            "note": note,
            "run_at": run_at,
            "started_at": self.started_at,
            "bump": bump,
            "released": i32::from(matches!(self.end, AttemptEnd::Released { .. })),
            "unclaim": i32::from(matches!(self.end, AttemptEnd::Unclaimed)),
        })
    }
}

/// What one [`exchange`] did.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// The acks that were recorded, as `(id, attempt)`.
    pub acked: Vec<(i64, u32)>,
    /// The acks that were not: the row was no longer this attempt, running under this
    /// worker (its lease expired and another worker took it over). Their result is dropped.
    pub lost: Vec<(i64, u32)>,
    /// The jobs claimed.
    pub claimed: Vec<ClaimedJob>,
}

/// The claim's pick, as SQL: the ids of up to `limit` jobs of kind `kind` due by `now` (each
/// a SQL expression), in claim order (priority, then due time, then id), locked with `lock`
/// (`FOR UPDATE SKIP LOCKED` on Postgres, empty on SQLite), as a `SELECT id …`.
///
/// Two reads, merged: the jobs written to run at once, from `jobs_fetch` in claim order,
/// and the jobs written to run later that have come due, from `jobs_scheduled` in time
/// order, which stops at the first one not yet due (see migration 0004_scheduled: the jobs
/// waiting for later are not walked by every claim). Each read takes up to `limit`; the
/// merge keeps the first `limit` in claim order. Among jobs that come due together, more
/// than `limit` at once, the earliest due are taken first whatever their priority.
/// Public for the query-plan test, which explains the statement the code runs.
pub fn claim_pick_sql(kind: &str, now: &str, limit: &str, lock: &str) -> String {
    format!(
        "SELECT id FROM (\
             SELECT id, priority, run_at FROM (\
                 SELECT id, priority, run_at FROM jobs \
                 WHERE kind = {kind} AND status IN ('pending', 'retrying') AND scheduled = 0 \
                   AND run_at <= {now} \
                 ORDER BY priority, run_at, id LIMIT {limit} {lock}) AS due_now \
             UNION ALL \
             SELECT id, priority, run_at FROM (\
                 SELECT id, priority, run_at FROM jobs \
                 WHERE kind = {kind} AND status IN ('pending', 'retrying') AND scheduled = 1 \
                   AND run_at <= {now} \
                 ORDER BY run_at, id LIMIT {limit} {lock}) AS came_due\
         ) AS due ORDER BY priority, run_at, id LIMIT {limit}"
    )
}

const ACK_COLUMNS_PG: &str = "id BIGINT, attempt INT, status TEXT, outcome TEXT, error TEXT, \
     history TEXT, note TEXT, run_at BIGINT, started_at BIGINT, bump INT, released INT, unclaim INT";

/// The fields of an ack that [`ACK_SET`] reads, on SQLite.
const ACK_FIELDS_SQLITE: &[&str] = &[
    "id",
    "attempt",
    "status",
    "outcome",
    "error",
    "note",
    "run_at",
    "started_at",
    "bump",
    "released",
    "unclaim",
];

const ACK_SET: &str = "status = a.status, \
     finished_at = CASE WHEN a.status IN ('succeeded', 'failed') THEN $2 ELSE NULL END, \
     run_at = CASE WHEN a.outcome = 'snoozed' AND jobs.wake_pending > 0 THEN $2 \
                   ELSE COALESCE(a.run_at, jobs.run_at) END, \
     scheduled = CASE WHEN a.outcome = 'snoozed' AND jobs.wake_pending > 0 THEN 0 \
                      WHEN a.status IN ('pending', 'retrying') AND COALESCE(a.run_at, jobs.run_at) > $2 THEN 1 \
                      ELSE 0 END, \
     last_error = COALESCE(a.error, jobs.last_error), \
     note = COALESCE(a.note, jobs.note), \
     attempt = jobs.attempt - a.unclaim, \
     max_attempts = jobs.max_attempts + a.bump, \
     releases = jobs.releases + a.released, \
     started_at = CASE WHEN a.status = 'succeeded' THEN a.started_at ELSE jobs.started_at END, \
     locked_by = CASE WHEN a.status = 'succeeded' THEN jobs.locked_by ELSE NULL END, \
     lease_expires_at = NULL";

/// The ack (`a`, see [`Ack::to_json`]) of a job's first attempt that succeeded: it writes
/// no attempt row (see [`Ack::writes_attempt_row`]).
const FIRST_SUCCESS: &str = "(a.attempt = 1 AND a.status = 'succeeded')";

const CLAIM_RETURNING: &str = "jobs.id, jobs.args, jobs.attempt, jobs.max_attempts, jobs.run_at, \
     jobs.releases, jobs.backoff_base_ms, jobs.backoff_cap_ms";

/// The whole of [`exchange`] on Postgres, one statement: `$1` the acks (JSON), `$2` now,
/// `$3` the worker, `$4` the kind, `$5` the lease clock ([`LeaseNow::bind`]), `$6` how many
/// to claim, `$7` the lease. Public for the query-plan test.
///
/// The claimed rows are updated by id (`= ANY(ARRAY(…))`), which reads them through the
/// primary key: joining the pick instead let the planner hash the whole table, a
/// sequential scan per claim (13 of 36 ms of a 1,000-job claim over 20,000 rows).
#[doc(hidden)]
pub static EXCHANGE_SQL_PG: LazyLock<String> = LazyLock::new(|| {
    let lease_now_sql = lease_now_sql(Backend::Postgres, 5);
    let pick = claim_pick_sql("$4", &lease_now_sql, "$6", "FOR UPDATE SKIP LOCKED");
    format!(
        "WITH a AS (SELECT * FROM json_to_recordset($1::json) AS x({ACK_COLUMNS_PG})), \
         acked AS ( \
             UPDATE jobs SET {ACK_SET} FROM a \
             WHERE jobs.id = a.id AND jobs.attempt = a.attempt \
               AND jobs.status = 'running' AND jobs.locked_by = $3 \
             RETURNING jobs.id, a.attempt), \
         history AS ( \
             INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error) \
             SELECT a.id, a.attempt, $3, a.started_at, $2, a.outcome, a.history \
             FROM a JOIN acked ON acked.id = a.id AND acked.attempt = a.attempt \
             WHERE a.outcome IS NOT NULL AND NOT {FIRST_SUCCESS}), \
         picked AS ({pick}), \
         claimed AS ( \
             UPDATE jobs SET status = 'running', attempt = jobs.attempt + 1, locked_by = $3, \
                 lease_expires_at = {lease_now_sql} + $7, started_at = $2, wake_pending = 0 \
             WHERE jobs.id = ANY(ARRAY(SELECT id FROM picked)) \
             RETURNING {CLAIM_RETURNING}) \
         SELECT 'a', id, NULL::TEXT, attempt, NULL::INT, NULL::BIGINT, NULL::INT, NULL::BIGINT, NULL::BIGINT \
         FROM acked \
         UNION ALL SELECT 'c', * FROM claimed"
    )
});

/// Records `acks` and claims up to `claim` due jobs of `kind` for `worker`, leased for
/// `lease_ms` from `lease_now`, on `conn`: the worker's whole conversation with the database
/// in one step. On Postgres it is one statement (one round trip, one commit when `conn` is
/// not in a transaction); on SQLite a short transaction (a savepoint inside the caller's).
///
/// Each ack is matched on `(id, attempt)`, still `running` under `worker`, so a late ack of
/// an older attempt never completes a newer one that another claim started after a lease
/// expiry. The attempt row is written with its outcome in the same statement.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    conn: &mut DbConn,
    worker: &str,
    kind: &str,
    acks: &[Ack],
    claim: usize,
    now: Millis,
    lease_now: LeaseNow,
    lease_ms: Millis,
) -> Result<Exchange> {
    let backend = Backend::of(conn);
    let acks_json = serde_json::Value::Array(acks.iter().map(|a| a.to_json(now)).collect());
    let limit = i64::try_from(claim).unwrap_or(i64::MAX);
    let mut out = Exchange::default();
    match backend {
        Backend::Postgres => {
            let sql = EXCHANGE_SQL_PG.as_str();
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(acks_json.to_string())
                .bind(now)
                .bind(worker)
                .bind(kind)
                .bind(lease_now.bind())
                .bind(limit)
                .bind(lease_ms)
                .fetch_all(&mut *conn)
                .await?;
            for row in rows {
                let tag: String = row.try_get(0)?;
                if tag == "a" {
                    out.acked
                        .push((row.try_get(1)?, attempt_of(row.try_get(3)?)));
                } else {
                    out.claimed.push(claimed_from(&row, 1)?);
                }
            }
        }
        Backend::Sqlite => {
            let mut tx = conn.begin().await?;
            if !acks.is_empty() {
                // The acks as rows of bound values, a chunk per statement: read out of one
                // JSON parameter instead (json_each, then a json_extract per field), a
                // backlog of quick jobs drained ~1.3× slower.
                let rows = acks_json.as_array().map_or(&[][..], Vec::as_slice);
                // Usually every ack matches: then no row needs to come back (each one
                // would cross the driver's thread). When some do not, undo and ask which.
                let mut sp = tx.begin().await?;
                let mut n = 0;
                for chunk in rows.chunks(SQLITE_ACK_CHUNK) {
                    n += sqlite_ack_update(chunk, now, worker, "")
                        .execute(&mut *sp)
                        .await?
                        .rows_affected();
                }
                if n == acks.len() as u64 {
                    sp.commit().await?;
                    out.acked = acks.iter().map(|a| (a.id, a.attempt)).collect();
                } else {
                    sp.rollback().await?;
                    let mut updated = Vec::new();
                    for chunk in rows.chunks(SQLITE_ACK_CHUNK) {
                        updated.extend(
                            sqlite_ack_update(
                                chunk,
                                now,
                                worker,
                                " RETURNING jobs.id, jobs.attempt",
                            )
                            .fetch_all(&mut *tx)
                            .await?,
                        );
                    }
                    // SQLite's RETURNING sees only the updated row: an undone claim
                    // returns its attempt number less one.
                    for row in updated {
                        let id: i64 = row.try_get(0)?;
                        let now_attempt = attempt_of(row.try_get(1)?);
                        if let Some(a) = acks.iter().find(|a| {
                            a.id == id
                                && a.attempt - u32::from(matches!(a.end, AttemptEnd::Unclaimed))
                                    == now_attempt
                        }) {
                            out.acked.push((a.id, a.attempt));
                        }
                    }
                }
                let history: Vec<serde_json::Value> = acks
                    .iter()
                    .filter(|a| a.writes_attempt_row() && out.acked.contains(&(a.id, a.attempt)))
                    .map(|a| a.to_json(now))
                    .collect();
                if !history.is_empty() {
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error) \
                         SELECT a.id, a.attempt, $2, a.started_at, $3, a.outcome, a.history FROM ({}) AS a \
                         WHERE a.outcome IS NOT NULL",
                        sqlite_json_rows(
                            "$1",
                            &["id", "attempt", "started_at", "outcome", "history"]
                        )
                    )))
                    .bind(serde_json::Value::Array(history).to_string())
                    .bind(worker)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            if claim > 0 {
                let lease_at = lease_now.bind().unwrap_or(now);
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "UPDATE jobs SET status = 'running', attempt = attempt + 1, locked_by = $4, \
                         lease_expires_at = $2 + $5, started_at = $6, wake_pending = 0 \
                     WHERE id IN ({}) \
                     RETURNING {}",
                    claim_pick_sql("$1", "$2", "$3", ""),
                    CLAIM_RETURNING.replace("jobs.", "")
                )))
                .bind(kind)
                .bind(lease_at)
                .bind(limit)
                .bind(worker)
                .bind(lease_ms)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                for row in rows {
                    out.claimed.push(claimed_from(&row, 0)?);
                }
            }
            tx.commit().await?;
        }
    }
    out.lost = acks
        .iter()
        .map(|a| (a.id, a.attempt))
        .filter(|p| !out.acked.contains(p))
        .collect();
    // Claim order: priority, then due time (the RETURNING order is unspecified).
    out.claimed.sort_by_key(|j| (j.run_at, j.id));
    Ok(out)
}

/// Acks per statement on SQLite: 11 bound values each, under SQLite's 32,766.
const SQLITE_ACK_CHUNK: usize = 1_000;

/// The ack update of `acks` (objects of [`Ack::to_json`]) on SQLite, `returning` appended:
/// `now`, `worker` and every field of every ack are anonymous parameters, bound in the
/// order they appear. (SQLite finds the slot of a named `$N` by walking its list of names,
/// so thousands of them would cost O(N²), and sqlx numbers anonymous ones from the first,
/// so the two cannot be mixed.) `+jobs.status`: without it SQLite 3.51 may drive the join
/// from the jobs_running_lease index (its statistics often say it is nearly empty) and
/// scan the acks once per running job.
fn sqlite_ack_update<'q>(
    acks: &'q [serde_json::Value],
    now: Millis,
    worker: &'q str,
    returning: &str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let row = format!("({})", vec!["?"; ACK_FIELDS_SQLITE.len()].join(", "));
    let sql = format!(
        "WITH p(now, worker) AS (SELECT ?, ?), a({}) AS (VALUES {}) \
         UPDATE jobs SET {} FROM a \
         WHERE jobs.id = a.id AND jobs.attempt = a.attempt \
           AND +jobs.status = 'running' AND jobs.locked_by = (SELECT worker FROM p){returning}",
        ACK_FIELDS_SQLITE.join(", "),
        vec![row.as_str(); acks.len()].join(", "),
        ACK_SET.replace("$2", "(SELECT now FROM p)"),
    );
    let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now).bind(worker);
    for ack in acks {
        for field in ACK_FIELDS_SQLITE {
            query = match &ack[*field] {
                serde_json::Value::Number(n) => query.bind(n.as_i64()),
                serde_json::Value::String(text) => query.bind(text.as_str()),
                _ => query.bind(None::<i64>),
            };
        }
    }
    query
}

/// `SELECT json_extract(value, '$.f') AS f, … FROM json_each(<param>)` (SQLite).
fn sqlite_json_rows(param: &str, fields: &[&str]) -> String {
    let mut sql = String::from("SELECT ");
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "json_extract(value, '$.{f}') AS {f}");
    }
    let _ = write!(sql, " FROM json_each({param})");
    sql
}

fn attempt_of(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn claimed_from(row: &sqlx::any::AnyRow, first: usize) -> Result<ClaimedJob> {
    let max_attempts = attempt_of(row.try_get(first + 3)?).max(1);
    Ok(ClaimedJob {
        id: row.try_get(first)?,
        args: row.try_get(first + 1)?,
        attempt: attempt_of(row.try_get(first + 2)?),
        max_attempts,
        run_at: row.try_get(first + 4)?,
        releases: attempt_of(row.try_get(first + 5)?),
        retry: RetryPolicy::from_row(
            row.try_get(first + 6)?,
            row.try_get(first + 7)?,
            max_attempts,
        ),
    })
}

/// Extends, to `lease_now + lease_ms`, the leases of the attempts `worker` holds, matched on
/// `(id, attempt)`. Returns the pairs it renewed: an attempt missing from the answer has
/// lost its job (rescued after its lease ran out, or cancelled) and must stop.
pub async fn renew_leases(
    db: &Db,
    backend: Backend,
    worker: &str,
    held: &[(i64, u32)],
    lease_now: LeaseNow,
    lease_ms: Millis,
) -> Result<Vec<(i64, u32)>> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let pairs = serde_json::Value::Array(
        held.iter()
            .map(|(id, attempt)| json!({"id": id, "attempt": attempt}))
            .collect(),
    );
    let now_sql = lease_now_sql(backend, 2);
    let sql = match backend {
        Backend::Postgres => format!(
            "UPDATE jobs SET lease_expires_at = {now_sql} + $3 \
             FROM json_to_recordset($1::json) AS h(id BIGINT, attempt INT) \
             WHERE jobs.id = h.id AND jobs.attempt = h.attempt AND jobs.status = 'running' \
               AND jobs.locked_by = $4 \
             RETURNING jobs.id, jobs.attempt"
        ),
        Backend::Sqlite => format!(
            "UPDATE jobs SET lease_expires_at = {now_sql} + $3 FROM ({}) AS h \
             WHERE jobs.id = h.id AND jobs.attempt = h.attempt AND +jobs.status = 'running' \
               AND jobs.locked_by = $4 \
             RETURNING jobs.id, jobs.attempt",
            sqlite_json_rows("$1", &["id", "attempt"])
        ),
    };
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(pairs.to_string())
        .bind(lease_now.bind())
        .bind(lease_ms)
        .bind(worker)
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, attempt_of(r.try_get(1)?))))
        .collect()
}

/// Inside the caller's transaction, checks that attempt `attempt` of job `id` still holds
/// an unexpired lease under `worker`, and locks the job row until that transaction ends
/// (Postgres: a row lock; SQLite: the write lock), so no rescuer can take the job between
/// this check and the caller's commit. False: the attempt lost its job.
pub async fn fence(
    conn: &mut DbConn,
    id: i64,
    attempt: u32,
    worker: &str,
    lease_now: LeaseNow,
) -> Result<bool> {
    let backend = Backend::of(conn);
    let n = sqlx::query(AssertSqlSafe(format!(
        "UPDATE jobs SET lease_expires_at = lease_expires_at \
         WHERE id = $1 AND attempt = $2 AND locked_by = $3 AND status = 'running' \
           AND lease_expires_at > {}",
        lease_now_sql(backend, 4)
    )))
    .bind(id)
    .bind(i64::from(attempt))
    .bind(worker)
    .bind(lease_now.bind())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

// --- Rescue ----------------------------------------------------------------------------

/// A job whose worker stopped renewing its lease.
#[derive(Debug, Clone)]
pub struct ExpiredLease {
    /// Job id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// Args JSON (for the kind's discard hook).
    pub args: String,
    /// The attempt that was cut off.
    pub attempt: u32,
    /// The job's retry policy, from its row.
    pub retry: RetryPolicy,
    /// The worker that held it.
    pub locked_by: String,
}

/// Running jobs (of `kind`, or of every kind) whose lease ran out before `lease_now`, at
/// most `limit`, leaving out the ids in `except` (the caller's own, still running).
pub async fn expired_leases(
    db: &Db,
    backend: Backend,
    kind: Option<&str>,
    lease_now: LeaseNow,
    except: &[i64],
    limit: i64,
) -> Result<Vec<ExpiredLease>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, kind, args, attempt, max_attempts, backoff_base_ms, backoff_cap_ms, locked_by \
         FROM jobs WHERE status = 'running' AND lease_expires_at < {} AND ($2 IS NULL OR kind = $2) \
         ORDER BY lease_expires_at LIMIT $3",
        lease_now_sql(backend, 1)
    )))
    .bind(lease_now.bind())
    .bind(kind)
    .bind(limit + i64::try_from(except.len()).unwrap_or(0))
    .fetch_all(db)
    .await?;
    let mut out = Vec::new();
    for row in rows {
        let id: i64 = row.try_get(0)?;
        if except.contains(&id) {
            continue;
        }
        let max_attempts = attempt_of(row.try_get(4)?).max(1);
        out.push(ExpiredLease {
            id,
            kind: row.try_get(1)?,
            args: row.try_get(2)?,
            attempt: attempt_of(row.try_get(3)?),
            retry: RetryPolicy::from_row(row.try_get(5)?, row.try_get(6)?, max_attempts),
            locked_by: row.try_get(7)?,
        });
    }
    Ok(out)
}

/// Ends, on `conn` (the caller's transaction), an attempt whose lease expired: the attempt
/// counts, so the job is retried at `retry_at` or, when that was its last attempt
/// (`retry_at = None`), fails. Guarded by the lease still being expired, so a worker that
/// renewed in the meantime keeps its job, and two rescuers cannot both act. Returns true if
/// this call rescued it.
pub async fn rescue(
    conn: &mut DbConn,
    lease: &ExpiredLease,
    now: Millis,
    lease_now: LeaseNow,
    retry_at: Option<Millis>,
) -> Result<bool> {
    let backend = Backend::of(conn);
    let error = format!(
        "lease expired: worker {} stopped renewing it (crashed, killed or cut off from the database)",
        lease.locked_by
    );
    let status = match retry_at {
        Some(_) => JobState::Retrying,
        None => JobState::Failed,
    };
    let started_at: Option<Millis> = sqlx::query_scalar(AssertSqlSafe(format!(
        "UPDATE jobs SET status = $1, finished_at = $2, run_at = COALESCE($3, run_at), \
             scheduled = 1, last_error = $4, locked_by = NULL, lease_expires_at = NULL \
         WHERE id = $5 AND status = 'running' AND attempt = $6 AND lease_expires_at < {} \
         RETURNING started_at",
        lease_now_sql(backend, 7)
    )))
    .bind(status.as_str())
    .bind(status.is_final().then_some(now))
    .bind(retry_at)
    .bind(&error)
    .bind(lease.id)
    .bind(i64::from(lease.attempt))
    .bind(lease_now.bind())
    .fetch_optional(&mut *conn)
    .await?
    .flatten();
    let Some(started_at) = started_at else {
        return Ok(false);
    };
    sqlx::query(
        "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error) \
         VALUES ($1, $2, $3, $4, $5, 'lease_expired', $6)",
    )
    .bind(lease.id)
    .bind(i64::from(lease.attempt))
    .bind(&lease.locked_by)
    .bind(started_at)
    .bind(now)
    .bind(&error)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

// --- Admin -----------------------------------------------------------------------------

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

/// A job as seen by admin writes: its kind and args (for the kind's discard hook).
#[derive(Debug, Clone)]
pub struct JobRef {
    /// Id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// Args JSON.
    pub args: String,
}

/// Cancels, on `conn` (the caller's transaction), a job that is waiting (`pending` or
/// `retrying`), with an audit row naming `actor`. Returns the job, for its discard hook.
pub async fn cancel(
    conn: &mut DbConn,
    id: i64,
    actor: &crate::Actor,
    now: Millis,
) -> Result<JobRef> {
    write_first(conn, id).await?;
    let from = status_of(conn, id).await?;
    let row = sqlx::query(
        "UPDATE jobs SET status = 'cancelled', finished_at = $1 \
         WHERE id = $2 AND status IN ('pending', 'retrying') RETURNING kind, args",
    )
    .bind(now)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(Error::InvalidJobState {
            id,
            state: from,
            operation: "cancel",
            expected: "pending or retrying",
        });
    };
    crate::state_machine::record(
        conn,
        "job",
        &id.to_string(),
        from.as_str(),
        "cancelled",
        actor,
        None,
        now,
    )
    .await?;
    Ok(JobRef {
        id,
        kind: row.try_get(0)?,
        args: row.try_get(1)?,
    })
}

/// Puts a `failed` or `cancelled` job back to `pending`, due now, with a fresh set of
/// attempts; its attempt history is kept (the numbers go on from the last one, so each
/// attempt number appears once). Refused while another unfinished job holds its unique
/// key. Returns the job's kind (to wake its workers).
pub async fn retry(db: &Db, id: i64, actor: &crate::Actor, now: Millis) -> Result<String> {
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
    // A fresh set of attempts: as many more as the job had in all.
    let updated = sqlx::query_scalar::<_, String>(
        "UPDATE jobs SET status = 'pending', max_attempts = attempt + max_attempts - releases, \
             releases = 0, run_at = $1, scheduled = 0, finished_at = NULL, note = NULL \
         WHERE id = $2 AND status = $3 RETURNING kind",
    )
    .bind(now)
    .bind(id)
    .bind(from.as_str())
    .fetch_optional(&mut *tx)
    .await;
    let kind = match updated {
        Ok(Some(kind)) => kind,
        Ok(None) => {
            let state = status_of(&mut tx, id).await?;
            return Err(Error::InvalidJobState {
                id,
                state,
                operation: "retry",
                expected: "failed or cancelled",
            });
        }
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
    tx.commit().await?;
    Ok(kind)
}

/// Moves a waiting (`pending` or `retrying`) job's next run to `run_at`.
pub async fn reschedule(db: &Db, id: i64, run_at: Millis) -> Result<()> {
    let mut tx = db.begin().await?;
    write_first(&mut tx, id).await?;
    let n = sqlx::query(
        "UPDATE jobs SET run_at = $1, scheduled = 1 \
         WHERE id = $2 AND status IN ('pending', 'retrying')",
    )
    .bind(run_at)
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    waiting_updated(tx, id, n, "reschedule").await
}

/// Replaces a waiting (`pending` or `retrying`) job's args and, where given, its priority,
/// attempts in all and next run.
pub async fn update_waiting(
    db: &Db,
    id: i64,
    args: &str,
    priority: Option<i32>,
    max_attempts: Option<i64>,
    run_at: Option<Millis>,
) -> Result<()> {
    let mut tx = db.begin().await?;
    write_first(&mut tx, id).await?;
    let n = sqlx::query(
        "UPDATE jobs SET args = $1, priority = COALESCE($2, priority), \
         max_attempts = COALESCE($3, max_attempts), run_at = COALESCE($4, run_at), \
         scheduled = CASE WHEN $4 IS NULL THEN scheduled ELSE 1 END \
         WHERE id = $5 AND status IN ('pending', 'retrying')",
    )
    .bind(args)
    .bind(priority)
    .bind(max_attempts.map(|m| m.max(1)))
    .bind(run_at)
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    waiting_updated(tx, id, n, "update").await
}

/// Commits an update of a waiting job that changed `n` rows, or, when it changed none,
/// refuses `operation` with the job's state.
async fn waiting_updated(mut tx: Tx, id: i64, n: u64, operation: &'static str) -> Result<()> {
    if n == 0 {
        let state = status_of(&mut tx, id).await?;
        return Err(Error::InvalidJobState {
            id,
            state,
            operation,
            expected: "pending or retrying",
        });
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes the finished (succeeded, failed, cancelled) jobs of `kind` that ended before
/// `before`, with their attempts. Returns how many.
pub async fn vacuum(db: &Db, kind: &str, before: Millis) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM jobs WHERE kind = $1 AND status IN ('succeeded', 'failed', 'cancelled')          AND finished_at < $2",
    )
    .bind(kind)
    .bind(before)
    .execute(db)
    .await?
    .rows_affected())
}

/// The statement of [`prune_batch`]: `$1` status, `$2` finished before, `$3` batch. Public
/// for the query-plan test.
#[doc(hidden)]
pub const PRUNE_SQL: &str = "DELETE FROM jobs WHERE id IN ( \
         SELECT id FROM jobs WHERE status = $1 AND finished_at < $2 ORDER BY finished_at LIMIT $3) \
     AND status = $1";

/// Deletes up to `batch` jobs in `status` finished before `before`; their attempts go with
/// them (`ON DELETE CASCADE`). One guarded statement: a job that left `status` between the
/// pick and the delete is kept, and nothing is read before the write (no SQLite
/// `BUSY_SNAPSHOT` when a worker commits in between). Returns how many it deleted; call
/// again until it returns less than `batch`.
pub async fn prune_batch(db: &Db, status: JobState, before: Millis, batch: i64) -> Result<u64> {
    Ok(sqlx::query(PRUNE_SQL)
        .bind(status.as_str())
        .bind(before)
        .bind(batch)
        .execute(db)
        .await?
        .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_drops_nul_and_cuts_long_texts_on_a_character_boundary() {
        assert_eq!(sanitize("a\0b"), "ab");
        let long = "é".repeat(MAX_TEXT_BYTES);
        let cut = sanitize(&long);
        assert!(cut.len() <= MAX_TEXT_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn every_end_but_unclaimed_is_recorded_as_an_attempt() {
        assert_eq!(AttemptEnd::Unclaimed.outcome(), None);
        assert_eq!(
            AttemptEnd::Released { give_back: true }.outcome(),
            Some("released")
        );
        assert_eq!(
            AttemptEnd::Snoozed {
                run_at: 1,
                waiting_for: None
            }
            .status(),
            JobState::Pending
        );
    }
}
