//! Issue 25: an owner that stops answering without closing its connections (a process frozen
//! with SIGSTOP, as a CPU-throttled or paused pod is) costs the healthy replicas about a second,
//! not the whole service; a slow owner that still answers is not taken for dead.
//!
//! Replicas are processes (`tests/src/bin/replica.rs`), so a freeze stops every thread of the
//! owner while its kernel keeps accepting connections.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use groupcache_tests::netns::{self, Network};
use groupcache_tests::process::{ProcessReplica, keys_owned_by, owners};

const BINARY: &str = env!("CARGO_BIN_EXE_replica");

/// Concurrent clients on each healthy replica.
const WORKERS: usize = 16;

/// What the clients of the healthy replicas saw in one phase.
#[derive(Debug, Default)]
struct Phase {
    /// When each request was answered, from the phase's start.
    answered_at: Vec<Duration>,
    served: usize,
    errors: usize,
    latencies: Vec<Duration>,
    /// The keys asked for.
    asked: HashSet<String>,
}

impl Phase {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    }
}

/// `WORKERS` clients on each of `replicas`, each asking for uniformly random `keys` one after
/// another (a closed loop, as a service's request handlers do) for `length`.
async fn traffic(
    replicas: &[Arc<ProcessReplica>],
    keys: &Arc<Vec<String>>,
    length: Duration,
) -> Phase {
    traffic_of(WORKERS, replicas, keys, length).await
}

/// [`traffic`] from `clients` clients on each replica.
async fn traffic_of(
    clients: usize,
    replicas: &[Arc<ProcessReplica>],
    keys: &Arc<Vec<String>>,
    length: Duration,
) -> Phase {
    let start = Instant::now();
    let deadline = start + length;
    let seed = Arc::new(AtomicU64::new(0x9e37_79b9_7f4a_7c15));
    let mut workers = Vec::new();
    for replica in replicas {
        for _ in 0..clients {
            let (replica, keys, seed) = (replica.clone(), keys.clone(), seed.clone());
            workers.push(tokio::spawn(async move {
                let mut phase = Phase::default();
                let mut state = seed.fetch_add(0x2545_f491_4f6c_dd1d, Ordering::Relaxed) | 1;
                while Instant::now() < deadline {
                    // xorshift: uniform enough, and the same sequence every run.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let key = &keys[(state % keys.len() as u64) as usize];
                    let started = Instant::now();
                    match replica.get(key).await {
                        Ok((200, _)) => phase.served += 1,
                        _ => phase.errors += 1,
                    }
                    phase.latencies.push(started.elapsed());
                    phase.answered_at.push(start.elapsed());
                    phase.asked.insert(key.clone());
                }
                phase
            }));
        }
    }
    let mut all = Phase::default();
    for worker in workers {
        let phase = worker.await.expect("worker");
        all.served += phase.served;
        all.errors += phase.errors;
        all.latencies.extend(phase.latencies);
        all.answered_at.extend(phase.answered_at);
        all.asked.extend(phase.asked);
    }
    all
}

/// Two process replicas started with `flags`, each with both in its ring; and their URLs.
async fn pair(flags: &[&str]) -> (Vec<ProcessReplica>, Vec<String>) {
    let replicas: Vec<ProcessReplica> = (0..2)
        .map(|_| ProcessReplica::start(BINARY, flags))
        .collect();
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    for replica in &replicas {
        replica.set_peers(&urls).await;
    }
    (replicas, urls)
}

/// `n` keys starting with `prefix` that the second of `urls` owns.
fn owned_by_second(urls: &[String], prefix: &str, n: usize) -> Vec<String> {
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    keys_owned_by(&urls, urls[1], prefix, n)
}

/// Loads per key on the replicas, summed.
async fn loads(replicas: &[Arc<ProcessReplica>]) -> HashMap<String, u64> {
    let mut loads = HashMap::new();
    for replica in replicas {
        for (key, n) in replica.stats().await.loads_per_key {
            *loads.entry(key).or_default() += n;
        }
    }
    loads
}

/// The scenario around a fault of the third of three replicas: uniformly random keys of
/// all owners from 16 clients on each of the two healthy ones, a control phase, then the fault.
struct Scenario {
    replicas: Vec<Arc<ProcessReplica>>,
    urls: Vec<String>,
    keys: Arc<Vec<String>>,
    owner_of: Vec<String>,
}

