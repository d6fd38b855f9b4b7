//! Keys and scopes: the spec's every route × every scope, and what makes a key invalid.

use api::auth::Scope;
use api::auth::keys;
use engine::testing::TestDb;
use engine::{Actor, backend_tests};
use serde_json::{Value, json};

use crate::helpers::{TestApp, get, send};

backend_tests!(
    schema = jobs::schema::migrator;
    every_route_of_the_spec_enforces_its_scope,
    missing_unknown_and_revoked_keys_are_refused,
    keys_are_stored_hashed_and_their_use_is_recorded,
    a_key_revoked_elsewhere_is_trusted_from_the_cache_until_its_ttl,
    unknown_keys_are_never_cached,
    a_cached_key_still_records_its_use_once_a_minute,
);

const TTL_MS: i64 = 1_000;

/// The trade-off `API_KEY_CACHE_TTL` documents: revoked by another process (here straight
/// in the database, as the CLI does), a key this process checked a moment ago is still
/// let in until its check is `TTL` old; then the database's answer counts.
async fn a_key_revoked_elsewhere_is_trusted_from_the_cache_until_its_ttl(db: TestDb) {
    let cache = keys::KeyCache::new(std::time::Duration::from_millis(TTL_MS as u64));
    let t0 = 1_700_000_000_000;
    let created = keys::create(&db.db, "ci", Scope::Read, &Actor::cli(), t0)
        .await
        .unwrap();
    let caller = cache.authenticate(&db.db, &created.key, t0).await.unwrap();
    assert_eq!(caller.map(|c| c.key_id), Some(created.info.id));
    keys::revoke(&db.db, created.info.id, &Actor::cli(), t0 + 1)
        .await
        .unwrap()
        .expect("revoked");
    assert!(
        cache
            .authenticate(&db.db, &created.key, t0 + TTL_MS - 1)
            .await
            .unwrap()
            .is_some(),
        "answered from the cache, not the database"
    );
    assert_eq!(
        cache
            .authenticate(&db.db, &created.key, t0 + TTL_MS)
            .await
            .unwrap(),
        None,
        "once the check is TTL old the database is asked, and refuses"
    );
    assert!(cache.is_empty(), "the refused key is dropped");
}

/// Only keys the database vouched for are held: random keys cannot grow the cache.
async fn unknown_keys_are_never_cached(db: TestDb) {
    let cache = keys::KeyCache::new(std::time::Duration::from_secs(60));
    for i in 0..200 {
        let key = format!("vz_{i:064x}");
        assert_eq!(cache.authenticate(&db.db, &key, 1).await.unwrap(), None);
    }
    assert!(cache.is_empty());
}

async fn a_cached_key_still_records_its_use_once_a_minute(db: TestDb) {
    let cache = keys::KeyCache::new(std::time::Duration::from_secs(3600));
    let t0 = 1_700_000_000_000;
    let created = keys::create(&db.db, "ci", Scope::Read, &Actor::cli(), t0)
        .await
        .unwrap();
    let last_used = || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT last_used_at FROM api_keys WHERE id = $1")
            .bind(created.info.id)
            .fetch_one(&db.db)
            .await
            .unwrap()
    };
    for (now, expected) in [
        (t0, t0),
        (t0 + 30_000, t0),
        (t0 + 60_000, t0 + 60_000),
        (t0 + 61_000, t0 + 60_000),
        (t0 + 125_000, t0 + 125_000),
    ] {
        assert!(
            cache
                .authenticate(&db.db, &created.key, now)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(last_used().await, Some(expected), "at {}", now - t0);
    }
    assert_eq!(cache.len(), 1);
}

/// The scope an operation's doc declares (`Scope: admin.`), or `None` for routes without a
/// key.
fn declared_scope(op: &Value) -> Option<Scope> {
    let text = format!(
        "{} {}",
        op["summary"].as_str().unwrap_or_default(),
        op["description"].as_str().unwrap_or_default()
    );
    let scope = text.split("Scope: ").nth(1)?;
    let word: String = scope
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    Some(Scope::parse(&word).unwrap_or_else(|| panic!("unknown scope in {text:?}")))
}

pub(crate) fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => &spec["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => schema,
    }
}

