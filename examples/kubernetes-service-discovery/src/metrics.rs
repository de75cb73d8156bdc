//! The Prometheus exporter, rendered by the app's own `/metrics` route (no second listener).

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::Error;

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

const DISCOVERY_ERRORS: &str = "peer_discovery_errors_total";

/// Counts a failure of the EndpointSlice watch.
pub(crate) fn discovery_error(reason: &'static str) {
    metrics::counter!(DISCOVERY_ERRORS, "reason" => reason).increment(1);
}
