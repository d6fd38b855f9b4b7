//! `reconcile_transfers`: the drift detector. Daily (`RECONCILE_TRANSFERS_SCHEDULE`) it
//! compares every `completed` and `reversed` transfer changed within
//! `RECONCILE_TRANSFERS_LOOKBACK` with Stripe's view of it, and records each disagreement
//! in `transfer_findings`, once per (transfer, kind): later runs refresh `last_seen_at`, and
//! set `resolved_at` when row and Stripe agree again. It never changes a transfer.
//!
//! | kind | the row says | Stripe says |
//! |---|---|---|
//! | `missing_transfer_id` | completed/reversed | (no `stripe_transfer_id` to look up) |
//! | `missing_on_stripe` | completed/reversed | 404 |
//! | `amount_mismatch` | `amount` | another `amount` |
//! | `not_reversed_on_stripe` | reversed | `reversed` false or `amount_reversed` < amount |
//! | `reversed_on_stripe` | completed | `reversed` true or `amount_reversed` > 0 |

use std::sync::Arc;
use std::time::Duration;

use engine::clock::duration_ms;
use engine::scheduler::{Every, Schedule};
use engine::{Job, JobContext, JobError, JobPolicy, Millis, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::transfers::TransferStatus;
use crate::transfers::stripe::{StripeClient, StripeTransfer};

/// The kind's name.
pub const KIND: &str = "reconcile_transfers";

/// Args: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileTransfers {}

impl Job for ReconcileTransfers {
    const KIND: &'static str = KIND;
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(300), Duration::from_secs(3600), 4),
        // Thousands of transfers at STRIPE_MAX_RPS.
        timeout: Duration::from_secs(3 * 3600),
        concurrency: 1,
        priority: 8,
    };
}

/// What the job needs.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// The shared Stripe client.
    pub stripe: StripeClient,
    /// `RECONCILE_TRANSFERS_LOOKBACK`.
    pub lookback: Duration,
}

/// The daily schedule.
pub fn schedule(every: Every) -> Schedule {
    Schedule::new(KIND, every, &ReconcileTransfers {})
}

/// Rows read per page.
const PAGE: i64 = 200;

/// One disagreement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `missing_on_stripe`, `amount_mismatch`, `not_reversed_on_stripe`, …
    pub kind: &'static str,
    /// For people.
    pub detail: String,
}

/// The disagreements between a row (`status`, `amount`) and Stripe's transfer.
pub fn compare(status: TransferStatus, amount: i64, stripe: &StripeTransfer) -> Vec<Finding> {
    let mut out = Vec::new();
    if stripe.amount != amount {
        out.push(Finding {
            kind: "amount_mismatch",
            detail: format!("row amount {amount}, Stripe amount {}", stripe.amount),
        });
    }
    match status {
        TransferStatus::Reversed if !stripe.reversed || stripe.amount_reversed < stripe.amount => {
            out.push(Finding {
                kind: "not_reversed_on_stripe",
                detail: format!(
                    "row reversed, Stripe reversed={} amount_reversed={} of {}",
                    stripe.reversed, stripe.amount_reversed, stripe.amount
                ),
            });
        }
        TransferStatus::Completed if stripe.reversed || stripe.amount_reversed > 0 => {
            out.push(Finding {
                kind: "reversed_on_stripe",
                detail: format!(
                    "row completed, Stripe reversed={} amount_reversed={} of {}",
                    stripe.reversed, stripe.amount_reversed, stripe.amount
                ),
            });
        }
        _ => {}
    }
    out
}

