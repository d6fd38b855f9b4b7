//! The seller-transfer lifecycle, and the only code that writes `seller_transfers`.
//!
//! ```text
//!            ┌──────────────▶ cancelled ◀──────────┐   (refunded before the seller was paid)
//!            │                                      │
//! pending ───┼──────────────▶ completed ◀──────── failed ⟲ (retry bump)
//!            │                    │                 ▲  │
//!            └────────────────────┼─────────────────┘  ▼
//!                                 ▼           permanently_failed ──(admin)──▶ failed
//!            reversal_pending ⟲ (retry bump)       ▲        └─────(admin)──▶ reversal_pending
//!                   │    └──────────────────────────┘
//!                   ▼
//!               reversed
//! ```
//!
//! The edges are those of DESIGN.md ("Domain state machines"), plus `cancelled`. A retry
//! bump keeps the status (`failed → failed`, `reversal_pending → reversal_pending`) and
//! updates `retry_count`, `next_retry_at` and `last_error` through the same [`transition`].
//!
//! No other code can change a status, by construction:
//! - [`TransferRow`]'s status field is private, and rows are only read through [`load`] and
//!   [`load_for_order`];
//! - the engine's generic [`state_machine::transition`] needs a [`Lifecycle`] type naming
//!   the table, and the only one for `seller_transfers` is private to this module:
//!
//! ```compile_fail,E0616
//! // The status of a row cannot be set from outside this module.
//! fn force(row: &mut jobs::transfers::TransferRow) {
//!     row.status = jobs::transfers::TransferStatus::Reversed;
//! }
//! ```
//!
//! ```compile_fail,E0277
//! // TransferStatus is not a Lifecycle: the generic helper cannot be aimed at the table.
//! async fn force(conn: &mut engine::DbConn) {
//!     use jobs::transfers::TransferStatus::{Pending, Reversed};
//!     let actor = engine::Actor::cli();
//!     let _ = engine::state_machine::transition(conn, 1, Pending, Reversed, &[], &actor, None, 0)
//!         .await;
//! }
//! ```
//!
//! and a raw `UPDATE seller_transfers` anywhere else is caught by the source scan in
//! `jobs/tests/payments_status_writes.rs` (and a hand-written status assignment by
//! `status_writes.rs`).

use engine::state_machine::{self, Actor, Lifecycle, TransitionError, Value};
use engine::{Backend, DbConn, Millis};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

/// A seller transfer's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Created with its payout job; no payout has succeeded yet.
    Pending,
    /// Paid out: `stripe_transfer_id` is set.
    Completed,
    /// A payout attempt failed and will be retried (`retry_count`, `next_retry_at`).
    Failed,
    /// Given up: the payout (or, after `completed`, the reversal) failed for good. Only an
    /// admin retry moves it on.
    PermanentlyFailed,
    /// The payment was refunded before the seller was paid: never paid out.
    Cancelled,
    /// The payment was refunded after the payout: the transfer is being reversed.
    ReversalPending,
    /// Reversed on Stripe: `stripe_reversal_id` is set.
    Reversed,
}

impl TransferStatus {
    /// Every status.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Completed,
        Self::Failed,
        Self::PermanentlyFailed,
        Self::Cancelled,
        Self::ReversalPending,
        Self::Reversed,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::PermanentlyFailed => "permanently_failed",
            Self::Cancelled => "cancelled",
            Self::ReversalPending => "reversal_pending",
            Self::Reversed => "reversed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True when `self → to` is an edge of the lifecycle (self-edges are retry bumps).
    pub fn can_transition_to(self, to: Self) -> bool {
        use TransferStatus::*;
        match (self, to) {
            (Pending, Completed | Failed | Cancelled) => true,
            (Failed, Completed | Failed | PermanentlyFailed | Cancelled) => true,
            (Completed, ReversalPending) => true,
            (ReversalPending, ReversalPending | Reversed | PermanentlyFailed) => true,
            // admin retry: payout never made, or payout made and its reversal failed
            (PermanentlyFailed, Failed | ReversalPending) => true,
            (Pending | Failed | Completed | ReversalPending | PermanentlyFailed, _) => false,
            (Cancelled | Reversed, _) => false,
        }
    }
}

impl std::fmt::Display for TransferStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The [`Lifecycle`] of the table, private so that only this module can write a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored(TransferStatus);

impl Lifecycle for Stored {
    const ENTITY: &'static str = "seller_transfer";
    const TABLE: &'static str = "seller_transfers";

