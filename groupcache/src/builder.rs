//! Configuration of a [`Groupcache`], with bounded defaults.

use std::sync::Arc;
use std::time::Duration;

use crate::budget::{Budget, Side};
use crate::caches::Cache;
use crate::engine::{Groupcache, Inner};
use crate::flight::Flight;
use crate::membership::Peers;
use crate::metrics::Metrics;
use crate::popularity::Popularity;
use crate::ring::RingMode;
use crate::wire::PeerAuth;
use crate::wire::auth::Refusal;
use crate::wire::client::PeerClient;
use crate::wire::pool::Connections;
use crate::{Error, Loader};

/// The main cache's part of the default [`Builder::cache_bytes`]: 64 MiB. It is the total's
/// part for a main cache whose cap alone is not set ([`Builder::hot_cache_bytes`] without
/// [`Builder::cache_bytes`]).
pub const DEFAULT_MAIN_CACHE_BYTES: u64 = 64 << 20;
/// The hot cache's part of the default [`Builder::cache_bytes`]: 8 MiB (as for
/// [`DEFAULT_MAIN_CACHE_BYTES`]).
pub const DEFAULT_HOT_CACHE_BYTES: u64 = 8 << 20;
/// Default [`Builder::cache_bytes`]: 72 MiB, shared by the main and the hot cache.
pub const DEFAULT_CACHE_BYTES: u64 = DEFAULT_MAIN_CACHE_BYTES + DEFAULT_HOT_CACHE_BYTES;

/// Default [`Builder::max_batch_keys`]: 1024 keys per batch request.
pub const DEFAULT_MAX_BATCH_KEYS: usize = 1024;
/// Default [`Builder::max_batch_bytes`]: 16 MiB of values per batch answer.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 16 << 20;

/// Builds a [`Groupcache`]; start with [`Groupcache::builder`].
///
/// ```
/// # use groupcache_rs::{Groupcache, Loaded, Loader, RingMode};
/// # use std::time::Duration;
/// # struct Db;
/// # impl Loader for Db {
/// #     type Value = String;
/// #     type Error = std::io::Error;
/// #     async fn load(&self, key: &str) -> Result<Loaded<String>, std::io::Error> {
/// #         Ok(Loaded::new(key.to_uppercase()))
/// #     }
/// # }
/// let cache = Groupcache::builder("users", "http://10.0.0.1:8080", Db)
///     .cache_bytes(288 << 20)
///     .ring_mode(RingMode::GoCompatible)
///     .peer_timeout(Duration::from_secs(2))
///     .build()?;
/// # Ok::<(), groupcache_rs::Error>(())
/// ```
#[must_use]
pub struct Builder<L> {
    group: String,
    self_url: String,
    loader: L,
    pub(crate) config: Config,
    cache_bytes: Option<u64>,
    main_cache_bytes: Option<u64>,
    hot_cache_bytes: Option<u64>,
    ring_mode: RingMode,
    connect_timeout: Duration,
    handoff_timeout: Option<Duration>,
    popularity_window: Duration,
    #[cfg(feature = "tls")]
    tls: Option<crate::PeerTls>,
}

/// Settings the read path consults.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) base_path: String,
    pub(crate) peer_timeout: Duration,
    pub(crate) max_key_bytes: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) hot_promotion_requests: u32,
    pub(crate) hot_max_age: Duration,
    pub(crate) owner_suspicion: Duration,
    /// Zero: no warm hand-off.
    pub(crate) handoff_timeout: Duration,
    pub(crate) auth: Option<Arc<PeerAuth>>,
    pub(crate) max_concurrent_peer_requests: usize,
    pub(crate) max_buffered_peer_bytes: usize,
    pub(crate) max_batch_keys: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) coalesce_in_flight: usize,
    /// TinyLFU admission on both caches.
    pub(crate) admission: bool,
    /// The builder's ring mode: in `GoCompatible`, a peer not heard from yet may be a
    /// golang/groupcache replica.
    pub(crate) ring_mode: RingMode,
}

