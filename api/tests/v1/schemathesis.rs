//! The OpenAPI fuzzer of CI: `schemathesis` (`st run`) against the real server over HTTP, on
//! SQLite and on Postgres, with an admin key and seeded data (jobs, a track with its cover,
//! a user with an export and a pending deletion, a paid order with its transfer). Every
//! operation of `/openapi.json` gets valid and invalid inputs (NUL bytes included); the run
//! fails on any 5xx, any answer the spec does not describe (status, content type,
//! headers, body schema), any invalid input the server accepts, and any unknown method
//! answered without `Allow`.
//!
//! Without `st` (`SCHEMATHESIS`, else `st` on `PATH`) the test says it is skipped; with `CI`
//! set it fails for it (`.ci/run` installs the pinned version). `SCHEMATHESIS_MAX_EXAMPLES`
//! (default 100) and `SCHEMATHESIS_SEED` tune a local run.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use api::auth::Scope;
use engine::testing::TestDb;
use engine::{Actor, Backend};
use jobs::payments::orders::{NewOrderItem, create_order};
use jobs::transfers::state::{self as transfer_state, NewTransfer};

use crate::helpers::TestApp;

/// The checks of the run (`st run --help`): every one that judges a single answer against
/// the spec or the input, not the stateful ones.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
unsupported_method,missing_required_header,ignored_auth";

/// A whole run may take this long before it is killed (and the test fails).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation_on_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation_on_postgres() {
    run(Backend::Postgres);
}

/// The `st` to run: `SCHEMATHESIS`, else `st` found on `PATH`.
fn schemathesis() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SCHEMATHESIS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("st"))
        .find(|p| p.is_file())
}

fn run(backend: Backend) {
    let Some(st) = schemathesis() else {
        if std::env::var_os("CI").is_some() {
            panic!("schemathesis is missing but CI is set: .ci/run installs it (pip)");
        }
        eprintln!("skipped: no schemathesis (pip install schemathesis, or set SCHEMATHESIS)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(db) = rt.block_on(TestDb::with_schema(backend, jobs::schema::migrator)) else {
        return;
    };
    let app = TestApp::new(db);
    let (seeded, (addr, server)) = rt.block_on(async { (seed(&app).await, app.serve().await) });
    let key = seeded.key.clone();
    let max_examples =
        std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "100".to_owned());
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "14".to_owned());
    let report = tempfile::tempdir().expect("report dir");
    // The seeded rows, so that the operations on one track, user or transfer reach their
    // logic instead of a 404 (schemathesis cannot find these ids in any answer).
    let config = report.path().join("schemathesis.toml");
    std::fs::write(&config, seeded.config()).expect("write the config");
    let started = Instant::now();
    let output = rt.block_on(async {
        let child = tokio::process::Command::new(&st)
            .arg("--config-file")
            .arg(&config)
            .arg("run")
            .arg(format!("http://{addr}/openapi.json"))
            .args(["--checks", CHECKS])
            .args(["--header", &format!("X-API-Key: {key}")])
            .args(["--max-examples", &max_examples])
            .args(["--seed", &seed])
            .args(["--generation-database", "none"])
            // One worker: hypothesis describes strategies with `ast.parse`, which Python 3.11 is
            // not safe to run in several threads ("AST constructor recursion depth mismatch").
            .args(["--workers", "1"])
            .args(["--request-timeout", "10"])
            .args(["--suppress-health-check", "all"])
            .arg("--no-color")
            .args(["--report", "junit"])
            .arg("--report-dir")
            .arg(report.path())
            .env("SCHEMATHESIS_HOOKS", "")
            // Its caches (`.schemathesis/`) go to the temporary directory, not the tree.
            .current_dir(report.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", st.display()));
        tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("schemathesis ran longer than {RUN_TIMEOUT:?}"))
            .expect("schemathesis output")
    });
    rt.block_on(server.shutdown());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let elapsed = started.elapsed();
    let requests = junit_test_cases(report.path());
    eprintln!(
        "schemathesis on {}: exit {:?} in {:.0?}, {requests} test cases (junit)\n{stdout}\n{stderr}",
        backend.name(),
        output.status.code(),
        elapsed,
    );
    assert!(
        output.status.success(),
        "schemathesis found problems on {} (see its report above)",
        backend.name()
    );
}

