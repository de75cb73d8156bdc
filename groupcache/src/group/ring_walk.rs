//! A ring change's walk over main, off the caller's thread: the entries of keys the new ring
//! gives another owner are capped at the change + `hot_max_age`.
//!
//! `set_peers` (and `add_peer`, `remove_peer`, `leave`) return once the ring is swapped and the
//! loads that read the old one are superseded (`served.rs`); the walk runs on a thread of its own
//! (a replica of 400,000 entries took 130 ms to walk inside `set_peers`). It goes over main in
//! parts of [`RING_WALK_KEYS`], each under the cache's lock for a moment (copying the keys) and
//! again for the capping, the ring lookups outside it.
//!
//! State and parts only: the engine starts the walk and runs its parts (`served.rs`).
//!
//! Successive changes share one walk: a change that comes while one runs joins it at its
//! cursor and goes once round main from there, so each change meets every key held throughout its
//! lap and the walk never starts over. A key is capped at the earliest deadline among the
//! changes in the walk whose ring takes it away, as walks one after the other would do.

use std::sync::{Arc, Mutex};

use crate::caches::Cache;
use crate::cluster::membership::Membership;
use crate::lock;

/// Main's keys walked at once. A part holds main's lock about 35 ns a key (copying the keys,
/// then capping those moved): at 1,024 a get that met a part waited up to 40 µs, and gets' p99.9
/// during ring changes was 4.9x that without them; at 128 it is the same (`groupcache-bench
/// ring-change`, BENCHMARKS.md).
const RING_WALK_KEYS: usize = 128;

/// A group's walk over main, shared by the ring changes it has not finished.
#[derive(Default)]
pub(crate) struct RingWalk {
    state: Mutex<Walk>,
    /// Woken when a walk ends, for tests, which wait for it.
    #[cfg(test)]
    ended: std::sync::Condvar,
    /// A test's pause point before each part.
    #[cfg(test)]
    pub(crate) pause: tests::WalkPause,
}

#[derive(Default)]
struct Walk {
    /// The changes whose laps are not done, oldest first. Only the walking thread removes them;
    /// changes are added at the end.
    changes: Vec<Change>,
    /// The record the next part starts from.
    cursor: usize,
    /// Whether a thread walks (it ends once `changes` is empty, deciding so under this lock).
    walking: bool,
}

/// A ring change whose lap over main is not done.
struct Change {
    membership: Arc<Membership>,
    /// The latest expiry of the entries this ring takes away: the change + `hot_max_age`.
    deadline: i64,
    /// The record its lap started from: the cursor of the first part it was in.
    start: Option<usize>,
    /// Whether its lap has passed main's last record and goes on from the first.
    wrapped: bool,
}

impl Change {
    /// Whether its lap is done, once a part that read up to `next` (`None`: to the end) was
    /// checked against it.
    fn lap_done(&mut self, next: Option<usize>) -> bool {
        let start = self.start.unwrap_or(0);
        match next {
            None if start == 0 || self.wrapped => true,
            None => {
                self.wrapped = true;
                false
            }
            Some(next) => self.wrapped && next >= start,
        }
    }
}

impl RingWalk {
    /// Adds a ring change (`membership`, capping at `deadline`) to the walk, and starts the walk
    /// over `main` if none runs: then the caller runs [`part`](Self::part) until it returns
    /// false (on a thread of its own). False: the walking thread takes the change in at its next
    /// part.
    pub(crate) fn join(&self, main: &Cache, membership: Arc<Membership>, deadline: i64) -> bool {
        let start = {
            let mut walk = lock(&self.state);
            walk.changes.push(Change {
                membership,
                deadline,
                start: None,
                wrapped: false,
            });
            !std::mem::replace(&mut walk.walking, true)
        };
        if start {
            // No record moves while the walk lasts (its cursor is a record's place): ended
            // with it.
            main.begin_walk();
        }
        start
    }

