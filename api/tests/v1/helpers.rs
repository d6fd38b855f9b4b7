use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use api::auth::Scope;
use api::auth::keys;
use api::auth::keys::KeyCache;
use api::auth::rate_limit::{Limiter, Limits};
use api::server::{self, Bound, HttpServer, Readiness};
use api::state::{ApiState, HttpSettings};
use engine::config::Env;
use engine::scheduler::{Every, Schedule, Scheduler};
use engine::testing::TestDb;
use engine::{Actor, Clock, Engine, Job, JobError, Outcome, Registry};
use jobs::JobsConfig;
use poem::endpoint::BoxEndpoint;
use poem::test::{TestClient, TestResponse};
use poem::{EndpointExt, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job kind for the tests: fails for good when `fail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Probe {
    pub(crate) fail: bool,
}

impl Job for Probe {
    const KIND: &'static str = "probe";
}

/// The registry of the tests: [`Probe`], and every real job kind of `jobs` (the Stripe
/// ones only when `jobs.payments.stripe` is set).
pub(crate) fn registry(jobs: &JobsConfig) -> Registry {
    let mut r = Registry::new();
    jobs::register_all(&mut r, jobs);
    r.register::<Probe, _, _>(|p, _ctx| async move {
        if p.fail {
            Err(JobError::permanent("the probe was told to fail"))
        } else {
            Ok(Outcome::Succeeded)
        }
    });
    r
}

pub(crate) const GENEROUS: Limits = Limits {
    reads_per_hour: NonZeroU32::new(100_000).unwrap(),
    writes_per_hour: NonZeroU32::new(100_000).unwrap(),
    anonymous_per_hour: NonZeroU32::new(100_000).unwrap(),
};

/// The job kinds' settings of a test: `MEDIA_ROOT` in `media`, exports and the e-mail
/// outbox in `work`, 16 and 32 px thumbnails, a webhook secret `whsec_test`, no Stripe
/// client, Redis, OpenSearch or SMTP.
pub(crate) fn test_jobs_config(media: &Path, work: &Path) -> JobsConfig {
    let media = media.to_str().expect("utf-8 path");
    let exports = work.join("exports");
    let outbox = work.join("outbox");
    let mut env = Env::from_pairs(&[
        ("MEDIA_ROOT", media),
        ("EXPORT_DIR", exports.to_str().expect("utf-8 path")),
        ("MAIL_OUTBOX_DIR", outbox.to_str().expect("utf-8 path")),
        ("THUMBNAIL_SIZES", "16,32"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_test"),
    ]);
    let config = JobsConfig::read(&mut env);
    env.finish().expect("the test configuration is valid");
    config
}

fn state(
    engine: &Engine,
    limiter: Limiter,
    jobs: &Arc<JobsConfig>,
    http: &HttpSettings,
) -> ApiState {
    let schedules = vec![Schedule::new(
        "nightly_probe",
        Every::parse("1h").expect("every"),
        &Probe { fail: false },
    )];
    ApiState {
        engine: engine.clone(),
        scheduler: Arc::new(Scheduler::new(engine.clone(), schedules)),
        limiter,
        keys: KeyCache::new(http.api_key_cache_ttl),
        http: http.clone(),
        jobs: Arc::clone(jobs),
    }
}

fn router(
    engine: &Engine,
    limiter: Limiter,
    jobs: &Arc<JobsConfig>,
    http: &HttpSettings,
) -> TestClient<BoxEndpoint<'static, Response>> {
    let app = server::app(
        Readiness::new(engine.db().clone()),
        state(engine, limiter, jobs, http),
    );
    TestClient::new(app.map_to_response().boxed())
}

pub(crate) struct TestApp {
    /// The limiter the router was built with (for [`TestApp::serve`]).
    limiter: Limiter,
    /// The HTTP settings the router was built with.
    http: HttpSettings,
    pub(crate) client: TestClient<BoxEndpoint<'static, Response>>,
    pub(crate) engine: Engine,
    pub(crate) db: Arc<TestDb>,
    /// `MEDIA_ROOT` of the thumbnail routes and jobs.
    pub(crate) media: Arc<tempfile::TempDir>,
    /// Holds `EXPORT_DIR` (`exports/`) and `MAIL_OUTBOX_DIR` (`outbox/`).
    pub(crate) work: Arc<tempfile::TempDir>,
    /// The job kinds' settings the routes and the registry use.
    pub(crate) jobs: Arc<JobsConfig>,
}

impl TestApp {
    pub(crate) fn new(db: TestDb) -> Self {
        Self::build(db, Limiter::memory(GENEROUS), Clock::system(), |_| {})
    }

    pub(crate) fn with_limiter(db: TestDb, limiter: Limiter) -> Self {
        Self::build(db, limiter, Clock::system(), |_| {})
    }

    /// A test app on `clock` whose job settings [`test_jobs_config`] gave are changed by
    /// `configure` first (a Stripe client, a webhook secret, a short recovery period…).
    pub(crate) fn build(
        db: TestDb,
        limiter: Limiter,
        clock: Clock,
        configure: impl FnOnce(&mut JobsConfig),
    ) -> Self {
        let media = tempfile::tempdir().expect("media root");
        let work = tempfile::tempdir().expect("work dir");
        let mut config = test_jobs_config(media.path(), work.path());
        configure(&mut config);
        let jobs = Arc::new(config);
        let engine = db.engine(registry(&jobs), clock);
        // The key cache on, as in production, and long enough that a revoked key's refusal
        // can only come from the revocation forgetting it.
        let http = HttpSettings {
            api_key_cache_ttl: Duration::from_secs(60),
            ..HttpSettings::default()
        };
        Self {
            client: router(&engine, limiter.clone(), &jobs, &http),
            limiter,
            http,
            engine,
            db: Arc::new(db),
            media: Arc::new(media),
            work: Arc::new(work),
            jobs,
        }
    }

    /// Another API "process" on the same database, with its own limiter.
    pub(crate) fn another(&self, limiter: Limiter) -> Self {
        let engine = self
            .db
            .engine(registry(&self.jobs), self.engine.clock().clone());
        Self {
            client: router(&engine, limiter.clone(), &self.jobs, &self.http),
            limiter,
            http: self.http.clone(),
            engine,
            db: Arc::clone(&self.db),
            media: Arc::clone(&self.media),
            work: Arc::clone(&self.work),
            jobs: Arc::clone(&self.jobs),
        }
    }

    /// The same application served over real HTTP on `127.0.0.1:<random port>`, for
    /// clients outside the process; stop it with [`HttpServer::shutdown`].
    pub(crate) async fn serve(&self) -> (SocketAddr, HttpServer) {
        let bound = Bound::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a port");
        let addr = bound.addr();
        let app = server::app(
            Readiness::new(self.engine.db().clone()),
            state(&self.engine, self.limiter.clone(), &self.jobs, &self.http),
        );
        let server = HttpServer::start(bound, app, Duration::from_secs(5));
        (addr, server)
    }

    /// The same app with the HTTP front's `http` settings (a metrics token…).
    pub(crate) fn with_http(mut self, http: HttpSettings) -> Self {
        self.client = router(&self.engine, self.limiter.clone(), &self.jobs, &http);
        self.http = http;
        self
    }

    /// A new key of `scope` (plaintext).
    pub(crate) async fn key(&self, scope: Scope) -> String {
        keys::create(
            self.engine.db(),
            "test",
            scope,
            &Actor::cli(),
            self.engine.clock().now_ms(),
        )
        .await
        .expect("create key")
        .key
    }

    pub(crate) async fn enqueue(&self, fail: bool) -> i64 {
        self.engine
            .enqueue(Probe { fail })
            .await
            .expect("enqueue")
            .id()
    }
}

/// Status, headers and body (JSON, or a string when not JSON) of a response.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: poem::http::HeaderMap,
    pub(crate) body: Value,
    pub(crate) text: String,
}

impl Answer {
    pub(crate) async fn of(resp: TestResponse) -> Self {
        let resp = resp.0;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.into_body().into_string().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        Self {
            status,
            headers,
            body,
            text,
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem document of `status` and `kind`.
    pub(crate) fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(self.body["type"], kind, "{}", self.text);
        assert_eq!(self.body["status"], status, "{}", self.text);
        assert!(self.body["title"].is_string(), "{}", self.text);
        assert!(self.body["detail"].is_string(), "{}", self.text);
    }

    /// [`Answer::assert_problem`], whose `detail` says `words`.
    pub(crate) fn assert_problem_saying(&self, status: u16, kind: &str, words: &str) {
        self.assert_problem(status, kind);
        let detail = self.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(words), "{detail:?} does not say {words:?}");
    }
}

pub(crate) async fn get(app: &TestApp, path: &str, key: Option<&str>) -> Answer {
    let mut req = app.client.get(path);
    if let Some(key) = key {
        req = req.header("X-API-Key", key);
    }
    Answer::of(req.send().await).await
}

pub(crate) async fn post(
    app: &TestApp,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Answer {
    send(app, "POST", path, key, body).await
}

pub(crate) async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let method: poem::http::Method = method.parse().expect("method");
    let mut req = app.client.request(method, path);
    if let Some(key) = key {
        req = req.header("X-API-Key", key);
    }
    if let Some(body) = body {
        req = req.body_json(&body);
    }
    Answer::of(req.send().await).await
}