/// How long the control phase and the fault last.
const CONTROL: Duration = Duration::from_secs(3);
const FAULT: Duration = Duration::from_secs(6);

impl Scenario {
    /// Peers set, every key loaded once on its owner, every peer heard from (heartbeats need
    /// that), and the control phase run.
    async fn start(replicas: Vec<ProcessReplica>) -> (Scenario, Phase) {
        let replicas: Vec<Arc<ProcessReplica>> = replicas.into_iter().map(Arc::new).collect();
        let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
        for replica in &replicas {
            replica.set_peers(&urls).await;
        }
        let keys: Arc<Vec<String>> = Arc::new((0..3000).map(|i| format!("k{i}")).collect());
        let owner_of = owners(&urls, &keys);
        let scenario = Scenario {
            replicas,
            urls,
            keys,
            owner_of,
        };
        for key in scenario.keys.iter() {
            let (status, _) = scenario.healthy()[0].get(key).await.expect("warm-up get");
            assert_eq!(status, 200);
        }
        let control = traffic(scenario.healthy(), &scenario.keys, CONTROL).await;
        assert_eq!(control.errors, 0, "errors without a fault");
        (scenario, control)
    }

    fn healthy(&self) -> &[Arc<ProcessReplica>] {
        &self.replicas[..2]
    }

    /// Traffic through the fault (which the caller has just caused), and the faulted owner's
    /// keys' loads per key on the healthy replicas meanwhile.
    async fn through_fault(&self) -> (Phase, f64, usize) {
        let before = loads(self.healthy()).await;
        let faulted = traffic(self.healthy(), &self.keys, FAULT).await;
        let after = loads(self.healthy()).await;
        let orphans: Vec<&String> = self
            .keys
            .iter()
            .zip(&self.owner_of)
            .filter(|(key, owner)| **owner == self.urls[2] && faulted.asked.contains(*key))
            .map(|(key, _)| key)
            .collect();
        let reloads: u64 = orphans
            .iter()
            .map(|key| {
                after.get(*key).copied().unwrap_or(0) - before.get(*key).copied().unwrap_or(0)
            })
            .sum();
        (
            faulted,
            reloads as f64 / orphans.len().max(1) as f64,
            orphans.len(),
        )
    }

    /// What users rely on through the fault: no errors, no stall once the owner is suspected,
    /// p99 and the longest wait bounded by the detection, and its keys loaded about once.
    fn check(&self, fault: &str, control: &Phase, faulted: &Phase, per_key: f64, orphans: usize) {
        let control_rate = control.served as f64 / CONTROL.as_secs_f64();
        let rate = faulted.served as f64 / FAULT.as_secs_f64();
        let p99 = faulted.percentile(0.99);
        let max = faulted.percentile(1.0);
        eprintln!(
            "{fault}: control {control_rate:.0}/s (p99 {:?}); {rate:.0}/s, {:.1} % of control, \
             p99 {p99:?}, max {max:?}, {} errors; {orphans} of the owner's keys asked, \
             {per_key:.3} loads each",
            control.percentile(0.99),
            rate / control_rate * 100.0,
            faulted.errors,
        );
        assert_eq!(faulted.errors, 0, "errors through the {fault}");
        // The healthy replicas' throughput against the control: a floor, not the 70 %
        // target, which is the benchmark's (`groupcache-bench freeze`, 10 s windows: 101 % and
        // 103 %). Here a 6 s window holds the 1.3 s stall (at most about 78 %), and on two shared
        // cores the phases' rates vary more than the fault costs (63-99 % measured). Before the
        // detector: 0.0 %.
        assert!(
            rate >= control_rate / 4.0,
            "the healthy replicas served {:.1} % of the control through the {fault}",
            rate / control_rate * 100.0
        );
        // The healthy replicas never stall once the owner is suspected: every half second from
        // the second one on serves requests. (Before the detector, every client waited out
        // `peer_timeout`.)
        let slice = Duration::from_millis(500);
        for n in 4..(FAULT.as_millis() / slice.as_millis()) as u32 {
            let (from, to) = (slice * n, slice * (n + 1));
            let served = faulted
                .answered_at
                .iter()
                .filter(|at| (from..to).contains(at))
                .count();
            assert!(
                served > 0,
                "nothing served between {from:?} and {to:?} of the {fault}"
            );
        }
        assert!(
            p99 <= Duration::from_millis(1500),
            "p99 {p99:?} through the {fault}"
        );
        assert!(
            max <= Duration::from_millis(2500),
            "a request waited {max:?} through the {fault}"
        );
        assert!(orphans > 0);
        assert!(per_key <= 1.1, "{per_key:.3} loads per key of the owner's");
    }

