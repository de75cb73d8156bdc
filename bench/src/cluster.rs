//! Replicas as processes: Rust replicas and the ceiling from this binary, Go replicas from the Go
//! test peer. Every process is killed when its handle is dropped, and exits by itself when its
//! stdin (a pipe from this process) closes, so none outlives a driver that was killed. Starting
//! one is the integration tests' helper (`tests/src/child.rs`, compiled into this binary as
//! `crate::child`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use groupcache_rs::{Groupcache, Loaded, Loader, RingMode};
use serde::Deserialize;

use crate::child::ListeningChild;
use crate::http;
use crate::shared::GROUP;

/// What a target is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// This library.
    Rust,
    /// This library with the OpenTelemetry layer exporting every span over OTLP/HTTP, as the
    /// README advises, and W3C trace context on peer requests (the otel workload).
    RustOtel,
    /// golang/groupcache with a pooled transport (`MaxIdleConnsPerHost` raised): Go's best.
    GoPooled,
    /// golang/groupcache with Go's default transport (2 idle connections per peer).
    GoDefault,
    /// The bare axum server.
    Ceiling,
    /// A bare net/http handler (the Go peer's `/static`), for reference.
    GoBare,
}

impl Kind {
    /// Its name in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Rust => "rust",
            Kind::RustOtel => "rust-otel",
            Kind::GoPooled => "go",
            Kind::GoDefault => "go-default",
            Kind::Ceiling => "ceiling",
            Kind::GoBare => "go-bare",
        }
    }

    /// Every kind, in report order.
    pub(crate) const ALL: [Kind; 6] = [
        Kind::Rust,
        Kind::RustOtel,
        Kind::GoPooled,
        Kind::GoDefault,
        Kind::Ceiling,
        Kind::GoBare,
    ];
}

/// Where the binaries are.
pub(crate) struct Binaries {
    /// This program (for `replica` and `ceiling-server`).
    pub this: PathBuf,
    /// The Go test peer.
    pub go_peer: PathBuf,
}

impl Binaries {
    /// This binary, and the Go peer built next to it by `tests/interop/build.sh`.
    pub(crate) fn prepare(go_peer: Option<PathBuf>) -> Result<Binaries, String> {
        let this = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
        let go_peer = match go_peer {
            Some(path) => path,
            None => {
                let out = this.with_file_name("go-peer-bench");
                let script =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/build.sh");
                let status = Command::new(&script)
                    .arg(&out)
                    .stdout(Stdio::null())
                    .status()
                    .map_err(|e| format!("running {}: {e}", script.display()))?;
                if !status.success() {
                    return Err(format!(
                        "{} failed ({status}): the Go side needs Debian's golang-go and \
                         golang-github-golang-groupcache-dev (tests/interop/install-deps.sh)",
                        script.display()
                    ));
                }
                out
            }
        };
        Ok(Binaries { this, go_peer })
    }
}

/// A running server process; killed (and waited for) when dropped.
pub(crate) struct Process {
    /// The process, its stdin (closing it tells our own servers to exit) and stdout held open.
    child: ListeningChild,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its URL, as peers list it.
    pub url: String,
}

