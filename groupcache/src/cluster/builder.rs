//! Configuration of a [`Cluster`]: the settings every group on it shares.

use std::sync::Arc;
use std::time::Duration;

use super::config::ClusterConfig;
use super::membership::Peers;
use super::ring::RingMode;
use super::{Cluster, ClusterInner, groups::Groups};
use crate::Error;
use crate::metrics::ClusterMetrics;
use crate::trace::{TraceContext, Traced};
use crate::wire::PeerAuth;
use crate::wire::answers::AnswerBudget;
use crate::wire::auth::Refusal;
use crate::wire::client::PeerClient;
use crate::wire::limits::Limits;
use crate::wire::pool::Connections;

impl Cluster {
    /// Starts a builder for this replica, reached by its peers at `self_url` (the exact URL the
    /// other replicas list it under, e.g. `http://10.0.0.1:8080`).
    pub fn builder(self_url: impl Into<String>) -> ClusterBuilder {
        ClusterBuilder {
            self_url: self_url.into(),
            config: ClusterConfig::default(),
            handoff_timeout: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Builds a [`Cluster`]; start with [`Cluster::builder`]. Every setting holds for every group
/// of the cluster, and every replica should use the same.
///
/// ```
/// # use std::time::Duration;
/// use groupcache_rs::{Cluster, RingMode};
///
/// let cluster = Cluster::builder("http://10.0.0.1:8080")
///     .ring_mode(RingMode::GoCompatible)
///     .peer_timeout(Duration::from_secs(2))
///     .build()?;
/// # Ok::<(), groupcache_rs::Error>(())
/// ```
#[must_use]
#[derive(Debug)]
pub struct ClusterBuilder {
    self_url: String,
    config: ClusterConfig,
    handoff_timeout: Option<Duration>,
    #[cfg(feature = "tls")]
    tls: Option<crate::PeerTls>,
}

impl ClusterBuilder {
    /// How keys map to owners (default [`RingMode::Balanced`]); every replica must use the same.
    /// [`RingMode::GoCompatible`] to share a cluster with golang/groupcache replicas.
    pub fn ring_mode(mut self, mode: RingMode) -> Self {
        self.config.ring_mode = mode;
        self
    }

    /// Longest wait for a peer's whole answer (default 10 s). It includes the owner's load, so
    /// keep it above the loaders' worst latency; past it the value is loaded locally.
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.config.peer_timeout = timeout;
        self
    }

    /// Longest wait to connect to a peer, TLS handshake included (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Path under which peers serve the router (default `/_groupcache/`, golang/groupcache's);
    /// every group is served below it, at `{base_path}{group}/{key}`. It must start and end with
    /// `/`. When the application nests the router under a prefix, the prefix belongs in the peer
    /// URLs (`http://10.0.0.1:8080/internal`), not here.
    pub fn base_path(mut self, path: impl Into<String>) -> Self {
        self.config.base_path = path.into();
        self
    }

    /// Largest value accepted from a peer or in a peer's `PUT` (default 16 MiB); a peer sending
    /// more is cut off at the limit.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.config.max_value_bytes = bytes;
        self
    }

    /// Longest a hot copy is served before it is fetched again (default 60 s): the staleness
    /// bound for a replica that missed a `remove` or `set` (e.g. during a partition).
    ///
    /// It bounds every value a replica holds for a key it does not own under its current ring
    /// (hot copies, values loaded for a peer whose ring disagrees, entries it kept from before a
    /// ring change took the key away), and values it stores within this long of a ring change
    /// (it cannot know yet that the others route the key's writes to it). A write missed while
    /// rings disagreed is therefore served for at most this long, provided discovery brings every
    /// replica to the same ring within it. The price: keys loaded just after a ring change are
    /// loaded once more when their bound ends.
    pub fn hot_max_age(mut self, age: Duration) -> Self {
        self.config.hot_max_age = age;
        self
    }

    /// How long an owner that could not be reached (connect failure or timeout) is treated as
    /// down (default 5 s; zero turns it off), for every group. Meanwhile its keys are asked of
    /// their successor on the ring, the member that owns them once the owner is gone, which every
    /// replica picks alike: each key is loaded about once in the cluster during the outage, not
    /// once per replica, and held on the successor under [`hot_max_age`](Self::hot_max_age).
    /// When the time is up, the next request tries the owner again, and one answer trusts it
    /// again.
    pub fn owner_suspicion(mut self, duration: Duration) -> Self {
        self.config.owner_suspicion = duration;
        self
    }

    /// How long a peer may stay silent before it is suspected down (default 1 s; zero turns the
    /// failure detector off). Every peer that speaks this library is sent a heartbeat (a signed
    /// `GET` of the base path, answered at once, before any load) every quarter of this while
    /// nothing was heard from it for an eighth; a peer that answered nothing, heartbeats included, for this long is
    /// suspected for [`owner_suspicion`](Self::owner_suspicion), and the requests waiting on it
    /// leave at once for each key's successor, rather than wait out
    /// [`peer_timeout`](Self::peer_timeout). The next answered heartbeat trusts it again. A
    /// timeout of a peer whose heartbeats are answered (a slow load) does not make it suspected.
    /// golang/groupcache peers are sent no heartbeats and keep the old behaviour: suspected
    /// after a connect failure or a timeout.
    ///
    /// A busy peer costs nothing: any answer counts. An idle one costs 4 heartbeats a second
    /// (with the default); answering one takes about 7.5 µs (BENCHMARKS.md), so 100 idle peers
    /// cost a replica well under 1 % of a core.
    pub fn failure_detection(mut self, silence: Duration) -> Self {
        self.config.failure_detection = silence;
        self
    }

    /// Carries the current span's context in every peer request (get, batch, peek, write,
    /// heartbeat) and gives the span of each request this replica serves its parent from them,
    /// so that a trace goes from the asker's `get` through the owner's load (see [`trace`]).
    /// Default: none, and nothing is added to requests. With the `opentelemetry` feature,
    /// [`W3cTraceContext`](crate::W3cTraceContext) sends W3C `traceparent`.
    ///
    /// [`trace`]: crate::trace
    pub fn trace_context(mut self, context: impl TraceContext) -> Self {
        self.config.trace_context = Some(Traced(Arc::new(context)));
        self
    }

    /// Longest wait for a warm hand-off (default 100 ms with [`RingMode::Balanced`], off with
    /// [`RingMode::GoCompatible`]; zero turns it off). Within
    /// [`hot_max_age`](Self::hot_max_age) of a ring change, a replica's miss of a key it owns
    /// first asks the key's previous owner (its owner in the ring before, or, on a replica that
    /// just joined, the owner it would have without it) for the copy it holds in memory, a peek
    /// that never makes it load, and runs the loader only if none comes back in time. Keys that
    /// move on a join, leave or rolling deploy are thus not reloaded from the source. A
    /// golang/groupcache peer cannot peek (it would load the key instead), so turn it on in a
    /// `GoCompatible` ring only if every replica is this library.
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.handoff_timeout = Some(timeout);
        self
    }

