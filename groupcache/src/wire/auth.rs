//! Optional peer authentication: every peer request carries an HMAC-SHA256 signature over its
//! method, its destination (the authority, `host:port`, and the full path), a timestamp, a nonce,
//! the SHA-256 of its body and, for a peek, that it is one ([`PEEK_HEADER`]), made with a secret
//! the replicas share.
//!
//! **The peek flag and rolling upgrades.** A peek's signature covers one more line, `peek`; any
//! other request's signature is the same as before the flag was signed (still `v2`), so gets,
//! sets, removes, batches and heartbeats keep verifying between replicas of either version
//! during a rolling upgrade. Only peeks between an old and a new replica are refused then (401,
//! `reason="bad_signature"`): the new owner loads those keys itself, as when the previous owner
//! holds nothing. Without the flag signed, whoever could alter a request in flight could make a
//! peek (never loads) a get (loads) or the reverse.
//!
//! The receiver checks the signature in constant time against every accepted secret (so secrets
//! can be rotated without downtime), against its own authority (from its URL, not the request's
//! `Host`), so a request signed for one replica is refused by every other; it refuses timestamps
//! outside the replay window and remembers the nonces it saw within that window, so a captured
//! request cannot be replayed, at the replica it was meant for or any other.
//! golang/groupcache peers cannot sign: mixed clusters run with authentication off.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};

use super::nonces::{NonceStore, Unaccepted};
#[cfg(doc)]
use super::protocol::PEEK_HEADER;
use super::throttle::Throttle;
use crate::Error;

/// The request header that carries the signature.
pub const SIGNATURE_HEADER: &str = "groupcache-signature";

/// Shortest secret accepted: 16 bytes (128 bits).
pub const MIN_SECRET_BYTES: usize = 16;

/// Nonces remembered at most by default: at most 40 MiB (see
/// [`PeerAuth::max_remembered_nonces`]).
pub const DEFAULT_MAX_REMEMBERED_NONCES: usize = 1 << 20;

/// Shared secrets for signing and checking peer requests.
///
/// ```
/// use groupcache_rs::PeerAuth;
/// # fn main() -> Result<(), groupcache_rs::Error> {
/// // Rotation: every replica first accepts the new secret, then signs with it, then drops the old.
/// let auth = PeerAuth::new(b"new secret of at least 16 bytes".to_vec())?
///     .accept(b"old secret, still accepted".to_vec())?;
/// # Ok(()) }
/// ```
pub struct PeerAuth {
    /// Signs outgoing requests; also accepted.
    signing: Vec<u8>,
    /// Also accepted on incoming requests.
    accepted: Vec<Vec<u8>>,
    window: Duration,
    nonces: Nonces,
    seen: NonceStore,
    /// Refusals logged: at most one line per reason a second.
    logged: Throttle<{ Refusal::ALL.len() }>,
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("PeerAuth")
            .field("accepted_secrets", &(self.accepted.len() + 1))
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// Why an incoming request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("missing signature")]
    Missing,
    #[error("malformed signature header")]
    Malformed,
    #[error("timestamp outside the replay window")]
    Stale,
    #[error("bad signature")]
    BadSignature,
    #[error("replayed request")]
    Replayed,
    #[error("body does not match its signed digest")]
    BodyMismatch,
    #[error("timestamp older than the replay window, shrunk while the nonce store is full")]
    WindowShrunk,
}

impl Refusal {
    /// The `reason` label of `groupcache_peer_auth_failures_total`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Stale => "stale",
            Refusal::BadSignature => "bad_signature",
            Refusal::Replayed => "replayed",
            Refusal::BodyMismatch => "body_mismatch",
            Refusal::WindowShrunk => "window_shrunk",
        }
    }

    /// Its place in [`ALL`](Self::ALL).
    fn index(self) -> usize {
        self as usize
    }

    /// Every refusal, for registering the metric's series.
    pub(crate) const ALL: [Refusal; 7] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::Stale,
        Refusal::BadSignature,
        Refusal::Replayed,
        Refusal::BodyMismatch,
        Refusal::WindowShrunk,
    ];
}

