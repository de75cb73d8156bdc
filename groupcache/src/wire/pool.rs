//! Keep-alive HTTP/1.1 connections to peers, over TCP or (with the `tls` feature) rustls.
//!
//! A connection carries one request at a time, as HTTP/1.1 does; finished connections wait in a
//! per-peer idle list for the next request. This is hyper's connection API with the least on top:
//! no URL parsing, redirects or retry layers per request, which made a general-purpose client
//! cost about twice as much CPU per peer request (see BENCHMARKS.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::PeerError;
use crate::cluster::membership::Endpoint;

/// Idle connections kept per peer; more concurrent requests than this open connections that are
/// closed when done.
const MAX_IDLE_PER_PEER: usize = 256;

/// An idle connection older than this is closed rather than reused: servers close idle
/// connections on their own schedule, and a request on one they just closed would fail.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Sender = http1::SendRequest<Full<Bytes>>;

/// A peer's answer whose body has not been read yet. Reading it to its end returns the
/// connection to the idle list; dropping it earlier closes the connection.
pub(crate) struct Answer {
    pub(crate) response: Response<Incoming>,
    lease: Lease,
}

/// The connection an answer arrived on, and the idle list it goes back to.
struct Lease {
    connections: Arc<Connections>,
    endpoint: Arc<Endpoint>,
    sender: Sender,
}

impl Lease {
    fn release(self) {
        self.connections.put_back(&self.endpoint, self.sender);
    }
}

/// Why reading a body stopped.
pub(crate) enum ReadError {
    /// The body is longer than the limit; the rest was not read.
    TooLarge,
    /// The connection failed or the body was malformed.
    Failed(hyper::Error),
}

impl Answer {
    /// The whole body, unless it is longer than `limit`, in a buffer of its own and of its size
    /// (a slice of the connection's read buffer would keep all of that buffer alive in a cache).
    pub(crate) async fn read(self, limit: usize) -> Result<Bytes, ReadError> {
        let (mut body, lease) = self.into_parts();
        let expected = hyper::body::Body::size_hint(&body).lower();
        if expected > limit as u64 {
            return Err(ReadError::TooLarge);
        }
        let mut read = BytesMut::with_capacity(expected as usize);
        while let Some(frame) = body.frame().await {
            let Ok(chunk) = frame.map_err(ReadError::Failed)?.into_data() else {
                continue; // trailers
            };
            if read.len() + chunk.len() > limit {
                return Err(ReadError::TooLarge);
            }
            read.extend_from_slice(&chunk);
        }
        lease.release();
        // Without a length up front (chunked answers) the buffer grew by doubling.
        if read.capacity() > read.len() {
            return Ok(Bytes::copy_from_slice(&read));
        }
        Ok(read.freeze())
    }

    /// At most the first `limit` bytes of the body (for error messages).
    pub(crate) async fn read_prefix(self, limit: usize) -> Vec<u8> {
        let (mut body, lease) = self.into_parts();
        let mut read = Vec::new();
        while read.len() < limit {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(chunk) = frame.into_data() {
                        read.extend_from_slice(&chunk[..chunk.len().min(limit - read.len())]);
                    }
                }
                Some(Err(_)) => return read,
                None => {
                    lease.release();
                    return read;
                }
            }
        }
        read
    }

    fn into_parts(self) -> (Incoming, Lease) {
        (self.response.into_body(), self.lease)
    }
}

/// Idle connections by peer, and how to open new ones.
pub(crate) struct Connections {
    idle: Mutex<HashMap<String, Vec<(Sender, Instant)>>>,
    connect_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsConnector>,
    /// The name peers' certificates are verified against, instead of their URLs' hosts.
    #[cfg(feature = "tls")]
    tls_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl Connections {
    pub(crate) fn new(
        connect_timeout: Duration,
        #[cfg(feature = "tls")] tls: Option<(
            Arc<rustls::ClientConfig>,
            Option<rustls::pki_types::ServerName<'static>>,
        )>,
    ) -> Self {
        #[cfg(feature = "tls")]
        let (tls, tls_name) = match tls {
            Some((config, name)) => (Some(tokio_rustls::TlsConnector::from(config)), name),
            None => (None, None),
        };
        Connections {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            #[cfg(feature = "tls")]
            tls,
            #[cfg(feature = "tls")]
            tls_name,
        }
    }

