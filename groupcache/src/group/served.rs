//! What a group answers its peers, for the cluster's router (`cluster/groups.rs`'s
//! [`Served`]): gets, peeks, batches and writes, never forwarded; and its share of a ring
//! change.

use std::sync::Arc;

use super::journey::{Inner, POPULARITY_WINDOW, key_hash};
use super::store::Caller;
use crate::caches::Entry;
use crate::cluster::groups::{Boxed, Served};
use crate::cluster::membership::Membership;
use crate::error::Error;
use crate::flight::Outcome;
use crate::loader::Loader;

impl<L: Loader> Served for Inner<L> {
    fn max_key_bytes(&self) -> usize {
        self.config.max_key_bytes
    }

    fn count_server_request(&self) {
        self.metrics.server_request();
    }

    fn serve_get<'a>(self: Arc<Self>, key: &'a str) -> Boxed<'a, Result<(Entry, f64), Error>> {
        Box::pin(async move {
            // Read, not recorded: the sketch counts this replica's own demand, which decides hot
            // promotion; peers' requests would make keys it never asked for look popular.
            let requests = self.popularity.estimate(key_hash(key));
            let entry = self.get(key, Caller::Peer).await?;
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

    fn serve_batch(
        self: Arc<Self>,
        keys: Vec<String>,
        max_wait: Option<std::time::Duration>,
    ) -> Boxed<'static, Vec<Option<Outcome<Entry>>>> {
        // Each key as a peer's single `GET` is answered (from the caches, or loaded here, never
        // forwarded), with one `load_many` for the keys to load, by the asker's deadline.
        let deadline = max_wait.map(|wait| tokio::time::Instant::now() + wait);
        Box::pin(async move {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            self.load_many_by(&keys, Caller::Peer, deadline).await
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
        self.walk_main(membership);
    }
}
