//! [`JobStorage`]: the engine's storage as an apalis 1.0 backend. apalis's `WorkerBuilder`
//! and `Monitor` run its tasks; the engine's guarantees live behind the trait methods
//! (claims, leases, fenced batched acks, persisted backoff, see [`super::driver`]) and in
//! the backend's middleware ([`super::attempt`]).
//!
//! What it implements, beside `Backend` + `BackendConfig`: `TaskSink` (push, also
//! [`crate::JobTx`] for the caller's transaction), `FetchById`, `ListTasks`,
//! `ListAllTasks`, `ListQueues`, `ListWorkers`, `Metrics`, `ResumeById` (admin retry),
//! `Reschedule`, `Update`, `Vacuum` and `WaitForCompletion`.
//!
//! apalis's statuses are mapped from the engine's: `pending` → Pending, `running` →
//! Running, `succeeded` → Done, `retrying` → Failed (apalis's "failed, will be retried"),
//! `failed` and `cancelled` → Killed (never run again without an admin).

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_codec::json::JsonCodec;
use apalis_core::backend::codec::Codec;
use apalis_core::backend::finalize::FinalizeBackend;
use apalis_core::backend::queue::Queue;
use apalis_core::backend::{
    Backend, BackendConfig, FetchById, Filter, ListAllTasks, ListQueues, ListTasks, ListWorkers,
    Metrics, QueueInfo, Reschedule, ResumeById, RunningWorker, StatType, Statistic, TaskResult,
    TaskSink, TaskSinkError, Update, Vacuum, WaitForCompletion, WireFormatBackend,
};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::status::Status;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{AssertSqlSafe, Row};

use super::attempt::AttemptLayer;
use super::driver::{Attachment, Core};
use crate::context::JobContext;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::job::{Job, JobPolicy, JobState, Outcome};
use crate::storage::{ClaimedJob, InsertJob};

/// The `Kind` of [`JobStorage`]: args are decoded by the backend itself, so a row whose
/// args no longer decode fails that one job (permanently, recorded) instead of ending the
/// worker, as apalis's `Durable` decoding would.
#[derive(Debug, Clone, Copy, Default)]
pub struct Native;

impl<B, Args> FinalizeBackend<B, Args> for Native {
    type Backend = B;

    fn finalize(current: B) -> B {
        current
    }
}

/// What a [`JobStorage`] runs: its queue (the job kind) and the kind's policy.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The queue: the `kind` of the jobs it runs and pushes.
    pub queue: Arc<str>,
    /// Concurrency, timeout, and the retry policy stored on pushed jobs.
    pub policy: JobPolicy,
}

/// The engine's storage as an apalis backend of tasks with args `A` (see the module doc).
///
/// ```no_run
/// use apalis_core::backend::TaskSink;
/// use apalis_core::worker::builder::WorkerBuilder;
/// use engine::worker::JobStorage;
/// # async fn example(engine: engine::Engine) -> Result<(), Box<dyn std::error::Error>> {
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Email {
///     to: String,
/// }
/// async fn send_email(email: Email) -> Result<(), std::io::Error> {
///     Ok(())
/// }
/// let mut storage = JobStorage::<Email>::new(&engine); // was: PostgresStorage::new(&pool)
/// storage.push(Email { to: "a@example.com".into() }).await?;
/// WorkerBuilder::new("email")
///     .backend(storage)
///     .build(send_email)
///     .run()
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct JobStorage<A> {
    core: Arc<Core>,
    config: StorageConfig,
    codec: JsonCodec<String>,
    /// Tasks accepted by the `Sink` side, written on flush.
    unsent: Vec<Task<String>>,
    /// The write of a flush under way (in a mutex only to keep the storage `Sync`).
    flushing: std::sync::Mutex<Option<BoxFuture<'static, Result<()>>>>,
    /// Set on the instance a worker polls (never cloned): while it lives the core claims
    /// for that worker.
    attached: Option<Attachment>,
    _args: PhantomData<fn() -> A>,
}

impl<A> Clone for JobStorage<A> {
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
            config: self.config.clone(),
            codec: JsonCodec::default(),
            unsent: Vec::new(),
            flushing: std::sync::Mutex::new(None),
            attached: None,
            _args: PhantomData,
        }
    }
}

