//! Who the replicas are: the ready endpoints of a headless Service, followed with a Kubernetes
//! watch on its EndpointSlices, or a static list.
//!
//! Discovery publishes complete peer sets on a [`tokio::sync::watch`] channel: `None` until the
//! first complete set is known, then `Some(urls)` every time the set changes. The application
//! hands each set to [`groupcache_rs::Cluster::set_peers`] (see [`apply_peers`]): one cluster, whose
//! ring every group of this replica uses.
//!
//! The Kubernetes watcher never gives up: API errors, dropped watches and `410 Gone` (the watch's
//! resource version was compacted away) are logged and retried with a capped exponential backoff,
//! and the last known set stays in force meanwhile. A relist replaces the set in one step, once
//! the list is complete, so a relist never shrinks the ring on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use groupcache_rs::Cluster;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::AddressType;

/// A set of peer URLs, as the groupcache ring knows them.
pub type PeerSet = BTreeSet<String>;

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What to watch and how to turn endpoints into peer URLs.
#[derive(Debug, Clone)]
pub struct KubeDiscovery {
    /// Namespace of the Service.
    pub namespace: String,
    /// The headless Service's name.
    pub service: String,
    /// The Service port to use (with a single unnamed port, that one).
    pub port_name: String,
    /// The slices to read in a dual-stack cluster.
    pub address_type: AddressType,
    /// URL scheme of the peers.
    pub scheme: &'static str,
    /// Appended to `scheme://address:port` to make a peer URL (where the router is nested).
    pub path_prefix: String,
    /// Delays between retries after errors.
    pub backoff: Backoff,
    /// Slices per list request (the API server pages longer lists).
    pub page_size: u32,
}

