//! A group: one named cache on this replica, with its own loader, value type and budget, over
//! the [`Cluster`]'s peers. The public handle is here; a key's journey through the caches, the
//! ring, the flights and the wire is in `journey.rs`, read top to bottom from
//! [`Inner::get`](journey::Inner::get).
//!
//! - `journey`: one key's get, from the caches to its owner or the loader;
//! - `many`: many keys at once ([`Groupcache::get_many`]), through the same flights;
//! - `hedge`: a fetch whose owner stalls asked of the key's successor too;
//! - `coalesce`: single fetches to one owner gathered into batches (`led`: what a batch
//!   carries, and the queues where fetches wait);
//! - `store`: who asked for a key, and which cache its value goes to;
//! - `writes`: `remove` and `set` on every replica, and the repairs of those a member missed
//!   (`repairs`, the queue);
//! - `served`: what the group answers its peers, for the cluster's router;
//! - `refresh`: values past their refresh time loaded again in the background, once per key
//!   (`refreshing`, the keys being refreshed); `purge`: every replica's caches emptied;
//!   `source`: the loader's concurrency limit and circuit breaker; `ring_walk`: main's keys
//!   walked after a ring change;
//! - `builder` and `config`: the group's settings.

pub(crate) mod builder;
mod coalesce;
pub(crate) mod config;
mod hedge;
pub(crate) mod journey;
mod led;
mod many;
mod purge;
mod refresh;
mod refreshing;
mod repairs;
mod ring_walk;
mod served;
mod source;
mod store;
mod writes;

use std::sync::Arc;
use std::time::SystemTime;

use journey::Inner;

use crate::cluster::Cluster;

/// Whether [`Groupcache::get_with_freshness`] answered a current value or a stale one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// Within its expiry.
    Fresh,
    /// Past its expiry (by less than [`Builder::max_stale`](crate::Builder::max_stale)),
    /// served because its load failed.
    Stale,
}
use crate::error::Error;
use crate::loader::{Loader, Value};
use crate::metrics::Stats;

/// One group's share of a distributed cache on this replica. Cheap to clone: clones share
/// everything.
///
/// Built on a [`Cluster`] with [`Cluster::group`], or alone with [`Groupcache::builder`] (a
/// cluster of one group). The group is served to peers from its `build` until its last handle
/// (clones and routers from [`router`](Groupcache::router) included) is dropped: then its peers'
/// requests get 404 and its name may be used again.
pub struct Groupcache<L: Loader> {
    pub(crate) inner: Arc<Inner<L>>,
    /// Drops the group from its cluster with the last handle.
    registration: Arc<Registration>,
}

impl<L: Loader> Clone for Groupcache<L> {
    fn clone(&self) -> Self {
        Groupcache {
            inner: self.inner.clone(),
            registration: self.registration.clone(),
        }
    }
}

impl<L: Loader> std::fmt::Debug for Groupcache<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groupcache")
            .field("group", &self.inner.group)
            .field("self_url", &self.inner.cluster.self_url)
            .finish_non_exhaustive()
    }
}

/// A group's place in its cluster's registry, held by every handle: the last one dropped takes
/// the group out, and requests that hold it already finish.
pub(crate) struct Registration {
    cluster: Cluster,
    name: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cluster.inner.groups.remove(&self.name, self.id);
        tracing::debug!(group = %self.name, "group dropped: no longer served to peers");
    }
}

