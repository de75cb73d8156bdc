//! A replica as a process of its own, for the tests that kill, partition or soak replicas (see
//! `tests/src/process.rs`, which starts it).
//!
//! ```text
//! replica [--listen 127.0.0.1:0] [--self URL] [--load-ms N] [--value-bytes N] [--main-bytes N]
//!         [--hot-bytes N] [--peer-timeout-ms N] [--connect-timeout-ms N] [--hot-max-age-ms N]
//!         [--hot-promotion N] [--secret S] [--max-nonces N] [--header-timeout-ms N]
//!         [--owner-suspicion-ms N] [--failure-detection-ms N] [--source URL] [--load-jitter-ms N] [--go-compatible true]
//!         [--slow-keys PREFIX --slow-load-ms N]
//! ```
//!
//! `--secret` turns peer authentication on (`--max-nonces`: its nonce store's bound);
//! `--header-timeout-ms` is the server's header deadline.
//!
//! `--source URL` makes the loader read the key's version from a source of truth that changes
//! (`GET {URL}/{key}`, see `groupcache_tests::history::source`) and answer
//! `{key}#{version}`; it reads the source *first* and then takes its load time (`--load-ms`, plus
//! up to `--load-jitter-ms` more), so a slow load carries the version it read at its start, as a
//! slow query does: what a cache must not serve once a newer write is acknowledged.
//! `--slow-keys PREFIX` with `--slow-load-ms N`: the loads of the keys that start with `PREFIX`
//! take `N` ms instead (plus the jitter), so that a test whose many keys must load quickly can
//! still have writes land while loads of its written keys are in flight. Without it,
//! values are `value:{key}#{generation}` (below). `--go-compatible true` uses golang/groupcache's
//! ring, to share a pool with Go replicas.
//!
//! Its first line on stdout is `listening URL ADDR`: the URL it is known by and the address it
//! is bound to (the same but for `--self`). It exits when its stdin closes, so it never
//! outlives the test that started it, even one that panicked. Besides the group's peer router it
//! serves a small control interface:
//!
//! - `GET /get/{key}`: `cache.get(key)`, the value's bytes, or 500 with the error;
//! - `POST /get_many` (a JSON array of keys): `cache.get_many(keys)`, a JSON array with one
//!   `{"value": "..."}` or `{"error": "..."}` per key, in order;
//! - `PUT /set/{key}` (body: the value) and `DELETE /remove/{key}`: `cache.set` and `cache.remove`;
//! - `POST /purge`: `cache.purge`;
//! - `POST /peers` (a JSON array of URLs): `cache.set_peers`;
//! - `POST /generation` (a number): the loader's values become `value:{key}#{generation}`, as if
//!   the source of truth had changed;
//! - `GET /stats`: [`groupcache_rs::Stats`], the loads per key, and the resident memory.
//!
//! On SIGTERM it leaves its own ring ([`Groupcache::leave`], as the Kubernetes example does),
//! prints `left`, and keeps serving until its stdin closes or it is killed (the end of its
//! drain, which the test decides).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use groupcache_rs::{Groupcache, Loaded, Loader, RingMode};

/// The group every process replica serves (the same as the in-process harness's).
const GROUP: &str = "test";

