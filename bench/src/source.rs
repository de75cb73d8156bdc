//! The Rust replica's source of truth for issue 27's workloads (`freshness.rs`, `purge.rs`): what
//! its loader asks, counted, and what the driver changes on command through `POST /source`.
//!
//! Every replica of a cluster holds its own copy, and the driver sends each command to all of
//! them, so the three act as one source: keys named [`MISSING_KEYS`](crate::shared::MISSING_KEYS)
//! do not exist in it, it can go down (every query fails) and come back, and its values carry a
//! version the driver bumps (a write to the source of truth) before it purges.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::shared::EXPIRING_KEYS;

/// Whether every query fails, as when the database is down.
static DOWN: AtomicBool = AtomicBool::new(false);
/// The version the source's values carry now; 0: none (the value is `rs:{key}` as before).
static VERSION: AtomicU64 = AtomicU64::new(0);
/// Queries (loader calls of one key) so far.
static QUERIES: AtomicU64 = AtomicU64::new(0);
/// Of the queries, those of [`EXPIRING_KEYS`].
static EXPIRING_QUERIES: AtomicU64 = AtomicU64::new(0);

/// Why the source answered no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceError {
    /// No such key (`Loader::is_not_found`).
    NotFound,
    /// The source is down.
    Down,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceError::NotFound => "no such key",
            SourceError::Down => "the source is down",
        })
    }
}

impl std::error::Error for SourceError {}

/// Counts one query of `key` and says whether the source is down now, with the version its
/// values carry, read as the query starts (a slow load carries the version it began with).
pub(crate) fn query(key: &str) -> Result<u64, SourceError> {
    QUERIES.fetch_add(1, Ordering::Relaxed);
    if key.starts_with(EXPIRING_KEYS) {
        EXPIRING_QUERIES.fetch_add(1, Ordering::Relaxed);
    }
    if DOWN.load(Ordering::Relaxed) {
        return Err(SourceError::Down);
    }
    Ok(VERSION.load(Ordering::Relaxed))
}

/// `(queries, queries of expiring keys)` so far, for `/stats`.
pub(crate) fn counters() -> (u64, u64) {
    (
        QUERIES.load(Ordering::Relaxed),
        EXPIRING_QUERIES.load(Ordering::Relaxed),
    )
}

/// `POST /source?down=1|0&version=N`: takes the source down or brings it back, and sets the
/// version of the values it answers from now on.
pub(crate) async fn control(uri: Uri) -> Response {
    for pair in uri.query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("down", on)) => DOWN.store(on == "1", Ordering::Relaxed),
            Some(("version", n)) => match n.parse() {
                Ok(n) => VERSION.store(n, Ordering::Relaxed),
                Err(_) => return (StatusCode::BAD_REQUEST, "version").into_response(),
            },
            None if pair.is_empty() => {}
            _ => return (StatusCode::BAD_REQUEST, "down=1|0, version=N").into_response(),
        }
    }
    StatusCode::OK.into_response()
}
