//! The nonces a replica has accepted within the replay window, each remembered so that it is
//! accepted once, in a bounded amount of memory.
//!
//! A nonce is kept as a 16-byte keyed hash, in the bucket of the second its (signed) timestamp
//! names: a replay carries the same timestamp, so it is looked for in one bucket only. A bucket
//! whose second has left the window is dropped whole; no request ever scans the store. The store
//! is split into [`SHARDS`] shards by hash, each with its own lock and its share of the bound.
//!
//! **Decided under the shard's lock.** Whether a timestamp is still within the window and whether
//! its nonce was seen are decided together, under the lock of the nonce's shard, against what
//! that shard has dropped: each shard keeps the latest second it may have forgotten nonces of
//! (`expired`), raised by every sweep and every bucket reused. The caller's clock is read before
//! the lock, and another request whose clock reads later can sweep in between; a replay whose
//! bucket that sweep emptied is then refused by `expired` rather than accepted once as it leaves
//! the window (issue 26), and a request whose clock was read long before (a stalled thread)
//! cannot drop a later second's live bucket that shares its slot.
//!
//! **The bound, and why it refuses no honest peer.** Only requests whose signature verified reach
//! the store (a forger cannot add to it, and a replay is refused before it is added), so it holds
//! at most the honest traffic of one window: `rate * (window + 1 s)` nonces. When a shard is full
//! it drops its oldest second and from then on refuses timestamps up to that second: the accepted
//! window shrinks from `window` to about `bound / rate` seconds, oldest end first, and a request
//! whose nonce may have been forgotten is never accepted. An honest peer signs with its current
//! clock, in whole seconds, so it is refused only once `bound / rate` falls below its clock skew
//! plus the request's latency plus the two seconds whole-second timestamps can add (a request
//! signed late in one second arrives in the next, when that second may be the oldest kept):
//! with the default bound of 2^20 and 1 s of skew, above 350k signed requests per second to one
//! replica, 3.6 times what a bare HTTP server serves on the 2-core machine of BENCHMARKS.md
//! (97k req/s). `tests/tests/attacks.rs` floods a store of 65,536 with twice that many signed
//! requests (6.8-10.5k/s there, 6-10 s of them remembered): none refused.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use crate::lock;
use crate::prehashed::Prehashed;

/// Independently locked parts of the store.
pub(crate) const SHARDS: usize = 16;

/// Why a nonce was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unaccepted {
    /// Seen before within the window.
    Replayed,
    /// Out of the window by this shard's clock: its second's nonces may have been dropped, by a
    /// sweep on a clock read later than the caller's.
    Expired,
    /// The store is full and its window has shrunk past this timestamp.
    WindowShrunk,
}

pub(crate) struct NonceStore {
    shards: Box<[Mutex<Shard>]>,
    /// Keys the hashes, so no one can choose nonces that collide.
    key: RandomState,
    per_shard: usize,
    /// Window in seconds: a nonce of timestamp `t` is kept while `now <= t + window`.
    window: i64,
    remembered: AtomicUsize,
    /// The last second expired buckets were dropped at.
    swept: AtomicI64,
}

struct Shard {
    /// Indexed by timestamp modulo their number, `2 * window + 2`: more than the `2 * window + 1`
    /// seconds a timestamp within the window can name, so two live seconds never share one.
    buckets: Box<[Bucket]>,
    len: usize,
    /// Timestamps up to this one are refused: their nonces may have been dropped to make room.
    floor: i64,
    /// Timestamps up to this one are out of the window: their nonces may have been dropped when
    /// their second expired (by the latest sweep's clock, which may be ahead of a caller's) or its
    /// bucket was reused for a later second.
    expired: i64,
}

struct Bucket {
    /// `i64::MIN` while empty.
    second: i64,
    nonces: HashSet<u128, BuildHasherDefault<Prehashed>>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            second: i64::MIN,
            nonces: HashSet::default(),
        }
    }
}

