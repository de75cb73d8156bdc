//! Hostile and faulty peers: authentication, load shedding, peers that hang or send garbage, and
//! storms of panics and cancellations. None may cost a caller its value, hang, or panic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use groupcache_rs::{Groupcache, PeerAuth, SIGNATURE_HEADER};
use groupcache_tests::{GROUP, Replica, TestLoader, key_owned, key_owned_by, start_cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

const SECRET: &[u8] = b"a shared secret of 32 bytes here";
const OTHER: &[u8] = b"another secret, also long enough";

fn auth(secret: &[u8]) -> PeerAuth {
    PeerAuth::new(secret.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_clusters_work_and_unsigned_requests_get_401_without_a_load() {
    let loader = TestLoader::new();
    let cluster = start_cluster(3, |url| {
        Groupcache::builder(GROUP, url, loader.clone()).peer_auth(auth(SECRET))
    });
    let key = key_owned_by(&cluster, 0, "signed-");
    assert_eq!(
        cluster[1].cache.get(&key).await.unwrap(),
        loader.value_for(&key)
    );
    cluster[2]
        .cache
        .set(&key, &"set".to_owned(), None)
        .await
        .unwrap();
    cluster[2].cache.remove(&key).await.unwrap();
    assert_eq!(cluster[1].cache.stats().peer_errors, 0);
    assert_eq!(cluster[0].cache.stats().peer_auth_failures, 0);

    let loads = loader.loads.total();
    let url = format!("{}/_groupcache/{GROUP}/unsigned", cluster[0].url);
    // The failure detector's heartbeat (issue 25) is a peer request like the others: unsigned,
    // it is refused too, so no one outside the cluster can keep a frozen replica trusted.
    let heartbeat = format!("{}/_groupcache/", cluster[0].url);
    for request in [
        reqwest::Client::new().get(&url),
        reqwest::Client::new().delete(&url),
        reqwest::Client::new()
            .get(&url)
            .header(SIGNATURE_HEADER, "v2 t=0 n=0123456789abcdef d=00 s=00"),
        reqwest::Client::new()
            .get(&heartbeat)
            .header("groupcache-heartbeat", "1"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert!(response.text().await.unwrap().starts_with("unauthorized"));
    }
    assert_eq!(cluster[0].cache.stats().peer_auth_failures, 4);
    assert_eq!(
        loader.loads.total(),
        loads,
        "a refused request never reaches the loader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_secret_is_refused_and_the_asker_loads_locally() {
    let loader = TestLoader::new();
    let owner = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone()).peer_auth(auth(SECRET))
    });
    let intruder = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone()).peer_auth(auth(OTHER))
    });
    let cluster = [owner, intruder];
    groupcache_tests::connect(&cluster);
    let key = key_owned_by(&cluster, 0, "intruder-");
    assert_eq!(
        cluster[1].cache.get(&key).await.unwrap(),
        loader.value_for(&key)
    );
    assert_eq!(cluster[0].cache.stats().peer_auth_failures, 1);
    assert_eq!(cluster[0].cache.stats().local_loads, 0);
    assert_eq!(cluster[1].cache.stats().peer_errors, 1);
    assert_eq!(cluster[1].cache.stats().local_loads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_rotate_without_downtime() {
    let loader = TestLoader::new();
    // Mid-rotation: `new` signs with the new secret and still accepts the old one; `old` has not
    // been told yet, so it only accepts the old one. (No warm hand-off, whose peeks from `new`
    // would be refused by `old` too: this counts the gets' own requests.)
    let new = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone())
            .peer_auth(auth(OTHER).accept(SECRET.to_vec()).unwrap())
            .handoff_timeout(Duration::ZERO)
    });
    let old = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone()).peer_auth(auth(SECRET))
    });
    let cluster = [new, old];
    groupcache_tests::connect(&cluster);
    let owned_by_new = key_owned_by(&cluster, 0, "rot-");
    cluster[1].cache.get(&owned_by_new).await.unwrap();
    assert_eq!(
        cluster[0].cache.stats().peer_auth_failures,
        0,
        "the old secret is still accepted"
    );
    let owned_by_old = key_owned_by(&cluster, 1, "rot-");
    cluster[0].cache.get(&owned_by_old).await.unwrap();
    assert_eq!(
        cluster[1].cache.stats().peer_auth_failures,
        1,
        "the new secret is not yet accepted there"
    );
}

