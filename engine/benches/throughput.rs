//! Throughput and latency of the job engine on SQLite and Postgres. Not a test: it prints
//! figures. `cargo bench -p engine --bench throughput`; Postgres runs when
//! `TEST_POSTGRES_URL` names a role that may create databases (a fresh one per measure).
//!
//! 1. Bulk enqueue: 20,000 no-op jobs through `Engine::enqueue_many`, 1,000 per transaction
//!    (and, for scale, 2,000 through `Engine::enqueue`, one transaction each).
//! 2. Processing: 20,000 no-op jobs enqueued beforehand, then a `WorkerPool`; the time until
//!    a `COUNT` polled every 20 ms sees all of them `succeeded`. Default settings, then
//!    concurrency 8, 16 and 32 with a larger fetch batch and a 20 ms poll.
//! 3. Enqueue→start latency: 200 jobs, one `Engine::enqueue` every 10 ms, to an idle pool;
//!    `job_attempts.started_at − jobs.run_at` (ms) read back once all have finished.
//!
//! Then the plan of the claim query (`storage::claim`) on a filled, analyzed table.

use std::time::{Duration, Instant};

use engine::testing::TestDb;
use engine::worker::WorkerPool;
use engine::{Backend, Engine, Job, JobPolicy, NewJob, Outcome, Registry, WorkerSettings};
use serde::{Deserialize, Serialize};

const JOBS: usize = 20_000;
const TX_SIZE: usize = 1_000;
const SINGLE_JOBS: usize = 2_000;
const LATENCY_JOBS: usize = 200;
const LATENCY_GAP: Duration = Duration::from_millis(10);
/// A processing run that takes longer than this is cut short and reported as such.
const PROCESS_CAP: Duration = Duration::from_secs(45);

/// The job that does nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "noop";
}

/// The two claim statements of `storage::claim`, copied verbatim for EXPLAIN (keep in sync).
const CLAIM_POSTGRES: &str = "WITH picked AS ( \
                 SELECT id FROM jobs \
                 WHERE kind = $1 AND status IN ('pending', 'retrying') AND run_at <= $2 \
                 ORDER BY priority, run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE jobs SET status = 'running', attempt = jobs.attempt + 1, locked_by = $4, \
                 lease_expires_at = $5, started_at = $2 \
             FROM picked WHERE jobs.id = picked.id \
             RETURNING jobs.id, jobs.args, jobs.attempt, jobs.max_attempts, jobs.run_at";
const CLAIM_SQLITE: &str = "UPDATE jobs SET status = 'running', attempt = attempt + 1, locked_by = $4, \
                 lease_expires_at = $5, started_at = $2 \
             WHERE id IN ( \
                 SELECT id FROM jobs \
                 WHERE kind = $1 AND status IN ('pending', 'retrying') AND run_at <= $2 \
                 ORDER BY priority, run_at, id LIMIT $3) \
             RETURNING id, args, attempt, max_attempts, run_at";

/// How a pool is configured for one measure.
#[derive(Clone)]
struct Setup {
    label: String,
    concurrency: usize,
    workers: WorkerSettings,
}

impl Setup {
    fn default_settings() -> Self {
        let workers = WorkerSettings::default();
        Self {
            label: format!(
                "default (conc {}, batch {}, poll {} ms)",
                JobPolicy::DEFAULT.concurrency,
                workers.fetch_batch,
                workers.poll_interval.as_millis()
            ),
            concurrency: JobPolicy::DEFAULT.concurrency,
            workers,
        }
    }

    fn tuned(concurrency: usize) -> Self {
        let workers = WorkerSettings {
            fetch_batch: 100,
            poll_interval: Duration::from_millis(20),
            ..WorkerSettings::default()
        };
        Self {
            label: format!(
                "conc {concurrency} (batch {}, poll {} ms)",
                workers.fetch_batch,
                workers.poll_interval.as_millis()
            ),
            concurrency,
            workers,
        }
    }

    fn engine(&self, t: &TestDb) -> Engine {
        let mut registry = Registry::new();
        registry.register::<Noop, _, _>(|_, _| async { Ok(Outcome::Succeeded) });
        registry.set_concurrency(Noop::KIND, self.concurrency);
        Engine::builder(t.db.clone(), t.backend, t.url.clone())
            .registry(registry)
            .workers(self.workers.clone())
            .build()
    }
}

async fn count(engine: &Engine, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(engine.db())
        .await
        .expect("count")
}

async fn succeeded(engine: &Engine) -> i64 {
    count(
        engine,
        "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
    )
    .await
}

