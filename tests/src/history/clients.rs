//! The clients that drive a cluster for the checker, and the [`Recorder`] of what they did.
//!
//! Each client loops until stopped: it picks a live replica (the test changes the set as replicas
//! join, leave, die or freeze) and an operation by weight:
//!
//! - `get(key)` or `get_many(keys)` on any replica (a Go replica is asked one `get` instead of a
//!   `get_many`: golang/groupcache has none);
//! - a write on a Rust replica: increment the key's version in the source of truth, then
//!   `remove(key)`, or `set(key, {key}#{version})`, retried (on any Rust replica) until it returns
//!   `Ok` or the retry time runs out, as the README tells users to ("otherwise retry, or wait B").
//!
//! Writes of one key never overlap: a client holds the key's lock from the source's write to the
//! cache's acknowledgement. An application must do this for `set` (or it can store an older
//! version over a newer one itself, which is no fault of the cache), and it keeps the versions of
//! a key in the order of their writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::checker::{Event, EventKind, History, Op, OpKind, ReadCall, ReadResult, WriteCall};
use super::source::Source;
use super::{value, version_of};
use crate::go::GoPeer;
use crate::process::ProcessReplica;

/// A replica the clients may send operations to.
#[derive(Clone, Debug)]
pub enum Target {
    /// A replica of this library (the `replica` binary): reads and writes.
    Rust(Arc<ProcessReplica>),
    /// A golang/groupcache replica (the Go test peer): reads only.
    Go(Arc<GoPeer>),
}

impl Target {
    /// The URL its peers know it by.
    pub fn url(&self) -> &str {
        match self {
            Target::Rust(replica) => &replica.url,
            Target::Go(peer) => &peer.url,
        }
    }

    async fn get(&self, key: &str) -> ReadResult {
        let answer = match self {
            Target::Rust(replica) => replica
                .get(key)
                .await
                .map(|(status, body)| (status, body.to_vec())),
            Target::Go(peer) => go_get(peer, key).await,
        };
        match answer {
            Ok((200, body)) => read_result(key, &body),
            Ok((status, body)) => {
                ReadResult::Error(format!("{status}: {}", String::from_utf8_lossy(&body)))
            }
            Err(error) => ReadResult::Error(error.to_string()),
        }
    }
}

