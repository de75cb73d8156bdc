//! The workloads. Each round starts fresh processes for every target, in an order that alternates
//! from round to round, and runs the same requests against each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::args::BenchOptions;
use crate::cluster::{Binaries, Cluster, Kind, Settings, Stats, start_server};
use crate::http::{self, Conn};
use crate::load::{self, Limit, Outcome, Pool, Sequence, Source, Uniform};
use crate::report::{Better, Report};
use crate::shared::{STORM_LOAD, TINY_BYTES, TINY_KEYS};

/// Value size of the throughput workloads.
pub(crate) const VALUE_BYTES: usize = 1024;
/// Main cache budget everywhere (golang/groupcache: the group's whole budget).
pub(crate) const BUDGET: u64 = 64 << 20;

/// The most keys the memory workload asks: enough to overfill golang/groupcache's 64 MiB, which
/// counts keys and values only, at 64-byte values (about 900,000 entries).
const MEMORY_KEYS: usize = 1_500_000;
/// Untimed load before every timed run, so connections and caches are warm.
pub(crate) const WARM_UP: Duration = Duration::from_millis(500);

type Result<T> = std::result::Result<T, String>;

/// What every workload needs.
pub(crate) struct Bench<'a> {
    /// The binaries.
    pub binaries: &'a Binaries,
    /// The options.
    pub options: &'a BenchOptions,
    /// Where figures go.
    pub report: &'a mut Report,
}

