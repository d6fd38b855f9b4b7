//! Seller transfers: the payout of each order item to its seller, and its reversal when the
//! payment is refunded after the payout.
//!
//! - [`state`]: the lifecycle and the only code that writes `seller_transfers`;
//! - [`stripe`]: the Stripe client (rate limit, timeouts, idempotency keys, classification);
//! - here: reads and the admin retry, for the HTTP routes.
//!
//! The jobs: [`crate::transfer_seller`] (payout), [`crate::reverse_transfer`] (reversal),
//! [`crate::reconcile_transfers`] (drift detector); webhooks: [`crate::payments`].

pub mod state;
pub mod stripe;

use engine::admin::{self, JobFilter, JobSummary};
use engine::state_machine::{Actor, TransitionError};
use engine::{Engine, Millis, NewJob};

pub use state::{TransferRow, TransferStatus};

use crate::reverse_transfer::ReverseTransfer;
use crate::transfer_seller::TransferSeller;

/// Why an admin operation on a transfer did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No transfer has this id.
    #[error("seller transfer {0} not found")]
    NotFound(i64),
    /// Only `permanently_failed` transfers can be retried.
    #[error("seller transfer {id} is {status}; only permanently_failed transfers can be retried")]
    NotRetryable {
        /// The transfer.
        id: i64,
        /// Its status.
        status: TransferStatus,
    },
    /// The row changed meanwhile.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Enqueueing failed.
    #[error(transparent)]
    Engine(#[from] engine::Error),
}

/// The end of a payout or reversal job that its handler did not reach (the last attempt
/// timed out, panicked or lost its worker; an admin cancelled the job): the transfer, if
/// still in one of `in_progress`, becomes `permanently_failed` with the reason, in the
/// engine's transaction, so no row waits for a job that will never run again. An admin
/// retry (`POST /v1/transfers/{id}/retry`) takes it from there. The payout and reversal
/// kinds register it as their discard hook; the safety nets stay for rows whose job row
/// was lost altogether.
pub async fn give_up_after_job(
    conn: &mut engine::DbConn,
    transfer_id: i64,
    in_progress: &[TransferStatus],
    reason: &engine::DiscardReason,
    actor: &Actor,
    now: Millis,
) -> Result<(), engine::Error> {
    let Some(mut row) = state::load(conn, transfer_id).await? else {
        return Ok(());
    };
    if !in_progress.contains(&row.status()) {
        return Ok(()); // the handler ended it
    }
    let why = match reason {
        engine::DiscardReason::Failed(e) => format!("job failed for good: {e}"),
        engine::DiscardReason::Cancelled => "job cancelled by an admin".to_owned(),
    };
    let retry_count = row.retry_count;
    let changes = || state::Changes::give_up(retry_count, &why);
    if row.status() == TransferStatus::Pending {
        row = state::transition(
            conn,
            &row,
            TransferStatus::Failed,
            changes(),
            actor,
            Some(&why),
            now,
        )
        .await?;
    }
    state::transition(
        conn,
        &row,
        TransferStatus::PermanentlyFailed,
        changes(),
        actor,
        Some(&why),
        now,
    )
    .await?;
    Ok(())
}

/// Transfer `id`, if it exists.
pub async fn get(engine: &Engine, id: i64) -> Result<Option<TransferRow>, sqlx::Error> {
    let mut conn = engine.db().acquire().await?;
    state::load(&mut conn, id).await
}

/// Transfers in `statuses` (all when empty), of `seller_id` when given, with
/// `id > after_id`, by id, at most `limit`.
pub async fn list(
    engine: &Engine,
    statuses: &[TransferStatus],
    seller_id: Option<i64>,
    after_id: i64,
    limit: i64,
) -> Result<Vec<TransferRow>, sqlx::Error> {
    let mut conn = engine.db().acquire().await?;
    state::list(&mut conn, statuses, seller_id, after_id, limit).await
}

/// The payout and reversal jobs of transfer `id` (every job enqueued with its unique
/// keys, finished ones included), oldest first.
pub async fn jobs_of(engine: &Engine, id: i64) -> Result<Vec<JobSummary>, engine::Error> {
    let mut found = Vec::new();
    for key in [
        crate::transfer_seller::unique_key(id),
        crate::reverse_transfer::unique_key(id),
    ] {
        let filter = JobFilter {
            unique_key: Some(key),
            limit: Some(500),
            ..JobFilter::default()
        };
        found.extend(admin::list_jobs(engine.db(), &filter).await?.jobs);
    }
    found.sort_by_key(|j| j.id);
    Ok(found)
}

