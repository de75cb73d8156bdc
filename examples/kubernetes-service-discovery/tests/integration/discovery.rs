//! Discovery against a fake Kubernetes API server on loopback that speaks the real list and
//! watch protocol (see `fake_apiserver.rs`): the peer set follows endpoints appearing, turning
//! unready and disappearing, and survives dropped watches, an API outage and 410 Gone.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::fake_apiserver::{FakeApiServer, endpoint_slice};
use groupcache_rs::{Cluster, Groupcache};
use kubernetes_service_discovery::config::AddressType;
use kubernetes_service_discovery::database::Database;
use kubernetes_service_discovery::database::categories::Categories;
use kubernetes_service_discovery::discovery::{
    Backoff, KubeDiscovery, PeerSet, apply_peers, watch_endpoint_slices,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NS: &str = "shop";
const SERVICE: &str = "shop-peers";
/// How long any expected change may take to show up.
const PATIENCE: Duration = Duration::from_secs(15);

/// Discovery running against a fake API server.
struct Harness {
    api: FakeApiServer,
    peers: watch::Receiver<Option<PeerSet>>,
    task: JoinHandle<()>,
}

impl Harness {
    /// Starts discovery (lists paged two slices at a time, fast retries).
    async fn start(api: FakeApiServer) -> Harness {
        let url = api.url.parse().expect("API URL");
        let client = kube::Client::try_from(kube::Config::new(url)).expect("kube client");
        let config = KubeDiscovery {
            namespace: NS.into(),
            service: SERVICE.into(),
            port_name: "http".into(),
            address_type: AddressType::IPv4,
            scheme: "http",
            path_prefix: "/internal".into(),
            backoff: Backoff {
                min: Duration::from_millis(20),
                max: Duration::from_millis(200),
            },
            page_size: 2,
        };
        let (sender, peers) = watch::channel(None);
        let task = tokio::spawn(watch_endpoint_slices(client, config, sender));
        Harness { api, peers, task }
    }

    /// Waits until the published set is exactly `hosts` (as `http://HOST:8080/internal`).
    async fn expect(&mut self, hosts: &[&str]) {
        let expected = urls(hosts);
        let waited = tokio::time::timeout(
            PATIENCE,
            self.peers.wait_for(|set| set.as_ref() == Some(&expected)),
        )
        .await
        .map(|result| result.is_ok());
        match waited {
            Ok(true) => {}
            Ok(false) => panic!("discovery stopped; API: {}", self.api.describe()),
            Err(_) => panic!(
                "peers did not become {expected:?} within {PATIENCE:?}: they are {:?}; API: {}",
                *self.peers.borrow(),
                self.api.describe()
            ),
        }
        assert!(!self.task.is_finished(), "the watcher task ended");
    }

    fn current(&self) -> Option<PeerSet> {
        self.peers.borrow().clone()
    }
}

fn urls(hosts: &[&str]) -> PeerSet {
    hosts
        .iter()
        .map(|host| format!("http://{host}:8080/internal"))
        .collect()
}

fn slice(name: &str, endpoints: &[(&str, bool)]) -> serde_json::Value {
    endpoint_slice(NS, name, SERVICE, 8080, endpoints)
}

/// Waits (bounded) until `condition` holds, polling the fake server's counters.
async fn until(what: &str, api: &FakeApiServer, condition: impl Fn(&FakeApiServer) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition(api) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; API: {}",
            api.describe()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn peers_follow_endpoints_appearing_turning_unready_and_disappearing() {
    let api = FakeApiServer::start().await;
    api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.1", true), ("10.0.0.2", true), ("10.0.0.3", false)],
    ));
    api.apply(slice("shop-peers-b", &[("10.0.1.1", true)]));
    api.apply(slice("shop-peers-c", &[]));
    // Other Services and namespaces are not ours.
    api.apply(endpoint_slice(
        NS,
        "web-a",
        "web",
        8080,
        &[("10.9.0.1", true)],
    ));
    api.apply(endpoint_slice(
        "other",
        "shop-peers-x",
        SERVICE,
        8080,
        &[("10.8.0.1", true)],
    ));
    let mut h = Harness::start(api).await;

    // Three slices, two per page: one list in two pages, then one watch.
    h.expect(&["10.0.0.1", "10.0.0.2", "10.0.1.1"]).await;
    assert_eq!(h.api.lists(), 2, "{}", h.api.describe());

    // An endpoint turns ready.
    h.api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.1", true), ("10.0.0.2", true), ("10.0.0.3", true)],
    ));
    h.expect(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1"])
        .await;
    // A new slice appears.
    h.api.apply(slice("shop-peers-d", &[("10.0.2.1", true)]));
    h.expect(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1", "10.0.2.1"])
        .await;
    // An endpoint turns unready (a failing probe, or a terminating pod).
    h.api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.1", false), ("10.0.0.2", true), ("10.0.0.3", true)],
    ));
    h.expect(&["10.0.0.2", "10.0.0.3", "10.0.1.1", "10.0.2.1"])
        .await;
    // A slice disappears.
    h.api.delete(NS, "shop-peers-b");
    h.expect(&["10.0.0.2", "10.0.0.3", "10.0.2.1"]).await;
    // An endpoint disappears from its slice.
    h.api.apply(slice("shop-peers-a", &[("10.0.0.3", true)]));
    h.expect(&["10.0.0.3", "10.0.2.1"]).await;
    // Changes elsewhere change nothing, and a bookmark is not an event.
    h.api.apply(endpoint_slice(
        NS,
        "web-a",
        "web",
        8080,
        &[("10.9.0.2", true)],
    ));
    h.api.bookmark();
    h.api.apply(slice("shop-peers-d", &[]));
    h.expect(&["10.0.0.3"]).await;

    // Every change came through the one watch: no polling, no relist.
    assert_eq!(h.api.lists(), 2, "{}", h.api.describe());
    assert_eq!(h.api.watch_requests(), 1, "{}", h.api.describe());
}

