//! A group's writes: `remove` and `set` reach the key's owner first, then every other replica
//! and the replicas that left the ring lately; a member that missed one is sent it again in the
//! background until it answers (the queue is `repairs.rs`). Peers' writes land in
//! [`Inner::store_owned`] and [`Inner::forget`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use groupcache_rs_pb::SetRequest;

use super::journey::{Inner, key_hash, until_unresponsive_peer};
use super::repairs::{MAX_PENDING_REPAIRS, Queued};
use super::store::Store;
use crate::caches::Entry;
use crate::cluster::membership::{Member, Membership};
use crate::error::Error;
use crate::loader::{Loader, to_unix_nanos};

impl<L: Loader> Inner<L> {
    /// [`Groupcache::remove`](crate::Groupcache::remove): the owner first, then every other
    /// replica.
    pub(crate) async fn remove(self: &Arc<Self>, key: &str) -> Result<(), Error> {
        self.check_key(key)?;
        let membership = self.cluster.peers.snapshot();
        let owner = membership.remote_owner(key);
        let on_owner = match owner {
            Some(owner) => self.remove_on_member(owner, key).await,
            None => Ok(()),
        };
        self.forget(key);
        let on_others = self.remove_on_all_but(&membership, owner, key).await;
        on_owner.and(on_others)
    }

    /// [`Groupcache::set`](crate::Groupcache::set) of an encoded `value`.
    pub(crate) async fn set(
        self: &Arc<Self>,
        key: &str,
        value: Bytes,
        expires_at: Option<SystemTime>,
    ) -> Result<(), Error> {
        self.check_key(key)?;
        let entry = Entry::value(value, to_unix_nanos(expires_at));
        let membership = self.cluster.peers.snapshot();
        let owner = membership.remote_owner(key);
        let on_owner = match owner {
            None => {
                self.store_owned(key, entry);
                Ok(())
            }
            Some(owner) => {
                let request = SetRequest {
                    group: self.group.clone(),
                    key: key.to_owned(),
                    value: Some(entry.value),
                    expire: Some(entry.expire),
                };
                let path = self.key_path(owner, key);
                // An owner suspected down is not waited for, nor one that stops answering while
                // the set waits on it (given up once the detector suspects it, as a remove is):
                // it gets the write as a repair.
                let stored = if owner.is_suspected() {
                    Err(crate::PeerError::Unresponsive)
                } else {
                    let sent = self.cluster.client.set(&owner.endpoint, path, &request);
                    until_unresponsive_peer(&self.cluster, owner, sent).await
                };
                self.forget(key);
                if stored.is_err() {
                    self.missed(owner, key);
                }
                stored.map_err(|source| {
                    tracing::warn!(group = %self.group, peer = %owner.url, %source, "set failed on the key's owner");
                    Error::Peer {
                        peer: owner.url.to_string(),
                        source,
                    }
                })
            }
        };
        // Even when the owner failed: the other replicas' copies of the old value go, as a
        // `remove`'s do, so what can still be read of it is at most the owner's.
        let on_others = self.remove_on_all_but(&membership, owner, key).await;
        on_owner.and(on_others)
    }

    /// Stores a value this replica owns (a local `set` or a peer's `PUT`); any load in flight
    /// for the key is superseded and no older hot copy remains.
    ///
    /// Bounded as a load would be (see [`Store`]): a peer whose ring disagrees may `PUT` a key
    /// this replica does not own.
    pub(crate) fn store_owned(&self, key: &str, entry: Entry) {
        self.forget(key);
        let inserted = loop {
            // Stale only after a ring change or a write to the key since: decide again.
            let token = self.main.token(key);
            let membership = self.cluster.peers.snapshot();
            let mut entry = entry.clone();
            if membership.remote_owner(key).is_some()
                || !matches!(self.owned_store(&membership, token), Store::Main(_))
            {
                entry.expire = self.bounded_expiry(entry.expire);
            }
            if let Ok(inserted) = self.main.write_if(key, entry, token) {
                break inserted;
            }
        };
        self.metrics.main.evicted(inserted.evicted);
        self.metrics.hot.evicted(self.hot.trim());
    }

