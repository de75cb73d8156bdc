//! Who is in the cluster: the peer list and the ring built over it, swapped as one snapshot, so a
//! `get` racing with a membership change sees either the old ring with the old peers or the new
//! ring with the new peers, never a ring entry without its peer.
//!
//! A peer URL is checked and parsed once, here, when it joins: into the exact string the ring
//! hashes and the [`Endpoint`] the connection pool dials.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::Uri;
use hyper::header::HeaderValue;
use hyper::http::uri::{Authority, Scheme};

use super::ring::{Ring, RingMode};
use crate::Error;
use crate::handoff::{Peek, PeekGate};
use crate::lock;
use crate::wire::protocol;

/// One replica of the cluster, this one included.
#[derive(Debug)]
pub(crate) struct Member {
    /// The exact URL string the ring hashes (`http://10.0.0.2:8080`, no trailing slash).
    pub(crate) url: Arc<str>,
    /// Where requests to it go.
    pub(crate) endpoint: Arc<Endpoint>,
    /// The request path up to the group: `{url's path}{base_path}`.
    pub(crate) path: String,
    /// Whether this member is the local replica.
    pub(crate) is_self: bool,
    /// Until when this replica treats it as down (after a connect failure or a timeout).
    suspected_until: Mutex<Option<Instant>>,
    /// Whether `suspected_until` may be set: read without the lock by every request to the
    /// member, so a member never suspected costs no lock and no clock read per request. Written
    /// under the lock only.
    maybe_suspected: AtomicBool,
    /// Woken when the member becomes suspected: requests waiting on it leave at once
    /// ([`until_suspected`](Member::until_suspected)).
    suspicion: tokio::sync::Notify,
    /// Whether a heartbeat to it is in flight (`liveness.rs`): one at a time.
    pub(crate) heartbeat_in_flight: AtomicBool,
}

impl Member {
    fn new(url: Arc<str>, endpoint: Endpoint, path: String, is_self: bool) -> Member {
        Member {
            url,
            endpoint: Arc::new(endpoint),
            path,
            is_self,
            suspected_until: Mutex::new(None),
            maybe_suspected: AtomicBool::new(false),
            suspicion: tokio::sync::Notify::new(),
            heartbeat_in_flight: AtomicBool::new(false),
        }
    }

    /// Completes once this member is suspected (at once if it is now): raced against a request
    /// to it, so that a request waiting on a member that stopped answering leaves for the key's
    /// successor when the failure detector notices, not when the request times out.
    pub(crate) async fn until_suspected(&self) {
        loop {
            let notified = self.suspicion.notified();
            tokio::pin!(notified);
            // Registered before the check: a suspicion between the two still wakes it.
            notified.as_mut().enable();
            if self.is_suspected() {
                return;
            }
            notified.await;
        }
    }

