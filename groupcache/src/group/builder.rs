//! Configuration of a group: its loader, budget and read-path settings, on a [`Cluster`] or on
//! a cluster of its own.

use std::sync::Arc;
use std::time::Duration;

use super::config::Config;
use super::journey::{Inner, POPULARITY_WINDOW};
use super::{Groupcache, Registration};
use crate::budget::{Budget, Side};
use crate::caches::Cache;
use crate::cluster::Cluster;
use crate::cluster::builder::ClusterBuilder;
use crate::cluster::ring::RingMode;
use crate::flight::Flight;
use crate::metrics::Metrics;
use crate::popularity::Popularity;
use crate::wire::PeerAuth;
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

impl<L: Loader> Groupcache<L> {
    /// Starts a builder for `group`, served by this replica at `self_url` (the exact URL the other
    /// replicas list it under, e.g. `http://10.0.0.1:8080`), filled by `loader`: a cluster of
    /// this one group. For several groups over one set of peers, build a [`Cluster`] and call
    /// [`Cluster::group`] for each.
    pub fn builder(group: impl Into<String>, self_url: impl Into<String>, loader: L) -> Builder<L> {
        Builder::new(group.into(), loader, Cluster::builder(self_url))
    }
}

impl Cluster {
    /// Starts a builder for a group of this cluster named `name`, filled by `loader`, with its
    /// own value type, budget and metrics; its peers, ring, connections and router are the
    /// cluster's. Groups can be added at any time, while others serve requests; a group is
    /// dropped from the cluster with its last handle. Every replica should have the same
    /// groups: a peer's request for a group this replica does not serve gets 404, and the peer
    /// loads the key itself.
    ///
    /// ```
    /// # use groupcache_rs::{Cluster, Loaded, Loader};
    /// # struct Db;
    /// # impl Loader for Db {
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
    /// #         Ok(Loaded::new(key.to_owned()))
    /// #     }
    /// # }
    /// let cluster = Cluster::builder("http://10.0.0.1:8080").build()?;
    /// let users = cluster.group("users", Db).cache_bytes(64 << 20).build()?;
    /// assert_eq!(cluster.groups(), ["users"]);
    /// drop(users);
    /// assert!(cluster.groups().is_empty());
    /// # Ok::<(), groupcache_rs::Error>(())
    /// ```
    pub fn group<L: Loader>(&self, name: impl Into<String>, loader: L) -> Builder<L, Cluster> {
        Builder::new(name.into(), loader, self.clone())
    }
}

/// Builds a group ([`Groupcache`]): on a [`Cluster`] from [`Cluster::group`], or with a cluster
/// of its own from [`Groupcache::builder`], which also takes the cluster's settings (those of
/// [`ClusterBuilder`]).
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
pub struct Builder<L, C = ClusterBuilder> {
    group: String,
    loader: L,
    config: Config,
    cache_bytes: Option<u64>,
    main_cache_bytes: Option<u64>,
    hot_cache_bytes: Option<u64>,
    popularity_window: Duration,
    /// The cluster the group joins, or the builder of its own.
    cluster: C,
}

