//! The peer protocol itself, golang/groupcache's HTTP wire: how a group and a key become a request
//! path and back, and the content type and headers both sides agree on. The client
//! ([`client`](super::client)) and the router ([`router`](super::router)) take everything they
//! share from here and nothing from each other.
//!
//! - `GET {base}{group}/{key}` answers 200 with a protobuf `GetResponse`; `PUT` with a
//!   `SetRequest` body and `DELETE` (mailgun/groupcache v2) set and remove.
//! - 400 for a malformed path, invalid UTF-8, an oversized key or a malformed `SetRequest`; 404 for
//!   an unknown group; 405 for any other method; 413 for a body over the limit; 500 when the loader
//!   failed, flagged with [`ERROR_KIND`]: [`LOADER_ERROR`] so our peers do not retry locally.
//! - A `GET` with [`PEEK_HEADER`] is answered from memory only: 200 as above, or 404 when the
//!   value is not cached.
//! - `POST {base}{group}/_batch` ([`BATCH_KEY`]) is this library's extension for many keys at once,
//!   advertised by [`BATCH_HEADER`] on every answer; see `wire/batch.rs`.

use std::fmt;

use bytes::Bytes;
use groupcache_rs_pb::{BatchEntry, GetResponse, SetRequest};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use prost::Message as _;

use crate::caches::{Entry, Kind};

/// golang/groupcache's content type, for `GetResponse` answers and `SetRequest` bodies.
pub(crate) const PROTOBUF: &str = "application/x-protobuf";

/// Set on a 500 whose body is the loader's error message, so the requester returns the error
/// instead of loading locally. golang/groupcache peers do not send it; see the README.
pub(crate) const ERROR_KIND: &str = "groupcache-error";

/// The [`ERROR_KIND`] of a loader error.
pub(crate) const LOADER_ERROR: &str = "loader";

/// On a `GET` (value [`PEEK`]): answer only from memory, 404 when the value is not cached; never
/// load. A replica that just became a key's owner asks the previous owner so before loading it
/// (a warm hand-off). golang/groupcache ignores the header and would load, so Go peers are never
/// sent it (see `Builder::handoff_timeout`). Signed, like every request, when auth is on.
pub(crate) const PEEK_HEADER: &str = "groupcache-peek";

/// On a `GET` of the base path itself (value `1`): a heartbeat of the failure detector
/// (`cluster/liveness.rs`), answered 200 at once, before any group, slot or load. Signed like
/// every request when auth is on. Sent only to peers that advertise batches (this library):
/// golang/groupcache would answer 400, and its replicas keep the old behaviour.
pub(crate) const HEARTBEAT_HEADER: &str = "groupcache-heartbeat";

/// On a `GET` (milliseconds): how long the asker waits. An owner whose load of the key is not
/// done by a little less than that answers 202 with [`ERROR_KIND`]: [`PENDING`] instead, and
/// the asker asks again (the load goes on, in its flight's task): a load longer than the peer
/// timeout is not taken for a dead owner, nor loaded again by the asker. golang/groupcache
/// ignores it. Not covered by the signature (it can only make the asker ask again).
pub(crate) const MAX_WAIT_HEADER: &str = "groupcache-max-wait-ms";

/// The [`ERROR_KIND`] of a get still loading by the asker's [`MAX_WAIT_HEADER`].
pub(crate) const PENDING: &str = "pending";

/// The [`ERROR_KIND`] of a negative answer: a 404 whose body is a `GetResponse` with
/// `not_found` set and the answer's expiry. golang/groupcache takes it for an error and loads
/// the key itself, as it would after its own owner's loader failed.
pub(crate) const NOT_FOUND: &str = "not-found";

/// On a `GET` (value `1`): the asker holds a copy whose refresh time passed. The owner answers
/// with the value refreshed, joining the key's one refresh (or starting it), instead of the
/// copy it may hold; a value not yet due is answered at once. golang/groupcache ignores it. Not
/// covered by the signature: it can only make the owner refresh a value already due.
pub(crate) const REFRESH_HEADER: &str = "groupcache-refresh";

/// The [`PEEK_HEADER`] value.
pub(crate) const PEEK: &str = "1";

/// The last segment of a batch request's path, `POST {base}{group}/_batch`. The method tells it
/// from a `GET` of a key named `_batch`, which still works. The body is a `BatchRequest`; the
/// answer is one length-delimited `BatchEntry` per key, in the request's order.
pub(crate) const BATCH_KEY: &str = "_batch";

/// The last segment of a purge's path, `POST {base}{group}/_purge`: the replica empties both
/// of the group's caches and supersedes its loads and fetches in flight
/// (`Groupcache::purge`). Signed like every request. Never sent to golang/groupcache, which
/// would take it for a get of the key `_purge`.
pub(crate) const PURGE_KEY: &str = "_purge";

/// `POST {base}{group}/_purge_hot`: the purge's second wave, the hot cache and the fetches in
/// flight only (copies fetched from owners the first wave had not reached yet).
pub(crate) const PURGE_HOT_KEY: &str = "_purge_hot";

