//! `config/.env.template` lists exactly the variables the code reads, with their defaults
//! and help; and the environment is read only by the configuration modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use engine::config::VarSpec;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("api/ has a parent")
        .to_path_buf()
}

/// One `NAME=default` line of the template.
#[derive(Debug)]
struct Entry {
    default: String,
    /// The comment line just above it.
    comment: Option<String>,
    /// The crate of the `# ===== crate: …` header it is under.
    group: Option<String>,
}

/// Where the template is. With `UPDATE_ENV_TEMPLATE=1`, it is first rewritten from the
/// code ([`api::config::env_template`]): run
/// `UPDATE_ENV_TEMPLATE=1 cargo test -p api --test env_template` after adding a variable.
fn template_path() -> PathBuf {
    static UPDATED: std::sync::Once = std::sync::Once::new();
    let path = workspace().join("config/.env.template");
    UPDATED.call_once(|| {
        if std::env::var_os("UPDATE_ENV_TEMPLATE").is_some_and(|v| v == "1") {
            std::fs::write(&path, api::config::env_template()).expect("write the template");
        }
    });
    path
}

fn parse_template() -> BTreeMap<String, Entry> {
    let path = template_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut entries = BTreeMap::new();
    let mut comment = None;
    let mut group = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if let Some(header) = line.strip_prefix("# ===== ") {
            let name = header.split(':').next().unwrap_or_default().trim();
            group = Some(name.to_owned());
            comment = None;
        } else if let Some(c) = line.strip_prefix('#') {
            comment = Some(c.trim().to_owned());
        } else if line.is_empty() {
            comment = None;
        } else {
            let (name, default) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("line {}: expected NAME=default, got {line:?}", n + 1));
            let entry = Entry {
                default: default.to_owned(),
                comment: comment.take(),
                group: group.clone(),
            };
            assert!(
                entries.insert(name.to_owned(), entry).is_none(),
                "line {}: {name} is listed twice",
                n + 1
            );
        }
    }
    entries
}

fn expected() -> Vec<(&'static str, VarSpec)> {
    api::config::all_vars()
        .into_iter()
        .flat_map(|(group, vars)| vars.iter().map(move |v| (group, *v)))
        .collect()
}

#[test]
fn template_lists_exactly_every_variable() {
    let template = parse_template();
    let listed: BTreeSet<&str> = template.keys().map(String::as_str).collect();
    let read: BTreeSet<&str> = expected().iter().map(|(_, v)| v.name).collect();
    assert_eq!(
        listed.difference(&read).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "in config/.env.template but read by no crate"
    );
    assert_eq!(
        read.difference(&listed).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "read by a crate (engine::config::VARS, jobs::VARS, api::config::VARS) but missing from \
         config/.env.template: add them, or regenerate it with \
         UPDATE_ENV_TEMPLATE=1 cargo test -p api --test env_template"
    );
}

#[test]
fn the_generated_template_passes_these_checks() {
    let rendered = api::config::env_template();
    let names: Vec<&str> = rendered
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split_once('=').map(|(n, _)| n))
        .collect();
    let expected: Vec<&str> = expected().iter().map(|(_, v)| v.name).collect();
    assert_eq!(names, expected);
}

#[test]
fn template_defaults_help_and_groups_match_the_code() {
    let template = parse_template();
    for (group, var) in expected() {
        let Some(entry) = template.get(var.name) else {
            continue; // reported by template_lists_exactly_every_variable
        };
        assert_eq!(
            entry.default, var.default,
            "{}: the template's default differs from the code's",
            var.name
        );
        assert_eq!(
            entry.comment.as_deref(),
            Some(var.help),
            "{}: the comment line above it must be its help text",
            var.name
        );
        assert_eq!(
            entry.group.as_deref(),
            Some(group),
            "{}: must be under the `# ===== {group}: …` header",
            var.name
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Configuration is read through `engine::config::Env` only, so that every variable is
/// validated at start and listed in the template. `std::env::var*` is allowed in the
/// configuration modules, in the test kit (`TEST_POSTGRES_URL`, `CI`) and for the host
/// name in the default worker id.
#[test]
fn only_configuration_modules_read_the_environment() {
    let root = workspace();
    let mut files = Vec::new();
    for dir in ["engine/src", "jobs/src", "api/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "found only {files:?}");
    let whole_file_allowed = [
        "engine/src/config.rs",
        "engine/src/testing.rs",
        "api/src/config.rs",
    ];
    let mut offenders = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .expect("under the workspace")
            .to_string_lossy()
            .replace('\\', "/");
        if whole_file_allowed.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            if !line.contains("env::var") {
                continue;
            }
            let hostname = rel == "engine/src/engine.rs" && line.contains("\"HOSTNAME\"");
            if !hostname {
                offenders.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "read the environment through engine::config::Env (declare a VarSpec) instead:\n{}",
        offenders.join("\n")
    );
}
