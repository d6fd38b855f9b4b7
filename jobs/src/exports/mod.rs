//! Data exports as the HTTP routes see them: request one (with the daily limit), list them,
//! and check a download link. The ZIP itself is written by the [`crate::data_export`] job;
//! old files are removed by [`crate::export_cleanup`].
//!
//! | function | success | errors (suggested HTTP status) |
//! |---|---|---|
//! | [`request_export`] | export row + `data_export` job, one transaction | not found (404), erased (410), over the limit (429 + `Retry-After`) |
//! | [`list_exports`] | status, progress, size, sha256, expiry of each | — |
//! | [`verify_download`] | the file to stream ([`ExportDownload::path`]) | bad token (403), expired or gone (410) |
//!
//! Download links are `{EXPORT_LINK_BASE_URL}/{id}/download?expires={ms}&token={hex}`: the
//! token is an HMAC-SHA256 with `EXPORT_SIGNING_KEY` over the export id and the expiry, so
//! a link can be checked without a database read and cannot be stretched or moved to
//! another export.

pub mod state;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::clock::duration_ms;
use engine::state_machine::{self, Actor, Lifecycle};
use engine::{Db, Engine, Millis};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use sqlx::Row;

pub use self::state::ExportStatus;
use crate::data_export::DataExport;
use crate::users::UserStatus;

/// The rolling window of the daily limit.
pub const LIMIT_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The key download tokens are signed with (`EXPORT_SIGNING_KEY`). Its `Debug` hides it.
#[derive(Clone)]
pub struct SigningKey(Arc<[u8]>);

impl SigningKey {
    /// A key from configured bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Arc::from(bytes.into()))
    }

    /// A random key: links signed with it work only in this process.
    pub fn random() -> Self {
        Self::new(rand::random::<[u8; 32]>().to_vec())
    }

    fn mac(&self, export_id: i64, expires_at: Millis) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(format!("veza-export-download:{export_id}:{expires_at}").as_bytes());
        mac
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// The export settings, from the `EXPORT_*` variables.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// `EXPORT_DIR`: where the ZIPs are written.
    pub dir: PathBuf,
    /// `EXPORT_DAILY_LIMIT`: requests per user per rolling 24 h.
    pub daily_limit: u32,
    /// `EXPORT_SIGNING_KEY`.
    pub signing_key: SigningKey,
    /// `EXPORT_LINK_TTL`: how long a download link works after the export is ready.
    pub link_ttl: Duration,
    /// `EXPORT_RETENTION`: how long the file is kept after the export is ready.
    pub retention: Duration,
    /// `EXPORT_LINK_BASE_URL`: the links in e-mails start with this.
    pub link_base_url: String,
    /// Rows read per page while streaming into the ZIP.
    pub page_size: i64,
}

impl ExportSettings {
    /// Defaults (limit 3, 7-day links and files, a random key) writing under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            daily_limit: 3,
            signing_key: SigningKey::random(),
            link_ttl: Duration::from_secs(7 * 24 * 3600),
            retention: Duration::from_secs(7 * 24 * 3600),
            link_base_url: "http://127.0.0.1:8080/v1/exports".to_owned(),
            page_size: 1000,
        }
    }
}

/// Where export `id`'s finished ZIP lives.
pub fn export_file_path(settings: &ExportSettings, export_id: i64) -> PathBuf {
    file_path_in(&settings.dir, export_id)
}

/// The mode of `EXPORT_DIR`: the owner only. The ZIPs hold a person's data; nobody else on
/// the host may list, read or replace them.
pub const EXPORT_DIR_MODE: u32 = 0o700;

/// The mode every export ZIP is created with (the `.part` file, renamed when complete).
pub const EXPORT_FILE_MODE: u32 = 0o600;

