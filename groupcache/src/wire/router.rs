//! The serving side of the wire: an axum router that answers peers' `GET`, `PUT` and `DELETE` for
//! `{base_path}{group}/{key}`, as golang/groupcache's `HTTPPool` does for `GET`, and `POST` of a
//! batch to `{base_path}{group}/_batch` ([`batch`](super::batch)); every answer advertises batches.
//!
//! A request that arrives here is never forwarded to another peer: the replica answers from its
//! caches or loads the value itself, so replicas whose rings disagree cannot forward in a loop.

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use groupcache_rs_pb::{GetResponse, SetRequest};
use http_body_util::BodyExt;
use prost::Message;

use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::auth::SIGNATURE_HEADER;
use super::protocol::{BATCH_KEY, ERROR_KIND, LOADER_ERROR, PEEK_HEADER, PROTOBUF, parse_path};
use crate::caches::Entry;
use crate::membership::Endpoint;
use crate::{Error, Groupcache, Loader};

pub(crate) fn router<L: Loader, S: Clone + Send + Sync + 'static>(
    cache: Groupcache<L>,
) -> Router<S> {
    let base = cache.inner.config.base_path.clone();
    // The body carries a value only in a PUT; leave room for the message's framing.
    let body_limit = cache.inner.config.max_value_bytes.saturating_add(4096);
    // At least one body of the largest size fits, whatever the budget.
    let body_bytes = cache
        .inner
        .config
        .max_buffered_peer_bytes
        .max(body_limit)
        .min(Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(
        cache.inner.config.max_concurrent_peer_requests,
    ));
    // Signatures name the replica they are meant for, as its peers know it: by its URL.
    let authority: Arc<[u8]> = Endpoint::parse(&cache.inner.self_url)
        .map(|endpoint| endpoint.authority.as_bytes().into())
        .unwrap_or_default();
    let handler = get(serve::<L>)
        .put(serve::<L>)
        .delete(serve::<L>)
        .post(serve::<L>);
    Router::new()
        .route(&format!("{base}{{*rest}}"), handler.clone())
        .route(&base, handler)
        .with_state(Served {
            authority,
            cache,
            slots,
            body_limit,
            body_bytes: Arc::new(Semaphore::new(body_bytes)),
        })
}

/// The router's state: the cache, and how many more peer requests it may serve at once.
struct Served<L: Loader> {
    /// This replica's `host:port`, which a signature must name.
    authority: Arc<[u8]>,
    cache: Groupcache<L>,
    slots: Arc<Semaphore>,
    /// Largest `PUT` body read.
    body_limit: usize,
    /// Bytes of `PUT` bodies being read or decoded, at most.
    body_bytes: Arc<Semaphore>,
}

impl<L: Loader> Clone for Served<L> {
    fn clone(&self) -> Self {
        Served {
            authority: self.authority.clone(),
            cache: self.cache.clone(),
            slots: self.slots.clone(),
            body_limit: self.body_limit,
            body_bytes: self.body_bytes.clone(),
        }
    }
}

/// Serves one request, its answer marked as coming from a replica that takes batches. Marked
/// here rather than by a middleware layer, which cost each remote get 3 µs of boxing and cloning
/// (BENCHMARKS.md). The request is taken whole: extracting its headers apart would clone them.
async fn serve<L: Loader>(State(served): State<Served<L>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut response = respond(&served, &parts, body).await;
    super::batch::advertise(&mut response);
    response
}

