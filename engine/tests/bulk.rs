//! Bulk enqueue (`Engine::enqueue_many`) on both backends: rows, ids in input order across
//! several multi-row INSERTs, unique keys, rollback, and the jobs then run.

mod support;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use engine::storage::INSERT_CHUNK;
use engine::testing::{TestDb, drain};
use engine::{Clock, Enqueued, JobState, NewJob, backend_tests};
use support::{Behaviour, Probe, Runs, registry};

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// Args whose JSON text holds what a Postgres array literal must escape (quotes,
/// backslashes, braces, commas, a bare `NULL`, blanks) and non-ASCII: they must come back
/// byte for byte.
fn tagged(i: usize) -> Probe {
    Probe {
        behaviour: Behaviour::Succeed,
        tag: format!("bulk-{i} \"q\" \\ {{a,b}} NULL\t\n é🎵"),
    }
}

/// id, args, status, priority, max_attempts, run_at, created_at, unique_key.
type JobRow = (i64, String, String, i32, i32, i64, i64, Option<String>);

backend_tests!(enqueue_many_inserts_rows_in_order_and_they_run);

async fn enqueue_many_inserts_rows_in_order_and_they_run(t: TestDb) {
    let runs = Runs::default();
    let mut reg = registry(&runs);
    reg.set_concurrency("probe", 500);
    let clock = Clock::manual(start());
    let engine = t.engine(reg, clock.clone());
    let now = clock.now_ms();
    let count = |sql: &'static str| {
        let db = engine.db().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };

    // Rolled back: nothing stays.
    let mut tx = engine.db().begin().await.unwrap();
    let ids = engine
        .enqueue_many(&mut tx, (0..10).map(|i| NewJob::new(tagged(i))).collect())
        .await
        .unwrap();
    assert_eq!(ids.len(), 10);
    tx.rollback().await.unwrap();
    assert_eq!(count("SELECT COUNT(*) FROM jobs").await, 0);

    // A unique key held by an unfinished job, to be met inside the batch.
    let holder = engine
        .enqueue(NewJob::new(tagged(9_999)).unique_key("k:held"))
        .await
        .unwrap();
    assert!(matches!(holder, Enqueued::Inserted(_)));

    // More than two chunks, with overrides, a future job, a held and a free unique key.
    let n = 2 * INSERT_CHUNK + 234;
    let (held_at, free_at, future_at) = (700, 701, 3);
    let jobs: Vec<NewJob<Probe>> = (0..n)
        .map(|i| {
            let job = NewJob::new(tagged(i));
            match i {
                _ if i == held_at => job.unique_key("k:held"),
                _ if i == free_at => job.unique_key("k:free"),
                _ if i == future_at => job.run_at(now + 60_000),
                _ if i % 7 == 0 => job.priority(5).max_attempts(9),
                _ => job,
            }
        })
        .collect();
    let mut tx = engine.db().begin().await.unwrap();
    let ids = engine.enqueue_many(&mut tx, jobs).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(ids.len(), n);
    assert_eq!(ids[held_at], holder.id(), "a held key returns its holder");
    let fresh: Vec<i64> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != held_at)
        .map(|(_, id)| *id)
        .collect();
    assert!(
        fresh.windows(2).all(|w| w[0] < w[1]),
        "ids follow input order"
    );
    assert!(fresh[0] > holder.id());

    // Every row is what its NewJob said, under the id returned at its position.
    let rows: Vec<JobRow> = sqlx::query_as(
        "SELECT id, args, status, priority, max_attempts, run_at, created_at, unique_key \
         FROM jobs WHERE id <> $1 ORDER BY id",
    )
    .bind(holder.id())
    .fetch_all(engine.db())
    .await
    .unwrap();
    assert_eq!(rows.len(), n - 1);
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != held_at) {
        let row = rows.iter().find(|r| r.0 == *id).expect("row for id");
        let args: Probe = serde_json::from_str(&row.1).unwrap();
        assert_eq!(args, tagged(i), "job {i} is row {id}");
        assert_eq!(row.2, "pending");
        let (priority, attempts) = if i % 7 == 0 && i != future_at {
            (5, 9)
        } else {
            (0, 3)
        };
        assert_eq!((row.3, row.4), (priority, attempts), "job {i}");
        let run_at = if i == future_at { now + 60_000 } else { now };
        assert_eq!((row.5, row.6), (run_at, now), "job {i}");
        let key = (i == free_at).then(|| "k:free".to_owned());
        assert_eq!(row.7, key, "job {i}");
    }

    // They run: all but the future one (and the holder, which runs too).
    let report = drain(&engine).await;
    assert_eq!(report.succeeded, n - 1, "{report:?}");
    assert_eq!(runs.get(), n - 1);
    assert_eq!(
        count("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'").await,
        i64::try_from(n - 1).unwrap()
    );
    let waiting: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobs WHERE status = 'pending'")
        .fetch_all(engine.db())
        .await
        .unwrap();
    assert_eq!(waiting, [ids[future_at]]);
    assert_eq!(
        count("SELECT COUNT(*) FROM job_attempts_all WHERE outcome = 'succeeded'").await,
        i64::try_from(n - 1).unwrap()
    );

    clock.advance(Duration::from_secs(60));
    assert_eq!(drain(&engine).await.succeeded, 1);
    let state: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
        .bind(ids[future_at])
        .fetch_one(engine.db())
        .await
        .unwrap();
    assert_eq!(state, JobState::Succeeded.as_str());
}
