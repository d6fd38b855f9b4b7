//! `thumbnail`: makes square thumbnails of a track's cover image, in JPEG and WebP, at each
//! of `THUMBNAIL_SIZES`, and records them on the track.
//!
//! Enqueued by the web backend after an upload (`POST /v1/tracks/{id}/thumbnails`), one unfinished job
//! per track (unique key `thumbnail:track:{id}`). The handler:
//!
//! 1. checks the track exists;
//! 2. on the blocking pool (so the async workers keep heartbeating and other kinds keep
//!    running; `THUMBNAIL_CONCURRENCY` jobs at once, one per core by default): resolves
//!    `source` under `MEDIA_ROOT` with [`resolve_media_path`] (`..`, absolute paths and
//!    symbolic links out are refused), decodes it within [`DecodeLimits`] (a decompression
//!    bomb is refused from its header, before any pixel is allocated), centre-crops,
//!    resizes (see [`render`]), turns it upright by its EXIF orientation and encodes
//!    `{size}.jpg` and `{size}.webp`;
//! 3. writes each file under a temporary name in `MEDIA_ROOT/thumbnails/{track_id}/`,
//!    syncs it and renames it over the old one, so a reader sees the old file or the new
//!    one, never a part; sizes no longer configured are removed;
//! 4. records the list on the track (`tracks.thumbnails`, JSON), with the source and the
//!    time; if the track was deleted meanwhile, removes the files instead.
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
use crate::media_path::{PathError, ensure_media_dir, resolve_media_path};

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
        Some(unique_key(self.track_id))
    }
}

/// The unique key of track `track_id`'s thumbnail job.
pub fn unique_key(track_id: i64) -> String {
    format!("thumbnail:track:{track_id}")
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
    /// `THUMBNAIL_CONCURRENCY`: thumbnail jobs one process runs at once, each on a thread of
    /// the blocking pool.
    pub concurrency: usize,
}

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
        let concurrency = match env.optional(&crate::THUMBNAIL_CONCURRENCY) {
            None => default_concurrency(),
            Some(_) => env.positive(&crate::THUMBNAIL_CONCURRENCY),
        };
        Self {
            media_root,
            sizes,
            quality: quality.min(100),
            limits,
            concurrency,
        }
    }

    /// The canonical path of `source`, refused if it escapes `MEDIA_ROOT` or does not exist:
    /// what the route checks before enqueueing (400 when [`PathError::is_refused`], 404 when
    /// [`PathError::is_not_found`]).
    pub fn resolve_source(&self, source: &str) -> Result<PathBuf, PathError> {
        resolve_media_path(&self.media_root, source)
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

/// Makes and records the thumbnails of `args.track_id`.
pub async fn handle(
    args: ThumbnailArgs,
    ctx: JobContext,
    settings: &Arc<ThumbnailSettings>,
) -> Result<Outcome, JobError> {
    let ThumbnailArgs { track_id, source } = &args;
    let track_id = *track_id;
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM tracks WHERE id = $1")
        .bind(track_id)
        .fetch_optional(ctx.db())
        .await
        .map_err(|e| JobError::database(&e))?;
    if exists.is_none() {
        return Err(JobError::Permanent(format!(
            "track {track_id} does not exist (deleted?): no thumbnails made"
        )));
    }

    // Path checks, decoding, resizing, encoding and writing: all blocking, all on the
    // blocking pool, at most THUMBNAIL_CONCURRENCY at once (the kind's concurrency).
    let work = {
        let settings = Arc::clone(settings);
        let source = source.clone();
        let tag = format!("{}-{}", ctx.job_id, ctx.attempt);
        move || make_and_write(&settings, track_id, &source, &tag)
    };
    let started = std::time::Instant::now();
    let written = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| JobError::Transient(format!("thumbnail worker thread failed: {e}")))?
        .map_err(|e| e.into_job_error(source))?;

    let json = serde_json::to_string(&written).expect("thumbnails encode as JSON");
    let now = ctx.now_ms();
    let updated = sqlx::query(
        "UPDATE tracks SET thumbnails = $1, thumbnail_source = $2, thumbnails_updated_at = $3 \
         WHERE id = $4",
    )
    .bind(json)
    .bind(source.as_str())
    .bind(now)
    .bind(track_id)
    .execute(ctx.db())
    .await
    .map_err(|e| JobError::database(&e))?
    .rows_affected();
    if updated == 0 {
        // Deleted while we worked: take the files away with it.
        if let Ok(dir) = resolve_media_path(&settings.media_root, &thumbnail_dir(track_id)) {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        return Err(JobError::Permanent(format!(
            "track {track_id} was deleted while its thumbnails were made; files removed"
        )));
    }
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

/// Resolves the source, decodes, renders and writes every file; returns what to record.
/// Runs on the blocking pool. `tag` makes the temporary names of this attempt unique.
fn make_and_write(
    settings: &ThumbnailSettings,
    track_id: i64,
    source: &str,
    tag: &str,
) -> Result<Vec<Thumbnail>, WorkError> {
    let path = settings.resolve_source(source).map_err(WorkError::Source)?;
    if path.is_dir() {
        return Err(WorkError::SourceIsDir);
    }
    let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => WorkError::Source(PathError::NotFound(source.to_owned())),
        _ => WorkError::Render(RenderError::Io(e)),
    })?;
    let bytes = render::read_source(file, &settings.limits).map_err(WorkError::Render)?;
    let rendered = render::render(&bytes, &settings.render_spec()).map_err(WorkError::Render)?;
    drop(bytes);

    let rel_dir = thumbnail_dir(track_id);
    let dir = ensure_media_dir(&settings.media_root, &rel_dir).map_err(WorkError::Path)?;
    let mut recorded = Vec::with_capacity(rendered.len());
    for r in &rendered {
        for (ext, bytes) in [("jpg", &r.jpeg), ("webp", &r.webp)] {
            let name = format!("{}.{ext}", r.size);
            replace_file(&dir, &name, bytes, tag)
                .map_err(|e| WorkError::Io(format!("writing {rel_dir}/{name}: {e}")))?;
        }
        recorded.push(Thumbnail {
            size: r.size,
            jpg: format!("{rel_dir}/{}.jpg", r.size),
            webp: format!("{rel_dir}/{}.webp", r.size),
        });
    }
    remove_other_sizes(&dir, &settings.sizes);
    Ok(recorded)
}

/// Writes `bytes` to `dir/.name.tmp-tag`, syncs it, renames it to `dir/name`: readers see
/// the old file or the new one, never a partial one, and a crash leaves at worst a
/// temporary file.
fn replace_file(dir: &Path, name: &str, bytes: &[u8], tag: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{tag}"));
    // A leftover of a crashed attempt (or anything planted there, a link included) goes;
    // `create_new` then refuses to follow whatever might appear in between.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
    fn unique_key_names_the_track() {
        let args = ThumbnailArgs {
            track_id: 42,
            source: "covers/42.png".into(),
        };
        assert_eq!(args.unique_key().as_deref(), Some("thumbnail:track:42"));
    }

    #[test]
    fn replacing_a_file_leaves_no_temporary_behind_and_stale_sizes_go() {
        let dir = tempfile::tempdir().unwrap();
        replace_file(dir.path(), "64.jpg", b"old", "1-1").unwrap();
        replace_file(dir.path(), "64.jpg", b"new", "2-1").unwrap();
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
