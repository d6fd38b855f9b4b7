//! Configuration from the environment only (and an optional `.env`), validated before
//! anything starts. Each crate declares the variables it reads as [`VarSpec`]s, reads them
//! through an [`Env`], and a test checks `config/.env.template` lists exactly those.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::db::{Backend, DEFAULT_SQLITE_URL};
use crate::engine::{RetentionSettings, WorkerSettings, default_worker_id};

/// A variable: its name, its default (empty: unset) and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VarSpec {
    /// The environment variable.
    pub name: &'static str,
    /// Its default, as it would be written in `.env` (empty for "unset").
    pub default: &'static str,
    /// One line on what it does.
    pub help: &'static str,
}

/// Every configuration problem found, each naming its variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration:")?;
        for problem in &self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads variables, collecting every problem instead of stopping at the first.
pub struct Env {
    values: HashMap<String, String>,
    problems: Vec<String>,
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Self::from_map(std::env::vars().collect())
    }

    /// A given set of variables (tests).
    pub fn from_map(values: HashMap<String, String>) -> Self {
        Self {
            values,
            problems: Vec::new(),
        }
    }

    /// A given set of variables as `(name, value)` pairs (tests).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::from_map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    /// The raw value: set and non-empty, else the default.
    pub fn raw(&self, var: &VarSpec) -> Option<String> {
        self.values
            .get(var.name)
            .filter(|v| !v.trim().is_empty())
            .cloned()
            .or_else(|| (!var.default.is_empty()).then(|| var.default.to_owned()))
    }

    /// Records a problem with `var`.
    pub fn problem(&mut self, var: &VarSpec, expected: &str) {
        let got = match self.values.get(var.name).filter(|v| !v.trim().is_empty()) {
            Some(v) => format!("{v:?}"),
            None => format!("unset (default {:?})", var.default),
        };
        self.problems
            .push(format!("{} must be {expected}, got {got}", var.name));
    }

    /// A string (the default when unset).
    pub fn string(&mut self, var: &VarSpec) -> String {
        self.raw(var).unwrap_or_default()
    }

    /// An optional string.
    pub fn optional(&mut self, var: &VarSpec) -> Option<String> {
        self.raw(var)
    }

    /// A duration such as `500ms`, `30s`, `1h`, `7d`.
    pub fn duration(&mut self, var: &VarSpec) -> Duration {
        let raw = self.raw(var).unwrap_or_default();
        match humantime::parse_duration(&raw) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.problem(var, "a duration above zero such as 500ms, 30s, 1h or 7d");
                Duration::from_secs(1)
            }
        }
    }

    /// A whole number of at least 1.
    pub fn positive<T: FromStr + TryFrom<u8> + PartialOrd>(&mut self, var: &VarSpec) -> T {
        let one = T::try_from(1u8).ok().expect("1 fits every integer type");
        let raw = self.raw(var).unwrap_or_default();
        match raw.trim().parse::<T>() {
            Ok(n) if n >= one => n,
            _ => {
                self.problem(var, "a positive whole number");
                one
            }
        }
    }

    /// One of `choices`.
    pub fn choice(&mut self, var: &VarSpec, choices: &[&'static str]) -> &'static str {
        let raw = self.raw(var).unwrap_or_default().to_ascii_lowercase();
        match choices.iter().find(|c| **c == raw) {
            Some(c) => c,
            None => {
                self.problem(var, &format!("one of {}", choices.join(", ")));
                choices[0]
            }
        }
    }

    /// `Ok` if every read was valid, else every problem at once.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.problems))
        }
    }
}

/// Declares a configuration variable: `config_var!(IDENT, "NAME", "default", "help")`
/// makes `pub const IDENT: VarSpec`, documented by its help text. Every crate declares its
/// variables with it, beside the code that reads them; the env template is generated
/// from the `VarSpec`s.
#[macro_export]
macro_rules! config_var {
    ($ident:ident, $name:literal, $default:literal, $help:literal) => {
        #[doc = $help]
        pub const $ident: $crate::config::VarSpec = $crate::config::VarSpec {
            name: $name,
            default: $default,
            help: $help,
        };
    };
}

