//! Traces across replicas: the spans a get leaves, and how their context travels with a peer
//! request so that the owner's serving and its load are children of the asker's span.
//!
//! The spans are `tracing` spans, at INFO, named `groupcache.*` ([`GET`], [`GET_MANY`],
//! [`FETCH`], [`SUCCESSOR`], [`PEEK`], [`LOAD`], [`COALESCE_WAIT`], [`SERVE`]). A hit makes
//! none: it takes well under a microsecond, and a span per hit would cost more than the hit.
//! Their fields say where the time went (the group, the owner or peer asked, the outcome, the
//! bytes, the number of keys) and never name a key or a value: keys can be personal data.
//!
//! Nothing travels between replicas unless the application sets a [`TraceContext`] on the
//! cluster ([`ClusterBuilder::trace_context`](crate::ClusterBuilder::trace_context)): with the
//! `opentelemetry` feature, [`W3cTraceContext`] sends W3C `traceparent`/`tracestate` headers
//! through the OpenTelemetry propagator the application installed. The headers are not signed
//! by peer authentication: they carry no data the cache acts on, only where a span is drawn,
//! and a peer that can forge them can already send any request.

use axum::http::HeaderMap;

/// The span of a get that missed both caches (fields `group`, `owner`, `outcome`).
pub const GET: &str = "groupcache.get";
/// The span of a `get_many` (fields `group`, `keys`, `hits`).
pub const GET_MANY: &str = "groupcache.get_many";
/// A request to a key's owner, single or batch (fields `group`, `peer`, `keys`, `outcome`,
/// `bytes`).
pub const FETCH: &str = "groupcache.fetch";
/// A request to a key's successor, its owner suspected down (fields `group`, `peer`,
/// `outcome`).
pub const SUCCESSOR: &str = "groupcache.successor";
/// A warm hand-off's peek at a key's previous owner (fields `group`, `peer`, `outcome`).
pub const PEEK: &str = "groupcache.peek";
/// A request to the key's owner for the refreshed value of a copy due for refresh ahead (in
/// the background, a trace of its own).
pub const REFRESH: &str = "groupcache.refresh";
/// A run of the group's loader on this replica (fields `group`, `keys`, `outcome`, `bytes`).
pub const LOAD: &str = "groupcache.load";
/// A fetch waiting for a request slot to its owner (`Builder::coalesce_fetches`; fields `group`,
/// `peer`).
pub const COALESCE_WAIT: &str = "groupcache.coalesce_wait";
/// A peer's request served by this replica (fields `group`, `kind`: get, peek, batch, set or
/// remove; `status`). Heartbeats make none.
pub const SERVE: &str = "groupcache.serve";

/// Carries a span's context in a peer request's headers, and gives the serving replica's span
/// its parent from them. Set it on the cluster with
/// [`ClusterBuilder::trace_context`](crate::ClusterBuilder::trace_context); golang/groupcache
/// peers ignore the headers.
///
/// ```
/// use axum::http::{HeaderMap, HeaderValue};
///
/// /// Passes an application's own request id along (a `tracing` field of its spans).
/// struct RequestId;
///
/// impl groupcache_rs::TraceContext for RequestId {
///     fn inject(&self, _span: &tracing::Span, headers: &mut HeaderMap) {
///         headers.insert("x-request-id", HeaderValue::from_static("42"));
///     }
///     fn extract(&self, headers: &HeaderMap, span: &tracing::Span) {
///         if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
///             span.record("request_id", id);
///         }
///     }
/// }
///
/// # fn main() -> Result<(), groupcache_rs::Error> {
/// let cluster = groupcache_rs::Cluster::builder("http://10.0.0.1:8080")
///     .trace_context(RequestId)
///     .build()?;
/// # let _ = cluster;
/// # Ok(()) }
/// ```
pub trait TraceContext: Send + Sync + 'static {
    /// Adds `span`'s context (the asker's current span) to an outgoing peer request.
    fn inject(&self, span: &tracing::Span, headers: &mut HeaderMap);

    /// Gives `span` (this replica's [`SERVE`] span) its parent from an incoming request.
    fn extract(&self, headers: &HeaderMap, span: &tracing::Span);
}

/// Records `outcome` ("ok" or "error") on `span`.
pub(crate) fn record_outcome<T, E>(span: &tracing::Span, outcome: &Result<T, E>) {
    span.record("outcome", if outcome.is_ok() { "ok" } else { "error" });
}

/// Records a load's outcome, and its value's size.
pub(crate) fn record_entry<E>(span: &tracing::Span, entry: &Result<crate::caches::Entry, E>) {
    match entry {
        Ok(entry) => record_bytes(span, "ok", entry.value.len()),
        Err(_) => record_bytes(span, "error", 0),
    }
}