/// The SHA-256 of a request's body, as its signature declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyDigest([u8; 32]);

impl BodyDigest {
    pub(crate) fn of(body: &[u8]) -> Self {
        BodyDigest(Sha256::digest(body).into())
    }

    /// Whether `body` is the body that was signed.
    pub(crate) fn matches(&self, body: &[u8]) -> Result<(), Refusal> {
        if BodyDigest::of(body) == *self {
            Ok(())
        } else {
            Err(Refusal::BodyMismatch)
        }
    }
}

impl PeerAuth {
    /// Signs with `secret` and accepts it. The replay window defaults to 30 s either side of the
    /// receiver's clock.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, Error> {
        Ok(PeerAuth {
            signing: checked(secret.into())?,
            accepted: Vec::new(),
            window: Duration::from_secs(30),
            nonces: Nonces::default(),
            seen: NonceStore::new(30, DEFAULT_MAX_REMEMBERED_NONCES),
            logged: Throttle::new(),
        })
    }

    /// Also accepts requests signed with `secret` (an old or a coming one, during rotation).
    pub fn accept(mut self, secret: impl Into<Vec<u8>>) -> Result<Self, Error> {
        self.accepted.push(checked(secret.into())?);
        Ok(self)
    }

    /// How far a request's timestamp may be from the receiver's clock (default 30 s).
    pub fn replay_window(mut self, window: Duration) -> Self {
        self.window = window;
        self.seen = NonceStore::new(window.as_secs(), self.seen.bound());
        self
    }

    /// How many accepted nonces are remembered at most (default
    /// [`DEFAULT_MAX_REMEMBERED_NONCES`], 2^20), each costing at most 40 bytes: the default
    /// bound is at most 40 MiB. The count is published as the gauge `groupcache_auth_nonces`.
    ///
    /// The store needs `rate * (replay window + 1 s)` nonces to remember a whole window of signed
    /// requests at `rate` per second (2^20: 33k/s with the default 30 s). Above that it does not
    /// refuse fresh requests: it forgets its oldest second and refuses timestamps up to it
    /// (counted with `reason="window_shrunk"`), so the accepted window shrinks to about
    /// `bound / rate` seconds. Honest peers are refused only when that falls below their clock
    /// skew plus the request's latency plus 2 s (timestamps are whole seconds): for 2^20 and
    /// 1 s of skew, above 350k signed requests per second to one replica.
    ///
    /// ```
    /// use groupcache_rs::PeerAuth;
    /// # fn main() -> Result<(), groupcache_rs::Error> {
    /// // A smaller replica: 4 MiB at most, a full window up to 8k signed requests per second.
    /// let auth = PeerAuth::new(b"a secret of at least 16 bytes".to_vec())?
    ///     .max_remembered_nonces(1 << 18);
    /// # Ok(()) }
    /// ```
    pub fn max_remembered_nonces(mut self, bound: usize) -> Self {
        self.seen = NonceStore::new(self.window.as_secs(), bound);
        self
    }

    /// Accepted nonces remembered now.
    pub(crate) fn remembered_nonces(&self) -> usize {
        self.seen.len()
    }

    /// Whether to log this refusal now: at most one line per reason a second, so a flood of
    /// refused requests cannot flood the logs (the metric still counts every one). `Some` with
    /// how many of this reason went unlogged since the last line.
    pub(crate) fn log_refusal(&self, refusal: Refusal) -> Option<u64> {
        self.logged.admit(refusal.index())
    }

    /// The header value for a request to `authority` (the peer's `host:port`, as in its URL and
    /// the `Host` header) at `path` (the full path, as sent), a peek or not ([`PEEK_HEADER`]),
    /// with a body of `digest`. Each call takes a fresh nonce: a request sent again must be
    /// signed again, or the peer refuses it as a replay of the first.
    pub(crate) fn sign(
        &self,
        method: &str,
        authority: &[u8],
        path: &str,
        peek: bool,
        digest: &BodyDigest,
    ) -> HeaderValue {
        let now = unix_seconds(SystemTime::now());
        let signature = self.sign_at(method, authority, path, peek, digest, now);
        // Visible ASCII only (`v2`, digits, hex), which a header value always takes; were it
        // ever refused, an empty signature goes instead, which the peer refuses (malformed).
        HeaderValue::try_from(signature).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// [`sign`](Self::sign) at `timestamp` (unix seconds).
    fn sign_at(
        &self,
        method: &str,
        authority: &[u8],
        path: &str,
        peek: bool,
        digest: &BodyDigest,
        timestamp: i64,
    ) -> String {
        let nonce = self.nonces.fresh();
        let signed = Signed {
            method,
            authority,
            path,
            peek,
            timestamp,
            nonce: &nonce,
            digest,
        };
        let mac = signed.mac(&self.signing).finalize().into_bytes();
        format!(
            "v2 t={timestamp} n={nonce} d={} s={}",
            hex(&digest.0),
            hex(&mac)
        )
    }

    /// Checks a request's header value against this replica's own `authority` and the request's
    /// method, full path and whether it carries [`PEEK_HEADER`] (`peek`), before any body is
    /// read. On success, the body's declared digest, which the body read later must
    /// [match](BodyDigest::matches).
    pub(crate) fn verify(
        &self,
        header: Option<&str>,
        method: &str,
        authority: &[u8],
        path: &str,
        peek: bool,
    ) -> Result<BodyDigest, Refusal> {
        let now = unix_seconds(SystemTime::now());
        self.verify_at(header, method, authority, path, peek, now)
    }

    /// [`verify`](Self::verify) at `now` (unix seconds).
    fn verify_at(
        &self,
        header: Option<&str>,
        method: &str,
        authority: &[u8],
        path: &str,
        peek: bool,
        now: i64,
    ) -> Result<BodyDigest, Refusal> {
        let header = header.ok_or(Refusal::Missing)?;
        let signature = Signature::parse(header).ok_or(Refusal::Malformed)?;
        let window = i64::try_from(self.window.as_secs()).unwrap_or(i64::MAX);
        if signature.timestamp.abs_diff(now) > window.unsigned_abs() {
            return Err(Refusal::Stale);
        }
        let accepted = std::iter::once(&self.signing).chain(&self.accepted);
        let mut valid = false;
        let signed = Signed {
            method,
            authority,
            path,
            peek,
            timestamp: signature.timestamp,
            nonce: signature.nonce,
            digest: &signature.digest,
        };
        for secret in accepted {
            // verify_slice compares in constant time; every secret is tried, so timing does not
            // tell which one matched.
            valid |= signed.mac(secret).verify_slice(&signature.mac).is_ok();
        }
        if !valid {
            return Err(Refusal::BadSignature);
        }
        self.seen
            .first_use(signature.nonce, signature.timestamp, now)
            .map_err(|unaccepted| match unaccepted {
                Unaccepted::Replayed => Refusal::Replayed,
                Unaccepted::Expired => Refusal::Stale,
                Unaccepted::WindowShrunk => Refusal::WindowShrunk,
            })?;
        Ok(signature.digest)
    }
}

