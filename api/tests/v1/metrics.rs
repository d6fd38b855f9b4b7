//! `/metrics`: Prometheus text that parses, with the job gauges and HTTP counters.

use api::auth::Scope;
use engine::backend_tests;
use engine::testing::TestDb;

use crate::helpers::{TestApp, get};

backend_tests!(metrics_expose_jobs_queues_and_http_requests);

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
