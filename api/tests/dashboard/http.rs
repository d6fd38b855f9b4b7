//! The dashboard through the real router (poem's `TestClient`), on SQLite and Postgres:
//! sign-in by scope, cookie attributes, CSRF, sessions across processes, revocation,
//! sign-out, redaction, HTML errors and metrics labels.

use api::auth::Scope;
use api::auth::keys;
use api::auth::rate_limit::Limiter;
use engine::testing::TestDb;
use engine::{Actor, JobState, backend_tests};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::helpers::{Answer, GENEROUS, TestApp};

/// The session cookie (`name=value`) of a sign-in answer.
fn cookie_of(a: &Answer) -> String {
    let set = a
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie: {} {}", a.status, a.text));
    set.split(';').next().expect("a cookie").to_owned()
}

/// The CSRF token in a page's forms.
fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("end of value")].to_owned()
}

async fn sign_in_answer(app: &TestApp, key: &str, extra: Option<(&str, &str)>) -> Answer {
    let mut req = app
        .client
        .post("/admin/login")
        .content_type("application/x-www-form-urlencoded")
        .body(format!("key={key}&next=%2Fadmin%2Fjobs"));
    if let Some((name, value)) = extra {
        req = req.header(name, value);
    }
    Answer::of(req.send().await).await
}

/// Signs in with a new admin key: (cookie, CSRF token, key id).
async fn sign_in(app: &TestApp) -> (String, String, i64) {
    let key = app.key(Scope::Admin).await;
    let a = sign_in_answer(app, &key, None).await;
    assert_eq!(a.status, 303, "{}", a.text);
    let cookie = cookie_of(&a);
    let page = page(app, "/admin", &cookie).await;
    assert_eq!(page.status, 200, "{}", page.text);
    let id = keys::authenticate(app.engine.db(), &key, app.engine.clock().now_ms())
        .await
        .expect("authenticate")
        .expect("the key")
        .key_id;
    (cookie, csrf_in(&page.text), id)
}

async fn page(app: &TestApp, path: &str, cookie: &str) -> Answer {
    Answer::of(app.client.get(path).header("Cookie", cookie).send().await).await
}

async fn form_post(app: &TestApp, path: &str, cookie: &str, body: &str) -> Answer {
    Answer::of(
        app.client
            .post(path)
            .header("Cookie", cookie)
            .content_type("application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await,
    )
    .await
}

async fn status_of(app: &TestApp, id: i64) -> JobState {
    engine::admin::get_job(app.engine.db(), id)
        .await
        .expect("job")
        .job
        .status
}

async fn only_admin_keys_sign_in(db: TestDb) {
    let app = TestApp::new(db);
    for scope in [Scope::Read, Scope::Write] {
        let key = app.key(scope).await;
        let a = sign_in_answer(&app, &key, None).await;
        assert_eq!(a.status, 403, "{scope:?}: {}", a.text);
        assert!(a.header("set-cookie").is_none(), "{scope:?} got a cookie");
        assert!(a.text.contains("needs a key of scope admin"), "{}", a.text);
        assert!(
            a.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "an HTML page, not a problem document"
        );
    }
    let a = sign_in_answer(&app, "vz_nope", None).await;
    assert_eq!(a.status, 401, "{}", a.text);
    assert!(a.header("set-cookie").is_none());

    let key = app.key(Scope::Admin).await;
    let a = sign_in_answer(&app, &key, None).await;
    assert_eq!(a.status, 303, "{}", a.text);
    assert_eq!(
        a.header("location"),
        Some("/admin/jobs"),
        "goes back to `next`"
    );
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM admin_sessions")
        .fetch_one(app.engine.db())
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "only the admin key opened a session");
}

