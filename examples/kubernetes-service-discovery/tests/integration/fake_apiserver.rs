//! A fake Kubernetes API server on loopback that serves EndpointSlices with the real list and
//! watch protocol, so discovery runs against the same bytes a cluster sends:
//!
//! - lists carry `metadata.resourceVersion`, honour `labelSelector`, and page with `limit` and
//!   `continue` (over a snapshot taken at the first page);
//! - `watch=true` answers with one JSON event per line in a chunked body (`ADDED`, `MODIFIED`,
//!   `DELETED`, `BOOKMARK` when `allowWatchBookmarks=true`), replays the history after the
//!   requested `resourceVersion`, and ends after `timeoutSeconds`;
//! - a `resourceVersion` older than the last compaction gets an `ERROR` event with a `410`
//!   `Expired` Status, as etcd-backed servers send;
//! - failures: every request answered `503`, watches cut mid-stream, or the listener closed
//!   altogether (connection refused) and reopened on the same port.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

type Chunk = Result<Bytes, std::io::Error>;

/// One label selector term per `key=value` (or `key==value`).
type Selector = Vec<(String, String)>;

/// An open watch.
struct Watch {
    namespace: String,
    selector: Selector,
    bookmarks: bool,
    events: mpsc::UnboundedSender<Chunk>,
}

/// A change, kept until compaction so that watches can resume from any later version.
struct Change {
    rv: u64,
    kind: &'static str,
    namespace: String,
    object: Value,
    /// The object before the change (for selector transitions).
    before: Option<Value>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (namespace, name) -> object, with its resourceVersion.
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    /// Versions up to this one are gone: watching from an older one gets 410.
    compacted: u64,
    watches: Vec<Watch>,
    /// Snapshots of paged lists, by continue token.
    continuations: HashMap<String, (u64, Vec<Value>)>,
    failing: bool,
    lists: usize,
    watch_requests: usize,
    failed_requests: usize,
    gone_sent: usize,
    /// While set and `false`, watch requests wait before they are served (a slow network
    /// between a client's list and its watch, during which the server can compact).
    watch_gate: Option<tokio::sync::watch::Receiver<bool>>,
    /// Watch requests waiting at the gate.
    held_watches: usize,
}

/// The fake server. Stops when dropped.
pub(crate) struct FakeApiServer {
    /// `http://127.0.0.1:port`.
    pub url: String,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    running: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl FakeApiServer {
    /// Starts a server on a free loopback port.
    pub(crate) async fn start() -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let server = FakeApiServer {
            url: format!("http://{addr}"),
            addr,
            state: Arc::new(Mutex::new(State::default())),
            running: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let app = Router::new()
            .route(
                "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                get(endpoint_slices),
            )
            // API discovery, as `kubectl` asks for it before naming a resource.
            .route("/api", get(|| async { discovery_json(&api_versions()) }))
            .route(
                "/api/v1",
                get(|| async { discovery_json(&core_resources()) }),
            )
            .route("/apis", get(|| async { discovery_json(&api_groups()) }))
            .route(
                "/apis/discovery.k8s.io/v1",
                get(|| async { discovery_json(&discovery_resources()) }),
            )
            .fallback(|| async {
                status_response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })
            .with_state(self.state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        *lock(&self.running) = Some((stop, task));
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Creates or replaces an EndpointSlice (namespace and name from its metadata).
    pub(crate) fn apply(&self, mut slice: Value) {
        let namespace = slice["metadata"]["namespace"]
            .as_str()
            .expect("namespace")
            .to_owned();
        let name = slice["metadata"]["name"].as_str().expect("name").to_owned();
        let mut state = self.state();
        state.rv += 1;
        let rv = state.rv;
        let before = state
            .objects
            .get(&(namespace.clone(), name.clone()))
            .cloned();
        let uid = match &before {
            Some(old) => old["metadata"]["uid"].clone(),
            None => json!(format!("uid-{name}-{rv}")),
        };
        slice["apiVersion"] = json!("discovery.k8s.io/v1");
        slice["kind"] = json!("EndpointSlice");
        slice["metadata"]["uid"] = uid;
        slice["metadata"]["resourceVersion"] = json!(rv.to_string());
        state
            .objects
            .insert((namespace.clone(), name), slice.clone());
        let kind = if before.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.record(Change {
            rv,
            kind,
            namespace,
            object: slice,
            before,
        });
    }

    /// Deletes an EndpointSlice.
    pub(crate) fn delete(&self, namespace: &str, name: &str) {
        let mut state = self.state();
        let Some(mut object) = state
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))
        else {
            panic!("no EndpointSlice {namespace}/{name} to delete");
        };
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let before = Some(object.clone());
        state.record(Change {
            rv,
            kind: "DELETED",
            namespace: namespace.to_owned(),
            object,
            before,
        });
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that asked for them.
    pub(crate) fn bookmark(&self) {
        let mut state = self.state();
        let line = event_line(
            "BOOKMARK",
            &json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": { "resourceVersion": state.rv.to_string() },
            }),
        );
        state
            .watches
            .retain(|watch| !watch.bookmarks || watch.events.send(Ok(line.clone())).is_ok());
    }

