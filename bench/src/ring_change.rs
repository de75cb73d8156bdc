//! ring-change (issue 26, finding 7): do ring changes pause gets? Rust only (golang/groupcache
//! has nothing to compare: its `HTTPPool.Set` swaps the ring and leaves its caches alone).
//!
//! One replica in this process (the library, no server, no peer answering), whose main cache
//! holds [`ENTRIES`] entries of [`VALUE_BYTES`] (about 61 MiB), all its own. One client task asks
//! warm keys, uniformly at random, in a closed loop: in-process `get`s, each a main hit. Each
//! round runs two windows of `--secs`, in an order alternated by round, each on a fresh replica:
//!
//! - `10 ring changes`: [`CHANGES`] membership changes, evenly spread over the window, alternately
//!   adding and removing a peer at a URL nobody serves (about half the keys move to it and back);
//!   the client's gets of keys that moved still hit main, where they stay for `hot_max_age`;
//! - `no changes`: the same without them.
//!
//! Figures: gets' p50, p99, p99.9 and max, and each change's call (`add_peer`, `remove_peer`):
//! its median and max duration.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use groupcache_rs::{Groupcache, Loaded, Loader};

use crate::args::BenchOptions;
use crate::cluster::Kind;
use crate::report::{Better, Report};

/// Entries main holds.
pub(crate) const ENTRIES: usize = 400_000;
/// Each value's size: with its key and the cache's own bookkeeping, about 160 bytes an entry.
pub(crate) const VALUE_BYTES: usize = 150;
/// Ring changes in the window with changes.
pub(crate) const CHANGES: usize = 10;
/// The budget: room for every entry, so nothing is evicted.
const CACHE_BYTES: u64 = 256 << 20;
/// This replica's URL, and the peer that comes and goes (nothing listens at either).
const SELF_URL: &str = "http://127.0.0.1:1";
const PEER_URL: &str = "http://127.0.0.1:2";

const WORKLOAD: &str = "ring-change";

type Result<T> = std::result::Result<T, String>;

/// A value of [`VALUE_BYTES`] for any key, at once.
struct Filler;

impl Loader for Filler {
    type Value = Bytes;
    type Error = std::io::Error;
    async fn load(&self, _key: &str) -> std::result::Result<Loaded<Bytes>, std::io::Error> {
        Ok(Loaded::new(Bytes::from(vec![b'v'; VALUE_BYTES])))
    }
}

/// What one window measured.
struct Window {
    /// Every get's latency, in nanoseconds, sorted.
    gets_ns: Vec<u64>,
    /// Every ring change call's duration, in nanoseconds, sorted.
    changes_ns: Vec<u64>,
    /// Gets that failed.
    errors: u64,
}

/// ring-change: see the module's documentation. Runs on a runtime of its own, on a thread of its
/// own (the driver's runtime is a current-thread one, and this needs the client and the changes
/// on different threads).
pub(crate) fn run(options: &BenchOptions, report: &mut Report) -> Result<()> {
    let secs = Duration::from_secs_f64(options.secs);
    let rounds = options.rounds;
    let windows = std::thread::spawn(move || -> Result<Vec<(bool, Window)>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let mut windows = Vec::new();
        for round in 0..rounds {
            let mut order = [true, false];
            if round % 2 == 1 {
                order.reverse();
            }
            for changes in order {
                eprintln!(
                    "[{WORKLOAD}] round {}/{rounds} {} load {:.2}",
                    round + 1,
                    if changes { "changes" } else { "none" },
                    crate::workloads::load_average()
                );
                windows.push((changes, runtime.block_on(window(secs, changes))?));
            }
        }
        Ok(windows)
    })
    .join()
    .map_err(|_| "the ring-change thread panicked".to_owned())??;
    for (changes, window) in windows {
        let case = if changes {
            format!("{CHANGES} ring changes")
        } else {
            "no changes".to_owned()
        };
        let mut add = |metric, better, value| {
            report.add(WORKLOAD, &case, metric, better, Kind::Rust, value);
        };
        use Better::Lower;
        add("get p50 us", Lower, quantile_us(&window.gets_ns, 0.5));
        add("get p99 us", Lower, quantile_us(&window.gets_ns, 0.99));
        add("get p99.9 us", Lower, quantile_us(&window.gets_ns, 0.999));
        add("get max us", Lower, quantile_us(&window.gets_ns, 1.0));
        add("gets", Better::Higher, window.gets_ns.len() as f64);
        add("errors", Lower, window.errors as f64);
        if changes {
            let ms = |q| quantile_us(&window.changes_ns, q) / 1000.0;
            add("change median ms", Lower, ms(0.5));
            add("change max ms", Lower, ms(1.0));
        }
    }
    Ok(())
}

