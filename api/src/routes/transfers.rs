//! `/v1/transfers`: seller transfers (payouts and their reversals), one with its audit
//! trail and jobs, and the admin retry of a `permanently_failed` one.

use engine::Actor;
use engine::state_machine::TransitionError;
use jobs::transfers::{self, AdminError, TransferRow, TransferStatus};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::jobs::JobView;
use super::transitions::TransitionView;
use super::{ApiTags, page};
use crate::auth::{ApiKeyAuth, Scope};
use crate::problem::ApiError;
use crate::state::ApiState;

/// A seller transfer's status (see the README's transfer lifecycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum TransferStatusView {
    /// Created with its payout job; not paid out yet.
    Pending,
    /// Paid out (`stripe_transfer_id`).
    Completed,
    /// A payout attempt failed; retried at `next_retry_at`.
    Failed,
    /// Given up (payout, or reversal after a payout); an admin retry moves it on.
    PermanentlyFailed,
    /// Refunded before the payout: never paid.
    Cancelled,
    /// Refunded after the payout: being reversed.
    ReversalPending,
    /// Reversed (`stripe_reversal_id`).
    Reversed,
}

impl From<TransferStatus> for TransferStatusView {
    fn from(s: TransferStatus) -> Self {
        match s {
            TransferStatus::Pending => Self::Pending,
            TransferStatus::Completed => Self::Completed,
            TransferStatus::Failed => Self::Failed,
            TransferStatus::PermanentlyFailed => Self::PermanentlyFailed,
            TransferStatus::Cancelled => Self::Cancelled,
            TransferStatus::ReversalPending => Self::ReversalPending,
            TransferStatus::Reversed => Self::Reversed,
        }
    }
}

impl From<TransferStatusView> for TransferStatus {
    fn from(s: TransferStatusView) -> Self {
        match s {
            TransferStatusView::Pending => Self::Pending,
            TransferStatusView::Completed => Self::Completed,
            TransferStatusView::Failed => Self::Failed,
            TransferStatusView::PermanentlyFailed => Self::PermanentlyFailed,
            TransferStatusView::Cancelled => Self::Cancelled,
            TransferStatusView::ReversalPending => Self::ReversalPending,
            TransferStatusView::Reversed => Self::Reversed,
        }
    }
}

/// One seller transfer. Amounts in minor units; times in ms since the Unix epoch.
#[derive(Debug, Clone, Object)]
pub struct TransferView {
    /// Id (the root of its Stripe idempotency keys).
    pub id: i64,
    /// The order.
    pub order_id: i64,
    /// The order item it pays out.
    pub order_item_id: i64,
    /// The seller.
    pub seller_id: i64,
    /// Amount.
    pub amount: i64,
    /// Currency (ISO, lower case).
    pub currency: String,
    /// Status.
    pub status: TransferStatusView,
    /// Stripe's transfer (`tr_…`), once paid out.
    #[oai(nullable)]
    pub stripe_transfer_id: Option<String>,
    /// Stripe's reversal (`trr_…`), once reversed.
    #[oai(nullable)]
    pub stripe_reversal_id: Option<String>,
    /// Failed attempts of the current phase.
    pub retry_count: i64,
    /// When the next attempt is due.
    #[oai(nullable)]
    pub next_retry_at: Option<i64>,
    /// The last error.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// Created.
    pub created_at: i64,
    /// Last changed.
    pub updated_at: i64,
}

