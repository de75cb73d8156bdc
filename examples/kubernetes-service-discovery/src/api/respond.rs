//! Answers the handlers share: JSON bodies, and 405 with the methods a path serves.

use axum::http::StatusCode;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::problem::Problem;

/// 405 with `Allow: allow`, for a handler that refuses a method itself.
pub fn method_not_allowed_for(allow: &'static str) -> Response {
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("this path serves {allow}; see /openapi.json"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// `value` as an `application/json` response.
pub fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => Problem::internal("serialising a response", &error).into_response(),
    }
}
