//! Soak: three replica processes on loopback under mixed get/set/remove traffic while a fourth
//! joins and leaves every few seconds (leaving gracefully, or killed first, like a crash), for a
//! bounded time. It proves, over the whole run:
//!
//! - read-your-writes (issue 23): the loaders read a source of truth that changes
//!   (`groupcache_tests::history::source`); a write increments the key's version there, then
//!   `remove`s the key or `set`s the new version's value; every get and write is recorded with the
//!   membership changes, and the whole history is checked (`groupcache_tests::history::checker`):
//!   a get that starts after a write was acknowledged while every ring agreed returns that
//!   write's version or a newer one, a write that failed or overlapped a membership change may be
//!   missed only within the bound (`hot_max_age`, the default 60 s here, so for the rest of a
//!   short run), and no get returns a version that was never written (the keys that are only read
//!   stay at version 0);
//! - no unexplained errors: every `get` returns 200; the only errors are those of requests sent
//!   to, or `set`/`remove` calls that needed, the replica that was leaving at that moment;
//! - resident memory stays within the budgets: each replica's growth over its idle start is at
//!   most [`RSS_FACTOR`] times its main and hot budgets plus [`RSS_OVERHEAD`];
//! - loads per key stay bounded: at most one per key, plus one per `remove` of it, plus two per
//!   membership change that moved it, plus the gets of it that met a leaving owner (see
//!   [`load_bound`]); a thundering herd or a reload storm on membership changes breaks this.
//!
//! It prints its figures at the end (run with `--nocapture`). The default run lasts 20 s (CI);
//! a longer one, by command:
//!
//! ```text
//! SOAK_SECS=600 cargo test --release -p groupcache-tests --test soak -- --nocapture
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use groupcache_tests::history::checker::{
    self, Config, EventKind, Fault, Op, OpKind, ReadCall, ReadResult, WriteCall,
};
use groupcache_tests::history::clients::{self, Recorder};
use groupcache_tests::history::source::Source;
use groupcache_tests::history::{self};
use groupcache_tests::process::{ProcessReplica, ProcessStats, owners};
use tokio::sync::RwLock;
use tokio::task::JoinSet;

const BINARY: &str = env!("CARGO_BIN_EXE_replica");

/// Each replica's main cache budget.
const MAIN_BYTES: u64 = 8 << 20;
/// Each replica's hot cache budget.
const HOT_BYTES: u64 = 1 << 20;
/// Every value, loaded or set, is padded to this size.
const VALUE_BYTES: usize = 1024;
/// What the cache charges per entry besides key and value (README, "Caches"): 60 bytes and
/// the key's one-byte length prefix.
const ENTRY_OVERHEAD: u64 = 61;
/// The loader's time per load: long enough that concurrent gets of a popular key share a load.
const LOAD_MS: u64 = 5;
/// The written keys' loads take longer: a write lands while a load of its key, started by the
/// get sent with it, is in flight, and the get sent once it returned comes well before that
/// load ends.
const WRITTEN_LOAD_MS: u64 = 20;
/// The written keys' prefix.
const WRITTEN_PREFIX: &str = "soak-w";

/// Keys that are only read: their value is always the loader's. The first [`POPULAR_KEYS`] get
/// most of the traffic, so they are promoted to hot caches and would show a herd at once.
const READ_KEYS: usize = 15_000;
const POPULAR_KEYS: usize = 2_000;
/// Keys that are also set and removed, each by one driver task only (so the writes of a key never
/// overlap: a `set` of an older version cannot land after a newer one).
const WRITE_KEYS: usize = 1_000;
/// Concurrent driver tasks.
const TASKS: usize = 8;
/// A membership change (a join, or a leave) this often.
const CHANGE_EVERY: Duration = Duration::from_secs(3);
/// The run's length unless `SOAK_SECS` says otherwise.
const DEFAULT_SECS: u64 = 20;

