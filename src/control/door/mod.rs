//! The Vault-compatible door: who a workload is, and the routes that let a
//! program written for Vault's database secrets engine run unchanged with
//! `VAULT_ADDR` pointed at rolemint.
//!
//! ```text
//! POST /v1/auth/<jwt mount>/login          login.rs     {"role","jwt"} -> client token
//! *    /v1/auth/<jwt mount>/role[/<name>]  auth_roles.rs  auth roles (operators)
//! *    /v1/auth/token/...                  tokens.rs    create, lookup, renew, revoke
//! GET  /v1/<db mount>/creds/<template>     database.rs  mint a credential lease
//! GET|LIST /v1/<db mount>/roles[/<name>]   roles.rs     templates, as Vault shows roles
//! POST|PUT|DELETE /v1/<db mount>/roles/<n> roles.rs     templates written (operators)
//!                                          script.rs    a statements script cut into statements
//! POST /v1/<db mount>/rotate-root/<db>     database.rs  new admin password (operators)
//! *    /v1/sys/policy[/<name>], /v1/sys/policies/acl[/<name>]  policy.rs  Vault ACL policies
//! GET|HEAD /v1/sys/health                  here         Vault's health shape
//! GET|POST /v1/sys/mounts[/<path>]         sys.rs       mounts (enable: idempotent)
//! GET|POST /v1/sys/auth[/<path>]           sys.rs       auth mounts
//! LIST|GET|POST|DELETE /v1/<db mount>/config[/<n>]  connection.rs  connections
//! POST /v1/<db mount>/reset/<name>         connection.rs  check a connection
//! ```
//!
//! A workload presents, as `X-Vault-Token` or `Authorization: Bearer`, a
//! Vault token (from a login or `auth/token/create`, kept in PostgreSQL:
//! [`tokens`]), or its identity JWT or static token directly; either way
//! it acts as [`Caller::Workload`] with the token's policies (`default`
//! for a JWT), on its own leases only. The operator token is checked
//! first: it is the root of the token tree and the only way to act on
//! every lease.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};

use self::tokens::LiveTokens;
use super::auth::{presented_token, Caller};
use super::vault::ApiError;
use super::AdminState;

pub mod auth_roles;
pub mod connection;
pub mod database;
pub mod login;
pub mod policy;
pub mod roles;
mod script;
pub mod sys;
pub mod tokens;
pub mod writes;
use crate::auth::identity::Identity;
use crate::auth::token::{is_token, TokenHash};
use crate::lease::creds::Credentials;
use crate::runtime::state::Shared;
use crate::store::tokens::{StoredToken, Tokens};

/// What the Vault routes share.
pub struct VaultDoor {
    /// The server's state: config, token verifier, admin client, leases, revoker.
    pub shared: Arc<Shared>,
    /// Vault tokens, in PostgreSQL.
    pub tokens: Tokens,
    /// The stored tokens of the requests running now (see `tokens.rs`).
    pub live: LiveTokens,
    /// Credential leases, bounded.
    pub creds: Credentials,
}

/// Who a workload request is: its identity (for its own leases and the
/// templates' allow rules), its policies, and its stored token if it
/// presented one.
#[derive(Debug, Clone)]
pub struct Principal {
    pub identity: Identity,
    pub policies: Vec<String>,
    pub token: Option<Arc<StoredToken>>,
}

impl VaultDoor {
    pub fn new(shared: Arc<Shared>) -> VaultDoor {
        let v = &shared.config.vault;
        VaultDoor {
            tokens: Tokens::new(Arc::clone(&shared.admin_client), v.max_client_tokens)
                .with_max_per_principal(tokens::max_per_principal(&shared.config)),
            live: LiveTokens::default(),
            creds: Credentials::new(v.max_credential_leases, shared.creds_services()),
            shared,
        }
    }

    /// The workload behind a presented token: a stored Vault token read
    /// for this request, else an identity JWT or static token checked with
    /// the keys at hand (the `default` policy). `None` for anything else.
    pub fn principal(&self, token: &str) -> Option<Principal> {
        if is_token(token) {
            return self
                .live
                .get(&TokenHash::of(token))
                .map(|t| tokens::principal_of(&t));
        }
        let identity = self.shared.runtime().verifier.verify(token).ok()?;
        Some(Principal {
            identity,
            policies: vec!["default".to_owned()],
            token: None,
        })
    }

