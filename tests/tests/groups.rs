//! Many groups over one cluster (issue 24): one ring, one connection pool and one router for
//! every group, groups added and dropped while requests are in flight, and the peer port's
//! limits shared fairly by the groups.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use groupcache_rs::{Error, Groupcache, Loaded, Loader, PeerAuth};
use groupcache_rs_pb::GetResponse;
use groupcache_tests::{ClusterReplica, TestLoader, http_client};
use prost::Message;
use tokio::sync::{Semaphore, mpsc};

/// A second loader with a value type of its own: the key's bytes reversed, each load counted.
#[derive(Clone, Default)]
struct Reversed {
    loads: Arc<Mutex<HashMap<String, usize>>>,
}

impl Loader for Reversed {
    type Value = Vec<u8>;
    type Error = std::io::Error;

    async fn load(&self, key: &str) -> Result<Loaded<Vec<u8>>, Self::Error> {
        *self
            .loads
            .lock()
            .expect("loads lock")
            .entry(key.to_owned())
            .or_default() += 1;
        Ok(Loaded::new(key.bytes().rev().collect()))
    }
}

/// A peer's `GET` of `key` in `group` on `replica`: the status and, on 200, the value.
async fn peer_get(replica: &ClusterReplica, group: &str, key: &str) -> (u16, Vec<u8>) {
    let url = format!("{}/_groupcache/{group}/{key}", replica.url);
    let answer = http_client()
        .build()
        .expect("client")
        .get(url)
        .send()
        .await
        .expect("the replica answers");
    let status = answer.status().as_u16();
    let body = answer.bytes().await.expect("body");
    if status != 200 {
        return (status, body.to_vec());
    }
    let value = GetResponse::decode(body)
        .expect("a GetResponse")
        .value
        .unwrap_or_default();
    (status, value.to_vec())
}

/// Three groups, two value types, on three replicas (issue 24's target: a replica serving 3
/// groups holds one connection pool and one nonce store): every key of each group is loaded once
/// in the cluster and read alike everywhere; all three groups' requests travel over one
/// connection pool per replica (asked one after another, each replica accepts at most one
/// connection from each peer; per-group pools would open one per group, up to 6); and one nonce
/// store per replica remembers the signed requests of every group (per-group stores would each
/// hold about a third).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_share_one_ring_one_connection_pool_and_one_router() {
    // No heartbeats and no hand-off peeks: the only signed requests are the groups' gets.
    let replicas = ClusterReplica::start_cluster(3, |cluster| {
        cluster
            .handoff_timeout(Duration::ZERO)
            .failure_detection(Duration::ZERO)
            .peer_auth(PeerAuth::new(*b"0123456789abcdef0123456789abcdef").unwrap())
    });
    let users_loader = TestLoader::new();
    // A third group whose values differ from the first's, so an answer from the wrong one shows.
    let pages_loader = TestLoader {
        generation: Arc::new(AtomicUsize::new(1)),
        ..TestLoader::new()
    };
    let reversed_loader = Reversed::default();
    let users: Vec<Groupcache<TestLoader>> = replicas
        .iter()
        .map(|r| {
            r.cluster
                .group("users", users_loader.clone())
                .build()
                .unwrap()
        })
        .collect();
    let reversed: Vec<Groupcache<Reversed>> = replicas
        .iter()
        .map(|r| {
            r.cluster
                .group("reversed", reversed_loader.clone())
                .build()
                .unwrap()
        })
        .collect();
    let pages: Vec<Groupcache<TestLoader>> = replicas
        .iter()
        .map(|r| {
            r.cluster
                .group("pages", pages_loader.clone())
                .build()
                .unwrap()
        })
        .collect();
    assert_eq!(replicas[0].cluster.groups(), ["pages", "reversed", "users"]);
    assert_ne!(users_loader.value_for("k"), pages_loader.value_for("k"));

    let keys: Vec<String> = (0..60).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        for i in 0..replicas.len() {
            assert_eq!(
                users[i].get(key).await.unwrap(),
                users_loader.value_for(key)
            );
            let expected: Vec<u8> = key.bytes().rev().collect();
            assert_eq!(reversed[i].get(key).await.unwrap(), expected);
            assert_eq!(
                pages[i].get(key).await.unwrap(),
                pages_loader.value_for(key)
            );
        }
    }
    for key in &keys {
        assert_eq!(users_loader.loads.of(key), 1, "users/{key} loads");
        assert_eq!(pages_loader.loads.of(key), 1, "pages/{key} loads");
        let loads = reversed_loader.loads.lock().unwrap().get(key).copied();
        assert_eq!(loads, Some(1), "reversed/{key} loads");
    }
    // All three groups asked every owner, one request at a time.
    for replica in &replicas {
        let accepted = replica
            .serving
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=2).contains(&accepted),
            "{} accepted {accepted} connections from its 2 peers",
            replica.url
        );
    }
    // One nonce store per replica: it remembers the gets of all three groups that replica
    // served (a request sent again is signed again, so it may remember more, never fewer).
    for i in 0..replicas.len() {
        let served = users[i].stats().server_requests
            + reversed[i].stats().server_requests
            + pages[i].stats().server_requests;
        let nonces = users[i].stats().auth_nonces;
        assert!(served > 0);
        assert!(
            nonces >= served,
            "{}: {nonces} nonces remembered, {served} gets served in all groups",
            replicas[i].url
        );
    }
    // The ring is the cluster's: a key has one owner whatever the group.
    for key in &keys {
        assert_eq!(users[1].owner(key), reversed[1].owner(key));
        assert_eq!(users[1].owner(key), pages[1].owner(key));
    }
}

