//! detectors (issue 25, item 1): the library's failure detector, fixed silence, against a
//! phi-accrual detector, in a deterministic simulation (no network, no process, a seeded RNG).
//!
//! One idle peer is watched by one replica. The replica's heartbeat schedule is the library's
//! (`groupcache/src/cluster/liveness.rs`, `heartbeats`): a tick every quarter of the detection
//! time (`tokio::time::sleep`, so a little more), a heartbeat sent on a tick when nothing was
//! heard for that quarter and none is in flight, given up after the detection time. The peer
//! answers after a one-way delay, its own pauses and a one-way delay back; network stalls hold
//! every message sent during them. A variant schedule sends on every quiet tick
//! ([`Schedule::quiet`]). The same trace of answers and give-ups is fed to:
//!
//! - the library's rule, re-implemented here because it runs inline in async code against the
//!   real clock, crate-private (`liveness.rs` `heartbeat`, `membership.rs` `Endpoint::heard` and
//!   `silent_for`, `Member::suspect` and `trust`): a heartbeat given up on while nothing was heard
//!   for the whole detection time suspects the peer for `owner_suspicion`; the next answer trusts
//!   it again. Silence is counted in whole milliseconds, as `Endpoint::heard` stores it;
//! - phi accrual as Akka implements it (`PhiAccrualFailureDetector`, after Hayashibara et al.):
//!   a normal distribution over a sliding window of the last 1,000 inter-arrival times, its
//!   standard deviation at least `min_std_deviation`, its mean raised by the acceptable
//!   heartbeat pause, Akka's logistic approximation of the normal tail, suspected while
//!   phi >= threshold. Checked continuously (the exact time phi crosses the threshold), the most
//!   favourable way to run it: a replica would arm a timer at that time.
//!
//! Scenarios: healthy peers (loopback jitter; cross-zone jitter with network stalls; cross-zone
//! with stop-the-world pauses of 100, 300, 600 and 900 ms, 3 a minute), simulated for
//! [`HEALTHY_HOURS`] each, give false suspicions per hour; peers that freeze for good at a random
//! time, [`FREEZE_TRIALS`] each, give the detection latency. A last table times each detector's
//! per-heartbeat update and per-check decision on this machine.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

/// Simulated hours of every healthy scenario.
const HEALTHY_HOURS: f64 = 200.0;
/// Freezes simulated per freeze scenario.
const FREEZE_TRIALS: usize = 4_000;
/// `ClusterBuilder::owner_suspicion`'s default: how long one suspicion lasts unless an answer
/// ends it first.
const OWNER_SUSPICION: f64 = 5.0;
/// The library's default `failure_detection`.
const DETECTION: f64 = 1.0;
/// The router answers a heartbeat in about 7.5 µs (BENCHMARKS.md, "The failure detector's
/// heartbeats").
const SERVICE: f64 = 7.5e-6;
/// Akka's `max-sample-size`.
const PHI_WINDOW: usize = 1_000;

/// splitmix64: deterministic, and enough for a simulation (the bench has no `rand`).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// Exponentially distributed with this mean.
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// Disjoint time spans (stalls or pauses), sorted.
struct Spans(Vec<(f64, f64)>);

impl Spans {
    /// A Poisson process of `per_minute` spans up to `horizon`, each `length` long.
    fn poisson(
        rng: &mut Rng,
        horizon: f64,
        per_minute: f64,
        mut length: impl FnMut(&mut Rng) -> f64,
    ) -> Spans {
        let mut spans = Vec::new();
        if per_minute > 0.0 {
            let mut t = 0.0;
            loop {
                t += rng.exponential(60.0 / per_minute);
                if t >= horizon {
                    break;
                }
                let end = t + length(rng);
                spans.push((t, end));
                t = end;
            }
        }
        Spans(spans)
    }

    /// When something due at `t` gets through: the end of the span `t` falls in, else `t`.
    fn release(&self, t: f64) -> f64 {
        let i = self.0.partition_point(|&(_, end)| end <= t);
        match self.0.get(i) {
            Some(&(start, end)) if start <= t => end,
            _ => t,
        }
    }
}

