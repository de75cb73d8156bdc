//! Command-line parsing, by hand: a few flags do not need a parser crate.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Every workload, in the order `all` runs them.
pub(crate) const WORKLOADS: [&str; 21] = [
    "ceiling",
    "local-hit",
    "remote-get",
    "cold-storm",
    "memory",
    "hot-key",
    "batch",
    "coalesce",
    "churn",
    "traces",
    "groups-flood",
    "freeze",
    "black-hole",
    "detectors",
    "pauses",
    "ring-change",
    "missing-storm",
    "refresh-ahead",
    "source-down",
    "purge",
    "otel",
];

/// What to do.
#[derive(Debug, PartialEq)]
pub(crate) enum Command {
    /// Run workloads and report.
    Bench(BenchOptions),
    /// Serve as a Rust replica (started by the driver).
    Replica(ReplicaOptions),
    /// Serve as the bare axum ceiling (started by the driver).
    Ceiling,
    /// Print the usage.
    Help,
}

/// Options of a benchmark run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BenchOptions {
    /// Workloads to run, in order.
    pub workloads: Vec<&'static str>,
    /// Repetitions of every measurement; medians are reported.
    pub rounds: usize,
    /// Length of every timed run.
    pub secs: f64,
    /// Concurrency levels of the throughput workloads.
    pub concurrency: Vec<usize>,
    /// Measured requests per remote-get run (each a distinct key and requester).
    pub remote_requests: usize,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
    /// A prebuilt Go peer, instead of building one.
    pub go_peer: Option<PathBuf>,
    /// Only these targets (`rust`, `go`, ...); empty: all. For profiling one side alone.
    pub only: Vec<String>,
    /// Value sizes of the memory workload, in bytes.
    pub value_bytes: Vec<usize>,
    /// groups-flood: how long the flood group's loader takes.
    pub flood_load_ms: u64,
    /// groups-flood: the flood's connections, each with one request in flight.
    pub flood_connections: usize,
    /// groups-flood: the replica's `max_concurrent_peer_requests`; None: the library's default.
    pub max_peer_requests: Option<usize>,
    /// groups-flood: how long a flood connection waits after a 503 before it asks again.
    pub flood_pause_ms: u64,
    /// groups-flood: the replica's `peer_admission_wait` in ms; None: the library's default.
    pub admission_wait_ms: Option<u64>,
    /// freeze, black-hole: how long the fault lasts, and the control window too.
    pub fault_secs: f64,
    /// source-down: how long the source is down.
    pub down_secs: f64,
    /// purge: entries the group holds when it is purged, over all three replicas.
    pub purge_entries: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            workloads: Vec::new(),
            rounds: 5,
            secs: 3.0,
            concurrency: vec![16, 64],
            remote_requests: 60_000,
            json: None,
            go_peer: None,
            only: Vec::new(),
            value_bytes: vec![4096],
            flood_load_ms: 3_000,
            flood_connections: 2_000,
            max_peer_requests: None,
            flood_pause_ms: 0,
            admission_wait_ms: None,
            fault_secs: 10.0,
            down_secs: 10.0,
            purge_entries: 3_000_000,
        }
    }
}

