//! Waking idle workers when work arrives, instead of waiting for the next poll.
//!
//! In-process, [`Wakeup::notify`] wakes the workers of a kind ([`crate::JobTx::commit`] calls
//! it after its commit). Across processes on Postgres, the [`Notifier`] sends
//! `NOTIFY veza_jobs, '<kind>'` after those commits — outside them, so that concurrent
//! enqueues do not queue on the lock Postgres takes to commit a NOTIFY, and coalesced: one
//! per kind for all the commits made while the previous one was being sent — and
//! [`listen`] turns it into the same wake-up. Polling stays as the fallback for retries
//! whose backoff ends, scheduled jobs and missed notifications.
//!
//! No NOTIFY is sent for a kind while every worker that could take it is busy. No process
//! sees the others' workers, but the database shows the consequence: the job at the head
//! of the kind's queue (the one the next claim takes) has been due for longer than a poll
//! interval, so an idle worker would have claimed it at its last poll, woken or not. Then a
//! wake-up would find no one free, and the NOTIFY (whose commit takes Postgres' global
//! notify lock) is skipped; the first worker to free up claims from the backlog at once
//! anyway. The check is one probe of the claim's own index (`jobs_fetch`, in claim order)
//! in the NOTIFY's statement; every doubt (a job not yet due at the head) sends it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::db::Db;
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

/// Sends the cross-process wake-ups of one process (Postgres), coalesced (see the module
/// doc). Stops when the engine is dropped.
#[derive(Debug)]
pub struct Notifier {
    pending: Arc<Mutex<BTreeSet<String>>>,
    wake: Arc<Notify>,
    _task: JoinHandle<()>,
}

impl Notifier {
    /// Starts the sender on `db`; it stops when `stop` changes or its sender is dropped.
    /// A kind whose oldest pending job has been due for longer than `busy_after` (the
    /// workers' poll interval) by `clock` gets no NOTIFY (see the module doc).
    pub fn start(
        db: Db,
        clock: Clock,
        busy_after: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> Self {
        let pending: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let (p, w) = (Arc::clone(&pending), Arc::clone(&wake));
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = w.notified() => {},
                    _ = stop.changed() => return,
                }
                let kinds: Vec<String> =
                    std::mem::take(&mut *p.lock().unwrap_or_else(|e| e.into_inner()))
                        .into_iter()
                        .collect();
                if kinds.is_empty() {
                    continue;
                }
                let sent = sqlx::query(
                    "SELECT pg_notify($1, k.kind) FROM json_array_elements_text($2::json) AS k(kind) \
                     WHERE NOT EXISTS (\
                       SELECT 1 FROM (SELECT run_at FROM jobs \
                                      WHERE kind = k.kind AND status IN ('pending', 'retrying') AND scheduled = 0 \
                                      ORDER BY priority, run_at, id LIMIT 1) AS head \
                       WHERE head.run_at < $3)",
                )
                .bind(NOTIFY_CHANNEL)
                .bind(serde_json::Value::from(kinds).to_string())
                .bind(clock.now_ms() - crate::clock::duration_ms(busy_after))
                .execute(&db)
                .await;
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "NOTIFY failed; other processes' workers find the jobs at their next poll");
                }
            }
        });
        Self {
            pending,
            wake,
            _task: task,
        }
    }

    /// Wakes `kind`'s workers in every process soon.
    pub fn notify(&self, kind: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind.to_owned());
        self.wake.notify_one();
    }
}
