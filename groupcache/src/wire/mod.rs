//! The wire: everything that crosses the network between replicas.
//!
//! - [`protocol`]: golang/groupcache's HTTP protocol, owned in one place: key escaping, request
//!   paths and their parsing, content type and error headers;
//! - [`batch`]: the format of many keys in one request (an extension Go peers do not speak);
//! - [`client`]: asking a peer for a value, setting or removing one;
//! - [`pool`]: keep-alive HTTP/1.1 connections to peers, over TCP or rustls;
//! - [`router`]: the axum router that serves peers' requests, for every group of the cluster;
//! - [`limits`]: the peer port's limits on work in progress, shared fairly by the groups;
//! - `answers`: the budget of bytes batch answers hold in flight, and the body that holds it;
//! - [`server`]: the peer port's accept loop, with the limits a port open to the network needs;
//! - [`auth`]: HMAC signatures on peer requests;
//! - `nonces`: the bounded store of accepted nonces that refuses replays;
//! - `throttle`: at most one log line per reason a second, for the router's refusals;
//! - `tls` (feature `tls`): rustls configuration for both sides.

pub(crate) mod answers;
pub(crate) mod auth;
pub(crate) mod batch;
pub(crate) mod client;
pub(crate) mod limits;
pub(crate) mod nonces;
pub(crate) mod pool;
pub(crate) mod protocol;
pub(crate) mod router;
pub(crate) mod server;
pub(crate) mod throttle;
#[cfg(feature = "tls")]
pub(crate) mod tls;

pub use auth::{DEFAULT_MAX_REMEMBERED_NONCES, MIN_SECRET_BYTES, PeerAuth, SIGNATURE_HEADER};
pub use server::Server;
#[cfg(feature = "tls")]
pub use tls::PeerTls;
