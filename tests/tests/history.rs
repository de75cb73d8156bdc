//! Read-your-writes, proven by a history checker (issue 23): replicas as processes
//! (`tests/src/bin/replica.rs`) whose loaders read a source of truth that changes
//! (`groupcache_tests::history::source`), clients on every replica doing `get`, `get_many` and
//! writes (increment the source, then `remove` or `set`), every operation recorded, and the whole
//! history checked (`groupcache_tests::history::checker`) against the README's promise: after a
//! write returns `Ok`, no replica serves an older value; where a replica could have missed the
//! write (`Err`, a fault, rings disagreeing), an older value only within `hot_max_age` (plus the
//! slack below) after it.
//!
//! Scenarios, each a test: steady; scale-up; graceful scale-down; rolling restart; an owner
//! SIGKILLed; an owner frozen (SIGSTOP) and resumed; a partition (network namespaces, as in
//! `partition.rs`: root, iproute2 and nftables); Go and Rust replicas mixed (Go replicas and the
//! keys they own are outside the promise: counted apart); and a PostgreSQL table as the source.
//! A test whose tool is missing (nftables, Go, PostgreSQL) is skipped loudly, and fails with
//! `CI=true`.
//!
//! Each runs for at least `HISTORY_SECS` seconds (default 8) and at least
//! [`OPERATIONS`] operations, prints its figures (operations, reads checked, older reads allowed
//! by rule, violations by class with the shortest history of each) and asserts zero violations.
//! By hand, `HISTORY_KEYS` changes the number of keys (default [`KEYS`]; more keys, fewer writes
//! of each), and `HISTORY_RETRY_MS` how long a failed write is retried (default 0: never, so the
//! bound for failed writes rests on the library's repairs alone).
//! The scenarios run one at a time: their bounds are about time, and two clusters sharing two
//! cores would only stretch every load.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use groupcache_rs::RingMode;
use groupcache_tests::go::{self, GoPeer};
use groupcache_tests::history::checker::{self, Config, EventKind, Fault, Report};
use groupcache_tests::history::clients::{Clients, Recorder, Target, Targets, Workload};
use groupcache_tests::history::source::Source;
use groupcache_tests::netns::{self, Network};
use groupcache_tests::postgres::PgServer;
use groupcache_tests::process::{ProcessReplica, owners_in};
use tokio::sync::{Mutex, MutexGuard};

const BINARY: &str = env!("CARGO_BIN_EXE_replica");

/// The README's bound `B`: short, so that a run of seconds sees values expire, and every older
/// read allowed by the bound is checked against it many times over.
const HOT_MAX_AGE: Duration = Duration::from_millis(2000);

/// Each load reads the source, then takes 50 ms plus up to 250 ms more: loads overlap writes,
/// and a slow load carries an old version.
const LOAD_MS: u64 = 50;
const LOAD_JITTER_MS: u64 = 250;

/// Added to the bound. An older value can be stored up to one load after the write it missed
/// ended (the load read the source just before the write), 300 ms, and the test's clock reads
/// the ends of operations late on a loaded 2-core machine: 700 ms more.
const SLACK: Duration = Duration::from_millis(1000);

/// A replica gives up on a peer after this (a frozen or partitioned one), then loads itself.
const PEER_TIMEOUT_MS: u64 = 1000;
const CONNECT_TIMEOUT_MS: u64 = 250;
/// How long an unreachable owner's keys go to their successor.
const OWNER_SUSPICION_MS: u64 = 1000;

/// Operations each scenario records at least: 9 scenarios make the 100,000.
const OPERATIONS: usize = 12_000;

/// The longest a scenario may take to reach [`OPERATIONS`] (or a step of it) beyond its
/// duration: past it, the clients stalled.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Keys, few enough that writes, loads and reads of each overlap all the time.
const KEYS: usize = 40;

/// How long a fault lasts: longer than a peer timeout and a suspicion, so that both end while it
/// does.
const OUTAGE: Duration = Duration::from_millis(2500);

/// How long the rings disagree during a membership change: discovery tells one replica, then
/// the others this much later, as a watch of the Kubernetes API reaches pods at different times.
/// Writes in between are the ones a replica can miss.
const DISCOVERY_LAG: Duration = Duration::from_millis(500);

/// Waits [`DISCOVERY_LAG`]: the disagreement itself, which is what the scenario is about.
async fn discovery_lag() {
    tokio::time::sleep(DISCOVERY_LAG).await;
}

