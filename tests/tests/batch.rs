//! `get_many` across clusters of real replicas: one peer request per owner, each key loaded once
//! however singles and batches race, errors and failures per key.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use groupcache_rs::{Error, Groupcache, RingMode};
use groupcache_tests::{GROUP, Replica, TestLoader, connect, key_owned, start_cluster};
use tokio::sync::Semaphore;

/// Makes every replica hear from every other once (a single `get` of a key each peer owns), so
/// each knows which peers take batches. Returns the probe keys.
async fn introduce(cluster: &[Replica<TestLoader>]) -> HashSet<String> {
    let mut probes = HashSet::new();
    for replica in cluster {
        for peer in cluster.iter().filter(|peer| peer.url != replica.url) {
            let key = key_owned(
                &replica.cache,
                &peer.url,
                &format!("probe-{}-", replica.url),
            );
            replica.cache.get(&key).await.expect("probe");
            probes.insert(key);
        }
    }
    probes
}

/// Two replicas loading through `loader`, each group built by `configure`, introduced to each
/// other (`introduce`); and `n` keys the second owns, named from `prefix`, for the first to ask.
async fn pair_and_keys(
    loader: &TestLoader,
    configure: impl Fn(groupcache_rs::Builder<TestLoader>) -> groupcache_rs::Builder<TestLoader>,
    prefix: &str,
    n: usize,
) -> (Vec<Replica<TestLoader>>, Vec<String>) {
    let cluster = start_cluster(2, |url| {
        configure(Groupcache::builder(GROUP, url, loader.clone()))
    });
    introduce(&cluster).await;
    let keys = groupcache_tests::keys_owned(&cluster[0].cache, &cluster[1].url, prefix)
        .take(n)
        .collect();
    (cluster, keys)
}

