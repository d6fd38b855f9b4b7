//! NUL bytes (U+0000) are refused at the door, in one place: Postgres `TEXT` cannot hold
//! them (`invalid byte sequence for encoding "UTF8": 0x00`, a 500) while SQLite stores them
//! as they are, so the same request would fail on one storage and write an odd row on the
//! other. [`nul_middleware`] answers 400 `bad_request` for a NUL in the path, the query
//! (percent-encoded `%00`; HTTP itself cannot carry a raw one there) or any string or key
//! of a JSON body, before a route runs.
//!
//! The Stripe webhook is the exception: its raw body must reach the signature check
//! unchanged, and refusing a genuine event would make Stripe deliver it again for three
//! days and then drop it (a payment never recorded, a seller never paid). Once its
//! signature verifies, the route replaces each NUL with U+FFFD ([`replace_nul`]) and
//! records the event: no Stripe-made field (ids, types, amounts) contains one, only free
//! text such as metadata or a shipping name could.

use poem::http::{StatusCode, header};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use serde_json::Value;

/// The character a NUL is replaced with in a stored webhook event.
pub const REPLACEMENT: char = '\u{FFFD}';

/// True when `s`, percent-decoded, holds a NUL: a `%00` (decoding is one pass, so `%2500`
/// is the text `%00`, not a NUL).
pub fn has_encoded_nul(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.contains(&0) || bytes.windows(3).any(|w| w == b"%00")
}

/// True when a string or an object key anywhere in `value` holds a NUL.
pub fn json_has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// `value` with every NUL in its strings and keys replaced by [`REPLACEMENT`], and how many
/// were replaced.
pub fn replace_nul(value: Value) -> (Value, usize) {
    fn fix(s: String, count: &mut usize) -> String {
        let n = s.matches('\0').count();
        if n == 0 {
            return s;
        }
        *count += n;
        s.replace('\0', &REPLACEMENT.to_string())
    }
    fn walk(value: Value, count: &mut usize) -> Value {
        match value {
            Value::String(s) => Value::String(fix(s, count)),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| walk(v, count)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (fix(k, count), walk(v, count)))
                    .collect(),
            ),
            other @ (Value::Null | Value::Bool(_) | Value::Number(_)) => other,
        }
    }
    let mut count = 0;
    let value = walk(value, &mut count);
    (value, count)
}

fn refused(part: &str) -> poem::Error {
    poem::Error::from_string(
        format!("the {part} contains a NUL character (U+0000), which is not accepted"),
        StatusCode::BAD_REQUEST,
    )
}

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "application/json" || v.ends_with("+json")
        })
}

/// Refuses requests with a NUL in the path, the query or a JSON body (see the module docs).
/// Bodies are already bounded by [`crate::body_limit`].
pub async fn nul_middleware<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    if has_encoded_nul(req.uri().path()) {
        return Err(refused("path"));
    }
    if req.uri().query().is_some_and(has_encoded_nul) {
        return Err(refused("query"));
    }
    // The webhook's body is checked by its signature first, then made safe (module docs).
    if is_json(&req) && req.uri().path() != crate::routes::webhooks::PATH {
        let body = req.take_body().into_bytes().await?;
        if let Ok(value) = serde_json::from_slice::<Value>(&body)
            && json_has_nul(&value)
        {
            return Err(refused("JSON body"));
        }
        // Not JSON: the route says so.
        req.set_body(Body::from(body));
    }
    next.call(req).await.map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_nuls_are_found_and_encoded_percents_are_not_nuls() {
        assert!(has_encoded_nul("/v1/jobs/%00"));
        assert!(has_encoded_nul("kind=a%00b"));
        assert!(!has_encoded_nul("kind=a%2500b"));
        assert!(!has_encoded_nul("kind=100%25"));
        assert!(!has_encoded_nul("/v1/jobs/100"));
    }

    #[test]
    fn nuls_in_strings_and_keys_are_found_and_replaced() {
        let v = serde_json::json!({"a": [1, "x\u{0}y"], "k\u{0}": true});
        assert!(json_has_nul(&v));
        let (fixed, n) = replace_nul(v);
        assert_eq!(n, 2);
        assert!(!json_has_nul(&fixed));
        assert_eq!(fixed["a"][1], "x\u{FFFD}y");
        assert_eq!(fixed["k\u{FFFD}"], true);
        assert!(!json_has_nul(&serde_json::json!({"a": "\\u0000"})));
    }
}
