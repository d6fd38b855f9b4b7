//! Waking idle fetchers when work arrives, instead of waiting for the next poll.
//!
//! In-process, [`Wakeup::notify`] wakes the fetcher of a kind (enqueue calls it after its own
//! commit). Across processes on Postgres, [`listen`] turns `NOTIFY veza_jobs, '<kind>'`
//! (sent at commit by every enqueue of a due job) into the same wake-up. Polling stays as
//! the fallback for retries whose backoff ends, scheduled jobs and missed notifications.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};

use crate::storage::NOTIFY_CHANNEL;

/// One [`Notify`] per job kind.
#[derive(Debug, Default)]
pub struct Wakeup {
    kinds: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wakeup {
    /// The notifier of `kind` (created on first use).
    pub fn subscribe(&self, kind: &str) -> Arc<Notify> {
        let mut kinds = self.kinds.lock().expect("wakeup lock poisoned");
        Arc::clone(kinds.entry(kind.to_owned()).or_default())
    }

    /// Wakes the fetcher of `kind`; if it is busy, its next wait returns at once.
    pub fn notify(&self, kind: &str) {
        self.subscribe(kind).notify_one();
    }

    /// Wakes every fetcher (after a lost listener connection, notifications may be missing).
    pub fn notify_all(&self) {
        let kinds = self.kinds.lock().expect("wakeup lock poisoned");
        for n in kinds.values() {
            n.notify_one();
        }
    }
}

/// Listens on Postgres until `stop` turns true, reconnecting with backoff after errors.
pub async fn listen(url: String, wakeup: Arc<Wakeup>, mut stop: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(100);
    while !*stop.borrow() {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; retrying (polling covers the gap)");
                tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = stop.changed() => return }
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = stop.changed() => return }
            delay = (delay * 2).min(Duration::from_secs(10));
            continue;
        }
        delay = Duration::from_millis(100);
        // Anything sent while we were not listening is covered by one round of fetches.
        wakeup.notify_all();
        loop {
            tokio::select! {
                msg = listener.try_recv() => match msg {
                    Ok(Some(n)) => wakeup.notify(n.payload()),
                    Ok(None) => {
                        tracing::warn!("LISTEN connection lost; reconnecting");
                        wakeup.notify_all();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN failed; reconnecting");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}
