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
use tokio::task::JoinHandle;

/// Where the versions live.
enum Store {
    Memory(Mutex<HashMap<String, u64>>),
    /// Several connections, used in turn: one connection pipelines, but a few spread the work
    /// over PostgreSQL's backends.
    Postgres {
        clients: Vec<tokio_postgres::Client>,
        next: AtomicUsize,
    },
}

/// A source of truth served over HTTP; stops serving when dropped.
pub struct Source {
    store: Arc<Store>,
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
        let app = Router::new()
            .route("/{key}", get(read))
            .with_state(store.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serving the source");
        });
        Source {
            store,
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

async fn read(State(store): State<Arc<Store>>, Path(key): Path<String>) -> Response {
    match store.version(&key).await {
        Ok(version) => version.to_string().into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
    }
}
