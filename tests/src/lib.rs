//! Shared harness for the integration tests: real replicas on `127.0.0.1:0` talking real HTTP.
//!
//! Each replica serves its router from a thread with a runtime of its own, so
//! [`Replica::kill`] closes its listener and every open connection at once, as a crashed process
//! would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use groupcache_rs::{Builder, Groupcache, Loaded, Loader};
use tokio::sync::{Semaphore, oneshot, watch};

pub mod child;
pub mod delay_proxy;
pub mod go;
pub mod history;
pub mod netns;
pub mod postgres;
pub mod process;
pub mod raw;

/// A builder for plain HTTP clients in tests. The library's `tls` feature gives reqwest a rustls
/// backend without a crypto provider of its own, so one is installed first (ring, as the library
/// uses); without it `reqwest::Client::new()` panics.
pub fn http_client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// The group every test cluster serves.
pub const GROUP: &str = "test";

/// A running replica.
#[derive(Debug)]
pub struct Replica<L: Loader> {
    /// Its cache.
    pub cache: Groupcache<L>,
    /// The URL peers reach it at (including any mount prefix).
    pub url: String,
    /// The bare `http://127.0.0.1:port`.
    pub addr: SocketAddr,
    serving: Serving,
}

impl<L: Loader> Replica<L> {
    /// Starts a replica whose router is merged at the root.
    pub fn start(configure: impl FnOnce(String) -> Builder<L>) -> Self {
        Self::start_mounted("", configure)
    }

    /// Starts a replica whose router is nested under `prefix` (empty: merged at the root).
    pub fn start_mounted(prefix: &str, configure: impl FnOnce(String) -> Builder<L>) -> Self {
        Self::start_inner("http", prefix, None, configure)
    }

    /// Starts a replica served by the library's own [`groupcache_rs::Server`] (e.g. over TLS, with
    /// `scheme` "https").
    pub fn start_served(
        scheme: &str,
        server: groupcache_rs::Server,
        configure: impl FnOnce(String) -> Builder<L>,
    ) -> Self {
        Self::start_inner(scheme, "", Some(server), configure)
    }

    fn start_inner(
        scheme: &str,
        prefix: &str,
        server: Option<groupcache_rs::Server>,
        configure: impl FnOnce(String) -> Builder<L>,
    ) -> Self {
        let listener = bind();
        let addr = listener.local_addr().expect("local addr");
        let url = format!("{scheme}://{addr}{prefix}");
        let cache = configure(url.clone())
            .build()
            .expect("valid test configuration");
        let app = if prefix.is_empty() {
            axum::Router::new().merge(cache.router())
        } else {
            axum::Router::new().nest(prefix, cache.router())
        };
        Replica {
            cache,
            url,
            addr,
            serving: Serving::start(listener, app, server),
        }
    }

    /// Stops serving and closes every connection, like a killed process.
    pub fn kill(&mut self) {
        self.serving.stop();
    }
}

/// A loopback listener on a free port (and a crypto provider for the tests' own plain clients).
fn bind() -> std::net::TcpListener {
    let _ = http_client();
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback")
}

/// A router served from a thread with a runtime of its own, until stopped or dropped.
#[derive(Debug)]
pub struct Serving {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl Serving {
    /// Serves `app` on `listener` (with `server`'s limits, or axum's plain loop).
    pub fn start(
        listener: std::net::TcpListener,
        app: axum::Router,
        server: Option<groupcache_rs::Server>,
    ) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("replica runtime");
            runtime.block_on(async move {
                use axum::serve::ListenerExt;
                listener.set_nonblocking(true).expect("nonblocking");
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let serving = async move {
                    match server {
                        None => {
                            let listener = listener.tap_io(move |_| {
                                counted.fetch_add(1, Ordering::SeqCst);
                            });
                            axum::serve(listener, app).await
                        }
                        Some(server) => server.serve(listener, app).await,
                    }
                };
                tokio::select! {
                    result = serving => result.expect("serve"),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here drops every connection task: the replica is gone.
        });
        Serving {
            stop: Some(stop),
            thread: Some(thread),
            accepted,
        }
    }

    /// Stops serving and closes every connection, like a killed process.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("replica thread");
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running replica of a [`Cluster`](groupcache_rs::Cluster), whose groups a test builds on
/// it: the cluster's one router serves them all.
#[derive(Debug)]
pub struct ClusterReplica {
    /// The replica's cluster.
    pub cluster: groupcache_rs::Cluster,
    /// The URL peers reach it at.
    pub url: String,
    /// The bare `http://127.0.0.1:port`.
    pub addr: SocketAddr,
    /// Its server, with the count of connections it accepted.
    pub serving: Serving,
}

impl ClusterReplica {
    /// Starts a replica whose cluster `configure` sets up, serving the cluster's router.
    pub fn start(
        configure: impl FnOnce(groupcache_rs::ClusterBuilder) -> groupcache_rs::ClusterBuilder,
    ) -> Self {
        let listener = bind();
        let addr = listener.local_addr().expect("local addr");
        let url = format!("http://{addr}");
        let cluster = configure(groupcache_rs::Cluster::builder(&url))
            .build()
            .expect("valid test configuration");
        let app = axum::Router::new().merge(cluster.router());
        ClusterReplica {
            serving: Serving::start(listener, app, None),
            cluster,
            url,
            addr,
        }
    }

