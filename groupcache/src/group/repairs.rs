//! Writes that missed a replica, sent again until it answers.
//!
//! A `remove` or `set` that cannot reach a member returns `Err`, and the member may still hold
//! the value from before the write. A hot copy expires within `hot_max_age`, but the key's owner,
//! under a settled ring, keeps its copy without a bound: it cannot know it missed a write, and
//! once it answers again (a frozen process resumed, a partition healed) it hands that copy to
//! every replica that asks. So each key a member missed is queued here for it, and a task of the
//! engine's sends it a `DELETE` of each, again and again, until it answers or leaves the ring
//! (`Inner::repair`).
//!
//! A late `DELETE` is always safe: at worst it drops a copy newer than the write it repeats,
//! which is then loaded again from the source. That is also why a missed `set` is repaired by a
//! `DELETE` and not by its value, which may be outdated by the time it lands.
//!
//! Storage only: the engine starts and runs the tasks; this holds what they still have to send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::lock;

/// Keys waiting for a member, across all members. Beyond this a missed write is not repaired
/// (counted and logged): a member down for long, with writes still coming, would otherwise
/// make the queue grow without end.
pub(crate) const MAX_PENDING_REPAIRS: usize = 65_536;

/// The keys each member has missed, and the members that missed a purge.
#[derive(Default)]
pub(crate) struct Repairs {
    pending: Mutex<Pending>,
    /// Members a task sends a purge they missed (`purge.rs`).
    purges: Mutex<std::collections::HashSet<Arc<str>>>,
}

#[derive(Default)]
struct Pending {
    /// By member URL: the keys it missed, each with the number of its latest miss. A member
    /// is here exactly while a task sends it its repairs.
    by_peer: HashMap<Arc<str>, HashMap<String, u64>>,
    /// Keys across all members.
    len: usize,
    /// The next miss's number.
    next_miss: u64,
}

/// What [`Repairs::queue`] did with a missed write.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued, and no task sends this member its repairs yet: the caller starts one.
    Start,
    /// Queued for the task already running.
    Running,
    /// Not queued: [`MAX_PENDING_REPAIRS`] keys are waiting already.
    Full,
}

/// One key to send: it and the number of the miss it repairs.
pub(crate) type Repair = (String, u64);

impl Repairs {
    /// `peer` missed a purge: whether no task sends it one yet (the caller starts one).
    pub(crate) fn queue_purge(&self, peer: &Arc<str>) -> bool {
        lock(&self.purges).insert(peer.clone())
    }

    /// `peer` took its purge, or left the ring: a later miss starts a new task.
    pub(crate) fn purge_done(&self, peer: &Arc<str>) {
        lock(&self.purges).remove(peer);
    }

    /// Queues `key` for `peer`, which missed a write of it.
    pub(crate) fn queue(&self, peer: &Arc<str>, key: &str) -> Queued {
        let mut pending = lock(&self.pending);
        let miss = pending.next_miss;
        pending.next_miss += 1;
        let full = pending.len >= MAX_PENDING_REPAIRS;
        let start = !pending.by_peer.contains_key(peer);
        if start && full {
            return Queued::Full;
        }
        let keys = pending.by_peer.entry(peer.clone()).or_default();
        match keys.get_mut(key) {
            Some(latest) => *latest = miss,
            None if full => return Queued::Full,
            None => {
                keys.insert(key.to_owned(), miss);
                pending.len += 1;
            }
        }
        if start {
            Queued::Start
        } else {
            Queued::Running
        }
    }

    /// Up to `n` of `peer`'s keys to send now. Empty when it has none left: then it is no
    /// longer here, and its task must end (a later miss starts another).
    pub(crate) fn next(&self, peer: &Arc<str>, n: usize) -> Vec<Repair> {
        let mut pending = lock(&self.pending);
        match pending.by_peer.get(peer) {
            Some(keys) if !keys.is_empty() => keys
                .iter()
                .take(n)
                .map(|(key, miss)| (key.clone(), *miss))
                .collect(),
            _ => {
                pending.by_peer.remove(peer);
                Vec::new()
            }
        }
    }

    /// `peer` answered the repair of `key` sent for miss number `miss`: done, unless it missed
    /// a later write of the key meanwhile (whose repair may have to land after that write).
    pub(crate) fn answered(&self, peer: &Arc<str>, key: &str, miss: u64) {
        let mut pending = lock(&self.pending);
        let Some(keys) = pending.by_peer.get_mut(peer) else {
            return;
        };
        if keys.get(key) == Some(&miss) {
            keys.remove(key);
            pending.len -= 1;
        }
    }

    /// `peer` left the ring: its repairs are dropped (how many is returned) and its task ends.
    pub(crate) fn drop_peer(&self, peer: &Arc<str>) -> usize {
        let mut pending = lock(&self.pending);
        let dropped = pending.by_peer.remove(peer).map_or(0, |keys| keys.len());
        pending.len -= dropped;
        dropped
    }

    /// Keys waiting now, across all members.
    pub(crate) fn pending(&self) -> usize {
        lock(&self.pending).len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_has_one_task_until_its_repairs_are_answered() {
        let repairs = Repairs::default();
        let peer: Arc<str> = "http://10.0.0.2:8080".into();
        assert_eq!(repairs.queue(&peer, "a"), Queued::Start);
        assert_eq!(repairs.queue(&peer, "b"), Queued::Running);
        assert_eq!(repairs.queue(&peer, "a"), Queued::Running, "once per key");
        assert_eq!(repairs.pending(), 2);
        for (key, miss) in repairs.next(&peer, 10) {
            repairs.answered(&peer, &key, miss);
        }
        assert_eq!(repairs.pending(), 0);
        assert!(repairs.next(&peer, 10).is_empty(), "the task ends");
        assert_eq!(repairs.queue(&peer, "c"), Queued::Start, "a new task");
    }

    /// The interleaving that matters: a repair is in flight when the member misses a later
    /// write of the same key. Its answer must not take the later miss off the queue: the repair
    /// may have landed before the later write changed the source.
    #[test]
    fn an_answer_does_not_settle_a_later_miss_of_the_same_key() {
        let repairs = Repairs::default();
        let peer: Arc<str> = "http://10.0.0.2:8080".into();
        repairs.queue(&peer, "k");
        let sent = repairs.next(&peer, 1);
        assert_eq!(repairs.queue(&peer, "k"), Queued::Running);
        let (key, miss) = &sent[0];
        repairs.answered(&peer, key, *miss);
        assert_eq!(repairs.pending(), 1, "the later miss still waits");
        let again = repairs.next(&peer, 1);
        repairs.answered(&peer, &again[0].0, again[0].1);
        assert_eq!(repairs.pending(), 0);
    }

    #[test]
    fn the_queue_is_bounded_and_a_departed_member_frees_its_share() {
        let repairs = Repairs::default();
        let (down, other): (Arc<str>, Arc<str>) =
            ("http://10.0.0.2:8080".into(), "http://10.0.0.3:8080".into());
        for i in 0..MAX_PENDING_REPAIRS {
            assert_ne!(repairs.queue(&down, &format!("k{i}")), Queued::Full);
        }
        assert_eq!(repairs.queue(&down, "one more"), Queued::Full);
        assert_eq!(repairs.queue(&other, "k"), Queued::Full);
        assert_eq!(
            repairs.queue(&down, "k0"),
            Queued::Running,
            "queued already"
        );
        assert_eq!(repairs.drop_peer(&down), MAX_PENDING_REPAIRS);
        assert_eq!(repairs.pending(), 0);
        assert_eq!(repairs.queue(&other, "k"), Queued::Start);
    }
}
