//! `thumbnail`: makes square thumbnails of a track's cover image, in JPEG and WebP, at each
//! of `THUMBNAIL_SIZES`, and records them on the track.
//!
//! Enqueued by the web backend after a cover upload (`POST /v1/tracks/{id}/thumbnails`).
//! The source is always the track's own cover, `tracks.cover_path` (the route refuses any
//! other path): a job cannot make someone else's file this track's public thumbnail. One
//! unfinished job per track and cover (unique key `thumbnail:track:{id}:cover:{hash of the
//! path}`), so a new cover posted while the old one's job waits or runs gets its own job.
//!
//! One child job per size, run in parallel, and a fan-in on the parent
//! ([`JobContext::fan_out`]). The parent, `thumbnail` ([`handle`]):
//!
//! 1. step `check`: the track exists and `source` is still its cover (else: skipped,
//!    stale; a missing track fails for good). A step, so it is not run again when the
//!    handler is re-run as each child ends (were it, the job could end stale while other
//!    children still staged files); a cover changed or a track deleted while the children
//!    ran is seen by the fan-in (5);
//! 2. step `plan`: the sizes to make, `THUMBNAIL_SIZES` as the job first saw it (stored, so
//!    that what is recorded is what its children made even if the setting changes between
//!    attempts);
//! 3. fan-out `sizes`: one `thumbnail_size` child per size ([`ThumbnailSizeArgs`], with
//!    `batch` = the parent's job id), then waits for them holding no worker;
//! 4. if any child failed or was cancelled: removes the files its children staged and fails
//!    for good, with the first failed child's error (the one a single job would have had:
//!    `source image "covers/1.png": …`). Retrying the parent could not help: it would see
//!    the same children;
//! 5. fan-in, in one transaction, fenced: records the list on the track
//!    (`tracks.thumbnails`, JSON) with the canonical source and the time, only
//!    `WHERE cover_path = source`; that UPDATE locks the track's row, and only while
//!    holding it are the staged files put in place (each hard-linked to a second temporary
//!    name which is renamed over the final one: a reader sees the old file or the new one,
//!    never a part; sizes no longer configured are removed). The staged files go once it
//!    has committed, so a fan-in retried after a failed commit finds them again. A job of an
//!    older cover that gets here after the newer one's records nothing and replaces no file:
//!    its staged files are removed and it is skipped. If the track was deleted meanwhile,
//!    the track's thumbnail directory is removed instead.
//!
//! A child, `thumbnail_size` ([`handle_size`]), makes one size on the blocking pool (so the
//! async workers keep heartbeating and other kinds keep running; `THUMBNAIL_CONCURRENCY`
//! children at once, one per core by default): resolves `source` under `MEDIA_ROOT` with
//! [`resolve_media_path`] (`..`, absolute paths and symbolic links out are refused),
//! refuses anything but a regular file (a directory, a FIFO, a device) and a file over
//! `THUMBNAIL_MAX_SOURCE_BYTES` (from its size, unread), decodes it within
//! [`DecodeLimits`] (a decompression bomb is refused from its header, before any pixel is
//! allocated), centre-crops, resizes (see [`render`]), turns it upright by its EXIF
//! orientation, encodes `{size}.jpg` and `{size}.webp` and writes each under a temporary
//! name tied to its batch, `MEDIA_ROOT/thumbnails/{track_id}/.{size}.{ext}.tmp-{batch}`,
//! synced. The names are the same on every attempt of the child, so a retry overwrites its
//! own leftovers and the parent knows where to find them. Each child decodes the source
//! itself: sizes no longer share one pass over the full image (see [`render`]).
//!
//! Bad input (missing file, not an image, truncated, unsupported format, over the limits)
//! is a permanent failure of the child, and so of the parent, whose message says what to
//! do; I/O and database errors are transient (a child retries with its backoff; a child
//! that runs out of attempts fails its parent). Re-running it for the same source replaces
//! the files and the row. It never changes the track's status.

