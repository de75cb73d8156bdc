//! Read-your-writes, interleaving by interleaving (issue 23): after the source of truth changes
//! and `remove` (or `set`) returns `Ok`, no `get` that starts then answers the old value, on the
//! owner or on any replica, through a single get, a batch, a peer's batch, a coalesced fetch or a
//! warm hand-off, and no hot cache keeps it.
//!
//! Each test holds the first load of a key at a gate after it has read the source (a load that
//! read the old value and has not finished), writes, and reads again while it is held. The
//! reads after the write must not wait for the held load: the bound on each is only there so
//! that the old behaviour (joining the held load) fails instead of hanging.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use groupcache_rs::{Builder, Error, Groupcache, RingMode};
use groupcache_tests::{GROUP, Replica, TestLoader, key_owned_by, start_cluster};
use tokio::sync::Semaphore;

/// How long a read after the write may take before the test calls it stuck behind the held
/// load. A read that does not wait takes milliseconds.
const STUCK: Duration = Duration::from_secs(10);

/// A loader whose first load of each key waits at the returned gate.
fn held_loader() -> (TestLoader, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let loader = TestLoader {
        gate_first: Some(gate.clone()),
        ..TestLoader::new()
    };
    (loader, gate)
}

/// Every fetched value is kept in the hot cache, so a stale one would stay.
fn promoting(loader: &TestLoader) -> impl FnMut(String) -> Builder<TestLoader> + '_ {
    move |url| Groupcache::builder(GROUP, url, loader.clone()).hot_promotion_requests(1)
}

/// `read`, which must not wait for the held load.
async fn unstuck<T>(what: &str, read: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STUCK, read)
        .await
        .unwrap_or_else(|_| panic!("{what} waited for the load the write overtook"))
}

/// A read's answer, to come.
type Answer = Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>;

/// How a test reads one key on one replica.
type Read = fn(Groupcache<TestLoader>, String) -> Answer;

/// Issue 23's first scenario, read through `read`: replica 1 asks for `key`, whose owner is
/// replica 0, and the owner's load reads the source and waits at `gate` (the `loads`-th load to
/// start); the source changes and `remove` on replica 2 returns `Ok`. Every read on every
/// replica after that answers the new value without waiting for the old load; the read from
/// before the write gets the old value; and when the old load ends, no replica holds it.
async fn a_read_after_a_remove_does_not_wait_for_the_load_it_overtook(
    cluster: &[Replica<TestLoader>],
    loader: &TestLoader,
    gate: &Semaphore,
    key: &str,
    loads: usize,
    read: Read,
) {
    let old = loader.value_for(key);
    let before = tokio::spawn(read(cluster[1].cache.clone(), key.to_owned()));
    loader.loads.started(loads).await;
    loader.generation.fetch_add(1, Ordering::SeqCst);
    let new = loader.value_for(key);
    cluster[2].cache.remove(key).await.unwrap();

    for (i, replica) in cluster.iter().enumerate() {
        let value = unstuck(
            &format!("a read on replica {i}"),
            read(replica.cache.clone(), key.to_owned()),
        )
        .await;
        assert_eq!(
            value.unwrap(),
            new,
            "replica {i} answered the removed value"
        );
    }
    gate.add_permits(1);
    assert_eq!(
        before.await.unwrap().unwrap(),
        old,
        "a read from before the write has the value it loaded"
    );
    for (i, replica) in cluster.iter().enumerate() {
        for _ in 0..3 {
            assert_eq!(
                replica.cache.get(key).await.unwrap(),
                new,
                "replica {i} kept the old load's value"
            );
        }
    }
}

fn single_get(cache: Groupcache<TestLoader>, key: String) -> Answer {
    Box::pin(async move { cache.get(&key).await })
}

fn batch_get(cache: Groupcache<TestLoader>, key: String) -> Answer {
    Box::pin(async move {
        let mut values = cache.get_many(&[key]).await;
        values.remove(0)
    })
}

/// Every replica learns that the owner, replica 0, takes batches (the gate's first permit is
/// for this key's load).
async fn warm(cluster: &[Replica<TestLoader>], gate: &Semaphore) {
    let warm = key_owned_by(cluster, 0, "warm-");
    gate.add_permits(1);
    for replica in cluster {
        replica.cache.get(&warm).await.unwrap();
    }
}

/// Single gets: on the owner (its own load) and through both peers (fetches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_after_a_remove_answers_the_new_value_while_the_old_load_is_still_running() {
    let (loader, gate) = held_loader();
    let cluster = start_cluster(3, promoting(&loader));
    let key = key_owned_by(&cluster, 0, "held-");
    a_read_after_a_remove_does_not_wait_for_the_load_it_overtook(
        &cluster, &loader, &gate, &key, 1, single_get,
    )
    .await;
}

