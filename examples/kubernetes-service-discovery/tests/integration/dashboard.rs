//! The committed Grafana dashboard queries only series the replicas export, in PromQL that a real
//! Prometheus accepts: per-group series filtered by the `group` variable (both groups of the
//! service offered), replica-wide ones without a `group` label.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::process::{Cluster, PATIENCE, PeerPort, Prometheus, TempDir, get, http, require_tool};

const DASHBOARD: &str = include_str!("../../grafana/groupcache-dashboard.json");

/// Every PromQL expression of the dashboard: the panels' targets and the variables' queries.
fn expressions(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(expr.to_owned());
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    exprs
}

/// The metrics of the replica as a whole, for all its groups: they have no `group` label.
const REPLICA_WIDE: &[&str] = &[
    "groupcache_peers",
    "groupcache_peer_suspicions_total",
    "groupcache_peer_auth_failures_total",
    "groupcache_auth_nonces",
    "groupcache_peer_requests_waiting",
    "groupcache_peer_requests_shed_total",
];

/// Each `groupcache_*` selector of an expression: the name and its label matchers (empty
/// without braces).
fn selectors(expr: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("groupcache_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let matchers = match tail[end..].strip_prefix('{') {
            Some(inner) => inner[..inner.find('}').unwrap_or(inner.len())].to_owned(),
            None => String::new(),
        };
        found.push((tail[..end].to_owned(), matchers));
        rest = &tail[end..];
    }
    found
}

/// Per-group series follow the `group` variable; replica-wide ones cannot (no such label).
#[test]
fn group_filters_only_the_per_group_series() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard parses");
    for expr in expressions(&dashboard) {
        if expr.starts_with("label_values(") {
            continue;
        }
        for (name, matchers) in selectors(&expr) {
            // Histograms' series are named after their metric.
            let metric = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            if REPLICA_WIDE.contains(&metric) {
                assert!(!matchers.contains("group"), "{name} has no group: {expr}");
            } else {
                assert!(
                    matchers.contains("group=~\"$group\""),
                    "{name} is per group: {expr}"
                );
            }
        }
    }
}

/// The `groupcache_*` names an expression refers to.
fn series(expr: &str) -> BTreeSet<String> {
    selectors(expr).into_iter().map(|(name, _)| name).collect()
}

#[tokio::test]
async fn the_grafana_dashboard_queries_series_the_replicas_export() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard parses");
    let exprs = expressions(&dashboard);
    let queried: BTreeSet<String> = exprs.iter().flat_map(|expr| series(expr)).collect();
    assert!(
        queried.len() >= 10,
        "the dashboard queries only {queried:?}"
    );

    let dir = TempDir::new("dashboard");
    let cluster =
        Cluster::start_static(3, PeerPort::Shared, &["--load-latency", "0ms"], dir.path()).await;
    let http = http();
    for key in 0..12 {
        for replica in &cluster.replicas {
            for path in ["items/d", "categories/c"] {
                let (status, body) = get(&http, &format!("{}/{path}{key}", replica.url)).await;
                assert_eq!(status, 200, "{body}");
            }
        }
    }
    let (status, metrics) = get(&http, &format!("{}/metrics", cluster.replicas[0].url)).await;
    assert_eq!(status, 200);
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}; exported: {exported:?}"
    );

    // A real Prometheus scraping the replicas accepts every expression, variables filled in.
    let Some(prometheus_bin) = require_tool("prometheus") else {
        return;
    };
    let prometheus = Prometheus::start(&prometheus_bin, &cluster.addresses(), dir.path()).await;
    let fill = |expr: &str| {
        expr.replace("$group", ".*")
            .replace("$instance", ".*")
            .replace("$__rate_interval", "1m")
    };
    let deadline = Instant::now() + PATIENCE;
    // The ring panel shows all three replicas, each with three members, once scraped.
    let ring = exprs
        .iter()
        .find(|expr| expr.contains("groupcache_peers"))
        .expect("a panel of the ring's members");
    loop {
        let results = prometheus.query(&http, &fill(ring)).await;
        if results.len() == 3 && results.iter().all(|(_, members)| *members == 3.0) {
            break;
        }
        assert!(Instant::now() < deadline, "ring panel: {results:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for expr in &exprs {
        if expr.starts_with("label_values(") {
            // Grafana's function, not PromQL: its series must have the label, and the `group`
            // variable offers both groups.
            let results = prometheus.query(&http, "groupcache_gets_total").await;
            assert!(
                results
                    .iter()
                    .all(|(labels, _)| labels["group"].is_string())
            );
            let groups: BTreeSet<&str> = results
                .iter()
                .filter_map(|(labels, _)| labels["group"].as_str())
                .collect();
            assert_eq!(groups, BTreeSet::from(["categories", "items"]));
            continue;
        }
        // `query` asserts that Prometheus accepted it (HTTP 200).
        prometheus.query(&http, &fill(expr)).await;
    }
}
