//! Scheduler, retention and the domain state-machine helper, on both backends.

mod support;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use engine::scheduler::{Every, Schedule, Scheduler};
use engine::state_machine::{self, Actor, Lifecycle, TransitionError, Value};
use engine::testing::{TestDb, drain};
use engine::{Clock, Enqueued, backend_tests};
use support::{Behaviour, Probe, Runs, registry};

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn hourly() -> Schedule {
    Schedule::new(
        "probe_hourly",
        Every::Interval(Duration::from_secs(3600)),
        &Probe::new(Behaviour::Succeed),
    )
}

backend_tests!(
    two_processes_enqueue_exactly_one_job_per_tick,
    after_downtime_a_schedule_runs_once_not_once_per_missed_tick,
    a_changed_schedule_moves_its_next_run_to_the_earlier_time,
    boot_schedule_runs_at_start_and_list_shows_last_and_next_run,
    run_now_enqueues_outside_the_timing_and_respects_the_unique_key,
    prune_deletes_old_finished_jobs_in_batches_and_keeps_the_rest,
    concurrent_transitions_from_one_state_have_exactly_one_winner,
    transition_outside_the_table_is_refused_and_writes_nothing,
);

async fn two_processes_enqueue_exactly_one_job_per_tick(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    // Two engines on one database: two processes' schedulers.
    let a = Scheduler::new(t.engine(registry(&runs), clock.clone()), vec![hourly()]);
    let b = Scheduler::new(t.engine(registry(&runs), clock.clone()), vec![hourly()]);
    a.register().await.unwrap();
    b.register().await.unwrap();
    let engine = t.engine(registry(&runs), clock.clone());
    for tick in 1..=3 {
        clock.advance(Duration::from_secs(3600));
        let (fa, fb) = tokio::join!(a.tick(), b.tick());
        let fired = fa.unwrap().len() + fb.unwrap().len();
        assert_eq!(fired, 1, "tick {tick}: exactly one process fires");
        drain(&engine).await;
    }
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&t.db)
        .await
        .unwrap();
    assert_eq!(jobs, 3);
}

async fn after_downtime_a_schedule_runs_once_not_once_per_missed_tick(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let s = Scheduler::new(t.engine(registry(&runs), clock.clone()), vec![hourly()]);
    s.register().await.unwrap();
    clock.advance(Duration::from_secs(10 * 3600 + 5)); // down for ten hours
    assert_eq!(s.tick().await.unwrap().len(), 1);
    assert_eq!(s.tick().await.unwrap().len(), 0);
    let info = &s.list().await.unwrap()[0];
    assert_eq!(
        info.next_run_at,
        clock.now_ms() + 3_600_000,
        "next run is an interval from now"
    );
}

async fn a_changed_schedule_moves_its_next_run_to_the_earlier_time(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let with = |every: Every| {
        Scheduler::new(
            t.engine(registry(&runs), clock.clone()),
            vec![Schedule::new(
                "probe_hourly",
                every,
                &Probe::new(Behaviour::Succeed),
            )],
        )
    };
    let next = |s: Scheduler| async move { s.list().await.unwrap()[0].next_run_at };
    // Deployed with a cron that has no future occurrence (a year long past): parked.
    let parked = with(Every::parse("0 0 0 1 1 * 2020").unwrap());
    parked.register().await.unwrap();
    assert_eq!(next(parked).await, i64::MAX);
    // The next deploy fixes it: the new expression's next run wins, at once.
    let hourly = with(Every::Interval(Duration::from_secs(3600)));
    hourly.register().await.unwrap();
    assert_eq!(next(hourly.clone()).await, clock.now_ms() + 3_600_000);
    // Registering the same expression again changes nothing.
    clock.advance(Duration::from_secs(600));
    hourly.register().await.unwrap();
    assert_eq!(next(hourly).await, clock.now_ms() + 3_000_000);
    // A longer interval keeps the earlier run already planned.
    let daily = with(Every::Interval(Duration::from_secs(86_400)));
    daily.register().await.unwrap();
    assert_eq!(next(daily).await, clock.now_ms() + 3_000_000);
}

async fn boot_schedule_runs_at_start_and_list_shows_last_and_next_run(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let s = Scheduler::new(engine.clone(), vec![hourly().run_at_boot()]);
    s.register().await.unwrap();
    let fired = s.tick().await.unwrap();
    assert_eq!(fired.len(), 1);
    let info = &s.list().await.unwrap()[0];
    assert_eq!(info.last_run_at, Some(clock.now_ms()));
    assert_eq!(info.next_run_at, clock.now_ms() + 3_600_000);
    assert_eq!(info.last_job_id, Some(fired[0].1.id()));
    assert_eq!(info.every, "every 1h");

    // A second process booting a few seconds later does not run it again…
    clock.advance(Duration::from_secs(5));
    let other = Scheduler::new(
        t.engine(registry(&runs), clock.clone()),
        vec![hourly().run_at_boot()],
    );
    other.register().await.unwrap();
    assert!(other.tick().await.unwrap().is_empty());
    // …but a restart long after the last run does.
    clock.advance(Duration::from_secs(600));
    other.register().await.unwrap();
    assert_eq!(other.tick().await.unwrap().len(), 1);
}

async fn run_now_enqueues_outside_the_timing_and_respects_the_unique_key(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let s = Scheduler::new(engine.clone(), vec![hourly()]);
    s.register().await.unwrap();
    let first = s.run_now("probe_hourly", &Actor::cli()).await.unwrap();
    assert!(matches!(first, Enqueued::Inserted(_)));
    let again = s.run_now("probe_hourly", &Actor::cli()).await.unwrap();
    assert_eq!(
        again,
        Enqueued::Existing(first.id()),
        "the previous run is unfinished"
    );
    // The timed tick also coalesces onto the unfinished job.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(s.tick().await.unwrap()[0].1, Enqueued::Existing(first.id()));
    assert!(matches!(
        s.run_now("nope", &Actor::cli()).await,
        Err(engine::Error::ScheduleNotFound(_))
    ));
}

