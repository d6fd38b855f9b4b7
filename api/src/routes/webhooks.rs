//! `/v1/webhooks/stripe`: Stripe events, authenticated by their `Stripe-Signature` (no API
//! key; see [`crate::auth::authenticates_itself`]).
//!
//! The raw body is verified against every `STRIPE_WEBHOOK_SECRET` (rotation), then
//! [`jobs::payments::process_event`] records the event and its effects in one transaction
//! and the route answers as soon as it commits: nothing here waits for Stripe. A redelivery
//! is a 200 that changes nothing. A database failure is a 503, so that Stripe delivers the
//! event again (it retries for three days). An event of the other mode than
//! `STRIPE_SECRET_KEY` (a test event at a live deployment) is refused.

use engine::Actor;
use jobs::payments::{self, EventOutcome, PaymentsError, StripeEvent, VerifyError};
use poem_openapi::param::Header;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{Object, OpenApi};

use super::ApiTags;
use crate::auth::{anonymous_gate, client_id};
use crate::problem::ApiError;
use crate::state::ApiState;

/// The webhook's path (the `oai` attribute below spells it too).
pub const PATH: &str = "/v1/webhooks/stripe";

/// What the event did.
#[derive(Debug, Clone, Object)]
pub struct WebhookAnswer {
    /// The event id (`evt_…`).
    pub event_id: String,
    /// `transfers_created`, `refunded`, `partial_refund`, `ignored`, `rejected`, or
    /// `duplicate` for a redelivery (nothing was done again).
    pub outcome: String,
    /// The outcome's details (transfer ids, reason…).
    pub details: serde_json::Value,
}

/// The webhook route.
pub struct WebhooksApi(pub ApiState);

#[OpenApi(tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Receive a Stripe event (the endpoint to register in Stripe's dashboard).
    ///
    /// No API key: the `Stripe-Signature` header (HMAC-SHA256 of the raw body, 5-minute
    /// tolerance) is checked against each `STRIPE_WEBHOOK_SECRET`. 400 for a missing or bad
    /// signature, a stale timestamp, a body that is not an event, or an event whose
    /// `livemode` differs from `STRIPE_SECRET_KEY`'s mode (`livemode_mismatch`), with
    /// nothing written; NUL characters in an authentic event are stored as U+FFFD;
    /// 200 for every event recorded, handled or ignored, and for a redelivery; 409 when the
    /// event names an order this database does not have yet, and 503 when the database is
    /// down or no secret is configured — Stripe delivers those again.
    #[oai(path = "/v1/webhooks/stripe", method = "post")]
    async fn stripe(
        &self,
        req: &poem::Request,
        /// `t=…,v1=…` as Stripe sends it.
        #[oai(name = "Stripe-Signature")]
        signature: Header<Option<String>>,
        /// The event, exactly as Stripe sent it (JSON).
        body: Binary<Vec<u8>>,
    ) -> Result<Json<WebhookAnswer>, ApiError> {
        let secrets = &self.0.jobs.payments.webhook_secrets;
        if secrets.is_empty() {
            tracing::error!("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is unset");
            return Err(ApiError::unavailable_because(
                "STRIPE_WEBHOOK_SECRET is not configured; the event is not accepted",
            ));
        }
        let Some(signature) = signature.0 else {
            // Not from Stripe: counted against the sender's budget.
            anonymous_gate(&self.0, req).await?;
            return Err(ApiError::bad_request_of(
                "invalid_signature",
                "the Stripe-Signature header is missing",
            ));
        };
        let Ok(payload) = std::str::from_utf8(&body.0) else {
            return Err(ApiError::bad_request("the body is not UTF-8 JSON"));
        };
        let now_secs = self.0.engine.clock().now_ms().div_euclid(1000);
        let event = match payments::verify_event_with_any(payload, &signature, secrets, now_secs) {
            Ok(event) => event,
            Err(VerifyError::Signature(e)) => {
                // Counted against the sender's budget (429 once spent), and logged at most
                // every few seconds: a flood of forgeries writes no line per request.
                anonymous_gate(&self.0, req).await?;
                if let Some(suppressed) = crate::log_gate::admit("webhook_bad_signature") {
                    tracing::warn!(
                        error = %e,
                        client = client_id(req, &self.0.http.client_ip),
                        suppressed,
                        "Stripe webhook refused: signature"
                    );
                }
                return Err(ApiError::bad_request_of(
                    "invalid_signature",
                    format!("the Stripe-Signature does not verify: {e}"),
                ));
            }
            Err(e @ VerifyError::Parse(_)) => return Err(ApiError::bad_request(e.to_string())),
        };
        // Free text in an authentic event may hold NUL characters, which Postgres cannot
        // store: replaced, not refused (see `crate::nul_bytes`).
        let event = match crate::nul_bytes::replace_nul(event.raw.clone()) {
            (_, 0) => event,
            (raw, replaced) => {
                tracing::info!(event = %event.id, replaced, "NUL characters in a Stripe event replaced with U+FFFD");
                StripeEvent::from_value(raw).map_err(|e| ApiError::bad_request(e.to_string()))?
            }
        };
        if let Some(key_live) = self
            .0
            .jobs
            .payments
            .stripe
            .as_ref()
            .and_then(|s| key_livemode(&s.secret_key))
            && let Some(event_live) = event
                .raw
                .get("livemode")
                .and_then(serde_json::Value::as_bool)
            && event_live != key_live
        {
            let mode = |live: bool| if live { "live" } else { "test" };
            tracing::warn!(event = %event.id, event_mode = mode(event_live), key_mode = mode(key_live), "Stripe webhook refused: livemode differs from STRIPE_SECRET_KEY's");
            return Err(ApiError::bad_request_of(
                "livemode_mismatch",
                format!(
                    "this is a {}-mode event but STRIPE_SECRET_KEY is a {}-mode key; nothing was recorded",
                    mode(event_live),
                    mode(key_live)
                ),
            ));
        }
        let actor = Actor::webhook(&event.id);
        match payments::process_event(&self.0.engine, &event, &actor).await {
            Ok(outcome) => Ok(Json(answer(&event.id, &outcome))),
            Err(e @ PaymentsError::OrderNotFound(_)) => {
                Err(ApiError::conflict("order_not_found", e.to_string()))
            }
            Err(e) => Err(ApiError::unavailable(
                "the event could not be recorded now; Stripe will deliver it again",
                &e,
            )),
        }
    }
}

/// Whether a Stripe secret key is a live-mode one (`sk_live_…`, `rk_live_…`), a test-mode
/// one (`sk_test_…`, `rk_test_…`), or unknown (then events of both modes are taken).
fn key_livemode(secret_key: &str) -> Option<bool> {
    let rest = secret_key
        .strip_prefix("sk_")
        .or_else(|| secret_key.strip_prefix("rk_"))?;
    if rest.starts_with("live_") {
        Some(true)
    } else if rest.starts_with("test_") {
        Some(false)
    } else {
        None
    }
}

fn answer(event_id: &str, outcome: &EventOutcome) -> WebhookAnswer {
    let mut details = serde_json::to_value(outcome).unwrap_or_default();
    if let Some(map) = details.as_object_mut() {
        map.remove("outcome");
    }
    WebhookAnswer {
        event_id: event_id.to_owned(),
        outcome: outcome.name().to_owned(),
        details,
    }
}
