//! The erasure receipt: what a hard delete did in each store (counts), what it skipped and
//! why, and when it started and ended. It holds no personal data: ids, counts, times and
//! error texts of the stores only (the paths of the files still to remove are kept in its
//! internal `collected` column, never served, until the files step has removed them).
//!
//! Each store's step writes its part of the report as it goes (so an unfinished erasure
//! shows where it stands) and, once done, its time column (`collected_at` and `database_at`
//! in the database step's transaction, `redis_at`, `opensearch_at`). The last write,
//! [`finish`], rewrites the report and the time columns from the steps' results and sets
//! `finished_at`. A job retried resumes from its stored step results; a later job of the
//! same user (its steps are not this job's) resumes from these columns.

use engine::{DbConn, JobContext, JobError, Millis};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// The ids of the rows the database step deleted or anonymised, read in its transaction: the
/// OpenSearch step still needs to know which documents to remove or anonymise once the rows
/// are gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    /// Tracks deleted: the private ones, and the public ones unless they are kept.
    pub delete_track_ids: Vec<i64>,
    /// Public tracks kept and credited to the anonymous artist.
    pub keep_track_ids: Vec<i64>,
    /// The user's playlists.
    pub playlist_ids: Vec<i64>,
    /// The user's data exports (their files are deleted).
    pub export_ids: Vec<i64>,
    /// Whether public tracks were kept (the user's choice when the database step ran).
    pub keep_public_tracks: bool,
}

/// The `collected` column: the ids, and the files the database step found to remove, until
/// the files step has removed them (`None` then, and in receipts of older releases, whose
/// database step removed the files itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CollectedColumn {
    #[serde(flatten)]
    pub(crate) ids: Collected,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) files_to_remove: Option<super::files::FileList>,
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not done yet (or failed; the job retries it).
    #[default]
    Pending,
    /// Done.
    Done,
    /// Not run, on purpose: `reason` says why.
    Skipped,
}

/// The database step: rows anonymised and deleted, files removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseReport {
    /// Step status.
    pub status: StepStatus,
    /// `users` rows whose e-mail, username and display name were cleared (1).
    pub users_anonymised: u64,
    /// `user_profiles` rows whose fields were cleared.
    pub profiles_anonymised: u64,
    /// Messages sent or received, deleted.
    pub messages_deleted: u64,
    /// The user's plays, deleted.
    pub playback_history_deleted: u64,
    /// Other users' plays of deleted tracks, detached from the track.
    pub other_plays_detached: u64,
    /// The user's playlists, deleted.
    pub playlists_deleted: u64,
    /// Items of those playlists, deleted.
    pub playlist_items_deleted: u64,
    /// Items of other users' playlists pointing at deleted tracks, deleted.
    pub other_playlist_items_deleted: u64,
    /// Private tracks, deleted.
    pub private_tracks_deleted: u64,
    /// Public tracks, deleted (when not kept).
    pub public_tracks_deleted: u64,
    /// Public tracks kept, credited to the anonymous artist.
    pub public_tracks_anonymised: u64,
    /// Files of deleted tracks (audio, cover, thumbnails) and the avatar removed from
    /// `MEDIA_ROOT`.
    pub media_files_deleted: u64,
    /// Symbolic links under `MEDIA_ROOT` in the place of those files, removed as links;
    /// their targets (outside the root, or someone else's) were left alone.
    #[serde(default)]
    pub media_links_removed: u64,
    /// Paths of those files that were not deleted because they lead outside `MEDIA_ROOT`
    /// through a symbolic link, or name a directory (the paths are in the job's log).
    #[serde(default)]
    pub media_paths_refused: u64,
    /// Export rows deleted.
    pub exports_deleted: u64,
    /// Export ZIPs (finished or partial) removed from `EXPORT_DIR`.
    pub export_files_deleted: u64,
    /// `.eml` files of the user's e-mails removed from `MAIL_OUTBOX_DIR` (written when
    /// `SMTP_URL` is unset).
    #[serde(default)]
    pub outbox_files_deleted: u64,
    /// Stored Stripe events of the user's payments (linked to their orders, or about a
    /// payment intent or charge of theirs, whatever the event's outcome) whose payload
    /// (which, stored before migration 0015, can carry the buyer's e-mail, name and
    /// address) was replaced by this erasure; the event row, its id and its outcome stay,
    /// so a redelivery is still recognised.
    #[serde(default)]
    pub webhook_payloads_erased: u64,
    /// `jobs` rows (any kind) whose args, last error or note quoted the user's e-mail
    /// address, now replaced by `[erased]` (an SMTP refusal quotes the recipient).
    #[serde(default)]
    pub job_texts_scrubbed: u64,
    /// `job_attempts` rows whose error quoted the user's e-mail address, likewise.
    #[serde(default)]
    pub job_attempt_errors_scrubbed: u64,
}

