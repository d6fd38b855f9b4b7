//! `hard_delete_scan`: the daily pass (schedule `hard_delete`, 03:00 UTC) that enqueues one
//! [`HardDelete`] job per account past its recovery deadline, and one per account whose
//! erasure started but did not finish (say, its job ran out of attempts while OpenSearch
//! was down). The unique key `hard_delete:user:{id}` keeps one unfinished job per user.

use std::time::Duration;

use engine::scheduler::{Every, Schedule};
use engine::{Job, JobContext, JobError, JobPolicy, NewJob, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};

use super::HardDelete;

/// Args: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardDeleteScan {}

impl Job for HardDeleteScan {
    const KIND: &'static str = "hard_delete_scan";
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(60), Duration::from_secs(3600), 5),
        timeout: Duration::from_secs(600),
        concurrency: 1,
        priority: 5,
    };
}

/// Daily at 03:00 UTC.
pub const CRON: &str = "0 0 3 * * *";

/// The daily schedule.
pub fn schedule() -> Schedule {
    Schedule::new(
        "hard_delete",
        Every::parse(CRON).expect("a valid cron expression"),
        &HardDeleteScan {},
    )
}

/// Users per page (and per enqueue transaction).
const PAGE: i64 = 500;

/// Enqueues the due erasures.
pub async fn handle(_args: HardDeleteScan, ctx: JobContext) -> Result<Outcome, JobError> {
    let now = ctx.now_ms();
    let mut enqueued = 0usize;
    for sql in [
        "SELECT id FROM users WHERE status = 'deletion_requested' AND recovery_deadline <= $1 \
         AND id > $2 ORDER BY id LIMIT $3",
        "SELECT user_id FROM erasure_receipts WHERE finished_at IS NULL AND started_at <= $1 \
         AND user_id > $2 ORDER BY user_id LIMIT $3",
    ] {
        let mut after = 0i64;
        loop {
            let ids: Vec<i64> = sqlx::query_scalar(sql)
                .bind(now)
                .bind(after)
                .bind(PAGE)
                .fetch_all(ctx.db())
                .await?;
            let Some(last) = ids.last() else { break };
            after = *last;
            let mut tx = ctx.engine.begin().await?;
            for user_id in &ids {
                tx.enqueue(NewJob::new(HardDelete { user_id: *user_id }))
                    .await?;
            }
            tx.commit().await?;
            enqueued += ids.len();
        }
    }
    tracing::info!(users = enqueued, "hard delete pass: erasures enqueued");
    Ok(Outcome::Succeeded)
}
