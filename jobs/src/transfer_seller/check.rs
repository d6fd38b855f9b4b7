//! `transfer_seller_check`: the payouts' safety net. Every `TRANSFER_CHECK_INTERVAL` it
//! finds `pending` and `failed` transfers whose `transfer_seller` job is gone (its attempts
//! ran out before the row's budget did, it was pruned, cancelled, or never enqueued) and
//! enqueues one, due at the row's `next_retry_at`, with the row's remaining attempts. The
//! unique key `transfer_seller:{id}` makes a second job impossible.

use std::sync::Arc;
use std::time::Duration;

use engine::scheduler::{Every, Schedule};
use engine::{Job, JobContext, JobError, JobPolicy, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::payments::config::RetrySettings;
use crate::transfers::{self, TransferStatus};

/// The kind's name.
pub const KIND: &str = "transfer_seller_check";

/// Args: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSellerCheck {}

impl Job for TransferSellerCheck {
    const KIND: &'static str = KIND;
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(5), Duration::from_secs(60), 3),
        timeout: Duration::from_secs(60),
        concurrency: 1,
        priority: 2,
    };
}

/// Every `every` (`TRANSFER_CHECK_INTERVAL`).
pub fn schedule(every: Duration) -> Schedule {
    Schedule::new(KIND, Every::Interval(every), &TransferSellerCheck {})
}

/// Runs one check.
pub async fn handle(
    _args: TransferSellerCheck,
    ctx: JobContext,
    retry: Arc<RetrySettings>,
) -> Result<Outcome, JobError> {
    let now = ctx.now_ms();
    let n = transfers::requeue_orphans(
        &ctx.engine,
        &[TransferStatus::Pending, TransferStatus::Failed],
        &format!("{}:", super::KIND),
        |o| {
            let left = i64::from(retry.max_retries) + 1 - o.retry_count;
            super::job(
                o.id,
                Some(o.next_retry_at.unwrap_or(now).max(now)),
                Some(u32::try_from(left.max(1)).unwrap_or(1)),
            )
        },
    )
    .await
    .map_err(|e| JobError::transient(engine::job::error_chain(&e)))?;
    if n > 0 {
        tracing::warn!(jobs = n, "transfer_seller_check re-enqueued payouts");
    }
    Ok(Outcome::Succeeded)
}
