//! A key's journey through the caches, the ring, the flights and the wire, read top to bottom in
//! [`Inner::get`]: the engine of one group, behind its public handle (`group/mod.rs`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tracing::Instrument as _;
use tracing::field::Empty;

use super::config::Config;
use super::led::Coalescing;
use super::store::{Answered, Asked, Caller, Store};
use crate::caches::{Cache, Entry, Kind, Token};
use crate::cluster::ClusterInner;
use crate::cluster::membership::{Member, Membership};
use crate::error::Error;
use crate::flight::{Flight, Outcome, Superseded};
use crate::loader::{Loaded, Loader, Value, now_nanos, to_unix_nanos};
use crate::metrics::Metrics;
use crate::popularity::Popularity;
use crate::trace;
use crate::wire::client::Failure;
use crate::wire::protocol;

/// One group on this replica: its loader, caches and flights, over its cluster's peers.
pub(crate) struct Inner<L: Loader> {
    pub(crate) group: String,
    /// The group's part of its request paths (`protocol::group_segment`).
    pub(crate) path: String,
    pub(crate) cluster: Arc<ClusterInner>,
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
    pub(crate) metrics: Metrics,
    /// A test's pause point just before a load stores its value.
    #[cfg(test)]
    pub(crate) pause: tests::PausePoint,
    /// Single fetches waiting to travel in one batch (`Builder::coalesce_fetches`).
    pub(crate) coalescing: Coalescing,
    /// Keys written here lately, which the hand-off does not peek (`handoff.rs`).
    pub(crate) recent_writes: crate::handoff::RecentWrites,
    /// Writes that missed a member, to send it again (`repairs.rs`).
    pub(crate) repairs: super::repairs::Repairs,
    /// The walk over main after ring changes (`ring_walk.rs`).
    pub(crate) ring_walk: super::ring_walk::RingWalk,
    /// The loader's turns and circuit breaker (`source.rs`).
    pub(crate) source: super::source::Source,
    /// Keys being refreshed ahead from this replica (`refresh.rs`).
    pub(crate) refreshing: super::refreshing::Refreshing,
    /// This group, for the background work a `&self` method starts (a refresh ahead).
    pub(crate) this: std::sync::Weak<Inner<L>>,
}

impl<L: Loader> Inner<L> {
    /// [`Groupcache::get`](crate::Groupcache::get): the journey, then the value decoded.
    /// A hit is answered in this future itself, without the miss's: one small state machine
    /// for the common case.
    pub(crate) async fn get_value(self: &Arc<Self>, key: &str) -> Result<L::Value, Error> {
        // Bound apart from the `match`, and the miss boxed: the future a hit builds and moves
        // stays a few words, nothing of the miss's or of an error's (BENCHMARKS.md).
        let cached = self.start_get(key, Caller::Local)?;
        let entry = match cached {
            Some(entry) => entry,
            None => Box::pin(self.miss(key, Caller::Local)).await?,
        };
        value_of(entry)
    }

    pub(crate) async fn get(self: &Arc<Self>, key: &str, caller: Caller) -> Result<Entry, Error> {
        let cached = self.start_get(key, caller)?;
        match cached {
            Some(entry) => Ok(entry),
            None => Box::pin(self.miss(key, caller)).await,
        }
    }