impl<L, C: std::fmt::Debug> std::fmt::Debug for Builder<L, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("group", &self.group)
            .field("config", &self.config)
            .field("cache_bytes", &self.cache_bytes)
            .field("main_cache_bytes", &self.main_cache_bytes)
            .field("hot_cache_bytes", &self.hot_cache_bytes)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl<L: Loader, C> Builder<L, C> {
    fn new(group: String, loader: L, cluster: C) -> Self {
        Builder {
            group,
            loader,
            config: Config::default(),
            cache_bytes: None,
            main_cache_bytes: None,
            hot_cache_bytes: None,
            popularity_window: POPULARITY_WINDOW,
            cluster,
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

    /// Longest key accepted, in bytes (default 4096); longer ones fail with
    /// [`Error::KeyTooLarge`] locally and get 400 from the router.
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.config.max_key_bytes = bytes;
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

    /// Hedges fetches whose owner stalls (default off): when the owner has answered nothing, to
    /// any request, for longer than its answers usually take (the mean plus four deviations of
    /// its answer times, at least 20 ms, at most half the
    /// [`failure_detection`](crate::ClusterBuilder::failure_detection)), the key's successor on
    /// the ring is asked too and the first answer is taken. Every replica picks the same
    /// successor, which loads the key once for all of them and keeps it under the staleness
    /// bound, so the source sees at most one extra load per key. An owner that answers other
    /// requests meanwhile is alive, its load merely slow: no hedge. Never to a
    /// golang/groupcache successor; single fetches only (not `get_many`'s batches). Counted in
    /// [`Stats::hedges`](crate::Stats::hedges) and [`Stats::hedge_wins`](crate::Stats::hedge_wins).
    ///
    /// See BENCHMARKS.md ("Hedging (issue 25, item 4)") for what it gains and costs.
    pub fn hedge_fetches(mut self, on: bool) -> Self {
        self.config.hedge = on;
        self
    }

    /// How long a negative answer is kept (default [`DEFAULT_NOT_FOUND_TTL`](crate::DEFAULT_NOT_FOUND_TTL), 5 s): a key the
    /// loader says does not exist ([`Loader::is_not_found`]) is answered
    /// [`Error::NotFound`] by every replica for this long, the source not asked again; hot
    /// copies on other replicas are bounded by `hot_max_age` as values are. Zero keeps none
    /// (every get asks the source again, as before negative caching).
    ///
    /// ```
    /// # use groupcache_rs::{Groupcache, Loaded, Loader};
    /// # use std::time::Duration;
    /// # struct Db;
    /// # impl Loader for Db {
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, key: &str) -> Result<Loaded<String>, std::io::Error> {
    /// #         Ok(Loaded::new(key.to_owned()))
    /// #     }
    /// # }
    /// let cache = Groupcache::builder("users", "http://10.0.0.1:8080", Db)
    ///     .not_found_ttl(Duration::from_secs(30))
    ///     .cache_errors(Duration::from_millis(500))
    ///     .refresh_after(Duration::from_secs(50))
    ///     .max_stale(Duration::from_secs(300))
    ///     .max_concurrent_loads(64)
    ///     .circuit_breaker(10, Duration::from_secs(2))
    ///     .build()?;
    /// # Ok::<(), groupcache_rs::Error>(())
    /// ```
    pub fn not_found_ttl(mut self, ttl: Duration) -> Self {
        self.config.not_found_ttl = ttl;
        self
    }

    /// Keeps a failed load's error for `ttl` on the key's owner (default zero: errors are not
    /// kept, and the next get loads again). Meanwhile gets of the key, on every replica, fail
    /// with its message ([`Error::LoaderFailedRecently`] here, [`Error::RemoteLoader`] on other
    /// replicas) without a load: a source that fails under load is not asked again by every
    /// request. A `remove` or `set` of the key ends it.
    pub fn cache_errors(mut self, ttl: Duration) -> Self {
        self.config.error_ttl = ttl;
        self
    }

    /// Refreshes values `after` their load (default: only values whose loader set
    /// [`Loaded::refresh_at`](crate::Loaded::refresh_at)): a get of a value past its refresh
    /// time answers it at once and has the key's owner load it again in the background, once
    /// for the whole cluster, whichever replicas ask. The refreshed value replaces the old one
    /// only if no `remove` or `set` of the key happened since the refresh started. Values that
    /// expire before `after` are not refreshed.
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.config.refresh_after = Some(after);
        self
    }

    /// Serves a value up to `max_stale` past its expiry when its load fails (default zero:
    /// never). When the source fails (an error, or an open
    /// [`circuit_breaker`](Self::circuit_breaker)) and this replica, or the key's owner, holds
    /// a value that expired less than `max_stale` ago, `get` returns that value instead of the
    /// error: counted in [`Stats::stale_served`](crate::Stats::stale_served), and marked in
    /// [`Groupcache::get_with_freshness`]. The trade: an outage of the source shows as old data
    /// rather than as errors, and expired entries stay in memory (within the budget) for
    /// `max_stale`.
    pub fn max_stale(mut self, max_stale: Duration) -> Self {
        self.config.max_stale = max_stale;
        self
    }

    /// At most `loads` loader calls at once for this group on this replica (default
    /// [`DEFAULT_MAX_CONCURRENT_LOADS`](crate::DEFAULT_MAX_CONCURRENT_LOADS)): the rest wait their turn, none is refused. A
    /// [`load_many`](Loader::load_many) is one call. Zero is taken as one. A loader that gets
    /// other keys of its own group holds its turn while it waits for them: keep such nesting
    /// shallower than the limit.
    pub fn max_concurrent_loads(mut self, loads: usize) -> Self {
        self.config.max_concurrent_loads = loads.max(1);
        self
    }

    /// A circuit breaker on the loader (default off): after `failures` failed loads in a row
    /// (errors and panics; negative answers are no failure), loads fail at once with
    /// [`Error::CircuitOpen`] (or serve stale values, [`max_stale`](Self::max_stale)) for
    /// `open_for`; then one load is let through as a probe, which closes the circuit if it
    /// succeeds and opens it again if not. Its state is the gauge
    /// `groupcache_loader_circuit_open`. Off by default because a loader's errors for a few bad
    /// keys look like a failing source to it: turn it on where errors mean the source is down.
    pub fn circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.config.breaker = (failures > 0).then_some((failures, open_for));
        self
    }

    /// Builds the group on `cluster` and registers it with the cluster's router.
    fn build_on(self, cluster: Cluster) -> Result<Groupcache<L>, Error> {
        if self.group.is_empty() {
            return Err(Error::Config("the group name is empty".into()));
        }
        let budget = Arc::new(self.budget());
        let metrics = Metrics::new(&self.group);
        let shared = &cluster.inner;
        let inner = Arc::new_cyclic(|this| Inner {
            this: this.clone(),
            source: super::source::Source::new(
                self.config.max_concurrent_loads,
                self.config.breaker,
            ),
            refreshing: Default::default(),
            main: Cache::sharing(Arc::clone(&budget), Side::Main)
                .publish_to(metrics.main.bytes.clone(), metrics.main.items.clone()),
            hot: Cache::sharing(Arc::clone(&budget), Side::Hot)
                .publish_to(metrics.hot.bytes.clone(), metrics.hot.items.clone()),
            budget,
            popularity: Popularity::new(self.popularity_window),
            loads: Flight::new(),
            fetches: Flight::new(),
            path: crate::wire::protocol::group_segment(&self.group),
            group: self.group.clone(),
            loader: self.loader,
            metrics,
            coalescing: Default::default(),
            recent_writes: crate::handoff::RecentWrites::new(shared.config.hot_max_age),
            repairs: Default::default(),
            ring_walk: Default::default(),
            config: self.config,
            cluster: Arc::clone(shared),
            #[cfg(test)]
            pause: Default::default(),
        });
        // Stale on error needs expired entries kept that long.
        let keep_expired = super::journey::nanos(inner.config.max_stale);
        inner.main.keep_expired(keep_expired);
        inner.hot.keep_expired(keep_expired);
        let id = shared.groups.add(&self.group, inner.clone())?;
        Ok(Groupcache {
            inner,
            registration: Arc::new(Registration {
                cluster,
                name: self.group,
                id,
            }),
        })
    }
}

