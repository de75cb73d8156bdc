//! The load generator: a fixed number of workers, each with one keep-alive connection per target,
//! each sending its next request as soon as the previous answer is read (a closed loop, so the
//! concurrency is exactly the number of workers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::http::{Conn, HttpError};

/// What to send: request number `seq` goes to target `.0` as the ready-made request `.1`; `None`
/// ends the run.
pub(crate) trait Source: Send + Sync + 'static {
    /// The `seq`-th request of the run.
    fn request(&self, seq: u64) -> Option<(usize, &[u8])>;
}

/// Requests drawn from a fixed list, spread evenly (and deterministically) at random.
pub(crate) struct Uniform {
    /// `(target, request)` pairs.
    pub requests: Vec<(usize, Vec<u8>)>,
}

impl Uniform {
    /// The index in `requests` of the `seq`-th request of a run.
    pub(crate) fn index(&self, seq: u64) -> usize {
        (mix(seq) % self.requests.len().max(1) as u64) as usize
    }
}

impl Source for Uniform {
    fn request(&self, seq: u64) -> Option<(usize, &[u8])> {
        let i = self.index(seq);
        self.requests.get(i).map(|(t, r)| (*t, r.as_slice()))
    }
}

/// Each request of a list exactly once, in order.
pub(crate) struct Sequence {
    /// `(target, request)` pairs.
    pub requests: Vec<(usize, Vec<u8>)>,
}

impl Source for Sequence {
    fn request(&self, seq: u64) -> Option<(usize, &[u8])> {
        let i = usize::try_from(seq).ok()?;
        self.requests.get(i).map(|(t, r)| (*t, r.as_slice()))
    }
}

/// The splitmix64 finalizer: a fixed pseudo-random spread of request numbers.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// When a run stops.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Limit {
    /// No new request after this long.
    Time(Duration),
    /// When the source runs out.
    Exhausted,
}

/// What a run measured.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Requests answered with 200.
    pub ok: u64,
    /// Requests answered otherwise, or failed.
    pub errors: u64,
    /// Of the `errors`, those answered 503 (refused by a limit).
    pub unavailable: u64,
    /// Of the `ok`, those answered after a [`Limit::Time`] had passed (sent before it).
    pub late: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Latency of every 200, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Body bytes received in 200s.
    pub body_bytes: u64,
    /// CPU time the servers used during the run (filled in by the caller), in microseconds.
    pub server_cpu_us: u64,
    /// CPU time this process used during the run, in microseconds.
    pub client_cpu_us: u64,
}

impl Outcome {
    /// Answered requests per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile of the latencies, in microseconds (0 when there are none).
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        quantile(&self.latencies_us, q)
    }
}

