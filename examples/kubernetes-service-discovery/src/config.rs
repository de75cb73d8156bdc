//! Configuration, from flags or the environment (every flag has an environment variable).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::Uri;
use clap::{Parser, ValueEnum};

use crate::error::Error;

/// The group of category summaries (`GET /categories/{category}`), beside `--group`'s items on
/// the same cluster.
pub const CATEGORY_GROUP: &str = "categories";

/// Default `--category-cache-bytes`: 8 MiB. A summary is a few hundred bytes.
pub const DEFAULT_CATEGORY_CACHE_BYTES: u64 = 8 << 20;

/// Where the service's routes of the groupcache peer protocol are nested. Peer URLs include it.
pub const PEER_PREFIX: &str = "/internal";

/// An axum service whose replicas share one groupcache, finding each other through the
/// EndpointSlices of a headless Service (`--kube-service`) or a static list (`--peers`).
#[derive(Debug, Clone, Parser)]
#[command(name = "kubernetes-service-discovery", version)]
pub struct Config {
    /// Address and port to listen on for the REST API, `/metrics` and the probes (port 0 picks
    /// a free one).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address and port of the listener of the groupcache peer protocol (port 0 picks a free
    /// one): only it serves the peer routes under `/internal`. The default, on loopback, is
    /// reachable from this machine only: replicas on other machines need a reachable address
    /// (and `--peer-secret-file`, or the peer port kept private by a NetworkPolicy). `shared`
    /// serves the peer protocol on `--listen` instead. Anyone who reaches the peer protocol can
    /// read and overwrite the cache, so the service warns at start when it is reachable beyond
    /// loopback, or shares the API's port, without peer authentication.
    #[arg(long, env = "PEER_LISTEN_ADDR", default_value = "127.0.0.1:9080")]
    pub peer_listen: PeerListen,

