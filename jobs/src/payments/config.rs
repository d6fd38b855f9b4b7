//! The payments jobs' variables: the Stripe client, the payout and reversal workers with
//! their retry budgets, the safety-net schedules, the drift detector and how long received
//! webhook events are kept.

use std::num::NonZeroU32;
use std::time::Duration;

use engine::config::{Env, VarSpec};
use engine::scheduler::Every;
use engine::{Millis, RetryPolicy};

use crate::transfers::stripe::{StripeClient, StripeSettings};

engine::config_var!(
    STRIPE_SECRET_KEY,
    "STRIPE_SECRET_KEY",
    "",
    "Stripe secret key (sk_… or rk_…). Unset: transfer_seller, reverse_transfer and reconcile_transfers are not registered in this process and their jobs wait (serve and worker warn once at start, /ready lists it under disabled, schedules list says why their schedules are missing)."
);
engine::config_var!(
    STRIPE_WEBHOOK_SECRET,
    "STRIPE_WEBHOOK_SECRET",
    "",
    "Signing secret(s) of the Stripe webhook endpoint (whsec_…), comma-separated during a rotation (a signature by any of them is accepted). Unset: POST /v1/webhooks/stripe refuses every event with 503, so Stripe keeps them and delivers again once it is set."
);
engine::config_var!(
    STRIPE_API_BASE,
    "STRIPE_API_BASE",
    "https://api.stripe.com/",
    "Base URL of the Stripe API; point it at a local fake in tests (a trailing / is added if missing)."
);
engine::config_var!(
    STRIPE_TIMEOUT,
    "STRIPE_TIMEOUT",
    "20s",
    "Longest a single Stripe request may take; a timeout counts as a transient error."
);
engine::config_var!(
    STRIPE_MAX_RPS,
    "STRIPE_MAX_RPS",
    "25",
    "Stripe requests per second this process sends at most, all payments jobs together."
);
engine::config_var!(
    TRANSFER_RETRY_ENABLED,
    "TRANSFER_RETRY_ENABLED",
    "true",
    "true or false: whether this process runs the payout worker (transfer_seller) and its safety net; when false, payouts wait for another process."
);
engine::config_var!(
    TRANSFER_RETRY_MAX_RETRIES,
    "TRANSFER_RETRY_MAX_RETRIES",
    "10",
    "Payout retries after the first attempt before a seller transfer becomes permanently_failed; also the transfer_seller job's attempts (this + 1)."
);
engine::config_var!(
    TRANSFER_RETRY_BACKOFF_BASE,
    "TRANSFER_RETRY_BACKOFF_BASE",
    "30s",
    "Delay after the first failed payout; it doubles after each further failure (±10 % jitter). The engine retries the job at the very time it records on the row (next_retry_at)."
);
engine::config_var!(
    TRANSFER_RETRY_BACKOFF_MAX,
    "TRANSFER_RETRY_BACKOFF_MAX",
    "1h",
    "Longest delay between two payout attempts (the job's backoff cap)."
);
engine::config_var!(
    TRANSFER_CHECK_INTERVAL,
    "TRANSFER_CHECK_INTERVAL",
    "1m",
    "How often the transfer_seller_check schedule re-enqueues the payout job of pending or failed transfers that have none."
);
engine::config_var!(
    REVERSAL_WORKER_ENABLED,
    "REVERSAL_WORKER_ENABLED",
    "true",
    "true or false: whether this process runs the reversal worker (reverse_transfer) and its safety net; when false, reversals wait for another process."
);
engine::config_var!(
    REVERSAL_MAX_RETRIES,
    "REVERSAL_MAX_RETRIES",
    "10",
    "Reversal retries after the first attempt before a transfer in reversal_pending becomes permanently_failed; also the reverse_transfer job's attempts (this + 1)."
);
engine::config_var!(
    REVERSAL_BACKOFF_BASE,
    "REVERSAL_BACKOFF_BASE",
    "30s",
    "Delay after the first failed reversal; it doubles after each further failure (±10 % jitter). The engine retries the job at the very time it records on the row (next_retry_at)."
);
engine::config_var!(
    REVERSAL_BACKOFF_MAX,
    "REVERSAL_BACKOFF_MAX",
    "1h",
    "Longest delay between two reversal attempts (the job's backoff cap)."
);
engine::config_var!(
    REVERSAL_CHECK_INTERVAL,
    "REVERSAL_CHECK_INTERVAL",
    "1m",
    "How often the reverse_transfer_check schedule re-enqueues the reversal job of reversal_pending transfers that have none."
);
engine::config_var!(
    RECONCILE_TRANSFERS_SCHEDULE,
    "RECONCILE_TRANSFERS_SCHEDULE",
    "0 30 3 * * *",
    "When reconcile_transfers compares completed and reversed transfers with Stripe: a cron expression with seconds (UTC) or an interval such as 24h."
);
engine::config_var!(
    RECONCILE_TRANSFERS_LOOKBACK,
    "RECONCILE_TRANSFERS_LOOKBACK",
    "30d",
    "reconcile_transfers checks the transfers changed within this long."
);

