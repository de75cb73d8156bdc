//! The HTTP service: the REST API, `/metrics`, `/healthz`, `/readyz`, the peer
//! protocol under [`PEER_PREFIX`] (on the same listener or one of its own), and graceful
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use groupcache_rs::Cluster;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::PEER_PREFIX;
use crate::error::Error;
use crate::state::{AppState, Readiness};

/// The app's own routes: the [`api`](crate::api) (`/items/{key}`, `/admin/...`,
/// `/openapi.json`), `/metrics`, `/healthz` and `/readyz`, with problem details for unknown paths
/// and methods. The peer protocol is [`peer_router`].
pub fn router(state: AppState) -> Router {
    crate::api::routes()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(crate::api::no_route)
        .method_not_allowed_fallback(crate::api::method_not_allowed)
        // Applied to each route and the fallbacks, after routing: `MatchedPath` is known.
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .with_state(state)
}

/// The groupcache peer protocol of every group of `cluster`, nested under [`PEER_PREFIX`]: one
/// router, whatever the number of groups.
pub fn peer_router(cluster: &Cluster) -> Router {
    Router::new().nest(PEER_PREFIX, cluster.router())
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
/// not-ready and calls `leave` (the replica leaves its own ring: see [`run`](crate::run)), keeps
/// serving them all for `shutdown.delay` (endpoints and peers catch up, and the new owners of its
/// keys peek them from its memory), stops accepting connections and waits up to
/// `shutdown.timeout` for requests in progress. The first server that fails stops them all with
/// its error.
pub async fn serve(
    servers: Vec<(TcpListener, Router, groupcache_rs::Server)>,
    readiness: Arc<Readiness>,
    shutdown: Shutdown,
    leave: impl FnOnce(),
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
    leave();
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
