//! Issue 27, item 8: the source's bad days. Three replicas per target and round, on fresh
//! processes, whose loader asks the replica's [`source`](crate::source) (Rust) or golang's
//! getter (Go).
//!
//! - `missing-storm`: [`MISSING`] distinct keys the source does not have, each asked
//!   [`ASKS`] times, spread over the three replicas and [`STORM_CONNECTIONS`] connections, by
//!   blocks of [`BLOCK`] keys (each block's keys all asked [`ASKS`] times, interleaved, before the
//!   next block), so that each key's asks fall well within one negative expiry: source queries
//!   per key. Rust with the default `not_found_ttl` (5 s) and with `not_found_ttl(0)` (the
//!   "before": every request a query, but for flights in progress), and golang/groupcache,
//!   which has no negative answer (its getter fails for keys named `error:…`; every failure is
//!   a query).
//! - `refresh-ahead`: a popular key P whose value is refreshed ahead [`SOFT`] after its load
//!   (hard expiry a minute later), against the same with no refresh ahead (hard expiry at
//!   [`SOFT`]), with a [`SLOW_LOAD`] source. [`POPULAR_CONNECTIONS`] connections ask P of the
//!   three replicas, as many ask Q, a popular key that never expires, on the same owner: per
//!   window of [`WINDOW`] starting just past P's soft expiry, the p99 of P's gets over Q's, and
//!   the loads of P (source queries) in the window, where exactly one soft expiry passed.
//!   Rust only: golang/groupcache's values never expire.
//! - `source-down`: [`DOWN_KEYS`] keys of 1 KiB expiring [`DOWN_TTL`] after their load, all
//!   loaded; then the source goes down for `--down-secs` (default 10 s) while
//!   [`DOWN_CONNECTIONS`] connections ask the three replicas for them, every key expiring
//!   within the outage: errors seen, with `max_stale` well past the outage and off. Rust
//!   only: golang/groupcache's values never expire (it answers what it holds however old, and
//!   fails every miss), so it has no "expired, within max_stale" to compare.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Cluster, Kind, LOOPBACK, Process, Settings, replica_command, stats_of};
use crate::http;
use crate::load::{Limit, Outcome, Sequence, Uniform};
use crate::report::{Better, Report, Verdict};
use crate::shared::{EXPIRING_KEYS, MISSING_KEYS};
use crate::workloads::{
    BUDGET, Bench, VALUE_BYTES, WARM_UP, connect, expect_all, get_path, keys_owned_by, run_once,
};

type Result<T> = std::result::Result<T, String>;

/// missing-storm: distinct missing keys.
pub(crate) const MISSING: usize = 10_000;
/// missing-storm: asks of each key.
pub(crate) const ASKS: usize = 100;
/// missing-storm: keys asked together, all their asks before the next block's.
pub(crate) const BLOCK: usize = 100;
/// missing-storm: the load generator's connections.
pub(crate) const STORM_CONNECTIONS: usize = 64;
/// refresh-ahead: P's soft expiry (refresh ahead) or, without refresh, its hard expiry.
pub(crate) const SOFT: Duration = Duration::from_millis(1_500);
/// refresh-ahead: the source's latency (a slow query), what a get waits without refresh.
pub(crate) const SLOW_LOAD: u64 = 100;
/// refresh-ahead: a measured window; shorter than [`SOFT`] less [`SLOW_LOAD`], so exactly one
/// soft expiry falls in it.
pub(crate) const WINDOW: Duration = Duration::from_millis(1_000);
/// refresh-ahead: windows per round.
pub(crate) const WINDOWS: usize = 3;
/// refresh-ahead: connections asking P, and as many asking Q: 64 in all.
pub(crate) const POPULAR_CONNECTIONS: usize = 32;
/// source-down: keys held.
pub(crate) const DOWN_KEYS: usize = 2_000;
/// source-down: their time to live.
pub(crate) const DOWN_TTL: Duration = Duration::from_secs(2);
/// source-down: the load generator's connections.
pub(crate) const DOWN_CONNECTIONS: usize = 32;

