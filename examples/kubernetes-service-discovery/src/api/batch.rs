//! `POST /items/_batch`: many items in one request, through the cache's `get_many`. Each owner
//! is asked for its keys in one request, and loads the ones it must in one `Loader::load_many`:
//! one `WHERE key = ANY($1)` query per owner, where single reads cost one query per key.
//!
//! `_batch` is a key like any other for `GET`, `PUT` and `DELETE`: the method tells the batch from
//! it, as in the library's own peer protocol (`POST {group}/_batch`).
//!
//! The request is checked whole before any key is read: too many keys, a malformed key or body
//! is a 4xx problem. Each key then has an answer of its own: its item, or the problem a `GET` of
//! it would have answered.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::items::{check_key, json_body, read_outcome, require_object};
use super::problem::Problem;
use super::respond::{json, method_not_allowed_for};
use crate::database::Item;
use crate::state::AppState;

/// The last segment of the batch's path, `POST /items/_batch`.
pub const BATCH_KEY: &str = "_batch";

/// The methods `/items/{key}` serves for a key other than [`BATCH_KEY`] (its `Allow`).
pub const ITEM_METHODS: &str = "GET, HEAD, PUT, DELETE";

/// The methods `/items/_batch` serves: those of a key, and the batch's `POST`.
pub const BATCH_METHODS: &str = "GET, HEAD, PUT, DELETE, POST";

/// 405 for `/items/{key}`, whose `Allow` depends on the key: `POST` is the batch's only.
pub async fn method_not_allowed(key: Result<Path<String>, PathRejection>) -> Response {
    if key.is_ok_and(|Path(key)| key == BATCH_KEY) {
        method_not_allowed_for(BATCH_METHODS)
    } else {
        method_not_allowed_for(ITEM_METHODS)
    }
}

/// Most keys in one batch. Its answer holds at most this many items of up to
/// [`MAX_BODY_BYTES`](super::items::MAX_BODY_BYTES) each: 6.4 MiB.
pub const MAX_BATCH_KEYS: usize = 100;

/// The body of `POST /items/_batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    keys: Vec<String>,
}

/// The answer of `POST /items/_batch`: one result per requested key, in the request's order.
#[derive(Serialize)]
struct BatchResponse<'a> {
    results: Vec<KeyResult<'a>>,
    /// This replica's name.
    served_by: &'a str,
}

/// One key's answer: its item (status 200), or the problem a `GET` of it would have answered.
#[derive(Serialize)]
struct KeyResult<'a> {
    key: &'a str,
    status: u16,
    /// The key's owner in this replica's ring (its peer URL).
    owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<&'a Item>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<&'a Problem>,
}

/// `POST /items/{key}`: the batch for `_batch`, 405 for any other key.
pub async fn post_batch(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !key.is_ok_and(|Path(key)| key == BATCH_KEY) {
        // Any other key: the path serves GET, PUT and DELETE.
        return method_not_allowed_for(ITEM_METHODS);
    }
    let keys = match json_body(&headers, body).and_then(|body| parse_batch(&body)) {
        Ok(keys) => keys,
        Err(problem) => return problem.into_response(),
    };
    // A key asked for twice is read once, and answered at each of its places.
    let mut unique: Vec<&str> = Vec::with_capacity(keys.len());
    let mut seen = HashMap::with_capacity(keys.len());
    for key in &keys {
        seen.entry(key.as_str()).or_insert_with(|| {
            unique.push(key);
            unique.len() - 1
        });
    }
    let outcomes: Vec<Result<Item, Problem>> = unique
        .iter()
        .zip(state.cache.get_many(&unique).await)
        .map(|(key, read)| read_outcome(key, read))
        .collect();
    let results = keys
        .iter()
        .map(|key| {
            let outcome = &outcomes[seen[key.as_str()]];
            KeyResult {
                key,
                status: match outcome {
                    Ok(_) => StatusCode::OK.as_u16(),
                    Err(problem) => problem.status.as_u16(),
                },
                owner: state.cache.owner(key),
                item: outcome.as_ref().ok(),
                problem: outcome.as_ref().err(),
            }
        })
        .collect();
    json(&BatchResponse {
        results,
        served_by: &state.replica,
    })
}

/// The keys of a batch's body: `{"keys": [...]}`, 1 to [`MAX_BATCH_KEYS`] valid keys.
fn parse_batch(body: &[u8]) -> Result<Vec<String>, Problem> {
    let invalid = |why: String| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            format!("expected {{\"keys\": [\"key\", ...]}}: {why}"),
        )
    };
    require_object(body).map_err(invalid)?;
    let BatchBody { keys } =
        serde_json::from_slice(body).map_err(|error| invalid(error.to_string()))?;
    if keys.is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "give at least one key",
        ));
    }
    if keys.len() > MAX_BATCH_KEYS {
        // 400, not 413: the document states the limit (`maxItems`), so this is malformed input.
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "too-many-keys",
            format!("{} keys; a batch has at most {MAX_BATCH_KEYS}", keys.len()),
        ));
    }
    for (index, key) in keys.iter().enumerate() {
        // Not the key itself in the detail: it may be 64 KiB long.
        check_key(key).map_err(|problem| Problem {
            detail: format!("keys[{index}]: {}", problem.detail),
            ..problem
        })?;
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(body: &str) -> (u16, &'static str) {
        let problem = parse_batch(body.as_bytes()).unwrap_err();
        (problem.status.as_u16(), problem.kind)
    }

    #[test]
    fn batch_bodies() {
        let keys = parse_batch(br#"{"keys": ["a", "b-1", "a"]}"#).unwrap();
        assert_eq!(keys, ["a", "b-1", "a"]);
        let most = serde_json::json!({ "keys": vec!["k"; MAX_BATCH_KEYS] }).to_string();
        assert_eq!(parse_batch(most.as_bytes()).unwrap().len(), MAX_BATCH_KEYS);

        for malformed in [
            "",
            "{",
            "[]",
            r#"{"keys": "a"}"#,
            r#"{"keys": [1]}"#,
            r#"{"keys": []}"#,
            r#"{"keys": ["a"], "extra": 1}"#,
            r#"{"key": ["a"]}"#,
        ] {
            assert_eq!(kind(malformed), (400, "invalid-body"), "{malformed}");
        }
        assert_eq!(kind(r#"[["a"]]"#), (400, "invalid-body"));
        let long = format!(r#"{{"keys": ["a", "{}"]}}"#, "k".repeat(1025));
        assert_eq!(kind(&long), (400, "invalid-key"));
        let problem = parse_batch(long.as_bytes()).unwrap_err();
        assert!(
            problem.detail.starts_with("keys[1]: "),
            "{}",
            problem.detail
        );
        assert_eq!(kind(r#"{"keys": ["a", "a\u0000b"]}"#), (400, "invalid-key"));
        assert_eq!(
            parse_batch(br#"{"keys": ["user:42", "a/b"]}"#)
                .unwrap()
                .len(),
            2
        );
        let too_many = serde_json::json!({ "keys": vec!["k"; MAX_BATCH_KEYS + 1] }).to_string();
        assert_eq!(kind(&too_many), (400, "too-many-keys"));
    }
}
