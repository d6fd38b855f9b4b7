//! No code outside the state modules writes a `status` column. The transition helper takes
//! the column name from a `Lifecycle` impl; this scan catches a hand-written `SET status`
//! anywhere else (the engine's own job-status writes live only in engine/src/storage.rs).

use std::path::Path;

/// Files allowed to write a status column.
const ALLOWED: &[&str] = &[
    "engine/src/storage.rs", // the engine's job states, each a guarded UPDATE
    "engine/src/state_machine.rs", // the domain transition helper
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_state_modules_write_a_status_column() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in ["engine/src", "jobs/src", "api/src"] {
        if root.join(dir).exists() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    assert!(files.len() > 10, "the scan must see the sources");
    let mut offenders = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if ALLOWED.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap().to_lowercase();
        let squashed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if squashed.contains("set status") {
            offenders.push(format!("{rel}: contains \"set status\""));
        }
        // `UPDATE t SET a = 1, status = 'x'`: a status among other columns of an UPDATE.
        for (at, _) in squashed.match_indices("update ") {
            let statement: String = squashed[at..]
                .chars()
                .take(400)
                .take_while(|c| *c != ';')
                .collect();
            if statement.contains(" set ") && statement.contains(", status =") {
                offenders.push(format!("{rel}: an UPDATE sets status among other columns"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "status written outside the state modules: {offenders:#?}"
    );
}
