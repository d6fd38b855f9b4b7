//! A database outage of a few seconds: workers back off and resume by themselves; no job is
//! lost, none succeeds twice, no worker task dies. Postgres only: the outage is a TCP proxy
//! between the engine and the server that drops every connection and refuses new ones.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use engine::testing::{TcpProxy, TestDb, fast_worker_settings, with_database};
use engine::worker::WorkerPool;
use engine::{Backend, Engine, WorkerSettings};
use support::{Behaviour, Probe, Runs, eventually, registry};

fn host_port(url: &str) -> SocketAddr {
    let after_at = url
        .rsplit_once('@')
        .map_or(url.split_once("://").unwrap().1, |(_, rest)| rest);
    let host_port = after_at.split('/').next().unwrap();
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    host_port.replace("localhost", "127.0.0.1").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_of_a_few_seconds_loses_nothing_and_runs_nothing_twice() {
    let Some(t) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let target = host_port(&t.url);
    let proxy = TcpProxy::start(target).await;
    let db_name = t
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let user_part = t
        .url
        .split_once("://")
        .unwrap()
        .1
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    let proxied = with_database(&format!("postgres://{user_part}{}/x", proxy.addr), &db_name);

    let (pool_db, _) = engine::db::connect(&proxied, 8).await.unwrap();
    let runs = Runs::default();
    let engine = Engine::builder(pool_db, Backend::Postgres, proxied.clone())
        .registry(registry(&runs))
        // A lease longer than the outage: the jobs in flight keep theirs.
        .workers(WorkerSettings {
            lease_ttl: Duration::from_secs(10),
            ..fast_worker_settings()
        })
        .build();
    let direct = t.engine(registry(&runs), engine::Clock::system());
    for i in 0..200 {
        let mut p = Probe::new(Behaviour::Sleep(20));
        p.tag = i.to_string();
        direct.enqueue(p).await.unwrap();
    }
    let pool = WorkerPool::start(&engine);
    let succeeded = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'")
            .fetch_one(&t.db)
            .await
            .unwrap()
    };
    assert!(
        eventually(20, || async { succeeded().await >= 20 }).await,
        "work started"
    );

    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = succeeded().await;
    proxy.restore();

    assert!(
        eventually(60, || async { succeeded().await == 200 }).await,
        "every job finishes after the outage"
    );
    assert!(during < 200, "the outage hit while work was in progress");
    assert!(pool.is_alive(), "no worker task died");

    let per_job: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT job_id, COUNT(*) FROM job_attempts WHERE outcome = 'succeeded' GROUP BY job_id",
    )
    .fetch_all(&t.db)
    .await
    .unwrap();
    assert_eq!(per_job.len(), 200);
    let doubles: HashMap<i64, i64> = per_job.into_iter().filter(|(_, n)| *n != 1).collect();
    assert!(doubles.is_empty(), "jobs that succeeded twice: {doubles:?}");
    let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status <> 'succeeded'")
        .fetch_one(&t.db)
        .await
        .unwrap();
    assert_eq!(running, 0);
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
}