/// A group dropped while a peer's request for it is in flight: that request is answered, later
/// ones get 404 (as for a group never built), and the name can be built again. A second group
/// of a name in use is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_group_answers_what_it_has_then_404s_and_its_name_is_free_again() {
    let replica = ClusterReplica::start(|cluster| cluster);
    let gate = Arc::new(Semaphore::new(0));
    let loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let slow = replica
        .cluster
        .group("slow", loader.clone())
        .build()
        .unwrap();
    let twice = replica.cluster.group("slow", TestLoader::new()).build();
    assert!(matches!(twice, Err(Error::Config(_))), "{twice:?}");

    let (status, body) = peer_get(&replica, "never-built", "k").await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("no such group"));

    let url = replica.url.clone();
    let in_flight = tokio::spawn(async move {
        let answer = http_client()
            .build()
            .expect("client")
            .get(format!("{url}/_groupcache/slow/k"))
            .send()
            .await
            .expect("answered");
        (
            answer.status().as_u16(),
            answer.bytes().await.expect("body"),
        )
    });
    loader.loads.started(1).await;
    drop(slow);
    assert!(replica.cluster.groups().is_empty());
    assert_eq!(peer_get(&replica, "slow", "other").await.0, 404);

    gate.add_permits(1);
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight is answered");
    let value = GetResponse::decode(body).unwrap().value.unwrap_or_default();
    assert_eq!(value, loader.value_for("k").as_bytes());

    let again = TestLoader::new();
    let _slow = replica
        .cluster
        .group("slow", again.clone())
        .build()
        .unwrap();
    let (status, value) = peer_get(&replica, "slow", "k").await;
    assert_eq!((status, value), (200, again.value_for("k").into_bytes()));
}

/// One group flooded by its peers (its loads stuck) holds its reserved share of the replica's
/// concurrency limit and the open half, no more: the rest of its requests wait for a slot the
/// group may take (refused, 503, once their wait runs out), and the other group is served at
/// once meanwhile. With the limit not shared fairly, the flood took every slot and the other
/// group's peers got 503 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_groups_flood_leaves_the_other_group_its_share_of_the_limit() {
    // 8 slots, 2 groups: 2 reserved for each, 4 open to either.
    let replica = ClusterReplica::start(|cluster| {
        cluster
            .max_concurrent_peer_requests(8)
            .peer_admission_wait(Duration::from_secs(60))
    });
    let gate = Arc::new(Semaphore::new(0));
    let flood_loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let flood = replica
        .cluster
        .group("flood", flood_loader.clone())
        .build()
        .unwrap();
    let calm_loader = TestLoader::new();
    let _calm = replica
        .cluster
        .group("calm", calm_loader.clone())
        .build()
        .unwrap();

    let (statuses, mut answered) = mpsc::unbounded_channel();
    let client = http_client().build().expect("client");
    for i in 0..12 {
        let (client, statuses) = (client.clone(), statuses.clone());
        let url = format!("{}/_groupcache/flood/k{i}", replica.url);
        tokio::spawn(async move {
            let status = client.get(url).send().await.map(|a| a.status().as_u16());
            let _ = statuses.send(status.unwrap_or(0));
        });
    }
    // 6 admitted, stuck at the gate; 6 waiting for a slot.
    flood_loader.loads.started(6).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while flood.stats().peer_requests_waiting < 6 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the flood's excess waits for a slot");
    assert_eq!(
        flood_loader.loads.total(),
        6,
        "the flood holds 6 of the 8 slots"
    );

    // The calm group: its two reserved slots, at once, ahead of the flood's waiters.
    let (a, b) = tokio::join!(
        peer_get(&replica, "calm", "a"),
        peer_get(&replica, "calm", "b")
    );
    assert_eq!(a, (200, calm_loader.value_for("a").into_bytes()));
    assert_eq!(b, (200, calm_loader.value_for("b").into_bytes()));

    // The flood's loads finish: its waiters take the slots given back, and all 12 are served.
    gate.add_permits(12);
    for _ in 0..12 {
        let status = tokio::time::timeout(Duration::from_secs(10), answered.recv())
            .await
            .expect("the flood's requests finish")
            .expect("senders live");
        assert_eq!(status, 200);
    }
    assert_eq!(flood_loader.loads.total(), 12);
    assert_eq!(flood.stats().peer_requests_shed, 0);
}

