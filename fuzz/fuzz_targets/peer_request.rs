//! The serving side's request parser: arbitrary requests (method, path, headers, body) sent to
//! `Groupcache::router()`, once on a replica without authentication and once on one that requires
//! signed requests. Proves that nothing a peer or an attacker sends makes the router panic, that
//! it answers only with the statuses it documents, that no request reaches a replica requiring
//! signatures without a valid one (the fuzzer cannot forge the HMAC), and that the loader runs
//! only for a `GET` that is answered with a value (or a `POST` of a batch, at most once per key),
//! never for a refused request.
#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use groupcache_rs::{Groupcache, Loaded, Loader, PeerAuth, SIGNATURE_HEADER};
use groupcache_rs_pb::{BatchRequest, GetResponse};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio::runtime::Runtime;
use tower::ServiceExt;

const GROUP: &str = "fuzz";
const SELF_URL: &str = "http://127.0.0.1:1";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// Small, so that a fuzzed body can exceed the router's body limit (this plus 4096 bytes).
const MAX_VALUE_BYTES: usize = 512;

/// The requests' loads on the replica without authentication.
static OPEN_LOADS: AtomicU64 = AtomicU64::new(0);
/// The requests' loads on the replica that requires signatures: there must never be one.
static SIGNED_LOADS: AtomicU64 = AtomicU64::new(0);

/// A loader that counts its runs and never fails.
struct Counting(&'static AtomicU64);

impl Loader for Counting {
    type Value = Bytes;
    type Error = Infallible;

    async fn load(&self, key: &str) -> Result<Loaded<Bytes>, Infallible> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Loaded::new(Bytes::from(format!("loaded {key}"))))
    }
}

/// Made once: a runtime, and the routers of the two replicas.
struct Harness {
    runtime: Runtime,
    open: Router,
    signed: Router,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (open, signed) = {
            let _entered = runtime.enter();
            let builder = |loads| {
                Groupcache::builder(GROUP, SELF_URL, Counting(loads))
                    .main_cache_bytes(1 << 20)
                    .max_value_bytes(MAX_VALUE_BYTES)
            };
            let open = builder(&OPEN_LOADS).build().expect("a cache");
            let auth = PeerAuth::new(SECRET.to_vec()).expect("a long enough secret");
            let signed = builder(&SIGNED_LOADS)
                .peer_auth(auth)
                .build()
                .expect("a cache");
            (open.router(), signed.router())
        };
        Harness {
            runtime,
            open,
            signed,
        }
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: Verb,
    start: PathStart,
    /// The rest of the request target, raw: percent escapes, query, anything.
    rest: String,
    headers: Vec<(Name, Content)>,
    body: Vec<u8>,
    /// The body is repeated 1 + this % 16 times, so that it can exceed the body limit.
    repeat: u8,
}