/// A server that records each request's head and answers 404: a captured signed request.
async fn recorder() -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0; 4096];
                // The head only: a body may arrive in the same read.
                let end = loop {
                    if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                };
                let _ = sender.send(String::from_utf8_lossy(&head[..end]).into_owned());
                let _ = socket
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    (url, receiver)
}

/// The signature header's value in a captured request head.
fn signature_in(head: &str) -> String {
    head.lines()
        .find_map(|line| line.strip_prefix(&format!("{SIGNATURE_HEADER}: ")))
        .expect("the request was signed")
        .to_owned()
}

/// Whether a request is a peek is signed (issue 26): a captured get made a peek, or a captured
/// peek made a get (which would load), is refused, and the untampered request still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peek_header_added_or_removed_in_flight_breaks_the_signature() {
    let loader = TestLoader::new();
    let (target_url, mut captured) = recorder().await;
    let target = Replica::start(|_| {
        Groupcache::builder(GROUP, target_url.as_str(), loader.clone()).peer_auth(auth(SECRET))
    });
    let asker = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone()).peer_auth(auth(SECRET))
    });
    let both = [target_url.as_str(), asker.url.as_str()];
    asker.cache.set_peers(both).unwrap();
    let get_key = key_owned(&asker.cache, &target_url, "tamper-get-");
    let peek_key = key_owned(&asker.cache, &target_url, "tamper-peek-");
    let peeks = |head: &str| head.to_ascii_lowercase().contains("groupcache-peek:");
    let patience = Duration::from_secs(5);

    // A get, captured: delivered as a peek it is refused; as sent, accepted.
    asker.cache.get(&get_key).await.unwrap();
    let head = tokio::time::timeout(patience, captured.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!peeks(&head), "{head}");
    let signature = signature_in(&head);
    let url = format!("{}/_groupcache/{GROUP}/{get_key}", target.url);
    let send = |peek: bool| {
        let request = reqwest::Client::new()
            .get(&url)
            .header(SIGNATURE_HEADER, &signature);
        let request = if peek {
            request.header("groupcache-peek", "1")
        } else {
            request
        };
        request.send()
    };
    assert_eq!(send(true).await.unwrap().status(), 401, "a get made a peek");
    assert_eq!(target.cache.stats().peer_auth_failures, 1);
    assert_eq!(
        send(false).await.unwrap().status(),
        200,
        "the get as signed"
    );

    // A peek, captured: `peek_key`'s owner leaves, the asker owns it under a young ring and
    // peeks the previous owner (the recorder) before loading it.
    asker.cache.set_peers([asker.url.as_str()]).unwrap();
    asker.cache.get(&peek_key).await.unwrap();
    let head = loop {
        let head = tokio::time::timeout(patience, captured.recv())
            .await
            .unwrap()
            .unwrap();
        if peeks(&head) {
            break head;
        }
    };
    let signature = signature_in(&head);
    let loads = loader.loads.of(&peek_key);
    let url = format!("{}/_groupcache/{GROUP}/{peek_key}", target.url);
    let stripped = reqwest::Client::new()
        .get(&url)
        .header(SIGNATURE_HEADER, &signature)
        .send()
        .await
        .unwrap();
    assert_eq!(stripped.status(), 401, "a peek made a get");
    assert_eq!(target.cache.stats().peer_auth_failures, 2);
    assert_eq!(
        loader.loads.of(&peek_key),
        loads,
        "the target never loaded it"
    );
    let as_sent = reqwest::Client::new()
        .get(&url)
        .header(SIGNATURE_HEADER, &signature)
        .header("groupcache-peek", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        as_sent.status(),
        404,
        "the peek as signed: not cached, not loaded"
    );
    assert_eq!(loader.loads.of(&peek_key), loads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_signed_request_cannot_be_replayed() {
    let loader = TestLoader::new();
    // Requests meant for `target` go to the recorder, which captures them: `target` is known to
    // its peers (and to itself) by the recorder's URL, and is reached directly only by the replay.
    let (target_url, mut captured) = recorder().await;
    let target = Replica::start(|_| {
        Groupcache::builder(GROUP, target_url.as_str(), loader.clone()).peer_auth(auth(SECRET))
    });
    let other = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone()).peer_auth(auth(SECRET))
    });
    let asker = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone()).peer_auth(auth(SECRET))
    });
    asker
        .cache
        .set_peers([target_url.as_str(), asker.url.as_str()])
        .unwrap();
    let key = key_owned(&asker.cache, &target_url, "replay-");
    asker.cache.get(&key).await.unwrap();
    let head = captured.recv().await.unwrap();
    let signature = signature_in(&head);
    let send = |replica: &Replica<TestLoader>| {
        reqwest::Client::new()
            .get(format!("{}/_groupcache/{GROUP}/{key}", replica.url))
            .header(SIGNATURE_HEADER, &signature)
            .send()
    };
    // Another replica with the same secret: the signature names `target`.
    for _ in 0..3 {
        assert_eq!(send(&other).await.unwrap().status(), 401, "cross-replica");
    }
    assert_eq!(other.cache.stats().peer_auth_failures, 3);
    assert_eq!(
        send(&target).await.unwrap().status(),
        200,
        "the captured request, delivered late to the replica it was meant for"
    );
    assert_eq!(
        send(&target).await.unwrap().status(),
        401,
        "the replay is refused"
    );
    assert_eq!(target.cache.stats().peer_auth_failures, 1);
    assert_eq!(
        (other.cache.stats().local_loads, loader.loads.of(&key)),
        (0, 2),
        "only the asker (its owner did not answer) and the target ever loaded the key"
    );
}

