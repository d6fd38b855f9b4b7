//! `/v1/users/{user_id}/deletion`: account deletion, restore, erasure receipt; and
//! `/v1/deletions`: every account with a pending or finished deletion.
//!
//! `POST` asks for the deletion (`active → deletion_requested`, deadline = now +
//! `ACCOUNT_RECOVERY_DAYS`), `DELETE` restores the account before the deadline, `GET` reads
//! where it stands. The erasure itself is the `hard_delete` job, enqueued by the daily
//! `hard_delete` schedule once the deadline has passed; its receipt is in the `GET` answer.

use engine::Actor;
use jobs::hard_delete::receipt::{
    DatabaseReport, IndexReport, KeptRecords, OpenSearchReport, Receipt, RedisReport, StepStatus,
};
use jobs::users::{self, DeletionError, DeletionStatus, UserStatus};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::{ApiTags, page};
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::ApiError;
use crate::state::ApiState;

/// What to do with the user's public tracks on erasure.
#[derive(Debug, Clone, Object)]
pub struct DeletionRequest {
    /// True: public tracks survive the erasure, credited to an anonymous artist. False:
    /// they are deleted with the rest.
    pub keep_public_tracks: bool,
}

/// An account's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum AccountStatus {
    /// A normal account.
    Active,
    /// Deletion requested; it can be cancelled until `recovery_deadline`.
    DeletionRequested,
    /// Personal data erased; see `receipt`.
    Erased,
}

impl From<UserStatus> for AccountStatus {
    fn from(s: UserStatus) -> Self {
        match s {
            UserStatus::Active => Self::Active,
            UserStatus::DeletionRequested => Self::DeletionRequested,
            UserStatus::Erased => Self::Erased,
        }
    }
}

/// The statuses `/v1/deletions` filters on: an active account has no deletion to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum DeletionFilter {
    /// Deletion requested, not erased yet.
    DeletionRequested,
    /// Erased.
    Erased,
}

/// Where a step of the erasure stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum StepStatusView {
    /// Not done yet (or failed; the job retries it).
    Pending,
    /// Done.
    Done,
    /// Not run on purpose; `reason` says why.
    Skipped,
}

impl From<StepStatus> for StepStatusView {
    fn from(s: StepStatus) -> Self {
        match s {
            StepStatus::Pending => Self::Pending,
            StepStatus::Done => Self::Done,
            StepStatus::Skipped => Self::Skipped,
        }
    }
}

/// The database step: rows anonymised and deleted, files removed.
#[derive(Debug, Clone, Object)]
pub struct DatabaseReportView {
    /// Step status.
    pub status: StepStatusView,
    /// `users` rows whose e-mail, username and display name were cleared.
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
    /// Files removed from `MEDIA_ROOT` (audio, covers, thumbnails, avatar).
    pub media_files_deleted: u64,
    /// Export rows deleted.
    pub exports_deleted: u64,
    /// Export ZIPs removed from `EXPORT_DIR`.
    pub export_files_deleted: u64,
    /// `.eml` files of the user's e-mails removed from `MAIL_OUTBOX_DIR`.
    pub outbox_files_deleted: u64,
    /// Stored Stripe events of the user's payments (linked to their orders, or about a
    /// payment intent or charge of theirs, whatever the event's outcome) whose payload was
    /// erased.
    pub webhook_payloads_erased: u64,
    /// Jobs whose args, last error or note quoted the user's e-mail address, now replaced
    /// by `[erased]`.
    pub job_texts_scrubbed: u64,
    /// Job attempts whose error quoted the user's e-mail address, likewise.
    pub job_attempt_errors_scrubbed: u64,
}

/// The records the erasure keeps on purpose, and why: the accounting of the user's
/// purchases and sales (ids, amounts, dates, Stripe ids; no name, e-mail or address).
#[derive(Debug, Clone, Object)]
pub struct KeptRecordsView {
    /// Why they are kept.
    pub reason: String,
    /// Orders the user bought.
    pub orders: u64,
    /// Items of those orders.
    pub order_items: u64,
    /// Refunds recorded for those orders.
    pub payment_refunds: u64,
    /// Payouts to the user as a seller.
    pub seller_transfers: u64,
    /// The user's Stripe connected account (0 or 1).
    pub seller_accounts: u64,
    /// Stored Stripe events about the user's payments (payload erased), until
    /// `WEBHOOK_EVENT_RETENTION`.
    pub webhook_events: u64,
}

