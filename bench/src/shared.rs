//! What the driver and the servers it starts agree on. The driver's files (`cluster`,
//! `workloads` and the workloads beside it) and the servers' file (`replica`) both take these
//! from here, so neither side imports the other.

use std::time::Duration;

/// The group every benchmark replica serves, in both languages.
pub(crate) const GROUP: &str = "bench";

/// The loader's latency in the cold-storm workload, and the ceiling's wait on `/storm/{key}`.
pub(crate) const STORM_LOAD: Duration = Duration::from_millis(50);