    /// mTLS on the peer port (needs `--peer-listen`, `--peer-tls-cert` and `--peer-tls-key`):
    /// the CA (PEM file) that every replica's certificate chains to. Replicas then reach each
    /// other at `https://` URLs, and the peer port refuses clients without such a certificate.
    #[arg(
        long,
        env = "PEER_TLS_CA",
        requires_all = ["peer_tls_cert", "peer_tls_key"]
    )]
    pub peer_tls_ca: Option<PathBuf>,

    /// This replica's certificate chain (PEM file), presented on the peer port and to peers.
    #[arg(long, env = "PEER_TLS_CERT", requires = "peer_tls_ca")]
    pub peer_tls_cert: Option<PathBuf>,

    /// The private key of `--peer-tls-cert` (PEM file).
    #[arg(long, env = "PEER_TLS_KEY", requires = "peer_tls_ca")]
    pub peer_tls_key: Option<PathBuf>,

    /// The name every peer's certificate is verified against, instead of its pod IP: lets all
    /// replicas share one certificate for this name (one Secret), since pod IPs change.
    #[arg(long, env = "PEER_TLS_SERVER_NAME", requires = "peer_tls_ca")]
    pub peer_tls_server_name: Option<String>,

    /// Peer authentication: a file holding the secret every replica shares (at least 16 bytes,
    /// e.g. 32 random bytes hex-encoded; whitespace around it is ignored). Every peer request is
    /// signed with it, and peer requests not signed with it are refused (401). In Kubernetes,
    /// a Secret mounted as a file (`k8s/base/kustomization.yaml`).
    #[arg(long, env = "PEER_SECRET_FILE")]
    pub peer_secret_file: Option<PathBuf>,

    /// This replica's base URL as the other replicas reach its peer protocol (`http://host:port`,
    /// no path). Default: from the listener that serves the peer protocol (`--peer-listen`, else
    /// `--listen`): `http://$POD_IP:<its bound port>`, else its bound address if not 0.0.0.0.
    #[arg(long, env = "SELF_URL")]
    pub self_url: Option<String>,

    /// This pod's IP (downward API `status.podIP`), used to build the default `--self-url`.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<IpAddr>,

    /// This replica's name in logs and responses (downward API `metadata.name`). Default: its
    /// URL.
    #[arg(long, env = "POD_NAME")]
    pub replica_name: Option<String>,

    /// Static discovery: the base URLs of every replica, comma-separated (`http://host:port`,
    /// this replica's own may be listed too), as the replicas reach each other's peer protocol:
    /// with `--peer-listen`, its port. Without `--peers` and `--kube-service` the replica runs
    /// alone.
    #[arg(
        long,
        env = "PEERS",
        value_delimiter = ',',
        conflicts_with = "kube_service"
    )]
    pub peers: Vec<String>,

    /// Kubernetes discovery: the name of the headless Service whose EndpointSlices list the
    /// replicas.
    #[arg(long, env = "KUBE_SERVICE")]
    pub kube_service: Option<String>,

    /// Namespace of that Service. Default: the client's namespace (in a pod, its own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub kube_namespace: Option<String>,

    /// Name of the Service port that serves the peer protocol (with a single unnamed port, that
    /// one). Default: `peer` with `--peer-listen`, else `http`.
    #[arg(long, env = "KUBE_PORT_NAME")]
    pub kube_port_name: Option<String>,

    /// Which EndpointSlices to read in a dual-stack cluster.
    #[arg(long, env = "KUBE_ADDRESS_TYPE", value_enum, default_value_t = AddressType::IPv4)]
    pub kube_address_type: AddressType,

    /// The items' groupcache group: the same on every replica. The category summaries are the
    /// group `categories`, on the same cluster (so not this name).
    #[arg(long, env = "GROUP_NAME", default_value = "items")]
    pub group: String,

    /// PostgreSQL to read and write items in (`postgres://user:password@host:5432/db`,
    /// `?sslmode=require` for TLS through rustls); the schema is migrated on start. Without it,
    /// a simulated database in each replica (every key exists until deleted; writes are not
    /// shared by the replicas' databases, only by the cache).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Most connections to PostgreSQL per replica.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: usize,

    /// How long the simulated database takes per query (`250ms`, `2s`).
    #[arg(long, env = "LOAD_LATENCY", default_value = "100ms", value_parser = parse_duration)]
    pub load_latency: Duration,

    /// How long a loaded item (or a deleted one's absence) stays cached at most (`0s`: until
    /// evicted; an item's own expiry comes first).
    #[arg(long, env = "ITEM_TTL", default_value = "5m", value_parser = parse_duration)]
    pub item_ttl: Duration,

    /// How long the absence of an item a read found without a row is cached (a negative
    /// answer, on every replica): asking for it again meanwhile costs no query, and a row
    /// inserted behind the service's back is seen after this at most. `0s`: not cached.
    #[arg(long, env = "NOT_FOUND_TTL", default_value = "5s", value_parser = parse_duration)]
    pub not_found_ttl: Duration,

    /// Refresh ahead: in the last WINDOW of a loaded item's `--item-ttl`, a get answers the
    /// cached item at once and has the key's owner reload it in the background, once for the
    /// whole cluster, so that a key read all the time never misses. Default: a fifth of
    /// `--item-ttl`; shorter than it; `0s` turns it off.
    #[arg(long, env = "ITEM_REFRESH_AHEAD", value_parser = parse_duration)]
    pub item_refresh_ahead: Option<Duration>,

    /// Stale on error: while the database cannot be read (down, restarting, or the read
    /// circuit breaker open), an item up to this long past its cache TTL is still served, with
    /// `Warning: 110`, instead of a 503; never past the item's own expiry. `0s`: never.
    #[arg(long, env = "ITEM_MAX_STALE", default_value = "5m", value_parser = parse_duration)]
    pub item_max_stale: Duration,

    /// A circuit breaker on each group's database reads: after this many failed loads in a row
    /// on a replica, its loads fail at once (or serve stale items) for `--load-breaker-open`,
    /// then one is let through to probe the database. `0`: off.
    #[arg(long, env = "LOAD_BREAKER_FAILURES", default_value_t = 5)]
    pub load_breaker_failures: u32,

    /// How long the read circuit breaker stays open before it probes the database again.
    #[arg(long, env = "LOAD_BREAKER_OPEN", default_value = "2s", value_parser = parse_duration)]
    pub load_breaker_open: Duration,

    /// A file holding the admin token (at least 16 bytes; whitespace around it is ignored):
    /// `DELETE /items`, which empties every replica's items cache, requires it as
    /// `Authorization: Bearer TOKEN`. Unset: purging is refused (403).
    #[arg(long, env = "ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Byte budget of the cache on this replica, shared by the main cache (keys this replica
    /// owns) and the hot cache (popular keys owned by others), split as the workload asks: the
    /// library's `cache_bytes`.
    #[arg(long, env = "CACHE_BYTES", default_value_t = groupcache_rs::DEFAULT_CACHE_BYTES)]
    pub cache_bytes: u64,

    /// Optional cap on the hot cache within `--cache-bytes` (0 turns it off). Unset: the one
    /// budget decides the split.
    #[arg(long, env = "HOT_CACHE_BYTES")]
    pub hot_cache_bytes: Option<u64>,

    /// Byte budget of the category summaries' cache on this replica, apart from the items'
    /// `--cache-bytes`: each group has its own, and the replica's cache memory is their sum.
    #[arg(long, env = "CATEGORY_CACHE_BYTES", default_value_t = DEFAULT_CATEGORY_CACHE_BYTES)]
    pub category_cache_bytes: u64,

    /// Optional cap on the category summaries' hot cache within `--category-cache-bytes` (0
    /// turns it off).
    #[arg(long, env = "CATEGORY_HOT_CACHE_BYTES")]
    pub category_hot_cache_bytes: Option<u64>,

    /// How often each replica deletes expired rows from PostgreSQL (they are never served, but
    /// would otherwise stay in the table for good).
    #[arg(long, env = "DATABASE_SWEEP_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub database_sweep_interval: Duration,

    /// After SIGTERM, how long to keep serving while reporting not-ready, so that load
    /// balancers and the other replicas stop sending requests here first.
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// After the delay, the longest wait for requests in progress to finish.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log lines as text or as JSON objects. The level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Export traces over OTLP/HTTP to this collector (e.g. `http://otel-collector:4318`; the
    /// standard variable, with `OTEL_EXPORTER_OTLP_PROTOCOL` choosing `http/protobuf`, the
    /// default, or `http/json`). Peer requests then carry W3C `traceparent`, so a request's
    /// trace goes through the key's owner and its load. Unset: no traces.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Where the peer protocol is served: a listener of its own, or the API's (`--listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerListen {
    /// A listener of its own at this address.
    Own(SocketAddr),
    /// The API's listener (`--peer-listen shared`).
    Shared,
}

