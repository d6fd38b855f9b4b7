//! Sign-in with an admin API key, and sign-out.

use maud::html;
use poem::http::{StatusCode, header};
use poem::web::{Data, Form, Html, Query};
use poem::{IntoResponse, Request, Response};
use serde::Deserialize;

use crate::admin::session::{self, Session};
use crate::admin::{internal, redirect, view};
use crate::auth::{Scope, anonymous_gate, client_id, keys};
use crate::problem::ApiError;
use crate::state::ApiState;

/// The sign-in page's query.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    /// Where to go once signed in.
    next: Option<String>,
    /// Set after a sign-out.
    signed_out: Option<u8>,
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// The admin API key.
    key: String,
    /// Where to go once signed in.
    next: Option<String>,
}

/// Only a dashboard path is a place to go back to (no open redirect).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if (n == "/admin" || n.starts_with("/admin/") || n.starts_with("/admin?"))
                && !n.contains("//")
                && !n.contains('\\') =>
        {
            n
        }
        _ => "/admin",
    }
}

fn login_page(next: &str, notice: Option<(&str, &str)>) -> Html<String> {
    let body = view::bare_layout(
        "Sign in",
        html! {
            main.narrow {
                h1 { "Admin sign-in" }
                @if let Some((kind, text)) = notice { (view::flash(kind, text)) }
                form.card method="post" action="/admin/login" {
                    label for="key" { "Admin API key" }
                    input #key type="password" name="key" required autocomplete="off"
                        placeholder="vz_…" spellcheck="false";
                    input type="hidden" name="next" value=(next);
                    button.primary type="submit" id="sign-in" { "Sign in" }
                    p.muted {
                        "A key of scope admin, e.g. from "
                        code { "veza-jobs api-key create --name you --scope admin" }
                        ". The key is exchanged for a session cookie and not kept in the browser."
                    }
                }
            }
        },
    );
    Html(body.into_string())
}

/// `GET /admin/login`.
#[poem::handler]
pub(crate) fn form(Query(q): Query<LoginQuery>) -> Html<String> {
    let notice = q
        .signed_out
        .is_some()
        .then_some(("ok", "You are signed out."));
    login_page(safe_next(q.next.as_deref()), notice)
}

/// `POST /admin/login`: an admin key opens a session; any other key is refused.
#[poem::handler]
pub(crate) async fn sign_in(
    req: &Request,
    state: Data<&ApiState>,
    Form(f): Form<LoginForm>,
) -> poem::Result<Response> {
    let db = state.engine.db();
    let now = state.engine.clock().now_ms();
    let next = safe_next(f.next.as_deref());
    let refuse = |status: StatusCode, text: &str| {
        let mut resp = login_page(next, Some(("error", text))).into_response();
        resp.set_status(status);
        resp
    };
    // Every attempt counts against the address's budget: guessing keys is throttled.
    if let Err(e) = anonymous_gate(&state, req).await {
        let text = match e {
            ApiError::TooManyRequests(..) => {
                "Too many sign-in attempts from this address. Wait a few minutes and try again."
            }
            _ => "Sign-in is unavailable for a moment. Try again shortly.",
        };
        let status = e.into_response().status();
        return Ok(refuse(status, text));
    }
    let caller = keys::authenticate(db, f.key.trim(), now)
        .await
        .map_err(|e| internal("authenticating a sign-in", &e))?;
    let client = || client_id(req, &state.http.client_ip);
    let caller = match caller {
        None => {
            if let Some(suppressed) = crate::log_gate::admit("admin_sign_in_failed") {
                tracing::warn!(
                    client = client(),
                    suppressed,
                    "dashboard sign-in failed: unknown or revoked key"
                );
            }
            return Ok(refuse(
                StatusCode::UNAUTHORIZED,
                "This key is unknown or revoked.",
            ));
        }
        Some(c) if c.scope != Scope::Admin => {
            if let Some(suppressed) = crate::log_gate::admit("admin_sign_in_failed") {
                tracing::warn!(
                    client = client(),
                    key_id = c.key_id,
                    suppressed,
                    "dashboard sign-in refused: the key is not of scope admin"
                );
            }
            return Ok(refuse(
                StatusCode::FORBIDDEN,
                &format!(
                    "This key is of scope {}; the dashboard needs a key of scope admin.",
                    c.scope.as_str()
                ),
            ));
        }
        Some(c) => c,
    };
    // A new session replaces the one this browser had (no session piles up per sign-in,
    // and a session planted before the sign-in does not survive it).
    if let Some(old) = session::token_of(req) {
        session::delete_token(db, &old)
            .await
            .map_err(|e| internal("ending the previous admin session", &e))?;
    }
    let token = session::create(db, caller.key_id, now)
        .await
        .map_err(|e| internal("opening an admin session", &e))?;
    tracing::info!(key_id = caller.key_id, "admin signed in to the dashboard");
    let mut resp = redirect(next);
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&token, session::is_secure(req))
            .parse()
            .expect("a valid header value"),
    );
    Ok(resp)
}

/// `POST /admin/logout`: ends the session (CSRF-checked like every form).
#[poem::handler]
pub(crate) async fn sign_out(
    req: &Request,
    state: Data<&ApiState>,
    session: Data<&Session>,
) -> poem::Result<Response> {
    session::delete(state.engine.db(), session.id)
        .await
        .map_err(|e| internal("ending an admin session", &e))?;
    let mut resp = redirect("/admin/login?signed_out=1");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(session::is_secure(req))
            .parse()
            .expect("a valid header value"),
    );
    Ok(resp)
}
