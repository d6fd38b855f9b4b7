//! Authentication and authorisation of `/v1`: API keys ([`keys`]), scopes, and rate limits
//! ([`rate_limit`]) per key and per client address.
//!
//! [`auth_middleware`] runs before every `/v1` route: it resolves `X-API-Key` once (401 when
//! missing, unknown or revoked), draws on the key's read or write budget (429 with
//! `Retry-After` when spent), puts the [`Caller`] in the request and adds the
//! `X-RateLimit-*` headers to the answer. What comes without a valid key (no key, an
//! unknown one, an export download link; also a webhook whose signature fails and a
//! dashboard sign-in, checked where they are handled) draws on the client address's budget
//! (`RATE_LIMIT_ANONYMOUS_PER_HOUR`, [`client_id`]); when it is spent the answer is 429
//! before any work. When the limiter's Redis does not answer, the answer is 503
//! `unavailable` at once. Each route then takes [`ApiKeyAuth`] (which
//! documents the `ApiKeyAuth` scheme in the spec) and states its scope first thing:
//!
//! ```text
//! async fn cancel(&self, auth: ApiKeyAuth, id: Path<i64>) -> Result<Json<JobStateView>, ApiError> {
//!     let caller = auth.require(Scope::Admin)?;
//! ```
//!
//! and says it in its doc (`Scope: admin.`). `tests/auth.rs` walks every route of the
//! spec with every scope, so a route that forgets its guard fails there.

pub mod keys;
pub mod rate_limit;

use poem::http::{HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::ApiKey;

pub use keys::{Caller, Scope};
use rate_limit::{Class, Decision};

use crate::problem::{ApiError, Problem};
use crate::state::ApiState;

/// The API key header.
pub const API_KEY_HEADER: &str = "X-API-Key";

/// A request authenticated with an API key (`X-API-Key` header).
#[derive(SecurityScheme)]
#[oai(
    rename = "ApiKeyAuth",
    ty = "api_key",
    key_name = "X-API-Key",
    key_in = "header",
    checker = "caller_of"
)]
pub struct ApiKeyAuth(pub Caller);

/// The caller [`auth_middleware`] resolved.
async fn caller_of(req: &Request, _key: ApiKey) -> poem::Result<Caller> {
    req.extensions()
        .get::<Caller>()
        .copied()
        .ok_or_else(|| poem::Error::from_string("no valid X-API-Key", StatusCode::UNAUTHORIZED))
}

impl ApiKeyAuth {
    /// The route's guard: 403 unless the key's scope is at least `scope`.
    pub fn require(&self, scope: Scope) -> Result<Caller, ApiError> {
        if self.0.scope >= scope {
            Ok(self.0)
        } else {
            Err(ApiError::forbidden(format!(
                "this route needs a key of scope {}; this key is {}",
                scope.as_str(),
                self.0.scope.as_str()
            )))
        }
    }
}

/// True for the paths that need a key: everything under `/v1` but the routes that
/// authenticate their caller otherwise ([`authenticates_itself`]).
pub fn is_protected(path: &str) -> bool {
    (path == "/v1" || path.starts_with("/v1/")) && !authenticates_itself(path)
}

/// The `/v1` routes called by someone who has no API key, each checking its own proof:
/// Stripe's webhook (the `Stripe-Signature` HMAC over the body) and an export's download
/// link from the e-mail (`/v1/exports/{id}/download?token=…`, an HMAC over id and expiry).
/// Their docs name no scope; `tests/v1/auth.rs` checks that they answer without a key.
pub fn authenticates_itself(path: &str) -> bool {
    path == crate::routes::webhooks::PATH || is_export_download(path)
}

