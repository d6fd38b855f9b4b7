//! Everything built from the configuration: the engine with every job kind, the scheduler,
//! and the long-running services of `serve` and `worker` with their graceful shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use anyhow::Context as _;
use engine::scheduler::{Scheduler, SchedulerHandle};
use engine::shutdown::{ShutdownManager, ShutdownReport};
use engine::worker::WorkerPool;
use engine::{Engine, Registry};

use crate::auth::keys::KeyCache;
use crate::auth::rate_limit::{Limiter, RedisLimiter};
use crate::config::Config;
use crate::state::ApiState;

/// The Redis key prefix of the rate-limit counters.
pub const RATE_LIMIT_PREFIX: &str = "veza:ratelimit";
use crate::server::{self, Bound, HttpServer, Readiness};

/// The engine and the configuration it was built from.
#[derive(Clone)]
pub struct App {
    /// The configuration.
    pub config: Config,
    /// The engine, with every job kind registered.
    pub engine: Engine,
}

impl App {
    /// Opens the database and builds the engine with every job kind of [`jobs`].
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let url = &config.engine.database_url;
        let (db, backend) = engine::db::connect(url, config.engine.max_connections)
            .await
            .with_context(|| format!("cannot open the database {}", engine::db::redact(url)))?;
        let mut registry = Registry::new();
        jobs::register_all(&mut registry, &config.jobs);
        let engine = Engine::builder(db, backend, url.clone())
            .registry(registry)
            .workers(config.engine.workers.clone())
            .retention(config.engine.retention)
            .build();
        Ok(Self { config, engine })
    }

    /// Applies the migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        jobs::schema::migrate(self.engine.db(), self.engine.backend())
            .await
            .context("migrating the database failed")?;
        tracing::info!(backend = self.engine.backend().name(), "database migrated");
        Ok(())
    }

    /// Closes the pool (on SQLite, this checkpoints the WAL into the database file).
    pub async fn close(&self) {
        self.engine.db().close().await;
    }

    /// The scheduler of every schedule this configuration enables
    /// ([`jobs::schedules_for`]: the payments schedules only with Stripe configured).
    pub fn scheduler(&self) -> Scheduler {
        Scheduler::new(self.engine.clone(), jobs::schedules_for(&self.config.jobs))
    }

    /// What the HTTP routes share: the engine, the scheduler and the rate limiter (in Redis
    /// when `REDIS_URL` is set, so that every API process draws on one budget per key).
    pub async fn api_state(&self) -> anyhow::Result<ApiState> {
        let limits = self.config.rate_limits;
        let limiter = match &self.config.jobs.gdpr.erasure.redis_url {
            Some(url) => RedisLimiter::connect(url, RATE_LIMIT_PREFIX, limits)
                .await
                .context("cannot connect to REDIS_URL for the rate limits")?
                .into(),
            None => Limiter::memory(limits),
        };
        crate::admin::configure(self.config.admin);
        Ok(ApiState {
            engine: self.engine.clone(),
            scheduler: Arc::new(self.scheduler()),
            limiter,
            keys: KeyCache::new(self.config.http.api_key_cache_ttl),
            http: self.config.http.clone(),
            jobs: Arc::new(self.config.jobs.clone()),
        })
    }

    /// `serve` (with `http`) or `worker`: migrates, starts the workers, the scheduler and,
    /// with `http`, the HTTP server; waits for `signal`; then stops them all within the
    /// configured budgets.
    pub async fn run(&self, http: bool, signal: Signal) -> anyhow::Result<ShutdownReport> {
        self.migrate().await?;
        self.warn_disabled(http);
        // Bind before starting anything: an address in use stops the process cleanly.
        let bound = if http {
            let addr = self.config.http_addr;
            let bound = Bound::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            Some((bound, self.api_state().await?))
        } else {
            None
        };
        let manager = ShutdownManager::new();

        let workers = slot(WorkerPool::start(&self.engine));
        let stop = Arc::clone(&workers);
        manager.register(
            "workers",
            Box::new(move |deadline| {
                Box::pin(async move {
                    if let Some(pool) = take(&stop) {
                        pool.shutdown(deadline).await;
                    }
                })
            }),
        )?;

        let scheduler = slot(self.scheduler().start());
        let stop = Arc::clone(&scheduler);
        manager.register(
            "scheduler",
            Box::new(move |_deadline| {
                Box::pin(async move {
                    if let Some(handle) = take(&stop) {
                        handle.shutdown().await;
                    }
                })
            }),
        )?;

        if let Some((bound, state)) = bound {
            let readiness = Readiness::new(self.engine.db().clone())
                .part("workers", move || alive(&workers, WorkerPool::is_alive))
                .part("scheduler", move || {
                    alive(&scheduler, SchedulerHandle::is_alive)
                });
            let server = HttpServer::start(
                bound,
                server::app(readiness, state),
                self.config.engine.shutdown_service_timeout,
            );
            manager.register(
                "http",
                Box::new(move |_deadline| Box::pin(server.shutdown())),
            )?;
        }

        tracing::info!(
            worker = %self.engine.workers().worker_id,
            database = %engine::db::redact(self.engine.database_url()),
            "veza-jobs running; SIGTERM or SIGINT stops it"
        );
        signal.await;
        tracing::info!("signal received; shutting down");
        let report = manager
            .shutdown(
                self.config.engine.shutdown_service_timeout,
                self.config.engine.shutdown_timeout,
            )
            .await;
        Ok(report)
    }

    /// Says once, at the start of `serve` or `worker`, what this configuration switches off
    /// (the list `/ready` shows under `disabled`), and that export links die with the
    /// process without `EXPORT_SIGNING_KEY`. Only the processes that run jobs say it: the
    /// other commands build the same registry and would repeat it on every call.
    fn warn_disabled(&self, http: bool) {
        for (part, why) in self.config.jobs.payments.disabled() {
            // Without HTTP there is no webhook to switch off.
            if http || part != "stripe_webhook" {
                tracing::warn!(part, "{why}");
            }
        }
        if !self.config.export_signing_key_set {
            tracing::warn!(
                "EXPORT_SIGNING_KEY is unset: export download links are signed with a random key \
                 and work only until this process stops, and only here; set it, the same in every process"
            );
        }
    }
}

type Slot<T> = Arc<Mutex<Option<T>>>;

fn slot<T>(value: T) -> Slot<T> {
    Arc::new(Mutex::new(Some(value)))
}

fn take<T>(slot: &Slot<T>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// False once the service was taken for shutdown.
fn alive<T>(slot: &Slot<T>, is_alive: impl Fn(&T) -> bool) -> bool {
    slot.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .is_some_and(is_alive)
}

/// SIGTERM/SIGINT ([`engine::shutdown::signal`]) as a future, with its handlers
/// installed as soon as this is created: a signal that arrives while the process is still
/// starting is kept, instead of killing the process before its services can be stopped.
/// Once received, it stays ready.
pub struct Signal {
    pending: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Signal {
    /// Installs the handlers.
    pub async fn install() -> Self {
        let mut signal = Self {
            pending: Some(Box::pin(engine::shutdown::signal())),
        };
        // The first poll installs the handlers.
        let _ = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut signal).poll(cx))).await;
        signal
    }
}

impl Future for Signal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(pending) = self.pending.as_mut() else {
            return Poll::Ready(());
        };
        ready!(pending.as_mut().poll(cx));
        self.pending = None;
        Poll::Ready(())
    }
}
