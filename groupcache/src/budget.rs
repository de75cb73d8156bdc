//! One memory budget shared by two caches (the main and the hot cache), split by the value of
//! the next byte on each side.
//!
//! Why: a fixed split (64 MiB main, 8 MiB hot) left the hot cache full at 8 MiB on a long-tailed
//! workload (100,000 keys of 1 KiB, Zipf s = 0.9, every request to one of three replicas) while
//! golang/groupcache's hot cache, sharing one budget, kept growing: that replica sent about 30 %
//! more requests to peers per get (issue 16).
//!
//! How: each side has a target share of the total; a side may also use room the other leaves
//! free. Until the budget is first full the sides grow as their keys come, and the target starts
//! where they stand then. Each side remembers the keys it evicted recently (their hashes and
//! charges only: its ghosts). A key that comes back to a side while its ghost is remembered would have been a hit
//! had that side been larger, so that side's target grows by the key's charge, and more when the
//! other side's ghosts outnumber its own (as ARC adapts its split). When a side below its target
//! needs room the other holds, it says so (it is pressed), and the other shrinks to its target on
//! its next insert or [`trim`](crate::caches::Cache::trim).
//!
//! Accounting is exact: every increase of a side's bytes goes through [`Budget::fit`] under the
//! budget's lock, which grants only what the other side does not hold, so the two sides together
//! never hold more than the total. Each cache takes the budget's lock inside its own; the budget
//! never takes a cache's lock, so the two cannot deadlock.
//!
//! Ghosts cost memory that is not charged, so it is bounded: each side remembers evicted entries
//! whose charges add up to at most an eighth of the total, and at most as many as fit in a
//! thirty-second of the total at the worst cost of a ghost, 110 bytes (a queue slot of 16 bytes
//! at most half full, a map entry of 17 bytes at hashbrown's worst load under removes, 7/32).
//! Measured by the structures' capacity (`ghosts_memory_stays_within_its_share_and_is_released`),
//! ghosts of the smallest entries (a charge of 53 bytes) take 2.2 % of the total per side, of
//! 100-byte values with short keys 2.2 %, of 1 KiB values 0.4 %. Without the second bound they
//! took 12 %, 3.8 % and 0.4 % (measured the same way), and the structures never shrank: when the
//! ghosts of large entries replace those of many small ones, the queue and the map now give back
//! what they hold beyond twice what they use. A split that cannot move (a side capped at 0, or
//! caps that add up to the total) keeps no ghosts.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::prehashed::Prehashed;

/// One of the two caches sharing a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The main cache.
    Main,
    /// The hot cache.
    Hot,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Main => 0,
            Side::Hot => 1,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Main => Side::Hot,
            Side::Hot => Side::Main,
        }
    }
}

/// Ghosts describe evicted entries charged at most this fraction (1/n) of the total, per side.
const GHOST_FRACTION: u64 = 8;

/// The ghosts' memory (their structures' capacity) is at most this fraction (1/n) of the total,
/// per side.
const GHOST_MEMORY: u64 = 32;

/// The most memory one ghost takes: its queue slot (16 bytes) in a queue at worst half full,
/// and its map entry (16 bytes and a control byte) at hashbrown's worst load under removes,
/// 7/32 (a map full of removed places doubles when just over half its 7/8 is live): 110 bytes.
const GHOST_BYTES: u64 = 2 * 16 + (17 * 32u64).div_ceil(7);

/// Ghosts a side may remember whatever the total (18 KiB at most), so that a small budget's
/// split still moves.
const LEAST_GHOSTS: usize = 256;

/// A ghost's hit moves the target by its charge times the other side's ghosts per own ghost, at
/// most this many times its charge, so one hit cannot swing the split across the budget.
const MAX_STEP: u64 = 16;

