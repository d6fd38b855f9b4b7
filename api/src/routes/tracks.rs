//! `/v1/tracks/{track_id}/thumbnails`: enqueue the thumbnail job for a track's cover image
//! (one unfinished job per track), and read what the job recorded.

use jobs::thumbnail::{self, ThumbnailArgs, TrackThumbnails};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::ApiError;
use crate::state::ApiState;

/// The longest file name (path component) a file system takes, in bytes (`NAME_MAX`).
const MAX_NAME_BYTES: usize = 255;

/// What to make thumbnails of.
#[derive(Debug, Clone, Object)]
pub struct ThumbnailRequest {
    /// The track's cover image, relative to `MEDIA_ROOT` (e.g. `covers/42.png`): it must be
    /// the cover the web backend recorded for the track (`tracks.cover_path`, compared in
    /// canonical form), and a regular file; `..`, absolute paths and symbolic links leading
    /// outside `MEDIA_ROOT` are refused, and so is a path component longer than 255 bytes
    /// (no file system has such a name).
    #[oai(
        validator(min_length = 1, max_length = 4096),
        deserialize_with = "crate::routes::strict_string"
    )]
    pub source: String,
}

/// The job that will make the thumbnails.
#[derive(Debug, Clone, Object)]
pub struct ThumbnailJobView {
    /// The job's id (see `/v1/jobs/{id}`).
    pub job_id: i64,
    /// False when an unfinished thumbnail job of this track for this same cover already
    /// existed (nothing new was enqueued). A job of an older cover does not count: the
    /// newer cover gets its own job, and the older one records nothing.
    pub created: bool,
}

/// `202 Accepted` with the job.
#[derive(ApiResponse)]
pub enum ThumbnailAccepted {
    /// The job is enqueued (or already was).
    #[oai(status = 202)]
    Accepted(Json<ThumbnailJobView>),
}

/// One thumbnail's files, relative to `MEDIA_ROOT`.
#[derive(Debug, Clone, Object)]
pub struct ThumbnailView {
    /// Side in pixels.
    pub size: u32,
    /// The JPEG file.
    pub jpg: String,
    /// The WebP file.
    pub webp: String,
}

/// A track's recorded thumbnails.
#[derive(Debug, Clone, Object)]
pub struct TrackThumbnailsView {
    /// The source image they were made from; none when none were made yet.
    #[oai(nullable)]
    pub source: Option<String>,
    /// When they were made (ms since the Unix epoch).
    #[oai(nullable)]
    pub updated_at: Option<i64>,
    /// Each size, ascending; empty when none were made yet.
    pub thumbnails: Vec<ThumbnailView>,
}

impl From<TrackThumbnails> for TrackThumbnailsView {
    fn from(t: TrackThumbnails) -> Self {
        Self {
            source: t.source,
            updated_at: t.updated_at,
            thumbnails: t
                .thumbnails
                .into_iter()
                .map(|t| ThumbnailView {
                    size: t.size,
                    jpg: t.jpg,
                    webp: t.webp,
                })
                .collect(),
        }
    }
}

/// The tracks routes.
pub struct TracksApi(pub ApiState);

impl TracksApi {
    /// The track's cover: `None` when there is no such track.
    async fn track_cover(&self, track_id: i64) -> Result<Option<Option<String>>, ApiError> {
        let mut conn = self.0.engine.db().acquire().await?;
        Ok(thumbnail::track_cover(&mut conn, track_id).await?)
    }
}

