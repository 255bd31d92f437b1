//! `/healthz`, `/readyz`, `/metrics`: for load balancers, orchestrators and
//! Prometheus; no token needed.
//!
//! - `/healthz` answers 200 while the process serves HTTP at all
//!   (liveness: restart me when this fails).
//! - `/readyz` answers 200 when an admin connection to every configured
//!   database works now, 503 naming each one that does not, and 503 at once
//!   when shutdown has begun, so the load balancer stops sending clients
//!   while sessions drain.
//! - `/metrics` is the Prometheus text exposition.

use std::sync::Arc;
use std::time::Duration;

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

pub async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.shutdown.is_cancelled() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: draining sessions",
        )
        .into_response();
    }
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
    if failing.is_empty() {
        return Json(json!({ "status": "ready", "databases": state.databases })).into_response();
    }
    failing.sort();
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        // The reason stays in the log: this endpoint needs no token.
        errors: failing
            .iter()
            .map(|d| format!("database \"{d}\": admin connection failed"))
            .collect(),
    }
    .into_response()
}

/// Also refreshes the gauges measured at scrape time
/// (`rolemint_managed_roles`): one catalog query per scrape, bounded by the
/// readiness timeout, and left at its last value when it fails.
pub async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    match tokio::time::timeout(state.ready_timeout, state.probe.managed_roles()).await {
        Ok(Ok(n)) => crate::observe::metrics::managed_roles(n),
        Ok(Err(e)) => tracing::warn!("counting managed roles: {e}"),
        Err(_) => tracing::warn!("counting managed roles: timed out"),
    }
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
