//! Whether a new owner's miss peeks a previous owner's memory first (the warm hand-off).
//!
//! A peek costs a round trip before the load. It pays when the previous owner holds the key, as
//! after a join or a leave in a warm cluster, where it saved every one of the moved keys' reloads
//! in issue 17's runs. It is pure cost when the previous owner holds nothing, as in a cluster that
//! has just started: there every replica's first ring with others names each key's successor as
//! its previous owner, and each cold load peeked it first (1,000 cold single gets took 354 ms with
//! the hand-off and 72 ms without). A ring (`membership.rs`) therefore keeps one [`PeekGate`] per
//! member it could peek, and a gate learns from the answers:
//!
//! - once a peek of the member has hit under this ring, the member holds keys worth asking for:
//!   every miss peeks it;
//! - until then, at most [`UNPROVEN_IN_FLIGHT`] peeks of it are in flight at once, so a burst of
//!   cold loads (a batch of singles, a sweep) does not send all its peeks before the first answer;
//!   the others load at once;
//! - after [`COLD_AFTER_MISSES`] misses and no hit, the member holds nothing this replica asks
//!   for: no more peeks of it under this ring.
//!
//! A new ring starts with fresh gates, since a membership change is what gives a previous owner
//! keys to hand off. A warm cluster with cold keys among the moved ones still peeks: one hit in
//! the first misses proves the member (at a tenth of the peeks hitting, 16 misses in a row happen
//! 19 % of the time; the moved keys asked for after that are reloaded, as without a hand-off).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Misses without a hit after which a member is not peeked again under this ring.
pub(crate) const COLD_AFTER_MISSES: u32 = 16;

/// Peeks of a member in flight at once until one of them hits.
pub(crate) const UNPROVEN_IN_FLIGHT: u32 = 4;

/// What one ring has learnt about peeking one member.
#[derive(Debug, Default)]
pub(crate) struct PeekGate {
    hits: AtomicU32,
    misses: AtomicU32,
    in_flight: AtomicU32,
}

impl PeekGate {
    /// A peek to send now, or `None` if this miss should load without one.
    pub(crate) fn try_peek(self: &Arc<Self>) -> Option<Peek> {
        let proven = self.hits.load(Ordering::Relaxed) > 0;
        if !proven && self.misses.load(Ordering::Relaxed) >= COLD_AFTER_MISSES {
            return None;
        }
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let peek = Peek { gate: self.clone() };
        if !proven && in_flight >= UNPROVEN_IN_FLIGHT {
            return None; // `peek` gives its slot back as it drops
        }
        Some(peek)
    }
}

/// One peek in flight; dropping it without [`Peek::answered`] (a cancelled load) counts nothing.
#[derive(Debug)]
pub(crate) struct Peek {
    gate: Arc<PeekGate>,
}