#[OpenApi(tag = "ApiTags::Tracks")]
impl TracksApi {
    /// Enqueue the thumbnails of a track's cover image. Scope: write.
    ///
    /// `source` must be the track's own cover (`tracks.cover_path`). One unfinished job
    /// per track and cover: when one exists, its id comes back with `created: false` and
    /// nothing new is enqueued. 400 when `source` is empty, absolute, contains `..`, has a
    /// component over 255 bytes, leads outside `MEDIA_ROOT` through a symbolic link, is
    /// not a regular file, or is not the track's cover; 404 when the track or the source
    /// file does not exist. Nothing is enqueued on any refusal.
    #[oai(path = "/v1/tracks/:track_id/thumbnails", method = "post")]
    async fn make_thumbnails(
        &self,
        auth: ApiKeyAuth,
        /// `tracks.id`.
        track_id: Path<i64>,
        body: Json<ThumbnailRequest>,
    ) -> Result<ThumbnailAccepted, ApiError> {
        auth.require(Scope::Write)?;
        let track_id = track_id.0;
        let source = body.0.source;
        // No file system has a longer name: refused here, before the lookup fails with
        // ENAMETOOLONG.
        if let Some(long) = source.split('/').find(|c| c.len() > MAX_NAME_BYTES) {
            return Err(ApiError::bad_request(format!(
                "source refused: the path component starting {:?} is {} bytes long; at most {MAX_NAME_BYTES}",
                long.chars().take(16).collect::<String>(),
                long.len()
            )));
        }
        let jobs = std::sync::Arc::clone(&self.0.jobs);
        let checked = {
            let source = source.clone();
            tokio::task::spawn_blocking(move || {
                jobs.thumbnail.resolve_source(&source).and_then(|path| {
                    let canonical = jobs.thumbnail.canonical_source(&source)?;
                    Ok((path, canonical))
                })
            })
            .await
            .map_err(|e| ApiError::internal(&e))?
        };
        let canonical = match checked {
            Ok((path, _)) if path.is_dir() => {
                return Err(ApiError::bad_request(format!(
                    "source {source:?} is a directory; give the image file"
                )));
            }
            Ok((path, _)) if !path.is_file() => {
                return Err(ApiError::bad_request(format!(
                    "source {source:?} is not a regular file (a pipe, socket or device); give the image file"
                )));
            }
            Ok((_, canonical)) => canonical,
            Err(e) if e.is_refused() => {
                return Err(ApiError::bad_request(format!("source refused: {e}")));
            }
            Err(e) if e.is_not_found() => {
                return Err(ApiError::not_found(format!(
                    "source image {source:?} does not exist under MEDIA_ROOT; upload it first"
                )));
            }
            Err(e) => return Err(ApiError::internal(&e)),
        };
        let Some(cover) = self.track_cover(track_id).await? else {
            return Err(ApiError::not_found(format!("no track {track_id}")));
        };
        // Only the track's own cover: any other file under MEDIA_ROOT (another user's
        // private cover) would become this track's public thumbnail.
        let Some(cover) = cover else {
            return Err(ApiError::bad_request(format!(
                "track {track_id} has no cover image on record; record the upload as the track's cover first"
            )));
        };
        let same = {
            let (jobs, cover) = (std::sync::Arc::clone(&self.0.jobs), cover.clone());
            tokio::task::spawn_blocking(move || jobs.thumbnail.canonical_source(&cover))
                .await
                .map_err(|e| ApiError::internal(&e))?
                .is_ok_and(|c| c == canonical)
        };
        if !same {
            return Err(ApiError::bad_request(format!(
                "source {source:?} is not track {track_id}'s cover image; only the track's own cover can be made into its thumbnails"
            )));
        }
        // The job names the cover as the track records it: the job compares it with the
        // row again before recording anything.
        let enqueued = self
            .0
            .engine
            .enqueue(ThumbnailArgs {
                track_id,
                source: cover,
            })
            .await?;
        Ok(ThumbnailAccepted::Accepted(Json(ThumbnailJobView {
            job_id: enqueued.id(),
            created: matches!(enqueued, engine::Enqueued::Inserted(_)),
        })))
    }

    /// A track's recorded thumbnails (empty until the thumbnail job has run). Scope: read.
    #[oai(path = "/v1/tracks/:track_id/thumbnails", method = "get")]
    async fn thumbnails(
        &self,
        auth: ApiKeyAuth,
        /// `tracks.id`.
        track_id: Path<i64>,
    ) -> Result<Json<TrackThumbnailsView>, ApiError> {
        auth.require(Scope::Read)?;
        let mut conn = self.0.engine.db().acquire().await?;
        match thumbnail::track_thumbnails(&mut conn, track_id.0).await? {
            Some(t) => Ok(Json(t.into())),
            None => Err(ApiError::not_found(format!("no track {}", track_id.0))),
        }
    }
}
