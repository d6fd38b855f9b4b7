//! What every route shares: the engine, the scheduler and the rate limiter.

use std::sync::Arc;

use engine::Engine;
use engine::scheduler::Scheduler;

use crate::auth::rate_limit::Limiter;

/// The routes' shared state (cheap to clone).
#[derive(Clone)]
pub struct ApiState {
    /// The engine (its pool, clock and registry).
    pub engine: Engine,
    /// The schedules this process knows.
    pub scheduler: Arc<Scheduler>,
    /// Per-key rate limits.
    pub limiter: Limiter,
}