/// Every slot taken (one, here, held by a stuck load): the next peer request waits for the slot
/// rather than being refused at once, and is served when the slot is given back. Refused at once
/// before (503): its sender loaded the key itself, and a sender asking again at once kept the
/// router busy refusing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_request_waits_for_a_busy_slot_and_is_served_once_given_back() {
    let gate = Arc::new(Semaphore::new(0));
    let loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let owner = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone())
            .max_concurrent_peer_requests(1)
            .peer_admission_wait(Duration::from_secs(60))
    });
    let get = |key: &str| {
        let url = format!("{}/_groupcache/{GROUP}/{key}", owner.url);
        tokio::spawn(async move { reqwest::get(url).await.map(|answer| answer.status()) })
    };
    let busy = get("slow");
    loader.loads.started(1).await;
    let waiting = get("other");
    tokio::time::timeout(Duration::from_secs(10), async {
        while owner.cache.stats().peer_requests_waiting < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the second request waits for the slot (it was refused at once before)");
    assert_eq!(loader.loads.total(), 1, "the waiting request holds no slot");
    gate.add_permits(2);
    assert_eq!(busy.await.unwrap().unwrap(), 200);
    assert_eq!(waiting.await.unwrap().unwrap(), 200, "served, not shed");
    let stats = owner.cache.stats();
    assert_eq!(
        (stats.peer_requests_waiting, stats.peer_requests_shed),
        (0, 0)
    );
    assert_eq!(loader.loads.total(), 2);
}

/// A request that finds no slot within its admission wait is shed with 503 (its sender loads
/// locally) and counted; with no wait, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_request_is_shed_with_503_once_its_admission_wait_runs_out() {
    let gate = Arc::new(Semaphore::new(0));
    let loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let wait = Duration::from_millis(200);
    let owner = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone())
            .max_concurrent_peer_requests(1)
            .peer_admission_wait(wait)
    });
    let busy = tokio::spawn({
        let url = format!("{}/_groupcache/{GROUP}/slow", owner.url);
        async move { reqwest::get(url).await.unwrap().status() }
    });
    loader.loads.started(1).await;
    let started = Instant::now();
    let shed = reqwest::get(format!("{}/_groupcache/{GROUP}/other", owner.url))
        .await
        .unwrap();
    assert_eq!(shed.status(), 503);
    assert!(
        started.elapsed() >= wait,
        "it waited {wait:?} for a slot first"
    );
    assert_eq!(owner.cache.stats().peer_requests_shed, 1);
    gate.add_permits(1);
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(
        loader.loads.total(),
        1,
        "the shed request never reached the loader"
    );
}