impl Bench<'_> {
    fn secs(&self) -> Duration {
        Duration::from_secs_f64(self.options.secs)
    }

    /// `kinds` (those selected) in round `round`'s order: forwards, then backwards, and so on.
    pub(crate) fn order(&self, kinds: &[Kind], round: usize) -> Vec<Kind> {
        let mut order: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|&k| self.selected(k))
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        order
    }

    /// Whether `--only` (empty: every kind) selects `kind`.
    pub(crate) fn selected(&self, kind: Kind) -> bool {
        let only = &self.options.only;
        only.is_empty() || only.iter().any(|o| o == kind.name())
    }

    pub(crate) fn progress(&self, workload: &str, round: usize, kind: Kind) {
        eprintln!(
            "[{workload}] round {}/{} {:<10} load {:.2}",
            round + 1,
            self.options.rounds,
            kind.name(),
            load_average()
        );
    }

    /// Records throughput, p50, p99 and CPU per request of a run, and notes its errors.
    pub(crate) fn record_run(
        &mut self,
        workload: &'static str,
        case: &str,
        kind: Kind,
        outcome: &Outcome,
    ) {
        let mut add = |metric, better, value| {
            self.report.add(workload, case, metric, better, kind, value);
        };
        add("req/s", Better::Higher, outcome.throughput());
        add("p50 us", Better::Lower, outcome.quantile_us(0.5));
        add("p99 us", Better::Lower, outcome.quantile_us(0.99));
        let per_request = |us: u64| us as f64 / outcome.ok.max(1) as f64;
        add(
            "server cpu us/req",
            Better::Lower,
            per_request(outcome.server_cpu_us),
        );
        add(
            "client cpu us/req",
            Better::Lower,
            per_request(outcome.client_cpu_us),
        );
        note_errors(self.report, workload, case, kind, outcome);
    }

    /// The bare servers alone: axum (the ceiling) and net/http.
    pub(crate) async fn ceiling(&mut self) -> Result<()> {
        for round in 0..self.options.rounds {
            for kind in self.order(&[Kind::Ceiling, Kind::GoBare], round) {
                self.progress("ceiling", round, kind);
                self.bare_server("ceiling", kind).await?;
            }
        }
        Ok(())
    }

    /// Timed runs at every concurrency against one bare server of `kind`, recorded under
    /// `workload`.
    async fn bare_server(&mut self, workload: &'static str, kind: Kind) -> Result<()> {
        let server = start_server(self.binaries, kind)?;
        let source: Arc<dyn Source> = Arc::new(Uniform {
            requests: vec![(0, http::get_request("/static"))],
        });
        for &c in &self.options.concurrency.clone() {
            let pids = [server.pid()];
            let outcome = self.timed(&[server.addr], &pids, c, source.clone()).await?;
            check_body(&outcome, VALUE_BYTES)?;
            self.record_run(workload, &format!("c={c}"), kind, &outcome);
        }
        Ok(())
    }

    /// A warm-up, then a timed run, on fresh connections; the servers' CPU is that of `pids`.
    async fn timed(
        &self,
        targets: &[SocketAddr],
        pids: &[u32],
        concurrency: usize,
        source: Arc<dyn Source>,
    ) -> Result<Outcome> {
        let mut pool = connect(targets, concurrency).await?;
        pool.run(source.clone(), Limit::Time(WARM_UP)).await;
        let cpu_before = servers_cpu_us(pids);
        let mut outcome = pool.run(source, Limit::Time(self.secs())).await;
        outcome.server_cpu_us = servers_cpu_us(pids).saturating_sub(cpu_before);
        Ok(outcome)
    }

    /// local-hit: 1,000 keys, all in replica A's main cache, asked of A. The ceiling and the bare
    /// Go server run in the same rounds.
    pub(crate) async fn local_hit(&mut self) -> Result<()> {
        let kinds = [Kind::Rust, Kind::GoPooled, Kind::Ceiling, Kind::GoBare];
        for round in 0..self.options.rounds {
            for kind in self.order(&kinds, round) {
                self.progress("local-hit", round, kind);
                if matches!(kind, Kind::Ceiling | Kind::GoBare) {
                    self.bare_server("local-hit", kind).await?;
                    continue;
                }
                let cluster = self.cluster(kind, 3, VALUE_BYTES, 0).await?;
                self.local_hit_runs("local-hit", &cluster, kind, "lh-")
                    .await?;
            }
        }
        Ok(())
    }

    /// local-hit's runs on `cluster` (of `kind`), recorded under `workload`: 1,000 keys named
    /// `{prefix}{i}` that replica A owns, loaded, then asked of A at each concurrency.
    pub(crate) async fn local_hit_runs(
        &mut self,
        workload: &'static str,
        cluster: &Cluster,
        kind: Kind,
        prefix: &str,
    ) -> Result<()> {
        let keys = keys_owned_by(cluster, 0, prefix, 1_000);
        let requests: Vec<_> = keys.iter().map(|k| (0, get_path(k))).collect();
        let a = [cluster.replicas[0].addr];
        let warm = run_once(&a, 16, requests.clone()).await;
        expect_all(
            &warm,
            keys.len(),
            VALUE_BYTES,
            &format!("{workload} warm-up"),
        )?;
        let source: Arc<dyn Source> = Arc::new(Uniform { requests });
        for &c in &self.options.concurrency.clone() {
            let before = cluster.stats().await?;
            let pids = cluster.pids();
            let outcome = self.timed(&a, &pids, c, source.clone()).await?;
            let after = cluster.stats().await?;
            check_body(&outcome, VALUE_BYTES)?;
            let loads = after[0].stats.local_loads - before[0].stats.local_loads;
            if loads > 0 {
                self.report.notes.push(format!(
                    "{workload} c={c} {}: {loads} loads during the run (expected 0)",
                    kind.name()
                ));
            }
            self.record_run(workload, &format!("c={c}"), kind, &outcome);
        }
        Ok(())
    }

    /// remote-get: every request goes to a replica that does not own its key, and no replica is
    /// asked for the same key twice, so every get is a real fetch from the owner (no hot-cache
    /// hit). Owners hold every key in their main cache beforehand. The ceiling runs in the same
    /// rounds.
    pub(crate) async fn remote_get(&mut self) -> Result<()> {
        let kinds = [Kind::Rust, Kind::GoPooled, Kind::GoDefault, Kind::Ceiling];
        let measured = self.options.remote_requests / 2;
        for round in 0..self.options.rounds {
            for kind in self.order(&kinds, round) {
                self.progress("remote-get", round, kind);
                if kind == Kind::Ceiling {
                    self.bare_server("remote-get", kind).await?;
                    continue;
                }
                let cluster = self.cluster(kind, 3, VALUE_BYTES, 0).await?;
                for &c in &self.options.concurrency.clone() {
                    let case = format!("c={c}");
                    // Fresh keys per run: a warm-up set, then the measured set.
                    let warm_keys = keys(&format!("rg{c}w-"), 1_000);
                    let keys = keys(&format!("rg{c}-"), measured);
                    let (outcome, before, after) =
                        remote_run(&cluster, c, &warm_keys, &keys).await?;
                    let fetches: u64 = after
                        .iter()
                        .zip(&before)
                        .map(|(a, b)| a.stats.peer_loads - b.stats.peer_loads)
                        .sum();
                    let per_get = fetches as f64 / outcome.ok.max(1) as f64;
                    // No replica asks for a key twice, so whatever is in a hot cache now was
                    // promoted for nothing.
                    let hot = after.iter().map(|s| s.hot_cache.items).sum::<u64>() as f64
                        / after.len() as f64;
                    self.record_run("remote-get", &case, kind, &outcome);
                    let mut add = |metric, better, value| {
                        self.report
                            .add("remote-get", &case, metric, better, kind, value);
                    };
                    add("fetches/get", Better::Higher, per_get);
                    add("hot items", Better::Lower, hot);
                }
            }
        }
        Ok(())
    }

    /// cold-storm: 1,000 gets at once over 100 cold keys, spread over the 3 replicas, with a
    /// loader that sleeps 50 ms: loads per key and the wall time. The ceiling is the same storm
    /// against 3 bare axum servers that answer every request for a key 50 ms after its first:
    /// what delivering 1,000 answers at once costs on this machine without any cache.
    pub(crate) async fn cold_storm(&mut self) -> Result<()> {
        const GETS: usize = 1_000;
        const KEYS: usize = 100;
        const REPLICAS: usize = 3;
        let load_ms = STORM_LOAD.as_millis() as u64;
        let case = "1000 gets/100 keys";
        for round in 0..self.options.rounds {
            for kind in self.order(&[Kind::Rust, Kind::GoPooled, Kind::Ceiling], round) {
                self.progress("cold-storm", round, kind);
                // Request i asks server i % 3 for key i % 100: every key from every server.
                let path = |i: usize| match kind {
                    Kind::Ceiling => http::get_request(&format!("/storm/cs-{}", i % KEYS)),
                    _ => get_path(&format!("cs-{}", i % KEYS)),
                };
                let requests: Vec<(usize, Vec<u8>)> =
                    (0..GETS).map(|i| (i % REPLICAS, path(i))).collect();
                let (storm, loads) = if kind == Kind::Ceiling {
                    let servers = (0..REPLICAS)
                        .map(|_| start_server(self.binaries, kind))
                        .collect::<Result<Vec<_>>>()?;
                    let targets: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
                    let pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
                    (storm(&targets, &pids, requests).await?, None)
                } else {
                    let cluster = self.cluster(kind, REPLICAS, VALUE_BYTES, load_ms).await?;
                    let storm = storm(&cluster.addrs(), &cluster.pids(), requests).await?;
                    let stats = cluster.stats().await?;
                    let loads: u64 = stats.iter().map(|s| s.stats.local_loads).sum();
                    (storm, Some(loads))
                };
                if storm.ok != GETS {
                    self.report.notes.push(format!(
                        "cold-storm {}: {} of {GETS} gets failed",
                        kind.name(),
                        GETS - storm.ok
                    ));
                }
                let answer_ms = |q: f64| {
                    let at = ((storm.answers.len().max(1) - 1) as f64 * q).round() as usize;
                    storm.answers.get(at).map_or(0.0, |a| a.as_secs_f64() * 1e3)
                };
                let wall_ms = answer_ms(1.0);
                let mut add = |metric, value| {
                    self.report
                        .add("cold-storm", case, metric, Better::Lower, kind, value);
                };
                if let Some(loads) = loads {
                    add("loads per key", loads as f64 / KEYS as f64);
                }
                add("wall ms", wall_ms);
                add("first answer ms", answer_ms(0.0));
                add("median answer ms", answer_ms(0.5));
                add("wall / load", wall_ms / load_ms as f64);
                add("server cpu ms", storm.server_cpu_us as f64 / 1e3);
                add("client cpu ms", storm.client_cpu_us as f64 / 1e3);
            }
        }
        Ok(())
    }

    /// memory: one replica with a 64 MiB main budget, filled with distinct values of each size
    /// in `--value-bytes` (default 4 KiB): 640 MiB of values, at most [`MEMORY_KEYS`] keys; its
    /// resident memory against the budget, the entries it holds, and the resident bytes per
    /// entry beyond its key and value.
    pub(crate) async fn memory(&mut self) -> Result<()> {
        const FILL: u64 = 640 << 20;
        for value in self.options.value_bytes.clone() {
            // The 4 KiB case keeps the name the verdict reads.
            let case = if value == 4096 {
                "64 MiB budget".to_owned()
            } else {
                format!("64 MiB budget, {value} B values")
            };
            let count = ((FILL / value as u64) as usize).min(MEMORY_KEYS);
            let all_keys = keys("mem-", count);
            for round in 0..self.options.rounds {
                for kind in self.order(&[Kind::Rust, Kind::GoPooled], round) {
                    self.progress("memory", round, kind);
                    let cluster = self.cluster(kind, 1, value, 0).await?;
                    let replica = &cluster.replicas[0];
                    let target = [replica.addr];
                    let mut pool = connect(&target, 16).await?;
                    let health = vec![(0, http::get_request("/healthz"))];
                    pool.run(Arc::new(Sequence { requests: health }), Limit::Exhausted)
                        .await;
                    let (base, _) = replica.memory()?;
                    let requests = all_keys.iter().map(|k| (0, get_path(k))).collect();
                    let cpu_before = load::cpu_us(replica.pid());
                    let filled = pool
                        .run(Arc::new(Sequence { requests }), Limit::Exhausted)
                        .await;
                    let cpu = load::cpu_us(replica.pid()).saturating_sub(cpu_before);
                    expect_all(&filled, count, value, "memory fill")?;
                    let (rss, peak) = replica.memory()?;
                    let stats = cluster.stats().await?;
                    let items = stats[0].main_cache.items;
                    // An LRU cache filled once in order holds the last keys asked.
                    let held_keys = all_keys.len().saturating_sub(items as usize);
                    let data: u64 = all_keys[held_keys..]
                        .iter()
                        .map(|k| (k.len() + value) as u64)
                        .sum();
                    let growth = rss.saturating_sub(base);
                    let per_entry = (growth as f64 - data as f64) / items.max(1) as f64;
                    let mib = |b: u64| b as f64 / f64::from(1 << 20);
                    let budget = mib(BUDGET);
                    let (rss, peak) = (mib(growth), mib(peak.saturating_sub(base)));
                    let mut add = |metric, better, value| {
                        self.report
                            .add("memory", &case, metric, better, kind, value);
                    };
                    add("rss growth MiB", Better::Lower, rss);
                    add("rss growth / budget", Better::Lower, rss / budget);
                    add("peak growth / budget", Better::Lower, peak / budget);
                    add(
                        "cache's own MiB",
                        Better::Lower,
                        mib(stats[0].main_cache.bytes),
                    );
                    add("entries held", Better::Higher, items as f64);
                    add("rss B/entry beyond key+value", Better::Lower, per_entry);
                    add(
                        "server cpu us/load",
                        Better::Lower,
                        cpu as f64 / count as f64,
                    );
                }
            }
            if self.selected(Kind::Rust) {
                self.memory_phases(value, &all_keys).await?;
            }
        }
        Ok(())
    }

    /// memory's phase change, Rust only (the Go peer's values all have one size): one replica
    /// with a 64 MiB main budget asked [`MEMORY_KEYS`] keys with [`TINY_BYTES`]-byte values (a
    /// crawler's negative answers: about 1.3 million entries fill the budget), then `keys` with
    /// values of `value` bytes, which push every tiny entry out; its resident memory against
    /// the budget after each phase. Before issue 26 the slab, the hash table and the ghosts
    /// kept their size after the tiny phase, uncharged.
    async fn memory_phases(&mut self, value: usize, keys_sized: &[String]) -> Result<()> {
        let case = format!("phase change: {TINY_BYTES} B, then {value} B values");
        let tiny = keys(TINY_KEYS, MEMORY_KEYS);
        for round in 0..self.options.rounds {
            self.progress("memory phases", round, Kind::Rust);
            let cluster = self.cluster(Kind::Rust, 1, value, 0).await?;
            let replica = &cluster.replicas[0];
            let mut pool = connect(&[replica.addr], 16).await?;
            let health = vec![(0, http::get_request("/healthz"))];
            pool.run(Arc::new(Sequence { requests: health }), Limit::Exhausted)
                .await;
            let (base, _) = replica.memory()?;
            let phases: [(&[String], usize, [&'static str; 3]); 2] = [
                (
                    &tiny,
                    TINY_BYTES,
                    [
                        "rss growth / budget after tiny",
                        "cache's own MiB after tiny",
                        "entries held after tiny",
                    ],
                ),
                (
                    keys_sized,
                    value,
                    [
                        "rss growth / budget after sized",
                        "cache's own MiB after sized",
                        "entries held after sized",
                    ],
                ),
            ];
            for (asked, len, [growth_metric, own_metric, held_metric]) in phases {
                let requests = asked.iter().map(|k| (0, get_path(k))).collect();
                let done = pool
                    .run(Arc::new(Sequence { requests }), Limit::Exhausted)
                    .await;
                expect_all(&done, asked.len(), len, "memory phase")?;
                let (rss, _) = replica.memory()?;
                let stats = cluster.stats().await?;
                let mib = |b: u64| b as f64 / f64::from(1 << 20);
                let growth = mib(rss.saturating_sub(base)) / mib(BUDGET);
                let main = &stats[0].main_cache;
                let (own, held) = (mib(main.bytes), main.items as f64);
                let report = &mut *self.report;
                report.add(
                    "memory",
                    &case,
                    growth_metric,
                    Better::Lower,
                    Kind::Rust,
                    growth,
                );
                report.add("memory", &case, own_metric, Better::Lower, Kind::Rust, own);
                report.add(
                    "memory",
                    &case,
                    held_metric,
                    Better::Higher,
                    Kind::Rust,
                    held,
                );
            }
        }
        Ok(())
    }

    /// hot-key: one key owned by replica A, asked of B and C: A's peer requests per 1,000 gets.
    pub(crate) async fn hot_key(&mut self) -> Result<()> {
        let c = 64;
        let case = format!("c={c}");
        for round in 0..self.options.rounds {
            for kind in self.order(&[Kind::Rust, Kind::GoPooled], round) {
                self.progress("hot-key", round, kind);
                let cluster = self.cluster(kind, 3, VALUE_BYTES, 0).await?;
                let key = keys_owned_by(&cluster, 0, "hk-", 1).remove(0);
                let targets = cluster.addrs();
                let requests = vec![(1, get_path(&key)), (2, get_path(&key))];
                let mut pool = connect(&targets, c).await?;
                let before = cluster.stats().await?;
                let source = Arc::new(Uniform { requests });
                let outcome = pool.run(source, Limit::Time(self.secs())).await;
                let after = cluster.stats().await?;
                check_body(&outcome, VALUE_BYTES)?;
                let peer = after[0].stats.server_requests - before[0].stats.server_requests;
                let per_1000 = peer as f64 * 1000.0 / outcome.ok.max(1) as f64;
                let mut add = |metric, better, value| {
                    self.report
                        .add("hot-key", &case, metric, better, kind, value);
                };
                add("gets", Better::Higher, outcome.ok as f64);
                add("peer requests", Better::Lower, peer as f64);
                add("peer req / 1000 gets", Better::Lower, per_1000);
                note_errors(self.report, "hot-key", &case, kind, &outcome);
            }
        }
        Ok(())
    }

    async fn cluster(&self, kind: Kind, n: usize, value: usize, load_ms: u64) -> Result<Cluster> {
        let settings = Settings::plain(value, load_ms, BUDGET);
        Cluster::start(self.binaries, kind, n, settings).await
    }
}

/// CPU time all of `pids` have used so far, in microseconds.
pub(crate) fn servers_cpu_us(pids: &[u32]) -> u64 {
    pids.iter().map(|&pid| load::cpu_us(pid)).sum()
}

/// `servers_cpu_us` to the nanosecond, for a storm's few tens of milliseconds.
fn servers_cpu_us_fine(pids: &[u32]) -> u64 {
    pids.iter().map(|&pid| load::cpu_us_fine(pid)).sum()
}

/// The 1-minute load average.
pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

pub(crate) fn get_path(key: &str) -> Vec<u8> {
    http::get_request(&format!("/get/{key}"))
}

pub(crate) fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The first `n` keys `{prefix}{i}` that replica `owner` owns.
pub(crate) fn keys_owned_by(
    cluster: &Cluster,
    owner: usize,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| cluster.owner(k) == owner)
        .take(n)
        .collect()
}

