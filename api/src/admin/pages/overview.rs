//! The overview: per job kind, counts by status, the oldest pending job's wait and the last
//! hour's attempts (a chart), failing kinds first; refreshed live.

use std::collections::BTreeMap;

use engine::admin::{self, KindStats};
use engine::{Db, Millis};
use maud::{Markup, html};
use poem::Request;
use poem::web::{Data, Html};
use sqlx::Row;

use crate::admin::session::Session;
use crate::admin::view::{self, Nav};
use crate::admin::{internal, is_fragment};
use crate::state::ApiState;

/// The chart's bars: 12 of 5 minutes.
const BUCKETS: usize = 12;
const BUCKET_MS: i64 = 5 * 60_000;
const HOUR_MS: i64 = 3_600_000;

/// Attempts finished in one bar: ended well (succeeded, skipped) or not (retrying, failed,
/// lease expired). Released attempts (shutdown) are neither.
#[derive(Debug, Clone, Copy, Default)]
struct Bar {
    ok: i64,
    failed: i64,
}

/// Attempts finished over the last hour per kind, in [`BUCKETS`] bars.
///
/// (`engine::admin::throughput` counts the same attempts without bars, for `/v1/queues`;
/// this read, of the same view through the same indexes, is the dashboard's own, for the
/// chart.)
async fn throughput(db: &Db, now: Millis) -> Result<BTreeMap<String, [Bar; BUCKETS]>, sqlx::Error> {
    let since = now - HOUR_MS;
    let rows = sqlx::query(
        "SELECT kind, outcome, (finished_at - $1) / $2 AS bucket, COUNT(*) \
         FROM job_attempts_all WHERE finished_at >= $1 GROUP BY kind, outcome, bucket",
    )
    .bind(since)
    .bind(BUCKET_MS)
    .fetch_all(db)
    .await?;
    let mut out: BTreeMap<String, [Bar; BUCKETS]> = BTreeMap::new();
    for r in rows {
        let kind: String = r.try_get(0)?;
        let outcome: Option<String> = r.try_get(1)?;
        let bucket: i64 = r.try_get(2)?;
        let count: i64 = r.try_get(3)?;
        let bar = &mut out.entry(kind).or_default()[bucket.clamp(0, BUCKETS as i64 - 1) as usize];
        match outcome.as_deref() {
            Some("succeeded" | "skipped") => bar.ok += count,
            Some("released") | None => {}
            Some(_) => bar.failed += count,
        }
    }
    Ok(out)
}

/// The stacked bar chart of the last hour, as inline SVG (numbers only, no text input).
fn chart(bars: &[Bar; BUCKETS]) -> Markup {
    let (w, h, gap) = (600.0_f64, 120.0_f64, 6.0_f64);
    let max = bars
        .iter()
        .map(|b| b.ok + b.failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bw = w / BUCKETS as f64 - gap;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" preserveAspectRatio=\"none\" role=\"img\" \
         aria-label=\"attempts finished per 5 minutes over the last hour, at most {}\">",
        max as i64
    );
    svg.push_str(&format!(
        "<line class=\"axis\" x1=\"0\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\"/>"
    ));
    for (i, b) in bars.iter().enumerate() {
        let x = i as f64 * (bw + gap) + gap / 2.0;
        let ok_h = b.ok as f64 / max * (h - 4.0);
        let fail_h = b.failed as f64 / max * (h - 4.0);
        let minutes_ago = (BUCKETS - i) * 5;
        svg.push_str(&format!(
            "<g><title>{}–{} min ago: {} ok, {} failed</title>\
             <rect class=\"ok\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{ok_h:.1}\"/>\
             <rect class=\"failed\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{fail_h:.1}\"/></g>",
            minutes_ago,
            minutes_ago - 5,
            b.ok,
            b.failed,
            h - ok_h,
            h - ok_h - fail_h,
        ));
    }
    svg.push_str("</svg>");
    // The labels are HTML around the stretched SVG, so that text keeps its shape.
    html! {
        div.chart-box {
            span.chart-max { (max as i64) }
            (view::trusted(svg))
            div.chart-axis { span { "-60 min" } span { "-30 min" } span { "now" } }
        }
    }
}

fn count(s: &KindStats, status: &str) -> i64 {
    s.counts.get(status).copied().unwrap_or(0)
}

