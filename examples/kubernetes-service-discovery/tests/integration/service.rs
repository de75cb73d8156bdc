//! The service as users run it: replicas of the binary on loopback, in static mode (scraped by a
//! real Prometheus, checked by promtool) and in Kubernetes mode (against the fake API server),
//! plus graceful shutdown on SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::fake_apiserver::{FakeApiServer, endpoint_slice};
use crate::process::{
    Cluster, PATIENCE, PeerPort, Prometheus, Replica, Start, TempDir, free_ports, get, http,
    require_tool,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;
use tokio::time::Instant;

const KEYS: usize = 24;
const ROUNDS: usize = 4;
const LOADS: &str = "groupcache_local_loads_total{group=\"items\"}";
const SERVED_TO_PEERS: &str = "groupcache_server_requests_total{group=\"items\"}";
/// The size of the replica's ring: one gauge for all its groups, without a `group` label (the
/// space ends the name).
const PEERS_GAUGE: &str = "groupcache_peers ";

/// A metric summed over the cluster's replicas (0 where a replica does not show it).
async fn total(http: &reqwest::Client, cluster: &Cluster, metric: &str) -> f64 {
    let mut sum = 0.0;
    for replica in &cluster.replicas {
        sum += replica.metric(http, metric).await.unwrap_or_default();
    }
    sum
}

/// Sends every key `ROUNDS` times to every replica, all at once; checks every answer and that
/// each key was loaded by one replica, its owner. Returns the requests sent to each replica.
async fn drive_traffic(http: &reqwest::Client, cluster: &Cluster) -> usize {
    let mut requests = Vec::new();
    for replica in &cluster.replicas {
        for key in 0..KEYS {
            for _ in 0..ROUNDS {
                let url = format!("{}/items/key-{key}", replica.url);
                let http = http.clone();
                requests.push(tokio::spawn(async move { (key, get(&http, &url).await) }));
            }
        }
    }
    let mut loaded_by: BTreeMap<usize, BTreeSet<(String, String)>> = BTreeMap::new();
    for request in requests {
        let (key, (status, body)) = request.await.expect("request task");
        assert_eq!(status, 200, "key-{key}: {body}");
        let json: Value = serde_json::from_str(&body).expect("JSON item");
        assert_eq!(json["item"]["id"], format!("key-{key}"));
        let owner = json["owner"].as_str().unwrap_or_default().to_owned();
        let by = json["item"]["loaded_by"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        loaded_by.entry(key).or_default().insert((by, owner));
    }
    for (key, seen) in &loaded_by {
        assert_eq!(
            seen.len(),
            1,
            "key-{key} was loaded or owned differently: {seen:?}"
        );
        let (by, owner) = seen.iter().next().expect("one");
        assert_eq!(
            format!("{by}/internal"),
            *owner,
            "key-{key} loaded by a non-owner"
        );
    }
    KEYS * ROUNDS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_counters_that_match_the_traffic() {
    let Some(prometheus_bin) = require_tool("prometheus") else {
        return;
    };
    let dir = TempDir::new("prometheus");
    let http = http();
    let cluster =
        Cluster::start_static(3, PeerPort::Shared, &["--load-latency", "50ms"], dir.path()).await;
    let prometheus = Prometheus::start(&prometheus_bin, &cluster.addresses(), dir.path()).await;

    // Prometheus scrapes all three before the traffic, so the counters' rise is seen whole.
    let deadline = Instant::now() + PATIENCE;
    while prometheus
        .scalar(&http, "count(up{job=\"groupcache\"} == 1)")
        .await
        != Some(3.0)
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the three replicas up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let per_replica = drive_traffic(&http, &cluster).await;
    let total = per_replica * cluster.replicas.len();
    // A malformed key is refused before the cache: it must not count as a get.
    let (status, _) = get(
        &http,
        &format!("{}/items/not%00valid", cluster.replicas[0].url),
    )
    .await;
    assert_eq!(status, 400);

    // What the counters must say, cluster-wide, once Prometheus has scraped after the traffic.
    let g = "{group=\"items\"}";
    let expectations: Vec<(String, f64)> = vec![
        // Gets are the user's requests plus the requests peers sent to owners.
        (
            format!("sum(groupcache_gets_total{g}) - sum(groupcache_server_requests_total{g})"),
            total as f64,
        ),
        // Each distinct key was loaded once in the whole cluster.
        (format!("sum(groupcache_local_loads_total{g})"), KEYS as f64),
        (
            format!("sum(groupcache_load_duration_seconds_count{g})"),
            KEYS as f64,
        ),
        (format!("sum(groupcache_local_load_errors_total{g})"), 0.0),
        // Every fetch from an owner was served by that owner, and none failed.
        (
            format!(
                "sum(groupcache_peer_loads_total{g}) - sum(groupcache_server_requests_total{g})"
            ),
            0.0,
        ),
        (format!("sum(groupcache_peer_errors_total{g})"), 0.0),
        // Every get was a hit or a load.
        (
            format!(
                "sum(groupcache_cache_hits_total{g}) + sum(groupcache_loads_total{g}) - sum(groupcache_gets_total{g})"
            ),
            0.0,
        ),
        // The ring's size is the replica's, not a group's: no `group` label.
        ("min(groupcache_peers)".to_owned(), 3.0),
        ("max(groupcache_peers)".to_owned(), 3.0),
    ];
    // And per replica: its gets are the requests the test sent it plus those it served to peers.
    let per_instance = format!(
        "sum by (instance) (groupcache_gets_total{g}) - sum by (instance) (groupcache_server_requests_total{g})"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut wrong = Vec::new();
        for (promql, expected) in &expectations {
            let got = prometheus.scalar(&http, promql).await;
            if got != Some(*expected) {
                wrong.push(format!("{promql} = {got:?}, expected {expected}"));
            }
        }
        let instances = prometheus.query(&http, &per_instance).await;
        let values: Vec<f64> = instances.iter().map(|(_, value)| *value).collect();
        if values != vec![per_replica as f64; cluster.replicas.len()] {
            wrong.push(format!(
                "{per_instance} = {instances:?}, expected {per_replica} each"
            ));
        }
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus's view never matched the traffic:\n{}",
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_passes_on_every_replica() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let dir = TempDir::new("promtool");
    let http = http();
    let cluster =
        Cluster::start_static(3, PeerPort::Shared, &["--load-latency", "5ms"], dir.path()).await;
    // Traffic first, so that every series exists: hits, peer requests, histograms.
    drive_traffic(&http, &cluster).await;
    for replica in &cluster.replicas {
        let (status, metrics) = get(&http, &format!("{}/metrics", replica.url)).await;
        assert_eq!(status, 200);
        assert!(
            metrics.contains("groupcache_gets_total{group=\"items\"}"),
            "{metrics}"
        );
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(metrics.as_bytes())
            .expect("write to promtool");
        let output = check.wait_with_output().expect("promtool output");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.trim().is_empty(),
            "promtool check metrics on {}: {}\n{said}\n--- metrics:\n{metrics}",
            replica.url,
            output.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_not_ready_finishes_requests_and_exits_cleanly() {
    let dir = TempDir::new("sigterm");
    let http = http();
    let mut replica = Replica::start(
        "replica",
        &["--load-latency", "1500ms", "--shutdown-delay", "1s"],
        dir.path(),
    )
    .await;
    assert_eq!(get(&http, &format!("{}/healthz", replica.url)).await.0, 200);

    // A request whose load is in progress when the signal arrives.
    let slow = {
        let (http, url) = (http.clone(), format!("{}/items/slow", replica.url));
        tokio::spawn(async move { get(&http, &url).await })
    };
    let deadline = Instant::now() + PATIENCE;
    while replica.metric(&http, "groupcache_loads_total").await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    replica.process.terminate();

    // Not ready while draining; still serving.
    assert!(matches!(
        replica.wait_for_status(&http, "/readyz", 503).await,
        Start::Ready
    ));
    assert_eq!(get(&http, &format!("{}/healthz", replica.url)).await.0, 200);

    let (status, body) = slow.await.expect("request task");
    assert_eq!(status, 200, "the request in progress was cut: {body}");
    let exit = replica.process.wait_exit(Duration::from_secs(30)).await;
    assert!(
        exit.success(),
        "exit status {exit}; log:\n{}",
        replica.process.log_text()
    );
    let log = replica.process.log_text();
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
}

/// With `--peer-listen`, replicas reach each other on their peer ports: a key is loaded once in
/// the whole cluster, by its owner, and every replica answers with that value. The main port
/// does not serve the peer protocol, and the peer port serves nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_protocol_on_a_port_of_its_own() {
    let dir = TempDir::new("peer-port");
    let http = http();
    let cluster =
        Cluster::start_static(3, PeerPort::Own, &["--load-latency", "20ms"], dir.path()).await;
    // Every replica, non-owners included, answers each key with the value its owner loaded.
    drive_traffic(&http, &cluster).await;

    // The ring knows each replica by its peer port, and the peer protocol is served there.
    let (status, body) = get(&http, &format!("{}/items/key-0", cluster.replicas[0].url)).await;
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON item");
    let owner = json["owner"].as_str().unwrap_or_default().to_owned();
    assert!(
        cluster
            .replicas
            .iter()
            .any(|replica| owner == format!("{}/internal", replica.peer_url)),
        "owner {owner} is no replica's peer port"
    );
    let (status, body) = get(&http, &format!("{owner}/_groupcache/items/key-0")).await;
    assert_eq!(status, 200, "the owner's peer port: {body}");
    for replica in &cluster.replicas {
        let url = format!("{}/internal/_groupcache/items/key-0", replica.url);
        let (status, body) = get(&http, &url).await;
        assert_eq!(
            status, 404,
            "the main port serves the peer protocol: {url}: {body}"
        );
        let url = format!("{}/items/key-0", replica.peer_url);
        let (status, body) = get(&http, &url).await;
        assert_eq!(status, 404, "the peer port serves items: {url}: {body}");
    }

    // One load per key in the whole cluster; the non-owners asked the owners.
    assert_eq!(total(&http, &cluster, LOADS).await, KEYS as f64);
    let served_to_peers = total(&http, &cluster, SERVED_TO_PEERS).await;
    assert!(served_to_peers > 0.0, "no replica served a peer");
}

/// With `--peer-tls-*`, the peer port speaks mTLS: the replicas reach each other at `https://`
/// URLs with one certificate from the cluster's CA (made here) for a name, not their address,
/// verified against `--peer-tls-server-name` (the production overlay's setup), every key is still loaded once in
/// the whole cluster with no peer errors, and the peer port refuses plaintext HTTP. (Clients
/// without a certificate are refused too: `tests/tests/tls.rs` at the workspace root.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_port_with_mtls() {
    let dir = TempDir::new("peer-tls");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = Issuer::new(ca, ca_key);
    // As the production overlay has it: one certificate, shared by the replicas, for a name
    // and no address; peers dial 127.0.0.1 and verify the name (`--peer-tls-server-name`).
    let key = KeyPair::generate().expect("replica key");
    let certificate = CertificateParams::new(vec!["groupcache-example-peer".to_owned()])
        .expect("replica parameters")
        .signed_by(&key, &issuer)
        .expect("replica certificate");
    let files = [
        ("ca.pem", ca_pem),
        ("cert.pem", certificate.pem()),
        ("key.pem", key.serialize_pem()),
    ]
    .map(|(name, pem)| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write a PEM file");
        path.display().to_string()
    });
    let args = [
        "--load-latency",
        "20ms",
        "--peer-tls-ca",
        &files[0],
        "--peer-tls-cert",
        &files[1],
        "--peer-tls-key",
        &files[2],
        "--peer-tls-server-name",
        "groupcache-example-peer",
    ];
    let http = http();
    let cluster = Cluster::start_static(3, PeerPort::OwnTls, &args, dir.path()).await;
    drive_traffic(&http, &cluster).await;

    assert_eq!(
        total(&http, &cluster, LOADS).await,
        KEYS as f64,
        "one load per key"
    );
    let served_to_peers = total(&http, &cluster, SERVED_TO_PEERS).await;
    assert!(served_to_peers > 0.0, "no replica served a peer over TLS");
    let peer_errors = total(
        &http,
        &cluster,
        "groupcache_peer_errors_total{group=\"items\"}",
    )
    .await;
    assert_eq!(peer_errors, 0.0, "peer requests over TLS failed");
    for replica in &cluster.replicas {
        assert!(replica.peer_url.starts_with("https://"));
        // Plaintext HTTP to the TLS port gets no answer.
        let url = replica.peer_url.replacen("https://", "http://", 1);
        let (status, body) = get(&http, &format!("{url}/internal/_groupcache/items/k")).await;
        assert_eq!(status, 0, "plaintext answered on the TLS peer port: {body}");
    }
}

/// With `--peer-listen 127.0.0.1:0`, the replica logs the port it bound and its self URL names
/// that port. After SIGTERM, the peer port keeps serving through the drain (other replicas may
/// still ask for keys), then both servers stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_port_0_is_logged_used_in_the_self_url_and_drained_on_sigterm() {
    let dir = TempDir::new("peer-port-0");
    let http = http();
    let args = [
        "--peer-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--shutdown-delay",
        "3s",
    ];
    let mut replica = Replica::start("replica", &args, dir.path()).await;
    // Logged before the replica serves, so before it turned ready.
    let log = replica.process.log_text();
    let listening: Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "listening")
        .unwrap_or_else(|| panic!("no \"listening\" line in the log:\n{log}"));
    let peer_listen = listening["peer_listen"].as_str().unwrap_or_default();
    let peer_url = format!("http://{peer_listen}");
    assert!(
        peer_listen.starts_with("127.0.0.1:") && !peer_listen.ends_with(":0"),
        "{listening}"
    );
    assert_ne!(peer_url, replica.url);
    let self_url = format!("{peer_url}/internal");
    assert_eq!(listening["self_url"], self_url.as_str(), "{listening}");

    // Alone, it owns every key: the owner is its self URL, served on the peer port.
    let (status, body) = get(&http, &format!("{}/items/k", replica.url)).await;
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON item");
    assert_eq!(json["owner"], self_url.as_str());
    let peer_get = format!("{self_url}/_groupcache/items/k");
    assert_eq!(get(&http, &peer_get).await.0, 200);

    replica.process.terminate();
    assert!(matches!(
        replica.wait_for_status(&http, "/readyz", 503).await,
        Start::Ready
    ));
    let (status, body) = get(&http, &peer_get).await;
    assert_eq!(
        status, 200,
        "the peer port stopped serving during the drain: {body}"
    );
    let exit = replica.process.wait_exit(Duration::from_secs(30)).await;
    let log = replica.process.log_text();
    assert!(exit.success(), "exit status {exit}; log:\n{log}");
    // Both servers finished before the shutdown timeout.
    assert!(
        log.contains("stopped") && !log.contains("still running"),
        "{log}"
    );
}

/// A kubeconfig for the fake API server, namespace `shop`, no credentials.
fn kubeconfig(api: &FakeApiServer) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    namespace: shop\n    user: test\n\
         current-context: fake\nusers:\n- name: test\n  user: {{}}\n",
        api.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_replicas_find_each_other_through_endpoint_slices() {
    let dir = TempDir::new("kubernetes");
    let http = http();
    let api = FakeApiServer::start().await;
    let config = dir.path().join("kubeconfig");
    std::fs::write(&config, kubeconfig(&api)).expect("write the kubeconfig");
    // The API is down when the replicas start: they serve, alive but not ready.
    api.set_failing(true);

    let ports = free_ports(3);
    let args: Vec<String> = ["--kube-service", "shop-peers", "--load-latency", "20ms"]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
    let env = [("KUBECONFIG", config.display().to_string())];
    let mut replicas: Vec<Replica> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Replica::spawn(
                &format!("replica-{i}"),
                *port,
                None,
                &args,
                &env,
                dir.path(),
            )
        })
        .collect();
    for replica in &mut replicas {
        match replica.wait_for_status(&http, "/healthz", 200).await {
            Start::Ready => {}
            Start::Exited(why) => {
                panic!("a replica did not start (its port may have been taken): {why}")
            }
        }
        assert_eq!(get(&http, &format!("{}/readyz", replica.url)).await.0, 503);
    }
    let deadline = Instant::now() + PATIENCE;
    while api.failed_requests() < 3 {
        assert!(
            Instant::now() < deadline,
            "the replicas never asked the API"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Each replica in a slice of its own: they listen on different ports of one address.
    for (i, port) in ports.iter().enumerate() {
        api.apply(endpoint_slice(
            "shop",
            &format!("shop-peers-{i}"),
            "shop-peers",
            *port,
            &[("127.0.0.1", true)],
        ));
    }
    api.set_failing(false);
    for replica in &mut replicas {
        assert!(matches!(
            replica.wait_for_status(&http, "/readyz", 200).await,
            Start::Ready
        ));
    }
    let peers_gauge = PEERS_GAUGE;
    for replica in &replicas {
        let deadline = Instant::now() + PATIENCE;
        while replica.metric(&http, peers_gauge).await != Some(3.0) {
            assert!(
                Instant::now() < deadline,
                "{} never saw 3 peers",
                replica.url
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // One ring: every replica names the same owner for a key, and the owner loaded it.
    for key in 0..12 {
        let mut seen = BTreeSet::new();
        for replica in &replicas {
            let (status, body) = get(&http, &format!("{}/items/k{key}", replica.url)).await;
            assert_eq!(status, 200, "{body}");
            let json: Value = serde_json::from_str(&body).expect("JSON");
            seen.insert((
                json["owner"].to_string(),
                json["item"]["loaded_by"].to_string(),
            ));
        }
        assert_eq!(seen.len(), 1, "k{key}: {seen:?}");
    }

    // Replica 2 turns unready: the others drop it from their rings.
    api.apply(endpoint_slice(
        "shop",
        "shop-peers-2",
        "shop-peers",
        ports[2],
        &[("127.0.0.1", false)],
    ));
    for replica in &replicas[..2] {
        let deadline = Instant::now() + PATIENCE;
        while replica.metric(&http, peers_gauge).await != Some(2.0) {
            assert!(
                Instant::now() < deadline,
                "{} still has 3 peers",
                replica.url
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // An API outage later changes nothing and takes nothing down.
    api.set_failing(true);
    let failed = api.failed_requests();
    let deadline = Instant::now() + PATIENCE;
    while api.failed_requests() < failed + 2 {
        assert!(Instant::now() < deadline, "the replicas never retried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for replica in &mut replicas {
        assert!(replica.process.exited().is_none(), "{} exited", replica.url);
        assert_eq!(get(&http, &format!("{}/readyz", replica.url)).await.0, 200);
    }
    assert_eq!(replicas[0].metric(&http, peers_gauge).await, Some(2.0));
}

/// With `--peer-secret-file`, replicas sign their peer requests: every key is still loaded once
/// in the whole cluster with no peer errors, and the peer port refuses requests that are not
/// signed with the secret (401, counted), without loading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_authentication_from_a_secret_file() {
    let dir = TempDir::new("peer-auth");
    let secret = dir.path().join("peer-secret");
    std::fs::write(
        &secret,
        "6b3a55e0261b0304143f805a24924d0c1b6f6cb8ab3c1a9f\n",
    )
    .expect("write the secret");
    let secret = secret.display().to_string();
    let args = ["--load-latency", "20ms", "--peer-secret-file", &secret];
    let http = http();
    let cluster = Cluster::start_static(3, PeerPort::Own, &args, dir.path()).await;
    drive_traffic(&http, &cluster).await;
    assert_eq!(
        total(&http, &cluster, LOADS).await,
        KEYS as f64,
        "one load per key"
    );
    assert!(
        total(&http, &cluster, SERVED_TO_PEERS).await > 0.0,
        "no signed peer request"
    );
    let peer_errors = "groupcache_peer_errors_total{group=\"items\"}";
    assert_eq!(
        total(&http, &cluster, peer_errors).await,
        0.0,
        "signed requests failed"
    );
    // Replica-wide, like the ring: no `group` label.
    let failures = "groupcache_peer_auth_failures_total{reason=\"missing\"}";
    assert_eq!(total(&http, &cluster, failures).await, 0.0);

    // Unsigned requests to the peer port: refused, counted, and no load.
    for replica in &cluster.replicas {
        let url = format!("{}/internal/_groupcache/items/unsigned", replica.peer_url);
        let (status, body) = get(&http, &url).await;
        assert_eq!(status, 401, "{url}: {body}");
    }
    assert_eq!(
        total(&http, &cluster, failures).await,
        cluster.replicas.len() as f64
    );
    assert_eq!(
        total(&http, &cluster, LOADS).await,
        KEYS as f64,
        "no load for them"
    );
}

/// Waits (bounded) until `replica`'s `groupcache_peers` gauge reads `n`.
async fn wait_for_peers(http: &reqwest::Client, replica: &Replica, n: f64) {
    let deadline = Instant::now() + PATIENCE;
    while replica.metric(http, PEERS_GAUGE).await != Some(n) {
        assert!(
            Instant::now() < deadline,
            "{} never had {n} members in its ring",
            replica.url
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A graceful scale-down in Kubernetes mode: on SIGTERM a replica reports not-ready and leaves its
/// own ring at once (its own requests go to the keys' next owners), and the test, as the endpoint
/// controller, then marks its endpoint unready, so the others drop it. Through its drain it still
/// answers peers: their gets, and the peeks with which the new owners of its keys take them from
/// its memory. So the survivors serve its keys as it loaded them (`loaded_by` names it), not
/// reloaded; then it exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_the_ring_first_and_hands_the_keys_off_through_the_drain() {
    const WARM_KEYS: usize = 300;
    let dir = TempDir::new("sigterm-leave");
    let http = http();
    let api = FakeApiServer::start().await;
    let config = dir.path().join("kubeconfig");
    std::fs::write(&config, kubeconfig(&api)).expect("write the kubeconfig");
    let ports = free_ports(3);
    for (i, port) in ports.iter().enumerate() {
        api.apply(endpoint_slice(
            "shop",
            &format!("shop-peers-{i}"),
            "shop-peers",
            *port,
            &[("127.0.0.1", true)],
        ));
    }
    let args: Vec<String> = ["--kube-service", "shop-peers", "--load-latency", "5ms"]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
    let env = [
        ("KUBECONFIG", config.display().to_string()),
        // Long enough for every check below; the exit is waited for, not this.
        ("SHUTDOWN_DELAY", "10s".to_owned()),
    ];
    let mut replicas: Vec<Replica> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Replica::spawn(
                &format!("replica-{i}"),
                *port,
                None,
                &args,
                &env,
                dir.path(),
            )
        })
        .collect();
    for replica in &mut replicas {
        match replica.wait_for_status(&http, "/readyz", 200).await {
            Start::Ready => {}
            Start::Exited(why) => {
                panic!("a replica did not start (its port may have been taken): {why}")
            }
        }
        wait_for_peers(&http, replica, 3.0).await;
    }
    let leaving_url = format!("{}/internal", replicas[2].peer_url);

    // Warm: every key loaded once, by its owner.
    let mut gets = Vec::new();
    for i in 0..WARM_KEYS {
        let (http, url) = (http.clone(), format!("{}/items/w{i}", replicas[0].url));
        gets.push(tokio::spawn(async move { (i, get(&http, &url).await) }));
    }
    let mut its_keys = Vec::new();
    for get in gets {
        let (i, (status, body)) = get.await.expect("request task");
        assert_eq!(status, 200, "w{i}: {body}");
        let json: Value = serde_json::from_str(&body).expect("JSON item");
        if json["owner"] == leaving_url.as_str() {
            assert_eq!(json["item"]["loaded_by"], replicas[2].peer_url.as_str());
            its_keys.push(format!("w{i}"));
        }
    }
    assert!(
        its_keys.len() >= 50,
        "{} keys on the leaving replica",
        its_keys.len()
    );

    // SIGTERM: not ready, and out of its own ring before anyone else's.
    replicas[2].process.terminate();
    assert!(matches!(
        replicas[2].wait_for_status(&http, "/readyz", 503).await,
        Start::Ready
    ));
    wait_for_peers(&http, &replicas[2], 2.0).await;
    let owner_url = format!("{}/admin/owner/{}", replicas[2].url, its_keys[0]);
    let (status, body) = get(&http, &owner_url).await;
    assert_eq!(status, 200, "{body}");
    let owner: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(owner["is_self"], false, "it still owns its keys: {owner}");
    // Its own requests go to the next owners; they still reach it while their rings have it
    // (this key is then loaded again by its next owner, which does not own it yet: left out
    // below).
    let (status, body) = get(&http, &format!("{}/items/{}", replicas[2].url, its_keys[0])).await;
    assert_eq!(status, 200, "during the drain: {body}");

    // The endpoint controller marks it unready; the others drop it.
    api.apply(endpoint_slice(
        "shop",
        "shop-peers-2",
        "shop-peers",
        ports[2],
        &[("127.0.0.1", false)],
    ));
    for replica in &replicas[..2] {
        wait_for_peers(&http, replica, 2.0).await;
    }
    // It still answers peers through its drain: a get and a peek, from memory.
    let peer_get = format!("{leaving_url}/_groupcache/items/{}", its_keys[1]);
    assert_eq!(get(&http, &peer_get).await.0, 200, "a peer's get");
    let peek = http
        .get(&peer_get)
        .header("groupcache-peek", "1")
        .send()
        .await
        .expect("a peek");
    assert_eq!(peek.status(), 200, "a peek of a key it holds");

    // Its keys, from both survivors: handed off from its memory, not loaded again.
    let moved = &its_keys[1..];
    let mut reloaded = Vec::new();
    for (n, key) in moved.iter().enumerate() {
        let replica = &replicas[n % 2];
        let (status, body) = get(&http, &format!("{}/items/{key}", replica.url)).await;
        assert_eq!(status, 200, "{key} from {}: {body}", replica.url);
        let json: Value = serde_json::from_str(&body).expect("JSON item");
        assert_ne!(json["owner"], leaving_url.as_str());
        if json["item"]["loaded_by"] != replicas[2].peer_url.as_str() {
            reloaded.push((key.clone(), json["item"]["loaded_by"].clone()));
        }
    }
    let mut hits = 0.0;
    for replica in &replicas[..2] {
        hits += replica
            .metric(&http, "groupcache_handoff_hits_total{group=\"items\"}")
            .await
            .unwrap_or_default();
    }
    println!(
        "graceful leave: {} keys moved, {} reloaded, {hits} hand-off hits",
        moved.len(),
        reloaded.len()
    );
    assert!(
        reloaded.is_empty(),
        "keys reloaded instead of handed off: {reloaded:?}"
    );
    assert!(hits >= moved.len() as f64, "{hits} hand-off hits");

    let exit = replicas[2].process.wait_exit(Duration::from_secs(60)).await;
    let log = replicas[2].process.log_text();
    assert!(exit.success(), "exit status {exit}; log:\n{log}");
    assert!(
        log.contains("left the ring") && log.contains("stopped"),
        "{log}"
    );
}
