//! The peer side of the wire: how keys are escaped into URLs and how this replica asks a peer for a
//! value, removes one or sets one. The serving side is in [`router`](crate::router).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use groupcache_pb::{GetResponse, SetRequest};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use prost::Message;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};

use crate::PeerError;
use crate::auth::{PeerAuth, SIGNATURE_HEADER};

/// golang/groupcache's response content type.
pub(crate) const PROTOBUF: &str = "application/x-protobuf";

/// Set on a 500 whose body is the loader's error message, so the requester returns the error
/// instead of loading locally. golang/groupcache peers do not send it; see the README.
pub(crate) const ERROR_KIND: &str = "groupcache-error";
/// The [`ERROR_KIND`] of a loader error.
pub(crate) const LOADER_ERROR: &str = "loader";

/// Everything but RFC 3986's unreserved characters is escaped: a superset of what Go's
/// `url.PathEscape` escapes (space is `%20`, `/` is `%2F`), which any server percent-decodes.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s` escaped for one URL path segment.
pub(crate) fn escape(s: &str) -> impl fmt::Display + '_ {
    utf8_percent_encode(s, ESCAPED)
}

/// Whether `key` can travel in a URL path. A key of exactly `.` or `..` cannot: HTTP clients fold
/// such a segment (even percent-encoded) into its parent, so it is loaded locally instead.
pub(crate) fn can_carry(key: &str) -> bool {
    key != "." && key != ".."
}

/// How a request to a peer failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The peer ran its loader and the loader failed: its message.
    Loader(String),
    /// Anything else.
    Peer(PeerError),
}

/// Sends requests to peers.
#[derive(Clone)]
pub(crate) struct PeerClient {
    http: reqwest::Client,
    timeout: Duration,
    max_value_bytes: usize,
    auth: Option<Arc<PeerAuth>>,
}

impl PeerClient {
    pub(crate) fn new(
        http: reqwest::Client,
        timeout: Duration,
        max_value_bytes: usize,
        auth: Option<Arc<PeerAuth>>,
    ) -> Self {
        PeerClient {
            http,
            timeout,
            max_value_bytes,
            auth,
        }
    }

    /// `GET url`: the owner's value.
    pub(crate) async fn get(&self, url: &str) -> Result<GetResponse, Failure> {
        let response = self
            .send(Method::GET, url, Vec::new())
            .await
            .map_err(Failure::Peer)?;
        let status = response.status();
        if status.is_success() {
            let content_type = response.headers().get(CONTENT_TYPE);
            if content_type.is_none_or(|value| value != PROTOBUF) {
                let found = content_type
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("none");
                let error = format!("content type {found:?}, expected {PROTOBUF}");
                return Err(Failure::Peer(PeerError::Malformed(error)));
            }
            let body = self.read_body(response).await.map_err(Failure::Peer)?;
            return GetResponse::decode(body)
                .map_err(|e| Failure::Peer(PeerError::Malformed(e.to_string())));
        }
        let is_loader_error = status == StatusCode::INTERNAL_SERVER_ERROR
            && response
                .headers()
                .get(ERROR_KIND)
                .is_some_and(|kind| kind == LOADER_ERROR);
        let message = self.error_message(response).await;
        if is_loader_error {
            Err(Failure::Loader(message))
        } else {
            Err(Failure::Peer(PeerError::Status {
                status: status.as_u16(),
                message,
            }))
        }
    }

    /// `DELETE url`: drop the key from the peer's caches.
    pub(crate) async fn remove(&self, url: &str) -> Result<(), PeerError> {
        self.expect_success(Method::DELETE, url, Vec::new()).await
    }

    /// `PUT url`: store the value in the peer's main cache.
    pub(crate) async fn set(&self, url: &str, request: &SetRequest) -> Result<(), PeerError> {
        self.expect_success(Method::PUT, url, request.encode_to_vec())
            .await
    }

    async fn expect_success(
        &self,
        method: Method,
        url: &str,
        body: Vec<u8>,
    ) -> Result<(), PeerError> {
        let response = self.send(method, url, body).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = self.error_message(response).await;
        Err(PeerError::Status {
            status: status.as_u16(),
            message,
        })
    }

    /// Sends one request, signed if authentication is on. The signature covers the path exactly
    /// as it goes on the wire, which is what the receiving router sees.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::Response, PeerError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| PeerError::Request(format!("invalid URL {url:?}: {e}")))?;
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .timeout(self.timeout);
        if let Some(auth) = &self.auth {
            request = request.header(
                SIGNATURE_HEADER,
                auth.sign(method.as_str(), url.path(), &body),
            );
        }
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, PROTOBUF).body(body);
        }
        request.send().await.map_err(request_error)
    }

    /// Reads the body, giving up as soon as it is larger than a value may be.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Bytes, PeerError> {
        // The value plus the message's few bytes of framing and other fields.
        let limit = self.max_value_bytes.saturating_add(64);
        let too_large = PeerError::TooLarge {
            limit: self.max_value_bytes,
        };
        let expected = response.content_length().unwrap_or(0);
        if expected > limit as u64 {
            return Err(too_large);
        }
        let mut body = BytesMut::with_capacity(expected as usize);
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// The start of an error response's body, for the error message.
    async fn error_message(&self, mut response: reqwest::Response) -> String {
        const MAX: usize = 1024;
        let mut message = Vec::new();
        while message.len() < MAX {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    message.extend_from_slice(&chunk[..chunk.len().min(MAX - message.len())])
                }
                _ => break,
            }
        }
        String::from_utf8_lossy(&message).trim_end().to_owned()
    }
}

fn request_error(error: reqwest::Error) -> PeerError {
    if error.is_timeout() {
        PeerError::Timeout
    } else {
        // reqwest's Display omits the cause ("error sending request"); the chain says why.
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        PeerError::Request(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::percent_decode_str;

    #[test]
    fn escaping_matches_go_path_escape_where_it_matters_and_round_trips() {
        assert_eq!(escape("a b").to_string(), "a%20b");
        assert_eq!(escape("a/b").to_string(), "a%2Fb");
        assert_eq!(escape("a+b").to_string(), "a%2Bb");
        assert_eq!(escape("100%").to_string(), "100%25");
        assert_eq!(escape("ключ").to_string(), "%D0%BA%D0%BB%D1%8E%D1%87");
        assert_eq!(escape("safe-_.~AZaz09").to_string(), "safe-_.~AZaz09");
        for key in ["", "a b/c,d", "+", "%", "..a", "ключ", "?#&=", "\u{0}\n"] {
            let escaped = escape(key).to_string();
            assert!(!escaped.contains(['/', ' ', '?', '#']), "{escaped}");
            assert_eq!(percent_decode_str(&escaped).decode_utf8().unwrap(), key);
        }
    }

    #[test]
    fn only_dot_segments_cannot_travel() {
        assert!(!can_carry("."));
        assert!(!can_carry(".."));
        for key in ["", "...", "../x", "a..", "%2e"] {
            assert!(can_carry(key), "{key}");
        }
    }
}
