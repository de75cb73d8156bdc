//! The Prometheus exporter, rendered by the app's own `/metrics` route (no second listener).

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::Error;

/// Histogram buckets for the `*_seconds` metrics, from a cache hit on a peer to a slow load.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global recorder. Call it before building the cache: the cache registers its
/// metrics when it is built. Spawns the exporter's upkeep task, so call it inside the runtime.
pub fn install() -> Result<PrometheusHandle, Error> {
    let handle = PrometheusBuilder::new()
        // Real histograms rather than summaries, so they can be aggregated across replicas.
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|builder| builder.install_recorder())
        .map_err(|e| Error::Metrics(e.to_string()))?;
    metrics::describe_counter!(
        DISCOVERY_ERRORS,
        "Errors of the EndpointSlice watch, each followed by a retry."
    );
    // Present from the start, so that `rate()` and alerts see a 0 rather than no series.
    for reason in DISCOVERY_ERROR_REASONS {
        metrics::counter!(DISCOVERY_ERRORS, "reason" => *reason).absolute(0);
    }
    metrics::describe_counter!(
        WRITES_INCOMPLETE,
        "PUTs and DELETEs written to the database whose cache step did not reach every \
         replica (answered 202): some replicas may answer the old value until its entry expires."
    );
    for op in ["put", "delete"] {
        metrics::counter!(WRITES_INCOMPLETE, "op" => op).absolute(0);
    }
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered on the main port, by method, route (the path pattern) and status."
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to answer HTTP requests on the main port, by method and route."
    );
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Every `reason` of the discovery error counter (the EndpointSlice watch's kinds of failure), so
/// that each series exists (at 0) from the start.
pub(crate) const DISCOVERY_ERROR_REASONS: &[&str] = &[
    "list",
    "watch_start",
    "gone",
    "watch_event",
    "watch_stream",
    "no_resource_version",
];

const DISCOVERY_ERRORS: &str = "peer_discovery_errors_total";
const WRITES_INCOMPLETE: &str = "item_writes_incomplete_total";
const HTTP_REQUESTS: &str = "http_requests_total";
const HTTP_DURATION: &str = "http_request_duration_seconds";

/// Counts a write whose cache step did not reach every replica (`op`: `put` or `delete`).
pub(crate) fn write_incomplete(op: &'static str) {
    metrics::counter!(WRITES_INCOMPLETE, "op" => op).increment(1);
}

/// Middleware: counts each request by method, route and status, and times it. The route is the
/// matched pattern (`/items/{key}`), never the raw path, so that keys do not become series;
/// unmatched paths count as `unmatched`.
pub async fn track_http(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let start = std::time::Instant::now();
    let method = known_method(request.method());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    // The request's span: the root of its trace, or a child of the caller's `traceparent`.
    let span =
        tracing::info_span!("http.request", method, route = %route, status = tracing::field::Empty);
    if !span.is_disabled() {
        groupcache_rs::TraceContext::extract(
            &groupcache_rs::W3cTraceContext,
            request.headers(),
            &span,
        );
    }
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("status", response.status().as_u16());
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}

/// The method as a label: the standard ones by name, any other as `other` (a client could send
/// endless made-up methods).
fn known_method(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Counts a failure of the EndpointSlice watch.
pub(crate) fn discovery_error(reason: &'static str) {
    metrics::counter!(DISCOVERY_ERRORS, "reason" => reason).increment(1);
}
