//! Hedged fetches ([`Builder::hedge_fetches`](crate::Builder::hedge_fetches)): a fetch whose
//! owner has answered nothing at all for longer than its answers usually take is asked of the
//! key's successor too, and whichever answers first is taken.
//!
//! The owner's stall must be shorter than the failure detection (a paused process, a long GC,
//! a CPU-throttled pod, a lost packet's retransmission): a longer one makes it suspected, and the
//! fetch leaves for the successor anyway (`until_unresponsive`). A hedge goes
//!
//! - after the owner's usual answer time (`Latency::slow_after`: mean plus four deviations of its
//!   answers, at least [`HEDGE_FLOOR`], at most half the detection time), and only while the
//!   owner has answered nothing, to anyone, for that long: an owner that keeps answering other
//!   requests is alive and this key's load is merely slow, so it is left to finish (the owner's
//!   "pending" answer says as much, later);
//! - to the key's successor, the member every replica picks, which loads the key once for all
//!   of them (its load flight) and keeps it under the staleness bound, so the source sees at
//!   most one extra load per key however many replicas hedge; or, when this replica is the
//!   successor, loaded here as such;
//! - at most once per fetch flight, which every caller on this replica of the key shares.
//!
//! No hedge for an owner never heard from (no estimate yet), a successor that is the owner, is
//! suspected, or cannot stand in for it (a golang/groupcache replica: `stands_in`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::journey::Inner;
use super::store::Store;
use super::store::{Answered, Asked};
use crate::caches::Entry;
use crate::cluster::membership::Member;
use crate::loader::Loader;
use crate::wire::client::Failure;

/// The shortest hedge delay, whatever the owner's answers took: below it, a scheduler's or a
/// busy core's hiccup would send hedges for owners that are merely a little late.
pub(crate) const HEDGE_FLOOR: Duration = Duration::from_millis(20);

impl<L: Loader> Inner<L> {
    /// The key from `owner`, hedged if hedging is on and the owner has answered before.
    pub(crate) async fn ask_owner(
        self: &Arc<Self>,
        owner: &Arc<Member>,
        key: &str,
    ) -> Result<(Entry, Answered), Failure> {
        match self.hedge_delay(owner) {
            // Boxed: the race and the successor's request would size every fetch's task.
            Some(delay) => Box::pin(self.ask_hedged(owner, key, delay)).await,
            None => self
                .ask(owner, key, Asked::Owner)
                .await
                .map(|entry| (entry, Answered::Owner)),
        }
    }

    /// How long the owner may stay silent before a fetch to it is hedged; `None`: no hedging.
    fn hedge_delay(&self, owner: &Member) -> Option<Duration> {
        if !self.config.hedge {
            return None;
        }
        let usual = owner.endpoint.latency.slow_after()?;
        Some(usual.max(HEDGE_FLOOR).min(self.hedge_window() / 2))
    }

    /// How long after a fetch is sent a hedge may still go: the failure detection time, after
    /// which a silent owner is suspected and the fetch leaves it anyway, and a request still
    /// unanswered from an owner that answers others is a slow load, not a stall.
    fn hedge_window(&self) -> Duration {
        let config = &self.cluster.config;
        if config.failure_detection.is_zero() {
            config.peer_timeout * 3 / 4
        } else {
            config.failure_detection
        }
    }

    async fn ask_hedged(
        self: &Arc<Self>,
        owner: &Arc<Member>,
        key: &str,
        delay: Duration,
    ) -> Result<(Entry, Answered), Failure> {
        // Owned, so that when the hedge wins the owner's request can finish in a task of its
        // own rather than be dropped: dropping it closes its connection, and reconnecting to an
        // owner that just stalled (every hedged request at once, when it resumes) costs more
        // than the answer; the answer also still counts in its latency estimate.
        let mut asked = Box::pin({
            let (this, owner, key) = (self.clone(), owner.clone(), key.to_owned());
            async move { this.ask(&owner, &key, Asked::Owner).await }
        });
        let sent = Instant::now();
        let window_ends = sent + self.hedge_window();
        let mut hedge_at = sent + delay;
        loop {
            tokio::select! {
                biased;
                answered = &mut asked => return answered.map(|entry| (entry, Answered::Owner)),
                () = tokio::time::sleep_until(hedge_at) => {}
            }
            match owner.endpoint.silent_for() {
                // Heard lately: alive. Hedge only if it then falls silent for the whole delay.
                Some(silent) if silent < delay => hedge_at = Instant::now() + (delay - silent),
                _ => break,
            }
            if hedge_at >= window_ends {
                return asked.await.map(|entry| (entry, Answered::Owner));
            }
        }
        let Some(successor) = self.hedge_target(owner, key) else {
            return asked.await.map(|entry| (entry, Answered::Owner));
        };
        self.metrics.hedge();
        tracing::debug!(group = %self.group, peer = %owner.url, successor = %successor.url, key, ?delay, "owner silent; hedging the fetch to the key's successor");
        let hedged = self.ask_for_hedge(&successor, key);
        tokio::pin!(hedged);
        tokio::select! {
            biased;
            answered = &mut asked => match answered {
                Ok(entry) => Ok((entry, Answered::Owner)),
                // The owner's loader failed: an answer, as without a hedge.
                Err(Failure::Loader(message)) => Err(Failure::Loader(message)),
                Err(error) => match hedged.await {
                    Ok(won) => Ok(self.hedge_won(won)),
                    Err(_) => Err(error),
                },
            },
            hedge = &mut hedged => match hedge {
                Ok(won) => {
                    tokio::spawn(asked);
                    Ok(self.hedge_won(won))
                }
                // The successor failed: the owner's answer is still the one that counts.
                Err(_) => asked.await.map(|entry| (entry, Answered::Owner)),
            },
        }
    }

    /// The hedge's answer, counted.
    fn hedge_won(&self, won: (Entry, Answered)) -> (Entry, Answered) {
        self.metrics.hedge_won();
        won
    }

    /// The key's successor, if it can stand in for `owner`.
    fn hedge_target(&self, owner: &Member, key: &str) -> Option<Arc<Member>> {
        let successor = self.cluster.peers.snapshot().successor(key).cloned()?;
        let eligible = successor.url != owner.url
            && !successor.is_suspected()
            && (successor.is_self || self.stands_in(&successor));
        eligible.then_some(successor)
    }

    /// The hedge itself: the successor asked, or, when that is this replica, the key loaded here
    /// as the successor keeps it (`from_successor`), in the load flight peers' hedges join.
    async fn ask_for_hedge(
        self: &Arc<Self>,
        successor: &Arc<Member>,
        key: &str,
    ) -> Result<(Entry, Answered), Failure> {
        if successor.is_self {
            let store = Store::Bounded(self.main.token(key));
            return match self.load(key, store, false).await.0 {
                Ok(entry) => Ok((entry, Answered::Here)),
                Err(error) => Err(Failure::Loader(error.to_string())),
            };
        }
        let entry = self.ask(successor, key, Asked::Successor).await?;
        Ok((entry, Answered::Successor(successor.clone())))
    }
}
