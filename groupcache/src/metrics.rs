//! Counters modelled on golang/groupcache's `Stats`, published twice: as [`Stats`] (read in
//! process, e.g. by the demo that runs three replicas in one process) and through the `metrics`
//! facade, labelled with the group, for whatever exporter the application installs.
//!
//! Handles are registered when the [`Cluster`](crate::Cluster) and each
//! [`Groupcache`](crate::Groupcache) are built, so install the exporter (the global recorder)
//! before building them. A group's metrics are labelled with its name; the replica's
//! ([`ClusterMetrics`]) are not, so they are not repeated per group.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Unit};

/// A snapshot of one replica's counters for one group.
///
/// The field meanings follow golang/groupcache's `Stats`. The fields about peers as a whole
/// (`peer_auth_failures`, `peer_auth_replays`, `auth_nonces`, `peer_suspicions`,
/// `peer_requests_waiting`, `peer_requests_shed`) are the
/// replica's, shared by every group of its [`Cluster`](crate::Cluster).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Every `get`, local or from a peer.
    pub gets: u64,
    /// Gets answered by the main cache.
    pub main_hits: u64,
    /// Gets answered by the hot cache.
    pub hot_hits: u64,
    /// Gets that missed both caches (`gets - main_hits - hot_hits`).
    pub loads: u64,
    /// Loads that did the work themselves rather than waiting for one already in flight.
    pub loads_deduped: u64,
    /// Values fetched from their owner.
    pub peer_loads: u64,
    /// Failed requests to the owner (each followed by a local load).
    pub peer_errors: u64,
    /// Runs of this replica's loader that succeeded.
    pub local_loads: u64,
    /// Runs of this replica's loader that failed or panicked.
    pub local_load_errors: u64,
    /// Requests served to peers by the router.
    pub server_requests: u64,
    /// Peer requests refused for a missing, bad, stale or replayed signature (or a body that
    /// does not match it).
    pub peer_auth_failures: u64,
    /// Of those, replays of a request already accepted.
    pub peer_auth_replays: u64,
    /// Accepted nonces remembered now, to refuse their replays (see
    /// [`PeerAuth::max_remembered_nonces`](crate::PeerAuth::max_remembered_nonces)).
    pub auth_nonces: u64,
    /// Owners suspected down after a connect failure or timeout (their keys then go to their
    /// successor on the ring for a while).
    pub peer_suspicions: u64,
    /// Peer requests that waited for one of the replica's
    /// [`max_concurrent_peer_requests`](crate::ClusterBuilder::max_concurrent_peer_requests)
    /// slots now ([`peer_admission_wait`](crate::ClusterBuilder::peer_admission_wait)).
    pub peer_requests_waiting: u64,
    /// Peer requests refused (503) for want of a slot, after waiting or with too many waiting.
    pub peer_requests_shed: u64,
    /// Values fetched from a suspected owner's successor instead, or from the successor a hedge
    /// asked.
    pub successor_loads: u64,
    /// Fetches hedged: the owner answered nothing for longer than its answers usually take, and
    /// the key's successor was asked too ([`Builder::hedge_fetches`](crate::Builder::hedge_fetches)).
    pub hedges: u64,
    /// Hedged fetches the successor answered first.
    pub hedge_wins: u64,
    /// Misses of a key this replica just became the owner of, answered by the previous owner's
    /// copy (a warm hand-off) instead of the loader.
    pub handoff_hits: u64,
    /// Hand-off peeks that found nothing (or failed, or timed out), followed by a load.
    pub handoff_misses: u64,
    /// The budget the main and the hot cache share ([`Builder::cache_bytes`](crate::Builder::cache_bytes)).
    pub cache_bytes: u64,
    /// The main cache's target share of `cache_bytes` now: it moves with the main cache's ghost
    /// hits and the hot cache's. Either cache may hold more while the other leaves room free.
    pub main_target_bytes: u64,
    /// The hot cache's target share: `cache_bytes - main_target_bytes`.
    pub hot_target_bytes: u64,
    /// Keys loaded again soon after the main cache evicted them: a larger main cache would have
    /// hit. Each moves the split toward main.
    pub main_ghost_hits: u64,
    /// Keys promoted again soon after the hot cache evicted them; each moves the split toward hot.
    pub hot_ghost_hits: u64,
    /// Bytes charged to the main cache now.
    pub main_bytes: u64,
    /// Entries in the main cache now.
    pub main_items: u64,
    /// Bytes charged to the hot cache now.
    pub hot_bytes: u64,
    /// Entries in the hot cache now.
    pub hot_items: u64,
    /// Removes sent again, and answered, to members that had missed a `remove` or `set` (see
    /// [`Groupcache::remove`](crate::Groupcache::remove)).
    pub write_repairs: u64,
    /// Missed writes not repaired because too many were waiting already.
    pub write_repairs_dropped: u64,
    /// Missed writes waiting now for their members to answer.
    pub write_repairs_pending: u64,
    /// Removes (of a `remove` or `set`) that replicas which left the ring did not answer, sent
    /// in the background because they had not answered lately either.
    pub departed_write_failures: u64,
    /// Runs of this replica's loader that said the key does not exist (negative answers, kept
    /// for [`not_found_ttl`](crate::Builder::not_found_ttl)); also counted in `local_loads`.
    pub not_found_loads: u64,
    /// Refreshes ahead started by this replica's gets (on the owner: loads; elsewhere: requests
    /// to the owner for the refreshed value).
    pub refreshes: u64,
    /// Gets answered with a value past its expiry because its load failed
    /// ([`max_stale`](crate::Builder::max_stale)).
    pub stale_served: u64,
    /// Loads that waited for one of the group's
    /// [`max_concurrent_loads`](crate::Builder::max_concurrent_loads) turns now.
    pub loads_waiting: u64,
    /// Loads not tried because the loader's circuit was open
    /// ([`circuit_breaker`](crate::Builder::circuit_breaker)).
    pub loads_short_circuited: u64,
    /// Whether the loader's circuit is open now (1) or closed (0).
    pub circuit_open: u64,
    /// Purges of the group this replica applied, its own or its peers'.
    pub purges: u64,
}

