//! Freshness and source protection (issue 27), against a source that counts its queries and
//! can lose rows, fail, or hold its loads on command: negative answers, cached errors, refresh
//! ahead, stale on error, purge, the load limit and the circuit breaker. Every promise is
//! asserted exactly: queries per key, refreshes per key, errors while the source is down,
//! values after a purge. Replicas are real, on loopback, and talk real HTTP.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use groupcache_rs::{Builder, Error, Freshness, Groupcache, Loaded, Loader};
use groupcache_tests::{GROUP, Replica, key_owned_by, start_cluster};
use tokio::sync::watch;

/// The source of truth: rows by key, each with a version bumped by writes. Counts every query
/// (per key), and the most queries at once; can be taken down (every query fails) and can hold
/// its queries (after reading the row) until released.
#[derive(Default)]
struct Source {
    rows: Mutex<HashMap<String, u64>>,
    /// Keys that exist: a key not here is "no such row".
    missing: Mutex<HashSet<String>>,
    queries: Mutex<HashMap<String, usize>>,
    down: AtomicBool,
    /// While true, queries wait (holding the version they read) until it is false.
    held: watch::Sender<bool>,
    /// Queries running now, and the most at once.
    running: AtomicUsize,
    most: AtomicUsize,
    /// Every query started, for waiting on one.
    started: watch::Sender<usize>,
}

impl Source {
    fn new() -> Arc<Source> {
        Arc::new(Source::default())
    }

    fn queries(&self, key: &str) -> usize {
        self.queries.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    fn total_queries(&self) -> usize {
        self.queries.lock().unwrap().values().sum()
    }

    fn bump(&self, key: &str) {
        *self.rows.lock().unwrap().entry(key.to_owned()).or_default() += 1;
    }

    fn delete(&self, key: &str) {
        self.missing.lock().unwrap().insert(key.to_owned());
    }

    fn insert(&self, key: &str) {
        self.missing.lock().unwrap().remove(key);
    }

    fn value(&self, key: &str) -> String {
        let version = self.rows.lock().unwrap().get(key).copied().unwrap_or(0);
        format!("{key}@{version}")
    }

    fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Waits until more than `seen` queries have started.
    async fn started_since(&self, seen: usize) {
        let mut started = self.started.subscribe();
        started.wait_for(|&n| n > seen).await.unwrap();
    }
}

#[derive(Debug, thiserror::Error)]
enum RowError {
    #[error("no row {0}")]
    NoRow(String),
    #[error("the database is down")]
    Down,
}

/// The loader: one query per load. `ttl` sets each value's expiry; `refresh_first` the refresh
/// time of a row's first version only (`Loaded::refresh_after`), so that a test sees exactly one
/// refresh however long it takes to look.
#[derive(Clone)]
struct Rows {
    source: Arc<Source>,
    ttl: Option<Duration>,
    refresh_first: Option<Duration>,
}

impl Loader for Rows {
    type Value = String;
    type Error = RowError;

    async fn load(&self, key: &str) -> Result<Loaded<String>, RowError> {
        let source = &self.source;
        *source
            .queries
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default() += 1;
        let now = source.running.fetch_add(1, Ordering::SeqCst) + 1;
        source.most.fetch_max(now, Ordering::SeqCst);
        let answer = if source.down.load(Ordering::SeqCst) {
            Err(RowError::Down)
        } else if source.missing.lock().unwrap().contains(key) {
            Err(RowError::NoRow(key.to_owned()))
        } else {
            Ok(source.value(key))
        };
        source.started.send_modify(|n| *n += 1);
        let mut held = source.held.subscribe();
        let _ = held.wait_for(|held| !held).await;
        source.running.fetch_sub(1, Ordering::SeqCst);
        let value = answer?;
        let first = value.ends_with("@0");
        let loaded = match self.ttl {
            Some(ttl) => Loaded::new(value).expire_after(ttl),
            None => Loaded::new(value),
        };
        Ok(match self.refresh_first {
            Some(after) if first => loaded.refresh_after(after),
            _ => loaded,
        })
    }

