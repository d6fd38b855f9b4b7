//! The webhook's transactional core (`jobs::payments::process_event`) on both backends:
//! dedupe, payouts created with their jobs, full and partial refunds, ignored events, and
//! the signature check the route will use.

mod support;

use engine::testing::{TestDb, perform_job};
use engine::{JobError, Outcome, backend_tests};
use jobs::payments::{self, EventOutcome, orders};
use jobs::transfer_seller::TransferSeller;
use jobs::transfers::TransferStatus;
use support::world;

backend_tests!(
    schema = jobs::schema::migrator;
    payment_creates_one_pending_transfer_and_one_payout_job_per_item,
    redelivered_event_has_no_second_effect,
    concurrent_deliveries_of_one_event_are_processed_once,
    full_refund_reverses_paid_transfers_and_cancels_unpaid_ones,
    refund_events_count_only_when_succeeded,
    partial_refunds_are_recorded_for_an_admin_and_not_reversed,
    refund_before_the_payment_event_means_no_payout,
    unknown_event_types_are_recorded_as_ignored,
    events_for_unknown_orders_are_not_recorded,
    payments_that_do_not_match_the_order_are_rejected,
    events_past_their_retention_are_deleted_unless_a_refund_points_at_them,
);

async fn payment_creates_one_pending_transfer_and_one_payout_job_per_item(t: TestDb) {
    let w = world(&t).await;
    let (order, items) = w.order(&[(1, 500), (2, 300), (1, 200)]).await;
    let outcome = w.deliver(&w.paid("evt_pay", order).await).await;
    let EventOutcome::TransfersCreated {
        order_id,
        transfer_ids,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(order_id, order);
    assert_eq!(transfer_ids.len(), 3);
    let rows = w.transfers_of(order).await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.order_item_id, r.seller_id, r.amount, r.status()))
            .collect::<Vec<_>>(),
        [
            (items[0], 1, 500, TransferStatus::Pending),
            (items[1], 2, 300, TransferStatus::Pending),
            (items[2], 1, 200, TransferStatus::Pending),
        ]
    );
    let jobs = w.jobs().await;
    let keys: Vec<_> = jobs
        .iter()
        .map(|j| (j.1.as_str(), j.3.clone().unwrap()))
        .collect();
    assert_eq!(
        keys,
        transfer_ids
            .iter()
            .map(|id| ("transfer_seller", format!("transfer_seller:{id}")))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        w.events().await,
        [(
            "evt_pay".into(),
            "payment_intent.succeeded".into(),
            "transfers_created".into()
        )]
    );
    let audit = w.audit(transfer_ids[0]).await;
    assert_eq!(
        audit,
        [(
            "none".into(),
            "pending".into(),
            "webhook:evt_pay".into(),
            None
        )]
    );
    let mut conn = w.engine.db().acquire().await.unwrap();
    let o = orders::load(&mut conn, order).await.unwrap().unwrap();
    assert_eq!(
        o.stripe_payment_intent_id.as_deref(),
        Some(support::pi(order).as_str())
    );
    assert!(o.paid_at.is_some());
}

async fn redelivered_event_has_no_second_effect(t: TestDb) {
    let w = world(&t).await;
    let (order, _) = w.order(&[(1, 500), (2, 300)]).await;
    let event = w.paid("evt_pay", order).await;
    assert!(matches!(
        w.deliver(&event).await,
        EventOutcome::TransfersCreated { .. }
    ));
    assert_eq!(w.deliver(&event).await, EventOutcome::Duplicate);
    assert_eq!(w.transfers_of(order).await.len(), 2);
    assert_eq!(w.jobs().await.len(), 2);
    assert_eq!(w.events().await.len(), 1);

    // A different event about the same payment does not pay twice either.
    let again = w.paid("evt_pay_again", order).await;
    assert_eq!(
        w.deliver(&again).await,
        EventOutcome::TransfersCreated {
            order_id: order,
            transfer_ids: vec![]
        }
    );
    assert_eq!(w.transfers_of(order).await.len(), 2);
    assert_eq!(w.jobs().await.len(), 2);
}