impl std::str::FromStr for PeerListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "shared" {
            return Ok(PeerListen::Shared);
        }
        text.parse().map(PeerListen::Own).map_err(|_| {
            format!("{text:?}: expected an address and port (127.0.0.1:9080) or `shared`")
        })
    }
}

impl PeerListen {
    /// The address of its own listener, if it has one.
    pub fn own(self) -> Option<SocketAddr> {
        match self {
            PeerListen::Own(addr) => Some(addr),
            PeerListen::Shared => None,
        }
    }
}

/// A group's byte budget on this replica. Each group has its own: the replica's cache memory is
/// the sum of its groups' budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Shared by the group's main and hot cache, split as the workload asks.
    pub cache_bytes: u64,
    /// An optional cap on the hot cache within it.
    pub hot_cache_bytes: Option<u64>,
}

impl Budget {
    /// Sets the budget on a group's builder: `cache_bytes` shared by both caches, and the hot
    /// cap if given. Never both caps: setting both would fix the split.
    pub fn apply<L: groupcache_rs::Loader, C>(
        self,
        builder: groupcache_rs::Builder<L, C>,
    ) -> groupcache_rs::Builder<L, C> {
        let builder = builder.cache_bytes(self.cache_bytes);
        match self.hot_cache_bytes {
            Some(cap) => builder.hot_cache_bytes(cap),
            None => builder,
        }
    }
}

/// How a group's loads are bounded on this replica: the source protection of its loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadLimits {
    /// At most this many loader calls at once (`None`: the library's default).
    pub max_concurrent: Option<usize>,
    /// The circuit breaker: failed loads in a row that open it (0: off), and for how long.
    pub breaker: (u32, Duration),
}