/// Resident memory may grow over the idle replica's by this much times its cache budgets: the
/// cache charges 0.95 to 1.02 times the memory its entries take (README, "Caches"), and the
/// allocator keeps some freed memory of evicted and replaced entries (the hot cache churns all
/// the time) in its free lists.
const RSS_FACTOR: f64 = 1.3;
/// ... plus this, for what grows with the run but is not cached: connection buffers (a few dozen
/// connections between replicas and from the test), tasks, and the replica binary's
/// `loads_per_key` map (one entry per key loaded, 16,000 keys: about 1.5 MiB). Measured: the
/// growth beyond the cached bytes was 3 to 5 MiB (20 s and 300 s runs).
const RSS_OVERHEAD: u64 = 8 << 20;

fn padded(mut value: String) -> String {
    let pad = VALUE_BYTES.saturating_sub(value.len());
    value.extend(std::iter::repeat_n('.', pad));
    value
}

/// The replicas' `hot_max_age`, the builder's default (the replica binary is not told one): the
/// bound within which a get may miss a write that failed or overlapped a membership change.
const HOT_MAX_AGE: Duration = Duration::from_secs(60);
/// Added to the bound: a load that read the source just before a write stores its value a load
/// later, and the test's clock reads operations' ends late on a loaded machine.
const SLACK: Duration = Duration::from_secs(1);

/// A replica with its fate.
struct Member {
    replica: ProcessReplica,
    /// Set before it leaves or is killed: errors on its account are explained from then on.
    departing: AtomicBool,
}

/// What the driver tasks and the membership changer share.
struct Shared {
    keys: Vec<String>,
    /// Replicas the drivers may send requests to.
    live: Mutex<Vec<Arc<Member>>>,
    /// Every replica ever started, by URL (the latest one, should a port be reused).
    by_url: Mutex<HashMap<String, Arc<Member>>>,
    /// Writes hold it shared; a change of peer lists holds it exclusively, so no write is in
    /// flight while the replicas' rings disagree.
    write_gate: RwLock<()>,
    /// The source of truth the loaders read and the writes write.
    source: Arc<Source>,
    /// Every get and write, and every membership change, for the checker.
    recorder: Arc<Recorder>,
    /// Odd while a replica is leaving (from the first peer-list update or the kill, whichever
    /// comes first, to when both are done).
    leaving: AtomicU64,
    /// Per written key (indexed from 0 at `READ_KEYS`): `remove`s of it, tried.
    removes: Vec<AtomicU64>,
    /// Per key: gets that overlapped a leave.
    leave_gets: Vec<AtomicU64>,
}

impl Shared {
    fn pick(&self, rng: &mut Rng) -> Arc<Member> {
        let live = self.live.lock().unwrap();
        live[rng.below(live.len())].clone()
    }

    /// Whether a peer error in `body` names a replica that was leaving.
    fn names_departing_peer(&self, body: &str) -> bool {
        let by_url = self.by_url.lock().unwrap();
        by_url.iter().any(|(url, member)| {
            member.departing.load(Ordering::SeqCst) && body.contains(&format!("peer {url}:"))
        })
    }
}

/// splitmix64: a small deterministic generator (the seed is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One driver task's tally.
#[derive(Default)]
struct Tally {
    gets: u64,
    sets: u64,
    removes: u64,
    get_micros: Vec<u32>,
    write_micros: Vec<u32>,
    /// Errors with their explanation, by category.
    explained: HashMap<&'static str, u64>,
    /// Everything else: each fails the test.
    unexplained: Vec<String>,
}

impl Tally {
    fn explain(&mut self, category: &'static str) {
        *self.explained.entry(category).or_default() += 1;
    }

    /// Adds `other`'s counts to this one's.
    fn absorb(&mut self, other: Tally) {
        self.gets += other.gets;
        self.sets += other.sets;
        self.removes += other.removes;
        self.get_micros.extend(other.get_micros);
        self.write_micros.extend(other.write_micros);
        for (category, n) in other.explained {
            *self.explained.entry(category).or_default() += n;
        }
        self.unexplained.extend(other.unexplained);
    }
}

