//! The metric names and labels of the design notes, observed through a local recorder.

use std::time::Duration;

use groupcache_rs::Groupcache;
use groupcache_tests::{GROUP, Replica, TestLoader, key_owned_by};
use metrics::Key;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// A replica whose metrics go to its own recorder.
fn replica_with_recorder(loader: &TestLoader) -> (Replica<TestLoader>, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let replica = metrics::with_local_recorder(&recorder, || {
        // No warm hand-off: in a cluster this young every miss would first peek a peer, and
        // those peeks are peer requests of their own, counted where they are served.
        Replica::start(|url| {
            Groupcache::builder(GROUP, url, loader.clone()).handoff_timeout(Duration::ZERO)
        })
    });
    (replica, snapshotter)
}

/// One reading of a recorder. Reading resets the debugging recorder's counters and gauges, so
/// every assertion about one moment goes through one `Reading`.
struct Reading(Vec<(Key, DebugValue)>);

impl Reading {
    fn take(snapshotter: &Snapshotter) -> Self {
        Reading(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| (key.key().clone(), value))
                .collect(),
        )
    }

    /// The metric `name` of the test group with exactly the extra `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> &DebugValue {
        let labels = [&[("group", GROUP)], labels].concat();
        self.labelled(name, &labels)
    }

    /// The replica-wide metric `name`, without a group label: one series whatever the groups.
    fn replica_gauge(&self, name: &str) -> f64 {
        match self.labelled(name, &[]) {
            DebugValue::Gauge(n) => n.into_inner(),
            other => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    /// The metric `name` with exactly `labels`.
    fn labelled(&self, name: &str, labels: &[(&str, &str)]) -> &DebugValue {
        self.0
            .iter()
            .find(|(key, _)| {
                key.name() == name
                    && key.labels().count() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, value)| value)
            .unwrap_or_else(|| panic!("no metric {name}{labels:?}"))
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(name, labels) {
            DebugValue::Counter(n) => *n,
            other => panic!("{name}{labels:?} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.value(name, labels) {
            DebugValue::Gauge(n) => n.into_inner(),
            other => panic!("{name}{labels:?} is not a gauge: {other:?}"),
        }
    }

    fn samples(&self, name: &str) -> usize {
        match self.value(name, &[]) {
            DebugValue::Histogram(samples) => samples.len(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_gauges_and_histograms_follow_the_traffic() {
    let loader = TestLoader::new();
    let (owner, owner_metrics) = replica_with_recorder(&loader);
    let (asker, asker_metrics) = replica_with_recorder(&loader);
    let (silent, _) = replica_with_recorder(&loader);
    let cluster = [owner, asker, silent];
    groupcache_tests::connect(&cluster);
    let remote = key_owned_by(&cluster, 0, "m-");
    let local = key_owned_by(&cluster, 1, "m-");

    // The asker: one local key (load, then two main hits), one remote key (two fetches, then hot
    // hits), one failing remote key, and one failed peer.
    for _ in 0..3 {
        cluster[1].cache.get(&local).await.unwrap();
    }
    for _ in 0..4 {
        cluster[1].cache.get(&remote).await.unwrap();
    }
    let failing = key_owned_by(&cluster, 0, "error:");
    assert!(cluster[1].cache.get(&failing).await.is_err());

    let m = Reading::take(&asker_metrics);
    assert_eq!(m.counter("groupcache_gets_total", &[]), 8);
    assert_eq!(
        m.counter("groupcache_cache_hits_total", &[("cache", "main")]),
        2
    );
    assert_eq!(
        m.counter("groupcache_cache_hits_total", &[("cache", "hot")]),
        2
    );
    assert_eq!(m.counter("groupcache_loads_total", &[]), 4);
    assert_eq!(m.counter("groupcache_loads_deduped_total", &[]), 4);
    assert_eq!(m.counter("groupcache_peer_loads_total", &[]), 2);
    assert_eq!(m.counter("groupcache_peer_errors_total", &[]), 0);
    assert_eq!(m.counter("groupcache_local_loads_total", &[]), 1);
    assert_eq!(m.counter("groupcache_local_load_errors_total", &[]), 0);
    assert_eq!(m.counter("groupcache_server_requests_total", &[]), 0);
    assert_eq!(m.gauge("groupcache_cache_items", &[("cache", "main")]), 1.0);
    assert_eq!(m.gauge("groupcache_cache_items", &[("cache", "hot")]), 1.0);
    assert!(m.gauge("groupcache_cache_bytes", &[("cache", "hot")]) > 0.0);
    assert_eq!(m.replica_gauge("groupcache_peers"), 3.0);
    assert_eq!(m.samples("groupcache_peer_request_duration_seconds"), 3);
    assert_eq!(m.samples("groupcache_load_duration_seconds"), 1);

    let m = Reading::take(&owner_metrics);
    assert_eq!(m.counter("groupcache_server_requests_total", &[]), 3);
    assert_eq!(m.counter("groupcache_local_loads_total", &[]), 1);
    assert_eq!(m.counter("groupcache_local_load_errors_total", &[]), 1);
    assert_eq!(
        m.counter("groupcache_cache_hits_total", &[("cache", "main")]),
        1
    );

    // The peer-error counter, and the eviction counter of a full cache.
    let mut cluster = cluster;
    cluster[0].kill();
    let other = key_owned_by(&cluster, 0, "gone-");
    cluster[1].cache.get(&other).await.unwrap();
    let m = Reading::take(&asker_metrics);
    assert_eq!(
        m.counter("groupcache_peer_errors_total", &[]),
        1,
        "counted since the last reading"
    );
    assert_eq!(
        m.counter("groupcache_cache_evictions_total", &[("cache", "main")]),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_are_counted_and_bytes_stay_within_budget() {
    let loader = TestLoader::new();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let replica = metrics::with_local_recorder(&recorder, || {
        Replica::start(|url| Groupcache::builder(GROUP, url, loader.clone()).main_cache_bytes(4096))
    });
    for i in 0..100 {
        replica.cache.get(&format!("evict-{i}")).await.unwrap();
    }
    let stats = replica.cache.stats();
    assert!(stats.main_bytes <= 4096);
    assert!(stats.main_items > 1 && stats.main_items < 100);
    let m = Reading::take(&snapshotter);
    assert_eq!(
        m.gauge("groupcache_cache_bytes", &[("cache", "main")]),
        stats.main_bytes as f64
    );
    assert_eq!(
        m.counter("groupcache_cache_evictions_total", &[("cache", "main")]),
        100 - stats.main_items
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leaders_load_and_panic_are_still_counted() {
    use std::sync::Arc;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let replica = Replica::start(|url| Groupcache::builder(GROUP, url, loader.clone()));
    // The leader starts the load and gives up while it waits at the gate.
    let leader = tokio::spawn({
        let cache = replica.cache.clone();
        async move { cache.get("panic:cancelled").await }
    });
    loader.loads.started(1).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    assert_eq!(
        replica.cache.stats().loads_deduped,
        1,
        "the abandoned load does the work"
    );
    // Nobody waits any more; the load goes on in its task and panics.
    gate.add_permits(1);
    let counted = async {
        while replica.cache.stats().local_load_errors == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), counted)
        .await
        .expect("the abandoned load's panic is counted");
    // The key is not stuck: a get loads again (the test loader panics only once). The panic is
    // counted just before its flight lands, so a get may still join the landing flight and
    // share its error; the one after cannot.
    gate.add_permits(1);
    let mut joined = 0;
    let value = loop {
        match replica.cache.get("panic:cancelled").await {
            Ok(value) => break value,
            Err(groupcache_rs::Error::LoaderPanicked(_)) if joined == 0 => joined += 1,
            Err(error) => panic!("the key is stuck: {error}"),
        }
    };
    assert_eq!(value, loader.value_for("panic:cancelled"));
    let stats = replica.cache.stats();
    assert_eq!(loader.loads.total(), 2);
    assert_eq!((stats.loads, stats.loads_deduped), (2 + joined, 2));
    assert_eq!(stats.local_load_errors, 1);
    assert_eq!(stats.local_loads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_that_drops_an_expired_entry_republishes_the_cache_gauges() {
    let loader = TestLoader::new();
    let (replica, snapshotter) = replica_with_recorder(&loader);
    // Owned here, already expired, and not loadable again: the get leaves the cache empty.
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let key = "error:expired";
    replica
        .cache
        .set(key, &"old".to_owned(), Some(past))
        .await
        .unwrap();
    let m = Reading::take(&snapshotter);
    assert_eq!(m.gauge("groupcache_cache_items", &[("cache", "main")]), 1.0);
    assert!(
        replica.cache.get(key).await.is_err(),
        "expired, then the loader fails"
    );
    let m = Reading::take(&snapshotter);
    assert_eq!(replica.cache.stats().main_items, 0);
    assert_eq!(m.gauge("groupcache_cache_items", &[("cache", "main")]), 0.0);
    assert_eq!(m.gauge("groupcache_cache_bytes", &[("cache", "main")]), 0.0);
}

/// One budget for both caches: the hot cache grows into the room the main cache leaves free; the
/// split starts where the two stand when the budget is first full, and moves toward the main
/// cache as its evicted keys come back (ghost hits). The hot cache gives back the room, and
/// every entry it gives back is counted as an eviction; the gauges and `stats()` agree and the
/// two never hold more than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_budget_is_shared_and_what_the_hot_cache_gives_back_is_counted() {
    // About 30 entries of these keys and values (each charged about 83 bytes: 61 and its key and
    // value; 8,000 when an entry was charged 247 more): the hot cache's 20 fit while main is
    // empty, main's 15 and hot's 20 do not fit together.
    const BUDGET: u64 = 2_650;
    let loader = TestLoader::new();
    let (owner, _) = replica_with_recorder(&loader);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let asker = metrics::with_local_recorder(&recorder, || {
        Replica::start(|url| {
            Groupcache::builder(GROUP, url, loader.clone())
                .handoff_timeout(Duration::ZERO)
                .cache_bytes(BUDGET)
        })
    });
    let cluster = [owner, asker];
    groupcache_tests::connect(&cluster);
    // Twice each: the second fetch promotes the value into the hot cache.
    for i in 0..20 {
        let key = key_owned_by(&cluster, 0, &format!("r{i}-"));
        for _ in 0..2 {
            cluster[1].cache.get(&key).await.unwrap();
        }
    }
    let grown = cluster[1].cache.stats();
    assert_eq!(grown.cache_bytes, BUDGET);
    assert_eq!(grown.hot_items, 20, "hot used the room main left free");
    assert!(grown.hot_bytes > grown.hot_target_bytes);
    // Main's 15 keys, asked for again and again: the budget fills, then each key main evicts
    // comes back while its ghost is remembered.
    let owned: Vec<String> = (0..15)
        .map(|i| key_owned_by(&cluster, 1, &format!("l{i}-")))
        .collect();
    for _ in 0..10 {
        for key in &owned {
            cluster[1].cache.get(key).await.unwrap();
            let stats = cluster[1].cache.stats();
            assert!(stats.main_bytes + stats.hot_bytes <= BUDGET);
        }
    }
    let stats = cluster[1].cache.stats();
    assert!(stats.main_ghost_hits > 0);
    assert_eq!(stats.main_items, 15, "main took what its keys need");
    assert!(stats.hot_items < 20, "from the hot cache");
    let m = Reading::take(&snapshotter);
    assert_eq!(
        m.counter("groupcache_cache_evictions_total", &[("cache", "hot")]),
        20 - stats.hot_items
    );
    assert_eq!(
        m.counter("groupcache_cache_evictions_total", &[("cache", "main")]) + stats.main_items,
        stats.local_loads,
        "every load stored in main is held or counted as evicted"
    );
    for (cache, bytes, items) in [
        ("main", stats.main_bytes, stats.main_items),
        ("hot", stats.hot_bytes, stats.hot_items),
    ] {
        assert_eq!(
            m.gauge("groupcache_cache_bytes", &[("cache", cache)]),
            bytes as f64
        );
        assert_eq!(
            m.gauge("groupcache_cache_items", &[("cache", cache)]),
            items as f64
        );
    }
}

/// Two groups on one cluster: each group's metrics carry its own `group` label, and the
/// replica-wide ones (peers, suspicions, auth refusals, nonces) appear once, without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_keeps_its_label_and_replica_wide_metrics_are_not_repeated_per_group() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (loader, other) = (TestLoader::new(), TestLoader::new());
    let (cluster, first, second) = metrics::with_local_recorder(&recorder, || {
        let cluster = groupcache_rs::Cluster::builder("http://127.0.0.1:1")
            .build()
            .unwrap();
        let first = cluster.group(GROUP, loader.clone()).build().unwrap();
        let second = cluster.group("second", other.clone()).build().unwrap();
        (cluster, first, second)
    });
    cluster
        .set_peers(["http://127.0.0.1:1", "http://127.0.0.1:2"])
        .unwrap();
    let mine = groupcache_tests::keys_owned(&first, "http://127.0.0.1:1", "k-")
        .next()
        .unwrap();
    first.get(&mine).await.unwrap();
    for _ in 0..3 {
        second.get(&mine).await.unwrap();
    }

    let m = Reading::take(&snapshotter);
    assert_eq!(m.counter("groupcache_gets_total", &[]), 1);
    let second_gets = m.labelled("groupcache_gets_total", &[("group", "second")]);
    assert!(
        matches!(second_gets, DebugValue::Counter(3)),
        "{second_gets:?}"
    );
    assert_eq!(m.replica_gauge("groupcache_peers"), 2.0);
    for name in [
        "groupcache_peers",
        "groupcache_peer_suspicions_total",
        "groupcache_auth_nonces",
        "groupcache_peer_auth_failures_total",
        "groupcache_peer_requests_waiting",
        "groupcache_peer_requests_shed_total",
    ] {
        let series: Vec<_> = m.0.iter().filter(|(key, _)| key.name() == name).collect();
        assert!(!series.is_empty(), "no {name}");
        assert!(
            series
                .iter()
                .all(|(key, _)| key.labels().all(|label| label.key() != "group")),
            "{name} is labelled by group: {series:?}"
        );
    }
    let peers = m.0.iter().filter(|(k, _)| k.name() == "groupcache_peers");
    assert_eq!(peers.count(), 1, "one peers gauge for the replica");
}