crate::config_var!(
    DATABASE_URL,
    "DATABASE_URL",
    "",
    "Job database: unset for the SQLite file ./veza-jobs.db, or postgres://user@host/db to share one database among many workers."
);
crate::config_var!(
    DATABASE_MAX_CONNECTIONS,
    "DATABASE_MAX_CONNECTIONS",
    "10",
    "Connections in the pool of each process."
);
crate::config_var!(
    JOB_LEASE_TTL,
    "JOB_LEASE_TTL",
    "30s",
    "How long a claimed job stays leased without a renewal; a worker that dies loses its jobs to another worker after this, and a worker whose renewal finds its lease gone stops that attempt. On Postgres lease times are read from the database's clock (hosts' clocks may differ); on SQLite every worker is on one host."
);
crate::config_var!(
    JOB_HEARTBEAT_INTERVAL,
    "JOB_HEARTBEAT_INTERVAL",
    "10s",
    "How often a worker renews its leases and rescues expired ones; at most a third of JOB_LEASE_TTL."
);
crate::config_var!(
    JOB_POLL_INTERVAL,
    "JOB_POLL_INTERVAL",
    "500ms",
    "How often an idle worker looks for due jobs when no wake-up arrives (retries, scheduled jobs, SQLite enqueues from another process)."
);
crate::config_var!(
    JOB_FETCH_BATCH,
    "JOB_FETCH_BATCH",
    "1000",
    "Most jobs a kind keeps claimed ahead of its running ones, in the worker's memory (leases renewed); never more than its workers can start within a second, and none for long jobs. Larger claims and ack batches cost fewer round trips per job: 1000 drains a backlog of quick jobs ~1.6x faster than 100."
);
crate::config_var!(
    WORKER_ID,
    "WORKER_ID",
    "",
    "This process's worker id in leases and attempt history; default host-pid-random."
);
crate::config_var!(
    RETENTION_SUCCEEDED,
    "RETENTION_SUCCEEDED",
    "7d",
    "Succeeded jobs older than this are deleted by the hourly prune_jobs job."
);
crate::config_var!(
    RETENTION_FAILED,
    "RETENTION_FAILED",
    "30d",
    "Failed and cancelled jobs older than this are deleted by prune_jobs."
);
crate::config_var!(
    PRUNE_BATCH,
    "PRUNE_BATCH",
    "1000",
    "Jobs deleted per prune transaction."
);
crate::config_var!(
    SHUTDOWN_SERVICE_TIMEOUT,
    "SHUTDOWN_SERVICE_TIMEOUT",
    "10s",
    "On SIGTERM/SIGINT, how long each service (HTTP, workers, scheduler) may take to stop; running jobs not done by then are released to other workers."
);
crate::config_var!(
    SHUTDOWN_TIMEOUT,
    "SHUTDOWN_TIMEOUT",
    "30s",
    "On SIGTERM/SIGINT, how long the whole shutdown may take."
);
crate::config_var!(
    LOG_FORMAT,
    "LOG_FORMAT",
    "text",
    "Log format: text (human-readable) or json."
);
crate::config_var!(
    LOG_LEVEL,
    "LOG_LEVEL",
    "info",
    "Log filter in tracing's EnvFilter syntax, e.g. info or engine=debug,info."
);

/// The engine's variables, in `.env.template` order.
pub const VARS: &[VarSpec] = &[
    DATABASE_URL,
    DATABASE_MAX_CONNECTIONS,
    JOB_LEASE_TTL,
    JOB_HEARTBEAT_INTERVAL,
    JOB_POLL_INTERVAL,
    JOB_FETCH_BATCH,
    WORKER_ID,
    RETENTION_SUCCEEDED,
    RETENTION_FAILED,
    PRUNE_BATCH,
    SHUTDOWN_SERVICE_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    LOG_FORMAT,
    LOG_LEVEL,
];

/// The engine's configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Database URL (SQLite default filled in).
    pub database_url: String,
    /// Its backend.
    pub backend: Backend,
    /// Pool size.
    pub max_connections: u32,
    /// Worker settings.
    pub workers: WorkerSettings,
    /// Retention.
    pub retention: RetentionSettings,
    /// Per-service shutdown budget.
    pub shutdown_service_timeout: Duration,
    /// Overall shutdown budget.
    pub shutdown_timeout: Duration,
    /// `text` or `json`.
    pub log_format: &'static str,
    /// EnvFilter directive.
    pub log_level: String,
}

