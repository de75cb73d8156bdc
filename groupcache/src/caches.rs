//! A byte-budgeted LRU cache with per-entry expiry, used for both the main and the hot cache.
//!
//! Layout: a slab of 40-byte [`Record`]s indexed by `u32` (expiry, kind and refresh time, LRU neighbours, where the
//! bytes live), a `hashbrown::HashTable<u32>` of record indexes keyed by the key's hash (xxh3
//! with a per-process random secret, `keyed`; a lookup compares the key bytes), and the key
//! packed in a segment next to its value (see `segments`), so a small entry has no allocation of
//! its own. `get` hands out the value as a slice of the segment's shared buffer: a reference
//! count, no copy. Values too large to pack keep a buffer of their own, listed with their keys
//! in a side list.
//!
//! Why: with an `lru::LruCache<Arc<str>, _>` node, its hash slot, the key's `Arc<str>` listed
//! again by its segment, `bytes`' shared header and four allocations, every entry cost 247 bytes
//! beyond its key and value: a replica with 100-byte values held 187,454 entries in a 64 MiB
//! budget, and grew 520 bytes of resident memory per entry beyond key and value (issue 16;
//! `BENCHMARKS.md`). An entry now costs 61 (see [`ENTRY_OVERHEAD`]).

use std::mem::size_of;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use hashbrown::HashTable;
use metrics::Gauge;

use crate::budget::{Budget, Side};
use crate::segments::{Place, Segments};

/// A cached value and when it stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The cached bytes: the value's, or for a [`Kind::Failed`] entry the loader's message.
    pub value: Bytes,
    /// Unix time in nanoseconds after which the entry is gone; 0 = never (the wire's convention).
    pub expire: i64,
    /// What the entry says about its key ([`Kind`]) and from when a get answers it and
    /// refreshes it in the background (refresh ahead; Unix nanoseconds, 0 = never), in one word
    /// as the record keeps them ([`Entry::kind`], [`Entry::refresh`]): a hit copies it, and the
    /// entry stays 48 bytes.
    meta: u64,
}

impl Entry {
    /// A value, expiring at `expire`, never refreshed ahead.
    pub(crate) fn value(value: Bytes, expire: i64) -> Entry {
        Entry {
            value,
            expire,
            meta: 0,
        }
    }

    /// An entry of `kind`, expiring at `expire`, refreshed ahead from `refresh` (0: never; a
    /// time past 2116 is taken as then).
    pub(crate) fn new(value: Bytes, expire: i64, refresh: i64, kind: Kind) -> Entry {
        let kind = match kind {
            Kind::Value => 0u64,
            Kind::NotFound => 1,
            Kind::Failed => 2,
        };
        Entry {
            value,
            expire,
            meta: (kind << 62) | (refresh.clamp(0, META_TIME) as u64),
        }
    }

    /// This entry's expiry, kind and refresh time, with `value`.
    pub(crate) fn with_value(&self, value: Bytes) -> Entry {
        Entry {
            value,
            expire: self.expire,
            meta: self.meta,
        }
    }

    /// What the entry says about its key.
    #[inline]
    pub(crate) fn kind(&self) -> Kind {
        [Kind::Value, Kind::NotFound, Kind::Failed, Kind::Failed][(self.meta >> 62) as usize]
    }

    /// From when a get refreshes it ahead of its expiry (Unix nanoseconds); 0 = never.
    #[inline]
    pub(crate) fn refresh(&self) -> i64 {
        (self.meta & META_TIME as u64) as i64
    }

    /// Whether a get at `now` refreshes it ahead of its expiry. A plain value (no refresh
    /// time, the common case) is told by one test: the hit path's cost (issue 27's target).
    #[inline]
    pub(crate) fn refresh_due(&self, now: i64) -> bool {
        if self.meta == 0 {
            return false;
        }
        let refresh = self.refresh();
        refresh != 0 && refresh <= now
    }

    /// Whether it is a value (not a negative answer or a cached failure).
    #[inline]
    pub(crate) fn is_value(&self) -> bool {
        self.meta >> 62 == 0
    }
}

/// What an entry says about its key: a value, that the source has no such key (a negative
/// answer, kept for a short while so a storm of misses costs the source one query per key), or
/// that its load failed (kept only if errors are cached, the message in the value's place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    #[default]
    Value,
    NotFound,
    Failed,
}

/// Records of a purged cache freed by the purge's caller; more, on a thread of their own.
const PURGE_FREED_INLINE: usize = 1 << 16;

/// A purged cache's structures, freed a piece at a time with a pause between: each segment, the
/// slab in sixteenths (shrunk in place: its tail unmapped, nothing copied), then the table and
/// the unpacked values.
fn free_in_pieces(old: (Vec<Record>, HashTable<u32>, Vec<Large>, Segments)) {
    const PAUSE: std::time::Duration = std::time::Duration::from_micros(500);
    let (mut records, table, large, segments) = old;
    for piece in segments.into_pieces() {
        drop(piece);
        std::thread::sleep(PAUSE);
    }
    let step = records.len() / 16 + 1;
    while !records.is_empty() {
        records.truncate(records.len().saturating_sub(step));
        records.shrink_to_fit();
        std::thread::sleep(PAUSE);
    }
    drop((table, large));
}

/// The largest refresh time a record keeps (2^62 - 1 nanoseconds: the year 2116).
const META_TIME: i64 = (1 << 62) - 1;

/// What `insert` did, so the caller can update metrics without the cache knowing about them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Inserted {
    /// Least-recently-used entries removed to make room.
    pub evicted: u64,
    /// The value as the cache now holds it (packed into a segment, or in its own exactly-sized
    /// buffer), or as it was given if it was not stored. Callers hand this handle on, so no
    /// second buffer is kept alive.
    pub value: Bytes,
}

/// One entry, or a vacant place in the slab. A packed entry's bytes are the key's length
/// (LEB128, one byte below 128), the key and the value, side by side in a segment.
#[derive(Debug)]
struct Record {
    /// Unix time in nanoseconds after which the entry is gone; 0 = never.
    expire: i64,
    /// The entry's [`Kind`] and refresh time, as [`Entry`] packs them.
    meta: u64,
    /// The more recently used neighbour in the LRU order ([`NIL`] at the front).
    prev: u32,
    /// The less recently used neighbour ([`NIL`] at the back); for a vacant record, the next
    /// vacant one.
    next: u32,
    /// The segment the entry is packed in, or [`LARGE`], or [`VACANT`].
    segment: u32,
    /// Packed: the entry's index in its segment's list of records; [`LARGE`]: its index in
    /// `Inner::large`.
    slot: u32,
    /// Packed: where its bytes start in the segment, and how many there are.
    offset: u32,
    len: u32,
}

impl Record {
    /// A vacant record, linked to nothing.
    fn vacant() -> Record {
        Record {
            expire: 0,
            meta: 0,
            prev: NIL,
            next: NIL,
            segment: VACANT,
            slot: 0,
            offset: 0,
            len: 0,
        }
    }
}

/// No record: the end of a list.
const NIL: u32 = u32::MAX;
/// `Record::segment` of an entry whose value has a buffer of its own.
const LARGE: u32 = u32::MAX;
/// `Record::segment` of a vacant record.
const VACANT: u32 = u32::MAX - 1;
/// Record indexes stay below both markers.
const MAX_RECORDS: usize = (u32::MAX - 2) as usize;
/// Below this many records (32 KiB) or hash-table places the slab and the table are left as
/// they are.
const KEPT_RECORDS: usize = 1024;

/// A record: expiry 8, kind and refresh time 8, LRU neighbours 2 x 4, segment, slot, offset and
/// length 4 x 4.
const RECORD: u64 = size_of::<Record>() as u64;
/// One hash-table bucket (a `u32` record index) plus its control byte in hashbrown. The table
/// doubles when 7/8 full, so just after growing it is 7/16 full: charge 16/7 buckets.
const TABLE: u64 = ((size_of::<u32>() as u64 + 1) * 16).div_ceil(7);
/// The entry's record index in its segment's list, a `Vec<u32>` that may have grown to twice
/// what it holds.
const LIST: u64 = 2 * size_of::<u32>() as u64;

/// Bytes charged per packed entry on top of its key, its value and its key's length prefix
/// (one byte for keys under 128 bytes; [`charge`]).
///
/// The same on every target: 60 bytes. The record, 40 (expiry, 8; kind and refresh time, 8;
/// LRU neighbours, segment, slot, offset and length, six `u32`); the hash table, 12 (a 5-byte
/// bucket at worst 7/16 load); the segment's list of records, 8 (a `u32` in a `Vec` at worst
/// half full). No allocation of its own: the key and value are packed in a segment, whose one
/// `Bytes` serves thousands of entries. With the one-byte prefix a 100-byte value with a short
/// key is charged 61 bytes beyond key and value, where it was charged 247 (an `lru` node 88, its
/// hash slot 39, the key's `Arc<str>` counts and its place in the segment's key list 32, `bytes`'
/// shared header 24, four allocator headers 64). A `Bytes` per record would have cost 32 bytes
/// more; the segment's offset and length cost 8. The kind and refresh time (negative answers,
/// refresh ahead, issue 27) cost 8: packed into one word, as a separate kind would have padded
/// the record to 48. Records of evicted entries are reused;
/// vacant records are not charged, and once half the slab (three quarters of the table) is
/// vacant, it is cut down (`release_vacant`), so what the charges leave out stays within a
/// factor of what they count. Segments add at most a quarter of the packed bytes plus two
/// segments, and the open segment 40 bytes per entry packed into it, at most a quarter of a
/// segment (see `segments`).
pub(crate) const ENTRY_OVERHEAD: u64 = RECORD + TABLE + LIST;

/// An unpacked value's place in `Inner::large` (record index, key, value), in a `Vec` at worst
/// half full.
const LARGE_KEY: u64 = 2 * size_of::<Large>() as u64;
/// `bytes`' private `Shared` header (buffer pointer, capacity, refcount), allocated the first
/// time a value with a buffer of its own is cloned.
const SHARED: u64 = size_of::<(*mut u8, usize, AtomicUsize)>() as u64;
/// About 16 bytes per allocation (glibc: an 8-byte header, then rounding up to 16).
const ALLOCATION: u64 = 16;

/// Bytes charged per entry whose value is too large to pack (over 1/16 of a segment, at least
/// 4 KiB): the record and its hash slot, its place in `Inner::large`, `bytes`' shared header,
/// and three allocations (the value's buffer, the shared header, the key). On 64-bit targets
/// 236 bytes, under 6 % of such a value.
const LARGE_OVERHEAD: u64 = RECORD + TABLE + LARGE_KEY + SHARED + 3 * ALLOCATION;

/// A thread-safe (`Send + Sync`) LRU cache bounded by the bytes it holds, not by its entry count.
/// The lock is held for the map operation, the copy of a packed value, the cleaner's moves (at
/// most a quarter of a segment) and, once per segment filled, the copy of the segment closing
/// (at most 1 MiB); removed values and let-go segment buffers are dropped after unlocking.
pub(crate) struct Cache {
    inner: Mutex<Inner>,
    /// The budget this cache shares with the other side, and its side of it.
    budget: Arc<Budget>,
    side: Side,
    /// The capacity of a segment, which decides which values are packed.
    segment_bytes: usize,
    /// How long after their expiry entries are kept for [`Cache::stale`], in nanoseconds.
    keep_expired: AtomicI64,
    /// Copies of `Inner::bytes` and the number of entries, stored while the lock is held.
    bytes: AtomicU64,
    items: AtomicU64,
    /// Gauges that get the same copies, also under the lock: the last value set is never stale.
    gauges: Option<(Gauge, Gauge)>,
}