impl<L: Loader> Builder<L, Cluster> {
    /// Builds the group and starts serving it to peers through the cluster's router. Fails with
    /// [`Error::Config`] if the cluster has a group of this name already. Its metrics are
    /// registered with the `metrics` recorder installed now.
    pub fn build(self) -> Result<Groupcache<L>, Error> {
        let cluster = self.cluster.clone();
        self.build_on(cluster)
    }
}

/// The cluster's settings on a group that has a cluster of its own: each is
/// [`ClusterBuilder`]'s.
macro_rules! cluster_settings {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {
        impl<L: Loader> Builder<L, ClusterBuilder> {
            $(
                $(#[$doc])*
                pub fn $name(mut self, $($arg: $ty),*) -> Self {
                    self.cluster = self.cluster.$name($($arg),*);
                    self
                }
            )*

            /// Builds the group and its cluster. Its metrics are registered with the `metrics`
            /// recorder installed now.
            pub fn build(self) -> Result<Groupcache<L>, Error> {
                let cluster = self.cluster.build()?;
                let Builder { cluster: _, group, loader, config, cache_bytes, main_cache_bytes, hot_cache_bytes, popularity_window } = self;
                Builder { group, loader, config, cache_bytes, main_cache_bytes, hot_cache_bytes, popularity_window, cluster: () }.build_on(cluster)
            }
        }
    };
}

cluster_settings! {
    /// [`ClusterBuilder::ring_mode`].
    ring_mode(mode: RingMode);
    /// [`ClusterBuilder::peer_timeout`].
    peer_timeout(timeout: Duration);
    /// [`ClusterBuilder::connect_timeout`].
    connect_timeout(timeout: Duration);
    /// [`ClusterBuilder::max_value_bytes`].
    max_value_bytes(bytes: usize);
    /// [`ClusterBuilder::hot_max_age`]: the staleness bound.
    hot_max_age(age: Duration);
    /// [`ClusterBuilder::owner_suspicion`].
    owner_suspicion(duration: Duration);
    /// [`ClusterBuilder::failure_detection`].
    failure_detection(silence: Duration);
    /// [`ClusterBuilder::handoff_timeout`]: the warm hand-off.
    handoff_timeout(timeout: Duration);
    /// [`ClusterBuilder::max_concurrent_peer_requests`].
    max_concurrent_peer_requests(requests: usize);
    /// [`ClusterBuilder::peer_admission_wait`].
    peer_admission_wait(wait: Duration);
    /// [`ClusterBuilder::max_buffered_peer_bytes`].
    max_buffered_peer_bytes(bytes: usize);
    /// [`ClusterBuilder::max_batch_keys`].
    max_batch_keys(keys: usize);
    /// [`ClusterBuilder::max_batch_bytes`].
    max_batch_bytes(bytes: usize);
    /// [`ClusterBuilder::max_batch_answer_bytes`].
    max_batch_answer_bytes(bytes: usize);
    /// [`ClusterBuilder::peer_auth`].
    peer_auth(auth: PeerAuth);
}

impl<L: Loader> Builder<L, ClusterBuilder> {
    /// [`ClusterBuilder::base_path`].
    pub fn base_path(mut self, path: impl Into<String>) -> Self {
        self.cluster = self.cluster.base_path(path);
        self
    }

    /// [`ClusterBuilder::peer_tls`].
    #[cfg(feature = "tls")]
    pub fn peer_tls(mut self, tls: crate::PeerTls) -> Self {
        self.cluster = self.cluster.peer_tls(tls);
        self
    }

    /// [`ClusterBuilder::trace_context`].
    pub fn trace_context(mut self, context: impl crate::TraceContext) -> Self {
        self.cluster = self.cluster.trace_context(context);
        self
    }
}
