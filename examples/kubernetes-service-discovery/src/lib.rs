//! An axum service whose replicas share one [`groupcache_rs`]: the example of deploying the library
//! on Kubernetes.
//!
//! - [`cli`]: `cachectl`, the command line for a running cluster;
//! - [`config`]: flags and environment variables;
//! - [`api`]: the REST API (items, admin views, the OpenAPI document), errors as problem
//!   details;
//! - [`database`]: the source of truth and the cache's loader: PostgreSQL (`--database-url`) or
//!   a simulated database;
//! - [`discovery`]: the peer set, from a watch on the EndpointSlices of a headless Service or
//!   from a static list;
//! - [`state`]: what the handlers share (the two groups' caches, the database, readiness);
//! - [`service`]: the routes (the API, `/metrics`, `/healthz`, `/readyz`, and the peer
//!   protocol under [`config::PEER_PREFIX`], on the same port or one of its own) and graceful
//!   shutdown;
//! - [`error`]: why the service could not start or stopped;
//! - [`run`]: all of it together, as the binary runs it: one groupcache [`Cluster`] with two
//!   groups, `items` and `categories`, fed by one discovery and served by one peer router.

#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod config;
pub mod database;
pub mod discovery;
pub mod error;
pub mod metrics;
pub mod service;
pub mod state;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use groupcache_rs::Cluster;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::items::MAX_KEY_BYTES;
use crate::config::{CATEGORY_GROUP, Config, Discovery, peer_url};
use crate::database::Database;
use crate::database::categories::Categories;
use crate::discovery::{Backoff, KubeDiscovery, PeerSet};
pub use crate::error::Error;
use crate::service::Shutdown;
use crate::state::{AppState, Readiness};