    /// Starts `n` replicas and tells each about all of them.
    pub fn start_cluster(
        n: usize,
        configure: impl Fn(groupcache_rs::ClusterBuilder) -> groupcache_rs::ClusterBuilder,
    ) -> Vec<ClusterReplica> {
        let replicas: Vec<_> = (0..n).map(|_| ClusterReplica::start(&configure)).collect();
        let urls: Vec<&str> = replicas.iter().map(|r| r.url.as_str()).collect();
        for replica in &replicas {
            replica.cluster.set_peers(&urls).expect("valid peer URLs");
        }
        replicas
    }
}

/// Starts `n` replicas and tells each about all of them.
pub fn start_cluster<L: Loader>(
    n: usize,
    mut configure: impl FnMut(String) -> Builder<L>,
) -> Vec<Replica<L>> {
    let replicas: Vec<_> = (0..n).map(|_| Replica::start(&mut configure)).collect();
    connect(&replicas);
    replicas
}

/// Gives every replica the full peer list.
pub fn connect<L: Loader>(replicas: &[Replica<L>]) {
    let urls: Vec<&str> = replicas.iter().map(|r| r.url.as_str()).collect();
    for replica in replicas {
        replica.cache.set_peers(&urls).expect("valid peer URLs");
    }
}

/// Index of the replica that owns `key`, according to the first replica's ring.
pub fn owner_index<L: Loader>(replicas: &[Replica<L>], key: &str) -> usize {
    let owner = replicas[0].cache.owner(key);
    replicas
        .iter()
        .position(|r| r.url == owner)
        .expect("owner is a member")
}

/// The keys `{prefix}0`, `{prefix}1`, ... that `owner_url` owns in `cache`'s ring, in order.
pub fn keys_owned<'a, L: Loader>(
    cache: &'a Groupcache<L>,
    owner_url: &'a str,
    prefix: &'a str,
) -> impl Iterator<Item = String> + 'a {
    (0..)
        .map(move |i| format!("{prefix}{i}"))
        .filter(move |key| cache.owner(key) == owner_url)
}

/// The first key of the form `{prefix}{i}` that `owner_url` owns in `cache`'s ring.
pub fn key_owned<L: Loader>(cache: &Groupcache<L>, owner_url: &str, prefix: &str) -> String {
    keys_owned(cache, owner_url, prefix)
        .next()
        .expect("some key maps to every member")
}

/// The first key of the form `{prefix}{i}` that replica `owner` owns.
pub fn key_owned_by<L: Loader>(replicas: &[Replica<L>], owner: usize, prefix: &str) -> String {
    key_owned(&replicas[0].cache, &replicas[owner].url, prefix)
}

/// Loads counted across a whole cluster (every replica's loader shares one).
#[derive(Default, Debug)]
pub struct Loads {
    per_key: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    started: watch::Sender<usize>,
}

impl Loads {
    /// Loads of `key` so far.
    pub fn of(&self, key: &str) -> usize {
        self.per_key
            .lock()
            .expect("loads lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Loads of all keys so far.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// A copy of the per-key counts.
    pub fn per_key(&self) -> HashMap<String, usize> {
        self.per_key.lock().expect("loads lock").clone()
    }

    /// Waits until at least `n` loads have started.
    pub async fn started(&self, n: usize) {
        let mut started = self.started.subscribe();
        started
            .wait_for(|&count| count >= n)
            .await
            .expect("sender lives in self");
    }
}

/// A loader error, for keys starting with `error:`.
#[derive(Debug, thiserror::Error)]
#[error("no value for {0}")]
pub struct NoValue(pub String);

/// The test loader: value `value:{key}#{generation}`; keys starting with `error:` fail, keys
/// starting with `panic:` panic on their first load; an optional delay and optional gates
/// (each load takes one permit) widen race windows without sleeping in the tests themselves.
///
/// Like a real loader, it reads the source (the generation) first and then takes its time: a
/// write during the delay or the wait at a gate makes the load's value an old one.
#[derive(Clone, Default, Debug)]
pub struct TestLoader {
    /// Shared by every replica of a cluster.
    pub loads: Arc<Loads>,
    /// Bumped by tests to tell a reload from a cached value.
    pub generation: Arc<AtomicUsize>,
    /// How long each load takes.
    pub delay: Duration,
    /// When set, a load waits for a permit.
    pub gate: Option<Arc<Semaphore>>,
    /// When set, the first load of each key waits for a permit; later loads go at once. Holds
    /// one load in flight while a test runs others past it.
    pub gate_first: Option<Arc<Semaphore>>,
}

impl TestLoader {
    /// A loader that answers at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value this loader produces for `key` now.
    pub fn value_for(&self, key: &str) -> String {
        format!("value:{key}#{}", self.generation.load(Ordering::SeqCst))
    }
}

impl Loader for TestLoader {
    type Value = String;
    type Error = NoValue;

    async fn load(&self, key: &str) -> Result<Loaded<String>, NoValue> {
        let count = {
            let mut per_key = self.loads.per_key.lock().expect("loads lock");
            let count = per_key.entry(key.to_owned()).or_default();
            *count += 1;
            *count
        };
        self.loads.total.fetch_add(1, Ordering::SeqCst);
        let value = self.value_for(key);
        self.loads.started.send_modify(|started| *started += 1);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if let Some(gate) = self.gate_first.as_ref().filter(|_| count == 1) {
            gate.acquire().await.expect("gate open").forget();
        }
        if key.starts_with("error:") {
            return Err(NoValue(key.to_owned()));
        }
        if key.starts_with("panic:") && count == 1 {
            panic!("test loader panics on the first load of {key}");
        }
        Ok(Loaded::new(value))
    }
}
