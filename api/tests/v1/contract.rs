//! The API contract: the served `/openapi.json` describes what the server does (nullable
//! fields, 413/415 of the operations with a body, strict strings, date-time parameters,
//! enums of accepted values only, `minLength`), a 405 says `Allow`, NUL bytes are a 400 on
//! both storages, an over-long request line is a problem document, and so is a thumbnail
//! source with an impossible file name.

use std::net::SocketAddr;

use api::auth::Scope;
use engine::backend_tests;
use engine::testing::{TestDb, enqueued};
use jobs::thumbnail::ThumbnailArgs;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Answer, TestApp, get, post, send};

backend_tests!(
    schema = jobs::schema::migrator;
    nul_bytes_in_the_path_query_or_json_body_are_400_and_write_nothing,
    strings_in_json_bodies_are_strings,
    a_thumbnail_source_with_a_too_long_name_is_400,
    a_request_line_over_hyper_s_limit_is_a_problem_document,
);

fn spec_schema<'a>(spec: &'a Value, name: &str) -> &'a Value {
    &spec["components"]["schemas"][name]
}

#[tokio::test]
async fn the_served_spec_says_what_the_server_does() {
    let Some(db) = TestDb::with_schema(engine::Backend::Sqlite, jobs::schema::migrator).await
    else {
        return;
    };
    let app = TestApp::new(db);
    let spec = get(&app, "/openapi.json", None).await.body;

    // Every optional property of every object is nullable: the server sends `null` for it.
    let mut optional = 0;
    for (name, schema) in spec["components"]["schemas"].as_object().expect("schemas") {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (prop, def) in schema["properties"].as_object().into_iter().flatten() {
            if !required.contains(&prop.as_str()) {
                optional += 1;
                assert_eq!(
                    def["nullable"], true,
                    "{name}.{prop} is optional but not nullable"
                );
            }
        }
    }
    assert!(optional > 30, "only {optional} optional properties");
    for (schema, prop) in [
        ("JobView", "last_error"),
        ("JobView", "next_run_at"),
        ("JobPageView", "next_cursor"),
        ("AttemptView", "error"),
        ("ApiKeyInfo", "revoked_at"),
        ("DeletionView", "receipt"),
    ] {
        assert_eq!(
            spec_schema(&spec, schema)["properties"][prop]["nullable"],
            true,
            "{schema}.{prop}"
        );
    }

    // Operations with a body document 413 and 415; the others do not.
    let mut with_body = 0;
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("operations") {
            let responses = op["responses"].as_object().expect("responses");
            let has_body = op.get("requestBody").is_some();
            with_body += usize::from(has_body);
            for status in ["413", "415"] {
                assert_eq!(
                    responses.contains_key(status),
                    has_body,
                    "{method} {path}: {status}"
                );
            }
        }
    }
    assert!(with_body >= 4, "{with_body} operations with a body");

    // Strings the server takes only as strings, never empty.
    for (schema, prop) in [("NewApiKey", "name"), ("ThumbnailRequest", "source")] {
        let def = &spec_schema(&spec, schema)["properties"][prop];
        assert_eq!(def["type"], "string", "{schema}.{prop}");
        assert_eq!(def["minLength"], 1, "{schema}.{prop}");
    }
    // Time filters are date-times; the deletion listing's filter lists what it accepts.
    let params = |path: &str| spec["paths"][path]["get"]["parameters"].clone();
    let jobs = params("/v1/jobs");
    for name in ["since", "until"] {
        let p = jobs
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == name)
            .expect(name);
        assert_eq!(p["schema"]["format"], "date-time", "{name}");
    }
    let deletions = params("/v1/deletions");
    let status = deletions
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "status")
        .expect("status");
    let status = crate::auth::resolve(&spec, &status["schema"]);
    assert_eq!(status["enum"], json!(["deletion_requested", "erased"]));

    // Swagger UI shows the same document.
    let docs = get(&app, "/docs", None).await;
    assert_eq!(docs.status, 200);
    assert!(
        docs.text.contains("unsupported_media_type"),
        "/docs lacks the 415"
    );
}

