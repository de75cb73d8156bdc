//! Issue 17's membership changes with replicas as processes (`tests/src/bin/replica.rs`), under
//! steady traffic from two clients that check every answer:
//!
//! - a scale-up 3 → 4 with 20,000 warm keys: the keys that move are handed off from their old
//!   owner's memory, at most 10 % of them reloaded from the source, and no request fails;
//! - a graceful scale-down 4 → 3 by SIGTERM: the leaving replica leaves its own ring first, the
//!   others drop it (the test is their discovery), it keeps answering peers and its own clients
//!   until its drain ends; the same bounds;
//! - a rolling restart of all three replicas, one at a time (the new one joins, the old one is
//!   SIGTERMed, leaves and drains, then dies), with 20,000 warm keys: at most 10 % of the keys
//!   reloaded over the whole restart, and no request fails;
//! - an owner SIGKILLed while both others ask for its keys: about one load per key cluster-wide
//!   (at most 1.1) until discovery drops it, with hot caches too small for its share, and no
//!   caller error.
//!
//! The in-process versions, without traffic, are in `membership.rs`; the soak (`soak.rs`) mixes
//! joins, leaves and kills with writes under looser bounds. Every figure is printed (run with
//! `--nocapture`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use groupcache_tests::process::{ProcessReplica, owners, value_for};
use tokio::task::JoinSet;

const BINARY: &str = env!("CARGO_BIN_EXE_replica");

/// Warm keys in the scale-up and scale-down tests (issue 17's run had 20,000).
const KEYS: usize = 20_000;
/// Every value is padded to this size (1 KiB, as in issue 17's runs).
const VALUE_BYTES: usize = 1024;
/// The loader's time per load.
const LOAD_MS: u64 = 1;
/// Concurrent clients of the steady traffic.
const CLIENTS: usize = 2;
/// Gets in flight at once while the test itself asks for every key.
const SWEEP_CONCURRENCY: usize = 64;
/// Bounds on every traffic loop, whatever happens.
const TRAFFIC_LIMIT: Duration = Duration::from_secs(120);
const TRAFFIC_MAX_GETS: u64 = 2_000_000;

fn start(extra: &[&str]) -> Arc<ProcessReplica> {
    let value_bytes = VALUE_BYTES.to_string();
    let load_ms = LOAD_MS.to_string();
    let mut flags = vec!["--value-bytes", &value_bytes, "--load-ms", &load_ms];
    flags.extend_from_slice(extra);
    Arc::new(ProcessReplica::start(BINARY, &flags))
}

fn urls(replicas: &[Arc<ProcessReplica>]) -> Vec<String> {
    replicas.iter().map(|r| r.url.clone()).collect()
}

/// What the loader returns for `key` (the source of truth never changes in these tests).
fn expected(key: &str) -> Vec<u8> {
    let mut value = value_for(key, 0).into_bytes();
    value.resize(VALUE_BYTES.max(value.len()), b'.');
    value
}

/// One get, checked: `None` if it returned the loader's value, else what went wrong.
async fn checked_get(replica: &ProcessReplica, key: &str) -> Option<String> {
    match replica.get(key).await {
        Ok((200, body)) if body[..] == expected(key)[..] => None,
        Ok((200, body)) => Some(format!(
            "{key} on {}: a wrong value {:?}",
            replica.url,
            String::from_utf8_lossy(&body[..body.len().min(40)])
        )),
        Ok((status, body)) => Some(format!(
            "{key} on {}: {status} {}",
            replica.url,
            String::from_utf8_lossy(&body)
        )),
        Err(error) => Some(format!("{key} on {}: {error}", replica.url)),
    }
}

/// Gets every key from `replica`, [`SWEEP_CONCURRENCY`] at a time; the failures.
async fn sweep(replica: &Arc<ProcessReplica>, keys: &Arc<Vec<String>>) -> Vec<String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..SWEEP_CONCURRENCY {
        let (replica, keys, next) = (replica.clone(), keys.clone(), next.clone());
        tasks.spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(key) = keys.get(i) else {
                    return failures;
                };
                failures.extend(checked_get(&replica, key).await);
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        failures.extend(done.expect("a sweep task"));
    }
    failures
}

/// Loads per key, summed over `replicas`.
async fn loads(replicas: &[Arc<ProcessReplica>]) -> HashMap<String, u64> {
    let mut loads = HashMap::new();
    for replica in replicas {
        for (key, n) in replica.stats().await.loads_per_key {
            *loads.entry(key).or_default() += n;
        }
    }
    loads
}

fn total(loads: &HashMap<String, u64>) -> u64 {
    loads.values().sum()
}