/// A counter kept both as an atomic (for [`Stats`]) and as a `metrics` handle.
struct Count {
    total: AtomicU64,
    counter: Counter,
}

impl Count {
    fn new(name: &'static str, labels: &[(&'static str, String)]) -> Self {
        Count {
            total: AtomicU64::new(0),
            counter: metrics::counter!(name, labels),
        }
    }

    fn inc(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.counter.increment(1);
    }

    fn get(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Gauges and eviction counter of one cache. The cache itself sets the gauges, under its lock
/// (see [`Cache::publish_to`](crate::caches::Cache::publish_to)).
pub(crate) struct CacheMetrics {
    pub(crate) bytes: Gauge,
    pub(crate) items: Gauge,
    evictions: Counter,
}

impl CacheMetrics {
    fn new(group: &str, cache: &'static str) -> Self {
        let labels = [("group", group.to_owned()), ("cache", cache.to_owned())];
        CacheMetrics {
            bytes: metrics::gauge!("groupcache_cache_bytes", &labels),
            items: metrics::gauge!("groupcache_cache_items", &labels),
            evictions: metrics::counter!("groupcache_cache_evictions_total", &labels),
        }
    }

    /// Counts entries evicted by an insert.
    pub(crate) fn evicted(&self, evicted: u64) {
        if evicted > 0 {
            self.evictions.increment(evicted);
        }
    }
}

/// Every metric of one group on one replica.
pub(crate) struct Metrics {
    group: String,
    gets: Count,
    main_hits: Count,
    hot_hits: Count,
    loads: Count,
    loads_deduped: Count,
    peer_loads: Count,
    peer_errors: Count,
    local_loads: Count,
    local_load_errors: Count,
    server_requests: Count,
    successor_loads: Count,
    hedges: Count,
    hedge_wins: Count,
    handoff_hits: Count,
    handoff_misses: Count,
    write_repairs: Count,
    write_repairs_dropped: Count,
    write_repairs_pending: Gauge,
    write_repairs_pending_now: AtomicU64,
    departed_write_failures: Count,
    not_found_loads: Count,
    refreshes: Count,
    stale_served: Count,
    loads_short_circuited: Count,
    purges: Count,
    loads_waiting: Gauge,
    loads_waiting_now: AtomicU64,
    circuit_open: Gauge,
    circuit_open_now: AtomicU64,
    pub(crate) main: CacheMetrics,
    pub(crate) hot: CacheMetrics,
    pub(crate) load_duration: Histogram,
    pub(crate) peer_request_duration: Histogram,
}

impl Metrics {
    /// The metrics of `group`.
    pub(crate) fn new(group: &str) -> Self {
        describe();
        let labels = [("group", group.to_owned())];
        let main_labels = [("group", group.to_owned()), ("cache", "main".to_owned())];
        let hot_labels = [("group", group.to_owned()), ("cache", "hot".to_owned())];
        Metrics {
            group: group.to_owned(),
            gets: Count::new("groupcache_gets_total", &labels),
            main_hits: Count::new("groupcache_cache_hits_total", &main_labels),
            hot_hits: Count::new("groupcache_cache_hits_total", &hot_labels),
            loads: Count::new("groupcache_loads_total", &labels),
            loads_deduped: Count::new("groupcache_loads_deduped_total", &labels),
            peer_loads: Count::new("groupcache_peer_loads_total", &labels),
            peer_errors: Count::new("groupcache_peer_errors_total", &labels),
            local_loads: Count::new("groupcache_local_loads_total", &labels),
            local_load_errors: Count::new("groupcache_local_load_errors_total", &labels),
            server_requests: Count::new("groupcache_server_requests_total", &labels),
            successor_loads: Count::new("groupcache_successor_loads_total", &labels),
            hedges: Count::new("groupcache_hedges_total", &labels),
            hedge_wins: Count::new("groupcache_hedge_wins_total", &labels),
            handoff_hits: Count::new("groupcache_handoff_hits_total", &labels),
            handoff_misses: Count::new("groupcache_handoff_misses_total", &labels),
            write_repairs: Count::new("groupcache_write_repairs_total", &labels),
            write_repairs_dropped: Count::new("groupcache_write_repairs_dropped_total", &labels),
            write_repairs_pending: metrics::gauge!("groupcache_write_repairs_pending", &labels),
            write_repairs_pending_now: AtomicU64::new(0),
            departed_write_failures: Count::new(
                "groupcache_departed_write_failures_total",
                &labels,
            ),
            not_found_loads: Count::new("groupcache_not_found_loads_total", &labels),
            refreshes: Count::new("groupcache_refreshes_total", &labels),
            stale_served: Count::new("groupcache_stale_served_total", &labels),
            loads_short_circuited: Count::new("groupcache_loads_short_circuited_total", &labels),
            purges: Count::new("groupcache_purges_total", &labels),
            loads_waiting: metrics::gauge!("groupcache_loads_waiting", &labels),
            loads_waiting_now: AtomicU64::new(0),
            circuit_open: metrics::gauge!("groupcache_loader_circuit_open", &labels),
            circuit_open_now: AtomicU64::new(0),
            main: CacheMetrics::new(group, "main"),
            hot: CacheMetrics::new(group, "hot"),
            load_duration: metrics::histogram!("groupcache_load_duration_seconds", &labels),
            peer_request_duration: metrics::histogram!(
                "groupcache_peer_request_duration_seconds",
                &labels
            ),
        }
    }

    pub(crate) fn get(&self) {
        self.gets.inc();
    }
    pub(crate) fn main_hit(&self) {
        self.main_hits.inc();
    }
    pub(crate) fn hot_hit(&self) {
        self.hot_hits.inc();
    }
    pub(crate) fn load(&self) {
        self.loads.inc();
    }
    pub(crate) fn load_deduped(&self) {
        self.loads_deduped.inc();
    }
    pub(crate) fn peer_load(&self) {
        self.peer_loads.inc();
    }
    pub(crate) fn peer_error(&self) {
        self.peer_errors.inc();
    }
    pub(crate) fn local_load(&self) {
        self.local_loads.inc();
    }
    pub(crate) fn local_load_error(&self) {
        self.local_load_errors.inc();
    }
    pub(crate) fn server_request(&self) {
        self.server_requests.inc();
    }

    pub(crate) fn successor_load(&self) {
        self.successor_loads.inc();
    }

    pub(crate) fn hedge(&self) {
        self.hedges.inc();
    }

    pub(crate) fn hedge_won(&self) {
        self.hedge_wins.inc();
    }

    pub(crate) fn handoff(&self, hit: bool) {
        if hit {
            self.handoff_hits.inc();
        } else {
            self.handoff_misses.inc();
        }
    }

    pub(crate) fn write_repair(&self) {
        self.write_repairs.inc();
    }

    pub(crate) fn departed_write_failure(&self) {
        self.departed_write_failures.inc();
    }

    pub(crate) fn write_repair_dropped(&self) {
        self.write_repairs_dropped.inc();
    }

    pub(crate) fn write_repairs_pending(&self, pending: usize) {
        self.write_repairs_pending_now
            .store(pending as u64, Ordering::Relaxed);
        self.write_repairs_pending.set(pending as f64);
    }

    /// The group these metrics are labelled with, for logs.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    pub(crate) fn not_found_load(&self) {
        self.not_found_loads.inc();
    }

    pub(crate) fn refresh(&self) {
        self.refreshes.inc();
    }

    pub(crate) fn stale_served(&self) {
        self.stale_served.inc();
    }

    pub(crate) fn load_short_circuited(&self) {
        self.loads_short_circuited.inc();
    }

    pub(crate) fn purge(&self) {
        self.purges.inc();
    }

    /// Loads waiting for a turn now: `by` more (or fewer, negative).
    pub(crate) fn loads_waiting(&self, by: i64) {
        let now = if by >= 0 {
            self.loads_waiting_now
                .fetch_add(by as u64, Ordering::Relaxed)
                + by as u64
        } else {
            self.loads_waiting_now
                .fetch_sub(by.unsigned_abs(), Ordering::Relaxed)
                .saturating_sub(by.unsigned_abs())
        };
        self.loads_waiting.set(now as f64);
    }

    pub(crate) fn circuit_open(&self, open: bool) {
        self.circuit_open_now
            .store(u64::from(open), Ordering::Relaxed);
        self.circuit_open.set(f64::from(u8::from(open)));
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            gets: self.gets.get(),
            main_hits: self.main_hits.get(),
            hot_hits: self.hot_hits.get(),
            loads: self.loads.get(),
            loads_deduped: self.loads_deduped.get(),
            peer_loads: self.peer_loads.get(),
            peer_errors: self.peer_errors.get(),
            local_loads: self.local_loads.get(),
            local_load_errors: self.local_load_errors.get(),
            server_requests: self.server_requests.get(),
            successor_loads: self.successor_loads.get(),
            hedges: self.hedges.get(),
            hedge_wins: self.hedge_wins.get(),
            handoff_hits: self.handoff_hits.get(),
            handoff_misses: self.handoff_misses.get(),
            write_repairs: self.write_repairs.get(),
            write_repairs_dropped: self.write_repairs_dropped.get(),
            write_repairs_pending: self.write_repairs_pending_now.load(Ordering::Relaxed),
            departed_write_failures: self.departed_write_failures.get(),
            not_found_loads: self.not_found_loads.get(),
            refreshes: self.refreshes.get(),
            stale_served: self.stale_served.get(),
            loads_waiting: self.loads_waiting_now.load(Ordering::Relaxed),
            loads_short_circuited: self.loads_short_circuited.get(),
            circuit_open: self.circuit_open_now.load(Ordering::Relaxed),
            purges: self.purges.get(),
            ..Stats::default()
        }
    }
}

