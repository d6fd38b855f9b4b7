//! `hard_delete`: erases one account past its recovery deadline, in every store, and
//! writes the erasure receipt that proves it.
//!
//! Enqueued by the daily `hard_delete` schedule (kind `hard_delete_scan`, see [`scan`]),
//! one unfinished job per user (unique key `hard_delete:user:{id}`). Steps, each recorded on
//! the receipt when done, so that a retry resumes the unfinished ones only:
//!
//! 1. **collect** the ids of the user's tracks, playlists and exports, before anything changes;
//! 2. **database** ([`database`]): files (media, export ZIPs, outbox e-mails) removed
//!    ([`files`]: symbolic links resolved first, nothing outside its root deleted),
//!    identity and profile cleared, messages,
//!    plays, playlists and private tracks deleted, public tracks deleted or kept under the
//!    anonymous artist, status `erased` — one transaction;
//! 3. **Redis** ([`redis`]): `SCAN MATCH user:{id}:*` + `UNLINK`, page by page;
//! 4. **OpenSearch** ([`opensearch`]): the user document, the deleted tracks, the playlists,
//!    the kept tracks' credit — each part tried even when another fails, each retried alone;
//! 5. the **receipt** is closed (`finished_at`) once every step is done or skipped.
//!
//! Steps 3 and 4 are both tried in an attempt even if one fails; the attempt then fails
//! (transient) and the job retries what is left. With `REDIS_URL` or `OPENSEARCH_URL`
//! unset, that step is skipped and the receipt says so ("skipped: Redis not configured").

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

use self::opensearch::{DocDeleted, SearchEraser, SearchIndices};
use self::receipt::{IndexReport, Report, Step, StepStatus};
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
    let row = sqlx::query(
        "SELECT status, recovery_deadline, keep_public_tracks FROM users WHERE id = $1",
    )
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
    let keep_public = row.try_get::<i64, _>(2)? != 0;
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
    let mut receipt = receipt::open(&mut conn, user_id, ctx.job_id, now).await?;
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

    // 1. Collect.
    let mut collected = match receipt.collected.take() {
        Some(c) if receipt.collected_at.is_some() => c,
        _ => {
            let c = database::collect(&mut conn, user_id, keep_public).await?;
            receipt::save(
                &mut conn,
                user_id,
                &receipt.report,
                Some(&c),
                Some(Step::Collected),
                ctx.now_ms(),
            )
            .await?;
            c
        }
    };
    drop(conn);
    let mut report = receipt.report;

    // 2. Database.
    if receipt.database_at.is_none() {
        database::erase(
            &ctx,
            &erasure.settings,
            user_id,
            &mut collected,
            &mut report,
        )
        .await?;
        tracing::info!(user_id, "erasure: database step done");
    }

    // 3 and 4: each store is tried even if the other fails.
    let mut failures = Vec::new();
    if receipt.redis_at.is_none()
        && let Err(e) = redis_step(&ctx, erasure, user_id, &mut report).await
    {
        failures.push(e);
    }
    if receipt.opensearch_at.is_none()
        && let Err(e) = opensearch_step(&ctx, erasure, user_id, &collected, &mut report).await
    {
        failures.push(e);
    }
    if !failures.is_empty() {
        return Err(JobError::Transient(format!(
            "erasure of user {user_id} unfinished: {}",
            failures.join("; ")
        )));
    }

    // 5. Close the receipt.
    let mut conn = ctx.db().acquire().await?;
    receipt::save(
        &mut conn,
        user_id,
        &report,
        None,
        Some(Step::Finished),
        ctx.now_ms(),
    )
    .await?;
    tracing::info!(user_id, "erasure complete");
    Ok(Outcome::Succeeded)
}

async fn save_step(
    ctx: &JobContext,
    user_id: i64,
    report: &Report,
    done: Option<Step>,
) -> Result<(), String> {
    let mut conn = ctx.db().acquire().await.map_err(|e| e.to_string())?;
    receipt::save(&mut conn, user_id, report, None, done, ctx.now_ms())
        .await
        .map_err(|e| format!("saving the receipt: {e}"))
}

/// Step 3. `Err` is the reason the step stays unfinished.
async fn redis_step(
    ctx: &JobContext,
    erasure: &Erasure,
    user_id: i64,
    report: &mut Report,
) -> Result<(), String> {
    let r = &mut report.redis;
    let Some(redis) = &erasure.redis else {
        r.status = StepStatus::Skipped;
        r.reason = Some(REDIS_SKIPPED.to_owned());
        tracing::info!(user_id, "erasure: {REDIS_SKIPPED}");
        return save_step(ctx, user_id, report, Some(Step::Redis)).await;
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
            save_step(ctx, user_id, report, Some(Step::Redis)).await
        }
        Err(e) => {
            r.keys_deleted += e.swept.keys_deleted;
            r.last_error = Some(e.error.clone());
            let saved = save_step(ctx, user_id, report, None).await;
            tracing::warn!(user_id, error = %e.error, "erasure: Redis step failed; will retry");
            saved.and(Err(format!("Redis: {}", e.error)))
        }
    }
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

/// Step 4. `Err` lists the parts that stay unfinished.
async fn opensearch_step(
    ctx: &JobContext,
    erasure: &Erasure,
    user_id: i64,
    collected: &receipt::Collected,
    report: &mut Report,
) -> Result<(), String> {
    let os = &mut report.opensearch;
    let search = match &erasure.search {
        None => {
            os.status = StepStatus::Skipped;
            os.reason = Some(OPENSEARCH_SKIPPED.to_owned());
            tracing::info!(user_id, "erasure: {OPENSEARCH_SKIPPED}");
            return save_step(ctx, user_id, report, Some(Step::OpenSearch)).await;
        }
        Some(Err(e)) => return Err(format!("OpenSearch: OPENSEARCH_URL cannot be used: {e}")),
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

    let done = errors.is_empty();
    if done {
        os.status = StepStatus::Done;
        tracing::info!(user_id, "erasure: OpenSearch step done");
    } else {
        tracing::warn!(user_id, errors = %errors.join("; "), "erasure: OpenSearch step unfinished; will retry");
    }
    save_step(ctx, user_id, report, done.then_some(Step::OpenSearch)).await?;
    if done {
        Ok(())
    } else {
        Err(format!("OpenSearch: {}", errors.join("; ")))
    }
}