fn checked(secret: Vec<u8>) -> Result<Vec<u8>, Error> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Error::Config(format!(
            "a peer secret must be at least {MIN_SECRET_BYTES} bytes, got {}",
            secret.len()
        )));
    }
    Ok(secret)
}

/// What a signature covers.
struct Signed<'a> {
    method: &'a str,
    authority: &'a [u8],
    path: &'a str,
    /// Whether the request carries [`PEEK_HEADER`].
    peek: bool,
    timestamp: i64,
    nonce: &'a str,
    digest: &'a BodyDigest,
}

impl Signed<'_> {
    /// The MAC: `v2`, method, authority, path, timestamp, nonce and the body's SHA-256, one per
    /// line, so no field can be shifted into another (none may contain a line break: hyper
    /// refuses them in methods, authorities and paths; the others are numbers and hex); then,
    /// for a peek only, a line `peek`. Only a peek's MAC differs from the one replicas made
    /// before the flag was signed, so the other requests verify across a rolling upgrade.
    fn mac(&self, secret: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in [
            &b"v2"[..],
            self.method.as_bytes(),
            self.authority,
            self.path.as_bytes(),
            self.timestamp.to_string().as_bytes(),
            self.nonce.as_bytes(),
            hex(&self.digest.0).as_bytes(),
        ] {
            mac.update(part);
            mac.update(b"\n");
        }
        if self.peek {
            mac.update(b"peek\n");
        }
        mac
    }
}