/// Admin retry of a `permanently_failed` transfer, with fresh attempts and fresh
/// idempotency keys: back to `failed` with a payout job when it was never paid out, or to
/// `reversal_pending` with a reversal job when it was (its reversal failed). Returns the
/// new status.
pub async fn admin_retry(
    engine: &Engine,
    id: i64,
    actor: &Actor,
) -> Result<TransferStatus, AdminError> {
    let now = engine.clock().now_ms();
    let mut tx = engine.begin().await?;
    // Write first: on SQLite this takes the write lock before the read.
    touch(&mut tx, id, now).await?;
    let row = state::load(&mut tx, id)
        .await?
        .ok_or(AdminError::NotFound(id))?;
    if row.status() != TransferStatus::PermanentlyFailed {
        return Err(AdminError::NotRetryable {
            id,
            status: row.status(),
        });
    }
    let changes = state::Changes {
        key_generation: Some(row.key_generation + 1),
        ..state::Changes::reset_retries()
    };
    let to = if row.paid_transfer_id().is_some() {
        let row = state::transition(
            &mut tx,
            &row,
            TransferStatus::ReversalPending,
            changes,
            actor,
            Some("admin retry of the reversal"),
            now,
        )
        .await?;
        tx.enqueue(NewJob::new(ReverseTransfer {
            transfer_id: row.id,
        }))
        .await?;
        TransferStatus::ReversalPending
    } else {
        let row = state::transition(
            &mut tx,
            &row,
            TransferStatus::Failed,
            changes,
            actor,
            Some("admin retry of the payout"),
            now,
        )
        .await?;
        tx.enqueue(NewJob::new(TransferSeller {
            transfer_id: row.id,
        }))
        .await?;
        TransferStatus::Failed
    };
    tx.commit().await?;
    Ok(to)
}

/// A no-op write on `orders` of the transfer's order, so that a SQLite transaction holds
/// the write lock before it reads (a read-then-write transaction can fail with
/// `SQLITE_BUSY` when another writer commits in between).
async fn touch(
    conn: &mut engine::DbConn,
    transfer_id: i64,
    now: Millis,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET updated_at = $1 \
         WHERE id = (SELECT order_id FROM seller_transfers WHERE id = $2)",
    )
    .bind(now)
    .bind(transfer_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A transfer in one of a worker's statuses with no unfinished job for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphan {
    /// The transfer.
    pub id: i64,
    /// Its failed attempts so far.
    pub retry_count: i64,
    /// When its next attempt is due.
    pub next_retry_at: Option<Millis>,
}

/// Transfers in `statuses` whose job (unique key `{key_prefix}{id}`) is gone: finished,
/// failed, cancelled, pruned or never enqueued. At most `limit`, by id.
pub async fn orphans(
    engine: &Engine,
    statuses: &[TransferStatus],
    key_prefix: &str,
    limit: i64,
) -> Result<Vec<Orphan>, sqlx::Error> {
    let names: Vec<String> = statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    let sql = format!(
        "SELECT t.id, t.retry_count, t.next_retry_at FROM seller_transfers t \
         WHERE t.status IN ({}) AND NOT EXISTS (SELECT 1 FROM jobs j \
           WHERE j.unique_key = $1 || CAST(t.id AS TEXT) \
             AND j.status IN ('pending', 'running', 'retrying')) \
         ORDER BY t.id LIMIT $2",
        names.join(", ")
    );
    let rows: Vec<(i64, i64, Option<i64>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(key_prefix)
        .bind(limit)
        .fetch_all(engine.db())
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, retry_count, next_retry_at)| Orphan {
            id,
            retry_count,
            next_retry_at,
        })
        .collect())
}

/// Rows one safety-net run looks at, at most.
const ORPHAN_BATCH: i64 = 500;

/// The safety net of a worker: enqueues, in one transaction, a job for every transfer in
/// `statuses` whose job (unique key `{key_prefix}{id}`) is gone. The unique key makes a
/// second job impossible, whoever races. Returns how many jobs were inserted.
pub async fn requeue_orphans<J: engine::Job>(
    engine: &Engine,
    statuses: &[TransferStatus],
    key_prefix: &str,
    job: impl Fn(&Orphan) -> NewJob<J>,
) -> Result<usize, engine::Error> {
    let orphans = orphans(engine, statuses, key_prefix, ORPHAN_BATCH).await?;
    if orphans.is_empty() {
        return Ok(0);
    }
    let mut tx = engine.begin().await?;
    let mut inserted = 0;
    for orphan in &orphans {
        if let engine::Enqueued::Inserted(job_id) = tx.enqueue(job(orphan)).await? {
            inserted += 1;
            tracing::warn!(
                transfer = orphan.id,
                job = job_id,
                kind = J::KIND,
                retry_count = orphan.retry_count,
                "transfer had no job: enqueued one"
            );
        }
    }
    tx.commit().await?;
    Ok(inserted)
}
