//! Per-key budgets: reads and writes apart, honest headers, 429 with `Retry-After`, and one
//! budget shared through Redis by two processes (two routers, two limiters).

use std::num::NonZeroU32;

use api::auth::Scope;
use api::auth::rate_limit::{Limiter, Limits, RedisLimiter};
use engine::backend_tests;
use engine::testing::TestDb;

use crate::helpers::{TestApp, get, post};

backend_tests!(
    schema = jobs::schema::migrator;
    reads_and_writes_have_separate_budgets_with_honest_headers,
    requests_without_a_valid_key_draw_on_their_address_s_budget,
    with_redis_down_calls_are_503_at_once_and_ready_says_redis,
);

const SMALL: Limits = Limits {
    reads_per_hour: NonZeroU32::new(3).unwrap(),
    writes_per_hour: NonZeroU32::new(2).unwrap(),
    anonymous_per_hour: NonZeroU32::new(2).unwrap(),
};

fn num(answer: &crate::helpers::Answer, header: &str) -> u64 {
    answer
        .header(header)
        .unwrap_or_else(|| panic!("no {header}: {}", answer.text))
        .parse()
        .expect("a number")
}

async fn reads_and_writes_have_separate_budgets_with_honest_headers(db: TestDb) {
    let app = TestApp::with_limiter(db, Limiter::memory(SMALL));
    let key = app.key(Scope::Admin).await;
    let other = app.key(Scope::Admin).await;

    // Three reads: remaining counts down, reset grows by 1200 s (3600 s / 3) per request.
    for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
        let a = get(&app, "/v1/jobs", Some(&key)).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(num(&a, "x-ratelimit-limit"), 3);
        assert_eq!(num(&a, "x-ratelimit-remaining"), remaining);
        let reset = num(&a, "x-ratelimit-reset");
        let expected = 1200 * (i as u64 + 1);
        assert!((expected - 1..=expected).contains(&reset), "reset {reset}");
    }
    // The fourth is refused until one request's worth has come back (~1200 s).
    let refused = get(&app, "/v1/jobs", Some(&key)).await;
    refused.assert_problem(429, "rate_limited");
    assert_eq!(num(&refused, "x-ratelimit-remaining"), 0);
    let retry_after = num(&refused, "retry-after");
    assert!(
        (1198..=1200).contains(&retry_after),
        "retry-after {retry_after}"
    );
    assert!(num(&refused, "x-ratelimit-reset") >= 3598);

    // Writes have their own budget, and so does another key.
    let w = post(&app, "/v1/jobs/999999/cancel", Some(&key), None).await;
    w.assert_problem(404, "not_found");
    assert_eq!(
        (
            num(&w, "x-ratelimit-limit"),
            num(&w, "x-ratelimit-remaining")
        ),
        (2, 1)
    );
    assert_eq!(get(&app, "/v1/jobs", Some(&other)).await.status, 200);
    // Unauthenticated requests draw on no key's budget and carry no key headers.
    let anonymous = get(&app, "/v1/jobs", None).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("x-ratelimit-limit").is_none());
}

