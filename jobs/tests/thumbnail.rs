//! `thumbnail` end to end on both backends: real images generated here, real tracks rows,
//! real files under a temporary MEDIA_ROOT, the real handler run by the engine (and by a
//! worker pool for the burst test).

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use engine::config::Env;
use engine::testing::{DrainReport, TestDb, drain};
use engine::worker::WorkerPool;
use engine::{
    Clock, Engine, Enqueued, Job, JobError, JobPolicy, JobState, NewJob, Outcome, Registry,
    backend_tests,
};
use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ExtendedColorType, ImageEncoder, ImageFormat, Rgb, RgbImage};
use jobs::thumbnail::{Thumbnail, ThumbnailArgs, ThumbnailSizeArgs, track_thumbnails};
use jobs::{JobsConfig, register_all};
use serde::{Deserialize, Serialize};

struct World {
    engine: Engine,
    clock: Clock,
    media: tempfile::TempDir,
    /// A directory beside MEDIA_ROOT: what must never be read or written by a job.
    outside: tempfile::TempDir,
}

fn config(media: &Path, extra: &[(&str, &str)]) -> JobsConfig {
    let mut vars: HashMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.insert("MEDIA_ROOT".into(), media.to_string_lossy().into_owned());
    let mut env = Env::from_map(vars);
    let config = JobsConfig::read(&mut env);
    env.finish().expect("valid test configuration");
    config
}

fn world(t: &TestDb) -> World {
    world_with(t, &[])
}

fn world_with(t: &TestDb, extra: &[(&str, &str)]) -> World {
    let media = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let mut registry = Registry::new();
    register_all(&mut registry, &config(media.path(), extra));
    let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap());
    World {
        engine: t.engine(registry, clock.clone()),
        clock,
        media,
        outside,
    }
}

impl World {
    async fn track(&self) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO tracks (status, file_path, created_at, updated_at) \
             VALUES ('processing', 'uploads/a.mp3', $1, $1) RETURNING id",
        )
        .bind(self.clock.now_ms())
        .fetch_one(self.engine.db())
        .await
        .unwrap()
    }

    fn put(&self, relative: &str, bytes: &[u8]) {
        let path = self.media.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Records `source` as the track's cover, as the web backend does on upload.
    async fn set_cover(&self, track_id: i64, source: &str) {
        sqlx::query("UPDATE tracks SET cover_path = $1 WHERE id = $2")
            .bind(source)
            .bind(track_id)
            .execute(self.engine.db())
            .await
            .unwrap();
    }

    /// Records `source` as the cover and runs the job for it through the engine (its
    /// children included); returns how it ended, as its handler said.
    async fn run(&self, track_id: i64, source: &str) -> Result<Outcome, JobError> {
        self.set_cover(track_id, source).await;
        run_through(
            &self.engine,
            ThumbnailArgs {
                track_id,
                source: source.into(),
            },
        )
        .await
    }

    async fn recorded(&self, track_id: i64) -> jobs::thumbnail::TrackThumbnails {
        let mut conn = self.engine.db().acquire().await.unwrap();
        track_thumbnails(&mut conn, track_id)
            .await
            .unwrap()
            .unwrap()
    }

    async fn status(&self, track_id: i64) -> String {
        sqlx::query_scalar("SELECT status FROM tracks WHERE id = $1")
            .bind(track_id)
            .fetch_one(self.engine.db())
            .await
            .unwrap()
    }

    fn load(&self, relative: &str) -> DynamicImage {
        image::open(self.media.path().join(relative)).unwrap()
    }

    /// Enqueues a job and runs everything due; returns (status, attempts, last_error),
    /// counting the attempts that did something (not those that ended waiting for its
    /// children).
    async fn through_engine(&self, track_id: i64, source: &str) -> (String, i64, String) {
        self.set_cover(track_id, source).await;
        let id = self
            .engine
            .enqueue(ThumbnailArgs {
                track_id,
                source: source.into(),
            })
            .await
            .unwrap()
            .id();
        settle(&self.engine).await;
        sqlx::query_as(
            "SELECT status, (SELECT COUNT(*) FROM job_attempts_all a \
                 WHERE a.job_id = jobs.id AND a.outcome <> 'snoozed'), \
             COALESCE(last_error, '') FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(self.engine.db())
        .await
        .unwrap()
    }

    fn thumbnail_files(&self, track_id: i64) -> Vec<String> {
        let dir = self.media.path().join(format!("thumbnails/{track_id}"));
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

const RED: [u8; 3] = [220, 30, 30];
const GREEN: [u8; 3] = [30, 200, 30];
const BLUE: [u8; 3] = [30, 30, 220];
const WHITE: [u8; 3] = [250, 250, 250];

/// Quadrants red | green over blue | white.
fn quadrants(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb(match (x < w / 2, y < h / 2) {
            (true, true) => RED,
            (false, true) => GREEN,
            (true, false) => BLUE,
            (false, false) => WHITE,
        })
    })
}

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

/// A JPEG carrying an EXIF Orientation tag.
fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let mut exif = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = Vec::new();
    let mut enc = JpegEncoder::new_with_quality(&mut out, 90);
    enc.set_exif_metadata(exif).unwrap();
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        ExtendedColorType::Rgb8,
    )
    .unwrap();
    out
}

