//! The errors callers of [`Groupcache`](crate::Groupcache) can match on.

use std::sync::Arc;

/// Why a [`Groupcache`](crate::Groupcache) call failed.
///
/// Errors are cheap to clone: one failed load is handed to every caller that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This replica's loader failed. The error is not cached: the next `get` loads again.
    /// [`Error::loader_error`] gives back the loader's own error type.
    #[error("loader failed: {0}")]
    Loader(Arc<dyn std::error::Error + Send + Sync>),
    /// The key's owner ran its loader and it failed; only its message crosses the network.
    #[error("loader on the owner {peer} failed: {message}")]
    RemoteLoader {
        /// The owner's URL.
        peer: String,
        /// The owner's error message.
        message: String,
    },
    /// The source has no such key: the loader said so ([`Loader::is_not_found`](crate::Loader::is_not_found)),
    /// here or on the key's owner. The answer is cached for
    /// [`not_found_ttl`](crate::Builder::not_found_ttl), on every replica alike.
    ///
    /// ```
    /// # async fn handler(cache: groupcache_rs::Groupcache<impl groupcache_rs::Loader<Value = String>>) -> Option<String> {
    /// match cache.get("42").await {
    ///     Ok(row) => Some(row),
    ///     Err(groupcache_rs::Error::NotFound) => None, // a 404, say
    ///     Err(_) => None,                               // a 503
    /// }
    /// # }
    /// ```
    #[error("no such key")]
    NotFound,
    /// The key's load failed a moment ago and its error is cached
    /// ([`cache_errors`](crate::Builder::cache_errors)): its message, without a new load.
    #[error("loader failed recently: {message}")]
    LoaderFailedRecently {
        /// The loader's error message.
        message: String,
    },
    /// The loader's circuit breaker is open after a run of failures
    /// ([`circuit_breaker`](crate::Builder::circuit_breaker)): the load was not tried.
    #[error("the source is failing: loads are paused for a moment (circuit breaker open)")]
    CircuitOpen,
    /// The loader panicked. Every caller waiting for that load gets this; the key is not stuck.
    #[error("loader panicked: {0}")]
    LoaderPanicked(String),
    /// [`Loader::load_many`](crate::Loader::load_many) returned without a result for this key.
    #[error("the batch loader returned without a result for this key")]
    NotLoaded,
    /// The load was abandoned before it finished, which happens only when the runtime shuts down.
    #[error("load abandoned before it finished (runtime shutting down)")]
    LoadAbandoned,
    /// Called outside a tokio runtime: a load runs in a task of its own and needs one.
    #[error("no tokio runtime: Groupcache must be called from within a tokio runtime")]
    NoRuntime,
    /// The key is longer than the configured limit.
    #[error("key is {len} bytes, over the limit of {limit}")]
    KeyTooLarge {
        /// The key's length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A value could not be turned into bytes or back (see [`Value`](crate::Value)).
    #[error("value codec: {0}")]
    Codec(Arc<dyn std::error::Error + Send + Sync>),
    /// A peer could not be asked, or answered with something unusable.
    #[error("peer {peer}: {source}")]
    Peer {
        /// The peer's URL.
        peer: String,
        /// What went wrong.
        #[source]
        source: PeerError,
    },
    /// A peer URL given to the membership calls is not an absolute `http://` or `https://` URL.
    #[error("invalid peer URL {0:?}: expected http://host:port or https://host:port[/prefix]")]
    InvalidPeerUrl(String),
    /// The builder was given an invalid setting.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether the source could not give the value now (a loader error, here or on the owner, a
    /// panic, an open circuit, an owner that could not be asked): what a stale value may stand
    /// in for (`Builder::max_stale`). A negative answer, a bad key or a codec error is no such
    /// failure.
    pub(crate) fn is_source_failure(&self) -> bool {
        matches!(
            self,
            Error::Loader(_)
                | Error::RemoteLoader { .. }
                | Error::LoaderPanicked(_)
                | Error::NotLoaded
                | Error::LoadAbandoned
                | Error::LoaderFailedRecently { .. }
                | Error::CircuitOpen
                | Error::Peer { .. }
        )
    }

    /// The loader's own error, if this is a [`Error::Loader`] of type `E`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("row not found")]
    /// struct NotFound;
    ///
    /// let err = groupcache_rs::Error::Loader(Arc::new(NotFound));
    /// assert!(err.loader_error::<NotFound>().is_some());
    /// ```
    pub fn loader_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Loader(source) => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// What went wrong talking to a peer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// Connecting, sending or reading failed (refused, reset, DNS, TLS).
    #[error("request failed: {0}")]
    Request(String),
    /// The peer did not answer within the peer request timeout.
    #[error("timed out")]
    Timeout,
    /// The peer did not accept a connection within the connect timeout: a peer that drops
    /// packets, or one whose listen queue is full for a moment (a burst of connections to a busy
    /// replica). Taken for a dead peer only if nothing else was heard from it lately.
    #[error("connecting to {origin}: timed out after {after:?}")]
    ConnectTimeout {
        /// The peer's `scheme://authority`.
        origin: String,
        /// The connect timeout.
        after: std::time::Duration,
    },
    /// The peer answered with an unexpected status.
    #[error("status {status}: {message}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        message: String,
    },
    /// The peer's body is not a valid message.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The peer stopped answering while the request waited: the failure detector suspected it
    /// (no answer, heartbeats included, within
    /// [`failure_detection`](crate::ClusterBuilder::failure_detection)).
    #[error("the peer stopped answering")]
    Unresponsive,
    /// The peer's value is larger than the configured limit; the rest was not read.
    #[error("value over the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
}
