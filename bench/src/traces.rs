//! traces: a synthetic trace replayed against three replicas, every request to the first one, to
//! compare how the main and hot caches share one budget (issue 16).
//!
//! The trace: Zipf-distributed ranks over [`KEYS`] keys of 1 KiB, one fixed pseudo-random
//! sequence per exponent, the same for every target. [`WARM`] requests fill the caches, then
//! [`MEASURED`] requests are counted, at equal request counts for every target:
//!
//! - hit ratio: main and hot hits of the replica taking the traffic, per get;
//! - hot share: its hot hits / (hot hits + its requests to peers);
//! - peer requests per get;
//! - loads: runs of the loader on all three replicas.
//!
//! The moving hotspot: a Zipf trace (s = [`HOTSPOT_EXPONENT`]) whose ranks are shifted by
//! [`HOTSPOT_SHIFT`] keys every [`HOTSPOT_EVERY`] requests (every few seconds at the bench's
//! rates), so the hot set moves to keys that were cold: how fast the caches let the old hot set
//! go and take the new one.
//!
//! The scan trace: a Zipf trace (s = [`SCAN_EXPONENT`]) of [`SCAN_WARM`] requests (long enough
//! for the split to settle), then 100,000 before the scan, then [`SCAN_KEYS`] keys read once
//! each, every other request (the Zipf trace goes on between them), then 100,000 after. The hit
//! ratio of the Zipf requests before, during and after the scan shows how much of the hot set the
//! scan pushed out. Its control ("scan control") replays the same Zipf requests without the scan
//! keys: the drop it shows is the trace's own variation, not the scan's.
//!
//! Targets: this library with one budget of [`TOTAL`] (`--cache-bytes`), the same with TinyLFU
//! admission on both caches (`--admission`, `Builder::admission`), the same binary with
//! today's fixed split (caps 64 and 8 MiB, which add up to the same total), and golang/groupcache
//! with the same total (`-cache-bytes`). Hit ratios and request counts do not depend on the
//! machine's load, unlike timings.

use std::process::Command;
use std::sync::Arc;

use crate::cluster::{Cluster, Kind, Process, Settings, Stats, start_replica};
use crate::load::{Limit, Outcome, Pool, Sequence, mix};
use crate::report::Better;
use crate::workloads::{Bench, check_body, connect, get_path, note_errors};

/// Distinct keys in the trace.
const KEYS: usize = 100_000;
/// Bytes per value.
const VALUE: usize = 1024;
/// Every replica's whole budget: today's 64 MiB main plus 8 MiB hot.
const TOTAL: u64 = 72 << 20;
/// Requests that fill the caches before counting starts.
const WARM: usize = 100_000;
/// Requests counted.
const MEASURED: usize = 200_000;
/// The load generator's concurrency.
const CONCURRENCY: usize = 16;
/// Zipf exponents.
const EXPONENTS: [f64; 4] = [0.7, 0.9, 1.1, 1.3];
/// The scan trace: keys read once each, in the middle of a Zipf trace of this exponent.
const SCAN_KEYS: usize = 50_000;
const SCAN_EXPONENT: f64 = 0.9;
/// Zipf requests before the scan trace's counting starts: 3x [`WARM`].
const SCAN_WARM: usize = 300_000;
/// The moving hotspot's exponent, how often it moves (in requests) and by how many keys.
const HOTSPOT_EXPONENT: f64 = 1.1;
const HOTSPOT_EVERY: usize = 50_000;
const HOTSPOT_SHIFT: usize = 10_000;

/// What serves the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// This library, one budget.
    Shared,
    /// This library, one budget, admission on.
    Admission,
    /// This library, main and hot capped at 64 and 8 MiB (the split before issue 16).
    Fixed,
    /// golang/groupcache.
    Go,
}

/// Every target, in the first round's order.
const TARGETS: [Target; 4] = [Target::Shared, Target::Admission, Target::Fixed, Target::Go];

impl Target {
    /// The report's column, and the suffix of its case.
    fn column(self) -> (Kind, &'static str) {
        match self {
            Target::Shared => (Kind::Rust, ""),
            Target::Admission => (Kind::Rust, ", admission"),
            Target::Fixed => (Kind::Rust, ", fixed 64/8"),
            Target::Go => (Kind::GoPooled, ""),
        }
    }
}

