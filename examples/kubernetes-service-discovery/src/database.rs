//! The expensive thing the cache saves the service from: a simulated database with a fixed
//! latency per query. Replace `Database::query` with your own call.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use groupcache_rs::{Json, Loaded, Loader};
use serde::{Deserialize, Serialize};

/// One row of the simulated `items` table, as cached and as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The key it was loaded for.
    pub id: String,
    /// The row's content.
    pub name: String,
    /// The replica whose loader ran the query: for a given key, the same on every replica
    /// while the ring is stable.
    pub loaded_by: String,
    /// When the query ran, in milliseconds since the Unix epoch.
    pub loaded_at_unix_ms: u64,
}

/// A database that takes `latency` to answer any query. Every key exists.
#[derive(Debug, Clone)]
pub struct Database {
    latency: Duration,
    ttl: Duration,
    replica: String,
}

impl Database {
    /// A database answering after `latency`; rows are cached for `ttl` (zero: until evicted).
    /// `replica` names this replica in the rows it loads.
    pub fn new(latency: Duration, ttl: Duration, replica: impl Into<String>) -> Self {
        Database {
            latency,
            ttl,
            replica: replica.into(),
        }
    }

    /// `SELECT * FROM items WHERE id = $1`, simulated.
    async fn query(&self, id: &str) -> Item {
        tokio::time::sleep(self.latency).await;
        let loaded_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        Item {
            id: id.to_owned(),
            name: format!("item {id}"),
            loaded_by: self.replica.clone(),
            loaded_at_unix_ms,
        }
    }
}

impl Loader for Database {
    type Value = Json<Item>;
    // The simulation cannot fail; a real database's error type goes here, and reaches the
    // handler as `groupcache_rs::Error::Loader` (on the owner) or `RemoteLoader` (elsewhere).
    type Error = Infallible;

    async fn load(&self, key: &str) -> Result<Loaded<Json<Item>>, Infallible> {
        tracing::debug!(key, "querying the database");
        let loaded = Loaded::new(Json(self.query(key).await));
        Ok(if self.ttl.is_zero() {
            loaded
        } else {
            loaded.expire_after(self.ttl)
        })
    }
}
