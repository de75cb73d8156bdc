//! freeze and black-hole (issue 25, item 8): one of three owners stops answering under traffic,
//! Rust and golang/groupcache side by side, with the same traffic without the fault as the
//! control.
//!
//! Per target and round, on three fresh replicas (1 KiB values, a 1 ms loader, 64 MiB main
//! cache; the Rust replicas with the library's defaults, failure detection included, but no hot
//! cache, so that every get of the faulted owner's keys reaches an owner or a successor;
//! golang/groupcache's hot cache cannot be turned off and stays on):
//!
//! 1. every one of [`KEYS`] keys is loaded once by its owner (asked of the owner itself);
//! 2. [`CONCURRENCY`] closed-loop connections of the load generator ask the two healthy replicas
//!    for uniformly random keys of all owners (each key of either replica): a warm-up, then the
//!    control window of `--fault-secs` (default 10 s);
//! 3. the third replica is faulted for another window as long, under the same traffic, and then
//!    restored: `freeze` SIGSTOPs it then SIGCONTs it (a paused or CPU-starved pod: its kernel
//!    still accepts connections); `black-hole` runs each replica in a network namespace of its
//!    own and drops every packet between the third and the others with nftables, connections
//!    already open included (a node that lost power or its network), then deletes the rules.
//!
//! Figures of the faulted window: requests answered within it against the control's (%), p50, p99
//! and max latency (of the requests sent in the window, answered in it or after the fault was
//! lifted), errors, and loads per key of the faulted owner's keys asked in the window (the
//! healthy replicas' loader runs over those keys: healthy owners' keys stay in their main
//! caches).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::churn::loads;
use crate::cluster::{Cluster, Kind, LOOPBACK, Process, Settings, replica_command, stats_of};
use crate::load::{Limit, Outcome, Uniform};
use crate::netns::{self, Network};
use crate::report::{Better, Report, Verdict};
use crate::workloads::{
    BUDGET, Bench, VALUE_BYTES, WARM_UP, connect, expect_all, get_path, keys, run_once,
    servers_cpu_us,
};

type Result<T> = std::result::Result<T, String>;

/// Keys asked, of all three owners.
const KEYS: usize = 20_000;
/// The load generator's connections, each to either healthy replica at random: about 16 in
/// flight on each.
const CONCURRENCY: usize = 32;
/// The replica that is faulted; the others are asked.
const FAULTED: usize = 2;
/// The case every figure is recorded under.
const CASE: &str = "1 of 3 owners";
const SETTINGS: Settings = Settings {
    value_bytes: VALUE_BYTES,
    load_ms: 1,
    cache_bytes: BUDGET,
    batch_loader: false,
    coalesce_in_flight: 0,
    no_handoff: false,
    no_hot_cache: true,
    otel_sink: None,
};

/// What happens to the faulted owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGSTOP, then SIGCONT.
    Freeze,
    /// nftables drop between it and the other replicas, then the rules deleted.
    BlackHole,
}

impl Fault {
    /// The workload's name.
    fn workload(self) -> &'static str {
        match self {
            Fault::Freeze => "freeze",
            Fault::BlackHole => "black-hole",
        }
    }
}

/// Three replicas, and for a black hole the namespaces they run in.
struct Faulty {
    // Dropped first: the replicas die before their namespaces are deleted.
    cluster: Cluster,
    network: Option<Network>,
}

impl Faulty {
    async fn start(bench: &Bench<'_>, fault: Fault, kind: Kind) -> Result<Faulty> {
        let network = (fault == Fault::BlackHole).then(|| Network::new(3));
        let mut replicas = Vec::with_capacity(3);
        for i in 0..3 {
            let node = network.as_ref().map(|n| &n.nodes[i]);
            let host = node.map_or(LOOPBACK, |node| node.addr);
            let command = replica_command(bench.binaries, kind, SETTINGS, host);
            let command = match node {
                Some(node) => in_netns(&command, &node.netns),
                None => command,
            };
            replicas.push(Process::start(command)?);
        }
        let cluster = Cluster::join(replicas, kind).await?;
        Ok(Faulty { cluster, network })
    }

