//! Exports and deletions (GDPR): the pending deletions ([`jobs::users::list_deletions`]),
//! the recent export and erasure jobs, and for one user their data exports
//! ([`jobs::exports::list_exports`]) and where their deletion stands with its erasure
//! receipt ([`jobs::users::deletion_status`]).

use engine::JobState;
use engine::admin::{self, JobFilter, JobSummary};
use engine::state_machine::Lifecycle;
use jobs::hard_delete::receipt::{Receipt, StepStatus};
use jobs::users::{DeletionError, DeletionStatus, UserStatus};
use maud::{Markup, html};
use poem::web::{Data, Html, Query};
use serde::Deserialize;

use crate::admin::internal;
use crate::admin::session::Session;
use crate::admin::view::{self, Nav};
use crate::state::ApiState;

/// The user to look up.
#[derive(Debug, Default, Deserialize)]
pub struct GdprQuery {
    /// `users.id`.
    user_id: Option<String>,
}

fn step(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Pending => "pending",
        StepStatus::Done => "done",
        StepStatus::Skipped => "skipped",
    }
}

fn receipt_view(now: engine::Millis, r: &Receipt) -> Markup {
    let db = &r.report.database;
    html! {
        section.card #receipt {
            h2 { "Erasure receipt" }
            dl.facts {
                dt { "Complete" } dd { @if let Some(t) = r.finished_at { (view::badge("succeeded")) " " (view::when(now, t)) } @else { (view::badge("running")) } }
                dt { "Started" } dd { (view::when(now, r.started_at)) }
                dt { "Job" } dd { @if let Some(j) = r.job_id { a href=(format!("/admin/jobs/{j}")) { "#" (j) } } @else { "—" } }
                dt { "Database" } dd { (view::badge(step(db.status))) " " (view::when_opt(now, r.database_at)) }
                dt { "Redis" } dd { (view::badge(step(r.report.redis.status))) " " (view::when_opt(now, r.redis_at))
                    @if let Some(why) = &r.report.redis.reason { " · " (why) }
                    @if let Some(e) = &r.report.redis.last_error { br; span.error { (e) } } }
                dt { "OpenSearch" } dd { (view::badge(step(r.report.opensearch.status))) " " (view::when_opt(now, r.opensearch_at))
                    @if let Some(why) = &r.report.opensearch.reason { " · " (why) } }
            }
            div.scroll { table.counts {
                tbody {
                    tr { th { "Accounts anonymised" } td.num { (db.users_anonymised) } th { "Profiles anonymised" } td.num { (db.profiles_anonymised) } }
                    tr { th { "Messages deleted" } td.num { (db.messages_deleted) } th { "Plays deleted" } td.num { (db.playback_history_deleted) } }
                    tr { th { "Playlists deleted" } td.num { (db.playlists_deleted) } th { "Playlist items deleted" } td.num { (db.playlist_items_deleted) } }
                    tr { th { "Private tracks deleted" } td.num { (db.private_tracks_deleted) } th { "Public tracks deleted" } td.num { (db.public_tracks_deleted) } }
                    tr { th { "Public tracks kept (anonymous)" } td.num { (db.public_tracks_anonymised) } th { "Media files deleted" } td.num { (db.media_files_deleted) } }
                    tr { th { "Exports deleted" } td.num { (db.exports_deleted) } th { "Export files deleted" } td.num { (db.export_files_deleted) } }
                    tr { th { "Outbox e-mails deleted" } td.num { (db.outbox_files_deleted) } th { "Stripe payloads erased" } td.num { (db.webhook_payloads_erased) } }
                    tr { th { "Job texts scrubbed" } td.num { (db.job_texts_scrubbed) } th { "Attempt errors scrubbed" } td.num { (db.job_attempt_errors_scrubbed) } }
                    tr { th { "Redis keys deleted" } td.num { (r.report.redis.keys_deleted) } th {} td {} }
                }
            } }
            @let kept = &r.report.kept;
            @if !kept.reason.is_empty() {
                h3 { "Kept" }
                p.muted.small { (kept.reason) }
                div.scroll { table.counts { tbody {
                    tr { th { "Orders bought" } td.num { (kept.orders) } th { "Their items" } td.num { (kept.order_items) } }
                    tr { th { "Their refunds" } td.num { (kept.payment_refunds) } th { "Payouts (as seller)" } td.num { (kept.seller_transfers) } }
                    tr { th { "Payout account" } td.num { (kept.seller_accounts) } th { "Stripe events (payload erased)" } td.num { (kept.webhook_events) } }
                } } }
            }
        }
    }
}

/// Pending deletions shown on the page; the rest are in `GET /v1/deletions`.
const PENDING_SHOWN: i64 = 20;

fn pending_table(now: engine::Millis, list: &[DeletionStatus]) -> Markup {
    html! {
        section.card #pending-deletions {
            h2 { "Pending deletions" }
            @if list.is_empty() { p.empty { "No account is waiting for erasure." } } @else {
                div.scroll { table {
                    thead { tr { th.num { "User" } th { "Requested" } th { "Recovery deadline" } th { "Public tracks" } } }
                    tbody { @for d in list { tr {
                        td.num { a href=(format!("/admin/gdpr?user_id={}", d.user_id)) { (d.user_id) } }
                        td { (view::when_opt(now, d.deletion_requested_at)) }
                        td {
                            (view::when_opt(now, d.recovery_deadline))
                            @if d.recovery_deadline.is_some_and(|t| t <= now) { " " (view::badge("due")) }
                        }
                        td { @if d.keep_public_tracks { "kept" } @else { "deleted" } }
                    } } }
                } }
                @if list.len() as i64 == PENDING_SHOWN {
                    p.muted.small { "The first " (PENDING_SHOWN) " by user id; all of them: GET /v1/deletions?status=deletion_requested." }
                }
            }
        }
    }
}