/// Makes `replicas` one cluster and warms it with [`KEYS`] keys named `{prefix}{i}`, each
/// loaded once by its owner: the keys, and the loads so far.
async fn warm_cluster(replicas: &[Arc<ProcessReplica>], prefix: &str) -> (Arc<Vec<String>>, u64) {
    let all = urls(replicas);
    for replica in replicas {
        replica.set_peers(&all).await;
    }
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("{prefix}{i}")).collect());
    let failures = sweep(&replicas[0], &keys).await;
    assert!(
        failures.is_empty(),
        "warming: {:?}",
        &failures[..3.min(failures.len())]
    );
    let warm = total(&loads(replicas).await);
    assert_eq!(warm, KEYS as u64, "each key loaded once, by its owner");
    (keys, warm)
}

/// splitmix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// Steady traffic: [`CLIENTS`] clients, each getting a random key from a random replica of
/// `targets` (which the test changes as the membership does), one get at a time, every answer
/// checked.
struct Traffic {
    stop: Arc<AtomicBool>,
    gets: Arc<AtomicU64>,
    clients: JoinSet<Vec<String>>,
}

impl Traffic {
    fn start(targets: Arc<Mutex<Vec<Arc<ProcessReplica>>>>, keys: Arc<Vec<String>>) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let gets = Arc::new(AtomicU64::new(0));
        let mut clients = JoinSet::new();
        for client in 0..CLIENTS {
            let (targets, keys) = (targets.clone(), keys.clone());
            let (stop, gets) = (stop.clone(), gets.clone());
            clients.spawn(async move {
                let mut rng = Rng(0x5EED + client as u64);
                let deadline = Instant::now() + TRAFFIC_LIMIT;
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && gets.fetch_add(1, Ordering::Relaxed) < TRAFFIC_MAX_GETS
                {
                    let replica = {
                        let targets = targets.lock().unwrap();
                        targets[rng.below(targets.len())].clone()
                    };
                    let key = &keys[rng.below(keys.len())];
                    failures.extend(checked_get(&replica, key).await);
                }
                failures
            });
        }
        Traffic {
            stop,
            gets,
            clients,
        }
    }

    /// Waits until the clients have sent `n` more gets: traffic is flowing.
    async fn flowing(&self, n: u64) {
        let target = self.gets.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + TRAFFIC_LIMIT;
        while self.gets.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the traffic stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the clients; the gets they sent and their failures.
    async fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        while let Some(done) = self.clients.join_next().await {
            failures.extend(done.expect("a traffic client"));
        }
        (self.gets.load(Ordering::Relaxed), failures)
    }
}

/// Issue 17's "cold after every join", as processes under traffic: 6,043 moved keys were all
/// reloaded before the hand-off (100 %). The new replica joins its own ring first, then the
/// others add it; every key is asked for afterwards, so every moved key is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_from_3_to_4_under_traffic_reloads_at_most_a_tenth_of_the_moved_keys() {
    let replicas: Vec<Arc<ProcessReplica>> = (0..4).map(|_| start(&[])).collect();
    let four = urls(&replicas);
    let (keys, warm) = warm_cluster(&replicas[..3], "up-").await;

    let targets = Arc::new(Mutex::new(replicas[..3].to_vec()));
    let traffic = Traffic::start(targets.clone(), keys.clone());
    traffic.flowing(200).await;
    let started = Instant::now();
    for replica in replicas.iter().rev() {
        replica.set_peers(&four).await;
    }
    targets.lock().unwrap().push(replicas[3].clone());
    let sweep_failures = sweep(&replicas[1], &keys).await;
    traffic.flowing(200).await;
    let (gets, failures) = traffic.stop().await;

    let moved = owners(&four, &keys)
        .iter()
        .filter(|owner| **owner == replicas[3].url)
        .count() as u64;
    let reloads = total(&loads(&replicas).await) - warm;
    let new = replicas[3].stats().await;
    println!(
        "scale-up 3 -> 4, {KEYS} warm keys: {moved} moved, {reloads} reloaded ({:.1} %); hand-off \
         hits {}, misses {}; {gets} traffic gets and {KEYS} swept in {:.1?} after the join, \
         failed: {} + {}",
        100.0 * reloads as f64 / moved as f64,
        new.handoff_hits,
        new.handoff_misses,
        started.elapsed(),
        failures.len(),
        sweep_failures.len(),
    );
    assert!(
        failures.is_empty() && sweep_failures.is_empty(),
        "{failures:?} {sweep_failures:?}"
    );
    assert!(moved > KEYS as u64 / 8, "test setup: {moved} keys moved");
    assert!(
        reloads * 10 <= moved,
        "{reloads} of {moved} moved keys reloaded on a join"
    );
}