/// A parsed `v2 t=<unix seconds> n=<hex nonce> d=<hex body SHA-256> s=<hex mac>` header.
struct Signature<'a> {
    timestamp: i64,
    nonce: &'a str,
    digest: BodyDigest,
    mac: Vec<u8>,
}

impl<'a> Signature<'a> {
    fn parse(header: &'a str) -> Option<Self> {
        let mut parts = header.split(' ');
        if parts.next()? != "v2" {
            return None;
        }
        let timestamp = parts.next()?.strip_prefix("t=")?.parse().ok()?;
        let nonce = parts.next()?.strip_prefix("n=")?;
        let digest = unhex(parts.next()?.strip_prefix("d=")?)?;
        let mac = unhex(parts.next()?.strip_prefix("s=")?)?;
        let well_formed = parts.next().is_none()
            && (16..=64).contains(&nonce.len())
            && nonce.bytes().all(|b| b.is_ascii_hexdigit())
            && mac.len() == 32;
        well_formed.then_some(Signature {
            timestamp,
            nonce,
            digest: BodyDigest(digest.try_into().ok()?),
            mac,
        })
    }
}

/// Fresh nonces for signing.
struct Nonces {
    /// Random per process, so two replicas never produce the same nonce.
    prefix: u64,
    counter: AtomicU64,
}

impl Default for Nonces {
    fn default() -> Self {
        Nonces {
            prefix: RandomState::new().hash_one(std::process::id()),
            counter: AtomicU64::new(0),
        }
    }
}

impl Nonces {
    fn fresh(&self) -> String {
        format!(
            "{:016x}{:016x}",
            self.prefix,
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }
}

fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &[u8] = b"10.0.0.1:8080";

    proptest! {
        /// Any header value is parsed or refused, never a panic, and never verifies.
        #[test]
        fn arbitrary_signature_headers_are_refused(header in any::<String>()) {
            let auth = PeerAuth::new(b"0123456789abcdef".to_vec()).unwrap();
            prop_assert!(auth.verify(Some(&header), "GET", A, "/p", false).is_err());
        }
    }

    fn now() -> i64 {
        unix_seconds(SystemTime::now())
    }

    fn auth(secret: &[u8]) -> PeerAuth {
        PeerAuth::new(secret.to_vec()).unwrap()
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let auth = auth(b"0123456789abcdef");
        let header = auth.sign_at(
            "GET",
            A,
            "/_groupcache/g/k",
            false,
            &BodyDigest::of(b""),
            now(),
        );
        let digest = auth.verify(Some(&header), "GET", A, "/_groupcache/g/k", false);
        assert_eq!(digest, Ok(BodyDigest::of(b"")));
        assert_eq!(
            auth.verify(Some(&header), "GET", A, "/_groupcache/g/k", false),
            Err(Refusal::Replayed)
        );
    }

