//! The checker: a pure function from a recorded [`History`] to a [`Report`].
//!
//! Every time is a [`Duration`] since the history's start, as the test process saw it. The rules,
//! for each key a read returned (a `get` returns one, a `get_many` one per key):
//!
//! 1. **No reads from the future.** A read may return version `v > 0` only if the write that made
//!    `v` started before the read ended: the value came from the source, or from a `set`, after
//!    that write began. Else [`Class::FutureRead`]. A body that is not `{key}#{version}` of the
//!    key asked for is [`Class::Garbage`].
//! 2. **Read-your-writes.** A read that started after a write of its key was acknowledged (`Ok`)
//!    returns that write's version or a newer one, when the write was *undisturbed*: it returned
//!    `Ok`, and no fault or membership change overlapped it, so every replica received it. An
//!    older version is [`Class::StaleAfterAck`].
//! 3. **The bound.** A write that was *disturbed*, so some replica could have missed it (it
//!    returned `Err`; a replica was killed, frozen or partitioned while it ran; a membership change
//!    was in progress, so rings disagreed), may be missing from a read that starts at most
//!    `hot_max_age + slack` after the write *settled*, the README's bound `B` plus the slack the
//!    test states (a load that read the source just before the write may store its value a
//!    load's time later, and the machine schedules late). A write settles when it ends, or, if a
//!    replica was frozen or partitioned while it ran, when the last of those faults is over: the
//!    README's "until then it serves the old value to whoever still reaches it", a replica that
//!    missed the write gets it as a repair only once it answers again (a fault that lasts to the
//!    end of the history does not count: that replica never answers again). A read after that
//!    older than the write is [`Class::StalePastBound`].
//!
//! A replica that has left every other replica's ring but still serves its own clients (a
//! graceful leave's drain), announced as [`EventKind::Draining`], is one that writes need not
//! reach: the README's "a replica the caller's ring does not list can miss the write". A write
//! that overlapped its drain may be missing, within the bound, from the reads *on it*
//! ([`Rule::ReplicaDraining`]); for the reads on every other replica the write stays strict (none
//! of them fetches from the drained replica: a written key is not peeked).
//!
//! A read older than the newest version the source held when the read started is an *older
//! read*; the checker names the rule that allowed each ([`Rule`]): the newer write had not been
//! acknowledged yet when the read started ([`Rule::WriteInFlight`]), or the newest newer write
//! that had ended was disturbed and the read came within the bound (the disturbance).
//!
//! Reads on excluded replicas, and of excluded keys (a Go replica, and the keys a Go replica
//! owns: golang/groupcache never receives writes, so no freshness is promised for them), are
//! counted apart and checked only for rule 1.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

/// Every operation and event of one run.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Client operations, in any order.
    pub ops: Vec<Op>,
    /// Faults and membership changes the test caused, in any order.
    pub events: Vec<Event>,
}

/// One client operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// The client that ran it.
    pub client: usize,
    /// The replica it was sent to (its URL); for a write, the one its last try went to.
    pub replica: String,
    /// When the client sent it.
    pub start: Duration,
    /// When the client had its answer.
    pub end: Duration,
    /// What it did and what came back.
    pub kind: OpKind,
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq)]
pub enum OpKind {
    /// A `get` (one result) or a `get_many` (one result per key, in order).
    Read {
        /// Which call.
        call: ReadCall,
        /// Per key: what came back.
        results: Vec<(String, ReadResult)>,
    },
    /// A write: the source's version of `key` incremented to `version`, then `remove` or `set`
    /// on a replica, retried (up to a bound) until it returned `Ok`.
    Write {
        /// The key written.
        key: String,
        /// The version the source holds after this write.
        version: u64,
        /// `remove` or `set`.
        call: WriteCall,
        /// When the source held `version`.
        source_done: Duration,
        /// The last try's result; `Err` when every try failed.
        outcome: Result<(), String>,
        /// Tries of `remove`/`set` (at least 1).
        tries: u32,
    },
}

/// Which read call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCall {
    /// `get`.
    Get,
    /// `get_many`.
    GetMany,
}

/// Which call followed the source's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCall {
    /// `remove(key)`.
    Remove,
    /// `set(key, value(key, version))`.
    Set,
}