/// The live part of the page.
async fn content(state: &ApiState) -> poem::Result<Markup> {
    let db = state.engine.db();
    let now = state.engine.clock().now_ms();
    let mut stats = admin::stats(db, now)
        .await
        .map_err(|e| internal("reading the queue stats", &e))?;
    let done = throughput(db, now)
        .await
        .map_err(|e| internal("reading the throughput", &e))?;
    // Registered kinds without jobs yet are listed too, with zeros.
    for entry in state.engine.registry().kinds() {
        if !stats.iter().any(|s| s.kind == entry.kind) {
            stats.push(KindStats {
                kind: entry.kind.to_owned(),
                counts: engine::JobState::ALL
                    .iter()
                    .map(|s| (s.as_str(), 0))
                    .collect(),
                ..KindStats::default()
            });
        }
    }
    // Failing kinds first (failed, then retrying), then the busiest, then those with jobs
    // at all, then by name.
    stats.sort_by(|a, b| {
        let key = |s: &KindStats| {
            (
                -count(s, "failed"),
                -count(s, "retrying"),
                -(count(s, "pending") + count(s, "running")),
                -i64::from(s.counts.values().any(|n| *n > 0)),
            )
        };
        key(a).cmp(&key(b)).then_with(|| a.kind.cmp(&b.kind))
    });
    let mut total = [Bar::default(); BUCKETS];
    for bars in done.values() {
        for (t, b) in total.iter_mut().zip(bars) {
            t.ok += b.ok;
            t.failed += b.failed;
        }
    }
    let sum = |status: &str| stats.iter().map(|s| count(s, status)).sum::<i64>();
    let hour_ok: i64 = total.iter().map(|b| b.ok).sum();
    let hour_failed: i64 = total.iter().map(|b| b.failed).sum();
    let oldest = stats.iter().filter_map(|s| s.oldest_pending_age_ms).max();
    Ok(html! {
        section.cards {
            div.card.stat { span.label { "Waiting" } span.value #stat-waiting { (sum("pending") + sum("retrying")) } }
            div.card.stat { span.label { "Running" } span.value { (sum("running")) } }
            div class=(if sum("failed") > 0 { "card stat bad" } else { "card stat" }) {
                span.label { "Failed" } span.value #stat-failed { (sum("failed")) }
            }
            div.card.stat { span.label { "Oldest wait" } span.value { (oldest.map_or_else(|| "—".to_owned(), view::age)) } }
        }
        section.card {
            h2 { "Last hour" }
            p.muted {
                (hour_ok) " attempts ended well, " (hour_failed) " failed or will be retried."
                span.legend { span.swatch.ok {} "ok" span.swatch.failed {} "failed" }
            }
            (chart(&total))
        }
        section.card {
            h2 { "Queues" }
            div.scroll {
                table.kinds {
                    thead { tr {
                        th { "Kind" } th.num { "Failed" } th.num { "Retrying" } th.num { "Pending" }
                        th.num { "Running" } th.num { "Succeeded" } th.num { "Cancelled" }
                        th.num { "Oldest wait" } th.num { "Last hour" }
                    } }
                    tbody {
                        @for s in &stats {
                            @let bars = done.get(&s.kind);
                            @let ok: i64 = bars.map_or(0, |b| b.iter().map(|b| b.ok).sum());
                            @let bad: i64 = bars.map_or(0, |b| b.iter().map(|b| b.failed).sum());
                            tr class=[(count(s, "failed") > 0).then_some("failing")] data-kind=(s.kind) {
                                th scope="row" { a href=(format!("/admin/jobs?kind={}", view::url_encode(&s.kind))) { (s.kind) } }
                                td.num { @if count(s, "failed") > 0 {
                                    a.bad href=(format!("/admin/jobs?kind={}&status=failed", view::url_encode(&s.kind))) { (count(s, "failed")) }
                                } @else { span.muted { "0" } } }
                                td.num { (count(s, "retrying")) }
                                td.num { (count(s, "pending")) }
                                td.num { (count(s, "running")) }
                                td.num { (count(s, "succeeded")) }
                                td.num { (count(s, "cancelled")) }
                                td.num { (s.oldest_pending_age_ms.map_or_else(|| "—".to_owned(), view::age)) }
                                td.num { (ok) @if bad > 0 { " / " span.bad { (bad) " failed" } } }
                            }
                        }
                    }
                }
            }
        }
        p.muted.small { "Updated " (view::abs_time(now)) "; refreshes every few seconds." }
    })
}

/// `GET /admin`.
#[poem::handler]
pub(crate) async fn page(
    req: &Request,
    state: Data<&ApiState>,
    session: Data<&Session>,
) -> poem::Result<Html<String>> {
    let inner = content(&state).await?;
    if is_fragment(req) {
        return Ok(Html(inner.into_string()));
    }
    let body = html! {
        h1 { "Overview" }
        (view::live("/admin?fragment=1", 3000, inner))
    };
    Ok(view::render(
        false,
        &session,
        "Overview",
        Nav::Overview,
        body,
    ))
}
