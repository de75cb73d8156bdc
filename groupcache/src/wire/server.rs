//! Serving the peer port with the limits a port open to the network needs: a deadline for reading
//! request headers (slowloris), a deadline for the TLS handshake, a bound on open connections and
//! on each one's read buffer (so headers cannot grow without bound), and TLS when configured.
//!
//! `axum::serve` offers neither a header deadline nor TLS; this is that loop, on hyper's HTTP/1.1
//! server. Use it for the port peers reach; your own routes may be merged into the same router.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Serves a router with connection limits.
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// groupcache_rs::Server::new()
///     .header_read_timeout(std::time::Duration::from_secs(5))
///     .serve(listener, app)
///     .await
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct Server {
    header_read_timeout: Duration,
    max_connections: usize,
    max_header_bytes: usize,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Server");
        debug.field("header_read_timeout", &self.header_read_timeout);
        debug.field("max_connections", &self.max_connections);
        debug.field("max_header_bytes", &self.max_header_bytes);
        #[cfg(feature = "tls")]
        debug.field("tls", &self.tls.is_some());
        debug.finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    /// Plain HTTP/1.1 with a 10 s header deadline, at most 4096 connections and 16 KiB of
    /// buffered request head per connection.
    pub fn new() -> Self {
        Server {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_header_bytes: 16 << 10,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Longest time a client may take to send a request's headers, and (with TLS) to finish the
    /// handshake; a connection that is slower is closed.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Most connections open at once (default 4096). Past it the server stops accepting until one
    /// closes: new connections wait in the listen backlog, and are refused by the kernel when it
    /// is full. Each costs the file descriptor and its buffers (see
    /// [`max_header_bytes`](Self::max_header_bytes)).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// Largest request head (request line and headers) a connection buffers, in bytes (default
    /// 16 KiB, at least 8 KiB); a larger one is answered 431 and the connection closed. Peer
    /// requests' heads are about 300 bytes. Also bounds how much of a body the connection
    /// buffers ahead of the router.
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        // hyper's minimum read buffer.
        self.max_header_bytes = bytes.max(8192);
        self
    }

    /// Serves over TLS with this rustls configuration, e.g. from
    /// [`PeerTls::server_config`](crate::PeerTls::server_config), which can require client
    /// certificates (mTLS).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// Accepts connections until the listener itself is broken (`EBADF`, `EINVAL`, `ENOTSOCK`);
    /// every other accept error, such as running out of file descriptors or a connection that
    /// failed before it was accepted, is logged and waited out. Connections are tasks of this
    /// future: dropping it closes them, requests in progress included.
    pub async fn serve(self, listener: TcpListener, app: Router) -> io::Result<()> {
        self.serve_with_shutdown(listener, app, std::future::pending())
            .await
    }

    /// Like [`serve`](Server::serve), until `shutdown` completes: then it stops accepting,
    /// lets every connection finish the request it is serving (idle connections close at once,
    /// busy ones after their answer) and returns once all are closed. Bound the wait with a
    /// timeout of your own if requests may run long. A broken listener drains the same way
    /// before its error is returned.
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router) -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// // e.g. on SIGTERM, after reporting not-ready for a while: `stop.send(())`
    /// # drop(stop);
    /// groupcache_rs::Server::new()
    ///     .serve_with_shutdown(listener, app, async { stopped.await.unwrap_or(()) })
    ///     .await
    /// # }
    /// ```
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let this = Arc::new(self);
        let open = Arc::new(Semaphore::new(this.max_connections));
        let (stop, stopped) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let result = loop {
            // Reap finished connections, so the set holds only open ones.
            while connections.try_join_next().is_some() {}
            // A slot first: at the bound, connections wait in the kernel's backlog, costing
            // this process nothing.
            let slot = tokio::select! {
                slot = open.clone().acquire_owned() => slot,
                () = &mut shutdown => break Ok(()),
            };
            // The semaphore is never closed.
            let Ok(slot) = slot else { break Ok(()) };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break Ok(()),
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) if listener_broken(&error) => break Err(error),
                Err(error) if connection_failed(&error) => {
                    tracing::debug!(%error, "a connection failed before it was accepted");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (this, app, stopped) = (this.clone(), app.clone(), stopped.clone());
            connections.spawn(async move {
                this.connection(stream, app, stopped).await;
                drop(slot);
            });
        };
        drop(listener);
        let _ = stop.send(true);
        while connections.join_next().await.is_some() {}
        result
    }

    async fn connection(
        &self,
        stream: tokio::net::TcpStream,
        app: Router,
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))] mut stopped: watch::Receiver<bool>,
    ) {
        #[cfg(feature = "tls")]
        if let Some(acceptor) = &self.tls {
            let handshake = tokio::time::timeout(self.header_read_timeout, acceptor.accept(stream));
            let stream = tokio::select! {
                handshake = handshake => match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                },
                // Shutting down: no request was made on this connection yet.
                _ = stopped.changed() => return,
            };
            return self.http(stream, app, stopped).await;
        }
        self.http(stream, app, stopped).await
    }

    /// Serves HTTP/1.1 on one connection; once `stopped` turns true, finishes the request in
    /// progress, if any, and closes.
    async fn http<I>(&self, io: I, app: Router, mut stopped: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = TowerToHyperService::new(app);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes);
        let connection = http.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            // `true` is the only value ever sent, and an error means the server is gone: stop.
            _ = stopped.changed() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

/// Accept errors that mean the listener itself is unusable: EBADF, EFAULT, EINVAL, ENOTSOCK.
fn listener_broken(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(9 | 14 | 22 | 88))
}

/// Accept errors about one connection, not the listener: retried at once. Besides an aborted or
/// reset connection, Linux's accept(2) reports a new connection's pending network errors, which
/// its manual says to treat like EAGAIN: ENETDOWN, EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET,
/// EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH.
fn connection_failed(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || matches!(
        error.raw_os_error(),
        Some(100 | 71 | 92 | 112 | 64 | 113 | 95 | 101)
    )
}