    fn begin(&mut self) {
        match &mut self.network {
            None => self.cluster.replicas[FAULTED].signal("STOP"),
            Some(network) => network.partition(&[FAULTED], &[0, 1]),
        }
    }

    fn end(&mut self) {
        match &mut self.network {
            None => self.cluster.replicas[FAULTED].signal("CONT"),
            Some(network) => network.heal(),
        }
    }
}

/// `command`, run in network namespace `netns` (`ip netns exec` execs it: same process).
fn in_netns(command: &Command, netns: &str) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", netns])
        .arg(command.get_program())
        .args(command.get_args());
    wrapped
}

/// Answers within the window of `outcome`, per second of `window`.
fn served_rate(outcome: &Outcome, window: Duration) -> f64 {
    outcome.ok.saturating_sub(outcome.late) as f64 / window.as_secs_f64()
}

/// The distinct keys (indices into the key list) the first `sent` requests of a run of
/// `source` asked for, where request `i` of the source asks for key `i / 2`.
fn asked(source: &Uniform, sent: u64) -> HashSet<usize> {
    (0..sent).map(|seq| source.index(seq) / 2).collect()
}

impl Bench<'_> {
    /// freeze or black-hole: see the module's documentation.
    pub(crate) async fn fault(&mut self, fault: Fault) -> Result<()> {
        let workload = fault.workload();
        if fault == Fault::BlackHole && !netns::available() {
            self.report.notes.push(format!(
                "{workload}: skipped, network namespaces are not available (root, ip and nft)"
            ));
            return Ok(());
        }
        for round in 0..self.options.rounds {
            for kind in self.order(&[Kind::Rust, Kind::GoPooled], round) {
                self.progress(workload, round, kind);
                self.fault_round(fault, kind).await?;
            }
        }
        Ok(())
    }

    async fn fault_round(&mut self, fault: Fault, kind: Kind) -> Result<()> {
        let workload = fault.workload();
        let window = Duration::from_secs_f64(self.options.fault_secs);
        let mut faulty = Faulty::start(self, fault, kind).await?;
        let cluster = &faulty.cluster;
        let (faulted_keys, source) = warm(cluster, "fault-", workload).await?;
        let healthy: Vec<&Process> = cluster.replicas[..FAULTED].iter().collect();
        let targets: Vec<SocketAddr> = healthy.iter().map(|p| p.addr).collect();
        let mut pool = connect(&targets, CONCURRENCY).await?;
        pool.run(source.clone(), Limit::Time(WARM_UP)).await;
        let control = pool.run(source.clone(), Limit::Time(window)).await;
        let before = loads(&healthy).await?;

        faulty.begin();
        let lift = async {
            tokio::time::sleep(window).await;
            faulty.end();
        };
        let (during, ()) = tokio::join!(pool.run(source.clone(), Limit::Time(window)), lift);
        let healthy: Vec<&Process> = faulty.cluster.replicas[..FAULTED].iter().collect();
        let reloads = loads(&healthy).await?.saturating_sub(before);

        let orphans = asked(&source, during.ok + during.errors)
            .into_iter()
            .filter(|&i| faulted_keys[i])
            .count();
        let control_rate = served_rate(&control, window);
        let rate = served_rate(&during, window);
        let mut add = |metric, better, value| {
            self.report.add(workload, CASE, metric, better, kind, value);
        };
        use Better::{Higher, Lower};
        add("control req/s", Higher, control_rate);
        add("faulted req/s", Higher, rate);
        add(SERVED, Higher, rate / control_rate.max(1e-9) * 100.0);
        add("control p99 us", Lower, control.quantile_us(0.99));
        add("p50 us", Lower, during.quantile_us(0.5));
        add(P99, Lower, during.quantile_us(0.99));
        add("max us", Lower, during.quantile_us(1.0));
        add(ERRORS, Lower, during.errors as f64);
        add("control errors", Lower, control.errors as f64);
        add("faulted owner's keys asked", Higher, orphans as f64);
        add(LOADS, Lower, reloads as f64 / orphans.max(1) as f64);
        for (outcome, phase) in [(&control, "control"), (&during, "fault")] {
            if let Some(error) = &outcome.first_error {
                self.report.notes.push(format!(
                    "{workload} {} {phase}: {} errors, first: {error}",
                    kind.name(),
                    outcome.errors
                ));
            }
        }
        Ok(())
    }
}

