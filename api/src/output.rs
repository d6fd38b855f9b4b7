//! Human output of the CLI: aligned plain-text tables, times in RFC 3339 UTC.

use std::fmt::Write as _;

use chrono::SecondsFormat;
use engine::Millis;
use engine::admin::{JobDetail, JobPage};
use engine::clock::to_datetime;
use engine::scheduler::ScheduleInfo;

use crate::auth::keys::{ApiKeyInfo, CreatedKey};

/// A stored time as RFC 3339 UTC, to the second (`2026-01-01T00:00:00Z`).
pub fn time(ms: Millis) -> String {
    to_datetime(ms).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A stored time as RFC 3339 UTC, to the millisecond.
pub fn time_ms(ms: Millis) -> String {
    to_datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn opt_time(ms: Option<Millis>) -> String {
    ms.map_or_else(|| "-".to_owned(), time)
}

fn opt(text: Option<&str>) -> String {
    text.map_or_else(|| "-".to_owned(), one_line)
}

/// Text on one line (newlines and tabs shown as spaces), so that tables stay aligned, and
/// safe for a terminal: other control characters (an ANSI escape sequence in a key's name
/// could rewrite the screen) and the bidirectional overrides that reorder what is shown
/// are printed escaped (`\u{1b}`).
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        for c in word.chars() {
            let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// Columns padded to their widest cell, separated by two spaces; the last column is not
/// padded. Widths count characters.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `api-key create`: the key, once, with how to use it.
pub fn created_key(created: &CreatedKey) -> String {
    format!(
        "API key {} ({}, scope {}) created. It is shown only now; store it:\n\n{}\n\n\
         Use it as: curl -H 'X-API-Key: {}' http://HOST:PORT/v1/jobs\n",
        created.info.id,
        one_line(&created.info.name),
        created.info.scope.as_str(),
        created.key,
        created.key,
    )
}

/// `api-key list`.
pub fn api_keys(list: &[ApiKeyInfo]) -> String {
    if list.is_empty() {
        return "no API keys\n".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|k| {
            vec![
                k.id.to_string(),
                one_line(&k.name),
                k.scope.as_str().to_owned(),
                format!("{}…", k.prefix),
                time(k.created_at),
                opt_time(k.last_used_at),
                opt_time(k.revoked_at),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "SCOPE",
            "PREFIX",
            "CREATED",
            "LAST USED",
            "REVOKED",
        ],
        &rows,
    )
}

/// `jobs list`.
pub fn job_page(page: &JobPage) -> String {
    if page.jobs.is_empty() {
        return "no jobs\n".to_owned();
    }
    let rows: Vec<Vec<String>> = page
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.kind.clone(),
                j.status.to_string(),
                format!("{}/{}", j.attempt, j.max_attempts),
                time(j.created_at),
                time(j.run_at),
                opt_time(j.finished_at),
                opt(j.last_error.as_deref()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID",
            "KIND",
            "STATUS",
            "ATTEMPTS",
            "CREATED",
            "RUN AT",
            "FINISHED",
            "LAST ERROR",
        ],
        &rows,
    );
    if let Some(cursor) = page.next_cursor {
        let _ = writeln!(out, "more: --cursor {cursor}");
    }
    out
}

/// `jobs show`.
pub fn job_detail(d: &JobDetail) -> String {
    let j = &d.job;
    let fields = [
        ("id", j.id.to_string()),
        ("kind", j.kind.clone()),
        ("status", j.status.to_string()),
        ("attempts", format!("{}/{}", j.attempt, j.max_attempts)),
        ("priority", j.priority.to_string()),
        ("created", time_ms(j.created_at)),
        ("run at", time_ms(j.run_at)),
        (
            "finished",
            j.finished_at.map_or_else(|| "-".to_owned(), time_ms),
        ),
        ("locked by", opt(d.locked_by.as_deref())),
        ("unique key", opt(j.unique_key.as_deref())),
        ("last error", opt(j.last_error.as_deref())),
        ("note", opt(j.note.as_deref())),
        ("waits for", opt(d.waiting_for.as_deref())),
        (
            "parent",
            d.parent_id
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
        ),
        ("args", d.args.to_string()),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in &fields {
        let _ = writeln!(out, "{:width$}  {v}", format!("{k}:"), width = width + 1);
    }
    out.push('\n');
    if d.attempts.is_empty() {
        out.push_str("no attempts yet\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.attempt.to_string(),
                    a.worker_id.clone(),
                    time_ms(a.started_at),
                    a.finished_at.map_or_else(|| "-".to_owned(), time_ms),
                    opt(a.outcome.as_deref()),
                    opt(a.error.as_deref()),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "ATTEMPT", "WORKER", "STARTED", "FINISHED", "OUTCOME", "ERROR",
            ],
            &rows,
        ));
    }
    if !d.steps.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = d
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.seq.to_string(),
                    one_line(&s.name),
                    s.attempt.to_string(),
                    time_ms(s.finished_at),
                    one_line(&s.result),
                ]
            })
            .collect();
        out.push_str(&table(
            &["STEP", "NAME", "ATTEMPT", "FINISHED", "RESULT"],
            &rows,
        ));
    }
    if !d.children.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = d
            .children
            .iter()
            .map(|c| {
                vec![
                    c.id.to_string(),
                    one_line(&c.kind),
                    c.status.to_string(),
                    c.finished_at.map_or_else(|| "-".to_owned(), time_ms),
                ]
            })
            .collect();
        out.push_str(&table(&["CHILD", "KIND", "STATUS", "FINISHED"], &rows));
    }
    out
}

