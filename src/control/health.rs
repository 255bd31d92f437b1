//! `/healthz`, `/readyz`, `/metrics`: for load balancers, orchestrators and
//! Prometheus; no token needed.
//!
//! - `/healthz` answers 200 while the process serves HTTP at all
//!   (liveness: restart me when this fails).
//! - `/readyz` answers 200 when an admin connection to every configured
//!   database worked at the last check, 503 naming each one that did not,
//!   and 503 at once when shutdown has begun, so the load balancer stops
//!   sending clients while sessions drain.
//! - `/metrics` is the Prometheus text exposition.
//!
//! Neither runs a query: a background task ([`refresh`]) checks every
//! [`PROBE_INTERVAL`] and the probes read its last result, so no number of
//! probes can delay a mint (issue 18, §2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::vault::ApiError;
use super::{AdminState, BoxFuture};

/// Something that can prove an admin connection to a database works.
pub trait Probe: Send + Sync + 'static {
    /// `Err` carries a short reason for the log.
    fn ping<'a>(&'a self, database: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Members of `rolemint_managed` now, for `rolemint_managed_roles`.
    fn managed_roles(&self) -> BoxFuture<'_, Result<u64, String>>;
}

impl Probe for crate::pg::AdminClient {
    fn ping<'a>(&'a self, database: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.ping(database).await.map_err(|e| e.to_string()) })
    }
    fn managed_roles(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move { self.managed_role_count().await.map_err(|e| e.to_string()) })
    }
}

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// How often the background task checks readiness and counts managed roles.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The last readiness check, as the background task left it.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// When the check finished.
    checked: Instant,
    /// Databases whose admin connection failed, sorted; empty: ready.
    failing: Vec<String>,
}

/// What probes read: the background task's last result. A flood of
/// `/readyz` and `/metrics` requests reads this and never reaches
/// PostgreSQL, so it cannot take an admin connection a mint is waiting for.
#[derive(Debug)]
pub struct ProbeResults {
    ready: tokio::sync::watch::Sender<Option<Readiness>>,
}

impl Default for ProbeResults {
    fn default() -> Self {
        ProbeResults {
            ready: tokio::sync::watch::Sender::new(None),
        }
    }
}

/// Checks readiness and counts managed roles every [`PROBE_INTERVAL`] until
/// `stop`: the only code that runs the probes' queries, one round at a
/// time (on the admin client's own probe connections, see
/// `AdminClient::ping`).
pub async fn refresh(state: Arc<AdminState>, stop: tokio_util::sync::CancellationToken) {
    loop {
        // The gauge first: a probe that waited for the first readiness
        // result then finds it set too.
        match tokio::time::timeout(state.ready_timeout, state.probe.managed_roles()).await {
            Ok(Ok(n)) => crate::observe::metrics::managed_roles(n),
            Ok(Err(e)) => tracing::warn!("counting managed roles: {e}"),
            Err(_) => tracing::warn!("counting managed roles: timed out"),
        }
        let failing = check_databases(&state).await;
        state.probes.ready.send_replace(Some(Readiness {
            checked: Instant::now(),
            failing,
        }));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// Pings every database at once, each bounded by the readiness timeout;
/// the ones that failed, sorted.
async fn check_databases(state: &AdminState) -> Vec<String> {
    let mut checks = tokio::task::JoinSet::new();
    for database in state.databases.iter().cloned() {
        let probe = Arc::clone(&state.probe);
        let timeout = state.ready_timeout;
        checks.spawn(async move {
            let result = match tokio::time::timeout(timeout, probe.ping(&database)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            (database, result)
        });
    }
    let mut failing = Vec::new();
    while let Some(joined) = checks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((database, Err(reason))) => {
                tracing::warn!(database, "not ready: {reason}");
                failing.push(database);
            }
            Err(e) => failing.push(format!("(probe task failed: {e})")),
        }
    }
    failing.sort();
    failing
}

/// The last readiness result; before the first, waits for it (at most the
/// readiness timeout). A result older than two rounds is no result: the
/// checks themselves hang.
async fn latest(state: &AdminState) -> Option<Readiness> {
    let mut rx = state.probes.ready.subscribe();
    let first = tokio::time::timeout(state.ready_timeout, rx.wait_for(Option::is_some)).await;
    let result = match first {
        Ok(Ok(r)) => r.clone(),
        _ => return None,
    };
    let stale = 2 * (PROBE_INTERVAL + 2 * state.ready_timeout);
    result.filter(|r| r.checked.elapsed() <= stale)
}

pub async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.shutdown.is_cancelled() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: draining sessions",
        )
        .into_response();
    }
    let Some(ready) = latest(&state).await else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "readiness unknown: the admin connection checks are not answering",
        )
        .into_response();
    };
    if ready.failing.is_empty() {
        return Json(json!({ "status": "ready", "databases": state.databases })).into_response();
    }
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        // The reason stays in the log: this endpoint needs no token.
        errors: ready
            .failing
            .iter()
            .map(|d| format!("database \"{d}\": admin connection failed"))
            .collect(),
    }
    .into_response()
}

/// The Prometheus text. The gauges measured from the catalog
/// (`rolemint_managed_roles`) are the background task's, refreshed every
/// [`PROBE_INTERVAL`]: a scrape runs no query.
pub async fn metrics(State(_): State<Arc<AdminState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::observe::metrics::render(),
    )
        .into_response()
}

/// How long a readiness probe may wait for one database.
pub fn ready_timeout(config: &crate::config::Config) -> Duration {
    config
        .admin_operation_timeout()
        .min(config.admin.request_timeout)
}