    fn is_not_found(&self, error: &RowError) -> bool {
        matches!(error, RowError::NoRow(_))
    }
}

fn rows(source: &Arc<Source>) -> Rows {
    Rows {
        source: source.clone(),
        ttl: None,
        refresh_first: None,
    }
}

/// Three replicas over `loader`, configured by `configure`; fetched values are kept hot.
fn cluster(loader: Rows, configure: impl Fn(Builder<Rows>) -> Builder<Rows>) -> Vec<Replica<Rows>> {
    start_cluster(3, |url| {
        configure(Groupcache::builder(GROUP, url, loader.clone()).hot_promotion_requests(1))
    })
}

/// A bound on a wait that must end at once; only there so that a regression fails, not hangs.
const AT_ONCE: Duration = Duration::from_secs(10);

/// Item 1's storm: missing keys asked again and again from every replica cost the source one
/// query each, and every replica answers `Error::NotFound`, a value callers match on. With
/// `not_found_ttl` zero (as before negative caching) every get queries the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_missing_keys_costs_the_source_one_query_per_key() {
    for ttl in [Duration::from_secs(60), Duration::ZERO] {
        let source = Source::new();
        let replicas = cluster(rows(&source), |builder| builder.not_found_ttl(ttl));
        let keys: Vec<String> = (0..100).map(|i| format!("ghost-{i}")).collect();
        for key in &keys {
            source.delete(key);
        }
        for round in 0..5 {
            let mut gets = tokio::task::JoinSet::new();
            for (i, key) in keys.iter().enumerate() {
                let cache = replicas[(i + round) % 3].cache.clone();
                let key = key.clone();
                gets.spawn(async move { cache.get(&key).await });
            }
            for answer in gets.join_all().await {
                assert!(
                    matches!(answer, Err(Error::NotFound)),
                    "a missing row is Error::NotFound: {answer:?}"
                );
            }
        }
        let most = keys.iter().map(|key| source.queries(key)).max().unwrap();
        if ttl.is_zero() {
            assert!(
                most > 1,
                "without negative caching every get queries the source"
            );
        } else {
            for key in &keys {
                assert_eq!(source.queries(key), 1, "queries of {key}");
            }
            let not_found: u64 = replicas
                .iter()
                .map(|r| r.cache.stats().not_found_loads)
                .sum();
            assert_eq!(not_found, 100, "one negative answer loaded per key");
        }
    }
}

/// A batch carries negative answers too: `get_many` of missing keys owned by other replicas
/// answers `Error::NotFound` for each, one query per key, and again from the caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_answers_missing_keys_not_found_through_batches() {
    let source = Source::new();
    let replicas = cluster(rows(&source), |builder| {
        builder.not_found_ttl(Duration::from_secs(60))
    });
    let keys: Vec<String> = (0..30).map(|i| format!("batch-ghost-{i}")).collect();
    for key in keys.iter().step_by(2) {
        source.delete(key);
    }
    for _ in 0..3 {
        for (key, answer) in keys.iter().zip(replicas[0].cache.get_many(&keys).await) {
            if source.missing.lock().unwrap().contains(key) {
                assert!(matches!(answer, Err(Error::NotFound)), "{key}: {answer:?}");
            } else {
                assert_eq!(answer.unwrap(), source.value(key));
            }
        }
    }
    for key in &keys {
        assert_eq!(source.queries(key), 1, "{key}");
    }
}

/// A negative answer is replaced by `set` and dropped by `remove` on every replica, as a value
/// is: a row inserted after the miss is seen once removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_and_set_replace_a_negative_answer_everywhere() {
    let source = Source::new();
    let replicas = cluster(rows(&source), |builder| {
        builder.not_found_ttl(Duration::from_secs(60))
    });
    let key = key_owned_by(&replicas, 1, "late-row-");
    source.delete(&key);
    for replica in &replicas {
        assert!(matches!(
            replica.cache.get(&key).await,
            Err(Error::NotFound)
        ));
    }
    source.insert(&key);
    for replica in &replicas {
        assert!(
            matches!(replica.cache.get(&key).await, Err(Error::NotFound)),
            "kept for not_found_ttl"
        );
    }
    replicas[0].cache.remove(&key).await.unwrap();
    for replica in &replicas {
        assert_eq!(replica.cache.get(&key).await.unwrap(), source.value(&key));
    }
    assert_eq!(source.queries(&key), 2, "the miss, then the row once");
    source.delete(&key);
    replicas[2].cache.remove(&key).await.unwrap();
    assert!(matches!(
        replicas[0].cache.get(&key).await,
        Err(Error::NotFound)
    ));
    replicas[2]
        .cache
        .set(&key, &"set".to_owned(), None)
        .await
        .unwrap();
    for replica in &replicas {
        assert_eq!(replica.cache.get(&key).await.unwrap(), "set");
    }
}

