//! `transfer_seller`: pays one seller transfer out on Stripe (a Connect transfer to the
//! seller's account) and moves the row `pending|failed → completed`.
//!
//! Enqueued with the row, in the transaction of the `payment_intent.succeeded` webhook
//! (unique key `transfer_seller:{id}`), by the admin retry, and by the
//! [`check`] schedule for rows whose job is gone.
//!
//! One attempt:
//! 1. reads the row; anything but `pending`/`failed` is done already (skipped);
//! 2. marks the attempt on the row (`payout_attempted_at`, guarded on the status): from then
//!    on a refund does not cancel the row, because a transfer may exist;
//! 3. if an earlier attempt was made, or the payment has been refunded, looks the transfer
//!    up on Stripe (`transfer_group = order:{id}`, metadata `seller_transfer_id`) instead
//!    of trusting the idempotency key alone (Stripe prunes keys after about 24 h);
//! 4. refunded: adopts a transfer found (`completed`, then `reversal_pending` with a
//!    reversal job) or cancels the row, and never creates one;
//! 5. otherwise creates the transfer with `Idempotency-Key: transfer:{id}`, the same on every
//!    attempt, so a retry after a lost answer gets the same transfer back;
//! 6. records the result in one transaction: `completed` with `stripe_transfer_id` (and, if
//!    a refund landed meanwhile, `reversal_pending` plus a reversal job); a transient error
//!    → `failed` with `retry_count`, `next_retry_at` and `last_error`, and the job is
//!    retried; a permanent error or the last retry → `permanently_failed`.

pub mod check;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use engine::state_machine::{Actor, TransitionError};
use engine::{Job, JobContext, JobError, JobPolicy, NewJob, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::payments::config::RetrySettings;
use crate::payments::orders;
use crate::reverse_transfer::ReverseTransfer;
use crate::transfers::state::{self, Changes, TransferRow, TransferStatus};
use crate::transfers::stripe::{METADATA_TRANSFER_ID, PayoutRequest, StripeClient, StripeTransfer};

/// The kind's name.
pub const KIND: &str = "transfer_seller";

/// Args: the `seller_transfers` row to pay out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSeller {
    /// The row.
    pub transfer_id: i64,
}

impl Job for TransferSeller {
    const KIND: &'static str = KIND;
    /// The engine's retry timer; it matches the defaults of `TRANSFER_RETRY_BACKOFF_BASE`,
    /// `TRANSFER_RETRY_BACKOFF_MAX` and `TRANSFER_RETRY_MAX_RETRIES` (10 retries: 11
    /// attempts). The row's `retry_count` decides when to give up, whatever the job's
    /// attempt number (see [`handle`]).
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

/// `transfer_seller:{id}`: at most one unfinished payout job per transfer.
pub fn unique_key(transfer_id: i64) -> String {
    format!("{KIND}:{transfer_id}")
}

/// What the handler needs besides its args.
#[derive(Debug, Clone)]
pub struct PayoutDeps {
    /// The shared Stripe client.
    pub stripe: StripeClient,
    /// `TRANSFER_RETRY_*`.
    pub retry: RetrySettings,
}

/// The job for transfer `id`, due at `run_at` (or now), with at most `attempts` attempts
/// (or the kind's default).
pub fn job(transfer_id: i64, run_at: Option<i64>, attempts: Option<u32>) -> NewJob<TransferSeller> {
    let mut job = NewJob::new(TransferSeller { transfer_id });
    if let Some(at) = run_at {
        job = job.run_at(at);
    }
    if let Some(n) = attempts {
        job = job.max_attempts(n);
    }
    job
}

/// The Stripe transfer group of an order's payouts.
pub fn transfer_group(order_id: i64) -> String {
    format!("order:{order_id}")
}

/// The payout's discard hook: see [`crate::transfers::give_up_after_job`].
pub fn on_discard<'c>(
    conn: &'c mut engine::DbConn,
    job: engine::Discarded<TransferSeller>,
) -> futures::future::BoxFuture<'c, engine::Result<()>> {
    Box::pin(async move {
        crate::transfers::give_up_after_job(
            conn,
            job.args.transfer_id,
            &[TransferStatus::Pending, TransferStatus::Failed],
            &job.reason,
            &job.actor,
            job.now,
        )
        .await
    })
}

