//! What the user provides: a [`Loader`] that produces values, and the [`Value`] codec that turns
//! them into the bytes that are cached and sent to peers.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::oneshot;

/// Produces the value of a key on a cache miss, on the key's owner only.
///
/// ```
/// use groupcache_rs::{Loaded, Loader};
/// use std::time::Duration;
///
/// struct Users;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("user {0} not found")]
/// struct NotFound(String);
///
/// impl Loader for Users {
///     type Value = String;
///     type Error = NotFound;
///
///     async fn load(&self, key: &str) -> Result<Loaded<String>, NotFound> {
///         match key {
///             "1" => Ok(Loaded::new("alice".to_owned()).expire_after(Duration::from_secs(60))),
///             _ => Err(NotFound(key.to_owned())),
///         }
///     }
/// }
/// ```
pub trait Loader: Send + Sync + 'static {
    /// What `get` returns; see [`Value`].
    type Value: Value;
    /// The loader's error; callers get it back through [`Error::loader_error`](crate::Error::loader_error).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Loads `key`. Runs in a task of its own, so a caller that gives up does not cancel it.
    fn load(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Loaded<Self::Value>, Self::Error>> + Send;

    /// Whether `error` says that the source has no such key (a row that does not exist), rather
    /// than that the load failed. The default: never.
    ///
    /// Such an answer is a *negative answer*: the key's owner keeps it for
    /// [`not_found_ttl`](crate::Builder::not_found_ttl) and every replica's `get` returns
    /// [`Error::NotFound`](crate::Error::NotFound) meanwhile, without asking the source again,
    /// so a storm of requests for ids that do not exist costs the source one query per key,
    /// not one per request. `remove` and `set` replace it as they do a value.
    ///
    /// ```
    /// use groupcache_rs::{Loaded, Loader};
    ///
    /// struct Users;
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// enum UserError {
    ///     #[error("no user {0}")]
    ///     NoSuchUser(String),
    ///     #[error("database: {0}")]
    ///     Database(String),
    /// }
    ///
    /// impl Loader for Users {
    ///     type Value = String;
    ///     type Error = UserError;
    ///
    ///     async fn load(&self, key: &str) -> Result<Loaded<String>, UserError> {
    ///         match key {
    ///             "1" => Ok(Loaded::new("alice".to_owned())),
    ///             _ => Err(UserError::NoSuchUser(key.to_owned())),
    ///         }
    ///     }
    ///
    ///     fn is_not_found(&self, error: &UserError) -> bool {
    ///         matches!(error, UserError::NoSuchUser(_))
    ///     }
    /// }
    /// ```
    fn is_not_found(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// Loads many keys at once: on the owner, for the keys of a peer's batch or of a local
    /// [`get_many`](crate::Groupcache::get_many) that it must load. Put each key's result in
    /// `results` under the key's index as soon as it is known: the waiters for that key are
    /// released then, not when the call returns. A key left without a result fails with
    /// [`Error::NotLoaded`](crate::Error::NotLoaded).
    ///
    /// One call per batch: a peer's batch (at most
    /// [`max_batch_keys`](crate::Builder::max_batch_keys) keys) or the keys a `get_many` finds
    /// owned here, less those cached or already loading. In `groupcache-bench batch`, a cold
    /// `get_many` of 1,000 keys spread over two owners made one call on each. A golang/groupcache
    /// owner has no batch: it runs its getter once per key.
    ///
    /// The default calls [`load`](Self::load) for each key, at most
    /// [`LOAD_MANY_CONCURRENCY`] at once. Override it where one call is cheaper than many, as
    /// a `WHERE id = ANY($1)` query is:
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use groupcache_rs::{Loaded, Loader, Results};
    ///
    /// struct Table(HashMap<String, String>);
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("no row {0}")]
    /// struct NoRow(String);
    ///
    /// impl Loader for Table {
    ///     type Value = String;
    ///     type Error = NoRow;
    ///
    ///     async fn load(&self, key: &str) -> Result<Loaded<String>, NoRow> {
    ///         self.0.get(key).cloned().map(Loaded::new).ok_or_else(|| NoRow(key.to_owned()))
    ///     }
    ///
    ///     async fn load_many(&self, keys: &[String], results: &Results<String, NoRow>) {
    ///         // One query for all the keys; here, one pass over the table.
    ///         for (index, key) in keys.iter().enumerate() {
    ///             results.put(index, self.0.get(key).cloned().map(Loaded::new).ok_or_else(|| NoRow(key.clone())));
    ///         }
    ///     }
    /// }
    /// ```
    fn load_many(
        &self,
        keys: &[String],
        results: &Results<Self::Value, Self::Error>,
    ) -> impl Future<Output = ()> + Send {
        async move {
            futures_util::stream::iter(keys.iter().enumerate())
                .for_each_concurrent(LOAD_MANY_CONCURRENCY, |(index, key)| async move {
                    results.put(index, self.load(key).await);
                })
                .await;
        }
    }
}

