//! The dashboard end to end in a real headless Chromium, driven through chromedriver
//! (WebDriver, `fantoccini`), against the real router served on a loopback port with a real
//! engine, worker pool and scheduler on SQLite: sign in, see a failed job, retry it and
//! watch it succeed (live, without a reload), cancel a pending job, run a schedule, sign
//! out; at 1280 px and at 390 px, and in dark mode.
//!
//! With `SAVE_SCREENSHOTS=1` each page is saved to `docs/screenshots/`. Without chromedriver
//! (`/usr/bin/chromedriver`, or `CHROMEDRIVER`) the test says it is skipped; with `CI` set it
//! fails instead.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::auth::Scope;
use api::auth::keys;
use api::auth::keys::KeyCache;
use api::auth::rate_limit::Limiter;
use api::server::{self, Bound, HttpServer, Readiness};
use api::state::ApiState;
use engine::scheduler::{Every, Schedule, Scheduler};
use engine::testing::TestDb;
use engine::worker::WorkerPool;
use engine::{Actor, Backend, Clock, Job, JobError, NewJob, Outcome};
use fantoccini::{Client, ClientBuilder, Locator};
use serde::{Deserialize, Serialize};

use crate::helpers::{GENEROUS, Probe, registry, test_jobs_config};

/// A job that fails for good the first time each `run` is tried, and succeeds after: the
/// failed job an admin retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payout {
    run: String,
    seller_email: String,
    api_token: String,
    amount: i64,
}

impl Job for Payout {
    const KIND: &'static str = "seller_payout_demo";
}

static FAILED_ONCE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

const WAIT: Duration = Duration::from_secs(15);

fn chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    path.exists().then_some(path)
}

fn screenshots_dir() -> Option<PathBuf> {
    std::env::var_os("SAVE_SCREENSHOTS")
        .filter(|v| !v.is_empty() && v != "0")
        .map(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace")
                .join("docs/screenshots")
        })
}

struct Browser {
    client: Client,
    base: String,
    label: String,
    shots: Option<PathBuf>,
}

impl Browser {
    async fn open(driver: &str, base: &str, width: u32, height: u32, dark: bool) -> Self {
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={width},{height}"),
        ];
        if dark {
            args.push("--force-dark-mode".to_owned());
            args.push("--blink-settings=preferredColorScheme=0".to_owned());
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({ "args": args, "binary": chromium() }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(driver)
            .await
            .expect("a chromedriver session");
        client
            .set_window_size(width, height)
            .await
            .expect("window size");
        Self {
            client,
            base: base.to_owned(),
            label: format!("{width}{}", if dark { "-dark" } else { "" }),
            shots: screenshots_dir(),
        }
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} on {}: {e}", self.label))
            .text()
            .await
            .expect("text")
    }

    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} on {}: {e}", self.label))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clicks a button that asks for confirmation, and confirms.
    async fn click_confirmed(&self, css: &str) {
        self.click(css).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.client.accept_alert().await {
                Ok(()) => break,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("no confirmation after {css}: {e}"),
            }
        }
    }

    async fn wait_for(&self, css: &str) {
        if let Err(e) = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            let page = self.client.source().await.unwrap_or_default();
            panic!(
                "{css} never appeared on {} at {}: {e}\n{page}",
                self.label,
                self.path().await
            );
        }
    }

    /// Nothing is wider than the window (tables scroll inside their own box).
    async fn fits(&self) {
        let fits = self
            .client
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
                vec![],
            )
            .await
            .expect("script");
        assert_eq!(
            fits,
            serde_json::Value::Bool(true),
            "{} at {}: the page is wider than the window",
            self.path().await,
            self.label
        );
    }

    async fn shot(&self, name: &str) {
        self.fits().await;
        if let Some(dir) = &self.shots {
            std::fs::create_dir_all(dir).expect("screenshots dir");
            let png = self.client.screenshot().await.expect("screenshot");
            std::fs::write(dir.join(format!("{name}-{}.png", self.label)), png)
                .expect("write screenshot");
        }
    }

    async fn sign_in(&self, key: &str) {
        self.goto("/admin").await;
        assert!(
            self.path().await.starts_with("/admin/login"),
            "{}",
            self.path().await
        );
        let field = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css("#key"))
            .await
            .expect("the key field");
        field.send_keys(key).await.expect("type the key");
        let before = self.path().await;
        self.click("#sign-in").await;
        // Wait for the answer's page (the dashboard, or the refusal at /admin/login).
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.path().await == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no answer to the sign-in"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn sign_out(&self) {
        self.click("#sign-out").await;
        self.wait_for(".flash.ok").await;
        assert_eq!(self.path().await, "/admin/login?signed_out=1");
        // The session is gone: the dashboard sends us back to the sign-in page.
        self.goto("/admin/jobs").await;
        assert!(
            self.path().await.starts_with("/admin/login"),
            "{}",
            self.path().await
        );
    }
}

