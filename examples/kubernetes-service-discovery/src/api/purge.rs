//! `DELETE /items`: empties the items cache on every replica (`Groupcache::purge`), for an admin
//! only (`bearer`). The database is untouched: every key is loaded again, once in the whole
//! cluster, by its next read. For when the table was changed behind the service's back (a
//! migration, a bulk import or restore) and no cached item may be served any more.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::bearer::require_admin;
use super::problem::Problem;
use super::respond::json;
use crate::state::AppState;

/// The answer of a purge that did not reach every replica (202).
#[derive(Debug, Serialize)]
struct IncompletePurge<'a> {
    /// This replica's name.
    served_by: &'a str,
    /// Why.
    detail: String,
}

/// `DELETE /items`: 204 once every replica's items cache is empty (no read that starts after it
/// answers an item cached before it); 202 if some replica could not be reached (it is sent the
/// purge again in the background, and may answer old items until it gets it); 401 or 403 for
/// anyone but an admin.
pub async fn purge_items(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(refused) = require_admin(state.admin_token.as_deref(), &headers) {
        return refused.into_response();
    }
    match state.cache.purge().await {
        Ok(()) => {
            tracing::info!(group = state.cache.name(), "purged on every replica");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error @ groupcache_rs::Error::Peer { .. }) => {
            tracing::warn!(%error, "purge: some replica was not reached");
            let mut response = json(&IncompletePurge {
                served_by: &state.replica,
                detail: format!(
                    "not every replica could be reached ({error}): it is sent the purge again \
                     until it answers, and may serve items from before meanwhile"
                ),
            });
            *response.status_mut() = StatusCode::ACCEPTED;
            response
        }
        Err(error) => Problem::internal("purge failed", &error).into_response(),
    }
}
