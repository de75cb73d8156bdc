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
pub use self::types::{
    Cached, Count, DbError, Item, JsonText, LoadError, Row, WriteError, unix_seconds,
};
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
    /// How long before the end of `ttl` a get of a loaded item starts reloading it in the
    /// background (zero: never).
    refresh_ahead: Duration,
    /// This replica's name, in the items it loads.
    replica: Arc<str>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("ttl", &self.ttl)
            .field("refresh_ahead", &self.refresh_ahead)
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
            refresh_ahead: Duration::ZERO,
            replica: replica.into(),
        }
    }

    /// PostgreSQL, through `pool`'s connections.
    pub fn postgres(postgres: Postgres, ttl: Duration, replica: impl Into<Arc<str>>) -> Self {
        Database {
            backend: Backend::Postgres(postgres),
            ttl,
            refresh_ahead: Duration::ZERO,
            replica: replica.into(),
        }
    }

    /// Items loaded from now on are reloaded in the background by the first get in the last
    /// `window` of their cache TTL (refresh ahead: `--item-refresh-ahead`), so that a key read
    /// all the time never misses. Zero (the default), or a `window` not shorter than the TTL:
    /// never.
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        self.refresh_ahead = window;
        self
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

    /// What the cache holds for `key`, whose row is `row`, until when, and from when a get
    /// reloads it ahead; no row (`None`: none unexpired) is the cache's negative answer.
    fn loaded_item(&self, key: &str, row: Option<&Row>) -> Result<Loaded<Cached>, LoadError> {
        let row = row.ok_or(LoadError::NotFound)?;
        let loaded = self.loaded(Json(Some(self.item(key, row))), row.expires_at);
        Ok(match self.refresh_at(row.expires_at) {
            Some(at) => loaded.refresh_at(at),
            None => loaded,
        })
    }

    /// When a get of an item loaded now, from a row expiring at `expires_at`, starts reloading
    /// it: `refresh_ahead` before its cache TTL ends. None when the row itself expires first (a
    /// reload would find the same row, expiring as soon), or without a TTL or a window.
    fn refresh_at(&self, expires_at: Option<SystemTime>) -> Option<SystemTime> {
        if self.ttl.is_zero() || self.refresh_ahead.is_zero() || self.refresh_ahead >= self.ttl {
            return None;
        }
        let ttl_ends = SystemTime::now() + self.ttl;
        if expires_at.is_some_and(|at| at <= ttl_ends) {
            return None;
        }
        Some(ttl_ends - self.refresh_ahead)
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
    // A missing row is a negative answer (`is_not_found`): `groupcache_rs::Error::NotFound` on
    // every replica, cached for `--not-found-ttl`. A failed query reaches the handler as
    // `groupcache_rs::Error::Loader` on the owner, `RemoteLoader` elsewhere; it is not cached,
    // so the next request tries again (or, with `--item-max-stale`, gets the expired value).
    type Error = LoadError;

    async fn load(&self, key: &str) -> Result<Loaded<Cached>, LoadError> {
        tracing::debug!(key, "querying the database");
        let rows = self.fetch(&[key.to_owned()]).await?;
        self.loaded_item(key, rows.get(key))
    }

    fn is_not_found(&self, error: &LoadError) -> bool {
        matches!(error, LoadError::NotFound)
    }

    /// One query for all of `keys`: a key without a row gets what [`load`](Self::load) gives
    /// it (a negative answer), and a failed query is every key's error, as it would be each
    /// single query's.
    async fn load_many(&self, keys: &[String], results: &Results<Cached, LoadError>) {
        tracing::debug!(keys = keys.len(), "querying the database for a batch");
        match self.fetch(keys).await {
            Ok(rows) => {
                for (index, key) in keys.iter().enumerate() {
                    results.put(index, self.loaded_item(key, rows.get(key)));
                }
            }
            Err(error) => {
                for index in 0..keys.len() {
                    results.put(index, Err(LoadError::Db(error.clone())));
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
    /// loads, key for key: a row, a deleted row (a negative answer), a written one.
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
            match db.load(key).await {
                Ok(single) => assert_eq!(view(got.unwrap().0), view(single.value.0), "{key}"),
                Err(error) => {
                    assert!(db.is_not_found(&error), "{key}: {error}");
                    assert!(matches!(got, Err(groupcache_rs::Error::NotFound)), "{key}");
                }
            }
        }
        assert!(
            matches!(db.load("gone").await, Err(LoadError::NotFound)),
            "a deleted row loads as a negative answer"
        );
    }

    /// An item is reloaded ahead in the last `window` of its cache TTL, unless its row expires
    /// first (a reload would find the same row) or there is no TTL or window to speak of.
    #[test]
    fn items_are_refreshed_ahead_in_the_last_window_of_their_ttl() {
        let minute = Duration::from_secs(60);
        let db = |ttl, window| {
            Database::simulated(Duration::ZERO, ttl, "replica-0").refresh_ahead(window)
        };
        let before = SystemTime::now();
        let at = db(5 * minute, minute)
            .refresh_at(None)
            .expect("a refresh time");
        assert!(at >= before + 4 * minute && at <= SystemTime::now() + 4 * minute);
        let far = Some(before + 60 * minute);
        assert!(db(5 * minute, minute).refresh_at(far).is_some());
        let soon = Some(before + 2 * minute);
        assert_eq!(db(5 * minute, minute).refresh_at(soon), None);
        assert_eq!(db(Duration::ZERO, minute).refresh_at(None), None);
        assert_eq!(db(5 * minute, Duration::ZERO).refresh_at(None), None);
        assert_eq!(db(minute, minute).refresh_at(None), None);
    }
}