    fn as_str(self) -> &'static str {
        self.0.as_str()
    }

    fn can_transition_to(self, to: Self) -> bool {
        self.0.can_transition_to(to.0)
    }
    const VERSIONED: bool = true;
}

/// The audit trail's entity name for seller transfers.
pub const ENTITY: &str = "seller_transfer";

/// One `seller_transfers` row, as read. Its status can only be changed by [`transition`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferRow {
    /// Row id: the root of the idempotency keys.
    pub id: i64,
    /// The order.
    pub order_id: i64,
    /// The order item paid out by this transfer.
    pub order_item_id: i64,
    /// The seller.
    pub seller_id: i64,
    /// Amount, minor units.
    pub amount: i64,
    /// Currency, lower-case ISO code.
    pub currency: String,
    status: TransferStatus,
    /// Stripe's transfer id, once paid out (`tr_…`).
    pub stripe_transfer_id: Option<String>,
    /// Stripe's reversal id, once reversed (`trr_…`).
    pub stripe_reversal_id: Option<String>,
    /// Failed attempts of the current phase (payout, then reversal).
    pub retry_count: i64,
    /// When the next attempt is due.
    pub next_retry_at: Option<Millis>,
    /// The last error, for the admin.
    pub last_error: Option<String>,
    /// When a payout call to Stripe was last started (a transfer may exist since then).
    pub payout_attempted_at: Option<Millis>,
    /// Bumped by an admin retry, so that the new attempts use fresh idempotency keys.
    pub key_generation: i64,
    /// Created.
    pub created_at: Millis,
    /// Last changed.
    pub updated_at: Millis,
    /// Bumped by every transition (see [`transition`]).
    pub version: i64,
}

impl TransferRow {
    /// Its status.
    pub fn status(&self) -> TransferStatus {
        self.status
    }

    /// The payout's Stripe `Idempotency-Key`: `transfer:{id}` (`transfer:{id}:{generation}`
    /// after an admin retry). Stable across every attempt of one payout.
    pub fn payout_key(&self) -> String {
        key("transfer", self.id, self.key_generation)
    }

    /// The reversal's Stripe `Idempotency-Key`: `reversal:{id}` (`reversal:{id}:{generation}`
    /// after an admin retry). Stable across every attempt of one reversal.
    pub fn reversal_key(&self) -> String {
        key("reversal", self.id, self.key_generation)
    }

    /// The Stripe transfer id, unless missing or empty (legacy rows).
    pub fn paid_transfer_id(&self) -> Option<&str> {
        self.stripe_transfer_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

fn key(prefix: &str, id: i64, generation: i64) -> String {
    if generation == 0 {
        format!("{prefix}:{id}")
    } else {
        format!("{prefix}:{id}:{generation}")
    }
}

const COLUMNS: &str = "id, order_id, order_item_id, seller_id, amount, currency, status, \
    stripe_transfer_id, stripe_reversal_id, retry_count, next_retry_at, last_error, \
    payout_attempted_at, key_generation, created_at, updated_at, version";

fn from_row(r: &AnyRow) -> Result<TransferRow, sqlx::Error> {
    let status: String = r.try_get("status")?;
    let status = TransferStatus::parse(&status).ok_or_else(|| {
        sqlx::Error::Decode(format!("unknown seller transfer status {status:?}").into())
    })?;
    Ok(TransferRow {
        id: r.try_get("id")?,
        order_id: r.try_get("order_id")?,
        order_item_id: r.try_get("order_item_id")?,
        seller_id: r.try_get("seller_id")?,
        amount: r.try_get("amount")?,
        currency: r.try_get("currency")?,
        status,
        stripe_transfer_id: r.try_get("stripe_transfer_id")?,
        stripe_reversal_id: r.try_get("stripe_reversal_id")?,
        retry_count: r.try_get("retry_count")?,
        next_retry_at: r.try_get("next_retry_at")?,
        last_error: r.try_get("last_error")?,
        payout_attempted_at: r.try_get("payout_attempted_at")?,
        key_generation: r.try_get("key_generation")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        version: r.try_get("version")?,
    })
}

/// Row `id`, if it exists.
pub async fn load(conn: &mut DbConn, id: i64) -> Result<Option<TransferRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM seller_transfers WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Every transfer of an order, by id. With `lock` on Postgres the rows are locked
/// (`FOR UPDATE`) until the caller's transaction ends; SQLite transactions that write first
/// hold the database's write lock already.
pub async fn load_for_order(
    conn: &mut DbConn,
    order_id: i64,
    lock: bool,
) -> Result<Vec<TransferRow>, sqlx::Error> {
    let lock = if lock && Backend::of(conn) == Backend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let sql =
        format!("SELECT {COLUMNS} FROM seller_transfers WHERE order_id = $1 ORDER BY id{lock}");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .fetch_all(conn)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Rows in `statuses` with `id > after_id`, by id, at most `limit`.
pub async fn list(
    conn: &mut DbConn,
    statuses: &[TransferStatus],
    seller_id: Option<i64>,
    after_id: i64,
    limit: i64,
) -> Result<Vec<TransferRow>, sqlx::Error> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(list_sql(statuses, seller_id.is_some())))
        .bind(after_id)
        .bind(limit);
    if let Some(seller) = seller_id {
        query = query.bind(seller);
    }
    query.fetch_all(conn).await?.iter().map(from_row).collect()
}

/// The statement of [`list`]: `$1` the cursor, `$2` the limit and, `by_seller`, `$3` the
/// seller (public for the query-plan test).
#[doc(hidden)]
pub fn list_sql(statuses: &[TransferStatus], by_seller: bool) -> String {
    let mut filter = if statuses.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = statuses
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        format!(" AND status IN ({})", names.join(", "))
    };
    if by_seller {
        filter.push_str(" AND seller_id = $3");
    }
    format!("SELECT {COLUMNS} FROM seller_transfers WHERE id > $1{filter} ORDER BY id LIMIT $2")
}