/// Records a request's outcome, and the size of the value it brought.
pub(crate) fn record_asked<E>(span: &tracing::Span, asked: Result<&crate::caches::Entry, &E>) {
    match asked {
        Ok(entry) => record_bytes(span, "ok", entry.value.len()),
        Err(_) => record_bytes(span, "error", 0),
    }
}

/// Records `outcome` and `bytes` on `span`, in one call: each call is a lookup and a lock in
/// every layer (`tracing-opentelemetry`'s `on_record`).
pub(crate) fn record_bytes(span: &tracing::Span, outcome: &str, bytes: usize) {
    tracing::record_all!(span, outcome = outcome, bytes = bytes);
}

/// The application's [`TraceContext`], shown by name only in the config's `Debug`.
#[derive(Clone)]
pub(crate) struct Traced(pub(crate) std::sync::Arc<dyn TraceContext>);

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceContext")
    }
}

/// W3C trace context (`traceparent`, and `tracestate` when it is not empty) through
/// OpenTelemetry: the context of the current `tracing` span as `tracing-opentelemetry` knows it,
/// written and read by the text map propagator installed with
/// `opentelemetry::global::set_text_map_propagator` (install
/// `opentelemetry_sdk::propagation::TraceContextPropagator`; the default propagator sends
/// nothing). Needs a `tracing_opentelemetry` layer in the subscriber; it works with the layer's
/// `with_context_activation(false)`, which the README advises.
#[cfg(feature = "opentelemetry")]
#[derive(Debug, Clone, Copy, Default)]
pub struct W3cTraceContext;

#[cfg(feature = "opentelemetry")]
impl TraceContext for W3cTraceContext {
    fn inject(&self, span: &tracing::Span, headers: &mut HeaderMap) {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut otel::Headers(headers));
        });
    }

    fn extract(&self, headers: &HeaderMap, span: &tracing::Span) {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&otel::ReadHeaders(headers))
        });
        // Fails only when the span is disabled or has no OpenTelemetry layer: nothing to draw.
        let _ = span.set_parent(parent);
    }
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use axum::http::HeaderMap;
    use axum::http::header::{HeaderName, HeaderValue};

    /// A request's headers, written by the propagator.
    pub(super) struct Headers<'a>(pub(super) &'a mut HeaderMap);

    impl opentelemetry::propagation::Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            // An empty `tracestate`, the usual one, says nothing: the owner reads its absence
            // as the same empty state. The two W3C names are static, not parsed and copied for
            // each request.
            if value.is_empty() {
                return;
            }
            let name = match key {
                "traceparent" => HeaderName::from_static("traceparent"),
                "tracestate" => HeaderName::from_static("tracestate"),
                _ => match HeaderName::from_bytes(key.as_bytes()) {
                    Ok(name) => name,
                    Err(_) => return,
                },
            };
            if let Ok(value) = HeaderValue::try_from(value) {
                self.0.insert(name, value);
            }
        }
    }

    /// A request's headers, read by the propagator.
    pub(super) struct ReadHeaders<'a>(pub(super) &'a HeaderMap);

    impl opentelemetry::propagation::Extractor for ReadHeaders<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(HeaderName::as_str).collect()
        }
    }
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use axum::http::HeaderMap;
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::otel::{Headers, ReadHeaders};

    /// `context` through a request's headers: what was sent, and what the owner read.
    fn carried(state: TraceState) -> (HeaderMap, SpanContext, SpanContext) {
        let sent = SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            TraceFlags::SAMPLED,
            true,
            state,
        );
        let context = opentelemetry::Context::new().with_remote_span_context(sent.clone());
        let mut headers = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut Headers(&mut headers));
        let read = TraceContextPropagator::new().extract(&ReadHeaders(&headers));
        let read = read.span().span_context().clone();
        (headers, sent, read)
    }

    #[test]
    fn an_empty_tracestate_is_not_sent_and_the_owner_reads_the_same_context() {
        let (headers, sent, read) = carried(TraceState::default());
        assert_eq!(
            headers.get("traceparent").map(|v| v.as_bytes()),
            Some(&b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..])
        );
        assert!(!headers.contains_key("tracestate"), "{headers:?}");
        assert_eq!(read, sent);
    }

    #[test]
    fn a_tracestate_with_entries_is_sent_and_read() {
        let state = TraceState::from_key_value([("vendor", "value")]).expect("a valid state");
        let (headers, sent, read) = carried(state);
        assert_eq!(
            headers.get("tracestate").map(|v| v.as_bytes()),
            Some(&b"vendor=value"[..])
        );
        assert_eq!(read, sent);
    }
}
