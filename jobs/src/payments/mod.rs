//! Payments: the transactional core of the Stripe webhook, the payments jobs' settings and
//! their registration.
//!
//! The HTTP route (in `api`) verifies the signature over the raw body, then calls
//! [`process_event`]:
//!
//! ```no_run
//! # async fn route(engine: engine::Engine, body: &str, sig: &str, secret: &str) {
//! let event = jobs::payments::verify_event(body, sig, secret).expect("400 on a bad signature");
//! let actor = engine::Actor::webhook(&event.id);
//! let outcome = jobs::payments::process_event(&engine, &event, &actor).await;
//! // Ok(_) → 200; Err(e) → e.status_hint() (5xx makes Stripe deliver again)
//! # }
//! ```
//!
//! Each event is handled once, in one transaction with its `webhook_events` row (a
//! redelivery finds the row and changes nothing):
//!
//! - `payment_intent.succeeded` (`metadata.order_id`): one `pending` seller transfer per
//!   order item and one `transfer_seller` job each;
//! - a succeeded refund — `charge.refunded`, or `refund.created` / `refund.updated` with
//!   status `succeeded` — that completes the refund of the payment: every `completed`
//!   transfer → `reversal_pending` with a `reverse_transfer` job; every `pending` / `failed`
//!   transfer that no payout attempt has touched → `cancelled` (a refund is never followed
//!   by a payout); one whose payout may be in flight is left to its payout job, which sees
//!   the refund and reverses or cancels;
//! - a partial refund: recorded in `payment_refunds` and listed for an admin
//!   ([`orders::list_partial_refunds`]); nothing is reversed automatically;
//! - any other type: recorded as `ignored`.
//!
//! Whatever the outcome, the stored row is linked to the event's order whenever it is known
//! (`metadata.order_id`, or the order paid by its payment intent or charge), carries the
//! payment intent and charge ids, and its payload is a copy without personal fields
//! ([`StripeEvent::stored_payload`]): the buyer's erasure finds every event of theirs, and
//! [`retention`] deletes events after `WEBHOOK_EVENT_RETENTION`.

pub mod config;
pub mod event;
pub mod orders;
pub mod retention;

use std::sync::Arc;

use engine::scheduler::Schedule;
use engine::state_machine::{Actor, TransitionError};
use engine::{Engine, Job, JobPolicy, JobTx, Millis, NewJob, Registry};
use serde::Serialize;

pub use config::PaymentsConfig;
pub use event::{EventParseError, StripeEvent};

use crate::reconcile_transfers::{self, ReconcileSettings, ReconcileTransfers};
use crate::reverse_transfer::{self, ReversalDeps, ReverseTransfer};
use crate::transfer_seller::{self, PayoutDeps, TransferSeller};
use crate::transfers::state::{self, Changes, NewTransfer, TransferStatus};
use crate::transfers::stripe::StripeClient;
use event::{bool_field, int_field, metadata, ref_id, str_field};

/// What processing an event did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum EventOutcome {
    /// The event was processed before: nothing was done.
    Duplicate,
    /// A payment succeeded: these transfers were created, each with its payout job.
    TransfersCreated {
        /// The order.
        order_id: i64,
        /// The new transfers (none when every item had one already).
        transfer_ids: Vec<i64>,
    },
    /// The payment is fully refunded.
    Refunded {
        /// The order.
        order_id: i64,
        /// `completed → reversal_pending`, each with a reversal job.
        reversals: Vec<i64>,
        /// `pending|failed → cancelled`.
        cancelled: Vec<i64>,
        /// Payout possibly in flight: left to the payout job, which reverses or cancels.
        awaiting_payout: Vec<i64>,
        /// `permanently_failed`: an admin decides.
        needs_admin: Vec<i64>,
    },
    /// A partial refund, recorded for an admin.
    PartialRefund {
        /// The order.
        order_id: i64,
        /// The `payment_refunds` row.
        refund_id: i64,
    },
    /// Nothing to do (unknown type, not a marketplace payment, refund not succeeded…).
    Ignored {
        /// Why.
        reason: String,
    },
    /// Understood but refused (bad metadata, amount or currency mismatch): an admin looks.
    Rejected {
        /// Why.
        reason: String,
    },
}

