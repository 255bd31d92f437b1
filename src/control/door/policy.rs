//! Vault's ACL policies over HTTP, kept in the store (kind `policy`, body
//! `{"policy": "<HCL as written>"}`), seen by every instance:
//!
//! ```text
//! GET          sys/policy                  {"keys","policies"}  (hvac list_policies)
//! GET|PUT|POST|DELETE sys/policy/NAME      {"name","rules"}     (hvac *_policy)
//! LIST         sys/policies/acl            {"keys"}             (vault policy list)
//! GET|PUT|POST|DELETE sys/policies/acl/NAME {"name","policy"}   (vault policy write, Terraform)
//! ```
//!
//! A write takes `{"policy": "..."}` (or the older `"rules"`), HCL or its
//! JSON form, base64-encoded or not, as Vault does; text that does not
//! parse answers 400 with the parser's message. Names are lower-cased.
//! `root` is built in, can be neither read, written nor deleted; `default`
//! is built in until rewritten, and cannot be deleted. Both always list.
//! Who may call is the gate's business (`control/access.rs`): the path and
//! capability, `create` for a new policy and `update` for an existing one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::acl::{normalize_name, Policy, PolicyTexts, DEFAULT_POLICY};
use crate::control::access::Access;
use crate::control::leases::{is_list, ListQuery};
use crate::control::vault::{request_id, ApiError};
use crate::control::AdminState;
use crate::store::{Kind, Store, StoreError};

/// The stored policies, as the gate reads them: the store's snapshot,
/// never a wait on the network.
pub struct StoredPolicies(pub Store);

impl PolicyTexts for StoredPolicies {
    fn text(&self, name: &str) -> Option<String> {
        let snapshot = self.0.snapshot();
        let stored = snapshot.get(Kind::Policy, name)?;
        stored.body.get("policy")?.as_str().map(str::to_owned)
    }
}

/// Which of Vault's two policy APIs a request came through: they differ
/// in the field that carries the text (`rules` / `policy`) and in how
/// they list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `sys/policy`: the older one (hvac's `*_policy`).
    Legacy,
    /// `sys/policies/acl` (the CLI, Terraform, hvac's `*_acl_policy`).
    Acl,
}

impl Api {
    fn text_field(self) -> &'static str {
        match self {
            Api::Legacy => "rules",
            Api::Acl => "policy",
        }
    }
}

/// `GET /v1/sys/policy` (the names, as `keys` and `policies`), or `LIST
/// /v1/sys/policies/acl` (as `keys`).
pub async fn list(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Query(query): Query<ListQuery>,
    api: Api,
) -> Result<Response, ApiError> {
    let listing = match api {
        Api::Legacy => method == Method::GET || is_list(&method, &query),
        Api::Acl => is_list(&method, &query),
    };
    if !listing {
        return Err(crate::control::method_not_allowed_error());
    }
    let store = store(&state)?;
    let snapshot = store.snapshot();
    let mut names: Vec<String> = snapshot
        .names(Kind::Policy)
        .map(str::to_owned)
        .chain(["default".to_owned(), "root".to_owned()])
        .collect();
    names.sort();
    names.dedup();
    let data = match api {
        Api::Legacy => json!({ "keys": names, "policies": names }),
        Api::Acl => json!({ "keys": names }),
    };
    Ok(sys_envelope(data))
}

/// `GET|PUT|POST|DELETE /v1/sys/policy/NAME` and `/v1/sys/policies/acl/NAME`.
pub async fn one(
    State(state): State<Arc<AdminState>>,
    method: Method,
    Path(name): Path<String>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
    api: Api,
) -> Result<Response, ApiError> {
    let name = normalize_name(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let store = store(&state)?;
    match method {
        Method::GET => read(store, &name, api),
        Method::PUT | Method::POST => {
            let text = policy_text(body)?;
            write(store, &access, &name, &text).await
        }
        Method::DELETE => delete(store, &name).await,
        _ => Err(crate::control::method_not_allowed_error()),
    }
}

fn read(store: &Store, name: &str, api: Api) -> Result<Response, ApiError> {
    let text = match StoredPolicies(store.clone()).text(name) {
        Some(text) => text,
        None if name == "default" => DEFAULT_POLICY.to_owned(),
        // root has no text: Vault answers it as missing too.
        None => return Err(ApiError::empty_list()),
    };
    let mut data = json!({ "name": name });
    data[api.text_field()] = json!(text);
    Ok(sys_envelope(data))
}

async fn write(
    store: &Store,
    access: &Access,
    name: &str,
    text: &str,
) -> Result<Response, ApiError> {
    if name == "root" {
        return Err(ApiError::bad_request("cannot update root policy"));
    }
    Policy::parse(name, text).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let exists = store.snapshot().get(Kind::Policy, name).is_some() || name == "default";
    access.require_write(exists)?;
    store
        .put(
            Kind::Policy,
            name,
            &json!({ "policy": text }),
            &access.caller.label(),
        )
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete(store: &Store, name: &str) -> Result<Response, ApiError> {
    if name == "root" || name == "default" {
        return Err(ApiError::bad_request(format!(
            "cannot delete {name} policy"
        )));
    }
    // Deleting what is not there succeeds, as in Vault.
    store
        .delete(Kind::Policy, name)
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The policy text of a write: `policy` (or Vault's older `rules`),
/// base64-decoded when it is base64, as Vault's handler does.
fn policy_text(body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    #[derive(Debug, Default, Deserialize)]
    struct Body {
        policy: Option<String>,
        rules: Option<String>,
    }
    let body: Body = crate::control::leases::parse_body(body)?;
    let text = body
        .policy
        .or(body.rules)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("'policy' parameter not supplied or empty"))?;
    Ok(base64_text(&text).unwrap_or(text))
}

/// `text` decoded, when it is standard base64 of UTF-8 text (HCL with its
/// spaces, braces and quotes never is).
fn base64_text(text: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The store, or 404 when the Vault routes are off.
fn store(state: &AdminState) -> Result<&Store, ApiError> {
    super::door(state).map(|door| &door.shared.store)
}

fn store_error(e: StoreError) -> ApiError {
    if e.is_client_error() {
        ApiError::bad_request(e.to_string())
    } else {
        tracing::warn!("policy store: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is unavailable; try again",
        )
    }
}

/// Vault's envelope for the system backend: `data`, and (as Vault still
/// does for `sys/` answers, which older clients read) its fields at the
/// top level too.
fn sys_envelope(data: Value) -> Response {
    let mut body = json!({
        "request_id": request_id(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data.clone(),
        "wrap_info": null,
        "warnings": null,
        "auth": null,
        "mount_type": "system",
    });
    if let (Some(top), Value::Object(fields)) = (body.as_object_mut(), data) {
        for (k, v) in fields {
            top.entry(k).or_insert(v);
        }
    }
    (StatusCode::OK, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_may_come_base64_encoded_and_hcl_never_looks_like_base64() {
        let hcl = "path \"database/creds/readonly\" { capabilities = [\"read\"] }";
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(hcl);
        assert_eq!(base64_text(&encoded).as_deref(), Some(hcl));
        assert_eq!(base64_text(hcl), None);
    }
}
