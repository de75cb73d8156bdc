//! The engine: the public [`Groupcache`] handle and a key's journey through the caches, the ring,
//! the flights and the wire, read top to bottom in [`Inner::get`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use groupcache_rs_pb::SetRequest;

use crate::builder::{Builder, Config};
use crate::caches::{Cache, Entry};
use crate::error::Error;
use crate::flight::{Flight, Outcome, Superseded};
use crate::loader::{Loaded, Loader, Value, now_nanos, to_unix_nanos};
use crate::membership::{Member, Membership, Peers};
use crate::metrics::{Metrics, Stats};
use crate::popularity::Popularity;
use crate::wire::client::{Failure, PeerClient};
use crate::wire::protocol;

/// One group's share of a distributed cache on this replica. Cheap to clone: clones share
/// everything.
pub struct Groupcache<L: Loader> {
    pub(crate) inner: Arc<Inner<L>>,
}

impl<L: Loader> Clone for Groupcache<L> {
    fn clone(&self) -> Self {
        Groupcache {
            inner: self.inner.clone(),
        }
    }
}

impl<L: Loader> Groupcache<L> {
    /// Starts a builder for `group`, served by this replica at `self_url` (the exact URL the other
    /// replicas list it under, e.g. `http://10.0.0.1:8080`), filled by `loader`.
    pub fn builder(group: impl Into<String>, self_url: impl Into<String>, loader: L) -> Builder<L> {
        Builder::new(group.into(), self_url.into(), loader)
    }

    /// The value of `key`, from a cache, from its owner, or from the loader.
    ///
    /// Must be called within a tokio runtime: loads run in tasks of their own.
    ///
    /// A [`Bytes`](bytes::Bytes) value of 512 bytes or more is usually a view into one of the
    /// cache's segments (buffers of up to 1 MiB that hold many values side by side), and keeps
    /// the whole segment alive while it is held. Handing it to a response is what it is for; to keep a
    /// value long after the cache let it go, copy it (`Bytes::copy_from_slice`).
    pub async fn get(&self, key: &str) -> Result<L::Value, Error> {
        let entry = self.inner.get(key, Caller::Local).await?;
        L::Value::decode(entry.value).map_err(|e| Error::Codec(Arc::new(e)))
    }

    /// Removes `key` everywhere: first on its owner, so no peer can fetch the old value again,
    /// then on every other replica, so no hot copy survives. The next `get` loads it once.
    ///
    /// Every replica is tried; the first that could not be reached is returned as
    /// [`Error::Peer`] (its copy, if any, expires from the hot cache within
    /// [`Builder::hot_max_age`]).
    pub async fn remove(&self, key: &str) -> Result<(), Error> {
        let inner = &self.inner;
        inner.check_key(key)?;
        let membership = inner.peers.snapshot();
        let owner = membership.remote_owner(key);
        let on_owner = match owner {
            Some(owner) => inner.remove_on(owner, key).await,
            None => Ok(()),
        };
        inner.forget(key);
        let on_others = inner.remove_on_all_but(&membership, owner, key).await;
        on_owner.and(on_others)
    }

