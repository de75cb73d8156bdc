//! The source of truth the replicas' loaders read: every key holds a version, 0 until its first
//! write, which each write increments. The test's writers call [`Source::bump`] directly; loaders
//! read it over HTTP (`GET {url}/{key}` -> the version as decimal text), as a service reads its
//! database.
//!
//! Two stores: in memory, and a PostgreSQL table (`versions(key text primary key, version
//! bigint)`), where the database is the truth and the HTTP front only forwards each read as one
//! `SELECT`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the versions live.
#[derive(Debug)]
enum Store {
    Memory(Mutex<HashMap<String, u64>>),
    /// Several connections, used in turn: one connection pipelines, but a few spread the work
    /// over PostgreSQL's backends.
    Postgres {
        clients: Vec<tokio_postgres::Client>,
        next: AtomicUsize,
    },
}

/// How often each key was read over HTTP, and a signal on every read: a test waits on it for a
/// load to have read the source (so that a write it then makes lands while that load, carrying
/// the version from before it, is still in flight), never on a sleep.
#[derive(Debug, Default)]
struct Served {
    reads: Mutex<HashMap<String, u64>>,
    /// The reads of every key together.
    signal: watch::Sender<u64>,
}

/// A source of truth served over HTTP; stops serving when dropped.
#[derive(Debug)]
pub struct Source {
    store: Arc<Store>,
    served: Arc<Served>,
    url: String,
    server: JoinHandle<()>,
}

/// Connections to PostgreSQL the source keeps.
const PG_CONNECTIONS: usize = 4;

impl Source {
    /// A source in memory, served on `bind` (port 0: a free one). Bind the address the replicas
    /// reach the test process at (loopback, or the root namespace's address of a
    /// [`crate::netns::Network`]).
    pub async fn memory(bind: IpAddr) -> Source {
        Self::serve(Store::Memory(Mutex::default()), bind).await
    }

    /// A source in the table `versions` of the PostgreSQL database at `url` (created if missing,
    /// emptied if not), served on `bind`.
    ///
    /// # Panics
    ///
    /// When the database cannot be reached or the table cannot be created.
    pub async fn postgres(url: &str, bind: IpAddr) -> Source {
        let mut clients = Vec::new();
        for _ in 0..PG_CONNECTIONS {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|error| panic!("connecting to {url}: {error}"));
            tokio::spawn(connection);
            clients.push(client);
        }
        clients[0]
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS versions (key text PRIMARY KEY, version bigint NOT NULL);
                 TRUNCATE versions;",
            )
            .await
            .expect("create the versions table");
        Self::serve(
            Store::Postgres {
                clients,
                next: AtomicUsize::new(0),
            },
            bind,
        )
        .await
    }

    async fn serve(store: Store, bind: IpAddr) -> Source {
        let store = Arc::new(store);
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind, 0))
            .await
            .unwrap_or_else(|error| panic!("binding the source on {bind}: {error}"));
        let addr = listener.local_addr().expect("the source's address");
        let served = Arc::new(Served::default());
        let app = Router::new()
            .route("/{key}", get(read))
            .with_state((store.clone(), served.clone()));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serving the source");
        });
        Source {
            store,
            served,
            url: format!("http://{addr}"),
            server,
        }
    }

    /// Where loaders read it: `GET {url}/{key}`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Increments `key`'s version; the new version.
    pub async fn bump(&self, key: &str) -> Result<u64, String> {
        match &*self.store {
            Store::Memory(versions) => {
                let mut versions = versions.lock().unwrap_or_else(|p| p.into_inner());
                let version = versions.entry(key.to_owned()).or_default();
                *version += 1;
                Ok(*version)
            }
            Store::Postgres { .. } => {
                let row = self
                    .store
                    .client()
                    .query_one(
                        "INSERT INTO versions (key, version) VALUES ($1, 1) \
                         ON CONFLICT (key) DO UPDATE SET version = versions.version + 1 \
                         RETURNING version",
                        &[&key],
                    )
                    .await
                    .map_err(|error| format!("bump {key}: {error}"))?;
                Ok(row.get::<_, i64>(0) as u64)
            }
        }
    }

    /// How many times `key` was read over HTTP (by loaders) so far.
    pub fn reads(&self, key: &str) -> u64 {
        self.served.reads_of(key)
    }

    /// Waits until `key` has been read over HTTP more than `seen` times (see [`reads`]).
    ///
    /// [`reads`]: Source::reads
    pub async fn read_since(&self, key: &str, seen: u64) {
        let mut signal = self.served.signal.subscribe();
        // The sender lives as long as `self`: the wait ends only with its condition.
        let _ = signal.wait_for(|_| self.served.reads_of(key) > seen).await;
    }

    /// `key`'s version now.
    pub async fn version(&self, key: &str) -> Result<u64, String> {
        self.store.version(key).await
    }
}

impl Store {
    fn client(&self) -> &tokio_postgres::Client {
        match self {
            Store::Postgres { clients, next } => {
                &clients[next.fetch_add(1, Ordering::Relaxed) % clients.len()]
            }
            Store::Memory(_) => unreachable!("only the PostgreSQL store has clients"),
        }
    }

    async fn version(&self, key: &str) -> Result<u64, String> {
        match self {
            Store::Memory(versions) => Ok(versions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .copied()
                .unwrap_or(0)),
            Store::Postgres { .. } => {
                let row = self
                    .client()
                    .query_opt("SELECT version FROM versions WHERE key = $1", &[&key])
                    .await
                    .map_err(|error| format!("read {key}: {error}"))?;
                Ok(row.map_or(0, |row| row.get::<_, i64>(0) as u64))
            }
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Served {
    fn reads_of(&self, key: &str) -> u64 {
        let reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        reads.get(key).copied().unwrap_or(0)
    }
}

async fn read(
    State((store, served)): State<(Arc<Store>, Arc<Served>)>,
    Path(key): Path<String>,
) -> Response {
    let answer = store.version(&key).await;
    // Counted once the version is read: a waiter that wakes knows which version the reader got.
    *served
        .reads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default() += 1;
    served.signal.send_modify(|n| *n += 1);
    match answer {
        Ok(version) => version.to_string().into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[tokio::test]
    async fn reads_over_http_are_counted_per_key_and_signalled() {
        let source = Source::memory(IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
        source.bump("k").await.unwrap();
        let seen = source.reads("k");
        assert_eq!(seen, 0);
        let waiting = source.read_since("k", seen);
        let body = async {
            let url = format!("{}/k", source.url());
            reqwest::get(url).await.unwrap().text().await.unwrap()
        };
        let ((), body) = tokio::join!(waiting, body);
        assert_eq!(body, "1");
        assert_eq!((source.reads("k"), source.reads("j")), (1, 0));
    }
}