/// Ranks 1..=`n` drawn with probability proportional to 1/rank^`s`, `count` of them, the same
/// sequence for the same arguments.
fn zipf(n: usize, s: f64, count: usize, seed: u64) -> Vec<usize> {
    let mut cumulative = Vec::with_capacity(n);
    let mut sum = 0.0;
    for rank in 1..=n {
        sum += (rank as f64).powf(-s);
        cumulative.push(sum);
    }
    (0..count as u64)
        .map(|i| {
            let u = (mix(seed ^ i) >> 11) as f64 / (1u64 << 53) as f64 * sum;
            cumulative.partition_point(|&c| c < u).min(n - 1) + 1
        })
        .collect()
}

/// `ranks` with the hot set moved: every [`HOTSPOT_EVERY`] requests, each rank is shifted by
/// [`HOTSPOT_SHIFT`] more keys (modulo `n`), so the most popular ranks land on keys that were
/// cold.
fn moving(ranks: &[usize], n: usize) -> Vec<usize> {
    ranks
        .iter()
        .enumerate()
        .map(|(i, rank)| (rank - 1 + (i / HOTSPOT_EVERY) * HOTSPOT_SHIFT) % n + 1)
        .collect()
}

impl Bench<'_> {
    /// traces: see the module's documentation.
    pub(crate) async fn traces(&mut self) -> Result<(), String> {
        let mut traces: Vec<(String, Vec<usize>)> = EXPONENTS
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                (
                    format!("s={s}"),
                    zipf(KEYS, s, WARM + MEASURED, 0x5eed ^ i as u64),
                )
            })
            .collect();
        let hot = zipf(KEYS, HOTSPOT_EXPONENT, WARM + MEASURED, 0x4075);
        traces.push((
            format!("moving hotspot s={HOTSPOT_EXPONENT}"),
            moving(&hot, KEYS),
        ));
        for (name, ranks) in traces {
            let path = |rank: &usize| (0, get_path(&format!("tr-{rank}")));
            let warm: Vec<_> = ranks[..WARM].iter().map(path).collect();
            let measured: Vec<_> = ranks[WARM..].iter().map(path).collect();
            for round in 0..self.options.rounds {
                for target in self.trace_targets(round) {
                    let (kind, case, cluster, mut pool) =
                        self.trace_start(&name, round, target).await?;
                    let filled = run_all(&mut pool, &warm).await;
                    check_body(&filled, VALUE)?;
                    let before = cluster.stats().await?;
                    let outcome = run_all(&mut pool, &measured).await;
                    let after = cluster.stats().await?;
                    check_body(&outcome, VALUE)?;
                    note_errors(self.report, "traces", &case, kind, &outcome);
                    let figures = Figures::between(&before, &after);
                    let mut add = |metric, better, value| {
                        self.report
                            .add("traces", &case, metric, better, kind, value);
                    };
                    add("hit ratio", Better::Higher, figures.hit_ratio());
                    add("hot share", Better::Higher, figures.hot_share());
                    add("peer req / get", Better::Lower, figures.peer_per_get());
                    add("loads", Better::Lower, figures.loads as f64);
                    add(
                        "hot MiB",
                        Better::Higher,
                        figures.hot_bytes as f64 / f64::from(1 << 20),
                    );
                }
            }
        }
        self.scan_trace(true).await?;
        self.scan_trace(false).await
    }

    /// The scan trace, or (`scan` false) its control; see the module's documentation.
    async fn scan_trace(&mut self, scan: bool) -> Result<(), String> {
        let phase = 100_000;
        let ranks = zipf(
            KEYS,
            SCAN_EXPONENT,
            SCAN_WARM + 2 * phase + SCAN_KEYS,
            0x5ca7,
        );
        let path = |rank: &usize| (0, get_path(&format!("tr-{rank}")));
        let (warm, rest) = ranks.split_at(SCAN_WARM);
        let (before, rest) = rest.split_at(phase);
        let (during, after) = rest.split_at(SCAN_KEYS);
        let scan_key = |i: usize| (0, get_path(&format!("scan-{i}")));
        let phases: [Vec<_>; 4] = [
            warm.iter().map(path).collect(),
            before.iter().map(path).collect(),
            during
                .iter()
                .enumerate()
                .flat_map(|(i, rank)| scan.then(|| scan_key(i)).into_iter().chain([path(rank)]))
                .collect(),
            after.iter().map(path).collect(),
        ];
        let name = if scan { "scan" } else { "scan control" };
        for round in 0..self.options.rounds {
            for target in self.trace_targets(round) {
                let (kind, case, cluster, mut pool) = self.trace_start(name, round, target).await?;
                let mut ratios = Vec::new();
                for (i, requests) in phases.iter().enumerate() {
                    let before = cluster.stats().await?;
                    let outcome = run_all(&mut pool, requests).await;
                    let after = cluster.stats().await?;
                    check_body(&outcome, VALUE)?;
                    note_errors(self.report, "traces", &case, kind, &outcome);
                    // Scan keys are read once: they never hit, so the hits are the Zipf
                    // requests'.
                    let scanned = if scan && i == 2 { SCAN_KEYS as u64 } else { 0 };
                    let figures = Figures::between(&before, &after);
                    ratios.push(figures.hits as f64 / (figures.gets - scanned).max(1) as f64);
                }
                let mut add = |metric, better, value| {
                    self.report
                        .add("traces", &case, metric, better, kind, value);
                };
                add("hit ratio before", Better::Higher, ratios[1]);
                add("hit ratio during", Better::Higher, ratios[2]);
                add("hit ratio after", Better::Higher, ratios[3]);
                add(
                    "drop, points",
                    Better::Lower,
                    (ratios[1] - ratios[2]) * 100.0,
                );
            }
        }
        Ok(())
    }

    /// The targets `--only` selects, in round `round`'s order (see `Bench::order`).
    fn trace_targets(&self, round: usize) -> Vec<Target> {
        let mut targets: Vec<Target> = TARGETS
            .into_iter()
            .filter(|target| self.selected(target.column().0))
            .collect();
        if round % 2 == 1 {
            targets.reverse();
        }
        targets
    }

    /// Round `round` of trace `name` on `target`: its column and case, a fresh cluster, and the
    /// load generator's connections to it.
    async fn trace_start(
        &self,
        name: &str,
        round: usize,
        target: Target,
    ) -> Result<(Kind, String, Cluster, Pool), String> {
        let (kind, suffix) = target.column();
        let case = format!("{name}{suffix}");
        eprintln!(
            "[traces] {case} round {}/{} {}",
            round + 1,
            self.options.rounds,
            kind.name()
        );
        let cluster = self.trace_cluster(target).await?;
        let pool = connect(&cluster.addrs(), CONCURRENCY).await?;
        Ok((kind, case, cluster, pool))
    }

    /// Three replicas of `target`, each with [`TOTAL`] bytes in all.
    async fn trace_cluster(&self, target: Target) -> Result<Cluster, String> {
        let settings = Settings::plain(VALUE, 0, TOTAL);
        let mut replicas = Vec::with_capacity(3);
        for _ in 0..3 {
            let replica = match target {
                Target::Go => start_replica(self.binaries, Kind::GoPooled, settings)?,
                Target::Shared | Target::Admission | Target::Fixed => {
                    let mut command = Command::new(&self.binaries.this);
                    command.arg("replica").args([
                        "--value-bytes",
                        &VALUE.to_string(),
                        "--load-ms",
                        "0",
                    ]);
                    if target == Target::Admission {
                        command.arg("--admission");
                    }
                    if target != Target::Fixed {
                        command.args(["--cache-bytes", &TOTAL.to_string()]);
                    } else {
                        let caps = [(64u64 << 20).to_string(), (8u64 << 20).to_string()];
                        command.args(["--main-bytes", &caps[0], "--hot-bytes", &caps[1]]);
                    }
                    Process::start(command)?
                }
            };
            replicas.push(replica);
        }
        let kind = target.column().0;
        Cluster::join(replicas, kind).await
    }
}

