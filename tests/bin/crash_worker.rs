//! A worker process for the crash tests: runs the test kinds of the `e2e` crate until
//! SIGTERM/SIGINT, then shuts down gracefully and exits 0. Tests kill it (SIGKILL), make
//! it kill itself (`abort_worker`) or stop it (SIGTERM).
//!
//! Configured by the environment (the database is migrated by the test, not here):
//!
//! | variable                   | meaning                                 | default   |
//! |----------------------------|-----------------------------------------|-----------|
//! | `DATABASE_URL`             | `sqlite://…` or `postgres://…`          | required  |
//! | `WORKER_ID`                | the id on attempts and leases           | required  |
//! | `LEASE_TTL_MS`             | lease length                            | 1000      |
//! | `HEARTBEAT_MS`             | lease renewal and rescue interval       | 200       |
//! | `POLL_MS`                  | idle fetcher poll interval              | 100       |
//! | `SHUTDOWN_PER_SERVICE_MS`  | each service's shutdown budget          | 10000     |
//! | `SHUTDOWN_OVERALL_MS`      | the whole shutdown's budget             | 30000     |
//! | `RUST_LOG`                 | log filter (stderr)                     | info      |

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use engine::shutdown::{ShutdownManager, signal};
use engine::worker::WorkerPool;
use engine::{Engine, WorkerSettings};

fn required(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => bail!("{name} must be set"),
    }
}

fn millis(name: &str, default: u64) -> anyhow::Result<Duration> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            let ms: u64 = v
                .trim()
                .parse()
                .with_context(|| format!("{name} must be a number of milliseconds, got {v:?}"))?;
            Ok(Duration::from_millis(ms))
        }
        _ => Ok(Duration::from_millis(default)),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    engine::telemetry::init("text", &level);

    let url = required("DATABASE_URL")?;
    let worker_id = required("WORKER_ID")?;
    let settings = WorkerSettings {
        worker_id: Arc::from(worker_id.as_str()),
        lease_ttl: millis("LEASE_TTL_MS", 1000)?,
        heartbeat_interval: millis("HEARTBEAT_MS", 200)?,
        poll_interval: millis("POLL_MS", 100)?,
        ..WorkerSettings::default()
    };
    let per_service = millis("SHUTDOWN_PER_SERVICE_MS", 10_000)?;
    let overall = millis("SHUTDOWN_OVERALL_MS", 30_000)?;

    // Install the SIGTERM/SIGINT handlers before any job can start: a signal that arrived
    // between the first claim and the handler's installation would kill the process with
    // the default action instead of shutting it down.
    let mut stop_signal = Box::pin(signal());
    tokio::select! {
        biased;
        _ = &mut stop_signal => {
            eprintln!("crash-worker {worker_id}: signalled before starting; exiting");
            return Ok(());
        }
        _ = std::future::ready(()) => {}
    }

    let (db, backend) = engine::db::connect(&url, 4)
        .await
        .context("connect to DATABASE_URL")?;
    let engine = Engine::builder(db, backend, url)
        .registry(e2e::registry())
        .workers(settings)
        .build();

    let manager = ShutdownManager::new();
    let pool = WorkerPool::start(&engine);
    manager
        .register(
            "workers",
            Box::new(move |deadline| Box::pin(async move { pool.shutdown(deadline).await })),
        )
        .context("register the worker pool")?;
    eprintln!("crash-worker {worker_id}: ready ({})", backend.name());

    stop_signal.await;
    eprintln!("crash-worker {worker_id}: signalled; shutting down");
    let report = manager.shutdown(per_service, overall).await;
    eprintln!(
        "crash-worker {worker_id}: stopped {:?}, timed out {:?}",
        report.stopped, report.timed_out
    );
    Ok(())
}