/// Errors are not kept by default (each get queries the failing source); with `cache_errors`
/// the owner keeps the error and every replica's get fails with its message without a query,
/// until a `remove`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_kept_only_with_cache_errors_and_then_for_every_replica() {
    for ttl in [Duration::ZERO, Duration::from_secs(60)] {
        let source = Source::new();
        let replicas = cluster(rows(&source), |builder| builder.cache_errors(ttl));
        let key = key_owned_by(&replicas, 0, "failing-");
        source.down.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            for replica in &replicas {
                assert!(replica.cache.get(&key).await.is_err());
            }
        }
        if ttl.is_zero() {
            assert_eq!(source.queries(&key), 9, "every get queried the source");
            continue;
        }
        assert_eq!(source.queries(&key), 1, "the error was kept");
        assert!(matches!(
            replicas[0].cache.get(&key).await,
            Err(Error::LoaderFailedRecently { message }) if message.contains("down")
        ));
        assert!(matches!(
            replicas[1].cache.get(&key).await,
            Err(Error::RemoteLoader { message, .. }) if message.contains("down")
        ));
        source.down.store(false, Ordering::SeqCst);
        replicas[1].cache.remove(&key).await.unwrap();
        assert_eq!(
            replicas[2].cache.get(&key).await.unwrap(),
            source.value(&key)
        );
    }
}

/// Item 2: gets of a value past its refresh time answer the cached value at once, on the owner
/// and on the replicas holding hot copies, while one refresh runs on the owner (held here until
/// every get has answered); the refreshed value then reaches every replica, and the source saw
/// exactly one query for the refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_due_for_refresh_is_answered_at_once_and_refreshed_once_cluster_wide() {
    const REFRESH: Duration = Duration::from_millis(300);
    let source = Source::new();
    let loader = Rows {
        refresh_first: Some(REFRESH),
        ..rows(&source)
    };
    let replicas = cluster(loader, |builder| builder);
    let key = key_owned_by(&replicas, 0, "popular-");
    let old = source.value(&key);
    for replica in &replicas {
        assert_eq!(replica.cache.get(&key).await.unwrap(), old);
        // Asked twice: kept in the hot cache.
        assert_eq!(replica.cache.get(&key).await.unwrap(), old);
    }
    assert_eq!(source.queries(&key), 1);
    source.bump(&key);
    source.hold(true);
    // The refresh time is a time: waited for as such.
    tokio::time::sleep(REFRESH + Duration::from_millis(50)).await;
    let seen = source.total_queries();
    // 20 gets on each replica, while the refresh is held at the source: none waits for it.
    let mut gets = tokio::task::JoinSet::new();
    for i in 0..60 {
        let cache = replicas[i % 3].cache.clone();
        let key = key.clone();
        gets.spawn(async move { cache.get(&key).await });
    }
    let answers = tokio::time::timeout(AT_ONCE, gets.join_all())
        .await
        .expect("gets past the refresh time waited for the refresh");
    for answer in answers {
        assert_eq!(answer.unwrap(), old, "answered the cached value");
    }
    source.started_since(seen).await;
    source.hold(false);
    let new = source.value(&key);
    for replica in &replicas {
        let mut answered = replica.cache.get(&key).await.unwrap();
        // The hot copies ask the owner in the background: a replica sees the refreshed value
        // once its own refresh request is answered.
        let deadline = tokio::time::Instant::now() + AT_ONCE;
        while answered != new {
            assert!(tokio::time::Instant::now() < deadline, "never refreshed");
            tokio::time::sleep(Duration::from_millis(10)).await;
            answered = replica.cache.get(&key).await.unwrap();
        }
    }
    assert_eq!(
        source.queries(&key),
        2,
        "one load, then exactly one refresh for the whole cluster"
    );
}