async fn go_get(peer: &GoPeer, key: &str) -> Result<(u16, Vec<u8>), reqwest::Error> {
    let mut url = reqwest::Url::parse(&format!("{}/get", peer.url)).expect("peer URL parses");
    url.query_pairs_mut().append_pair("key", key);
    let response = peer.http().get(url).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

/// What a read of `key` that answered `body` returned: [`ReadResult::Version`] if `body` is
/// [`value`]`(key, version)`, maybe padded with `.` (the replica binary pads what it loads to
/// `--value-bytes`, for tests whose values must weigh something), else [`ReadResult::Garbage`].
/// For tests that read the cluster themselves and record into a [`Recorder`].
pub fn read_result(key: &str, body: &[u8]) -> ReadResult {
    let unpadded = body
        .iter()
        .rposition(|&b| b != b'.')
        .map_or(0, |last| last + 1);
    match version_of(key, &body[..unpadded]) {
        Some(version) => ReadResult::Version(version),
        None => ReadResult::Garbage(String::from_utf8_lossy(&body[..body.len().min(80)]).into()),
    }
}

/// The replicas the clients send operations to now; the test adds and removes them as the
/// membership changes (a replica is removed before it is killed or frozen, so that clients do
/// not wait on it, and added once every ring has it).
#[derive(Default, Debug)]
pub struct Targets(Mutex<Vec<Target>>);

impl Targets {
    /// Targets `targets`.
    pub fn new(targets: Vec<Target>) -> Arc<Targets> {
        Arc::new(Targets(Mutex::new(targets)))
    }

    /// Adds `target`.
    pub fn add(&self, target: Target) {
        self.lock().push(target);
    }

    /// Removes the target with URL `url`.
    pub fn remove(&self, url: &str) {
        self.lock().retain(|target| target.url() != url);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Target>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A random one; writers only, if `writers`.
    fn pick(&self, rng: &mut Rng, writers: bool) -> Option<Target> {
        let targets = self.lock();
        let eligible: Vec<&Target> = targets
            .iter()
            .filter(|target| !writers || matches!(target, Target::Rust(_)))
            .collect();
        (!eligible.is_empty()).then(|| eligible[rng.below(eligible.len())].clone())
    }
}

/// Every operation and event of a run, timed from the recorder's creation.
#[derive(Debug)]
pub struct Recorder {
    epoch: Instant,
    ops: Mutex<Vec<Op>>,
    events: Mutex<Vec<Event>>,
    recorded: watch::Sender<usize>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            epoch: Instant::now(),
            ops: Mutex::default(),
            events: Mutex::default(),
            recorded: watch::Sender::new(0),
        })
    }

    /// The time since the recorder was created.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Records a finished operation.
    pub fn record(&self, op: Op) {
        self.ops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(op);
        self.recorded.send_modify(|n| *n += 1);
    }

    /// Operations recorded so far.
    pub fn operations(&self) -> usize {
        *self.recorded.borrow()
    }

    /// Waits until `n` operations have been recorded in all.
    ///
    /// # Panics
    ///
    /// When that takes longer than `limit`: the clients stalled.
    pub async fn wait_operations(&self, n: usize, limit: Duration) {
        let mut recorded = self.recorded.subscribe();
        let waited = tokio::time::timeout(limit, recorded.wait_for(|&done| done >= n)).await;
        assert!(
            waited.is_ok(),
            "the clients stalled: {} operations of the {n} awaited after {limit:?}",
            self.operations()
        );
    }

    /// Starts an event of `kind` now; [`end`](Self::end) it with the returned handle.
    pub fn begin(&self, kind: EventKind) -> usize {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        events.push(Event {
            kind,
            start: self.now(),
            end: None,
        });
        events.len() - 1
    }

    /// Ends the event `handle` now.
    pub fn end(&self, handle: usize) {
        let now = self.now();
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())[handle]
            .end = Some(now);
    }

    /// A copy of everything recorded so far.
    pub fn history(&self) -> History {
        History {
            ops: self
                .ops
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
            events: self
                .events
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }
}

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The keys; only ASCII letters, digits and `-` (they travel unescaped in URLs).
    pub keys: Vec<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// Relative weights of `get`, `get_many`, write-then-`remove` and write-then-`set`.
    pub weights: [u32; 4],
    /// Keys per `get_many`.
    pub get_many_keys: usize,
    /// How long a write keeps retrying a `remove`/`set` that failed.
    pub retry_for: Duration,
    /// Seeds the clients' choices.
    pub seed: u64,
}

/// Running clients; [`stop`](Clients::stop) them to end the run.
#[derive(Debug)]
pub struct Clients {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Clients {
    /// Starts `workload.clients` clients on `targets`, writing `source`, recording into
    /// `recorder`. Call within a tokio runtime.
    ///
    /// # Panics
    ///
    /// When a key has a character other than ASCII letters, digits and `-`.
    pub fn start(
        workload: &Workload,
        targets: Arc<Targets>,
        source: Arc<Source>,
        recorder: Arc<Recorder>,
    ) -> Clients {
        for key in &workload.keys {
            assert!(
                key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "key {key:?}: letters, digits and - only"
            );
        }
        let locks: Arc<HashMap<String, tokio::sync::Mutex<()>>> = Arc::new(
            workload
                .keys
                .iter()
                .map(|key| (key.clone(), tokio::sync::Mutex::new(())))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for id in 0..workload.clients {
            let client = Client {
                id,
                workload: workload.clone(),
                rng: Rng(workload.seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                targets: targets.clone(),
                source: source.clone(),
                recorder: recorder.clone(),
                locks: locks.clone(),
                stop: stop.clone(),
            };
            tasks.spawn(client.run());
        }
        Clients { stop, tasks }
    }

    /// Stops the clients and waits for their last operations (a write finishes its retries).
    ///
    /// # Panics
    ///
    /// When a client panicked.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.tasks.join_next().await {
            done.expect("a history client");
        }
    }
}

struct Client {
    id: usize,
    workload: Workload,
    rng: Rng,
    targets: Arc<Targets>,
    source: Arc<Source>,
    recorder: Arc<Recorder>,
    locks: Arc<HashMap<String, tokio::sync::Mutex<()>>>,
    stop: Arc<AtomicBool>,
}

impl Client {
    async fn run(mut self) {
        let total: u32 = self.workload.weights.iter().sum();
        while !self.stop.load(Ordering::Relaxed) {
            let mut roll = self.rng.below(total as usize) as u32;
            let choice = self
                .workload
                .weights
                .iter()
                .position(|&weight| {
                    let hit = roll < weight;
                    roll = roll.saturating_sub(weight);
                    hit
                })
                .expect("a weight is hit");
            let op = match choice {
                0 => self.get().await,
                1 => self.get_many().await,
                2 => self.write(WriteCall::Remove).await,
                _ => self.write(WriteCall::Set).await,
            };
            match op {
                Some(op) => self.recorder.record(op),
                // No target now (all frozen or gone): let the test's next step come first.
                None => tokio::task::yield_now().await,
            }
        }
    }

