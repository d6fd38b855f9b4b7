//! The job kinds a process knows: for each, its policy, its discard hook and, when this
//! process runs it, its handler — an apalis service that [`crate::worker::WorkerPool`]
//! runs in an apalis `Worker` under apalis's `Monitor`.
//!
//! ```
//! use engine::{Job, JobContext, JobError, Outcome, Registry};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Ping {
//!     to: String,
//! }
//! impl Job for Ping {
//!     const KIND: &'static str = "ping";
//! }
//!
//! async fn ping(args: Ping, ctx: JobContext) -> Result<Outcome, JobError> {
//!     tracing::info!(job = ctx.job_id, to = %args.to, "ping");
//!     Ok(Outcome::Succeeded)
//! }
//!
//! let mut registry = Registry::new();
//! registry.register::<Ping, _, _>(ping).concurrency(8);
//! ```

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use apalis_core::error::{AbortError, BoxDynError, RetryAfterError};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_fn::{TaskFn, task_fn};
use apalis_core::task::task_id::TaskId;
use futures::future::BoxFuture;
use tower_service::Service;

use crate::context::JobContext;
use crate::db::DbConn;
use crate::engine::Engine;
use crate::job::{Job, JobError, JobPolicy, Outcome, error_chain};
use crate::worker::WorkerSet;

/// Why a job ended for good without its handler finishing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscardReason {
    /// Its last attempt failed (an error, a timeout, a panic, a lost worker) or a permanent
    /// error ended it.
    Failed(String),
    /// An admin cancelled it while it waited.
    Cancelled,
}

/// What a discard hook is told.
#[derive(Debug, Clone)]
pub struct Discarded<J> {
    /// The job.
    pub job_id: i64,
    /// Its args.
    pub args: J,
    /// Why it ended.
    pub reason: DiscardReason,
    /// When (the engine's clock), for the domain row's transition.
    pub now: crate::Millis,
    /// Who ended it, for the audit trail: `job:{id}`, or the admin who cancelled it.
    pub actor: crate::Actor,
}

/// A kind's discard hook, type-erased: `(conn, job id, args JSON, reason, now, actor)`.
type DiscardFn = Arc<
    dyn for<'c> Fn(
            &'c mut DbConn,
            i64,
            &'c str,
            DiscardReason,
            crate::Millis,
            crate::Actor,
        ) -> BoxFuture<'c, Result<(), crate::Error>>
        + Send
        + Sync,
>;

/// Runs args (as JSON) through a kind's handler outside the queue.
type PerformFn = Arc<
    dyn Fn(Engine, String, u32, u32) -> BoxFuture<'static, Result<Outcome, JobError>> + Send + Sync,
>;

/// Adds a kind's apalis worker to a set of workers.
type WorkerFn = Arc<dyn Fn(WorkerSet) -> WorkerSet + Send + Sync>;

/// A registered kind.
#[derive(Clone)]
pub struct KindEntry {
    /// Its name.
    pub kind: &'static str,
    /// Its policy (the kind's default, or the configuration's).
    pub policy: JobPolicy,
    discard: Option<DiscardFn>,
    handler: Option<(WorkerFn, PerformFn)>,
}

impl KindEntry {
    /// True when this process runs the kind's jobs (it has a handler here).
    pub fn runs_here(&self) -> bool {
        self.handler.is_some()
    }

    /// Runs the kind's discard hook, if it has one, on `conn` (the transaction that ends
    /// the job), at `now`, for `actor`.
    pub async fn discard(
        &self,
        conn: &mut DbConn,
        job_id: i64,
        args: &str,
        reason: DiscardReason,
        now: crate::Millis,
        actor: &crate::Actor,
    ) -> crate::Result<()> {
        match &self.discard {
            Some(hook) => hook(conn, job_id, args, reason, now, actor.clone()).await,
            None => Ok(()),
        }
    }

    /// True when the kind has a discard hook.
    pub fn has_discard_hook(&self) -> bool {
        self.discard.is_some()
    }

