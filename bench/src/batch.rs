//! Issue 14's workloads, the driver's side. The Rust replica's side (`POST /many` and the batch
//! loader) is in `replica.rs`, the Go peer's in `tests/interop/go-peer`.
//!
//! - `batch`: replica A of 3 is asked for 100 or 1,000 keys it does not own (so they are spread
//!   over the 2 other replicas), warm (in their owners' main caches) or cold (nowhere yet, a
//!   20 ms loader), as one `get_many` and as the same keys in concurrent single `get`s, inside the
//!   replica (`POST /many`); golang/groupcache, which has no batch, with one goroutine per key.
//!   Peer requests are the replicas' own `server_requests` counters (a batch is one request), and
//!   `load_many` calls are counted by the replicas' batch loader.
//! - `coalesce`: remote-get (every get a real fetch from the owner) at 1, 4, 16 and 64
//!   connections, with `Builder::coalesce_fetches` off and at 1, 2 and 4 requests in flight per owner, side
//!   by side.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::cluster::{Cluster, Kind, Settings, Stats};
use crate::http;
use crate::report::{Better, Report, Verdict};
use crate::workloads::{
    BUDGET, Bench, VALUE_BYTES, expect_all, get_path, keys, keys_owned_by, load_average,
    remote_run, run_once,
};

type Result<T> = std::result::Result<T, String>;

/// The cold keys' loader latency: one database round trip, for one key or for many.
const LOAD_MS: u64 = 20;
/// Keys per call.
const SIZES: [usize; 2] = [100, 1_000];
/// Coalescing: requests in flight per owner; 0 is off.
const IN_FLIGHT: [usize; 4] = [0, 1, 2, 4];
/// Connections of the coalescing runs: where it should help (16, 64) and where it costs (1, 4).
const LEVELS: [usize; 4] = [1, 4, 16, 64];

/// What `/many` answers, in both languages.
#[derive(Debug, Deserialize)]
struct Many {
    ok: u64,
    errors: u64,
    bytes: u64,
    micros: u64,
    #[serde(default)]
    first_error: String,
}

/// How the keys are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One `get_many`.
    GetMany,
    /// One `get` per key, all at once.
    Singles,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::GetMany => "get_many",
            Mode::Singles => "singles",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Mode::GetMany => "/many",
            Mode::Singles => "/many?singles",
        }
    }
}

/// What one call measured.
struct Call {
    /// Wall time inside the asking replica.
    wall: Duration,
    /// From the load generator's request to its answer.
    round_trip: Duration,
    /// Peer requests served by all replicas.
    peer_requests: u64,
    /// Loader runs on all replicas.
    loads: u64,
    /// Warm hand-off peeks sent by all replicas (Rust only).
    peeks: u64,
    /// `load_many` calls on each owner (replicas 1 and 2).
    load_many: Vec<u64>,
}

