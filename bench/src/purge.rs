//! purge (issue 27, item 8): a group holding `--purge-entries` entries over three Rust replicas
//! (default 3,000,000, about a million on each; 24-byte values), purged under traffic.
//!
//! Per round, on three fresh replicas with a 1 GiB main budget each:
//!
//! 1. the source's values carry version 1; each replica gets the keys `pg-{i}` it owns, in
//!    process (`POST /fill`), so every entry is in its owner's main cache;
//! 2. [`PROBES`] connections ask for [`SAMPLE`] of those keys (half of them of their owner, half
//!    of another replica, which keeps a hot copy or fetches it), at random, from here to
//!    the end; after [`BEFORE`] of that the source's version becomes 2 (a write to the source of
//!    truth) and replica 0 purges the group (`POST /purge`: `Groupcache::purge`, both waves,
//!    every replica), then the traffic goes on for [`AFTER`].
//!
//! Figures: how long `purge()` took to return on replica 0 (it reaches all three), the p99 of
//! the gets sent before the purge against that of the gets in flight at any moment while it ran
//! (a few dozen to a few hundred: read it with the max beside it; split into hits on what the
//! purge had not reached yet, version 1, and loads after it, version 2), and the values of
//! version 1 answered to gets sent after it returned `Ok` (the promise: none). Rust only:
//! golang/groupcache has no purge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::cluster::{Cluster, Kind, LOOPBACK, Process, Settings, replica_command};
use crate::freshness::command_source;
use crate::http::{self, Conn};
use crate::load::{mix, quantile};
use crate::report::{Better, Report, Verdict};
use crate::workloads::{Bench, get_path};

type Result<T> = std::result::Result<T, String>;

const WORKLOAD: &str = "purge";
/// Values' size: small entries, so that a million fit easily.
const VALUE: usize = 24;
/// Keys the probes ask (every key would cost the driver a ring walk each).
const SAMPLE: usize = 100_000;
/// The probes' connections.
const PROBES: usize = 16;
/// Traffic before the purge.
const BEFORE: Duration = Duration::from_secs(2);
/// Traffic after it returned.
const AFTER: Duration = Duration::from_secs(1);
const RETURN_MS: &str = "purge() returned ms";
const P99_RATIO: &str = "p99 during / before";
const OLD_AFTER: &str = "old values after Ok";

/// One probe's get.
struct Sample {
    sent: Instant,
    micros: u32,
    /// 200 and a value of version 1.
    old: bool,
    /// Not answered 200.
    failed: bool,
}

/// One probe: asks `requests` at random (its own sequence) until `stop`.
async fn probe(
    targets: Vec<SocketAddr>,
    requests: Arc<Vec<(usize, Vec<u8>)>>,
    worker: u64,
    stop: watch::Receiver<bool>,
) -> Result<Vec<Sample>> {
    let mut conns = Vec::with_capacity(targets.len());
    for &addr in &targets {
        let conn = Conn::connect(addr)
            .await
            .map_err(|e| format!("purge probe: connecting to {addr}: {e}"))?;
        conns.push(conn);
    }
    let mut samples = Vec::with_capacity(1 << 16);
    for seq in 0u64.. {
        if *stop.borrow() {
            break;
        }
        let (target, request) =
            &requests[(mix(seq ^ (worker << 40)) % requests.len() as u64) as usize];
        let sent = Instant::now();
        let (old, failed) = match conns[*target].round_trip(request).await {
            Ok(r) if r.status == 200 => (r.body.windows(2).any(|w| w == b"#1"), false),
            Ok(_) => (false, true),
            Err(e) => return Err(format!("purge probe: {e}")),
        };
        let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        samples.push(Sample {
            sent,
            micros,
            old,
            failed,
        });
    }
    Ok(samples)
}

/// The p99 of `samples`' latencies, in microseconds.
fn p99<'a>(samples: impl Iterator<Item = &'a Sample>) -> f64 {
    let mut micros: Vec<u32> = samples.map(|s| s.micros).collect();
    micros.sort_unstable();
    quantile(&micros, 0.99)
}

