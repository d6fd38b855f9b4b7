//! `reverse_transfer`: reverses a seller's payout on Stripe after its payment was fully
//! refunded, and moves the row `reversal_pending → reversed`.
//!
//! Enqueued in the transaction that moves the row to `reversal_pending` (the refund webhook,
//! a payout that found the refund on its way back, the admin retry) and by the [`check`]
//! schedule for rows whose job is gone; unique key `reverse_transfer:{id}`.
//!
//! One attempt, always a full reversal (`amount` unset) with
//! `Idempotency-Key: reversal:{id}`, the same on every attempt, so that a worker killed
//! between Stripe's success and our commit gets the same reversal back:
//!
//! | Stripe says | the row becomes |
//! |---|---|
//! | the reversal | `reversed`, `stripe_reversal_id` set |
//! | 4xx, and the transfer is fully reversed already | `reversed` with the existing reversal's id (logged) |
//! | 404 / `resource_missing` | `permanently_failed` |
//! | 429, 5xx, timeout, connection error | `reversal_pending`, `retry_count + 1`, `next_retry_at = now + min(REVERSAL_BACKOFF_MAX, REVERSAL_BACKOFF_BASE·2^retry_count)`, `last_error`; the job is retried — after `REVERSAL_MAX_RETRIES`, `permanently_failed` |
//! | any other error (say `balance_insufficient`) | `permanently_failed` with Stripe's code and message |
//!
//! A row without `stripe_transfer_id` (legacy) becomes `permanently_failed` without a call.
//! "Already reversed" is recognised from Stripe's view of the transfer (`reversed`), never
//! from the error's message text.

pub mod check;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use engine::state_machine::{Actor, TransitionError};
use engine::{Job, JobContext, JobError, JobPolicy, NewJob, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::payments::config::RetrySettings;
use crate::transfers::state::{self, Changes, TransferRow, TransferStatus};
use crate::transfers::stripe::{
    METADATA_TRANSFER_ID, StripeCallError, StripeClient, StripeReversal,
};

/// The kind's name.
pub const KIND: &str = "reverse_transfer";

/// Args: the `seller_transfers` row to reverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseTransfer {
    /// The row.
    pub transfer_id: i64,
}

impl Job for ReverseTransfer {
    const KIND: &'static str = KIND;
    /// The engine's retry timer; it matches the defaults of `REVERSAL_BACKOFF_BASE`,
    /// `REVERSAL_BACKOFF_MAX` and `REVERSAL_MAX_RETRIES` (10 retries: 11 attempts). The
    /// row's `retry_count` decides when to give up (see [`handle`]).
    const POLICY: JobPolicy = JobPolicy {
        retry: RetryPolicy::exponential(Duration::from_secs(30), Duration::from_secs(3600), 11),
        // Up to three Stripe calls of STRIPE_TIMEOUT each, plus the rate limiter.
        timeout: Duration::from_secs(120),
        concurrency: 4,
        priority: 1,
    };

    fn unique_key(&self) -> Option<String> {
        Some(unique_key(self.transfer_id))
    }
}

/// `reverse_transfer:{id}`: at most one unfinished reversal job per transfer.
pub fn unique_key(transfer_id: i64) -> String {
    format!("{KIND}:{transfer_id}")
}

/// The job for transfer `id`, due at `run_at` (or now), with at most `attempts` attempts
/// (or the kind's default).
pub fn job(
    transfer_id: i64,
    run_at: Option<i64>,
    attempts: Option<u32>,
) -> NewJob<ReverseTransfer> {
    let mut job = NewJob::new(ReverseTransfer { transfer_id });
    if let Some(at) = run_at {
        job = job.run_at(at);
    }
    if let Some(n) = attempts {
        job = job.max_attempts(n);
    }
    job
}

/// What the handler needs besides its args.
#[derive(Debug, Clone)]
pub struct ReversalDeps {
    /// The shared Stripe client.
    pub stripe: StripeClient,
    /// `REVERSAL_*`.
    pub retry: RetrySettings,
}