/// A finding as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredFinding {
    /// Id.
    pub id: i64,
    /// The transfer.
    pub seller_transfer_id: i64,
    /// Its Stripe id.
    pub stripe_transfer_id: String,
    /// Kind.
    pub kind: String,
    /// The row's status when last seen.
    pub row_status: String,
    /// The row's amount.
    pub row_amount: i64,
    /// Stripe's amount.
    pub stripe_amount: Option<i64>,
    /// Stripe's amount reversed.
    pub stripe_amount_reversed: Option<i64>,
    /// Stripe's `reversed` (0/1).
    pub stripe_reversed: Option<i64>,
    /// For people.
    pub detail: String,
    /// First seen.
    pub first_seen_at: Millis,
    /// Last seen.
    pub last_seen_at: Millis,
    /// When row and Stripe agreed again.
    pub resolved_at: Option<Millis>,
}

/// How many findings are open (row and Stripe still disagree): the
/// `veza_reconciliation_open_findings` gauge.
pub async fn count_open_findings(db: &engine::Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM transfer_findings WHERE resolved_at IS NULL")
        .fetch_one(db)
        .await
}

/// Findings by id after `after_id`, at most `limit`; open ones only unless `all`.
pub async fn list_findings(
    db: &engine::Db,
    all: bool,
    after_id: i64,
    limit: i64,
) -> Result<Vec<StoredFinding>, sqlx::Error> {
    type Tuple = (
        i64,
        i64,
        String,
        String,
        String,
        i64,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        String,
        i64,
        i64,
        Option<i64>,
    );
    let filter = if all { "" } else { " AND resolved_at IS NULL" };
    let sql = format!(
        "SELECT id, seller_transfer_id, stripe_transfer_id, kind, row_status, row_amount, \
         stripe_amount, stripe_amount_reversed, stripe_reversed, detail, first_seen_at, \
         last_seen_at, resolved_at FROM transfer_findings WHERE id > $1{filter} ORDER BY id LIMIT $2"
    );
    let rows: Vec<Tuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(after_id)
        .bind(limit)
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|t| StoredFinding {
            id: t.0,
            seller_transfer_id: t.1,
            stripe_transfer_id: t.2,
            kind: t.3,
            row_status: t.4,
            row_amount: t.5,
            stripe_amount: t.6,
            stripe_amount_reversed: t.7,
            stripe_reversed: t.8,
            detail: t.9,
            first_seen_at: t.10,
            last_seen_at: t.11,
            resolved_at: t.12,
        })
        .collect())
}

/// Runs one reconciliation.
pub async fn handle(
    _args: ReconcileTransfers,
    ctx: JobContext,
    settings: Arc<ReconcileSettings>,
) -> Result<Outcome, JobError> {
    let now = ctx.now_ms();
    let since = now - duration_ms(settings.lookback);
    let (mut after, mut checked, mut found, mut unreachable) = (0i64, 0u64, 0u64, 0u64);
    let mut last_error = None;
    loop {
        let page: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, status, amount, stripe_transfer_id FROM seller_transfers \
             WHERE status IN ('completed', 'reversed') AND updated_at >= $1 AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(since)
        .bind(after)
        .bind(PAGE)
        .fetch_all(ctx.db())
        .await?;
        let Some(last) = page.last() else { break };
        after = last.0;
        for (id, status, amount, stripe_id) in page {
            let Some(status) = TransferStatus::parse(&status) else {
                continue;
            };
            let stripe_id = stripe_id.unwrap_or_default().trim().to_owned();
            checked += 1;
            let (findings, seen) = if stripe_id.is_empty() {
                let f = Finding {
                    kind: "missing_transfer_id",
                    detail: format!("row {status} has no stripe_transfer_id"),
                };
                (vec![f], None)
            } else {
                match settings.stripe.retrieve_transfer(&stripe_id).await {
                    Ok(t) => (compare(status, amount, &t), Some(t)),
                    Err(e) if e.is_resource_missing() => {
                        let f = Finding {
                            kind: "missing_on_stripe",
                            detail: e.to_string(),
                        };
                        (vec![f], None)
                    }
                    Err(e) => {
                        unreachable += 1;
                        tracing::warn!(transfer = id, error = %e, "reconcile: could not fetch the transfer");
                        last_error = Some(e.to_string());
                        continue;
                    }
                }
            };
            found += findings.len() as u64;
            record(
                ctx.db(),
                id,
                &stripe_id,
                status,
                amount,
                seen.as_ref(),
                &findings,
                now,
            )
            .await?;
        }
    }
    tracing::info!(
        checked,
        findings = found,
        unreachable,
        "reconcile_transfers done"
    );
    if let Some(e) = last_error {
        // Findings so far are kept; the retry checks everything again (idempotent).
        return Err(JobError::Transient(format!(
            "{unreachable} of {checked} transfers could not be fetched from Stripe; last error: {e}"
        )));
    }
    Ok(Outcome::Succeeded)
}