    /// Sends the request `request` builds (its path only; the `Host` header is added here) on an
    /// idle connection to the peer, or a new one. A request that an idle connection could not
    /// send, or that the peer closed the connection on unanswered, is sent again on a new
    /// connection: `request` builds it again for that.
    pub(crate) async fn send(
        self: &Arc<Self>,
        endpoint: &Arc<Endpoint>,
        request: impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<Answer, PeerError> {
        let with_host = || {
            let mut request = request();
            request
                .headers_mut()
                .insert(hyper::header::HOST, endpoint.authority.clone());
            request
        };
        let mut request = with_host();
        if let Some(mut sender) = self.take_idle(endpoint)
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.answer(endpoint, sender, response)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    // A server closes an idle connection on its own schedule
                    // (`groupcache_rs::Server` after its header deadline, 10 s by default), and a
                    // request that went out as it did gets no answer. It was never read, so it
                    // goes again, built anew, on a new connection; every peer request (get, peek,
                    // set, remove, batch) may be repeated. A dead peer refuses the new
                    // connection, so that still fails.
                    None => {
                        tracing::debug!(peer = endpoint.origin(), error = %error.error(), "a reused connection failed; trying a new one");
                        request = with_host();
                    }
                },
            }
        }
        let mut sender = self.connect(endpoint).await?;
        let response = sender.send_request(request).await.map_err(request_error)?;
        Ok(self.answer(endpoint, sender, response))
    }

    /// Closes idle connections to peers for which `keep` is false.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|origin, _| keep(origin));
    }

    fn answer(
        self: &Arc<Self>,
        endpoint: &Arc<Endpoint>,
        sender: Sender,
        response: Response<Incoming>,
    ) -> Answer {
        Answer {
            response,
            lease: Lease {
                connections: self.clone(),
                endpoint: endpoint.clone(),
                sender,
            },
        }
    }

    fn take_idle(&self, endpoint: &Endpoint) -> Option<Sender> {
        let mut idle = self.lock();
        let list = idle.get_mut(&endpoint.origin)?;
        // The most recently used first: the least likely to have been closed by the peer.
        while let Some((sender, since)) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_back(&self, endpoint: &Endpoint, sender: Sender) {
        if sender.is_closed() {
            return; // the peer closed it, or asked to (`Connection: close`)
        }
        let mut idle = self.lock();
        let list = idle.entry(endpoint.origin.clone()).or_default();
        if list.len() < MAX_IDLE_PER_PEER {
            list.push((sender, Instant::now()));
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<Sender, PeerError> {
        let connecting = async {
            let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
                .await
                .map_err(|e| {
                    PeerError::Request(format!("connecting to {}: {e}", endpoint.origin))
                })?;
            let _ = tcp.set_nodelay(true);
            // Closed with a reset, not a FIN: a connection is closed early only when its request
            // was given up (a timeout, a caller gone), and a graceful close would leave the kernel
            // sending that request until the peer takes it. A `set` held back by a partition
            // then landed once it healed, over a newer write acknowledged meanwhile. A reset
            // discards it. An idle connection has nothing queued, so its close loses nothing.
            if let Err(error) = tcp.set_zero_linger() {
                tracing::debug!(%error, peer = endpoint.origin(), "SO_LINGER not set");
            }
            if endpoint.tls {
                return self.handshake_tls(endpoint, tcp).await;
            }
            handshake(TokioIo::new(tcp)).await
        };
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| PeerError::ConnectTimeout {
                origin: endpoint.origin.clone(),
                after: self.connect_timeout,
            })?
    }

    #[cfg(feature = "tls")]
    async fn handshake_tls(
        &self,
        endpoint: &Endpoint,
        tcp: TcpStream,
    ) -> Result<Sender, PeerError> {
        let connector = self.tls.as_ref().ok_or_else(|| {
            PeerError::Request(format!(
                "{} is an https peer but no PeerTls is configured",
                endpoint.origin
            ))
        })?;
        let name = match &self.tls_name {
            Some(name) => name.clone(),
            None => {
                rustls::pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                    PeerError::Request(format!("TLS server name {:?}: {e}", endpoint.host))
                })?
            }
        };
        let stream = connector.connect(name, tcp).await.map_err(|e| {
            PeerError::Request(format!("TLS handshake with {}: {e}", endpoint.origin))
        })?;
        handshake(TokioIo::new(stream)).await
    }

    #[cfg(not(feature = "tls"))]
    async fn handshake_tls(&self, endpoint: &Endpoint, _: TcpStream) -> Result<Sender, PeerError> {
        Err(PeerError::Request(format!(
            "{} is an https peer: build groupcache with the `tls` feature",
            endpoint.origin
        )))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<(Sender, Instant)>>> {
        crate::lock(&self.idle)
    }
}

