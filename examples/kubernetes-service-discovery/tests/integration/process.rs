//! Real processes for the service tests: replicas of the example's binary, Prometheus and
//! promtool (Debian's `prometheus` package), each on free loopback ports, with their logs in a
//! temporary directory that is printed when a test fails.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// The service binary under test.
pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_kubernetes-service-discovery");

/// How long a process may take to become ready, or a condition to hold.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// A directory for one test's files, removed at the end unless the test failed.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "ksd-{name}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test's directory");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = writeln!(std::io::stderr(), "test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `n` ports that were free a moment ago. Whoever binds one must cope with losing the race
/// (the callers retry with new ports).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}

/// A child process, killed when dropped; its output goes to `log`.
pub(crate) struct Process {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    pub(crate) fn spawn(name: &str, mut command: Command, dir: &Path) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create a log file");
        let err = file.try_clone().expect("clone the log file");
        command.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("starting {name} ({command:?}): {error}"));
        Process {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status, if the process has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits (bounded) for the process to exit.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let _ = writeln!(
                std::io::stderr(),
                "--- last lines of {} ({}):\n{}",
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// An HTTP client for the tests (no proxies, bounded).
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .expect("HTTP client")
}

/// GET `url`: status and body (connection errors as status 0).
pub(crate) async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    match http.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            (status, body)
        }
        Err(error) => (0, error.to_string()),
    }
}

/// One replica of the service.
pub(crate) struct Replica {
    pub process: Process,
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Where it serves the peer protocol: `http://127.0.0.1:peer_port`, else `url`.
    pub peer_url: String,
}

/// Why a replica did not become ready.
pub(crate) enum Start {
    Ready,
    /// It exited, e.g. because another process took its port first.
    Exited(String),
}

impl Replica {
    /// Starts a replica on `port`, serving the peer protocol on `peer_port` if given
    /// (`--peer-listen`). `args` and `env` are added to the defaults: no shutdown delay
    /// (`--shutdown-delay` overrides it) and `RUST_LOG=info`.
    pub(crate) fn spawn(
        name: &str,
        port: u16,
        peer_port: Option<u16>,
        args: &[String],
        env: &[(&str, String)],
        dir: &Path,
    ) -> Replica {
        let mut command = Command::new(BINARY);
        command.args(["--listen", &format!("127.0.0.1:{port}")]);
        // Without a peer port of its own, on the main port (`shared`): the default port of
        // its own (127.0.0.1:9080) would be one for all the tests' replicas.
        match peer_port {
            Some(peer_port) => {
                command.args(["--peer-listen", &format!("127.0.0.1:{peer_port}")]);
            }
            None if !args.iter().any(|arg| arg == "--peer-listen") => {
                command.args(["--peer-listen", "shared"]);
            }
            None => {}
        }
        command
            .args(args)
            .env("SHUTDOWN_DELAY", "0s")
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("PEERS")
            .env_remove("KUBE_SERVICE")
            .env_remove("POD_IP")
            .env_remove("SELF_URL")
            .env_remove("PEER_LISTEN_ADDR");
        for (key, value) in env {
            command.env(key, value);
        }
        Replica {
            process: Process::spawn(name, command, dir),
            url: format!("http://127.0.0.1:{port}"),
            peer_url: format!("http://127.0.0.1:{}", peer_port.unwrap_or(port)),
        }
    }

