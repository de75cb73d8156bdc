//! The source of truth behind the cache, and the loader that fills the cache from it:
//!
//! - [`postgres`]: a real PostgreSQL (`--database-url`), through a pool;
//! - [`simulated`]: an in-process table with a fixed latency per query, so that the demo needs
//!   nothing installed.
//!
//! Reads go through [`Database::fetch`], which takes a list of keys (`WHERE key = ANY($1)`): the
//! cache's [`Loader::load`] hands it one key, [`Loader::load_many`] the whole batch of keys an
//! owner must load (its own keys of a `get_many`, or a peer's batch), so a batch costs one query
//! on each owner rather than one per key.

pub mod categories;
pub mod postgres;
pub mod simulated;
pub mod types;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use groupcache_rs::{Json, Loaded, Loader, Results};

use self::postgres::Postgres;
use self::simulated::Simulated;
pub use self::types::{Cached, Count, DbError, Item, JsonText, Row, WriteError, unix_seconds};
use self::types::{earliest, unix_millis};

/// Which database stores the items.
#[derive(Clone)]
enum Backend {
    Simulated(Arc<Simulated>),
    Postgres(Postgres),
}

/// The items' database, and the cache's [`Loader`].
#[derive(Clone)]
pub struct Database {
    backend: Backend,
    /// How long a cached entry lives at most (zero: until evicted or its row expires).
    ttl: Duration,
    /// This replica's name, in the items it loads.
    replica: Arc<str>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("ttl", &self.ttl)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// The simulated database: answers after `latency`; every key exists until deleted. Entries
    /// are cached for `ttl` at most (zero: until evicted). `replica` names this replica in the
    /// items it loads.
    pub fn simulated(latency: Duration, ttl: Duration, replica: impl Into<Arc<str>>) -> Self {
        Database {
            backend: Backend::Simulated(Arc::new(Simulated::new(latency))),
            ttl,
            replica: replica.into(),
        }
    }

    /// PostgreSQL, through `pool`'s connections.
    pub fn postgres(postgres: Postgres, ttl: Duration, replica: impl Into<Arc<str>>) -> Self {
        Database {
            backend: Backend::Postgres(postgres),
            ttl,
            replica: replica.into(),
        }
    }

    /// `SELECT ... WHERE key = ANY($1)`: the unexpired rows of `keys` (absent ones are missing).
    pub async fn fetch(&self, keys: &[String]) -> Result<HashMap<String, Row>, DbError> {
        match &self.backend {
            Backend::Simulated(db) => Ok(db.fetch(keys).await),
            Backend::Postgres(db) => db.fetch(keys).await,
        }
    }

    /// `SELECT count(*), min(expires_at) ... WHERE starts_with(key, $1)`: the unexpired rows
    /// whose key starts with `prefix`. The simulated database counts the rows written through
    /// this replica only (its implicit rows are endless).
    pub async fn count(&self, prefix: &str) -> Result<Count, DbError> {
        match &self.backend {
            Backend::Simulated(db) => Ok(db.count(prefix).await),
            Backend::Postgres(db) => db.count(prefix).await,
        }
    }

    /// This replica's name, in what its loaders load.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// `value`, loaded now from rows that expire at `expires_at`, as the cache should hold it:
    /// until [`cache_expiry`](Self::cache_expiry).
    pub fn loaded<V>(&self, value: V, expires_at: Option<SystemTime>) -> Loaded<V> {
        let loaded = Loaded::new(value);
        match self.cache_expiry(expires_at) {
            Some(at) => loaded.expire_at(at),
            None => loaded,
        }
    }

    /// Inserts or replaces `key`'s row, then runs `cache_step` with the item as the cache should
    /// now hold it, then commits; returns the item.
    ///
    /// `cache_step` runs while the row is locked (PostgreSQL: the transaction's row lock), so
    /// that the cache steps of two writes of a key run in the order their rows were written: the
    /// cache ends with the value the database ends with.
    pub async fn put<F, Fut>(&self, key: &str, row: Row, cache_step: F) -> Result<Item, WriteError>
    where
        F: FnOnce(Item) -> Fut,
        Fut: Future<Output = ()>,
    {
        let item = self.item(key, &row);
        let step = cache_step(item.clone());
        match &self.backend {
            Backend::Simulated(db) => db.write(key, Some(row), |_| step).await,
            Backend::Postgres(db) => db.write(key, Some(&row), |_| step).await?,
        };
        Ok(item)
    }

