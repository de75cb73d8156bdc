//! The documentation, run as written, and the OpenAPI document held to the service:
//!
//! - the README's "Run locally" block: three replicas, the reads and `cachectl`, pasted as they
//!   are (only `target/debug/` becomes this build's directory);
//! - `kubectl kustomize` on the base and both overlays, after the README's `openssl` step;
//! - schemathesis with every check over the whole document, against a replica on PostgreSQL,
//!   for a bounded time (`GROUPCACHE_TEST_SCHEMATHESIS_SECONDS`, 60 by default; the README's
//!   figure is a run of 300).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::postgres::PgServer;
use crate::process::{BINARY, Process, Replica, Start, TempDir, get, http, require_tool};

const README: &str = include_str!("../../README.md");
const EXAMPLE: &str = env!("CARGO_MANIFEST_DIR");

/// The first ```sh block after `heading`.
fn sh_block(heading: &str) -> Vec<&'static str> {
    let section = &README[README.find(heading).expect("the README has the heading")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = start + section[start..].find("```").expect("the block ends");
    section[start..end].lines().collect()
}

/// A README line with `target/debug/` pointing at this build's binaries.
fn with_binaries(line: &str) -> String {
    let dir = Path::new(BINARY).parent().expect("the binaries' directory");
    line.replace("target/debug/", &format!("{}/", dir.display()))
}

