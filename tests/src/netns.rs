//! Network namespaces for the partition tests: each replica gets a namespace of its own, and
//! nftables drop rules cut the network between groups of them while the test process (in the
//! root namespace) still reaches every replica's control port.
//!
//! [`Network::new`] builds, for `n` replicas:
//!
//! ```text
//!   root namespace            hub namespace                 replica namespaces
//!   gc{pid}x{seq} ── veth ── host ┐
//!   198.18.K.254/24               ├─ br0 ─ p0 ── veth ── eth0 198.18.K.1/24  (gc-{pid}-{seq}-0)
//!                                 │      ─ p1 ── veth ── eth0 198.18.K.2/24  (gc-{pid}-{seq}-1)
//!                                 │      ─ ...
//! ```
//!
//! The bridge lives in a namespace of its own, so replica-to-replica traffic is switched there and
//! never meets the root namespace's firewall or forwarding settings; the root namespace only gains
//! one interface, with an address in 198.18.0.0/15 (RFC 2544's benchmarking range, which no real
//! network uses). The subnet (`K`) is chosen under a file lock among those not in use by the root
//! namespace, so test binaries running at the same time never share one. Namespace names carry
//! the process id; namespaces left behind by a process that died without cleaning up (SIGKILL)
//! are deleted by the next [`Network::new`].
//!
//! [`Network::partition`] installs an `inet` table in each replica namespace of either side that
//! drops every packet to or from the other side (drop, not reject: as in a real partition,
//! connects hang until their timeout and requests until theirs). [`Network::heal`] deletes the
//! tables. Dropping the [`Network`] deletes every namespace, which takes the bridge and every veth
//! with it, on every path, a panic included.
//!
//! Tests start with [`available`]: it returns false (after a loud `SKIPPED` message) when not
//! root, when `ip` or `nft` is missing, or when namespaces cannot be created here; with
//! `CI=true` it panics instead, so CI cannot skip silently.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Prefix of every namespace this module creates.
const PREFIX: &str = "gc-";

/// The nftables table a partition installs.
const TABLE: &str = "gc_partition";

/// Serialises subnet choice and setup across processes.
const LOCK: &str = "/tmp/groupcache-tests-netns.lock";

/// Whether partition tests can run here. Returns false after printing a loud `*** SKIPPED`
/// message when not root, when `ip` or `nft` is missing, or when network namespaces cannot be
/// created (an unprivileged container).
///
/// # Panics
///
/// When they cannot run and the environment variable `CI` is `true`.
pub fn available() -> bool {
    // Checked once per process: tests of one binary run at the same time.
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let Err(why) = CHECK.get_or_init(check) else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI=true but the partition tests cannot run: {why}\n\
             They need root, iproute2 and nftables (scripts/test.sh installs the packages)."
        );
    }
    // Straight to the process's stderr: the test harness captures `eprintln!`.
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {test}: network namespaces are not available: {why}.\n\
         *** Run as root with iproute2 and nftables installed (scripts/test.sh installs them) to \
         run it; with CI=true this is a failure.\n"
    );
    false
}

fn check() -> Result<(), String> {
    if effective_uid() != Some(0) {
        return Err("not running as root".into());
    }
    for (tool, arg, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !ok {
            return Err(format!("no `{tool}` on PATH (Debian package {package})"));
        }
    }
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    let added = output(Command::new("ip").args(["netns", "add", &probe]));
    let _ = output(Command::new("ip").args(["netns", "delete", &probe]));
    added.map_err(|error| format!("cannot create a network namespace: {error}"))?;
    Ok(())
}

/// The effective uid, from `/proc/self/status` (no libc in this crate).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// One replica's namespace.
#[derive(Debug, Clone)]
pub struct Node {
    /// The namespace's name, for `ProcessReplica::start_in_netns` (`tests/src/process.rs`).
    pub netns: String,
    /// Its address on the shared bridge; replicas listen on it.
    pub addr: Ipv4Addr,
}

/// Namespaces on one bridge, reachable from the test process; deleted when dropped.
#[derive(Debug)]
pub struct Network {
    /// One per replica, in the order asked for.
    pub nodes: Vec<Node>,
    /// The test process's own address on the bridge (in the root namespace): a server of the
    /// test bound to it (a source of truth the replicas' loaders read) is reachable from every
    /// replica, and a partition never cuts it.
    pub host: Ipv4Addr,
    /// Every namespace created so far (the hub included), deleted on drop.
    created: Vec<String>,
    /// Namespaces that currently hold partition rules.
    partitioned: Vec<String>,
}

