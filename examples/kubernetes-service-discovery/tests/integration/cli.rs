//! `cachectl` against a running three-replica cluster (simulated database): every subcommand,
//! text and `--json`, through different replicas, and the exit codes scripts rely on.

use std::process::Command;

use serde_json::{Value, json};

use crate::process::{Cluster, PeerPort, TempDir, free_ports};

const CACHECTL: &str = env!("CARGO_BIN_EXE_cachectl");

pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.stdout))
    }
}

/// Runs `cachectl --server server args...` (blocking: it is a separate process).
pub(crate) fn cachectl(server: &str, args: &[&str]) -> Run {
    let output = Command::new(CACHECTL)
        .args(["--server", server, "--timeout", "10s"])
        .args(args)
        .env_remove("CACHECTL_SERVER")
        .output()
        .expect("run cachectl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[track_caller]
fn assert_code(run: &Run, code: i32) {
    assert_eq!(
        run.code, code,
        "exit code; stdout: {:?}, stderr: {:?}",
        run.stdout, run.stderr
    );
}

#[tokio::test]
async fn cachectl_against_a_running_cluster() {
    let dir = TempDir::new("cli");
    let cluster =
        Cluster::start_static(3, PeerPort::Shared, &["--load-latency", "0ms"], dir.path()).await;
    let url = |i: usize| cluster.replicas[i].url.clone();

    // put through one replica, get through the others.
    let put = cachectl(&url(0), &["put", "k1", r#"{"a": [1, 2]}"#, "--ttl", "1h"]);
    assert_code(&put, 0);
    assert!(
        put.stdout.starts_with("stored k1, expires at "),
        "{}",
        put.stdout
    );
    let get = cachectl(&url(1), &["get", "k1"]);
    assert_code(&get, 0);
    let value: Value = serde_json::from_str(&get.stdout).expect("get prints the value as JSON");
    assert_eq!(value, json!({"a": [1, 2]}));
    let get = cachectl(&url(2), &["get", "k1", "--json"]).json();
    assert_eq!(get["item"]["value"], json!({"a": [1, 2]}));
    assert!(get["item"]["expires_at"].as_u64().is_some(), "{get}");
    let put = cachectl(&url(2), &["put", "k2", "plain text", "--string", "--json"]);
    assert_code(&put, 0);
    assert_eq!(put.json()["item"]["value"], "plain text");
    // Printed as `put --string` took it: raw text, no JSON quotes.
    assert_eq!(cachectl(&url(0), &["get", "k2"]).stdout, "plain text\n");

    // Several keys: one request (a batch), a `KEY VALUE` line each.
    let many = cachectl(&url(1), &["get", "k1", "k2"]);
    assert_code(&many, 0);
    assert_eq!(many.stdout, "k1 {\"a\":[1,2]}\nk2 plain text\n");

    // owner: the same replica from every replica's ring; peers: all three; stats: counters.
    let owners: Vec<Value> = (0..3)
        .map(|i| cachectl(&url(i), &["owner", "k1", "--json"]).json()["owner"].clone())
        .collect();
    assert!(owners.iter().all(|owner| *owner == owners[0]), "{owners:?}");
    let text = cachectl(&url(0), &["owner", "k1"]);
    assert_code(&text, 0);
    assert!(
        text.stdout.contains(owners[0].as_str().unwrap_or("?")),
        "{}",
        text.stdout
    );
    let peers = cachectl(&url(1), &["peers", "--json"]).json();
    assert_eq!(peers["peers"].as_array().map(Vec::len), Some(3), "{peers}");
    let text = cachectl(&url(1), &["peers"]);
    assert_eq!(text.stdout.lines().count(), 3, "{}", text.stdout);
    assert_eq!(
        text.stdout.matches("(this replica)").count(),
        1,
        "{}",
        text.stdout
    );
    let stats = cachectl(&url(2), &["stats", "--json"]).json();
    assert!(
        stats["gets"].as_u64().is_some_and(|gets| gets >= 1),
        "{stats}"
    );
    let text = cachectl(&url(2), &["stats"]);
    assert!(
        text.stdout.lines().any(|line| line.starts_with("gets ")),
        "{}",
        text.stdout
    );

    // delete, then not found (1) for get and delete.
    let delete = cachectl(&url(1), &["delete", "k1"]);
    assert_code(&delete, 0);
    assert_eq!(delete.stdout, "deleted k1\n");
    for i in 0..3 {
        let gone = cachectl(&url(i), &["get", "k1"]);
        assert_code(&gone, 1);
        assert!(gone.stderr.contains("HTTP 404"), "{}", gone.stderr);
    }
    // Several keys, one missing: the others printed, the missing one on stderr, exit code 1.
    let some = cachectl(&url(2), &["get", "k2", "k1"]);
    assert_code(&some, 1);
    assert_eq!(some.stdout, "k2 plain text\n");
    assert!(some.stderr.starts_with("cachectl: k1: "), "{}", some.stderr);
    assert!(some.stderr.contains("HTTP 404"), "{}", some.stderr);
    let some = cachectl(&url(2), &["get", "k2", "k1", "--json"]);
    assert_code(&some, 1);
    let results = some.json()["results"].clone();
    assert_eq!(results[0]["item"]["value"], "plain text", "{results}");
    assert_eq!(results[1]["status"], 404, "{results}");
    // (Through the replica that deleted it: each replica has a simulated database of its own.)
    let gone = cachectl(&url(1), &["delete", "k1", "--json"]);
    assert_code(&gone, 1);
    assert_eq!(gone.json()["status"], 404, "--json prints the problem");

    // Usage errors and refused input: 2. An unreachable replica: 3.
    assert_code(&cachectl(&url(0), &["frobnicate"]), 2);
    assert_code(
        &cachectl(
            &url(0),
            &["put", "k", "1", "--ttl", "5s", "--expires-at", "9"],
        ),
        2,
    );
    assert_code(&cachectl(&url(0), &["put", "k", "not json"]), 2);
    // Longer than the 1024 characters a key may have.
    let long = "k".repeat(1025);
    for keys in [&["get", &long][..], &["get", "k2", &long]] {
        let bad_key = cachectl(&url(0), keys);
        assert_code(&bad_key, 2);
        assert!(bad_key.stderr.contains("HTTP 400"), "{}", bad_key.stderr);
    }
    assert_code(
        &cachectl(&url(0), &["put", "k", "1", "--expires-at", "5"]),
        2,
    );
    let nobody = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    let unreachable = cachectl(&nobody, &["stats"]);
    assert_code(&unreachable, 3);
    assert!(
        unreachable.stderr.contains("cannot reach"),
        "{}",
        unreachable.stderr
    );
}
