//! The asking side of the wire: how this replica asks a peer for a value, removes one or sets one,
//! over the connection pool ([`pool`](super::pool)). The serving side is the
//! [`router`](super::router).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use groupcache_rs_pb::{BatchEntry, BatchRequest, GetResponse, SetRequest};
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use prost::Message;

use super::auth::{BodyDigest, PeerAuth, SIGNATURE_HEADER};
use super::batch;
use super::pool::{Answer, Connections, ReadError, request_error};
use super::protocol::{
    BATCH_HEADER, ERROR_KIND, HEARTBEAT_HEADER, LOADER_ERROR, MAX_WAIT_HEADER, NOT_FOUND, PEEK,
    PEEK_HEADER, PENDING, PROTOBUF, REFRESH_HEADER,
};
use crate::PeerError;
use crate::cluster::membership::Endpoint;
use crate::trace::Traced;

/// How a request to a peer failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The peer ran its loader and the loader failed: its message.
    Loader(String),
    /// Anything else.
    Peer(PeerError),
}

/// Sends requests to peers.
#[derive(Clone)]
pub(crate) struct PeerClient {
    connections: Arc<Connections>,
    timeout: Duration,
    max_value_bytes: usize,
    auth: Option<Arc<PeerAuth>>,
    /// Adds the current span's context to each request (`trace.rs`).
    trace: Option<Traced>,
}

impl PeerClient {
    pub(crate) fn new(
        connections: Connections,
        timeout: Duration,
        max_value_bytes: usize,
        auth: Option<Arc<PeerAuth>>,
        trace: Option<Traced>,
    ) -> Self {
        PeerClient {
            connections: Arc::new(connections),
            timeout,
            max_value_bytes,
            auth,
            trace,
        }
    }

    /// Closes idle connections to peers for which `keep` is false.
    pub(crate) fn retain_connections(&self, keep: impl Fn(&str) -> bool) {
        self.connections.retain(keep);
    }

    /// `GET`: the owner's value, or `None` if it is still loading after `max_wait` (which the
    /// owner is told, [`MAX_WAIT_HEADER`]): ask again. `refresh`: this replica holds a copy due
    /// for refresh ([`REFRESH_HEADER`]), and wants the refreshed value.
    pub(crate) async fn get(
        &self,
        peer: &Arc<Endpoint>,
        path: String,
        max_wait: Duration,
        refresh: bool,
    ) -> Result<Option<GetResponse>, Failure> {
        let millis = u64::try_from(max_wait.as_millis()).unwrap_or(u64::MAX);
        let wait = (MAX_WAIT_HEADER, HeaderValue::from(millis));
        if refresh {
            let refresh = (REFRESH_HEADER, HeaderValue::from_static("1"));
            return self
                .get_as(peer, path, &[wait, refresh], self.timeout)
                .await;
        }
        self.get_as(peer, path, &[wait], self.timeout).await
    }

    /// A peek ([`PEEK_HEADER`]): the peer's value if it holds it in memory, `None` if not; the
    /// peer never loads. Waits at most `timeout`.
    pub(crate) async fn peek(
        &self,
        peer: &Arc<Endpoint>,
        path: String,
        timeout: Duration,
    ) -> Result<Option<GetResponse>, Failure> {
        let header = (PEEK_HEADER, HeaderValue::from_static(PEEK));
        self.get_as(peer, path, &[header], timeout).await
    }

