//! Dashboard sessions: an admin API key is exchanged for a random session token, kept in a
//! cookie. Only the token's SHA-256 is stored (`admin_sessions`), so that the table leaks
//! nothing usable. Every request looks the session up joined with its key, so a session
//! works in every API process on the database and dies at once when its key is revoked (or
//! is no longer of scope admin), besides expiring after `ADMIN_SESSION_TTL`.
//!
//! CSRF: each session's form token is derived from its secret token (SHA-256 over a label
//! and the token), so it is unguessable without the cookie, needs no storage, and is checked
//! on every state-changing request by [`super::guard`].

use engine::{Db, Millis};
use poem::Request;
use poem::http::header;
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;

use super::settings;

/// The session cookie when it is `Secure`: the `__Host-` prefix makes browsers take it only
/// from this host over HTTPS, with `Path=/` and no `Domain`, so another subdomain or a
/// plain-HTTP answer cannot plant or replace it.
pub const COOKIE: &str = "__Host-veza_admin_session";
/// The session cookie without `Secure` (`ADMIN_COOKIE_SECURE=never`, plain HTTP on a trusted
/// network): browsers refuse a `__Host-` cookie that is not `Secure`.
pub const PLAIN_COOKIE: &str = "veza_admin_session";
/// The form field (and `X-CSRF-Token` header) carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// A signed-in admin.
#[derive(Debug, Clone)]
pub struct Session {
    /// `admin_sessions.id`.
    pub id: i64,
    /// The API key that signed in (the audit trail's actor is `api_key:{id}`).
    pub key_id: i64,
    /// That key's name.
    pub key_name: String,
    /// That key's display prefix.
    pub key_prefix: String,
    /// When the session ends.
    pub expires_at: Millis,
    /// The token of this session's forms.
    pub csrf: String,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The CSRF token of the session whose secret token is `token`.
pub fn csrf_of(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"veza-jobs admin csrf\0");
    h.update(token.as_bytes());
    hex::encode(h.finalize())
}

/// True when `presented` is `expected` (constant time).
pub fn csrf_matches(expected: &str, presented: &str) -> bool {
    !presented.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// Opens a session for admin key `key_id` and returns its token (for the cookie). Expired
/// sessions are removed on the way.
pub async fn create(db: &Db, key_id: i64, now: Millis) -> Result<String, sqlx::Error> {
    sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(db)
        .await?;
    let token = hex::encode(rand::random::<[u8; 32]>());
    let ttl = i64::try_from(settings().session_ttl.as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO admin_sessions (token_hash, api_key_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(hash(&token))
    .bind(key_id)
    .bind(now)
    .bind(now.saturating_add(ttl))
    .execute(db)
    .await?;
    Ok(token)
}

/// The live session of `token`: unexpired, and its key unrevoked and of scope admin.
pub async fn lookup(db: &Db, token: &str, now: Millis) -> Result<Option<Session>, sqlx::Error> {
    if token.len() != 64 {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT s.id, s.api_key_id, k.name, k.prefix, s.expires_at FROM admin_sessions s \
         JOIN api_keys k ON k.id = s.api_key_id \
         WHERE s.token_hash = $1 AND s.expires_at > $2 AND k.revoked_at IS NULL \
           AND k.scope = 'admin'",
    )
    .bind(hash(token))
    .bind(now)
    .fetch_optional(db)
    .await?;
    row.map(|r| {
        Ok(Session {
            id: r.try_get(0)?,
            key_id: r.try_get(1)?,
            key_name: r.try_get(2)?,
            key_prefix: r.try_get(3)?,
            expires_at: r.try_get(4)?,
            csrf: csrf_of(token),
        })
    })
    .transpose()
}

/// Ends session `id` (sign-out).
pub async fn delete(db: &Db, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM admin_sessions WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// Ends the session whose token is `token`, if there is one (a new sign-in replaces the
/// browser's previous session).
pub async fn delete_token(db: &Db, token: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM admin_sessions WHERE token_hash = $1")
        .bind(hash(token))
        .execute(db)
        .await?;
    Ok(())
}

/// The cookie names read: the `__Host-` one when the cookie is Secure, the plain one when
/// it is not (with `auto`, either; never the plain one when `always`, so that a cookie
/// planted over plain HTTP is not taken).
fn cookie_names() -> &'static [&'static str] {
    match settings().cookie_secure {
        CookieSecure::Always => &[COOKIE],
        CookieSecure::Never => &[PLAIN_COOKIE],
        CookieSecure::Auto => &[COOKIE, PLAIN_COOKIE],
    }
}

/// The session token in the request's cookies.
pub fn token_of(req: &Request) -> Option<String> {
    let names = cookie_names();
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| names.contains(name))
        .map(|(_, value)| value.trim().to_owned())
}

/// Whether the cookie gets `Secure`: always (the default), never, or (`auto`) when the
/// request came over TLS as a proxy in front reports it (`X-Forwarded-Proto: https`, or
/// `Forwarded: proto=https`).
pub fn is_secure(req: &Request) -> bool {
    match settings().cookie_secure {
        CookieSecure::Always => true,
        CookieSecure::Never => false,
        CookieSecure::Auto => {
            let forwarded_https = req
                .headers()
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').next().unwrap_or("").trim() == "https");
            let rfc7239_https = req
                .headers()
                .get(header::FORWARDED)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
            forwarded_https || rfc7239_https || req.uri().scheme_str() == Some("https")
        }
    }
}

/// The `Set-Cookie` value that stores `token`: `__Host-…; Secure` (with `Path=/`, as the
/// prefix demands), or the plain name without `Secure`.
pub fn set_cookie(token: &str, secure: bool) -> String {
    cookie(token, settings().session_ttl.as_secs(), secure)
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(secure: bool) -> String {
    cookie("", 0, secure)
}

fn cookie(value: &str, max_age: u64, secure: bool) -> String {
    if secure {
        format!("{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict; Secure")
    } else {
        format!("{PLAIN_COOKIE}={value}; Path=/admin; Max-Age={max_age}; HttpOnly; SameSite=Strict")
    }
}

/// `ADMIN_COOKIE_SECURE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieSecure {
    /// Secure when the request came over TLS (`X-Forwarded-Proto: https`).
    Auto,
    /// Always Secure (the default: browsers also keep Secure cookies of
    /// `http://localhost`).
    Always,
    /// Never Secure (plain HTTP on a trusted network).
    Never,
}
