//! Crashes and stops with real worker processes (`crash-worker`), on SQLite (one file that
//! every process opens) and Postgres (a fresh database per test):
//!
//! - a SIGKILLed worker loses its lease and another worker finishes the job;
//! - a job that kills its worker every time fails after its attempts, and is never claimed
//!   again;
//! - SIGTERM lets running jobs finish, or hands them back when they outlast the budget;
//! - (Postgres, in-process) a few seconds of database outage lose and duplicate nothing.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use e2e::{AbortWorker, SleepMs, StepFlow, marker_lines, registry};
use engine::admin::{self, JobDetail};
use engine::testing::{TcpProxy, TestDb, fast_worker_settings};
use engine::worker::WorkerPool;
use engine::{Clock, Engine, JobState, NewJob, backend_tests};
use tokio::time::Instant;

backend_tests!(
    killed_worker_loses_its_lease_and_another_worker_finishes_the_job,
    job_that_kills_its_worker_every_time_fails_after_max_attempts,
    sigterm_lets_running_jobs_finish_and_exits_zero,
    sigterm_releases_jobs_that_outlast_the_budget,
    a_workflow_killed_between_every_pair_of_steps_runs_each_step_once,
);

const SIGKILL: i32 = 9;
const SIGABRT: i32 = 6;

// --- Child processes ------------------------------------------------------------------

/// One `crash-worker` process.
struct Worker {
    id: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

/// The worker processes of one test, all on the test's database. Dropping it kills the
/// ones still running; if the test is failing, it prints every worker's log first.
struct Workers {
    url: String,
    dir: tempfile::TempDir,
    procs: Vec<Worker>,
}

impl Workers {
    fn new(db: &TestDb) -> Self {
        Self {
            url: db.url.clone(),
            dir: tempfile::tempdir().expect("temp dir"),
            procs: Vec::new(),
        }
    }

    /// A path in this test's temp dir (for marker files).
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a worker named `id` (its `WORKER_ID`), with extra environment variables.
    fn start(&mut self, id: &str, env: &[(&str, &str)]) {
        assert!(
            self.procs.iter().all(|w| w.id != id),
            "worker id {id} used twice"
        );
        let log = self.path(&format!("{id}.log"));
        let out = std::fs::File::create(&log).expect("create worker log");
        let err = out.try_clone().expect("clone worker log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crash-worker"));
        cmd.env("DATABASE_URL", &self.url)
            .env("WORKER_ID", id)
            .env("LEASE_TTL_MS", "1000")
            .env("HEARTBEAT_MS", "200")
            .env("POLL_MS", "100")
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn crash-worker");
        self.procs.push(Worker {
            id: id.to_owned(),
            child,
            log,
            exit: None,
        });
    }

    fn get(&mut self, id: &str) -> &mut Worker {
        self.procs
            .iter_mut()
            .find(|w| w.id == id)
            .unwrap_or_else(|| panic!("no worker {id}"))
    }

    /// The exit status of `id`, if it has exited.
    fn exited(&mut self, id: &str) -> Option<ExitStatus> {
        let w = self.get(id);
        if w.exit.is_none() {
            w.exit = w.child.try_wait().expect("try_wait");
        }
        w.exit
    }

    /// SIGKILL (what `Child::kill` sends on unix), and reap it.
    fn kill(&mut self, id: &str) -> ExitStatus {
        let w = self.get(id);
        w.child.kill().expect("SIGKILL the worker");
        let status = w.child.wait().expect("reap the worker");
        w.exit = Some(status);
        status
    }

    /// SIGTERM: the graceful stop.
    fn terminate(&mut self, id: &str) {
        let pid = self.get(id).child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill -TERM");
        assert!(ok.success(), "kill -TERM {pid} failed");
    }