/// Loads the default [`Loader::load_many`] runs at once (an unmeasured bound: enough to keep a
/// database pool busy, few enough not to drain it for one batch).
pub const LOAD_MANY_CONCURRENCY: usize = 32;

/// Where [`Loader::load_many`] puts each key's result, by the key's index; each result is
/// handed on at once. A second result for an index, or one out of range, is ignored.
pub struct Results<V, E> {
    slots: Vec<Slot<V, E>>,
}

/// Where one key's result goes, until it is put.
type Slot<V, E> = Mutex<Option<oneshot::Sender<LoadResult<V, E>>>>;

/// One key's result from a loader.
pub(crate) type LoadResult<V, E> = Result<Loaded<V>, E>;

impl<V, E> std::fmt::Debug for Results<V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Results")
            .field("keys", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl<V, E> Results<V, E> {
    /// Results for `count` keys, and where each one arrives.
    pub(crate) fn new(count: usize) -> (Self, Vec<oneshot::Receiver<LoadResult<V, E>>>) {
        let (slots, receivers) = (0..count)
            .map(|_| {
                let (sender, receiver) = oneshot::channel();
                (Mutex::new(Some(sender)), receiver)
            })
            .unzip();
        (Results { slots }, receivers)
    }

    /// The result for the key at `index`.
    pub fn put(&self, index: usize, result: Result<Loaded<V>, E>) {
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let sender = crate::lock(slot).take();
        if let Some(sender) = sender {
            let _ = sender.send(result);
        }
    }
}

/// A loaded value and, optionally, when it expires and when it is refreshed ahead of that.
///
/// ```
/// use groupcache_rs::Loaded;
/// use std::time::Duration;
///
/// // Served for 10 minutes at most; a get after 8 minutes answers at once and has the key's
/// // owner load it again in the background, once for the whole cluster.
/// let loaded = Loaded::new("value")
///     .expire_after(Duration::from_secs(600))
///     .refresh_after(Duration::from_secs(480));
/// assert!(loaded.refresh_at < loaded.expires_at);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<V> {
    /// The value.
    pub value: V,
    /// When every cached copy stops being served; `None` keeps it until evicted or removed.
    pub expires_at: Option<SystemTime>,
    /// When a get starts answering the value *and* refreshing it in the background (refresh
    /// ahead, or stale-while-revalidate): the key's owner loads it again, once for the whole
    /// cluster, while every get still answers the cached value at once. `None`: the group's
    /// [`refresh_after`](crate::Builder::refresh_after), if set.
    pub refresh_at: Option<SystemTime>,
}

impl<V> Loaded<V> {
    /// A value that never expires.
    pub fn new(value: V) -> Self {
        Loaded {
            value,
            expires_at: None,
            refresh_at: None,
        }
    }

    /// Refreshed ahead from `at` on (see [`refresh_at`](Self::refresh_at)).
    pub fn refresh_at(mut self, at: SystemTime) -> Self {
        self.refresh_at = Some(at);
        self
    }

    /// Refreshed ahead from `after` from now on.
    pub fn refresh_after(self, after: Duration) -> Self {
        self.refresh_at(SystemTime::now() + after)
    }