impl<A> std::fmt::Debug for JobStorage<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStorage")
            .field("queue", &self.config.queue)
            .finish_non_exhaustive()
    }
}

impl<A> JobStorage<A> {
    /// A storage for tasks of `A`, in the queue named after the type (as apalis's SQL
    /// storages name theirs), with the default policy. Rename it with
    /// [`JobStorage::with_queue`].
    pub fn new(engine: &Engine) -> Self {
        Self::with(
            engine,
            Arc::from(std::any::type_name::<A>()),
            JobPolicy::DEFAULT,
        )
    }

    fn with(engine: &Engine, queue: Arc<str>, policy: JobPolicy) -> Self {
        Self {
            core: Core::new(engine.clone(), Arc::clone(&queue), policy),
            config: StorageConfig { queue, policy },
            codec: JsonCodec::default(),
            unsent: Vec::new(),
            flushing: std::sync::Mutex::new(None),
            attached: None,
            _args: PhantomData,
        }
    }

    /// The same storage on the queue `queue` (the job kind stored on its rows).
    pub fn with_queue(self, queue: impl Into<Arc<str>>) -> Self {
        Self::with(&self.core.engine, queue.into(), self.config.policy)
    }

    /// The same storage with `policy` (concurrency, timeout, retries of pushed jobs).
    pub fn with_policy(self, policy: JobPolicy) -> Self {
        Self::with(&self.core.engine, Arc::clone(&self.config.queue), policy)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.core.engine
    }

    pub(crate) fn core(&self) -> Arc<Core> {
        Arc::clone(&self.core)
    }

    /// Called by every poll of the worker: starts the driver and attaches this instance.
    fn attach(&mut self) {
        if self.attached.is_none() {
            self.attached = Some(self.core.attach());
        }
        self.core.ensure_started();
    }

    fn job_task(
        &self,
        job: ClaimedJob,
        args: A,
        lost: tokio_util::sync::CancellationToken,
    ) -> Task<A> {
        let engine = self.core.engine.clone();
        let ctx = JobContext::claimed(
            engine,
            Arc::clone(&self.config.queue),
            job.id,
            job.attempt,
            job.max_attempts,
            lost,
        );
        TaskBuilder::new(args)
            .task_id(TaskId::Int(u64::try_from(job.id).unwrap_or(0)))
            .attempt(job.attempt.saturating_sub(1) as usize)
            .max_attempts(job.max_attempts as usize)
            .run_at_timestamp(u64::try_from(job.run_at / 1000).unwrap_or(0))
            .lock_by(Some(ctx.worker_id.to_string()))
            .queue(Queue::from(self.config.queue.to_string()))
            .status(Status::Running)
            .data(ctx)
            .build()
    }
}

impl<J: Job> JobStorage<J> {
    /// The storage of job kind `J`: its queue is `J::KIND`, its policy the registered one.
    pub fn for_job(engine: &Engine) -> Self {
        Self::with(engine, Arc::from(J::KIND), engine.policy_of(J::KIND))
    }
}