engine::config_var!(
    WEBHOOK_EVENT_RETENTION,
    "WEBHOOK_EVENT_RETENTION",
    "90d",
    "How long received Stripe webhook events are kept (at least 3d: Stripe redelivers for up to 3 days and a kept event is how a redelivery is recognised); the hourly prune_webhook_events job then deletes them, or erases the payload of those a recorded refund points at."
);

/// The shortest `WEBHOOK_EVENT_RETENTION`: Stripe redelivers an event for up to 3 days, and
/// its stored row is how a redelivery is recognised and ignored.
pub const MIN_WEBHOOK_EVENT_RETENTION: Duration = Duration::from_secs(3 * 24 * 3600);

/// The payments variables, in `.env.template` order.
pub const VARS: &[VarSpec] = &[
    STRIPE_SECRET_KEY,
    STRIPE_WEBHOOK_SECRET,
    STRIPE_API_BASE,
    STRIPE_TIMEOUT,
    STRIPE_MAX_RPS,
    TRANSFER_RETRY_ENABLED,
    TRANSFER_RETRY_MAX_RETRIES,
    TRANSFER_RETRY_BACKOFF_BASE,
    TRANSFER_RETRY_BACKOFF_MAX,
    TRANSFER_CHECK_INTERVAL,
    REVERSAL_WORKER_ENABLED,
    REVERSAL_MAX_RETRIES,
    REVERSAL_BACKOFF_BASE,
    REVERSAL_BACKOFF_MAX,
    REVERSAL_CHECK_INTERVAL,
    RECONCILE_TRANSFERS_SCHEDULE,
    RECONCILE_TRANSFERS_LOOKBACK,
    WEBHOOK_EVENT_RETENTION,
];

/// One worker's switch and retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// Whether this process runs the worker.
    pub enabled: bool,
    /// Retries after the first attempt; the row is given up after that many failures more.
    pub max_retries: u32,
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl RetrySettings {
    /// The retry policy of the worker's jobs (`max_retries` retries after the first attempt,
    /// `base` doubling up to `max`), registered for the kind so that the engine's timer is
    /// the variables' timer.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy::exponential(self.base, self.max, self.max_retries.saturating_add(1))
    }

    /// When the next attempt is due, after a failure at `now` that followed `retry_count`
    /// earlier ones: the engine's one backoff formula ([`RetryPolicy::next_run_at`],
    /// `min(max, base·2^retry_count)` ± 10 %). The handler records it on the row
    /// (`next_retry_at`) and returns it as [`engine::JobError::RetryAt`], so the row and
    /// the job say the same time.
    pub fn next_retry_at(&self, now: Millis, retry_count: i64) -> Millis {
        let attempt = u32::try_from(retry_count.clamp(0, 1_000) + 1).unwrap_or(u32::MAX);
        self.policy().next_run_at(attempt, now, &mut rand::rng())
    }

    /// True when a row with `failures` failed attempts (this one included) has used up its
    /// budget.
    pub fn exhausted(&self, failures: i64) -> bool {
        failures > i64::from(self.max_retries)
    }
}

/// Why the Stripe jobs do not run without `STRIPE_SECRET_KEY` (logged once when `serve` or
/// `worker` starts, shown by `/ready` and `schedules list`).
pub const NO_STRIPE: &str = "STRIPE_SECRET_KEY is unset: transfer_seller, reverse_transfer and \
    reconcile_transfers are not registered in this process; their jobs wait for a process that has the key";
/// Why no payout runs with `TRANSFER_RETRY_ENABLED=false`.
pub const NO_PAYOUTS: &str =
    "TRANSFER_RETRY_ENABLED=false: this process runs no payouts; they wait for another process";
/// Why no reversal runs with `REVERSAL_WORKER_ENABLED=false`.
pub const NO_REVERSALS: &str =
    "REVERSAL_WORKER_ENABLED=false: this process runs no reversals; they wait for another process";
/// Why the webhook refuses events without `STRIPE_WEBHOOK_SECRET`.
pub const NO_WEBHOOK_SECRET: &str =
    "STRIPE_WEBHOOK_SECRET is unset: POST /v1/webhooks/stripe refuses every event with 503";

