//! The settings a group's read path consults, apart from the builder that sets them (as tokio
//! keeps `config.rs` beside `builder.rs`). The cluster's own settings, shared by its groups, are
//! in `cluster/config.rs`.

use std::time::Duration;

/// Default [`Builder::not_found_ttl`](crate::Builder::not_found_ttl): 5 s, short enough that a
/// row inserted after a miss is seen soon, long enough that a storm of requests for missing ids
/// costs the source one query per key every 5 s.
pub const DEFAULT_NOT_FOUND_TTL: Duration = Duration::from_secs(5);

/// Default [`Builder::max_concurrent_loads`](crate::Builder::max_concurrent_loads): 1024 loader
/// calls at once per group on a replica; the rest queue. As many as the peer port serves at once
/// (`max_concurrent_peer_requests`): a lower default made peers' requests, admitted by the
/// router, wait for a turn while holding its slots, so a storm of cold keys from one replica
/// (the hardening tests' 10,000) was shed with 503s and loaded again by the askers. Set it to
/// what the source serves at once (a database pool's size).
pub const DEFAULT_MAX_CONCURRENT_LOADS: usize = 1024;

/// Settings of one group.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_key_bytes: usize,
    pub(crate) hot_promotion_requests: u32,
    /// TinyLFU admission on both caches.
    pub(crate) admission: bool,
    pub(crate) coalesce_in_flight: usize,
    /// Fetches hedged to the key's successor when the owner stalls (`hedge.rs`).
    pub(crate) hedge: bool,
    /// How long a negative answer is kept (`Builder::not_found_ttl`); zero keeps none.
    pub(crate) not_found_ttl: Duration,
    /// How long a failed load's error is kept on the owner (`Builder::cache_errors`); zero keeps
    /// none.
    pub(crate) error_ttl: Duration,
    /// The refresh time of values loaded without one (`Builder::refresh_after`).
    pub(crate) refresh_after: Option<Duration>,
    /// How long after its expiry a value may still be served when its load fails
    /// (`Builder::max_stale`); zero serves none.
    pub(crate) max_stale: Duration,
    /// Loader calls at once (`Builder::max_concurrent_loads`).
    pub(crate) max_concurrent_loads: usize,
    /// Failures in a row that open the loader's circuit, and for how long
    /// (`Builder::circuit_breaker`); `None`: no breaker.
    pub(crate) breaker: Option<(u32, Duration)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_key_bytes: 4096,
            hot_promotion_requests: 2,
            admission: false,
            coalesce_in_flight: 0,
            hedge: false,
            not_found_ttl: DEFAULT_NOT_FOUND_TTL,
            error_ttl: Duration::ZERO,
            refresh_after: None,
            max_stale: Duration::ZERO,
            max_concurrent_loads: DEFAULT_MAX_CONCURRENT_LOADS,
            breaker: None,
        }
    }
}
