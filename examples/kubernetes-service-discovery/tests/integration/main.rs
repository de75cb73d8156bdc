//! The example's integration tests, in one binary (one link of kube, axum and the service):
//!
//! - `api`: the REST API of one replica and its OpenAPI document;
//! - `cli`: `cachectl` against a running cluster;
//! - `dashboard`: the Grafana dashboard against the replicas' `/metrics` and a real Prometheus;
//! - `honest`: writes that miss a replica say so, metrics present from the start, the
//!   simulated database keeps deletes, the README's local recipe runs as written;
//! - `kubectl`: the fake Kubernetes API server checked by a real `kubectl` (client-go);
//! - `database`: three replicas on a real PostgreSQL of the test's own (`postgres`);
//! - `policies`: the items' cache policies on PostgreSQL: negative answers, `DELETE /items`
//!   (admin only), stale items while the database is down;
//! - `docs`: the README's local recipe and the kustomize overlays as written, schemathesis over
//!   the OpenAPI document against a replica on PostgreSQL;
//! - `discovery`: discovery against a fake Kubernetes API server (`fake_apiserver`);
//! - `service`: the service binary as processes on loopback (`process`), with Prometheus,
//!   promtool, SIGTERM, and Kubernetes mode against the fake API server.
//!
//! `cargo test -p kubernetes-service-discovery --test integration discovery::` runs one group.

mod api;
mod cli;
mod dashboard;
mod database;
mod discovery;
mod docs;
mod fake_apiserver;
mod honest;
mod kubectl;
mod policies;
mod postgres;
mod process;
mod service;
