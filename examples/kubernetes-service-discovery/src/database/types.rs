//! The rows, items and errors every backend and the loaders share.

use std::time::{SystemTime, UNIX_EPOCH};

use groupcache_rs::Json;
use serde::{Deserialize, Serialize};

/// A JSON value kept as its text, so that numbers of any size and precision pass through exactly.
pub type JsonText = Box<serde_json::value::RawValue>;

/// One item, as cached and as served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    /// Its key.
    pub id: String,
    /// Its content: any JSON value, as stored.
    pub value: JsonText,
    /// When it expires, in seconds since the Unix epoch; `None`: never.
    pub expires_at: Option<u64>,
    /// The replica that read it from the database, or wrote it: for a key read cold, its owner.
    pub loaded_by: String,
    /// When it was read or written, in milliseconds since the Unix epoch.
    pub loaded_at_unix_ms: u64,
}

/// What the cache holds for a key: the item, or `None` where a `DELETE` removed it (written to the
/// cache by the delete itself, which knows the answer, so the next reads cost no query). A key
/// that a load finds without a row is not `None` but a negative answer ([`LoadError::NotFound`],
/// `--not-found-ttl`): no `set` stores one, so a delete writes this instead.
pub type Cached = Json<Option<Item>>;

/// A row of the `items` table.
#[derive(Debug, Clone)]
pub struct Row {
    /// The `value` column (JSON text).
    pub value: JsonText,
    /// The `expires_at` column.
    pub expires_at: Option<SystemTime>,
}

/// The unexpired rows under a key prefix, as a count finds them (a category's summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// How many there are.
    pub items: u64,
    /// The earliest expiry among them: the count drops then, without a write.
    pub next_expiry: Option<SystemTime>,
}

/// The earlier of two optional times, `None` meaning never.
pub fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Why the database did not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// It cannot be reached, or did not answer in time: try again later (HTTP 503).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// It answered with an error, or a row the service cannot read.
    #[error("the database failed: {0}")]
    Failed(String),
}

/// Why the items' loader gave no item.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The database has no unexpired row for the key: the cache's negative answer
    /// (`Loader::is_not_found`), kept for `--not-found-ttl` and answered as 404.
    #[error("no such item")]
    NotFound,
    /// The query failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Why a write failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Before anything was written, or rolled back: nothing changed, and the cache step did not
    /// run.
    #[error("{0}")]
    NotWritten(DbError),
    /// The cache step ran, but the commit was not confirmed: the row may or may not have been
    /// written. Drop the key from the cache, so that the next read loads whichever it is.
    #[error("commit not confirmed: {0}")]
    Unconfirmed(DbError),
}

impl WriteError {
    /// The database's error.
    pub fn db_error(&self) -> &DbError {
        match self {
            WriteError::NotWritten(error) | WriteError::Unconfirmed(error) => error,
        }
    }
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
