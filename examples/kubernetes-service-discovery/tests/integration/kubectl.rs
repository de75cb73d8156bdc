//! The fake Kubernetes API server (`fake_apiserver`) checked by a real client: `kubectl`
//! (client-go) lists EndpointSlices from it page by page, watches them from the list's
//! `resourceVersion` and sees a change, and decodes the `410 Gone` a watch from a compacted
//! version gets. If the fake drifted from what an API server says, client-go would refuse it.
//!
//! `kubectl` comes from the machine (Debian's `kubernetes-client` where there is none; see
//! `scripts/install-test-deps.sh`). Without it the test is skipped loudly, or fails with
//! `CI=true`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::fake_apiserver::{FakeApiServer, endpoint_slice};
use crate::process::{PATIENCE, TempDir, require_tool};

const NAMESPACE: &str = "shop";
const SERVICE: &str = "shop-peers";

/// A kubeconfig pointing at `server`, in `dir`.
fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         users:\n- name: test\n  user:\n    token: test\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: test\n    namespace: {NAMESPACE}\n\
         current-context: fake\n"
    );
    std::fs::write(&path, config).expect("write the kubeconfig");
    path
}

fn kubectl(kubectl: &Path, config: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(kubectl);
    command
        .arg("--kubeconfig")
        .arg(config)
        .arg("--cache-dir")
        .arg(dir.join("kube-cache"))
        .args(args)
        .env("HOME", dir)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null());
    command
}

/// `kubectl get endpointslices -l SELECTOR -w` printing JSON watch events (its stderr in
/// `{name}.stderr`), once it has printed the three slices it lists first.
async fn watch(tool: &Path, config: &Path, dir: &Path, selector: &str, name: &str) -> Watcher {
    let args = [
        "get",
        "endpointslices",
        "-l",
        selector,
        "-w",
        "-o",
        "json",
        "--output-watch-events",
    ];
    let mut watcher = Watcher::spawn(
        kubectl(tool, config, dir, &args),
        dir.join(format!("{name}.stderr")),
    );
    for _ in 0..3 {
        assert_eq!(watcher.next().await["type"], "ADDED");
    }
    watcher
}

/// Waits until `done` holds, within [`PATIENCE`]; fails with `why` otherwise. The fake API
/// server counts requests as they arrive, but signals nothing: this looks every 20 ms.
async fn until(done: impl Fn() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running `kubectl get -w`: its stdout parsed as the JSON objects it prints, as they come.
struct Watcher {
    child: Child,
    objects: mpsc::Receiver<Value>,
    stderr: PathBuf,
}

impl Watcher {
    fn spawn(mut command: Command, stderr: PathBuf) -> Watcher {
        let file = std::fs::File::create(&stderr).expect("a stderr file");
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .expect("start kubectl");
        let mut stdout = child.stdout.take().expect("kubectl's stdout");
        let (send, objects) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
                let mut stream = serde_json::Deserializer::from_slice(&buffer).into_iter::<Value>();
                let mut consumed = 0;
                while let Some(Ok(value)) = stream.next() {
                    consumed = stream.byte_offset();
                    if send.send(value).is_err() {
                        return;
                    }
                }
                buffer.drain(..consumed);
            }
        });
        Watcher {
            child,
            objects,
            stderr,
        }
    }

    /// The next object printed, within [`PATIENCE`].
    async fn next(&mut self) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.objects.try_recv() {
                Ok(value) => return value,
                Err(mpsc::TryRecvError::Disconnected) => panic!(
                    "kubectl stopped printing; stderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            assert!(Instant::now() < deadline, "kubectl printed nothing new");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_and_watches_endpoint_slices_from_the_fake_api_server() {
    let Some(tool) = require_tool("kubectl") else {
        return;
    };
    let dir = TempDir::new("kubectl");
    let api = FakeApiServer::start().await;
    let slice = |name: &str, addresses: &[(&str, bool)]| {
        endpoint_slice(NAMESPACE, name, SERVICE, 8080, addresses)
    };
    api.apply(slice("shop-peers-a", &[("10.0.0.1", true)]));
    api.apply(slice("shop-peers-b", &[("10.0.0.2", true)]));
    api.apply(slice("shop-peers-c", &[("10.0.0.3", false)]));
    let config = kubeconfig(dir.path(), &api.url);
    let selector = format!("kubernetes.io/service-name={SERVICE}");

    // A list in pages of one (`limit` and `continue`), as client-go reads it.
    let output = kubectl(
        &tool,
        &config,
        dir.path(),
        &[
            "get",
            "endpointslices",
            "-l",
            &selector,
            "-o",
            "json",
            "--chunk-size=1",
        ],
    )
    .output()
    .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl get failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let list: Value = serde_json::from_slice(&output.stdout).expect("kubectl printed JSON");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["shop-peers-a", "shop-peers-b", "shop-peers-c"]);
    assert!(api.lists() >= 3, "one request per page: {}", api.describe());

    // A list, then a watch from the list's resourceVersion: the change made after the list
    // arrives as MODIFIED.
    let mut watcher = watch(&tool, &config, dir.path(), &selector, "watch").await;
    until(
        || api.watch_requests() >= 1,
        || format!("kubectl never watched: {}", api.describe()),
    )
    .await;
    api.apply(slice("shop-peers-c", &[("10.0.0.3", true)]));
    let event = watcher.next().await;
    assert_eq!(event["type"], "MODIFIED", "{event}");
    assert_eq!(event["object"]["metadata"]["name"], "shop-peers-c");
    assert_eq!(event["object"]["endpoints"][0]["conditions"]["ready"], true);
    drop(watcher);

    // A watch from a version compacted away between the list and the watch: 410 Gone, which
    // client-go decodes as an `Expired` Status.
    let open = api.hold_watches();
    let watches_before = api.watch_requests();
    let watcher = watch(&tool, &config, dir.path(), &selector, "gone").await;
    until(
        || api.held_watches() >= 1,
        || format!("kubectl never watched: {}", api.describe()),
    )
    .await;
    api.apply(slice("shop-peers-d", &[("10.0.0.4", true)]));
    api.compact();
    open.send_replace(true);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Ok(event) = watcher.objects.try_recv()
            && event["type"] == "ERROR"
        {
            break Some(event["object"].clone());
        }
        let stderr = watcher.stderr();
        if stderr.contains("too old resource version") {
            break None;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl did not report the 410: {stderr}; {}",
            api.describe()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(status) = status {
        assert_eq!(status["kind"], "Status", "{status}");
        assert_eq!(status["code"], 410, "{status}");
        assert_eq!(status["reason"], "Expired", "{status}");
    }
    assert!(api.gone_sent() >= 1);
    assert!(api.watch_requests() > watches_before);
}
