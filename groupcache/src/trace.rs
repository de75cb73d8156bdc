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
/// written and read as the W3C Trace Context recommendation says, exactly as
/// `opentelemetry_sdk::propagation::TraceContextPropagator` writes and reads them, whatever
/// propagator the application installed (none is needed). Needs a `tracing_opentelemetry` layer
/// in the subscriber; it works with the layer's `with_context_activation(false)`, which the
/// README advises.
///
/// The headers are written and read here rather than through the global propagator: that is
/// a lock and a dynamic call on each request, and a service that forgot to install it sent
/// nothing, silently.
#[cfg(feature = "opentelemetry")]
#[derive(Debug, Clone, Copy, Default)]
pub struct W3cTraceContext;

#[cfg(feature = "opentelemetry")]
impl TraceContext for W3cTraceContext {
    fn inject(&self, span: &tracing::Span, headers: &mut HeaderMap) {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let context = span.context();
        let span = context.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return;
        }
        headers.insert(w3c::TRACEPARENT, w3c::traceparent(span_context));
        // An empty `tracestate`, the usual one, says nothing: the owner reads its absence as the
        // same empty state.
        let state = span_context.trace_state().header();
        if !state.is_empty()
            && let Ok(value) = axum::http::HeaderValue::try_from(state)
        {
            headers.insert(w3c::TRACESTATE, value);
        }
    }

    fn extract(&self, headers: &HeaderMap, span: &tracing::Span) {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        // No valid `traceparent` (a Go peer, a replica without trace context): the span keeps
        // the parent `tracing` gave it.
        let Some(remote) = w3c::read(headers) else {
            return;
        };
        // Fails only when the span is disabled or has no OpenTelemetry layer: nothing to draw.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// The W3C Trace Context headers, version 00, written and read as
/// `opentelemetry_sdk::propagation::TraceContextPropagator` does (the unit tests compare both
/// on valid and invalid headers).
#[cfg(feature = "opentelemetry")]
mod w3c {
    use std::str::FromStr as _;

    use axum::http::HeaderMap;
    use axum::http::header::{HeaderName, HeaderValue};
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    pub(super) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

    /// `00-{trace id}-{span id}-{flags}`, the sampled flag alone, in lower-case hex.
    pub(super) fn traceparent(context: &SpanContext) -> HeaderValue {
        use std::io::Write as _;
        let mut text = [0u8; 55];
        let flags = (context.trace_flags() & TraceFlags::SAMPLED).to_u8();
        let mut cursor = &mut text[..];
        // 55 bytes exactly: it cannot run out of room.
        let _ = write!(
            cursor,
            "00-{:032x}-{:016x}-{flags:02x}",
            context.trace_id(),
            context.span_id()
        );
        // Hex digits and dashes only: always a valid header value.
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The remote span context in `headers`, if their `traceparent` is valid; a `tracestate`
    /// that does not parse is read as empty.
    pub(super) fn read(headers: &HeaderMap) -> Option<SpanContext> {
        let value = headers.get(TRACEPARENT)?.to_str().ok()?.trim();
        let mut parts = value.split_terminator('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let more = parts.next().is_some();
        // Versions up to fe; version 00 has exactly four parts, later ones may add more.
        let version = u8::from_str_radix(version, 16).ok()?;
        if version == 0xff || (version == 0 && more) {
            return None;
        }
        let lower = |part: &str| !part.bytes().any(|byte| byte.is_ascii_uppercase());
        if !(lower(trace_id) && lower(span_id) && lower(flags)) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        // Unknown flags are accepted and cleared, as the recommendation says.
        let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED;
        let state = headers
            .get(TRACESTATE)
            .and_then(|value| value.to_str().ok())
            .map(|value| TraceState::from_str(value).unwrap_or_default())
            .unwrap_or_default();
        let context = SpanContext::new(trace_id, span_id, flags, true, state);
        context.is_valid().then_some(context)
    }
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use std::collections::HashMap;

    use axum::http::HeaderMap;
    use axum::http::header::{HeaderName, HeaderValue};
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use proptest::prelude::*;

    use super::w3c;

    /// Headers as the SDK's propagator writes and reads them: the oracle.
    #[derive(Default)]
    struct Map(HashMap<String, String>);

    impl Injector for Map {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_owned(), value);
        }
    }

    impl Extractor for Map {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    fn context(trace: u128, span: u64, flags: u8, state: TraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::new(flags),
            true,
            state,
        )
    }

    /// What the SDK's propagator reads from `traceparent` (and `tracestate`), if valid.
    fn sdk_reads(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let mut map = Map::default();
        map.0.insert("traceparent".into(), traceparent.into());
        if let Some(state) = tracestate {
            map.0.insert("tracestate".into(), state.into());
        }
        let read = TraceContextPropagator::new()
            .extract_with_context(&opentelemetry::Context::new(), &map);
        let read = read.span().span_context().clone();
        read.is_valid().then_some(read)
    }

    /// What [`w3c::read`] reads from the same headers.
    fn we_read(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("traceparent"),
            HeaderValue::from_str(traceparent).ok()?,
        );
        if let Some(state) = tracestate {
            headers.insert(
                HeaderName::from_static("tracestate"),
                HeaderValue::from_str(state).ok()?,
            );
        }
        w3c::read(&headers)
    }

    #[test]
    fn traceparent_is_written_as_the_w3c_recommendation_and_the_sdk_write_it() {
        let sent = context(
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            0x00f0_67aa_0ba9_02b7,
            0x01,
            TraceState::default(),
        );
        let ours = w3c::traceparent(&sent);
        assert_eq!(
            ours.as_bytes(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let mut map = Map::default();
        TraceContextPropagator::new().inject_context(
            &opentelemetry::Context::new().with_remote_span_context(sent.clone()),
            &mut map,
        );
        assert_eq!(
            map.0.get("traceparent").map(String::as_bytes),
            Some(ours.as_bytes())
        );
        assert_eq!(we_read(ours.to_str().unwrap_or(""), None), Some(sent));
    }

    #[test]
    fn a_tracestate_is_read_with_its_entries_and_an_invalid_one_as_empty() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let read = we_read(parent, Some("vendor=value")).map(|c| c.trace_state().header());
        assert_eq!(read.as_deref(), Some("vendor=value"));
        let read = we_read(parent, Some("not a state")).map(|c| c.trace_state().header());
        assert_eq!(read.as_deref(), Some(""));
    }

    #[test]
    fn invalid_traceparents_are_refused_as_the_sdk_refuses_them() {
        for header in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-xx",
        ] {
            assert_eq!(we_read(header, None), None, "{header:?}");
            assert_eq!(sdk_reads(header, None), None, "{header:?}");
        }
        // A later version may add parts; unknown flags are cleared.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff-more";
        assert_eq!(we_read(later, None), sdk_reads(later, None));
        assert!(we_read(later, None).is_some_and(|c| c.trace_flags() == TraceFlags::SAMPLED));
    }

    proptest! {
        /// Any context written is read back whole, and as the SDK reads it.
        #[test]
        fn what_is_written_is_read_back_as_the_sdk_reads_it(
            trace in 1..=u128::MAX,
            span in 1..=u64::MAX,
            flags in any::<u8>(),
        ) {
            let sent = context(trace, span, flags, TraceState::default());
            let written = w3c::traceparent(&sent);
            let written = written.to_str().unwrap_or("");
            let read = we_read(written, None);
            prop_assert_eq!(read.as_ref().map(SpanContext::trace_id), Some(sent.trace_id()));
            prop_assert_eq!(read.as_ref().map(SpanContext::span_id), Some(sent.span_id()));
            prop_assert_eq!(
                read.as_ref().map(SpanContext::trace_flags),
                Some(sent.trace_flags() & TraceFlags::SAMPLED)
            );
            prop_assert_eq!(read, sdk_reads(written, None));
        }

        /// Any header, valid or not, is read as the SDK reads it: shaped like a traceparent
        /// (parts of about the right lengths, any case, some versions with more parts), and
        /// shapeless.
        #[test]
        fn any_traceparent_is_read_as_the_sdk_reads_it(
            shaped in "[0-9a-fA-F]{1,3}-[0-9a-fA-F]{30,33}-[0-9a-fA-F]{15,17}-[0-9a-fA-F]{1,3}(-[a-z0-9]{0,4})?",
            shapeless in "[0-9a-fA-F]{1,3}(-[0-9a-fA-Fx+]{0,33}){0,5}-?",
        ) {
            prop_assert_eq!(we_read(&shaped, None), sdk_reads(&shaped, None));
            prop_assert_eq!(we_read(&shapeless, None), sdk_reads(&shapeless, None));
        }
    }
}
