//! A job's life on both backends: success, retries with persisted backoff, exhaustion,
//! permanent errors, panics, undecodable args.

mod support;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use engine::testing::{TestDb, drain};
use engine::worker::WorkerPool;
use engine::{Clock, JobState, NewJob, admin, backend_tests};
use support::{Behaviour, Probe, Runs, eventually, registry};

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

backend_tests!(
    enqueued_job_runs_on_a_worker_and_succeeds,
    transient_failure_retries_with_persisted_backoff,
    exhausted_attempts_fail_and_are_never_fetched_again,
    permanent_error_fails_at_once,
    skipped_job_succeeds_with_its_reason,
    panic_is_a_failed_attempt_and_leaves_nothing_running,
    undecodable_args_fail_that_job_and_the_worker_goes_on,
    late_ack_of_an_older_attempt_does_not_finish_a_newer_one,
    a_backlog_runs_each_job_once_with_one_recorded_attempt,
);

#[tokio::test]
async fn an_old_sqlite_databases_first_successes_move_to_their_job_rows() {
    if let Some(t) = TestDb::blank(engine::Backend::Sqlite).await {
        an_old_databases_first_successes_move_to_their_job_rows(t).await;
    }
}

#[tokio::test]
async fn an_old_postgres_databases_first_successes_move_to_their_job_rows() {
    if let Some(t) = TestDb::blank(engine::Backend::Postgres).await {
        an_old_databases_first_successes_move_to_their_job_rows(t).await;
    }
}

async fn enqueued_job_runs_on_a_worker_and_succeeds(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::system());
    let pool = WorkerPool::start(&engine);
    let id = engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();

    let done = eventually(10, || async {
        admin::get_job(engine.db(), id).await.unwrap().job.status == JobState::Succeeded
    })
    .await;
    assert!(done, "job did not succeed");

    let job = admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.attempts.len(), 1);
    let a = &job.attempts[0];
    assert_eq!(a.attempt, 1);
    assert_eq!(a.outcome.as_deref(), Some("succeeded"));
    assert_eq!(a.worker_id, &*engine.workers().worker_id);
    assert!(a.finished_at.unwrap() >= a.started_at);
    assert!(job.job.finished_at.is_some());
    assert_eq!(job.locked_by, None, "no lease once finished");
    assert_eq!(runs.get(), 1);
    // The first attempt's success is recorded on the job row alone (migration
    // 0006_first_success): no attempt row was written for it.
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_attempts WHERE job_id = $1")
        .bind(id)
        .fetch_one(engine.db())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
}

/// A database migrated before 0006_first_success has an attempt row for every attempt. The
/// migration moves a first-attempt success's worker to its job row and drops the row; the
/// history reads the same afterwards (each attempt once, with its worker), and attempts
/// that say more than the job row (a retry, a later success) keep their rows. `t` is blank.
async fn an_old_databases_first_successes_move_to_their_job_rows(t: TestDb) {
    let mut before = engine::db::engine_migrator(t.backend);
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 6)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&t.db).await.unwrap();
    // As the old ack wrote them: a first-attempt success (locked_by cleared, one row), a
    // skip, and a job that succeeded at its second attempt (two rows).
    let insert = "INSERT INTO jobs (kind, args, status, attempt, max_attempts, run_at, created_at, \
                      started_at, finished_at, note) \
                  VALUES ('probe', '{}', 'succeeded', $1, 3, 0, 0, 10, 20, $2) RETURNING id";
    let mut ids = Vec::new();
    for (attempt, note) in [(1, None), (1, Some("nothing to do")), (2, None)] {
        let id: i64 = sqlx::query_scalar(insert)
            .bind(attempt)
            .bind(note)
            .fetch_one(&t.db)
            .await
            .unwrap();
        ids.push(id);
    }
    let rows = [
        (ids[0], 1, "succeeded", None),
        (ids[1], 1, "skipped", Some("nothing to do")),
        (ids[2], 1, "retrying", Some("boom")),
        (ids[2], 2, "succeeded", None),
    ];
    for (job, attempt, outcome, error) in rows {
        sqlx::query(
            "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error) \
             VALUES ($1, $2, $3, 10, 20, $4, $5)",
        )
        .bind(job)
        .bind(attempt)
        .bind(format!("old-worker-{attempt}"))
        .bind(outcome)
        .bind(error)
        .execute(&t.db)
        .await
        .unwrap();
    }

    engine::db::migrate(&t.db, t.backend).await.unwrap();

    let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_attempts")
        .fetch_one(&t.db)
        .await
        .unwrap();
    assert_eq!(written, 2, "only the retried job keeps its rows");
    let history = |id: i64| {
        let db = t.db.clone();
        async move {
            admin::get_job(&db, id)
                .await
                .unwrap()
                .attempts
                .into_iter()
                .map(|a| (a.attempt, a.worker_id, a.outcome, a.error))
                .collect::<Vec<_>>()
        }
    };
    let w1 = || "old-worker-1".to_owned();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(history(ids[0]).await, [(1, w1(), some("succeeded"), None)]);
    assert_eq!(
        history(ids[1]).await,
        [(1, w1(), some("skipped"), some("nothing to do"))]
    );
    assert_eq!(
        history(ids[2]).await,
        [
            (1, w1(), some("retrying"), some("boom")),
            (2, "old-worker-2".to_owned(), some("succeeded"), None)
        ]
    );
}

