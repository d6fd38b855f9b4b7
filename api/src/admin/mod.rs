//! The admin dashboard at `/admin`: server-rendered pages (maud) over the same engine and
//! domain functions as the `/v1` routes, with a little embedded CSS and JavaScript and no
//! front-end build.
//!
//! - Sign-in with an admin API key, exchanged for a session cookie ([`session`]):
//!   `__Host-` prefixed, Secure (unless `ADMIN_COOKIE_SECURE=never`), HttpOnly,
//!   SameSite=Strict, `Max-Age` of `ADMIN_SESSION_TTL`; a sign-in ends the browser's previous
//!   session. Keys of scope read or write are refused; every attempt draws on the address's
//!   budget for requests without a key, and a failed one is logged (at most every few
//!   seconds).
//! - [`guard`] runs before every page: no live session → the sign-in page; every request
//!   that is not a GET/HEAD must carry the session's CSRF token (form field `csrf` or header
//!   `X-CSRF-Token`), else 403, and a cross-site one (`Sec-Fetch-Site: cross-site`) is
//!   refused too.
//! - Pages ([`pages`]): overview (live), jobs and a job (retry, cancel), schedules (run
//!   now), transfers and a transfer (retry), reconciliation findings, exports and
//!   deletions. Actions are audited as `api_key:{id}` of the key that signed in.
//! - Errors are HTML pages, not problem documents (see [`crate::problem`]).

pub mod pages;
pub mod session;
pub mod view;

use std::sync::OnceLock;
use std::time::Duration;

use engine::config::Env;
use poem::http::{Method, StatusCode, header};
use poem::web::Html;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, post};

use crate::state::ApiState;
pub use session::{CookieSecure, Session};

/// The dashboard's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Session lifetime.
    pub session_ttl: Duration,
    /// When the cookie is Secure.
    pub cookie_secure: CookieSecure,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(8 * 3600),
            cookie_secure: CookieSecure::Always,
        }
    }
}

impl Settings {
    /// Reads `ADMIN_SESSION_TTL` and `ADMIN_COOKIE_SECURE`.
    pub fn read(env: &mut Env) -> Self {
        let session_ttl = env.duration(&crate::config::ADMIN_SESSION_TTL);
        let cookie_secure = match env.choice(
            &crate::config::ADMIN_COOKIE_SECURE,
            &["auto", "always", "never"],
        ) {
            "auto" => CookieSecure::Auto,
            "never" => CookieSecure::Never,
            _ => CookieSecure::Always,
        };
        Self {
            session_ttl,
            cookie_secure,
        }
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets the process's dashboard settings (once, at start; later calls are ignored).
pub fn configure(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

/// The process's dashboard settings (the defaults unless [`configure`]d).
pub fn settings() -> &'static Settings {
    SETTINGS.get_or_init(Settings::default)
}

/// The dashboard's route templates, for the HTTP metrics' `route` label.
pub const ROUTE_TEMPLATES: &[&str] = &[
    "/admin",
    "/admin/login",
    "/admin/logout",
    "/admin/assets/{file}",
    "/admin/jobs",
    "/admin/jobs/{id}",
    "/admin/jobs/{id}/retry",
    "/admin/jobs/{id}/cancel",
    "/admin/schedules",
    "/admin/schedules/{name}/run",
    "/admin/transfers",
    "/admin/transfers/{id}",
    "/admin/transfers/{id}/retry",
    "/admin/findings",
    "/admin/gdpr",
];

const CSS: &str = include_str!("assets/admin.css");
const JS: &str = include_str!("assets/admin.js");

#[poem::handler]
fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

#[poem::handler]
fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "public, max-age=300")
        .body(body)
}

/// The dashboard's routes, nested at `/admin` by [`crate::server::app`].
pub fn routes() -> impl Endpoint + 'static {
    Route::new()
        .at("/", get(pages::overview::page))
        .at(
            "/login",
            get(pages::login::form).post(pages::login::sign_in),
        )
        .at("/logout", post(pages::login::sign_out))
        .at("/assets/admin.css", get(css))
        .at("/assets/admin.js", get(js))
        .at("/jobs", get(pages::jobs::list))
        .at("/jobs/:id", get(pages::jobs::show))
        .at("/jobs/:id/retry", post(pages::jobs::retry))
        .at("/jobs/:id/cancel", post(pages::jobs::cancel))
        .at("/schedules", get(pages::schedules::list))
        .at("/schedules/:name/run", post(pages::schedules::run))
        .at("/transfers", get(pages::transfers::list))
        .at("/transfers/:id", get(pages::transfers::show))
        .at("/transfers/:id/retry", post(pages::transfers::retry))
        .at("/findings", get(pages::transfers::findings))
        .at("/gdpr", get(pages::gdpr::page))
        .around(guard)
        .around(html_errors)
}

