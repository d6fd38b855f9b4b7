//! veza-jobs' binary as a library: the command line ([`cli`]), the configuration
//! ([`config`]), the engine and services built from it ([`app`]), the HTTP front
//! ([`server`]: [`routes`] behind [`auth`], the [`admin`] dashboard, [`problem`], [`metrics`], [`request_id`],
//! [`body_limit`], [`nul_bytes`], [`wire_errors`], the served document of [`spec`]), the CLI commands
//! ([`commands`], [`output`]) and the demo data ([`demo`]).
//!
//! Exit codes: 0 done, 1 failed (the error is printed), 2 bad configuration or usage.
#![warn(missing_docs)]

use std::process::ExitCode;
use std::time::Duration;

pub mod admin;
pub mod app;
pub mod auth;
pub mod body_limit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod log_gate;
pub mod metrics;
pub mod nul_bytes;
pub mod output;
pub mod problem;
pub mod redact;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod spec;
pub mod state;
pub mod wire_errors;

/// Exit code of a bad configuration (and, from clap, of a bad command line).
pub const EXIT_CONFIG: u8 = 2;

/// Runs the parsed command line: loads and checks the configuration, starts logging, runs
/// the command and returns the process's exit code.
pub fn run(cli: cli::Cli) -> ExitCode {
    let config = match config::Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let filter = engine::telemetry::with_defaults(
        &config.engine.log_level,
        &[jobs::payments::SDK_LOG_DIRECTIVE],
    );
    engine::telemetry::init(config.engine.log_format, &filter);
    jobs::install_tls_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(commands::execute(cli.into_command(), config));
    // Tasks still running after shutdown (connections cut at their deadline) are dropped.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error with its causes, `": "`-separated; a cause that only repeats the text before
/// it (sqlx wraps a database's error and displays it too) is left out.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if !last.is_empty() && last.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
        last = message;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_causes_are_printed_once() {
        let e = anyhow::anyhow!("(code: 1) no such table: jobs")
            .context("error returned from database: (code: 1) no such table: jobs")
            .context("database error");
        assert_eq!(
            error_text(&e),
            "database error: error returned from database: (code: 1) no such table: jobs"
        );
    }
}