/// What a read returned for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// A value, `{key}#{version}`.
    Version(u64),
    /// An error: not checked (the promise is about values, not availability), only counted.
    Error(String),
    /// A body that is not `{key}#{version}` of the key asked for.
    Garbage(String),
}

/// Something the test did to the cluster, over an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What.
    pub kind: EventKind,
    /// When it began.
    pub start: Duration,
    /// When it was over (every replica's ring agreed again, the replica answered again); `None`
    /// when it lasted to the end of the history.
    pub end: Option<Duration>,
}

/// Kinds of [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A membership change: from the first replica's ring change to the last one's.
    Membership(String),
    /// A replica out of every other replica's ring that still serves its own clients (its
    /// drain), by URL: from when it left to when the clients stopped using it. It disturbs only
    /// the writes it overlapped, and only for the reads on it.
    Draining(String),
    /// A replica that could not be reached.
    Fault {
        /// Its URL.
        replica: String,
        /// How.
        fault: Fault,
    },
}

/// How a replica could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// SIGKILLed, until discovery dropped it.
    Killed,
    /// SIGSTOPped, until SIGCONT.
    Frozen,
    /// Cut off by a network partition, until it healed.
    Partitioned,
}

/// What the checker allows, and whom it leaves out.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `hot_max_age`, the README's bound `B`.
    pub hot_max_age: Duration,
    /// Added to the bound, with the reason stated by the test.
    pub slack: Duration,
    /// Replicas whose reads carry no freshness promise (Go replicas), by URL.
    pub excluded_replicas: HashSet<String>,
    /// Keys that carry no freshness promise (those a Go replica owns).
    pub excluded_keys: HashSet<String>,
}

/// The rule that allowed a read older than the source at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// Every newer write was still running (not acknowledged) when the read started.
    WriteInFlight,
    /// The newer write returned `Err` (after its retries), and the read came within the bound.
    WriteFailed,
    /// A membership change overlapped the newer write (rings disagreed), within the bound.
    RingsDisagreed,
    /// A replica was killed while the newer write ran, within the bound.
    ReplicaKilled,
    /// A replica was frozen while the newer write ran, within the bound.
    ReplicaFrozen,
    /// A partition overlapped the newer write, within the bound.
    ReplicaPartitioned,
    /// The read ran on a draining replica, whose drain overlapped the newer write, within the
    /// bound.
    ReplicaDraining,
}

/// A class of violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Older than an undisturbed write acknowledged before the read started.
    StaleAfterAck,
    /// Older than a disturbed write that ended more than the bound before the read started.
    StalePastBound,
    /// A version whose write had not started when the read ended.
    FutureRead,
    /// Not `{key}#{version}` of the key asked for.
    Garbage,
}

/// The operations and events that show one violation: the write(s) it concerns and the read
/// (cut to the key in question), with the events that overlapped the write.
#[derive(Debug, Clone, PartialEq)]
pub struct SubHistory {
    /// Writes then the read, by start time.
    pub ops: Vec<Op>,
    /// Events that overlapped them.
    pub events: Vec<Event>,
    /// What is wrong, in words.
    pub why: String,
}

impl SubHistory {
    /// From the earliest start to the latest end of its operations.
    pub fn span(&self) -> Duration {
        let start = self.ops.iter().map(|op| op.start).min().unwrap_or_default();
        let end = self.ops.iter().map(|op| op.end).max().unwrap_or_default();
        end.saturating_sub(start)
    }
}

/// Violations of one class.
#[derive(Debug, Clone, PartialEq)]
pub struct Violations {
    /// How many reads (per key) violated it.
    pub count: usize,
    /// The one with the shortest sub-history.
    pub shortest: SubHistory,
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Client operations (a `get_many` is one).
    pub operations: usize,
    /// Read operations.
    pub reads: usize,
    /// Write operations.
    pub writes: usize,
    /// Writes that returned `Err` after every try.
    pub writes_failed: usize,
    /// Writes that needed more than one try.
    pub writes_retried: usize,
    /// Per-key read results checked against every rule.
    pub reads_checked: usize,
    /// Per-key read results on excluded replicas or of excluded keys (checked for rule 1 only).
    pub reads_excluded: usize,
    /// Per-key read results that were errors.
    pub read_errors: usize,
    /// Checked reads that returned the source's version at their start or newer.
    pub fresh: usize,
    /// Checked reads older than the source at their start, by the rule that allowed them.
    pub older_allowed: BTreeMap<Rule, usize>,
    /// The latest an older read allowed by the bound came after its write settled (ended, or
    /// the freeze or partition during it was over).
    pub latest_within_bound: Duration,
    /// Violations by class.
    pub violations: BTreeMap<Class, Violations>,
}