const STORM: &str = "missing-storm";
const REFRESH: &str = "refresh-ahead";
const DOWN: &str = "source-down";
/// missing-storm's cases: Rust and Go side by side, then Rust's "before".
const STORM_CASE: &str = "10000 keys x 100 asks";
const STORM_BEFORE: &str = "10000 keys x 100 asks, not_found_ttl 0";
const REFRESH_ON: &str = "refresh ahead at 1.5 s";
const REFRESH_OFF: &str = "no refresh, expires at 1.5 s";
const STALE_ON: &str = "max_stale on";
const STALE_OFF: &str = "max_stale off";
const QUERIES_PER_KEY: &str = "source queries per key";
const P99_RATIO: &str = "P p99 / Q p99";
const LOADS_PER_EXPIRY: &str = "loads of P per soft expiry";
const DOWN_ERRORS: &str = "errors while down";

/// Three replicas of `kind` with `settings`, each started with `extra` flags too.
async fn cluster(
    bench: &Bench<'_>,
    kind: Kind,
    settings: Settings,
    extra: &[String],
) -> Result<Cluster> {
    let mut replicas = Vec::with_capacity(3);
    for _ in 0..3 {
        let mut command = replica_command(bench.binaries, kind, settings, LOOPBACK);
        command.args(extra);
        replicas.push(Process::start(command)?);
    }
    Cluster::join(replicas, kind).await
}

fn settings(value_bytes: usize, load_ms: u64) -> Settings {
    Settings::plain(value_bytes, load_ms, BUDGET)
}

/// `POST /source?{query}` on every replica of `cluster` (see `source.rs`).
pub(crate) async fn command_source(cluster: &Cluster, query: &str) -> Result<()> {
    let request = http::post_json_request(&format!("/source?{query}"), "");
    for addr in cluster.addrs() {
        let (status, body) = http::call(addr, &request)
            .await
            .map_err(|e| format!("source {query} on {addr}: {e}"))?;
        if status != 200 {
            let body = String::from_utf8_lossy(&body);
            return Err(format!("source {query} on {addr}: {status} {body}"));
        }
    }
    Ok(())
}

/// The sum over `cluster`'s replicas of one counter.
async fn total(cluster: &Cluster, counter: fn(&crate::cluster::Counters) -> u64) -> Result<u64> {
    let stats = cluster.stats().await?;
    Ok(stats.iter().map(|s| counter(&s.stats)).sum())
}

/// Source queries so far on `cluster`: the Rust replicas' count, or the Go getter's runs.
async fn queries(cluster: &Cluster, kind: Kind) -> Result<u64> {
    match kind {
        Kind::Rust => total(cluster, |c| c.source_queries).await,
        _ => total(cluster, |c| c.local_loads + c.local_load_errs).await,
    }
}

/// missing-storm's requests: block by block, each block's keys asked [`ASKS`] times in turn,
/// ask `r` of key `k` of replica `(k + r) % 3`.
fn storm_requests(prefix: &str) -> Vec<(usize, Vec<u8>)> {
    let mut requests = Vec::with_capacity(MISSING * ASKS);
    for block in 0..MISSING / BLOCK {
        for ask in 0..ASKS {
            for k in block * BLOCK..(block + 1) * BLOCK {
                requests.push(((k + ask) % 3, get_path(&format!("{prefix}{k}"))));
            }
        }
    }
    requests
}

