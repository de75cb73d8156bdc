//! The batch extension of the peer protocol, its format only (the asking side is in `client.rs`,
//! the serving side in `router.rs`): `POST {base}{group}/_batch` with a
//! `BatchRequest` of keys, answered with one length-delimited `BatchEntry` per key in the
//! request's order.
//!
//! golang/groupcache does not speak it, and would serve such a request as a `GET` of a key named
//! `_batch` (it ignores the method): so a batch goes only to a peer whose last answer carried
//! [`BATCH_HEADER`], which every answer of this library's router does.
//!
//! The answer is framed rather than one message, and its values are bounded by the requester's
//! `max_answer_bytes` (and the owner's own limit, and what is left of its budget of answers in
//! flight, `answers.rs`): keys past it are answered `pending`, to be asked for again, and a value
//! larger than any answer `skipped`, to be asked for on its own. The owner sends the values as
//! they are, between their framing, not copied into one buffer; the requester reads the body once
//! into one buffer, and the decoded values are views into it, so a large answer is not held twice.

use std::collections::HashSet;

use axum::http::StatusCode;
use bytes::Bytes;
use groupcache_rs_pb::{BatchEntry, BatchRequest};
use prost::Message;

use super::protocol::expire_field;
use crate::caches::Kind;
use crate::cluster::groups::BatchAnswer::{self, Done};
use crate::{Error, PeerError};

/// Longest error message carried per key, in bytes, as for a single request's error body.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Room per entry for everything but the value: framing, expiry and at most one message.
const ENTRY_OVERHEAD: usize = MAX_MESSAGE_BYTES + 32;

/// Exactly `keys` entries, each a view into `body`.
pub(crate) fn decode_answer(mut body: Bytes, keys: usize) -> Result<Vec<BatchEntry>, PeerError> {
    // Never more than the request's keys, whatever the answer claims.
    let mut entries = Vec::with_capacity(keys);
    while !body.is_empty() {
        if entries.len() == keys {
            return Err(PeerError::Malformed(format!(
                "batch answer has more than the {keys} entries asked for"
            )));
        }
        let entry = BatchEntry::decode_length_delimited(&mut body)
            .map_err(|e| PeerError::Malformed(format!("batch entry: {e}")))?;
        entries.push(entry);
    }
    if entries.len() != keys {
        return Err(PeerError::Malformed(format!(
            "batch answer has {} entries for {keys} keys",
            entries.len()
        )));
    }
    Ok(entries)
}

/// Why a batch request is refused, and its status.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

fn refused(status: StatusCode, message: String) -> Refused {
    Refused { status, message }
}

/// The longest body a batch request for `group` can have: `max_keys` keys of `max_key_bytes`
/// each, with their framing, the group's name and the two numbers. Anything longer is refused
/// before it is read.
pub(crate) fn batch_body_limit(max_keys: usize, max_key_bytes: usize, group: &str) -> usize {
    // A field's tag and length prefix take at most 1 + 10 bytes; a number field 1 + 10.
    const FRAMING: usize = 11;
    max_keys
        .saturating_mul(max_key_bytes.saturating_add(FRAMING))
        .saturating_add(group.len() + 3 * FRAMING)
}

/// Counts the keys of a `BatchRequest` body and checks their lengths without decoding it, so
/// that a body of many tiny keys is refused before it becomes as many `String`s (16 MiB of
/// one-byte keys decoded to about 380 MB).
fn check_keys(mut body: &[u8], max_keys: usize, max_key_bytes: usize) -> Result<(), Refused> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    // prost's own field reader, so that a body is refused here only where decoding would
    // refuse it too (or where the checks after decoding would).
    let malformed = |error: prost::DecodeError| {
        refused(
            StatusCode::BAD_REQUEST,
            format!("malformed BatchRequest: {error}"),
        )
    };
    let mut keys = 0usize;
    while !body.is_empty() {
        let (tag, wire_type) = decode_key(&mut body).map_err(malformed)?;
        if tag != 2 || wire_type != WireType::LengthDelimited {
            skip_field(wire_type, tag, &mut body, DecodeContext::default()).map_err(malformed)?;
            continue;
        }
        keys += 1;
        if keys > max_keys {
            return Err(refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {max_keys} keys in a batch, over the limit"),
            ));
        }
        let length = decode_varint(&mut body).map_err(malformed)?;
        let length = usize::try_from(length)
            .ok()
            .filter(|&length| length <= body.len())
            .ok_or_else(|| {
                refused(
                    StatusCode::BAD_REQUEST,
                    "malformed BatchRequest: a key longer than the body".to_owned(),
                )
            })?;
        if length > max_key_bytes {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                format!("key is {length} bytes, over the limit of {max_key_bytes}"),
            ));
        }
        body = &body[length..];
    }
    Ok(())
}