/// A memory budget shared by two caches; see the module's documentation.
#[derive(Debug)]
pub(crate) struct Budget {
    total: u64,
    /// The most each side may hold, at most the total.
    caps: [u64; 2],
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Bytes each side holds, as its cache last reported them.
    used: [u64; 2],
    /// The main side's target; the hot side's is the rest of the total.
    main_target: u64,
    /// Whether the two sides have ever needed more than the total. Until then the target is
    /// only a placeholder: each side grows as its keys come.
    filled: bool,
    /// A side below its target that had to evict because the other holds room beyond its own
    /// target: the other shrinks to its target when it next fits or trims.
    pressed: [bool; 2],
    ghosts: [Ghosts; 2],
    /// Ghost hits per side so far.
    ghost_hits: [u64; 2],
}

/// The split as it is now, for [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    pub total: u64,
    pub main_target: u64,
    pub hot_target: u64,
    pub main_ghost_hits: u64,
    pub hot_ghost_hits: u64,
}

impl Budget {
    /// A budget of `total` bytes; each side at most its cap (None: the whole total). The main
    /// side's first target is its cap, or 8/9 of the total when only the hot side's cap (or
    /// neither) is given (today's default of 64 and 8 MiB); it stands until the budget is first
    /// full, when the target becomes the split of that moment (neither side below a ninth, and
    /// within the caps). Ghosts only where the split can move.
    pub(crate) fn new(total: u64, main_cap: Option<u64>, hot_cap: Option<u64>) -> Budget {
        let caps = [
            main_cap.unwrap_or(total).min(total),
            hot_cap.unwrap_or(total).min(total),
        ];
        let lowest_main = total - caps[1];
        let main_target = match main_cap {
            Some(cap) => cap.min(total),
            None => total - total / 9,
        }
        .clamp(lowest_main, caps[0].max(lowest_main));
        let movable = caps[0] > 0 && caps[1] > 0 && caps[0].saturating_add(caps[1]) > total;
        let ghost_limit = if movable { total / GHOST_FRACTION } else { 0 };
        let ghost_count = if movable {
            usize::try_from(total / GHOST_MEMORY / GHOST_BYTES)
                .unwrap_or(usize::MAX)
                .max(LEAST_GHOSTS)
        } else {
            0
        };
        Budget {
            total,
            caps,
            state: Mutex::new(State {
                used: [0, 0],
                main_target,
                filled: false,
                pressed: [false, false],
                ghosts: [
                    Ghosts::new(ghost_limit, ghost_count),
                    Ghosts::new(ghost_limit, ghost_count),
                ],
                ghost_hits: [0, 0],
            }),
        }
    }

    /// A budget for one cache alone (on the main side; the other side gets nothing).
    #[cfg(test)]
    pub(crate) fn alone(bytes: u64) -> Budget {
        Budget::new(bytes, Some(bytes), Some(0))
    }

    /// The most `side` may ever hold: an entry charged more is never stored there.
    pub(crate) fn cap(&self, side: Side) -> u64 {
        self.caps[side.index()]
    }

    /// The bytes `side` holds as the budget knows them.
    #[cfg(test)]
    pub(crate) fn used(&self, side: Side) -> u64 {
        self.lock().used[side.index()]
    }

    /// Bytes both sides hold, read at one instant.
    #[cfg(test)]
    pub(crate) fn held(&self) -> u64 {
        let state = self.lock();
        state.used[0] + state.used[1]
    }

    /// Ghosts remembered per side, and the charges they describe.
    #[cfg(test)]
    pub(crate) fn ghosts(&self, side: Side) -> (u64, u64) {
        let state = self.lock();
        let ghosts = &state.ghosts[side.index()];
        (ghosts.len(), ghosts.described)
    }

    /// Bytes of memory `side`'s ghosts hold, by their structures' capacity.
    #[cfg(test)]
    pub(crate) fn ghost_memory(&self, side: Side) -> u64 {
        self.lock().ghosts[side.index()].memory()
    }