#[tokio::test]
async fn survives_dropped_watches_api_errors_and_a_stopped_api_server() {
    let api = FakeApiServer::start().await;
    api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.1", true), ("10.0.0.2", true)],
    ));
    let mut h = Harness::start(api).await;
    h.expect(&["10.0.0.1", "10.0.0.2"]).await;

    // A watch cut mid-stream resumes from its resourceVersion: no relist.
    h.api.sever_watches();
    h.api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.1", true), ("10.0.0.2", true), ("10.0.0.3", true)],
    ));
    h.expect(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]).await;
    assert_eq!(h.api.lists(), 1, "{}", h.api.describe());

    // An outage: every request fails with 503 for a while. The peers stay as they were.
    h.api.set_failing(true);
    until("several failed retries", &h.api, |api| {
        api.failed_requests() >= 3
    })
    .await;
    assert_eq!(
        h.current(),
        Some(urls(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]))
    );
    h.api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.1", true), ("10.0.0.3", true)],
    ));
    h.api.set_failing(false);
    h.expect(&["10.0.0.1", "10.0.0.3"]).await;

    // The API server goes away altogether (connection refused), and comes back.
    h.api.stop().await;
    h.api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.3", true), ("10.0.0.4", true)],
    ));
    assert_eq!(h.current(), Some(urls(&["10.0.0.1", "10.0.0.3"])));
    h.api.restart().await;
    h.expect(&["10.0.0.3", "10.0.0.4"]).await;

    // Still watching: a later change arrives.
    h.api.apply(slice("shop-peers-b", &[("10.0.1.1", true)]));
    h.expect(&["10.0.0.3", "10.0.0.4", "10.0.1.1"]).await;
}

#[tokio::test]
async fn relists_after_410_gone_and_keeps_the_peers_meanwhile() {
    let api = FakeApiServer::start().await;
    api.apply(slice("shop-peers-a", &[("10.0.0.1", true)]));
    api.apply(slice("shop-peers-b", &[("10.0.0.2", true)]));
    let mut h = Harness::start(api).await;
    h.expect(&["10.0.0.1", "10.0.0.2"]).await;
    assert_eq!(h.api.lists(), 1);

    // While the watcher cannot see them, a slice is deleted and another changes, and the
    // history is compacted: resuming from the old resourceVersion gets 410 Gone.
    h.api.set_failing(true);
    until("a failed retry", &h.api, |api| api.failed_requests() >= 1).await;
    h.api.delete(NS, "shop-peers-b");
    h.api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.1", true), ("10.0.0.3", true)],
    ));
    h.api.compact();
    h.api.set_failing(false);

    // The relist finds the deletion the watch never delivered.
    h.expect(&["10.0.0.1", "10.0.0.3"]).await;
    assert!(h.api.gone_sent() >= 1, "{}", h.api.describe());
    assert_eq!(h.api.lists(), 2, "{}", h.api.describe());

    // And watching goes on from the new list.
    h.api.apply(slice("shop-peers-c", &[("10.0.0.4", true)]));
    h.expect(&["10.0.0.1", "10.0.0.3", "10.0.0.4"]).await;
}