/// Runs one payout attempt.
pub async fn handle(
    args: TransferSeller,
    ctx: JobContext,
    deps: Arc<PayoutDeps>,
) -> Result<Outcome, JobError> {
    let id = args.transfer_id;
    let payout = Payout {
        ctx: &ctx,
        deps: &deps,
        actor: Actor::job(ctx.job_id),
    };
    let mut conn = ctx.db().acquire().await?;
    let Some(row) = state::load(&mut conn, id).await? else {
        return Err(JobError::Permanent(format!(
            "seller transfer {id} does not exist"
        )));
    };
    if !matches!(
        row.status(),
        TransferStatus::Pending | TransferStatus::Failed
    ) {
        return Ok(Outcome::Skipped {
            reason: format!(
                "seller transfer {id} is {}: nothing to pay out",
                row.status()
            ),
        });
    }
    let order = orders::load(&mut conn, row.order_id)
        .await?
        .ok_or_else(|| JobError::Permanent(format!("order {} does not exist", row.order_id)))?;
    let account = orders::seller_account(&mut conn, row.seller_id).await?;
    let previously_attempted = row.payout_attempted_at.is_some();
    if account.is_none() && !previously_attempted {
        // Nothing can reach Stripe, so the row is not marked: a refund may still cancel it.
        drop(conn);
        let error = format!("seller {} has no Stripe connected account", row.seller_id);
        return payout.failed(&row, &error, true).await;
    }
    if !state::begin_payout_attempt(&mut conn, id, ctx.now_ms()).await? {
        return Ok(Outcome::Skipped {
            reason: format!("seller transfer {id} changed before its payout started"),
        });
    }
    // Read after marking: a refund committed from now on leaves the row to this job.
    let refunded = orders::refunded_at(&mut conn, row.order_id)
        .await?
        .is_some();
    drop(conn);

    // An earlier attempt may have reached Stripe: look before creating anything.
    let existing = if previously_attempted || refunded {
        match deps
            .stripe
            .find_transfer(&transfer_group(row.order_id), row.id)
            .await
        {
            Ok(found) => found,
            Err(e) => return payout.failed(&row, &e.to_string(), e.is_transient()).await,
        }
    } else {
        None
    };

    if refunded {
        return payout.settle_refunded(&row, existing).await;
    }
    if let Some(found) = existing {
        tracing::info!(transfer = id, stripe_transfer = %found.id, "payout found on Stripe from an earlier attempt; adopting it");
        return payout
            .completed(
                &row,
                &found,
                Some("adopted the transfer of an earlier attempt"),
            )
            .await;
    }
    let Some(destination) = account else {
        let error = format!("seller {} has no Stripe connected account", row.seller_id);
        return payout.failed(&row, &error, true).await;
    };
    let mut metadata = HashMap::from([
        (METADATA_TRANSFER_ID.to_owned(), row.id.to_string()),
        ("order_id".to_owned(), row.order_id.to_string()),
        ("order_item_id".to_owned(), row.order_item_id.to_string()),
    ]);
    metadata.insert("seller_id".to_owned(), row.seller_id.to_string());
    let request = PayoutRequest {
        amount: row.amount,
        currency: row.currency.clone(),
        destination,
        transfer_group: transfer_group(row.order_id),
        source_transaction: order.stripe_charge_id.clone(),
        metadata,
    };
    match deps
        .stripe
        .create_transfer(&request, &row.payout_key())
        .await
    {
        Ok(transfer) => payout.completed(&row, &transfer, None).await,
        Err(e) => {
            tracing::warn!(transfer = id, error = %e, transient = e.is_transient(), "payout failed");
            payout.failed(&row, &e.to_string(), e.is_transient()).await
        }
    }
}

