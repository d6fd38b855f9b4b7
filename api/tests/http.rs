//! The HTTP front in-process: `/ready` names what is down, and a shutdown stops accepting
//! while it lets in-flight requests finish.

// The router's future type nests deeper than the default limit allows when compiled
// in release (`cargo test --release`).
#![recursion_limit = "256"]

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use api::auth::keys::KeyCache;
use api::auth::rate_limit::Limiter;
use api::config::Config;
use api::server::{self, Bound, HttpServer, Readiness};
use api::state::ApiState;
use engine::scheduler::Scheduler;
use engine::testing::TestDb;
use engine::{Backend, Clock, Registry};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

async fn start(db: &TestDb, readiness: Readiness) -> (SocketAddr, HttpServer) {
    let bound = Bound::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = bound.addr();
    let engine = db.engine(Registry::new(), Clock::system());
    let config = Config::from_map(Default::default()).expect("config");
    let state = ApiState {
        scheduler: Arc::new(Scheduler::new(engine.clone(), Vec::new())),
        engine,
        limiter: Limiter::memory(config.rate_limits),
        keys: KeyCache::new(config.http.api_key_cache_ttl),
        http: config.http,
        jobs: Arc::new(config.jobs),
    };
    let server = HttpServer::start(bound, server::app(readiness, state), Duration::from_secs(5));
    (addr, server)
}

async fn ready(addr: SocketAddr) -> (u16, Value) {
    let (status, body) = get(addr, "/ready").await.expect("/ready");
    let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_naming_each_failing_part() {
    let db = TestDb::with_schema(Backend::Sqlite, jobs::schema::migrator)
        .await
        .expect("sqlite");
    let readiness = Readiness::new(db.db.clone())
        .part("workers", || true)
        .part("scheduler", || false);
    let (addr, server) = start(&db, readiness).await;

    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["failing"], serde_json::json!(["scheduler"]));
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["workers"], "ok");
    assert_eq!(body["checks"]["scheduler"], "stopped");

    // The database going away is reported too, with its error.
    db.db.close().await;
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["failing"],
        serde_json::json!(["database", "scheduler"])
    );
    assert!(
        body["checks"]["database"]
            .as_str()
            .is_some_and(|s| s.starts_with("error: ")),
        "{body}"
    );
    // Liveness does not depend on any of it.
    let (status, body) = get(addr, "/health").await.expect("/health");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_200_when_every_part_is_up() {
    let db = TestDb::with_schema(Backend::Sqlite, jobs::schema::migrator)
        .await
        .expect("sqlite");
    let (addr, server) = start(&db, Readiness::new(db.db.clone()).part("workers", || true)).await;
    let (status, body) = ready(addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failing"], serde_json::json!([]));
    // Without STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET the process is ready, and says
    // what it does not run.
    let disabled = body["disabled"].as_object().expect("disabled");
    assert_eq!(
        disabled.keys().collect::<Vec<_>>(),
        ["stripe_jobs", "stripe_webhook"],
        "{body}"
    );
    assert!(
        disabled["stripe_jobs"]
            .as_str()
            .is_some_and(|s| s.contains("STRIPE_SECRET_KEY")),
        "{body}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let bound = Bound::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = bound.addr();
    let slow = poem::endpoint::make(|_| async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        "done"
    });
    let server = HttpServer::start(bound, slow, Duration::from_secs(5));

    let in_flight = tokio::spawn(get(addr, "/slow"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "shutdown returned before the in-flight request finished"
    );
    let (status, body) = in_flight.await.expect("task").expect("in-flight answered");
    assert_eq!((status, body.as_str()), (200, "done"));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}