impl From<TransferRow> for TransferView {
    fn from(t: TransferRow) -> Self {
        Self {
            status: t.status().into(),
            id: t.id,
            order_id: t.order_id,
            order_item_id: t.order_item_id,
            seller_id: t.seller_id,
            amount: t.amount,
            currency: t.currency,
            stripe_transfer_id: t.stripe_transfer_id,
            stripe_reversal_id: t.stripe_reversal_id,
            retry_count: t.retry_count,
            next_retry_at: t.next_retry_at,
            last_error: t.last_error,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A page of transfers.
#[derive(Debug, Clone, Object)]
pub struct TransferPageView {
    /// By id, ascending.
    pub transfers: Vec<TransferView>,
    /// Pass as `cursor` for the next page; none on the last one.
    #[oai(nullable)]
    pub next_cursor: Option<i64>,
}

/// One transfer with its history and jobs.
#[derive(Debug, Clone, Object)]
pub struct TransferDetailView {
    /// The transfer.
    pub transfer: TransferView,
    /// Every status change, oldest first, with its actor (`job:…`, `webhook:…`,
    /// `api_key:…`).
    pub transitions: Vec<TransitionView>,
    /// Its payout and reversal jobs, oldest first.
    pub jobs: Vec<JobView>,
}

/// The answer to a retry.
#[derive(Debug, Clone, Object)]
pub struct TransferRetried {
    /// The transfer.
    pub id: i64,
    /// `failed` (its payout is retried) or `reversal_pending` (its reversal is).
    pub status: TransferStatusView,
}

/// The transfers routes.
pub struct TransfersApi(pub ApiState);

#[OpenApi(tag = "ApiTags::Transfers")]
impl TransfersApi {
    /// List seller transfers by id, one page at a time. Scope: read.
    #[oai(path = "/v1/transfers", method = "get")]
    async fn list(
        &self,
        auth: ApiKeyAuth,
        /// Only this status.
        status: Query<Option<TransferStatusView>>,
        /// Only this seller's.
        seller_id: Query<Option<i64>>,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u32>>,
        /// The previous page's `next_cursor`.
        cursor: Query<Option<i64>>,
    ) -> Result<Json<TransferPageView>, ApiError> {
        auth.require(Scope::Read)?;
        let limit = i64::from(limit.0.unwrap_or(50));
        let statuses: Vec<TransferStatus> = status.0.map(Into::into).into_iter().collect();
        let rows = transfers::list(
            &self.0.engine,
            &statuses,
            seller_id.0,
            cursor.0.unwrap_or(0),
            limit + 1,
        )
        .await?;
        let (rows, next_cursor) = page(rows, limit, |t| t.id);
        Ok(Json(TransferPageView {
            transfers: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }))
    }

    /// One transfer with its status history and its payout and reversal jobs. Scope: read.
    #[oai(path = "/v1/transfers/:id", method = "get")]
    async fn get(
        &self,
        auth: ApiKeyAuth,
        id: Path<i64>,
    ) -> Result<Json<TransferDetailView>, ApiError> {
        auth.require(Scope::Read)?;
        let Some(row) = transfers::get(&self.0.engine, id.0).await? else {
            return Err(ApiError::not_found(format!("no seller transfer {}", id.0)));
        };
        let history = {
            let mut conn = self.0.engine.db().acquire().await?;
            engine::state_machine::history(&mut conn, transfers::state::ENTITY, &id.0.to_string())
                .await?
        };
        let jobs = transfers::jobs_of(&self.0.engine, id.0).await?;
        Ok(Json(TransferDetailView {
            transfer: row.into(),
            transitions: history.into_iter().map(Into::into).collect(),
            jobs: jobs.into_iter().map(Into::into).collect(),
        }))
    }

    /// Retry a `permanently_failed` transfer with fresh attempts and fresh idempotency
    /// keys. Scope: admin.
    ///
    /// Never paid out → `failed` with a payout job; paid out (its reversal failed) →
    /// `reversal_pending` with a reversal job. The audit row names the API key. 404 for an
    /// unknown transfer; 409 `invalid_transfer_state` for any other status.
    #[oai(path = "/v1/transfers/:id/retry", method = "post")]
    async fn retry(
        &self,
        auth: ApiKeyAuth,
        id: Path<i64>,
    ) -> Result<Json<TransferRetried>, ApiError> {
        let caller = auth.require(Scope::Admin)?;
        match transfers::admin_retry(&self.0.engine, id.0, &Actor::api_key(caller.key_id)).await {
            Ok(status) => Ok(Json(TransferRetried {
                id: id.0,
                status: status.into(),
            })),
            Err(e @ AdminError::NotFound(_)) => Err(ApiError::not_found(e.to_string())),
            Err(AdminError::Transition(TransitionError::Database(e)) | AdminError::Database(e)) => {
                Err(e.into())
            }
            Err(e @ (AdminError::NotRetryable { .. } | AdminError::Transition(_))) => {
                Err(ApiError::conflict("invalid_transfer_state", e.to_string()))
            }
            Err(AdminError::Engine(e)) => Err(e.into()),
        }
    }
}
