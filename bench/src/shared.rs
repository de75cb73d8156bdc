//! What the driver and the servers it starts agree on. The driver's files (`cluster`,
//! `workloads` and the workloads beside it) and the servers' file (`replica`) both take these
//! from here, so neither side imports the other.

use std::time::Duration;

/// The group every benchmark replica serves, in both languages.
pub(crate) const GROUP: &str = "bench";

/// The loader's latency in the cold-storm workload, and the ceiling's wait on `/storm/{key}`.
pub(crate) const STORM_LOAD: Duration = Duration::from_millis(50);

/// groups-flood: the group whose requests are measured.
pub(crate) const CALM: &str = "calm";
/// groups-flood: the group whose requests flood the replica.
pub(crate) const FLOOD: &str = "flood";
/// groups-flood: the keys the loader takes `--load-ms` over; every other key loads at once.
pub(crate) const FLOOD_KEYS: &str = "flood-";

/// memory: the keys of the phase change's tiny entries, which the Rust replica's loader answers
/// with [`TINY_BYTES`] bytes whatever its `--value-bytes` (a crawler asking for keys that do not
/// exist, answered with a short negative answer).
pub(crate) const TINY_KEYS: &str = "tiny-";
/// memory: the size of a tiny entry's value.
pub(crate) const TINY_BYTES: usize = 8;

/// missing-storm: keys the Rust replicas' source does not have (their loader says so, and the
/// group keeps the negative answer). The Go peer fails its getter for keys that start with
/// `error:`, so the Go side asks `error:{MISSING_KEYS}…`.
pub(crate) const MISSING_KEYS: &str = "missing-";
/// refresh-ahead and source-down: keys whose values expire after the replica's `--ttl-ms` and
/// are refreshed ahead after its `--refresh-ms` (every other key never expires).
pub(crate) const EXPIRING_KEYS: &str = "exp-";