fn bash(line: &str, env: &[(String, String)]) -> Command {
    let mut command = Command::new("bash");
    command
        .args(["-c", &format!("exec {}", with_binaries(line))])
        .envs(env.iter().cloned())
        // What the README's terminals would not have set.
        .env("SHUTDOWN_DELAY", "0s")
        .env("RUST_LOG", "info")
        .env_remove("CACHECTL_SERVER")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("PEER_LISTEN_ADDR")
        .env_remove("LISTEN_ADDR")
        .env_remove("DATABASE_URL")
        .env_remove("PEER_SECRET_FILE");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_local_recipe_runs_as_written() {
    let dir = TempDir::new("docs-recipe");
    let http = http();
    let block = sh_block("## Run locally");
    let mut env = Vec::new();
    let mut replicas = Vec::new();
    let mut ports = Vec::new();
    let mut cachectl = Vec::new();
    for line in &block {
        if let Some(assignment) = line.strip_prefix("export ") {
            let (name, value) = assignment.split_once('=').expect("NAME=value");
            env.push((name.to_owned(), value.to_owned()));
        } else if line.starts_with("target/debug/kubernetes-service-discovery") {
            let listen = line
                .split_whitespace()
                .skip_while(|word| *word != "--listen")
                .nth(1)
                .expect("--listen ADDR");
            let name = format!("replica-{}", replicas.len());
            replicas.push(Replica {
                process: Process::spawn(&name, bash(line, &env), dir.path()),
                url: format!("http://{listen}"),
                peer_url: String::new(),
            });
        } else if let Some(rest) = line.strip_prefix("for port in ") {
            let list = rest.split(';').next().expect("the ports");
            ports = list.split_whitespace().map(str::to_owned).collect();
        } else if line.starts_with("target/debug/cachectl") {
            cachectl.push(*line);
        }
    }
    assert_eq!(replicas.len(), 3, "three replicas in {block:#?}");
    for replica in &mut replicas {
        if let Start::Exited(why) = replica.wait_for_status(&http, "/readyz", 200).await {
            panic!(
                "a replica of the README's recipe did not start (are ports 8080-8082 and \
                 9080-9082 free?): {why}"
            );
        }
        assert!(
            !replica.process.log_text().contains("WARNING"),
            "the recipe's replicas start without warnings:\n{}",
            replica.process.log_text()
        );
    }

    // The `for port` line: the same owner and loader from every replica.
    assert_eq!(ports.len(), 3, "{block:#?}");
    let mut answers = Vec::new();
    for port in &ports {
        let (status, body) = get(&http, &format!("http://localhost:{port}/items/42")).await;
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        answers.push((body["owner"].clone(), body["item"]["loaded_by"].clone()));
    }
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "{answers:?}"
    );

    // `cachectl put` (the default server), then `get` through the third replica.
    assert_eq!(cachectl.len(), 2, "{block:#?}");
    let put = bash(cachectl[0], &env).output().expect("run cachectl");
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let read = bash(cachectl[1], &env).output().expect("run cachectl");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let value: Value = serde_json::from_slice(&read.stdout).expect("the value, as JSON");
    assert_eq!(value, serde_json::json!({"n": 1}));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read a directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// The minor version of `kubectl`'s client (`"32+"` reads as 32).
fn kubectl_minor(kubectl: &Path) -> Option<u32> {
    let output = Command::new(kubectl)
        .args(["version", "--client", "-o", "json"])
        .output()
        .ok()?;
    let version: Value = serde_json::from_slice(&output.stdout).ok()?;
    let minor = version["clientVersion"]["minor"].as_str()?;
    minor.trim_end_matches('+').parse().ok()
}

/// The oldest `kubectl` whose built-in kustomize (v4.2) reads the manifests' `labels:` field;
/// Debian 12's `kubernetes-client` (1.20, kustomize v2.0.3) is older.
const KUSTOMIZE_KUBECTL_MINOR: u32 = 22;

#[test]
fn kustomize_builds_the_base_and_every_overlay_after_the_readme_step() {
    let Some(kubectl) = require_tool("kubectl") else {
        return;
    };
    // The README creates the secret before the first `kubectl apply -k`.
    let step = "openssl rand -hex 32 > examples/kubernetes-service-discovery/k8s/base/peer-secret";
    let deploy = &README[README.find("## Deploy").expect("a Deploy section")..];
    let first_apply = deploy.find("\nkubectl apply -k").expect("an apply command");
    assert!(
        deploy.find(step).is_some_and(|at| at < first_apply),
        "the Deploy steps create k8s/base/peer-secret before the first apply"
    );
    let minor = kubectl_minor(&kubectl);
    if minor.is_none_or(|minor| minor < KUSTOMIZE_KUBECTL_MINOR) {
        // Skipped even with CI=true: no registry this project installs from (Debian 12's
        // `kubernetes-client` is 1.20) has a newer one; the machines' image brings 1.32.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: kustomize overlays: {} is kubectl 1.{minor:?}: its kustomize cannot \
             build these manifests; the README asks for kubectl 1.{KUSTOMIZE_KUBECTL_MINOR} or \
             newer, which Debian 12 does not package\n",
            kubectl.display()
        );
        return;
    }

    let dir = TempDir::new("docs-kustomize");
    let k8s = dir.path().join("k8s");
    copy_dir(&Path::new(EXAMPLE).join("k8s"), &k8s);
    let _ = std::fs::remove_file(k8s.join("base/peer-secret"));
    let build = |path: &PathBuf| {
        Command::new(&kubectl)
            .arg("kustomize")
            .arg(path)
            .env("HOME", dir.path())
            .output()
            .expect("run kubectl kustomize")
    };
    let targets = [
        k8s.clone(),
        k8s.join("overlays/dev"),
        k8s.join("overlays/production"),
    ];
    // Without the secret, every one fails rather than deploy replicas without it.
    for target in &targets {
        let output = build(target);
        assert!(
            !output.status.success(),
            "{} built without peer-secret",
            target.display()
        );
    }
    // The step (as `openssl rand -hex 32` writes it: 64 hex digits and a newline).
    std::fs::write(
        k8s.join("base/peer-secret"),
        format!("{}\n", "ab".repeat(32)),
    )
    .expect("write the secret");
    for target in &targets {
        let output = build(target);
        let yaml = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "kubectl kustomize {}: {}",
            target.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(yaml.contains("kind: Deployment"), "{yaml}");
        assert!(
            yaml.contains("name: groupcache-example-peer-secret-"),
            "{yaml}"
        );
        assert!(yaml.contains("PEER_SECRET_FILE"), "{yaml}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_the_service_on_postgresql() {
    let Some(schemathesis) = require_tool("schemathesis") else {
        return;
    };
    let Some(pg) = PgServer::start("schemathesis") else {
        return;
    };
    let dir = TempDir::new("docs-schemathesis");
    // With the admin token, given to schemathesis too: `DELETE /items` is tested as an admin's
    // (its checks still send it without the header, expecting 401).
    const ADMIN_TOKEN: &str = "schemathesis-admin-token-0123456789";
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN_TOKEN).expect("write the admin token");
    let token_file = token_file.display().to_string();
    let replica = Replica::start(
        "replica",
        &["--database-url", &pg.url, "--admin-token-file", &token_file],
        dir.path(),
    )
    .await;
    let seconds = std::env::var("GROUPCACHE_TEST_SCHEMATHESIS_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(60);
    let output = Command::new(schemathesis)
        .arg("--config-file")
        .arg(Path::new(EXAMPLE).join("schemathesis.toml"))
        .arg("--no-color")
        .args([
            "run",
            &format!("{}/openapi.json", replica.url),
            "--checks",
            "all",
            "--header",
            &format!("Authorization: Bearer {ADMIN_TOKEN}"),
        ])
        .args(["--max-time", &seconds.to_string()])
        // Its caches (.hypothesis, .schemathesis) go to the test's directory.
        .current_dir(dir.path())
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "{}",
        text.lines().rev().take(12).collect::<Vec<_>>().join("\n")
    );
}
