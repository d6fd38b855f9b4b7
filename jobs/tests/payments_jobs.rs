//! The payments jobs against a fake Stripe (the real async-stripe client over HTTP), on both
//! backends: every outcome of a payout and of a reversal, idempotency keys, lost answers,
//! the safety nets, the drift detector, the switches and the rate limit.

mod support;

use std::time::{Duration, Instant};

use engine::scheduler::Scheduler;
use engine::testing::{TestDb, perform_job, query_plan};
use engine::{Actor, Backend, JobError, Outcome, Registry, backend_tests};
use jobs::payments::{self, EventOutcome, PaymentsConfig};
use jobs::reconcile_transfers::{self, ReconcileTransfers};
use jobs::reverse_transfer::ReverseTransfer;
use jobs::reverse_transfer::check::ReverseTransferCheck;
use jobs::transfer_seller::TransferSeller;
use jobs::transfer_seller::check::TransferSellerCheck;
use jobs::transfers::stripe::StripeClient;
use jobs::transfers::{self, TransferStatus};
use support::{FakeStripe, Fault, Route, World, world, world_with};

backend_tests!(
    schema = jobs::schema::migrator;
    payout_creates_the_transfer_and_completes_the_row,
    transient_payout_errors_are_mirrored_on_the_row_and_retried_with_the_same_key,
    permanent_payout_error_fails_the_transfer_for_good,
    payout_gives_up_after_its_retries,
    payout_whose_answer_was_lost_is_recovered_without_a_second_transfer,
    reversal_reverses_the_whole_transfer_once,
    reversal_of_an_already_reversed_transfer_adopts_the_existing_reversal,
    reversal_of_a_transfer_stripe_does_not_know_fails_for_good,
    legacy_row_without_transfer_id_fails_without_calling_stripe,
    transient_reversal_errors_back_off_then_give_up,
    other_reversal_errors_fail_with_stripes_code_and_message,
    worker_killed_after_stripes_success_gets_the_same_reversal_back,
    lost_reversal_answer_gets_the_same_reversal_back,
    safety_nets_requeue_transfers_whose_job_is_gone_never_twice,
    reconcile_records_each_disagreement_with_stripe,
    admin_retry_gives_fresh_attempts_and_keys,
    a_payout_job_ended_without_its_handler_gives_the_transfer_up,
    a_payout_that_lost_its_job_during_the_stripe_call_records_nothing,
    listing_by_seller_reads_the_seller_index,
);

/// An order of `items`, paid: returns the transfer ids.
async fn paid_order(w: &World, evt: &str, items: &[(i64, i64)]) -> (i64, Vec<i64>) {
    let (order, _) = w.order(items).await;
    let EventOutcome::TransfersCreated { transfer_ids, .. } =
        w.deliver(&w.paid(evt, order).await).await
    else {
        panic!("payment not processed")
    };
    (order, transfer_ids)
}

/// An order paid out and fully refunded: its transfers are `reversal_pending`.
async fn refunded_order(w: &World, tag: &str, items: &[(i64, i64)]) -> (i64, Vec<i64>) {
    let (order, ids) = paid_order(w, &format!("evt_pay_{tag}"), items).await;
    w.drain().await;
    let total = w.total(order).await;
    let refund = w
        .charge_refunded(&format!("evt_refund_{tag}"), order, total)
        .await;
    assert!(matches!(
        w.deliver(&refund).await,
        EventOutcome::Refunded { .. }
    ));
    for id in &ids {
        assert_eq!(
            w.transfer(*id).await.status(),
            TransferStatus::ReversalPending
        );
    }
    (order, ids)
}

fn keys(log: &[support::fake_stripe::Logged]) -> Vec<String> {
    log.iter()
        .map(|l| l.idempotency_key.clone().unwrap_or_default())
        .collect()
}

async fn job_of(w: &World, kind: &str, id: i64) -> (i64, String, i64, i64, Option<String>) {
    let key = format!("{kind}:{id}");
    w.jobs()
        .await
        .into_iter()
        .filter(|j| j.3.as_deref() == Some(key.as_str()))
        .map(|j| (j.0, j.2, j.4, j.5, j.6))
        .next_back()
        .unwrap_or_else(|| panic!("no job {key}"))
}

async fn payout_creates_the_transfer_and_completes_the_row(t: TestDb) {
    let w = world(&t).await;
    let (order, ids) = paid_order(&w, "evt_pay", &[(1, 500)]).await;
    let report = w.drain().await;
    assert_eq!(report.succeeded, 1);
    let row = w.transfer(ids[0]).await;
    assert_eq!(row.status(), TransferStatus::Completed);
    let fake = w.stripe.transfers();
    assert_eq!(fake.len(), 1);
    assert_eq!(row.stripe_transfer_id.as_deref(), Some(fake[0].id.as_str()));
    assert_eq!(
        (
            fake[0].amount,
            fake[0].currency.as_str(),
            fake[0].destination.as_str()
        ),
        (500, "eur", support::account(1).as_str())
    );
    assert_eq!(fake[0].transfer_group, Some(format!("order:{order}")));
    assert_eq!(fake[0].metadata["seller_transfer_id"], ids[0].to_string());
    let posts = w.stripe.requests("POST", "/v1/transfers");
    assert_eq!(keys(&posts), [format!("transfer:{}", ids[0])]);
    assert_eq!(
        posts[0]
            .params
            .iter()
            .find(|(k, _)| k == "source_transaction")
            .map(|p| p.1.as_str()),
        Some(support::ch(order).as_str())
    );
    let audit = w.audit(ids[0]).await;
    assert_eq!(
        (audit[1].0.as_str(), audit[1].1.as_str()),
        ("pending", "completed")
    );
    assert!(audit[1].2.starts_with("job:"));
    // Running it again changes nothing and calls nobody.
    let again = perform_job(
        &w.engine,
        &TransferSeller {
            transfer_id: ids[0],
        },
    )
    .await;
    assert!(matches!(again, Ok(Outcome::Skipped { .. })));
    assert_eq!(w.stripe.transfers().len(), 1);
}

