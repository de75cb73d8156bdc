//! The serving side of the wire: an axum router that answers peers' `GET`, `PUT` and `DELETE` for
//! `{base_path}{group}/{key}`, as golang/groupcache's `HTTPPool` does for `GET`, and `POST` of a
//! batch to `{base_path}{group}/_batch` ([`batch`](super::batch)); every answer advertises batches.
//!
//! A request that arrives here is never forwarded to another peer: the replica answers from its
//! caches or loads the value itself, so replicas whose rings disagree cannot forward in a loop.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use groupcache_rs_pb::{GetResponse, SetRequest};
use prost::Message;

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::auth::SIGNATURE_HEADER;
use super::protocol::{BATCH_KEY, ERROR_KIND, LOADER_ERROR, PROTOBUF, parse_path};
use crate::caches::Entry;
use crate::{Error, Groupcache, Loader};

pub(crate) fn router<L: Loader, S: Clone + Send + Sync + 'static>(
    cache: Groupcache<L>,
) -> Router<S> {
    let base = cache.inner.config.base_path.clone();
    // The body carries a value only in a PUT; leave room for the message's framing.
    let body_limit = cache.inner.config.max_value_bytes.saturating_add(4096);
    let slots = Arc::new(Semaphore::new(
        cache.inner.config.max_concurrent_peer_requests,
    ));
    let handler = get(serve::<L>)
        .put(serve::<L>)
        .delete(serve::<L>)
        .post(serve::<L>);
    Router::new()
        .route(&format!("{base}{{*rest}}"), handler.clone())
        .route(&base, handler)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::map_response(super::batch::advertise))
        .with_state(Served { cache, slots })
}

/// The router's state: the cache, and how many more peer requests it may serve at once.
struct Served<L: Loader> {
    cache: Groupcache<L>,
    slots: Arc<Semaphore>,
}

impl<L: Loader> Clone for Served<L> {
    fn clone(&self) -> Self {
        Served {
            cache: self.cache.clone(),
            slots: self.slots.clone(),
        }
    }
}

async fn serve<L: Loader>(
    State(served): State<Served<L>>,
    method: Method,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inner = &served.cache.inner;
    if let Some(auth) = &inner.config.auth {
        // The client signed the path it sent: the full one, before any nesting stripped a prefix.
        let signature = headers
            .get(SIGNATURE_HEADER)
            .and_then(|value| value.to_str().ok());
        if let Err(refusal) = auth.verify(signature, method.as_str(), original.path(), &body) {
            inner.metrics.peer_auth_failure();
            tracing::warn!(group = %inner.group, path = original.path(), %refusal, "refused a peer request");
            return text(
                StatusCode::UNAUTHORIZED,
                &format!("unauthorized: {refusal}"),
            );
        }
    }
    // Shed load rather than queue without bound: the requester falls back to a local load.
    let Ok(_slot) = served.slots.try_acquire() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded: too many concurrent peer requests",
        );
    };
    // Inside a nested router, `Uri` has the application's prefix stripped.
    let Some((group, key)) = parse_path(uri.path(), &inner.config.base_path) else {
        return text(
            StatusCode::BAD_REQUEST,
            "bad request: expected {base}{group}/{key}, percent-encoded UTF-8",
        );
    };
    if group != inner.group {
        return text(StatusCode::NOT_FOUND, &format!("no such group: {group}"));
    }
    if key.len() > inner.config.max_key_bytes {
        let limit = inner.config.max_key_bytes;
        return text(
            StatusCode::BAD_REQUEST,
            &format!("key is {} bytes, over the limit of {limit}", key.len()),
        );
    }
    inner.metrics.server_request();
    match method {
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
        Method::PUT => match SetRequest::decode(body) {
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