pub mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::config::Env;
use engine::steps::ChildOutcome;
use engine::{
    DbConn, Job, JobContext, JobError, JobPolicy, JobState, Millis, Outcome, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use self::render::{DecodeLimits, RenderError, RenderSpec};
use crate::media_path::{PathError, canonical_relative, ensure_media_dir, resolve_media_path};

/// Args: the track and its cover image, relative to `MEDIA_ROOT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbnailArgs {
    /// `tracks.id`.
    pub track_id: i64,
    /// The source image, relative to `MEDIA_ROOT` (e.g. `covers/42.png`).
    pub source: String,
}

impl Job for ThumbnailArgs {
    const KIND: &'static str = "thumbnail";
    const POLICY: JobPolicy = JobPolicy {
        // Only I/O and database errors are retried; bad images fail at once.
        retry: RetryPolicy::exponential(Duration::from_secs(5), Duration::from_secs(600), 5),
        timeout: Duration::from_secs(120),
        // Overridden at registration by THUMBNAIL_CONCURRENCY (default: the CPU cores).
        concurrency: 2,
        priority: 5,
    };

    fn unique_key(&self) -> Option<String> {
        Some(unique_key(self.track_id, &self.source))
    }
}

/// Args of one child of a [`ThumbnailArgs`] job: one size of the track's cover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbnailSizeArgs {
    /// `tracks.id`.
    pub track_id: i64,
    /// The source image, relative to `MEDIA_ROOT`, as in the parent's args.
    pub source: String,
    /// The side to make, in pixels.
    pub size: u32,
    /// The parent job's id: names the staged files, the same on every attempt of the child.
    pub batch: i64,
}

impl Job for ThumbnailSizeArgs {
    const KIND: &'static str = "thumbnail_size";
    // As the parent's: the work that used to be its own.
    const POLICY: JobPolicy = ThumbnailArgs::POLICY;
}

/// The unique key of track `track_id`'s thumbnail job for cover `source`: one unfinished
/// job per track and cover. The source is in it (hashed: a path may be longer than an index
/// entry) so that a newer cover is never dropped as a duplicate of the older one's job.
pub fn unique_key(track_id: i64, source: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = hex::encode(Sha256::digest(source.as_bytes()));
    format!("thumbnail:track:{track_id}:cover:{}", &hash[..32])
}

/// The thumbnail job's settings, from `MEDIA_ROOT` and the `THUMBNAIL_*` variables.
#[derive(Debug, Clone)]
pub struct ThumbnailSettings {
    /// `MEDIA_ROOT`.
    pub media_root: PathBuf,
    /// `THUMBNAIL_SIZES`, ascending, without duplicates.
    pub sizes: Vec<u32>,
    /// `THUMBNAIL_QUALITY` (JPEG and WebP, 1–100).
    pub quality: u8,
    /// `THUMBNAIL_MAX_DIMENSION` and `THUMBNAIL_MAX_PIXELS`.
    pub limits: DecodeLimits,
    /// `THUMBNAIL_MAX_SOURCE_BYTES`: the largest source file read (bytes).
    pub max_source_bytes: u64,
    /// `THUMBNAIL_CONCURRENCY`: thumbnail jobs one process runs at once, each on a thread of
    /// the blocking pool.
    pub concurrency: usize,
}

/// Default `THUMBNAIL_MAX_SOURCE_BYTES`: 50 MiB, well above any cover photo, far below
/// what would strain a worker's memory when `THUMBNAIL_CONCURRENCY` of them are read at once.
pub const DEFAULT_MAX_SOURCE_BYTES: u64 = 50 * 1024 * 1024;

/// Largest accepted thumbnail side.
pub const MAX_SIZE: u32 = 4096;

