//! `/v1/payments/partial-refunds` and `/v1/reconciliation/findings`: what the payments
//! side leaves for an admin — partial refunds (never reversed automatically) and the drift
//! the daily `reconcile_transfers` job found between our ledger and Stripe.

use jobs::payments::orders::{self, RefundRecord};
use jobs::reconcile_transfers::{self, StoredFinding};
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::{ApiTags, page};
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::ApiError;
use crate::state::ApiState;

/// A partial refund. Amounts in minor units; times in ms since the Unix epoch.
#[derive(Debug, Clone, Object)]
pub struct PartialRefundView {
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
    /// Charge: refunded so far; refund: this refund.
    pub amount: i64,
    /// The payment's total.
    pub amount_total: i64,
    /// Currency.
    pub currency: String,
    /// When the order was fully refunded later, if it was (then its transfers were
    /// reversed or cancelled automatically).
    #[oai(nullable)]
    pub order_refunded_at: Option<i64>,
    /// Recorded.
    pub created_at: i64,
}

impl From<RefundRecord> for PartialRefundView {
    fn from(r: RefundRecord) -> Self {
        Self {
            id: r.id,
            order_id: r.order_id,
            event_id: r.event_id,
            source: r.source,
            stripe_object_id: r.stripe_object_id,
            amount: r.amount,
            amount_total: r.amount_total,
            currency: r.currency,
            order_refunded_at: r.order_refunded_at,
            created_at: r.created_at,
        }
    }
}

/// A page of partial refunds.
#[derive(Debug, Clone, Object)]
pub struct PartialRefundPage {
    /// By id, ascending.
    pub refunds: Vec<PartialRefundView>,
    /// Pass as `cursor` for the next page; none on the last one.
    #[oai(nullable)]
    pub next_cursor: Option<i64>,
}

/// A disagreement between a transfer row and Stripe's view of its transfer.
#[derive(Debug, Clone, Object)]
pub struct FindingView {
    /// Id.
    pub id: i64,
    /// The transfer.
    pub seller_transfer_id: i64,
    /// Its Stripe transfer.
    pub stripe_transfer_id: String,
    /// What disagrees, e.g. `ledger_reversed_stripe_not`.
    pub kind: String,
    /// The row's status when last seen.
    pub row_status: String,
    /// The row's amount.
    pub row_amount: i64,
    /// Stripe's amount.
    #[oai(nullable)]
    pub stripe_amount: Option<i64>,
    /// Stripe's `amount_reversed`.
    #[oai(nullable)]
    pub stripe_amount_reversed: Option<i64>,
    /// Stripe's `reversed`.
    #[oai(nullable)]
    pub stripe_reversed: Option<bool>,
    /// For people.
    pub detail: String,
    /// First seen (ms since the Unix epoch).
    pub first_seen_at: i64,
    /// Last seen.
    pub last_seen_at: i64,
    /// When the row and Stripe agreed again; none while open.
    #[oai(nullable)]
    pub resolved_at: Option<i64>,
}

impl From<StoredFinding> for FindingView {
    fn from(f: StoredFinding) -> Self {
        Self {
            id: f.id,
            seller_transfer_id: f.seller_transfer_id,
            stripe_transfer_id: f.stripe_transfer_id,
            kind: f.kind,
            row_status: f.row_status,
            row_amount: f.row_amount,
            stripe_amount: f.stripe_amount,
            stripe_amount_reversed: f.stripe_amount_reversed,
            stripe_reversed: f.stripe_reversed.map(|v| v != 0),
            detail: f.detail,
            first_seen_at: f.first_seen_at,
            last_seen_at: f.last_seen_at,
            resolved_at: f.resolved_at,
        }
    }
}

/// A page of findings.
#[derive(Debug, Clone, Object)]
pub struct FindingPage {
    /// By id, ascending.
    pub findings: Vec<FindingView>,
    /// Pass as `cursor` for the next page; none on the last one.
    #[oai(nullable)]
    pub next_cursor: Option<i64>,
}

/// The payments admin routes.
pub struct PaymentsApi(pub ApiState);

#[OpenApi(tag = "ApiTags::Payments")]
impl PaymentsApi {
    /// Partial refunds awaiting an admin: they are recorded, never reversed
    /// automatically. Scope: read.
    #[oai(path = "/v1/payments/partial-refunds", method = "get")]
    async fn partial_refunds(
        &self,
        auth: ApiKeyAuth,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u32>>,
        /// The previous page's `next_cursor`.
        cursor: Query<Option<i64>>,
    ) -> Result<Json<PartialRefundPage>, ApiError> {
        auth.require(Scope::Read)?;
        let limit = i64::from(limit.0.unwrap_or(50));
        let mut conn = self.0.engine.db().acquire().await?;
        let rows =
            orders::list_partial_refunds(&mut conn, cursor.0.unwrap_or(0), limit + 1).await?;
        let (rows, next_cursor) = page(rows, limit, |r| r.id);
        Ok(Json(PartialRefundPage {
            refunds: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }))
    }

    /// Drift between our ledger and Stripe found by `reconcile_transfers` (e.g. a row
    /// `reversed` whose Stripe transfer is not): open ones, or all with `all=true`.
    /// Scope: read.
    #[oai(path = "/v1/reconciliation/findings", method = "get")]
    async fn findings(
        &self,
        auth: ApiKeyAuth,
        /// Also the resolved ones.
        all: Query<Option<bool>>,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u32>>,
        /// The previous page's `next_cursor`.
        cursor: Query<Option<i64>>,
    ) -> Result<Json<FindingPage>, ApiError> {
        auth.require(Scope::Read)?;
        let limit = i64::from(limit.0.unwrap_or(50));
        let rows = reconcile_transfers::list_findings(
            self.0.engine.db(),
            all.0.unwrap_or(false),
            cursor.0.unwrap_or(0),
            limit + 1,
        )
        .await?;
        let (rows, next_cursor) = page(rows, limit, |f| f.id);
        Ok(Json(FindingPage {
            findings: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }))
    }
}