async fn concurrent_deliveries_of_one_event_are_processed_once(t: TestDb) {
    let w = world(&t).await;
    let (order, _) = w.order(&[(1, 500), (2, 300)]).await;
    let event = w.paid("evt_pay", order).await;
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (engine, event) = (w.engine.clone(), event.clone());
            tokio::spawn(async move {
                payments::process_event(&engine, &event, &engine::Actor::webhook(&event.id))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut processed = 0;
    for task in tasks {
        match task.await.unwrap() {
            EventOutcome::Duplicate => {}
            EventOutcome::TransfersCreated { transfer_ids, .. } => {
                assert_eq!(transfer_ids.len(), 2);
                processed += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(processed, 1);
    assert_eq!(w.transfers_of(order).await.len(), 2);
    assert_eq!(w.jobs().await.len(), 2);
}

async fn full_refund_reverses_paid_transfers_and_cancels_unpaid_ones(t: TestDb) {
    let w = world(&t).await;
    // Seller 3 has no connected account yet: their payout fails before reaching Stripe.
    let (order, _) = w
        .order_without_accounts(&[(1, 500), (2, 300), (3, 200)], &[3])
        .await;
    let EventOutcome::TransfersCreated {
        transfer_ids: ids, ..
    } = w.deliver(&w.paid("evt_pay", order).await).await
    else {
        panic!()
    };
    let (paid, untouched, no_account) = (ids[0], ids[1], ids[2]);
    perform_job(&w.engine, &TransferSeller { transfer_id: paid })
        .await
        .unwrap();
    let err = perform_job(
        &w.engine,
        &TransferSeller {
            transfer_id: no_account,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, JobError::RetryAt { ref error, .. } if error.contains("no Stripe connected account")),
        "{err}"
    );
    assert_eq!(w.transfer(paid).await.status(), TransferStatus::Completed);
    assert_eq!(
        w.transfer(no_account).await.status(),
        TransferStatus::Failed
    );

    let total = w.total(order).await;
    let outcome = w
        .deliver(&w.charge_refunded("evt_refund", order, total).await)
        .await;
    assert_eq!(
        outcome,
        EventOutcome::Refunded {
            order_id: order,
            reversals: vec![paid],
            cancelled: vec![untouched, no_account],
            awaiting_payout: vec![],
            needs_admin: vec![],
        }
    );
    assert_eq!(
        w.transfer(paid).await.status(),
        TransferStatus::ReversalPending
    );
    assert_eq!(
        w.transfer(untouched).await.status(),
        TransferStatus::Cancelled
    );
    assert_eq!(
        w.transfer(no_account).await.status(),
        TransferStatus::Cancelled
    );
    let audit = w.audit(paid).await;
    assert_eq!(
        (
            audit[2].0.as_str(),
            audit[2].1.as_str(),
            audit[2].2.as_str()
        ),
        ("completed", "reversal_pending", "webhook:evt_refund")
    );
    let reversal_jobs: Vec<_> = w
        .jobs()
        .await
        .into_iter()
        .filter(|j| j.1 == "reverse_transfer")
        .collect();
    assert_eq!(reversal_jobs.len(), 1);
    assert_eq!(
        reversal_jobs[0].3.as_deref(),
        Some(format!("reverse_transfer:{paid}").as_str())
    );

    // The workers: one reversal on Stripe, and a refund is never followed by a payout.
    w.settle(5).await;
    assert_eq!(w.transfer(paid).await.status(), TransferStatus::Reversed);
    assert_eq!(w.stripe.transfers().len(), 1);
    assert_eq!(w.stripe.reversals().len(), 1);
    assert_eq!(
        w.transfer(untouched).await.status(),
        TransferStatus::Cancelled
    );
    // The refund is recorded as full.
    let mut conn = w.engine.db().acquire().await.unwrap();
    assert!(
        orders::load(&mut conn, order)
            .await
            .unwrap()
            .unwrap()
            .refunded_at
            .is_some()
    );
    assert!(
        orders::list_partial_refunds(&mut conn, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn refund_events_count_only_when_succeeded(t: TestDb) {
    let w = world(&t).await;
    let (order, _) = w.order(&[(1, 500)]).await;
    let EventOutcome::TransfersCreated {
        transfer_ids: ids, ..
    } = w.deliver(&w.paid("evt_pay", order).await).await
    else {
        panic!()
    };
    perform_job(
        &w.engine,
        &TransferSeller {
            transfer_id: ids[0],
        },
    )
    .await
    .unwrap();
    let total = w.total(order).await;
    let pending = w.refund_event("evt_r1", "refund.created", "re_1", order, total, "pending");
    assert!(matches!(
        w.deliver(&pending).await,
        EventOutcome::Ignored { .. }
    ));
    assert_eq!(w.transfer(ids[0]).await.status(), TransferStatus::Completed);

    let succeeded = w.refund_event(
        "evt_r2",
        "refund.updated",
        "re_1",
        order,
        total,
        "succeeded",
    );
    assert!(matches!(
        w.deliver(&succeeded).await,
        EventOutcome::Refunded { ref reversals, .. } if reversals == &ids
    ));
    assert_eq!(
        w.transfer(ids[0]).await.status(),
        TransferStatus::ReversalPending
    );

    // Stripe also sends charge.refunded for the same refund: nothing more happens.
    let charge = w.charge_refunded("evt_r3", order, total).await;
    assert_eq!(
        w.deliver(&charge).await,
        EventOutcome::Refunded {
            order_id: order,
            reversals: vec![],
            cancelled: vec![],
            awaiting_payout: vec![],
            needs_admin: vec![],
        }
    );
    let outcomes: Vec<String> = w.events().await.into_iter().map(|e| e.2).collect();
    assert_eq!(
        outcomes,
        ["transfers_created", "ignored", "refunded", "refunded"]
    );
    let reversal_jobs = w
        .jobs()
        .await
        .into_iter()
        .filter(|j| j.1 == "reverse_transfer")
        .count();
    assert_eq!(reversal_jobs, 1);
}

async fn partial_refunds_are_recorded_for_an_admin_and_not_reversed(t: TestDb) {
    let w = world(&t).await;
    let (order, _) = w.order(&[(1, 500), (2, 300)]).await;
    let EventOutcome::TransfersCreated {
        transfer_ids: ids, ..
    } = w.deliver(&w.paid("evt_pay", order).await).await
    else {
        panic!()
    };
    w.settle(3).await;
    let total = w.total(order).await; // 900

    let first = w.refund_event("evt_r1", "refund.created", "re_1", order, 300, "succeeded");
    let EventOutcome::PartialRefund { refund_id, .. } = w.deliver(&first).await else {
        panic!()
    };
    // The same refund again under another event id (refund.updated) counts once.
    let same = w.refund_event("evt_r1b", "refund.updated", "re_1", order, 300, "succeeded");
    assert!(matches!(
        w.deliver(&same).await,
        EventOutcome::PartialRefund { .. }
    ));
    let charge = w.charge_refunded("evt_c1", order, 300).await;
    assert!(matches!(
        w.deliver(&charge).await,
        EventOutcome::PartialRefund { .. }
    ));
    for id in &ids {
        assert_eq!(w.transfer(*id).await.status(), TransferStatus::Completed);
    }
    assert!(w.jobs().await.iter().all(|j| j.1 != "reverse_transfer"));
    let mut conn = w.engine.db().acquire().await.unwrap();
    let listed = orders::list_partial_refunds(&mut conn, 0, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].id, refund_id);
    assert_eq!(
        (
            listed[0].order_id,
            listed[0].amount,
            listed[0].amount_total,
            listed[0].kind.as_str()
        ),
        (order, 300, total, "partial")
    );
    assert_eq!(listed[0].order_refunded_at, None);
    drop(conn);

    // A second refund completes it: now the payouts are reversed.
    let rest = w.refund_event(
        "evt_r2",
        "refund.created",
        "re_2",
        order,
        total - 300,
        "succeeded",
    );
    let EventOutcome::Refunded { reversals, .. } = w.deliver(&rest).await else {
        panic!()
    };
    assert_eq!(reversals, ids);
}

async fn refund_before_the_payment_event_means_no_payout(t: TestDb) {
    let w = world(&t).await;
    let (order, _) = w.order(&[(1, 500)]).await;
    let total = w.total(order).await;
    // Events can arrive out of order; the charge names its order in its metadata.
    let mut refund = w.charge_refunded("evt_refund", order, total).await;
    refund.object["metadata"] = serde_json::json!({ "order_id": order.to_string() });
    assert!(matches!(
        w.deliver(&refund).await,
        EventOutcome::Refunded { ref reversals, ref cancelled, .. } if reversals.is_empty() && cancelled.is_empty()
    ));
    let outcome = w.deliver(&w.paid("evt_pay", order).await).await;
    assert!(
        matches!(outcome, EventOutcome::Ignored { ref reason } if reason.contains("refunded")),
        "{outcome:?}"
    );
    assert!(w.transfers_of(order).await.is_empty());
    assert!(w.jobs().await.is_empty());
}

async fn unknown_event_types_are_recorded_as_ignored(t: TestDb) {
    let w = world(&t).await;
    let e = support::event(
        "evt_x",
        "customer.created",
        serde_json::json!({"id": "cus_1"}),
    );
    assert!(matches!(w.deliver(&e).await, EventOutcome::Ignored { .. }));
    assert_eq!(w.deliver(&e).await, EventOutcome::Duplicate);
    // A payment of something that is not a marketplace order is ignored too.
    let other = support::event(
        "evt_y",
        "payment_intent.succeeded",
        serde_json::json!({"id": "pi_x", "amount": 100, "currency": "eur", "metadata": {}}),
    );
    assert!(matches!(
        w.deliver(&other).await,
        EventOutcome::Ignored { .. }
    ));
    assert_eq!(
        w.events().await,
        [
            ("evt_x".into(), "customer.created".into(), "ignored".into()),
            (
                "evt_y".into(),
                "payment_intent.succeeded".into(),
                "ignored".into()
            )
        ]
    );
}

async fn events_for_unknown_orders_are_not_recorded(t: TestDb) {
    let w = world(&t).await;
    let e = support::event(
        "evt_pay",
        "payment_intent.succeeded",
        serde_json::json!({"id": "pi_1", "amount": 100, "amount_received": 100, "currency": "eur",
                           "metadata": {"order_id": "424242"}}),
    );
    let err = payments::process_event(&w.engine, &e, &engine::Actor::webhook("evt_pay"))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        payments::PaymentsError::OrderNotFound(424242)
    ));
    assert!(err.status_hint() >= 400);
    assert!(
        w.events().await.is_empty(),
        "not recorded: Stripe delivers it again"
    );
}

async fn payments_that_do_not_match_the_order_are_rejected(t: TestDb) {
    let w = world(&t).await;
    let (order, _) = w.order(&[(1, 500)]).await;
    let mut e = w.paid("evt_pay", order).await;
    e.object["amount_received"] = serde_json::json!(1);
    assert!(matches!(w.deliver(&e).await, EventOutcome::Rejected { .. }));
    let mut e = w.paid("evt_pay2", order).await;
    e.object["currency"] = serde_json::json!("usd");
    assert!(matches!(w.deliver(&e).await, EventOutcome::Rejected { .. }));
    let mut e = w.paid("evt_pay3", order).await;
    e.object["metadata"]["order_id"] = serde_json::json!("not-a-number");
    assert!(matches!(w.deliver(&e).await, EventOutcome::Rejected { .. }));
    assert!(w.transfers_of(order).await.is_empty());
    assert_eq!(w.events().await.len(), 3);
}

#[test]
fn the_route_verifies_signatures_before_processing() {
    let body = r#"{"id":"evt_1","object":"event","api_version":"2026-09-30.endive","created":1780000000,"livemode":false,"pending_webhooks":1,"request":{"id":null,"idempotency_key":null},"type":"charge.refunded","data":{"object":{"id":"ch_1","object":"charge","amount":100,"amount_refunded":100,"refunded":true}}}"#;
    let now = 1_780_000_000;
    let header = stripe_webhook::Webhook::generate_test_header(body, "whsec_test", Some(now));
    let event = payments::verify_event_at(body, &header, "whsec_test", now + 10).unwrap();
    assert_eq!(
        (event.id.as_str(), event.type_.as_str()),
        ("evt_1", "charge.refunded")
    );
    assert!(matches!(
        payments::verify_event_at(body, &header, "whsec_other", now),
        Err(payments::VerifyError::Signature(_))
    ));
    assert!(matches!(
        payments::verify_event_at(body, &header, "whsec_test", now + 600),
        Err(payments::VerifyError::Signature(_))
    ));
    let tampered = body.replace("\"amount\":100", "\"amount\":1");
    assert!(payments::verify_event_at(&tampered, &header, "whsec_test", now).is_err());
}

async fn events_past_their_retention_are_deleted_unless_a_refund_points_at_them(t: TestDb) {
    // Arrange: a payment, its full refund (recorded in payment_refunds, kept for
    // accounting) and an ignored event, all older than the retention (90 days by default);
    // then a recent event.
    let w = world(&t).await;
    assert_eq!(
        w.config.webhook_event_retention,
        std::time::Duration::from_secs(90 * 24 * 3600)
    );
    let (order, _) = w.order(&[(1, 500)]).await;
    w.deliver(&w.paid("evt_old_pay", order).await).await;
    let total = w.total(order).await;
    w.deliver(&w.charge_refunded("evt_old_refund", order, total).await)
        .await;
    w.deliver(&support::event(
        "evt_old_other",
        "customer.updated",
        serde_json::json!({ "id": "cus_1", "object": "customer" }),
    ))
    .await;
    w.clock
        .advance(std::time::Duration::from_secs(90 * 24 * 3600));
    w.deliver(&support::event(
        "evt_recent",
        "customer.updated",
        serde_json::json!({ "id": "cus_2", "object": "customer" }),
    ))
    .await;
    w.clock.advance(std::time::Duration::from_secs(1));

    // Act: the scheduled pass, twice.
    for _ in 0..2 {
        let out = perform_job(&w.engine, &payments::retention::PruneWebhookEvents {})
            .await
            .unwrap();
        assert_eq!(out, Outcome::Succeeded);
    }

    // Assert
    let left: Vec<(String, String)> =
        sqlx::query_as("SELECT id, payload FROM webhook_events ORDER BY id")
            .fetch_all(w.engine.db())
            .await
            .unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(
        left[0],
        (
            "evt_old_refund".to_owned(),
            r#"{"erased":"by retention"}"#.to_owned()
        )
    );
    assert_eq!(left[1].0, "evt_recent");
    assert!(left[1].1.contains("cus_2"), "{}", left[1].1);
    let refunds: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM payment_refunds")
        .fetch_one(w.engine.db())
        .await
        .unwrap();
    assert_eq!(refunds, 1, "the refund record stays");
}
