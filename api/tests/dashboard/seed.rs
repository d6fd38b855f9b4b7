//! Domain data for the dashboard's pages, made through the domain's own functions (orders,
//! the transfer state machine), plus one reconciliation finding.

use engine::{Actor, Engine};
use jobs::payments::orders::{NewOrderItem, create_order};
use jobs::transfers::TransferStatus;
use jobs::transfers::state::{self, Changes, NewTransfer};

/// A transfer whose payout failed for good (pending → failed → permanently_failed, audited
/// as a job), with an open finding; returns its id.
pub(crate) async fn failed_transfer(engine: &Engine) -> i64 {
    let now = engine.clock().now_ms();
    let mut tx = engine.db().begin().await.expect("begin");
    let (order, items) = create_order(
        &mut tx,
        Some(7),
        "eur",
        2500,
        &[NewOrderItem {
            seller_id: 42,
            amount: 2500,
            product_ref: Some("beat pack".to_owned()),
        }],
        now,
    )
    .await
    .expect("order");
    let id = state::create_pending(
        &mut tx,
        &NewTransfer {
            order_id: order,
            order_item_id: items[0],
            seller_id: 42,
            amount: 2500,
            currency: "eur".to_owned(),
        },
        &Actor::webhook("evt_demo_payment"),
        now,
    )
    .await
    .expect("transfer")
    .expect("a new transfer");
    let row = state::load(&mut tx, id).await.expect("load").expect("row");
    let row = state::transition(
        &mut tx,
        &row,
        TransferStatus::Failed,
        Changes::retry(1, now + 60_000, "stripe: rate_limit: too many requests"),
        &Actor::job(9001),
        Some("stripe: rate_limit: too many requests"),
        now,
    )
    .await
    .expect("to failed");
    state::transition(
        &mut tx,
        &row,
        TransferStatus::PermanentlyFailed,
        Changes {
            last_error: Some(Some(
                "stripe: account_invalid: the seller's connected account is restricted".to_owned(),
            )),
            ..Changes::default()
        },
        &Actor::job(9002),
        Some("attempts exhausted"),
        now,
    )
    .await
    .expect("to permanently_failed");
    sqlx::query(
        "INSERT INTO transfer_findings (seller_transfer_id, stripe_transfer_id, kind, row_status, \
         row_amount, stripe_amount, stripe_amount_reversed, stripe_reversed, detail, \
         first_seen_at, last_seen_at) \
         VALUES ($1, 'tr_demo', 'missing_on_stripe', 'permanently_failed', 2500, NULL, NULL, NULL, \
         'the row was never paid out and Stripe has no transfer: nothing to do but retry', $2, $2)",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *tx)
    .await
    .expect("finding");
    tx.commit().await.expect("commit");
    id
}

/// A user (inserted; the users table belongs to the web backend) who asked for the deletion of
/// the account and for an export, through the domain's functions; returns the id.
pub(crate) async fn user_leaving(engine: &Engine, jobs: &jobs::JobsConfig, tag: &str) -> i64 {
    let now = engine.clock().now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, username, display_name, created_at, updated_at) \
         VALUES ($2, $3, 'Leaving User', $1, $1) RETURNING id",
    )
    .bind(now)
    .bind(format!("leaving-{tag}@example.com"))
    .bind(format!("leaving_{tag}"))
    .fetch_one(engine.db())
    .await
    .expect("user");
    jobs::users::request_deletion(
        engine,
        &jobs.gdpr.accounts,
        id,
        Some(true),
        &Actor::webhook("web_demo"),
    )
    .await
    .expect("deletion");
    // The export second: its job starts at once, and `request_deletion` (a read, then a
    // write) would lose SQLite's write lock to that worker.
    jobs::exports::request_export(engine, &jobs.gdpr.exports, id, &Actor::webhook("web_demo"))
        .await
        .expect("export");
    id
}