/// The refresh's value replaces the cached one only if no write happened since it started: a
/// `set` while the refresh is held at the source wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_overtaken_by_a_write_does_not_replace_it() {
    const REFRESH: Duration = Duration::from_millis(200);
    let source = Source::new();
    let replica =
        Replica::start(|url| Groupcache::builder(GROUP, url, rows(&source)).refresh_after(REFRESH));
    replica.cache.get("k").await.unwrap();
    tokio::time::sleep(REFRESH + Duration::from_millis(50)).await;
    source.hold(true);
    let seen = source.total_queries();
    assert_eq!(replica.cache.get("k").await.unwrap(), "k@0", "at once");
    source.started_since(seen).await;
    replica
        .cache
        .set("k", &"written".to_owned(), None)
        .await
        .unwrap();
    source.bump("k");
    source.hold(false);
    // The refresh ends: wait for the source's query to return, then for the group's flight.
    let deadline = tokio::time::Instant::now() + AT_ONCE;
    while source.running.load(Ordering::SeqCst) > 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(replica.cache.get("k").await.unwrap(), "written");
    assert_eq!(replica.cache.stats().refreshes, 1);
}

/// Item 3: with `max_stale`, a value that expired while the source is down is still served, on
/// its owner and on a replica holding a hot copy, marked stale; none of those gets fails. Past
/// `max_stale`, or with `max_stale` off, the error comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_source_is_down_expired_values_are_served_stale_within_max_stale() {
    const TTL: Duration = Duration::from_millis(200);
    const MAX_STALE: Duration = Duration::from_secs(2);
    for max_stale in [MAX_STALE, Duration::ZERO] {
        let source = Source::new();
        let loader = Rows {
            source: source.clone(),
            ttl: Some(TTL),
            refresh_first: None,
        };
        let replicas = cluster(loader, |builder| builder.max_stale(max_stale));
        let key = key_owned_by(&replicas, 0, "row-");
        let value = source.value(&key);
        for replica in &replicas[..2] {
            replica.cache.get(&key).await.unwrap();
            replica.cache.get(&key).await.unwrap();
        }
        source.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(TTL + Duration::from_millis(50)).await;
        for replica in &replicas[..2] {
            let answer = replica.cache.get_with_freshness(&key).await;
            if max_stale.is_zero() {
                assert!(answer.is_err(), "without max_stale the error comes back");
            } else {
                assert_eq!(answer.unwrap(), (value.clone(), Freshness::Stale));
            }
        }
        if max_stale.is_zero() {
            continue;
        }
        // The owner served it twice: to its own get and to replica 1's fetch.
        assert_eq!(replicas[0].cache.stats().stale_served, 2);
        assert_eq!(replicas[1].cache.stats().stale_served, 0);
        // The owner gone too: replica 1 serves its own expired hot copy.
        let mut replicas = replicas;
        replicas[0].kill();
        let answer = replicas[1].cache.get_with_freshness(&key).await.unwrap();
        assert_eq!(answer, (value.clone(), Freshness::Stale));
        assert_eq!(replicas[1].cache.stats().stale_served, 1);
        // Back up: fresh again.
        source.down.store(false, Ordering::SeqCst);
        let (fresh, freshness) = replicas[1].cache.get_with_freshness(&key).await.unwrap();
        assert_eq!((fresh, freshness), (value.clone(), Freshness::Fresh));
        // Past max_stale, with the source down: the error.
        source.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(TTL + MAX_STALE + Duration::from_millis(100)).await;
        assert!(replicas[1].cache.get(&key).await.is_err());
    }
}