/// The network between the replica and the peer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Network {
    /// One way 40 µs plus an exponential 10 µs: about 0.1 ms a round trip.
    Loopback,
    /// One way 0.5-2.5 ms (1-5 ms a round trip), and a stall of 50-200 ms once a minute.
    CrossZone,
}

/// One scenario of the peer's health.
struct Scenario {
    name: &'static str,
    network: Network,
    /// Stop-the-world pauses of the peer (GC, CPU throttling): how long each.
    pause: f64,
    /// And how many a minute.
    pauses_per_minute: f64,
}

const HEALTHY: [Scenario; 6] = [
    Scenario::new("loopback", Network::Loopback, 0.0),
    Scenario::new("cross-zone", Network::CrossZone, 0.0),
    Scenario::new("pauses 100 ms", Network::CrossZone, 0.100),
    Scenario::new("pauses 300 ms", Network::CrossZone, 0.300),
    Scenario::new("pauses 600 ms", Network::CrossZone, 0.600),
    Scenario::new("pauses 900 ms", Network::CrossZone, 0.900),
];

const FROZEN: [Scenario; 3] = [
    Scenario::new("loopback", Network::Loopback, 0.0),
    Scenario::new("cross-zone", Network::CrossZone, 0.0),
    Scenario::new("cross-zone, 300 ms pauses", Network::CrossZone, 0.300),
];

impl Scenario {
    const fn new(name: &'static str, network: Network, pause: f64) -> Scenario {
        Scenario {
            name,
            network,
            pause,
            pauses_per_minute: if pause > 0.0 { 3.0 } else { 0.0 },
        }
    }
}

/// One run of a scenario: its stalls and pauses drawn, and when the peer freezes for good.
struct World {
    rng: Rng,
    network: Network,
    stalls: Spans,
    pauses: Spans,
    freeze: f64,
}

impl World {
    fn new(scenario: &Scenario, seed: u64, horizon: f64, freeze: f64) -> World {
        let mut rng = Rng(seed);
        let stalls = match scenario.network {
            Network::Loopback => Spans(Vec::new()),
            Network::CrossZone => {
                Spans::poisson(&mut rng, horizon, 1.0, |r| r.between(0.050, 0.200))
            }
        };
        let pause = scenario.pause;
        let pauses = Spans::poisson(&mut rng, horizon, scenario.pauses_per_minute, |_| pause);
        World {
            rng,
            network: scenario.network,
            stalls,
            pauses,
            freeze,
        }
    }

    fn one_way(&mut self) -> f64 {
        match self.network {
            Network::Loopback => 40e-6 + self.rng.exponential(10e-6),
            Network::CrossZone => self.rng.between(0.5e-3, 2.5e-3),
        }
    }

    /// When the answer to a heartbeat sent at `sent` reaches the replica; None if never.
    fn answer(&mut self, sent: f64) -> Option<f64> {
        let arrives = self.stalls.release(sent) + self.one_way();
        let served = self.pauses.release(arrives) + SERVICE;
        if served >= self.freeze {
            return None;
        }
        Some(self.stalls.release(served) + self.one_way())
    }
}

/// What the replica sees of the peer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    /// A heartbeat answered, at this time.
    Answer(f64),
    /// A heartbeat given up on, unanswered after the detection time.
    GaveUp(f64),
}

/// `Endpoint::heard`'s clock: whole milliseconds, at least 1 (0 means never heard).
fn millis(t: f64) -> u64 {
    (t * 1000.0).floor() as u64 + 1
}

/// A heartbeat schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Schedule {
    /// `failure_detection`.
    detection: f64,
    /// A heartbeat goes when the silence reaches this share of the tick interval: 0.5 in the
    /// library, so one goes on every quiet tick. It was 1 until 2026-12-06 (`BEFORE`): silence
    /// counts from the last answer, a round trip after the last heartbeat left, and the loop
    /// wakes within a millisecond of its interval, so with round trips above that millisecond a
    /// heartbeat went every other tick, and a freeze took up to 1.5 s to detect.
    quiet: f64,
}

/// The library's schedule at its default detection time.
const LIBRARY: Schedule = Schedule {
    detection: DETECTION,
    quiet: 0.5,
};

