//! The settings a [`Cluster`](crate::Cluster) holds for every group it serves: the wire, the
//! peer port's limits, and the staleness bound that ring changes keep. Set through
//! [`ClusterBuilder`](crate::ClusterBuilder); a group's own settings are in `group/config.rs`.

use std::sync::Arc;
use std::time::Duration;

use super::ring::RingMode;
use crate::trace::Traced;
use crate::wire::PeerAuth;

/// Default [`ClusterBuilder::max_batch_keys`](crate::ClusterBuilder::max_batch_keys): 1024 keys
/// per batch request.
pub const DEFAULT_MAX_BATCH_KEYS: usize = 1024;
/// Default [`ClusterBuilder::max_batch_bytes`](crate::ClusterBuilder::max_batch_bytes): 4 MiB of
/// values per batch answer.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 << 20;

/// Settings the read path, the write path and the router consult, whatever the group.
#[derive(Debug, Clone)]
pub(crate) struct ClusterConfig {
    pub(crate) base_path: String,
    pub(crate) peer_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_value_bytes: usize,
    pub(crate) hot_max_age: Duration,
    pub(crate) owner_suspicion: Duration,
    /// How long a peer may stay silent, heartbeats unanswered, before it is suspected; zero: no
    /// heartbeats (`liveness.rs`).
    pub(crate) failure_detection: Duration,
    /// Zero: no warm hand-off.
    pub(crate) handoff_timeout: Duration,
    pub(crate) auth: Option<Arc<PeerAuth>>,
    pub(crate) max_concurrent_peer_requests: usize,
    /// How long a peer request waits for a slot before it is refused; zero: refused at once.
    pub(crate) peer_admission_wait: Duration,
    pub(crate) max_buffered_peer_bytes: usize,
    pub(crate) max_batch_keys: usize,
    pub(crate) max_batch_bytes: usize,
    /// Bytes of values all batch answers hold at once; `None`: half of `max_buffered_peer_bytes`.
    pub(crate) max_batch_answer_bytes: Option<usize>,
    /// In `GoCompatible`, a peer not heard from yet may be a golang/groupcache replica.
    pub(crate) ring_mode: RingMode,
    /// Carries spans' context between replicas (`trace.rs`); none: nothing is sent.
    pub(crate) trace_context: Option<Traced>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            base_path: "/_groupcache/".to_owned(),
            peer_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            max_value_bytes: 16 << 20,
            hot_max_age: Duration::from_secs(60),
            owner_suspicion: Duration::from_secs(5),
            failure_detection: Duration::from_secs(1),
            handoff_timeout: Duration::ZERO,
            auth: None,
            max_concurrent_peer_requests: 1024,
            peer_admission_wait: Duration::from_secs(1),
            max_buffered_peer_bytes: 64 << 20,
            max_batch_keys: DEFAULT_MAX_BATCH_KEYS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_batch_answer_bytes: None,
            ring_mode: RingMode::default(),
            trace_context: None,
        }
    }
}
