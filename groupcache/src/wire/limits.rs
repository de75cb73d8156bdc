//! The peer port's limits on work in progress (requests served at once, bytes of bodies held),
//! one set per replica, shared fairly by the groups it serves.
//!
//! With one group a limit is a plain counter. With `n` groups, half of it is reserved in `n`
//! equal shares, one per group, and the other half is open to any: a group flooded by its peers
//! fills its share and the open half, and every other group still has its own share. Nothing
//! queues: what does not fit is refused (503), and its sender loads locally.

use std::sync::atomic::{AtomicUsize, Ordering};

/// What one group's requests hold of each limit's reserved share now (what they hold beyond it
/// is the open part's).
#[derive(Debug, Default)]
pub(crate) struct Share {
    slots: AtomicUsize,
    bytes: AtomicUsize,
}

/// One limit, shared by the groups.
#[derive(Debug)]
struct Pool {
    limit: usize,
    /// Taken beyond the groups' reserved shares.
    open: AtomicUsize,
}

/// The replica's limits: concurrent peer requests and buffered body bytes.
#[derive(Debug)]
pub(crate) struct Limits {
    slots: Pool,
    bytes: Pool,
}

/// A part of a limit, given back when dropped: of the group's reserved share, or of the open
/// part.
#[must_use]
#[derive(Debug)]
pub(crate) struct Held<'a> {
    from: &'a AtomicUsize,
    amount: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.from.fetch_sub(self.amount, Ordering::AcqRel);
    }
}

impl Pool {
    fn new(limit: usize) -> Self {
        Pool {
            limit,
            open: AtomicUsize::new(0),
        }
    }

    /// `amount` for a group whose reserved share holds `reserved_held`, one of `groups`: from
    /// its reserved share while that has room, else from the open part; `None` if neither has.
    fn take<'a>(
        &'a self,
        reserved_held: &'a AtomicUsize,
        amount: usize,
        groups: usize,
    ) -> Option<Held<'a>> {
        let (reserved, open_limit) = match groups {
            0 | 1 => (0, self.limit),
            groups => {
                let reserved = self.limit / (2 * groups);
                (reserved, self.limit - reserved * groups)
            }
        };
        for (from, limit) in [(reserved_held, reserved), (&self.open, open_limit)] {
            let before = from.fetch_add(amount, Ordering::AcqRel);
            if before.saturating_add(amount) <= limit {
                return Some(Held { from, amount });
            }
            from.fetch_sub(amount, Ordering::AcqRel);
        }
        None
    }
}

impl Limits {
    /// `slots` requests and `bytes` body bytes at once.
    pub(crate) fn new(slots: usize, bytes: usize) -> Self {
        Limits {
            slots: Pool::new(slots),
            bytes: Pool::new(bytes),
        }
    }

    /// A request slot for a group that holds `share`, one of `groups`.
    pub(crate) fn slot<'a>(&'a self, share: &'a Share, groups: usize) -> Option<Held<'a>> {
        self.slots.take(&share.slots, 1, groups)
    }

    /// `bytes` of the body budget, as [`slot`](Self::slot).
    pub(crate) fn bytes<'a>(
        &'a self,
        share: &'a Share,
        bytes: usize,
        groups: usize,
    ) -> Option<Held<'a>> {
        self.bytes.take(&share.bytes, bytes, groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_may_take_the_whole_limit_and_no_more() {
        let limits = Limits::new(4, 0);
        let share = Share::default();
        let held: Vec<_> = (0..4).map(|_| limits.slot(&share, 1).unwrap()).collect();
        assert!(limits.slot(&share, 1).is_none());
        drop(held);
        assert!(limits.slot(&share, 1).is_some());
    }

    #[test]
    fn a_flooded_group_leaves_every_other_group_its_reserved_share() {
        let limits = Limits::new(12, 0);
        let shares: Vec<Share> = (0..3).map(|_| Share::default()).collect();
        // Group 0 floods: its reserve (12 / 6 = 2) and the open part (12 - 6 = 6).
        let flood: Vec<_> = std::iter::from_fn(|| limits.slot(&shares[0], 3)).collect();
        assert_eq!(flood.len(), 8);
        for share in &shares[1..] {
            let held: Vec<_> = std::iter::from_fn(|| limits.slot(share, 3)).collect();
            assert_eq!(held.len(), 2, "each other group keeps its reserved share");
        }
        drop(flood);
        let all: Vec<_> = std::iter::from_fn(|| limits.slot(&shares[1], 3)).collect();
        assert_eq!(all.len(), 8, "the open part is free again");
    }

    #[test]
    fn half_the_limit_is_reserved_in_equal_shares_whatever_the_number_of_groups() {
        // 24 slots, 4 groups: 3 reserved for each (24 / 8), 12 open.
        let limits = Limits::new(24, 0);
        let shares: Vec<Share> = (0..4).map(|_| Share::default()).collect();
        let flood: Vec<_> = std::iter::from_fn(|| limits.slot(&shares[0], 4)).collect();
        assert_eq!(flood.len(), 15, "its 3 and the open 12");
        for share in &shares[1..] {
            let held: Vec<_> = std::iter::from_fn(|| limits.slot(share, 4)).collect();
            assert_eq!(held.len(), 3);
        }
    }

    #[test]
    fn a_group_takes_its_reserved_share_again_once_given_back() {
        let limits = Limits::new(8, 0);
        let share = Share::default();
        // Reserved 2, open 4: the group fills both.
        let mut held: Vec<_> = std::iter::from_fn(|| limits.slot(&share, 2)).collect();
        assert_eq!(held.len(), 6);
        // The first two were the reserved ones; given back, they are taken again.
        held.drain(..2);
        let again: Vec<_> = std::iter::from_fn(|| limits.slot(&share, 2)).collect();
        assert_eq!(again.len(), 2, "the reserved share is the group's again");
    }

    #[test]
    fn bytes_are_shared_like_slots_and_given_back() {
        let limits = Limits::new(0, 100);
        let (a, b) = (Share::default(), Share::default());
        // Reserved: 100 / 4 = 25 per group; open: 50.
        let reserved = limits.bytes(&a, 20, 2).unwrap();
        let open = limits.bytes(&a, 50, 2).unwrap();
        let rest = limits.bytes(&a, 5, 2).expect("the rest of a's reserve");
        assert!(
            limits.bytes(&a, 1, 2).is_none(),
            "a's reserve and the open part are taken"
        );
        let kept = limits.bytes(&b, 25, 2).expect("b's reserve is untouched");
        assert!(limits.bytes(&b, 1, 2).is_none());
        drop((reserved, open, rest, kept));
        assert!(limits.bytes(&b, 50, 2).is_some(), "all given back");
    }
}
