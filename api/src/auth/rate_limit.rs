//! Per-key rate limits, reads and writes counted separately, with GCRA (a token bucket
//! without a timer: a "theoretical arrival time" per key): in memory with `governor`, or in
//! Redis with one atomic Lua script so that several API processes share one budget.
//!
//! A budget of `limit` requests per hour is a burst of `limit` refilled one request every
//! `3600 s / limit`. `reset` is when the budget is whole again; `retry_after` (when
//! refused) is when the next request will be accepted.

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

/// Requests per hour per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// GET/HEAD per hour.
    pub reads_per_hour: NonZeroU32,
    /// Other methods per hour.
    pub writes_per_hour: NonZeroU32,
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

type Keyed = RateLimiter<
    (i64, Class),
    DefaultKeyedStateStore<(i64, Class)>,
    DefaultClock,
    StateInformationMiddleware,
>;

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
}

/// In-memory GCRA limiters, one per class.
pub struct MemoryLimiter {
    limits: Limits,
    reads: Keyed,
    writes: Keyed,
    clock: DefaultClock,
}

fn period(limit: NonZeroU32) -> Duration {
    Duration::from_secs(3600) / limit.get()
}

impl MemoryLimiter {
    /// Limiters for `limits`.
    pub fn new(limits: Limits) -> Self {
        let keyed = |limit: NonZeroU32| {
            let quota = Quota::with_period(period(limit))
                .expect("a non-zero period")
                .allow_burst(limit);
            RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
        };
        Self {
            limits,
            reads: keyed(limits.reads_per_hour),
            writes: keyed(limits.writes_per_hour),
            clock: DefaultClock::default(),
        }
    }

    fn check(&self, key_id: i64, class: Class) -> Decision {
        let limiter = match class {
            Class::Read => &self.reads,
            Class::Write => &self.writes,
        };
        let limit = self.limits.of(class);
        let period = period(limit);
        match limiter.check_key(&(key_id, class)) {
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

/// The shared limiter: counters `{prefix}:{key id}:{read|write}` in Redis.
pub struct RedisLimiter {
    limits: Limits,
    client: Client,
    script: Script,
    prefix: String,
}

impl RedisLimiter {
    /// Connects to `url`; counters are named under `prefix` (e.g. `veza:ratelimit`).
    pub async fn connect(
        url: &str,
        prefix: &str,
        limits: Limits,
    ) -> Result<Self, fred::error::Error> {
        let client = Builder::from_config(Config::from_url(url)?).build()?;
        client.init().await?;
        Ok(Self {
            limits,
            client,
            script: Script::from_lua(GCRA_LUA),
            prefix: prefix.to_owned(),
        })
    }

    async fn check(&self, key_id: i64, class: Class) -> Result<Decision, fred::error::Error> {
        let limit = self.limits.of(class);
        let period_us = i64::try_from(period(limit).as_micros()).unwrap_or(i64::MAX);
        let counter = format!("{}:{key_id}:{}", self.prefix, class.as_str());
        let answer: Vec<i64> = self
            .script
            .evalsha_with_reload(
                &self.client,
                counter,
                vec![period_us, i64::from(limit.get())],
            )
            .await?;
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
    }
}
