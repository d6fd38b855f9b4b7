//! The engine's edges on both backends: snooze and retry-at, lost leases (cancellation,
//! the fence, the database clock), shutdown hand-backs, discard hooks, an ack the database
//! refuses, rescue on the job's own policy, and a transition's audit row.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use apalis_core::error::{AbortError, BoxDynError, RetryAfterError};
use chrono::{TimeZone, Utc};
use engine::registry::{DiscardReason, Discarded};
use engine::state_machine::{self, Lifecycle, TransitionError};
use engine::storage::{self, LeaseNow};
use engine::testing::{TestDb, drain, fast_worker_settings};
use engine::worker::WorkerPool;
use engine::{
    Actor, Backend, Clock, DbConn, Engine, Job, JobContext, JobError, JobPolicy, JobState, NewJob,
    Outcome, Registry, RetryPolicy, WorkerSettings, admin, backend_tests,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use support::{Behaviour, Probe, Runs, eventually, registry};

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

backend_tests!(
    snoozed_job_runs_again_later_without_using_an_attempt,
    retry_at_and_retry_after_set_the_next_run_exactly,
    apalis_errors_keep_their_meaning,
    an_attempt_whose_lease_is_taken_over_is_stopped_and_records_nothing,
    the_fence_refuses_domain_writes_once_the_lease_is_lost,
    a_worker_whose_clock_runs_ahead_cannot_take_a_live_lease,
    shutdown_hands_back_only_the_attempts_it_cut_off,
    released_attempts_stop_being_given_back_after_the_cap,
    discard_hook_runs_with_every_final_failure_and_cancel,
    an_ack_the_database_refuses_does_not_hold_back_the_others,
    rescue_retries_on_the_backoff_stored_on_the_job,
    a_transition_never_commits_without_its_audit_row,
);

async fn job(engine: &Engine, id: i64) -> admin::JobDetail {
    admin::get_job(engine.db(), id).await.unwrap()
}

fn outcomes(j: &admin::JobDetail) -> Vec<(u32, Option<String>)> {
    j.attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.clone()))
        .collect()
}

async fn snoozed_job_runs_again_later_without_using_an_attempt(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let id = engine
        .enqueue(Probe::new(Behaviour::SnoozeOnce(30_000)))
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    let j = job(&engine, id).await;
    assert_eq!(j.job.status, JobState::Pending);
    assert_eq!(
        j.job.run_at,
        clock.now_ms() + 30_000,
        "no jitter on a snooze"
    );
    // The snooze did not use an attempt: one more is allowed.
    assert_eq!((j.job.attempt, j.job.max_attempts), (1, 4));
    assert_eq!(outcomes(&j), [(1, Some("snoozed".into()))]);
    assert_eq!(drain(&engine).await, Default::default(), "not due yet");

    clock.advance(Duration::from_secs(30));
    assert_eq!(drain(&engine).await.succeeded, 1);
    let j = job(&engine, id).await;
    assert_eq!(j.job.status, JobState::Succeeded);
    assert_eq!(
        outcomes(&j),
        [(1, Some("snoozed".into())), (2, Some("succeeded".into()))]
    );
}

async fn retry_at_and_retry_after_set_the_next_run_exactly(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    let engine = t.engine(registry(&runs), clock.clone());
    let at = engine
        .enqueue(Probe::new(Behaviour::RetryAtIn(45_000)))
        .await
        .unwrap()
        .id();
    let after = engine
        .enqueue(Probe::new(Behaviour::RetryAfter(7_000)))
        .await
        .unwrap()
        .id();
    assert_eq!(drain(&engine).await.retried, 2);
    let now = clock.now_ms();
    let j = job(&engine, at).await;
    assert_eq!(
        (j.job.status, j.job.run_at),
        (JobState::Retrying, now + 45_000)
    );
    assert_eq!(j.job.last_error.as_deref(), Some("try at a given time"));
    assert_eq!(job(&engine, after).await.job.run_at, now + 7_000);
    // Still attempts: on the last one, the job fails.
    for _ in 0..2 {
        clock.advance(Duration::from_secs(60));
        drain(&engine).await;
    }
    let j = job(&engine, at).await;
    assert_eq!(j.job.status, JobState::Failed);
    assert!(
        j.job
            .last_error
            .unwrap()
            .starts_with("attempts exhausted (3/3)")
    );
}

