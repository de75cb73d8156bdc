//! Attacks on the peer port of replica processes with peer authentication on (one without, for
//! the body budget), on loopback, bounded in count and time. Each attack asserts that the
//! target's resident memory (`VmRSS` of its process) grows by less than a bound stated from its
//! configuration, that honest gets crossing the attacked port keep being answered with the right
//! values while it lasts, and that every attack request is refused (and, where the library
//! counts it, counted).
//!
//! The figures are printed (`cargo test -p groupcache-tests --test attacks -- --nocapture`) and
//! quoted in SECURITY.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use groupcache_tests::process::{ProcessReplica, keys_owned_by, value_for};
use groupcache_tests::{TestLoader, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

const BINARY: &str = env!("CARGO_BIN_EXE_replica");
const SECRET: &str = "the attack tests' secret, 32 byte";
const GROUP: &str = "test";
/// Connections each connection attack opens at once.
const CONNECTIONS: usize = 1000;
/// Bounds every wait on one answer.
const PATIENCE: Duration = Duration::from_secs(20);
/// The attacked replica's header deadline.
const HEADER_TIMEOUT_MS: u64 = 1000;
/// The attacked replica's nonce bound: small, so that the flood overflows it within the replay
/// window, yet above what the flood sends in 3 s, which the store needs so as not to refuse
/// honest requests (timestamps are whole seconds: one signed late in a second arrives in the
/// next). The flood ran at 5,586-7,873/s here; this bound fits rates from 4.4k/s (to overflow
/// within 30 s) to 21k/s.
const MAX_NONCES: usize = 65536;
/// Signed requests in the flood: twice what the nonce store remembers.
const FLOOD: usize = 2 * MAX_NONCES;
/// The flood stops after this long if it has not sent them all.
const FLOOD_TIME: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;
/// The attacked replica's main cache, which the flood fills.
const MAIN_CACHE_BYTES: u64 = 32 * MIB;

fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Resident memory of process `pid`, from `/proc/<pid>/status`.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The soft limit on this process's open files.
fn fd_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// This process must hold `CONNECTIONS` sockets and more; scripts/test.sh raises the limit.
fn check_fd_limit() {
    let soft = fd_limit();
    assert!(
        soft >= 2 * CONNECTIONS as u64 + 256,
        "open-file limit {soft} is too low for {CONNECTIONS} connections: run `ulimit -n 8192` \
         (scripts/test.sh does)"
    );
}

/// Honest gets on `asker` for keys another replica owns, one after another, each crossing the
/// attacked peer port; counted in `done`, failures (any answer but the right value) collected.
struct Honest {
    done: watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    /// How long each get took, in order.
    latencies: Arc<std::sync::Mutex<Vec<Duration>>>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Honest {
    fn start(asker: Arc<ProcessReplica>, keys: Vec<String>) -> Honest {
        Honest::start_padded(asker, keys, 0)
    }

    /// Like `start`, for a replica whose values are padded to `value_bytes` (`--value-bytes`).
    fn start_padded(asker: Arc<ProcessReplica>, keys: Vec<String>, value_bytes: usize) -> Honest {
        let (count, done) = watch::channel(0);
        let stop = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, latencies) = (stop.clone(), latencies.clone());
            async move {
                let mut failures = Vec::new();
                for key in keys {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut expected = value_for(&key, 0).into_bytes();
                    if expected.len() < value_bytes {
                        expected.resize(value_bytes, b'.');
                    }
                    let started = Instant::now();
                    let answer = asker.get(&key).await;
                    latencies.lock().unwrap().push(started.elapsed());
                    match answer {
                        Ok((200, body)) if body == expected => {}
                        Ok((status, body)) => {
                            failures.push(format!("{key}: {status}, {} bytes", body.len()))
                        }
                        Err(error) => failures.push(format!("{key}: {error}")),
                    }
                    count.send_modify(|n| *n += 1);
                }
                failures
            }
        });
        Honest {
            done,
            stop,
            latencies,
            task,
        }
    }

    /// How many gets were answered so far, and the latencies recorded from the `from`th on.
    fn latencies_from(&self, from: usize) -> Vec<Duration> {
        self.latencies.lock().unwrap()[from..].to_vec()
    }

    /// Waits until `n` more honest gets have been answered.
    async fn answered(&mut self, n: u64) {
        let target = *self.done.borrow() + n;
        tokio::time::timeout(PATIENCE, self.done.wait_for(|&done| done >= target))
            .await
            .expect("honest gets are answered during the attack")
            .expect("the honest task ran out of keys");
    }

    fn started(&self) -> usize {
        self.latencies.lock().unwrap().len()
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let done = *self.done.borrow();
        let failures = self.task.await.unwrap();
        assert!(failures.is_empty(), "honest gets failed: {failures:?}");
        done
    }
}

