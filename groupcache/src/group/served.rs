//! What a group answers its peers, for the cluster's router (`cluster/groups.rs`'s
//! [`Served`]): gets, peeks, batches and writes, never forwarded; and its share of a ring
//! change.

use std::sync::Arc;

use super::journey::{Inner, POPULARITY_WINDOW, key_hash};
use super::store::Caller;
use crate::caches::Entry;
use crate::cluster::groups::{BatchAnswer, Boxed, Served};
use crate::cluster::membership::Membership;
use crate::error::Error;
use crate::loader::Loader;

/// Keys of a batch's first part while no value size is known (nothing in main, nothing seen in
/// the batch yet): the parts after it are sized from its values.
const FIRST_PART_KEYS: usize = 16;

impl<L: Loader> Served for Inner<L> {
    fn max_key_bytes(&self) -> usize {
        self.config.max_key_bytes
    }

    fn count_server_request(&self) {
        self.metrics.server_request();
    }

    fn serve_get<'a>(
        self: Arc<Self>,
        key: &'a str,
        refresh: bool,
    ) -> Boxed<'a, Result<(Entry, f64), Error>> {
        Box::pin(async move {
            // Read, not recorded: the sketch counts this replica's own demand, which decides hot
            // promotion; peers' requests would make keys it never asked for look popular.
            let requests = self.popularity.estimate(key_hash(key));
            let entry = if refresh {
                self.serve_refresh(key).await?
            } else {
                self.get(key, Caller::Peer).await?
            };
            let window = POPULARITY_WINDOW.as_secs_f64() / 60.0;
            Ok((entry, f64::from(requests) / window))
        })
    }

    fn serve_peek(&self, key: &str) -> Option<Entry> {
        self.peek(key)
    }

    fn serve_set(&self, key: &str, entry: Entry) {
        self.store_owned(key, entry);
    }

    fn serve_remove(&self, key: &str) {
        self.forget(key);
    }

    fn serve_purge(&self, hot_only: bool) {
        self.purge_here(hot_only);
    }

    fn serve_batch(
        self: Arc<Self>,
        keys: Vec<String>,
        max_wait: Option<std::time::Duration>,
        cap: usize,
        room: usize,
    ) -> Boxed<'static, Vec<BatchAnswer>> {
        // Each key as a peer's single `GET` is answered (from the caches, or loaded here, never
        // forwarded), by the asker's deadline.
        let deadline = max_wait.map(|wait| tokio::time::Instant::now() + wait);
        Box::pin(async move {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            self.answer_within(&keys, deadline, cap, room).await
        })
    }

    fn ring_changed(self: Arc<Self>, membership: Arc<Membership>) {
        // Loads that read the old ring store nothing as owned now, before `set_peers` returns;
        // then main entries this replica no longer owns are served for at most `hot_max_age`
        // (they stay in main, where the new owner may still find them, rather than push the hot
        // cache's keys out). After `supersede_all`, no entry for a key this ring gives another
        // owner can enter main unbounded, so capping what is there now is enough: the walk over
        // main does it, off the caller's thread (`ring_walk.rs`).
        self.main.supersede_all();
        Self::walk_main(&self, membership);
    }
}

impl<L: Loader> Inner<L> {
    /// A peer's batch of `keys`, answered within `room` bytes of values (see
    /// [`Served::serve_batch`]). The keys are loaded in order, in parts of about as many as the
    /// room left holds at the values' mean size, each part with one `load_many` and within
    /// `deadline`: a batch never has more than a part's values loading beyond its room, where
    /// loading every key at once held all their values until the last was in (1,024 of 256 KiB:
    /// 256 MiB for an answer of 16). A value that does not fit is let go at once, its key asked
    /// for again (owned here, it is found cached then, if the cache kept it).
    async fn answer_within(
        self: &Arc<Self>,
        keys: &[&str],
        deadline: Option<tokio::time::Instant>,
        cap: usize,
        mut room: usize,
    ) -> Vec<BatchAnswer> {
        let mut answers = Vec::with_capacity(keys.len());
        // The values seen so far, for the parts' size.
        let (mut seen, mut seen_bytes) = (0usize, 0usize);
        // The first part is always asked for (what it finds cached is answered, whatever the
        // deadline); a part after it only before the deadline.
        while answers.len() < keys.len()
            && (answers.is_empty()
                || deadline.is_none_or(|deadline| tokio::time::Instant::now() < deadline))
        {
            let mean = match (seen, self.main.items()) {
                (0, 0) => None,
                (0, items) => {
                    Some(usize::try_from(self.main.bytes() / items).unwrap_or(usize::MAX))
                }
                (seen, _) => Some(seen_bytes / seen),
            };
            let part = match mean {
                None if room > 0 => FIRST_PART_KEYS,
                // No room left for a value of the mean size (an empty value still fits).
                Some(mean) if room >= mean => (room / mean.max(1)).max(1),
                _ => break,
            };
            let start = answers.len();
            let part = &keys[start..start + part.min(keys.len() - start)];
            for outcome in self.load_many_by(part, Caller::Peer, deadline).await {
                answers.push(match outcome {
                    None => BatchAnswer::AskAgain,
                    Some(Ok(entry)) => {
                        let bytes = entry.value.len();
                        seen += 1;
                        seen_bytes = seen_bytes.saturating_add(bytes);
                        if bytes > cap {
                            BatchAnswer::Alone
                        } else if bytes <= room {
                            room -= bytes;
                            BatchAnswer::Done(Ok(entry))
                        } else {
                            BatchAnswer::AskAgain
                        }
                    }
                    Some(Err(error)) => BatchAnswer::Done(Err(error)),
                });
            }
        }
        answers.resize_with(keys.len(), || BatchAnswer::AskAgain);
        answers
    }
}