impl ThumbnailSettings {
    /// The defaults (64, 256 and 512 px, quality 85, 16384 px a side, 50 megapixels, one
    /// job per core) under `media_root`.
    pub fn new(media_root: impl Into<PathBuf>) -> Self {
        Self {
            media_root: media_root.into(),
            sizes: vec![64, 256, 512],
            quality: 85,
            limits: DecodeLimits {
                max_dimension: 16_384,
                max_pixels: 50_000_000,
            },
            max_source_bytes: DEFAULT_MAX_SOURCE_BYTES,
            concurrency: default_concurrency(),
        }
    }

    /// Reads the `THUMBNAIL_*` variables (problems are collected in `env`).
    pub fn read(env: &mut Env, media_root: PathBuf) -> Self {
        let raw = env.string(&crate::THUMBNAIL_SIZES);
        let sizes = parse_sizes(&raw).unwrap_or_else(|| {
            env.problem(
                &crate::THUMBNAIL_SIZES,
                &format!("a comma-separated list of sizes in pixels from 1 to {MAX_SIZE}, such as 64,256,512"),
            );
            vec![64, 256, 512]
        });
        let quality = env.positive::<u8>(&crate::THUMBNAIL_QUALITY);
        if quality > 100 {
            env.problem(&crate::THUMBNAIL_QUALITY, "a quality from 1 to 100");
        }
        let limits = DecodeLimits {
            max_dimension: env.positive(&crate::THUMBNAIL_MAX_DIMENSION),
            max_pixels: env.positive(&crate::THUMBNAIL_MAX_PIXELS),
        };
        let max_source_bytes = env.positive(&crate::THUMBNAIL_MAX_SOURCE_BYTES);
        let concurrency = match env.optional(&crate::THUMBNAIL_CONCURRENCY) {
            None => default_concurrency(),
            Some(_) => env.positive(&crate::THUMBNAIL_CONCURRENCY),
        };
        Self {
            media_root,
            sizes,
            quality: quality.min(100),
            limits,
            max_source_bytes,
            concurrency,
        }
    }

    /// The canonical path of `source`, refused if it escapes `MEDIA_ROOT` or does not exist:
    /// what the route checks before enqueueing (400 when [`PathError::is_refused`], 404 when
    /// [`PathError::is_not_found`]).
    pub fn resolve_source(&self, source: &str) -> Result<PathBuf, PathError> {
        resolve_media_path(&self.media_root, source)
    }

    /// `source` in canonical form (see [`canonical_relative`]): how two spellings of the
    /// track's cover are compared, and what is recorded as `thumbnail_source`.
    pub fn canonical_source(&self, source: &str) -> Result<String, PathError> {
        canonical_relative(&self.media_root, source)
    }
}

/// The number of cores, at least 1.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `64,256,512` → `[64, 256, 512]` (sorted, deduplicated); `None` if any entry is not a
/// size from 1 to [`MAX_SIZE`], or the list is empty.
pub fn parse_sizes(raw: &str) -> Option<Vec<u32>> {
    let mut sizes = raw
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_SIZE).contains(n))
        })
        .collect::<Option<Vec<u32>>>()?;
    sizes.sort_unstable();
    sizes.dedup();
    (!sizes.is_empty()).then_some(sizes)
}

/// One recorded thumbnail: its side and its two files, relative to `MEDIA_ROOT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thumbnail {
    /// Side in pixels.
    pub size: u32,
    /// `thumbnails/{track_id}/{size}.jpg`.
    pub jpg: String,
    /// `thumbnails/{track_id}/{size}.webp`.
    pub webp: String,
}

/// What a track records about its thumbnails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackThumbnails {
    /// The source image they were made from.
    pub source: Option<String>,
    /// When (ms since the epoch).
    pub updated_at: Option<Millis>,
    /// Each size, ascending.
    pub thumbnails: Vec<Thumbnail>,
}

/// The directory of track `track_id`'s thumbnails, relative to `MEDIA_ROOT`.
pub fn thumbnail_dir(track_id: i64) -> String {
    format!("thumbnails/{track_id}")
}

