//! churn: membership changes under traffic, Rust and golang/groupcache side by side (issue 17,
//! item 7). Per target, each on fresh replicas with 20,000 warm keys of 1 KiB:
//!
//! - `join`: a fourth replica joins three (its own peer list first, then the others');
//! - `leave`: one of four leaves gracefully (out of the others' peer lists, still serving, then
//!   killed);
//! - `rolling`: each of three replaced in turn (the new one joins, the old one leaves, then dies);
//! - `kill`: an owner SIGKILLed while both others ask for its keys, dropped after the run.
//!
//! Figures: reloads per moved key (loads beyond the warm-up, after every key was asked for once
//! more, over the keys whose owner changed; for `rolling`, over all keys), loads per key of the
//! dead owner's keys during the outage, errors, and the throughput dip (req/s of a timed run in
//! which the change happens, over a run just before it without change).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Kind, Process, Settings, owners, set_peers, start_replica, stats_of, urls};
use crate::http;
use crate::load::{Limit, Pool, Sequence, Source, Uniform};
use crate::report::Better;
use crate::workloads::Bench;

type Result<T> = std::result::Result<T, String>;

const KEYS: usize = 20_000;
const VALUE_BYTES: usize = 1024;
const SETTINGS: Settings = Settings {
    value_bytes: VALUE_BYTES,
    load_ms: 1,
    cache_bytes: 64 << 20,
    batch_loader: false,
    coalesce_in_flight: 0,
    // The hand-off is what the churn workloads measure.
    no_handoff: false,
    no_hot_cache: false,
    otel_sink: None,
};
const CONCURRENCY: usize = 16;

/// Loader runs on `replicas`, all together.
pub(crate) async fn loads(replicas: &[&Process]) -> Result<u64> {
    let stats = stats_of(replicas).await?;
    Ok(stats.iter().map(|s| s.stats.local_loads).sum())
}

fn requests(keys: &[String], targets: usize) -> Vec<(usize, Vec<u8>)> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| (i % targets, http::get_request(&format!("/get/{key}"))))
        .collect()
}

/// Every key once from `targets`; the errors.
async fn sweep(targets: &[SocketAddr], keys: &[String]) -> Result<u64> {
    let mut pool = Pool::connect(targets, CONCURRENCY)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let source = Arc::new(Sequence {
        requests: requests(keys, targets.len()),
    });
    let outcome = pool.run(source, Limit::Exhausted).await;
    Ok(outcome.errors)
}

/// Req/s of a timed run on `targets` without change, then of one during which `change` runs
/// (after a third of it); the ratio and the errors of both.
async fn dip<F: std::future::Future<Output = Result<()>>>(
    targets: &[SocketAddr],
    keys: &[String],
    secs: Duration,
    change: F,
) -> Result<(f64, u64)> {
    let source: Arc<dyn Source> = Arc::new(Uniform {
        requests: requests(keys, targets.len()),
    });
    let mut pool = Pool::connect(targets, CONCURRENCY)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let before = pool.run(source.clone(), Limit::Time(secs)).await;
    let changing = async {
        tokio::time::sleep(secs / 3).await;
        change.await
    };
    let (during, changed) = tokio::join!(pool.run(source, Limit::Time(secs)), changing);
    changed?;
    Ok((
        during.throughput() / before.throughput().max(1e-9),
        before.errors + during.errors,
    ))
}