impl<L: Loader> Groupcache<L> {
    /// The value of `key`, from a cache, from its owner, or from the loader.
    ///
    /// Must be called within a tokio runtime: loads run in tasks of their own. Outside one, a
    /// miss fails with [`Error::NoRuntime`].
    ///
    /// A [`Bytes`](bytes::Bytes) value up to 1/16 of a segment (64 KiB with the default
    /// budget), however small, is a view into one of the cache's segments (buffers of up to
    /// 1 MiB that hold many keys and values side by side), and keeps the whole segment alive
    /// while it is held. Handing it to a response is what it is for; to keep a value long after
    /// the cache let it go, copy it (`Bytes::copy_from_slice`).
    //
    // Not an `async fn`: its future would be a second one around the journey's, in another
    // module and so another codegen unit, where the two cannot be merged, and a hit cost 12 %
    // more (BENCHMARKS.md, issue 24). The journey's own future is the whole get.
    #[inline]
    pub fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Future<Output = Result<L::Value, Error>> + Send + 'a {
        self.inner.get_value(key)
    }

    /// [`get`](Self::get), and whether the value is fresh or a stale one served because its
    /// load failed ([`Builder::max_stale`](crate::Builder::max_stale)).
    ///
    /// ```
    /// # use groupcache_rs::{Freshness, Groupcache, Loaded, Loader};
    /// # struct Db;
    /// # impl Loader for Db {
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
    /// #         Ok(Loaded::new(format!("row for {key}")))
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), groupcache_rs::Error> {
    /// let cache = Groupcache::builder("rows", "http://127.0.0.1:8080", Db).build()?;
    /// let (row, freshness) = cache.get_with_freshness("42").await?;
    /// assert_eq!((row.as_str(), freshness), ("row for 42", Freshness::Fresh));
    /// # Ok(()) }
    /// ```
    pub async fn get_with_freshness(&self, key: &str) -> Result<(L::Value, Freshness), Error> {
        let entry = self.inner.get(key, store::Caller::Local).await?;
        let stale = entry.expire != 0 && entry.expire <= crate::loader::now_nanos();
        let freshness = if stale {
            Freshness::Stale
        } else {
            Freshness::Fresh
        };
        Ok((journey::value_of(entry)?, freshness))
    }

    /// Removes `key` everywhere: first on its owner, so no peer can fetch the old value again,
    /// then on every other replica, so no hot copy survives. The next `get` loads it once.
    ///
    /// `Ok` means every member of this replica's ring was reached: no `get` that starts after it
    /// returns, on any replica, answers the value from before the remove (not from a load
    /// already in flight, a hot copy, a batch or a hand-off), so write the source of truth first,
    /// then remove (README, "Writes and freshness"). Every replica is tried; the first that
    /// could not be reached is returned as [`Error::Peer`]. Its hot copy, if any, expires within
    /// [`ClusterBuilder::hot_max_age`](crate::ClusterBuilder::hot_max_age); every member that missed the remove is sent it again in the
    /// background until it answers or leaves the ring, since the key's owner would otherwise
    /// keep its copy. Replicas that left this replica's ring within [`ClusterBuilder::hot_max_age`](crate::ClusterBuilder::hot_max_age)
    /// are sent the remove too, in case they still serve a copy (as the key's former owner, or
    /// through their drain); those that cannot be reached are logged, not returned. [`set`](Groupcache::set)
    /// reaches the same replicas.
    pub async fn remove(&self, key: &str) -> Result<(), Error> {
        self.inner.remove(key).await
    }

    /// Empties the group on every replica: every value loaded or set before the call is gone,
    /// negative answers and cached errors too, and the next get of each key loads it once.
    ///
    /// `Ok` promises what [`remove`](Groupcache::remove)'s does, for every key at once: no
    /// `get` that starts after it, on any replica, answers a value from before it (not from a
    /// load or fetch in flight, a hot copy or a batch). Each replica empties its caches in O(1)
    /// (whatever they hold, the structures are swapped for empty ones), without a pause in
    /// gets. Every member is tried; the first that could not be reached is returned as
    /// [`Error::Peer`], and is sent the purge again in the background until it answers or
    /// leaves the ring (until then it may serve what it held, as after a missed `remove`).
    /// golang/groupcache replicas have no purge: the call fails for them.
    ///
    /// ```
    /// # use groupcache_rs::{Groupcache, Loaded, Loader};
    /// # struct Db;
    /// # impl Loader for Db {
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
    /// #         Ok(Loaded::new(format!("row for {key}")))
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), groupcache_rs::Error> {
    /// let cache = Groupcache::builder("rows", "http://127.0.0.1:8080", Db).build()?;
    /// cache.get("42").await?;
    /// cache.purge().await?;
    /// assert_eq!(cache.stats().main_items, 0);
    /// # Ok(()) }
    /// ```
    pub async fn purge(&self) -> Result<(), Error> {
        self.inner.purge().await
    }

    /// Stores `value` for `key` on its owner, expiring at `expires_at` if given, and drops every
    /// other replica's copy. No loader runs.
    ///
    /// It reaches the same replicas as [`remove`](Groupcache::remove), in the same order (the
    /// owner first, then every other member at once, and the replicas that left the ring
    /// lately), and every one is tried even when the owner fails: the first failure is returned
    /// as [`Error::Peer`]. `Ok` promises what `remove`'s does: no `get` that starts after it, on
    /// any replica, answers a value from before it (README, "Writes and freshness").
    ///
    /// ```
    /// # use groupcache_rs::{Groupcache, Loaded, Loader};
    /// # struct Db;
    /// # impl Loader for Db {
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
    /// #         Ok(Loaded::new(format!("row for {key}")))
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), groupcache_rs::Error> {
    /// use std::time::{Duration, SystemTime};
    ///
    /// let cache = Groupcache::builder("rows", "http://127.0.0.1:8080", Db).build()?;
    /// let in_a_minute = SystemTime::now() + Duration::from_secs(60);
    /// cache.set("42", &"written, not loaded".to_owned(), Some(in_a_minute)).await?;
    /// assert_eq!(cache.get("42").await?, "written, not loaded");
    ///
    /// cache.remove("42").await?;
    /// assert_eq!(cache.get("42").await?, "row for 42"); // loaded again, once
    /// # Ok(()) }
    /// ```
    pub async fn set(
        &self,
        key: &str,
        value: &L::Value,
        expires_at: Option<SystemTime>,
    ) -> Result<(), Error> {
        let value = value.encode().map_err(|e| Error::Codec(Arc::new(e)))?;
        self.inner.set(key, value, expires_at).await
    }

    /// The axum router that serves this group to peers under the base path, with every other
    /// group of its cluster: the [cluster's router](Cluster::router), which also keeps this
    /// group served while it lives. Merge it into your app, or nest it under a prefix and
    /// include that prefix in every peer URL. With several groups, serve one router (any
    /// group's, or the cluster's), not one per group.
    ///
    /// ```
    /// # use groupcache_rs::{Groupcache, Loaded, Loader};
    /// # struct Db;
    /// # impl Loader for Db {
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
    /// #         Ok(Loaded::new(format!("row for {key}")))
    /// #     }
    /// # }
    /// # fn main() -> Result<(), groupcache_rs::Error> {
    /// // Peers list this replica as `http://10.0.0.1:8080/internal`, prefix included.
    /// let cache = Groupcache::builder("rows", "http://10.0.0.1:8080/internal", Db).build()?;
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/healthz", axum::routing::get(|| async { "ok" }))
    ///     .nest("/internal", cache.router());
    /// # Ok(()) }
    /// ```
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        crate::wire::router::router(&self.cluster().inner, Some(self.registration.clone()))
    }

    /// Adds a peer; returns false if it was already a member. Idempotent.
    pub fn add_peer(&self, url: &str) -> Result<bool, Error> {
        self.cluster().add_peer(url)
    }

    /// Removes a peer; returns false if it was not a member. This replica cannot remove itself
    /// this way (see [`leave`](Groupcache::leave)).
    pub fn remove_peer(&self, url: &str) -> Result<bool, Error> {
        self.cluster().remove_peer(url)
    }

    /// Replaces the set of peers (this replica is added if missing, unless it has
    /// [left](Groupcache::leave)); returns whether it changed.
    /// The order matters only in [`RingMode::GoCompatible`](crate::RingMode::GoCompatible), for golang/groupcache's rare hash
    /// collisions: give every replica the same list in the same order.
    pub fn set_peers<I, S>(&self, urls: I) -> Result<bool, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.cluster().set_peers(urls)
    }

    /// Takes this replica out of its own ring for the rest of its life, the first step of a
    /// graceful shutdown: call it on SIGTERM, keep serving through the drain, then exit.
    ///
    /// From then on it owns no key: its own `get`s go to the other members' owners, and its
    /// `remove`s and `set`s reach them. It still answers the peers whose discovery has not
    /// dropped it yet (from its caches, or by loading, as for any peer whose ring disagrees)
    /// and the new owners' hand-off peeks, from what it holds: its entries stay for at most
    /// [`hot_max_age`](crate::ClusterBuilder::hot_max_age), as after any ring change that took keys away.
    /// Peer lists given later (`set_peers`, `add_peer`) keep it out. Alone in its ring, it
    /// stays its only member. Returns whether the ring changed.
    ///
    /// ```
    /// # use groupcache_rs::{Groupcache, Loaded, Loader};
    /// # struct Db;
    /// # impl Loader for Db {
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
    /// #         Ok(Loaded::new(format!("row for {key}")))
    /// #     }
    /// # }
    /// # fn main() -> Result<(), groupcache_rs::Error> {
    /// let (me, other) = ("http://10.0.0.1:8080", "http://10.0.0.2:8080");
    /// let cache = Groupcache::builder("rows", me, Db).build()?;
    /// cache.set_peers([me, other])?;
    /// assert!(cache.leave()); // on SIGTERM
    /// assert_eq!(cache.peers(), [other]);
    /// cache.set_peers([me, other])?; // discovery lags: this replica stays out
    /// assert_eq!(cache.owner("any key"), other);
    /// # Ok(()) }
    /// ```
    pub fn leave(&self) -> bool {
        self.cluster().leave()
    }

    /// The URL of the replica that owns `key` in this replica's ring (possibly this one).
    pub fn owner(&self, key: &str) -> String {
        self.cluster().owner(key)
    }

    /// The current members, this replica included (unless it has [left](Groupcache::leave)).
    pub fn peers(&self) -> Vec<String> {
        self.cluster().peers()
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.group
    }

    /// This replica's URL, as the ring knows it.
    pub fn self_url(&self) -> &str {
        &self.inner.cluster.self_url
    }

    /// The cluster this group is part of: its peers, its ring and its router, shared with the
    /// other groups on it.
    pub fn cluster(&self) -> &Cluster {
        &self.registration.cluster
    }

    /// This replica's counters and cache sizes for this group. The fields about peers as a whole
    /// (`peer_auth_failures`, `peer_auth_replays`, `auth_nonces`, `peer_suspicions`) are the
    /// replica's, the same in every group of its cluster.
    ///
    /// ```
    /// # use groupcache_rs::{Groupcache, Loaded, Loader};
    /// # struct Db;
    /// # impl Loader for Db {
    /// #     type Value = String;
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
    /// #         Ok(Loaded::new(format!("row for {key}")))
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), groupcache_rs::Error> {
    /// let cache = Groupcache::builder("rows", "http://127.0.0.1:8080", Db).build()?;
    /// cache.get("42").await?; // a miss: this replica owns every key, so it loads
    /// cache.get("42").await?; // a main-cache hit
    /// let stats = cache.stats();
    /// assert_eq!((stats.gets, stats.local_loads, stats.main_hits), (2, 1, 1));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        let split = inner.budget.split();
        Stats {
            cache_bytes: split.total,
            main_target_bytes: split.main_target,
            hot_target_bytes: split.hot_target,
            main_ghost_hits: split.main_ghost_hits,
            hot_ghost_hits: split.hot_ghost_hits,
            main_bytes: inner.main.bytes(),
            main_items: inner.main.items(),
            hot_bytes: inner.hot.bytes(),
            hot_items: inner.hot.items(),
            peer_requests_waiting: inner.cluster.limits.waiting() as u64,
            ..inner.cluster.metrics.fill(inner.metrics.snapshot())
        }
    }
}