/// Opens `CONNECTIONS` connections to `target`, each sending `head` and `body` and then nothing;
/// the connections, still open.
async fn open_all(target: SocketAddr, head: &str, body: &[u8]) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        sockets.push(raw::send(target, head, body).await.expect("connect"));
    }
    sockets
}

/// The statuses of the answers on `sockets`, as a count per status.
async fn statuses(sockets: &mut [TcpStream]) -> std::collections::BTreeMap<u16, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for socket in sockets {
        let (status, _) = raw::answer(socket, PATIENCE).await;
        *counts.entry(status).or_default() += 1;
    }
    counts
}

/// A server that records the head of every request it receives and answers 404: where signed
/// requests meant for a replica known by this address are captured.
async fn recorder() -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut received = Vec::new();
                let mut buffer = [0; 4096];
                loop {
                    // Every head on the connection (these GETs have no body).
                    while let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = received.drain(..end + 4).collect();
                        let _ = sender.send(String::from_utf8_lossy(&head).into_owned());
                        let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => received.extend_from_slice(&buffer[..n]),
                    }
                }
            });
        }
    });
    (url, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_survives_bodies_slowloris_heads_floods_and_replays() {
    check_fd_limit();
    let secret = ["--secret", SECRET];
    let header_timeout = HEADER_TIMEOUT_MS.to_string();
    let max_nonces = MAX_NONCES.to_string();
    let target = ProcessReplica::start(
        BINARY,
        &[
            &secret[..],
            &["--header-timeout-ms", &header_timeout],
            &["--max-nonces", &max_nonces],
            &["--main-bytes", &MAIN_CACHE_BYTES.to_string()],
        ]
        .concat(),
    );
    let asker = Arc::new(ProcessReplica::start(BINARY, &secret));
    let (captured_url, mut captured) = recorder().await;
    // The replica the captured requests were meant for: known by the recorder's address.
    let intended =
        ProcessReplica::start(BINARY, &[&secret[..], &["--self", &captured_url]].concat());
    let urls = [
        target.url.as_str(),
        asker.url.as_str(),
        captured_url.as_str(),
    ];
    for replica in [&target, &*asker, &intended] {
        replica.set_peers(&urls).await;
    }
    let target_addr = addr(&target.addr);
    // Enough that the honest task never runs out while an attack is being set up: on a quick
    // machine it answered 5,000 gets before 1,000 attacking connections were open.
    let honest_keys = keys_owned_by(&urls, &target.url, "honest-", 200_000);
    let mut honest_keys = honest_keys.chunks(50_000).map(<[String]>::to_vec);
    let mut figures = Vec::new();

    // 1. 1,000 connections, each declaring a 16 MiB PUT body and sending 64 KiB of it.
    let baseline = resident(target.pid);
    let mut honest = Honest::start(asker.clone(), honest_keys.next().unwrap());
    honest.answered(10).await;
    let head = format!(
        "PUT /_groupcache/{GROUP}/k HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        16 * MIB
    );
    let mut sockets = open_all(target_addr, &head, &[0x0a; 64 << 10]).await;
    honest.answered(20).await;
    let peak = resident(target.pid);
    let refused = statuses(&mut sockets).await;
    drop(sockets);
    let answered = honest.finish().await;
    // Each is refused from its headers: nothing of a body is kept. Bound: the connections'
    // buffers (16 KiB of head each) and tasks, 1,000 x 32 KiB.
    let growth = peak.saturating_sub(baseline);
    figures.push(format!(
        "stalled 16 MiB bodies x{CONNECTIONS}: +{} KiB resident, {refused:?}, {answered} honest gets",
        growth >> 10
    ));
    assert_eq!(refused.get(&401), Some(&CONNECTIONS), "{refused:?}");
    assert!(growth < 32 * MIB, "resident memory grew by {growth} bytes");
    let stats = target.stats().await;
    assert_eq!(stats.peer_auth_failures, CONNECTIONS as u64);
    assert_eq!(stats.local_load_errors, 0);

    // 2. Slowloris: 1,000 connections sending a head a byte at a time, 5 bytes a second.
    let baseline = resident(target.pid);
    let mut honest = Honest::start(asker.clone(), honest_keys.next().unwrap());
    let mut drips = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..CONNECTIONS {
        let mut socket = TcpStream::connect(target_addr).await.expect("connect");
        drips.spawn(async move {
            let head = format!("GET /_groupcache/{GROUP}/slow HTTP/1.1\r\nhost: x\r\n");
            for byte in head.bytes().cycle().take(1000) {
                if socket.write_all(&[byte]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        });
    }
    honest.answered(20).await;
    let peak = resident(target.pid);
    let mut closed = 0;
    while let Some(was_closed) = drips.join_next().await {
        closed += usize::from(was_closed.unwrap());
    }
    let took = started.elapsed();
    let answered = honest.finish().await;
    let growth = peak.saturating_sub(baseline);
    figures.push(format!(
        "slowloris x{CONNECTIONS}: all closed after {took:?}, +{} KiB resident, {answered} honest gets",
        growth >> 10
    ));
    assert_eq!(
        closed, CONNECTIONS,
        "every slow connection is closed by the server"
    );
    assert!(
        took < Duration::from_millis(HEADER_TIMEOUT_MS) + PATIENCE,
        "closed by the deadline, not the drip's end"
    );
    assert!(growth < 32 * MIB, "resident memory grew by {growth} bytes");

    // 3. Oversized heads: 1,000 connections each sending 64 KiB of header.
    let baseline = resident(target.pid);
    let mut honest = Honest::start(asker.clone(), honest_keys.next().unwrap());
    let padding = "a".repeat(64 << 10);
    let head =
        format!("GET /_groupcache/{GROUP}/k HTTP/1.1\r\nhost: x\r\nx-pad: {padding}\r\n\r\n");
    let mut sockets = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        // The server may answer and close before the whole head is written.
        let mut socket = TcpStream::connect(target_addr).await.expect("connect");
        let _ = socket.write_all(head.as_bytes()).await;
        sockets.push(socket);
    }
    honest.answered(20).await;
    let peak = resident(target.pid);
    let refused = statuses(&mut sockets).await;
    drop(sockets);
    let answered = honest.finish().await;
    let growth = peak.saturating_sub(baseline);
    figures.push(format!(
        "64 KiB heads x{CONNECTIONS}: +{} KiB resident, {refused:?}, {answered} honest gets",
        growth >> 10
    ));
    assert_eq!(refused.get(&431), Some(&CONNECTIONS), "{refused:?}");
    assert!(growth < 32 * MIB, "resident memory grew by {growth} bytes");

    // 4. A flood of signed requests, as fast as 32 concurrent gets can drive them, twice
    // what the nonce store remembers, within the replay window: the store overflows.
    let baseline = resident(target.pid);
    let flood_keys = Arc::new(keys_owned_by(&urls, &target.url, "flood-", FLOOD));
    let next = Arc::new(AtomicU64::new(0));
    let flood_start = Instant::now();
    let deadline = flood_start + FLOOD_TIME;
    let mut drivers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (asker, keys, next) = (asker.clone(), flood_keys.clone(), next.clone());
        drivers.spawn(async move {
            let mut failures = Vec::new();
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(key) = keys.get(n) else { break };
                match asker.get(key).await {
                    Ok((200, body)) if body == value_for(key, 0).as_bytes() => {}
                    other => failures.push(format!("{key}: {other:?}")),
                }
            }
            failures
        });
    }
    let mut failures = Vec::new();
    while let Some(driver) = drivers.join_next().await {
        failures.extend(driver.unwrap());
    }
    let took = flood_start.elapsed();
    let sent = next.load(Ordering::Relaxed).min(flood_keys.len() as u64);
    let rate = sent as f64 / took.as_secs_f64();
    let stats = target.stats().await;
    let growth = resident(target.pid).saturating_sub(baseline);
    figures.push(format!(
        "signed flood: {sent} requests in {took:.1?} ({rate:.0}/s), {} nonces remembered \
         (bound {MAX_NONCES}), {} refused, +{} KiB resident",
        stats.auth_nonces,
        stats.peer_auth_failures - CONNECTIONS as u64,
        growth >> 10
    ));
    assert!(
        failures.is_empty(),
        "{} honest requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        stats.peer_auth_failures, CONNECTIONS as u64,
        "no honest signed request was refused"
    );
    assert_eq!(asker.stats().await.peer_errors, 0);
    assert!(stats.auth_nonces <= MAX_NONCES as u64);
    assert!(
        sent > MAX_NONCES as u64 && took < Duration::from_secs(30),
        "the flood ({sent} in {took:?}) did not overflow the nonce store within the window"
    );
    // The main cache filled: its budget, plus at most a quarter more and two 1 MiB segments of
    // segment space (caches.rs); the nonces, 40 bytes each at most; 16 MiB for connections and
    // the allocator.
    let bound = MAIN_CACHE_BYTES * 5 / 4 + 2 * MIB + 40 * MAX_NONCES as u64 + 16 * MIB;
    assert!(
        growth < bound,
        "resident memory grew by {growth} bytes, over {bound}"
    );

    // 5. Replays of captured signed requests, at the replica they were meant for and the others.
    let capture_keys = keys_owned_by(&urls, &captured_url, "replay-", 50);
    for key in &capture_keys {
        // The recorder answers 404: the asker loads locally; its signed request is captured.
        let (status, _) = asker.get(key).await.unwrap();
        assert_eq!(status, 200);
    }
    let mut heads = Vec::new();
    while heads.len() < capture_keys.len() {
        let head = tokio::time::timeout(PATIENCE, captured.recv())
            .await
            .expect("a captured request")
            .unwrap();
        // Warm hand-off peeks reach the recorder too (every ring here is young); only the gets'
        // own requests are replayed.
        if head.to_ascii_lowercase().contains("groupcache-peek:") {
            continue;
        }
        heads.push(head);
    }
    let before = [
        target.stats().await.peer_auth_failures,
        asker.stats().await.peer_auth_failures,
    ];
    let mut delivered = std::collections::BTreeMap::new();
    let intended_addr = addr(&intended.addr);
    for head in &heads {
        // Delivered late, once, to the replica it was meant for: accepted.
        let (status, text) = raw::answer(
            &mut raw::send(intended_addr, head, b"").await.unwrap(),
            PATIENCE,
        )
        .await;
        assert_eq!(status, 200, "{text}");
        for _ in 0..10 {
            for replica in [intended_addr, target_addr, addr(&asker.addr)] {
                let mut socket = raw::send(replica, head, b"").await.unwrap();
                let (status, _) = raw::answer(&mut socket, PATIENCE).await;
                *delivered.entry(status).or_insert(0) += 1;
            }
        }
    }
    let replays = 10 * heads.len() as u64;
    figures.push(format!(
        "replays: {} to the intended replica and {} to each other, answered {delivered:?}",
        replays, replays
    ));
    assert_eq!(
        delivered.get(&401),
        Some(&(3 * replays as usize)),
        "{delivered:?}"
    );
    assert_eq!(intended.stats().await.peer_auth_replays, replays);
    assert_eq!(target.stats().await.peer_auth_failures - before[0], replays);
    assert_eq!(asker.stats().await.peer_auth_failures - before[1], replays);

    for figure in &figures {
        println!("attack: {figure}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_authentication_stalled_bodies_take_no_more_than_the_body_budget() {
    check_fd_limit();
    // Without a signature to check first, a PUT's body is read: within the 64 MiB budget of
    // bodies being read (four of 16 MiB), and within the peer timeout.
    let target = ProcessReplica::start(BINARY, &["--peer-timeout-ms", "3000"]);
    let target_addr = addr(&target.addr);
    let baseline = resident(target.pid);
    let head = format!(
        "PUT /_groupcache/{GROUP}/k HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        16 * MIB
    );
    let mut sockets = open_all(target_addr, &head, b"").await;
    // The ones past the budget are answered 503 at once; the others are being read until the
    // peer timeout answers them 408. On a loaded machine that 408 can come while this loop still
    // waits on the others (each unanswered socket costs it 500 ms): such a socket was read all
    // the same.
    let mut shed = 0;
    let mut reading = Vec::new();
    let mut timed_out = std::collections::BTreeMap::new();
    for mut socket in sockets.drain(..) {
        let mut byte = [0; 1];
        let peeked = tokio::time::timeout(Duration::from_millis(500), socket.peek(&mut byte)).await;
        if matches!(peeked, Ok(Ok(1))) {
            let (status, text) = raw::answer(&mut socket, PATIENCE).await;
            match status {
                503 => shed += 1,
                408 => *timed_out.entry(status).or_insert(0) += 1,
                _ => panic!("expected 503 or 408: {text}"),
            }
        } else {
            reading.push(socket);
        }
    }
    let read = reading.len() + timed_out.values().sum::<usize>();
    // Fill the bodies being read to all but their last byte. A write fails once the replica's
    // deadline closed the body; its answer, read below, says so.
    let chunk = vec![0x0a_u8; MIB as usize];
    for socket in &mut reading {
        for _ in 0..15 {
            let _ = socket.write_all(&chunk).await;
        }
        let _ = socket.write_all(&chunk[..chunk.len() - 1]).await;
    }
    // Honest gets are answered meanwhile.
    for i in 0..20 {
        let key = format!("open-{i}");
        let url = format!("http://{target_addr}/_groupcache/{GROUP}/{key}");
        let response = target.http().get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let peak = resident(target.pid);
    for socket in &mut reading {
        let (status, _) = raw::answer(socket, PATIENCE).await;
        *timed_out.entry(status).or_insert(0) += 1;
    }
    let growth = peak.saturating_sub(baseline);
    println!(
        "attack: open replica, stalled 16 MiB bodies x{CONNECTIONS}: {shed} shed (503), {} read \
         then {timed_out:?}, +{} KiB resident",
        read,
        growth >> 10
    );
    assert_eq!(read, 4, "the budget holds four bodies of 16 MiB");
    assert_eq!(shed, CONNECTIONS - 4);
    assert_eq!(timed_out.get(&408), Some(&4), "{timed_out:?}");
    // The budget, plus the connections' buffers and tasks (1,000 x 32 KiB).
    assert!(growth < 96 * MIB, "resident memory grew by {growth} bytes");
}

/// Connections of the slow-reader attack: the 4,200, more than `Server::max_connections`
/// (4,096). The test process and the replica each hold one end, within scripts/test.sh's 8,192.
const SLOW_READERS: usize = 4200;
/// Each slow reader's pipelined peer gets.
const PIPELINED: usize = 64;
/// The attacked replica's values, 64 KiB, as in the issue.
const SLOW_VALUE_BYTES: usize = 64 << 10;
/// How long the attack is held once every connection is open, while honest gets are timed.
const SLOW_HOLD: Duration = Duration::from_secs(5);

/// Peak `VmRSS` of `pid`, sampled every 20 ms until `stop` turns true.
fn sample_peak(pid: u32, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = resident(pid);
        let mut every = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = every.tick() => peak = peak.max(resident(pid)),
                _ = stop.changed() => return peak.max(resident(pid)),
            }
        }
    })
}

