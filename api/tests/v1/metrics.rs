//! `/metrics`: Prometheus text that parses, with the job gauges and HTTP counters.

use api::auth::Scope;
use engine::backend_tests;
use engine::testing::TestDb;

use std::time::Duration;

use api::auth::rate_limit::Limiter;
use api::metrics::GaugeCache;
use api::state::HttpSettings;
use engine::Clock;

use crate::helpers::{GENEROUS, TestApp, get, send};

backend_tests!(
    schema = jobs::schema::migrator;
    metrics_expose_jobs_queues_and_http_requests,
    gauges_are_read_from_the_database_at_most_once_per_window,
);

/// Checks the text exposition format line by line; returns (name, labels, value) samples.
fn parse(text: &str) -> Vec<(String, String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            assert!(
                matches!(words.first(), Some(&"HELP" | &"TYPE")),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                assert!(labels.ends_with('}'), "bad labels in {line:?}");
                (name, labels.trim_end_matches('}'))
            }
            None => (series, ""),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push((name.to_owned(), labels.to_owned(), value));
    }
    samples
}

async fn metrics_expose_jobs_queues_and_http_requests(db: TestDb) {
    let app = TestApp::new(db);
    let key = app.key(Scope::Read).await;
    app.enqueue(false).await;
    assert_eq!(get(&app, "/v1/jobs", Some(&key)).await.status, 200);

    let answer = get(&app, "/metrics", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(
        answer
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    let samples = parse(&answer.text);
    let has = |name: &str, labels: &[&str]| {
        samples
            .iter()
            .any(|(n, l, _)| n == name && labels.iter().all(|want| l.contains(want)))
    };
    // The process's recorder is shared by every test of this binary: look for this test's
    // series, not exact totals.
    assert!(
        has("veza_jobs", &["kind=\"probe\"", "status=\"pending\""]),
        "{}",
        answer.text
    );
    assert!(
        has("veza_queue_depth", &["kind=\"probe\""]),
        "{}",
        answer.text
    );
    assert!(
        has(
            "veza_http_requests_total",
            &["route=\"/v1/jobs\"", "status=\"200\"", "method=\"GET\""]
        ),
        "{}",
        answer.text
    );
}

async fn gauges_are_read_from_the_database_at_most_once_per_window(db: TestDb) {
    // Arrange: the engine's clock is ours.
    let clock = Clock::manual(chrono::Utc::now());
    let app = TestApp::build(db, Limiter::memory(GENEROUS), clock.clone(), |_| {});
    let cache = GaugeCache::new(Duration::from_secs(5));

    // Act and assert: the first scrape reads; others within 5 s do not, however many.
    assert!(cache.refresh(&app.engine).await.expect("read"));
    for _ in 0..10 {
        assert!(!cache.refresh(&app.engine).await.expect("cached"));
    }
    clock.advance(Duration::from_millis(4_999));
    assert!(!cache.refresh(&app.engine).await.expect("cached"));
    clock.advance(Duration::from_millis(1));
    assert!(cache.refresh(&app.engine).await.expect("read again"));
    assert!(!cache.refresh(&app.engine).await.expect("cached"));
}

#[tokio::test]
async fn methods_outside_http_do_not_become_labels() {
    let Some(db) = TestDb::with_schema(engine::Backend::Sqlite, jobs::schema::migrator).await
    else {
        return;
    };
    let app = TestApp::new(db);
    let long = "X".repeat(3_000);
    let a = send(&app, &long, "/health", None, None).await;
    assert_eq!(a.status, 405, "{}", a.text);
    send(&app, "PROPFIND", "/health", None, None).await;

    let text = get(&app, "/metrics", None).await.text;
    assert!(!text.contains(&long[..100]), "the raw method is a label");
    assert!(!text.contains("PROPFIND"), "the raw method is a label");
    assert!(
        text.lines()
            .any(|l| l.starts_with("veza_http_requests_total")
                && l.contains("method=\"other\"")
                && l.contains("route=\"/health\"")),
        "{text}"
    );
}

#[tokio::test]
async fn with_a_metrics_token_a_scrape_needs_it() {
    let Some(db) = TestDb::with_schema(engine::Backend::Sqlite, jobs::schema::migrator).await
    else {
        return;
    };
    let app = TestApp::new(db).with_http(HttpSettings {
        metrics_token: Some("s3cret".to_owned()),
        ..HttpSettings::default()
    });
    let scrape = |auth: Option<&'static str>| {
        let mut req = app.client.get("/metrics");
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        req.send()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Basic s3cret"),
    ] {
        let a = crate::helpers::Answer::of(scrape(auth).await).await;
        a.assert_problem(401, "unauthorized");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{auth:?}");
    }
    let a = crate::helpers::Answer::of(scrape(Some("Bearer s3cret")).await).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.text.contains("veza_"), "{}", a.text);
    // The spec says the token is optional.
    let spec = get(&app, "/openapi.json", None).await.body;
    assert_eq!(
        spec["paths"]["/metrics"]["get"]["security"],
        serde_json::json!([{}, {"MetricsToken": []}])
    );
}
