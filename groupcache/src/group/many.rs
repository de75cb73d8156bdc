//! Many keys at once: [`Groupcache::get_many`] on the asking replica, `Inner::serve_batch` on the
//! owner.
//!
//! Each key takes the journey of a single `get` (`Inner::get`), and joins the same flights: a key
//! owned by a peer that takes batches joins its *fetch* flight here, and the keys this call leads
//! travel to their owner in one request; every other key (owned here, owned by a peer that does
//! not batch, or one a URL cannot carry) goes through `Inner::get` itself. So a key asked for by a
//! `get_many` and a concurrent `get`, on any replicas, is loaded once cluster-wide. The keys an
//! owner must load (its own in a `get_many`, or a peer's batch) join their *load* flights, and the
//! keys this call leads go to one [`Loader::load_many`].

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use futures_util::FutureExt;
use groupcache_rs_pb::{BatchEntry, BatchRequest};
use tokio::sync::oneshot;
use tracing::Instrument as _;
use tracing::field::Empty;

use super::Groupcache;
use super::journey::{Inner, PEER_ROUNDS, until_unresponsive};
use super::led::{Led, once_each};
use super::store::{Caller, Store};
use crate::caches::Entry;
use crate::cluster::membership::Member;
use crate::flight::{Flight, Outcome, panic_message};
use crate::loader::Results;
use crate::lock;
use crate::trace;
use crate::wire::client::Failure;
use crate::wire::protocol::{self, BATCH_KEY};
use crate::{Error, Loader, PeerError};

impl<L: Loader> Groupcache<L> {
    /// The values of `keys`, one result per key in the same order, each on its own: one key's
    /// loader error or oversize does not fail the others.
    ///
    /// Keys already cached are answered without any request. The rest are grouped by owner, and
    /// each owner that takes batches (another replica of this library that has answered this one
    /// before) is asked for its keys in one request, all owners in parallel; keys owned by a
    /// golang/groupcache peer, or by a peer not heard from yet, are fetched one by one as
    /// [`get`](Self::get) does. Each key joins the same flights as a `get` of it would, so it is
    /// loaded once cluster-wide however the two race.
    ///
    /// Use it wherever the keys are known together (a page of rows, a fan-out over ids) rather
    /// than a `get` per key: in `groupcache-bench batch` (BENCHMARKS.md), 1,000 keys cached on
    /// the two other replicas of three took 2 peer requests instead of 1,000, and 7.7 ms against
    /// 43 ms for 1,000 concurrent `get`s. Cold, with a batch [`Loader::load_many`], each owner
    /// loaded its keys in one call. Keys owned by golang/groupcache peers still cost one request
    /// each, so in a mixed ring the saving is the share of keys Rust replicas own.
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
    /// let rows = cache.get_many(&["1", "2", "3"]).await;
    /// assert_eq!(rows.len(), 3);
    /// assert_eq!(rows[1].as_deref().ok(), Some("row for 2"));
    /// # Ok(()) }
    /// ```
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Vec<Result<L::Value, Error>> {
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        let entries = self.inner.get_many(&keys).await;
        entries
            .into_iter()
            .map(|entry| entry.and_then(super::journey::value_of))
            .collect()
    }
}

type Joined<'a> = Pin<Box<dyn Future<Output = (Outcome<Entry>, bool)> + Send + 'a>>;

impl<L: Loader> Inner<L> {
    async fn get_many(self: &Arc<Self>, keys: &[&str]) -> Vec<Outcome<Entry>> {
        let span = tracing::info_span!(
            trace::GET_MANY,
            group = self.group.as_str(),
            keys = keys.len()
        );
        self.get_many_traced(keys).instrument(span).await
    }