/// Enqueues `JOBS` no-op jobs, `TX_SIZE` per transaction.
async fn fill(engine: &Engine) {
    for _ in 0..JOBS / TX_SIZE {
        let mut tx = engine.db().begin().await.expect("begin");
        let jobs = (0..TX_SIZE).map(|_| NewJob::new(Noop {})).collect();
        let ids = engine
            .enqueue_many(&mut tx, jobs)
            .await
            .expect("enqueue_many");
        assert_eq!(ids.len(), TX_SIZE);
        tx.commit().await.expect("commit");
    }
}

/// A fresh database on `backend` (`None`: skipped).
async fn fresh(backend: Backend) -> Option<TestDb> {
    TestDb::new(backend).await
}

async fn close(t: TestDb) {
    t.db.close().await;
    drop(t);
}

struct Row {
    what: String,
    jobs: usize,
    time: Duration,
    note: &'static str,
}

impl Row {
    fn rate(&self) -> f64 {
        self.jobs as f64 / self.time.as_secs_f64()
    }
}

async fn bench_enqueue(backend: Backend, rows: &mut Vec<Row>) -> Option<()> {
    let t = fresh(backend).await?;
    let engine = Setup::default_settings().engine(&t);
    let start = Instant::now();
    fill(&engine).await;
    let time = start.elapsed();
    assert_eq!(
        count(&engine, "SELECT COUNT(*) FROM jobs").await,
        JOBS as i64
    );
    rows.push(Row {
        what: format!("bulk enqueue (enqueue_many, {TX_SIZE}/tx)"),
        jobs: JOBS,
        time,
        note: "",
    });

    let start = Instant::now();
    for _ in 0..SINGLE_JOBS {
        engine.enqueue(Noop {}).await.expect("enqueue");
    }
    rows.push(Row {
        what: "single enqueue (enqueue, 1 tx each)".into(),
        jobs: SINGLE_JOBS,
        time: start.elapsed(),
        note: "",
    });
    close(t).await;
    Some(())
}

/// The plan of the claim statement, on the table as it is now (after ANALYZE).
async fn explain(engine: &Engine) -> String {
    sqlx::query("ANALYZE")
        .execute(engine.db())
        .await
        .expect("analyze");
    let now = engine.clock().now_ms();
    let lines: Vec<String> = match engine.backend() {
        Backend::Postgres => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {CLAIM_POSTGRES}")))
                .bind(Noop::KIND)
                .bind(now)
                .bind(50_i64)
                .bind("bench")
                .bind(now + 30_000)
                .fetch_all(engine.db())
                .await
                .expect("explain")
        }
        Backend::Sqlite => {
            let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {CLAIM_SQLITE}"
            )))
            .bind(Noop::KIND)
            .bind(now)
            .bind(50_i64)
            .bind("bench")
            .bind(now + 30_000)
            .fetch_all(engine.db())
            .await
            .expect("explain query plan");
            rows.into_iter()
                .map(|(id, parent, _, detail)| format!("{id:>3} {parent:>3}  {detail}"))
                .collect()
        }
    };
    lines
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `JOBS` pre-enqueued jobs through a pool set up as `setup`. Returns the row and,
/// when asked, the claim plans (with a backlog of 20,000 due jobs, then with 20,000
/// finished jobs and 100, then 1,000, due ones).
async fn bench_process(
    backend: Backend,
    setup: &Setup,
    with_plans: bool,
) -> Option<(Row, Vec<(String, String)>)> {
    let t = fresh(backend).await?;
    let engine = setup.engine(&t);
    fill(&engine).await;
    let mut plans = Vec::new();
    if with_plans {
        plans.push((format!("{JOBS} due jobs"), explain(&engine).await));
    }

    let start = Instant::now();
    let pool = WorkerPool::start(&engine);
    let mut note = "";
    let done = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let done = succeeded(&engine).await;
        if done >= JOBS as i64 {
            break done;
        }
        if start.elapsed() > PROCESS_CAP {
            note = "CUT SHORT: rate over the part done";
            break done;
        }
    };
    let time = start.elapsed();
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(10))
        .await;
    let failed = count(&engine, "SELECT COUNT(*) FROM jobs WHERE status = 'failed'").await;
    assert_eq!(failed, 0, "no-op jobs must not fail");

    if with_plans {
        // After the churn (dead index entries, fresh statistics), with few and more due jobs.
        let mut due = 0;
        for target in [100, 1_000] {
            let mut tx = engine.db().begin().await.expect("begin");
            let jobs = (due..target).map(|_| NewJob::new(Noop {})).collect();
            engine.enqueue_many(&mut tx, jobs).await.expect("enqueue");
            tx.commit().await.expect("commit");
            due = target;
            plans.push((
                format!("{JOBS} finished jobs + {due} due"),
                explain(&engine).await,
            ));
        }
    }
    close(t).await;
    Some((
        Row {
            what: format!("process: {}", setup.label),
            jobs: usize::try_from(done).unwrap_or(0),
            time,
            note,
        },
        plans,
    ))
}