/// A fake owner that accepts connections and then misbehaves in the given way.
async fn misbehaving_owner(behaviour: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0; 4096];
                let _ = socket.read(&mut buffer).await;
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000\r\n\r\n";
                let answer: &[u8] = match behaviour {
                    // Never answers, keeps the connection open.
                    "hang" => {
                        std::future::pending::<()>().await;
                        b""
                    }
                    // Closes without a word.
                    "close" => b"",
                    // Headers and part of the body, then nothing more, connection open.
                    "stall-body" => {
                        let _ = socket.write_all(head).await;
                        let _ = socket.write_all(b"\x0a\xe5\x07abc").await;
                        std::future::pending::<()>().await;
                        b""
                    }
                    // Headers, then one byte of the body every 50 ms: every read makes
                    // progress, so only a deadline on the whole answer stops it.
                    "trickle-body" => {
                        let _ = socket.write_all(head).await;
                        let _ = socket.write_all(b"\x0a\xe5\x07").await;
                        for _ in 0..1000 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            if socket.write_all(b"a").await.is_err() {
                                return;
                            }
                        }
                        b""
                    }
                    "truncated" => b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 100\r\n\r\n\x0a\x05ab",
                    "wrong-type" => b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\n\x0a\x02hi",
                    _ => b"not http at all\r\n\r\n",
                };
                let _ = socket.write_all(answer).await;
                // Close after writing: a truncated body ends early.
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_closing_stalling_truncating_and_mislabelled_peers_cost_one_timeout_at_most() {
    let timeout = Duration::from_millis(300);
    let behaviours = [
        "hang",
        "close",
        "stall-body",
        "trickle-body",
        "truncated",
        "wrong-type",
        "not-http",
    ];
    for behaviour in behaviours {
        let loader = TestLoader::new();
        let fake = misbehaving_owner(behaviour).await;
        let asker = Replica::start(|url| {
            Groupcache::builder(GROUP, url, loader.clone()).peer_timeout(timeout)
        });
        asker
            .cache
            .set_peers([fake.as_str(), asker.url.as_str()])
            .unwrap();
        let key = key_owned(&asker.cache, &fake, "{behaviour}-");
        let started = Instant::now();
        assert_eq!(
            asker.cache.get(&key).await.unwrap(),
            loader.value_for(&key),
            "{behaviour}"
        );
        // Bounded by the peer timeout plus one (instant) load; generous for a loaded machine.
        assert!(
            started.elapsed() < timeout + Duration::from_secs(2),
            "{behaviour}: {:?}",
            started.elapsed()
        );
        let stats = asker.cache.stats();
        assert_eq!(
            (stats.peer_errors, stats.local_loads),
            (1, 1),
            "{behaviour}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_push_a_value_over_the_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn({
        let sent = sent.clone();
        async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let sent = sent.clone();
                tokio::spawn(async move {
                    let _ = socket.read(&mut [0; 4096]).await;
                    let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ntransfer-encoding: chunked\r\n\r\n";
                    if socket.write_all(head).await.is_err() {
                        return;
                    }
                    // Streams up to 1 GiB in 64 KiB chunks, until the reader hangs up.
                    let chunk = [b"10000\r\n".as_slice(), &[0x0a; 65536], b"\r\n"].concat();
                    for _ in 0..16_384 {
                        if socket.write_all(&chunk).await.is_err() {
                            return;
                        }
                        sent.fetch_add(65536, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        }
    });
    let loader = TestLoader::new();
    let asker = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone()).max_value_bytes(1 << 20)
    });
    asker
        .cache
        .set_peers([fake.as_str(), asker.url.as_str()])
        .unwrap();
    let key = key_owned(&asker.cache, &fake, "flood-");
    assert_eq!(asker.cache.get(&key).await.unwrap(), loader.value_for(&key));
    assert_eq!(asker.cache.stats().peer_errors, 1);
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 64 << 20,
        "the reader hung up near the 1 MiB limit, not after {sent} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storms_of_panics_and_cancelled_callers_leave_no_stuck_key() {
    let loader = TestLoader {
        delay: Duration::from_millis(5),
        ..TestLoader::new()
    };
    let cluster = start_cluster(2, |url| Groupcache::builder(GROUP, url, loader.clone()));
    quiet_test_loader_panics();
    // 10,000 loader panics (each panic: key panics on its first load only).
    let mut panics = tokio::task::JoinSet::new();
    for i in 0..10_000 {
        let cache = cluster[i % 2].cache.clone();
        panics.spawn(async move { cache.get(&format!("panic:{i}")).await.is_err() });
    }
    let mut failed = 0;
    while let Some(result) = panics.join_next().await {
        failed += usize::from(result.unwrap());
    }
    assert_eq!(
        failed, 10_000,
        "every first load panicked and every caller got an error"
    );
    // 10,000 callers over 500 keys, every third one cancelled at once (every key keeps callers
    // that wait, since 500 and 3 share no factor).
    let mut callers = Vec::new();
    for i in 0..10_000 {
        let cache = cluster[i % 2].cache.clone();
        let key = format!("storm-{}", i % 500);
        callers.push((i, tokio::spawn(async move { cache.get(&key).await })));
    }
    for (i, caller) in &callers {
        if i % 3 == 0 {
            caller.abort();
        }
    }
    for (i, caller) in callers {
        match caller.await {
            Ok(value) => assert!(value.is_ok(), "caller {i}: {value:?}"),
            Err(error) => assert!(error.is_cancelled() && i % 3 == 0),
        }
    }
    // No key is stuck: each panicking key now loads, and nothing was loaded twice.
    for i in (0..10_000).step_by(97) {
        let key = format!("panic:{i}");
        assert_eq!(
            cluster[1].cache.get(&key).await.unwrap(),
            loader.value_for(&key)
        );
    }
    for i in 0..500 {
        assert_eq!(loader.loads.of(&format!("storm-{i}")), 1);
    }
}