async fn requests_without_a_valid_key_draw_on_their_address_s_budget(db: TestDb) {
    // Arrange: 2 requests per hour without a key, per address.
    let app = TestApp::with_limiter(db, Limiter::memory(SMALL));
    let key = app.key(Scope::Read).await;

    // Act: no key, an unknown key, then a third try.
    let none = get(&app, "/v1/jobs", None).await;
    let unknown = get(&app, "/v1/jobs", Some("vz_0000")).await;
    let third = get(&app, "/v1/jobs", None).await;
    let download = get(&app, "/v1/exports/1/download?expires=1&token=00", None).await;

    // Assert: 401 twice, then 429 with Retry-After before any work, for the export link
    // too; a valid key still works from the same address.
    none.assert_problem(401, "unauthorized");
    unknown.assert_problem(401, "unauthorized");
    for refused in [&third, &download] {
        refused.assert_problem(429, "rate_limited");
        let retry_after = num(refused, "retry-after");
        assert!((1..=1800).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(get(&app, "/v1/jobs", Some(&key)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_webhooks_draw_on_their_address_s_budget() {
    let Some(db) = TestDb::with_schema(engine::Backend::Sqlite, jobs::schema::migrator).await
    else {
        return;
    };
    let app = TestApp::with_limiter(db, Limiter::memory(SMALL));
    let forged = || {
        app.client
            .post("/v1/webhooks/stripe")
            .header("content-type", "application/json")
            .header("Stripe-Signature", "t=1,v1=00")
            .body("{}")
            .send()
    };
    crate::helpers::Answer::of(forged().await)
        .await
        .assert_problem(400, "invalid_signature");
    crate::helpers::Answer::of(forged().await)
        .await
        .assert_problem(400, "invalid_signature");
    crate::helpers::Answer::of(forged().await)
        .await
        .assert_problem(429, "rate_limited");
}

/// `host:port` of `TEST_REDIS_URL`.
fn redis_addr(url: &str) -> std::net::SocketAddr {
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    let host_port = rest.split('/').next().expect("host:port");
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .expect("resolve")
        .next()
        .expect("an address")
}

async fn with_redis_down_calls_are_503_at_once_and_ready_says_redis(db: TestDb) {
    // Arrange: the limiter reaches Redis through a proxy we can cut.
    let Some(url) = redis_url() else { return };
    let proxy = engine::testing::TcpProxy::start(redis_addr(&url)).await;
    let prefix = format!("veza:test:{}", hex::encode(rand::random::<[u8; 6]>()));
    let limiter = RedisLimiter::connect(&format!("redis://{}", proxy.addr), &prefix, SMALL)
        .await
        .expect("connect through the proxy");
    let app = TestApp::with_limiter(db, Limiter::from(limiter));
    let key = app.key(Scope::Read).await;
    assert_eq!(get(&app, "/v1/jobs", Some(&key)).await.status, 200);
    let ready = get(&app, "/ready", None).await;
    assert_eq!(ready.body["checks"]["redis"], "ok", "{}", ready.text);

    // Act: Redis goes away.
    proxy.cut();
    let started = std::time::Instant::now();
    let with_key = get(&app, "/v1/jobs", Some(&key)).await;
    let took = started.elapsed();
    let without_key = get(&app, "/v1/jobs", None).await;
    let ready = get(&app, "/ready", None).await;

    // Assert: 503 problem documents well within a client's 5 s, and /ready names Redis.
    with_key.assert_problem(503, "unavailable");
    without_key.assert_problem(503, "unavailable");
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert!(
        ready.body["failing"]
            .as_array()
            .is_some_and(|f| f.iter().any(|p| p == "redis")),
        "{}",
        ready.text
    );
    assert!(
        ready.body["checks"]["redis"]
            .as_str()
            .is_some_and(|s| s.starts_with("error: ")),
        "{}",
        ready.text
    );

    // Redis comes back: the client reconnects by itself.
    proxy.restore();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let a = get(&app, "/v1/jobs", Some(&key)).await;
        if a.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {}: {}",
            a.status,
            a.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn redis_url() -> Option<String> {
    match std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => Some(url),
        None if std::env::var_os("CI").is_some() => panic!("TEST_REDIS_URL is unset but CI is set"),
        None => {
            eprintln!("skipped: TEST_REDIS_URL unset, Redis rate limit test not run");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_redis_budget() {
    let Some(url) = redis_url() else { return };
    let Some(db) = TestDb::with_schema(engine::Backend::Sqlite, jobs::schema::migrator).await
    else {
        return;
    };
    // A prefix of its own, so reruns and parallel tests start from a whole budget.
    let prefix = format!("veza:test:{}", hex::encode(rand::random::<[u8; 6]>()));
    let limiter = |limits| {
        let url = url.clone();
        let prefix = prefix.clone();
        async move {
            Limiter::from(
                RedisLimiter::connect(&url, &prefix, limits)
                    .await
                    .expect("connect to TEST_REDIS_URL"),
            )
        }
    };
    let one = TestApp::with_limiter(db, limiter(SMALL).await);
    let two = one.another(limiter(SMALL).await);
    let key = one.key(Scope::Read).await;

    // Two reads through the first process, one through the second: the budget of 3 is
    // spent in both.
    assert_eq!(get(&one, "/v1/jobs", Some(&key)).await.status, 200);
    assert_eq!(get(&one, "/v1/jobs", Some(&key)).await.status, 200);
    let third = get(&two, "/v1/jobs", Some(&key)).await;
    assert_eq!(third.status, 200, "{}", third.text);
    assert_eq!(num(&third, "x-ratelimit-remaining"), 0);
    for app in [&one, &two] {
        let refused = get(app, "/v1/jobs", Some(&key)).await;
        refused.assert_problem(429, "rate_limited");
        let retry_after = num(&refused, "retry-after");
        assert!(
            (1198..=1200).contains(&retry_after),
            "retry-after {retry_after}"
        );
        assert!(num(&refused, "x-ratelimit-reset") >= 3598);
    }
    // Writes have their own budget.
    let w = post(&two, "/v1/jobs/999999/cancel", Some(&key), None).await;
    w.assert_problem(403, "forbidden");
    assert_eq!(num(&w, "x-ratelimit-remaining"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_budget_refilled_faster_than_a_millisecond_still_counts() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("veza:test:{}", hex::encode(rand::random::<[u8; 6]>()));
    let huge = Limits {
        reads_per_hour: NonZeroU32::new(1_000_000_000).unwrap(),
        writes_per_hour: NonZeroU32::new(1_000_000_000).unwrap(),
        anonymous_per_hour: NonZeroU32::new(1_000_000_000).unwrap(),
    };
    let limiter = Limiter::from(
        RedisLimiter::connect(&url, &prefix, huge)
            .await
            .expect("connect to TEST_REDIS_URL"),
    );
    for _ in 0..3 {
        let d = limiter
            .check(1, api::auth::rate_limit::Class::Read)
            .await
            .expect("redis");
        assert!(d.allowed, "{d:?}");
        assert!(d.remaining >= 999_999_990, "{d:?}");
    }
}