/// Set (`1`) on every answer of this library's router: the peer takes batch requests.
/// golang/groupcache peers do not send it, so they only ever get single requests.
pub(crate) const BATCH_HEADER: &str = "groupcache-batch";

/// Everything but RFC 3986's unreserved characters is escaped: a superset of what Go's
/// `url.PathEscape` escapes (space is `%20`, `/` is `%2F`), which any server percent-decodes.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s` escaped for one URL path segment.
pub(crate) fn escape(s: &str) -> impl fmt::Display + '_ {
    utf8_percent_encode(s, ESCAPED)
}

/// Whether `key` can travel in a URL path. A key of exactly `.` or `..` cannot: HTTP clients fold
/// such a segment (even percent-encoded) into its parent, so it is loaded locally instead.
pub(crate) fn can_carry(key: &str) -> bool {
    key != "." && key != ".."
}

/// The request path up to the group, for a peer mounted at `mount` (its URL's own path, empty
/// or `/prefix` without a trailing slash): `{mount}{base_path}`, the same for every group.
pub(crate) fn groups_prefix(mount: &str, base_path: &str) -> String {
    format!("{mount}{base_path}")
}

/// A group's part of its request paths: `{escaped group}/`.
pub(crate) fn group_segment(group: &str) -> String {
    format!("{}/", escape(group))
}

/// The request path for `key` of the group whose [`group_segment`] is `group`, on a peer whose
/// [`groups_prefix`] is `prefix`.
pub(crate) fn key_path(prefix: &str, group: &str, key: &str) -> String {
    format!("{prefix}{group}{}", escape(key))
}

/// Splits `{base}{group}/{key}` and percent-decodes both parts (`+` stays `+`, as in Go's server).
/// The key is everything after the first `/`, so it may itself contain `/` or be empty.
pub(crate) fn parse_path(path: &str, base: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix(base)?;
    let (group, key) = rest.split_once('/')?;
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    Some((decode(group)?, decode(key)?))
}

/// A value and its expiry as every message carries them (`value`, `expire`: Unix nanoseconds,
/// absent for none), and, in the answers to gets, its refresh time and whether it is a negative
/// answer: converted in one place.
macro_rules! entry_from {
    ($($message:ty),*) => {$(
        impl From<$message> for Entry {
            fn from(message: $message) -> Entry {
                let kind = if message.not_found == Some(true) { Kind::NotFound } else { Kind::Value };
                Entry::new(
                    message.value.unwrap_or_default(),
                    message.expire.unwrap_or(0),
                    message.refresh.unwrap_or(0),
                    kind,
                )
            }
        }
    )*};
}

entry_from!(GetResponse, BatchEntry);

impl From<SetRequest> for Entry {
    fn from(message: SetRequest) -> Entry {
        Entry::value(
            message.value.unwrap_or_default(),
            message.expire.unwrap_or(0),
        )
    }
}

/// An entry's expiry as a message carries it: absent for none.
pub(crate) fn expire_field(expire: i64) -> Option<i64> {
    (expire != 0).then_some(expire)
}

/// The answer to a `GET` (or a peek, without a request rate). A negative answer is sent with a
/// 404 ([`NOT_FOUND`]), so a golang/groupcache asker takes it for an error, as it would its own
/// owner's; a failed load's cached message with a 500 ([`LOADER_ERROR`]), as text.
pub(crate) fn get_response(entry: Entry, minute_qps: Option<f64>) -> GetResponse {
    let not_found = entry.kind() == Kind::NotFound;
    let refresh = expire_field(entry.refresh());
    GetResponse {
        value: (!not_found).then_some(entry.value),
        minute_qps,
        expire: expire_field(entry.expire),
        refresh,
        not_found: not_found.then_some(true),
    }
}

/// Values from this size on are answered in parts (see [`encoded_get_response`]); below it one
/// copy costs less than the parts' bookkeeping.
pub(crate) const ANSWER_IN_PARTS_BYTES: usize = 4096;