/// Faults in a run that repeats them: two in the default run, one per 15 s in a longer one.
fn rounds() -> usize {
    (secs().as_secs() / 15).max(2) as usize
}

fn secs() -> Duration {
    Duration::from_secs(env_number("HISTORY_SECS", 8))
}

/// The environment variable `name` as a number, else `default`.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |value| {
        value
            .parse()
            .unwrap_or_else(|error| panic!("{name}={value:?}: {error}"))
    })
}

/// One scenario at a time (see the module's documentation). An async lock: each test has a
/// runtime of its own, and the guard is held across the whole run. It does not poison, so a
/// failed scenario does not fail the next.
async fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::const_new(());
    SERIAL.lock().await
}

fn workload() -> Workload {
    Workload {
        keys: (0..env_number("HISTORY_KEYS", KEYS as u64))
            .map(|i| format!("k{i}"))
            .collect(),
        clients: 24,
        // get, get_many, write + remove, write + set
        weights: [70, 14, 8, 8],
        get_many_keys: 4,
        // Not retried: a write that fails stays failed, and the library's own repairs (a member
        // that missed a write is sent it again once it answers) must keep what it left behind
        // within the bound. `HISTORY_RETRY_MS` retries like a user after the README's advice.
        retry_for: Duration::from_millis(env_number("HISTORY_RETRY_MS", 0)),
        seed: 0x23,
    }
}