/// The Rust replica's settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ReplicaOptions {
    /// Every value is padded (or cut) to exactly this many bytes; 0 keeps `rs:{key}`.
    pub value_bytes: usize,
    /// How long the loader sleeps.
    pub load_ms: u64,
    /// The budget main and hot share; None: the library's default.
    pub cache_bytes: Option<u64>,
    /// The main cache's cap.
    pub main_bytes: Option<u64>,
    /// The hot cache's cap.
    pub hot_bytes: Option<u64>,
    /// golang/groupcache's ring instead of the balanced default.
    pub go_ring: bool,
    /// A `load_many` that loads all its keys in one sleep (see `replica.rs`).
    pub batch_loader: bool,
    /// `Builder::coalesce_fetches`, requests in flight per owner (0: off).
    pub coalesce_in_flight: usize,
    /// The warm hand-off off (`Builder::handoff_timeout` zero), as in a ring older than
    /// `hot_max_age`.
    pub no_handoff: bool,
    /// `Builder::admission`: TinyLFU admission on both caches.
    pub admission: bool,
    /// `Builder::hedge_fetches` (`--hedge on|off`); None: the library's default.
    pub hedge: Option<bool>,
    /// groups-flood: 0, the benchmark group alone (the rest of this struct applies); 1 or 2,
    /// one `Cluster` serving the calm group, and with 2 the flood group too, whose keys
    /// ([`FLOOD_KEYS`](crate::shared::FLOOD_KEYS)) alone take `load_ms` to load.
    pub groups: usize,
    /// groups-flood: `ClusterBuilder::max_concurrent_peer_requests`; None: the default.
    pub max_peer_requests: Option<usize>,
    /// groups-flood: `ClusterBuilder::peer_admission_wait` in ms; None: the default.
    pub admission_wait_ms: Option<u64>,
    /// The address to listen on (a free port); None: 127.0.0.1. black-hole's replicas listen
    /// on their network namespace's address.
    pub listen: Option<Ipv4Addr>,
    /// How long values of [`EXPIRING_KEYS`](crate::shared::EXPIRING_KEYS) live, in ms (0: for
    /// ever).
    pub ttl_ms: u64,
    /// When values of [`EXPIRING_KEYS`](crate::shared::EXPIRING_KEYS) are refreshed ahead, in
    /// ms after their load (0: never).
    pub refresh_ms: u64,
    /// `Builder::not_found_ttl` in ms; None: the library's default.
    pub not_found_ttl_ms: Option<u64>,
    /// `Builder::max_stale` in ms; None: the library's default (off).
    pub max_stale_ms: Option<u64>,
    /// The otel workload: export every span over OTLP/HTTP to this base URL, through the
    /// OpenTelemetry layer configured as the README advises, with W3C trace context on peer
    /// requests; None: no subscriber at all.
    pub otel_endpoint: Option<String>,
}

/// How to call the program.
pub(crate) const USAGE: &str = "\
usage: groupcache-bench [WORKLOAD...|all] [--rounds N] [--secs S] [--concurrency 16,64]
                        [--remote-requests N] [--json PATH] [--go-peer PATH] [--only T,T]
                        [--value-bytes 64,100,4096] [--flood-load-ms N] [--flood N]
                        [--max-peer-requests N] [--flood-pause-ms N] [--admission-wait-ms N]
                        [--fault-secs S] [--down-secs S] [--purge-entries N]

Workloads: ceiling, local-hit, remote-get, cold-storm, memory, hot-key, batch, coalesce,
churn, traces, groups-flood, freeze, black-hole, detectors, pauses, ring-change, missing-storm,
refresh-ahead, source-down, purge, otel; `all` runs every one
(local-hit and remote-get measure the ceiling in their own rounds, so `all` skips `ceiling`).
Each measurement is repeated --rounds times (default 5), alternating Rust and Go; medians are
reported. Timed runs last --secs seconds (default 3). --only rust (or rust-otel, go, go-default,
ceiling, go-bare) runs one side alone, for profiling: its figures are not side by side.
--value-bytes sets the memory workload's value sizes (default 4096), one case each.
groups-flood: --flood-load-ms is the flood group's loader latency (default 3000), --flood its
connections (default 2000), --max-peer-requests the replica's limit (default: the library's),
--flood-pause-ms a flood connection's wait after a 503 (default 0: it asks again at once).
--admission-wait-ms the replica's peer_admission_wait (default the library's; 0: 503 at once).
freeze and black-hole: one of three owners frozen (SIGSTOP) or black-holed (nftables drop, in
network namespaces: root only) for --fault-secs (default 10), after a control window as long.
detectors: the failure detector against phi accrual, simulated (no process, no Go peer).
pauses: Rust only, hedging off and on, one of three owners paused for 100-400 ms at a time, and
the same without pauses, for --fault-secs each.
ring-change: Rust only, in process: one replica holding 400,000 entries, a client's gets with 10
ring changes over --secs and without, side by side.
missing-storm, refresh-ahead, source-down, purge (issue 27; see freshness.rs and purge.rs):
10,000 missing keys asked 100 times each; a popular key past its soft expiry under 64
connections; the source down for --down-secs (default 10; 30 for the recorded figures) with
max_stale on and off; a purge of a group holding --purge-entries entries over three replicas
(default 3,000,000: about 1 M per replica).
otel (issue 28; see otel.rs): local-hit and remote-get against replicas with no subscriber and
with the OpenTelemetry layer exporting every span over OTLP/HTTP to a sink in this process.