/// A graceful scale-down by SIGTERM, as processes under traffic: the leaving replica leaves its
/// own ring (the replica binary calls `Groupcache::leave`, as the Kubernetes example does) and
/// says so; then its discovery (the test) takes it out of the others' rings; it keeps serving
/// (the traffic still reaches it, and the new owners peek its keys) until its drain ends, then it
/// dies. Before the hand-off, every key it owned was loaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_scale_down_from_4_to_3_by_sigterm_reloads_at_most_a_tenth_of_the_moved_keys() {
    let replicas: Vec<Arc<ProcessReplica>> = (0..4).map(|_| start(&[])).collect();
    let four = urls(&replicas);
    let (keys, warm) = warm_cluster(&replicas, "down-").await;

    let targets = Arc::new(Mutex::new(replicas.clone()));
    let traffic = Traffic::start(targets.clone(), keys.clone());
    traffic.flowing(200).await;
    let leaving = replicas[1].clone();
    let survivors: Vec<Arc<ProcessReplica>> = replicas
        .iter()
        .filter(|r| !Arc::ptr_eq(r, &leaving))
        .cloned()
        .collect();
    let three = urls(&survivors);
    let started = Instant::now();
    tokio::task::block_in_place(|| leaving.terminate_and_wait_left());
    for replica in &survivors {
        replica.set_peers(&three).await;
    }
    // The drain: the traffic still reaches the leaving replica meanwhile.
    let sweep_failures = sweep(&survivors[0], &keys).await;
    traffic.flowing(200).await;
    targets
        .lock()
        .unwrap()
        .retain(|r| !Arc::ptr_eq(r, &leaving));
    let (gets, failures) = traffic.stop().await;
    let reloads = total(&loads(&replicas).await) - warm;
    leaving.kill(); // the drain ends
    let drained = started.elapsed();

    let moved = owners(&four, &keys)
        .iter()
        .filter(|owner| **owner == leaving.url)
        .count() as u64;
    let mut hits = 0;
    for replica in &survivors {
        hits += replica.stats().await.handoff_hits;
    }
    println!(
        "scale-down 4 -> 3 by SIGTERM, {KEYS} warm keys: {moved} moved, {reloads} reloaded \
         ({:.1} %); hand-off hits {hits}; {gets} traffic gets and {KEYS} swept in a drain of \
         {drained:.1?}, failed: {} + {}",
        100.0 * reloads as f64 / moved as f64,
        failures.len(),
        sweep_failures.len(),
    );
    assert!(
        failures.is_empty() && sweep_failures.is_empty(),
        "{failures:?} {sweep_failures:?}"
    );
    assert!(moved > KEYS as u64 / 8, "test setup: {moved} keys moved");
    assert!(
        reloads * 10 <= moved,
        "{reloads} of {moved} moved keys reloaded on a graceful leave"
    );
}

/// A rolling restart as Kubernetes runs one (`maxSurge` 1, `maxUnavailable` 0), as processes
/// under traffic: each of the three replicas in turn is replaced. The new one starts and joins
/// (its own ring first, then the others add it); the old one is SIGTERMed, leaves its own ring,
/// is dropped from the others' and drains (still answering its clients and the new owners'
/// peeks), then dies. Every key is asked for after each step, so every key that moved is. Before
/// the hand-off, each step reloaded every key the new replica took over and every key the old
/// one gave away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_replica_under_traffic_reloads_at_most_a_tenth_of_the_keys() {
    let mut live: Vec<Arc<ProcessReplica>> = (0..3).map(|_| start(&[])).collect();
    let (keys, warm) = warm_cluster(&live, "roll-").await;

    let targets = Arc::new(Mutex::new(live.clone()));
    let traffic = Traffic::start(targets.clone(), keys.clone());
    traffic.flowing(200).await;
    let started = Instant::now();
    let mut sweep_failures = Vec::new();
    let mut gone_loads = 0;
    let mut hits = 0;
    for step in 0..3 {
        let old = live.remove(0);
        let new = start(&[]);
        live.push(new.clone());
        let with_old: Vec<String> = std::iter::once(old.url.clone())
            .chain(urls(&live))
            .collect();
        // The new replica joins: its own ring first, then everyone's, the old one's last.
        for replica in live.iter().rev().chain([&old]) {
            replica.set_peers(&with_old).await;
        }
        targets.lock().unwrap().push(new.clone());
        sweep_failures.extend(sweep(&live[0], &keys).await);
        // The old one is told to stop: it leaves its own ring, discovery drops it from the
        // others', and it drains.
        tokio::task::block_in_place(|| old.terminate_and_wait_left());
        let without = urls(&live);
        for replica in &live {
            replica.set_peers(&without).await;
        }
        sweep_failures.extend(sweep(&live[1], &keys).await);
        traffic.flowing(100).await;
        targets.lock().unwrap().retain(|r| !Arc::ptr_eq(r, &old));
        let stats = old.stats().await;
        gone_loads += total(&loads(std::slice::from_ref(&old)).await);
        hits += stats.handoff_hits;
        old.kill(); // the drain ends
        println!(
            "step {step}: {:.1?} since the restart began",
            started.elapsed()
        );
    }
    let (gets, failures) = traffic.stop().await;
    for replica in &live {
        hits += replica.stats().await.handoff_hits;
    }
    let reloads = gone_loads + total(&loads(&live).await) - warm;
    println!(
        "rolling restart of 3 replicas under traffic, {KEYS} warm keys: {reloads} reloaded \
         ({:.1} %); hand-off hits {hits}; {gets} traffic gets and 6 sweeps of every key in \
         {:.1?}, failed: {} + {}",
        100.0 * reloads as f64 / KEYS as f64,
        started.elapsed(),
        failures.len(),
        sweep_failures.len(),
    );
    assert!(
        failures.is_empty() && sweep_failures.is_empty(),
        "{:?} {:?}",
        &failures[..3.min(failures.len())],
        &sweep_failures[..3.min(sweep_failures.len())]
    );
    assert!(hits > 0, "test setup: nothing was handed off");
    assert!(
        reloads * 10 <= KEYS as u64,
        "{reloads} of {KEYS} keys reloaded over a rolling restart"
    );
}