impl Bench<'_> {
    /// The churn workloads (see the module's documentation).
    pub(crate) async fn churn(&mut self) -> Result<()> {
        let secs = Duration::from_secs_f64(self.options.secs);
        let keys: Vec<String> = (0..KEYS).map(|i| format!("churn-{i}")).collect();
        for round in 0..self.options.rounds {
            let mut kinds = vec![Kind::Rust, Kind::GoPooled];
            if round % 2 == 1 {
                kinds.reverse();
            }
            for kind in kinds {
                eprintln!("[churn] round {} {}", round + 1, kind.name());
                self.churn_resize(kind, &keys, secs, true).await?;
                self.churn_resize(kind, &keys, secs, false).await?;
                self.churn_rolling(kind, &keys).await?;
                self.churn_kill(kind, &keys, secs).await?;
            }
        }
        Ok(())
    }

    fn churn_record(&mut self, case: &str, kind: Kind, figures: &[(&'static str, f64)]) {
        for &(metric, value) in figures {
            let better = if metric == "throughput during/before" {
                Better::Higher
            } else {
                Better::Lower
            };
            self.report.add("churn", case, metric, better, kind, value);
        }
    }

    /// `join` (`joins`: a fourth replica joins three) or `leave` (one of four leaves gracefully):
    /// the three that stay take the traffic while the fourth's keys move.
    async fn churn_resize(
        &mut self,
        kind: Kind,
        keys: &[String],
        secs: Duration,
        joins: bool,
    ) -> Result<()> {
        let procs: Vec<Process> = (0..4)
            .map(|_| start_replica(self.binaries, kind, SETTINGS))
            .collect::<Result<_>>()?;
        let all: Vec<&Process> = procs.iter().collect();
        let (three, four) = (urls(&all[..3]), urls(&all));
        let reversed: Vec<&Process> = all.iter().rev().copied().collect();
        // Who is told which peer list, before and as the change: a joining replica learns its
        // peer list first, then the others; a leaving one is dropped from the others' lists.
        let (case, (start, start_urls), (change, change_urls)) = if joins {
            ("join 3->4", (&all[..3], &three), (&reversed[..], &four))
        } else {
            (
                "graceful leave 4->3",
                (&all[..], &four),
                (&all[..3], &three),
            )
        };
        set_peers(start, start_urls).await?;
        let targets: Vec<SocketAddr> = all[..3].iter().map(|p| p.addr).collect();
        let mut errors = sweep(&targets[..1], keys).await?;
        let warm = loads(&all).await?;
        let (ratio, dip_errors) = dip(&targets, keys, secs, set_peers(change, change_urls)).await?;
        errors += dip_errors + sweep(&targets[1..2], keys).await?;
        let reloads = loads(&all).await? - warm;
        let moved = owners(kind, &four, keys)?
            .iter()
            .filter(|o| **o == all[3].url)
            .count();
        self.churn_record(
            case,
            kind,
            &[
                (
                    "reloads per moved key",
                    reloads as f64 / moved.max(1) as f64,
                ),
                ("errors", errors as f64),
                ("throughput during/before", ratio),
            ],
        );
        Ok(())
    }

    async fn churn_rolling(&mut self, kind: Kind, keys: &[String]) -> Result<()> {
        let mut live: Vec<Process> = (0..3)
            .map(|_| start_replica(self.binaries, kind, SETTINGS))
            .collect::<Result<_>>()?;
        let refs: Vec<&Process> = live.iter().collect();
        set_peers(&refs, &urls(&refs)).await?;
        let mut errors = sweep(&[live[0].addr], keys).await?;
        let mut reloads = 0;
        for _ in 0..3 {
            let new = start_replica(self.binaries, kind, SETTINGS)?;
            let refs: Vec<&Process> = live.iter().chain(std::iter::once(&new)).collect();
            let before = loads(&refs).await?;
            let with_new = urls(&refs);
            let reversed: Vec<&Process> = refs.iter().rev().copied().collect();
            set_peers(&reversed, &with_new).await?;
            errors += sweep(&[live[1].addr], keys).await?;
            let without_old = urls(&refs[1..]);
            set_peers(&refs[1..], &without_old).await?;
            errors += sweep(&[new.addr], keys).await?;
            reloads += loads(&refs).await? - before;
            live.remove(0); // the old one dies
            live.push(new);
        }
        self.churn_record(
            "rolling restart x3",
            kind,
            &[
                ("reloads per key", reloads as f64 / keys.len() as f64),
                ("errors", errors as f64),
            ],
        );
        Ok(())
    }

    async fn churn_kill(&mut self, kind: Kind, keys: &[String], secs: Duration) -> Result<()> {
        let mut procs: Vec<Process> = (0..3)
            .map(|_| start_replica(self.binaries, kind, SETTINGS))
            .collect::<Result<_>>()?;
        let all: Vec<&Process> = procs.iter().collect();
        let urls_all = urls(&all);
        set_peers(&all, &urls_all).await?;
        let dead_url = all[2].url.clone();
        let its_keys: Vec<String> = keys
            .iter()
            .zip(owners(kind, &urls_all, keys)?)
            .filter(|(_, owner)| *owner == dead_url)
            .map(|(key, _)| key.clone())
            .collect();
        let targets: Vec<SocketAddr> = all[..2].iter().map(|p| p.addr).collect();
        let mut errors = sweep(&targets[..1], &its_keys).await?;
        let dead = procs.pop();
        let survivors: Vec<&Process> = procs.iter().collect();
        let before = loads(&survivors).await?;
        let (ratio, dip_errors) = dip(&targets, &its_keys, secs, async move {
            drop(dead); // SIGKILL, waited for
            Ok(())
        })
        .await?;
        let during = loads(&survivors).await? - before;
        errors += dip_errors;
        set_peers(&survivors, &urls(&survivors)).await?;
        self.churn_record(
            "owner killed",
            kind,
            &[
                (
                    "loads per key in outage",
                    during as f64 / its_keys.len().max(1) as f64,
                ),
                ("errors", errors as f64),
                ("throughput during/before", ratio),
            ],
        );
        Ok(())
    }
}