/// The Redis step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisReport {
    /// Step status.
    pub status: StepStatus,
    /// Keys `user:{id}:*` unlinked (over every attempt).
    pub keys_deleted: u64,
    /// SCAN pages read by the attempt that finished the step.
    pub scan_pages: u64,
    /// Why it was skipped.
    pub reason: Option<String>,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
}

/// One request kind of the search-index step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexReport {
    /// Status of this part.
    pub status: StepStatus,
    /// The index.
    pub index: String,
    /// Documents asked for.
    pub requested: u64,
    /// Documents the index reports deleted or updated.
    pub affected: u64,
    /// e.g. "already gone", "nothing to send".
    pub note: Option<String>,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
}

/// The OpenSearch step: one part per request kind, each tried even when another fails,
/// and each retried alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSearchReport {
    /// Step status (done once every part is).
    pub status: StepStatus,
    /// Why it was skipped.
    pub reason: Option<String>,
    /// The user's document.
    pub user_document: IndexReport,
    /// Deleted tracks' documents.
    pub tracks_deleted: IndexReport,
    /// The user's playlists' documents.
    pub playlists_deleted: IndexReport,
    /// Kept public tracks' documents, credited to the anonymous artist.
    pub tracks_anonymised: IndexReport,
}

/// Why the records of [`KeptRecords`] outlive the erasure.
pub const KEPT_REASON: &str = "accounting records of sales and payouts, kept as bookkeeping law \
    requires (GDPR Art. 17(3)(b)); they hold ids, amounts, dates and Stripe ids, no name, \
    e-mail or address; stored Stripe events are kept, their payload erased, until \
    WEBHOOK_EVENT_RETENTION";

/// The records an erasure keeps on purpose, counted when the database step ran: the
/// accounting of the user's purchases and sales. Stripe holds the same payments, and a
/// refund after the erasure must still reverse a seller's payout. Identity goes (the
/// account's e-mail, username and display name; Stripe payloads); these rows only point
/// at the account's id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRecords {
    /// Why they are kept ([`KEPT_REASON`]).
    pub reason: String,
    /// `orders` the user bought.
    pub orders: u64,
    /// `order_items` of those orders.
    pub order_items: u64,
    /// `payment_refunds` of those orders.
    pub payment_refunds: u64,
    /// `seller_transfers`: payouts to the user as a seller.
    pub seller_transfers: u64,
    /// `seller_accounts`: the user's Stripe connected account (0 or 1), where payouts and
    /// their reversals go.
    pub seller_accounts: u64,
    /// `webhook_events` about the user's payments: the rows stay (a redelivery is still
    /// recognised) with their payload erased, until `WEBHOOK_EVENT_RETENTION`.
    pub webhook_events: u64,
}

/// Everything a receipt reports, per store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The relational database (and the files it points at).
    pub database: DatabaseReport,
    /// Redis.
    pub redis: RedisReport,
    /// OpenSearch.
    pub opensearch: OpenSearchReport,
    /// What the erasure keeps, and why (receipts written before it have none).
    #[serde(default)]
    pub kept: KeptRecords,
}

/// An erasure receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The erased user's id.
    pub user_id: i64,
    /// The `hard_delete` job that wrote it last.
    pub job_id: Option<i64>,
    /// When the erasure started.
    pub started_at: Millis,
    /// When the ids were collected.
    pub collected_at: Option<Millis>,
    /// When the database step was done.
    pub database_at: Option<Millis>,
    /// When the Redis step was done or skipped.
    pub redis_at: Option<Millis>,
    /// When the OpenSearch step was done or skipped.
    pub opensearch_at: Option<Millis>,
    /// When every step was done or skipped: the erasure is complete.
    pub finished_at: Option<Millis>,
    /// Per store.
    pub report: Report,
    #[serde(skip)]
    pub(crate) collected: Option<CollectedColumn>,
}

/// A receipt's step column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Collected,
    Database,
    Redis,
    OpenSearch,
}

