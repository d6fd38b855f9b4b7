//! Batching of concurrent calls, shared by the group commit of enqueues
//! ([`crate::group_commit`]) and the group read of job details ([`crate::admin::DetailReads`]).
//!
//! Callers queue requests; a few consumers each take everything queued (up to a bound) when
//! they are free, and serve it with one statement. A lone call is served at once, as it
//! would be alone; under load each batch takes what queued while the previous one ran, so
//! the cost of a statement (a round trip, starting the executor, a commit) is paid once per
//! batch instead of once per call.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};

/// The queue of one kind of batched call, its consumers running on the tokio runtime.
pub(crate) struct Batcher<T> {
    tx: mpsc::UnboundedSender<T>,
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts `consumers` tasks, each serving batches of at most `max` requests with
    /// `serve`, until `serve` breaks or the batcher is dropped (needs a tokio runtime).
    pub(crate) fn start<F, Fut>(consumers: usize, max: usize, serve: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ControlFlow<()>> + Send,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..consumers {
            let (rx, serve) = (Arc::clone(&rx), serve.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&rx, max).await {
                    if serve(batch).await.is_break() {
                        return;
                    }
                }
            });
        }
        Self { tx }
    }

    /// Queues `request`. False when the consumers are gone.
    pub(crate) fn send(&self, request: T) -> bool {
        self.tx.send(request).is_ok()
    }
}

/// Waits for a request, then takes whatever else is queued, up to `max` in all. `None`
/// once every sender is gone.
async fn next_batch<T>(rx: &Mutex<mpsc::UnboundedReceiver<T>>, max: usize) -> Option<Vec<T>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What queued while a consumer was busy is served as one batch, in queue order.
    #[tokio::test]
    async fn what_queues_while_busy_is_one_batch() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let (release, gate) = tokio::sync::watch::channel(false);
        let batcher = Batcher::start(1, 3, move |batch: Vec<u32>| {
            let (seen_tx, mut gate) = (seen_tx.clone(), gate.clone());
            async move {
                seen_tx.send(batch).unwrap();
                let _ = gate.wait_for(|open| *open).await;
                ControlFlow::Continue(())
            }
        });
        assert!(batcher.send(1));
        assert_eq!(seen.recv().await.unwrap(), vec![1]);
        for n in 2..=6 {
            assert!(batcher.send(n));
        }
        release.send(true).unwrap();
        assert_eq!(seen.recv().await.unwrap(), vec![2, 3, 4], "at most `max`");
        assert_eq!(seen.recv().await.unwrap(), vec![5, 6]);
    }

    /// A consumer that breaks stops; with every consumer stopped, sends fail.
    #[tokio::test]
    async fn a_consumer_that_breaks_stops() {
        let batcher = Batcher::start(1, 8, |_: Vec<u32>| async { ControlFlow::Break(()) });
        assert!(batcher.send(1));
        for _ in 0..100 {
            if !batcher.send(2) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("sends still succeed after the only consumer stopped");
    }
}