/// Makes `dir` (`EXPORT_DIR`) a directory only its owner can enter: created with
/// [`EXPORT_DIR_MODE`] when missing (missing parents too), tightened to it when it exists
/// with more permissions (logged once per change). Tightening rather than refusing: the
/// directory is ours, and a deployment that created it with the default umask (0755) should
/// not stop exporting. It fails when `dir` is not a directory or cannot be changed (not its
/// owner): the export then retries with the reason, for an operator to fix.
pub fn ensure_export_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(EXPORT_DIR_MODE)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("EXPORT_DIR {} is not a directory", dir.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != EXPORT_DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(EXPORT_DIR_MODE)).map_err(
            |e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "EXPORT_DIR {} has mode {mode:o}, and setting it to {EXPORT_DIR_MODE:o} failed: {e}",
                        dir.display()
                    ),
                )
            },
        )?;
        tracing::warn!(
            dir = %dir.display(),
            from = format!("{mode:o}"),
            to = format!("{EXPORT_DIR_MODE:o}"),
            "EXPORT_DIR was readable by others; its mode is tightened"
        );
    }
    Ok(())
}

/// `{dir}/{id}.zip`.
pub fn file_path_in(dir: &Path, export_id: i64) -> PathBuf {
    dir.join(format!("{export_id}.zip"))
}

/// `{dir}/.{id}.zip.part`: the ZIP while it is written.
pub fn part_path_in(dir: &Path, export_id: i64) -> PathBuf {
    dir.join(format!(".{export_id}.zip.part"))
}

/// The token of a link to `export_id` valid until `expires_at` (hex HMAC-SHA256).
pub fn download_token(key: &SigningKey, export_id: i64, expires_at: Millis) -> String {
    hex::encode(key.mac(export_id, expires_at).finalize().into_bytes())
}

/// True when `token` was made by [`download_token`] for this export and expiry (checked in
/// constant time).
pub fn token_is_valid(key: &SigningKey, export_id: i64, expires_at: Millis, token: &str) -> bool {
    match hex::decode(token.trim()) {
        Ok(tag) => key.mac(export_id, expires_at).verify_slice(&tag).is_ok(),
        Err(_) => false,
    }
}

/// The download link of `export_id`, valid until `expires_at`.
pub fn download_link(settings: &ExportSettings, export_id: i64, expires_at: Millis) -> String {
    format!(
        "{}/{export_id}/download?expires={expires_at}&token={}",
        settings.link_base_url.trim_end_matches('/'),
        download_token(&settings.signing_key, export_id, expires_at)
    )
}

/// Why an export was not requested.
#[derive(Debug, thiserror::Error)]
pub enum ExportRequestError {
    /// No such user (404).
    #[error("user {0} does not exist")]
    UserNotFound(i64),
    /// The account is erased (410).
    #[error("user {0} is erased; there is nothing to export")]
    UserErased(i64),
    /// `EXPORT_DAILY_LIMIT` requests in the last 24 h (429, `Retry-After`).
    #[error("at most {limit} exports per 24 hours; the next one is possible in {} s", retry_after.as_secs())]
    LimitReached {
        /// The limit.
        limit: u32,
        /// How long until a request is accepted again.
        retry_after: Duration,
        /// When, in ms since the epoch.
        retry_at: Millis,
    },
    /// The database or the enqueue failed (500/503).
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for ExportRequestError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(engine::job::error_chain(&e))
    }
}

impl From<engine::Error> for ExportRequestError {
    fn from(e: engine::Error) -> Self {
        Self::Database(engine::job::error_chain(&e))
    }
}

/// A new export request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportRequested {
    /// The export.
    pub export_id: i64,
    /// The `data_export` job writing it.
    pub job_id: i64,
    /// Requests left in the current 24 h window after this one.
    pub remaining_today: u32,
}

