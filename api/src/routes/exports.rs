//! `/v1/users/{user_id}/exports` and `/v1/exports/{export_id}/download`: GDPR data exports.
//!
//! Requesting an export inserts its row and enqueues the `data_export` job in one
//! transaction, at most `EXPORT_DAILY_LIMIT` per user per rolling 24 hours
//! ([`jobs::exports::request_export`]). The job e-mails the owner a signed link,
//! `{EXPORT_LINK_BASE_URL}/{id}/download?expires={ms}&token={hex}`, which is
//! [`ExportsApi::download`]: it needs no API key (the token is the proof, see
//! [`crate::auth::authenticates_itself`]) and streams the ZIP from disk.

use engine::Actor;
use jobs::exports::{
    self, DownloadError, ExportInfo, ExportRequestError, ExportRequested, ExportStatus,
};
use poem::Body;
use poem::http::StatusCode;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::ApiTags;
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::{ApiError, Problem};
use crate::state::ApiState;

/// The problem type of a download link whose token does not match.
pub const INVALID_LINK: &str = "invalid_link";
/// The problem type of an export refused by `EXPORT_DAILY_LIMIT`.
pub const QUOTA_EXCEEDED: &str = "quota_exceeded";

/// An export's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ExportStatusView {
    /// Requested; its job has not started.
    Pending,
    /// The job is writing the ZIP (see `progress`).
    Running,
    /// The ZIP is complete; the e-mailed link downloads it until `link_expires_at`.
    Ready,
    /// It failed; `error` says why.
    Failed,
    /// Its file was deleted after `EXPORT_RETENTION`.
    Expired,
}

impl From<ExportStatus> for ExportStatusView {
    fn from(s: ExportStatus) -> Self {
        match s {
            ExportStatus::Pending => Self::Pending,
            ExportStatus::Running => Self::Running,
            ExportStatus::Ready => Self::Ready,
            ExportStatus::Failed => Self::Failed,
            ExportStatus::Expired => Self::Expired,
        }
    }
}

/// A new export request.
#[derive(Debug, Clone, Object)]
pub struct ExportAcceptedView {
    /// The export's id (see `GET /v1/users/{user_id}/exports`).
    pub export_id: i64,
    /// The `data_export` job writing it (see `/v1/jobs/{id}`).
    pub job_id: i64,
    /// Requests the user has left in the current 24-hour window.
    pub remaining_today: u32,
}

impl From<ExportRequested> for ExportAcceptedView {
    fn from(r: ExportRequested) -> Self {
        Self {
            export_id: r.export_id,
            job_id: r.job_id,
            remaining_today: r.remaining_today,
        }
    }
}

/// `202 Accepted` with the export and its job.
#[derive(ApiResponse)]
pub enum ExportAccepted {
    /// The export row and its job are committed; the ZIP is written in the background and
    /// its link e-mailed to the user.
    #[oai(status = 202)]
    Accepted(Json<ExportAcceptedView>),
}

/// Rows written so far.
#[derive(Debug, Clone, Object)]
pub struct ProgressView {
    /// Rows written.
    pub rows_done: i64,
    /// Rows to write (known once the job started).
    #[oai(nullable)]
    pub rows_total: Option<i64>,
    /// 0–100, when the total is known.
    #[oai(nullable)]
    pub percent: Option<f64>,
}

/// One export. Times are ms since the Unix epoch.
#[derive(Debug, Clone, Object)]
pub struct ExportView {
    /// The export's id.
    pub id: i64,
    /// Its status.
    pub status: ExportStatusView,
    /// When it was requested.
    pub requested_at: i64,
    /// When its job started.
    #[oai(nullable)]
    pub started_at: Option<i64>,
    /// When its file was complete.
    #[oai(nullable)]
    pub ready_at: Option<i64>,
    /// Rows written (of the total).
    pub progress: ProgressView,
    /// The ZIP's size in bytes, once ready.
    #[oai(nullable)]
    pub size_bytes: Option<i64>,
    /// The ZIP's SHA-256 (hex), once ready.
    #[oai(nullable)]
    pub sha256: Option<String>,
    /// The download link stops working then.
    #[oai(nullable)]
    pub link_expires_at: Option<i64>,
    /// The file is deleted then (`EXPORT_RETENTION`).
    #[oai(nullable)]
    pub expires_at: Option<i64>,
    /// Why it failed, or the last transient error while it is retried.
    #[oai(nullable)]
    pub error: Option<String>,
}

impl From<ExportInfo> for ExportView {
    fn from(e: ExportInfo) -> Self {
        Self {
            id: e.id,
            status: e.status.into(),
            requested_at: e.requested_at,
            started_at: e.started_at,
            ready_at: e.ready_at,
            progress: ProgressView {
                rows_done: e.progress.rows_done,
                rows_total: e.progress.rows_total,
                percent: e.progress.percent,
            },
            size_bytes: e.size_bytes,
            sha256: e.sha256,
            link_expires_at: e.link_expires_at,
            expires_at: e.expires_at,
            error: e.error,
        }
    }
}

/// A user's exports, newest first.
#[derive(Debug, Clone, Object)]
pub struct ExportList {
    /// At most 100, newest first.
    pub exports: Vec<ExportView>,
}