#[tokio::test]
async fn bookmarks_keep_a_quiet_watch_resumable_after_compaction() {
    let api = FakeApiServer::start().await;
    api.apply(slice("shop-peers-a", &[("10.0.0.1", true)]));
    let mut h = Harness::start(api).await;
    h.expect(&["10.0.0.1"]).await;
    // The watch follows the list (a bookmark is only sent on an open watch).
    until("an open watch", &h.api, |api| api.watch_requests() >= 1).await;

    // Other Services change; ours does not. With a bookmark, the watcher's resourceVersion
    // moves on anyway, so a compaction does not force a relist when the watch is renewed.
    for i in 0..3 {
        h.api.apply(endpoint_slice(
            NS,
            &format!("web-{i}"),
            "web",
            8080,
            &[("10.9.0.1", true)],
        ));
    }
    h.api.bookmark();
    h.api.compact();
    h.api.end_watches();
    until("a renewed watch", &h.api, |api| api.watch_requests() >= 2).await;
    h.api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.1", true), ("10.0.0.2", true)],
    ));
    h.expect(&["10.0.0.1", "10.0.0.2"]).await;
    assert_eq!(h.api.gone_sent(), 0, "{}", h.api.describe());
    assert_eq!(h.api.lists(), 1, "{}", h.api.describe());

    // Without a bookmark, the same renewal finds its resourceVersion compacted away: 410, relist.
    for i in 0..3 {
        h.api.apply(endpoint_slice(
            NS,
            &format!("web-{i}"),
            "web",
            8080,
            &[("10.9.0.2", true)],
        ));
    }
    h.api.compact();
    h.api.end_watches();
    until("a relist after 410", &h.api, |api| api.lists() >= 2).await;
    assert!(h.api.gone_sent() >= 1, "{}", h.api.describe());
    h.api.apply(slice("shop-peers-a", &[("10.0.0.2", true)]));
    h.expect(&["10.0.0.2"]).await;
}

/// Discovery feeds the one cluster: both groups on it (items and categories) use its ring.
#[tokio::test]
async fn discovered_peers_become_the_cache_ring() {
    let api = FakeApiServer::start().await;
    api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.1", true), ("10.0.0.2", true)],
    ));
    let mut h = Harness::start(api).await;
    let me = "http://10.0.0.1:8080/internal";
    let database = Database::simulated(Duration::ZERO, Duration::ZERO, "test");
    let cluster = Cluster::builder(me).build().expect("cluster");
    let cache = cluster
        .group("items", database.clone())
        .build()
        .expect("items");
    let categories = cluster
        .group("categories", Categories::new(database))
        .build()
        .expect("categories");
    let applying = tokio::spawn(apply_peers(cluster.clone(), h.peers.clone(), || {}));

    let ring = |cache: &Groupcache<Database>| cache.peers().into_iter().collect::<BTreeSet<_>>();
    let until_ring = |expected: PeerSet| {
        let cache = cache.clone();
        async move {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while ring(&cache) != expected {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "ring is {:?}, expected {expected:?}",
                    ring(&cache)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    h.expect(&["10.0.0.1", "10.0.0.2"]).await;
    until_ring(urls(&["10.0.0.1", "10.0.0.2"])).await;

    // This replica turning unready in the API does not take it out of its own ring.
    h.api.apply(slice(
        "shop-peers-a",
        &[("10.0.0.1", false), ("10.0.0.2", true), ("10.0.0.5", true)],
    ));
    h.expect(&["10.0.0.2", "10.0.0.5"]).await;
    until_ring(urls(&["10.0.0.1", "10.0.0.2", "10.0.0.5"])).await;
    assert_eq!(
        categories.peers(),
        cache.peers(),
        "one ring for both groups"
    );
    assert_eq!(cluster.groups(), ["categories", "items"]);
    assert!(!applying.is_finished());
}
