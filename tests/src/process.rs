//! Replicas as processes of their own (the `replica` binary of this crate,
//! `tests/src/bin/replica.rs`), for tests that SIGKILL, partition or soak them.
//!
//! Integration tests pass the binary's path, `env!("CARGO_BIN_EXE_replica")`, which Cargo builds
//! for them.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::child::ListeningChild;

/// A running replica process, killed when dropped.
#[derive(Debug)]
pub struct ProcessReplica {
    /// The URL it serves at and peers list it under.
    pub url: String,
    /// The `http://` address it is bound to, where its control interface is reached: its URL,
    /// unless started with `--self`.
    pub addr: String,
    /// Its process id.
    pub pid: u32,
    /// Its stdin is a pipe: closing it makes the replica exit, so it never outlives the test.
    process: ListeningChild,
    http: reqwest::Client,
}

impl ProcessReplica {
    /// Starts `binary` with `flags` (see `tests/src/bin/replica.rs`) on a free loopback port.
    pub fn start(binary: &str, flags: &[&str]) -> ProcessReplica {
        Self::start_command(Command::new(binary), flags)
    }

    /// Starts `binary` with `flags` inside the network namespace `netns` (`ip netns exec`); give
    /// it `--listen ADDR` on an address of that namespace.
    pub fn start_in_netns(netns: &str, binary: &str, flags: &[&str]) -> ProcessReplica {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns, binary]);
        Self::start_command(command, flags)
    }

    fn start_command(mut command: Command, flags: &[&str]) -> ProcessReplica {
        // Built before the process starts, so nothing between spawn and the guard can panic.
        let http = crate::http_client()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("HTTP client");
        command.args(flags);
        let process = ListeningChild::spawn(command, true);
        ProcessReplica {
            url: process.url.clone(),
            addr: process.addr.clone(),
            pid: process.pid,
            process,
            http,
        }
    }

    /// SIGKILLs the process and waits for it: when this returns, its port refuses connections
    /// and every connection it had is closed. Idempotent.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// SIGTERMs the process and blocks until it reports that it left its own ring (its `left`
    /// line): from then on it owns no key, and it keeps serving peers and the control interface
    /// until [`kill`](ProcessReplica::kill), the end of its drain.
    ///
    /// # Panics
    ///
    /// When the process exits or prints anything else first.
    pub fn terminate_and_wait_left(&self) {
        self.process.terminate();
        let line = self.process.next_line();
        assert_eq!(
            line.as_deref(),
            Some("left"),
            "{} did not report leaving its ring after SIGTERM",
            self.url
        );
    }

    /// SIGSTOPs the process: it keeps its sockets, and the kernel keeps accepting connections
    /// for it, but it answers nothing (a paused or swapping pod) until [`resume`](Self::resume).
    ///
    /// Returns once every thread of the process has stopped: the signal only asks, and a
    /// thread running at that moment could still answer a request sent right after.
    pub fn freeze(&self) {
        self.process.signal("STOP");
        let tasks = format!("/proc/{}/task", self.pid);
        let stopped = || {
            std::fs::read_dir(&tasks).is_ok_and(|threads| {
                threads.flatten().all(|thread| {
                    // `pid (name) S ...`: the state follows the name's closing parenthesis.
                    std::fs::read_to_string(thread.path().join("stat")).is_ok_and(|stat| {
                        stat.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
                    })
                })
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !stopped() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not stop after SIGSTOP",
                self.url
            );
            std::thread::yield_now();
        }
    }

    /// SIGCONTs a [frozen](Self::freeze) process.
    pub fn resume(&self) {
        self.process.signal("CONT");
    }

    /// The control client (10 s timeout).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET /get/{key}`: the status and body of `cache.get(key)` (the value on 200, the error
    /// message on 500), or the transport error.
    pub async fn get(&self, key: &str) -> Result<(u16, Bytes), reqwest::Error> {
        let response = self.http.get(self.key_url("get", key)).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.bytes().await?))
    }

    /// `POST /get_many`: `cache.get_many(keys)`, one result per key (the value as text, or the
    /// error's message); `Err` with the status and body when the request itself failed. Waits up
    /// to a minute: a cold batch may take longer than one peer request.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Result<String, String>>, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Answer {
            Value(String),
            Error(String),
        }
        let body = serde_json::to_vec(keys).expect("JSON");
        let response = self
            .http
            .post(format!("{}/get_many", self.addr))
            .timeout(Duration::from_secs(60))
            .body(body)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        if status != 200 {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        let answers: Vec<Answer> = serde_json::from_slice(&body)
            .map_err(|error| format!("{error}: {}", String::from_utf8_lossy(&body)))?;
        Ok(answers
            .into_iter()
            .map(|answer| match answer {
                Answer::Value(value) => Ok(value),
                Answer::Error(error) => Err(error),
            })
            .collect())
    }

    /// `PUT /set/{key}`: `cache.set(key, value)`; the status.
    pub async fn set(&self, key: &str, value: &[u8]) -> Result<u16, reqwest::Error> {
        let request = self.http.put(self.key_url("set", key)).body(value.to_vec());
        Ok(request.send().await?.status().as_u16())
    }

    /// `DELETE /remove/{key}`: `cache.remove(key)`; the status.
    pub async fn remove(&self, key: &str) -> Result<u16, reqwest::Error> {
        let response = self.http.delete(self.key_url("remove", key)).send().await?;
        Ok(response.status().as_u16())
    }

    /// `POST /purge`: `cache.purge()`; the status (500 when a replica could not be reached).
    pub async fn purge(&self) -> Result<u16, reqwest::Error> {
        let response = self
            .http
            .post(format!("{}/purge", self.addr))
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// `POST /peers`: `cache.set_peers(peers)`.
    pub async fn set_peers<S: AsRef<str>>(&self, peers: &[S]) {
        let peers: Vec<&str> = peers.iter().map(AsRef::as_ref).collect();
        let body = serde_json::to_vec(&peers).expect("JSON");
        let response = self
            .http
            .post(format!("{}/peers", self.addr))
            .body(body)
            .send()
            .await
            .expect("POST /peers");
        assert_eq!(response.status(), 200, "POST /peers {peers:?}");
    }

    /// `POST /generation`: this replica's loader produces `value:{key}#{generation}` from now on.
    pub async fn set_generation(&self, generation: u64) {
        let response = self
            .http
            .post(format!("{}/generation", self.addr))
            .body(generation.to_string())
            .send()
            .await
            .expect("POST /generation");
        assert_eq!(response.status(), 200, "POST /generation");
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> ProcessStats {
        let url = format!("{}/stats", self.addr);
        let response = self.http.get(&url).send().await.expect("GET /stats");
        assert_eq!(response.status(), 200, "GET {url}");
        let body = response.bytes().await.expect("body of /stats");
        serde_json::from_slice(&body).unwrap_or_else(|error| {
            panic!("GET {url}: {error}: {}", String::from_utf8_lossy(&body))
        })
    }

    fn key_url(&self, endpoint: &str, key: &str) -> String {
        format!("{}/{endpoint}/{}", self.addr, escape(key))
    }
}

/// A process replica's counters (`GET /stats`).
#[derive(Debug, Clone, Deserialize)]
pub struct ProcessStats {
    /// `Stats::gets`.
    pub gets: u64,
    /// `Stats::main_hits`.
    pub main_hits: u64,
    /// `Stats::hot_hits`.
    pub hot_hits: u64,
    /// `Stats::peer_loads`.
    pub peer_loads: u64,
    /// `Stats::peer_errors`.
    pub peer_errors: u64,
    /// `Stats::loads`.
    pub loads: u64,
    /// `Stats::local_loads`.
    pub local_loads: u64,
    /// `Stats::local_load_errors`.
    pub local_load_errors: u64,
    /// `Stats::server_requests`.
    pub server_requests: u64,
    /// `Stats::peer_suspicions`.
    #[serde(default)]
    pub peer_suspicions: u64,
    /// `Stats::successor_loads`.
    #[serde(default)]
    pub successor_loads: u64,
    /// `Stats::handoff_hits`.
    #[serde(default)]
    pub handoff_hits: u64,
    /// `Stats::handoff_misses`.
    #[serde(default)]
    pub handoff_misses: u64,
    /// Peer requests refused by authentication, replays among them.
    #[serde(default)]
    pub peer_auth_failures: u64,
    /// Of those, replayed requests.
    #[serde(default)]
    pub peer_auth_replays: u64,
    /// Accepted nonces remembered now.
    #[serde(default)]
    pub auth_nonces: u64,
    /// `Stats::main_bytes`.
    pub main_bytes: u64,
    /// `Stats::main_items`.
    pub main_items: u64,
    /// `Stats::hot_bytes`.
    pub hot_bytes: u64,
    /// `Stats::hot_items`.
    pub hot_items: u64,
    /// The loader's runs per key on this replica.
    pub loads_per_key: HashMap<String, u64>,
    /// Resident memory of the process.
    pub rss_bytes: u64,
}

/// The value the replica's loader produces for `key` at `generation` (unpadded).
pub fn value_for(key: &str, generation: u64) -> String {
    format!("value:{key}#{generation}")
}

/// `key` escaped for one path segment of the control interface.
fn escape(key: &str) -> String {
    use std::fmt::Write;
    let mut escaped = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            escaped.push(byte as char);
        } else {
            let _ = write!(escaped, "%{byte:02X}");
        }
    }
    escaped
}