    /// Whether requests to this member should go to a key's successor instead.
    pub(crate) fn is_suspected(&self) -> bool {
        if !self.maybe_suspected.load(Ordering::Acquire) {
            return false;
        }
        let until = *lock(&self.suspected_until);
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Treats it as down for `duration`; false if it already was.
    pub(crate) fn suspect(&self, duration: Duration) -> bool {
        let mut until = lock(&self.suspected_until);
        let now = Instant::now();
        let already = until.is_some_and(|until| now < until);
        *until = Some(now + duration);
        self.maybe_suspected.store(true, Ordering::Release);
        drop(until);
        if !already {
            self.suspicion.notify_waiters();
        }
        !already
    }

    /// Trusts it again: it answered.
    pub(crate) fn trust(&self) {
        if !self.maybe_suspected.load(Ordering::Acquire) {
            return;
        }
        let mut until = lock(&self.suspected_until);
        *until = None;
        self.maybe_suspected.store(false, Ordering::Release);
    }
}

/// A consistent view of the cluster.
#[derive(Debug)]
pub(crate) struct Membership {
    ring: Ring,
    /// In the order they were added; the ring returns indexes into this list.
    members: Vec<Arc<Member>>,
    /// When this ring replaced the previous one.
    built: Instant,
    /// The rings this one replaced within the last `recent_for` (when it was built), newest
    /// first; those that have aged past it since are skipped where they are read.
    former: Vec<Former>,
    /// The members of recent rings that fell past [`MAX_FORMER_RINGS`], each with the newest
    /// time a ring of theirs retired: a write goes to every one of them that has left.
    overflow: Vec<(Arc<Member>, Instant)>,
    /// How long a replaced ring's owners still count: they receive writes and hand off keys.
    recent_for: Duration,
    /// Whether peeking each member that could hand off a key is worth it, learnt under this
    /// ring (`handoff.rs`): one per member of this ring or a recent one, this replica aside.
    peek_gates: Vec<(Arc<str>, Arc<PeekGate>)>,
}

/// A ring that was replaced, and when: writes still reach its owners for a while, since a member
/// that left (or whose discovery lags) may still hold and serve values.
#[derive(Debug)]
struct Former {
    ring: Ring,
    members: Vec<Arc<Member>>,
    retired: Instant,
}

/// Former rings kept whole at most, however fast the membership changes: a rolling deploy of a
/// large cluster changes it twice per replica. Beyond this, the oldest rings are dropped but
/// their members are kept (`Membership::overflow`) until the rings would have aged out: writes
/// must reach a replica that left for `recent_for`, however many changes came after it left.
const MAX_FORMER_RINGS: usize = 16;

impl Membership {
    /// The key's owner; `None` only if the ring is empty, which `Peers` never lets happen.
    pub(crate) fn owner(&self, key: &str) -> Option<&Arc<Member>> {
        self.ring
            .owner(key.as_bytes())
            .and_then(|index| self.members.get(index))
    }

    /// The key's successor: where its requests go while its owner is suspected, the same
    /// member on every replica with this ring (and the key's owner once the owner leaves it).
    pub(crate) fn successor(&self, key: &str) -> Option<&Arc<Member>> {
        self.ring
            .successor(key.as_bytes())
            .and_then(|index| self.members.get(index))
    }

    /// The key's owner if that is another replica; `None` when this replica owns it.
    pub(crate) fn remote_owner(&self, key: &str) -> Option<&Arc<Member>> {
        self.owner(key).filter(|owner| !owner.is_self)
    }

    /// How long this ring has been the current one.
    pub(crate) fn age(&self) -> Duration {
        self.built.elapsed()
    }

    /// The rings this one replaced that retired less than `recent_for` before `now`.
    fn recent(&self, now: Instant) -> impl Iterator<Item = &Former> {
        self.former.iter().take_while(move |former| {
            now.saturating_duration_since(former.retired) < self.recent_for
        })
    }

    /// Members of the rings this one replaced recently (before `now`) that are no longer
    /// members (nor this replica), once each. Every write goes to them too, whatever the key:
    /// one that left may still serve copies (as a key's former owner, or from its hot cache to
    /// its own clients through its drain) until its discovery or its drain ends.
    pub(crate) fn departed(&self, now: Instant) -> Vec<&Arc<Member>> {
        let mut departed: Vec<&Arc<Member>> = Vec::new();
        for member in self.recent(now).flat_map(|former| &former.members) {
            if !member.is_self
                && !self.members.iter().any(|current| current.url == member.url)
                && !departed.iter().any(|seen| seen.url == member.url)
            {
                departed.push(member);
            }
        }
        for (member, retired) in &self.overflow {
            if now.saturating_duration_since(*retired) < self.recent_for
                && !member.is_self
                && !self.members.iter().any(|current| current.url == member.url)
                && !departed.iter().any(|seen| seen.url == member.url)
            {
                departed.push(member);
            }
        }
        departed
    }

    /// Who held `key` before this replica became its owner: its owner in the newest recent ring
    /// that gave it to another member, or else (this replica's first ring with others in it, when
    /// it has just joined) the owner it would have without this replica, its successor.
    pub(crate) fn previous_owner(&self, key: &str, now: Instant) -> Option<&Arc<Member>> {
        let former = self.recent(now).find_map(|former| {
            former
                .ring
                .owner(key.as_bytes())
                .and_then(|i| former.members.get(i))
                .filter(|owner| !owner.is_self)
        });
        former
            .or_else(|| self.successor(key))
            .filter(|owner| !owner.is_self)
    }