/// Track `track_id`'s recorded thumbnails: `None` when there is no such track; an empty
/// list when none were made yet.
pub async fn track_thumbnails(
    conn: &mut DbConn,
    track_id: i64,
) -> Result<Option<TrackThumbnails>, sqlx::Error> {
    let row: Option<(Option<String>, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT thumbnails, thumbnail_source, thumbnails_updated_at FROM tracks WHERE id = $1",
    )
    .bind(track_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(json, source, updated_at)| TrackThumbnails {
        source,
        updated_at,
        thumbnails: json
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default(),
    }))
}

/// The track's cover: `None` when there is no such track, `Some(None)` when it has none.
pub async fn track_cover(
    conn: &mut DbConn,
    track_id: i64,
) -> Result<Option<Option<String>>, sqlx::Error> {
    sqlx::query_scalar("SELECT cover_path FROM tracks WHERE id = $1")
        .bind(track_id)
        .fetch_optional(conn)
        .await
}

fn stale(track_id: i64, source: &str, cover: Option<&str>) -> Outcome {
    Outcome::Skipped {
        reason: format!(
            "{source:?} is no longer track {track_id}'s cover (now {cover:?}): its thumbnails are not made"
        ),
    }
}

/// The parent: checks the track, fans out one [`ThumbnailSizeArgs`] child per size, and
/// records what they made (see the module doc).
pub async fn handle(
    args: ThumbnailArgs,
    ctx: JobContext,
    settings: &Arc<ThumbnailSettings>,
) -> Result<Outcome, JobError> {
    let ThumbnailArgs { track_id, source } = &args;
    let track_id = *track_id;
    let batch = ctx.job_id;
    // A step: the handler is re-run each time one of its children ends, and a check that
    // ran again there could end the job (stale) while other children still run and stage
    // files nobody would remove. After the fan-out, the fan-in's own check decides.
    let cover: Option<Option<String>> = ctx
        .step("check", async || {
            let mut conn = ctx.db().acquire().await?;
            Ok(track_cover(&mut conn, track_id).await?)
        })
        .await?;
    match cover {
        None => {
            return Err(JobError::Permanent(format!(
                "track {track_id} does not exist (deleted?): no thumbnails made"
            )));
        }
        Some(cover) if cover.as_deref() != Some(source.as_str()) => {
            return Ok(stale(track_id, source, cover.as_deref()));
        }
        Some(_) => {}
    }

    let sizes: Vec<u32> = ctx
        .step("plan", async || Ok(settings.sizes.clone()))
        .await?;
    let children = ctx
        .fan_out("sizes", async |children| {
            for &size in &sizes {
                children
                    .enqueue(ThumbnailSizeArgs {
                        track_id,
                        source: source.clone(),
                        size,
                        batch,
                    })
                    .await?;
            }
            Ok(())
        })
        .await?;
    if let Some(error) = failed_children(&sizes, &children) {
        discard_staged(settings, track_id, batch).await;
        return Err(error);
    }

    let outcome = fan_in(&ctx, settings, track_id, source, &sizes).await;
    // Skipped or failed for good: nothing will use the staged files. A transient failure
    // keeps them for the retry, which replays the fan-out and finds them.
    if matches!(
        outcome,
        Ok(Outcome::Skipped { .. }) | Err(JobError::Permanent(_))
    ) {
        discard_staged(settings, track_id, batch).await;
    }
    outcome
}

/// The error of the parent when a child did not succeed: the first such child's own error
/// (what a job making every size would have said), then which size and how many.
fn failed_children(sizes: &[u32], children: &[ChildOutcome]) -> Option<JobError> {
    let failed: Vec<(u32, &ChildOutcome)> = sizes
        .iter()
        .copied()
        .zip(children)
        .filter(|(_, c)| !c.succeeded())
        .collect();
    let (size, first) = failed.first()?;
    let how = match first.state {
        JobState::Cancelled => "cancelled",
        _ => "failed",
    };
    Some(JobError::Permanent(format!(
        "{} (size {size}: thumbnail_size job {} {how}; {} of {} sizes not made)",
        first.error.as_deref().unwrap_or(how),
        first.id,
        failed.len(),
        sizes.len()
    )))
}