/// A handler written for apalis, returning apalis's own errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApalisStyle {
    abort: bool,
}

impl Job for ApalisStyle {
    const KIND: &'static str = "apalis_style";
}

async fn apalis_style(args: ApalisStyle) -> Result<(), BoxDynError> {
    if args.abort {
        Err(AbortError::new(std::io::Error::other("never again")).into())
    } else {
        Err(RetryAfterError::new(std::io::Error::other("slow down"), Duration::from_secs(9)).into())
    }
}

async fn apalis_errors_keep_their_meaning(t: TestDb) {
    let clock = Clock::manual(start());
    let mut reg = Registry::new();
    reg.register_fn::<ApalisStyle, _, ()>(apalis_style);
    let engine = t.engine(reg, clock.clone());
    let retry = engine
        .enqueue(ApalisStyle { abort: false })
        .await
        .unwrap()
        .id();
    let abort = engine
        .enqueue(ApalisStyle { abort: true })
        .await
        .unwrap()
        .id();
    drain(&engine).await;
    // apalis itself ignores RetryAfterError's duration (a hot loop on Postgres, a task stuck
    // forever on SQLite); here it is the job's next run.
    let j = job(&engine, retry).await;
    assert_eq!(
        (j.job.status, j.job.run_at),
        (JobState::Retrying, clock.now_ms() + 9_000)
    );
    assert_eq!(j.job.last_error.as_deref(), Some("slow down"));
    let j = job(&engine, abort).await;
    assert_eq!(j.job.status, JobState::Failed, "AbortError is permanent");
    assert_eq!(j.job.last_error.as_deref(), Some("never again"));
}

/// Sleeps, then sets its flag: a flag never set means the attempt was stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slow {
    ms: u64,
}

impl Job for Slow {
    const KIND: &'static str = "slow";
}

fn slow_registry(finished: Arc<AtomicBool>) -> Registry {
    let mut reg = Registry::new();
    reg.register::<Slow, _, _>(move |args, _ctx| {
        let finished = Arc::clone(&finished);
        async move {
            tokio::time::sleep(Duration::from_millis(args.ms)).await;
            finished.store(true, Ordering::SeqCst);
            Ok(Outcome::Succeeded)
        }
    });
    reg
}

/// Another worker takes job `id` over, as after a rescue and a new claim.
async fn take_over(engine: &Engine, id: i64) {
    let n = sqlx::query(
        "UPDATE jobs SET locked_by = 'thief', attempt = attempt + 1, lease_expires_at = lease_expires_at + 600000 \
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .execute(engine.db())
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(n, 1);
}

async fn running_on_this_worker(engine: &Engine, id: i64) -> bool {
    let j = job(engine, id).await;
    j.job.status == JobState::Running
        && j.locked_by.as_deref() == Some(&*engine.workers().worker_id)
}

async fn an_attempt_whose_lease_is_taken_over_is_stopped_and_records_nothing(t: TestDb) {
    let finished = Arc::new(AtomicBool::new(false));
    let engine = t.engine(slow_registry(Arc::clone(&finished)), Clock::system());
    let pool = WorkerPool::start(&engine);
    let id = engine.enqueue(Slow { ms: 1_500 }).await.unwrap().id();
    assert!(eventually(10, || running_on_this_worker(&engine, id)).await);
    take_over(&engine, id).await;
    // The next renewal (every 200 ms here) finds the lease gone and stops the handler.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the handler was stopped before its end"
    );
    let j = job(&engine, id).await;
    assert_eq!(j.job.status, JobState::Running);
    assert_eq!(j.locked_by.as_deref(), Some("thief"));
    assert_eq!(
        outcomes(&j),
        [(2, None)],
        "nothing recorded for the stopped attempt"
    );
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
}

/// Writes a mark in its own transaction, fenced, once the test lets it go on.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fenced {}

