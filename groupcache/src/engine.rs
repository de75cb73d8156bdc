//! The engine: the public [`Groupcache`] handle and a key's journey through the caches, the ring,
//! the flights and the wire, read top to bottom in [`Inner::get`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use groupcache_rs_pb::SetRequest;

use crate::builder::{Builder, Config};
use crate::caches::{Cache, Entry, Token};
use crate::error::Error;
use crate::flight::{Flight, Outcome, Superseded};
use crate::loader::{Loaded, Loader, Value, now_nanos, to_unix_nanos};
use crate::membership::{Member, Membership, Peers};
use crate::metrics::{Metrics, Stats};
use crate::popularity::Popularity;
use crate::repairs::Queued;
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
    /// Must be called within a tokio runtime: loads run in tasks of their own. Outside one, a
    /// miss fails with [`Error::NoRuntime`].
    ///
    /// A [`Bytes`](bytes::Bytes) value up to 1/16 of a segment (64 KiB with the default
    /// budget), however small, is a view into one of the cache's segments (buffers of up to
    /// 1 MiB that hold many keys and values side by side), and keeps the whole segment alive
    /// while it is held. Handing it to a response is what it is for; to keep a value long after
    /// the cache let it go, copy it (`Bytes::copy_from_slice`).
    pub async fn get(&self, key: &str) -> Result<L::Value, Error> {
        let entry = self.inner.get(key, Caller::Local).await?;
        L::Value::decode(entry.value).map_err(|e| Error::Codec(Arc::new(e)))
    }

    /// Removes `key` everywhere: first on its owner, so no peer can fetch the old value again,
    /// then on every other replica, so no hot copy survives. The next `get` loads it once.
    ///
    /// `Ok` means every member of this replica's ring was reached: no `get` that starts after it
    /// returns, on any replica, answers the value from before the remove (not from a load
    /// already in flight, a hot copy, a batch or a hand-off), so write the source of truth first,
    /// then remove (README, "Writes and freshness"). Every replica is tried; the first that
    /// could not be reached is returned as [`Error::Peer`]. Its hot copy, if any, expires within
    /// [`Builder::hot_max_age`]; every member that missed the remove is sent it again in the
    /// background until it answers or leaves the ring, since the key's owner would otherwise
    /// keep its copy. Replicas that left this replica's ring within [`Builder::hot_max_age`]
    /// are sent the remove too, in case they still serve a copy (as the key's former owner, or
    /// through their drain); those that cannot be reached are logged, not returned. [`set`](Groupcache::set)
    /// reaches the same replicas.
    pub async fn remove(&self, key: &str) -> Result<(), Error> {
        let inner = &self.inner;
        inner.check_key(key)?;
        let membership = inner.peers.snapshot();
        let owner = membership.remote_owner(key);
        let on_owner = match owner {
            Some(owner) => inner.remove_on_member(owner, key).await,
            None => Ok(()),
        };
        inner.forget(key);
        let on_others = inner.remove_on_all_but(&membership, owner, key).await;
        on_owner.and(on_others)
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
        let inner = &self.inner;
        inner.check_key(key)?;
        let value = value.encode().map_err(|e| Error::Codec(Arc::new(e)))?;
        let entry = Entry {
            value,
            expire: to_unix_nanos(expires_at),
        };
        let membership = inner.peers.snapshot();
        let owner = membership.remote_owner(key);
        let on_owner = match owner {
            None => {
                inner.store_owned(key, entry);
                Ok(())
            }
            Some(owner) => {
                let request = SetRequest {
                    group: inner.group.clone(),
                    key: key.to_owned(),
                    value: Some(entry.value),
                    expire: Some(entry.expire),
                };
                let path = inner.key_path(owner, key);
                let stored = inner.client.set(&owner.endpoint, path, &request).await;
                inner.forget(key);
                if stored.is_err() {
                    inner.missed(owner, key);
                }
                stored.map_err(|source| {
                    tracing::warn!(group = %inner.group, peer = %owner.url, %source, "set failed on the key's owner");
                    Error::Peer {
                        peer: owner.url.to_string(),
                        source,
                    }
                })
            }
        };
        // Even when the owner failed: the other replicas' copies of the old value go, as a
        // `remove`'s do, so what can still be read of it is at most the owner's.
        let on_others = inner.remove_on_all_but(&membership, owner, key).await;
        on_owner.and(on_others)
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

    /// Removes a peer; returns false if it was not a member. This replica cannot remove itself
    /// this way (see [`leave`](Groupcache::leave)).
    pub fn remove_peer(&self, url: &str) -> Result<bool, Error> {
        self.inner.membership_changed(self.inner.peers.remove(url))
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
        self.inner.membership_changed(self.inner.peers.set(urls))
    }

    /// Takes this replica out of its own ring for the rest of its life, the first step of a
    /// graceful shutdown: call it on SIGTERM, keep serving through the drain, then exit.
    ///
    /// From then on it owns no key: its own `get`s go to the other members' owners, and its
    /// `remove`s and `set`s reach them. It still answers the peers whose discovery has not
    /// dropped it yet (from its caches, or by loading, as for any peer whose ring disagrees)
    /// and the new owners' hand-off peeks, from what it holds: its entries stay for at most
    /// [`hot_max_age`](Builder::hot_max_age), as after any ring change that took keys away.
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
        let left = self.inner.peers.leave();
        if left {
            tracing::info!(group = %self.inner.group, "left the ring: serving peers until the drain ends");
        }
        matches!(self.inner.membership_changed(Ok(left)), Ok(true))
    }

    /// The URL of the replica that owns `key` in this replica's ring (possibly this one).
    pub fn owner(&self, key: &str) -> String {
        match self.inner.peers.snapshot().owner(key) {
            Some(owner) => owner.url.to_string(),
            None => self.inner.self_url.clone(),
        }
    }

    /// The current members, this replica included (unless it has [left](Groupcache::leave)).
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

