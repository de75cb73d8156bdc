//! Whole clusters of real replicas on loopback: what users rely on from `get`, `remove` and `set`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use groupcache_rs::{Error, Groupcache, RingMode};
use groupcache_tests::{
    GROUP, NoValue, Replica, TestLoader, key_owned_by, owner_index, start_cluster,
};
use tokio::sync::Semaphore;

fn builder(loader: &TestLoader) -> impl FnMut(String) -> groupcache_rs::Builder<TestLoader> + '_ {
    move |url| Groupcache::builder(GROUP, url, loader.clone())
}

/// 100 concurrent gets per key from every replica load each key exactly once, cluster-wide.
async fn every_key_loads_once(replicas: usize, mode: RingMode) {
    let loader = TestLoader {
        delay: Duration::from_millis(50),
        ..TestLoader::new()
    };
    let cluster = start_cluster(replicas, |url| {
        Groupcache::builder(GROUP, url, loader.clone()).ring_mode(mode)
    });
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let mut gets = Vec::new();
    for replica in &cluster {
        for key in &keys {
            for _ in 0..100 {
                let (cache, key) = (replica.cache.clone(), key.clone());
                gets.push(tokio::spawn(async move { (cache.get(&key).await, key) }));
            }
        }
    }
    for get in gets {
        let (value, key) = get.await.unwrap();
        assert_eq!(value.unwrap(), loader.value_for(&key));
    }
    for key in &keys {
        assert_eq!(loader.loads.of(key), 1, "{key} loaded more than once");
    }
    assert_eq!(loader.loads.total(), keys.len());
    // Each key loaded on its owner.
    for key in &keys {
        let owner = &cluster[owner_index(&cluster, key)];
        assert!(owner.cache.stats().local_loads >= 1);
    }
    let total_local: u64 = cluster.iter().map(|r| r.cache.stats().local_loads).sum();
    assert_eq!(total_local, keys.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_load_each_key_exactly_once() {
    every_key_loads_once(3, RingMode::Balanced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_load_each_key_exactly_once_in_go_mode() {
    every_key_loads_once(5, RingMode::GoCompatible).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_down_is_suspected_and_its_key_loaded_once_by_its_successor() {
    let loader = TestLoader::new();
    let mut cluster = start_cluster(3, builder(&loader));
    let key = key_owned_by(&cluster, 0, "down-");
    cluster[0].kill();
    let value = cluster[1].cache.get(&key).await.unwrap();
    assert_eq!(value, loader.value_for(&key));
    let stats = cluster[1].cache.stats();
    assert_eq!((stats.peer_errors, stats.peer_suspicions), (1, 1));
    // The successor (replica 1 or 2, the same from both) holds it: replica 2 finds it there
    // (in its own main cache if it is the successor, or after finding the owner down once), and
    // nobody loads it again or asks the suspected owner again.
    for replica in &cluster[1..] {
        for _ in 0..3 {
            assert_eq!(replica.cache.get(&key).await.unwrap(), value);
        }
    }
    assert_eq!(loader.loads.of(&key), 1);
    assert_eq!(cluster[1].cache.stats().peer_errors, 1);
    let stats = cluster[2].cache.stats();
    assert!(stats.peer_errors <= 1 && stats.peer_suspicions == stats.peer_errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_error_reaches_the_caller_and_is_not_cached() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, builder(&loader));
    let key = key_owned_by(&cluster, 0, "error:");
    match cluster[0].cache.get(&key).await {
        Err(error) => assert_eq!(error.loader_error::<NoValue>().unwrap().0, key),
        Ok(value) => panic!("expected a loader error, got {value}"),
    }
    match cluster[1].cache.get(&key).await {
        Err(Error::RemoteLoader { peer, message }) => {
            assert_eq!(peer, cluster[0].url);
            assert!(
                message.contains(&format!("no value for {key}")),
                "{message}"
            );
        }
        other => panic!("expected the owner's loader error, got {other:?}"),
    }
    // Not cached, and not retried locally by the non-owner: the owner loaded twice.
    assert_eq!(loader.loads.of(&key), 2);
    assert_eq!(
        cluster[1].cache.stats().local_loads + cluster[1].cache.stats().local_load_errors,
        0
    );
    assert_eq!(
        cluster[1].cache.stats().peer_errors,
        0,
        "a loader error is not a peer failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_panic_fails_every_waiter_and_does_not_stick_the_key() {
    let gate = Arc::new(Semaphore::new(0));
    let loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let cluster = start_cluster(3, builder(&loader));
    let key = key_owned_by(&cluster, 0, "panic:");
    let mut waiters = Vec::new();
    for replica in &cluster {
        for _ in 0..10 {
            let (cache, key) = (replica.cache.clone(), key.clone());
            waiters.push(tokio::spawn(async move { cache.get(&key).await }));
        }
    }
    loader.loads.started(1).await;
    // Let every remote waiter reach the owner's flight before the panic.
    while cluster[0].cache.stats().server_requests < 2 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);
    for waiter in waiters {
        match waiter.await.unwrap() {
            Err(Error::LoaderPanicked(message)) => assert!(message.contains("panics")),
            Err(Error::RemoteLoader { message, .. }) => {
                assert!(message.contains("panic"), "{message}")
            }
            other => panic!("expected a panic error, got {other:?}"),
        }
    }
    assert_eq!(loader.loads.of(&key), 1);
    // Not stuck: the next get loads again and succeeds.
    gate.add_permits(1);
    assert_eq!(
        cluster[1].cache.get(&key).await.unwrap(),
        loader.value_for(&key)
    );
    assert_eq!(loader.loads.of(&key), 2);
    assert_eq!(cluster[0].cache.stats().local_load_errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_first_caller_does_not_fail_the_others() {
    let gate = Arc::new(Semaphore::new(0));
    let loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let cluster = start_cluster(3, builder(&loader));
    for (owner, caller) in [(0, 0), (0, 1)] {
        let key = key_owned_by(&cluster, owner, &format!("cancel-{caller}-"));
        let before = loader.loads.total();
        let first = {
            let (cache, key) = (cluster[caller].cache.clone(), key.clone());
            tokio::spawn(async move { cache.get(&key).await })
        };
        loader.loads.started(before + 1).await;
        let second = {
            let (cache, key) = (cluster[2].cache.clone(), key.clone());
            tokio::spawn(async move { cache.get(&key).await })
        };
        let third = {
            let (cache, key) = (cluster[caller].cache.clone(), key.clone());
            tokio::spawn(async move { cache.get(&key).await })
        };
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        gate.add_permits(1);
        assert_eq!(second.await.unwrap().unwrap(), loader.value_for(&key));
        assert_eq!(third.await.unwrap().unwrap(), loader.value_for(&key));
        assert_eq!(
            loader.loads.of(&key),
            1,
            "the abandoned load finished and was shared"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_reloads_exactly_once_and_leaves_no_stale_hot_copy() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, builder(&loader));
    let key = key_owned_by(&cluster, 0, "rm-");
    let old = loader.value_for(&key);
    // Ask often enough that both non-owners keep a hot copy.
    for replica in &cluster {
        for _ in 0..3 {
            assert_eq!(replica.cache.get(&key).await.unwrap(), old);
        }
    }
    assert!(cluster[1].cache.stats().hot_items == 1 && cluster[2].cache.stats().hot_items == 1);
    assert_eq!(loader.loads.of(&key), 1);

    loader.generation.fetch_add(1, Ordering::SeqCst);
    let new = loader.value_for(&key);
    cluster[2].cache.remove(&key).await.unwrap();
    for replica in &cluster {
        assert_eq!(
            replica.cache.stats().hot_items,
            0,
            "{} kept a hot copy",
            replica.url
        );
        assert_eq!(replica.cache.stats().main_items, 0);
    }
    for replica in &cluster {
        for _ in 0..3 {
            assert_eq!(
                replica.cache.get(&key).await.unwrap(),
                new,
                "stale value on {}",
                replica.url
            );
        }
    }
    assert_eq!(loader.loads.of(&key), 2, "exactly one reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_overtaking_a_load_in_flight_keeps_the_old_value_out_of_the_cache() {
    let gate = Arc::new(Semaphore::new(0));
    let loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let cluster = start_cluster(1, builder(&loader));
    let cache = cluster[0].cache.clone();
    let load = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get("racy").await }
    });
    loader.loads.started(1).await;
    cache.remove("racy").await.unwrap();
    gate.add_permits(2);
    assert!(load.await.unwrap().is_ok());
    assert_eq!(
        cache.stats().main_items,
        0,
        "the superseded value was not cached"
    );
    cache.get("racy").await.unwrap();
    assert_eq!(loader.loads.of("racy"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_stores_without_loading_and_replaces_hot_copies() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, builder(&loader));
    let key = key_owned_by(&cluster, 0, "set-");
    cluster[1]
        .cache
        .set(&key, &"first".to_owned(), None)
        .await
        .unwrap();
    for replica in &cluster {
        for _ in 0..3 {
            assert_eq!(replica.cache.get(&key).await.unwrap(), "first");
        }
    }
    cluster[2]
        .cache
        .set(&key, &"second".to_owned(), None)
        .await
        .unwrap();
    for replica in &cluster {
        assert_eq!(
            replica.cache.get(&key).await.unwrap(),
            "second",
            "stale on {}",
            replica.url
        );
    }
    // Set on the owner itself.
    cluster[0]
        .cache
        .set(&key, &"third".to_owned(), None)
        .await
        .unwrap();
    for replica in &cluster {
        assert_eq!(
            replica.cache.get(&key).await.unwrap(),
            "third",
            "stale on {}",
            replica.url
        );
    }
    assert_eq!(loader.loads.total(), 0, "set causes no load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_honoured_on_owner_and_peers() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, builder(&loader));
    let key = key_owned_by(&cluster, 0, "ttl-");
    let past = SystemTime::now() - Duration::from_secs(1);
    cluster[1]
        .cache
        .set(&key, &"expired".to_owned(), Some(past))
        .await
        .unwrap();
    for replica in &cluster {
        assert_eq!(
            replica.cache.get(&key).await.unwrap(),
            loader.value_for(&key)
        );
    }
    assert_eq!(
        loader.loads.of(&key),
        1,
        "the expired value was reloaded once, on the owner"
    );
    let future = SystemTime::now() + Duration::from_secs(3600);
    cluster[1]
        .cache
        .set(&key, &"fresh".to_owned(), Some(future))
        .await
        .unwrap();
    assert_eq!(cluster[2].cache.get(&key).await.unwrap(), "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_stops_generating_peer_requests() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, builder(&loader));
    let key = key_owned_by(&cluster, 0, "hot-");
    for _ in 0..1000 {
        cluster[1].cache.get(&key).await.unwrap();
        cluster[2].cache.get(&key).await.unwrap();
    }
    let owner = cluster[0].cache.stats();
    // Promotion on the second request: two peer requests from each non-owner, then hot hits.
    assert_eq!(owner.server_requests, 4, "peer requests for 2,000 gets");
    for replica in &cluster[1..] {
        let stats = replica.cache.stats();
        assert_eq!(stats.peer_loads, 2);
        assert_eq!(stats.hot_hits, 998);
    }
    assert_eq!(loader.loads.of(&key), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_key_is_not_promoted_to_the_hot_cache() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, builder(&loader));
    for i in 0..50 {
        let key = key_owned_by(&cluster, 0, &format!("once-{i}-"));
        cluster[1].cache.get(&key).await.unwrap();
    }
    assert_eq!(cluster[1].cache.stats().hot_items, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_during_steady_traffic_produce_no_errors() {
    // Loads wait at the gate, so each change is made while the round's gets are in flight.
    let gate = Arc::new(Semaphore::new(0));
    let loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let cluster = Arc::new(start_cluster(4, builder(&loader)));
    let all: Vec<String> = cluster.iter().map(|r| r.url.clone()).collect();
    let mut keys = Vec::new();
    for round in 0..20 {
        // Every replica asks for the round's 8 fresh keys at once.
        let round_keys: Vec<String> = (0..8).map(|k| format!("steady-{round}-{k}")).collect();
        let started = loader.loads.total();
        let gets: Vec<_> = (0..4)
            .flat_map(|i| round_keys.iter().map(move |key| (i, key.clone())))
            .map(|(i, key)| {
                let cluster = cluster.clone();
                tokio::spawn(async move { (key.clone(), cluster[i].cache.get(&key).await) })
            })
            .collect();
        // At least one load per key is running, held at the gate: the change overlaps them.
        loader.loads.started(started + 8).await;
        // Replica 3 leaves the others' rings, or rejoins them; it keeps serving throughout.
        for replica in &cluster[..3] {
            if round % 2 == 0 {
                replica.cache.remove_peer(&all[3]).unwrap();
            } else {
                replica.cache.set_peers(&all).unwrap();
            }
        }
        // More permits than loads can start (8 keys, two owners each at most).
        gate.add_permits(64);
        for get in gets {
            let (key, value) = get.await.unwrap();
            assert_eq!(
                value.unwrap(),
                loader.value_for(&key),
                "{key} in round {round}"
            );
        }
        gate.forget_permits(gate.available_permits());
        keys.extend(round_keys);
    }
    for key in &keys {
        // Removing replica 3 moves only its own keys; only those can have two owners at once.
        let moved = cluster[3].cache.owner(key) == all[3];
        let loads = loader.loads.of(key);
        if moved {
            assert!(
                (1..=2).contains(&loads),
                "{key} (moving) loaded {loads} times"
            );
        } else {
            assert_eq!(loads, 1, "{key} (not moving) loaded {loads} times");
        }
    }
    let moving = keys
        .iter()
        .filter(|key| cluster[3].cache.owner(key) == all[3])
        .count();
    assert!(moving > 0, "some keys change owner with the membership");
    let stats: Vec<_> = cluster.iter().map(|r| r.cache.stats()).collect();
    assert_eq!(stats.iter().map(|s| s.peer_errors).sum::<u64>(), 0);
    assert_eq!(
        stats.iter().map(|s| s.local_loads).sum::<u64>(),
        loader.loads.total() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_reserved_characters_round_trip_between_replicas() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, builder(&loader));
    let tricky = [
        "",
        " ",
        "a b",
        "a+b",
        "/",
        "a/b/../c",
        "100%",
        "%41",
        "?x=1#y",
        "ключ",
        "emoji 🦀",
        ".",
        "..",
        "...",
        "\n\t",
    ];
    for key in tricky {
        for replica in &cluster {
            assert_eq!(
                replica.cache.get(key).await.unwrap(),
                loader.value_for(key),
                "{key:?}"
            );
        }
    }
    for key in tricky {
        let expected = if key == "." || key == ".." { 3 } else { 1 };
        assert_eq!(loader.loads.of(key), expected, "{key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_nested_under_a_prefix_serves_peers() {
    let loader = TestLoader::new();
    let cluster: Vec<_> = (0..3)
        .map(|_| {
            Replica::start_mounted("/internal/cache", |url| {
                Groupcache::builder(GROUP, url, loader.clone())
            })
        })
        .collect();
    groupcache_tests::connect(&cluster);
    assert!(cluster[0].url.ends_with("/internal/cache"));
    let key = key_owned_by(&cluster, 0, "nested-");
    assert_eq!(
        cluster[1].cache.get(&key).await.unwrap(),
        loader.value_for(&key)
    );
    assert_eq!(cluster[0].cache.stats().server_requests, 1);
    assert_eq!(cluster[1].cache.stats().peer_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_keys_fail_locally_with_a_typed_error() {
    let loader = TestLoader::new();
    let cluster = start_cluster(1, |url| {
        Groupcache::builder(GROUP, url, loader.clone()).max_key_bytes(8)
    });
    match cluster[0].cache.get("123456789").await {
        Err(Error::KeyTooLarge { len: 9, limit: 8 }) => {}
        other => panic!("expected KeyTooLarge, got {other:?}"),
    }
    assert_eq!(loader.loads.total(), 0);
}