/// The keys of a batch request for `group`: at most `max_keys`, each at most `max_key_bytes`
/// long, none twice.
pub(crate) fn parse_request(
    body: &[u8],
    group: &str,
    max_keys: usize,
    max_key_bytes: usize,
) -> Result<BatchRequest, Refused> {
    check_keys(body, max_keys, max_key_bytes)?;
    let request = BatchRequest::decode(body).map_err(|error| {
        refused(
            StatusCode::BAD_REQUEST,
            format!("malformed BatchRequest: {error}"),
        )
    })?;
    if let Some(named) = &request.group
        && named != group
    {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            format!("the body names group {named:?}, the path {group:?}"),
        ));
    }
    if request.keys.len() > max_keys {
        return Err(refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} keys in a batch, over the limit of {max_keys}",
                request.keys.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(request.keys.len());
    for key in &request.keys {
        if key.len() > max_key_bytes {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                format!(
                    "key is {} bytes, over the limit of {max_key_bytes}",
                    key.len()
                ),
            ));
        }
        if !seen.insert(key.as_str()) {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                format!("key {key:?} is in the batch twice"),
            ));
        }
    }
    Ok(request)
}

/// The answer to a batch: one length-delimited `BatchEntry` per key, in order, as the parts of
/// a body (the values themselves, shared with the caches, between the framing around them);
/// with the bytes of values it carries. The owner has already kept the values within the
/// answer's room (`Served::serve_batch`).
pub(crate) fn answer_parts(answers: Vec<BatchAnswer>) -> (Vec<Bytes>, usize) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut parts = Vec::new();
    let mut framing = Vec::new();
    let mut values = 0;
    for answer in answers {
        let entry = match answer {
            // Not answered now (still loading by the asker's deadline, or no room left in this
            // answer): the asker asks again.
            BatchAnswer::AskAgain => BatchEntry {
                pending: Some(true),
                ..BatchEntry::default()
            },
            BatchAnswer::Alone => BatchEntry {
                skipped: Some(true),
                ..BatchEntry::default()
            },
            BatchAnswer::Done(Ok(entry)) if entry.kind() == Kind::NotFound => BatchEntry {
                expire: expire_field(entry.expire),
                refresh: expire_field(entry.refresh()),
                not_found: Some(true),
                ..BatchEntry::default()
            },
            // A failed load's message, cached on the owner: a loader error, as when it failed.
            BatchAnswer::Done(Ok(entry)) if entry.kind() == Kind::Failed => BatchEntry {
                loader_error: Some(bounded(String::from_utf8_lossy(&entry.value).into_owned())),
                ..BatchEntry::default()
            },
            BatchAnswer::Done(Ok(entry)) => {
                let refresh = entry.refresh();
                let value = entry.value;
                let expire = BatchEntry {
                    expire: expire_field(entry.expire),
                    refresh: expire_field(refresh),
                    ..BatchEntry::default()
                };
                // The entry as prost would write it (fields in tag order: the value, then its
                // expiry), with the value not copied: a part of its own.
                let length = 1
                    + prost::encoding::encoded_len_varint(value.len() as u64)
                    + value.len()
                    + expire.encoded_len();
                encode_varint(length as u64, &mut framing);
                encode_key(1, WireType::LengthDelimited, &mut framing);
                encode_varint(value.len() as u64, &mut framing);
                parts.push(Bytes::from(std::mem::take(&mut framing)));
                values += value.len();
                parts.push(value);
                // Writing into a Vec cannot fail.
                let _ = expire.encode(&mut framing);
                continue;
            }
            Done(Err(
                error @ (Error::Loader(_)
                | Error::LoaderPanicked(_)
                | Error::NotLoaded
                | Error::CircuitOpen),
            )) => BatchEntry {
                loader_error: Some(bounded(error.to_string())),
                ..BatchEntry::default()
            },
            Done(Err(error)) => BatchEntry {
                error: Some(bounded(error.to_string())),
                ..BatchEntry::default()
            },
        };
        // Writing into a Vec cannot fail.
        let _ = entry.encode_length_delimited(&mut framing);
    }
    if !framing.is_empty() {
        parts.push(Bytes::from(framing));
    }
    (parts, values)
}