/// Every request of `requests` once, on `pool`'s connections.
async fn run_all(pool: &mut Pool, requests: &[(usize, Vec<u8>)]) -> Outcome {
    let source = Arc::new(Sequence {
        requests: requests.to_vec(),
    });
    pool.run(source, Limit::Exhausted).await
}

/// Counts of the measured requests.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Figures {
    /// Gets on the replica taking the traffic.
    gets: u64,
    /// Its main and hot hits.
    hits: u64,
    /// Its hot hits.
    hot_hits: u64,
    /// Its requests to peers.
    peer_requests: u64,
    /// Loader runs on all replicas.
    loads: u64,
    /// Its hot cache's bytes at the end, as it counts them.
    hot_bytes: u64,
}

impl Figures {
    fn between(before: &[Stats], after: &[Stats]) -> Figures {
        let (Some(b), Some(a)) = (before.first(), after.first()) else {
            return Figures::default();
        };
        let loads = |all: &[Stats]| all.iter().map(|s| s.stats.local_loads).sum::<u64>();
        Figures {
            gets: a.stats.gets - b.stats.gets,
            hits: a.stats.cache_hits - b.stats.cache_hits,
            hot_hits: a.hot_cache.hits - b.hot_cache.hits,
            peer_requests: a.stats.peer_loads + a.stats.peer_errors
                - b.stats.peer_loads
                - b.stats.peer_errors,
            loads: loads(after) - loads(before),
            hot_bytes: a.hot_cache.bytes,
        }
    }

