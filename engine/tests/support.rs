//! Job kinds used by the engine's own tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use engine::{Job, JobError, JobPolicy, Outcome, Registry, RetryPolicy};
use serde::{Deserialize, Serialize};

/// What a [`Probe`] job does when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Behaviour {
    Succeed,
    Skip,
    FailTransient,
    FailPermanent,
    /// Fails transiently on the first `n` attempts, then succeeds.
    FailTimes(u32),
    Panic,
    Sleep(u64),
    /// Snoozes this many ms on its first attempt, then succeeds.
    SnoozeOnce(u64),
    /// Fails asking to be retried this many ms from now (`JobError::RetryAt`).
    RetryAtIn(i64),
    /// Fails asking to be retried after this many ms (`JobError::RetryAfter`).
    RetryAfter(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub behaviour: Behaviour,
    #[serde(default)]
    pub tag: String,
}

impl Probe {
    pub fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            tag: String::new(),
        }
    }
}

pub const PROBE_POLICY: JobPolicy = JobPolicy {
    retry: RetryPolicy::exponential(Duration::from_secs(10), Duration::from_secs(60), 3),
    timeout: Duration::from_secs(5),
    concurrency: 4,
    priority: 0,
};

impl Job for Probe {
    const KIND: &'static str = "probe";
    const POLICY: JobPolicy = PROBE_POLICY;
}

/// Counts runs of every probe.
#[derive(Clone, Default)]
pub struct Runs(pub Arc<AtomicUsize>);

impl Runs {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn registry(runs: &Runs) -> Registry {
    let mut r = Registry::new();
    let runs = runs.clone();
    r.register::<Probe, _, _>(move |p, ctx| {
        let runs = runs.clone();
        async move {
            runs.0.fetch_add(1, Ordering::SeqCst);
            match p.behaviour {
                Behaviour::Succeed => Ok(Outcome::Succeeded),
                Behaviour::Skip => Ok(Outcome::Skipped {
                    reason: "REDIS_URL not set".into(),
                }),
                Behaviour::FailTransient => Err(JobError::Transient(format!(
                    "boom on attempt {}",
                    ctx.attempt
                ))),
                Behaviour::FailPermanent => Err(JobError::Permanent("bad input".into())),
                Behaviour::FailTimes(n) if ctx.attempt <= n => Err(JobError::Transient(format!(
                    "flaky on attempt {}",
                    ctx.attempt
                ))),
                Behaviour::FailTimes(_) => Ok(Outcome::Succeeded),
                Behaviour::Panic => panic!("handler exploded"),
                Behaviour::Sleep(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(Outcome::Succeeded)
                }
                Behaviour::SnoozeOnce(ms) if runs.get() == 1 => {
                    Ok(Outcome::Snooze(Duration::from_millis(ms)))
                }
                Behaviour::SnoozeOnce(_) => Ok(Outcome::Succeeded),
                Behaviour::RetryAtIn(ms) => {
                    Err(JobError::retry_at(ctx.now_ms() + ms, "try at a given time"))
                }
                Behaviour::RetryAfter(ms) => Err(JobError::retry_after(
                    Duration::from_millis(ms),
                    "rate limited",
                )),
            }
        }
    });
    r
}

/// Polls `check` every 20 ms until it is true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