impl<L: Loader> Builder<L> {
    pub(crate) fn new(group: String, self_url: String, loader: L) -> Self {
        Builder {
            group,
            self_url,
            loader,
            config: Config {
                base_path: "/_groupcache/".to_owned(),
                peer_timeout: Duration::from_secs(10),
                max_key_bytes: 4096,
                max_value_bytes: 16 << 20,
                hot_promotion_requests: 2,
                admission: false,
                ring_mode: RingMode::default(),
                hot_max_age: Duration::from_secs(60),
                owner_suspicion: Duration::from_secs(5),
                handoff_timeout: Duration::ZERO,
                auth: None,
                max_concurrent_peer_requests: 1024,
                max_buffered_peer_bytes: 64 << 20,
                max_batch_keys: DEFAULT_MAX_BATCH_KEYS,
                max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
                coalesce_in_flight: 0,
            },
            cache_bytes: None,
            main_cache_bytes: None,
            hot_cache_bytes: None,
            ring_mode: RingMode::default(),
            connect_timeout: Duration::from_secs(1),
            handoff_timeout: None,
            popularity_window: crate::engine::POPULARITY_WINDOW,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Byte budget of the group on this replica, shared by the main cache (the keys this
    /// replica owns) and the hot cache (popular keys owned by others); default
    /// [`DEFAULT_CACHE_BYTES`], 72 MiB. Each entry is charged its key, its value and a fixed
    /// overhead.
    ///
    /// The split follows the workload: each cache remembers the keys it evicted recently, and a
    /// key that comes back to one of them moves the split its way (see the README's "One
    /// budget"). Either cache may also use the room the other leaves free. Caps from
    /// [`main_cache_bytes`](Self::main_cache_bytes) and [`hot_cache_bytes`](Self::hot_cache_bytes)
    /// bound either side.
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = Some(bytes);
        self
    }

    /// Caps the main cache, which holds the keys this replica owns, at `bytes` of the
    /// [`cache_bytes`](Self::cache_bytes) budget. Without `cache_bytes`, the budget is this cap
    /// plus the hot cache's ([`DEFAULT_HOT_CACHE_BYTES`] unless set), as the separate budgets
    /// before 0.2 were: setting both caps keeps that fixed split.
    pub fn main_cache_bytes(mut self, bytes: u64) -> Self {
        self.main_cache_bytes = Some(bytes);
        self
    }

    /// Caps the hot cache, which holds popular keys owned by others, at `bytes` of the
    /// [`cache_bytes`](Self::cache_bytes) budget; 0 turns it off. Without `cache_bytes`, the
    /// budget is this cap plus the main cache's ([`DEFAULT_MAIN_CACHE_BYTES`] unless set).
    pub fn hot_cache_bytes(mut self, bytes: u64) -> Self {
        self.hot_cache_bytes = Some(bytes);
        self
    }

    /// The shared budget: the total, and the caps that bound either side.
    fn budget(&self) -> Budget {
        let total = self.cache_bytes.unwrap_or_else(|| {
            self.main_cache_bytes
                .unwrap_or(DEFAULT_MAIN_CACHE_BYTES)
                .saturating_add(self.hot_cache_bytes.unwrap_or(DEFAULT_HOT_CACHE_BYTES))
        });
        Budget::new(total, self.main_cache_bytes, self.hot_cache_bytes)
    }

    /// How keys map to owners (default [`RingMode::Balanced`]); every replica must use the same.
    /// [`RingMode::GoCompatible`] to share a cluster with golang/groupcache replicas.
    pub fn ring_mode(mut self, mode: RingMode) -> Self {
        self.ring_mode = mode;
        self
    }

    /// Longest wait for a peer's whole answer (default 10 s). It includes the owner's load, so
    /// keep it above the loader's worst latency; past it the value is loaded locally.
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.config.peer_timeout = timeout;
        self
    }

    /// Longest wait to connect to a peer, TLS handshake included (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Path under which peers serve the router (default `/_groupcache/`, golang/groupcache's).
    /// It must start and end with `/`. When the application nests the router under a prefix,
    /// the prefix belongs in the peer URLs (`http://10.0.0.1:8080/internal`), not here.
    pub fn base_path(mut self, path: impl Into<String>) -> Self {
        self.config.base_path = path.into();
        self
    }

    /// Longest key accepted, in bytes (default 4096); longer ones fail with
    /// [`Error::KeyTooLarge`] locally and get 400 from the router.
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.config.max_key_bytes = bytes;
        self
    }