impl EventOutcome {
    /// The name stored in `webhook_events.outcome`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::TransfersCreated { .. } => "transfers_created",
            Self::Refunded { .. } => "refunded",
            Self::PartialRefund { .. } => "partial_refund",
            Self::Ignored { .. } => "ignored",
            Self::Rejected { .. } => "rejected",
        }
    }

    fn order_id(&self) -> Option<i64> {
        match self {
            Self::TransfersCreated { order_id, .. }
            | Self::Refunded { order_id, .. }
            | Self::PartialRefund { order_id, .. } => Some(*order_id),
            Self::Duplicate | Self::Ignored { .. } | Self::Rejected { .. } => None,
        }
    }
}

/// Why an event was not processed. Nothing was recorded: answer with a 5xx so that Stripe
/// delivers it again.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    /// The event names an order this database does not have (yet).
    #[error("order {0} named by the event does not exist")]
    OrderNotFound(i64),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Enqueueing failed.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// A transfer changed concurrently in a way the transaction could not absorb.
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

impl PaymentsError {
    /// The HTTP status the webhook route should answer with.
    pub fn status_hint(&self) -> u16 {
        match self {
            Self::OrderNotFound(_) => 409,
            Self::Database(_) | Self::Engine(_) | Self::Transition(_) => 503,
        }
    }
}

