//! Transactional enqueue, unique keys and the admin operations, on both backends.

mod support;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use engine::admin::{self, JobFilter};
use engine::testing::{TestDb, drain};
use engine::worker::WorkerPool;
use engine::{
    Actor, Backend, Clock, Enqueued, Error, JobState, NewJob, WorkerSettings, backend_tests,
};
use support::{Behaviour, Probe, Runs, eventually, registry};

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

backend_tests!(
    concurrent_enqueues_share_commits_and_each_gets_its_own_answer,
    a_row_the_database_refuses_fails_only_its_own_enqueue,
    rolled_back_enqueue_leaves_no_job_and_committed_enqueue_runs,
    unique_key_held_by_an_unfinished_job_returns_that_job,
    cancel_stops_a_waiting_job_and_refuses_others,
    retry_gives_a_failed_job_fresh_attempts_and_keeps_its_history,
    list_filters_and_pages_with_a_stable_cursor,
    stats_count_per_kind_and_status_with_oldest_pending_age_and_throughput,
    details_read_together_are_each_their_own_jobs,
    every_caller_of_a_failed_group_read_hears_the_database_is_out_of_reach,
);

async fn rolled_back_enqueue_leaves_no_job_and_committed_enqueue_runs(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::system());
    let pool = WorkerPool::start(&engine);

    // A business write and its job, rolled back together.
    sqlx::query("CREATE TABLE uploads (name TEXT NOT NULL)")
        .execute(engine.db())
        .await
        .unwrap();
    let mut tx = engine.db().begin().await.unwrap();
    sqlx::query("INSERT INTO uploads (name) VALUES ('a.mp3')")
        .execute(&mut *tx)
        .await
        .unwrap();
    engine
        .enqueue_tx(&mut tx, Probe::new(Behaviour::Succeed))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(engine.db())
        .await
        .unwrap();
    let uploads: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads")
        .fetch_one(engine.db())
        .await
        .unwrap();
    assert_eq!((jobs, uploads), (0, 0));

    // Committed: the job runs. On Postgres the NOTIFY sent at commit wakes the worker, so
    // do not call engine.wake(); on SQLite the worker's poll finds it.
    let mut tx = engine.db().begin().await.unwrap();
    let id = engine
        .enqueue_tx(&mut tx, Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    tx.commit().await.unwrap();
    assert!(
        eventually(10, || async {
            admin::get_job(engine.db(), id).await.unwrap().job.status == JobState::Succeeded
        })
        .await
    );
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
}

async fn unique_key_held_by_an_unfinished_job_returns_that_job(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::manual(start()));
    let job = || NewJob::new(Probe::new(Behaviour::Succeed)).unique_key("thumbnail:track:7");
    let first = engine.enqueue(job()).await.unwrap();
    assert!(matches!(first, Enqueued::Inserted(_)));

    // Inside a transaction that goes on afterwards: no error, nothing inserted, tx usable.
    sqlx::query("CREATE TABLE uploads (name TEXT NOT NULL)")
        .execute(engine.db())
        .await
        .unwrap();
    let mut tx = engine.db().begin().await.unwrap();
    let second = engine.enqueue_tx(&mut tx, job()).await.unwrap();
    assert_eq!(second, Enqueued::Existing(first.id()));
    sqlx::query("INSERT INTO uploads (name) VALUES ('b.mp3')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(engine.db())
        .await
        .unwrap();
    assert_eq!(count, 1);

    // Once the holder finished, the key is free again.
    drain(&engine).await;
    let third = engine.enqueue(job()).await.unwrap();
    assert!(matches!(third, Enqueued::Inserted(id) if id != first.id()));
}