impl Job for Fenced {
    const KIND: &'static str = "fenced";
}

async fn the_fence_refuses_domain_writes_once_the_lease_is_lost(t: TestDb) {
    sqlx::query("CREATE TABLE marks (job_id BIGINT NOT NULL)")
        .execute(&t.db)
        .await
        .unwrap();
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let mut reg = Registry::new();
    let gate = Arc::clone(&go);
    reg.register::<Fenced, _, _>(move |_args, ctx: JobContext| {
        let gate = Arc::clone(&gate);
        async move {
            gate.acquire().await.expect("gate").forget();
            let mut tx = ctx.db().begin().await?;
            sqlx::query("INSERT INTO marks (job_id) VALUES ($1)")
                .bind(ctx.job_id)
                .execute(&mut *tx)
                .await?;
            ctx.fence(&mut tx).await?;
            tx.commit().await?;
            Ok(Outcome::Succeeded)
        }
    });
    // Renewals far apart: only the fence can notice the lost lease.
    let engine = Engine::builder(t.db.clone(), t.backend, t.url.clone())
        .registry(reg)
        .workers(WorkerSettings {
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_millis(50),
            ..WorkerSettings::default()
        })
        .build();
    let pool = WorkerPool::start(&engine);
    let stolen = engine.enqueue(Fenced {}).await.unwrap().id();
    assert!(eventually(10, || running_on_this_worker(&engine, stolen)).await);
    take_over(&engine, stolen).await;
    go.add_permits(1);
    let kept = engine.enqueue(Fenced {}).await.unwrap().id();
    assert!(eventually(10, || running_on_this_worker(&engine, kept)).await);
    go.add_permits(1);
    assert!(
        eventually(10, || async {
            job(&engine, kept).await.job.status == JobState::Succeeded
        })
        .await
    );
    let marks: Vec<i64> = sqlx::query_scalar("SELECT job_id FROM marks")
        .fetch_all(engine.db())
        .await
        .unwrap();
    assert_eq!(
        marks,
        [kept],
        "the attempt that lost its lease wrote nothing"
    );
    let j = job(&engine, stolen).await;
    assert_eq!(j.locked_by.as_deref(), Some("thief"));
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
}

async fn a_worker_whose_clock_runs_ahead_cannot_take_a_live_lease(t: TestDb) {
    if t.backend == Backend::Sqlite {
        // One SQLite file is shared by the processes of one host: one clock.
        return;
    }
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::system());
    let id = engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    // A worker claims it with a 2 s lease, by the database's clock.
    let mut conn = engine.db().acquire().await.unwrap();
    let now = engine.clock().now_ms();
    storage::exchange(
        &mut conn,
        "w1",
        "probe",
        &[],
        1,
        now,
        LeaseNow::Database,
        2_000,
    )
    .await
    .unwrap();
    // A host whose clock runs 20 s ahead looks for expired leases: there is none.
    let ahead = t.engine(registry(&runs), Clock::skewed(20_000));
    assert_eq!(engine::worker::rescue_expired(&ahead).await.unwrap(), 0);
    assert_eq!(job(&engine, id).await.locked_by.as_deref(), Some("w1"));
    // Once the lease really ran out, it is rescued.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(engine::worker::rescue_expired(&ahead).await.unwrap(), 1);
}

