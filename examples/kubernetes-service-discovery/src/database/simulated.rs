//! The simulated database: an in-process table with a fixed latency per query, in which every key
//! exists (`{"name": "item KEY"}`) until it is written or deleted. Each replica has its own: writes
//! reach the other replicas through the cache only, and are lost on restart. Use `--database-url`
//! for a real one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::types::{Count, JsonText, Row, earliest};

/// The simulated table.
#[derive(Debug)]
pub struct Simulated {
    latency: Duration,
    /// Keys written (`Some`) or deleted (`None`) on this replica.
    written: Mutex<HashMap<String, Option<Row>>>,
    /// Held by each write, its cache step included.
    writes: tokio::sync::Mutex<()>,
}

impl Simulated {
    /// A table answering every query after `latency`.
    pub fn new(latency: Duration) -> Self {
        Simulated {
            latency,
            written: Mutex::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// The unexpired rows of `keys`, after the latency.
    pub async fn fetch(&self, keys: &[String]) -> HashMap<String, Row> {
        tokio::time::sleep(self.latency).await;
        let now = SystemTime::now();
        let written = self.table();
        keys.iter()
            .filter_map(|key| {
                let row = match written.get(key) {
                    Some(row) => row.clone()?,
                    None => Row {
                        value: default_value(key),
                        expires_at: None,
                    },
                };
                let live = row.expires_at.is_none_or(|at| at > now);
                live.then(|| (key.clone(), row))
            })
            .collect()
    }

    /// The live rows written here whose key starts with `prefix`, after the latency. The
    /// implicit rows of keys never written are not counted: there is no end to them.
    pub async fn count(&self, prefix: &str) -> Count {
        tokio::time::sleep(self.latency).await;
        let now = SystemTime::now();
        let mut count = Count::default();
        let written = self.table();
        let live = written
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .filter_map(|(_, row)| row.as_ref())
            .filter(|row| row.expires_at.is_none_or(|at| at > now));
        for row in live {
            count.items += 1;
            count.next_expiry = earliest(count.next_expiry, row.expires_at);
        }
        count
    }

    /// Writes `key`'s row (`None`: deletes it) after the latency, then runs `then` with whether
    /// it had a live row; writes run one at a time, `then` included, as under PostgreSQL's row
    /// lock.
    pub async fn write<F, Fut>(&self, key: &str, row: Option<Row>, then: F) -> bool
    where
        F: FnOnce(bool) -> Fut,
        Fut: Future<Output = ()>,
    {
        let _one_at_a_time = self.writes.lock().await;
        tokio::time::sleep(self.latency).await;
        let now = SystemTime::now();
        let existed = match self.table().insert(key.to_owned(), row) {
            None => true,
            Some(None) => false,
            Some(Some(row)) => row.expires_at.is_none_or(|at| at > now),
        };
        then(existed).await;
        existed
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Row>>> {
        // A panic while holding the lock cannot leave the map half-updated (one insert or get).
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The value of a key never written: `{"name": "item KEY"}`.
fn default_value(key: &str) -> JsonText {
    let value = serde_json::json!({ "name": format!("item {key}") });
    // Serialising a map of strings cannot fail; `null` if it ever did.
    serde_json::value::to_raw_value(&value).unwrap_or_default()
}
