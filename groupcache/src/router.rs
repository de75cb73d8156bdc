//! The serving side of the wire: an axum router that answers peers' `GET`, `PUT` and `DELETE` for
//! `{base_path}{group}/{key}`, as golang/groupcache's `HTTPPool` does for `GET`.
//!
//! A request that arrives here is never forwarded to another peer: the replica answers from its
//! caches or loads the value itself, so replicas whose rings disagree cannot forward in a loop.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use groupcache_pb::{GetResponse, SetRequest};
use percent_encoding::percent_decode_str;
use prost::Message;

use crate::caches::Entry;
use crate::transport::{ERROR_KIND, LOADER_ERROR, PROTOBUF};
use crate::{Error, Groupcache, Loader};

pub(crate) fn router<L: Loader, S: Clone + Send + Sync + 'static>(
    cache: Groupcache<L>,
) -> Router<S> {
    let base = cache.inner.config.base_path.clone();
    // The body carries a value only in a PUT; leave room for the message's framing.
    let body_limit = cache.inner.config.max_value_bytes.saturating_add(4096);
    let handler = get(serve::<L>).put(serve::<L>).delete(serve::<L>);
    Router::new()
        .route(&format!("{base}{{*rest}}"), handler.clone())
        .route(&base, handler)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(cache)
}

async fn serve<L: Loader>(
    State(cache): State<Groupcache<L>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let inner = &cache.inner;
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
        Method::DELETE => {
            inner.forget(&key);
            StatusCode::OK.into_response()
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// Splits `{base}{group}/{key}` and percent-decodes both parts (`+` stays `+`, as in Go's server).
/// The key is everything after the first `/`, so it may itself contain `/` or be empty.
fn parse_path(path: &str, base: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix(base)?;
    let (group, key) = rest.split_once('/')?;
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    Some((decode(group)?, decode(key)?))
}

fn text(status: StatusCode, message: &str) -> Response {
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

#[cfg(test)]
mod tests {
    use super::parse_path;

    #[test]
    fn paths_split_at_the_first_slash_and_decode_without_plus_rule() {
        let base = "/_groupcache/";
        let parse = |path| parse_path(path, base);
        assert_eq!(parse("/_groupcache/g/k"), Some(("g".into(), "k".into())));
        assert_eq!(
            parse("/_groupcache/g/a%20b+c"),
            Some(("g".into(), "a b+c".into()))
        );
        assert_eq!(
            parse("/_groupcache/g/a/b%2Fc"),
            Some(("g".into(), "a/b/c".into()))
        );
        assert_eq!(parse("/_groupcache/g/"), Some(("g".into(), "".into())));
        assert_eq!(
            parse("/_groupcache/gr%6Fup/%D0%BA"),
            Some(("group".into(), "к".into()))
        );
        assert_eq!(parse("/_groupcache/g"), None, "no key separator");
        assert_eq!(parse("/other/g/k"), None);
        assert_eq!(parse("/_groupcache/g/%FF"), None, "not UTF-8");
    }
}
