//! `groupcache_rs::Server::serve_with_shutdown`: a replica that drains. Once its shutdown signal
//! fires it stops accepting, closes idle connections, finishes the request it is serving, and
//! returns.

use std::sync::Arc;
use std::time::Duration;

use groupcache_rs::{Groupcache, Server};
use groupcache_rs_pb::GetResponse;
use groupcache_tests::{GROUP, TestLoader};
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, oneshot};

/// Bounds every wait, so a server that never drains fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);
/// The server's header deadline: far beyond `PATIENCE`, so only the shutdown can close the idle
/// connection within it.
const HEADER_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_request_in_progress_closes_idle_connections_and_returns() {
    // Loads wait at this gate, so a request is in progress for as long as the test wants.
    let gate = Arc::new(Semaphore::new(0));
    let loader = TestLoader {
        gate: Some(gate.clone()),
        ..TestLoader::new()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let url = format!("http://{addr}");
    let cache = Groupcache::builder(GROUP, &url, loader.clone())
        .build()
        .expect("valid configuration");
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let server = Server::new().header_read_timeout(HEADER_DEADLINE);
    let server = tokio::spawn(
        server.serve_with_shutdown(listener, cache.router(), async move {
            let _ = shutdown_signal.await;
        }),
    );

    // An idle connection, and a request whose load is held at the gate.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let client = groupcache_tests::http_client()
        .build()
        .expect("an HTTP client");
    let in_progress = tokio::spawn(
        client
            .get(format!("{url}/_groupcache/{GROUP}/draining"))
            .send(),
    );
    tokio::time::timeout(PATIENCE, loader.loads.started(1))
        .await
        .expect("the load started");

    shutdown.send(()).expect("the server is running");
    // The idle connection is closed without an answer.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "no answer on the idle connection: {read:?} {rest:?}"
    );
    // It stopped accepting: the listener is closed (before the connections were told to stop).
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after the shutdown signal"
    );
    // The server waits for the request in progress.
    assert!(
        !server.is_finished(),
        "returned before its request finished"
    );

    gate.add_permits(1);
    let response = tokio::time::timeout(PATIENCE, in_progress)
        .await
        .expect("the request in progress is answered")
        .expect("the request task")
        .expect("an answer, not a broken connection");
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("the whole body");
    let answer = GetResponse::decode(body).expect("a GetResponse");
    assert_eq!(
        answer.value.as_deref(),
        Some(loader.value_for("draining").as_bytes())
    );

    let returned = tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server returns once drained")
        .expect("the server task");
    assert!(returned.is_ok(), "{returned:?}");
}
