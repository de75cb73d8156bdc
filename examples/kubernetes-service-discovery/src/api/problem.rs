//! Errors as problem details (RFC 9457): `application/problem+json` bodies with a stable `type`
//! per kind of error, so that clients (the CLI among them) can tell them apart.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of problem details.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// One problem: what went wrong, for a client and for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// The kind, the last segment of `type` (`invalid-key`, `not-found`, ...).
    pub kind: &'static str,
    /// What happened this time.
    pub detail: String,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    /// A problem of `kind` with `status`.
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind,
            detail: detail.into(),
        }
    }

    /// The database did not answer: 503, to be retried.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database-unavailable",
            detail,
        )
    }

    /// Something the client cannot fix: 500, detail in the log only.
    pub fn internal(context: &str, error: &dyn std::error::Error) -> Problem {
        tracing::error!(%error, "{context}");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the replica's log",
        )
    }
}

/// The problem's body, as sent; also each failed key's entry in a batch answer.
impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Body {
            kind: format!("urn:kubernetes-service-discovery:problem:{}", self.kind),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
        }
        .serialize(serializer)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        // Serialising strings and a number cannot fail; an empty object if it ever did.
        let json = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            json,
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
