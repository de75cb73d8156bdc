//! groups-flood (issue 24): one group's flood against another group's latency, on one replica.
//! The replica's side is in `replica.rs` (`--groups 1|2`).
//!
//! One Rust replica, alone in its ring, serves two groups through one `Cluster` and its one
//! router, under one set of peer-port limits (`--max-peer-requests`, default the library's 1024):
//! the calm group, whose loader answers at once, and the flood group, whose loader takes
//! `--flood-load-ms` (default 3 s). The load generator, on its one thread:
//!
//! 1. asks for 1,000 calm keys once, so they are in the calm group's main cache (what is
//!    measured is serving, not loading), and opens the flood's `--flood` connections (default
//!    2,000), idle for now;
//! 2. measures the calm group's peer GETs (`GET /_groupcache/calm/{key}`) from 8 connections,
//!    closed loop, for `--secs`: p50 and p99 ("quiet");
//! 3. starts the flood: every flood connection asks the flood group for a cold key of its own and,
//!    when answered, asks at once again (the same key after a 503, which comes back at once; the
//!    next key after a 200, which comes after the load), so the flood holds every slot it is
//!    given and keeps knocking for the others (`--flood-pause-ms`: a pause after each 503,
//!    default none);
//! 4. after a warm-up of the calm connections under the flood, measures the calm group again
//!    ("flooded"), counting meanwhile the flood's requests admitted (the flood group's
//!    `server_requests`, counted past the limit) and refused (503).
//!
//! The case "one group" does the same with the flood's keys sent to the calm group itself: one
//! group holds the whole limit, so there is no share to keep for the calm keys.
//!
//! The target: the calm group's flooded p99 within 2x of its quiet p99, with no calm request
//! refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinSet;

use crate::cluster::{Kind, Process};
use crate::http::{self, Conn};
use crate::load::{Limit, Outcome, Pool, Source, Uniform};
use crate::report::{Better, Report, Verdict};
use crate::shared::{CALM, FLOOD, FLOOD_KEYS};
use crate::workloads::{Bench, VALUE_BYTES, WARM_UP, connect, keys, run_once, servers_cpu_us};

type Result<T> = std::result::Result<T, String>;

const WORKLOAD: &str = "groups-flood";
/// Calm keys, all warm.
const CALM_KEYS: usize = 1_000;
/// The calm group's connections, closed loop.
const CALM_CONNECTIONS: usize = 8;
/// The case the target reads.
const TWO_GROUPS: &str = "two groups";

/// Where the flood goes.
#[derive(Debug, Clone, Copy)]
enum Case {
    /// The calm group and the flood group on one `Cluster`: fair shares.
    TwoGroups,
    /// The flood's keys in the calm group itself: one limit, no share.
    OneGroup,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::TwoGroups => TWO_GROUPS,
            Case::OneGroup => "one group",
        }
    }

    /// Groups the replica serves.
    fn groups(self) -> usize {
        match self {
            Case::TwoGroups => 2,
            Case::OneGroup => 1,
        }
    }

    /// The group the flood asks.
    fn flood_group(self) -> &'static str {
        match self {
            Case::TwoGroups => FLOOD,
            Case::OneGroup => CALM,
        }
    }
}

/// A peer's GET of `key` in `group`.
fn peer_get(group: &str, key: &str) -> Vec<u8> {
    http::get_request(&format!("/_groupcache/{group}/{key}"))
}

/// One group's counters in the replica's `GET /stats`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
struct GroupCounters {
    /// Peer requests admitted (past the limit).
    server_requests: u64,
}

