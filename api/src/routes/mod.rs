//! The `/v1` routes, one module per resource. Each `*Api` is a poem-openapi `OpenApi`
//! impl added to [`V1`]; each route takes [`ApiKeyAuth`](crate::auth::ApiKeyAuth), calls
//! `auth.require(Scope::…)?` first and says `Scope: …` in its doc. The two routes that
//! authenticate otherwise (the Stripe webhook, the export download link) name no scope; see
//! [`crate::auth::authenticates_itself`]. A new resource is a new module here plus one
//! entry in [`V1`].

pub mod api_keys;
pub mod exports;
pub mod jobs;
pub mod payments;
pub mod queues;
pub mod schedules;
pub mod tracks;
pub mod transfers;
pub mod transitions;
pub mod users;
pub mod webhooks;

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
    /// Webhooks from outside services (Stripe), authenticated by their signature.
    Webhooks,
    /// Seller transfers (payouts and reversals): list, inspect, admin retry.
    Transfers,
    /// Payments: partial refunds awaiting an admin, reconciliation findings.
    Payments,
    /// GDPR data exports: request, list, download.
    Exports,
    /// Users: account deletion, restore, erasure receipt.
    Users,
}

/// Every `/v1` API, in spec order.
pub type V1 = (
    jobs::JobsApi,
    queues::QueuesApi,
    schedules::SchedulesApi,
    transitions::TransitionsApi,
    api_keys::ApiKeysApi,
    tracks::TracksApi,
    webhooks::WebhooksApi,
    transfers::TransfersApi,
    payments::PaymentsApi,
    exports::ExportsApi,
    users::UsersApi,
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
        webhooks::WebhooksApi(state.clone()),
        transfers::TransfersApi(state.clone()),
        payments::PaymentsApi(state.clone()),
        exports::ExportsApi(state.clone()),
        users::UsersApi(state.clone()),
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

/// A page of rows fetched with one row more than `limit`: the first `limit` rows, and the
/// cursor (the last kept row's id) when there is a next page.
pub(crate) fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    id: impl Fn(&T) -> i64,
) -> (Vec<T>, Option<i64>) {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let cursor = rows.last().map(&id);
        (rows, cursor)
    } else {
        (rows, None)
    }
}
