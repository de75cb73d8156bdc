//! A minimal HTTP/1.1 client over one keep-alive connection: the load generator's only transport.
//!
//! It writes a ready-made request and reads the response (a `Content-Length` or chunked body) into
//! buffers it reuses, so a request costs two system calls and no allocation. The same code talks
//! to Rust replicas, Go replicas and the bare servers, so every target pays the same client cost.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// Connecting, writing or reading failed, or the server closed the connection.
    Io(io::Error),
    /// The response could not be parsed.
    Malformed(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Io(e) => write!(f, "i/o: {e}"),
            HttpError::Malformed(why) => write!(f, "malformed response: {why}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        HttpError::Io(e)
    }
}

/// `GET {path}` as bytes, ready to send on a keep-alive connection.
pub(crate) fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

/// `POST {path}` with a JSON body, as bytes.
pub(crate) fn post_json_request(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One keep-alive connection.
pub(crate) struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    /// Received bytes; `buf[pos..filled]` is not consumed yet.
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    /// The last response's body.
    body: Vec<u8>,
}

/// The last response: its status and body (valid until the next request).
pub(crate) struct Response<'a> {
    /// The HTTP status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: &'a [u8],
}

/// The framing of a response body.
enum Framing {
    Length(usize),
    Chunked,
}

impl Conn {
    /// Connects to `addr` with Nagle's algorithm off.
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            addr,
            stream,
            buf: vec![0; 16 * 1024],
            pos: 0,
            filled: 0,
            body: Vec::with_capacity(16 * 1024),
        })
    }

    /// The address this connection goes to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `request` (a complete HTTP/1.1 request) and reads the whole response.
    pub(crate) async fn round_trip(&mut self, request: &[u8]) -> Result<Response<'_>, HttpError> {
        self.stream.write_all(request).await?;
        let (status, framing) = self.read_head().await?;
        self.body.clear();
        match framing {
            Framing::Length(len) => self.read_body(len).await?,
            Framing::Chunked => self.read_chunked().await?,
        }
        Ok(Response {
            status,
            body: &self.body,
        })
    }

    /// Reads the status line and headers; returns the status and how the body is framed.
    async fn read_head(&mut self) -> Result<(u16, Framing), HttpError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let parsed = response
                .parse(&self.buf[self.pos..self.filled])
                .map_err(|e| HttpError::Malformed(e.to_string()))?;
            if let httparse::Status::Complete(len) = parsed {
                let status = response.code.unwrap_or(0);
                let mut framing = None;
                for header in response.headers.iter() {
                    if header.name.eq_ignore_ascii_case("content-length") {
                        let len = std::str::from_utf8(header.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| HttpError::Malformed("bad content-length".into()))?;
                        framing = Some(Framing::Length(len));
                    } else if header.name.eq_ignore_ascii_case("transfer-encoding")
                        && header.value.eq_ignore_ascii_case(b"chunked")
                    {
                        framing = Some(Framing::Chunked);
                    }
                }
                let framing = match framing {
                    Some(framing) => framing,
                    None if status == 204 || status == 304 || status < 200 => Framing::Length(0),
                    None => {
                        return Err(HttpError::Malformed(format!(
                            "status {status} without content-length or chunked body"
                        )));
                    }
                };
                self.pos += len;
                return Ok((status, framing));
            }
            self.fill().await?;
        }
    }

    async fn read_body(&mut self, len: usize) -> Result<(), HttpError> {
        while self.filled - self.pos < len {
            self.fill().await?;
        }
        self.body
            .extend_from_slice(&self.buf[self.pos..self.pos + len]);
        self.pos += len;
        Ok(())
    }

    async fn read_chunked(&mut self) -> Result<(), HttpError> {
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| HttpError::Malformed(format!("bad chunk size {size:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(());
            }
            self.read_body(size).await?;
            if !self.read_line().await?.is_empty() {
                return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
            }
        }
    }

    /// The next CRLF-terminated line, without the CRLF.
    async fn read_line(&mut self) -> Result<String, HttpError> {
        loop {
            let pending = &self.buf[self.pos..self.filled];
            if let Some(at) = pending.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&pending[..at]).into_owned();
                self.pos += at + 2;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes, making room first.
    async fn fill(&mut self) -> Result<(), HttpError> {
        if self.pos == self.filled {
            self.pos = 0;
            self.filled = 0;
        }
        if self.filled == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.filled, 0);
                self.filled -= self.pos;
                self.pos = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let read = self.stream.read(&mut self.buf[self.filled..]).await?;
        if read == 0 {
            return Err(HttpError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        self.filled += read;
        Ok(())
    }
}

/// One request on a fresh connection: for setup and control calls.
pub(crate) async fn call(addr: SocketAddr, request: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
    let mut conn = Conn::connect(addr).await?;
    let response = conn.round_trip(request).await?;
    Ok((response.status, response.body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves `responses` one after the other on one connection, reading one request before each.
    async fn serve(responses: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            for response in responses {
                let _ = socket.read(&mut buf).await.unwrap();
                // Split the write so the client has to read more than once.
                let (a, b) = response.split_at(response.len() / 2);
                socket.write_all(a).await.unwrap();
                socket.flush().await.unwrap();
                tokio::task::yield_now().await;
                socket.write_all(b).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_on_one_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nboom",
        ])
        .await;
        let mut conn = Conn::connect(addr).await.unwrap();
        let request = get_request("/get/k");
        let r = conn.round_trip(&request).await.unwrap();
        assert_eq!((r.status, r.body), (200, &b"hello"[..]));
        let r = conn.round_trip(&request).await.unwrap();
        assert_eq!((r.status, r.body), (200, &b"abcde"[..]));
        let r = conn.round_trip(&request).await.unwrap();
        assert_eq!((r.status, r.body), (500, &b"boom"[..]));
        assert!(conn.round_trip(&request).await.is_err(), "server closed");
    }

    #[test]
    fn requests_are_well_formed() {
        assert_eq!(
            get_request("/get/a"),
            b"GET /get/a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        );
        let post = String::from_utf8(post_json_request("/peers", "[]")).unwrap();
        assert!(post.ends_with("Content-Length: 2\r\n\r\n[]"), "{post}");
    }
}
