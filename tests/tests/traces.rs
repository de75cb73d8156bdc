//! One trace from the asker's `get` through the owner's load (issue 28): replicas on loopback
//! carrying W3C trace context (`W3cTraceContext`), every span exported to an in-memory
//! OpenTelemetry exporter through `tracing-opentelemetry`, and each scenario's spans checked by
//! name and parent: a single get, a batch, a warm hand-off's peek after a ring change, and a
//! request to the successor of an owner that is down. No span carries the key.
//!
//! The replicas share this process, and so the subscriber, but not their tasks: a span on the
//! owner gets its parent only from the request's `traceparent`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use groupcache_rs::{Cluster, Groupcache, Loader, W3cTraceContext, trace};
use groupcache_tests::{GROUP, Replica, TestLoader, key_owned};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// The exporter every span of this test binary goes to, installed once.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("traces-test"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only subscriber of this binary");
        exporter
    })
}

/// A replica whose peer requests carry trace context.
fn replica(loader: &TestLoader) -> Replica<TestLoader> {
    let loader = loader.clone();
    Replica::start(move |url| {
        Groupcache::builder(GROUP, &url, loader)
            .trace_context(W3cTraceContext)
            // Neither heartbeats nor suspicion spans between the scenario's own.
            .failure_detection(Duration::ZERO)
    })
}