    /// Waits up to `secs` for `id` to exit.
    async fn wait_exit(&mut self, id: &str, secs: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.exited(id) {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every worker's log, for a failing test's output.
    fn logs(&self) -> String {
        let mut all = String::new();
        for w in &self.procs {
            let text = std::fs::read_to_string(&w.log).unwrap_or_default();
            all.push_str(&format!("----- worker {} -----\n{text}\n", w.id));
        }
        all
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.procs {
            if w.exit.is_none() && matches!(w.child.try_wait(), Ok(None)) {
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

// --- Polling and reading jobs -----------------------------------------------------------

/// Polls `check` every 50 ms until it is true or `secs` pass.
async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn job(engine: &Engine, id: i64) -> JobDetail {
    admin::get_job(engine.db(), id).await.expect("read the job")
}

/// `(attempt, worker, outcome)` of every attempt, oldest first.
fn history(job: &JobDetail) -> Vec<(u32, String, Option<String>)> {
    job.attempts
        .iter()
        .map(|a| (a.attempt, a.worker_id.clone(), a.outcome.clone()))
        .collect()
}

/// Waits until the job is running under `worker` and its handler has written its start
/// line (so the attempt is really under way, not just claimed).
async fn wait_running_on(engine: &Engine, id: i64, worker: &str, marker: &Path) {
    let started = eventually(15, || async {
        let j = job(engine, id).await;
        j.job.status == JobState::Running
            && j.locked_by.as_deref() == Some(worker)
            && marker_lines(marker)
                .iter()
                .any(|l| l.starts_with("start ") && l.ends_with(&format!(" {worker}")))
    })
    .await;
    assert!(
        started,
        "job {id} never ran on {worker}: {:?}",
        job(engine, id).await
    );
}

/// The engine the test enqueues with: same database, same kinds, no workers.
fn enqueuer(t: &TestDb) -> Engine {
    t.engine(registry(), Clock::system())
}

// --- The tests --------------------------------------------------------------------------

async fn killed_worker_loses_its_lease_and_another_worker_finishes_the_job(t: TestDb) {
    let engine = enqueuer(&t);
    let mut workers = Workers::new(&t);
    let marker = workers.path("sleep.marker");
    workers.start("worker-a", &[]);
    let id = engine
        .enqueue(SleepMs::with_marker(2_000, marker.to_string_lossy()))
        .await
        .unwrap()
        .id();
    wait_running_on(&engine, id, "worker-a", &marker).await;

    let status = workers.kill("worker-a");
    assert_eq!(status.signal(), Some(SIGKILL), "worker-a: {status:?}");
    // Killed mid-job: the row still says running under worker-a's (now orphaned) lease.
    let j = job(&engine, id).await;
    assert_eq!(j.job.status, JobState::Running);
    assert_eq!(j.locked_by.as_deref(), Some("worker-a"));

    // A live worker's heartbeat rescues the job once the lease runs out, then claims it.
    workers.start("worker-b", &[]);
    let done = eventually(20, || async {
        job(&engine, id).await.job.status == JobState::Succeeded
    })
    .await;
    let j = job(&engine, id).await;
    assert!(done, "job did not succeed on worker-b: {j:?}");
    assert_eq!(j.job.attempt, 2);
    assert_eq!(
        history(&j),
        [
            (1, "worker-a".into(), Some("lease_expired".into())),
            (2, "worker-b".into(), Some("succeeded".into())),
        ]
    );
    assert!(j.attempts.iter().all(|a| a.finished_at.is_some()));
    assert_eq!(j.locked_by, None);
    // worker-a started and never finished; worker-b did both.
    assert_eq!(
        marker_lines(&marker),
        [
            format!("start {id} 1 worker-a"),
            format!("start {id} 2 worker-b"),
            format!("end {id} 2 worker-b"),
        ]
    );
}

/// A workflow of 4 steps whose worker is SIGKILLed after each step is recorded (in the
/// pause before the next one), and another worker started: every step ran exactly once
/// (each line once, none again on a later attempt), the workflow finished, its steps carry
/// the attempts that finished them.
async fn a_workflow_killed_between_every_pair_of_steps_runs_each_step_once(t: TestDb) {
    const STEPS: i64 = 4;
    let engine = enqueuer(&t);
    let mut workers = Workers::new(&t);
    let marker = workers.path("steps.marker");
    let id = engine
        .enqueue(StepFlow {
            steps: u32::try_from(STEPS).unwrap(),
            gap_ms: 1_500,
            marker: marker.to_string_lossy().into_owned(),
        })
        .await
        .unwrap()
        .id();
    let recorded = |n: i64| {
        let engine = engine.clone();
        async move {
            let steps: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_steps WHERE job_id = $1")
                .bind(id)
                .fetch_one(engine.db())
                .await
                .unwrap();
            steps >= n
        }
    };
    for k in 1..STEPS {
        let worker = format!("worker-{k}");
        workers.start(&worker, &[]);
        assert!(
            eventually(20, || recorded(k)).await,
            "step {k} never recorded on {worker}: {:?}",
            job(&engine, id).await
        );
        let status = workers.kill(&worker);
        assert_eq!(status.signal(), Some(SIGKILL), "{worker}: {status:?}");
    }
    workers.start("worker-last", &[]);
    let done = eventually(30, || async {
        job(&engine, id).await.job.status == JobState::Succeeded
    })
    .await;
    let j = job(&engine, id).await;
    assert!(done, "the workflow did not finish: {j:?}");

    let lines = marker_lines(&marker);
    for i in 0..STEPS {
        let ran = lines
            .iter()
            .filter(|l| l.starts_with(&format!("step {i} ")))
            .count();
        assert_eq!(ran, 1, "step {i} ran {ran} times: {lines:?}");
    }
    let by: Vec<(u32, String)> = j
        .steps
        .iter()
        .map(|s| (s.attempt, s.name.clone()))
        .collect();
    assert_eq!(
        by,
        [
            (1, "s0".to_owned()),
            (2, "s1".to_owned()),
            (3, "s2".to_owned()),
            (4, "s3".to_owned())
        ],
        "each attempt finished one step and was killed"
    );
    assert_eq!(
        history(&j)
            .iter()
            .filter(|(_, _, o)| o.as_deref() == Some("lease_expired"))
            .count(),
        3
    );
}

async fn job_that_kills_its_worker_every_time_fails_after_max_attempts(t: TestDb) {
    let engine = enqueuer(&t);
    let mut workers = Workers::new(&t);
    let id = engine
        .enqueue(NewJob::new(AbortWorker {}).max_attempts(3))
        .await
        .unwrap()
        .id();

    // Start a worker, wait for it to die (or for the job to fail), repeat.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut started: Vec<String> = Vec::new();
    let mut aborted: Vec<String> = Vec::new();
    'workers: loop {
        if job(&engine, id).await.job.status == JobState::Failed {
            break;
        }
        assert!(
            started.len() < 10 && Instant::now() < deadline,
            "job still not failed after {} workers: {:?}",
            started.len(),
            job(&engine, id).await
        );
        let worker = format!("worker-{}", started.len() + 1);
        workers.start(&worker, &[]);
        started.push(worker.clone());
        loop {
            if let Some(status) = workers.exited(&worker) {
                assert_eq!(
                    status.signal(),
                    Some(SIGABRT),
                    "{worker} should have aborted: {status:?}"
                );
                aborted.push(worker);
                continue 'workers;
            }
            if job(&engine, id).await.job.status == JobState::Failed {
                break 'workers;
            }
            assert!(
                Instant::now() < deadline,
                "{worker} neither died nor failed the job: {:?}",
                job(&engine, id).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Three workers died, one per attempt; the fourth rescued the last lease and failed the
    // job (nobody else was alive to do it).
    assert_eq!(aborted, ["worker-1", "worker-2", "worker-3"]);
    assert_eq!(started.len(), 4, "started {started:?}");
    let j = job(&engine, id).await;
    assert_eq!(j.job.status, JobState::Failed);
    assert_eq!(j.job.attempt, 3);
    assert_eq!(
        history(&j),
        [
            (1, "worker-1".into(), Some("lease_expired".into())),
            (2, "worker-2".into(), Some("lease_expired".into())),
            (3, "worker-3".into(), Some("lease_expired".into())),
        ]
    );
    let last_error = j.job.last_error.clone().unwrap_or_default();
    assert!(
        last_error.starts_with("lease expired: worker worker-3 stopped renewing it"),
        "{last_error}"
    );
    assert!(j.job.finished_at.is_some());
    assert_eq!(j.locked_by, None);

    // Never claimed again: one more worker, and nobody dies or runs a fourth attempt.
    workers.start("worker-extra", &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let j = job(&engine, id).await;
    assert_eq!(j.job.status, JobState::Failed);
    assert_eq!(j.attempts.len(), 3);
    assert_eq!(j.job.attempt, 3);
    assert_eq!(workers.exited("worker-4"), None, "worker-4 died");
    assert_eq!(workers.exited("worker-extra"), None, "worker-extra died");
}

async fn sigterm_lets_running_jobs_finish_and_exits_zero(t: TestDb) {
    let engine = enqueuer(&t);
    let mut workers = Workers::new(&t);
    let marker = workers.path("sleep.marker");
    workers.start("worker-a", &[]);
    let id = engine
        .enqueue(SleepMs::with_marker(1_500, marker.to_string_lossy()))
        .await
        .unwrap()
        .id();
    wait_running_on(&engine, id, "worker-a", &marker).await;

    let signalled = Instant::now();
    workers.terminate("worker-a");
    // The default budget is 10 s per service: plenty for a 1.5 s job.
    let status = workers.wait_exit("worker-a", 15).await;
    let took = signalled.elapsed();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "worker-a: {status:?} after {took:?}"
    );
    // It waited for the job rather than exiting at once (the job had up to 1.5 s left) and
    // did not sit out the whole budget.
    assert!(took < Duration::from_secs(9), "shutdown took {took:?}");

    let j = job(&engine, id).await;
    assert_eq!(j.job.status, JobState::Succeeded, "{j:?}");
    assert_eq!(
        history(&j),
        [(1, "worker-a".into(), Some("succeeded".into()))]
    );
    assert_eq!(
        marker_lines(&marker),
        [
            format!("start {id} 1 worker-a"),
            format!("end {id} 1 worker-a")
        ]
    );
}

async fn sigterm_releases_jobs_that_outlast_the_budget(t: TestDb) {
    let engine = enqueuer(&t);
    let mut workers = Workers::new(&t);
    let marker = workers.path("sleep.marker");
    workers.start("worker-a", &[("SHUTDOWN_PER_SERVICE_MS", "2000")]);
    let id = engine
        .enqueue(SleepMs::with_marker(60_000, marker.to_string_lossy()))
        .await
        .unwrap()
        .id();
    wait_running_on(&engine, id, "worker-a", &marker).await;

    let signalled = Instant::now();
    workers.terminate("worker-a");
    let status = workers.wait_exit("worker-a", 15).await;
    let took = signalled.elapsed();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "worker-a: {status:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "a 2 s budget took {took:?}");

    // Handed back, due now, with the cut-off attempt recorded as released.
    let j = job(&engine, id).await;
    assert_eq!(j.job.status, JobState::Pending, "{j:?}");
    assert_eq!(j.locked_by, None);
    assert!(j.job.run_at <= engine.clock().now_ms());
    assert_eq!(
        history(&j),
        [(1, "worker-a".into(), Some("released".into()))]
    );
    assert_eq!(marker_lines(&marker), [format!("start {id} 1 worker-a")]);

    // Another worker takes it. The released attempt was given back (a deploy does not use
    // up a job's attempts: max_attempts grew by one) but its number is not reused, so the
    // history never holds two attempts 1: worker-b runs attempt 2.
    assert_eq!((j.job.attempt, j.job.max_attempts), (1, 21));
    workers.start("worker-b", &[]);
    wait_running_on(&engine, id, "worker-b", &marker).await;
    let j = job(&engine, id).await;
    assert_eq!(j.job.attempt, 2);
    assert_eq!(
        history(&j),
        [
            (1, "worker-a".into(), Some("released".into())),
            (2, "worker-b".into(), None),
        ]
    );
}

// --- Database outage (Postgres only: SQLite has no network to cut) ----------------------

mod database_outage_of_a_few_seconds_loses_nothing {
    use engine::Backend;
    use engine::testing::TestDb;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(db) = TestDb::new(Backend::Postgres).await {
            super::database_outage_of_a_few_seconds_loses_nothing(db).await;
        }
    }
}

/// `url` with its `host:port` replaced by `addr`.
fn with_address(url: &str, addr: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let host_start = authority.rfind('@').map_or(start, |at| start + at + 1);
    format!("{}{addr}{}", &url[..host_start], &url[end..])
}

/// The `host:port` of `url` (port 5432 when absent).
fn address_of(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

#[test]
fn database_urls_are_pointed_at_the_proxy() {
    let url = "postgres://postgres:pw@db.local:6543/veza_test_1?sslmode=disable";
    assert_eq!(address_of(url), "db.local:6543");
    assert_eq!(
        with_address(url, "127.0.0.1:40000"),
        "postgres://postgres:pw@127.0.0.1:40000/veza_test_1?sslmode=disable"
    );
    assert_eq!(address_of("postgres://u@h/x"), "h:5432");
    assert_eq!(with_address("postgres://h/x", "a:1"), "postgres://a:1/x");
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(engine.db())
        .await
        .expect("count")
}

async fn database_outage_of_a_few_seconds_loses_nothing(t: TestDb) {
    const JOBS: i64 = 200;
    let direct = enqueuer(&t);
    let target = tokio::net::lookup_host(address_of(&t.url))
        .await
        .expect("resolve the Postgres address")
        .next()
        .expect("Postgres has an address");
    let proxy = TcpProxy::start(target).await;
    let proxied_url = with_address(&t.url, &proxy.addr.to_string());
    let (db, backend) = engine::db::connect(&proxied_url, 8)
        .await
        .expect("connect through the proxy");
    let engine = Engine::builder(db, backend, proxied_url)
        .registry(registry())
        .workers(fast_worker_settings())
        .build();

    // Short sleeps, so that jobs are running, finishing and being acknowledged when the
    // database goes away (8 at a time: about 1.25 s of work without an outage).
    let mut tx = direct.db().begin().await.unwrap();
    for _ in 0..JOBS {
        direct.enqueue_tx(&mut tx, SleepMs::new(50)).await.unwrap();
    }
    tx.commit().await.unwrap();

    let pool = WorkerPool::start(&engine);
    let some_done = eventually(20, || async {
        count(
            &direct,
            "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
        )
        .await
            >= 16
    })
    .await;
    assert!(some_done, "workers did not start through the proxy");

    // Three seconds down: longer than the 2 s lease, so the pool's leases run out and must
    // be renewed (not rescued) when the database is back.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_cut = count(
        &direct,
        "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    let at_restore = count(
        &direct,
        "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
    )
    .await;
    let running = count(
        &direct,
        "SELECT COUNT(*) FROM jobs WHERE status = 'running'",
    )
    .await;
    proxy.restore();
    assert!(
        at_cut < JOBS,
        "every job finished before the outage: nothing was tested"
    );
    assert_eq!(
        at_cut, at_restore,
        "jobs were acknowledged through a cut proxy"
    );
    assert!(running > 0, "no job was held by the pool during the outage");

    let all_done = eventually(30, || async {
        count(
            &direct,
            "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
        )
        .await
            == JOBS
    })
    .await;
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
            .fetch_all(direct.db())
            .await
            .unwrap();
    assert!(
        all_done,
        "not every job succeeded after the outage: {by_status:?}"
    );
    assert!(pool.is_alive(), "the worker pool died during the outage");

    // Exactly one successful attempt per job: nothing ran to success twice.
    let doubles = count(
        &direct,
        "SELECT COUNT(*) FROM (SELECT job_id FROM job_attempts_all WHERE outcome = 'succeeded' \
         GROUP BY job_id HAVING COUNT(*) <> 1) d",
    )
    .await;
    assert_eq!(doubles, 0, "jobs with more than one successful attempt");
    let successes = count(
        &direct,
        "SELECT COUNT(*) FROM job_attempts_all WHERE outcome = 'succeeded'",
    )
    .await;
    assert_eq!(successes, JOBS);
    assert_eq!(
        count(
            &direct,
            "SELECT COUNT(*) FROM jobs WHERE status = 'running'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &direct,
            "SELECT COUNT(*) FROM job_attempts_all WHERE finished_at IS NULL"
        )
        .await,
        0,
        "attempts left open"
    );
    let other: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT outcome, COUNT(*) FROM job_attempts_all GROUP BY outcome ORDER BY outcome",
    )
    .fetch_all(direct.db())
    .await
    .unwrap();
    eprintln!(
        "succeeded before the cut: {at_cut}, running during it: {running}; attempts by outcome: {other:?}"
    );

    pool.shutdown(Instant::now() + Duration::from_secs(5)).await;
}