impl<A> Backend for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    type Task = Task<A>;
    type Error = Error;

    fn poll_ready(&mut self, _cx: &mut Context<'_>, _w: &WorkerContext) -> Poll<Result<()>> {
        self.attach();
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _w: &WorkerContext,
    ) -> Poll<Option<Result<Task<A>>>> {
        self.attach();
        loop {
            let Some((job, lost)) = self.core.next_job(cx.waker()) else {
                return Poll::Pending;
            };
            match serde_json::from_str::<A>(&job.args) {
                Ok(args) => return Poll::Ready(Some(Ok(self.job_task(job, args, lost)))),
                Err(e) => {
                    // A poison row fails alone, recorded; the worker goes on.
                    let error = format!("args do not decode as {}: {e}", self.config.queue);
                    tracing::error!(job = job.id, kind = %self.config.queue, error = %error, "failing a job whose args do not decode");
                    self.core.finish(
                        job.id,
                        job.attempt,
                        Some(crate::storage::AttemptEnd::Fail { error }),
                        Duration::ZERO,
                    );
                }
            }
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, _w: &WorkerContext) -> Poll<Result<()>> {
        if self.core.close(Some(cx.waker())) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl<A> BackendConfig for JobStorage<A> {
    type Args = A;
    type Id = i64;
    type Kind = Native;
    type Config = StorageConfig;
    type Layer = AttemptLayer;

    fn config(&self) -> &StorageConfig {
        &self.config
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> AttemptLayer {
        AttemptLayer {
            core: Arc::clone(&self.core),
        }
    }
}

impl<A> WireFormatBackend for JobStorage<A> {
    type Codec = JsonCodec<String>;
    type Compact = String;

    fn codec(&self) -> &JsonCodec<String> {
        &self.codec
    }
}

// --- Pushing ---------------------------------------------------------------------------

impl<A> JobStorage<A> {
    /// Inserts encoded tasks in one transaction and wakes the queue's workers.
    fn insert(&self, tasks: Vec<Task<String>>) -> BoxFuture<'static, Result<()>> {
        let engine = self.core.engine.clone();
        let queue = Arc::clone(&self.config.queue);
        let policy = self.config.policy;
        Box::pin(async move {
            if tasks.is_empty() {
                return Ok(());
            }
            let now = engine.clock().now_ms();
            let rows: Vec<InsertJob<'_>> = tasks
                .iter()
                .map(|t| InsertJob {
                    kind: &queue,
                    args: &t.args,
                    // apalis runs higher priorities first; the engine, lower ones.
                    priority: t
                        .priority()
                        .map_or(policy.priority, |p| -i32::try_from(p).unwrap_or(i32::MAX)),
                    retry: crate::job::RetryPolicy {
                        max_attempts: t.max_attempts().map_or(policy.retry.max_attempts, |m| {
                            u32::try_from(m).unwrap_or(u32::MAX)
                        }),
                        ..policy.retry
                    },
                    run_at: t.run_at().map_or(now, |secs| {
                        i64::try_from(secs).unwrap_or(0).saturating_mul(1000)
                    }),
                    unique_key: t.idempotency_key(),
                    parent_id: None,
                })
                .collect();
            let mut tx = engine.begin().await?;
            tx.insert_rows(&rows).await?;
            tx.commit().await
        })
    }

    fn encode(&self, task: Task<A>) -> std::result::Result<Task<String>, TaskSinkError<Error>>
    where
        A: Serialize + DeserializeOwned,
    {
        let codec = &self.codec;
        task.try_map_args(|args| {
            Codec::<A>::encode(codec, &args).map_err(|e| TaskSinkError::CodecError(e.into()))
        })
    }

    fn poll_flushed(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), TaskSinkError<Error>>> {
        loop {
            let flushing = self.flushing.get_mut().unwrap_or_else(|p| p.into_inner());
            if let Some(fut) = flushing.as_mut() {
                let done = futures::ready!(fut.as_mut().poll(cx));
                *flushing = None;
                done.map_err(TaskSinkError::PushError)?;
            }
            if self.unsent.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let tasks = std::mem::take(&mut self.unsent);
            let write = self.insert(tasks);
            *self.flushing.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(write);
        }
    }
}

impl<A> TaskSink<A, Native> for JobStorage<A>
where
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn start_send(
        self: Pin<&mut Self>,
        item: Task<A>,
    ) -> std::result::Result<(), TaskSinkError<Error>> {
        let this = self.get_mut();
        let task = this.encode(item)?;
        this.unsent.push(task);
        Ok(())
    }

    fn poll_ready(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), TaskSinkError<Error>>> {
        Poll::Ready(Ok(()))
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), TaskSinkError<Error>>> {
        self.get_mut().poll_flushed(cx)
    }

    fn poll_close(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), TaskSinkError<Error>>> {
        self.get_mut().poll_flushed(cx)
    }

    async fn push(&mut self, task: A) -> std::result::Result<(), TaskSinkError<Error>> {
        self.push_task(TaskBuilder::new(task).build()).await
    }

    async fn push_bulk(&mut self, tasks: Vec<A>) -> std::result::Result<(), TaskSinkError<Error>> {
        let tasks = tasks
            .into_iter()
            .map(|a| self.encode(TaskBuilder::new(a).build()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.insert(tasks).await.map_err(TaskSinkError::PushError)
    }

    async fn push_stream(
        &mut self,
        tasks: impl Stream<Item = A> + Unpin + Send,
    ) -> std::result::Result<(), TaskSinkError<Error>> {
        let mut chunks = tasks.ready_chunks(crate::storage::INSERT_CHUNK);
        while let Some(chunk) = chunks.next().await {
            self.push_bulk(chunk).await?;
        }
        Ok(())
    }

    async fn push_task(&mut self, task: Task<A>) -> std::result::Result<(), TaskSinkError<Error>> {
        let task = self.encode(task)?;
        self.insert(vec![task])
            .await
            .map_err(TaskSinkError::PushError)
    }

    async fn push_all(
        &mut self,
        tasks: impl Stream<Item = Task<A>> + Unpin + Send,
    ) -> std::result::Result<(), TaskSinkError<Error>> {
        let mut chunks = tasks.ready_chunks(crate::storage::INSERT_CHUNK);
        while let Some(chunk) = chunks.next().await {
            let encoded = chunk
                .into_iter()
                .map(|t| self.encode(t))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            self.insert(encoded)
                .await
                .map_err(TaskSinkError::PushError)?;
        }
        Ok(())
    }
}

// --- Reading and admin -----------------------------------------------------------------

/// apalis's status of an engine state (see the module doc).
pub fn apalis_status(state: JobState) -> Status {
    match state {
        JobState::Pending => Status::Pending,
        JobState::Running => Status::Running,
        JobState::Succeeded => Status::Done,
        JobState::Retrying => Status::Failed,
        JobState::Failed | JobState::Cancelled => Status::Killed,
    }
}

/// The engine states an apalis status stands for.
fn states_of(status: &Status) -> &'static [&'static str] {
    match status {
        Status::Pending => &["pending"],
        Status::Running => &["running"],
        Status::Done => &["succeeded"],
        Status::Failed => &["retrying"],
        Status::Killed => &["failed", "cancelled"],
        // `Queued` (claimed, not started) is held in a worker's memory, not in a state.
        _ => &[],
    }
}

fn job_id(task_id: &TaskId) -> Option<i64> {
    match task_id {
        TaskId::Int(n) => i64::try_from(*n).ok(),
        TaskId::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn secs(ms: i64) -> u64 {
    u64::try_from(ms / 1000).unwrap_or(0)
}

const TASK_COLUMNS: &str = "id, kind, args, status, attempt, max_attempts, priority, run_at, \
                            finished_at, locked_by, started_at, unique_key";

fn task_of_row<T>(row: &sqlx::any::AnyRow, args: T) -> Result<Task<T>> {
    let status: String = row.try_get(3)?;
    let state: JobState = status
        .parse()
        .map_err(|e: String| Error::Database(sqlx::Error::Protocol(e)))?;
    let id: i64 = row.try_get(0)?;
    let kind: String = row.try_get(1)?;
    let attempt: i32 = row.try_get(4)?;
    let max_attempts: i32 = row.try_get(5)?;
    let priority: i32 = row.try_get(6)?;
    let run_at: i64 = row.try_get(7)?;
    let finished_at: Option<i64> = row.try_get(8)?;
    let locked_by: Option<String> = row.try_get(9)?;
    let started_at: Option<i64> = row.try_get(10)?;
    let unique_key: Option<String> = row.try_get(11)?;
    let mut builder = TaskBuilder::new(args)
        .task_id(TaskId::Int(u64::try_from(id).unwrap_or(0)))
        .attempt(usize::try_from(attempt).unwrap_or(0))
        .max_attempts(usize::try_from(max_attempts).unwrap_or(1))
        .status(apalis_status(state))
        .run_at_timestamp(secs(run_at))
        .done_at(finished_at.map(secs))
        .lock_at(started_at.filter(|_| state == JobState::Running).map(secs))
        .lock_by(locked_by)
        .queue(Queue::from(kind));
    if priority <= 0 {
        builder = builder.priority(usize::try_from(-i64::from(priority)).unwrap_or(0));
    }
    if let Some(key) = unique_key {
        builder = builder.idempotency_key(key);
    }
    Ok(builder.build())
}

async fn list(engine: &Engine, queue: Option<&str>, filter: &Filter) -> Result<Vec<Task<String>>> {
    let states: Vec<&str> = match &filter.status {
        Some(status) => states_of(status).to_vec(),
        None => JobState::ALL.iter().map(|s| s.as_str()).collect(),
    };
    if states.is_empty() {
        return Ok(Vec::new());
    }
    let list = states
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let size = i64::from(filter.page_size.unwrap_or(10).clamp(1, 500));
    let offset = i64::from(filter.page.max(1) - 1) * size;
    // Only finished jobs are in `jobs_kind_status` (engine migration 0007): saying so lets
    // the planner read a kind's finished jobs from it, newest first.
    let finished = if states
        .iter()
        .all(|s| s.parse::<JobState>().is_ok_and(JobState::is_final))
    {
        " AND finished_at IS NOT NULL"
    } else {
        ""
    };
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM jobs WHERE ($1 IS NULL OR kind = $1) AND status IN ({list}){finished} \
         ORDER BY id DESC LIMIT $2 OFFSET $3"
    )))
    .bind(queue)
    .bind(size)
    .bind(offset)
    .fetch_all(engine.db())
    .await?;
    rows.iter()
        .map(|r| {
            let args: String = r.try_get(2)?;
            task_of_row(r, args)
        })
        .collect()
}

impl<A> FetchById for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    async fn fetch_by_id(&mut self, task_id: &TaskId) -> Result<Option<Task<A>>> {
        let Some(id) = job_id(task_id) else {
            return Ok(None);
        };
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM jobs WHERE id = $1 AND kind = $2"
        )))
        .bind(id)
        .bind(&*self.config.queue)
        .fetch_optional(self.core.engine.db())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let args: String = row.try_get(2)?;
        let args: A = serde_json::from_str(&args)?;
        task_of_row(&row, args).map(Some)
    }
}