    /// The member to peek for `key`'s warm hand-off and the peek, if its gate lets one go now
    /// (see `handoff.rs`).
    pub(crate) fn handoff_peek(&self, key: &str, now: Instant) -> Option<(&Arc<Member>, Peek)> {
        let previous = self.previous_owner(key, now)?;
        let (_, gate) = self
            .peek_gates
            .iter()
            .find(|(url, _)| *url == previous.url)?;
        Some((previous, gate.try_peek()?))
    }

    /// Every member but this replica.
    pub(crate) fn others(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.members.iter().filter(|member| !member.is_self)
    }

    /// How many members the ring has, this replica included unless it has left.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }
}

/// The membership of one replica, changed by discovery through `add` / `remove` / `set`.
pub(crate) struct Peers {
    self_url: Arc<str>,
    mode: RingMode,
    base_path: String,
    current: ArcSwap<Membership>,
    /// How long a replaced ring's owners still receive writes.
    recent_for: Duration,
    /// Serialises changes; readers never take it.
    changing: Mutex<()>,
    /// Set by [`Peers::leave`], read and written under `changing` only: this replica stays out
    /// of its own ring, whatever peer lists discovery gives it later.
    left: AtomicBool,
}

impl Peers {
    /// A membership of just this replica, reached at `self_url`; replaced rings are remembered
    /// for `recent_for`.
    pub(crate) fn new(
        self_url: &str,
        mode: RingMode,
        base_path: &str,
        recent_for: Duration,
    ) -> Result<Self, Error> {
        let (self_url, endpoint) = parse_url(self_url)?;
        let path = protocol::groups_prefix(&endpoint.path, base_path);
        let me = Arc::new(Member::new(self_url.clone(), endpoint, path, true));
        Ok(Peers {
            self_url,
            mode,
            base_path: base_path.to_owned(),
            current: ArcSwap::from_pointee(Membership::new(mode, vec![me], Vec::new(), recent_for)),
            recent_for,
            changing: Mutex::new(()),
            left: AtomicBool::new(false),
        })
    }

    /// This replica's URL, as the ring hashes it.
    pub(crate) fn self_url(&self) -> &Arc<str> {
        &self.self_url
    }

    /// The current snapshot; cheap and lock-free.
    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<Membership>> {
        self.current.load()
    }

    /// Member URLs in ring order of addition.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.snapshot()
            .members
            .iter()
            .map(|member| member.url.to_string())
            .collect()
    }

    /// Adds a peer; false if it was already there (or is this replica).
    pub(crate) fn add(&self, url: &str) -> Result<bool, Error> {
        let (url, endpoint) = parse_url(url)?;
        self.change(|members| {
            let gone = url == self.self_url && self.left.load(Ordering::Relaxed);
            if gone || members.iter().any(|member| member.url == url) {
                return false;
            }
            members.push(self.member(url, endpoint));
            true
        })
    }

    /// Removes a peer; false if it was not there. This replica cannot be removed: it always owns
    /// its share of the ring (as in golang/groupcache, where the pool's own URL is in every set).
    pub(crate) fn remove(&self, url: &str) -> Result<bool, Error> {
        let (url, _) = parse_url(url)?;
        if url == self.self_url {
            tracing::debug!(%url, "ignoring removal of this replica from its own ring");
            return Ok(false);
        }
        self.change(|members| {
            let before = members.len();
            members.retain(|member| member.url != url);
            members.len() != before
        })
    }

