//! The serving side of the wire: an axum router that answers peers' `GET`, `PUT` and `DELETE` for
//! `{base_path}{group}/{key}`, as golang/groupcache's `HTTPPool` does for `GET`, and `POST` of a
//! batch to `{base_path}{group}/_batch` ([`batch`](super::batch)); every answer advertises batches.
//!
//! A request that arrives here is never forwarded to another peer: the replica answers from its
//! caches or loads the value itself, so replicas whose rings disagree cannot forward in a loop.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use groupcache_rs_pb::SetRequest;
use http_body_util::BodyExt;
use prost::Message;
use tracing::Instrument as _;
use tracing::field::Empty;

use super::answers::AnswerBody;
use super::auth::{PeerAuth, Refusal, SIGNATURE_HEADER};
use super::batch::{Refused, answer_parts, answer_room, batch_body_limit, parse_request};
use super::limits::{Held, Share};
use super::protocol::{
    BATCH_HEADER, BATCH_KEY, ERROR_KIND, HEARTBEAT_HEADER, LOADER_ERROR, MAX_WAIT_HEADER,
    NOT_FOUND, PEEK_HEADER, PENDING, PROTOBUF, PURGE_HOT_KEY, PURGE_KEY, REFRESH_HEADER,
    encoded_get_response, parse_path,
};
use crate::Error;
use crate::caches::{Entry, Kind};
use crate::cluster::groups::{BatchAnswer, Served};
use crate::cluster::membership::Endpoint;
use crate::cluster::{Cluster, ClusterInner};

impl Cluster {
    /// The axum router that serves every group of this cluster to peers, at
    /// `{base_path}{group}/{key}`: a request for a group this replica does not serve gets 404,
    /// as golang/groupcache answers. Serve it once, on the port peers reach (e.g. with
    /// [`Server`](crate::Server)); merge it into your app, or nest it under a prefix and include
    /// that prefix in every peer URL. Groups added or dropped later are served or not from then
    /// on, without a new router.
    ///
    /// ```
    /// # fn main() -> Result<(), groupcache_rs::Error> {
    /// // Peers list this replica as `http://10.0.0.1:8080/internal`, prefix included.
    /// let cluster = groupcache_rs::Cluster::builder("http://10.0.0.1:8080/internal").build()?;
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/healthz", axum::routing::get(|| async { "ok" }))
    ///     .nest("/internal", cluster.router());
    /// # Ok(()) }
    /// ```
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        router(&self.inner, None)
    }
}

/// The router of `cluster`, holding `keep` (a group's registration) for as long as it lives.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(
    cluster: &Arc<ClusterInner>,
    keep: Option<Arc<dyn Any + Send + Sync>>,
) -> Router<S> {
    let base = cluster.config.base_path.clone();
    // Signatures name the replica they are meant for, as its peers know it: by its URL.
    let authority: Arc<[u8]> = Endpoint::parse(&cluster.self_url)
        .map(|endpoint| endpoint.authority.as_bytes().into())
        .unwrap_or_default();
    let handler = get(serve).put(serve).delete(serve).post(serve);
    Router::new()
        .route(&format!("{base}{{*rest}}"), handler.clone())
        .route(&base, handler)
        .with_state(Port {
            authority,
            cluster: cluster.clone(),
            // The body carries a value only in a PUT; leave room for the message's framing.
            body_limit: cluster.config.max_value_bytes.saturating_add(4096),
            _keep: keep,
        })
}

/// The router's state: the cluster, whose groups and limits it serves.
#[derive(Clone)]
struct Port {
    /// This replica's `host:port`, which a signature must name.
    authority: Arc<[u8]>,
    cluster: Arc<ClusterInner>,
    /// Largest `PUT` body read.
    body_limit: usize,
    /// Keeps a group served while this router lives (`Groupcache::router`).
    _keep: Option<Arc<dyn Any + Send + Sync>>,
}

/// Serves one request, its answer marked as coming from a replica that takes batches. Marked
/// here rather than by a middleware layer, which cost each remote get 3 µs of boxing and cloning
/// (BENCHMARKS.md). The request is taken whole: extracting its headers apart would clone them.
///
/// In a [`SERVE`](crate::trace::SERVE) span, whose parent is the asker's span when the cluster
/// carries trace context (`trace.rs`).
async fn serve(State(port): State<Port>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let kind = kind(&parts);
    // A heartbeat is no one's request: four a second per idle peer, each a trace of its own.
    if kind == "heartbeat" {
        let mut response = respond(&port, &parts, body).await;
        advertise(&mut response);
        return response;
    }
    let span = tracing::info_span!(crate::trace::SERVE, group = Empty, kind, status = Empty,);
    if let Some(trace) = &port.cluster.config.trace_context
        && !span.is_disabled()
    {
        trace.0.extract(&parts.headers, &span);
    }
    let mut response = respond(&port, &parts, body).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    advertise(&mut response);
    response
}

