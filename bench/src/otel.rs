//! otel (issue 28): what exporting every span costs a cluster, side by side with no subscriber.
//!
//! Two targets, alternating in each round, three replicas each, as `local-hit` and `remote-get`
//! run them (`workloads.rs`):
//!
//! - `rust`: replicas with no subscriber at all;
//! - `rust-otel`: the same replicas with the `tracing-opentelemetry` layer configured as the
//!   README advises, every span exported over OTLP/HTTP (protobuf, the SDK's batch processor,
//!   as the example service exports), and W3C trace context on every peer request.
//!
//! The spans go to a sink in this process, on a thread and runtime of its own. It decodes each
//! export and keeps, per replica (the resource's `service.instance.id`, the replica's process
//! id), the ids of its fetch spans and the parents of its serve spans of peer gets. After each
//! `rust-otel` cluster it waits for the last batch and checks, against the fetches the replicas
//! counted: one fetch span per fetch, one serve span per fetch, and every serve span a child of
//! an exported fetch span (the context crossed replicas). A span the batch processor dropped
//! would make the exporting side look cheaper; those figures say that none was.
//!
//! The figures: throughput, latency and the replicas' CPU per request (`server cpu us/req`,
//! the SDK's export thread included) for each. The target compares the CPU per remote get; the
//! throughput is reported beside it but not judged, since the sink's decoding takes a share of
//! the same two cores (the driver's `client cpu us/req`), which a collector elsewhere would not.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

use crate::cluster::{Cluster, Kind, Settings};
use crate::report::{Better, Report, Verdict};
use crate::workloads::{BUDGET, Bench, VALUE_BYTES, keys, remote_run};

type Result<T> = std::result::Result<T, String>;

/// The workload names in the report.
const LOCAL: &str = "otel-local-hit";
const REMOTE: &str = "otel-remote-get";
/// The sink's figures, per round of `rust-otel`, each against the fetches the replicas counted.
const FETCH_SPANS: &str = "fetch spans/fetch";
const SERVE_SPANS: &str = "get serve spans/fetch";
const PARENTED: &str = "serve spans under a fetch span/serve";
/// The replicas' CPU per request, as `record_run` names it.
const CPU: &str = "server cpu us/req";
/// The budget for the exporting side, over the side with no subscriber.
const BUDGET_RATIO: f64 = 1.15;
/// How long the sink may take to receive the last batch: the SDK exports every 5 s (the
/// replicas' `OTEL_BSP_*` are cleared, so its defaults hold), or at 512 spans.
const LAST_BATCH: Duration = Duration::from_secs(12);
/// The largest export the sink reads: the SDK's batches of 512 spans are a few hundred KiB.
const MAX_EXPORT: usize = 64 << 20;

/// What the sink has received from one replica.
#[derive(Debug, Default)]
struct Received {
    /// The span ids of its `groupcache.fetch` spans.
    fetches: HashSet<Vec<u8>>,
    /// The parent span ids of its `groupcache.serve` spans of peer gets (empty: no parent).
    serve_parents: Vec<Vec<u8>>,
}

/// What the sink has received, by replica (`service.instance.id`).
#[derive(Debug, Default)]
struct Counts {
    by_replica: Mutex<HashMap<String, Received>>,
    /// Bodies that were not an `ExportTraceServiceRequest`.
    undecodable: AtomicU64,
}

/// What a cluster's replicas exported, from [`Sink::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exported {
    /// Fetch spans.
    fetches: u64,
    /// Serve spans of peer gets.
    serves: u64,
    /// Of those, the children of one of the cluster's fetch spans.
    parented: u64,
}

