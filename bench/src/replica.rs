//! The two server processes the benchmark starts from its own binary: a Rust replica of the
//! benchmark group, and the ceiling, a bare axum server.
//!
//! A replica speaks the same control interface as the Go test peer (`tests/interop/go-peer`), so
//! the driver treats both languages alike:
//!
//! - the first line on stdout is `listening http://127.0.0.1:PORT`;
//! - `POST /peers` with a JSON array of URLs sets the ring;
//! - `GET /get/{key}` is the user-facing read: the value's bytes;
//! - `GET /stats` gives the counters as the Go peer names them;
//! - `GET /healthz` answers `ok`.
//!
//! A Rust replica also answers `POST /many` (issue 14's batch workload, driven from `batch.rs`):
//! one `get_many` of a JSON array of keys, or with `?singles` one `get` per key; and its loader's
//! `load_many` is the batch loader that workload measures, counted in `/stats`.
//!
//! A Rust replica started with `--groups 1|2` is groups-flood's instead (`flood.rs`): one
//! `Cluster` serving the calm group and the flood group (see [`run_groups_replica`]).
//!
//! Both exit when their stdin closes, so they never outlive the driver. A replica serves through
//! `groupcache_rs::Server`, as the README recommends for the peer port; the ceiling through
//! `axum::serve`, the bare minimum. The ceiling answers `GET /static` at once, and
//! `GET /storm/{key}` the way an ideal cache would answer a cold storm: every request for a key
//! once [`STORM_LOAD`] has passed since the key's first request, with no cache, flight or peer in
//! between.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use groupcache_rs::{
    Cluster, Groupcache, LOAD_MANY_CONCURRENCY, Loaded, Loader, Results, RingMode,
};

use crate::args::ReplicaOptions;
use crate::shared::{
    CALM, EXPIRING_KEYS, FLOOD, FLOOD_KEYS, GROUP, MISSING_KEYS, STORM_LOAD, TINY_BYTES, TINY_KEYS,
};
use crate::source::{self, SourceError};

/// The benchmark's loader: `rs:{key}` padded to the configured size, after the configured sleep
/// (for keys that start with `delayed`; the others load at once). It asks the replica's
/// [`source`] first: no value while it is down, a negative answer for
/// [`MISSING_KEYS`], and `rs:{key}#{version}` once the driver has set a version.
struct BenchLoader {
    value_bytes: usize,
    delay: Duration,
    /// The keys that take `delay`; "" is every key.
    delayed: &'static str,
    /// Whether `load_many` is the batch loader (see [`BenchLoader::load_many`]).
    batch: bool,
    /// How long values of [`EXPIRING_KEYS`] live (zero: for ever).
    ttl: Duration,
    /// When values of [`EXPIRING_KEYS`] are refreshed ahead (zero: never).
    refresh: Duration,
}

/// Calls of the replica's `load_many` (one replica per process).
static LOAD_MANY_CALLS: AtomicU64 = AtomicU64::new(0);

impl Loader for BenchLoader {
    type Value = Bytes;
    type Error = SourceError;

    async fn load(&self, key: &str) -> Result<Loaded<Bytes>, SourceError> {
        let version = source::query(key);
        if !self.delay.is_zero() && key.starts_with(self.delayed) {
            tokio::time::sleep(self.delay).await;
        }
        let version = version?;
        if key.starts_with(MISSING_KEYS) {
            return Err(SourceError::NotFound);
        }
        let value = if version == 0 {
            value_for("rs:", key, self.size_for(key))
        } else {
            value_for("rs:", &format!("{key}#{version}"), self.size_for(key))
        };
        let mut loaded = Loaded::new(Bytes::from(value));
        if key.starts_with(EXPIRING_KEYS) {
            if !self.ttl.is_zero() {
                loaded = loaded.expire_after(self.ttl);
            }
            if !self.refresh.is_zero() {
                loaded = loaded.refresh_after(self.refresh);
            }
        }
        Ok(loaded)
    }

    fn is_not_found(&self, error: &SourceError) -> bool {
        *error == SourceError::NotFound
    }