/// The ZIP, streamed from disk.
#[derive(ApiResponse)]
pub enum ExportFile {
    /// The export's ZIP.
    #[oai(status = 200, content_type = "application/zip")]
    Ok(
        Binary<Body>,
        /// The file's size in bytes.
        #[oai(header = "Content-Length")]
        u64,
        /// `attachment; filename="veza-data-export-{id}.zip"`.
        #[oai(header = "Content-Disposition")]
        String,
        /// The file's SHA-256 (hex), as listed.
        #[oai(header = "X-Checksum-Sha256")]
        String,
        /// `no-store`: the file is personal data.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

/// The exports routes.
pub struct ExportsApi(pub ApiState);

impl ExportsApi {
    async fn user_exists(&self, user_id: i64) -> Result<bool, ApiError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(self.0.engine.db())
            .await?;
        Ok(id.is_some())
    }
}

fn request_error(e: ExportRequestError) -> ApiError {
    match e {
        ExportRequestError::UserNotFound(_) => ApiError::not_found(e.to_string()),
        ExportRequestError::UserErased(_) => ApiError::gone(e.to_string()),
        ExportRequestError::LimitReached { retry_after, .. } => {
            // Whole seconds, rounded up: retrying after that many seconds succeeds.
            let secs = retry_after.as_millis().div_ceil(1000);
            ApiError::too_many_requests(
                QUOTA_EXCEEDED,
                e.to_string(),
                u64::try_from(secs).unwrap_or(u64::MAX),
            )
        }
        ExportRequestError::Database(_) => ApiError::internal(&e),
    }
}

#[OpenApi(tag = "ApiTags::Exports")]
impl ExportsApi {
    /// Request an export of a user's personal data. Scope: write.
    ///
    /// Inserts the export and enqueues its `data_export` job in one transaction; the ZIP
    /// (profile, tracks, playlists, messages, playback history and a manifest) is then
    /// written in the background and its download link e-mailed to the user. At most
    /// `EXPORT_DAILY_LIMIT` (3) requests per user per rolling 24 hours, however many
    /// arrive at once: past it, 429 `quota_exceeded` with `Retry-After` (seconds until the
    /// oldest request of the window leaves it). 404 for an unknown user, 410 for an erased
    /// one.
    #[oai(path = "/v1/users/:user_id/exports", method = "post")]
    async fn request_export(
        &self,
        auth: ApiKeyAuth,
        /// `users.id`.
        user_id: Path<i64>,
    ) -> Result<ExportAccepted, ApiError> {
        let caller = auth.require(Scope::Write)?;
        let requested = exports::request_export(
            &self.0.engine,
            &self.0.jobs.gdpr.exports,
            user_id.0,
            &Actor::api_key(caller.key_id),
        )
        .await
        .map_err(request_error)?;
        Ok(ExportAccepted::Accepted(Json(requested.into())))
    }

    /// A user's exports, newest first: status, progress, size, SHA-256 and expiries.
    /// Scope: read.
    ///
    /// 404 for an unknown user.
    #[oai(path = "/v1/users/:user_id/exports", method = "get")]
    async fn list_exports(
        &self,
        auth: ApiKeyAuth,
        /// `users.id`.
        user_id: Path<i64>,
    ) -> Result<Json<ExportList>, ApiError> {
        auth.require(Scope::Read)?;
        if !self.user_exists(user_id.0).await? {
            return Err(ApiError::not_found(format!("no user {}", user_id.0)));
        }
        let list = exports::list_exports(self.0.engine.db(), user_id.0).await?;
        Ok(Json(ExportList {
            exports: list.into_iter().map(Into::into).collect(),
        }))
    }

    /// Download an export's ZIP: the link e-mailed when the export is ready.
    ///
    /// Needs no API key: the link's `token` (an HMAC-SHA256 with `EXPORT_SIGNING_KEY` over
    /// the export id and `expires`) is the proof. 403 `invalid_link` when the token does not
    /// match the id and expiry (a tampered or foreign link); 410 `gone` once the link has
    /// expired or the file is no longer there (expired, or the account erased). The body
    /// streams the file from disk, with its `Content-Length`.
    #[oai(path = "/v1/exports/:export_id/download", method = "get")]
    async fn download(
        &self,
        /// `data_exports.id`.
        export_id: Path<i64>,
        /// The link's expiry, in ms since the Unix epoch.
        expires: Query<i64>,
        /// The link's signature (hex).
        token: Query<String>,
    ) -> Result<ExportFile, ApiError> {
        let now = self.0.engine.clock().now_ms();
        let checked = exports::verify_download(
            self.0.engine.db(),
            &self.0.jobs.gdpr.exports,
            export_id.0,
            expires.0,
            &token.0,
            now,
        )
        .await;
        let download = match checked {
            Ok(d) => d,
            Err(e @ DownloadError::Forbidden) => {
                return Err(ApiError::Forbidden(Json(Problem::new(
                    StatusCode::FORBIDDEN,
                    INVALID_LINK,
                    e.to_string(),
                ))));
            }
            Err(e @ DownloadError::Gone) => return Err(ApiError::gone(e.to_string())),
            Err(DownloadError::Database(e)) => return Err(e.into()),
        };
        let file = match tokio::fs::File::open(&download.path).await {
            Ok(f) => f,
            // Deleted (export_cleanup, an erasure) between the check and the open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::gone(DownloadError::Gone.to_string()));
            }
            Err(e) => return Err(ApiError::internal(&e)),
        };
        // The length of the file we opened (the row's size is the same for a ready export).
        let len = file
            .metadata()
            .await
            .map_err(|e| ApiError::internal(&e))?
            .len();
        tracing::info!(
            export_id = download.export_id,
            user_id = download.user_id,
            bytes = len,
            "export download"
        );
        Ok(ExportFile::Ok(
            Binary(Body::from_async_read(file)),
            len,
            format!("attachment; filename=\"{}\"", download.file_name),
            download.sha256,
            "no-store".to_owned(),
        ))
    }
}
