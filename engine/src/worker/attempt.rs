//! The backend's middleware: apalis puts it outside every layer a user adds (just inside
//! its `Data` layer), so it sees each attempt whole and decides how it ended, whatever the
//! handler or the layers inside did:
//!
//! - the handler runs under the kind's timeout, its panics caught: a panic, a timeout
//!   or an error all end as a failed attempt under the job's retry policy; none leaves a
//!   row `running` (apalis itself keeps a panicked task `Running`);
//! - an [`Outcome`] or [`JobError`] the handler returns is read as such (snooze, retry at
//!   a time, permanent); apalis's `RetryAfterError` waits its duration; `AbortError` is
//!   permanent; any other error is transient;
//! - when the heartbeat finds the attempt's lease gone, the handler is stopped and nothing
//!   is recorded (another worker owns the job now);
//! - at the pool's cut-off time the handler is stopped and the attempt handed back.
//!
//! The decision goes to the kind's core, whose driver writes it (batched) to the database.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use futures::FutureExt;
use futures::future::BoxFuture;
use tower_layer::Layer;
use tower_service::Service;

use super::driver::Core;
use crate::context::JobContext;
use crate::job::{JobError, Outcome};
use crate::registry::{classify_error, classify_response};
use crate::storage::AttemptEnd;

/// The attempt layer of one kind (see the module doc).
#[derive(Clone)]
pub struct AttemptLayer {
    pub(crate) core: Arc<Core>,
}

impl<S> Layer<S> for AttemptLayer {
    type Service = AttemptService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptService {
            inner,
            core: Arc::clone(&self.core),
        }
    }
}

/// The attempt layer's service.
#[derive(Clone)]
pub struct AttemptService<S> {
    inner: S,
    core: Arc<Core>,
}

/// A stopped attempt, as apalis sees it.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error("lease lost: another worker owns this job now")]
    LeaseLost,
    #[error("released at shutdown before it finished")]
    Released,
    #[error("timed out after {0:?}")]
    TimedOut(std::time::Duration),
    #[error("panicked: {0}")]
    Panicked(String),
}

impl<S, Args> Service<Task<Args>> for AttemptService<S>
where
    S: Service<Task<Args>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError> + Send + 'static,
    S::Response: Send + 'static,
    Args: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let core = Arc::clone(&self.core);
        let ctx = task.data().get::<JobContext>().cloned();
        let timeout = core.policy.timeout;
        // The handler is polled here, on the worker's task, as apalis polls it (the kinds
        // with CPU-bound work hand it to the blocking pool): no task spawned per attempt.
        let inner =
            AssertUnwindSafe(tokio::time::timeout(timeout, self.inner.call(task))).catch_unwind();
        let Some(ctx) = ctx else {
            // Not a task of this backend (never happens: the backend builds every task).
            return Box::pin(async move {
                match inner.await {
                    Ok(Ok(r)) => r.map_err(Into::into),
                    _ => Err("task without a job context".into()),
                }
            });
        };
        let mut guard = AttemptGuard {
            core,
            job_id: ctx.job_id,
            attempt: ctx.attempt,
            started: Instant::now(),
            done: false,
        };
        Box::pin(async move {
            let lost = guard.lost_token();
            let cutoff = guard.core.cutoff.clone();
            let result = tokio::select! {
                biased;
                ran = inner => match ran {
                    Ok(Ok(result)) => result.map_err(Into::into),
                    Ok(Err(_elapsed)) => Err(Box::new(Stopped::TimedOut(timeout)) as BoxDynError),
                    Err(panic) => Err(Box::new(Stopped::Panicked(panic_message(panic))) as BoxDynError),
                },
                _ = lost.cancelled() => {
                    guard.finish(None);
                    return Err(Box::new(Stopped::LeaseLost) as BoxDynError);
                }
                _ = cutoff.cancelled() => {
                    let end = guard.core.release_end(guard.job_id, guard.attempt);
                    guard.finish(Some(end));
                    return Err(Box::new(Stopped::Released) as BoxDynError);
                }
            };
            let verdict = match &result {
                Ok(response) => Ok(classify_response(response)),
                Err(e) => Err(classify_error(e)),
            };
            let end = guard.decide(verdict);
            guard.finish(end);
            result
        })
    }
}

/// Ends the attempt exactly once: normally through [`AttemptGuard::finish`]; if the
/// attempt's future is dropped first (its worker was dropped without shutting down, which
/// drops the handler too), the attempt is handed back.
struct AttemptGuard {
    core: Arc<Core>,
    job_id: i64,
    attempt: u32,
    started: Instant,
    done: bool,
}

impl AttemptGuard {
    fn lost_token(&self) -> tokio_util::sync::CancellationToken {
        self.core
            .lost_token(self.job_id, self.attempt)
            .unwrap_or_default()
    }

    /// The attempt's end from the handler's verdict and the job's policy (`None`: the
    /// lease is lost, nothing to record).
    fn decide(&self, verdict: Result<Outcome, JobError>) -> Option<AttemptEnd> {
        let now = self.core.engine.clock().now_ms();
        let (attempt, max_attempts, retry) = self.core.running(self.job_id, self.attempt)?;
        let (error, run_at) = match verdict {
            Ok(Outcome::Succeeded) => return Some(AttemptEnd::Succeeded { skipped: None }),
            Ok(Outcome::Skipped { reason }) => {
                return Some(AttemptEnd::Succeeded {
                    skipped: Some(reason),
                });
            }
            Ok(Outcome::Snooze(after)) => {
                return Some(AttemptEnd::Snoozed {
                    run_at: now.saturating_add(crate::clock::duration_ms(after)),
                    waiting_for: None,
                });
            }
            Err(JobError::Waiting { until, reason }) => {
                return Some(AttemptEnd::Snoozed {
                    run_at: until.max(now),
                    waiting_for: Some(reason),
                });
            }
            Err(JobError::LeaseLost { .. }) => return None,
            Err(JobError::Permanent(error)) => return Some(AttemptEnd::Fail { error }),
            Err(JobError::Transient(error)) => {
                let at = retry.next_run_at(attempt, now, &mut rand::rng());
                (error, at)
            }
            Err(JobError::RetryAt { at, error }) => (error, at.max(now)),
            Err(JobError::RetryAfter { after, error }) => {
                (error, now.saturating_add(crate::clock::duration_ms(after)))
            }
        };
        Some(if attempt >= max_attempts {
            AttemptEnd::Fail {
                error: format!("attempts exhausted ({attempt}/{max_attempts}): {error}"),
            }
        } else {
            AttemptEnd::Retry { error, run_at }
        })
    }

    fn finish(&mut self, end: Option<AttemptEnd>) {
        self.done = true;
        self.core
            .finish(self.job_id, self.attempt, end, self.started.elapsed());
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if !self.done {
            let end = self.core.release_end(self.job_id, self.attempt);
            self.finish(Some(end));
        }
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}