/// Everything the payments jobs are configured with.
#[derive(Debug, Clone)]
pub struct PaymentsConfig {
    /// The Stripe client's settings; `None` when `STRIPE_SECRET_KEY` is unset.
    pub stripe: Option<StripeSettings>,
    /// `STRIPE_WEBHOOK_SECRET`: every secret whose signature the webhook accepts (empty:
    /// the webhook refuses every event).
    pub webhook_secrets: Vec<String>,
    /// The payout worker (`TRANSFER_RETRY_*`).
    pub payout: RetrySettings,
    /// The reversal worker (`REVERSAL_*`).
    pub reversal: RetrySettings,
    /// `TRANSFER_CHECK_INTERVAL`.
    pub payout_check_interval: Duration,
    /// `REVERSAL_CHECK_INTERVAL`.
    pub reversal_check_interval: Duration,
    /// `RECONCILE_TRANSFERS_SCHEDULE`.
    pub reconcile_every: Every,
    /// `RECONCILE_TRANSFERS_LOOKBACK`.
    pub reconcile_lookback: Duration,
    /// `WEBHOOK_EVENT_RETENTION`: how long stored Stripe events are kept.
    pub webhook_event_retention: Duration,
}

impl PaymentsConfig {
    /// Reads the payments variables (problems are collected in `env`).
    pub fn read(env: &mut Env) -> Self {
        let stripe = env.optional(&STRIPE_SECRET_KEY).map(|secret_key| {
            let settings = StripeSettings {
                secret_key: secret_key.trim().to_owned(),
                api_base: env.string(&STRIPE_API_BASE),
                timeout: env.duration(&STRIPE_TIMEOUT),
                max_rps: NonZeroU32::new(env.positive::<u32>(&STRIPE_MAX_RPS))
                    .unwrap_or(NonZeroU32::MIN),
            };
            let base = settings.api_base.trim();
            if !(base.starts_with("https://") || base.starts_with("http://"))
                || StripeClient::new(&settings).is_err()
            {
                env.problem(
                    &STRIPE_API_BASE,
                    "an http(s) URL such as https://api.stripe.com/",
                );
            }
            settings
        });
        let webhook_secrets: Vec<String> = env
            .optional(&STRIPE_WEBHOOK_SECRET)
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if webhook_secrets.iter().any(|s| !s.starts_with("whsec_")) {
            env.problem(
                &STRIPE_WEBHOOK_SECRET,
                "unset, or whsec_… secrets separated by commas",
            );
        }
        let payout = retry_settings(
            env,
            &TRANSFER_RETRY_ENABLED,
            &TRANSFER_RETRY_MAX_RETRIES,
            &TRANSFER_RETRY_BACKOFF_BASE,
            &TRANSFER_RETRY_BACKOFF_MAX,
        );
        let reversal = retry_settings(
            env,
            &REVERSAL_WORKER_ENABLED,
            &REVERSAL_MAX_RETRIES,
            &REVERSAL_BACKOFF_BASE,
            &REVERSAL_BACKOFF_MAX,
        );
        let raw = env.string(&RECONCILE_TRANSFERS_SCHEDULE);
        let reconcile_every = Every::parse(&raw).unwrap_or_else(|_| {
            env.problem(
                &RECONCILE_TRANSFERS_SCHEDULE,
                "a cron expression with seconds such as \"0 30 3 * * *\" or an interval such as 24h",
            );
            Every::Interval(Duration::from_secs(24 * 3600))
        });
        let webhook_event_retention = env.duration(&WEBHOOK_EVENT_RETENTION);
        if webhook_event_retention < MIN_WEBHOOK_EVENT_RETENTION {
            env.problem(
                &WEBHOOK_EVENT_RETENTION,
                "at least 3d (Stripe redelivers events for up to 3 days)",
            );
        }
        Self {
            stripe,
            webhook_secrets,
            payout,
            reversal,
            payout_check_interval: env.duration(&TRANSFER_CHECK_INTERVAL),
            reversal_check_interval: env.duration(&REVERSAL_CHECK_INTERVAL),
            reconcile_every,
            reconcile_lookback: env.duration(&RECONCILE_TRANSFERS_LOOKBACK),
            webhook_event_retention,
        }
    }

    /// The payments parts this configuration switches off, each with the reason: what
    /// `/ready` lists under `disabled` (the process is ready without them).
    pub fn disabled(&self) -> Vec<(&'static str, &'static str)> {
        let mut off = Vec::new();
        if self.stripe.is_none() {
            off.push(("stripe_jobs", NO_STRIPE));
        } else {
            if !self.payout.enabled {
                off.push(("payouts", NO_PAYOUTS));
            }
            if !self.reversal.enabled {
                off.push(("reversals", NO_REVERSALS));
            }
        }
        if self.webhook_secrets.is_empty() {
            off.push(("stripe_webhook", NO_WEBHOOK_SECRET));
        }
        off
    }