/// Requests an export of `user_id`'s data: inserts the export row and enqueues its
/// `data_export` job in one transaction, refusing with
/// [`ExportRequestError::LimitReached`] once the user made `EXPORT_DAILY_LIMIT` requests in
/// the last 24 hours.
///
/// The limit holds under concurrent requests: the transaction first writes the user's row
/// (a no-op update), which serialises the requests of one user on both backends (a row lock
/// on Postgres, the write lock on SQLite) before counting.
pub async fn request_export(
    engine: &Engine,
    settings: &ExportSettings,
    user_id: i64,
    actor: &Actor,
) -> Result<ExportRequested, ExportRequestError> {
    let now = engine.clock().now_ms();
    let mut tx = engine.begin().await?;
    // Lock the user's row for the rest of the transaction (see above).
    let locked = sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if locked == 0 {
        return Err(ExportRequestError::UserNotFound(user_id));
    }
    let status: String = sqlx::query_scalar("SELECT status FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    if UserStatus::parse(&status) == Some(UserStatus::Erased) {
        return Err(ExportRequestError::UserErased(user_id));
    }
    let window_start = now - duration_ms(LIMIT_WINDOW);
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM data_exports WHERE user_id = $1 AND requested_at > $2",
    )
    .bind(user_id)
    .bind(window_start)
    .fetch_one(&mut *tx)
    .await?;
    let limit = i64::from(settings.daily_limit);
    if count >= limit {
        // The request that must leave the window before another fits: the limit-th newest.
        let blocking: Millis = sqlx::query_scalar(
            "SELECT requested_at FROM data_exports WHERE user_id = $1 AND requested_at > $2 \
             ORDER BY requested_at DESC LIMIT 1 OFFSET $3",
        )
        .bind(user_id)
        .bind(window_start)
        .bind(limit - 1)
        .fetch_one(&mut *tx)
        .await?;
        let retry_at = blocking + duration_ms(LIMIT_WINDOW);
        let retry_after = Duration::from_millis(u64::try_from(retry_at - now).unwrap_or(0));
        return Err(ExportRequestError::LimitReached {
            limit: settings.daily_limit,
            retry_after,
            retry_at,
        });
    }
    let export_id: i64 = sqlx::query_scalar(
        "INSERT INTO data_exports (user_id, status, requested_at, created_at, updated_at) \
         VALUES ($1, 'pending', $2, $2, $2) RETURNING id",
    )
    .bind(user_id)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let job_id = tx.enqueue(DataExport { export_id }).await?.id();
    sqlx::query("UPDATE data_exports SET job_id = $1 WHERE id = $2")
        .bind(job_id)
        .bind(export_id)
        .execute(&mut *tx)
        .await?;
    state_machine::record(
        &mut tx,
        "data_export",
        &export_id.to_string(),
        state_machine::CREATED,
        ExportStatus::Pending.as_str(),
        actor,
        None,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(user_id, export_id, job_id, "data export requested");
    Ok(ExportRequested {
        export_id,
        job_id,
        remaining_today: u32::try_from(limit - count - 1).unwrap_or(0),
    })
}

/// Rows written so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// Rows written.
    pub rows_done: i64,
    /// Rows to write (known once the job started).
    pub rows_total: Option<i64>,
    /// 0–100, when the total is known.
    pub percent: Option<f64>,
}

/// One export as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportInfo {
    /// The export.
    pub id: i64,
    /// Its status.
    pub status: ExportStatus,
    /// When it was requested.
    pub requested_at: Millis,
    /// When its job started.
    pub started_at: Option<Millis>,
    /// When its file was complete.
    pub ready_at: Option<Millis>,
    /// Rows written.
    pub progress: Progress,
    /// File size, once ready.
    pub size_bytes: Option<i64>,
    /// Hex SHA-256 of the file, once ready.
    pub sha256: Option<String>,
    /// Download links stop working then.
    pub link_expires_at: Option<Millis>,
    /// The file is deleted then.
    pub expires_at: Option<Millis>,
    /// Why it failed (or the last transient error while it is retried).
    pub error: Option<String>,
}

/// The user's exports, newest first (at most 100).
pub async fn list_exports(db: &Db, user_id: i64) -> Result<Vec<ExportInfo>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, status, requested_at, started_at, ready_at, rows_done, rows_total, \
         size_bytes, sha256, link_expires_at, expires_at, error \
         FROM data_exports WHERE user_id = $1 ORDER BY requested_at DESC, id DESC LIMIT 100",
    )
    .bind(user_id)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|r| {
            let status: String = r.try_get(1)?;
            let rows_done: i64 = r.try_get(5)?;
            let rows_total: Option<i64> = r.try_get(6)?;
            Ok(ExportInfo {
                id: r.try_get(0)?,
                status: ExportStatus::parse(&status).ok_or_else(|| {
                    sqlx::Error::Decode(format!("unknown export status {status:?}").into())
                })?,
                requested_at: r.try_get(2)?,
                started_at: r.try_get(3)?,
                ready_at: r.try_get(4)?,
                progress: Progress {
                    rows_done,
                    rows_total,
                    percent: rows_total.map(|t| {
                        if t <= 0 {
                            100.0
                        } else {
                            (rows_done as f64 * 100.0 / t as f64).min(100.0)
                        }
                    }),
                },
                size_bytes: r.try_get(7)?,
                sha256: r.try_get(8)?,
                link_expires_at: r.try_get(9)?,
                expires_at: r.try_get(10)?,
                error: r.try_get(11)?,
            })
        })
        .collect()
}

