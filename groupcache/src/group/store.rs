//! Who asked for a key ([`Caller`]) and which cache its value goes to ([`Store`]): the two
//! choices a key's journey (`journey.rs`) makes, and every batch with it; whom a fetch asks
//! ([`Asked`]) and who answered it ([`Answered`]).

use std::sync::Arc;

use crate::caches::Token;
use crate::cluster::membership::Member;

/// Whom `Inner::ask` asks: the key's owner, or its successor standing in for it; or the owner
/// for the refreshed value of a copy due for refresh (`refresh.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Asked {
    Owner,
    Successor,
    Refresh,
}

/// Who answered a fetch.
pub(crate) enum Answered {
    /// The key's owner.
    Owner,
    /// The successor a hedge asked.
    Successor(Arc<Member>),
    /// This replica, the successor, loaded it for the hedge (kept already).
    Here,
}

/// Who asked for a key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// This replica's application.
    Local,
    /// Another replica, through the router: never forwarded again.
    Peer,
}

/// Which cache a loaded value goes to, with that cache's [`Token`] for the key taken before the
/// value was asked for: a `remove` or `set` of the key since then keeps the value out.
///
/// A value is kept without an age bound only where every replica sends the key's writes: on its
/// owner, under a ring that has been current for at least `hot_max_age` (the time discovery is
/// assumed to take to bring every replica to the same ring). Anything else (a peer's request for
/// a key this replica does not own, a value loaded or set just after a ring change) is served
/// for at most `hot_max_age`, so a write this replica missed is seen within that bound.
#[derive(Clone, Copy)]
pub(crate) enum Store {
    /// This replica owns the key under a settled ring.
    Main(Token),
    /// The main cache, expiring within `hot_max_age`: a key this replica does not own under its
    /// current ring, or owns under a ring too recent to know that others send it the writes.
    Bounded(Token),
    /// Owned by another replica, fetched from it: the hot cache, with a bounded age.
    Hot(Token),
}
