//! Refresh ahead (stale-while-revalidate): a get of a value past its refresh time answers it at
//! once and has it loaded again in the background, once for the whole cluster.
//!
//! - On the key's owner, a hit due for refresh starts a *refresh*: a load of the key that does
//!   not look in the caches, in the key's load flight, so every get or peer request that misses
//!   meanwhile joins it, and one refresh runs however many callers ask. Its value replaces the
//!   old one only if no `remove` or `set` of the key came since it started (the store's token,
//!   as for any load).
//! - Elsewhere, a hot copy due for refresh asks the owner for the refreshed value, marked
//!   [`REFRESH_HEADER`](crate::wire::protocol::REFRESH_HEADER): the owner joins its refresh (or
//!   starts it) and answers the new value, which replaces the hot copy. Replicas never load the
//!   key themselves, so the source sees one load per refresh time, whichever replicas ask.
//! - A replica starts at most one refresh of a key at a time ([`Refreshing`](super::refreshing::Refreshing)); a refresh that
//!   fails leaves the old value, served until it expires, and the next get after the failure
//!   starts another.

use std::sync::Arc;

use super::journey::{Inner, key_hash};
use super::store::{Asked, Caller, Store};
use crate::caches::Entry;
use crate::error::Error;
use crate::loader::{Loader, now_nanos};
use crate::wire::protocol;

impl<L: Loader> Inner<L> {
    /// A hit of `key` (in the hot cache if `hot`) past its refresh time: refreshes it in the
    /// background, unless a refresh of it runs already. Returns at once.
    pub(crate) fn refresh_ahead(&self, key: &str, hot: bool) {
        // The set first: every get of a key due for refresh passes here until its refresh
        // ends, and only the first goes further.
        let Some(slot) = self.refreshing.start(key_hash(key)) else {
            return;
        };
        let (Some(this), Ok(runtime)) =
            (self.this.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        self.metrics.refresh();
        let key = key.to_owned();
        runtime.spawn(async move {
            this.refresh(&key, hot).await;
            drop(slot);
        });
    }

    /// One refresh of `key`: loaded here if this replica owns it, or asked of its owner for a
    /// hot copy. A main copy this replica no longer owns is left to expire (within
    /// `hot_max_age`, as any copy a ring change took away).
    async fn refresh(self: &Arc<Self>, key: &str, hot: bool) {
        let owner = self.cluster.peers.snapshot().remote_owner(key).cloned();
        match owner {
            None => {
                let store = self.load_store(key, Caller::Local);
                let (refreshed, _) = self.load_as(key, store, false, true).await;
                if let Err(error) = refreshed {
                    tracing::debug!(group = %self.group, %error, "refresh failed; the old value is served until it expires");
                }
            }
            Some(owner) if hot && !owner.is_suspected() && protocol::can_carry(key) => {
                // Taken before asking: a write of the key since keeps the answer out.
                let store = Store::Hot(self.hot.token(key));
                match self.ask(&owner, key, Asked::Refresh).await {
                    Ok(entry) => {
                        owner.trust();
                        self.store(key, entry, store);
                    }
                    Err(error) => {
                        tracing::debug!(group = %self.group, peer = %owner.url, ?error, "refresh from the owner failed; the hot copy is served until it expires");
                    }
                }
            }
            Some(_) => {}
        }
    }

    /// A peer's get marked [`REFRESH_HEADER`](crate::wire::protocol::REFRESH_HEADER): the peer
    /// holds a copy due for refresh. If this replica owns the key and its own copy is due too,
    /// the answer waits for the key's refresh (joining it, or starting it); otherwise it is a
    /// peer's get as any other.
    pub(crate) async fn serve_refresh(self: &Arc<Self>, key: &str) -> Result<Entry, Error> {
        let owned = self.cluster.peers.snapshot().remote_owner(key).is_none();
        let now = now_nanos();
        let due = owned
            && self
                .main
                .get(key, now)
                .is_some_and(|entry| entry.refresh_due(now));
        if !due {
            return self.get(key, Caller::Peer).await;
        }
        let store = self.load_store(key, Caller::Peer);
        self.load_as(key, store, false, true).await.0
    }
}
