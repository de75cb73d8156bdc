//! A history checker in the manner of Jepsen's and Maelstrom's: clients read and write a cluster
//! while its membership changes and faults strike, every operation is recorded with its start,
//! end and result, and a pure function checks the whole history against the promise the README
//! makes ("Membership changes": read-your-writes after `Ok`, older values only within
//! `hot_max_age` where a replica could have missed a write).
//!
//! The parts, each usable on its own by other tests (soak, churn):
//!
//! - [`source`]: a source of truth that changes. Every key holds a version (`u64`, 0 at first)
//!   that each write increments, in memory or in a PostgreSQL table, served over HTTP
//!   (`GET /{key}` -> the version) to the replicas' loaders (`replica --source URL`, the Go peer's
//!   `-source URL`), which answer the value [`value`]`(key, version)`.
//! - [`clients`]: the clients that drive the cluster (`get`, `get_many`, and writes: increment the
//!   source, then `remove` or `set` on a replica) and the [`clients::Recorder`] that keeps every
//!   operation and every fault or membership event the test announces.
//! - [`checker`]: the rules, applied to a [`checker::History`]; its [`checker::Report`] counts
//!   what was checked, names the rule that allowed each older read, and shows the shortest
//!   sub-history of each class of violation.

pub mod checker;
pub mod clients;
pub mod source;

/// The value a loader returns for `key` at `version` of the source (what a `set` stores too):
/// `{key}#{version}`. The key is part of it, so a value served under the wrong key is caught.
pub fn value(key: &str, version: u64) -> String {
    format!("{key}#{version}")
}

/// The version encoded in `body` if it is exactly [`value`]`(key, version)`, else `None`.
pub fn version_of(key: &str, body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let (prefix, version) = text.rsplit_once('#')?;
    if prefix != key || version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    version.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_carries_its_key_and_version() {
        assert_eq!(version_of("k1", value("k1", 42).as_bytes()), Some(42));
        assert_eq!(version_of("k1", b"k1#0"), Some(0));
        assert_eq!(version_of("k1", value("k2", 42).as_bytes()), None);
        assert_eq!(version_of("k1", b"k1#"), None);
        assert_eq!(version_of("k1", b"k1#-1"), None);
        assert_eq!(version_of("k1", b"value:k1#1"), None);
    }
}
