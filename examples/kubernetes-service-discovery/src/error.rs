//! Why the service could not start, or stopped.

use crate::database::DbError;

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag or environment variable has an unusable value.
    #[error("configuration: {0}")]
    Config(String),
    /// The database could not be reached or migrated at start.
    #[error("database: {0}")]
    Database(#[from] DbError),
    /// The cache could not be built.
    #[error("groupcache: {0}")]
    Cache(#[from] groupcache_rs::Error),
    /// The Prometheus recorder could not be installed.
    #[error("metrics exporter: {0}")]
    Metrics(String),
    /// No Kubernetes client configuration was found (in a pod: the service account).
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// A listen address (`--listen` or `--peer-listen`) could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signal(#[source] std::io::Error),
}