    /// The bytes `side` may hold now that it holds `held` (an entry just added included): the
    /// arriving entry's ghost, if `arriving` (its key's hash and charge) is remembered, moves
    /// the split first. Then `evict` is called (the cache takes out its least recently used
    /// entry and returns its key's hash and charge, or None when it holds nothing more) until
    /// `held` fits; the evicted entries become ghosts. Returns the bytes held afterwards, which
    /// the budget records as the side's.
    pub(crate) fn fit(
        &self,
        side: Side,
        arriving: Option<(u64, u64)>,
        mut held: u64,
        mut evict: impl FnMut() -> Option<(u64, u64)>,
    ) -> u64 {
        let mut state = self.lock();
        let (me, other) = (side.index(), side.other().index());
        if let Some((hash, charge)) = arriving
            && state.ghosts[me].hit(hash)
        {
            state.ghost_hits[me] += 1;
            let ratio =
                (state.ghosts[other].len() / state.ghosts[me].len().max(1)).clamp(1, MAX_STEP);
            let step = charge.saturating_mul(ratio);
            self.move_target(&mut state, side, step);
        }
        if !state.filled && held.saturating_add(state.used[other]) > self.total {
            // The first time the budget is full, the split starts where demand put it. From the
            // first target, a side below it took back at once all the other had grown into: in
            // issue 16's scan trace a scan of one-off keys into main pushed the hot cache from
            // 29 MiB down to its 8 MiB target, and the hit ratio after the scan fell 9 points.
            //
            // Neither side starts below a ninth (the hot cache's first share): a side that
            // filled the budget alone leaves the other room to hold, and ghosts to learn from,
            // keys that come back less often than its ghosts alone would remember.
            state.filled = true;
            let main_now = match side {
                Side::Main => self.total - state.used[other].min(self.total),
                Side::Hot => state.used[other],
            };
            let least = self.total / 9;
            self.set_main_target(&mut state, main_now.clamp(least, self.total - least));
        }
        let target = self.target(&state, side);
        let room = self.total - state.used[other].min(self.total);
        let mut allowed = self.caps[me].min(room);
        if state.pressed[other] {
            // The other side waits for the room this one holds beyond its target.
            allowed = allowed.min(target);
        }
        if held > allowed && allowed < self.caps[me].min(target) {
            // Below its target because the other side holds more than its own.
            state.pressed[me] = true;
        }
        while held > allowed {
            let Some((hash, charge)) = evict() else { break };
            held -= charge.min(held);
            state.ghosts[me].remember(hash, charge);
        }
        if held <= target {
            state.pressed[other] = false;
        }
        state.used[me] = held;
        held
    }

    /// Whether `side` holds room the other side is waiting for: then its cache should
    /// [`trim`](crate::caches::Cache::trim).
    pub(crate) fn wanted_back(&self, side: Side) -> bool {
        let state = self.lock();
        state.pressed[side.other().index()] && state.used[side.index()] > self.target(&state, side)
    }

    /// Records that `side` now holds `held` bytes after something left it (a remove, an
    /// expired entry): never more than it held, so it needs no room.
    pub(crate) fn released(&self, side: Side, held: u64) {
        let mut state = self.lock();
        let used = &mut state.used[side.index()];
        debug_assert!(held <= *used, "a release cannot grow a side");
        *used = held.min(*used);
    }

    /// The split now.
    pub(crate) fn split(&self) -> Split {
        let state = self.lock();
        Split {
            total: self.total,
            main_target: state.main_target,
            hot_target: self.total - state.main_target,
            main_ghost_hits: state.ghost_hits[0],
            hot_ghost_hits: state.ghost_hits[1],
        }
    }

    fn target(&self, state: &State, side: Side) -> u64 {
        match side {
            Side::Main => state.main_target,
            Side::Hot => self.total - state.main_target,
        }
    }

    /// Moves `step` bytes of target to `side`, within the caps.
    fn move_target(&self, state: &mut State, side: Side, step: u64) {
        let main_target = match side {
            Side::Main => state.main_target.saturating_add(step),
            Side::Hot => state.main_target.saturating_sub(step),
        };
        self.set_main_target(state, main_target);
    }