    /// Largest value accepted from a peer or in a peer's `PUT` (default 16 MiB); a peer sending
    /// more is cut off at the limit.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.config.max_value_bytes = bytes;
        self
    }

    /// Requests for a key owned elsewhere, within the popularity window (default 60 s), after
    /// which its fetched value is kept in the hot cache (default 2: one-off keys are never kept).
    pub fn hot_promotion_requests(mut self, requests: u32) -> Self {
        self.config.hot_promotion_requests = requests;
        self
    }

    /// TinyLFU admission on both caches (default off): when a value needs room, it is kept only
    /// if its key was asked for more often within the popularity window (60 s) than the key that
    /// would be evicted first, so a scan or a burst of one-off keys leaves the keys that proved
    /// themselves in place. A rejected value is still returned; its key is loaded (or fetched)
    /// again when next asked for. Costs a sketch update per get, hits included. See the README's
    /// "One budget" for when it wins.
    ///
    /// ```
    /// # use groupcache_rs::{Groupcache, Loaded, Loader};
    /// # struct Db;
    /// # impl Loader for Db {
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
    /// #         Ok(Loaded::new(key.to_owned()))
    /// #     }
    /// # }
    /// let cache = Groupcache::builder("rows", "http://10.0.0.1:8080", Db)
    ///     .admission(true)
    ///     .build()?;
    /// # Ok::<(), groupcache_rs::Error>(())
    /// ```
    pub fn admission(mut self, on: bool) -> Self {
        self.config.admission = on;
        self
    }

    /// Longest a hot copy is served before it is fetched again (default 60 s): the staleness
    /// bound for a replica that missed a `remove` or `set` (e.g. during a partition).
    ///
    /// It bounds every value a replica holds for a key it does not own under its current ring
    /// (hot copies, values loaded for a peer whose ring disagrees, entries it kept from before a
    /// ring change took the key away), and values it stores within this long of a ring change
    /// (it cannot know yet that the others route the key's writes to it). A write missed while
    /// rings disagreed is therefore served for at most this long, provided discovery brings every
    /// replica to the same ring within it. The price: keys loaded just after a ring change are
    /// loaded once more when their bound ends.
    pub fn hot_max_age(mut self, age: Duration) -> Self {
        self.config.hot_max_age = age;
        self
    }

    /// How long an owner that could not be reached (connect failure or timeout) is treated as
    /// down (default 5 s; zero turns it off). Meanwhile its keys are asked of their successor on
    /// the ring, the member that owns them once the owner is gone, which every replica picks
    /// alike: each key is loaded about once in the cluster during the outage, not once per
    /// replica, and held on the successor under [`hot_max_age`](Builder::hot_max_age). When the
    /// time is up, the next request tries the owner again, and one answer trusts it again.
    pub fn owner_suspicion(mut self, duration: Duration) -> Self {
        self.config.owner_suspicion = duration;
        self
    }

    /// Longest wait for a warm hand-off (default 100 ms with [`RingMode::Balanced`], off with
    /// [`RingMode::GoCompatible`]; zero turns it off). Within
    /// [`hot_max_age`](Builder::hot_max_age) of a ring change, a replica's miss of a key it owns
    /// first asks the key's previous owner (its owner in the ring before, or, on a replica that
    /// just joined, the owner it would have without it) for the copy it holds in memory, a peek
    /// that never makes it load, and runs the loader only if none comes back in time. Keys that
    /// move on a join, leave or rolling deploy are thus not reloaded from the source. A
    /// golang/groupcache peer cannot peek (it would load the key instead), so turn it on in a
    /// `GoCompatible` ring only if every replica is this library.
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.handoff_timeout = Some(timeout);
        self
    }

    /// Peer requests the router serves at once (default 1024); more are answered 503 at once, and
    /// their senders load locally, rather than queue without bound.
    pub fn max_concurrent_peer_requests(mut self, requests: usize) -> Self {
        self.config.max_concurrent_peer_requests = requests;
        self
    }

    /// Bytes of peers' `PUT` bodies the router reads at once (default 64 MiB; never less than one
    /// body of [`max_value_bytes`](Self::max_value_bytes) plus 4 KiB). A `PUT` whose declared
    /// length does not fit in what is left is answered 503 before any of it is read, so bodies
    /// held by slow or stalled senders never take more than this.
    pub fn max_buffered_peer_bytes(mut self, bytes: usize) -> Self {
        self.config.max_buffered_peer_bytes = bytes;
        self
    }

    /// Most keys in one batch request (default [`DEFAULT_MAX_BATCH_KEYS`]): a
    /// [`get_many`](Groupcache::get_many) sends an owner its keys in requests of at most this
    /// many, and the router refuses larger batches with 413. Every replica should use the same.
    pub fn max_batch_keys(mut self, keys: usize) -> Self {
        self.config.max_batch_keys = keys.max(1);
        self
    }

    /// Most value bytes in one batch answer (default [`DEFAULT_MAX_BATCH_BYTES`]), both read and
    /// sent: the requester tells the owner its limit, and the owner fills an answer up to the
    /// smaller of the two; the values that do not fit are fetched one by one.
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.config.max_batch_bytes = bytes;
        self
    }

    /// Coalesces concurrent single [`get`](Groupcache::get)s for keys owned by the same peer:
    /// at most `max_in_flight` requests to a peer are in flight at once, and the fetches that
    /// arrive while all of them are out wait for the first to return, then travel together in
    /// one batch request. There is no timer: a fetch that finds a request slot free goes at once,
    /// so at low concurrency nothing waits, and under load the fetches wait only as long as the
    /// owner takes to answer. Only for peers that take batches; a golang/groupcache peer still
    /// gets single requests. Zero (the default) turns it off.
    ///
    /// See BENCHMARKS.md ("Coalescing without a timer") for what it gains and costs.
    ///
    /// ```
    /// # use groupcache_rs::{Groupcache, Loaded, Loader};
    /// # struct Source;
    /// # impl Loader for Source {
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
    /// #         Ok(Loaded::new(key.to_owned()))
    /// #     }
    /// # }
    /// let cache = Groupcache::builder("pages", "http://10.0.0.1:8080", Source)
    ///     .coalesce_fetches(2)
    ///     .build()?;
    /// # Ok::<(), groupcache_rs::Error>(())
    /// ```
    pub fn coalesce_fetches(mut self, max_in_flight: usize) -> Self {
        self.config.coalesce_in_flight = max_in_flight;
        self
    }

    /// Connects to peers over TLS (`https://` peer URLs): verifies them against `tls`'s CA and
    /// presents its identity, if any, as a client certificate. Without it, `https://` peers
    /// cannot be reached.
    #[cfg(feature = "tls")]
    pub fn peer_tls(mut self, tls: crate::PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Signs every peer request with `auth`'s secret and refuses (401) incoming peer requests
    /// not signed with an accepted one. Off by default; every replica needs the same setting.
    /// golang/groupcache peers cannot sign, so mixed clusters run without it.
    pub fn peer_auth(mut self, auth: PeerAuth) -> Self {
        self.config.auth = Some(Arc::new(auth));
        self
    }

    /// Builds the cache. Its metrics are registered with the `metrics` recorder installed now.
    pub fn build(self) -> Result<Groupcache<L>, Error> {
        let budget = Arc::new(self.budget());
        let mut config = self.config;
        config.ring_mode = self.ring_mode;
        config.handoff_timeout = self.handoff_timeout.unwrap_or(match self.ring_mode {
            RingMode::Balanced => Duration::from_millis(100),
            RingMode::GoCompatible => Duration::ZERO,
        });
        if self.group.is_empty() {
            return Err(Error::Config("the group name is empty".into()));
        }
        if !(config.base_path.starts_with('/') && config.base_path.ends_with('/')) {
            return Err(Error::Config(format!(
                "base path {:?} must start and end with '/'",
                config.base_path
            )));
        }
        if config.peer_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::Config("timeouts must be longer than zero".into()));
        }
        let peers = Peers::new(
            &self.self_url,
            self.ring_mode,
            &config.base_path,
            &self.group,
            config.hot_max_age,
        )?;
        let self_url = peers.self_url().to_string();
        #[cfg(feature = "tls")]
        let connections = Connections::new(
            self.connect_timeout,
            match &self.tls {
                Some(tls) => Some((Arc::new(tls.client_config()?), tls.verified_name())),
                None => None,
            },
        );
        #[cfg(not(feature = "tls"))]
        let connections = Connections::new(self.connect_timeout);
        let refusals = Refusal::ALL.map(Refusal::reason);
        let metrics = Metrics::new(&self.group, &refusals);

        metrics.peers.set(1.0);
        let inner = Inner {
            client: PeerClient::new(
                connections,
                config.peer_timeout,
                config.max_value_bytes,
                config.auth.clone(),
            ),
            main: Cache::sharing(Arc::clone(&budget), Side::Main)
                .publish_to(metrics.main.bytes.clone(), metrics.main.items.clone()),
            hot: Cache::sharing(Arc::clone(&budget), Side::Hot)
                .publish_to(metrics.hot.bytes.clone(), metrics.hot.items.clone()),
            budget,
            popularity: Popularity::new(self.popularity_window),
            loads: Flight::new(),
            fetches: Flight::new(),
            group: self.group,
            self_url,
            loader: self.loader,
            peers,
            metrics,
            coalescing: Default::default(),
            recent_writes: crate::handoff::RecentWrites::new(config.hot_max_age),
            repairs: Default::default(),
            config,
            #[cfg(test)]
            pause: Default::default(),
        };
        Ok(Groupcache {
            inner: Arc::new(inner),
        })
    }
}