Internal: `replica --value-bytes N --load-ms N [--cache-bytes N] [--main-bytes N] [--hot-bytes N]
[--go-ring] [--batch-loader] [--coalesce-in-flight N] [--no-handoff] [--admission] [--hedge on|off]
[--groups 1|2] [--max-peer-requests N] [--listen IP] [--ttl-ms N] [--refresh-ms N]
[--not-found-ttl-ms N] [--max-stale-ms N] [--otel-endpoint URL]` and `ceiling-server` are the
server processes the driver starts.";

/// Parses the arguments after the program name.
pub(crate) fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut args = args.into_iter().peekable();
    match args.peek().map(String::as_str) {
        Some("replica") => {
            args.next();
            return parse_replica(args).map(Command::Replica);
        }
        Some("ceiling-server") => return Ok(Command::Ceiling),
        Some("-h" | "--help" | "help") => return Ok(Command::Help),
        _ => {}
    }
    let mut options = BenchOptions::default();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "all" => options.workloads.extend(WORKLOADS.iter().skip(1)),
            "--rounds" => options.rounds = number(&arg, &value(&arg)?)?.max(1),
            "--secs" => options.secs = seconds(&arg, &value(&arg)?)?,
            "--fault-secs" => options.fault_secs = seconds(&arg, &value(&arg)?)?,
            "--down-secs" => options.down_secs = seconds(&arg, &value(&arg)?)?,
            "--purge-entries" => options.purge_entries = number(&arg, &value(&arg)?)?.max(1),
            "--concurrency" => options.concurrency = positive_list(&arg, &value(&arg)?, "levels")?,
            "--remote-requests" => {
                options.remote_requests = number(&arg, &value(&arg)?)?.max(2);
            }
            "--json" => options.json = Some(PathBuf::from(value(&arg)?)),
            "--go-peer" => options.go_peer = Some(PathBuf::from(value(&arg)?)),
            "--only" => options.only = value(&arg)?.split(',').map(str::to_owned).collect(),
            "--value-bytes" => options.value_bytes = positive_list(&arg, &value(&arg)?, "sizes")?,
            "--flood-load-ms" => options.flood_load_ms = number(&arg, &value(&arg)?)? as u64,
            "--flood-pause-ms" => options.flood_pause_ms = number(&arg, &value(&arg)?)? as u64,
            "--admission-wait-ms" => {
                options.admission_wait_ms = Some(number(&arg, &value(&arg)?)? as u64);
            }
            "--flood" => options.flood_connections = number(&arg, &value(&arg)?)?.max(1),
            "--max-peer-requests" => {
                options.max_peer_requests = Some(number(&arg, &value(&arg)?)?.max(1));
            }
            name => match WORKLOADS.iter().find(|w| **w == name) {
                Some(w) => options.workloads.push(w),
                None => return Err(format!("unknown workload or flag {name:?}\n\n{USAGE}")),
            },
        }
    }
    if options.workloads.is_empty() {
        return Err(format!("name a workload, or `all`\n\n{USAGE}"));
    }
    options.workloads.dedup();
    Ok(Command::Bench(options))
}