/// A capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s doubling up to 30 s, close to client-go's reflector.
    fn default() -> Self {
        Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// After this long without an error, the next one starts the backoff over (a quiet watch
/// delivers no event that could reset it).
const BACKOFF_RESET: Duration = Duration::from_secs(120);

impl Backoff {
    /// The delay before retry number `attempt` (0-based): `min * 2^attempt`, capped at `max`,
    /// then scaled by a random factor in [0.5, 1] so that replicas do not retry in step.
    fn delay(&self, attempt: u32) -> Duration {
        let full = self
            .min
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        // Jitter from the clock: good enough to spread replicas, no random number generator.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let scale = 0.5 + f64::from(nanos % 1000) / 2000.0;
        full.mul_f64(scale)
    }
}

/// Follows the EndpointSlices of `config.service` and publishes the ready endpoints' URLs on
/// `peers`. Runs until every receiver of `peers` is gone; never fails.
pub async fn watch_endpoint_slices(
    client: kube::Client,
    config: KubeDiscovery,
    peers: watch::Sender<Option<PeerSet>>,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &config.namespace);
    let selector = format!("{SERVICE_NAME_LABEL}={}", config.service);
    let mut events = std::pin::pin!(watcher(
        api,
        watcher::Config::default()
            .labels(&selector)
            .page_size(config.page_size)
    ));
    let mut slices = Slices::default();
    let mut failures: u32 = 0;
    let mut last_failure = Instant::now();
    tracing::info!(
        namespace = %config.namespace,
        service = %config.service,
        "watching EndpointSlices"
    );
    while let Some(event) = events.next().await {
        if peers.is_closed() {
            return;
        }
        match event {
            Ok(event) => {
                if failures > 0 && !matches!(event, watcher::Event::Init) {
                    tracing::info!(after_failures = failures, "watching EndpointSlices again");
                    failures = 0;
                }
                if slices.apply(event, &config) {
                    publish(&peers, slices.peers());
                }
            }
            Err(error) => {
                if last_failure.elapsed() > BACKOFF_RESET {
                    failures = 0;
                }
                last_failure = Instant::now();
                let delay = config.backoff.delay(failures);
                failures = failures.saturating_add(1);
                crate::metrics::discovery_error(error_reason(&error));
                if is_gone(&error) {
                    tracing::warn!(
                        %error,
                        retry_in = ?delay,
                        "watch expired (410 Gone); listing again"
                    );
                } else {
                    tracing::warn!(
                        %error,
                        retry_in = ?delay,
                        failures,
                        "EndpointSlice watch failed; keeping the last known peers"
                    );
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
    // `watcher` streams never end; this is unreachable in practice.
    tracing::error!("the EndpointSlice watch stream ended");
}

/// Publishes a fixed set once.
pub fn static_peers(urls: PeerSet, peers: &watch::Sender<Option<PeerSet>>) {
    publish(peers, urls);
}

fn publish(peers: &watch::Sender<Option<PeerSet>>, set: PeerSet) {
    peers.send_if_modified(|current| {
        if current.as_ref() == Some(&set) {
            return false;
        }
        *current = Some(set);
        true
    });
}

/// Applies every published peer set to the cluster (the ring of every group on it), for as long
/// as `peers` is open; calls `on_first` once the first set is in the ring.
pub async fn apply_peers(
    cluster: Cluster,
    mut peers: watch::Receiver<Option<PeerSet>>,
    on_first: impl FnOnce() + Send,
) {
    let mut on_first = Some(on_first);
    loop {
        let set = peers.borrow_and_update().clone();
        if let Some(set) = set {
            let before: PeerSet = cluster.peers().into_iter().collect();
            match cluster.set_peers(&set) {
                Ok(false) => {}
                Ok(true) => {
                    let now: PeerSet = cluster.peers().into_iter().collect();
                    let added: Vec<&String> = now.difference(&before).collect();
                    let removed: Vec<&String> = before.difference(&now).collect();
                    tracing::info!(peers = now.len(), ?added, ?removed, "peers changed");
                }
                Err(error) => tracing::error!(%error, "discovery produced an invalid peer URL"),
            }
            if let Some(on_first) = on_first.take() {
                on_first();
            }
        }
        if peers.changed().await.is_err() {
            return;
        }
    }
}

fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// A short label for the discovery error counter: one of
/// [`DISCOVERY_ERROR_REASONS`](crate::metrics::DISCOVERY_ERROR_REASONS).
fn error_reason(error: &watcher::Error) -> &'static str {
    match error {
        watcher::Error::InitialListFailed(_) => "list",
        watcher::Error::WatchStartFailed(_) => "watch_start",
        watcher::Error::WatchError(status) if status.code == 410 => "gone",
        watcher::Error::WatchError(_) => "watch_event",
        watcher::Error::WatchFailed(_) => "watch_stream",
        watcher::Error::NoResourceVersion => "no_resource_version",
    }
}

/// The peers each EndpointSlice contributes, by slice name.
#[derive(Debug, Default)]
struct Slices {
    current: BTreeMap<String, PeerSet>,
    /// A relist in progress: it replaces `current` once complete.
    relisting: Option<BTreeMap<String, PeerSet>>,
    /// Whether `current` has been complete at least once.
    synced: bool,
}

impl Slices {
    /// Applies one watcher event; returns whether the published set may have changed.
    fn apply(&mut self, event: watcher::Event<EndpointSlice>, config: &KubeDiscovery) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(slice) => {
                let name = slice.name_any();
                let urls = slice_peers(&slice, config);
                self.relisting.get_or_insert_default().insert(name, urls);
                false
            }
            watcher::Event::InitDone => {
                self.current = self.relisting.take().unwrap_or_default();
                self.synced = true;
                true
            }
            watcher::Event::Apply(slice) => {
                let urls = slice_peers(&slice, config);
                self.current.insert(slice.name_any(), urls);
                self.synced
            }
            watcher::Event::Delete(slice) => {
                self.current.remove(&slice.name_any());
                self.synced
            }
        }
    }

    fn peers(&self) -> PeerSet {
        self.current.values().flatten().cloned().collect()
    }
}

/// The URLs of a slice's ready endpoints, on the configured port.
fn slice_peers(slice: &EndpointSlice, config: &KubeDiscovery) -> PeerSet {
    let name = slice.name_any();
    if slice.address_type != config.address_type.as_str() {
        tracing::debug!(
            slice = %name,
            address_type = %slice.address_type,
            "ignoring a slice of another address type"
        );
        return PeerSet::new();
    }
    let Some(port) = slice_port(slice, &config.port_name) else {
        tracing::warn!(
            slice = %name,
            port = %config.port_name,
            "slice has no such port; ignoring it"
        );
        return PeerSet::new();
    };
    let endpoints = slice.endpoints.iter().flatten();
    endpoints
        // `ready` unset means "unknown", which consumers are told to treat as ready; the
        // controller sets it to false for pods that are not ready or are terminating.
        .filter(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        // The controller puts exactly one address in each endpoint; the others are fungible.
        .filter_map(|endpoint| endpoint.addresses.first())
        .map(|address| {
            let host = match address.parse::<IpAddr>() {
                Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
                _ => address.clone(),
            };
            format!("{}://{host}:{port}{}", config.scheme, config.path_prefix)
        })
        .collect()
}

fn slice_port(slice: &EndpointSlice, name: &str) -> Option<u16> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = match ports {
        [only] if only.name.as_deref().unwrap_or_default().is_empty() => only,
        _ => ports
            .iter()
            .find(|port| port.name.as_deref().unwrap_or_default() == name)?,
    };
    port.port.and_then(|port| u16::try_from(port).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use kube::api::ObjectMeta;

    fn config() -> KubeDiscovery {
        KubeDiscovery {
            namespace: "ns".into(),
            service: "svc".into(),
            port_name: "http".into(),
            address_type: AddressType::IPv4,
            scheme: "http",
            path_prefix: "/internal".into(),
            backoff: Backoff::default(),
            page_size: 500,
        }
    }

    fn slice(
        name: &str,
        address_type: &str,
        ports: &[(Option<&str>, i32)],
        endpoints: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            address_type: address_type.into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port)| EndpointPort {
                        name: name.map(Into::into),
                        port: Some(*port),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(address, ready)| Endpoint {
                        addresses: vec![(*address).into()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            ..EndpointConditions::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
        }
    }

    fn set(urls: &[&str]) -> PeerSet {
        urls.iter().map(|url| (*url).to_owned()).collect()
    }

    #[test]
    fn ready_endpoints_on_the_named_port() {
        let s = slice(
            "a",
            "IPv4",
            &[(Some("metrics"), 9000), (Some("http"), 8080)],
            &[
                ("10.0.0.1", Some(true)),
                ("10.0.0.2", Some(false)),
                ("10.0.0.3", None),
            ],
        );
        assert_eq!(
            slice_peers(&s, &config()),
            set(&[
                "http://10.0.0.1:8080/internal",
                "http://10.0.0.3:8080/internal"
            ])
        );
    }

    #[test]
    fn single_unnamed_port_missing_port_and_other_families() {
        let s = slice("a", "IPv4", &[(None, 7000)], &[("10.0.0.1", Some(true))]);
        assert_eq!(
            slice_peers(&s, &config()),
            set(&["http://10.0.0.1:7000/internal"])
        );
        let s = slice(
            "a",
            "IPv4",
            &[(Some("grpc"), 7000)],
            &[("10.0.0.1", Some(true))],
        );
        assert!(slice_peers(&s, &config()).is_empty());
        let s = slice(
            "a",
            "IPv6",
            &[(Some("http"), 80)],
            &[("fd00::1", Some(true))],
        );
        assert!(slice_peers(&s, &config()).is_empty());
        let v6 = KubeDiscovery {
            address_type: AddressType::IPv6,
            ..config()
        };
        assert_eq!(slice_peers(&s, &v6), set(&["http://[fd00::1]:80/internal"]));
    }

    #[test]
    fn a_relist_replaces_the_set_only_when_complete() {
        let config = config();
        let mut slices = Slices::default();
        let a = slice(
            "a",
            "IPv4",
            &[(Some("http"), 80)],
            &[("10.0.0.1", Some(true))],
        );
        let b = slice(
            "b",
            "IPv4",
            &[(Some("http"), 80)],
            &[("10.0.0.2", Some(true))],
        );
        assert!(!slices.apply(watcher::Event::Init, &config));
        assert!(!slices.apply(watcher::Event::InitApply(a.clone()), &config));
        assert!(!slices.apply(watcher::Event::InitApply(b.clone()), &config));
        assert!(slices.apply(watcher::Event::InitDone, &config));
        assert_eq!(slices.peers().len(), 2);
        // A relist that no longer has `b`: the set stays whole until the list is done.
        slices.apply(watcher::Event::Init, &config);
        slices.apply(watcher::Event::InitApply(a.clone()), &config);
        assert_eq!(slices.peers().len(), 2);
        slices.apply(watcher::Event::InitDone, &config);
        assert_eq!(slices.peers(), set(&["http://10.0.0.1:80/internal"]));
        slices.apply(watcher::Event::Apply(b.clone()), &config);
        assert_eq!(slices.peers().len(), 2);
        slices.apply(watcher::Event::Delete(a), &config);
        assert_eq!(slices.peers(), set(&["http://10.0.0.2:80/internal"]));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let backoff = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 0..40 {
            let delay = backoff.delay(attempt);
            let full = Duration::from_millis(100 << attempt.min(4)).min(Duration::from_secs(1));
            assert!(delay <= full && delay >= full / 2, "{attempt}: {delay:?}");
        }
    }
}