async fn transient_payout_errors_are_mirrored_on_the_row_and_retried_with_the_same_key(t: TestDb) {
    let w = world(&t).await; // TRANSFER_RETRY_BACKOFF_BASE 30s, MAX 1h
    let (_, ids) = paid_order(&w, "evt_pay", &[(1, 500)]).await;
    let id = ids[0];
    w.stripe.fault(Route::CreateTransfer, Fault::Unavailable);
    w.stripe.fault(Route::CreateTransfer, Fault::RateLimited);
    w.stripe.fault(Route::CreateTransfer, Fault::Timeout);

    // The row's next_retry_at and the job's next run are one number, drawn by the engine's
    // one backoff formula on TRANSFER_RETRY_*: min(MAX, BASE·2^retry_count) ± 10 %.
    let within = |at: i64, from: i64, delay: i64| {
        (from + delay - delay / 10..=from + delay + delay / 10).contains(&at)
    };
    let t0 = w.clock.now_ms();
    assert_eq!(w.drain().await.retried, 1);
    let row = w.transfer(id).await;
    assert_eq!(row.status(), TransferStatus::Failed);
    assert_eq!(row.retry_count, 1);
    let next = row.next_retry_at.unwrap();
    assert!(within(next, t0, 30_000), "{next}");
    assert!(
        row.last_error.as_deref().unwrap().contains("503"),
        "{:?}",
        row.last_error
    );
    let (job_id, state, run_at, _, _) = job_of(&w, "transfer_seller", id).await;
    assert_eq!(state, "retrying");
    assert_eq!(run_at, next, "the engine's timer is the row's");
    let job = engine::admin::get_job(w.engine.db(), job_id).await.unwrap();
    assert_eq!(
        job.job.max_attempts,
        w.config.payout.max_retries + 1,
        "attempts from TRANSFER_RETRY_MAX_RETRIES"
    );

    w.clock.advance(Duration::from_secs(40));
    let t1 = w.clock.now_ms();
    assert_eq!(w.drain().await.retried, 1);
    let row = w.transfer(id).await;
    assert_eq!((row.status(), row.retry_count), (TransferStatus::Failed, 2));
    assert!(within(row.next_retry_at.unwrap(), t1, 60_000));
    assert_eq!(
        job_of(&w, "transfer_seller", id).await.2,
        row.next_retry_at.unwrap()
    );
    assert!(row.last_error.as_deref().unwrap().contains("rate_limit"));

    w.clock.advance(Duration::from_secs(70));
    let t2 = w.clock.now_ms();
    assert_eq!(w.drain().await.retried, 1);
    let row = w.transfer(id).await;
    assert_eq!(row.retry_count, 3);
    assert!(within(row.next_retry_at.unwrap(), t2, 120_000));
    assert!(row.last_error.as_deref().unwrap().contains("timeout"));

    w.clock.advance(Duration::from_secs(140)); // the engine's timer: 120 s ± 10 % jitter
    assert_eq!(w.drain().await.succeeded, 1);
    let row = w.transfer(id).await;
    assert_eq!(row.status(), TransferStatus::Completed);
    assert_eq!(row.next_retry_at, None);
    assert_eq!(w.stripe.transfers().len(), 1);
    let posts = w.stripe.requests("POST", "/v1/transfers");
    assert_eq!(
        keys(&posts),
        vec![format!("transfer:{id}"); 4],
        "one key on every attempt"
    );
    // From the second attempt on, the payout is looked for before it is created again.
    assert_eq!(w.stripe.requests("GET", "/v1/transfers").len(), 3);
    let audit: Vec<(String, String)> = w.audit(id).await.into_iter().map(|a| (a.0, a.1)).collect();
    assert_eq!(
        audit,
        [
            ("none", "pending"),
            ("pending", "failed"),
            ("failed", "failed"),
            ("failed", "failed"),
            ("failed", "completed")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
}

async fn permanent_payout_error_fails_the_transfer_for_good(t: TestDb) {
    let w = world(&t).await;
    let (_, ids) = paid_order(&w, "evt_pay", &[(1, 500)]).await;
    w.stripe.fault(
        Route::CreateTransfer,
        Fault::Error {
            status: 400,
            code: Some("transfers_not_allowed"),
            message: "Transfers are not allowed to this account.",
        },
    );
    assert_eq!(w.drain().await.failed, 1);
    let row = w.transfer(ids[0]).await;
    assert_eq!(row.status(), TransferStatus::PermanentlyFailed);
    let error = row.last_error.unwrap();
    assert!(
        error.contains("transfers_not_allowed") && error.contains("not allowed"),
        "{error}"
    );
    let audit: Vec<String> = w.audit(ids[0]).await.into_iter().map(|a| a.1).collect();
    assert_eq!(audit, ["pending", "failed", "permanently_failed"]);
    assert_eq!(job_of(&w, "transfer_seller", ids[0]).await.1, "failed");
}

async fn payout_gives_up_after_its_retries(t: TestDb) {
    let w = world_with(&t, |c| c.payout.max_retries = 2).await;
    let (_, ids) = paid_order(&w, "evt_pay", &[(1, 500)]).await;
    for _ in 0..3 {
        w.stripe.fault(Route::CreateTransfer, Fault::Unavailable);
    }
    w.settle(6).await;
    let row = w.transfer(ids[0]).await;
    assert_eq!(row.status(), TransferStatus::PermanentlyFailed);
    assert_eq!(row.retry_count, 3);
    assert_eq!(row.next_retry_at, None);
    assert!(row.last_error.unwrap().contains("503"));
    assert_eq!(w.stripe.requests("POST", "/v1/transfers").len(), 3);
    let (_, state, _, _, error) = job_of(&w, "transfer_seller", ids[0]).await;
    assert_eq!(state, "failed");
    assert!(error.unwrap().contains("gave up after 3 failed attempts"));
}

async fn payout_whose_answer_was_lost_is_recovered_without_a_second_transfer(t: TestDb) {
    let w = world(&t).await;
    let (_, ids) = paid_order(&w, "evt_pay", &[(1, 500)]).await;
    w.stripe.fault(Route::CreateTransfer, Fault::LostResponse);
    assert_eq!(w.drain().await.retried, 1);
    assert_eq!(w.transfer(ids[0]).await.status(), TransferStatus::Failed);
    assert_eq!(
        w.stripe.transfers().len(),
        1,
        "Stripe made it; we never heard"
    );
    w.settle(3).await;
    let row = w.transfer(ids[0]).await;
    assert_eq!(row.status(), TransferStatus::Completed);
    assert_eq!(w.stripe.transfers().len(), 1);
    assert_eq!(
        row.stripe_transfer_id,
        Some(w.stripe.transfers()[0].id.clone())
    );
}

async fn reversal_reverses_the_whole_transfer_once(t: TestDb) {
    let w = world(&t).await;
    let (_, ids) = refunded_order(&w, "a", &[(1, 500)]).await;
    let id = ids[0];
    assert_eq!(w.drain().await.succeeded, 1);
    let row = w.transfer(id).await;
    assert_eq!(row.status(), TransferStatus::Reversed);
    let reversals = w.stripe.reversals();
    assert_eq!(reversals.len(), 1);
    assert_eq!(
        row.stripe_reversal_id.as_deref(),
        Some(reversals[0].id.as_str())
    );
    assert_eq!(reversals[0].amount, 500);
    let posts = w.stripe.requests("POST", "/v1/transfers/");
    assert_eq!(keys(&posts), [format!("reversal:{id}")]);
    assert!(
        posts[0].params.iter().all(|(k, _)| k != "amount"),
        "a full reversal leaves amount unset: {:?}",
        posts[0].params
    );
    let again = perform_job(&w.engine, &ReverseTransfer { transfer_id: id }).await;
    assert!(matches!(again, Ok(Outcome::Skipped { .. })));
    assert_eq!(w.stripe.reversals().len(), 1);
}

async fn reversal_of_an_already_reversed_transfer_adopts_the_existing_reversal(t: TestDb) {
    let w = world(&t).await;
    let (_, ids) = refunded_order(&w, "a", &[(1, 500)]).await;
    let row = w.transfer(ids[0]).await;
    let tr = row.stripe_transfer_id.clone().unwrap();
    // Someone reversed it in the dashboard; Stripe then answers a 400 without a code.
    let existing = w.stripe.reverse_out_of_band(&tr);
    perform_job(
        &w.engine,
        &ReverseTransfer {
            transfer_id: row.id,
        },
    )
    .await
    .unwrap();
    let row = w.transfer(row.id).await;
    assert_eq!(row.status(), TransferStatus::Reversed);
    assert_eq!(row.stripe_reversal_id.as_deref(), Some(existing.as_str()));
    assert_eq!(w.stripe.reversals().len(), 1);
    let posts = w.stripe.requests("POST", "/v1/transfers/");
    assert_eq!(posts[0].result, "400");
    let note = w.audit(row.id).await.last().unwrap().3.clone().unwrap();
    assert!(
        note.contains("adopted reversal") && note.contains(&existing),
        "{note}"
    );
}

async fn reversal_of_a_transfer_stripe_does_not_know_fails_for_good(t: TestDb) {
    let w = world(&t).await;
    let (_, ids) = refunded_order(&w, "a", &[(1, 500)]).await;
    let tr = w.transfer(ids[0]).await.stripe_transfer_id.unwrap();
    w.stripe.forget_transfer(&tr);
    let err = perform_job(
        &w.engine,
        &ReverseTransfer {
            transfer_id: ids[0],
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, JobError::Permanent(_)), "{err:?}");
    let row = w.transfer(ids[0]).await;
    assert_eq!(row.status(), TransferStatus::PermanentlyFailed);
    assert!(row.last_error.unwrap().contains("resource_missing"));
}

async fn legacy_row_without_transfer_id_fails_without_calling_stripe(t: TestDb) {
    let w = world(&t).await;
    let (order, items) = w.order(&[(1, 500)]).await;
    // A row migrated from the old system: reversal_pending, and no Stripe transfer id.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO seller_transfers (order_id, order_item_id, seller_id, amount, currency, \
         status, stripe_transfer_id, created_at, updated_at) \
         VALUES ($1, $2, 1, 500, 'eur', 'reversal_pending', '', 0, 0) RETURNING id",
    )
    .bind(order)
    .bind(items[0])
    .fetch_one(w.engine.db())
    .await
    .unwrap();
    let err = perform_job(&w.engine, &ReverseTransfer { transfer_id: id })
        .await
        .unwrap_err();
    assert!(
        matches!(err, JobError::Permanent(ref m) if m.contains("legacy")),
        "{err:?}"
    );
    assert_eq!(
        w.transfer(id).await.status(),
        TransferStatus::PermanentlyFailed
    );
    assert!(w.stripe.log().is_empty(), "Stripe was not called");
}