impl<A> ListTasks for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    async fn list_tasks(&self, filter: &Filter) -> Result<Vec<Task<String>>> {
        list(&self.core.engine, Some(&self.config.queue), filter).await
    }
}

impl<A> ListAllTasks for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    async fn list_all_tasks(&self, filter: &Filter) -> Result<Vec<Task<String>>> {
        list(&self.core.engine, None, filter).await
    }
}

fn statistics(counts: &std::collections::BTreeMap<&'static str, i64>) -> Vec<Statistic> {
    let mut stats: Vec<Statistic> = counts
        .iter()
        .enumerate()
        .map(|(i, (state, n))| Statistic {
            title: format!("{} jobs", state.to_uppercase()),
            stat_type: StatType::Number,
            value: n.to_string(),
            priority: Some(i as u64),
        })
        .collect();
    stats.push(Statistic {
        title: "TOTAL jobs".to_owned(),
        stat_type: StatType::Number,
        value: counts.values().sum::<i64>().to_string(),
        priority: Some(100),
    });
    stats
}

impl<A> Metrics for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    async fn global(&self) -> Result<Vec<Statistic>> {
        let engine = &self.core.engine;
        let all = crate::admin::stats(engine.db(), engine.clock().now_ms()).await?;
        let mut counts: std::collections::BTreeMap<&'static str, i64> =
            JobState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for kind in all {
            for (state, n) in kind.counts {
                *counts.entry(state).or_default() += n;
            }
        }
        Ok(statistics(&counts))
    }

    async fn fetch_by_queue(&self) -> Result<Vec<Statistic>> {
        let engine = &self.core.engine;
        let all = crate::admin::stats(engine.db(), engine.clock().now_ms()).await?;
        let counts = all
            .into_iter()
            .find(|k| *k.kind == *self.config.queue)
            .map(|k| k.counts)
            .unwrap_or_else(|| JobState::ALL.iter().map(|s| (s.as_str(), 0)).collect());
        Ok(statistics(&counts))
    }
}

