//! Orders, their items and the sellers' connected accounts: the rows payouts are made
//! from. Orders carry payment facts (`paid_at`, `refunded_at`), not a lifecycle.

use engine::{DbConn, Millis};
use serde::Serialize;

/// An order as the payments code needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    /// Id.
    pub id: i64,
    /// Currency, lower-case ISO code.
    pub currency: String,
    /// What the buyer pays, minor units.
    pub amount_total: i64,
    /// The payment intent that paid it (`pi_…`).
    pub stripe_payment_intent_id: Option<String>,
    /// The payment's charge (`ch_…`).
    pub stripe_charge_id: Option<String>,
    /// When the payment succeeded.
    pub paid_at: Option<Millis>,
    /// When the payment was fully refunded.
    pub refunded_at: Option<Millis>,
}

/// One item of an order: what one seller is paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderItem {
    /// Id.
    pub id: i64,
    /// The order.
    pub order_id: i64,
    /// The seller.
    pub seller_id: i64,
    /// The seller's share, minor units.
    pub amount: i64,
    /// Currency.
    pub currency: String,
}

/// An item of an order to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrderItem {
    /// The seller.
    pub seller_id: i64,
    /// The seller's share, minor units (> 0).
    pub amount: i64,
    /// What was sold, for people.
    pub product_ref: Option<String>,
}

/// Creates an order and its items on `conn`; returns the order id and the item ids.
pub async fn create_order(
    conn: &mut DbConn,
    buyer_id: Option<i64>,
    currency: &str,
    amount_total: i64,
    items: &[NewOrderItem],
    now: Millis,
) -> Result<(i64, Vec<i64>), sqlx::Error> {
    let order_id: i64 = sqlx::query_scalar(
        "INSERT INTO orders (buyer_id, currency, amount_total, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) RETURNING id",
    )
    .bind(buyer_id)
    .bind(currency)
    .bind(amount_total)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO order_items (order_id, seller_id, product_ref, amount, currency, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(order_id)
        .bind(item.seller_id)
        .bind(item.product_ref.as_deref())
        .bind(item.amount)
        .bind(currency)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
        ids.push(id);
    }
    Ok((order_id, ids))
}

/// Records (or replaces) a seller's Stripe connected account.
pub async fn upsert_seller_account(
    conn: &mut DbConn,
    seller_id: i64,
    stripe_account_id: &str,
    now: Millis,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO seller_accounts (seller_id, stripe_account_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $3) \
         ON CONFLICT (seller_id) DO UPDATE SET stripe_account_id = $2, updated_at = $3",
    )
    .bind(seller_id)
    .bind(stripe_account_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A seller's connected account (`acct_…`), if recorded.
pub async fn seller_account(
    conn: &mut DbConn,
    seller_id: i64,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT stripe_account_id FROM seller_accounts WHERE seller_id = $1")
        .bind(seller_id)
        .fetch_optional(conn)
        .await
}

const ORDER_COLUMNS: &str = "id, currency, amount_total, stripe_payment_intent_id, \
    stripe_charge_id, paid_at, refunded_at";

type OrderTuple = (
    i64,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

fn order(t: OrderTuple) -> Order {
    Order {
        id: t.0,
        currency: t.1,
        amount_total: t.2,
        stripe_payment_intent_id: t.3,
        stripe_charge_id: t.4,
        paid_at: t.5,
        refunded_at: t.6,
    }
}

/// Order `id`.
pub async fn load(conn: &mut DbConn, id: i64) -> Result<Option<Order>, sqlx::Error> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1");
    let row: Option<OrderTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(order))
}

/// The order paid by payment intent `pi`, or whose charge is `charge`.
pub async fn find_by_payment(
    conn: &mut DbConn,
    payment_intent: Option<&str>,
    charge: Option<&str>,
) -> Result<Option<Order>, sqlx::Error> {
    if payment_intent.is_none() && charge.is_none() {
        return Ok(None);
    }
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders \
         WHERE stripe_payment_intent_id = $1 OR stripe_charge_id = $2 ORDER BY id LIMIT 1"
    );
    let row: Option<OrderTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(payment_intent)
        .bind(charge)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(order))
}