fn flags(source: &Source) -> Vec<String> {
    [
        ("--source", source.url().to_owned()),
        ("--load-ms", LOAD_MS.to_string()),
        ("--load-jitter-ms", LOAD_JITTER_MS.to_string()),
        ("--hot-max-age-ms", HOT_MAX_AGE.as_millis().to_string()),
        // Every fetched value becomes a hot copy: the copies a write must reach.
        ("--hot-promotion", "1".to_owned()),
        ("--peer-timeout-ms", PEER_TIMEOUT_MS.to_string()),
        ("--connect-timeout-ms", CONNECT_TIMEOUT_MS.to_string()),
        ("--owner-suspicion-ms", OWNER_SUSPICION_MS.to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

fn start(source: &Source, extra: &[&str]) -> Arc<ProcessReplica> {
    let flags = flags(source);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Arc::new(ProcessReplica::start(BINARY, &args))
}

fn urls(replicas: &[Arc<ProcessReplica>]) -> Vec<String> {
    replicas.iter().map(|r| r.url.clone()).collect()
}

async fn set_peers(replicas: &[Arc<ProcessReplica>], peers: &[String]) {
    for replica in replicas {
        replica.set_peers(peers).await;
    }
}

fn rust(replicas: &[Arc<ProcessReplica>]) -> Vec<Target> {
    replicas.iter().cloned().map(Target::Rust).collect()
}

/// Blocks this worker until `replica` has left its ring after SIGTERM (its `left` line).
fn leave(replica: &ProcessReplica) {
    tokio::task::block_in_place(|| replica.terminate_and_wait_left());
}

/// A scenario's run: the clients, the recorder and the clock.
struct Run {
    name: &'static str,
    recorder: Arc<Recorder>,
    targets: Arc<Targets>,
    clients: Clients,
    started: Instant,
    _source: Arc<Source>,
    _serial: MutexGuard<'static, ()>,
}

impl Run {
    fn start(
        name: &'static str,
        serial: MutexGuard<'static, ()>,
        source: Arc<Source>,
        targets: Vec<Target>,
    ) -> Run {
        let recorder = Recorder::new();
        let targets = Targets::new(targets);
        let clients = Clients::start(
            &workload(),
            targets.clone(),
            source.clone(),
            recorder.clone(),
        );
        Run {
            name,
            recorder,
            targets,
            clients,
            started: Instant::now(),
            _source: source,
            _serial: serial,
        }
    }

    /// Waits until `fraction` of the run is done: that share of [`OPERATIONS`] recorded, and of
    /// the duration passed.
    async fn at(&self, fraction: f64) {
        let operations = (OPERATIONS as f64 * fraction) as usize;
        self.recorder
            .wait_operations(operations, secs() + STALL_LIMIT)
            .await;
        let elapsed = self.started.elapsed();
        let due = secs().mul_f64(fraction);
        if elapsed < due {
            // The run's length is what HISTORY_SECS asks for: time itself is the point here.
            tokio::time::sleep(due - elapsed).await;
        }
    }

    /// Runs to the end, stops the clients, checks the history and prints the report.
    ///
    /// # Panics
    ///
    /// On any violation, and when too little was checked for the result to mean anything.
    async fn finish(self, config: Config) -> Report {
        self.at(1.0).await;
        self.clients.stop().await;
        let history = self.recorder.history();
        let report = checker::check(&history, &config);
        let mut out = std::io::stderr().lock();
        let _ = writeln!(
            out,
            "\nhistory {}: {:.1?}, hot_max_age {HOT_MAX_AGE:?} + slack {:?}",
            self.name,
            self.started.elapsed(),
            config.slack
        );
        for event in &history.events {
            let _ = writeln!(out, "  event {event}");
        }
        let _ = write!(out, "{report}");
        drop(out);
        // The report is printed above, with the shortest history of each class.
        assert_eq!(
            report.violation_count(),
            0,
            "{}: the history breaks the promise (see its report above)",
            self.name
        );
        // A quarter: in the mixed scenario most reads are outside the promise.
        assert!(
            report.operations >= OPERATIONS && report.reads_checked >= OPERATIONS / 4,
            "{}: too little was checked:\n{report}",
            self.name
        );
        assert!(
            report.writes - report.writes_failed >= report.writes / 2 && report.writes > 100,
            "{}: most writes should be acknowledged:\n{report}",
            self.name
        );
        report
    }
}

fn config() -> Config {
    Config {
        hot_max_age: HOT_MAX_AGE,
        slack: SLACK,
        ..Config::default()
    }
}

async fn memory_source() -> Arc<Source> {
    Arc::new(Source::memory(IpAddr::V4(Ipv4Addr::LOCALHOST)).await)
}

/// Three replicas, nothing happens to them: every older read must be one whose newer write was
/// still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady() {
    let serial = serial().await;
    let source = memory_source().await;
    let replicas: Vec<_> = (0..3).map(|_| start(&source, &[])).collect();
    set_peers(&replicas, &urls(&replicas)).await;
    let run = Run::start("steady", serial, source, rust(&replicas));
    let report = run.finish(config()).await;
    assert!(
        report
            .older_allowed
            .keys()
            .all(|rule| *rule == checker::Rule::WriteInFlight),
        "nothing but writes in flight can explain an older read here:\n{report}"
    );
}

/// 3 -> 4 -> 5: each new replica joins its own ring first and serves clients at once; the others
/// add it [`DISCOVERY_LAG`] later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up() {
    let serial = serial().await;
    let source = memory_source().await;
    let replicas: Vec<_> = (0..5).map(|_| start(&source, &[])).collect();
    set_peers(&replicas[..3], &urls(&replicas[..3])).await;
    let run = Run::start("scale-up", serial, source, rust(&replicas[..3]));
    for n in 4..=5 {
        run.at((n - 3) as f64 / 3.0).await;
        let change = run
            .recorder
            .begin(EventKind::Membership(format!("{} -> {n}", n - 1)));
        let peers = urls(&replicas[..n]);
        // The new one first: its ring has everyone before anyone sends it a key.
        set_peers(&replicas[n - 1..n], &peers).await;
        // Ready, and serving clients, before the others' discovery has seen it.
        run.targets.add(Target::Rust(replicas[n - 1].clone()));
        discovery_lag().await;
        set_peers(&replicas[..n - 1], &peers).await;
        run.recorder.end(change);
    }
    run.finish(config()).await;
}

/// 4 -> 3 by SIGTERM: the leaving replica leaves its own ring, the others drop it, it drains
/// (answering peers and the hand-off), then dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_scale_down() {
    let serial = serial().await;
    let source = memory_source().await;
    let replicas: Vec<_> = (0..4).map(|_| start(&source, &[])).collect();
    set_peers(&replicas, &urls(&replicas)).await;
    let run = Run::start("graceful scale-down", serial, source, rust(&replicas));
    run.at(1.0 / 3.0).await;
    let leaving = &replicas[3];
    let change = run
        .recorder
        .begin(EventKind::Membership("4 -> 3 (SIGTERM)".into()));
    leave(leaving);
    discovery_lag().await;
    set_peers(&replicas[..3], &urls(&replicas[..3])).await;
    run.recorder.end(change);
    run.targets.remove(&leaving.url);
    run.at(2.0 / 3.0).await;
    leaving.kill(); // the drain ends
    run.finish(config()).await;
}