/// The library's schedule until 2026-12-06: a heartbeat on a tick only when the silence reached
/// the whole interval (every other tick with round trips above a millisecond).
const BEFORE: Schedule = Schedule {
    detection: DETECTION,
    quiet: 1.0,
};

/// The library's heartbeat schedule (`liveness.rs`, `heartbeats` and `heartbeat`) for a peer
/// last heard at time 0, until `until`.
fn heartbeat_trace(world: &mut World, schedule: Schedule, until: f64) -> Vec<Event> {
    let detection = schedule.detection;
    // `(detection / 4).max(10 ms)`, compared with `silent_for()`, whole milliseconds.
    let interval = (detection / 4.0).max(0.010);
    let interval_micros = (interval * schedule.quiet * 1e6).round() as u64;
    let mut heard = millis(0.0);
    let mut in_flight: Option<Event> = None;
    let mut events = Vec::new();
    let mut tick = 0.0;
    while tick < until {
        if let Some(event) = in_flight {
            let (Event::Answer(done) | Event::GaveUp(done)) = event;
            if done <= tick {
                if let Event::Answer(at) = event {
                    heard = millis(at);
                }
                events.push(event);
                in_flight = None;
            }
        }
        let quiet = millis(tick).saturating_sub(heard) * 1000 >= interval_micros;
        if quiet && in_flight.is_none() {
            // `client.heartbeat(.., detection)`: an answer later than that is dropped unread.
            in_flight = Some(match world.answer(tick) {
                Some(at) if at < tick + detection => Event::Answer(at),
                _ => Event::GaveUp(tick + detection),
            });
        }
        // `tokio::time::sleep(interval)` wakes on the timer's next millisecond at the earliest,
        // after the loop's own work.
        tick += interval + world.rng.between(0.0, 0.001) + 20e-6;
    }
    events
}

/// A detector's verdict over a trace: the spans during which it suspected the peer.
type Suspicions = Vec<(f64, f64)>;

/// The library's rule over a trace (`liveness.rs` `heartbeat`; `Member::suspect`, `trust`).
fn fixed_silence(events: &[Event], detection: f64) -> Suspicions {
    let detection_micros = (detection * 1e6).round() as u64;
    let mut heard = millis(0.0);
    let mut suspected: Option<(f64, f64)> = None;
    let mut spans = Vec::new();
    for &event in events {
        match event {
            Event::Answer(at) => {
                heard = millis(at);
                if let Some((start, until)) = suspected.take() {
                    spans.push((start, until.min(at)));
                }
            }
            Event::GaveUp(at) => {
                if millis(at).saturating_sub(heard) * 1000 < detection_micros {
                    continue;
                }
                suspected = match suspected {
                    // Suspected already: its time is extended, no new suspicion.
                    Some((start, until)) if at < until => Some((start, at + OWNER_SUSPICION)),
                    Some(ended) => {
                        spans.push(ended);
                        Some((at, at + OWNER_SUSPICION))
                    }
                    None => Some((at, at + OWNER_SUSPICION)),
                };
            }
        }
    }
    spans.extend(suspected);
    spans
}

/// Akka's phi accrual detector, fed heartbeat arrivals.
#[derive(Debug, Clone)]
struct Phi {
    /// Inter-arrival times in µs, a ring of at most [`PHI_WINDOW`] (integers, as Akka's
    /// milliseconds: the running sums stay exact).
    intervals: Vec<u64>,
    /// Where the next one goes once the ring is full.
    next: usize,
    sum: u64,
    squares: u64,
    last: Option<f64>,
    min_std: f64,
    acceptable_pause: f64,
}

impl Phi {
    /// Seeded as Akka seeds it: two intervals at the first estimate plus and minus a quarter.
    fn new(first_estimate: f64, min_std: f64, acceptable_pause: f64) -> Phi {
        let mut phi = Phi {
            intervals: Vec::with_capacity(PHI_WINDOW),
            next: 0,
            sum: 0,
            squares: 0,
            last: None,
            min_std,
            acceptable_pause,
        };
        let mean = (first_estimate * 1e6).round() as u64;
        phi.push(mean - mean / 4);
        phi.push(mean + mean / 4);
        phi
    }

