//! Payments under faults and races, on both backends: 30 % of Stripe calls failing (503s,
//! timeouts, lost answers) and every transfer still converging with exactly one transfer
//! and one reversal on Stripe; a refund redelivered while the workers run; a refund landing
//! while a payout is in flight.

mod support;

use std::time::{Duration, Instant};

use engine::testing::{TestDb, perform_job};
use engine::worker::WorkerPool;
use engine::{Actor, backend_tests};
use jobs::payments::{self, EventOutcome};
use jobs::transfer_seller::TransferSeller;
use jobs::transfers::TransferStatus;
use jobs::transfers::state::{self, Changes};
use support::{Fault, Route, World, world_with};

backend_tests!(
    schema = jobs::schema::migrator;
    with_30_percent_faults_every_transfer_converges,
    redelivered_refund_racing_the_workers_reverses_each_transfer_once,
    refund_during_an_in_flight_payout_reverses_it,
    refund_after_a_payout_with_unknown_outcome_never_pays_twice,
    refund_after_a_payout_that_never_reached_stripe_cancels_it,
    a_retry_bump_from_a_stale_read_is_refused,
);

async fn generous(t: &TestDb) -> World {
    world_with(t, |c| {
        c.payout.max_retries = 25;
        c.reversal.max_retries = 25;
    })
    .await
}

async fn with_30_percent_faults_every_transfer_converges(t: TestDb) {
    let w = generous(&t).await;
    w.stripe.chaos(0.3, 0x5eed_0001);
    let mut orders = Vec::new();
    for n in 0..4i64 {
        let items: Vec<(i64, i64)> = (0..3).map(|i| (10 * n + i, 100 * (i + 1) + n)).collect();
        let (order, _) = w.order(&items).await;
        let event = w.paid(&format!("evt_pay_{n}"), order).await;
        assert!(matches!(
            w.deliver(&event).await,
            EventOutcome::TransfersCreated { .. }
        ));
        orders.push(order);
    }
    let rounds = w.settle(40).await;
    let mut rows = Vec::new();
    for order in &orders {
        rows.extend(w.transfers_of(*order).await);
    }
    assert_eq!(rows.len(), 12);
    let fake = w.stripe.transfers();
    assert_eq!(
        fake.len(),
        12,
        "exactly one Stripe transfer per row ({rounds} rounds)"
    );
    for row in &rows {
        assert_eq!(row.status(), TransferStatus::Completed, "{row:?}");
        let on_stripe: Vec<_> = fake
            .iter()
            .filter(|t| t.metadata["seller_transfer_id"] == row.id.to_string())
            .collect();
        assert_eq!(on_stripe.len(), 1);
        assert_eq!(
            row.stripe_transfer_id.as_deref(),
            Some(on_stripe[0].id.as_str())
        );
        assert_eq!(on_stripe[0].amount, row.amount);
    }
    let faults = w.stripe.log().iter().filter(|l| l.result != "ok").count();
    assert!(faults > 0, "the chaos did hit");

    for (n, order) in orders.iter().enumerate() {
        let total = w.total(*order).await;
        let refund = w
            .charge_refunded(&format!("evt_refund_{n}"), *order, total)
            .await;
        assert!(matches!(
            w.deliver(&refund).await,
            EventOutcome::Refunded { .. }
        ));
    }
    w.settle(40).await;
    let reversals = w.stripe.reversals();
    assert_eq!(reversals.len(), 12, "exactly one reversal per transfer");
    for order in &orders {
        for row in w.transfers_of(*order).await {
            assert_eq!(row.status(), TransferStatus::Reversed, "{row:?}");
            let tr = row.stripe_transfer_id.clone().unwrap();
            let mine: Vec<_> = reversals.iter().filter(|r| r.transfer == tr).collect();
            assert_eq!(mine.len(), 1);
            assert_eq!(row.stripe_reversal_id.as_deref(), Some(mine[0].id.as_str()));
            assert!(w.stripe.transfer(&tr).unwrap().amount_reversed == row.amount);
            // Every attempt of one operation carried one key.
            let keys: std::collections::BTreeSet<_> = w
                .stripe
                .requests("POST", &format!("/v1/transfers/{tr}/reversals"))
                .into_iter()
                .map(|l| l.idempotency_key.unwrap())
                .collect();
            assert_eq!(
                keys.into_iter().collect::<Vec<_>>(),
                [format!("reversal:{}", row.id)]
            );
            // Every status change on record is an edge of the lifecycle.
            for (from, to, _, _) in w.audit(row.id).await {
                if from == "none" {
                    assert_eq!(to, "pending");
                    continue;
                }
                let (a, b) = (
                    TransferStatus::parse(&from).unwrap(),
                    TransferStatus::parse(&to).unwrap(),
                );
                assert!(a.can_transition_to(b), "{from} → {to}");
            }
        }
    }
}

