//! [`Engine`]: the handle every part of veza-jobs shares (database, clock, registered
//! kinds, settings), the enqueue and admin entry points, and [`JobTx`], the transaction
//! that enqueues jobs with the business change that causes them.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Clock, Millis};
use crate::db::{Backend, Db, DbConn, Tx};
use crate::error::{Error, Result};
use crate::job::{Enqueued, Job, JobPolicy, JobState, NewJob};
use crate::registry::{DiscardReason, Registry};
use crate::state_machine::Actor;
use crate::storage::{self, InsertJob, Notify};
use crate::wakeup::{Notifier, Wakeup};

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
    /// Most jobs a kind keeps claimed ahead of its running ones (a local buffer, see
    /// [`crate::worker`]); the buffer also never holds more than the kind's workers can
    /// start within a second, which is the bound that matters: this cap only limits the
    /// size of one claim (and so of one ack batch) for the quickest jobs.
    pub fetch_batch: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id().into(),
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            fetch_batch: 1_000,
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
    /// Coalesced cross-process wake-ups (Postgres), started on first use.
    notifier: OnceLock<Notifier>,
    /// The LISTEN task (Postgres), started by the first worker.
    listener: OnceLock<JoinHandle<()>>,
    /// Dropped with the engine: stops the listener and the notifier.
    stop: watch::Sender<bool>,
    /// Group commit of [`Engine::enqueue`], started on first use.
    group: OnceLock<crate::group_commit::GroupCommit>,
    /// Group read of [`Engine::job_detail`], started on first use.
    reads: OnceLock<crate::admin::DetailReads>,
}

/// A job ready to insert (owned): what [`Engine::encode`] makes of a [`NewJob`].
pub(crate) struct EncodedJob {
    kind: &'static str,
    args: String,
    priority: i32,
    retry: crate::job::RetryPolicy,
    run_at: Millis,
    unique_key: Option<String>,
}

impl EncodedJob {
    /// The row to insert.
    pub(crate) fn row(&self) -> InsertJob<'_> {
        InsertJob {
            kind: self.kind,
            args: &self.args,
            priority: self.priority,
            retry: self.retry,
            run_at: self.run_at,
            unique_key: self.unique_key.as_deref(),
            parent_id: None,
        }
    }
}

/// An [`Engine`] that does not keep it alive (the group-commit writers hold one).
#[derive(Clone)]
pub(crate) struct WeakEngine(std::sync::Weak<Inner>);

impl WeakEngine {
    pub(crate) fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
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
                notifier: OnceLock::new(),
                listener: OnceLock::new(),
                stop: watch::channel(false).0,
                group: OnceLock::new(),
                reads: OnceLock::new(),
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

    /// The policy of `kind`: the registered (or declared) one, else the default.
    pub fn policy_of(&self, kind: &str) -> JobPolicy {
        self.registry()
            .get(kind)
            .map_or(JobPolicy::DEFAULT, |e| e.policy)
    }

    /// Begins a transaction that enqueues jobs with the caller's own writes: they exist
    /// if and only if it commits, and [`JobTx::commit`] wakes their workers.
    pub async fn begin(&self) -> Result<JobTx> {
        Ok(JobTx {
            tx: self.db().begin().await?,
            engine: self.clone(),
            kinds: Vec::new(),
        })
    }

