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
//! The spans go to a sink in this process, on a thread and runtime of its own: it decodes each
//! export and counts the spans, so the run proves that every fetch was exported (fetch spans
//! per fetch the replicas counted) and crossed replicas (serve spans with a parent span, per
//! serve span). A span the batch processor dropped would make the exporting side look cheaper;
//! those two figures say that none was.
//!
//! The figures: throughput, latency and the replicas' CPU per request (`server cpu us/req`,
//! the SDK's export thread included) for each; the target compares `rust-otel` with `rust`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use crate::cluster::{Cluster, Kind, Settings};
use crate::load::{Source, Uniform};
use crate::report::{Better, Report, Verdict};
use crate::workloads::{
    BUDGET, Bench, VALUE_BYTES, expect_all, get_path, keys, keys_owned_by, remote_run, run_once,
};

type Result<T> = std::result::Result<T, String>;

/// The workload names in the report.
const LOCAL: &str = "otel-local-hit";
const REMOTE: &str = "otel-remote-get";
/// The sink's figures, per round of `rust-otel`.
const FETCH_SPANS: &str = "fetch spans/fetch";
const PARENTED: &str = "serve spans with a parent/serve";
/// The replicas' CPU per request, as `record_run` names it.
const CPU: &str = "server cpu us/req";
/// The budget for the exporting side, over the side with no subscriber.
const BUDGET_RATIO: f64 = 1.15;
/// How long the sink may take to receive the last batch: the SDK exports every 5 s, or at 512
/// spans.
const LAST_BATCH: Duration = Duration::from_secs(12);

/// What the sink has received.
#[derive(Debug, Default)]
struct Counts {
    /// Export requests.
    exports: AtomicU64,
    /// Bodies that were not an `ExportTraceServiceRequest`.
    undecodable: AtomicU64,
    /// Spans named `groupcache.fetch`.
    fetches: AtomicU64,
    /// Spans named `groupcache.serve`.
    serves: AtomicU64,
    /// Of those, spans with a parent (the asker's span, from its `traceparent`).
    parented_serves: AtomicU64,
    /// Every span.
    spans: AtomicU64,
}

/// An OTLP/HTTP trace receiver on 127.0.0.1, on a thread of its own: it answers every export
/// with 200 and counts what it decoded.
struct Sink {
    port: u16,
    counts: Arc<Counts>,
    /// Dropping it stops the sink's server.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Sink {
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
                    let listener =
                        match tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                            .await
                        {
                            Ok(listener) => listener,
                            Err(e) => {
                                let _ = bound.send(Err(format!("sink: binding: {e}")));
                                return;
                            }
                        };
                    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                    let _ = bound.send(Ok(port));
                    let app = Router::new()
                        .route("/v1/traces", post(receive))
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

    fn fetches(&self) -> u64 {
        self.counts.fetches.load(Ordering::Relaxed)
    }