/// Every key asked once of each replica that does not own it: first of one, then (after all
/// the others) of the other, so no replica sees a key twice.
pub(crate) fn remote_pairs(cluster: &Cluster, keys: &[String]) -> Sequence {
    let n = cluster.replicas.len();
    let mut requests = Vec::with_capacity(keys.len() * (n - 1));
    for step in 1..n {
        for key in keys {
            let requester = (cluster.owner(key) + step) % n;
            requests.push((requester, get_path(key)));
        }
    }
    Sequence { requests }
}

/// remote-get's measured run on `cluster` (see `Bench::remote_get`): the owners load
/// `warm_keys` and `keys`, then `c` connections ask each replica that does not own them for
/// `warm_keys` (a warm-up) and, measured, for `keys`. The outcome, with the servers' CPU, and
/// every replica's counters before and after it.
pub(crate) async fn remote_run(
    cluster: &Cluster,
    c: usize,
    warm_keys: &[String],
    keys: &[String],
) -> Result<(Outcome, Vec<Stats>, Vec<Stats>)> {
    let targets = cluster.addrs();
    let fill: Vec<_> = warm_keys
        .iter()
        .chain(keys)
        .map(|k| (cluster.owner(k), get_path(k)))
        .collect();
    let filled = run_once(&targets, 64, fill).await;
    expect_all(&filled, warm_keys.len() + keys.len(), VALUE_BYTES, "fill")?;
    let mut pool = connect(&targets, c).await?;
    pool.run(Arc::new(remote_pairs(cluster, warm_keys)), Limit::Exhausted)
        .await;
    let before = cluster.stats().await?;
    let source = Arc::new(remote_pairs(cluster, keys));
    let cpu_before = servers_cpu_us(&cluster.pids());
    let mut outcome = pool.run(source, Limit::Exhausted).await;
    outcome.server_cpu_us = servers_cpu_us(&cluster.pids()).saturating_sub(cpu_before);
    let after = cluster.stats().await?;
    check_body(&outcome, VALUE_BYTES)?;
    Ok((outcome, before, after))
}

