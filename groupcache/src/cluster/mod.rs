//! The cluster: this replica among its peers, shared by every group it serves.
//!
//! A [`Cluster`] owns what does not depend on a group: the membership and the ring
//! (`membership.rs`, `ring.rs`), fed by discovery; suspicion of peers that stopped answering;
//! the peer client and its connection pool; peer authentication and its nonce store; the peer
//! port's limits, shared fairly by the groups (`wire/limits.rs`); and the one router that serves
//! them all (`wire/router.rs`), dispatching by group name (`groups.rs`). Groups are created on it
//! with [`Cluster::group`], each with its own loader, value type and budget.

pub(crate) mod builder;
pub(crate) mod config;
pub(crate) mod groups;
pub(crate) mod latency;
mod liveness;
pub(crate) mod membership;
pub(crate) mod ring;

use std::sync::Arc;

use config::ClusterConfig;
use groups::Groups;
use membership::Peers;

use crate::Error;
use crate::metrics::ClusterMetrics;
use crate::wire::answers::AnswerBudget;
use crate::wire::client::PeerClient;
use crate::wire::limits::Limits;

/// This replica's place in a cluster of replicas: its peers, the ring that maps keys to owners,
/// the connections to peers and the router that serves them, shared by every group it serves
/// (golang/groupcache's `HTTPPool`, galaxycache's `Universe`). Cheap to clone: clones share
/// everything.
///
/// Each group ([`Cluster::group`]) has its own loader, value type, budget and metrics; they all
/// use this one ring, one connection pool, one nonce store and one set of peer-port limits.
/// Serve [`router`](Cluster::router) once, and feed discovery to
/// [`set_peers`](Cluster::set_peers).
///
/// ```no_run
/// use groupcache_rs::{Cluster, Loaded, Loader};
///
/// struct Users;
/// impl Loader for Users {
///     type Value = String;
///     type Error = std::io::Error;
///     async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
///         Ok(Loaded::new(format!("user {key}")))
///     }
/// }
///
/// struct Thumbnails;
/// impl Loader for Thumbnails {
///     type Value = bytes::Bytes;
///     type Error = std::io::Error;
///     async fn load(&self, key: &str) -> Result<Loaded<bytes::Bytes>, Self::Error> {
///         Ok(Loaded::new(bytes::Bytes::from(key.as_bytes().to_vec())))
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = Cluster::builder("http://10.0.0.1:8080").build()?;
/// let users = cluster.group("users", Users).cache_bytes(64 << 20).build()?;
/// let thumbnails = cluster.group("thumbnails", Thumbnails).cache_bytes(256 << 20).build()?;
/// cluster.set_peers(["http://10.0.0.1:8080", "http://10.0.0.2:8080"])?;
///
/// let app = axum::Router::new().merge(cluster.router());
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// tokio::spawn(async move { axum::serve(listener, app).await });
///
/// let name: String = users.get("42").await?;
/// let image: bytes::Bytes = thumbnails.get("42/small").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<ClusterInner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("self_url", &self.inner.self_url)
            .field("peers", &self.peers())
            .field("groups", &self.groups())
            .finish_non_exhaustive()
    }
}

pub(crate) struct ClusterInner {
    pub(crate) self_url: String,
    pub(crate) config: ClusterConfig,
    pub(crate) peers: Peers,
    pub(crate) client: PeerClient,
    pub(crate) metrics: ClusterMetrics,
    pub(crate) groups: Groups,
    pub(crate) limits: Limits,
    /// Bytes of values the batch answers being built or sent hold (`wire/answers.rs`).
    pub(crate) answers: Arc<AnswerBudget>,
    /// Whether the failure detector's loop runs (`liveness.rs`).
    pub(crate) liveness_started: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Adds a peer; returns false if it was already a member. Idempotent.
    pub fn add_peer(&self, url: &str) -> Result<bool, Error> {
        self.inner.watch_liveness();
        self.inner.membership_changed(self.inner.peers.add(url))
    }

