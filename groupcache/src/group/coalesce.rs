//! Coalesced fetches ([`Builder::coalesce_fetches`](crate::Builder::coalesce_fetches)): single
//! gets of keys owned by one peer, gathered while every request slot to it is taken and sent
//! together in one batch when a request returns. No timer: a lone fetch goes at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::Either;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::journey::Inner;
use super::led::{Led, Slot, give_back};
use crate::caches::Entry;
use crate::cluster::membership::Member;
use crate::error::Error;
use crate::flight::{Outcome, Superseded};
use crate::loader::Loader;
use crate::lock;
use crate::trace;

impl<L: Loader> Inner<L> {
    /// How many requests may be in flight to `owner` before its fetches coalesce, if coalescing
    /// is on and the owner takes batches.
    pub(crate) fn coalescing(&self, owner: &Member) -> Option<usize> {
        let in_flight = self.config.coalesce_in_flight;
        (in_flight > 0 && owner.endpoint.batches.load(Ordering::Relaxed)).then_some(in_flight)
    }

    /// A single `get`'s fetch flight under coalescing: it goes at once if fewer than
    /// `max_in_flight` requests to the owner are in flight; otherwise it waits for one of them to
    /// return and travels with every other fetch waiting then, in one batch. No timer: a lone
    /// fetch never waits, and fetches wait only as long as the owner takes to answer.
    pub(crate) async fn fetch_coalesced(
        self: &Arc<Self>,
        key: &str,
        owner: Arc<Member>,
        max_in_flight: usize,
    ) -> (Outcome<Entry>, bool) {
        let this = self.clone();
        self.fetches
            .run(key, move |superseded| {
                // The check and the slot's take, or the push, under one lock, as is a sender's
                // look at the queue when its request returns (`next_chunk`): a fetch is either
                // sent or in a queue that a sender still in flight will take.
                let mut owners = lock(&this.coalescing.owners);
                this.metrics.load_deduped();
                let waiting = owners.entry(owner.url.clone()).or_default();
                if waiting.in_flight < max_in_flight {
                    waiting.in_flight += 1;
                    drop(owners);
                    let key = key.to_owned();
                    // This flight's own task sends it: no task of its own, so a lone fetch costs
                    // what it costs without coalescing.
                    return Either::Left(async move {
                        let mut slot = Slot {
                            coalescing: &this.coalescing,
                            owner: &owner.url,
                            held: true,
                        };
                        let outcome = this.fetch_from(&key, &owner, superseded).await;
                        if let Some(chunk) = this.next_chunk(&mut slot) {
                            // The slot goes with the fetches that waited.
                            slot.held = false;
                            let send = this.clone().send_coalesced(owner.clone(), chunk);
                            tokio::spawn(send.in_current_span());
                        }
                        outcome
                    });
                }
                let (outcome, receiver) = oneshot::channel();
                waiting.queue.push(Led {
                    key: key.to_owned(),
                    outcome,
                    superseded: superseded.clone(),
                    store: this.hot_store(key),
                    also: Vec::new(),
                });
                drop(owners);
                // The wait for a slot, the batch it travels in and that batch's rounds are one
                // request to the owner, bounded by one `peer_timeout` from now: a slot held by
                // slow, unrelated loads must not hold this fetch for their rounds and then for
                // its own batch's.
                let deadline = tokio::time::Instant::now() + this.cluster.config.peer_timeout;
                let key = key.to_owned();
                Either::Right(async move {
                    // The batch that carries it is the trace of the fetch whose slot sends it.
                    let span = tracing::info_span!(
                        trace::COALESCE_WAIT,
                        group = this.group.as_str(),
                        peer = &*owner.url
                    );
                    let answered = tokio::time::timeout_at(deadline, receiver).instrument(span);
                    match answered.await {
                        Ok(answer) => answer.unwrap_or(Err(Error::LoadAbandoned)),
                        Err(_) => Box::pin(this.queued_too_long(&key, &owner, &superseded)).await,
                    }
                })
            })
            .await
    }

    /// A queued fetch whose `peer_timeout` passed before its owner answered: as a request that
    /// timed out, the key is loaded here (or asked of its successor if the owner is suspected by
    /// now), and the owner, whose slot was merely busy, is not suspected for it. Its place in the
    /// queue or the batch stays; whoever answers it finds no one waiting, and a batch that takes
    /// it later finds the value loaded here and does not ask for it.
    async fn queued_too_long(
        self: &Arc<Self>,
        key: &str,
        owner: &Member,
        superseded: &Superseded,
    ) -> Outcome<Entry> {
        tracing::debug!(group = %self.group, peer = %owner.url, key, "queued fetch waited peer_timeout; loading locally");
        let hot = self.hot_store(key);
        if owner.is_suspected() {
            return self.from_successor(key, hot, superseded).await;
        }
        self.load(key, hot, false).await.0
    }

    /// Holds a request slot to `owner`: sends `chunk`, then, while fetches are waiting, sends
    /// them (up to `max_batch_keys` at a time) as each request's answer arrives.
    async fn send_coalesced(self: Arc<Self>, owner: Arc<Member>, mut chunk: Vec<Led>) {
        let mut slot = Slot {
            coalescing: &self.coalescing,
            owner: &owner.url,
            held: true,
        };
        loop {
            if chunk.len() == 1 {
                // One key alone takes the single get's path, as without coalescing.
                for led in chunk {
                    let outcome = (self.fetch_from(&led.key, &owner, led.superseded.clone())).await;
                    led.answer(outcome);
                }
            } else {
                // The slot goes on as soon as the owner's answer (or failure) is known: keys
                // that then need their successor or a local load take that time in the batch's
                // own task, not in the slot that queued fetches wait for.
                let (answered, known) = oneshot::channel();
                let batch = self
                    .clone()
                    .fetch_batch(owner.clone(), chunk, Some(answered));
                tokio::spawn(batch.in_current_span());
                let _ = known.await;
            }
            match self.next_chunk(&mut slot) {
                Some(next) => chunk = next,
                None => return,
            }
        }
    }

    /// When a request returns: the fetches waiting for its slot (up to `max_batch_keys`), or
    /// none, and then the slot is given back, under the lock fetches queue under.
    fn next_chunk(&self, slot: &mut Slot<'_>) -> Option<Vec<Led>> {
        let mut owners = lock(&self.coalescing.owners);
        match owners.get_mut(slot.owner) {
            Some(waiting) if !waiting.queue.is_empty() => {
                let take = waiting.queue.len().min(self.cluster.config.max_batch_keys);
                Some(waiting.queue.drain(..take).collect())
            }
            _ => {
                // An empty queue: nothing is dropped with the entry.
                give_back(&mut owners, slot.owner);
                slot.held = false;
                None
            }
        }
    }
}