impl LoadLimits {
    /// Sets the limits on a group's builder.
    pub fn apply<L: groupcache_rs::Loader, C>(
        self,
        builder: groupcache_rs::Builder<L, C>,
    ) -> groupcache_rs::Builder<L, C> {
        let (failures, open_for) = self.breaker;
        let builder = builder.circuit_breaker(failures, open_for);
        match self.max_concurrent {
            Some(loads) => builder.max_concurrent_loads(loads),
            None => builder,
        }
    }
}

/// The log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The address family of the EndpointSlices to follow (`addressType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AddressType {
    /// `IPv4` slices.
    #[value(name = "IPv4", alias = "ipv4")]
    IPv4,
    /// `IPv6` slices.
    #[value(name = "IPv6", alias = "ipv6")]
    IPv6,
}

impl AddressType {
    /// The value of an EndpointSlice's `addressType`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
        }
    }
}

/// How replicas find each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// A fixed list of base URLs.
    Static(Vec<String>),
    /// The EndpointSlices of a headless Service.
    Kubernetes {
        /// The Service's name.
        service: String,
        /// Its namespace, if given.
        namespace: Option<String>,
    },
}

impl Config {
    /// The discovery mode the flags select.
    pub fn discovery(&self) -> Discovery {
        match &self.kube_service {
            Some(service) => Discovery::Kubernetes {
                service: service.clone(),
                namespace: self.kube_namespace.clone(),
            },
            // Blank entries (`PEERS=""`, a trailing comma) are no peers.
            None => Discovery::Static(
                self.peers
                    .iter()
                    .map(|url| url.trim().to_owned())
                    .filter(|url| !url.is_empty())
                    .collect(),
            ),
        }
    }

    /// The Service port discovery follows: `--kube-port-name`, else `peer` when the peer
    /// protocol has a listener of its own and `http` when it shares `--listen`.
    pub fn kube_port_name(&self) -> &str {
        match (&self.kube_port_name, self.peer_listen) {
            (Some(name), _) => name,
            (None, PeerListen::Own(_)) => "peer",
            (None, PeerListen::Shared) => "http",
        }
    }

    /// Why this start exposes the peer protocol, if it does: served without peer
    /// authentication (`--peer-secret-file`) or mTLS beside the API on `--listen`, or on an
    /// address beyond loopback. `peer_bound` is where the peer protocol listens.
    pub fn exposure_warning(&self, peer_bound: SocketAddr) -> Option<String> {
        if self.peer_secret_file.is_some() || self.peer_tls_ca.is_some() {
            return None;
        }
        match self.peer_listen {
            PeerListen::Shared => Some(format!(
                "the peer protocol is served WITHOUT AUTHENTICATION on the API's port ({peer_bound}): \
                 anyone who can send it requests can read and overwrite every cached item, \
                 bypassing the database. Give it a port of its own (--peer-listen ADDR) that only \
                 the replicas reach, and set --peer-secret-file"
            )),
            PeerListen::Own(_) if !peer_bound.ip().is_loopback() => Some(format!(
                "the peer protocol listens WITHOUT AUTHENTICATION on {peer_bound}, beyond loopback: \
                 anyone who reaches that port can read and overwrite every cached item. Set \
                 --peer-secret-file (and keep the port private, e.g. with a NetworkPolicy)"
            )),
            PeerListen::Own(_) => None,
        }
    }

    /// The items' budget: `--cache-bytes` and `--hot-cache-bytes`.
    pub fn item_budget(&self) -> Budget {
        Budget {
            cache_bytes: self.cache_bytes,
            hot_cache_bytes: self.hot_cache_bytes,
        }
    }

    /// The category summaries' budget: `--category-cache-bytes` and
    /// `--category-hot-cache-bytes`.
    pub fn category_budget(&self) -> Budget {
        Budget {
            cache_bytes: self.category_cache_bytes,
            hot_cache_bytes: self.category_hot_cache_bytes,
        }
    }

    /// `--item-refresh-ahead`, or a fifth of `--item-ttl` by default (zero without a TTL).
    pub fn item_refresh_ahead(&self) -> Result<Duration, Error> {
        match self.item_refresh_ahead {
            None => Ok(self.item_ttl / 5),
            Some(window) if !window.is_zero() && window >= self.item_ttl => {
                Err(Error::Config(format!(
                    "--item-refresh-ahead {window:?} must be shorter than --item-ttl {:?} \
                     (0s turns it off)",
                    self.item_ttl
                )))
            }
            Some(window) => Ok(window),
        }
    }