impl Bench<'_> {
    /// purge: see the module's documentation.
    pub(crate) async fn purge(&mut self) -> Result<()> {
        if !self.selected(Kind::Rust) {
            return Ok(());
        }
        self.report.notes.push(format!(
            "{WORKLOAD}: Rust only (golang/groupcache has no purge)"
        ));
        for round in 0..self.options.rounds {
            self.progress(WORKLOAD, round, Kind::Rust);
            self.purge_round().await?;
        }
        Ok(())
    }

    async fn purge_round(&mut self) -> Result<()> {
        let entries = self.options.purge_entries;
        let case = format!("{entries} entries over 3 replicas");
        let settings = Settings::plain(VALUE, 0, 1 << 30);
        let mut replicas = Vec::with_capacity(3);
        for _ in 0..3 {
            let command = replica_command(self.binaries, Kind::Rust, settings, LOOPBACK);
            replicas.push(Process::start(command)?);
        }
        let cluster = Cluster::join(replicas, Kind::Rust).await?;
        command_source(&cluster, "version=1").await?;
        let filling = Instant::now();
        let fill = http::post_json_request(&format!("/fill?prefix=pg-&count={entries}"), "");
        let fills = futures_util::future::join_all(
            cluster
                .addrs()
                .into_iter()
                .map(|addr| http::call(addr, &fill)),
        )
        .await;
        for answer in fills {
            let (status, body) = answer.map_err(|e| format!("purge fill: {e}"))?;
            let failed = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["failed"].as_u64());
            if status != 200 || failed != Some(0) {
                return Err(format!(
                    "purge fill: {status} {}",
                    String::from_utf8_lossy(&body)
                ));
            }
        }
        let fill_s = filling.elapsed().as_secs_f64();
        let held: Vec<u64> = cluster
            .stats()
            .await?
            .iter()
            .map(|s| s.main_cache.items)
            .collect();
        eprintln!("[purge] filled in {fill_s:.1} s: entries per replica {held:?}");

        let step = (entries / SAMPLE).max(1);
        let requests: Vec<(usize, Vec<u8>)> = (0..entries)
            .step_by(step)
            .enumerate()
            .map(|(n, i)| {
                // Every other key of a replica that does not own it: hot copies must go too.
                let key = format!("pg-{i}");
                ((cluster.owner(&key) + n % 2) % 3, get_path(&key))
            })
            .collect();
        let requests = Arc::new(requests);
        let (stop, stopped) = watch::channel(false);
        let mut probes = tokio::task::JoinSet::new();
        for worker in 0..PROBES as u64 {
            probes.spawn(probe(
                cluster.addrs(),
                requests.clone(),
                worker,
                stopped.clone(),
            ));
        }
        tokio::time::sleep(BEFORE).await;
        command_source(&cluster, "version=2").await?;
        let purge = http::post_json_request("/purge", "");
        let started = Instant::now();
        let (status, body) = http::call(cluster.replicas[0].addr, &purge)
            .await
            .map_err(|e| format!("purge: {e}"))?;
        let returned = Instant::now();
        if status != 200 {
            return Err(format!(
                "purge: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let micros = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["micros"].as_u64())
            .ok_or_else(|| format!("purge: {}", String::from_utf8_lossy(&body)))?;
        tokio::time::sleep(AFTER).await;
        let _ = stop.send(true);
        let mut samples = Vec::new();
        while let Some(joined) = probes.join_next().await {
            samples.extend(joined.map_err(|e| format!("purge probe: {e}"))??);
        }
        let after_purge = cluster.stats().await?;
        let before: Vec<&Sample> = samples.iter().filter(|s| s.sent < started).collect();
        // In flight at any moment of the purge: sent before it returned, answered after it began.
        let during: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.sent < returned && s.sent + Duration::from_micros(s.micros.into()) >= started
            })
            .collect();
        let after: Vec<&Sample> = samples.iter().filter(|s| s.sent >= returned).collect();
        let old_after = after.iter().filter(|s| s.old).count();
        let failed = samples.iter().filter(|s| s.failed).count();
        let (p99_before, p99_during) = (p99(before.iter().copied()), p99(during.iter().copied()));
        let mut add = |metric, better, value| {
            self.report
                .add(WORKLOAD, &case, metric, better, Kind::Rust, value);
        };
        use Better::{Higher, Lower};
        add(RETURN_MS, Lower, micros as f64 / 1e3);
        add(
            "purge round trip ms",
            Lower,
            (returned - started).as_secs_f64() * 1e3,
        );
        add("p99 us before", Lower, p99_before);
        add("p99 us during", Lower, p99_during);
        add(P99_RATIO, Lower, p99_during / p99_before.max(1.0));
        add("gets during", Higher, during.len() as f64);
        // Split by what answered them: a value of version 1 was a hit on what the purge had not
        // reached yet; version 2, a load after it (a miss the purge made).
        let hits = during.iter().copied().filter(|s| s.old);
        add("hits during", Higher, hits.clone().count() as f64);
        add("p99 us during, hits", Lower, p99(hits));
        add(
            "p99 us during, reloads",
            Lower,
            p99(during.iter().copied().filter(|s| !s.old && !s.failed)),
        );
        add(
            "max us during",
            Lower,
            during
                .iter()
                .map(|s| f64::from(s.micros))
                .fold(0.0, f64::max),
        );
        add("p99 us in 1 s after", Lower, p99(after.iter().copied()));
        add(OLD_AFTER, Lower, old_after as f64);
        add("gets after", Higher, after.len() as f64);
        add("failed gets", Lower, failed as f64);
        add(
            "entries per replica before",
            Higher,
            held.iter().sum::<u64>() as f64 / held.len() as f64,
        );
        add("fill s", Lower, fill_s);
        let purges: u64 = after_purge.iter().map(|s| s.stats.purges).sum();
        if purges == 0 {
            self.report
                .notes
                .push(format!("{WORKLOAD}: no replica counted a purge"));
        }
        Ok(())
    }
}

/// Issue 27's purge targets, from the medians.
pub(crate) fn verdicts(report: &Report) -> Vec<Verdict> {
    let row = |metric: &str| {
        report
            .rows
            .iter()
            .find(|r| r.workload == WORKLOAD && r.metric == metric)
    };
    let median = |metric: &str| row(metric).and_then(|r| r.median(Kind::Rust));
    let figure = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("not measured".to_owned(), f);
    let returned = median(RETURN_MS);
    let ratio = median(P99_RATIO);
    // Every round, not the median: the promise holds each time.
    let old = row(OLD_AFTER).and_then(|r| r.samples.get(&Kind::Rust));
    vec![
        Verdict {
            target: format!("{WORKLOAD}: purge() returns within 50 ms (3 replicas)"),
            met: returned.map(|ms| ms <= 50.0),
            detail: figure(returned, &|ms| format!("{ms:.1} ms")),
        },
        Verdict {
            target: format!("{WORKLOAD}: gets' p99 during the purge <= 2x before"),
            met: ratio.map(|r| r <= 2.0),
            detail: figure(ratio, &|r| format!("{r:.2}x")),
        },
        Verdict {
            target: format!("{WORKLOAD}: 0 values from before the purge after Ok"),
            met: old.map(|o| o.iter().all(|&n| n == 0.0)),
            detail: old.map_or("not measured".to_owned(), |o| format!("per round: {o:?}")),
        },
    ]
}