    /// Starts a replica on a free port, alone, and waits until it is ready. Retries with a new
    /// port (bounded) when it loses its port to another process.
    pub(crate) async fn start(name: &str, args: &[&str], dir: &Path) -> Replica {
        let http = http();
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        for attempt in 1..=3 {
            let port = free_ports(1)[0];
            let name = format!("{name}-attempt-{attempt}");
            let mut replica = Replica::spawn(&name, port, None, &args, &[], dir);
            match replica.wait_for_status(&http, "/readyz", 200).await {
                Start::Ready => return replica,
                Start::Exited(why) if attempt < 3 && why.contains("in use") => {
                    eprintln!("{name} lost its port; starting again: {why}");
                }
                Start::Exited(why) => panic!("{name} did not start: {why}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Waits (bounded) until `path` answers `status`, or the process exits.
    pub(crate) async fn wait_for_status(
        &mut self,
        http: &reqwest::Client,
        path: &str,
        status: u16,
    ) -> Start {
        let deadline = Instant::now() + PATIENCE;
        let url = format!("{}{path}", self.url);
        loop {
            if let Some(exit) = self.process.exited() {
                return Start::Exited(format!("exited with {exit}: {}", self.process.log_text()));
            }
            let (got, body) = get(http, &url).await;
            if got == status {
                return Start::Ready;
            }
            assert!(
                Instant::now() < deadline,
                "{url} did not answer {status} within {PATIENCE:?}: last {got} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of a metric line of `/metrics` (the first whose name and labels start with
    /// `prefix`), if present.
    pub(crate) async fn metric(&self, http: &reqwest::Client, prefix: &str) -> Option<f64> {
        let (status, body) = get(http, &format!("{}/metrics", self.url)).await;
        if status != 200 {
            return None;
        }
        body.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }
}

/// Where a cluster's replicas serve the peer protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerPort {
    /// On the main port.
    Shared,
    /// On a port of its own (`--peer-listen`).
    Own,
    /// On a port of its own, with mTLS: peers are `https://` URLs.
    OwnTls,
}

/// Replicas in static mode, each listing all of them with `--peers`.
pub(crate) struct Cluster {
    pub replicas: Vec<Replica>,
}

impl Cluster {
    /// Starts `n` replicas and waits until each is ready; unless `peer_port` is `Shared`, each
    /// serves the peer protocol on a port of its own (the TLS flags, for `OwnTls`, come in
    /// `args`). Retries with new ports (bounded) when one loses a port to another process.
    pub(crate) async fn start_static(
        n: usize,
        peer_port: PeerPort,
        args: &[&str],
        dir: &Path,
    ) -> Cluster {
        let http = http();
        let peer_ports = peer_port != PeerPort::Shared;
        let scheme = if peer_port == PeerPort::OwnTls {
            "https"
        } else {
            "http"
        };
        for attempt in 1..=3 {
            let ports = free_ports(if peer_ports { 2 * n } else { n });
            let (ports, extra) = ports.split_at(n);
            let peer_ports: Vec<Option<u16>> = (0..n).map(|i| extra.get(i).copied()).collect();
            let peers: Vec<String> = ports
                .iter()
                .zip(&peer_ports)
                .map(|(port, peer_port)| {
                    format!("{scheme}://127.0.0.1:{}", peer_port.unwrap_or(*port))
                })
                .collect();
            let mut all_args = vec!["--peers".to_owned(), peers.join(",")];
            all_args.extend(args.iter().map(|arg| (*arg).to_owned()));
            let mut replicas: Vec<Replica> = ports
                .iter()
                .zip(&peer_ports)
                .zip(&peers)
                .enumerate()
                .map(|(i, ((port, peer_port), peer_url))| Replica {
                    peer_url: peer_url.clone(),
                    ..Replica::spawn(
                        &format!("replica-{i}-attempt-{attempt}"),
                        *port,
                        *peer_port,
                        &all_args,
                        &[],
                        dir,
                    )
                })
                .collect();
            let mut failed = None;
            for replica in &mut replicas {
                if let Start::Exited(why) = replica.wait_for_status(&http, "/readyz", 200).await {
                    failed = Some(why);
                    break;
                }
            }
            match failed {
                None => return Cluster { replicas },
                Some(why) if attempt < 3 && why.contains("in use") => {
                    eprintln!("a replica lost its port; starting again: {why}");
                }
                Some(why) => panic!("a replica did not start: {why}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// `127.0.0.1:port` of each replica.
    pub(crate) fn addresses(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|replica| replica.url.trim_start_matches("http://").to_owned())
            .collect()
    }
}

/// Finds `tool` on PATH. Without it: `None` after a loud message, or a panic when `CI=true`.
pub(crate) fn require_tool(tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    });
    if found.is_some() {
        return found;
    }
    let install = "examples/kubernetes-service-discovery/scripts/install-test-deps.sh (as root; \
                   Debian packages `prometheus` and `kubernetes-client`, PyPI's `schemathesis`)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but `{tool}` is not on PATH. Install it with {install}.");
    }
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    // Straight to the process's stderr: the test harness captures `eprintln!`.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {test}: `{tool}` is not on PATH.\n\
         *** Install it with {install} to run it; with CI=true this is a failure.\n"
    );
    None
}

/// A Prometheus server of the test's own, scraping `targets` every second.
pub(crate) struct Prometheus {
    pub url: String,
    _process: Process,
}

impl Prometheus {
    pub(crate) async fn start(binary: &Path, targets: &[String], dir: &Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: groupcache\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let http = http();
        for attempt in 1..=3 {
            let port = free_ports(1)[0];
            let storage = dir.join(format!("data-{attempt}"));
            let mut command = Command::new(binary);
            command.args([
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", storage.display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--log.level=warn".to_owned(),
            ]);
            let mut process =
                Process::spawn(&format!("prometheus-attempt-{attempt}"), command, dir);
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Some(status) = process.exited() {
                    let log = process.log_text();
                    if attempt < 3 && log.contains("address already in use") {
                        eprintln!("Prometheus lost its port; starting again");
                        break;
                    }
                    panic!("Prometheus exited with {status}:\n{log}");
                }
                if get(&http, &format!("{url}/-/ready")).await.0 == 200 {
                    return Prometheus {
                        url,
                        _process: process,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "Prometheus not ready within {PATIENCE:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("Prometheus did not start");
    }

    /// An instant query: each result's labels and value.
    pub(crate) async fn query(&self, http: &reqwest::Client, promql: &str) -> Vec<(Value, f64)> {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.url)).expect("URL");
        url.query_pairs_mut().append_pair("query", promql);
        let (status, body) = get(http, url.as_str()).await;
        assert_eq!(status, 200, "query {promql:?}: {body}");
        let json: Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
        json["data"]["result"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .map(|result| {
                        let value = result["value"][1]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(f64::NAN);
                        (result["metric"].clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A query whose result is one number (`None` when it has no result yet).
    pub(crate) async fn scalar(&self, http: &reqwest::Client, promql: &str) -> Option<f64> {
        let results = self.query(http, promql).await;
        match results.as_slice() {
            [] => None,
            [(_, value)] => Some(*value),
            more => panic!("{promql:?} has {} results: {more:?}", more.len()),
        }
    }
}
