//! The veza-jobs engine: durable, typed, retried jobs on SQLite or Postgres, with no
//! knowledge of the marketplace's domain.
//!
//! - [`Job`]: a kind's args, name and policy; handlers return [`Outcome`] or [`JobError`].
//! - [`Engine`]: enqueue (also inside the caller's transaction, [`JobTx`]), cancel, retry.
//! - [`worker`]: the runtime — the engine's storage as an apalis 1.0 backend
//!   ([`worker::JobStorage`]), every kind an apalis worker under apalis's `Monitor`
//!   ([`worker::WorkerPool`]): claims ahead, leases with heartbeats, fenced batched acks.
//! - [`Registry`] and [`JobContext`]: the kinds a process knows, and what a handler gets;
//!   [`steps`]: a handler's durable steps (`ctx.step`), never run again once finished.
//! - [`scheduler`]: named schedules, one job per tick across processes.
//! - [`state_machine`]: the one way a domain row changes status, with its audit trail.
//! - [`shutdown`], [`config`], [`telemetry`], [`retention`], and `testing` (feature `test-util`).
#![warn(missing_docs)]

pub mod admin;
mod batch;
pub mod clock;
pub mod config;
pub mod context;
pub mod db;
pub mod engine;
pub mod error;
mod group_commit;
pub mod job;
pub mod metrics;
pub mod registry;
pub mod retention;
pub mod scheduler;
pub mod shutdown;
pub mod state_machine;
pub mod steps;
pub mod storage;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod wakeup;
pub mod worker;

pub use clock::{Clock, Millis};
pub use context::JobContext;
pub use db::{Backend, Db, DbConn};
pub use engine::{Engine, JobTx, RetentionSettings, WorkerSettings};
pub use error::{Error, Result};
pub use job::{Enqueued, Job, JobError, JobPolicy, JobState, NewJob, Outcome, RetryPolicy};
pub use registry::{DiscardReason, Discarded, Registry};
pub use state_machine::Actor;