impl Peek {
    /// The peek's answer: whether the member held the key. A failed peek is a miss.
    pub(crate) fn answered(self, hit: bool) {
        let counter = if hit {
            &self.gate.hits
        } else {
            &self.gate.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Peek {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Slots in [`RecentWrites`]' table: 256 KiB, allocated at the first write. At 100 writes a
/// second and a 60 s window, a tenth of the keys that move miss their peek for a slot another key
/// was written in.
const WRITE_SLOTS: usize = 1 << 16;

/// The keys written on this replica lately, for the hand-off to leave alone.
///
/// A `remove` or `set` reaches the key's owner first and the other replicas after: until a
/// previous owner (or a successor) has had its share, it still holds the value from before the
/// write. A new owner's miss that peeked it in between stored that value again, after its own
/// copy had gone, and served it for up to `hot_max_age` after the write returned `Ok`. So a key
/// written on this replica within that window is loaded, not peeked: the previous owner had
/// nothing newer to give than the source, and it may have something older.
///
/// A fixed table of write times by key hash, not a set of keys: memory stays 256 KiB whatever
/// the write rate, and a collision only makes another key skip its peek (a load it would have
/// run without the hand-off). Writes are recorded whatever the ring's age, since the ring may
/// change just after one.
pub(crate) struct RecentWrites {
    /// Write times, as [`stamp`](Self::stamp)s.
    slots: OnceLock<Box<[AtomicU32]>>,
    epoch: Instant,
    /// The window in milliseconds, rounded up.
    window: u32,
}

impl RecentWrites {
    /// Remembers writes for `window` (`hot_max_age`; at most 24 days are told apart).
    pub(crate) fn new(window: Duration) -> Self {
        let window = u32::try_from(window.as_millis() + 1).unwrap_or(u32::MAX / 2);
        RecentWrites {
            slots: OnceLock::new(),
            epoch: Instant::now(),
            window: window.min(u32::MAX / 2),
        }
    }

    /// Records a write of the key with hash `hash`, now.
    pub(crate) fn record(&self, hash: u64) {
        let slots = self
            .slots
            .get_or_init(|| (0..WRITE_SLOTS).map(|_| AtomicU32::new(0)).collect());
        slots[slot(hash)].store(self.stamp(), Ordering::Release);
    }

    /// Whether the key with hash `hash` (or another key in its slot) was written within the
    /// window. Never says no too early; may say yes for a key written long ago (49 days apart,
    /// the stamps wrap), which costs that key one peek.
    pub(crate) fn written_recently(&self, hash: u64) -> bool {
        let Some(slots) = self.slots.get() else {
            return false;
        };
        let at = slots[slot(hash)].load(Ordering::Acquire);
        self.stamp().wrapping_sub(at) <= self.window
    }

    /// Milliseconds since `epoch`, plus one more window: a slot never written (0) is a window
    /// older than the first write can be. Wrapping.
    fn stamp(&self) -> u32 {
        let ms = self.epoch.elapsed().as_millis() as u64 + u64::from(self.window) + 1;
        ms as u32
    }
}

fn slot(hash: u64) -> usize {
    // The top bits: the caches index their tables with the low ones.
    (hash >> 48) as usize & (WRITE_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_counts_as_written_for_the_window_and_not_after() {
        let writes = RecentWrites::new(Duration::from_secs(60));
        assert!(!writes.written_recently(7 << 48), "nothing written yet");
        writes.record(7 << 48);
        assert!(writes.written_recently(7 << 48), "written just now");
        assert!(
            !writes.written_recently(8 << 48),
            "a slot never written is not recent, even in the first window after the start"
        );
        // The same write, seen more than a window later: the epoch further back.
        let old = RecentWrites {
            epoch: writes.epoch - Duration::from_secs(61),
            ..RecentWrites::new(Duration::from_secs(60))
        };
        old.slots
            .get_or_init(|| (0..WRITE_SLOTS).map(|_| AtomicU32::new(0)).collect())[slot(7 << 48)]
        .store(
            writes.slots.get().unwrap()[slot(7 << 48)].load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        assert!(!old.written_recently(7 << 48), "61 s later");
        let recent = RecentWrites {
            epoch: writes.epoch - Duration::from_secs(59),
            ..RecentWrites::new(Duration::from_secs(60))
        };
        recent
            .slots
            .get_or_init(|| (0..WRITE_SLOTS).map(|_| AtomicU32::new(0)).collect())[slot(7 << 48)]
        .store(
            writes.slots.get().unwrap()[slot(7 << 48)].load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        assert!(recent.written_recently(7 << 48), "59 s later");
    }

    #[test]
    fn a_member_whose_peeks_all_miss_is_not_peeked_again() {
        let gate = Arc::new(PeekGate::default());
        for _ in 0..COLD_AFTER_MISSES {
            gate.try_peek().expect("still worth a try").answered(false);
        }
        assert!(gate.try_peek().is_none(), "cold: loads go straight on");
        assert!(gate.try_peek().is_none());
    }

    #[test]
    fn one_hit_among_the_first_misses_keeps_the_member_peeked() {
        let gate = Arc::new(PeekGate::default());
        for _ in 0..COLD_AFTER_MISSES - 1 {
            gate.try_peek().unwrap().answered(false);
        }
        gate.try_peek().unwrap().answered(true);
        for _ in 0..10 * COLD_AFTER_MISSES {
            gate.try_peek()
                .expect("a proven member is always peeked")
                .answered(false);
        }
    }

    #[test]
    fn a_burst_sends_few_peeks_before_the_first_answer_and_all_after_a_hit() {
        let gate = Arc::new(PeekGate::default());
        let burst: Vec<Option<Peek>> = (0..100).map(|_| gate.try_peek()).collect();
        let sent = burst.iter().filter(|peek| peek.is_some()).count();
        assert_eq!(sent, UNPROVEN_IN_FLIGHT as usize);
        let mut burst = burst.into_iter().flatten();
        burst.next().unwrap().answered(true);
        drop(burst);
        let after: Vec<Peek> = (0..100).map_while(|_| gate.try_peek()).collect();
        assert_eq!(after.len(), 100, "proven: no limit");
    }

    #[test]
    fn answered_and_cancelled_peeks_give_their_slot_back() {
        let gate = Arc::new(PeekGate::default());
        for _ in 0..3 * UNPROVEN_IN_FLIGHT {
            let held: Vec<Peek> = (0..UNPROVEN_IN_FLIGHT)
                .map(|_| gate.try_peek().unwrap())
                .collect();
            assert!(gate.try_peek().is_none(), "all slots taken");
            drop(held); // cancelled: no answer counted, slots free
        }
        assert_eq!(gate.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(gate.misses.load(Ordering::Relaxed), 0);
    }
}
