//! What a person's CLI asks the admin listener: how to sign in
//! (`/.well-known/rolemint-login`, public) and who the signed-in person is
//! and what they may use (`/v1/rolemint/whoami`).
//!
//! Both answer from the running config and the same policy the proxy
//! applies, so `rolemint status` can never promise a template the proxy
//! then refuses.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::auth::presented_token;
use super::vault::ApiError;
use super::AdminState;
use crate::auth::identity::Identity;
use crate::config::Config;
use crate::runtime::state::{Runtime, Shared};

/// Largest `proxy_ca_file` published.
const MAX_CA_BYTES: u64 = 64 * 1024;

/// What the two routes read: the server's state.
pub struct People {
    pub shared: Arc<Shared>,
}

/// `GET /.well-known/rolemint-login`: the issuer, client id and scopes of
/// `[login]`, where psql connects, the CA of the proxy's certificate, and
/// the provider's CA when the proxy trusts a private one (`jwks_ca_file`).
/// No token: it is what a person needs before they have one. 404 without
/// `[login]`.
pub async fn login_metadata(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let people = people(&state)?;
    let runtime = people.shared.runtime();
    let config = &runtime.config;
    let login = config
        .login
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no [login] configured"))?;
    let issuer = config
        .auth
        .issuers
        .iter()
        .find(|i| i.name == login.issuer)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no [login] configured"))?;
    let mut scopes = login.scopes.clone();
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    let proxy_ca_pem = match &login.proxy_ca_file {
        Some(path) => Some(read_ca(path).await.map_err(|e| {
            tracing::error!("login.proxy_ca_file {}: {e}", path.display());
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the proxy's CA",
            )
        })?),
        None => None,
    };
    // A private provider's CA, as the proxy trusts it for discovery and
    // JWKS: the CLI then needs no --issuer-ca-cert.
    let issuer_ca_pem = match &issuer.jwks_ca_file {
        Some(path) => Some(read_ca(path).await.map_err(|e| {
            tracing::error!("jwks_ca_file {}: {e}", path.display());
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the identity provider's CA",
            )
        })?),
        None => None,
    };
    let body = json!({
        "issuer": issuer.issuer,
        "issuer_name": issuer.name,
        "client_id": login.client_id,
        "scopes": scopes,
        "proxy_address": proxy_address(config, &headers),
        "proxy_ca_pem": proxy_ca_pem,
        "issuer_ca_pem": issuer_ca_pem,
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

async fn read_ca(path: &std::path::Path) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await?;
    let mut text = String::new();
    file.take(MAX_CA_BYTES).read_to_string(&mut text).await?;
    Ok(text)
}

/// `login.proxy_address`, else the host the request reached us at with
/// the proxy's port.
fn proxy_address(config: &Config, headers: &HeaderMap) -> Option<String> {
    if let Some(addr) = config.login.as_ref().and_then(|l| l.proxy_address.clone()) {
        return Some(addr);
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = match host.rsplit_once(':') {
        // "[::1]:8200", "h:8200"; a bare IPv6 literal has brackets.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    if host.is_empty() || host.len() > 255 {
        return None;
    }
    Some(format!("{host}:{}", config.proxy.listen.port()))
}

/// `GET /v1/rolemint/whoami`: the identity behind the presented token
/// (an identity JWT, a static token, or a client token of the Vault
/// login), its expiry, and each template with the databases it may open —
/// from the proxy's own policy. 403 for anything else, the operator token
/// included (it is nobody).
pub async fn whoami(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let people = people(&state)?;
    let identity = identity_of(&state, &headers)?;
    let runtime = people.shared.runtime();
    let snapshot = people.shared.store.snapshot();
    let requests = crate::auth::access::parse_all(
        snapshot
            .iter(crate::store::Kind::AccessRequest)
            .map(|(_, s)| &s.body),
    );
    let ttl = identity
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Ok(super::vault::envelope(json!({
        "issuer": identity.issuer,
        "identity": identity.subject,
        "groups": identity.groups,
        "expire_time": humantime::format_rfc3339_seconds(identity.expires_at).to_string(),
        "ttl": ttl.as_secs(),
        "templates": usable(&runtime, &identity, &requests),
    })))
}

/// Every template `identity` may open, with the databases it may open it
/// on and its lease TTL; for one with an `approval` rule, the grant that
/// opens it now (`approval.granted_until`, null without one: its sessions
/// are refused until a request is approved).
pub fn usable(
    runtime: &Runtime,
    identity: &Identity,
    requests: &[crate::auth::access::Request],
) -> Vec<serde_json::Value> {
    let config = &runtime.config;
    let now = SystemTime::now();
    let who = crate::auth::access::Principal::of(identity);
    config
        .roles
        .iter()
        .filter_map(|(name, t)| {
            let databases: Vec<&String> = t
                .databases
                .iter()
                .filter(|db| {
                    crate::auth::policy::authorize(config, &runtime.policy, identity, name, db)
                        .is_ok()
                })
                .collect();
            let approval = t.approval.as_ref().map(|_| {
                let grant = crate::auth::access::active_grant(requests, &who, name, now);
                json!({
                    "request_id": grant.map(|r| r.id.clone()),
                    "granted_until": grant.and_then(|r| r.granted_until).map(|u| {
                        crate::pg::rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u))
                    }),
                })
            });
            (!databases.is_empty()).then(|| {
                json!({
                    "name": name,
                    "databases": databases,
                    "default_ttl": t.default_ttl.as_secs(),
                    "max_ttl": t.max_ttl.as_secs(),
                    "approval": approval,
                })
            })
        })
        .collect()
}

/// The person (or workload) behind a request's token: an identity JWT, a
/// static token, or a client token of the Vault login. 403 for anything
/// else, the operator token included (it is nobody).
pub fn identity_of(state: &AdminState, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let people = people(state)?;
    let token = presented_token(headers).ok_or_else(ApiError::permission_denied)?;
    match &state.vault {
        Some(door) => door.identity(token),
        None => people.shared.runtime().verifier.verify(token).ok(),
    }
    .ok_or_else(ApiError::permission_denied)
}

pub(crate) fn people(state: &AdminState) -> Result<&Arc<People>, ApiError> {
    state
        .people
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown path"))
}