    /// Drops `key` from both caches and keeps loads in flight from caching an older value or
    /// handing it to anyone who asks from now on; the key's next miss here loads, without a
    /// hand-off peek, for `hot_max_age` (`RecentWrites`).
    pub(crate) fn forget(&self, key: &str) {
        // Before the flights let go: a load that starts once they have must see the write.
        // Without the hand-off nothing reads it, and its table is never allocated.
        if !self.cluster.config.handoff_timeout.is_zero() {
            self.recent_writes.record(key_hash(key));
        }
        self.loads.supersede(key);
        self.fetches.supersede(key);
        // The caches publish their sizes themselves.
        self.main.remove(key);
        self.hot.remove(key);
    }

    /// A `DELETE` of `key` on `peer`, given up as soon as the failure detector suspects it.
    async fn remove_on(&self, peer: &Member, key: &str) -> Result<(), Error> {
        let path = self.key_path(peer, key);
        let removed = self.cluster.client.remove(&peer.endpoint, path);
        until_unresponsive_peer(&self.cluster, peer, removed)
            .await
            .map_err(|source| {
            tracing::warn!(group = %self.group, peer = %peer.url, %source, "remove failed on peer");
            Error::Peer {
                peer: peer.url.to_string(),
                source,
            }
        })
    }

    /// Removes `key` from every peer but `owner` (and this replica), all at once; the first
    /// failure, after all were tried. The members of recent rings that are no longer members are
    /// sent the remove as well, since one that left may still serve a copy (as the key's former
    /// owner while its own discovery lags, or from its hot cache to its own clients through its
    /// drain); their failures are logged, not returned: a replica that crashed or drained cannot
    /// be reached, and would fail every remove until its ring is forgotten. With the failure
    /// detector on, only those heard from within its detection time are waited for (a draining
    /// replica answers); the others are sent the remove in the background, so an address that
    /// drops packets never delays a write.
    async fn remove_on_all_but(
        self: &Arc<Self>,
        membership: &Membership,
        owner: Option<&Arc<Member>>,
        key: &str,
    ) -> Result<(), Error> {
        let others = membership
            .others()
            .filter(|peer| owner.is_none_or(|owner| !Arc::ptr_eq(owner, peer)));
        let results =
            futures_util::future::join_all(others.map(|peer| self.remove_on_member(peer, key)));
        let detection_off = self.cluster.config.failure_detection.is_zero();
        let (awaited, silent): (Vec<&Arc<Member>>, Vec<&Arc<Member>>) = membership
            .departed(Instant::now())
            .into_iter()
            .partition(|peer| detection_off || self.cluster.heard_lately(peer));
        if !silent.is_empty() {
            let silent: Vec<Arc<Member>> = silent.into_iter().cloned().collect();
            tokio::spawn(Self::remove_on_departed(
                self.clone(),
                silent,
                key.to_owned(),
            ));
        }
        // Waited for at most the detection time: one that stops answering now is left to its
        // task, as the silent ones are.
        let departed = futures_util::future::join_all(awaited.into_iter().map(|peer| {
            let remove = tokio::spawn(Self::remove_on_departed(
                self.clone(),
                vec![peer.clone()],
                key.to_owned(),
            ));
            let detection = self.cluster.config.failure_detection;
            async move {
                if detection.is_zero() {
                    let _ = remove.await;
                } else {
                    let _ = tokio::time::timeout(detection, remove).await;
                }
            }
        }));
        let (results, _departed) = futures_util::future::join(results, departed).await;
        results.into_iter().collect()
    }

    /// The remove of `key` on replicas that left the ring and have not answered lately, in the
    /// background; failures counted.
    async fn remove_on_departed(self: Arc<Self>, peers: Vec<Arc<Member>>, key: String) {
        let sent = peers.iter().map(|peer| self.remove_on(peer, &key));
        for result in futures_util::future::join_all(sent).await {
            if result.is_err() {
                self.metrics.departed_write_failure();
            }
        }
    }

