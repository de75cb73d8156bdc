//! `GET`, `PUT` and `DELETE /items/{key}`: reads through the cache, writes to the database first
//! and then to the cache (`set`, on the key's owner; every other replica drops its hot copy), so
//! that every replica answers the new value.
//!
//! Once the database has a write, the item's category summary (the `categories` group, see
//! `database::categories`) is removed from every replica, so that the next read counts again.
//!
//! Every input is checked before anything is written: a bad key, body or expiry is a 4xx and
//! changes nothing.
//!
//! A read of a key without a row is the cache's negative answer (`Error::NotFound`, kept for
//! `--not-found-ttl`): 404. While the database cannot be read, an item past its cache TTL (by
//! less than `--item-max-stale`) is still answered, marked [`STALE_WARNING`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use groupcache_rs::{Freshness, Groupcache, Json, Loader};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::problem::Problem;
use super::respond::json;
use crate::database::categories::category_of;
use crate::database::{Cached, DbError, Item, Row, WriteError, unix_seconds};
use crate::state::AppState;

/// Longest key the service accepts, in characters. A character is at most 4 bytes in UTF-8, so
/// every key accepted fits the cache's key limit ([`MAX_KEY_BYTES`]); the limit is in characters
/// because that is what the OpenAPI document (JSON Schema's `maxLength`) can state.
pub const MAX_KEY_LEN: usize = 1024;

/// The cache's key limit, in bytes (the library's default, set explicitly by [`crate::run`]).
pub const MAX_KEY_BYTES: usize = 4 * MAX_KEY_LEN;

/// Largest `PUT` (or batch) body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest expiry, from now: ten years (`ttl_seconds`, or `expires_at` that far ahead).
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// The `Warning` of an item served past its cache TTL because the database could not be read
/// (RFC 7234's "Response is Stale"): it may have changed since.
pub const STALE_WARNING: &str = "110 - \"Response is Stale\"";

/// The answer of `GET` and `PUT /items/{key}`.
#[derive(Debug, Serialize)]
struct ItemResponse<'a> {
    item: &'a Item,
    /// This replica's name.
    served_by: &'a str,
    /// The key's owner in this replica's ring (its peer URL).
    owner: String,
}

/// The answer of a `PUT` or `DELETE` whose cache step did not reach every replica (202): the
/// database has the write, but some replicas may answer the old value until `stale_until`.
#[derive(Debug, Serialize)]
struct Incomplete<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<&'a Item>,
    key: &'a str,
    /// This replica's name.
    served_by: &'a str,
    /// The key's owner in this replica's ring (its peer URL).
    owner: String,
    /// Unix seconds until which a replica may still answer the old value; `null`: until the
    /// entry is evicted (`--item-ttl 0s`).
    stale_until: Option<u64>,
    /// Why.
    detail: String,
}

/// The body of `PUT /items/{key}`. `value` is kept as sent, so that numbers of any size are
/// stored exactly (PostgreSQL's `jsonb` keeps them as `numeric`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: Box<RawValue>,
    #[serde(default, deserialize_with = "whole_seconds")]
    ttl_seconds: Option<u64>,
    #[serde(default, deserialize_with = "whole_seconds")]
    expires_at: Option<u64>,
}

/// A number of seconds: a non-negative whole number, `269` or `269.0` alike (JSON Schema's
/// `integer`); `null`, fractions and negative numbers are refused.
fn whole_seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = number.as_u64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        // Below 2^64, a whole f64 converts exactly.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0 => {
            Ok(Some(f as u64))
        }
        _ => Err(D::Error::custom(format!(
            "{number} is not a whole number of seconds from 0 to 2^64 - 1"
        ))),
    }
}

/// Checks a key from the path: 1 to [`MAX_KEY_LEN`] characters, none of them NUL (PostgreSQL's
/// `text` cannot hold it), and not `.` or `..` (HTTP clients resolve those as path steps, so
/// such a key could not be asked for reliably).
pub fn check_key(key: &str) -> Result<(), Problem> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(invalid_key())
    }
}

/// Whether `key` keeps the rules of [`check_key`].
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.chars().count() <= MAX_KEY_LEN
        && !key.contains('\0')
        && key != "."
        && key != ".."
}

fn invalid_key() -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-key",
        format!(
            "keys are 1 to {MAX_KEY_LEN} characters of UTF-8 text (percent-encoded in the path), \
             without NUL, and not . or .."
        ),
    )
}

