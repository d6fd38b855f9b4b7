//! The job kinds a process knows: their policies and type-erased handlers.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::clock::{Clock, Millis};
use crate::db::Db;
use crate::engine::Engine;
use crate::job::{Job, JobError, JobPolicy, Outcome};

/// What a handler gets besides its args: which job and attempt this is, and the engine.
#[derive(Clone)]
pub struct JobContext {
    /// The job's id: the root of every idempotency key the handler derives.
    pub job_id: i64,
    /// The kind.
    pub kind: &'static str,
    /// This attempt, 1-based.
    pub attempt: u32,
    /// Attempts in all; this is the last one when `attempt >= max_attempts`.
    pub max_attempts: u32,
    /// The worker running it.
    pub worker_id: Arc<str>,
    /// The engine: database, clock, enqueue.
    pub engine: Engine,
}

impl JobContext {
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
}

/// The future a handler returns.
pub type HandlerFuture = BoxFuture<'static, Result<Outcome, JobError>>;

type ErasedHandler =
    Arc<dyn Fn(&str, JobContext) -> Result<HandlerFuture, serde_json::Error> + Send + Sync>;

/// A registered kind.
#[derive(Clone)]
pub struct KindEntry {
    /// Its name.
    pub kind: &'static str,
    /// Its policy (possibly adjusted by configuration).
    pub policy: JobPolicy,
    handler: ErasedHandler,
}

impl KindEntry {
    /// Decodes `args` and starts the handler. A decode error is returned, not panicked on:
    /// the worker fails that one job and goes on.
    pub fn start(&self, args: &str, ctx: JobContext) -> Result<HandlerFuture, serde_json::Error> {
        (self.handler)(args, ctx)
    }
}

/// The set of kinds a process runs. Registering a kind twice panics at start-up.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, KindEntry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `J` with its handler.
    ///
    /// # Panics
    /// If a kind of that name is registered already: two handlers for one stored name is a
    /// programming error that must stop the process before it takes work.
    pub fn register<J, F, Fut>(&mut self, handler: F) -> &mut Self
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, JobError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |args: &str, ctx: JobContext| {
            let args: J = serde_json::from_str(args)?;
            let handler = Arc::clone(&handler);
            Ok(Box::pin(async move { handler(args, ctx).await }) as HandlerFuture)
        });
        let entry = KindEntry {
            kind: J::KIND,
            policy: J::POLICY,
            handler: erased,
        };
        if self.kinds.insert(J::KIND, entry).is_some() {
            panic!("job kind {:?} is registered twice", J::KIND);
        }
        self
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

    /// Every registered kind, by name.
    pub fn kinds(&self) -> impl Iterator<Item = &KindEntry> {
        self.kinds.values()
    }

    /// True when `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }
}