/// Upserts the findings of one transfer and resolves its findings of other kinds.
#[allow(clippy::too_many_arguments)]
async fn record(
    db: &engine::Db,
    id: i64,
    stripe_id: &str,
    status: TransferStatus,
    amount: i64,
    seen: Option<&StripeTransfer>,
    findings: &[Finding],
    now: Millis,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    for f in findings {
        tracing::warn!(transfer = id, kind = f.kind, detail = %f.detail, "transfer drift found");
        sqlx::query(
            "INSERT INTO transfer_findings (seller_transfer_id, stripe_transfer_id, kind, row_status, \
             row_amount, stripe_amount, stripe_amount_reversed, stripe_reversed, detail, first_seen_at, \
             last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
             ON CONFLICT (seller_transfer_id, kind) DO UPDATE SET stripe_transfer_id = $2, \
             row_status = $4, row_amount = $5, stripe_amount = $6, stripe_amount_reversed = $7, \
             stripe_reversed = $8, detail = $9, last_seen_at = $10, resolved_at = NULL",
        )
        .bind(id)
        .bind(stripe_id)
        .bind(f.kind)
        .bind(status.as_str())
        .bind(amount)
        .bind(seen.map(|t| t.amount))
        .bind(seen.map(|t| t.amount_reversed))
        .bind(seen.map(|t| i64::from(t.reversed)))
        .bind(&f.detail)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let kinds: Vec<String> = findings.iter().map(|f| format!("'{}'", f.kind)).collect();
    let keep = if kinds.is_empty() {
        String::new()
    } else {
        format!(" AND kind NOT IN ({})", kinds.join(", "))
    };
    let sql = format!(
        "UPDATE transfer_findings SET resolved_at = $1 \
         WHERE seller_transfer_id = $2 AND resolved_at IS NULL{keep}"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripe(amount: i64, reversed: bool, amount_reversed: i64) -> StripeTransfer {
        StripeTransfer {
            id: "tr_1".into(),
            amount,
            amount_reversed,
            reversed,
            currency: "eur".into(),
            destination: None,
            transfer_group: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn agreeing_rows_have_no_findings() {
        assert!(compare(TransferStatus::Completed, 500, &stripe(500, false, 0)).is_empty());
        assert!(compare(TransferStatus::Reversed, 500, &stripe(500, true, 500)).is_empty());
    }

    #[test]
    fn each_disagreement_is_a_finding() {
        let kinds = |f: Vec<Finding>| f.into_iter().map(|f| f.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(compare(
                TransferStatus::Reversed,
                500,
                &stripe(500, false, 0)
            )),
            ["not_reversed_on_stripe"]
        );
        assert_eq!(
            kinds(compare(
                TransferStatus::Reversed,
                500,
                &stripe(500, false, 200)
            )),
            ["not_reversed_on_stripe"]
        );
        assert_eq!(
            kinds(compare(
                TransferStatus::Completed,
                500,
                &stripe(500, true, 500)
            )),
            ["reversed_on_stripe"]
        );
        assert_eq!(
            kinds(compare(
                TransferStatus::Completed,
                500,
                &stripe(400, false, 0)
            )),
            ["amount_mismatch"]
        );
    }
}