impl EngineConfig {
    /// Reads the engine's variables from `env` (problems are collected in `env`).
    pub fn read(env: &mut Env) -> Self {
        let database_url = env
            .optional(&DATABASE_URL)
            .unwrap_or_else(|| DEFAULT_SQLITE_URL.to_owned());
        let backend = Backend::from_url(&database_url).unwrap_or_else(|| {
            env.problem(
                &DATABASE_URL,
                "unset (SQLite), sqlite://FILE or postgres://USER@HOST/DB",
            );
            Backend::Sqlite
        });
        let lease_ttl = env.duration(&JOB_LEASE_TTL);
        let heartbeat_interval = env.duration(&JOB_HEARTBEAT_INTERVAL);
        let lease_is_valid =
            humantime::parse_duration(&env.raw(&JOB_LEASE_TTL).unwrap_or_default())
                .is_ok_and(|d| !d.is_zero());
        // Only compare the two when the lease itself was valid: its fallback would make a
        // second, false complaint.
        if lease_is_valid && heartbeat_interval * 3 > lease_ttl {
            env.problem(
                &JOB_HEARTBEAT_INTERVAL,
                "at most a third of JOB_LEASE_TTL, so one missed renewal does not lose the lease",
            );
        }
        let workers = WorkerSettings {
            worker_id: env
                .optional(&WORKER_ID)
                .unwrap_or_else(default_worker_id)
                .into(),
            lease_ttl,
            heartbeat_interval,
            poll_interval: env.duration(&JOB_POLL_INTERVAL),
            fetch_batch: env.positive(&JOB_FETCH_BATCH),
        };
        let retention = RetentionSettings {
            succeeded: env.duration(&RETENTION_SUCCEEDED),
            failed: env.duration(&RETENTION_FAILED),
            batch: env.positive(&PRUNE_BATCH),
        };
        let shutdown_service_timeout = env.duration(&SHUTDOWN_SERVICE_TIMEOUT);
        let shutdown_timeout = env.duration(&SHUTDOWN_TIMEOUT);
        Self {
            database_url,
            backend,
            max_connections: env.positive(&DATABASE_MAX_CONNECTIONS),
            workers,
            retention,
            shutdown_service_timeout,
            shutdown_timeout,
            log_format: env.choice(&LOG_FORMAT, &["text", "json"]),
            log_level: env.string(&LOG_LEVEL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_a_valid_sqlite_config() {
        let mut e = Env::from_pairs(&[]);
        let c = EngineConfig::read(&mut e);
        e.finish().unwrap();
        assert_eq!(c.backend, Backend::Sqlite);
        assert_eq!(c.workers.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.retention.succeeded, Duration::from_secs(7 * 86400));
    }

    #[test]
    fn every_bad_value_is_reported_with_its_variable() {
        let mut e = Env::from_pairs(&[
            ("DATABASE_URL", "mysql://x"),
            ("JOB_LEASE_TTL", "soon"),
            ("JOB_FETCH_BATCH", "0"),
            ("LOG_FORMAT", "xml"),
        ]);
        EngineConfig::read(&mut e);
        let err = e.finish().unwrap_err().to_string();
        for var in [
            "DATABASE_URL",
            "JOB_LEASE_TTL",
            "JOB_FETCH_BATCH",
            "LOG_FORMAT",
        ] {
            assert!(
                err.contains(&format!("{var} must be")),
                "{var} missing from: {err}"
            );
        }
        assert!(err.contains("got \"0\""), "{err}");
    }

    #[test]
    fn heartbeat_must_fit_three_times_in_the_lease() {
        let mut e = Env::from_pairs(&[("JOB_LEASE_TTL", "10s"), ("JOB_HEARTBEAT_INTERVAL", "5s")]);
        EngineConfig::read(&mut e);
        assert!(
            e.finish()
                .unwrap_err()
                .to_string()
                .contains("JOB_HEARTBEAT_INTERVAL must be at most a third")
        );
    }
}
