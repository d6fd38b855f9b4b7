//! `/metrics`: Prometheus text from `metrics-exporter-prometheus`. It holds the engine's
//! metrics (see `engine::metrics`), gauges read from `engine::admin::stats` at most once
//! per [`GAUGE_TTL`] whatever the scrape rate ([`GaugeCache`]: a scrape costs no database
//! work within that window, so anyone who can reach `/metrics` cannot make the database
//! count the jobs table at will), and HTTP requests by route template × status from
//! [`http_metrics_middleware`]. With `METRICS_TOKEN` set, a scrape needs
//! `Authorization: Bearer <token>`.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `veza_jobs` | gauge | `kind`, `status` |
//! | `veza_queue_depth` | gauge | `kind`: pending + retrying |
//! | `veza_queue_oldest_pending_age_seconds` | gauge | `kind` |
//! | `veza_reconciliation_open_findings` | gauge | none: transfers whose row and Stripe disagree |
//! | `veza_http_requests_total` | counter | `method` (`other` for a method HTTP does not define), `route` (the spec's template, `unmatched` otherwise), `status` |

use std::sync::OnceLock;
use std::time::Duration;

use engine::{Engine, Millis};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use poem::{Endpoint, IntoResponse, Request, Response};

use crate::spec::RouteTemplates;

/// Jobs by kind and state.
pub const JOBS: &str = "veza_jobs";
/// Jobs waiting (pending + retrying) by kind.
pub const QUEUE_DEPTH: &str = "veza_queue_depth";
/// The oldest due job's wait by kind.
pub const OLDEST_PENDING_AGE: &str = "veza_queue_oldest_pending_age_seconds";
/// Open reconciliation findings (ledger and Stripe disagree): alert when above zero.
pub const OPEN_FINDINGS: &str = "veza_reconciliation_open_findings";
/// HTTP requests by method, route and status.
pub const HTTP_REQUESTS: &str = "veza_http_requests_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use; `None` when another recorder
/// was installed first (then `/metrics` only has what this handle sees: nothing).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "no Prometheus recorder: /metrics will be empty");
                None
            }
        })
        .as_ref()
}

/// How long the gauges read from the database are served before they are read again.
pub const GAUGE_TTL: Duration = Duration::from_secs(5);

/// When the gauges were last read from the database: they are read again only once they
/// are older than the cache's lifetime, by the engine's clock. Concurrent scrapes wait for
/// one read instead of each running it.
pub struct GaugeCache {
    ttl_ms: Millis,
    read_at: tokio::sync::Mutex<Option<Millis>>,
}

impl GaugeCache {
    /// A cache whose gauges live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl_ms: engine::clock::duration_ms(ttl),
            read_at: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads the gauges from the database unless that was done less than the lifetime ago;
    /// true when it read them. A failed read is tried again at the next scrape.
    pub async fn refresh(&self, engine: &Engine) -> Result<bool, engine::Error> {
        let mut read_at = self.read_at.lock().await;
        let now = engine.clock().now_ms();
        if read_at.is_some_and(|at| now >= at && now - at < self.ttl_ms) {
            return Ok(false);
        }
        read_gauges(engine).await?;
        *read_at = Some(now);
        Ok(true)
    }
}

/// Refreshes the gauges (through `cache`) and renders every metric.
pub async fn render(engine: &Engine, cache: &GaugeCache) -> Result<String, engine::Error> {
    let Some(handle) = handle() else {
        return Ok(String::new());
    };
    cache.refresh(engine).await?;
    Ok(handle.render())
}

/// Reads the gauges from the database: one pass over the jobs by kind and state, and the
/// open reconciliation findings.
async fn read_gauges(engine: &Engine) -> Result<(), engine::Error> {
    let stats = engine::admin::stats(engine.db(), engine.clock().now_ms()).await?;
    for kind in &stats {
        for (status, count) in &kind.counts {
            metrics::gauge!(JOBS, "kind" => kind.kind.clone(), "status" => *status)
                .set(*count as f64);
        }
        let depth = kind.counts.get("pending").copied().unwrap_or(0)
            + kind.counts.get("retrying").copied().unwrap_or(0);
        metrics::gauge!(QUEUE_DEPTH, "kind" => kind.kind.clone()).set(depth as f64);
        metrics::gauge!(OLDEST_PENDING_AGE, "kind" => kind.kind.clone())
            .set(kind.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
    }
    // Read from the table, so it is right whichever process ran reconcile_transfers.
    let open = jobs::reconcile_transfers::count_open_findings(engine.db())
        .await
        .map_err(engine::Error::Database)?;
    metrics::gauge!(OPEN_FINDINGS).set(open as f64);
    Ok(())
}

/// The `method` label: one of the methods HTTP defines, else `other`. The raw method is
/// the client's to choose (any token, of any length), so it would let anyone create
/// series without bound.
pub fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    static KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    KNOWN
        .iter()
        .find(|m| *m == method)
        .map_or("other", Method::as_str)
}

/// Counts each request by method, route template and status.
pub async fn http_metrics_middleware<E: Endpoint>(
    next: E,
    req: Request,
    templates: &RouteTemplates,
) -> poem::Result<Response> {
    let route = templates.route_of(req.uri().path());
    let method = method_label(req.method());
    let resp = match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(e) => e.into_response(),
    };
    metrics::counter!(
        HTTP_REQUESTS,
        "method" => method,
        "route" => route,
        "status" => resp.status().as_u16().to_string()
    )
    .increment(1);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_http_are_labelled_other() {
        assert_eq!(method_label(&poem::http::Method::GET), "GET");
        assert_eq!(method_label(&poem::http::Method::TRACE), "TRACE");
        let long: poem::http::Method = "X".repeat(3000).parse().expect("a token");
        assert_eq!(method_label(&long), "other");
        let custom: poem::http::Method = "PROPFIND".parse().expect("a token");
        assert_eq!(method_label(&custom), "other");
    }
}
