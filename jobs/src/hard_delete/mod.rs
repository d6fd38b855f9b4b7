//! `hard_delete`: erases one account past its recovery deadline, in every store, and
//! writes the erasure receipt that proves it.
//!
//! Enqueued by the daily `hard_delete` schedule (kind `hard_delete_scan`, see [`scan`]),
//! one unfinished job per user (unique key `hard_delete:user:{id}`). One durable step per
//! store (`ctx.step`, see `engine::steps`), called in this order on every attempt:
//!
//! 1. **`database`** ([`database`], `ctx.step_tx`): identity and profile cleared, messages,
//!    plays, playlists and private tracks deleted, public tracks deleted or kept under the
//!    anonymous artist, status `erased`, and on the receipt the ids of what went and the
//!    files those rows named — one transaction, which also stores the step's result;
//! 2. **`files`** ([`files`]): those files (media, export ZIPs, outbox e-mails) removed,
//!    once no row points at them (symbolic links resolved first, nothing outside its root
//!    deleted);
//! 3. **`redis`** ([`redis`]): `SCAN MATCH user:{id}:*` + `UNLINK`, page by page;
//! 4. **`opensearch`** ([`opensearch`]): the user document, the deleted tracks, the
//!    playlists, the kept tracks' credit — each part tried even when another fails, each
//!    retried alone;
//!
//! then the **receipt** is closed: its report and time columns rebuilt from the four
//! steps' results, `finished_at` set.
//!
//! A finished step's result is stored with the job: a retry (or another worker after a
//! crash) gets it back without running the step, and resumes at the first unfinished one.
//! Each step also writes its part of the receipt as it goes, so an unfinished erasure shows
//! where it stands, and so that a *later job* of the same user (the scan enqueues one when
//! a job ended unfinished; it has no steps of its own yet) resumes from the receipt: each
//! step first looks there, and gives back what it finds done. Parts of an unfinished step
//! (Redis keys already unlinked, OpenSearch requests already answered) are on the receipt
//! too, so a retried step does only what is left.
//!
//! Redis and OpenSearch are both tried in an attempt even if one fails; the attempt then
//! fails (transient) and the job retries what is left. When the `redis` step fails, the
//! OpenSearch work runs outside its step: a step called after a failed one would take the
//! failed one's place in the job's step sequence, and the retry, asking for `redis` there,
//! would find `opensearch` and fail the job as not deterministic. That work is on the
//! receipt, so the `opensearch` step, on the retry, finds it done and sends nothing again.
//! With `REDIS_URL` or `OPENSEARCH_URL` unset, that step is skipped and the receipt says so
//! ("skipped: Redis not configured").

pub mod database;
pub mod files;
pub mod opensearch;
pub mod receipt;
pub mod redis;
pub mod scan;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use engine::{Job, JobContext, JobError, JobPolicy, Millis, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use self::database::DatabaseDone;
use self::opensearch::{DocDeleted, SearchEraser, SearchIndices};
use self::receipt::{
    Collected, IndexReport, OpenSearchReport, RedisReport, Report, Step, StepStatus, StepTimes,
};
use self::redis::RedisEraser;
use crate::users::UserStatus;

/// The receipt's reason when `REDIS_URL` is unset.
pub const REDIS_SKIPPED: &str = "skipped: Redis not configured";
/// The receipt's reason when `OPENSEARCH_URL` is unset.
pub const OPENSEARCH_SKIPPED: &str = "skipped: OpenSearch not configured";
/// The credit of public tracks kept after their owner's erasure.
pub const ANONYMOUS_ARTIST: &str = "Anonymous artist";

/// Args: the account to erase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardDelete {
    /// `users.id`.
    pub user_id: i64,
}

impl Job for HardDelete {
    const KIND: &'static str = "hard_delete";
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(30), Duration::from_secs(3600), 12),
        timeout: Duration::from_secs(1800),
        concurrency: 2,
        priority: 5,
    };

    fn unique_key(&self) -> Option<String> {
        Some(unique_key(self.user_id))
    }
}

/// The unique key of user `user_id`'s hard delete.
pub fn unique_key(user_id: i64) -> String {
    format!("hard_delete:user:{user_id}")
}