/// What a peer's request asks for, for its span.
fn kind(parts: &Parts) -> &'static str {
    match parts.method {
        Method::GET if parts.headers.contains_key(HEARTBEAT_HEADER) => "heartbeat",
        Method::GET if parts.headers.contains_key(PEEK_HEADER) => "peek",
        Method::GET => "get",
        Method::POST if parts.uri.path().ends_with(BATCH_KEY) => "batch",
        Method::POST => "purge",
        Method::PUT => "set",
        Method::DELETE => "remove",
        _ => "other",
    }
}

/// The answer to one request. Nothing is read from the body before the signature (from the
/// headers alone) is checked, the group found and a concurrency slot taken from the group's fair
/// share; only a `PUT` and a batch have a body, read under a size limit, a byte budget and a
/// deadline, then checked against the digest the signature covers.
async fn respond(port: &Port, parts: &Parts, body: Body) -> Response {
    let (method, uri, headers) = (parts.method.clone(), &parts.uri, &parts.headers);
    // The path as the client sent it, before a nesting router stripped its prefix from `uri`.
    let original = parts
        .extensions
        .get::<OriginalUri>()
        .map_or(uri, |original| &original.0);
    let cluster = &port.cluster;
    let mut digest = None;
    if let Some(auth) = &cluster.config.auth {
        // The client signed the path it sent: the full one, before any nesting stripped a prefix.
        let signature = headers
            .get(SIGNATURE_HEADER)
            .and_then(|value| value.to_str().ok());
        // Whether it is a peek is signed too: the same test as below, whatever the method.
        let peek = headers.contains_key(PEEK_HEADER);
        let path = original.path();
        let verified = auth.verify(signature, method.as_str(), &port.authority, path, peek);
        cluster.metrics.auth_nonces(auth.remembered_nonces());
        match verified {
            Ok(verified) => digest = Some(verified),
            Err(refusal) => return refused(port, auth, path, refusal),
        }
    }
    // A heartbeat: this replica is alive, whatever its groups and loads (no slot is taken, so a
    // replica busy with slow loads still answers, and is not taken for dead).
    if method == Method::GET && headers.contains_key(HEARTBEAT_HEADER) && body.is_end_stream() {
        return text(StatusCode::OK, "alive");
    }
    // Inside a nested router, `Uri` has the application's prefix stripped.
    let Some((group_name, key)) = parse_path(uri.path(), &cluster.config.base_path) else {
        return closing(
            StatusCode::BAD_REQUEST,
            "bad request: expected {base}{group}/{key}, percent-encoded UTF-8",
        );
    };
    let Some((registered, groups)) = cluster.groups.lookup(&group_name) else {
        return closing(
            StatusCode::NOT_FOUND,
            &format!("no such group: {group_name}"),
        );
    };
    tracing::Span::current().record("group", &*group_name);
    let group = registered.group;
    let share: &Share = &registered.share;
    // The asker's stated wait (a single get's), a little less: the answer must travel back.
    let started = Instant::now();
    let max_wait = headers
        .get(MAX_WAIT_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .map(|ms| {
            Duration::from_millis(ms)
                .min(cluster.config.peer_timeout)
                .mul_f64(0.9)
        });
    // Wait a bounded time for a slot in a bounded crowd, then shed load rather than queue
    // without bound: the requester falls back to a local load.
    let admission = cluster.config.peer_admission_wait;
    let admission = max_wait.map_or(admission, |wait| wait.min(admission));
    let Some(_slot) = cluster
        .limits
        .admit(share, groups, admission, &cluster.metrics)
        .await
    else {
        return closing(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded: too many concurrent peer requests",
        );
    };
    let max_key_bytes = group.max_key_bytes();
    if key.len() > max_key_bytes {
        return closing(
            StatusCode::BAD_REQUEST,
            &format!(
                "key is {} bytes, over the limit of {max_key_bytes}",
                key.len()
            ),
        );
    }
    // A `POST` is only a batch or a purge: any other is refused before its body, like any
    // other method.
    let batch = method == Method::POST && key == BATCH_KEY;
    let purge = method == Method::POST && (key == PURGE_KEY || key == PURGE_HOT_KEY);
    if !(batch || purge || matches!(method, Method::GET | Method::PUT | Method::DELETE)) {
        return closing(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    // The budget's share is held until the body is dropped, at the end of the request. Only a
    // `PUT` and a batch carry a body.
    let carries_body = method == Method::PUT || batch;
    let (body, _budget) = if carries_body {
        // A batch body holds at most `max_batch_keys` keys of at most `max_key_bytes`: longer
        // ones are refused before a byte is read, not decoded first.
        let limit = if batch {
            batch_body_limit(cluster.config.max_batch_keys, max_key_bytes, &group_name)
                .min(port.body_limit)
        } else {
            port.body_limit
        };
        match read_body(port, share, groups, body, limit).await {
            Ok((body, budget)) => (body, Some(budget)),
            Err(refused) => return refused,
        }
    } else if body.is_end_stream() {
        (Bytes::new(), None)
    } else {
        // golang/groupcache sends none; a body here can only cost memory.
        return closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a {method} carries no body"),
        );
    };
    if let Some(digest) = digest
        && let Some(auth) = &cluster.config.auth
        && let Err(refusal) = digest.matches(&body)
    {
        return refused(port, auth, original.path(), refusal);
    }
    let peek = method == Method::GET && headers.contains_key(PEEK_HEADER);
    // A peek is no get: it is counted where it is sent (`groupcache_handoff_*_total`), so
    // `server_requests` stays the gets served to peers, as in golang/groupcache.
    if !peek {
        group.count_server_request();
    }
    match method {
        Method::GET if peek => match group.serve_peek(&key) {
            Some(entry) => answer(entry, None),
            None => text(StatusCode::NOT_FOUND, "not cached"),
        },
        Method::GET => match serve_get(
            group,
            &key,
            headers.contains_key(REFRESH_HEADER),
            max_wait.map(|wait| wait.saturating_sub(started.elapsed())),
        )
        .await
        {
            None => {
                let mut response = text(StatusCode::ACCEPTED, "still loading: ask again");
                response
                    .headers_mut()
                    .insert(ERROR_KIND, HeaderValue::from_static(PENDING));
                response
            }
            Some(Ok((entry, minute_qps))) => answer(entry, Some(minute_qps)),
            Some(Err(error)) => {
                // An open circuit is the owner's verdict on its source: the asker must not load
                // the key itself (which would bypass the breaker), as after a loader error.
                let loader_error = matches!(
                    error,
                    Error::Loader(_) | Error::LoaderPanicked(_) | Error::CircuitOpen
                );
                let mut response = text(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string());
                if loader_error {
                    response
                        .headers_mut()
                        .insert(ERROR_KIND, HeaderValue::from_static(LOADER_ERROR));
                }
                response
            }
        },
        Method::PUT => match SetRequest::decode(body.as_ref()) {
            Ok(request) => {
                group.serve_set(&key, Entry::from(request));
                StatusCode::OK.into_response()
            }
            Err(error) => text(
                StatusCode::BAD_REQUEST,
                &format!("malformed SetRequest: {error}"),
            ),
        },
        Method::POST if key == BATCH_KEY => answer_batch(port, group, &group_name, &body).await,
        Method::POST => {
            group.serve_purge(key == PURGE_HOT_KEY);
            StatusCode::OK.into_response()
        }
        Method::DELETE => {
            group.serve_remove(&key);
            StatusCode::OK.into_response()
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// A peer's get of `key` from `group`, within `max_wait` if the asker stated one; `None` if the
/// load is not done by then (it goes on, in its flight's task).
async fn serve_get(
    group: Arc<dyn Served>,
    key: &str,
    refresh: bool,
    max_wait: Option<Duration>,
) -> Option<Result<(Entry, f64), Error>> {
    let served = group.serve_get(key, refresh);
    match max_wait {
        Some(wait) => tokio::time::timeout(wait, served).await.ok(),
        None => Some(served.await),
    }
}

/// Answers a peer's batch for `group` from its caches and flights; never forwarded again.
async fn answer_batch(port: &Port, group: Arc<dyn Served>, name: &str, body: &[u8]) -> Response {
    let config = &port.cluster.config;
    let request = match parse_request(body, name, config.max_batch_keys, group.max_key_bytes()) {
        Ok(request) => request,
        Err(Refused { status, message }) => return closing(status, &message),
    };
    let cap = answer_room(request.max_answer_bytes, config.max_batch_bytes);
    // The asker's wait, a little less (the answer must travel back), within the peer timeout.
    let max_wait = request.max_wait_ms.map(|ms| {
        Duration::from_millis(ms)
            .min(config.peer_timeout)
            .mul_f64(0.9)
    });
    // The answer's room, taken from the replica's budget of answers in flight before anything
    // is loaded; none left: every key is asked again, nothing loaded.
    let mut reserved = port.cluster.answers.reserve(cap);
    let answers = if cap == 0 {
        // No room in any answer: every key on its own.
        request.keys.iter().map(|_| BatchAnswer::Alone).collect()
    } else if reserved.amount() == 0 {
        request.keys.iter().map(|_| BatchAnswer::AskAgain).collect()
    } else {
        group
            .serve_batch(request.keys, max_wait, cap, reserved.amount())
            .await
    };
    let (parts, values) = answer_parts(answers);
    // What the values take is held until the body has been written or dropped.
    reserved.keep(values);
    (
        [(header::CONTENT_TYPE, PROTOBUF)],
        Body::new(AnswerBody::new(parts, reserved)),
    )
        .into_response()
}

/// Reads a `PUT`'s (or a batch's) body: of a declared length within the limit, within the budget of bytes all
/// bodies being read may take (503 past it, as for the concurrency limit), and within the peer
/// timeout; with the budget's share it holds.
async fn read_body<'a>(
    port: &'a Port,
    share: &'a Share,
    groups: usize,
    body: Body,
    limit: usize,
) -> Result<(Bytes, Held<'a>), Response> {
    let Some(length) = body.size_hint().exact() else {
        return Err(closing(
            StatusCode::LENGTH_REQUIRED,
            "a PUT needs a Content-Length",
        ));
    };
    let length = match usize::try_from(length) {
        Ok(length) if length <= limit => length,
        _ => {
            return Err(closing(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body of {length} bytes, over the limit of {limit}"),
            ));
        }
    };
    let Some(budget) = port.cluster.limits.bytes(share, length, groups) else {
        return Err(closing(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded: too many bytes of bodies being read",
        ));
    };
    let deadline = port.cluster.config.peer_timeout;
    let collected = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(deadline, collected).await {
        Ok(Ok(collected)) => Ok((collected.to_bytes(), budget)),
        Ok(Err(error)) => Err(closing(
            StatusCode::BAD_REQUEST,
            &format!("body could not be read: {error}"),
        )),
        Err(_) => Err(closing(
            StatusCode::REQUEST_TIMEOUT,
            &format!("body not received within {deadline:?}"),
        )),
    }
}

/// A 401 for a request whose signature (or body) does not verify: counted, and logged at most
/// once a second per reason (a flood of them would flood the logs), with how many went unlogged.
fn refused(port: &Port, auth: &PeerAuth, path: &str, refusal: Refusal) -> Response {
    port.cluster.metrics.peer_auth_failure(refusal.reason());
    if let Some(unlogged) = auth.log_refusal(refusal) {
        tracing::warn!(path, %refusal, unlogged, "refused a peer request (one line per reason a second)");
    }
    closing(
        StatusCode::UNAUTHORIZED,
        &format!("unauthorized: {refusal}"),
    )
}

/// A refusal: [`text`] that closes the connection once written, so a client whose requests are
/// refused (unsigned, say, pipelined and never read) cannot keep the connection for more.
fn closing(status: StatusCode, message: &str) -> Response {
    let mut response = text(status, message);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn text(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// The answer to a get or a peek that found `entry`: a value (200), a negative answer (404,
/// [`NOT_FOUND`]) or a failed load's cached message (500, [`LOADER_ERROR`]).
fn answer(entry: Entry, minute_qps: Option<f64>) -> Response {
    match entry.kind() {
        Kind::Value => protobuf(encoded_get_response(entry, minute_qps)),
        Kind::NotFound => {
            let mut response = protobuf(encoded_get_response(entry, minute_qps));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
                .headers_mut()
                .insert(ERROR_KIND, HeaderValue::from_static(NOT_FOUND));
            response
        }
        Kind::Failed => {
            let message = String::from_utf8_lossy(&entry.value);
            let mut response = text(StatusCode::INTERNAL_SERVER_ERROR, &message);
            response
                .headers_mut()
                .insert(ERROR_KIND, HeaderValue::from_static(LOADER_ERROR));
            response
        }
    }
}

/// An encoded `GetResponse`, sent in its parts (`encoded_get_response`).
fn protobuf(parts: Vec<Bytes>) -> Response {
    let body = match <[Bytes; 1]>::try_from(parts) {
        Ok([whole]) => Body::from(whole),
        Err(parts) => Body::new(InParts::new(parts)),
    };
    ([(header::CONTENT_TYPE, PROTOBUF)], body).into_response()
}

/// A body of several buffers sent one after the other, its length known (hyper sends a
/// `Content-Length`, as for one buffer) and each buffer written as it is, without a copy.
struct InParts {
    parts: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl InParts {
    fn new(parts: Vec<Bytes>) -> Self {
        let remaining = parts.iter().map(|part| part.len() as u64).sum();
        InParts {
            parts: parts.into(),
            remaining,
        }
    }
}

impl HttpBody for InParts {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let part = self.parts.pop_front();
        if let Some(part) = &part {
            self.remaining -= part.len() as u64;
        }
        std::task::Poll::Ready(part.map(|part| Ok(hyper::body::Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// Marks an answer of this router as coming from a replica that takes batch requests.
pub(crate) fn advertise(response: &mut Response) {
    response
        .headers_mut()
        .insert(BATCH_HEADER, HeaderValue::from_static("1"));
}
