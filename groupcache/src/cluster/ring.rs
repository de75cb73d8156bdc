//! Maps keys to the peer that owns them.
//!
//! A [`Ring`] is immutable: membership changes build a new one, so lookups (one per local miss)
//! need no lock and never allocate.

use xxhash_rust::xxh3::xxh3_64;

/// Points per peer in golang/groupcache's `consistenthash` as `groupcache.HTTPPool` uses it.
const GO_REPLICAS: usize = 50;

/// How keys are mapped to peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingMode {
    /// Bit-for-bit golang/groupcache `consistenthash`: 50 points per peer, CRC-32 IEEE. Use it when
    /// Go and Rust replicas share one pool; expect skew (42/30/28 % over three peers).
    GoCompatible,
    /// Every peer within a few percent of its fair share, via rendezvous hashing over xxh3-64.
    /// Owners depend only on the set of peer URLs, not on the order they were added.
    #[default]
    Balanced,
}

/// The lookup table for one mode.
#[derive(Debug, Clone)]
enum Table {
    /// `(point, peer index)`, sorted by point, one entry per distinct point.
    Go(Vec<(u32, u32)>),
    /// `(seed, peer index)`, sorted by descending URL so the first maximum found breaks ties.
    Balanced(Vec<(u64, u32)>),
}

/// An immutable mapping from keys to peers; rebuilt whenever membership changes.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    table: Table,
}

impl Ring {
    /// Builds the ring for `peers`, exact peer URL strings in the order they were added (the
    /// order matters only for Go's collision rule). Owners are returned as indexes into `peers`.
    pub(crate) fn new<S: AsRef<str>>(mode: RingMode, peers: &[S]) -> Ring {
        let indexed = (0u32..).zip(peers.iter().map(AsRef::as_ref));
        let table = match mode {
            RingMode::GoCompatible => {
                let mut points: Vec<(u32, u32)> = indexed
                    .flat_map(|(idx, url)| (0..GO_REPLICAS).map(move |i| (go_point(i, url), idx)))
                    .collect();
                // Go overwrites its hashMap, so on equal points the peer added last wins.
                points.sort_unstable_by_key(|&(point, idx)| (point, std::cmp::Reverse(idx)));
                points.dedup_by_key(|&mut (point, _)| point);
                Table::Go(points)
            }
            RingMode::Balanced => {
                let mut by_url: Vec<(&str, u32)> = indexed.map(|(idx, url)| (url, idx)).collect();
                by_url.sort_by(|a, b| b.0.cmp(a.0));
                let seed = |&(url, idx): &(&str, u32)| (xxh3_64(url.as_bytes()), idx);
                Table::Balanced(by_url.iter().map(seed).collect())
            }
        };
        Ring { table }
    }

    /// Index (into the `peers` given to [`Ring::new`]) of the key's owner; `None` when there are
    /// no peers. Does not allocate.
    pub(crate) fn owner(&self, key: &[u8]) -> Option<usize> {
        match &self.table {
            Table::Go(points) => {
                let hash = crc32fast::hash(key);
                let i = points.partition_point(|&(point, _)| point < hash);
                let &(_, idx) = points.get(i).or(points.first())?;
                usize::try_from(idx).ok()
            }
            Table::Balanced(seeds) => rendezvous(seeds, xxh3_64(key)),
        }
    }
}

impl Ring {
    /// Index of the key's successor: the member that owns it once its owner is gone, which is
    /// where keys go while the owner is suspected, so that every replica picks the same one.
    /// Rendezvous: the second-highest score; Go's ring: the next point, clockwise, of another
    /// member. `None` with fewer than two distinct members.
    pub(crate) fn successor(&self, key: &[u8]) -> Option<usize> {
        match &self.table {
            Table::Go(points) => {
                let hash = crc32fast::hash(key);
                let start = points.partition_point(|&(point, _)| point < hash);
                let owner = points.get(start).or(points.first())?.1;
                // From the owner's point (the first, if the key hashes past the last point).
                let after = points[start..].iter().chain(&points[..start]);
                let &(_, idx) = after.skip(1).find(|&&(_, idx)| idx != owner)?;
                usize::try_from(idx).ok()
            }
            Table::Balanced(seeds) => runner_up(seeds, xxh3_64(key)),
        }
    }
}