pub(crate) async fn connect(targets: &[SocketAddr], concurrency: usize) -> Result<Pool> {
    Pool::connect(targets, concurrency)
        .await
        .map_err(|e| format!("connecting the load generator: {e}"))
}

/// Every request of `requests` once, `concurrency` at a time, on fresh connections.
pub(crate) async fn run_once(
    targets: &[SocketAddr],
    concurrency: usize,
    requests: Vec<(usize, Vec<u8>)>,
) -> Outcome {
    match Pool::connect(targets, concurrency).await {
        Ok(mut pool) => {
            pool.run(Arc::new(Sequence { requests }), Limit::Exhausted)
                .await
        }
        Err(e) => Outcome {
            errors: 1,
            first_error: Some(format!("connecting: {e}")),
            ..Outcome::default()
        },
    }
}

pub(crate) fn expect_all(outcome: &Outcome, n: usize, value: usize, what: &str) -> Result<()> {
    if outcome.ok != n as u64 || outcome.errors > 0 {
        return Err(format!(
            "{what}: {} of {n} answered, {} errors, first: {:?}",
            outcome.ok, outcome.errors, outcome.first_error
        ));
    }
    check_body(outcome, value)
}

/// Every answer carried a value of the expected size.
pub(crate) fn check_body(outcome: &Outcome, value: usize) -> Result<()> {
    if outcome.ok == 0 {
        return Err(format!("no answers: {:?}", outcome.first_error));
    }
    if outcome.body_bytes != outcome.ok * value as u64 {
        return Err(format!(
            "expected {value}-byte values, got {} bytes in {} answers",
            outcome.body_bytes, outcome.ok
        ));
    }
    Ok(())
}

