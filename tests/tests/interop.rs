//! Rust replicas and golang/groupcache replicas in one pool: real Go processes (the test peer in
//! tests/interop/go-peer) and real Rust replicas on loopback, in [`RingMode::GoCompatible`].
//!
//! The two loaders tell the languages apart: a Rust replica loads `value:{key}#0`
//! ([`TestLoader`]), a Go replica loads `go:{key}`. So a value read on one side carries the name
//! of the side that loaded it, and its exact bytes are compared with that side's loader. With
//! several groups (a Go peer started with `-groups`, Rust replicas on a [`Cluster`]), the values
//! also name the group: `go:{group}:{key}` and `rust:{group}:{key}`.
//!
//! Every test returns early (with a loud `SKIPPED` on stderr) when Go is not installed, and fails
//! instead when `CI=true`: see `groupcache_tests::go`.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use groupcache_rs::{Builder, Groupcache, Loaded, Loader, RingMode, Value};
use groupcache_tests::go::{self, GoPeer};
use groupcache_tests::{ClusterReplica, GROUP, NoValue, Replica, TestLoader, key_owned};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

fn go_compatible(loader: &TestLoader) -> impl FnMut(String) -> Builder<TestLoader> + '_ {
    move |url| Groupcache::builder(GROUP, url, loader.clone()).ring_mode(RingMode::GoCompatible)
}

fn go_value(key: &str) -> Vec<u8> {
    format!("go:{key}").into_bytes()
}

/// One Go and one Rust replica sharing the ring `[go, rust]` in both languages.
async fn pair(binary: &std::path::Path, loader: &TestLoader) -> (GoPeer, Replica<TestLoader>) {
    pair_with(binary, &[], loader).await
}