/// Where the erasure looks.
#[derive(Debug, Clone)]
pub struct ErasureSettings {
    /// `MEDIA_ROOT`: track files, covers, thumbnails, avatars.
    pub media_root: PathBuf,
    /// `EXPORT_DIR`: the user's export ZIPs.
    pub export_dir: PathBuf,
    /// `MAIL_OUTBOX_DIR`: the `.eml` files written for the user without `SMTP_URL`.
    pub mail_outbox_dir: PathBuf,
    /// `REDIS_URL`; unset: the Redis step is skipped.
    pub redis_url: Option<String>,
    /// `OPENSEARCH_URL`; unset: the OpenSearch step is skipped.
    pub opensearch_url: Option<String>,
    /// `OPENSEARCH_USERS_INDEX`, `OPENSEARCH_TRACKS_INDEX`, `OPENSEARCH_PLAYLISTS_INDEX`.
    pub indices: SearchIndices,
    /// The credit of kept public tracks.
    pub anonymous_artist: String,
}

impl ErasureSettings {
    /// No Redis, no OpenSearch, default index names.
    pub fn new(
        media_root: impl Into<PathBuf>,
        export_dir: impl Into<PathBuf>,
        mail_outbox_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            media_root: media_root.into(),
            export_dir: export_dir.into(),
            mail_outbox_dir: mail_outbox_dir.into(),
            redis_url: None,
            opensearch_url: None,
            indices: SearchIndices::default(),
            anonymous_artist: ANONYMOUS_ARTIST.to_owned(),
        }
    }
}

/// The erasure's settings and its clients (built once per process).
pub struct Erasure {
    /// Settings.
    pub settings: ErasureSettings,
    redis: Option<RedisEraser>,
    search: Option<Result<SearchEraser, String>>,
}

impl Erasure {
    /// Clients for the configured stores (Redis connects on first use).
    pub fn new(settings: ErasureSettings) -> Arc<Self> {
        let redis = settings.redis_url.as_deref().map(RedisEraser::new);
        let search = settings
            .opensearch_url
            .as_deref()
            .map(|url| SearchEraser::new(url, settings.indices.clone()));
        Arc::new(Self {
            settings,
            redis,
            search,
        })
    }
}

/// Runs (or resumes) one erasure.
pub async fn handle(
    args: HardDelete,
    ctx: JobContext,
    erasure: &Erasure,
) -> Result<Outcome, JobError> {
    let user_id = args.user_id;
    let now = ctx.now_ms();
    let row = sqlx::query("SELECT status, recovery_deadline FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(ctx.db())
        .await?;
    let Some(row) = row else {
        return Ok(Outcome::Skipped {
            reason: format!("user {user_id} does not exist"),
        });
    };
    let status: String = row.try_get(0)?;
    let deadline: Option<Millis> = row.try_get(1)?;
    match UserStatus::parse(&status) {
        Some(UserStatus::DeletionRequested) => {
            if deadline.is_none_or(|d| now < d) {
                return Ok(Outcome::Skipped {
                    reason: format!(
                        "user {user_id}'s recovery period is not over (deadline {deadline:?})"
                    ),
                });
            }
        }
        Some(UserStatus::Erased) => {}
        Some(UserStatus::Active) => {
            return Ok(Outcome::Skipped {
                reason: format!("user {user_id} cancelled the deletion; the account is active"),
            });
        }
        None => {
            return Err(JobError::permanent(format!(
                "unknown user status {status:?}"
            )));
        }
    }

    let mut conn = ctx.db().acquire().await?;
    let receipt = receipt::open(&mut conn, user_id, ctx.job_id, now).await?;
    drop(conn);
    if receipt.finished_at.is_some() {
        return Ok(Outcome::Skipped {
            reason: format!("user {user_id} is already erased (receipt complete)"),
        });
    }
    if UserStatus::parse(&status) == Some(UserStatus::Erased) && receipt.database_at.is_none() {
        return Err(JobError::permanent(format!(
            "user {user_id} is erased but its receipt has no database step: erased by other means"
        )));
    }

    // 1 and 2: a failure stops the attempt.
    let settings = &erasure.settings;
    let db: DatabaseDone = ctx
        .step_tx("database", async |tx| {
            database::erase(tx, &ctx, settings, user_id).await
        })
        .await?;
    let files = ctx
        .step("files", async || {
            files::remove(&ctx, settings, user_id).await
        })
        .await?;

    // 3 and 4: each store is tried even if the other fails; the OpenSearch work runs
    // outside its step after a failed `redis` step (see the module doc).
    let redis = store_failure(
        ctx.step("redis", async || redis_step(&ctx, erasure, user_id).await)
            .await,
    )?;
    let search = async || opensearch_step(&ctx, erasure, user_id, &db.collected).await;
    let opensearch = store_failure(match redis {
        Ok(_) => ctx.step("opensearch", search).await,
        Err(_) => search().await,
    })?;
    let (redis, opensearch) = match (redis, opensearch) {
        (Ok(r), Ok(o)) => (r, o),
        (r, o) => {
            let failures: Vec<String> = [r.err(), o.err()].into_iter().flatten().collect();
            return Err(JobError::Transient(format!(
                "erasure of user {user_id} unfinished: {}",
                failures.join("; ")
            )));
        }
    };

    // 5. Close the receipt, from the steps' results.
    let mut database = db.report;
    files.write_to(&mut database);
    let report = Report {
        database,
        redis: redis.report,
        opensearch: opensearch.report,
        kept: db.kept,
    };
    let times = StepTimes {
        collected_at: db.collected_at,
        database_at: db.at,
        redis_at: redis.at,
        opensearch_at: opensearch.at,
    };
    let mut conn = ctx.db().acquire().await?;
    receipt::finish(&mut conn, user_id, &report, times, ctx.now_ms()).await?;
    tracing::info!(user_id, "erasure complete");
    Ok(Outcome::Succeeded)
}

/// A store's step result: its part of the report, and when it was done or skipped (its
/// receipt column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoreDone<R> {
    /// `redis_at` or `opensearch_at`.
    pub(crate) at: Millis,
    /// The store's part of the report.
    pub(crate) report: R,
}

