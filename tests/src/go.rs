//! golang/groupcache replicas for the interoperability tests: the Go test peer
//! (`tests/interop/go-peer`), built once per test binary and run as child processes.
//!
//! Tests start with [`binary`], which returns `None` (after a loud `SKIPPED` message) when Go or
//! the golang/groupcache sources are missing, so a developer without Go still gets a green run;
//! with `CI=true` a missing toolchain fails the test instead, so CI cannot skip silently.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;

use crate::child::ListeningChild;

/// Where the Go peer is built, relative to the workspace root.
const BINARY: &str = "target/interop/go-peer";

/// Whether the Go peer could be built.
enum Build {
    Ready(PathBuf),
    /// Go or the golang/groupcache sources are not installed: skip, or fail under CI.
    Missing(String),
    /// Everything was there but the build failed: a bug, always a failure.
    Broken(String),
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The built Go peer, or `None` if Go is not installed here (the caller returns early: the test
/// is skipped). Builds on first use; every later call in this process reuses the result.
///
/// # Panics
///
/// When the build fails although Go and the sources are present, and when they are missing but
/// the environment variable `CI` is `true`.
pub fn binary() -> Option<&'static Path> {
    static BUILD: OnceLock<Build> = OnceLock::new();
    match BUILD.get_or_init(build) {
        Build::Ready(path) => Some(path),
        Build::Broken(why) => panic!("building the Go test peer failed:\n{why}"),
        Build::Missing(why) if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "CI=true but the Go test peer cannot be built: {why}\n\
             Install Go and golang/groupcache with tests/interop/install-deps.sh (as root)."
        ),
        Build::Missing(why) => {
            // Straight to the process's stderr: the test harness captures `eprintln!`.
            let test = std::thread::current().name().unwrap_or("a test").to_owned();
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: {test}: the Go test peer cannot be built: {why}.\n\
                 *** Install Go and golang/groupcache with tests/interop/install-deps.sh \
                 (as root) to run it; with CI=true this is a failure.\n"
            );
            None
        }
    }
}