async fn cancel_stops_a_waiting_job_and_refuses_others(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let admin_key = Actor::api_key(1);
    let pending = engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    let retrying = engine
        .enqueue(Probe::new(Behaviour::FailTransient))
        .await
        .unwrap()
        .id();
    engine.cancel(pending, &admin_key).await.unwrap();
    drain(&engine).await; // runs `retrying` once
    assert_eq!(
        admin::get_job(engine.db(), retrying)
            .await
            .unwrap()
            .job
            .status,
        JobState::Retrying
    );
    engine.cancel(retrying, &admin_key).await.unwrap();

    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        drain(&engine).await,
        Default::default(),
        "cancelled jobs are not picked up"
    );
    assert_eq!(runs.get(), 1);

    match engine.cancel(pending, &admin_key).await {
        Err(Error::InvalidJobState {
            state: JobState::Cancelled,
            operation: "cancel",
            ..
        }) => {}
        other => panic!("expected a refused cancel, got {other:?}"),
    }
    assert!(matches!(
        engine.cancel(999_999, &admin_key).await,
        Err(Error::JobNotFound(999_999))
    ));
    let audit = engine::state_machine::history(
        &mut engine.db().acquire().await.unwrap(),
        "job",
        &pending.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].from_status.as_str(),
            audit[0].to_status.as_str(),
            audit[0].actor.as_str()
        ),
        ("pending", "cancelled", "api_key:1")
    );
}

async fn retry_gives_a_failed_job_fresh_attempts_and_keeps_its_history(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let id = engine
        .enqueue(Probe::new(Behaviour::FailPermanent))
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    assert!(matches!(
        engine.retry(id + 1000, &Actor::cli()).await,
        Err(Error::JobNotFound(_))
    ));
    engine.retry(id, &Actor::cli()).await.unwrap();
    let job = admin::get_job(engine.db(), id).await.unwrap();
    // A fresh set of 3 attempts; their numbers go on from the last one (2, 3, 4), so each
    // attempt number appears once in the history.
    assert_eq!(
        (
            job.job.status,
            job.job.attempt,
            job.job.max_attempts,
            job.job.finished_at
        ),
        (JobState::Pending, 1, 4, None)
    );
    drain(&engine).await;
    let job = admin::get_job(engine.db(), id).await.unwrap();
    assert_eq!(job.job.status, JobState::Failed);
    assert_eq!(job.attempts.len(), 2, "history kept across the retry");
    let numbers: Vec<u32> = job.attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2]);

    // A retry is refused for a job that is not failed or cancelled…
    let ok = engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    assert!(matches!(
        engine.retry(ok, &Actor::cli()).await,
        Err(Error::InvalidJobState {
            state: JobState::Pending,
            ..
        })
    ));
    // …and while another unfinished job holds its unique key.
    let keyed = engine
        .enqueue(NewJob::new(Probe::new(Behaviour::FailPermanent)).unique_key("k"))
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    let holder = engine
        .enqueue(NewJob::new(Probe::new(Behaviour::Succeed)).unique_key("k"))
        .await
        .unwrap()
        .id();
    match engine.retry(keyed, &Actor::cli()).await {
        Err(Error::UniqueKeyHeld { id, holder: h }) => assert_eq!((id, h), (keyed, holder)),
        other => panic!("expected UniqueKeyHeld, got {other:?}"),
    }
}