/// The reversal's discard hook: see [`crate::transfers::give_up_after_job`].
pub fn on_discard<'c>(
    conn: &'c mut engine::DbConn,
    job: engine::Discarded<ReverseTransfer>,
) -> futures::future::BoxFuture<'c, engine::Result<()>> {
    Box::pin(async move {
        crate::transfers::give_up_after_job(
            conn,
            job.args.transfer_id,
            &[TransferStatus::ReversalPending],
            &job.reason,
            &job.actor,
            job.now,
        )
        .await
    })
}

/// Runs one reversal attempt.
pub async fn handle(
    args: ReverseTransfer,
    ctx: JobContext,
    deps: Arc<ReversalDeps>,
) -> Result<Outcome, JobError> {
    let id = args.transfer_id;
    let row = {
        let mut conn = ctx.db().acquire().await?;
        state::load(&mut conn, id).await?
    };
    let Some(row) = row else {
        return Err(JobError::Permanent(format!(
            "seller transfer {id} does not exist"
        )));
    };
    if row.status() != TransferStatus::ReversalPending {
        return Ok(Outcome::Skipped {
            reason: format!(
                "seller transfer {id} is {}: nothing to reverse",
                row.status()
            ),
        });
    }
    let r = Reversal {
        ctx: &ctx,
        deps: &deps,
        actor: Actor::job(ctx.job_id),
    };
    let Some(transfer_id) = row.paid_transfer_id().map(str::to_owned) else {
        return r
            .give_up(
                &row,
                "no stripe_transfer_id (legacy row): nothing to reverse on Stripe",
            )
            .await;
    };
    let metadata = HashMap::from([(METADATA_TRANSFER_ID.to_owned(), row.id.to_string())]);
    let result = deps
        .stripe
        .reverse_transfer(&transfer_id, None, &row.reversal_key(), metadata)
        .await;
    match result {
        Ok(reversal) => r.reversed(&row, &reversal, None).await,
        Err(e) if e.is_transient() => r.retry_or_give_up(&row, &e).await,
        Err(e) if e.is_resource_missing() => r.give_up(&row, &e.to_string()).await,
        Err(e) => r.maybe_already_reversed(&row, &transfer_id, e).await,
    }
}

struct Reversal<'a> {
    ctx: &'a JobContext,
    deps: &'a ReversalDeps,
    actor: Actor,
}