/// The order a stored event is linked to (`webhook_events.order_id`), whatever its outcome:
/// the one its `metadata.order_id` names, if that order exists, else the one paid by its
/// payment intent or charge. Every event about an order is linked, refused and ignored ones
/// too, so that the buyer's erasure finds it.
pub(crate) async fn order_of_event(
    conn: &mut DbConn,
    event: &super::StripeEvent,
) -> Result<Option<i64>, sqlx::Error> {
    let named = super::event::metadata(&event.object, "order_id")
        .and_then(|raw| raw.trim().parse::<i64>().ok());
    if let Some(id) = named {
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        if exists.is_some() {
            return Ok(exists);
        }
    }
    Ok(
        find_by_payment(conn, event.payment_intent_id(), event.charge_id())
            .await?
            .map(|o| o.id),
    )
}

/// When order `id` was fully refunded, if it was.
pub async fn refunded_at(conn: &mut DbConn, id: i64) -> Result<Option<Millis>, sqlx::Error> {
    let at: Option<Option<i64>> =
        sqlx::query_scalar("SELECT refunded_at FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(at.flatten())
}

/// The items of an order, by id.
pub async fn items(conn: &mut DbConn, order_id: i64) -> Result<Vec<OrderItem>, sqlx::Error> {
    let rows: Vec<(i64, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT id, order_id, seller_id, amount, currency FROM order_items \
         WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, order_id, seller_id, amount, currency)| OrderItem {
            id,
            order_id,
            seller_id,
            amount,
            currency,
        })
        .collect())
}

/// Records the successful payment of an order (the first one wins).
pub(crate) async fn record_payment(
    conn: &mut DbConn,
    id: i64,
    payment_intent: &str,
    charge: Option<&str>,
    now: Millis,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET stripe_payment_intent_id = $1, \
         stripe_charge_id = COALESCE(stripe_charge_id, $2), \
         paid_at = COALESCE(paid_at, $3), updated_at = $3 WHERE id = $4",
    )
    .bind(payment_intent)
    .bind(charge)
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that an order's payment was fully refunded (the first time wins).
pub(crate) async fn record_full_refund(
    conn: &mut DbConn,
    id: i64,
    now: Millis,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET refunded_at = COALESCE(refunded_at, $1), updated_at = $1 WHERE id = $2",
    )
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A refund recorded from a webhook event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefundRecord {
    /// Id.
    pub id: i64,
    /// The order.
    pub order_id: i64,
    /// The Stripe event it came from.
    pub event_id: String,
    /// `charge` (charge.refunded) or `refund` (refund.created / refund.updated).
    pub source: String,
    /// `ch_…` or `re_…`.
    pub stripe_object_id: String,
    /// Charge: refunded so far; refund: this refund. Minor units.
    pub amount: i64,
    /// The payment.
    pub amount_total: i64,
    /// Currency.
    pub currency: String,
    /// `full` or `partial`.
    pub kind: String,
    /// When the order was fully refunded, if it was since.
    pub order_refunded_at: Option<Millis>,
    /// Recorded.
    pub created_at: Millis,
}

/// Partial refunds, for an admin to review (they are not reversed automatically), by id
/// after `after_id`, at most `limit`.
pub async fn list_partial_refunds(
    conn: &mut DbConn,
    after_id: i64,
    limit: i64,
) -> Result<Vec<RefundRecord>, sqlx::Error> {
    type Tuple = (
        i64,
        i64,
        String,
        String,
        String,
        i64,
        i64,
        String,
        String,
        Option<i64>,
        i64,
    );
    let rows: Vec<Tuple> = sqlx::query_as(
        "SELECT r.id, r.order_id, r.event_id, r.source, r.stripe_object_id, r.amount, \
                r.amount_total, r.currency, r.kind, o.refunded_at, r.created_at \
         FROM payment_refunds r JOIN orders o ON o.id = r.order_id \
         WHERE r.kind = 'partial' AND r.id > $1 ORDER BY r.id LIMIT $2",
    )
    .bind(after_id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|t| RefundRecord {
            id: t.0,
            order_id: t.1,
            event_id: t.2,
            source: t.3,
            stripe_object_id: t.4,
            amount: t.5,
            amount_total: t.6,
            currency: t.7,
            kind: t.8,
            order_refunded_at: t.9,
            created_at: t.10,
        })
        .collect())
}