async fn drive(task: usize, seed: u64, shared: Arc<Shared>, deadline: Instant) -> Tally {
    let mut rng = Rng(seed ^ (task as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut tally = Tally::default();
    // This task's written keys.
    let own: Vec<usize> = (READ_KEYS..READ_KEYS + WRITE_KEYS)
        .filter(|k| k % TASKS == task)
        .collect();
    while Instant::now() < deadline {
        let roll = rng.below(100);
        if roll < 10 {
            let k = own[rng.below(own.len())];
            write(&shared, task, &mut rng, &mut tally, k, roll < 5).await;
        } else {
            // Half the traffic on the popular keys, a third spread over every read key (so the
            // main caches fill up to near their budgets even in a short run), the rest on the
            // written keys.
            let k = match roll {
                10..55 => rng.below(POPULAR_KEYS),
                55..90 => rng.below(READ_KEYS),
                _ => READ_KEYS + rng.below(WRITE_KEYS),
            };
            get(&shared, task, &mut rng, &mut tally, k).await;
        }
    }
    tally
}

async fn get(shared: &Shared, task: usize, rng: &mut Rng, tally: &mut Tally, k: usize) {
    let member = shared.pick(rng);
    get_from(shared, task, member, tally, k).await;
}

/// A get of the `k`th key from `member`, recorded.
async fn get_from(shared: &Shared, task: usize, member: Arc<Member>, tally: &mut Tally, k: usize) {
    let key = &shared.keys[k];
    let leaving = shared.leaving.load(Ordering::SeqCst);
    let start = shared.recorder.now();
    let started = Instant::now();
    let answer = member.replica.get(key).await;
    let elapsed = started.elapsed();
    let end = shared.recorder.now();
    if leaving % 2 == 1 || shared.leaving.load(Ordering::SeqCst) != leaving {
        shared.leave_gets[k].fetch_add(1, Ordering::Relaxed);
    }
    tally.gets += 1;
    // Whether the value is one the cache may serve is the checker's to say; errors are told
    // apart here.
    let result = match answer {
        Ok((200, body)) => clients::read_result(key, &body),
        Ok((status, body)) => {
            let body = String::from_utf8_lossy(&body);
            let error = format!("get({key}) on {}: {status} {body}", member.replica.url);
            tally.unexplained.push(error.clone());
            ReadResult::Error(error)
        }
        Err(error) => {
            let error = format!("get({key}) on {}: {error}", member.replica.url);
            if member.departing.load(Ordering::SeqCst) {
                tally.explain("get sent to a replica as it was killed");
            } else {
                tally.unexplained.push(error.clone());
            }
            ReadResult::Error(error)
        }
    };
    if !matches!(result, ReadResult::Error(_)) {
        tally.get_micros.push(elapsed.as_micros() as u32);
    }
    shared.recorder.record(Op {
        client: task,
        replica: member.replica.url.clone(),
        start,
        end,
        kind: OpKind::Read {
            call: ReadCall::Get,
            results: vec![(key.clone(), result)],
        },
    });
}

/// Two writes of the `k`th key, a `remove` then a `set` or `remove`, with a get of it on each
/// side of the second: one sent before it, which starts a load (the first write removed the
/// key) that the second write overtakes, and one once the second returned, which must not be
/// answered by that load (nor by any copy from before the write).
async fn write(
    shared: &Shared,
    task: usize,
    rng: &mut Rng,
    tally: &mut Tally,
    k: usize,
    set: bool,
) {
    let key = &shared.keys[k];
    write_once(shared, task, shared.pick(rng), tally, k, false).await;
    let reads = shared.source.reads(key);
    let mut probe = Tally::default();
    {
        let before = get_from(shared, task, shared.pick(rng), &mut probe, k);
        tokio::pin!(before);
        // The second write starts once the get's load has read the source (the version from
        // before the write), so that it lands while that load is in flight; or once the get
        // returned, if another get had loaded the key meanwhile.
        let answered = tokio::select! {
            () = &mut before => true,
            () = shared.source.read_since(key, reads) => false,
        };
        let second = write_once(shared, task, shared.pick(rng), tally, k, set);
        if answered {
            second.await;
        } else {
            tokio::join!(before, second);
        }
    }
    tally.absorb(probe);
    get_from(shared, task, shared.pick(rng), tally, k).await;
}

/// A write of the `k`th key, as a write-through application makes one: the source of truth
/// first, then `set` (the new version's value) or `remove`.
async fn write_once(
    shared: &Shared,
    task: usize,
    member: Arc<Member>,
    tally: &mut Tally,
    k: usize,
    set: bool,
) {
    let key = &shared.keys[k];
    let _gate = shared.write_gate.read().await;
    let replica = &member.replica;
    let start = shared.recorder.now();
    let version = shared.source.bump(key).await.expect("the in-memory source");
    let source_done = shared.recorder.now();
    // Through the control client directly, for the error's text (keys need no escaping).
    let (call, request) = if set {
        tally.sets += 1;
        let url = format!("{}/set/{key}", replica.url);
        let value = padded(history::value(key, version));
        (WriteCall::Set, replica.http().put(url).body(value))
    } else {
        tally.removes += 1;
        shared.removes[k - READ_KEYS].fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/remove/{key}", replica.url);
        (WriteCall::Remove, replica.http().delete(url))
    };
    let started = Instant::now();
    let result = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            Ok((status, response.text().await.unwrap_or_default()))
        }
        Err(error) => Err(error),
    };
    let end = shared.recorder.now();
    tally
        .write_micros
        .push(started.elapsed().as_micros() as u32);
    let what = if set { "set" } else { "remove" };
    let outcome = match result {
        Ok((200, _)) => Ok(()),
        Err(error) => {
            if member.departing.load(Ordering::SeqCst) {
                tally.explain("set/remove sent to a replica as it was killed");
            } else {
                let error = format!("{what}({key}) on {}: {error}", replica.url);
                tally.unexplained.push(error);
            }
            Err(error.to_string())
        }
        Ok((status, body)) => {
            if status == 500 && shared.names_departing_peer(&body) {
                tally.explain("set/remove met the replica that was leaving");
            } else {
                let error = format!("{what}({key}) on {}: {status} {body}", replica.url);
                tally.unexplained.push(error);
            }
            Err(format!("{status} {body}"))
        }
    };
    shared.recorder.record(Op {
        client: task,
        replica: replica.url.clone(),
        start,
        end,
        kind: OpKind::Write {
            key: key.clone(),
            version,
            call,
            source_done,
            outcome,
            tries: 1,
        },
    });
}