    /// Holds every watch request until the returned sender sends `true` (or is dropped).
    pub(crate) fn hold_watches(&self) -> tokio::sync::watch::Sender<bool> {
        let (open, gate) = tokio::sync::watch::channel(false);
        self.state().watch_gate = Some(gate);
        open
    }

    /// Watch requests waiting at the gate of [`FakeApiServer::hold_watches`].
    pub(crate) fn held_watches(&self) -> usize {
        self.state().held_watches
    }

    /// Forgets the history: watches from any version before now get 410 Gone.
    pub(crate) fn compact(&self) {
        let mut state = self.state();
        state.history.clear();
        state.compacted = state.rv;
    }

    /// Ends every watch cleanly, as the server does at `timeoutSeconds`.
    pub(crate) fn end_watches(&self) {
        self.state().watches.clear();
    }

    /// Cuts every watch mid-stream: the chunked body is aborted.
    pub(crate) fn sever_watches(&self) {
        for watch in self.state().watches.drain(..) {
            let _ = watch
                .events
                .send(Err(std::io::Error::other("watch severed by the test")));
        }
    }

    /// While failing, every request is answered `503 ServiceUnavailable`; starting to fail cuts
    /// every watch.
    pub(crate) fn set_failing(&self, failing: bool) {
        self.state().failing = failing;
        if failing {
            self.sever_watches();
        }
    }

    /// Closes the listener and every connection: clients get connection refused until
    /// [`FakeApiServer::restart`].
    pub(crate) async fn stop(&self) {
        let running = lock(&self.running).take();
        self.sever_watches();
        if let Some((stop, task)) = running {
            let _ = stop.send(());
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the fake API server stops within 10 s")
                .expect("the fake API server task");
        }
    }

    /// Listens again on the same port, with the same objects.
    pub(crate) async fn restart(&self) {
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    // The port is released asynchronously after the old sockets close.
                    eprintln!("rebinding {}: {error}; retrying", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("cannot rebind {}: {error}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// List requests served (each page counts).
    pub(crate) fn lists(&self) -> usize {
        self.state().lists
    }

    /// Watch requests served.
    pub(crate) fn watch_requests(&self) -> usize {
        self.state().watch_requests
    }

    /// Requests answered 503 while failing.
    pub(crate) fn failed_requests(&self) -> usize {
        self.state().failed_requests
    }

    /// Watches refused with 410 Gone.
    pub(crate) fn gone_sent(&self) -> usize {
        self.state().gone_sent
    }

    /// A summary for failure messages.
    pub(crate) fn describe(&self) -> String {
        let state = self.state();
        format!(
            "rv {} (compacted {}), {} objects, {} lists, {} watch requests, {} open watches, \
             {} failed requests, {} 410s",
            state.rv,
            state.compacted,
            state.objects.len(),
            state.lists,
            state.watch_requests,
            state.watches.len(),
            state.failed_requests,
            state.gone_sent
        )
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some((stop, task)) = lock(&self.running).take() {
            let _ = stop.send(());
            task.abort();
        }
        self.sever_watches();
    }
}

impl State {
    /// Records a change and sends it to the watches it concerns.
    fn record(&mut self, change: Change) {
        let mut watches = std::mem::take(&mut self.watches);
        watches.retain(|watch| match watch_event(watch, &change) {
            Some(line) => watch.events.send(Ok(line)).is_ok(),
            None => !watch.events.is_closed(),
        });
        self.watches = watches;
        self.history.push(change);
    }
}

/// What a watch sees of a change: objects entering or leaving its selector are ADDED or
/// DELETED, as the API server does.
fn watch_event(watch: &Watch, change: &Change) -> Option<Bytes> {
    if watch.namespace != change.namespace {
        return None;
    }
    let now = change.kind != "DELETED" && matches(&watch.selector, &change.object);
    let was = change
        .before
        .as_ref()
        .is_some_and(|before| matches(&watch.selector, before));
    let kind = match (was, now) {
        (false, false) => return None,
        (false, true) => "ADDED",
        (true, false) => "DELETED",
        (true, true) => change.kind,
    };
    Some(event_line(kind, &change.object))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object })).expect("JSON");
    line.push(b'\n');
    Bytes::from(line)
}

fn matches(selector: &Selector, object: &Value) -> bool {
    selector
        .iter()
        .all(|(key, value)| object["metadata"]["labels"][key].as_str() == Some(value.as_str()))
}

fn parse_selector(text: &str) -> Result<Selector, String> {
    text.split(',')
        .filter(|term| !term.trim().is_empty())
        .map(|term| {
            let (key, value) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .filter(|(key, _)| !key.ends_with('!'))
                .ok_or_else(|| format!("unsupported selector term {term:?}"))?;
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn status_json(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn discovery_json(body: &Value) -> Response {
    json_response(StatusCode::OK, body)
}

fn api_versions() -> Value {
    json!({ "kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [] })
}

fn core_resources() -> Value {
    json!({ "kind": "APIResourceList", "groupVersion": "v1", "resources": [] })
}

fn api_groups() -> Value {
    let version = json!({ "groupVersion": "discovery.k8s.io/v1", "version": "v1" });
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{
            "name": "discovery.k8s.io",
            "versions": [version],
            "preferredVersion": version,
        }],
    })
}

fn discovery_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "discovery.k8s.io/v1",
        "resources": [{
            "name": "endpointslices",
            "singularName": "endpointslice",
            "namespaced": true,
            "kind": "EndpointSlice",
            "verbs": ["get", "list", "watch"],
        }],
    })
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(code, &status_json(code, reason, message))
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).expect("JSON"),
    )
        .into_response()
}