async fn pair_with(
    binary: &std::path::Path,
    go_flags: &[&str],
    loader: &TestLoader,
) -> (GoPeer, Replica<TestLoader>) {
    let go = GoPeer::start_with(binary, go_flags);
    let rust = Replica::start(go_compatible(loader));
    let ring = [go.url.as_str(), rust.url.as_str()];
    rust.cache.set_peers(ring).unwrap();
    go.set_peers(&ring).await;
    (go, rust)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_and_rust_fetch_each_others_keys_with_identical_bytes() {
    let Some(binary) = go::binary() else { return };
    let loader = TestLoader::new();
    let (go, rust) = pair(binary, &loader).await;
    // Non-ASCII keys, so the bytes compared include multi-byte UTF-8 on both sides.
    let rust_key = key_owned(&rust.cache, &rust.url, "ключ-rust-");
    let go_key = key_owned(&rust.cache, &go.url, "ключ-go-");
    assert_eq!(
        go.owner(&rust_key).await.owner,
        rust.url,
        "Go's ring agrees"
    );
    assert_eq!(go.owner(&go_key).await.owner, go.url, "Go's ring agrees");

    // A Go replica reads a Rust-owned key: exactly the Rust loader's bytes, every time.
    for _ in 0..3 {
        assert_eq!(
            go.get(&rust_key).await,
            (200, loader.value_for(&rust_key).into_bytes())
        );
    }
    // A Rust replica reads a Go-owned key: exactly the Go getter's bytes, every time.
    for _ in 0..3 {
        assert_eq!(
            rust.cache.get(&go_key).await.unwrap().into_bytes(),
            go_value(&go_key)
        );
    }
    // And each owner serves its own key from its main cache.
    assert_eq!(
        rust.cache.get(&rust_key).await.unwrap(),
        loader.value_for(&rust_key)
    );
    assert_eq!(go.get(&go_key).await, (200, go_value(&go_key)));

    // Each key was loaded once, on its owner, in its owner's language.
    let go_loads = go.loads().await;
    assert_eq!((loader.loads.of(&rust_key), go_loads.of(&rust_key)), (1, 0));
    assert_eq!((go_loads.of(&go_key), loader.loads.of(&go_key)), (1, 0));
    assert_eq!((go_loads.total, loader.loads.total()), (1, 1));

    let (go_stats, rust_stats) = (go.stats().await, rust.cache.stats());
    assert_eq!((go_stats.peer_errors, rust_stats.peer_errors), (0, 0));
    // Go asked Rust every time but when its 1-in-10 random hot-cache promotion kept the value.
    assert!((1..=3).contains(&rust_stats.server_requests));
    assert_eq!(go_stats.peer_loads as u64, rust_stats.server_requests);
    // Rust asked Go twice: its second request promotes the key into its hot cache.
    assert_eq!((rust_stats.peer_loads, rust_stats.hot_hits), (2, 1));
    assert_eq!(go_stats.server_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_and_expiring_values_cross_intact() {
    let Some(binary) = go::binary() else { return };
    let loader = TestLoader::new();
    let go = GoPeer::start(binary);
    let rust = Replica::start(|url| go_compatible(&loader)(url).max_key_bytes(16 << 10));
    let ring = [go.url.as_str(), rust.url.as_str()];
    rust.cache.set_peers(ring).unwrap();
    go.set_peers(&ring).await;

    // A 6 KB key, so the values are over Go's 2 KB threshold for a chunked response.
    let long = "x".repeat(6 << 10);
    let go_key = key_owned(&rust.cache, &go.url, &format!("{long}-go-"));
    let response = go
        .http()
        .get(format!("{}/_groupcache/{GROUP}/{go_key}", go.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    assert_eq!(
        rust.cache.get(&go_key).await.unwrap().into_bytes(),
        go_value(&go_key),
        "a chunked body from Go"
    );
    let rust_key = key_owned(&rust.cache, &rust.url, &format!("{long}-rust-"));
    assert_eq!(
        go.get(&rust_key).await,
        (200, loader.value_for(&rust_key).into_bytes())
    );

    // An expiring value: our GetResponse carries field 3 (expire), which golang/groupcache's
    // message lacks; Go skips the unknown field and reads the value's exact bytes.
    let key = key_owned(&rust.cache, &rust.url, "expiring-");
    let expires = std::time::SystemTime::now() + Duration::from_secs(3600);
    rust.cache
        .set(&key, &"stored ✓".to_owned(), Some(expires))
        .await
        .unwrap();
    assert_eq!(go.get(&key).await, (200, "stored ✓".as_bytes().to_vec()));
    assert_eq!(go.stats().await.peer_errors, 0);
    assert_eq!(
        loader.loads.total(),
        1,
        "only the long Rust-owned key loaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_replica_under_a_prefix_joins_a_go_pool_with_a_custom_base_path() {
    let Some(binary) = go::binary() else { return };
    let loader = TestLoader::new();
    let go = GoPeer::start_with(binary, &["-base-path", "/cache/"]);
    // The router is nested under /internal; the prefix is part of the peer URL, the base path
    // is set on both sides.
    let rust = Replica::start_mounted("/internal", |url| {
        go_compatible(&loader)(url).base_path("/cache/")
    });
    let ring = [go.url.as_str(), rust.url.as_str()];
    rust.cache.set_peers(ring).unwrap();
    go.set_peers(&ring).await;
    let rust_key = key_owned(&rust.cache, &rust.url, "prefixed-");
    let go_key = key_owned(&rust.cache, &go.url, "prefixed-");
    assert_eq!(go.owner(&rust_key).await.owner, rust.url);
    assert_eq!(
        go.get(&rust_key).await,
        (200, loader.value_for(&rust_key).into_bytes())
    );
    assert_eq!(
        rust.cache.get(&go_key).await.unwrap().into_bytes(),
        go_value(&go_key)
    );
    assert_eq!(go.stats().await.peer_errors, 0);
    assert_eq!(rust.cache.stats().peer_errors, 0);
    assert_eq!(loader.loads.total(), 1);
    assert_eq!(go.loads().await.total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_ring_agrees_with_go_on_the_owner_of_10k_keys() {
    let Some(binary) = go::binary() else { return };
    let loader = TestLoader::new();
    let gos = Arc::new([GoPeer::start(binary), GoPeer::start(binary)]);
    let rusts = [
        Replica::start(go_compatible(&loader)),
        Replica::start(go_compatible(&loader)),
    ];
    // Interleaved, the same list in the same order everywhere (Go's collision rule).
    let ring = [&gos[0].url, &rusts[0].url, &gos[1].url, &rusts[1].url];
    for rust in &rusts {
        rust.cache.set_peers(ring).unwrap();
    }
    for go in gos.iter() {
        go.set_peers(&ring).await;
    }
    let keys: Arc<Vec<String>> = Arc::new(
        (0..10_000)
            .map(|i| match i % 4 {
                0 => format!("key-{i}"),
                1 => format!("user:{i}:profile"),
                2 => format!("ключ {i}/ü+%"),
                _ => format!("{i:x}"),
            })
            .chain(["", " ", ".", "..", "a/../b"].map(String::from))
            .collect(),
    );

    // Ask both Go peers about every key, 16 requests at a time.
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..16 {
        let (gos, keys, next) = (gos.clone(), keys.clone(), next.clone());
        workers.spawn(async move {
            let mut answers = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= 2 * keys.len() {
                    return answers;
                }
                let (peer, key) = (i % 2, i / 2);
                answers.push((peer, key, gos[peer].owner(&keys[key]).await));
            }
        });
    }
    let mut mismatches = Vec::new();
    let mut answered = 0;
    let mut owned: HashMap<String, usize> = HashMap::new();
    while let Some(answers) = workers.join_next().await {
        for (peer, key, go) in answers.unwrap() {
            answered += 1;
            let key = &keys[key];
            let rust: Vec<String> = rusts.iter().map(|r| r.cache.owner(key)).collect();
            if rust.iter().any(|owner| *owner != go.owner)
                || go.is_self != (go.owner == gos[peer].url)
            {
                mismatches.push(format!(
                    "{key:?}: Go {peer} says {go:?}, Rust says {rust:?}"
                ));
            }
            if peer == 0 {
                *owned.entry(go.owner).or_default() += 1;
            }
        }
    }
    assert_eq!(answered, 2 * keys.len());
    assert!(
        mismatches.is_empty(),
        "{} of {} answers disagree, e.g. {:?}",
        mismatches.len(),
        answered,
        &mismatches[..mismatches.len().min(5)]
    );
    assert_eq!(owned.len(), 4, "every replica owns keys: {owned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_from_go_and_rust_replicas_load_each_key_once() {
    let Some(binary) = go::binary() else { return };
    // Slow loads on both sides, so gets from all four replicas overlap while a key loads.
    let loaders = [(); 2].map(|_| TestLoader {
        delay: Duration::from_millis(50),
        ..TestLoader::new()
    });
    let gos = Arc::new([(); 2].map(|_| GoPeer::start_with(binary, &["-load-delay", "50ms"])));
    let rusts = [0, 1].map(|i| Replica::start(go_compatible(&loaders[i])));
    let ring = [&rusts[0].url, &gos[0].url, &rusts[1].url, &gos[1].url];
    for rust in &rusts {
        rust.cache.set_peers(ring).unwrap();
    }
    for go in gos.iter() {
        go.set_peers(&ring).await;
    }
    let keys: Vec<String> = (0..100).map(|i| format!("once-{i}")).collect();
    let expected = |key: &str| -> Vec<u8> {
        match rusts
            .iter()
            .position(|r| r.url == rusts[0].cache.owner(key))
        {
            Some(r) => loaders[r].value_for(key).into_bytes(),
            None => go_value(key),
        }
    };

    // Three gets of every key from every replica, all at once.
    let mut gets = JoinSet::new();
    for key in &keys {
        for _ in 0..3 {
            for rust in &rusts {
                let (cache, key) = (rust.cache.clone(), key.clone());
                gets.spawn(async move {
                    let value = cache.get(&key).await.map(String::into_bytes);
                    (key, value.map_err(|e| e.to_string()))
                });
            }
            for go in 0..2 {
                let (gos, key) = (gos.clone(), key.clone());
                gets.spawn(async move {
                    let (status, body) = gos[go].get(&key).await;
                    let value = if status == 200 {
                        Ok(body)
                    } else {
                        Err(format!(
                            "Go {go}: {status} {}",
                            String::from_utf8_lossy(&body)
                        ))
                    };
                    (key, value)
                });
            }
        }
    }
    let mut count = 0;
    while let Some(get) = gets.join_next().await {
        let (key, value) = get.unwrap();
        assert_eq!(value.as_deref(), Ok(&expected(&key)[..]), "{key}");
        count += 1;
    }
    assert_eq!(count, keys.len() * 3 * 4);

    // Exactly one load per key in the whole mixed cluster, on the key's owner.
    let go_loads = [gos[0].loads().await, gos[1].loads().await];
    for key in &keys {
        let owner = rusts[0].cache.owner(key);
        let loads: Vec<(String, u64)> = rusts
            .iter()
            .zip(&loaders)
            .map(|(r, l)| (r.url.clone(), l.loads.of(key) as u64))
            .chain(
                gos.iter()
                    .zip(&go_loads)
                    .map(|(g, l)| (g.url.clone(), l.of(key))),
            )
            .collect();
        let expected: Vec<(String, u64)> = loads
            .iter()
            .map(|(url, _)| (url.clone(), u64::from(*url == owner)))
            .collect();
        assert_eq!(loads, expected, "loads of {key} (owner {owner})");
    }
    for go in gos.iter() {
        assert_eq!(go.stats().await.peer_errors, 0);
    }
    for rust in &rusts {
        assert_eq!(rust.cache.stats().peer_errors, 0);
    }
}

/// What becomes of a key sent from a Rust replica to its Go owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToGo {
    /// Go receives the key intact and loads it.
    Carried,
    /// `.` and `..` are never sent: as a URL path segment every HTTP client folds them into
    /// the parent (even percent-encoded), so the Rust replica loads them itself at once.
    NotSent,
    /// Go's `http.ServeMux` cleans the decoded path (`%2F` is decoded to `/` first) and answers
    /// 301 when the key has a `.` or `..` segment or an empty one (a trailing `/` is kept, so
    /// `a/` and the empty key pass), before groupcache sees the request.
    /// Our client does not follow redirects (the target is a different key), so the redirect is
    /// a peer failure: counted in `peer_errors`, then a local load.
    Redirected,
}

/// Keys with the characters that URL escaping and path cleaning treat specially, and how
/// Rust -> Go carries them. Go -> Rust carries every one intact except spaces (see below).
/// Between two Go replicas both limits apply: spaces arrive as `+` and these 301s happen too.
const KEYS: &[(&str, ToGo)] = &[
    ("", ToGo::Carried),
    (" ", ToGo::Carried),
    ("a b", ToGo::Carried),
    ("+", ToGo::Carried),
    ("a+b", ToGo::Carried),
    ("a/b", ToGo::Carried),
    ("a/", ToGo::Carried),
    ("100%", ToGo::Carried),
    ("%2F", ToGo::Carried),
    ("%41", ToGo::Carried),
    ("?x=1#y&z", ToGo::Carried),
    ("ключ 🦀", ToGo::Carried),
    ("\n\t", ToGo::Carried),
    ("...", ToGo::Carried),
    ("a..b", ToGo::Carried),
    (".", ToGo::NotSent),
    ("..", ToGo::NotSent),
    ("/", ToGo::Redirected),
    ("/a", ToGo::Redirected),
    ("a//b", ToGo::Redirected),
    ("a/.", ToGo::Redirected),
    ("./a", ToGo::Redirected),
    ("a/./b", ToGo::Redirected),
    ("a/..", ToGo::Redirected),
    ("a/../b", ToGo::Redirected),
];

/// A Rust replica that only asks: it serves nothing, and its URL (under the reserved `.invalid`
/// domain) is never contacted. The URL string is picked so that in the ring `[owner, itself]`
/// the key belongs to `owner`: the Go ring hashes URL strings, so this gives each fixed key
/// (`""`, `.`) to the Go side whatever port it got. (CRC-32 is linear, so some URL patterns
/// correlate with the owner's points and never win a key; this one needs < 20 tries for these
/// keys on any of 1,000 simulated ports.)
fn requester_for(key: &str, owner: &str, loader: &TestLoader) -> Groupcache<TestLoader> {
    for i in 0..1000 {
        let url = format!("http://requester-{i}.invalid");
        let cache = Groupcache::builder(GROUP, url, loader.clone())
            .ring_mode(RingMode::GoCompatible)
            .build()
            .unwrap();
        cache.set_peers([owner, cache.self_url()]).unwrap();
        if cache.owner(key) == owner {
            return cache;
        }
    }
    panic!("no requester URL gives {key:?} to {owner}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_reserved_characters_from_rust_to_a_go_owner() {
    let Some(binary) = go::binary() else { return };
    // With no peers, the Go replica loads every key it is asked for itself, as an owner does.
    let go = GoPeer::start(binary);
    let loader = TestLoader::new();
    for &(key, fate) in KEYS {
        let requester = requester_for(key, &go.url, &loader);
        let value = requester.get(key).await.unwrap();
        let stats = requester.stats();
        let go_loads = go.loads().await.of(key);
        let got = (
            value.into_bytes(),
            go_loads,
            stats.peer_loads,
            stats.peer_errors,
            stats.local_loads,
        );
        let expected = match fate {
            ToGo::Carried => (go_value(key), 1, 1, 0, 0),
            ToGo::NotSent => (loader.value_for(key).into_bytes(), 0, 0, 0, 1),
            ToGo::Redirected => (loader.value_for(key).into_bytes(), 0, 0, 1, 1),
        };
        assert_eq!(
            got, expected,
            "{key:?} ({fate:?}): (value, Go loads, peer loads, peer errors, local loads)"
        );
    }
    let carried = KEYS.iter().filter(|(_, f)| *f == ToGo::Carried).count();
    // Redirects are answered by Go's ServeMux: groupcache never counts them.
    assert_eq!(go.stats().await.server_requests, carried as i64);
    assert_eq!(go.loads().await.total, carried as u64);

    // The redirect itself, as our client sees it: a different key, which it must not fetch.
    let response = go
        .http()
        .get(format!("{}/_groupcache/{GROUP}/a%2F..%2Fb", go.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 301);
    assert_eq!(response.headers()["location"], "/_groupcache/test/b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_reserved_characters_from_go_to_a_rust_owner() {
    let Some(binary) = go::binary() else { return };
    let loader = TestLoader::new();
    let rust = Replica::start(go_compatible(&loader));
    // A Go replica whose ring holds only the Rust replica: golang/groupcache does not require
    // its own URL in the list, and forwards every key whose owner is not itself.
    let go = GoPeer::start(binary);
    go.set_peers(&[&rust.url]).await;
    for &(key, _) in KEYS {
        assert_eq!(go.owner(key).await.owner, rust.url);
        // Go's client escapes with url.QueryEscape, which writes a space as `+`; a server
        // (Go's or ours) decodes only %XX in a path, so the space arrives as `+`. A Go
        // replica therefore gets the value of "a+b" for "a b", from Rust as from Go. Go's
        // server cannot tell them apart either, so we do not guess. Everything else arrives
        // intact, dot segments included: QueryEscape turns `/` into %2F, Go sends `.` and `..`
        // verbatim, and our router, unlike Go's ServeMux, neither cleans nor redirects.
        let arrives_as = key.replace(' ', "+");
        assert_eq!(
            go.get(key).await,
            (200, loader.value_for(&arrives_as).into_bytes()),
            "{key:?}"
        );
    }
    for &(key, _) in KEYS {
        let expected = match key.contains(' ') {
            true => 0,
            false => 1,
        };
        assert_eq!(loader.loads.of(key), expected, "{key:?}: loads on Rust");
    }
    let stats = go.stats().await;
    assert_eq!((stats.peer_errors, stats.local_loads), (0, 0));
    assert_eq!(go.loads().await.total, 0, "Go loaded nothing itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_replicas_answer_without_errors_while_a_go_replica_is_killed() {
    let Some(binary) = go::binary() else { return };
    let loaders = [(); 2].map(|_| TestLoader::new());
    let gos = [GoPeer::start(binary), GoPeer::start(binary)];
    let rusts = Arc::new([0, 1].map(|i| Replica::start(go_compatible(&loaders[i]))));
    let ring = [&gos[0].url, &rusts[0].url, &gos[1].url, &rusts[1].url];
    for rust in rusts.iter() {
        rust.cache.set_peers(ring).unwrap();
    }
    for go in &gos {
        go.set_peers(&ring).await;
    }
    let dead = gos[0].url.clone();

    // Each Rust replica asks for fresh keys (misses, so every get goes to the key's owner)
    // and for five popular ones, until it has made 200 gets after the kill.
    let killed = Arc::new(AtomicBool::new(false));
    let (warm, warmed) = oneshot::channel();
    let mut warm = Some(warm);
    let mut traffic = JoinSet::new();
    for r in 0..2 {
        let (rusts, killed) = (rusts.clone(), killed.clone());
        // The first replica says when it has made 200 gets with every peer alive.
        let mut warm = if r == 0 { warm.take() } else { None };
        traffic.spawn(async move {
            let (mut results, mut after_kill) = (Vec::new(), 0);
            for n in 0..100_000 {
                if n == 200
                    && let Some(warm) = warm.take()
                {
                    let _ = warm.send(());
                }
                let key = match n % 4 {
                    0 => format!("popular-{}", n % 10),
                    _ => format!("fresh-{r}-{n}"),
                };
                let started_after_kill = killed.load(Ordering::SeqCst);
                let value = rusts[r].cache.get(&key).await.map_err(|e| e.to_string());
                results.push((r, key, started_after_kill, value));
                after_kill += usize::from(started_after_kill);
                if after_kill >= 200 {
                    return results;
                }
            }
            panic!("traffic never saw the kill");
        });
    }
    warmed.await.unwrap();
    gos[0].kill();
    killed.store(true, Ordering::SeqCst);

    let mut fallbacks = 0;
    while let Some(results) = traffic.join_next().await {
        for (r, key, after_kill, value) in results.unwrap() {
            let value = value.unwrap_or_else(|e| panic!("get {key} on Rust {r} failed: {e}"));
            let owner = rusts[r].cache.owner(&key);
            let loaded_here = loaders[r].value_for(&key);
            if owner == dead && after_kill && key.starts_with("fresh-") {
                // Loaded by the key's successor on the ring (the owner is suspected): a Go peer
                // (it falls back to its own load) or a Rust one.
                assert!(
                    value == format!("go:{key}") || value == loaded_here,
                    "{key}: {value} from the successor"
                );
                fallbacks += 1;
            } else if owner == dead {
                assert!(
                    value == format!("go:{key}") || value == loaded_here,
                    "{key}: {value}"
                );
            } else if owner == gos[1].url {
                assert_eq!(
                    value,
                    format!("go:{key}"),
                    "{key}: the live Go owner answers"
                );
            } else {
                let r = rusts.iter().position(|x| x.url == owner).unwrap();
                assert_eq!(value, loaders[r].value_for(&key), "{key}");
            }
        }
    }
    assert!(
        fallbacks > 0,
        "some fresh keys owned by the dead Go replica"
    );
    // Each Rust replica found the dead owner down and suspected it, rather than failing once
    // per key.
    for rust in rusts.iter() {
        let stats = rust.cache.stats();
        assert!(
            stats.peer_errors >= 1 && stats.peer_suspicions >= 1,
            "{stats:?}"
        );
    }
    let peer_errors: u64 = rusts.iter().map(|r| r.cache.stats().peer_errors).sum();

    // Once discovery drops the dead replica, its keys go to the living and nothing fails.
    for rust in rusts.iter() {
        assert!(rust.cache.remove_peer(&dead).unwrap());
    }
    let key = key_owned(&rusts[0].cache, &gos[1].url, "after-");
    assert_eq!(rusts[0].cache.get(&key).await.unwrap(), format!("go:{key}"));
    assert_eq!(
        rusts
            .iter()
            .map(|r| r.cache.stats().peer_errors)
            .sum::<u64>(),
        peer_errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_getter_error_is_a_peer_failure_to_rust_which_loads_locally() {
    let Some(binary) = go::binary() else { return };
    let loader = TestLoader::new();
    let (go, rust) = pair(binary, &loader).await;
    let key = key_owned(&rust.cache, &go.url, "error:go-");

    // Go answers a getter error with a bare 500: no `groupcache-error: loader` marker.
    let response = go
        .http()
        .get(format!("{}/_groupcache/{GROUP}/{key}", go.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert!(response.headers().get("groupcache-error").is_none());
    assert_eq!(
        response.text().await.unwrap(),
        format!("getter failed for {key}\n")
    );

    // So a Rust replica cannot tell it from a broken peer: it counts a peer error and loads
    // locally, as golang/groupcache does; our loader fails too, and that error is returned.
    match rust.cache.get(&key).await {
        Err(error) => assert_eq!(error.loader_error::<NoValue>().unwrap().0, key),
        Ok(value) => panic!("expected the local loader's error, got {value}"),
    }
    let stats = rust.cache.stats();
    assert_eq!(
        (stats.peer_loads, stats.peer_errors, stats.local_load_errors),
        (0, 1, 1)
    );
    assert_eq!(loader.loads.of(&key), 1, "the local load ran");
    assert_eq!(go.loads().await.of(&key), 2, "the raw request, then Rust's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_loader_error_is_a_500_that_go_treats_as_a_peer_failure() {
    let Some(binary) = go::binary() else { return };
    let loader = TestLoader::new();
    let (go, rust) = pair(binary, &loader).await;
    let key = key_owned(&rust.cache, &rust.url, "error:rust-");

    // Go ignores our `groupcache-error: loader` marker: any non-200 is a peer failure, after
    // which it runs its own getter (which fails for this key too) and returns that error.
    let (status, body) = go.get(&key).await;
    assert_eq!(status, 500);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("getter failed for {key}\n")
    );
    let stats = go.stats().await;
    assert_eq!(
        (stats.peer_loads, stats.peer_errors, stats.local_load_errs),
        (0, 1, 1)
    );
    assert_eq!(go.loads().await.of(&key), 1, "Go loaded locally");
    let rust_stats = rust.cache.stats();
    assert_eq!(
        (rust_stats.server_requests, rust_stats.local_load_errors),
        (1, 1)
    );
    assert_eq!(loader.loads.of(&key), 1, "the Rust owner's loader ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_group_is_a_404_both_ways() {
    let Some(binary) = go::binary() else { return };
    let loader = TestLoader::new();
    // The Go replica serves group "other", the Rust replica group "test": same ring.
    let (go, rust) = pair_with(binary, &["-group", "other"], &loader).await;

    // The same status and body from both servers.
    for url in [&go.url, &rust.url] {
        let response = go
            .http()
            .get(format!("{url}/_groupcache/nope/k"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{url}");
        assert_eq!(response.text().await.unwrap(), "no such group: nope\n");
    }

    // Rust asks Go for group "test": 404, a peer failure, a local load.
    let key = key_owned(&rust.cache, &go.url, "go-");
    assert_eq!(rust.cache.get(&key).await.unwrap(), loader.value_for(&key));
    let stats = rust.cache.stats();
    assert_eq!((stats.peer_errors, stats.local_loads), (1, 1));

    // Go asks Rust for group "other": 404, a peer failure, a local load.
    let key = key_owned(&rust.cache, &rust.url, "rust-");
    assert_eq!(go.get(&key).await, (200, go_value(&key)));
    let stats = go.stats().await;
    assert_eq!((stats.peer_errors, stats.local_loads), (1, 1));
    assert_eq!(rust.cache.stats().server_requests, 0, "404s are not served");
    assert_eq!(loader.loads.of(&key), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_replicas_take_remove_and_set_for_a_get() {
    let Some(binary) = go::binary() else { return };
    let loader = TestLoader::new();
    let (go, rust) = pair(binary, &loader).await;

    // golang/groupcache serves every method as GET: our DELETE makes the Go owner *load* the
    // key, answers 200, and so `remove` reports success while Go keeps its value.
    let key = key_owned(&rust.cache, &go.url, "rm-");
    rust.cache.remove(&key).await.unwrap();
    assert_eq!(
        go.loads().await.of(&key),
        1,
        "the DELETE was served as a GET"
    );
    assert_eq!(rust.cache.get(&key).await.unwrap(), format!("go:{key}"));

    // Likewise PUT: `set` succeeds, the Go owner loads its own value and keeps it.
    let key = key_owned(&rust.cache, &go.url, "set-");
    rust.cache
        .set(&key, &"mine".to_owned(), None)
        .await
        .unwrap();
    assert_eq!(go.loads().await.of(&key), 1, "the PUT was served as a GET");
    assert_eq!(rust.cache.get(&key).await.unwrap(), format!("go:{key}"));
    assert_eq!(go.get(&key).await, (200, go_value(&key)));
}

/// Issue 23's fifth finding: a golang/groupcache replica must not stand in for a suspected Rust
/// owner. It would keep the key in its main cache without expiry and never drop it on a write
/// (it serves a `DELETE` as a `GET`), so the Rust replica loads the key itself, bounded in its hot
/// cache and dropped by its writes, as golang/groupcache would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_replica_is_not_asked_to_stand_in_for_a_suspected_rust_owner() {
    let Some(binary) = go::binary() else { return };
    let loader = TestLoader::new();
    let go = GoPeer::start(binary);
    let asker = Replica::start(go_compatible(&loader));
    let mut owner = Replica::start(go_compatible(&loader));
    let ring = [go.url.as_str(), asker.url.as_str(), owner.url.as_str()];
    asker.cache.set_peers(ring).unwrap();
    owner.cache.set_peers(ring).unwrap();
    go.set_peers(&ring).await;
    // A key of the Rust owner whose successor (its owner once the owner is gone) is Go.
    let without_owner = Groupcache::builder(GROUP, asker.url.clone(), loader.clone())
        .ring_mode(RingMode::GoCompatible)
        .build()
        .unwrap();
    without_owner
        .set_peers([go.url.as_str(), asker.url.as_str()])
        .unwrap();
    let key = (0..)
        .map(|i| format!("standin-{i}"))
        .find(|key| asker.cache.owner(key) == owner.url && without_owner.owner(key) == go.url)
        .unwrap();
    // The asker has heard from the Go replica: its answers carry no batch advert.
    let go_key = key_owned(&asker.cache, &go.url, "go-");
    assert_eq!(
        asker.cache.get(&go_key).await.unwrap(),
        format!("go:{go_key}")
    );

    owner.kill();
    let value = asker.cache.get(&key).await.unwrap();
    assert_eq!(value, loader.value_for(&key), "loaded by the asker itself");
    assert_eq!(
        go.loads().await.of(&key),
        0,
        "the Go replica was asked for it"
    );
    // The asker's own copy goes with its writes: the next get sees the source's new value.
    loader.generation.fetch_add(1, Ordering::SeqCst);
    let _ = asker.cache.remove(&key).await; // the owner is down: reported, not ignored
    assert_eq!(asker.cache.get(&key).await.unwrap(), loader.value_for(&key));
}

/// The two groups of the many-groups test, served by every replica, Go and Rust.
const GROUPS: [&str; 2] = ["alpha", "beta"];

/// The many-groups test's Rust loader: it loads `rust:{group}:{key}` (a Go replica started with
/// `-groups` loads `go:{group}:{key}`), as a value of type `V`, and counts its loads per key.
struct Tagged<V> {
    group: &'static str,
    loads: Arc<Mutex<HashMap<String, u64>>>,
    delay: Duration,
    value: PhantomData<fn() -> V>,
}

impl<V> Tagged<V> {
    fn new(group: &'static str, delay: Duration) -> Self {
        Tagged {
            group,
            loads: Arc::default(),
            delay,
            value: PhantomData,
        }
    }

    fn loads(&self) -> HashMap<String, u64> {
        self.loads.lock().unwrap().clone()
    }
}

impl<V> Clone for Tagged<V> {
    fn clone(&self) -> Self {
        Tagged {
            group: self.group,
            loads: self.loads.clone(),
            delay: self.delay,
            value: PhantomData,
        }
    }
}

impl<V: Value + From<String>> Loader for Tagged<V> {
    type Value = V;
    type Error = NoValue;

    async fn load(&self, key: &str) -> Result<Loaded<V>, NoValue> {
        *self
            .loads
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default() += 1;
        // Slow, so the gets of a key from all four replicas overlap while it loads.
        tokio::time::sleep(self.delay).await;
        Ok(Loaded::new(V::from(format!("rust:{}:{key}", self.group))))
    }
}

/// Two Go replicas serving both groups on one `HTTPPool`, two Rust replicas serving them on one
/// [`Cluster`] each, in one ring. Replicas 0 and 1 are the Rust ones, 2 and 3 the Go ones.
struct TwoGroups {
    gos: [GoPeer; 2],
    rusts: [ClusterReplica; 2],
    alpha: [Groupcache<Tagged<String>>; 2],
    beta: [Groupcache<Tagged<Bytes>>; 2],
}

impl TwoGroups {
    fn url(&self, replica: usize) -> &str {
        match replica {
            0 | 1 => &self.rusts[replica].url,
            _ => &self.gos[replica - 2].url,
        }
    }

    /// A user's get of `key` in `GROUPS[group]` on `replica`: the value's bytes or the error.
    async fn get(&self, replica: usize, group: usize, key: &str) -> Result<Vec<u8>, String> {
        let value = match (replica, group) {
            (0 | 1, 0) => self.alpha[replica].get(key).await.map(String::into_bytes),
            (0 | 1, _) => self.beta[replica].get(key).await.map(Vec::from),
            _ => {
                return match self.gos[replica - 2].get_in(GROUPS[group], key).await {
                    (200, body) => Ok(body),
                    (status, body) => Err(format!("{status} {}", String::from_utf8_lossy(&body))),
                };
            }
        };
        value.map_err(|error| error.to_string())
    }

    /// The bytes every replica must return for `key` in `GROUPS[group]`: its owner's loader's.
    fn expected(&self, group: usize, key: &str) -> Vec<u8> {
        let owner = self.rusts[0].cluster.owner(key);
        let language = match self.rusts.iter().any(|r| r.url == owner) {
            true => "rust",
            false => "go",
        };
        format!("{language}:{}:{key}", GROUPS[group]).into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_on_go_pools_and_rust_clusters_load_each_key_once_with_the_same_bytes() {
    let Some(binary) = go::binary() else { return };
    let delay = Duration::from_millis(20);
    let go_flags = ["-groups", &GROUPS.join(","), "-load-delay", "20ms"];
    let gos = [(); 2].map(|_| GoPeer::start_with(binary, &go_flags));
    // GoCompatible, whose default turns the hand-off off: golang/groupcache has none.
    let rusts =
        [(); 2].map(|_| ClusterReplica::start(|cluster| cluster.ring_mode(RingMode::GoCompatible)));
    let alpha_loaders = [(); 2].map(|_| Tagged::<String>::new(GROUPS[0], delay));
    let beta_loaders = [(); 2].map(|_| Tagged::<Bytes>::new(GROUPS[1], delay));
    let alpha = [0, 1].map(|i| {
        let group = rusts[i].cluster.group(GROUPS[0], alpha_loaders[i].clone());
        group.build().unwrap()
    });
    let beta = [0, 1].map(|i| {
        let group = rusts[i].cluster.group(GROUPS[1], beta_loaders[i].clone());
        group.build().unwrap()
    });
    for rust in &rusts {
        assert_eq!(rust.cluster.groups(), GROUPS);
    }
    // Interleaved, the same list in the same order everywhere (Go's collision rule).
    let ring = [&rusts[0].url, &gos[0].url, &rusts[1].url, &gos[1].url];
    for rust in &rusts {
        rust.cluster.set_peers(ring).unwrap();
    }
    for go in &gos {
        go.set_peers(&ring).await;
    }
    let cluster = Arc::new(TwoGroups {
        gos,
        rusts,
        alpha,
        beta,
    });
    let keys: Arc<Vec<String>> = Arc::new(
        (0..300)
            .map(|i| match i % 3 {
                0 => format!("key-{i}"),
                1 => format!("ключ-{i}"),
                _ => format!("user:{i}/profile"),
            })
            .collect(),
    );
    let owners: HashMap<String, usize> = keys
        .iter()
        .map(|key| {
            let owner = cluster.rusts[0].cluster.owner(key);
            (
                key.clone(),
                (0..4).find(|&r| cluster.url(r) == owner).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        owners
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        4,
        "every replica owns keys"
    );

    // Two gets of every key of both groups from every replica; the eight gets of a key in a
    // group are next to each other in the queue, so they run at once (64 at a time in all).
    let gets: Arc<Vec<(usize, usize, usize)>> = Arc::new(
        (0..keys.len())
            .flat_map(|key| (0..2).flat_map(move |group| (0..8).map(move |n| (key, group, n % 4))))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..64 {
        let (cluster, keys, gets, next) =
            (cluster.clone(), keys.clone(), gets.clone(), next.clone());
        workers.spawn(async move {
            let mut results = Vec::new();
            while let Some(&(key, group, replica)) = gets.get(next.fetch_add(1, Ordering::Relaxed))
            {
                let value = cluster.get(replica, group, &keys[key]).await;
                results.push((key, group, replica, value));
            }
            results
        });
    }
    // Every replica's bytes, by group and key.
    let mut seen: HashMap<(usize, usize), Vec<Vec<u8>>> = HashMap::new();
    while let Some(results) = workers.join_next().await {
        for (i, group, replica, value) in results.unwrap() {
            let key = &keys[i];
            let value = value.unwrap_or_else(|e| {
                panic!("get {key:?} in {} on replica {replica}: {e}", GROUPS[group])
            });
            assert_eq!(
                String::from_utf8_lossy(&value),
                String::from_utf8_lossy(&cluster.expected(group, key)),
                "{key:?} in {} from replica {replica} (owner {})",
                GROUPS[group],
                owners[key]
            );
            seen.entry((group, i)).or_default().push(value);
        }
    }
    assert_eq!(seen.len(), 2 * keys.len());
    for i in 0..keys.len() {
        let (alpha, beta) = (&seen[&(0, i)], &seen[&(1, i)]);
        assert_eq!((alpha.len(), beta.len()), (8, 8));
        assert!(
            alpha.iter().all(|v| *v == alpha[0]) && beta.iter().all(|v| *v == beta[0]),
            "the same bytes from every replica"
        );
        assert_ne!(
            alpha[0], beta[0],
            "{:?}: the groups' values differ",
            keys[i]
        );
    }

    // Exactly one load of each key of each group in the whole mixed cluster, on its owner.
    let cluster = &*cluster;
    for (group, name) in GROUPS.into_iter().enumerate() {
        let rust_loads = match group {
            0 => alpha_loaders.each_ref().map(Tagged::loads),
            _ => beta_loaders.each_ref().map(Tagged::loads),
        };
        let go_loads = [
            cluster.gos[0].loads_in(name).await,
            cluster.gos[1].loads_in(name).await,
        ];
        let loads = |replica: usize, key: &str| match replica {
            0 | 1 => rust_loads[replica].get(key).copied().unwrap_or(0),
            _ => go_loads[replica - 2].of(key),
        };
        for key in keys.iter() {
            let per_replica: Vec<u64> = (0..4).map(|r| loads(r, key)).collect();
            let expected: Vec<u64> = (0..4).map(|r| u64::from(r == owners[key])).collect();
            assert_eq!(
                per_replica, expected,
                "loads of {key:?} in {name} by replica"
            );
        }
        let total: u64 = rust_loads.iter().flat_map(HashMap::values).sum::<u64>()
            + go_loads.iter().map(|l| l.total).sum::<u64>();
        println!(
            "{name}: {total} loads of {} keys, {:.2} loads per key",
            keys.len(),
            total as f64 / keys.len() as f64
        );
        assert_eq!(total, keys.len() as u64, "{name}: loads of other keys");
        // Both groups crossed the wire both ways: every replica served its peers in each.
        for go in &cluster.gos {
            let stats = go.stats_in(name).await;
            assert_eq!((stats.peer_errors, stats.local_load_errs), (0, 0), "{name}");
            assert!(stats.server_requests > 0, "{name}: {stats:?}");
        }
    }
    for (alpha, beta) in cluster.alpha.iter().zip(&cluster.beta) {
        let (alpha, beta) = (alpha.stats(), beta.stats());
        assert_eq!((alpha.peer_errors, beta.peer_errors), (0, 0));
        assert!(alpha.server_requests > 0 && beta.server_requests > 0);
    }

    // A group no replica serves: the same 404 from golang/groupcache's pool and from our router.
    for replica in 0..4 {
        let url = format!("{}/_groupcache/gamma/key-0", cluster.url(replica));
        let response = cluster.gos[0].http().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 404, "{url}");
        assert_eq!(response.text().await.unwrap(), "no such group: gamma\n");
    }
}
