//! The client side's decoding of whatever a peer sends back. A fake peer on loopback answers each
//! request with the fuzz input, raw, as its HTTP response, then closes the connection. The input's
//! first byte picks the call: `R` a `remove`, `S` a `set`, anything else a `get` (a leading `G` is
//! dropped; an input that starts with `HTTP` is a `get` of exactly that answer).
//!
//! Proves that no answer makes the client panic or hang, that exactly one request is sent per
//! call (a failed `remove` or `set` is sent again later, in the background; those repairs land
//! before the next call), and that the outcome is the one the answer calls for: a `get` returns the decoded value
//! of a well-formed `200 application/x-protobuf` answer, returns the owner's loader error for a
//! `500` flagged `groupcache-error: loader`, and otherwise falls back to the local loader; a
//! `remove` or `set` succeeds on a 2xx and fails on anything else.
#![no_main]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use groupcache_rs::{Error, Groupcache, Loaded, Loader};
use groupcache_rs_pb::GetResponse;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const SELF_URL: &str = "http://127.0.0.1:1";
/// Short, so that an answer that stalls the client cannot stall the fuzzer.
const PEER_TIMEOUT: Duration = Duration::from_millis(200);
/// Small, so that the fuzzer reaches the client's size limit (this plus 64 bytes of framing).
const MAX_VALUE_BYTES: usize = 1024;
const BODY_LIMIT: usize = MAX_VALUE_BYTES + 64;
const PROTOBUF: &[u8] = b"application/x-protobuf";

/// The fake peer's answer to the next request.
static ANSWER: Mutex<Bytes> = Mutex::new(Bytes::new());
/// Connections the fake peer accepted.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// Connections the fake peer accepted and the client has not closed yet.
static OPEN: AtomicU64 = AtomicU64::new(0);

/// The local loader, used when the owner fails.
struct Local;

impl Loader for Local {
    type Value = Bytes;
    type Error = Infallible;

    async fn load(&self, key: &str) -> Result<Loaded<Bytes>, Infallible> {
        Ok(Loaded::new(local_value(key)))
    }
}

fn local_value(key: &str) -> Bytes {
    Bytes::from(format!("local {key}"))
}

/// Made once: a runtime that also runs the fake peer, a cache with this replica and the fake peer
/// as members, and a key the fake peer owns.
struct Harness {
    runtime: Runtime,
    cache: Groupcache<Local>,
    key: String,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (cache, key) = runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let peer = format!("http://{}", listener.local_addr().expect("an address"));
            tokio::spawn(fake_peer(listener));
            let cache = Groupcache::builder("fuzz", SELF_URL, Local)
                .peer_timeout(PEER_TIMEOUT)
                .connect_timeout(PEER_TIMEOUT)
                // No hot cache: every get of the key asks the fake peer again.
                .hot_cache_bytes(0)
                // Nor suspicion: an answer that drops the connection would otherwise send the
                // next calls to the key's successor (here this replica) without asking the peer.
                .owner_suspicion(Duration::ZERO)
                .max_value_bytes(MAX_VALUE_BYTES)
                .build()
                .expect("a cache");
            cache.set_peers([SELF_URL, &peer]).expect("valid peers");
            let key = (0..)
                .map(|i| format!("k{i}"))
                .find(|key| cache.owner(key) == peer)
                .expect("the fake peer owns some key");
            (cache, key)
        });
        Harness {
            runtime,
            cache,
            key,
        }
    })
}

/// Answers every connection with the current [`ANSWER`].
async fn fake_peer(listener: TcpListener) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            CONNECTIONS.fetch_add(1, Ordering::SeqCst);
            OPEN.fetch_add(1, Ordering::SeqCst);
            let answer = ANSWER.lock().unwrap_or_else(|e| e.into_inner()).clone();
            tokio::spawn(answer_one(stream, answer));
        }
    }
}