async fn redelivered_refund_racing_the_workers_reverses_each_transfer_once(t: TestDb) {
    let w = generous(&t).await;
    let (order, _) = w.order(&[(1, 500), (2, 300), (3, 200)]).await;
    w.deliver(&w.paid("evt_pay", order).await).await;
    w.settle(3).await;
    // Reversals take a while on Stripe, so the workers are mid-call while the refund is
    // delivered again.
    for _ in 0..3 {
        w.stripe.fault(
            Route::CreateReversal,
            Fault::Delay(Duration::from_millis(150)),
        );
    }
    let pool = WorkerPool::start(&w.engine);
    let total = w.total(order).await;
    let charge = w.charge_refunded("evt_refund", order, total).await;
    let refund = w.refund_event(
        "evt_refund_2",
        "refund.updated",
        "re_1",
        order,
        total,
        "succeeded",
    );
    let mut deliveries = Vec::new();
    for event in [&charge, &charge, &refund, &charge, &refund] {
        let (engine, event) = (w.engine.clone(), event.clone());
        deliveries.push(tokio::spawn(async move {
            let outcome = payments::process_event(&engine, &event, &Actor::webhook(&event.id))
                .await
                .unwrap();
            // On SQLite the workers of this process are woken explicitly; a second wave
            // of redeliveries lands while they run.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let again = payments::process_event(&engine, &event, &Actor::webhook(&event.id))
                .await
                .unwrap();
            (outcome, again)
        }));
    }
    let mut refunded = 0;
    for d in deliveries {
        let (first, again) = d.await.unwrap();
        assert_eq!(again, EventOutcome::Duplicate);
        if let EventOutcome::Refunded { reversals, .. } = first
            && !reversals.is_empty()
        {
            refunded += 1;
        }
    }
    assert_eq!(refunded, 1, "one delivery moved the transfers");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = w.transfers_of(order).await;
        if rows.iter().all(|r| r.status() == TransferStatus::Reversed) {
            break;
        }
        assert!(Instant::now() < deadline, "not reversed in time: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    assert_eq!(w.stripe.reversals().len(), 3);
    for row in w.transfers_of(order).await {
        let moves = w
            .audit(row.id)
            .await
            .into_iter()
            .filter(|a| a.1 == "reversal_pending")
            .count();
        assert_eq!(moves, 1, "one completed → reversal_pending per transfer");
    }
    let outcomes: Vec<(String, String)> =
        w.events().await.into_iter().map(|e| (e.0, e.2)).collect();
    assert_eq!(
        outcomes,
        [
            ("evt_pay", "transfers_created"),
            ("evt_refund", "refunded"),
            ("evt_refund_2", "refunded")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "each event recorded once"
    );
    let reversal_jobs = w
        .jobs()
        .await
        .into_iter()
        .filter(|j| j.1 == "reverse_transfer")
        .count();
    assert_eq!(reversal_jobs, 3);
}

async fn refund_during_an_in_flight_payout_reverses_it(t: TestDb) {
    let w = generous(&t).await;
    let (order, _) = w.order(&[(1, 500)]).await;
    let EventOutcome::TransfersCreated {
        transfer_ids: ids, ..
    } = w.deliver(&w.paid("evt_pay", order).await).await
    else {
        panic!()
    };
    let id = ids[0];
    // Stripe is slow (but within the timeout) to answer the payout.
    w.stripe.fault(
        Route::CreateTransfer,
        Fault::Delay(Duration::from_millis(200)),
    );
    let engine = w.engine.clone();
    let payout =
        tokio::spawn(
            async move { perform_job(&engine, &TransferSeller { transfer_id: id }).await },
        );
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.stripe.transfers().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The refund lands while the payout is on its way back.
    let total = w.total(order).await;
    let outcome = w
        .deliver(&w.charge_refunded("evt_refund", order, total).await)
        .await;
    assert_eq!(
        outcome,
        EventOutcome::Refunded {
            order_id: order,
            reversals: vec![],
            cancelled: vec![],
            awaiting_payout: vec![id],
            needs_admin: vec![],
        },
        "a payout in flight is not cancelled"
    );
    payout.await.unwrap().unwrap();
    let row = w.transfer(id).await;
    assert_eq!(
        row.status(),
        TransferStatus::ReversalPending,
        "the payout saw the refund"
    );
    w.settle(3).await;
    assert_eq!(w.transfer(id).await.status(), TransferStatus::Reversed);
    assert_eq!(w.stripe.transfers().len(), 1);
    assert_eq!(w.stripe.reversals().len(), 1);
    let path: Vec<String> = w.audit(id).await.into_iter().map(|a| a.1).collect();
    assert_eq!(
        path,
        ["pending", "completed", "reversal_pending", "reversed"]
    );
}

async fn refund_after_a_payout_with_unknown_outcome_never_pays_twice(t: TestDb) {
    let w = generous(&t).await;
    let (order, _) = w.order(&[(1, 500)]).await;
    let EventOutcome::TransfersCreated {
        transfer_ids: ids, ..
    } = w.deliver(&w.paid("evt_pay", order).await).await
    else {
        panic!()
    };
    // The payout is made on Stripe but its answer is lost: the row is `failed`.
    w.stripe.fault(Route::CreateTransfer, Fault::LostResponse);
    assert_eq!(w.drain().await.retried, 1);
    assert_eq!(w.transfer(ids[0]).await.status(), TransferStatus::Failed);
    let total = w.total(order).await;
    let outcome = w
        .deliver(&w.charge_refunded("evt_refund", order, total).await)
        .await;
    assert!(
        matches!(outcome, EventOutcome::Refunded { ref awaiting_payout, .. } if awaiting_payout == &ids)
    );
    w.settle(4).await;
    // The payout job found the transfer on Stripe instead of creating one, and reversed it.
    assert_eq!(w.transfer(ids[0]).await.status(), TransferStatus::Reversed);
    assert_eq!(w.stripe.transfers().len(), 1);
    assert_eq!(w.stripe.reversals().len(), 1);
    assert_eq!(
        w.stripe
            .requests("POST", "/v1/transfers")
            .iter()
            .filter(|l| l.path == "/v1/transfers")
            .count(),
        1
    );
}

async fn refund_after_a_payout_that_never_reached_stripe_cancels_it(t: TestDb) {
    let w = generous(&t).await;
    let (order, _) = w.order(&[(1, 500)]).await;
    let EventOutcome::TransfersCreated {
        transfer_ids: ids, ..
    } = w.deliver(&w.paid("evt_pay", order).await).await
    else {
        panic!()
    };
    w.stripe.fault(Route::CreateTransfer, Fault::Timeout);
    assert_eq!(w.drain().await.retried, 1);
    let total = w.total(order).await;
    w.deliver(&w.charge_refunded("evt_refund", order, total).await)
        .await;
    w.settle(4).await;
    let row = w.transfer(ids[0]).await;
    assert_eq!(row.status(), TransferStatus::Cancelled);
    assert!(
        w.stripe.transfers().is_empty(),
        "a refund is never followed by a payout"
    );
    assert_eq!(
        w.stripe.requests("POST", "/v1/transfers").len(),
        1,
        "only the attempt before the refund"
    );
}

/// Two workers read the same `failed` row; one records its retry (failed → failed); the
/// other's retry, from the stale read, must not overwrite it. A status guard cannot see
/// this: the status is `failed` before and after. The version can.
async fn a_retry_bump_from_a_stale_read_is_refused(t: TestDb) {
    let w = world_with(&t, |_| {}).await;
    let (order, _) = w.order(&[(1, 500)]).await;
    let EventOutcome::TransfersCreated { transfer_ids, .. } =
        w.deliver(&w.paid("evt_pay", order).await).await
    else {
        panic!("payment not processed")
    };
    let id = transfer_ids[0];
    let actor = Actor::cli();
    let now = w.clock.now_ms();
    let mut conn = w.engine.db().acquire().await.unwrap();
    let pending = w.transfer(id).await;
    state::transition(
        &mut conn,
        &pending,
        TransferStatus::Failed,
        Changes::retry(1, now, "a"),
        &actor,
        None,
        now,
    )
    .await
    .unwrap();
    let first = w.transfer(id).await;
    let second = first.clone();
    state::transition(
        &mut conn,
        &first,
        TransferStatus::Failed,
        Changes::retry(2, now, "b"),
        &actor,
        None,
        now,
    )
    .await
    .unwrap();
    let stale = state::transition(
        &mut conn,
        &second,
        TransferStatus::Failed,
        Changes::retry(2, now, "c"),
        &actor,
        None,
        now,
    )
    .await;
    assert!(
        matches!(
            stale,
            Err(engine::state_machine::TransitionError::Stale { .. })
        ),
        "{stale:?}"
    );
    let row = w.transfer(id).await;
    assert_eq!((row.retry_count, row.last_error.as_deref()), (2, Some("b")));
}
