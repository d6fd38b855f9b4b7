//! The worker runtime: one fetcher per registered kind, a shared acknowledger, and a
//! heartbeat that renews leases and rescues jobs whose worker died.
//!
//! ```text
//!  fetcher(kind) ── claim ≤ free slots ──▶ spawn attempt ──▶ ack channel ──▶ acker: one tx per batch
//!        ▲   wake (NOTIFY / in-process) or poll        heartbeat: renew leases, rescue expired
//! ```
//!
//! Failures of the database never stop the runtime: each loop logs, backs off (up to 10 s)
//! and goes on; acknowledgements are kept in memory and retried until they commit, and the
//! leases of those jobs keep being renewed meanwhile, so nothing is run twice because of a
//! short outage, and nothing is lost if the process dies (the lease runs out instead).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::clock::duration_ms;
use crate::engine::Engine;
use crate::job::{JobError, Outcome};
use crate::registry::{JobContext, KindEntry};
use crate::storage::{self, Ack, AttemptEnd, ClaimedJob};

/// Exponential backoff for a loop that talks to the database: 100 ms doubling to 10 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

/// Jobs this process holds a lease on, with the attempt it runs: renewed by the heartbeat,
/// released at shutdown. Keyed by job id, but an entry is only removed by the ack of the
/// same attempt, so a late ack of an older attempt cannot drop the lease of a newer one.
#[derive(Default)]
struct InFlight {
    jobs: Mutex<HashMap<i64, (u32, Option<AbortHandle>)>>,
}

impl InFlight {
    fn ids(&self) -> Vec<i64> {
        self.jobs
            .lock()
            .expect("in-flight lock")
            .keys()
            .copied()
            .collect()
    }
    fn contains(&self, id: i64) -> bool {
        self.jobs.lock().expect("in-flight lock").contains_key(&id)
    }
    fn is_empty(&self) -> bool {
        self.jobs.lock().expect("in-flight lock").is_empty()
    }
    fn remove(&self, acked: impl IntoIterator<Item = (i64, u32)>) {
        let mut jobs = self.jobs.lock().expect("in-flight lock");
        for (id, attempt) in acked {
            if jobs.get(&id).is_some_and(|(a, _)| *a == attempt) {
                jobs.remove(&id);
            }
        }
    }
}

/// Runs one claimed job through its handler and decides how the attempt ended: the
/// handler's outcome, a decode error (permanent), a timeout or a panic (transient), with
/// the retry policy deciding between `Retry` and `Fail`.
pub async fn run_attempt(engine: &Engine, job: ClaimedJob) -> Ack {
    let due_for = engine.clock().now_ms() - job.run_at;
    let started = std::time::Instant::now();
    let end = match engine.registry().get(&job.kind) {
        None => AttemptEnd::Fail {
            error: format!("no handler registered for kind {:?}", job.kind),
        },
        Some(entry) => {
            let result = execute(engine, entry, &job).await;
            decide(engine, entry, &job, result)
        }
    };
    crate::metrics::record_attempt(&job.kind, due_for, started.elapsed(), &end);
    Ack {
        id: job.id,
        attempt: job.attempt,
        end,
    }
}

