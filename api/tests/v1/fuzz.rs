//! A property-based pass over the OpenAPI spec: random path values, query parameters and
//! bodies (valid examples, mutated ones, arbitrary JSON) on every operation, with every
//! scope, must never produce a 5xx, and every error must be a problem document.

use api::auth::Scope;
use engine::Backend;
use engine::testing::TestDb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use crate::auth::{example, operations};
use crate::helpers::{TestApp, get, send};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A value for a parameter: often plausible, sometimes anything.
fn param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..600).prop_map(|n| n.to_string()),
        Just("failed".to_owned()),
        Just("2026-01-01T00:00:00Z".to_owned()),
        any::<String>(),
    ]
}

#[derive(Debug, Clone)]
struct Input {
    op: usize,
    scope: usize,
    path_value: String,
    query: Vec<(usize, String)>,
    body: BodyChoice,
}

#[derive(Debug, Clone)]
enum BodyChoice {
    None,
    Example,
    Mutated(usize, Value),
    Arbitrary(Value),
}

fn input() -> impl Strategy<Value = Input> {
    (
        any::<usize>(),
        0usize..3,
        param_value(),
        prop::collection::vec((any::<usize>(), param_value()), 0..4),
        prop_oneof![
            Just(BodyChoice::None),
            Just(BodyChoice::Example),
            (any::<usize>(), json_value()).prop_map(|(i, v)| BodyChoice::Mutated(i, v)),
            json_value().prop_map(BodyChoice::Arbitrary),
        ],
    )
        .prop_map(|(op, scope, path_value, query, body)| Input {
            op,
            scope,
            path_value,
            query,
            body,
        })
}

fn fuzz(backend: Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(db) = rt.block_on(TestDb::with_schema(backend, jobs::schema::migrator)) else {
        return;
    };
    let app = TestApp::new(db);
    let (spec, keys) = rt.block_on(async {
        let spec = get(&app, "/openapi.json", None).await.body;
        let keys = [
            app.key(Scope::Read).await,
            app.key(Scope::Write).await,
            app.key(Scope::Admin).await,
        ];
        app.enqueue(true).await;
        (spec, keys)
    });
    let ops = operations(&spec);
    let param_names: Vec<String> = ops
        .iter()
        .flat_map(|(_, _, _, op)| op["parameters"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();

    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&input(), |input| {
            let (method, template_path, example_body, op) = &ops[input.op % ops.len()];
            // Re-instantiate the path with the random value in its parameter's place.
            let mut path = template_path.clone();
            if let Some(p) = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["in"] == "path")
            {
                let fixed = example(&spec, &p["schema"]);
                let fixed = fixed
                    .as_str()
                    .map_or_else(|| fixed.to_string(), str::to_owned);
                let fixed = if p["name"] == "name" {
                    "nightly_probe".to_owned()
                } else {
                    fixed
                };
                path = path.replacen(
                    &format!("/{fixed}"),
                    &format!("/{}", encode(&input.path_value)),
                    1,
                );
            }
            let extra: Vec<String> = input
                .query
                .iter()
                .map(|(i, v)| format!("{}={}", param_names[i % param_names.len()], encode(v)))
                .collect();
            if !extra.is_empty() {
                let sep = if path.contains('?') { '&' } else { '?' };
                path = format!("{path}{sep}{}", extra.join("&"));
            }
            let body = match (&input.body, example_body) {
                (BodyChoice::None, _) => None,
                (BodyChoice::Example, b) => b.clone(),
                (BodyChoice::Mutated(i, v), Some(Value::Object(b))) if !b.is_empty() => {
                    let mut b = b.clone();
                    let field = b.keys().nth(i % b.len()).cloned().expect("field");
                    b.insert(field, v.clone());
                    Some(Value::Object(b))
                }
                (BodyChoice::Mutated(_, v) | BodyChoice::Arbitrary(v), _) => Some(v.clone()),
            };
            let answer = rt.block_on(send(&app, method, &path, Some(&keys[input.scope]), body));
            prop_assert!(
                answer.status < 500,
                "{method} {path}: {} {}",
                answer.status,
                answer.text
            );
            if answer.status >= 400 {
                prop_assert_eq!(
                    answer.header("content-type"),
                    Some("application/problem+json"),
                    "{} {}: {}",
                    method,
                    path,
                    answer.text
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn random_requests_over_the_spec_never_get_a_5xx_on_sqlite() {
    fuzz(Backend::Sqlite);
}

#[test]
fn random_requests_over_the_spec_never_get_a_5xx_on_postgres() {
    fuzz(Backend::Postgres);
}