/// The number of test cases the JUnit report lists (one per operation × phase), or 0.
fn junit_test_cases(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|xml| xml.matches("<testcase").count())
        .sum()
}

/// What [`seed`] made.
struct Seeded {
    /// The fuzzer's admin key.
    key: String,
    track: i64,
    user: i64,
    transfer: i64,
}

impl Seeded {
    /// `schemathesis.toml`: the seeded ids for the operations that need one.
    fn config(&self) -> String {
        let op = |name: &str, param: &str, value: i64| {
            format!(
                "[[operations]]\ninclude-name = \"{name}\"\nparameters = {{ \"path.{param}\" = {value} }}\n\n"
            )
        };
        [
            op(
                "POST /v1/tracks/{track_id}/thumbnails",
                "track_id",
                self.track,
            ),
            op(
                "GET /v1/tracks/{track_id}/thumbnails",
                "track_id",
                self.track,
            ),
            op("POST /v1/users/{user_id}/deletion", "user_id", self.user),
            op("POST /v1/transfers/{id}/retry", "id", self.transfer),
        ]
        .concat()
    }
}

/// Data for the routes to find: failed and pending jobs, a track with its cover, a user
/// with a requested export and deletion, a paid order with its pending transfer. Keys made
/// first take the low ids, so that the fuzzer's `DELETE /v1/api-keys/{id}` with small ids
/// revokes them and not its own key.
async fn seed(app: &TestApp) -> Seeded {
    for _ in 0..20 {
        app.key(Scope::Read).await;
    }
    let key = app.key(Scope::Admin).await;
    app.enqueue(true).await;
    app.enqueue(false).await;
    let engine = &app.engine;
    let now = engine.clock().now_ms();

    let cover = app.media.path().join("covers/1.png");
    std::fs::create_dir_all(cover.parent().expect("parent")).expect("mkdir");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 128]))
        .save_with_format(&cover, image::ImageFormat::Png)
        .expect("write png");
    let track: i64 = sqlx::query_scalar(
        "INSERT INTO tracks (status, file_path, created_at, updated_at, cover_path) \
         VALUES ('processing', 'uploads/a.mp3', $1, $1, 'covers/1.png') RETURNING id",
    )
    .bind(now)
    .fetch_one(engine.db())
    .await
    .expect("track");

    let user: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, username, display_name, created_at, updated_at) \
         VALUES ('fuzz@example.com', 'fuzz', 'Fuzz User', $1, $1) RETURNING id",
    )
    .bind(now)
    .fetch_one(engine.db())
    .await
    .expect("user");
    let actor = Actor::webhook("web_fuzz");
    jobs::users::request_deletion(engine, &app.jobs.gdpr.accounts, user, Some(true), &actor)
        .await
        .expect("deletion");
    jobs::exports::request_export(engine, &app.jobs.gdpr.exports, user, &actor)
        .await
        .expect("export");

    let mut tx = engine.db().begin().await.expect("begin");
    let (order, items) = create_order(
        &mut tx,
        Some(user),
        "eur",
        2500,
        &[NewOrderItem {
            seller_id: 42,
            amount: 2500,
            product_ref: Some("beat pack".to_owned()),
        }],
        now,
    )
    .await
    .expect("order");
    let transfer = transfer_state::create_pending(
        &mut tx,
        &NewTransfer {
            order_id: order,
            order_item_id: items[0],
            seller_id: 42,
            amount: 2500,
            currency: "eur".to_owned(),
        },
        &actor,
        now,
    )
    .await
    .expect("transfer")
    .expect("a new transfer");
    tx.commit().await.expect("commit");
    Seeded {
        key,
        track,
        user,
        transfer,
    }
}