impl From<KeptRecords> for KeptRecordsView {
    fn from(k: KeptRecords) -> Self {
        Self {
            reason: k.reason,
            orders: k.orders,
            order_items: k.order_items,
            payment_refunds: k.payment_refunds,
            seller_transfers: k.seller_transfers,
            seller_accounts: k.seller_accounts,
            webhook_events: k.webhook_events,
        }
    }
}

impl From<DatabaseReport> for DatabaseReportView {
    fn from(d: DatabaseReport) -> Self {
        Self {
            status: d.status.into(),
            users_anonymised: d.users_anonymised,
            profiles_anonymised: d.profiles_anonymised,
            messages_deleted: d.messages_deleted,
            playback_history_deleted: d.playback_history_deleted,
            other_plays_detached: d.other_plays_detached,
            playlists_deleted: d.playlists_deleted,
            playlist_items_deleted: d.playlist_items_deleted,
            other_playlist_items_deleted: d.other_playlist_items_deleted,
            private_tracks_deleted: d.private_tracks_deleted,
            public_tracks_deleted: d.public_tracks_deleted,
            public_tracks_anonymised: d.public_tracks_anonymised,
            media_files_deleted: d.media_files_deleted,
            exports_deleted: d.exports_deleted,
            export_files_deleted: d.export_files_deleted,
            outbox_files_deleted: d.outbox_files_deleted,
            webhook_payloads_erased: d.webhook_payloads_erased,
            job_texts_scrubbed: d.job_texts_scrubbed,
            job_attempt_errors_scrubbed: d.job_attempt_errors_scrubbed,
        }
    }
}

/// The Redis step.
#[derive(Debug, Clone, Object)]
pub struct RedisReportView {
    /// Step status.
    pub status: StepStatusView,
    /// Keys `user:{id}:*` unlinked.
    pub keys_deleted: u64,
    /// SCAN pages read by the attempt that finished the step.
    pub scan_pages: u64,
    /// Why it was skipped (e.g. "skipped: Redis not configured").
    #[oai(nullable)]
    pub reason: Option<String>,
    /// The error of the last failed attempt.
    #[oai(nullable)]
    pub last_error: Option<String>,
}

impl From<RedisReport> for RedisReportView {
    fn from(r: RedisReport) -> Self {
        Self {
            status: r.status.into(),
            keys_deleted: r.keys_deleted,
            scan_pages: r.scan_pages,
            reason: r.reason,
            last_error: r.last_error,
        }
    }
}

/// One request kind of the OpenSearch step.
#[derive(Debug, Clone, Object)]
pub struct IndexReportView {
    /// Status of this part.
    pub status: StepStatusView,
    /// The index.
    pub index: String,
    /// Documents asked for.
    pub requested: u64,
    /// Documents the index reports deleted or updated.
    pub affected: u64,
    /// e.g. "already gone", "nothing to send".
    #[oai(nullable)]
    pub note: Option<String>,
    /// The error of the last failed attempt.
    #[oai(nullable)]
    pub last_error: Option<String>,
}

impl From<IndexReport> for IndexReportView {
    fn from(i: IndexReport) -> Self {
        Self {
            status: i.status.into(),
            index: i.index,
            requested: i.requested,
            affected: i.affected,
            note: i.note,
            last_error: i.last_error,
        }
    }
}

/// The OpenSearch step.
#[derive(Debug, Clone, Object)]
pub struct OpenSearchReportView {
    /// Step status (done once every part is).
    pub status: StepStatusView,
    /// Why it was skipped (e.g. "skipped: OpenSearch not configured").
    #[oai(nullable)]
    pub reason: Option<String>,
    /// The user's document.
    pub user_document: IndexReportView,
    /// Deleted tracks' documents.
    pub tracks_deleted: IndexReportView,
    /// The user's playlists' documents.
    pub playlists_deleted: IndexReportView,
    /// Kept public tracks' documents, credited to the anonymous artist.
    pub tracks_anonymised: IndexReportView,
}

impl From<OpenSearchReport> for OpenSearchReportView {
    fn from(o: OpenSearchReport) -> Self {
        Self {
            status: o.status.into(),
            reason: o.reason,
            user_document: o.user_document.into(),
            tracks_deleted: o.tracks_deleted.into(),
            playlists_deleted: o.playlists_deleted.into(),
            tracks_anonymised: o.tracks_anonymised.into(),
        }
    }
}

