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

/// Reads from `socket` until it holds a whole head; the status, or 0 if the server closed first.
async fn status_of(socket: &mut tokio::net::TcpStream) -> u16 {
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&received);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_wait_and_oversized_heads_are_refused() {
    use tokio::io::AsyncWriteExt;
    let loader = TestLoader::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let cache = Groupcache::builder(GROUP, format!("http://{addr}"), loader.clone())
        .build()
        .expect("valid configuration");
    let server = Server::new()
        .header_read_timeout(HEADER_DEADLINE)
        .max_connections(2)
        .max_header_bytes(8192);
    tokio::spawn(server.serve(listener, cache.router()));
    let get = format!("GET /_groupcache/{GROUP}/k HTTP/1.1\r\nhost: x\r\n\r\n");

    // A head over the limit: 431, whatever follows.
    let mut big = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let padding = "a".repeat(16 << 10);
    let head =
        format!("GET /_groupcache/{GROUP}/k HTTP/1.1\r\nhost: x\r\nx-pad: {padding}\r\n\r\n");
    let _ = big.write_all(head.as_bytes()).await;
    let status = tokio::time::timeout(PATIENCE, status_of(&mut big))
        .await
        .expect("an answer in time");
    assert_eq!(status, 431);
    drop(big);

    // Two connections hold both slots; a third waits, unanswered, until one of them closes.
    let mut first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    first.write_all(get.as_bytes()).await.expect("write");
    assert_eq!(status_of(&mut first).await, 200, "the first is served");
    let second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    third.write_all(get.as_bytes()).await.expect("write");
    let waiting = tokio::time::timeout(Duration::from_millis(300), status_of(&mut third)).await;
    assert!(
        waiting.is_err(),
        "the third was answered past the bound: {waiting:?}"
    );
    drop(first);
    let status = tokio::time::timeout(PATIENCE, status_of(&mut third))
        .await
        .expect("served once a slot is free");
    assert_eq!(status, 200);
    drop(second);
    assert_eq!(loader.loads.total(), 1);
}
