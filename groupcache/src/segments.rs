//! Cached values packed side by side into large shared buffers (segments), and a cleaner that
//! empties the segments evictions have thinned out.
//!
//! Why: a cache that gives every value an allocation of its own interleaves long-lived values
//! with the server's short-lived buffers, and the allocator cannot give the holes between them
//! back. With glibc, 4 KiB values stored between hyper's freed 8 KiB read buffers left a replica
//! at 1.38x its budget (`BENCHMARKS.md`). Packed values sit next to each other, and a segment goes
//! back to the allocator as one block when its last value has left the cache and the last reader
//! has dropped its handle.
//!
//! The price is dead space: evicted values in a segment that still holds live ones. When the
//! segments hold more than 5/4 of their live bytes plus two segments, the cleaner takes the
//! closed segment with the fewest live bytes and moves its values to the open segment, a bounded
//! number of bytes per insert. Every move frees at least a quarter as many bytes as it copies.
//!
//! A retired segment that nothing holds any more becomes the next open segment as it is,
//! without going back to the allocator: freed, its block would be split up by small allocations
//! and the next segment would need new memory. Up to two retired buffers wait for that; one a
//! reader still holds when a third retires is left to the reader.
//!
//! Everything here runs under the owning cache's lock. Values are copied with `BytesMut::split`,
//! which hands out the front of the open segment as a refcounted `Bytes` without `unsafe`;
//! `BytesMut::try_reclaim` takes a whole buffer back once no `Bytes` of it is left.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// The largest segment: 64 of them hold a 64 MiB budget.
const MAX_SEGMENT: usize = 1 << 20;
/// The smallest segment, so that a small budget still packs 4 KiB values.
const MIN_SEGMENT: usize = 64 << 10;
/// Smaller values are not packed: the allocator's size classes keep them compact anyway (glibc:
/// resident memory 0.95-1.02x the charged bytes for values up to 64 bytes), and a segment's list
/// of keys then costs at most 1/16 of the segment.
const MIN_PACKED: usize = 512;

/// Where a cached value's bytes live: in a segment (its index), or in a buffer of its own.
pub type Home = Option<u32>;

/// One segment's bookkeeping.
#[derive(Debug, Default)]
struct Usage {
    /// Bytes of the cached values in it.
    live: usize,
    /// The keys of the values packed into it; some may have left or moved since.
    keys: Vec<Arc<str>>,
    /// The unused end of the segment once it is closed: a handle on its buffer, to take the
    /// whole buffer back when it is retired.
    tail: BytesMut,
}

/// The segments of one cache.
#[derive(Debug)]
pub struct Segments {
    /// Capacity of every segment.
    segment: usize,
    /// The unused tail of the open segment, which new values are copied into.
    open: BytesMut,
    /// The open segment's index, once one is open.
    open_index: Home,
    /// Bookkeeping per segment index; the indexes in `free` are not in use.
    usage: Vec<Usage>,
    free: Vec<u32>,
    /// Capacity of the segments in use, the open one included.
    held: u64,
    /// Bytes of the cached values in all segments.
    live: u64,
    /// The segment the cleaner is emptying.
    cleaning: Home,
    /// Handles on the buffers of the last retired segments, oldest first, to open the next
    /// segment in one that no value of the old one holds any more.
    retired: VecDeque<BytesMut>,
}

/// How many retired buffers wait to be reused.
const RETIRED: usize = 2;

impl Segments {
    /// Segments sized for a cache of `budget` bytes: 1/64 of it, between 64 KiB and 1 MiB.
    pub fn for_budget(budget: u64) -> Segments {
        let segment = usize::try_from(budget / 64)
            .unwrap_or(MAX_SEGMENT)
            .clamp(MIN_SEGMENT, MAX_SEGMENT);
        Segments {
            segment,
            open: BytesMut::new(),
            open_index: None,
            usage: Vec::new(),
            free: Vec::new(),
            held: 0,
            live: 0,
            cleaning: None,
            retired: VecDeque::new(),
        }
    }

    /// Whether a value of `len` bytes is packed. Values over 1/16 of a segment get a buffer of
    /// their own, so the unused tail of a segment, wasted when a value does not fit, stays
    /// under 1/16 of it.
    pub fn packs(segment: usize, len: usize) -> bool {
        (MIN_PACKED..=segment / 16).contains(&len)
    }