/// The most bytes of values an answer to `limit` may carry: `max_bytes` as asked, within
/// `limit`, the owner's own.
pub(crate) fn answer_room(asked: Option<u64>, limit: usize) -> usize {
    asked
        .map_or(limit, |asked| usize::try_from(asked).unwrap_or(usize::MAX))
        .min(limit)
}

/// Room per entry a requester allows for everything but the values, `keys` of them.
pub(crate) fn answer_overhead(keys: usize) -> usize {
    keys.saturating_mul(ENTRY_OVERHEAD)
}

/// `message`, cut at a character boundary to at most [`MAX_MESSAGE_BYTES`].
fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(keys: &[&str]) -> Vec<u8> {
        BatchRequest {
            group: Some("g".into()),
            keys: keys.iter().map(|&k| k.to_owned()).collect(),
            max_answer_bytes: None,
            max_wait_ms: None,
        }
        .encode_to_vec()
    }

    /// The key count is checked while the body is scanned, before it is decoded: a body with
    /// one key too many is refused 413 even though what follows is garbage that decoding would
    /// have failed on (400, after decoding every key before it: the finding's 380 MB).
    #[test]
    fn too_many_keys_are_refused_before_the_body_is_decoded() {
        let keys: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut body = request(&keys);
        body.extend_from_slice(&[0xff; 16]);
        let refused = parse_request(&body, "g", 4, 8).unwrap_err();
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE, "{refused:?}");
        // Within the count, the garbage is what refuses it.
        let refused = parse_request(&body, "g", 5, 8).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    }

    /// Unknown fields of every wire type a scan can meet are skipped, as decoding skips them.
    #[test]
    fn the_scan_skips_unknown_fields_as_decoding_does() {
        let mut body = request(&["a", "b"]);
        // Field 9: varint; 10: fixed64; 11: bytes; 12: fixed32.
        body.extend_from_slice(&[9 << 3, 0x96, 0x01]);
        body.extend_from_slice(&[(10 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        body.extend_from_slice(&[(11 << 3) | 2, 3, b'x', b'y', b'z']);
        body.extend_from_slice(&[(12 << 3) | 5, 1, 2, 3, 4]);
        // Field 13: a group (wire types 3 and 4) around a varint field, as decoding skips it.
        body.extend_from_slice(&[(13 << 3) | 3, 1 << 3, 5, (13 << 3) | 4]);
        let parsed = parse_request(&body, "g", 2, 8).unwrap();
        assert_eq!(parsed.keys, ["a", "b"]);
        // A length past the end is malformed, not read past the body.
        let truncated = [(11 << 3) | 2, 200, b'x'];
        let refused = parse_request(&truncated, "g", 2, 8).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    }

    /// The body limit admits the largest honest batch: the most keys of the longest length,
    /// with the group and both numbers.
    #[test]
    fn the_largest_honest_batch_fits_the_body_limit() {
        for (max_keys, max_key_bytes) in [(1024, 4096), (3, 1), (1, 300), (0, 10)] {
            let keys = vec!["k".repeat(max_key_bytes); max_keys];
            let body = BatchRequest {
                group: Some("a-group-name".into()),
                keys,
                max_answer_bytes: Some(u64::MAX),
                max_wait_ms: Some(u64::MAX),
            }
            .encode_to_vec();
            let limit = batch_body_limit(max_keys, max_key_bytes, "a-group-name");
            assert!(body.len() <= limit, "{} > {limit}", body.len());
            assert!(limit < body.len() + 64 + 11 * max_keys, "and not much more");
        }
    }

    #[test]
    fn hostile_batches_are_refused_with_4xx() {
        let parse = |body: &[u8]| parse_request(body, "g", 3, 8).map_err(|r| r.status);
        assert_eq!(parse(&request(&["a", "b"])).unwrap().keys, ["a", "b"]);
        assert_eq!(parse(&request(&[])).unwrap().keys.len(), 0);
        assert_eq!(parse(&[0xff, 0xff]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            parse(&request(&["a", "b", "a"])),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            parse(&request(&["a", "b", "c", "d"])),
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            parse(&request(&["123456789"])),
            Err(StatusCode::BAD_REQUEST)
        );
        let other_group = BatchRequest {
            group: Some("h".into()),
            ..BatchRequest::default()
        };
        assert_eq!(
            parse(&other_group.encode_to_vec()),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn answers_must_have_one_entry_per_key() {
        let mut body = Vec::new();
        for value in ["x", "y"] {
            BatchEntry {
                value: Some(Bytes::from(value)),
                ..BatchEntry::default()
            }
            .encode_length_delimited(&mut body)
            .unwrap();
        }
        let body = Bytes::from(body);
        let entries = decode_answer(body.clone(), 2).unwrap();
        assert_eq!(entries[1].value.as_deref(), Some(&b"y"[..]));
        assert!(decode_answer(body.clone(), 1).is_err(), "one too many");
        assert!(decode_answer(body.clone(), 3).is_err(), "one too few");
        assert!(
            decode_answer(body.slice(..body.len() - 1), 2).is_err(),
            "cut short"
        );
        // A length prefix claiming far more than is there allocates nothing.
        assert!(decode_answer(Bytes::from_static(&[0xff, 0xff, 0xff, 0x7f]), 1).is_err());
    }

    /// The parts of an answer, put together, are what prost writes for its entries: the values
    /// (not copied) between their framing.
    #[test]
    fn answer_parts_are_the_entries_as_prost_writes_them() {
        use crate::caches::Entry;
        let value = Bytes::from(vec![7u8; 300]);
        let answers = vec![
            Done(Ok(Entry::value(value.clone(), 1_700_000_000_000_000_000))),
            BatchAnswer::AskAgain,
            Done(Ok(Entry::value(Bytes::from_static(b"v"), 0))),
            BatchAnswer::Alone,
            Done(Err(Error::NotLoaded)),
            Done(Ok(Entry::value(Bytes::new(), 5))),
        ];
        let expected = [
            BatchEntry {
                value: Some(value.clone()),
                expire: Some(1_700_000_000_000_000_000),
                ..BatchEntry::default()
            },
            BatchEntry {
                pending: Some(true),
                ..BatchEntry::default()
            },
            BatchEntry {
                value: Some(Bytes::from_static(b"v")),
                ..BatchEntry::default()
            },
            BatchEntry {
                skipped: Some(true),
                ..BatchEntry::default()
            },
            BatchEntry {
                loader_error: Some(Error::NotLoaded.to_string()),
                ..BatchEntry::default()
            },
            BatchEntry {
                value: Some(Bytes::new()),
                expire: Some(5),
                ..BatchEntry::default()
            },
        ];
        let mut encoded = Vec::new();
        for entry in &expected {
            entry.encode_length_delimited(&mut encoded).unwrap();
        }
        let (parts, values) = answer_parts(answers);
        assert_eq!(values, 301);
        assert!(
            parts.iter().any(|part| part.as_ptr() == value.as_ptr()),
            "the value is sent as it is, not copied"
        );
        assert_eq!(parts.concat(), encoded);
        let decoded = decode_answer(Bytes::from(parts.concat()), expected.len()).unwrap();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES && cut.len() >= MAX_MESSAGE_BYTES - 1);
        assert_eq!(bounded("short".into()), "short");
    }
}
