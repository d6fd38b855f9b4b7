//! Schedules: last and next run, and "run now" through the scheduler, as
//! `/v1/schedules/{name}/run` does.

use engine::{Actor, Enqueued};
use maud::html;
use poem::Response;
use poem::http::StatusCode;
use poem::web::{Data, Html, Path, Query};
use serde::Deserialize;

use crate::admin::session::Session;
use crate::admin::view::{self, Nav};
use crate::admin::{internal, redirect};
use crate::state::ApiState;

/// The notice after "run now".
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// The schedule that was run.
    ran: Option<String>,
    /// Its job.
    job: Option<i64>,
    /// False when its unfinished previous run was kept instead.
    enqueued: Option<bool>,
}

/// `GET /admin/schedules`.
#[poem::handler]
pub(crate) async fn list(
    state: Data<&ApiState>,
    session: Data<&Session>,
    Query(q): Query<ListQuery>,
) -> poem::Result<Html<String>> {
    let now = state.engine.clock().now_ms();
    let schedules = state
        .scheduler
        .list()
        .await
        .map_err(|e| internal("listing schedules", &e))?;
    let body = html! {
        h1 { "Schedules" }
        @if let (Some(name), Some(job)) = (&q.ran, q.job) {
            @if q.enqueued.unwrap_or(true) {
                p.flash.ok role="status" { "Ran " code { (name) } ": enqueued " a href=(format!("/admin/jobs/{job}")) { "job #" (job) } "." }
            } @else {
                p.flash.warn role="status" { "Not enqueued: the previous run of " code { (name) } ", " a href=(format!("/admin/jobs/{job}")) { "job #" (job) } ", is unfinished." }
            }
        }
        @if schedules.is_empty() {
            p.empty { "No schedules." }
        } @else {
            div.scroll {
                table.schedules.stack {
                    thead { tr {
                        th { "Schedule" } th { "Kind" } th { "Every" } th { "Last run" }
                        th { "Next run" } th { "Last job" } th {}
                    } }
                    tbody {
                        @for s in &schedules {
                            tr data-schedule=(s.name) {
                                th scope="row" { (s.name) @if s.run_at_boot { " " span.muted.small { "(also at boot)" } } }
                                td data-label="Kind" { (s.kind) }
                                td data-label="Every" { code { (s.every) } }
                                td data-label="Last run" { (view::when_opt(now, s.last_run_at)) }
                                td data-label="Next run" { (view::when(now, s.next_run_at)) }
                                td data-label="Last job" { @if let Some(id) = s.last_job_id {
                                    a href=(format!("/admin/jobs/{id}")) { "#" (id) }
                                } @else { span.muted { "—" } } }
                                td.act {
                                    (view::action(&session, &format!("/admin/schedules/{}/run", view::url_encode(&s.name)),
                                        "Run now", &format!("Run {} now?", s.name), &format!("run-{}", s.name)))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(view::render(
        false,
        &session,
        "Schedules",
        Nav::Schedules,
        body,
    ))
}

/// `POST /admin/schedules/{name}/run` (CSRF-checked), audited as the key.
#[poem::handler]
pub(crate) async fn run(
    state: Data<&ApiState>,
    session: Data<&Session>,
    Path(name): Path<String>,
) -> poem::Result<Response> {
    match state
        .scheduler
        .run_now(&name, &Actor::api_key(session.key_id))
        .await
    {
        Ok(run) => {
            let (job, enqueued) = match run {
                Enqueued::Inserted(id) => (id, true),
                Enqueued::Existing(id) => (id, false),
            };
            Ok(redirect(&format!(
                "/admin/schedules?ran={}&job={job}&enqueued={enqueued}",
                view::url_encode(&name)
            )))
        }
        Err(engine::Error::ScheduleNotFound(_)) => {
            Err(poem::Error::from_status(StatusCode::NOT_FOUND))
        }
        Err(e) => Err(internal("running a schedule", &e)),
    }
}