/// The erasure receipt: per store, what was anonymised or deleted, what was skipped and
/// why, and when. It holds no personal data. Times are ms since the Unix epoch.
#[derive(Debug, Clone, Object)]
pub struct ReceiptView {
    /// The `hard_delete` job that wrote it last.
    #[oai(nullable)]
    pub job_id: Option<i64>,
    /// When the erasure started.
    pub started_at: i64,
    /// When the database step was done.
    #[oai(nullable)]
    pub database_at: Option<i64>,
    /// When the Redis step was done or skipped.
    #[oai(nullable)]
    pub redis_at: Option<i64>,
    /// When the OpenSearch step was done or skipped.
    #[oai(nullable)]
    pub opensearch_at: Option<i64>,
    /// When every step was done or skipped: the erasure is complete.
    #[oai(nullable)]
    pub finished_at: Option<i64>,
    /// The database (and the files it points at).
    pub database: DatabaseReportView,
    /// Redis.
    pub redis: RedisReportView,
    /// OpenSearch.
    pub opensearch: OpenSearchReportView,
    /// What the erasure keeps, and why (counted by the database step; zeros and an empty
    /// reason before it ran).
    pub kept: KeptRecordsView,
}

impl From<Receipt> for ReceiptView {
    fn from(r: Receipt) -> Self {
        Self {
            job_id: r.job_id,
            started_at: r.started_at,
            database_at: r.database_at,
            redis_at: r.redis_at,
            opensearch_at: r.opensearch_at,
            finished_at: r.finished_at,
            database: r.report.database.into(),
            redis: r.report.redis.into(),
            opensearch: r.report.opensearch.into(),
            kept: r.report.kept.into(),
        }
    }
}

/// Where an account's deletion stands. Times are ms since the Unix epoch.
#[derive(Debug, Clone, Object)]
pub struct DeletionView {
    /// The user.
    pub user_id: i64,
    /// `active`, `deletion_requested` or `erased`.
    pub status: AccountStatus,
    /// When deletion was requested (none when active).
    #[oai(nullable)]
    pub deletion_requested_at: Option<i64>,
    /// The account can be restored (`DELETE`) before this; it is erased after it.
    #[oai(nullable)]
    pub recovery_deadline: Option<i64>,
    /// When the account's data was erased from the database.
    #[oai(nullable)]
    pub erased_at: Option<i64>,
    /// Whether public tracks survive the erasure (credited to an anonymous artist).
    pub keep_public_tracks: bool,
    /// The erasure receipt, once the hard delete has started (complete when its
    /// `finished_at` is set).
    #[oai(nullable)]
    pub receipt: Option<ReceiptView>,
}

impl From<DeletionStatus> for DeletionView {
    fn from(d: DeletionStatus) -> Self {
        Self {
            user_id: d.user_id,
            status: d.status.into(),
            deletion_requested_at: d.deletion_requested_at,
            recovery_deadline: d.recovery_deadline,
            erased_at: d.erased_at,
            keep_public_tracks: d.keep_public_tracks,
            receipt: d.receipt.map(Into::into),
        }
    }
}

/// A page of accounts with a deletion.
#[derive(Debug, Clone, Object)]
pub struct DeletionPageView {
    /// By user id, ascending, each with its receipt once the erasure started.
    pub deletions: Vec<DeletionView>,
    /// Pass as `cursor` for the next page; none on the last one.
    #[oai(nullable)]
    pub next_cursor: Option<i64>,
}

/// `202 Accepted` with the account's new status and deadline.
#[derive(ApiResponse)]
pub enum DeletionAccepted {
    /// Deletion requested; the account is erased after `recovery_deadline` unless
    /// restored before.
    #[oai(status = 202)]
    Accepted(Json<DeletionView>),
}

/// The problem types of refused deletion requests and restores (409).
pub mod kinds {
    /// A deletion is already pending.
    pub const ALREADY_REQUESTED: &str = "deletion_already_requested";
    /// Nothing to restore: the account is active.
    pub const NOT_REQUESTED: &str = "no_pending_deletion";
    /// The recovery period is over: the account can no longer be restored.
    pub const RECOVERY_PERIOD_OVER: &str = "recovery_period_over";
    /// The account changed at the same time: try again.
    pub const CONCURRENT_CHANGE: &str = "concurrent_change";
}

fn deletion_error(e: DeletionError) -> ApiError {
    match e {
        DeletionError::NotFound(_) => ApiError::not_found(e.to_string()),
        DeletionError::AlreadyRequested { .. } => {
            ApiError::conflict(kinds::ALREADY_REQUESTED, e.to_string())
        }
        DeletionError::NotRequested(_) => ApiError::conflict(kinds::NOT_REQUESTED, e.to_string()),
        DeletionError::DeadlinePassed { .. } => {
            ApiError::conflict(kinds::RECOVERY_PERIOD_OVER, e.to_string())
        }
        DeletionError::Concurrent(_) => ApiError::conflict(kinds::CONCURRENT_CHANGE, e.to_string()),
        DeletionError::Erased(_) => ApiError::gone(e.to_string()),
        DeletionError::Database(e) => e.into(),
    }
}

