//! Auth roles of the jwt/kubernetes mounts: `auth/<mount>/role/<name>`
//! (write, read, delete) and `LIST auth/<mount>/role`, in Vault's fields
//! (`auth/auth_role.rs`). Kept in the store as generic objects of kind
//! `auth_role`, named `<mount>.<role>` (a mount name has no `.`), so every
//! instance logs in with them within a second of a write.
//!
//! Writing and deleting are the operator's; reading and listing too (a
//! role's bounds describe who may get which policies). The mount's
//! `config` answers 400 naming the config keys that hold it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

use super::door;
use crate::auth::auth_role::{valid_name, AuthRole};
use crate::control::leases::{is_list, parse_body, ListQuery};
use crate::control::vault::{envelope, ApiError};
use crate::control::AdminState;
use crate::store::{Kind, Snapshot};

/// The store name of role `role` on `mount`.
pub fn key(mount: &str, role: &str) -> String {
    format!("{mount}.{role}")
}

/// The roles of `mount` in `snapshot`, by role name.
pub fn roles_of<'a>(snapshot: &'a Snapshot, mount: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let prefix = format!("{mount}.");
    snapshot
        .names(Kind::AuthRole)
        .filter_map(move |n| n.strip_prefix(prefix.as_str()))
}

/// Role `role` of `mount`, if stored and readable.
pub fn find(snapshot: &Snapshot, mount: &str, role: &str) -> Option<AuthRole> {
    let stored = snapshot.get(Kind::AuthRole, &key(mount, role))?;
    match serde_json::from_value(stored.body.clone()) {
        Ok(role) => Some(role),
        Err(e) => {
            tracing::warn!(mount, role, "stored auth role unreadable: {e}");
            None
        }
    }
}

/// Adds the role routes of `mount`.
pub fn routes(router: Router<Arc<AdminState>>, mount: &str) -> Router<Arc<AdminState>> {
    let list = {
        let mount = mount.to_owned();
        move |state, method, query, headers| role_list(state, method, query, headers, mount.clone())
    };
    let one = {
        let mount = mount.to_owned();
        move |state, method, path, headers, body| {
            role(state, method, path, headers, body, mount.clone())
        }
    };
    router
        .route(&format!("/v1/auth/{mount}/role"), any(list.clone()))
        .route(&format!("/v1/auth/{mount}/role/"), any(list))
        .route(&format!("/v1/auth/{mount}/role/{{name}}"), any(one))
        .route(
            &format!("/v1/auth/{mount}/config"),
            any(config_is_the_files),
        )
}

/// `auth/<mount>/config` (`vault write auth/kubernetes/config
/// kubernetes_host=...`, a step of Vault's tutorials): a 400 that says
/// where rolemint keeps what it would hold, rather than "unknown path".
async fn config_is_the_files() -> ApiError {
    ApiError::bad_request(
        "rolemint checks this mount's JWTs against the issuers of its config file \
         ([auth] issuer and audience, [[auth.issuers]] with jwks_url, jwks_file or public \
         keys); auth/<mount>/config is not kept: set them there and reload (SIGHUP)",
    )
}

/// `LIST auth/<mount>/role`.
async fn role_list(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Query(query): Query<ListQuery>,
    _headers: HeaderMap,
    mount: String,
) -> Result<Response, ApiError> {
    if !is_list(&method, &query) {
        return Err(crate::control::method_not_allowed_error());
    }
    // Operators, or `list` on the path: the gate checked (control/access.rs).
    let door = door(&state)?;
    let snapshot = door.shared.store.snapshot();
    let keys: Vec<&str> = roles_of(&snapshot, &mount).collect();
    if keys.is_empty() {
        return Err(ApiError::empty_list());
    }
    Ok(envelope(json!({ "keys": keys })))
}

/// `GET|POST|PUT|DELETE auth/<mount>/role/<name>`.
async fn role(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    mount: String,
) -> Result<Response, ApiError> {
    // Operators, or the capability on the path: the gate checked.
    let caller = state.authenticate(&headers)?;
    let door = door(&state)?;
    if !valid_name(&name) {
        return Err(ApiError::bad_request(
            "invalid role name: 1 to 128 of [A-Za-z0-9_.-]",
        ));
    }
    let store = &door.shared.store;
    let name_key = key(&mount, &name);
    match method {
        Method::GET => {
            // Vault answers a missing role 404 with no errors.
            let role = find(&store.snapshot(), &mount, &name).ok_or_else(ApiError::empty_list)?;
            Ok(envelope(role.view()))
        }
        Method::POST | Method::PUT => {
            let body: Value = parse_body(body)?;
            let role =
                AuthRole::from_request(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let stored = serde_json::to_value(&role)
                .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
            store
                .put(Kind::AuthRole, &name_key, &stored, &caller.label())
                .await
                .map_err(store_error)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::DELETE => {
            store
                .delete(Kind::AuthRole, &name_key)
                .await
                .map_err(store_error)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(crate::control::method_not_allowed_error()),
    }
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    if e.is_client_error() {
        ApiError::bad_request(e.to_string())
    } else {
        tracing::warn!("auth role store: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is unavailable; try again",
        )
    }
}