    /// How long after the owner answers again it is trusted: a key it owns that nobody loaded
    /// yet is fetched from it (a peer load on the asker), not from its successor.
    async fn trusted_again(&self) -> Duration {
        let healed = Instant::now();
        let asker = &self.healthy()[0];
        let urls: Vec<&str> = self.urls.iter().map(String::as_str).collect();
        for key in keys_owned_by(&urls, &self.urls[2], "fresh-", 100) {
            let peer_loads = asker.stats().await.peer_loads;
            let (status, _) = asker.get(&key).await.expect("get after the fault");
            assert_eq!(status, 200);
            if asker.stats().await.peer_loads > peer_loads {
                return healed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the owner is not asked again 5 s after the fault ended");
    }
}

/// One owner frozen with SIGSTOP, as a CPU-throttled or paused pod is: its kernel accepts
/// connections, nothing answers. Before the failure detector, every client that touched one of
/// its keys waited the whole `peer_timeout` (0.0 % of the control served here, 8 requests a
/// second); now it is suspected within about a second, the requests waiting on it go to each
/// key's successor, its keys are loaded about once there, and once it answers again it is
/// trusted within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_owner_costs_the_healthy_replicas_about_a_second() {
    // No hot cache: every get of the frozen owner's keys must reach an owner or a successor.
    let flags = ["--load-ms", "2", "--hot-bytes", "0"];
    let replicas = (0..3)
        .map(|_| ProcessReplica::start(BINARY, &flags))
        .collect();
    let (scenario, control) = Scenario::start(replicas).await;
    scenario.replicas[2].freeze();
    let (frozen, per_key, orphans) = scenario.through_fault().await;
    scenario.replicas[2].resume();
    let trusted = scenario.trusted_again().await;
    scenario.check("freeze", &control, &frozen, per_key, orphans);
    eprintln!("trusted again {trusted:?} after the resume");
    // The "within a second of answering" (6-67 ms measured).
    assert!(
        trusted <= Duration::from_millis(1000),
        "trusted again only after {trusted:?}"
    );
}

/// One owner black-holed: every packet between it and the other replicas dropped (nftables in
/// network namespaces), the connections already pooled to it included, as a node that lost its
/// network is. New connections wait out `connect_timeout`; requests on pooled ones would wait
/// out `peer_timeout` without the failure detector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_owner_costs_the_healthy_replicas_about_a_second() {
    if !netns::available() {
        return;
    }
    // Declared before the replicas, so dropped after them: processes die before their namespaces.
    let mut network = Network::new(3);
    let replicas = network
        .nodes
        .iter()
        .map(|node| {
            let listen = format!("{}:7070", node.addr);
            let flags = ["--listen", &listen, "--load-ms", "2", "--hot-bytes", "0"];
            ProcessReplica::start_in_netns(&node.netns, BINARY, &flags)
        })
        .collect();
    let (scenario, control) = Scenario::start(replicas).await;
    network.partition(&[2], &[0, 1]);
    let (holed, per_key, orphans) = scenario.through_fault().await;
    network.heal();
    let trusted = scenario.trusted_again().await;
    scenario.check("black hole", &control, &holed, per_key, orphans);
    eprintln!("trusted again {trusted:?} after the heal");
    // Counted from the heal, before which the owner cannot answer: the first packets after it
    // can wait on TCP's backed-off retransmissions of the pooled connections (0.12-0.36 s
    // measured; 2.5 s leaves room for a loaded machine).
    assert!(
        trusted <= Duration::from_millis(2500),
        "trusted again only after {trusted:?}"
    );
}