/// A real PNG whose header is patched to claim `w`x`h`: what a decompression bomb looks
/// like to a decoder before it allocates (a fully inflating 50,000 x 50,000 file would
/// take 2.5 GB to generate).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = encode(&RgbImage::new(64, 64), ImageFormat::Png);
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) < 40)
}

fn at(img: &DynamicImage, x: u32, y: u32) -> [u8; 3] {
    img.to_rgb8().get_pixel(x, y).0
}

fn permanent(result: Result<Outcome, JobError>) -> String {
    match result {
        Err(JobError::Permanent(msg)) => msg,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

/// [`drain`] until no job is due or running. One drain can end just as the last child of a
/// parent ends and makes it due (the parent's kind had already found nothing due in that
/// round); the next drain runs it.
async fn settle(engine: &Engine) -> DrainReport {
    let mut total = DrainReport::default();
    for _ in 0..50 {
        let report = drain(engine).await;
        total.succeeded += report.succeeded;
        total.retried += report.retried;
        total.failed += report.failed;
        let busy: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE status = 'running' \
             OR (status IN ('pending', 'retrying') AND run_at <= $1)",
        )
        .bind(engine.clock().now_ms())
        .fetch_one(engine.db())
        .await
        .unwrap();
        if busy == 0 {
            return total;
        }
    }
    panic!("jobs still due after 50 drains");
}

/// Enqueues `args` on `engine` and runs everything due (its children included); returns
/// how the job ended: `Ok` with its outcome, `Err(Permanent)` with its error when it failed.
async fn run_through(engine: &Engine, args: ThumbnailArgs) -> Result<Outcome, JobError> {
    let id = engine.enqueue(args).await.unwrap().id();
    settle(engine).await;
    ended(engine, id).await
}

/// How job `id` ended: `Ok` with its outcome, `Err(Permanent)` with its error when it failed.
async fn ended(engine: &Engine, id: i64) -> Result<Outcome, JobError> {
    let job = engine::admin::get_job(engine.db(), id).await.unwrap();
    let last = job.attempts.last().expect("the job ran");
    match (job.job.status, last.outcome.as_deref()) {
        (JobState::Succeeded, Some("succeeded")) => Ok(Outcome::Succeeded),
        (JobState::Succeeded, Some("skipped")) => Ok(Outcome::Skipped {
            reason: last.error.clone().unwrap_or_default(),
        }),
        (JobState::Failed, _) => Err(JobError::Permanent(last.error.clone().unwrap_or_default())),
        (status, outcome) => Err(JobError::Transient(format!(
            "job {id} is {status:?} after {outcome:?}: {:?}",
            last.error
        ))),
    }
}

backend_tests!(
    schema = jobs::schema::migrator;
    a_newer_cover_gets_its_own_job_and_wins_even_when_the_older_job_runs_last,
    pipes_and_oversized_sources_fail_permanently_unread,
    each_format_is_made_into_every_size_and_recorded,
    an_exif_rotated_jpeg_comes_out_upright,
    thumbnails_are_centred_square_crops,
    rerunning_replaces_the_thumbnails_atomically,
    a_decompression_bomb_fails_permanently_with_its_message,
    a_truncated_file_fails_permanently_with_its_message,
    missing_and_non_image_sources_fail_permanently,
    paths_escaping_media_root_are_refused,
    one_unfinished_job_per_track,
    a_missing_track_fails_permanently,
    a_burst_of_thumbnails_does_not_hold_up_other_kinds,
    each_size_is_made_by_a_child_job_and_all_are_recorded,
    a_child_that_fails_fails_the_job_and_leaves_nothing_staged,
    a_cover_changed_while_the_children_ran_skips_and_removes_their_files,
);

async fn each_format_is_made_into_every_size_and_recorded(t: TestDb) {
    let w = world(&t);
    for (format, ext) in [
        (ImageFormat::Jpeg, "jpg"),
        (ImageFormat::Png, "png"),
        (ImageFormat::WebP, "webp"),
        (ImageFormat::Gif, "gif"),
    ] {
        let track = w.track().await;
        // The name says nothing: the content tells the format.
        let source = format!("covers/{track}.{ext}.upload");
        w.put(&source, &encode(&quadrants(640, 480), format));
        assert_eq!(w.run(track, &source).await, Ok(Outcome::Succeeded));

        let rec = w.recorded(track).await;
        assert_eq!(rec.source.as_deref(), Some(source.as_str()));
        assert_eq!(rec.updated_at, Some(w.clock.now_ms()));
        let expected: Vec<Thumbnail> = [64, 256, 512]
            .into_iter()
            .map(|size| Thumbnail {
                size,
                jpg: format!("thumbnails/{track}/{size}.jpg"),
                webp: format!("thumbnails/{track}/{size}.webp"),
            })
            .collect();
        assert_eq!(rec.thumbnails, expected, "{format:?}");
        for thumb in &rec.thumbnails {
            for (path, fmt) in [
                (&thumb.jpg, ImageFormat::Jpeg),
                (&thumb.webp, ImageFormat::WebP),
            ] {
                let bytes = std::fs::read(w.media.path().join(path)).unwrap();
                assert_eq!(image::guess_format(&bytes).unwrap(), fmt, "{path}");
                let img = image::load_from_memory(&bytes).unwrap();
                assert_eq!(
                    (img.width(), img.height()),
                    (thumb.size, thumb.size),
                    "{path}"
                );
            }
        }
        assert_eq!(
            w.thumbnail_files(track),
            [
                "256.jpg", "256.webp", "512.jpg", "512.webp", "64.jpg", "64.webp"
            ],
            "exactly the recorded files, no temporary left"
        );
        assert_eq!(w.status(track).await, "processing", "status is not ours");
    }
    let transitions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM transitions")
        .fetch_one(w.engine.db())
        .await
        .unwrap();
    assert_eq!(transitions, 0);
}

async fn an_exif_rotated_jpeg_comes_out_upright(t: TestDb) {
    let w = world(&t);
    let track = w.track().await;
    // Upright: 800x600 quadrants. The camera stored it turned a quarter to the left
    // (600x800) with Orientation 6: "rotate 90° clockwise to display".
    let upright = DynamicImage::ImageRgb8(quadrants(800, 600));
    w.put(
        "covers/phone.jpg",
        &jpeg_with_orientation(&upright.rotate270().to_rgb8(), 6),
    );
    w.run(track, "covers/phone.jpg").await.unwrap();
    for ext in ["jpg", "webp"] {
        let t = w.load(&format!("thumbnails/{track}/256.{ext}"));
        assert_eq!((t.width(), t.height()), (256, 256));
        for (x, y, want) in [
            (20, 20, RED),
            (235, 20, GREEN),
            (20, 235, BLUE),
            (235, 235, WHITE),
        ] {
            assert!(
                close(at(&t, x, y), want),
                "{ext} at {x},{y}: {:?} is not {want:?}",
                at(&t, x, y)
            );
        }
    }
}

async fn thumbnails_are_centred_square_crops(t: TestDb) {
    let w = world(&t);
    let track = w.track().await;
    // 900x300 in three bands: the centred square is exactly the middle band.
    let bands = RgbImage::from_fn(900, 300, |x, _| {
        Rgb(match x {
            0..300 => RED,
            300..600 => GREEN,
            _ => BLUE,
        })
    });
    w.put("covers/wide.png", &encode(&bands, ImageFormat::Png));
    w.run(track, "covers/wide.png").await.unwrap();
    for size in [64u32, 256, 512] {
        let t = w.load(&format!("thumbnails/{track}/{size}.webp"));
        for (x, y) in [
            (0, 0),
            (size - 1, 0),
            (size / 2, size / 2),
            (0, size - 1),
            (size - 1, size - 1),
        ] {
            assert!(
                close(at(&t, x, y), GREEN),
                "{size} at {x},{y}: {:?}",
                at(&t, x, y)
            );
        }
    }
}

async fn rerunning_replaces_the_thumbnails_atomically(t: TestDb) {
    let w = world(&t);
    let track = w.track().await;
    let solid = |c: [u8; 3]| encode(&RgbImage::from_pixel(700, 500, Rgb(c)), ImageFormat::Png);
    w.put("covers/same.png", &solid(RED));
    w.run(track, "covers/same.png").await.unwrap();
    let first_at = w.recorded(track).await.updated_at.unwrap();
    let inode = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(w.media.path().join(p)).unwrap().ino()
    };
    let old_inode = inode(&format!("thumbnails/{track}/512.jpg"));
    // Held open, the old file keeps its inode: the filesystem cannot hand its number to a
    // new file (which made this check flaky), and what it holds shows whether it was
    // rewritten in place.
    let mut old_file =
        std::fs::File::open(w.media.path().join(format!("thumbnails/{track}/512.jpg"))).unwrap();

    // A reader keeps opening the files while the job is re-run: every read must be a
    // whole image, old or new, never a part.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads) = (Arc::clone(&stop), Arc::clone(&reads));
        let dir = w.media.path().join(format!("thumbnails/{track}"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for name in ["512.jpg", "512.webp", "64.jpg"] {
                    let bytes = std::fs::read(dir.join(name)).expect("the file is always there");
                    let img = image::load_from_memory(&bytes)
                        .unwrap_or_else(|e| panic!("{name} read half-written: {e}"));
                    assert!(img.width() > 0);
                    reads.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    for colour in [BLUE, GREEN, BLUE, GREEN, BLUE] {
        // Same source path, new content (the user re-uploaded the cover).
        w.put("covers/same.png", &solid(colour));
        w.clock.advance(Duration::from_secs(1));
        w.run(track, "covers/same.png").await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().expect("the reader never saw a partial file");
    assert!(reads.load(Ordering::SeqCst) > 0);

    for name in ["64.jpg", "256.webp", "512.jpg"] {
        let t = w.load(&format!("thumbnails/{track}/{name}"));
        assert!(close(at(&t, 10, 10), BLUE), "{name} shows the last upload");
    }
    assert_ne!(
        inode(&format!("thumbnails/{track}/512.jpg")),
        old_inode,
        "replaced by a rename, not rewritten in place"
    );
    let mut old_bytes = Vec::new();
    std::io::Read::read_to_end(&mut old_file, &mut old_bytes).unwrap();
    let old_image = image::load_from_memory(&old_bytes).unwrap();
    assert!(
        close(at(&old_image, 10, 10), RED),
        "the old file still holds the first image"
    );
    let rec = w.recorded(track).await;
    assert_eq!(rec.updated_at, Some(first_at + 5_000));
    assert_eq!(rec.thumbnails.len(), 3);
    assert_eq!(w.thumbnail_files(track).len(), 6, "no temporary files left");

    // With fewer sizes configured, the row and the directory hold just those.
    let mut registry = Registry::new();
    register_all(
        &mut registry,
        &config(w.media.path(), &[("THUMBNAIL_SIZES", "128")]),
    );
    let engine = t.engine(registry, w.clock.clone());
    let done = run_through(
        &engine,
        ThumbnailArgs {
            track_id: track,
            source: "covers/same.png".into(),
        },
    )
    .await;
    assert_eq!(done, Ok(Outcome::Succeeded));
    assert_eq!(w.thumbnail_files(track), ["128.jpg", "128.webp"]);
    let sizes: Vec<u32> = w
        .recorded(track)
        .await
        .thumbnails
        .iter()
        .map(|t| t.size)
        .collect();
    assert_eq!(sizes, [128]);
}

async fn a_decompression_bomb_fails_permanently_with_its_message(t: TestDb) {
    let w = world(&t);
    let track = w.track().await;
    w.put("covers/bomb.png", &png_claiming(50_000, 50_000));
    let (status, attempts, error) = w.through_engine(track, "covers/bomb.png").await;
    assert_eq!((status.as_str(), attempts), ("failed", 1), "{error}");
    assert!(error.contains("image too large"), "{error}");
    assert!(error.contains("THUMBNAIL_MAX_DIMENSION"), "{error}");
    assert!(
        error.contains("scale it down and upload it again"),
        "{error}"
    );
    assert!(error.contains("covers/bomb.png"), "names the file: {error}");

    // Under the side limit but over the pixel count (100 megapixels).
    w.put("covers/big.png", &png_claiming(10_000, 10_000));
    let track2 = w.track().await;
    let (status, _, error) = w.through_engine(track2, "covers/big.png").await;
    assert_eq!(status, "failed");
    assert!(
        error.contains("100.0 megapixels, over the limit of 50.0 (THUMBNAIL_MAX_PIXELS)"),
        "{error}"
    );
    assert!(w.thumbnail_files(track).is_empty() && w.thumbnail_files(track2).is_empty());
    assert!(w.recorded(track).await.thumbnails.is_empty());
}

async fn a_truncated_file_fails_permanently_with_its_message(t: TestDb) {
    let w = world(&t);
    for format in [ImageFormat::Jpeg, ImageFormat::Png] {
        let track = w.track().await;
        let whole = encode(&quadrants(600, 400), format);
        let source = format!("covers/cut-{track}");
        w.put(&source, &whole[..whole.len() * 2 / 3]);
        let (status, attempts, error) = w.through_engine(track, &source).await;
        assert_eq!((status.as_str(), attempts), ("failed", 1), "{error}");
        assert!(error.contains("truncated"), "{error}");
        assert!(error.contains("upload the complete file again"), "{error}");
        assert!(w.thumbnail_files(track).is_empty());
    }
}

async fn missing_and_non_image_sources_fail_permanently(t: TestDb) {
    let w = world(&t);
    let track = w.track().await;
    let msg = permanent(w.run(track, "covers/never-uploaded.png").await);
    assert!(
        msg.contains("is missing under MEDIA_ROOT; upload it again"),
        "{msg}"
    );

    w.put(
        "covers/song.png",
        b"ID3\x04\0\0\0\0\0\0 an mp3 uploaded as a cover",
    );
    let msg = permanent(w.run(track, "covers/song.png").await);
    assert!(msg.contains("not an image"), "{msg}");

    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&[0; 100]);
    w.put("covers/old.bmp", &bmp);
    let msg = permanent(w.run(track, "covers/old.bmp").await);
    assert!(msg.contains("unsupported image format BMP"), "{msg}");
    assert!(msg.contains("only JPEG, PNG, WebP and GIF"), "{msg}");

    w.put("covers/dir/keep", b"");
    let msg = permanent(w.run(track, "covers/dir").await);
    assert!(!msg.is_empty());
    assert!(w.recorded(track).await.thumbnails.is_empty());
}

async fn paths_escaping_media_root_are_refused(t: TestDb) {
    let w = world(&t);
    let track = w.track().await;
    // A perfectly good image, outside MEDIA_ROOT.
    let secret = w.outside.path().join("secret.png");
    std::fs::write(&secret, encode(&quadrants(100, 100), ImageFormat::Png)).unwrap();
    let up = format!(
        "../{}/secret.png",
        w.outside.path().file_name().unwrap().to_string_lossy()
    );
    std::os::unix::fs::symlink(&secret, w.media.path().join("link.png")).unwrap();
    std::os::unix::fs::symlink(w.outside.path(), w.media.path().join("covers")).unwrap();
    for source in [
        up.as_str(),
        secret.to_str().unwrap(),
        "link.png",
        "covers/secret.png",
    ] {
        let msg = permanent(w.run(track, source).await);
        assert!(msg.starts_with("source image refused"), "{source}: {msg}");
    }
    // Through the engine: one attempt, failed.
    let (status, attempts, _) = w.through_engine(track, "link.png").await;
    assert_eq!((status.as_str(), attempts), ("failed", 1));

    // The output directory leading out is refused too, and nothing is written there.
    std::fs::remove_file(w.media.path().join("covers")).unwrap();
    w.put(
        "covers/ok.png",
        &encode(&quadrants(100, 100), ImageFormat::Png),
    );
    std::os::unix::fs::symlink(w.outside.path(), w.media.path().join("thumbnails")).unwrap();
    let msg = permanent(w.run(track, "covers/ok.png").await);
    assert!(msg.contains("thumbnail directory refused"), "{msg}");
    let outside: Vec<_> = std::fs::read_dir(w.outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside,
        ["secret.png"],
        "nothing written outside MEDIA_ROOT"
    );
    assert!(w.recorded(track).await.thumbnails.is_empty());
}

async fn one_unfinished_job_per_track(t: TestDb) {
    let w = world(&t);
    let (a, b) = (w.track().await, w.track().await);
    w.put(
        "covers/a.png",
        &encode(&quadrants(120, 120), ImageFormat::Png),
    );
    let args = |track_id| ThumbnailArgs {
        track_id,
        source: "covers/a.png".into(),
    };
    let first = w.engine.enqueue(args(a)).await.unwrap();
    assert!(matches!(first, Enqueued::Inserted(_)));
    assert_eq!(
        w.engine.enqueue(args(a)).await.unwrap(),
        Enqueued::Existing(first.id())
    );
    let key: Option<String> = sqlx::query_scalar("SELECT unique_key FROM jobs WHERE id = $1")
        .bind(first.id())
        .fetch_one(w.engine.db())
        .await
        .unwrap();
    assert_eq!(
        key,
        Some(jobs::thumbnail::unique_key(a, "covers/a.png")),
        "{key:?}"
    );
    w.set_cover(a, "covers/a.png").await;
    w.set_cover(b, "covers/a.png").await;
    assert!(matches!(
        w.engine.enqueue(args(b)).await.unwrap(),
        Enqueued::Inserted(_)
    ));
    assert_eq!(settle(&w.engine).await.failed, 0);
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM jobs WHERE kind = 'thumbnail' ORDER BY id")
            .fetch_all(w.engine.db())
            .await
            .unwrap();
    assert_eq!(statuses, ["succeeded", "succeeded"]);
    // Finished: the track may be done again (a new upload).
    assert!(matches!(
        w.engine.enqueue(args(a)).await.unwrap(),
        Enqueued::Inserted(id) if id != first.id()
    ));
}

async fn a_missing_track_fails_permanently(t: TestDb) {
    let w = world(&t);
    w.put(
        "covers/a.png",
        &encode(&quadrants(120, 120), ImageFormat::Png),
    );
    let msg = permanent(w.run(999_999, "covers/a.png").await);
    assert!(msg.contains("track 999999 does not exist"), "{msg}");
    assert!(w.thumbnail_files(999_999).is_empty());
}

/// A job that does nothing: the other kinds' stand-in in the burst test.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "noop";
    const POLICY: JobPolicy = JobPolicy {
        concurrency: 1,
        ..JobPolicy::DEFAULT
    };
}

async fn a_burst_of_thumbnails_does_not_hold_up_other_kinds(t: TestDb) {
    const BURST: usize = 50;
    let media = tempfile::tempdir().unwrap();
    let mut registry = Registry::new();
    register_all(
        &mut registry,
        &config(media.path(), &[("THUMBNAIL_CONCURRENCY", "2")]),
    );
    registry.register::<Noop, _, _>(|_, _| async { Ok(Outcome::Succeeded) });
    // The test runtime has 2 worker threads: as many as thumbnails run at once. Were the
    // handler to block one of them (reading, decoding, resizing on the async thread), the
    // burst would hold every worker and nothing else would run.
    let engine = t.engine(registry, Clock::system());

    // A moderately large photo-like JPEG (1000x700, noisy so it does not compress away):
    // each job takes far longer to decode, resize and encode it than a no-op takes to run.
    // (Sources must be regular files: a pipe, which could hold the jobs shut, is refused.)
    let img = RgbImage::from_fn(1000, 700, |x, y| {
        let n = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 24;
        Rgb([
            (x / 10) as u8 ^ n as u8,
            (y / 7) as u8,
            ((x + y) / 16) as u8,
        ])
    });
    let jpeg = Arc::new(encode(&img, ImageFormat::Jpeg));
    std::fs::create_dir_all(media.path().join("covers")).unwrap();
    let mut tracks = Vec::with_capacity(BURST);
    for _ in 0..BURST {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO tracks (status, file_path, created_at, updated_at) \
             VALUES ('processing', 'uploads/a.mp3', 0, 0) RETURNING id",
        )
        .fetch_one(engine.db())
        .await
        .unwrap();
        let source = format!("covers/{id}.jpg");
        std::fs::write(media.path().join(&source), jpeg.as_slice()).unwrap();
        sqlx::query("UPDATE tracks SET cover_path = $1 WHERE id = $2")
            .bind(&source)
            .bind(id)
            .execute(engine.db())
            .await
            .unwrap();
        tracks.push((id, source));
    }
    for (track_id, source) in &tracks {
        engine
            .enqueue(ThumbnailArgs {
                track_id: *track_id,
                source: source.clone(),
            })
            .await
            .unwrap();
    }
    let count_kind = |kind: &'static str, status: &'static str| {
        let engine = engine.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM jobs WHERE kind = $1 AND status = $2",
            )
            .bind(kind)
            .bind(status)
            .fetch_one(engine.db())
            .await
            .unwrap()
        }
    };
    let count = |status: &'static str| count_kind("thumbnail", status);

    let pool = WorkerPool::start(&engine);
    // The burst is under way: both slots hold a child making a size (the work; a parent
    // holds no worker while its children run).
    while count_kind("thumbnail_size", "running").await < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let enqueued = Instant::now();
    let noop = engine.enqueue(Noop {}).await.unwrap().id();
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
            .bind(noop)
            .fetch_one(engine.db())
            .await
            .unwrap();
        if status == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let noop_latency = enqueued.elapsed();
    let unfinished = BURST as i64 - count("succeeded").await - count("failed").await;
    assert!(
        unfinished > BURST as i64 / 2,
        "the no-op job only ran after {} of {BURST} thumbnail jobs: they blocked the async workers",
        BURST as i64 - unfinished
    );

    // Then the burst itself, for real: every thumbnail made.
    let released = Instant::now();
    while count("succeeded").await + count("failed").await < BURST as i64 {
        assert!(
            released.elapsed() < Duration::from_secs(120),
            "the burst did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let burst = released.elapsed();
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    eprintln!(
        "{:?}: no-op done {noop_latency:?} after enqueue while {BURST} thumbnail jobs were \
         held; then the burst took {burst:?}",
        t.backend
    );
    assert_eq!(
        count("succeeded").await,
        BURST as i64,
        "every thumbnail made"
    );
    for (track_id, _) in tracks.iter().step_by(7) {
        let dir = media.path().join(format!("thumbnails/{track_id}"));
        assert!(dir.join("512.webp").exists() && dir.join("64.jpg").exists());
    }
}

async fn a_newer_cover_gets_its_own_job_and_wins_even_when_the_older_job_runs_last(t: TestDb) {
    // Arrange: cover A is posted; its job waits. The owner uploads cover B.
    let w = world(&t);
    let track = w.track().await;
    let solid = |c: [u8; 3]| encode(&RgbImage::from_pixel(300, 300, Rgb(c)), ImageFormat::Png);
    w.put("covers/a.png", &solid(RED));
    w.put("covers/b.png", &solid(BLUE));
    let args = |source: &str| ThumbnailArgs {
        track_id: track,
        source: source.into(),
    };
    w.set_cover(track, "covers/a.png").await;
    // A's job is due in a minute: B's runs first.
    let job_a = w
        .engine
        .enqueue(NewJob::new(args("covers/a.png")).run_at(w.clock.now_ms() + 60_000))
        .await
        .unwrap();
    w.set_cover(track, "covers/b.png").await;

    // Act: B is posted while A's job is pending, B's job runs, then A's.
    let job_b = w.engine.enqueue(args("covers/b.png")).await.unwrap();
    let report = settle(&w.engine).await;
    assert_eq!(report.failed, 0, "{report:?}");
    let b = ended(&w.engine, job_b.id()).await;
    w.clock.advance(Duration::from_secs(60));
    let report = settle(&w.engine).await;
    assert_eq!(report.failed, 0, "{report:?}");
    let a = ended(&w.engine, job_a.id()).await;

    // Assert: B got its own job; A's, running last, changed nothing.
    assert!(matches!(job_a, Enqueued::Inserted(_)));
    assert!(
        matches!(job_b, Enqueued::Inserted(id) if id != job_a.id()),
        "{job_b:?}"
    );
    assert_eq!(b, Ok(Outcome::Succeeded));
    assert!(
        matches!(&a, Ok(Outcome::Skipped { reason }) if reason.contains("no longer track")),
        "{a:?}"
    );
    for name in ["64.jpg", "512.webp"] {
        let img = w.load(&format!("thumbnails/{track}/{name}"));
        assert!(close(at(&img, 10, 10), BLUE), "{name} is not from cover B");
    }
    assert_eq!(
        w.recorded(track).await.source.as_deref(),
        Some("covers/b.png")
    );
    assert_eq!(w.thumbnail_files(track).len(), 6, "no temporary files left");
}

async fn pipes_and_oversized_sources_fail_permanently_unread(t: TestDb) {
    // Arrange: a 1000-byte cap; a named pipe nobody writes to (opening it to read would
    // block for ever), a directory, and an image of more than 1000 bytes.
    let w = world_with(&t, &[("THUMBNAIL_MAX_SOURCE_BYTES", "1000")]);
    let track = w.track().await;
    std::fs::create_dir_all(w.media.path().join("covers/dir.png")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(w.media.path().join("covers/pipe.png"))
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let big = encode(&quadrants(300, 300), ImageFormat::Png);
    assert!(big.len() > 1000);
    w.put("covers/big.png", &big);

    // Act
    let run = |source: &'static str| {
        let w = &w;
        async move {
            tokio::time::timeout(Duration::from_secs(10), w.run(track, source))
                .await
                .unwrap_or_else(|_| panic!("{source}: the job blocked"))
        }
    };
    let pipe = permanent(run("covers/pipe.png").await);
    let dir = permanent(run("covers/dir.png").await);
    let oversized = permanent(run("covers/big.png").await);

    // Assert
    assert!(pipe.contains("not a regular file"), "{pipe}");
    assert!(dir.contains("is a directory"), "{dir}");
    assert!(
        oversized.contains(&format!(
            "{} bytes, over THUMBNAIL_MAX_SOURCE_BYTES (1000 bytes)",
            big.len()
        )),
        "{oversized}"
    );
    assert!(w.recorded(track).await.thumbnails.is_empty());
}

/// The children of job `id`: (kind, parent_id, args), in the order they were enqueued.
async fn children_of(engine: &Engine, id: i64) -> Vec<(String, Option<i64>, ThumbnailSizeArgs)> {
    let rows: Vec<(String, Option<i64>, String)> =
        sqlx::query_as("SELECT kind, parent_id, args FROM jobs WHERE parent_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(engine.db())
            .await
            .unwrap();
    rows.into_iter()
        .map(|(kind, parent, args)| (kind, parent, serde_json::from_str(&args).unwrap()))
        .collect()
}

async fn each_size_is_made_by_a_child_job_and_all_are_recorded(t: TestDb) {
    // Arrange: four sizes.
    let w = world_with(&t, &[("THUMBNAIL_SIZES", "32,64,128,256")]);
    let track = w.track().await;
    w.put(
        "covers/four.png",
        &encode(&quadrants(400, 300), ImageFormat::Png),
    );
    w.set_cover(track, "covers/four.png").await;

    // Act
    let id = w
        .engine
        .enqueue(ThumbnailArgs {
            track_id: track,
            source: "covers/four.png".into(),
        })
        .await
        .unwrap()
        .id();
    settle(&w.engine).await;

    // Assert: one thumbnail_size child per size, each the job's child, all succeeded;
    // the track records every size, the directory holds exactly their files.
    assert_eq!(ended(&w.engine, id).await, Ok(Outcome::Succeeded));
    let children = children_of(&w.engine, id).await;
    let expected: Vec<(String, Option<i64>, ThumbnailSizeArgs)> = [32, 64, 128, 256]
        .into_iter()
        .map(|size| {
            (
                "thumbnail_size".to_owned(),
                Some(id),
                ThumbnailSizeArgs {
                    track_id: track,
                    source: "covers/four.png".into(),
                    size,
                    batch: id,
                },
            )
        })
        .collect();
    assert_eq!(children, expected);
    let states: Vec<JobState> = engine::steps::children(w.engine.db(), id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.2)
        .collect();
    assert_eq!(states, [JobState::Succeeded; 4]);
    let steps: Vec<String> = engine::steps::list(w.engine.db(), id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(steps, ["check", "plan", "sizes", "sizes:join"]);
    let sizes: Vec<u32> = w
        .recorded(track)
        .await
        .thumbnails
        .iter()
        .map(|t| t.size)
        .collect();
    assert_eq!(sizes, [32, 64, 128, 256]);
    assert_eq!(
        w.thumbnail_files(track),
        [
            "128.jpg", "128.webp", "256.jpg", "256.webp", "32.jpg", "32.webp", "64.jpg", "64.webp"
        ],
        "exactly the recorded files, nothing staged left"
    );
}

async fn a_child_that_fails_fails_the_job_and_leaves_nothing_staged(t: TestDb) {
    // Arrange: a good cover; where the 256 px child stages its JPEG, a directory is in
    // the way, so that child fails on every attempt and the others succeed.
    let w = world(&t);
    let track = w.track().await;
    w.put(
        "covers/ok.png",
        &encode(&quadrants(600, 600), ImageFormat::Png),
    );
    w.set_cover(track, "covers/ok.png").await;
    let id = w
        .engine
        .enqueue(ThumbnailArgs {
            track_id: track,
            source: "covers/ok.png".into(),
        })
        .await
        .unwrap()
        .id();
    let blocker = format!(".256.jpg.tmp-{id}");
    w.put(&format!("thumbnails/{track}/{blocker}/x"), b"");

    // Act: run until the job has ended, the failing child's retries included.
    let mut parent = JobState::Pending;
    for _ in 0..10 {
        settle(&w.engine).await;
        parent = engine::admin::get_job(w.engine.db(), id)
            .await
            .unwrap()
            .job
            .status;
        if parent.is_final() {
            break;
        }
        w.clock.advance(Duration::from_secs(3600));
    }

    // Assert: the job failed with the child's error, said which size; the other sizes'
    // staged files are gone and nothing is recorded.
    assert_eq!(parent, JobState::Failed);
    let error = permanent(ended(&w.engine, id).await);
    assert!(
        error.contains(&format!("writing thumbnails/{track}/256.jpg: ")),
        "{error}"
    );
    assert!(error.contains("size 256"), "{error}");
    assert!(error.contains("1 of 3 sizes not made"), "{error}");
    let states: Vec<JobState> = engine::steps::children(w.engine.db(), id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.2)
        .collect();
    assert_eq!(
        states,
        [JobState::Succeeded, JobState::Failed, JobState::Succeeded]
    );
    assert_eq!(
        w.thumbnail_files(track),
        [blocker],
        "nothing staged left (only the directory in the way)"
    );
    assert!(w.recorded(track).await.thumbnails.is_empty());
}

async fn a_cover_changed_while_the_children_ran_skips_and_removes_their_files(t: TestDb) {
    // Arrange: the job fans out on an engine that runs only `thumbnail` jobs, so its
    // children wait; then the owner uploads another cover.
    let w = world(&t);
    let track = w.track().await;
    w.put(
        "covers/a.png",
        &encode(&quadrants(300, 300), ImageFormat::Png),
    );
    w.set_cover(track, "covers/a.png").await;
    let settings = Arc::new(config(w.media.path(), &[]).thumbnail);
    let mut parents_only = Registry::new();
    parents_only.register::<ThumbnailArgs, _, _>(move |args, ctx| {
        let settings = Arc::clone(&settings);
        async move { jobs::thumbnail::handle(args, ctx, &settings).await }
    });
    let parents = t.engine(parents_only, w.clock.clone());
    let id = parents
        .enqueue(ThumbnailArgs {
            track_id: track,
            source: "covers/a.png".into(),
        })
        .await
        .unwrap()
        .id();
    drain(&parents).await;
    let waiting = engine::admin::get_job(w.engine.db(), id).await.unwrap();
    assert_eq!(
        waiting.job.status,
        JobState::Pending,
        "waits for its children"
    );
    assert_eq!(children_of(&w.engine, id).await.len(), 3);
    w.set_cover(track, "covers/b.png").await;

    // Act: the children run (and stage their files), then the job is woken.
    settle(&w.engine).await;

    // Assert: every child made its size, yet the job skipped as stale, recorded nothing
    // and removed what its children staged.
    let states: Vec<JobState> = engine::steps::children(w.engine.db(), id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.2)
        .collect();
    assert_eq!(states, [JobState::Succeeded; 3]);
    let outcome = ended(&w.engine, id).await;
    assert!(
        matches!(&outcome, Ok(Outcome::Skipped { reason }) if reason.contains("no longer track")),
        "{outcome:?}"
    );
    assert!(w.recorded(track).await.thumbnails.is_empty());
    assert_eq!(
        w.thumbnail_files(track),
        Vec::<String>::new(),
        "nothing staged left"
    );
}
