//! Raw HTTP/1.1 on a socket, for tests that send what no client library would: requests cut
//! short, stalled bodies, oversized heads.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to `addr`, sends `head` and `body` (as much of it as the server takes before it
/// closes), and leaves the connection open, unfinished.
pub async fn send(addr: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<TcpStream> {
    let mut socket = TcpStream::connect(addr).await?;
    socket.write_all(head.as_bytes()).await?;
    match socket.write_all(body).await {
        // The server answered from the head and closed before the whole body was sent (it
        // refuses, and a refusal closes the connection): its answer is still there to read.
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) => {}
        written => written?,
    }
    Ok(socket)
}

/// The status (0 if the server closed without one) and the text of the answer on `socket`, read
/// until the server closes it or has sent a whole head and the length it declares. Panics after
/// `patience`, so a server that waits for more cannot hang the test.
pub async fn answer(socket: &mut TcpStream, patience: Duration) -> (u16, String) {
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    let read = async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
            let text = String::from_utf8_lossy(&received);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .and_then(|n| n.parse::<usize>().ok());
                if length.is_some_and(|length| body.len() >= length) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(patience, read)
        .await
        .expect("an answer in time, not a server waiting for more");
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Like [`send`], on a socket whose receive buffer is asked to be `receive_buffer` bytes (the
/// kernel may round it): a client that never reads stops the server's writes sooner, and its
/// unread answers cost the kernel little.
pub async fn send_unread(
    addr: SocketAddr,
    head: &str,
    receive_buffer: u32,
) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_recv_buffer_size(receive_buffer)?;
    let mut socket = socket.connect(addr).await?;
    socket.write_all(head.as_bytes()).await?;
    Ok(socket)
}
