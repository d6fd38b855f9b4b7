//! What every route shares: the engine, the scheduler, the rate limiter and the job kinds'
//! settings.

use std::sync::Arc;

use engine::Engine;
use engine::scheduler::Scheduler;
use jobs::JobsConfig;

use crate::auth::ClientIp;
use crate::auth::keys::KeyCache;
use crate::auth::rate_limit::Limiter;

/// The HTTP front's settings that are not limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where the client address of a request without a key is read (`CLIENT_IP_HEADER`).
    pub client_ip: ClientIp,
    /// The bearer token `/metrics` asks for (`METRICS_TOKEN`); none: open.
    pub metrics_token: Option<String>,
    /// How long a verified API key is trusted without a database read
    /// (`API_KEY_CACHE_TTL`).
    pub api_key_cache_ttl: std::time::Duration,
}

impl Default for HttpSettings {
    /// The variables' defaults.
    fn default() -> Self {
        Self {
            client_ip: ClientIp::Peer,
            metrics_token: None,
            api_key_cache_ttl: std::time::Duration::from_secs(1),
        }
    }
}

/// The routes' shared state (cheap to clone).
#[derive(Clone)]
pub struct ApiState {
    /// The engine (its pool, clock and registry).
    pub engine: Engine,
    /// The schedules this process knows.
    pub scheduler: Arc<Scheduler>,
    /// Rate limits per key and per client address.
    pub limiter: Limiter,
    /// The API keys verified lately (see [`KeyCache`]).
    pub keys: KeyCache,
    /// The HTTP front's own settings (client addresses, the metrics token).
    pub http: HttpSettings,
    /// The job kinds' settings: `MEDIA_ROOT` to check a thumbnail source, the webhook
    /// secrets, the export directory and signing key, the recovery period.
    pub jobs: Arc<JobsConfig>,
}
