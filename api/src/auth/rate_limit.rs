//! Rate limits with GCRA (a token bucket without a timer: a "theoretical arrival time" per
//! bucket): per API key, reads and writes counted separately, and per client address for
//! what comes without a valid key (see [`crate::auth`]). In memory with `governor`, or in
//! Redis with one atomic Lua script so that several API processes share one budget.
//!
//! A budget of `limit` requests per hour is a burst of `limit` refilled one request every
//! `3600 s / limit`. `reset` is when the budget is whole again; `retry_after` (when
//! refused) is when the next request will be accepted.
//!
//! Redis is asked with a deadline ([`REDIS_TIMEOUT`]): when it is down or slow the check
//! fails at once (the caller answers 503) instead of waiting for a reconnection, and the
//! client keeps reconnecting in the background.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Which budget a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// GET and HEAD.
    Read,
    /// Everything else.
    Write,
}

impl Class {
    /// The class of `method`.
    pub fn of(method: &poem::http::Method) -> Self {
        if method == poem::http::Method::GET || method == poem::http::Method::HEAD {
            Self::Read
        } else {
            Self::Write
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// Requests per hour per key, and per client address without a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// GET/HEAD per hour.
    pub reads_per_hour: NonZeroU32,
    /// Other methods per hour.
    pub writes_per_hour: NonZeroU32,
    /// Requests without a valid key per hour per client address.
    pub anonymous_per_hour: NonZeroU32,
}

impl Limits {
    fn of(&self, class: Class) -> NonZeroU32 {
        match class {
            Class::Read => self.reads_per_hour,
            Class::Write => self.writes_per_hour,
        }
    }
}

/// The answer for one request: the `X-RateLimit-*` values, and `Retry-After` when refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Accepted.
    pub allowed: bool,
    /// The hourly budget.
    pub limit: u32,
    /// Requests left now.
    pub remaining: u32,
    /// Until the budget is whole again.
    pub reset: Duration,
    /// Until the next request is accepted (zero when accepted).
    pub retry_after: Duration,
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// How long a Redis check may take before it counts as failed.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// The limiter: in memory (one process) or shared through Redis.
#[derive(Clone)]
pub enum Limiter {
    /// `governor`, per process.
    Memory(Arc<MemoryLimiter>),
    /// Redis, shared by every process using the same Redis and prefix.
    Redis(Arc<RedisLimiter>),
}

impl Limiter {
    /// An in-memory limiter.
    pub fn memory(limits: Limits) -> Self {
        Self::Memory(Arc::new(MemoryLimiter::new(limits)))
    }

    /// Checks and counts one request of `class` by key `key_id`.
    pub async fn check(&self, key_id: i64, class: Class) -> Result<Decision, fred::error::Error> {
        match self {
            Self::Memory(m) => Ok(m.check(key_id, class)),
            Self::Redis(r) => r.check(key_id, class).await,
        }
    }

    /// Checks and counts one request without a valid key from `client` (an address, see
    /// [`crate::auth::client_id`]).
    pub async fn check_anonymous(&self, client: &str) -> Result<Decision, fred::error::Error> {
        match self {
            Self::Memory(m) => Ok(m.check_anonymous(client)),
            Self::Redis(r) => r.check_anonymous(client).await,
        }
    }

    /// `Some(Ok)` when the shared store answers, `Some(Err)` with why not, `None` for the
    /// in-memory limiter (nothing to check): `/ready`'s `redis` part.
    pub async fn health(&self) -> Option<Result<(), fred::error::Error>> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(r) => Some(r.ping().await),
        }
    }
}

/// In-memory GCRA limiters, one per class, and one for clients without a key.
pub struct MemoryLimiter {
    limits: Limits,
    reads: Keyed<i64>,
    writes: Keyed<i64>,
    anonymous: Keyed<String>,
    clock: DefaultClock,
}

fn period(limit: NonZeroU32) -> Duration {
    Duration::from_secs(3600) / limit.get()
}

impl MemoryLimiter {
    /// Limiters for `limits`.
    pub fn new(limits: Limits) -> Self {
        fn keyed<K: std::hash::Hash + Eq + Clone>(limit: NonZeroU32) -> Keyed<K> {
            let quota = Quota::with_period(period(limit))
                .expect("a non-zero period")
                .allow_burst(limit);
            RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
        }
        Self {
            limits,
            reads: keyed(limits.reads_per_hour),
            writes: keyed(limits.writes_per_hour),
            anonymous: keyed(limits.anonymous_per_hour),
            clock: DefaultClock::default(),
        }
    }

    fn check(&self, key_id: i64, class: Class) -> Decision {
        let limiter = match class {
            Class::Read => &self.reads,
            Class::Write => &self.writes,
        };
        self.decide(limiter, &key_id, self.limits.of(class))
    }

    fn check_anonymous(&self, client: &str) -> Decision {
        let decision = self.decide(
            &self.anonymous,
            &client.to_owned(),
            self.limits.anonymous_per_hour,
        );
        // Addresses come and go: forget the ones whose budget is whole again.
        if self.anonymous.len() > 10_000 {
            self.anonymous.retain_recent();
        }
        decision
    }

    fn decide<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &Keyed<K>,
        key: &K,
        limit: NonZeroU32,
    ) -> Decision {
        let period = period(limit);
        match limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit: limit.get(),
                    remaining,
                    reset: period * (limit.get() - remaining),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    limit: limit.get(),
                    remaining: 0,
                    // One request comes back after `wait`; the rest one per period.
                    reset: wait + period * (limit.get() - 1),
                    retry_after: wait,
                }
            }
        }
    }
}

