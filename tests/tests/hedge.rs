//! Issue 25, item 4: hedged fetches (`Builder::hedge_fetches`). A fetch whose owner answers
//! nothing for longer than its answers usually take is asked of the key's successor too; the
//! successor loads the key once for every replica that hedges, so the source sees at most one
//! extra load per key; an owner that answers quickly, or that keeps answering other requests
//! while one load is slow, is not hedged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use groupcache_rs::Groupcache;
use groupcache_tests::{GROUP, Replica, TestLoader, connect, keys_owned};
use tokio::sync::Semaphore;

/// Four replicas sharing one count of loads: 0 is the owner of the keys under test, whose loads
/// wait at `gate`; 1 their successor; 2 and 3 ask. Every asker has heard from the owner and the
/// successor once (so it has an estimate of the owner's answers and knows the successor takes
/// batches, i.e. is a replica of this library that can stand in).
struct Four {
    replicas: Vec<Replica<TestLoader>>,
    loader: TestLoader,
    gate: Arc<Semaphore>,
}

impl Four {
    async fn start(hedge: bool) -> Four {
        let loader = TestLoader::new();
        let gate = Arc::new(Semaphore::new(0));
        let owner_loader = TestLoader {
            gate: Some(gate.clone()),
            ..loader.clone()
        };
        let replicas: Vec<_> = (0..4)
            .map(|i| {
                let loader = if i == 0 {
                    owner_loader.clone()
                } else {
                    loader.clone()
                };
                // Never promoted to the hot cache: a get of a key the owner holds is always a
                // request to it.
                Replica::start(|url| {
                    Groupcache::builder(GROUP, url, loader)
                        .hot_promotion_requests(u32::MAX)
                        .hedge_fetches(hedge)
                })
            })
            .collect();
        connect(&replicas);
        let four = Four {
            replicas,
            loader,
            gate,
        };
        for (i, asker) in four.replicas[2..].iter().enumerate() {
            for member in [0, 1] {
                let prefix = format!("probe-{i}-{member}-");
                let key = keys_owned(&asker.cache, &four.replicas[member].url, &prefix)
                    .next()
                    .unwrap();
                if member == 0 {
                    four.gate.add_permits(1);
                }
                asker.cache.get(&key).await.unwrap();
            }
        }
        four
    }

    /// Keys `{prefix}{i}` that replica 0 owns and whose successor is replica 1.
    fn keys<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = String> + 'a {
        let without_owner = Groupcache::builder("ring", &self.replicas[1].url, TestLoader::new())
            .build()
            .unwrap();
        let urls: Vec<&str> = self.replicas[1..].iter().map(|r| r.url.as_str()).collect();
        without_owner.set_peers(&urls).unwrap();
        let successor = self.replicas[1].url.clone();
        keys_owned(&self.replicas[2].cache, &self.replicas[0].url, prefix)
            .filter(move |key| without_owner.owner(key) == successor)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_owner_is_hedged_to_the_successor_which_loads_the_key_once_for_all() {
    let four = Four::start(true).await;
    let (asker, other) = (&four.replicas[2].cache, &four.replicas[3].cache);
    let key = four.keys("hedged-").next().unwrap();
    let loads_before = four.loader.loads.total();

    // The owner's load of the key hangs at its gate, and it answers nothing else meanwhile:
    // both askers hedge to the successor, which loads the key once for both.
    let started = Instant::now();
    let (first, second) = tokio::join!(asker.get(&key), other.get(&key));
    let elapsed = started.elapsed();
    assert_eq!(first.unwrap(), four.loader.value_for(&key));
    assert_eq!(second.unwrap(), four.loader.value_for(&key));
    assert!(
        elapsed >= Duration::from_millis(20) && elapsed < Duration::from_millis(900),
        "answered after {elapsed:?}: not after the hedge delay, nor before the detection"
    );
    assert_eq!(
        four.loader.loads.of(&key),
        2,
        "the owner's (still hung) and the successor's, once for both askers"
    );
    assert_eq!(four.loader.loads.total() - loads_before, 2);
    for cache in [asker, other] {
        let stats = cache.stats();
        assert_eq!((stats.hedges, stats.hedge_wins), (1, 1), "{stats:?}");
        assert_eq!(stats.peer_suspicions, 0, "a hedge suspects no one");
    }

    // The owner answers again; a later get of the key is served from the successor's or the
    // owner's copy, never loaded a third time.
    four.gate.add_permits(1);
    let again = four.replicas[3].cache.get(&key).await.unwrap();
    assert_eq!(again, four.loader.value_for(&key));
    assert!(four.loader.loads.of(&key) <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_owner_and_a_live_owner_with_a_slow_load_are_not_hedged() {
    let four = Four::start(true).await;
    let asker = &four.replicas[2].cache;
    // A fast owner: answers in about a millisecond, every time.
    four.gate.add_permits(1_000);
    for key in four.keys("fast-").take(50) {
        assert_eq!(asker.get(&key).await.unwrap(), four.loader.value_for(&key));
    }
    assert_eq!(asker.stats().hedges, 0, "a fast owner was hedged");
    four.gate.forget_permits(1_000);

    // A live owner whose load of one key is slow: it answers other requests meanwhile (gets of
    // the keys it holds, each a request to it), so the slow one is left to it.
    let slow = four.keys("slow-").next().unwrap();
    let loads = four.loader.loads.total();
    let get = tokio::spawn({
        let (cache, key) = (asker.clone(), slow.clone());
        async move { cache.get(&key).await }
    });
    four.loader.loads.started(loads + 1).await;
    let held: Vec<String> = four.keys("fast-").take(50).collect();
    let requests = four.replicas[0].cache.stats().server_requests;
    let busy = Instant::now();
    for key in held.iter().cycle() {
        if busy.elapsed() > Duration::from_millis(400) {
            break;
        }
        assert_eq!(asker.get(key).await.unwrap(), four.loader.value_for(key));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!get.is_finished(), "the slow load was answered early");
    assert!(four.replicas[0].cache.stats().server_requests - requests >= 20);
    four.gate.add_permits(1);
    assert_eq!(get.await.unwrap().unwrap(), four.loader.value_for(&slow));
    assert_eq!(
        asker.stats().hedges,
        0,
        "a live owner's slow load was hedged"
    );
    assert_eq!(four.loader.loads.of(&slow), 1, "loaded once, by its owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hedging_off_a_silent_owner_is_waited_for() {
    let four = Four::start(false).await;
    let asker = &four.replicas[2].cache;
    let key = four.keys("unhedged-").next().unwrap();
    let loads = four.loader.loads.total();
    let get = tokio::spawn({
        let (cache, key) = (asker.clone(), key.clone());
        async move { cache.get(&key).await }
    });
    four.loader.loads.started(loads + 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!get.is_finished(), "answered without the owner");
    four.gate.add_permits(1);
    assert_eq!(get.await.unwrap().unwrap(), four.loader.value_for(&key));
    assert_eq!(asker.stats().hedges, 0);
    assert_eq!(four.loader.loads.of(&key), 1);
}
