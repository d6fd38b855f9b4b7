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

/// A JSON string field, strictly: poem-openapi's own `String` parser also takes numbers and
/// booleans (`"name": false` would become `"false"`), which the spec (`type: string`) does
/// not allow. Use as `#[oai(deserialize_with = "crate::routes::strict_string")]`.
pub(crate) fn strict_string(
    value: Option<serde_json::Value>,
) -> poem_openapi::types::ParseResult<String> {
    match value {
        Some(serde_json::Value::String(s)) => Ok(s),
        other => Err(poem_openapi::types::ParseError::expected_type(
            other.unwrap_or_default(),
        )),
    }
}

/// A time parameter in RFC 3339 (`format: date-time` in the spec, e.g.
/// `2026-01-01T00:00:00Z`), as ms since the epoch; anything else is a 400 naming the
/// parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTimeParam(pub i64);

impl poem_openapi::types::Type for DateTimeParam {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> std::borrow::Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
        poem_openapi::registry::MetaSchemaRef::Inline(Box::new(
            poem_openapi::registry::MetaSchema::new_with_format("string", "date-time"),
        ))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl poem_openapi::types::ParseFromParameter for DateTimeParam {
    fn parse_from_parameter(value: &str) -> poem_openapi::types::ParseResult<Self> {
        chrono::DateTime::parse_from_rfc3339(value)
            .map(|t| Self(t.timestamp_millis()))
            .map_err(|e| {
                poem_openapi::types::ParseError::custom(format!(
                    "expected an RFC 3339 time such as 2026-01-01T00:00:00Z ({e})"
                ))
            })
    }
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