/// A positive, finite number of seconds.
fn seconds(arg: &str, value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && s.is_finite())
        .ok_or_else(|| format!("{arg}: {value:?} is not a positive number"))
}

/// A comma-separated list of numbers, each at least 1 (`what` names them in the error).
fn positive_list(arg: &str, list: &str, what: &str) -> Result<Vec<usize>, String> {
    let numbers = list
        .split(',')
        .map(|n| number(arg, n))
        .collect::<Result<Vec<usize>, String>>()?;
    if numbers.is_empty() || numbers.contains(&0) {
        return Err(format!("{arg}: {what} must be at least 1"));
    }
    Ok(numbers)
}

fn parse_replica<I: Iterator<Item = String>>(mut args: I) -> Result<ReplicaOptions, String> {
    let mut options = ReplicaOptions::default();
    while let Some(arg) = args.next() {
        let switch = match arg.as_str() {
            "--go-ring" => Some(&mut options.go_ring),
            "--batch-loader" => Some(&mut options.batch_loader),
            "--no-handoff" => Some(&mut options.no_handoff),
            "--admission" => Some(&mut options.admission),
            _ => None,
        };
        if let Some(switch) = switch {
            *switch = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--value-bytes" => options.value_bytes = number(&arg, &value)?,
            "--load-ms" => options.load_ms = number(&arg, &value)? as u64,
            "--cache-bytes" => options.cache_bytes = Some(number(&arg, &value)? as u64),
            "--main-bytes" => options.main_bytes = Some(number(&arg, &value)? as u64),
            "--hot-bytes" => options.hot_bytes = Some(number(&arg, &value)? as u64),
            "--coalesce-in-flight" => options.coalesce_in_flight = number(&arg, &value)?,
            "--hedge" => options.hedge = Some(value == "on"),
            "--groups" => options.groups = number(&arg, &value)?.min(2),
            "--max-peer-requests" => options.max_peer_requests = Some(number(&arg, &value)?),
            "--admission-wait-ms" => {
                options.admission_wait_ms = Some(number(&arg, &value)? as u64);
            }
            "--ttl-ms" => options.ttl_ms = number(&arg, &value)? as u64,
            "--refresh-ms" => options.refresh_ms = number(&arg, &value)? as u64,
            "--not-found-ttl-ms" => options.not_found_ttl_ms = Some(number(&arg, &value)? as u64),
            "--max-stale-ms" => options.max_stale_ms = Some(number(&arg, &value)? as u64),
            "--otel-endpoint" => options.otel_endpoint = Some(value),
            "--listen" => {
                let ip = value.parse().map_err(|_| format!("--listen: {value:?}"))?;
                options.listen = Some(ip);
            }
            _ => return Err(format!("replica: unknown flag {arg:?}")),
        }
    }
    Ok(options)
}