async fn transient_reversal_errors_back_off_then_give_up(t: TestDb) {
    let w = world_with(&t, |c| {
        c.reversal.max_retries = 3;
        c.reversal.base = Duration::from_secs(10);
        c.reversal.max = Duration::from_secs(25);
    })
    .await;
    let (_, ids) = refunded_order(&w, "a", &[(1, 500)]).await;
    let id = ids[0];
    let faults = [
        Fault::Unavailable,
        Fault::Timeout,
        Fault::RateLimited,
        Fault::Unavailable,
    ];
    for f in faults {
        w.stripe.fault(Route::CreateReversal, f);
    }
    let expected_delays = [10_000, 20_000, 25_000];
    for (i, delay) in expected_delays.iter().enumerate() {
        let now = w.clock.now_ms();
        let err = perform_job(&w.engine, &ReverseTransfer { transfer_id: id })
            .await
            .unwrap_err();
        let JobError::RetryAt { at, .. } = err else {
            panic!("{err:?}")
        };
        let row = w.transfer(id).await;
        assert_eq!(row.status(), TransferStatus::ReversalPending);
        assert_eq!(row.retry_count, i as i64 + 1);
        assert_eq!(
            row.next_retry_at,
            Some(at),
            "the job retries when the row says"
        );
        assert!(
            (now + delay - delay / 10..=now + delay + delay / 10).contains(&at),
            "min(MAX, BASE·2^{i}) ± 10 %: {at}"
        );
        assert!(row.last_error.is_some());
        w.clock
            .advance(Duration::from_millis(*delay as u64 * 11 / 10));
    }
    let err = perform_job(&w.engine, &ReverseTransfer { transfer_id: id })
        .await
        .unwrap_err();
    assert!(
        matches!(err, JobError::Permanent(ref m) if m.contains("gave up after 4")),
        "{err:?}"
    );
    let row = w.transfer(id).await;
    assert_eq!(row.status(), TransferStatus::PermanentlyFailed);
    assert_eq!(row.retry_count, 4);
    let posts = w.stripe.requests("POST", "/v1/transfers/");
    assert_eq!(
        keys(&posts),
        vec![format!("reversal:{id}"); 4],
        "one key on every attempt"
    );
    assert!(w.stripe.reversals().is_empty());
}