async fn workers(engine: &Engine, queue: Option<&str>) -> Result<Vec<RunningWorker>> {
    let ttl = crate::clock::duration_ms(engine.workers().lease_ttl);
    let rows = sqlx::query(
        "SELECT locked_by, kind, MIN(started_at), MAX(lease_expires_at) FROM jobs \
         WHERE status = 'running' AND ($1 IS NULL OR kind = $1) GROUP BY locked_by, kind \
         ORDER BY locked_by, kind",
    )
    .bind(queue)
    .fetch_all(engine.db())
    .await?;
    rows.iter()
        .map(|r| {
            let started: Option<i64> = r.try_get(2)?;
            let lease: Option<i64> = r.try_get(3)?;
            Ok(RunningWorker {
                id: r.try_get(0)?,
                queue: r.try_get(1)?,
                backend: "veza-jobs".to_owned(),
                started_at: secs(started.unwrap_or(0)),
                last_heartbeat: secs(lease.unwrap_or(0) - ttl),
                layers: String::new(),
            })
        })
        .collect()
}

impl<A> ListWorkers for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    /// The workers that hold a job of this queue now (the engine keeps no roster of idle
    /// workers: a worker is known by its leases).
    async fn list_workers(&self) -> Result<Vec<RunningWorker>> {
        workers(&self.core.engine, Some(&self.config.queue)).await
    }

    async fn list_all_workers(&self) -> Result<Vec<RunningWorker>> {
        workers(&self.core.engine, None).await
    }
}