/// Why a webhook body was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Bad signature, bad or old timestamp, bad header: answer 400.
    #[error("webhook signature check failed: {0}")]
    Signature(#[from] stripe_webhook::WebhookError),
    /// Signed, but not an event: answer 400.
    #[error(transparent)]
    Parse(#[from] EventParseError),
}

/// A default log directive for the webhook SDK. `construct_event` is instrumented with
/// `err`, so the SDK logs at ERROR every event it cannot type, although such an event is
/// authentic and handled here (read as plain JSON, see `checked`), and every bad
/// signature, which the route already logs at WARN. [`process_event`] and the route log
/// each outcome, so nothing is lost; `LOG_LEVEL=stripe_webhook=…` still overrides it.
pub const SDK_LOG_DIRECTIVE: &str = "stripe_webhook=off";

/// Verifies a webhook body against its `Stripe-Signature` header with the endpoint's
/// secret (HMAC-SHA256, 5-minute tolerance, several `v1` values accepted) and parses it.
/// `payload` must be the raw body, never re-serialized JSON.
pub fn verify_event(
    payload: &str,
    signature: &str,
    secret: &str,
) -> Result<StripeEvent, VerifyError> {
    checked(
        stripe_webhook::Webhook::construct_event(payload, signature, secret),
        payload,
    )
}

/// [`verify_event`] at a given time (seconds since the epoch), for tests and replays.
pub fn verify_event_at(
    payload: &str,
    signature: &str,
    secret: &str,
    now_secs: i64,
) -> Result<StripeEvent, VerifyError> {
    checked(
        stripe_webhook::Webhook::construct_event_with_timestamp(
            payload, signature, secret, now_secs,
        ),
        payload,
    )
}

/// [`verify_event_at`] against each of `secrets` (a rotation signs with the old and the
/// new secret): the first that verifies wins; a body that is signed but not an event is
/// refused at once; no secret at all verifies nothing.
pub fn verify_event_with_any(
    payload: &str,
    signature: &str,
    secrets: &[String],
    now_secs: i64,
) -> Result<StripeEvent, VerifyError> {
    let mut last = VerifyError::Signature(stripe_webhook::WebhookError::BadSignature);
    for secret in secrets {
        match verify_event_at(payload, signature, secret, now_secs) {
            Ok(event) => return Ok(event),
            Err(e @ VerifyError::Parse(_)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `construct_event` checks the signature and the timestamp first, then types the object
/// with the SDK's structs. `BadParse` therefore means "authentic, but the SDK cannot type
/// this object" (another API version, fewer fields): the event is still ours to record,
/// read as plain JSON.
fn checked(
    verified: Result<stripe_webhook::Event, stripe_webhook::WebhookError>,
    payload: &str,
) -> Result<StripeEvent, VerifyError> {
    match verified {
        Ok(_) | Err(stripe_webhook::WebhookError::BadParse(_)) => {
            Ok(StripeEvent::from_json(payload)?)
        }
        Err(e) => Err(VerifyError::Signature(e)),
    }
}

/// Processes one Stripe event, in one transaction with its `webhook_events` row: see the
/// module documentation. `actor` is recorded in the audit trail of every transfer it
/// changes (usually `Actor::webhook(&event.id)`).
pub async fn process_event(
    engine: &Engine,
    event: &StripeEvent,
    actor: &Actor,
) -> Result<EventOutcome, PaymentsError> {
    let now = engine.clock().now_ms();
    let mut tx = engine.begin().await?;
    // First statement, a write: the dedupe point. A concurrent delivery of the same event
    // waits here for this transaction, then finds the row. On SQLite it also takes the
    // write lock, so everything read below is current.
    let inserted = sqlx::query(
        "INSERT INTO webhook_events (id, type, object_id, outcome, actor, received_at, payload, \
         payment_intent_id, charge_id) \
         VALUES ($1, $2, $3, 'processing', $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.type_)
    .bind(event.object_id())
    .bind(actor.as_str())
    .bind(now)
    // Never the raw body: the buyer's e-mail, name and address stay out of the database.
    .bind(event.stored_payload().to_string())
    // The erasure finds the buyer's events by these too (an event refused before its order
    // recorded the payment).
    .bind(event.payment_intent_id())
    .bind(event.charge_id())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        tracing::info!(event = %event.id, kind = %event.type_, "webhook event received again: nothing to do");
        return Ok(EventOutcome::Duplicate);
    }
    let outcome = match event.type_.as_str() {
        "payment_intent.succeeded" => payment_succeeded(&mut tx, event, actor, now).await?,
        "charge.refunded" => match RefundFact::from_charge(&event.object) {
            Ok(fact) => refund(&mut tx, event, &fact, actor, now).await?,
            Err(outcome) => outcome,
        },
        "refund.created" | "refund.updated" => match RefundFact::from_refund(&event.object) {
            Ok(fact) => refund(&mut tx, event, &fact, actor, now).await?,
            Err(outcome) => outcome,
        },
        other => EventOutcome::Ignored {
            reason: format!("event type {other} is not handled"),
        },
    };
    let note = serde_json::to_string(&outcome).unwrap_or_default();
    let order_id = match outcome.order_id() {
        Some(id) => Some(id),
        None => orders::order_of_event(&mut tx, event).await?,
    };
    sqlx::query("UPDATE webhook_events SET outcome = $1, note = $2, order_id = $3 WHERE id = $4")
        .bind(outcome.name())
        .bind(note)
        .bind(order_id)
        .bind(&event.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(event = %event.id, kind = %event.type_, outcome = ?outcome, "webhook event processed");
    Ok(outcome)
}

/// The order an event names in `metadata.order_id`: `Err(outcome)` when the metadata is
/// absent (`None` inside) or malformed.
fn order_id_from_metadata(object: &serde_json::Value) -> Result<Option<i64>, EventOutcome> {
    match metadata(object, "order_id") {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| EventOutcome::Rejected {
                reason: format!("metadata.order_id {raw:?} is not an order id"),
            }),
    }
}

async fn payment_succeeded(
    tx: &mut JobTx,
    event: &StripeEvent,
    actor: &Actor,
    now: Millis,
) -> Result<EventOutcome, PaymentsError> {
    let pi = &event.object;
    let Some(pi_id) = str_field(pi, "id") else {
        return Ok(EventOutcome::Rejected {
            reason: "the payment intent has no id".into(),
        });
    };
    let order_id = match order_id_from_metadata(pi) {
        Ok(Some(id)) => id,
        Ok(None) => {
            return Ok(EventOutcome::Ignored {
                reason: format!(
                    "payment intent {pi_id} has no metadata.order_id: not a marketplace order"
                ),
            });
        }
        Err(outcome) => return Ok(outcome),
    };
    let order = orders::load(tx, order_id)
        .await?
        .ok_or(PaymentsError::OrderNotFound(order_id))?;
    if order.refunded_at.is_some() {
        return Ok(EventOutcome::Ignored {
            reason: format!("order {order_id} is fully refunded already: no payouts"),
        });
    }
    if let Some(other) = order
        .stripe_payment_intent_id
        .as_deref()
        .filter(|p| *p != pi_id)
    {
        return Ok(EventOutcome::Rejected {
            reason: format!("order {order_id} was paid by payment intent {other}, not {pi_id}"),
        });
    }
    let currency = str_field(pi, "currency").unwrap_or_default();
    let received = int_field(pi, "amount_received")
        .or_else(|| int_field(pi, "amount"))
        .unwrap_or(0);
    if currency != order.currency || received != order.amount_total {
        return Ok(EventOutcome::Rejected {
            reason: format!(
                "payment intent {pi_id} received {received} {currency}, order {order_id} is {} {}",
                order.amount_total, order.currency
            ),
        });
    }
    orders::record_payment(tx, order_id, pi_id, ref_id(pi, "latest_charge"), now).await?;
    let mut transfer_ids = Vec::new();
    for item in orders::items(tx, order_id).await? {
        let new = NewTransfer {
            order_id,
            order_item_id: item.id,
            seller_id: item.seller_id,
            amount: item.amount,
            currency: item.currency.clone(),
        };
        if let Some(id) = state::create_pending(tx, &new, actor, now).await? {
            tx.enqueue(NewJob::new(TransferSeller { transfer_id: id }))
                .await?;
            transfer_ids.push(id);
        }
    }
    Ok(EventOutcome::TransfersCreated {
        order_id,
        transfer_ids,
    })
}

/// A refund as an event reports it.
struct RefundFact<'a> {
    source: &'static str,
    object_id: &'a str,
    order_id: Option<i64>,
    payment_intent: Option<&'a str>,
    charge: Option<&'a str>,
    /// Charge: refunded so far; refund: this refund.
    amount: i64,
    /// Charge: the amount charged.
    charged: Option<i64>,
    /// Charge: Stripe's "fully refunded" flag.
    fully_refunded: bool,
    currency: &'a str,
}

impl<'a> RefundFact<'a> {
    fn from_charge(charge: &'a serde_json::Value) -> Result<Self, EventOutcome> {
        let object_id = str_field(charge, "id").ok_or_else(|| EventOutcome::Rejected {
            reason: "the charge has no id".into(),
        })?;
        Ok(Self {
            source: "charge",
            object_id,
            order_id: order_id_from_metadata(charge)?,
            payment_intent: ref_id(charge, "payment_intent"),
            charge: Some(object_id),
            amount: int_field(charge, "amount_refunded").unwrap_or(0),
            charged: int_field(charge, "amount"),
            fully_refunded: bool_field(charge, "refunded").unwrap_or(false),
            currency: str_field(charge, "currency").unwrap_or_default(),
        })
    }

    fn from_refund(refund: &'a serde_json::Value) -> Result<Self, EventOutcome> {
        let object_id = str_field(refund, "id").ok_or_else(|| EventOutcome::Rejected {
            reason: "the refund has no id".into(),
        })?;
        let status = str_field(refund, "status").unwrap_or("unknown");
        if status != "succeeded" {
            return Err(EventOutcome::Ignored {
                reason: format!("refund {object_id} is {status}, not succeeded"),
            });
        }
        Ok(Self {
            source: "refund",
            object_id,
            order_id: order_id_from_metadata(refund)?,
            payment_intent: ref_id(refund, "payment_intent"),
            charge: ref_id(refund, "charge"),
            amount: int_field(refund, "amount").unwrap_or(0),
            charged: None,
            fully_refunded: false,
            currency: str_field(refund, "currency").unwrap_or_default(),
        })
    }
}

async fn refund(
    tx: &mut JobTx,
    event: &StripeEvent,
    fact: &RefundFact<'_>,
    actor: &Actor,
    now: Millis,
) -> Result<EventOutcome, PaymentsError> {
    let order = match fact.order_id {
        Some(id) => orders::load(tx, id)
            .await?
            .ok_or(PaymentsError::OrderNotFound(id))?,
        None => match orders::find_by_payment(tx, fact.payment_intent, fact.charge).await? {
            Some(order) => order,
            None => {
                return Ok(EventOutcome::Ignored {
                    reason: format!(
                        "no order is paid by payment intent {:?} / charge {:?}",
                        fact.payment_intent, fact.charge
                    ),
                });
            }
        },
    };
    // How much of the payment is refunded, counting each refund once whatever the number of
    // events about it, and the charge's running total.
    let (refund_sum, charge_max): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE((SELECT SUM(a) FROM (SELECT MAX(amount) AS a FROM payment_refunds \
                 WHERE order_id = $1 AND source = 'refund' AND stripe_object_id <> $2 \
                 GROUP BY stripe_object_id) r), 0) AS BIGINT), \
                CAST(COALESCE((SELECT MAX(amount) FROM payment_refunds \
                 WHERE order_id = $1 AND source = 'charge'), 0) AS BIGINT)",
    )
    .bind(order.id)
    .bind(fact.object_id)
    .fetch_one(&mut **tx)
    .await?;
    let refunded = match fact.source {
        "refund" => (refund_sum + fact.amount).max(charge_max),
        _ => fact.amount.max(charge_max).max(refund_sum),
    };
    let payment = fact.charged.unwrap_or(order.amount_total);
    let full = fact.fully_refunded || refunded >= payment.min(order.amount_total);
    let currency = if fact.currency.is_empty() {
        order.currency.as_str()
    } else {
        fact.currency
    };
    let refund_id: i64 = sqlx::query_scalar(
        "INSERT INTO payment_refunds (order_id, event_id, source, stripe_object_id, amount, \
         amount_total, currency, kind, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         RETURNING id",
    )
    .bind(order.id)
    .bind(&event.id)
    .bind(fact.source)
    .bind(fact.object_id)
    .bind(fact.amount)
    .bind(order.amount_total)
    .bind(currency)
    .bind(if full { "full" } else { "partial" })
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    if !full {
        tracing::warn!(order = order.id, refunded, of = order.amount_total, event = %event.id,
                       "partial refund recorded for an admin; payouts are not reversed");
        return Ok(EventOutcome::PartialRefund {
            order_id: order.id,
            refund_id,
        });
    }
    orders::record_full_refund(tx, order.id, now).await?;
    let (mut reversals, mut cancelled, mut awaiting_payout, mut needs_admin) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in state::load_for_order(tx, order.id, true).await? {
        match row.status() {
            TransferStatus::Completed => {
                let row = state::transition(
                    tx,
                    &row,
                    TransferStatus::ReversalPending,
                    Changes::reset_retries(),
                    actor,
                    Some("the payment was refunded"),
                    now,
                )
                .await?;
                tx.enqueue(NewJob::new(ReverseTransfer {
                    transfer_id: row.id,
                }))
                .await?;
                reversals.push(row.id);
            }
            TransferStatus::Pending | TransferStatus::Failed
                if row.payout_attempted_at.is_none() =>
            {
                state::transition(
                    tx,
                    &row,
                    TransferStatus::Cancelled,
                    Changes {
                        next_retry_at: Some(None),
                        ..Changes::default()
                    },
                    actor,
                    Some("the payment was refunded before the seller was paid"),
                    now,
                )
                .await?;
                cancelled.push(row.id);
            }
            TransferStatus::Pending | TransferStatus::Failed => {
                // A payout call may be on its way or may have landed: its job decides, and
                // sees the refund. Make sure it has one.
                tx.enqueue(NewJob::new(TransferSeller {
                    transfer_id: row.id,
                }))
                .await?;
                awaiting_payout.push(row.id);
            }
            TransferStatus::PermanentlyFailed => needs_admin.push(row.id),
            TransferStatus::ReversalPending
            | TransferStatus::Reversed
            | TransferStatus::Cancelled => {}
        }
    }
    if !needs_admin.is_empty() {
        tracing::error!(order = order.id, transfers = ?needs_admin,
                        "refunded order has permanently failed transfers: an admin must check them");
    }
    Ok(EventOutcome::Refunded {
        order_id: order.id,
        reversals,
        cancelled,
        awaiting_payout,
        needs_admin,
    })
}

/// Every payments kind that [`register`] may register.
pub const KINDS: &[&str] = &[
    transfer_seller::KIND,
    transfer_seller::check::KIND,
    reverse_transfer::KIND,
    reverse_transfer::check::KIND,
    reconcile_transfers::KIND,
    retention::KIND,
];

/// Which workers this configuration runs in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Active {
    payout: bool,
    reversal: bool,
    reconcile: bool,
}

fn active(config: &PaymentsConfig) -> Active {
    let stripe = config.stripe.is_some();
    Active {
        payout: stripe && config.payout.enabled,
        reversal: stripe && config.reversal.enabled,
        reconcile: stripe,
    }
}

/// Registers `prune_webhook_events` (always), and the payments jobs this configuration
/// runs: none without `STRIPE_SECRET_KEY`
/// (their jobs wait for a process that has one), and neither the payout nor the reversal
/// worker (nor its safety net) when switched off. The kinds it does not run are declared,
/// so that every process stores the configured retry policy on the jobs it enqueues (the
/// webhook enqueues payouts in a process that may not run them). Silent about what it
/// leaves out: every command registers the kinds, and only `serve`/`worker` (which run
/// them) say so, from [`PaymentsConfig::disabled`], as `/ready` does.
pub fn register(registry: &mut Registry, config: &PaymentsConfig) {
    let stripe = config
        .stripe
        .as_ref()
        .and_then(|settings| match StripeClient::new(settings) {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::error!(error = %e, "the Stripe client cannot be built: payments jobs are not registered");
                None
            }
        });
    let on = active(config);
    // Events are stored whenever the webhook runs, with or without the secret key.
    let keep = config.webhook_event_retention;
    registry.register::<retention::PruneWebhookEvents, _, _>(move |args, ctx| {
        retention::handle(args, ctx, keep)
    });
    match &stripe {
        Some(stripe) if on.payout => {
            let deps = Arc::new(PayoutDeps {
                stripe: stripe.clone(),
                retry: config.payout,
            });
            registry
                .register::<TransferSeller, _, _>(move |args, ctx| {
                    transfer_seller::handle(args, ctx, Arc::clone(&deps))
                })
                .policy(payout_policy(config))
                .on_discard(transfer_seller::on_discard);
            let retry = Arc::new(config.payout);
            registry.register::<transfer_seller::check::TransferSellerCheck, _, _>(
                move |args, ctx| transfer_seller::check::handle(args, ctx, Arc::clone(&retry)),
            );
        }
        _ => {
            registry
                .declare::<TransferSeller>()
                .policy(payout_policy(config))
                .on_discard(transfer_seller::on_discard);
        }
    }
    match &stripe {
        Some(stripe) if on.reversal => {
            let deps = Arc::new(ReversalDeps {
                stripe: stripe.clone(),
                retry: config.reversal,
            });
            registry
                .register::<ReverseTransfer, _, _>(move |args, ctx| {
                    reverse_transfer::handle(args, ctx, Arc::clone(&deps))
                })
                .policy(reversal_policy(config))
                .on_discard(reverse_transfer::on_discard);
            let retry = Arc::new(config.reversal);
            registry.register::<reverse_transfer::check::ReverseTransferCheck, _, _>(
                move |args, ctx| reverse_transfer::check::handle(args, ctx, Arc::clone(&retry)),
            );
        }
        _ => {
            registry
                .declare::<ReverseTransfer>()
                .policy(reversal_policy(config))
                .on_discard(reverse_transfer::on_discard);
        }
    }
    if let Some(stripe) = stripe.filter(|_| on.reconcile) {
        let settings = Arc::new(ReconcileSettings {
            stripe,
            lookback: config.reconcile_lookback,
        });
        registry.register::<ReconcileTransfers, _, _>(move |args, ctx| {
            reconcile_transfers::handle(args, ctx, Arc::clone(&settings))
        });
    }
}