/// `schedules list`: the table, then the schedules this configuration leaves out and why
/// (`unscheduled`: name and reason), grouped by reason.
pub fn schedules(list: &[ScheduleInfo], unscheduled: &[(&str, &str)]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.kind.clone(),
                if s.run_at_boot {
                    format!("{}, at boot", s.every)
                } else {
                    s.every.clone()
                },
                opt_time(s.last_run_at),
                time(s.next_run_at),
                s.last_job_id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            ]
        })
        .collect();
    let mut out = table(
        &["NAME", "KIND", "EVERY", "LAST RUN", "NEXT RUN", "LAST JOB"],
        &rows,
    );
    let mut reasons: Vec<&str> = Vec::new();
    for (_, why) in unscheduled {
        if !reasons.contains(why) {
            reasons.push(why);
        }
    }
    if !reasons.is_empty() {
        out.push_str("\nnot scheduled in this process:\n");
    }
    for why in reasons {
        let names: Vec<&str> = unscheduled
            .iter()
            .filter(|(_, w)| *w == why)
            .map(|(name, _)| *name)
            .collect();
        let _ = writeln!(out, "  {}: {why}", names.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_s_steps_follow_its_attempts_escaped_and_none_means_no_table() {
        let mut detail = JobDetail {
            job: engine::admin::JobSummary {
                id: 7,
                kind: "export".into(),
                status: engine::JobState::Pending,
                attempt: 1,
                max_attempts: 3,
                priority: 0,
                run_at: 0,
                created_at: 0,
                finished_at: None,
                last_error: None,
                note: None,
                unique_key: None,
            },
            args: serde_json::json!({}),
            locked_by: None,
            attempts: Vec::new(),
            steps: Vec::new(),
            parent_id: None,
            children: Vec::new(),
            waiting_for: None,
        };
        assert!(!job_detail(&detail).contains("STEP"));
        detail.steps.push(engine::steps::StepRecord {
            seq: 0,
            name: "build\nzip".into(),
            result: "\"\u{202e}gpj.exe\"".into(),
            attempt: 1,
            finished_at: 1_767_225_600_000,
        });
        let out = job_detail(&detail);
        let last = out.lines().last().unwrap_or_default();
        assert_eq!(
            last,
            "0     build zip  1        2026-01-01T00:00:00.000Z  \"\\u{202e}gpj.exe\""
        );
        assert!(out.contains("STEP  NAME"), "{out}");
        assert!(!out.contains("CHILD"), "{out}");

        // A parent waiting for its children: what for, and one row per child, escaped.
        detail.waiting_for = Some("1 of the 1 children of \"kids\" to end".into());
        detail.children.push(engine::admin::ChildSummary {
            id: 9,
            kind: "thumb\nnail".into(),
            status: engine::JobState::Running,
            finished_at: None,
        });
        let out = job_detail(&detail);
        assert!(
            out.contains("waits for:   1 of the 1 children of \"kids\" to end"),
            "{out}"
        );
        assert_eq!(
            out.lines().last(),
            Some("9      thumb nail  running  -"),
            "{out}"
        );
    }

    #[test]
    fn tables_are_aligned_and_unpadded_at_the_end() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "a".into()],
                vec!["1234".into(), "é b".into()],
            ],
        );
        assert_eq!(t, "ID    NAME\n1     a\n1234  é b\n");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(1_767_225_600_000), "2026-01-01T00:00:00Z");
        assert_eq!(time_ms(1_767_225_600_250), "2026-01-01T00:00:00.250Z");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(one_line("ci\u{1b}[2Jx"), "ci\\u{1b}[2Jx");
        assert_eq!(one_line("a\u{7f}b\u{202e}c"), "a\\u{7f}b\\u{202e}c");
        assert_eq!(one_line("é ok"), "é ok");
    }

    #[test]
    fn left_out_schedules_are_named_under_the_table_with_their_reason() {
        let out = schedules(
            &[],
            &[("a_check", "no key"), ("b_check", "no key"), ("c", "off")],
        );
        assert_eq!(
            out,
            "NAME  KIND  EVERY  LAST RUN  NEXT RUN  LAST JOB\n\
             \nnot scheduled in this process:\n  a_check, b_check: no key\n  c: off\n"
        );
        assert!(!schedules(&[], &[]).contains("not scheduled"));
    }

    #[test]
    fn multi_line_errors_stay_on_one_line() {
        assert_eq!(opt(Some("a\n  b\tc")), "a b c");
        assert_eq!(opt(None), "-");
    }
}