impl<A> ListQueues for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let engine = &self.core.engine;
        let now = engine.clock().now_ms();
        let stats = crate::admin::stats(engine.db(), now).await?;
        let running = workers(engine, None).await?;
        const DAY: i64 = 86_400_000;
        let activity = sqlx::query(
            "SELECT kind, (finished_at / 86400000) AS day, COUNT(*) FROM job_attempts_all \
             WHERE finished_at >= $1 GROUP BY kind, day",
        )
        .bind(now - 7 * DAY)
        .fetch_all(engine.db())
        .await?;
        let today = now / DAY;
        Ok(stats
            .into_iter()
            .map(|k| {
                let mut days = vec![0usize; 7];
                for row in &activity {
                    let kind: String = row.try_get(0).unwrap_or_default();
                    let day: i64 = row.try_get(1).unwrap_or(0);
                    let n: i64 = row.try_get(2).unwrap_or(0);
                    if kind == k.kind && (0..7).contains(&(today - day)) {
                        days[(6 - (today - day)) as usize] = usize::try_from(n).unwrap_or(0);
                    }
                }
                QueueInfo {
                    workers: running
                        .iter()
                        .filter(|w| w.queue == k.kind)
                        .map(|w| w.id.clone())
                        .collect(),
                    stats: statistics(&k.counts),
                    name: k.kind,
                    activity: days,
                }
            })
            .collect())
    }
}

impl<A> ResumeById for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    /// Admin retry: a `failed` or `cancelled` job goes back to `pending` with fresh
    /// attempts (audited as `apalis`). False when the job is not in one of those states.
    async fn resume_by_id(&mut self, id: TaskId) -> Result<bool> {
        let Some(id) = job_id(&id) else {
            return Ok(false);
        };
        match self
            .core
            .engine
            .retry(id, &crate::Actor::named("apalis"))
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::InvalidJobState { .. } | Error::JobNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl<A> Reschedule for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    /// Moves a waiting (`pending` or `retrying`) job's next run to `wait` from now.
    async fn reschedule(&mut self, task: Task<A>, wait: Duration) -> Result<()> {
        let id = task
            .task_id()
            .and_then(job_id)
            .ok_or(Error::JobNotFound(0))?;
        let engine = &self.core.engine;
        let run_at = engine
            .clock()
            .now_ms()
            .saturating_add(crate::clock::duration_ms(wait));
        crate::storage::reschedule(engine.db(), id, run_at).await
    }
}

impl<A> Update for JobStorage<A>
where
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Replaces a waiting job's args, priority, attempts and run time.
    async fn update(&mut self, task: Task<A>) -> Result<()> {
        let id = task
            .task_id()
            .and_then(job_id)
            .ok_or(Error::JobNotFound(0))?;
        let args = serde_json::to_string(&task.args)?;
        let engine = &self.core.engine;
        crate::storage::update_waiting(
            engine.db(),
            id,
            &args,
            task.priority()
                .map(|p| -i32::try_from(p).unwrap_or(i32::MAX)),
            task.max_attempts()
                .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            task.run_at()
                .map(|s| i64::try_from(s).unwrap_or(0).saturating_mul(1000)),
        )
        .await
    }
}