/// A store step's outcome: `Err` with the reason it stays unfinished when the store failed
/// (transient: the other store is still tried); any other error stops the attempt.
fn store_failure<T>(outcome: Result<T, JobError>) -> Result<Result<T, String>, JobError> {
    match outcome {
        Ok(done) => Ok(Ok(done)),
        Err(JobError::Transient(reason)) => Ok(Err(reason)),
        Err(e) => Err(e),
    }
}

/// Saves the progress of an unfinished store step on the receipt (`report`, the step's part
/// changed); `Err` says why it could not.
async fn save_progress(ctx: &JobContext, user_id: i64, report: &Report) -> Result<(), String> {
    let mut conn = ctx.db().acquire().await.map_err(|e| e.to_string())?;
    receipt::save(&mut conn, user_id, report, None, &[], ctx.now_ms())
        .await
        .map_err(|e| format!("saving the receipt: {e}"))
}

/// Step 3, `redis`. A receipt whose `redis_at` is set gives back what it records; a
/// transient `Err` is the reason the step stays unfinished (its progress is saved).
async fn redis_step(
    ctx: &JobContext,
    erasure: &Erasure,
    user_id: i64,
) -> Result<StoreDone<RedisReport>, JobError> {
    let mut receipt = receipt::load_open(ctx, user_id).await?;
    if let Some(at) = receipt.redis_at {
        return Ok(StoreDone {
            at,
            report: receipt.report.redis,
        });
    }
    let report = &mut receipt.report;
    let r = &mut report.redis;
    let Some(redis) = &erasure.redis else {
        r.status = StepStatus::Skipped;
        r.reason = Some(REDIS_SKIPPED.to_owned());
        tracing::info!(user_id, "erasure: {REDIS_SKIPPED}");
        return finished(ctx, user_id, report, Step::Redis, |r| r.redis.clone()).await;
    };
    match redis.erase_user(user_id).await {
        Ok(swept) => {
            r.status = StepStatus::Done;
            r.keys_deleted += swept.keys_deleted;
            r.scan_pages = swept.pages;
            r.last_error = None;
            tracing::info!(
                user_id,
                keys = swept.keys_deleted,
                pages = swept.pages,
                "erasure: Redis step done"
            );
            finished(ctx, user_id, report, Step::Redis, |r| r.redis.clone()).await
        }
        Err(e) => {
            r.keys_deleted += e.swept.keys_deleted;
            r.last_error = Some(e.error.clone());
            tracing::warn!(user_id, error = %e.error, "erasure: Redis step failed; will retry");
            let reason = match save_progress(ctx, user_id, report).await {
                Ok(()) => format!("Redis: {}", e.error),
                Err(saving) => saving,
            };
            Err(JobError::Transient(reason))
        }
    }
}

/// Saves `report` with `step`'s column stamped now; returns the step's result (`part` of
/// the report).
async fn finished<R>(
    ctx: &JobContext,
    user_id: i64,
    report: &Report,
    step: Step,
    part: impl FnOnce(&Report) -> R,
) -> Result<StoreDone<R>, JobError> {
    let at = ctx.now_ms();
    let mut conn = ctx.db().acquire().await?;
    receipt::save(&mut conn, user_id, report, None, &[step], at).await?;
    Ok(StoreDone {
        at,
        report: part(report),
    })
}

