//! The failure detector: heartbeats to the peers that speak this library, so that a replica
//! learns within [`failure_detection`](crate::ClusterBuilder::failure_detection) that a peer
//! stopped answering (frozen, paused, black-holed), and the requests waiting on it leave for each
//! key's successor (`Member::until_suspected`) instead of waiting out `peer_timeout`.
//!
//! Any answer is evidence of life (`Endpoint::heard`): a peer that answers requests is sent no
//! heartbeat. One heartbeat per peer is in flight at a time, sent every quarter of the detection
//! time while nothing was heard from it for an eighth. A peer silent for the whole detection
//! time, its latest heartbeat unanswered, is suspected; the next heartbeat it answers trusts it
//! again. A peer that is slow to load but answers heartbeats (the router answers them before any
//! slot or load) is never suspected. golang/groupcache peers cannot answer heartbeats and are
//! never sent one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::ClusterInner;
use super::membership::Member;

impl ClusterInner {
    /// Starts the detector once, if it is on and a tokio runtime is at hand (it is started again
    /// from the next request or ring change otherwise).
    pub(crate) fn watch_liveness(self: &Arc<Self>) {
        if self.config.failure_detection.is_zero() || self.liveness_started.load(Ordering::Relaxed)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.liveness_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = Running(Arc::downgrade(self));
        runtime.spawn(heartbeats(Arc::downgrade(self), running));
    }

    /// Suspects `member` for `owner_suspicion`, counted and logged once per suspicion; whether
    /// it is suspected now.
    pub(crate) fn suspect_member(&self, member: &Member, why: &dyn std::fmt::Display) -> bool {
        let duration = self.config.owner_suspicion;
        if duration.is_zero() {
            return false;
        }
        if member.suspect(duration) {
            self.metrics.peer_suspicion();
            tracing::warn!(peer = %member.url, %why, suspected_for = ?duration, "peer suspected down; its keys go to their successors");
        }
        true
    }

    /// Whether `member` answered anything within the detection time: alive, however slow its
    /// loads. Always false with the detector off.
    pub(crate) fn heard_lately(&self, member: &Member) -> bool {
        let detection = self.config.failure_detection;
        !detection.is_zero()
            && member
                .endpoint
                .silent_for()
                .is_some_and(|silent| silent < detection)
    }
}

/// Marks the detector stopped when its task ends, however it ends: a runtime shut down drops it,
/// and the next request or ring change starts it again on the runtime then at hand (a cluster
/// built in one runtime and used in another keeps its detector).
struct Running(Weak<ClusterInner>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(cluster) = self.0.upgrade() {
            cluster.liveness_started.store(false, Ordering::Release);
        }
    }
}

/// The detector's loop: every quarter of the detection time, a heartbeat to each peer of ours
/// not heard from for half that long. Holds the cluster weakly: a cluster dropped ends it.
async fn heartbeats(cluster: Weak<ClusterInner>, _running: Running) {
    loop {
        let interval = {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            let detection = cluster.config.failure_detection;
            let interval = (detection / 4).max(Duration::from_millis(10));
            let membership = cluster.peers.snapshot();
            for member in membership.others() {
                // Ours only: a golang/groupcache peer would answer 400, and never batches.
                let ours = member.endpoint.batches.load(Ordering::Relaxed);
                // Half the interval, not all of it: silence counts from the last answer, a
                // round trip after the heartbeat left, and this loop wakes a little after its
                // interval, so "a whole interval" skipped every other tick for a peer more than
                // a millisecond away, and a freeze took up to 1.5 s to detect, not about 1 s
                // (BENCHMARKS.md, `detectors`).
                let quiet = member
                    .endpoint
                    .silent_for()
                    .is_some_and(|silent| silent >= interval / 2);
                if ours && quiet && !member.heartbeat_in_flight.swap(true, Ordering::AcqRel) {
                    tokio::spawn(heartbeat(cluster.clone(), member.clone()));
                }
            }
            interval
        };
        tokio::time::sleep(interval).await;
    }
}

/// One heartbeat to `member`: trusted again if it answers; suspected if it does not and nothing
/// else was heard from it for the detection time.
async fn heartbeat(cluster: Arc<ClusterInner>, member: Arc<Member>) {
    let detection = cluster.config.failure_detection;
    let answered = cluster
        .client
        .heartbeat(&member.endpoint, member.path.clone(), detection)
        .await;
    member.heartbeat_in_flight.store(false, Ordering::Release);
    match answered {
        Ok(()) => {
            if member.is_suspected() {
                tracing::info!(peer = %member.url, "peer answers again: trusted");
            }
            member.trust();
        }
        Err(error) => {
            let silent = member.endpoint.silent_for().unwrap_or(Duration::MAX);
            if silent >= detection {
                cluster.suspect_member(&member, &format_args!("no answer for {silent:?}: {error}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Cluster;

    /// Heartbeats go only to peers that speak this library (an answer of theirs advertised
    /// batches): a golang/groupcache peer cannot answer one, and keeps the old behaviour. Both
    /// peers here answered once and are quiet since; the detector connects to ours only.
    #[tokio::test]
    async fn heartbeats_go_to_peers_of_ours_only_not_to_go_peers() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        /// A peer that accepts connections, holds them and never answers; its URL, its port and
        /// the connections it accepted.
        async fn silent_peer() -> (String, u16, Arc<AtomicUsize>) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let accepted = Arc::new(AtomicUsize::new(0));
            let counter = accepted.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    held.push(stream);
                }
            });
            (format!("http://127.0.0.1:{port}"), port, accepted)
        }
        let (go, _, go_connections) = silent_peer().await;
        let (ours, our_port, our_connections) = silent_peer().await;
        let cluster = Cluster::builder("http://127.0.0.1:1")
            .failure_detection(Duration::from_millis(100))
            .build()
            .unwrap();
        cluster
            .set_peers(["http://127.0.0.1:1", go.as_str(), ours.as_str()])
            .unwrap();
        for member in cluster.inner.peers.snapshot().others() {
            let is_ours = member.endpoint.port == our_port;
            member.endpoint.heard();
            member.endpoint.batches.store(is_ours, Ordering::Relaxed);
            member.endpoint.plain.store(!is_ours, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            our_connections.load(Ordering::SeqCst) > 0,
            "a quiet peer of ours was sent no heartbeat"
        );
        assert_eq!(
            go_connections.load(Ordering::SeqCst),
            0,
            "a golang/groupcache peer was sent a heartbeat"
        );
    }

    /// A cluster whose first runtime is gone: the detector starts again on the next one.
    #[test]
    fn the_detector_starts_again_on_another_runtime() {
        let cluster = Cluster::builder("http://127.0.0.1:1").build().unwrap();
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        first.block_on(async {
            cluster
                .set_peers(["http://127.0.0.1:1", "http://127.0.0.1:2"])
                .unwrap();
            assert!(
                cluster
                    .inner
                    .liveness_started
                    .load(std::sync::atomic::Ordering::Acquire)
            );
        });
        drop(first);
        assert!(
            !cluster
                .inner
                .liveness_started
                .load(std::sync::atomic::Ordering::Acquire),
            "the detector's task died with its runtime"
        );
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        second.block_on(async {
            cluster.inner.watch_liveness();
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(
                cluster
                    .inner
                    .liveness_started
                    .load(std::sync::atomic::Ordering::Acquire)
            );
        });
    }
}
