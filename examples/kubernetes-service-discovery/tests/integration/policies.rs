//! The items' cache policies, on three replicas and a real PostgreSQL (`postgres`), counted by
//! PostgreSQL itself (`pg_stat_statements`):
//!
//! - a key without a row, asked again and again through every replica, costs one query until
//!   `--not-found-ttl` ends; a row inserted behind the service's back is served after it;
//! - `DELETE /items` with the admin token empties every replica's items cache: the next reads
//!   load again (one query per key) and nothing from before is served; without the token, or
//!   with another, it is refused and changes nothing; a replica without a token refuses it;
//! - an item read in the last `--item-refresh-ahead` of its TTL is answered from the cache and
//!   reloaded in the background, once for the cluster;
//! - with PostgreSQL stopped, items past their cache TTL are still served, marked
//!   `Warning: 110`, from every replica; an item past its own expiry is not; once PostgreSQL is
//!   back, reads are fresh again without a restart.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::api::send;
use crate::cli::cachectl;
use crate::database::{insert_rows, put_body};
use crate::postgres::PgServer;
use crate::process::{Cluster, PATIENCE, PeerPort, Replica, TempDir, http};

const REPLICAS: usize = 3;

const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

const NOT_FOUND: &str = "urn:kubernetes-service-discovery:problem:not-found";

/// Three replicas on `pg`, with `args` besides.
async fn cluster(pg: &PgServer, dir: &TempDir, args: &[&str]) -> Cluster {
    let mut all = vec!["--database-url", &pg.url, "--database-max-connections", "8"];
    all.extend_from_slice(args);
    Cluster::start_static(REPLICAS, PeerPort::Shared, &all, dir.path()).await
}

async fn reset_statements(db: &tokio_postgres::Client) {
    db.execute("SELECT pg_stat_statements_reset()", &[])
        .await
        .expect("reset pg_stat_statements");
}

/// `GET url`: the status, the `Warning` header if any, and the body as JSON.
async fn get(http: &reqwest::Client, url: &str) -> (u16, Option<String>, Value) {
    let response = http.get(url).send().await.expect("the replica answers");
    let status = response.status().as_u16();
    let warning = response
        .headers()
        .get("warning")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.expect("a body");
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, warning, body)
}

/// `DELETE url` with `authorization` if given: the status, `WWW-Authenticate` and the body.
async fn delete(
    http: &reqwest::Client,
    url: &str,
    authorization: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = http.delete(url);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.expect("the replica answers");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.expect("a body");
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, challenge, body)
}

/// The sum over the replicas of a counter of `/admin/stats` (the items group).
async fn stat(http: &reqwest::Client, cluster: &Cluster, counter: &str) -> u64 {
    let mut sum = 0;
    for replica in &cluster.replicas {
        let stats = send(http, "GET", &format!("{}/admin/stats", replica.url), None).await;
        sum += stats.2[counter]
            .as_u64()
            .unwrap_or_else(|| panic!("no {counter} in {}", stats.2));
    }
    sum
}

