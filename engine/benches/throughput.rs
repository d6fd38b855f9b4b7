//! Throughput and latency of the runtime that runs the real job kinds (apalis workers over
//! the engine's storage), on SQLite and Postgres. Not a test: it prints figures.
//! `cargo bench -p engine --bench throughput`; Postgres runs when `TEST_POSTGRES_URL` names
//! a role that may create databases (a fresh database per measure). `bench/compare.sh`
//! runs it beside graphile-worker in the same run.
//!
//! The scenario of the peers' measures (shared/research/peer-bench.md):
//! 1. bulk enqueue: 20,000 no-op jobs, 1,000 per call (`JobTx::enqueue_many`);
//! 2. one-by-one enqueue: 8 producers, 2,000 jobs each through `Engine::enqueue` (each
//!    returns once its job is committed; concurrent calls share commits);
//! 3. processing a backlog: 20,000 no-op jobs enqueued beforehand, then a `WorkerPool` at
//!    concurrency 8; the time until the database shows every job succeeded. Defaults
//!    (claim-ahead 1,000, bounded by what the workers start within a second), then a
//!    claim-ahead of 100 (the default before 2026-12-06) to show what the buffer buys;
//! 4. enqueue→start latency: 200 jobs, one `Engine::enqueue` every 10 ms, to an idle pool;
//!    `job_attempts.started_at − jobs.run_at`.
//!
//! `BENCH_ONLY=sqlite|postgres` runs one backend; `BENCH_JOBS` changes the backlog size.

use std::time::{Duration, Instant};

use engine::testing::TestDb;
use engine::worker::WorkerPool;
use engine::{Backend, Engine, Job, NewJob, Outcome, Registry, WorkerSettings};
use serde::{Deserialize, Serialize};

const TX_SIZE: usize = 1_000;
const PRODUCERS: usize = 8;
const PER_PRODUCER: usize = 2_000;
const CONCURRENCY: usize = 8;
const LATENCY_JOBS: usize = 200;
const LATENCY_GAP: Duration = Duration::from_millis(10);
/// A processing run that takes longer than this is cut short and reported as such.
const PROCESS_CAP: Duration = Duration::from_secs(60);

fn jobs() -> usize {
    std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// The job that does nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "noop";
}

fn engine(t: &TestDb, workers: WorkerSettings) -> Engine {
    let mut registry = Registry::new();
    registry
        .register::<Noop, _, _>(|_, _| async { Ok(Outcome::Succeeded) })
        .concurrency(CONCURRENCY);
    Engine::builder(t.db.clone(), t.backend, t.url.clone())
        .registry(registry)
        .workers(workers)
        .build()
}

/// The claim-ahead buffer the engine had by default before 2026-12-06, for comparison.
fn small_buffer() -> WorkerSettings {
    WorkerSettings {
        fetch_batch: 100,
        ..WorkerSettings::default()
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

/// Enqueues `n` no-op jobs, `TX_SIZE` per transaction.
async fn fill(engine: &Engine, n: usize) {
    for _ in 0..n.div_ceil(TX_SIZE) {
        let mut tx = engine.begin().await.expect("begin");
        let jobs = (0..TX_SIZE).map(|_| NewJob::new(Noop {})).collect();
        tx.enqueue_many(jobs).await.expect("enqueue_many");
        tx.commit().await.expect("commit");
    }
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
    let t = TestDb::new(backend).await?;
    let engine = engine(&t, WorkerSettings::default());
    let n = jobs();
    let start = Instant::now();
    fill(&engine, n).await;
    rows.push(Row {
        what: format!("bulk enqueue ({TX_SIZE} per call)"),
        jobs: n.div_ceil(TX_SIZE) * TX_SIZE,
        time: start.elapsed(),
        note: "",
    });

    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for _ in 0..PER_PRODUCER {
                    engine.enqueue(Noop {}).await.expect("enqueue");
                }
            })
        })
        .collect();
    for p in producers {
        p.await.expect("producer");
    }
    rows.push(Row {
        what: format!("one-by-one enqueue ({PRODUCERS} producers, Engine::enqueue)"),
        jobs: PRODUCERS * PER_PRODUCER,
        time: start.elapsed(),
        note: "",
    });
    t.db.close().await;
    Some(())
}

