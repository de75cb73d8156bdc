//! The batch extension, as an owner receives it: the fuzz input is the body of a
//! `POST /_groupcache/fuzz/_batch`, sent through `Groupcache::router()`. The same bytes are also
//! decoded as the batch messages (`BatchRequest`, and a sequence of length-delimited
//! `BatchEntry`), as a requester decodes an answer.
//!
//! Proves that no body makes the router panic or allocate without bound; that a batch is
//! answered 200 exactly when it is well formed (decodes, names this group or none, at most
//! `MAX_BATCH_KEYS` keys of at most `MAX_KEY_BYTES` bytes, none twice) and 4xx otherwise, with no
//! load for a refused batch; that a 200 has one entry per key, in order, each the key's value,
//! "ask again" (`pending`: past the answer's room, or still loading) or, when the value is larger
//! than any answer, a skip; that the values answered fit the answer's room; and that the
//! messages re-encode stably.
#![no_main]

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use groupcache_rs::{Groupcache, Loaded, Loader};
use groupcache_rs_pb::{BatchEntry, BatchRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio::runtime::Runtime;
use tower::ServiceExt;

const GROUP: &str = "fuzz";
const MAX_BATCH_KEYS: usize = 8;
const MAX_KEY_BYTES: usize = 16;
/// Small, so that answers run out of room and values are larger than any answer.
const MAX_BATCH_BYTES: usize = 64;
/// Small, so that a body can exceed the router's limit (this plus 4096 bytes).
const MAX_VALUE_BYTES: usize = 512;

static LOADS: AtomicU64 = AtomicU64::new(0);

struct Counting;

impl Loader for Counting {
    type Value = Bytes;
    type Error = Infallible;

    async fn load(&self, key: &str) -> Result<Loaded<Bytes>, Infallible> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        Ok(Loaded::new(value(key)))
    }
}

fn value(key: &str) -> Bytes {
    Bytes::from(format!("loaded {key}"))
}

struct Harness {
    runtime: Runtime,
    router: Router,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let router = {
            let _entered = runtime.enter();
            Groupcache::builder(GROUP, "http://127.0.0.1:1", Counting)
                .main_cache_bytes(1 << 20)
                .max_value_bytes(MAX_VALUE_BYTES)
                .max_key_bytes(MAX_KEY_BYTES)
                .max_batch_keys(MAX_BATCH_KEYS)
                .max_batch_bytes(MAX_BATCH_BYTES)
                .build()
                .expect("a cache")
                .router()
        };
        Harness { runtime, router }
    })
}

/// The request if the router must take it, by an independent reading of the rules.
fn acceptable(data: &[u8]) -> Option<BatchRequest> {
    // A batch body is at most the largest honest batch: `MAX_BATCH_KEYS` keys of
    // `MAX_KEY_BYTES`, each framed in at most 11 bytes, the group's name and two numbers framed
    // the same (unknown fields past that make a well-formed body too long); and, as every body,
    // at most the router's limit.
    let batch_limit = MAX_BATCH_KEYS * (MAX_KEY_BYTES + 11) + GROUP.len() + 3 * 11;
    if data.len() > batch_limit.min(MAX_VALUE_BYTES + 4096) {
        return None;
    }
    let request = BatchRequest::decode(data).ok()?;
    let named_ok = request.group.as_deref().is_none_or(|group| group == GROUP);
    let mut seen = HashSet::new();
    let keys_ok = request.keys.len() <= MAX_BATCH_KEYS
        && request
            .keys
            .iter()
            .all(|key| key.len() <= MAX_KEY_BYTES && seen.insert(key));
    (named_ok && keys_ok).then_some(request)
}

fn round_trips(data: &[u8]) {
    if let Ok(request) = BatchRequest::decode(data) {
        let encoded = request.encode_to_vec();
        let again = BatchRequest::decode(encoded.as_slice()).expect("re-encoded request decodes");
        assert_eq!(again, request);
        assert_eq!(again.encode_to_vec(), encoded, "encoding is not stable");
    }
    let mut rest = Bytes::copy_from_slice(data);
    while !rest.is_empty() {
        let Ok(entry) = BatchEntry::decode_length_delimited(&mut rest) else {
            break;
        };
        let encoded = entry.encode_length_delimited_to_vec();
        let again = BatchEntry::decode_length_delimited(encoded.as_slice()).expect("decodes");
        assert_eq!(again, entry);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trips(data);
    let harness = harness();
    let expected = acceptable(data);
    let request = Request::post("/_groupcache/fuzz/_batch")
        .body(Body::from(data.to_vec()))
        .expect("a valid request");
    let loads = LOADS.load(Ordering::SeqCst);
    let (status, body) = harness.runtime.block_on(async {
        let response = match harness.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a readable body");
        (status, body)
    });
    let ran = LOADS.load(Ordering::SeqCst) - loads;
    let Some(request) = expected else {
        assert!(
            [StatusCode::BAD_REQUEST, StatusCode::PAYLOAD_TOO_LARGE].contains(&status),
            "a batch that breaks the rules got {status}"
        );
        assert_eq!(ran, 0, "the loader ran for a refused batch");
        return;
    };
    assert_eq!(
        status,
        StatusCode::OK,
        "a well-formed batch got {status}: {body:?}"
    );
    assert!(
        ran as usize <= request.keys.len(),
        "{ran} loads for {} keys",
        request.keys.len()
    );
    let cap = request
        .max_answer_bytes
        .map_or(MAX_BATCH_BYTES, |asked| {
            usize::try_from(asked).unwrap_or(usize::MAX)
        })
        .min(MAX_BATCH_BYTES);
    let mut room = cap;
    let mut rest = body;
    for key in &request.keys {
        let entry = BatchEntry::decode_length_delimited(&mut rest).expect("an entry per key");
        let expected = value(key);
        if entry.pending == Some(true) {
            // Past the room (not loaded, so of a size not known), or still loading: asked again.
        } else if cap == 0 || expected.len() > cap {
            assert_eq!(entry.skipped, Some(true), "{key:?} fits no answer: skipped");
        } else {
            assert!(expected.len() <= room, "{key:?} answered past the room");
            room -= expected.len();
            assert_eq!(
                entry.value.as_ref(),
                Some(&expected),
                "the value of {key:?}"
            );
        }
    }
    assert!(rest.is_empty(), "more entries than keys");
});