    /// Enqueues a job and wakes its workers; returns once it is committed. Concurrent calls
    /// share a transaction (group commit, see `group_commit.rs`): one commit for all the
    /// jobs that queued while the previous one was written.
    pub async fn enqueue<J: Job>(&self, job: impl Into<NewJob<J>>) -> Result<Enqueued> {
        let job = self.encode(job.into(), self.clock().now_ms())?;
        let (reply, done) = tokio::sync::oneshot::channel();
        let queued = crate::group_commit::Queued { job, reply };
        if !self.group_commit().send(queued) {
            return Err(Error::ShuttingDown);
        }
        done.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Job `id` with its args and history ([`crate::admin::get_job`]). Concurrent calls
    /// share one statement (group read, see [`crate::admin::DetailReads`]).
    pub async fn job_detail(&self, id: i64) -> Result<crate::admin::JobDetail> {
        let reads = self
            .inner
            .reads
            .get_or_init(|| crate::admin::DetailReads::start(self.db().clone(), self.backend()));
        reads.read(id).await
    }

    pub(crate) fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.inner))
    }

    /// The group-commit queue of [`Engine::enqueue`], its writers started on first use.
    fn group_commit(&self) -> &crate::group_commit::GroupCommit {
        self.inner
            .group
            .get_or_init(|| crate::group_commit::GroupCommit::start(self))
    }

    /// `job` ready to insert at `now`: its args encoded, the kind's policy filling what it
    /// leaves unset.
    pub(crate) fn encode<J: Job>(&self, job: NewJob<J>, now: Millis) -> Result<EncodedJob> {
        let policy = self.policy_of(J::KIND);
        Ok(EncodedJob {
            kind: J::KIND,
            args: serde_json::to_string(&job.args)?,
            priority: job.priority.unwrap_or(policy.priority),
            retry: crate::job::RetryPolicy {
                max_attempts: job.max_attempts.unwrap_or(policy.retry.max_attempts),
                ..policy.retry
            },
            run_at: job.run_at.unwrap_or(now),
            unique_key: job.unique_key,
        })
    }

    /// Enqueues a job on `conn`, the caller's transaction: it exists if and only if that
    /// transaction commits. With a unique key that an unfinished job holds, nothing is
    /// inserted and that job's id is returned (no error, the transaction stays usable).
    ///
    /// Prefer [`Engine::begin`] and [`JobTx::enqueue`]. Here, on Postgres, a NOTIFY queued
    /// in the transaction wakes the workers of every process at commit; on SQLite, call
    /// [`Engine::wake`] after commit for an immediate start (otherwise the next poll).
    pub async fn enqueue_tx<J: Job>(
        &self,
        conn: &mut DbConn,
        job: impl Into<NewJob<J>>,
    ) -> Result<Enqueued> {
        self.insert_new(conn, job.into(), Notify::InTransaction)
            .await
    }

    async fn insert_new<J: Job>(
        &self,
        conn: &mut DbConn,
        job: NewJob<J>,
        notify: Notify,
    ) -> Result<Enqueued> {
        let now = self.clock().now_ms();
        let job = self.encode(job, now)?;
        storage::insert_job(conn, &job.row(), now, notify).await
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
            retry: policy.retry,
            run_at: now,
            unique_key,
            parent_id: None,
        };
        storage::insert_job(conn, &job, now, Notify::InTransaction).await
    }

    /// Wakes this process's workers of `kind` (after a commit the engine did not see).
    pub fn wake(&self, kind: &str) {
        self.wakeup().notify(kind);
    }

    /// Wakes the workers of `kind` in this process at once, and in every other process
    /// (Postgres) through a NOTIFY sent outside any enqueue transaction, coalesced: one per
    /// kind for all the commits that happened while the previous one was being sent.
    pub(crate) fn wake_everywhere(&self, kind: &str) {
        self.wake(kind);
        if self.backend() == Backend::Postgres {
            self.inner
                .notifier
                .get_or_init(|| {
                    Notifier::start(
                        self.db().clone(),
                        self.clock().clone(),
                        self.inner.workers.poll_interval,
                        self.inner.stop.subscribe(),
                    )
                })
                .notify(kind);
        }
    }

    /// Starts the LISTEN task on Postgres (once; the workers call it).
    pub(crate) fn start_listener(&self) {
        if self.backend() != Backend::Postgres {
            return;
        }
        self.inner.listener.get_or_init(|| {
            tokio::spawn(crate::wakeup::listen(
                self.database_url().to_owned(),
                Arc::clone(self.wakeup()),
                self.inner.stop.subscribe(),
            ))
        });
    }

    /// False once a started listener has stopped (it only stops with the engine).
    pub(crate) fn listener_alive(&self) -> bool {
        self.inner.listener.get().is_none_or(|l| !l.is_finished())
    }

    /// Cancels a pending or retrying job (admin), running its kind's discard hook in the
    /// same transaction. A running job is not interrupted.
    pub async fn cancel(&self, id: i64, actor: &Actor) -> Result<JobState> {
        let mut tx = self.db().begin().await?;
        let job = storage::cancel(&mut tx, id, actor, self.clock().now_ms()).await?;
        if let Some(entry) = self.registry().get(&job.kind) {
            let now = self.clock().now_ms();
            entry
                .discard(
                    &mut tx,
                    job.id,
                    &job.args,
                    DiscardReason::Cancelled,
                    now,
                    actor,
                )
                .await?;
        }
        tx.commit().await?;
        Ok(JobState::Cancelled)
    }

    /// Retries a failed or cancelled job with fresh attempts (admin).
    pub async fn retry(&self, id: i64, actor: &Actor) -> Result<JobState> {
        let kind = storage::retry(self.db(), id, actor, self.clock().now_ms()).await?;
        self.wake_everywhere(&kind);
        Ok(JobState::Pending)
    }

    /// Enqueues many jobs of one kind on `conn`, the caller's transaction, with one
    /// INSERT per [`storage::INSERT_CHUNK`] rows; returns their ids in the order
    /// of `jobs`. They exist if and only if that transaction commits.
    ///
    /// A job with a unique key is inserted on its own, as by [`Engine::enqueue_tx`]: if an
    /// unfinished job holds the key, nothing is inserted and the holder's id is returned in
    /// its place. Waking works as for [`Engine::enqueue_tx`]; [`JobTx::enqueue_many`] is
    /// the same inside a [`JobTx`].
    pub async fn enqueue_many<J: Job>(
        &self,
        conn: &mut DbConn,
        jobs: Vec<NewJob<J>>,
    ) -> Result<Vec<i64>> {
        self.insert_many(conn, jobs, Notify::InTransaction).await
    }

    async fn insert_many<J: Job>(
        &self,
        conn: &mut DbConn,
        jobs: Vec<NewJob<J>>,
        notify: Notify,
    ) -> Result<Vec<i64>> {
        let now = self.clock().now_ms();
        let jobs = jobs
            .into_iter()
            .map(|job| self.encode(job, now))
            .collect::<Result<Vec<_>>>()?;
        let rows: Vec<InsertJob<'_>> = jobs.iter().map(EncodedJob::row).collect();
        storage::insert_jobs(conn, &rows, now, notify).await
    }
}