impl<L: Loader> Inner<L> {
    /// The ring changed to `membership` (its loads are superseded already): the entries it
    /// takes away from this replica are capped at now + `hot_max_age`, by the walk over main
    /// (`ring_walk.rs`), which this change starts or joins. Returns without waiting for it.
    fn walk_main(self: &Arc<Self>, membership: Arc<Membership>) {
        // The deadline is the change's, however late the walk reaches an entry.
        let deadline = self.bounded_expiry(0);
        if !self.ring_walk.join(&self.main, membership, deadline) {
            return; // the walking thread takes this change in at its next part
        }
        let group = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("groupcache-ring-walk".to_owned())
            .spawn(move || walk_parts(&group));
        if let Err(error) = spawned {
            tracing::warn!(%error, "no thread for a ring change's walk over main: walked by the caller");
            walk_parts(&Arc::downgrade(self));
        }
    }
}

/// Walks until every change's lap is done, or the group is dropped (its caches with it).
fn walk_parts<L: Loader>(group: &std::sync::Weak<Inner<L>>) {
    while let Some(group) = group.upgrade()
        && group.ring_walk.part(&group.main)
    {}
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::Groupcache;
    use crate::loader::Loaded;

    /// Values of 1,000 bytes, `big` of 5,000; loads counted.
    #[derive(Default)]
    struct Sized(AtomicUsize);

    impl Loader for Arc<Sized> {
        type Value = Vec<u8>;
        type Error = std::io::Error;

        async fn load(&self, key: &str) -> Result<Loaded<Vec<u8>>, Self::Error> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let bytes = if key == "big" { 5000 } else { 1000 };
            Ok(Loaded::new(vec![b'v'; bytes]))
        }
    }

    fn counts(answers: &[BatchAnswer]) -> (usize, usize, usize) {
        let count = |f: fn(&BatchAnswer) -> bool| answers.iter().filter(|a| f(a)).count();
        (
            count(|a| matches!(a, BatchAnswer::Done(Ok(_)))),
            count(|a| matches!(a, BatchAnswer::AskAgain)),
            count(|a| matches!(a, BatchAnswer::Alone)),
        )
    }

    /// A batch of more values than its room loads a first part, keeps what fits, and answers
    /// the rest "ask again" without loading them; asked again, the keys loaded but not sent
    /// come from the cache, in parts sized from the values seen; a value over the cap is
    /// answered "alone".
    #[tokio::test]
    async fn a_batch_loads_in_parts_within_its_room_and_asks_again_for_the_rest() {
        let loader = Arc::new(Sized::default());
        let cache = Groupcache::builder("g", "http://127.0.0.1:1", loader.clone())
            .build()
            .unwrap();
        let inner = cache.inner.clone();
        let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        let answers = inner
            .clone()
            .serve_batch(keys.clone(), None, 4000, 3500)
            .await;
        assert_eq!(
            counts(&answers),
            (3, 37, 0),
            "three values fit in 3,500 bytes"
        );
        assert!(matches!(answers[..3], [BatchAnswer::Done(Ok(_)), ..]));
        assert_eq!(
            loader.0.load(Ordering::SeqCst),
            FIRST_PART_KEYS,
            "a first part loaded, none of the keys after it"
        );
        // Asked again for the rest: the part loaded before is cached, and fills the room.
        let answers = inner
            .clone()
            .serve_batch(keys[3..].to_vec(), None, 4000, 4000)
            .await;
        assert_eq!(counts(&answers), (4, 33, 0), "four values fill 4,000 bytes");
        assert_eq!(loader.0.load(Ordering::SeqCst), FIRST_PART_KEYS, "no load");
        let answers = inner
            .clone()
            .serve_batch(vec!["big".into(), "k39".into()], None, 4000, 4000)
            .await;
        assert_eq!(
            counts(&answers),
            (1, 0, 1),
            "big over the cap, k39 within it"
        );
        assert!(matches!(answers[0], BatchAnswer::Alone));
    }
}
