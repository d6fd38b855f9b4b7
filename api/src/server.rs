//! The HTTP front (poem + poem-openapi): `/health`, `/ready`, `/metrics`, the `/v1` routes
//! ([`crate::routes`]), the OpenAPI document at `/openapi.json` and Swagger UI at `/docs`.
//! Every route is declared through [`OpenApiService`], so each one the front grows is
//! documented with it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use engine::Db;
use poem::listener::TcpAcceptor;
use poem::{Endpoint, EndpointExt, Route, Server};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi, OpenApiService};

use crate::problem::{self, Problem};
use crate::routes::{self, ApiTags};
use crate::spec::RouteTemplates;
use crate::state::ApiState;
use crate::wire_errors::ProblemAcceptor;
use crate::{auth, request_id};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long `/ready` waits for the database before calling it down.
pub const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

/// What `/ready` checks: the database answers, and every registered part of the process
/// (worker pool, scheduler) is alive.
#[derive(Clone)]
pub struct Readiness {
    db: Db,
    parts: Vec<(&'static str, Probe)>,
}

impl Readiness {
    /// Checks `db` (with [`engine::db::ping`]) and nothing else yet.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            parts: Vec::new(),
        }
    }

    /// Also checks `name`, ready while `alive` returns true.
    pub fn part(
        mut self,
        name: &'static str,
        alive: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        self.parts.push((name, Arc::new(alive)));
        self
    }

    /// Runs every check.
    pub async fn check(&self) -> ReadyBody {
        let mut checks = BTreeMap::new();
        let database =
            match tokio::time::timeout(DB_CHECK_TIMEOUT, engine::db::ping(&self.db)).await {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(e)) => format!("error: {}", engine::job::error_chain(&e)),
                Err(_) => format!("error: no answer within {DB_CHECK_TIMEOUT:?}"),
            };
        checks.insert("database".to_owned(), database);
        for (name, alive) in &self.parts {
            let state = if alive() { "ok" } else { "stopped" };
            checks.insert((*name).to_owned(), state.to_owned());
        }
        let failing: Vec<String> = checks
            .iter()
            .filter(|(_, state)| *state != "ok")
            .map(|(name, _)| name.clone())
            .collect();
        ReadyBody {
            disabled: BTreeMap::new(),
            status: if failing.is_empty() {
                "ok"
            } else {
                "unavailable"
            }
            .to_owned(),
            failing,
            checks,
        }
    }
}

/// `/health`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct HealthBody {
    /// Always `ok`: the process is up and serving HTTP.
    pub status: String,
}

/// `/ready`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct ReadyBody {
    /// `ok` when every part is ready, else `unavailable`.
    pub status: String,
    /// The parts that are not ready (empty when ready).
    pub failing: Vec<String>,
    /// Each part (`database`, `workers`, `scheduler`, and `redis` when the rate limits are
    /// kept there) with `ok` or what is wrong.
    pub checks: BTreeMap<String, String>,
    /// What this configuration switches off, with why (`stripe_jobs` without
    /// `STRIPE_SECRET_KEY`, `stripe_webhook` without `STRIPE_WEBHOOK_SECRET`, …). The
    /// process is ready without them; their jobs wait for a process that runs them.
    pub disabled: BTreeMap<String, String>,
}

/// `/ready`'s responses.
#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers and every part of the process runs.
    #[oai(status = 200)]
    Ready(Json<ReadyBody>),
    /// Something is down; `failing` names it.
    #[oai(status = 503)]
    NotReady(Json<ReadyBody>),
}

/// `/metrics`' responses.
#[derive(ApiResponse)]
pub enum MetricsResponse {
    /// Prometheus text exposition.
    #[oai(status = 200, content_type = "text/plain; version=0.0.4")]
    Metrics(PlainText<String>),
    /// `METRICS_TOKEN` is set and the request's `Authorization: Bearer` is missing or not
    /// it (`unauthorized`).
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(
        Json<Problem>,
        /// `Bearer`.
        #[oai(header = "WWW-Authenticate")]
        String,
    ),
    /// The gauges could not be read from the database (`internal`).
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
}

/// The operations routes.
pub struct OpsApi {
    readiness: Readiness,
    state: ApiState,
    gauges: Arc<crate::metrics::GaugeCache>,
}

#[OpenApi(tag = "ApiTags::Operations")]
impl OpsApi {
    /// Liveness: 200 while the process serves HTTP.
    #[oai(path = "/health", method = "get")]
    async fn health(&self) -> Json<HealthBody> {
        Json(HealthBody {
            status: "ok".to_owned(),
        })
    }

    /// Readiness: 200 when the database (and the rate limits' Redis, when set) answers and
    /// the workers and scheduler run, else 503 naming what failed; `disabled` lists what the
    /// configuration switches off.
    #[oai(path = "/ready", method = "get")]
    async fn ready(&self) -> ReadyResponse {
        let mut body = self.readiness.check().await;
        // The rate limits' Redis, when they are kept there: every `/v1` call needs it.
        if let Some(redis) = self.state.limiter.health().await {
            let state = match redis {
                Ok(()) => "ok".to_owned(),
                Err(e) => {
                    body.failing.push("redis".to_owned());
                    body.status = "unavailable".to_owned();
                    format!("error: {e}")
                }
            };
            body.checks.insert("redis".to_owned(), state);
        }
        for (part, why) in self.state.jobs.payments.disabled() {
            body.disabled.insert(part.to_owned(), why.to_owned());
        }
        if body.failing.is_empty() {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::NotReady(Json(body))
        }
    }

