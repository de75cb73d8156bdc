//! What a client and an operator rely on, one replica or a few on loopback (simulated database):
//! a write whose cache step did not reach every replica answers 202 and is counted; the
//! metrics an alert needs exist from the start; HTTP requests are counted per route and status;
//! with the simulated database a deleted key stays deleted after its entry's TTL.

use std::time::Duration;

use serde_json::{Value, json};

use crate::api::send;
use crate::process::{Cluster, PeerPort, Replica, TempDir, free_ports, http};

fn json_body(value: &Value) -> Option<(&'static str, Vec<u8>)> {
    Some(("application/json", value.to_string().into_bytes()))
}

/// A replica whose ring has a member nobody answers at: every write's cache step fails to reach
/// it, so every `PUT` and `DELETE` answers 202 with `stale_until`, and the metric counts them.
/// A replica alone answers 200 and 204.
#[tokio::test]
async fn a_write_that_misses_a_replica_says_so_and_is_counted() {
    let dir = TempDir::new("honest-incomplete");
    let http = http();
    // A port that was free a moment ago: connections to it are refused at once.
    let dead = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    // The replica is always in its own ring: listing the dead one is enough.
    let args = [
        "--load-latency",
        "0ms",
        "--item-ttl",
        "60s",
        "--peers",
        &dead,
    ];
    let replica = Replica::start("replica", &args, dir.path()).await;
    let url = |key: &str| format!("{}/items/{key}", replica.url);
    let counted = |op: &str| format!("item_writes_incomplete_total{{op=\"{op}\"}}");
    assert_eq!(replica.metric(&http, &counted("put")).await, Some(0.0));

    let put = send(&http, "PUT", &url("k"), json_body(&json!({"value": 1}))).await;
    assert_eq!(put.0, 202, "{}", put.2);
    assert_eq!(put.2["item"]["value"], 1, "{}", put.2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let until = put.2["stale_until"].as_u64().expect("stale_until");
    assert!(
        (now + 55..=now + 61).contains(&until),
        "{until} vs now {now}"
    );
    assert!(
        put.2["detail"]
            .as_str()
            .is_some_and(|d| d.contains("replica"))
    );
    assert_eq!(replica.metric(&http, &counted("put")).await, Some(1.0));

    let delete = send(&http, "DELETE", &url("k"), None).await;
    assert_eq!(delete.0, 202, "{}", delete.2);
    assert_eq!(delete.2["key"], "k");
    assert_eq!(replica.metric(&http, &counted("delete")).await, Some(1.0));

    let alone = Replica::start("alone", &["--load-latency", "0ms"], dir.path()).await;
    let put = send(
        &http,
        "PUT",
        &format!("{}/items/k", alone.url),
        json_body(&json!({"value": 1})),
    )
    .await;
    assert_eq!(put.0, 200, "{}", put.2);
    let delete = send(&http, "DELETE", &format!("{}/items/k", alone.url), None).await;
    assert_eq!(delete.0, 204);
}

/// `peer_discovery_errors_total` and the write counter exist at 0 before anything happened, and
/// every request is counted by method, route pattern (never the raw key) and status.
#[tokio::test]
async fn metrics_exist_from_the_start_and_http_is_counted_per_route() {
    let dir = TempDir::new("honest-metrics");
    let http = http();
    let replica = Replica::start("replica", &["--load-latency", "0ms"], dir.path()).await;
    for reason in ["list", "gone", "watch_stream"] {
        let series = format!("peer_discovery_errors_total{{reason=\"{reason}\"}}");
        assert_eq!(replica.metric(&http, &series).await, Some(0.0), "{series}");
    }
    assert_eq!(
        send(
            &http,
            "GET",
            &format!("{}/items/secret-key", replica.url),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        send(&http, "GET", &format!("{}/nowhere", replica.url), None)
            .await
            .0,
        404
    );
    let (_, body) = crate::process::get(&http, &format!("{}/metrics", replica.url)).await;
    let has = |needle: &str| {
        body.lines().any(|line| {
            line.starts_with("http_requests_total{")
                && needle.split(',').all(|part| line.contains(part))
        })
    };
    assert!(
        has(r#"method="GET",route="/items/{key}",status="200""#),
        "{body}"
    );
    assert!(
        has(r#"method="GET",route="unmatched",status="404""#) || has(r#"status="404""#),
        "{body}"
    );
    assert!(
        !body.contains("secret-key"),
        "a key became a label:\n{body}"
    );
    assert!(
        body.contains("http_request_duration_seconds_bucket{"),
        "{body}"
    );
}

/// With the simulated database, a key deleted through one replica stays deleted on every
/// replica after the cache TTL: the owner's own table never saw the delete, so its entry must
/// not expire into a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_stays_deleted_with_the_simulated_database() {
    let dir = TempDir::new("honest-simulated");
    let http = http();
    let cluster = Cluster::start_static(
        2,
        PeerPort::Own,
        &["--load-latency", "0ms", "--item-ttl", "1s"],
        dir.path(),
    )
    .await;
    let [a, b] = &cluster.replicas[..] else {
        unreachable!("two replicas")
    };
    // A key owned by b, deleted and written through a.
    let mut key = None;
    for i in 0..100 {
        let candidate = format!("key-{i}");
        let owner = send(
            &http,
            "GET",
            &format!("{}/admin/owner/{candidate}", a.url),
            None,
        )
        .await;
        if owner.2["is_self"] == false {
            key = Some(candidate);
            break;
        }
    }
    let key = key.expect("a key owned by the other replica");
    assert_eq!(
        send(&http, "DELETE", &format!("{}/items/{key}", a.url), None)
            .await
            .0,
        204
    );
    let written = format!("{key}-written");
    let put = send(
        &http,
        "PUT",
        &format!("{}/items/{written}", a.url),
        json_body(&json!({"value": "kept"})),
    )
    .await;
    assert_eq!(put.0, 200, "{}", put.2);
    // Past the cache TTL: an entry loaded then would have expired by now.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for replica in [a, b] {
        let get = send(&http, "GET", &format!("{}/items/{key}", replica.url), None).await;
        assert_eq!(
            get.0, 404,
            "the deleted key came back on {}: {}",
            replica.url, get.2
        );
        let get = send(
            &http,
            "GET",
            &format!("{}/items/{written}", replica.url),
            None,
        )
        .await;
        assert_eq!(get.2["item"]["value"], "kept", "{}", get.2);
    }
}
