//! Only `jobs/src/transfers/state.rs` writes `seller_transfers`: its status (and the retry
//! columns that move with it) cannot be changed by any other code path.
//!
//! By construction the row's status field is private and the table's `Lifecycle` is a
//! private type (see the `compile_fail` examples in `state.rs`); this scan catches what the
//! compiler cannot: hand-written SQL, or a second `Lifecycle` aimed at the table.

use std::path::{Path, PathBuf};

const STATE_MODULE: &str = "jobs/src/transfers/state.rs";

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file of the workspace's crates, relative path → lower-cased code (comment
/// lines dropped) with whitespace squashed.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in ["engine/src", "jobs/src", "api/src", "tests"] {
        if root.join(dir).exists() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    files
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&f).unwrap().to_lowercase();
            let code: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| l.trim_end().trim_end_matches('\\')) // string continuations
                .collect();
            (
                rel,
                code.join("\n")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect()
}

#[test]
fn only_the_state_module_writes_seller_transfers() {
    let sources = sources();
    assert!(
        sources.iter().any(|(rel, _)| rel == STATE_MODULE),
        "the scan must see the state module"
    );
    let mut offenders = Vec::new();
    for (rel, text) in &sources {
        if rel == STATE_MODULE {
            continue;
        }
        for needle in [
            "update seller_transfers",
            "insert into seller_transfers",
            "delete from seller_transfers",
            "replace into seller_transfers",
            "const table: &'static str = \"seller_transfers\"",
        ] {
            if text.contains(needle) {
                offenders.push(format!("{rel}: contains {needle:?}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "seller_transfers written outside {STATE_MODULE}: {offenders:#?}"
    );
}

#[test]
fn the_state_module_writes_through_the_guarded_transition_only() {
    let (_, text) = sources()
        .into_iter()
        .find(|(rel, _)| rel == STATE_MODULE)
        .unwrap();
    // Status changes go through engine::state_machine::transition (guarded UPDATE + audit):
    // no hand-written status assignment, even here.
    assert!(!text.contains("set status"), "a hand-written status write");
    assert!(!text.contains(", status ="), "a hand-written status write");
    // The one plain UPDATE marks a payout attempt, guarded on the statuses it may see.
    assert_eq!(text.matches("update seller_transfers").count(), 1);
    assert!(text.contains(
        "update seller_transfers set payout_attempted_at = $1, updated_at = $1 where id = $2 and status in ('pending', 'failed')"
    ));
    // Its Lifecycle is private.
    assert!(text.contains("struct stored(transferstatus);"));
    assert!(!text.contains("pub struct stored"));
}