/// Which cache a loaded value goes to, with that cache's [`Token`] for the key taken before the
/// value was asked for: a `remove` or `set` of the key since then keeps the value out.
///
/// A value is kept without an age bound only where every replica sends the key's writes: on its
/// owner, under a ring that has been current for at least `hot_max_age` (the time discovery is
/// assumed to take to bring every replica to the same ring). Anything else (a peer's request for
/// a key this replica does not own, a value loaded or set just after a ring change) is served
/// for at most `hot_max_age`, so a write this replica missed is seen within that bound.
#[derive(Clone, Copy)]
pub(crate) enum Store {
    /// This replica owns the key under a settled ring.
    Main(Token),
    /// The main cache, expiring within `hot_max_age`: a key this replica does not own under its
    /// current ring, or owns under a ring too recent to know that others send it the writes.
    Bounded(Token),
    /// Owned by another replica, fetched from it: the hot cache, with a bounded age.
    Hot(Token),
}

pub(crate) struct Inner<L: Loader> {
    pub(crate) group: String,
    pub(crate) self_url: String,
    pub(crate) loader: L,
    pub(crate) config: Config,
    pub(crate) main: Cache,
    pub(crate) hot: Cache,
    /// The budget `main` and `hot` share.
    pub(crate) budget: Arc<crate::budget::Budget>,
    pub(crate) popularity: Popularity,
    /// Runs of the loader, shared by local callers and peers' requests.
    pub(crate) loads: Flight<Entry>,
    /// Requests to owners, shared by local callers only: a peer's request never waits on one,
    /// so two replicas with different rings cannot wait on each other.
    pub(crate) fetches: Flight<Entry>,
    pub(crate) peers: Peers,
    pub(crate) client: PeerClient,
    pub(crate) metrics: Metrics,
    /// A test's pause point just before a load stores its value.
    #[cfg(test)]
    pub(crate) pause: tests::PausePoint,
    /// Single fetches waiting to travel in one batch (`Builder::coalesce_fetches`).
    pub(crate) coalescing: crate::batch::Coalescing,
    /// Keys written here lately, which the hand-off does not peek (`handoff.rs`).
    pub(crate) recent_writes: crate::handoff::RecentWrites,
    /// Writes that missed a member, to send it again (`repairs.rs`).
    pub(crate) repairs: crate::repairs::Repairs,
}

impl<L: Loader> Inner<L> {
    pub(crate) async fn get(self: &Arc<Self>, key: &str, caller: Caller) -> Result<Entry, Error> {
        if let Some(entry) = self.start_get(key, caller)? {
            return Ok(entry);
        }
        let owner = self.peers.snapshot().remote_owner(key).cloned();
        // `loads_deduped` is counted by the flight's task, which runs even if this caller gives up.
        // Each miss is boxed: its future nests a flight, the pool and the hand-off (5-11 KiB), and
        // unboxed it made every `get` future, a hit's too, that large: copied into each axum
        // handler's box and each flight's task, it cost a remote get 8 µs (BENCHMARKS.md). An async
        // fn that awaits `get` inline (an axum handler, say) also passed rustc's default query
        // depth (128) when its layout was computed, as the example's handlers did. One box per
        // miss, beside the miss's flight and task.
        let (outcome, _) = match owner {
            Some(owner) if caller == Caller::Local && protocol::can_carry(key) => {
                Box::pin(self.fetch(key, owner)).await
            }
            // Loaded here: into the hot cache for a key another replica owns that the wire cannot
            // carry; for a peer whose ring disagrees with this one's, served, never forwarded,
            // and bounded; as this replica's own otherwise (`load_store`).
            _ => Box::pin(self.load(key, self.load_store(key, caller), true)).await,
        };
        outcome
    }

    /// A get's first steps, for `get` and every key of a batch: the key checked and counted, and
    /// its cached value if there is one; `None` when it must be fetched or loaded (counted as a
    /// load, and as a request of this replica's own for the hot cache).
    pub(crate) fn start_get(&self, key: &str, caller: Caller) -> Result<Option<Entry>, Error> {
        self.check_key(key)?;
        self.metrics.get();
        // Admission compares how often keys are asked for, hits and peers' requests included;
        // without it the sketch only decides hot promotion, for which this replica's own misses
        // are what count.
        let admission = self.config.admission;
        if admission {
            self.popularity.record(key_hash(key));
        }
        if let Some(entry) = self.cached(key) {
            return Ok(Some(entry));
        }
        self.metrics.load();
        if caller == Caller::Local && !admission {
            self.popularity.record(key_hash(key));
        }
        Ok(None)
    }