/// Batches: `get_many` on the owner (its own `load_many`) and on the others (a batch to the
/// owner, which serves it with its `load_many`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_and_peer_batches_after_a_remove_answer_the_new_value() {
    let (loader, gate) = held_loader();
    let cluster = start_cluster(3, promoting(&loader));
    warm(&cluster, &gate).await;
    let key = key_owned_by(&cluster, 0, "held-batch-");
    a_read_after_a_remove_does_not_wait_for_the_load_it_overtook(
        &cluster, &loader, &gate, &key, 2, batch_get,
    )
    .await;
}

/// Coalesced fetches (`Builder::coalesce_fetches`). Two requests may be in flight to the owner,
/// so the read after the write is sent at once rather than queued behind the held one (which
/// would make it wait, though for the new value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_fetches_after_a_remove_answer_the_new_value() {
    let (loader, gate) = held_loader();
    let cluster = start_cluster(3, |url| {
        Groupcache::builder(GROUP, url, loader.clone())
            .hot_promotion_requests(1)
            .coalesce_fetches(2)
    });
    warm(&cluster, &gate).await;
    let key = key_owned_by(&cluster, 0, "held-coalesced-");
    a_read_after_a_remove_does_not_wait_for_the_load_it_overtook(
        &cluster, &loader, &gate, &key, 2, single_get,
    )
    .await;
}

/// Issue 23's second scenario, step by step as a `remove` runs: the key's new owner (just
/// joined) has had its `DELETE`, the previous owner not yet. A `get` on the new owner in between
/// may answer either value, but must not store the previous owner's old copy: once the previous
/// owner has had its `DELETE` too (the `remove` returned `Ok`), the new owner must answer the
/// new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_between_the_owners_delete_and_the_previous_owners_does_not_bring_the_old_value_back()
 {
    let loader = TestLoader::new();
    let configure = |url| {
        Groupcache::builder(GROUP, url, loader.clone())
            .ring_mode(RingMode::Balanced)
            .handoff_timeout(Duration::from_secs(2))
    };
    let previous = Replica::start(configure);
    let other = Replica::start(configure);
    let joining = Replica::start(configure);
    let two = [previous.url.as_str(), other.url.as_str()];
    let three = [
        previous.url.as_str(),
        other.url.as_str(),
        joining.url.as_str(),
    ];
    for replica in [&previous, &other] {
        replica.cache.set_peers(two).unwrap();
    }
    // A key the previous owner holds and the joining replica takes.
    joining.cache.set_peers(three).unwrap();
    let key = (0..)
        .map(|i| format!("moving-{i}"))
        .find(|key| {
            previous.cache.owner(key) == previous.url && joining.cache.owner(key) == joining.url
        })
        .unwrap();
    let old = loader.value_for(&key);
    assert_eq!(previous.cache.get(&key).await.unwrap(), old);
    for replica in [&previous, &other] {
        replica.cache.set_peers(three).unwrap();
    }
    // The source changes; a remove reaches the owner first.
    loader.generation.fetch_add(1, Ordering::SeqCst);
    let new = loader.value_for(&key);
    let http = groupcache_tests::http_client().build().unwrap();
    let delete = |replica: &Replica<TestLoader>| {
        let url = format!("{}/_groupcache/{GROUP}/{key}", replica.url);
        let http = http.clone();
        async move {
            let status = http.delete(url).send().await.unwrap().status();
            assert!(status.is_success(), "DELETE answered {status}");
        }
    };
    delete(&joining).await;
    // A get on the new owner, during the remove.
    joining.cache.get(&key).await.unwrap();
    // The rest of the remove: the others drop their copies; it would return `Ok` now.
    delete(&previous).await;
    delete(&other).await;
    for replica in [&joining, &previous, &other] {
        assert_eq!(
            replica.cache.get(&key).await.unwrap(),
            new,
            "{} answered the removed value after the remove",
            replica.url
        );
    }
}

