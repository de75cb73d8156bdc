//! A TCP proxy that adds latency, for fault tests on machines without `tc netem`.
//!
//! [`DelayProxy`] listens on `127.0.0.1:0` and forwards every connection to a target address.
//! Each chunk of data, in either direction, is held for the current delay after it was read and
//! then forwarded, in order: a request/response round trip through the proxy costs twice the
//! delay. The delay can be changed at any time; a change applies to chunks read after it.
//!
//! When either side of a connection closes (or fails), what it sent before is still delivered
//! after the delay, then both sockets are closed. Dropping the proxy stops it: the listener and
//! every connection are closed at once.
//!
//! ```no_run
//! # async fn example(owner: std::net::SocketAddr) -> std::io::Result<()> {
//! use groupcache_tests::delay_proxy::DelayProxy;
//! use std::time::Duration;
//!
//! // Bound first, so a replica can be told its URL before the proxy knows where to forward.
//! let proxy = DelayProxy::bind().await?;
//! let url = proxy.url(); // the owner's URL as its peers know it
//! proxy.set_target(owner);
//! proxy.set_delay(Duration::from_millis(100));
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A running delay proxy; stopped when dropped. See the [module documentation](self).
#[derive(Debug)]
pub struct DelayProxy {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    target: watch::Sender<Option<SocketAddr>>,
    /// Whether the proxy accepts connections now (see [`set_accepting`](Self::set_accepting)).
    accept_now: watch::Sender<bool>,
    /// Owns every connection's task: aborting it drops them all.
    accepting: JoinHandle<()>,
}

impl DelayProxy {
    /// Binds `127.0.0.1:0` with no target yet and no delay. Connections accepted before
    /// [`set_target`](Self::set_target) wait for it. Must be called within a tokio runtime.
    pub async fn bind() -> std::io::Result<DelayProxy> {
        Self::bind_with_backlog(1024).await
    }

    /// As [`bind`](Self::bind), with a listen queue of `backlog` connections: with
    /// [`set_accepting`](Self::set_accepting) off, connections past it are not answered (their
    /// SYNs dropped), as a busy server's are.
    pub async fn bind_with_backlog(backlog: u32) -> std::io::Result<DelayProxy> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(backlog)?;
        let addr = listener.local_addr()?;
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (target, _) = watch::channel(None);
        let (accept_now, accept_now_rx) = watch::channel(true);
        let accepting = tokio::spawn(accept(
            listener,
            target.subscribe(),
            accept_now_rx,
            delay_ms.clone(),
        ));
        Ok(DelayProxy {
            addr,
            delay_ms,
            target,
            accept_now,
            accepting,
        })
    }

    /// Stops (`false`) or resumes accepting connections. Connections already accepted go on;
    /// new ones wait in the listen queue, and once it is full the kernel drops their SYNs, so
    /// connecting times out: a replica too busy to accept, or a burst larger than its backlog.
    pub fn set_accepting(&self, accepting: bool) {
        self.accept_now.send_replace(accepting);
    }

    /// Binds `127.0.0.1:0` and forwards to `target` with no delay.
    pub async fn start(target: SocketAddr) -> std::io::Result<DelayProxy> {
        let proxy = Self::bind().await?;
        proxy.set_target(target);
        Ok(proxy)
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`: the URL to give peers instead of the target's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Forwards connections accepted from now on (and those waiting for a target) to `target`.
    pub fn set_target(&self, target: SocketAddr) {
        self.target.send_replace(Some(target));
    }

    /// Holds every chunk read from now on for `delay` (whole milliseconds) before forwarding it.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The current delay.
    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Accepts connections until aborted; each runs in a task of `connections`, which dies with it.
async fn accept(
    listener: TcpListener,
    target: watch::Receiver<Option<SocketAddr>>,
    mut accept_now: watch::Receiver<bool>,
    delay_ms: Arc<AtomicU64>,
) {
    let mut connections = JoinSet::new();
    loop {
        if accept_now.wait_for(|&accepting| accepting).await.is_err() {
            return; // the proxy is gone
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Turned off while waiting: stop accepting at once.
            _ = accept_now.wait_for(|&accepting| !accepting) => continue,
        };
        let Ok((client, _)) = accepted else {
            // Out of file descriptors, say: try again rather than stop proxying.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {} // reap finished connections
        connections.spawn(connection(client, target.clone(), delay_ms.clone()));
    }
}

/// One proxied connection: both directions at once, until either ends.
async fn connection(
    client: TcpStream,
    mut target: watch::Receiver<Option<SocketAddr>>,
    delay_ms: Arc<AtomicU64>,
) {
    let Ok(Some(target)) = target.wait_for(Option::is_some).await.map(|t| *t) else {
        return; // the proxy is gone
    };
    // A refused connection closes the client's: as near as a proxy gets to a refusal.
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Whichever direction ends first ends the connection; dropping the halves closes both.
    tokio::select! {
        _ = pipe(client_read, server_write, delay_ms.clone()) => {}
        _ = pipe(server_read, client_write, delay_ms) => {}
    }
}

/// Copies `from` to `to`, each chunk held until the delay current when it was read has passed.
/// Returns once `from` has closed and everything read is written, or on the first error.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) -> std::io::Result<()> {
    // Unbounded: reading never waits for writing, so a chunk is stamped when it arrives. Test
    // traffic is small; this is not a proxy for bulk data.
    let (chunks, mut pending) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    let read = async move {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let n = from.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(()); // dropping `chunks` lets the writer finish
            }
            let delay = Duration::from_millis(delay_ms.load(Ordering::SeqCst));
            let chunk = Bytes::copy_from_slice(&buffer[..n]);
            if chunks.send((Instant::now() + delay, chunk)).is_err() {
                return Ok(()); // the writer failed; its error ends the pipe
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = pending.recv().await {
            tokio::time::sleep_until(due).await;
            to.write_all(&chunk).await?;
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}