/// `/v1/exports/{id}/download`.
fn is_export_download(path: &str) -> bool {
    path.strip_prefix("/v1/exports/")
        .and_then(|rest| rest.strip_suffix("/download"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// Where a request's client address is read (`CLIENT_IP_HEADER`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClientIp {
    /// The TCP peer (no proxy in front).
    #[default]
    Peer,
    /// A header the proxy in front sets (`X-Real-IP`; for `X-Forwarded-For`, its last
    /// address, the one the proxy added). Without it, the peer.
    Header(poem::http::HeaderName),
}

/// The client a request without a valid key is counted as: its IPv4 address, its IPv6
/// address's /64 network (one host gets a whole /64), or `unknown`.
pub fn client_id(req: &Request, source: &ClientIp) -> String {
    let from_header = match source {
        ClientIp::Peer => None,
        ClientIp::Header(name) => req
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok()),
    };
    let ip = from_header.or_else(|| req.remote_addr().as_socket_addr().map(|a| a.ip()));
    match ip.map(|ip| ip.to_canonical()) {
        Some(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Some(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "unknown".to_owned(),
    }
}

/// Counts a request without a valid key against its client's budget: `Err` with the answer
/// when the budget is spent (429) or the limiter fails (503).
pub async fn anonymous_gate(state: &ApiState, req: &Request) -> Result<(), ApiError> {
    let client = client_id(req, &state.http.client_ip);
    match state.limiter.check_anonymous(&client).await {
        Ok(d) if d.allowed => Ok(()),
        Ok(d) => {
            if let Some(suppressed) = crate::log_gate::admit("anonymous_budget_spent") {
                tracing::warn!(
                    client,
                    suppressed,
                    "requests without a valid key refused: the address's budget is spent"
                );
            }
            let retry = ceil_secs(d.retry_after).max(1);
            Err(ApiError::too_many_requests(
                "rate_limited",
                format!(
                    "too many requests without a valid key from this address ({} per hour); retry after {retry} s",
                    d.limit
                ),
                retry,
            ))
        }
        Err(e) => Err(limiter_down(&e)),
    }
}

/// 503 for a rate limiter whose store (Redis) does not answer; logged at most every few
/// seconds.
fn limiter_down(e: &fred::error::Error) -> ApiError {
    if let Some(suppressed) = crate::log_gate::admit("rate_limiter_down") {
        tracing::error!(error = %e, suppressed, "the rate limiter's Redis does not answer: requests are refused with 503");
    }
    ApiError::unavailable_because("the rate limiter's store does not answer; retry shortly")
}

fn unauthorized(detail: &str) -> Response {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_poem_response()
}

fn set_headers(resp: &mut Response, d: &Decision) {
    let headers = resp.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(ceil_secs(d.reset)));
    if !d.allowed {
        headers.insert(
            "retry-after",
            HeaderValue::from(ceil_secs(d.retry_after).max(1)),
        );
    }
}

fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

/// Authenticates and rate-limits `/v1` requests (see the module docs).
pub async fn auth_middleware<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let path = req.uri().path();
    // The export link's token is checked by its route; the webhook counts only the
    // deliveries whose signature fails (Stripe's own must never be throttled).
    if is_export_download(path) {
        let state = app_state(&req);
        if let Err(refused) = anonymous_gate(&state, &req).await {
            return Ok(refused.into_response());
        }
    }
    if !is_protected(req.uri().path()) {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let state = app_state(&req);
    let Some(key) = req
        .headers()
        .get(API_KEY_HEADER)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
    else {
        if let Err(refused) = anonymous_gate(&state, &req).await {
            return Ok(refused.into_response());
        }
        return Ok(unauthorized(
            "this route needs an API key in the X-API-Key header",
        ));
    };
    let now = state.engine.clock().now_ms();
    let caller = match state.keys.authenticate(state.engine.db(), &key, now).await {
        Ok(Some(caller)) => caller,
        Ok(None) => {
            if let Err(refused) = anonymous_gate(&state, &req).await {
                return Ok(refused.into_response());
            }
            if let Some(suppressed) = crate::log_gate::admit("unknown_api_key") {
                tracing::warn!(
                    client = client_id(&req, &state.http.client_ip),
                    suppressed,
                    "request with an unknown or revoked X-API-Key"
                );
            }
            return Ok(unauthorized("the X-API-Key is unknown or revoked"));
        }
        Err(e) => return Err(internal("authenticating the API key", &e)),
    };
    let decision = match state
        .limiter
        .check(caller.key_id, Class::of(req.method()))
        .await
    {
        Ok(d) => d,
        Err(e) => return Ok(limiter_down(&e).into_response()),
    };
    if !decision.allowed {
        let mut resp = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this key's budget of {} {} requests per hour is spent; retry after {} s",
                decision.limit,
                match Class::of(req.method()) {
                    Class::Read => "read",
                    Class::Write => "write",
                },
                ceil_secs(decision.retry_after).max(1)
            ),
        )
        .into_poem_response();
        set_headers(&mut resp, &decision);
        return Ok(resp);
    }
    req.extensions_mut().insert(caller);
    let mut resp = match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(e) => e.into_response(),
    };
    set_headers(&mut resp, &decision);
    Ok(resp)
}

fn app_state(req: &Request) -> ApiState {
    req.data::<ApiState>()
        .cloned()
        .expect("ApiState is attached to the app")
}

fn internal(context: &str, e: &dyn std::error::Error) -> poem::Error {
    poem::Error::from_string(
        format!("{context}: {}", engine::job::error_chain(e)),
        StatusCode::INTERNAL_SERVER_ERROR,
    )
}
