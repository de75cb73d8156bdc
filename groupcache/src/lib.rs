//! A distributed, self-filling cache shared by the replicas of a Rust service, compatible with
//! golang/groupcache.
//!
//! `get(key)` on any replica returns the value. On a miss exactly one replica in the cluster, the
//! key's owner on a consistent hash ring, runs your [`Loader`]; every other caller, local or on
//! another replica, waits for that one load. A main cache holds the keys this replica owns, a hot
//! cache holds popular keys owned by others. Replicas talk HTTP through [`Groupcache::router`],
//! which you nest into your axum app, and learn about each other through
//! [`Groupcache::set_peers`] (or [`add_peer`](Groupcache::add_peer) /
//! [`remove_peer`](Groupcache::remove_peer)) from your service discovery.
//!
//! ```no_run
//! use groupcache_rs::{Groupcache, Loaded, Loader};
//!
//! struct Db;
//!
//! impl Loader for Db {
//!     type Value = String;
//!     type Error = std::io::Error;
//!
//!     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
//!         Ok(Loaded::new(format!("row for {key}"))) // the expensive call goes here
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Groupcache::builder("rows", "http://10.0.0.1:8080", Db).build()?;
//! cache.set_peers(["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"])?;
//!
//! let app = axum::Router::new().merge(cache.router());
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! let row: String = cache.get("42").await?;
//! # Ok(()) }
//! ```
//!
//! Several groups (profiles, thumbnails, pages), each with its own loader, value type and budget,
//! share one [`Cluster`]: one peer list, ring, connection pool and router per replica.
//! `Groupcache::builder` is a cluster of one group; see [`Cluster`] for many.
//!
//! # A key's journey
//!
//! [`Groupcache::get`] (`group/journey.rs`, `Inner::get`, read top to bottom) looks in the main
//! cache, then the hot cache. On a miss it asks the cluster's ring (`cluster/membership.rs`,
//! `cluster/ring.rs`) for the owner. If that is this replica, or the request came from a peer
//! (peers' requests are never forwarded again), it joins the key's *load* flight, which runs the
//! loader once and fills the main cache. Otherwise it joins the key's *fetch* flight, which asks
//! the owner over HTTP (`wire/client.rs`), keeps the value in the hot cache if this replica asks
//! for the key often (`popularity.rs`); if the owner cannot be reached it is suspected for a
//! while and the key's successor on the ring is asked instead (loading locally only if that fails
//! too). Membership changes and the staleness bound they keep are in the README's "Membership
//! changes". Flights (`flight.rs`) run in tasks of their own, so cancelled callers and panicking
//! loaders harm no one.
//!
//! # Modules
//!
//! - `cluster/`: the [`Cluster`] handle, its settings, the groups it serves by name, the
//!   membership and the ring;
//! - `group/`: the [`Groupcache`] handle of one group and its settings; `journey` (one key's get),
//!   `many` ([`Groupcache::get_many`]), `coalesce` and `led` (fetches gathered into batches),
//!   `writes` and `repairs` (`remove`, `set`), `served` (what a group answers its peers);
//! - storage, which never reaches up into a group or the cluster: `flight`, `popularity`,
//!   `caches`, `segments`, `budget`, `prehashed`; `handoff`: whether a new owner's miss peeks the
//!   previous owner first;
//! - `wire/`: golang/groupcache's HTTP protocol (`protocol`), the batch format, the client, the
//!   connection pool, the router, the peer port's limits, the server, peer authentication, the
//!   nonce store and TLS;
//! - `loader`, `error`, `metrics`: the loader trait and value codecs, typed errors, and the
//!   metrics.

mod budget;
mod caches;
mod cluster;
mod error;
mod flight;
mod group;
mod handoff;
mod keyed;
mod loader;
mod metrics;
mod popularity;
mod prehashed;
mod segments;
pub mod trace;
mod wire;

pub use cluster::Cluster;
pub use cluster::builder::ClusterBuilder;
pub use cluster::config::{DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_KEYS};
pub use cluster::ring::RingMode;
pub use error::{Error, PeerError};
pub use group::Freshness;
pub use group::Groupcache;
pub use group::builder::{
    Builder, DEFAULT_CACHE_BYTES, DEFAULT_HOT_CACHE_BYTES, DEFAULT_MAIN_CACHE_BYTES,
};
pub use group::config::{DEFAULT_MAX_CONCURRENT_LOADS, DEFAULT_NOT_FOUND_TTL};
pub use loader::{CodecError, Json, LOAD_MANY_CONCURRENCY, Loaded, Loader, Results, Value};
pub use metrics::Stats;
pub use trace::TraceContext;
#[cfg(feature = "opentelemetry")]
pub use trace::W3cTraceContext;
#[cfg(feature = "tls")]
pub use wire::PeerTls;
pub use wire::{
    DEFAULT_MAX_REMEMBERED_NONCES, MIN_SECRET_BYTES, PeerAuth, SIGNATURE_HEADER, Server,
};

/// Locks `mutex`, poisoned or not. Nothing the library runs under its locks panics, and a panic
/// elsewhere leaves the data they guard consistent: a poisoned lock must not turn every later
/// call into a panic.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
