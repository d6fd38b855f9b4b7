//! The test kit (feature `test-util`): a fresh database per test on each backend, running a
//! job through its real handler, asserting what was enqueued, draining the queue, a manual
//! clock (see [`crate::Clock::manual`]) and a TCP proxy that simulates a database outage.
//!
//! Postgres tests need `TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`,
//! a role that may create databases). Without it they print that they are skipped, unless
//! `CI` is set: in CI a missing Postgres fails the test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::clock::Clock;
use crate::db::{self, Backend, Db};
use crate::engine::{Engine, WorkerSettings};
use crate::job::{Job, JobError, JobState, Outcome};
use crate::registry::Registry;
use crate::worker::WorkerPool;

/// Runs each named `async fn name(db: TestDb)` once per backend, as tests
/// `name::sqlite` and `name::postgres`, on the engine's tables; with `schema = f;` first,
/// also on an application's, `f` being its [`AppMigrations`] (`jobs::schema::migrator`).
#[macro_export]
macro_rules! backend_tests {
    (schema = $schema:path; $($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(db) =
                    $crate::testing::TestDb::with_schema($crate::Backend::Sqlite, $schema).await
                {
                    super::$name(db).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) =
                    $crate::testing::TestDb::with_schema($crate::Backend::Postgres, $schema).await
                {
                    super::$name(db).await;
                }
            }
        }
    )*};
    ($($name:ident),* $(,)?) => {
        $crate::backend_tests!(schema = $crate::testing::no_app_migrations; $($name),*);
    };
}

/// An application's migrations for a backend, run after the engine's (`jobs::schema::migrator`).
pub type AppMigrations = fn(Backend) -> sqlx::migrate::Migrator;

/// No application tables: the engine's alone.
pub fn no_app_migrations(_: Backend) -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator::with_migrations(Vec::new())
}

/// The admin URL for Postgres tests, or `None` to skip them (a panic under `CI`).
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => Some(url),
        None if std::env::var_os("CI").is_some() => {
            panic!("TEST_POSTGRES_URL is unset but CI is set: Postgres tests must run in CI")
        }
        None => {
            eprintln!("skipped: TEST_POSTGRES_URL unset, Postgres variant not run");
            None
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{:06x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A freshly created, migrated database, removed when dropped.
pub struct TestDb {
    /// The pool.
    pub db: Db,
    /// Its backend.
    pub backend: Backend,
    /// Its URL (for child processes and LISTEN).
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(PathBuf),
    PgDatabase { admin_url: String, name: String },
}

impl TestDb {
    /// A new database on `backend` with the engine's tables, or `None` when that backend is
    /// skipped here. With `RUST_LOG` set, the test's logs are printed (captured per test by
    /// the harness).
    pub async fn new(backend: Backend) -> Option<Self> {
        Self::with_schema(backend, no_app_migrations).await
    }

    /// [`TestDb::new`], with an application's tables too.
    pub async fn with_schema(backend: Backend, app: AppMigrations) -> Option<Self> {
        let t = Self::blank(backend).await?;
        db::migrate(&t.db, backend)
            .await
            .expect("migrate the test database");
        let app = app(backend);
        if app.iter().next().is_some() {
            app.run(&t.db)
                .await
                .expect("migrate the application's tables");
        }
        Some(t)
    }

    /// A new database on `backend` without any table (for migration tests).
    pub async fn blank(backend: Backend) -> Option<Self> {
        if let Ok(filter) = std::env::var("RUST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let (url, cleanup) = match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("{}.db", unique_name("veza_test")));
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    Cleanup::File(path),
                )
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url()?;
                let name = unique_name("veza_test");
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .expect("connect to TEST_POSTGRES_URL");
                sqlx::Executor::execute(
                    &mut admin,
                    sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
                )
                .await
                .expect("create test database");
                let url = with_database(&admin_url, &name);
                (url, Cleanup::PgDatabase { admin_url, name })
            }
        };
        let (db, backend) = db::connect(&url, 8)
            .await
            .expect("connect to the test database");
        Some(Self {
            db,
            backend,
            url,
            cleanup,
        })
    }

    /// An engine on this database with `registry`, `clock` and fast test worker settings
    /// (lease 2 s, heartbeat 200 ms, poll 50 ms).
    pub fn engine(&self, registry: Registry, clock: Clock) -> Engine {
        Engine::builder(self.db.clone(), self.backend, self.url.clone())
            .registry(registry)
            .clock(clock)
            .workers(fast_worker_settings())
            .build()
    }
}