impl Step {
    fn column(self) -> &'static str {
        match self {
            Self::Collected => "collected_at",
            Self::Database => "database_at",
            Self::Redis => "redis_at",
            Self::OpenSearch => "opensearch_at",
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// The columns [`from_row`] reads, in its order, for a query joining `erasure_receipts`
/// as `r`.
pub(crate) const JOINED_COLUMNS: &str = "r.job_id, r.started_at, r.collected_at, \
     r.database_at, r.redis_at, r.opensearch_at, r.finished_at, r.report, r.collected";

/// The receipt of `user_id` in `row`, read from [`JOINED_COLUMNS`] starting at column
/// `first`; `None` when they are NULL (a LEFT JOIN without a receipt).
pub(crate) fn from_row(
    user_id: i64,
    row: &sqlx::any::AnyRow,
    first: usize,
) -> Result<Option<Receipt>, sqlx::Error> {
    let Some(started_at) = row.try_get::<Option<Millis>, _>(first + 1)? else {
        return Ok(None);
    };
    let report: String = row.try_get(first + 7)?;
    let collected: Option<String> = row.try_get(first + 8)?;
    Ok(Some(Receipt {
        user_id,
        job_id: row.try_get(first)?,
        started_at,
        collected_at: row.try_get(first + 2)?,
        database_at: row.try_get(first + 3)?,
        redis_at: row.try_get(first + 4)?,
        opensearch_at: row.try_get(first + 5)?,
        finished_at: row.try_get(first + 6)?,
        report: decode(&report)?,
        collected: collected.as_deref().map(decode).transpose()?,
    }))
}

/// The receipt of `user_id`, if its erasure started.
pub async fn load(conn: &mut DbConn, user_id: i64) -> Result<Option<Receipt>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOINED_COLUMNS} FROM erasure_receipts r WHERE r.user_id = $1"
    )))
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    row.map_or(Ok(None), |r| from_row(user_id, &r, 0))
}

/// The receipt of `user_id`, which the handler opened before its steps.
pub(crate) async fn load_open(ctx: &JobContext, user_id: i64) -> Result<Receipt, JobError> {
    let mut conn = ctx.db().acquire().await?;
    load(&mut conn, user_id).await?.ok_or_else(|| {
        JobError::transient(format!("the erasure receipt of user {user_id} is missing"))
    })
}

/// Creates the receipt of `user_id` unless it exists; returns it.
pub(crate) async fn open(
    conn: &mut DbConn,
    user_id: i64,
    job_id: i64,
    now: Millis,
) -> Result<Receipt, sqlx::Error> {
    let report = serde_json::to_string(&Report::default()).expect("a report encodes");
    sqlx::query(
        "INSERT INTO erasure_receipts (user_id, job_id, started_at, report, updated_at) \
         VALUES ($1, $2, $3, $4, $3) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(job_id)
    .bind(now)
    .bind(report)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE erasure_receipts SET job_id = $1 WHERE user_id = $2")
        .bind(job_id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    load(conn, user_id)
        .await?
        .ok_or_else(|| sqlx::Error::RowNotFound)
}

/// Saves `report` (and `collected`, when given); stamps the columns of `done` with `now`.
pub(crate) async fn save(
    conn: &mut DbConn,
    user_id: i64,
    report: &Report,
    collected: Option<&CollectedColumn>,
    done: &[Step],
    now: Millis,
) -> Result<(), sqlx::Error> {
    let mut sql = String::from("UPDATE erasure_receipts SET report = $1, updated_at = $2");
    if collected.is_some() {
        sql.push_str(", collected = $4");
    }
    for step in done {
        sql.push_str(&format!(", {} = $2", step.column()));
    }
    sql.push_str(" WHERE user_id = $3");
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(serde_json::to_string(report).expect("a report encodes"))
        .bind(now)
        .bind(user_id);
    if let Some(c) = collected {
        q = q.bind(serde_json::to_string(c).expect("ids encode"));
    }
    q.execute(conn).await?;
    Ok(())
}

/// When each step was done (or skipped): the receipt's time columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StepTimes {
    pub(crate) collected_at: Millis,
    pub(crate) database_at: Millis,
    pub(crate) redis_at: Millis,
    pub(crate) opensearch_at: Millis,
}

/// Closes the receipt: `report` and `times` (built from the steps' results) replace what
/// the steps wrote as they went, and `finished_at` is set.
pub(crate) async fn finish(
    conn: &mut DbConn,
    user_id: i64,
    report: &Report,
    times: StepTimes,
    now: Millis,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE erasure_receipts SET report = $1, collected_at = $2, database_at = $3, \
         redis_at = $4, opensearch_at = $5, finished_at = $6, updated_at = $6 \
         WHERE user_id = $7",
    )
    .bind(serde_json::to_string(report).expect("a report encodes"))
    .bind(times.collected_at)
    .bind(times.database_at)
    .bind(times.redis_at)
    .bind(times.opensearch_at)
    .bind(now)
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(())
}