fn chromium() -> &'static str {
    if Path::new("/usr/bin/chromium").exists() {
        "/usr/bin/chromium"
    } else {
        "/usr/bin/chromium-browser"
    }
}

async fn start_chromedriver(path: &Path) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = tokio::process::Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return (child, format!("http://{addr}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not listen on {addr}");
}

struct Demo {
    failed: i64,
    pending: i64,
}

async fn seed(engine: &engine::Engine, run: &str) -> Demo {
    let failed = engine
        .enqueue(Payout {
            run: run.to_owned(),
            seller_email: "seller@example.com".to_owned(),
            api_token: "sk_live_DO_NOT_SHOW".to_owned(),
            amount: 1999,
        })
        .await
        .expect("enqueue")
        .id();
    // Far in the future: stays pending until cancelled.
    let later = engine.clock().now_ms() + 3_600_000;
    let pending = engine
        .enqueue(NewJob::new(Probe { fail: false }).run_at(later))
        .await
        .expect("enqueue")
        .id();
    // The worker fails the payout once, for good.
    for _ in 0..200 {
        let job = engine::admin::get_job(engine.db(), failed).await.unwrap();
        if job.job.status == engine::JobState::Failed {
            return Demo { failed, pending };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the payout job did not fail");
}

/// The whole flow at one window size.
async fn flow(
    b: &Browser,
    engine: &engine::Engine,
    jobs: &jobs::JobsConfig,
    admin_key: &str,
    read_key: &str,
    run: &str,
) {
    let demo = seed(engine, run).await;

    // A read-scope key is refused.
    b.sign_in(read_key).await;
    let refusal = b.text(".flash.error").await;
    assert!(refusal.contains("scope admin"), "{refusal}");
    assert!(b.path().await.starts_with("/admin/login"));

    b.goto("/admin/login").await;
    b.shot("login").await;
    b.sign_in(admin_key).await;
    assert_eq!(b.path().await, "/admin");
    // The failing kind comes first in the overview.
    let first = b.text("table.kinds tbody tr:first-child th").await;
    assert_eq!(first, Payout::KIND);
    b.shot("overview").await;

    // The failed job, from the overview's count, then its page.
    b.click(&format!("tr[data-kind={}] td a.bad", Payout::KIND))
        .await;
    b.wait_for(&format!("tr[data-job=\"{}\"]", demo.failed))
        .await;
    assert!(b.path().await.contains("status=failed"));
    b.shot("jobs").await;
    b.click(&format!("tr[data-job=\"{}\"] a", demo.failed))
        .await;
    b.wait_for("#job-status .st-failed").await;
    let args = b.text("#job-args").await;
    assert!(!args.contains("sk_live_DO_NOT_SHOW") && !args.contains("seller@example.com"));
    assert!(args.contains("[redacted]"), "{args}");
    let timeline = b.text("ol.timeline").await;
    assert!(timeline.contains("restricted"), "{timeline}");
    b.shot("job-failed").await;

    // Retry it and watch it succeed, live.
    b.click_confirmed("#retry").await;
    b.wait_for(".flash.ok").await;
    b.wait_for("#job-status .st-succeeded").await;
    assert!(
        b.path().await.ends_with("?done=retried"),
        "no reload after the retry: {}",
        b.path().await
    );
    b.shot("job-succeeded").await;

    // Cancel the pending one.
    b.goto("/admin/jobs?kind=probe&status=pending").await;
    b.click(&format!("tr[data-job=\"{}\"] a", demo.pending))
        .await;
    b.wait_for("#job-status .st-pending").await;
    b.click_confirmed("#cancel").await;
    b.wait_for("#job-status .st-cancelled").await;
    assert_eq!(
        engine::admin::get_job(engine.db(), demo.pending)
            .await
            .unwrap()
            .job
            .status,
        engine::JobState::Cancelled
    );

    // Run a schedule now; its job runs.
    b.goto("/admin/schedules").await;
    b.click_confirmed("#run-nightly_probe").await;
    let notice = b.text(".flash.ok").await;
    assert!(notice.contains("enqueued job #"), "{notice}");
    b.shot("schedules").await;
    b.click(".flash.ok a").await;
    b.wait_for("#job-status .st-succeeded").await;

    // A permanently failed transfer: its history, and the retry.
    let transfer = crate::seed::failed_transfer(engine).await;
    b.goto("/admin/transfers?status=permanently_failed").await;
    b.shot("transfers").await;
    b.click(&format!("tr[data-transfer=\"{transfer}\"] a"))
        .await;
    b.wait_for("#retry-transfer").await;
    b.shot("transfer").await;
    b.click_confirmed("#retry-transfer").await;
    let notice = b.text(".flash.ok").await;
    assert!(notice.contains("moved to failed"), "{notice}");

    // A user who is leaving: their export and deletion.
    let user = crate::seed::user_leaving(engine, jobs, run).await;
    b.goto(&format!("/admin/gdpr?user_id={user}")).await;
    b.wait_for("main h2").await;
    b.shot("gdpr-user").await;

    for (page, name) in [("/admin/findings", "findings"), ("/admin/gdpr", "gdpr")] {
        b.goto(page).await;
        b.wait_for("main h1").await;
        b.shot(name).await;
    }
    b.sign_out().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let Some(driver_path) = chromedriver() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromedriver is missing but CI is set: install chromium and chromium-driver");
        }
        eprintln!("skipped: no chromedriver (apt-get install chromium chromium-driver)");
        return;
    };
    let db = TestDb::with_schema(Backend::Sqlite, jobs::schema::migrator)
        .await
        .expect("sqlite");
    let media = tempfile::tempdir().expect("media");
    let work = tempfile::tempdir().expect("work");
    let jobs_config = Arc::new(test_jobs_config(media.path(), work.path()));
    let mut reg = registry(&jobs_config);
    reg.register::<Payout, _, _>(|p, _ctx| async move {
        let mut seen = FAILED_ONCE.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get_or_insert_with(HashSet::new).insert(p.run.clone()) {
            Err(JobError::permanent(
                "stripe: account_invalid: the seller's connected account is restricted",
            ))
        } else {
            Ok(Outcome::Succeeded)
        }
    });
    // Workers poll every second, not every 50 ms as in the engine's own tests: enqueues and
    // retries wake them anyway, and on SQLite each claim poll is a write that competes with
    // the pages' writes for the database lock.
    let engine = engine::Engine::builder(db.db.clone(), db.backend, db.url.clone())
        .registry(reg)
        .clock(Clock::system())
        .workers(engine::WorkerSettings {
            poll_interval: Duration::from_secs(1),
            ..engine::testing::fast_worker_settings()
        })
        .build();
    let schedules = vec![Schedule::new(
        "nightly_probe",
        Every::parse("1h").expect("every"),
        &Probe { fail: false },
    )];
    let state = ApiState {
        engine: engine.clone(),
        scheduler: Arc::new(Scheduler::new(engine.clone(), schedules)),
        limiter: Limiter::memory(GENEROUS),
        keys: KeyCache::new(Default::default()),
        http: Default::default(),
        jobs: Arc::clone(&jobs_config),
    };
    state
        .scheduler
        .register()
        .await
        .expect("register schedules");
    let workers = WorkerPool::start(&engine);
    let bound = Bound::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let base = format!("http://{}", bound.addr());
    let http = HttpServer::start(
        bound,
        server::app(Readiness::new(engine.db().clone()), state),
        Duration::from_secs(2),
    );
    let now = engine.clock().now_ms();
    let admin_key = keys::create(engine.db(), "oncall", Scope::Admin, &Actor::cli(), now)
        .await
        .expect("key")
        .key;
    let read_key = keys::create(engine.db(), "grafana", Scope::Read, &Actor::cli(), now)
        .await
        .expect("key")
        .key;

    let (mut chromedriver, driver) = start_chromedriver(&driver_path).await;
    for (width, height, run) in [(1280, 900, "wide"), (390, 844, "phone")] {
        let b = Browser::open(&driver, &base, width, height, false).await;
        flow(&b, &engine, &jobs_config, &admin_key, &read_key, run).await;
        b.client.close().await.expect("close");
    }
    // Dark mode: the overview and a job page are readable.
    for (width, height) in [(1280, 900), (390, 844)] {
        let b = Browser::open(&driver, &base, width, height, true).await;
        let dark = b
            .client
            .execute(
                "return window.matchMedia('(prefers-color-scheme: dark)').matches;",
                vec![],
            )
            .await
            .expect("script");
        b.sign_in(&admin_key).await;
        b.wait_for("table.kinds").await;
        if dark == serde_json::Value::Bool(true) {
            b.shot("overview").await;
            b.goto(&format!(
                "/admin/jobs?kind={}&status=succeeded",
                Payout::KIND
            ))
            .await;
            b.click("table.jobs tbody tr:first-child a").await;
            b.wait_for("#job-status").await;
            b.shot("job").await;
        } else {
            eprintln!("this Chromium ignores the dark-mode flags; no dark screenshots");
        }
        b.sign_out().await;
        b.client.close().await.expect("close");
    }
    let _ = chromedriver.kill().await;
    http.shutdown().await;
    workers
        .shutdown(tokio::time::Instant::now() + Duration::from_secs(2))
        .await;
}