/// The users routes.
pub struct UsersApi(pub ApiState);

#[OpenApi(tag = "ApiTags::Users")]
impl UsersApi {
    /// Ask for the deletion of an account. Scope: write.
    ///
    /// `active → deletion_requested`, with `recovery_deadline` = now +
    /// `ACCOUNT_RECOVERY_DAYS` (30); the daily `hard_delete` pass erases the account after
    /// it. `keep_public_tracks` chooses whether public tracks survive, credited to an
    /// anonymous artist. 404 for an unknown user, 409 `deletion_already_requested` when a
    /// deletion is pending, 410 once erased.
    #[oai(path = "/v1/users/:user_id/deletion", method = "post")]
    async fn request_deletion(
        &self,
        auth: ApiKeyAuth,
        /// `users.id`.
        user_id: Path<i64>,
        body: Json<DeletionRequest>,
    ) -> Result<DeletionAccepted, ApiError> {
        let caller = auth.require(Scope::Write)?;
        let status = users::request_deletion(
            &self.0.engine,
            &self.0.jobs.gdpr.accounts,
            user_id.0,
            Some(body.0.keep_public_tracks),
            &Actor::api_key(caller.key_id),
        )
        .await
        .map_err(deletion_error)?;
        Ok(DeletionAccepted::Accepted(Json(status.into())))
    }

    /// Restore an account whose deletion is pending, before its recovery deadline.
    /// Scope: write.
    ///
    /// `deletion_requested → active`. 409 `recovery_period_over` at or after the deadline
    /// (the erasure is due and cannot be stopped), 409 `no_pending_deletion` for an active
    /// account, 404 for an unknown user, 410 once erased.
    #[oai(path = "/v1/users/:user_id/deletion", method = "delete")]
    async fn cancel_deletion(
        &self,
        auth: ApiKeyAuth,
        /// `users.id`.
        user_id: Path<i64>,
    ) -> Result<Json<DeletionView>, ApiError> {
        let caller = auth.require(Scope::Write)?;
        let status =
            users::cancel_deletion(&self.0.engine, user_id.0, &Actor::api_key(caller.key_id))
                .await
                .map_err(deletion_error)?;
        Ok(Json(status.into()))
    }

    /// Every account whose deletion is pending or done, by user id, one page at a time:
    /// deadlines and, once the erasure started, its receipt (a receipt without
    /// `finished_at` is an erasure waiting for a store). Scope: read.
    #[oai(path = "/v1/deletions", method = "get")]
    async fn list_deletions(
        &self,
        auth: ApiKeyAuth,
        /// Only this status: `deletion_requested` or `erased` (default: both).
        status: Query<Option<DeletionFilter>>,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u32>>,
        /// The previous page's `next_cursor`.
        cursor: Query<Option<i64>>,
    ) -> Result<Json<DeletionPageView>, ApiError> {
        auth.require(Scope::Read)?;
        let statuses: Vec<UserStatus> = match status.0 {
            None => Vec::new(),
            Some(DeletionFilter::DeletionRequested) => vec![UserStatus::DeletionRequested],
            Some(DeletionFilter::Erased) => vec![UserStatus::Erased],
        };
        let limit = i64::from(limit.0.unwrap_or(50));
        let rows =
            users::list_deletions(&self.0.engine, &statuses, cursor.0.unwrap_or(0), limit + 1)
                .await?;
        let (rows, next_cursor) = page(rows, limit, |d| d.user_id);
        Ok(Json(DeletionPageView {
            deletions: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }))
    }

    /// Where an account's deletion stands: status, deadline and, once the erasure has
    /// started, its receipt. Scope: read.
    ///
    /// 404 for an unknown user.
    #[oai(path = "/v1/users/:user_id/deletion", method = "get")]
    async fn deletion_status(
        &self,
        auth: ApiKeyAuth,
        /// `users.id`.
        user_id: Path<i64>,
    ) -> Result<Json<DeletionView>, ApiError> {
        auth.require(Scope::Read)?;
        let status = users::deletion_status(self.0.engine.db(), user_id.0)
            .await
            .map_err(deletion_error)?;
        Ok(Json(status.into()))
    }
}
