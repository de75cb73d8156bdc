//! The settings a group's read path consults, apart from the builder that sets them (as tokio
//! keeps `config.rs` beside `builder.rs`). The cluster's own settings, shared by its groups, are
//! in `cluster/config.rs`.

/// Settings of one group.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_key_bytes: usize,
    pub(crate) hot_promotion_requests: u32,
    /// TinyLFU admission on both caches.
    pub(crate) admission: bool,
    pub(crate) coalesce_in_flight: usize,
    /// Fetches hedged to the key's successor when the owner stalls (`hedge.rs`).
    pub(crate) hedge: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_key_bytes: 4096,
            hot_promotion_requests: 2,
            admission: false,
            coalesce_in_flight: 0,
            hedge: false,
        }
    }
}