/// The request's path and query under `/admin` (the nested route sees them without it).
fn full_path(req: &Request) -> String {
    let path = req.uri().path().trim_end_matches('/');
    match req.uri().query() {
        Some(q) => format!("/admin{path}?{q}"),
        None => format!("/admin{path}"),
    }
}

/// Paths (below `/admin`) that need no session.
fn is_public(path: &str) -> bool {
    matches!(path, "/login" | "/assets/admin.css" | "/assets/admin.js")
}

/// Sessions and CSRF (see the module docs).
async fn guard<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    // Nested at /admin, the request's URI lost its prefix (`/login`).
    let path = req.uri().path().to_owned();
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
    if mutating
        && req
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return Ok(error_page(
            StatusCode::FORBIDDEN,
            "This request came from another site and was refused.",
        ));
    }
    if is_public(&path) {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let state = req
        .data::<ApiState>()
        .cloned()
        .expect("ApiState is attached to the app");
    let now = state.engine.clock().now_ms();
    let session = match session::token_of(&req) {
        Some(token) => session::lookup(state.engine.db(), &token, now)
            .await
            .map_err(|e| internal("looking up the admin session", &e))?,
        None => None,
    };
    let Some(session) = session else {
        if !mutating && !is_fragment(&req) {
            let next = full_path(&req);
            let to = format!("/admin/login?next={}", view::url_encode(&next));
            return Ok(redirect(&to));
        }
        return Ok(error_page(
            StatusCode::UNAUTHORIZED,
            "Your session has ended. Sign in again.",
        ));
    };
    if mutating {
        let from_header = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let presented = match from_header {
            Some(token) => token,
            None => {
                let body = req.take_body().into_bytes().await?;
                let token = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|(k, _)| k == session::CSRF_FIELD)
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                req.set_body(body);
                token
            }
        };
        if !session::csrf_matches(&session.csrf, &presented) {
            return Ok(error_page(
                StatusCode::FORBIDDEN,
                "This form's security token is missing or wrong (CSRF check). Reload the page and try again.",
            ));
        }
    }
    req.extensions_mut().insert(session);
    next.call(req).await.map(IntoResponse::into_response)
}

/// True for the live-refresh requests of the pages' script (`?fragment=1`).
pub fn is_fragment(req: &Request) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "fragment=1"))
}

/// Every error of a page as an HTML page; 5xx are logged with their cause, never shown.
async fn html_errors<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let (method, path) = (req.method().clone(), full_path(&req));
    let resp = match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(e) => {
            let status = e.status();
            if status.is_server_error() {
                tracing::error!(%method, %path, error = %e, "admin page failed");
                error_page(
                    status,
                    "Something failed inside. It was logged; quote the X-Request-Id header when reporting it.",
                )
            } else if status == StatusCode::NOT_FOUND {
                error_page(status, "There is no such page.")
            } else {
                error_page(status, &e.to_string())
            }
        }
    };
    let mut resp = resp;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    Ok(resp)
}

/// A 500 whose cause is logged here, never shown.
pub fn internal(context: &str, e: &(dyn std::error::Error + 'static)) -> poem::Error {
    tracing::error!(error = %engine::job::error_chain(e), "admin dashboard: {context}");
    poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A 303 to `to` (after a form, or to the sign-in page).
pub fn redirect(to: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to)
        .finish()
}

/// An error page of `status` saying `message`.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = view::bare_layout(
        title,
        maud::html! {
            main.narrow {
                h1 { (status.as_u16()) " " (title) }
                p { (message) }
                p { a href="/admin" { "Back to the dashboard" } }
            }
        },
    );
    let mut resp = Html(body.into_string()).into_response();
    resp.set_status(status);
    resp
}

/// True for the dashboard's paths (`/admin` and below), whose errors are HTML pages.
pub fn is_dashboard_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}