    /// One part of the walk over `main`; whether there is more.
    pub(crate) fn part(&self, main: &Cache) -> bool {
        #[cfg(test)]
        self.pause.pass();
        let (from, changes) = {
            let mut walk = lock(&self.state);
            let from = walk.cursor;
            for change in &mut walk.changes {
                change.start.get_or_insert(from);
            }
            let changes: Vec<(Arc<Membership>, i64)> = walk
                .changes
                .iter()
                .map(|c| (c.membership.clone(), c.deadline))
                .collect();
            (from, changes)
        };
        let (keys, next) = main.keys_from(from, RING_WALK_KEYS);
        // Keys by the deadline they are capped at: one for a single change, few otherwise.
        let mut capped: Vec<(i64, Vec<Box<str>>)> = Vec::new();
        for key in keys {
            let deadline = changes
                .iter()
                .filter(|(membership, _)| membership.remote_owner(&key).is_some())
                .map(|&(_, deadline)| deadline)
                .min();
            let Some(deadline) = deadline else { continue };
            match capped.iter_mut().find(|(d, _)| *d == deadline) {
                Some((_, keys)) => keys.push(key),
                None => capped.push((deadline, vec![key])),
            }
        }
        for (deadline, keys) in &capped {
            main.cap_expiry(keys, *deadline);
        }
        let mut walk = lock(&self.state);
        walk.cursor = next.unwrap_or(0);
        // This part's changes are the first `changes.len()`: later ones were added after them.
        let mut part = 0;
        walk.changes.retain_mut(|change| {
            part += 1;
            part > changes.len() || !change.lap_done(next)
        });
        if walk.changes.is_empty() {
            walk.walking = false;
            main.end_walk();
            #[cfg(test)]
            self.ended.notify_all();
            return false;
        }
        true
    }