    /// Sets the main side's target, within the caps.
    fn set_main_target(&self, state: &mut State, main_target: u64) {
        let lowest_main = self.total - self.caps[1];
        let highest_main = self.caps[0].max(lowest_main);
        state.main_target = main_target.clamp(lowest_main, highest_main);
    }

    /// Nothing under the lock can panic halfway through an update.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Recently evicted entries of one side: key hashes and charges, oldest first, describing at
/// most `limit` charged bytes, and at most `most` of them.
#[derive(Debug)]
struct Ghosts {
    /// (hash, sequence number, charge), oldest first; an entry whose sequence number is no
    /// longer the one in `live` was hit or evicted again since.
    order: VecDeque<(u64, u32, u32)>,
    live: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    described: u64,
    limit: u64,
    most: usize,
    next: u32,
}

/// Below this many slots the ghosts' structures are not shrunk.
const GHOSTS_KEPT: usize = 64;

impl Ghosts {
    fn new(limit: u64, most: usize) -> Ghosts {
        Ghosts {
            order: VecDeque::new(),
            live: HashMap::default(),
            described: 0,
            limit,
            most,
            next: 0,
        }
    }

    /// Gives back what the queue and the map hold beyond twice what they use, once they use
    /// less than a quarter: after the ghosts of many small entries gave way to fewer of larger
    /// ones. Shrinking the map rehashes its entries; it takes three quarters of them leaving
    /// to come again, so the work is amortized over them.
    fn release_vacant(&mut self) {
        if self.order.capacity() > GHOSTS_KEPT && self.order.len() < self.order.capacity() / 4 {
            self.order.shrink_to(self.order.len() * 2);
        }
        if self.live.capacity() > GHOSTS_KEPT && self.live.len() < self.live.capacity() / 4 {
            self.live.shrink_to(self.live.len() * 2);
        }
    }

    fn remember(&mut self, hash: u64, charge: u64) {
        if self.limit == 0 {
            return;
        }
        let charge = u32::try_from(charge).unwrap_or(u32::MAX);
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        self.order.push_back((hash, seq, charge));
        self.live.insert(hash, seq);
        self.described += u64::from(charge);
        while self.described > self.limit || self.order.len() > self.most {
            let Some((hash, seq, charge)) = self.order.pop_front() else {
                break;
            };
            self.described -= u64::from(charge);
            if self.live.get(&hash) == Some(&seq) {
                self.live.remove(&hash);
            }
        }
        self.release_vacant();
    }

    /// Whether `hash` is remembered; it is forgotten (the key is back).
    fn hit(&mut self, hash: u64) -> bool {
        let hit = self.live.remove(&hash).is_some();
        self.release_vacant();
        hit
    }

    fn len(&self) -> u64 {
        self.live.len() as u64
    }

