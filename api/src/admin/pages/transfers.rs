//! Seller transfers: by status, one transfer with its transition history and its jobs, the
//! admin retry ([`jobs::transfers::admin_retry`]); and the reconciliation findings.

use engine::Actor;
use engine::admin::{self, JobSummary};
use jobs::transfers::{self, AdminError, TransferStatus};
use maud::html;
use poem::Response;
use poem::http::StatusCode;
use poem::web::{Data, Html, Path, Query};
use serde::Deserialize;

use crate::admin::session::Session;
use crate::admin::view::{self, Nav};
use crate::admin::{internal, redirect};
use crate::state::ApiState;

const PAGE_SIZE: i64 = 50;

/// The list's filters.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only this status (empty: all).
    status: Option<String>,
    /// Transfers after this id.
    after: Option<i64>,
}

/// `GET /admin/transfers`.
#[poem::handler]
pub(crate) async fn list(
    state: Data<&ApiState>,
    session: Data<&Session>,
    Query(q): Query<ListQuery>,
) -> poem::Result<Html<String>> {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(TransferStatus::parse(s).ok_or_else(|| {
            poem::Error::from_string(format!("unknown status {s:?}"), StatusCode::BAD_REQUEST)
        })?),
        None => None,
    };
    let statuses: Vec<TransferStatus> = status.into_iter().collect();
    let now = state.engine.clock().now_ms();
    let rows = transfers::list(
        &state.engine,
        &statuses,
        None,
        q.after.unwrap_or(0),
        PAGE_SIZE + 1,
    )
    .await
    .map_err(|e| internal("listing transfers", &e))?;
    let more = rows.len() as i64 > PAGE_SIZE;
    let rows = &rows[..rows.len().min(PAGE_SIZE as usize)];
    let status_q = status.map_or(String::new(), |s| format!("status={}&", s.as_str()));
    let body = html! {
        h1 { "Seller transfers" }
        form.filters method="get" action="/admin/transfers" {
            label { "Status "
                select name="status" id="filter-transfer-status" {
                    option value="" { "all" }
                    @for s in TransferStatus::ALL {
                        option value=(s.as_str()) selected[status == Some(s)] { (s.as_str().replace('_', " ")) }
                    }
                }
            }
            button type="submit" { "Filter" }
            a href="/admin/findings" { "Reconciliation findings →" }
        }
        @if rows.is_empty() {
            p.empty { "No transfers match." }
        } @else {
            div.scroll { table {
                thead { tr {
                    th.num { "Id" } th { "Status" } th.num { "Amount" } th.num { "Order" }
                    th.num { "Seller" } th.num { "Retries" } th { "Next retry" } th { "Updated" } th { "Last error" }
                } }
                tbody { @for t in rows { tr data-transfer=(t.id) {
                    td.num { a href=(format!("/admin/transfers/{}", t.id)) { "#" (t.id) } }
                    td { (view::badge(t.status().as_str())) }
                    td.num { (view::money(t.amount, &t.currency)) }
                    td.num { (t.order_id) }
                    td.num { (t.seller_id) }
                    td.num { (t.retry_count) }
                    td { (view::when_opt(now, t.next_retry_at)) }
                    td { (view::when(now, t.updated_at)) }
                    td.error { @if let Some(e) = &t.last_error { (view::clip(e, 80)) } }
                } } }
            } }
        }
        nav.pager {
            @if q.after.is_some() { a href=(format!("/admin/transfers?{status_q}")) { "← First page" } }
            @if more { @if let Some(last) = rows.last() {
                a href=(format!("/admin/transfers?{status_q}after={}", last.id)) { "Next page →" }
            } }
        }
    };
    Ok(view::render(
        false,
        &session,
        "Transfers",
        Nav::Transfers,
        body,
    ))
}

/// A transfer page's notice after the retry.
#[derive(Debug, Default, Deserialize)]
pub struct ShowQuery {
    /// The status the retry moved it to.
    retried: Option<String>,
    /// `not_retryable` or `stale`.
    error: Option<String>,
}

