//! How long a peer takes to answer a fetch, estimated from its answers: the hedge's delay
//! (`group/hedge.rs`). TCP's retransmission estimator (RFC 6298): a smoothed mean and a smoothed
//! mean deviation, and the estimate the mean plus four deviations, which stays above all but the
//! slowest answers without keeping a histogram. Lock-free: two relaxed atomics per answer. Two
//! answers recorded at once may lose one of them, which only slows the estimate a little.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A peer's answer latency, smoothed; zero until its first answer.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// The smoothed mean, in microseconds.
    mean: AtomicU64,
    /// The smoothed mean deviation, in microseconds.
    deviation: AtomicU64,
}

impl Latency {
    /// Counts an answer that took `took`.
    pub(crate) fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let mean = self.mean.load(Ordering::Relaxed);
        if mean == 0 {
            self.mean.store(sample, Ordering::Relaxed);
            self.deviation.store(sample / 2, Ordering::Relaxed);
            return;
        }
        // RFC 6298's gains, 1/4 for the deviation and 1/8 for the mean.
        let deviation = self.deviation.load(Ordering::Relaxed);
        let deviation = deviation - deviation / 4 + mean.abs_diff(sample) / 4;
        let mean = (mean - mean / 8 + sample / 8).max(1);
        self.deviation.store(deviation, Ordering::Relaxed);
        self.mean.store(mean, Ordering::Relaxed);
    }

    /// How long an answer may take before it is slower than nearly all seen so far: the mean
    /// plus four mean deviations; `None` before the first answer.
    pub(crate) fn slow_after(&self) -> Option<Duration> {
        let mean = self.mean.load(Ordering::Relaxed);
        if mean == 0 {
            return None;
        }
        let deviation = self.deviation.load(Ordering::Relaxed);
        Some(Duration::from_micros(
            mean.saturating_add(deviation.saturating_mul(4)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_answers_settle_near_their_latency_and_a_spread_widens_the_estimate() {
        let latency = Latency::default();
        assert_eq!(latency.slow_after(), None, "no answer yet");
        for _ in 0..100 {
            latency.record(Duration::from_millis(2));
        }
        let steady = latency.slow_after().unwrap();
        assert!(
            steady >= Duration::from_millis(2) && steady < Duration::from_micros(2_100),
            "{steady:?}"
        );
        for i in 0..100 {
            latency.record(Duration::from_millis(if i % 2 == 0 { 1 } else { 9 }));
        }
        let spread = latency.slow_after().unwrap();
        assert!(
            spread > Duration::from_millis(9) && spread < Duration::from_millis(30),
            "{spread:?}"
        );
    }
}
