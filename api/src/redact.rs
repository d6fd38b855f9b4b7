//! Redaction of what jobs hold before anyone outside the database sees it, in the one place
//! both readers use: the API (`GET /v1/jobs`, `GET /v1/jobs/{id}`, any key scope) and the
//! admin dashboard. In args, a value is replaced by `[redacted]` when its key names a secret
//! or personal datum (token, secret, password, key, e-mail, …), or when the value itself
//! looks like one (a Stripe or veza key, a webhook secret, an e-mail address, a bearer
//! token). In free text (errors, notes), each word that looks like one is replaced: an SMTP
//! refusal quotes the recipient's address.

use serde_json::Value;

/// What a redacted value is replaced by.
pub const REDACTED: &str = "[redacted]";

/// Parts of key names whose values are never shown.
const SECRET_KEY_PARTS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "key",
    "email",
    "e_mail",
    "mail",
    "auth",
    "cookie",
    "session",
    "credential",
    "signature",
    "private",
    "iban",
    "card",
    "phone",
    "ssn",
];

/// True when a value under `key` is never shown.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// True when `value` looks like a secret or an e-mail address whatever its key.
pub fn looks_secret(value: &str) -> bool {
    let v = value.trim();
    const PREFIXES: &[&str] = &[
        "sk_", "rk_", "pk_live_", "whsec_", "vz_", "ghp_", "xoxb-", "Bearer ", "bearer ",
    ];
    if PREFIXES.iter().any(|p| v.starts_with(p)) {
        return true;
    }
    // An e-mail address: something@something.tld, no spaces.
    if let Some((local, domain)) = v.split_once('@') {
        return !local.is_empty() && domain.contains('.') && !v.contains(char::is_whitespace);
    }
    false
}

/// `args` with secrets replaced by [`REDACTED`], at any depth.
pub fn redact(args: &Value) -> Value {
    match args {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) && !v.is_null() {
                        Value::String(REDACTED.to_owned())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(s) if looks_secret(s) => Value::String(REDACTED.to_owned()),
        other => other.clone(),
    }
}

/// `text` (an error, a note) with each word that looks like a secret or an e-mail address
/// ([`looks_secret`]) replaced by [`REDACTED`]; the punctuation around a word (`<…>:`) and
/// the spacing stay.
pub fn redact_text(text: &str) -> String {
    const AROUND: &[char] = &[
        '<', '>', '(', ')', '[', ']', '{', '}', ',', ';', ':', '"', '\'',
    ];
    text.split_inclusive(char::is_whitespace)
        .map(|token| {
            let word = token.trim_end_matches(char::is_whitespace);
            let inner = word.trim_matches(AROUND);
            if looks_secret(inner) {
                token.replacen(inner, REDACTED, 1)
            } else {
                token.to_owned()
            }
        })
        .collect()
}

/// JSON text (a stored step result), parsed and [`redact`]ed; text that is not JSON is
/// kept as a string, its addresses and keys redacted.
pub fn redact_json_text(text: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => redact(&value),
        Err(_) => serde_json::Value::String(redact_text(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let args = json!({
            "user_id": 7,
            "api_token": "abc",
            "Password": "hunter2",
            "nested": {"stripe_key": "x", "client_secret": "y", "to_email": "a@b.example"},
            "list": [{"session_id": "s"}, "someone@example.com", "sk_live_123", "plain"],
            "note": "hello",
            "email": null
        });
        let out = redact(&args);
        assert_eq!(
            out,
            json!({
                "user_id": 7,
                "api_token": REDACTED,
                "Password": REDACTED,
                "nested": {"stripe_key": REDACTED, "client_secret": REDACTED, "to_email": REDACTED},
                "list": [{"session_id": REDACTED}, REDACTED, REDACTED, "plain"],
                "note": "hello",
                "email": null
            })
        );
    }

    #[test]
    fn addresses_and_keys_in_free_text_are_redacted() {
        assert_eq!(
            redact_text("554 5.7.1 <ana.1@mail.example>: rejected, key sk_live_1\nretry"),
            "554 5.7.1 <[redacted]>: rejected, key [redacted]\nretry"
        );
        let plain = "cannot delete media/a.jpg: No such file (os error 2)";
        assert_eq!(redact_text(plain), plain);
    }

    #[test]
    fn ordinary_values_are_kept() {
        let args = json!({"transfer_id": 3, "export_id": 9, "kind": "a@b", "path": "covers/1.jpg"});
        assert_eq!(redact(&args), args);
    }
}