async fn execute(
    engine: &Engine,
    entry: &KindEntry,
    job: &ClaimedJob,
) -> Result<Outcome, JobError> {
    let ctx = JobContext {
        job_id: job.id,
        kind: entry.kind,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        worker_id: Arc::clone(&engine.workers().worker_id),
        engine: engine.clone(),
    };
    let timeout = entry.policy.timeout;
    let attempt = async {
        let handler = entry.start(&job.args, ctx).map_err(|e| {
            JobError::Permanent(format!("args do not decode as {}: {e}", entry.kind))
        })?;
        match tokio::time::timeout(timeout, handler).await {
            Ok(result) => result,
            Err(_) => Err(JobError::Transient(format!("timed out after {timeout:?}"))),
        }
    };
    match AssertUnwindSafe(attempt).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(JobError::Transient(format!(
            "panicked: {}",
            panic_message(&*panic)
        ))),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

fn decide(
    engine: &Engine,
    entry: &KindEntry,
    job: &ClaimedJob,
    result: Result<Outcome, JobError>,
) -> AttemptEnd {
    match result {
        Ok(Outcome::Succeeded) => AttemptEnd::Succeeded { skipped: None },
        Ok(Outcome::Skipped { reason }) => AttemptEnd::Succeeded {
            skipped: Some(reason),
        },
        Err(JobError::Permanent(error)) => AttemptEnd::Fail { error },
        Err(JobError::Transient(error)) if job.attempt >= job.max_attempts => AttemptEnd::Fail {
            error: format!(
                "attempts exhausted ({}/{}): {error}",
                job.attempt, job.max_attempts
            ),
        },
        Err(JobError::Transient(error)) => {
            let run_at = entry.policy.retry.next_run_at(
                job.attempt,
                engine.clock().now_ms(),
                &mut rand::rng(),
            );
            AttemptEnd::Retry { error, run_at }
        }
    }
}

/// The running workers of one process.
pub struct WorkerPool {
    stop: watch::Sender<bool>,
    in_flight: Arc<InFlight>,
    fetchers: Vec<JoinHandle<()>>,
    acker: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    listener: Option<JoinHandle<()>>,
    engine: Engine,
}

impl WorkerPool {
    /// Starts a fetcher for every registered kind, the acknowledger, the heartbeat and, on
    /// Postgres, the LISTEN connection.
    pub fn start(engine: &Engine) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let in_flight = Arc::new(InFlight::default());
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let fetchers = engine
            .registry()
            .kinds()
            .map(|entry| {
                tokio::spawn(fetch_loop(
                    engine.clone(),
                    entry.clone(),
                    Arc::clone(&in_flight),
                    ack_tx.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        drop(ack_tx);
        let acker = tokio::spawn(ack_loop(engine.clone(), Arc::clone(&in_flight), ack_rx));
        let heartbeat = tokio::spawn(heartbeat_loop(
            engine.clone(),
            Arc::clone(&in_flight),
            stop_rx.clone(),
        ));
        let listener = (engine.backend() == crate::Backend::Postgres).then(|| {
            tokio::spawn(crate::wakeup::listen(
                engine.database_url().to_owned(),
                Arc::clone(engine.wakeup()),
                stop_rx,
            ))
        });
        tracing::info!(worker = %engine.workers().worker_id, kinds = engine.registry().kinds().count(), "workers started");
        Self {
            stop,
            in_flight,
            fetchers,
            acker,
            heartbeat,
            listener,
            engine: engine.clone(),
        }
    }

    /// True while every fetcher, the acknowledger and the heartbeat are running.
    pub fn is_alive(&self) -> bool {
        !self.acker.is_finished()
            && !self.heartbeat.is_finished()
            && self.fetchers.iter().all(|f| !f.is_finished())
            && self.listener.as_ref().is_none_or(|l| !l.is_finished())
    }

    /// Stops taking work, lets running attempts finish until `deadline`, then cuts off the
    /// rest and releases them (back to `pending`) for another worker. Never loses a job:
    /// whatever could not be released (database down) is rescued when its lease runs out.
    pub async fn shutdown(self, deadline: Instant) {
        let _ = self.stop.send(true);
        for f in self.fetchers {
            let _ = f.await;
        }
        // Leave a second of the budget for the release.
        let wait_until = deadline
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(deadline);
        while !self.in_flight.is_empty() && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cut_off: Vec<AbortHandle> = {
            let jobs = self.in_flight.jobs.lock().expect("in-flight lock");
            jobs.values()
                .filter_map(|(_, handle)| handle.clone())
                .collect()
        };
        for handle in &cut_off {
            handle.abort();
        }
        // Every attempt task has ended, so every ack sender is gone: the acker records what
        // it has and exits.
        let _ = tokio::time::timeout_at(deadline, self.acker).await;
        let left = self.in_flight.ids();
        if !left.is_empty() {
            let engine = &self.engine;
            let now = engine.clock().now_ms();
            match storage::release(engine.db(), &engine.workers().worker_id, &left, now).await {
                Ok(n) => tracing::warn!(released = n, "released jobs still running at shutdown"),
                Err(e) => {
                    tracing::error!(error = %e, jobs = ?left, "could not release jobs at shutdown; their leases will expire")
                }
            }
        }
        self.heartbeat.abort();
        if let Some(l) = self.listener {
            l.abort();
        }
        tracing::info!("workers stopped");
    }
}

async fn fetch_loop(
    engine: Engine,
    entry: KindEntry,
    in_flight: Arc<InFlight>,
    acks: mpsc::UnboundedSender<Ack>,
    mut stop: watch::Receiver<bool>,
) {
    let settings = engine.workers().clone();
    let wake = engine.wakeup().subscribe(entry.kind);
    let slots = Arc::new(Semaphore::new(entry.policy.concurrency.max(1)));
    let mut backoff = Backoff::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let first = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.expect("semaphore never closes"),
            _ = stop.changed() => return,
        };
        let mut permits = vec![first];
        while permits.len() < settings.fetch_batch {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let now = engine.clock().now_ms();
        let lease_until = now + duration_ms(settings.lease_ttl);
        let asked = permits.len();
        let claimed = storage::claim(
            engine.db(),
            engine.backend(),
            entry.kind,
            &settings.worker_id,
            now,
            lease_until,
            asked,
        )
        .await;
        let jobs = match claimed {
            Ok(jobs) => {
                backoff.reset();
                jobs
            }
            Err(e) => {
                drop(permits);
                let pause = backoff.step();
                tracing::warn!(kind = entry.kind, error = %e, retry_in = ?pause, "claim failed; backing off");
                tokio::select! { _ = tokio::time::sleep(pause) => {}, _ = stop.changed() => {} }
                continue;
            }
        };
        let drained = jobs.len() < asked;
        for (job, permit) in jobs.into_iter().zip(permits.drain(..)) {
            let (id, attempt) = (job.id, job.attempt);
            in_flight
                .jobs
                .lock()
                .expect("in-flight lock")
                .insert(id, (attempt, None));
            let engine = engine.clone();
            let acks = acks.clone();
            let task = tokio::spawn(async move {
                let ack = run_attempt(&engine, job).await;
                drop(permit);
                let _ = acks.send(ack);
            });
            if let Some((a, slot)) = in_flight.jobs.lock().expect("in-flight lock").get_mut(&id)
                && *a == attempt
            {
                *slot = Some(task.abort_handle());
            }
        }
        drop(permits);
        if drained {
            // The queue is empty for now: wait for a wake-up or the next poll.
            tokio::select! {
                _ = wake.notified() => {},
                _ = tokio::time::sleep(settings.poll_interval) => {},
                _ = stop.changed() => {},
            }
        }
    }
}

async fn ack_loop(engine: Engine, in_flight: Arc<InFlight>, mut rx: mpsc::UnboundedReceiver<Ack>) {
    let batch_max = engine.workers().ack_batch.max(1);
    let worker = Arc::clone(&engine.workers().worker_id);
    let mut batch = Vec::with_capacity(batch_max);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let mut backoff = Backoff::new();
        loop {
            match storage::ack(engine.db(), &worker, engine.clock().now_ms(), &batch).await {
                Ok(lost) => {
                    if !lost.is_empty() {
                        tracing::warn!(jobs = ?lost, "results dropped: these jobs' leases had expired and were taken over");
                    }
                    break;
                }
                Err(e) => {
                    let pause = backoff.step();
                    tracing::warn!(error = %e, pending = batch.len(), retry_in = ?pause, "ack failed; retrying (leases are kept)");
                    tokio::time::sleep(pause).await;
                }
            }
        }
        in_flight.remove(batch.drain(..).map(|a| (a.id, a.attempt)));
    }
}

async fn heartbeat_loop(engine: Engine, in_flight: Arc<InFlight>, mut stop: watch::Receiver<bool>) {
    let settings = engine.workers().clone();
    let mut tick = tokio::time::interval(settings.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            changed = stop.changed() => if changed.is_err() {
                return; // the pool was dropped (or cut off at its shutdown deadline)
            },
        }
        // Keep renewing during shutdown: jobs may still be finishing.
        let ids = in_flight.ids();
        let now = engine.clock().now_ms();
        if !ids.is_empty() {
            let until = now + duration_ms(settings.lease_ttl);
            if let Err(e) =
                storage::renew_leases(engine.db(), &settings.worker_id, &ids, until).await
            {
                tracing::warn!(error = %e, jobs = ids.len(), "lease renewal failed; will retry");
            }
        }
        if !*stop.borrow()
            && let Err(e) = rescue_expired_except(&engine, &in_flight).await
        {
            tracing::warn!(error = %e, "rescuing expired leases failed; will retry");
        }
    }
}

/// Finds running jobs whose lease ran out and ends their attempt: retried with backoff, or
/// failed if it was their last attempt. Any worker process does this for every kind.
/// Returns how many it rescued.
pub async fn rescue_expired(engine: &Engine) -> crate::Result<usize> {
    rescue_expired_except(engine, &InFlight::default()).await
}

/// [`rescue_expired`], leaving alone the jobs this process is still running: their lease
/// lapsed only because renewals failed (say, the database was briefly away); another
/// process rescues them if this one really is cut off.
async fn rescue_expired_except(engine: &Engine, own: &InFlight) -> crate::Result<usize> {
    let now = engine.clock().now_ms();
    let mut rescued = 0;
    for lease in storage::expired_leases(engine.db(), now, 100).await? {
        if own.contains(lease.id) {
            continue;
        }
        let retry_at = (lease.attempt < lease.max_attempts).then(|| {
            engine
                .policy_of(&lease.kind)
                .retry
                .next_run_at(lease.attempt, now, &mut rand::rng())
        });
        if storage::rescue(engine.db(), &lease, now, retry_at).await? {
            tracing::warn!(job = lease.id, kind = %lease.kind, attempt = lease.attempt, worker = %lease.locked_by,
                           failed = retry_at.is_none(), "rescued a job whose lease expired");
            rescued += 1;
        }
    }
    Ok(rescued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_ten_seconds_and_resets() {
        let mut b = Backoff::new();
        let steps: Vec<u128> = (0..9).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }
}
