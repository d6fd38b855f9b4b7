//! `orphan_sweep` end to end on both backends: real tracks rows, real files under a
//! temporary MEDIA_ROOT, the real handler run by the engine.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use engine::scheduler::Scheduler;
use engine::testing::{TestDb, drain, perform_job};
use engine::{Clock, Engine, JobState, Registry, backend_tests};
use jobs::orphan_sweep::{OrphanSweep, STATUS_MESSAGE, SweepSettings};
use jobs::{JobsConfig, register_all};

struct World {
    engine: Engine,
    clock: Clock,
    media: tempfile::TempDir,
}

fn world(t: &TestDb) -> World {
    let media = tempfile::tempdir().unwrap();
    let config = JobsConfig {
        sweep: SweepSettings {
            media_root: media.path().to_owned(),
            min_age: Duration::from_secs(3600),
        },
        thumbnail: jobs::thumbnail::ThumbnailSettings::new(media.path()),
        payments: jobs::payments::PaymentsConfig::without_stripe(),
        gdpr: jobs::gdpr::GdprSettings::new(media.path(), media.path()),
    };
    let mut registry = Registry::new();
    register_all(&mut registry, &config);
    let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap());
    World {
        engine: t.engine(registry, clock.clone()),
        clock,
        media,
    }
}

impl World {
    /// A track created `age` ago in `status`, with its file on disk if `with_file`.
    async fn track(&self, status: &str, age: Duration, with_file: bool) -> i64 {
        let created = self.clock.now_ms() - age.as_millis() as i64;
        let name = format!("uploads/{}-{}.mp3", status, rand_suffix());
        if with_file {
            let path = self.media.path().join(&name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"ID3").unwrap();
        }
        sqlx::query_scalar(
            "INSERT INTO tracks (status, file_path, created_at, updated_at) VALUES ($1, $2, $3, $3) RETURNING id",
        )
        .bind(status)
        .bind(name)
        .bind(created)
        .fetch_one(self.engine.db())
        .await
        .unwrap()
    }

    async fn status(&self, id: i64) -> (String, Option<String>) {
        sqlx::query_as("SELECT status, status_message FROM tracks WHERE id = $1")
            .bind(id)
            .fetch_one(self.engine.db())
            .await
            .unwrap()
    }

    async fn sweep(&self) {
        perform_job(&self.engine, &OrphanSweep {}).await.unwrap();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

const TWO_HOURS: Duration = Duration::from_secs(7200);

backend_tests!(
    schema = jobs::schema::migrator;
    stuck_track_without_its_file_is_failed_with_the_message,
    track_whose_file_exists_is_left_alone,
    recent_track_is_left_alone,
    tracks_in_other_states_are_ignored,
    sweeping_twice_changes_nothing_more,
    sweep_runs_at_boot_through_the_scheduler,
);

async fn stuck_track_without_its_file_is_failed_with_the_message(t: TestDb) {
    let w = world(&t);
    let id = w.track("processing", TWO_HOURS, false).await;
    w.sweep().await;
    assert_eq!(
        w.status(id).await,
        ("failed".into(), Some(STATUS_MESSAGE.into()))
    );
    let audit = engine::state_machine::history(
        &mut w.engine.db().acquire().await.unwrap(),
        "track",
        &id.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].from_status.as_str(), audit[0].to_status.as_str()),
        ("processing", "failed")
    );
    assert_eq!(audit[0].actor, "job:0", "perform_job runs as job 0");
}

async fn track_whose_file_exists_is_left_alone(t: TestDb) {
    let w = world(&t);
    let id = w.track("processing", TWO_HOURS, true).await;
    w.sweep().await;
    assert_eq!(w.status(id).await, ("processing".into(), None));
    let path: String = sqlx::query_scalar("SELECT file_path FROM tracks WHERE id = $1")
        .bind(id)
        .fetch_one(w.engine.db())
        .await
        .unwrap();
    assert!(w.media.path().join(path).exists(), "never deletes files");
}

async fn recent_track_is_left_alone(t: TestDb) {
    let w = world(&t);
    let id = w
        .track("processing", Duration::from_secs(1800), false)
        .await;
    w.sweep().await;
    assert_eq!(w.status(id).await.0, "processing");
}

async fn tracks_in_other_states_are_ignored(t: TestDb) {
    let w = world(&t);
    let ready = w.track("ready", TWO_HOURS, false).await;
    let failed = w.track("failed", TWO_HOURS, false).await;
    w.sweep().await;
    assert_eq!(w.status(ready).await, ("ready".into(), None));
    assert_eq!(w.status(failed).await, ("failed".into(), None));
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tracks")
        .fetch_one(w.engine.db())
        .await
        .unwrap();
    assert_eq!(rows, 2, "never deletes rows");
}

async fn sweeping_twice_changes_nothing_more(t: TestDb) {
    let w = world(&t);
    let id = w.track("processing", TWO_HOURS, false).await;
    w.sweep().await;
    w.clock.advance(Duration::from_secs(60));
    w.sweep().await;
    assert_eq!(w.status(id).await.0, "failed");
    let transitions: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM transitions WHERE entity = 'track'")
            .fetch_one(w.engine.db())
            .await
            .unwrap();
    assert_eq!(transitions, 1);
}

async fn sweep_runs_at_boot_through_the_scheduler(t: TestDb) {
    let w = world(&t);
    let stuck = w.track("processing", TWO_HOURS, false).await;
    let scheduler = Scheduler::new(w.engine.clone(), jobs::schedules());
    scheduler.register().await.unwrap();
    let fired: Vec<&str> = scheduler
        .tick()
        .await
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        fired,
        ["orphan_sweep"],
        "only the boot schedule is due at start"
    );
    drain(&w.engine).await;
    assert_eq!(w.status(stuck).await.0, "failed");
    let sweeps = engine::testing::enqueued::<OrphanSweep>(&w.engine).await;
    assert_eq!(sweeps.len(), 1);
    assert_eq!(sweeps[0].1, JobState::Succeeded);
    // An hour later it runs again.
    w.clock.advance(Duration::from_secs(3600));
    let fired: Vec<&str> = scheduler
        .tick()
        .await
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert!(fired.contains(&"orphan_sweep"));
}
