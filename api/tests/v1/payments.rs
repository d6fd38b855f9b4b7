//! The Stripe webhook, transfers and payments admin routes through the real router, with
//! the real Stripe jobs driving the real async-stripe client against a local fake Stripe:
//! signatures (wrong secret, rotation, stale, tampered, missing), redeliveries, unknown
//! types, a database that is down, the whole payment → payout → refund → reversal path
//! with its audit trail, a redelivered refund racing the worker, the admin retry and the
//! admin listings.

#[allow(dead_code, unreachable_pub)]
#[path = "../../../jobs/tests/support/fake_stripe.rs"]
mod fake_stripe;

use std::time::Duration;

use api::auth::Scope;
use api::auth::rate_limit::Limiter;
use engine::testing::{TestDb, drain};
use engine::{Clock, backend_tests};
use fake_stripe::FakeStripe;
use jobs::payments::orders::{self, NewOrderItem};
use jobs::reconcile_transfers::{self, ReconcileTransfers};
use jobs::transfers::stripe::StripeSettings;
use serde_json::{Value, json};

use crate::helpers::{Answer, GENEROUS, TestApp, get, post};

backend_tests!(
    schema = jobs::schema::migrator;
    bad_signatures_are_400_and_write_nothing,
    a_rotated_secret_is_accepted_and_redeliveries_change_nothing,
    without_a_secret_the_webhook_is_503,
    ready_lists_what_the_payments_configuration_switches_off,
    with_the_database_down_the_webhook_is_503,
    payment_payout_refund_and_reversal_end_to_end,
    a_redelivered_refund_racing_the_worker_reverses_once,
    an_admin_retries_a_permanently_failed_reversal,
    partial_refunds_and_findings_are_listed,
    an_authentic_event_with_nul_characters_is_recorded_with_replacements,
    an_event_of_the_other_mode_than_the_key_is_refused,
);

const OLD_SECRET: &str = "whsec_old";
const NEW_SECRET: &str = "whsec_new";
const STRIPE_TIMEOUT: Duration = Duration::from_millis(300);

struct World {
    app: TestApp,
    stripe: FakeStripe,
}

async fn world_with_secrets(db: TestDb, secrets: &[&str]) -> World {
    let stripe = FakeStripe::start(STRIPE_TIMEOUT).await;
    let settings = StripeSettings {
        secret_key: "sk_test_fake".into(),
        api_base: stripe.uri(),
        timeout: STRIPE_TIMEOUT,
        max_rps: std::num::NonZeroU32::new(1000).unwrap(),
    };
    let secrets: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
    let app = TestApp::build(db, Limiter::memory(GENEROUS), Clock::system(), |jobs| {
        jobs.payments.stripe = Some(settings);
        jobs.payments.webhook_secrets = secrets;
    });
    World { app, stripe }
}