impl Bench<'_> {
    /// The `batch` workload (see the module's documentation).
    pub(crate) async fn batch(&mut self) -> Result<()> {
        for round in 0..self.options.rounds {
            for kind in self.order(&[Kind::Rust, Kind::GoPooled], round) {
                self.progress("batch", round, kind);
                let settings = Settings {
                    value_bytes: VALUE_BYTES,
                    load_ms: LOAD_MS,
                    cache_bytes: BUDGET,
                    batch_loader: true,
                    coalesce_in_flight: 0,
                    // As a user gets it: the cluster has just started, so its rings are younger
                    // than `hot_max_age` and an owner's single loads may peek a previous owner
                    // first (batches do not); `peeks` counts them.
                    no_handoff: false,
                    no_hot_cache: false,
                    otel_sink: None,
                };
                let cluster = Cluster::start(self.binaries, kind, 3, settings).await?;
                // A replica batches to a peer only once an answer of it advertised batches.
                let adverts: Vec<_> = (1..3)
                    .map(|owner| (0, get_path(&keys_owned_by(&cluster, owner, "ad-", 1)[0])))
                    .collect();
                expect_all(
                    &run_once(&cluster.addrs(), 1, adverts).await,
                    2,
                    VALUE_BYTES,
                    "ad",
                )?;
                let mut modes = match kind {
                    Kind::Rust => vec![Mode::GetMany, Mode::Singles],
                    _ => vec![Mode::Singles],
                };
                if round % 2 == 1 {
                    modes.reverse();
                }
                for n in SIZES {
                    for warm in [true, false] {
                        for &mode in &modes {
                            // An untimed call first, so the replicas' connections are open.
                            let tag = format!("{n}{warm}{}{round}", mode.name());
                            call(&cluster, n, warm, mode, &format!("u{tag}")).await?;
                            let measured = call(&cluster, n, warm, mode, &tag).await?;
                            self.record_call(kind, n, warm, mode, &measured);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn record_call(&mut self, kind: Kind, n: usize, warm: bool, mode: Mode, call: &Call) {
        let temperature = if warm { "warm" } else { "cold" };
        let case = format!("{temperature} {n} {}", mode.name());
        let mut add = |metric, value| {
            self.report
                .add("batch", &case, metric, Better::Lower, kind, value);
        };
        add("wall ms", call.wall.as_secs_f64() * 1e3);
        add("rtt ms", call.round_trip.as_secs_f64() * 1e3);
        add("peer req", call.peer_requests as f64);
        add("loads/key", call.loads as f64 / n as f64);
        if kind == Kind::Rust {
            add("peeks/key", call.peeks as f64 / n as f64);
        }
        if !warm && mode == Mode::GetMany {
            let most = call.load_many.iter().copied().max().unwrap_or(0);
            let least = call.load_many.iter().copied().min().unwrap_or(0);
            add("load_many max", most as f64);
            add("load_many min", least as f64);
        }
    }

    /// The `coalesce` workload (see the module's documentation).
    pub(crate) async fn coalesce(&mut self) -> Result<()> {
        let measured = self.options.remote_requests / 2;
        for round in 0..self.options.rounds {
            if self.order(&[Kind::Rust], round).is_empty() {
                return Ok(());
            }
            let mut windows = IN_FLIGHT.to_vec();
            if round % 2 == 1 {
                windows.reverse();
            }
            for window in windows {
                eprintln!(
                    "[coalesce] round {}/{} window {} load {:.2}",
                    round + 1,
                    self.options.rounds,
                    window_name(window),
                    load_average()
                );
                let settings = Settings {
                    value_bytes: VALUE_BYTES,
                    load_ms: 0,
                    cache_bytes: BUDGET,
                    batch_loader: false,
                    coalesce_in_flight: window,
                    no_handoff: false,
                    no_hot_cache: false,
                    otel_sink: None,
                };
                let cluster = Cluster::start(self.binaries, Kind::Rust, 3, settings).await?;
                for c in LEVELS {
                    // Fewer keys where each get is slow, so every run takes about as long.
                    let count = (measured * c.min(16) / 16).max(200);
                    self.coalesce_run(&cluster, c, count, window).await?;
                }
            }
        }
        Ok(())
    }

    /// remote-get's run (see `Bench::remote_get`) at `c` connections over `count` fresh keys.
    async fn coalesce_run(
        &mut self,
        cluster: &Cluster,
        c: usize,
        count: usize,
        window: usize,
    ) -> Result<()> {
        let warm_keys = keys(&format!("co{c}w-"), 200);
        let keys = keys(&format!("co{c}-"), count);
        let (outcome, before, after) = remote_run(cluster, c, &warm_keys, &keys).await?;
        let peer_requests = delta(&before, &after, |s| s.stats.server_requests);
        let case = format!("c={c} {}", window_name(window));
        self.record_run("coalesce", &case, Kind::Rust, &outcome);
        let per_get = peer_requests.iter().sum::<u64>() as f64 / outcome.ok.max(1) as f64;
        self.report.add(
            "coalesce",
            &case,
            "peer req/get",
            Better::Lower,
            Kind::Rust,
            per_get,
        );
        Ok(())
    }
}

/// Replica A (0) asked for `n` keys it does not own, named after `tag`; warm ones are first
/// loaded by their owners.
async fn call(cluster: &Cluster, n: usize, warm: bool, mode: Mode, tag: &str) -> Result<Call> {
    let keys: Vec<String> = (0..)
        .map(|i| format!("b{tag}-{i}"))
        .filter(|k| cluster.owner(k) != 0)
        .take(n)
        .collect();
    if warm {
        let fill = keys
            .iter()
            .map(|k| (cluster.owner(k), get_path(k)))
            .collect();
        expect_all(
            &run_once(&cluster.addrs(), 64, fill).await,
            n,
            VALUE_BYTES,
            "fill",
        )?;
    }
    let body = serde_json::to_string(&keys).map_err(|e| e.to_string())?;
    let request = http::post_json_request(mode.path(), &body);
    let before = cluster.stats().await?;
    let started = Instant::now();
    let (status, answer) = http::call(cluster.replicas[0].addr, &request)
        .await
        .map_err(|e| format!("batch {}: {e}", mode.name()))?;
    let round_trip = started.elapsed();
    let after = cluster.stats().await?;
    let answer: Many = match status {
        200 => serde_json::from_slice(&answer).map_err(|e| format!("batch answer: {e}"))?,
        _ => return Err(format!("batch: status {status}")),
    };
    if answer.ok != n as u64 || answer.errors > 0 || answer.bytes != (n * VALUE_BYTES) as u64 {
        return Err(format!(
            "batch {}: {} of {n} answered ({} bytes), {} errors, first: {:?}",
            mode.name(),
            answer.ok,
            answer.bytes,
            answer.errors,
            answer.first_error
        ));
    }
    let load_many = delta(&before, &after, |s| s.stats.load_many_calls);
    Ok(Call {
        wall: Duration::from_micros(answer.micros),
        round_trip,
        peer_requests: delta(&before, &after, |s| s.stats.server_requests)
            .iter()
            .sum(),
        loads: delta(&before, &after, |s| s.stats.local_loads).iter().sum(),
        peeks: delta(&before, &after, |s| s.stats.handoff_peeks)
            .iter()
            .sum(),
        load_many: load_many[1..].to_vec(),
    })
}

/// Each replica's growth of one counter.
fn delta(before: &[Stats], after: &[Stats], counter: fn(&Stats) -> u64) -> Vec<u64> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| counter(a).saturating_sub(counter(b)))
        .collect()
}

fn window_name(in_flight: usize) -> String {
    match in_flight {
        0 => "off".to_owned(),
        n => format!("{n} in flight"),
    }
}

/// Issue 14's targets against the medians.
pub(crate) fn verdicts(report: &Report) -> Vec<Verdict> {
    let mut out = Vec::new();
    let median = |case: &str, metric: &str, kind: Kind| {
        report
            .row("batch", case, metric)
            .and_then(|r| r.median(kind))
    };
    let samples = |case: &str, metric: &str| {
        report
            .row("batch", case, metric)
            .and_then(|r| r.samples.get(&Kind::Rust).cloned())
            .unwrap_or_default()
    };
    let warm = "warm 1000";
    let peer = samples(&format!("{warm} get_many"), "peer req");
    let batch_wall = median(&format!("{warm} get_many"), "wall ms", Kind::Rust);
    let singles_wall = median(&format!("{warm} singles"), "wall ms", Kind::Rust);
    let go_wall = median(&format!("{warm} singles"), "wall ms", Kind::GoPooled);
    let target = "batch: get_many of 1,000 warm remote keys: peer requests = owners (2), wall <= \
                  1/5 of 1,000 concurrent single gets";
    out.push(match (peer.is_empty(), batch_wall.zip(singles_wall)) {
        (false, Some((batch, singles))) => {
            let ratio = batch / singles;
            let go = go_wall.map_or(String::new(), |g| {
                format!("; Go's singles {g:.1} ms ({:.2}x)", batch / g)
            });
            Verdict {
                target: target.into(),
                met: Some(peer.iter().all(|p| *p == 2.0) && ratio <= 0.2),
                detail: format!(
                    "peer requests {peer:?}; get_many {batch:.1} ms vs singles {singles:.1} ms \
                     ({ratio:.2}x){go}"
                ),
            }
        }
        _ => not_measured(target),
    });
    let most = samples("cold 1000 get_many", "load_many max");
    let least = samples("cold 1000 get_many", "load_many min");
    let target = "batch: cold get_many of 1,000 keys with a batch loader: one load_many per owner";
    out.push(if most.is_empty() {
        not_measured(target)
    } else {
        Verdict {
            target: target.into(),
            met: Some(most.iter().chain(&least).all(|c| *c == 1.0)),
            detail: format!("per owner, most {most:?}, least {least:?} (one sample per round)"),
        }
    });
    let coalesce = |case: &str, metric: &str| {
        report
            .row("coalesce", case, metric)
            .and_then(|r| r.median(Kind::Rust))
    };
    for window in &IN_FLIGHT[1..] {
        let target = format!(
            "coalesce, {window} in flight: c=64 >= 1.5x req/s of coalescing off, p99 no worse"
        );
        let on = format!("c=64 {}", window_name(*window));
        let figures = coalesce(&on, "req/s")
            .zip(coalesce("c=64 off", "req/s"))
            .zip(coalesce(&on, "p99 us").zip(coalesce("c=64 off", "p99 us")));
        out.push(match figures {
            Some(((rps_on, rps_off), (p99_on, p99_off))) => Verdict {
                target,
                met: Some(rps_on / rps_off >= 1.5 && p99_on <= p99_off),
                detail: format!(
                    "{rps_on:.0} vs {rps_off:.0} req/s ({:.2}x), p99 {p99_on:.0} vs \
                     {p99_off:.0} us",
                    rps_on / rps_off
                ),
            },
            None => not_measured(&target),
        });
    }
    out
}

fn not_measured(target: &str) -> Verdict {
    Verdict {
        target: target.to_owned(),
        met: None,
        detail: "not measured".into(),
    }
}
