//! Cluster benchmarks of groupcache for Rust against golang/groupcache.
//!
//! ```text
//! cargo run --release -p groupcache-bench -- all
//! ```
//!
//! Starts real replicas as separate processes on 127.0.0.1 (Rust replicas from this binary, Go
//! replicas from `tests/interop/go-peer`, built against Debian's golang/groupcache), drives them
//! with the load generator in this process over keep-alive connections, and prints a table of
//! medians and ratios, the verdict on each target of the benchmark issue, and the JSON report.
//! See `BENCHMARKS.md` at the repository root.

mod args;
mod batch;
// The integration tests' child-process helper, compiled here too: one copy, and no dependency on
// the tests crate (whose TLS, PostgreSQL and HTTP-client dependencies would be built into this
// binary, and whose `tls` feature of the library would change what is measured). The bench uses
// `try_spawn`, `url` and `pid` only, hence the allowances for the rest.
#[path = "../../tests/src/child.rs"]
#[allow(dead_code, unreachable_pub)]
mod child;
mod churn;
mod cluster;
mod detectors;
mod fault;
mod flood;
mod freshness;
mod http;
mod load;
// The partition tests' network namespaces (std only), for black-hole: one copy.
#[path = "../../tests/src/netns.rs"]
#[allow(dead_code, unreachable_pub)]
mod netns;
mod otel;
mod purge;
mod replica;
mod report;
mod ring_change;
mod shared;
mod source;
mod traces;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use args::{BenchOptions, Command};
use cluster::Binaries;
use fault::Fault;
use report::Report;
use workloads::{Bench, load_average};

fn main() -> ExitCode {
    let command = match args::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{}", args::USAGE);
            Ok(())
        }
        Command::Replica(options) => replica::run_replica(&options).map_err(|e| e.to_string()),
        Command::Ceiling => replica::run_ceiling().map_err(|e| e.to_string()),
        Command::Bench(options) => bench(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("groupcache-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

fn bench(options: &BenchOptions) -> Result<(), String> {
    // A simulation: alone, it needs neither the Go peer nor a runtime.
    if options.workloads == ["detectors"] {
        println!("{}", detectors::run());
        return Ok(());
    }
    // In process: alone, it needs no binary.
    if options.workloads == ["ring-change"] {
        let mut report = Report::default();
        ring_change::run(options, &mut report)?;
        println!("{}", report.table());
        for note in &report.notes {
            println!("note: {note}");
        }
        return Ok(());
    }
    let binaries = Binaries::prepare(options.go_peer.clone())?;
    // The load generator runs on one thread, so it never takes more than one core from the
    // servers it measures, whichever language they are written in.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let mut report = Report::default();
    let machine = machine();
    eprintln!("machine: {machine}");
    runtime.block_on(async {
        let mut bench = Bench {
            binaries: &binaries,
            options,
            report: &mut report,
        };
        for &workload in &options.workloads {
            let start = load_average();
            match workload {
                "ceiling" => bench.ceiling().await?,
                "local-hit" => bench.local_hit().await?,
                "remote-get" => bench.remote_get().await?,
                "cold-storm" => bench.cold_storm().await?,
                "memory" => bench.memory().await?,
                "hot-key" => bench.hot_key().await?,
                "batch" => bench.batch().await?,
                "coalesce" => bench.coalesce().await?,
                "churn" => bench.churn().await?,
                "traces" => bench.traces().await?,
                "groups-flood" => bench.groups_flood().await?,
                "freeze" => bench.fault(Fault::Freeze).await?,
                "black-hole" => bench.fault(Fault::BlackHole).await?,
                "detectors" => println!("{}", detectors::run()),
                "pauses" => bench.pauses().await?,
                "ring-change" => ring_change::run(options, bench.report)?,
                "missing-storm" => bench.missing_storm().await?,
                "refresh-ahead" => bench.refresh_ahead().await?,
                "source-down" => bench.source_down().await?,
                "purge" => bench.purge().await?,
                "otel" => bench.otel().await?,
                other => return Err(format!("unknown workload {other}")),
            }
            let end = load_average();
            bench.report.load.push((workload.to_owned(), start, end));
        }
        Ok::<(), String>(())
    })?;
    let mut verdicts = report::verdicts(&report, &options.concurrency);
    verdicts.extend(batch::verdicts(&report));
    verdicts.extend(flood::verdicts(&report));
    verdicts.extend(fault::verdicts(&report));
    verdicts.extend(freshness::verdicts(&report));
    verdicts.extend(purge::verdicts(&report));
    verdicts.extend(otel::verdicts(&report, &options.concurrency));
    println!("{}", report.table());
    println!("targets:\n{}", report::verdict_lines(&verdicts));
    for (workload, start, end) in &report.load {
        println!("load average (1 min) during {workload}: {start:.2} -> {end:.2}");
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    let mut json = report.json(machine, &verdicts);
    json["command"] = serde_json::json!(std::env::args().collect::<Vec<_>>());
    json["rounds"] = options.rounds.into();
    json["secs"] = options.secs.into();
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    let path = options.json.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/groupcache-bench.json")
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(&path, &text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("\nJSON (also in {}):\n{text}", path.display());
    Ok(())
}

/// Cores, CPU model, kernel.
fn machine() -> serde_json::Value {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    serde_json::json!({"cores": cores, "cpu": cpu, "kernel": kernel})
}