    /// Peer requests the router serves at once, all groups together (default 1024); more wait
    /// for a slot (see [`peer_admission_wait`](Self::peer_admission_wait)), then are answered
    /// 503, and their senders load locally, rather than queue without bound. With several
    /// groups, half of it is reserved in equal shares, one per group, so one group's flood
    /// leaves the others their share.
    pub fn max_concurrent_peer_requests(mut self, requests: usize) -> Self {
        self.config.max_concurrent_peer_requests = requests;
        self
    }

    /// How long a peer request that finds every slot of
    /// [`max_concurrent_peer_requests`](Self::max_concurrent_peer_requests) taken waits for one
    /// (default 1 s, and never longer than a little less than the wait its sender states): the
    /// first slot given back that the request's group may take goes to it. At most four requests
    /// per slot wait; one that finds no room, or no slot in time, is answered 503 and its sender
    /// loads locally. Zero refuses at once. Waiting costs a request no CPU, where refusing at
    /// once let peers that ask again at once take the router's turns from every other request
    /// (BENCHMARKS.md, `groups-flood`).
    pub fn peer_admission_wait(mut self, wait: Duration) -> Self {
        self.config.peer_admission_wait = wait;
        self
    }

    /// Bytes of peers' `PUT` and batch bodies the router reads at once, all groups together
    /// (default 64 MiB; never less than one body of [`max_value_bytes`](Self::max_value_bytes)
    /// plus 4 KiB), shared by groups as
    /// [`max_concurrent_peer_requests`](Self::max_concurrent_peer_requests) is. A body whose
    /// declared length does not fit in what is left is answered 503 before any of it is read, so
    /// bodies held by slow or stalled senders never take more than this.
    pub fn max_buffered_peer_bytes(mut self, bytes: usize) -> Self {
        self.config.max_buffered_peer_bytes = bytes;
        self
    }