/// [`get_response`] encoded, in the parts it is sent in: their concatenation is its encoding. A
/// large value is not copied into the message: its own buffer (the cache's) is sent between the
/// fields before and after it, so an answer waiting for a slow reader holds no second copy of a
/// value the cache holds anyway, and a remote get copies 64 KiB less per 64 KiB value.
pub(crate) fn encoded_get_response(entry: Entry, minute_qps: Option<f64>) -> Vec<Bytes> {
    if entry.value.len() < ANSWER_IN_PARTS_BYTES || entry.kind() != Kind::Value {
        return vec![Bytes::from(get_response(entry, minute_qps).encode_to_vec())];
    }
    // prost writes the fields in tag order: the value (1), then the rate (2) and the expiry (3).
    let mut head = Vec::with_capacity(1 + 10);
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut head);
    prost::encoding::encode_varint(entry.value.len() as u64, &mut head);
    let tail = GetResponse {
        value: None,
        minute_qps,
        expire: expire_field(entry.expire),
        refresh: expire_field(entry.refresh()),
        not_found: None,
    };
    vec![
        Bytes::from(head),
        entry.value,
        Bytes::from(tail.encode_to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The parts are the message, byte for byte (a Go peer decodes them as one), and a large
        /// value's part is the value's own buffer, not a copy.
        #[test]
        fn an_answer_in_parts_is_the_encoded_message_and_shares_the_value(
            len in prop_oneof![0..64usize, ANSWER_IN_PARTS_BYTES - 2..ANSWER_IN_PARTS_BYTES + 300],
            minute_qps in proptest::option::of(0.0..1e9f64),
            expire in prop_oneof![Just(0i64), any::<i64>()],
        ) {
            let value = Bytes::from(vec![7u8; len]);
            let entry = Entry::value(value.clone(), expire);
            let parts = encoded_get_response(entry.clone(), minute_qps);
            let whole: Vec<u8> = parts.iter().flat_map(|part| part.iter().copied()).collect();
            prop_assert_eq!(whole, get_response(entry, minute_qps).encode_to_vec());
            if len >= ANSWER_IN_PARTS_BYTES {
                prop_assert_eq!(parts.len(), 3);
                prop_assert_eq!(parts[1].as_ptr(), value.as_ptr(), "the value is not copied");
            } else {
                prop_assert_eq!(parts.len(), 1);
            }
        }
    }

    #[test]
    fn escaping_matches_go_path_escape_where_it_matters_and_round_trips() {
        assert_eq!(escape("a b").to_string(), "a%20b");
        assert_eq!(escape("a/b").to_string(), "a%2Fb");
        assert_eq!(escape("a+b").to_string(), "a%2Bb");
        assert_eq!(escape("100%").to_string(), "100%25");
        assert_eq!(escape("ключ").to_string(), "%D0%BA%D0%BB%D1%8E%D1%87");
        assert_eq!(escape("safe-_.~AZaz09").to_string(), "safe-_.~AZaz09");
        for key in ["", "a b/c,d", "+", "%", "..a", "ключ", "?#&=", "\u{0}\n"] {
            let escaped = escape(key).to_string();
            assert!(!escaped.contains(['/', ' ', '?', '#']), "{escaped}");
            assert_eq!(percent_decode_str(&escaped).decode_utf8().unwrap(), key);
        }
    }

    #[test]
    fn only_dot_segments_cannot_travel() {
        assert!(!can_carry("."));
        assert!(!can_carry(".."));
        for key in ["", "...", "../x", "a..", "%2e"] {
            assert!(can_carry(key), "{key}");
        }
    }

    #[test]
    fn key_paths_put_the_mount_before_the_base_and_escape_group_and_key() {
        let (prefix, group) = (
            groups_prefix("/internal", "/_groupcache/"),
            group_segment("a group"),
        );
        assert_eq!(
            format!("{prefix}{group}"),
            "/internal/_groupcache/a%20group/"
        );
        assert_eq!(
            key_path(&prefix, &group, "x/y"),
            "/internal/_groupcache/a%20group/x%2Fy"
        );
        assert_eq!(
            parse_path("/_groupcache/a%20group/x%2Fy", "/_groupcache/"),
            Some(("a group".to_owned(), "x/y".to_owned()))
        );
    }

    proptest! {
        /// Whatever a group and key contain, what the client escapes the router decodes back.
        #[test]
        fn escaped_paths_decode_to_the_same_group_and_key(group in "[^/]{1,20}", key in any::<String>()) {
            let path = key_path(&groups_prefix("", "/_groupcache/"), &group_segment(&group), &key);
            prop_assert_eq!(parse_path(&path, "/_groupcache/"), Some((group, key)));
        }

        /// No path, however malformed, makes the parser panic.
        #[test]
        fn any_path_parses_or_is_refused(path in any::<String>()) {
            let _ = parse_path(&path, "/_groupcache/");
        }
    }

    #[test]
    fn paths_split_at_the_first_slash_and_decode_without_plus_rule() {
        let base = "/_groupcache/";
        let parse = |path| parse_path(path, base);
        assert_eq!(parse("/_groupcache/g/k"), Some(("g".into(), "k".into())));
        assert_eq!(
            parse("/_groupcache/g/a%20b+c"),
            Some(("g".into(), "a b+c".into()))
        );
        assert_eq!(
            parse("/_groupcache/g/a/b%2Fc"),
            Some(("g".into(), "a/b/c".into()))
        );
        assert_eq!(parse("/_groupcache/g/"), Some(("g".into(), "".into())));
        assert_eq!(
            parse("/_groupcache/gr%6Fup/%D0%BA"),
            Some(("group".into(), "к".into()))
        );
        assert_eq!(parse("/_groupcache/g"), None, "no key separator");
        assert_eq!(parse("/other/g/k"), None);
        assert_eq!(parse("/_groupcache/g/%FF"), None, "not UTF-8");
    }
}
