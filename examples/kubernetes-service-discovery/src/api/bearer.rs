//! The admin token: what `DELETE /items` (purge) requires as `Authorization: Bearer TOKEN`
//! (`--admin-token-file`). The other routes need none: reads and item writes are for every
//! client the NetworkPolicy admits, the admin views are read-only.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

/// Shortest token accepted: 16 bytes, as the peer secret.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The token an admin request must bear.
#[derive(Clone)]
pub struct AdminToken(Vec<u8>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token of at least [`MIN_TOKEN_BYTES`] visible ASCII characters (it travels in a
    /// header).
    pub fn new(token: &[u8]) -> Result<AdminToken, String> {
        if token.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "the admin token must be at least {MIN_TOKEN_BYTES} bytes"
            ));
        }
        if !token.iter().all(u8::is_ascii_graphic) {
            return Err("the admin token must be visible ASCII, without spaces".to_owned());
        }
        Ok(AdminToken(token.to_vec()))
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    fn matches(&self, presented: &[u8]) -> bool {
        presented.len() == self.0.len()
            && presented
                .iter()
                .zip(&self.0)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

/// Why an admin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The request bears no bearer token (401), whether or not this replica has one: the
    /// challenge says what to send.
    Missing,
    /// This replica has no admin token: nobody is admin (403).
    NoToken,
    /// It bears another one (401).
    Wrong,
}

/// Lets an admin request through, or says why not.
pub fn require_admin(token: Option<&AdminToken>, headers: &HeaderMap) -> Result<(), Refused> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .ok_or(Refused::Missing)?;
    let token = token.ok_or(Refused::NoToken)?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Refused::Wrong)
    }
}

/// 401 with `WWW-Authenticate: Bearer` when the request bears no token or another one (RFC
/// 6750), 403 when it bears one and this replica has none.
impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (challenge, detail) = match self {
            Refused::NoToken => {
                return Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this replica has no admin token (--admin-token-file): admin requests are \
                     refused",
                )
                .into_response();
            }
            Refused::Missing => (
                r#"Bearer realm="admin""#,
                "send the admin token as Authorization: Bearer TOKEN",
            ),
            Refused::Wrong => (
                r#"Bearer realm="admin", error="invalid_token""#,
                "the bearer token is not the admin token",
            ),
        };
        let mut response =
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearing(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_admin_token_passes() {
        let token = AdminToken::new(b"0123456789abcdef").unwrap();
        assert!(require_admin(Some(&token), &bearing("Bearer 0123456789abcdef")).is_ok());
        let status = |token: Option<&AdminToken>, headers: &HeaderMap| {
            let refused = require_admin(token, headers).unwrap_err();
            let response = refused.into_response();
            assert_eq!(
                response.headers().contains_key(header::WWW_AUTHENTICATE),
                refused != Refused::NoToken
            );
            response.status().as_u16()
        };
        assert_eq!(status(Some(&token), &HeaderMap::new()), 401);
        for wrong in [
            "Bearer 0123456789abcdeF",
            "Bearer 0123456789abcdef0",
            "Bearer 0123456789abcde",
            "Basic 0123456789abcdef",
            "0123456789abcdef",
        ] {
            assert_eq!(status(Some(&token), &bearing(wrong)), 401, "{wrong}");
        }
        assert_eq!(status(None, &bearing("Bearer 0123456789abcdef")), 403);
        assert_eq!(status(None, &HeaderMap::new()), 401);
        assert!(AdminToken::new(b"short").is_err());
        assert!(AdminToken::new(b"0123456789 abcdef").is_err());
    }
}