/// The default panic hook prints every one of the storm's 10,000 intended panics (with a
/// backtrace when RUST_BACKTRACE is set); drop exactly those, keep every other panic's report.
fn quiet_test_loader_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let intended = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|message| message.starts_with("test loader panics on the first load"));
        if !intended {
            default(info);
        }
    }));
}

/// Bounds every wait on a raw connection, so a server that never answers fails the test.
const PATIENCE: Duration = Duration::from_secs(10);

async fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> tokio::net::TcpStream {
    groupcache_tests::raw::send(addr, head, body).await.unwrap()
}

async fn answer(socket: &mut tokio::net::TcpStream) -> (u16, String) {
    groupcache_tests::raw::answer(socket, PATIENCE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked_before_any_body_is_read() {
    let loader = TestLoader::new();
    let replica = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone()).peer_auth(auth(SECRET))
    });
    // 16 MiB declared, 100 bytes sent, the rest never: the answer cannot wait for the body.
    for method in ["PUT", "GET", "DELETE"] {
        let head = format!(
            "{method} /_groupcache/{GROUP}/k HTTP/1.1\r\nhost: x\r\ncontent-length: 16777216\r\n\r\n"
        );
        let mut socket = raw(replica.addr, &head, &[0; 100]).await;
        let (status, text) = answer(&mut socket).await;
        assert_eq!(status, 401, "{method}: {text}");
    }
    assert_eq!(replica.cache.stats().peer_auth_failures, 3);
    assert_eq!(loader.loads.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_delete_bodies_are_refused_unread() {
    let loader = TestLoader::new();
    let replica = Replica::start(|url| Groupcache::builder(GROUP, url, loader.clone()));
    for (method, framing) in [
        ("GET", "content-length: 16777216"),
        ("DELETE", "content-length: 16777216"),
        ("GET", "transfer-encoding: chunked"),
    ] {
        let head =
            format!("{method} /_groupcache/{GROUP}/k HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n");
        let mut socket = raw(replica.addr, &head, b"").await;
        let (status, text) = answer(&mut socket).await;
        assert_eq!(status, 413, "{method} {framing}: {text}");
        assert!(text.contains("carries no body"), "{text}");
    }
    // An empty body, declared or not, is what golang/groupcache and this library send.
    let head =
        format!("GET /_groupcache/{GROUP}/k HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n");
    let (status, text) = answer(&mut raw(replica.addr, &head, b"").await).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        loader.loads.total(),
        1,
        "only the GET without a body loaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_body_is_read_under_a_deadline_and_a_byte_budget() {
    let loader = TestLoader::new();
    let replica = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone())
            .max_value_bytes(1024)
            .peer_timeout(Duration::from_millis(500))
            // Raised to one largest body: 1024 + 4096 bytes.
            .max_buffered_peer_bytes(0)
    });
    let put = |length: usize| {
        format!(
            "PUT /_groupcache/{GROUP}/k HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n"
        )
    };
    let (status, text) = answer(&mut raw(replica.addr, &put(5121), b"").await).await;
    assert_eq!(
        status, 413,
        "over the limit, refused before reading: {text}"
    );
    let (status, text) = answer(&mut raw(replica.addr, &put(10), b"").await).await;
    assert_eq!(status, 408, "a stalled body meets the deadline: {text}");
    // Two stalled bodies that together exceed the budget: whichever comes second is refused at
    // once, the first meets the deadline.
    let mut first = raw(replica.addr, &put(3000), &[0; 10]).await;
    let mut second = raw(replica.addr, &put(3000), &[0; 10]).await;
    let (a, b) = tokio::join!(answer(&mut first), answer(&mut second));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [408, 503], "{a:?} {b:?}");
    // The budget is back once they are gone.
    let set = groupcache_rs_pb::SetRequest {
        group: GROUP.into(),
        key: "k".into(),
        value: Some("stored".into()),
        expire: None,
    };
    let body = prost::Message::encode_to_vec(&set);
    let (status, text) = answer(&mut raw(replica.addr, &put(body.len()), &body).await).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(replica.cache.get("k").await.unwrap(), "stored");
    assert_eq!(loader.loads.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_put_with_another_body_is_refused() {
    let loader = TestLoader::new();
    // As in the replay test: requests meant for `target` are captured by the recorder.
    let (target_url, mut captured) = recorder().await;
    let target = Replica::start(|_| {
        Groupcache::builder(GROUP, target_url.as_str(), loader.clone()).peer_auth(auth(SECRET))
    });
    let asker = Replica::start(|url| {
        Groupcache::builder(GROUP, url, loader.clone()).peer_auth(auth(SECRET))
    });
    asker
        .cache
        .set_peers([target_url.as_str(), asker.url.as_str()])
        .unwrap();
    let key = key_owned(&asker.cache, &target_url, "put-");
    // The recorder answers 404: the set fails, but its signed head was captured.
    let _ = asker.cache.set(&key, &"honest".to_owned(), None).await;
    let head = captured.recv().await.unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .and_then(|n| n.parse().ok())
        .expect("a PUT declares its length");
    // Another value, the same length.
    let body = (0..length)
        .map(|n| {
            let forged = groupcache_rs_pb::SetRequest {
                group: GROUP.into(),
                key: key.clone(),
                value: Some("f".repeat(n).into()),
                expire: Some(0),
            };
            prost::Message::encode_to_vec(&forged)
        })
        .find(|body| body.len() == length)
        .expect("a forged body of the same length");
    let (status, text) = answer(&mut raw(target.addr, &head, &body).await).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("does not match its signed digest"), "{text}");
    assert_eq!(target.cache.stats().main_items, 0, "nothing was stored");
}