/// pauses (issue 25, item 4): does hedging pay? Rust only, three fresh replicas per case and
/// round, hedging off and on (`--hedge`), in the same order alternated by round, under
/// freeze's traffic (uniformly random keys of all owners from [`CONCURRENCY`] connections to
/// the two healthy replicas, 1 ms loader, no hot cache) for `--fault-secs`:
///
/// - `pauses`: the third replica is SIGSTOPped for [`PAUSES_MS`] in turn, each followed by
///   [`RUNNING_MS`] running: stalls shorter than the failure detection (1 s), which never make
///   it suspected, so without hedging its keys wait each stall out;
/// - `healthy`: no pause, for hedging's cost where it cannot help.
///
/// Figures: p50, p99 and max latency, requests answered per second, loads per key of the paused
/// owner's keys asked (the healthy replicas' loader runs over them: hedges' loads by the
/// successor; in `healthy`, over every key asked), peer requests (every replica's
/// `server_requests`), hedges, and the three replicas' CPU time per answered request.
pub(crate) const PAUSES_MS: [u64; 4] = [100, 250, 400, 150];
/// How long the paused replica runs between pauses.
pub(crate) const RUNNING_MS: u64 = 600;

impl Bench<'_> {
    /// pauses: see [`PAUSES_MS`].
    pub(crate) async fn pauses(&mut self) -> Result<()> {
        for round in 0..self.options.rounds {
            let mut order = [false, true];
            if round % 2 == 1 {
                order.reverse();
            }
            for paused in [true, false] {
                for hedge in order {
                    let case = match (paused, hedge) {
                        (true, false) => "pauses, hedging off",
                        (true, true) => "pauses, hedging on",
                        (false, false) => "healthy, hedging off",
                        (false, true) => "healthy, hedging on",
                    };
                    eprintln!(
                        "pauses: round {} of {}, {case}",
                        round + 1,
                        self.options.rounds
                    );
                    self.pauses_round(case, paused, hedge).await?;
                }
            }
        }
        Ok(())
    }

    async fn pauses_round(&mut self, case: &str, paused: bool, hedge: bool) -> Result<()> {
        const WORKLOAD: &str = "pauses";
        let window = Duration::from_secs_f64(self.options.fault_secs);
        let mut replicas = Vec::with_capacity(3);
        for _ in 0..3 {
            let mut command = replica_command(self.binaries, Kind::Rust, SETTINGS, LOOPBACK);
            command.args(["--hedge", if hedge { "on" } else { "off" }]);
            replicas.push(Process::start(command)?);
        }
        let cluster = Cluster::join(replicas, Kind::Rust).await?;
        let (faulted_keys, source) = warm(&cluster, "pauses-", WORKLOAD).await?;
        let all: Vec<&Process> = cluster.replicas.iter().collect();
        let healthy: Vec<&Process> = cluster.replicas[..FAULTED].iter().collect();
        let targets: Vec<SocketAddr> = healthy.iter().map(|p| p.addr).collect();
        let mut pool = connect(&targets, CONCURRENCY).await?;
        pool.run(source.clone(), Limit::Time(WARM_UP)).await;

        let stats_before = stats_of(&all).await?;
        let loads_before = loads(&healthy).await?;
        let cpu_before = servers_cpu_us(&cluster.pids());
        let faulted = &cluster.replicas[FAULTED];
        let pausing = async {
            if !paused {
                return;
            }
            let end = tokio::time::Instant::now() + window;
            for &pause in PAUSES_MS.iter().cycle() {
                let now = tokio::time::Instant::now();
                if now >= end {
                    break;
                }
                faulted.signal("STOP");
                tokio::time::sleep_until((now + Duration::from_millis(pause)).min(end)).await;
                faulted.signal("CONT");
                tokio::time::sleep(Duration::from_millis(RUNNING_MS)).await;
            }
        };
        let (during, ()) = tokio::join!(pool.run(source.clone(), Limit::Time(window)), pausing);
        let cpu_us = servers_cpu_us(&cluster.pids()).saturating_sub(cpu_before);
        let reloads = loads(&healthy).await?.saturating_sub(loads_before);
        let stats_after = stats_of(&all).await?;
        let total = |stats: &[crate::cluster::Stats], f: fn(&crate::cluster::Stats) -> u64| {
            stats.iter().map(f).sum::<u64>()
        };
        let requests = total(&stats_after, |s| s.stats.server_requests)
            .saturating_sub(total(&stats_before, |s| s.stats.server_requests));
        let hedges = total(&stats_after, |s| s.stats.hedges)
            .saturating_sub(total(&stats_before, |s| s.stats.hedges));

        let asked: Vec<usize> = asked(&source, during.ok + during.errors)
            .into_iter()
            .filter(|&i| !paused || faulted_keys[i])
            .collect();
        let answered = during.ok.max(1) as f64;
        let mut add = |metric, better, value| {
            self.report
                .add(WORKLOAD, case, metric, better, Kind::Rust, value);
        };
        use Better::{Higher, Lower};
        add("req/s", Higher, served_rate(&during, window));
        add("p50 us", Lower, during.quantile_us(0.5));
        add(P99, Lower, during.quantile_us(0.99));
        add("p99.9 us", Lower, during.quantile_us(0.999));
        add("max us", Lower, during.quantile_us(1.0));
        // The closed loop lets each connection stall on one paused key at a time, so a pause
        // shows in few requests: these count them, and how long they took in all.
        let slow = during.latencies_us.iter().filter(|&&us| us >= 50_000);
        add("gets >= 50 ms", Lower, slow.clone().count() as f64);
        add(
            "s waited in gets >= 50 ms",
            Lower,
            slow.map(|&us| f64::from(us)).sum::<f64>() / 1e6,
        );
        add(ERRORS, Lower, during.errors as f64);
        add("keys asked", Higher, asked.len() as f64);
        add(
            "extra loads per key",
            Lower,
            reloads as f64 / asked.len().max(1) as f64,
        );
        add("peer requests per get", Lower, requests as f64 / answered);
        add("hedges", Lower, hedges as f64);
        add("cpu us per get", Lower, cpu_us as f64 / answered);
        if let Some(error) = &during.first_error {
            self.report.notes.push(format!(
                "pauses {case}: {} errors, first: {error}",
                during.errors
            ));
        }
        Ok(())
    }
}