async fn session_cookie_is_locked_down(db: TestDb) {
    let app = TestApp::new(db);
    let key = app.key(Scope::Admin).await;
    let a = sign_in_answer(&app, &key, None).await;
    let set = a.header("set-cookie").expect("Set-Cookie").to_owned();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    // Secure by default, with the `__Host-` prefix (so `Path=/` and no `Domain`).
    assert!(set.starts_with("__Host-veza_admin_session="), "{set}");
    for expected in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=28800",
        "Secure",
    ] {
        assert!(attrs.contains(&expected), "{expected} missing in {set}");
    }
    assert!(
        !attrs.iter().any(|a| a.starts_with("Domain")),
        "no Domain ({set})"
    );
    // Only the token's hash is stored.
    let token = cookie_of(&a)
        .split_once('=')
        .expect("name=value")
        .1
        .to_owned();
    assert_eq!(token.len(), 64);
    let stored: String = sqlx::query("SELECT token_hash FROM admin_sessions")
        .fetch_one(app.engine.db())
        .await
        .unwrap()
        .get(0);
    assert_ne!(stored, token);
    assert_eq!(stored, hex::encode(Sha256::digest(token.as_bytes())));

    // The same token under the name without the prefix (a cookie planted over plain HTTP)
    // is not taken.
    let planted = format!("veza_admin_session={token}");
    assert_eq!(page(&app, "/admin", &planted).await.status, 303);
    assert_eq!(page(&app, "/admin", &cookie_of(&a)).await.status, 200);
}