    async fn get_many_traced(self: &Arc<Self>, keys: &[&str]) -> Vec<Outcome<Entry>> {
        let mut results: Vec<Option<Outcome<Entry>>> = vec![None; keys.len()];
        // Keys that take `Inner::get` as they are; keys owned here; keys by batching owner.
        let mut singles = Vec::new();
        let mut owned = Vec::new();
        let mut by_owner: HashMap<Arc<str>, (Arc<Member>, Vec<usize>)> = HashMap::new();
        {
            let membership = self.cluster.peers.snapshot();
            for (index, &key) in keys.iter().enumerate() {
                let owner = membership.remote_owner(key);
                if owner.is_none() {
                    owned.push(index);
                    continue;
                }
                let Some(owner) = owner.filter(|owner| {
                    protocol::can_carry(key) && owner.endpoint.batches.load(Ordering::Relaxed)
                }) else {
                    singles.push(index);
                    continue;
                };
                // The start of `Inner::get`, for keys that go on to a batch.
                if let Some(answered) = self.start_get(key, Caller::Local).transpose() {
                    results[index] = Some(answered);
                    continue;
                }
                by_owner
                    .entry(owner.url.clone())
                    .or_insert_with(|| (owner.clone(), Vec::new()))
                    .1
                    .push(index);
            }
        }
        let singly = futures_util::future::join_all(
            singles
                .iter()
                .map(|&index| self.get(keys[index], Caller::Local)),
        );
        let mut batches = Vec::new();
        for (owner, indexes) in by_owner.into_values() {
            for chunk in indexes.chunks(self.cluster.config.max_batch_keys) {
                let chunk = chunk.to_vec();
                let owner = owner.clone();
                batches.push(async move {
                    let chunk_keys: Vec<&str> = chunk.iter().map(|&index| keys[index]).collect();
                    let outcomes = self.fetch_many(owner, &chunk_keys).await;
                    (chunk, outcomes)
                });
            }
        }
        let batched = futures_util::future::join_all(batches);
        let owned_keys: Vec<&str> = owned.iter().map(|&index| keys[index]).collect();
        let loaded = self.load_many(&owned_keys, Caller::Local);
        let (singly, batched, loaded) = futures_util::future::join3(singly, batched, loaded).await;
        for (&index, outcome) in owned.iter().zip(loaded) {
            results[index] = Some(outcome);
        }
        for (&index, outcome) in singles.iter().zip(singly) {
            results[index] = Some(outcome);
        }
        for (chunk, outcomes) in batched {
            for (&index, outcome) in chunk.iter().zip(outcomes) {
                results[index] = Some(outcome);
            }
        }
        // A key whose load failed is answered a stale value, as a single get's (`or_stale`).
        keys.iter()
            .zip(results)
            .map(|(key, result)| self.or_stale(key, result.unwrap_or(Err(Error::LoadAbandoned))))
            .collect()
    }

    /// Joins the fetch flight of each of `keys`, all owned by `owner`, and asks the owner in one
    /// request for the keys this call leads.
    async fn fetch_many(
        self: &Arc<Self>,
        owner: Arc<Member>,
        keys: &[&str],
    ) -> Vec<Outcome<Entry>> {
        let this = self.clone();
        let store = |key: &str| self.hot_store(key);
        self.join_flights(&self.fetches, keys, store, None, move |led| {
            tokio::spawn(this.fetch_batch(owner, led, None).in_current_span());
        })
        .await
        .into_iter()
        .map(|outcome| outcome.unwrap_or(Err(Error::LoadAbandoned)))
        .collect()
    }

