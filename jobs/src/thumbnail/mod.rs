//! `thumbnail`: makes square thumbnails of a track's cover image, in JPEG and WebP, at each
//! of `THUMBNAIL_SIZES`, and records them on the track.
//!
//! Enqueued by the web backend after a cover upload (`POST /v1/tracks/{id}/thumbnails`).
//! The source is always the track's own cover, `tracks.cover_path` (the route refuses any
//! other path): a job cannot make someone else's file this track's public thumbnail. One
//! unfinished job per track and cover (unique key `thumbnail:track:{id}:cover:{hash of the
//! path}`), so a new cover posted while the old one's job waits or runs gets its own job.
//! The handler:
//!
//! 1. checks the track exists and `source` is still its cover (else: skipped, stale);
//! 2. on the blocking pool (so the async workers keep heartbeating and other kinds keep
//!    running; `THUMBNAIL_CONCURRENCY` jobs at once, one per core by default): resolves
//!    `source` under `MEDIA_ROOT` with [`resolve_media_path`] (`..`, absolute paths and
//!    symbolic links out are refused), refuses anything but a regular file (a directory, a
//!    FIFO, a device) and a file over `THUMBNAIL_MAX_SOURCE_BYTES` (from its size, unread),
//!    decodes it within [`DecodeLimits`] (a decompression
//!    bomb is refused from its header, before any pixel is allocated), centre-crops,
//!    resizes (see [`render`]), turns it upright by its EXIF orientation and encodes
//!    `{size}.jpg` and `{size}.webp`;
//! 3. writes each file under a temporary name in `MEDIA_ROOT/thumbnails/{track_id}/` and
//!    syncs it;
//! 4. in one transaction, fenced: records the list on the track (`tracks.thumbnails`,
//!    JSON) with the canonical source and the time, only `WHERE cover_path = source`; that
//!    UPDATE locks the track's row, and only while holding it are the files renamed over
//!    the old ones (a reader sees the old file or the new one, never a part; sizes no longer
//!    configured are removed). So a job of an older cover that finishes after the newer
//!    one's records nothing and replaces no file: its temporary files are removed and it is
//!    skipped. If the track was deleted meanwhile, the files are removed instead.
//!
//! Bad input (missing file, not an image, truncated, unsupported format, over the limits)
//! is a permanent failure whose message says what to do; I/O and database errors are
//! transient. Re-running it for the same source replaces the files and the row. It never
//! changes the track's status.

