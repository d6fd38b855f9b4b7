//! [`Engine`]: the handle every part of veza-jobs shares (database, clock, registered
//! kinds, settings) and the enqueue and admin entry points.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, Millis};
use crate::db::{Backend, Db, DbConn};
use crate::error::{Error, Result};
use crate::job::{Enqueued, Job, JobPolicy, JobState, NewJob};
use crate::registry::Registry;
use crate::state_machine::Actor;
use crate::storage::{self, InsertJob};
use crate::wakeup::Wakeup;

/// How workers claim, lease and acknowledge jobs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// This process's worker id, recorded on every attempt and lease.
    pub worker_id: Arc<str>,
    /// A claimed job is leased for this long; the worker renews the lease every
    /// `heartbeat_interval` while the job runs. A job whose lease runs out (its worker died
    /// or lost the database) is rescued by another worker: that attempt counts.
    pub lease_ttl: Duration,
    /// How often a worker renews its leases and looks for expired ones.
    pub heartbeat_interval: Duration,
    /// How long an idle fetcher waits before looking again when no wake-up came.
    pub poll_interval: Duration,
    /// Most jobs one claim takes (bounded by free concurrency slots).
    pub fetch_batch: usize,
    /// Most finished attempts one acknowledgement transaction records.
    pub ack_batch: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id().into(),
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            fetch_batch: 50,
            ack_batch: 500,
        }
    }
}

/// `host-pid-random`: unique per process run, readable in the attempt history.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// How long finished jobs are kept before the `prune_jobs` job deletes them.
#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// Succeeded jobs.
    pub succeeded: Duration,
    /// Failed and cancelled jobs.
    pub failed: Duration,
    /// Rows deleted per transaction.
    pub batch: i64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            succeeded: Duration::from_secs(7 * 24 * 3600),
            failed: Duration::from_secs(30 * 24 * 3600),
            batch: 1000,
        }
    }
}

/// The shared engine handle (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    backend: Backend,
    database_url: String,
    clock: Clock,
    registry: Registry,
    workers: WorkerSettings,
    retention: RetentionSettings,
    wakeup: Arc<Wakeup>,
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    db: Db,
    backend: Backend,
    database_url: String,
    clock: Clock,
    registry: Registry,
    workers: WorkerSettings,
    retention: RetentionSettings,
}

impl EngineBuilder {
    /// The clock (default: the system clock).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
    /// The registered kinds.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }
    /// Worker settings.
    pub fn workers(mut self, workers: WorkerSettings) -> Self {
        self.workers = workers;
        self
    }
    /// Retention settings.
    pub fn retention(mut self, retention: RetentionSettings) -> Self {
        self.retention = retention;
        self
    }
    /// The engine.
    pub fn build(self) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                db: self.db,
                backend: self.backend,
                database_url: self.database_url,
                clock: self.clock,
                registry: self.registry,
                workers: self.workers,
                retention: self.retention,
                wakeup: Arc::default(),
            }),
        }
    }
}

impl Engine {
    /// Starts building an engine on an open pool. `database_url` is kept for the Postgres
    /// LISTEN connection.
    pub fn builder(db: Db, backend: Backend, database_url: impl Into<String>) -> EngineBuilder {
        EngineBuilder {
            db,
            backend,
            database_url: database_url.into(),
            clock: Clock::system(),
            registry: Registry::new(),
            workers: WorkerSettings::default(),
            retention: RetentionSettings::default(),
        }
    }