#[derive(Debug)]
struct Options {
    listen: String,
    self_url: Option<String>,
    load: Duration,
    value_bytes: usize,
    main_bytes: Option<u64>,
    hot_bytes: Option<u64>,
    peer_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    hot_max_age: Option<Duration>,
    hot_promotion: Option<u32>,
    secret: Option<String>,
    max_nonces: Option<usize>,
    header_timeout: Option<Duration>,
    owner_suspicion: Option<Duration>,
    failure_detection: Option<Duration>,
    source: Option<String>,
    load_jitter: Duration,
    go_compatible: bool,
    slow_keys: Option<String>,
    slow_load: Duration,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        listen: "127.0.0.1:0".into(),
        self_url: None,
        load: Duration::ZERO,
        value_bytes: 0,
        main_bytes: None,
        hot_bytes: None,
        peer_timeout: None,
        connect_timeout: None,
        hot_max_age: None,
        hot_promotion: None,
        secret: None,
        max_nonces: None,
        header_timeout: None,
        owner_suspicion: None,
        failure_detection: None,
        source: None,
        load_jitter: Duration::ZERO,
        go_compatible: false,
        slow_keys: None,
        slow_load: Duration::ZERO,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--listen" => options.listen = value.clone(),
            "--self" => options.self_url = Some(value.clone()),
            "--load-ms" => options.load = Duration::from_millis(number()?),
            "--value-bytes" => options.value_bytes = number()? as usize,
            "--main-bytes" => options.main_bytes = Some(number()?),
            "--hot-bytes" => options.hot_bytes = Some(number()?),
            "--peer-timeout-ms" => options.peer_timeout = Some(Duration::from_millis(number()?)),
            "--connect-timeout-ms" => {
                options.connect_timeout = Some(Duration::from_millis(number()?))
            }
            "--hot-max-age-ms" => options.hot_max_age = Some(Duration::from_millis(number()?)),
            "--hot-promotion" => options.hot_promotion = Some(number()? as u32),
            "--secret" => options.secret = Some(value.clone()),
            "--max-nonces" => options.max_nonces = Some(number()? as usize),
            "--header-timeout-ms" => {
                options.header_timeout = Some(Duration::from_millis(number()?))
            }
            "--owner-suspicion-ms" => {
                options.owner_suspicion = Some(Duration::from_millis(number()?))
            }
            "--failure-detection-ms" => {
                options.failure_detection = Some(Duration::from_millis(number()?))
            }
            "--source" => options.source = Some(value.trim_end_matches('/').to_owned()),
            "--load-jitter-ms" => options.load_jitter = Duration::from_millis(number()?),
            "--slow-keys" => options.slow_keys = Some(value.clone()),
            "--slow-load-ms" => options.slow_load = Duration::from_millis(number()?),
            "--go-compatible" => {
                options.go_compatible = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(options)
}

/// Values `value:{key}#{generation}`, or `{key}#{version}` read from `--source`, padded with `.`
/// to `value_bytes` when that is larger; every load is counted per key.
struct ProcessLoader(Arc<LoaderState>);

/// What the loader shares with the control interface.
struct LoaderState {
    delay: Duration,
    /// Keys with this prefix take `slow_delay` instead of `delay`.
    slow_keys: Option<String>,
    slow_delay: Duration,
    jitter: Duration,
    /// Drives the jitter (splitmix64).
    jitter_state: AtomicU64,
    value_bytes: usize,
    generation: AtomicU64,
    loads: Mutex<HashMap<String, u64>>,
    source: Option<(String, reqwest::Client)>,
}

impl LoaderState {
    /// One load's time for `key`: its delay plus a uniform share of the jitter.
    fn load_time(&self, key: &str) -> Duration {
        let slow = self
            .slow_keys
            .as_deref()
            .is_some_and(|prefix| key.starts_with(prefix));
        let delay = if slow { self.slow_delay } else { self.delay };
        if self.jitter.is_zero() {
            return delay;
        }
        let mut z = self
            .jitter_state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let jitter_ms = self.jitter.as_millis() as u64;
        delay + Duration::from_millis(z % (jitter_ms + 1))
    }
}

/// The source of truth could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the source: {0}")]
struct SourceError(String);

/// `GET {source}/{key}`: the key's version now.
async fn read_source(
    source: &str,
    client: &reqwest::Client,
    key: &str,
) -> Result<u64, SourceError> {
    let fail = |error: &dyn std::fmt::Display| SourceError(format!("{source}/{key}: {error}"));
    let response = client
        .get(format!("{source}/{key}"))
        .send()
        .await
        .map_err(|e| fail(&e))?;
    if !response.status().is_success() {
        return Err(fail(&response.status()));
    }
    let body = response.text().await.map_err(|e| fail(&e))?;
    body.trim().parse().map_err(|e| fail(&e))
}

impl Loader for ProcessLoader {
    type Value = Bytes;
    type Error = SourceError;