    /// Issue 26's target: a captured request replayed at every instant of its window, while a
    /// request whose clock read a second later was checked between the replay's reading of the
    /// clock and its nonce check (so its sweep ran first): refused every time, as a replay or as
    /// stale, never accepted.
    #[test]
    fn a_replayed_request_is_refused_at_every_instant_of_the_window() {
        let auth = auth(b"0123456789abcdef");
        let signed_at = unix_seconds(SystemTime::now());
        let captured = auth.sign_at(
            "GET",
            A,
            "/_groupcache/g/k",
            false,
            &BodyDigest::of(b""),
            signed_at,
        );
        assert!(
            auth.verify_at(
                Some(&captured),
                "GET",
                A,
                "/_groupcache/g/k",
                false,
                signed_at
            )
            .is_ok()
        );
        for at in signed_at - 30..=signed_at + 31 {
            let other = auth.sign_at(
                "GET",
                A,
                "/_groupcache/g/other",
                false,
                &BodyDigest::of(b""),
                at + 1,
            );
            let verified = auth.verify_at(
                Some(&other),
                "GET",
                A,
                "/_groupcache/g/other",
                false,
                at + 1,
            );
            assert!(verified.is_ok(), "{verified:?}");
            let replayed = auth.verify_at(Some(&captured), "GET", A, "/_groupcache/g/k", false, at);
            assert!(
                matches!(replayed, Err(Refusal::Replayed | Refusal::Stale)),
                "{} s after signing: {replayed:?}",
                at - signed_at
            );
        }
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let auth = auth(b"0123456789abcdef");
        let header = auth.sign_at(
            "PUT",
            A,
            "/_groupcache/g/k",
            false,
            &BodyDigest::of(b"body"),
            now(),
        );
        for (method, authority, path) in [
            ("GET", A, "/_groupcache/g/k"),
            ("PUT", A, "/_groupcache/g/other"),
            ("PUT", A, "/prefix/_groupcache/g/k"),
            // The same request, sent to another replica (or another port of the same host).
            ("PUT", &b"10.0.0.2:8080"[..], "/_groupcache/g/k"),
            ("PUT", b"10.0.0.1:8081", "/_groupcache/g/k"),
        ] {
            assert_eq!(
                auth.verify(Some(&header), method, authority, path, false),
                Err(Refusal::BadSignature),
                "{method} {authority:?} {path}"
            );
        }
        for (from, to) in [("t=", "t=1"), ("d=", "d=00"), ("n=", "n=00")] {
            let tampered = header.replacen(from, to, 1);
            assert_ne!(
                auth.verify(Some(&tampered), "PUT", A, "/_groupcache/g/k", false),
                Ok(BodyDigest::of(b"body")),
                "{tampered}"
            );
        }
        let digest = auth.verify(Some(&header), "PUT", A, "/_groupcache/g/k", false);
        let digest = digest.expect("the untampered request verifies");
        assert_eq!(digest.matches(b"body"), Ok(()));
        assert_eq!(digest.matches(b"bodY"), Err(Refusal::BodyMismatch));
        assert_eq!(digest.matches(b""), Err(Refusal::BodyMismatch));
    }

    #[test]
    fn a_full_nonce_store_keeps_accepting_fresh_requests_and_refusing_replays() {
        // 30 nonces per shard, about 6 per shard and second: the oldest seconds are dropped.
        let auth = auth(b"0123456789abcdef")
            .replay_window(Duration::from_secs(120))
            .max_remembered_nonces(480);
        let now = unix_seconds(SystemTime::now());
        let mut headers = Vec::new();
        for i in 0..1000 {
            let at = now + i / 100;
            let header = auth.sign_at("GET", A, "/p", false, &BodyDigest::of(b""), at);
            let verified = auth.verify_at(Some(&header), "GET", A, "/p", false, at);
            assert!(verified.is_ok(), "{i}: {verified:?}");
            assert!(auth.remembered_nonces() <= 480);
            headers.push(header);
        }
        assert!(auth.remembered_nonces() > 240);
        let at = now + 9;
        for header in &headers {
            assert!(
                matches!(
                    auth.verify_at(Some(header), "GET", A, "/p", false, at),
                    Err(Refusal::Replayed | Refusal::WindowShrunk)
                ),
                "a replay is refused whether or not its nonce is still remembered"
            );
        }
    }