    /// Waits until no walk runs: every ring change so far has capped what it took away.
    #[cfg(test)]
    pub(crate) fn wait_done(&self) {
        let mut walk = lock(&self.state);
        while walk.walking {
            walk = self
                .ended
                .wait(walk)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::time::Duration;

    use super::*;
    use crate::Groupcache;
    use crate::caches::Entry;
    use crate::cluster::ring::Ring;
    use crate::loader::{Loaded, Loader, now_nanos};

    /// Where a test holds the walk, before a part: `arm` it, and the next part to start reports
    /// `reached` and waits for `resume`. The walk runs on a thread of its own, so this blocks.
    #[derive(Default)]
    pub(crate) struct WalkPause {
        armed: Mutex<Option<(Sender<()>, Receiver<()>)>>,
    }

    impl WalkPause {
        /// Arms the point; returns (reached, resume).
        fn arm(&self) -> (Receiver<()>, Sender<()>) {
            let (reached_tx, reached_rx) = channel();
            let (resume_tx, resume_rx) = channel();
            *lock(&self.armed) = Some((reached_tx, resume_rx));
            (reached_rx, resume_tx)
        }

        pub(crate) fn pass(&self) {
            let armed = lock(&self.armed).take();
            if let Some((reached, resume)) = armed {
                let _ = reached.send(());
                let _ = resume.recv();
            }
        }
    }

    struct Keyed;

    impl Loader for Keyed {
        type Value = String;
        type Error = std::io::Error;

        async fn load(&self, key: &str) -> Result<Loaded<String>, std::io::Error> {
            Ok(Loaded::new(key.to_owned()))
        }
    }

    const ME: &str = "http://127.0.0.1:1";
    const OTHER: &str = "http://127.0.0.1:2";
    const THIRD: &str = "http://127.0.0.1:3";
    const BOUND: Duration = Duration::from_secs(60);
    /// How long a test waits for what must come at once; only a failure waits it out.
    const FAILED: Duration = Duration::from_secs(30);

    /// A group alone in its ring whose main holds `keys` entries `k0`.. unbounded, with no
    /// heartbeats to the peers the tests add (nobody serves them).
    fn filled(keys: usize) -> (Groupcache<Keyed>, Vec<String>) {
        let cache = Groupcache::builder("g", ME, Keyed)
            .hot_max_age(BOUND)
            .failure_detection(Duration::ZERO)
            .build()
            .unwrap();
        let keys: Vec<String> = (0..keys).map(|i| format!("k{i}")).collect();
        for key in &keys {
            let value = key.clone().into();
            cache.inner.main.insert(key, Entry::value(value, 0));
        }
        (cache, keys)
    }

    /// Whether `key`'s entry in main is held without a bound. Panics if it is not held: every
    /// entry, capped or not, is served within the bound.
    fn unbounded(cache: &Groupcache<Keyed>, key: &str) -> bool {
        let entry = cache.inner.main.get(key, now_nanos());
        entry
            .unwrap_or_else(|| panic!("{key} is not served"))
            .expire
            == 0
    }

    fn owned_by(members: &[&str], key: &str) -> usize {
        Ring::new(crate::RingMode::default(), members)
            .owner(key.as_bytes())
            .unwrap()
    }

    /// `set_peers(peers)` on a thread of its own, its walk held before its second part (the
    /// first done): the thread, and what resumes the walk.
    fn held_before_second_part(
        cache: &Groupcache<Keyed>,
        peers: [&'static str; 2],
    ) -> (std::thread::JoinHandle<bool>, Sender<()>) {
        let (reached, resume) = cache.inner.ring_walk.pause.arm();
        let changer = std::thread::spawn({
            let cache = cache.clone();
            move || cache.set_peers(peers).unwrap()
        });
        reached.recv_timeout(FAILED).expect("the walk starts");
        // Armed again before the first part runs: the walk stops before the second.
        let (second, resume_second) = cache.inner.ring_walk.pause.arm();
        resume.send(()).unwrap();
        second.recv_timeout(FAILED).expect("the walk's second part");
        (changer, resume_second)
    }

    /// Finding 7 of issue 26: `set_peers` walked main itself, holding up its caller (130 ms on a
    /// replica of 400,000 entries). It returns while the walk is held before its first part;
    /// once the walk ends, every entry the ring took away is capped, and no other.
    #[test]
    fn set_peers_returns_before_the_walk_which_then_caps_every_moved_entry() {
        // More than one part, so the walk goes round in parts.
        let (cache, keys) = filled(3 * RING_WALK_KEYS + 10);
        let (reached, resume) = cache.inner.ring_walk.pause.arm();
        let (returned_tx, returned) = channel();
        let changer = std::thread::spawn({
            let cache = cache.clone();
            move || {
                cache.set_peers([ME, OTHER]).unwrap();
                let _ = returned_tx.send(());
            }
        });
        reached.recv_timeout(FAILED).expect("the walk starts");
        returned
            .recv_timeout(FAILED)
            .expect("set_peers returned while the walk was held");
        assert!(
            keys.iter().all(|key| unbounded(&cache, key)),
            "nothing is capped before the walk's first part"
        );
        resume.send(()).unwrap();
        changer.join().unwrap();
        cache.inner.ring_walk.wait_done();
        let mut moved = 0;
        for key in &keys {
            let away = owned_by(&[ME, OTHER], key) == 1;
            moved += usize::from(away);
            assert_eq!(
                unbounded(&cache, key),
                !away,
                "{key}: capped only if the ring gave it another owner"
            );
        }
        assert!(moved > RING_WALK_KEYS, "the ring moved {moved} keys");
    }

    /// A change that comes while a walk is between parts joins it: its lap starts at the
    /// cursor and goes round, so every key it takes away is capped, those before the cursor
    /// too; the first change's keys are capped all the same.
    #[test]
    fn a_change_during_a_walk_joins_it_and_both_cap_what_they_take_away() {
        let (cache, keys) = filled(3 * RING_WALK_KEYS + 10);
        // Held before the second part: the first has walked its records for ring 1 only.
        let (first, resume) = held_before_second_part(&cache, [ME, OTHER]);
        cache.set_peers([ME, THIRD]).unwrap();
        resume.send(()).unwrap();
        first.join().unwrap();
        cache.inner.ring_walk.wait_done();
        for key in &keys {
            let away = owned_by(&[ME, OTHER], key) == 1 || owned_by(&[ME, THIRD], key) == 1;
            assert_eq!(
                unbounded(&cache, key),
                !away,
                "{key}: capped only if one of the rings gave it another owner"
            );
        }
    }

    /// Removes between two parts of the walk that leave main's slab mostly vacant: compacted, the
    /// slab would move the last records into the first ones, behind the walk's cursor, and the
    /// walk would miss them (left unbounded). The walk holds the compaction back until it ends.
    #[test]
    fn removes_during_a_walk_do_not_move_entries_out_of_its_way() {
        let (cache, keys) = filled(8_000);
        let (changer, resume_second) = held_before_second_part(&cache, [ME, OTHER]);
        // All but the last 500 keys leave: the slab is mostly vacant.
        let (gone, kept) = keys.split_at(7_500);
        for key in gone {
            cache.inner.forget(key);
        }
        resume_second.send(()).unwrap();
        changer.join().unwrap();
        cache.inner.ring_walk.wait_done();
        for key in kept {
            let away = owned_by(&[ME, OTHER], key) == 1;
            assert_eq!(unbounded(&cache, key), !away, "{key}");
        }
    }

    /// Many changes in a row, from threads at once: once the walk ends, nothing a ring took
    /// away is left unbounded, whatever order they joined in.
    #[test]
    fn changes_from_many_threads_leave_nothing_moved_unbounded() {
        let (cache, keys) = filled(2 * RING_WALK_KEYS);
        std::thread::scope(|s| {
            for peer in [OTHER, THIRD] {
                let cache = &cache;
                s.spawn(move || {
                    for _ in 0..20 {
                        cache.add_peer(peer).unwrap();
                        cache.remove_peer(peer).unwrap();
                    }
                });
            }
        });
        cache.inner.ring_walk.wait_done();
        for key in &keys {
            // Rendezvous: a ring with both peers takes a key away iff one with either does.
            let away = owned_by(&[ME, OTHER], key) == 1 || owned_by(&[ME, THIRD], key) == 1;
            assert_eq!(unbounded(&cache, key), !away, "{key}");
        }
    }
}