    async fn load(&self, key: &str) -> Result<Loaded<Bytes>, Self::Error> {
        let state = &self.0;
        *state
            .loads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(key.to_owned())
            .or_default() += 1;
        // With a source, the version is read before the load's time passes: a slow load carries
        // the version it started with, which is what a stale read would expose.
        let version = match &state.source {
            Some((source, client)) => Some(read_source(source, client, key).await?),
            None => None,
        };
        let delay = state.load_time(key);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut value = match version {
            Some(version) => groupcache_tests::history::value(key, version).into_bytes(),
            None => {
                let generation = state.generation.load(Ordering::SeqCst);
                format!("value:{key}#{generation}").into_bytes()
            }
        };
        if value.len() < state.value_bytes {
            value.resize(state.value_bytes, b'.');
        }
        Ok(Loaded::new(Bytes::from(value)))
    }
}

#[derive(Clone)]
struct App {
    cache: Groupcache<ProcessLoader>,
    loader: Arc<LoaderState>,
}

fn main() {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("replica: {message}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(options) {
        eprintln!("replica: {error}");
        std::process::exit(1);
    }
}

fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&options.listen).await?;
        let bound = format!("http://{}", listener.local_addr()?);
        let self_url = options.self_url.clone().unwrap_or_else(|| bound.clone());
        let source = match &options.source {
            Some(url) => Some((
                url.clone(),
                groupcache_tests::http_client()
                    .timeout(Duration::from_secs(10))
                    .no_proxy()
                    .build()?,
            )),
            None => None,
        };
        let loader = Arc::new(LoaderState {
            delay: options.load,
            slow_keys: options.slow_keys.clone(),
            slow_delay: options.slow_load,
            jitter: options.load_jitter,
            jitter_state: AtomicU64::new(u64::from(std::process::id())),
            value_bytes: options.value_bytes,
            generation: AtomicU64::new(0),
            loads: Mutex::default(),
            source,
        });
        let mut builder = Groupcache::builder(GROUP, &self_url, ProcessLoader(loader.clone()));
        if options.go_compatible {
            builder = builder.ring_mode(RingMode::GoCompatible);
        }
        if let Some(bytes) = options.main_bytes {
            builder = builder.main_cache_bytes(bytes);
        }
        if let Some(bytes) = options.hot_bytes {
            builder = builder.hot_cache_bytes(bytes);
        }
        if let Some(timeout) = options.peer_timeout {
            builder = builder.peer_timeout(timeout);
        }
        if let Some(timeout) = options.connect_timeout {
            builder = builder.connect_timeout(timeout);
        }
        if let Some(age) = options.hot_max_age {
            builder = builder.hot_max_age(age);
        }
        if let Some(requests) = options.hot_promotion {
            builder = builder.hot_promotion_requests(requests);
        }
        if let Some(secret) = &options.secret {
            let mut auth = groupcache_rs::PeerAuth::new(secret.as_bytes().to_vec())?;
            if let Some(bound) = options.max_nonces {
                auth = auth.max_remembered_nonces(bound);
            }
            builder = builder.peer_auth(auth);
        }
        if let Some(suspicion) = options.owner_suspicion {
            builder = builder.owner_suspicion(suspicion);
        }
        if let Some(silence) = options.failure_detection {
            builder = builder.failure_detection(silence);
        }
        let cache = builder.build()?;
        // Installed before `listening` is printed: a SIGTERM from then on is never the default
        // action (exit).
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let leaving = cache.clone();
        tokio::spawn(async move {
            if terminate.recv().await.is_some() {
                leaving.leave();
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "left");
                let _ = stdout.flush();
            }
        });
        let app = Router::new()
            .route("/get/{*key}", get(get_value))
            .route("/get_many", post(get_many))
            .route("/set/{*key}", put(set_value))
            .route("/remove/{*key}", axum::routing::delete(remove_value))
            .route("/purge", post(purge))
            .route("/peers", post(set_peers))
            .route("/generation", post(set_generation))
            .route("/stats", get(stats))
            .merge(cache.router())
            .with_state(App { cache, loader });
        {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "listening {self_url} {bound}")?;
            stdout.flush()?;
        }
        std::thread::spawn(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            std::process::exit(0);
        });
        let mut server = groupcache_rs::Server::new();
        if let Some(timeout) = options.header_timeout {
            server = server.header_read_timeout(timeout);
        }
        server.serve(listener, app).await?;
        Ok(())
    })
}