/// A slow owner (each load takes 3 s, three times the detection time) answers its heartbeats:
/// it is never suspected, and its keys are loaded once, by it. Under traffic: while eight cold
/// keys load on it, two clients of the asker keep getting warm keys of both replicas (no hot
/// cache, so the owner's go to it) at the rate of a control phase before, without errors. (Two,
/// not 16: this file's tests run beside each other, and the freeze tests measure throughput.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_owner_that_answers_heartbeats_is_not_taken_for_dead() {
    let (replicas, urls) = pair(&["--load-ms", "3000", "--hot-bytes", "0"]).await;
    let replicas: Vec<Arc<ProcessReplica>> = replicas.into_iter().map(Arc::new).collect();
    let asker = &replicas[0];
    // Warm keys of both replicas, loaded at once (3 s); the owner is heard from, so it is sent
    // heartbeats from now on.
    let all: Vec<&str> = urls.iter().map(String::as_str).collect();
    let mut warm = owned_by_second(&urls, "warm-", 32);
    warm.extend(keys_owned_by(&all, all[0], "mine-", 32));
    let values = asker.get_many(&warm).await.expect("warm keys");
    assert!(
        values.iter().all(Result::is_ok),
        "a warm key failed: {values:?}"
    );
    let warm = Arc::new(warm);
    let control = traffic_of(2, &replicas[..1], &warm, Duration::from_millis(1500)).await;

    let cold = owned_by_second(&urls, "own-", 8);
    let started = Instant::now();
    let slow: Vec<_> = cold
        .iter()
        .map(|key| {
            let (asker, key) = (asker.clone(), key.clone());
            tokio::spawn(async move { asker.get(&key).await })
        })
        .collect();
    // Within the loads' 3 s: every request of the phase is asked while they are in flight.
    let during = traffic_of(2, &replicas[..1], &warm, Duration::from_millis(2500)).await;
    for (key, get) in cold.iter().zip(slow) {
        let (status, value) = get.await.expect("task").expect("slow get");
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&value).starts_with(&format!("value:{key}#")));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the owner's loads were waited for"
    );
    let rate = |phase: &Phase, secs: f64| phase.served as f64 / secs;
    let (control_rate, during_rate) = (rate(&control, 1.5), rate(&during, 2.5));
    eprintln!(
        "warm gets while the owner loads slowly: {during_rate:.0}/s, control {control_rate:.0}/s, p99 {:?} (control {:?})",
        during.percentile(0.99),
        control.percentile(0.99),
    );
    assert_eq!(during.errors, 0, "errors while the owner loads slowly");
    assert!(
        during_rate >= control_rate / 2.0,
        "the healthy traffic slowed to {during_rate:.0}/s from {control_rate:.0}/s"
    );
    assert!(
        during.percentile(0.99) <= Duration::from_millis(500),
        "p99 {:?} while the owner loads slowly",
        during.percentile(0.99)
    );
    let stats = asker.stats().await;
    assert_eq!(stats.peer_suspicions, 0, "the slow owner was suspected");
    assert_eq!(stats.successor_loads, 0);
    let owner = replicas[1].stats().await;
    for key in &cold {
        assert_eq!(
            stats.loads_per_key.get(key),
            None,
            "{key} loaded on the asker too"
        );
        assert_eq!(owner.loads_per_key.get(key), Some(&1), "{key} on the owner");
    }
}

/// A cold batch longer than `peer_timeout`: 1,024 keys of one owner at 320 ms per load (32 at a
/// time: 10.24 s, against a 10 s `peer_timeout`). The owner answers what it has by the asker's
/// deadline, marks the rest pending, and is asked again for those: every key loaded once, by the
/// owner, which is never suspected. Before, the batch timed out, the owner was suspected, and its
/// successor loaded the whole batch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_batch_longer_than_the_peer_timeout_is_loaded_once() {
    let (replicas, urls) = pair(&["--load-ms", "320"]).await;
    let asker = &replicas[0];
    // Heard from, so that batches go to it (it advertises them) and heartbeats too.
    let warm = owned_by_second(&urls, "warm-", 1).remove(0);
    assert_eq!(asker.get(&warm).await.expect("warm").0, 200);

    let keys: Vec<String> = owned_by_second(&urls, "cold-", 1024);
    let started = Instant::now();
    let values = asker.get_many(&keys).await.expect("the batch is answered");
    eprintln!("1,024 cold keys at 320 ms each in {:?}", started.elapsed());
    for (key, value) in keys.iter().zip(&values) {
        let value = value.as_ref().unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(
            value.starts_with(&format!("value:{key}#")),
            "{key}: {value}"
        );
    }
    let (asker_stats, owner_stats) = (asker.stats().await, replicas[1].stats().await);
    assert_eq!(asker_stats.peer_suspicions, 0, "the owner was suspected");
    let asker_loads = keys
        .iter()
        .filter(|k| asker_stats.loads_per_key.contains_key(*k))
        .count();
    assert_eq!(asker_loads, 0, "keys loaded on the asker");
    let loads: u64 = keys
        .iter()
        .map(|k| owner_stats.loads_per_key.get(k).copied().unwrap_or(0))
        .sum();
    assert_eq!(loads, 1024, "loads on the owner, 1.00 per key");
}