/// An OTLP/HTTP trace receiver on 127.0.0.1, on a thread of its own: it answers every export
/// with 200 and keeps what it decoded.
struct Sink {
    /// Where it listens.
    port: u16,
    /// What it received.
    counts: Arc<Counts>,
    /// Dropping it stops the sink's server.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Sink {
    /// Starts the sink's thread and waits until it listens.
    fn start() -> Result<Sink> {
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, port) = std::sync::mpsc::channel::<Result<u16>>();
        let state = counts.clone();
        std::thread::Builder::new()
            .name("otlp-sink".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = bound.send(Err(format!("sink runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
                    let listener = match tokio::net::TcpListener::bind(loopback).await {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = bound.send(Err(format!("sink: binding: {e}")));
                            return;
                        }
                    };
                    match listener.local_addr() {
                        Ok(addr) => {
                            let _ = bound.send(Ok(addr.port()));
                        }
                        Err(e) => {
                            let _ = bound.send(Err(format!("sink: its address: {e}")));
                            return;
                        }
                    }
                    let app = Router::new()
                        .route("/v1/traces", post(receive))
                        .layer(DefaultBodyLimit::max(MAX_EXPORT))
                        .with_state(state);
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .map_err(|e| format!("sink thread: {e}"))?;
        let port = port
            .recv()
            .map_err(|_| "the sink's thread ended before binding".to_owned())??;
        Ok(Sink {
            port,
            counts,
            _stop: stop,
        })
    }

    /// What the replicas with process ids `pids` have exported so far.
    fn of(&self, pids: &[u32]) -> Exported {
        let by_replica = self
            .counts
            .by_replica
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let replicas: Vec<&Received> = pids
            .iter()
            .filter_map(|pid| by_replica.get(&pid.to_string()))
            .collect();
        let fetch_ids: HashSet<&Vec<u8>> = replicas.iter().flat_map(|r| &r.fetches).collect();
        let parents = || replicas.iter().flat_map(|r| &r.serve_parents);
        Exported {
            fetches: fetch_ids.len() as u64,
            serves: parents().count() as u64,
            parented: parents().filter(|p| fetch_ids.contains(p)).count() as u64,
        }
    }

    /// What the replicas `pids` exported, once it has `fetches` fetch spans and as many serve
    /// spans, or `wait` has passed ([`LAST_BATCH`]: a replica's last batch is sent up to 5 s
    /// after its spans end).
    async fn until_exported(&self, pids: &[u32], fetches: u64, wait: Duration) -> Exported {
        let deadline = Instant::now() + wait;
        loop {
            let exported = self.of(pids);
            let complete = exported.fetches >= fetches && exported.serves >= fetches;
            if complete || Instant::now() >= deadline {
                return exported;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A string attribute's value, if `attributes` has `key`.
fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref();
    match value {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s)),
        }) => Some(s),
        _ => None,
    }
}

/// One OTLP/HTTP export: decoded and kept, answered with an empty (protobuf) response.
async fn receive(State(counts): State<Arc<Counts>>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        counts.undecodable.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response();
    };
    let mut by_replica = counts
        .by_replica
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for resource_spans in &request.resource_spans {
        let attributes = resource_spans
            .resource
            .as_ref()
            .map_or(&[][..], |r| &r.attributes);
        let instance = string_attribute(attributes, "service.instance.id").unwrap_or("");
        let received = by_replica.entry(instance.to_owned()).or_default();
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            match span.name.as_str() {
                "groupcache.fetch" => {
                    received.fetches.insert(span.span_id.clone());
                }
                "groupcache.serve" if string_attribute(&span.attributes, "kind") == Some("get") => {
                    received.serve_parents.push(span.parent_span_id.clone());
                }
                _ => {}
            }
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::new(),
    )
        .into_response()
}

impl Bench<'_> {
    /// The otel workload (see the module's documentation).
    pub(crate) async fn otel(&mut self) -> Result<()> {
        let sink = Sink::start()?;
        let measured = self.options.remote_requests / 2;
        for round in 0..self.options.rounds {
            for kind in self.order(&[Kind::Rust, Kind::RustOtel], round) {
                self.progress("otel", round, kind);
                let mut settings = Settings::plain(VALUE_BYTES, 0, BUDGET);
                if kind == Kind::RustOtel {
                    settings.otel_sink = Some(sink.port);
                }
                let cluster = Cluster::start(self.binaries, kind, 3, settings).await?;
                // local-hit: hits make no span, with a subscriber or without.
                self.local_hit_runs(LOCAL, &cluster, kind, &format!("ol{round}-"))
                    .await?;
                // remote-get: every request a fetch from the key's owner.
                for &c in &self.options.concurrency.clone() {
                    let warm_keys = keys(&format!("or{round}c{c}w-"), 1_000);
                    let keys = keys(&format!("or{round}c{c}-"), measured);
                    let (outcome, _, _) = remote_run(&cluster, c, &warm_keys, &keys).await?;
                    self.record_run(REMOTE, &format!("c={c}"), kind, &outcome);
                }
                if kind == Kind::RustOtel {
                    let stats = cluster.stats().await?;
                    let fetched: u64 = stats.iter().map(|s| s.stats.peer_loads).sum();
                    let exported = sink
                        .until_exported(&cluster.pids(), fetched, LAST_BATCH)
                        .await;
                    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
                    let mut add = |metric, value| {
                        self.report
                            .add(REMOTE, "all", metric, Better::Higher, kind, value);
                    };
                    add(FETCH_SPANS, ratio(exported.fetches, fetched));
                    add(SERVE_SPANS, ratio(exported.serves, fetched));
                    add(PARENTED, ratio(exported.parented, exported.serves));
                }
            }
        }
        let undecodable = sink.counts.undecodable.load(Ordering::Relaxed);
        if undecodable > 0 {
            self.report.notes.push(format!(
                "otel: {undecodable} exports the sink could not decode"
            ));
        }
        Ok(())
    }
}

