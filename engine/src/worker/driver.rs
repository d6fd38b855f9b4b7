//! One kind's runtime core, shared by its apalis backend ([`super::JobStorage`]), its attempt
//! layer ([`super::attempt`]) and its driver task, which alone talks to the database:
//!
//! ```text
//!   driver ── exchange: acks + claim in one step ──▶ buffer ──poll_next──▶ apalis worker
//!     ▲                                                                     │ attempt layer
//!     └──────────── finished (acks) ◀── finish(id, attempt, end) ◀──────────┘
//!   heartbeat: renew (id, attempt) leases of everything held; cancel attempts whose lease
//!   is gone; rescue this kind's expired leases
//! ```
//!
//! **Claim ahead, bounded.** The driver keeps up to `concurrency + prefetch` jobs leased:
//! the ones running plus a local buffer, so a worker finishing a short job starts the next
//! one without a round trip. `prefetch` adapts to how long this kind's attempts take: the
//! buffer never holds more than the workers can start within [`PREFETCH_HORIZON`] (a small
//! fraction of any lease), and none at all for long jobs, so no job waits leased here
//! while another process could run it. Buffered jobs' leases are renewed like running
//! ones; at shutdown they are handed back without using an attempt.
//!
//! **Acks batched, flushed at once when idle.** Finished attempts queue in memory; the
//! driver writes all that queued while its previous step ran, together with the next
//! claim, in one step ([`storage::exchange`]). With nothing else to do it writes them at
//! once. A batch that fails is split until the failing ack is alone, which is then failed
//! with the database's complaint (so one bad row cannot hold the others back), and kept
//! leases are renewed meanwhile: nothing is run twice because of a short outage.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, duration_ms};
use crate::engine::Engine;
use crate::job::{JobPolicy, RetryPolicy};
use crate::registry::DiscardReason;
use crate::storage::{self, Ack, AttemptEnd, ClaimedJob, Exchange};

/// The buffer holds no more jobs than this kind's workers can start within this long.
pub const PREFETCH_HORIZON: Duration = Duration::from_secs(1);

/// A Postgres step with at least this many acks and claims runs them on two connections.
const PARALLEL_STEP: usize = 32;

/// The runtime's own retries of a failed database step: 100 ms doubling to 10 s (the one
/// backoff formula, [`RetryPolicy::delay`]).
pub(crate) const DB_RETRY: RetryPolicy = RetryPolicy::exponential(
    Duration::from_millis(100),
    Duration::from_secs(10),
    u32::MAX,
);

/// An attempt running in this process.
pub(crate) struct Running {
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) releases: u32,
    pub(crate) retry: RetryPolicy,
    /// When the handler started (engine clock).
    pub(crate) started_ms: Millis,
    /// How long the job had been due when it started.
    pub(crate) due_for: Millis,
    /// Fired when a renewal finds the lease gone.
    pub(crate) lost: CancellationToken,
}

#[derive(Default)]
struct State {
    /// Claimed, leased, not started.
    buffer: VecDeque<ClaimedJob>,
    /// Started, not finished.
    running: HashMap<i64, Running>,
    /// Finished, not yet written.
    finished: Vec<Ack>,
    /// Finished, refused by the database even alone (a failing discard hook): tried
    /// again on a backoff, their leases kept.
    stuck: Vec<Ack>,
    /// The apalis worker waiting in `poll_next`.
    worker: Option<Waker>,
    /// `poll_close` waiting for the driver to flush.
    close: Option<Waker>,
    closing: bool,
    closed: bool,
    /// Workers polling this core now ([`Attachment`]s alive). With none, nothing is
    /// claimed and the buffer is handed back: a dropped worker whose storage has live
    /// clones (a producer's) must not keep jobs leased that nobody will start.
    attached: usize,
    /// The last claim came back short: claim again on a wake-up or after the poll interval.
    drained: bool,
    /// Moving average of attempt run time, in seconds (None until the first one ends).
    avg_run_secs: Option<f64>,
}

/// Counts since start, for tests and benches ([`crate::testing::drain`]).
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) claimed: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Probe rounds requested ([`Core::probe`]).
    probe: AtomicU64,
    /// The last probe round answered by an idle step that began after it was requested.
    probed: AtomicU64,
}