    /// Where a load of `key` for `caller` stores its value, when this replica loads it: the
    /// choice `get` makes, for the keys a batch loads.
    pub(crate) fn load_store(&self, key: &str, caller: Caller) -> Store {
        // Taken before the ring is read: a ring change since makes the token stale (see
        // `membership_changed`), so no value is stored as owned under a ring that is gone. Taken
        // only here, not for a fetch, which stores in the hot cache.
        let main = self.main.token(key);
        let membership = self.peers.snapshot();
        match membership.remote_owner(key) {
            Some(_) if caller == Caller::Local => self.hot_store(key),
            Some(_) => Store::Bounded(main),
            None => self.owned_store(&membership, main),
        }
    }

    /// Where a value of a key this replica owns under `membership` goes.
    fn owned_store(&self, membership: &Membership, token: Token) -> Store {
        if membership.age() >= self.config.hot_max_age {
            Store::Main(token)
        } else {
            Store::Bounded(token)
        }
    }

    /// The latest expiry of a value whose age is bounded, stored now.
    fn bounded_expiry(&self, expire: i64) -> i64 {
        let max_age = i64::try_from(self.config.hot_max_age.as_nanos()).unwrap_or(i64::MAX);
        let deadline = now_nanos().saturating_add(max_age);
        if expire == 0 {
            deadline
        } else {
            expire.min(deadline)
        }
    }