    /// With `batch`, one sleep of the loader's latency for all the keys (a
    /// `WHERE id = ANY($1)` query); without, the library's default (each key's `load`, at most
    /// `LOAD_MANY_CONCURRENCY` at once). Every call is counted.
    async fn load_many(&self, keys: &[String], results: &Results<Bytes, SourceError>) {
        LOAD_MANY_CALLS.fetch_add(1, Ordering::Relaxed);
        if !self.batch {
            futures_util::stream::iter(keys.iter().enumerate())
                .for_each_concurrent(LOAD_MANY_CONCURRENCY, |(index, key)| async move {
                    results.put(index, self.load(key).await);
                })
                .await;
            return;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        for (index, key) in keys.iter().enumerate() {
            let value = Bytes::from(value_for("rs:", key, self.size_for(key)));
            results.put(index, Ok(Loaded::new(value)));
        }
    }
}

impl BenchLoader {
    /// The size of `key`'s value: [`TINY_BYTES`] for the memory workload's tiny keys.
    fn size_for(&self, key: &str) -> usize {
        if key.starts_with(TINY_KEYS) {
            TINY_BYTES
        } else {
            self.value_bytes
        }
    }
}

/// `{prefix}{key}` padded with `.` or cut to exactly `n` bytes (as it is when `n` is 0), the same
/// rule as the Go peer's `-value-bytes`.
fn value_for(prefix: &str, key: &str, n: usize) -> Vec<u8> {
    let mut value = format!("{prefix}{key}").into_bytes();
    if n > 0 {
        value.resize(n, b'.');
    }
    value
}

/// Runs a replica until stdin closes.
pub(crate) fn run_replica(options: &ReplicaOptions) -> Result<(), Box<dyn std::error::Error>> {
    if options.groups > 0 {
        if options.otel_endpoint.is_some() {
            return Err(
                "--otel-endpoint is for the benchmark group's replica, not --groups".into(),
            );
        }
        return run_groups_replica(options);
    }
    // Spans go to the sink from the provider's own thread; kept until the process exits.
    let _traces = options
        .otel_endpoint
        .as_deref()
        .map(install_otel)
        .transpose()?;
    serve_on(options.listen, |listener, url| async move {
        let loader = BenchLoader {
            value_bytes: options.value_bytes,
            delay: Duration::from_millis(options.load_ms),
            delayed: "",
            batch: options.batch_loader,
            ttl: Duration::from_millis(options.ttl_ms),
            refresh: Duration::from_millis(options.refresh_ms),
        };
        let mode = if options.go_ring {
            RingMode::GoCompatible
        } else {
            RingMode::Balanced
        };
        let mut builder = Groupcache::builder(GROUP, &url, loader).ring_mode(mode);
        if let Some(bytes) = options.cache_bytes {
            builder = builder.cache_bytes(bytes);
        }
        if let Some(bytes) = options.main_bytes {
            builder = builder.main_cache_bytes(bytes);
        }
        if let Some(bytes) = options.hot_bytes {
            builder = builder.hot_cache_bytes(bytes);
        }
        if options.no_handoff {
            builder = builder.handoff_timeout(Duration::ZERO);
        }
        builder = builder.admission(options.admission);
        if let Some(on) = options.hedge {
            builder = builder.hedge_fetches(on);
        }
        if let Some(ms) = options.not_found_ttl_ms {
            builder = builder.not_found_ttl(Duration::from_millis(ms));
        }
        if let Some(ms) = options.max_stale_ms {
            builder = builder.max_stale(Duration::from_millis(ms));
        }
        if options.otel_endpoint.is_some() {
            builder = builder.trace_context(groupcache_rs::W3cTraceContext);
        }
        let cache = builder
            .coalesce_fetches(options.coalesce_in_flight)
            .build()?;
        let app = Router::new()
            .route("/get/{*key}", get(get_value))
            .route("/peers", post(set_peers))
            .route("/stats", get(stats))
            .route("/many", post(many))
            .route("/source", post(source::control))
            .route("/purge", post(purge))
            .route("/fill", post(fill))
            .route("/healthz", get(|| async { "ok" }))
            .merge(cache.router())
            .with_state(cache);
        // The server the README recommends for the peer port.
        groupcache_rs::Server::new().serve(listener, app).await?;
        Ok(())
    })
}

/// The otel workload's replica: every span exported over OTLP/HTTP (protobuf) to `endpoint`,
/// in batches from the SDK's thread, through the `tracing-opentelemetry` layer configured as
/// the README advises (and as the example service does): no per-poll timing, thread or source
/// attributes, no context made current on each poll, and nothing below INFO (as the example's
/// default filter). Nothing else subscribes, so the cost measured is the spans' alone.
fn install_otel(
    endpoint: &str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, Box<dyn std::error::Error>> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("groupcache-bench")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            std::process::id().to_string(),
        ))
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("groupcache-bench"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_context_activation(false);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(layer);
    tracing::subscriber::set_global_default(subscriber)?;
    Ok(provider)
}