/// Peer requests each group of `replica` has admitted so far.
async fn admitted(replica: &Process) -> Result<HashMap<String, GroupCounters>> {
    let (status, body) = http::call(replica.addr, &http::get_request("/stats"))
        .await
        .map_err(|e| format!("stats: {e}"))?;
    if status != 200 {
        return Err(format!("stats: status {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("stats: {e}"))
}

/// What the flood's connections have been answered so far.
#[derive(Debug, Default)]
struct FloodCounts {
    /// 200: a key loaded.
    loaded: AtomicU64,
    /// 503: refused by the limit.
    refused: AtomicU64,
    /// Anything else, or a broken connection.
    failed: AtomicU64,
}

impl FloodCounts {
    fn now(&self) -> [u64; 3] {
        [&self.loaded, &self.refused, &self.failed].map(|c| c.load(Ordering::Relaxed))
    }
}

/// The flood, running until dropped (dropping the tasks closes their connections).
struct Flood {
    counts: Arc<FloodCounts>,
    _tasks: JoinSet<()>,
}

impl Flood {
    /// Every connection of `conns` asks `group` for cold keys of its own, one at a time, and asks
    /// again as soon as it is answered.
    fn start(conns: Vec<Conn>, group: &'static str, pause: Duration) -> Flood {
        let counts = Arc::new(FloodCounts::default());
        let mut tasks = JoinSet::new();
        for (i, conn) in conns.into_iter().enumerate() {
            tasks.spawn(knock(conn, group, i, pause, counts.clone()));
        }
        Flood {
            counts,
            _tasks: tasks,
        }
    }
}

/// One flood connection: key `{FLOOD_KEYS}{i}-{k}` until it is loaded, then `k + 1`; after a
/// 503, `pause` before it asks again.
async fn knock(
    mut conn: Conn,
    group: &'static str,
    i: usize,
    pause: Duration,
    counts: Arc<FloodCounts>,
) {
    for k in 0u64.. {
        let request = peer_get(group, &format!("{FLOOD_KEYS}{i}-{k}"));
        loop {
            let counter = match conn.round_trip(&request).await {
                Ok(response) if response.status == 503 => {
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    &counts.refused
                }
                Ok(response) if response.status == 200 => {
                    counts.loaded.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(_) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_) => match Conn::connect(conn.addr()).await {
                    Ok(fresh) => {
                        conn = fresh;
                        &counts.failed
                    }
                    Err(_) => return,
                },
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The calm group's timed run, with the replica's and this process's CPU over it (percent of
/// one core).
async fn calm_run(
    pool: &mut Pool,
    source: &Arc<dyn Source>,
    pid: u32,
    secs: Duration,
) -> (Outcome, f64, f64) {
    let server_before = servers_cpu_us(&[pid]);
    let outcome = pool.run(source.clone(), Limit::Time(secs)).await;
    let server_us = servers_cpu_us(&[pid]).saturating_sub(server_before);
    let percent = |us: u64| us as f64 / outcome.elapsed.as_secs_f64().max(1e-9) / 1e4;
    let (server, client) = (percent(server_us), percent(outcome.client_cpu_us));
    (outcome, server, client)
}

impl Bench<'_> {
    /// groups-flood: see the module's documentation.
    pub(crate) async fn groups_flood(&mut self) -> Result<()> {
        for round in 0..self.options.rounds {
            let mut cases = [Case::TwoGroups, Case::OneGroup];
            if round % 2 == 1 {
                cases.reverse();
            }
            for case in cases {
                self.progress(&format!("{WORKLOAD} {}", case.name()), round, Kind::Rust);
                self.flood_round(case).await?;
            }
        }
        Ok(())
    }

    async fn flood_round(&mut self, case: Case) -> Result<()> {
        let options = self.options;
        let mut command = Command::new(&self.binaries.this);
        command.arg("replica").args([
            "--groups",
            &case.groups().to_string(),
            "--value-bytes",
            &VALUE_BYTES.to_string(),
            "--load-ms",
            &options.flood_load_ms.to_string(),
        ]);
        if let Some(requests) = options.max_peer_requests {
            command.args(["--max-peer-requests", &requests.to_string()]);
        }
        if let Some(ms) = options.admission_wait_ms {
            command.args(["--admission-wait-ms", &ms.to_string()]);
        }
        let replica = Process::start(command)?;
        let addr: [SocketAddr; 1] = [replica.addr];
        let calm: Vec<_> = keys("calm-", CALM_KEYS)
            .iter()
            .map(|k| (0, peer_get(CALM, k)))
            .collect();
        let warm = run_once(&addr, 16, calm.clone()).await;
        if warm.ok != CALM_KEYS as u64 {
            return Err(format!(
                "{WORKLOAD}: {} of {CALM_KEYS} calm keys loaded, first error {:?}",
                warm.ok, warm.first_error
            ));
        }
        let mut pool = connect(&addr, CALM_CONNECTIONS).await?;
        let mut flood_conns = Vec::with_capacity(options.flood_connections);
        for _ in 0..options.flood_connections {
            let conn = Conn::connect(replica.addr)
                .await
                .map_err(|e| format!("{WORKLOAD}: connecting the flood: {e}"))?;
            flood_conns.push(conn);
        }
        let source: Arc<dyn Source> = Arc::new(Uniform { requests: calm });
        let pid = replica.pid();
        let secs = Duration::from_secs_f64(options.secs);
        pool.run(source.clone(), Limit::Time(WARM_UP)).await;
        let (quiet, quiet_server, quiet_client) = calm_run(&mut pool, &source, pid, secs).await;

        let pause = Duration::from_millis(options.flood_pause_ms);
        let flood = Flood::start(flood_conns, case.flood_group(), pause);
        // The flood fills its slots while the calm connections warm up again.
        pool.run(source.clone(), Limit::Time(WARM_UP)).await;
        let (counts_before, stats_before) = (flood.counts.now(), admitted(&replica).await?);
        let (flooded, server, client) = calm_run(&mut pool, &source, pid, secs).await;
        let (counts_after, stats_after) = (flood.counts.now(), admitted(&replica).await?);
        drop(flood);

        let group_admitted = |name: &str| {
            let count = |stats: &HashMap<String, GroupCounters>| {
                stats.get(name).copied().unwrap_or_default().server_requests
            };
            count(&stats_after).saturating_sub(count(&stats_before))
        };
        // In one group, the calm requests admitted are the calm 200s.
        let flood_admitted = match case {
            Case::TwoGroups => group_admitted(FLOOD),
            Case::OneGroup => group_admitted(CALM).saturating_sub(flooded.ok),
        };
        let [loaded, refused, failed] =
            [0, 1, 2].map(|i| counts_after[i].saturating_sub(counts_before[i]));
        let window = flooded.elapsed.as_secs_f64().max(1e-9);
        let (p99_quiet, p99_flooded) = (quiet.quantile_us(0.99), flooded.quantile_us(0.99));
        let name = case.name();
        let mut add = |metric, better, value| {
            self.report
                .add(WORKLOAD, name, metric, better, Kind::Rust, value);
        };
        use Better::{Higher, Lower};
        add("calm p50 us quiet", Lower, quiet.quantile_us(0.5));
        add("calm p99 us quiet", Lower, p99_quiet);
        add("calm p50 us flooded", Lower, flooded.quantile_us(0.5));
        add("calm p99 us flooded", Lower, p99_flooded);
        add(
            "calm p99 flooded/quiet",
            Lower,
            p99_flooded / p99_quiet.max(1.0),
        );
        add("calm req/s quiet", Higher, quiet.throughput());
        add("calm req/s flooded", Higher, flooded.throughput());
        add("calm 200s flooded", Higher, flooded.ok as f64);
        add("calm 503s flooded", Lower, flooded.unavailable as f64);
        let other = flooded.errors - flooded.unavailable + quiet.errors;
        add("calm other errors", Lower, other as f64);
        add("flood admitted", Lower, flood_admitted as f64);
        add("flood refused (503)", Lower, refused as f64);
        add("flood refused /s", Lower, refused as f64 / window);
        add("flood loaded (200)", Lower, loaded as f64);
        add("flood failed", Lower, failed as f64);
        add("server cpu % quiet", Lower, quiet_server);
        add("server cpu % flooded", Lower, server);
        add("client cpu % quiet", Lower, quiet_client);
        add("client cpu % flooded", Lower, client);
        if let Some(error) = flooded.first_error.as_ref().or(quiet.first_error.as_ref()) {
            self.report
                .notes
                .push(format!("{WORKLOAD} {name}: first calm error: {error}"));
        }
        Ok(())
    }
}

/// The target, from the "two groups" medians.
pub(crate) fn verdicts(report: &Report) -> Vec<Verdict> {
    let median = |metric: &str| {
        report
            .row(WORKLOAD, TWO_GROUPS, metric)
            .and_then(|r| r.median(Kind::Rust))
    };
    let target = "groups-flood: one group's flood leaves another group's p99 within 2x of its \
                  unflooded figure (and none of its requests refused)";
    let measured = median("calm p99 us quiet")
        .zip(median("calm p99 us flooded"))
        .zip(median("calm 503s flooded"));
    let (met, detail) = match measured {
        Some(((quiet, flooded), refused)) => {
            let ratio = flooded / quiet.max(1.0);
            let p50 = median("calm p50 us quiet")
                .zip(median("calm p50 us flooded"))
                .map_or(String::new(), |(q, f)| format!("; p50 {q:.0} -> {f:.0} us"));
            (
                Some(ratio <= 2.0 && refused == 0.0),
                format!(
                    "calm p99 {quiet:.0} us quiet, {flooded:.0} us flooded: {ratio:.2}x; \
                     calm 503s {refused:.0}{p50}"
                ),
            )
        }
        None => (None, "not measured".to_owned()),
    };
    vec![Verdict {
        target: target.into(),
        met,
        detail,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_reads_the_two_groups_medians() {
        let mut report = Report::default();
        assert_eq!(verdicts(&report)[0].met, None);
        for (quiet, flooded) in [(100.0, 150.0), (110.0, 300.0), (90.0, 190.0)] {
            for (metric, value) in [
                ("calm p99 us quiet", quiet),
                ("calm p99 us flooded", flooded),
                ("calm 503s flooded", 0.0),
            ] {
                report.add(
                    WORKLOAD,
                    TWO_GROUPS,
                    metric,
                    Better::Lower,
                    Kind::Rust,
                    value,
                );
            }
        }
        let verdict = &verdicts(&report)[0];
        assert_eq!(verdict.met, Some(true), "{}", verdict.detail);
        assert!(verdict.detail.contains("1.90x"), "{}", verdict.detail);
        // Three rounds more, each with refused calm requests: the median is no longer 0.
        for _ in 0..3 {
            let metric = "calm 503s flooded";
            report.add(WORKLOAD, TWO_GROUPS, metric, Better::Lower, Kind::Rust, 5.0);
        }
        assert_eq!(
            verdicts(&report)[0].met,
            Some(false),
            "refused calm requests"
        );
    }

    #[test]
    fn flood_keys_are_the_slow_ones() {
        assert!(peer_get(FLOOD, "flood-1-0").starts_with(b"GET /_groupcache/flood/flood-1-0 "));
        assert!(format!("{FLOOD_KEYS}0-0").starts_with(FLOOD_KEYS));
        assert!(!"calm-0".starts_with(FLOOD_KEYS));
    }
}