/// Starts HTTP/1.1 on a connected stream; the connection runs in a task of its own until the
/// sender is dropped or the peer closes it.
async fn handshake<T>(io: T) -> Result<Sender, PeerError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io).await.map_err(request_error)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "peer connection ended");
        }
    });
    Ok(sender)
}

/// hyper's Display says what failed; its source, when there is one, says why.
pub(crate) fn request_error(error: hyper::Error) -> PeerError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    PeerError::Request(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A peer on loopback answering every request with `body`, with or without keep-alive;
    /// counts the connections it accepted.
    async fn peer(body: &'static str, keep_alive: bool) -> (Arc<Endpoint>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(move |_request| async move {
                    let body = Full::new(Bytes::from_static(body.as_bytes()));
                    Ok::<_, std::convert::Infallible>(Response::new(body))
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::spawn(connection);
            }
        });
        (Arc::new(Endpoint::parse(&url).unwrap()), accepted)
    }

    fn connections() -> Arc<Connections> {
        Arc::new(Connections::new(
            Duration::from_secs(1),
            #[cfg(feature = "tls")]
            None,
        ))
    }

    fn get(path: &str) -> Request<Full<Bytes>> {
        Request::get(path).body(Full::default()).unwrap()
    }

    async fn read(answer: Answer) -> Bytes {
        match answer.read(1 << 20).await {
            Ok(body) => body,
            Err(_) => panic!("reading the body failed"),
        }
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (endpoint, accepted) = peer("value", true).await;
        let connections = connections();
        for i in 0..50 {
            let answer = connections
                .send(&endpoint, || get(&format!("/k{i}")))
                .await
                .unwrap();
            assert_eq!(read(answer).await, "value");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connections_the_peer_closes_are_replaced_without_failing_a_request() {
        // Without keep-alive the peer closes every connection after one answer, as a peer whose
        // idle timeout fires between two requests would.
        let (endpoint, accepted) = peer("value", false).await;
        let connections = connections();
        for i in 0..20 {
            let answer = connections
                .send(&endpoint, || get(&format!("/k{i}")))
                .await
                .unwrap();
            assert_eq!(read(answer).await, "value");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    /// The race a server's idle deadline makes: a request goes out on a kept connection just as
    /// the server closes it unread. The request goes again on a new connection instead of
    /// failing (which made the caller load the key itself, or suspect a live owner).
    #[tokio::test]
    async fn a_request_the_server_closes_unanswered_on_a_kept_connection_goes_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Arc::new(
            Endpoint::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap(),
        );
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let first_connection = counter.fetch_add(1, Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut answered = 0;
                    let mut buffer = [0; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                        head.extend_from_slice(&buffer[..n]);
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            if first_connection && answered == 1 {
                                return; // the second request on it: closed unanswered
                            }
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nvalue";
                            stream.write_all(answer).await.unwrap();
                            answered += 1;
                        }
                    }
                });
            }
        });
        let connections = connections();
        for path in ["/a", "/b", "/c"] {
            let answer = connections.send(&endpoint, || get(path)).await.unwrap();
            assert_eq!(read(answer).await, "value", "{path}");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "one new connection, for /b"
        );
    }

    #[tokio::test]
    async fn an_unread_answer_closes_its_connection_instead_of_returning_it() {
        let (endpoint, accepted) = peer("value", true).await;
        let connections = connections();
        let answer = connections.send(&endpoint, || get("/a")).await.unwrap();
        drop(answer);
        let answer = connections.send(&endpoint, || get("/b")).await.unwrap();
        assert_eq!(read(answer).await, "value");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(matches!(
            connections
                .send(&endpoint, || get("/c"))
                .await
                .unwrap()
                .read(2)
                .await,
            Err(ReadError::TooLarge)
        ));
    }
}