#[derive(Arbitrary, Debug)]
enum Verb {
    Get,
    Put,
    Delete,
    Head,
    Post,
    Options,
    Patch,
    Connect,
    Trace,
    /// Methods are case-sensitive: not `GET`.
    LowercaseGet,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum PathStart {
    Nothing,
    Base,
    Group,
    OtherGroup,
    Absolute,
}

#[derive(Arbitrary, Debug)]
enum Name {
    Signature,
    ContentType,
    ContentLength,
    TransferEncoding,
    Host,
    Expect,
    Other(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Content {
    Raw(Vec<u8>),
    /// A well-formed signature header with a timestamp near now and a made-up MAC.
    Signature {
        skew_seconds: i16,
        nonce: Vec<u8>,
        digest: [u8; 32],
        mac: [u8; 32],
    },
}

impl Input {
    /// The request, or `None` where `http` refuses it (invalid method, target or header).
    fn request(&self) -> Option<Request<Body>> {
        let method = match &self.method {
            Verb::Get => "GET",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
            Verb::Head => "HEAD",
            Verb::Post => "POST",
            Verb::Options => "OPTIONS",
            Verb::Patch => "PATCH",
            Verb::Connect => "CONNECT",
            Verb::Trace => "TRACE",
            Verb::LowercaseGet => "get",
            Verb::Other(other) => other,
        };
        let start = match self.start {
            PathStart::Nothing => "",
            PathStart::Base => "/_groupcache/",
            PathStart::Group => "/_groupcache/fuzz/",
            PathStart::OtherGroup => "/_groupcache/other/",
            PathStart::Absolute => "http://127.0.0.1:1/_groupcache/fuzz/",
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{start}{}", self.rest));
        for (name, content) in &self.headers {
            let name = match name {
                Name::Signature => SIGNATURE_HEADER.as_bytes(),
                Name::ContentType => b"content-type",
                Name::ContentLength => b"content-length",
                Name::TransferEncoding => b"transfer-encoding",
                Name::Host => b"host",
                Name::Expect => b"expect",
                Name::Other(other) => other,
            };
            let value = match content {
                Content::Raw(raw) => raw.clone(),
                Content::Signature {
                    skew_seconds,
                    nonce,
                    digest,
                    mac,
                } => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |since| since.as_secs() as i64);
                    let t = now + i64::from(*skew_seconds);
                    format!("v2 t={t} n={} d={} s={}", hex(nonce), hex(digest), hex(mac))
                        .into_bytes()
                }
            };
            request = request.header(name, value);
        }
        let body = self.body.repeat(1 + usize::from(self.repeat % 16));
        request.body(Body::from(body)).ok()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends the request through the router: its status, content type and body.
fn call(
    harness: &Harness,
    router: &Router,
    request: Request<Body>,
) -> (StatusCode, Option<Vec<u8>>, Bytes) {
    harness.runtime.block_on(async {
        let response = match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| value.as_bytes().to_vec());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a router's response body can be read");
        (status, content_type, body)
    })
}

fuzz_target!(|input: Input| {
    let harness = harness();
    let Some(request) = input.request() else {
        return;
    };
    let method = request.method().clone();

    // Without authentication.
    let loads = OPEN_LOADS.load(Ordering::SeqCst);
    let (open, content_type, body) = call(harness, &harness.open, request);
    let ran = OPEN_LOADS.load(Ordering::SeqCst) - loads;
    // 401 needs authentication; 500 a failing loader (this one cannot fail); 503 concurrent
    // requests (these come one at a time).
    assert!(
        [200, 400, 404, 405, 413].contains(&open.as_u16()),
        "unexpected status {open} without authentication for {input:?}"
    );
    if open == StatusCode::OK && method == Method::GET {
        assert!(ran <= 1, "{ran} loads for one request");
        assert_eq!(
            content_type.as_deref(),
            Some(&b"application/x-protobuf"[..])
        );
        let answer = GetResponse::decode(body).expect("a 200 to a GET is a GetResponse");
        assert!(answer.value.is_some(), "a 200 to a GET carries a value");
    } else if open == StatusCode::OK && method == Method::POST {
        // Only a batch is taken by POST; it loads at most its keys (see the `batch` target).
        let sent = input.body.repeat(1 + usize::from(input.repeat % 16));
        let batch = BatchRequest::decode(sent.as_slice()).expect("a 200 to a POST is a batch");
        assert!(
            ran as usize <= batch.keys.len(),
            "{ran} loads for {} keys",
            batch.keys.len()
        );
    } else {
        assert_eq!(ran, 0, "the loader ran for a {method} answered with {open}");
    }

    // With authentication: nothing the fuzzer makes up is signed with the secret.
    let request = input.request().expect("the same request builds twice");
    let (signed, _, _) = call(harness, &harness.signed, request);
    assert!(
        [401, 404, 405, 413].contains(&signed.as_u16()),
        "unexpected status {signed} for an unsigned request: {input:?}"
    );
    // What is refused before authentication (routing, body limit) is refused the same way
    // without it.
    assert!(
        signed == StatusCode::UNAUTHORIZED || signed == open,
        "{signed} with authentication but {open} without: {input:?}"
    );
    assert_eq!(
        SIGNED_LOADS.load(Ordering::SeqCst),
        0,
        "the loader ran behind authentication"
    );
});