impl NonceStore {
    /// A store for timestamps within `window` seconds of now, remembering at most `bound`
    /// nonces (at least one per shard).
    pub(crate) fn new(window: u64, bound: usize) -> Self {
        let window = i64::try_from(window).unwrap_or(i64::MAX / 4).min(1 << 20);
        let buckets = usize::try_from(2 * window + 2).unwrap_or(usize::MAX);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    buckets: (0..buckets).map(|_| Bucket::default()).collect(),
                    len: 0,
                    floor: i64::MIN,
                    expired: i64::MIN,
                })
            })
            .collect();
        NonceStore {
            shards,
            key: RandomState::new(),
            per_shard: bound.div_ceil(SHARDS).max(1),
            window,
            remembered: AtomicUsize::new(0),
            swept: AtomicI64::new(i64::MIN),
        }
    }

    /// Nonces remembered now.
    pub(crate) fn len(&self) -> usize {
        self.remembered.load(Ordering::Relaxed)
    }

    /// The most nonces the store remembers.
    pub(crate) fn bound(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Records `nonce` of a verified request signed at `timestamp`, at time `now` (both unix
    /// seconds; the caller has checked that `timestamp` is within the window of `now`, read
    /// before this call: other requests may have swept the store on later clocks since, which
    /// the shard's lock decides against).
    pub(crate) fn first_use(
        &self,
        nonce: &str,
        timestamp: i64,
        now: i64,
    ) -> Result<(), Unaccepted> {
        let swept = self.swept.load(Ordering::Relaxed);
        if now > swept
            && self
                .swept
                .compare_exchange(swept, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // Once a second, for all shards: expired seconds leave even an idle shard, so the
            // count (and the gauge) is of nonces that can still be replayed.
            let dropped: usize = self
                .shards
                .iter()
                .map(|shard| lock(shard).expire(now, self.window))
                .sum();
            self.settle(dropped, 0);
        }
        let hash = self.hash(nonce);
        let shard = &self.shards[(hash as usize) % SHARDS];
        let mut shard = lock(shard);
        let dropped = 0;
        let slot = timestamp.rem_euclid(shard.buckets.len() as i64) as usize;
        let occupant = shard.buckets[slot].second;
        let result = if timestamp <= shard.expired || occupant > timestamp {
            // Expired by a later clock than `now`, or the slot already serves a later second: it
            // is `2 * window + 2` seconds later, so `timestamp` is out of the window of the
            // clock that accepted it.
            Err(Unaccepted::Expired)
        } else if timestamp <= shard.floor {
            Err(Unaccepted::WindowShrunk)
        } else if occupant == timestamp && shard.buckets[slot].nonces.contains(&hash) {
            Err(Unaccepted::Replayed)
        } else {
            Ok(())
        };
        let mut added = 0;
        let mut evicted = 0;
        if result.is_ok() {
            while shard.len >= self.per_shard {
                match shard.drop_oldest() {
                    0 => break,
                    dropped => evicted += dropped,
                }
            }
            if timestamp <= shard.floor {
                // Only this request's own second (or later ones) was left to drop.
                self.settle(dropped + evicted, 0);
                return Err(Unaccepted::WindowShrunk);
            }
            let bucket = &mut shard.buckets[slot];
            if bucket.second != timestamp {
                // Its (earlier) second has left the window (no two live seconds share a slot);
                // its nonces are forgotten, so its timestamps are refused from now on.
                let stale = bucket.nonces.len();
                let second = bucket.second;
                *bucket = Bucket {
                    second: timestamp,
                    nonces: HashSet::default(),
                };
                shard.len -= stale;
                shard.expired = shard.expired.max(second);
                evicted += stale;
            }
            shard.buckets[slot].nonces.insert(hash);
            shard.len += 1;
            added = 1;
        }
        self.settle(dropped + evicted, added);
        result
    }

    fn settle(&self, removed: usize, added: usize) {
        if added > 0 {
            self.remembered.fetch_add(added, Ordering::Relaxed);
        }
        if removed > 0 {
            self.remembered.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    fn hash(&self, nonce: &str) -> u128 {
        let mut low = self.key.build_hasher();
        low.write(nonce.as_bytes());
        let mut high = self.key.build_hasher();
        high.write_u8(1);
        high.write(nonce.as_bytes());
        (u128::from(high.finish()) << 64) | u128::from(low.finish())
    }
}

impl Shard {
    /// Drops the buckets whose second has left the window by `now`, and refuses their seconds
    /// from then on; how many nonces.
    fn expire(&mut self, now: i64, window: i64) -> usize {
        let last = now.saturating_sub(window).saturating_sub(1);
        self.expired = self.expired.max(last);
        let mut dropped = 0;
        for bucket in self.buckets.iter_mut() {
            if !bucket.nonces.is_empty() && bucket.second.saturating_add(window) < now {
                dropped += bucket.nonces.len();
                *bucket = Bucket::default();
            }
        }
        self.len -= dropped;
        dropped
    }

    /// Drops the oldest second's nonces and refuses timestamps up to it from now on.
    fn drop_oldest(&mut self) -> usize {
        let Some(oldest) = self
            .buckets
            .iter_mut()
            .filter(|bucket| !bucket.nonces.is_empty())
            .min_by_key(|bucket| bucket.second)
        else {
            return 0;
        };
        let dropped = oldest.nonces.len();
        self.floor = self.floor.max(oldest.second);
        *oldest = Bucket::default();
        self.len -= dropped;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    /// Memory per remembered nonce, in bytes: 16 of hash and 1 hashbrown control byte per slot,
    /// at a load between 7/16 (just grown) and 7/8 of the slots; 40 covers the worst case.
    const BYTES_PER_NONCE: usize = 40;

    /// The bytes the shards' sets have allocated for nonces.
    fn allocated_bytes(store: &NonceStore) -> usize {
        let slots = |capacity: usize| {
            if capacity == 0 {
                0
            } else {
                (capacity * 8 / 7).next_power_of_two()
            }
        };
        store
            .shards
            .iter()
            .map(|shard| {
                lock(shard)
                    .buckets
                    .iter()
                    .map(|bucket| slots(bucket.nonces.capacity()) * 17)
                    .sum::<usize>()
            })
            .sum()
    }

    fn nonce(i: usize) -> String {
        format!("{i:032x}")
    }

    #[test]
    fn a_nonce_is_accepted_once_within_the_window() {
        let store = NonceStore::new(30, 1 << 10);
        assert_eq!(store.first_use(&nonce(1), NOW, NOW), Ok(()));
        assert_eq!(store.first_use(&nonce(2), NOW, NOW), Ok(()));
        for now in [NOW, NOW + 1, NOW + 30] {
            assert_eq!(
                store.first_use(&nonce(1), NOW, now),
                Err(Unaccepted::Replayed),
                "at {now}"
            );
        }
        // The same nonce with another timestamp is another signed request; its MAC decides.
        assert_eq!(store.first_use(&nonce(1), NOW + 1, NOW + 30), Ok(()));
        assert_eq!(store.len(), 3);
    }

    /// The replay of a request, its clock read at every instant of the window, while another
    /// request whose clock reads one to three seconds later swept the store in between (it read
    /// the clock after the replay did, and got to the store first): refused every time.
    /// Before the replay check was decided under the shard's lock, the sweep emptied the
    /// timestamp's bucket as the replay's clock still put it in the window: accepted once.
    #[test]
    fn a_replay_is_refused_at_every_instant_of_the_window_whatever_sweeps_in_between() {
        let window = 30;
        for ahead in 1..=3 {
            for at in NOW - window..=NOW + window {
                let store = NonceStore::new(window as u64, 1 << 10);
                assert_eq!(store.first_use(&nonce(1), NOW, NOW), Ok(()));
                // Another request, clock read later, sweeps first.
                let later = at + ahead;
                assert_eq!(store.first_use(&nonce(2), later, later), Ok(()));
                assert!(
                    store.first_use(&nonce(1), NOW, at).is_err(),
                    "replay accepted at {} s into the window, swept {ahead} s later",
                    at - NOW
                );
            }
        }
    }

    /// The same replayed again and again as the clock runs through the window, the sweeps in
    /// order: never accepted.
    #[test]
    fn a_replay_is_refused_as_the_clock_runs_through_the_window() {
        let window = 30;
        let store = NonceStore::new(window as u64, 1 << 10);
        assert_eq!(store.first_use(&nonce(1), NOW, NOW - window), Ok(()));
        for (i, at) in (NOW - window..=NOW + window).enumerate() {
            store.first_use(&nonce(1000 + i), at, at).unwrap();
            assert!(store.first_use(&nonce(1), NOW, at).is_err(), "at {at}");
        }
    }

    /// A request whose clock was read long before it reached the store (a stalled thread) names
    /// a second that shares its bucket with a live, later second: it must not drop that second's
    /// nonces (their replays would then be accepted).
    #[test]
    fn a_stale_clock_never_drops_a_live_second() {
        let window = 30;
        let store = NonceStore::new(window as u64, 1 << 10);
        // 2 * window + 2 buckets: NOW and NOW + 62 share one.
        let later = NOW + 2 * window + 2;
        assert_eq!(store.first_use(&nonce(1), later, later), Ok(()));
        assert!(
            store.first_use(&nonce(2), NOW, NOW).is_err(),
            "from a stalled clock"
        );
        assert_eq!(
            store.first_use(&nonce(1), later, later),
            Err(Unaccepted::Replayed)
        );
    }

    #[test]
    fn nonces_expire_a_whole_second_at_a_time_on_the_clock_given() {
        let store = NonceStore::new(30, 1 << 10);
        for i in 0..10 {
            store.first_use(&nonce(i), NOW, NOW).unwrap();
        }
        for i in 10..15 {
            store.first_use(&nonce(i), NOW + 1, NOW + 1).unwrap();
        }
        // Still within the window of NOW's timestamp: nothing dropped.
        store.first_use(&nonce(100), NOW + 30, NOW + 30).unwrap();
        assert_eq!(store.len(), 16);
        // NOW's second has left the window; NOW + 1's has not.
        store.first_use(&nonce(101), NOW + 31, NOW + 31).unwrap();
        assert_eq!(store.len(), 7);
        store.first_use(&nonce(102), NOW + 62, NOW + 62).unwrap();
        assert_eq!(store.len(), 1, "NOW + 31's second has left the window too");
        // NOW + 62 and NOW + 124 share NOW's slot: it holds only the nonces of its latest second.
        let twin = NOW + 124;
        store.first_use(&nonce(0), twin, twin).unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(store.first_use(&nonce(102), twin, twin), Ok(()));
        assert_eq!(
            store.first_use(&nonce(0), twin, twin),
            Err(Unaccepted::Replayed)
        );
    }

    #[test]
    fn memory_is_bounded_and_a_full_store_shrinks_its_window_not_refusing_fresh_nonces() {
        let bound = 1600;
        let store = NonceStore::new(60, bound);
        assert_eq!(store.bound(), bound);
        // Four times the bound, spread over the window's seconds, at one request per nonce.
        let mut refused = 0;
        for i in 0..4 * bound {
            let now = NOW + (i / 200) as i64;
            if store.first_use(&nonce(i), now, now).is_err() {
                refused += 1;
            }
            assert!(store.len() <= bound, "{} nonces after {i}", store.len());
            if i % 100 == 0 {
                let bytes = allocated_bytes(&store);
                assert!(bytes <= BYTES_PER_NONCE * bound, "{bytes} bytes after {i}");
            }
        }
        assert_eq!(refused, 0, "fresh nonces are never refused");
        assert!(
            store.len() > bound / 2,
            "only the oldest seconds were dropped"
        );
        // The latest second's nonces are all still remembered: replays of them are refused.
        let now = NOW + (4 * bound / 200) as i64 - 1;
        for i in 4 * bound - 200..4 * bound {
            assert_eq!(
                store.first_use(&nonce(i), now, now),
                Err(Unaccepted::Replayed)
            );
        }
        // A request from a dropped second is refused, not accepted again.
        assert_eq!(
            store.first_use(&nonce(0), NOW, now),
            Err(Unaccepted::WindowShrunk)
        );
        assert_eq!(
            store.first_use(&nonce(1_000_000), NOW, now),
            Err(Unaccepted::WindowShrunk),
            "nor is a new nonce from that second: its twin may have been forgotten"
        );
    }

    #[test]
    fn a_store_too_small_for_one_second_refuses_rather_than_forgets() {
        let store = NonceStore::new(30, SHARDS);
        let mut accepted = Vec::new();
        for i in 0..200 {
            if store.first_use(&nonce(i), NOW, NOW).is_ok() {
                accepted.push(i);
            }
            assert!(store.len() <= SHARDS);
        }
        for i in accepted {
            assert!(
                store.first_use(&nonce(i), NOW, NOW).is_err(),
                "nonce {i} accepted twice"
            );
        }
    }
}