    /// How the items' loads are bounded: with PostgreSQL, at most a connection pool's worth
    /// at once on this replica, so that a storm of misses waits its turn in the cache rather
    /// than for a connection (where a wait over 5 s is a 503); and the circuit breaker.
    pub fn item_loads(&self) -> LoadLimits {
        LoadLimits {
            max_concurrent: self
                .database_url
                .as_ref()
                .map(|_| self.database_max_connections.max(1)),
            breaker: (self.load_breaker_failures, self.load_breaker_open),
        }
    }

    /// How the category counts are bounded: as the items' loads, with a quarter of the pool
    /// (at least one connection), since a count scans rows where an item read looks up one.
    pub fn category_loads(&self) -> LoadLimits {
        LoadLimits {
            max_concurrent: self
                .database_url
                .as_ref()
                .map(|_| (self.database_max_connections / 4).max(1)),
            ..self.item_loads()
        }
    }

    /// The admin token in `--admin-token-file`, if set.
    pub fn admin_token(&self) -> Result<Option<crate::api::bearer::AdminToken>, Error> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        crate::api::bearer::AdminToken::new(read(path)?.trim_ascii())
            .map(Some)
            .map_err(|why| Error::Config(format!("{}: {why}", path.display())))
    }

    /// The peer TLS configuration, read from the files `--peer-tls-*` name, if set. It needs
    /// the peer protocol on a port of its own (the API's port stays plain HTTP).
    pub fn peer_tls(&self) -> Result<Option<groupcache_rs::PeerTls>, Error> {
        let (Some(ca), Some(cert), Some(key)) =
            (&self.peer_tls_ca, &self.peer_tls_cert, &self.peer_tls_key)
        else {
            return Ok(None);
        };
        if self.peer_listen == PeerListen::Shared {
            return Err(Error::Config(
                "--peer-tls-* needs the peer protocol on a port of its own, not \
                 --peer-listen shared"
                    .to_owned(),
            ));
        }
        let mut tls =
            groupcache_rs::PeerTls::new(&read(ca)?)?.identity(&read(cert)?, &read(key)?)?;
        if let Some(name) = &self.peer_tls_server_name {
            tls = tls.server_name(name)?;
        }
        Ok(Some(tls))
    }

    /// Peer authentication with the secret in `--peer-secret-file`, if set.
    pub fn peer_auth(&self) -> Result<Option<groupcache_rs::PeerAuth>, Error> {
        let Some(path) = &self.peer_secret_file else {
            return Ok(None);
        };
        let secret = read(path)?;
        let secret = secret.trim_ascii().to_vec();
        let auth = groupcache_rs::PeerAuth::new(secret)
            .map_err(|error| Error::Config(format!("{}: {error}", path.display())))?;
        Ok(Some(auth))
    }

    /// The scheme of every peer URL: `https` with peer TLS, else `http`.
    pub fn peer_scheme(&self) -> &'static str {
        if self.peer_tls_ca.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `url` (a peer's base URL) with its scheme checked against [`Config::peer_scheme`]: an
    /// `http://` peer of a TLS cluster would fail every request and silently load locally.
    pub fn peer_base_url(&self, url: &str) -> Result<String, Error> {
        let url = base_url(url)?;
        let scheme = self.peer_scheme();
        if !url.starts_with(&format!("{scheme}://")) {
            return Err(Error::Config(format!(
                "{url:?}: peer URLs must be {scheme}:// {}",
                if scheme == "https" {
                    "with --peer-tls-*"
                } else {
                    "without --peer-tls-*"
                }
            )));
        }
        Ok(url)
    }

    /// This replica's base URL: `--self-url`, else built from `POD_IP` or the bound address
    /// of the listener that serves the peer protocol, `https://` with peer TLS.
    pub fn self_base_url(&self, bound: SocketAddr) -> Result<String, Error> {
        if let Some(url) = &self.self_url {
            return self.peer_base_url(url);
        }
        let ip = match self.pod_ip {
            Some(ip) => ip,
            None if !bound.ip().is_unspecified() => bound.ip(),
            None => {
                return Err(Error::Config(format!(
                    "listening on {bound}, so this replica cannot tell the URL other replicas \
                     reach it at: set --self-url (SELF_URL) or POD_IP"
                )));
            }
        };
        let scheme = self.peer_scheme();
        Ok(format!("{scheme}://{}", SocketAddr::new(ip, bound.port())))
    }
}