/// A value of `schema` good enough to pass validation.
pub(crate) fn example(spec: &Value, schema: &Value) -> Value {
    let schema = resolve(spec, schema);
    if let Some(values) = schema["enum"].as_array() {
        return values[0].clone();
    }
    if let Some(all) = schema["allOf"].as_array() {
        return example(spec, &all[0]);
    }
    match schema["type"].as_str() {
        Some("integer") => json!(999_999),
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        Some("object") => {
            let mut out = serde_json::Map::new();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().expect("name");
                out.insert(name.to_owned(), example(spec, &schema["properties"][name]));
            }
            Value::Object(out)
        }
        _ => json!("x"),
    }
}

/// Every operation of the spec as (method, concrete path with required query, body).
pub(crate) fn operations(spec: &Value) -> Vec<(String, String, Option<Value>, Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let mut concrete = path.replace("{name}", "nightly_probe");
            let mut query = Vec::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().expect("param name");
                let value = example(spec, &p["schema"]);
                let value = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                match p["in"].as_str() {
                    Some("path") => concrete = concrete.replace(&format!("{{{name}}}"), &value),
                    Some("query") if p["required"] == true => query.push(format!("{name}={value}")),
                    _ => {}
                }
            }
            if !query.is_empty() {
                concrete = format!("{concrete}?{}", query.join("&"));
            }
            let body = op["requestBody"]["content"]["application/json; charset=utf-8"]["schema"]
                .as_object()
                .map(|s| example(spec, &Value::Object(s.clone())));
            out.push((method.to_uppercase(), concrete, body, op.clone()));
        }
    }
    out
}