/// The `{key}` of a path, checked ([`check_key`]): a key that is not UTF-8 or breaks the rules is
/// refused with problem details (400 `invalid-key`).
#[derive(Debug)]
pub struct Key(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Key, Problem> {
        path_param(parts, valid_key, invalid_key).await.map(Key)
    }
}

/// The one parameter of a path, refused with `invalid()` if it is not UTF-8 or not `valid`.
pub(crate) async fn path_param(
    parts: &mut Parts,
    valid: fn(&str) -> bool,
    invalid: fn() -> Problem,
) -> Result<String, Problem> {
    match Path::<String>::from_request_parts(parts, &()).await {
        Ok(Path(value)) if valid(&value) => Ok(value),
        _ => Err(invalid()),
    }
}

/// `GET /items/{key}`: the item, with [`STALE_WARNING`] if it is served stale.
pub async fn get_item(State(state): State<AppState>, Key(key): Key) -> Response {
    let read = state.cache.get_with_freshness(&key).await;
    let freshness = read
        .as_ref()
        .map_or(Freshness::Fresh, |(_, freshness)| *freshness);
    match read_outcome(&key, read.map(|(item, _)| item)) {
        Ok(item) => {
            let mut response = respond(&state, StatusCode::OK, &item);
            if freshness == Freshness::Stale {
                response
                    .headers_mut()
                    .insert(header::WARNING, HeaderValue::from_static(STALE_WARNING));
            }
            response
        }
        Err(problem) => problem.into_response(),
    }
}

/// What a read of `key` through the cache answers, as `GET /items/{key}` sends it and as each
/// key of a batch (`POST /items/_batch`) gets it: the item, or a problem (404: no such item,
/// deleted, or past its own expiry; 503: the database failed, nothing cached; ...).
pub(crate) fn read_outcome(
    key: &str,
    read: Result<Cached, groupcache_rs::Error>,
) -> Result<Item, Problem> {
    match read {
        // A stale item (`--item-max-stale`) may be past its own expiry, which needs no database
        // to tell: expired by a whole second at least (`expires_at` is rounded down).
        Ok(Json(Some(item)))
            if item
                .expires_at
                .is_some_and(|at| at < unix_seconds(SystemTime::now())) =>
        {
            Err(not_found(key))
        }
        Ok(Json(Some(item))) => Ok(item),
        Ok(Json(None)) | Err(groupcache_rs::Error::NotFound) => Err(not_found(key)),
        Err(error) => Err(read_failed(key, error)),
    }
}

/// What a failed read of `key` through a cache (either group) answers: 400 for a key the cache
/// refuses, 503 when the database query failed (nothing cached: the next read tries again).
pub(crate) fn read_failed(key: &str, error: groupcache_rs::Error) -> Problem {
    match error {
        error @ groupcache_rs::Error::KeyTooLarge { .. } => {
            Problem::new(StatusCode::BAD_REQUEST, "invalid-key", error.to_string())
        }
        error @ (groupcache_rs::Error::Loader(_) | groupcache_rs::Error::RemoteLoader { .. }) => {
            tracing::warn!(key, %error, "loading from the database failed");
            Problem::unavailable("the database query failed; try again")
        }
        groupcache_rs::Error::CircuitOpen => {
            // Not logged per request: the gauge `groupcache_loader_circuit_open` shows it.
            Problem::unavailable("the database is failing; reads are paused for a moment")
        }
        error => Problem::internal("get failed", &error),
    }
}

/// `PUT /items/{key}`: `{"value": any JSON, "ttl_seconds": n}` or `{"value": ..., "expires_at":
/// unix seconds}` (or neither: no expiry).
pub async fn put_item(
    State(state): State<AppState>,
    Key(key): Key,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let row = match parse_put(&headers, body, SystemTime::now()) {
        Ok(row) => row,
        Err(problem) => return problem.into_response(),
    };
    let expiry = state.database.written_expiry(row.expires_at);
    // The cache step runs once the database has the row, before the commit, under the key's
    // lock: from here on, a failure only delays what the replicas see, and the answer says so.
    let reached_all = AtomicBool::new(true);
    let cache_step = |item: Item| async {
        if let Err(error) = state.cache.set(&key, &Json(Some(item)), expiry).await {
            tracing::warn!(key, %error, "written to the database, but not to the cache");
            reached_all.store(forget(&state.cache, &key).await, Ordering::Relaxed);
        }
    };
    let result = state.database.put(&key, row, cache_step).await;
    let missed = Missed {
        items: !reached_all.into_inner(),
        category: !forget_category(&state, &key, &result).await,
    };
    match result {
        Ok(item) if !missed.any() => respond(&state, StatusCode::OK, &item),
        Ok(item) => incomplete(&state, "put", &key, Some(&item), expiry, missed),
        Err(error) => write_error(&state, &key, &error).await,
    }
}