/// Each of three replicas replaced in turn: the new one joins, the old one gets SIGTERM, leaves,
/// the others drop it, and it dies at the next step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart() {
    let serial = serial().await;
    let source = memory_source().await;
    let mut live: Vec<_> = (0..3).map(|_| start(&source, &[])).collect();
    set_peers(&live, &urls(&live)).await;
    let fresh: Vec<_> = (0..3).map(|_| start(&source, &[])).collect();
    let run = Run::start("rolling restart", serial, source, rust(&live));
    let mut draining: Option<Arc<ProcessReplica>> = None;
    for (step, new) in fresh.into_iter().enumerate() {
        run.at((step + 1) as f64 / 4.0).await;
        if let Some(old) = draining.take() {
            old.kill();
        }
        let old = live.remove(0);
        let change = run.recorder.begin(EventKind::Membership(format!(
            "replace {} by {}",
            old.url, new.url
        )));
        let mut with_new = urls(&live);
        with_new.extend([old.url.clone(), new.url.clone()]);
        set_peers(std::slice::from_ref(&new), &with_new).await;
        run.targets.add(Target::Rust(new.clone()));
        discovery_lag().await;
        set_peers(&live, &with_new).await;
        old.set_peers(&with_new).await;
        leave(&old);
        discovery_lag().await;
        live.push(new);
        set_peers(&live, &urls(&live)).await;
        run.recorder.end(change);
        run.targets.remove(&old.url);
        draining = Some(old);
    }
    run.finish(config()).await;
}

/// An owner SIGKILLed under traffic; the others suspect it, send its keys to their successors,
/// and discovery drops it after [`OUTAGE`]; then a replacement joins, as an orchestrator would
/// start one. Each of [`rounds`] kills the oldest replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_killed() {
    let serial = serial().await;
    let source = memory_source().await;
    let mut live: Vec<_> = (0..3).map(|_| start(&source, &[])).collect();
    set_peers(&live, &urls(&live)).await;
    let run = Run::start("owner SIGKILLed", serial, source.clone(), rust(&live));
    let rounds = rounds();
    for round in 0..rounds {
        run.at((round + 1) as f64 / (rounds + 1) as f64).await;
        let victim = live.remove(0);
        run.targets.remove(&victim.url);
        let fault = run.recorder.begin(EventKind::Fault {
            replica: victim.url.clone(),
            fault: Fault::Killed,
        });
        victim.kill();
        tokio::time::sleep(OUTAGE).await; // the outage, until discovery notices
        set_peers(&live, &urls(&live)).await;
        run.recorder.end(fault);
        let replacement = start(&source, &[]);
        let change = run
            .recorder
            .begin(EventKind::Membership("a replacement joins".into()));
        live.push(replacement.clone());
        set_peers(std::slice::from_ref(&replacement), &urls(&live)).await;
        run.targets.add(Target::Rust(replacement));
        discovery_lag().await;
        set_peers(&live[..live.len() - 1], &urls(&live)).await;
        run.recorder.end(change);
    }
    let report = run.finish(config()).await;
    assert!(
        report.writes_retried + report.writes_failed > 0,
        "writes met the dead owner:\n{report}"
    );
}

/// An owner frozen (SIGSTOP) for [`OUTAGE`], then resumed (SIGCONT): it accepts connections and
/// answers nothing meanwhile, then serves what it held. Each of [`rounds`] freezes another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_frozen_and_resumed() {
    let serial = serial().await;
    let source = memory_source().await;
    let replicas: Vec<_> = (0..3).map(|_| start(&source, &[])).collect();
    set_peers(&replicas, &urls(&replicas)).await;
    let run = Run::start("owner frozen", serial, source, rust(&replicas));
    let rounds = rounds();
    for round in 0..rounds {
        run.at((round + 1) as f64 / (rounds + 1) as f64).await;
        let victim = &replicas[round % replicas.len()];
        run.targets.remove(&victim.url);
        let fault = run.recorder.begin(EventKind::Fault {
            replica: victim.url.clone(),
            fault: Fault::Frozen,
        });
        victim.freeze();
        tokio::time::sleep(OUTAGE).await; // the pause itself
        victim.resume();
        run.recorder.end(fault);
        run.targets.add(Target::Rust(victim.clone()));
    }
    let report = run.finish(config()).await;
    assert!(
        report.writes_retried + report.writes_failed > 0,
        "writes met the frozen owner:\n{report}"
    );
}

