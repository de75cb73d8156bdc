//! Read-only views of this replica's ring and counters, for the CLI and for people: who owns a
//! key, the peers, the stats (of either group).

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use groupcache_rs::{Groupcache, Loader};
use serde::Serialize;

use super::items::Key;
use super::problem::Problem;
use super::respond::json;
use crate::state::AppState;

#[derive(Serialize)]
struct Owner<'a> {
    key: &'a str,
    /// The owner's peer URL.
    owner: String,
    /// Whether that is this replica.
    is_self: bool,
    served_by: &'a str,
}

/// `GET /admin/owner/{key}`.
pub async fn owner(State(state): State<AppState>, Key(key): Key) -> Response {
    let owner = state.cache.owner(&key);
    json(&Owner {
        key: &key,
        is_self: owner == state.cache.self_url(),
        owner,
        served_by: &state.replica,
    })
}

#[derive(Serialize)]
struct Peers<'a> {
    /// This replica's peer URL.
    #[serde(rename = "self")]
    self_url: &'a str,
    /// Every member of the ring, this replica included.
    peers: Vec<String>,
    served_by: &'a str,
}

/// `GET /admin/peers`.
pub async fn peers(State(state): State<AppState>) -> Response {
    json(&Peers {
        self_url: state.cache.self_url(),
        peers: state.cache.peers(),
        served_by: &state.replica,
    })
}

/// `groupcache_rs::Stats`, field for field (it is not `Serialize`: the library has no serde
/// dependency for it).
#[derive(Serialize)]
struct Stats<'a> {
    group: &'a str,
    served_by: &'a str,
    gets: u64,
    main_hits: u64,
    hot_hits: u64,
    loads: u64,
    loads_deduped: u64,
    peer_loads: u64,
    peer_errors: u64,
    local_loads: u64,
    local_load_errors: u64,
    server_requests: u64,
    peer_auth_failures: u64,
    main_bytes: u64,
    main_items: u64,
    hot_bytes: u64,
    hot_items: u64,
    not_found_loads: u64,
    refreshes: u64,
    stale_served: u64,
    loads_waiting: u64,
    loads_short_circuited: u64,
    circuit_open: u64,
    purges: u64,
}

/// `GET /admin/stats`: the items' group, or with `?cache=categories` the category summaries'.
pub async fn stats(State(state): State<AppState>, uri: Uri) -> Response {
    let cache = uri
        .query()
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("cache="));
    match cache {
        None | Some("items") => stats_of(&state, &state.cache),
        Some("categories") => stats_of(&state, &state.categories),
        Some(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-cache",
            "cache is items (the default) or categories",
        )
        .into_response(),
    }
}

fn stats_of<L: Loader>(state: &AppState, cache: &Groupcache<L>) -> Response {
    let s = cache.stats();
    json(&Stats {
        group: cache.name(),
        served_by: &state.replica,
        gets: s.gets,
        main_hits: s.main_hits,
        hot_hits: s.hot_hits,
        loads: s.loads,
        loads_deduped: s.loads_deduped,
        peer_loads: s.peer_loads,
        peer_errors: s.peer_errors,
        local_loads: s.local_loads,
        local_load_errors: s.local_load_errors,
        server_requests: s.server_requests,
        peer_auth_failures: s.peer_auth_failures,
        main_bytes: s.main_bytes,
        main_items: s.main_items,
        hot_bytes: s.hot_bytes,
        hot_items: s.hot_items,
        not_found_loads: s.not_found_loads,
        refreshes: s.refreshes,
        stale_served: s.stale_served,
        loads_waiting: s.loads_waiting,
        loads_short_circuited: s.loads_short_circuited,
        circuit_open: s.circuit_open,
        purges: s.purges,
    })
}
