//! Who is in the cluster: the peer list and the ring built over it, swapped as one snapshot, so a
//! `get` racing with a membership change sees either the old ring with the old peers or the new
//! ring with the new peers, never a ring entry without its peer.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::connections::Endpoint;
use crate::ring::{Ring, RingMode};
use crate::{Error, transport};

/// One replica of the cluster, this one included.
#[derive(Debug)]
pub(crate) struct Member {
    /// The exact URL string the ring hashes (`http://10.0.0.2:8080`, no trailing slash).
    pub(crate) url: Arc<str>,
    /// Where requests to it go.
    pub(crate) endpoint: Arc<Endpoint>,
    /// The request path up to the escaped key: `{url's path}{base_path}{escaped group}/`.
    pub(crate) key_prefix: String,
    /// Whether this member is the local replica.
    pub(crate) is_self: bool,
}

/// A consistent view of the cluster.
#[derive(Debug)]
pub(crate) struct Membership {
    ring: Ring,
    /// In the order they were added; the ring returns indexes into this list.
    members: Vec<Arc<Member>>,
}

impl Membership {
    /// The key's owner; `None` only if the ring is empty, which `Peers` never lets happen.
    pub(crate) fn owner(&self, key: &str) -> Option<&Arc<Member>> {
        self.ring
            .owner(key.as_bytes())
            .and_then(|index| self.members.get(index))
    }

    /// The key's owner if that is another replica; `None` when this replica owns it.
    pub(crate) fn remote_owner(&self, key: &str) -> Option<&Arc<Member>> {
        self.owner(key).filter(|owner| !owner.is_self)
    }

    /// Every member but this replica.
    pub(crate) fn others(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.members.iter().filter(|member| !member.is_self)
    }
}

/// The membership of one replica, changed by discovery through `add` / `remove` / `set`.
pub(crate) struct Peers {
    self_url: Arc<str>,
    mode: RingMode,
    /// `{base_path}{escaped group}/`.
    path_prefix: String,
    current: ArcSwap<Membership>,
    /// Serialises changes; readers never take it.
    changing: Mutex<()>,
}

impl Peers {
    /// A membership of just this replica.
    pub(crate) fn new(self_url: &str, mode: RingMode, base_path: &str, group: &str) -> Self {
        let path_prefix = format!("{base_path}{}/", transport::escape(group));
        let self_url: Arc<str> = Arc::from(self_url);
        let current = ArcSwap::from_pointee(build(
            &self_url,
            mode,
            &path_prefix,
            std::slice::from_ref(&self_url),
        ));
        Peers {
            self_url,
            mode,
            path_prefix,
            current,
            changing: Mutex::new(()),
        }
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
        let url = normalize_url(url)?;
        self.change(|urls| {
            if urls.iter().any(|existing| **existing == *url) {
                return false;
            }
            urls.push(Arc::from(url.as_str()));
            true
        })
    }

    /// Removes a peer; false if it was not there. This replica cannot be removed: it always owns
    /// its share of the ring (as in golang/groupcache, where the pool's own URL is in every set).
    pub(crate) fn remove(&self, url: &str) -> Result<bool, Error> {
        let url = normalize_url(url)?;
        if url == *self.self_url {
            tracing::debug!(%url, "ignoring removal of this replica from its own ring");
            return Ok(false);
        }
        self.change(|urls| {
            let before = urls.len();
            urls.retain(|existing| **existing != *url);
            urls.len() != before
        })
    }

    /// Replaces the whole set, in the given order; this replica is appended if missing.
    /// Returns whether anything changed.
    pub(crate) fn set<I, S>(&self, urls: I) -> Result<bool, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut wanted: Vec<Arc<str>> = Vec::new();
        for url in urls {
            let url = normalize_url(url.as_ref())?;
            if !wanted.iter().any(|existing| **existing == *url) {
                wanted.push(Arc::from(url.as_str()));
            }
        }
        if !wanted.contains(&self.self_url) {
            wanted.push(self.self_url.clone());
        }
        self.change(|urls| {
            let changed = *urls != wanted;
            *urls = wanted;
            changed
        })
    }

    /// Applies `edit` to the URL list and publishes a new snapshot if it reports a change.
    fn change(&self, edit: impl FnOnce(&mut Vec<Arc<str>>) -> bool) -> Result<bool, Error> {
        let _changing = self
            .changing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.current.load();
        let mut urls: Vec<Arc<str>> = current.members.iter().map(|m| m.url.clone()).collect();
        if !edit(&mut urls) {
            return Ok(false);
        }
        self.current.store(Arc::new(build(
            &self.self_url,
            self.mode,
            &self.path_prefix,
            &urls,
        )));
        tracing::info!(peers = urls.len(), "groupcache membership changed");
        Ok(true)
    }
}

fn build(self_url: &Arc<str>, mode: RingMode, path_prefix: &str, urls: &[Arc<str>]) -> Membership {
    let members: Vec<Arc<Member>> = urls
        .iter()
        .filter_map(|url| {
            // Every URL here passed `normalize_url`, which parses it the same way; the ring is
            // built over the members below, so the two always agree.
            let endpoint = Endpoint::parse(url).ok()?;
            Some(Arc::new(Member {
                url: Arc::clone(url),
                key_prefix: format!("{}{path_prefix}", endpoint.path),
                endpoint: Arc::new(endpoint),
                is_self: url == self_url,
            }))
        })
        .collect();
    let urls: Vec<&str> = members.iter().map(|member| &*member.url).collect();
    Membership {
        ring: Ring::new(mode, &urls),
        members,
    }
}

/// Checks that `url` is an absolute http(s) URL and drops trailing slashes, so `http://a:1/` and
/// `http://a:1` are one peer (the ring hashes the exact string).
pub(crate) fn normalize_url(url: &str) -> Result<String, Error> {
    let trimmed = url.trim().trim_end_matches('/');
    let host = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match host {
        Some(host)
            if !host.is_empty()
                && !host.starts_with('/')
                && !trimmed.contains(['?', '#', ' '])
                && Endpoint::parse(trimmed).is_ok() =>
        {
            Ok(trimmed.to_owned())
        }
        _ => Err(Error::InvalidPeerUrl(url.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Peers {
        Peers::new(
            "http://127.0.0.1:1",
            RingMode::GoCompatible,
            "/_groupcache/",
            "g",
        )
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
        assert_eq!(member.key_prefix, "/_groupcache/g/");
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
}
