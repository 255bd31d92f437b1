//! Vault's `sys/mounts` and `sys/auth`: the mounts rolemint serves, in
//! Vault's shape, so `vault secrets list`, `vault secrets enable database`
//! and `vault auth enable kubernetes` (and hvac's, Terraform's) work.
//!
//! rolemint's mounts are fixed by its config (`[vault] database_mount`,
//! `jwt_mounts`): enabling one that is there is a no-op (204), as the
//! tutorials' first step expects; anything else answers 400 naming the
//! config key. Operators only.
//!
//! ```text
//! GET  /v1/sys/mounts              the secrets mounts (database, sys)
//! GET  /v1/sys/mounts/<path>       one of them
//! POST /v1/sys/mounts/<path>       enable: 204 for the database mount
//! GET  /v1/sys/auth                the auth mounts (token, jwt, kubernetes)
//! POST /v1/sys/auth/<path>         enable: 204 for a configured one
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::door;
use crate::config::VaultConfig;
use crate::control::auth::Authenticated;
use crate::control::leases::parse_body;
use crate::control::vault::{envelope, request_id, ApiError};
use crate::control::AdminState;

/// One mount as Vault lists it.
fn mount(kind: &str, path: &str, description: &str) -> Value {
    json!({
        "type": kind,
        "description": description,
        "accessor": format!("{}_{}", kind, path.trim_end_matches('/').replace('/', "_")),
        "config": {
            "default_lease_ttl": 0,
            "max_lease_ttl": 0,
            "force_no_cache": false,
        },
        "options": null,
        "local": false,
        "seal_wrap": false,
        "external_entropy_access": false,
        "plugin_version": "",
        "running_plugin_version": "",
        "running_sha256": "",
        "uuid": "",
    })
}

fn secrets_mounts(v: &VaultConfig) -> Map<String, Value> {
    let mut all = Map::new();
    all.insert(
        format!("{}/", v.database_mount),
        mount(
            "database",
            &v.database_mount,
            "rolemint: credentials minted from role templates",
        ),
    );
    all.insert("sys/".into(), mount("system", "sys", "system endpoints"));
    all
}

fn auth_type(mount: &str) -> &'static str {
    if mount == "kubernetes" {
        "kubernetes"
    } else {
        "jwt"
    }
}

fn auth_mounts(v: &VaultConfig) -> Map<String, Value> {
    let mut all = Map::new();
    all.insert(
        "token/".into(),
        mount("token", "token", "token based credentials"),
    );
    for m in &v.jwt_mounts {
        all.insert(
            format!("{m}/"),
            mount(auth_type(m), m, "rolemint: identity tokens"),
        );
    }
    all
}

/// Vault's answer to a listing: the mounts both at the top level (as
/// older clients read them) and under `data`.
fn listing(mounts: Map<String, Value>) -> Response {
    let mut body = mounts.clone();
    body.insert("request_id".into(), json!(request_id()));
    body.insert("lease_id".into(), json!(""));
    body.insert("renewable".into(), json!(false));
    body.insert("lease_duration".into(), json!(0));
    body.insert("data".into(), Value::Object(mounts));
    body.insert("wrap_info".into(), Value::Null);
    body.insert("warnings".into(), Value::Null);
    body.insert("auth".into(), Value::Null);
    (StatusCode::OK, Json(Value::Object(body))).into_response()
}

/// `GET /v1/sys/mounts`.
pub async fn mounts(
    State(state): State<Arc<AdminState>>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    // Operators, or the capability on the path: the gate checked.
    auth.caller()?;
    Ok(listing(secrets_mounts(&door.shared.config.vault)))
}

/// `GET /v1/sys/auth`.
pub async fn auths(
    State(state): State<Arc<AdminState>>,
    auth: Authenticated,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    // Operators, or the capability on the path: the gate checked.
    auth.caller()?;
    Ok(listing(auth_mounts(&door.shared.config.vault)))
}

/// The `type` of an enable request.
fn requested_type(body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    let fields: Map<String, Value> = parse_body(body)?;
    Ok(fields
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned())
}

/// `/v1/sys/mounts/<path>`: read one, or enable (idempotent for the
/// database mount).
pub async fn mount_path(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Path(path): Path<String>,
    auth: Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    // Operators, or the capability on the path: the gate checked.
    auth.caller()?;
    let v = &door.shared.config.vault;
    let key = format!("{}/", path.trim_end_matches('/'));
    let all = secrets_mounts(v);
    match method.as_str() {
        "GET" => all
            .get(&key)
            .map(envelope)
            .ok_or_else(|| ApiError::bad_request(format!("no matching mount at \"{key}\""))),
        "POST" | "PUT" => {
            let kind = requested_type(body)?;
            if key == format!("{}/", v.database_mount) && (kind == "database" || kind.is_empty()) {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            Err(ApiError::bad_request(format!(
                "rolemint serves one secrets engine, the database mount at \"{}/\" ([vault] \
                 database_mount in its config); \"{key}\" of type \"{kind}\" cannot be enabled",
                v.database_mount
            )))
        }
        "DELETE" => Err(ApiError::bad_request(format!(
            "rolemint's mounts are set in its config ([vault] database_mount); \"{key}\" \
             cannot be disabled over the API"
        ))),
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "unsupported operation",
        )),
    }
}

/// `/v1/sys/auth/<path>`: enable (idempotent for a configured mount).
pub async fn auth_path(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Path(path): Path<String>,
    auth: Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    // Operators, or the capability on the path: the gate checked.
    auth.caller()?;
    let v = &door.shared.config.vault;
    let name = path.trim_end_matches('/');
    match method.as_str() {
        "POST" | "PUT" => {
            let kind = requested_type(body)?;
            let known = v.jwt_mounts.iter().any(|m| m == name);
            let fits =
                kind.is_empty() || kind == auth_type(name) || kind == "jwt" || kind == "oidc";
            if known && fits {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            Err(ApiError::bad_request(format!(
                "rolemint's auth mounts are set in its config ([vault] jwt_mounts = {:?}); \
                 \"{name}/\" of type \"{kind}\" cannot be enabled over the API",
                v.jwt_mounts
            )))
        }
        "DELETE" => Err(ApiError::bad_request(
            "rolemint's auth mounts are set in its config ([vault] jwt_mounts); they cannot \
             be disabled over the API",
        )),
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "unsupported operation",
        )),
    }
}
