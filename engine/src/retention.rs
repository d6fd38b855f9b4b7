//! Retention: the built-in `prune_jobs` job deletes finished jobs older than their
//! retention (`RETENTION_SUCCEEDED`, `RETENTION_FAILED`) in batches, so the job table and
//! its indexes stay small and a long delete never holds locks for long.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::duration_ms;
use crate::context::JobContext;
use crate::job::{Job, JobError, JobPolicy, JobState, Outcome, RetryPolicy};
use crate::registry::Registry;
use crate::scheduler::{Every, Schedule};
use crate::storage;

/// Deletes finished jobs past their retention. Enqueued hourly by the `prune_jobs`
/// schedule; unique key `schedule:prune_jobs`, and deleting is idempotent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneJobs {}

impl Job for PruneJobs {
    const KIND: &'static str = "prune_jobs";
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(30), Duration::from_secs(1800), 5),
        timeout: Duration::from_secs(600),
        concurrency: 1,
        priority: 10,
    };
}

/// Registers `prune_jobs`.
pub fn register(registry: &mut Registry) {
    registry.register::<PruneJobs, _, _>(|_args, ctx| async move { prune(&ctx).await });
}

/// The hourly schedule of `prune_jobs`.
pub fn schedule() -> Schedule {
    Schedule::new(
        "prune_jobs",
        Every::Interval(Duration::from_secs(3600)),
        &PruneJobs {},
    )
}

async fn prune(ctx: &JobContext) -> Result<Outcome, JobError> {
    let settings = ctx.engine.retention();
    let now = ctx.now_ms();
    let mut total = 0;
    for (status, keep) in [
        (JobState::Succeeded, settings.succeeded),
        (JobState::Failed, settings.failed),
        (JobState::Cancelled, settings.failed),
    ] {
        let before = now - duration_ms(keep);
        loop {
            let n = storage::prune_batch(ctx.db(), status, before, settings.batch)
                .await
                .map_err(JobError::transient)?;
            total += n;
            if n < settings.batch as u64 {
                break;
            }
        }
    }
    tracing::info!(deleted = total, "pruned finished jobs");
    Ok(Outcome::Succeeded)
}