async fn other_reversal_errors_fail_with_stripes_code_and_message(t: TestDb) {
    let w = world(&t).await;
    let (_, ids) = refunded_order(&w, "a", &[(1, 500)]).await;
    let tr = w.transfer(ids[0]).await.stripe_transfer_id.unwrap();
    w.stripe.insufficient_balance(&tr);
    let err = perform_job(
        &w.engine,
        &ReverseTransfer {
            transfer_id: ids[0],
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, JobError::Permanent(_)));
    let row = w.transfer(ids[0]).await;
    assert_eq!(row.status(), TransferStatus::PermanentlyFailed);
    let error = row.last_error.unwrap();
    assert!(
        error.contains("balance_insufficient") && error.contains("insufficient funds"),
        "{error}"
    );
}

async fn worker_killed_after_stripes_success_gets_the_same_reversal_back(t: TestDb) {
    let w = world(&t).await;
    let (_, ids) = refunded_order(&w, "a", &[(1, 500)]).await;
    let id = ids[0];
    // Stripe executes the reversal, but the worker dies before it hears back and commits.
    w.stripe
        .fault(Route::CreateReversal, Fault::Delay(Duration::from_secs(5)));
    let engine = w.engine.clone();
    let worker =
        tokio::spawn(
            async move { perform_job(&engine, &ReverseTransfer { transfer_id: id }).await },
        );
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.stripe.reversals().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the reversal never reached Stripe"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.abort();
    let _ = worker.await;
    assert_eq!(
        w.transfer(id).await.status(),
        TransferStatus::ReversalPending
    );
    let first = w.stripe.reversals()[0].id.clone();

    // The next attempt (the lease ran out) sends the same key and gets the same reversal.
    perform_job(&w.engine, &ReverseTransfer { transfer_id: id })
        .await
        .unwrap();
    let row = w.transfer(id).await;
    assert_eq!(row.status(), TransferStatus::Reversed);
    assert_eq!(row.stripe_reversal_id.as_deref(), Some(first.as_str()));
    assert_eq!(
        w.stripe.reversals().len(),
        1,
        "one reversal in Stripe's log"
    );
    let posts = w.stripe.requests("POST", "/v1/transfers/");
    assert_eq!(keys(&posts), vec![format!("reversal:{id}"); 2]);
    assert_eq!(posts[1].result, "replay");
}