async fn prune_deletes_old_finished_jobs_in_batches_and_keeps_the_rest(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let mut reg = registry(&runs);
    engine::retention::register(&mut reg);
    let engine = engine::Engine::builder(t.db.clone(), t.backend, t.url.clone())
        .registry(reg)
        .clock(clock.clone())
        .retention(engine::RetentionSettings {
            succeeded: Duration::from_secs(7 * 86_400),
            failed: Duration::from_secs(30 * 86_400),
            batch: 4,
        })
        .build();
    // 10 old successes, 3 old failures (10 days: past 7 d, within 30 d), then fresh ones.
    for _ in 0..10 {
        engine
            .enqueue(Probe::new(Behaviour::Succeed))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        engine
            .enqueue(Probe::new(Behaviour::FailPermanent))
            .await
            .unwrap();
    }
    drain(&engine).await;
    clock.advance(Duration::from_secs(10 * 86_400));
    let fresh = engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    let waiting = engine
        .enqueue(engine::NewJob::new(Probe::new(Behaviour::Succeed)).run_at(i64::MAX / 2))
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    let prune = engine
        .enqueue(engine::retention::PruneJobs {})
        .await
        .unwrap()
        .id();
    drain(&engine).await;

    let left: Vec<(i64, String)> = sqlx::query_as("SELECT id, status FROM jobs ORDER BY id")
        .fetch_all(&t.db)
        .await
        .unwrap();
    let left_ids: Vec<i64> = left.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        left.iter().filter(|(_, s)| s == "failed").count(),
        3,
        "failures are kept 30 days"
    );
    assert!(left_ids.contains(&fresh) && left_ids.contains(&waiting) && left_ids.contains(&prune));
    assert_eq!(left.len(), 6);
    let orphans: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM job_attempts WHERE job_id NOT IN (SELECT id FROM jobs)",
    )
    .fetch_one(&t.db)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "attempts go with their job");
}

/// A lifecycle for the helper's tests, on a table of their own (the engine knows no
/// domain table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Processing,
    Ready,
    Failed,
}

impl Lifecycle for Track {
    const ENTITY: &'static str = "track";
    const TABLE: &'static str = "test_tracks";
    fn as_str(self) -> &'static str {
        match self {
            Track::Processing => "processing",
            Track::Ready => "ready",
            Track::Failed => "failed",
        }
    }
    fn can_transition_to(self, to: Self) -> bool {
        matches!(
            (self, to),
            (Track::Processing, Track::Ready) | (Track::Processing, Track::Failed)
        )
    }
}

async fn new_track(db: &engine::Db) -> i64 {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS test_tracks (id BIGINT PRIMARY KEY, status TEXT NOT NULL, \
         status_message TEXT, updated_at BIGINT NOT NULL)",
    )
    .execute(db)
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO test_tracks (id, status, updated_at) \
         SELECT COALESCE(MAX(id), 0) + 1, 'processing', 0 FROM test_tracks RETURNING id",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

async fn concurrent_transitions_from_one_state_have_exactly_one_winner(t: TestDb) {
    for round in 0..5 {
        let id = new_track(&t.db).await;
        let go = |to: Track, who: &'static str| {
            let db = t.db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                let r = state_machine::transition(
                    &mut tx,
                    id,
                    Track::Processing,
                    to,
                    &[("status_message", Value::Text(Some(who.into())))],
                    &Actor::cli(),
                    None,
                    1,
                )
                .await;
                if r.is_ok() {
                    tx.commit().await.unwrap();
                }
                r
            }
        };
        let (a, b) = tokio::join!(go(Track::Ready, "a"), go(Track::Failed, "b"));
        let wins = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {a:?} / {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert!(
            matches!(loser, Err(TransitionError::Stale { .. })),
            "{loser:?}"
        );
        let audit =
            state_machine::history(&mut t.db.acquire().await.unwrap(), "track", &id.to_string())
                .await
                .unwrap();
        assert_eq!(audit.len(), 1, "one audit row, the winner's");
        let (status, message): (String, String) =
            sqlx::query_as("SELECT status, status_message FROM test_tracks WHERE id = $1")
                .bind(id)
                .fetch_one(&t.db)
                .await
                .unwrap();
        assert_eq!(audit[0].to_status, status);
        assert_eq!(message, if status == "ready" { "a" } else { "b" });
    }
}

async fn transition_outside_the_table_is_refused_and_writes_nothing(t: TestDb) {
    let id = new_track(&t.db).await;
    let mut conn = t.db.acquire().await.unwrap();
    let r = state_machine::transition(
        &mut conn,
        id,
        Track::Ready,
        Track::Processing,
        &[],
        &Actor::cli(),
        None,
        1,
    )
    .await;
    assert!(matches!(
        r,
        Err(TransitionError::NotAllowed {
            from: "ready",
            to: "processing",
            ..
        })
    ));
    // Stale: the row is processing, not ready.
    let r = state_machine::transition(
        &mut conn,
        id,
        Track::Failed,
        Track::Failed,
        &[],
        &Actor::cli(),
        None,
        1,
    )
    .await;
    assert!(matches!(r, Err(TransitionError::NotAllowed { .. })));
    let audit = state_machine::history(&mut conn, "track", &id.to_string())
        .await
        .unwrap();
    assert!(audit.is_empty());
}