/// Records the thumbnails on the track and puts the staged files in place, under the track
/// row's lock and only while `source` is its cover (see the module doc).
async fn fan_in(
    ctx: &JobContext,
    settings: &Arc<ThumbnailSettings>,
    track_id: i64,
    source: &str,
    sizes: &[u32],
) -> Result<Outcome, JobError> {
    let batch = ctx.job_id;
    let (canonical_source, dir) = {
        let settings = Arc::clone(settings);
        let source = source.to_owned();
        blocking(move || {
            let canonical = settings
                .canonical_source(&source)
                .map_err(|e| path_failure(&source, e))?;
            let dir = resolve_media_path(&settings.media_root, &thumbnail_dir(track_id))
                .map_err(|e| WorkError::Path(e).into_job_error(&source))?;
            Ok((canonical, dir))
        })
        .await?
    };
    let rel_dir = thumbnail_dir(track_id);
    let recorded: Vec<Thumbnail> = sizes
        .iter()
        .map(|&size| Thumbnail {
            size,
            jpg: format!("{rel_dir}/{size}.jpg"),
            webp: format!("{rel_dir}/{size}.webp"),
        })
        .collect();
    let json = serde_json::to_string(&recorded).expect("thumbnails encode as JSON");
    let mut tx = ctx.db().begin().await?;
    ctx.fence(&mut tx).await?;
    let updated = sqlx::query(
        "UPDATE tracks SET thumbnails = $1, thumbnail_source = $2, thumbnails_updated_at = $3 \
         WHERE id = $4 AND cover_path = $5",
    )
    .bind(json)
    .bind(canonical_source.as_str())
    .bind(ctx.now_ms())
    .bind(track_id)
    .bind(source)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        drop(tx);
        let mut conn = ctx.db().acquire().await?;
        let cover = track_cover(&mut conn, track_id).await?;
        let Some(cover) = cover else {
            // Deleted while the children worked: take the files away with it.
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(JobError::Permanent(format!(
                "track {track_id} was deleted while its thumbnails were made; files removed"
            )));
        };
        return Ok(stale(track_id, source, cover.as_deref()));
    }
    {
        let (dir, sizes) = (dir.clone(), sizes.to_vec());
        blocking(move || publish(&dir, &sizes, batch)).await?;
    }
    tx.commit().await?;
    // Committed: the staged files are no longer needed by a retry.
    let sizes_done = sizes.to_vec();
    let _ = tokio::task::spawn_blocking(move || remove_staged(&dir, batch)).await;
    tracing::info!(
        track_id,
        source,
        sizes = ?sizes_done,
        "thumbnails made"
    );
    Ok(Outcome::Succeeded)
}

/// A child: makes one size of the cover and stages its two files (see the module doc).
pub async fn handle_size(
    args: ThumbnailSizeArgs,
    _ctx: JobContext,
    settings: &Arc<ThumbnailSettings>,
) -> Result<Outcome, JobError> {
    if !(1..=MAX_SIZE).contains(&args.size) {
        return Err(JobError::Permanent(format!(
            "thumbnail size {} is not from 1 to {MAX_SIZE}",
            args.size
        )));
    }
    let started = std::time::Instant::now();
    let settings = Arc::clone(settings);
    let source = args.source.clone();
    blocking(move || stage_size(&settings, &args).map_err(|e| e.into_job_error(&args.source)))
        .await?;
    tracing::debug!(
        source,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "thumbnail size staged"
    );
    Ok(Outcome::Succeeded)
}

/// Runs `work` on the blocking pool (path checks, decoding, resizing, encoding, file
/// writes: all blocking; at most THUMBNAIL_CONCURRENCY at once, the kinds' concurrency).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| JobError::Transient(format!("thumbnail worker thread failed: {e}")))?
}