    /// Where a value owned by another replica goes.
    pub(crate) fn hot_store(&self, key: &str) -> Store {
        Store::Hot(self.hot.token(key))
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

    /// Runs the loader once for everyone asking for `key` now; `deduped`: count it in
    /// `loads_deduped` (a get's own load, not a failed fetch's fallback).
    pub(crate) async fn load(
        self: &Arc<Self>,
        key: &str,
        store: Store,
        deduped: bool,
    ) -> (Outcome<Entry>, bool) {
        let this = self.clone();
        let owned_key = key.to_owned();
        self.loads
            .run(key, move |superseded| async move {
                // In the flight's task: counted even when every caller has given up.
                if deduped {
                    this.metrics.load_deduped();
                }
                let loaded = AssertUnwindSafe(this.run_loader(&owned_key, store, superseded));
                match loaded.catch_unwind().await {
                    Ok(outcome) => outcome,
                    Err(panic) => {
                        this.metrics.local_load_error();
                        // The flight turns it into an error for every waiter.
                        std::panic::resume_unwind(panic)
                    }
                }
            })
            .await
    }

    async fn run_loader(&self, key: &str, store: Store, superseded: Superseded) -> Outcome<Entry> {
        if let Some(entry) = self.peek(key) {
            return Ok(entry);
        }
        // Boxed only when there is a previous owner to peek: its future would otherwise size
        // every load's task, which each load copies into place.
        if let Some((previous, peek)) = self.handoff_source(key)
            && let Some(entry) = Box::pin(self.hand_off(key, previous, peek)).await
        {
            let value = self.store(key, entry.clone(), store);
            return Ok(Entry {
                value,
                expire: entry.expire,
            });
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
        // A write already overtook this load: skip the copy into the cache. Only a shortcut: the
        // store's token, checked under the cache's lock, is what keeps a later write's value.
        if superseded.get() {
            return Ok(Entry {
                value: bytes,
                expire,
            });
        }
        #[cfg(test)]
        self.pause_point().await;
        let entry = Entry {
            value: bytes,
            expire,
        };
        let value = self.store(key, entry, store);
        Ok(Entry { value, expire })
    }

    /// Asks the owner once for everyone on this replica asking for `key` now.
    async fn fetch(self: &Arc<Self>, key: &str, owner: Arc<Member>) -> (Outcome<Entry>, bool) {
        if let Some(max_in_flight) = self.coalescing(&owner) {
            // Boxed: a batch's future is twice a single fetch's, and it would size every fetch.
            return Box::pin(self.fetch_coalesced(key, owner, max_in_flight)).await;
        }
        let this = self.clone();
        let owned_key = key.to_owned();
        self.fetches
            .run(key, move |superseded| async move {
                this.metrics.load_deduped();
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
        let hot = self.hot_store(key);
        if let Some(entry) = self.peek(key) {
            return Ok(entry);
        }
        if !owner.is_suspected() {
            match self.ask(owner, key).await {
                Ok(entry) => {
                    owner.trust();
                    self.metrics.peer_load();
                    return Ok(self.promote(key, entry, hot, &superseded));
                }
                Err(Failure::Loader(message)) => {
                    return Err(Error::RemoteLoader {
                        peer: owner.url.to_string(),
                        message,
                    });
                }
                Err(Failure::Peer(error)) => {
                    self.metrics.peer_error();
                    if !self.suspect(owner, &error) {
                        tracing::warn!(group = %self.group, peer = %owner.url, %error, "peer failed; loading locally");
                        return Box::pin(self.load(key, self.hot_store(key), false)).await.0;
                    }
                }
            }
        }
        // Boxed, as the fallback load above: the rare paths would size the flight's task, which
        // every fetch copies into place.
        Box::pin(self.from_successor(key, hot, &superseded)).await
    }

    /// A key whose owner is suspected down, from the key's successor on the ring: the same
    /// member on every replica, so the key is loaded about once in the cluster, not once per
    /// replica (each into a hot cache too small for a whole owner's share, which made 7.9 loads
    /// per key in 10 s of outage in issue 17's run). The successor loads it as a peer's request
    /// (never forwarded) or, if that is this replica, as its own, held in main under the
    /// staleness bound. Loaded locally if the successor fails too.
    pub(crate) async fn from_successor(
        self: &Arc<Self>,
        key: &str,
        hot: Store,
        superseded: &Superseded,
    ) -> Outcome<Entry> {
        let successor = self.peers.snapshot().successor(key).cloned();
        match successor {
            Some(successor) if successor.is_self => {
                return self
                    .load(key, Store::Bounded(self.main.token(key)), false)
                    .await
                    .0;
            }
            Some(successor) if !successor.is_suspected() && self.stands_in(&successor) => {
                match self.ask(&successor, key).await {
                    Ok(entry) => {
                        successor.trust();
                        self.metrics.successor_load();
                        return Ok(self.promote(key, entry, hot, superseded));
                    }
                    Err(Failure::Loader(message)) => {
                        return Err(Error::RemoteLoader {
                            peer: successor.url.to_string(),
                            message,
                        });
                    }
                    Err(Failure::Peer(error)) => {
                        self.metrics.peer_error();
                        self.suspect(&successor, &error);
                        tracing::warn!(group = %self.group, peer = %successor.url, %error, "successor failed; loading locally");
                    }
                }
            }
            _ => {}
        }
        self.load(key, self.hot_store(key), false).await.0
    }

    /// Whether `peer` can stand in for a suspected owner: a groupcache-rs replica, which keeps
    /// what it loads for another replica under the staleness bound and receives every write. A
    /// golang/groupcache replica would keep it in its main cache without expiry and never drop
    /// it on a write (it takes no `DELETE`), so this replica loads the key itself instead, as
    /// golang/groupcache does. Known from its answers (the batch advert); in
    /// [`RingMode::Balanced`](crate::RingMode::Balanced), a ring golang/groupcache cannot share,
    /// a peer not heard from yet is taken for one of ours.
    fn stands_in(&self, peer: &Member) -> bool {
        let endpoint = &peer.endpoint;
        endpoint.batches.load(std::sync::atomic::Ordering::Relaxed)
            || (self.config.ring_mode == crate::RingMode::Balanced
                && !endpoint.plain.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Whom a warm hand-off of `key` peeks, with the gate's ticket for the peek; `None` if no
    /// one. A warm hand-off is the copy the key's previous owner holds in memory; it is asked for
    /// if this replica owns the key under a ring younger than `hot_max_age` (before that, nobody
    /// else held it as its owner), the key was not written here within `hot_max_age`, the
    /// previous owner is not suspected, and its peeks under this ring have not all missed
    /// (`handoff.rs`). It must answer within `handoff_timeout`
    /// ([`hand_off`](Self::hand_off)). The copy is stored as a load's value would be: bounded,
    /// since the ring is young.
    fn handoff_source(&self, key: &str) -> Option<(Arc<Member>, crate::handoff::Peek)> {
        if self.config.handoff_timeout.is_zero() || !protocol::can_carry(key) {
            return None;
        }
        // Written here lately: the owner had its share of the write first, and the previous
        // owner may not have had its own yet (`RecentWrites`).
        if self.recent_writes.written_recently(key_hash(key)) {
            return None;
        }
        let membership = self.peers.snapshot();
        let owned = membership.owner(key).is_some_and(|owner| owner.is_self);
        if !owned || membership.age() >= self.config.hot_max_age {
            return None;
        }
        let (previous, peek) = membership.handoff_peek(key, Instant::now())?;
        if previous.is_suspected() {
            return None;
        }
        Some((previous.clone(), peek))
    }

    /// The hand-off's peek of `previous` (from [`handoff_source`](Self::handoff_source)), counted.
    async fn hand_off(
        &self,
        key: &str,
        previous: Arc<Member>,
        peek: crate::handoff::Peek,
    ) -> Option<Entry> {
        let timeout = self.config.handoff_timeout;
        let path = self.key_path(&previous, key);
        let peeked = self.client.peek(&previous.endpoint, path, timeout).await;
        let entry = match peeked {
            Ok(Some(response)) => Some(answered(response)),
            Ok(None) => None,
            Err(error) => {
                let error = match error {
                    Failure::Loader(message) => message,
                    Failure::Peer(error) => error.to_string(),
                };
                tracing::debug!(group = %self.group, peer = %previous.url, key, %error, "hand-off peek failed; loading");
                None
            }
        };
        peek.answered(entry.is_some());
        self.metrics.handoff(entry.is_some());
        entry
    }

    /// A peer's peek: the value if this replica holds it in memory. Never loads.
    pub(crate) fn serve_peek(&self, key: &str) -> Option<Entry> {
        self.peek(key)
    }

    /// One `GET` of `key` from `peer`, timed.
    async fn ask(&self, peer: &Member, key: &str) -> Result<Entry, Failure> {
        let started = Instant::now();
        let path = self.key_path(peer, key);
        let fetched = self.client.get(&peer.endpoint, path).await;
        self.metrics.peer_request_duration.record(started.elapsed());
        fetched.map(answered)
    }

    /// A fetched value, kept in the hot cache if this replica asks for the key often.
    fn promote(&self, key: &str, entry: Entry, hot: Store, superseded: &Superseded) -> Entry {
        let requests = self.popularity.estimate(key_hash(key));
        if !superseded.get() && requests >= self.config.hot_promotion_requests {
            let _ = self.store(key, entry.clone(), hot);
        }
        entry
    }

    /// Suspects `peer` if `error` says it is down (it could not be reached, or did not answer
    /// in time) and suspicion is on; whether it is suspected now. An error status or a malformed
    /// answer comes from a replica that is up, which keeps its keys.
    pub(crate) fn suspect(&self, peer: &Member, error: &crate::PeerError) -> bool {
        let down = matches!(
            error,
            crate::PeerError::Request(_) | crate::PeerError::Timeout
        );
        if !down || self.config.owner_suspicion.is_zero() {
            return false;
        }
        if peer.suspect(self.config.owner_suspicion) {
            self.metrics.peer_suspicion();
            tracing::warn!(group = %self.group, peer = %peer.url, %error, suspected_for = ?self.config.owner_suspicion, "peer suspected down; its keys go to their successors");
        }
        true
    }

    /// Caches the entry unless the key was written since the store's token was taken; returns the
    /// value as the cache holds it (or as given, if not kept).
    pub(crate) fn store(&self, key: &str, mut entry: Entry, store: Store) -> bytes::Bytes {
        match store {
            Store::Main(token) | Store::Bounded(token) => {
                if let Store::Bounded(_) = store {
                    entry.expire = self.bounded_expiry(entry.expire);
                }
                // A ring change since the token was taken: the value is current, but this
                // replica may no longer own the key, so it is kept only under the bound.
                let bounded = self.bounded_expiry(entry.expire);
                let admit = self.admission(key);
                let admit = admit
                    .as_ref()
                    .map(|admit| admit as crate::caches::Admit<'_>);
                let inserted = match self.main.insert_if(key, entry, token, Some(bounded), admit) {
                    Ok(inserted) => inserted,
                    Err(value) => return value,
                };
                self.metrics.main.evicted(inserted.evicted);
                self.metrics.hot.evicted(self.hot.trim());
                inserted.value
            }
            Store::Hot(token) => {
                entry.expire = self.bounded_expiry(entry.expire);
                let admit = self.admission(key);
                let admit = admit
                    .as_ref()
                    .map(|admit| admit as crate::caches::Admit<'_>);
                let inserted = match self.hot.insert_if(key, entry, token, None, admit) {
                    Ok(inserted) => inserted,
                    Err(value) => return value,
                };
                self.metrics.hot.evicted(inserted.evicted);
                self.metrics.main.evicted(self.main.trim());
                inserted.value
            }
        }
    }

    /// TinyLFU's admission test for storing `key`, if admission is on
    /// ([`Builder::admission`](crate::Builder::admission)): when the store needs room, the key is
    /// kept only if it was asked for more often, within the popularity window, than the entry
    /// that would be evicted first. A scan's one-off keys are asked for once, so they do not push
    /// out keys asked for twice or more.
    fn admission(&self, key: &str) -> Option<impl Fn(&[u8]) -> bool + '_> {
        if !self.config.admission {
            return None;
        }
        let candidate = self.popularity.estimate(key_hash(key));
        Some(move |victim: &[u8]| {
            candidate > self.popularity.estimate(crate::caches::key_hash(victim))
        })
    }

    /// Stores a value this replica owns (a local `set` or a peer's `PUT`); any load in flight
    /// for the key is superseded and no older hot copy remains.
    ///
    /// Bounded as a load would be (see [`Store`]): a peer whose ring disagrees may `PUT` a key
    /// this replica does not own.
    pub(crate) fn store_owned(&self, key: &str, entry: Entry) {
        self.forget(key);
        let inserted = loop {
            // Stale only after a ring change or a write to the key since: decide again.
            let token = self.main.token(key);
            let membership = self.peers.snapshot();
            let mut entry = entry.clone();
            if membership.remote_owner(key).is_some()
                || !matches!(self.owned_store(&membership, token), Store::Main(_))
            {
                entry.expire = self.bounded_expiry(entry.expire);
            }
            if let Ok(inserted) = self.main.write_if(key, entry, token) {
                break inserted;
            }
        };
        self.metrics.main.evicted(inserted.evicted);
        self.metrics.hot.evicted(self.hot.trim());
    }

    /// Drops `key` from both caches and keeps loads in flight from caching an older value or
    /// handing it to anyone who asks from now on; the key's next miss here loads, without a
    /// hand-off peek, for `hot_max_age` (`RecentWrites`).
    pub(crate) fn forget(&self, key: &str) {
        // Before the flights let go: a load that starts once they have must see the write.
        // Without the hand-off nothing reads it, and its table is never allocated.
        if !self.config.handoff_timeout.is_zero() {
            self.recent_writes.record(key_hash(key));
        }
        self.loads.supersede(key);
        self.fetches.supersede(key);
        // The caches publish their sizes themselves.
        self.main.remove(key);
        self.hot.remove(key);
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
    /// failure, after all were tried. The members of recent rings that are no longer members are
    /// sent the remove as well, since one that left may still serve a copy (as the key's former
    /// owner while its own discovery lags, or from its hot cache to its own clients through its
    /// drain); their failures are logged, not returned: a replica that crashed or drained cannot
    /// be reached, and would fail every remove until its ring is forgotten.
    async fn remove_on_all_but(
        self: &Arc<Self>,
        membership: &Membership,
        owner: Option<&Arc<Member>>,
        key: &str,
    ) -> Result<(), Error> {
        let others = membership
            .others()
            .filter(|peer| owner.is_none_or(|owner| !Arc::ptr_eq(owner, peer)));
        let results =
            futures_util::future::join_all(others.map(|peer| self.remove_on_member(peer, key)));
        let departed = membership.departed(Instant::now());
        let departed = futures_util::future::join_all(
            departed.into_iter().map(|peer| self.remove_on(peer, key)),
        );
        let (results, _departed) = futures_util::future::join(results, departed).await;
        results.into_iter().collect()
    }

    /// [`remove_on`](Self::remove_on) a member of the ring; if it misses the write, it is sent
    /// the remove again until it answers (`repairs.rs`).
    async fn remove_on_member(
        self: &Arc<Self>,
        peer: &Arc<Member>,
        key: &str,
    ) -> Result<(), Error> {
        let removed = self.remove_on(peer, key).await;
        if removed.is_err() {
            self.missed(peer, key);
        }
        removed
    }

    /// `peer`, a member, missed a write of `key`: queues its repair, and starts the task that
    /// sends `peer` its repairs if none runs.
    fn missed(self: &Arc<Self>, peer: &Member, key: &str) {
        match self.repairs.queue(&peer.url, key) {
            Queued::Start => {
                tokio::spawn(Self::repair(Arc::downgrade(self), peer.url.clone()));
            }
            Queued::Running => {}
            Queued::Full => {
                self.metrics.write_repair_dropped();
                tracing::warn!(group = %self.group, peer = %peer.url, limit = crate::repairs::MAX_PENDING_REPAIRS, "too many writes wait for replicas that missed them; this one is not repaired");
            }
        }
        self.metrics.write_repairs_pending(self.repairs.pending());
    }

    /// Sends `url` the removes of the keys it missed, until it has them all or is no longer a
    /// member, pausing between rounds while it does not answer (from [`REPAIR_PAUSE`] up to
    /// [`REPAIR_MAX_PAUSE`]). Holds the group weakly: a group dropped ends its repairs.
    async fn repair(this: std::sync::Weak<Self>, url: Arc<str>) {
        let mut pause = REPAIR_PAUSE;
        loop {
            tokio::time::sleep(pause).await;
            let Some(this) = this.upgrade() else {
                return;
            };
            let member = this
                .peers
                .snapshot()
                .others()
                .find(|member| member.url == url)
                .cloned();
            let Some(member) = member else {
                // Gone from the ring: its entries are capped at `hot_max_age` on its side, and
                // writes reach it as a replica that left while that lasts.
                let dropped = this.repairs.drop_peer(&url);
                this.metrics.write_repairs_pending(this.repairs.pending());
                tracing::info!(group = %this.group, peer = %url, dropped, "a replica that missed writes left the ring; their repairs are dropped");
                return;
            };
            loop {
                let batch = this.repairs.next(&url, REPAIR_CONCURRENCY);
                if batch.is_empty() {
                    this.metrics.write_repairs_pending(this.repairs.pending());
                    return;
                }
                let sent = futures_util::future::join_all(batch.iter().map(|(key, _)| {
                    let path = this.key_path(&member, key);
                    this.client.remove(&member.endpoint, path)
                }))
                .await;
                let mut answered = true;
                for ((key, miss), result) in batch.iter().zip(sent) {
                    match result {
                        Ok(()) => {
                            this.repairs.answered(&url, key, *miss);
                            this.metrics.write_repair();
                        }
                        Err(_) => answered = false,
                    }
                }
                this.metrics.write_repairs_pending(this.repairs.pending());
                if !answered {
                    pause = (pause * 2).min(REPAIR_MAX_PAUSE);
                    break;
                }
                pause = REPAIR_PAUSE;
            }
        }
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
            // Loads that read the old ring store nothing as owned now; then main entries this
            // replica no longer owns are served for at most `hot_max_age` (they stay in main, where
            // the new owner may still find them, rather than push the hot cache's keys out).
            // After `supersede_all`, no entry for a key this ring gives another owner can enter
            // main unbounded, so capping what is there now is enough. Scanning costs one pass
            // over main's keys and a ring lookup per key, outside the cache's lock but for the
            // key list and the capping.
            self.main.supersede_all();
            let membership = self.peers.snapshot();
            let moved: Vec<Box<str>> = self
                .main
                .keys()
                .into_iter()
                .filter(|key| membership.remote_owner(key).is_some())
                .collect();
            self.main.cap_expiry(&moved, self.bounded_expiry(0));
            self.metrics.peers.set(membership.len() as f64);
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

#[cfg(test)]
impl<L: Loader> Inner<L> {
    async fn pause_point(&self) {
        self.pause.pass().await;
    }
}

/// The first pause before a member that missed writes is sent them again, and after each round
/// it answered.
const REPAIR_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause between rounds of repairs to a member that does not answer: once it does
/// (a frozen process resumed, a partition healed), its old values go within this, plus the
/// round that was waiting for it.
const REPAIR_MAX_PAUSE: Duration = Duration::from_secs(1);

/// Repairs sent to one member at once.
const REPAIR_CONCURRENCY: usize = 32;

/// The popularity sketch's window: estimates are requests per this long.
pub(crate) const POPULARITY_WINDOW: Duration = Duration::from_secs(60);

/// The key's hash for the popularity sketch: the caches' own (`caches::key_hash`).
/// A peer's answer as a cache entry.
fn answered(response: groupcache_rs_pb::GetResponse) -> Entry {
    Entry {
        value: response.value.unwrap_or_default(),
        expire: response.expire.unwrap_or(0),
    }
}

pub(crate) fn key_hash(key: &str) -> u64 {
    crate::caches::key_hash(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::Notify;

    /// Where a test holds a load: `arm` it, and the next load to pass reports `reached` and waits
    /// for `resume`.
    #[derive(Default)]
    pub(crate) struct PausePoint {
        armed: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
    }

    impl PausePoint {
        /// Arms the point; returns (reached, resume).
        fn arm(&self) -> (Arc<Notify>, Arc<Notify>) {
            let pair = (Arc::new(Notify::new()), Arc::new(Notify::new()));
            *self.armed.lock().unwrap() = Some(pair.clone());
            pair
        }

        pub(crate) async fn pass(&self) {
            let armed = self.armed.lock().unwrap().take();
            if let Some((reached, resume)) = armed {
                reached.notify_one();
                resume.notified().await;
            }
        }
    }

    /// Loads `"{key}@{generation}"`, counting its runs.
    #[derive(Default)]
    struct Versioned {
        generation: AtomicU64,
        runs: AtomicU64,
    }

    impl Loader for Arc<Versioned> {
        type Value = String;
        type Error = std::io::Error;

        async fn load(&self, key: &str) -> Result<Loaded<String>, std::io::Error> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            let generation = self.generation.load(Ordering::SeqCst);
            Ok(Loaded::new(format!("{key}@{generation}")))
        }
    }

    fn single() -> (Groupcache<Arc<Versioned>>, Arc<Versioned>) {
        let loader = Arc::new(Versioned::default());
        let cache = Groupcache::builder("g", "http://127.0.0.1:1", loader.clone())
            .build()
            .unwrap();
        (cache, loader)
    }

    /// Every `get` future, a hit's too, is as large as its largest path, and it is copied into
    /// each axum handler's box; each fetch's and load's flight task is copied into place. With
    /// the miss paths inline they were 4.9 KiB and 11 KiB (a load's task 2.1 KiB), and a remote
    /// get cost 8 µs more (BENCHMARKS.md). The rare paths are boxed where they branch off.
    #[tokio::test]
    async fn a_get_and_a_fetch_do_not_carry_the_futures_of_their_rare_paths() {
        let (cache, _) = single();
        let inner = &cache.inner;
        let member = inner.peers.snapshot().owner("k").cloned().unwrap();
        let get = std::mem::size_of_val(&inner.get("k", Caller::Local));
        assert!(get <= 256, "a get's future is {get} bytes");
        let flight = std::mem::size_of_val(&inner.fetch("k", member.clone()));
        assert!(flight <= 512, "a fetch's flight future is {flight} bytes");
        // The task: the request to the owner and little more, not the successor's or a load's.
        let ask = std::mem::size_of_val(&inner.ask(&member, "k"));
        let task = std::mem::size_of_val(&inner.fetch_from("k", &member, Superseded::unset()));
        assert!(
            task <= ask + 256,
            "a fetch's task is {task} bytes, its request {ask}"
        );
        // A load's task: the loader's future and little more, not the hand-off's peek.
        let load = std::mem::size_of_val(&inner.run_loader(
            "k",
            inner.hot_store("k"),
            Superseded::unset(),
        ));
        let loader = std::mem::size_of_val(&inner.loader.load("k"));
        assert!(
            load <= loader + 512,
            "a load's task is {load} bytes, its loader's future {loader}"
        );
    }

    /// Issue 16's scan: keys asked for again and again, then a scan of one-off keys four times
    /// the cache's size. With admission the scan's keys are refused once the cache is full (each
    /// was asked for once, the entry it would evict more often) and the proven keys stay; without
    /// it, LRU lets the scan push every one of them out.
    #[tokio::test]
    async fn with_admission_a_scan_of_one_off_keys_leaves_the_proven_keys_in_place() {
        for admission in [true, false] {
            let loader = Arc::new(Versioned::default());
            let cache = Groupcache::builder("g", "http://127.0.0.1:1", loader.clone())
                .cache_bytes(8_000)
                .hot_cache_bytes(0)
                .admission(admission)
                .build()
                .unwrap();
            let proven: Vec<String> = (0..50).map(|i| format!("hot-{i}")).collect();
            for _ in 0..3 {
                for key in &proven {
                    cache.get(key).await.unwrap();
                }
            }
            assert_eq!(loader.runs.load(Ordering::SeqCst), 50, "each loaded once");
            for i in 0..500 {
                cache.get(&format!("scan-{i}")).await.unwrap();
            }
            let before = loader.runs.load(Ordering::SeqCst);
            for key in &proven {
                cache.get(key).await.unwrap();
            }
            let reloaded = loader.runs.load(Ordering::SeqCst) - before;
            let expected = if admission { 0 } else { 50 };
            assert_eq!(
                reloaded, expected,
                "admission {admission}: proven keys reloaded"
            );
        }
    }

    /// The hard interleaving: the load has checked that no write overtook it, then `remove` runs
    /// to completion, then the load stores. The removed value must not be cached.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remove_between_the_check_and_the_store_keeps_the_old_value_out() {
        let (cache, loader) = single();
        let (reached, resume) = cache.inner.pause.arm();
        let load = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get("k").await }
        });
        reached.notified().await;
        loader.generation.store(1, Ordering::SeqCst);
        cache.remove("k").await.unwrap();
        resume.notify_one();
        assert_eq!(
            load.await.unwrap().unwrap(),
            "k@0",
            "the caller gets what it loaded"
        );
        assert!(
            cache.inner.peek("k").is_none(),
            "the removed value was cached"
        );
        assert_eq!(cache.get("k").await.unwrap(), "k@1");
        assert_eq!(loader.runs.load(Ordering::SeqCst), 2);
    }

    /// A load that read the old ring, in which this replica owned the key, stores after the ring
    /// changed and gave the key to another replica: the value must not stay in main unbounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_that_read_the_old_ring_stores_no_unbounded_copy_after_a_ring_change() {
        const BOUND: Duration = Duration::from_millis(50);
        let (me, other) = ("http://127.0.0.1:1", "http://127.0.0.1:2");
        let loader = Arc::new(Versioned::default());
        let cache = Groupcache::builder("g", me, loader.clone())
            .hot_max_age(BOUND)
            .build()
            .unwrap();
        let ring = crate::ring::Ring::new(crate::RingMode::default(), &[me, other]);
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|key| ring.owner(key.as_bytes()) == Some(1))
            .unwrap();
        // The single-replica ring settles, so the load stores as owned, unbounded.
        tokio::time::sleep(BOUND * 2).await;
        let (reached, resume) = cache.inner.pause.arm();
        let load = tokio::spawn({
            let (cache, key) = (cache.clone(), key.clone());
            async move { cache.get(&key).await }
        });
        reached.notified().await;
        cache.set_peers([me, other]).unwrap();
        resume.notify_one();
        load.await.unwrap().unwrap();
        let past_bound = now_nanos() + 2 * i64::try_from(BOUND.as_nanos()).unwrap();
        assert!(
            cache.inner.main.get(&key, past_bound).is_none(),
            "a key this replica no longer owns was kept in main without the bound"
        );
    }

    /// A `set` of another key while a load runs (the soak test's keys loaded twice): the key
    /// shares the cache's write stripe with the loading one, and the loaded value must still be
    /// kept, or the next get loads it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_set_of_another_key_during_a_load_keeps_the_loaded_value() {
        let (cache, loader) = single();
        let (reached, resume) = cache.inner.pause.arm();
        let load = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get("k").await }
        });
        reached.notified().await;
        for other in crate::caches::tests::same_stripe("k").take(2) {
            cache.set(&other, &"set".to_owned(), None).await.unwrap();
        }
        resume.notify_one();
        assert_eq!(load.await.unwrap().unwrap(), "k@0");
        assert_eq!(cache.get("k").await.unwrap(), "k@0");
        assert_eq!(
            loader.runs.load(Ordering::SeqCst),
            1,
            "the key was loaded again"
        );
    }

    /// The same with `set`: the older loaded value must not overwrite the one set.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_set_between_the_check_and_the_store_is_not_overwritten() {
        let (cache, loader) = single();
        let (reached, resume) = cache.inner.pause.arm();
        let load = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get("k").await }
        });
        reached.notified().await;
        cache.set("k", &"set".to_owned(), None).await.unwrap();
        resume.notify_one();
        assert_eq!(load.await.unwrap().unwrap(), "k@0");
        assert_eq!(
            cache.get("k").await.unwrap(),
            "set",
            "the set value was overwritten"
        );
        assert_eq!(loader.runs.load(Ordering::SeqCst), 1);
    }
}