/// The second in [`rendezvous`]'s order: the owner once the first is removed.
fn runner_up(seeds: &[(u64, u32)], key_hash: u64) -> Option<usize> {
    let mut best: Option<(u64, u32)> = None;
    let mut second: Option<(u64, u32)> = None;
    for &(seed, idx) in seeds {
        let score = mix(key_hash ^ seed);
        // Strictly greater, as in `rendezvous`: on a tie the earlier entry ranks first.
        if best.is_none_or(|(top, _)| score > top) {
            second = best;
            best = Some((score, idx));
        } else if second.is_none_or(|(runner, _)| score > runner) {
            second = Some((score, idx));
        }
    }
    usize::try_from(second?.1).ok()
}

/// Go's point `i` for `url`: `crc32.ChecksumIEEE([]byte(strconv.Itoa(i) + url))`.
fn go_point(i: usize, url: &str) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(i.to_string().as_bytes());
    hasher.update(url.as_bytes());
    hasher.finalize()
}

/// The peer with the highest score for `key_hash`; on equal scores the earlier entry (the
/// greater URL) wins, so every replica agrees whatever order it added its peers in.
fn rendezvous(seeds: &[(u64, u32)], key_hash: u64) -> Option<usize> {
    let (&(seed, idx), rest) = seeds.split_first()?;
    let mut best = (mix(key_hash ^ seed), idx);
    for &(seed, idx) in rest {
        let score = mix(key_hash ^ seed);
        if score > best.0 {
            best = (score, idx);
        }
    }
    usize::try_from(best.1).ok()
}

