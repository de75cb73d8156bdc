//! What a batch carries: the keys whose fetch flights it leads ([`Led`]), each once
//! ([`once_each`]), and the queues where single fetches wait for a request slot to their owner
//! ([`Coalescing`]). Data only: the batches are sent by `many.rs` and `coalesce.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::store::Store;
use crate::caches::Entry;
use crate::flight::{Outcome, Superseded};
use crate::lock;

/// A key whose fetch flight a `get_many` leads: where its outcome goes.
pub(crate) struct Led {
    pub(crate) key: String,
    pub(crate) outcome: oneshot::Sender<Outcome<Entry>>,
    pub(crate) superseded: Superseded,
    /// Where its value goes, chosen (and its cache's token taken) when its flight started.
    pub(crate) store: Store,
    /// Older flights of the same key, superseded by a write, merged into this one
    /// ([`once_each`]): they get its outcome too.
    pub(crate) also: Vec<oneshot::Sender<Outcome<Entry>>>,
}

impl Led {
    /// Hands `outcome` to the key's flight, and to the older flights merged into it.
    pub(crate) fn answer(self, outcome: Outcome<Entry>) {
        for also in self.also {
            let _ = also.send(outcome.clone());
        }
        // No receiver left is fine: everyone gave up.
        let _ = self.outcome.send(outcome);
    }
}

/// The led keys with each key once. A write takes a key's flight out of the map while it runs
/// (`Flight::supersede`), so a new flight of the key can be led, and queued for the same batch,
/// before the old one is answered; a batch must not carry a key twice (nor a loader's
/// `load_many` see it twice). The flight a write has not superseded decides where the value
/// goes; the superseded one gets the same answer, which is at least as new as the one it would
/// have had.
pub(crate) fn once_each(mut led: Vec<Led>) -> Vec<Led> {
    // Only a superseded flight's key can have been led again: most batches stop here.
    if !led.iter().any(|led| led.superseded.get()) {
        return led;
    }
    led.sort_by(|a, b| a.key.cmp(&b.key));
    let mut once: Vec<Led> = Vec::with_capacity(led.len());
    for mut next in led {
        match once.last_mut() {
            Some(kept) if kept.key == next.key => {
                if kept.superseded.get() && !next.superseded.get() {
                    std::mem::swap(kept, &mut next);
                }
                kept.also.push(next.outcome);
                kept.also.append(&mut next.also);
            }
            _ => once.push(next),
        }
    }
    once
}

/// Coalesced fetches (`Builder::coalesce_fetches`), by owner URL: the requests in flight to each
/// owner and the fetches waiting for one of them to return.
#[derive(Default)]
pub(crate) struct Coalescing {
    pub(crate) owners: Mutex<HashMap<Arc<str>, Waiting>>,
}

/// One owner's coalesced fetches.
#[derive(Default)]
pub(crate) struct Waiting {
    /// Requests in flight, at most the configured number.
    pub(crate) in_flight: usize,
    /// Fetches that found every request slot taken: the next request to return takes them.
    pub(crate) queue: Vec<Led>,
}

/// A request slot to an owner, given back if its sender panics: the last sender's fetches
/// waiting then end with [`Error::LoadAbandoned`] instead of waiting for a sender forever.
pub(crate) struct Slot<'a> {
    pub(crate) coalescing: &'a Coalescing,
    pub(crate) owner: &'a Arc<str>,
    pub(crate) held: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        // Another sender takes the queue; without one, it is dropped (after unlocking).
        let abandoned = give_back(&mut lock(&self.coalescing.owners), self.owner);
        drop(abandoned);
    }
}

/// Gives a request slot to `owner` back; when it was the last, the owner's entry goes, with
/// whatever still waits in its queue.
pub(crate) fn give_back(
    owners: &mut HashMap<Arc<str>, Waiting>,
    owner: &Arc<str>,
) -> Option<Waiting> {
    match owners.get_mut(owner) {
        Some(waiting) if waiting.in_flight > 1 => {
            waiting.in_flight -= 1;
            None
        }
        _ => owners.remove(owner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A led key for `once_each`: its flight superseded or not, and the receiver of its answer.
    fn led(key: &str, superseded: bool) -> (Led, oneshot::Receiver<Outcome<Entry>>) {
        let flag = Superseded::unset();
        if superseded {
            flag.set_for_test();
        }
        let (outcome, receiver) = oneshot::channel();
        let led = Led {
            key: key.to_owned(),
            outcome,
            superseded: flag,
            store: Store::Hot(crate::caches::Token::for_test(u64::from(superseded))),
            also: Vec::new(),
        };
        (led, receiver)
    }

    /// Issue 23: a key whose flight a write superseded can be led again before the old flight
    /// is answered; a batch carries it once, where the newer flight decides what is kept, and
    /// both flights get the answer.
    #[test]
    fn a_key_led_twice_goes_once_and_both_flights_get_the_answer() {
        let (old, old_answer) = led("k", true);
        let (other, other_answer) = led("j", false);
        let (new, new_answer) = led("k", false);
        let once = once_each(vec![old, other, new]);
        let keys: Vec<&str> = once.iter().map(|led| led.key.as_str()).collect();
        assert_eq!(keys, ["j", "k"]);
        let k = once.into_iter().find(|led| led.key == "k").unwrap();
        assert!(!k.superseded.get(), "the newer flight decides what is kept");
        assert!(matches!(k.store, Store::Hot(token) if token == crate::caches::Token::for_test(0)));
        let answer = Entry::value(bytes::Bytes::from_static(b"v"), 0);
        k.answer(Ok(answer));
        for mut receiver in [old_answer, new_answer] {
            assert_eq!(receiver.try_recv().unwrap().unwrap().value, "v");
        }
        drop(other_answer);
        // Without a superseded flight, nothing is touched (nor reordered).
        let (b, _b) = led("b", false);
        let (a, _a) = led("a", false);
        let keys: Vec<String> = once_each(vec![b, a])
            .into_iter()
            .map(|led| led.key)
            .collect();
        assert_eq!(keys, ["b", "a"]);
    }
}