async fn lost_reversal_answer_gets_the_same_reversal_back(t: TestDb) {
    let w = world(&t).await;
    let (_, ids) = refunded_order(&w, "a", &[(1, 500), (2, 300)]).await;
    w.stripe.fault(Route::CreateReversal, Fault::LostResponse);
    let report = w.drain().await;
    assert_eq!((report.succeeded, report.retried), (1, 1));
    assert_eq!(w.stripe.reversals().len(), 2, "both executed on Stripe");
    w.settle(3).await;
    for id in &ids {
        assert_eq!(w.transfer(*id).await.status(), TransferStatus::Reversed);
    }
    assert_eq!(w.stripe.reversals().len(), 2, "and nothing more");
    let mut reversal_ids: Vec<String> = Vec::new();
    for id in &ids {
        reversal_ids.push(w.transfer(*id).await.stripe_reversal_id.unwrap());
    }
    let mut fake_ids: Vec<String> = w.stripe.reversals().into_iter().map(|r| r.id).collect();
    reversal_ids.sort();
    fake_ids.sort();
    assert_eq!(reversal_ids, fake_ids);
}

async fn safety_nets_requeue_transfers_whose_job_is_gone_never_twice(t: TestDb) {
    let w = world(&t).await;
    // A reversal and a payout whose job rows are gone (deleted by hand, lost in a restore;
    // a cancelled or failed job gives its transfer up instead, see
    // a_payout_job_ended_without_its_handler_gives_the_transfer_up).
    let (_, reversing) = refunded_order(&w, "a", &[(1, 500)]).await;
    let (_, paying) = paid_order(&w, "evt_pay_b", &[(2, 300)]).await;
    let (rev_job, ..) = job_of(&w, "reverse_transfer", reversing[0]).await;
    let (pay_job, ..) = job_of(&w, "transfer_seller", paying[0]).await;
    let forget = |job: i64| {
        let db = w.engine.db().clone();
        async move {
            sqlx::query("DELETE FROM jobs WHERE id = $1")
                .bind(job)
                .execute(&db)
                .await
                .unwrap();
        }
    };
    forget(rev_job).await;
    forget(pay_job).await;

    let scheduler = Scheduler::new(w.engine.clone(), payments::schedules(&w.config));
    scheduler.register().await.unwrap();
    w.clock.advance(Duration::from_secs(61));
    let mut fired: Vec<&str> = scheduler
        .tick()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.0)
        .collect();
    fired.sort();
    assert_eq!(fired, ["reverse_transfer_check", "transfer_seller_check"]);
    // Run just the checks.
    perform_job(&w.engine, &ReverseTransferCheck {})
        .await
        .unwrap();
    perform_job(&w.engine, &TransferSellerCheck {})
        .await
        .unwrap();
    perform_job(&w.engine, &ReverseTransferCheck {})
        .await
        .unwrap();
    perform_job(&w.engine, &TransferSellerCheck {})
        .await
        .unwrap();
    let unfinished = |kind: &'static str| {
        let w = &w;
        async move {
            w.jobs()
                .await
                .into_iter()
                .filter(|j| {
                    j.1 == kind && ["pending", "running", "retrying"].contains(&j.2.as_str())
                })
                .count()
        }
    };
    assert_eq!(
        unfinished("reverse_transfer").await,
        1,
        "one job, never two"
    );
    assert_eq!(unfinished("transfer_seller").await, 1);
    w.settle(3).await;
    assert_eq!(
        w.transfer(reversing[0]).await.status(),
        TransferStatus::Reversed
    );
    assert_eq!(
        w.transfer(paying[0]).await.status(),
        TransferStatus::Completed
    );

    // A row with retries left keeps its schedule: the new job is due at next_retry_at and
    // gets the attempts the row has left.
    let (_, more) = refunded_order(&w, "c", &[(3, 200)]).await;
    w.stripe.fault(Route::CreateReversal, Fault::Unavailable);
    perform_job(
        &w.engine,
        &ReverseTransfer {
            transfer_id: more[0],
        },
    )
    .await
    .unwrap_err();
    let row = w.transfer(more[0]).await;
    let (job, ..) = job_of(&w, "reverse_transfer", more[0]).await;
    forget(job).await;
    perform_job(&w.engine, &ReverseTransferCheck {})
        .await
        .unwrap();
    let (_, state, run_at, max_attempts, _) = job_of(&w, "reverse_transfer", more[0]).await;
    assert_eq!(state, "pending");
    assert_eq!(Some(run_at), row.next_retry_at);
    assert_eq!(
        max_attempts,
        i64::from(w.config.reversal.max_retries) + 1 - 1
    );
}