async fn transient_failure_retries_with_persisted_backoff(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let id = engine
        .enqueue(Probe::new(Behaviour::FailTimes(2)))
        .await
        .unwrap()
        .id();

    // Attempt 1 fails: retrying, next run 10 s (base) ± 10 % later, persisted on the row.
    assert_eq!(drain(&engine).await.retried, 1);
    let job = admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.status, JobState::Retrying);
    let wait = job.job.run_at - clock.now_ms();
    assert!((9_000..=11_000).contains(&wait), "first backoff {wait} ms");
    // Not due yet: nothing runs.
    assert_eq!(drain(&engine).await, Default::default());

    // Attempt 2 fails: 20 s ± 10 %.
    clock.advance(Duration::from_millis(wait as u64));
    assert_eq!(drain(&engine).await.retried, 1);
    let job = admin::get_job(engine.db(), id).await.unwrap();
    let wait = job.job.run_at - clock.now_ms();
    assert!(
        (18_000..=22_000).contains(&wait),
        "second backoff {wait} ms"
    );

    // A new engine on the same database (a restart) keeps the schedule.
    let restarted = t.engine(registry(&runs), clock.clone());
    assert_eq!(drain(&restarted).await, Default::default());
    clock.advance(Duration::from_millis(wait as u64));
    assert_eq!(drain(&restarted).await.succeeded, 1);

    let job = admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.status, JobState::Succeeded);
    let history: Vec<_> = job
        .attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.clone().unwrap(), a.error.clone()))
        .collect();
    assert_eq!(
        history,
        [
            (1, "retrying".into(), Some("flaky on attempt 1".into())),
            (2, "retrying".into(), Some("flaky on attempt 2".into())),
            (3, "succeeded".into(), None),
        ]
    );
}

async fn exhausted_attempts_fail_and_are_never_fetched_again(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let id = engine
        .enqueue(Probe::new(Behaviour::FailTransient))
        .await
        .unwrap()
        .id();
    for _ in 0..3 {
        drain(&engine).await;
        clock.advance(Duration::from_secs(120));
    }
    let job = admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.status, JobState::Failed);
    assert_eq!(job.attempts.len(), 3);
    assert!(
        job.job
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("attempts exhausted (3/3): boom on attempt 3")
    );
    clock.advance(Duration::from_secs(86_400));
    assert_eq!(drain(&engine).await, Default::default());
    assert_eq!(runs.get(), 3);
}

async fn permanent_error_fails_at_once(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::manual(start()));
    let id = engine
        .enqueue(Probe::new(Behaviour::FailPermanent))
        .await
        .unwrap()
        .id();
    assert_eq!(drain(&engine).await.failed, 1);
    let job = admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.status, JobState::Failed);
    assert_eq!(job.job.last_error.as_deref(), Some("bad input"));
    assert_eq!(job.attempts[0].outcome.as_deref(), Some("failed"));
}

async fn skipped_job_succeeds_with_its_reason(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::manual(start()));
    let id = engine
        .enqueue(Probe::new(Behaviour::Skip))
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    let job = admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.status, JobState::Succeeded);
    assert_eq!(job.job.note.as_deref(), Some("REDIS_URL not set"));
    assert_eq!(job.attempts[0].outcome.as_deref(), Some("skipped"));
    assert_eq!(job.attempts[0].error.as_deref(), Some("REDIS_URL not set"));
}

async fn panic_is_a_failed_attempt_and_leaves_nothing_running(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let id = engine
        .enqueue(NewJob::new(Probe::new(Behaviour::Panic)).max_attempts(2))
        .await
        .unwrap()
        .id();
    assert_eq!(drain(&engine).await.retried, 1);
    let job = admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.status, JobState::Retrying);
    assert_eq!(
        job.attempts[0].error.as_deref(),
        Some("panicked: handler exploded")
    );
    clock.advance(Duration::from_secs(60));
    assert_eq!(drain(&engine).await.failed, 1);
    let job = admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.status, JobState::Failed);
    let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'running'")
        .fetch_one(engine.db())
        .await
        .unwrap();
    assert_eq!(running, 0);
}

