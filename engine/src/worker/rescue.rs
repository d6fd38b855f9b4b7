//! Rescue: ending the attempts whose worker stopped renewing their lease (it crashed, was
//! killed or lost the database). The attempt counts; the job is retried on the backoff
//! stored on its own row (so any process can rescue any kind, registered here or not) or,
//! after its last attempt, fails — with its kind's discard hook in the same transaction.

use crate::engine::Engine;
use crate::registry::DiscardReason;
use crate::storage;

/// Most expired leases one pass ends.
const PASS: i64 = 100;

/// Ends the expired attempts of `kind` (every kind when `None`), leaving alone the jobs in
/// `own` (this process still runs them: their lease lapsed only because renewals failed;
/// another process rescues them if this one really is cut off). Returns how many it
/// rescued.
pub async fn rescue_expired(
    engine: &Engine,
    kind: Option<&str>,
    own: &[i64],
) -> crate::Result<usize> {
    let lease_now = engine.clock().lease_now(engine.backend());
    let expired =
        storage::expired_leases(engine.db(), engine.backend(), kind, lease_now, own, PASS).await?;
    let mut rescued = 0;
    for lease in expired {
        let now = engine.clock().now_ms();
        let last = lease.attempt >= lease.retry.max_attempts;
        let retry_at = (!last).then(|| {
            lease
                .retry
                .next_run_at(lease.attempt, now, &mut rand::rng())
        });
        let mut tx = engine.db().begin().await?;
        if !storage::rescue(&mut tx, &lease, now, lease_now, retry_at).await? {
            continue; // renewed, or another rescuer was first
        }
        if last {
            match engine.registry().get(&lease.kind) {
                Some(entry) => {
                    let reason = DiscardReason::Failed(format!(
                        "attempts exhausted ({}/{}): lease expired: worker {} stopped renewing it",
                        lease.attempt, lease.retry.max_attempts, lease.locked_by
                    ));
                    entry
                        .discard(
                            &mut tx,
                            lease.id,
                            &lease.args,
                            reason,
                            now,
                            &crate::Actor::job(lease.id),
                        )
                        .await?;
                }
                None => tracing::warn!(job = lease.id, kind = %lease.kind,
                    "failed a job of a kind unknown here without its discard hook"),
            }
        }
        tx.commit().await?;
        tracing::warn!(job = lease.id, kind = %lease.kind, attempt = lease.attempt, worker = %lease.locked_by,
                       failed = last, "rescued a job whose lease expired");
        rescued += 1;
    }
    Ok(rescued)
}