impl Process {
    /// Starts `command` and waits for its `listening http://ADDR` line.
    pub(crate) fn start(command: Command) -> Result<Process, String> {
        let program = format!("{command:?}");
        let child = ListeningChild::try_spawn(command, true)?;
        let addr = child
            .url
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            // Dropping the child kills it.
            return Err(format!(
                "{program} did not announce its address: {:?}",
                child.url
            ));
        };
        let url = child.url.clone();
        Ok(Process { child, addr, url })
    }

    /// Its process id, for reading its memory.
    pub(crate) fn pid(&self) -> u32 {
        self.child.pid
    }

    /// Sends it signal `name` (`STOP`, `CONT`) with `kill`.
    pub(crate) fn signal(&self, name: &str) {
        self.child.signal(name);
    }

    /// Resident memory now and at its peak, in bytes (`VmRSS`, `VmHWM`).
    pub(crate) fn memory(&self) -> Result<(u64, u64), String> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kb| kb.trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .ok_or_else(|| format!("{path}: no {name}"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// Settings shared by the replicas of one cluster.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Loader latency.
    pub load_ms: u64,
    /// Main cache budget (golang/groupcache: the whole group's budget).
    pub cache_bytes: u64,
    /// Rust only: a `load_many` that loads all its keys in one sleep (see `batch.rs`).
    pub batch_loader: bool,
    /// Rust only: `Builder::coalesce_fetches`, requests in flight per owner (0: off).
    pub coalesce_in_flight: usize,
    /// Rust only: the warm hand-off off, as in a ring older than `hot_max_age`.
    pub no_handoff: bool,
    /// Rust only: no hot cache (`--hot-bytes 0`); golang/groupcache's cannot be turned off.
    pub no_hot_cache: bool,
    /// [`Kind::RustOtel`] only: the port on 127.0.0.1 of the OTLP sink its spans go to.
    pub otel_sink: Option<u16>,
}

impl Settings {
    /// `value_bytes` values, loads of `load_ms`, a budget of `cache_bytes`, and none of the
    /// Rust-only options.
    pub(crate) const fn plain(value_bytes: usize, load_ms: u64, cache_bytes: u64) -> Settings {
        Settings {
            value_bytes,
            load_ms,
            cache_bytes,
            batch_loader: false,
            coalesce_in_flight: 0,
            no_handoff: false,
            no_hot_cache: false,
            otel_sink: None,
        }
    }
}

/// Replicas of one kind that know each other.
pub(crate) struct Cluster {
    /// The replicas, in the order every ring lists them.
    pub replicas: Vec<Process>,
    /// A ring identical to the replicas', to find owners.
    ring: Groupcache<NoLoader>,
}

impl Cluster {
    /// Starts `n` replicas of `kind` and gives each the full peer list.
    pub(crate) async fn start(
        binaries: &Binaries,
        kind: Kind,
        n: usize,
        settings: Settings,
    ) -> Result<Cluster, String> {
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            replicas.push(start_replica(binaries, kind, settings)?);
        }
        Cluster::join(replicas, kind).await
    }

    /// Gives each of `replicas` (of `kind`) the full peer list.
    pub(crate) async fn join(replicas: Vec<Process>, kind: Kind) -> Result<Cluster, String> {
        let refs: Vec<&Process> = replicas.iter().collect();
        let urls = urls(&refs);
        set_peers(&refs, &urls).await?;
        let ring = ring(kind, &urls)?;
        Ok(Cluster { replicas, ring })
    }

    /// Index of the replica that owns `key`.
    pub(crate) fn owner(&self, key: &str) -> usize {
        let url = self.ring.owner(key);
        self.replicas
            .iter()
            .position(|r| r.url == url)
            .unwrap_or_default()
    }

    /// Every replica's process id, in order.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.replicas.iter().map(Process::pid).collect()
    }

    /// Every replica's address, in order.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.addr).collect()
    }

    /// Every replica's counters, in order.
    pub(crate) async fn stats(&self) -> Result<Vec<Stats>, String> {
        stats_of(&self.replicas.iter().collect::<Vec<_>>()).await
    }
}

/// The URLs of `replicas`, in order.
pub(crate) fn urls(replicas: &[&Process]) -> Vec<String> {
    replicas.iter().map(|r| r.url.clone()).collect()
}

/// Gives each of `replicas` the peer list `urls` (`POST /peers`).
pub(crate) async fn set_peers(replicas: &[&Process], urls: &[String]) -> Result<(), String> {
    let body = serde_json::to_string(urls).map_err(|e| e.to_string())?;
    for replica in replicas {
        let request = http::post_json_request("/peers", &body);
        let (status, answer) = http::call(replica.addr, &request)
            .await
            .map_err(|e| format!("setting peers on {}: {e}", replica.url))?;
        if status != 200 {
            let answer = String::from_utf8_lossy(&answer);
            return Err(format!(
                "setting peers on {}: {status} {answer}",
                replica.url
            ));
        }
    }
    Ok(())
}

/// The counters of each of `replicas`, in order (`GET /stats`).
pub(crate) async fn stats_of(replicas: &[&Process]) -> Result<Vec<Stats>, String> {
    let mut all = Vec::with_capacity(replicas.len());
    for replica in replicas {
        let request = http::get_request("/stats");
        let (status, body) = http::call(replica.addr, &request)
            .await
            .map_err(|e| format!("stats of {}: {e}", replica.url))?;
        if status != 200 {
            return Err(format!("stats of {}: status {status}", replica.url));
        }
        let stats: Stats =
            serde_json::from_slice(&body).map_err(|e| format!("stats of {}: {e}", replica.url))?;
        all.push(stats);
    }
    Ok(all)
}

/// A ring of `urls` as replicas of `kind` build it, to find owners: Rust replicas use the
/// balanced ring (the default); Go's ring is Go's.
fn ring(kind: Kind, urls: &[String]) -> Result<Groupcache<NoLoader>, String> {
    let mode = match kind {
        Kind::Rust | Kind::RustOtel => RingMode::Balanced,
        _ => RingMode::GoCompatible,
    };
    let first = urls.first().map_or("http://127.0.0.1:1", String::as_str);
    let ring = Groupcache::builder(GROUP, first, NoLoader)
        .ring_mode(mode)
        .build()
        .map_err(|e| format!("ring: {e}"))?;
    ring.set_peers(urls).map_err(|e| format!("ring: {e}"))?;
    Ok(ring)
}

/// The owner (its URL) of each of `keys` in a ring of `urls`, as replicas of `kind` compute it.
pub(crate) fn owners(kind: Kind, urls: &[String], keys: &[String]) -> Result<Vec<String>, String> {
    let ring = ring(kind, urls)?;
    Ok(keys.iter().map(|key| ring.owner(key)).collect())
}

pub(crate) fn start_replica(
    binaries: &Binaries,
    kind: Kind,
    settings: Settings,
) -> Result<Process, String> {
    Process::start(replica_command(binaries, kind, settings, LOOPBACK))
}