    /// A get that missed both caches: fetched from the key's owner, or loaded here.
    async fn miss(self: &Arc<Self>, key: &str, caller: Caller) -> Result<Entry, Error> {
        let owner = self.cluster.peers.snapshot().remote_owner(key).cloned();
        // `loads_deduped` is counted by the flight's task, which runs even if this caller gives up.
        // Each miss is boxed: its future nests a flight, the pool and the hand-off (5-11 KiB), and
        // unboxed it made every `get` future, a hit's too, that large: copied into each axum
        // handler's box and each flight's task, it cost a remote get 8 µs (BENCHMARKS.md). An async
        // fn that awaits `get` inline (an axum handler, say) also passed rustc's default query
        // depth (128) when its layout was computed, as the example's handlers did. One box per
        // miss, beside the miss's flight and task.
        let span = tracing::info_span!(
            trace::GET,
            group = self.group.as_str(),
            owner = owner.as_ref().map_or("self", |owner| &*owner.url),
            outcome = Empty,
        );
        let miss = async {
            match owner {
                Some(owner) if caller == Caller::Local && protocol::can_carry(key) => {
                    Box::pin(self.fetch(key, owner)).await
                }
                // Loaded here: into the hot cache for a key another replica owns that the wire
                // cannot carry; for a peer whose ring disagrees with this one's, served, never
                // forwarded, and bounded; as this replica's own otherwise (`load_store`).
                _ => Box::pin(self.load(key, self.load_store(key, caller), true)).await,
            }
        };
        let (outcome, _) = miss.instrument(span.clone()).await;
        let outcome = self.or_stale(key, outcome);
        trace::record_outcome(&span, &outcome);
        outcome
    }

    /// A failed get's `outcome`, or the value this replica still holds for `key` if it expired
    /// less than `max_stale` ago (stale on error, `Builder::max_stale`); counted.
    pub(crate) fn or_stale(&self, key: &str, outcome: Outcome<Entry>) -> Outcome<Entry> {
        let error = match outcome {
            Err(error) if !self.config.max_stale.is_zero() && error.is_source_failure() => error,
            outcome => return outcome,
        };
        let now = now_nanos();
        match self
            .main
            .stale(key, now)
            .or_else(|| self.hot.stale(key, now))
        {
            Some(entry) if entry.kind() == Kind::Value => {
                self.metrics.stale_served();
                tracing::debug!(group = %self.group, %error, "load failed; serving a stale value");
                Ok(entry)
            }
            _ => Err(error),
        }
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
        let membership = self.cluster.peers.snapshot();
        match membership.remote_owner(key) {
            Some(_) if caller == Caller::Local => self.hot_store(key),
            Some(_) => Store::Bounded(main),
            None => self.owned_store(&membership, main),
        }
    }

    /// Where a value of a key this replica owns under `membership` goes.
    pub(crate) fn owned_store(&self, membership: &Membership, token: Token) -> Store {
        if membership.age() >= self.cluster.config.hot_max_age {
            Store::Main(token)
        } else {
            Store::Bounded(token)
        }
    }