/// CPU time the threads of `pid` now alive have used, in microseconds, to the nanosecond (the
/// first field of `/proc/{pid}/task/*/schedstat`): for spans too short for `cpu_us`'s 10 ms
/// ticks. Threads that ended are missing, so use it only across spans no thread ends in.
pub(crate) fn cpu_us_fine(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let ns: u64 = tasks
        .filter_map(|task| {
            let line = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            line.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    ns / 1_000
}

/// CPU time (user and system) process `pid` has used so far, in microseconds; 0 if unknown.
/// `/proc/{pid}/stat` counts in ticks of 10 ms (`USER_HZ` is 100 on Linux).
pub(crate) fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime and stime are the 12th and
    // 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10_000
}

/// The `q` quantile (nearest rank) of sorted values.
pub(crate) fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

/// Workers and their connections, kept open between runs.
pub(crate) struct Pool {
    workers: Vec<Vec<Conn>>,
}

/// What one worker hands back.
struct Worker {
    conns: Vec<Conn>,
    ok: u64,
    errors: u64,
    unavailable: u64,
    late: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
    body_bytes: u64,
}

impl Pool {
    /// `concurrency` workers, each connected to every target.
    pub(crate) async fn connect(
        targets: &[SocketAddr],
        concurrency: usize,
    ) -> Result<Pool, HttpError> {
        let mut workers = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let mut conns = Vec::with_capacity(targets.len());
            for &addr in targets {
                conns.push(Conn::connect(addr).await?);
            }
            workers.push(conns);
        }
        Ok(Pool { workers })
    }

    /// Runs `source` until `limit`, all workers at once.
    pub(crate) async fn run(&mut self, source: Arc<dyn Source>, limit: Limit) -> Outcome {
        let cpu_before = cpu_us(std::process::id());
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = match limit {
            Limit::Time(d) => Some(started + d),
            Limit::Exhausted => None,
        };
        let mut tasks = JoinSet::new();
        for conns in std::mem::take(&mut self.workers) {
            let (source, next) = (source.clone(), next.clone());
            tasks.spawn(work(conns, source, next, deadline));
        }
        let mut outcome = Outcome::default();
        while let Some(joined) = tasks.join_next().await {
            // A worker cannot panic short of a bug; losing its connections ends the benchmark.
            let worker = joined.unwrap_or_else(|e| panic!("load worker failed: {e}"));
            outcome.ok += worker.ok;
            outcome.errors += worker.errors;
            outcome.unavailable += worker.unavailable;
            outcome.late += worker.late;
            outcome.body_bytes += worker.body_bytes;
            if outcome.first_error.is_none() {
                outcome.first_error = worker.first_error;
            }
            outcome.latencies_us.extend(worker.latencies_us);
            self.workers.push(worker.conns);
        }
        outcome.elapsed = started.elapsed();
        outcome.client_cpu_us = cpu_us(std::process::id()).saturating_sub(cpu_before);
        outcome.latencies_us.sort_unstable();
        outcome
    }
}

async fn work(
    mut conns: Vec<Conn>,
    source: Arc<dyn Source>,
    next: Arc<AtomicU64>,
    deadline: Option<Instant>,
) -> Worker {
    let mut worker = Worker {
        conns: Vec::new(),
        ok: 0,
        errors: 0,
        unavailable: 0,
        late: 0,
        first_error: None,
        latencies_us: Vec::with_capacity(1 << 14),
        body_bytes: 0,
    };
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            break;
        }
        let Some((target, request)) = source.request(next.fetch_add(1, Ordering::Relaxed)) else {
            break;
        };
        let Some(conn) = conns.get_mut(target) else {
            worker.errors += 1;
            worker.first_error = Some(format!("no target {target}"));
            break;
        };
        let failure = match conn.round_trip(request).await {
            Ok(response) if response.status == 200 => {
                let micros = now.elapsed().as_micros();
                worker
                    .latencies_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                worker.ok += 1;
                worker.late += u64::from(deadline.is_some_and(|d| Instant::now() > d));
                worker.body_bytes += response.body.len() as u64;
                None
            }
            Ok(response) => {
                worker.unavailable += u64::from(response.status == 503);
                Some(format!(
                    "status {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
                ))
            }
            Err(error) => {
                // The connection is unusable: replace it.
                let addr = conn.addr();
                if let Ok(fresh) = Conn::connect(addr).await {
                    *conn = fresh;
                }
                Some(format!("{addr}: {error}"))
            }
        };
        if let Some(failure) = failure {
            worker.errors += 1;
            worker.first_error.get_or_insert(failure);
        }
    }
    worker.conns = conns;
    worker
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&sorted, 0.5), 50.0);
        assert_eq!(quantile(&sorted, 0.99), 99.0);
        assert_eq!(quantile(&sorted, 1.0), 100.0);
        assert_eq!(quantile(&[7], 0.99), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn sources_pick_from_their_lists() {
        let requests = vec![(0, b"a".to_vec()), (1, b"b".to_vec())];
        let sequence = Sequence {
            requests: requests.clone(),
        };
        assert_eq!(sequence.request(1), Some((1, &b"b"[..])));
        assert_eq!(sequence.request(2), None);
        let uniform = Uniform { requests };
        let picks: Vec<usize> = (0..1000)
            .filter_map(|s| uniform.request(s))
            .map(|r| r.0)
            .collect();
        let ones = picks.iter().filter(|&&t| t == 1).count();
        assert!(picks.len() == 1000 && (400..600).contains(&ones), "{ones}");
    }
}