/// The answer to one request. Nothing is read from the body before the signature (from the
/// headers alone) is checked and a concurrency slot is taken; only a `PUT` has a body, read under
/// a size limit, a byte budget and a deadline, then checked against the digest the signature
/// covers.
async fn respond<L: Loader>(served: &Served<L>, parts: &Parts, body: Body) -> Response {
    let (method, uri, headers) = (parts.method.clone(), &parts.uri, &parts.headers);
    // The path as the client sent it, before a nesting router stripped its prefix from `uri`.
    let original = parts
        .extensions
        .get::<OriginalUri>()
        .map_or(uri, |original| &original.0);
    let inner = &served.cache.inner;
    let mut digest = None;
    if let Some(auth) = &inner.config.auth {
        // The client signed the path it sent: the full one, before any nesting stripped a prefix.
        let signature = headers
            .get(SIGNATURE_HEADER)
            .and_then(|value| value.to_str().ok());
        let verified = auth.verify(
            signature,
            method.as_str(),
            &served.authority,
            original.path(),
        );
        inner.metrics.auth_nonces(auth.remembered_nonces());
        match verified {
            Ok(verified) => digest = Some(verified),
            Err(refusal) => return refused(served, original.path(), refusal),
        }
    }
    // Shed load rather than queue without bound: the requester falls back to a local load.
    let Ok(_slot) = served.slots.try_acquire() else {
        return closing(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded: too many concurrent peer requests",
        );
    };
    // Inside a nested router, `Uri` has the application's prefix stripped.
    let Some((group, key)) = parse_path(uri.path(), &inner.config.base_path) else {
        return closing(
            StatusCode::BAD_REQUEST,
            "bad request: expected {base}{group}/{key}, percent-encoded UTF-8",
        );
    };
    if group != inner.group {
        return closing(StatusCode::NOT_FOUND, &format!("no such group: {group}"));
    }
    if key.len() > inner.config.max_key_bytes {
        let limit = inner.config.max_key_bytes;
        return closing(
            StatusCode::BAD_REQUEST,
            &format!("key is {} bytes, over the limit of {limit}", key.len()),
        );
    }
    // A `POST` is only a batch: any other is refused before its body, like any other method.
    let batch = method == Method::POST && key == BATCH_KEY;
    if !(batch || matches!(method, Method::GET | Method::PUT | Method::DELETE)) {
        let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    // The budget's share is held until the body is dropped, at the end of the request. Only a
    // `PUT` and a batch carry a body.
    let carries_body = method == Method::PUT || batch;
    let (body, _budget) = if carries_body {
        match read_body(served, body).await {
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
        && let Err(refusal) = digest.matches(&body)
    {
        return refused(served, original.path(), refusal);
    }
    let peek = method == Method::GET && headers.contains_key(PEEK_HEADER);
    // A peek is no get: it is counted where it is sent (`groupcache_handoff_*_total`), so
    // `server_requests` stays the gets served to peers, as in golang/groupcache.
    if !peek {
        inner.metrics.server_request();
    }
    match method {
        Method::GET if peek => match inner.serve_peek(&key) {
            Some(entry) => protobuf(GetResponse {
                value: Some(entry.value),
                minute_qps: None,
                expire: (entry.expire != 0).then_some(entry.expire),
            }),
            None => text(StatusCode::NOT_FOUND, "not cached"),
        },
        Method::GET => match inner.serve_get(&key).await {
            Ok((entry, minute_qps)) => protobuf(GetResponse {
                value: Some(entry.value),
                minute_qps: Some(minute_qps),
                expire: (entry.expire != 0).then_some(entry.expire),
            }),
            Err(error) => {
                let loader_error = matches!(error, Error::Loader(_) | Error::LoaderPanicked(_));
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
                let entry = Entry {
                    value: request.value.unwrap_or_default(),
                    expire: request.expire.unwrap_or(0),
                };
                inner.store_owned(&key, entry);
                StatusCode::OK.into_response()
            }
            Err(error) => text(
                StatusCode::BAD_REQUEST,
                &format!("malformed SetRequest: {error}"),
            ),
        },
        Method::POST if key == BATCH_KEY => super::batch::answer(inner, &body).await,
        Method::DELETE => {
            inner.forget(&key);
            StatusCode::OK.into_response()
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// Reads a `PUT`'s (or a batch's) body: of a declared length within the limit, within the budget of bytes all
/// bodies being read may take (503 past it, as for the concurrency limit), and within the peer
/// timeout; with the budget's share it holds.
async fn read_body<L: Loader>(
    served: &Served<L>,
    body: Body,
) -> Result<(Bytes, SemaphorePermit<'_>), Response> {
    let limit = served.body_limit;
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
    let Ok(budget) = u32::try_from(length)
        .ok()
        .and_then(|length| served.body_bytes.try_acquire_many(length).ok())
        .ok_or(())
    else {
        return Err(closing(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded: too many bytes of bodies being read",
        ));
    };
    let deadline = served.cache.inner.config.peer_timeout;
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

/// A 401 for a request whose signature (or body) does not verify, counted and logged.
fn refused<L: Loader>(served: &Served<L>, path: &str, refusal: super::auth::Refusal) -> Response {
    let inner = &served.cache.inner;
    inner.metrics.peer_auth_failure(refusal.reason());
    tracing::warn!(group = %inner.group, path, %refusal, "refused a peer request");
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

pub(super) fn text(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

fn protobuf(message: GetResponse) -> Response {
    ([(header::CONTENT_TYPE, PROTOBUF)], message.encode_to_vec()).into_response()
}
