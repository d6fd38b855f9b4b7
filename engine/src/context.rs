//! [`JobContext`]: what a handler gets besides its args — which job and attempt this is,
//! the engine, a cancellation signal for a lost lease, and the fence a handler checks
//! inside its own transaction before it commits domain writes.
//!
//! It is an apalis extractor (`FromRequest`): a handler is an ordinary apalis handler,
//! `async fn(args: MyArgs, ctx: JobContext) -> Result<Outcome, JobError>`, and may take
//! apalis's own extractors (`Attempt`, `TaskId`, `Data<T>`, `WorkerContext`) beside it.

use std::sync::Arc;

use apalis_core::task::Task;
use apalis_core::task::data::MissingDataError;
use apalis_core::task::from_request::FromRequest;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Millis};
use crate::db::{Db, DbConn};
use crate::engine::Engine;
use crate::job::JobError;

/// Which job and attempt a handler runs, and the engine.
#[derive(Clone)]
pub struct JobContext {
    /// The job's id: the root of every idempotency key the handler derives.
    pub job_id: i64,
    /// The kind.
    pub kind: Arc<str>,
    /// This attempt, 1-based.
    pub attempt: u32,
    /// Attempts in all; this is the last one when `attempt >= max_attempts`.
    pub max_attempts: u32,
    /// The worker running it.
    pub worker_id: Arc<str>,
    /// The engine: database, clock, enqueue.
    pub engine: Engine,
    lease: Lease,
    /// The attempt's durable steps ([`crate::steps`]).
    steps: crate::steps::SharedSteps,
}

/// How the attempt holds its job.
#[derive(Clone)]
enum Lease {
    /// Claimed from the queue: fenced by `(id, attempt, worker)` and an unexpired lease;
    /// the token fires when a renewal finds the lease gone.
    Held(CancellationToken),
    /// Run outside the queue ([`crate::testing::perform_job`]): there is no lease to lose.
    Unleased,
}

impl JobContext {
    /// The context of a claimed attempt; `lost` fires when its lease is found gone.
    pub(crate) fn claimed(
        engine: Engine,
        kind: Arc<str>,
        job_id: i64,
        attempt: u32,
        max_attempts: u32,
        lost: CancellationToken,
    ) -> Self {
        Self {
            job_id,
            kind,
            attempt,
            max_attempts,
            worker_id: Arc::clone(&engine.workers().worker_id),
            engine,
            lease: Lease::Held(lost),
            steps: Default::default(),
        }
    }

    /// A context for running a handler outside the queue (tests, benches): job id 0, the
    /// given attempt, no lease (the fence always passes).
    pub fn unleased(engine: Engine, kind: &str, attempt: u32, max_attempts: u32) -> Self {
        Self {
            job_id: 0,
            kind: Arc::from(kind),
            attempt,
            max_attempts,
            worker_id: Arc::from("test"),
            engine,
            lease: Lease::Unleased,
            steps: Default::default(),
        }
    }

    /// The job database.
    pub fn db(&self) -> &Db {
        self.engine.db()
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Clock {
        self.engine.clock()
    }

    /// Now, from the engine's clock.
    pub fn now_ms(&self) -> Millis {
        self.engine.clock().now_ms()
    }

    /// The actor name recorded in audit rows written by this job: `job:{id}`.
    pub fn actor(&self) -> String {
        format!("job:{}", self.job_id)
    }

    /// Whether this attempt holds a job of the queue (not [`JobContext::unleased`]).
    pub(crate) fn is_leased(&self) -> bool {
        matches!(self.lease, Lease::Held(_))
    }

    pub(crate) fn steps(&self) -> &crate::steps::SharedSteps {
        &self.steps
    }

    /// True once this attempt has lost its lease: stop, write nothing more.
    pub fn is_cancelled(&self) -> bool {
        match &self.lease {
            Lease::Held(token) => token.is_cancelled(),
            Lease::Unleased => false,
        }
    }

    /// Resolves when this attempt loses its lease (never, outside the queue). The runtime
    /// also drops the handler's future then; this is for handlers that hand work to a
    /// blocking thread and want to stop it.
    pub async fn cancelled(&self) {
        match &self.lease {
            Lease::Held(token) => token.cancelled().await,
            Lease::Unleased => std::future::pending().await,
        }
    }

    /// Checks, inside the caller's transaction `conn`, that this attempt still holds its
    /// job (same attempt, same worker, lease unexpired) and locks the job row until that
    /// transaction ends, so no other worker can take the job over before the caller commits.
    /// Call it in every transaction that writes domain rows, before commit: a worker cut off
    /// from the database, or paused past its lease, then fails with
    /// [`JobError::LeaseLost`] instead of writing over the attempt that replaced it.
    pub async fn fence(&self, conn: &mut DbConn) -> Result<(), JobError> {
        if matches!(self.lease, Lease::Unleased) {
            return Ok(());
        }
        let lease_now = self.clock().lease_now(self.engine.backend());
        let held =
            crate::storage::fence(conn, self.job_id, self.attempt, &self.worker_id, lease_now)
                .await
                .map_err(|e| JobError::transient(crate::job::error_chain(&e)))?;
        if held {
            Ok(())
        } else {
            Err(JobError::LeaseLost {
                job_id: self.job_id,
            })
        }
    }
}

impl<Args: Sync> FromRequest<Task<Args>> for JobContext {
    type Error = MissingDataError;

    async fn from_request(task: &Task<Args>) -> Result<Self, Self::Error> {
        task.data().get_checked::<JobContext>().cloned()
    }
}