/// Runs a backlog of no-op jobs through a pool with `workers`.
async fn bench_process(backend: Backend, label: &str, workers: WorkerSettings) -> Option<Row> {
    let t = TestDb::new(backend).await?;
    let engine = engine(&t, workers);
    let n = jobs();
    fill(&engine, n).await;
    sqlx::query("ANALYZE")
        .execute(engine.db())
        .await
        .expect("analyze");

    let start = Instant::now();
    let pool = WorkerPool::start(&engine);
    let mut note = "";
    // Cheap to ask while the backlog drains (both read a partial index that shrinks).
    let unfinished = "SELECT CASE WHEN EXISTS (SELECT 1 FROM jobs WHERE status IN ('pending', 'retrying')) \
                      OR EXISTS (SELECT 1 FROM jobs WHERE status = 'running') THEN 1 ELSE 0 END";
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if count(&engine, unfinished).await == 0 {
            break;
        }
        if start.elapsed() > PROCESS_CAP {
            note = "CUT SHORT: rate over the part done";
            break;
        }
    }
    let time = start.elapsed();
    let done = succeeded(&engine).await;
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(10))
        .await;
    let failed = count(&engine, "SELECT COUNT(*) FROM jobs WHERE status = 'failed'").await;
    assert_eq!(failed, 0, "no-op jobs must not fail");
    t.db.close().await;
    Some(Row {
        what: format!("process a backlog, concurrency {CONCURRENCY}, {label}"),
        jobs: usize::try_from(done).unwrap_or(0),
        time,
        note,
    })
}

struct Latency {
    p50: i64,
    p99: i64,
    max: i64,
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn bench_latency(backend: Backend) -> Option<Latency> {
    let t = TestDb::new(backend).await?;
    let engine = engine(&t, WorkerSettings::default());
    let pool = WorkerPool::start(&engine);
    // Let the workers go idle (and, on Postgres, the LISTEN connection come up).
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
        "SELECT a.started_at - j.run_at FROM job_attempts_all a JOIN jobs j ON j.id = a.job_id",
    )
    .fetch_all(engine.db())
    .await
    .expect("latencies");
    t.db.close().await;
    assert_eq!(waits.len(), LATENCY_JOBS, "every job started once");
    waits.sort_unstable();
    Some(Latency {
        p50: percentile(&waits, 0.50),
        p99: percentile(&waits, 0.99),
        max: *waits.last().unwrap_or(&0),
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
    let mut rows = Vec::new();
    if bench_enqueue(backend, &mut rows).await.is_none() {
        println!(
            "\n== {} ==\nskipped: TEST_POSTGRES_URL unset",
            backend.name()
        );
        return;
    }
    let defaults = WorkerSettings::default();
    let default_label = format!("defaults (claim-ahead {})", defaults.fetch_batch);
    let small_label = format!("claim-ahead {}", small_buffer().fetch_batch);
    for (label, workers) in [(default_label, defaults), (small_label, small_buffer())] {
        rows.push(
            bench_process(backend, &label, workers)
                .await
                .expect("backend available"),
        );
    }
    let latency = bench_latency(backend).await.expect("backend available");

    println!("\n== {} ==", backend.name());
    println!(
        "{:<58} {:>6} {:>9} {:>9}",
        "measure", "jobs", "time", "jobs/s"
    );
    for r in &rows {
        println!(
            "{:<58} {:>6} {:>7.3} s {:>9} {}",
            r.what,
            r.jobs,
            r.time.as_secs_f64(),
            thousands(r.rate()),
            r.note
        );
    }
    println!(
        "enqueue→start latency ({LATENCY_JOBS} jobs, 1 per {} ms, idle pool): p50 {} ms, p99 {} ms, max {} ms",
        LATENCY_GAP.as_millis(),
        latency.p50,
        latency.p99,
        latency.max
    );
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if only.is_empty() || only == backend.name() {
            run(backend).await;
        }
    }
    println!("\n(bench ran {:.0} s)", started.elapsed().as_secs_f64());
}
