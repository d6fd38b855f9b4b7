//! Thumbnail bench: `cargo bench -p jobs --bench thumbnail` (release; prints figures).
//!
//! 1. Resizers compared on a decoded 12-megapixel photo, making the 512, 256 and 64 px
//!    centred squares: fast_image_resize (Lanczos3, each size from the previous one, as the
//!    job does; and each from the photo) against the image crate's own `imageops::resize`
//!    (Lanczos3, CatmullRom) and `imageops::thumbnail`; with the PSNR of each 64 px result
//!    against fast_image_resize's direct Lanczos3 one.
//! 2. The whole job's work on a 12 MP JPEG (read, decode, crop, resize to every size,
//!    encode JPEG and WebP): thumbnails per second on one thread and on every core, the
//!    time of each step, the peak RSS (VmHWM, reset between runs through
//!    /proc/self/clear_refs) and the file sizes.
//! 3. The engine: how long a no-op job enqueued during a burst of 50 thumbnail jobs
//!    (worker pool, SQLite, THUMBNAIL_CONCURRENCY = cores) waits, against an idle queue.
//!
//! `BENCH_QUICK=1` runs fewer iterations.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::Cursor;
use std::time::{Duration, Instant};

use engine::config::Env;
use engine::testing::TestDb;
use engine::worker::WorkerPool;
use engine::{Backend, Clock, Job, JobPolicy, Outcome, Registry};
use fast_image_resize::images::Image as FirImage;
use fast_image_resize::{FilterType as FirFilter, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::imageops::{self, FilterType};
use image::metadata::Orientation;
use image::{DynamicImage, GenericImageView, Rgb, RgbImage};
use jobs::thumbnail::render::{self, DecodeLimits, RenderSpec};
use jobs::thumbnail::{ThumbnailArgs, default_concurrency};
use serde::{Deserialize, Serialize};

const SIZES: [u32; 3] = [512, 256, 64];

fn main() {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let iters = if quick { 3 } else { 10 };
    println!(
        "thumbnail bench: {} cores, sizes {SIZES:?}, {iters} iterations per figure",
        default_concurrency()
    );

    let photo = photo(4000, 3000);
    let jpeg = encode_jpeg(&photo, 90);
    println!(
        "source: 4000x3000 (12 MP) JPEG q90, {:.1} MB\n",
        jpeg.len() as f64 / 1e6
    );
    resizers(&DynamicImage::ImageRgb8(photo), iters);
    whole_job(&jpeg, iters);
    engine_burst(&jpeg);
}

/// A photo-like picture: smooth gradients and shapes with fine noise, so that the JPEG is
/// of a camera's size and the resizers see detail.
fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let noise = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(2_246_822_519)) >> 27) as f32;
        let ring = (((fx - 0.5).powi(2) + (fy - 0.5).powi(2)).sqrt() * 40.0).sin() * 40.0;
        Rgb([
            (fx * 200.0 + ring + noise).clamp(0.0, 255.0) as u8,
            (fy * 180.0 + noise * 1.5).clamp(0.0, 255.0) as u8,
            ((1.0 - fx) * 150.0 + ring).clamp(0.0, 255.0) as u8,
        ])
    })
}

fn encode_jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .unwrap();
    out.into_inner()
}

/// Median of `iters` runs, in ms.
fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

fn centred_square(img: &DynamicImage) -> (u32, u32, u32) {
    let side = img.width().min(img.height());
    ((img.width() - side) / 2, (img.height() - side) / 2, side)
}

fn fir_direct(img: &DynamicImage) -> Vec<RgbImage> {
    let (x, y, side) = centred_square(img);
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FirFilter::Lanczos3))
        .crop(f64::from(x), f64::from(y), f64::from(side), f64::from(side));
    SIZES
        .iter()
        .map(|&s| {
            let mut dst = FirImage::new(s, s, PixelType::U8x3);
            resizer.resize(img, &mut dst, &options).unwrap();
            RgbImage::from_raw(s, s, dst.into_vec()).unwrap()
        })
        .collect()
}

fn image_crate(img: &DynamicImage, filter: Option<FilterType>) -> Vec<RgbImage> {
    let (x, y, side) = centred_square(img);
    let rgb = img.as_rgb8().unwrap();
    let view = rgb.view(x, y, side, side);
    SIZES
        .iter()
        .map(|&s| match filter {
            Some(f) => imageops::resize(&*view, s, s, f),
            None => imageops::thumbnail(&*view, s, s),
        })
        .collect()
}

fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