/// GCRA in one atomic script. KEYS[1]: the key's counter; ARGV: period (µs), limit.
/// Times are microseconds (exact in Lua's doubles), from Redis's own clock (`TIME`), so
/// processes with skewed clocks agree. Returns `{allowed, remaining, retry_after_µs,
/// reset_µs}`.
const GCRA_LUA: &str = r"
local period = math.max(1, tonumber(ARGV[1]))
local limit = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + period
local allow_at = new_tat - limit * period
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / period), 0, new_tat - now}
";

/// The shared limiter: counters `{prefix}:{key id}:{read|write}` and
/// `{prefix}:anonymous:{client}` in Redis.
pub struct RedisLimiter {
    limits: Limits,
    client: Client,
    script: Script,
    prefix: String,
}

impl RedisLimiter {
    /// Connects to `url`; counters are named under `prefix` (e.g. `veza:ratelimit`).
    ///
    /// A Redis that does not answer within [`REDIS_TIMEOUT`] is not waited for: the limiter
    /// is returned anyway, its client reconnecting in the background (checks fail until
    /// then, and `/ready` says so). A malformed URL is an error.
    pub async fn connect(
        url: &str,
        prefix: &str,
        limits: Limits,
    ) -> Result<Self, fred::error::Error> {
        let mut config = Config::from_url(url)?;
        // Keep trying when the first connection fails, instead of giving up for good.
        config.fail_fast = false;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = REDIS_TIMEOUT;
                c.internal_command_timeout = REDIS_TIMEOUT;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = REDIS_TIMEOUT)
            // Forever, 100 ms to 2 s apart.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        client.connect();
        if tokio::time::timeout(REDIS_TIMEOUT * 4, client.wait_for_connect())
            .await
            .is_err()
        {
            tracing::warn!(
                "Redis (REDIS_URL) does not answer yet: rate-limited requests are 503 until it does"
            );
        }
        Ok(Self {
            limits,
            client,
            script: Script::from_lua(GCRA_LUA),
            prefix: prefix.to_owned(),
        })
    }

    async fn ping(&self) -> Result<(), fred::error::Error> {
        match tokio::time::timeout(REDIS_TIMEOUT, self.client.ping::<String>(None)).await {
            Ok(answer) => answer.map(drop),
            Err(_) => Err(timed_out()),
        }
    }

    async fn check(&self, key_id: i64, class: Class) -> Result<Decision, fred::error::Error> {
        let counter = format!("{}:{key_id}:{}", self.prefix, class.as_str());
        self.check_counter(counter, self.limits.of(class)).await
    }

    async fn check_anonymous(&self, client: &str) -> Result<Decision, fred::error::Error> {
        let counter = format!("{}:anonymous:{client}", self.prefix);
        self.check_counter(counter, self.limits.anonymous_per_hour)
            .await
    }

    async fn check_counter(
        &self,
        counter: String,
        limit: NonZeroU32,
    ) -> Result<Decision, fred::error::Error> {
        let period_us = i64::try_from(period(limit).as_micros()).unwrap_or(i64::MAX);
        let call = self.script.evalsha_with_reload(
            &self.client,
            counter,
            vec![period_us, i64::from(limit.get())],
        );
        let answer: Vec<i64> = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(answer) => answer?,
            Err(_) => return Err(timed_out()),
        };
        let [allowed, remaining, retry_after_us, reset_us] = answer[..] else {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Parse,
                "unexpected rate limit script answer",
            ));
        };
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(Decision {
            allowed: allowed == 1,
            limit: limit.get(),
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset: us(reset_us),
            retry_after: us(retry_after_us),
        })
    }
}

fn timed_out() -> fred::error::Error {
    fred::error::Error::new(
        fred::error::ErrorKind::Timeout,
        format!("Redis did not answer within {REDIS_TIMEOUT:?}"),
    )
}

impl From<RedisLimiter> for Limiter {
    fn from(r: RedisLimiter) -> Self {
        Self::Redis(Arc::new(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_budget_counts_down_and_says_when_it_is_whole_again() {
        let limits = Limits {
            reads_per_hour: NonZeroU32::new(4).expect("4"),
            writes_per_hour: NonZeroU32::new(1).expect("1"),
            anonymous_per_hour: NonZeroU32::new(2).expect("2"),
        };
        let limiter = MemoryLimiter::new(limits);
        for remaining in (0..4).rev() {
            let d = limiter.check(7, Class::Read);
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
            // Each request spent comes back after 900 s.
            assert_eq!(d.reset, Duration::from_secs(900) * (4 - remaining));
        }
        let refused = limiter.check(7, Class::Read);
        assert!(!refused.allowed);
        assert!(refused.retry_after > Duration::from_secs(899));
        assert!(refused.retry_after <= Duration::from_secs(900));
        // Writes and other keys are counted apart.
        assert!(limiter.check(7, Class::Write).allowed);
        assert!(!limiter.check(7, Class::Write).allowed);
        assert!(limiter.check(8, Class::Read).allowed);
        // Clients without a key have their own budget, per address.
        assert!(limiter.check_anonymous("192.0.2.1").allowed);
        assert!(limiter.check_anonymous("192.0.2.1").allowed);
        assert!(!limiter.check_anonymous("192.0.2.1").allowed);
        assert!(limiter.check_anonymous("192.0.2.2").allowed);
    }
}