struct Inner {
    /// Every record, by index; the vacant ones are linked from `vacant` through `next`.
    records: Vec<Record>,
    vacant: u32,
    /// The entries' record indexes by their key's hash.
    table: HashTable<u32>,
    /// The most and the least recently used entries.
    head: u32,
    tail: u32,
    /// The entries whose values are not packed.
    large: Vec<Large>,
    bytes: u64,
    segments: Segments,
    /// Writes per stripe of keys (by key hash): `remove` and `insert` count in their key's
    /// stripe, so a load that took a [`Token`] before them cannot store after them.
    generations: Box<[Writes]>,
    /// Bumped by [`Cache::supersede_all`]: every token taken before it is stale.
    epoch: u64,
    /// Bumped by [`Cache::purge`]: every token taken before it is stale, as after a write of
    /// its key.
    purges: u64,
    /// Walks over the keys in progress ([`Cache::begin_walk`]): while there are any, no record
    /// moves.
    walks: usize,
}

/// An entry whose value is not packed: its record's index, its key and its value.
type Large = (u32, Box<[u8]>, Bytes);

/// Stripes of write generations. More than [`RECENT`] writes to other keys of the same stripe
/// while a load runs keep that load's value out of the cache (it is still returned; up to
/// [`RECENT`] such writes are told apart by their keys' hashes): with 1,024 stripes, a load
/// taking 10 ms and 10,000 writes a second to other keys, about one load in 10^9.
const STRIPES: usize = 1024;

/// The writes of a stripe remembered by key hash. A `set` writes its key twice (the remove of
/// older copies, then the store): remembering only the last write made one `set` of any other
/// key of the stripe keep a concurrent load's value out, so the key was loaded again (about one
/// load in 1,000 in the soak test's mix of 220 sets a second and 5 ms loads).
const RECENT: usize = 4;

/// The writes of one stripe: how many, and the hashes of the last [`RECENT`] written keys
/// (write number `n` at `recent[n % RECENT]`).
#[derive(Debug, Clone, Copy, Default)]
struct Writes {
    count: u64,
    recent: [u64; RECENT],
}

/// What happened since a token was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    /// Nothing that matters to its key.
    Nothing,
    /// [`Cache::supersede_all`], and no write to the key.
    NewEpoch,
    /// A write to the key (or writes to its stripe that may have been).
    Written,
}

/// The cache's write generation for a key, taken before the work that produces its value.
/// [`Cache::insert_if`] stores only if no write to the key (and no
/// [`supersede_all`](Cache::supersede_all)) happened since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    hash: u64,
    generation: u64,
    epoch: u64,
    purges: u64,
}

#[cfg(test)]
impl Token {
    /// A token to tell stores apart in tests that never reach a cache.
    pub(crate) fn for_test(generation: u64) -> Token {
        Token {
            hash: 0,
            generation,
            epoch: 0,
            purges: 0,
        }
    }
}

/// An admission test (TinyLFU, decided by the engine's popularity sketch): given the key of the
/// entry that would be evicted first to make room, whether the entry being stored is worth it.
pub(crate) type Admit<'a> = &'a dyn Fn(&[u8]) -> bool;

/// The 64-bit hash of a key within this process (never Rust's `Hash`): the caches' table and
/// write stripes, the budget's ghosts, the popularity sketch and the recent writes all use this
/// one. Keyed with the process's random secret ([`keyed`](crate::keyed)), so that keys from the
/// network cannot be chosen to collide.
#[inline]
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    crate::keyed::key_hash(key)
}

fn stripe(hash: u64) -> usize {
    (hash % STRIPES as u64) as usize
}

/// The LEB128 encoding of a key's length, and how many of its bytes are used.
fn length_prefix(len: usize) -> ([u8; 10], usize) {
    let mut out = [0u8; 10];
    let mut n = 0;
    let mut rest = len as u64;
    loop {
        let byte = (rest & 0x7f) as u8;
        rest >>= 7;
        out[n] = byte | if rest > 0 { 0x80 } else { 0 };
        n += 1;
        if rest == 0 || n == out.len() {
            return (out, n);
        }
    }
}

/// A packed entry's key length and where its key starts, read from its prefix.
#[inline]
fn read_prefix(data: &[u8]) -> (usize, usize) {
    let mut len = 0usize;
    for (i, byte) in data.iter().take(10).enumerate() {
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (len, i + 1);
        }
    }
    (0, data.len())
}

/// Unpacked values and their keys removed under the lock, dropped by the caller after
/// unlocking; and how many entries were removed.
#[derive(Default)]
struct Removed {
    values: Vec<Bytes>,
    keys: Vec<Box<[u8]>>,
    packed: usize,
}

impl Removed {
    fn len(&self) -> usize {
        self.values.len() + self.packed
    }
}

impl Inner {
    fn since(&self, token: Token) -> Since {
        if token.purges != self.purges {
            return Since::Written;
        }
        let writes = &self.generations[stripe(token.hash)];
        let since = writes.count - token.generation;
        let told_apart = since <= RECENT as u64
            && (token.generation + 1..=writes.count)
                .all(|n| writes.recent[(n % RECENT as u64) as usize] != token.hash);
        if !told_apart {
            return Since::Written;
        }
        if token.epoch == self.epoch {
            Since::Nothing
        } else {
            Since::NewEpoch
        }
    }

    fn write(&mut self, hash: u64) {
        let writes = &mut self.generations[stripe(hash)];
        writes.count += 1;
        writes.recent[(writes.count % RECENT as u64) as usize] = hash;
    }

    /// The record of `key`, whose hash is `hash`.
    #[inline]
    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let (records, large, segments) = (&self.records, &self.large, &self.segments);
        self.table
            .find(hash, |&i| {
                records
                    .get(i as usize)
                    .is_some_and(|r| key_of(r, segments, large) == key)
            })
            .copied()
    }

    /// The key of a live record.
    fn key(&self, record: &Record) -> &[u8] {
        key_of(record, &self.segments, &self.large)
    }

    /// A live record's entry.
    #[inline(always)]
    fn entry(&self, record: &Record) -> Entry {
        Entry {
            value: self.value(record),
            expire: record.expire,
            meta: record.meta,
        }
    }

    /// The value of a live record: a slice of its segment's buffer, or its own buffer.
    #[inline(always)]
    fn value(&self, record: &Record) -> Bytes {
        if record.segment == LARGE {
            return self
                .large
                .get(record.slot as usize)
                .map_or_else(Bytes::new, |(_, _, value)| value.clone());
        }
        let all = record.len as usize;
        (self.segments).slice(record.segment, record.offset, all, |packed| {
            let (len, at) = read_prefix(packed);
            at + len
        })
    }

    /// A packed record's bytes.
    #[cfg(test)]
    fn packed(&self, record: &Record) -> &[u8] {
        self.segments
            .bytes(record.segment, record.offset, record.len as usize)
    }

    /// Takes `i` out of the LRU order.
    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let record = &self.records[i as usize];
            (record.prev, record.next)
        };
        match prev {
            NIL => self.head = next,
            prev => self.records[prev as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.records[next as usize].prev = prev,
        }
    }

    /// Puts `i` at the front of the LRU order, as the most recently used.
    fn push_front(&mut self, i: u32) {
        let head = self.head;
        let record = &mut self.records[i as usize];
        record.prev = NIL;
        record.next = head;
        match head {
            NIL => self.tail = i,
            head => self.records[head as usize].prev = i,
        }
        self.head = i;
    }

    /// A record for a new entry, vacant or new; None when there are as many as indexes allow.
    fn allocate(&mut self, expire: i64, meta: u64) -> Option<u32> {
        let record = Record {
            expire,
            meta,
            ..Record::vacant()
        };
        if self.vacant != NIL {
            let i = self.vacant;
            self.vacant = self.records[i as usize].next;
            self.records[i as usize] = record;
            return Some(i);
        }
        if self.records.len() >= MAX_RECORDS {
            return None;
        }
        self.records.push(record);
        u32::try_from(self.records.len() - 1).ok()
    }

    /// Gives back what the structures hold beyond their entries' needs: vacant records are
    /// not charged, and after a phase of many small entries they held memory beyond the budget
    /// (40-70 MB per cache, issue 26). Once half the slab is vacant it is cut to 5/4 of its
    /// entries (a vacant record costs 32 bytes, a fifth of a 100-byte entry's charge); the
    /// hash table and the list of unpacked values, once a quarter full, to twice their entries
    /// (a table's size is a power of two: at a quarter full, halving it is the next step).
    /// Each step is O(n) under the lock, as the table's own growth is, and comes only after a
    /// constant share of the places was vacated since the last, so its work is amortized over
    /// the entries that left, as growing is over those that came. The slab waits while a walk
    /// is in progress.
    fn release_vacant(&mut self) {
        let live = self.table.len();
        if self.walks == 0 && self.records.len() > KEPT_RECORDS && live < self.records.len() / 2 {
            self.compact((live + live / 4).max(KEPT_RECORDS));
        }
        if self.table.capacity() > KEPT_RECORDS && live < self.table.capacity() / 4 {
            let (records, large, segments) = (&self.records, &self.large, &self.segments);
            self.table.shrink_to(2 * live, |&j| {
                records
                    .get(j as usize)
                    .map_or(0, |r| key_hash(key_of(r, segments, large)))
            });
        }
        if self.large.capacity() > 16 && self.large.len() < self.large.capacity() / 4 {
            self.large.shrink_to(2 * self.large.len());
        }
    }

    /// Moves the entries of records `keep` and on into vacant records below it, and cuts the
    /// slab to `keep` records; `keep` is at least the entries, so there is room below.
    fn compact(&mut self, keep: usize) {
        let mut hole = 0;
        let mut moved_all = true;
        for from in keep..self.records.len() {
            if self.records[from].segment == VACANT {
                continue;
            }
            while self.records.get(hole).is_some_and(|r| r.segment != VACANT) {
                hole += 1;
            }
            if hole >= keep {
                debug_assert!(false, "no vacant record below {keep}");
                moved_all = false;
                break;
            }
            // Both below `MAX_RECORDS`.
            self.relocate(from as u32, hole as u32);
        }
        if moved_all {
            self.records.truncate(keep);
            self.records.shrink_to(keep);
        }
        // The vacant records taken and left are linked anew (vacant first, lowest first).
        self.vacant = NIL;
        for i in (0..self.records.len()).rev() {
            if self.records[i].segment == VACANT {
                self.records[i].next = self.vacant;
                self.vacant = i as u32;
            }
        }
    }

    /// Moves the entry of record `from` into the vacant record `to`: its place in the table,
    /// the LRU order and its segment's list (or the list of unpacked values) follow it.
    fn relocate(&mut self, from: u32, to: u32) {
        let record = std::mem::replace(&mut self.records[from as usize], Record::vacant());
        let hash = key_hash(key_of(&record, &self.segments, &self.large));
        if let Some(listed) = self.table.find_mut(hash, |&j| j == from) {
            *listed = to;
        }
        match record.prev {
            NIL => self.head = to,
            prev => self.records[prev as usize].next = to,
        }
        match record.next {
            NIL => self.tail = to,
            next => self.records[next as usize].prev = to,
        }
        if record.segment == LARGE {
            if let Some(listed) = self.large.get_mut(record.slot as usize) {
                listed.0 = to;
            }
        } else {
            let place = Place {
                segment: record.segment,
                slot: record.slot,
                offset: record.offset,
            };
            self.segments.relist(place, to);
        }
        self.records[to as usize] = record;
    }

    /// Takes the entry of record `i` (its key's hash `hash`) out of the table, the LRU order,
    /// its segment and the budget; its value and key go to `removed`; returns its charge.
    fn take(&mut self, i: u32, hash: u64, removed: &mut Removed) -> u64 {
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        self.unlink(i);
        let vacant = self.vacant;
        let record = &mut self.records[i as usize];
        let (segment, slot, offset, len) = (record.segment, record.slot, record.offset, record.len);
        record.segment = VACANT;
        record.next = vacant;
        self.vacant = i;
        let charged = if segment == LARGE {
            let slot = slot as usize;
            let (key, value) = if slot < self.large.len() {
                let (_, key, value) = self.large.swap_remove(slot);
                if let Some(&(moved, _, _)) = self.large.get(slot) {
                    self.records[moved as usize].slot = slot as u32;
                }
                (key, value)
            } else {
                (Box::default(), Bytes::new())
            };
            let charged = large_charge(key.len(), value.len());
            removed.keys.push(key);
            removed.values.push(value);
            charged
        } else {
            let place = Place {
                segment,
                slot,
                offset,
            };
            self.unplace(i, place, len as usize);
            removed.packed += 1;
            u64::from(len) + ENTRY_OVERHEAD
        };
        self.bytes -= charged;
        charged
    }

    /// Takes record `i`'s bytes off their place in a segment; the record that takes over its
    /// slot in the segment's list gets the slot recorded.
    fn unplace(&mut self, i: u32, place: Place, len: usize) {
        if let Some((moved, slot)) = self.segments.release(i, place, len)
            && let Some(record) = self.records.get_mut(moved as usize)
        {
            record.slot = slot;
        }
    }

    /// Takes out the least recently used entry into `removed`; its key's hash and its charge.
    /// Clears `kept` if it was record `newest`.
    /// Takes out the entry just stored at `newest` (with key hash `hash`): admission refused
    /// it the room it needed.
    fn evict_newest(
        &mut self,
        removed: &mut Removed,
        newest: u32,
        hash: u64,
        kept: &mut bool,
    ) -> Option<(u64, u64)> {
        *kept = false;
        let charged = self.take(newest, hash, removed);
        Some((hash, charged))
    }

    fn evict_lru(
        &mut self,
        removed: &mut Removed,
        newest: u32,
        kept: &mut bool,
    ) -> Option<(u64, u64)> {
        let i = self.tail;
        let record = self.records.get(i as usize)?;
        let hash = key_hash(self.key(record));
        if i == newest {
            *kept = false;
        }
        let charged = self.take(i, hash, removed);
        Some((hash, charged))
    }
}

