//! The runtime: every registered kind runs as an apalis `Worker` over [`JobStorage`], the
//! engine's storage as an apalis backend, all under one apalis `Monitor`.
//!
//! ```text
//!  Monitor ─▶ Worker(kind) ─poll_next─▶ JobStorage ◀── buffer ── driver(kind) ◀─▶ database
//!                 │ attempt layer (timeout, panic, lease, cut-off) ─ finish ─▶ acks ─┘
//!  rescuer: ends other processes' expired leases (any kind)   listener: LISTEN/NOTIFY
//! ```
//!
//! [`WorkerPool::shutdown`] stops the workers from taking jobs, lets running attempts
//! finish until a cut-off earlier than the caller's deadline, then stops the rest and
//! hands them back (`released`, the attempt given back) after every finished attempt's
//! result has been written: a job whose success is recorded is never handed back, and the
//! hand-back itself has time to commit before the deadline.

pub mod attempt;
pub mod backend;
#[doc(hidden)]
pub mod driver;
pub mod rescue;

use std::sync::Arc;
use std::time::Duration;

use apalis_core::error::BoxDynError;
use apalis_core::monitor::Monitor;
use apalis_core::monitor::context::MonitorContext;
use apalis_core::task::Task;
use apalis_core::worker::builder::WorkerBuilder;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_service::Service;

pub use backend::{JobStorage, Native, StorageConfig, apalis_status};
use driver::Core;

use crate::engine::Engine;
use crate::job::Job;

/// Ends every expired lease of any kind (see [`rescue::rescue_expired`]); returns how many.
pub async fn rescue_expired(engine: &Engine) -> crate::Result<usize> {
    rescue::rescue_expired(engine, None, &[]).await
}

/// The apalis workers of one pool, being assembled.
pub struct WorkerSet {
    engine: Engine,
    monitor: Monitor,
    cores: Vec<Arc<Core>>,
}

impl WorkerSet {
    fn new(engine: &Engine) -> Self {
        Self {
            engine: engine.clone(),
            monitor: Monitor::new(),
            cores: Vec::new(),
        }
    }

    /// Adds the worker of kind `J`, running `service` (the kind's apalis handler).
    pub(crate) fn add<J, S>(mut self, service: S) -> Self
    where
        J: Job,
        S: Service<Task<J>, Error = BoxDynError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Response: Send + Sync + 'static,
    {
        let storage = JobStorage::<J>::for_job(&self.engine);
        self.cores.push(storage.core());
        let name = format!("{}@{}", J::KIND, self.engine.workers().worker_id);
        self.monitor = self.monitor.register(move |_restarts| {
            WorkerBuilder::new(name.as_str())
                .backend(storage.clone())
                .build(service.clone())
        });
        self
    }
}

/// The running workers of one process.
pub struct WorkerPool {
    engine: Engine,
    cores: Vec<Arc<Core>>,
    monitor: JoinHandle<()>,
    context: MonitorContext,
    rescuer: JoinHandle<()>,
}

impl WorkerPool {
    /// Starts an apalis worker for every kind this process runs, under one `Monitor`, and
    /// the rescuer of expired leases.
    pub fn start(engine: &Engine) -> Self {
        let mut set = WorkerSet::new(engine);
        for entry in engine.registry().kinds() {
            set = entry.add_worker(set);
        }
        let WorkerSet { monitor, cores, .. } = set;
        for core in &cores {
            core.ensure_started();
        }
        engine.start_listener();
        let context = monitor.context();
        let monitor = tokio::spawn(async move {
            if let Err(e) = monitor.run().await {
                tracing::error!(error = %e, "a worker stopped with an error");
            }
        });
        let rescuer = tokio::spawn(rescue_loop(engine.clone(), cores.clone()));
        tracing::info!(worker = %engine.workers().worker_id, kinds = cores.len(), "workers started");
        Self {
            engine: engine.clone(),
            cores,
            monitor,
            context,
            rescuer,
        }
    }

    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    pub(crate) fn cores(&self) -> Vec<Arc<Core>> {
        self.cores.clone()
    }

    /// True while every worker, its driver, the rescuer and (on Postgres) the listener run.
    pub fn is_alive(&self) -> bool {
        !self.monitor.is_finished()
            && !self.rescuer.is_finished()
            && self.cores.iter().all(|c| c.driver_alive())
            && self.engine.listener_alive()
    }

    /// Stops taking work, lets running attempts finish until a cut-off before `deadline`,
    /// then stops the rest and hands them back (see the module doc). Never loses a job:
    /// whatever could not be written (database down) is rescued when its lease runs out.
    pub async fn shutdown(self, deadline: Instant) {
        let budget = deadline.saturating_duration_since(Instant::now());
        // The hand-back needs a moment of its own: a fifth of the budget, 200 ms to 3 s.
        let margin = (budget / 5)
            .clamp(Duration::from_millis(200), Duration::from_secs(3))
            .min(budget / 2);
        let cut_off = deadline - margin;
        if let Err(e) = self.context.shutdown() {
            tracing::warn!(error = %e, "stopping the workers failed");
        }
        let mut monitor = self.monitor;
        if tokio::time::timeout_at(cut_off, &mut monitor)
            .await
            .is_err()
        {
            tracing::warn!("jobs still running at the shutdown cut-off; handing them back");
            for core in &self.cores {
                core.cutoff.cancel();
            }
            if tokio::time::timeout_at(deadline, &mut monitor)
                .await
                .is_err()
            {
                tracing::error!("workers did not stop by the deadline; their leases will expire");
                monitor.abort();
            }
        }
        self.rescuer.abort();
        tracing::info!("workers stopped");
    }
}

/// Every heartbeat, ends expired leases of any kind (the kinds' own drivers do theirs too;
/// this covers kinds no worker here runs).
async fn rescue_loop(engine: Engine, cores: Vec<Arc<Core>>) {
    let mut tick = tokio::time::interval(engine.workers().heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let own: Vec<i64> = cores.iter().flat_map(|c| c.held_ids()).collect();
        if let Err(e) = rescue::rescue_expired(&engine, None, &own).await {
            tracing::warn!(error = %e, "rescuing expired leases failed; will retry");
        }
    }
}