const SERVED: &str = "served % of control";
const P99: &str = "p99 us";
const ERRORS: &str = "errors";
const LOADS: &str = "loads per faulted key";

/// The targets, from the Rust medians of each fault measured (Go's beside them).
pub(crate) fn verdicts(report: &Report) -> Vec<Verdict> {
    let mut out = Vec::new();
    for fault in [Fault::Freeze, Fault::BlackHole] {
        let workload = fault.workload();
        let targets: [(&str, &str, f64, bool); 4] = [
            (
                SERVED,
                ">= 70 % of the control's requests served",
                70.0,
                true,
            ),
            (P99, "p99 <= 1.5 s", 1.5e6, false),
            (
                LOADS,
                "<= 1.1 loads per key of the faulted owner's",
                1.1,
                false,
            ),
            (ERRORS, "0 errors", 0.0, false),
        ];
        for (metric, words, bound, at_least) in targets {
            let row = report.row(workload, CASE, metric);
            let median = |kind| row.and_then(|r| r.median(kind));
            let (met, detail) = match median(Kind::Rust) {
                Some(rust) => {
                    let met = if at_least {
                        rust >= bound
                    } else {
                        rust <= bound
                    };
                    let figure = |v: f64| match metric {
                        SERVED => format!("{v:.1} %"),
                        P99 => format!("{:.3} s", v / 1e6),
                        LOADS => format!("{v:.3}"),
                        _ => format!("{v:.0}"),
                    };
                    let go = median(Kind::GoPooled)
                        .map_or(String::new(), |go| format!(" (Go {})", figure(go)));
                    (Some(met), format!("Rust {}{go}", figure(rust)))
                }
                None => (None, "not measured".to_owned()),
            };
            out.push(Verdict {
                target: format!("{workload}: one of three owners faulted: {words}"),
                met,
                detail,
            });
        }
    }
    out
}

