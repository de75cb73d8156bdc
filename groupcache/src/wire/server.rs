//! Serving the peer port with the limits a port open to the network needs: a deadline for reading
//! request headers (slowloris), a deadline for the TLS handshake, a bound on open connections and
//! on each one's read buffer (so headers cannot grow without bound), a deadline for writing
//! answers and a budget of answers waiting for slow readers, a connection lifetime, and TLS when
//! configured.
//!
//! `axum::serve` offers neither a header deadline nor TLS; this is that loop, on hyper's HTTP/1.1
//! server. Use it for the port peers reach; your own routes may be merged into the same router.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// Serves a router with connection limits.
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// use std::time::Duration;
///
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// groupcache_rs::Server::new()
///     .header_read_timeout(Duration::from_secs(5))
///     .write_timeout(Duration::from_secs(5))
///     .max_unsent_bytes(16 << 20)
///     .max_connection_lifetime(Some(Duration::from_secs(300)))
///     .serve(listener, app)
///     .await
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct Server {
    header_read_timeout: Duration,
    write_timeout: Duration,
    max_unsent_bytes: usize,
    max_connection_lifetime: Option<Duration>,
    max_connections: usize,
    max_header_bytes: usize,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Server");
        debug.field("header_read_timeout", &self.header_read_timeout);
        debug.field("write_timeout", &self.write_timeout);
        debug.field("max_unsent_bytes", &self.max_unsent_bytes);
        debug.field("max_connection_lifetime", &self.max_connection_lifetime);
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
    /// Plain HTTP/1.1 with a 10 s header deadline, a 10 s write deadline, 32 MiB of answers
    /// waiting for slow readers, connections closed after 10 minutes, at most 4096 connections
    /// and 16 KiB of buffered request head per connection.
    pub fn new() -> Self {
        Server {
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_unsent_bytes: 32 << 20,
            max_connection_lifetime: Some(Duration::from_secs(600)),
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

    /// Longest time an answer may wait for its client to read it (default 10 s). The clock starts
    /// when the connection's socket first accepts no more bytes and stops once everything the
    /// connection had to send is written; a connection past it is closed. A client that never
    /// reads, or reads a byte now and then, cannot hold a connection and its answers for longer.
    ///
    /// ```
    /// let server = groupcache_rs::Server::new().write_timeout(std::time::Duration::from_secs(5));
    /// # let _ = server;
    /// ```
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Most bytes of answers, over all connections, that may wait for clients that do not read
    /// them (default 32 MiB). An answer is counted once its socket accepts no more, until it is
    /// written; a connection whose answer would take the count past the bound is closed at once,
    /// and its bytes freed. So clients that stop reading (pipelining requests they never read,
    /// say) pin at most this much, however many connections they open, while honest peers, which
    /// read their answers as they come, are not refused. Keep it above your largest value, or an
    /// answer too large for the socket's buffer is cut whenever it has to wait.
    ///
    /// ```
    /// let server = groupcache_rs::Server::new().max_unsent_bytes(64 << 20);
    /// # let _ = server;
    /// ```
    pub fn max_unsent_bytes(mut self, bytes: usize) -> Self {
        self.max_unsent_bytes = bytes;
        self
    }

    /// Longest time a connection stays open (default 10 minutes; `None`: no limit). Past it the
    /// server finishes the request in progress, if any, and closes the connection; peers open a
    /// new one. Bounds what any one connection can hold, whatever it does.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let server = groupcache_rs::Server::new()
    ///     .max_connection_lifetime(Some(Duration::from_secs(300)));
    /// # let _ = server;
    /// ```
    pub fn max_connection_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_connection_lifetime = lifetime;
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
        let unsent = Arc::new(Unsent {
            bytes: AtomicUsize::new(0),
            limit: this.max_unsent_bytes,
        });
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
            let stream = Deadlined::new(stream, this.write_timeout, unsent.clone());
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
        stream: Deadlined<tokio::net::TcpStream>,
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
        let lifetime = self.max_connection_lifetime;
        let expired = async move {
            match lifetime {
                Some(lifetime) => tokio::time::sleep(lifetime).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            result = connection.as_mut() => result,
            // `true` is the only value ever sent, and an error means the server is gone: stop.
            _ = stopped.changed() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            // The request in progress, if any, is finished, its answer within the write
            // deadline.
            () = expired => {
                tracing::debug!("connection closed at the end of its lifetime");
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

/// Bytes of answers waiting for clients that do not read them, over all connections of a server.
struct Unsent {
    bytes: AtomicUsize,
    limit: usize,
}

/// A connection's stream with a deadline on writing answers, its waiting bytes counted in
/// [`Unsent`]. hyper flushes the stream once it has written everything it holds: that ends the
/// wait. A write the socket does not take starts it, and counts the bytes offered.
struct Deadlined<I> {
    io: I,
    timeout: Duration,
    /// Created at the first wait and reused.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether a wait is in progress, `deadline` set for it.
    waiting: bool,
    /// Bytes counted in `unsent` for this connection.
    counted: usize,
    unsent: Arc<Unsent>,
}

impl<I> Deadlined<I> {
    fn new(io: I, timeout: Duration, unsent: Arc<Unsent>) -> Self {
        Deadlined {
            io,
            timeout,
            deadline: None,
            waiting: false,
            counted: 0,
            unsent,
        }
    }

    /// The socket took nothing of `offered` bytes: counts them, and starts the deadline if no
    /// wait is in progress. An error when the bytes waiting over the server pass its bound, or
    /// once the deadline has passed: the connection is closed.
    fn wait<T>(&mut self, cx: &mut Context<'_>, offered: usize) -> Poll<io::Result<T>> {
        if offered > self.counted {
            let more = offered - self.counted;
            self.counted = offered;
            let total = self.unsent.bytes.fetch_add(more, Ordering::Relaxed) + more;
            if total > self.unsent.limit {
                tracing::debug!(
                    waiting = total,
                    "closed a connection: answers waiting for readers over the bound"
                );
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "answers waiting for slow readers over the server's bound",
                )));
            }
        }
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.waiting {
            self.waiting = true;
            deadline.as_mut().reset(Instant::now() + timeout);
        }
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!("closed a connection: its answer was not read in time");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "answer not read within the write deadline",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Everything was written: the wait, if any, is over.
    fn written(&mut self) {
        self.waiting = false;
        self.uncount();
    }

    fn uncount(&mut self) {
        if self.counted > 0 {
            self.unsent.bytes.fetch_sub(self.counted, Ordering::Relaxed);
            self.counted = 0;
        }
    }
}

impl<I> Drop for Deadlined<I> {
    fn drop(&mut self) {
        self.uncount();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Deadlined<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Deadlined<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.wait(cx, buf.len()),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => {
                let offered = bufs.iter().map(|buf| buf.len()).sum();
                self.wait(cx, offered)
            }
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.written();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let counted = self.counted;
                self.wait(cx, counted)
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Pending => {
                let counted = self.counted;
                self.wait(cx, counted)
            }
            ready => ready,
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
