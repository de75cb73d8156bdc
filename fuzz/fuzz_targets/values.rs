//! The `Value` codecs (`Bytes`, `Vec<u8>`, `String`, `Json<serde_json::Value>`) on arbitrary bytes,
//! as they arrive from a peer or a cache: decoding never panics, the byte-like codecs are the
//! identity (a `String` exactly when the bytes are UTF-8), and a decoded JSON value re-encodes to
//! bytes that decode to an equal value.
//!
//! Floats: serde_json without its `float_roundtrip` feature parses some numbers a few units in the
//! last place off, including numbers it wrote itself (`1843.1730026850346` reads back as
//! `1843.1730026850344`), so a `Json` value with an `f64` can change on its way through the cache.
//! While this build's serde_json has that lossy parser, floats may differ by a few units in the
//! last place; once the workspace enables `float_roundtrip`, equality is exact again, by itself.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use groupcache_rs::{Json, Value};
use libfuzzer_sys::fuzz_target;
use serde_json::Value as JsonValue;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);

    let decoded = Bytes::decode(bytes.clone()).expect("Bytes always decode");
    assert_eq!(decoded, data);
    assert_eq!(decoded.encode().unwrap(), data);

    let decoded = Vec::<u8>::decode(bytes.clone()).expect("Vec<u8> always decodes");
    assert_eq!(decoded, data);
    assert_eq!(decoded.encode().unwrap(), data);

    match String::decode(bytes.clone()) {
        Ok(text) => {
            assert!(std::str::from_utf8(data).is_ok());
            assert_eq!(text.encode().unwrap(), data);
        }
        Err(_) => assert!(std::str::from_utf8(data).is_err(), "UTF-8 refused"),
    }

    if let Ok(json) = Json::<JsonValue>::decode(bytes) {
        let encoded = json.encode().expect("a decoded JSON value encodes");
        let Json(json) = json;
        let Json(again) =
            Json::<JsonValue>::decode(encoded).expect("an encoded JSON value decodes");
        assert!(
            same(&json, &again),
            "JSON value changed in a round trip: {json} became {again}"
        );
    }
});

/// How far apart (in units in the last place) a lossy parser's floats may be.
const MAX_ULPS: u64 = 64;

/// Whether this build's serde_json reads back every float it writes.
fn exact_floats() -> bool {
    static EXACT: OnceLock<bool> = OnceLock::new();
    *EXACT.get_or_init(|| {
        let probe = 1_843.173_002_685_034_6_f64;
        serde_json::from_str::<f64>(&serde_json::to_string(&probe).unwrap()).unwrap() == probe
    })
}

/// Equal, but for floats a few units in the last place apart where serde_json parses lossily.
fn same(a: &JsonValue, b: &JsonValue) -> bool {
    match (a, b) {
        (JsonValue::Number(x), JsonValue::Number(y)) if x.is_f64() && y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y
                || (!exact_floats()
                    && x.signum() == y.signum()
                    && x.to_bits().abs_diff(y.to_bits()) <= MAX_ULPS)
        }
        (JsonValue::Array(x), JsonValue::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (JsonValue::Object(x), JsonValue::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, x), (ky, y))| kx == ky && same(x, y))
        }
        _ => a == b,
    }
}