/// `DELETE /items/{key}`: 204, or 404 if there was no such item; 202 if the cache step did not
/// reach every replica.
pub async fn delete_item(State(state): State<AppState>, Key(key): Key) -> Response {
    // Even if there was no row: a stale cached copy goes too. The cache holds "no such item"
    // rather than nothing, so the next reads cost no query (and, with the simulated database,
    // do not reload the owner's own copy of the row).
    let expiry = state.database.written_expiry(None);
    let reached_all = AtomicBool::new(true);
    let cache_step = || async {
        if let Err(error) = state.cache.set(&key, &Json(None), expiry).await {
            tracing::warn!(key, %error, "deleted in the database, but not in the cache");
            reached_all.store(forget(&state.cache, &key).await, Ordering::Relaxed);
        }
    };
    let result = state.database.delete(&key, cache_step).await;
    let missed = Missed {
        items: !reached_all.into_inner(),
        category: !forget_category(&state, &key, &result).await,
    };
    match result {
        Ok(existed) if missed.any() => {
            let response = incomplete(&state, "delete", &key, None, expiry, missed);
            if existed {
                response
            } else {
                // No row: still a 404, but the stale copies are worth a log line (above).
                not_found(&key).into_response()
            }
        }
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&key).into_response(),
        Err(error) => write_error(&state, &key, &error).await,
    }
}

/// Removes `key` from every replica's `cache` (either group); returns whether every replica was
/// reached (the copies left expire with their TTL, hot copies within the hot cache's maximum
/// age).
async fn forget<L: Loader>(cache: &Groupcache<L>, key: &str) -> bool {
    match cache.remove(key).await {
        Ok(()) => true,
        Err(error) => {
            let group = cache.name();
            tracing::warn!(group, key, %error, "removing from the cache failed on some replica");
            false
        }
    }
}

/// After a write of `key` that the database may have (committed, or not confirmed): removes the
/// summary of the key's category from every replica, so that the next read of it counts again.
/// After the commit, not before: a count in flight, which may have read the table before it, is
/// superseded by the remove, and any count started later sees the write. Returns whether every
/// replica was reached (true for a write that changed nothing, or a key without a category).
async fn forget_category<T>(state: &AppState, key: &str, write: &Result<T, WriteError>) -> bool {
    match (category_of(key), write) {
        (None, _) | (_, Err(WriteError::NotWritten(_))) => true,
        (Some(category), _) => forget(&state.categories, category).await,
    }
}

/// Which caches a write's cache step did not reach on every replica.
#[derive(Debug, Clone, Copy)]
struct Missed {
    /// The item itself.
    items: bool,
    /// Its category's summary.
    category: bool,
}

impl Missed {
    fn any(self) -> bool {
        self.items || self.category
    }
}

/// 202: the database has the write, but its cache step did not reach every replica, which may
/// answer the old value (or the old count of its category) until the entry it holds expires (the
/// cache TTL, or the item's expiry).
fn incomplete(
    state: &AppState,
    op: &'static str,
    key: &str,
    item: Option<&Item>,
    expiry: Option<SystemTime>,
    missed: Missed,
) -> Response {
    crate::metrics::write_incomplete(op);
    // An entry cached before this write lived at most the cache TTL from its load; with no TTL,
    // until evicted (an item: or until its expiry). The later bound of the caches missed; none
    // (`null`) if either has none.
    let ttl = state.database.cache_expiry(None);
    let bounds = [(missed.items, ttl.or(expiry)), (missed.category, ttl)];
    let stale_until = bounds
        .into_iter()
        .filter(|(missed, _)| *missed)
        .try_fold(UNIX_EPOCH, |latest, (_, bound)| {
            bound.map(|at| latest.max(at))
        })
        .map(crate::database::unix_seconds);
    let body = Incomplete {
        item,
        key,
        served_by: &state.replica,
        owner: state.cache.owner(key),
        stale_until,
        detail: "the database has the write, but not every replica's cache could be reached: \
                 some may answer the old value until stale_until"
            .to_owned(),
    };
    let mut response = json(&body);
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}

