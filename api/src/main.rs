//! `veza-jobs`: the server (default), the worker and the admin CLI. See `veza-jobs --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    api::run(api::cli::Cli::parse())
}
