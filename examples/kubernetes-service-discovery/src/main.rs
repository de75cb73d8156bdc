//! The service binary: see `--help`, and the example's README.

use std::str::FromStr;

use clap::Parser;
use kubernetes_service_discovery::config::{Config, LogFormat};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kubernetes_service_discovery::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "exiting");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stdout at the levels of `RUST_LOG` (`info` by default, e.g. `info,kube=debug`).
fn init_logging(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").unwrap_or_default();
    let parsed = Targets::from_str(&directives);
    let filter = match &parsed {
        Ok(targets) if !directives.trim().is_empty() => targets.clone(),
        _ => Targets::new().with_default(tracing::Level::INFO),
    };
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            registry
                .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
                .init();
        }
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .init(),
    }
    if let Err(error) = parsed {
        tracing::warn!(%error, rust_log = directives, "ignoring RUST_LOG; logging at info");
    }
}
