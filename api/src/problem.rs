//! Errors as RFC 9457 problem documents (`application/problem+json`: type, title, status,
//! detail). Routes return [`ApiError`], whose variants document each status in the
//! OpenAPI spec; [`problem_middleware`] turns every other 4xx/5xx (unknown route, bad JSON,
//! oversized body, panic) into the same shape and logs internal errors once, with the
//! request id. Internal errors never say anything about internals.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use crate::request_id::RequestId;
use crate::spec::RouteTemplates;

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem document.
#[derive(Debug, Clone, PartialEq, Eq, Object, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// A stable identifier of the kind of problem, e.g. `rate_limited`, `invalid_job_state`.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    /// A short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this case.
    pub detail: String,
}

impl Problem {
    /// A problem of `status`, its title taken from the status.
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }

    /// The generic internal error: nothing about what failed.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; quote the X-Request-Id header when reporting it",
        )
    }

    /// As a response with the problem media type.
    pub fn into_poem_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, PROBLEM_JSON)
            .body(body)
    }
}

/// Every error a `/v1` route answers with.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
pub enum ApiError {
    /// A parameter or the body is malformed (`bad_request`).
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No valid `X-API-Key`: missing, unknown or revoked (`unauthorized`).
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// The key's scope does not allow this route (`forbidden`).
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// The resource does not exist (`not_found`).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The resource's state does not allow the operation (`invalid_job_state`,
    /// `unique_key_held`, `signal_already_sent`, …).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The resource existed but is no longer available, e.g. an expired export link
    /// (`gone`).
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(Json<Problem>),
    /// A budget is spent: the key's hourly requests (`rate_limited`) or a per-user quota
    /// such as the daily exports (`quota_exceeded`); `Retry-After` says when to try again.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(
        Json<Problem>,
        /// Seconds until a retry can succeed.
        #[oai(header = "Retry-After")]
        Option<u64>,
    ),
    /// Something failed inside (`internal`); logged with the request id.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// A dependency (the database) is down for now; retry later (`unavailable`). The Stripe
    /// webhook answers this so that Stripe delivers the event again.
    #[oai(status = 503, content_type = "application/problem+json")]
    ServiceUnavailable(Json<Problem>),
}

fn bad_request(err: poem::Error) -> ApiError {
    ApiError::BadRequest(Json(Problem::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        err.to_string(),
    )))
}

impl ApiError {
    /// 404 with `detail`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::NotFound(Json(Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            detail,
        )))
    }

    /// 400 with `detail`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        bad_request(poem::Error::from_string(
            detail.into(),
            StatusCode::BAD_REQUEST,
        ))
    }

    /// 409 of `kind` with `detail`.
    pub fn conflict(kind: &str, detail: impl Into<String>) -> Self {
        Self::Conflict(Json(Problem::new(StatusCode::CONFLICT, kind, detail)))
    }

    /// 403 with `detail`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::Forbidden(Json(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            detail,
        )))
    }

    /// 401 with `detail`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::Unauthorized(Json(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            detail,
        )))
    }

    /// 410 with `detail`.
    pub fn gone(detail: impl Into<String>) -> Self {
        Self::Gone(Json(Problem::new(StatusCode::GONE, "gone", detail)))
    }

    /// 429 of `kind` with `detail`, retryable after `retry_after_secs` (at least 1).
    pub fn too_many_requests(kind: &str, detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::TooManyRequests(
            Json(Problem::new(StatusCode::TOO_MANY_REQUESTS, kind, detail)),
            Some(retry_after_secs.max(1)),
        )
    }

    /// 400 of a more precise `kind` than `bad_request` (e.g. `invalid_signature`).
    pub fn bad_request_of(kind: &str, detail: impl Into<String>) -> Self {
        Self::BadRequest(Json(Problem::new(StatusCode::BAD_REQUEST, kind, detail)))
    }

    /// 503 with `detail`; `cause` is logged, never sent.
    pub fn unavailable(
        detail: impl Into<String>,
        cause: &(dyn std::error::Error + 'static),
    ) -> Self {
        tracing::warn!(error = %engine::job::error_chain(cause), "dependency unavailable in a route");
        Self::unavailable_because(detail)
    }

    /// 503 with `detail`, for a cause the detail already states (nothing else to log).
    pub fn unavailable_because(detail: impl Into<String>) -> Self {
        Self::ServiceUnavailable(Json(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            detail,
        )))
    }

    /// A generic 500; `cause` is logged (once, by [`problem_middleware`]), never sent.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %engine::job::error_chain(cause), "internal error in a route");
        Self::Internal(Json(Problem::internal()))
    }
}