/// groups-flood's replica (`--groups 1|2`): one `Cluster`, alone in its ring, serving the calm
/// group and, with 2, the flood group, through its one router, under one set of peer-port
/// limits. Both groups' loaders take `--load-ms` for the flood's keys only, so the calm keys load
/// at once wherever they are asked. `GET /stats` answers each group's counters.
fn run_groups_replica(options: &ReplicaOptions) -> Result<(), Box<dyn std::error::Error>> {
    serve_on(options.listen, |listener, url| async move {
        let mut builder = Cluster::builder(&url);
        if let Some(requests) = options.max_peer_requests {
            builder = builder.max_concurrent_peer_requests(requests);
        }
        if let Some(ms) = options.admission_wait_ms {
            builder = builder.peer_admission_wait(Duration::from_millis(ms));
        }
        let cluster = builder.build()?;
        let names = [CALM, FLOOD];
        let mut groups = Vec::with_capacity(options.groups);
        for name in &names[..options.groups] {
            let loader = BenchLoader {
                value_bytes: options.value_bytes,
                delay: Duration::from_millis(options.load_ms),
                delayed: FLOOD_KEYS,
                batch: false,
                ttl: Duration::ZERO,
                refresh: Duration::ZERO,
            };
            groups.push(cluster.group(*name, loader).build()?);
        }
        let app = Router::new()
            .route("/stats", get(group_stats))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(Arc::new(groups))
            .merge(cluster.router());
        groupcache_rs::Server::new().serve(listener, app).await?;
        Ok(())
    })
}

/// `GET /stats` of groups-flood's replica: each group's counters, by name.
async fn group_stats(State(groups): State<Arc<Vec<Groupcache<BenchLoader>>>>) -> Response {
    let json: serde_json::Map<String, serde_json::Value> = groups
        .iter()
        .map(|group| {
            let s = group.stats();
            let counters = serde_json::json!({
                "gets": s.gets,
                "server_requests": s.server_requests,
                "local_loads": s.local_loads,
            });
            (group.name().to_owned(), counters)
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Object(json).to_string(),
    )
        .into_response()
}

/// The ceiling's fixed body.
static BODY: [u8; 1024] = [b'x'; 1024];

/// When each key's storm requests are answered: [`STORM_LOAD`] after its first request.
type Deadlines = Arc<Mutex<HashMap<String, tokio::time::Instant>>>;

/// The ceiling: a bare axum server that answers `GET /static` with a fixed 1 KiB body, and
/// `GET /storm/{key}` with the same body once the key's deadline has come.
pub(crate) fn run_ceiling() -> Result<(), Box<dyn std::error::Error>> {
    serve_on(None, |listener, _url| async move {
        let app = Router::new()
            .route("/static", get(|| async { static_body() }))
            .route("/storm/{key}", get(storm_body))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(Deadlines::default());
        axum::serve(listener, app).await?;
        Ok(())
    })
}

fn static_body() -> Response {
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Bytes::from_static(&BODY),
    )
        .into_response()
}

async fn storm_body(State(deadlines): State<Deadlines>, Path(key): Path<String>) -> Response {
    let deadline = *deadlines
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_insert_with(|| tokio::time::Instant::now() + STORM_LOAD);
    tokio::time::sleep_until(deadline).await;
    static_body()
}

/// Binds a free port of `host` (None: loopback), announces its URL on stdout (the driver waits
/// for that line), arranges to exit when the driver goes away, and runs `serve` on a fresh
/// runtime.
fn serve_on<F, Fut>(host: Option<Ipv4Addr>, serve: F) -> Result<(), Box<dyn std::error::Error>>
where
    F: FnOnce(tokio::net::TcpListener, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let host = host.unwrap_or(Ipv4Addr::LOCALHOST);
        let listener = tokio::net::TcpListener::bind((host, 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        announce(&url)?;
        exit_when_stdin_closes();
        serve(listener, url).await
    })
}

fn announce(url: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening {url}")?;
    stdout.flush()
}

fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
}