/// The keys copied into `buffer`, each ending at its place in `ends`, as strings.
fn split_keys(buffer: &[u8], ends: Vec<usize>) -> Vec<Box<str>> {
    let mut start = 0;
    ends.into_iter()
        .filter_map(|end| {
            let key = buffer.get(start..end);
            start = end;
            // Keys were stored from `&str`s.
            key.and_then(|key| std::str::from_utf8(key).ok())
                .map(Box::from)
        })
        .collect()
}

/// The key of a live record (a function of the fields it reads, so that the table's closures
/// can borrow them while the table is borrowed mutably).
#[inline]
fn key_of<'a>(record: &Record, segments: &'a Segments, large: &'a [Large]) -> &'a [u8] {
    if record.segment == LARGE {
        return large
            .get(record.slot as usize)
            .map_or(&[], |(_, key, _)| key);
    }
    let packed = segments.bytes(record.segment, record.offset, record.len as usize);
    let (len, at) = read_prefix(packed);
    packed.get(at..at + len).unwrap_or_default()
}

/// What a packed entry is charged: its key, its value, its key's length prefix and
/// [`ENTRY_OVERHEAD`].
fn charge(key: &str, value_len: usize) -> u64 {
    (length_prefix(key.len()).1 + key.len() + value_len) as u64 + ENTRY_OVERHEAD
}

/// What an entry whose value is not packed is charged.
fn large_charge(key_len: usize, value_len: usize) -> u64 {
    (key_len + value_len) as u64 + LARGE_OVERHEAD
}

/// `value` in a buffer of exactly its length. The only handle to such a buffer is kept without
/// copying (`Vec::from` takes a unique buffer back as it is); a shared buffer, a slice of a larger
/// one, or a buffer with spare capacity is copied into a new, exact one. Keeping the loader's
/// buffer saves an allocation and a copy of every loaded value.
fn exactly_sized(value: Bytes) -> Bytes {
    let buffer = Vec::from(value);
    if buffer.capacity() == buffer.len() {
        Bytes::from(buffer)
    } else {
        Bytes::copy_from_slice(&buffer)
    }
}

impl Cache {
    /// Creates an empty cache that holds at most `budget_bytes` charged bytes.
    #[cfg(test)]
    pub(crate) fn new(budget_bytes: u64) -> Cache {
        Cache::sharing(Arc::new(Budget::alone(budget_bytes)), Side::Main)
    }

    /// Creates an empty cache on `side` of `budget`: it holds at most that side's cap, and
    /// never more than the other side leaves of the total.
    pub(crate) fn sharing(budget: Arc<Budget>, side: Side) -> Cache {
        let segments = Segments::for_budget(budget.cap(side));
        Cache {
            segment_bytes: segments.segment_bytes(),
            inner: Mutex::new(Inner {
                records: Vec::new(),
                vacant: NIL,
                table: HashTable::new(),
                head: NIL,
                tail: NIL,
                large: Vec::new(),
                bytes: 0,
                segments,
                generations: vec![Writes::default(); STRIPES].into_boxed_slice(),
                epoch: 0,
                purges: 0,
                walks: 0,
            }),
            budget,
            side,
            keep_expired: AtomicI64::new(0),
            bytes: AtomicU64::new(0),
            items: AtomicU64::new(0),
            gauges: None,
        }
    }

    /// Also publishes the charged bytes and the number of entries to these gauges, on every
    /// change (expired entries dropped by a `get` included).
    pub(crate) fn publish_to(mut self, bytes: Gauge, items: Gauge) -> Cache {
        bytes.set(0.0);
        items.set(0.0);
        self.gauges = Some((bytes, items));
        self
    }

    /// Whether an entry with this key and a value of `value_len` bytes is packed into a
    /// segment.
    fn packs(&self, key_len: usize, value_len: usize) -> bool {
        Segments::packs(self.segment_bytes, value_len)
            && Segments::packs(self.segment_bytes, key_len)
    }

    /// What an entry with this key and a value of `value_len` bytes is charged.
    fn charge(&self, key: &str, value_len: usize) -> u64 {
        if self.packs(key.len(), value_len) {
            charge(key, value_len)
        } else {
            large_charge(key.len(), value_len)
        }
    }

    /// Returns the entry (its value a slice of the cache's buffer: a reference count, no copy)
    /// and marks it recently used. An entry whose expire is non-zero and <= now_nanos is not
    /// returned; it is removed, unless it expired less than the time
    /// [`keep_expired`](Cache::keep_expired) sets ago (then [`stale`](Cache::stale) finds it).
    pub(crate) fn get(&self, key: &str, now_nanos: i64) -> Option<Entry> {
        let hash = key_hash(key.as_bytes());
        let mut inner = self.lock();
        let i = inner.find(hash, key.as_bytes())?;
        let record = &inner.records[i as usize];
        if record.expire == 0 || record.expire > now_nanos {
            let entry = inner.entry(record);
            if inner.head != i {
                inner.unlink(i);
                inner.push_front(i);
            }
            return Some(entry);
        }
        let kept_for = self.keep_expired.load(Ordering::Relaxed);
        if kept_for > 0 && record.expire.saturating_add(kept_for) > now_nanos {
            return None;
        }
        let mut expired = Removed::default();
        inner.take(i, hash, &mut expired);
        let freed = self.settle(&mut inner);
        drop(inner);
        drop((expired, freed));
        None
    }

    /// The entry of `key` even if it expired, as long as it expired less than the time
    /// [`keep_expired`](Cache::keep_expired) sets before `now_nanos` (stale on error); not
    /// marked as used.
    pub(crate) fn stale(&self, key: &str, now_nanos: i64) -> Option<Entry> {
        let hash = key_hash(key.as_bytes());
        let inner = self.lock();
        let i = inner.find(hash, key.as_bytes())?;
        let record = &inner.records[i as usize];
        let kept_for = self.keep_expired.load(Ordering::Relaxed);
        let fresh = record.expire == 0 || record.expire > now_nanos;
        (fresh || record.expire.saturating_add(kept_for) > now_nanos).then(|| inner.entry(record))
    }

    /// Keeps entries for `nanos` after they expire, for [`stale`](Cache::stale): a `get` does
    /// not return them, and does not remove them before then. 0 (the default) removes an
    /// expired entry at the first `get` that finds it.
    pub(crate) fn keep_expired(&self, nanos: i64) {
        self.keep_expired.store(nanos.max(0), Ordering::Relaxed);
    }

    /// Inserts or replaces; then evicts least-recently-used entries until the charged bytes fit
    /// the budget. An entry larger than the whole budget is not stored and nothing is evicted for
    /// it, but an older value under the same key is removed so that it is not served stale.
    /// A small value is copied with its key into the open segment (see `segments`); a larger
    /// one is kept in an exactly-sized allocation, so a small slice cannot pin a large network
    /// buffer: a value that is the only handle to exactly its own buffer is kept as it is,
    /// anything else is copied.
    ///
    /// An insert is a write: loads whose tokens were taken before it cannot store over it. The
    /// engine stores through [`insert_if`](Cache::insert_if) and [`write_if`](Cache::write_if).
    #[cfg(test)]
    pub(crate) fn insert(&self, key: &str, entry: Entry) -> Inserted {
        self.insert_checked(key, entry, None, None, true, None)
            .unwrap_or_else(|value| Inserted { evicted: 0, value })
    }

    /// The key's write generation now, for a later [`insert_if`](Cache::insert_if).
    pub(crate) fn token(&self, key: &str) -> Token {
        let hash = key_hash(key.as_bytes());
        let inner = self.lock();
        Token {
            hash,
            generation: inner.generations[stripe(hash)].count,
            epoch: inner.epoch,
            purges: inner.purges,
        }
    }

    /// Inserts as [`insert`](Cache::insert) does, unless the key was written (inserted or
    /// removed) or [`supersede_all`](Cache::supersede_all) ran since `token` was taken: checked
    /// and stored under one lock, so no write can fall between the check and the store. Returns
    /// the value as given when it was not stored.
    ///
    /// After a [`supersede_all`](Cache::supersede_all) alone (no write to the key), it stores
    /// with expiry `after_new_epoch` if given: the value is current, only no longer to be kept
    /// without a bound.
    pub(crate) fn insert_if(
        &self,
        key: &str,
        entry: Entry,
        token: Token,
        after_new_epoch: Option<i64>,
        admit: Option<Admit<'_>>,
    ) -> Result<Inserted, Bytes> {
        self.insert_checked(key, entry, Some(token), after_new_epoch, false, admit)
    }

    /// [`insert_if`](Cache::insert_if) for a write (a `set`): when it stores, it is a write, as
    /// [`insert`](Cache::insert) is, so loads that took their tokens before it cannot store over
    /// it.
    pub(crate) fn write_if(
        &self,
        key: &str,
        entry: Entry,
        token: Token,
    ) -> Result<Inserted, Bytes> {
        self.insert_checked(key, entry, Some(token), None, true, None)
    }

    /// Empties the cache at once (a purge of its group): every entry goes, and every token
    /// taken before is stale as after a write of its key, so no load or fetch that started
    /// before stores after. O(1) under the lock, whatever the entries: the structures are
    /// swapped for empty ones, and the old ones are dropped after unlocking (a slab, a table
    /// and the segments: a few frees; one per value too large to pack). Walks in progress see
    /// an empty cache and end.
    pub(crate) fn purge(&self) {
        let fresh = Segments::for_budget(self.budget.cap(self.side));
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.purges += 1;
        let old = (
            std::mem::take(&mut inner.records),
            std::mem::replace(&mut inner.table, HashTable::new()),
            std::mem::take(&mut inner.large),
            std::mem::replace(&mut inner.segments, fresh),
        );
        (inner.vacant, inner.head, inner.tail, inner.bytes) = (NIL, NIL, NIL, 0);
        self.publish(inner);
        drop(guard);
        // A million entries' structures take milliseconds to free (the slab's and the
        // segments' pages, a free per unpacked value), and unmapping them all at once holds the
        // process's memory map against every page fault meanwhile: on a thread of their own,
        // not the caller's (an async worker serving gets), a piece at a time.
        if old.0.len() < PURGE_FREED_INLINE {
            drop(old);
        } else if let Err(error) = std::thread::Builder::new()
            .name("groupcache-purge".to_owned())
            .spawn(move || free_in_pieces(old))
        {
            tracing::debug!(%error, "no thread to free a purged cache's structures: freed here");
        }
    }