struct Latency {
    label: String,
    p50: i64,
    p99: i64,
    max: i64,
    mean: f64,
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn bench_latency(backend: Backend, setup: &Setup) -> Option<Latency> {
    let t = fresh(backend).await?;
    let engine = setup.engine(&t);
    let pool = WorkerPool::start(&engine);
    // Let the fetcher go idle (and, on Postgres, the LISTEN connection come up).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut tick = tokio::time::interval(LATENCY_GAP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..LATENCY_JOBS {
        tick.tick().await;
        engine.enqueue(Noop {}).await.expect("enqueue");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while succeeded(&engine).await < LATENCY_JOBS as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(10))
        .await;
    let mut waits: Vec<i64> = sqlx::query_scalar(
        "SELECT a.started_at - j.run_at FROM job_attempts a JOIN jobs j ON j.id = a.job_id",
    )
    .fetch_all(engine.db())
    .await
    .expect("latencies");
    close(t).await;
    assert_eq!(waits.len(), LATENCY_JOBS, "every job started once");
    waits.sort_unstable();
    Some(Latency {
        label: setup.label.clone(),
        p50: percentile(&waits, 0.50),
        p99: percentile(&waits, 0.99),
        max: *waits.last().unwrap_or(&0),
        mean: waits.iter().sum::<i64>() as f64 / waits.len() as f64,
    })
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn run(backend: Backend) {
    let what = match backend {
        Backend::Sqlite => "sqlite: temp file, WAL, synchronous=NORMAL, pool of 8",
        Backend::Postgres => "postgres: fresh database per measure, pool of 8",
    };
    let mut rows = Vec::new();
    if bench_enqueue(backend, &mut rows).await.is_none() {
        println!(
            "\n== {} ==\nskipped: TEST_POSTGRES_URL unset",
            backend.name()
        );
        return;
    }

    let setups: Vec<Setup> = std::iter::once(Setup::default_settings())
        .chain([8, 16, 32].map(Setup::tuned))
        .collect();
    let mut plans = Vec::new();
    let mut processing = Vec::new();
    for (i, setup) in setups.iter().enumerate() {
        let (row, p) = bench_process(backend, setup, i == 0)
            .await
            .expect("backend available");
        plans.extend(p);
        processing.push(row);
    }
    // The best of the tuned setups (index 0 is the default).
    let best = (1..processing.len())
        .max_by(|&a, &b| processing[a].rate().total_cmp(&processing[b].rate()));
    let best_label = best.map(|i| processing[i].what.clone());
    let best_setup = best.map(|i| setups[i].clone());
    rows.extend(processing);

    let mut latencies = Vec::new();
    for setup in std::iter::once(Setup::default_settings()).chain(best_setup) {
        latencies.push(
            bench_latency(backend, &setup)
                .await
                .expect("backend available"),
        );
    }

    println!("\n== {what} ==");
    println!(
        "{:<52} {:>6} {:>9} {:>9}",
        "measure", "jobs", "time", "jobs/s"
    );
    for r in &rows {
        println!(
            "{:<52} {:>6} {:>7.3} s {:>9} {}",
            r.what,
            r.jobs,
            r.time.as_secs_f64(),
            thousands(r.rate()),
            r.note
        );
    }
    if let Some(best) = best_label {
        println!("best processing: {best}");
    }
    println!(
        "enqueue→start latency, {LATENCY_JOBS} jobs 1 per {} ms to an idle pool:",
        LATENCY_GAP.as_millis()
    );
    println!(
        "  {:<50} {:>6} {:>6} {:>6} {:>7}",
        "settings", "p50", "p99", "max", "mean"
    );
    for l in &latencies {
        println!(
            "  {:<50} {:>3} ms {:>3} ms {:>3} ms {:>4.1} ms",
            l.label, l.p50, l.p99, l.max, l.mean
        );
    }
    let kind = match backend {
        Backend::Postgres => "EXPLAIN",
        Backend::Sqlite => "EXPLAIN QUERY PLAN",
    };
    for (state, plan) in plans {
        println!("{kind} of the claim statement (after ANALYZE, {state}):\n{plan}");
    }
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    run(Backend::Sqlite).await;
    run(Backend::Postgres).await;
    println!("\n(bench ran {:.0} s)", started.elapsed().as_secs_f64());
}