/// A transfer to create for an order item.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    /// The order.
    pub order_id: i64,
    /// The item.
    pub order_item_id: i64,
    /// The seller.
    pub seller_id: i64,
    /// Amount, minor units.
    pub amount: i64,
    /// Currency.
    pub currency: String,
}

/// Creates the `pending` transfer of an order item, with its audit row, on `conn`. Returns
/// its id, or `None` when the item has a transfer already (one per item, ever).
pub async fn create_pending(
    conn: &mut DbConn,
    new: &NewTransfer,
    actor: &Actor,
    now: Millis,
) -> Result<Option<i64>, sqlx::Error> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO seller_transfers \
         (order_id, order_item_id, seller_id, amount, currency, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) \
         ON CONFLICT (order_item_id) DO NOTHING RETURNING id",
    )
    .bind(new.order_id)
    .bind(new.order_item_id)
    .bind(new.seller_id)
    .bind(new.amount)
    .bind(&new.currency)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = id {
        state_machine::record(
            conn,
            ENTITY,
            &id.to_string(),
            state_machine::CREATED,
            TransferStatus::Pending.as_str(),
            actor,
            None,
            now,
        )
        .await?;
    }
    Ok(id)
}

/// Columns a transition sets along with the status (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Stripe's transfer id.
    pub stripe_transfer_id: Option<String>,
    /// Stripe's reversal id.
    pub stripe_reversal_id: Option<String>,
    /// Failed attempts of the current phase.
    pub retry_count: Option<i64>,
    /// When the next attempt is due (`Some(None)` clears it).
    pub next_retry_at: Option<Option<Millis>>,
    /// The last error (`Some(None)` clears it).
    pub last_error: Option<Option<String>>,
    /// The idempotency-key generation.
    pub key_generation: Option<i64>,
}

impl Changes {
    /// A retry bump: the failed attempts so far, when the next one is due, and why.
    pub fn retry(retry_count: i64, next_retry_at: Millis, error: &str) -> Self {
        Self {
            retry_count: Some(retry_count),
            next_retry_at: Some(Some(next_retry_at)),
            last_error: Some(Some(error.to_owned())),
            ..Self::default()
        }
    }

    /// A fresh phase: no failed attempts, nothing due, no error.
    pub fn reset_retries() -> Self {
        Self {
            retry_count: Some(0),
            next_retry_at: Some(None),
            last_error: Some(None),
            ..Self::default()
        }
    }

    /// Gives up with `error`: nothing is due any more.
    pub fn give_up(retry_count: i64, error: &str) -> Self {
        Self {
            retry_count: Some(retry_count),
            next_retry_at: Some(None),
            last_error: Some(Some(error.to_owned())),
            ..Self::default()
        }
    }