    /// Bytes of memory held, by capacity: the queue's slots, and the map's buckets (hashbrown
    /// keeps 8/7 buckets per entry it has room for, each with a control byte).
    #[cfg(test)]
    fn memory(&self) -> u64 {
        let queue = self.order.capacity() * std::mem::size_of::<(u64, u32, u32)>();
        let buckets = (self.live.capacity() * 8).div_ceil(7);
        let map = buckets * (std::mem::size_of::<(u64, u32)>() + 1);
        (queue + map) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_bound_the_targets_and_a_fixed_split_keeps_no_ghosts() {
        let fixed = Budget::new(72, Some(64), Some(8));
        assert_eq!(
            (fixed.split().main_target, fixed.split().hot_target),
            (64, 8)
        );
        let shared = Budget::new(72, None, None);
        assert_eq!(
            shared.split().main_target,
            64,
            "today's split to start with"
        );
        let mut evicted = (0..100u64).map(|h| (h, 1));
        fixed.fit(Side::Main, None, 100, || evicted.next());
        assert_eq!(
            fixed.ghosts(Side::Main),
            (0, 0),
            "the split cannot move: no ghosts"
        );
        assert_eq!(fixed.used(Side::Main), 64, "evicted down to the cap");
        // Ghost hits on the hot side move its target to the hot side's cap at most.
        let capped = Budget::new(100, None, Some(30));
        let mut evicted = (0..10u64).map(|h| (h, 1));
        capped.fit(Side::Hot, None, 40, || evicted.next());
        assert_eq!(capped.used(Side::Hot), 30);
        for hash in 0..10 {
            capped.fit(Side::Hot, Some((hash, 50)), 30, || None);
        }
        assert_eq!(capped.split().hot_target, 30);
        assert_eq!(capped.split().hot_ghost_hits, 10);
    }

    #[test]
    fn the_largest_budget_does_not_overflow() {
        let budget = Budget::new(u64::MAX, None, None);
        let mut evicted = std::iter::once((1, 1));
        assert_eq!(
            budget.fit(Side::Hot, Some((1, u64::MAX)), 10, || evicted.next()),
            10
        );
        assert_eq!(budget.held(), 10);
    }

    /// Ghosts of the smallest entries cost at most [`GHOST_MEMORY`] of the total each side, and
    /// once larger entries' ghosts take their place the memory of the many small ones is
    /// released (issue 26, finding 6: 16.5 % of the budget at small entries, never released).
    #[test]
    fn ghosts_memory_stays_within_its_share_and_is_released() {
        const TOTAL: u64 = 8 << 20;
        let budget = Budget::new(TOTAL, None, None);
        let mut next = 0u64;
        budget.fit(Side::Main, None, 1 << 40, || {
            next += 1;
            (next < 1_000_000).then_some((next, 53))
        });
        let memory = budget.ghost_memory(Side::Main);
        println!(
            "ghosts of 53-byte entries: {memory} bytes, {:.2} % of the total, {:.1} bytes each",
            memory as f64 * 100.0 / TOTAL as f64,
            memory as f64 / budget.ghosts(Side::Main).0 as f64
        );
        assert!(memory <= TOTAL / GHOST_MEMORY, "{memory} bytes");
        budget.fit(Side::Main, None, 1 << 40, || {
            next += 1;
            (next < 1_010_000).then_some((next, 4_200))
        });
        let (count, described) = budget.ghosts(Side::Main);
        assert!(described <= TOTAL / GHOST_FRACTION);
        let memory = budget.ghost_memory(Side::Main);
        assert!(
            memory <= 4 * GHOST_BYTES * count + 4096,
            "{memory} bytes for {count} ghosts"
        );
        // The figures the README gives, for 100-byte and 1 KiB values with short keys.
        for charge in [163, 1_087] {
            let budget = Budget::new(TOTAL, None, None);
            let mut next = 0u64;
            budget.fit(Side::Main, None, 1 << 40, || {
                next += 1;
                (next < 1_000_000).then_some((next, charge))
            });
            let memory = budget.ghost_memory(Side::Main);
            println!(
                "ghosts of {charge}-byte entries: {:.2} % of the total",
                memory as f64 * 100.0 / TOTAL as f64
            );
            assert!(memory <= TOTAL / GHOST_MEMORY);
        }
    }

    #[test]
    fn ghosts_describe_at_most_an_eighth_of_the_total() {
        let budget = Budget::new(8_000, None, None);
        let mut next = 0u64;
        budget.fit(Side::Main, None, 1 << 40, || {
            next += 1;
            (next < 10_000).then_some((next, 7))
        });
        let (count, described) = budget.ghosts(Side::Main);
        assert!(described <= 1_000, "{described}");
        assert_eq!(count, 1_000 / 7);
        // The most recent ones are remembered; the oldest are forgotten.
        let before = budget.split().main_target;
        budget.fit(Side::Main, Some((1, 7)), 0, || None);
        assert_eq!(budget.split().main_target, before, "forgotten long ago");
        budget.fit(Side::Main, Some((9_999, 7)), 0, || None);
        assert_eq!(budget.split().main_ghost_hits, 1);
        assert_eq!(
            budget.ghosts(Side::Main).0,
            count - 1,
            "a hit ghost is forgotten"
        );
    }
}
