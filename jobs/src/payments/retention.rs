//! `prune_webhook_events`: hourly (schedule `prune_webhook_events`), applies
//! `WEBHOOK_EVENT_RETENTION` to the stored Stripe events. An event received before the
//! retention is deleted, unless a recorded refund (`payment_refunds.event_id`, kept for
//! accounting) points at it: that row stays, with its id, type, order and outcome, and only
//! its payload is erased. Runs with or without `STRIPE_SECRET_KEY` (the webhook stores
//! events whenever `STRIPE_WEBHOOK_SECRET` is set).
//!
//! Idempotent: a second run finds nothing to do. Deletes in batches so that a long backlog
//! never holds the table's locks for long.

use std::time::Duration;

use engine::clock::duration_ms;
use engine::scheduler::{Every, Schedule};
use engine::{Db, Job, JobContext, JobError, JobPolicy, Millis, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};

use super::event::{PAYLOAD_NOT_ERASED, erased_payload};

/// The kind's name: stored in every row, never renamed.
pub const KIND: &str = "prune_webhook_events";

/// Args: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneWebhookEvents {}

impl Job for PruneWebhookEvents {
    const KIND: &'static str = KIND;
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(60), Duration::from_secs(1800), 5),
        timeout: Duration::from_secs(600),
        concurrency: 1,
        priority: 10,
    };
}

/// Hourly.
pub fn schedule() -> Schedule {
    Schedule::new(
        KIND,
        Every::Interval(Duration::from_secs(3600)),
        &PruneWebhookEvents {},
    )
}

/// Rows deleted per statement.
const BATCH: i64 = 500;

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events deleted.
    pub deleted: u64,
    /// Events kept for a recorded refund whose payload was erased.
    pub payloads_erased: u64,
}

/// Applies the retention to the events received before `before`.
pub async fn prune(db: &Db, before: Millis) -> Result<Pruned, sqlx::Error> {
    let payloads_erased = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_events SET payload = $2 WHERE received_at < $1 AND {PAYLOAD_NOT_ERASED} \
         AND id IN (SELECT event_id FROM payment_refunds)"
    )))
    .bind(before)
    .bind(erased_payload("retention"))
    .execute(db)
    .await?
    .rows_affected();
    let mut pruned = Pruned {
        deleted: 0,
        payloads_erased,
    };
    loop {
        let n = sqlx::query(
            "DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events \
             WHERE received_at < $1 AND id NOT IN (SELECT event_id FROM payment_refunds) \
             ORDER BY received_at LIMIT $2)",
        )
        .bind(before)
        .bind(BATCH)
        .execute(db)
        .await?
        .rows_affected();
        pruned.deleted += n;
        if n < BATCH as u64 {
            return Ok(pruned);
        }
    }
}

/// Runs one pass with the configured retention.
pub async fn handle(
    _args: PruneWebhookEvents,
    ctx: JobContext,
    retention: Duration,
) -> Result<Outcome, JobError> {
    let before = ctx.now_ms() - duration_ms(retention);
    let pruned = prune(ctx.db(), before).await?;
    tracing::info!(
        deleted = pruned.deleted,
        payloads_erased = pruned.payloads_erased,
        "pruned Stripe webhook events past WEBHOOK_EVENT_RETENTION"
    );
    Ok(Outcome::Succeeded)
}