    /// `get` and `peek` (with `headers`, which say which); `None` for a peek's 404 and for a
    /// get still loading on the owner ([`PENDING`]). A negative answer (a 404 marked
    /// [`NOT_FOUND`]) is a `GetResponse` with `not_found` set.
    async fn get_as(
        &self,
        peer: &Arc<Endpoint>,
        path: String,
        headers: &[(&'static str, HeaderValue)],
        timeout: Duration,
    ) -> Result<Option<GetResponse>, Failure> {
        let peek = headers.iter().any(|(name, _)| *name == PEEK_HEADER);
        let exchange = async {
            let answer = self
                .send(Method::GET, peer, path, Bytes::new(), headers)
                .await
                .map_err(Failure::Peer)?;
            let response = &answer.response;
            let status = response.status();
            let kind = response.headers().get(ERROR_KIND);
            let pending =
                status == StatusCode::ACCEPTED && kind.is_some_and(|kind| kind == PENDING);
            let not_found =
                status == StatusCode::NOT_FOUND && kind.is_some_and(|kind| kind == NOT_FOUND);
            if (peek && status == StatusCode::NOT_FOUND && !not_found) || pending {
                let _ = answer.read_prefix(1024).await;
                return Ok(None);
            }
            if status.is_success() || not_found {
                let content_type = response.headers().get(CONTENT_TYPE);
                if content_type.is_none_or(|value| value != PROTOBUF) {
                    let found = content_type
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or("none");
                    let error = format!("content type {found:?}, expected {PROTOBUF}");
                    return Err(Failure::Peer(PeerError::Malformed(error)));
                }
                // The value plus the message's few bytes of framing and other fields.
                let limit = self.max_value_bytes.saturating_add(64);
                let body = answer.read(limit).await.map_err(|error| match error {
                    ReadError::TooLarge => Failure::Peer(PeerError::TooLarge {
                        limit: self.max_value_bytes,
                    }),
                    ReadError::Failed(error) => Failure::Peer(request_error(error)),
                })?;
                return match GetResponse::decode(body) {
                    Ok(response) if not_found => Ok(Some(GetResponse {
                        value: None,
                        not_found: Some(true),
                        ..response
                    })),
                    Ok(response) => Ok(Some(GetResponse {
                        not_found: None,
                        ..response
                    })),
                    Err(e) => Err(Failure::Peer(PeerError::Malformed(e.to_string()))),
                };
            }
            let is_loader_error = status == StatusCode::INTERNAL_SERVER_ERROR
                && response
                    .headers()
                    .get(ERROR_KIND)
                    .is_some_and(|kind| kind == LOADER_ERROR);
            let message = error_message(answer).await;
            if is_loader_error {
                Err(Failure::Loader(message))
            } else {
                Err(Failure::Peer(PeerError::Status {
                    status: status.as_u16(),
                    message,
                }))
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(Failure::Peer(PeerError::Timeout)))
    }

    /// A heartbeat ([`HEARTBEAT_HEADER`]): whether the peer answers within `timeout`.
    pub(crate) async fn heartbeat(
        &self,
        peer: &Arc<Endpoint>,
        path: String,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        let exchange = async {
            let answer = self
                .send(
                    Method::GET,
                    peer,
                    path,
                    Bytes::new(),
                    &[(HEARTBEAT_HEADER, HeaderValue::from_static("1"))],
                )
                .await?;
            let status = answer.response.status();
            let _ = answer.read_prefix(64).await;
            if status.is_success() {
                Ok(())
            } else {
                Err(PeerError::Status {
                    status: status.as_u16(),
                    message: "heartbeat refused".to_owned(),
                })
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(PeerError::Timeout))
    }

    /// `DELETE`: drop the key from the peer's caches.
    pub(crate) async fn remove(&self, peer: &Arc<Endpoint>, path: String) -> Result<(), PeerError> {
        self.expect_success(Method::DELETE, peer, path, Bytes::new())
            .await
    }

    /// `PUT`: store the value in the peer's main cache.
    pub(crate) async fn set(
        &self,
        peer: &Arc<Endpoint>,
        path: String,
        request: &SetRequest,
    ) -> Result<(), PeerError> {
        let body = Bytes::from(request.encode_to_vec());
        self.expect_success(Method::PUT, peer, path, body).await
    }

    /// `POST` of a purge ([`PURGE_KEY`](super::protocol::PURGE_KEY) or
    /// [`PURGE_HOT_KEY`](super::protocol::PURGE_HOT_KEY) at `path`): the peer empties the
    /// group's caches.
    pub(crate) async fn purge(&self, peer: &Arc<Endpoint>, path: String) -> Result<(), PeerError> {
        self.expect_success(Method::POST, peer, path, Bytes::new())
            .await
    }

    async fn expect_success(
        &self,
        method: Method,
        peer: &Arc<Endpoint>,
        path: String,
        body: Bytes,
    ) -> Result<(), PeerError> {
        let exchange = async {
            let answer = self.send(method, peer, path, body, &[]).await?;
            let status = answer.response.status();
            if status.is_success() {
                // Read to the end, so the connection can carry the next request.
                let _ = answer.read_prefix(1024).await;
                return Ok(());
            }
            let message = error_message(answer).await;
            Err(PeerError::Status {
                status: status.as_u16(),
                message,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(PeerError::Timeout))
    }

    /// Sends one request, signed if authentication is on. The signature covers the peer's
    /// authority (its `Host` header) and the path exactly as they go on the wire, which is what
    /// the receiving router checks against its own URL, and whether it is a peek. A request sent
    /// again (`Connections::send`) is signed again, with a fresh nonce: the peer may have
    /// received the first, and would refuse the second as its replay.
    pub(super) async fn send(
        &self,
        method: Method,
        peer: &Arc<Endpoint>,
        path: String,
        body: Bytes,
        extra: &[(&'static str, HeaderValue)],
    ) -> Result<Answer, PeerError> {
        let peek = extra.iter().any(|(name, _)| *name == PEEK_HEADER);
        let signing = self.auth.as_ref().map(|auth| (auth, BodyDigest::of(&body)));
        // From the `String` itself: no copy of the path.
        let uri = hyper::Uri::try_from(path)
            .map_err(|e| PeerError::Request(format!("invalid request path: {e}")))?;
        // Built again, rather than copied, for the rare second try (`Connections::send`).
        let request = || {
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = method.clone();
            *request.uri_mut() = uri.clone();
            let headers = request.headers_mut();
            for (name, value) in extra {
                headers.insert(*name, value.clone());
            }
            if let Some((auth, digest)) = &signing {
                let authority = peer.authority.as_bytes();
                let signature = auth.sign(method.as_str(), authority, uri.path(), peek, digest);
                headers.insert(SIGNATURE_HEADER, signature);
            }
            if !body.is_empty() {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
            }
            if let Some(trace) = &self.trace {
                trace.0.inject(&tracing::Span::current(), headers);
            }
            request
        };
        let answer = self.connections.send(peer, request).await?;
        record_advert(peer, &answer.response);
        Ok(answer)
    }

    /// The longest wait for a whole answer.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The start of an error answer's body, for the error message.
pub(super) async fn error_message(answer: Answer) -> String {
    let message = answer.read_prefix(1024).await;
    String::from_utf8_lossy(&message).trim_end().to_owned()
}

/// Records whether the peer's answer advertised the batch protocol. Every answer counts, so a
/// peer replaced by one that does not batch (a golang/groupcache binary at the same URL) is
/// asked singly again after its first answer.
pub(crate) fn record_advert(peer: &Endpoint, response: &hyper::Response<hyper::body::Incoming>) {
    peer.heard();
    let batches = response.headers().contains_key(BATCH_HEADER);
    // Stored only when it changes: every request to the peer reads this endpoint, and a store
    // per answer would bounce its cache line between the cores.
    if peer.batches.load(Ordering::Relaxed) != batches {
        peer.batches.store(batches, Ordering::Relaxed);
    }
    if peer.plain.load(Ordering::Relaxed) == batches {
        peer.plain.store(!batches, Ordering::Relaxed);
    }
}

impl PeerClient {
    /// `POST {base}{group}/_batch`: one entry per key of `request`, in its order.
    pub(crate) async fn batch(
        &self,
        peer: &Arc<Endpoint>,
        path: String,
        request: &BatchRequest,
    ) -> Result<Vec<BatchEntry>, Failure> {
        let value_bytes = request.max_answer_bytes.unwrap_or(0);
        let limit = usize::try_from(value_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(batch::answer_overhead(request.keys.len()));
        let body = Bytes::from(request.encode_to_vec());
        let exchange = async {
            let answer = self.send(Method::POST, peer, path, body, &[]).await?;
            let status = answer.response.status();
            if !status.is_success() {
                let message = error_message(answer).await;
                return Err(PeerError::Status {
                    status: status.as_u16(),
                    message,
                });
            }
            let content_type = answer.response.headers().get(CONTENT_TYPE);
            if content_type.is_none_or(|value| value != PROTOBUF) {
                return Err(PeerError::Malformed(format!(
                    "batch answer of content type {content_type:?}, expected {PROTOBUF}"
                )));
            }
            let body = answer.read(limit).await.map_err(|error| match error {
                ReadError::TooLarge => PeerError::TooLarge { limit },
                ReadError::Failed(error) => request_error(error),
            })?;
            batch::decode_answer(body, request.keys.len())
        };
        tokio::time::timeout(self.timeout(), exchange)
            .await
            .unwrap_or(Err(PeerError::Timeout))
            .map_err(Failure::Peer)
    }
}