    /// Loads `keys`, all owned here or asked for by a peer, through their load flights, with one
    /// [`Loader::load_many`] for the keys this call leads. Mirrors `Inner::get` for such keys.
    pub(crate) async fn load_many(
        self: &Arc<Self>,
        keys: &[&str],
        caller: Caller,
    ) -> Vec<Outcome<Entry>> {
        self.load_many_by(keys, caller, None)
            .await
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Err(Error::LoadAbandoned)))
            .collect()
    }

    /// [`load_many`](Self::load_many), answering by `deadline` if given: a key still loading then
    /// is `None` (its load goes on, in its flight's task, for whoever asks next).
    pub(crate) async fn load_many_by(
        self: &Arc<Self>,
        keys: &[&str],
        caller: Caller,
        deadline: Option<tokio::time::Instant>,
    ) -> Vec<Option<Outcome<Entry>>> {
        let mut results: Vec<Option<Outcome<Entry>>> = vec![None; keys.len()];
        let mut loading = Vec::new();
        for (index, &key) in keys.iter().enumerate() {
            match self.start_get(key, caller).transpose() {
                Some(answered) => results[index] = Some(answered),
                None => loading.push(index),
            }
        }
        let loading_keys: Vec<&str> = loading.iter().map(|&index| keys[index]).collect();
        let this = self.clone();
        let store = |key: &str| self.load_store(key, caller);
        let loaded = self
            .join_flights(&self.loads, &loading_keys, store, deadline, move |led| {
                tokio::spawn(this.load_batch(led).in_current_span());
            })
            .await;
        for (&index, outcome) in loading.iter().zip(loaded) {
            results[index] = outcome;
        }
        results
    }

    /// Joins `flight` for each of `keys` and hands the keys this call leads to `lead` (which
    /// must answer each of them, in a task of its own); the outcome of every key, in order, or
    /// `None` for a key not answered by `deadline`.
    async fn join_flights(
        &self,
        flight: &Flight<Entry>,
        keys: &[&str],
        store: impl Fn(&str) -> Store + Sync,
        deadline: Option<tokio::time::Instant>,
        lead: impl FnOnce(Vec<Led>),
    ) -> Vec<Option<Outcome<Entry>>> {
        let led = Arc::new(Mutex::new(Vec::new()));
        let mut joined: Vec<Joined<'_>> = keys
            .iter()
            .map(|&key| {
                let led = led.clone();
                let store = &store;
                let flight = flight.run(key, move |superseded| {
                    let (outcome, receiver) = oneshot::channel();
                    lock(&led).push(Led {
                        key: key.to_owned(),
                        outcome,
                        superseded,
                        store: store(key),
                        also: Vec::new(),
                    });
                    async move { receiver.await.unwrap_or(Err(Error::LoadAbandoned)) }
                });
                Box::pin(flight) as Joined<'_>
            })
            .collect();
        // One poll each joins or leads every key's flight: `Flight::run` takes the key's place in
        // the map, and calls the work's closure when it leads, before it first waits.
        let mut done: Vec<Option<(Outcome<Entry>, bool)>> = vec![None; keys.len()];
        std::future::poll_fn(|context| {
            for (flight, done) in joined.iter_mut().zip(done.iter_mut()) {
                if let Poll::Ready(outcome) = flight.as_mut().poll(context) {
                    *done = Some(outcome);
                }
            }
            Poll::Ready(())
        })
        .await;
        let led = std::mem::take(&mut *lock(&led));
        if !led.is_empty() {
            // In a task of its own, like every flight's work: a caller that gives up does not
            // leave the other waiters of these keys without an answer.
            lead(led);
        }
        let mut outcomes = Vec::with_capacity(keys.len());
        for (flight, done) in joined.into_iter().zip(done) {
            let done = match (done, deadline) {
                (Some(done), _) => Some(done),
                (None, None) => Some(flight.await),
                // Dropping the flight's future leaves its work running in its task.
                (None, Some(deadline)) => tokio::time::timeout_at(deadline, flight).await.ok(),
            };
            outcomes.push(done.map(|(outcome, started)| {
                if started {
                    self.metrics.load_deduped();
                }
                outcome
            }));
        }
        outcomes
    }

    /// Runs the loader once for all the led keys; each key's flight is answered as soon as the
    /// loader has put its result. Mirrors `Inner::run_loader`, which does the same for one key.
    async fn load_batch(self: Arc<Self>, led: Vec<Led>) {
        let mut loading = Vec::with_capacity(led.len());
        for led in once_each(led) {
            match self.peek(&led.key) {
                Some(entry) => led.answer(Ok(entry)),
                None => loading.push(led),
            }
        }
        if loading.is_empty() {
            return;
        }
        let keys: Vec<String> = loading.iter().map(|led| led.key.clone()).collect();
        let (results, arriving) = Results::new(keys.len());
        let panicked: Mutex<Option<String>> = Mutex::new(None);
        let short_circuited: Mutex<Option<Error>> = Mutex::new(None);
        let started = Instant::now();
        let span = tracing::info_span!(
            trace::LOAD,
            group = self.group.as_str(),
            keys = keys.len(),
            outcome = Empty,
            bytes = Empty
        );
        // Whether every key's load went well, for the circuit breaker.
        let well = std::sync::atomic::AtomicBool::new(true);
        let loader = async {
            // One turn for the call (`source.rs`); with the circuit open no key is loaded, and
            // each fails with the breaker's error.
            match self.source.turn(&self.metrics).await {
                Ok(turn) => {
                    let load_many = self.loader.load_many(&keys, &results).instrument(span);
                    let run = AssertUnwindSafe(load_many).catch_unwind();
                    if let Err(panic) = run.await {
                        *lock(&panicked) = Some(panic_message(panic.as_ref()));
                    }
                    self.metrics.load_duration.record(started.elapsed());
                    // Keys without a result fail now, not when the last key is in.
                    drop(results);
                    Some(turn)
                }
                Err(error) => {
                    *lock(&short_circuited) = Some(error);
                    drop(results);
                    None
                }
            }
        };
        let finishing = loading.into_iter().zip(arriving).map(|(led, arriving)| {
            let (this, panicked, short_circuited, well) =
                (&self, &panicked, &short_circuited, &well);
            async move {
                let outcome = match arriving.await {
                    Ok(loaded) => {
                        if !this.loaded_well(&loaded) {
                            well.store(false, std::sync::atomic::Ordering::Relaxed);
                        }
                        match this.loaded_entry(&led.key, loaded) {
                            // Overtaken by a write: answered, not kept (as a single load).
                            Ok(entry) if led.superseded.get() => Ok(entry),
                            Ok(entry) => Ok(this.keep(&led.key, entry, led.store)),
                            Err(error) => {
                                if !led.superseded.get() {
                                    this.keep_failure(&led.key, &error, led.store);
                                }
                                Err(error)
                            }
                        }
                    }
                    Err(_) => match (lock(panicked).clone(), lock(short_circuited).clone()) {
                        (Some(message), _) => {
                            this.metrics.local_load_error();
                            Err(Error::LoaderPanicked(message))
                        }
                        (None, Some(error)) => Err(error),
                        (None, None) => Err(Error::NotLoaded),
                    },
                };
                led.answer(outcome);
            }
        });
        let (turn, ()) = futures_util::future::join(loader, async {
            futures_util::future::join_all(finishing).await;
        })
        .await;
        if let Some(turn) = turn {
            let well = well.load(std::sync::atomic::Ordering::Relaxed) && lock(&panicked).is_none();
            turn.done(well, &self.metrics);
        }
    }

    /// The owner's answer for the led keys, each handed to its flight as soon as it is known.
    ///
    /// The owner is told how long this replica waits (`max_wait_ms`, three quarters of
    /// `peer_timeout`), and answers by then, marking the keys still loading `pending`: those are
    /// asked for again, in another batch, while the owner answers. So a batch whose loads take
    /// longer than `peer_timeout` (1,024 cold keys at 320 ms each) is loaded once, by the owner,
    /// and never makes it suspected. The owner also answers `pending` the keys past its
    /// answer's room (`max_batch_bytes`, or less when its budget of answers in flight is
    /// short): a batch of more values than one answer carries takes as many rounds as it needs,
    /// each answering some keys. Only rounds that answer none are counted, [`PEER_ROUNDS`] at
    /// most; after the last, the keys left are loaded here.
    ///
    /// `answered` is told when the owner's first answer (or its failure) is known: coalescing
    /// hands its request slot on then.
    pub(crate) async fn fetch_batch(
        self: Arc<Self>,
        owner: Arc<Member>,
        led: Vec<Led>,
        mut answered: Option<oneshot::Sender<()>>,
    ) {
        let mut asking = Vec::with_capacity(led.len());
        for led in once_each(led) {
            match self.peek(&led.key) {
                Some(entry) => led.answer(Ok(entry)),
                None => asking.push(led),
            }
        }
        // Rounds that answered no key; a round that answers some makes progress, and there are
        // at most as many of those as keys.
        let mut idle = 0;
        loop {
            if asking.is_empty() {
                return;
            }
            if owner.is_suspected() {
                self.from_successors(asking).await;
                return;
            }
            let entries = self.ask_batch(&owner, &asking).await;
            if let Some(answered) = answered.take() {
                let _ = answered.send(());
            }
            let Some(entries) = entries else {
                self.from_successors(asking).await;
                return;
            };
            let is_pending = |entry: &Option<BatchEntry>| {
                entry
                    .as_ref()
                    .is_some_and(|entry| entry.pending == Some(true))
            };
            if entries.iter().all(is_pending) {
                idle += 1;
            }
            let mut pending = Vec::new();
            let mut settling = Vec::with_capacity(asking.len());
            for (led, entry) in asking.into_iter().zip(entries) {
                if is_pending(&entry) && idle < PEER_ROUNDS {
                    pending.push(led);
                } else {
                    settling.push((led, entry));
                }
            }
            let settled = settling.into_iter().map(|(led, entry)| {
                let this = &self;
                let owner = &owner;
                async move {
                    let outcome = this.settle(&led, owner, entry).await;
                    led.answer(outcome);
                }
            });
            futures_util::future::join_all(settled).await;
            asking = pending;
        }
    }

    /// One batch request for `asking` to `owner`: an entry per key (`None`: the request failed,
    /// load it here), or `None` if the owner is suspected down now (ask the successors).
    async fn ask_batch(
        &self,
        owner: &Arc<Member>,
        asking: &[Led],
    ) -> Option<Vec<Option<BatchEntry>>> {
        let config = &self.cluster.config;
        let max_wait = config.peer_timeout * 3 / 4;
        let request = BatchRequest {
            group: Some(self.group.clone()),
            keys: asking.iter().map(|led| led.key.clone()).collect(),
            max_answer_bytes: Some(config.max_batch_bytes as u64),
            max_wait_ms: Some(u64::try_from(max_wait.as_millis()).unwrap_or(u64::MAX)),
        };
        let path = self.key_path(owner, BATCH_KEY);
        let started = Instant::now();
        let answer = self.cluster.client.batch(&owner.endpoint, path, &request);
        let span = tracing::info_span!(
            trace::FETCH,
            group = self.group.as_str(),
            peer = &*owner.url,
            keys = asking.len(),
            outcome = Empty,
            bytes = Empty
        );
        let answer = until_unresponsive(&self.cluster, owner, answer)
            .instrument(span.clone())
            .await;
        match &answer {
            Ok(entries) => {
                let bytes = entries
                    .iter()
                    .filter_map(|entry| entry.value.as_ref())
                    .map(|value| value.len())
                    .sum();
                trace::record_bytes(&span, "ok", bytes);
            }
            Err(_) => trace::record_bytes(&span, "error", 0),
        }
        self.metrics.peer_request_duration.record(started.elapsed());
        drop(request);
        let entries = match answer {
            Ok(entries) => entries.into_iter().map(Some).collect(),
            // The owner refused the batch itself (e.g. a body over its limit, which depends on
            // its own configuration): it has loaded nothing, so each key is asked for on its own
            // rather than loaded here, which would load it twice.
            Err(Failure::Peer(PeerError::Status { status, message }))
                if (400..500).contains(&status) =>
            {
                tracing::warn!(group = %self.group, peer = %owner.url, status, %message, "peer refused a batch; asking for its keys one by one");
                let skipped = BatchEntry {
                    skipped: Some(true),
                    ..BatchEntry::default()
                };
                vec![Some(skipped); asking.len()]
            }
            Err(Failure::Peer(error)) => {
                self.metrics.peer_error();
                // As a single fetch does: an owner that is down hands its keys to their
                // successors, which every replica picks alike, rather than have each asker
                // load them.
                if self.suspect(owner, &error) {
                    return None;
                }
                tracing::warn!(group = %self.group, peer = %owner.url, %error, keys = asking.len(), "batch to peer failed; loading its keys locally");
                vec![None; asking.len()]
            }
            Err(Failure::Loader(message)) => {
                // Not sent for a batch; a whole-batch loader error is every key's.
                let entry = BatchEntry {
                    loader_error: Some(message),
                    ..BatchEntry::default()
                };
                vec![Some(entry); asking.len()]
            }
        };
        Some(entries)
    }

    /// One key's outcome from its batch entry (`None`: the batch failed), as `fetch_from` has it
    /// from a single answer.
    async fn settle(
        self: &Arc<Self>,
        led: &Led,
        owner: &Arc<Member>,
        entry: Option<BatchEntry>,
    ) -> Outcome<Entry> {
        let key = led.key.as_str();
        let Some(entry) = entry else {
            return self.load(key, self.hot_store(key), false).await.0;
        };
        if let Some(message) = entry.loader_error {
            return Err(Error::RemoteLoader {
                peer: owner.url.to_string(),
                message,
            });
        }
        if let Some(error) = entry.error {
            self.metrics.peer_error();
            tracing::warn!(group = %self.group, peer = %owner.url, key, %error, "peer failed a batched key; loading it locally");
            return self.load(key, self.hot_store(key), false).await.0;
        }
        if entry.pending == Some(true) {
            // Still loading on the owner after the last round: as after a failed request.
            tracing::warn!(group = %self.group, peer = %owner.url, key, "peer still loading a batched key after every round; loading it locally");
            return self.load(key, self.hot_store(key), false).await.0;
        }
        if entry.skipped == Some(true) {
            // Larger than any answer the owner sends: this key on its own, still within its
            // flight.
            return self.fetch_from(key, owner, led.superseded.clone()).await;
        }
        self.metrics.peer_load();
        let entry = Entry::from(entry);
        Ok(self.promote(key, entry, led.store, &led.superseded))
    }

    /// Keys whose owner is suspected down, each from its successor (`Inner::from_successor`).
    async fn from_successors(self: &Arc<Self>, led: Vec<Led>) {
        let settled = led.into_iter().map(|led| async move {
            let hot = self.hot_store(&led.key);
            let outcome = self.from_successor(&led.key, hot, &led.superseded).await;
            led.answer(outcome);
        });
        futures_util::future::join_all(settled).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;
    use crate::loader::Loaded;

    /// A batch loader: puts the first key's result at once, then waits for `release` before the
    /// rest; keys named `missing` get no result, a key named `panic` panics after the first.
    #[derive(Default)]
    struct Stepwise {
        calls: AtomicUsize,
        loads: AtomicUsize,
        /// Notified once the first key's result is in.
        first_in: Notify,
        release: Notify,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no single loads here")]
    struct Single;

    impl Loader for Arc<Stepwise> {
        type Value = String;
        type Error = Single;

        async fn load(&self, _: &str) -> Result<Loaded<String>, Single> {
            Err(Single)
        }

        async fn load_many(&self, keys: &[String], results: &Results<String, Single>) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            for (index, key) in keys.iter().enumerate() {
                if index == 1 {
                    self.first_in.notify_one();
                    self.release.notified().await;
                }
                match key.as_str() {
                    "missing" => {}
                    "panic" => panic!("load_many panics"),
                    _ => {
                        self.loads.fetch_add(1, Ordering::SeqCst);
                        results.put(index, Ok(Loaded::new(format!("v{key}"))));
                    }
                }
            }
        }
    }

    fn cache(loader: &Arc<Stepwise>) -> Groupcache<Arc<Stepwise>> {
        Groupcache::builder("g", "http://127.0.0.1:1", loader.clone())
            .build()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_is_released_as_soon_as_load_many_puts_it() {
        let loader = Arc::new(Stepwise::default());
        let cache = cache(&loader);
        let many = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_many(&["a", "b", "a"]).await })
        };
        // `a` is in while `b` waits: a get of `a` finds it and returns now.
        loader.first_in.notified().await;
        assert_eq!(cache.get("a").await.unwrap(), "va");
        assert!(!many.is_finished());
        loader.release.notify_one();
        let values = many.await.unwrap();
        let values: Vec<_> = values.into_iter().map(Result::unwrap).collect();
        assert_eq!(values, ["va", "vb", "va"]);
        assert_eq!(loader.calls.load(Ordering::SeqCst), 1, "one load_many");
        assert_eq!(loader.loads.load(Ordering::SeqCst), 2, "each key once");
        // All cached now: no further call.
        let again = cache.get_many(&["a", "b"]).await;
        assert!(again.iter().all(Result::is_ok));
        assert_eq!(loader.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_left_without_a_result_fail_alone_and_a_panic_fails_the_rest() {
        let loader = Arc::new(Stepwise::default());
        loader.release.notify_one();
        let cache = cache(&loader);
        let values = cache.get_many(&["a", "missing", "c"]).await;
        assert_eq!(values[0].as_deref().unwrap(), "va");
        assert!(
            matches!(values[1], Err(Error::NotLoaded)),
            "{:?}",
            values[1]
        );
        assert_eq!(values[2].as_deref().unwrap(), "vc");
        loader.release.notify_one();
        let values = cache.get_many(&["d", "panic", "e"]).await;
        assert_eq!(values[0].as_deref().unwrap(), "vd");
        for value in &values[1..] {
            match value {
                Err(Error::LoaderPanicked(message)) => assert_eq!(message, "load_many panics"),
                other => panic!("expected LoaderPanicked, got {other:?}"),
            }
        }
        // Nothing is stuck: the keys load again.
        loader.release.notify_one();
        let values = cache.get_many(&["e"]).await;
        assert_eq!(values[0].as_deref().unwrap(), "ve");
    }

    #[tokio::test]
    async fn the_default_load_many_is_the_single_load_per_key() {
        struct Upper;
        impl Loader for Upper {
            type Value = String;
            type Error = std::io::Error;
            async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
                match key {
                    "bad" => Err(std::io::Error::other("bad key")),
                    _ => Ok(Loaded::new(key.to_uppercase())),
                }
            }
        }
        let cache = Groupcache::builder("g", "http://127.0.0.1:1", Upper)
            .build()
            .unwrap();
        let keys: Vec<String> = (0..100)
            .map(|i| format!("k{i}"))
            .chain(["bad".into()])
            .collect();
        let values = cache.get_many(&keys).await;
        for (key, value) in keys.iter().zip(&values) {
            match key.as_str() {
                "bad" => assert!(
                    value
                        .as_ref()
                        .unwrap_err()
                        .loader_error::<std::io::Error>()
                        .is_some()
                ),
                _ => assert_eq!(value.as_ref().unwrap(), &key.to_uppercase()),
            }
        }
        assert_eq!(cache.stats().local_loads, 100);
    }
}