/// One kind's shared runtime state.
pub(crate) struct Core {
    pub(crate) engine: Engine,
    pub(crate) kind: Arc<str>,
    pub(crate) policy: JobPolicy,
    state: Mutex<State>,
    /// Wakes the driver.
    wake: Notify,
    /// Fired by the pool at its cut-off time: running attempts are handed back.
    pub(crate) cutoff: CancellationToken,
    started: AtomicBool,
    driver_done: AtomicBool,
    pub(crate) counters: Counters,
}

impl Core {
    pub(crate) fn new(engine: Engine, kind: Arc<str>, policy: JobPolicy) -> Arc<Self> {
        Arc::new(Self {
            engine,
            kind,
            policy,
            state: Mutex::default(),
            wake: Notify::new(),
            cutoff: CancellationToken::new(),
            started: AtomicBool::new(false),
            driver_done: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the driver task (once; needs a tokio runtime).
    pub(crate) fn ensure_started(self: &Arc<Self>) {
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(drive(Arc::clone(self)));
        }
    }

    /// Registers a worker polling this core, until the returned attachment is dropped.
    pub(crate) fn attach(self: &Arc<Self>) -> Attachment {
        self.state().attached += 1;
        self.wake.notify_one();
        Attachment(Arc::clone(self))
    }

    /// True until the driver has flushed everything and stopped (or was never started).
    pub(crate) fn driver_alive(&self) -> bool {
        !self.driver_done.load(Ordering::SeqCst)
    }

    /// The next job to start, if a slot is free: registers `waker` otherwise. A job whose
    /// earlier attempt still runs here (its lease was lost and another claim took it)
    /// waits in the buffer until that attempt has stopped.
    pub(crate) fn next_job(&self, waker: &Waker) -> Option<(ClaimedJob, CancellationToken)> {
        let mut st = self.state();
        if st.closing || st.running.len() >= self.policy.concurrency {
            st.worker = Some(waker.clone());
            return None;
        }
        let pos = st
            .buffer
            .iter()
            .position(|j| !st.running.contains_key(&j.id));
        let Some(job) = pos.and_then(|p| st.buffer.remove(p)) else {
            st.worker = Some(waker.clone());
            drop(st);
            self.wake.notify_one();
            return None;
        };
        let lost = CancellationToken::new();
        let started_ms = self.engine.clock().now_ms();
        st.running.insert(
            job.id,
            Running {
                attempt: job.attempt,
                max_attempts: job.max_attempts,
                releases: job.releases,
                retry: job.retry,
                started_ms,
                due_for: started_ms - job.run_at,
                lost: lost.clone(),
            },
        );
        let refill = st.buffer.len() <= self.prefetch(&st) / 2;
        drop(st);
        if refill {
            self.wake.notify_one();
        }
        Some((job, lost))
    }

    /// Records how an attempt ended (`None`: it lost its lease, nothing is written) and
    /// frees its slot.
    pub(crate) fn finish(&self, id: i64, attempt: u32, end: Option<AttemptEnd>, took: Duration) {
        let mut st = self.state();
        let Some(run) = st.running.get(&id).filter(|r| r.attempt == attempt) else {
            return;
        };
        let (started_at, due_for) = (run.started_ms, run.due_for);
        st.running.remove(&id);
        if let Some(end) = &end {
            crate::metrics::record_attempt(&self.kind, due_for, took, end);
        }
        let secs = took.as_secs_f64();
        st.avg_run_secs = Some(match st.avg_run_secs {
            Some(avg) => avg * 0.8 + secs * 0.2,
            None => secs,
        });
        if let Some(end) = end {
            st.finished.push(Ack {
                id,
                attempt,
                started_at,
                end,
            });
        }
        let worker = st.worker.take();
        drop(st);
        if let Some(w) = worker {
            w.wake();
        }
        self.wake.notify_one();
    }

    /// How a running attempt is handed back at the cut-off.
    pub(crate) fn release_end(&self, id: i64, attempt: u32) -> AttemptEnd {
        let st = self.state();
        match st.running.get(&id).filter(|r| r.attempt == attempt) {
            Some(r) if r.releases < storage::MAX_RELEASES => {
                AttemptEnd::Released { give_back: true }
            }
            Some(r) if r.attempt >= r.max_attempts => AttemptEnd::Fail {
                error: format!(
                    "attempts exhausted ({}/{}): released at shutdown before it finished, {} times",
                    r.attempt,
                    r.max_attempts,
                    r.releases + 1
                ),
            },
            _ => AttemptEnd::Released { give_back: false },
        }
    }

    /// The token that fires when a running attempt loses its lease.
    pub(crate) fn lost_token(&self, id: i64, attempt: u32) -> Option<CancellationToken> {
        let st = self.state();
        st.running
            .get(&id)
            .filter(|r| r.attempt == attempt)
            .map(|r| r.lost.clone())
    }

    /// The policy of a running attempt (for the attempt layer's decision).
    pub(crate) fn running(&self, id: i64, attempt: u32) -> Option<(u32, u32, RetryPolicy)> {
        let st = self.state();
        st.running
            .get(&id)
            .filter(|r| r.attempt == attempt)
            .map(|r| (r.attempt, r.max_attempts, r.retry))
    }

    /// Stop claiming; hand back the buffer; flush; then `poll_close` may return.
    pub(crate) fn close(&self, waker: Option<&Waker>) -> bool {
        let mut st = self.state();
        st.closing = true;
        if let Some(w) = waker {
            st.close = Some(w.clone());
        }
        let closed = st.closed || !self.started.load(Ordering::SeqCst);
        drop(st);
        self.wake.notify_one();
        closed
    }

    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    /// Asks the driver to look for due jobs again now; returns the round to wait for
    /// with [`Core::probed`] (tests: [`crate::testing::drain`]).
    pub(crate) fn probe(&self) -> u64 {
        let round = self.counters.probe.fetch_add(1, Ordering::SeqCst) + 1;
        self.state().drained = false;
        self.wake.notify_one();
        round
    }

    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    /// True once a step that began after probe `round` was requested found nothing due,
    /// with nothing held or left to write.
    pub(crate) fn probed(&self, round: u64) -> bool {
        self.counters.probed.load(Ordering::SeqCst) >= round
    }

    /// The ids of the jobs this core holds (buffered or running).
    pub(crate) fn held_ids(&self) -> Vec<i64> {
        let st = self.state();
        st.buffer
            .iter()
            .map(|j| j.id)
            .chain(st.running.keys().copied())
            .collect()
    }

    /// How many jobs to keep in the buffer beyond the running ones.
    fn prefetch(&self, st: &State) -> usize {
        let slots = self.policy.concurrency.max(1);
        let batch = self.engine.workers().fetch_batch;
        match st.avg_run_secs {
            // Until an attempt has ended, as many again as there are slots.
            None => slots.min(batch),
            Some(avg) => {
                let startable = slots as f64 * PREFETCH_HORIZON.as_secs_f64() / avg.max(1e-6);
                (startable.floor() as usize).min(batch)
            }
        }
    }

    /// How many jobs the next step should claim.
    fn want(&self, st: &State) -> usize {
        if st.closing || st.drained || st.attached == 0 {
            return 0;
        }
        let prefetch = self.prefetch(st);
        let held = st.buffer.len() + st.running.len();
        let target = self.policy.concurrency.max(1) + prefetch;
        if held >= target || st.buffer.len() > prefetch / 2 {
            return 0;
        }
        target - held
    }
}

/// A worker's hold on its core: held by the storage instance the apalis worker polls, so
/// it ends when that worker (and its backend) is dropped, whatever clones live on.
pub(crate) struct Attachment(Arc<Core>);

impl Drop for Attachment {
    fn drop(&mut self) {
        let core = &self.0;
        let mut st = core.state();
        st.attached = st.attached.saturating_sub(1);
        drop(st);
        core.wake.notify_one();
    }
}

/// The driver task of one kind: see the module doc.
async fn drive(core: Arc<Core>) {
    let engine = core.engine.clone();
    let settings = engine.workers().clone();
    let wake = engine.wakeup().subscribe(&core.kind);
    engine.start_listener();
    let lease_ms = duration_ms(settings.lease_ttl);
    let mut failures = 0u32;
    let mut next_heartbeat = Instant::now() + settings.heartbeat_interval;
    let mut next_poll = Instant::now();
    let mut round;
    // Acks the database refused even alone: retried on their own backoff.
    let mut stuck_failures = 0u32;
    let mut stuck_until = Instant::now();
    loop {
        if Instant::now() >= next_heartbeat {
            heartbeat(&core, lease_ms).await;
            next_heartbeat = Instant::now() + settings.heartbeat_interval;
        }
        // Plan the next step.
        let (acks, want, stuck_retry) = {
            let mut st = core.state();
            if st.closing || st.attached == 0 {
                let now = engine.clock().now_ms();
                let unclaimed: Vec<Ack> = st
                    .buffer
                    .drain(..)
                    .map(|j| Ack {
                        id: j.id,
                        attempt: j.attempt,
                        started_at: now,
                        end: AttemptEnd::Unclaimed,
                    })
                    .collect();
                st.finished.extend(unclaimed);
            }
            if st.drained && Instant::now() >= next_poll {
                st.drained = false;
            }
            round = core.counters.probe.load(Ordering::SeqCst);
            let want = core.want(&st);
            let mut acks = std::mem::take(&mut st.finished);
            let stuck_retry = !st.stuck.is_empty() && Instant::now() >= stuck_until;
            if stuck_retry {
                acks.append(&mut st.stuck);
            }
            (acks, want, stuck_retry)
        };
        if acks.is_empty() && want == 0 {
            {
                let mut st = core.state();
                if st.closing
                    && st.running.is_empty()
                    && st.finished.is_empty()
                    && st.stuck.is_empty()
                {
                    st.closed = true;
                    if let Some(w) = st.close.take() {
                        w.wake();
                    }
                    drop(st);
                    core.driver_done.store(true, Ordering::SeqCst);
                    return;
                }
            }
            // Nobody holds this core any more (its storage and worker were dropped
            // without closing): hand everything back and stop.
            if Arc::strong_count(&core) == 1 {
                core.close(None);
                continue;
            }
            let mut until = next_heartbeat;
            {
                let st = core.state();
                if st.drained {
                    until = until.min(next_poll);
                }
                if !st.stuck.is_empty() {
                    until = until.min(stuck_until);
                }
            }
            tokio::select! {
                _ = core.wake.notified() => {},
                _ = wake.notified() => core.state().drained = false,
                _ = tokio::time::sleep_until(until.into()) => {},
            }
            continue;
        }

        let began = Instant::now();
        match step(&core, &acks, want, lease_ms).await {
            Ok((ex, unwritten)) => {
                failures = 0;
                if !unwritten.is_empty() {
                    stuck_failures += 1;
                    stuck_until = Instant::now() + DB_RETRY.delay(stuck_failures);
                    core.state().stuck.extend(unwritten);
                } else if stuck_retry {
                    stuck_failures = 0;
                }
                let claimed = ex.claimed.len();
                tracing::trace!(kind = %core.kind, acks = acks.len(), want, claimed, took = ?began.elapsed(), "step");
                core.counters
                    .claimed
                    .fetch_add(claimed as u64, Ordering::Relaxed);
                let worker = {
                    let mut st = core.state();
                    st.buffer.extend(ex.claimed);
                    if want > 0 && claimed < want {
                        st.drained = true;
                        next_poll = Instant::now() + settings.poll_interval;
                        if claimed == 0
                            && st.running.is_empty()
                            && st.buffer.is_empty()
                            && st.finished.is_empty()
                            && st.stuck.is_empty()
                        {
                            core.counters.probed.fetch_max(round, Ordering::SeqCst);
                        }
                    }
                    st.worker.take()
                };
                if let Some(w) = worker {
                    w.wake();
                }
            }
            Err(e) => {
                failures += 1;
                let pause = DB_RETRY.delay(failures);
                tracing::warn!(kind = %core.kind, error = %e, acks = acks.len(), retry_in = ?pause,
                               "database step failed; retrying (leases are kept)");
                {
                    let mut st = core.state();
                    let newer = std::mem::replace(&mut st.finished, acks);
                    st.finished.extend(newer);
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// One step: write `acks` (running discard hooks for final failures, in the same
/// transaction) and claim `want` jobs. A batch the database refuses is split; an ack that
/// fails alone is turned into a failure carrying the database's complaint, and if even that
/// is refused (its discard hook fails), it is handed back as unwritten, to be tried again
/// later while the others go on. Only an error that is not about the batch (the database
/// is away) is returned.
async fn step(
    core: &Arc<Core>,
    acks: &[Ack],
    want: usize,
    lease_ms: Millis,
) -> crate::Result<(Exchange, Vec<Ack>)> {
    match write(core, acks, want, lease_ms).await {
        Ok(ex) => Ok((ex, Vec::new())),
        Err(e) if acks.len() > 1 && is_data_error(&e) => {
            let (a, b) = acks.split_at(acks.len() / 2);
            let (mut ex, mut stuck) = Box::pin(step(core, a, 0, lease_ms)).await?;
            let (more, more_stuck) = Box::pin(step(core, b, want, lease_ms)).await?;
            ex.acked.extend(more.acked);
            ex.lost.extend(more.lost);
            ex.claimed = more.claimed;
            stuck.extend(more_stuck);
            Ok((ex, stuck))
        }
        Err(e) if acks.len() == 1 && is_data_error(&e) => {
            let ack = &acks[0];
            let complaint = crate::job::error_chain(&e);
            if !matches!(ack.end, AttemptEnd::Fail { .. }) {
                let error = format!(
                    "the outcome of this attempt could not be recorded ({complaint}): {}",
                    match &ack.end {
                        AttemptEnd::Retry { error, .. } => error.as_str(),
                        _ => "",
                    }
                );
                tracing::error!(kind = %core.kind, job = ack.id, error = %error, "ack refused by the database; failing the job");
                let fallback = Ack {
                    end: AttemptEnd::Fail { error },
                    ..ack.clone()
                };
                match write(core, std::slice::from_ref(&fallback), want, lease_ms).await {
                    Ok(ex) => return Ok((ex, Vec::new())),
                    Err(e) if is_data_error(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            tracing::error!(kind = %core.kind, job = ack.id, error = %complaint,
                            "the end of this job cannot be recorded (its discard hook fails?); keeping its lease and trying again later");
            let ex = write(core, &[], want, lease_ms).await?;
            Ok((ex, vec![ack.clone()]))
        }
        Err(e) => Err(e),
    }
}

/// A database error about the data of a statement (rather than the database being away):
/// splitting the batch can isolate it.
fn is_data_error(e: &crate::Error) -> bool {
    matches!(e, crate::Error::Database(sqlx::Error::Database(_)))
}

async fn write(
    core: &Arc<Core>,
    acks: &[Ack],
    want: usize,
    lease_ms: Millis,
) -> crate::Result<Exchange> {
    let engine = &core.engine;
    let entry = engine.registry().get(&core.kind);
    let hooked = entry.is_some_and(|e| e.has_discard_hook())
        && acks
            .iter()
            .any(|a| matches!(a.end, AttemptEnd::Fail { .. }));
    let worker = &engine.workers().worker_id;
    let now = engine.clock().now_ms();
    let lease_now = engine.clock().lease_now(engine.backend());
    let ex = if hooked {
        let mut tx = engine.db().begin().await?;
        let ex = storage::exchange(
            &mut tx, worker, &core.kind, acks, want, now, lease_now, lease_ms,
        )
        .await?;
        let entry = entry.expect("hooked implies registered");
        for ack in acks
            .iter()
            .filter(|a| ex.acked.contains(&(a.id, a.attempt)))
        {
            if let AttemptEnd::Fail { error } = &ack.end {
                let args: String = sqlx::query_scalar("SELECT args FROM jobs WHERE id = $1")
                    .bind(ack.id)
                    .fetch_one(&mut *tx)
                    .await?;
                entry
                    .discard(
                        &mut tx,
                        ack.id,
                        &args,
                        DiscardReason::Failed(error.clone()),
                        now,
                        &crate::Actor::job(ack.id),
                    )
                    .await?;
            }
        }
        tx.commit().await?;
        ex
    } else if engine.backend() == crate::Backend::Postgres
        && acks.len() >= PARALLEL_STEP
        && want >= PARALLEL_STEP
    {
        // A large step on Postgres: the acks and the claim touch disjoint rows, so they
        // run side by side on two connections (two server processes, two cores) rather
        // than one after the other in one statement.
        let (acked, claimed) = tokio::join!(
            async {
                let mut conn = engine.db().acquire().await?;
                storage::exchange(
                    &mut conn, worker, &core.kind, acks, 0, now, lease_now, lease_ms,
                )
                .await
            },
            async {
                let mut conn = engine.db().acquire().await?;
                storage::exchange(
                    &mut conn,
                    worker,
                    &core.kind,
                    &[],
                    want,
                    now,
                    lease_now,
                    lease_ms,
                )
                .await
            },
        );
        match (acked, claimed) {
            (Ok(mut ex), Ok(claimed)) => {
                ex.claimed = claimed.claimed;
                ex
            }
            // The claim failed (the database is going away): the acks are written; the
            // next step claims again.
            (Ok(ex), Err(e)) => {
                tracing::debug!(kind = %core.kind, error = %e, "claim failed beside written acks");
                ex
            }
            // The acks failed but the claim committed: keep what it claimed (leased to
            // this worker now), and let the caller deal with the acks.
            (Err(e), Ok(claimed)) => {
                let worker = {
                    let mut st = core.state();
                    st.buffer.extend(claimed.claimed);
                    st.worker.take()
                };
                if let Some(w) = worker {
                    w.wake();
                }
                return Err(e);
            }
            (Err(e), Err(_)) => return Err(e),
        }
    } else {
        let mut conn = engine.db().acquire().await?;
        storage::exchange(
            &mut conn, worker, &core.kind, acks, want, now, lease_now, lease_ms,
        )
        .await?
    };
    for ack in acks
        .iter()
        .filter(|a| ex.acked.contains(&(a.id, a.attempt)))
    {
        let counter = match ack.end {
            AttemptEnd::Succeeded { .. } => &core.counters.succeeded,
            AttemptEnd::Retry { .. } => &core.counters.retried,
            AttemptEnd::Fail { .. } => &core.counters.failed,
            _ => continue,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    if !ex.lost.is_empty() {
        tracing::warn!(kind = %core.kind, jobs = ?ex.lost, "results dropped: these attempts had lost their jobs (lease expired and taken over)");
    }
    Ok(ex)
}

/// Renews the leases of everything this kind holds, stops what lost its lease, and
/// rescues this kind's expired leases (other workers' dead jobs).
async fn heartbeat(core: &Arc<Core>, lease_ms: Millis) {
    let engine = &core.engine;
    let held: Vec<(i64, u32)> = {
        let st = core.state();
        st.buffer
            .iter()
            .map(|j| (j.id, j.attempt))
            .chain(st.running.iter().map(|(id, r)| (*id, r.attempt)))
            .chain(st.finished.iter().map(|a| (a.id, a.attempt)))
            .chain(st.stuck.iter().map(|a| (a.id, a.attempt)))
            .collect()
    };
    let lease_now = engine.clock().lease_now(engine.backend());
    match storage::renew_leases(
        engine.db(),
        engine.backend(),
        &engine.workers().worker_id,
        &held,
        lease_now,
        lease_ms,
    )
    .await
    {
        Ok(renewed) if renewed.len() < held.len() => {
            let lost: Vec<(i64, u32)> = held.into_iter().filter(|p| !renewed.contains(p)).collect();
            tracing::warn!(kind = %core.kind, jobs = ?lost, "leases lost (expired and taken over, or cancelled); stopping those attempts");
            let mut st = core.state();
            st.buffer.retain(|j| !lost.contains(&(j.id, j.attempt)));
            st.finished.retain(|a| !lost.contains(&(a.id, a.attempt)));
            st.stuck.retain(|a| !lost.contains(&(a.id, a.attempt)));
            for (id, attempt) in &lost {
                if let Some(r) = st.running.get(id).filter(|r| r.attempt == *attempt) {
                    r.lost.cancel();
                }
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(kind = %core.kind, error = %e, jobs = held.len(), "lease renewal failed; will retry");
            return;
        }
    }
    if core.state().closing {
        return;
    }
    let own = core.held_ids();
    if let Err(e) = super::rescue::rescue_expired(engine, Some(&core.kind), &own).await {
        tracing::warn!(kind = %core.kind, error = %e, "rescuing expired leases failed; will retry");
    }
}
