//! The second group's loader: per-category summaries, from the same database as the items.
//!
//! An item's category is the part of its key before the first `:` (`user` for `user:42` and
//! `user:42:avatar`); a key without one, or starting with one, has none. A category's summary
//! counts its live items: one `SELECT count(*) ... WHERE starts_with(key, 'user:')`, which scans
//! rows where a cached item costs a key lookup, so it is worth caching apart, with its own value
//! type and budget. A write of an item changes its category's count: the API removes the
//! category from this cache once the write is committed (see `api::items`).

use std::time::SystemTime;

use groupcache_rs::{Json, Loaded, Loader};
use serde::{Deserialize, Serialize};

use super::Database;
use super::types::{DbError, unix_millis};

/// What separates a category from the rest of a key.
pub const SEPARATOR: char = ':';

/// The category of an item's key, if it has one: what comes before the first [`SEPARATOR`].
pub fn category_of(key: &str) -> Option<&str> {
    key.split_once(SEPARATOR)
        .map(|(category, _)| category)
        .filter(|category| !category.is_empty())
}

/// A category's summary, as cached and as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    /// The category (`user`).
    pub name: String,
    /// Its live items: those whose key starts with the name and [`SEPARATOR`].
    pub items: u64,
    /// The replica that counted them: the category's owner, for a summary read cold.
    pub loaded_by: String,
    /// When they were counted, in milliseconds since the Unix epoch.
    pub loaded_at_unix_ms: u64,
}

/// The categories group's [`Loader`]: counts a category's items in the [`Database`].
#[derive(Clone)]
pub struct Categories {
    database: Database,
}

impl std::fmt::Debug for Categories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Categories").finish_non_exhaustive()
    }
}

impl Categories {
    /// Summaries of the items in `database`.
    pub fn new(database: Database) -> Self {
        Categories { database }
    }
}

impl Loader for Categories {
    type Value = Json<Category>;
    type Error = DbError;

    /// One count query. The summary is cached until its first item expires (the count drops
    /// then), and at most `--item-ttl`; writes remove it before that.
    async fn load(&self, name: &str) -> Result<Loaded<Json<Category>>, DbError> {
        tracing::debug!(category = name, "counting a category's items");
        let count = self.database.count(&format!("{name}{SEPARATOR}")).await?;
        let category = Category {
            name: name.to_owned(),
            items: count.items,
            loaded_by: self.database.replica().to_owned(),
            loaded_at_unix_ms: unix_millis(SystemTime::now()),
        };
        Ok(self.database.loaded(Json(category), count.next_expiry))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::Row;
    use super::*;

    #[test]
    fn categories_of_keys() {
        assert_eq!(category_of("user:42"), Some("user"));
        assert_eq!(category_of("user:42:avatar"), Some("user"));
        assert_eq!(category_of("a/b:c"), Some("a/b"));
        assert_eq!(category_of("banner"), None);
        assert_eq!(category_of(":x"), None);
    }

    /// The simulated database counts the live rows written under the category, and nothing
    /// else.
    #[tokio::test]
    async fn a_summary_counts_the_live_items_of_its_category() {
        let db = Database::simulated(Duration::ZERO, Duration::ZERO, "replica-0");
        let row = |expires_at| Row {
            value: serde_json::value::to_raw_value(&1).unwrap(),
            expires_at,
        };
        let later = SystemTime::now() + Duration::from_secs(600);
        for (key, expires_at) in [
            ("user:1", None),
            ("user:2", Some(later)),
            ("user:3", Some(SystemTime::now() - Duration::from_secs(1))),
            ("username", None),
            ("team:1", None),
        ] {
            db.put(key, row(expires_at), |_| async {}).await.unwrap();
        }
        db.delete("user:1", || async {}).await.unwrap();
        db.put("user:4", row(None), |_| async {}).await.unwrap();
        let loaded = Categories::new(db).load("user").await.unwrap();
        let Json(category) = loaded.value;
        assert_eq!((category.name.as_str(), category.items), ("user", 2));
        assert_eq!(category.loaded_by, "replica-0");
    }
}
