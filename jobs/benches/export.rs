//! Data export bench: `cargo bench -p jobs --bench export` (release; prints figures).
//!
//! One user with N messages (plus 200 tracks, 20 playlists of 50 items and 20,000 plays),
//! exported by the real `data_export` handler into a ZIP on disk: the time, rows per
//! second, the file size, and the peak RSS during the export (VmHWM, reset through
//! /proc/self/clear_refs after seeding) above the RSS before it. Run for N = 50,000 and
//! 200,000: a peak that does not grow with N shows that rows are streamed, not collected.
//!
//! SQLite always; Postgres too when `TEST_POSTGRES_URL` is set. `BENCH_QUICK=1` runs
//! N = 20,000 only.

use std::time::Instant;

use chrono::{TimeZone, Utc};
use engine::testing::{TestDb, perform_job};
use engine::{Actor, Backend, Clock, Registry};
use jobs::data_export::DataExport;
use jobs::exports::{self, ExportStatus};
use jobs::gdpr::{self, GdprSettings};

fn main() {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let sizes: &[i64] = if quick { &[20_000] } else { &[50_000, 200_000] };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "data export bench: one user, N messages + 200 tracks + 1,000 playlist items + 20,000 plays"
    );
    println!(
        "{:<9} {:>9} {:>9} {:>11} {:>10} {:>12} {:>12} {:>12}",
        "backend",
        "messages",
        "seconds",
        "rows/s",
        "ZIP MB",
        "RSS before",
        "peak RSS",
        "peak growth"
    );
    let mut backends = vec![Backend::Sqlite];
    if std::env::var("TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
        backends.push(Backend::Postgres);
    }
    for backend in backends {
        for &n in sizes {
            rt.block_on(run(backend, n));
        }
    }
}

/// Resident set size now and its peak, in MiB (Linux).
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak RSS to the current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn seed(db: &engine::Db, user: i64, other: i64, messages: i64, now: i64) {
    for (id, name) in [(user, "bench"), (other, "peer")] {
        sqlx::query(
            "INSERT INTO users (id, email, username, display_name, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'active', $5, $5)",
        )
        .bind(id)
        .bind(format!("{name}@bench.example"))
        .bind(name)
        .bind(format!("{name} display"))
        .bind(now)
        .execute(db)
        .await
        .unwrap();
    }
    let run = |sql: &'static str, bind: i64| async move {
        sqlx::query(sql)
            .bind(user)
            .bind(other)
            .bind(bind)
            .bind(now)
            .execute(db)
            .await
            .unwrap();
    };
    run(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $3) \
         INSERT INTO messages (sender_id, recipient_id, body, created_at) \
         SELECT CASE WHEN i % 3 = 0 THEN $2 ELSE $1 END, CASE WHEN i % 3 = 0 THEN $1 ELSE $2 END, \
         'message ' || i || ': see you at the studio on Thursday, bring the stems and the new mix', \
         $4 + i FROM n",
        messages,
    )
    .await;
    run(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $3) \
         INSERT INTO tracks (status, file_path, created_at, updated_at, owner_id, is_public, title, artist_name) \
         SELECT 'ready', 'uploads/' || i || '.mp3', $4, $4, $1, i % 2, 'Track ' || i, 'bench display' FROM n \
         WHERE $2 = $2",
        200,
    )
    .await;
    run(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $3) \
         INSERT INTO playlists (owner_id, name, is_public, created_at, updated_at) \
         SELECT $1, 'Playlist ' || i, 0, $4, $4 FROM n WHERE $2 = $2",
        20,
    )
    .await;
    run(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $3) \
         INSERT INTO playlist_items (playlist_id, track_id, position, added_at) \
         SELECT p.id, t.id, n.i, $4 FROM n \
         JOIN playlists p ON p.owner_id = $1 \
         JOIN tracks t ON t.owner_id = $1 AND t.title = 'Track ' || n.i WHERE $2 = $2",
        50,
    )
    .await;
    run(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $3) \
         INSERT INTO playback_history (user_id, track_id, played_at, duration_ms, client) \
         SELECT $1, NULL, $4 - i * 1000, 180000, 'web' FROM n WHERE $2 = $2",
        20_000,
    )
    .await;
}

async fn run(backend: Backend, messages: i64) {
    let Some(t) = TestDb::with_schema(backend, jobs::schema::migrator).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = GdprSettings::new(dir.path(), dir.path());
    let mut registry = Registry::new();
    gdpr::register(&mut registry, &settings);
    let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap());
    let engine = t.engine(registry, clock.clone());
    let (user, other) = (1_000_001, 1_000_002);
    seed(engine.db(), user, other, messages, clock.now_ms()).await;
    let req = exports::request_export(&engine, &settings.exports, user, &Actor::cli())
        .await
        .unwrap();

    let (before, _) = rss();
    reset_peak();
    let start = Instant::now();
    perform_job(
        &engine,
        &DataExport {
            export_id: req.export_id,
        },
    )
    .await
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let (_, peak) = rss();

    let info = &exports::list_exports(engine.db(), user).await.unwrap()[0];
    assert_eq!(info.status, ExportStatus::Ready);
    let rows = info.progress.rows_done;
    let size = info.size_bytes.unwrap_or_default() as f64 / 1_048_576.0;
    println!(
        "{:<9} {:>9} {:>9.2} {:>11.0} {:>10.1} {:>9.1} MiB {:>8.1} MiB {:>8.1} MiB",
        backend.name(),
        messages,
        secs,
        rows as f64 / secs,
        size,
        before,
        peak,
        peak - before
    );
}
