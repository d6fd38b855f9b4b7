//! The cost of durable steps: 200 workflows of 10 no-op steps (`ctx.step`) against 200
//! chains of 10 no-op jobs (each job enqueues the next in its own transaction), both run
//! by a `WorkerPool` at concurrency 8, on SQLite and Postgres. Prints the time of each and
//! their ratio (issue 15's target: the workflows within 3× the chains). Not a test.
//! `cargo bench -p engine --bench steps`; Postgres runs when `TEST_POSTGRES_URL` is set.

use std::time::{Duration, Instant};

use engine::testing::TestDb;
use engine::worker::WorkerPool;
use engine::{Backend, Engine, Job, NewJob, Outcome, Registry, WorkerSettings};
use serde::{Deserialize, Serialize};

const FLOWS: usize = 200;
const STEPS: u32 = 10;
const CONCURRENCY: usize = 8;

/// A workflow of `STEPS` no-op steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flow {}

impl Job for Flow {
    const KIND: &'static str = "flow";
}

/// One link of a chain: enqueues the next while `left` > 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Link {
    left: u32,
}

impl Job for Link {
    const KIND: &'static str = "link";
}

fn engine(t: &TestDb) -> Engine {
    let mut registry = Registry::new();
    registry
        .register::<Flow, _, _>(|_, ctx| async move {
            for i in 0..STEPS {
                ctx.step(&format!("s{i}"), async || Ok(())).await?;
            }
            Ok(Outcome::Succeeded)
        })
        .concurrency(CONCURRENCY);
    registry
        .register::<Link, _, _>(|link, ctx| async move {
            if link.left > 1 {
                let mut tx = ctx.engine.begin().await?;
                tx.enqueue(Link {
                    left: link.left - 1,
                })
                .await?;
                tx.commit().await?;
            }
            Ok(Outcome::Succeeded)
        })
        .concurrency(CONCURRENCY);
    Engine::builder(t.db.clone(), t.backend, t.url.clone())
        .registry(registry)
        .workers(WorkerSettings::default())
        .build()
}

async fn succeeded(engine: &Engine, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE kind = $1 AND status = 'succeeded'")
        .bind(kind)
        .fetch_one(engine.db())
        .await
        .expect("count")
}

/// Enqueues `jobs`, starts a pool, and times until `expected` jobs of `kind` succeeded.
async fn time_until_done<J: Job>(
    backend: Backend,
    jobs: Vec<NewJob<J>>,
    expected: i64,
) -> Option<Duration> {
    let t = TestDb::new(backend).await?;
    let engine = engine(&t);
    let mut tx = engine.begin().await.expect("begin");
    tx.enqueue_many(jobs).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let start = Instant::now();
    let pool = WorkerPool::start(&engine);
    while succeeded(&engine, J::KIND).await < expected {
        assert!(start.elapsed() < Duration::from_secs(120), "stuck");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let time = start.elapsed();
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(10))
        .await;
    t.db.close().await;
    Some(time)
}

#[tokio::main]
async fn main() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let flows = (0..FLOWS).map(|_| NewJob::new(Flow {})).collect();
        let Some(workflows) = time_until_done(backend, flows, FLOWS as i64).await else {
            println!(
                "\n== {} ==\nskipped: TEST_POSTGRES_URL unset",
                backend.name()
            );
            continue;
        };
        let links = (0..FLOWS)
            .map(|_| NewJob::new(Link { left: STEPS }))
            .collect();
        let chains = time_until_done(backend, links, (FLOWS as i64) * i64::from(STEPS))
            .await
            .expect("backend available");
        println!("\n== {} ==", backend.name());
        println!(
            "{FLOWS} workflows of {STEPS} no-op steps:        {:>7.3} s ({:.0} steps/s)",
            workflows.as_secs_f64(),
            (FLOWS as f64 * f64::from(STEPS)) / workflows.as_secs_f64()
        );
        println!(
            "{FLOWS} chains of {STEPS} no-op jobs:            {:>7.3} s ({:.0} jobs/s)",
            chains.as_secs_f64(),
            (FLOWS as f64 * f64::from(STEPS)) / chains.as_secs_f64()
        );
        println!(
            "workflows / chains: {:.2}× (target ≤ 3×)",
            workflows.as_secs_f64() / chains.as_secs_f64()
        );
    }
}