    fn key(&mut self) -> String {
        self.workload.keys[self.rng.below(self.workload.keys.len())].clone()
    }

    async fn get(&mut self) -> Option<Op> {
        let target = self.targets.pick(&mut self.rng, false)?;
        Some(self.get_on(target).await)
    }

    async fn get_on(&mut self, target: Target) -> Op {
        let key = self.key();
        let start = self.recorder.now();
        let result = target.get(&key).await;
        self.read(target, start, ReadCall::Get, vec![(key, result)])
    }

    async fn get_many(&mut self) -> Option<Op> {
        let target = self.targets.pick(&mut self.rng, false)?;
        let Target::Rust(replica) = &target else {
            return Some(self.get_on(target).await);
        };
        let mut keys: Vec<String> = (0..self.workload.get_many_keys)
            .map(|_| self.key())
            .collect();
        keys.sort();
        keys.dedup();
        let start = self.recorder.now();
        let results = match replica.get_many(&keys).await {
            Ok(results) => keys
                .iter()
                .zip(results)
                .map(|(key, result)| {
                    let result = match result {
                        Ok(value) => read_result(key, value.as_bytes()),
                        Err(error) => ReadResult::Error(error),
                    };
                    (key.clone(), result)
                })
                .collect(),
            Err(error) => keys
                .iter()
                .map(|key| (key.clone(), ReadResult::Error(error.clone())))
                .collect(),
        };
        Some(self.read(target, start, ReadCall::GetMany, results))
    }

    fn read(
        &self,
        target: Target,
        start: Duration,
        call: ReadCall,
        results: Vec<(String, ReadResult)>,
    ) -> Op {
        Op {
            client: self.id,
            replica: target.url().to_owned(),
            start,
            end: self.recorder.now(),
            kind: OpKind::Read { call, results },
        }
    }

    async fn write(&mut self, call: WriteCall) -> Option<Op> {
        let mut target = self.targets.pick(&mut self.rng, true)?;
        let key = self.key();
        let locks = self.locks.clone();
        let _serialised = locks[&key].lock().await;
        let start = self.recorder.now();
        let version = self
            .source
            .bump(&key)
            .await
            .unwrap_or_else(|error| panic!("the source of truth failed: {error}"));
        let source_done = self.recorder.now();
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            let Target::Rust(replica) = &target else {
                unreachable!("writers are Rust replicas")
            };
            let status = match call {
                WriteCall::Remove => replica.remove(&key).await,
                WriteCall::Set => replica.set(&key, value(&key, version).as_bytes()).await,
            };
            let outcome = match status {
                Ok(200) => Ok(()),
                Ok(status) => Err(format!("{call:?} on {}: status {status}", replica.url)),
                Err(error) => Err(format!("{call:?} on {}: {error}", replica.url)),
            };
            let out_of_time = self.recorder.now() >= start + self.workload.retry_for;
            if outcome.is_ok() || out_of_time || self.stop.load(Ordering::Relaxed) {
                break outcome;
            }
            // A replica that refuses connections fails at once: a short pause keeps the retries
            // from spinning until the fault is over.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(next) = self.targets.pick(&mut self.rng, true) {
                target = next;
            }
        };
        Some(Op {
            client: self.id,
            replica: target.url().to_owned(),
            start,
            end: self.recorder.now(),
            kind: OpKind::Write {
                key,
                version,
                call,
                source_done,
                outcome,
                tries,
            },
        })
    }
}

/// splitmix64: a small deterministic generator.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_result_takes_padded_values_and_nothing_else() {
        let padded = format!("{:.<1024}", value("k1", 7));
        assert_eq!(padded.len(), 1024);
        assert_eq!(read_result("k1", padded.as_bytes()), ReadResult::Version(7));
        assert_eq!(read_result("k1", b"k1#7"), ReadResult::Version(7));
        assert!(matches!(
            read_result("k2", padded.as_bytes()),
            ReadResult::Garbage(_)
        ));
        assert!(matches!(
            read_result("k1", b"k1#..."),
            ReadResult::Garbage(_)
        ));
        assert!(matches!(read_result("k1", b"...."), ReadResult::Garbage(_)));
    }
}