async fn list_filters_and_pages_with_a_stable_cursor(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let mut ids = Vec::new();
    for i in 0..7 {
        let b = if i % 2 == 0 {
            Behaviour::Succeed
        } else {
            Behaviour::FailPermanent
        };
        ids.push(engine.enqueue(Probe::new(b)).await.unwrap().id());
        clock.advance(Duration::from_secs(1));
    }
    drain(&engine).await;

    let failed = admin::list_jobs(
        engine.db(),
        &JobFilter {
            status: Some(JobState::Failed),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        failed.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[5], ids[3], ids[1]]
    );

    // Page through everything, 3 at a time, while new jobs arrive: no duplicates, no gaps.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = admin::list_jobs(
            engine.db(),
            &JobFilter {
                before_id: cursor,
                limit: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        seen.extend(page.jobs.iter().map(|j| j.id));
        engine
            .enqueue(Probe::new(Behaviour::Succeed))
            .await
            .unwrap();
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);

    // Time range on created_at: [t0+2s, t0+4s).
    let t0 = start().timestamp_millis();
    let ranged = admin::list_jobs(
        engine.db(),
        &JobFilter {
            since: Some(t0 + 2000),
            until: Some(t0 + 4000),
            kind: Some("probe".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        ranged.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[3], ids[2]]
    );
}

async fn stats_count_per_kind_and_status_with_oldest_pending_age_and_throughput(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap();
    drain(&engine).await;
    engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(90));
    engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap();
    let stats = admin::stats(engine.db(), clock.now_ms()).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].kind, "probe");
    assert_eq!(stats[0].counts["succeeded"], 1);
    assert_eq!(stats[0].counts["pending"], 2);
    assert_eq!(stats[0].counts["failed"], 0);
    assert_eq!(stats[0].oldest_pending_age_ms, Some(90_000));
    // The first job's attempt finished 90 s ago: in the last hour, not the last minute.
    let done = || admin::throughput(engine.db(), clock.now_ms());
    let probe = |last_minute, last_hour| admin::Throughput {
        last_minute,
        last_hour,
    };
    assert_eq!(done().await.unwrap()["probe"], probe(0, 1));
    drain(&engine).await;
    assert_eq!(done().await.unwrap()["probe"], probe(2, 3));
    clock.advance(Duration::from_secs(3601));
    assert!(done().await.unwrap().is_empty(), "nothing in the last hour");
}

/// Postgres only: a worker whose poll interval is a minute still starts a job committed by
/// another process (another engine) at once, because the commit sends NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commit_wakes_workers_of_other_processes_without_polling() {
    let Some(t) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let runs = Runs::default();
    let worker_engine = engine::Engine::builder(t.db.clone(), t.backend, t.url.clone())
        .registry(registry(&runs))
        .workers(WorkerSettings {
            poll_interval: Duration::from_secs(60),
            ..engine::testing::fast_worker_settings()
        })
        .build();
    let pool = WorkerPool::start(&worker_engine);
    tokio::time::sleep(Duration::from_millis(300)).await; // first (empty) claim done, LISTEN up
    let producer = t.engine(registry(&runs), Clock::system());
    let mut tx = producer.db().begin().await.unwrap();
    let id = producer
        .enqueue_tx(&mut tx, Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    tx.commit().await.unwrap();
    let started = eventually(5, || async {
        admin::get_job(&t.db, id).await.unwrap().job.status == JobState::Succeeded
    })
    .await;
    assert!(
        started,
        "a NOTIFY at commit should wake the worker long before its 60 s poll"
    );
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
}

async fn next_notification(listener: &mut sqlx::postgres::PgListener) -> String {
    tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .unwrap()
        .payload()
        .to_owned()
}

/// A second kind, never backlogged: its NOTIFY marks the point after which the first
/// kind's would have arrived (one sender, in order).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Marker {}

impl engine::Job for Marker {
    const KIND: &'static str = "marker";
}

/// Postgres only: no NOTIFY for a kind while its backlog shows every worker busy (the head
/// of its queue due for longer than a poll interval); one again once it drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sends_no_notify_for_a_kind_whose_backlog_shows_every_worker_busy() {
    let Some(t) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let runs = Runs::default();
    let mut reg = registry(&runs);
    reg.register::<Marker, _, _>(|_, _| async { Ok(engine::Outcome::Succeeded) });
    let clock = Clock::manual(start());
    let producer = t.engine(reg, clock.clone());
    let mut listener = sqlx::postgres::PgListener::connect(&t.url).await.unwrap();
    listener
        .listen(engine::storage::NOTIFY_CHANNEL)
        .await
        .unwrap();

    // No backlog: the enqueue wakes the other processes.
    producer
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap();
    assert_eq!(next_notification(&mut listener).await, "probe");

    // That job has now waited 10 s, far beyond the 50 ms poll: every worker is busy.
    clock.advance(Duration::from_secs(10));
    producer
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap();
    producer.enqueue(Marker {}).await.unwrap();
    assert_eq!(
        next_notification(&mut listener).await,
        "marker",
        "the busy kind's NOTIFY is skipped, the idle kind's sent"
    );

    // Drained: the next enqueue notifies again.
    sqlx::query("UPDATE jobs SET status = 'succeeded', finished_at = 1 WHERE kind = 'probe'")
        .execute(&t.db)
        .await
        .unwrap();
    producer
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap();
    assert_eq!(next_notification(&mut listener).await, "probe");
}