/// The contents of a file a flag names.
fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|error| Error::Config(format!("reading {}: {error}", path.display())))
}

/// Checks that `url` is a base URL (`http(s)://host:port`, no path, query or fragment) and
/// returns it without a trailing slash.
pub fn base_url(url: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::Config(format!("{url:?} is not a base URL: {why}"));
    let uri: Uri = url.parse().map_err(|_| invalid("it does not parse"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("expected http:// or https://")),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(invalid("it has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || url.contains('#') {
        return Err(invalid(
            "expected no path (the service adds its peer prefix itself)",
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The URL the groupcache ring knows a replica by: its base URL and [`PEER_PREFIX`].
pub fn peer_url(base_url: &str) -> String {
    format!("{base_url}{PEER_PREFIX}")
}

/// Parses `1500ms`, `2s`, `5m`, `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: use ms, s, m or h"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let seconds = |factor: u64| {
        number
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(format!(
            "{text:?}: unknown unit {unit:?}: use ms, s, m or h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("svc").chain(args.iter().copied()))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "ms", "1.5s", "-1s", "3d", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("http://10.0.0.1:8080/").unwrap(),
            "http://10.0.0.1:8080"
        );
        assert_eq!(base_url("https://a.example").unwrap(), "https://a.example");
        assert_eq!(
            base_url("http://[fd00::1]:80").unwrap(),
            "http://[fd00::1]:80"
        );
        for bad in [
            "10.0.0.1:8080",
            "ftp://a",
            "http://a/internal",
            "http://a?x=1",
            "http://",
        ] {
            assert!(base_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn self_url_from_flags_pod_ip_or_bound_address() {
        let bound: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let config = parse(&[]).unwrap();
        assert!(matches!(config.self_base_url(bound), Err(Error::Config(_))));
        let config = parse(&["--pod-ip", "10.1.2.3"]).unwrap();
        assert_eq!(config.self_base_url(bound).unwrap(), "http://10.1.2.3:8080");
        let config = parse(&["--pod-ip", "fd00::7"]).unwrap();
        assert_eq!(
            config.self_base_url(bound).unwrap(),
            "http://[fd00::7]:8080"
        );
        let config = parse(&["--self-url", "http://me:1"]).unwrap();
        assert_eq!(config.self_base_url(bound).unwrap(), "http://me:1");
        let config = parse(&[]).unwrap();
        let bound: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            config.self_base_url(bound).unwrap(),
            "http://127.0.0.1:4000"
        );
    }

    #[test]
    fn discovery_modes() {
        let config = parse(&["--peers", "http://a:1,http://b:2"]).unwrap();
        assert_eq!(
            config.discovery(),
            Discovery::Static(vec!["http://a:1".into(), "http://b:2".into()])
        );
        let config = parse(&["--kube-service", "svc", "--kube-namespace", "ns"]).unwrap();
        assert_eq!(
            config.discovery(),
            Discovery::Kubernetes {
                service: "svc".into(),
                namespace: Some("ns".into())
            }
        );
        assert!(parse(&["--kube-service", "svc", "--peers", "http://a:1"]).is_err());
        assert_eq!(parse(&[]).unwrap().discovery(), Discovery::Static(vec![]));
        let config = parse(&["--peers", " http://a:1, ,"]).unwrap();
        assert_eq!(
            config.discovery(),
            Discovery::Static(vec!["http://a:1".into()])
        );
        let config = parse(&["--kube-address-type", "IPv6"]).unwrap();
        assert_eq!(config.kube_address_type, AddressType::IPv6);
    }

    /// The default start serves the peer protocol on a loopback port of its own, and warns of
    /// nothing; sharing the API's port, or listening beyond loopback, without authentication
    /// warns.
    #[test]
    fn the_default_peer_listener_is_its_own_loopback_port() {
        let default = parse(&[]).unwrap();
        let loopback: SocketAddr = "127.0.0.1:9080".parse().unwrap();
        assert_eq!(default.peer_listen, PeerListen::Own(loopback));
        assert_eq!(default.exposure_warning(loopback), None);
        assert_eq!(default.kube_port_name(), "peer");

        let config = parse(&["--peer-listen", "0.0.0.0:8081"]).unwrap();
        let any: SocketAddr = "0.0.0.0:8081".parse().unwrap();
        assert_eq!(config.peer_listen, PeerListen::Own(any));
        assert!(
            config
                .exposure_warning(any)
                .unwrap()
                .contains("WITHOUT AUTHENTICATION")
        );
        let shared = parse(&["--peer-listen", "shared"]).unwrap();
        assert_eq!(shared.peer_listen, PeerListen::Shared);
        assert!(
            shared
                .exposure_warning(loopback)
                .unwrap()
                .contains("API's port")
        );
        let signed = parse(&["--peer-listen", "shared", "--peer-secret-file", "s"]).unwrap();
        assert_eq!(signed.exposure_warning(any), None);
        assert!(parse(&["--peer-listen", "8081"]).is_err());
    }

    /// `--cache-bytes` is the library's one budget, and no cap is set unless asked for; the
    /// category summaries have a budget of their own.
    #[test]
    fn each_group_has_one_budget() {
        let config = parse(&[]).unwrap();
        assert_eq!(
            config.item_budget(),
            Budget {
                cache_bytes: groupcache_rs::DEFAULT_CACHE_BYTES,
                hot_cache_bytes: None
            }
        );
        assert_eq!(
            config.category_budget(),
            Budget {
                cache_bytes: DEFAULT_CATEGORY_CACHE_BYTES,
                hot_cache_bytes: None
            }
        );
        let config = parse(&[
            "--cache-bytes",
            "1000000",
            "--hot-cache-bytes",
            "0",
            "--category-cache-bytes",
            "2000",
            "--category-hot-cache-bytes",
            "500",
        ])
        .unwrap();
        assert_eq!(
            (config.cache_bytes, config.hot_cache_bytes),
            (1_000_000, Some(0))
        );
        assert_eq!(
            config.category_budget(),
            Budget {
                cache_bytes: 2000,
                hot_cache_bytes: Some(500)
            }
        );
    }

    /// Refresh ahead is on by default, a fifth of the TTL; a window as long as the TTL is
    /// refused; reads with PostgreSQL take at most the pool, counts a quarter of it.
    #[test]
    fn item_policies_follow_the_ttl_and_the_pool() {
        let config = parse(&[]).unwrap();
        assert_eq!(
            config.item_refresh_ahead().unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(config.not_found_ttl, groupcache_rs::DEFAULT_NOT_FOUND_TTL);
        assert_eq!(config.item_max_stale, Duration::from_secs(300));
        let config = parse(&["--item-ttl", "10s", "--item-refresh-ahead", "3s"]).unwrap();
        assert_eq!(config.item_refresh_ahead().unwrap(), Duration::from_secs(3));
        let config = parse(&["--item-ttl", "10s", "--item-refresh-ahead", "10s"]).unwrap();
        assert!(config.item_refresh_ahead().is_err());
        let config = parse(&["--item-ttl", "10s", "--item-refresh-ahead", "0s"]).unwrap();
        assert_eq!(config.item_refresh_ahead().unwrap(), Duration::ZERO);
        let config = parse(&["--item-ttl", "0s"]).unwrap();
        assert_eq!(config.item_refresh_ahead().unwrap(), Duration::ZERO);

        let simulated = parse(&[]).unwrap();
        assert_eq!(simulated.item_loads().max_concurrent, None);
        let postgres = parse(&[
            "--database-url",
            "postgres://h/db",
            "--database-max-connections",
            "10",
        ])
        .unwrap();
        assert_eq!(postgres.item_loads().max_concurrent, Some(10));
        assert_eq!(postgres.category_loads().max_concurrent, Some(2));
        assert_eq!(postgres.item_loads().breaker, (5, Duration::from_secs(2)));
    }

    #[test]
    fn peer_tls_needs_all_three_files_and_a_peer_port() {
        let all = [
            "--peer-listen",
            "0.0.0.0:8081",
            "--peer-tls-ca",
            "ca.pem",
            "--peer-tls-cert",
            "cert.pem",
            "--peer-tls-key",
            "key.pem",
        ];
        assert!(parse(&all).is_ok());
        let shared = parse(&[&["--peer-listen", "shared"], &all[2..]].concat()).unwrap();
        assert!(shared.peer_tls().is_err(), "with --peer-listen shared");
        assert!(parse(&all[..6]).is_err(), "without --peer-tls-key");
        assert!(
            parse(&["--peer-tls-cert", "cert.pem"]).is_err(),
            "without the CA"
        );
        let config = parse(&[&all[..], &["--pod-ip", "10.0.0.1"]].concat()).unwrap();
        let bound = "0.0.0.0:8081".parse().unwrap();
        assert_eq!(
            config.self_base_url(bound).unwrap(),
            "https://10.0.0.1:8081"
        );
        let missing = config.peer_tls().unwrap_err().to_string();
        assert!(missing.contains("ca.pem"), "{missing}");
        // Peer URLs must use the scheme the cluster speaks.
        assert!(config.peer_base_url("https://10.0.0.2:8081").is_ok());
        assert!(config.peer_base_url("http://10.0.0.2:8081").is_err());
        let self_url =
            parse(&[&all[..], &["--self-url", "http://10.0.0.1:8081"]].concat()).unwrap();
        assert!(self_url.self_base_url(bound).is_err());
        let plain = parse(&[]).unwrap();
        assert!(plain.peer_base_url("http://10.0.0.2:8080").is_ok());
        assert!(plain.peer_base_url("https://10.0.0.2:8080").is_err());
    }

    #[test]
    fn peer_auth_from_a_secret_file() {
        assert!(parse(&[]).unwrap().peer_auth().unwrap().is_none());
        let dir = std::env::temp_dir().join(format!("peer-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdef0123456789abcdef\n").unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "too short\n").unwrap();
        let config = parse(&["--peer-secret-file", good.to_str().unwrap()]).unwrap();
        assert!(config.peer_auth().unwrap().is_some());
        let config = parse(&["--peer-secret-file", short.to_str().unwrap()]).unwrap();
        let error = config.peer_auth().unwrap_err().to_string();
        assert!(error.contains("at least 16 bytes"), "{error}");
        let config = parse(&["--peer-secret-file", "/nonexistent/secret"]).unwrap();
        assert!(config.peer_auth().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The manifests mount the generated Secret where `PEER_SECRET_FILE` points.
    #[test]
    fn the_manifests_turn_peer_auth_on_with_the_generated_secret() {
        let deployment = include_str!("../k8s/base/deployment.yaml");
        let kustomization = include_str!("../k8s/base/kustomization.yaml");
        assert!(kustomization.contains("secretGenerator:"));
        assert!(kustomization.contains("name: groupcache-example-peer-secret"));
        assert!(kustomization.contains("secret=peer-secret"));
        assert!(deployment.contains("secretName: groupcache-example-peer-secret"));
        assert!(deployment.contains("- name: PEER_SECRET_FILE"));
        assert!(deployment.contains("value: /etc/groupcache/peer-secret/secret"));
        assert!(deployment.contains("mountPath: /etc/groupcache/peer-secret"));
        // The container runs as 65532: the mounted file must be readable by its group.
        assert!(deployment.contains("fsGroup: 65532"));
    }

    #[test]
    fn discovery_follows_the_port_that_serves_the_peer_protocol() {
        assert_eq!(
            parse(&["--peer-listen", "shared"])
                .unwrap()
                .kube_port_name(),
            "http"
        );
        let own_port = parse(&["--peer-listen", "0.0.0.0:8081"]).unwrap();
        assert_eq!(own_port.kube_port_name(), "peer");
        let named = parse(&["--peer-listen", "0.0.0.0:8081", "--kube-port-name", "gc"]).unwrap();
        assert_eq!(named.kube_port_name(), "gc");
        assert_eq!(
            parse(&["--kube-port-name", "web"])
                .unwrap()
                .kube_port_name(),
            "web"
        );
    }
}
