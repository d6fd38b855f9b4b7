//! The Redis part of an erasure: every key `user:{id}:*`, found with `SCAN MATCH … COUNT
//! 100` in a cursor loop (never `KEYS`, which blocks the server) and removed page by page
//! with `UNLINK` (freed in the background).
//!
//! A `SCAN` error is retried 3 times, 100 ms·n apart, before the step gives up; a failed
//! `UNLINK` ends the step unfinished, and the job retries it (a second pass finds only
//! what is left). Keys of other users (`user:{other}:*`) and global keys are never matched:
//! the pattern ends with the id and a colon.
//!
//! One node only: on Redis Cluster, `SCAN` covers the node it is sent to.

use std::future::Future;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Key;
use tokio::sync::OnceCell;

/// Keys per `SCAN` page.
pub const SCAN_COUNT: u32 = 100;
/// Retries of a failed `SCAN` page.
pub const SCAN_RETRIES: u32 = 3;
/// Backoff unit between `SCAN` retries (waits are 1×, 2×, 3× this).
pub const SCAN_BACKOFF: Duration = Duration::from_millis(100);

/// The pattern of `user_id`'s keys.
pub fn user_pattern(user_id: i64) -> String {
    format!("user:{user_id}:*")
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Keys unlinked.
    pub keys_deleted: u64,
    /// `SCAN` pages read.
    pub pages: u64,
}

/// A pass that stopped: what it removed before, and why it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepError {
    /// Removed before the error.
    pub swept: Swept,
    /// The error.
    pub error: String,
}

/// A Redis connection made on first use (so `REDIS_URL` being unreachable at start-up only
/// fails the steps that need it, and they retry).
pub struct RedisEraser {
    url: String,
    client: OnceCell<Client>,
}

impl RedisEraser {
    /// An eraser for `url` (not connected yet).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            client: OnceCell::new(),
        }
    }

    /// Checks that `url` is a Redis URL fred accepts.
    pub fn check_url(url: &str) -> Result<(), String> {
        Config::from_url(url).map(|_| ()).map_err(|e| e.to_string())
    }

    async fn client(&self) -> Result<&Client, String> {
        self.client
            .get_or_try_init(|| async {
                let config = Config::from_url(&self.url).map_err(|e| e.to_string())?;
                let client = Builder::from_config(config)
                    .with_connection_config(|c| {
                        c.connection_timeout = Duration::from_secs(5);
                        c.internal_command_timeout = Duration::from_secs(5);
                    })
                    .with_performance_config(|p| {
                        p.default_command_timeout = Duration::from_secs(10);
                    })
                    .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
                    .build()
                    .map_err(|e| e.to_string())?;
                client
                    .init()
                    .await
                    .map_err(|e| format!("connecting to Redis: {e}"))?;
                Ok(client)
            })
            .await
    }

    /// Unlinks every key of `user_id`.
    pub async fn erase_user(&self, user_id: i64) -> Result<Swept, SweepError> {
        let mut swept = Swept::default();
        let client = self
            .client()
            .await
            .map_err(|error| SweepError { swept, error })?;
        let pattern = user_pattern(user_id);
        let mut cursor = "0".to_owned();
        loop {
            let (next, keys): (String, Vec<Key>) = with_retries(SCAN_RETRIES, SCAN_BACKOFF, || {
                client.scan_page(cursor.clone(), pattern.clone(), Some(SCAN_COUNT), None)
            })
            .await
            .map_err(|e| SweepError {
                swept,
                error: format!("SCAN failed {} times: {e}", SCAN_RETRIES + 1),
            })?;
            swept.pages += 1;
            if !keys.is_empty() {
                let n: u64 = client.unlink(keys).await.map_err(|e| SweepError {
                    swept,
                    error: format!("UNLINK failed: {e}"),
                })?;
                swept.keys_deleted += n;
            }
            if next == "0" {
                return Ok(swept);
            }
            cursor = next;
        }
    }
}

/// Runs `op`, retrying it up to `retries` times after an error, waiting `backoff`·n before
/// retry n.
pub async fn with_retries<T, E, F, Fut>(retries: u32, backoff: Duration, mut op: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut n = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if n < retries => {
                n += 1;
                tracing::warn!(error = %e, retry = n, "Redis command failed; retrying");
                tokio::time::sleep(backoff * n).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_failing_command_is_retried_three_times_with_growing_waits() {
        let calls = AtomicU32::new(0);
        let start = std::time::Instant::now();
        let r: Result<u32, String> = with_retries(3, Duration::from_millis(100), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err("connection reset".to_owned())
        })
        .await;
        assert_eq!(r.unwrap_err(), "connection reset");
        assert_eq!(calls.load(Ordering::SeqCst), 4, "1 try + 3 retries");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(100 + 200 + 300),
            "{waited:?}"
        );
        assert!(waited < Duration::from_millis(3000), "{waited:?}");
    }

    #[tokio::test]
    async fn a_transient_error_is_absorbed() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, String> = with_retries(3, Duration::from_millis(10), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("busy".to_owned()),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn the_pattern_ends_with_the_id_and_a_colon() {
        assert_eq!(user_pattern(42), "user:42:*");
    }
}
