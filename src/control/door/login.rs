//! Vault's login and token lookup: `POST /v1/auth/<mount>/login` with
//! `{"role": "...", "jwt": "..."}`, as Vault's `jwt` and `kubernetes`
//! auth methods take it, and `GET /v1/auth/token/lookup-self`.
//!
//! The JWT is checked against the configured issuers exactly as a
//! session's token is (JWKS refresh for an unknown `kid`, the per-address
//! limit on failures). `role` names Vault's auth role; rolemint has none,
//! so it is only echoed in the metadata: what the identity may do is the
//! templates' policy, listed as `policies`.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::door;
use super::tokens::{client_token_ttl, TokenError};
use crate::auth::identity::Identity;
use crate::config::Config;
use crate::control::auth::presented_token;
use crate::control::vault::{auth_envelope, envelope, ApiError};
use crate::control::{AdminState, ClientAddr};
use crate::observe::audit::Event;

/// Longest `role` accepted.
const MAX_ROLE_BYTES: usize = 128;

#[derive(Debug, Default, Deserialize)]
struct LoginBody {
    role: Option<String>,
    jwt: Option<String>,
}

/// `POST /v1/auth/<mount>/login`.
pub async fn login(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    let body: LoginBody = crate::control::leases::parse_body(body)?;
    let role = body.role.unwrap_or_default();
    if role.len() > MAX_ROLE_BYTES {
        return Err(ApiError::bad_request("role too long"));
    }
    let jwt = body.jwt.unwrap_or_default();
    if jwt.is_empty() {
        return Err(ApiError::bad_request("missing jwt"));
    }
    let shared = &door.shared;
    if jwt.len() > shared.config.proxy.max_token_bytes {
        return Err(ApiError::bad_request("jwt too long"));
    }
    let identity = match shared
        .runtime()
        .verifier
        .authenticate_from(client.ip(), &jwt)
        .await
    {
        Ok(identity) => identity,
        Err(e) => {
            crate::observe::metrics::auth(false, e.reason());
            state.audit.record(Event::AuthFailed {
                reason: e.to_string(),
                issuer: None,
                identity: None,
                client_addr: client.to_string(),
                template: String::new(),
                database: String::new(),
            });
            // Like a session's 28P01: the caller is not told which check
            // failed; the audit log is.
            return Err(ApiError::permission_denied());
        }
    };
    drop(jwt);
    crate::observe::metrics::auth(true, "ok");
    let now = SystemTime::now();
    let ttl = client_token_ttl(&identity, shared.config.vault.client_token_ttl, now);
    let token = door
        .tokens
        .issue(&identity, now + ttl)
        .map_err(|e| match e {
            TokenError::Full => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            TokenError::Random => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        })?;
    state.audit.record(Event::AuthOk {
        identity: identity.subject.clone(),
        issuer: Some(identity.issuer.clone()),
        client_addr: client.to_string(),
        template: String::new(),
        database: String::new(),
    });
    let policies = templates_allowed(&shared.runtime().config, &identity);
    Ok(auth_envelope(json!({
        "client_token": token.expose(),
        "accessor": "",
        "policies": policies,
        "token_policies": policies,
        "metadata": {
            "identity": identity.subject,
            "issuer": identity.issuer,
            "role": role,
        },
        "lease_duration": ttl.as_secs(),
        "renewable": false,
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
    })))
}

/// The templates `identity` may mint from (on their first database), as
/// Vault lists a token's policies.
pub fn templates_allowed(config: &Config, identity: &Identity) -> Vec<String> {
    config
        .roles
        .iter()
        .filter(|(name, t)| {
            t.databases.first().is_some_and(|db| {
                crate::auth::policy::authorize(config, identity, name, db).is_ok()
            })
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// `GET /v1/auth/token/lookup-self`: 200 for a token rolemint accepts
/// (what `hvac.Client.is_authenticated()` asks), 403 otherwise. The token
/// itself is never echoed.
pub async fn lookup_self(
    State(state): State<Arc<AdminState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::POST && method != Method::PUT {
        return Err(crate::control::method_not_allowed_error());
    }
    if state.authenticate(&headers)?.is_operator() {
        return Ok(envelope(json!({
            "display_name": "operator",
            "policies": ["root"],
            "meta": null,
            "type": "service",
        })));
    }
    let door = door(&state)?;
    let identity = presented_token(&headers)
        .and_then(|t| door.identity(t))
        .ok_or_else(ApiError::permission_denied)?;
    let ttl = identity
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Ok(envelope(json!({
        "display_name": identity.subject,
        "policies": templates_allowed(&door.shared.runtime().config, &identity),
        "meta": { "identity": identity.subject, "issuer": identity.issuer },
        "expire_time": humantime::format_rfc3339_seconds(identity.expires_at).to_string(),
        "ttl": ttl.as_secs(),
        "renewable": false,
        "type": "service",
    })))
}