    /// Stores `value` for `key` on its owner, expiring at `expires_at` if given, and drops every
    /// other replica's hot copy. No loader runs.
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
        let inner = &self.inner;
        inner.check_key(key)?;
        let value = value.encode().map_err(|e| Error::Codec(Arc::new(e)))?;
        let entry = Entry {
            value,
            expire: to_unix_nanos(expires_at),
        };
        let membership = inner.peers.snapshot();
        let owner = membership.remote_owner(key);
        match owner {
            None => inner.store_owned(key, entry),
            Some(owner) => {
                let request = SetRequest {
                    group: inner.group.clone(),
                    key: key.to_owned(),
                    value: Some(entry.value),
                    expire: Some(entry.expire),
                };
                let path = inner.key_path(owner, key);
                inner
                    .client
                    .set(&owner.endpoint, path, &request)
                    .await
                    .map_err(|source| Error::Peer {
                        peer: owner.url.to_string(),
                        source,
                    })?;
                inner.forget(key);
            }
        }
        inner.remove_on_all_but(&membership, owner, key).await
    }

    /// The axum router that serves this group to peers under the base path. Merge it into your
    /// app, or nest it under a prefix and include that prefix in every peer URL.
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
        crate::wire::router::router(self.clone())
    }

    /// Adds a peer; returns false if it was already a member. Idempotent.
    pub fn add_peer(&self, url: &str) -> Result<bool, Error> {
        self.inner.membership_changed(self.inner.peers.add(url))
    }

    /// Removes a peer; returns false if it was not a member. This replica cannot remove itself.
    pub fn remove_peer(&self, url: &str) -> Result<bool, Error> {
        self.inner.membership_changed(self.inner.peers.remove(url))
    }

    /// Replaces the set of peers (this replica is added if missing); returns whether it changed.
    /// The order matters only in [`RingMode::GoCompatible`](crate::RingMode::GoCompatible), for golang/groupcache's rare hash
    /// collisions: give every replica the same list in the same order.
    pub fn set_peers<I, S>(&self, urls: I) -> Result<bool, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.inner.membership_changed(self.inner.peers.set(urls))
    }

    /// The URL of the replica that owns `key` in this replica's ring (possibly this one).
    pub fn owner(&self, key: &str) -> String {
        match self.inner.peers.snapshot().owner(key) {
            Some(owner) => owner.url.to_string(),
            None => self.inner.self_url.clone(),
        }
    }

    /// The current members, this replica included.
    pub fn peers(&self) -> Vec<String> {
        self.inner.peers.urls()
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.group
    }

    /// This replica's URL, as the ring knows it.
    pub fn self_url(&self) -> &str {
        &self.inner.self_url
    }

    /// This replica's counters and cache sizes.
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
        Stats {
            main_bytes: inner.main.bytes(),
            main_items: inner.main.items(),
            hot_bytes: inner.hot.bytes(),
            hot_items: inner.hot.items(),
            ..inner.metrics.snapshot()
        }
    }
}

/// Who asked for a key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// This replica's application.
    Local,
    /// Another replica, through the router: never forwarded again.
    Peer,
}

/// Which cache a loaded value goes to.
#[derive(Clone, Copy)]
pub(crate) enum Store {
    /// This replica owns the key (or a peer said so).
    Main,
    /// Owned by another replica: kept with a bounded age.
    Hot,
}

pub(crate) struct Inner<L: Loader> {
    pub(crate) group: String,
    pub(crate) self_url: String,
    pub(crate) loader: L,
    pub(crate) config: Config,
    pub(crate) main: Cache,
    pub(crate) hot: Cache,
    pub(crate) popularity: Popularity,
    /// Runs of the loader, shared by local callers and peers' requests.
    pub(crate) loads: Flight<Entry>,
    /// Requests to owners, shared by local callers only: a peer's request never waits on one,
    /// so two replicas with different rings cannot wait on each other.
    pub(crate) fetches: Flight<Entry>,
    pub(crate) peers: Peers,
    pub(crate) client: PeerClient,
    pub(crate) metrics: Metrics,
    /// Single fetches waiting to travel in one batch (`Builder::coalesce_window`).
    pub(crate) coalescing: crate::batch::Coalescing,
}

impl<L: Loader> Inner<L> {
    pub(crate) async fn get(self: &Arc<Self>, key: &str, caller: Caller) -> Result<Entry, Error> {
        self.check_key(key)?;
        self.metrics.get();
        if let Some(entry) = self.cached(key) {
            return Ok(entry);
        }
        self.metrics.load();
        if caller == Caller::Local {
            self.popularity.record(key_hash(key));
        }
        let owner = self.peers.snapshot().remote_owner(key).cloned();
        let (outcome, started) = match owner {
            Some(owner) if caller == Caller::Local && protocol::can_carry(key) => {
                self.fetch(key, owner).await
            }
            Some(_) if caller == Caller::Local => self.load(key, Store::Hot).await,
            _ => self.load(key, Store::Main).await,
        };
        if started {
            self.metrics.load_deduped();
        }
        outcome
    }

