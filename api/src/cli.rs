//! The command line of `veza-jobs`. Configuration comes from the environment (and `.env`)
//! only; the command line says what to do.

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use engine::JobState;

use crate::auth::Scope;

/// veza-jobs: durable jobs on SQLite or Postgres. Without a command, `serve`.
///
/// Configured from the environment and an optional .env file: see config/.env.template.
#[derive(Debug, Parser)]
#[command(name = "veza-jobs", version, about, long_about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The command to run, `serve` when none was given.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve)
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate, then run the HTTP server (HTTP_ADDR), the workers and the scheduler until
    /// SIGTERM or SIGINT. The default.
    Serve,
    /// Migrate, then run the workers and the scheduler, without HTTP, until SIGTERM or SIGINT.
    Worker,
    /// Apply the database migrations and exit.
    Migrate,
    /// Seed an empty database (and MEDIA_ROOT/demo/) with a small marketplace for the
    /// README's examples: users, tracks with cover images, orders, API keys of each scope,
    /// a failed and a retrying job. Prints the ids and keys as `export` lines a shell can
    /// source. Refuses a database that has users, tracks, orders or API keys.
    Demo,
    /// Inspect, retry and cancel jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// List schedules and run them now.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Create, list and revoke the HTTP API's keys.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
}

/// `api-key …`
#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it (shown this once; only its hash is stored).
    Create {
        /// Who or what the key is for.
        #[arg(long)]
        name: String,
        /// What it may do: read (GET), write (also POST/PUT/DELETE), admin (everything).
        #[arg(long, value_enum)]
        scope: Scope,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never the keys themselves).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it is refused from now on.
    Revoke {
        /// The key's id.
        id: i64,
    },
}

/// `jobs …`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first, one page at a time.
    List(ListArgs),
    /// Show one job with its args and attempt history.
    Show {
        /// The job id.
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put a failed or cancelled job back to pending with fresh attempts.
    Retry {
        /// The job id.
        id: i64,
    },
    /// Cancel a pending or retrying job.
    Cancel {
        /// The job id.
        id: i64,
    },
}

/// `jobs list` filters.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only jobs in this state (pending, running, succeeded, retrying, failed, cancelled).
    #[arg(long, value_parser = parse_state)]
    pub status: Option<JobState>,
    /// Only jobs enqueued at or after this time (RFC 3339, e.g. 2026-01-01T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only jobs enqueued before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Jobs per page (1 to 500).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub limit: u32,
    /// Continue after this id (the previous page's next cursor).
    #[arg(long)]
    pub cursor: Option<i64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `schedules …`
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// List schedules with their last and next run.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a schedule's job now (nothing new if its previous run is unfinished).
    Run {
        /// The schedule's name.
        name: String,
    },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    s.parse()
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}: expected RFC 3339, e.g. 2026-01-01T00:00:00Z"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_means_serve() {
        let cli = Cli::try_parse_from(["veza-jobs"]).unwrap();
        assert!(matches!(cli.into_command(), Command::Serve));
    }

    #[test]
    fn list_filters_are_parsed_and_checked() {
        let cli = Cli::try_parse_from([
            "veza-jobs",
            "jobs",
            "list",
            "--status",
            "failed",
            "--since",
            "2026-01-01T01:00:00+01:00",
            "--limit",
            "5",
        ])
        .unwrap();
        let Command::Jobs(JobsCommand::List(args)) = cli.into_command() else {
            panic!("not jobs list");
        };
        assert_eq!(args.status, Some(JobState::Failed));
        assert_eq!(
            args.since.unwrap().to_rfc3339(),
            "2026-01-01T00:00:00+00:00"
        );
        assert_eq!(args.limit, 5);
        for bad in [
            &["--status", "done"][..],
            &["--since", "yesterday"],
            &["--limit", "0"],
            &["--limit", "501"],
        ] {
            let argv = ["veza-jobs", "jobs", "list"].iter().chain(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
    }
}
