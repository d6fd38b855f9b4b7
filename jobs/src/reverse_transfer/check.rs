//! `reverse_transfer_check`: the reversals' safety net. Every `REVERSAL_CHECK_INTERVAL` it
//! finds `reversal_pending` transfers whose `reverse_transfer` job is gone (its attempts ran
//! out before the row's budget did, it was pruned, cancelled, or never enqueued) and
//! enqueues one, due at the row's `next_retry_at`, with the row's remaining attempts. The
//! unique key `reverse_transfer:{id}` makes a second job impossible.

use std::sync::Arc;
use std::time::Duration;

use engine::scheduler::{Every, Schedule};
use engine::{Job, JobContext, JobError, JobPolicy, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::payments::config::RetrySettings;
use crate::transfers::{self, TransferStatus};

/// The kind's name.
pub const KIND: &str = "reverse_transfer_check";

/// Args: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseTransferCheck {}

impl Job for ReverseTransferCheck {
    const KIND: &'static str = KIND;
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(5), Duration::from_secs(60), 3),
        timeout: Duration::from_secs(60),
        concurrency: 1,
        priority: 2,
    };
}

/// Every `every` (`REVERSAL_CHECK_INTERVAL`).
pub fn schedule(every: Duration) -> Schedule {
    Schedule::new(KIND, Every::Interval(every), &ReverseTransferCheck {})
}

/// Runs one check.
pub async fn handle(
    _args: ReverseTransferCheck,
    ctx: JobContext,
    retry: Arc<RetrySettings>,
) -> Result<Outcome, JobError> {
    let now = ctx.now_ms();
    let n = transfers::requeue_orphans(
        &ctx.engine,
        &[TransferStatus::ReversalPending],
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
        tracing::warn!(jobs = n, "reverse_transfer_check re-enqueued reversals");
    }
    Ok(Outcome::Succeeded)
}