    /// Expires at `at`.
    pub fn expire_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Expires `ttl` from now.
    pub fn expire_after(self, ttl: Duration) -> Self {
        self.expire_at(SystemTime::now() + ttl)
    }
}

impl<V> From<V> for Loaded<V> {
    fn from(value: V) -> Self {
        Loaded::new(value)
    }
}

/// A cacheable value: how it becomes the bytes stored and sent to peers, and back.
///
/// [`Bytes`], `Vec<u8>` and [`String`] travel as they are, so a golang/groupcache peer reads
/// exactly the bytes a Rust loader produced. [`Json`] carries any serde type. A codec of your
/// own:
///
/// ```
/// use bytes::Bytes;
/// use groupcache_rs::{CodecError, Value};
///
/// /// A counter, cached as 8 little-endian bytes.
/// struct Count(u64);
///
/// impl Value for Count {
///     fn encode(&self) -> Result<Bytes, CodecError> {
///         Ok(Bytes::copy_from_slice(&self.0.to_le_bytes()))
///     }
///     fn decode(bytes: Bytes) -> Result<Self, CodecError> {
///         let bytes: [u8; 8] = bytes[..].try_into().map_err(|e| CodecError(Box::new(e)))?;
///         Ok(Count(u64::from_le_bytes(bytes)))
///     }
/// }
///
/// assert_eq!(Count::decode(Count(7).encode()?)?.0, 7);
/// assert!(Count::decode(Bytes::from_static(b"short")).is_err());
/// # Ok::<(), CodecError>(())
/// ```
pub trait Value: Sized + Send + Sync + 'static {
    /// The bytes to cache and send.
    fn encode(&self) -> Result<Bytes, CodecError>;
    /// The value back from cached or received bytes.
    fn decode(bytes: Bytes) -> Result<Self, CodecError>;
}

/// A value that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub Box<dyn std::error::Error + Send + Sync>);

impl Value for Bytes {
    fn encode(&self) -> Result<Bytes, CodecError> {
        Ok(self.clone())
    }
    fn decode(bytes: Bytes) -> Result<Self, CodecError> {
        Ok(bytes)
    }
}

impl Value for Vec<u8> {
    fn encode(&self) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(self))
    }
    fn decode(bytes: Bytes) -> Result<Self, CodecError> {
        Ok(bytes.into())
    }
}

impl Value for String {
    fn encode(&self) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(self.as_bytes()))
    }
    fn decode(bytes: Bytes) -> Result<Self, CodecError> {
        String::from_utf8(bytes.into()).map_err(|e| CodecError(Box::new(e)))
    }
}

/// Any serde type, cached and sent as JSON.
///
/// ```
/// use groupcache_rs::{Json, Value};
///
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct User { name: String }
///
/// let bytes = Json(User { name: "alice".into() }).encode().unwrap();
/// assert_eq!(&bytes[..], br#"{"name":"alice"}"#);
/// assert_eq!(Json::<User>::decode(bytes).unwrap().0.name, "alice");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Json<T>(pub T);

impl<T> Value for Json<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    fn encode(&self) -> Result<Bytes, CodecError> {
        serde_json::to_vec(&self.0)
            .map(Bytes::from)
            .map_err(|e| CodecError(Box::new(e)))
    }
    fn decode(bytes: Bytes) -> Result<Self, CodecError> {
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| CodecError(Box::new(e)))
    }
}

/// Unix nanoseconds, the wire's expiry unit; 0 means "never".
pub(crate) fn to_unix_nanos(at: Option<SystemTime>) -> i64 {
    match at {
        None => 0,
        Some(at) => match at.duration_since(UNIX_EPOCH) {
            // Already in the past (or before 1970): expire at once, but not "never".
            Err(_) => 1,
            Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX).max(1),
        },
    }
}

/// Now, in Unix nanoseconds.
pub(crate) fn now_nanos() -> i64 {
    to_unix_nanos(Some(SystemTime::now()))
}
