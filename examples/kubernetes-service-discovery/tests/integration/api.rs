//! The REST API of one replica (simulated database): items round trip, one at a time and in a
//! batch, category summaries follow the writes, bad input is refused with problem details and
//! changes nothing, and the OpenAPI document matches the routes served.

use std::collections::BTreeSet;
use std::time::Duration;

use kubernetes_service_discovery::api::batch::MAX_BATCH_KEYS;
use kubernetes_service_discovery::api::{PATHS, items::MAX_BODY_BYTES};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::process::{PATIENCE, Replica, TempDir, http};

const METHODS: [&str; 5] = ["GET", "PUT", "DELETE", "POST", "PATCH"];

/// Sends `method url` with an optional JSON body (as `content_type`); returns the status, the
/// content type and the body parsed as JSON (`Null` if it is not).
pub(crate) async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, String, Value) {
    let method = Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = http.request(method, url);
    if let Some((content_type, body)) = body {
        request = request.header("content-type", content_type).body(body);
    }
    let response = request.send().await.expect("the replica answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = response.bytes().await.expect("a body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, content_type, json)
}

/// A request body and its content type.
type Body = Option<(&'static str, Vec<u8>)>;

fn json_body(value: &Value) -> Body {
    Some(("application/json", value.to_string().into_bytes()))
}

/// Asserts a problem-details answer of `status` and `kind`.
#[track_caller]
fn assert_problem(answer: &(u16, String, Value), status: u16, kind: &str) {
    let (got, content_type, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(
        body["type"],
        format!("urn:kubernetes-service-discovery:problem:{kind}"),
        "{body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn items_round_trip_and_bad_input_changes_nothing() {
    let dir = TempDir::new("api-items");
    let replica = Replica::start("replica", &["--load-latency", "0ms"], dir.path()).await;
    let http = http();
    let url = |key: &str| format!("{}/items/{key}", replica.url);

    let put = send(
        &http,
        "PUT",
        &url("k1"),
        json_body(&json!({"value": {"n": 1}})),
    )
    .await;
    assert_eq!(put.0, 200, "{}", put.2);
    assert_eq!(put.2["item"]["value"], json!({"n": 1}));
    assert_eq!(put.2["item"]["expires_at"], Value::Null);
    let get = send(&http, "GET", &url("k1"), None).await;
    assert_eq!((get.0, &get.1[..]), (200, "application/json"));
    assert_eq!(get.2["item"]["value"], json!({"n": 1}));

    // Each refused, and k1 is still what it was.
    let long_key = "k".repeat(1025);
    let huge = json!({"value": "x".repeat(MAX_BODY_BYTES)});
    let deep = format!("{{\"value\": {}1{}}}", "[".repeat(200), "]".repeat(200));
    let refused: Vec<(&str, Body, u16, &str)> = vec![
        (
            &long_key,
            json_body(&json!({"value": 2})),
            400,
            "invalid-key",
        ),
        ("a%00b", json_body(&json!({"value": 2})), 400, "invalid-key"),
        // Not UTF-8: problem details too, not axum's text.
        ("%FF", json_body(&json!({"value": 2})), 400, "invalid-key"),
        // A NUL in a value: refused before writing, as PostgreSQL would refuse it.
        (
            "k1",
            json_body(&json!({"value": "a\u{0}b"})),
            400,
            "invalid-body",
        ),
        (
            "k1",
            json_body(&json!({"value": {"a\u{0}": 1}})),
            400,
            "invalid-body",
        ),
        // Arrays and null where the document says an object and a number.
        (
            "k1",
            json_body(&json!([2, null, null])),
            400,
            "invalid-body",
        ),
        ("k1", json_body(&json!(null)), 400, "invalid-body"),
        (
            "k1",
            json_body(&json!({"value": 2, "ttl_seconds": null})),
            400,
            "invalid-body",
        ),
        (
            "k1",
            Some(("text/plain", b"{\"value\": 2}".to_vec())),
            415,
            "unsupported-media-type",
        ),
        ("k1", None, 415, "unsupported-media-type"),
        (
            "k1",
            Some(("application/json", b"{\"value\": ".to_vec())),
            400,
            "invalid-body",
        ),
        (
            "k1",
            Some(("application/json", deep.into_bytes())),
            400,
            "invalid-body",
        ),
        ("k1", json_body(&json!({"valeu": 2})), 400, "invalid-body"),
        (
            "k1",
            json_body(&json!({"value": 2, "ttl_seconds": -5})),
            400,
            "invalid-body",
        ),
        ("k1", json_body(&huge), 413, "body-too-large"),
        (
            "k1",
            json_body(&json!({"value": 2, "ttl_seconds": 0})),
            422,
            "invalid-expiry",
        ),
        (
            "k1",
            json_body(&json!({"value": 2, "expires_at": 1})),
            422,
            "invalid-expiry",
        ),
        (
            "k1",
            json_body(&json!({"value": 2, "ttl_seconds": 60, "expires_at": 4_000_000_000u64})),
            422,
            "invalid-expiry",
        ),
    ];
    for (key, body, status, kind) in refused {
        let answer = send(&http, "PUT", &url(key), body).await;
        assert_problem(&answer, status, kind);
    }
    assert_problem(
        &send(&http, "GET", &url(&long_key), None).await,
        400,
        "invalid-key",
    );
    assert_problem(
        &send(&http, "DELETE", &url("%FF%FE"), None).await,
        400,
        "invalid-key",
    );
    let get = send(&http, "GET", &url("k1"), None).await;
    assert_eq!(
        get.2["item"]["value"],
        json!({"n": 1}),
        "a refused write changed k1"
    );

    // Keys are whatever a path segment carries: `user:42`, e-mail addresses, slashes, text.
    for key in [
        "user:42",
        "ada@example.com",
        "a%2Fb%20c",
        "%C3%A9t%C3%A9",
        "_batch",
    ] {
        let put = send(&http, "PUT", &url(key), json_body(&json!({"value": key}))).await;
        assert_eq!(put.0, 200, "{key}: {}", put.2);
        let get = send(&http, "GET", &url(key), None).await;
        assert_eq!(
            (get.0, &get.2["item"]["value"]),
            (200, &json!(key)),
            "{key}"
        );
    }
    // A whole number of seconds written as 269.0 is what the schema's `integer` allows; an
    // integer beyond 64 bits comes back exactly as sent.
    let put = send(
        &http,
        "PUT",
        &url("k4"),
        Some((
            "application/json",
            br#"{"value": [123456789012345678901234567890], "ttl_seconds": 269.0}"#.to_vec(),
        )),
    )
    .await;
    assert_eq!(put.0, 200, "{}", put.2);
    let raw = http
        .get(url("k4"))
        .send()
        .await
        .expect("GET k4")
        .text()
        .await
        .expect("a body");
    assert!(raw.contains("[123456789012345678901234567890]"), "{raw}");
    // A 405 says what the path allows.
    let post = http.post(url("k1")).send().await.expect("POST");
    assert_eq!(post.status().as_u16(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD, PUT, DELETE");

    // Expiry: absolute, reported as given; relative, and the item is gone once it passes.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    let at = now.as_secs() + 3600;
    let put = send(
        &http,
        "PUT",
        &url("k2"),
        json_body(&json!({"value": 2, "expires_at": at})),
    )
    .await;
    assert_eq!(put.2["item"]["expires_at"], at, "{}", put.2);
    let put = send(
        &http,
        "PUT",
        &url("k3"),
        json_body(&json!({"value": 3, "ttl_seconds": 1})),
    )
    .await;
    assert_eq!(put.0, 200, "{}", put.2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let get = send(&http, "GET", &url("k3"), None).await;
        if get.0 == 404 {
            assert_problem(&get, 404, "not-found");
            break;
        }
        assert_eq!(get.0, 200, "{}", get.2);
        assert!(
            Instant::now() < deadline,
            "k3 did not expire within 10 s of a 1 s TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Delete: 204, then it is gone (GET and a second DELETE are 404).
    assert_eq!(send(&http, "DELETE", &url("k1"), None).await.0, 204);
    assert_problem(
        &send(&http, "GET", &url("k1"), None).await,
        404,
        "not-found",
    );
    assert_problem(
        &send(&http, "DELETE", &url("k1"), None).await,
        404,
        "not-found",
    );
}

#[tokio::test]
async fn batch_reads_answer_each_key_and_bad_batches_read_nothing() {
    let dir = TempDir::new("api-batch");
    let replica = Replica::start("replica", &["--load-latency", "0ms"], dir.path()).await;
    let http = http();
    let url = |key: &str| format!("{}/items/{key}", replica.url);
    let batch = |keys: Value| json_body(&json!({ "keys": keys }));

    let put = send(&http, "PUT", &url("k1"), json_body(&json!({"value": 1}))).await;
    assert_eq!(put.0, 200, "{}", put.2);
    assert_eq!(send(&http, "DELETE", &url("gone"), None).await.0, 204);
    let answer = send(
        &http,
        "POST",
        &url("_batch"),
        batch(json!(["k1", "plain", "gone", "k1"])),
    )
    .await;
    assert_eq!((answer.0, &answer.1[..]), (200, "application/json"));
    let results = answer.2["results"].as_array().expect("results");
    let keys: Vec<&Value> = results.iter().map(|result| &result["key"]).collect();
    assert_eq!(
        keys,
        [&json!("k1"), &json!("plain"), &json!("gone"), &json!("k1")]
    );
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[0]["item"]["value"], json!(1));
    assert_eq!(results[1]["item"]["value"], json!({"name": "item plain"}));
    assert_eq!(results[2]["status"], 404);
    assert_eq!(
        results[2]["problem"]["type"],
        "urn:kubernetes-service-discovery:problem:not-found"
    );
    assert!(results[2].get("item").is_none(), "{}", results[2]);
    assert_eq!(results[3], results[0], "a key asked for twice");
    assert!(results.iter().all(|result| result["owner"].is_string()));
    assert!(answer.2["served_by"].is_string(), "{}", answer.2);

    // `_batch` is still a key for the other methods; POST of any other key is 405.
    let put = send(
        &http,
        "PUT",
        &url("_batch"),
        json_body(&json!({"value": "b"})),
    )
    .await;
    assert_eq!(put.0, 200, "{}", put.2);
    assert_eq!(
        send(&http, "GET", &url("_batch"), None).await.2["item"]["value"],
        "b"
    );
    assert_problem(
        &send(&http, "POST", &url("k1"), batch(json!(["k1"]))).await,
        405,
        "method-not-allowed",
    );

    // Each refused whole, before any key is read.
    let gets = |stats: Value| stats["gets"].as_u64().expect("gets");
    let stats_url = format!("{}/admin/stats", replica.url);
    let before = gets(send(&http, "GET", &stats_url, None).await.2);
    let too_many: Vec<String> = (0..=MAX_BATCH_KEYS).map(|i| format!("k{i}")).collect();
    let refused: Vec<(Body, u16, &str)> = vec![
        (batch(json!(too_many)), 400, "too-many-keys"),
        (batch(json!(["k1", "k".repeat(1025)])), 400, "invalid-key"),
        (batch(json!(["k1", "a\u{0}b"])), 400, "invalid-key"),
        (batch(json!([["k1"]])), 400, "invalid-body"),
        (batch(json!([])), 400, "invalid-body"),
        (batch(json!("k1")), 400, "invalid-body"),
        (
            Some(("application/json", b"{\"keys\": [\"k1\"".to_vec())),
            400,
            "invalid-body",
        ),
        (
            json_body(&json!({"keys": ["k1"], "extra": 1})),
            400,
            "invalid-body",
        ),
        (
            Some(("text/plain", b"{\"keys\": [\"k1\"]}".to_vec())),
            415,
            "unsupported-media-type",
        ),
        (None, 415, "unsupported-media-type"),
        (
            batch(json!(vec!["k".repeat(128); MAX_BODY_BYTES / 128])),
            413,
            "body-too-large",
        ),
    ];
    for (body, status, kind) in refused {
        let answer = send(&http, "POST", &url("_batch"), body).await;
        assert_problem(&answer, status, kind);
    }
    let after = gets(send(&http, "GET", &stats_url, None).await.2);
    assert_eq!(after, before, "a refused batch read keys");
}

/// The second group: `GET /categories/{category}` counts the category's live items, the writes
/// of its items (`PUT`, `DELETE`, of keys `{category}:...`) keep the cached count fresh, and
/// `/admin/stats?cache=categories` shows the group's own counters.
#[tokio::test]
async fn category_summaries_follow_the_writes_of_their_items() {
    let dir = TempDir::new("api-categories");
    let replica = Replica::start("replica", &["--load-latency", "0ms"], dir.path()).await;
    let http = http();
    let category = |name: &str| format!("{}/categories/{name}", replica.url);
    let item = |key: &str| format!("{}/items/{key}", replica.url);
    let count = |answer: (u16, String, Value)| {
        assert_eq!(
            (answer.0, &answer.1[..]),
            (200, "application/json"),
            "{}",
            answer.2
        );
        // Alone, the replica owns every category: it counted them, and it answers.
        let owner = answer.2["owner"].as_str().expect("an owner");
        assert_eq!(answer.2["served_by"], owner.trim_end_matches("/internal"));
        assert_eq!(answer.2["category"]["loaded_by"], answer.2["served_by"]);
        answer.2["category"]["items"].as_u64().expect("a count")
    };
    // Nothing written yet: the simulated database counts the rows written, not its implicit ones.
    assert_eq!(count(send(&http, "GET", &category("user"), None).await), 0);
    let summary = send(&http, "GET", &category("user"), None).await.2;
    assert_eq!(summary["category"]["name"], "user");

    let put = |key: &'static str| {
        let http = http.clone();
        let url = item(key);
        async move {
            send(&http, "PUT", &url, json_body(&json!({"value": 1})))
                .await
                .0
        }
    };
    for key in ["user:1", "user:2", "user:2", "team:1", "username"] {
        assert_eq!(put(key).await, 200, "{key}");
    }
    // Fresh after the writes, though the count of 0 was cached.
    assert_eq!(count(send(&http, "GET", &category("user"), None).await), 2);
    assert_eq!(count(send(&http, "GET", &category("team"), None).await), 1);
    let delete = send(&http, "DELETE", &item("user:1"), None).await;
    assert_eq!(delete.0, 204, "{}", delete.2);
    assert_eq!(count(send(&http, "GET", &category("user"), None).await), 1);
    // A refused write changes nothing.
    let refused = send(
        &http,
        "PUT",
        &item("user:3"),
        json_body(&json!({"ttl_seconds": 5})),
    )
    .await;
    assert_problem(&refused, 400, "invalid-body");
    assert_eq!(count(send(&http, "GET", &category("user"), None).await), 1);

    for bad in ["user:42", "a%00b", "%FF", &"k".repeat(1025)] {
        assert_problem(
            &send(&http, "GET", &category(bad), None).await,
            400,
            "invalid-key",
        );
    }
    assert_problem(
        &send(&http, "PUT", &category("user"), None).await,
        405,
        "method-not-allowed",
    );

    // Each group has its own counters: the categories' gets are the reads above.
    let stats = |query: &str| {
        let http = http.clone();
        let url = format!("{}/admin/stats{query}", replica.url);
        async move { send(&http, "GET", &url, None).await }
    };
    let categories = stats("?cache=categories").await;
    assert_eq!(categories.0, 200, "{}", categories.2);
    assert_eq!(categories.2["group"], "categories");
    assert_eq!(categories.2["gets"], 6, "{}", categories.2);
    let items = stats("").await;
    assert_eq!(items.2["group"], "items");
    assert_eq!(stats("?cache=items").await.2["group"], "items");
    assert_problem(&stats("?cache=nope").await, 400, "invalid-cache");
}

#[tokio::test]
async fn openapi_document_matches_the_routes_served() {
    let dir = TempDir::new("api-openapi");
    let replica = Replica::start("replica", &["--load-latency", "0ms"], dir.path()).await;
    let http = http();
    let (status, content_type, served) =
        send(&http, "GET", &format!("{}/openapi.json", replica.url), None).await;
    assert_eq!((status, &content_type[..]), (200, "application/json"));
    let committed: Value = serde_json::from_str(include_str!("../../openapi.json"))
        .expect("the committed openapi.json parses");
    assert_eq!(
        served, committed,
        "/openapi.json is not the committed document"
    );
    assert!(
        served["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );

    let paths = served["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let routed: BTreeSet<&str> = PATHS.iter().copied().collect();
    assert_eq!(documented, routed, "documented paths vs the router's");

    // Every documented method is served; every other method is 405, on every path. A URL's
    // documented methods are those of every path it matches: `/items/_batch` is also
    // `/items/{key}`, whose methods serve the key `_batch`.
    let matches = |template: &str, path: &str| {
        let (template, path): (Vec<&str>, Vec<&str>) =
            (template.split('/').collect(), path.split('/').collect());
        template.len() == path.len()
            && template
                .iter()
                .zip(&path)
                .all(|(t, p)| t == p || t.starts_with('{'))
    };
    let deadline = Instant::now() + PATIENCE;
    for path in paths.keys() {
        let concrete = path
            .replace("{key}", "some-key")
            .replace("{category}", "some-category");
        let url = format!("{}{concrete}", replica.url);
        for method in METHODS {
            let is_documented = paths.iter().any(|(template, item)| {
                matches(template, &concrete) && item.get(method.to_ascii_lowercase()).is_some()
            });
            let body = (method == "PUT").then(|| ("application/json", b"{\"value\":1}".to_vec()));
            let answer = send(&http, method, &url, body).await;
            if is_documented {
                assert_ne!(
                    answer.0, 405,
                    "{method} {path} is documented but not served"
                );
                assert_ne!(
                    answer.2["type"],
                    "urn:kubernetes-service-discovery:problem:no-route"
                );
            } else {
                assert_problem(&answer, 405, "method-not-allowed");
                let allow = http
                    .request(
                        Method::from_bytes(method.as_bytes()).expect("a method"),
                        &url,
                    )
                    .send()
                    .await
                    .expect("an answer");
                assert!(
                    allow.headers().contains_key("allow"),
                    "{method} {path}: 405 without Allow"
                );
            }
            assert!(Instant::now() < deadline);
        }
    }
    let unknown = send(&http, "GET", &format!("{}/nowhere", replica.url), None).await;
    assert_problem(&unknown, 404, "no-route");
}
