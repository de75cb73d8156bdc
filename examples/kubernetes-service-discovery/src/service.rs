//! The HTTP service: the user-facing endpoint, `/metrics`, `/healthz`, `/readyz`, the peer
//! protocol under [`PEER_PREFIX`] (on the same listener or one of its own), and graceful
//! shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use groupcache_rs::Groupcache;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Error;
use crate::config::PEER_PREFIX;
use crate::database::{Database, Item};

/// Longest key the service accepts (characters `A-Z a-z 0-9 _ -`).
pub const MAX_KEY_LEN: usize = 128;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    discovered: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Discovery has produced its first complete peer set.
    pub fn set_discovered(&self) {
        self.discovered.store(true, Ordering::Release);
    }

    /// Shutdown has begun: report not-ready so that traffic moves elsewhere.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    fn state(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("shutting down")
        } else if !self.discovered.load(Ordering::Acquire) {
            Err("waiting for the first peer list")
        } else {
            Ok(())
        }
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The cache.
    pub cache: Groupcache<Database>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Readiness flags.
    pub readiness: Arc<Readiness>,
    /// This replica's name in responses.
    pub replica: Arc<str>,
}

/// The app's own routes: `/items/{key}`, `/metrics`, `/healthz` and `/readyz`. The peer
/// protocol is [`peer_router`].
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/items/{key}", get(get_item))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The groupcache peer protocol, nested under [`PEER_PREFIX`].
pub fn peer_router(cache: &Groupcache<Database>) -> Router {
    Router::new().nest(PEER_PREFIX, cache.router())
}

/// The answer of `GET /items/{key}`.
#[derive(Debug, Serialize)]
struct ItemResponse<'a> {
    item: &'a Item,
    /// This replica's name.
    served_by: &'a str,
    /// The key's owner in this replica's ring (its peer URL).
    owner: String,
}

async fn get_item(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return (
            StatusCode::BAD_REQUEST,
            format!("keys are 1 to {MAX_KEY_LEN} characters of A-Z a-z 0-9 _ -\n"),
        )
            .into_response();
    }
    let cache = &state.cache;
    match cache.get(&key).await {
        Ok(item) => {
            let body = ItemResponse {
                item: &item.0,
                served_by: &state.replica,
                owner: cache.owner(&key),
            };
            match serde_json::to_vec(&body) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(error) => internal_error(&key, &error),
            }
        }
        Err(error @ groupcache_rs::Error::KeyTooLarge { .. }) => {
            (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response()
        }
        Err(
            error @ (groupcache_rs::Error::Loader(_) | groupcache_rs::Error::RemoteLoader { .. }),
        ) => {
            tracing::warn!(key, %error, "database query failed");
            (StatusCode::BAD_GATEWAY, "the database query failed\n").into_response()
        }
        Err(error) => internal_error(&key, &error),
    }
}

fn internal_error(key: &str, error: &dyn std::error::Error) -> Response {
    tracing::error!(key, %error, "get failed");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness.state() {
        Ok(()) => "ready\n".into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// How shutdown proceeds after a signal.
#[derive(Debug, Clone, Copy)]
pub struct Shutdown {
    /// Keep serving, not-ready, this long.
    pub delay: Duration,
    /// Then wait at most this long for requests in progress.
    pub timeout: Duration,
}

/// Serves each app on its listener with its server until SIGTERM or SIGINT, then: reports
/// not-ready, keeps serving them all for `shutdown.delay` (endpoints and peers catch up), stops
/// accepting connections and waits up to `shutdown.timeout` for requests in progress. The first
/// server that fails stops them all with its error.
pub async fn serve(
    servers: Vec<(TcpListener, Router, groupcache_rs::Server)>,
    readiness: Arc<Readiness>,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let (stop, stopped) = watch::channel(());
    let servers = servers.into_iter().map(|(listener, app, server)| {
        let mut stopped = stopped.clone();
        // `changed` fails only if `stop` is gone, which means stop too.
        server.serve_with_shutdown(listener, app, async move {
            stopped.changed().await.unwrap_or(())
        })
    });
    let server = async {
        futures_util::future::try_join_all(servers)
            .await
            .map(drop)
            .map_err(Error::Serve)
    };
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        signal = termination_signal() => {
            let signal = signal?;
            tracing::info!(signal, delay = ?shutdown.delay, "shutting down: reporting not ready");
        }
    }
    readiness.set_draining();
    // Keep serving meanwhile: the servers' future is polled by this select.
    tokio::select! {
        result = &mut server => return result,
        () = tokio::time::sleep(shutdown.delay) => {}
    }
    tracing::info!(
        timeout = ?shutdown.timeout,
        "no longer accepting connections; finishing requests"
    );
    stop.send_replace(());
    match tokio::time::timeout(shutdown.timeout, server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("requests still running after the shutdown timeout; exiting"),
    }
    tracing::info!("stopped");
    Ok(())
}

async fn termination_signal() -> Result<&'static str, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