/// Checks the content type, size and shape of a `PUT` body, and turns its expiry into a time.
fn parse_put(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    now: SystemTime,
) -> Result<Row, Problem> {
    let body = json_body(headers, body)?;
    let invalid = |why: String| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            format!(
                "expected {{\"value\": any JSON, optional \"ttl_seconds\" or \"expires_at\"}}: \
                 {why}"
            ),
        )
    };
    require_object(&body).map_err(invalid)?;
    let body: PutBody =
        serde_json::from_slice(&body).map_err(|error| invalid(error.to_string()))?;
    check_value(&body.value).map_err(invalid)?;
    let expires_at = expiry(body.ttl_seconds, body.expires_at, now)?;
    Ok(Row {
        value: body.value,
        expires_at,
    })
}

/// Refuses a body that is not a JSON object: serde reads a struct from an array too (`[1]`), and
/// the document promises an object.
pub(crate) fn require_object(body: &[u8]) -> Result<(), String> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err("the body must be a JSON object".to_owned()),
    }
}

/// The rules of a value that every backend can store: no NUL in any string or member name
/// (PostgreSQL's `jsonb` refuses `\u0000`), nested at most 128 deep (serde_json's limit), and
/// numbers within a double's range.
fn check_value(value: &RawValue) -> Result<(), String> {
    fn has_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(has_nul),
            serde_json::Value::Object(members) => members
                .iter()
                .any(|(name, value)| name.contains('\0') || has_nul(value)),
            _ => false,
        }
    }
    let parsed: serde_json::Value =
        serde_json::from_str(value.get()).map_err(|error| error.to_string())?;
    if has_nul(&parsed) {
        return Err("strings in value may not contain NUL (\\u0000)".to_owned());
    }
    Ok(())
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
        forget(&state.cache, key).await;
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
        for good in [
            "a-Z_0",
            "user:42",
            "ada@example.com",
            "a b",
            "a/b",
            "é",
            "_batch",
            "...",
        ] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
        assert!(check_key(&"é".repeat(MAX_KEY_LEN)).is_ok());
        assert!("é".repeat(MAX_KEY_LEN).len() <= MAX_KEY_BYTES);
        for bad in ["", ".", "..", "a\0b", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert_eq!(check_key(bad).unwrap_err().kind, "invalid-key", "{bad:?}");
        }
    }

    #[test]
    fn put_bodies_and_expiries() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let row = put(r#"{"value": {"a": [1, 2]}}"#).unwrap();
        assert_eq!(row.value.get(), r#"{"a": [1, 2]}"#);
        assert_eq!(row.expires_at, None);
        let row = put(r#"{"value": 1, "ttl_seconds": 60}"#).unwrap();
        assert_eq!(row.expires_at, Some(now + Duration::from_secs(60)));
        let row = put(r#"{"value": "x", "expires_at": 1000060}"#).unwrap();
        assert_eq!(row.expires_at, Some(now + Duration::from_secs(60)));

        // Whole numbers of seconds may be written as 269.0 (JSON Schema's `integer` allows it).
        let row = put(r#"{"value": 1, "ttl_seconds": 60.0}"#).unwrap();
        assert_eq!(row.expires_at, Some(now + Duration::from_secs(60)));
        // Read exactly, as every whole f64 below 2^64 is: serde_json's fast float parsing read
        // this one as 4471709273953486.5 and refused the body as malformed (400; schemathesis
        // found it). Read exactly, it is a whole number, too far ahead: 422.
        let refused = put(r#"{"value": false, "expires_at": 4471709273953486.0}"#).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.kind),
            (422, "invalid-expiry"),
            "{refused:?}"
        );
        // Integers beyond 64 bits are kept exactly, as sent.
        let big = "123456789012345678901234567890";
        assert_eq!(
            put(&format!(r#"{{"value": {big}}}"#)).unwrap().value.get(),
            big
        );

        let status = |body: &str| put(body).unwrap_err().status.as_u16();
        for malformed in [
            "",
            "{",
            "[]",
            r#"[{"value": 1}]"#,
            "null",
            r#"[1, null, null]"#,
            r#"{"value": 1, "ttl_seconds": null}"#,
            r#"{"value": 1, "expires_at": null}"#,
            r#"{"value": "a\u0000b"}"#,
            r#"{"value": {"a\u0000": 1}}"#,
            r#"{"value": [{"x": ["\u0000"]}]}"#,
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