    /// Replaces the whole set, in the given order; this replica is appended if missing (or,
    /// once it has [left](Peers::leave), kept out, unless it is the only one left).
    /// Returns whether anything changed.
    pub(crate) fn set<I, S>(&self, urls: I) -> Result<bool, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut wanted: Vec<(Arc<str>, Option<Endpoint>)> = Vec::new();
        for url in urls {
            let (url, endpoint) = parse_url(url.as_ref())?;
            if !wanted.iter().any(|(existing, _)| *existing == url) {
                wanted.push((url, Some(endpoint)));
            }
        }
        if !wanted.iter().any(|(url, _)| *url == self.self_url) {
            wanted.push((self.self_url.clone(), None));
        }
        self.change(|members| {
            if self.left.load(Ordering::Relaxed)
                && wanted.iter().any(|(url, _)| *url != self.self_url)
            {
                wanted.retain(|(url, _)| *url != self.self_url);
            }
            let unchanged = members.len() == wanted.len()
                && members
                    .iter()
                    .zip(&wanted)
                    .all(|(m, (url, _))| m.url == *url);
            if unchanged {
                return false;
            }
            // Members that stay keep their entry (and endpoint); only new URLs become members.
            let mut next = Vec::with_capacity(wanted.len());
            for (url, endpoint) in wanted {
                match members.iter().find(|member| member.url == url) {
                    Some(member) => next.push(member.clone()),
                    None => match endpoint {
                        Some(endpoint) => next.push(self.member(url, endpoint)),
                        None => return false, // this replica is always a member already
                    },
                }
            }
            *members = next;
            true
        })
    }

    /// Takes this replica out of its own ring for good (a graceful shutdown): it owns no key
    /// from now on, and later peer lists keep it out. Alone in its ring, it stays (a ring is
    /// never empty). Returns whether the ring changed.
    pub(crate) fn leave(&self) -> bool {
        let changed = self.change(|members| {
            self.left.store(true, Ordering::Relaxed);
            if members.len() < 2 {
                return false;
            }
            members.retain(|member| !member.is_self);
            true
        });
        // `change` fails only where `edit` does; this one cannot.
        changed.unwrap_or(false)
    }

    fn member(&self, url: Arc<str>, endpoint: Endpoint) -> Arc<Member> {
        let path = protocol::groups_prefix(&endpoint.path, &self.base_path);
        let is_self = url == self.self_url;
        Arc::new(Member::new(url, endpoint, path, is_self))
    }

    /// Applies `edit` to the member list and publishes a new snapshot if it reports a change.
    fn change(&self, edit: impl FnOnce(&mut Vec<Arc<Member>>) -> bool) -> Result<bool, Error> {
        let _changing = lock(&self.changing);
        let current = self.current.load_full();
        let mut members = current.members.clone();
        if !edit(&mut members) {
            return Ok(false);
        }
        let count = members.len();
        let now = Instant::now();
        let retired = Former {
            ring: current.ring.clone(),
            members: current.members.clone(),
            retired: now,
        };
        let is_recent = |retired: Instant| now.duration_since(retired) < self.recent_for;
        let mut former: Vec<Former> = std::iter::once(retired)
            .chain(
                current
                    .former
                    .iter()
                    .filter(|former| is_recent(former.retired))
                    .map(|former| Former {
                        ring: former.ring.clone(),
                        members: former.members.clone(),
                        retired: former.retired,
                    }),
            )
            .collect();
        let mut overflow: Vec<(Arc<Member>, Instant)> = current
            .overflow
            .iter()
            .filter(|(_, retired)| is_recent(*retired))
            .cloned()
            .collect();
        for dropped in former.drain(MAX_FORMER_RINGS.min(former.len())..) {
            for member in dropped.members {
                match overflow.iter_mut().find(|(kept, _)| kept.url == member.url) {
                    Some((_, retired)) => *retired = (*retired).max(dropped.retired),
                    None => overflow.push((member, dropped.retired)),
                }
            }
        }
        let mut next = Membership::new(self.mode, members, former, self.recent_for);
        next.overflow = overflow;
        self.current.store(Arc::new(next));
        tracing::info!(peers = count, "groupcache membership changed");
        Ok(true)
    }
}

impl Membership {
    fn new(
        mode: RingMode,
        members: Vec<Arc<Member>>,
        former: Vec<Former>,
        recent_for: Duration,
    ) -> Self {
        let urls: Vec<&str> = members.iter().map(|member| &*member.url).collect();
        let mut peek_gates: Vec<(Arc<str>, Arc<PeekGate>)> = Vec::new();
        let everyone = members
            .iter()
            .chain(former.iter().flat_map(|former| &former.members));
        for member in everyone {
            if !member.is_self && !peek_gates.iter().any(|(url, _)| *url == member.url) {
                peek_gates.push((member.url.clone(), Arc::default()));
            }
        }
        Membership {
            ring: Ring::new(mode, &urls),
            members,
            built: Instant::now(),
            former,
            overflow: Vec::new(),
            recent_for,
            peek_gates,
        }
    }
}