impl Network {
    /// Creates `n` replica namespaces on one bridge, each with one address and loopback up, and
    /// an address for the test process in the same subnet.
    ///
    /// # Panics
    ///
    /// When a command fails; whatever was already created is deleted first.
    pub fn new(n: usize) -> Network {
        assert!((1..=250).contains(&n), "1 to 250 replicas");
        static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
        let pid = std::process::id();
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{pid}-{seq}");

        let lock = File::create(LOCK).unwrap_or_else(|error| panic!("creating {LOCK}: {error}"));
        lock.lock()
            .unwrap_or_else(|error| panic!("locking {LOCK}: {error}"));
        remove_stale_namespaces();
        let subnet = free_subnet();

        let mut network = Network {
            nodes: Vec::new(),
            host: Ipv4Addr::new(198, 18, subnet, 254),
            created: Vec::new(),
            partitioned: Vec::new(),
        };
        // From here on, a panic drops `network`, which deletes what was created.
        let hub = format!("{base}-hub");
        network.add_namespace(&hub);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..n {
            let netns = format!("{base}-{i}");
            network.add_namespace(&netns);
            let port = format!("p{i}");
            let addr = Ipv4Addr::new(198, 18, subnet, i as u8 + 1);
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &netns,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
            network.nodes.push(Node { netns, addr });
        }
        // The test process's own way in. The interface lives in the root namespace, but its peer
        // is in the hub: deleting the hub deletes both.
        let root_link = format!("gc{pid}x{seq}");
        ip(&[
            "link", "add", &root_link, "type", "veth", "peer", "name", "host", "netns", &hub,
        ]);
        ip(&["-n", &hub, "link", "set", "host", "master", "br0", "up"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", network.host),
            "dev",
            &root_link,
        ]);
        ip(&["link", "set", &root_link, "up"]);
        drop(lock); // the subnet is now visible to the next process's `free_subnet`
        network
    }

    fn add_namespace(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.created.push(name.to_owned());
    }

    /// Cuts every path between the replicas of `left` and those of `right` (indices into
    /// [`Network::nodes`]), in both directions, by dropping packets; the test process still
    /// reaches everyone, and replicas on the same side still reach each other.
    ///
    /// # Panics
    ///
    /// When a side is empty, a replica is on both sides, or the network is already partitioned.
    pub fn partition(&mut self, left: &[usize], right: &[usize]) {
        assert!(
            self.partitioned.is_empty(),
            "already partitioned: heal first"
        );
        assert!(!left.is_empty() && !right.is_empty(), "two non-empty sides");
        assert!(
            left.iter().all(|i| !right.contains(i)),
            "a replica on both sides"
        );
        for (side, other) in [(left, right), (right, left)] {
            let others: Vec<String> = other
                .iter()
                .map(|&i| self.nodes[i].addr.to_string())
                .collect();
            let others = others.join(", ");
            let rules = format!(
                "table inet {TABLE} {{\n\
                   chain input {{ type filter hook input priority 0; policy accept; \
                     ip saddr {{ {others} }} drop; }}\n\
                   chain output {{ type filter hook output priority 0; policy accept; \
                     ip daddr {{ {others} }} drop; }}\n\
                 }}\n"
            );
            for &i in side {
                let netns = self.nodes[i].netns.clone();
                nft(&netns, &["-f", "-"], Some(&rules));
                self.partitioned.push(netns);
            }
        }
    }

    /// Deletes every partition rule: the network is whole again.
    pub fn heal(&mut self) {
        for netns in std::mem::take(&mut self.partitioned) {
            nft(&netns, &["delete", "table", "inet", TABLE], None);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Never panics: this runs on every path, unwinding from a failed assertion included.
        // Processes still running in a namespace keep it alive until they exit, but its name and
        // (once the hub is gone) every link to the others disappear at once.
        for netns in self.created.iter().rev() {
            if let Err(error) = output(Command::new("ip").args(["netns", "delete", netns])) {
                eprintln!("netns: deleting {netns}: {error}");
            }
        }
    }
}

/// Deletes namespaces of this module whose process is gone (one killed before its drop ran).
fn remove_stale_namespaces() {
    let Ok(list) = output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = output(Command::new("ip").args(["netns", "delete", name]));
        }
    }
}

/// The first `K` such that the root namespace has no address or route in 198.18.K.0/24.
fn free_subnet() -> u8 {
    let addresses = output(Command::new("ip").args(["-4", "-o", "addr", "show"]))
        .unwrap_or_else(|error| panic!("ip addr show: {error}"));
    let routes = output(Command::new("ip").args(["-4", "route", "show", "table", "all"]))
        .unwrap_or_else(|error| panic!("ip route show: {error}"));
    (0..=255u8)
        .find(|k| {
            let prefix = format!("198.18.{k}.");
            !addresses.contains(&prefix) && !routes.contains(&prefix)
        })
        .expect("a free /24 in 198.18.0.0/16")
}

fn ip(args: &[&str]) {
    if let Err(error) = output(Command::new("ip").args(args)) {
        panic!("ip {}: {error}", args.join(" "));
    }
}

fn nft(netns: &str, args: &[&str], stdin: Option<&str>) {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, "nft"]).args(args);
    let result = match stdin {
        None => output(&mut command),
        Some(input) => output_with_stdin(&mut command, input),
    };
    if let Err(error) = result {
        panic!("ip netns exec {netns} nft {}: {error}", args.join(" "));
    }
}

/// Runs `command`; its stdout on success, else a description with its stderr.
fn output(command: &mut Command) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run: {error}"))?;
    checked(output)
}

fn output_with_stdin(command: &mut Command, input: &str) -> Result<String, String> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run: {error}"))?;
    let written = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes());
    let output = child
        .wait_with_output()
        .map_err(|error| format!("waiting: {error}"))?;
    written.map_err(|error| format!("writing stdin: {error}"))?;
    checked(output)
}

fn checked(output: Output) -> Result<String, String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