/// A peer's peek of `key` in `group` on `replica`: the status and, on 200, the value.
async fn peer_peek(replica: &ClusterReplica, group: &str, key: &str) -> (u16, Vec<u8>) {
    let answer = http_client()
        .build()
        .expect("client")
        .get(format!("{}/_groupcache/{group}/{key}", replica.url))
        .header("groupcache-peek", "1")
        .send()
        .await
        .expect("the replica answers");
    let status = answer.status().as_u16();
    let body = answer.bytes().await.expect("body");
    match status {
        200 => {
            let value = GetResponse::decode(body).expect("a GetResponse").value;
            (status, value.unwrap_or_default().to_vec())
        }
        _ => (status, body.to_vec()),
    }
}

/// Every route of the one router dispatches by group name, not only a get (issue 24, item 2):
/// with two groups holding the same keys on the same owner, a batch (`get_many`), a `set`, a
/// `remove`, a peek and a purge sent to one group reach that group on the owner and leave the
/// other group's entries of the same keys as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_writes_peeks_and_purges_reach_their_own_group_only() {
    let replicas =
        ClusterReplica::start_cluster(2, |cluster| cluster.handoff_timeout(Duration::ZERO));
    let a_loader = TestLoader::new();
    let b_loader = TestLoader {
        generation: Arc::new(AtomicUsize::new(1)),
        ..TestLoader::new()
    };
    let build = |name: &str, loader: &TestLoader| -> Vec<Groupcache<TestLoader>> {
        let group = |r: &ClusterReplica| r.cluster.group(name, loader.clone()).build().unwrap();
        replicas.iter().map(group).collect()
    };
    let (a, b) = (build("a", &a_loader), build("b", &b_loader));
    // Keys the second replica owns, asked from the first.
    let keys: Vec<String> = groupcache_tests::keys_owned(&a[0], &replicas[1].url, "k-")
        .take(5)
        .collect();
    assert_ne!(a_loader.value_for(&keys[0]), b_loader.value_for(&keys[0]));

    // A get of each group first (its answer says the owner takes batches), then a batch of
    // three keys in each: each group's keys loaded once, by its own loader, in one request.
    for (group, loader) in [(&a, &a_loader), (&b, &b_loader)] {
        assert_eq!(
            group[0].get(&keys[0]).await.unwrap(),
            loader.value_for(&keys[0])
        );
        let values: Vec<String> = group[0]
            .get_many(&keys[1..4])
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let expected: Vec<String> = keys[1..4].iter().map(|k| loader.value_for(k)).collect();
        assert_eq!(values, expected);
        assert_eq!(group[1].stats().server_requests, 2, "one get, one batch");
    }
    for key in &keys[..4] {
        assert_eq!(
            (a_loader.loads.of(key), b_loader.loads.of(key)),
            (1, 1),
            "{key}"
        );
    }

    // A set in `a` and a remove in `b` reach the owner's group of that name only.
    let written = "written".to_owned();
    a[0].set(&keys[0], &written, None).await.unwrap();
    b[0].remove(&keys[1]).await.unwrap();
    assert_eq!(a[1].get(&keys[0]).await.unwrap(), written);
    assert_eq!(
        b[1].get(&keys[0]).await.unwrap(),
        b_loader.value_for(&keys[0])
    );
    assert_eq!(
        a[1].get(&keys[1]).await.unwrap(),
        a_loader.value_for(&keys[1])
    );
    assert_eq!(
        b[1].get(&keys[1]).await.unwrap(),
        b_loader.value_for(&keys[1])
    );
    assert_eq!(a_loader.loads.of(&keys[1]), 1, "a's entry stayed");
    assert_eq!(b_loader.loads.of(&keys[1]), 2, "b's entry was removed");

    // A peek answers from the named group's memory: `b` holds the last key, `a` does not.
    b[0].get(&keys[4]).await.unwrap();
    let b_value = b_loader.value_for(&keys[4]).into_bytes();
    assert_eq!(peer_peek(&replicas[1], "b", &keys[4]).await, (200, b_value));
    assert_eq!(peer_peek(&replicas[1], "a", &keys[4]).await.0, 404);
    assert_eq!(a_loader.loads.of(&keys[4]), 0, "a peek never loads");

    // A purge of `a` empties `a` on every replica, and `b` keeps what it holds.
    let b_held = b[1].stats().main_items;
    assert!(b_held >= 5, "{b_held}");
    a[0].purge().await.unwrap();
    assert_eq!((a[0].stats().main_items, a[1].stats().main_items), (0, 0));
    assert_eq!(b[1].stats().main_items, b_held);
}