    /// Prometheus metrics: the engine's, jobs by kind × state and queue depth (read from
    /// the database at most every 5 s), and HTTP requests by route × status. With
    /// `METRICS_TOKEN` set, send `Authorization: Bearer <token>`.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self, req: &poem::Request) -> MetricsResponse {
        if let Some(token) = &self.state.http.metrics_token
            && !bearer_matches(req, token)
        {
            return MetricsResponse::Unauthorized(
                Json(Problem::new(
                    poem::http::StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "/metrics needs Authorization: Bearer <METRICS_TOKEN>",
                )),
                "Bearer".to_owned(),
            );
        }
        match crate::metrics::render(&self.state.engine, &self.gauges).await {
            Ok(text) => MetricsResponse::Metrics(PlainText(text)),
            Err(e) => {
                tracing::error!(error = %engine::job::error_chain(&e), "reading metrics failed");
                MetricsResponse::Internal(Json(Problem::internal()))
            }
        }
    }
}

/// True when `req` carries `Authorization: Bearer <token>` (compared in constant time).
fn bearer_matches(req: &poem::Request, token: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    req.headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|presented| bool::from(presented.trim().as_bytes().ct_eq(token.as_bytes())))
}

/// Request bodies larger than this are refused (413).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Every route's API: the operations routes, then `/v1` ([`routes::V1`]).
pub type Apis = (OpsApi, routes::V1);

/// The OpenAPI service of every route.
pub fn openapi(readiness: Readiness, state: &ApiState) -> OpenApiService<Apis, ()> {
    let ops = OpsApi {
        readiness,
        state: state.clone(),
        gauges: Arc::new(crate::metrics::GaugeCache::new(crate::metrics::GAUGE_TTL)),
    };
    OpenApiService::new(
        (ops, routes::v1(state)),
        "veza-jobs",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "veza-jobs: the durable job engine of the Veza marketplace.\n\n\
             Every `/v1` route needs an API key in the `X-API-Key` header (scopes: read → GET, \
             write → also POST/PUT/DELETE outside admin routes, admin → everything) and draws on \
             the key's hourly read or write budget (`X-RateLimit-*` headers; 429 with \
             `Retry-After` when spent). Errors are `application/problem+json`.",
    )
}

/// The whole HTTP application: `/health`, `/ready`, `/metrics`, `/v1/…`, `/openapi.json`
/// (the finished document of [`crate::spec`]) and `/docs`, behind (outermost first) the
/// request id, problem documents, HTTP metrics, the body limit, the `/v1` key check and
/// rate limit, and the refusal of NUL bytes.
pub fn app(readiness: Readiness, state: ApiState) -> impl Endpoint + 'static {
    let service = openapi(readiness, &state);
    let generated = service.spec();
    let spec = crate::spec::finish(&generated);
    // Swagger UI embeds the document: the finished one, in place of the generated one.
    let docs_html = service.swagger_ui_html().replacen(&generated, &spec, 1);
    // The dashboard's pages are labelled by their templates too (`/admin/jobs/{id}`).
    let extra: Vec<(&str, &[&str])> = [("/openapi.json", &["GET"][..]), ("/docs", &["GET"][..])]
        .into_iter()
        .chain(crate::admin::ROUTE_TEMPLATES.iter().map(|t| (*t, &[][..])))
        .collect();
    let templates = RouteTemplates::from_spec(&spec, &extra);
    // Installed before any request so that the engine's metrics are recorded from the start.
    let _ = crate::metrics::handle();
    let metrics_templates = templates.clone();
    Route::new()
        .at(
            "/openapi.json",
            poem::get(poem::endpoint::make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json")
                    .body(spec.clone())
            })),
        )
        .at(
            "/docs",
            poem::get(poem::endpoint::make_sync(move |_| {
                poem::web::Html(docs_html.clone())
            })),
        )
        .nest("/admin", crate::admin::routes())
        .nest("/", service)
        .with(poem::middleware::CatchPanic::new())
        .around(crate::nul_bytes::nul_middleware)
        .around(auth::auth_middleware)
        .around(|next, req| crate::body_limit::body_limit(next, req, BODY_LIMIT))
        .data(state)
        .around(move |next, req| {
            let templates = metrics_templates.clone();
            async move { crate::metrics::http_metrics_middleware(next, req, &templates).await }
        })
        .around(move |next, req| {
            let templates = templates.clone();
            async move { problem::problem_middleware(next, req, &templates).await }
        })
        .around(request_id::request_id_middleware)
}

/// A bound listener, not yet serving.
pub struct Bound {
    acceptor: ProblemAcceptor<TcpAcceptor>,
    addr: SocketAddr,
}

impl Bound {
    /// Binds `addr` now, so that an address in use is reported before anything starts.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            acceptor: ProblemAcceptor(TcpAcceptor::from_tokio(listener)?),
            addr,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The running HTTP server.
pub struct HttpServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl HttpServer {
    /// Serves `endpoint` on `bound`. At [`HttpServer::shutdown`] it stops accepting and lets
    /// in-flight requests finish for up to `grace`.
    pub fn start(bound: Bound, endpoint: impl Endpoint + 'static, grace: Duration) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        tracing::info!(addr = %bound.addr, "HTTP server listening");
        let task = tokio::spawn(async move {
            Server::new_with_acceptor(bound.acceptor)
                .run_with_graceful_shutdown(
                    endpoint,
                    async move {
                        let _ = stopped.await;
                    },
                    Some(grace),
                )
                .await
        });
        Self { stop, task }
    }

    /// Stops accepting connections and waits for in-flight requests.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => tracing::info!("HTTP server stopped"),
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server failed"),
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        }
    }
}
