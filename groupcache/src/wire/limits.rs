//! The peer port's limits on work in progress (requests served at once, bytes of bodies held),
//! one set per replica, shared fairly by the groups it serves.
//!
//! With one group a limit is a plain counter. With `n` groups, half of it is reserved in `n`
//! equal shares, one per group, and the other half is open to any: a group flooded by its peers
//! fills its share and the open half, and every other group still has its own share.
//!
//! A request that finds no slot waits for one, a bounded time
//! ([`peer_admission_wait`](crate::ClusterBuilder::peer_admission_wait)) in a bounded crowd (four
//! waiters per slot), and is refused (503, its sender loads locally) only after. Refusing at once
//! made a flood cost the others more than its slots did: each refused sender asks again at once,
//! and the router spent its turns refusing (100,000 refusals a second took the calm group's p99
//! from 0.15 ms to 38 ms; slots held without refusals cost it nothing, BENCHMARKS.md). A waiter
//! costs no CPU, and a slot given back wakes one waiter that can take it. Bodies' bytes do not
//! wait: what does not fit is refused at once.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::metrics::ClusterMetrics;

/// What one group's requests hold of each limit's reserved share now (what they hold beyond it
/// is the open part's).
#[derive(Debug, Default)]
pub(crate) struct Share {
    slots: AtomicUsize,
    bytes: AtomicUsize,
    /// Woken (one waiter) when a slot of this share is given back.
    slot_freed: Notify,
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
    /// Woken (one waiter, of any group) when a slot of the open part is given back.
    open_slot_freed: Notify,
    /// Requests waiting for a slot now, and the most that may.
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Whom to wake when a slot is given back.
#[derive(Debug, Clone, Copy)]
struct Wakes<'a> {
    reserved: &'a Notify,
    open: &'a Notify,
    waiting: &'a AtomicUsize,
}

/// A part of a limit, given back when dropped: of the group's reserved share, or of the open
/// part.
#[must_use]
#[derive(Debug)]
pub(crate) struct Held<'a> {
    from: &'a AtomicUsize,
    amount: usize,
    /// For a slot: the waiters that may take it once given back.
    wake: Option<(&'a Notify, &'a AtomicUsize)>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Sequentially consistent with the waiter's count and its own try (`Limits::admit`):
        // either the waiter's try sees this slot free, or this sees the waiter and wakes it.
        self.from.fetch_sub(self.amount, Ordering::SeqCst);
        if let Some((notify, waiting)) = self.wake
            && waiting.load(Ordering::SeqCst) > 0
        {
            notify.notify_one();
        }
    }
}