    /// The workload identity behind a presented token (see [`Self::principal`]).
    pub fn identity(&self, token: &str) -> Option<Identity> {
        self.principal(token).map(|p| p.identity)
    }

    /// The stored token a request presents, as read for it.
    pub fn presented(&self, headers: &HeaderMap) -> Option<Arc<StoredToken>> {
        let token = presented_token(headers).filter(|t| is_token(t))?;
        self.live.get(&TokenHash::of(token))
    }
}

/// The workload caller of `principal`.
pub fn workload(principal: &Principal) -> Caller {
    Caller::Workload {
        issuer: principal.identity.issuer.clone(),
        identity: principal.identity.subject.clone(),
        policies: principal.policies.clone(),
    }
}

/// The workload of a request, or 403 (also for the operator token, which
/// stands for no identity and so can be handed no credentials).
pub fn require_workload(state: &AdminState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let door = state
        .vault
        .as_ref()
        .ok_or_else(ApiError::permission_denied)?;
    presented_token(headers)
        .and_then(|token| door.principal(token))
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
        let m = mount.clone();
        let login = move |state, addr, body| login::login(state, addr, body, m.clone());
        router = router.route(
            &format!("/v1/auth/{mount}/login"),
            post(login.clone()).put(login),
        );
        router = auth_roles::routes(router, mount);
    }
    router = token_routes(router);
    router = policy_routes(router);
    let db = &v.database_mount;
    use database::*;
    // The admin persona (issue 20): mounts, connections, written roles.
    let router = router
        .route("/v1/sys/mounts", get(sys::mounts))
        .route("/v1/sys/mounts/{*path}", any(sys::mount_path))
        .route("/v1/sys/auth", get(sys::auths))
        .route("/v1/sys/auth/{*path}", any(sys::auth_path))
        .route(&format!("/v1/{db}/config"), any(connection::config_list))
        .route(&format!("/v1/{db}/config/"), any(connection::config_list))
        .route(
            &format!("/v1/{db}/config/{{name}}"),
            any(connection::config),
        )
        .route(
            &format!("/v1/{db}/reset/{{name}}"),
            post(connection::reset).put(connection::reset),
        );
    router
        .route(&format!("/v1/{db}/creds/{{template}}"), get(creds))
        .route(&format!("/v1/{db}/roles"), any(roles::roles_list))
        .route(&format!("/v1/{db}/roles/"), any(roles::roles_list))
        .route(&format!("/v1/{db}/roles/{{name}}"), any(roles::role))
        .route(
            &format!("/v1/{db}/rotate-root/{{database}}"),
            post(rotate_root).put(rotate_root),
        )
}

/// `sys/policy` and `sys/policies/acl` (policy.rs).
fn policy_routes(router: Router<Arc<AdminState>>) -> Router<Arc<AdminState>> {
    use policy::{list, one, Api};
    let mut router = router;
    for (base, api) in [
        ("/v1/sys/policy", Api::Legacy),
        ("/v1/sys/policies/acl", Api::Acl),
    ] {
        let l = move |state, method, query| list(state, method, query, api);
        let o =
            move |state, method, path, access, body| one(state, method, path, access, body, api);
        router = router
            .route(base, any(l))
            .route(&format!("{base}/"), any(l))
            .route(&format!("{base}/{{name}}"), any(o));
    }
    router
}

/// `auth/token/*` (`lookup-self` is served with or without the door).
fn token_routes(router: Router<Arc<AdminState>>) -> Router<Arc<AdminState>> {
    use tokens::{create, lookup, renew, revoke, Target};
    let t = |p: &str| format!("/v1/auth/token/{p}");
    let mut router = router;
    for (path, orphan) in [("create", false), ("create-orphan", true)] {
        let c = move |state, client, headers, body| create(state, client, headers, body, orphan);
        router = router.route(&t(path), post(c).put(c));
    }
    for (suffix, target) in [
        ("", Target::Token),
        ("-self", Target::Presented),
        ("-accessor", Target::Accessor),
    ] {
        let l = move |state, headers, body| lookup(state, headers, body, target);
        let r = move |state, headers, body| renew(state, headers, body, target);
        let v = move |state, headers, body| revoke(state, headers, body, target);
        if target != Target::Presented {
            router = router.route(&t(&format!("lookup{suffix}")), post(l).put(l));
        }
        router = router
            .route(&t(&format!("renew{suffix}")), post(r).put(r))
            .route(&t(&format!("revoke{suffix}")), post(v).put(v));
    }
    router
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