/// Item 4: after `purge` returns `Ok`, no replica answers a value from before it (owner, hot
/// copy or load in flight), and each key is loaded once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_purge_no_replica_answers_a_value_from_before_it() {
    let source = Source::new();
    let replicas = cluster(rows(&source), |builder| builder);
    let keys: Vec<String> = (0..90).map(|i| format!("purged-{i}")).collect();
    for replica in &replicas {
        for key in &keys {
            replica.cache.get(key).await.unwrap();
            replica.cache.get(key).await.unwrap();
        }
    }
    assert_eq!(source.total_queries(), 90);
    // A load in flight across the purge: it read the old row, and is held.
    let held = key_owned_by(&replicas, 2, "in-flight-");
    source.hold(true);
    let seen = source.total_queries();
    let load = tokio::spawn({
        let cache = replicas[2].cache.clone();
        let key = held.clone();
        async move { cache.get(&key).await }
    });
    source.started_since(seen).await;
    for key in keys.iter().chain([&held]) {
        source.bump(key);
    }
    replicas[1].cache.purge().await.unwrap();
    let purges: u64 = replicas.iter().map(|r| r.cache.stats().purges).sum();
    assert_eq!(purges, 3, "each replica purged once");
    source.hold(false);
    assert_eq!(load.await.unwrap().unwrap(), format!("{held}@0"));
    for replica in &replicas {
        for key in keys.iter().chain([&held]) {
            assert_eq!(
                replica.cache.get(key).await.unwrap(),
                source.value(key),
                "a value from before the purge"
            );
        }
    }
    for key in &keys {
        assert_eq!(source.queries(key), 2, "{key}: loaded once after the purge");
    }
}

/// Item 5: loads beyond `max_concurrent_loads` wait for a turn; none is refused, and the source
/// never sees more at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_beyond_the_limit_wait_their_turn_and_none_is_refused() {
    let source = Source::new();
    let replica = Replica::start(|url| {
        Groupcache::builder(GROUP, url, rows(&source)).max_concurrent_loads(2)
    });
    source.hold(true);
    let gets: Vec<_> = (0..12)
        .map(|i| {
            let cache = replica.cache.clone();
            tokio::spawn(async move { cache.get(&format!("k{i}")).await })
        })
        .collect();
    source.started_since(1).await;
    // The others queue: counted as waiting, not started at the source.
    let deadline = tokio::time::Instant::now() + AT_ONCE;
    while replica.cache.stats().loads_waiting < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "loads did not queue"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(source.total_queries(), 2);
    source.hold(false);
    for get in gets {
        get.await.unwrap().unwrap();
    }
    assert_eq!(source.most.load(Ordering::SeqCst), 2, "at most two at once");
    assert_eq!(source.total_queries(), 12);
}

/// Item 5's breaker: after three failures in a row, loads fail at once without a query; the
/// other replicas' gets of the owner's keys fail too, without loading the keys themselves
/// (which would bypass the breaker); after `open_for` one probe goes, and once the source
/// answers the circuit is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_fails_fast_everywhere_and_one_probe_closes_it() {
    const OPEN_FOR: Duration = Duration::from_millis(300);
    let source = Source::new();
    let replicas = cluster(rows(&source), |builder| {
        builder.circuit_breaker(3, OPEN_FOR)
    });
    let owner = &replicas[0];
    let keys: Vec<String> = groupcache_tests::keys_owned(&owner.cache, &owner.url, "breaker-")
        .take(20)
        .collect();
    source.down.store(true, Ordering::SeqCst);
    for key in &keys[..3] {
        assert!(matches!(owner.cache.get(key).await, Err(Error::Loader(_))));
    }
    for key in &keys[3..13] {
        assert!(matches!(
            owner.cache.get(key).await,
            Err(Error::CircuitOpen)
        ));
    }
    for key in &keys[13..] {
        assert!(matches!(
            replicas[1].cache.get(key).await,
            Err(Error::RemoteLoader { message, .. }) if message.contains("circuit")
        ));
    }
    assert_eq!(
        source.total_queries(),
        3,
        "no query while open, on any replica"
    );
    let stats = owner.cache.stats();
    assert_eq!((stats.circuit_open, stats.loads_short_circuited), (1, 17));
    tokio::time::sleep(OPEN_FOR + Duration::from_millis(50)).await;
    source.down.store(false, Ordering::SeqCst);
    assert_eq!(
        owner.cache.get(&keys[0]).await.unwrap(),
        source.value(&keys[0])
    );
    assert_eq!(owner.cache.stats().circuit_open, 0);
    for key in &keys[1..5] {
        replicas[1].cache.get(key).await.unwrap();
    }
    assert_eq!(source.total_queries(), 8);
}