/// The transfer's jobs: its payout and reversal jobs (by their unique keys, finished ones
/// included) and any other job that changed it (actors `job:{id}` of its history).
async fn jobs_of(
    state: &ApiState,
    id: i64,
    actors: &[String],
) -> Result<Vec<JobSummary>, engine::Error> {
    let db = state.engine.db();
    let mut found = transfers::jobs_of(&state.engine, id).await?;
    for actor in actors {
        if let Some(job_id) = actor
            .strip_prefix("job:")
            .and_then(|s| s.parse::<i64>().ok())
            && !found.iter().any(|j| j.id == job_id)
        {
            match admin::get_job(db, job_id).await {
                Ok(d) => found.push(d.job),
                Err(engine::Error::JobNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    found.sort_by_key(|j| j.id);
    Ok(found)
}

/// `GET /admin/transfers/{id}`.
#[poem::handler]
pub(crate) async fn show(
    state: Data<&ApiState>,
    session: Data<&Session>,
    Path(id): Path<i64>,
    Query(q): Query<ShowQuery>,
) -> poem::Result<Html<String>> {
    let now = state.engine.clock().now_ms();
    let t = transfers::get(&state.engine, id)
        .await
        .map_err(|e| internal("reading a transfer", &e))?
        .ok_or_else(|| poem::Error::from_status(StatusCode::NOT_FOUND))?;
    let mut conn = state
        .engine
        .db()
        .acquire()
        .await
        .map_err(|e| internal("reading a transfer's history", &e))?;
    let history =
        engine::state_machine::history(&mut conn, jobs::transfers::state::ENTITY, &id.to_string())
            .await
            .map_err(|e| internal("reading a transfer's history", &e))?;
    drop(conn);
    let actors: Vec<String> = history.iter().map(|h| h.actor.clone()).collect();
    let its_jobs = jobs_of(&state, id, &actors)
        .await
        .map_err(|e| internal("reading a transfer's jobs", &e))?;
    let status = t.status();
    let body = html! {
        @if let Some(to) = &q.retried {
            (view::flash("ok", &format!("Retried: the transfer moved to {}, with a fresh job and idempotency key.", to.replace('_', " "))))
        }
        @match q.error.as_deref() {
            Some("not_retryable") => (view::flash("error", "Not retried: only permanently failed transfers can be retried.")),
            Some("stale") => (view::flash("error", "Not retried: the transfer changed meanwhile; look again.")),
            _ => {}
        }
        div.titlebar {
            h1 { "Transfer #" (t.id) }
            div.actions {
                @if status == TransferStatus::PermanentlyFailed {
                    (view::action(&session, &format!("/admin/transfers/{id}/retry"), "Retry",
                        &format!("Retry transfer #{id} with fresh attempts and a new idempotency key?"), "retry-transfer"))
                }
            }
        }
        section.card { dl.facts {
            dt { "Status" } dd { (view::badge(status.as_str())) }
            dt { "Amount" } dd { (view::money(t.amount, &t.currency)) }
            dt { "Order / item" } dd { (t.order_id) " / " (t.order_item_id) }
            dt { "Seller" } dd { (t.seller_id) }
            dt { "Stripe transfer" } dd { @if let Some(s) = &t.stripe_transfer_id { code { (s) } } @else { span.muted { "—" } } }
            dt { "Stripe reversal" } dd { @if let Some(s) = &t.stripe_reversal_id { code { (s) } } @else { span.muted { "—" } } }
            dt { "Retries" } dd { (t.retry_count) }
            dt { "Next retry" } dd { (view::when_opt(now, t.next_retry_at)) }
            dt { "Created" } dd { (view::when(now, t.created_at)) }
            dt { "Updated" } dd { (view::when(now, t.updated_at)) }
            @if let Some(e) = &t.last_error { dt { "Last error" } dd.error { (e) } }
        } }
        section.card {
            h2 { "Transitions" }
            @if history.is_empty() { p.empty { "No status change yet." } } @else {
                div.scroll { table {
                    thead { tr { th { "When" } th { "From" } th { "To" } th { "Actor" } th { "Note" } } }
                    tbody { @for h in &history { tr {
                        td { (view::when(now, h.at)) } td { (view::badge(&h.from_status)) }
                        td { (view::badge(&h.to_status)) }
                        td { @if let Some(j) = h.actor.strip_prefix("job:") {
                            a href=(format!("/admin/jobs/{j}")) { code { (h.actor) } }
                        } @else { code { (h.actor) } } }
                        td { @if let Some(n) = &h.note { (n) } }
                    } } }
                } }
            }
        }
        section.card {
            h2 { "Jobs" }
            @if its_jobs.is_empty() { p.empty { "No jobs found." } } @else {
                div.scroll { table {
                    thead { tr { th.num { "Id" } th { "Kind" } th { "Status" } th.num { "Attempts" } th { "Enqueued" } th { "Last error" } } }
                    tbody { @for j in &its_jobs { tr {
                        td.num { a href=(format!("/admin/jobs/{}", j.id)) { "#" (j.id) } }
                        td { (j.kind) } td { (view::badge(j.status.as_str())) }
                        td.num { (j.attempt) "/" (j.max_attempts) }
                        td { (view::when(now, j.created_at)) }
                        td.error { @if let Some(e) = &j.last_error { (view::clip(e, 80)) } }
                    } } }
                } }
            }
        }
    };
    Ok(view::render(
        false,
        &session,
        &format!("Transfer #{id}"),
        Nav::Transfers,
        body,
    ))
}

/// `POST /admin/transfers/{id}/retry` (CSRF-checked), audited as the key.
#[poem::handler]
pub(crate) async fn retry(
    state: Data<&ApiState>,
    session: Data<&Session>,
    Path(id): Path<i64>,
) -> poem::Result<Response> {
    match transfers::admin_retry(&state.engine, id, &Actor::api_key(session.key_id)).await {
        Ok(to) => Ok(redirect(&format!(
            "/admin/transfers/{id}?retried={}",
            to.as_str()
        ))),
        Err(AdminError::NotFound(_)) => Err(poem::Error::from_status(StatusCode::NOT_FOUND)),
        Err(AdminError::NotRetryable { .. }) => Ok(redirect(&format!(
            "/admin/transfers/{id}?error=not_retryable"
        ))),
        Err(AdminError::Transition(_)) => {
            Ok(redirect(&format!("/admin/transfers/{id}?error=stale")))
        }
        Err(e) => Err(internal("retrying a transfer", &e)),
    }
}

/// The findings' filter.
#[derive(Debug, Default, Deserialize)]
pub struct FindingsQuery {
    /// Resolved ones too.
    all: Option<bool>,
    /// Findings after this id.
    after: Option<i64>,
}

/// `GET /admin/findings`: the drift `reconcile_transfers` found between our ledger and
/// Stripe.
#[poem::handler]
pub(crate) async fn findings(
    state: Data<&ApiState>,
    session: Data<&Session>,
    Query(q): Query<FindingsQuery>,
) -> poem::Result<Html<String>> {
    let now = state.engine.clock().now_ms();
    let all = q.all.unwrap_or(false);
    let rows = jobs::reconcile_transfers::list_findings(
        state.engine.db(),
        all,
        q.after.unwrap_or(0),
        PAGE_SIZE + 1,
    )
    .await
    .map_err(|e| internal("listing findings", &e))?;
    let more = rows.len() as i64 > PAGE_SIZE;
    let rows = &rows[..rows.len().min(PAGE_SIZE as usize)];
    let body = html! {
        h1 { "Reconciliation findings" }
        p.muted {
            "Where our transfer rows and Stripe disagree, as the daily " code { "reconcile_transfers" } " job found. "
            @if all { a href="/admin/findings" { "Show open ones only" } } @else { a href="/admin/findings?all=true" { "Show resolved ones too" } }
        }
        @if rows.is_empty() {
            p.empty { @if all { "No findings." } @else { "No open findings: the ledger and Stripe agree." } }
        } @else {
            div.scroll { table {
                thead { tr {
                    th.num { "Id" } th.num { "Transfer" } th { "Kind" } th { "Detail" } th { "Row" }
                    th { "Stripe" } th { "First seen" } th { "Last seen" } th { "Resolved" }
                } }
                tbody { @for f in rows { tr class=[f.resolved_at.is_none().then_some("failing")] {
                    td.num { (f.id) }
                    td.num { a href=(format!("/admin/transfers/{}", f.seller_transfer_id)) { "#" (f.seller_transfer_id) } }
                    td { code { (f.kind) } }
                    td { (f.detail) }
                    td { (view::badge(&f.row_status)) " " (f.row_amount) }
                    td { code { (f.stripe_transfer_id) } br;
                        span.small.muted {
                            "amount " (f.stripe_amount.map_or("—".to_owned(), |a| a.to_string()))
                            ", reversed " (f.stripe_amount_reversed.map_or("—".to_owned(), |a| a.to_string()))
                        }
                    }
                    td { (view::when(now, f.first_seen_at)) }
                    td { (view::when(now, f.last_seen_at)) }
                    td { (view::when_opt(now, f.resolved_at)) }
                } } }
            } }
        }
        nav.pager { @if more { @if let Some(last) = rows.last() {
            a href=(format!("/admin/findings?all={all}&after={}", last.id)) { "Next page →" }
        } } }
    };
    Ok(view::render(
        false,
        &session,
        "Findings",
        Nav::Findings,
        body,
    ))
}