fn failed(status: StatusCode, error: impl std::fmt::Display) -> Response {
    (status, error.to_string()).into_response()
}

async fn get_value(State(app): State<App>, Path(key): Path<String>) -> Response {
    match app.cache.get(&key).await {
        Ok(value) => value.into_response(),
        Err(error) => failed(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

async fn get_many(State(app): State<App>, body: Bytes) -> Response {
    let keys: Vec<String> = match serde_json::from_slice(&body) {
        Ok(keys) => keys,
        Err(error) => return failed(StatusCode::BAD_REQUEST, error),
    };
    let results: Vec<serde_json::Value> = app
        .cache
        .get_many(&keys)
        .await
        .into_iter()
        .map(|result| match result {
            Ok(value) => serde_json::json!({ "value": String::from_utf8_lossy(&value) }),
            Err(error) => serde_json::json!({ "error": error.to_string() }),
        })
        .collect();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Array(results).to_string(),
    )
        .into_response()
}

async fn set_value(State(app): State<App>, Path(key): Path<String>, body: Bytes) -> Response {
    match app.cache.set(&key, &body, None).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => failed(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

async fn remove_value(State(app): State<App>, Path(key): Path<String>) -> Response {
    match app.cache.remove(&key).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => failed(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

async fn purge(State(app): State<App>) -> Response {
    match app.cache.purge().await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => failed(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

async fn set_peers(State(app): State<App>, body: Bytes) -> Response {
    let peers: Vec<String> = match serde_json::from_slice(&body) {
        Ok(peers) => peers,
        Err(error) => return failed(StatusCode::BAD_REQUEST, error),
    };
    match app.cache.set_peers(&peers) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(error) => failed(StatusCode::BAD_REQUEST, error),
    }
}

async fn set_generation(State(app): State<App>, body: Bytes) -> Response {
    match std::str::from_utf8(&body).map(|s| s.trim().parse::<u64>()) {
        Ok(Ok(generation)) => {
            app.loader.generation.store(generation, Ordering::SeqCst);
            StatusCode::OK.into_response()
        }
        _ => failed(StatusCode::BAD_REQUEST, "expected a number"),
    }
}

async fn stats(State(app): State<App>) -> Response {
    let s = app.cache.stats();
    let loads = app
        .loader
        .loads
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let json = serde_json::json!({
        "gets": s.gets,
        "main_hits": s.main_hits,
        "hot_hits": s.hot_hits,
        "peer_loads": s.peer_loads,
        "peer_errors": s.peer_errors,
        "loads": s.loads,
        "local_loads": s.local_loads,
        "local_load_errors": s.local_load_errors,
        "server_requests": s.server_requests,
        "peer_suspicions": s.peer_suspicions,
        "successor_loads": s.successor_loads,
        "handoff_hits": s.handoff_hits,
        "handoff_misses": s.handoff_misses,
        "peer_auth_failures": s.peer_auth_failures,
        "peer_auth_replays": s.peer_auth_replays,
        "auth_nonces": s.auth_nonces,
        "main_bytes": s.main_bytes,
        "main_items": s.main_items,
        "hot_bytes": s.hot_bytes,
        "hot_items": s.hot_items,
        "loads_per_key": loads,
        "rss_bytes": resident_bytes(),
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

/// This process's resident set size (`VmRSS`), 0 where /proc is missing.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
