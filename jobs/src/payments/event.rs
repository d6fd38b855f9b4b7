//! Stripe events as received by the webhook: parsed from the (verified) raw body as plain
//! JSON, so that an event whose object the SDK cannot type (another API version, a new
//! field) is still recorded and handled.

use serde_json::{Map, Value};

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

    /// What `data.object` is (`payment_intent`, `charge`, `refund`, …): its `object` field,
    /// else the first part of the event type.
    fn object_kind(&self) -> &str {
        str_field(&self.object, "object")
            .unwrap_or_else(|| self.type_.split('.').next().unwrap_or_default())
    }

    /// The payment intent the event is about: the object itself, or the one it references.
    pub fn payment_intent_id(&self) -> Option<&str> {
        match self.object_kind() {
            "payment_intent" => self.object_id(),
            _ => ref_id(&self.object, "payment_intent"),
        }
    }

    /// The charge the event is about: the object itself, or the one it references (a
    /// payment intent's `latest_charge`).
    pub fn charge_id(&self) -> Option<&str> {
        match self.object_kind() {
            "charge" => self.object_id(),
            _ => ref_id(&self.object, "charge").or_else(|| ref_id(&self.object, "latest_charge")),
        }
    }

    /// The copy of the event that `webhook_events.payload` stores: the envelope and the
    /// fields of `data.object` the engine reads (amounts, currency, status, the ids that
    /// link it to an order), nothing else.
    ///
    /// An allow-list, not a deny-list, because the objects Stripe sends carry personal data
    /// in many places, and new ones appear with API versions: a payment intent's
    /// `receipt_email`, `shipping` (name, phone, address), `customer` (an id, or the
    /// expanded customer with e-mail, name, phone, address), expanded `payment_method` /
    /// `latest_charge` / `last_payment_error.payment_method` with `billing_details`; a
    /// charge's `billing_details`, `receipt_email`, `receipt_url`, `shipping`,
    /// `payment_method_details` (card last4, fingerprint, country), `description`; a
    /// customer event's whole object; `data.previous_attributes` (old values of any of
    /// these). Expandable references are reduced to their id, and `metadata` to the
    /// `order_id` our backend sets. The event is processed from the full object before
    /// this copy is made.
    pub fn stored_payload(&self) -> Value {
        let mut envelope = Map::new();
        for name in STORED_ENVELOPE_FIELDS {
            if let Some(v) = self.raw.get(*name) {
                envelope.insert((*name).to_owned(), v.clone());
            }
        }
        let mut object = Map::new();
        for name in STORED_OBJECT_FIELDS {
            if let Some(v) = self.object.get(*name) {
                let v = match v {
                    // An expanded object (a charge, a payment intent) holds personal data
                    // of its own: keep its id.
                    Value::Object(o) => o.get("id").cloned().unwrap_or(Value::Null),
                    other => other.clone(),
                };
                object.insert((*name).to_owned(), v);
            }
        }
        if let Some(order_id) = self.object.get("metadata").and_then(|m| m.get("order_id")) {
            object.insert(
                "metadata".to_owned(),
                serde_json::json!({ "order_id": order_id }),
            );
        }
        envelope.insert(
            "data".to_owned(),
            serde_json::json!({ "object": Value::Object(object) }),
        );
        Value::Object(envelope)
    }
}

/// The event's own fields kept in the stored copy ([`StripeEvent::stored_payload`]).
const STORED_ENVELOPE_FIELDS: &[&str] = &[
    "id",
    "object",
    "type",
    "api_version",
    "created",
    "livemode",
    "pending_webhooks",
    "request",
];

/// The fields of `data.object` kept in the stored copy: what [`super::process_event`]
/// reads, and what an admin needs to follow the money. None of them is about the buyer.
const STORED_OBJECT_FIELDS: &[&str] = &[
    "id",
    "object",
    "status",
    "amount",
    "amount_captured",
    "amount_received",
    "amount_refunded",
    "currency",
    "captured",
    "paid",
    "refunded",
    "reason",
    "payment_intent",
    "charge",
    "latest_charge",
    "balance_transaction",
    "transfer_group",
    "created",
    "livemode",
];

/// The payload that replaces a stored event's after its erasure (`by`: `hard_delete`,
/// `retention`). The row, its id and outcome stay.
pub(crate) fn erased_payload(by: &str) -> String {
    serde_json::json!({ "erased": format!("by {by}") }).to_string()
}

/// SQL condition on `webhook_events` (its columns unqualified) that holds for the stored
/// events about the payments of buyer `$1`, whatever their outcome: linked to one of their
/// orders, or about a payment intent or charge of theirs — one their orders recorded, or
/// one named by an event linked to their orders (a `payment_intent.succeeded` refused for
/// its amount never records its payment intent on the order, and a later `charge.refunded`
/// without metadata for that payment is linked to no order). What the buyer's erasure
/// erases and their data export lists.
pub(crate) const OF_BUYER: &str = "(order_id IN (SELECT id FROM orders WHERE buyer_id = $1) \
     OR payment_intent_id IN (SELECT stripe_payment_intent_id FROM orders WHERE buyer_id = $1) \
     OR charge_id IN (SELECT stripe_charge_id FROM orders WHERE buyer_id = $1) \
     OR payment_intent_id IN (SELECT e.payment_intent_id FROM webhook_events e \
          JOIN orders o ON o.id = e.order_id WHERE o.buyer_id = $1) \
     OR charge_id IN (SELECT e.charge_id FROM webhook_events e \
          JOIN orders o ON o.id = e.order_id WHERE o.buyer_id = $1))";

/// SQL: the stored payload was not erased yet (see [`erased_payload`]), so an erasure
/// counts each payload once.
pub(crate) const PAYLOAD_NOT_ERASED: &str = "payload NOT LIKE '{\"erased\":%'";

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
    fn the_stored_copy_keeps_what_the_engine_reads_and_nothing_about_the_buyer() {
        let e = StripeEvent::from_json(
            r#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","livemode":false,
                "data":{"object":{"id":"pi_1","object":"payment_intent","amount":1100,
                  "amount_received":1100,"currency":"eur","status":"succeeded",
                  "latest_charge":{"id":"ch_1","billing_details":{"email":"ana@example.com"}},
                  "receipt_email":"ana@example.com","customer":{"id":"cus_1","name":"Ana"},
                  "shipping":{"name":"Ana","address":{"line1":"1 Rue X"}},
                  "description":"for Ana","metadata":{"order_id":"7","note":"call Ana"}},
                  "previous_attributes":{"receipt_email":"old@example.com"}}}"#,
        )
        .unwrap();
        let stored = StripeEvent::from_value(e.stored_payload()).unwrap();
        let text = stored.raw.to_string();
        for personal in ["ana@example.com", "Ana", "Rue", "old@example.com", "cus_1"] {
            assert!(!text.contains(personal), "{personal} in {text}");
        }
        assert_eq!(
            (stored.id.as_str(), stored.type_.as_str()),
            ("evt_1", "payment_intent.succeeded")
        );
        assert_eq!(int_field(&stored.object, "amount_received"), Some(1100));
        assert_eq!(metadata(&stored.object, "order_id"), Some("7"));
        assert_eq!(stored.payment_intent_id(), Some("pi_1"));
        assert_eq!(stored.charge_id(), Some("ch_1"));
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
