//! golang/groupcache's wire messages (proto2 package `groupcachepb`), as prost types.
//!
//! Written as `#[derive(prost::Message)]` structs so that no `protoc` is needed at build time. The
//! field numbers and types are those of golang/groupcache's `groupcache.proto`, plus the `expire`
//! field and `SetRequest` of mailgun/groupcache v2, which a Go peer ignores without breaking.
//!
//! ```
//! use prost::Message;
//! use groupcache_rs_pb::GetResponse;
//!
//! let response = GetResponse { value: Some("hi".into()), ..Default::default() };
//! assert_eq!(response.encode_to_vec(), [0x0a, 0x02, b'h', b'i']);
//! let decoded = GetResponse::decode(&[0x0a, 0x02, b'h', b'i'][..]).unwrap();
//! assert_eq!(decoded.value.as_deref(), Some(&b"hi"[..]));
//! ```

use bytes::Bytes;

/// Asks a peer for one key of one group. golang/groupcache sends this in the URL path, not as a body;
/// it is kept for completeness and for peers that want it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetRequest {
    /// The group's name.
    #[prost(string, required, tag = "1")]
    pub group: String,
    /// The key.
    #[prost(string, required, tag = "2")]
    pub key: String,
}

/// A peer's answer to a get: the value and, optionally, how popular the key is and when it expires.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetResponse {
    /// The value's bytes.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub value: Option<Bytes>,
    /// Requests per minute the owner sees for this key (unused by golang/groupcache).
    #[prost(double, optional, tag = "2")]
    pub minute_qps: Option<f64>,
    /// When the value expires, in Unix nanoseconds; absent or 0 means never (mailgun/groupcache v2).
    #[prost(int64, optional, tag = "3")]
    pub expire: Option<i64>,
    /// From when a get refreshes the value ahead of its expiry, in Unix nanoseconds; absent or 0
    /// means never (groupcache-rs; golang/groupcache ignores it).
    #[prost(int64, optional, tag = "4")]
    pub refresh: Option<i64>,
    /// The owner's source has no such key: a negative answer, kept until `expire` like a value
    /// (groupcache-rs; sent only with a 404 answer, which golang/groupcache takes for an error).
    #[prost(bool, optional, tag = "5")]
    pub not_found: Option<bool>,
}

/// Stores a value on its owner (mailgun/groupcache v2's `PUT`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetRequest {
    /// The group's name.
    #[prost(string, required, tag = "1")]
    pub group: String,
    /// The key.
    #[prost(string, required, tag = "2")]
    pub key: String,
    /// The value's bytes.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub value: Option<Bytes>,
    /// When the value expires, in Unix nanoseconds; absent or 0 means never.
    #[prost(int64, optional, tag = "4")]
    pub expire: Option<i64>,
}

/// Asks a peer for many keys of one group at once (an extension golang/groupcache does not speak:
/// `POST {base}{group}/_batch`). The answer is one length-delimited [`BatchEntry`] per key, in the
/// order of `keys`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchRequest {
    /// The group's name (the path names it too; the two must agree).
    #[prost(string, optional, tag = "1")]
    pub group: Option<String>,
    /// The keys, each at most once.
    #[prost(string, repeated, tag = "2")]
    pub keys: Vec<String>,
    /// The most bytes of values the requester reads in the answer; the owner answers the keys
    /// past it (or past its own limit) [`BatchEntry::pending`], to be asked for again, and a value
    /// larger than either [`BatchEntry::skipped`], to be asked for on its own.
    #[prost(uint64, optional, tag = "3")]
    pub max_answer_bytes: Option<u64>,
    /// The longest the requester waits for the answer, in milliseconds: the owner answers by
    /// then, and marks the keys still loading [`BatchEntry::pending`]. Absent: no limit.
    #[prost(uint64, optional, tag = "4")]
    pub max_wait_ms: Option<u64>,
}