impl<A> Vacuum for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    /// Deletes every finished job of this queue.
    async fn vacuum(&mut self) -> Result<usize> {
        self.vacuum_before(Duration::ZERO).await
    }

    /// Deletes the finished jobs of this queue that ended longer ago than `duration`.
    async fn vacuum_before(&mut self, duration: Duration) -> Result<usize> {
        let engine = &self.core.engine;
        let before = engine.clock().now_ms() - crate::clock::duration_ms(duration) + 1;
        let n = crate::storage::vacuum(engine.db(), &self.config.queue, before).await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// How often [`WaitForCompletion::wait_for`] looks again.
const WAIT_POLL: Duration = Duration::from_millis(100);

async fn finished(engine: &Engine, ids: &[i64]) -> Result<Vec<TaskResult<Outcome>>> {
    let mut out = Vec::new();
    for id in ids {
        let row = sqlx::query(
            "SELECT status, attempt, last_error, note FROM jobs WHERE id = $1 \
             AND status IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(id)
        .fetch_optional(engine.db())
        .await?;
        let Some(row) = row else { continue };
        let status: String = row.try_get(0)?;
        let state: JobState = status
            .parse()
            .map_err(|e: String| Error::Database(sqlx::Error::Protocol(e)))?;
        let attempt: i32 = row.try_get(1)?;
        let last_error: Option<String> = row.try_get(2)?;
        let note: Option<String> = row.try_get(3)?;
        out.push(TaskResult {
            task_id: TaskId::Int(u64::try_from(*id).unwrap_or(0)),
            attempt: usize::try_from(attempt).unwrap_or(0),
            status: apalis_status(state),
            result: match state {
                JobState::Succeeded => Ok(match note {
                    Some(reason) => Outcome::Skipped { reason },
                    None => Outcome::Succeeded,
                }),
                JobState::Cancelled => Err("cancelled".to_owned()),
                _ => Err(last_error.unwrap_or_else(|| "failed".to_owned())),
            },
        });
    }
    Ok(out)
}

impl<A> WaitForCompletion<Outcome> for JobStorage<A>
where
    A: DeserializeOwned + Send + 'static,
{
    type ResultStream = BoxStream<'static, Result<TaskResult<Outcome>>>;

    /// Yields each job's result once it has finished for good (succeeded, failed or
    /// cancelled), in the order they finish; ids that are not jobs are never yielded.
    fn wait_for(&mut self, task_ids: impl IntoIterator<Item = TaskId>) -> Self::ResultStream {
        let engine = self.core.engine.clone();
        let waiting: Vec<i64> = task_ids.into_iter().filter_map(|t| job_id(&t)).collect();
        futures::stream::unfold(
            (engine, waiting, true),
            |(engine, mut waiting, first)| async move {
                if waiting.is_empty() {
                    return None;
                }
                if !first {
                    tokio::time::sleep(WAIT_POLL).await;
                }
                match finished(&engine, &waiting).await {
                    Ok(done) => {
                        waiting.retain(|id| !done.iter().any(|r| job_id(&r.task_id) == Some(*id)));
                        let items: Vec<Result<TaskResult<Outcome>>> =
                            done.into_iter().map(Ok).collect();
                        Some((futures::stream::iter(items), (engine, waiting, false)))
                    }
                    Err(e) => Some((
                        futures::stream::iter(vec![Err(e)]),
                        (engine, Vec::new(), false),
                    )),
                }
            },
        )
        .flatten()
        .boxed()
    }

    /// The results of those of `task_ids` that have finished for good.
    async fn check_status(
        &mut self,
        task_ids: impl IntoIterator<Item = TaskId> + Send,
    ) -> Result<Vec<TaskResult<Outcome>>> {
        let ids: Vec<i64> = task_ids.into_iter().filter_map(|t| job_id(&t)).collect();
        finished(&self.core.engine, &ids).await
    }
}
