//! `GET`, `PUT` and `DELETE /items/{key}`: reads through the cache, writes to the database first
//! and then to the cache (`set`, on the key's owner; every other replica drops its hot copy), so
//! that every replica answers the new value.
//!
//! Every input is checked before anything is written: a bad key, body or expiry is a 4xx and
//! changes nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use groupcache_rs::Json;
use serde::{Deserialize, Serialize};

use super::problem::Problem;
use crate::database::{Cached, DbError, Item, Row, WriteError};
use crate::service::AppState;

/// Longest key the service accepts (characters `A-Z a-z 0-9 _ -`).
pub const MAX_KEY_LEN: usize = 128;

/// Largest `PUT` (or batch) body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest expiry, from now: ten years (`ttl_seconds`, or `expires_at` that far ahead).
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// The answer of `GET` and `PUT /items/{key}`.
#[derive(Debug, Serialize)]
struct ItemResponse<'a> {
    item: &'a Item,
    /// This replica's name.
    served_by: &'a str,
    /// The key's owner in this replica's ring (its peer URL).
    owner: String,
}

/// The body of `PUT /items/{key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: serde_json::Value,
    ttl_seconds: Option<u64>,
    expires_at: Option<u64>,
}

/// Checks a key from the path: 1 to [`MAX_KEY_LEN`] characters of `A-Z a-z 0-9 _ -`.
pub fn check_key(key: &str) -> Result<(), Problem> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-key",
            format!("keys are 1 to {MAX_KEY_LEN} characters of A-Z a-z 0-9 _ -"),
        ))
    }
}

/// `GET /items/{key}`.
pub async fn get_item(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    if let Err(problem) = check_key(&key) {
        return problem.into_response();
    }
    match read_outcome(&key, state.cache.get(&key).await) {
        Ok(item) => respond(&state, StatusCode::OK, &item),
        Err(problem) => problem.into_response(),
    }
}

/// What a read of `key` through the cache answers, as `GET /items/{key}` sends it and as each
/// key of a batch (`POST /items/_batch`) gets it: the item, or a problem (404: no such item; 503:
/// the database failed, nothing cached; ...).
pub(crate) fn read_outcome(
    key: &str,
    read: Result<Cached, groupcache_rs::Error>,
) -> Result<Item, Problem> {
    match read {
        Ok(Json(Some(item))) => Ok(item),
        Ok(Json(None)) => Err(not_found(key)),
        Err(error @ groupcache_rs::Error::KeyTooLarge { .. }) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-key",
            error.to_string(),
        )),
        Err(
            error @ (groupcache_rs::Error::Loader(_) | groupcache_rs::Error::RemoteLoader { .. }),
        ) => {
            tracing::warn!(key, %error, "loading from the database failed");
            Err(Problem::unavailable("the database query failed; try again"))
        }
        Err(error) => Err(Problem::internal("get failed", &error)),
    }
}

/// `PUT /items/{key}`: `{"value": any JSON, "ttl_seconds": n}` or `{"value": ..., "expires_at":
/// unix seconds}` (or neither: no expiry).
pub async fn put_item(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let row = match check_key(&key).and_then(|()| parse_put(&headers, body, SystemTime::now())) {
        Ok(row) => row,
        Err(problem) => return problem.into_response(),
    };
    let expiry = state.database.cache_expiry(row.expires_at);
    // The cache step runs once the database has the row, before the commit, under the key's
    // lock: from here on, a failure only delays what the replicas see.
    let cache_step = |item: Item| async {
        if let Err(error) = state.cache.set(&key, &Json(Some(item)), expiry).await {
            tracing::warn!(key, %error, "written to the database, but not to the cache");
            forget(&state, &key).await;
        }
    };
    match state.database.put(&key, row, cache_step).await {
        Ok(item) => respond(&state, StatusCode::OK, &item),
        Err(error) => write_error(&state, &key, &error).await,
    }
}

/// `DELETE /items/{key}`: 204, or 404 if there was no such item.
pub async fn delete_item(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    if let Err(problem) = check_key(&key) {
        return problem.into_response();
    }
    // Even if there was no row: a stale cached copy goes too. The cache holds "no such item"
    // rather than nothing, so the next reads cost no query (and, with the simulated database,
    // do not reload the owner's own copy of the row).
    let expiry = state.database.cache_expiry(None);
    let cache_step = || async {
        if let Err(error) = state.cache.set(&key, &Json(None), expiry).await {
            tracing::warn!(key, %error, "deleted in the database, but not in the cache");
            forget(&state, &key).await;
        }
    };
    match state.database.delete(&key, cache_step).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&key).into_response(),
        Err(error) => write_error(&state, &key, &error).await,
    }
}

/// Removes `key` from every replica's cache, logging a failure (the copies left expire with their
/// TTL, hot copies within the hot cache's maximum age).
async fn forget(state: &AppState, key: &str) {
    if let Err(error) = state.cache.remove(key).await {
        tracing::warn!(key, %error, "removing from the cache failed on some replica");
    }
}

/// Checks the content type, size and shape of a `PUT` body, and turns its expiry into a time.
fn parse_put(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    now: SystemTime,
) -> Result<Row, Problem> {
    let body = json_body(headers, body)?;
    let body: PutBody = serde_json::from_slice(&body).map_err(|error| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            format!(
                "expected {{\"value\": any JSON, optional \"ttl_seconds\" or \"expires_at\"}}: \
                 {error}"
            ),
        )
    })?;
    let expires_at = expiry(body.ttl_seconds, body.expires_at, now)?;
    Ok(Row {
        value: body.value,
        expires_at,
    })
}