async fn undecodable_args_fail_that_job_and_the_worker_goes_on(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::system());
    // A row written by an older release (or by hand) that no longer decodes.
    let bad: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, args, status, max_attempts, run_at, created_at) \
         VALUES ('probe', '{\"behaviour\":\"Teleport\"}', 'pending', 3, 0, 0) RETURNING id",
    )
    .fetch_one(engine.db())
    .await
    .unwrap();
    let good = engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    let pool = WorkerPool::start(&engine);
    let settled = eventually(10, || async {
        let b = admin::get_job(engine.db(), bad).await.unwrap().job.status;
        let g = admin::get_job(engine.db(), good).await.unwrap().job.status;
        b == JobState::Failed && g == JobState::Succeeded
    })
    .await;
    assert!(settled, "bad row should fail and good row succeed");
    let bad = admin::get_job(engine.db(), bad).await.unwrap();
    let err = bad.job.last_error.unwrap();
    assert!(
        err.starts_with("args do not decode as probe: unknown variant `Teleport`"),
        "{err}"
    );
    assert_eq!(
        bad.attempts.len(),
        1,
        "a decode error is permanent: no retries"
    );
    // The worker is still alive and takes new work.
    let later = engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    assert!(
        eventually(10, || async {
            admin::get_job(engine.db(), later).await.unwrap().job.status == JobState::Succeeded
        })
        .await
    );
    assert!(pool.is_alive());
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
}

async fn late_ack_of_an_older_attempt_does_not_finish_a_newer_one(t: TestDb) {
    use engine::storage::{self, Ack, AttemptEnd, LeaseNow};
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let id = engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    let claim = |lease_ms: i64| {
        let engine = engine.clone();
        async move {
            let now = engine.clock().now_ms();
            let mut conn = engine.db().acquire().await.unwrap();
            storage::exchange(
                &mut conn,
                "w1",
                "probe",
                &[],
                1,
                now,
                LeaseNow::At(now),
                lease_ms,
            )
            .await
            .unwrap()
            .claimed
        }
    };
    let ack = |ack: Ack| {
        let engine = engine.clone();
        async move {
            let now = engine.clock().now_ms();
            let mut conn = engine.db().acquire().await.unwrap();
            storage::exchange(
                &mut conn,
                "w1",
                "probe",
                &[ack],
                0,
                now,
                LeaseNow::At(now),
                0,
            )
            .await
            .unwrap()
            .lost
        }
    };
    // Attempt 1 is claimed, its lease lapses and is rescued; the same worker claims attempt 2.
    assert_eq!(claim(1_000).await[0].attempt, 1);
    clock.advance(Duration::from_secs(2));
    assert_eq!(engine::worker::rescue_expired(&engine).await.unwrap(), 1);
    clock.advance(Duration::from_secs(60));
    assert_eq!(claim(30_000).await[0].attempt, 2);

    // The success of attempt 1 arrives late: it is dropped, attempt 2 keeps running.
    let late = Ack {
        id,
        attempt: 1,
        started_at: clock.now_ms(),
        end: AttemptEnd::Succeeded { skipped: None },
    };
    assert_eq!(ack(late).await, [(id, 1)]);
    let job = admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.status, JobState::Running);
    let outcomes: Vec<_> = job
        .attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.clone()))
        .collect();
    assert_eq!(outcomes, [(1, Some("lease_expired".into())), (2, None)]);

    // Attempt 2's own success is recorded.
    let second = Ack {
        id,
        attempt: 2,
        started_at: clock.now_ms(),
        end: AttemptEnd::Succeeded { skipped: None },
    };
    assert!(ack(second).await.is_empty());
    assert_eq!(
        admin::get_job(engine.db(), id).await.unwrap().job.status,
        JobState::Succeeded
    );
}

/// A backlog of quick jobs: the claim-ahead buffer fills, acks and claims go in large
/// batches (on Postgres side by side on two connections). Each job runs once and has one
/// recorded attempt, nothing is left held. A first-attempt success writes no attempt row:
/// its job row is the record (engine migration 0006_first_success).
async fn a_backlog_runs_each_job_once_with_one_recorded_attempt(t: TestDb) {
    const N: i64 = 2_000;
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::system());
    let mut tx = engine.begin().await.unwrap();
    tx.enqueue_many(
        (0..N)
            .map(|_| NewJob::new(Probe::new(Behaviour::Succeed)))
            .collect(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let pool = WorkerPool::start(&engine);
    let count = |sql: &'static str| {
        let engine = engine.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(engine.db())
                .await
                .unwrap()
        }
    };
    assert!(
        eventually(60, || async {
            count("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'").await == N
        })
        .await,
        "the backlog drained"
    );
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    assert_eq!(runs.get(), N as usize, "each job ran once");
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM job_attempts_all \
             WHERE attempt = 1 AND outcome = 'succeeded' AND worker_id <> '' \
               AND started_at <= finished_at"
        )
        .await,
        N
    );
    assert_eq!(count("SELECT COUNT(*) FROM job_attempts_all").await, N);
    assert_eq!(
        count("SELECT COUNT(*) FROM job_attempts").await,
        0,
        "no rows written"
    );
    assert_eq!(count("SELECT MAX(attempt) FROM jobs").await, 1);
}
