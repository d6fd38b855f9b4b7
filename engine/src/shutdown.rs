//! Graceful shutdown: every long-running service (HTTP listener, workers, scheduler)
//! registers a stop function; on SIGTERM/SIGINT they all run in parallel, each with its own
//! deadline (default 10 s) inside an overall one (default 30 s). Once shutdown has begun,
//! new registrations are refused: a service started that late would never be stopped.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use tokio::time::Instant;

/// A service's stop function: stop taking work, finish or hand back what is in flight, all
/// before the deadline it is given.
pub type StopFn = Box<dyn FnOnce(Instant) -> BoxFuture<'static, ()> + Send>;

/// Refused: shutdown has already begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shutdown has begun; no new services can be registered")]
pub struct ShutdownStarted;

/// How each service stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Services that stopped before their deadline.
    pub stopped: Vec<String>,
    /// Services cut off at their deadline.
    pub timed_out: Vec<String>,
}

/// Runs the registered services' stop functions once.
#[derive(Default)]
pub struct ShutdownManager {
    services: Mutex<Option<Vec<(String, StopFn)>>>,
}

impl ShutdownManager {
    /// An empty manager, accepting registrations.
    pub fn new() -> Self {
        Self {
            services: Mutex::new(Some(Vec::new())),
        }
    }

    /// Registers a service's stop function.
    pub fn register(&self, name: impl Into<String>, stop: StopFn) -> Result<(), ShutdownStarted> {
        let mut services = self.services.lock().expect("shutdown lock");
        match services.as_mut() {
            Some(list) => {
                list.push((name.into(), stop));
                Ok(())
            }
            None => Err(ShutdownStarted),
        }
    }

    /// True once [`ShutdownManager::shutdown`] has been called.
    pub fn has_begun(&self) -> bool {
        self.services.lock().expect("shutdown lock").is_none()
    }

    /// Stops every service in parallel: each gets `per_service`, all together `overall`.
    /// A second call finds nothing to stop.
    pub async fn shutdown(&self, per_service: Duration, overall: Duration) -> ShutdownReport {
        let services = self
            .services
            .lock()
            .expect("shutdown lock")
            .take()
            .unwrap_or_default();
        let start = Instant::now();
        let overall_deadline = start + overall;
        let deadline = (start + per_service).min(overall_deadline);
        let names: Vec<String> = services.iter().map(|(n, _)| n.clone()).collect();
        let runs = services.into_iter().map(|(name, stop)| async move {
            let finished = tokio::time::timeout_at(deadline, stop(deadline))
                .await
                .is_ok();
            if !finished {
                tracing::warn!(service = %name, "service did not stop in time");
            }
            (name, finished)
        });
        let mut report = ShutdownReport {
            stopped: Vec::new(),
            timed_out: Vec::new(),
        };
        match tokio::time::timeout_at(overall_deadline, join_all(runs)).await {
            Ok(results) => {
                for (name, finished) in results {
                    if finished {
                        report.stopped.push(name)
                    } else {
                        report.timed_out.push(name)
                    }
                }
            }
            Err(_) => report.timed_out = names,
        }
        tracing::info!(stopped = ?report.stopped, timed_out = ?report.timed_out, elapsed = ?start.elapsed(), "shutdown complete");
        report
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn sleeper(d: Duration, done: Arc<AtomicUsize>) -> StopFn {
        Box::new(move |_deadline| {
            Box::pin(async move {
                tokio::time::sleep(d).await;
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn services_stop_in_parallel_and_slow_ones_are_cut_off() {
        let m = ShutdownManager::new();
        let done = Arc::new(AtomicUsize::new(0));
        m.register("a", sleeper(Duration::from_secs(8), done.clone()))
            .unwrap();
        m.register("b", sleeper(Duration::from_secs(8), done.clone()))
            .unwrap();
        m.register("slow", sleeper(Duration::from_secs(60), done.clone()))
            .unwrap();
        let start = Instant::now();
        let report = m
            .shutdown(Duration::from_secs(10), Duration::from_secs(30))
            .await;
        // In parallel: 8 s for both fast ones, not 16 s; the slow one is cut at 10 s.
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(report.stopped, ["a", "b"]);
        assert_eq!(report.timed_out, ["slow"]);
        assert_eq!(done.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn registrations_are_refused_once_shutdown_began() {
        let m = ShutdownManager::new();
        m.shutdown(Duration::from_secs(1), Duration::from_secs(1))
            .await;
        assert!(m.has_begun());
        let late = m.register("late", Box::new(|_| Box::pin(async {})));
        assert_eq!(late, Err(ShutdownStarted));
    }
}