fn number(flag: &str, value: &str) -> Result<usize, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a whole number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Command, String> {
        parse(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn all_and_flags() {
        let Ok(Command::Bench(options)) = parse_str("all --rounds 3 --secs 1.5 --concurrency 8,32")
        else {
            panic!("all parses");
        };
        assert_eq!(options.workloads, &WORKLOADS[1..]);
        assert_eq!((options.rounds, options.secs), (3, 1.5));
        assert_eq!(options.concurrency, [8, 32]);
        let Ok(Command::Bench(options)) = parse_str("memory hot-key") else {
            panic!("names parse");
        };
        assert_eq!(options.workloads, ["memory", "hot-key"]);
        assert_eq!(options.value_bytes, [4096], "the memory workload's default");
        let Ok(Command::Bench(options)) = parse_str("memory --value-bytes 64,100,65536") else {
            panic!("value sizes parse");
        };
        assert_eq!(options.value_bytes, [64, 100, 65536]);
        assert!(parse_str("memory --value-bytes 0").is_err());
        assert!(parse_str("memory --value-bytes 1,x").is_err());
        let Ok(Command::Bench(options)) = parse_str(
            "groups-flood --flood-load-ms 500 --flood 100 --max-peer-requests 64 --flood-pause-ms 5",
        ) else {
            panic!("the flood's flags parse");
        };
        assert_eq!(options.workloads, ["groups-flood"]);
        assert_eq!(
            (
                options.flood_load_ms,
                options.flood_connections,
                options.max_peer_requests,
                options.flood_pause_ms
            ),
            (500, 100, Some(64), 5)
        );
        let Ok(Command::Bench(options)) = parse_str("freeze black-hole --fault-secs 2.5") else {
            panic!("the fault workloads parse");
        };
        assert_eq!(options.workloads, ["freeze", "black-hole"]);
        assert_eq!(options.fault_secs, 2.5);
        assert!(parse_str("freeze --fault-secs 0").is_err());
        let Ok(Command::Bench(options)) =
            parse_str("source-down purge --down-secs 30 --purge-entries 1000")
        else {
            panic!("issue 27's flags parse");
        };
        assert_eq!(options.workloads, ["source-down", "purge"]);
        assert_eq!((options.down_secs, options.purge_entries), (30.0, 1000));
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(parse_str("").unwrap_err().contains("name a workload"));
        assert!(parse_str("warp").unwrap_err().contains("\"warp\""));
        assert!(
            parse_str("all --rounds")
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(parse_str("all --secs -1").unwrap_err().contains("positive"));
        assert!(parse_str("all --concurrency 0").is_err());
    }

    #[test]
    fn server_commands() {
        assert_eq!(parse_str("ceiling-server"), Ok(Command::Ceiling));
        assert_eq!(
            parse_str("replica --value-bytes 1024 --load-ms 50 --main-bytes 99 --go-ring"),
            Ok(Command::Replica(ReplicaOptions {
                value_bytes: 1024,
                load_ms: 50,
                main_bytes: Some(99),
                go_ring: true,
                ..ReplicaOptions::default()
            }))
        );
        assert_eq!(
            parse_str("replica --batch-loader --coalesce-in-flight 2 --no-handoff --admission"),
            Ok(Command::Replica(ReplicaOptions {
                batch_loader: true,
                coalesce_in_flight: 2,
                no_handoff: true,
                admission: true,
                ..ReplicaOptions::default()
            }))
        );
        assert_eq!(
            parse_str("replica --groups 2 --load-ms 3000 --max-peer-requests 64"),
            Ok(Command::Replica(ReplicaOptions {
                load_ms: 3000,
                groups: 2,
                max_peer_requests: Some(64),
                ..ReplicaOptions::default()
            }))
        );
        assert_eq!(
            parse_str("replica --otel-endpoint http://127.0.0.1:4318"),
            Ok(Command::Replica(ReplicaOptions {
                otel_endpoint: Some("http://127.0.0.1:4318".to_owned()),
                ..ReplicaOptions::default()
            }))
        );
        assert_eq!(
            parse_str("replica --listen 198.18.0.1 --hot-bytes 0"),
            Ok(Command::Replica(ReplicaOptions {
                listen: Some(std::net::Ipv4Addr::new(198, 18, 0, 1)),
                hot_bytes: Some(0),
                ..ReplicaOptions::default()
            }))
        );
        assert_eq!(
            parse_str(
                "replica --ttl-ms 1500 --refresh-ms 1000 --not-found-ttl-ms 0 --max-stale-ms 60000"
            ),
            Ok(Command::Replica(ReplicaOptions {
                ttl_ms: 1500,
                refresh_ms: 1000,
                not_found_ttl_ms: Some(0),
                max_stale_ms: Some(60_000),
                ..ReplicaOptions::default()
            }))
        );
        assert!(parse_str("replica --nope 1").is_err());
    }
}