/// The splitmix64 finalizer: a bijection in which every input bit flips each output bit with
/// probability close to 1/2, so scores for different seeds behave as independent.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("http://10.0.0.{i}:8080")).collect()
    }

    fn key_owner(ring: &Ring, i: usize) -> usize {
        ring.owner(format!("key-{i}").as_bytes()).unwrap()
    }

    fn seeds<S: AsRef<str>>(peers: &[S]) -> Vec<(u64, u32)> {
        match Ring::new(RingMode::Balanced, peers).table {
            Table::Balanced(seeds) => seeds,
            Table::Go(_) => unreachable!("Balanced builds a Balanced table"),
        }
    }

    /// Owner URLs of `key-0..key-{n}`.
    fn owners(mode: RingMode, peers: &[String], n: usize) -> Vec<&str> {
        let ring = Ring::new(mode, peers);
        (0..n)
            .map(|i| peers[key_owner(&ring, i)].as_str())
            .collect()
    }

    /// Parses a Go `%q` string at the start of `s`; returns its bytes and the rest of `s`.
    fn unquote(s: &str) -> Option<(Vec<u8>, &str)> {
        let body = s.strip_prefix('"')?;
        let mut chars = body.char_indices();
        let hex = |chars: &mut std::str::CharIndices<'_>, n| {
            (0..n).try_fold(0, |v, _| Some(v * 16 + chars.next()?.1.to_digit(16)?))
        };
        let (mut out, mut buf) = (Vec::new(), [0; 4]);
        while let Some((at, c)) = chars.next() {
            let c = match c {
                '"' => return Some((out, &body[at + 1..])),
                '\\' => match chars.next()?.1 {
                    'x' => {
                        out.push(u8::try_from(hex(&mut chars, 2)?).ok()?);
                        continue;
                    }
                    'u' => char::from_u32(hex(&mut chars, 4)?)?,
                    'U' => char::from_u32(hex(&mut chars, 8)?)?,
                    'a' => '\x07',
                    'b' => '\x08',
                    'f' => '\x0c',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'v' => '\x0b',
                    e @ ('\\' | '"') => e,
                    _ => return None,
                },
                c => c,
            };
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        None
    }

    #[test]
    fn unquote_handles_go_escapes() {
        let (bytes, rest) = unquote(r#""a\"\\\n\t\x00\xff\u00e9\U0001f600ключ" -> x"#).unwrap();
        assert_eq!(
            bytes,
            [&b"a\"\\\n\t\0\xff"[..], "é😀ключ".as_bytes()].concat()
        );
        assert_eq!(rest, " -> x");
        assert!(unquote(r#""\q""#).is_none() && unquote(r#""open"#).is_none());
    }

    #[test]
    fn go_compatible_matches_golang_vectors() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/ring-vectors-golang.txt"
        ));
        let mut peers: Vec<&str> = Vec::new();
        let mut ring = Ring::new(RingMode::GoCompatible, &peers);
        let (mut crcs, mut blocks, mut keys, mut dists) = (0, 0, 0, 0);
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            } else if let Some(hex) = line.strip_prefix("crc32(\"hello\")=0x") {
                assert_eq!(format!("{:08x}", crc32fast::hash(b"hello")), hex);
                crcs += 1;
            } else if let Some(list) = line.strip_prefix("peers (added in this order): [") {
                peers = list.strip_suffix(']').unwrap().split(' ').collect();
                ring = Ring::new(RingMode::GoCompatible, &peers);
                blocks += 1;
            } else if let Some(dist) = line.strip_prefix("distribution of key-0..key-99999: ") {
                let mut counts = vec![0; peers.len()];
                (0..100_000).for_each(|i| counts[key_owner(&ring, i)] += 1);
                let fields: Vec<_> = dist.split(' ').map(|f| f.rsplit_once('=')).collect();
                assert_eq!(fields.len(), peers.len(), "{line}");
                for (url, want) in fields.into_iter().map(Option::unwrap) {
                    let peer = peers.iter().position(|p| *p == url).unwrap();
                    assert_eq!(counts[peer].to_string(), want, "{line}");
                }
                dists += 1;
            } else if let Some((key, rest)) = unquote(line) {
                let want = rest.strip_prefix(" -> ").expect(line);
                assert_eq!(peers[ring.owner(&key).unwrap()], want, "{line}");
                keys += 1;
            } else {
                panic!("line not understood: {line}");
            }
        }
        assert!(crcs == 1 && blocks >= 2 && keys >= 12 * blocks && dists == blocks);
    }

    #[test]
    fn balanced_within_5_percent_for_3_to_64_peers() {
        let hashes: Vec<u64> = (0..1_000_000)
            .map(|i| xxh3_64(format!("key-{i}").as_bytes()))
            .collect();
        // Worst relative deviation from the fair share for n peers; one thread per n.
        let worst = |n: usize| {
            let seeds = seeds(&urls(n));
            let mut counts = vec![0u32; n];
            hashes
                .iter()
                .for_each(|&h| counts[rendezvous(&seeds, h).unwrap()] += 1);
            let fair = hashes.len() as f64 / n as f64;
            let dev = |&count: &u32| (f64::from(count) - fair).abs() / fair;
            (counts.iter().map(dev).fold(0.0, f64::max), n)
        };
        let worst = std::thread::scope(|s| {
            let runs: Vec<_> = (3..=64).map(|n| s.spawn(move || worst(n))).collect();
            let all = runs.into_iter().map(|run| run.join().unwrap());
            all.inspect(|&(dev, n)| assert!(dev <= 0.05, "n={n}: {:.2} % off", dev * 100.0))
                .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
        });
        eprintln!("worst deviation {:.2} % at n={}", worst.0 * 100.0, worst.1);
    }

    #[test]
    fn balanced_ignores_insertion_order() {
        let peers = urls(17);
        let mut shuffled = peers.clone();
        shuffled.sort_by_key(|url| xxh3_64(url.as_bytes()));
        assert_ne!(peers, shuffled);
        let owners = |peers| owners(RingMode::Balanced, peers, 20_000);
        assert_eq!(owners(&peers), owners(&shuffled));
        // Equal scores (only possible for equal seeds) go to the greater URL, listed first.
        let seeds = seeds(&["http://a", "http://c", "http://b"]);
        assert_eq!(seeds.iter().map(|s| s.1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rendezvous(&[(7, 4), (7, 9)], 1), Some(4));
    }

    #[test]
    fn go_key_hashing_onto_a_point_belongs_to_that_point() {
        let peers = urls(7);
        let ring = Ring::new(RingMode::GoCompatible, &peers);
        for (peer, url) in peers.iter().enumerate() {
            assert!((0..50).all(|i| ring.owner(format!("{i}{url}").as_bytes()) == Some(peer)));
        }
    }

    /// Adding a sixth peer moves keys only to it, about 1/6 of them (within `slack` times that);
    /// removing a peer moves only the keys it owned.
    fn assert_minimal_disruption(mode: RingMode, slack: f64) {
        let n = 100_000;
        let six = urls(6);
        let (five, after_add) = (owners(mode, &six[..5], n), owners(mode, &six, n));
        let moved = five.iter().zip(&after_add).filter(|(b, a)| b != a);
        assert!(moved.clone().all(|(_, after)| *after == six[5]));
        let (moved, ideal) = (moved.count() as f64, n as f64 / 6.0);
        eprintln!("{mode:?}: adding a 6th peer moved {moved} keys, ideal {ideal:.0}");
        assert!(moved > ideal / slack && moved < ideal * slack);

        let mut without_2 = six.clone();
        without_2.remove(2);
        for (before, after) in after_add.iter().zip(owners(mode, &without_2, n)) {
            assert!(*before == six[2] || *before == after);
        }
    }

    #[test]
    fn minimal_disruption() {
        assert_minimal_disruption(RingMode::Balanced, 1.1);
        // 50 points per peer leave each share ~15 % off fair; remapping everything moves ~5x ideal.
        assert_minimal_disruption(RingMode::GoCompatible, 2.0);
    }

    /// The successor is another member, and exactly the owner the key gets when its owner is
    /// removed: what a suspected owner's keys are routed to is where they go when discovery
    /// drops it.
    #[test]
    fn the_successor_is_the_owner_once_the_owner_is_gone() {
        for mode in [RingMode::Balanced, RingMode::GoCompatible] {
            let peers = urls(5);
            let ring = Ring::new(mode, &peers);
            for i in 0..5_000 {
                let key = format!("key-{i}");
                let owner = ring.owner(key.as_bytes()).unwrap();
                let successor = ring.successor(key.as_bytes()).unwrap();
                assert_ne!(owner, successor, "{mode:?} {key}");
                let mut without: Vec<&String> = peers.iter().collect();
                without.remove(owner);
                let after = Ring::new(mode, &without).owner(key.as_bytes()).unwrap();
                assert_eq!(without[after], &peers[successor], "{mode:?} {key}");
            }
            let one = Ring::new(mode, &peers[..1]);
            assert_eq!(one.successor(b"k"), None);
            assert_eq!(Ring::new(mode, &[] as &[&str]).successor(b"k"), None);
        }
    }

    #[test]
    fn empty_and_single_peer() {
        for mode in [RingMode::GoCompatible, RingMode::Balanced] {
            let empty = Ring::new(mode, &[] as &[&str]);
            assert!(empty.owner(b"k").is_none());
            let one = Ring::new(mode, &["http://10.0.0.1:8080"]);
            assert!((0..1000).all(|i| key_owner(&one, i) == 0));
        }
        // Duplicates collide on every point: Go's last-added wins; Balanced's tie goes to the first.
        let twice = ["http://10.0.0.1:8080"; 2];
        for (mode, owner) in [(RingMode::GoCompatible, 1), (RingMode::Balanced, 0)] {
            let ring = Ring::new(mode, &twice);
            assert!((0..1000).all(|i| key_owner(&ring, i) == owner));
        }
    }
}