/// One slow-reader attack on a fresh pair of replicas, with peer authentication on or off: the
/// figure to print.
async fn slow_readers(auth: bool) -> String {
    let value_bytes = SLOW_VALUE_BYTES.to_string();
    let mut flags = vec!["--value-bytes", value_bytes.as_str()];
    if auth {
        flags.extend(["--secret", SECRET]);
    }
    let target = ProcessReplica::start(BINARY, &flags);
    let asker = Arc::new(ProcessReplica::start(BINARY, &flags));
    let urls = [target.url.as_str(), asker.url.as_str()];
    for replica in [&target, &*asker] {
        replica.set_peers(&urls).await;
    }
    let target_addr = addr(&target.addr);
    // 100 keys (6.4 MiB of values), asked over and over: once they are cached, the target's
    // resident memory grows only by what the attack costs. Enough gets to outlast the attack.
    let keys = keys_owned_by(&urls, &target.url, "honest-", 100);
    let keys = keys.iter().cycle().take(1_000_000).cloned().collect();
    let mut honest = Honest::start_padded(asker.clone(), keys, SLOW_VALUE_BYTES);
    honest.answered(300).await;
    let before = asker.stats().await;
    let baseline = resident(target.pid);
    let (stop_sampling, sampling) = watch::channel(false);
    let peak = sample_peak(target.pid, sampling);
    let from = honest.started();

    // Each connection pipelines its gets (unsigned: with authentication on, each is refused)
    // and never reads an answer.
    let head: String = (0..PIPELINED)
        .map(|i| format!("GET /_groupcache/{GROUP}/slow-{i} HTTP/1.1\r\nhost: x\r\n\r\n"))
        .collect();
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(SLOW_READERS);
    for _ in 0..SLOW_READERS {
        sockets.push(
            raw::send_unread(target_addr, &head, 4096)
                .await
                .expect("connect"),
        );
    }
    let opened = started.elapsed();
    // Held: honest gets keep being answered meanwhile.
    let held = Instant::now();
    honest.answered(20).await;
    let answered_at = honest.started();
    // A measuring period, not a synchronisation: the attack is held this long.
    tokio::time::sleep(SLOW_HOLD.saturating_sub(held.elapsed())).await;
    let during_hold = honest.started() - answered_at;
    let _ = stop_sampling.send(true);
    let peak = peak.await.unwrap();
    drop(sockets);
    let mut latencies = honest.latencies_from(from);
    let answered = honest.finish().await;
    let after = asker.stats().await;
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    let worst = latencies.last().copied().unwrap_or_default();
    let growth = peak.saturating_sub(baseline);
    let figure = format!(
        "slow readers x{SLOW_READERS} ({PIPELINED} pipelined gets of 64 KiB each, auth {}): \
         opened in {opened:.1?}, +{} KiB resident at peak, {} honest gets during the attack \
         ({during_hold} in the {SLOW_HOLD:?} hold), p99 {p99:.1?}, worst {worst:.1?}, \
         {} peer errors, {} local loads",
        if auth { "on" } else { "off" },
        growth >> 10,
        latencies.len(),
        after.peer_errors - before.peer_errors,
        after.local_loads - before.local_loads,
    );
    println!("attack: {figure}");
    assert!(answered > 0);
    assert!(
        during_hold >= 100,
        "{figure}: honest gets were not served while the attack was held"
    );
    assert_eq!(
        after.peer_errors, before.peer_errors,
        "{figure}: honest peer requests failed or were refused"
    );
    assert_eq!(
        after.local_loads, before.local_loads,
        "{figure}: the asker loaded locally: its peer requests failed"
    );
    assert!(p99 < Duration::from_millis(50), "{figure}: honest p99");
    // The target: 64 MiB. Answers waiting for the readers are bounded by
    // `Server::max_unsent_bytes` (default 32 MiB), but a large value's answer is sent from the
    // cache's own buffer (`encoded_get_response`): what waits is mostly shared with the cache.
    // The rest is the connections' own buffers (hyper's 8 KiB read and 8 KiB write buffers,
    // for those not closed yet). Measured: +0.2-0.6 MiB with authentication on, +25 MiB off
    // (+89-95 MiB when each answer was a copy, +402 MiB before the unsent budget).
    let bound = 64 * MIB;
    assert!(
        growth < bound,
        "{figure}: resident memory grew by {growth} bytes, over {bound}"
    );
    figure
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_pin_neither_memory_nor_connections() {
    let soft = fd_limit();
    assert!(
        soft >= SLOW_READERS as u64 + 256,
        "open-file limit {soft} is too low for {SLOW_READERS} connections: run `ulimit -n 8192` \
         (scripts/test.sh does)"
    );
    slow_readers(false).await;
    slow_readers(true).await;
}

/// A batch body decoded whole before its keys were counted: 4 MiB of one-byte keys became 1.4
/// million `String`s (about 80 MB) before the 413. Now the keys are counted while the body is
/// scanned, and a body longer than the largest honest batch (`max_batch_keys` keys of
/// `max_key_bytes`) is refused before a byte of it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_tiny_keys_are_refused_before_they_are_decoded() {
    let target = ProcessReplica::start(BINARY, &["--peer-timeout-ms", "3000"]);
    let target_addr = addr(&target.addr);
    let baseline = resident(target.pid);
    let (stop, stopped) = watch::channel(false);
    let peak = sample_peak(target.pid, stopped);
    // The largest body the default limits admit for a batch: 1024 keys of 4096 bytes, framed.
    let limit = 1024 * (4096 + 11);
    // Each key: tag 2 as length-delimited (0x12), length 1, one byte.
    let body: Vec<u8> = [0x12, 1, b'k'].repeat(limit / 3);
    let head = |length: usize| {
        format!(
            "POST /_groupcache/{GROUP}/_batch HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n"
        )
    };
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(
            raw::send(target_addr, &head(body.len()), &body)
                .await
                .expect("send"),
        );
    }
    for socket in &mut sockets {
        let (status, text) = raw::answer(socket, PATIENCE).await;
        assert_eq!(status, 413, "too many keys: {text}");
    }
    // A body declared longer than any batch: refused before it is sent (the old limit, 16 MiB
    // and 4 KiB, read it all, or waited the peer timeout for it).
    let started = Instant::now();
    let mut long = raw::send(target_addr, &head(16 * MIB as usize), b"")
        .await
        .expect("send");
    let (status, text) = raw::answer(&mut long, PATIENCE).await;
    assert_eq!(status, 413, "longer than any batch: {text}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    // Honest gets are answered.
    for i in 0..20 {
        let url = format!("http://{target_addr}/_groupcache/{GROUP}/batch-{i}");
        let response = target.http().get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let _ = stop.send(true);
    let growth = peak.await.unwrap().saturating_sub(baseline);
    println!(
        "attack: 4 batches of {} one-byte keys: +{} KiB resident at the peak",
        body.len() / 3,
        growth >> 10
    );
    // The four bodies (4 x 4 MiB), read before the scan, and little more.
    assert!(growth < 40 * MIB, "resident memory grew by {growth} bytes");
}

/// Values of the batch attacks: 256 KiB, as in the finding.
const BATCH_VALUE_BYTES: usize = 256 << 10;
/// Keys per batch: the most a batch may carry (the default `max_batch_keys`).
const BATCH_KEYS: usize = 1024;
/// The replica's cache budget (the default `cache_bytes`).
const CACHE_BUDGET: u64 = 72 * MIB;
/// What resident memory may grow by, beyond the cache budget: the finding's target.
const BATCH_MARGIN: u64 = 64 * MIB;

/// The value the replica binary loads for `key`, padded to `BATCH_VALUE_BYTES`.
fn padded_value(key: &str) -> String {
    let mut value = value_for(key, 0);
    value.extend(std::iter::repeat_n('.', BATCH_VALUE_BYTES - value.len()));
    value
}

/// An owner answered a batch's keys all at once: an honest `get_many` of 1,024 values of 256
/// KiB had it hold every loaded value until the last was in, then copy 16 MiB of them into an
/// answer (about 290 MB resident, on a replica of 72 MiB). Now its answers are cut to the
/// room it has, the keys that did not fit answered "ask again": every value still reaches the
/// caller, and the owner's memory stays within its budget and 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_batch_of_large_values_stays_within_the_owners_budget() {
    let value_bytes = BATCH_VALUE_BYTES.to_string();
    let target = ProcessReplica::start(BINARY, &["--value-bytes", value_bytes.as_str()]);
    // The asker in this process (a replica's control port sends no answer of 256 MiB): its own
    // loads give short values, so a key it loaded rather than had from the owner shows.
    let asker_url = "http://127.0.0.1:1";
    let asker = groupcache_rs::Groupcache::builder(GROUP, asker_url, TestLoader::new())
        .build()
        .expect("a cache");
    let urls = [target.url.as_str(), asker_url];
    target.set_peers(&urls).await;
    asker.set_peers(urls).expect("valid peer URLs");
    let keys = keys_owned_by(&urls, &target.url, "large-", BATCH_KEYS + 1);
    // A first get, so that the asker knows the owner takes batches.
    let first = asker.get(&keys[BATCH_KEYS]).await.expect("a first get");
    assert!(first == padded_value(&keys[BATCH_KEYS]));
    let keys = &keys[..BATCH_KEYS];
    let before = target.stats().await;
    let baseline = resident(target.pid);
    let (stop, stopped) = watch::channel(false);
    let peak = sample_peak(target.pid, stopped);
    let values = asker.get_many(keys).await;
    let _ = stop.send(true);
    let growth = peak.await.unwrap().saturating_sub(baseline);
    assert_eq!(values.len(), keys.len());
    let wrong: Vec<String> = keys
        .iter()
        .zip(&values)
        .filter_map(|(key, value)| match value {
            Ok(value) if *value == padded_value(key) => None,
            Ok(value) => Some(format!("{key}: a wrong value of {} bytes", value.len())),
            Err(error) => Some(format!("{key}: {error:?}")),
        })
        .collect();
    let after = target.stats().await;
    println!(
        "attack: honest get_many of {BATCH_KEYS} values of 256 KiB: +{} KiB resident on the \
         owner at the peak, {} values wrong or missing; {} requests to the owner, {} loads there",
        growth >> 10,
        wrong.len(),
        after.server_requests - before.server_requests,
        after.local_loads - before.local_loads,
    );
    assert!(
        wrong.is_empty(),
        "{} wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let bound = CACHE_BUDGET + BATCH_MARGIN;
    assert!(
        growth < bound,
        "resident memory grew by {growth} bytes, over {bound}"
    );
}

/// Batches of 1,024 keys of 256 KiB each, sent at once on raw connections and asking for
/// answers of any size: each took a slot and held every value it loaded (four: +807 MiB). Now
/// every answer takes its room from the replica's budget of batch answers, more than it holds
/// here; what does not fit is answered "ask again", unloaded. Honest gets are answered
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_hostile_batches_stay_within_the_budget() {
    use prost::Message;
    // More than the budget of answers in flight holds (32 MiB: eight of 4 MiB).
    const BATCHES: usize = 12;
    let value_bytes = BATCH_VALUE_BYTES.to_string();
    let target = ProcessReplica::start(BINARY, &["--value-bytes", value_bytes.as_str()]);
    let target_addr = addr(&target.addr);
    let baseline = resident(target.pid);
    let (stop, stopped) = watch::channel(false);
    let peak = sample_peak(target.pid, stopped);
    let mut sockets = Vec::new();
    for batch in 0..BATCHES {
        let request = groupcache_rs_pb::BatchRequest {
            group: Some(GROUP.into()),
            keys: (0..BATCH_KEYS)
                .map(|i| format!("hostile-{batch}-{i}"))
                .collect(),
            max_answer_bytes: Some(u64::MAX),
            max_wait_ms: None,
        }
        .encode_to_vec();
        let head = format!(
            "POST /_groupcache/{GROUP}/_batch HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            request.len()
        );
        sockets.push(raw::send(target_addr, &head, &request).await.expect("send"));
    }
    // Honest gets are answered while the batches are served.
    for i in 0..20 {
        let key = format!("honest-{i}");
        let url = format!("http://{target_addr}/_groupcache/{GROUP}/{key}");
        let response = target.http().get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.unwrap();
        let answer = groupcache_rs_pb::GetResponse::decode(body).expect("a GetResponse");
        let value = answer.value.unwrap_or_default();
        assert!(
            value == padded_value(&key).as_bytes(),
            "{key}: a wrong value"
        );
    }
    let mut answered = 0;
    for socket in &mut sockets {
        let (status, text) = raw::answer(socket, PATIENCE).await;
        assert_eq!(status, 200, "{}", &text[..text.len().min(200)]);
        answered += text.len();
    }
    let _ = stop.send(true);
    let growth = peak.await.unwrap().saturating_sub(baseline);
    println!(
        "attack: {BATCHES} batches of {BATCH_KEYS} values of 256 KiB at once: {} KiB answered, \
         +{} KiB resident at the peak",
        answered >> 10,
        growth >> 10
    );
    let bound = CACHE_BUDGET + BATCH_MARGIN;
    assert!(
        growth < bound,
        "resident memory grew by {growth} bytes, over {bound}"
    );
}