/// Checks that `url` is an absolute http(s) URL without user, query or fragment, and parses it:
/// into the string the ring hashes (trailing slashes dropped, so `http://a:1/` and `http://a:1`
/// are one peer) and the endpoint requests go to.
pub(crate) fn parse_url(url: &str) -> Result<(Arc<str>, Endpoint), Error> {
    let trimmed = url.trim().trim_end_matches('/');
    let host = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match host {
        Some(host)
            if !host.is_empty() && !host.starts_with('/') && !trimmed.contains(['?', '#', ' ']) =>
        {
            let endpoint =
                Endpoint::parse(trimmed).map_err(|_| Error::InvalidPeerUrl(url.to_owned()))?;
            Ok((Arc::from(trimmed), endpoint))
        }
        _ => Err(Error::InvalidPeerUrl(url.to_owned())),
    }
}

/// Where a peer is reached, parsed once from its URL when it joins the membership.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// `scheme://authority`: which idle connections fit.
    pub(crate) origin: String,
    /// The host to connect to (and the TLS server name), IPv6 without brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    /// The `Host` header.
    pub(crate) authority: HeaderValue,
    /// The URL's own path (a mount prefix, or empty), before the base path.
    pub(crate) path: String,
    /// Whether the peer's last answer advertised the batch protocol
    /// ([`BATCH_HEADER`](crate::wire::protocol::BATCH_HEADER)); until one did, it gets single
    /// requests only (golang/groupcache would take a batch for a get of a key named `_batch`).
    pub(crate) batches: AtomicBool,
    /// Whether the peer's last answer came without the advert: a golang/groupcache replica (or
    /// a proxy that drops headers). With neither flag set, it has not answered yet.
    pub(crate) plain: AtomicBool,
    /// When the peer last answered anything (milliseconds since [`epoch`], 0: never): the
    /// failure detector's evidence that it is alive.
    heard: AtomicU64,
    /// How long its answers to fetches take: when a fetch to it is hedged (`group/hedge.rs`).
    pub(crate) latency: super::latency::Latency,
}