    /// A main or hot cache hit, counted.
    pub(crate) fn cached(&self, key: &str) -> Option<Entry> {
        let now = now_nanos();
        if let Some(entry) = self.main.get(key, now) {
            self.metrics.main_hit();
            return Some(entry);
        }
        let entry = self.hot.get(key, now)?;
        self.metrics.hot_hit();
        Some(entry)
    }

    /// A hit without counting, for flights that look again before doing the work.
    pub(crate) fn peek(&self, key: &str) -> Option<Entry> {
        let now = now_nanos();
        self.main.get(key, now).or_else(|| self.hot.get(key, now))
    }

    /// Runs the loader once for everyone asking for `key` now.
    pub(crate) async fn load(self: &Arc<Self>, key: &str, store: Store) -> (Outcome<Entry>, bool) {
        let this = self.clone();
        let owned_key = key.to_owned();
        let (outcome, started) = self
            .loads
            .run(key, move |superseded| async move {
                this.run_loader(&owned_key, store, superseded).await
            })
            .await;
        if started && matches!(outcome, Err(Error::LoaderPanicked(_))) {
            self.metrics.local_load_error();
        }
        (outcome, started)
    }

    async fn run_loader(&self, key: &str, store: Store, superseded: Superseded) -> Outcome<Entry> {
        if let Some(entry) = self.peek(key) {
            return Ok(entry);
        }
        let started = Instant::now();
        let loaded = self.loader.load(key).await;
        self.metrics.load_duration.record(started.elapsed());
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                self.metrics.local_load_error();
                tracing::debug!(group = %self.group, key, %error, "loader failed");
                return Err(Error::Loader(Arc::new(error)));
            }
        };
        self.metrics.local_load();
        let Loaded { value, expires_at } = loaded;
        let bytes = value.encode().map_err(|e| Error::Codec(Arc::new(e)))?;
        // Without the loader's own handle, a `Bytes` value is the only handle to its buffer, and
        // the cache can keep that buffer instead of copying it.
        drop(value);
        let expire = to_unix_nanos(expires_at);
        if superseded.get() {
            return Ok(Entry {
                value: bytes,
                expire,
            });
        }
        let entry = Entry {
            value: bytes,
            expire,
        };
        let value = self.store(key, entry, store);
        Ok(Entry { value, expire })
    }

    /// Asks the owner once for everyone on this replica asking for `key` now.
    async fn fetch(self: &Arc<Self>, key: &str, owner: Arc<Member>) -> (Outcome<Entry>, bool) {
        if let Some(window) = self.coalesce_window(&owner) {
            return self.fetch_coalesced(key, owner, window).await;
        }
        let this = self.clone();
        let owned_key = key.to_owned();
        self.fetches
            .run(key, move |superseded| async move {
                this.fetch_from(&owned_key, &owner, superseded).await
            })
            .await
    }

    pub(crate) async fn fetch_from(
        self: &Arc<Self>,
        key: &str,
        owner: &Member,
        superseded: Superseded,
    ) -> Outcome<Entry> {
        if let Some(entry) = self.peek(key) {
            return Ok(entry);
        }
        let started = Instant::now();
        let path = self.key_path(owner, key);
        let fetched = self.client.get(&owner.endpoint, path).await;
        self.metrics.peer_request_duration.record(started.elapsed());
        match fetched {
            Ok(response) => {
                self.metrics.peer_load();
                let entry = Entry {
                    value: response.value.unwrap_or_default(),
                    expire: response.expire.unwrap_or(0),
                };
                let requests = self.popularity.estimate(key_hash(key));
                if !superseded.get() && requests >= self.config.hot_promotion_requests {
                    let _ = self.store(key, entry.clone(), Store::Hot);
                }
                Ok(entry)
            }
            Err(Failure::Loader(message)) => Err(Error::RemoteLoader {
                peer: owner.url.to_string(),
                message,
            }),
            Err(Failure::Peer(error)) => {
                self.metrics.peer_error();
                tracing::warn!(group = %self.group, peer = %owner.url, %error, "peer failed; loading locally");
                self.load(key, Store::Hot).await.0
            }
        }
    }

    /// Caches the entry; returns the value as the cache holds it (or as given, if not kept).
    pub(crate) fn store(&self, key: &str, mut entry: Entry, store: Store) -> bytes::Bytes {
        match store {
            Store::Main => {
                let inserted = self.main.insert(key, entry);
                self.metrics
                    .main
                    .record(self.main.bytes(), self.main.items(), inserted.evicted);
                inserted.value
            }
            Store::Hot => {
                let max_age = i64::try_from(self.config.hot_max_age.as_nanos()).unwrap_or(i64::MAX);
                let deadline = now_nanos().saturating_add(max_age);
                entry.expire = if entry.expire == 0 {
                    deadline
                } else {
                    entry.expire.min(deadline)
                };
                let inserted = self.hot.insert(key, entry);
                self.metrics
                    .hot
                    .record(self.hot.bytes(), self.hot.items(), inserted.evicted);
                inserted.value
            }
        }
    }

    /// Stores a value this replica owns (a local `set` or a peer's `PUT`); any load in flight
    /// for the key is superseded and no older hot copy remains.
    pub(crate) fn store_owned(&self, key: &str, entry: Entry) {
        self.forget(key);
        let _ = self.store(key, entry, Store::Main);
    }

    /// Drops `key` from both caches and keeps loads in flight from caching an older value.
    pub(crate) fn forget(&self, key: &str) {
        self.loads.supersede(key);
        self.fetches.supersede(key);
        if self.main.remove(key) {
            self.metrics
                .main
                .record(self.main.bytes(), self.main.items(), 0);
        }
        if self.hot.remove(key) {
            self.metrics
                .hot
                .record(self.hot.bytes(), self.hot.items(), 0);
        }
    }

    /// A peer's `GET`: the value and this replica's request rate for the key (per minute).
    pub(crate) async fn serve_get(self: &Arc<Self>, key: &str) -> Result<(Entry, f64), Error> {
        // Read, not recorded: the sketch counts this replica's own demand, which decides hot
        // promotion; peers' requests would make keys it never asked for look popular.
        let requests = self.popularity.estimate(key_hash(key));
        let entry = self.get(key, Caller::Peer).await?;
        let window = POPULARITY_WINDOW.as_secs_f64() / 60.0;
        Ok((entry, f64::from(requests) / window))
    }

    async fn remove_on(&self, peer: &Member, key: &str) -> Result<(), Error> {
        let path = self.key_path(peer, key);
        self.client.remove(&peer.endpoint, path).await.map_err(|source| {
            tracing::warn!(group = %self.group, peer = %peer.url, %source, "remove failed on peer");
            Error::Peer {
                peer: peer.url.to_string(),
                source,
            }
        })
    }

    /// Removes `key` from every peer but `owner` (and this replica), all at once; the first
    /// failure, after all were tried.
    async fn remove_on_all_but(
        &self,
        membership: &Membership,
        owner: Option<&Arc<Member>>,
        key: &str,
    ) -> Result<(), Error> {
        let others = membership
            .others()
            .filter(|peer| owner.is_none_or(|owner| !Arc::ptr_eq(owner, peer)));
        let results = futures_util::future::join_all(others.map(|peer| self.remove_on(peer, key)));
        results.await.into_iter().collect()
    }

    /// The request path for `key` on `peer`.
    fn key_path(&self, peer: &Member, key: &str) -> String {
        protocol::key_path(&peer.key_prefix, key)
    }

    pub(crate) fn check_key(&self, key: &str) -> Result<(), Error> {
        let limit = self.config.max_key_bytes;
        if key.len() > limit {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                limit,
            });
        }
        Ok(())
    }

    fn membership_changed(&self, changed: Result<bool, Error>) -> Result<bool, Error> {
        if let Ok(true) = changed {
            let membership = self.peers.snapshot();
            self.metrics
                .peers
                .set(membership.others().count() as f64 + 1.0);
            // Connections to peers that left are closed now rather than when they time out.
            self.client.retain_connections(|origin| {
                membership
                    .others()
                    .any(|peer| peer.endpoint.origin() == origin)
            });
        }
        changed
    }
}

/// The popularity sketch's window: estimates are requests per this long.
pub(crate) const POPULARITY_WINDOW: Duration = Duration::from_secs(60);

/// A stable 64-bit hash of the key for the popularity sketch (never Rust's `Hash`).
pub(crate) fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}
