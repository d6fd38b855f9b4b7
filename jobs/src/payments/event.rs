//! Stripe events as received by the webhook: parsed from the (verified) raw body as plain
//! JSON, so that an event whose object the SDK cannot type (another API version, a new
//! field) is still recorded and handled.

use serde_json::Value;

/// A Stripe event: its id, its type and `data.object`, plus the whole event for the record.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeEvent {
    /// `evt_…`: the dedupe key.
    pub id: String,
    /// `payment_intent.succeeded`, `charge.refunded`, …
    pub type_: String,
    /// `data.object`.
    pub object: Value,
    /// The whole event.
    pub raw: Value,
}

/// Why a body is not a Stripe event.
#[derive(Debug, thiserror::Error)]
pub enum EventParseError {
    /// Not JSON.
    #[error("the body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON without an event's `id`, `type` or `data.object`.
    #[error("the body is not a Stripe event: {0} is missing")]
    Missing(&'static str),
}

impl StripeEvent {
    /// Parses an event from its JSON text (the webhook's raw body, after its signature has
    /// been verified, e.g. with `stripe_webhook::Webhook::construct_event`).
    pub fn from_json(body: &str) -> Result<Self, EventParseError> {
        Self::from_value(serde_json::from_str(body)?)
    }

    /// An event from parsed JSON.
    pub fn from_value(raw: Value) -> Result<Self, EventParseError> {
        let id = raw
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(EventParseError::Missing("id"))?
            .to_owned();
        let type_ = raw
            .get("type")
            .and_then(Value::as_str)
            .ok_or(EventParseError::Missing("type"))?
            .to_owned();
        let object = raw
            .get("data")
            .and_then(|d| d.get("object"))
            .filter(|o| o.is_object())
            .ok_or(EventParseError::Missing("data.object"))?
            .clone();
        Ok(Self {
            id,
            type_,
            object,
            raw,
        })
    }

    /// `data.object.id`.
    pub fn object_id(&self) -> Option<&str> {
        str_field(&self.object, "id")
    }
}

/// A string field of a Stripe object.
pub(crate) fn str_field<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    object.get(name).and_then(Value::as_str)
}

/// An integer field of a Stripe object.
pub(crate) fn int_field(object: &Value, name: &str) -> Option<i64> {
    object.get(name).and_then(Value::as_i64)
}

/// A boolean field of a Stripe object.
pub(crate) fn bool_field(object: &Value, name: &str) -> Option<bool> {
    object.get(name).and_then(Value::as_bool)
}

/// An expandable reference: the id whether Stripe sent `"pi_…"` or `{"id": "pi_…", …}`.
pub(crate) fn ref_id<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    match object.get(name)? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("id").and_then(Value::as_str),
        _ => None,
    }
}

/// `metadata[key]`.
pub(crate) fn metadata<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_read_from_stripes_json() {
        let e = StripeEvent::from_json(
            r#"{"id":"evt_1","object":"event","type":"charge.refunded",
                "data":{"object":{"id":"ch_1","payment_intent":{"id":"pi_1"},"metadata":{"order_id":"7"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            (e.id.as_str(), e.type_.as_str()),
            ("evt_1", "charge.refunded")
        );
        assert_eq!(e.object_id(), Some("ch_1"));
        assert_eq!(ref_id(&e.object, "payment_intent"), Some("pi_1"));
        assert_eq!(metadata(&e.object, "order_id"), Some("7"));
    }

    #[test]
    fn what_is_not_an_event_is_refused() {
        assert!(matches!(
            StripeEvent::from_json("{}"),
            Err(EventParseError::Missing("id"))
        ));
        assert!(matches!(
            StripeEvent::from_json(r#"{"id":"evt_1","type":"x","data":{}}"#),
            Err(EventParseError::Missing("data.object"))
        ));
        assert!(matches!(
            StripeEvent::from_json("nope"),
            Err(EventParseError::Json(_))
        ));
    }
}
