//! The `/v1` routes, one module per resource. Each `*Api` is a poem-openapi `OpenApi`
//! impl added to [`V1`]; each route takes [`ApiKeyAuth`](crate::auth::ApiKeyAuth), calls
//! `auth.require(Scope::…)?` first and says `Scope: …` in its doc. A new resource (transfers,
//! exports, deletion, thumbnails, webhooks) is a new module here plus one entry in [`V1`].

pub mod api_keys;
pub mod jobs;
pub mod queues;
pub mod schedules;
pub mod tracks;
pub mod transitions;

use poem_openapi::Tags;

use crate::state::ApiState;

/// The spec's groups.
#[derive(Tags)]
pub enum ApiTags {
    /// Liveness, readiness and metrics; no API key needed.
    Operations,
    /// Jobs: list, inspect, retry, cancel.
    Jobs,
    /// Per-kind queue statistics.
    Queues,
    /// Schedules: list and run now.
    Schedules,
    /// The audit trail of domain status changes.
    Transitions,
    /// API keys (admin).
    ApiKeys,
    /// Tracks: thumbnails of their cover images.
    Tracks,
}

/// Every `/v1` API, in spec order.
pub type V1 = (
    jobs::JobsApi,
    queues::QueuesApi,
    schedules::SchedulesApi,
    transitions::TransitionsApi,
    api_keys::ApiKeysApi,
    tracks::TracksApi,
);

/// The `/v1` APIs on `state`.
pub fn v1(state: &ApiState) -> V1 {
    (
        jobs::JobsApi(state.clone()),
        queues::QueuesApi(state.clone()),
        schedules::SchedulesApi(state.clone()),
        transitions::TransitionsApi(state.clone()),
        api_keys::ApiKeysApi(state.clone()),
        tracks::TracksApi(state.clone()),
    )
}

/// An RFC 3339 time as ms since the epoch, or a 400 naming `param`.
pub(crate) fn parse_time(param: &str, value: &str) -> Result<i64, crate::problem::ApiError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            crate::problem::ApiError::bad_request(format!(
                "{param} must be an RFC 3339 time such as 2026-01-01T00:00:00Z ({e})"
            ))
        })
}