/// Takes one waiter's place off the count (and the gauge) when it stops waiting.
struct Waiting<'a>(&'a AtomicUsize, &'a ClusterMetrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        self.1.peer_requests_waiting(-1.0);
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
        wakes: Option<Wakes<'a>>,
    ) -> Option<Held<'a>> {
        let (reserved, open_limit) = match groups {
            0 | 1 => (0, self.limit),
            groups => {
                let reserved = self.limit / (2 * groups);
                (reserved, self.limit - reserved * groups)
            }
        };
        let parts = [
            (
                reserved_held,
                reserved,
                wakes.map(|w| (w.reserved, w.waiting)),
            ),
            (&self.open, open_limit, wakes.map(|w| (w.open, w.waiting))),
        ];
        for (from, limit, wake) in parts {
            let before = from.fetch_add(amount, Ordering::SeqCst);
            if before.saturating_add(amount) <= limit {
                return Some(Held { from, amount, wake });
            }
            from.fetch_sub(amount, Ordering::SeqCst);
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
            open_slot_freed: Notify::new(),
            waiting: AtomicUsize::new(0),
            // As many as the server's connections by default (4096 for 1024 slots): a sender of
            // HTTP/1 requests waits with one connection per request.
            max_waiting: slots.saturating_mul(4),
        }
    }

    /// A request slot for a group that holds `share`, one of `groups`, if one is free now.
    pub(crate) fn slot<'a>(&'a self, share: &'a Share, groups: usize) -> Option<Held<'a>> {
        let wakes = Wakes {
            reserved: &share.slot_freed,
            open: &self.open_slot_freed,
            waiting: &self.waiting,
        };
        self.slots.take(&share.slots, 1, groups, Some(wakes))
    }

    /// A request slot as [`slot`](Self::slot), waiting up to `wait` for one to be given back
    /// (among at most four waiters per slot); `None` if none came, counted as shed.
    pub(crate) async fn admit<'a>(
        &'a self,
        share: &'a Share,
        groups: usize,
        wait: Duration,
        metrics: &ClusterMetrics,
    ) -> Option<Held<'a>> {
        if let Some(held) = self.slot(share, groups) {
            return Some(held);
        }
        let held = self.wait_for_slot(share, groups, wait, metrics).await;
        if held.is_none() {
            metrics.peer_request_shed();
        }
        held
    }

    async fn wait_for_slot<'a>(
        &'a self,
        share: &'a Share,
        groups: usize,
        wait: Duration,
        metrics: &ClusterMetrics,
    ) -> Option<Held<'a>> {
        if wait.is_zero() {
            return None;
        }
        // Counted before the try below, so that a slot given back after it wakes this waiter.
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        metrics.peer_requests_waiting(1.0);
        let _waiting = Waiting(&self.waiting, metrics);
        let deadline = tokio::time::sleep(wait);
        let mut deadline = pin!(deadline);
        loop {
            // Registered before the try: a wake between the try and the wait is not lost. A
            // waiter woken that no longer waits (it took a slot, or its time ran out) passes the
            // wake on to the next (tokio's `Notified` does on drop).
            let mut reserved = pin!(share.slot_freed.notified());
            let mut open = pin!(self.open_slot_freed.notified());
            reserved.as_mut().enable();
            open.as_mut().enable();
            if let Some(held) = self.slot(share, groups) {
                return Some(held);
            }
            tokio::select! {
                () = &mut reserved => {}
                () = &mut open => {}
                () = &mut deadline => return None,
            }
        }
    }

    /// Peer requests waiting for a slot now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// `bytes` of the body budget, as [`slot`](Self::slot) (never waited for).
    pub(crate) fn bytes<'a>(
        &'a self,
        share: &'a Share,
        bytes: usize,
        groups: usize,
    ) -> Option<Held<'a>> {
        self.bytes.take(&share.bytes, bytes, groups, None)
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

    const LONG: Duration = Duration::from_secs(60);

    /// Limits of one slot, one group's share of them, and metrics to count in.
    fn one_slot() -> (Limits, Share, ClusterMetrics) {
        (
            Limits::new(1, 0),
            Share::default(),
            ClusterMetrics::new(&[]),
        )
    }

    /// Waits until `n` requests wait for a slot (a signal, not a sleep).
    async fn until_waiting(limits: &Limits, n: usize) {
        while limits.waiting() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_request_waits_for_the_slot_given_back() {
        let (limits, share, metrics) = one_slot();
        let held = limits.slot(&share, 1).unwrap();
        let waiter = limits.admit(&share, 1, LONG, &metrics);
        let given_back = async {
            until_waiting(&limits, 1).await;
            drop(held);
        };
        let (admitted, ()) = tokio::join!(waiter, given_back);
        assert!(admitted.is_some(), "the slot given back goes to the waiter");
        assert_eq!(limits.waiting(), 0);
        assert!(limits.slot(&share, 1).is_none(), "and the waiter holds it");
    }

    #[tokio::test]
    async fn a_request_is_refused_once_its_wait_runs_out_or_at_once_with_none() {
        let (limits, share, metrics) = one_slot();
        let _held = limits.slot(&share, 1).unwrap();
        let wait = Duration::from_millis(20);
        let started = std::time::Instant::now();
        assert!(limits.admit(&share, 1, wait, &metrics).await.is_none());
        assert!(started.elapsed() >= wait, "it waited its time first");
        assert!(
            limits
                .admit(&share, 1, Duration::ZERO, &metrics)
                .await
                .is_none()
        );
        assert_eq!(limits.waiting(), 0, "no waiter is left counted");
    }

    #[tokio::test]
    async fn at_most_four_requests_per_slot_wait_and_the_next_is_refused_at_once() {
        let (limits, share, metrics) = one_slot();
        let held = limits.slot(&share, 1).unwrap();
        let mut waiters: Vec<_> = (0..4)
            .map(|_| Box::pin(limits.admit(&share, 1, LONG, &metrics)))
            .collect();
        // Each waiter polled until it waits.
        for (i, waiter) in waiters.iter_mut().enumerate() {
            tokio::select! {
                biased;
                _ = waiter => panic!("no slot is free"),
                () = until_waiting(&limits, i + 1) => {}
            }
        }
        // The fifth finds the crowd full: refused without waiting its 60 s.
        let fifth = tokio::time::timeout(LONG / 2, limits.admit(&share, 1, LONG, &metrics)).await;
        assert!(matches!(fifth, Ok(None)), "refused at once");
        // The four are served in turn, each slot given back going to the next.
        drop(held);
        for waiter in waiters {
            let admitted = waiter.await;
            assert!(admitted.is_some());
        }
        assert_eq!(limits.waiting(), 0);
    }

    #[tokio::test]
    async fn a_slot_given_back_goes_to_a_waiter_whose_group_may_take_it() {
        // 4 slots, 2 groups: 1 reserved for each, 2 open.
        let limits = Limits::new(4, 0);
        let (a, b) = (Share::default(), Share::default());
        let metrics = ClusterMetrics::new(&[]);
        let a_held: Vec<_> = std::iter::from_fn(|| limits.slot(&a, 2)).collect();
        assert_eq!(a_held.len(), 3, "a's reserved slot and the open two");
        let b_held = limits.slot(&b, 2).unwrap();
        let mut a_waiter = Box::pin(limits.admit(&a, 2, LONG, &metrics));
        let mut b_waiter = Box::pin(limits.admit(&b, 2, LONG, &metrics));
        // a waits first; b's reserved slot given back can only be b's.
        tokio::select! {
            biased;
            _ = &mut a_waiter => panic!("a has no slot to take"),
            _ = &mut b_waiter => panic!("b has no slot to take yet"),
            () = until_waiting(&limits, 2) => {}
        }
        drop(b_held);
        let b_admitted = tokio::select! {
            _ = &mut a_waiter => panic!("b's reserved slot went to a"),
            b_admitted = &mut b_waiter => b_admitted,
        };
        assert!(b_admitted.is_some());
        assert_eq!(limits.waiting(), 1, "a still waits");
        // An open slot given back: a's.
        drop(a_held);
        assert!(a_waiter.await.is_some());
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