/// The process's reference instant for [`Endpoint::heard`].
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`], at least 1.
fn millis_now() -> u64 {
    u64::try_from(epoch().elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Endpoint {
    /// The peer answered (anything): it is alive now.
    pub(crate) fn heard(&self) {
        let now = millis_now();
        // Stored only when it moved: every answer passes here, and a store per answer would
        // bounce the cache line between the cores.
        if self.heard.load(Ordering::Relaxed) != now {
            self.heard.store(now, Ordering::Relaxed);
        }
    }

    /// How long since the peer last answered; `None` if it never has.
    pub(crate) fn silent_for(&self) -> Option<Duration> {
        match self.heard.load(Ordering::Relaxed) {
            0 => None,
            heard => Some(Duration::from_millis(millis_now().saturating_sub(heard))),
        }
    }

    /// `scheme://authority`.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// Parses an absolute `http://` or `https://` URL without query or fragment.
    pub(crate) fn parse(url: &str) -> Result<Endpoint, Error> {
        let invalid = || Error::InvalidPeerUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| invalid())?;
        let tls = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => false,
            Some(scheme) if *scheme == Scheme::HTTPS => true,
            _ => return Err(invalid()),
        };
        let authority: &Authority = uri.authority().ok_or_else(invalid)?;
        if authority.as_str().contains('@') || uri.query().is_some() {
            return Err(invalid());
        }
        let host = authority.host();
        // `[::1]` is how IPv6 hosts appear in URLs; sockets and TLS want the bare address.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(invalid());
        }
        // `http::Uri` lets a port that is not a number through; it would silently become 80.
        let after_host = &authority.as_str()[authority.as_str().rfind(']').unwrap_or(0)..];
        let port = match authority.port_u16() {
            Some(port) => port,
            None if after_host.contains(':') => return Err(invalid()),
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
        };
        let path = uri.path().trim_end_matches('/').to_owned();
        Ok(Endpoint {
            origin: format!("{}://{}", if tls { "https" } else { "http" }, authority),
            host: host.to_owned(),
            port,
            tls,
            authority: HeaderValue::from_str(authority.as_str()).map_err(|_| invalid())?,
            path,
            batches: AtomicBool::new(false),
            plain: AtomicBool::new(false),
            heard: AtomicU64::new(0),
            latency: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Peers {
        peers_remembering(Duration::from_secs(3600))
    }

    fn peers_remembering(recent_for: Duration) -> Peers {
        Peers::new(
            "http://127.0.0.1:1",
            RingMode::GoCompatible,
            "/_groupcache/",
            recent_for,
        )
        .unwrap()
    }

    #[test]
    fn departed_members_are_the_recent_rings_members_that_left() {
        let peers = peers();
        let (two, three) = ("http://127.0.0.1:2", "http://127.0.0.1:3");
        peers.set([two, three]).unwrap();
        peers.remove(two).unwrap();
        let after = peers.snapshot();
        let departed: Vec<&str> = after
            .departed(Instant::now())
            .iter()
            .map(|m| &*m.url)
            .collect();
        assert_eq!(
            departed,
            [two],
            "whatever the key: it may hold hot copies of any"
        );
        assert!(
            !after
                .departed(Instant::now())
                .iter()
                .any(|member| &*member.url == three),
            "3 is still a member"
        );
        // A member that comes back is a member again, not departed.
        peers.add(two).unwrap();
        assert!(peers.snapshot().departed(Instant::now()).is_empty());
        // Each ring is remembered once; the chain never grows past its cap.
        for _ in 0..2 * MAX_FORMER_RINGS {
            peers.remove(two).unwrap();
            peers.add(two).unwrap();
        }
        peers.remove(two).unwrap();
        let snapshot = peers.snapshot();
        assert_eq!(snapshot.former.len(), MAX_FORMER_RINGS);
        assert_eq!(snapshot.departed(Instant::now()).len(), 1);
    }

    /// Issue 23's fast rolling deploy: more ring changes within the bound than rings are kept
    /// whole. A replica that left in the first of them must still be sent every write until its
    /// ring is `recent_for` old, and then no longer.
    #[test]
    fn writes_reach_a_replica_that_left_for_the_whole_bound_however_many_changes_follow() {
        let recent_for = Duration::from_secs(3600);
        let peers = peers_remembering(recent_for);
        let gone = "http://127.0.0.1:2";
        peers.set([gone, "http://127.0.0.1:3"]).unwrap();
        peers.remove(gone).unwrap();
        // A rolling deploy of others: two changes per replica, many more than the cap.
        for i in 0..2 * MAX_FORMER_RINGS {
            let url = format!("http://127.0.0.1:{}", 100 + i);
            peers.add(&url).unwrap();
            peers.remove(&url).unwrap();
        }
        let snapshot = peers.snapshot();
        assert_eq!(snapshot.former.len(), MAX_FORMER_RINGS, "rings kept whole");
        let departed: Vec<&str> = snapshot
            .departed(Instant::now())
            .iter()
            .map(|member| &*member.url)
            .collect();
        assert!(
            departed.contains(&gone),
            "the owner that left first no longer gets writes: {departed:?}"
        );
        let later = Instant::now() + recent_for + Duration::from_secs(1);
        assert!(
            snapshot.departed(later).is_empty(),
            "every ring has aged past the bound"
        );
        // It came back: a member again, not departed.
        peers.add(gone).unwrap();
        let snapshot = peers.snapshot();
        assert!(
            !snapshot
                .departed(Instant::now())
                .iter()
                .any(|member| &*member.url == gone),
            "a member again is sent writes as a member, not as departed"
        );
    }

    #[test]
    fn a_replica_that_left_stays_out_of_its_own_ring() {
        let alone = peers();
        assert!(!alone.leave(), "alone in its ring, it stays");
        assert_eq!(alone.urls(), ["http://127.0.0.1:1"]);

        let peers = peers();
        let (me, two, three) = (
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        );
        peers.set([me, two, three]).unwrap();
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|key| {
                peers
                    .snapshot()
                    .owner(key)
                    .is_some_and(|owner| owner.is_self)
            })
            .unwrap();
        assert!(peers.leave());
        assert_eq!(peers.urls(), [two, three]);
        let snapshot = peers.snapshot();
        assert!(
            !snapshot.owner(&key).unwrap().is_self,
            "it still owns a key"
        );
        assert!(
            snapshot.departed(Instant::now()).is_empty(),
            "it sends no writes to itself"
        );
        // Discovery still lists it (its endpoint is not yet marked unready): it stays out.
        assert!(!peers.set([me, two, three]).unwrap());
        assert!(!peers.add(me).unwrap());
        assert_eq!(peers.urls(), [two, three]);
        assert!(peers.set([me, two]).unwrap());
        assert_eq!(peers.urls(), [two]);
        assert!(!peers.leave(), "it has left already");
    }

    #[test]
    fn rings_older_than_the_bound_are_forgotten() {
        let peers = peers_remembering(Duration::ZERO);
        let two = "http://127.0.0.1:2";
        peers.add(two).unwrap();
        peers.add("http://127.0.0.1:3").unwrap();
        peers.remove(two).unwrap();
        // Only the ring just replaced is kept; those before it retired at least 0 s ago.
        assert_eq!(peers.snapshot().former.len(), 1);
    }

    /// Issue 17's "former rings are pruned only at the next membership change": a ring replaced
    /// longer than the bound ago no longer sends writes to its owners nor hands off keys, though
    /// no change has come since to prune it. The clock is the `now` each read is given.
    #[test]
    fn a_former_ring_stops_counting_once_it_is_older_than_the_bound_without_another_change() {
        let recent_for = Duration::from_secs(60);
        let peers = peers_remembering(recent_for);
        let (me, two, three) = (
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        );
        peers.set([me, two, three]).unwrap();
        let before = peers.snapshot();
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|key| before.owner(key).is_some_and(|owner| &*owner.url == two))
            .unwrap();
        peers.set([me, three]).unwrap();
        let after = peers.snapshot();
        let now = Instant::now();
        let url = |member: Option<&Arc<Member>>| member.map(|m| m.url.to_string());
        assert_eq!(after.departed(now).len(), 1);
        assert_eq!(url(after.previous_owner(&key, now)).as_deref(), Some(two));
        let just_within = now + recent_for - Duration::from_millis(1);
        assert_eq!(after.departed(just_within).len(), 1);
        let past = after.built + recent_for;
        assert!(after.departed(past).is_empty(), "still written to");
        assert_ne!(
            url(after.previous_owner(&key, past)).as_deref(),
            Some(two),
            "still peeked"
        );
    }

    /// The warm hand-off's gates live with the ring: a member whose peeks all missed under one
    /// ring is not peeked again under it, and is peeked again under the next.
    #[test]
    fn a_ring_change_gives_a_cold_previous_owner_another_chance() {
        let peers = peers();
        let (me, two, three) = (
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        );
        peers.set([me, two]).unwrap();
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|key| {
                let snapshot = peers.snapshot();
                snapshot.owner(key).is_some_and(|owner| owner.is_self)
                    && snapshot.previous_owner(key, Instant::now()).is_some()
            })
            .unwrap();
        let snapshot = peers.snapshot();
        let now = Instant::now();
        for _ in 0..crate::handoff::COLD_AFTER_MISSES {
            let (member, peek) = snapshot.handoff_peek(&key, now).expect("worth a try");
            assert_eq!(&*member.url, two);
            peek.answered(false);
        }
        assert!(
            snapshot.handoff_peek(&key, now).is_none(),
            "cold under this ring"
        );
        peers.set([me, two, three]).unwrap();
        let next = peers.snapshot();
        assert!(
            next.peek_gates
                .iter()
                .all(|(_, gate)| gate.try_peek().is_some()),
            "every gate of the new ring is fresh"
        );
    }

    #[test]
    fn a_member_is_suspected_until_its_time_ends_or_it_is_trusted() {
        let peers = peers();
        peers.add("http://127.0.0.1:2").unwrap();
        let snapshot = peers.snapshot();
        let member = snapshot.others().next().unwrap();
        assert!(!member.is_suspected(), "trusted until it fails");
        member.trust();
        assert!(!member.is_suspected());
        assert!(member.suspect(Duration::from_secs(60)), "newly suspected");
        assert!(member.is_suspected());
        assert!(
            !member.suspect(Duration::from_secs(60)),
            "already suspected"
        );
        member.trust();
        assert!(!member.is_suspected(), "trusted again once it answered");
        assert!(member.suspect(Duration::ZERO));
        assert!(!member.is_suspected(), "a suspicion ends with its time");
        assert!(
            member.suspect(Duration::from_secs(60)),
            "the last one had ended"
        );
    }

    #[test]
    fn starts_with_only_itself_and_owns_everything() {
        let peers = peers();
        assert_eq!(peers.urls(), ["http://127.0.0.1:1"]);
        let snapshot = peers.snapshot();
        assert!(snapshot.owner("any").unwrap().is_self);
        assert_eq!(snapshot.others().count(), 0);
    }

    #[test]
    fn add_and_remove_are_idempotent_and_self_is_never_removed() {
        let peers = peers();
        assert!(peers.add("http://127.0.0.1:2").unwrap());
        assert!(
            !peers.add("http://127.0.0.1:2/").unwrap(),
            "trailing slash is the same peer"
        );
        assert!(
            !peers.add("http://127.0.0.1:1").unwrap(),
            "self is already a member"
        );
        assert!(peers.remove("http://127.0.0.1:2").unwrap());
        assert!(!peers.remove("http://127.0.0.1:2").unwrap());
        assert!(!peers.remove("http://127.0.0.1:1").unwrap());
        assert_eq!(peers.urls(), ["http://127.0.0.1:1"]);
    }

    #[test]
    fn set_keeps_order_appends_self_and_reports_change() {
        let peers = peers();
        assert!(
            peers
                .set([
                    "http://127.0.0.1:3",
                    "http://127.0.0.1:2",
                    "http://127.0.0.1:3"
                ])
                .unwrap()
        );
        assert_eq!(
            peers.urls(),
            [
                "http://127.0.0.1:3",
                "http://127.0.0.1:2",
                "http://127.0.0.1:1"
            ]
        );
        assert!(
            !peers
                .set(["http://127.0.0.1:3", "http://127.0.0.1:2"])
                .unwrap()
        );
        let snapshot = peers.snapshot();
        assert_eq!(snapshot.others().count(), 2);
        let member = snapshot.others().next().unwrap();
        assert_eq!(member.path, "/_groupcache/");
        assert_eq!(member.endpoint.path, "");
    }

    #[test]
    fn invalid_urls_are_rejected_and_change_nothing() {
        let peers = peers();
        for bad in [
            "",
            "127.0.0.1:2",
            "ftp://x",
            "http://",
            "http:///path",
            "http://a b",
        ] {
            assert!(
                matches!(peers.add(bad), Err(Error::InvalidPeerUrl(_))),
                "{bad:?}"
            );
        }
        assert!(peers.set(["http://ok:1", "nope"]).is_err());
        assert_eq!(peers.urls(), ["http://127.0.0.1:1"]);
    }

    #[test]
    fn every_owner_in_a_snapshot_has_its_member() {
        let peers = peers();
        peers
            .set((2..40).map(|port| format!("http://127.0.0.1:{port}")))
            .unwrap();
        let snapshot = peers.snapshot();
        for i in 0..10_000 {
            assert!(snapshot.owner(&format!("key-{i}")).is_some());
        }
    }

    #[test]
    fn endpoints_parse_scheme_host_port_and_path() {
        let e = Endpoint::parse("http://10.0.0.1:8080").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("10.0.0.1", 8080, false));
        assert_eq!(
            (e.origin.as_str(), e.path.as_str()),
            ("http://10.0.0.1:8080", "")
        );
        let e = Endpoint::parse("https://cache.example:9443/app/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("cache.example", 9443, true)
        );
        assert_eq!(e.path, "/app");
        assert_eq!(e.authority, "cache.example:9443");
        let e = Endpoint::parse("http://[::1]:80").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 80));
        assert_eq!(Endpoint::parse("https://h").unwrap().port, 443);
        assert_eq!(Endpoint::parse("http://h").unwrap().port, 80);
        for bad in [
            "ftp://h:1",
            "http://",
            "h:1",
            "http://u@h:1",
            "http://h:1/?q",
            "http://h:x",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