async fn get_value(
    State(cache): State<Groupcache<BenchLoader>>,
    Path(key): Path<String>,
) -> Response {
    match cache.get(&key).await {
        Ok(value) => ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response(),
        Err(groupcache_rs::Error::NotFound) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// `POST /purge`: one `purge` of the group (every replica), answering how long it took to
/// return here, in microseconds.
async fn purge(State(cache): State<Groupcache<BenchLoader>>) -> Response {
    let started = Instant::now();
    match cache.purge().await {
        Ok(()) => {
            let micros = started.elapsed().as_micros() as u64;
            let json = serde_json::json!({ "micros": micros });
            (
                [(header::CONTENT_TYPE, "application/json")],
                json.to_string(),
            )
                .into_response()
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// `POST /fill?prefix=P&count=N`: gets every key `{P}{i}` (i < N) this replica owns, here, so
/// that the driver fills a cluster with millions of entries without a request per key.
/// Answers how many keys it got and how many failed.
async fn fill(State(cache): State<Groupcache<BenchLoader>>, uri: Uri) -> Response {
    let (mut prefix, mut count) = (String::new(), 0usize);
    for pair in uri.query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("prefix", p)) => prefix = p.to_owned(),
            Some(("count", n)) => count = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    let me = cache.self_url().to_owned();
    let owned = (0..count)
        .map(|i| format!("{prefix}{i}"))
        .filter(|key| cache.owner(key) == me);
    let (got, failed) = futures_util::stream::iter(owned)
        .map(|key| {
            let cache = cache.clone();
            async move { cache.get(&key).await.is_ok() }
        })
        .buffer_unordered(64)
        .fold((0u64, 0u64), |(got, failed), ok| async move {
            if ok {
                (got + 1, failed)
            } else {
                (got, failed + 1)
            }
        })
        .await;
    let json = serde_json::json!({ "got": got, "failed": failed });
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

async fn set_peers(State(cache): State<Groupcache<BenchLoader>>, body: Bytes) -> Response {
    let peers: Vec<String> = match serde_json::from_slice(&body) {
        Ok(peers) => peers,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match cache.set_peers(&peers) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// `POST /many` (a JSON array of keys): one `get_many` of them, or with `?singles` one `get` per
/// key, all at once; answers how many came back (`ok`, `errors`, `bytes`, the first error) and
/// the wall time measured here (`micros`), as the Go peer does.
async fn many(State(cache): State<Groupcache<BenchLoader>>, uri: Uri, body: Bytes) -> Response {
    let keys: Vec<String> = match serde_json::from_slice(&body) {
        Ok(keys) => keys,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let started = Instant::now();
    let values = if uri.query() == Some("singles") {
        futures_util::future::join_all(keys.iter().map(|key| cache.get(key))).await
    } else {
        cache.get_many(&keys).await
    };
    let micros = started.elapsed().as_micros() as u64;
    let (mut ok, mut errors, mut bytes, mut first_error) = (0u64, 0u64, 0u64, String::new());
    for value in &values {
        match value {
            Ok(value) => {
                ok += 1;
                bytes += value.len() as u64;
            }
            Err(error) => {
                errors += 1;
                if first_error.is_empty() {
                    first_error = error.to_string();
                }
            }
        }
    }
    let json = serde_json::json!({
        "ok": ok, "errors": errors, "bytes": bytes, "micros": micros, "first_error": first_error,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

/// The counters under the Go peer's names (`GET /stats` of `tests/interop/go-peer`).
async fn stats(State(cache): State<Groupcache<BenchLoader>>) -> Response {
    let s = cache.stats();
    let json = serde_json::json!({
        "group": cache.name(),
        "stats": {
            "gets": s.gets,
            "cache_hits": s.main_hits + s.hot_hits,
            "peer_loads": s.peer_loads,
            "peer_errors": s.peer_errors,
            "loads": s.loads,
            "loads_deduped": s.loads_deduped,
            "local_loads": s.local_loads,
            "local_load_errs": s.local_load_errors,
            "server_requests": s.server_requests,
            "load_many_calls": LOAD_MANY_CALLS.load(Ordering::Relaxed),
            "handoff_peeks": s.handoff_hits + s.handoff_misses,
            "hedges": s.hedges,
            "source_queries": source::counters().0,
            "expiring_queries": source::counters().1,
            "not_found_loads": s.not_found_loads,
            "refreshes": s.refreshes,
            "stale_served": s.stale_served,
            "purges": s.purges,
        },
        "main_cache": { "bytes": s.main_bytes, "items": s.main_items, "hits": s.main_hits },
        "hot_cache": { "bytes": s.hot_bytes, "items": s.hot_items, "hits": s.hot_hits },
        "budget": {
            "main_target": s.main_target_bytes,
            "hot_target": s.hot_target_bytes,
            "main_ghost_hits": s.main_ghost_hits,
            "hot_ghost_hits": s.hot_ghost_hits,
        },
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::value_for;

    #[test]
    fn values_are_padded_or_cut_like_the_go_peer() {
        assert_eq!(value_for("rs:", "k", 0), b"rs:k");
        assert_eq!(value_for("rs:", "k", 6), b"rs:k..");
        assert_eq!(value_for("rs:", "key", 2), b"rs");
    }
}