    /// Deletes `key`'s row, then runs `cache_step` (as [`Database::put`] does), then commits;
    /// returns whether there was a row (expired rows count as none).
    pub async fn delete<F, Fut>(&self, key: &str, cache_step: F) -> Result<bool, WriteError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        let step = cache_step();
        match &self.backend {
            Backend::Simulated(db) => Ok(db.write(key, None, |_| step).await),
            Backend::Postgres(db) => db.write(key, None, |_| step).await,
        }
    }

    /// When the cache must drop what it holds for a row expiring at `expires_at`: the earlier of
    /// that and the cache TTL.
    pub fn cache_expiry(&self, expires_at: Option<SystemTime>) -> Option<SystemTime> {
        let ttl = (!self.ttl.is_zero()).then(|| SystemTime::now() + self.ttl);
        earliest(expires_at, ttl)
    }

    /// When the cache must drop what a write (`PUT`, or `DELETE`'s "no such item") stores for a
    /// row expiring at `expires_at`. PostgreSQL: as [`cache_expiry`](Self::cache_expiry). The
    /// simulated database: the row's own expiry only, because the key's owner would reload it
    /// from its own table, which never saw a write made through another replica (a deleted key
    /// would come back); such entries last until evicted or the replica restarts.
    pub fn written_expiry(&self, expires_at: Option<SystemTime>) -> Option<SystemTime> {
        match self.backend {
            Backend::Simulated(_) => expires_at,
            Backend::Postgres(_) => self.cache_expiry(expires_at),
        }
    }

    /// What the cache holds for `key`, whose row is `row` (`None`: no unexpired row), and until
    /// when.
    fn loaded_item(&self, key: &str, row: Option<&Row>) -> Loaded<Cached> {
        let item = Json(row.map(|row| self.item(key, row)));
        self.loaded(item, row.and_then(|row| row.expires_at))
    }

    fn item(&self, key: &str, row: &Row) -> Item {
        Item {
            id: key.to_owned(),
            value: row.value.clone(),
            expires_at: row.expires_at.map(unix_seconds),
            loaded_by: self.replica.to_string(),
            loaded_at_unix_ms: unix_millis(SystemTime::now()),
        }
    }
}

impl Loader for Database {
    type Value = Cached;
    // Reaches the handler as `groupcache_rs::Error::Loader` on the owner, `RemoteLoader`
    // elsewhere; failures are not cached, so the next request tries again.
    type Error = DbError;

    async fn load(&self, key: &str) -> Result<Loaded<Cached>, DbError> {
        tracing::debug!(key, "querying the database");
        let rows = self.fetch(&[key.to_owned()]).await?;
        Ok(self.loaded_item(key, rows.get(key)))
    }

    /// One query for all of `keys`: a key without a row gets what [`load`](Self::load) gives
    /// it (`None`, cached), and a failed query is every key's error, as it would be each
    /// single query's.
    async fn load_many(&self, keys: &[String], results: &Results<Cached, DbError>) {
        tracing::debug!(keys = keys.len(), "querying the database for a batch");
        match self.fetch(keys).await {
            Ok(rows) => {
                for (index, key) in keys.iter().enumerate() {
                    results.put(index, Ok(self.loaded_item(key, rows.get(key))));
                }
            }
            Err(error) => {
                for index in 0..keys.len() {
                    results.put(index, Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use groupcache_rs::Groupcache;

    use super::*;

    /// What a batch (`load_many`, through `get_many` on the keys' owner) loads is what `load`
    /// loads, key for key: a row, a deleted row (`None`), a written one.
    #[tokio::test]
    async fn a_batch_loads_what_single_loads_do() {
        let db = Database::simulated(Duration::ZERO, Duration::ZERO, "replica-0");
        db.delete("gone", || async {}).await.unwrap();
        let row = Row {
            value: serde_json::value::to_raw_value(&serde_json::json!({ "written": true }))
                .unwrap(),
            expires_at: None,
        };
        db.put("written", row, |_| async {}).await.unwrap();
        let cache = Groupcache::builder("items", "http://127.0.0.1:1", db.clone())
            .build()
            .unwrap();
        let keys = ["plain", "gone", "written", "plain"];
        let batch = cache.get_many(&keys).await;
        let view = |item: Option<Item>| {
            item.map(|item| (item.id, item.value.get().to_owned(), item.expires_at))
        };
        for (key, got) in keys.iter().zip(batch) {
            let single = db.load(key).await.unwrap().value;
            assert_eq!(view(got.unwrap().0), view(single.0), "{key}");
        }
        assert!(
            db.load("gone").await.unwrap().value.0.is_none(),
            "a deleted row loads as none"
        );
    }
}