/// Reads the request head, writes the answer, closes the sending side and reads until the client
/// closes (so that closing does not reset the connection under the client's feet).
async fn answer_one(mut stream: TcpStream, answer: Bytes) {
    let mut head = Vec::new();
    let mut buffer = [0; 4096];
    let deadline = Duration::from_secs(1);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => head.extend_from_slice(&buffer[..read]),
            _ => break,
        }
    }
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(deadline, async {
        while matches!(stream.read(&mut buffer).await, Ok(read) if read > 0) {}
    })
    .await;
    drop(stream);
    OPEN.fetch_sub(1, Ordering::SeqCst);
}

/// Waits until the client has closed every connection to the fake peer (at most a few seconds,
/// as the fake peer gives up on a connection after a second). Each answer ends its connection, but
/// the client may have put that connection in its idle list; a request sent on it before the
/// client noticed the close would fail, whatever the next answer says. The runtime's I/O is
/// polled on every yield, so the client notices at once.
///
/// First, a `remove` or `set` that failed is sent again in the background until the peer answers
/// (the library's repairs of missed writes): those repairs land now, answered with success, so
/// that none is counted as the next call's request.
fn settle(harness: &Harness) {
    harness.runtime.block_on(async {
        let started = Instant::now();
        if harness.cache.stats().write_repairs_pending > 0 {
            *ANSWER.lock().unwrap_or_else(|e| e.into_inner()) =
                Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            while harness.cache.stats().write_repairs_pending > 0
                && started.elapsed() < Duration::from_secs(5)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let started = Instant::now();
        while OPEN.load(Ordering::SeqCst) > 0 && started.elapsed() < Duration::from_secs(3) {
            tokio::task::yield_now().await;
        }
    });
}

/// What an answer calls for, as far as this independent reading of it can tell.
#[derive(Debug)]
enum Expected {
    /// A well-formed 200 `application/x-protobuf` answer: a `get` returns its value.
    Value(Bytes),
    /// A 200 `application/x-protobuf` head the client accepts, with a body that is no value
    /// (malformed, too large, cut short): a `get` loads locally, a `remove` or `set` succeeded.
    BadValue,
    /// Another 2xx with a head the client accepts: a `remove` or `set` succeeded; a `get` loads
    /// locally if it is not `application/x-protobuf`, else returns whatever the body decodes to.
    Success { protobuf: bool },
    /// A 2xx that is not `application/x-protobuf`, with a head the client may refuse: a `get`
    /// loads locally either way.
    NoValue,
    /// A 500 flagged as the owner's loader error, with a head the client accepts: a `get` returns
    /// the error, a `remove` or `set` fails.
    LoaderError,
    /// Any other status (or a refused head): a `get` loads locally, a `remove` or `set` fails.
    Failure,
    /// The client may or may not accept the head (httparse here, hyper's own checks there), or
    /// may read a different body (chunked, after a 1xx, ...): only "no panic, no hang" is checked.
    Unknown,
}

fn expected(answer: &[u8]) -> Expected {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = response.parse(answer) else {
        return Expected::Unknown;
    };
    let Some(status) = response.code.filter(|code| (200..1000).contains(code)) else {
        return Expected::Unknown;
    };
    let values = |name: &'static str| {
        response
            .headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    };
    let protobuf = values("content-type").next() == Some(PROTOBUF);
    let loader_error = values("groupcache-error").next() == Some(b"loader".as_slice());
    // At most one plain Content-Length that fits a u64, and no Transfer-Encoding: framing hyper
    // certainly accepts (it refuses a length that overflows).
    let mut lengths = values("content-length");
    let (content_length, clean) = match (lengths.next(), lengths.next()) {
        (None, _) => (None, true),
        (Some(length), None) if !length.is_empty() && length.iter().all(u8::is_ascii_digit) => {
            let length = std::str::from_utf8(length)
                .ok()
                .and_then(|l| l.parse::<u64>().ok());
            (length, length.is_some())
        }
        _ => (None, false),
    };
    let clean = clean && values("transfer-encoding").next().is_none();
    match status {
        200..=299 if !protobuf && clean => Expected::Success { protobuf: false },
        200..=299 if !protobuf => Expected::NoValue,
        200 if clean => {
            let rest = &answer[head_len..];
            // Without a length, the body runs to the end of the connection.
            let length = content_length.unwrap_or(rest.len() as u64);
            if length > BODY_LIMIT as u64 || (rest.len() as u64) < length {
                // Too large for the client, or cut short by the closed connection.
                return Expected::BadValue;
            }
            match GetResponse::decode(&rest[..length as usize]) {
                Ok(message) => Expected::Value(message.value.unwrap_or_default()),
                Err(_) => Expected::BadValue,
            }
        }
        200..=299 if clean => Expected::Success { protobuf: true },
        200..=299 => Expected::Unknown,
        500 if loader_error && clean => Expected::LoaderError,
        500 if loader_error => Expected::Unknown,
        _ => Expected::Failure,
    }
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    settle(harness);
    let (call, answer) = match data.split_first() {
        Some((b'R', answer)) => (b'R', answer),
        Some((b'S', answer)) => (b'S', answer),
        Some((b'G', answer)) => (b'G', answer),
        _ => (b'G', data),
    };
    *ANSWER.lock().unwrap_or_else(|e| e.into_inner()) = Bytes::copy_from_slice(answer);
    let expected = expected(answer);
    let cache = &harness.cache;
    let key = harness.key.as_str();
    let connections = CONNECTIONS.load(Ordering::SeqCst);
    let started = Instant::now();
    let outcome = harness.runtime.block_on(async {
        match call {
            b'R' => cache.remove(key).await.map(|()| None),
            b'S' => {
                let value = Bytes::from_static(b"set by the fuzzer");
                cache.set(key, &value, None).await.map(|()| None)
            }
            _ => cache.get(key).await.map(Some),
        }
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "a call took {elapsed:?} (peer timeout {PEER_TIMEOUT:?})"
    );
    // Past the peer timeout, the outcome is the timeout's, whatever the answer.
    let timed_out = elapsed >= PEER_TIMEOUT;
    if !timed_out {
        assert_eq!(
            CONNECTIONS.load(Ordering::SeqCst) - connections,
            1,
            "one call, one request"
        );
    }
    let local = local_value(key);
    match (call, outcome) {
        (b'G', Ok(value)) => {
            let value = value.expect("a get returns a value");
            match &expected {
                Expected::Value(decoded) if !timed_out => assert_eq!(
                    &value, decoded,
                    "a well-formed answer's value was not returned"
                ),
                Expected::BadValue
                | Expected::Success { protobuf: false }
                | Expected::NoValue
                | Expected::Failure => {
                    assert_eq!(value, local, "not the local value after a peer failure")
                }
                Expected::LoaderError if !timed_out => {
                    panic!("a loader error reported by the owner was not returned")
                }
                _ => {}
            }
        }
        (b'G', Err(Error::RemoteLoader { .. })) => assert!(
            matches!(expected, Expected::LoaderError | Expected::Unknown),
            "a loader error for an answer that reports none ({expected:?})"
        ),
        (b'G', Err(error)) => panic!("get failed: {error} ({expected:?})"),
        (_, Ok(_)) => assert!(
            !matches!(expected, Expected::Failure | Expected::LoaderError),
            "{} succeeded on a failure ({expected:?})",
            call as char
        ),
        (_, Err(Error::Peer { .. })) => assert!(
            timed_out
                || !matches!(
                    expected,
                    Expected::Value(_) | Expected::BadValue | Expected::Success { .. }
                ),
            "{} failed on a 2xx ({expected:?})",
            call as char
        ),
        (_, Err(error)) => panic!("{} failed: {error} ({expected:?})", call as char),
    }
});
