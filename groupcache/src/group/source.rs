//! Source protection: at most `max_concurrent_loads` loader calls of a group at once on a
//! replica (the rest wait their turn, none is refused), and an optional circuit breaker that
//! stops asking a source which keeps failing (`Builder::circuit_breaker`).
//!
//! The breaker: `failures` failed loads in a row open it; while open, loads fail at once with
//! [`Error::CircuitOpen`] (a get may then serve a stale value, `Builder::max_stale`); once
//! `open_for` has passed, one load goes through as a probe (the others still fail at once),
//! and its outcome closes the circuit or opens it again. Time is tokio's, so tests drive it
//! with a paused clock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::error::Error;
use crate::lock;
use crate::metrics::Metrics;

/// A group's guard in front of its loader.
pub(crate) struct Source {
    turns: Semaphore,
    breaker: Option<Breaker>,
}

/// The circuit breaker's settings and state.
struct Breaker {
    failures: u32,
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Failed loads since the last success.
    in_a_row: u32,
    /// Open until then (a probe may go after it).
    open_until: Option<Instant>,
    /// A probe is out.
    probing: bool,
}

/// One loader call's turn: held while the loader runs, then told how it went.
pub(crate) struct Turn<'a> {
    source: &'a Source,
    _permit: SemaphorePermit<'a>,
    probe: bool,
    /// Told yet: a turn dropped untold (a panic) counts as a failure.
    told: bool,
}

impl Source {
    /// A guard allowing `turns` loader calls at once, with a breaker opened by `breaker.0`
    /// failures in a row for `breaker.1`.
    pub(crate) fn new(turns: usize, breaker: Option<(u32, Duration)>) -> Source {
        Source {
            turns: Semaphore::new(turns.clamp(1, Semaphore::MAX_PERMITS)),
            breaker: breaker.map(|(failures, open_for)| Breaker {
                failures,
                open_for,
                state: Mutex::default(),
            }),
        }
    }

    /// Waits for a turn to call the loader; [`Error::CircuitOpen`] at once if the breaker is
    /// open (counted).
    pub(crate) async fn turn(&self, metrics: &Metrics) -> Result<Turn<'_>, Error> {
        let probe = match &self.breaker {
            None => false,
            Some(breaker) => match breaker.admit(Instant::now()) {
                Some(probe) => probe,
                None => {
                    metrics.load_short_circuited();
                    return Err(Error::CircuitOpen);
                }
            },
        };
        let permit = match self.turns.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                metrics.loads_waiting(1);
                let permit = self.turns.acquire().await;
                metrics.loads_waiting(-1);
                // The semaphore is never closed.
                permit.map_err(|_| Error::LoadAbandoned)?
            }
        };
        Ok(Turn {
            source: self,
            _permit: permit,
            probe,
            told: false,
        })
    }
}

impl Turn<'_> {
    /// The loader call went `well` (a value or a negative answer) or not; updates the breaker
    /// and its gauge, and logs when the circuit opens or closes.
    pub(crate) fn done(mut self, well: bool, metrics: &Metrics) {
        self.told = true;
        if let Some(breaker) = &self.source.breaker {
            let (was, open) = breaker.record(well, self.probe, Instant::now());
            metrics.circuit_open(open);
            match (was, open) {
                (false, true) => {
                    tracing::warn!(group = metrics.group(), failures = breaker.failures, open_for = ?breaker.open_for, "the loader keeps failing: circuit open, loads fail at once");
                }
                (true, false) => {
                    tracing::info!(
                        group = metrics.group(),
                        "the loader answers again: circuit closed"
                    );
                }
                _ => {}
            }
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.told
            && let Some(breaker) = &self.source.breaker
        {
            breaker.record(false, self.probe, Instant::now());
        }
    }
}