/// `remove`s and `set`s while a replica that left the ring drops every packet (its address
/// black-holed, as a node that lost its network is): they do not wait for it. The control is the
/// same writes, side by side, while the departed replica still answers. Before, every write
/// waited out the connect timeout, or `peer_timeout` on a pooled connection, for a replica whose
/// answer was never returned anyway. The first write after the fault may wait up to the detection
/// time (a departed replica heard from lately is waited for that long); none waits longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removes_do_not_wait_for_a_departed_replica_that_drops_packets() {
    if !netns::available() {
        return;
    }
    let mut network = Network::new(3);
    let replicas: Vec<ProcessReplica> = network
        .nodes
        .iter()
        .map(|node| {
            let listen = format!("{}:7070", node.addr);
            ProcessReplica::start_in_netns(&node.netns, BINARY, &["--listen", &listen])
        })
        .collect();
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    for replica in &replicas {
        replica.set_peers(&urls).await;
    }
    let writer = &replicas[0];
    // Every peer has answered: connections pooled, heard from.
    for i in 0..30 {
        assert_eq!(writer.get(&format!("warm-{i}")).await.expect("warm").0, 200);
    }
    // Replica 2 leaves the others' rings: a departed replica, still sent every write.
    for replica in &replicas[..2] {
        replica.set_peers(&urls[..2]).await;
    }
    // 200 writes one after another, `set`s if `set`, else `remove`s: their latencies, sorted.
    let writes = |prefix: &'static str, set: bool| async move {
        let mut latencies = Vec::new();
        for i in 0..200 {
            let key = format!("{prefix}{i}");
            let started = Instant::now();
            let status = if set {
                writer.set(&key, b"new").await.expect("set")
            } else {
                writer.remove(&key).await.expect("remove")
            };
            assert_eq!(status, 200, "write {key}");
            latencies.push(started.elapsed());
        }
        latencies.sort_unstable();
        latencies
    };
    let control = (
        writes("control-r-", false).await,
        writes("control-s-", true).await,
    );
    network.partition(&[2], &[0, 1]);
    let holed = (
        writes("holed-r-", false).await,
        writes("holed-s-", true).await,
    );
    network.heal();
    let p99 = |latencies: &[Duration]| latencies[latencies.len() * 99 / 100 - 1];
    for (write, control, holed) in [
        ("remove", &control.0, &holed.0),
        ("set", &control.1, &holed.1),
    ] {
        eprintln!(
            "{write}: p50 {:?} p99 {:?} max {:?} with the departed replica answering; \
             p50 {:?} p99 {:?} max {:?} with it black-holed",
            control[control.len() / 2],
            p99(control),
            control[control.len() - 1],
            holed[holed.len() / 2],
            p99(holed),
            holed[holed.len() - 1]
        );
        assert!(
            p99(holed) <= p99(control) * 3 + Duration::from_millis(50),
            "{write} p99 {:?} against {:?}",
            p99(holed),
            p99(control)
        );
        assert!(
            holed[holed.len() - 1] <= Duration::from_millis(2500),
            "a {write} waited {:?} for the departed replica",
            holed[holed.len() - 1]
        );
    }
}