    fn hit_ratio(&self) -> f64 {
        self.hits as f64 / self.gets.max(1) as f64
    }

    fn hot_share(&self) -> f64 {
        self.hot_hits as f64 / (self.hot_hits + self.peer_requests).max(1) as f64
    }

    fn peer_per_get(&self) -> f64 {
        self.peer_requests as f64 / self.gets.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_by_its_exponent_and_repeatable() {
        let steep = zipf(1_000, 1.3, 20_000, 1);
        assert_eq!(steep, zipf(1_000, 1.3, 20_000, 1));
        let share = |ranks: &[usize]| ranks.iter().filter(|&&r| r == 1).count() as f64 / 20_000.0;
        // P(rank 1) = 1 / H(1000, s): 0.285 at s = 1.3, 0.095 at s = 0.9.
        assert!((share(&steep) - 0.285).abs() < 0.02, "{}", share(&steep));
        let flat = zipf(1_000, 0.9, 20_000, 1);
        assert!((share(&flat) - 0.095).abs() < 0.015, "{}", share(&flat));
        assert!(steep.iter().chain(&flat).all(|&r| (1..=1_000).contains(&r)));
    }

    #[test]
    fn the_hotspot_moves_to_cold_keys_every_period() {
        let ranks = vec![1; 3 * HOTSPOT_EVERY];
        let moved = moving(&ranks, KEYS);
        assert_eq!(moved[0], 1);
        assert_eq!(moved[HOTSPOT_EVERY - 1], 1);
        assert_eq!(moved[HOTSPOT_EVERY], 1 + HOTSPOT_SHIFT);
        assert_eq!(moved[2 * HOTSPOT_EVERY], 1 + 2 * HOTSPOT_SHIFT);
        // It wraps around and stays a rank.
        let last = moving(&[KEYS; 2 * HOTSPOT_EVERY], KEYS);
        assert_eq!(last[HOTSPOT_EVERY], HOTSPOT_SHIFT);
        assert!(last.iter().all(|&r| (1..=KEYS).contains(&r)));
    }

    #[test]
    fn figures_are_counted_on_the_first_replica() {
        let mut before = vec![Stats::default(); 3];
        let mut after = before.clone();
        before[0].stats.gets = 10;
        after[0].stats.gets = 110;
        after[0].stats.cache_hits = 60;
        after[0].hot_cache.hits = 20;
        after[0].stats.peer_loads = 30;
        after[1].stats.local_loads = 25;
        after[2].stats.local_loads = 15;
        let f = Figures::between(&before, &after);
        assert_eq!(
            (f.gets, f.hits, f.peer_requests, f.loads),
            (100, 60, 30, 40)
        );
        assert_eq!(f.hit_ratio(), 0.6);
        assert_eq!(f.hot_share(), 0.4);
        assert_eq!(f.peer_per_get(), 0.3);
    }
}