/// Where replicas listen unless told otherwise.
pub(crate) const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// What the OpenTelemetry SDK and its HTTP client read from the environment, cleared for
/// [`Kind::RustOtel`]'s replicas.
const OTEL_ENVIRONMENT: [&str; 13] = [
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The command that starts a replica of `kind` listening on `host` (a free port).
pub(crate) fn replica_command(
    binaries: &Binaries,
    kind: Kind,
    settings: Settings,
    host: Ipv4Addr,
) -> Command {
    let mut command;
    match kind {
        Kind::Rust | Kind::RustOtel => {
            command = Command::new(&binaries.this);
            command.arg("replica").args([
                "--value-bytes",
                &settings.value_bytes.to_string(),
                "--load-ms",
                &settings.load_ms.to_string(),
                "--main-bytes",
                &settings.cache_bytes.to_string(),
                "--coalesce-in-flight",
                &settings.coalesce_in_flight.to_string(),
            ]);
            if settings.batch_loader {
                command.arg("--batch-loader");
            }
            if settings.no_handoff {
                command.arg("--no-handoff");
            }
            if settings.no_hot_cache {
                command.args(["--hot-bytes", "0"]);
            }
            if host != LOOPBACK {
                command.args(["--listen", &host.to_string()]);
            }
            if let (Kind::RustOtel, Some(port)) = (kind, settings.otel_sink) {
                command.args(["--otel-endpoint", &format!("http://127.0.0.1:{port}")]);
                // The SDK's defaults, whatever the driver's environment says: the batch
                // processor's queue, batch and delay (the sink's wait for the last batch counts
                // on them) and the sampler; and no proxy between a replica and the sink.
                for variable in OTEL_ENVIRONMENT {
                    command.env_remove(variable);
                }
            }
        }
        Kind::GoPooled | Kind::GoDefault | Kind::GoBare => {
            command = Command::new(&binaries.go_peer);
            command.args([
                "-listen",
                &format!("{host}:0"),
                "-group",
                GROUP,
                "-value-bytes",
                &settings.value_bytes.to_string(),
                "-load-delay",
                &format!("{}ms", settings.load_ms),
                "-cache-bytes",
                &settings.cache_bytes.to_string(),
                "-exit-on-stdin-eof",
            ]);
            if kind == Kind::GoPooled {
                command.args(["-max-idle-conns-per-host", "1024"]);
            }
        }
        Kind::Ceiling => {
            command = Command::new(&binaries.this);
            command.arg("ceiling-server");
        }
    }
    command
}

/// A single server process of `kind` with default settings (for the ceilings).
pub(crate) fn start_server(binaries: &Binaries, kind: Kind) -> Result<Process, String> {
    let settings = Settings::plain(1024, 0, 64 << 20);
    start_replica(binaries, kind, settings)
}

/// One replica's counters, under the Go peer's names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Stats {
    /// The group's counters.
    pub stats: Counters,
    /// The main cache.
    pub main_cache: CacheStats,
    /// The hot cache.
    pub hot_cache: CacheStats,
}

/// The counters both languages report.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Counters {
    /// Gets, local and from peers.
    pub gets: u64,
    /// Main and hot hits.
    pub cache_hits: u64,
    /// Values fetched from owners.
    pub peer_loads: u64,
    /// Failed fetches.
    pub peer_errors: u64,
    /// Runs of the loader.
    pub local_loads: u64,
    /// Requests served to peers (a batch is one).
    pub server_requests: u64,
    /// Rust only: calls of the bench loader's `load_many` (see `batch.rs`).
    pub load_many_calls: u64,
    /// Rust only: warm hand-off peeks sent (hits and misses).
    pub handoff_peeks: u64,
    /// Rust only: fetches hedged to the key's successor (`Builder::hedge_fetches`).
    pub hedges: u64,
    /// Runs of the loader that failed (Go: its getter's errors).
    pub local_load_errs: u64,
    /// Rust only: queries of the replica's source (`source.rs`), every loader call.
    pub source_queries: u64,
    /// Rust only: of those, queries of [`EXPIRING_KEYS`](crate::shared::EXPIRING_KEYS).
    pub expiring_queries: u64,
    /// Rust only: negative answers loaded (`Stats::not_found_loads`).
    pub not_found_loads: u64,
    /// Rust only: refreshes ahead started (`Stats::refreshes`).
    pub refreshes: u64,
    /// Rust only: expired values served because a load failed (`Stats::stale_served`).
    pub stale_served: u64,
    /// Rust only: purges applied here (`Stats::purges`).
    pub purges: u64,
}

/// One cache's size.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CacheStats {
    /// Bytes as the implementation counts them.
    pub bytes: u64,
    /// Entries.
    pub items: u64,
    /// Gets it answered.
    pub hits: u64,
}

/// A loader for the driver's copies of the ring, which never loads.
struct NoLoader;

impl Loader for NoLoader {
    type Value = Bytes;
    type Error = std::convert::Infallible;

    async fn load(&self, _key: &str) -> Result<Loaded<Bytes>, Self::Error> {
        Ok(Loaded::new(Bytes::new()))
    }
}
