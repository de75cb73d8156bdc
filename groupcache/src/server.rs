//! Serving the peer port with the limits a port open to the network needs: a deadline for reading
//! request headers (slowloris), a deadline for the TLS handshake, and TLS itself when configured.
//!
//! `axum::serve` offers neither a header deadline nor TLS; this is that loop, on hyper's HTTP/1.1
//! server. Use it for the port peers reach; your own routes may be merged into the same router.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serves a router with connection limits.
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// groupcache::Server::new()
///     .header_read_timeout(std::time::Duration::from_secs(5))
///     .serve(listener, app)
///     .await
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct Server {
    header_read_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Server");
        debug.field("header_read_timeout", &self.header_read_timeout);
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
    /// Plain HTTP/1.1 with a 10 s header deadline.
    pub fn new() -> Self {
        Server {
            header_read_timeout: Duration::from_secs(10),
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

    /// Serves over TLS with this rustls configuration, e.g. from
    /// [`PeerTls::server_config`](crate::PeerTls::server_config), which can require client
    /// certificates (mTLS).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// Accepts connections until accepting fails for a reason other than a passing one (such as
    /// running out of file descriptors, which is waited out).
    pub async fn serve(self, listener: TcpListener, app: Router) -> io::Result<()> {
        let this = Arc::new(self);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) if is_passing(&error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let _ = stream.set_nodelay(true);
            let (this, app) = (this.clone(), app.clone());
            tokio::spawn(async move { this.connection(stream, app).await });
        }
    }

    async fn connection(&self, stream: tokio::net::TcpStream, app: Router) {
        let service = TowerToHyperService::new(app);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        #[cfg(feature = "tls")]
        if let Some(acceptor) = &self.tls {
            let stream =
                match tokio::time::timeout(self.header_read_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
            if let Err(error) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "connection ended with an error");
            }
            return;
        }
        if let Err(error) = http.serve_connection(TokioIo::new(stream), service).await {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

/// Accept errors that go away by themselves: out of descriptors or memory, an aborted connection.
fn is_passing(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || matches!(error.raw_os_error(), Some(23 | 24 | 12 | 105)) // ENFILE, EMFILE, ENOMEM, ENOBUFS
}
