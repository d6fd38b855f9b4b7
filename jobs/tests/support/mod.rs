//! Shared by the payments tests: a fake Stripe and a world (engine with the payments jobs
//! registered against the fake, manual clock, orders and sellers, Stripe events).
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod fake_stripe;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use engine::testing::{DrainReport, TestDb, drain};
use engine::{Actor, Clock, Engine, Registry};
use jobs::payments::orders::{self, NewOrderItem};
use jobs::payments::{self, EventOutcome, PaymentsConfig, StripeEvent};
use jobs::transfers::stripe::StripeSettings;
use jobs::transfers::{self, TransferRow};
use serde_json::{Value, json};

pub use fake_stripe::{FakeStripe, Fault, Route};

/// The client's `STRIPE_TIMEOUT` in tests.
pub const TIMEOUT: Duration = Duration::from_millis(300);

/// An engine with the payments jobs, a fake Stripe, a manual clock.
pub struct World {
    pub engine: Engine,
    pub clock: Clock,
    pub stripe: FakeStripe,
    pub config: PaymentsConfig,
}

/// The settings of a client of `fake`.
pub fn stripe_settings(fake: &FakeStripe) -> StripeSettings {
    StripeSettings {
        secret_key: "sk_test_fake".into(),
        api_base: fake.uri(),
        timeout: TIMEOUT,
        max_rps: std::num::NonZeroU32::new(1000).unwrap(),
    }
}

/// A world whose payments configuration `tweak` may adjust (retry budgets, switches).
pub async fn world_with(t: &TestDb, tweak: impl FnOnce(&mut PaymentsConfig)) -> World {
    let stripe = FakeStripe::start(TIMEOUT).await;
    let mut config = PaymentsConfig::without_stripe();
    config.stripe = Some(stripe_settings(&stripe));
    tweak(&mut config);
    let mut registry = Registry::new();
    payments::register(&mut registry, &config);
    let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap());
    World {
        engine: t.engine(registry, clock.clone()),
        clock,
        stripe,
        config,
    }
}

/// A world with the default configuration.
pub async fn world(t: &TestDb) -> World {
    world_with(t, |_| {}).await
}

/// The connected account of seller `n` in tests.
pub fn account(seller: i64) -> String {
    format!("acct_seller{seller}")
}

impl World {
    /// An order paying `items` (seller, amount) in EUR, each seller with a connected account
    /// unless listed in `no_account`. Returns the order id and the item ids.
    pub async fn order_without_accounts(
        &self,
        items: &[(i64, i64)],
        no_account: &[i64],
    ) -> (i64, Vec<i64>) {
        let now = self.clock.now_ms();
        let mut conn = self.engine.db().acquire().await.unwrap();
        for (seller, _) in items {
            if !no_account.contains(seller) {
                orders::upsert_seller_account(&mut conn, *seller, &account(*seller), now)
                    .await
                    .unwrap();
            }
        }
        let total: i64 = items.iter().map(|(_, a)| a).sum::<i64>() + 100; // + platform fee
        let new: Vec<NewOrderItem> = items
            .iter()
            .map(|(seller, amount)| NewOrderItem {
                seller_id: *seller,
                amount: *amount,
                product_ref: Some(format!("track:{seller}")),
            })
            .collect();
        orders::create_order(&mut conn, Some(7), "eur", total, &new, now)
            .await
            .unwrap()
    }

    /// [`World::order_without_accounts`] with every seller's account.
    pub async fn order(&self, items: &[(i64, i64)]) -> (i64, Vec<i64>) {
        self.order_without_accounts(items, &[]).await
    }

    /// The order's total.
    pub async fn total(&self, order_id: i64) -> i64 {
        let mut conn = self.engine.db().acquire().await.unwrap();
        orders::load(&mut conn, order_id)
            .await
            .unwrap()
            .unwrap()
            .amount_total
    }

    /// Delivers an event, as the webhook route would.
    pub async fn deliver(&self, event: &StripeEvent) -> EventOutcome {
        payments::process_event(&self.engine, event, &Actor::webhook(&event.id))
            .await
            .unwrap()
    }

    /// `payment_intent.succeeded` for the order, paying its total.
    pub async fn paid(&self, event_id: &str, order_id: i64) -> StripeEvent {
        let total = self.total(order_id).await;
        event(
            event_id,
            "payment_intent.succeeded",
            json!({
                "id": pi(order_id), "object": "payment_intent", "amount": total,
                "amount_received": total, "currency": "eur", "status": "succeeded",
                "latest_charge": ch(order_id), "metadata": { "order_id": order_id.to_string() },
            }),
        )
    }

