//! The service binary: see `--help`, and the example's README.

use std::str::FromStr;

use clap::Parser;
use kubernetes_service_discovery::config::{Config, LogFormat};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let tracer = init_logging(&config);
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
    let code = match runtime.block_on(kubernetes_service_discovery::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "exiting");
            std::process::ExitCode::FAILURE
        }
    };
    // The spans not exported yet go out before the process ends.
    if let Some(tracer) = tracer
        && let Err(error) = tracer.shutdown()
    {
        eprintln!("exporting the last traces failed: {error}");
    }
    code
}

/// Logs to stdout at the levels of `RUST_LOG` (`info` by default, e.g. `info,kube=debug`), and,
/// with `--otlp-endpoint`, exports the spans over OTLP/HTTP: the provider to shut down at exit.
fn init_logging(config: &Config) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    let directives = std::env::var("RUST_LOG").unwrap_or_default();
    let parsed = Targets::from_str(&directives);
    let filter = match &parsed {
        Ok(targets) if !directives.trim().is_empty() => targets.clone(),
        _ => Targets::new().with_default(tracing::Level::INFO),
    };
    let (tracer, otlp_error) = match &config.otlp_endpoint {
        Some(endpoint) => match otlp(endpoint, config.replica_name.as_deref()) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        },
        None => (None, None),
    };
    let traces = tracer.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        // No per-poll timing, thread or source attributes, and no OpenTelemetry context made
        // current on each poll (nothing here reads `opentelemetry::Context::current()`): each
        // costs every span (BENCHMARKS.md).
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("kubernetes-service-discovery"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_context_activation(false)
    });
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    match config.log_format {
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
    if let Some(error) = otlp_error {
        tracing::warn!(%error, "cannot export traces over OTLP; running without");
    }
    tracer
}

/// A tracer provider exporting over OTLP/HTTP to `endpoint` (the collector's base URL), in
/// batches from a thread of its own, its spans naming this service and replica; W3C trace
/// context for the requests this replica receives and sends.
fn otlp(
    endpoint: &str,
    replica: Option<&str>,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => opentelemetry_otlp::Protocol::HttpJson,
        _ => opentelemetry_otlp::Protocol::HttpBinary,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    let replica = replica
        .map(str::to_owned)
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME")
                .unwrap_or_else(|_| "kubernetes-service-discovery".to_owned()),
        )
        .with_attribute(opentelemetry::KeyValue::new("service.instance.id", replica))
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