/// One replica cut off from the other two for [`OUTAGE`] (network namespaces and nftables drop
/// rules, as in `partition.rs`), then healed; the clients reach every replica throughout. Each of
/// [`rounds`] cuts off another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition() {
    if !netns::available() {
        return;
    }
    let serial = serial().await;
    // Declared before the replicas, so dropped after them: processes die before their namespaces.
    let mut network = Network::new(3);
    let source = Arc::new(Source::memory(IpAddr::V4(network.host)).await);
    let replicas: Vec<Arc<ProcessReplica>> = network
        .nodes
        .iter()
        .map(|node| {
            let listen = format!("{}:7070", node.addr);
            let flags = flags(&source);
            let mut args: Vec<&str> = vec!["--listen", &listen];
            args.extend(flags.iter().map(String::as_str));
            Arc::new(ProcessReplica::start_in_netns(&node.netns, BINARY, &args))
        })
        .collect();
    set_peers(&replicas, &urls(&replicas)).await;
    let run = Run::start("partition", serial, source, rust(&replicas));
    let rounds = rounds();
    for round in 0..rounds {
        run.at((round + 1) as f64 / (rounds + 1) as f64).await;
        let alone = round % replicas.len();
        let others: Vec<usize> = (0..replicas.len()).filter(|&i| i != alone).collect();
        let fault = run.recorder.begin(EventKind::Fault {
            replica: format!("{} | the others", replicas[alone].url),
            fault: Fault::Partitioned,
        });
        network.partition(&[alone], &others);
        tokio::time::sleep(OUTAGE).await; // the partition itself
        network.heal();
        run.recorder.end(fault);
    }
    let report = run.finish(config()).await;
    assert!(
        report.writes_retried + report.writes_failed > 0,
        "writes met the partition:\n{report}"
    );
}

/// Two Rust replicas and two golang/groupcache replicas in one pool (golang/groupcache's ring),
/// every loader reading the source. Go replicas never receive writes, so their reads, and the
/// keys they own, are outside the promise: counted apart, checked only for reads from the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_and_rust_mixed() {
    // In turn, before the build: it takes the CPU a running scenario's bounds are timed on.
    let serial = serial().await;
    let Some(go_binary) = go::binary() else {
        return;
    };
    let source = memory_source().await;
    let rust_replicas: Vec<_> = (0..2)
        .map(|_| start(&source, &["--go-compatible", "true"]))
        .collect();
    let go_delay = format!("{}ms", LOAD_MS + LOAD_JITTER_MS / 2);
    let go_peers: Vec<Arc<GoPeer>> = (0..2)
        .map(|_| {
            Arc::new(GoPeer::start_with(
                go_binary,
                &["-source", source.url(), "-load-delay", &go_delay],
            ))
        })
        .collect();
    // One order for every replica: golang/groupcache's ring depends on it.
    let mut peers = urls(&rust_replicas);
    peers.extend(go_peers.iter().map(|peer| peer.url.clone()));
    set_peers(&rust_replicas, &peers).await;
    for peer in &go_peers {
        peer.set_peers(&peers).await;
    }
    let mut config = config();
    config.excluded_replicas = go_peers.iter().map(|peer| peer.url.clone()).collect();
    let keys = workload().keys;
    config.excluded_keys = keys
        .iter()
        .zip(owners_in(RingMode::GoCompatible, &peers, &keys))
        .filter(|(_, owner)| config.excluded_replicas.contains(owner))
        .map(|(key, _)| key.clone())
        .collect();
    let mut targets = rust(&rust_replicas);
    targets.extend(go_peers.iter().cloned().map(Target::Go));
    let run = Run::start("Go and Rust mixed", serial, source, targets);
    let report = run.finish(config.clone()).await;
    assert!(
        report.reads_excluded > 0 && !config.excluded_keys.is_empty(),
        "Go replicas were read, and own keys:\n{report}"
    );
}

/// The source of truth is a PostgreSQL table: the writers' `UPDATE ... RETURNING` and the
/// loaders' `SELECT` are the database's, with its own timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_source() {
    // In turn, before initdb: it takes the CPU a running scenario's bounds are timed on.
    let serial = serial().await;
    let Some(pg) = PgServer::start("history") else {
        return;
    };
    let source = Arc::new(Source::postgres(&pg.url, IpAddr::V4(Ipv4Addr::LOCALHOST)).await);
    let replicas: Vec<_> = (0..3).map(|_| start(&source, &[])).collect();
    set_peers(&replicas, &urls(&replicas)).await;
    let probe = "k0";
    let before = source.version(probe).await.expect("the table answers");
    let run = Run::start("PostgreSQL source", serial, source.clone(), rust(&replicas));
    run.finish(config()).await;
    assert!(
        source.version(probe).await.expect("the table answers") > before,
        "the writes went to PostgreSQL"
    );
}