impl Bench<'_> {
    /// missing-storm: see the module's documentation.
    pub(crate) async fn missing_storm(&mut self) -> Result<()> {
        // Rust's default, Go, and Rust's "before" (a case of its own under the Rust column).
        let targets = [
            (Kind::Rust, STORM_CASE),
            (Kind::GoPooled, STORM_CASE),
            (Kind::Rust, STORM_BEFORE),
        ];
        for round in 0..self.options.rounds {
            let mut order: Vec<_> = targets
                .iter()
                .filter(|(kind, _)| self.selected(*kind))
                .collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for &&(kind, case) in &order {
                self.progress(STORM, round, kind);
                let extra: Vec<String> = if case == STORM_BEFORE {
                    vec!["--not-found-ttl-ms".into(), "0".into()]
                } else {
                    Vec::new()
                };
                // A 1 ms query, as a database's primary-key lookup.
                let cluster = cluster(self, kind, settings(VALUE_BYTES, 1), &extra).await?;
                let prefix = match kind {
                    Kind::Rust => MISSING_KEYS.to_owned(),
                    _ => format!("error:{MISSING_KEYS}"),
                };
                let source = Arc::new(Sequence {
                    requests: storm_requests(&prefix),
                });
                let before = queries(&cluster, kind).await?;
                let mut pool = connect(&cluster.addrs(), STORM_CONNECTIONS).await?;
                let outcome = pool.run(source, Limit::Exhausted).await;
                let asked = queries(&cluster, kind).await?.saturating_sub(before);
                let answered = outcome.ok + outcome.errors;
                if answered != (MISSING * ASKS) as u64 || outcome.ok > 0 {
                    self.report.notes.push(format!(
                        "{STORM} {case} {}: {} of {} answered, {} with a value (expected none)",
                        kind.name(),
                        answered,
                        MISSING * ASKS,
                        outcome.ok
                    ));
                }
                let wall = outcome.elapsed.as_secs_f64();
                let mut add = |metric, better, value| {
                    self.report.add(STORM, case, metric, better, kind, value);
                };
                add(
                    QUERIES_PER_KEY,
                    Better::Lower,
                    asked as f64 / MISSING as f64,
                );
                add("source queries", Better::Lower, asked as f64);
                add("req/s", Better::Higher, answered as f64 / wall.max(1e-9));
                add("wall s", Better::Lower, wall);
                // Each block's asks span about this long: the window a key is asked in.
                add(
                    "s per block of 100 keys",
                    Better::Lower,
                    wall / (MISSING / BLOCK) as f64,
                );
                if let Some(error) = &outcome.first_error {
                    self.report.notes.push(format!(
                        "{STORM} {case} {}: first answer other than 200: {error}",
                        kind.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// refresh-ahead: see the module's documentation.
    pub(crate) async fn refresh_ahead(&mut self) -> Result<()> {
        if !self.selected(Kind::Rust) {
            return Ok(());
        }
        self.report.notes.push(format!(
            "{REFRESH}: Rust only (golang/groupcache's values never expire, so it never refreshes)"
        ));
        for round in 0..self.options.rounds {
            let mut cases = [REFRESH_ON, REFRESH_OFF];
            if round % 2 == 1 {
                cases.reverse();
            }
            for case in cases {
                eprintln!(
                    "[{REFRESH}] round {}/{} {case}",
                    round + 1,
                    self.options.rounds
                );
                self.refresh_round(case).await?;
            }
        }
        Ok(())
    }

    async fn refresh_round(&mut self, case: &'static str) -> Result<()> {
        let soft = SOFT.as_millis().to_string();
        let extra: Vec<String> = if case == REFRESH_ON {
            ["--ttl-ms", "60000", "--refresh-ms", &soft]
                .map(str::to_owned)
                .to_vec()
        } else {
            ["--ttl-ms", &soft].map(str::to_owned).to_vec()
        };
        let cluster = cluster(self, Kind::Rust, settings(VALUE_BYTES, SLOW_LOAD), &extra).await?;
        let p = keys_owned_by(&cluster, 0, &format!("{EXPIRING_KEYS}popular-"), 1).remove(0);
        let q = keys_owned_by(&cluster, 0, "plain-popular-", 1).remove(0);
        let all = |key: &str| Uniform {
            requests: (0..3).map(|r| (r, get_path(key))).collect(),
        };
        let (p_source, q_source) = (Arc::new(all(&p)), Arc::new(all(&q)));
        let targets = cluster.addrs();
        let mut p_pool = connect(&targets, POPULAR_CONNECTIONS).await?;
        let mut q_pool = connect(&targets, POPULAR_CONNECTIONS).await?;
        // Both loaded, and hot on the other replicas.
        tokio::join!(
            p_pool.run(p_source.clone(), Limit::Time(WARM_UP)),
            q_pool.run(q_source.clone(), Limit::Time(WARM_UP)),
        );
        for _ in 0..WINDOWS {
            // Past P's soft (or hard) expiry: its last load began at most a window ago.
            tokio::time::sleep(SOFT).await;
            let before = total(&cluster, |c| c.expiring_queries).await?;
            let (p_run, q_run) = tokio::join!(
                p_pool.run(p_source.clone(), Limit::Time(WINDOW)),
                q_pool.run(q_source.clone(), Limit::Time(WINDOW)),
            );
            let loads = total(&cluster, |c| c.expiring_queries)
                .await?
                .saturating_sub(before);
            let slow = p_run
                .latencies_us
                .iter()
                .filter(|&&us| us >= 50_000)
                .count();
            let mut add = |metric, better, value| {
                self.report
                    .add(REFRESH, case, metric, better, Kind::Rust, value);
            };
            use Better::{Higher, Lower};
            add("P gets", Higher, p_run.ok as f64);
            add("P p99 us", Lower, p_run.quantile_us(0.99));
            add("Q p99 us", Lower, q_run.quantile_us(0.99));
            add(
                P99_RATIO,
                Lower,
                p_run.quantile_us(0.99) / q_run.quantile_us(0.99).max(1.0),
            );
            add("P p99.9 us", Lower, p_run.quantile_us(0.999));
            add("P max us", Lower, p_run.quantile_us(1.0));
            add("Q max us", Lower, q_run.quantile_us(1.0));
            add("P gets >= 50 ms", Lower, slow as f64);
            add(LOADS_PER_EXPIRY, Lower, loads as f64);
            add("errors", Lower, (p_run.errors + q_run.errors) as f64);
            for (run, key) in [(&p_run, "P"), (&q_run, "Q")] {
                if let Some(error) = &run.first_error {
                    self.report.notes.push(format!(
                        "{REFRESH} {case} {key}: {} errors, first: {error}",
                        run.errors
                    ));
                }
            }
        }
        Ok(())
    }

    /// source-down: see the module's documentation.
    pub(crate) async fn source_down(&mut self) -> Result<()> {
        if !self.selected(Kind::Rust) {
            return Ok(());
        }
        self.report.notes.push(format!(
            "{DOWN}: Rust only (golang/groupcache's values never expire: it answers what it holds, \
             however old, and fails every miss)"
        ));
        for round in 0..self.options.rounds {
            let mut cases = [STALE_ON, STALE_OFF];
            if round % 2 == 1 {
                cases.reverse();
            }
            for case in cases {
                eprintln!(
                    "[{DOWN}] round {}/{} {case}",
                    round + 1,
                    self.options.rounds
                );
                self.down_round(case).await?;
            }
        }
        Ok(())
    }

    async fn down_round(&mut self, case: &'static str) -> Result<()> {
        let outage = Duration::from_secs_f64(self.options.down_secs);
        let mut extra = vec!["--ttl-ms".to_owned(), DOWN_TTL.as_millis().to_string()];
        if case == STALE_ON {
            // Well past the outage: every key held stays servable.
            let max_stale = outage + Duration::from_secs(60);
            extra.extend([
                "--max-stale-ms".to_owned(),
                max_stale.as_millis().to_string(),
            ]);
        }
        let cluster = cluster(self, Kind::Rust, settings(VALUE_BYTES, 1), &extra).await?;
        let keys: Vec<String> = (0..DOWN_KEYS)
            .map(|i| format!("{EXPIRING_KEYS}down-{i}"))
            .collect();
        let fill: Vec<_> = keys
            .iter()
            .map(|k| (cluster.owner(k), get_path(k)))
            .collect();
        let filled = run_once(&cluster.addrs(), DOWN_CONNECTIONS, fill).await;
        expect_all(&filled, DOWN_KEYS, VALUE_BYTES, "source-down fill")?;
        let source = Arc::new(Uniform {
            requests: keys
                .iter()
                .flat_map(|k| (0..3).map(|r| (r, get_path(k))))
                .collect(),
        });
        let targets: Vec<SocketAddr> = cluster.addrs();
        let mut pool = connect(&targets, DOWN_CONNECTIONS).await?;
        let warm = pool.run(source.clone(), Limit::Time(WARM_UP)).await;
        let before = stats_of(&cluster.replicas.iter().collect::<Vec<_>>()).await?;
        command_source(&cluster, "down=1").await?;
        let during = pool.run(source.clone(), Limit::Time(outage)).await;
        let after_stats = cluster.stats().await?;
        command_source(&cluster, "down=0").await?;
        let after = pool
            .run(source.clone(), Limit::Time(Duration::from_secs(1)))
            .await;
        let delta = |f: fn(&crate::cluster::Counters) -> u64| {
            let sum = |s: &[crate::cluster::Stats]| s.iter().map(|s| f(&s.stats)).sum::<u64>();
            sum(&after_stats).saturating_sub(sum(&before)) as f64
        };
        let mut add = |metric, better, value| {
            self.report
                .add(DOWN, case, metric, better, Kind::Rust, value);
        };
        use Better::{Higher, Lower};
        add(
            "gets while down",
            Higher,
            (during.ok + during.errors) as f64,
        );
        add(DOWN_ERRORS, Lower, during.errors as f64);
        add(
            "errors while down %",
            Lower,
            during.errors as f64 * 100.0 / (during.ok + during.errors).max(1) as f64,
        );
        add("stale served", Higher, delta(|c| c.stale_served));
        add(
            "source queries/s while down",
            Lower,
            delta(|c| c.source_queries) / outage.as_secs_f64(),
        );
        add("p99 us while down", Lower, during.quantile_us(0.99));
        add("errors before", Lower, warm.errors as f64);
        add("errors in 1 s after", Lower, after.errors as f64);
        for (outcome, phase) in [(&warm, "before"), (&during, "down"), (&after, "after")] {
            note_first(self.report, &format!("{DOWN} {case} {phase}"), outcome);
        }
        Ok(())
    }
}

fn note_first(report: &mut Report, what: &str, outcome: &Outcome) {
    if let Some(error) = &outcome.first_error {
        report
            .notes
            .push(format!("{what}: {} errors, first: {error}", outcome.errors));
    }
}

/// Issue 27's targets for these workloads, from the Rust medians (Go's beside them).
pub(crate) fn verdicts(report: &Report) -> Vec<Verdict> {
    let median = |workload: &str, case: &str, metric: &str, kind: Kind| {
        report
            .row(workload, case, metric)
            .and_then(|r| r.median(kind))
    };
    let mut out = Vec::new();
    let storm = median(STORM, STORM_CASE, QUERIES_PER_KEY, Kind::Rust);
    let others = [
        median(STORM, STORM_CASE, QUERIES_PER_KEY, Kind::GoPooled)
            .map(|go| format!(", Go {go:.2}")),
        median(STORM, STORM_BEFORE, QUERIES_PER_KEY, Kind::Rust)
            .map(|zero| format!(", not_found_ttl 0 {zero:.2}")),
    ];
    let others: String = others.into_iter().flatten().collect();
    out.push(Verdict {
        target: format!(
            "{STORM}: <= 1 source query per key per negative expiry ({MISSING} keys x {ASKS} asks)"
        ),
        met: storm.map(|q| q <= 1.0),
        detail: storm.map_or("not measured".to_owned(), |q| {
            format!("Rust {q:.3}{others}")
        }),
    });
    let ratio = median(REFRESH, REFRESH_ON, P99_RATIO, Kind::Rust);
    let off = median(REFRESH, REFRESH_OFF, P99_RATIO, Kind::Rust)
        .map_or(String::new(), |r| format!(" (without refresh {r:.2}x)"));
    out.push(Verdict {
        target: format!("{REFRESH}: P's p99 past its soft expiry <= 1.2x a hit's (64 connections)"),
        met: ratio.map(|r| r <= 1.2),
        detail: ratio.map_or("not measured".to_owned(), |r| format!("{r:.2}x{off}")),
    });
    // Every window, not the median: exactly one refresh each time.
    let loads = report
        .row(REFRESH, REFRESH_ON, LOADS_PER_EXPIRY)
        .and_then(|r| r.samples.get(&Kind::Rust));
    out.push(Verdict {
        target: format!("{REFRESH}: exactly 1 refresh per soft expiry, cluster-wide"),
        met: loads.map(|l| l.iter().all(|&n| n == 1.0)),
        detail: loads.map_or("not measured".to_owned(), |l| {
            format!("loads of P per window: {l:?}")
        }),
    });
    let errors = median(DOWN, STALE_ON, DOWN_ERRORS, Kind::Rust);
    let off = median(DOWN, STALE_OFF, DOWN_ERRORS, Kind::Rust)
        .map_or(String::new(), |e| format!(" (max_stale off: {e:.0})"));
    out.push(Verdict {
        target: format!("{DOWN}: 0 errors for keys held within max_stale"),
        met: errors.map(|e| e == 0.0),
        detail: errors.map_or("not measured".to_owned(), |e| format!("{e:.0}{off}")),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storm_asks_every_key_a_hundred_times_of_every_replica() {
        let requests = storm_requests("m-");
        assert_eq!(requests.len(), MISSING * ASKS);
        // The first block's first ask, then its second ask.
        assert_eq!(requests[0], (0, get_path("m-0")));
        assert_eq!(requests[BLOCK], (1, get_path("m-0")));
        assert_eq!(requests[BLOCK * ASKS], (BLOCK % 3, get_path("m-100")));
        let key_7: Vec<usize> = requests
            .iter()
            .filter(|(_, r)| *r == get_path("m-7"))
            .map(|(target, _)| *target)
            .collect();
        assert_eq!(key_7.len(), ASKS);
        assert!((0..3).all(|t| key_7.iter().filter(|&&k| k == t).count() >= 33));
    }

    #[test]
    fn verdicts_need_every_window_at_one_refresh() {
        let mut report = Report::default();
        assert!(verdicts(&report).iter().all(|v| v.met.is_none()));
        report.add(
            STORM,
            STORM_CASE,
            QUERIES_PER_KEY,
            Better::Lower,
            Kind::Rust,
            1.0,
        );
        report.add(
            STORM,
            STORM_CASE,
            QUERIES_PER_KEY,
            Better::Lower,
            Kind::GoPooled,
            99.0,
        );
        for n in [1.0, 1.0, 2.0] {
            report.add(
                REFRESH,
                REFRESH_ON,
                LOADS_PER_EXPIRY,
                Better::Lower,
                Kind::Rust,
                n,
            );
        }
        report.add(
            REFRESH,
            REFRESH_ON,
            P99_RATIO,
            Better::Lower,
            Kind::Rust,
            1.1,
        );
        report.add(DOWN, STALE_ON, DOWN_ERRORS, Better::Lower, Kind::Rust, 0.0);
        let v = verdicts(&report);
        assert_eq!(
            v.iter().map(|v| v.met).collect::<Vec<_>>(),
            [Some(true), Some(true), Some(false), Some(true)]
        );
        assert!(v[0].detail.contains("Go 99.00"), "{}", v[0].detail);
    }
}