    /// Capacity of every segment.
    pub fn segment_bytes(&self) -> usize {
        self.segment
    }

    /// Copies the value of `key` (one that `packs`) into the open segment, opening a new one
    /// when it does not fit.
    pub fn pack(&mut self, key: &Arc<str>, value: &[u8]) -> (Bytes, Home) {
        debug_assert!(Self::packs(self.segment, value.len()));
        let index = match self.open_index {
            Some(index) if self.open.capacity() >= value.len() => index,
            _ => self.open_segment(),
        };
        self.open.extend_from_slice(value);
        let usage = &mut self.usage[index as usize];
        usage.live += value.len();
        usage.keys.push(Arc::clone(key));
        self.live += value.len() as u64;
        (self.open.split().freeze(), Some(index))
    }

    /// A value of `len` bytes stored at `home` has left the cache or moved.
    pub fn release(&mut self, home: Home, len: usize) {
        let Some(index) = home else { return };
        let usage = &mut self.usage[index as usize];
        usage.live -= len;
        self.live -= len as u64;
        if usage.live == 0 && home != self.open_index {
            self.retire(index);
        }
    }

    /// The next value the cleaner should move, as its key and the segment it should move out
    /// of; None while the dead space is within bounds. The caller moves the value if it is still
    /// in that segment (the key may have left or moved since it was packed).
    pub fn next_to_move(&mut self) -> Option<(Arc<str>, u32)> {
        if self.cleaning.is_none() {
            if self.held <= self.live + self.live / 4 + 2 * self.segment as u64 {
                return None;
            }
            // Above the bound the closed segments are less than 4/5 live on average, so the
            // emptiest is too.
            self.cleaning = (0..self.usage.len())
                .filter_map(|i| u32::try_from(i).ok())
                .filter(|&i| Some(i) != self.open_index && self.usage[i as usize].live > 0)
                .min_by_key(|&i| self.usage[i as usize].live);
        }
        let index = self.cleaning?;
        let key = self.usage[index as usize].keys.pop();
        if key.is_none() {
            // Unreachable while every live value's key is listed; stop rather than loop.
            self.cleaning = None;
        }
        Some((key?, index))
    }

    /// Capacity of the segments that hold live values, plus the open one.
    #[cfg(test)]
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// Bytes of the cached values in all segments.
    #[cfg(test)]
    pub fn live_bytes(&self) -> u64 {
        self.live
    }

