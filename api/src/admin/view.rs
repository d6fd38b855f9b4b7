//! What every page shares: the layout (header, navigation, sign-out), the live-refresh
//! fragments, times, status badges and action buttons.

use engine::Millis;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use poem::web::Html;

use super::session::{CSRF_FIELD, Session};

/// The navigation's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// `/admin`.
    Overview,
    /// `/admin/jobs`.
    Jobs,
    /// `/admin/schedules`.
    Schedules,
    /// `/admin/transfers`.
    Transfers,
    /// `/admin/findings`.
    Findings,
    /// `/admin/gdpr`.
    Gdpr,
}

const NAV: [(Nav, &str, &str); 6] = [
    (Nav::Overview, "/admin", "Overview"),
    (Nav::Jobs, "/admin/jobs", "Jobs"),
    (Nav::Schedules, "/admin/schedules", "Schedules"),
    (Nav::Transfers, "/admin/transfers", "Transfers"),
    (Nav::Findings, "/admin/findings", "Findings"),
    (Nav::Gdpr, "/admin/gdpr", "Exports & deletions"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · veza-jobs admin" }
            link rel="stylesheet" href="/admin/assets/admin.css";
            script src="/admin/assets/admin.js" defer {}
        }
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare_layout(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top { span.brand { "veza-jobs" } }
                (content)
            }
        }
    }
}

/// A signed-in page.
pub fn layout(session: &Session, title: &str, active: Nav, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/admin" { "veza-jobs" }
                    nav {
                        @for (nav, href, label) in NAV {
                            a href=(href) class=[(nav == active).then_some("active")] { (label) }
                        }
                    }
                    form.signout method="post" action="/admin/logout" {
                        (csrf_field(session))
                        span.who title=(format!("signed in with key {} ({})", session.key_name, session.key_prefix)) {
                            (session.key_name)
                        }
                        button.link type="submit" id="sign-out" { "Sign out" }
                    }
                }
                main { (content) }
            }
        }
    }
}

/// The page, or only its content when the page's script asks for a live refresh.
pub fn render(
    fragment: bool,
    session: &Session,
    title: &str,
    active: Nav,
    content: Markup,
) -> Html<String> {
    if fragment {
        Html(content.into_string())
    } else {
        Html(layout(session, title, active, content).into_string())
    }
}

/// A container the script refreshes from `url` (the same page with `fragment=1`) every
/// `every_ms`, until the fragment holds an element with `data-live-stop`.
pub fn live(url: &str, every_ms: u32, content: Markup) -> Markup {
    html! {
        div data-live=(url) data-every=(every_ms) { (content) }
    }
}

/// The hidden CSRF field of a form.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(session.csrf); }
}

/// A one-button form posting to `action`, confirmed first with `confirm`.
pub fn action(session: &Session, action: &str, label: &str, confirm: &str, id: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=(confirm) {
            (csrf_field(session))
            button.action type="submit" id=(id) { (label) }
        }
    }
}

/// A notice at the top of a page.
pub fn flash(kind: &str, text: &str) -> Markup {
    html! { p class=(format!("flash {kind}")) role="status" { (text) } }
}

/// `ms` as `2026-12-02 07:01:32 UTC`.
pub fn abs_time(ms: Millis) -> String {
    engine::clock::to_datetime(ms)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// A duration in ms, short: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h} h")
            } else {
                format!("{h} h {m} min")
            }
        }
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `ms` relative to `now` (`3 min ago`, `in 5 s`), the exact time on hover.
pub fn when(now: Millis, ms: Millis) -> Markup {
    let text = if ms <= now {
        format!("{} ago", age(now - ms))
    } else {
        format!("in {}", age(ms - now))
    };
    html! { time datetime=(engine::clock::to_datetime(ms).to_rfc3339()) title=(abs_time(ms)) { (text) } }
}

/// `when`, or a dash.
pub fn when_opt(now: Millis, ms: Option<Millis>) -> Markup {
    match ms {
        Some(ms) => when(now, ms),
        None => html! { span.muted { "—" } },
    }
}

/// A status as a coloured badge.
pub fn badge(status: &str) -> Markup {
    html! { span class=(format!("badge st-{status}")) { (status.replace('_', " ")) } }
}

/// Percent-encodes a query value.
pub fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A long text cut to `max` characters (the whole text on hover).
pub fn clip(text: &str, max: usize) -> Markup {
    if text.chars().count() <= max {
        html! { (text) }
    } else {
        let cut: String = text.chars().take(max).collect();
        html! { span title=(text) { (cut) "…" } }
    }
}

/// Raw markup made here (the SVG chart, built from numbers only).
pub fn trusted(svg: String) -> Markup {
    PreEscaped(svg)
}

/// An amount in minor units as `12.34 EUR`.
pub fn money(amount: i64, currency: &str) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let a = amount.unsigned_abs();
    format!(
        "{sign}{}.{:02} {}",
        a / 100,
        a % 100,
        currency.to_ascii_uppercase()
    )
}