/// Loads `KEYS` keys named `prefix…` once on their owners; which of them the faulted replica
/// owns, and the traffic of both healthy replicas over all of them: request 2i asks replica 0
/// for key i, request 2i + 1 replica 1.
async fn warm(
    cluster: &Cluster,
    prefix: &str,
    workload: &str,
) -> Result<(Vec<bool>, Arc<Uniform>)> {
    let keys = keys(prefix, KEYS);
    let fill: Vec<_> = keys
        .iter()
        .map(|k| (cluster.owner(k), get_path(k)))
        .collect();
    let filled = run_once(&cluster.addrs(), CONCURRENCY, fill).await;
    expect_all(&filled, KEYS, VALUE_BYTES, &format!("{workload} warm-up"))?;
    let faulted_keys = keys.iter().map(|k| cluster.owner(k) == FAULTED).collect();
    let source = Arc::new(Uniform {
        requests: keys
            .iter()
            .flat_map(|k| [(0, get_path(k)), (1, get_path(k))])
            .collect(),
    });
    Ok((faulted_keys, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_read_the_rust_medians() {
        let mut report = Report::default();
        assert!(verdicts(&report).iter().all(|v| v.met.is_none()));
        for (kind, served, p99, loads, errors) in [
            (Kind::Rust, 85.0, 4_000.0, 1.0, 0.0),
            (Kind::GoPooled, 0.2, 10e6, 0.0, 0.0),
        ] {
            for (metric, value) in [
                (SERVED, served),
                (P99, p99),
                (LOADS, loads),
                (ERRORS, errors),
            ] {
                report.add("freeze", CASE, metric, Better::Lower, kind, value);
            }
        }
        let lines = verdicts(&report);
        assert_eq!(lines.len(), 8);
        assert!(lines[..4].iter().all(|v| v.met == Some(true)), "{lines:?}");
        assert!(lines[0].detail.contains("Go 0.2 %"), "{}", lines[0].detail);
        assert!(
            lines[1].detail.contains("Go 10.000 s"),
            "{}",
            lines[1].detail
        );
        assert!(lines[4..].iter().all(|v| v.met.is_none()), "black-hole");
    }

    #[test]
    fn keys_asked_are_halves_of_request_indices() {
        let source = Uniform {
            requests: (0..10).map(|i| (i % 2, vec![i as u8])).collect(),
        };
        let asked = asked(&source, 1_000);
        assert_eq!(asked.len(), 5, "{asked:?}");
        assert!(asked.iter().all(|&k| k < 5));
        let command = in_netns(&Command::new("/bin/true"), "ns");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["netns", "exec", "ns", "/bin/true"]);
    }
}