impl Report {
    /// Violations of every class together.
    pub fn violation_count(&self) -> usize {
        self.violations.values().map(|v| v.count).sum()
    }

    /// Violations of `class`.
    pub fn count(&self, class: Class) -> usize {
        self.violations.get(&class).map_or(0, |v| v.count)
    }

    /// Older reads allowed by `rule`.
    pub fn allowed(&self, rule: Rule) -> usize {
        self.older_allowed.get(&rule).copied().unwrap_or(0)
    }
}

/// A write, indexed for the checks.
struct Write<'a> {
    op: &'a Op,
    version: u64,
    source_done: Duration,
    ok: bool,
    /// Why a replica could have missed it, if it could have.
    disturbed: Option<Rule>,
    /// When the bound starts: its end, or the end of the last freeze or partition during it.
    settled: Duration,
}

/// Checks `history` under `config`.
pub fn check(history: &History, config: &Config) -> Report {
    let bound = config.hot_max_age + config.slack;
    let mut report = Report::default();
    let mut writes: HashMap<&str, Vec<Write<'_>>> = HashMap::new();
    for op in &history.ops {
        report.operations += 1;
        match &op.kind {
            OpKind::Read { .. } => report.reads += 1,
            OpKind::Write {
                key,
                version,
                source_done,
                outcome,
                tries,
                ..
            } => {
                report.writes += 1;
                report.writes_failed += usize::from(outcome.is_err());
                report.writes_retried += usize::from(*tries > 1);
                writes.entry(key).or_default().push(Write {
                    op,
                    version: *version,
                    source_done: *source_done,
                    ok: outcome.is_ok(),
                    disturbed: disturbance(op, outcome.is_ok(), &history.events),
                    settled: settled(op, &history.events),
                });
            }
        }
    }
    for list in writes.values_mut() {
        list.sort_by_key(|w| w.version);
    }
    let no_writes = Vec::new();
    for read in &history.ops {
        let OpKind::Read { results, .. } = &read.kind else {
            continue;
        };
        for (key, result) in results {
            let key_writes = writes.get(key.as_str()).unwrap_or(&no_writes);
            let found = match result {
                ReadResult::Error(_) => {
                    report.read_errors += 1;
                    continue;
                }
                ReadResult::Garbage(body) => Some((
                    Class::Garbage,
                    sub_history(
                        read,
                        key,
                        &[],
                        &history.events,
                        format!("{key} read as {body:?}"),
                    ),
                )),
                ReadResult::Version(v) => {
                    let excluded = config.excluded_replicas.contains(&read.replica)
                        || config.excluded_keys.contains(key);
                    if excluded {
                        report.reads_excluded += 1;
                    } else {
                        report.reads_checked += 1;
                    }
                    future(read, key, *v, key_writes, &history.events).or_else(|| {
                        if excluded {
                            None
                        } else {
                            fresh(
                                read,
                                key,
                                *v,
                                key_writes,
                                bound,
                                &history.events,
                                &mut report,
                            )
                        }
                    })
                }
            };
            if let Some((class, sub)) = found {
                record(&mut report, class, sub);
            }
        }
    }
    report
}

