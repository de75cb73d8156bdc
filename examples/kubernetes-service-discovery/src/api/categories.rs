//! `GET /categories/{category}`: a category's summary (how many live items have a key starting
//! with `{category}:`), read through the second group, `categories`, on the same cluster as the
//! items. A cold summary costs one count query in the whole cluster, run by the category's owner;
//! writes of the category's items remove it (see `items`), so every replica answers the new
//! count after a write.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use groupcache_rs::Json;
use serde::Serialize;

use super::items::{MAX_KEY_LEN, path_param, read_failed, valid_key};
use super::problem::Problem;
use super::respond::json;
use crate::database::categories::{Category, SEPARATOR};
use crate::state::AppState;

/// The answer of `GET /categories/{category}`.
#[derive(Debug, Serialize)]
struct CategoryResponse<'a> {
    category: &'a Category,
    /// This replica's name.
    served_by: &'a str,
    /// The category's owner in this replica's ring (its peer URL).
    owner: String,
}

/// Whether `name` can be a category: a key (see [`check_key`](super::items::check_key)) without
/// the separator, `:`.
fn valid_category(name: &str) -> bool {
    valid_key(name) && !name.contains(SEPARATOR)
}

fn invalid_category() -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-key",
        format!(
            "categories are 1 to {MAX_KEY_LEN} characters of UTF-8 text (percent-encoded in the \
             path), without NUL or {SEPARATOR:?}, and not . or .."
        ),
    )
}

/// The `{category}` of a path, checked: refused with problem details (400 `invalid-key`).
#[derive(Debug)]
pub struct CategoryName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CategoryName {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        path_param(parts, valid_category, invalid_category)
            .await
            .map(CategoryName)
    }
}

/// `GET /categories/{category}`: 200 with the summary (a category without items counts 0), or
/// 503 if the count query failed.
pub async fn get_category(
    State(state): State<AppState>,
    CategoryName(name): CategoryName,
) -> Response {
    match state.categories.get(&name).await {
        Ok(Json(category)) => json(&CategoryResponse {
            category: &category,
            served_by: &state.replica,
            owner: state.categories.owner(&name),
        }),
        Err(error) => read_failed(&name, error).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_names() {
        for good in ["user", "a b", "a/b", "é", "..."] {
            assert!(valid_category(good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a\0b",
            "user:42",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(!valid_category(bad), "{bad:?}");
        }
    }
}