async fn shutdown_hands_back_only_the_attempts_it_cut_off(t: TestDb) {
    let runs = Runs::default();
    let mut reg = registry(&runs);
    reg.set_concurrency("probe", 50);
    let engine = t.engine(reg, Clock::system());
    let pool = WorkerPool::start(&engine);
    let long = engine
        .enqueue(Probe::new(Behaviour::Sleep(60_000)))
        .await
        .unwrap()
        .id();
    assert!(eventually(10, || running_on_this_worker(&engine, long)).await);
    // Quick jobs finish around the shutdown: their results must be recorded, not handed
    // back.
    let mut tx = engine.begin().await.unwrap();
    tx.enqueue_many(
        (0..40)
            .map(|_| NewJob::new(Probe::new(Behaviour::Sleep(5))))
            .collect(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    pool.shutdown(tokio::time::Instant::now() + Duration::from_millis(1_500))
        .await;

    let j = job(&engine, long).await;
    assert_eq!(j.job.status, JobState::Pending);
    assert_eq!(j.locked_by, None);
    assert_eq!(outcomes(&j), [(1, Some("released".into()))]);
    assert_eq!((j.job.attempt, j.job.max_attempts), (1, 4), "given back");
    // Nothing handed back ran to the end; nothing that ran to the end was handed back.
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT j.id, j.status, a.outcome FROM jobs j JOIN job_attempts_all a ON a.job_id = j.id",
    )
    .fetch_all(engine.db())
    .await
    .unwrap();
    for (id, status, outcome) in rows {
        match outcome.as_str() {
            "succeeded" => assert_eq!(status, "succeeded", "job {id}"),
            "released" => assert_eq!(status, "pending", "job {id}"),
            other => panic!("job {id}: unexpected outcome {other}"),
        }
    }
    let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'running'")
        .fetch_one(engine.db())
        .await
        .unwrap();
    assert_eq!(running, 0, "every claimed job was written or handed back");
}

async fn released_attempts_stop_being_given_back_after_the_cap(t: TestDb) {
    let runs = Runs::default();
    let engine = t.engine(registry(&runs), Clock::system());
    let id = engine
        .enqueue(Probe::new(Behaviour::Sleep(60_000)))
        .await
        .unwrap()
        .id();
    for cycle in 1..=storage::MAX_RELEASES + 1 {
        let pool = WorkerPool::start(&engine);
        // Started, not only claimed: a job claimed ahead but not started is handed back
        // at shutdown without using an attempt.
        let started = usize::try_from(cycle).unwrap();
        assert!(eventually(10, || async { runs.get() == started }).await);
        pool.shutdown(tokio::time::Instant::now() + Duration::from_millis(600))
            .await;
        let j = job(&engine, id).await;
        assert_eq!(j.job.status, JobState::Pending, "cycle {cycle}");
        assert_eq!(j.job.attempt, cycle, "a new number each time");
        let given_back = cycle.min(storage::MAX_RELEASES);
        assert_eq!(j.job.max_attempts, 3 + given_back, "cycle {cycle}");
    }
    let numbers: Vec<u32> = job(&engine, id)
        .await
        .attempts
        .iter()
        .map(|a| a.attempt)
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6]);
}

/// Ends as its tag says; its discard hook marks the job, and fails for the tag `bad`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Doomed {
    tag: String,
}

impl Job for Doomed {
    const KIND: &'static str = "doomed";
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(1), 2),
        ..JobPolicy::DEFAULT
    };
}

fn doomed(tag: &str) -> Doomed {
    Doomed { tag: tag.into() }
}

fn mark_discard<'c>(
    conn: &'c mut DbConn,
    job: Discarded<Doomed>,
) -> BoxFuture<'c, engine::Result<()>> {
    Box::pin(async move {
        if job.args.tag == "bad" {
            sqlx::query("INSERT INTO no_such_table VALUES (1)")
                .execute(&mut *conn)
                .await?;
        }
        let reason = match job.reason {
            DiscardReason::Failed(e) => format!("failed: {e}"),
            DiscardReason::Cancelled => "cancelled".to_owned(),
        };
        sqlx::query("INSERT INTO discards (job_id, reason) VALUES ($1, $2)")
            .bind(job.job_id)
            .bind(reason)
            .execute(&mut *conn)
            .await?;
        Ok(())
    })
}

fn doomed_registry() -> Registry {
    let mut reg = Registry::new();
    reg.register::<Doomed, _, _>(|args, _ctx| async move {
        match args.tag.as_str() {
            "transient" => Err(JobError::transient("try again")),
            "sleep" => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Outcome::Succeeded)
            }
            _ => Err(JobError::permanent("bad input")),
        }
    })
    .on_discard(mark_discard);
    reg
}

async fn discards(engine: &Engine) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT job_id, reason FROM discards ORDER BY job_id")
        .fetch_all(engine.db())
        .await
        .unwrap()
}