/// `transfer_seller`'s policy: its compiled one, retried on `TRANSFER_RETRY_*`.
pub fn payout_policy(config: &PaymentsConfig) -> JobPolicy {
    JobPolicy {
        retry: config.payout.policy(),
        ..TransferSeller::POLICY
    }
}

/// `reverse_transfer`'s policy: its compiled one, retried on `REVERSAL_*`.
pub fn reversal_policy(config: &PaymentsConfig) -> JobPolicy {
    JobPolicy {
        retry: config.reversal.policy(),
        ..ReverseTransfer::POLICY
    }
}

/// The payments schedules of this configuration (only for kinds [`register`] registers):
/// `prune_webhook_events` always.
pub fn schedules(config: &PaymentsConfig) -> Vec<Schedule> {
    let on = active(config);
    let mut out = vec![retention::schedule()];
    if on.payout {
        out.push(transfer_seller::check::schedule(
            config.payout_check_interval,
        ));
    }
    if on.reversal {
        out.push(reverse_transfer::check::schedule(
            config.reversal_check_interval,
        ));
    }
    if on.reconcile {
        out.push(reconcile_transfers::schedule(
            config.reconcile_every.clone(),
        ));
    }
    out
}

/// The payments schedules this configuration leaves out, each with why: what
/// `schedules list` says under its table, so that a missing schedule is never a mystery.
pub fn unscheduled(config: &PaymentsConfig) -> Vec<(&'static str, &'static str)> {
    let on = active(config);
    // A worker is off for want of the key, or because its variable switched it off.
    let off = |switched_off| {
        if config.stripe.is_none() {
            config::NO_STRIPE
        } else {
            switched_off
        }
    };
    let mut out = Vec::new();
    if !on.payout {
        out.push((transfer_seller::check::KIND, off(config::NO_PAYOUTS)));
    }
    if !on.reversal {
        out.push((reverse_transfer::check::KIND, off(config::NO_REVERSALS)));
    }
    if !on.reconcile {
        out.push((reconcile_transfers::KIND, config::NO_STRIPE));
    }
    out
}