#[tokio::test]
async fn a_method_a_path_does_not_have_is_405_with_allow() {
    let Some(db) = TestDb::with_schema(engine::Backend::Sqlite, jobs::schema::migrator).await
    else {
        return;
    };
    let app = TestApp::new(db);
    let key = app.key(Scope::Admin).await;
    for (method, path, allow) in [
        ("TRACE", "/v1/api-keys", "GET, POST"),
        ("PUT", "/v1/jobs/1", "GET"),
        ("DELETE", "/health", "GET"),
        ("POST", "/openapi.json", "GET"),
    ] {
        let a = send(&app, method, path, Some(&key), None).await;
        a.assert_problem(405, "method_not_allowed");
        assert_eq!(a.header("allow"), Some(allow), "{method} {path}");
    }
    // A body of another media type is a documented 415.
    let resp = app
        .client
        .post("/v1/api-keys")
        .header("X-API-Key", &key)
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await;
    Answer::of(resp)
        .await
        .assert_problem(415, "unsupported_media_type");
}

async fn nul_bytes_in_the_path_query_or_json_body_are_400_and_write_nothing(db: TestDb) {
    let app = TestApp::new(db);
    let key = app.key(Scope::Admin).await;
    let keys_before = get(&app, "/v1/api-keys", Some(&key)).await.body;

    for path in [
        "/v1/jobs?kind=probe%00",
        "/v1/schedules/nightly%00probe/run",
        "/v1/transitions?entity=job%00&id=1",
        "/v1/jobs/%00",
    ] {
        let a = send(&app, "GET", path, Some(&key), None).await;
        a.assert_problem(400, "bad_request");
        assert!(a.text.contains("NUL"), "{path}: {}", a.text);
    }
    for body in [
        json!({"name": "ci\u{0}", "scope": "write"}),
        json!({"name": "ci", "scope": "write", "extra\u{0}": 1}),
    ] {
        let a = post(&app, "/v1/api-keys", Some(&key), Some(body)).await;
        a.assert_problem(400, "bad_request");
        assert!(a.text.contains("NUL"), "{}", a.text);
    }
    // `%2500` is the text `%00`, not a NUL: an ordinary (empty) answer.
    let a = get(&app, "/v1/jobs?kind=%2500", Some(&key)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        get(&app, "/v1/api-keys", Some(&key)).await.body,
        keys_before
    );
}

async fn strings_in_json_bodies_are_strings(db: TestDb) {
    let app = TestApp::new(db);
    let key = app.key(Scope::Admin).await;
    for name in [json!(false), json!(12), json!(null), json!(["a"])] {
        let a = post(
            &app,
            "/v1/api-keys",
            Some(&key),
            Some(json!({"name": name, "scope": "read"})),
        )
        .await;
        a.assert_problem(400, "bad_request");
    }
    let a = post(
        &app,
        "/v1/tracks/1/thumbnails",
        Some(&key),
        Some(json!({"source": true})),
    )
    .await;
    a.assert_problem(400, "bad_request");
    let keys = get(&app, "/v1/api-keys", Some(&key)).await.body;
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
}

async fn a_thumbnail_source_with_a_too_long_name_is_400(db: TestDb) {
    let app = TestApp::new(db);
    let key = app.key(Scope::Write).await;
    for source in [
        format!("covers/{}.png", "a".repeat(300)),
        "b".repeat(256),
        format!("{}/x.png", "c".repeat(256)),
    ] {
        let a = post(
            &app,
            "/v1/tracks/1/thumbnails",
            Some(&key),
            Some(json!({ "source": source })),
        )
        .await;
        a.assert_problem(400, "bad_request");
        assert!(a.text.contains("255"), "{}", a.text);
    }
    let a = post(
        &app,
        "/v1/tracks/1/thumbnails",
        Some(&key),
        Some(json!({ "source": "" })),
    )
    .await;
    a.assert_problem(400, "bad_request");
    assert!(enqueued::<ThumbnailArgs>(&app.engine).await.is_empty());
}

/// Sends `request` as is and returns the raw answer.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn a_request_line_over_hyper_s_limit_is_a_problem_document(db: TestDb) {
    let app = TestApp::new(db);
    let (addr, server) = app.serve().await;
    let query = "a".repeat(100 * 1024);
    let answer = raw(
        addr,
        format!("GET /v1/jobs?kind={query} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 414 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );
    let problem: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(problem["type"], "uri_too_long");
    assert_eq!(problem["status"], 414);

    // An ordinary answer on the same server is untouched.
    let answer = raw(
        addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("{\"status\":\"ok\"}"), "{answer}");
    server.shutdown().await;
}