    /// Removes a peer; returns false if it was not a member. This replica cannot remove itself
    /// this way (see [`leave`](Cluster::leave)).
    pub fn remove_peer(&self, url: &str) -> Result<bool, Error> {
        self.inner.membership_changed(self.inner.peers.remove(url))
    }

    /// Replaces the set of peers (this replica is added if missing, unless it has
    /// [left](Cluster::leave)); returns whether it changed. The order matters only in
    /// [`RingMode::GoCompatible`](crate::RingMode::GoCompatible), for golang/groupcache's rare
    /// hash collisions: give every replica the same list in the same order.
    pub fn set_peers<I, S>(&self, urls: I) -> Result<bool, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.inner.watch_liveness();
        self.inner.membership_changed(self.inner.peers.set(urls))
    }

    /// Takes this replica out of its own ring for the rest of its life, the first step of a
    /// graceful shutdown: call it on SIGTERM, keep serving through the drain, then exit.
    ///
    /// From then on it owns no key of any group: its own `get`s go to the other members'
    /// owners, and its `remove`s and `set`s reach them. It still answers the peers whose
    /// discovery has not dropped it yet (from its caches, or by loading, as for any peer whose
    /// ring disagrees) and the new owners' hand-off peeks, from what it holds: its entries stay
    /// for at most [`hot_max_age`](crate::ClusterBuilder::hot_max_age), as after any ring change
    /// that took keys away. Peer lists given later (`set_peers`, `add_peer`) keep it out. Alone
    /// in its ring, it stays its only member. Returns whether the ring changed.
    ///
    /// ```
    /// # fn main() -> Result<(), groupcache_rs::Error> {
    /// let (me, other) = ("http://10.0.0.1:8080", "http://10.0.0.2:8080");
    /// let cluster = groupcache_rs::Cluster::builder(me).build()?;
    /// cluster.set_peers([me, other])?;
    /// assert!(cluster.leave()); // on SIGTERM
    /// assert_eq!(cluster.peers(), [other]);
    /// cluster.set_peers([me, other])?; // discovery lags: this replica stays out
    /// assert_eq!(cluster.owner("any key"), other);
    /// # Ok(()) }
    /// ```
    pub fn leave(&self) -> bool {
        let left = self.inner.peers.leave();
        if left {
            tracing::info!("left the ring: serving peers until the drain ends");
        }
        matches!(self.inner.membership_changed(Ok(left)), Ok(true))
    }

    /// The URL of the replica that owns `key` in this replica's ring (possibly this one). The
    /// ring does not depend on the group: a key has the same owner in every group.
    pub fn owner(&self, key: &str) -> String {
        match self.inner.peers.snapshot().owner(key) {
            Some(owner) => owner.url.to_string(),
            None => self.inner.self_url.clone(),
        }
    }

    /// The current members, this replica included (unless it has [left](Cluster::leave)).
    pub fn peers(&self) -> Vec<String> {
        self.inner.peers.urls()
    }

    /// This replica's URL, as the ring knows it.
    pub fn self_url(&self) -> &str {
        &self.inner.self_url
    }

    /// The names of the groups this replica serves now, sorted. A group is served from its
    /// [`build`](crate::Builder::build) until its last handle is dropped.
    pub fn groups(&self) -> Vec<String> {
        self.inner.groups.names()
    }
}

impl ClusterInner {
    /// After a membership change: every group reconsiders what it holds as owned, the peer
    /// gauge follows, and connections to peers that left are closed.
    pub(crate) fn membership_changed(&self, changed: Result<bool, Error>) -> Result<bool, Error> {
        if let Ok(true) = changed {
            let membership = arc_swap::Guard::into_inner(self.peers.snapshot());
            for group in self.groups.all() {
                group.ring_changed(membership.clone());
            }
            self.metrics.peers.set(membership.len() as f64);
            // Connections to peers that left are closed now rather than when they time out.
            self.client.retain_connections(|origin| {
                membership
                    .others()
                    .any(|peer| peer.endpoint.origin() == origin)
            });
        }
        changed
    }
}