/// Runs the service until SIGTERM or SIGINT. Call it inside a multi-threaded tokio runtime.
pub async fn run(config: Config) -> Result<(), Error> {
    // Before the cache is built: it registers its metrics with the recorder installed now.
    let metrics = metrics::install()?;

    let (listener, bound) = bind(config.listen).await?;
    let peer_listener = match config.peer_listen.own() {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    // Where the peer protocol is served: the URLs of the ring point there.
    let peer_bound = peer_listener.as_ref().map_or(bound, |(_, addr)| *addr);
    let self_base = config.self_base_url(peer_bound)?;
    let replica = config
        .replica_name
        .clone()
        .unwrap_or_else(|| self_base.clone());
    // Checked before the database is reached: a bad flag fails the start at once.
    let refresh_ahead = config.item_refresh_ahead()?;
    let admin_token = config.admin_token()?.map(Arc::new);
    let database = match &config.database_url {
        Some(url) => {
            let postgres =
                database::postgres::Postgres::connect(url, config.database_max_connections).await?;
            tracing::info!("connected to PostgreSQL; schema up to date");
            tokio::spawn(
                postgres
                    .clone()
                    .sweep_expired(config.database_sweep_interval),
            );
            Database::postgres(postgres, config.item_ttl, replica.as_str())
        }
        None => Database::simulated(config.load_latency, config.item_ttl, replica.as_str()),
    };
    let database = database.refresh_ahead(refresh_ahead);
    // One cluster: the ring, the peer client, authentication and TLS, shared by both groups.
    let peer_tls = config.peer_tls()?;
    let mut cluster = Cluster::builder(peer_url(&self_base));
    if let Some(tls) = &peer_tls {
        cluster = cluster.peer_tls(tls.clone());
    }
    if config.otlp_endpoint.is_some() {
        cluster = cluster.trace_context(groupcache_rs::W3cTraceContext);
    }
    let peer_auth = config.peer_auth()?;
    let peer_auth_on = peer_auth.is_some();
    if let Some(auth) = peer_auth {
        cluster = cluster.peer_auth(auth);
    }
    let cluster = cluster.build()?;
    // Two groups, each with its own loader, value type, budget and load limits: the replica's
    // cache memory is the sum of the two. The API refuses longer keys itself, with problem
    // details (and the same limit). Items missing from the database are negative answers, kept
    // briefly; an item whose reload fails is served stale for a while (the refresh ahead is the
    // loader's: `Database::refresh_ahead`).
    let items = cluster
        .group(&config.group, database.clone())
        .max_key_bytes(MAX_KEY_BYTES)
        .not_found_ttl(config.not_found_ttl)
        .max_stale(config.item_max_stale);
    let items = config.item_loads().apply(items);
    let cache = config.item_budget().apply(items).build()?;
    let categories = cluster
        .group(CATEGORY_GROUP, Categories::new(database.clone()))
        .max_key_bytes(MAX_KEY_BYTES);
    let categories = config.category_loads().apply(categories);
    let categories = config.category_budget().apply(categories).build()?;
    if let Some(warning) = config.exposure_warning(peer_bound) {
        // Loud: on stderr as well as in the log, where a person starting it by hand looks.
        eprintln!("WARNING: {warning}");
        tracing::warn!("{warning}");
    }

    let readiness = Arc::new(Readiness::default());
    let (peers_tx, peers_rx) = watch::channel(None::<PeerSet>);
    match config.discovery() {
        Discovery::Static(urls) => {
            let mut set = BTreeSet::new();
            for url in &urls {
                set.insert(peer_url(&config.peer_base_url(url)?));
            }
            tracing::info!(peers = set.len(), "static peer list");
            discovery::static_peers(set, &peers_tx);
            // Keep the channel open: `apply_peers` runs for as long as it is.
            tokio::spawn(async move { peers_tx.closed().await });
        }
        Discovery::Kubernetes { service, namespace } => {
            let client = kube::Client::try_default().await?;
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            // Peers are reached the way this replica is.
            let scheme = config.peer_scheme();
            let discovery = KubeDiscovery {
                namespace,
                service,
                port_name: config.kube_port_name().to_owned(),
                address_type: config.kube_address_type,
                scheme,
                path_prefix: config::PEER_PREFIX.to_owned(),
                backoff: Backoff::default(),
                page_size: 500,
            };
            tokio::spawn(discovery::watch_endpoint_slices(
                client, discovery, peers_tx,
            ));
        }
    }
    // Ready once the first peer list is in the ring.
    let ready = readiness.clone();
    tokio::spawn(discovery::apply_peers(
        cluster.clone(),
        peers_rx,
        move || {
            ready.set_discovered();
        },
    ));

    let app = service::router(AppState {
        cache,
        categories,
        database,
        metrics,
        readiness: readiness.clone(),
        replica: Arc::from(replica.as_str()),
        admin_token,
    });
    // One peer router for every group of the cluster.
    let peer_app = service::peer_router(&cluster);
    // `groupcache_rs::Server` on both ports, for its header-read deadline (slowloris); on the peer
    // port with mTLS when configured (clap allows TLS only with a peer port of its own).
    let server = groupcache_rs::Server::new();
    let servers = match peer_listener {
        Some((peer_listener, _)) => {
            let peer_server = match &peer_tls {
                Some(tls) => server.clone().tls(tls.server_config(true)?),
                None => server.clone(),
            };
            vec![
                (listener, app, server),
                (peer_listener, peer_app, peer_server),
            ]
        }
        None => vec![(listener, app.merge(peer_app), server)],
    };
    tracing::info!(
        listen = %bound,
        peer_listen = %peer_bound,
        peer_tls = peer_tls.is_some(),
        peer_auth = peer_auth_on,
        self_url = %cluster.self_url(),
        groups = ?cluster.groups(),
        replica,
        "listening"
    );
    let shutdown = Shutdown {
        delay: config.shutdown_delay,
        timeout: config.shutdown_timeout,
    };
    // On SIGTERM, this replica tells discovery (`/readyz` turns 503: the endpoint controller
    // marks its endpoint unready, and the other replicas drop it) and leaves its own ring at once,
    // before they do: its own gets and writes go to the keys' next owners from then on, while it
    // still answers peers (their gets, and the hand-off peeks of its keys' new owners) through
    // the drain.
    service::serve(servers, readiness, shutdown, move || {
        cluster.leave();
    })
    .await
}

/// Binds `addr`. Returns the listener and its local address (the port the system picked, if
/// `addr`'s is 0).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), Error> {
    let bind_error = |source| Error::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}
