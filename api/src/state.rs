//! What every route shares: the engine, the scheduler, the rate limiter and the job kinds'
//! settings.

use std::sync::Arc;

use engine::Engine;
use engine::scheduler::Scheduler;
use jobs::JobsConfig;

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
    /// The job kinds' settings: `MEDIA_ROOT` to check a thumbnail source, the webhook
    /// secrets, the export directory and signing key, the recovery period.
    pub jobs: Arc<JobsConfig>,
}