    /// Closes the open segment (retiring it if nothing in it is live) and opens a new one.
    fn open_segment(&mut self) -> u32 {
        if let Some(index) = self.open_index.take() {
            self.usage[index as usize].tail = std::mem::take(&mut self.open);
            if self.usage[index as usize].live == 0 {
                self.retire(index);
            }
        }
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.usage.push(Usage::default());
                // A cache holds far fewer than 2^32 segments: each is 64 KiB or more.
                u32::try_from(self.usage.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let segment = self.segment;
        let reusable = self.retired.iter_mut().position(|b| b.try_reclaim(segment));
        self.open = reusable
            .and_then(|at| self.retired.remove(at))
            .unwrap_or_else(|| BytesMut::with_capacity(segment));
        self.open_index = Some(index);
        self.held += self.segment as u64;
        index
    }

    /// A closed segment holds nothing live any more: its index is free for a new one. Its
    /// memory goes back to the allocator when the last reader drops its last value.
    fn retire(&mut self, index: u32) {
        let usage = &mut self.usage[index as usize];
        usage.keys = Vec::new();
        if self.retired.len() == RETIRED {
            self.retired.pop_front();
        }
        self.retired.push_back(std::mem::take(&mut usage.tail));
        self.free.push(index);
        self.held -= self.segment as u64;
        if self.cleaning == Some(index) {
            self.cleaning = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: usize = MIN_SEGMENT / 16;

    fn key(k: &str) -> Arc<str> {
        Arc::from(k)
    }

    /// Packs the largest values until a new segment opens; returns the homes of those that
    /// went into the old one.
    fn close_open_segment(s: &mut Segments) -> Vec<Home> {
        let open = s.open_index;
        let mut homes = Vec::new();
        loop {
            let (_, home) = s.pack(&key("filler"), &[0; V]);
            if s.open_index != open {
                return homes;
            }
            homes.push(home);
        }
    }

    #[test]
    fn segments_scale_with_the_budget() {
        assert_eq!(Segments::for_budget(0).segment, MIN_SEGMENT);
        assert_eq!(Segments::for_budget(8 << 20).segment, 128 << 10);
        assert_eq!(Segments::for_budget(64 << 20).segment, MAX_SEGMENT);
        assert_eq!(Segments::for_budget(u64::MAX).segment, MAX_SEGMENT);
        let packs = |len| Segments::packs(MAX_SEGMENT, len);
        assert!(!packs(0));
        assert!(!packs(MIN_PACKED - 1));
        assert!(packs(MIN_PACKED));
        assert!(packs(4096));
        assert!(packs(64 << 10));
        assert!(!packs((64 << 10) + 1));
    }

    #[test]
    fn values_share_a_segment_until_it_is_full() {
        let mut s = Segments::for_budget(0);
        let a = s.pack(&key("a"), &[1; V]);
        let b = s.pack(&key("b"), &[2; V]);
        assert_eq!(a.1, b.1, "same segment");
        assert_eq!(a.0.as_ptr().wrapping_add(V), b.0.as_ptr(), "side by side");
        assert_eq!((&a.0[..], &b.0[..]), (&[1; V][..], &[2; V][..]));
        assert_eq!(s.held_bytes(), MIN_SEGMENT as u64);
        // 16 values fill the segment; the 17th opens a second one.
        for _ in 2..16 {
            assert_eq!(s.pack(&key("c"), &[3; V]).1, a.1);
        }
        let next = s.pack(&key("d"), &[4; V]);
        assert_ne!(next.1, a.1);
        assert_eq!(s.held_bytes(), 2 * MIN_SEGMENT as u64);
    }

    #[test]
    fn a_closed_segment_is_released_with_its_last_value() {
        let mut s = Segments::for_budget(0);
        let first: Vec<_> = (0..16).map(|_| s.pack(&key("k"), &[5; V])).collect();
        close_open_segment(&mut s);
        for (n, (_, home)) in first.iter().enumerate() {
            assert_eq!(s.held_bytes(), 2 * MIN_SEGMENT as u64, "after {n} released");
            s.release(*home, V);
        }
        assert_eq!(s.held_bytes(), MIN_SEGMENT as u64);
        // Its index is used again.
        for _ in 1..16 {
            s.pack(&key("k"), &[7; V]);
        }
        assert_eq!(s.pack(&key("k"), &[8; V]).1, first[0].1);
    }

    #[test]
    fn the_open_segment_stays_until_closed() {
        let mut s = Segments::for_budget(0);
        let (_, home) = s.pack(&key("k"), &[1; MIN_PACKED]);
        s.release(home, MIN_PACKED);
        assert_eq!(s.held_bytes(), MIN_SEGMENT as u64, "still open");
        // Values that come and go until it is full; the next one closes it empty, which
        // releases it, and reopens its index.
        for _ in 0..15 {
            let (_, h) = s.pack(&key("k"), &[2; V]);
            s.release(h, V);
        }
        let (_, next) = s.pack(&key("k"), &[3; V]);
        assert_eq!(next, home);
        assert_eq!(s.held_bytes(), MIN_SEGMENT as u64);
        assert_eq!(s.usage.len(), 1, "one segment ever made");
    }

    #[test]
    fn a_packed_value_outlives_its_segment_in_the_cache() {
        let mut s = Segments::for_budget(0);
        let kept = [b'r'; MIN_PACKED];
        let (value, home) = s.pack(&key("k"), &kept);
        for other in close_open_segment(&mut s) {
            s.release(other, V);
        }
        let held = s.held_bytes();
        s.release(home, value.len());
        assert_eq!(s.held_bytes(), held - MIN_SEGMENT as u64);
        assert_eq!(&value[..], &kept[..]);
    }

    #[test]
    fn a_retired_segment_is_reused_once_no_reader_holds_it() {
        let mut s = Segments::for_budget(0);
        let k = key("k");
        // Segment A: 16 values; the 17th opens B.
        let a: Vec<_> = (0..16).map(|_| s.pack(&k, &[1; V])).collect();
        let b: Vec<_> = (0..16).map(|_| s.pack(&k, &[2; V])).collect();
        let a_start = a[0].0.as_ptr();
        let b_start = b[0].0.as_ptr();
        assert_ne!(a_start, b_start);
        // A reader still holds a value of A when the next segment opens: new memory.
        let reader = a[0].0.clone();
        for (_, home) in &a {
            s.release(*home, V);
        }
        drop(a);
        let (c, _) = s.pack(&k, &[3; V]); // opens C
        assert_ne!(c.as_ptr(), a_start, "new memory");
        assert_eq!(&reader[..], &[1; V][..]);
        // B is retired too, and the values of both are gone by the time D opens: it opens in
        // the older retired buffer, A's, taken back whole.
        for (_, home) in &b {
            s.release(*home, V);
        }
        drop((b, reader));
        for _ in 1..16 {
            s.pack(&k, &[4; V]);
        }
        let (d, _) = s.pack(&k, &[5; V]); // opens D
        assert_eq!(d.as_ptr(), a_start);
        assert_eq!(&d[..], &[5; V][..]);
        assert_eq!(s.held_bytes(), 2 * MIN_SEGMENT as u64, "C and D");
        // Then B's.
        for _ in 1..16 {
            s.pack(&k, &[6; V]);
        }
        assert_eq!(s.pack(&k, &[7; V]).0.as_ptr(), b_start);
        assert!(s.retired.is_empty(), "both reused");
    }

    #[test]
    fn at_most_two_retired_buffers_wait() {
        let mut s = Segments::for_budget(0);
        let k = key("k");
        let mut readers = Vec::new();
        let mut previous: Vec<(Bytes, Home)> = Vec::new();
        // Each round fills a segment, then retires the one before while a reader holds a value.
        for _ in 0..5 {
            let values: Vec<_> = (0..16).map(|_| s.pack(&k, &[1; V])).collect();
            assert!(values.iter().all(|(_, home)| *home == values[0].1));
            for (value, home) in previous.drain(..) {
                readers.push(value);
                s.release(home, V);
            }
            assert!(s.retired.len() <= RETIRED);
            previous = values;
        }
        assert_eq!(s.retired.len(), RETIRED, "4 retired");
        assert!(readers.iter().all(|r| r[..] == [1; V][..]));
    }

    #[test]
    fn the_cleaner_starts_past_the_bound_and_empties_the_emptiest_segment() {
        let mut s = Segments::for_budget(0);
        // Four full segments of 16 values each, and an open one.
        let mut packed = Vec::new();
        for segment in 0..4 {
            for i in 0..16 {
                let k = key(&format!("s{segment}-{i}"));
                let (_, home) = s.pack(&k, &[0; V]);
                packed.push((k, home));
            }
        }
        close_open_segment(&mut s);
        assert_eq!(s.next_to_move(), None, "no dead space");
        // Evictions: 12 values of segment 1, 13 of segment 2, 12 of segment 3. Counted in
        // values (16 a segment): 80 held, 65 live, then 28 live.
        for (k, home) in &packed[16..28] {
            assert!(k.starts_with("s1-"));
            s.release(*home, V);
        }
        assert_eq!(s.next_to_move(), None, "80 <= 5/4 of 53 + 32");
        for (_, home) in packed[32..45].iter().chain(&packed[48..60]) {
            s.release(*home, V);
        }
        // 80 > 5/4 of 28 + 32: the emptiest closed segment (segment 2, 3 live) is emptied, its
        // keys last packed first.
        let segment_2 = packed[32].1;
        let expected: Vec<_> = packed[32..48]
            .iter()
            .rev()
            .map(|(k, _)| k.clone())
            .collect();
        let mut listed = Vec::new();
        while let Some((k, index)) = s.next_to_move() {
            assert_eq!(Some(index), segment_2);
            listed.push(k.clone());
            if let Some((_, home)) = packed[45..48].iter().find(|(p, _)| *p == k) {
                // The caller moves it: packs it anew, then releases the old place.
                s.pack(&k, &[0; V]);
                s.release(*home, V);
            }
        }
        assert_eq!(listed, expected[..listed.len()]);
        assert_eq!(listed.len(), 3, "stops once the segment is empty");
        assert!(s.usage[segment_2.map_or(0, |i| i as usize)].keys.is_empty());
        assert_eq!(s.next_to_move(), None, "back within the bound");
    }
}