async fn every_route_of_the_spec_enforces_its_scope(db: TestDb) {
    // Arrange: the spec, and one key of each scope.
    let app = TestApp::new(db);
    let spec = get(&app, "/openapi.json", None).await.body;
    let keys = [
        (Scope::Read, app.key(Scope::Read).await),
        (Scope::Write, app.key(Scope::Write).await),
        (Scope::Admin, app.key(Scope::Admin).await),
    ];
    let scheme = &spec["components"]["securitySchemes"]["ApiKeyAuth"];
    assert_eq!(
        (&scheme["type"], &scheme["in"], &scheme["name"]),
        (&json!("apiKey"), &json!("header"), &json!("X-API-Key"))
    );
    let ops = operations(&spec);
    assert!(ops.len() >= 12, "{} operations", ops.len());

    for (method, path, body, op) in ops {
        // Secured by an API key (`/metrics` may take its own optional bearer token).
        let secured = op["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("ApiKeyAuth").is_some()));
        let Some(needed) = declared_scope(&op) else {
            // Only the operations routes and the routes that check their own proof (the
            // Stripe webhook, the e-mailed export link) go without a key.
            assert!(
                !secured,
                "{method} {path} has a key but no `Scope:` in its doc"
            );
            let route = path.split('?').next().unwrap_or_default();
            if api::auth::authenticates_itself(route) {
                // Answered by the route itself, without a key: never 401 (the export link
                // with a made-up token is 403 `invalid_link`).
                let none = send(&app, &method, &path, None, body.clone()).await;
                assert!(
                    none.status != 401 && none.status < 500,
                    "{method} {path} without a key: {} {}",
                    none.status,
                    none.text
                );
                if route.starts_with("/v1/exports/") {
                    none.assert_problem(403, "invalid_link");
                }
                continue;
            }
            assert!(
                ["/health", "/ready", "/metrics"].contains(&path.as_str()),
                "{method} {path} has no key and no `Scope:` in its doc"
            );
            continue;
        };
        assert!(secured, "{method} {path}: no ApiKeyAuth in the spec");
        assert!(path.starts_with("/v1/"), "{method} {path}");
        assert!(
            needed != Scope::Read || method == "GET",
            "{method} {path}: a write route cannot be scope read"
        );
        for status in ["401", "403", "429", "500"] {
            assert!(
                op["responses"][status].is_object(),
                "{method} {path}: {status} not documented"
            );
        }

        // Act + assert: no key → 401; each scope → 403 exactly when below the route's.
        let none = send(&app, &method, &path, None, body.clone()).await;
        none.assert_problem(401, "unauthorized");
        for (scope, key) in &keys {
            let answer = send(&app, &method, &path, Some(key), body.clone()).await;
            assert!(
                answer.header("x-ratelimit-remaining").is_some(),
                "{method} {path}: no rate limit headers"
            );
            if *scope < needed {
                answer.assert_problem(403, "forbidden");
            } else {
                assert!(
                    ![401, 403].contains(&answer.status) && answer.status < 500,
                    "{method} {path} with a {scope:?} key: {} {}",
                    answer.status,
                    answer.text
                );
            }
        }
    }
}

async fn missing_unknown_and_revoked_keys_are_refused(db: TestDb) {
    let app = TestApp::new(db);
    let admin = app.key(Scope::Admin).await;

    get(&app, "/v1/jobs", None)
        .await
        .assert_problem(401, "unauthorized");
    get(&app, "/v1/jobs", Some("vz_0000"))
        .await
        .assert_problem(401, "unauthorized");
    get(&app, "/v1/jobs", Some("not-a-key"))
        .await
        .assert_problem(401, "unauthorized");
    // The right prefix with one digit changed.
    let mut near = admin.clone();
    let last = near.pop().expect("char");
    near.push(if last == '0' { '1' } else { '0' });
    get(&app, "/v1/jobs", Some(&near))
        .await
        .assert_problem(401, "unauthorized");
    assert_eq!(get(&app, "/v1/jobs", Some(&admin)).await.status, 200);

    // Revoked through the API: refused from then on.
    let created = send(
        &app,
        "POST",
        "/v1/api-keys",
        Some(&admin),
        Some(json!({"name": "ci", "scope": "read"})),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text);
    let key = created.body["key"].as_str().expect("key").to_owned();
    let id = created.body["id"].as_i64().expect("id");
    assert_eq!(get(&app, "/v1/jobs", Some(&key)).await.status, 200);
    let revoked = send(
        &app,
        "DELETE",
        &format!("/v1/api-keys/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert!(revoked.body["revoked_at"].is_i64());
    get(&app, "/v1/jobs", Some(&key))
        .await
        .assert_problem(401, "unauthorized");
    // A second revoke answers the same and changes nothing.
    let again = send(
        &app,
        "DELETE",
        &format!("/v1/api-keys/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["revoked_at"], revoked.body["revoked_at"]);
    // Both changes are in the audit trail, under the admin's key.
    let admin_id = keys::authenticate(app.engine.db(), &admin, app.engine.clock().now_ms())
        .await
        .expect("db")
        .expect("admin key")
        .key_id;
    let trail = engine::state_machine::history(
        &mut app.engine.db().acquire().await.expect("conn"),
        keys::ENTITY,
        &id.to_string(),
    )
    .await
    .expect("history");
    let edges: Vec<_> = trail
        .iter()
        .map(|e| {
            (
                e.from_status.as_str(),
                e.to_status.as_str(),
                e.actor.clone(),
            )
        })
        .collect();
    let by = format!("api_key:{admin_id}");
    assert_eq!(
        edges,
        [("none", "active", by.clone()), ("active", "revoked", by)],
        "{trail:?}"
    );
    assert_eq!(trail[0].note.as_deref(), Some("scope read"));
    // The operations routes need no key.
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(get(&app, path, None).await.status, 200, "{path}");
    }
}

async fn keys_are_stored_hashed_and_their_use_is_recorded(db: TestDb) {
    let app = TestApp::new(db);
    let created = keys::create(app.engine.db(), "ops", Scope::Write, &Actor::cli(), 1_000)
        .await
        .expect("create");
    assert!(
        created.key.starts_with("vz_") && created.key.len() == 67,
        "{}",
        created.key
    );

    // Nothing stored contains the key.
    let stored: Vec<(String, String, String)> =
        sqlx::query_as("SELECT name, prefix, key_hash FROM api_keys")
            .fetch_all(app.engine.db())
            .await
            .expect("rows");
    for (name, prefix, hash) in &stored {
        assert!(!created.key.contains(name.as_str()) || name == "ops");
        assert!(created.key.starts_with(prefix.as_str()) && prefix.len() < 16);
        assert_ne!(hash, &created.key);
        assert_eq!(hash, &keys::hash(&created.key));
    }

    // Use is recorded, at most once a minute.
    let at = |t| keys::authenticate(app.engine.db(), &created.key, t);
    assert!(at(10_000).await.expect("auth").is_some());
    assert!(at(30_000).await.expect("auth").is_some());
    let listed = keys::list(app.engine.db()).await.expect("list");
    assert_eq!(listed[0].last_used_at, Some(10_000));
    assert!(at(80_000).await.expect("auth").is_some());
    let listed = keys::list(app.engine.db()).await.expect("list");
    assert_eq!(listed[0].last_used_at, Some(80_000));
}
