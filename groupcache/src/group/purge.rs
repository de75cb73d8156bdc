//! Purge: a group emptied on every replica in one call ([`Groupcache::purge`](crate::Groupcache::purge)),
//! O(1) per replica (`Cache::purge` swaps the structures for empty ones), without a pause in gets.
//!
//! Two waves, as a `remove` reaches the owner before the others:
//! 1. every member empties both caches and supersedes its loads and fetches in flight: from then
//!    on no owner answers a value from before the purge;
//! 2. every member empties its hot cache again: a copy fetched during the first wave from an
//!    owner the wave had not reached yet goes. A fetch that took its hot cache's token before
//!    the second wave cannot store after it; one that took it later asks owners already purged.
//!
//! A member that misses the first wave is sent the purge again in the background until it
//! answers or leaves the ring, as a missed `remove` is (`repairs.rs`), and then the second wave
//! goes to every member again, for copies fetched from it meanwhile. golang/groupcache replicas
//! have no purge (they would take it for a get of the key `_purge`): they are not sent it, and
//! the call fails for them.

use std::sync::Arc;

use super::journey::{Inner, until_unresponsive_peer};
use super::writes::RepairRounds;
use crate::cluster::membership::Member;
use crate::error::Error;
use crate::loader::Loader;
use crate::wire::protocol::{PURGE_HOT_KEY, PURGE_KEY};

impl<L: Loader> Inner<L> {
    /// [`Groupcache::purge`](crate::Groupcache::purge): both waves, on this replica and every
    /// member; the first failure, after every member was tried.
    pub(crate) async fn purge(self: &Arc<Self>) -> Result<(), Error> {
        let membership = self.cluster.peers.snapshot();
        self.purge_here(false);
        let first = futures_util::future::join_all(
            membership
                .others()
                .map(|peer| self.purge_member(peer.clone())),
        )
        .await;
        let second = self.purge_hot_everywhere().await;
        first.into_iter().collect::<Result<(), Error>>().and(second)
    }

    /// Empties this replica's caches of the group (only the hot one if `hot_only`), and makes
    /// the loads and fetches in flight store nothing and answer no caller from now on.
    pub(crate) fn purge_here(&self, hot_only: bool) {
        if !hot_only {
            self.loads.supersede_all();
            self.main.purge();
            self.metrics.purge();
        }
        self.fetches.supersede_all();
        self.hot.purge();
    }

    /// The second wave: every member's hot cache, and this replica's.
    async fn purge_hot_everywhere(self: &Arc<Self>) -> Result<(), Error> {
        self.purge_here(true);
        let membership = self.cluster.peers.snapshot();
        let sent = membership
            .others()
            .map(|peer| self.purge_on(peer, PURGE_HOT_KEY));
        futures_util::future::join_all(sent)
            .await
            .into_iter()
            .collect()
    }

    /// The first wave on `peer`; if it misses it, the purge is sent again until it answers.
    async fn purge_member(self: &Arc<Self>, peer: Arc<Member>) -> Result<(), Error> {
        let purged = if peer.is_suspected() {
            Err(Error::Peer {
                peer: peer.url.to_string(),
                source: crate::PeerError::Unresponsive,
            })
        } else {
            self.purge_on(&peer, PURGE_KEY).await
        };
        if purged.is_err() && self.stands_in(&peer) && self.repairs.queue_purge(&peer.url) {
            tokio::spawn(Self::repair_purge(Arc::downgrade(self), peer.url.clone()));
        }
        purged
    }

    /// One purge request (`what`: [`PURGE_KEY`] or [`PURGE_HOT_KEY`]) to `peer`, given up as
    /// soon as the failure detector suspects it. Refused for a golang/groupcache peer.
    async fn purge_on(&self, peer: &Member, what: &str) -> Result<(), Error> {
        let failed = |source| Error::Peer {
            peer: peer.url.to_string(),
            source,
        };
        if !self.stands_in(peer) {
            return Err(failed(crate::PeerError::Status {
                status: 501,
                message: "golang/groupcache has no purge".to_owned(),
            }));
        }
        let path = self.key_path(peer, what);
        let sent = self.cluster.client.purge(&peer.endpoint, path);
        until_unresponsive_peer(&self.cluster, peer, sent)
            .await
            .map_err(failed)
            .inspect_err(|error| {
                tracing::warn!(group = %self.group, %error, "purge failed on a peer");
            })
    }

    /// Sends the purge to `url` until it answers (then the second wave to everyone) or leaves
    /// the ring; rounds follow its recovery as a missed write's repairs do.
    async fn repair_purge(this: std::sync::Weak<Self>, url: Arc<str>) {
        let mut rounds = RepairRounds::default();
        loop {
            let Some((this, member)) = rounds.next(&this, &url).await else {
                return;
            };
            let Some(member) = member else {
                this.repairs.purge_done(&url);
                return;
            };
            if this.purge_on(&member, PURGE_KEY).await.is_ok() {
                this.repairs.purge_done(&url);
                // Copies fetched from it before it took the purge.
                let _ = this.purge_hot_everywhere().await;
                return;
            }
            rounds.unanswered(member);
        }
    }
}