async fn reconcile_records_each_disagreement_with_stripe(t: TestDb) {
    let w = world(&t).await;
    // One order paid out: `agrees` stays completed; `reversed_there` is reversed on Stripe
    // behind our back; `missing` disappears from Stripe.
    let (_, ids) = paid_order(&w, "evt_pay", &[(1, 100), (2, 200), (3, 300)]).await;
    // Another order paid out, refunded and reversed: then Stripe shows it not reversed.
    let (_, refunded) = refunded_order(&w, "b", &[(4, 400)]).await;
    w.settle(3).await;
    let (agrees, reversed_there, missing, not_reversed) = (ids[0], ids[1], ids[2], refunded[0]);
    assert_eq!(
        w.transfer(not_reversed).await.status(),
        TransferStatus::Reversed
    );
    let tr = |id| {
        let w = &w;
        async move { w.transfer(id).await.stripe_transfer_id.unwrap() }
    };
    w.stripe.reverse_out_of_band(&tr(reversed_there).await);
    w.stripe.forget_transfer(&tr(missing).await);
    w.stripe.set_amount_reversed(&tr(not_reversed).await, 0);

    perform_job(&w.engine, &ReconcileTransfers {})
        .await
        .unwrap();
    let findings = reconcile_transfers::list_findings(w.engine.db(), false, 0, 100)
        .await
        .unwrap();
    let mut seen: Vec<(i64, String)> = findings
        .iter()
        .map(|f| (f.seller_transfer_id, f.kind.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (reversed_there, "reversed_on_stripe".to_owned()),
            (missing, "missing_on_stripe".to_owned()),
            (not_reversed, "not_reversed_on_stripe".to_owned()),
        ]
    );
    assert!(seen.iter().all(|(id, _)| *id != agrees));
    let f = findings
        .iter()
        .find(|f| f.seller_transfer_id == reversed_there)
        .unwrap();
    assert_eq!(
        (f.stripe_reversed, f.stripe_amount_reversed),
        (Some(1), Some(200))
    );
    assert_eq!(f.row_status, "completed");
    // It never changes a transfer.
    assert_eq!(
        w.transfer(reversed_there).await.status(),
        TransferStatus::Completed
    );

    // A day later, Stripe agrees on one of them again: the others are seen again, not
    // recorded twice; that one is resolved.
    w.clock.advance(Duration::from_secs(86_400));
    w.stripe.set_amount_reversed(&tr(not_reversed).await, 400);
    perform_job(&w.engine, &ReconcileTransfers {})
        .await
        .unwrap();
    let all = reconcile_transfers::list_findings(w.engine.db(), true, 0, 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    for f in &all {
        if f.seller_transfer_id == not_reversed {
            assert!(f.resolved_at.is_some());
        } else {
            assert!(f.resolved_at.is_none() && f.last_seen_at > f.first_seen_at);
        }
    }
    let open = reconcile_transfers::list_findings(w.engine.db(), false, 0, 100)
        .await
        .unwrap();
    assert_eq!(open.len(), 2);
}

async fn admin_retry_gives_fresh_attempts_and_keys(t: TestDb) {
    let w = world(&t).await;
    let (_, ids) = refunded_order(&w, "a", &[(1, 500)]).await;
    let tr = w.transfer(ids[0]).await.stripe_transfer_id.unwrap();
    w.stripe.insufficient_balance(&tr);
    perform_job(
        &w.engine,
        &ReverseTransfer {
            transfer_id: ids[0],
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        w.transfer(ids[0]).await.status(),
        TransferStatus::PermanentlyFailed
    );
    let wrong = transfers::admin_retry(&w.engine, ids[0] + 1000, &Actor::api_key(1)).await;
    assert!(matches!(wrong, Err(transfers::AdminError::NotFound(_))));

    // An admin retries.
    let status = transfers::admin_retry(&w.engine, ids[0], &Actor::api_key(1))
        .await
        .unwrap();
    assert_eq!(status, TransferStatus::ReversalPending);
    let row = w.transfer(ids[0]).await;
    assert_eq!((row.retry_count, row.key_generation), (0, 1));
    assert_eq!(row.reversal_key(), format!("reversal:{}:1", ids[0]));
    let again = transfers::admin_retry(&w.engine, ids[0], &Actor::api_key(1)).await;
    assert!(matches!(
        again,
        Err(transfers::AdminError::NotRetryable { .. })
    ));
    let audit = w.audit(ids[0]).await;
    let last = audit.last().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str(), last.2.as_str()),
        ("permanently_failed", "reversal_pending", "api_key:1")
    );
    assert_eq!(job_of(&w, "reverse_transfer", ids[0]).await.1, "pending");

    // The seller's balance is topped up: the new key is executed afresh (the old one would
    // replay the stored refusal).
    w.stripe.sufficient_balance(&tr);
    w.settle(3).await;
    assert_eq!(w.transfer(ids[0]).await.status(), TransferStatus::Reversed);
    let posts = w.stripe.requests("POST", "/v1/transfers/");
    assert_eq!(
        keys(&posts),
        [
            format!("reversal:{}", ids[0]),
            format!("reversal:{}:1", ids[0])
        ]
    );
}