    /// The latest expiry of a value whose age is bounded, stored now.
    pub(crate) fn bounded_expiry(&self, expire: i64) -> i64 {
        let max_age = i64::try_from(self.cluster.config.hot_max_age.as_nanos()).unwrap_or(i64::MAX);
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

    /// A main or hot cache hit, counted; a value past its refresh time is refreshed in the
    /// background (`refresh.rs`).
    pub(crate) fn cached(&self, key: &str) -> Option<Entry> {
        let now = now_nanos();
        if let Some(entry) = self.main.get(key, now) {
            self.metrics.main_hit();
            if entry.refresh_due(now) {
                self.refresh_ahead(key, false);
            }
            return Some(entry);
        }
        let entry = self.hot.get(key, now)?;
        self.metrics.hot_hit();
        if entry.refresh_due(now) {
            self.refresh_ahead(key, true);
        }
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
        self.load_as(key, store, deduped, false).await
    }

    /// [`load`](Self::load); `refresh`: a refresh ahead, which loads without looking in the
    /// caches (they hold the value being refreshed) or peeking a previous owner. A get that
    /// joins a refresh's flight gets the refreshed value.
    pub(crate) async fn load_as(
        self: &Arc<Self>,
        key: &str,
        store: Store,
        deduped: bool,
        refresh: bool,
    ) -> (Outcome<Entry>, bool) {
        let this = self.clone();
        let owned_key = key.to_owned();
        self.loads
            .run(key, move |superseded| async move {
                // In the flight's task: counted even when every caller has given up.
                if deduped {
                    this.metrics.load_deduped();
                }
                let loaded =
                    AssertUnwindSafe(this.run_loader(&owned_key, store, superseded, refresh));
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

    /// `refresh`: a refresh ahead, which neither looks in the caches (they hold the value being
    /// refreshed) nor peeks a previous owner.
    async fn run_loader(
        &self,
        key: &str,
        store: Store,
        superseded: Superseded,
        refresh: bool,
    ) -> Outcome<Entry> {
        if !refresh {
            if let Some(entry) = self.peek(key) {
                return Ok(entry);
            }
            // Boxed only when there is a previous owner to peek: its future would otherwise
            // size every load's task, which each load copies into place.
            if let Some((previous, peek)) = self.handoff_source(key)
                && let Some(entry) = Box::pin(self.hand_off(key, previous, peek)).await
            {
                return Ok(self.keep(key, entry, store));
            }
        }
        // The loader in its turn (`source.rs`): queued behind `max_concurrent_loads` others, or
        // refused at once while the circuit is open.
        let turn = self.source.turn(&self.metrics).await?;
        let started = Instant::now();
        let span = tracing::info_span!(
            trace::LOAD,
            group = self.group.as_str(),
            keys = 1,
            outcome = Empty,
            bytes = Empty
        );
        let loaded = self.loader.load(key).instrument(span.clone()).await;
        self.metrics.load_duration.record(started.elapsed());
        turn.done(self.loaded_well(&loaded), &self.metrics);
        let entry = self.loaded_entry(key, loaded);
        trace::record_entry(&span, &entry);
        let entry = match entry {
            Err(error) => {
                if !superseded.get() {
                    self.keep_failure(key, &error, store);
                }
                return Err(error);
            }
            Ok(entry) => entry,
        };
        // A write already overtook this load: skip the copy into the cache. Only a shortcut: the
        // store's token, checked under the cache's lock, is what keeps a later write's value.
        if superseded.get() {
            return Ok(entry);
        }
        #[cfg(test)]
        self.pause_point().await;
        Ok(self.keep(key, entry, store))
    }

    /// A loader's result for `key`, counted and encoded: for a single load and for each key of
    /// a `load_many`.
    pub(crate) fn loaded_entry(
        &self,
        key: &str,
        loaded: Result<Loaded<L::Value>, L::Error>,
    ) -> Outcome<Entry> {
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) if self.loader.is_not_found(&error) => {
                self.metrics.local_load();
                self.metrics.not_found_load();
                // Zero keeps none: expired as it is made, so never stored.
                let expire = now_nanos().saturating_add(nanos(self.config.not_found_ttl));
                return Ok(Entry::new(bytes::Bytes::new(), expire, 0, Kind::NotFound));
            }
            Err(error) => {
                self.metrics.local_load_error();
                tracing::debug!(group = %self.group, key, %error, "loader failed");
                return Err(Error::Loader(Arc::new(error)));
            }
        };
        self.metrics.local_load();
        let Loaded {
            value,
            expires_at,
            refresh_at,
        } = loaded;
        let bytes = value.encode().map_err(|e| Error::Codec(Arc::new(e)))?;
        // Without the loader's own handle, a `Bytes` value is the only handle to its buffer, and
        // the cache can keep that buffer instead of copying it.
        drop(value);
        let expire = to_unix_nanos(expires_at);
        let refresh = match (refresh_at, self.config.refresh_after) {
            (Some(at), _) => to_unix_nanos(Some(at)),
            (None, Some(after)) => now_nanos().saturating_add(nanos(after)),
            (None, None) => 0,
        };
        // A refresh time at or past the expiry is none: the value expires first.
        let refresh = if expire != 0 && refresh >= expire {
            0
        } else {
            refresh
        };
        Ok(Entry::new(bytes, expire, refresh, Kind::Value))
    }

    /// Whether a loader call went well for the circuit breaker: a value or a negative answer.
    pub(crate) fn loaded_well(&self, loaded: &Result<Loaded<L::Value>, L::Error>) -> bool {
        match loaded {
            Ok(_) => true,
            Err(error) => self.loader.is_not_found(error),
        }
    }

    /// Keeps a failed load's error for `cache_errors` (if set), where its value would have
    /// gone: gets of the key answer it without a load until it expires.
    pub(crate) fn keep_failure(&self, key: &str, error: &Error, store: Store) {
        let ttl = self.config.error_ttl;
        let Error::Loader(source) = error else {
            return;
        };
        if ttl.is_zero() {
            return;
        }
        // A value kept for stale serving would be replaced by the error: stale on error wins.
        let now = now_nanos();
        if !self.config.max_stale.is_zero()
            && (self.main.stale(key, now).is_some() || self.hot.stale(key, now).is_some())
        {
            return;
        }
        let expire = now_nanos().saturating_add(nanos(ttl));
        let failed = Entry::new(
            bytes::Bytes::from(source.to_string()),
            expire,
            0,
            Kind::Failed,
        );
        self.store(key, failed, store);
    }

    /// [`store`](Self::store)s `entry`; the entry as the cache holds it.
    pub(crate) fn keep(&self, key: &str, entry: Entry, store: Store) -> Entry {
        let kept = entry.with_value(bytes::Bytes::new());
        kept.with_value(self.store(key, entry, store))
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
        owner: &Arc<Member>,
        superseded: Superseded,
    ) -> Outcome<Entry> {
        let hot = self.hot_store(key);
        if let Some(entry) = self.peek(key) {
            return Ok(entry);
        }
        if !owner.is_suspected() {
            let asked = self.ask_owner(owner, key).await;
            match asked {
                Ok((entry, Answered::Owner)) => {
                    owner.trust();
                    self.metrics.peer_load();
                    return Ok(self.promote(key, entry, hot, &superseded));
                }
                Ok((entry, Answered::Successor(successor))) => {
                    successor.trust();
                    self.metrics.successor_load();
                    return Ok(self.promote(key, entry, hot, &superseded));
                }
                // Loaded here, as the key's successor, and kept as such.
                Ok((entry, Answered::Here)) => return Ok(entry),
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
        let successor = self.cluster.peers.snapshot().successor(key).cloned();
        match successor {
            Some(successor) if successor.is_self => {
                return self
                    .load(key, Store::Bounded(self.main.token(key)), false)
                    .await
                    .0;
            }
            Some(successor) if !successor.is_suspected() && self.stands_in(&successor) => {
                let asked = self.ask(&successor, key, Asked::Successor).await;
                match asked {
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
    pub(crate) fn stands_in(&self, peer: &Member) -> bool {
        let endpoint = &peer.endpoint;
        endpoint.batches.load(std::sync::atomic::Ordering::Relaxed)
            || (self.cluster.config.ring_mode == crate::RingMode::Balanced
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
        if self.cluster.config.handoff_timeout.is_zero() || !protocol::can_carry(key) {
            return None;
        }
        // Written here lately: the owner had its share of the write first, and the previous
        // owner may not have had its own yet (`RecentWrites`).
        if self.recent_writes.written_recently(key_hash(key)) {
            return None;
        }
        let membership = self.cluster.peers.snapshot();
        let owned = membership.owner(key).is_some_and(|owner| owner.is_self);
        if !owned || membership.age() >= self.cluster.config.hot_max_age {
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
        let timeout = self.cluster.config.handoff_timeout;
        let path = self.key_path(&previous, key);
        let span = tracing::info_span!(
            trace::PEEK,
            group = self.group.as_str(),
            peer = &*previous.url,
            outcome = Empty,
            bytes = Empty
        );
        let peeked = self
            .cluster
            .client
            .peek(&previous.endpoint, path, timeout)
            .instrument(span.clone())
            .await;
        match &peeked {
            Ok(Some(response)) => trace::record_bytes(
                &span,
                "found",
                response.value.as_ref().map_or(0, |v| v.len()),
            ),
            Ok(None) => trace::record_bytes(&span, "not cached", 0),
            Err(_) => trace::record_bytes(&span, "error", 0),
        }
        let entry = match peeked {
            Ok(Some(response)) => Some(Entry::from(response)),
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

    /// One `GET` of `key` from `peer`, timed, in a span of its own ([`trace::FETCH`] for the
    /// key's owner, [`trace::SUCCESSOR`] for its successor).
    pub(crate) async fn ask(&self, peer: &Member, key: &str, to: Asked) -> Result<Entry, Failure> {
        let span = match to {
            Asked::Owner => {
                tracing::info_span!(
                    trace::FETCH,
                    group = self.group.as_str(),
                    peer = &*peer.url,
                    keys = 1,
                    outcome = Empty,
                    bytes = Empty
                )
            }
            Asked::Successor => {
                tracing::info_span!(
                    trace::SUCCESSOR,
                    group = self.group.as_str(),
                    peer = &*peer.url,
                    outcome = Empty,
                    bytes = Empty
                )
            }
            Asked::Refresh => {
                tracing::info_span!(
                    trace::REFRESH,
                    group = self.group.as_str(),
                    peer = &*peer.url,
                    outcome = Empty,
                    bytes = Empty
                )
            }
        };
        let refresh = matches!(to, Asked::Refresh);
        async {
            let asked = self.ask_untraced(peer, key, refresh).await;
            trace::record_asked(&tracing::Span::current(), asked.as_ref());
            asked
        }
        .instrument(span)
        .await
    }

    /// [`ask`](Self::ask), outside its span.
    ///
    /// The peer is told how long this replica waits (three quarters of `peer_timeout`); if its
    /// load is not done by then it says so, and is asked again, for at most [`PEER_ROUNDS`]
    /// rounds: a load longer than `peer_timeout` is waited for, and loaded once, by the owner.
    async fn ask_untraced(
        &self,
        peer: &Member,
        key: &str,
        refresh: bool,
    ) -> Result<Entry, Failure> {
        let max_wait = self.cluster.config.peer_timeout * 3 / 4;
        for round in 0..PEER_ROUNDS {
            let started = Instant::now();
            let path = self.key_path(peer, key);
            let request = self
                .cluster
                .client
                .get(&peer.endpoint, path, max_wait, refresh);
            let fetched = until_unresponsive(&self.cluster, peer, request).await;
            let took = started.elapsed();
            self.metrics.peer_request_duration.record(took);
            if let Some(response) = fetched? {
                // The hedge's estimate: answers at the first ask only; a later round follows a
                // "pending" answer, a load longer than any hedge delay.
                if round == 0 {
                    peer.endpoint.latency.record(took);
                }
                return Ok(Entry::from(response));
            }
        }
        // Still loading after every round: as after a timeout.
        Err(Failure::Peer(crate::PeerError::Timeout))
    }

    /// A fetched value, kept in the hot cache if this replica asks for the key often.
    pub(crate) fn promote(
        &self,
        key: &str,
        entry: Entry,
        hot: Store,
        superseded: &Superseded,
    ) -> Entry {
        let requests = self.popularity.estimate(key_hash(key));
        if !superseded.get() && requests >= self.config.hot_promotion_requests {
            let _ = self.store(key, entry.clone(), hot);
        }
        entry
    }

    /// Suspects `peer` if `error` says it is down (it could not be reached, it stopped answering,
    /// or it did not answer or accept a connection in time while the failure detector heard
    /// nothing else from it either) and suspicion is on; whether it is suspected now. An error
    /// status or a malformed answer comes from a replica that is up, which keeps its keys; so
    /// does a timeout of a peer whose heartbeats are answered: a slow load, or a listen queue
    /// full for a moment (a burst of new connections to a busy replica drops SYNs, and the
    /// retransmission comes after the 1 s connect timeout), not a dead owner.
    pub(crate) fn suspect(&self, peer: &Member, error: &crate::PeerError) -> bool {
        let down = match error {
            crate::PeerError::Request(_) | crate::PeerError::Unresponsive => true,
            crate::PeerError::Timeout | crate::PeerError::ConnectTimeout { .. } => {
                !self.cluster.heard_lately(peer)
            }
            _ => false,
        };
        down && self.cluster.suspect_member(peer, error)
    }

    /// Caches the entry unless the key was written since the store's token was taken; returns the
    /// value as the cache holds it (or as given, if not kept).
    pub(crate) fn store(&self, key: &str, mut entry: Entry, store: Store) -> bytes::Bytes {
        // Expired already: a negative answer kept for no time, or a stale value an owner served
        // after its load failed. Answered, never kept.
        if entry.expire != 0 && entry.expire <= now_nanos() {
            return entry.value;
        }
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

    /// The request path for `key` of this group on `peer`.
    pub(crate) fn key_path(&self, peer: &Member, key: &str) -> String {
        protocol::key_path(&peer.path, &self.path, key)
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
}

#[cfg(test)]
impl<L: Loader> Inner<L> {
    async fn pause_point(&self) {
        self.pause.pass().await;
    }
}

/// `request` to `peer`, or [`PeerError::Unresponsive`](crate::PeerError::Unresponsive) as soon as
/// the failure detector suspects `peer` (at once if it is suspected already): a request waiting on
/// a peer that stopped answering leaves for the key's successor within the detection time.
pub(crate) async fn until_unresponsive<T>(
    cluster: &Arc<ClusterInner>,
    peer: &Member,
    request: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    if cluster.config.failure_detection.is_zero() {
        return request.await;
    }
    cluster.watch_liveness();
    tokio::select! {
        biased;
        answered = request => answered,
        () = peer.until_suspected() => Err(Failure::Peer(crate::PeerError::Unresponsive)),
    }
}

/// [`until_unresponsive`] for a request that fails only with a peer's error (a write, a purge):
/// that error, or [`PeerError::Unresponsive`](crate::PeerError::Unresponsive) once `peer` is
/// suspected.
pub(crate) async fn until_unresponsive_peer<T>(
    cluster: &Arc<ClusterInner>,
    peer: &Member,
    request: impl std::future::Future<Output = Result<T, crate::PeerError>>,
) -> Result<T, crate::PeerError> {
    let request = async { request.await.map_err(Failure::Peer) };
    until_unresponsive(cluster, peer, request)
        .await
        .map_err(|failure| match failure {
            Failure::Peer(error) => error,
            Failure::Loader(message) => crate::PeerError::Request(message),
        })
}

/// `duration` in nanoseconds, saturated.
pub(crate) fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// What a get answers for `entry`: its value decoded, or the error a negative answer or a
/// cached failure stands for.
#[inline]
pub(crate) fn value_of<V: Value>(entry: Entry) -> Result<V, Error> {
    if entry.is_value() {
        return V::decode(entry.value).map_err(|e| Error::Codec(Arc::new(e)));
    }
    Err(answer_error(&entry))
}

/// The error a negative answer or a cached failure stands for: out of the hit's way.
#[cold]
#[inline(never)]
fn answer_error(entry: &Entry) -> Error {
    match entry.kind() {
        Kind::Failed => Error::LoaderFailedRecently {
            message: String::from_utf8_lossy(&entry.value).into_owned(),
        },
        Kind::NotFound | Kind::Value => Error::NotFound,
    }
}

/// Requests for the same key (or batch) to one peer that answers "still loading", at most; then
/// it is loaded here, as after a timeout.
pub(crate) const PEER_ROUNDS: usize = 4;

/// The popularity sketch's window: estimates are requests per this long.
pub(crate) const POPULARITY_WINDOW: Duration = Duration::from_secs(60);

/// The key's hash for the popularity sketch: the caches' own (`caches::key_hash`).
pub(crate) fn key_hash(key: &str) -> u64 {
    crate::caches::key_hash(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Groupcache;
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
        let member = inner.cluster.peers.snapshot().owner("k").cloned().unwrap();
        let get = std::mem::size_of_val(&inner.get("k", Caller::Local));
        assert!(get <= 256, "a get's future is {get} bytes");
        // The handle's get, which a hit builds and moves: its miss is boxed, so a few words.
        let handle = std::mem::size_of_val(&cache.get("k"));
        assert!(handle <= 96, "the handle's get future is {handle} bytes");
        let flight = std::mem::size_of_val(&inner.fetch("k", member.clone()));
        assert!(flight <= 512, "a fetch's flight future is {flight} bytes");
        // The task: the request to the owner and little more, not the successor's or a load's.
        let ask = std::mem::size_of_val(&inner.ask(&member, "k", Asked::Owner));
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
            false,
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
        let ring = crate::cluster::ring::Ring::new(crate::RingMode::default(), &[me, other]);
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