    pub(crate) fn add_worker(&self, set: WorkerSet) -> WorkerSet {
        match &self.handler {
            Some((add, _)) => add(set),
            None => set,
        }
    }

    /// Runs `args` (JSON) through the handler in-process, outside the queue, as attempt
    /// `attempt` of `max_attempts`, and classifies the result as the runtime would.
    pub fn perform(
        &self,
        engine: Engine,
        args: String,
        attempt: u32,
        max_attempts: u32,
    ) -> Option<BoxFuture<'static, Result<Outcome, JobError>>> {
        self.handler
            .as_ref()
            .map(|(_, perform)| perform(engine, args, attempt, max_attempts))
    }
}

/// The set of kinds a process knows. Registering a kind twice panics at start-up.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, KindEntry>,
}

/// Sets a registered kind's policy and hooks.
pub struct KindBuilder<'a, J> {
    entry: &'a mut KindEntry,
    _job: std::marker::PhantomData<J>,
}

impl<J: Job> KindBuilder<'_, J> {
    /// Replaces the kind's policy (from configuration): retries, timeout, concurrency.
    pub fn policy(self, policy: JobPolicy) -> Self {
        self.entry.policy = policy;
        self
    }

    /// How many jobs of this kind one process runs at once.
    pub fn concurrency(self, concurrency: usize) -> Self {
        self.entry.policy.concurrency = concurrency.max(1);
        self
    }

    /// A hook that runs in the same transaction as the engine's final failure of a job of
    /// this kind (its last attempt failed, timed out, panicked or lost its worker; a
    /// permanent error) or its cancellation: the place to move the domain row the job owns
    /// out of its in-progress state, so that no row is left `running` by a job that ended.
    ///
    /// It runs wherever the job ends: in the worker's acknowledgement, in a rescuer's
    /// lease-expiry, in an admin's cancel. A hook error rolls that change back; it is
    /// retried. Args that no longer decode skip the hook (logged).
    pub fn on_discard<F>(self, hook: F) -> Self
    where
        F: for<'c> Fn(&'c mut DbConn, Discarded<J>) -> BoxFuture<'c, Result<(), crate::Error>>
            + Send
            + Sync
            + 'static,
    {
        let hook = Arc::new(hook);
        self.entry.discard = Some(Arc::new(move |conn, job_id, args, reason, now, actor| {
            let hook = Arc::clone(&hook);
            match serde_json::from_str::<J>(args) {
                Ok(args) => hook(
                    conn,
                    Discarded {
                        job_id,
                        args,
                        reason,
                        now,
                        actor,
                    },
                ),
                Err(e) => {
                    tracing::error!(job = job_id, kind = J::KIND, error = %e, "discard hook skipped: args do not decode");
                    Box::pin(async { Ok(()) })
                }
            }
        }));
        self
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `J` with `handler`, an async function of the args and a [`JobContext`].
    ///
    /// # Panics
    /// If a kind of that name is registered already: two handlers for one stored name is a
    /// programming error that must stop the process before it takes work.
    pub fn register<J, F, Fut>(&mut self, handler: F) -> KindBuilder<'_, J>
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, JobError>> + Send + 'static,
    {
        self.register_fn::<J, _, JobContext>(handler)
    }

    /// Registers `J` with any apalis handler: an async function of the args and apalis
    /// extractors (`JobContext`, `Attempt`, `TaskId`, `Data<T>`, `WorkerContext`, …)
    /// returning `Result<T, E>` (an [`Outcome`] and a [`JobError`] are read as such; any
    /// other `Ok` succeeds; any other error is transient, apalis's `AbortError` permanent).
    ///
    /// # Panics
    /// If a kind of that name is registered already.
    pub fn register_fn<J, H, A>(&mut self, handler: H) -> KindBuilder<'_, J>
    where
        J: Job,
        TaskFn<H, J, A>: Service<Task<J>, Error = BoxDynError> + Clone + Send + Sync + 'static,
        <TaskFn<H, J, A> as Service<Task<J>>>::Future: Send + 'static,
        <TaskFn<H, J, A> as Service<Task<J>>>::Response: Send + Sync + 'static,
        H: Send + Sync + 'static,
        A: Send + Sync + 'static,
    {
        let service = task_fn::<H, J, A>(handler);
        let add: WorkerFn = {
            let service = service.clone();
            Arc::new(move |set: WorkerSet| set.add::<J, _>(service.clone()))
        };
        let perform: PerformFn = Arc::new(move |engine, args, attempt, max_attempts| {
            let mut service = service.clone();
            Box::pin(async move {
                let args: J = serde_json::from_str(&args).map_err(|e| {
                    JobError::Permanent(format!("args do not decode as {}: {e}", J::KIND))
                })?;
                let ctx = JobContext::unleased(engine, J::KIND, attempt, max_attempts);
                let task = TaskBuilder::new(args)
                    .task_id(TaskId::Int(0))
                    .attempt(attempt.saturating_sub(1) as usize)
                    .data(ctx)
                    .build();
                futures::future::poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(|e| classify_error(&e))?;
                match service.call(task).await {
                    Ok(response) => Ok(classify_response(&response)),
                    Err(e) => Err(classify_error(&e)),
                }
            })
        });
        self.insert(KindEntry {
            kind: J::KIND,
            policy: J::POLICY,
            discard: None,
            handler: Some((add, perform)),
        })
    }

    /// Declares `J` without a handler: its policy and discard hook are known here (enqueue
    /// stores the policy on the job; an admin cancel runs the hook) but this process does
    /// not run its jobs (say, the Stripe jobs in a process without a Stripe key).
    ///
    /// # Panics
    /// If a kind of that name is registered already.
    pub fn declare<J: Job>(&mut self) -> KindBuilder<'_, J> {
        self.insert(KindEntry {
            kind: J::KIND,
            policy: J::POLICY,
            discard: None,
            handler: None,
        })
    }

    fn insert<J: Job>(&mut self, entry: KindEntry) -> KindBuilder<'_, J> {
        let kind = entry.kind;
        if self.kinds.insert(kind, entry).is_some() {
            panic!("job kind {kind:?} is registered twice");
        }
        KindBuilder {
            entry: self.kinds.get_mut(kind).expect("just inserted"),
            _job: std::marker::PhantomData,
        }
    }

    /// Overrides how many jobs of `kind` one process runs at once.
    pub fn set_concurrency(&mut self, kind: &str, concurrency: usize) {
        if let Some(entry) = self.kinds.get_mut(kind) {
            entry.policy.concurrency = concurrency.max(1);
        }
    }

    /// The entry of `kind`.
    pub fn get(&self, kind: &str) -> Option<&KindEntry> {
        self.kinds.get(kind)
    }

    /// Every known kind, by name (declared ones included).
    pub fn kinds(&self) -> impl Iterator<Item = &KindEntry> {
        self.kinds.values()
    }

    /// True when this process runs `kind`'s jobs.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.get(kind).is_some_and(KindEntry::runs_here)
    }
}

/// What a handler's `Ok` value means: an [`Outcome`] as such, anything else success.
pub(crate) fn classify_response<R: Any>(response: &R) -> Outcome {
    (response as &dyn Any)
        .downcast_ref::<Outcome>()
        .cloned()
        .unwrap_or(Outcome::Succeeded)
}

/// What a handler's (or a layer's) error means: a [`JobError`] as such; apalis's
/// `AbortError` is permanent and its `RetryAfterError` waits its duration (apalis itself
/// ignores that duration); anything else is transient.
pub(crate) fn classify_error(error: &BoxDynError) -> JobError {
    if let Some(e) = error.downcast_ref::<JobError>() {
        return e.clone();
    }
    if let Some(e) = error.downcast_ref::<AbortError>() {
        return JobError::Permanent(
            std::error::Error::source(e).map_or_else(|| e.to_string(), error_chain),
        );
    }
    if let Some(e) = error.downcast_ref::<RetryAfterError>() {
        return JobError::RetryAfter {
            after: e.get_duration(),
            error: std::error::Error::source(e).map_or_else(|| e.to_string(), error_chain),
        };
    }
    JobError::Transient(error_chain(error.as_ref()))
}