#[tokio::test]
async fn registration_follows_the_key_and_the_switches() {
    let kinds = |config: &PaymentsConfig| {
        let mut registry = Registry::new();
        payments::register(&mut registry, config);
        let mut k: Vec<&str> = registry
            .kinds()
            .filter(|e| e.runs_here())
            .map(|e| e.kind)
            .collect();
        k.sort();
        (
            k,
            payments::schedules(config)
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<_>>(),
        )
    };
    let none = PaymentsConfig::without_stripe();
    assert_eq!(
        kinds(&none),
        (vec!["prune_webhook_events"], vec!["prune_webhook_events"]),
        "no key: only the webhook events' retention (the webhook stores events without the \
         key), the Stripe jobs wait"
    );
    // …but declared: the jobs this process enqueues (the webhook does) carry the retry
    // policy of TRANSFER_RETRY_* and REVERSAL_*.
    let mut registry = Registry::new();
    let mut tuned = PaymentsConfig::without_stripe();
    tuned.payout.max_retries = 29;
    tuned.payout.base = Duration::from_secs(2);
    payments::register(&mut registry, &tuned);
    let payout = registry.get("transfer_seller").expect("declared");
    assert!(!payout.runs_here());
    assert_eq!(payout.policy.retry, tuned.payout.policy());
    assert_eq!(payout.policy.retry.max_attempts, 30);
    assert_eq!(
        registry.get("reverse_transfer").unwrap().policy.retry,
        tuned.reversal.policy()
    );

    let fake = FakeStripe::start(support::TIMEOUT).await;
    let mut all = PaymentsConfig::without_stripe();
    all.stripe = Some(support::stripe_settings(&fake));
    let (k, s) = kinds(&all);
    assert_eq!(
        k,
        [
            "prune_webhook_events",
            "reconcile_transfers",
            "reverse_transfer",
            "reverse_transfer_check",
            "transfer_seller",
            "transfer_seller_check"
        ]
    );
    assert_eq!(
        s,
        [
            "prune_webhook_events",
            "transfer_seller_check",
            "reverse_transfer_check",
            "reconcile_transfers"
        ]
    );

    let mut no_reversals = all.clone();
    no_reversals.reversal.enabled = false;
    let (k, s) = kinds(&no_reversals);
    assert!(!k.contains(&"reverse_transfer") && !k.contains(&"reverse_transfer_check"));
    assert!(k.contains(&"transfer_seller"));
    assert!(!s.contains(&"reverse_transfer_check"));

    let mut no_payouts = all.clone();
    no_payouts.payout.enabled = false;
    let (k, _) = kinds(&no_payouts);
    assert!(!k.contains(&"transfer_seller") && k.contains(&"reverse_transfer"));
}

#[tokio::test]
async fn stripe_calls_are_rate_limited_process_wide() {
    let fake = FakeStripe::start(support::TIMEOUT).await;
    let tr = fake.create_transfer(100, &[]);
    let mut settings = support::stripe_settings(&fake);
    settings.max_rps = std::num::NonZeroU32::new(4).unwrap();
    let client = StripeClient::new(&settings).unwrap();
    let start = Instant::now();
    // Two clones share the limiter: 12 calls at 4/s (a burst of 4) take about 2 s.
    let (a, b) = (client.clone(), client.clone());
    let t1 = tokio::spawn({
        let tr = tr.clone();
        async move {
            for _ in 0..6 {
                a.retrieve_transfer(&tr).await.unwrap();
            }
        }
    });
    let t2 = tokio::spawn({
        let tr = tr.clone();
        async move {
            for _ in 0..6 {
                b.retrieve_transfer(&tr).await.unwrap();
            }
        }
    });
    t1.await.unwrap();
    t2.await.unwrap();
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert_eq!(fake.log().len(), 12);
}

#[tokio::test]
async fn the_real_client_sees_stripes_error_shapes() {
    let fake = FakeStripe::start(support::TIMEOUT).await;
    let client = StripeClient::new(&support::stripe_settings(&fake)).unwrap();
    let e = client.retrieve_transfer("tr_nope").await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(404), Some("resource_missing"))
    );
    assert!(e.is_resource_missing() && !e.is_transient());
    fake.fault(Route::RetrieveTransfer, Fault::Timeout);
    let e = client.retrieve_transfer("tr_nope").await.unwrap_err();
    assert!(matches!(e, jobs::transfers::stripe::StripeCallError::Timeout) && e.is_transient());
    fake.fault(Route::Any, Fault::Unavailable);
    let e = client.retrieve_transfer("tr_nope").await.unwrap_err();
    assert_eq!(e.status(), Some(503));
    assert!(e.is_transient());
    // Nothing listens here: a connection error.
    let mut settings = support::stripe_settings(&fake);
    settings.api_base = "http://127.0.0.1:9/".into();
    let e = StripeClient::new(&settings)
        .unwrap()
        .retrieve_transfer("tr_x")
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
}