/// The target for the exporting side, per concurrency: the replicas' CPU per remote
/// get within 15 % of the side with no subscriber (the throughput ratio is shown, not judged:
/// see the module's documentation); and in every round each fetch exported once, served once,
/// and its serve span a child of its fetch span. Hits make no span: local-hit is reported, not
/// judged.
pub(crate) fn verdicts(report: &Report, concurrency: &[usize]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for &c in concurrency {
        let case = format!("c={c}");
        let ratio = |metric: &str| {
            let row = report.row(REMOTE, &case, metric)?;
            Some(row.median(Kind::RustOtel)? / row.median(Kind::Rust)?)
        };
        let cpu = ratio(CPU);
        out.push(Verdict {
            target: format!(
                "{REMOTE} {case}: with the OpenTelemetry layer exporting, CPU per get within \
                 15 % of no subscriber"
            ),
            met: cpu.map(|cpu| cpu <= BUDGET_RATIO),
            detail: match (cpu, ratio("req/s")) {
                (Some(cpu), Some(rps)) => format!("CPU/get {cpu:.3}x (req/s {rps:.3}x)"),
                _ => "not measured".to_owned(),
            },
        });
    }
    for (metric, what) in [
        (FETCH_SPANS, "one fetch span exported per fetch"),
        (SERVE_SPANS, "one serve span exported per fetch"),
        (
            PARENTED,
            "every serve span a child of an exported fetch span",
        ),
    ] {
        let samples = report
            .row(REMOTE, "all", metric)
            .and_then(|r| r.samples.get(&Kind::RustOtel));
        out.push(Verdict {
            target: format!("{REMOTE}: {what}, every round"),
            met: samples.map(|s| s.iter().all(|&v| (v - 1.0).abs() < 1e-9)),
            detail: samples.map_or("not measured".to_owned(), |s| format!("per round: {s:?}")),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_owned())),
            }),
            ..KeyValue::default()
        }
    }

    fn span(name: &str, id: u8, parent: Option<u8>, kind: &str) -> Span {
        Span {
            name: name.to_owned(),
            span_id: vec![id; 8],
            parent_span_id: parent.map_or_else(Vec::new, |p| vec![p; 8]),
            attributes: vec![string("kind", kind)],
            ..Span::default()
        }
    }

    /// An export from the replica with process id `pid`.
    fn export(pid: u32, spans: Vec<Span>) -> Bytes {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string("service.instance.id", &pid.to_string())],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
        .encode_to_vec()
        .into()
    }

    /// `receive`'s answer to `body`.
    fn answer(counts: &Arc<Counts>, body: Bytes) -> StatusCode {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime
            .block_on(receive(State(counts.clone()), body))
            .into_response()
            .status()
    }

    #[test]
    fn the_sink_matches_serve_spans_to_the_fetch_spans_of_the_same_cluster() {
        let (stop, _stopped) = tokio::sync::oneshot::channel();
        let sink = Sink {
            port: 0,
            counts: Arc::new(Counts::default()),
            _stop: stop,
        };
        // Replica 1 fetched twice (spans 1 and 2); replica 2 served both, and a peek (not a
        // get), and a get whose parent is no fetch span of theirs; replica 9 is another cluster.
        let asker = vec![
            span("groupcache.get", 10, None, ""),
            span("groupcache.fetch", 1, Some(10), ""),
            span("groupcache.fetch", 2, Some(10), ""),
        ];
        let owner = vec![
            span("groupcache.serve", 20, Some(1), "get"),
            span("groupcache.serve", 21, Some(2), "get"),
            span("groupcache.serve", 22, Some(3), "peek"),
            span("groupcache.serve", 23, Some(7), "get"),
        ];
        let other = vec![span("groupcache.fetch", 7, None, "")];
        for (pid, spans) in [(1, asker), (2, owner), (9, other)] {
            assert_eq!(answer(&sink.counts, export(pid, spans)), StatusCode::OK);
        }
        let expected = Exported {
            fetches: 2,
            serves: 3,
            parented: 2,
        };
        assert_eq!(sink.of(&[1, 2]), expected);
        assert_eq!(sink.of(&[1, 2, 9]).parented, 3, "with replica 9's fetch");
        assert_eq!(sink.of(&[3]).fetches, 0, "nothing from an unknown replica");

        let garbage = answer(&sink.counts, Bytes::from_static(b"\xff\xff\xff"));
        assert_eq!(garbage, StatusCode::BAD_REQUEST);
        assert_eq!(sink.counts.undecodable.load(Ordering::Relaxed), 1);
    }

    /// A runtime for the tests that need one.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn the_sink_waits_for_fetch_and_serve_spans_both_then_gives_up() {
        let sink = Sink::start().expect("the sink starts");
        let spans = vec![
            span("groupcache.fetch", 1, None, ""),
            span("groupcache.fetch", 2, None, ""),
            span("groupcache.serve", 3, Some(1), "get"),
        ];
        assert_eq!(answer(&sink.counts, export(5, spans)), StatusCode::OK);
        let runtime = runtime();
        // Two fetches but one serve: not complete, so it waits the whole time given.
        let started = Instant::now();
        let short = Duration::from_millis(300);
        let exported = runtime.block_on(sink.until_exported(&[5], 2, short));
        assert!(started.elapsed() >= short, "{:?}", started.elapsed());
        assert_eq!((exported.fetches, exported.serves), (2, 1));
        // One of each asked for: complete at once, long before the minute given.
        let started = Instant::now();
        let exported = runtime.block_on(sink.until_exported(&[5], 1, Duration::from_secs(60)));
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(exported.parented, 1);
    }

    #[test]
    fn the_sink_takes_an_export_larger_than_axums_default_limit_over_http() {
        let sink = Sink::start().expect("the sink starts");
        // One span with a 3 MiB attribute: past axum's default 2 MiB, within the sink's limit.
        let mut big = span("groupcache.fetch", 1, None, "");
        big.attributes.push(string("padding", &"x".repeat(3 << 20)));
        let body = export(6, vec![big]);
        let mut request = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let addr = SocketAddr::from(([127, 0, 0, 1], sink.port));
        let (status, _) = runtime()
            .block_on(crate::http::call(addr, &request))
            .expect("the sink answers");
        assert_eq!(status, 200);
        assert_eq!(sink.of(&[6]).fetches, 1);
    }

    #[test]
    fn the_target_is_the_cpu_per_get_and_every_round_exports_every_span() {
        let mut report = Report::default();
        for (case, otel_cpu) in [("c=16", 56.0), ("c=64", 60.0)] {
            let sides = [
                (Kind::Rust, 50.0, 30_000.0),
                (Kind::RustOtel, otel_cpu, 20_000.0),
            ];
            for (kind, cpu, rps) in sides {
                report.add(REMOTE, case, CPU, Better::Lower, kind, cpu);
                report.add(REMOTE, case, "req/s", Better::Higher, kind, rps);
            }
        }
        let otel = Kind::RustOtel;
        for exported in [1.0, 0.98] {
            report.add(REMOTE, "all", FETCH_SPANS, Better::Higher, otel, exported);
        }
        for served in [1.0, 1.0] {
            report.add(REMOTE, "all", SERVE_SPANS, Better::Higher, otel, served);
        }
        let verdicts = verdicts(&report, &[16, 64, 128]);
        assert_eq!(verdicts[0].met, Some(true), "1.12x CPU; req/s not judged");
        assert_eq!(verdicts[0].detail, "CPU/get 1.120x (req/s 0.667x)");
        assert_eq!(verdicts[1].met, Some(false), "1.20x CPU");
        assert_eq!(verdicts[2].met, None, "c=128 not measured");
        assert_eq!(verdicts[3].met, Some(false), "a round missing a fetch");
        assert_eq!(verdicts[4].met, Some(true), "every fetch served once");
        assert_eq!(verdicts[5].met, None, "serve parents not measured");
    }
}