/// Removes the files staged by batch `batch` of track `track_id`, if any (never through a
/// thumbnail directory that leads out of `MEDIA_ROOT`, never creating it).
async fn discard_staged(settings: &ThumbnailSettings, track_id: i64, batch: i64) {
    let Ok(dir) = resolve_media_path(&settings.media_root, &thumbnail_dir(track_id)) else {
        return;
    };
    let _ = tokio::task::spawn_blocking(move || {
        remove_staged(&dir, batch);
        // Left empty (the track never got thumbnails): it goes too.
        let _ = std::fs::remove_dir(&dir);
    })
    .await;
}

fn path_failure(source: &str, e: PathError) -> JobError {
    match e {
        PathError::NotFound(_) => JobError::Permanent(format!(
            "source image {source:?} is missing under MEDIA_ROOT; upload it again"
        )),
        e if e.is_refused() => JobError::Permanent(format!("source image refused: {e}")),
        // MEDIA_ROOT unreadable or unmounted, permissions: the operator can fix it.
        e => JobError::Transient(e.to_string()),
    }
}

/// Why [`stage_size`] failed.
#[derive(Debug)]
enum WorkError {
    /// The source path: refused, missing, unreadable.
    Source(PathError),
    /// The source is a directory.
    SourceIsDir,
    /// The source is neither a file nor a directory (a FIFO, a socket, a device).
    SourceNotRegular,
    Render(RenderError),
    /// The thumbnail directory.
    Path(PathError),
    Io(String),
}

impl WorkError {
    fn into_job_error(self, source: &str) -> JobError {
        match self {
            Self::Source(e) => path_failure(source, e),
            Self::SourceIsDir => JobError::Permanent(format!(
                "source image {source:?} is a directory, not a file"
            )),
            Self::SourceNotRegular => JobError::Permanent(format!(
                "source image {source:?} is not a regular file (a pipe, socket or device); upload the image again"
            )),
            Self::Render(e) if e.is_permanent() => {
                JobError::Permanent(format!("source image {source:?}: {e}"))
            }
            Self::Render(e) => JobError::Transient(format!("source image {source:?}: {e}")),
            Self::Path(e) if e.is_refused() => JobError::Permanent(format!(
                "thumbnail directory refused: {e}; check MEDIA_ROOT/thumbnails"
            )),
            Self::Path(e) => JobError::Transient(e.to_string()),
            Self::Io(e) => JobError::Transient(e),
        }
    }
}

/// Opens the source: a regular file inside `MEDIA_ROOT` of at most
/// `THUMBNAIL_MAX_SOURCE_BYTES`, checked from its metadata before it is opened (opening a
/// FIFO would block) and again on the open file (it may have been replaced in between).
fn open_source(
    settings: &ThumbnailSettings,
    source: &str,
) -> Result<(std::fs::File, String), WorkError> {
    let path = settings.resolve_source(source).map_err(WorkError::Source)?;
    let canonical = settings
        .canonical_source(source)
        .map_err(WorkError::Source)?;
    let check = |meta: &std::fs::Metadata| {
        if meta.is_dir() {
            Err(WorkError::SourceIsDir)
        } else if !meta.is_file() {
            Err(WorkError::SourceNotRegular)
        } else if meta.len() > settings.max_source_bytes {
            Err(WorkError::Render(render::source_too_big(
                Some(meta.len()),
                settings.max_source_bytes,
            )))
        } else {
            Ok(())
        }
    };
    let not_found = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => WorkError::Source(PathError::NotFound(source.to_owned())),
        _ => WorkError::Render(RenderError::Io(e)),
    };
    check(&std::fs::metadata(&path).map_err(not_found)?)?;
    let file = std::fs::File::open(&path).map_err(not_found)?;
    check(
        &file
            .metadata()
            .map_err(|e| WorkError::Render(RenderError::Io(e)))?,
    )?;
    Ok((file, canonical))
}