/// Issue 23's fourth finding: a `set` whose owner cannot be reached still drops the other
/// replicas' copies of the old value, as a `remove` does, and reports the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_that_fails_on_the_owner_still_drops_the_other_replicas_copies() {
    let loader = TestLoader::new();
    let mut cluster = start_cluster(3, promoting(&loader));
    let key = key_owned_by(&cluster, 0, "set-down-");
    for replica in &cluster[1..] {
        replica.cache.get(&key).await.unwrap();
        assert_eq!(replica.cache.stats().hot_items, 1);
    }
    cluster[0].kill();
    let owner = cluster[0].url.clone();
    match cluster[1].cache.set(&key, &"new".to_owned(), None).await {
        Err(Error::Peer { peer, .. }) => assert_eq!(peer, owner),
        other => panic!("expected the owner's failure, got {other:?}"),
    }
    for replica in &cluster[1..] {
        assert_eq!(
            replica.cache.stats().hot_items,
            0,
            "{} kept its copy of the old value",
            replica.url
        );
    }
}

/// The helper's finding after the fixes above: a `remove` that cannot reach the key's owner (a
/// frozen process, a partition) returns `Err`, and the owner, which cannot know it missed the
/// write, kept the old value (without any bound, under a settled ring) and handed it to every
/// replica once it answered again. The remover now sends the write again until the owner answers
/// (`repairs.rs`), so the old value goes as soon as it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remove_that_missed_a_frozen_owner_reaches_it_once_it_answers() {
    use groupcache_tests::process::{keys_owned_by, value_for};
    /// The repairs' longest pause (`REPAIR_MAX_PAUSE`, 1 s) and the round that waited for the
    /// frozen owner, with room for a loaded machine.
    const REPAIRED_WITHIN: Duration = Duration::from_secs(10);
    let flags = ["--peer-timeout-ms", "500", "--owner-suspicion-ms", "1"];
    let replicas = three_replicas(&flags).await;
    let urls: Vec<&str> = replicas.iter().map(|r| r.url.as_str()).collect();
    let key = keys_owned_by(&urls, &replicas[0].url, "frozen-", 1).remove(0);
    let old = value_for(&key, 0);
    for replica in &replicas {
        let (status, body) = replica.get(&key).await.unwrap();
        assert_eq!((status, &body[..]), (200, old.as_bytes()));
    }
    // The source changes; the remove cannot reach the frozen owner.
    for replica in &replicas {
        replica.set_generation(1).await;
    }
    let new = value_for(&key, 1);
    replicas[0].freeze();
    let status = replicas[1].remove(&key).await.unwrap();
    assert_eq!(
        status, 500,
        "the remove reports the owner it could not reach"
    );
    replicas[0].resume();

    let deadline = tokio::time::Instant::now() + REPAIRED_WITHIN;
    loop {
        let (status, body) = replicas[0].get(&key).await.unwrap();
        assert_eq!(status, 200);
        if body == new.as_bytes() {
            break;
        }
        assert_eq!(&body[..], old.as_bytes());
        assert!(
            tokio::time::Instant::now() < deadline,
            "the owner still serves the removed value {REPAIRED_WITHIN:?} after it answers again"
        );
        tokio::task::yield_now().await;
    }
    for replica in &replicas {
        let (status, body) = replica.get(&key).await.unwrap();
        assert_eq!(
            (status, &body[..]),
            (200, new.as_bytes()),
            "{}",
            replica.url
        );
    }
}

/// Issue 27's purge, for a replica that missed it: frozen while another replica purges, it
/// still holds the values from before the purge when it resumes; it is sent the purge again
/// until it takes it, and then serves, as every replica does, the values loaded after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_that_missed_a_frozen_replica_reaches_it_once_it_answers() {
    use groupcache_tests::process::{keys_owned_by, value_for};
    const REPAIRED_WITHIN: Duration = Duration::from_secs(10);
    let flags = ["--peer-timeout-ms", "500", "--owner-suspicion-ms", "1"];
    let replicas = three_replicas(&flags).await;
    let urls: Vec<&str> = replicas.iter().map(|r| r.url.as_str()).collect();
    let keys = keys_owned_by(&urls, &replicas[0].url, "purged-", 3);
    for key in &keys {
        for replica in &replicas {
            let (status, body) = replica.get(key).await.unwrap();
            assert_eq!((status, &body[..]), (200, value_for(key, 0).as_bytes()));
        }
    }
    for replica in &replicas {
        replica.set_generation(1).await;
    }
    replicas[0].freeze();
    let status = replicas[1].purge().await.unwrap();
    assert_eq!(
        status, 500,
        "the purge reports the replica it could not reach"
    );
    replicas[0].resume();
    let deadline = tokio::time::Instant::now() + REPAIRED_WITHIN;
    for key in &keys {
        loop {
            let (status, body) = replicas[0].get(key).await.unwrap();
            assert_eq!(status, 200);
            if body == value_for(key, 1).as_bytes() {
                break;
            }
            assert_eq!(&body[..], value_for(key, 0).as_bytes());
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key}: the replica still serves what it held {REPAIRED_WITHIN:?} after it answers again"
            );
            tokio::task::yield_now().await;
        }
    }
    for key in &keys {
        for replica in &replicas {
            let (status, body) = replica.get(key).await.unwrap();
            assert_eq!(
                (status, &body[..]),
                (200, value_for(key, 1).as_bytes()),
                "{key} on {}",
                replica.url
            );
        }
    }
}