/// A transaction on the job database that enqueues jobs with the caller's own writes.
/// Deref to the connection for those writes (`&mut *tx`); [`JobTx::commit`] commits and
/// wakes the enqueued kinds' workers, here at once and in other processes through one
/// coalesced NOTIFY per kind sent after the commit (so concurrent enqueues do not queue on
/// Postgres' NOTIFY lock). Dropped without commit, it rolls back and wakes nobody.
pub struct JobTx {
    tx: Tx,
    engine: Engine,
    kinds: Vec<String>,
}

impl JobTx {
    /// Enqueues a job in this transaction (see [`Engine::enqueue_tx`] for unique keys).
    pub async fn enqueue<J: Job>(&mut self, job: impl Into<NewJob<J>>) -> Result<Enqueued> {
        let job = self
            .engine
            .encode(job.into(), self.engine.clock().now_ms())?;
        self.insert_row(&job.row()).await
    }

    /// Enqueues many jobs of one kind in this transaction (see [`Engine::enqueue_many`]).
    pub async fn enqueue_many<J: Job>(&mut self, jobs: Vec<NewJob<J>>) -> Result<Vec<i64>> {
        let engine = self.engine.clone();
        let ids = engine
            .insert_many(&mut self.tx, jobs, Notify::AfterCommit)
            .await?;
        self.note(J::KIND);
        Ok(ids)
    }

    /// Enqueues a job given as kind and JSON args (the scheduler and the CLI use this).
    pub async fn enqueue_json(
        &mut self,
        kind: &str,
        args: &str,
        unique_key: Option<&str>,
    ) -> Result<Enqueued> {
        let policy = self
            .engine
            .registry()
            .get(kind)
            .ok_or_else(|| Error::UnknownKind(kind.to_owned()))?
            .policy;
        let now = self.engine.clock().now_ms();
        let row = InsertJob {
            kind,
            args,
            priority: policy.priority,
            retry: policy.retry,
            run_at: now,
            unique_key,
            parent_id: None,
        };
        let enqueued = storage::insert_job(&mut self.tx, &row, now, Notify::AfterCommit).await?;
        self.note(kind);
        Ok(enqueued)
    }

    /// Inserts one encoded row; a due job wakes its kind's workers at commit.
    pub(crate) async fn insert_row(&mut self, row: &InsertJob<'_>) -> Result<Enqueued> {
        let now = self.engine.clock().now_ms();
        let enqueued = storage::insert_job(&mut self.tx, row, now, Notify::AfterCommit).await?;
        if row.run_at <= now && matches!(enqueued, Enqueued::Inserted(_)) {
            self.note(row.kind);
        }
        Ok(enqueued)
    }

    /// Inserts encoded rows (the apalis `TaskSink`).
    pub(crate) async fn insert_rows(&mut self, rows: &[InsertJob<'_>]) -> Result<Vec<i64>> {
        let now = self.engine.clock().now_ms();
        let ids = storage::insert_jobs(&mut self.tx, rows, now, Notify::AfterCommit).await?;
        for kind in storage::due_kinds(rows, now) {
            self.note(kind);
        }
        Ok(ids)
    }

    fn note(&mut self, kind: &str) {
        if !self.kinds.iter().any(|k| k == kind) {
            self.kinds.push(kind.to_owned());
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Commits, then wakes the workers of every kind enqueued due now.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        for kind in &self.kinds {
            self.engine.wake_everywhere(kind);
        }
        Ok(())
    }

    /// Rolls back: nothing was enqueued.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}

impl Deref for JobTx {
    type Target = DbConn;

    fn deref(&self) -> &DbConn {
        &self.tx
    }
}

impl DerefMut for JobTx {
    fn deref_mut(&mut self) -> &mut DbConn {
        &mut self.tx
    }
}