/// `Engine::enqueue` group-commits concurrent calls: each caller still gets its own id once
/// its job is committed, and a unique key contended inside one group has one winner.
async fn concurrent_enqueues_share_commits_and_each_gets_its_own_answer(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::manual(start()));
    let plain: Vec<_> = (0..64)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut probe = Probe::new(Behaviour::Succeed);
                probe.tag = format!("p{i}");
                (probe.tag.clone(), engine.enqueue(probe).await.unwrap())
            })
        })
        .collect();
    let keyed: Vec<_> = (0..16)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .enqueue(NewJob::new(Probe::new(Behaviour::Succeed)).unique_key("one"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut answers = Vec::new();
    for h in plain {
        let (tag, e) = h.await.unwrap();
        assert!(matches!(e, Enqueued::Inserted(_)));
        ids.push(e.id());
        answers.push((tag, e.id()));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 64, "one row each");
    let mut keyed_results = Vec::new();
    for h in keyed {
        keyed_results.push(h.await.unwrap());
    }
    let inserted: Vec<_> = keyed_results
        .iter()
        .filter(|e| matches!(e, Enqueued::Inserted(_)))
        .collect();
    assert_eq!(inserted.len(), 1, "one winner for the key");
    assert!(keyed_results.iter().all(|e| e.id() == inserted[0].id()));
    // Every answer is a committed row, the one with the args its own caller gave.
    for (tag, id) in &answers {
        let j = admin::get_job(engine.db(), *id).await.unwrap();
        assert_eq!(j.job.status, JobState::Pending);
        assert_eq!(j.args["tag"].as_str(), Some(tag.as_str()), "job {id}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(engine.db())
        .await
        .unwrap();
    assert_eq!(rows, 65);
}

/// Postgres refuses a NUL character in text (SQLite stores it): the enqueue carrying one
/// fails alone, the ones that shared its group are written.
async fn a_row_the_database_refuses_fails_only_its_own_enqueue(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::manual(start()));
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let key = if i == 11 {
                    "bad\0key".to_owned()
                } else {
                    format!("k{i}")
                };
                engine
                    .enqueue(NewJob::new(Probe::new(Behaviour::Succeed)).unique_key(key))
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in calls {
        results.push(h.await.unwrap());
    }
    for (i, r) in results.iter().enumerate() {
        if i == 11 && t.backend == Backend::Postgres {
            assert!(matches!(r, Err(Error::Database(_))), "{r:?}");
        } else {
            assert!(r.is_ok(), "call {i}: {r:?}");
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(engine.db())
        .await
        .unwrap();
    let expected = if t.backend == Backend::Postgres {
        23
    } else {
        24
    };
    assert_eq!(rows, expected);
}

/// `admin::get_jobs` answers each id asked with its own job, attempts, steps and children,
/// in the order asked (an id twice, twice; an id with no job, not found), from one
/// statement; `Engine::job_detail`'s concurrent callers (read in groups) each get their own.
async fn details_read_together_are_each_their_own_jobs(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::manual(start()));
    let mut ids = Vec::new();
    for tag in ["a", "b", "c", "d"] {
        let mut probe = Probe::new(Behaviour::Succeed);
        probe.tag = tag.to_owned();
        ids.push(engine.enqueue(probe).await.unwrap().id());
    }
    let [a, b, c, d] = ids[..] else {
        unreachable!()
    };
    // a: two attempts kept; b: a step; c: more children than a detail lists; d: two.
    let children = |parent: i64, n: usize| {
        format!(
            "INSERT INTO jobs (kind, args, max_attempts, run_at, created_at, parent_id) \
             WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n}) \
             SELECT 'probe', '{{}}', 1, 0, 0, {parent} FROM s"
        )
    };
    for sql in [
        format!(
            "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error) \
             VALUES ({a}, 1, 'w', 1, 2, 'retrying', 'boom 1'), ({a}, 2, 'w', 3, 4, 'retrying', 'boom 2')"
        ),
        format!(
            "INSERT INTO job_steps (job_id, seq, name, result, attempt, finished_at) \
             VALUES ({b}, 0, 'charge', '\"ch_1\"', 1, 5)"
        ),
        children(c, admin::MAX_CHILDREN_SHOWN + 5),
        children(d, 2),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(engine.db())
            .await
            .unwrap();
    }
    let missing = a + 100_000;
    let asked = [a, missing, b, c, d, a];
    let got = admin::get_jobs(engine.db(), t.backend, &asked)
        .await
        .unwrap();
    assert_eq!(got.len(), asked.len(), "one answer per id asked");
    let ok = |i: usize| got[i].as_ref().unwrap();
    for (i, id) in asked.iter().enumerate().filter(|(_, id)| **id != missing) {
        assert_eq!(ok(i).job.id, *id);
    }
    assert!(matches!(got[1], Err(Error::JobNotFound(id)) if id == missing));
    let errors: Vec<_> = ok(0).attempts.iter().map(|x| x.error.as_deref()).collect();
    assert_eq!(errors, [Some("boom 1"), Some("boom 2")]);
    assert!(ok(0).steps.is_empty() && ok(0).children.is_empty());
    assert_eq!(ok(0).args["tag"], "a");
    assert_eq!(ok(2).steps.len(), 1);
    assert_eq!(ok(2).steps[0].name, "charge");
    assert!(ok(2).attempts.is_empty() && ok(2).children.is_empty());
    let shown: Vec<i64> = ok(3).children.iter().map(|x| x.id).collect();
    assert_eq!(
        shown.len(),
        admin::MAX_CHILDREN_SHOWN,
        "the first children only"
    );
    assert!(shown.windows(2).all(|w| w[0] < w[1]) && shown[0] > d);
    let of_d: Vec<i64> = ok(4).children.iter().map(|x| x.id).collect();
    assert_eq!(of_d.len(), 2);
    assert!(of_d[0] > shown[shown.len() - 1], "d's children, not c's");
    assert_eq!(ok(5), ok(0));
    // Each the same as a read of its own.
    for (i, id) in asked.iter().enumerate().filter(|(_, id)| **id != missing) {
        assert_eq!(&admin::get_job(engine.db(), *id).await.unwrap(), ok(i));
    }

    let reads: Vec<_> = (0..96)
        .map(|i| {
            let engine = engine.clone();
            let id = asked[i % asked.len()];
            tokio::spawn(async move { (id, engine.job_detail(id).await) })
        })
        .collect();
    for read in reads {
        match read.await.unwrap() {
            (id, Ok(detail)) => {
                let i = asked.iter().position(|x| *x == id).unwrap();
                assert_eq!(&detail, ok(i), "job {id}");
            }
            (id, Err(e)) => assert!(
                id == missing && matches!(e, Error::JobNotFound(x) if x == missing),
                "job {id}: {e:?}"
            ),
        }
    }
}

/// A group read that fails with the database out of reach says so to every caller it
/// served (each gets a 503 to retry, not a 500), not to the first one only.
async fn every_caller_of_a_failed_group_read_hears_the_database_is_out_of_reach(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::manual(start()));
    let id = engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    engine.job_detail(id).await.unwrap();
    engine.db().close().await;
    let reads: Vec<_> = (0..32)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.job_detail(id).await })
        })
        .collect();
    for read in reads {
        let e = read.await.unwrap().unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
    }
}