/// What a repair leaves behind: between the moment the owner that missed a remove answers again
/// and the moment its repair lands, another replica can fetch the old value from it and keep it
/// as a hot copy for `hot_max_age`. The repair now removes the key on every other member once the
/// owner has it, so that copy goes with the owner's.
///
/// Made deterministic without timing: the remover suspects the owner (a fetch that timed out
/// while the owner was frozen, suspicion for a minute, no failure detector), so its remove skips
/// the owner, healthy again, altogether; the remover is then frozen before its first repair round
/// (100 ms after the write), another replica fetches the old value from the owner, and the
/// remover resumes. `hot_max_age` is a minute: only the repair's removes can end that copy within
/// the test's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_fetched_from_an_owner_before_its_repair_landed_go_with_the_repair() {
    use groupcache_tests::process::{keys_owned_by, value_for};
    /// Far below `hot_max_age`, with room for a loaded machine.
    const GONE_WITHIN: Duration = Duration::from_secs(10);
    let flags = [
        "--peer-timeout-ms",
        "300",
        "--owner-suspicion-ms",
        "60000",
        "--failure-detection-ms",
        "0",
        "--hot-promotion",
        "1",
        "--hot-max-age-ms",
        "60000",
    ];
    let replicas = three_replicas(&flags).await;
    let urls: Vec<&str> = replicas.iter().map(|r| r.url.as_str()).collect();
    let (owner, remover, reader) = (&replicas[0], &replicas[1], &replicas[2]);
    let mut keys = keys_owned_by(&urls, &owner.url, "repaired-", 4).into_iter();
    let Some(probe) = keys.next() else {
        panic!("no key owned by the owner");
    };
    // The remover suspects the owner: its fetch times out while the owner is frozen.
    owner.freeze();
    let (status, _) = remover.get(&probe).await.unwrap();
    assert_eq!(
        status, 200,
        "loaded by the remover itself once the owner timed out"
    );
    owner.resume();

    // The remover's first repair round comes 100 ms after its write: freezing it in between
    // can miss on a loaded machine, so each key is a fresh try.
    let mut tries = 0;
    let key = loop {
        let Some(key) = keys.next() else {
            panic!("the remover's repair always came before it was frozen ({tries} tries)");
        };
        tries += 1;
        let generation = tries;
        let old = value_for(&key, generation - 1);
        for replica in &replicas {
            replica.set_generation(generation - 1).await;
        }
        let (status, body) = reader.get(&key).await.unwrap();
        assert_eq!((status, &body[..]), (200, old.as_bytes()));
        for replica in &replicas {
            replica.set_generation(generation).await;
        }
        let status = remover.remove(&key).await.unwrap();
        remover.freeze();
        assert_eq!(status, 500, "the remove reports the suspected owner");
        let (status, body) = reader.get(&key).await.unwrap();
        assert_eq!(status, 200);
        if body == old.as_bytes() {
            break (key, generation);
        }
        // The repair landed before the freeze: the reader fetched the new value.
        remover.resume();
    };
    let (key, generation) = key;
    let new = value_for(&key, generation);
    remover.resume();
    let deadline = tokio::time::Instant::now() + GONE_WITHIN;
    loop {
        let (status, body) = reader.get(&key).await.unwrap();
        assert_eq!(status, 200);
        if body == new.as_bytes() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} still serves the copy it fetched before the repair, {GONE_WITHIN:?} after the \
             remover resumed",
            reader.url
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three replica processes started with `flags`, each with the three of them as its peers.
async fn three_replicas(flags: &[&str]) -> Vec<groupcache_tests::process::ProcessReplica> {
    use groupcache_tests::process::ProcessReplica;
    const BINARY: &str = env!("CARGO_BIN_EXE_replica");
    let replicas: Vec<ProcessReplica> = (0..3)
        .map(|_| ProcessReplica::start(BINARY, flags))
        .collect();
    let urls: Vec<&str> = replicas.iter().map(|r| r.url.as_str()).collect();
    for replica in &replicas {
        replica.set_peers(&urls).await;
    }
    replicas
}