    fn push(&mut self, interval: u64) {
        if self.intervals.len() < PHI_WINDOW {
            self.intervals.push(interval);
        } else {
            let old = std::mem::replace(&mut self.intervals[self.next], interval);
            self.sum -= old;
            self.squares -= old * old;
            self.next = (self.next + 1) % PHI_WINDOW;
        }
        self.sum += interval;
        self.squares += interval * interval;
    }

    /// A heartbeat arrived at `at`.
    fn heartbeat(&mut self, at: f64) {
        if let Some(last) = self.last.replace(at) {
            self.push(((at - last).max(0.0) * 1e6).round() as u64);
        }
    }

    /// The distribution's mean (acceptable pause included) and standard deviation, seconds.
    fn distribution(&self) -> (f64, f64) {
        let n = self.intervals.len() as f64;
        let mean = self.sum as f64 / n;
        let variance = (self.squares as f64 / n - mean * mean).max(0.0);
        (
            mean / 1e6 + self.acceptable_pause,
            (variance.sqrt() / 1e6).max(self.min_std),
        )
    }

    /// Phi at `now` (0 before the first heartbeat).
    fn phi(&self, now: f64) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let (mean, std) = self.distribution();
        phi_of((now - last - mean) / std)
    }

    /// When phi reaches `threshold` if no heartbeat comes first.
    fn crossing(&self, threshold: Crossing) -> f64 {
        let (mean, std) = self.distribution();
        self.last.unwrap_or(0.0) + mean + threshold.y * std
    }
}

