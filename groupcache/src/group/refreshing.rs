//! The keys this replica is refreshing ahead now (`refresh.rs`): one refresh per key at a time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::lock;

/// The keys this replica is refreshing now, by hash: a second get of a key due for refresh
/// while its refresh runs starts none. Two keys with one hash share a refresh slot: the second
/// is refreshed by its next get after the first's refresh ends.
#[derive(Debug, Default)]
pub(crate) struct Refreshing {
    keys: Arc<Mutex<HashSet<u64>>>,
}

/// A key's place in [`Refreshing`], given back when the refresh ends, however it ends (its
/// task dropped unrun included).
#[derive(Debug)]
pub(crate) struct Slot {
    keys: Arc<Mutex<HashSet<u64>>>,
    hash: u64,
}

impl Refreshing {
    /// The slot of the key with `hash`, if no refresh of it runs.
    pub(crate) fn start(&self, hash: u64) -> Option<Slot> {
        lock(&self.keys).insert(hash).then(|| Slot {
            keys: Arc::clone(&self.keys),
            hash,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.keys).remove(&self.hash);
    }
}