impl Reversal<'_> {
    /// A 4xx that is neither transient nor "missing": if Stripe shows the transfer fully
    /// reversed, adopt its reversal; otherwise give up with Stripe's code and message.
    async fn maybe_already_reversed(
        &self,
        row: &TransferRow,
        transfer_id: &str,
        error: StripeCallError,
    ) -> Result<Outcome, JobError> {
        let transfer = match self.deps.stripe.retrieve_transfer(transfer_id).await {
            Ok(t) => t,
            Err(e) if e.is_transient() => return self.retry_or_give_up(row, &e).await,
            Err(_) => return self.give_up(row, &error.to_string()).await,
        };
        if !transfer.reversed {
            return self.give_up(row, &error.to_string()).await;
        }
        let reversals = match self.deps.stripe.list_reversals(transfer_id).await {
            Ok(list) => list,
            Err(e) if e.is_transient() => return self.retry_or_give_up(row, &e).await,
            Err(e) => return self.give_up(row, &e.to_string()).await,
        };
        let ours = row.id.to_string();
        let adopted = reversals
            .iter()
            .find(|r| r.metadata.get(METADATA_TRANSFER_ID) == Some(&ours))
            .or_else(|| reversals.first());
        let Some(adopted) = adopted else {
            return self
                .give_up(
                    row,
                    &format!("{error}; Stripe shows {transfer_id} reversed but lists no reversal"),
                )
                .await;
        };
        tracing::warn!(transfer = row.id, stripe_transfer = transfer_id, reversal = %adopted.id, stripe_error = %error,
                       "transfer already fully reversed on Stripe: adopting the existing reversal");
        let note = format!(
            "already fully reversed on Stripe ({error}); adopted reversal {}",
            adopted.id
        );
        self.reversed(row, adopted, Some(&note)).await
    }

    async fn reversed(
        &self,
        row: &TransferRow,
        reversal: &StripeReversal,
        note: Option<&str>,
    ) -> Result<Outcome, JobError> {
        let changes = Changes {
            stripe_reversal_id: Some(reversal.id.clone()),
            next_retry_at: Some(None),
            ..Changes::default()
        };
        if !self
            .commit(row, TransferStatus::Reversed, changes, note)
            .await?
        {
            return Ok(stale(row));
        }
        tracing::info!(transfer = row.id, reversal = %reversal.id, "seller transfer reversed");
        Ok(Outcome::Succeeded)
    }

    /// A transient error: a retry bump, and a transient error for the engine, until the
    /// budget is spent; then `permanently_failed`.
    async fn retry_or_give_up(
        &self,
        row: &TransferRow,
        error: &StripeCallError,
    ) -> Result<Outcome, JobError> {
        let retry = &self.deps.retry;
        let failures = row.retry_count + 1;
        if retry.exhausted(failures) {
            let why = format!(
                "gave up after {failures} failed attempts ({} retries allowed): {error}",
                retry.max_retries
            );
            return self.give_up_with(row, &why, failures).await;
        }
        let now = self.ctx.now_ms();
        let next = retry.next_retry_at(now, row.retry_count);
        let message = error.to_string();
        if !self
            .commit(
                row,
                TransferStatus::ReversalPending,
                Changes::retry(failures, next, &message),
                Some(&message),
            )
            .await?
        {
            return Ok(stale(row));
        }
        tracing::warn!(transfer = row.id, error = %error, retry = failures, next_retry_at = next, "reversal failed; will retry");
        // The row's next_retry_at and the job's next run are the same number.
        Err(JobError::retry_at(
            next,
            format!(
                "reversal attempt failed, retry {failures}/{} due at {next}: {error}",
                retry.max_retries
            ),
        ))
    }

    async fn give_up(&self, row: &TransferRow, error: &str) -> Result<Outcome, JobError> {
        self.give_up_with(row, error, row.retry_count).await
    }

    async fn give_up_with(
        &self,
        row: &TransferRow,
        error: &str,
        retry_count: i64,
    ) -> Result<Outcome, JobError> {
        if !self
            .commit(
                row,
                TransferStatus::PermanentlyFailed,
                Changes::give_up(retry_count, error),
                Some(error),
            )
            .await?
        {
            return Ok(stale(row));
        }
        tracing::error!(
            transfer = row.id,
            error,
            "seller transfer reversal permanently failed"
        );
        Err(JobError::Permanent(format!(
            "reversal failed permanently: {error}"
        )))
    }

    /// Writes one transition in its own transaction. False when the row moved meanwhile (a
    /// concurrent run of this job, an admin): nothing is written, the row is left as it is.
    async fn commit(
        &self,
        row: &TransferRow,
        to: TransferStatus,
        changes: Changes,
        note: Option<&str>,
    ) -> Result<bool, JobError> {
        let now = self.ctx.now_ms();
        let mut tx = self.ctx.db().begin().await?;
        match state::transition(&mut tx, row, to, changes, &self.actor, note, now).await {
            Ok(_) => {}
            Err(TransitionError::Stale { .. }) => return Ok(false),
            Err(e) => return Err(JobError::transient(engine::job::error_chain(&e))),
        }
        // Only while this attempt still holds the job: a worker cut off past its lease
        // must not write over the attempt that replaced it.
        self.ctx.fence(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }
}

fn stale(row: &TransferRow) -> Outcome {
    Outcome::Skipped {
        reason: format!(
            "seller transfer {} left reversal_pending concurrently; nothing recorded",
            row.id
        ),
    }
}