async fn endpoint_slices(
    AxumState(state): AxumState<Arc<Mutex<State>>>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query: HashMap<String, String> =
        reqwest::Url::parse(&format!("http://query/?{}", query.unwrap_or_default()))
            .map(|url| url.query_pairs().into_owned().collect())
            .unwrap_or_default();
    let is_watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let gate = if is_watch {
        lock(&state).watch_gate.clone()
    } else {
        None
    };
    if let Some(mut gate) = gate {
        lock(&state).held_watches += 1;
        // A dropped sender opens the gate too.
        let _ = gate.wait_for(|open| *open).await;
        lock(&state).held_watches -= 1;
    }
    let mut state = lock(&state);
    if state.failing {
        state.failed_requests += 1;
        return status_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the API server is unavailable (test outage)",
        );
    }
    let selector = match parse_selector(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(selector) => selector,
        Err(message) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    if is_watch {
        watch(&mut state, namespace, selector, &query)
    } else {
        list(&mut state, &namespace, &selector, &query)
    }
}

fn list(
    state: &mut State,
    namespace: &str,
    selector: &Selector,
    query: &HashMap<String, String>,
) -> Response {
    state.lists += 1;
    let limit = query
        .get("limit")
        .and_then(|limit| limit.parse::<usize>().ok())
        .filter(|&limit| limit > 0);
    let (rv, items, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let Some((rv, items)) = state.continuations.get(token).cloned() else {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token",
                );
            };
            if rv < state.compacted {
                return status_response(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
            let offset = token
                .rsplit('-')
                .next()
                .and_then(|offset| offset.parse().ok())
                .unwrap_or(0);
            (rv, items, offset)
        }
        None => {
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((ns, _), object)| ns == namespace && matches(selector, object))
                .map(|(_, object)| {
                    // List items carry no kind or apiVersion: the list does.
                    let mut item = object.clone();
                    if let Some(map) = item.as_object_mut() {
                        map.remove("kind");
                        map.remove("apiVersion");
                    }
                    item
                })
                .collect();
            (state.rv, items, 0)
        }
    };
    let end = limit.map_or(items.len(), |limit| (offset + limit).min(items.len()));
    let page = items[offset.min(end)..end].to_vec();
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if end < items.len() {
        let token = format!("{rv}-{}-{end}", state.continuations.len());
        state.continuations.insert(token.clone(), (rv, items));
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(0);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSliceList",
            "metadata": metadata,
            "items": page,
        }),
    )
}

fn watch(
    state: &mut State,
    namespace: String,
    selector: Selector,
    query: &HashMap<String, String>,
) -> Response {
    state.watch_requests += 1;
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let (events, receiver) = mpsc::unbounded_channel::<Chunk>();
    let watch = Watch {
        namespace,
        selector,
        bookmarks: query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true"),
        events,
    };
    let from = query.get("resourceVersion").map_or("", String::as_str);
    let mut open = true;
    if from.is_empty() || from == "0" {
        // "Any version": the current objects as ADDED events, then changes.
        for ((ns, _), object) in &state.objects {
            if *ns == watch.namespace && matches(&watch.selector, object) {
                let _ = watch.events.send(Ok(event_line("ADDED", object)));
            }
        }
    } else {
        let Ok(from) = from.parse::<u64>() else {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "invalid resourceVersion",
            );
        };
        if from < state.compacted {
            state.gone_sent += 1;
            let message = format!("too old resource version: {from} ({})", state.compacted + 1);
            let error = status_json(StatusCode::GONE, "Expired", &message);
            let _ = watch.events.send(Ok(event_line("ERROR", &error)));
            open = false;
        } else {
            for change in state.history.iter().filter(|change| change.rv > from) {
                if let Some(line) = watch_event(&watch, change) {
                    let _ = watch.events.send(Ok(line));
                }
            }
        }
    }
    if open {
        state.watches.push(watch);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let body = futures_util::stream::unfold(receiver, move |mut receiver| async move {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(chunk)) => Some((chunk, receiver)),
            _ => None,
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// An EndpointSlice of `service` in `namespace` with one port named `http`, and one endpoint
/// per `(address, ready)`, as the EndpointSlice controller writes them.
pub(crate) fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    port: u16,
    endpoints: &[(&str, bool)],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(address, ready)| {
            json!({
                "addresses": [address],
                "conditions": { "ready": ready, "serving": ready, "terminating": false },
                "targetRef": { "kind": "Pod", "namespace": namespace, "name": format!("pod-{address}") },
            })
        })
        .collect();
    json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": port, "protocol": "TCP" }],
    })
}