async fn discard_hook_runs_with_every_final_failure_and_cancel(t: TestDb) {
    sqlx::query("CREATE TABLE discards (job_id BIGINT NOT NULL, reason TEXT NOT NULL)")
        .execute(&t.db)
        .await
        .unwrap();
    let clock = Clock::manual(start());
    let engine = t.engine(doomed_registry(), clock.clone());

    // A permanent error, in the worker's acknowledgement.
    let permanent = engine.enqueue(doomed("permanent")).await.unwrap().id();
    // A transient error: no hook until the last attempt fails.
    let transient = engine.enqueue(doomed("transient")).await.unwrap().id();
    drain(&engine).await;
    assert_eq!(
        discards(&engine).await,
        [(permanent, "failed: bad input".to_owned())]
    );
    clock.advance(Duration::from_secs(5));
    drain(&engine).await;
    assert_eq!(
        discards(&engine).await[1],
        (
            transient,
            "failed: attempts exhausted (2/2): try again".to_owned()
        )
    );

    // An admin cancel.
    let later = clock.now_ms() + 3_600_000;
    let cancelled = engine
        .enqueue(NewJob::new(doomed("permanent")).run_at(later))
        .await
        .unwrap()
        .id();
    engine.cancel(cancelled, &Actor::cli()).await.unwrap();
    assert_eq!(
        discards(&engine).await[2],
        (cancelled, "cancelled".to_owned())
    );

    // A worker that died on the last attempt: the rescuer runs the hook.
    let dead = engine
        .enqueue(NewJob::new(doomed("sleep")).max_attempts(1))
        .await
        .unwrap()
        .id();
    let mut conn = engine.db().acquire().await.unwrap();
    let now = clock.now_ms();
    let claimed = storage::exchange(
        &mut conn,
        "w-dead",
        "doomed",
        &[],
        1,
        now,
        LeaseNow::At(now),
        1_000,
    )
    .await
    .unwrap()
    .claimed;
    assert_eq!(claimed[0].id, dead);
    clock.advance(Duration::from_secs(2));
    assert_eq!(engine::worker::rescue_expired(&engine).await.unwrap(), 1);
    let (id, reason) = &discards(&engine).await[3];
    assert_eq!(*id, dead);
    assert!(reason.contains("lease expired: worker w-dead"), "{reason}");
    assert_eq!(job(&engine, dead).await.job.status, JobState::Failed);
}

async fn an_ack_the_database_refuses_does_not_hold_back_the_others(t: TestDb) {
    sqlx::query("CREATE TABLE discards (job_id BIGINT NOT NULL, reason TEXT NOT NULL)")
        .execute(&t.db)
        .await
        .unwrap();
    let engine = t.engine(doomed_registry(), Clock::system());
    // Both fail at once and land in one batch; the hook of `bad` fails every time.
    let mut tx = engine.begin().await.unwrap();
    let ids = tx
        .enqueue_many(vec![
            NewJob::new(doomed("bad")),
            NewJob::new(doomed("good")),
        ])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let pool = WorkerPool::start(&engine);
    assert!(
        eventually(10, || async {
            job(&engine, ids[1]).await.job.status == JobState::Failed
        })
        .await,
        "the good job's end was written"
    );
    assert_eq!(
        discards(&engine).await,
        [(ids[1], "failed: bad input".to_owned())]
    );
    // The bad one keeps its lease (renewed) and is tried again; it is not lost.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(running_on_this_worker(&engine, ids[0]).await);
    pool.shutdown(tokio::time::Instant::now() + Duration::from_millis(500))
        .await;
}