/// Waits until `done` holds (at most 10 s), yielding in between: for counters with no signal.
async fn until(done: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the condition held within 10 s");
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// 1,000 keys from one replica: exactly one peer request per other owner, each key loaded once,
/// on its owner; asked again, all are answered from caches without any request.
async fn one_request_per_owner(replicas: usize, mode: RingMode) {
    let loader = TestLoader::new();
    let cluster = start_cluster(replicas, |url| {
        Groupcache::builder(GROUP, url, loader.clone())
            .ring_mode(mode)
            .hot_promotion_requests(1)
    });
    introduce(&cluster).await;
    let before: Vec<u64> = cluster
        .iter()
        .map(|r| r.cache.stats().server_requests)
        .collect();
    let keys = keys("many-", 1000);
    let asker = &cluster[0].cache;
    let values = asker.get_many(&keys).await;
    assert_eq!(values.len(), keys.len());
    for (key, value) in keys.iter().zip(&values) {
        assert_eq!(value.as_ref().unwrap(), &loader.value_for(key));
        assert_eq!(loader.loads.of(key), 1, "{key} loaded more than once");
    }
    for (replica, before) in cluster.iter().zip(&before) {
        let owned = keys
            .iter()
            .filter(|k| asker.owner(k) == replica.url)
            .count();
        assert!(owned > 0, "every replica owns some of 1,000 keys");
        let requests = replica.cache.stats().server_requests - before;
        let expected = u64::from(replica.url != cluster[0].url);
        assert_eq!(requests, expected, "{} owns {owned} keys", replica.url);
        // Each key loaded on its owner.
        let loaded_here = keys
            .iter()
            .filter(|k| asker.owner(k) == replica.url && loader.loads.of(k) == 1)
            .count();
        assert_eq!(loaded_here, owned);
    }
    // Asked again: the owner's main cache or this replica's hot cache, no request.
    let before: Vec<u64> = cluster
        .iter()
        .map(|r| r.cache.stats().server_requests)
        .collect();
    let again = asker.get_many(&keys).await;
    assert!(
        again
            .iter()
            .zip(&values)
            .all(|(a, b)| a.as_ref().ok() == b.as_ref().ok())
    );
    let after: Vec<u64> = cluster
        .iter()
        .map(|r| r.cache.stats().server_requests)
        .collect();
    assert_eq!(after, before, "cached keys are answered without requests");
    assert_eq!(
        loader.loads.total(),
        keys.len() + (replicas * (replicas - 1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_over_three_replicas_make_one_request_per_owner() {
    one_request_per_owner(3, RingMode::Balanced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_over_five_replicas_make_one_request_per_owner_in_go_mode() {
    one_request_per_owner(5, RingMode::GoCompatible).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_get_batches_of_at_most_max_batch_keys() {
    let loader = TestLoader::new();
    let (cluster, keys) =
        pair_and_keys(&loader, |group| group.max_batch_keys(10), "capped-", 25).await;
    let asker = &cluster[0].cache;
    let before = cluster[1].cache.stats().server_requests;
    let values = asker.get_many(&keys).await;
    assert!(values.iter().all(Result::is_ok));
    assert_eq!(cluster[1].cache.stats().server_requests - before, 3);
}

/// An owner's answer carries at most `max_batch_bytes` of values and answers the keys past it
/// "ask again": a `get_many` of more values than one answer carries takes several rounds, each
/// answering some keys, and gets every value from the owner (none loaded on the asker, none
/// loaded twice), however many rounds that takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_values_than_an_answer_carries_come_in_rounds_from_the_owner() {
    let loader = TestLoader::new();
    // Values of about 16 bytes: ten to an answer.
    let (cluster, keys) =
        pair_and_keys(&loader, |group| group.max_batch_bytes(170), "rounds-", 100).await;
    let asker = &cluster[0].cache;
    let before = (
        cluster[1].cache.stats().server_requests,
        asker.stats().local_loads,
    );
    let values = asker.get_many(&keys).await;
    for (key, value) in keys.iter().zip(&values) {
        assert_eq!(value.as_ref().unwrap(), &loader.value_for(key));
        assert_eq!(loader.loads.of(key), 1, "{key} loaded more than once");
    }
    let requests = cluster[1].cache.stats().server_requests - before.0;
    assert!(
        (10..=20).contains(&requests),
        "{requests} batches for 100 values of which ten fit an answer"
    );
    assert_eq!(
        asker.stats().local_loads,
        before.1,
        "none loaded on the asker"
    );
}

/// An owner whose budget of batch answers in flight is taken (here: none at all) answers every
/// key "ask again" and loads nothing; its asker asks again for 4 rounds that answer nothing, then
/// loads the keys itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_without_room_for_answers_loads_nothing_and_its_asker_loads_locally() {
    use groupcache_rs_pb::{BatchEntry, BatchRequest};
    use prost::Message;

    let loader = TestLoader::new();
    let (cluster, keys) = pair_and_keys(
        &loader,
        |group| group.max_batch_answer_bytes(0),
        "no-room-",
        5,
    )
    .await;
    let asker = &cluster[0].cache;
    let body = BatchRequest {
        group: Some(GROUP.into()),
        keys: keys.clone(),
        max_answer_bytes: None,
        max_wait_ms: None,
    }
    .encode_to_vec();
    let client = groupcache_tests::http_client().build().unwrap();
    let answer = client
        .post(format!("{}/_groupcache/{GROUP}/_batch", cluster[1].url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let mut rest = answer.bytes().await.unwrap();
    for key in &keys {
        let entry = BatchEntry::decode_length_delimited(&mut rest).unwrap();
        assert_eq!(entry.pending, Some(true), "{key}: ask again");
        assert_eq!(loader.loads.of(key), 0, "{key} loaded");
    }
    let before = (
        cluster[1].cache.stats().server_requests,
        asker.stats().local_loads,
    );
    let values = asker.get_many(&keys).await;
    for (key, value) in keys.iter().zip(&values) {
        assert_eq!(value.as_ref().unwrap(), &loader.value_for(key));
    }
    assert_eq!(cluster[1].cache.stats().server_requests - before.0, 4);
    assert_eq!(asker.stats().local_loads - before.1, 5);
}

/// From every replica at once, a `get_many` of all keys and a single `get` of each: every key is
/// loaded exactly once cluster-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singles_and_batches_racing_from_every_replica_load_each_key_once() {
    let loader = TestLoader {
        delay: Duration::from_millis(50),
        ..TestLoader::new()
    };
    let cluster = start_cluster(3, |url| Groupcache::builder(GROUP, url, loader.clone()));
    let probes = introduce(&cluster).await.len();
    let keys = keys("race-", 200);
    let mut tasks = Vec::new();
    for replica in &cluster {
        for round in 0..2 {
            let (cache, keys) = (replica.cache.clone(), keys.clone());
            tasks.push(tokio::spawn(async move {
                let mut keys = keys;
                if round == 1 {
                    keys.reverse();
                }
                let values = cache.get_many(&keys).await;
                keys.into_iter().zip(values).collect::<Vec<_>>()
            }));
        }
        for key in &keys {
            let (cache, key) = (replica.cache.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let value = cache.get(&key).await;
                vec![(key, value)]
            }));
        }
    }
    for task in tasks {
        for (key, value) in task.await.unwrap() {
            assert_eq!(value.unwrap(), loader.value_for(&key));
        }
    }
    for key in &keys {
        assert_eq!(loader.loads.of(key), 1, "{key} loaded more than once");
    }
    assert_eq!(loader.loads.total(), keys.len() + probes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_error_reaches_only_its_keys() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, |url| Groupcache::builder(GROUP, url, loader.clone()));
    introduce(&cluster).await;
    let mut keys = keys("fine-", 30);
    keys.extend((0..30).map(|i| format!("error:{i}")));
    let values = cluster[0].cache.get_many(&keys).await;
    let mut remote_errors = 0;
    for (key, value) in keys.iter().zip(values) {
        match (key.starts_with("error:"), value) {
            (false, Ok(value)) => assert_eq!(value, loader.value_for(key)),
            (true, Err(Error::RemoteLoader { message, .. })) => {
                assert!(message.contains(key.as_str()), "{message}");
                remote_errors += 1;
            }
            (true, Err(error)) => {
                assert!(
                    error.loader_error::<groupcache_tests::NoValue>().is_some(),
                    "{error}"
                );
            }
            (failing, value) => panic!("{key} (failing: {failing}): {value:?}"),
        }
    }
    assert!(remote_errors > 0, "some failing keys are owned by peers");
    assert_eq!(
        cluster[0].cache.stats().peer_errors,
        0,
        "not a peer failure"
    );
}

/// The owner of some keys is killed while it holds their batch: those keys, and only those, go
/// to their successors on the ring, as single fetches do, so a second replica asking for them
/// while the owner is down loads none of them again (before, each asker loaded them itself); the
/// other owner's keys come from their owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_down_mid_batch_hands_its_keys_to_their_successors() {
    let loader = TestLoader::new();
    let gate = Arc::new(Semaphore::new(0));
    let held = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let mut cluster = vec![
        Replica::start(|url| Groupcache::builder(GROUP, url, loader.clone())),
        Replica::start(|url| Groupcache::builder(GROUP, url, loader.clone())),
        Replica::start(|url| Groupcache::builder(GROUP, url, held.clone())),
    ];
    connect(&cluster);
    // Let the probes of the held owner's keys through.
    gate.add_permits(2);
    introduce(&cluster).await;
    let probes_on_held = held.loads.total();
    let keys = keys("down-", 60);
    let asker = cluster[0].cache.clone();
    let (one, dying) = (cluster[1].url.clone(), cluster[2].url.clone());
    let on_dying: Vec<&String> = keys.iter().filter(|k| asker.owner(k) == dying).collect();
    let on_one = keys.iter().filter(|k| asker.owner(k) == one).count();
    assert!(!on_dying.is_empty() && on_one > 0);
    let asking = {
        let (asker, keys) = (asker.clone(), keys.clone());
        tokio::spawn(async move { asker.get_many(&keys).await })
    };
    // The held owner has started loading the batch's keys: it has the request.
    held.loads.started(probes_on_held + on_dying.len()).await;
    cluster[2].kill();
    let values = asking.await.unwrap();
    for (key, value) in keys.iter().zip(values) {
        assert_eq!(value.unwrap(), loader.value_for(key), "{key}");
    }
    for key in &on_dying {
        assert_eq!(loader.loads.of(key), 1, "{key} loaded once");
    }
    assert_eq!(asker.stats().peer_errors, 1, "one failed batch");
    let again = cluster[1].cache.get_many(&on_dying).await;
    for (key, value) in on_dying.iter().zip(again) {
        assert_eq!(value.unwrap(), loader.value_for(key), "{key}");
        assert_eq!(
            loader.loads.of(key),
            1,
            "{key} loaded again by a second replica while its owner is down"
        );
    }
}

/// Keys golang/groupcache cannot carry in a URL, and a key named like the batch path, work in a
/// `get_many` and in a `get`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_a_url_cannot_carry_and_a_key_named_batch_still_work() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, |url| Groupcache::builder(GROUP, url, loader.clone()));
    introduce(&cluster).await;
    let keys = [".", "..", "_batch", "a/b", "", "ключ %2F"];
    for replica in &cluster {
        let values = replica.cache.get_many(&keys).await;
        for (key, value) in keys.iter().zip(values) {
            assert_eq!(value.unwrap(), loader.value_for(key), "{key:?}");
        }
        for key in keys {
            assert_eq!(replica.cache.get(key).await.unwrap(), loader.value_for(key));
        }
    }
    // `_batch` by GET is a key like any other: loaded once, on its owner.
    assert_eq!(loader.loads.of("_batch"), 1);
}

/// A batch loader over the test loader: counts its `load_many` calls.
#[derive(Clone, Default)]
struct ManyLoader {
    single: TestLoader,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl groupcache_rs::Loader for ManyLoader {
    type Value = String;
    type Error = groupcache_tests::NoValue;

    async fn load(&self, key: &str) -> Result<groupcache_rs::Loaded<String>, Self::Error> {
        self.single.load(key).await
    }

    async fn load_many(
        &self,
        keys: &[String],
        results: &groupcache_rs::Results<String, Self::Error>,
    ) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // One "query" for all the keys.
        for (index, key) in keys.iter().enumerate() {
            results.put(index, self.single.load(key).await);
        }
    }
}

/// A cold `get_many` of 1,000 keys over 3 replicas: one `load_many` call per owner, each key
/// loaded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_get_many_makes_one_load_many_call_per_owner() {
    let loader = ManyLoader::default();
    let cluster = start_cluster(3, |url| Groupcache::builder(GROUP, url, loader.clone()));
    for replica in &cluster {
        for peer in cluster.iter().filter(|peer| peer.url != replica.url) {
            let key = key_owned(
                &replica.cache,
                &peer.url,
                &format!("probe-{}-", replica.url),
            );
            replica.cache.get(&key).await.expect("probe");
        }
    }
    assert_eq!(loader.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    let keys = keys("cold-", 1000);
    let values = cluster[1].cache.get_many(&keys).await;
    for (key, value) in keys.iter().zip(values) {
        assert_eq!(value.unwrap(), loader.single.value_for(key));
        assert_eq!(loader.single.loads.of(key), 1, "{key}");
    }
    assert_eq!(loader.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// Malformed, oversized and duplicate-key batches get 4xx over real HTTP, and load nothing; a
/// `POST` anywhere but `_batch` is still 405; every answer advertises batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_get_4xx_and_load_nothing() {
    use groupcache_rs_pb::BatchRequest;
    use prost::Message;

    let loader = TestLoader::new();
    let replica = Replica::start(|url| Groupcache::builder(GROUP, url, loader.clone()));
    let client = groupcache_tests::http_client().build().unwrap();
    let url = format!("{}/_groupcache/{GROUP}/_batch", replica.url);
    let batch = |keys: Vec<String>| {
        BatchRequest {
            group: Some(GROUP.into()),
            keys,
            max_answer_bytes: None,
            max_wait_ms: None,
        }
        .encode_to_vec()
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", vec![0xff, 0xff, 0xff], 400),
        (
            "duplicate keys",
            batch(vec!["a".into(), "b".into(), "a".into()]),
            400,
        ),
        (
            "too many keys",
            batch((0..1025).map(|i| i.to_string()).collect()),
            413,
        ),
        ("oversized key", batch(vec!["x".repeat(4097)]), 400),
    ];
    for (case, body, status) in cases {
        let response = client.post(&url).body(body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{case}");
    }
    // A body over the limit is refused from its declared length, before any of it is read (a
    // client still writing it may see the connection close instead of the answer, so only the
    // head is sent).
    let head = format!(
        "POST /_groupcache/{GROUP}/_batch HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        (16 << 20) + 8192
    );
    let mut socket = groupcache_tests::raw::send(replica.addr, &head, b"")
        .await
        .unwrap();
    let (status, text) = groupcache_tests::raw::answer(&mut socket, Duration::from_secs(10)).await;
    assert_eq!(status, 413, "body over the limit: {text}");
    let response = client
        .post(format!("{}/_groupcache/{GROUP}/a", replica.url))
        .body(batch(vec!["a".into()]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(loader.loads.total(), 0, "nothing refused was loaded");
    let response = client
        .get(format!("{}/_groupcache/{GROUP}/_batch", replica.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "a GET of the key `_batch`");
    assert_eq!(response.headers()["groupcache-batch"], "1");
    assert_eq!(loader.loads.of("_batch"), 1);
}

/// With peer authentication on, batches are signed like every peer request and still make one
/// request per owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_batches_make_one_request_per_owner() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, |url| {
        let auth = groupcache_rs::PeerAuth::new(*b"0123456789abcdef0123456789abcdef").unwrap();
        Groupcache::builder(GROUP, url, loader.clone()).peer_auth(auth)
    });
    introduce(&cluster).await;
    let before: Vec<u64> = cluster
        .iter()
        .map(|r| r.cache.stats().server_requests)
        .collect();
    let keys = keys("signed-", 300);
    let values = cluster[0].cache.get_many(&keys).await;
    for (key, value) in keys.iter().zip(values) {
        assert_eq!(value.unwrap(), loader.value_for(key));
    }
    for (replica, before) in cluster.iter().zip(before) {
        let stats = replica.cache.stats();
        assert_eq!(stats.peer_auth_failures, 0);
        let expected = u64::from(replica.url != cluster[0].url);
        assert_eq!(stats.server_requests - before, expected);
    }
}

/// Two Rust and two golang/groupcache replicas in one ring: `get_many` from the Rust side and
/// single gets from every replica load each key once cluster-wide, and no Go peer ever gets a
/// batch (it would load a key named `_batch`). Skipped loudly without Go; fails with `CI=true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_cluster_with_go_peers_loads_each_key_once() {
    use groupcache_tests::go::{self, GoPeer};

    let Some(binary) = go::binary() else { return };
    let loaders = [(); 2].map(|_| TestLoader {
        delay: Duration::from_millis(20),
        ..TestLoader::new()
    });
    let gos = Arc::new([(); 2].map(|_| GoPeer::start_with(binary, &["-load-delay", "20ms"])));
    let rusts = [0, 1].map(|i| {
        Replica::start(|url| {
            Groupcache::builder(GROUP, url, loaders[i].clone()).ring_mode(RingMode::GoCompatible)
        })
    });
    let ring = [&rusts[0].url, &gos[0].url, &rusts[1].url, &gos[1].url];
    for rust in &rusts {
        rust.cache.set_peers(ring).unwrap();
    }
    for go in gos.iter() {
        go.set_peers(&ring).await;
    }
    // Every Rust replica hears once from every peer, Go ones included.
    for rust in &rusts {
        for peer in ring.iter().filter(|peer| ***peer != rust.url) {
            let key = key_owned(&rust.cache, peer, &format!("probe-{}-", rust.url));
            rust.cache.get(&key).await.expect("probe");
        }
    }
    let keys = keys("mixed-", 200);
    let expected = |key: &str| -> Vec<u8> {
        let owner = rusts[0].cache.owner(key);
        match rusts.iter().position(|r| r.url == owner) {
            Some(r) => loaders[r].value_for(key).into_bytes(),
            None => format!("go:{key}").into_bytes(),
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for rust in &rusts {
        let (cache, keys) = (rust.cache.clone(), keys.clone());
        tasks.spawn(async move {
            let values = cache.get_many(&keys).await;
            keys.into_iter()
                .zip(values)
                .map(|(key, value)| {
                    (
                        key,
                        value.map(String::into_bytes).map_err(|e| e.to_string()),
                    )
                })
                .collect::<Vec<_>>()
        });
    }
    for go in 0..2 {
        for key in keys.iter().step_by(3) {
            let (gos, key) = (gos.clone(), key.clone());
            tasks.spawn(async move {
                let (status, body) = gos[go].get(&key).await;
                let value = if status == 200 {
                    Ok(body)
                } else {
                    Err(format!("Go {go}: {status}"))
                };
                vec![(key, value)]
            });
        }
    }
    while let Some(task) = tasks.join_next().await {
        for (key, value) in task.unwrap() {
            assert_eq!(value.as_deref(), Ok(&expected(&key)[..]), "{key}");
        }
    }
    let go_loads = [gos[0].loads().await, gos[1].loads().await];
    for key in &keys {
        let loads = loaders.iter().map(|l| l.loads.of(key) as u64).sum::<u64>()
            + go_loads.iter().map(|l| l.of(key)).sum::<u64>();
        assert_eq!(loads, 1, "{key} loaded {loads} times in the mixed cluster");
    }
    assert!(
        go_loads.iter().all(|l| l.of("_batch") == 0),
        "a Go peer was sent a batch"
    );
}

/// With coalescing (one request in flight per owner), concurrent single gets for keys of one
/// owner that arrive while a request to it is out travel together in one batch when it returns;
/// without it, each is a request of its own. The owner's loader holds the first request until
/// every get has joined its fetch: `loads_deduped` is counted under the same lock as the queue
/// push, so once it reads 40 every fetch is queued or sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_single_gets_travel_in_one_batch() {
    for (in_flight, expected) in [(1, 2), (0, 40)] {
        // A permit for each of the two probes `introduce` loads.
        let gate = Arc::new(Semaphore::new(2));
        let loader = TestLoader {
            gate: Some(gate.clone()),
            ..TestLoader::new()
        };
        let (cluster, keys) = pair_and_keys(
            &loader,
            |group| group.coalesce_fetches(in_flight),
            "co-",
            40,
        )
        .await;
        let asker = &cluster[0].cache;
        let (before, deduped) = (
            cluster[1].cache.stats().server_requests,
            asker.stats().loads_deduped,
        );
        let loads_before = loader.loads.total();
        let gets: Vec<_> = keys
            .iter()
            .map(|key| {
                let (cache, key) = (asker.clone(), key.clone());
                tokio::spawn(async move { (cache.get(&key).await, key) })
            })
            .collect();
        loader.loads.started(loads_before + 1).await;
        until(|| asker.stats().loads_deduped - deduped >= 40).await;
        gate.add_permits(40);
        for get in gets {
            let (value, key) = get.await.unwrap();
            assert_eq!(value.unwrap(), loader.value_for(&key));
            assert_eq!(loader.loads.of(&key), 1);
        }
        let requests = cluster[1].cache.stats().server_requests - before;
        assert_eq!(requests, expected, "{in_flight} in flight");
        // The request slot was given back: a later get goes out, not into a queue forever.
        gate.add_permits(1);
        let later = key_owned(asker, &cluster[1].url, "co-later-");
        let got = tokio::time::timeout(Duration::from_secs(10), asker.get(&later)).await;
        assert_eq!(got.expect("a later get").unwrap(), loader.value_for(&later));
    }
}

/// An owner that refuses a batch (here its body limit, which depends on its `max_value_bytes`,
/// is below the batch's size) has loaded nothing: its keys are asked for one by one, not loaded
/// on the asker, so each is still loaded once, on its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_falls_back_to_single_requests_not_local_loads() {
    let loader = TestLoader::new();
    let prefix = "k".repeat(100);
    let (cluster, keys) =
        pair_and_keys(&loader, |group| group.max_value_bytes(1024), &prefix, 60).await;
    let asker = &cluster[0].cache;
    let before = cluster[1].cache.stats().server_requests;
    let values = asker.get_many(&keys).await;
    for (key, value) in keys.iter().zip(values) {
        assert_eq!(value.unwrap(), loader.value_for(key));
        assert_eq!(loader.loads.of(key), 1, "{key}");
    }
    let owner = cluster[1].cache.stats();
    assert_eq!(
        owner.local_loads as usize,
        keys.len() + 1,
        "loaded on the owner (and a probe)"
    );
    // The refused batch never reached the router's handler; 60 single gets did.
    assert_eq!(owner.server_requests - before, keys.len() as u64);
    assert_eq!(asker.stats().peer_errors, 0);
}

/// The hard interleavings, held open by the owner's loader: a single `get` arriving while a
/// `get_many`'s batch for its key is in flight joins it (no request of its own), and a `get_many`
/// arriving while a single `get` of one of its keys is in flight joins that one (the batch leaves
/// the key out, so the owner sees one cache hit, not two). Each key is loaded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_and_a_get_many_in_flight_join_each_other() {
    let gate = Arc::new(Semaphore::new(0));
    let held = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let asker_loader = TestLoader::new();
    let cluster = vec![
        Replica::start(|url| Groupcache::builder(GROUP, url, asker_loader.clone())),
        Replica::start(|url| Groupcache::builder(GROUP, url, held.clone())),
    ];
    connect(&cluster);
    gate.add_permits(1); // the probe of the owner's key
    introduce(&cluster).await;
    let (asker, owner) = (cluster[0].cache.clone(), &cluster[1]);
    let keys: Vec<String> = groupcache_tests::keys_owned(&asker, &owner.url, "join-")
        .take(4)
        .collect();
    let loads_before = held.loads.total();
    let requests = || owner.cache.stats().server_requests;

    // A batch of keys 0..3 in flight, then a single get of key 1.
    let before = requests();
    let many = {
        let (asker, keys) = (asker.clone(), keys[..3].to_vec());
        tokio::spawn(async move { asker.get_many(&keys).await })
    };
    held.loads.started(loads_before + 3).await;
    // Read before the single get starts: it may count its miss at once, on another thread.
    let loads = asker.stats().loads;
    let single = {
        let (asker, key) = (asker.clone(), keys[1].clone());
        tokio::spawn(async move { asker.get(&key).await })
    };
    // The single get has counted its miss; from there to joining the fetch flight it does not
    // wait on anything, while the batch stays held until the permits below.
    until(|| asker.stats().loads > loads).await;
    gate.add_permits(3);
    assert_eq!(single.await.unwrap().unwrap(), held.value_for(&keys[1]));
    let values = many.await.unwrap();
    assert!(values.iter().all(Result::is_ok));
    assert_eq!(
        requests() - before,
        1,
        "the single get sent no request of its own"
    );

    // A single get of key 3 in flight, then a batch of keys 2..4 (key 2 is cached by now on the
    // owner, key 3 is in flight here): the batch carries neither of them.
    let before = requests();
    let single = {
        let (asker, key) = (asker.clone(), keys[3].clone());
        tokio::spawn(async move { asker.get(&key).await })
    };
    held.loads.started(loads_before + 4).await;
    let main_hits = owner.cache.stats().main_hits;
    let loads = asker.stats().loads;
    let many = {
        let (asker, keys) = (asker.clone(), keys[2..].to_vec());
        tokio::spawn(async move { asker.get_many(&keys).await })
    };
    until(|| asker.stats().loads >= loads + 2).await;
    gate.add_permits(1);
    let values = many.await.unwrap();
    assert_eq!(values[1].as_ref().unwrap(), &held.value_for(&keys[3]));
    assert_eq!(single.await.unwrap().unwrap(), held.value_for(&keys[3]));
    assert_eq!(
        requests() - before,
        2,
        "the single get, and the batch of key 2"
    );
    assert_eq!(
        owner.cache.stats().main_hits - main_hits,
        1,
        "the batch carried key 2 only: key 3 joined the single get's flight"
    );
    for key in &keys {
        assert_eq!(held.loads.of(key), 1, "{key}");
    }
    assert_eq!(asker_loader.loads.total(), 1, "only the asker's own probe");
}

/// Issue 25: a coalesced batch's keys that then need a local load (here: the owner refuses a
/// key longer than its limit, so the asker loads it, and its loader hangs) no longer hold the
/// request slot that queued fetches to that owner wait for. Before, every later fetch to the
/// owner waited behind the hung load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_local_load_after_a_coalesced_batch_does_not_hold_the_owners_slot() {
    let gate = Arc::new(Semaphore::new(0));
    let asker_loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let owner_loader = TestLoader {
        delay: Duration::from_millis(300),
        ..TestLoader::new()
    };
    let asker = Replica::start(|url| {
        Groupcache::builder(GROUP, url, asker_loader.clone()).coalesce_fetches(1)
    });
    let owner = Replica::start(|url| {
        Groupcache::builder(GROUP, url, owner_loader.clone()).max_key_bytes(8)
    });
    let cluster = [asker, owner];
    connect(&cluster);
    let (asker, owner) = (&cluster[0], &cluster[1]);
    let short = |i: usize| key_owned(&asker.cache, &owner.url, &format!("k{i}-"));
    // The owner has answered once: it takes batches.
    asker.cache.get(&short(0)).await.unwrap();

    // One fetch in flight, holding the one slot; two queue behind it and travel as a batch,
    // which the owner refuses (one key is over its limit): the long key is loaded here, and
    // hangs at the gate.
    let first = tokio::spawn({
        let (cache, key) = (asker.cache.clone(), short(1));
        async move { cache.get(&key).await }
    });
    owner_loader.loads.started(2).await;
    let long = key_owned(&asker.cache, &owner.url, "a-key-longer-than-8-");
    let queued: Vec<_> = [long, short(2)]
        .into_iter()
        .map(|key| {
            let cache = asker.cache.clone();
            tokio::spawn(async move { cache.get(&key).await })
        })
        .collect();
    first.await.unwrap().unwrap();
    asker_loader.loads.started(1).await;

    // A later fetch to the same owner is not stuck behind the hung load.
    let later = short(3);
    let fetched = tokio::time::timeout(Duration::from_secs(5), asker.cache.get(&later)).await;
    assert_eq!(
        fetched
            .expect("a later fetch waited for the hung load")
            .unwrap(),
        owner_loader.value_for(&later)
    );
    gate.add_permits(1);
    for queued in queued {
        queued.await.unwrap().unwrap();
    }
}

/// Issue 25, item 5b: a queued fetch never waits longer than `peer_timeout` in all. The owner's
/// one request slot is held by a fetch whose load hangs there (the owner answers "pending" and is
/// asked again, round after round); a fetch queued behind it gives up on the owner when its own
/// `peer_timeout` has passed, counted from when it started, and loads the key here, as a request
/// that timed out does, without the owner being suspected. Before, it waited for the slot (every
/// round of the hung request, 3 s) and then for a batch of its own (3 s more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_fetch_gives_up_on_a_busy_owner_within_peer_timeout() {
    const PEER_TIMEOUT: Duration = Duration::from_secs(1);
    let gate = Arc::new(Semaphore::new(0));
    let asker_loader = TestLoader::new();
    let owner_loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let asker = Replica::start(|url| {
        Groupcache::builder(GROUP, url, asker_loader.clone())
            .coalesce_fetches(1)
            .peer_timeout(PEER_TIMEOUT)
    });
    let owner = Replica::start(|url| {
        Groupcache::builder(GROUP, url, owner_loader.clone()).peer_timeout(PEER_TIMEOUT)
    });
    let cluster = [asker, owner];
    connect(&cluster);
    let (asker, owner) = (&cluster[0], &cluster[1]);
    let key = |i: usize| key_owned(&asker.cache, &owner.url, &format!("q{i}-"));
    // The owner has answered once: it takes batches, so fetches to it coalesce.
    gate.add_permits(1);
    asker.cache.get(&key(0)).await.unwrap();

    // The one slot: a fetch whose load hangs on the owner.
    let holder = tokio::spawn({
        let (cache, key) = (asker.cache.clone(), key(1));
        async move { cache.get(&key).await }
    });
    owner_loader.loads.started(2).await;

    // A fetch that finds the slot taken, and queues.
    let queued = key(2);
    let started = std::time::Instant::now();
    let value = tokio::time::timeout(PEER_TIMEOUT * 3, asker.cache.get(&queued))
        .await
        .expect("the queued fetch waited past three peer_timeouts")
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(value, asker_loader.value_for(&queued));
    assert!(
        elapsed >= PEER_TIMEOUT && elapsed < PEER_TIMEOUT + Duration::from_millis(500),
        "the queued fetch took {elapsed:?}, not about peer_timeout ({PEER_TIMEOUT:?})"
    );
    assert_eq!(asker_loader.loads.of(&queued), 1, "loaded here once");
    let stats = asker.cache.stats();
    assert_eq!(
        (stats.peer_errors, stats.peer_suspicions),
        (0, 0),
        "a queueing deadline is not the owner's failure"
    );

    // The owner answers again: the hung fetch completes, and the queued key, given up on, is not
    // sent to it after all.
    gate.add_permits(1);
    assert_eq!(
        holder.await.unwrap().unwrap(),
        owner_loader.value_for(&key(1))
    );
    assert_eq!(
        owner_loader.loads.of(&queued),
        0,
        "the owner never loaded it"
    );
    // A later fetch goes straight to the owner, which was not suspected.
    gate.add_permits(1);
    let later = key(3);
    assert_eq!(
        asker.cache.get(&later).await.unwrap(),
        owner_loader.value_for(&later)
    );
    assert_eq!(owner_loader.loads.of(&later), 1);
    assert_eq!(asker_loader.loads.of(&later), 0);
}
