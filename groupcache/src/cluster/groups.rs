//! The groups a cluster serves, by name: what the router and a ring change ask of a group,
//! whatever its loader ([`Served`]), and the registry that adds and drops groups while requests
//! are in flight.
//!
//! A request looks its group up once and holds it (an `Arc`) until it is answered, so a group
//! dropped meanwhile finishes the requests it has, and only new ones get 404.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::membership::Membership;
use crate::Error;
use crate::caches::Entry;
use crate::flight::Outcome;
use crate::lock;
use crate::wire::limits::Share;

/// A boxed future that may move between threads.
pub(crate) type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the cluster asks of one of its groups: peers' requests (the router never forwards them),
/// and the caches' share of a ring change.
pub(crate) trait Served: Send + Sync + 'static {
    /// Longest key the group takes.
    fn max_key_bytes(&self) -> usize;
    /// Counts a peer's get or batch in the group's `server_requests`.
    fn count_server_request(&self);
    /// A peer's `GET`: the value and this replica's request rate for the key (per minute).
    fn serve_get<'a>(
        self: Arc<Self>,
        key: &'a str,
        refresh: bool,
    ) -> Boxed<'a, Result<(Entry, f64), Error>>;
    /// A peer's peek: the value if this replica holds it in memory. Never loads.
    fn serve_peek(&self, key: &str) -> Option<Entry>;
    /// A peer's `PUT`.
    fn serve_set(&self, key: &str, entry: Entry);
    /// A peer's `DELETE`.
    fn serve_remove(&self, key: &str);
    /// A peer's purge of the group: both caches emptied, or only the hot one (`hot_only`, the
    /// purge's second wave).
    fn serve_purge(&self, hot_only: bool);
    /// A peer's batch: one answer per key, in order, whose values take at most `room` bytes
    /// together; a value over `cap` (the most any answer carries) is to be asked for alone.
    /// Keys are loaded in parts sized to the room left, so a batch holds about `room` bytes of
    /// values however many keys it names; the keys past it, and those still loading after
    /// `max_wait` (the load goes on), are to be asked for again.
    fn serve_batch(
        self: Arc<Self>,
        keys: Vec<String>,
        max_wait: Option<std::time::Duration>,
        cap: usize,
        room: usize,
    ) -> Boxed<'static, Vec<BatchAnswer>>;
    /// The ring changed to `membership`: what the group holds as owned is reconsidered (loads
    /// under the old ring superseded at once, main's entries walked in the background).
    fn ring_changed(self: Arc<Self>, membership: Arc<Membership>);
}

/// One key's answer in a batch an owner serves ([`Served::serve_batch`]).
#[derive(Debug)]
pub(crate) enum BatchAnswer {
    /// Its value, or why there is none.
    Done(Outcome<Entry>),
    /// Not answered in this answer (no room left, or still loading by the asker's deadline):
    /// ask again, in another batch.
    AskAgain,
    /// Larger than any answer carries: ask for it on its own.
    Alone,
}

/// A group as the registry holds it.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) group: Arc<dyn Served>,
    /// What the group's peer requests hold of the replica's limits now.
    pub(crate) share: Arc<Share>,
    /// Tells this registration from a later one under the same name.
    id: u64,
}

/// The groups of one cluster, by name. Reads are lock-free; adding and dropping are serialised.
pub(crate) struct Groups {
    by_name: ArcSwap<HashMap<Arc<str>, Registered>>,
    changing: Mutex<()>,
    next_id: AtomicU64,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            by_name: ArcSwap::from_pointee(HashMap::new()),
            changing: Mutex::new(()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl Groups {
    /// The group named `name`, if the cluster serves one, and how many groups it serves.
    pub(crate) fn lookup(&self, name: &str) -> Option<(Registered, usize)> {
        let groups = self.by_name.load();
        Some((groups.get(name)?.clone(), groups.len()))
    }

    /// Every group's name, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.load().keys().map(|n| n.to_string()).collect();
        names.sort_unstable();
        names
    }

    /// Every group, for a ring change.
    pub(crate) fn all(&self) -> Vec<Arc<dyn Served>> {
        let groups = self.by_name.load();
        groups.values().map(|r| r.group.clone()).collect()
    }

    /// Registers `group` as `name`; the registration's id, for [`remove`](Self::remove). Fails
    /// if the name is taken: two groups of one name would answer each other's peers.
    pub(crate) fn add(&self, name: &str, group: Arc<dyn Served>) -> Result<u64, Error> {
        let _changing = lock(&self.changing);
        let current = self.by_name.load_full();
        if current.contains_key(name) {
            return Err(Error::Config(format!(
                "a group named {name:?} already exists in this cluster"
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut next = HashMap::clone(&current);
        let registered = Registered {
            group,
            share: Arc::default(),
            id,
        };
        next.insert(Arc::from(name), registered);
        self.by_name.store(Arc::new(next));
        Ok(id)
    }

    /// Drops the registration `id` of `name`, if it is still the current one. Requests that hold
    /// the group already finish; new ones get 404.
    pub(crate) fn remove(&self, name: &str, id: u64) {
        let _changing = lock(&self.changing);
        let current = self.by_name.load_full();
        if current
            .get(name)
            .is_none_or(|registered| registered.id != id)
        {
            return;
        }
        let mut next = HashMap::clone(&current);
        next.remove(name);
        self.by_name.store(Arc::new(next));
    }
}