impl Breaker {
    /// Whether a load may go now: `Some(false)` as usual, `Some(true)` as the probe of an open
    /// circuit whose time is up, `None` not at all.
    fn admit(&self, now: Instant) -> Option<bool> {
        let mut state = lock(&self.state);
        match state.open_until {
            None => Some(false),
            Some(until) if now < until || state.probing => None,
            Some(_) => {
                state.probing = true;
                Some(true)
            }
        }
    }

    /// Records a load's outcome; whether the circuit was open before it, and is after.
    fn record(&self, well: bool, probe: bool, now: Instant) -> (bool, bool) {
        let mut state = lock(&self.state);
        let was = state.open_until.is_some();
        if probe {
            state.probing = false;
        }
        if well {
            // A load admitted before the circuit opened may succeed after: the source answers
            // again, so the circuit closes as after a probe.
            *state = State::default();
            return (was, false);
        }
        state.in_a_row = state.in_a_row.saturating_add(1);
        if probe || state.in_a_row >= self.failures {
            state.open_until = Some(now + self.open_for);
        }
        (was, state.open_until.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three failures open the circuit; while open, no turn; after `open_for`, one probe and no
    /// second; a failed probe opens it again for `open_for`; a good one closes it.
    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_failures_in_a_row_and_lets_one_probe_through() {
        let metrics = Metrics::new("breaker-test");
        let open_for = Duration::from_secs(2);
        let source = Source::new(8, Some((3, open_for)));
        for _ in 0..2 {
            source.turn(&metrics).await.unwrap().done(false, &metrics);
        }
        // A success resets the run.
        source.turn(&metrics).await.unwrap().done(true, &metrics);
        for _ in 0..3 {
            source.turn(&metrics).await.unwrap().done(false, &metrics);
        }
        assert!(matches!(
            source.turn(&metrics).await,
            Err(Error::CircuitOpen)
        ));
        assert_eq!(metrics.snapshot().circuit_open, 1);
        tokio::time::advance(open_for - Duration::from_millis(1)).await;
        assert!(source.turn(&metrics).await.is_err(), "still open");
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = source.turn(&metrics).await.unwrap();
        assert!(source.turn(&metrics).await.is_err(), "one probe at a time");
        probe.done(false, &metrics);
        assert!(source.turn(&metrics).await.is_err(), "open again");
        tokio::time::advance(open_for).await;
        let probe = source.turn(&metrics).await.unwrap();
        probe.done(true, &metrics);
        assert_eq!(metrics.snapshot().circuit_open, 0);
        for _ in 0..2 {
            source.turn(&metrics).await.unwrap().done(false, &metrics);
        }
        assert!(
            source.turn(&metrics).await.is_ok(),
            "closed: two failures do not open it"
        );
        assert_eq!(metrics.snapshot().loads_short_circuited, 4);
    }

    /// A probe that panics (dropped untold) counts as a failure: the circuit opens again rather
    /// than stay half-open for ever.
    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_without_an_outcome_opens_the_circuit_again() {
        let metrics = Metrics::new("breaker-test");
        let source = Source::new(8, Some((1, Duration::from_secs(1))));
        source.turn(&metrics).await.unwrap().done(false, &metrics);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(source.turn(&metrics).await.unwrap());
        assert!(source.turn(&metrics).await.is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(source.turn(&metrics).await.is_ok(), "a probe again");
    }

    /// At most `turns` at once: the next waits (counted as waiting) and goes when one ends.
    #[tokio::test]
    async fn loads_beyond_the_limit_wait_for_a_turn_and_are_not_refused() {
        let metrics = Metrics::new("turns-test");
        let source = Source::new(2, None);
        let (a, b) = (
            source.turn(&metrics).await.unwrap(),
            source.turn(&metrics).await.unwrap(),
        );
        let mut third = Box::pin(source.turn(&metrics));
        assert!(
            futures_util::poll!(&mut third).is_pending(),
            "a third load at once"
        );
        assert_eq!(metrics.snapshot().loads_waiting, 1);
        a.done(true, &metrics);
        let third = third.await.unwrap();
        assert_eq!(metrics.snapshot().loads_waiting, 0);
        drop((b, third));
    }
}