async fn a_new_sign_in_replaces_the_browser_s_session(db: TestDb) {
    let app = TestApp::new(db);
    let key = app.key(Scope::Admin).await;
    let first = cookie_of(&sign_in_answer(&app, &key, None).await);

    // The same browser signs in again, sending its cookie.
    let a = sign_in_answer(&app, &key, Some(("Cookie", first.as_str()))).await;
    assert_eq!(a.status, 303, "{}", a.text);
    let second = cookie_of(&a);

    assert_ne!(first, second);
    assert_eq!(
        page(&app, "/admin", &first).await.status,
        303,
        "the old one ended"
    );
    assert_eq!(page(&app, "/admin", &second).await.status, 200);
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM admin_sessions")
        .fetch_one(app.engine.db())
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

async fn sign_in_attempts_draw_on_the_address_s_budget(db: TestDb) {
    let limits = api::auth::rate_limit::Limits {
        anonymous_per_hour: std::num::NonZeroU32::new(2).unwrap(),
        ..GENEROUS
    };
    let app = TestApp::with_limiter(db, Limiter::memory(limits));
    let key = app.key(Scope::Admin).await;
    for _ in 0..2 {
        let a = sign_in_answer(&app, "vz_guess", None).await;
        assert_eq!(a.status, 401, "{}", a.text);
    }
    // Spent: even the right key waits, and no session is opened.
    let a = sign_in_answer(&app, &key, None).await;
    assert_eq!(a.status, 429, "{}", a.text);
    assert!(a.text.contains("Too many sign-in attempts"), "{}", a.text);
    assert!(a.header("set-cookie").is_none());
}

async fn state_changes_need_the_csrf_token(db: TestDb) {
    let app = TestApp::new(db);
    let (cookie, csrf, key_id) = sign_in(&app).await;
    let job = app.enqueue(false).await;
    let path = format!("/admin/jobs/{job}/cancel");

    let a = form_post(&app, &path, &cookie, "").await;
    assert_eq!(a.status, 403, "no token: {}", a.text);
    assert!(a.text.contains("CSRF"), "{}", a.text);
    let a = form_post(&app, &path, &cookie, "csrf=0123abcd").await;
    assert_eq!(a.status, 403, "a wrong token: {}", a.text);
    let (_, other_csrf, _) = sign_in(&app).await;
    let a = form_post(&app, &path, &cookie, &format!("csrf={other_csrf}")).await;
    assert_eq!(a.status, 403, "another session's token: {}", a.text);
    let a = Answer::of(
        app.client
            .post(&path)
            .header("Cookie", &cookie)
            .header("Sec-Fetch-Site", "cross-site")
            .content_type("application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"))
            .send()
            .await,
    )
    .await;
    assert_eq!(a.status, 403, "a cross-site post: {}", a.text);
    assert_eq!(
        status_of(&app, job).await,
        JobState::Pending,
        "nothing happened"
    );
    let a = form_post(&app, "/admin/logout", &cookie, "").await;
    assert_eq!(a.status, 403, "sign-out needs the token too");

    let a = form_post(&app, &path, &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(a.status, 303, "{}", a.text);
    assert_eq!(
        a.header("location"),
        Some(format!("/admin/jobs/{job}?done=cancelled").as_str())
    );
    assert_eq!(status_of(&app, job).await, JobState::Cancelled);
    // The same engine function as the API: audited as the key that signed in.
    let mut conn = app.engine.db().acquire().await.unwrap();
    let trail = engine::state_machine::history(&mut conn, "job", &job.to_string())
        .await
        .unwrap();
    let last = trail.last().expect("an audit row");
    assert_eq!(last.to_status, "cancelled");
    assert_eq!(last.actor, format!("api_key:{key_id}"));
    drop(conn);

    // Retry through the header form of the token, as a script would send it.
    let a = Answer::of(
        app.client
            .post(format!("/admin/jobs/{job}/retry"))
            .header("Cookie", &cookie)
            .header("X-CSRF-Token", &csrf)
            .send()
            .await,
    )
    .await;
    assert_eq!(a.status, 303, "{}", a.text);
    assert_eq!(status_of(&app, job).await, JobState::Pending);
    // Retrying a pending job is refused by the engine and said on the page.
    let a = form_post(
        &app,
        &format!("/admin/jobs/{job}/retry"),
        &cookie,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(
        a.header("location"),
        Some(format!("/admin/jobs/{job}?error=invalid_job_state").as_str())
    );
    // Without a session, a post is refused before anything else.
    let a = form_post(
        &app,
        &path,
        "veza_admin_session=nope",
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(a.status, 401, "{}", a.text);
}

async fn sessions_are_shared_and_die_with_their_key(db: TestDb) {
    let app = TestApp::new(db);
    let key = app.key(Scope::Admin).await;
    let a = sign_in_answer(&app, &key, None).await;
    let cookie = cookie_of(&a);
    // Another API process on the same database knows the session.
    let other = app.another(Limiter::memory(GENEROUS));
    assert_eq!(page(&other, "/admin/jobs", &cookie).await.status, 200);

    let id = keys::authenticate(app.engine.db(), &key, app.engine.clock().now_ms())
        .await
        .unwrap()
        .unwrap()
        .key_id;
    keys::revoke(
        app.engine.db(),
        id,
        &Actor::cli(),
        app.engine.clock().now_ms(),
    )
    .await
    .unwrap()
    .expect("revoked");
    for client in [&app, &other] {
        let a = page(client, "/admin/jobs?kind=probe", &cookie).await;
        assert_eq!(a.status, 303, "{}", a.text);
        assert_eq!(
            a.header("location"),
            Some("/admin/login?next=/admin/jobs%3Fkind%3Dprobe")
        );
    }
    // The live refresh of a dead session gets a 401 (the script reloads into the sign-in).
    assert_eq!(page(&app, "/admin?fragment=1", &cookie).await.status, 401);
}

async fn sign_out_ends_the_session(db: TestDb) {
    let app = TestApp::new(db);
    let (cookie, csrf, _) = sign_in(&app).await;
    let a = form_post(&app, "/admin/logout", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(a.status, 303, "{}", a.text);
    assert_eq!(a.header("location"), Some("/admin/login?signed_out=1"));
    let set = a.header("set-cookie").expect("the cookie is cleared");
    assert!(set.contains("Max-Age=0"), "{set}");
    assert!(set.starts_with("__Host-veza_admin_session=;"), "{set}");
    // The old cookie is worthless: the row is gone.
    let a = page(&app, "/admin", &cookie).await;
    assert_eq!(a.status, 303);
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM admin_sessions")
        .fetch_one(app.engine.db())
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

async fn secrets_in_args_are_redacted(db: TestDb) {
    let app = TestApp::new(db);
    let (cookie, _, _) = sign_in(&app).await;
    let args = serde_json::json!({
        "fail": false,
        "api_token": "tok_live_SECRET_1",
        "email": "jane.doe@example.com",
        "nested": {"password": "hunter2-SECRET", "stripe_key": "sk_test_SECRET_3"},
        "recipients": ["bob@example.org"],
        "track_id": 4242
    });
    let mut conn = app.engine.db().acquire().await.unwrap();
    let job = app
        .engine
        .enqueue_json(&mut conn, "probe", &args.to_string(), None)
        .await
        .expect("enqueue")
        .id();
    drop(conn);
    let plain = page(&app, &format!("/admin/jobs/{job}"), &cookie).await;
    assert!(!plain.text.contains("job-steps"), "no steps, no section");
    // A finished durable step whose result carries an address.
    sqlx::query(
        "INSERT INTO job_steps (job_id, seq, name, result, attempt, finished_at) \
         VALUES ($1, 0, 'notify_seller', '{\"email\":\"jane.doe@example.com\",\"sent\":4243}', 1, 1)",
    )
    .bind(job)
    .execute(app.engine.db())
    .await
    .unwrap();
    let a = page(&app, &format!("/admin/jobs/{job}"), &cookie).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.text.contains("job-steps") && a.text.contains("notify_seller"));
    assert!(a.text.contains("4243"), "the step's ordinary values stay");
    for secret in [
        "tok_live_SECRET_1",
        "jane.doe",
        "hunter2",
        "sk_test_SECRET_3",
        "bob@example.org",
    ] {
        assert!(!a.text.contains(secret), "{secret} is shown");
    }
    assert!(a.text.contains("[redacted]"));
    assert!(a.text.contains("4242"), "ordinary values stay");
    assert!(a.text.contains("api_token"), "the keys stay");

    // A fan-out parent waiting for its child: the child listed and linked, the wait said
    // (redacted), and the child's page links back.
    assert!(!a.text.contains("job-children") && !a.text.contains("job-waiting-for"));
    let mut conn = app.engine.db().acquire().await.unwrap();
    let child = app
        .engine
        .enqueue_json(&mut conn, "probe", "{}", None)
        .await
        .expect("enqueue")
        .id();
    drop(conn);
    for sql in [
        "UPDATE jobs SET parent_id = $1 WHERE id = $2",
        "INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error) \
         VALUES ($1, 1, 'w', 1, 2, 'snoozed', 'signal from bob@example.org')",
    ] {
        let q = sqlx::query(sql).bind(job);
        let q = if sql.contains("parent_id") {
            q.bind(child)
        } else {
            q
        };
        q.execute(app.engine.db()).await.unwrap();
    }
    let a = page(&app, &format!("/admin/jobs/{job}"), &cookie).await;
    assert!(a.text.contains("job-children"), "{}", a.text);
    assert!(a.text.contains(&format!("href=\"/admin/jobs/{child}\"")));
    assert!(a.text.contains("job-waiting-for") && a.text.contains("signal from [redacted]"));
    assert!(!a.text.contains("bob@example.org"));
    let c = page(&app, &format!("/admin/jobs/{child}"), &cookie).await;
    assert!(
        c.text.contains(&format!("href=\"/admin/jobs/{job}\"")),
        "the parent is linked"
    );
}

async fn pages_answer_in_html(db: TestDb) {
    let app = TestApp::new(db);
    let (cookie, _, _) = sign_in(&app).await;
    let failed = app.enqueue(true).await;
    for path in [
        "/admin",
        "/admin?fragment=1",
        "/admin/jobs",
        "/admin/jobs?kind=probe&status=pending",
        &format!("/admin/jobs/{failed}"),
        "/admin/schedules",
        "/admin/transfers",
        "/admin/transfers?status=permanently_failed",
        "/admin/findings",
        "/admin/findings?all=true",
        "/admin/gdpr",
        "/admin/gdpr?user_id=1",
    ] {
        let a = page(&app, path, &cookie).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        assert!(
            a.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{path}"
        );
        assert!(a.header("content-security-policy").is_some(), "{path}");
    }
    let overview = page(&app, "/admin", &cookie).await;
    assert!(
        overview.text.contains("data-kind=\"probe\""),
        "{}",
        overview.text
    );
    assert!(overview.text.contains("<svg"), "the chart");
    // Errors are HTML pages, not problem documents.
    for (path, status) in [
        ("/admin/nope", 404),
        ("/admin/jobs/999999", 404),
        ("/admin/transfers/999999", 404),
        ("/admin/jobs?status=bogus", 400),
    ] {
        let a = page(&app, path, &cookie).await;
        assert_eq!(a.status, status, "{path}: {}", a.text);
        assert!(
            a.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{path}: {:?}",
            a.header("content-type")
        );
    }
    // The assets need no session; pages do.
    let css = Answer::of(app.client.get("/admin/assets/admin.css").send().await).await;
    assert_eq!(css.status, 200);
    assert!(css.text.contains("prefers-color-scheme: dark"));
    let a = Answer::of(app.client.get("/admin").send().await).await;
    assert_eq!(a.status, 303);
    assert_eq!(a.header("location"), Some("/admin/login?next=/admin"));
    // The sign-in page never sends anyone off-site.
    let a = Answer::of(
        app.client
            .get("/admin/login?next=//evil.example")
            .send()
            .await,
    )
    .await;
    assert!(!a.text.contains("evil.example"), "{}", a.text);

    // Requests are labelled by the dashboard's route templates.
    let metrics = Answer::of(app.client.get("/metrics").send().await).await;
    assert!(
        metrics.text.contains("route=\"/admin/jobs/{id}\""),
        "{}",
        metrics.text
    );
}

async fn run_now_enqueues_the_schedule(db: TestDb) {
    let app = TestApp::new(db);
    let (cookie, csrf, _) = sign_in(&app).await;
    let a = form_post(
        &app,
        "/admin/schedules/nightly_probe/run",
        &cookie,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(a.status, 303, "{}", a.text);
    let location = a.header("location").expect("location").to_owned();
    assert!(
        location.starts_with("/admin/schedules?ran=nightly_probe&job="),
        "{location}"
    );
    let page = page(&app, &location, &cookie).await;
    assert!(page.text.contains("enqueued"), "{}", page.text);
    let a = form_post(
        &app,
        "/admin/schedules/nope/run",
        &cookie,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(a.status, 404);
}

async fn transfers_are_shown_and_retried(db: TestDb) {
    let app = TestApp::new(db);
    let (cookie, csrf, key_id) = sign_in(&app).await;
    let id = crate::seed::failed_transfer(&app.engine).await;
    let list = page(&app, "/admin/transfers?status=permanently_failed", &cookie).await;
    assert!(
        list.text.contains(&format!("data-transfer=\"{id}\"")),
        "{}",
        list.text
    );
    assert!(list.text.contains("25.00 EUR"), "{}", list.text);
    let one = page(&app, &format!("/admin/transfers/{id}"), &cookie).await;
    assert_eq!(one.status, 200, "{}", one.text);
    for expected in [
        "webhook:evt_demo_payment",
        "job:9002",
        "attempts exhausted",
        "id=\"retry-transfer\"",
    ] {
        assert!(
            one.text.contains(expected),
            "{expected} missing: {}",
            one.text
        );
    }
    let findings = page(&app, "/admin/findings", &cookie).await;
    assert!(
        findings.text.contains("missing_on_stripe"),
        "{}",
        findings.text
    );

    let path = format!("/admin/transfers/{id}/retry");
    assert_eq!(
        form_post(&app, &path, &cookie, "").await.status,
        403,
        "no CSRF"
    );
    let a = form_post(&app, &path, &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(a.status, 303, "{}", a.text);
    assert_eq!(
        a.header("location"),
        Some(format!("/admin/transfers/{id}?retried=failed").as_str())
    );
    let row = jobs::transfers::get(&app.engine, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status(), jobs::transfers::TransferStatus::Failed);
    let mut conn = app.engine.db().acquire().await.unwrap();
    let trail = engine::state_machine::history(&mut conn, "seller_transfer", &id.to_string())
        .await
        .unwrap();
    assert_eq!(trail.last().unwrap().actor, format!("api_key:{key_id}"));
    drop(conn);
    // Its new payout job is listed on its page.
    let one = page(&app, &format!("/admin/transfers/{id}"), &cookie).await;
    assert!(one.text.contains("transfer_seller"), "{}", one.text);
    // A second retry is refused: it is no longer permanently failed.
    let a = form_post(&app, &path, &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(
        a.header("location"),
        Some(format!("/admin/transfers/{id}?error=not_retryable").as_str())
    );
}

async fn exports_and_deletions_are_shown(db: TestDb) {
    let app = TestApp::new(db);
    let (cookie, _, _) = sign_in(&app).await;
    let user = crate::seed::user_leaving(&app.engine, &app.jobs, "http").await;
    let a = page(&app, &format!("/admin/gdpr?user_id={user}"), &cookie).await;
    assert_eq!(a.status, 200, "{}", a.text);
    for expected in [
        "deletion requested",
        "Recovery deadline",
        "Data exports",
        "st-pending",
        "kept, credited",
    ] {
        assert!(a.text.contains(expected), "{expected} missing: {}", a.text);
    }
    assert!(
        !a.text.contains("leaving@example.com"),
        "no personal data on the page"
    );
    let recent = page(&app, "/admin/gdpr", &cookie).await;
    assert!(
        recent.text.contains("Recent export jobs"),
        "{}",
        recent.text
    );
    assert!(
        recent.text.contains(&format!("/admin/gdpr?user_id={user}")),
        "the pending deletion is listed: {}",
        recent.text
    );
    assert!(
        !recent.text.contains("st-due"),
        "not due before its deadline"
    );
    // Past the deadline it is marked due (as if asked 31 days ago: this app's clock is
    // the system's).
    sqlx::query("UPDATE users SET recovery_deadline = $1 WHERE id = $2")
        .bind(app.engine.clock().now_ms() - 24 * 3600 * 1000)
        .bind(user)
        .execute(app.engine.db())
        .await
        .unwrap();
    let later = page(&app, "/admin/gdpr", &cookie).await;
    assert!(later.text.contains("st-due"), "{}", later.text);
    assert!(
        recent.text.contains("/admin/jobs/"),
        "the export job is listed: {}",
        recent.text
    );
    let a = page(&app, "/admin/gdpr?user_id=abc", &cookie).await;
    assert!(a.text.contains("A user id is a number"), "{}", a.text);
    let a = page(&app, "/admin/gdpr?user_id=999999", &cookie).await;
    assert!(a.text.contains("No user 999999"), "{}", a.text);
}

backend_tests!(
    schema = jobs::schema::migrator;
    exports_and_deletions_are_shown,
    transfers_are_shown_and_retried,
    only_admin_keys_sign_in,
    session_cookie_is_locked_down,
    state_changes_need_the_csrf_token,
    sessions_are_shared_and_die_with_their_key,
    sign_out_ends_the_session,
    secrets_in_args_are_redacted,
    pages_answer_in_html,
    run_now_enqueues_the_schedule,
    a_new_sign_in_replaces_the_browser_s_session,
    sign_in_attempts_draw_on_the_address_s_budget,
);