/// Worker settings for tests: short lease, quick heartbeat and polling.
pub fn fast_worker_settings() -> WorkerSettings {
    WorkerSettings {
        lease_ttl: std::time::Duration::from_secs(2),
        heartbeat_interval: std::time::Duration::from_millis(200),
        poll_interval: std::time::Duration::from_millis(50),
        ..WorkerSettings::default()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::PgDatabase { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime: do the async cleanup on a thread.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async move {
                        if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ =
                                sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(sql)).await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

/// The plan `sql` runs with when `binds` are its `$1, $2, …`, one line per step: `EXPLAIN`
/// on Postgres, the `detail` column of `EXPLAIN QUERY PLAN` on SQLite. Pass the statement
/// the code runs (not a copy) so that the test follows it. Run `ANALYZE` first so that the
/// planner sees the table's size.
pub async fn query_plan<T>(db: &Db, backend: Backend, sql: &str, binds: &[T]) -> String
where
    T: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Clone + Send + 'static,
{
    let lines: Vec<String> = match backend {
        Backend::Postgres => {
            let explain = format!("EXPLAIN {sql}");
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(explain));
            for b in binds {
                q = q.bind(b.clone());
            }
            q.fetch_all(db).await.expect("EXPLAIN")
        }
        Backend::Sqlite => {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(explain));
            for b in binds {
                q = q.bind(b.clone());
            }
            let rows = q.fetch_all(db).await.expect("EXPLAIN QUERY PLAN");
            rows.into_iter().map(|r| r.3).collect()
        }
    };
    lines.join("\n")
}

/// Runs `args` through the registered handler of `J` in-process, outside the queue, after
/// a JSON round trip (as the worker would see it), as attempt 1 of job 0, and reads the
/// result as the runtime would (an `Outcome`, or the `JobError` the handler returned).
/// There is no lease: [`crate::JobContext::fence`] passes. Panics if `J` is not
/// registered in `engine`.
pub async fn perform_job<J: Job>(engine: &Engine, args: &J) -> Result<Outcome, JobError> {
    let json = serde_json::to_string(args).expect("args encode as JSON");
    let entry = engine
        .registry()
        .get(J::KIND)
        .unwrap_or_else(|| panic!("kind {:?} is not registered", J::KIND));
    entry
        .perform(engine.clone(), json, 1, entry.policy.retry.max_attempts)
        .unwrap_or_else(|| panic!("kind {:?} is declared without a handler", J::KIND))
        .await
}

/// Every job of kind `J` with its id, state and decoded args, oldest first.
pub async fn enqueued<J: Job>(engine: &Engine) -> Vec<(i64, JobState, J)> {
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, status, args FROM jobs WHERE kind = $1 ORDER BY id")
            .bind(J::KIND)
            .fetch_all(engine.db())
            .await
            .expect("query jobs");
    rows.into_iter()
        .map(|(id, status, args)| {
            (
                id,
                status.parse().expect("valid status"),
                serde_json::from_str(&args).expect("args decode"),
            )
        })
        .collect()
}

/// Asserts an unfinished job of kind `J` whose args satisfy `pred` exists; returns its id.
pub async fn assert_enqueued<J: Job + std::fmt::Debug>(
    engine: &Engine,
    pred: impl Fn(&J) -> bool,
) -> i64 {
    let jobs = enqueued::<J>(engine).await;
    jobs.iter()
        .find(|(_, state, args)| !state.is_final() && pred(args))
        .map(|(id, _, _)| *id)
        .unwrap_or_else(|| panic!("no unfinished {:?} job matched; found {jobs:?}", J::KIND))
}

/// What [`drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Attempts that succeeded (skips included).
    pub succeeded: usize,
    /// Attempts that failed and will be retried.
    pub retried: usize,
    /// Attempts that failed for good.
    pub failed: usize,
}

/// Runs every due job of every registered kind through the real runtime (a
/// [`WorkerPool`]: apalis workers over the engine's storage), until every kind has found
/// nothing due with nothing held, twice in a row with nothing claimed or acknowledged in
/// between (a job enqueued or woken by another job is run too). Jobs made due later
/// (retries) wait: advance a manual clock and drain again.
pub async fn drain(engine: &Engine) -> DrainReport {
    let pool = WorkerPool::start(engine);
    let cores = pool.cores();
    let total = |f: fn(&crate::worker::driver::Counters) -> u64| -> u64 {
        cores.iter().map(|c| f(&c.counters)).sum()
    };
    use std::sync::atomic::Ordering::Relaxed;
    let start = (
        total(|c| c.succeeded.load(Relaxed)),
        total(|c| c.retried.load(Relaxed)),
        total(|c| c.failed.load(Relaxed)),
    );
    // Claims and acks so far. A round must see neither change: an ack can make due a job
    // of a kind already probed in that round (a fan-out parent, woken by its last child).
    let progress = || {
        (
            total(|c| c.claimed.load(Relaxed)),
            total(|c| c.succeeded.load(Relaxed) + c.retried.load(Relaxed) + c.failed.load(Relaxed)),
        )
    };
    loop {
        let before = progress();
        let rounds: Vec<u64> = cores.iter().map(|c| c.probe()).collect();
        while !cores.iter().zip(&rounds).all(|(c, r)| c.probed(*r)) {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        if progress() == before {
            break;
        }
    }
    let report = DrainReport {
        succeeded: usize::try_from(total(|c| c.succeeded.load(Relaxed)) - start.0).unwrap_or(0),
        retried: usize::try_from(total(|c| c.retried.load(Relaxed)) - start.1).unwrap_or(0),
        failed: usize::try_from(total(|c| c.failed.load(Relaxed)) - start.2).unwrap_or(0),
    };
    pool.shutdown(tokio::time::Instant::now() + std::time::Duration::from_secs(10))
        .await;
    report
}

/// A TCP proxy in front of a database, to cut and restore the connection in outage tests.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TcpProxy {
    /// Starts proxying `127.0.0.1:<random>` to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let live: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (up2, live2) = (Arc::clone(&up), Arc::clone(&live));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refused while the "database" is down
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                live2.lock().expect("proxy lock").push(task.abort_handle());
            }
        });
        Self { addr, up, live }
    }

    /// Simulates an outage: drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.live.lock().expect("proxy lock").drain(..) {
            c.abort();
        }
    }

    /// Ends the outage.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