fn resizers(img: &DynamicImage, iters: usize) {
    println!("1. resizers: 12 MP RGB8 -> centred squares {SIZES:?} (median of {iters})");
    let reference = fir_direct(img);
    let ours = |img: &DynamicImage| -> Vec<RgbImage> {
        render::square_thumbnails(img, Orientation::NoTransforms, &SIZES)
            .unwrap()
            .into_iter()
            .map(|(_, t)| t.to_rgb8())
            .collect()
    };
    type Candidate<'a> = (&'a str, Box<dyn Fn(&DynamicImage) -> Vec<RgbImage> + 'a>);
    let candidates: Vec<Candidate<'_>> = vec![
        (
            "fast_image_resize Lanczos3, cascade (chosen)",
            Box::new(ours),
        ),
        (
            "fast_image_resize Lanczos3, each from the photo",
            Box::new(fir_direct),
        ),
        (
            "image imageops::resize Lanczos3",
            Box::new(|i: &DynamicImage| image_crate(i, Some(FilterType::Lanczos3))),
        ),
        (
            "image imageops::resize CatmullRom",
            Box::new(|i: &DynamicImage| image_crate(i, Some(FilterType::CatmullRom))),
        ),
        (
            "image imageops::thumbnail (box)",
            Box::new(|i: &DynamicImage| image_crate(i, None)),
        ),
    ];
    // The image crate's Lanczos3 is slow: fewer runs of it.
    for (name, f) in &candidates {
        let n = if name.starts_with("image ") {
            iters.min(3)
        } else {
            iters
        };
        let ms = median_ms(n, || {
            black_box(f(img));
        });
        let out = f(img);
        let quality: Vec<String> = out
            .iter()
            .zip(&reference)
            .map(|(o, r)| format!("{:.1}", psnr(o, r)))
            .collect();
        println!(
            "   {name:<50} {ms:>8.1} ms   PSNR vs fir direct (512/256/64 px): {} dB",
            quality.join(" / ")
        );
    }
    println!();
}

/// VmHWM / VmRSS of this process, in MiB.
fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn spec() -> RenderSpec {
    RenderSpec {
        sizes: SIZES.to_vec(),
        quality: 85,
        limits: DecodeLimits {
            max_dimension: 16_384,
            max_pixels: 50_000_000,
        },
    }
}

fn whole_job(jpeg: &[u8], iters: usize) {
    println!(
        "2. the job's work on the 12 MP JPEG: decode, crop, resize {SIZES:?}, JPEG q85 + WebP"
    );
    let spec = spec();
    let decoded = render::decode(jpeg, &spec.limits).unwrap();
    let decode_ms = median_ms(iters, || {
        black_box(render::decode(jpeg, &spec.limits).unwrap());
    });
    let resize_ms = median_ms(iters, || {
        black_box(render::square_thumbnails(&decoded.image, decoded.orientation, &SIZES).unwrap());
    });
    let thumbs = render::square_thumbnails(&decoded.image, decoded.orientation, &SIZES).unwrap();
    let jpeg_ms = median_ms(iters, || {
        for (_, t) in &thumbs {
            black_box(render::encode_jpeg(t, 85).unwrap());
        }
    });
    let webp_ms = median_ms(iters, || {
        for (_, t) in &thumbs {
            black_box(render::encode_webp(t, 85).unwrap());
        }
    });
    drop(decoded);
    let total_ms = median_ms(iters, || {
        black_box(render::render(jpeg, &spec).unwrap());
    });
    println!(
        "   steps (median): decode {decode_ms:.1} ms, crop+resize {resize_ms:.1} ms, \
         JPEG {jpeg_ms:.1} ms, WebP {webp_ms:.1} ms"
    );
    println!(
        "   one thread: {total_ms:.1} ms a source -> {:.2} sources/s ({:.1} thumbnail files/s)",
        1e3 / total_ms,
        1e3 / total_ms * (SIZES.len() * 2) as f64
    );

    let cores = default_concurrency();
    let per_thread = iters.max(2);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..cores {
            s.spawn(|| {
                for _ in 0..per_thread {
                    black_box(render::render(jpeg, &spec).unwrap());
                }
            });
        }
    });
    let rate = (cores * per_thread) as f64 / t.elapsed().as_secs_f64();
    println!("   {cores} threads: {rate:.2} sources/s");

    let out = render::render(jpeg, &spec).unwrap();
    let sizes: Vec<String> = out
        .iter()
        .map(|r| {
            format!(
                "{} px: JPEG {:.1} KB, WebP {:.1} KB",
                r.size,
                r.jpeg.len() as f64 / 1e3,
                r.webp.len() as f64 / 1e3
            )
        })
        .collect();
    println!("   files: {}", sizes.join("; "));

    if reset_peak() {
        let before = memory_mib("VmRSS:");
        black_box(render::render(jpeg, &spec).unwrap());
        let one = memory_mib("VmHWM:");
        reset_peak();
        std::thread::scope(|s| {
            for _ in 0..cores {
                s.spawn(|| black_box(render::render(jpeg, &spec).unwrap()));
            }
        });
        let many = memory_mib("VmHWM:");
        println!(
            "   peak RSS: {before:.0} MiB at rest; {one:.0} MiB during one source (+{:.0}); \
             {many:.0} MiB with {cores} at once (+{:.0})",
            one - before,
            many - before
        );
    } else {
        println!(
            "   peak RSS: /proc/self/clear_refs not writable; VmHWM so far {:.0} MiB",
            memory_mib("VmHWM:")
        );
    }
    println!();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "noop";
    const POLICY: JobPolicy = JobPolicy {
        concurrency: 1,
        ..JobPolicy::DEFAULT
    };
}