/// One window on a fresh replica: filled, then the client's gets for `secs`, with
/// [`CHANGES`] ring changes or none.
async fn window(secs: Duration, changes: bool) -> Result<Window> {
    let cache = Groupcache::builder(WORKLOAD, SELF_URL, Filler)
        .cache_bytes(CACHE_BYTES)
        .main_cache_bytes(CACHE_BYTES)
        // No heartbeats to the peer that nobody serves: only the ring changes are measured.
        .failure_detection(Duration::ZERO)
        .build()
        .map_err(|e| format!("building the replica: {e}"))?;
    let keys: Arc<Vec<String>> = Arc::new((0..ENTRIES).map(|i| format!("key-{i}")).collect());
    for key in keys.iter() {
        cache
            .get(key)
            .await
            .map_err(|e| format!("filling {key}: {e}"))?;
    }
    let held = cache.stats().main_items;
    if held != ENTRIES as u64 {
        return Err(format!("main holds {held} entries of {ENTRIES}"));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn({
        let (cache, keys, stop) = (cache.clone(), keys.clone(), stop.clone());
        async move {
            let mut gets_ns = Vec::with_capacity(1 << 22);
            let mut errors = 0;
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[(crate::load::mix(seq) % keys.len() as u64) as usize];
                seq += 1;
                let start = Instant::now();
                let got = cache.get(key).await;
                gets_ns.push(start.elapsed().as_nanos() as u64);
                errors += u64::from(got.is_err());
                // A closed loop on a worker thread: let the runtime's other work in now and then.
                if seq.is_multiple_of(1024) {
                    tokio::task::yield_now().await;
                }
            }
            (gets_ns, errors)
        }
    });
    // The changes from a blocking thread, as discovery calls `set_peers`: the gets go on beside
    // them, on the runtime's workers.
    let changer = tokio::task::spawn_blocking({
        let cache = cache.clone();
        move || -> Result<Vec<u64>> {
            let every = secs / (CHANGES as u32 + 1);
            let mut changes_ns = Vec::with_capacity(CHANGES);
            let start = Instant::now();
            for i in 0..CHANGES {
                std::thread::sleep(
                    (start + every * (i as u32 + 1)).saturating_duration_since(Instant::now()),
                );
                if !changes {
                    continue;
                }
                let began = Instant::now();
                let changed = if i % 2 == 0 {
                    cache.add_peer(PEER_URL)
                } else {
                    cache.remove_peer(PEER_URL)
                };
                changes_ns.push(began.elapsed().as_nanos() as u64);
                if !changed.map_err(|e| format!("ring change: {e}"))? {
                    return Err("a ring change changed nothing".to_owned());
                }
            }
            std::thread::sleep((start + secs).saturating_duration_since(Instant::now()));
            Ok(changes_ns)
        }
    });
    let changes_ns = changer.await.map_err(|e| format!("changer: {e}"))?;
    stop.store(true, Ordering::Relaxed);
    let (mut gets_ns, errors) = client.await.map_err(|e| format!("client: {e}"))?;
    let mut changes_ns = changes_ns?;
    gets_ns.sort_unstable();
    changes_ns.sort_unstable();
    Ok(Window {
        gets_ns,
        changes_ns,
        errors,
    })
}

/// The `q` quantile (nearest rank) of sorted nanoseconds, in microseconds; 0 when there are none.
fn quantile_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1000.0
}