async fn rescue_retries_on_the_backoff_stored_on_the_job(t: TestDb) {
    let runs = Runs::default();
    let clock = Clock::manual(start());
    // Probe's policy: 10 s base. The rescuing process does not know the kind.
    let engine = t.engine(registry(&runs), clock.clone());
    let id = engine
        .enqueue(Probe::new(Behaviour::Succeed))
        .await
        .unwrap()
        .id();
    let mut conn = engine.db().acquire().await.unwrap();
    let now = clock.now_ms();
    storage::exchange(
        &mut conn,
        "w-dead",
        "probe",
        &[],
        1,
        now,
        LeaseNow::At(now),
        1_000,
    )
    .await
    .unwrap();
    clock.advance(Duration::from_secs(2));
    let stranger = t.engine(Registry::new(), clock.clone());
    assert_eq!(engine::worker::rescue_expired(&stranger).await.unwrap(), 1);
    let j = job(&engine, id).await;
    assert_eq!(j.job.status, JobState::Retrying);
    let wait = j.job.run_at - clock.now_ms();
    assert!(
        (9_000..=11_000).contains(&wait),
        "backoff {wait} ms, not the default 1 s"
    );
}

/// A test-only table with a lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Widget {
    Draft,
    Live,
}

impl Lifecycle for Widget {
    const ENTITY: &'static str = "widget";
    const TABLE: &'static str = "widgets";
    fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Live => "live",
        }
    }
    fn can_transition_to(self, to: Self) -> bool {
        matches!((self, to), (Self::Draft, Self::Live))
    }
}

async fn a_transition_never_commits_without_its_audit_row(t: TestDb) {
    for sql in [
        "CREATE TABLE widgets (id BIGINT PRIMARY KEY, status TEXT NOT NULL, updated_at BIGINT NOT NULL)",
        "INSERT INTO widgets (id, status, updated_at) VALUES (1, 'draft', 0)",
        // The audit row cannot be written: the transition must leave nothing.
        "DROP TABLE transitions",
    ] {
        sqlx::query(sql).execute(&t.db).await.unwrap();
    }
    let mut conn = t.db.acquire().await.unwrap();
    let err = state_machine::transition(
        &mut conn,
        1,
        Widget::Draft,
        Widget::Live,
        &[],
        &Actor::cli(),
        None,
        1,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransitionError::Database(_)), "{err:?}");
    let status: String = sqlx::query_scalar("SELECT status FROM widgets WHERE id = 1")
        .fetch_one(&t.db)
        .await
        .unwrap();
    assert_eq!(
        status, "draft",
        "the status change was rolled back with its audit row"
    );
    let _ = fast_worker_settings();
}

/// The pool pings a Postgres connection only when it has sat idle for
/// [`engine::db::PING_IF_IDLE_FOR`]: one used a moment ago is handed out as is (no second
/// round trip per statement), one idle longer is checked and, when its server process has
/// died meanwhile, replaced before any statement meets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_pings_only_connections_that_sat_idle() {
    let Some(t) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    // One connection, so the one killed is the one handed out next.
    let (db, _) = engine::db::connect(&t.url, 1).await.unwrap();
    let backend_pid = || async {
        sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(&db)
            .await
    };
    let admin = &t.db;
    let kill = |pid: i32| async move {
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
            .bind(pid)
            .fetch_one(admin)
            .await
            .unwrap();
        assert!(killed, "terminate backend {pid}");
    };

    // Used a moment ago: not pinged, so the statement itself meets the dead connection.
    // (Only while it is still a moment: a machine that stalled past the threshold between
    // the two statements has rightly pinged it.)
    let first = backend_pid().await.unwrap();
    let used = std::time::Instant::now();
    kill(first).await;
    let recent = used.elapsed() < engine::db::PING_IF_IDLE_FOR;
    let second = backend_pid().await;
    if recent {
        let error = second.expect_err("a connection used a moment ago was pinged");
        assert!(
            engine::error::is_unavailable(&error),
            "a terminated connection is the database out of reach: {error:?}"
        );
    }

    // Idle for longer: pinged, found dead, replaced; the statement runs on a new one.
    let idle = engine::db::PING_IF_IDLE_FOR + Duration::from_millis(200);
    tokio::time::sleep(idle).await;
    let pid = backend_pid()
        .await
        .expect("the dead connection was handed out again");
    assert_ne!(pid, first);
    kill(pid).await;
    tokio::time::sleep(idle).await;
    let replaced = backend_pid()
        .await
        .expect("the dead idle connection was replaced");
    assert_ne!(replaced, pid);
}