fn part_done(
    part: &mut IndexReport,
    index: &str,
    requested: usize,
    affected: u64,
    note: Option<String>,
) {
    part.status = StepStatus::Done;
    part.index = index.to_owned();
    part.requested = requested as u64;
    part.affected = affected;
    part.note = note;
    part.last_error = None;
}

fn part_failed(part: &mut IndexReport, index: &str, requested: usize, error: &str) -> String {
    part.index = index.to_owned();
    part.requested = requested as u64;
    part.last_error = Some(error.to_owned());
    error.to_owned()
}

/// Step 4, `opensearch`. A receipt whose `opensearch_at` is set gives back what it records;
/// each part the receipt shows done is not sent again; a transient `Err` lists the parts
/// that stay unfinished (their progress is saved).
async fn opensearch_step(
    ctx: &JobContext,
    erasure: &Erasure,
    user_id: i64,
    collected: &Collected,
) -> Result<StoreDone<OpenSearchReport>, JobError> {
    let mut receipt = receipt::load_open(ctx, user_id).await?;
    if let Some(at) = receipt.opensearch_at {
        return Ok(StoreDone {
            at,
            report: receipt.report.opensearch,
        });
    }
    let report = &mut receipt.report;
    let os = &mut report.opensearch;
    let search = match &erasure.search {
        None => {
            os.status = StepStatus::Skipped;
            os.reason = Some(OPENSEARCH_SKIPPED.to_owned());
            tracing::info!(user_id, "erasure: {OPENSEARCH_SKIPPED}");
            return finished(ctx, user_id, report, Step::OpenSearch, |r| {
                r.opensearch.clone()
            })
            .await;
        }
        Some(Err(e)) => {
            return Err(JobError::Transient(format!(
                "OpenSearch: OPENSEARCH_URL cannot be used: {e}"
            )));
        }
        Some(Ok(s)) => s,
    };
    let idx = &search.indices;
    let mut errors = Vec::new();

    if os.user_document.status != StepStatus::Done {
        match search.delete_user_doc(user_id).await {
            Ok(found) => {
                let note = match found {
                    DocDeleted::Deleted => None,
                    DocDeleted::AlreadyGone => Some("already gone (404)".to_owned()),
                };
                let affected = u64::from(found == DocDeleted::Deleted);
                part_done(&mut os.user_document, &idx.users, 1, affected, note);
            }
            Err(e) => errors.push(part_failed(&mut os.user_document, &idx.users, 1, &e)),
        }
    }
    for (part, index, ids) in [
        (
            &mut os.tracks_deleted,
            &idx.tracks,
            &collected.delete_track_ids,
        ),
        (
            &mut os.playlists_deleted,
            &idx.playlists,
            &collected.playlist_ids,
        ),
    ] {
        if part.status == StepStatus::Done {
            continue;
        }
        if ids.is_empty() {
            part_done(part, index, 0, 0, Some("nothing to send".to_owned()));
            continue;
        }
        match search.delete_ids(index, ids).await {
            Ok(n) => part_done(part, index, ids.len(), n, None),
            Err(e) => errors.push(part_failed(part, index, ids.len(), &e)),
        }
    }
    if os.tracks_anonymised.status != StepStatus::Done {
        let ids = &collected.keep_track_ids;
        if ids.is_empty() {
            part_done(
                &mut os.tracks_anonymised,
                &idx.tracks,
                0,
                0,
                Some("nothing to send".to_owned()),
            );
        } else {
            match search
                .anonymise_tracks(ids, &erasure.settings.anonymous_artist)
                .await
            {
                Ok(n) => part_done(&mut os.tracks_anonymised, &idx.tracks, ids.len(), n, None),
                Err(e) => errors.push(part_failed(
                    &mut os.tracks_anonymised,
                    &idx.tracks,
                    ids.len(),
                    &e,
                )),
            }
        }
    }

    if errors.is_empty() {
        os.status = StepStatus::Done;
        tracing::info!(user_id, "erasure: OpenSearch step done");
        return finished(ctx, user_id, report, Step::OpenSearch, |r| {
            r.opensearch.clone()
        })
        .await;
    }
    tracing::warn!(user_id, errors = %errors.join("; "), "erasure: OpenSearch step unfinished; will retry");
    let reason = match save_progress(ctx, user_id, report).await {
        Ok(()) => format!("OpenSearch: {}", errors.join("; ")),
        Err(saving) => saving,
    };
    Err(JobError::Transient(reason))
}