impl From<engine::Error> for ApiError {
    fn from(e: engine::Error) -> Self {
        match e {
            engine::Error::JobNotFound(_) | engine::Error::ScheduleNotFound(_) => {
                Self::not_found(e.to_string())
            }
            engine::Error::InvalidJobState { .. } => {
                Self::conflict("invalid_job_state", e.to_string())
            }
            engine::Error::UniqueKeyHeld { .. } => Self::conflict("unique_key_held", e.to_string()),
            engine::Error::SignalAlreadySent { .. } => {
                Self::conflict("signal_already_sent", e.to_string())
            }
            e if e.is_unavailable() => Self::unavailable(DATABASE_UNAVAILABLE, &e),
            other => Self::internal(&other),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if engine::error::is_unavailable(&e) {
            Self::unavailable(DATABASE_UNAVAILABLE, &e)
        } else {
            Self::internal(&e)
        }
    }
}

/// The detail of a 503 for a database out of reach: the request can be sent again as is.
const DATABASE_UNAVAILABLE: &str = "the database is unavailable; try again shortly";

/// Makes every 4xx/5xx a problem document (those that are not already), and logs 5xx once
/// with the request id. Errors raised by poem (unknown route → 404, wrong method → 405,
/// body over the limit → 413, wrong media type → 415, panic → 500) keep their status; a
/// 5xx's text is replaced by the generic message. A 405 says in `Allow` which methods the
/// path has (from `templates`, the spec's routes).
pub async fn problem_middleware<E: Endpoint>(
    next: E,
    req: Request,
    templates: &RouteTemplates,
) -> poem::Result<Response> {
    // The admin dashboard is for people in a browser: its errors are HTML pages (and its
    // 5xx are logged by its own error middleware, `crate::admin`), so they are left as is.
    if crate::admin::is_dashboard_path(req.uri().path()) {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let request_id = req.extensions().get::<RequestId>().cloned();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(e) => {
            let status = e.status();
            if status.is_server_error() {
                tracing::error!(
                    request_id = request_id.as_ref().map(|r| r.0.as_str()),
                    %method, %path, error = %e,
                    "request failed"
                );
                Problem::internal().into_poem_response()
            } else {
                let kind = kind_of(status);
                let detail = match status {
                    StatusCode::NOT_FOUND => format!("no route {method} {path}"),
                    _ => e.to_string(),
                };
                let mut resp = Problem::new(status, kind, detail).into_poem_response();
                // Keep headers a middleware set on the error (none today).
                resp.set_status(status);
                resp
            }
        }
    };
    let mut resp = ensure_problem(resp, request_id.as_ref(), &method, &path).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && !resp.headers().contains_key(header::ALLOW)
        && let Some(allow) = templates
            .allow(&path)
            .and_then(|a| HeaderValue::from_str(&a).ok())
    {
        resp.headers_mut().insert(header::ALLOW, allow);
    }
    Ok(resp)
}

/// The problem type of an error poem raised by itself.
fn kind_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        _ => "bad_request",
    }
}

async fn ensure_problem(
    resp: Response,
    request_id: Option<&RequestId>,
    method: &poem::http::Method,
    path: &str,
) -> Response {
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    // A route's own 500 was logged with its cause where it was made (inside the request's
    // span, so with the request id).
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    // An error answered without a problem body (a 404 of poem's router, a 503 of `/ready`
    // is JSON on purpose and is left as is).
    if resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == HeaderValue::from_static("application/json; charset=utf-8"))
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = body.into_string().await.unwrap_or_default();
    let problem = if status.is_server_error() {
        tracing::error!(
            request_id = request_id.map(|r| r.0.as_str()),
            %method, %path, status = status.as_u16(), error = %text,
            "request failed"
        );
        Problem::internal()
    } else {
        let detail = if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        };
        Problem::new(status, kind_of(status), detail)
    };
    let mut out = problem.into_poem_response();
    out.set_status(status);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