/// The body of a request that must be JSON (`Content-Type: application/json`) of at most
/// [`MAX_BODY_BYTES`]: 415 or 413 otherwise.
pub(crate) fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send the body as Content-Type: application/json",
        ));
    }
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("bodies are at most {MAX_BODY_BYTES} bytes"),
            )
        } else {
            Problem::new(rejection.status(), "invalid-body", rejection.body_text())
        }
    })
}

/// The expiry a `PUT` asks for: at most one of a TTL (1 s to [`MAX_TTL_SECONDS`]) and an
/// absolute time (in the future, at most [`MAX_TTL_SECONDS`] away).
fn expiry(
    ttl_seconds: Option<u64>,
    expires_at: Option<u64>,
    now: SystemTime,
) -> Result<Option<SystemTime>, Problem> {
    let invalid =
        |detail: String| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-expiry", detail);
    let now_seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match (ttl_seconds, expires_at) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(invalid(
            "give ttl_seconds or expires_at, not both".to_owned(),
        )),
        (Some(ttl), None) if (1..=MAX_TTL_SECONDS).contains(&ttl) => {
            Ok(Some(now + Duration::from_secs(ttl)))
        }
        (Some(ttl), None) => Err(invalid(format!(
            "ttl_seconds {ttl} is not between 1 and {MAX_TTL_SECONDS}"
        ))),
        (None, Some(at)) if at > now_seconds && at - now_seconds <= MAX_TTL_SECONDS => {
            Ok(Some(UNIX_EPOCH + Duration::from_secs(at)))
        }
        (None, Some(at)) => Err(invalid(format!(
            "expires_at {at} is not in the next {MAX_TTL_SECONDS} seconds (now: {now_seconds})"
        ))),
    }
}

fn respond(state: &AppState, status: StatusCode, item: &Item) -> Response {
    let body = ItemResponse {
        item,
        served_by: &state.replica,
        owner: state.cache.owner(&item.id),
    };
    match serde_json::to_vec(&body) {
        Ok(json) => (status, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => Problem::internal("serialising an item", &error).into_response(),
    }
}

fn not_found(key: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no item {key:?}"),
    )
}

async fn write_error(state: &AppState, key: &str, error: &WriteError) -> Response {
    tracing::warn!(key, %error, "database write failed");
    if let WriteError::Unconfirmed(_) = error {
        // The cache may hold what the database did not keep: the next read loads the truth.
        forget(state, key).await;
        return Problem::unavailable(
            "the database did not confirm the write; read the item to see whether it was saved",
        )
        .into_response();
    }
    match error.db_error() {
        DbError::Unavailable(_) => {
            Problem::unavailable("the database is unavailable; nothing was written").into_response()
        }
        DbError::Failed(_) => Problem::new(
            StatusCode::BAD_GATEWAY,
            "database-failed",
            "the database refused the write; nothing was written",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        headers
    }

    fn put(body: &str) -> Result<Row, Problem> {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        parse_put(&json_headers(), Ok(Bytes::from(body.to_owned())), now)
    }

    #[test]
    fn keys() {
        assert!(check_key("a-Z_0").is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        for bad in ["", "a b", "a/b", "é", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert_eq!(check_key(bad).unwrap_err().kind, "invalid-key", "{bad:?}");
        }
    }

    #[test]
    fn put_bodies_and_expiries() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let row = put(r#"{"value": {"a": [1, 2]}}"#).unwrap();
        assert_eq!(row.value, serde_json::json!({"a": [1, 2]}));
        assert_eq!(row.expires_at, None);
        let row = put(r#"{"value": 1, "ttl_seconds": 60}"#).unwrap();
        assert_eq!(row.expires_at, Some(now + Duration::from_secs(60)));
        let row = put(r#"{"value": "x", "expires_at": 1000060}"#).unwrap();
        assert_eq!(row.expires_at, Some(now + Duration::from_secs(60)));

        let status = |body: &str| put(body).unwrap_err().status.as_u16();
        for malformed in [
            "",
            "{",
            "[]",
            r#"{"ttl_seconds": 5}"#,
            r#"{"value": 1, "extra": 2}"#,
            r#"{"value": 1, "ttl_seconds": -1}"#,
            r#"{"value": 1, "ttl_seconds": 1.5}"#,
            r#"{"value": 1, "ttl_seconds": 99999999999999999999999}"#,
        ] {
            assert_eq!(status(malformed), 400, "{malformed}");
        }
        for bad_expiry in [
            r#"{"value": 1, "ttl_seconds": 0}"#,
            r#"{"value": 1, "ttl_seconds": 315360001}"#,
            r#"{"value": 1, "expires_at": 1000000}"#,
            r#"{"value": 1, "expires_at": 5}"#,
            r#"{"value": 1, "expires_at": 316360001}"#,
            r#"{"value": 1, "ttl_seconds": 5, "expires_at": 1000060}"#,
        ] {
            assert_eq!(status(bad_expiry), 422, "{bad_expiry}");
        }
        let text = parse_put(&HeaderMap::new(), Ok(Bytes::from_static(b"{}")), now);
        assert_eq!(text.unwrap_err().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