/// The metrics of the replica as a whole, whatever the group: labelled without a group, so
/// they are not repeated per group.
pub(crate) struct ClusterMetrics {
    /// By the refusal's reason.
    peer_auth_failures: Vec<(&'static str, Count)>,
    auth_nonces: Gauge,
    auth_nonces_now: AtomicU64,
    peer_suspicions: Count,
    pub(crate) peers: Gauge,
    peer_requests_shed: Count,
    peer_requests_waiting: Gauge,
}

impl ClusterMetrics {
    /// The replica's metrics, with a series of `groupcache_peer_auth_failures_total` for each of
    /// the `refusals` (reasons).
    pub(crate) fn new(refusals: &[&'static str]) -> Self {
        describe();
        ClusterMetrics {
            peer_auth_failures: refusals
                .iter()
                .map(|&reason| {
                    let labels = [("reason", reason.to_owned())];
                    let count = Count::new("groupcache_peer_auth_failures_total", &labels);
                    (reason, count)
                })
                .collect(),
            auth_nonces: metrics::gauge!("groupcache_auth_nonces"),
            auth_nonces_now: AtomicU64::new(0),
            peer_suspicions: Count::new("groupcache_peer_suspicions_total", &[]),
            peers: metrics::gauge!("groupcache_peers"),
            peer_requests_shed: Count::new("groupcache_peer_requests_shed_total", &[]),
            peer_requests_waiting: metrics::gauge!("groupcache_peer_requests_waiting"),
        }
    }

    /// A peer request refused for want of a slot.
    pub(crate) fn peer_request_shed(&self) {
        self.peer_requests_shed.inc();
    }

    /// One more (`1.0`) or one fewer (`-1.0`) peer request waiting for a slot.
    pub(crate) fn peer_requests_waiting(&self, change: f64) {
        self.peer_requests_waiting.increment(change);
    }

    pub(crate) fn peer_auth_failure(&self, reason: &'static str) {
        if let Some((_, count)) = self.peer_auth_failures.iter().find(|(r, _)| *r == reason) {
            count.inc();
        }
    }

    pub(crate) fn auth_nonces(&self, remembered: usize) {
        self.auth_nonces_now
            .store(remembered as u64, Ordering::Relaxed);
        self.auth_nonces.set(remembered as f64);
    }

    pub(crate) fn peer_suspicion(&self) {
        self.peer_suspicions.inc();
    }

    /// The replica-wide fields of [`Stats`] filled in.
    pub(crate) fn fill(&self, stats: Stats) -> Stats {
        Stats {
            peer_auth_failures: self.peer_auth_failures.iter().map(|(_, c)| c.get()).sum(),
            peer_auth_replays: self
                .peer_auth_failures
                .iter()
                .filter(|(reason, _)| *reason == "replayed")
                .map(|(_, c)| c.get())
                .sum(),
            auth_nonces: self.auth_nonces_now.load(Ordering::Relaxed),
            peer_suspicions: self.peer_suspicions.get(),
            peer_requests_shed: self.peer_requests_shed.get(),
            ..stats
        }
    }
}

/// HELP lines for the exporter (promtool warns on metrics without them).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("groupcache_gets_total", "Gets, local or from peers.");
    describe_counter!(
        "groupcache_not_found_loads_total",
        "Loads whose loader said the key does not exist (negative answers)."
    );
    describe_counter!(
        "groupcache_refreshes_total",
        "Refreshes ahead started by this replica's gets."
    );
    describe_counter!(
        "groupcache_stale_served_total",
        "Gets answered with a value past its expiry because its load failed."
    );
    describe_counter!(
        "groupcache_loads_short_circuited_total",
        "Loads not tried because the loader's circuit breaker was open."
    );
    describe_counter!(
        "groupcache_purges_total",
        "Purges of the group applied by this replica."
    );
    describe_gauge!(
        "groupcache_loads_waiting",
        "Loads waiting for a turn under max_concurrent_loads."
    );
    describe_gauge!(
        "groupcache_loader_circuit_open",
        "1 while the loader's circuit breaker is open, 0 while closed."
    );
    describe_counter!("groupcache_cache_hits_total", "Gets answered by a cache.");
    describe_counter!("groupcache_loads_total", "Gets that missed both caches.");
    describe_counter!(
        "groupcache_loads_deduped_total",
        "Loads that did the work rather than wait for one in flight."
    );
    describe_counter!(
        "groupcache_peer_loads_total",
        "Values fetched from their owner."
    );
    describe_counter!(
        "groupcache_peer_errors_total",
        "Failed requests to a key's owner."
    );
    describe_counter!(
        "groupcache_local_loads_total",
        "Successful runs of the loader."
    );
    describe_counter!(
        "groupcache_local_load_errors_total",
        "Failed runs of the loader."
    );
    describe_counter!(
        "groupcache_server_requests_total",
        "Requests served to peers."
    );
    describe_counter!(
        "groupcache_peer_auth_failures_total",
        "Peer requests refused for a missing, bad, stale or replayed signature, by reason."
    );
    describe_gauge!(
        "groupcache_auth_nonces",
        "Accepted nonces remembered to refuse their replays."
    );
    describe_counter!(
        "groupcache_peer_requests_shed_total",
        "Peer requests refused (503) for want of a concurrency slot."
    );
    describe_gauge!(
        "groupcache_peer_requests_waiting",
        "Peer requests waiting for a concurrency slot."
    );
    describe_counter!(
        "groupcache_peer_suspicions_total",
        "Owners suspected down after a connect failure or timeout."
    );
    describe_counter!(
        "groupcache_successor_loads_total",
        "Values fetched from a suspected owner's successor."
    );
    describe_counter!(
        "groupcache_hedges_total",
        "Fetches also asked of the key's successor because the owner stalled."
    );
    describe_counter!(
        "groupcache_hedge_wins_total",
        "Hedged fetches the successor answered first."
    );
    describe_counter!(
        "groupcache_handoff_hits_total",
        "Misses of a newly owned key answered by the previous owner's copy."
    );
    describe_counter!(
        "groupcache_handoff_misses_total",
        "Hand-off peeks that found nothing, followed by a load."
    );
    describe_counter!(
        "groupcache_write_repairs_total",
        "Removes sent again, and answered, to members that had missed a write."
    );
    describe_counter!(
        "groupcache_write_repairs_dropped_total",
        "Missed writes not repaired because too many were waiting."
    );
    describe_counter!(
        "groupcache_departed_write_failures_total",
        "Removes that replicas which left the ring did not answer, sent in the background."
    );
    describe_gauge!(
        "groupcache_write_repairs_pending",
        "Missed writes waiting for their members to answer."
    );
    describe_counter!(
        "groupcache_cache_evictions_total",
        "Entries evicted to fit the budget."
    );
    describe_gauge!(
        "groupcache_cache_bytes",
        Unit::Bytes,
        "Bytes charged to a cache."
    );
    describe_gauge!("groupcache_cache_items", "Entries in a cache.");
    describe_gauge!(
        "groupcache_peers",
        "Replicas in the ring, this one included."
    );
    describe_histogram!(
        "groupcache_load_duration_seconds",
        Unit::Seconds,
        "Time the loader took."
    );
    describe_histogram!(
        "groupcache_peer_request_duration_seconds",
        Unit::Seconds,
        "Time a request to a peer took."
    );
}
