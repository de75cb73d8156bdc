//! What the handlers share: the caches, the database, the metrics and the readiness flags.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use groupcache_rs::Groupcache;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::api::bearer::AdminToken;
use crate::database::Database;
use crate::database::categories::Categories;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    discovered: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Discovery has produced its first complete peer set.
    pub fn set_discovered(&self) {
        self.discovered.store(true, Ordering::Release);
    }

    /// Shutdown has begun: report not-ready so that traffic moves elsewhere.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub(crate) fn state(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("shutting down")
        } else if !self.discovered.load(Ordering::Acquire) {
            Err("waiting for the first peer list")
        } else {
            Ok(())
        }
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The items' cache (the `--group` group).
    pub cache: Groupcache<Database>,
    /// The categories' cache (the [`CATEGORY_GROUP`](crate::config::CATEGORY_GROUP) group), on
    /// the same cluster.
    pub categories: Groupcache<Categories>,
    /// The database behind it, for writes.
    pub database: Database,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Readiness flags.
    pub readiness: Arc<Readiness>,
    /// This replica's name in responses.
    pub replica: Arc<str>,
    /// What admin requests (`DELETE /items`) must bear; none: they are refused.
    pub admin_token: Option<Arc<AdminToken>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("cache", &self.cache)
            .field("categories", &self.categories)
            .finish_non_exhaustive()
    }
}