    /// Whether a request is a peek is signed: the header added to or taken from a signed request
    /// in flight breaks its signature.
    #[test]
    fn the_peek_flag_is_signed() {
        let auth = auth(b"0123456789abcdef");
        let path = "/_groupcache/g/k";
        let digest = BodyDigest::of(b"");
        let peek = auth.sign_at("GET", A, path, true, &digest, now());
        let get = auth.sign_at("GET", A, path, false, &digest, now());
        assert_eq!(
            auth.verify(Some(&peek), "GET", A, path, false),
            Err(Refusal::BadSignature),
            "a peek made a get"
        );
        assert_eq!(
            auth.verify(Some(&get), "GET", A, path, true),
            Err(Refusal::BadSignature),
            "a get made a peek"
        );
        assert_eq!(auth.verify(Some(&peek), "GET", A, path, true), Ok(digest));
        assert_eq!(auth.verify(Some(&get), "GET", A, path, false), Ok(digest));
    }

    /// Rolling upgrades: a request that is not a peek is signed exactly as before the peek flag
    /// was (the MAC of the seven lines alone), so replicas of either version verify each other's
    /// gets, sets, removes, batches and heartbeats.
    #[test]
    fn requests_other_than_peeks_are_signed_as_before_the_peek_flag() {
        let secret = b"0123456789abcdef";
        let auth = auth(secret);
        let digest = BodyDigest::of(b"body");
        let header = auth.sign_at("PUT", A, "/_groupcache/g/k", false, &digest, 1_800_000_000);
        let signature = Signature::parse(&header).expect("well formed");
        let mut before = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
        let lines = format!(
            "v2\nPUT\n10.0.0.1:8080\n/_groupcache/g/k\n1800000000\n{}\n{}\n",
            signature.nonce,
            hex(&digest.0)
        );
        before.update(lines.as_bytes());
        assert_eq!(before.finalize().into_bytes().as_slice(), signature.mac);
    }