    fn columns(&self) -> Vec<(&'static str, Value)> {
        let mut extra = Vec::new();
        if let Some(v) = &self.stripe_transfer_id {
            extra.push(("stripe_transfer_id", Value::Text(Some(v.clone()))));
        }
        if let Some(v) = &self.stripe_reversal_id {
            extra.push(("stripe_reversal_id", Value::Text(Some(v.clone()))));
        }
        if let Some(v) = self.retry_count {
            extra.push(("retry_count", Value::Int(Some(v))));
        }
        if let Some(v) = self.next_retry_at {
            extra.push(("next_retry_at", Value::Int(v)));
        }
        if let Some(v) = &self.last_error {
            extra.push(("last_error", Value::Text(v.clone())));
        }
        if let Some(v) = self.key_generation {
            extra.push(("key_generation", Value::Int(Some(v))));
        }
        extra
    }

    fn apply(self, row: &mut TransferRow) {
        if let Some(v) = self.stripe_transfer_id {
            row.stripe_transfer_id = Some(v);
        }
        if let Some(v) = self.stripe_reversal_id {
            row.stripe_reversal_id = Some(v);
        }
        if let Some(v) = self.retry_count {
            row.retry_count = v;
        }
        if let Some(v) = self.next_retry_at {
            row.next_retry_at = v;
        }
        if let Some(v) = self.last_error {
            row.last_error = v;
        }
        if let Some(v) = self.key_generation {
            row.key_generation = v;
        }
    }
}

/// The one way a seller transfer changes status (or, on a self-edge, records a retry):
/// moves `row` from its status as read to `to`, setting `changes` with it, and writes the
/// audit row, on `conn` (the caller's transaction). Returns the row as it now is.
///
/// A disallowed edge is [`TransitionError::NotAllowed`]; a row that is no longer in the
/// status it was read in is [`TransitionError::Stale`] and nothing is written.
pub async fn transition(
    conn: &mut DbConn,
    row: &TransferRow,
    to: TransferStatus,
    changes: Changes,
    actor: &Actor,
    note: Option<&str>,
    now: Millis,
) -> Result<TransferRow, TransitionError> {
    let extra = changes.columns();
    // Guarded by the version read: a retry bump (failed → failed) from a stale read is
    // refused like any other stale transition.
    state_machine::transition_seen(
        conn,
        row.id,
        Stored(row.status),
        Some(row.version),
        Stored(to),
        &extra,
        actor,
        note,
        now,
    )
    .await?;
    let mut updated = row.clone();
    updated.status = to;
    updated.updated_at = now;
    updated.version += 1;
    changes.apply(&mut updated);
    Ok(updated)
}

/// Notes that a payout call to Stripe is about to start, so that a refund processed from
/// now on knows a transfer may exist and does not cancel the row. Only a `pending` or
/// `failed` row is marked; `false` means it is in neither any more (and must not be paid).
pub async fn begin_payout_attempt(
    conn: &mut DbConn,
    id: i64,
    now: Millis,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE seller_transfers SET payout_attempted_at = $1, updated_at = $1 \
         WHERE id = $2 AND status IN ('pending', 'failed')",
    )
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_those_of_the_design_plus_cancelled() {
        use TransferStatus::*;
        let edges: Vec<(TransferStatus, TransferStatus)> = TransferStatus::ALL
            .iter()
            .flat_map(|a| TransferStatus::ALL.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_transition_to(*b))
            .collect();
        assert_eq!(
            edges,
            [
                (Pending, Completed),
                (Pending, Failed),
                (Pending, Cancelled),
                (Completed, ReversalPending),
                (Failed, Completed),
                (Failed, Failed),
                (Failed, PermanentlyFailed),
                (Failed, Cancelled),
                (PermanentlyFailed, Failed),
                (PermanentlyFailed, ReversalPending),
                (ReversalPending, PermanentlyFailed),
                (ReversalPending, ReversalPending),
                (ReversalPending, Reversed),
            ]
        );
    }

    #[test]
    fn nothing_leaves_cancelled_or_reversed_and_a_refund_never_leads_to_a_payout() {
        for to in TransferStatus::ALL {
            assert!(!TransferStatus::Cancelled.can_transition_to(to));
            assert!(!TransferStatus::Reversed.can_transition_to(to));
        }
        assert!(!TransferStatus::ReversalPending.can_transition_to(TransferStatus::Completed));
    }

    #[test]
    fn stored_names_round_trip() {
        for s in TransferStatus::ALL {
            assert_eq!(TransferStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(TransferStatus::parse("paid"), None);
    }

    #[test]
    fn idempotency_keys_derive_from_the_row() {
        assert_eq!(key("transfer", 42, 0), "transfer:42");
        assert_eq!(key("reversal", 42, 0), "reversal:42");
        assert_eq!(key("reversal", 42, 2), "reversal:42:2");
    }
}