/// A `set` and a `remove` of keys whose owner freezes while they wait on it: each is given up
/// once the failure detector suspects the owner (about a second), and the owner gets the writes
/// as repairs once it answers. Before, a `set` already sent to the owner waited out
/// `peer_timeout` (10 s), although a `remove` left at the suspicion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_an_owner_that_freezes_wait_about_a_second() {
    let (replicas, urls) = pair(&[]).await;
    let writer = &replicas[0];
    // Heard from: sent heartbeats from now on.
    let warm = owned_by_second(&urls, "warm-", 1).remove(0);
    assert_eq!(writer.get(&warm).await.expect("warm").0, 200);
    let keys = owned_by_second(&urls, "frozen-", 2);
    replicas[1].freeze();
    let timed = |write: &'static str, key: &String| {
        let key = key.clone();
        async move {
            let started = Instant::now();
            let status = match write {
                "set" => writer.set(&key, b"new").await,
                _ => writer.remove(&key).await,
            };
            (write, status, started.elapsed())
        }
    };
    let (set, remove) = tokio::join!(timed("set", &keys[0]), timed("remove", &keys[1]));
    replicas[1].resume();
    for (write, status, took) in [&set, &remove] {
        eprintln!("{write} of a frozen owner's key: {status:?} after {took:?}");
    }
    for (write, status, took) in [set, remove] {
        // The control client gives up after 10 s: a write that waited out `peer_timeout`.
        let status = status.unwrap_or_else(|e| panic!("the {write} waited past 10 s: {e}"));
        assert_eq!(status, 500, "the {write} reports the owner's failure");
        assert!(
            took <= Duration::from_millis(2500),
            "the {write} waited {took:?} for the frozen owner"
        );
    }
}

/// A slow link (300 ms each way, through a delay proxy) to an owner whose load takes 1.5 s, both
/// longer than a quarter of the detection time and the load longer than all of it: the owner is
/// alive, answers its heartbeats through the same link, and is never taken for dead. Its value is
/// loaded once, by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_to_a_slow_owner_is_not_taken_for_dead() {
    use groupcache_rs::Groupcache;
    use groupcache_tests::delay_proxy::DelayProxy;
    use groupcache_tests::{GROUP, Replica, TestLoader, key_owned};

    let proxy = DelayProxy::bind().await.expect("bind the proxy");
    let owner_loader = TestLoader {
        delay: Duration::from_millis(1500),
        ..TestLoader::new()
    };
    let owner = Replica::start(|_| Groupcache::builder(GROUP, proxy.url(), owner_loader.clone()));
    proxy.set_target(owner.addr);
    let asker_loader = TestLoader::new();
    let asker = Replica::start(|url| {
        Groupcache::builder(GROUP, url, asker_loader.clone()).peer_timeout(Duration::from_secs(5))
    });
    let urls = [proxy.url(), asker.url.clone()];
    owner.cache.set_peers(&urls).unwrap();
    asker.cache.set_peers(&urls).unwrap();
    // Heard from once at full speed: from then on it is sent heartbeats when quiet.
    let warm = key_owned(&asker.cache, &proxy.url(), "warm-");
    asker.cache.get(&warm).await.unwrap();

    proxy.set_delay(Duration::from_millis(300));
    let key = key_owned(&asker.cache, &proxy.url(), "slow-");
    let started = Instant::now();
    let value = asker.cache.get(&key).await.unwrap();
    let took = started.elapsed();
    assert_eq!(value, owner_loader.value_for(&key), "the owner's value");
    assert!(
        took >= Duration::from_millis(2100),
        "{took:?}: not through the slow link"
    );
    let stats = asker.cache.stats();
    assert_eq!(
        stats.peer_suspicions, 0,
        "the slow owner was taken for dead"
    );
    assert_eq!(
        (stats.peer_errors, stats.local_loads, stats.successor_loads),
        (0, 0, 0)
    );
    assert_eq!(owner_loader.loads.of(&key), 1);
}

/// A single get of a key whose load (2 s) takes longer than `peer_timeout` (1 s): the owner says
/// it is still loading before the asker gives up, and is asked again; the key is loaded once, by
/// the owner, which is never suspected. Before, the asker timed out and loaded the key itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_longer_than_the_peer_timeout_is_waited_for_not_loaded_twice() {
    let flags = ["--load-ms", "2000", "--peer-timeout-ms", "1000"];
    let (replicas, urls) = pair(&flags).await;
    let key = owned_by_second(&urls, "long-", 1).remove(0);
    let asker = &replicas[0];
    let (status, value) = asker.get(&key).await.expect("the get is answered");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&value).starts_with(&format!("value:{key}#")));
    let (asker_stats, owner_stats) = (asker.stats().await, replicas[1].stats().await);
    assert_eq!(
        asker_stats.loads_per_key.get(&key),
        None,
        "loaded on the asker too"
    );
    assert_eq!(owner_stats.loads_per_key.get(&key), Some(&1));
    assert_eq!(asker_stats.peer_suspicions, 0);
    assert_eq!(asker_stats.peer_errors, 0);
}