pub(crate) fn note_errors(
    report: &mut Report,
    workload: &str,
    case: &str,
    kind: Kind,
    outcome: &Outcome,
) {
    if outcome.errors > 0 {
        report.notes.push(format!(
            "{workload} {case} {}: {} errors, first: {}",
            kind.name(),
            outcome.errors,
            outcome.first_error.as_deref().unwrap_or("?")
        ));
    }
}

/// What a storm measured.
struct Storm {
    /// When each answer came after the release, sorted.
    answers: Vec<Duration>,
    /// Answers with status 200.
    ok: usize,
    /// CPU the replicas used from the release to the last answer, in microseconds.
    server_cpu_us: u64,
    /// CPU this process used meanwhile, in microseconds.
    client_cpu_us: u64,
}

/// Opens one connection per request (checked with `/healthz`), then sends every request at
/// once; the CPU of `pids` is the replicas'.
async fn storm(
    targets: &[SocketAddr],
    pids: &[u32],
    requests: Vec<(usize, Vec<u8>)>,
) -> Result<Storm> {
    let health = http::get_request("/healthz");
    let mut conns = Vec::with_capacity(requests.len());
    for (target, _) in &requests {
        let addr = targets[*target];
        let mut conn = Conn::connect(addr)
            .await
            .map_err(|e| format!("storm: connecting to {addr}: {e}"))?;
        let status = conn
            .round_trip(&health)
            .await
            .map_err(|e| format!("storm: {addr}/healthz: {e}"))?
            .status;
        if status != 200 {
            return Err(format!("storm: {addr}/healthz: status {status}"));
        }
        conns.push(conn);
    }
    let (release, released) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (mut conn, (_, request)) in conns.into_iter().zip(requests) {
        let mut released = released.clone();
        tasks.spawn(async move {
            let _ = released.wait_for(|go| *go).await;
            let ok = matches!(conn.round_trip(&request).await, Ok(r) if r.status == 200);
            (Instant::now(), ok)
        });
    }
    // Let every task reach the gate first.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (server_cpu, client_cpu) = (
        servers_cpu_us_fine(pids),
        load::cpu_us_fine(std::process::id()),
    );
    let start = Instant::now();
    let _ = release.send(true);
    let mut answers = Vec::with_capacity(tasks.len());
    let mut ok = 0;
    while let Some(joined) = tasks.join_next().await {
        let (done, fine) = joined.map_err(|e| format!("storm task: {e}"))?;
        answers.push(done - start);
        ok += usize::from(fine);
    }
    let server_cpu_us = servers_cpu_us_fine(pids).saturating_sub(server_cpu);
    let client_cpu_us = load::cpu_us_fine(std::process::id()).saturating_sub(client_cpu);
    answers.sort_unstable();
    Ok(Storm {
        answers,
        ok,
        server_cpu_us,
        client_cpu_us,
    })
}