/// Stripe rotates by signing with both secrets for a while; we are configured with both.
async fn world(db: TestDb) -> World {
    world_with_secrets(db, &[OLD_SECRET, NEW_SECRET]).await
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn event(id: &str, kind: &str, object: Value) -> String {
    json!({
        "id": id, "object": "event", "api_version": "2026-09-30.endive", "created": now_secs(),
        "livemode": false, "pending_webhooks": 1, "request": { "id": null, "idempotency_key": null },
        "type": kind, "data": { "object": object },
    })
    .to_string()
}

fn pi(order: i64) -> String {
    format!("pi_order{order}")
}

impl World {
    /// An order of `items` (seller, amount) in EUR, each seller with a connected account;
    /// its total is the items plus a platform fee of 100.
    async fn order(&self, items: &[(i64, i64)]) -> (i64, i64) {
        let now = self.app.engine.clock().now_ms();
        let mut conn = self.app.engine.db().acquire().await.unwrap();
        for (seller, _) in items {
            orders::upsert_seller_account(&mut conn, *seller, &format!("acct_s{seller}"), now)
                .await
                .unwrap();
        }
        let total = items.iter().map(|(_, a)| a).sum::<i64>() + 100;
        let new: Vec<NewOrderItem> = items
            .iter()
            .map(|(seller, amount)| NewOrderItem {
                seller_id: *seller,
                amount: *amount,
                product_ref: None,
            })
            .collect();
        let (order, _) = orders::create_order(&mut conn, Some(7), "eur", total, &new, now)
            .await
            .unwrap();
        (order, total)
    }

    fn paid(&self, event_id: &str, order: i64, total: i64) -> String {
        event(
            event_id,
            "payment_intent.succeeded",
            json!({
                "id": pi(order), "object": "payment_intent", "amount": total,
                "amount_received": total, "currency": "eur", "status": "succeeded",
                "latest_charge": format!("ch_order{order}"),
                "metadata": { "order_id": order.to_string() },
            }),
        )
    }

    fn refunded(&self, event_id: &str, order: i64, total: i64, refunded: i64) -> String {
        event(
            event_id,
            "charge.refunded",
            json!({
                "id": format!("ch_order{order}"), "object": "charge", "amount": total,
                "amount_refunded": refunded, "currency": "eur", "refunded": refunded >= total,
                "payment_intent": pi(order), "metadata": {},
            }),
        )
    }

    /// POSTs `body` to the webhook with `signature` (none: no header).
    async fn deliver_signed(&self, body: &str, signature: Option<String>) -> Answer {
        let mut req = self
            .app
            .client
            .post("/v1/webhooks/stripe")
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(signature) = signature {
            req = req.header("Stripe-Signature", signature);
        }
        Answer::of(req.send().await).await
    }

    /// POSTs `body` signed now with `secret`.
    async fn deliver_with(&self, body: &str, secret: &str) -> Answer {
        let header = stripe_webhook::Webhook::generate_test_header(body, secret, Some(now_secs()));
        self.deliver_signed(body, Some(header)).await
    }

    /// POSTs `body` signed with the new secret and expects a 200.
    async fn deliver(&self, body: &str) -> Answer {
        let answer = self.deliver_with(body, NEW_SECRET).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(self.app.engine.db())
            .await
            .unwrap()
    }

    async fn transfer_ids(&self, order: i64) -> Vec<i64> {
        sqlx::query_scalar("SELECT id FROM seller_transfers WHERE order_id = $1 ORDER BY id")
            .bind(order)
            .fetch_all(self.app.engine.db())
            .await
            .unwrap()
    }

    async fn transfer(&self, key: &str, id: i64) -> Answer {
        get(&self.app, &format!("/v1/transfers/{id}"), Some(key)).await
    }
}

async fn bad_signatures_are_400_and_write_nothing(db: TestDb) {
    // Arrange
    let w = world(db).await;
    let (order, total) = w.order(&[(1, 1000)]).await;
    let body = w.paid("evt_pay", order, total);
    let stale =
        stripe_webhook::Webhook::generate_test_header(&body, NEW_SECRET, Some(now_secs() - 600));
    let good = stripe_webhook::Webhook::generate_test_header(&body, NEW_SECRET, Some(now_secs()));
    let tampered = body.replace(&format!("\"amount\":{total}"), "\"amount\":1");
    let not_json = "{\"id\": \"evt_x\", oops";
    let not_json_sig =
        stripe_webhook::Webhook::generate_test_header(not_json, NEW_SECRET, Some(now_secs()));

    // Act
    let missing = w.deliver_signed(&body, None).await;
    let wrong_secret = w.deliver_with(&body, "whsec_someone_else").await;
    let stale = w.deliver_signed(&body, Some(stale)).await;
    let tampered = w.deliver_signed(&tampered, Some(good)).await;
    let garbage = w.deliver_signed(&body, Some("t=1,v1=nothex".into())).await;
    let malformed = w.deliver_signed(not_json, Some(not_json_sig)).await;

    // Assert
    for answer in [&missing, &wrong_secret, &stale, &tampered, &garbage] {
        answer.assert_problem(400, "invalid_signature");
    }
    malformed.assert_problem(400, "bad_request");
    assert_eq!(w.count("SELECT COUNT(*) FROM webhook_events").await, 0);
    assert_eq!(w.count("SELECT COUNT(*) FROM seller_transfers").await, 0);
    assert_eq!(w.count("SELECT COUNT(*) FROM jobs").await, 0);
}

async fn a_rotated_secret_is_accepted_and_redeliveries_change_nothing(db: TestDb) {
    // Arrange
    let w = world(db).await;
    let (order, total) = w.order(&[(1, 1000), (2, 500)]).await;
    let body = w.paid("evt_pay", order, total);

    // Act: signed with the old secret (rotation), then redelivered with the new one, and
    // an event type we do not handle.
    let first = w.deliver_with(&body, OLD_SECRET).await;
    let again = w.deliver(&body).await;
    let unknown = w
        .deliver(&event(
            "evt_other",
            "customer.created",
            json!({ "id": "cus_1" }),
        ))
        .await;

    // Assert
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["outcome"], "transfers_created", "{}", first.text);
    assert_eq!(
        first.body["details"]["transfer_ids"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(again.body["outcome"], "duplicate", "{}", again.text);
    assert_eq!(unknown.body["outcome"], "ignored", "{}", unknown.text);
    assert_eq!(w.transfer_ids(order).await.len(), 2);
    assert_eq!(
        w.count("SELECT COUNT(*) FROM jobs WHERE kind = 'transfer_seller'")
            .await,
        2
    );
    assert_eq!(
        w.count("SELECT COUNT(*) FROM webhook_events WHERE outcome = 'ignored'")
            .await,
        1
    );
}

async fn without_a_secret_the_webhook_is_503(db: TestDb) {
    // Arrange
    let w = world_with_secrets(db, &[]).await;
    let (order, total) = w.order(&[(1, 1000)]).await;
    let body = w.paid("evt_pay", order, total);

    // Act: never accepted unsigned; refused so that Stripe delivers it again once set.
    let answer = w.deliver_with(&body, NEW_SECRET).await;

    // Assert
    answer.assert_problem(503, "unavailable");
    assert_eq!(w.count("SELECT COUNT(*) FROM webhook_events").await, 0);
}

async fn ready_lists_what_the_payments_configuration_switches_off(db: TestDb) {
    // Arrange: Stripe configured, but no webhook secret and reversals switched off.
    let stripe = FakeStripe::start(STRIPE_TIMEOUT).await;
    let app = TestApp::build(db, Limiter::memory(GENEROUS), Clock::system(), |jobs| {
        jobs.payments.stripe = Some(StripeSettings {
            secret_key: "sk_test_fake".into(),
            api_base: stripe.uri(),
            timeout: STRIPE_TIMEOUT,
            max_rps: std::num::NonZeroU32::new(10).unwrap(),
        });
        jobs.payments.webhook_secrets.clear();
        jobs.payments.reversal.enabled = false;
    });

    // Act
    let ready = get(&app, "/ready", None).await;

    // Assert: ready, and it says what does not run here.
    assert_eq!(ready.status, 200, "{}", ready.text);
    let disabled = ready.body["disabled"].as_object().expect("disabled");
    assert_eq!(
        disabled.keys().collect::<Vec<_>>(),
        ["reversals", "stripe_webhook"],
        "{}",
        ready.text
    );
}

async fn with_the_database_down_the_webhook_is_503(db: TestDb) {
    // Arrange
    let w = world(db).await;
    let (order, total) = w.order(&[(1, 1000)]).await;
    let body = w.paid("evt_pay", order, total);
    w.app.engine.db().close().await;

    // Act
    let answer = w.deliver_with(&body, NEW_SECRET).await;

    // Assert: 503, so that Stripe delivers it again.
    answer.assert_problem(503, "unavailable");
}

async fn payment_payout_refund_and_reversal_end_to_end(db: TestDb) {
    // Arrange
    let w = world(db).await;
    let admin = w.app.key(Scope::Admin).await;
    let (order, total) = w.order(&[(1, 1000)]).await;

    // Act: paid → payout; refunded → reversal.
    w.deliver(&w.paid("evt_pay", order, total)).await;
    drain(&w.app.engine).await;
    let paid = get(&w.app, "/v1/transfers?status=completed", Some(&admin)).await;
    let refund = w
        .deliver(&w.refunded("evt_refund", order, total, total))
        .await;
    let id = w.transfer_ids(order).await[0];
    let pending = w.transfer(&admin, id).await;
    drain(&w.app.engine).await;
    let done = w.transfer(&admin, id).await;

    // Assert
    assert_eq!(
        paid.body["transfers"].as_array().map(Vec::len),
        Some(1),
        "{}",
        paid.text
    );
    assert_eq!(refund.body["outcome"], "refunded", "{}", refund.text);
    assert_eq!(
        pending.body["transfer"]["status"], "reversal_pending",
        "{}",
        pending.text
    );
    let t = &done.body["transfer"];
    assert_eq!(t["status"], "reversed", "{}", done.text);
    assert!(t["stripe_transfer_id"].as_str().unwrap().starts_with("tr_"));
    assert!(
        t["stripe_reversal_id"]
            .as_str()
            .unwrap()
            .starts_with("trr_")
    );
    let trail: Vec<(String, String, String)> = done.body["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from_status"].as_str().unwrap().to_owned(),
                t["to_status"].as_str().unwrap().to_owned(),
                t["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let trail: Vec<(&str, &str, &str)> = trail
        .iter()
        .map(|(f, t, a)| (f.as_str(), t.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        trail,
        [
            ("none", "pending", "webhook:evt_pay"),
            ("pending", "completed", "job:1"),
            ("completed", "reversal_pending", "webhook:evt_refund"),
            ("reversal_pending", "reversed", "job:2"),
        ]
    );
    let kinds: Vec<&str> = done.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["transfer_seller", "reverse_transfer"],
        "{}",
        done.text
    );
    assert_eq!(w.stripe.transfers().len(), 1);
    assert_eq!(w.stripe.reversals().len(), 1);
}

async fn a_redelivered_refund_racing_the_worker_reverses_once(db: TestDb) {
    // Arrange
    let w = world(db).await;
    let (order, total) = w.order(&[(1, 1000), (2, 700)]).await;
    w.deliver(&w.paid("evt_pay", order, total)).await;
    drain(&w.app.engine).await;
    let refund = w.refunded("evt_refund", order, total, total);

    // Act: Stripe delivers the refund twice while a worker already drains the reversals.
    let (a, b, _) = tokio::join!(w.deliver(&refund), w.deliver(&refund), async {
        for _ in 0..3 {
            drain(&w.app.engine).await;
        }
    });
    drain(&w.app.engine).await;

    // Assert
    let mut outcomes = [a.body["outcome"].clone(), b.body["outcome"].clone()];
    outcomes.sort_by_key(Value::to_string);
    assert_eq!(outcomes, [json!("duplicate"), json!("refunded")]);
    assert_eq!(
        w.stripe.reversals().len(),
        2,
        "one reversal per paid-out transfer"
    );
    assert_eq!(
        w.count("SELECT COUNT(*) FROM seller_transfers WHERE status = 'reversed'")
            .await,
        2
    );
}

async fn an_admin_retries_a_permanently_failed_reversal(db: TestDb) {
    // Arrange: paid out, then the seller's balance cannot cover the reversal.
    let w = world(db).await;
    let admin = w.app.key(Scope::Admin).await;
    let write = w.app.key(Scope::Write).await;
    let (order, total) = w.order(&[(1, 1000)]).await;
    w.deliver(&w.paid("evt_pay", order, total)).await;
    drain(&w.app.engine).await;
    let id = w.transfer_ids(order).await[0];
    let completed = w.transfer(&admin, id).await;
    let tr = completed.body["transfer"]["stripe_transfer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let too_early = post(
        &w.app,
        &format!("/v1/transfers/{id}/retry"),
        Some(&admin),
        None,
    )
    .await;
    w.stripe.insufficient_balance(&tr);
    w.deliver(&w.refunded("evt_refund", order, total, total))
        .await;
    drain(&w.app.engine).await;
    let failed = w.transfer(&admin, id).await;

    // Act
    w.stripe.sufficient_balance(&tr);
    let by_writer = post(
        &w.app,
        &format!("/v1/transfers/{id}/retry"),
        Some(&write),
        None,
    )
    .await;
    let retried = post(
        &w.app,
        &format!("/v1/transfers/{id}/retry"),
        Some(&admin),
        None,
    )
    .await;
    let unknown = post(&w.app, "/v1/transfers/999999/retry", Some(&admin), None).await;
    drain(&w.app.engine).await;
    let done = w.transfer(&admin, id).await;

    // Assert
    too_early.assert_problem(409, "invalid_transfer_state");
    assert_eq!(
        failed.body["transfer"]["status"], "permanently_failed",
        "{}",
        failed.text
    );
    by_writer.assert_problem(403, "forbidden");
    assert_eq!(retried.status, 200, "{}", retried.text);
    assert_eq!(retried.body["status"], "reversal_pending");
    unknown.assert_problem(404, "not_found");
    assert_eq!(done.body["transfer"]["status"], "reversed", "{}", done.text);
    let admin_id: i64 = sqlx::query_scalar("SELECT MAX(id) FROM api_keys WHERE scope = 'admin'")
        .fetch_one(w.app.engine.db())
        .await
        .unwrap();
    let by_admin = done.body["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| {
            t["from_status"] == "permanently_failed"
                && t["to_status"] == "reversal_pending"
                && t["actor"] == format!("api_key:{admin_id}")
        });
    assert!(by_admin, "{}", done.text);
    assert_eq!(w.stripe.reversals().len(), 1);
}

async fn partial_refunds_and_findings_are_listed(db: TestDb) {
    // Arrange: two paid orders; one partly refunded; one payout reversed behind our back.
    let w = world(db).await;
    let read = w.app.key(Scope::Read).await;
    let (a, total_a) = w.order(&[(1, 1000)]).await;
    let (b, total_b) = w.order(&[(2, 800)]).await;
    w.deliver(&w.paid("evt_pay_a", a, total_a)).await;
    w.deliver(&w.paid("evt_pay_b", b, total_b)).await;
    drain(&w.app.engine).await;
    let partial = w.deliver(&w.refunded("evt_partial", a, total_a, 300)).await;
    let b_id = w.transfer_ids(b).await[0];
    let tr = w.transfer(&read, b_id).await.body["transfer"]["stripe_transfer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    w.stripe.reverse_out_of_band(&tr);
    w.app.engine.enqueue(ReconcileTransfers {}).await.unwrap();
    drain(&w.app.engine).await;

    // Act
    let refunds = get(&w.app, "/v1/payments/partial-refunds", Some(&read)).await;
    let findings = get(&w.app, "/v1/reconciliation/findings", Some(&read)).await;
    let by_seller = get(&w.app, "/v1/transfers?seller_id=2", Some(&read)).await;
    let bad_status = get(&w.app, "/v1/transfers?status=lost", Some(&read)).await;
    let page = get(&w.app, "/v1/transfers?limit=1", Some(&read)).await;
    let metrics = get(&w.app, "/metrics", None).await;

    // Assert
    assert_eq!(
        partial.body["outcome"], "partial_refund",
        "{}",
        partial.text
    );
    let refunds = refunds.body["refunds"].as_array().unwrap().clone();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(
        (
            refunds[0]["order_id"].as_i64(),
            refunds[0]["amount"].as_i64()
        ),
        (Some(a), Some(300))
    );
    let findings = findings.body["findings"].as_array().unwrap().clone();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["seller_transfer_id"], b_id);
    // The gauge is process-wide and other tests scrape their own databases at the same
    // time: check it is exported, and the count it is set from.
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l.starts_with("veza_reconciliation_open_findings ")),
        "{}",
        metrics.text
    );
    let open = reconcile_transfers::count_open_findings(w.app.engine.db())
        .await
        .unwrap();
    assert_eq!(open, 1);
    let sellers: Vec<i64> = by_seller.body["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["seller_id"].as_i64().unwrap())
        .collect();
    assert_eq!(sellers, [2]);
    bad_status.assert_problem(400, "bad_request");
    assert_eq!(page.body["transfers"].as_array().map(Vec::len), Some(1));
    let next = page.body["next_cursor"].as_i64().expect("a next page");
    let rest = get(
        &w.app,
        &format!("/v1/transfers?limit=1&cursor={next}"),
        Some(&read),
    )
    .await;
    assert_eq!(rest.body["transfers"].as_array().map(Vec::len), Some(1));
    assert!(rest.body["next_cursor"].is_null(), "{}", rest.text);
}

async fn an_authentic_event_with_nul_characters_is_recorded_with_replacements(db: TestDb) {
    // Arrange: text of a real payment holds a NUL (in its transfer group, which is
    // stored; its description, free text, is not: see StripeEvent::stored_payload).
    let w = world(db).await;
    let (order, total) = w.order(&[(1, 1000)]).await;
    let mut event: Value = serde_json::from_str(&w.paid("evt_nul", order, total)).unwrap();
    event["data"]["object"]["transfer_group"] = json!("beat\u{0}pack");
    let body = event.to_string();
    assert!(body.contains("\\u0000"), "{body}");

    // Act
    let answer = w.deliver(&body).await;

    // Assert: handled like any payment, stored without the NUL on both storages.
    assert_eq!(
        answer.body["outcome"], "transfers_created",
        "{}",
        answer.text
    );
    let payload: String =
        sqlx::query_scalar("SELECT payload FROM webhook_events WHERE id = 'evt_nul'")
            .fetch_one(w.app.engine.db())
            .await
            .unwrap();
    let stored: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        stored["data"]["object"]["transfer_group"],
        "beat\u{FFFD}pack"
    );
    assert_eq!(w.transfer_ids(order).await.len(), 1);
}

async fn an_event_of_the_other_mode_than_the_key_is_refused(db: TestDb) {
    // Arrange: the key is sk_test_…; a live-mode event arrives, correctly signed.
    let w = world(db).await;
    let (order, total) = w.order(&[(1, 1000)]).await;
    let live = w
        .paid("evt_live", order, total)
        .replace("\"livemode\":false", "\"livemode\":true");
    assert!(live.contains("\"livemode\":true"), "{live}");

    // Act
    let refused = w.deliver_with(&live, NEW_SECRET).await;

    // Assert: refused, nothing recorded; a test-mode event is taken.
    refused.assert_problem(400, "livemode_mismatch");
    assert_eq!(w.count("SELECT COUNT(*) FROM webhook_events").await, 0);
    assert_eq!(w.count("SELECT COUNT(*) FROM seller_transfers").await, 0);
    w.deliver(&w.paid("evt_test", order, total)).await;
    assert_eq!(w.count("SELECT COUNT(*) FROM webhook_events").await, 1);
}