/// Rule 1: the write of `v` must have started before the read ended.
fn future(
    read: &Op,
    key: &str,
    v: u64,
    writes: &[Write<'_>],
    events: &[Event],
) -> Option<(Class, SubHistory)> {
    if v == 0 {
        return None;
    }
    let write = writes.iter().find(|w| w.version == v);
    match write {
        Some(w) if w.op.start <= read.end => None,
        Some(w) => Some((
            Class::FutureRead,
            sub_history(
                read,
                key,
                &[w.op],
                events,
                format!(
                    "{key} read as version {v}, whose write started {:?} after the read ended",
                    w.op.start - read.end
                ),
            ),
        )),
        None => Some((
            Class::FutureRead,
            sub_history(
                read,
                key,
                &[],
                events,
                format!("{key} read as version {v}, which no write made"),
            ),
        )),
    }
}

/// Rules 2 and 3, and the classification of older reads.
fn fresh(
    read: &Op,
    key: &str,
    v: u64,
    writes: &[Write<'_>],
    bound: Duration,
    events: &[Event],
    report: &mut Report,
) -> Option<(Class, SubHistory)> {
    let newer = &writes[writes.partition_point(|w| w.version <= v)..];
    // The write that read returned, for the sub-history.
    let returned: Vec<&Op> = writes
        .iter()
        .filter(|w| w.version == v)
        .map(|w| w.op)
        .collect();
    let mut strict: Option<&Write<'_>> = None;
    let mut past_bound: Option<(&Write<'_>, Rule)> = None;
    let mut allowed: Option<(&Write<'_>, Rule)> = None;
    let mut source_newer = false;
    for w in newer {
        // The source gives out versions in order, each between its write's start and
        // `source_done`: once a write started after the read did, it and every later version
        // ended after the read started, and the source held none of them at its start. Stopping
        // here keeps the check linear in the writes near each read, not in all of the key's.
        if w.op.start >= read.start {
            break;
        }
        source_newer |= w.source_done < read.start;
        if w.op.end >= read.start {
            continue; // not acknowledged when the read started: no requirement
        }
        let disturbed = w.disturbed.or_else(|| drained(read, w.op, events));
        match disturbed {
            None => {
                debug_assert!(w.ok);
                // Of several, the latest shows the shortest sub-history.
                if strict.is_none_or(|s| s.op.start < w.op.start) {
                    strict = Some(w);
                }
            }
            Some(rule) if read.start > w.settled + bound => {
                if past_bound.is_none_or(|(s, _)| s.op.start < w.op.start) {
                    past_bound = Some((w, rule));
                }
            }
            Some(rule) => {
                if allowed.is_none_or(|(a, _)| a.version < w.version) {
                    allowed = Some((w, rule));
                }
            }
        }
    }
    let cited = |w: &Write<'_>, class: Class, why: String| {
        let mut ops = vec![w.op];
        ops.extend(returned.iter().copied());
        (class, sub_history(read, key, &ops, events, why))
    };
    if let Some(w) = strict {
        return Some(cited(
            w,
            Class::StaleAfterAck,
            format!(
                "{key} read as version {v} on {}, {:?} after the write of version {} was \
                 acknowledged (Ok) with every replica reached",
                read.replica,
                read.start - w.op.end,
                w.version
            ),
        ));
    }
    if let Some((w, rule)) = past_bound {
        return Some(cited(
            w,
            Class::StalePastBound,
            format!(
                "{key} read as version {v} on {}, {:?} after the write of version {} settled \
                 ({:?}; it ended {:?} before the read): past the bound {bound:?}",
                read.replica,
                read.start - w.settled,
                w.version,
                rule,
                read.start - w.op.end
            ),
        ));
    }
    match allowed {
        Some((w, rule)) => {
            *report.older_allowed.entry(rule).or_default() += 1;
            report.latest_within_bound = report
                .latest_within_bound
                .max(read.start.saturating_sub(w.settled));
        }
        None if source_newer => {
            *report.older_allowed.entry(Rule::WriteInFlight).or_default() += 1;
        }
        None => report.fresh += 1,
    }
    None
}

/// Why a replica could have missed the write `op`, or `None` if every replica received it
/// (every one in a ring: see [`drained`] for the others).
fn disturbance(op: &Op, ok: bool, events: &[Event]) -> Option<Rule> {
    if !ok {
        return Some(Rule::WriteFailed);
    }
    let overlapping = events.iter().filter(|e| overlaps(e, op));
    let mut rule = None;
    for event in overlapping {
        let this = match &event.kind {
            EventKind::Draining(_) => continue,
            EventKind::Fault { fault, .. } => match fault {
                Fault::Killed => Rule::ReplicaKilled,
                Fault::Frozen => Rule::ReplicaFrozen,
                Fault::Partitioned => Rule::ReplicaPartitioned,
            },
            EventKind::Membership(_) => Rule::RingsDisagreed,
        };
        // A fault names the cause more precisely than the ring change it usually comes with.
        rule = Some(match rule {
            Some(Rule::RingsDisagreed) | None => this,
            Some(other) => other,
        });
    }
    rule
}

/// When the bound of a disturbed write `op` starts: its end, or the end of the last freeze or
/// partition that overlapped it, whichever is later. A killed replica answers nothing again, and
/// a fault not over by the end of the history never answers again within it: neither moves it.
fn settled(op: &Op, events: &[Event]) -> Duration {
    events
        .iter()
        .filter(|e| overlaps(e, op))
        .filter_map(|e| match &e.kind {
            EventKind::Fault {
                fault: Fault::Frozen | Fault::Partitioned,
                ..
            } => e.end,
            _ => None,
        })
        .fold(op.end, Duration::max)
}

/// [`Rule::ReplicaDraining`] if `read` ran on a replica whose drain overlapped the write `op`.
fn drained(read: &Op, op: &Op, events: &[Event]) -> Option<Rule> {
    events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Draining(r) if *r == read.replica) && overlaps(e, op))
        .then_some(Rule::ReplicaDraining)
}

fn overlaps(event: &Event, op: &Op) -> bool {
    event.start <= op.end && event.end.is_none_or(|end| end >= op.start)
}

/// The writes `writes` and `read` cut to `key`, by start time, with the events overlapping them.
fn sub_history(read: &Op, key: &str, writes: &[&Op], events: &[Event], why: String) -> SubHistory {
    let mut ops: Vec<Op> = writes.iter().map(|op| (*op).clone()).collect();
    let mut read = read.clone();
    if let OpKind::Read { results, .. } = &mut read.kind {
        results.retain(|(k, _)| k == key);
    }
    ops.push(read);
    ops.sort_by_key(|op| op.start);
    ops.dedup();
    let events = events
        .iter()
        .filter(|e| ops.iter().any(|op| overlaps(e, op)))
        .cloned()
        .collect();
    SubHistory { ops, events, why }
}

fn record(report: &mut Report, class: Class, sub: SubHistory) {
    match report.violations.get_mut(&class) {
        Some(found) => {
            found.count += 1;
            if sub.span() < found.shortest.span() {
                found.shortest = sub;
            }
        }
        None => {
            report.violations.insert(
                class,
                Violations {
                    count: 1,
                    shortest: sub,
                },
            );
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>10.4}s .. {:>10.4}s  client {:>2} on {}: ",
            self.start.as_secs_f64(),
            self.end.as_secs_f64(),
            self.client,
            self.replica
        )?;
        match &self.kind {
            OpKind::Read { call, results } => {
                write!(f, "{call:?}")?;
                for (key, result) in results {
                    match result {
                        ReadResult::Version(v) => write!(f, " {key} -> v{v}")?,
                        ReadResult::Error(e) => write!(f, " {key} -> error {e:?}")?,
                        ReadResult::Garbage(g) => write!(f, " {key} -> garbage {g:?}")?,
                    }
                }
                Ok(())
            }
            OpKind::Write {
                key,
                version,
                call,
                source_done,
                outcome,
                tries,
            } => write!(
                f,
                "write {key} := v{version} (source at {:.4}s), then {call:?}: {} after {tries} \
                 tr{}",
                source_done.as_secs_f64(),
                match outcome {
                    Ok(()) => "Ok".to_owned(),
                    Err(e) => format!("Err {e:?}"),
                },
                if *tries == 1 { "y" } else { "ies" }
            ),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.end {
            Some(end) => format!("{:>10.4}s", end.as_secs_f64()),
            None => "        end".to_owned(),
        };
        write!(f, "{:>10.4}s .. {end}  ", self.start.as_secs_f64())?;
        match &self.kind {
            EventKind::Membership(what) => write!(f, "membership: {what}"),
            EventKind::Draining(replica) => write!(f, "{replica} draining, out of every ring"),
            EventKind::Fault { replica, fault } => write!(f, "{replica} {fault:?}"),
        }
    }
}

impl fmt::Display for SubHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "      {}", self.why)?;
        for event in &self.events {
            writeln!(f, "      event {event}")?;
        }
        for op in &self.ops {
            writeln!(f, "      op    {op}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  operations {} ({} reads, {} writes: {} retried, {} failed)",
            self.operations, self.reads, self.writes, self.writes_retried, self.writes_failed
        )?;
        writeln!(
            f,
            "  reads checked {} (fresh {}, errors {}, excluded from the promise {})",
            self.reads_checked, self.fresh, self.read_errors, self.reads_excluded
        )?;
        if self.older_allowed.is_empty() {
            writeln!(f, "  older reads allowed: none")?;
        } else {
            write!(f, "  older reads allowed:")?;
            for (rule, n) in &self.older_allowed {
                write!(f, " {rule:?} {n}")?;
            }
            if self
                .older_allowed
                .keys()
                .any(|rule| *rule != Rule::WriteInFlight)
            {
                write!(
                    f,
                    " (by the bound: the latest {:?} after its write settled)",
                    self.latest_within_bound
                )?;
            }
            writeln!(f)?;
        }
        if self.violations.is_empty() {
            writeln!(f, "  violations: none")?;
        }
        for (class, found) in &self.violations {
            writeln!(
                f,
                "  VIOLATIONS {class:?}: {}; the shortest history:",
                found.count
            )?;
            write!(f, "{}", found.shortest)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn read(replica: &str, start: u64, end: u64, key: &str, result: ReadResult) -> Op {
        Op {
            client: 0,
            replica: replica.into(),
            start: ms(start),
            end: ms(end),
            kind: OpKind::Read {
                call: ReadCall::Get,
                results: vec![(key.into(), result)],
            },
        }
    }

    fn version(replica: &str, start: u64, end: u64, key: &str, v: u64) -> Op {
        read(replica, start, end, key, ReadResult::Version(v))
    }

    fn write(start: u64, end: u64, key: &str, v: u64, outcome: Result<(), String>) -> Op {
        Op {
            client: 1,
            replica: "a".into(),
            start: ms(start),
            end: ms(end),
            kind: OpKind::Write {
                key: key.into(),
                version: v,
                call: WriteCall::Remove,
                source_done: ms(start + 1),
                outcome,
                tries: 1,
            },
        }
    }

    fn config() -> Config {
        Config {
            hot_max_age: ms(1000),
            slack: ms(100),
            ..Config::default()
        }
    }

    fn checked(ops: Vec<Op>, events: Vec<Event>) -> Report {
        check(&History { ops, events }, &config())
    }

    #[test]
    fn reads_of_the_acknowledged_version_or_newer_pass() {
        let report = checked(
            vec![
                version("b", 0, 5, "k", 0),
                write(10, 20, "k", 1, Ok(())),
                version("b", 21, 25, "k", 1),
                write(30, 40, "k", 2, Ok(())),
                // Started before the second write was acknowledged: 1 is older but allowed.
                version("c", 35, 45, "k", 1),
                version("c", 41, 45, "k", 2),
            ],
            vec![],
        );
        assert_eq!(report.violation_count(), 0, "{report}");
        assert_eq!(report.reads_checked, 4);
        assert_eq!(report.fresh, 3);
        assert_eq!(report.allowed(Rule::WriteInFlight), 1);
        assert_eq!((report.operations, report.reads, report.writes), (6, 4, 2));
    }

    #[test]
    fn an_older_version_after_an_acknowledged_write_is_flagged_with_its_shortest_history() {
        let report = checked(
            vec![
                write(10, 20, "k", 1, Ok(())),
                version("b", 500, 510, "k", 0),
                version("c", 30, 35, "k", 0),
                version("b", 40, 45, "other", 0),
            ],
            vec![],
        );
        assert_eq!(report.count(Class::StaleAfterAck), 2, "{report}");
        assert_eq!(report.violation_count(), 2);
        let shortest = &report.violations[&Class::StaleAfterAck].shortest;
        assert_eq!(shortest.ops.len(), 2, "the write and the read: {shortest}");
        assert_eq!(
            shortest.ops[1].replica, "c",
            "the shorter of the two: {shortest}"
        );
        assert_eq!(shortest.span(), ms(25));
        assert!(report.to_string().contains("StaleAfterAck: 2"), "{report}");
    }

    #[test]
    fn the_shortest_history_cites_the_write_of_the_version_returned() {
        let report = checked(
            vec![
                write(10, 20, "k", 1, Ok(())),
                write(30, 40, "k", 2, Ok(())),
                version("b", 50, 55, "k", 1),
            ],
            vec![],
        );
        let shortest = &report.violations[&Class::StaleAfterAck].shortest;
        let versions: Vec<u64> = shortest
            .ops
            .iter()
            .filter_map(|op| match op.kind {
                OpKind::Write { version, .. } => Some(version),
                OpKind::Read { .. } => None,
            })
            .collect();
        assert_eq!(versions, [1, 2], "{shortest}");
    }

    #[test]
    fn a_failed_write_allows_older_reads_within_the_bound_only() {
        let report = checked(
            vec![
                write(10, 20, "k", 1, Err("peer unreachable".into())),
                version("b", 20 + 1100, 20 + 1105, "k", 0), // at the bound: allowed
                version("b", 20 + 1101, 20 + 1105, "k", 0), // past it
            ],
            vec![],
        );
        assert_eq!(report.allowed(Rule::WriteFailed), 1, "{report}");
        assert_eq!(report.count(Class::StalePastBound), 1, "{report}");
        assert_eq!(report.writes_failed, 1);
        assert_eq!(report.latest_within_bound, ms(1100));
    }

    #[test]
    fn a_membership_change_or_a_fault_during_a_write_allows_older_reads_within_the_bound() {
        let membership = Event {
            kind: EventKind::Membership("3 -> 4".into()),
            start: ms(15),
            end: Some(ms(18)),
        };
        let freeze = Event {
            kind: EventKind::Fault {
                replica: "c".into(),
                fault: Fault::Frozen,
            },
            start: ms(100),
            end: None,
        };
        let report = checked(
            vec![
                write(10, 20, "k", 1, Ok(())),
                version("b", 30, 35, "k", 0),
                write(200, 210, "j", 1, Ok(())),
                version("b", 220, 230, "j", 0),
                version("b", 5000, 5001, "j", 0),
                // A write after the membership change ended is strict again.
                write(40, 50, "m", 1, Ok(())),
                version("b", 60, 70, "m", 0),
            ],
            vec![membership, freeze],
        );
        assert_eq!(report.allowed(Rule::RingsDisagreed), 1, "{report}");
        assert_eq!(report.allowed(Rule::ReplicaFrozen), 1, "{report}");
        assert_eq!(report.count(Class::StalePastBound), 1, "{report}");
        assert_eq!(report.count(Class::StaleAfterAck), 1, "{report}");
        let past = &report.violations[&Class::StalePastBound].shortest;
        assert_eq!(past.events.len(), 1, "the freeze is cited: {past}");
    }

    /// A replica partitioned (or frozen) while a write ran misses it, and serves the old value
    /// to whoever reaches it until it answers again and gets the write as a repair: the bound
    /// counts from the end of that fault. A killed replica never answers again: its bound counts
    /// from the write's end.
    #[test]
    fn the_bound_of_a_write_that_met_a_partition_counts_from_its_healing() {
        let met = |fault, end| Event {
            kind: EventKind::Fault {
                replica: "c".into(),
                fault,
            },
            start: ms(5),
            end,
        };
        let reads_after = |key: &'static str| {
            [
                write(10, 20, key, 1, Err("unreachable".into())),
                version("b", 3000 + 1100, 3000 + 1105, key, 0), // at the bound after healing
                version("b", 3000 + 1101, 3000 + 1105, key, 0), // past it
            ]
        };
        let partitioned = checked(
            reads_after("k").to_vec(),
            vec![met(Fault::Partitioned, Some(ms(3000)))],
        );
        assert_eq!(partitioned.allowed(Rule::WriteFailed), 1, "{partitioned}");
        assert_eq!(partitioned.count(Class::StalePastBound), 1, "{partitioned}");
        assert_eq!(partitioned.latest_within_bound, ms(1100));
        let frozen = checked(
            reads_after("k").to_vec(),
            vec![met(Fault::Frozen, Some(ms(3000)))],
        );
        assert_eq!(frozen.allowed(Rule::WriteFailed), 1, "{frozen}");
        for (fault, end) in [(Fault::Killed, Some(ms(3000))), (Fault::Partitioned, None)] {
            let report = checked(reads_after("k").to_vec(), vec![met(fault, end)]);
            assert_eq!(
                report.count(Class::StalePastBound),
                2,
                "both reads past the write's own bound: {report}"
            );
            assert_eq!(report.allowed(Rule::WriteFailed), 0, "{report}");
        }
    }

    #[test]
    fn an_undisturbed_write_is_strict_even_when_an_older_disturbed_one_exists() {
        let report = checked(
            vec![
                write(10, 20, "k", 1, Err("unreachable".into())),
                write(30, 40, "k", 2, Ok(())),
                version("b", 50, 60, "k", 1),
                version("b", 50, 60, "k", 0),
            ],
            vec![],
        );
        assert_eq!(report.count(Class::StaleAfterAck), 2, "{report}");
    }

    #[test]
    fn a_drain_allows_older_reads_within_the_bound_on_the_draining_replica_only() {
        let drain = Event {
            kind: EventKind::Draining("d".into()),
            start: ms(100),
            end: Some(ms(300)),
        };
        let report = checked(
            vec![
                write(150, 160, "k", 1, Ok(())),
                version("d", 170, 175, "k", 0), // on the drained replica: allowed
                version("b", 170, 175, "k", 0), // elsewhere: strict
                version("d", 2000, 2005, "k", 0), // past the bound
                // A write after the drain is strict on it too (it no longer serves clients, but
                // a read that began before its end is held to what was acknowledged before).
                write(400, 410, "j", 1, Ok(())),
                version("d", 420, 425, "j", 0),
            ],
            vec![drain],
        );
        assert_eq!(report.allowed(Rule::ReplicaDraining), 1, "{report}");
        assert_eq!(report.count(Class::StaleAfterAck), 2, "{report}");
        assert_eq!(report.count(Class::StalePastBound), 1, "{report}");
        let past = &report.violations[&Class::StalePastBound].shortest;
        assert!(past.why.contains("ReplicaDraining"), "{past}");
    }

    #[test]
    fn reads_from_the_future_are_flagged() {
        let report = checked(
            vec![
                version("b", 0, 5, "k", 1),  // its write starts later
                version("b", 0, 5, "j", 7),  // no write made it
                version("b", 0, 12, "k", 1), // overlaps the write: fine
                write(10, 20, "k", 1, Ok(())),
            ],
            vec![],
        );
        assert_eq!(report.count(Class::FutureRead), 2, "{report}");
        assert_eq!(report.fresh, 1);
    }

    #[test]
    fn garbage_and_errors_are_told_apart() {
        let report = checked(
            vec![
                read("b", 0, 5, "k", ReadResult::Garbage("j#1".into())),
                read("b", 0, 5, "k", ReadResult::Error("500".into())),
            ],
            vec![],
        );
        assert_eq!(report.count(Class::Garbage), 1, "{report}");
        assert_eq!(report.read_errors, 1);
        assert_eq!(report.reads_checked, 0);
    }

    #[test]
    fn excluded_replicas_and_keys_are_counted_apart_but_still_never_read_the_future() {
        let mut config = config();
        config.excluded_replicas.insert("go".into());
        config.excluded_keys.insert("gokey".into());
        let history = History {
            ops: vec![
                write(10, 20, "k", 1, Ok(())),
                write(10, 20, "gokey", 1, Ok(())),
                version("go", 30, 40, "k", 0),
                version("b", 30, 40, "gokey", 0),
                version("go", 30, 40, "k", 9),
            ],
            events: vec![],
        };
        let report = check(&history, &config);
        assert_eq!(report.reads_excluded, 3, "{report}");
        assert_eq!(report.reads_checked, 0);
        assert_eq!(report.violation_count(), 1);
        assert_eq!(report.count(Class::FutureRead), 1);
    }

    #[test]
    fn each_key_of_a_get_many_is_checked_and_cited_alone() {
        let many = Op {
            client: 2,
            replica: "b".into(),
            start: ms(30),
            end: ms(40),
            kind: OpKind::Read {
                call: ReadCall::GetMany,
                results: vec![
                    ("j".into(), ReadResult::Version(0)),
                    ("k".into(), ReadResult::Version(0)),
                ],
            },
        };
        let report = checked(vec![write(10, 20, "k", 1, Ok(())), many], vec![]);
        assert_eq!(report.reads_checked, 2);
        assert_eq!(report.count(Class::StaleAfterAck), 1, "{report}");
        let shortest = &report.violations[&Class::StaleAfterAck].shortest;
        let OpKind::Read { results, .. } = &shortest.ops[1].kind else {
            panic!("the read comes last: {shortest}");
        };
        assert_eq!(results, &[("k".to_owned(), ReadResult::Version(0))]);
    }
}
