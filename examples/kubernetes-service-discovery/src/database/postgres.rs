//! PostgreSQL, the real source of truth: a pool of connections (TLS through rustls when the
//! server offers it, or as `sslmode` demands), the schema migrated on start, and the three
//! statements the service runs. Writes hold the row's lock until the cache has the new value.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use super::types::{Count, DbError, Row, WriteError};

/// How long a statement, or getting a connection, may take before the request fails as
/// unavailable (503) rather than hanging on a database that stopped answering.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Serialises the migrations of replicas that start at the same time (any fixed number).
const MIGRATION_LOCK: i64 = 0x6772_6f75_7063_6163; // "groupcac"

/// The schema, one step per version, applied in order and recorded in `schema_migrations`.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE items (
            key text PRIMARY KEY,
            value jsonb NOT NULL,
            expires_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now()
        )",
    ),
    // For the sweep of expired rows.
    (
        2,
        "CREATE INDEX items_expires_at ON items (expires_at) WHERE expires_at IS NOT NULL",
    ),
];

/// Deletes up to 1,000 expired rows. The outer condition is checked again on each row once it is
/// locked, so a row a concurrent `PUT` has just renewed is kept.
const SWEEP_EXPIRED: &str = "DELETE FROM items WHERE key IN \
     (SELECT key FROM items WHERE expires_at <= now() LIMIT 1000) AND expires_at <= now()";

/// The statement behind every cache miss: with one key (`Loader::load`), or with all the keys of
/// a batch an owner loads (`Loader::load_many`).
const SELECT_ITEMS: &str = "SELECT key, value::text, expires_at FROM items \
     WHERE key = ANY($1) AND (expires_at IS NULL OR expires_at > now())";

/// The statement behind a category's summary (`$1`: the category and its separator,
/// `user:`): how many live rows, and when the first of them expires.
const COUNT_ITEMS: &str = "SELECT count(*), min(expires_at) FROM items \
     WHERE starts_with(key, $1) AND (expires_at IS NULL OR expires_at > now())";

const UPSERT_ITEM: &str = "INSERT INTO items (key, value, expires_at) VALUES ($1, $2::text::jsonb, $3) \
     ON CONFLICT (key) DO UPDATE \
     SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, updated_at = now()";

/// Serialises the writes of a key, whether or not its row exists (a `DELETE` of a missing row
/// locks nothing; a hash collision only serialises two keys' writes).
const LOCK_KEY: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

const DELETE_ITEM: &str =
    "DELETE FROM items WHERE key = $1 RETURNING (expires_at IS NULL OR expires_at > now())";