/// The owner of every key in a ring of `urls` (the replica binary's default, balanced ring),
/// computed in this process with an unserved cache.
pub fn owners<S: AsRef<str>>(urls: &[S], keys: &[String]) -> Vec<String> {
    owners_in(groupcache_rs::RingMode::Balanced, urls, keys)
}

/// The owner of every key in a ring of `urls` in `mode` (`GoCompatible` for a pool shared with Go
/// replicas: `urls` in the order every replica is given them), computed in this process.
pub fn owners_in<S: AsRef<str>>(
    mode: groupcache_rs::RingMode,
    urls: &[S],
    keys: &[String],
) -> Vec<String> {
    let ring = groupcache_rs::Groupcache::builder(
        crate::GROUP,
        urls[0].as_ref(),
        crate::TestLoader::new(),
    )
    .ring_mode(mode)
    .build()
    .expect("a valid ring");
    ring.set_peers(urls.iter().map(AsRef::as_ref))
        .expect("valid peer URLs");
    keys.iter().map(|key| ring.owner(key)).collect()
}

/// Keys of the form `{prefix}{i}` that `owner_url` owns, according to a balanced ring over
/// `urls` (the replica binary's default ring mode), computed in this process with an unserved
/// cache, so no request is needed.
pub fn keys_owned_by(urls: &[&str], owner_url: &str, prefix: &str, n: usize) -> Vec<String> {
    let ring =
        groupcache_rs::Groupcache::builder(crate::GROUP, owner_url, crate::TestLoader::new())
            .build()
            .expect("a valid ring");
    ring.set_peers(urls).expect("valid peer URLs");
    crate::keys_owned(&ring, owner_url, prefix)
        .take(n)
        .collect()
}