fn build() -> Build {
    let root = workspace_root();
    let script = root.join("tests/interop/build.sh");
    let main = root.join("tests/interop/go-peer/main.go");
    for source in [&script, &main] {
        if !source.is_file() {
            return Build::Missing(format!("{} is missing", source.display()));
        }
    }
    if !Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
    {
        return Build::Missing("no `go` on PATH (Debian package golang-go)".into());
    }
    let gopath = std::env::var("GROUPCACHE_GOPATH").unwrap_or_else(|_| "/usr/share/gocode".into());
    let groupcache = Path::new(&gopath).join("src/github.com/golang/groupcache/http.go");
    if !groupcache.is_file() {
        return Build::Missing(format!(
            "no golang/groupcache sources at {} (Debian package \
             golang-github-golang-groupcache-dev)",
            groupcache.display()
        ));
    }
    // Build beside the final path and rename into place: atomic, so a test binary that runs one
    // test per process (nextest) never executes a half-written file or one being overwritten.
    let out = root.join(BINARY);
    let partial = out.with_extension(format!("{}.partial", std::process::id()));
    let mut command = Command::new(&script);
    command.arg(&partial).current_dir(&root);
    if ["GOCACHE", "XDG_CACHE_HOME", "HOME"]
        .iter()
        .all(|var| std::env::var_os(var).is_none())
    {
        command.env("GOCACHE", root.join("target/interop/gocache"));
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(error) => return Build::Broken(format!("running {}: {error}", script.display())),
    };
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Build::Broken(format!(
            "{} {} exited with {}:\n{}{}",
            script.display(),
            partial.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    if let Err(error) = std::fs::rename(&partial, &out) {
        return Build::Broken(format!(
            "moving the Go peer into {}: {error}",
            out.display()
        ));
    }
    Build::Ready(out)
}

/// A running Go peer (one `groupcache.HTTPPool` and one group), killed when dropped.
#[derive(Debug)]
pub struct GoPeer {
    /// `http://127.0.0.1:port`: where it listens, and its peer URL unless started with `-self`.
    pub url: String,
    process: ListeningChild,
    http: reqwest::Client,
}

impl GoPeer {
    /// Starts a peer serving the group `test` ([`crate::GROUP`]) on a free loopback port.
    pub fn start(binary: &Path) -> GoPeer {
        Self::start_with(binary, &[])
    }

    /// Starts a peer with extra flags (see main.go: `-self URL`, `-group NAME`, `-groups A,B`,
    /// `-load-delay 50ms`, `-base-path P`, `-log-requests`); a flag given here overrides the
    /// defaults.
    ///
    /// Returns once the peer is listening: it prints its URL as soon as its socket is bound.
    pub fn start_with(binary: &Path, flags: &[&str]) -> GoPeer {
        // Built before the process starts, so nothing between spawn and the guard can panic.
        let http = crate::http_client()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client");
        let mut command = Command::new(binary);
        command
            .args(["-listen", "127.0.0.1:0", "-group", crate::GROUP])
            .args(flags);
        let process = ListeningChild::spawn(command, false);
        GoPeer {
            url: process.url.clone(),
            process,
            http,
        }
    }

    /// Kills the process (SIGKILL, like a crash) and waits for it: when this returns, its port
    /// refuses connections and every connection it had is closed. Idempotent.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// The HTTP client the helpers use (10 s timeout, no redirects), for raw requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `POST /peers`: `pool.Set(peers...)`, in this order.
    pub async fn set_peers<S: AsRef<str>>(&self, peers: &[S]) {
        let peers: Vec<&str> = peers.iter().map(AsRef::as_ref).collect();
        let body = serde_json::to_vec(&peers).expect("JSON");
        let response = self
            .http
            .post(format!("{}/peers", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST /peers");
        assert_eq!(response.status(), 200, "POST /peers {peers:?}");
    }

    /// `GET /get?key=`: the status and body of the Go peer's `group.Get(key)` (the value on 200,
    /// the error text on 500).
    pub async fn get(&self, key: &str) -> (u16, Vec<u8>) {
        self.get_from(None, key).await
    }

    /// `GET /get?key=&group=`: as [`get`](Self::get), in the group `group` of a peer started with
    /// `-groups` (whose getter returns `go:{group}:{key}`).
    pub async fn get_in(&self, group: &str, key: &str) -> (u16, Vec<u8>) {
        self.get_from(Some(group), key).await
    }

    async fn get_from(&self, group: Option<&str>, key: &str) -> (u16, Vec<u8>) {
        let mut url = self.control_url("get", key);
        if let Some(group) = group {
            url.query_pairs_mut().append_pair("group", group);
        }
        let response = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET /get?key={key:?} in {group:?}: {error}"));
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("body of /get");
        (status, body.to_vec())
    }

    /// `GET /loads`: the Go getter's invocations on this peer (of its first group).
    pub async fn loads(&self) -> GoLoads {
        self.json(&format!("{}/loads", self.url)).await
    }

    /// `GET /loads?group=`: the getter's invocations in the group `group` on this peer.
    pub async fn loads_in(&self, group: &str) -> GoLoads {
        let mut url = reqwest::Url::parse(&format!("{}/loads", self.url)).expect("peer URL");
        url.query_pairs_mut().append_pair("group", group);
        self.json(url.as_str()).await
    }

    /// `GET /stats`: the group's `Stats`.
    pub async fn stats(&self) -> GoStats {
        self.json::<StatsResponse>(&format!("{}/stats", self.url))
            .await
            .stats
    }

    /// `GET /stats?group=`: the `Stats` of the group `group`.
    pub async fn stats_in(&self, group: &str) -> GoStats {
        let mut url = reqwest::Url::parse(&format!("{}/stats", self.url)).expect("peer URL");
        url.query_pairs_mut().append_pair("group", group);
        self.json::<StatsResponse>(url.as_str()).await.stats
    }

    /// `GET /owner?key=`: which peer golang/groupcache's ring picks for `key`.
    pub async fn owner(&self, key: &str) -> GoOwner {
        self.json(self.control_url("owner", key).as_str()).await
    }

    fn control_url(&self, endpoint: &str, key: &str) -> reqwest::Url {
        let mut url =
            reqwest::Url::parse(&format!("{}/{endpoint}", self.url)).expect("peer URL parses");
        url.query_pairs_mut().append_pair("key", key);
        url
    }

    async fn json<T: for<'de> Deserialize<'de>>(&self, url: &str) -> T {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {url}: {error}"));
        assert_eq!(response.status(), 200, "GET {url}");
        let body = response.bytes().await.expect("body");
        serde_json::from_slice(&body).unwrap_or_else(|error| {
            panic!("GET {url}: {error}: {}", String::from_utf8_lossy(&body))
        })
    }
}

/// The Go getter's invocations on one peer (`GET /loads`).
#[derive(Debug, Clone, Deserialize)]
pub struct GoLoads {
    /// All keys.
    pub total: u64,
    /// Per key; absent keys were never loaded.
    pub per_key: HashMap<String, u64>,
}

impl GoLoads {
    /// Loads of `key`.
    pub fn of(&self, key: &str) -> u64 {
        self.per_key.get(key).copied().unwrap_or(0)
    }
}

/// golang/groupcache's `Stats` of the group (`GET /stats`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct GoStats {
    /// Gets of the group on this peer.
    pub gets: i64,
    /// Hits in either cache.
    pub cache_hits: i64,
    /// Values fetched from a peer.
    pub peer_loads: i64,
    /// Failed peer fetches.
    pub peer_errors: i64,
    /// Gets that missed the caches.
    pub loads: i64,
    /// Those that did the work (after singleflight).
    pub loads_deduped: i64,
    /// Successful runs of the getter.
    pub local_loads: i64,
    /// Failed runs of the getter.
    pub local_load_errs: i64,
    /// Requests served to peers.
    pub server_requests: i64,
}

#[derive(Deserialize)]
struct StatsResponse {
    stats: GoStats,
}

/// The Go ring's answer for one key (`GET /owner`).
#[derive(Debug, Clone, Deserialize)]
pub struct GoOwner {
    /// The exact peer URL from the list; empty when the list is.
    pub owner: String,
    /// Whether the Go peer would load the key itself.
    pub is_self: bool,
}