    /// Most keys in one batch request (default [`DEFAULT_MAX_BATCH_KEYS`](crate::DEFAULT_MAX_BATCH_KEYS)):
    /// a [`get_many`](crate::Groupcache::get_many) sends an owner its keys in requests of at most
    /// this many, and the router refuses larger batches with 413. Every replica should use the
    /// same.
    pub fn max_batch_keys(mut self, keys: usize) -> Self {
        self.config.max_batch_keys = keys.max(1);
        self
    }

    /// Most value bytes in one batch answer (default
    /// [`DEFAULT_MAX_BATCH_BYTES`](crate::DEFAULT_MAX_BATCH_BYTES), 4 MiB), both read and sent:
    /// the requester tells the owner its limit, and the owner fills an answer up to the smaller
    /// of the two (and what is left of
    /// [`max_batch_answer_bytes`](Self::max_batch_answer_bytes)). The keys past it are asked
    /// for again, in the next answer; a value larger than this is fetched on its own.
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.config.max_batch_bytes = bytes;
        self
    }

    /// Bytes of values all the batch answers this replica builds or sends hold at once, all
    /// groups together (default half of
    /// [`max_buffered_peer_bytes`](Self::max_buffered_peer_bytes): 32 MiB). Each answer takes
    /// its room (up to [`max_batch_bytes`](Self::max_batch_bytes)) from it before its keys are
    /// loaded, loads them in parts that fit the room, keeps what its values fill, and gives
    /// that back once its body is written or dropped. An answer that finds none left answers
    /// every key "ask again", loading nothing; so concurrent batches, honest or not, hold about
    /// this much, however many keys and however large their values.
    pub fn max_batch_answer_bytes(mut self, bytes: usize) -> Self {
        self.config.max_batch_answer_bytes = Some(bytes);
        self
    }

    /// Connects to peers over TLS (`https://` peer URLs): verifies them against `tls`'s CA and
    /// presents its identity, if any, as a client certificate. Without it, `https://` peers
    /// cannot be reached.
    #[cfg(feature = "tls")]
    pub fn peer_tls(mut self, tls: crate::PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Signs every peer request with `auth`'s secret and refuses (401) incoming peer requests
    /// not signed with an accepted one, for every group. Off by default; every replica needs the
    /// same setting. golang/groupcache peers cannot sign, so mixed clusters run without it.
    pub fn peer_auth(mut self, auth: PeerAuth) -> Self {
        self.config.auth = Some(Arc::new(auth));
        self
    }

    /// Builds the cluster: this replica alone in its ring until discovery adds peers. Its
    /// metrics are registered with the `metrics` recorder installed now.
    pub fn build(self) -> Result<Cluster, Error> {
        let mut config = self.config;
        config.handoff_timeout = self.handoff_timeout.unwrap_or(match config.ring_mode {
            RingMode::Balanced => Duration::from_millis(100),
            RingMode::GoCompatible => Duration::ZERO,
        });
        if !(config.base_path.starts_with('/') && config.base_path.ends_with('/')) {
            return Err(Error::Config(format!(
                "base path {:?} must start and end with '/'",
                config.base_path
            )));
        }
        if config.peer_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(Error::Config("timeouts must be longer than zero".into()));
        }
        let peers = Peers::new(
            &self.self_url,
            config.ring_mode,
            &config.base_path,
            config.hot_max_age,
        )?;
        #[cfg(feature = "tls")]
        let connections = Connections::new(
            config.connect_timeout,
            match &self.tls {
                Some(tls) => Some((Arc::new(tls.client_config()?), tls.verified_name())),
                None => None,
            },
        );
        #[cfg(not(feature = "tls"))]
        let connections = Connections::new(config.connect_timeout);
        let metrics = ClusterMetrics::new(&Refusal::ALL.map(Refusal::reason));
        metrics.peers.set(1.0);
        let client = PeerClient::new(
            connections,
            config.peer_timeout,
            config.max_value_bytes,
            config.auth.clone(),
            config.trace_context.clone(),
        );
        // A body carries a value only in a `PUT`; leave room for the message's framing. At least
        // one body of the largest size fits, whatever the budget.
        let body_bytes = config
            .max_buffered_peer_bytes
            .max(config.max_value_bytes.saturating_add(4096));
        let limits = Limits::new(config.max_concurrent_peer_requests, body_bytes);
        let answers = AnswerBudget::new(
            config
                .max_batch_answer_bytes
                .unwrap_or(config.max_buffered_peer_bytes / 2),
        );
        Ok(Cluster {
            inner: Arc::new(ClusterInner {
                limits,
                answers,
                liveness_started: Default::default(),
                self_url: peers.self_url().to_string(),
                peers,
                client,
                metrics,
                groups: Groups::default(),
                config,
            }),
        })
    }
}