    #[test]
    fn refusals_are_indexed_in_the_order_of_all() {
        for (i, refusal) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(refusal.index(), i, "{refusal:?}");
        }
    }

    /// A request that a reused connection failed to carry goes again on a new one
    /// (`Connections::send`); the peer may have received and checked the first (its nonce
    /// remembered) before the connection died unanswered. The second is signed afresh: accepted,
    /// not refused as a replay (which counted `reason="replayed"`, the alarm).
    #[tokio::test]
    async fn a_request_sent_again_is_signed_afresh_not_refused_as_a_replay() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        use crate::cluster::membership::Endpoint;
        use crate::wire::client::PeerClient;
        use crate::wire::pool::Connections;

        let secret = b"0123456789abcdef";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let endpoint = Arc::new(Endpoint::parse(&url).unwrap());
        // The receiving replica's check, with its own nonce store.
        let receiver = Arc::new(auth(secret));
        let verdicts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (checker, seen, counter) = (receiver.clone(), verdicts.clone(), accepted.clone());
        let authority = endpoint.authority.as_bytes().to_vec();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let first_connection = counter.fetch_add(1, Ordering::SeqCst) == 0;
                let (checker, seen, authority) = (checker.clone(), seen.clone(), authority.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut answered = 0;
                    let mut buffer = [0; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                        head.extend_from_slice(&buffer[..n]);
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            let request = String::from_utf8_lossy(&head[..end]).into_owned();
                            head.drain(..end + 4);
                            let path = request.split(' ').nth(1).unwrap_or_default().to_owned();
                            let signature = request.lines().find_map(|line| {
                                line.strip_prefix(&format!("{SIGNATURE_HEADER}: "))
                            });
                            let verdict =
                                checker.verify(signature, "GET", &authority, &path, false);
                            seen.lock().unwrap().push((path, verdict));
                            if first_connection && answered == 1 {
                                return; // the second request on it: checked, then closed unanswered
                            }
                            let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                            stream.write_all(answer).await.unwrap();
                            answered += 1;
                        }
                    }
                });
            }
        });
        let connections = Connections::new(
            Duration::from_secs(1),
            #[cfg(feature = "tls")]
            None,
        );
        let client = PeerClient::new(
            connections,
            Duration::from_secs(5),
            1 << 20,
            Some(Arc::new(auth(secret))),
            None,
        );
        for path in ["/_groupcache/g/a", "/_groupcache/g/b", "/_groupcache/g/c"] {
            let heard = client
                .heartbeat(&endpoint, path.to_owned(), Duration::from_secs(5))
                .await;
            assert!(heard.is_err(), "a 404 is no heartbeat's answer");
        }
        let verdicts = verdicts.lock().unwrap();
        let paths: Vec<&str> = verdicts.iter().map(|(path, ..)| path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/_groupcache/g/a",
                "/_groupcache/g/b",
                "/_groupcache/g/b",
                "/_groupcache/g/c"
            ],
            "/b sent twice: on the kept connection, then on a new one"
        );
        for (path, verdict) in verdicts.iter() {
            assert!(verdict.is_ok(), "{path}: {verdict:?}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn other_secrets_fail_and_accepted_ones_rotate() {
        let old = auth(b"old secret 0123456");
        let new = auth(b"new secret 0123456");
        let header = old.sign_at("GET", A, "/p", false, &BodyDigest::of(b""), now());
        assert_eq!(
            new.verify(Some(&header), "GET", A, "/p", false),
            Err(Refusal::BadSignature)
        );
        let rotating = PeerAuth::new(b"new secret 0123456".to_vec())
            .unwrap()
            .accept(b"old secret 0123456".to_vec())
            .unwrap();
        assert!(
            rotating
                .verify(Some(&header), "GET", A, "/p", false)
                .is_ok()
        );
        let header = new.sign_at("GET", A, "/p", false, &BodyDigest::of(b""), now());
        assert!(
            rotating
                .verify(Some(&header), "GET", A, "/p", false)
                .is_ok()
        );
    }

    #[test]
    fn missing_malformed_and_stale_headers_are_refused() {
        let auth = auth(b"0123456789abcdef");
        assert_eq!(
            auth.verify(None, "GET", A, "/p", false),
            Err(Refusal::Missing)
        );
        let d = hex(&BodyDigest::of(b"").0);
        let s = hex(&[0; 32]);
        for bad in [
            String::new(),
            "v1".into(),
            format!("v1 t=1 n=0123456789abcdef d={d} s={s}"),
            format!("v2 t=1 n=0123456789abcdef s={s}"),
            "v2 t=x n=0 d=0 s=0".into(),
            format!("v2 t=1 n=zz d={d} s={s}"),
            format!("v2 t=1 n=0123456789abcdef d=00 s={s}"),
            format!("v2 t=1 n=0123456789abcdef d={d} s=abc"),
            format!("v2 t=1 n=0123456789abcdef d={d} s={s} extra"),
        ] {
            assert_eq!(
                auth.verify(Some(&bad), "GET", A, "/p", false),
                Err(Refusal::Malformed),
                "{bad:?}"
            );
        }
        let past = unix_seconds(SystemTime::now()) - 120;
        let nonce = "0123456789abcdef";
        let digest = BodyDigest::of(b"");
        let signed = Signed {
            method: "GET",
            authority: A,
            path: "/p",
            peek: false,
            timestamp: past,
            nonce,
            digest: &digest,
        };
        let mac = signed.mac(b"0123456789abcdef").finalize().into_bytes();
        let stale = format!("v2 t={past} n={nonce} d={d} s={}", hex(&mac));
        assert_eq!(
            auth.verify(Some(&stale), "GET", A, "/p", false),
            Err(Refusal::Stale)
        );
    }

    #[test]
    fn short_secrets_are_a_configuration_error() {
        assert!(matches!(
            PeerAuth::new(b"short".to_vec()),
            Err(Error::Config(_))
        ));
        assert!(format!("{:?}", auth(b"0123456789abcdef")).contains("accepted_secrets: 1"));
        assert!(!format!("{:?}", auth(b"0123456789abcdef")).contains("0123"));
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])).unwrap(), [0, 1, 254, 255]);
        assert!(unhex("abc").is_none() && unhex("zz").is_none() && unhex("é1").is_none());
    }
}