/// The flags of a replica whose loader reads the source of truth at `source`.
fn replica_flags(source: &str) -> Vec<String> {
    [
        ("--value-bytes", VALUE_BYTES.to_string()),
        ("--main-bytes", MAIN_BYTES.to_string()),
        ("--hot-bytes", HOT_BYTES.to_string()),
        ("--load-ms", LOAD_MS.to_string()),
        ("--source", source.to_owned()),
        ("--slow-keys", WRITTEN_PREFIX.to_owned()),
        ("--slow-load-ms", WRITTEN_LOAD_MS.to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

fn start_replica(source: &str) -> ProcessReplica {
    let flags = replica_flags(source);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    ProcessReplica::start(BINARY, &flags)
}

/// `GET /stats`, or `None` if the replica does not answer (it is being killed).
async fn try_stats(replica: &ProcessReplica) -> Option<ProcessStats> {
    let response = replica
        .http()
        .get(format!("{}/stats", replica.url))
        .send()
        .await
        .ok()?;
    serde_json::from_slice(&response.bytes().await.ok()?).ok()
}

/// The most loads `key` may have cost over the run, whatever the interleaving:
///
/// - 1: its first load, by its owner, which keeps it (no main cache evicts: the test checks that
///   each replica's share of the key space fits its budget);
/// - 1 per `remove` (successful or not): the owner's next get loads it again;
/// - 2 per membership change that moved it (a join that gave it to the new replica, the leave
///   that gave it back): while rings disagree the old and the new owner may each load it once;
/// - if it was ever moved, 1 per get of it that overlapped a leave: a get whose owner is dead
///   (or leaves under it) is loaded locally, and a hot cache under churn may not keep that copy.
///
/// Keys a change did not move cost nothing for it: every ring sends them to the same owner.
fn load_bound(removes: u64, moves: u64, leave_gets: u64) -> u64 {
    1 + removes + 2 * moves + if moves > 0 { leave_gets } else { 0 }
}

/// A replica's memory over the run.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    idle_rss: u64,
    /// The largest in the run's first half, to tell a plateau from a leak.
    first_half_rss: u64,
    max_rss: u64,
    max_main: u64,
    max_hot: u64,
}

impl Memory {
    fn sample(&mut self, stats: &ProcessStats) {
        self.max_rss = self.max_rss.max(stats.rss_bytes);
        self.max_main = self.max_main.max(stats.main_bytes);
        self.max_hot = self.max_hot.max(stats.hot_bytes);
    }
}

/// What the membership changer did.
#[derive(Default)]
struct Changes {
    joins: u64,
    graceful_leaves: u64,
    crashes: u64,
    /// Every fourth replica that joined: its URL, its last counters, its memory.
    joined: Vec<(String, ProcessStats, Memory)>,
}

/// How long after a crash discovery tells the survivors: meanwhile they still list the dead
/// replica, fail over to local loads, and `set`/`remove` calls that need it fail.
const CRASH_DETECTION: Duration = Duration::from_millis(500);

async fn change_membership(
    shared: Arc<Shared>,
    base: Vec<Arc<Member>>,
    deadline: Instant,
) -> Changes {
    let base_urls: Vec<String> = base.iter().map(|m| m.replica.url.clone()).collect();
    let mut changes = Changes::default();
    let mut fourth: Option<(Arc<Member>, Memory)> = None;
    let mut next = Instant::now() + CHANGE_EVERY;
    loop {
        tokio::time::sleep_until(next.min(deadline).into()).await;
        if Instant::now() >= deadline {
            break;
        }
        next += CHANGE_EVERY;
        match fourth.take() {
            None => {
                let source = shared.source.url().to_owned();
                let replica = tokio::task::spawn_blocking(move || start_replica(&source))
                    .await
                    .expect("starting a replica");
                let member = Arc::new(Member {
                    replica,
                    departing: AtomicBool::new(false),
                });
                let mut memory = Memory::default();
                let idle = member.replica.stats().await;
                memory.idle_rss = idle.rss_bytes;
                memory.sample(&idle);
                shared
                    .by_url
                    .lock()
                    .unwrap()
                    .insert(member.replica.url.clone(), member.clone());
                let mut all = base_urls.clone();
                all.push(member.replica.url.clone());
                // From its own ring's change to the last of the others': the rings disagree.
                let change = shared.recorder.begin(EventKind::Membership(format!(
                    "{} joins",
                    member.replica.url
                )));
                member.replica.set_peers(&all).await;
                {
                    let _no_writes = shared.write_gate.write().await;
                    for replica in &base {
                        replica.replica.set_peers(&all).await;
                    }
                }
                shared.recorder.end(change);
                shared.live.lock().unwrap().push(member.clone());
                changes.joins += 1;
                fourth = Some((member, memory));
            }
            Some((member, memory)) => {
                // Alternately a graceful leave and a crash.
                let crash = (changes.graceful_leaves + changes.crashes) % 2 == 1;
                let joined = leave(&shared, &base, &member, memory, crash).await;
                changes.joined.push(joined);
                if crash {
                    changes.crashes += 1;
                } else {
                    changes.graceful_leaves += 1;
                }
            }
        }
    }
    if let Some((member, memory)) = fourth {
        let joined = leave(&shared, &base, &member, memory, false).await;
        changes.joined.push(joined);
        changes.graceful_leaves += 1;
    }
    changes
}

/// Takes `member` out: peer lists first, then the process (graceful); or the process first and
/// the peer lists [`CRASH_DETECTION`] later (a crash).
async fn leave(
    shared: &Shared,
    base: &[Arc<Member>],
    member: &Arc<Member>,
    mut memory: Memory,
    crash: bool,
) -> (String, ProcessStats, Memory) {
    let base_urls: Vec<String> = base.iter().map(|m| m.replica.url.clone()).collect();
    let url = member.replica.url.clone();
    // A graceful leave is a membership change; a crash is a kill, until discovery drops it.
    let event = shared.recorder.begin(if crash {
        EventKind::Fault {
            replica: url,
            fault: Fault::Killed,
        }
    } else {
        EventKind::Membership(format!("{url} leaves"))
    });
    shared.leaving.fetch_add(1, Ordering::SeqCst);
    member.departing.store(true, Ordering::SeqCst);
    shared
        .live
        .lock()
        .unwrap()
        .retain(|live| !Arc::ptr_eq(live, member));
    let update = || async {
        let _no_writes = shared.write_gate.write().await;
        for replica in base {
            replica.replica.set_peers(&base_urls).await;
        }
    };
    if !crash {
        update().await;
    }
    // Its last counters, just before it dies (loads it makes after this are not counted).
    let last = member.replica.stats().await;
    memory.sample(&last);
    member.replica.kill();
    if crash {
        tokio::time::sleep(CRASH_DETECTION).await;
        update().await;
    }
    shared.leaving.fetch_add(1, Ordering::SeqCst);
    shared.recorder.end(event);
    (member.replica.url.clone(), last, memory)
}

fn percentile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Duration::from_micros(u64::from(sorted[i]))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_and_a_fourth_coming_and_going_serve_correct_values_within_budgets() {
    let secs: u64 = match std::env::var("SOAK_SECS") {
        Ok(secs) => secs.parse().expect("SOAK_SECS is a number of seconds"),
        Err(_) => DEFAULT_SECS,
    };
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let source = Arc::new(Source::memory(IpAddr::V4(Ipv4Addr::LOCALHOST)).await);
    let base: Vec<Arc<Member>> = (0..3)
        .map(|_| {
            Arc::new(Member {
                replica: start_replica(source.url()),
                departing: AtomicBool::new(false),
            })
        })
        .collect();
    let base_urls: Vec<String> = base.iter().map(|m| m.replica.url.clone()).collect();
    let mut memory = Vec::new();
    for member in &base {
        let idle = member.replica.stats().await;
        let mut m = Memory {
            idle_rss: idle.rss_bytes,
            ..Memory::default()
        };
        m.sample(&idle);
        memory.push(m);
        member.replica.set_peers(&base_urls).await;
    }

    let keys: Vec<String> = (0..READ_KEYS)
        .map(|i| format!("soak-r{i}"))
        .chain((0..WRITE_KEYS).map(|i| format!("{WRITTEN_PREFIX}{i}")))
        .collect();
    // No main cache ever evicts: a replica's main cache only holds keys it owns in some ring,
    // and with rendezvous hashing a key a base replica owns with the fourth replica present is
    // one it owns without it; so its base share must fit. (The fourth's share is smaller.)
    let base_owners = owners(&base_urls, &keys);
    for url in &base_urls {
        let charged: u64 = keys
            .iter()
            .zip(&base_owners)
            .filter(|(_, owner)| *owner == url)
            .map(|(key, _)| key.len() as u64 + VALUE_BYTES as u64 + ENTRY_OVERHEAD)
            .sum();
        assert!(
            charged <= MAIN_BYTES,
            "test setup: {url}'s share of the key space ({}) must fit its main cache ({})",
            mib(charged),
            mib(MAIN_BYTES)
        );
    }

    let shared = Arc::new(Shared {
        keys: keys.clone(),
        live: Mutex::new(base.clone()),
        by_url: Mutex::new(
            base.iter()
                .map(|m| (m.replica.url.clone(), m.clone()))
                .collect(),
        ),
        write_gate: RwLock::new(()),
        source: source.clone(),
        recorder: Recorder::new(),
        leaving: AtomicU64::new(0),
        removes: (0..WRITE_KEYS).map(|_| AtomicU64::new(0)).collect(),
        leave_gets: (0..keys.len()).map(|_| AtomicU64::new(0)).collect(),
    });

    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut drivers = JoinSet::new();
    for task in 0..TASKS {
        drivers.spawn(drive(task, seed, shared.clone(), deadline));
    }
    let changer = tokio::spawn(change_membership(shared.clone(), base.clone(), deadline));
    // Memory, sampled every second.
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first_half = started.elapsed() < Duration::from_secs(secs) / 2;
        for (member, memory) in base.iter().zip(&mut memory) {
            if let Some(stats) = try_stats(&member.replica).await {
                memory.sample(&stats);
                if first_half {
                    memory.first_half_rss = memory.max_rss;
                }
            }
        }
    }
    let mut tally = Tally::default();
    while let Some(done) = drivers.join_next().await {
        tally.absorb(done.expect("a driver task"));
    }
    let changes = changer.await.expect("the membership changer");
    let ran = started.elapsed();

    // Counters: the base replicas' now, each fourth replica's just before it left.
    let mut finals = Vec::new();
    for (member, memory) in base.iter().zip(&mut memory) {
        let stats = member.replica.stats().await;
        memory.sample(&stats);
        finals.push(stats);
    }
    let mut loads: HashMap<&str, u64> = HashMap::new();
    for stats in finals
        .iter()
        .chain(changes.joined.iter().map(|(_, s, _)| s))
    {
        for (key, n) in &stats.loads_per_key {
            *loads.entry(key.as_str()).or_default() += n;
        }
    }
    // Moves per key: each fourth replica took the keys it owned with the base replicas, and gave
    // them back when it left.
    let mut moves = vec![0u64; keys.len()];
    for (url, _, _) in &changes.joined {
        let mut ring = base_urls.clone();
        ring.push(url.clone());
        for (k, owner) in owners(&ring, &keys).iter().enumerate() {
            if owner == url {
                moves[k] += 2;
            }
        }
    }
    let removes: Vec<u64> = (0..keys.len())
        .map(|k| {
            if k < READ_KEYS {
                return 0;
            }
            shared.removes[k - READ_KEYS].load(Ordering::SeqCst)
        })
        .collect();
    let mut over = Vec::new();
    let mut worst = (0u64, 0u64, "");
    let mut unmoved_max = 0;
    for (k, key) in keys.iter().enumerate() {
        let n = loads.get(key.as_str()).copied().unwrap_or(0);
        let leave_gets = shared.leave_gets[k].load(Ordering::SeqCst);
        let bound = load_bound(removes[k], moves[k], leave_gets);
        if n > bound {
            // Which replicas loaded it (base replicas first, then each fourth), and its owner
            // among the base replicas: where a second load came from.
            let by_replica: Vec<String> = finals
                .iter()
                .chain(changes.joined.iter().map(|(_, s, _)| s))
                .enumerate()
                .filter_map(|(i, s)| s.loads_per_key.get(key).map(|n| format!("#{i}: {n}")))
                .collect();
            let owner = base_urls
                .iter()
                .position(|url| *url == owners(&base_urls, std::slice::from_ref(key))[0]);
            over.push(format!(
                "{key}: {n} loads > bound {bound} (removes {}, moves {}, gets during leaves \
                 {leave_gets}; loaded by {by_replica:?}, owner #{owner:?})",
                removes[k], moves[k]
            ));
        }
        if n > worst.0 {
            worst = (n, bound, key.as_str());
        }
        if moves[k] == 0 && removes[k] == 0 {
            unmoved_max = unmoved_max.max(n);
        }
    }
    let total_loads: u64 = loads.values().sum();

    // Figures.
    tally.get_micros.sort_unstable();
    tally.write_micros.sort_unstable();
    let requests = tally.gets + tally.sets + tally.removes;
    let budget = RSS_FACTOR * (MAIN_BYTES + HOT_BYTES) as f64;
    let rss_bound = budget as u64 + RSS_OVERHEAD;
    let mut report = format!(
        "soak figures: {secs} s asked, {ran:.1?} run, seed {seed} (SOAK_SEED to repeat)\n\
         requests: {requests} ({:.0}/s): gets {} (p50 {:?}, p99 {:?}, max {:?}); sets {}, \
         removes {} (p50 {:?}, p99 {:?}, max {:?})\n\
         errors: explained {:?}; unexplained {}\n\
         membership: {} joins, {} graceful leaves, {} crashes ({} changes; crash detected after \
         {CRASH_DETECTION:?})\n",
        requests as f64 / ran.as_secs_f64(),
        tally.gets,
        percentile(&tally.get_micros, 0.5),
        percentile(&tally.get_micros, 0.99),
        percentile(&tally.get_micros, 1.0),
        tally.sets,
        tally.removes,
        percentile(&tally.write_micros, 0.5),
        percentile(&tally.write_micros, 0.99),
        percentile(&tally.write_micros, 1.0),
        tally.explained,
        tally.unexplained.len(),
        changes.joins,
        changes.graceful_leaves,
        changes.crashes,
        changes.joins + changes.graceful_leaves + changes.crashes,
    );
    let replicas = base_urls
        .iter()
        .zip(&memory)
        .zip(finals.iter().map(|s| s.peer_errors))
        .map(|((url, m), errors)| (url.clone(), *m, Some(errors)))
        .chain(
            changes
                .joined
                .iter()
                .map(|(url, _, m)| (format!("{url} (4th)"), *m, None)),
        );
    let mut memory_failures = Vec::new();
    for (url, m, peer_errors) in replicas {
        let growth = m.max_rss.saturating_sub(m.idle_rss);
        report += &format!(
            "  {url}: rss idle {} max {} (first half {}; growth {}, bound {}); main max {} of {}; \
             hot max {} of {}{}\n",
            mib(m.idle_rss),
            mib(m.max_rss),
            mib(m.first_half_rss),
            mib(growth),
            mib(rss_bound),
            mib(m.max_main),
            mib(MAIN_BYTES),
            mib(m.max_hot),
            mib(HOT_BYTES),
            peer_errors
                .map(|n| format!("; peer errors {n}"))
                .unwrap_or_default(),
        );
        if growth > rss_bound || m.max_main > MAIN_BYTES || m.max_hot > HOT_BYTES {
            memory_failures.push(url);
        }
    }
    report += &format!(
        "loads: {total_loads} for {} distinct keys loaded ({:.2} per key); max per key {} ({}, \
         bound {}); max for keys never moved nor removed {unmoved_max}; keys over their bound {}",
        loads.len(),
        total_loads as f64 / loads.len().max(1) as f64,
        worst.0,
        worst.2,
        worst.1,
        over.len()
    );
    eprintln!("{report}");

    // The history: a `leave` in progress at the deadline ended before the drivers did.
    let history = shared.recorder.history();
    let config = Config {
        hot_max_age: HOT_MAX_AGE,
        slack: SLACK,
        ..Config::default()
    };
    let checked = checker::check(&history, &config);
    eprintln!("soak history, hot_max_age {HOT_MAX_AGE:?} + slack {SLACK:?}:");
    for event in &history.events {
        eprintln!("  event {event}");
    }
    eprint!("{checked}");
    assert_eq!(
        checked.violation_count(),
        0,
        "the history breaks the promise (see its report above)"
    );
    assert!(
        checked.writes > 100 && checked.reads_checked > 10_000,
        "test setup: too little was checked:\n{checked}"
    );

    assert!(
        tally.unexplained.is_empty(),
        "{} unexplained errors, the first: {:#?}",
        tally.unexplained.len(),
        &tally.unexplained[..tally.unexplained.len().min(20)]
    );
    assert!(
        memory_failures.is_empty(),
        "over the memory budget: {memory_failures:?}"
    );
    assert!(
        over.is_empty(),
        "keys loaded more often than their bound: {:#?}",
        &over[..over.len().min(20)]
    );
    assert!(
        changes.joins >= 1 && changes.crashes + changes.graceful_leaves >= 1,
        "the run saw a membership change"
    );
}