    /// Makes every token taken so far stale, e.g. when the keys this cache may hold change.
    pub(crate) fn supersede_all(&self) {
        self.lock().epoch += 1;
    }

    /// Every key held now, least recently used last. Under the lock the keys are only copied
    /// into one buffer; they become strings after unlocking.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> Vec<Box<str>> {
        let mut buffer = Vec::new();
        let mut ends = Vec::new();
        {
            let inner = self.lock();
            ends.reserve(inner.table.len());
            let mut i = inner.head;
            while let Some(record) = inner.records.get(i as usize) {
                buffer.extend_from_slice(inner.key(record));
                ends.push(buffer.len());
                i = record.next;
            }
        }
        split_keys(&buffer, ends)
    }

    /// Starts a walk over the keys in parts ([`keys_from`](Self::keys_from)), until
    /// [`end_walk`](Self::end_walk): while any walk lasts, no entry moves to another record (the
    /// slab is compacted, see `release_vacant`, only once none is in progress). Not a guard: the
    /// ring change's walk runs on a thread of its own that holds the group weakly between parts.
    pub(crate) fn begin_walk(&self) {
        self.lock().walks += 1;
    }

    /// Ends a walk [`begin_walk`](Self::begin_walk) started: a compaction it held back may run.
    pub(crate) fn end_walk(&self) {
        let mut inner = self.lock();
        inner.walks -= 1;
        inner.release_vacant();
    }

    /// Up to `max` keys held now, in the order of their records from the `start`th on, and the
    /// record to go on from (`None` past the last): a walk over every key in parts, each under
    /// the lock for a moment only, so that gets are not held up by a walk over a large cache.
    /// Within a walk ([`begin_walk`](Self::begin_walk)) an entry keeps its record until it is
    /// removed, so a walk meets every key held from its start to its end; one inserted
    /// meanwhile may be met or not.
    pub(crate) fn keys_from(&self, start: usize, max: usize) -> (Vec<Box<str>>, Option<usize>) {
        let mut buffer = Vec::new();
        let mut ends = Vec::with_capacity(max.min(4096));
        let next = {
            let inner = self.lock();
            let mut i = start;
            while ends.len() < max
                && let Some(record) = inner.records.get(i)
            {
                if record.segment != VACANT {
                    buffer.extend_from_slice(inner.key(record));
                    ends.push(buffer.len());
                }
                i += 1;
            }
            (i < inner.records.len()).then_some(i)
        };
        (split_keys(&buffer, ends), next)
    }

    /// Makes each of `keys` still held expire at `deadline` at the latest.
    pub(crate) fn cap_expiry(&self, keys: &[Box<str>], deadline: i64) {
        let hashes: Vec<u64> = keys.iter().map(|key| key_hash(key.as_bytes())).collect();
        let mut inner = self.lock();
        for (key, &hash) in keys.iter().zip(&hashes) {
            if let Some(i) = inner.find(hash, key.as_bytes()) {
                let expire = &mut inner.records[i as usize].expire;
                *expire = if *expire == 0 {
                    deadline
                } else {
                    (*expire).min(deadline)
                };
            }
        }
    }

    /// `insert`, `insert_if` and `write_if`; `Err` with the value when `token` is stale.
    fn insert_checked(
        &self,
        key: &str,
        entry: Entry,
        token: Option<Token>,
        after_new_epoch: Option<i64>,
        write: bool,
        admit: Option<Admit<'_>>,
    ) -> Result<Inserted, Bytes> {
        let size = self.charge(key, entry.value.len());
        if size > self.budget.cap(self.side) {
            // Removing is always safe; for a write it is a write whatever the token says.
            self.remove_checked(key, token.filter(|_| !write));
            return Ok(Inserted {
                evicted: 0,
                value: entry.value,
            });
        }
        let hash = key_hash(key.as_bytes());
        let Entry {
            value,
            mut expire,
            meta,
        } = entry;
        // The loader's buffer of a packed value is dropped after unlocking. An unpacked value's
        // key gets its allocation before locking.
        let (own, small) = if self.packs(key.len(), value.len()) {
            (None, value)
        } else {
            let own = exactly_sized(value);
            (Some((own, Box::<[u8]>::from(key.as_bytes()))), Bytes::new())
        };
        let mut removed = Removed::default();
        let mut guard = self.lock();
        let inner = &mut *guard;
        match (token.map(|token| inner.since(token)), after_new_epoch) {
            (None | Some(Since::Nothing), _) => {}
            (Some(Since::NewEpoch), Some(bounded)) => expire = bounded,
            (Some(Since::NewEpoch | Since::Written), _) => {
                drop(guard);
                return Err(own.map_or(small, |(own, _)| own));
            }
        }
        if write {
            inner.write(hash);
        }
        if let Some(old) = inner.find(hash, key.as_bytes()) {
            inner.take(old, hash, &mut removed);
        }
        let replaced = removed.len();
        let Some(i) = inner.allocate(expire, meta) else {
            // As many entries as record indexes: not stored, like an entry larger than the
            // budget.
            let freed = self.settle(inner);
            drop(guard);
            drop((removed, freed));
            let value = own.map_or(small, |(own, _)| own);
            return Ok(Inserted { evicted: 0, value });
        };
        let stored = match own {
            Some((own, key)) => {
                let slot = u32::try_from(inner.large.len()).unwrap_or(u32::MAX);
                inner.large.push((i, key, own.clone()));
                let record = &mut inner.records[i as usize];
                (record.segment, record.slot) = (LARGE, slot);
                own
            }
            None => {
                let (prefix, n) = length_prefix(key.len());
                let parts: [&[u8]; 3] = [&prefix[..n], key.as_bytes(), &small];
                let (data, place) = inner.segments.pack(i, &parts);
                let value = data.slice(n + key.len()..);
                let record = &mut inner.records[i as usize];
                (record.segment, record.slot) = (place.segment, place.slot);
                // Within a segment, at most 1 MiB.
                (record.offset, record.len) = (place.offset, data.len() as u32);
                value
            }
        };
        inner.push_front(i);
        {
            let (records, large, segments) = (&inner.records, &inner.large, &inner.segments);
            inner.table.insert_unique(hash, i, |&j| {
                records
                    .get(j as usize)
                    .map_or(0, |r| key_hash(key_of(r, segments, large)))
            });
        }
        inner.bytes += size;
        // The new entry is the most recent, so it goes last: only when the other side holds
        // all the room but less than it.
        let mut kept = true;
        // Admission is decided once, when the entry first needs room: against the entry that
        // would go first.
        let mut admit = admit;
        let held = self
            .budget
            .fit(self.side, Some((hash, size)), inner.bytes, || {
                if let Some(admit) = admit.take()
                    && inner.tail != i
                    && inner
                        .records
                        .get(inner.tail as usize)
                        .is_some_and(|victim| !admit(inner.key(victim)))
                {
                    return inner.evict_newest(&mut removed, i, hash, &mut kept);
                }
                inner.evict_lru(&mut removed, i, &mut kept)
            });
        debug_assert_eq!(held, inner.bytes);
        let freed = self.settle(inner);
        drop(guard);
        let evicted = (removed.len() - replaced - usize::from(!kept)) as u64;
        drop((removed, freed));
        Ok(Inserted {
            evicted,
            value: stored,
        })
    }

    /// Gives back the room this side holds beyond its target when the other side waits for it
    /// (see [`Budget`]); returns the entries evicted.
    pub(crate) fn trim(&self) -> u64 {
        if !self.budget.wanted_back(self.side) {
            return 0;
        }
        let mut removed = Removed::default();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut kept = true;
        self.budget.fit(self.side, None, inner.bytes, || {
            inner.evict_lru(&mut removed, NIL, &mut kept)
        });
        let freed = self.settle(inner);
        drop(guard);
        let evicted = removed.len() as u64;
        drop((removed, freed));
        evicted
    }

    /// Removes the key; true if it was there. A remove is a write, whether the key was there or
    /// not: loads whose tokens were taken before it cannot store after it.
    pub(crate) fn remove(&self, key: &str) -> bool {
        self.remove_checked(key, None)
    }

    /// `remove`, or with a token, a remove only if the token is current (and then no write).
    fn remove_checked(&self, key: &str, token: Option<Token>) -> bool {
        let hash = key_hash(key.as_bytes());
        let mut inner = self.lock();
        match token {
            Some(token) if inner.since(token) != Since::Nothing => return false,
            Some(_) => {}
            None => inner.write(hash),
        }
        let mut removed = Removed::default();
        if let Some(i) = inner.find(hash, key.as_bytes()) {
            inner.take(i, hash, &mut removed);
        }
        let freed = self.settle(&mut inner);
        drop(inner);
        let was_there = removed.len() > 0;
        drop((removed, freed));
        was_there
    }

    /// Charged bytes currently held, read without taking the lock.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of entries currently held, read without taking the lock.
    pub(crate) fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// Takes the lock. Nothing in the critical sections can panic halfway through an update, so
    /// a poisoned lock still guards consistent data.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After entries came or left, on every path that frees bytes (an insert's evictions, a
    /// remove, an expiry, a trim): the cleaner's moves, the release of vacant structures, and
    /// the totals published. Returns the moved values' old handles and the segment buffers let
    /// go, to be dropped after unlocking. The cleaner ran on inserts only: removes and expiry
    /// left dead segments until the next insert.
    fn settle(&self, inner: &mut Inner) -> (Vec<Bytes>, Vec<Bytes>) {
        let moved = Self::clean(inner, self.segment_bytes);
        inner.release_vacant();
        self.publish(inner);
        (moved, inner.segments.take_let_go())
    }

    /// Moves values out of the segment the cleaner is emptying into the open one; returns the
    /// old handles, to be dropped after unlocking. It copies at most a quarter of a segment, and
    /// counts picking a segment (a scan over all of them) as a sixteenth. An insert adds at most
    /// an eighth of a segment of dead space (a key and a value of at most a sixteenth each), and
    /// below 4/5 live every move frees at least a quarter of what it copies, so the cleaner
    /// keeps up with steady traffic. An insert that evicts more at once (for a large value)
    /// leaves dead space past the bound for a few inserts.
    fn clean(inner: &mut Inner, segment: usize) -> Vec<Bytes> {
        let mut moved = Vec::new();
        let mut allowance = segment / 4;
        while allowance > 0 {
            let Some((i, picked)) = inner.segments.next_to_move() else {
                break;
            };
            if picked {
                allowance = allowance.saturating_sub(segment / 16);
            }
            let record = inner.records.get(i as usize);
            debug_assert!(
                record.is_some_and(|r| r.segment != LARGE && r.segment != VACANT),
                "a record its segment lists is packed"
            );
            let Some(record) = record.filter(|r| r.segment != LARGE && r.segment != VACANT) else {
                break;
            };
            let place = Place {
                segment: record.segment,
                slot: record.slot,
                offset: record.offset,
            };
            let old =
                inner
                    .segments
                    .slice(record.segment, record.offset, record.len as usize, |_| 0);
            let (_, new_place) = inner.segments.pack(i, &[&old]);
            let record = &mut inner.records[i as usize];
            (record.segment, record.slot) = (new_place.segment, new_place.slot);
            record.offset = new_place.offset;
            allowance = allowance.saturating_sub(old.len());
            inner.unplace(i, place, old.len());
            moved.push(old);
        }
        moved
    }

    /// Bytes of memory the cache's segments hold: those with live values, and the open one.
    #[cfg(test)]
    fn segment_bytes(&self) -> u64 {
        self.lock().segments.held_bytes()
    }

    fn publish(&self, inner: &Inner) {
        let items = inner.table.len();
        self.budget.released(self.side, inner.bytes);
        self.bytes.store(inner.bytes, Ordering::Relaxed);
        self.items.store(items as u64, Ordering::Relaxed);
        if let Some((bytes, items_gauge)) = &self.gauges {
            bytes.set(inner.bytes as f64);
            items_gauge.set(items as f64);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A cache publishing to gauges of its own recorder, and a reading of them: (bytes, items).
    fn published() -> (Cache, impl Fn() -> (f64, f64)) {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let cache = metrics::with_local_recorder(&recorder, || {
            Cache::new(1 << 20).publish_to(metrics::gauge!("bytes"), metrics::gauge!("items"))
        });
        let read = move || {
            let mut bytes_items = (f64::NAN, f64::NAN);
            for (key, _, _, value) in snapshotter.snapshot().into_vec() {
                let DebugValue::Gauge(value) = value else {
                    continue;
                };
                match key.key().name() {
                    "bytes" => bytes_items.0 = value.into_inner(),
                    "items" => bytes_items.1 = value.into_inner(),
                    _ => {}
                }
            }
            bytes_items
        };
        (cache, read)
    }

    #[test]
    fn gauges_follow_every_change_an_expired_get_included() {
        let (cache, read) = published();
        assert_eq!(read(), (0.0, 0.0));
        cache.insert("a", entry(10));
        cache.insert("b", Entry::value(Bytes::from_static(b"soon gone"), 100));
        assert_eq!(read(), (cache.bytes() as f64, 2.0));
        assert!(cache.get("b", 99).is_some());
        assert!(cache.get("b", 100).is_none(), "expired");
        assert_eq!(
            read(),
            (charge("a", 10) as f64, 1.0),
            "republished by the get"
        );
        cache.remove("a");
        assert_eq!(read(), (0.0, 0.0));
    }

    #[test]
    fn the_last_published_figure_is_the_cache_size_after_concurrent_changes() {
        let (cache, read) = published();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let cache = &cache;
                scope.spawn(move || {
                    for i in 0..2000 {
                        let key = format!("{}", (i * 7 + thread) % 64);
                        if i % 3 == 0 {
                            cache.remove(&key);
                        } else {
                            cache.insert(&key, entry(i % 100));
                        }
                    }
                });
            }
        });
        assert_eq!(read(), (cache.bytes() as f64, cache.items() as f64));
    }

    fn entry(len: usize) -> Entry {
        Entry::value(Bytes::from(vec![b'v'; len]), 0)
    }

    /// `key:` repeated to `len` bytes, so a value that moved can be checked.
    fn value_of(key: &str, len: usize) -> Bytes {
        format!("{key}:").bytes().cycle().take(len).collect()
    }

    /// Recomputes bytes and items from the content and checks the published counters agree:
    /// every entry reachable from the LRU order is in the table under its key's hash, listed
    /// at its place (its segment's list, or the keys of unpacked values), and charged exactly;
    /// every other record is vacant.
    fn check_accounting(cache: &Cache) {
        let inner = cache.lock();
        let mut bytes = 0;
        let mut packed = 0;
        let mut items = 0;
        let (mut i, mut prev) = (inner.head, NIL);
        while i != NIL {
            let record = &inner.records[i as usize];
            assert_eq!(record.prev, prev, "LRU links agree");
            let key = inner.key(record);
            let key_str = std::str::from_utf8(key).unwrap();
            assert_eq!(inner.find(key_hash(key), key), Some(i), "found by its key");
            let value = inner.value(record);
            let value_len = value.len();
            assert_eq!(
                cache.packs(key.len(), value_len),
                record.segment != LARGE,
                "packed if and only if it packs"
            );
            if record.segment == LARGE {
                assert_eq!(inner.large[record.slot as usize].0, i, "its key lists it");
            } else {
                assert_ne!(record.segment, VACANT);
                let listed = inner.segments.records(record.segment)[record.slot as usize];
                assert_eq!(listed, i, "a value's place lists its record");
                assert_eq!(
                    inner.packed(record).len(),
                    record.len as usize,
                    "its bytes are where it says"
                );
                packed += u64::from(record.len);
            }
            bytes += cache.charge(key_str, value_len);
            items += 1;
            (prev, i) = (i, record.next);
        }
        assert_eq!(inner.tail, prev);
        assert_eq!(inner.bytes, bytes);
        assert_eq!(inner.table.len(), items);
        assert_eq!(inner.segments.live_bytes(), packed);
        assert_eq!(
            inner.large.len(),
            inner.records.iter().filter(|r| r.segment == LARGE).count()
        );
        let mut vacant = 0;
        let mut v = inner.vacant;
        while v != NIL {
            assert_eq!(inner.records[v as usize].segment, VACANT);
            vacant += 1;
            v = inner.records[v as usize].next;
        }
        assert_eq!(
            vacant + items,
            inner.records.len(),
            "every record live or vacant"
        );
        assert_eq!(cache.bytes(), bytes);
        assert_eq!(cache.items(), items as u64);
        assert!(bytes <= cache.budget.cap(cache.side));
    }

    /// A main and a hot cache sharing one budget.
    fn shared(
        total: u64,
        main_cap: Option<u64>,
        hot_cap: Option<u64>,
    ) -> (Arc<Budget>, Cache, Cache) {
        let budget = Arc::new(Budget::new(total, main_cap, hot_cap));
        let main = Cache::sharing(Arc::clone(&budget), Side::Main);
        let hot = Cache::sharing(Arc::clone(&budget), Side::Hot);
        (budget, main, hot)
    }

    /// Each cache's accounting, the budget's record of it, the total and the caps.
    fn check_shared(budget: &Budget, main: &Cache, hot: &Cache) {
        check_accounting(main);
        check_accounting(hot);
        assert_eq!(budget.used(Side::Main), main.bytes());
        assert_eq!(budget.used(Side::Hot), hot.bytes());
        assert!(main.bytes() + hot.bytes() <= budget.split().total);
        assert!(main.bytes() <= budget.cap(Side::Main));
        assert!(hot.bytes() <= budget.cap(Side::Hot));
    }

    /// Inserts 1,000-byte values under `{prefix}{i:03}` for each `i` of `keys`.
    fn fill(cache: &Cache, prefix: &str, keys: std::ops::Range<usize>) {
        for i in keys {
            cache.insert(&format!("{prefix}{i:03}"), entry(1_000));
        }
    }

    /// A get, and on a miss an insert followed by the other cache's trim, as the engine stores;
    /// whether it hit.
    fn access(cache: &Cache, other: &Cache, key: &str, len: usize) -> bool {
        if cache.get(key, 0).is_some() {
            return true;
        }
        cache.insert(key, entry(len));
        other.trim();
        false
    }

    /// Each side loops over a working set: the side whose set does not fit gets ghost hits (an
    /// evicted key comes back soon), and the split moves its way until the set fits, then back
    /// when the other side's set grows.
    #[test]
    fn the_split_moves_toward_the_side_whose_ghost_hits_grow() {
        let per = charge("m000", 1_000);
        let (budget, main, hot) = shared(100 * per, None, None);
        let start = budget.split();
        assert_eq!(start.hot_target, 100 * per / 9);
        // Main fills the budget alone: the split starts with all but a ninth on main's side.
        fill(&main, "p", 0..101);
        assert_eq!(budget.split().hot_target, 100 * per / 9);
        // Main's keys never come back while remembered (a loop over 300 keys); hot's loop over
        // 20 keys, twice its first target.
        let mut hot_hits = 0;
        for round in 0..200 {
            for i in 0..2 {
                access(
                    &main,
                    &hot,
                    &format!("m{:03}", (round * 2 + i) % 300),
                    1_000,
                );
                check_shared(&budget, &main, &hot);
            }
            hot_hits += usize::from(access(&hot, &main, &format!("h{:03}", round % 20), 1_000));
            check_shared(&budget, &main, &hot);
        }
        let toward_hot = budget.split();
        assert!(toward_hot.hot_ghost_hits > 0);
        assert!(
            toward_hot.hot_target >= 20 * per,
            "hot's target grew to hold its set: {} of {}",
            toward_hot.hot_target / per,
            20
        );
        assert_eq!(hot.items(), 20, "hot holds its whole set");
        assert!(hot_hits > 100, "and hits: {hot_hits} of 200");
        // Now main's loop (90 keys) fits only if hot gives room back; hot's set stays.
        for round in 0..2_000 {
            access(&main, &hot, &format!("n{:03}", round % 90), 1_000);
            check_shared(&budget, &main, &hot);
            access(&hot, &main, &format!("h{:03}", round % 20), 1_000);
            check_shared(&budget, &main, &hot);
        }
        let toward_main = budget.split();
        assert!(toward_main.main_ghost_hits > 0);
        assert!(
            toward_main.main_target > toward_hot.main_target + 10 * per,
            "main's target grew: from {} to {} entries",
            toward_hot.main_target / per,
            toward_main.main_target / per
        );
    }

    /// A side that used the room the other left free gives it back when the other needs it.
    #[test]
    fn room_borrowed_is_given_back() {
        let per = charge("k000", 1_000);
        let (budget, main, hot) = shared(90 * per, None, None);
        // The budget is first full with 80 entries in main and 10 in hot: that is the split.
        fill(&hot, "h", 0..10);
        for i in 0..81 {
            main.insert(&format!("k{i:03}"), entry(1_000));
            check_shared(&budget, &main, &hot);
        }
        assert_eq!((main.items(), hot.items()), (80, 10));
        assert_eq!(budget.split().main_target, 80 * per);
        // Hot's entries leave; main grows into the room.
        for i in 0..10 {
            hot.remove(&format!("h{i:03}"));
        }
        for i in 81..91 {
            main.insert(&format!("k{i:03}"), entry(1_000));
        }
        assert_eq!(main.items(), 90, "main used the room hot left free");
        check_shared(&budget, &main, &hot);
        // The first store finds no room and is not kept (hot had nothing to evict but it); main
        // gives back all it holds beyond its target at once, and the rest fit.
        let inserted = hot.insert("h000", entry(1_000));
        assert_eq!(
            (inserted.evicted, hot.items()),
            (0, 0),
            "not kept, nothing else evicted"
        );
        assert_eq!(main.trim(), 10, "main's evictions, counted");
        check_shared(&budget, &main, &hot);
        for i in 0..10 {
            hot.insert(&format!("h{i:03}"), entry(1_000));
            check_shared(&budget, &main, &hot);
            assert_eq!(main.trim(), 0);
        }
        assert_eq!(hot.items(), 10, "hot got its target back");
        assert_eq!(main.items(), 80);
        assert_eq!(
            main.trim(),
            0,
            "main is at its target: nothing more to give"
        );
    }

    /// Issue 16's scan trace: the hot cache grew into room main left free, then a scan of
    /// one-off keys into main filled the budget. The split starts where the two stood when the
    /// budget was first full, so main makes room for the scan from its own entries and the hot
    /// set stays; from the first target (8/9 main), main took back all the hot cache held beyond
    /// its ninth.
    #[test]
    fn a_scan_that_first_fills_the_budget_does_not_push_out_the_hot_set() {
        let per = charge("h000", 1_000);
        let (budget, main, hot) = shared(100 * per, None, None);
        fill(&hot, "h", 0..40);
        fill(&main, "m", 0..30);
        for i in 0..200 {
            access(&main, &hot, &format!("s{i:03}"), 1_000);
            check_shared(&budget, &main, &hot);
            // The hot set is asked for all along.
            let hot_key = format!("h{:03}", i % 40);
            assert!(
                hot.get(&hot_key, 0).is_some(),
                "{hot_key} left the hot cache at scan key {i}"
            );
        }
        assert_eq!(hot.items(), 40, "the hot set is whole");
        assert_eq!(main.items(), 60, "main holds the rest, its newest entries");
        assert_eq!(budget.split().main_target, 60 * per);
    }

    /// Random operations on both sides of a budget with caps: after every one, the accounting
    /// holds and neither the total nor a cap is exceeded.
    #[test]
    fn shared_budgets_and_caps_are_never_exceeded() {
        for (main_cap, hot_cap) in [
            (None, None),
            (Some(60_000), None),
            (Some(70_000), Some(30_000)),
        ] {
            let (budget, main, hot) = shared(80_000, main_cap, hot_cap);
            let mut x: u64 = 0x2545_F491_4F6C_DD1D;
            for _ in 0..6_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let (cache, other) = if x.is_multiple_of(3) {
                    (&hot, &main)
                } else {
                    (&main, &hot)
                };
                let key = format!("k{}", (x >> 8) % 150);
                match (x >> 16) % 8 {
                    0 => {
                        cache.remove(&key);
                    }
                    1 => {
                        other.trim();
                    }
                    2 => {
                        cache.get(&key, 0);
                    }
                    _ => {
                        cache.insert(&key, entry(((x >> 24) % 3_000) as usize));
                    }
                }
                check_shared(&budget, &main, &hot);
            }
        }
    }

    /// Both caches used from many threads at once: the two never hold more than the total at
    /// any instant, and the accounting holds afterwards.
    #[test]
    fn concurrent_use_of_a_shared_budget_never_exceeds_it() {
        let (budget, main, hot) = shared(60_000, None, Some(40_000));
        std::thread::scope(|s| {
            for t in 0..6usize {
                let (budget, main, hot) = (&budget, &main, &hot);
                s.spawn(move || {
                    let (cache, other) = if t % 2 == 0 { (main, hot) } else { (hot, main) };
                    for i in 0..4_000usize {
                        let key = format!("key-{}", (i * 31 + t) % 120);
                        match i % 6 {
                            0 => {
                                cache.remove(&key);
                            }
                            1 => {
                                cache.get(&key, 0);
                            }
                            _ => {
                                cache.insert(&key, entry((i * t) % 1_500));
                                other.trim();
                            }
                        }
                        assert!(budget.held() <= 60_000);
                    }
                });
            }
        });
        check_shared(&budget, &main, &hot);
    }

    /// The gauges follow a trim as they follow every other change.
    #[test]
    fn gauges_follow_a_trim() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let per = charge("k000", 1_000);
        let budget = Arc::new(Budget::new(20 * per, None, None));
        let (main, hot) = metrics::with_local_recorder(&recorder, || {
            (
                Cache::sharing(Arc::clone(&budget), Side::Main)
                    .publish_to(metrics::gauge!("main_bytes"), metrics::gauge!("main_items")),
                Cache::sharing(Arc::clone(&budget), Side::Hot)
                    .publish_to(metrics::gauge!("hot_bytes"), metrics::gauge!("hot_items")),
            )
        });
        for i in 0..20 {
            main.insert(&format!("k{i:03}"), entry(1_000));
        }
        hot.insert("h", entry(1_000));
        assert!(main.trim() > 0);
        hot.insert("h", entry(1_000));
        let gauges: std::collections::HashMap<String, f64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Gauge(v) => Some((key.key().name().to_owned(), v.into_inner())),
                _ => None,
            })
            .collect();
        assert_eq!(gauges["main_bytes"], main.bytes() as f64);
        assert_eq!(gauges["main_items"], main.items() as f64);
        assert!(main.items() < 20);
        assert_eq!(gauges["hot_bytes"], hot.bytes() as f64);
        assert_eq!(gauges["hot_items"], 1.0);
    }

    /// Issue 16's target: at most 96 bytes per entry beyond key and value for small values.
    #[test]
    fn overhead_is_at_most_96_bytes_and_covers_the_real_structures() {
        assert_eq!(size_of::<Entry>(), 48);
        assert_eq!(size_of::<Record>(), 40);
        assert_eq!(ENTRY_OVERHEAD, 60);
        if size_of::<usize>() == 8 {
            assert_eq!(LARGE_OVERHEAD, 236);
        }
        // A 100-byte value under a short key.
        assert!(charge("user:12345", 100) - 110 <= 96);
        assert_eq!(
            charge("k", 0),
            1 + 1 + ENTRY_OVERHEAD,
            "the key's length prefix"
        );
        assert_eq!(charge(&"k".repeat(200), 0), 200 + 2 + ENTRY_OVERHEAD);
        // What the structures hold after n inserts (no record vacant yet), at sizes just below
        // and just after the table grows, is within what was charged: the records, the table's
        // buckets and control bytes, the segments' record lists (4 `u32`s at least each).
        let segment_bytes = Segments::for_budget(64 << 20).segment_bytes();
        for n in [1usize, 7, 8, 9, 100, 1_000, 3_584, 3_585, 20_000] {
            let cache = Cache::new(64 << 20);
            for i in 0..n {
                cache.insert(&format!("k{i}"), entry(100));
            }
            let inner = cache.lock();
            assert_eq!(inner.records.len(), n);
            let buckets = (inner.table.capacity() * 8 / 7).next_power_of_two();
            let table = buckets * (size_of::<u32>() + 1);
            let segments = (inner.segments.held_bytes() as usize).div_ceil(segment_bytes);
            let lists = inner.segments.list_bytes();
            let real = n * size_of::<Record>() + table + lists;
            let charged = n as u64 * ENTRY_OVERHEAD + 16 * segments as u64;
            assert!(
                real as u64 <= charged,
                "{n} entries: the structures hold {real} bytes, charged {charged}"
            );
            drop(inner);
            check_accounting(&cache);
        }
    }

    /// Random operations (inserts of packed and unpacked values under short and long keys,
    /// replacements, gets, expiries, removes, cap_expiry) on a small cache: the accounting
    /// holds after every one.
    #[test]
    fn the_accounting_holds_after_every_operation_of_a_random_sequence() {
        let cache = Cache::new(256 << 10);
        assert_eq!(cache.segment_bytes, 64 << 10);
        let mut x: u64 = 0x0DDB_1A5E_5BAD_5EED;
        let mut huge_key_small_value = false;
        for n in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = match x % 7 {
                0 => format!(
                    "long-{}-{}",
                    (x >> 8) % 40,
                    "k".repeat(((x >> 3) % 300) as usize)
                ),
                // Keys over 1/16 of a segment: not packed, whatever the value.
                1 if (x >> 5).is_multiple_of(4) => format!(
                    "huge-{}-{}",
                    (x >> 8) % 10,
                    "h".repeat(4_090 + ((x >> 3) % 20) as usize)
                ),
                _ => format!("k{}", (x >> 8) % 300),
            };
            let now = (n / 100) as i64;
            match (x >> 20) % 10 {
                0 => {
                    cache.remove(&key);
                }
                1 | 2 => {
                    if let Some(e) = cache.get(&key, now) {
                        assert_eq!(e.value, value_of(&key, e.value.len()), "{key}");
                    }
                }
                3 => cache.cap_expiry(&[key.clone().into_boxed_str()], now + 3),
                _ => {
                    // Mostly small values, some over 1/16 of a segment (4 KiB).
                    let len = match (x >> 28) % 8 {
                        0 => 4_000 + ((x >> 32) % 3_000) as usize,
                        1 => 0,
                        _ => ((x >> 32) % 600) as usize,
                    };
                    let expire = if (x >> 40).is_multiple_of(3) {
                        now + 2
                    } else {
                        0
                    };
                    let value = value_of(&key, len);
                    cache.insert(&key, Entry::value(value, expire));
                    huge_key_small_value |= key.len() > 4096
                        && len <= 4096
                        && cache
                            .lock()
                            .large
                            .iter()
                            .any(|(_, k, _)| **k == *key.as_bytes());
                }
            }
            check_accounting(&cache);
        }
        assert!(cache.items() > 0);
        assert!(
            huge_key_small_value,
            "a key too long to pack held with a small value"
        );
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let per = charge("a", 100);
        let cache = Cache::new(3 * per);
        for key in ["a", "b", "c"] {
            assert_eq!(cache.insert(key, entry(100)).evicted, 0);
        }
        assert!(cache.get("a", 0).is_some()); // now b is the least recently used
        assert_eq!(cache.insert("d", entry(100)).evicted, 1);
        assert!(cache.get("b", 0).is_none());
        for key in ["a", "c", "d"] {
            assert!(cache.get(key, 0).is_some(), "{key}");
        }
        // A value twice the size pushes out the two least recently used (a, then c).
        assert_eq!(cache.insert("e", entry(100 + per as usize)).evicted, 2);
        assert!(cache.get("a", 0).is_none());
        assert!(cache.get("c", 0).is_none());
        assert!(cache.get("d", 0).is_some());
        assert!(cache.get("e", 0).is_some());
        check_accounting(&cache);
    }

    /// Admission (TinyLFU, decided by the engine's sketch): asked only when the entry needs
    /// room, about the entry that would go first; refused, the new entry goes instead and every
    /// old one stays; admitted, the least recently used goes as without admission.
    #[test]
    fn admission_is_asked_about_the_first_victim_and_a_refusal_keeps_every_entry() {
        let per = charge("a", 100);
        let cache = Cache::new(3 * per);
        let token = |key: &str| cache.token(key);
        let asked = std::cell::RefCell::new(Vec::new());
        let refuse = |victim: &[u8]| {
            asked.borrow_mut().push(victim.to_vec());
            false
        };
        for key in ["a", "b", "c"] {
            let inserted = cache.insert_if(key, entry(100), token(key), None, Some(&refuse));
            assert!(inserted.is_ok_and(|i| i.evicted == 0));
        }
        assert!(
            asked.borrow().is_empty(),
            "room to spare: nothing to decide"
        );
        assert!(cache.get("a", 0).is_some()); // b is the least recently used
        let refused = cache.insert_if("d", entry(100), token("d"), None, Some(&refuse));
        let refused = refused.expect("a refusal is not a stale token");
        assert_eq!(refused.evicted, 0);
        assert_eq!(refused.value.len(), 100, "the value is still handed back");
        assert_eq!(
            *asked.borrow(),
            [b"b".to_vec()],
            "asked about the first victim only"
        );
        assert!(cache.get("d", 0).is_none(), "refused");
        for key in ["a", "b", "c"] {
            assert!(cache.get(key, 0).is_some(), "{key} stays");
        }
        check_accounting(&cache);
        let admit = |_: &[u8]| true;
        let admitted = cache.insert_if("e", entry(100), token("e"), None, Some(&admit));
        assert_eq!(admitted.map(|i| i.evicted), Ok(1));
        assert!(cache.get("e", 0).is_some());
        // The checks above used a, b, c in that order: a was the least recently used.
        assert!(cache.get("a", 0).is_none(), "a was the least recently used");
        check_accounting(&cache);
        // A write is never refused.
        cache.write_if("f", entry(100), token("f")).unwrap();
        assert!(cache.get("f", 0).is_some());
        check_accounting(&cache);
    }

    #[test]
    fn bytes_never_exceed_the_budget() {
        let cache = Cache::new(10_000);
        for i in 0..2_000usize {
            cache.insert(&format!("key-{}", i % 97), entry((i * 7919) % 3_000));
            assert!(
                cache.bytes() <= 10_000,
                "after insert {i}: {}",
                cache.bytes()
            );
        }
        check_accounting(&cache);
    }

    #[test]
    fn replacing_recharges() {
        let cache = Cache::new(1 << 20);
        cache.insert("k", entry(5_000));
        assert!(!cache.packs(1, 5_000), "too large to pack in a 1 MiB cache");
        assert_eq!(cache.bytes(), large_charge(1, 5_000));
        let evicted = cache.insert("k", entry(10)).evicted;
        assert_eq!(evicted, 0);
        assert_eq!(cache.bytes(), charge("k", 10));
        assert_eq!(cache.items(), 1);
        assert_eq!(cache.get("k", 0).map(|e| e.value.len()), Some(10));
        check_accounting(&cache);
    }

    #[test]
    fn oversized_entries_are_refused() {
        let budget = charge("small", 100) + charge("big", 0);
        let cache = Cache::new(budget);
        cache.insert("small", entry(100));
        let big = entry(budget as usize);
        let refused = Inserted {
            evicted: 0,
            value: big.value.clone(),
        };
        assert_eq!(cache.insert("big", big.clone()), refused);
        assert!(cache.get("big", 0).is_none());
        assert!(cache.get("small", 0).is_some(), "nothing evicted for it");
        // An oversized replacement removes the old value rather than leaving it stale.
        assert_eq!(cache.insert("small", big), refused);
        assert!(cache.get("small", 0).is_none());
        check_accounting(&cache);
        assert_eq!(cache.items(), 0);
    }

    #[test]
    fn zero_budget_stores_nothing() {
        let cache = Cache::new(0);
        cache.insert("", entry(0));
        assert!(cache.get("", 0).is_none());
        assert_eq!((cache.bytes(), cache.items()), (0, 0));
    }

    /// A record keeps an entry's kind and refresh time exactly (up to 2116), whatever the
    /// kind.
    #[test]
    fn kind_and_refresh_time_survive_the_record() {
        let cache = Cache::new(1 << 20);
        let now = 1_765_000_000_000_000_000i64;
        for (key, kind, refresh) in [
            ("v", Kind::Value, 0),
            ("r", Kind::Value, now),
            ("n", Kind::NotFound, 0),
            ("f", Kind::Failed, now + 1),
            ("max", Kind::NotFound, META_TIME),
        ] {
            let entry = Entry::new(Bytes::from_static(b"x"), 0, refresh, kind);
            cache.insert(key, entry.clone());
            let got = cache.get(key, now).unwrap();
            assert_eq!((got.kind(), got.refresh()), (kind, refresh), "{key}");
            assert_eq!(got, entry);
        }
    }

    /// With `keep_expired`, an expired entry is no hit but `stale` finds it until that long
    /// after its expiry; without, the first get drops it.
    #[test]
    fn expired_entries_are_kept_for_stale_only_as_long_as_asked() {
        let cache = Cache::new(1 << 20);
        cache.keep_expired(100);
        cache.insert("k", Entry::value(Bytes::from_static(b"v"), 1_000));
        assert!(cache.get("k", 1_000).is_none(), "expired: no hit");
        assert_eq!(
            cache.stale("k", 1_050).map(|e| e.value),
            Some(Bytes::from_static(b"v"))
        );
        assert!(cache.stale("k", 1_100).is_none(), "past the window");
        assert!(cache.get("k", 1_100).is_none());
        assert_eq!(cache.items(), 0, "dropped once past the window");
        let plain = Cache::new(1 << 20);
        plain.insert("k", Entry::value(Bytes::from_static(b"v"), 1_000));
        assert!(plain.get("k", 1_000).is_none());
        assert!(
            plain.stale("k", 1_000).is_none(),
            "dropped at the first get"
        );
    }

    /// A purge empties the cache, its charge and gauges with it, and makes every token taken
    /// before it stale, even for a store that tolerates a new epoch.
    #[test]
    fn a_purge_empties_the_cache_and_refuses_tokens_taken_before_it() {
        let cache = Cache::new(1 << 20);
        for i in 0..1000 {
            cache.insert(
                &format!("k{i}"),
                entry(if i % 100 == 0 { 100_000 } else { 100 }),
            );
        }
        let before = cache.token("late");
        cache.purge();
        assert_eq!((cache.items(), cache.bytes()), (0, 0));
        assert!(cache.get("k1", 0).is_none());
        assert!(
            cache
                .insert_if("late", entry(10), before, Some(5), None)
                .is_err(),
            "a load that started before the purge stored after it"
        );
        let after = cache.token("late");
        assert!(
            cache
                .insert_if("late", entry(10), after, None, None)
                .is_ok()
        );
        assert_eq!(cache.items(), 1);
        check_accounting(&cache);
    }

    #[test]
    fn expired_entries_are_dropped_and_uncharged() {
        let cache = Cache::new(1 << 20);
        let mut e = entry(1_000);
        e.expire = 1_000;
        cache.insert("old", e);
        cache.insert("forever", entry(1_000));
        assert!(cache.get("old", 999).is_some(), "still valid just before");
        assert!(cache.get("old", 1_000).is_none(), "gone at expire");
        assert_eq!(cache.bytes(), charge("forever", 1_000));
        assert_eq!(cache.items(), 1);
        assert!(cache.get("forever", i64::MAX).is_some(), "expire 0 = never");
        check_accounting(&cache);
    }

    #[test]
    fn remove_releases_bytes() {
        let cache = Cache::new(1 << 20);
        cache.insert("a", entry(300));
        cache.insert("b", entry(400));
        assert!(cache.remove("a"));
        assert!(!cache.remove("a"));
        assert_eq!(cache.bytes(), charge("b", 400));
        assert_eq!(cache.items(), 1);
        assert!(cache.remove("b"));
        assert_eq!((cache.bytes(), cache.items()), (0, 0));
    }

    #[test]
    fn a_slice_does_not_pin_its_buffer() {
        let big = Bytes::from(vec![42u8; 1 << 20]);
        let range = big.as_ptr_range();
        let cache = Cache::new(1 << 20);
        let value = big.slice(1_000..1_100);
        cache.insert("k", Entry::value(value, 0));
        let stored = cache.get("k", 0).map(|e| e.value).unwrap_or_default();
        assert_eq!(stored, big.slice(1_000..1_100));
        assert!(!range.contains(&stored.as_ptr()));

        // Even when the slice is the last handle to its buffer.
        let value = big.slice(2_000..2_100);
        drop(big);
        let inserted = cache.insert("k", Entry::value(value, 0));
        assert!(!range.contains(&inserted.value.as_ptr()));
    }

    #[test]
    fn an_exact_unique_buffer_too_large_to_pack_is_kept_not_copied() {
        let cache = Cache::new(1 << 20);
        assert!(!Segments::packs(cache.segment_bytes, 8192));
        let value = Bytes::from(vec![7u8; 8192]);
        let at = value.as_ptr();
        let inserted = cache.insert("k", Entry::value(value, 0));
        assert_eq!(inserted.value.as_ptr(), at, "handed back without a copy");
        assert_eq!(cache.get("k", 0).map(|e| e.value.as_ptr()), Some(at));

        // A shared value is copied, so the cache never holds a buffer someone else may slice.
        let shared = Bytes::from(vec![8u8; 8192]);
        let value = shared.clone();
        let inserted = cache.insert("s", Entry::value(value, 0));
        assert_ne!(inserted.value.as_ptr(), shared.as_ptr());
        // So is a unique buffer with spare capacity.
        let mut spare = Vec::with_capacity(16384);
        spare.extend_from_slice(&[9u8; 8192]);
        let spare = Bytes::from(spare);
        let at = spare.as_ptr();
        let value = spare;
        let inserted = cache.insert("v", Entry::value(value, 0));
        assert_ne!(inserted.value.as_ptr(), at);
        assert_eq!(inserted.value.len(), 8192);
        check_accounting(&cache);
    }

    #[test]
    fn small_values_are_packed_side_by_side() {
        let cache = Cache::new(64 << 20);
        let a = cache.insert("a", entry(4096)).value;
        let b = cache.insert("b", entry(4096)).value;
        // Each value follows its key and the key's one-byte length: b's value comes 2 bytes
        // after a's.
        assert_eq!(a.as_ptr().wrapping_add(4096 + 2), b.as_ptr());
        let got = cache.get("b", 0).map(|e| e.value);
        assert_eq!(got.as_ref().map(|v| v.as_ptr()), Some(b.as_ptr()));
        assert_eq!(got, Some(Bytes::from(vec![b'v'; 4096])));
        assert_eq!(cache.segment_bytes(), 1 << 20);
        check_accounting(&cache);
    }

    /// Bytes of memory the cache's structures hold beyond the segments: the record slab, the
    /// hash table, the list of unpacked values and the segments' lists of records, by their
    /// capacity (what is allocated, not what is used).
    fn structure_bytes(cache: &Cache) -> usize {
        let inner = cache.lock();
        inner.records.capacity() * size_of::<Record>()
            + inner.table.allocation_size()
            + inner.large.capacity() * size_of::<Large>()
            + inner.segments.list_bytes()
    }

    /// What the structures may hold for `entries` packed entries: each at most four times
    /// [`ENTRY_OVERHEAD`], and a floor for a small cache.
    fn structure_bound(entries: usize) -> usize {
        4 * entries * ENTRY_OVERHEAD as usize + (256 << 10)
    }

    /// 60,000 entries of 1-byte values, then `then` to make them leave.
    fn tiny_phase(cache: &Cache, expire: i64) {
        for i in 0..60_000 {
            let mut e = entry(1);
            e.expire = expire;
            cache.insert(&format!("t{i}"), e);
        }
        assert_eq!(cache.items(), 60_000, "the tiny entries fit");
        assert!(structure_bytes(cache) > structure_bound(60_000 / 16));
    }

    /// A phase of tiny entries leaves nothing behind once they have left, whichever way they
    /// left: the slab, the table and the lists are released down to what the entries held
    /// afterwards need (issue 26, finding 6: 40-70 MB per cache stayed behind).
    #[test]
    fn a_phase_of_tiny_entries_leaves_no_vacant_structures_behind() {
        // Pushed out by 4 KiB entries: 2,000 of them overfill the 4 MiB budget.
        let cache = Cache::new(4 << 20);
        tiny_phase(&cache, 0);
        for i in 0..2_000 {
            cache.insert(&format!("b{i}"), entry(4096));
        }
        assert!(cache.get("t0", 0).is_none() && cache.get("t59999", 0).is_none());
        let held = cache.items() as usize;
        let (bytes, bound) = (structure_bytes(&cache), structure_bound(held));
        assert!(bytes <= bound, "after 4 KiB entries: {bytes} > {bound}");
        check_accounting(&cache);

        // Removed.
        let cache = Cache::new(4 << 20);
        tiny_phase(&cache, 0);
        for i in 0..60_000 {
            cache.remove(&format!("t{i}"));
        }
        let (bytes, bound) = (structure_bytes(&cache), structure_bound(0));
        assert!(bytes <= bound, "after removes: {bytes} > {bound}");
        check_accounting(&cache);

        // Expired, dropped by the gets that found them so.
        let cache = Cache::new(4 << 20);
        tiny_phase(&cache, 1_000);
        for i in 0..60_000 {
            assert!(cache.get(&format!("t{i}"), 1_000).is_none());
        }
        let (bytes, bound) = (structure_bytes(&cache), structure_bound(0));
        assert!(bytes <= bound, "after expiry: {bytes} > {bound}");
        check_accounting(&cache);

        // Values too large to pack, removed: their list is released too.
        let cache = Cache::new(4 << 20);
        for i in 0..900 {
            cache.insert(&format!("l{i}"), entry(4097));
        }
        assert!(cache.lock().large.capacity() >= 900);
        for i in 0..900 {
            cache.remove(&format!("l{i}"));
        }
        let listed = cache.lock().large.capacity();
        assert!(listed <= 64, "{listed} places kept for no large value");
        check_accounting(&cache);
    }

    /// Whether the segments' dead space is within the cleaner's bound.
    fn within_bound(cache: &Cache) -> bool {
        let inner = cache.lock();
        let (held, live) = (inner.segments.held_bytes(), inner.segments.live_bytes());
        held <= live + live / 4 + 2 * cache.segment_bytes as u64
    }

    /// The cleaner runs wherever bytes leave, not only on inserts: removing or expiring half of
    /// every segment's entries leaves the dead space within its bound without another insert
    /// (issue 26, finding 6).
    #[test]
    fn the_cleaner_runs_when_entries_are_removed_or_expire() {
        for expiry in [false, true] {
            let cache = Cache::new(4 << 20);
            let keys: Vec<String> = (0..900).map(|i| format!("k{i}")).collect();
            for (i, key) in keys.iter().enumerate() {
                let expire = if expiry && i % 2 == 1 { 1_000 } else { 0 };
                let value = value_of(key, 4096);
                cache.insert(key, Entry::value(value, expire));
            }
            for key in keys.iter().skip(1).step_by(2) {
                if expiry {
                    assert!(cache.get(key, 1_000).is_none());
                } else {
                    assert!(cache.remove(key));
                }
            }
            assert!(within_bound(&cache), "expiry: {expiry}");
            check_accounting(&cache);
            for key in keys.iter().step_by(2) {
                let got = cache.get(key, 0).map(|e| e.value);
                assert_eq!(got, Some(value_of(key, 4096)), "{key}");
            }
        }
    }

    /// A large value evicts every other packed value at once; the cleaner then brings the dead
    /// space back within its bound over the following inserts.
    #[test]
    fn the_cleaner_catches_up_after_a_large_eviction() {
        const BUDGET: u64 = 4 << 20;
        let cache = Cache::new(BUDGET);
        let keys: Vec<String> = (0..900).map(|i| format!("k{i}")).collect();
        for key in &keys {
            cache.insert(key, Entry::value(value_of(key, 4096), 0));
        }
        // Read the even keys, so the odd ones are the least recently used, then evict them.
        for key in keys.iter().step_by(2) {
            assert!(cache.get(key, 0).is_some());
        }
        cache.insert("large", entry(2 << 20));
        let within_bound = |cache: &Cache| {
            let inner = cache.lock();
            let (held, live) = (inner.segments.held_bytes(), inner.segments.live_bytes());
            held <= live + live / 4 + 2 * cache.segment_bytes as u64
        };
        assert!(
            !within_bound(&cache),
            "the eviction left half of every segment dead"
        );
        let mut inserts = 0;
        while !within_bound(&cache) {
            inserts += 1;
            assert!(
                inserts <= 200,
                "still past the bound after {inserts} inserts"
            );
            let key = format!("new{inserts}");
            cache.insert(&key, Entry::value(value_of(&key, 4096), 0));
        }
        println!("back within the bound after {inserts} inserts");
        check_accounting(&cache);
        for key in keys
            .iter()
            .step_by(2)
            .chain(std::iter::once(&"new1".to_owned()))
        {
            if let Some(e) = cache.get(key, 0) {
                assert_eq!(e.value, value_of(key, 4096), "{key}");
            }
        }
    }

    /// Skewed reads with a load on every miss, as the main cache sees them: the memory the
    /// segments hold stays near the budget although evictions punch holes into them.
    #[test]
    fn segments_stay_near_the_budget_under_skewed_churn() {
        const BUDGET: u64 = 4 << 20;
        let cache = Cache::new(BUDGET);
        // A fixed pseudo-random sequence (xorshift), skewed: key = r^3 over 4,096 keys, so a
        // few keys get most reads and the tail is read rarely; 4 KiB values, 1,024 fit.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut worst: f64 = 0.0;
        for n in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = (x % 1_000_000) as f64 / 1e6;
            let key = format!("k{}", (r * r * r * 4096.0) as u64);
            match cache.get(&key, 0) {
                Some(e) => assert_eq!(e.value, value_of(&key, e.value.len()), "{key}"),
                None => {
                    let value = value_of(&key, 1 + (x % 4096) as usize);
                    cache.insert(&key, Entry::value(value, 0));
                }
            }
            if n > 20_000 {
                worst = worst.max(cache.segment_bytes() as f64 / BUDGET as f64);
            }
        }
        check_accounting(&cache);
        println!("segments held at most {worst:.2}x the budget");
        assert!(worst <= 1.3, "segments held {worst:.2}x the budget");
    }

    #[test]
    fn a_token_is_stale_after_a_write_to_its_key_or_supersede_all() {
        let cache = Cache::new(1 << 20);
        let token = cache.token("k");
        assert!(cache.insert_if("k", entry(10), token, None, None).is_ok());
        assert!(
            cache.insert_if("k", entry(11), token, None, None).is_ok(),
            "a load's store is no write"
        );
        cache.remove("k");
        assert_eq!(
            cache
                .insert_if("k", entry(12), token, Some(1), None)
                .map(|i| i.value.len())
                .map_err(|value| value.len()),
            Err(12),
            "stale after a remove, even of nothing"
        );
        assert!(cache.get("k", 0).is_none());
        let token = cache.token("k");
        cache.insert("k", entry(13));
        assert!(
            cache.insert_if("k", entry(14), token, None, None).is_err(),
            "stale after an insert"
        );
        assert_eq!(cache.get("k", 0).map(|e| e.value.len()), Some(13));
        let token = cache.token("k");
        cache.supersede_all();
        assert!(cache.insert_if("k", entry(15), token, None, None).is_err());
        assert!(
            cache
                .insert_if("k", entry(15), token, Some(500), None)
                .is_ok(),
            "after a new epoch alone, stored with the expiry given"
        );
        assert!(cache.get("k", 499).is_some() && cache.get("k", 500).is_none());
        check_accounting(&cache);
    }

    /// Keys of the same stripe as `key`, other than it.
    pub(crate) fn same_stripe(key: &str) -> impl Iterator<Item = String> {
        let mine = stripe(key_hash(key.as_bytes()));
        (0..)
            .map(|i| format!("o{i}"))
            .filter(move |other| stripe(key_hash(other.as_bytes())) == mine)
    }

    /// A walk in parts meets every key held from its start to its end, once, whatever is
    /// removed or inserted between its parts (an entry keeps its record while it is held).
    #[test]
    fn a_walk_in_parts_meets_every_key_held_throughout() {
        let cache = Cache::new(1 << 20);
        for i in 0..100 {
            cache.insert(&format!("k{i}"), entry(8));
        }
        // Vacant records in the middle, from removes before the walk.
        for i in (0..100).step_by(7) {
            cache.remove(&format!("k{i}"));
        }
        let held: std::collections::BTreeSet<String> = (0..100)
            .filter(|i| i % 7 != 0)
            .map(|i| format!("k{i}"))
            .collect();
        let mut met = Vec::new();
        let (mut next, mut parts) = (Some(0), 0_usize);
        cache.begin_walk();
        while let Some(start) = next {
            let (keys, after) = cache.keys_from(start, 10);
            assert!(keys.len() <= 10);
            met.extend(keys.into_iter().map(String::from));
            next = after;
            parts += 1;
            // Between parts: new keys (into vacant records, or new ones) and a removal of a key
            // not held throughout.
            cache.insert(&format!("new{parts}"), entry(8));
            cache.remove(&format!("new{}", parts.saturating_sub(1)));
        }
        assert!(parts >= 9, "{parts} parts of at most 10 keys");
        let mut unique = met.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), met.len(), "no key met twice: {met:?}");
        let met: std::collections::BTreeSet<String> = met.into_iter().collect();
        assert!(
            held.is_subset(&met),
            "missed: {:?}",
            held.difference(&met).collect::<Vec<_>>()
        );
        // Parts of every size, and past the end: nothing.
        assert_eq!(cache.keys_from(usize::MAX / 2, 10), (Vec::new(), None));
        cache.end_walk();
    }

    /// Removes during a walk that leave the slab mostly vacant do not move the entries held
    /// throughout (compacted, the slab would move the last records into the first ones, behind
    /// the walk): the walk meets them all, and the slab is compacted once it is over.
    #[test]
    fn a_walk_holds_back_the_compaction_of_the_slab() {
        let cache = Cache::new(4 << 20);
        for i in 0..8_000 {
            cache.insert(&format!("k{i}"), entry(8));
        }
        cache.begin_walk();
        let (mut met, mut next) = (Vec::new(), Some(0));
        while let Some(start) = next {
            let (keys, after) = cache.keys_from(start, 1_000);
            if start == 0 {
                // The first part met the first records; the keys of all but the last 500 leave.
                for i in 0..7_500 {
                    cache.remove(&format!("k{i}"));
                }
            }
            met.extend(keys.into_iter().map(String::from));
            next = after;
        }
        let met: std::collections::BTreeSet<String> = met.into_iter().collect();
        for i in 7_500..8_000 {
            assert!(met.contains(&format!("k{i}")), "k{i} not met");
        }
        assert_eq!(cache.lock().records.len(), 8_000, "held back while walking");
        cache.end_walk();
        assert_eq!(cache.lock().records.len(), KEPT_RECORDS, "compacted after");
        check_accounting(&cache);
        for i in 7_500..8_000 {
            assert!(cache.get(&format!("k{i}"), 0).is_some(), "k{i}");
        }
    }

    /// Writes to other keys of the same stripe: up to `RECENT` are told apart by their hashes;
    /// more make the token stale, as a write to the key itself does, before or after them.
    #[test]
    fn writes_to_other_keys_of_the_stripe() {
        let cache = Cache::new(1 << 20);
        let same: Vec<String> = same_stripe("k").take(RECENT + 1).collect();
        let token = cache.token("k");
        for other in &same[..RECENT] {
            cache.remove(other);
        }
        assert!(cache.insert_if("k", entry(1), token, None, None).is_ok());
        cache.remove(&same[RECENT]);
        assert!(cache.insert_if("k", entry(2), token, None, None).is_err());
        for before in [true, false] {
            let token = cache.token("k");
            if before {
                cache.remove("k");
            }
            for other in &same[..RECENT - 1] {
                cache.remove(other);
            }
            if !before {
                cache.remove("k");
            }
            assert!(
                cache.insert_if("k", entry(3), token, None, None).is_err(),
                "a write to the key among others of its stripe (first: {before})"
            );
        }
    }

    #[test]
    fn cap_expiry_shortens_never_lengthens() {
        let cache = Cache::new(1 << 20);
        cache.insert("forever", entry(1));
        let mut soon = entry(1);
        soon.expire = 100;
        cache.insert("soon", soon);
        cache.insert("kept", entry(1));
        let keys: Vec<Box<str>> = vec!["forever".into(), "soon".into(), "gone".into()];
        cache.cap_expiry(&keys, 500);
        assert!(cache.get("forever", 499).is_some());
        assert!(cache.get("forever", 500).is_none());
        assert!(cache.get("soon", 100).is_none());
        assert!(cache.get("kept", i64::MAX).is_some());
        assert_eq!(cache.keys().len(), 1);
    }

    #[test]
    fn concurrent_use_keeps_accounting_consistent() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Cache>();

        let cache = Cache::new(50_000);
        std::thread::scope(|s| {
            for t in 0..8usize {
                let cache = &cache;
                s.spawn(move || {
                    for i in 0..5_000usize {
                        let key = format!("key-{}", (i * 31 + t) % 200);
                        match i % 5 {
                            0 => {
                                cache.remove(&key);
                            }
                            1 | 2 => {
                                cache.get(&key, 0);
                            }
                            _ => {
                                cache.insert(&key, entry((i * t) % 700));
                                assert!(cache.bytes() <= 50_000);
                            }
                        }
                    }
                });
            }
        });
        check_accounting(&cache);
    }
}