    /// The defaults, without Stripe: what a process without `STRIPE_SECRET_KEY` runs with.
    pub fn without_stripe() -> Self {
        let mut env = Env::from_map(Default::default());
        let config = Self::read(&mut env);
        debug_assert!(env.finish().is_ok(), "the defaults are valid");
        config
    }
}

fn retry_settings(
    env: &mut Env,
    enabled: &VarSpec,
    max_retries: &VarSpec,
    base: &VarSpec,
    max: &VarSpec,
) -> RetrySettings {
    let settings = RetrySettings {
        enabled: env.choice(enabled, &["true", "false"]) == "true",
        max_retries: env.positive(max_retries),
        base: env.duration(base),
        max: env.duration(max),
    };
    if settings.max < settings.base {
        env.problem(
            max,
            &format!("at least {} ({})", base.name, humantime_of(settings.base)),
        );
    }
    settings
}

fn humantime_of(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_without_stripe() {
        let mut e = Env::from_pairs(&[]);
        let c = PaymentsConfig::read(&mut e);
        e.finish().unwrap();
        assert!(c.stripe.is_none());
        assert!(c.payout.enabled && c.reversal.enabled);
        assert_eq!(c.reversal.max_retries, 10);
        assert_eq!(c.reversal_check_interval, Duration::from_secs(60));
    }

    #[test]
    fn webhook_events_are_kept_at_least_as_long_as_stripe_redelivers() {
        let mut e = Env::from_pairs(&[("WEBHOOK_EVENT_RETENTION", "2d")]);
        PaymentsConfig::read(&mut e);
        let err = e.finish().unwrap_err().to_string();
        assert!(err.contains("WEBHOOK_EVENT_RETENTION"), "{err}");
        let mut e = Env::from_pairs(&[("WEBHOOK_EVENT_RETENTION", "30d")]);
        let c = PaymentsConfig::read(&mut e);
        e.finish().unwrap();
        assert_eq!(
            c.webhook_event_retention,
            Duration::from_secs(30 * 24 * 3600)
        );
    }

    #[test]
    fn stripe_settings_and_bad_values_are_read() {
        let mut e = Env::from_pairs(&[
            ("STRIPE_SECRET_KEY", "sk_test_1"),
            ("STRIPE_API_BASE", "http://127.0.0.1:12111"),
            ("STRIPE_MAX_RPS", "5"),
            ("REVERSAL_WORKER_ENABLED", "false"),
        ]);
        let c = PaymentsConfig::read(&mut e);
        e.finish().unwrap();
        let s = c.stripe.unwrap();
        assert_eq!(s.max_rps.get(), 5);
        assert_eq!(s.timeout, Duration::from_secs(20));
        assert!(!c.reversal.enabled);

        let mut e = Env::from_pairs(&[
            ("STRIPE_SECRET_KEY", "sk_test_1"),
            ("STRIPE_API_BASE", "ftp://x"),
            ("STRIPE_MAX_RPS", "0"),
            ("REVERSAL_BACKOFF_BASE", "2h"),
            ("TRANSFER_RETRY_ENABLED", "maybe"),
            ("RECONCILE_TRANSFERS_SCHEDULE", "sometimes"),
        ]);
        PaymentsConfig::read(&mut e);
        let err = e.finish().unwrap_err().to_string();
        for var in [
            "STRIPE_API_BASE",
            "STRIPE_MAX_RPS",
            "REVERSAL_BACKOFF_MAX",
            "TRANSFER_RETRY_ENABLED",
            "RECONCILE_TRANSFERS_SCHEDULE",
        ] {
            assert!(err.contains(&format!("{var} must be")), "{var}: {err}");
        }
    }

    #[test]
    fn the_policy_and_the_row_use_the_engine_formula() {
        let r = RetrySettings {
            enabled: true,
            max_retries: 3,
            base: Duration::from_secs(10),
            max: Duration::from_secs(60),
        };
        let p = r.policy();
        assert_eq!(p.max_attempts, 4, "the first attempt and 3 retries");
        let delays: Vec<u64> = (1..=5).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60]);
        let next = r.next_retry_at(1_000, 1);
        assert!((1_000 + 18_000..=1_000 + 22_000).contains(&next), "{next}");
        assert!(!r.exhausted(3));
        assert!(r.exhausted(4));
    }
}