/// A pool of connections to PostgreSQL.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host:port/dbname?sslmode=...`) with up to
    /// `max_connections`, and migrates the schema. Fails if the database cannot be reached now.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Postgres, DbError> {
        // Not the URL itself in errors: it may hold a password.
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| DbError::Failed(format!("--database-url does not parse: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("kubernetes-service-discovery");
        }
        let manager = Manager::from_config(
            config,
            tokio_postgres_rustls::MakeRustlsConnect::new(tls_config()?),
            ManagerConfig {
                // A connection whose server went away is closed, which this notices for free.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .recycle_timeout(Some(TIMEOUT))
            .build()
            .map_err(|e| DbError::Failed(format!("building the connection pool: {e}")))?;
        let postgres = Postgres { pool };
        postgres.migrate().await?;
        Ok(postgres)
    }

    /// Applies the migrations this database lacks, in one transaction, under an advisory lock.
    async fn migrate(&self) -> Result<(), DbError> {
        let mut client = self.client().await?;
        within(async {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await?;
            let applied: Option<i32> = tx
                .query_one("SELECT max(version) FROM schema_migrations", &[])
                .await?
                .get(0);
            for (version, sql) in MIGRATIONS {
                if applied.is_some_and(|applied| applied >= *version) {
                    continue;
                }
                tracing::info!(version, "migrating the database schema");
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[version],
                )
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    /// The unexpired rows of `keys`, in one statement.
    pub async fn fetch(&self, keys: &[String]) -> Result<HashMap<String, Row>, DbError> {
        let client = self.client().await?;
        let rows = within(async {
            let statement = client.prepare_cached(SELECT_ITEMS).await?;
            client.query(&statement, &[&keys]).await
        })
        .await?;
        rows.iter()
            .map(|row| {
                let key: String = row.try_get(0)?;
                let value: String = row.try_get(1)?;
                let expires_at: Option<SystemTime> = row.try_get(2)?;
                Ok((key, value, expires_at))
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(|e| DbError::Failed(format!("reading a row of items: {e}")))?
            .into_iter()
            .map(|(key, value, expires_at)| {
                let value = serde_json::value::RawValue::from_string(value).map_err(|e| {
                    DbError::Failed(format!("the value of {key:?} is not JSON: {e}"))
                })?;
                Ok((key, Row { value, expires_at }))
            })
            .collect()
    }

    /// The unexpired rows whose key starts with `prefix`, in one statement.
    pub async fn count(&self, prefix: &str) -> Result<Count, DbError> {
        let client = self.client().await?;
        let row = within(async {
            let statement = client.prepare_cached(COUNT_ITEMS).await?;
            client.query_one(&statement, &[&prefix]).await
        })
        .await?;
        let read = || -> Result<Count, tokio_postgres::Error> {
            let items: i64 = row.try_get(0)?;
            Ok(Count {
                items: u64::try_from(items).unwrap_or_default(),
                next_expiry: row.try_get(1)?,
            })
        };
        read().map_err(|e| DbError::Failed(format!("reading a count of items: {e}")))
    }

    /// In one transaction: takes the key's lock, upserts its row (`None`: deletes it), runs
    /// `then` with whether there was a live row, and commits. A second write of the key waits for
    /// the lock, so the `then`s of two writes run in the order of their commits.
    pub async fn write<F, Fut>(
        &self,
        key: &str,
        row: Option<&Row>,
        then: F,
    ) -> Result<bool, WriteError>
    where
        F: FnOnce(bool) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut client = self.client().await.map_err(WriteError::NotWritten)?;
        // Any failure up to the commit drops the transaction, which rolls it back.
        let tx = within(client.transaction())
            .await
            .map_err(WriteError::NotWritten)?;
        let existed = within(async {
            let lock = tx.prepare_cached(LOCK_KEY).await?;
            tx.execute(&lock, &[&key]).await?;
            match row {
                Some(row) => {
                    let statement = tx.prepare_cached(UPSERT_ITEM).await?;
                    tx.execute(&statement, &[&key, &row.value.get(), &row.expires_at])
                        .await
                        .map(|_| true)
                }
                None => {
                    let statement = tx.prepare_cached(DELETE_ITEM).await?;
                    let rows = tx.query(&statement, &[&key]).await?;
                    Ok(rows.iter().any(|row| row.try_get(0).unwrap_or(false)))
                }
            }
        })
        .await
        .map_err(WriteError::NotWritten)?;
        then(existed).await;
        within(tx.commit()).await.map_err(WriteError::Unconfirmed)?;
        Ok(existed)
    }

    /// Every `every`, deletes the rows that have expired (reads never return them, but they
    /// would stay in the table), 1,000 at a time until none is left. Runs for as long as the
    /// process; failures are logged and retried at the next turn. Every replica runs it: the
    /// deletes are idempotent, and cheap when there is nothing to delete.
    pub async fn sweep_expired(self, every: Duration) {
        let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            loop {
                match self.sweep_once().await {
                    Ok(0) => break,
                    Ok(deleted) => tracing::debug!(deleted, "deleted expired rows"),
                    Err(error) => {
                        tracing::warn!(%error, "deleting expired rows failed");
                        break;
                    }
                }
            }
        }
    }

    async fn sweep_once(&self) -> Result<u64, DbError> {
        let client = self.client().await?;
        within(async {
            let statement = client.prepare_cached(SWEEP_EXPIRED).await?;
            client.execute(&statement, &[]).await
        })
        .await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|error| match error {
            PoolError::Backend(error) => classify(&error),
            other => DbError::Unavailable(other.to_string()),
        })
    }
}

/// Runs `query`, failing as unavailable after [`TIMEOUT`].
async fn within<T>(
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(TIMEOUT, query).await {
        Ok(result) => result.map_err(|error| classify(&error)),
        Err(_) => Err(DbError::Unavailable(format!(
            "no answer within {TIMEOUT:?}"
        ))),
    }
}

/// Unavailable (retry later) for lost connections and a server shutting down or starting;
/// failed for everything else the server reports.
fn classify(error: &tokio_postgres::Error) -> DbError {
    let transient = match error.code() {
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                ]
                .contains(code)
        }
    };
    // `Display` of a server error is its message only; the source chain has the detail.
    let mut text = error.to_string();
    if let Some(source) = std::error::Error::source(error) {
        text = format!("{text}: {source}");
    }
    if transient {
        DbError::Unavailable(text)
    } else {
        DbError::Failed(text)
    }
}

/// rustls with ring, trusting the system's roots (none found: TLS can only be refused by the
/// server, and `sslmode=require` fails loudly).
fn tls_config() -> Result<rustls::ClientConfig, DbError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!(errors = ?native.errors, "no system root certificates for PostgreSQL TLS");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Failed(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