    /// Waits until the sink has received `fetches` fetch spans in all, or [`LAST_BATCH`] has
    /// passed: the replicas' last batch is sent up to 5 s after its spans end.
    async fn until_fetches(&self, fetches: u64) {
        let deadline = Instant::now() + LAST_BATCH;
        while self.fetches() < fetches && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One OTLP/HTTP export: decoded and counted, answered with an empty (protobuf) response.
async fn receive(State(counts): State<Arc<Counts>>, body: Bytes) -> impl IntoResponse {
    counts.exports.fetch_add(1, Ordering::Relaxed);
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        counts.undecodable.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response();
    };
    let spans = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans);
    for span in spans {
        counts.spans.fetch_add(1, Ordering::Relaxed);
        match span.name.as_str() {
            "groupcache.fetch" => {
                counts.fetches.fetch_add(1, Ordering::Relaxed);
            }
            "groupcache.serve" => {
                counts.serves.fetch_add(1, Ordering::Relaxed);
                if !span.parent_span_id.is_empty() {
                    counts.parented_serves.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
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
                let fetches_before = sink.fetches();
                let serves_before = (
                    sink.counts.serves.load(Ordering::Relaxed),
                    sink.counts.parented_serves.load(Ordering::Relaxed),
                );
                // local-hit: hits make no span, with a subscriber or without.
                let owned = keys_owned_by(&cluster, 0, &format!("ol{round}-"), 1_000);
                let requests: Vec<_> = owned.iter().map(|k| (0, get_path(k))).collect();
                let a = [cluster.replicas[0].addr];
                expect_all(
                    &run_once(&a, 16, requests.clone()).await,
                    owned.len(),
                    VALUE_BYTES,
                    "otel local-hit warm-up",
                )?;
                let source: Arc<dyn Source> = Arc::new(Uniform { requests });
                for &c in &self.options.concurrency.clone() {
                    let outcome = self.timed(&a, &cluster.pids(), c, source.clone()).await?;
                    self.record_run(LOCAL, &format!("c={c}"), kind, &outcome);
                }
                // remote-get: every request a fetch from the key's owner.
                for &c in &self.options.concurrency.clone() {
                    let warm_keys = keys(&format!("or{round}c{c}w-"), 1_000);
                    let keys = keys(&format!("or{round}c{c}-"), measured);
                    let (outcome, _, _) = remote_run(&cluster, c, &warm_keys, &keys).await?;
                    self.record_run(REMOTE, &format!("c={c}"), kind, &outcome);
                }
                if kind == Kind::RustOtel {
                    let fetched: u64 = cluster
                        .stats()
                        .await?
                        .iter()
                        .map(|s| s.stats.peer_loads)
                        .sum();
                    sink.until_fetches(fetches_before + fetched).await;
                    let exported = sink.fetches() - fetches_before;
                    let serves = sink.counts.serves.load(Ordering::Relaxed) - serves_before.0;
                    let parented =
                        sink.counts.parented_serves.load(Ordering::Relaxed) - serves_before.1;
                    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
                    let mut add = |metric, value| {
                        self.report
                            .add(REMOTE, "all", metric, Better::Higher, kind, value);
                    };
                    add(FETCH_SPANS, ratio(exported, fetched));
                    add(PARENTED, ratio(parented, serves));
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
/// get and the throughput within 15 % of the side with no subscriber, every fetch exported and
/// every serve span a child of the asker's. Hits make no span: local-hit is reported, not judged.
pub(crate) fn verdicts(report: &Report, concurrency: &[usize]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for &c in concurrency {
        let case = format!("c={c}");
        let ratio = |metric: &str| {
            let row = report.row(REMOTE, &case, metric)?;
            Some(row.median(Kind::RustOtel)? / row.median(Kind::Rust)?)
        };
        let cpu = ratio(CPU);
        let throughput = ratio("req/s");
        let met = cpu
            .zip(throughput)
            .map(|(cpu, rps)| cpu <= BUDGET_RATIO && rps >= 1.0 / BUDGET_RATIO);
        out.push(Verdict {
            target: format!(
                "{REMOTE} {case}: with the OpenTelemetry layer exporting, CPU per get and \
                 throughput within 15 % of no subscriber"
            ),
            met,
            detail: match (cpu, throughput) {
                (Some(cpu), Some(rps)) => format!("CPU/get {cpu:.3}x, req/s {rps:.3}x"),
                _ => "not measured".to_owned(),
            },
        });
    }
    let every = |metric: &str| {
        report
            .row(REMOTE, "all", metric)
            .and_then(|r| r.samples.get(&Kind::RustOtel))
    };
    for (metric, what) in [
        (FETCH_SPANS, "every fetch exported"),
        (PARENTED, "every serve span a child of the asker's span"),
    ] {
        let samples = every(metric);
        out.push(Verdict {
            target: format!("{REMOTE}: {what}"),
            met: samples.map(|s| s.iter().all(|&v| v >= 1.0)),
            detail: samples.map_or("not measured".to_owned(), |s| format!("per round: {s:?}")),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    fn span(name: &str, parent: &[u8]) -> Span {
        Span {
            name: name.to_owned(),
            parent_span_id: parent.to_vec(),
            ..Span::default()
        }
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
    fn the_sink_counts_fetches_and_the_serves_that_have_a_parent() {
        let counts = Arc::new(Counts::default());
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span("groupcache.get", &[]),
                        span("groupcache.fetch", &[1; 8]),
                        span("groupcache.serve", &[2; 8]),
                        span("groupcache.serve", &[]),
                    ],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        let status = answer(&counts, request.encode_to_vec().into());
        assert_eq!(status, StatusCode::OK);
        assert_eq!(counts.spans.load(Ordering::Relaxed), 4);
        assert_eq!(counts.fetches.load(Ordering::Relaxed), 1);
        assert_eq!(counts.serves.load(Ordering::Relaxed), 2);
        assert_eq!(counts.parented_serves.load(Ordering::Relaxed), 1);

        let garbage = answer(&counts, Bytes::from_static(b"\xff\xff\xff"));
        assert_eq!(garbage, StatusCode::BAD_REQUEST);
        assert_eq!(counts.undecodable.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_target_compares_cpu_and_throughput_with_no_subscriber() {
        let mut report = Report::default();
        for (case, otel_cpu) in [("c=16", 56.0), ("c=64", 60.0)] {
            let sides = [
                (Kind::Rust, 50.0, 30_000.0),
                (Kind::RustOtel, otel_cpu, 27_000.0),
            ];
            for (kind, cpu, rps) in sides {
                report.add(REMOTE, case, CPU, Better::Lower, kind, cpu);
                report.add(REMOTE, case, "req/s", Better::Higher, kind, rps);
            }
        }
        for exported in [1.0, 0.98] {
            let otel = Kind::RustOtel;
            report.add(REMOTE, "all", FETCH_SPANS, Better::Higher, otel, exported);
        }
        let verdicts = verdicts(&report, &[16, 64, 128]);
        assert_eq!(verdicts[0].met, Some(true), "1.12x CPU, 0.90x req/s");
        assert_eq!(verdicts[1].met, Some(false), "1.20x CPU");
        assert_eq!(verdicts[2].met, None, "c=128 not measured");
        assert_eq!(
            verdicts[3].met,
            Some(false),
            "a round with a fetch not exported"
        );
        assert_eq!(verdicts[4].met, None, "serve parents not measured");
    }
}