/// The staged name of `{size}.{ext}` for batch `batch`, in the thumbnail directory.
fn staged_name(size: u32, ext: &str, batch: i64) -> String {
    format!(".{size}.{ext}.tmp-{batch}")
}

/// Checks and reads the source, decodes, renders `args.size` and writes its two files under
/// their staged names ([`staged_name`]), synced. Runs on the blocking pool. On failure,
/// nothing of it is left.
fn stage_size(settings: &ThumbnailSettings, args: &ThumbnailSizeArgs) -> Result<(), WorkError> {
    let (file, _canonical) = open_source(settings, &args.source)?;
    let bytes = render::read_source(file, settings.max_source_bytes).map_err(WorkError::Render)?;
    let spec = RenderSpec {
        sizes: vec![args.size],
        quality: settings.quality,
        limits: settings.limits,
    };
    let rendered = render::render(&bytes, &spec).map_err(WorkError::Render)?;
    drop(bytes);
    let Some(r) = rendered.into_iter().find(|r| r.size == args.size) else {
        return Err(WorkError::Io(format!(
            "size {} was not rendered (internal error)",
            args.size
        )));
    };

    let rel_dir = thumbnail_dir(args.track_id);
    let dir = ensure_media_dir(&settings.media_root, &rel_dir).map_err(WorkError::Path)?;
    let tag = args.batch.to_string();
    let mut written: Vec<String> = Vec::with_capacity(2);
    for (ext, bytes) in [("jpg", &r.jpeg), ("webp", &r.webp)] {
        let name = format!("{}.{ext}", r.size);
        match write_temporary(&dir, &name, bytes, &tag) {
            Ok(tmp) => written.push(tmp),
            Err(e) => {
                for tmp in &written {
                    let _ = std::fs::remove_file(dir.join(tmp));
                }
                return Err(WorkError::Io(format!("writing {rel_dir}/{name}: {e}")));
            }
        }
    }
    Ok(())
}

/// Puts batch `batch`'s staged files of `sizes` in place, then removes the sizes no longer
/// configured. Each staged file is hard-linked to a second temporary name, renamed over the
/// final one: the staged file stays until [`remove_staged`], so this can run again (a
/// fan-in whose commit failed is retried).
fn publish(dir: &Path, sizes: &[u32], batch: i64) -> Result<(), JobError> {
    for &size in sizes {
        for ext in ["jpg", "webp"] {
            let staged = dir.join(staged_name(size, ext, batch));
            let name = format!("{size}.{ext}");
            let linked = dir.join(format!(".{name}.publish-{batch}"));
            let _ = std::fs::remove_file(&linked);
            if let Err(e) = std::fs::hard_link(&staged, &linked) {
                return Err(if e.kind() == std::io::ErrorKind::NotFound {
                    JobError::Permanent(format!(
                        "the staged file of {name} is gone (removed from {}): enqueue the thumbnails again",
                        dir.display()
                    ))
                } else {
                    JobError::Transient(format!("putting {name} in place: {e}"))
                });
            }
            if let Err(e) = std::fs::rename(&linked, dir.join(&name)) {
                let _ = std::fs::remove_file(&linked);
                return Err(JobError::Transient(format!(
                    "renaming {name} into place: {e}"
                )));
            }
        }
    }
    remove_other_sizes(dir, sizes);
    Ok(())
}

/// Removes every file batch `batch` staged in `dir` (`.{size}.{jpg|webp}.tmp-{batch}`).
fn remove_staged(dir: &Path, batch: i64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let suffix = format!(".tmp-{batch}");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(suffix.as_str()))
        else {
            continue;
        };
        if let Some((size, ext)) = rest.split_once('.')
            && size.parse::<u32>().is_ok()
            && matches!(ext, "jpg" | "webp")
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `bytes` to `dir/.name.tmp-tag` and syncs it; returns the temporary name. Renamed
/// to `dir/name` later, readers see the old file or the new one, never a partial one, and
/// a crash leaves at worst a temporary file.
fn write_temporary(dir: &Path, name: &str, bytes: &[u8], tag: &str) -> std::io::Result<String> {
    let tmp_name = format!(".{name}.tmp-{tag}");
    let tmp = dir.join(&tmp_name);
    // A leftover of a crashed attempt (or anything planted there, a link included) goes;
    // `create_new` then refuses to follow whatever might appear in between.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| tmp_name)
}

