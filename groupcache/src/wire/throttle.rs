//! Rate-limited log lines: at most one per reason a second, the next one saying how many were
//! left out. The peer port's refusals are logged through it: each refusal was a `WARN` line of
//! its own, so an unsigned flood (which costs its sender nothing: the router refuses it from the
//! headers) wrote as many lines as it sent requests. Metrics still count every refusal.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// One log line per reason (`0..N`) per second, at most.
pub(crate) struct Throttle<const N: usize> {
    /// The clock's origin: seconds are counted from here (monotonic, unlike the wall clock).
    start: Instant,
    reasons: [Reason; N],
}

struct Reason {
    /// The second of the last line logged; `i64::MIN` before the first.
    logged: AtomicI64,
    /// Left out since that line.
    suppressed: AtomicU64,
}

impl<const N: usize> Throttle<N> {
    pub(crate) fn new() -> Self {
        Throttle {
            start: Instant::now(),
            reasons: std::array::from_fn(|_| Reason {
                logged: AtomicI64::new(i64::MIN),
                suppressed: AtomicU64::new(0),
            }),
        }
    }

    /// Whether to log an event of `reason` now: `Some` with how many of its events were left out
    /// since its last line, or `None` to leave this one out.
    pub(crate) fn admit(&self, reason: usize) -> Option<u64> {
        let second = i64::try_from(self.start.elapsed().as_secs()).unwrap_or(i64::MAX);
        self.admit_at(reason, second)
    }

    /// [`admit`](Self::admit) at `second` (of any clock that does not run backwards).
    fn admit_at(&self, reason: usize, second: i64) -> Option<u64> {
        // A reason out of range has no slot: logged, never throttled (no caller passes one).
        let Some(reason) = self.reasons.get(reason) else {
            return Some(0);
        };
        let logged = reason.logged.load(Ordering::Relaxed);
        if second > logged
            && reason
                .logged
                .compare_exchange(logged, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // An event counted as left out while this swap runs goes to the next line's count.
            return Some(reason.suppressed.swap(0, Ordering::Relaxed));
        }
        reason.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_second_then_the_count_left_out() {
        let throttle = Throttle::<2>::new();
        assert_eq!(throttle.admit_at(0, 10), Some(0));
        for _ in 0..999 {
            assert_eq!(throttle.admit_at(0, 10), None);
        }
        // Another reason has its own line in the same second.
        assert_eq!(throttle.admit_at(1, 10), Some(0));
        assert_eq!(throttle.admit_at(1, 10), None);
        // The next second: one line, saying how many were left out.
        assert_eq!(throttle.admit_at(0, 11), Some(999));
        assert_eq!(throttle.admit_at(0, 11), None);
        // A quiet gap: the next line still counts what was left out before it.
        assert_eq!(throttle.admit_at(0, 60), Some(1));
        assert_eq!(throttle.admit_at(1, 60), Some(1));
        assert_eq!(throttle.admit_at(1, 61), Some(0));
    }

    #[test]
    fn concurrent_events_log_one_line_a_second_and_count_every_other() {
        let throttle = Throttle::<1>::new();
        let logged = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        if throttle.admit_at(0, 5).is_some() {
                            logged.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(logged.load(Ordering::Relaxed), 1);
        assert_eq!(throttle.admit_at(0, 6), Some(39_999));
    }

    #[test]
    fn the_first_event_is_logged_and_an_unknown_reason_is_never_throttled() {
        let throttle = Throttle::<1>::new();
        assert_eq!(throttle.admit(0), Some(0));
        assert_eq!(throttle.admit(7), Some(0));
        assert_eq!(throttle.admit(7), Some(0));
    }
}