fn engine_burst(jpeg: &[u8]) {
    const BURST: usize = 50;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let Some(t) = TestDb::with_schema(Backend::Sqlite, jobs::schema::migrator).await else {
            return;
        };
        let media = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(media.path().join("covers")).unwrap();
        std::fs::write(media.path().join("covers/photo.jpg"), jpeg).unwrap();
        let mut env = Env::from_map(HashMap::from([(
            "MEDIA_ROOT".to_owned(),
            media.path().to_string_lossy().into_owned(),
        )]));
        let config = jobs::JobsConfig::read(&mut env);
        env.finish().unwrap();
        let mut registry = Registry::new();
        jobs::register_all(&mut registry, &config);
        registry.register::<Noop, _, _>(|_, _| async { Ok(Outcome::Succeeded) });
        let engine = t.engine(registry, Clock::system());
        let pool = WorkerPool::start(&engine);

        let status_of = |id: i64| {
            let engine = engine.clone();
            async move {
                sqlx::query_scalar::<_, String>("SELECT status FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_one(engine.db())
                    .await
                    .unwrap()
            }
        };
        let noop_latency = || async {
            let t = Instant::now();
            let id = engine.enqueue(Noop {}).await.unwrap().id();
            while status_of(id).await != "succeeded" {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            t.elapsed()
        };
        let mut idle = Vec::new();
        for _ in 0..5 {
            idle.push(noop_latency().await);
        }
        idle.sort();

        let mut tracks = Vec::new();
        for _ in 0..BURST {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO tracks (status, file_path, created_at, updated_at) \
                 VALUES ('processing', 'a.mp3', 0, 0) RETURNING id",
            )
            .fetch_one(engine.db())
            .await
            .unwrap();
            tracks.push(id);
        }
        let started = Instant::now();
        for &track_id in &tracks {
            engine
                .enqueue(ThumbnailArgs {
                    track_id,
                    source: "covers/photo.jpg".into(),
                })
                .await
                .unwrap();
        }
        let mut during = Vec::new();
        let count_done = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM jobs WHERE kind = 'thumbnail' AND status IN ('succeeded', 'failed')",
            )
            .fetch_one(engine.db())
            .await
            .unwrap()
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        while count_done().await < BURST as i64 - 5 && during.len() < 10 {
            during.push(noop_latency().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while count_done().await < BURST as i64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let burst = started.elapsed();
        pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
        during.sort();
        let failed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE kind = 'thumbnail' AND status = 'failed'",
        )
        .fetch_one(engine.db())
        .await
        .unwrap();
        println!(
            "3. engine (SQLite, THUMBNAIL_CONCURRENCY={}): {BURST} thumbnail jobs of the 12 MP JPEG \
             in {burst:.2?} ({:.2} jobs/s, {failed} failed)",
            config.thumbnail.concurrency,
            BURST as f64 / burst.as_secs_f64()
        );
        let fmt = |v: &[Duration]| {
            format!(
                "median {:.1?}, max {:.1?} (n={})",
                v[v.len() / 2],
                v[v.len() - 1],
                v.len()
            )
        };
        println!("   no-op job, enqueue to succeeded: idle queue {}", fmt(&idle));
        if !during.is_empty() {
            println!("   no-op job, enqueue to succeeded: during the burst {}", fmt(&during));
        }
    });
}