/// Removes `{size}.jpg|webp` files of sizes not in `sizes` (left by an older
/// `THUMBNAIL_SIZES`), so the directory holds what the row records.
fn remove_other_sizes(dir: &Path, sizes: &[u32]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        if matches!(ext, "jpg" | "webp")
            && let Ok(size) = stem.parse::<u32>()
            && !sizes.contains(&size)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn sizes_parse_sorted_and_deduplicated() {
        assert_eq!(parse_sizes("64,256,512"), Some(vec![64, 256, 512]));
        assert_eq!(parse_sizes(" 512, 64 ,64"), Some(vec![64, 512]));
        for bad in ["", "0", "64,,256", "big", "64,5000", "-1"] {
            assert_eq!(parse_sizes(bad), None, "{bad:?}");
        }
    }

    fn read(pairs: &[(&str, &str)]) -> Result<ThumbnailSettings, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut env = Env::from_map(map);
        let s = ThumbnailSettings::read(&mut env, "/media".into());
        env.finish().map(|()| s).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_default_to_the_documented_values() {
        let s = read(&[]).unwrap();
        let d = ThumbnailSettings::new("/media");
        assert_eq!(s.sizes, d.sizes);
        assert_eq!(s.quality, d.quality);
        assert_eq!(s.limits, d.limits);
        assert_eq!(s.concurrency, default_concurrency());
        assert_eq!(
            read(&[("THUMBNAIL_CONCURRENCY", "3")]).unwrap().concurrency,
            3
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("THUMBNAIL_SIZES", "64,huge"),
            ("THUMBNAIL_QUALITY", "101"),
            ("THUMBNAIL_QUALITY", "0"),
            ("THUMBNAIL_MAX_DIMENSION", "-5"),
            ("THUMBNAIL_MAX_PIXELS", "lots"),
            ("THUMBNAIL_CONCURRENCY", "0"),
        ] {
            let err = read(&[(var, value)]).unwrap_err();
            assert!(
                err.contains(&format!("{var} must be")),
                "{var}={value}: {err}"
            );
        }
    }

    #[test]
    fn unique_key_names_the_track_and_its_cover() {
        let args = |source: &str| ThumbnailArgs {
            track_id: 42,
            source: source.into(),
        };
        let a = args("covers/42.png").unique_key().unwrap();
        assert!(a.starts_with("thumbnail:track:42:cover:"), "{a}");
        assert_eq!(args("covers/42.png").unique_key().unwrap(), a);
        assert_ne!(args("covers/42-v2.png").unique_key().unwrap(), a);
        let long = "c/".repeat(2000);
        assert!(args(&long).unique_key().unwrap().len() < 80);
    }

    #[test]
    fn replacing_a_file_leaves_no_temporary_behind_and_stale_sizes_go() {
        let dir = tempfile::tempdir().unwrap();
        for (bytes, tag) in [(b"old", "1-1"), (b"new", "2-1")] {
            let tmp = write_temporary(dir.path(), "64.jpg", bytes, tag).unwrap();
            std::fs::rename(dir.path().join(tmp), dir.path().join("64.jpg")).unwrap();
        }
        std::fs::write(dir.path().join("128.webp"), b"stale").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"keep").unwrap();
        remove_other_sizes(dir.path(), &[64]);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["64.jpg", "notes.txt"]);
        assert_eq!(std::fs::read(dir.path().join("64.jpg")).unwrap(), b"new");
    }
}
