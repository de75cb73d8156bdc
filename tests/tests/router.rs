//! The router as a peer sees it: real HTTP requests, golang/groupcache's wire format, and clear 4xx
//! answers to bad input.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use groupcache_rs::Groupcache;
use groupcache_rs_pb::{GetResponse, SetRequest};
use groupcache_tests::{ClusterReplica, GROUP, Replica, TestLoader, key_owned};
use prost::Message;

fn replica(loader: &TestLoader) -> Replica<TestLoader> {
    Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone())
            .max_key_bytes(64)
            .max_value_bytes(1024)
    })
}

async fn send(method: reqwest::Method, url: String, body: Vec<u8>) -> (u16, String) {
    let response = reqwest::Client::new()
        .request(method, url)
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_answers_with_a_protobuf_get_response() {
    let loader = TestLoader::new();
    let replica = replica(&loader);
    let response = reqwest::get(format!("{}/_groupcache/{GROUP}/a%20b%2Fc", replica.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let message = GetResponse::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        message.value.as_deref(),
        Some(loader.value_for("a b/c").as_bytes())
    );
    assert_eq!(message.expire, None, "no expiry is sent as absent");
    assert_eq!(replica.cache.stats().server_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_4xx_and_never_reach_the_loader() {
    let loader = TestLoader::new();
    let replica = replica(&loader);
    let base = format!("{}/_groupcache", replica.url);
    let long_key = "k".repeat(65);
    let cases = [
        (
            reqwest::Method::GET,
            format!("{base}/nosuch/k"),
            404,
            "no such group: nosuch",
        ),
        (
            reqwest::Method::GET,
            format!("{base}/{GROUP}"),
            400,
            "bad request",
        ),
        (reqwest::Method::GET, format!("{base}/"), 400, "bad request"),
        (
            reqwest::Method::GET,
            format!("{base}/{GROUP}/%FF%FE"),
            400,
            "bad request",
        ),
        (
            reqwest::Method::GET,
            format!("{base}/{GROUP}/{long_key}"),
            400,
            "over the limit of 64",
        ),
        (
            reqwest::Method::DELETE,
            format!("{base}/{GROUP}/{long_key}"),
            400,
            "over the limit of 64",
        ),
        (reqwest::Method::POST, format!("{base}/{GROUP}/k"), 405, ""),
        (reqwest::Method::PATCH, format!("{base}/{GROUP}/k"), 405, ""),
    ];
    for (method, url, expected, message) in cases {
        let (status, body) = send(method.clone(), url.clone(), Vec::new()).await;
        assert_eq!(status, expected, "{method} {url}: {body}");
        assert!(
            body.contains(message),
            "{method} {url}: {body:?} lacks {message:?}"
        );
    }
    let (status, body) = send(
        reqwest::Method::PUT,
        format!("{base}/{GROUP}/k"),
        vec![0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("malformed SetRequest"));
    let huge = SetRequest {
        value: Some(vec![0; 8192].into()),
        ..Default::default()
    }
    .encode_to_vec();
    let (status, _) = send(reqwest::Method::PUT, format!("{base}/{GROUP}/k"), huge).await;
    assert_eq!(status, 413, "a PUT body over the value limit is refused");
    assert_eq!(loader.loads.total(), 0);
    assert_eq!(replica.cache.stats().main_items, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_delete_follow_mailgun_v2() {
    let loader = TestLoader::new();
    let replica = replica(&loader);
    let url = format!("{}/_groupcache/{GROUP}/k", replica.url);
    let set = SetRequest {
        group: GROUP.into(),
        key: "k".into(),
        value: Some("stored".into()),
        expire: None,
    };
    assert_eq!(
        send(reqwest::Method::PUT, url.clone(), set.encode_to_vec())
            .await
            .0,
        200
    );
    assert_eq!(replica.cache.get("k").await.unwrap(), "stored");
    assert_eq!(
        send(reqwest::Method::DELETE, url.clone(), Vec::new())
            .await
            .0,
        200
    );
    assert_eq!(replica.cache.stats().main_items, 0);
    assert_eq!(replica.cache.get("k").await.unwrap(), loader.value_for("k"));
    assert_eq!(loader.loads.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_errors_are_500_with_the_message_and_a_loader_marker() {
    let loader = TestLoader::new();
    let replica = replica(&loader);
    let response = reqwest::get(format!("{}/_groupcache/{GROUP}/error:x", replica.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["groupcache-error"], "loader");
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("no value for error:x")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_garbage_or_too_much_is_survived_with_a_local_load() {
    // A fake "owner" that answers every request with garbage or an endless body.
    for answer in ["garbage", "huge", "html", "404"] {
        let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake_url = format!("http://{}", fake.local_addr().unwrap());
        let app = axum::Router::new().fallback(move || async move {
            use axum::response::IntoResponse;
            match answer {
                "garbage" => (
                    [("content-type", "application/x-protobuf")],
                    vec![0xff_u8; 16],
                )
                    .into_response(),
                // A well-formed answer with the right content type, over the asker's 1 KiB value
                // limit: only the limit keeps it from being served as the value.
                "huge" => (
                    [("content-type", "application/x-protobuf")],
                    GetResponse {
                        value: Some(vec![b'x'; 4 << 20].into()),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                )
                    .into_response(),
                "html" => "<html>not a cache</html>".into_response(),
                _ => (axum::http::StatusCode::NOT_FOUND, "no such group").into_response(),
            }
        });
        tokio::spawn(async move { axum::serve(fake, app).await });
        let loader = TestLoader::new();
        let replica = replica(&loader);
        replica
            .cache
            .set_peers([fake_url.as_str(), replica.url.as_str()])
            .unwrap();
        let key = key_owned(&replica.cache, &fake_url, "k");
        assert_eq!(
            replica.cache.get(&key).await.unwrap(),
            loader.value_for(&key),
            "{answer}"
        );
        assert_eq!(replica.cache.stats().peer_errors, 1, "{answer}");
    }
}

/// `GET {base}{group}/{key}` on `url`: the status, and the value (status 200) or the error text.
async fn get_in(url: &str, group: &str, key: &str) -> (u16, String) {
    let response = reqwest::get(format!("{url}/_groupcache/{group}/{key}"))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    match status {
        200 => {
            let value = GetResponse::decode(body).unwrap().value.unwrap();
            (status, String::from_utf8(value.into()).unwrap())
        }
        _ => (status, String::from_utf8_lossy(&body).into_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_router_serves_each_group_until_its_last_handle_is_dropped() {
    let replica = ClusterReplica::start(|cluster| cluster);
    let url = replica.url.as_str();
    // Two loaders whose values differ, so an answer from the wrong group shows.
    let a_loader = TestLoader::new();
    let b_loader = TestLoader {
        generation: Arc::new(AtomicUsize::new(1)),
        ..TestLoader::new()
    };
    let a = replica
        .cluster
        .group("a", a_loader.clone())
        .build()
        .unwrap();
    let b = replica
        .cluster
        .group("b", b_loader.clone())
        .build()
        .unwrap();
    assert_eq!(replica.cluster.groups(), ["a", "b"]);
    assert_eq!(get_in(url, "a", "k").await, (200, a_loader.value_for("k")));
    assert_eq!(get_in(url, "b", "k").await, (200, b_loader.value_for("k")));
    assert_ne!(a_loader.value_for("k"), b_loader.value_for("k"));
    let unknown = (404, "no such group: c\n".to_owned());
    assert_eq!(get_in(url, "c", "k").await, unknown);

    // A clone and a router from the group keep it served; the last of them takes it out.
    let (clone, router) = (b.clone(), b.router::<()>());
    drop(b);
    assert_eq!(get_in(url, "b", "k").await, (200, b_loader.value_for("k")));
    drop(clone);
    assert_eq!(get_in(url, "b", "k").await, (200, b_loader.value_for("k")));
    drop(router);
    assert_eq!(replica.cluster.groups(), ["a"]);
    assert_eq!(
        get_in(url, "b", "k").await,
        (404, "no such group: b\n".to_owned())
    );
    assert_eq!(
        b_loader.loads.of("k"),
        1,
        "served from its cache until dropped"
    );
    // The other group is untouched.
    assert_eq!(get_in(url, "a", "k").await, (200, a_loader.value_for("k")));
    assert_eq!(a.stats().server_requests, 2);

    // The name may be used again: a new group, with an empty cache and its own loader.
    let again = TestLoader {
        generation: Arc::new(AtomicUsize::new(2)),
        ..TestLoader::new()
    };
    let _b = replica.cluster.group("b", again.clone()).build().unwrap();
    assert_eq!(get_in(url, "b", "k").await, (200, again.value_for("k")));
    assert_eq!((again.loads.of("k"), b_loader.loads.of("k")), (1, 1));
}