/// Issue 17's "a dead owner makes the source take the whole load": an owner is SIGKILLed while
/// both others ask for its keys (1 KiB each, more than their 1 MiB hot caches hold), until
/// discovery drops it. Each survivor loaded every key itself and evicted it before it was asked
/// again: 7.9 loads per key in 10 s. Now the key's successor loads it once for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_killed_under_traffic_costs_at_most_1_1_loads_per_key_and_no_errors() {
    const ITS_KEYS: usize = 3_000;
    const GETS_PER_KEY: u64 = 6;
    let replicas: Vec<Arc<ProcessReplica>> =
        (0..3).map(|_| start(&["--hot-bytes", "1048576"])).collect();
    let all = urls(&replicas);
    for replica in &replicas {
        replica.set_peers(&all).await;
    }
    let (dead, survivors) = (replicas[2].clone(), replicas[..2].to_vec());
    let candidates: Vec<String> = (0..ITS_KEYS * 4).map(|i| format!("dead-{i}")).collect();
    let its_keys: Arc<Vec<String>> = Arc::new(
        candidates
            .iter()
            .zip(owners(&all, &candidates))
            .filter(|(_, owner)| *owner == dead.url)
            .map(|(key, _)| key.clone())
            .take(ITS_KEYS)
            .collect(),
    );
    assert!(its_keys.len() >= ITS_KEYS * 9 / 10, "test setup");
    let failures = sweep(&survivors[0], &its_keys).await;
    assert!(
        failures.is_empty(),
        "warming: {:?}",
        &failures[..3.min(failures.len())]
    );
    assert_eq!(
        total(&loads(&survivors).await),
        0,
        "the owner loaded its keys"
    );

    let targets = Arc::new(Mutex::new(survivors.clone()));
    let traffic = Traffic::start(targets, its_keys.clone());
    traffic.flowing(200).await;
    dead.kill();
    let killed = Instant::now();
    traffic.flowing(GETS_PER_KEY * its_keys.len() as u64).await;
    let outage = killed.elapsed();
    let during = total(&loads(&survivors).await);
    // Discovery drops it.
    let two = urls(&survivors);
    for replica in &survivors {
        replica.set_peers(&two).await;
    }
    let (gets, failures) = traffic.stop().await;

    let per_key = during as f64 / its_keys.len() as f64;
    let mut suspicions = Vec::new();
    let mut successor_loads = Vec::new();
    for replica in &survivors {
        let stats = replica.stats().await;
        suspicions.push(stats.peer_suspicions);
        successor_loads.push(stats.successor_loads);
    }
    println!(
        "owner killed: {} of its keys asked {gets} times from 2 survivors over {outage:.1?} of \
         outage: {during} loads ({per_key:.3} per key); suspicions {suspicions:?}, successor \
         loads {successor_loads:?}; failed {}",
        its_keys.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..5.min(failures.len())]
    );
    assert!(
        per_key <= 1.1,
        "{per_key:.3} loads per key of the dead owner's keys"
    );
}