    /// [`remove_on`](Self::remove_on) a member of the ring; if it misses the write, it is sent
    /// the remove again until it answers (`repairs.rs`). A member suspected down is not waited
    /// for: it has missed the write, and gets it as a repair once it answers again.
    async fn remove_on_member(
        self: &Arc<Self>,
        peer: &Arc<Member>,
        key: &str,
    ) -> Result<(), Error> {
        let removed = if peer.is_suspected() {
            Err(Error::Peer {
                peer: peer.url.to_string(),
                source: crate::PeerError::Unresponsive,
            })
        } else {
            self.remove_on(peer, key).await
        };
        if removed.is_err() {
            self.missed(peer, key);
        }
        removed
    }

    /// `peer`, a member, missed a write of `key`: queues its repair, and starts the task that
    /// sends `peer` its repairs if none runs.
    fn missed(self: &Arc<Self>, peer: &Member, key: &str) {
        match self.repairs.queue(&peer.url, key) {
            Queued::Start => {
                tokio::spawn(Self::repair(Arc::downgrade(self), peer.url.clone()));
            }
            Queued::Running => {}
            Queued::Full => {
                self.metrics.write_repair_dropped();
                tracing::warn!(group = %self.group, peer = %peer.url, limit = MAX_PENDING_REPAIRS, "too many writes wait for replicas that missed them; this one is not repaired");
            }
        }
        self.metrics.write_repairs_pending(self.repairs.pending());
    }

    /// Sends `url` the removes of the keys it missed, until it has them all or is no longer a
    /// member. While it does not answer, the rounds pause (from [`REPAIR_PAUSE`] up to
    /// [`REPAIR_MAX_PAUSE`]), and a round follows as soon as it is heard from again (the failure
    /// detector's heartbeats probe it): a healed partition or a resumed process gets its repairs
    /// within a heartbeat, not a pause and a round that waited on a dead connection. Each key it
    /// takes is then removed here and on every other member as well ([`Self::after_repair`]).
    /// Holds the group weakly: a group dropped ends its repairs.
    async fn repair(this: std::sync::Weak<Self>, url: Arc<str>) {
        let mut rounds = RepairRounds::default();
        loop {
            let Some((this, member)) = rounds.next(&this, &url).await else {
                return;
            };
            let Some(member) = member else {
                // Gone from the ring: its entries are capped at `hot_max_age` on its side, and
                // writes reach it as a replica that left while that lasts.
                let dropped = this.repairs.drop_peer(&url);
                this.metrics.write_repairs_pending(this.repairs.pending());
                tracing::info!(group = %this.group, peer = %url, dropped, "a replica that missed writes left the ring; their repairs are dropped");
                return;
            };
            loop {
                let batch = this.repairs.next(&url, REPAIR_CONCURRENCY);
                if batch.is_empty() {
                    this.metrics.write_repairs_pending(this.repairs.pending());
                    return;
                }
                // Given up as soon as the detector suspects the member (at once while it is
                // suspected): the next round waits for it to be heard from instead.
                let sent = futures_util::future::join_all(batch.iter().map(|(key, _)| {
                    let path = this.key_path(&member, key);
                    let remove = this.cluster.client.remove(&member.endpoint, path);
                    until_unresponsive_peer(&this.cluster, &member, remove)
                }))
                .await;
                let mut answered = true;
                let mut taken = Vec::new();
                for ((key, miss), result) in batch.iter().zip(sent) {
                    match result {
                        Ok(()) => {
                            this.repairs.answered(&url, key, *miss);
                            this.metrics.write_repair();
                            taken.push(key.as_str());
                        }
                        Err(_) => answered = false,
                    }
                }
                this.after_repair(&member, &taken).await;
                this.metrics.write_repairs_pending(this.repairs.pending());
                if !answered {
                    rounds.unanswered(member.clone());
                    break;
                }
                rounds.answered();
            }
        }
    }