    /// `charge.refunded` for the order, `refunded` of its total refunded so far.
    pub async fn charge_refunded(
        &self,
        event_id: &str,
        order_id: i64,
        refunded: i64,
    ) -> StripeEvent {
        let total = self.total(order_id).await;
        event(
            event_id,
            "charge.refunded",
            json!({
                "id": ch(order_id), "object": "charge", "amount": total, "amount_refunded": refunded,
                "currency": "eur", "refunded": refunded >= total, "payment_intent": pi(order_id),
                "metadata": {},
            }),
        )
    }

    /// `refund.created` / `refund.updated` for the order.
    pub fn refund_event(
        &self,
        event_id: &str,
        kind: &str,
        refund_id: &str,
        order_id: i64,
        amount: i64,
        status: &str,
    ) -> StripeEvent {
        event(
            event_id,
            kind,
            json!({
                "id": refund_id, "object": "refund", "amount": amount, "currency": "eur",
                "status": status, "charge": ch(order_id), "payment_intent": pi(order_id),
                "metadata": {},
            }),
        )
    }

    /// Every transfer of the order, by id.
    pub async fn transfers_of(&self, order_id: i64) -> Vec<TransferRow> {
        transfers::list(&self.engine, &[], None, 0, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.order_id == order_id)
            .collect()
    }

    /// Transfer `id`.
    pub async fn transfer(&self, id: i64) -> TransferRow {
        transfers::get(&self.engine, id).await.unwrap().unwrap()
    }

    /// Runs every due job.
    pub async fn drain(&self) -> DrainReport {
        drain(&self.engine).await
    }

    /// Drains, then moves the clock an hour on, until no payments job is unfinished
    /// (at most `rounds` times). Returns the rounds it took.
    pub async fn settle(&self, rounds: usize) -> usize {
        for round in 0..rounds {
            self.drain().await;
            if self.unfinished_jobs().await == 0 {
                return round + 1;
            }
            self.clock.advance(Duration::from_secs(3600));
        }
        panic!(
            "payments jobs still unfinished after {rounds} rounds: {:?}",
            self.jobs().await
        );
    }

    /// Unfinished jobs of any kind.
    pub async fn unfinished_jobs(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('pending', 'running', 'retrying')",
        )
        .fetch_one(self.engine.db())
        .await
        .unwrap()
    }

    /// Every job: (id, kind, status, unique_key, run_at, max_attempts, last_error).
    pub async fn jobs(
        &self,
    ) -> Vec<(
        i64,
        String,
        String,
        Option<String>,
        i64,
        i64,
        Option<String>,
    )> {
        sqlx::query_as(
            "SELECT id, kind, status, unique_key, run_at, max_attempts, last_error FROM jobs ORDER BY id",
        )
        .fetch_all(self.engine.db())
        .await
        .unwrap()
    }

    /// The audit trail of transfer `id`: (from, to, actor, note).
    pub async fn audit(&self, id: i64) -> Vec<(String, String, String, Option<String>)> {
        let mut conn = self.engine.db().acquire().await.unwrap();
        engine::state_machine::history(&mut conn, "seller_transfer", &id.to_string())
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.from_status, e.to_status, e.actor, e.note))
            .collect()
    }

    /// `(id, type, outcome)` of every recorded webhook event.
    pub async fn events(&self) -> Vec<(String, String, String)> {
        sqlx::query_as("SELECT id, type, outcome FROM webhook_events ORDER BY received_at, id")
            .fetch_all(self.engine.db())
            .await
            .unwrap()
    }
}

/// A Stripe event envelope around `object`.
pub fn event(id: &str, kind: &str, object: Value) -> StripeEvent {
    StripeEvent::from_value(json!({
        "id": id, "object": "event", "api_version": "2026-09-30.endive", "created": 1_780_000_000,
        "livemode": false, "pending_webhooks": 1, "request": { "id": null, "idempotency_key": null },
        "type": kind, "data": { "object": object },
    }))
    .unwrap()
}

/// The payment intent id of an order in tests.
pub fn pi(order_id: i64) -> String {
    format!("pi_order{order_id}")
}

/// The charge id of an order in tests.
pub fn ch(order_id: i64) -> String {
    format!("ch_order{order_id}")
}