/// Why a download link was refused.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The token does not match the export and expiry (403).
    #[error("this download link is not valid")]
    Forbidden,
    /// The link expired, or the file is gone (expired, or the account erased) (410).
    #[error("this download link has expired or the export is no longer available")]
    Gone,
    /// The database failed (500/503).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A checked download: the file to stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportDownload {
    /// The export.
    pub export_id: i64,
    /// Its owner.
    pub user_id: i64,
    /// The ZIP on disk.
    pub path: PathBuf,
    /// The name to offer (`Content-Disposition`).
    pub file_name: String,
    /// Its size.
    pub size_bytes: i64,
    /// Its hex SHA-256.
    pub sha256: String,
}

/// Checks a download link (`expires` and `token` from its query) at `now`: a token that does
/// not match is [`DownloadError::Forbidden`] (before anything else, so an expiry cannot be
/// forged), an expired link or an export no longer ready is [`DownloadError::Gone`].
pub async fn verify_download(
    db: &Db,
    settings: &ExportSettings,
    export_id: i64,
    expires: Millis,
    token: &str,
    now: Millis,
) -> Result<ExportDownload, DownloadError> {
    if !token_is_valid(&settings.signing_key, export_id, expires, token) {
        return Err(DownloadError::Forbidden);
    }
    if now >= expires {
        return Err(DownloadError::Gone);
    }
    let row =
        sqlx::query("SELECT user_id, status, size_bytes, sha256 FROM data_exports WHERE id = $1")
            .bind(export_id)
            .fetch_optional(db)
            .await?
            .ok_or(DownloadError::Gone)?;
    let status: String = row.try_get(1)?;
    if ExportStatus::parse(&status) != Some(ExportStatus::Ready) {
        return Err(DownloadError::Gone);
    }
    let path = export_file_path(settings, export_id);
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Err(DownloadError::Gone);
    }
    Ok(ExportDownload {
        export_id,
        user_id: row.try_get(0)?,
        path,
        file_name: format!("veza-data-export-{export_id}.zip"),
        size_bytes: row.try_get::<Option<i64>, _>(2)?.unwrap_or_default(),
        sha256: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_the_export_and_the_expiry() {
        let key = SigningKey::new(b"k".repeat(32));
        let token = download_token(&key, 7, 1_000);
        assert!(token_is_valid(&key, 7, 1_000, &token));
        assert!(!token_is_valid(&key, 8, 1_000, &token), "another export");
        assert!(
            !token_is_valid(&key, 7, 2_000, &token),
            "a stretched expiry"
        );
        assert!(!token_is_valid(
            &SigningKey::new(b"x".repeat(32)),
            7,
            1_000,
            &token
        ));
        assert!(!token_is_valid(&key, 7, 1_000, "not hex"));
        assert!(!token_is_valid(&key, 7, 1_000, &token[..10]));
    }

    #[test]
    fn links_carry_id_expiry_and_token() {
        let mut s = ExportSettings::new("/tmp/x");
        s.link_base_url = "https://veza.example/v1/exports/".into();
        let link = download_link(&s, 42, 99);
        let token = download_token(&s.signing_key, 42, 99);
        assert_eq!(
            link,
            format!("https://veza.example/v1/exports/42/download?expires=99&token={token}")
        );
    }

    #[test]
    fn signing_key_is_not_printed() {
        let key = SigningKey::new(b"super-secret".to_vec());
        assert_eq!(format!("{key:?}"), "SigningKey(***)");
    }
}
