//! The REST API: items (`/items/{key}`, and many at once: `POST /items/_batch`; `DELETE /items`
//! empties every replica's items cache, for an admin), category
//! summaries (`/categories/{category}`), admin views (`/admin/...`) and the OpenAPI document that
//! describes them all (`/openapi.json`, committed as `openapi.json` beside `Cargo.toml`).

pub mod admin;
pub mod batch;
pub mod bearer;
pub mod categories;
pub mod items;
pub mod problem;
pub mod purge;
pub mod respond;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::routing::{delete, get};

use self::problem::Problem;
use crate::state::AppState;

/// The OpenAPI document of every route but the peer protocol's.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every path the app serves (the peer protocol aside), as the OpenAPI document spells it.
pub const PATHS: &[&str] = &[
    "/items/{key}",
    "/admin/owner/{key}",
    "/admin/peers",
    "/admin/stats",
    "/openapi.json",
    "/metrics",
    "/healthz",
    "/readyz",
    // Served by the `/items/{key}` route's `POST`, so that `_batch` stays a key for the others.
    "/items/_batch",
    "/categories/{category}",
    "/items",
];

/// The API's routes. `/metrics`, `/healthz` and `/readyz` are added by
/// [`service::router`](crate::service::router).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            PATHS[0],
            get(items::get_item)
                .put(items::put_item)
                .delete(items::delete_item)
                .post(batch::post_batch)
                .fallback(batch::method_not_allowed)
                // Larger bodies are refused before they are read whole.
                .layer(DefaultBodyLimit::max(items::MAX_BODY_BYTES)),
        )
        .route(PATHS[1], get(admin::owner))
        .route(PATHS[2], get(admin::peers))
        .route(PATHS[3], get(admin::stats))
        .route(
            PATHS[4],
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route(PATHS[9], get(categories::get_category))
        .route(PATHS[10], delete(purge::purge_items))
}

/// 404 for paths no route serves.
pub async fn no_route() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no-route",
        "no such path; see /openapi.json",
    )
}

/// 405 for methods a path does not serve (axum's method router adds the `Allow` header).
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this path does not serve that method; see /openapi.json",
    )
}