/// Runs `work` in a root span of its own; the trace's spans once `expected` (name, count) have
/// all been exported, the root included.
async fn traced<F: std::future::Future<Output = ()>>(
    root: &'static str,
    expected: &[(&str, usize)],
    work: F,
) -> Trace {
    let exporter = exporter();
    let span = tracing::info_span!("test", scenario = root);
    let trace_id = {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        opentelemetry::trace::TraceContextExt::span(&span.context())
            .span_context()
            .trace_id()
    };
    work.instrument(span).await;
    // Spans end (and are exported) as their tasks finish, some just after the answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .expect("the exporter's spans")
            .into_iter()
            .filter(|span| span.span_context.trace_id() == trace_id)
            .collect();
        let trace = Trace { spans };
        let complete = expected
            .iter()
            .chain(&[("test", 1)])
            .all(|&(name, n)| trace.named(name).len() >= n);
        if complete {
            return trace;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{root}: the trace lacks some of {expected:?}: {}",
            trace.outline()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The spans of one trace.
struct Trace {
    spans: Vec<SpanData>,
}

impl Trace {
    fn named(&self, name: &str) -> Vec<&SpanData> {
        self.spans.iter().filter(|span| span.name == name).collect()
    }

    /// The only span named `name`.
    fn one(&self, name: &str) -> &SpanData {
        let named = self.named(name);
        assert_eq!(named.len(), 1, "one {name}: {}", self.outline());
        named[0]
    }

    /// The span named `name` whose parent is `parent`.
    fn child(&self, parent: &SpanData, name: &str) -> &SpanData {
        let id = parent.span_context.span_id();
        self.spans
            .iter()
            .find(|span| span.name == name && span.parent_span_id == id)
            .unwrap_or_else(|| panic!("no {name} under {} ({id}): {}", parent.name, self.outline()))
    }

    /// A span's attribute, as a string.
    fn attribute(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    /// No span names the key: not in its name, not in any attribute.
    fn assert_no_key(&self, key: &str) {
        for span in &self.spans {
            assert!(!span.name.contains(key), "{}", self.outline());
            for kv in &span.attributes {
                assert!(
                    !kv.value.to_string().contains(key),
                    "span {} carries the key in {}: {}",
                    span.name,
                    kv.key,
                    self.outline()
                );
            }
        }
    }

    /// The spans as a tree, for failure messages.
    fn outline(&self) -> String {
        let by_id: HashMap<SpanId, &SpanData> = self
            .spans
            .iter()
            .map(|span| (span.span_context.span_id(), span))
            .collect();
        let mut lines: Vec<String> = self
            .spans
            .iter()
            .map(|span| {
                let parent = by_id
                    .get(&span.parent_span_id)
                    .map_or("-", |parent| parent.name.as_ref());
                let attributes: Vec<String> = span
                    .attributes
                    .iter()
                    .filter(|kv| !kv.key.as_str().starts_with("code."))
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect();
                format!("{} <- {parent} [{}]", span.name, attributes.join(" "))
            })
            .collect();
        lines.sort();
        format!("\n  {}", lines.join("\n  "))
    }

    fn trace_ids(&self) -> Vec<TraceId> {
        let mut ids: Vec<TraceId> = self
            .spans
            .iter()
            .map(|span| span.span_context.trace_id())
            .collect();
        ids.dedup();
        ids
    }
}

/// Two such replicas, an owner and an asker, each with both as its peers.
fn pair(loader: &TestLoader) -> (Replica<TestLoader>, Replica<TestLoader>) {
    let (owner, asker) = (replica(loader), replica(loader));
    for replica in [&owner, &asker] {
        replica
            .cache
            .cluster()
            .set_peers([&owner.url, &asker.url])
            .unwrap();
    }
    (owner, asker)
}

/// A key owned by `owner` in `cache`'s ring, long enough that finding it in a span is no
/// coincidence.
fn key<L: Loader>(cache: &Groupcache<L>, owner: &str, scenario: &str) -> String {
    key_owned(cache, owner, &format!("traced-{scenario}-secret-customer-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_get_is_one_trace_from_the_asker_to_the_owners_load() {
    let loader = TestLoader::new();
    let (owner, asker) = pair(&loader);
    let key = key(&asker.cache, &owner.url, "single");
    let expected = [
        (trace::GET, 2),
        (trace::FETCH, 1),
        (trace::SERVE, 1),
        (trace::LOAD, 1),
    ];
    let trace = traced("single", &expected, async {
        let value = asker.cache.get(&key).await.unwrap();
        assert_eq!(value, loader.value_for(&key));
    })
    .await;
    assert_eq!(trace.trace_ids().len(), 1);
    let root = trace.one("test");
    let get = trace.child(root, trace::GET);
    assert_eq!(Trace::attribute(get, "owner"), Some(owner.url.clone()));
    let fetch = trace.child(get, trace::FETCH);
    assert_eq!(Trace::attribute(fetch, "peer"), Some(owner.url.clone()));
    assert_eq!(Trace::attribute(fetch, "outcome").as_deref(), Some("ok"));
    // On the owner, from the request's `traceparent`.
    let serve = trace.child(fetch, trace::SERVE);
    assert_eq!(Trace::attribute(serve, "kind").as_deref(), Some("get"));
    assert_eq!(Trace::attribute(serve, "group").as_deref(), Some(GROUP));
    let owners_get = trace.child(serve, trace::GET);
    assert_eq!(
        Trace::attribute(owners_get, "owner").as_deref(),
        Some("self")
    );
    let load = trace.child(owners_get, trace::LOAD);
    let bytes = loader.value_for(&key).len().to_string();
    assert_eq!(Trace::attribute(load, "bytes"), Some(bytes));
    trace.assert_no_key(&key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_trace_from_get_many_to_the_owners_load_many() {
    let loader = TestLoader::new();
    let (owner, asker) = pair(&loader);
    let keys: Vec<String> = (0..4)
        .map(|i| key(&asker.cache, &owner.url, &format!("batch{i}")))
        .collect();
    // The owner has advertised batches once it answered anything.
    asker
        .cache
        .get(&key(&asker.cache, &owner.url, "advert"))
        .await
        .unwrap();
    let expected = [
        (trace::GET_MANY, 1),
        (trace::FETCH, 1),
        (trace::SERVE, 1),
        (trace::LOAD, 1),
    ];
    let trace = traced("batch", &expected, async {
        let values = asker.cache.get_many(&keys).await;
        for (key, value) in keys.iter().zip(values) {
            assert_eq!(value.unwrap(), loader.value_for(key));
        }
    })
    .await;
    let root = trace.one("test");
    let many = trace.child(root, trace::GET_MANY);
    assert_eq!(Trace::attribute(many, "keys").as_deref(), Some("4"));
    let fetch = trace.child(many, trace::FETCH);
    assert_eq!(Trace::attribute(fetch, "keys").as_deref(), Some("4"));
    let serve = trace.child(fetch, trace::SERVE);
    assert_eq!(Trace::attribute(serve, "kind").as_deref(), Some("batch"));
    let load = trace.child(serve, trace::LOAD);
    assert_eq!(Trace::attribute(load, "keys").as_deref(), Some("4"));
    for key in &keys {
        trace.assert_no_key(key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_peek_after_a_ring_change_is_in_the_new_owners_trace() {
    let loader = TestLoader::new();
    let (previous, new) = (replica(&loader), replica(&loader));
    // The new owner's ring first, to pick a key it owns; the previous owner, alone until then,
    // loads it.
    new.cache
        .cluster()
        .set_peers([&previous.url, &new.url])
        .unwrap();
    let key = key(&new.cache, &new.url, "handoff");
    previous.cache.get(&key).await.unwrap();
    previous
        .cache
        .cluster()
        .set_peers([&previous.url, &new.url])
        .unwrap();
    let expected = [(trace::GET, 1), (trace::PEEK, 1), (trace::SERVE, 1)];
    let trace = traced("handoff", &expected, async {
        assert_eq!(new.cache.get(&key).await.unwrap(), loader.value_for(&key));
    })
    .await;
    assert_eq!(loader.loads.of(&key), 1, "handed off, not loaded again");
    let root = trace.one("test");
    let get = trace.child(root, trace::GET);
    let peek = trace.child(get, trace::PEEK);
    assert_eq!(Trace::attribute(peek, "peer"), Some(previous.url.clone()));
    assert_eq!(Trace::attribute(peek, "outcome").as_deref(), Some("found"));
    let serve = trace.child(peek, trace::SERVE);
    assert_eq!(Trace::attribute(serve, "kind").as_deref(), Some("peek"));
    assert!(trace.named(trace::LOAD).is_empty(), "{}", trace.outline());
    trace.assert_no_key(&key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_the_successor_of_a_dead_owner_is_in_the_askers_trace() {
    let loader = TestLoader::new();
    let mut owner = replica(&loader);
    let (successor, asker) = (replica(&loader), replica(&loader));
    let urls = [&owner.url, &successor.url, &asker.url];
    for replica in [&owner, &successor, &asker] {
        replica.cache.cluster().set_peers(urls).unwrap();
    }
    // A key the owner owns whose successor is the other replica, not the asker: its owner in
    // the ring without the owner.
    let without_owner = Cluster::builder(&asker.url).build().unwrap();
    without_owner
        .set_peers([&successor.url, &asker.url])
        .unwrap();
    let key = (0..)
        .map(|i| key(&asker.cache, &owner.url, &format!("successor{i}")))
        .find(|key| without_owner.owner(key) == successor.url)
        .unwrap();
    owner.kill();
    let expected = [
        (trace::GET, 2),
        (trace::FETCH, 1),
        (trace::SUCCESSOR, 1),
        (trace::SERVE, 1),
        (trace::LOAD, 1),
    ];
    let trace = traced("successor", &expected, async {
        assert_eq!(asker.cache.get(&key).await.unwrap(), loader.value_for(&key));
    })
    .await;
    let root = trace.one("test");
    let get = trace.child(root, trace::GET);
    let fetch = trace.child(get, trace::FETCH);
    assert_eq!(Trace::attribute(fetch, "outcome").as_deref(), Some("error"));
    let asked = trace.child(get, trace::SUCCESSOR);
    assert_eq!(Trace::attribute(asked, "peer"), Some(successor.url.clone()));
    assert_eq!(Trace::attribute(asked, "outcome").as_deref(), Some("ok"));
    let serve = trace.child(asked, trace::SERVE);
    let successors_get = trace.child(serve, trace::GET);
    trace.child(successors_get, trace::LOAD);
    trace.assert_no_key(&key);
}