/// `GET /v1/transfers?seller_id=` among 20,000 transfers of 200 sellers reads the
/// `(seller_id, id)` index in order: no scan of every transfer, no sort.
async fn listing_by_seller_reads_the_seller_index(t: TestDb) {
    sqlx::query(
        "INSERT INTO orders (id, currency, amount_total, created_at, updated_at) \
         VALUES (1, 'eur', 100, 0, 0)",
    )
    .execute(&t.db)
    .await
    .unwrap();
    for (table, columns, values) in [
        (
            "order_items",
            "id, order_id, seller_id, amount, currency, created_at",
            "n, 1, n % 200, 100, 'eur', n",
        ),
        (
            "seller_transfers",
            "id, order_id, order_item_id, seller_id, amount, currency, status, created_at, updated_at",
            "n, 1, n, n % 200, 100, 'eur', 'completed', n, n",
        ),
    ] {
        let sql = match t.backend {
            Backend::Postgres => format!(
                "INSERT INTO {table} ({columns}) SELECT {values} FROM generate_series(1, 20000) AS n"
            ),
            Backend::Sqlite => format!(
                "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20000) \
                 INSERT INTO {table} ({columns}) SELECT {values} FROM s"
            ),
        };
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&t.db)
            .await
            .unwrap();
    }
    sqlx::query("ANALYZE").execute(&t.db).await.unwrap();

    let sql = transfers::state::list_sql(&[], true);
    let plan = query_plan(&t.db, t.backend, &sql, &[0, 51, 7]).await;
    assert!(
        plan.contains("seller_transfers_seller"),
        "the seller filter must use its index:\n{plan}"
    );
    let lower = plan.to_lowercase();
    assert!(
        !lower.contains("seq scan") && !lower.contains("temp b-tree") && !lower.contains("sort"),
        "no scan or sort:\n{plan}"
    );
}

/// An admin cancels a payout job (or its last attempt dies with its worker): the transfer
/// does not stay `pending` waiting for a job that will never run; it is given up in the
/// same transaction, for an admin retry to take over.
async fn a_payout_job_ended_without_its_handler_gives_the_transfer_up(t: TestDb) {
    let w = world(&t).await;
    let (_, ids) = paid_order(&w, "evt_pay", &[(1, 500)]).await;
    let (job_id, state, _, _, _) = job_of(&w, "transfer_seller", ids[0]).await;
    assert_eq!(state, "pending");
    w.engine.cancel(job_id, &Actor::api_key(1)).await.unwrap();
    let row = w.transfer(ids[0]).await;
    assert_eq!(row.status(), TransferStatus::PermanentlyFailed);
    assert_eq!(row.last_error.as_deref(), Some("job cancelled by an admin"));
    let audit: Vec<(String, String, String)> = w
        .audit(ids[0])
        .await
        .into_iter()
        .map(|a| (a.0, a.1, a.2))
        .collect();
    assert_eq!(
        audit[1..],
        [
            ("pending".into(), "failed".into(), "api_key:1".into()),
            (
                "failed".into(),
                "permanently_failed".into(),
                "api_key:1".into()
            )
        ]
    );
    assert!(w.stripe.transfers().is_empty(), "nothing was paid");
    // The admin retry pays it.
    transfers::admin_retry(&w.engine, ids[0], &Actor::api_key(1))
        .await
        .unwrap();
    w.drain().await;
    assert_eq!(w.transfer(ids[0]).await.status(), TransferStatus::Completed);
}

/// A worker whose job was taken over while it waited for Stripe (it was cut off from the
/// database past its lease, say) must not record the payout: the attempt that replaced it
/// owns the row now, and finds the transfer on Stripe under the same idempotency key. The
/// fence in the handler's transaction refuses the write.
async fn a_payout_that_lost_its_job_during_the_stripe_call_records_nothing(t: TestDb) {
    let w = world_with(&t, |c| {
        // Stripe answers slowly but within the client's timeout: the payout succeeds.
        c.stripe.as_mut().expect("stripe").timeout = Duration::from_secs(5);
    })
    .await;
    let (_, ids) = paid_order(&w, "evt_pay", &[(1, 500)]).await;
    let (job_id, ..) = job_of(&w, "transfer_seller", ids[0]).await;
    // Renewals far apart: only the fence can notice.
    let engine = engine::Engine::builder(
        w.engine.db().clone(),
        w.engine.backend(),
        w.engine.database_url(),
    )
    .registry(w.engine.registry().clone())
    .clock(w.clock.clone())
    .workers(engine::WorkerSettings {
        lease_ttl: Duration::from_secs(30),
        heartbeat_interval: Duration::from_secs(10),
        poll_interval: Duration::from_millis(50),
        ..engine::WorkerSettings::default()
    })
    .build();
    w.stripe.fault(
        Route::CreateTransfer,
        Fault::Delay(Duration::from_millis(800)),
    );
    let pool = engine::worker::WorkerPool::start(&engine);
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.stripe.requests("POST", "/v1/transfers").is_empty() {
        assert!(Instant::now() < deadline, "the payout never called Stripe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stolen = sqlx::query(
        "UPDATE jobs SET locked_by = 'thief', attempt = attempt + 1, \
         lease_expires_at = lease_expires_at + 600000 WHERE id = $1 AND status = 'running'",
    )
    .bind(job_id)
    .execute(engine.db())
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(stolen, 1);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(w.stripe.transfers().len(), 1, "Stripe made the transfer");
    let row = w.transfer(ids[0]).await;
    assert_eq!(
        row.status(),
        TransferStatus::Pending,
        "but this attempt wrote nothing"
    );
    assert_eq!(row.stripe_transfer_id, None);
    assert_eq!((row.retry_count, row.last_error), (0, None));
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(2))
        .await;
}