    /// `repaired` took the removes of `keys` late: every replica that fetched one it owns from
    /// it before then (it answered again, but had not had its repair yet) holds that old value
    /// as a hot copy, for up to `hot_max_age`. Those copies go now, here and on every other
    /// member, so that what a failed write leaves behind ends with its repair. Best effort: a
    /// member that misses this holds a copy for `hot_max_age` at most, and is not repaired for
    /// it (its copy is not the owner's, which has the write now).
    async fn after_repair(self: &Arc<Self>, repaired: &Member, keys: &[&str]) {
        if keys.is_empty() {
            return;
        }
        let membership = self.cluster.peers.snapshot();
        let others: Vec<&Arc<Member>> = membership
            .others()
            .filter(|member| member.url != repaired.url && !member.is_suspected())
            .collect();
        // Copies are fetched from a key's owner only: the keys it does not own left none.
        let owned = keys.iter().filter(|key| {
            membership
                .remote_owner(key)
                .is_some_and(|owner| owner.url == repaired.url)
        });
        let mut removes = Vec::new();
        for key in owned {
            self.forget(key);
            removes.extend(others.iter().map(|peer| self.remove_on(peer, key)));
        }
        let failed = futures_util::future::join_all(removes)
            .await
            .into_iter()
            .filter(Result::is_err)
            .count();
        if failed > 0 {
            tracing::debug!(group = %self.group, peer = %repaired.url, failed, "copies taken from a repaired replica were not all removed; they expire within hot_max_age");
        }
    }
}

/// Waits until `member` is heard from after `failed_at` (its round failed then) and trusted, or
/// until `pause` after it, whichever comes first; at least [`REPAIR_POLL`]. Polled: it runs only
/// while a member that missed writes does not answer, and a heartbeat's answer is what it waits
/// for.
/// When the next round of repairs to a member goes: after a pause that grows while the member
/// does not answer (from [`REPAIR_PAUSE`] up to [`REPAIR_MAX_PAUSE`]), or as soon as it is heard
/// from again.
#[derive(Default)]
pub(crate) struct RepairRounds {
    /// Set while the member does not answer: it, when its round failed, and the pause.
    unanswered: Option<(Arc<Member>, Instant, Duration)>,
}

impl RepairRounds {
    /// Waits for the next round to the member at `url` of the group `this`; the group (`None`
    /// once dropped, which ends the repairs) and the member (`None` once it left the ring).
    pub(crate) async fn next<L: Loader>(
        &self,
        this: &std::sync::Weak<Inner<L>>,
        url: &str,
    ) -> Option<(Arc<Inner<L>>, Option<Arc<Member>>)> {
        match &self.unanswered {
            Some((member, failed_at, pause)) => until_heard(member, *failed_at, *pause).await,
            None => tokio::time::sleep(REPAIR_PAUSE).await,
        }
        let this = this.upgrade()?;
        let member = (this.cluster.peers.snapshot().others())
            .find(|member| &*member.url == url)
            .cloned();
        Some((this, member))
    }

    /// `member` did not answer this round: the next waits for it, longer each time.
    pub(crate) fn unanswered(&mut self, member: Arc<Member>) {
        let pause = self
            .unanswered
            .as_ref()
            .map_or(REPAIR_PAUSE, |(_, _, pause)| *pause);
        self.unanswered = Some((member, Instant::now(), (pause * 2).min(REPAIR_MAX_PAUSE)));
    }

    /// The member answered: the next round after the first pause.
    pub(crate) fn answered(&mut self) {
        self.unanswered = None;
    }
}

async fn until_heard(member: &Member, failed_at: Instant, pause: Duration) {
    let deadline = failed_at + pause.max(REPAIR_POLL);
    loop {
        let now = Instant::now();
        let wait = REPAIR_POLL.min(deadline.saturating_duration_since(now));
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait).await;
        let heard_since = member
            .endpoint
            .silent_for()
            .is_some_and(|silent| silent < failed_at.elapsed());
        if heard_since && !member.is_suspected() {
            return;
        }
    }
}

/// How often a member that does not answer is checked for an answer since (a heartbeat's):
/// the longest a repair waits once it answers again, beyond the heartbeat itself.
const REPAIR_POLL: Duration = Duration::from_millis(50);

/// The first pause before a member that missed writes is sent them again, and after each round
/// it answered.
const REPAIR_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause between rounds of repairs to a member that does not answer, where nothing
/// else shows that it answers again (the failure detector off: no heartbeats).
const REPAIR_MAX_PAUSE: Duration = Duration::from_secs(1);

/// Repairs sent to one member at once.
const REPAIR_CONCURRENCY: usize = 32;