/// Akka's phi of `y`, the time since the last heartbeat in standard deviations past the mean:
/// -log10 of the logistic approximation of the normal tail. Increasing in `y`.
fn phi_of(y: f64) -> f64 {
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if y > 0.0 {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

/// A phi threshold, with the `y` at which phi reaches it: phi depends on `y` alone, so the time
/// it crosses the threshold is `last + mean + y * std`.
#[derive(Debug, Clone, Copy)]
struct Crossing {
    y: f64,
}

impl Crossing {
    fn new(threshold: f64) -> Crossing {
        let (mut low, mut high) = (-10.0, 60.0);
        for _ in 0..200 {
            let mid = (low + high) / 2.0;
            if phi_of(mid) < threshold {
                low = mid;
            } else {
                high = mid;
            }
        }
        Crossing { y: high }
    }
}

/// The phi detector's verdict over a trace, checked continuously.
fn phi_accrual(events: &[Event], config: &PhiConfig) -> Suspicions {
    let mut phi = Phi::new(DETECTION / 4.0, config.min_std, config.acceptable_pause);
    let crossing = Crossing::new(config.threshold);
    let mut spans = Vec::new();
    for &event in events {
        let Event::Answer(at) = event else {
            continue;
        };
        if phi.last.is_some() {
            let suspected_at = phi.crossing(crossing);
            if suspected_at < at {
                spans.push((suspected_at, at));
            }
        }
        phi.heartbeat(at);
    }
    if phi.last.is_some() {
        spans.push((phi.crossing(crossing), f64::INFINITY));
    }
    spans
}

/// A phi accrual configuration.
struct PhiConfig {
    threshold: f64,
    min_std: f64,
    acceptable_pause: f64,
}

/// The detectors compared: the library's rule at its default and at a shorter detection time,
/// phi at Akka's threshold and below with Akka's 100 ms minimum deviation and a few acceptable
/// pauses (Akka's cluster default, 3 s, would put detection past 3 s, far from the issue's
/// second), each on the library's schedule or on every quiet tick.
enum Detector {
    FixedSilence(Schedule),
    Phi(PhiConfig, Schedule),
}

impl Detector {
    fn name(&self) -> String {
        match self {
            Detector::FixedSilence(schedule) => format!(
                "fixed silence {} ms{}",
                (schedule.detection * 1000.0).round(),
                if schedule.quiet < 1.0 {
                    ""
                } else {
                    ", every other tick (before)"
                }
            ),
            Detector::Phi(c, schedule) => format!(
                "phi {} (min σ {} ms, pause {} ms){}",
                c.threshold,
                (c.min_std * 1000.0).round(),
                (c.acceptable_pause * 1000.0).round(),
                if schedule.quiet < 1.0 {
                    ""
                } else {
                    ", every other tick (before)"
                }
            ),
        }
    }

    /// The heartbeat schedule it is fed.
    fn schedule(&self) -> Schedule {
        match self {
            Detector::FixedSilence(schedule) | Detector::Phi(_, schedule) => *schedule,
        }
    }

    fn judge(&self, events: &[Event]) -> Suspicions {
        match self {
            Detector::FixedSilence(schedule) => fixed_silence(events, schedule.detection),
            Detector::Phi(config, _) => phi_accrual(events, config),
        }
    }
}

fn detectors() -> Vec<Detector> {
    // Every quiet tick, the library's schedule: the steady stream phi is designed for (see
    // `Schedule::quiet`).
    let every_tick = |detection| Schedule {
        detection,
        quiet: 0.5,
    };
    let phi = |threshold, acceptable_pause, schedule| {
        Detector::Phi(
            PhiConfig {
                threshold,
                min_std: 0.100,
                acceptable_pause,
            },
            schedule,
        )
    };
    vec![
        Detector::FixedSilence(LIBRARY),
        Detector::FixedSilence(every_tick(0.7)),
        Detector::FixedSilence(BEFORE),
        Detector::FixedSilence(Schedule {
            detection: 0.7,
            quiet: 1.0,
        }),
        phi(8.0, 0.0, BEFORE),
        phi(3.0, 0.0, BEFORE),
        phi(8.0, 0.1, BEFORE),
        phi(8.0, 0.3, BEFORE),
        phi(8.0, 0.5, BEFORE),
        phi(8.0, 0.0, LIBRARY),
        phi(8.0, 0.2, LIBRARY),
        phi(8.0, 0.4, LIBRARY),
    ]
}

/// `p` (0-1) of sorted values, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs the comparison; the tables, for stdout.
pub(crate) fn run() -> String {
    let detectors = detectors();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "detectors: one idle peer, heartbeats on the library's schedule (or on every quiet tick); \
         {HEALTHY_HOURS} h per healthy scenario, {FREEZE_TRIALS} freezes per frozen one"
    );

    // False suspicions of healthy peers, and the heartbeat rate they cost.
    let horizon = HEALTHY_HOURS * 3600.0;
    let mut healthy = vec![Vec::new(); detectors.len()];
    let mut rates = Vec::new();
    for (s, scenario) in HEALTHY.iter().enumerate() {
        let mut traces: Vec<(Schedule, Vec<Event>)> = Vec::new();
        for (d, detector) in detectors.iter().enumerate() {
            let schedule = detector.schedule();
            let position = traces.iter().position(|(k, _)| *k == schedule);
            let events = match position {
                Some(i) => &traces[i].1,
                None => {
                    let mut world =
                        World::new(scenario, 0x5EED_0000 + s as u64, horizon, f64::INFINITY);
                    let events = heartbeat_trace(&mut world, schedule, horizon);
                    if schedule.detection == DETECTION {
                        let answers = events
                            .iter()
                            .filter(|e| matches!(e, Event::Answer(_)))
                            .count();
                        rates.push((schedule.quiet, answers as f64 / horizon));
                    }
                    traces.push((schedule, events));
                    &traces[traces.len() - 1].1
                }
            };
            // Only what began before the run's end: phi's last crossing lies past it.
            let spans: Suspicions = detector
                .judge(events)
                .into_iter()
                .filter(|(start, _)| *start < horizon)
                .collect();
            let suspected = spans
                .iter()
                .fold(0.0, |sum, (a, b)| sum + b.min(horizon) - a);
            healthy[d].push((spans.len(), suspected / horizon));
        }
    }
    let _ = writeln!(
        out,
        "\nfalse suspicions of a healthy peer: per hour (in all, share of the time suspected)"
    );
    let _ = write!(out, "{:<48}", "detector");
    for scenario in &HEALTHY {
        let _ = write!(out, "{:>24}", scenario.name);
    }
    let _ = writeln!(out);
    for (d, detector) in detectors.iter().enumerate() {
        let _ = write!(out, "{:<48}", detector.name());
        for &(count, share) in &healthy[d] {
            let per_hour = count as f64 / HEALTHY_HOURS;
            let cell = format!("{per_hour:.2} ({count}, {:.3}%)", share * 100.0);
            let _ = write!(out, "{cell:>24}");
        }
        let _ = writeln!(out);
    }
    // What the two 1 s schedules send an idle peer (each scenario's rates in detector order).
    for (quiet, label) in [
        (1.0, "heartbeats/s, 1 s, every other tick (before)"),
        (0.5, "heartbeats/s, 1 s (the library's)"),
    ] {
        let _ = write!(out, "{label:<48}");
        for (_, rate) in rates.iter().filter(|(q, _)| *q == quiet) {
            let _ = write!(out, "{rate:>24.2}");
        }
        let _ = writeln!(out);
    }

    // Detection latency of a real freeze.
    let _ = writeln!(
        out,
        "\ndetection latency after a freeze, ms: p50 / p99 / max (suspected at the freeze: n)"
    );
    let _ = write!(out, "{:<48}", "detector");
    for scenario in &FROZEN {
        let _ = write!(out, "{:>30}", scenario.name);
    }
    let _ = writeln!(out);
    let mut latencies =
        vec![vec![Vec::with_capacity(FREEZE_TRIALS); FROZEN.len()]; detectors.len()];
    let mut already = vec![vec![0usize; FROZEN.len()]; detectors.len()];
    for (s, scenario) in FROZEN.iter().enumerate() {
        for trial in 0..FREEZE_TRIALS {
            let seed = 0xF4EE_0000_0000 + ((s as u64) << 24) + trial as u64;
            let freeze = Rng(seed ^ 0xA5A5).between(20.0, 80.0);
            let horizon = freeze + 10.0;
            let mut traces: Vec<(Schedule, Vec<Event>)> = Vec::new();
            for (d, detector) in detectors.iter().enumerate() {
                let schedule = detector.schedule();
                let position = traces.iter().position(|(k, _)| *k == schedule);
                let events = match position {
                    Some(i) => &traces[i].1,
                    None => {
                        let mut world = World::new(scenario, seed, horizon, freeze);
                        traces.push((schedule, heartbeat_trace(&mut world, schedule, horizon)));
                        &traces[traces.len() - 1].1
                    }
                };
                let spans = detector.judge(events);
                // The first suspicion still on at the freeze or after it.
                match spans.iter().find(|(_, end)| *end > freeze) {
                    Some(&(start, _)) if start <= freeze => {
                        already[d][s] += 1;
                        latencies[d][s].push(0.0);
                    }
                    Some(&(start, _)) => latencies[d][s].push(start - freeze),
                    None => latencies[d][s].push(f64::INFINITY),
                }
            }
        }
    }
    for (d, detector) in detectors.iter().enumerate() {
        let _ = write!(out, "{:<48}", detector.name());
        for (s, samples) in latencies[d].iter_mut().enumerate() {
            samples.sort_by(f64::total_cmp);
            let ms = |p: f64| percentile(samples, p) * 1000.0;
            let cell = format!(
                "{:.0} / {:.0} / {:.0} ({})",
                ms(0.5),
                ms(0.99),
                ms(1.0),
                already[d][s]
            );
            let _ = write!(out, "{cell:>30}");
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "\n{}", costs());
    out
}

/// Per-heartbeat update and per-check cost of each detector, on this machine, clock reads left
/// out (both need one, about the same).
fn costs() -> String {
    const N: u32 = 20_000_000;
    let time = |f: &mut dyn FnMut(u32)| {
        let start = Instant::now();
        for i in 0..N {
            f(i);
        }
        start.elapsed().as_nanos() as f64 / f64::from(N)
    };
    // The library's: `Endpoint::heard` (a load, a store when the millisecond moved) and
    // `silent_for` plus the comparison.
    let heard = std::sync::atomic::AtomicU64::new(1);
    let fixed_update = time(&mut |i| {
        let now = u64::from(black_box(i) / 4) + 1;
        if heard.load(std::sync::atomic::Ordering::Relaxed) != now {
            heard.store(now, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let fixed_check = time(&mut |i| {
        let now = u64::from(black_box(i)) + 1;
        let silent = now.saturating_sub(heard.load(std::sync::atomic::Ordering::Relaxed));
        black_box(silent >= 1000);
    });
    let mut phi = Phi::new(0.25, 0.1, 0.0);
    for i in 0..PHI_WINDOW {
        phi.heartbeat(i as f64 * 0.25);
    }
    let mut t = PHI_WINDOW as f64 * 0.25;
    let phi_update = time(&mut |i| {
        t += 0.25 + f64::from(black_box(i) % 7) * 1e-4;
        phi.heartbeat(t);
    });
    let phi_check = time(&mut |i| {
        black_box(phi.phi(t + f64::from(black_box(i) % 1000) * 1e-3) >= 8.0);
    });
    format!(
        "cost per decision, ns (this machine, no clock read): fixed silence update {fixed_update:.1}, \
         check {fixed_check:.1}; phi update {phi_update:.1}, check {phi_check:.1}; state per peer: \
         fixed silence 8 B, phi {} B (a {PHI_WINDOW}-interval window)",
        std::mem::size_of::<Phi>() + PHI_WINDOW * std::mem::size_of::<u64>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regular(every: f64, count: usize, rng: &mut Rng) -> Phi {
        let mut phi = Phi::new(every, 0.100, 0.0);
        for i in 0..count {
            phi.heartbeat(i as f64 * every + rng.between(0.0, 0.002));
        }
        phi
    }

    #[test]
    fn phi_grows_with_silence() {
        let phi = regular(0.25, 200, &mut Rng(1));
        let last = phi.last.expect("heartbeats were fed");
        let mut previous = 0.0;
        for step in 1..400 {
            let value = phi.phi(last + f64::from(step) * 0.005);
            assert!(
                value >= previous,
                "phi fell at {step}: {value} < {previous}"
            );
            previous = value;
        }
        assert!(previous > 16.0, "two seconds of silence: phi {previous}");
    }

    #[test]
    fn regular_heartbeats_give_low_phi() {
        let phi = regular(0.25, 500, &mut Rng(2));
        let last = phi.last.expect("heartbeats were fed");
        assert!(phi.phi(last + 0.1) < 0.1, "{}", phi.phi(last + 0.1));
        assert!(phi.phi(last + 0.25) < 0.5, "{}", phi.phi(last + 0.25));
        let (mean, std) = phi.distribution();
        assert!((mean - 0.25).abs() < 0.005, "mean {mean}");
        assert_eq!(
            std, 0.100,
            "the minimum deviation applies to a steady stream"
        );
        // With a 100 ms deviation, phi 8 is reached about 5.2 deviations past the mean.
        let crossing = Crossing::new(8.0);
        assert!((phi_of(crossing.y) - 8.0).abs() < 1e-9);
        let at = phi.crossing(crossing);
        assert!((phi.phi(at) - 8.0).abs() < 1e-6);
        assert!((0.7..0.8).contains(&(at - last)), "{}", at - last);
    }

    #[test]
    fn the_window_slides_and_its_sums_stay_exact() {
        let mut phi = Phi::new(0.25, 0.0, 0.0);
        for i in 0..3 * PHI_WINDOW {
            phi.heartbeat(i as f64 * 0.5);
        }
        assert_eq!(phi.intervals.len(), PHI_WINDOW);
        let (mean, std) = phi.distribution();
        assert!((mean - 0.5).abs() < 1e-9 && std < 1e-6, "{mean} {std}");
    }

    /// The library's rule: a frozen peer is suspected a detection time after its last unanswered
    /// heartbeat was sent; a healthy one pausing for less than that never is.
    #[test]
    fn fixed_silence_suspects_a_freeze_and_not_a_pause() {
        let paused = Scenario::new("pauses 600 ms", Network::CrossZone, 0.600);
        let hour = 3600.0;
        let mut world = World::new(&paused, 7, hour, f64::INFINITY);
        let events = heartbeat_trace(&mut world, LIBRARY, hour);
        assert!(fixed_silence(&events, 1.0).is_empty());
        let frozen = Scenario::new("loopback", Network::Loopback, 0.0);
        let mut world = World::new(&frozen, 7, 40.0, 30.0);
        let events = heartbeat_trace(&mut world, LIBRARY, 40.0);
        let spans = fixed_silence(&events, 1.0);
        assert_eq!(spans.len(), 1, "{spans:?}");
        let latency = spans[0].0 - 30.0;
        assert!((0.75..1.6).contains(&latency), "{latency}");
    }
}
