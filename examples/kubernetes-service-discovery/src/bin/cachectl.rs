//! `cachectl`: see `cachectl --help`, `kubernetes_service_discovery::cli` and the example's README.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kubernetes_service_discovery::cli::{self, Cli};

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's code), help and version 0.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cachectl: cannot start the async runtime: {error}");
            return ExitCode::from(cli::exit::FAILED);
        }
    };
    let outcome = runtime.block_on(cli::run(&cli));
    // A closed pipe (`cachectl stats | head -1`) is no reason to panic.
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    ExitCode::from(outcome.code)
}