struct Payout<'a> {
    ctx: &'a JobContext,
    deps: &'a PayoutDeps,
    actor: Actor,
}

impl Payout<'_> {
    /// Records a payout made on Stripe: `completed`, and if the payment has been refunded
    /// meanwhile, `reversal_pending` with its reversal job, in one transaction.
    async fn completed(
        &self,
        row: &TransferRow,
        transfer: &StripeTransfer,
        note: Option<&str>,
    ) -> Result<Outcome, JobError> {
        let now = self.ctx.now_ms();
        let mut tx = self.ctx.engine.begin().await?;
        let changes = Changes {
            stripe_transfer_id: Some(transfer.id.clone()),
            next_retry_at: Some(None),
            ..Changes::default()
        };
        let done = match state::transition(
            &mut tx,
            row,
            TransferStatus::Completed,
            changes,
            &self.actor,
            note,
            now,
        )
        .await
        {
            Ok(done) => done,
            Err(TransitionError::Stale { .. }) => {
                drop(tx);
                return self.after_stale(row.id, Some(&transfer.id)).await;
            }
            Err(e) => return Err(transition_error(e)),
        };
        // After the write: a refund committed while the payout was in flight is seen here.
        let refunded = orders::refunded_at(&mut tx, row.order_id).await?.is_some();
        if refunded {
            self.request_reversal(&mut tx, &done, now).await?;
        }
        self.ctx.fence(&mut tx).await?;
        tx.commit().await?;
        tracing::info!(transfer = row.id, stripe_transfer = %transfer.id, reversal = refunded, "seller paid out");
        Ok(Outcome::Succeeded)
    }

    async fn request_reversal(
        &self,
        tx: &mut engine::JobTx,
        row: &TransferRow,
        now: i64,
    ) -> Result<(), JobError> {
        let row = state::transition(
            tx,
            row,
            TransferStatus::ReversalPending,
            Changes::reset_retries(),
            &self.actor,
            Some("the payment was refunded while the payout was in flight"),
            now,
        )
        .await
        .map_err(transition_error)?;
        tx.enqueue(NewJob::new(ReverseTransfer {
            transfer_id: row.id,
        }))
        .await?;
        Ok(())
    }

    /// The payment was refunded: never create a transfer. One found on Stripe (an earlier
    /// attempt's) is recorded and reversed; otherwise the row is cancelled.
    async fn settle_refunded(
        &self,
        row: &TransferRow,
        existing: Option<StripeTransfer>,
    ) -> Result<Outcome, JobError> {
        let now = self.ctx.now_ms();
        let mut tx = self.ctx.engine.begin().await?;
        let step = match &existing {
            Some(transfer) => {
                let changes = Changes {
                    stripe_transfer_id: Some(transfer.id.clone()),
                    next_retry_at: Some(None),
                    ..Changes::default()
                };
                match state::transition(
                    &mut tx,
                    row,
                    TransferStatus::Completed,
                    changes,
                    &self.actor,
                    Some("found on Stripe after the payment was refunded"),
                    now,
                )
                .await
                {
                    Ok(done) => {
                        self.request_reversal(&mut tx, &done, now).await?;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            None => state::transition(
                &mut tx,
                row,
                TransferStatus::Cancelled,
                Changes {
                    next_retry_at: Some(None),
                    ..Changes::default()
                },
                &self.actor,
                Some("the payment was refunded before the seller was paid"),
                now,
            )
            .await
            .map(|_| ()),
        };
        match step {
            Ok(()) => {}
            Err(TransitionError::Stale { .. }) => {
                drop(tx);
                return self
                    .after_stale(row.id, existing.as_ref().map(|t| t.id.as_str()))
                    .await;
            }
            Err(e) => return Err(transition_error(e)),
        }
        self.ctx.fence(&mut tx).await?;
        tx.commit().await?;
        match existing {
            Some(t) => {
                tracing::warn!(transfer = row.id, stripe_transfer = %t.id, "payout found after the refund: reversing it");
            }
            None => tracing::info!(
                transfer = row.id,
                "payment refunded before the payout: cancelled"
            ),
        }
        Ok(Outcome::Succeeded)
    }

    /// Records a failed attempt: a retry bump (`failed`, retry_count + 1, next_retry_at,
    /// last_error) and a transient error for the engine to retry; or, for a permanent error
    /// or the last retry, `permanently_failed` and a permanent error.
    async fn failed(
        &self,
        row: &TransferRow,
        error: &str,
        transient: bool,
    ) -> Result<Outcome, JobError> {
        let now = self.ctx.now_ms();
        let retry = &self.deps.retry;
        let failures = row.retry_count + 1;
        let give_up = !transient || retry.exhausted(failures);
        let mut tx = self.ctx.engine.begin().await?;
        let mut next = now;
        let step = if give_up {
            let failed = if row.status() == TransferStatus::Failed {
                Ok(row.clone())
            } else {
                state::transition(
                    &mut tx,
                    row,
                    TransferStatus::Failed,
                    Changes::give_up(failures, error),
                    &self.actor,
                    Some(error),
                    now,
                )
                .await
            };
            match failed {
                Ok(failed) => state::transition(
                    &mut tx,
                    &failed,
                    TransferStatus::PermanentlyFailed,
                    Changes::give_up(failures, error),
                    &self.actor,
                    Some(error),
                    now,
                )
                .await
                .map(|_| ()),
                Err(e) => Err(e),
            }
        } else {
            next = retry.next_retry_at(now, row.retry_count);
            state::transition(
                &mut tx,
                row,
                TransferStatus::Failed,
                Changes::retry(failures, next, error),
                &self.actor,
                Some(error),
                now,
            )
            .await
            .map(|_| ())
        };
        match step {
            Ok(()) => {}
            Err(TransitionError::Stale { .. }) => {
                drop(tx);
                return self.after_stale(row.id, None).await;
            }
            Err(e) => return Err(transition_error(e)),
        }
        self.ctx.fence(&mut tx).await?;
        tx.commit().await?;
        if give_up {
            let why = if transient {
                format!(
                    "payout gave up after {failures} failed attempts ({} retries allowed): {error}",
                    retry.max_retries
                )
            } else {
                format!("payout failed permanently: {error}")
            };
            tracing::error!(
                transfer = row.id,
                error,
                "seller transfer permanently failed"
            );
            Err(JobError::Permanent(why))
        } else {
            // The row's next_retry_at and the job's next run are the same number.
            Err(JobError::retry_at(
                next,
                format!(
                    "payout attempt {failures} failed, retry {failures}/{} due at {next}: {error}",
                    retry.max_retries
                ),
            ))
        }
    }

    /// The row moved while we worked (a concurrent run of this job, an admin). Nothing was
    /// written; report what it is now.
    async fn after_stale(&self, id: i64, paid_as: Option<&str>) -> Result<Outcome, JobError> {
        let mut conn = self.ctx.db().acquire().await?;
        let now = state::load(&mut conn, id).await?;
        let Some(now) = now else {
            return Err(JobError::Permanent(format!(
                "seller transfer {id} disappeared"
            )));
        };
        match (now.status(), paid_as) {
            (TransferStatus::Cancelled, Some(tr)) => {
                tracing::error!(
                    transfer = id,
                    stripe_transfer = tr,
                    "a payout landed on Stripe for a cancelled transfer; it must be reversed by hand"
                );
                Err(JobError::Permanent(format!(
                    "seller transfer {id} was cancelled while {tr} was being created on Stripe: reverse it by hand"
                )))
            }
            (status, _) => Ok(Outcome::Skipped {
                reason: format!("seller transfer {id} became {status} concurrently"),
            }),
        }
    }
}

fn transition_error(e: TransitionError) -> JobError {
    JobError::transient(engine::job::error_chain(&e))
}