#[tokio::test]
async fn a_missing_item_asked_again_and_again_costs_one_query_until_the_not_found_ttl() {
    let Some(pg) = PgServer::start("not-found") else {
        return;
    };
    let dir = TempDir::new("pg-not-found");
    const NOT_FOUND_TTL: Duration = Duration::from_secs(3);
    let cluster = cluster(&pg, &dir, &["--not-found-ttl", "3s"]).await;
    let db = pg.client().await;
    let http = http();
    let url = |replica: usize| format!("{}/items/ghost", cluster.replicas[replica].url);
    reset_statements(&db).await;

    // One after the other, so that no read joins another's load: each is answered from a
    // cached negative answer, the owner's or a copy of it.
    const ASKS: usize = 30;
    let first = Instant::now();
    for i in 0..ASKS {
        let (status, _, body) = get(&http, &url(i % REPLICAS)).await;
        assert_eq!(status, 404, "ask {i}: {body}");
        assert_eq!(body["type"], NOT_FOUND, "ask {i}: {body}");
    }
    let selects = PgServer::item_selects(&db).await;
    eprintln!("a missing item asked {ASKS} times through {REPLICAS} replicas: {selects} SELECTs");
    assert!(
        first.elapsed() < NOT_FOUND_TTL,
        "the asks took longer than the TTL: the count below would not say much"
    );
    assert_eq!(selects, 1, "one query for the missing item, cluster-wide");

    // Cached briefly: the row inserted behind the replicas' backs is served once the negative
    // answer ends, on every replica, for one more query.
    db.execute(
        "INSERT INTO items (key, value) VALUES ('ghost', '{\"n\": 0}')",
        &[],
    )
    .await
    .expect("insert the row");
    let deadline = first + NOT_FOUND_TTL + PATIENCE;
    for replica in 0..REPLICAS {
        loop {
            let (status, _, body) = get(&http, &url(replica)).await;
            if status == 200 {
                assert_eq!(body["item"]["value"], json!({ "n": 0 }), "{body}");
                break;
            }
            assert_eq!(status, 404, "{body}");
            assert!(
                Instant::now() < deadline,
                "replica {replica} still answers 404 long after --not-found-ttl"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        first.elapsed() >= NOT_FOUND_TTL,
        "served before the TTL ended"
    );
    assert_eq!(
        PgServer::item_selects(&db).await,
        2,
        "one more query, cluster-wide"
    );
    assert_eq!(stat(&http, &cluster, "not_found_loads").await, 1);
}

#[tokio::test]
async fn delete_items_as_admin_empties_every_replica_and_anyone_else_is_refused() {
    let Some(pg) = PgServer::start("purge") else {
        return;
    };
    let dir = TempDir::new("pg-purge");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("write the token");
    let token_file = token_file.display().to_string();
    // Nothing would expire on its own during the test: only the purge can empty the caches.
    let cluster = cluster(
        &pg,
        &dir,
        &["--admin-token-file", &token_file, "--not-found-ttl", "1h"],
    )
    .await;
    let db = pg.client().await;
    let http = http();
    const KEYS: i32 = 6;
    insert_rows(&db, "p-", KEYS).await;
    let keys: Vec<String> = (0..KEYS)
        .map(|i| format!("p-{i}"))
        .chain(["p-missing".to_owned()])
        .collect();
    let url = |replica: usize, key: &str| format!("{}/items/{key}", cluster.replicas[replica].url);
    // What every replica answers for every key: its value, or `None` for a 404.
    let read_all = || async {
        let mut answers = Vec::new();
        for key in &keys {
            for replica in 0..REPLICAS {
                let (status, _, body) = get(&http, &url(replica, key)).await;
                match status {
                    200 => answers.push((key.clone(), Some(body["item"]["value"].clone()))),
                    404 => answers.push((key.clone(), None)),
                    _ => panic!("{key} from replica {replica}: {status} {body}"),
                }
            }
        }
        answers
    };
    let expect = |new: bool| {
        keys.iter()
            .flat_map(|key| std::iter::repeat_n(key, REPLICAS))
            .map(|key| {
                let value = match key.strip_prefix("p-").and_then(|n| n.parse::<i32>().ok()) {
                    Some(n) if new => Some(json!({ "n": -n })),
                    Some(n) => Some(json!({ "n": n })),
                    None if new => Some(json!("inserted")),
                    None => None,
                };
                (key.clone(), value)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(read_all().await, expect(false), "before the change");

    // Behind the replicas' backs: every row changed, and the missing one inserted. The caches
    // still answer what they hold.
    db.batch_execute(
        "UPDATE items SET value = jsonb_build_object('n', -(value->>'n')::int) \
         WHERE key LIKE 'p-%'; \
         INSERT INTO items (key, value) VALUES ('p-missing', '\"inserted\"')",
    )
    .await
    .expect("change the rows");
    reset_statements(&db).await;
    assert_eq!(
        read_all().await,
        expect(false),
        "the caches changed by themselves"
    );

    // Anyone but an admin is refused, and nothing is purged.
    let purge = format!("{}/items", cluster.replicas[1].url);
    let refused = delete(&http, &purge, None).await;
    assert_eq!(refused.0, 401, "{}", refused.2);
    assert!(
        refused
            .1
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer")),
        "401 without a Bearer challenge: {refused:?}"
    );
    for wrong in [
        "Bearer not-the-admin-token-at-all",
        "Basic YWRtaW46YWRtaW4=",
    ] {
        let refused = delete(&http, &purge, Some(wrong)).await;
        assert_eq!(refused.0, 401, "{wrong}: {}", refused.2);
    }
    assert_eq!(
        read_all().await,
        expect(false),
        "purged by a refused request"
    );
    assert_eq!(PgServer::item_selects(&db).await, 0);

    // The admin purges through one replica: every replica loads again, each key once.
    let purged = delete(&http, &purge, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    assert_eq!(purged.0, 204, "{}", purged.2);
    assert_eq!(read_all().await, expect(true), "after the purge");
    let selects = PgServer::item_selects(&db).await;
    eprintln!(
        "after a purge, {} keys read through {REPLICAS} replicas: {selects} SELECTs",
        keys.len()
    );
    assert_eq!(
        selects,
        keys.len() as i64,
        "one query per key, cluster-wide"
    );
    assert!(stat(&http, &cluster, "purges").await >= REPLICAS as u64);

    // `cachectl purge` does the same with the token's file, and is refused (exit 2) without.
    let server = cluster.replicas[2].url.clone();
    let run = tokio::task::spawn_blocking(move || {
        let refused = cachectl(&server, &["purge"]);
        let purged = cachectl(&server, &["purge", "--admin-token-file", &token_file]);
        (refused, purged)
    })
    .await
    .expect("cachectl");
    assert_eq!(
        run.0.code, 2,
        "cachectl purge without the token: {}",
        run.0.stderr
    );
    assert_eq!(run.1.code, 0, "cachectl purge: {}", run.1.stderr);
    let (status, _, body) = get(&http, &url(0, "p-0")).await;
    assert_eq!((status, &body["item"]["value"]), (200, &json!({ "n": 0 })));
    assert_eq!(
        PgServer::item_selects(&db).await,
        keys.len() as i64 + 1,
        "not loaded again after cachectl purge"
    );
}

#[tokio::test]
async fn an_item_read_in_its_refresh_window_is_reloaded_once_in_the_background() {
    let Some(pg) = PgServer::start("refresh") else {
        return;
    };
    let dir = TempDir::new("pg-refresh");
    let cluster = cluster(
        &pg,
        &dir,
        &["--item-ttl", "3s", "--item-refresh-ahead", "2s"],
    )
    .await;
    let db = pg.client().await;
    let http = http();
    db.execute(
        "INSERT INTO items (key, value) VALUES ('r', '\"before\"')",
        &[],
    )
    .await
    .expect("insert the row");
    reset_statements(&db).await;
    let url = |replica: usize| format!("{}/items/r", cluster.replicas[replica].url);
    let value = |answer: (u16, Option<String>, Value)| {
        assert_eq!(answer.0, 200, "{}", answer.2);
        answer.2["item"]["value"].clone()
    };
    for replica in 0..REPLICAS {
        assert_eq!(value(get(&http, &url(replica)).await), json!("before"));
    }
    db.execute("UPDATE items SET value = '\"after\"' WHERE key = 'r'", &[])
        .await
        .expect("update the row");

    // In the window (from 1 s to 3 s after the load): the cached item is answered at once, and
    // its owner reloads it in the background; the other replicas answer either meanwhile.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(value(get(&http, &url(0)).await), json!("before"));
    let deadline = Instant::now() + PATIENCE;
    for replica in 0..REPLICAS {
        while value(get(&http, &url(replica)).await) != json!("after") {
            assert!(
                Instant::now() < deadline,
                "never refreshed on replica {replica}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        PgServer::item_selects(&db).await,
        2,
        "one reload, cluster-wide"
    );
    assert!(
        stat(&http, &cluster, "refreshes").await >= 1,
        "reloaded by expiry, not ahead of it"
    );
}

/// A replica without `--admin-token-file` refuses every purge: 403 for a bearer token (there is
/// no admin), 401 without one (the challenge, as with a token).
#[tokio::test]
async fn without_an_admin_token_purging_is_refused() {
    let dir = TempDir::new("purge-no-token");
    let replica = Replica::start("replica", &["--load-latency", "0ms"], dir.path()).await;
    let http = http();
    let purge = format!("{}/items", replica.url);
    let refused = delete(&http, &purge, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    assert_eq!(refused.0, 403, "{}", refused.2);
    assert_eq!(
        refused.2["type"], "urn:kubernetes-service-discovery:problem:forbidden",
        "{}",
        refused.2
    );
    let refused = delete(&http, &purge, None).await;
    assert_eq!(refused.0, 401, "{}", refused.2);
}

/// `s-0` .. `s-{keys-1}` read through every replica at once: each key, replica and answer.
async fn read_at_once(
    http: &reqwest::Client,
    cluster: &Cluster,
    keys: i32,
) -> Vec<(i32, usize, (u16, Option<String>, Value))> {
    let reads = (0..keys)
        .flat_map(|key| (0..REPLICAS).map(move |replica| (key, replica)))
        .map(|(key, replica)| {
            let url = format!("{}/items/s-{key}", cluster.replicas[replica].url);
            async move { (key, replica, get(http, &url).await) }
        });
    join_all(reads).await
}

#[tokio::test]
async fn with_postgresql_down_items_past_their_ttl_are_served_stale_from_every_replica() {
    let Some(pg) = PgServer::start("stale") else {
        return;
    };
    let dir = TempDir::new("pg-stale");
    const ITEM_TTL: Duration = Duration::from_secs(1);
    let cluster = cluster(&pg, &dir, &["--item-ttl", "1s", "--item-max-stale", "10m"]).await;
    let db = pg.client().await;
    let http = http();
    const KEYS: i32 = 6;
    insert_rows(&db, "s-", KEYS).await;
    insert_rows(&db, "never-read-", 1).await;
    drop(db);
    let url = |replica: usize, key: &str| format!("{}/items/{key}", cluster.replicas[replica].url);
    // An item of its own expiry, which no stale copy may outlive.
    let put = send(
        &http,
        "PUT",
        &url(0, "s-expiring"),
        Some((
            "application/json",
            json!({ "value": "short", "ttl_seconds": 1 })
                .to_string()
                .into_bytes(),
        )),
    )
    .await;
    assert_eq!(put.0, 200, "{}", put.2);
    let read_all = || read_at_once(&http, &cluster, KEYS);
    for (key, replica, (status, warning, body)) in read_all().await {
        assert_eq!(status, 200, "s-{key} from replica {replica}: {body}");
        assert_eq!(
            warning, None,
            "s-{key} from replica {replica}: fresh, yet marked"
        );
    }

    pg.stop();
    tokio::time::sleep(ITEM_TTL + Duration::from_millis(1500)).await;
    for (key, replica, (status, warning, body)) in read_all().await {
        assert_eq!(
            status, 200,
            "s-{key} from replica {replica}, PostgreSQL down: {body}"
        );
        assert_eq!(body["item"]["value"], json!({ "n": key }), "{body}");
        assert_eq!(
            warning.as_deref(),
            Some("110 - \"Response is Stale\""),
            "s-{key} from replica {replica}: served past its TTL without a Warning"
        );
    }
    for replica in 0..REPLICAS {
        let (status, _, body) = get(&http, &url(replica, "s-expiring")).await;
        assert_eq!(
            status, 404,
            "an item past its own expiry, served stale: {body}"
        );
        let (status, _, body) = get(&http, &url(replica, "never-read-0")).await;
        assert_eq!(status, 503, "a key never cached: {body}");
    }
    let stale = stat(&http, &cluster, "stale_served").await;
    eprintln!("PostgreSQL down: {stale} stale answers counted by the replicas");
    assert!(stale > 0, "no stale answer counted");
    // A write is still refused: stale reads are for reads only.
    let put = send(&http, "PUT", &url(1, "s-0"), put_body(&json!("lost"))).await;
    assert_eq!(put.0, 503, "{}", put.2);

    // Back: every replica answers fresh items again (once the read circuit breaker, open after
    // the failed loads, lets a probe through), without a restart.
    pg.restart();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answers = read_all().await;
        if answers
            .iter()
            .all(|(_, _, (status, warning, _))| *status == 200 && warning.is_none())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still stale with PostgreSQL back: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, body) = get(&http, &url(2, "never-read-0")).await;
    assert_eq!(status, 200, "{body}");
}