    /// The pool.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }
    /// The backend.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }
    /// The database URL (with its password: never log it; see [`crate::db::redact`]).
    pub fn database_url(&self) -> &str {
        &self.inner.database_url
    }
    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }
    /// The registered kinds.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
    /// Worker settings.
    pub fn workers(&self) -> &WorkerSettings {
        &self.inner.workers
    }
    /// Retention settings.
    pub fn retention(&self) -> RetentionSettings {
        self.inner.retention
    }
    /// The in-process wake-ups.
    pub fn wakeup(&self) -> &Arc<Wakeup> {
        &self.inner.wakeup
    }

    /// The policy of `kind`: the registered one, else the default.
    pub fn policy_of(&self, kind: &str) -> JobPolicy {
        self.registry()
            .get(kind)
            .map_or(JobPolicy::DEFAULT, |e| e.policy)
    }

    /// Enqueues a job in its own transaction and wakes this process's fetcher.
    pub async fn enqueue<J: Job>(&self, job: impl Into<NewJob<J>>) -> Result<Enqueued> {
        let mut tx = self.db().begin().await?;
        let enqueued = self.enqueue_tx(&mut tx, job).await?;
        tx.commit().await?;
        self.wake(J::KIND);
        Ok(enqueued)
    }

    /// Enqueues a job on `conn`, the caller's transaction: it exists if and only if that
    /// transaction commits. With a unique key that an unfinished job holds, nothing is
    /// inserted and that job's id is returned (no error, the transaction stays usable).
    ///
    /// On Postgres, workers in every process are woken at commit. On SQLite, call
    /// [`Engine::wake`] after commit for an immediate start (otherwise the next poll).
    pub async fn enqueue_tx<J: Job>(
        &self,
        conn: &mut DbConn,
        job: impl Into<NewJob<J>>,
    ) -> Result<Enqueued> {
        let job = job.into();
        let args = serde_json::to_string(&job.args)?;
        let now = self.clock().now_ms();
        self.insert(
            conn,
            &InsertJob {
                kind: J::KIND,
                args: &args,
                priority: job.priority.unwrap_or(J::POLICY.priority),
                max_attempts: job.max_attempts.unwrap_or(J::POLICY.retry.max_attempts),
                run_at: job.run_at.unwrap_or(now),
                unique_key: job.unique_key.as_deref(),
            },
            now,
        )
        .await
    }

    /// Enqueues a job given as kind and JSON args (the scheduler and the CLI use this).
    /// The kind must be registered in this process.
    pub async fn enqueue_json(
        &self,
        conn: &mut DbConn,
        kind: &str,
        args: &str,
        unique_key: Option<&str>,
    ) -> Result<Enqueued> {
        let policy = self
            .registry()
            .get(kind)
            .ok_or_else(|| Error::UnknownKind(kind.to_owned()))?
            .policy;
        let now = self.clock().now_ms();
        let job = InsertJob {
            kind,
            args,
            priority: policy.priority,
            max_attempts: policy.retry.max_attempts,
            run_at: now,
            unique_key,
        };
        self.insert(conn, &job, now).await
    }

    async fn insert(
        &self,
        conn: &mut DbConn,
        job: &InsertJob<'_>,
        now: Millis,
    ) -> Result<Enqueued> {
        storage::insert_job(conn, job, now).await
    }

    /// Wakes this process's fetcher of `kind`.
    pub fn wake(&self, kind: &str) {
        self.wakeup().notify(kind);
    }

    /// Cancels a pending or retrying job (admin). A running job is not interrupted.
    pub async fn cancel(&self, id: i64, actor: &Actor) -> Result<JobState> {
        storage::cancel(self.db(), id, actor, self.clock().now_ms()).await
    }

    /// Retries a failed or cancelled job with fresh attempts (admin).
    pub async fn retry(&self, id: i64, actor: &Actor) -> Result<JobState> {
        let state = storage::retry(self.db(), id, actor, self.clock().now_ms()).await?;
        self.wakeup().notify_all();
        Ok(state)
    }

    /// Enqueues many jobs of one kind on `conn`, the caller's transaction, with one
    /// multi-row INSERT per [`storage::INSERT_CHUNK`] rows; returns their ids in the order
    /// of `jobs`. They exist if and only if that transaction commits.
    ///
    /// A job with a unique key is inserted on its own, as by [`Engine::enqueue_tx`]: if an
    /// unfinished job holds the key, nothing is inserted and the holder's id is returned in
    /// its place.
    ///
    /// On Postgres, workers in every process are woken at commit (one NOTIFY for the kind).
    /// On SQLite, call [`Engine::wake`] after commit for an immediate start.
    pub async fn enqueue_many<J: Job>(
        &self,
        conn: &mut DbConn,
        jobs: Vec<NewJob<J>>,
    ) -> Result<Vec<i64>> {
        let now = self.clock().now_ms();
        let args = jobs
            .iter()
            .map(|job| serde_json::to_string(&job.args))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let rows: Vec<InsertJob<'_>> = jobs
            .iter()
            .zip(&args)
            .map(|(job, args)| InsertJob {
                kind: J::KIND,
                args,
                priority: job.priority.unwrap_or(J::POLICY.priority),
                max_attempts: job.max_attempts.unwrap_or(J::POLICY.retry.max_attempts),
                run_at: job.run_at.unwrap_or(now),
                unique_key: job.unique_key.as_deref(),
            })
            .collect();
        storage::insert_jobs(conn, &rows, now).await
    }
}
