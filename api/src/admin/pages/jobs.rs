//! Jobs: the filtered, paginated list; a job with its args (secrets redacted), attempts,
//! next run and audit trail; retry and cancel through the engine, as `/v1/jobs` does.

use engine::admin::{self, JobFilter};
use engine::{Actor, JobState};
use maud::{Markup, html};
use poem::http::StatusCode;
use poem::web::{Data, Html, Path, Query};
use poem::{Request, Response};
use serde::Deserialize;

use crate::admin::session::Session;
use crate::admin::view::{self, Nav};
use crate::admin::{internal, is_fragment, redirect};
use crate::redact::{redact, redact_json_text, redact_text};
use crate::state::ApiState;

/// Jobs per page.
pub const PAGE_SIZE: u32 = 50;

/// The list's filters.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only this kind (empty: all).
    kind: Option<String>,
    /// Only this state (empty: all).
    status: Option<String>,
    /// The previous page's last id.
    cursor: Option<i64>,
}

fn query_of(kind: Option<&str>, status: Option<&str>, cursor: Option<i64>) -> String {
    let mut parts = Vec::new();
    if let Some(k) = kind {
        parts.push(format!("kind={}", view::url_encode(k)));
    }
    if let Some(s) = status {
        parts.push(format!("status={s}"));
    }
    if let Some(c) = cursor {
        parts.push(format!("cursor={c}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// `GET /admin/jobs`.
#[poem::handler]
pub(crate) async fn list(
    state: Data<&ApiState>,
    session: Data<&Session>,
    Query(q): Query<ListQuery>,
) -> poem::Result<Html<String>> {
    let kind = q.kind.filter(|k| !k.trim().is_empty());
    let status_text = q.status.filter(|s| !s.is_empty());
    let status = match status_text.as_deref() {
        Some(s) => Some(s.parse::<JobState>().map_err(|_| {
            poem::Error::from_string(format!("unknown status {s:?}"), StatusCode::BAD_REQUEST)
        })?),
        None => None,
    };
    let db = state.engine.db();
    let now = state.engine.clock().now_ms();
    let page = admin::list_jobs(
        db,
        &JobFilter {
            kind: kind.clone(),
            status,
            before_id: q.cursor,
            limit: Some(PAGE_SIZE),
            ..JobFilter::default()
        },
    )
    .await
    .map_err(|e| internal("listing jobs", &e))?;
    let mut kinds: Vec<String> = state
        .engine
        .registry()
        .kinds()
        .map(|k| k.kind.to_owned())
        .collect();
    for s in admin::stats(db, now)
        .await
        .map_err(|e| internal("reading the kinds", &e))?
    {
        if !kinds.contains(&s.kind) {
            kinds.push(s.kind);
        }
    }
    kinds.sort();
    let status_str = status.map(JobState::as_str);
    let body = html! {
        h1 { "Jobs" }
        form.filters method="get" action="/admin/jobs" {
            label { "Kind "
                select name="kind" id="filter-kind" {
                    option value="" { "all" }
                    @for k in &kinds {
                        option value=(k) selected[kind.as_deref() == Some(k.as_str())] { (k) }
                    }
                }
            }
            label { "Status "
                select name="status" id="filter-status" {
                    option value="" { "all" }
                    @for s in JobState::ALL {
                        option value=(s.as_str()) selected[status == Some(s)] { (s.as_str()) }
                    }
                }
            }
            button type="submit" id="filter" { "Filter" }
        }
        @if page.jobs.is_empty() {
            p.empty { "No jobs match." }
        } @else {
            div.scroll {
                table.jobs.stack {
                    thead { tr {
                        th.num { "Id" } th { "Kind" } th { "Status" } th.num { "Attempts" }
                        th { "Enqueued" } th { "Next run" } th { "Last error" }
                    } }
                    tbody {
                        @for j in &page.jobs {
                            tr data-job=(j.id) data-status=(j.status.as_str()) {
                                td.num { a href=(format!("/admin/jobs/{}", j.id)) { "#" (j.id) } }
                                td data-label="Kind" { (j.kind) }
                                td data-label="Status" { (view::badge(j.status.as_str())) }
                                td.num data-label="Attempts" { (j.attempt) "/" (j.max_attempts) }
                                td data-label="Enqueued" { (view::when(now, j.created_at)) }
                                td data-label="Next run" { @if matches!(j.status, JobState::Pending | JobState::Retrying) {
                                    (view::when(now, j.run_at))
                                } @else { span.muted { "—" } } }
                                td.error data-label="Last error" { @if let Some(e) = &j.last_error { (view::clip(&redact_text(e), 90)) } }
                            }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if q.cursor.is_some() {
                a href=(format!("/admin/jobs{}", query_of(kind.as_deref(), status_str, None))) { "← First page" }
            }
            @if let Some(next) = page.next_cursor {
                a href=(format!("/admin/jobs{}", query_of(kind.as_deref(), status_str, Some(next)))) id="next-page" { "Next page →" }
            }
        }
    };
    Ok(view::render(false, &session, "Jobs", Nav::Jobs, body))
}

/// A job page's notice after an action.
#[derive(Debug, Default, Deserialize)]
pub struct ShowQuery {
    /// `retried` or `cancelled`.
    done: Option<String>,
    /// Why the action did not happen: `invalid_job_state` or `unique_key_held`.
    error: Option<String>,
}

async fn job_content(
    state: &ApiState,
    session: &Session,
    id: i64,
    q: &ShowQuery,
) -> poem::Result<Markup> {
    let db = state.engine.db();
    let now = state.engine.clock().now_ms();
    let job = match admin::get_job(db, id).await {
        Ok(job) => job,
        Err(engine::Error::JobNotFound(_)) => {
            return Err(poem::Error::from_status(StatusCode::NOT_FOUND));
        }
        Err(e) => return Err(internal("reading a job", &e)),
    };
    let mut conn = db
        .acquire()
        .await
        .map_err(|e| internal("reading a job's history", &e))?;
    let history = engine::state_machine::history(&mut conn, "job", &id.to_string())
        .await
        .map_err(|e| internal("reading a job's history", &e))?;
    drop(conn);
    let j = &job.job;
    let args = serde_json::to_string_pretty(&redact(&job.args)).unwrap_or_default();
    let retryable = matches!(j.status, JobState::Failed | JobState::Cancelled);
    let cancellable = matches!(j.status, JobState::Pending | JobState::Retrying);
    let settled = !matches!(
        j.status,
        JobState::Pending | JobState::Running | JobState::Retrying
    );
    Ok(html! {
        @if settled { span data-live-stop {} }
        @match q.done.as_deref() {
            Some("retried") => (view::flash("ok", "Retried: the job is pending again, with fresh attempts.")),
            Some("cancelled") => (view::flash("ok", "Cancelled.")),
            _ => {}
        }
        @match q.error.as_deref() {
            Some("invalid_job_state") => (view::flash("error", "Not done: the job's state does not allow it (it changed meanwhile?).")),
            Some("unique_key_held") => (view::flash("error", "Not retried: an unfinished job holds its unique key.")),
            _ => {}
        }
        div.titlebar {
            h1 { "Job #" (j.id) " " span.kind { (j.kind) } }
            div.actions {
                @if retryable {
                    (view::action(session, &format!("/admin/jobs/{id}/retry"), "Retry",
                        &format!("Retry job #{id} ({}) with fresh attempts?", j.kind), "retry"))
                }
                @if cancellable {
                    (view::action(session, &format!("/admin/jobs/{id}/cancel"), "Cancel",
                        &format!("Cancel job #{id} ({})?", j.kind), "cancel"))
                }
            }
        }
        section.card {
            dl.facts {
                dt { "Status" } dd #job-status { (view::badge(j.status.as_str())) }
                dt { "Attempts" } dd { (j.attempt) " of " (j.max_attempts) }
                dt { "Next run" } dd {
                    @if matches!(j.status, JobState::Pending | JobState::Retrying) {
                        (view::when(now, j.run_at)) " (" (view::abs_time(j.run_at)) ")"
                    } @else { span.muted { "—" } }
                }
                dt { "Enqueued" } dd { (view::when(now, j.created_at)) }
                dt { "Finished" } dd { (view::when_opt(now, j.finished_at)) }
                dt { "Priority" } dd { (j.priority) }
                @if let Some(w) = &job.waiting_for { dt { "Waiting for" } dd #job-waiting-for { (redact_text(w)) } }
                @if let Some(p) = job.parent_id { dt { "Parent" } dd { a href=(format!("/admin/jobs/{p}")) { "#" (p) } } }
                @if let Some(k) = &j.unique_key { dt { "Unique key" } dd { code { (k) } } }
                @if let Some(w) = &job.locked_by { dt { "Held by" } dd { code { (w) } } }
                @if let Some(n) = &j.note { dt { "Note" } dd { (redact_text(n)) } }
                @if let Some(e) = &j.last_error {
                    @if j.status == JobState::Succeeded {
                        dt { "Earlier error" } dd.muted { (redact_text(e)) }
                    } @else {
                        dt { "Last error" } dd.error { (redact_text(e)) }
                    }
                }
            }
        }
        section.card {
            h2 { "Args" }
            p.muted.small { "Values of secret or personal fields, and addresses and keys in errors, are redacted." }
            pre.args #job-args { (args) }
        }
        section.card {
            h2 { "Attempts" }
            @if job.attempts.is_empty() {
                p.empty { "Not run yet." }
            } @else {
                ol.timeline {
                    @for a in &job.attempts {
                        @let outcome = a.outcome.as_deref().unwrap_or("running");
                        li class=(format!("att-{outcome}")) {
                            div.att-head {
                                strong { "Attempt " (a.attempt) } " "
                                (view::badge(outcome)) " "
                                span.muted { (view::abs_time(a.started_at)) }
                                @if let Some(end) = a.finished_at {
                                    span.muted { " · " (end - a.started_at) " ms" }
                                }
                                span.muted.small { " · " (a.worker_id) }
                            }
                            @if let Some(e) = &a.error { pre.error { (redact_text(e)) } }
                        }
                    }
                }
            }
        }
        @if !job.steps.is_empty() {
            section.card #job-steps {
                h2 { "Steps" }
                p.muted.small { "Finished durable steps: a retry resumes after the last one. Results are redacted like the args." }
                div.scroll { table {
                    thead { tr { th { "#" } th { "Step" } th { "Attempt" } th { "Finished" } th { "Result" } } }
                    tbody { @for s in &job.steps { tr {
                        td.num { (s.seq) } td { code { (s.name) } } td.num { (s.attempt) }
                        td { (view::when(now, s.finished_at)) }
                        td { code { (view::clip(&redact_json_text(&s.result).to_string(), 120)) } }
                    } } }
                } }
            }
        }
        @if !job.children.is_empty() {
            section.card #job-children {
                h2 { "Children" }
                p.muted.small { "Jobs this one enqueued with a fan-out step: each wakes it when it ends." }
                div.scroll { table {
                    thead { tr { th { "Job" } th { "Kind" } th { "State" } th { "Finished" } } }
                    tbody { @for c in &job.children { tr {
                        td.num { a href=(format!("/admin/jobs/{}", c.id)) { "#" (c.id) } }
                        td { code { (c.kind) } } td { (view::badge(c.status.as_str())) }
                        td { (view::when_opt(now, c.finished_at)) }
                    } } }
                } }
            }
        }
        @if !history.is_empty() {
            section.card {
                h2 { "Audit trail" }
                div.scroll { table {
                    thead { tr { th { "When" } th { "From" } th { "To" } th { "Actor" } th { "Note" } } }
                    tbody { @for t in &history { tr {
                        td { (view::when(now, t.at)) } td { (view::badge(&t.from_status)) }
                        td { (view::badge(&t.to_status)) } td { code { (t.actor) } }
                        td { @if let Some(n) = &t.note { (n) } }
                    } } }
                } }
            }
        }
    })
}

/// `GET /admin/jobs/{id}`: refreshes itself while the job is unsettled.
#[poem::handler]
pub(crate) async fn show(
    req: &Request,
    state: Data<&ApiState>,
    session: Data<&Session>,
    Path(id): Path<i64>,
    Query(q): Query<ShowQuery>,
) -> poem::Result<Html<String>> {
    let inner = job_content(&state, &session, id, &q).await?;
    if is_fragment(req) {
        return Ok(Html(inner.into_string()));
    }
    let live_url = match req.uri().query() {
        Some(query) => format!("/admin/jobs/{id}?{query}&fragment=1"),
        None => format!("/admin/jobs/{id}?fragment=1"),
    };
    let body = view::live(&live_url, 1500, inner);
    Ok(view::render(
        false,
        &session,
        &format!("Job #{id}"),
        Nav::Jobs,
        body,
    ))
}

fn after_action(
    id: i64,
    result: Result<JobState, engine::Error>,
    done: &str,
) -> poem::Result<Response> {
    match result {
        Ok(_) => Ok(redirect(&format!("/admin/jobs/{id}?done={done}"))),
        Err(engine::Error::JobNotFound(_)) => Err(poem::Error::from_status(StatusCode::NOT_FOUND)),
        Err(engine::Error::InvalidJobState { .. }) => Ok(redirect(&format!(
            "/admin/jobs/{id}?error=invalid_job_state"
        ))),
        Err(engine::Error::UniqueKeyHeld { .. }) => {
            Ok(redirect(&format!("/admin/jobs/{id}?error=unique_key_held")))
        }
        Err(e) => Err(internal("a job action", &e)),
    }
}

/// `POST /admin/jobs/{id}/retry` (CSRF-checked): the engine's retry, audited as the key.
#[poem::handler]
pub(crate) async fn retry(
    state: Data<&ApiState>,
    session: Data<&Session>,
    Path(id): Path<i64>,
) -> poem::Result<Response> {
    let result = state
        .engine
        .retry(id, &Actor::api_key(session.key_id))
        .await;
    after_action(id, result, "retried")
}

/// `POST /admin/jobs/{id}/cancel` (CSRF-checked): the engine's cancel, audited as the key.
#[poem::handler]
pub(crate) async fn cancel(
    state: Data<&ApiState>,
    session: Data<&Session>,
    Path(id): Path<i64>,
) -> poem::Result<Response> {
    let result = state
        .engine
        .cancel(id, &Actor::api_key(session.key_id))
        .await;
    after_action(id, result, "cancelled")
}