fn jobs_table(now: engine::Millis, title: &str, list: &[JobSummary]) -> Markup {
    html! {
        section.card {
            h2 { (title) }
            @if list.is_empty() { p.empty { "None yet." } } @else {
                div.scroll { table {
                    thead { tr { th.num { "Job" } th { "Status" } th { "Enqueued" } th { "Finished" } th { "Last error" } } }
                    tbody { @for j in list { tr {
                        td.num { a href=(format!("/admin/jobs/{}", j.id)) { "#" (j.id) } }
                        td { (view::badge(j.status.as_str())) }
                        td { (view::when(now, j.created_at)) }
                        td { (view::when_opt(now, j.finished_at)) }
                        td.error { @if let Some(e) = &j.last_error { (view::clip(e, 80)) } }
                    } } }
                } }
            }
        }
    }
}

async fn recent(state: &ApiState, kind: &str) -> poem::Result<Vec<JobSummary>> {
    admin::list_jobs(
        state.engine.db(),
        &JobFilter {
            kind: Some(kind.to_owned()),
            limit: Some(10),
            ..JobFilter::default()
        },
    )
    .await
    .map(|p| p.jobs)
    .map_err(|e| internal("listing GDPR jobs", &e))
}

/// `GET /admin/gdpr`.
#[poem::handler]
pub(crate) async fn page(
    state: Data<&ApiState>,
    session: Data<&Session>,
    Query(q): Query<GdprQuery>,
) -> poem::Result<Html<String>> {
    let now = state.engine.clock().now_ms();
    let db = state.engine.db();
    let raw = q
        .user_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let user_id = raw.map(str::parse::<i64>);
    let user = match user_id {
        Some(Ok(id)) => {
            let deletion = match jobs::users::deletion_status(db, id).await {
                Ok(d) => Some(d),
                Err(DeletionError::NotFound(_)) => None,
                Err(e) => return Err(internal("reading a deletion status", &e)),
            };
            let exports = jobs::exports::list_exports(db, id)
                .await
                .map_err(|e| internal("listing exports", &e))?;
            Some((id, deletion, exports))
        }
        _ => None,
    };
    let (pending, exports_jobs, erase_jobs) = if user.is_none() {
        (
            jobs::users::list_deletions(
                &state.engine,
                &[UserStatus::DeletionRequested],
                0,
                PENDING_SHOWN,
            )
            .await
            .map_err(|e| internal("listing pending deletions", &e))?,
            recent(&state, "data_export").await?,
            recent(&state, "hard_delete").await?,
        )
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    let body = html! {
        h1 { "Exports & deletions" }
        form.filters method="get" action="/admin/gdpr" {
            label { "User id "
                input type="number" name="user_id" id="user-id" min="1" value=[raw] required;
            }
            button type="submit" { "Look up" }
            @if user.is_some() { a href="/admin/gdpr" { "Recent jobs" } }
        }
        @if matches!(user_id, Some(Err(_))) { (view::flash("error", "A user id is a number.")) }
        @if let Some((id, deletion, exports)) = &user {
            @match deletion {
                None => { (view::flash("warn", &format!("No user {id}."))) }
                Some(d) => {
                    section.card {
                        h2 { "User " (id) }
                        dl.facts {
                            dt { "Account" } dd { (view::badge(d.status.as_str())) }
                            dt { "Deletion requested" } dd { (view::when_opt(now, d.deletion_requested_at)) }
                            dt { "Recovery deadline" } dd { (view::when_opt(now, d.recovery_deadline)) }
                            dt { "Erased" } dd { (view::when_opt(now, d.erased_at)) }
                            dt { "Public tracks" } dd { @if d.keep_public_tracks { "kept, credited to an anonymous artist" } @else { "deleted with the account" } }
                        }
                    }
                    @if let Some(r) = &d.receipt { (receipt_view(now, r)) }
                }
            }
            section.card {
                h2 { "Data exports" }
                @if exports.is_empty() { p.empty { "No exports." } } @else {
                    div.scroll { table {
                        thead { tr { th.num { "Id" } th { "Status" } th { "Requested" } th { "Ready" } th.num { "Progress" } th.num { "Size" } th { "Link expires" } th { "File deleted" } th { "Error" } } }
                        tbody { @for e in exports { tr {
                            td.num { (e.id) }
                            td { (view::badge(e.status.as_str())) }
                            td { (view::when(now, e.requested_at)) }
                            td { (view::when_opt(now, e.ready_at)) }
                            td.num { @if let Some(p) = e.progress.percent { (format!("{p:.0} %")) } @else { (e.progress.rows_done) " rows" } }
                            td.num { @if let Some(s) = e.size_bytes { (s) " B" } @else { "—" } }
                            td { (view::when_opt(now, e.link_expires_at)) }
                            td { (view::when_opt(now, e.expires_at)) }
                            td.error { @if let Some(err) = &e.error { (view::clip(err, 80)) } }
                        } } }
                    } }
                    p.muted.small { "Download links are sent to the user by e-mail and are not shown here." }
                }
            }
        } @else {
            p.muted { "Look up a user for their exports, deletion status and erasure receipt." }
            (pending_table(now, &pending))
            (jobs_table(now, "Recent export jobs", &exports_jobs))
            (jobs_table(now, "Recent erasure jobs", &erase_jobs))
            @if erase_jobs.iter().chain(&exports_jobs).any(|j| j.status == JobState::Failed) {
                p.muted.small { "Failed jobs can be retried from their job page." }
            }
        }
    };
    Ok(view::render(
        false,
        &session,
        "Exports & deletions",
        Nav::Gdpr,
        body,
    ))
}
