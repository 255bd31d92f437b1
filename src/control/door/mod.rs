//! The Vault-compatible door: who a workload is, and the routes that let a
//! program written for Vault's database secrets engine run unchanged with
//! `VAULT_ADDR` pointed at rolemint.
//!
//! ```text
//! POST /v1/auth/<jwt mount>/login          login.rs     {"role","jwt"} -> client token
//! GET  /v1/auth/token/lookup-self          login.rs     200 / 403
//! GET  /v1/<db mount>/creds/<template>     database.rs  mint a credential lease
//! GET|LIST /v1/<db mount>/roles[/<name>]   database.rs  templates, as Vault shows roles
//! POST /v1/<db mount>/rotate-root/<db>     database.rs  new admin password (operators)
//! GET|HEAD /v1/sys/health                  here         Vault's health shape
//! ```
//!
//! A workload presents, as `X-Vault-Token` or `Authorization: Bearer`, a
//! client token from a login ([`tokens`]), or its identity JWT or
//! static token directly; either way it acts as [`Caller::Workload`], on
//! its own leases only. The operator token is checked first and stays the
//! only way to act on every lease.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};

use self::tokens::{is_client_token, ClientTokens};
use super::auth::{presented_token, Caller};
use super::vault::ApiError;
use super::AdminState;

pub mod database;
pub mod login;
pub mod tokens;
use crate::auth::identity::Identity;
use crate::lease::creds::Credentials;
use crate::runtime::state::Shared;

/// What the Vault routes share.
pub struct VaultDoor {
    /// The server's state: config, token verifier, admin client, leases, revoker.
    pub shared: Arc<Shared>,
    /// Client tokens handed out by logins.
    pub tokens: ClientTokens,
    /// Credential leases, bounded.
    pub creds: Credentials,
}

impl VaultDoor {
    pub fn new(shared: Arc<Shared>) -> VaultDoor {
        let v = &shared.config.vault;
        VaultDoor {
            tokens: ClientTokens::new(v.max_client_tokens),
            creds: Credentials::new(v.max_credential_leases),
            shared,
        }
    }

    /// The workload identity behind a presented token: a client token of
    /// ours, else an identity JWT or static token checked with the keys at
    /// hand. `None` for anything else.
    pub fn identity(&self, token: &str) -> Option<Identity> {
        if is_client_token(token) {
            return self.tokens.lookup(token);
        }
        self.shared.runtime().verifier.verify(token).ok()
    }
}

/// The workload caller of `identity`.
pub fn workload(identity: &Identity) -> Caller {
    Caller::Workload {
        issuer: identity.issuer.clone(),
        identity: identity.subject.clone(),
    }
}

/// The identity of a workload request, or 403 (also for the operator token,
/// which stands for no identity and so can be handed no credentials).
pub fn require_workload(state: &AdminState, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let door = state
        .vault
        .as_ref()
        .ok_or_else(ApiError::permission_denied)?;
    presented_token(headers)
        .and_then(|token| door.identity(token))
        .ok_or_else(ApiError::permission_denied)
}

/// The door of `state`, or 404 when the Vault routes are off.
pub fn door(state: &AdminState) -> Result<&Arc<VaultDoor>, ApiError> {
    state
        .vault
        .as_ref()
        .ok_or_else(|| ApiError::new(axum::http::StatusCode::NOT_FOUND, "unknown path"))
}

/// The Vault routes for the configured mounts.
pub fn routes(state: &AdminState) -> Router<Arc<AdminState>> {
    let mut router = Router::new()
        .route("/v1/sys/health", get(sys_health))
        .route("/v1/auth/token/lookup-self", any(login::lookup_self));
    let Some(door) = &state.vault else {
        return router;
    };
    let v = &door.shared.config.vault;
    for mount in &v.jwt_mounts {
        router = router.route(
            &format!("/v1/auth/{mount}/login"),
            post(login::login).put(login::login),
        );
    }
    let db = &v.database_mount;
    use database::*;
    router
        .route(&format!("/v1/{db}/creds/{{template}}"), get(creds))
        .route(&format!("/v1/{db}/roles"), any(roles_list))
        .route(&format!("/v1/{db}/roles/"), any(roles_list))
        .route(&format!("/v1/{db}/roles/{{name}}"), any(role))
        .route(
            &format!("/v1/{db}/rotate-root/{{database}}"),
            post(rotate_root).put(rotate_root),
        )
}

/// `GET|HEAD /v1/sys/health`: what Vault clients and load balancers probe.
/// Always unsealed and active: rolemint has no seal, and every instance
/// serves.
async fn sys_health(State(_): State<Arc<AdminState>>, method: Method) -> Response {
    let body = serde_json::json!({
        "initialized": true,
        "sealed": false,
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "version": env!("CARGO_PKG_VERSION"),
        "cluster_name": "rolemint",
    });
    if method == Method::HEAD {
        return axum::http::StatusCode::OK.into_response();
    }
    Json(body).into_response()
}