/// One key's answer in a batch: a value (with its expiry), the owner's loader error, another
/// failure, a skip (the value is larger than any answer carries), or "ask again".
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchEntry {
    /// The value's bytes, when there is one.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub value: Option<Bytes>,
    /// When the value expires, in Unix nanoseconds; absent or 0 means never.
    #[prost(int64, optional, tag = "2")]
    pub expire: Option<i64>,
    /// The owner's loader failed for this key: its message.
    #[prost(string, optional, tag = "3")]
    pub loader_error: Option<String>,
    /// The owner could not answer this key for another reason: its message.
    #[prost(string, optional, tag = "4")]
    pub error: Option<String>,
    /// The value is larger than any answer carries: ask for it on its own.
    #[prost(bool, optional, tag = "5")]
    pub skipped: Option<bool>,
    /// Not in this answer: still loading when the requester's wait
    /// ([`BatchRequest::max_wait_ms`]) ran out (the load goes on), or past the answer's room.
    /// Ask again.
    #[prost(bool, optional, tag = "6")]
    pub pending: Option<bool>,
    /// From when a get refreshes the value ahead of its expiry, in Unix nanoseconds; absent or 0
    /// means never.
    #[prost(int64, optional, tag = "7")]
    pub refresh: Option<i64>,
    /// The owner's source has no such key (a negative answer, kept until `expire`).
    #[prost(bool, optional, tag = "8")]
    pub not_found: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    proptest! {
        /// Arbitrary bytes from a peer decode or fail; they never panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = GetResponse::decode(bytes.as_slice());
            let _ = SetRequest::decode(bytes.as_slice());
            let _ = GetRequest::decode(bytes.as_slice());
            let _ = BatchRequest::decode(bytes.as_slice());
            let _ = BatchEntry::decode_length_delimited(bytes.as_slice());
        }

        /// Every message encodes and decodes back to itself.
        #[test]
        fn messages_round_trip(
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            minute_qps in proptest::option::of(any::<f64>().prop_filter("NaN is not equal to itself", |q| !q.is_nan())),
            expire in proptest::option::of(any::<i64>()),
            group in any::<String>(),
            key in any::<String>(),
        ) {
            let response = GetResponse { value: value.clone().map(Bytes::from), minute_qps, expire, ..Default::default() };
            prop_assert_eq!(GetResponse::decode(response.encode_to_vec().as_slice()).unwrap(), response);
            let request = SetRequest { group, key, value: value.map(Bytes::from), expire };
            prop_assert_eq!(SetRequest::decode(request.encode_to_vec().as_slice()).unwrap(), request);
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn get_response_with_value_hi_is_byte_exact() {
        let response = GetResponse {
            value: Some(Bytes::from_static(b"hi")),
            ..Default::default()
        };
        assert_eq!(hex(&response.encode_to_vec()), "0a 02 68 69");
    }

    #[test]
    fn get_response_all_fields_are_byte_exact() {
        let response = GetResponse {
            value: Some(Bytes::from_static(b"v")),
            minute_qps: Some(1.5),
            expire: Some(1_700_000_000_000_000_000),
            ..Default::default()
        };
        // 0x11 = field 2, wire type 1 (64-bit); 1.5f64 little-endian; 0x18 = field 3, varint.
        assert_eq!(
            hex(&response.encode_to_vec()),
            "0a 01 76 11 00 00 00 00 00 00 f8 3f 18 80 80 a8 b1 e3 9f e7 cb 17"
        );
        assert_eq!(
            GetResponse::decode(response.encode_to_vec().as_slice()).unwrap(),
            response
        );
    }

    #[test]
    fn empty_get_response_is_empty_and_decodes_to_no_value() {
        let response = GetResponse::default();
        assert!(response.encode_to_vec().is_empty());
        assert_eq!(GetResponse::decode(&[][..]).unwrap().value, None);
    }

    #[test]
    fn get_request_is_byte_exact() {
        let request = GetRequest {
            group: "g".into(),
            key: "k".into(),
        };
        assert_eq!(hex(&request.encode_to_vec()), "0a 01 67 12 01 6b");
    }

    #[test]
    fn set_request_is_byte_exact_and_round_trips() {
        let request = SetRequest {
            group: "g".into(),
            key: "k".into(),
            value: Some(Bytes::from_static(b"v")),
            expire: Some(5),
        };
        assert_eq!(
            hex(&request.encode_to_vec()),
            "0a 01 67 12 01 6b 1a 01 76 20 05"
        );
        assert_eq!(
            SetRequest::decode(request.encode_to_vec().as_slice()).unwrap(),
            request
        );
    }

    #[test]
    fn batch_entries_follow_each_other_length_delimited() {
        let mut answer = Vec::new();
        let entries = [
            BatchEntry {
                value: Some(Bytes::from_static(b"v")),
                expire: Some(5),
                ..Default::default()
            },
            BatchEntry {
                loader_error: Some("no row".into()),
                ..Default::default()
            },
            BatchEntry::default(),
        ];
        for entry in &entries {
            entry.encode_length_delimited(&mut answer).unwrap();
        }
        assert_eq!(hex(&answer[..7]), "05 0a 01 76 10 05 08");
        let mut rest = Bytes::from(answer);
        for entry in &entries {
            assert_eq!(
                &BatchEntry::decode_length_delimited(&mut rest).unwrap(),
                entry
            );
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn missing_required_fields_decode_as_empty() {
        // prost does not enforce proto2's `required` on decode; servers take group and key from the
        // URL path, as golang/groupcache does, so an absent field must simply read as empty.
        let request = SetRequest::decode(&[0x1a, 0x01, b'v'][..]).unwrap();
        assert_eq!((request.group.as_str(), request.key.as_str()), ("", ""));
        assert_eq!(request.value.as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for garbage in [
            &[0xff_u8, 0xff, 0xff][..],
            &[0x0a, 0x10, b'x'][..],
            &[0x0b][..],
        ] {
            assert!(GetResponse::decode(garbage).is_err(), "{garbage:?}");
        }
    }
}