pub mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::config::Env;
use engine::{DbConn, Job, JobContext, JobError, JobPolicy, Millis, Outcome, RetryPolicy};
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

    fn render_spec(&self) -> RenderSpec {
        RenderSpec {
            sizes: self.sizes.clone(),
            quality: self.quality,
            limits: self.limits,
        }
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

/// Makes and records the thumbnails of `args.track_id`.
pub async fn handle(
    args: ThumbnailArgs,
    ctx: JobContext,
    settings: &Arc<ThumbnailSettings>,
) -> Result<Outcome, JobError> {
    let ThumbnailArgs { track_id, source } = &args;
    let track_id = *track_id;
    let mut conn = ctx.db().acquire().await?;
    let cover = track_cover(&mut conn, track_id).await?;
    drop(conn);
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

    // Path checks, decoding, resizing, encoding and writing: all blocking, all on the
    // blocking pool, at most THUMBNAIL_CONCURRENCY at once (the kind's concurrency).
    let work = {
        let settings = Arc::clone(settings);
        let source = source.clone();
        let tag = format!("{}-{}", ctx.job_id, ctx.attempt);
        move || make_and_stage(&settings, track_id, &source, &tag)
    };
    let started = std::time::Instant::now();
    let staged = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| JobError::Transient(format!("thumbnail worker thread failed: {e}")))?
        .map_err(|e| e.into_job_error(source))?;

    // Record, and put the files in place, under the track row's lock and only while
    // `source` is its cover (see the module doc).
    let json = serde_json::to_string(&staged.recorded).expect("thumbnails encode as JSON");
    let mut tx = ctx.db().begin().await?;
    ctx.fence(&mut tx).await?;
    let updated = sqlx::query(
        "UPDATE tracks SET thumbnails = $1, thumbnail_source = $2, thumbnails_updated_at = $3 \
         WHERE id = $4 AND cover_path = $5",
    )
    .bind(json)
    .bind(staged.canonical_source.as_str())
    .bind(ctx.now_ms())
    .bind(track_id)
    .bind(source.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        drop(tx);
        let mut conn = ctx.db().acquire().await?;
        let cover = track_cover(&mut conn, track_id).await?;
        drop(staged);
        let Some(cover) = cover else {
            // Deleted while we worked: take the files away with it.
            if let Ok(dir) = resolve_media_path(&settings.media_root, &thumbnail_dir(track_id)) {
                let _ = tokio::fs::remove_dir_all(dir).await;
            }
            return Err(JobError::Permanent(format!(
                "track {track_id} was deleted while its thumbnails were made; files removed"
            )));
        };
        return Ok(stale(track_id, source, cover.as_deref()));
    }
    let sizes = settings.sizes.clone();
    tokio::task::spawn_blocking(move || staged.publish(&sizes))
        .await
        .map_err(|e| JobError::Transient(format!("thumbnail worker thread failed: {e}")))?
        .map_err(JobError::Transient)?;
    tx.commit().await?;
    tracing::info!(
        track_id,
        source = source.as_str(),
        sizes = ?settings.sizes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "thumbnails made"
    );
    Ok(Outcome::Succeeded)
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

/// Why [`make_and_write`] failed.
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

/// Thumbnails written under temporary names, waiting to be put in place; dropped
/// unpublished, they are removed.
struct Staged {
    dir: PathBuf,
    /// (temporary name, final name) in `dir`.
    files: Vec<(String, String)>,
    recorded: Vec<Thumbnail>,
    canonical_source: String,
}

impl Staged {
    /// Renames every file over its final name, then removes the sizes no longer configured.
    fn publish(mut self, sizes: &[u32]) -> Result<(), String> {
        for (tmp, name) in std::mem::take(&mut self.files) {
            if let Err(e) = std::fs::rename(self.dir.join(&tmp), self.dir.join(&name)) {
                let _ = std::fs::remove_file(self.dir.join(&tmp));
                return Err(format!("renaming {name} into place: {e}"));
            }
        }
        remove_other_sizes(&self.dir, sizes);
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(self.dir.join(tmp));
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

/// Checks and reads the source, decodes, renders and writes every file under a temporary
/// name; returns them with what to record. Runs on the blocking pool. `tag` makes the
/// temporary names of this attempt unique.
fn make_and_stage(
    settings: &ThumbnailSettings,
    track_id: i64,
    source: &str,
    tag: &str,
) -> Result<Staged, WorkError> {
    let (file, canonical_source) = open_source(settings, source)?;
    let bytes = render::read_source(file, settings.max_source_bytes).map_err(WorkError::Render)?;
    let rendered = render::render(&bytes, &settings.render_spec()).map_err(WorkError::Render)?;
    drop(bytes);

    let rel_dir = thumbnail_dir(track_id);
    let dir = ensure_media_dir(&settings.media_root, &rel_dir).map_err(WorkError::Path)?;
    let mut staged = Staged {
        dir,
        files: Vec::with_capacity(rendered.len() * 2),
        recorded: Vec::with_capacity(rendered.len()),
        canonical_source,
    };
    for r in &rendered {
        for (ext, bytes) in [("jpg", &r.jpeg), ("webp", &r.webp)] {
            let name = format!("{}.{ext}", r.size);
            let tmp = write_temporary(&staged.dir, &name, bytes, tag)
                .map_err(|e| WorkError::Io(format!("writing {rel_dir}/{name}: {e}")))?;
            staged.files.push((tmp, name));
        }
        staged.recorded.push(Thumbnail {
            size: r.size,
            jpg: format!("{rel_dir}/{}.jpg", r.size),
            webp: format!("{rel_dir}/{}.webp", r.size),
        });
    }
    Ok(staged)
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
