//! Vault's login and token lookup: `POST /v1/auth/<mount>/login` with
//! `{"role": "...", "jwt": "..."}`, as Vault's `jwt` and `kubernetes`
//! auth methods take it, and `GET /v1/auth/token/lookup-self`.
//!
//! The JWT is checked against the configured issuers exactly as a
//! session's token is (JWKS refresh for an unknown `kid`, the per-address
//! limit on failures). Then:
//! - When the mount has auth roles (`auth_roles.rs`), `role` must name
//!   one (400 otherwise, as Vault), the verified claims must meet its
//!   bounds (403 otherwise; the audit log says which bound), and the token
//!   gets the role's policies and TTLs, as in Vault.
//! - When it has none, the login works as it always did: a token standing
//!   for the JWT's identity (the `default` policy), its life capped at the
//!   JWT's own expiry; `policies` lists the templates the identity may use.
//!
//! Either way the token is a stored Vault token (`tokens.rs`): every
//! instance honours it and a restart keeps it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::tokens::{auth_view, issue, limits, AuthView};
use super::{auth_roles, door, VaultDoor};
use crate::auth::auth_role::AuthRole;
use crate::auth::identity::Identity;
use crate::auth::token::{self, plan_login, LoginSpec, Plan};
use crate::control::auth::Authenticated;
use crate::control::vault::{auth_envelope, envelope, ApiError};
use crate::control::{AdminState, ClientAddr};
use crate::observe::audit::Event;
use crate::runtime::state::Runtime;
use crate::store::tokens::NewToken;

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
    mount: String,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    let (role, jwt) = read_body(door, body)?;
    let attempt = Attempt {
        state: &state,
        client,
        mount: &mount,
        role: &role,
    };
    let mut identity = attempt.authenticate(door, &jwt).await?;
    let snapshot = door.shared.store.snapshot();
    let now = SystemTime::now();
    let has_roles = auth_roles::roles_of(&snapshot, &mount).next().is_some();
    let (spec, shown) = if has_roles {
        let found = auth_roles::find(&snapshot, &mount, &role)
            .ok_or_else(|| ApiError::bad_request(format!("role \"{role}\" could not be found")))?;
        attempt.with_role(&found, &jwt, &mut identity)?
    } else {
        let spec = plain_spec(door, &mount, &role, &identity, now);
        (spec, templates_allowed(&door.shared.runtime(), &identity))
    };
    drop(jwt);
    crate::observe::metrics::auth(true, "ok", Some(&identity.issuer));
    let plan =
        plan_login(spec, &limits(door), now).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let role = if has_roles { role.as_str() } else { "" };
    let token = store_login(door, &plan, role, &identity, (now, client)).await?;
    state.audit.record(Event::AuthOk {
        identity: identity.subject.clone(),
        issuer: Some(identity.issuer.clone()),
        client_addr: client.to_string(),
        template: String::new(),
        database: String::new(),
    });
    let mut auth = auth_view(token.expose(), AuthView::from(&plan));
    auth["policies"] = json!(shown);
    auth["token_policies"] = json!(shown);
    Ok(auth_envelope(auth))
}

/// The `role` and `jwt` of a login's body, bounded; the JWT is required.
fn read_body(
    door: &VaultDoor,
    body: Result<Bytes, BytesRejection>,
) -> Result<(String, String), ApiError> {
    let body: LoginBody = crate::control::leases::parse_body(body)?;
    let role = body.role.unwrap_or_default();
    if role.len() > MAX_ROLE_BYTES {
        return Err(ApiError::bad_request("role too long"));
    }
    let jwt = body.jwt.unwrap_or_default();
    if jwt.is_empty() {
        return Err(ApiError::bad_request("missing jwt"));
    }
    if jwt.len() > door.shared.config.proxy.max_token_bytes {
        return Err(ApiError::bad_request("jwt too long"));
    }
    Ok((role, jwt))
}

/// One login attempt, for its audit lines.
struct Attempt<'a> {
    state: &'a AdminState,
    client: std::net::SocketAddr,
    mount: &'a str,
    role: &'a str,
}

impl Attempt<'_> {
    /// The `auth.failed` line of a refusal, and the 403 the caller gets:
    /// like a session's 28P01, the caller is not told which check failed;
    /// the audit log is.
    fn failed(&self, reason: String, identity: Option<&Identity>) -> ApiError {
        self.state.audit.record(Event::AuthFailed {
            reason,
            issuer: identity.map(|i| i.issuer.clone()),
            identity: identity.map(|i| i.subject.clone()),
            client_addr: self.client.to_string(),
            template: String::new(),
            database: String::new(),
        });
        ApiError::permission_denied()
    }

    /// The JWT checked as a session's token is (JWKS refresh, the
    /// per-address failure limit).
    async fn authenticate(&self, door: &VaultDoor, jwt: &str) -> Result<Identity, ApiError> {
        let verifier = &door.shared.runtime().verifier;
        match verifier.authenticate_from(self.client.ip(), jwt).await {
            Ok(identity) => Ok(identity),
            Err(e) => {
                crate::observe::metrics::auth(false, e.reason(), None);
                Err(self.failed(e.to_string(), None))
            }
        }
    }

    /// A login through the auth role `found`: its bounds must match the
    /// verified claims; its user and groups claims name the identity. The
    /// token's spec, and the policies the answer shows.
    fn with_role(
        &self,
        found: &AuthRole,
        jwt: &str,
        identity: &mut Identity,
    ) -> Result<(LoginSpec, Vec<String>), ApiError> {
        // Verified already; the claims are read for the bounds only.
        let claims = crate::auth::identity::verified_claims(jwt)
            .map_err(|e| self.failed(e.to_string(), Some(identity)))?;
        let user = found
            .check(&claims)
            .and_then(|()| found.user(&claims))
            .map_err(|m| {
                crate::observe::metrics::auth(false, "auth_role", Some(&identity.issuer));
                let (mount, role) = (self.mount, self.role);
                self.failed(format!("auth role {mount}/{role}: {m}"), Some(identity))
            })?;
        if let Some(user) = user {
            identity.subject = user;
        }
        if !found.groups_claim.is_empty() {
            identity.groups = found.groups(&claims);
        }
        let spec = role_spec(found, self.mount, self.role, identity, &claims);
        let shown = spec.policies.clone();
        Ok((spec, shown))
    }
}

/// The token of a login on a mount without auth roles: the JWT's identity
/// with the `default` policy, its life capped at the JWT's own expiry.
fn plain_spec(
    door: &VaultDoor,
    mount: &str,
    role: &str,
    identity: &Identity,
    now: SystemTime,
) -> LoginSpec {
    let left = identity.expires_at.duration_since(now).unwrap_or_default();
    let ttl = Duration::from_secs(
        left.min(door.shared.config.vault.client_token_ttl)
            .as_secs()
            .max(1),
    );
    LoginSpec {
        policies: vec!["default".into()],
        ttl,
        max_ttl: ttl,
        explicit_max_ttl: Duration::ZERO,
        num_uses: 0,
        renewable: false,
        display_name: display_name(mount, &identity.subject),
        meta: [
            ("identity".to_owned(), identity.subject.clone()),
            ("issuer".to_owned(), identity.issuer.clone()),
            ("role".to_owned(), role.to_owned()),
        ]
        .into_iter()
        .collect(),
        path: format!("auth/{mount}/login"),
    }
}

/// The token a login with `role` gets.
fn role_spec(
    role: &AuthRole,
    mount: &str,
    name: &str,
    identity: &Identity,
    claims: &serde_json::Value,
) -> LoginSpec {
    let (ttl, max_ttl, explicit_max_ttl) = role.ttls();
    LoginSpec {
        policies: role.policies(),
        ttl,
        max_ttl,
        explicit_max_ttl,
        num_uses: role.token_num_uses,
        renewable: true,
        display_name: display_name(mount, &identity.subject),
        meta: role.metadata(name, claims),
        path: format!("auth/{mount}/login"),
    }
}

/// Vault's display name of a login token: `<mount>-<user>`.
fn display_name(mount: &str, subject: &str) -> String {
    let mut name: String = format!("{mount}-{subject}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(token::MAX_DISPLAY_NAME_BYTES);
    name
}

/// Stores a login's token; the token itself.
async fn store_login(
    door: &VaultDoor,
    plan: &Plan,
    role: &str,
    identity: &Identity,
    (now, client): (SystemTime, std::net::SocketAddr),
) -> Result<crate::secret::Secret, ApiError> {
    let minted = token::mint().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
        )
    })?;
    let new = NewToken {
        hash: minted.hash,
        accessor_hash: minted.accessor_hash,
        parent: None,
        plan,
        role,
        issuer: &identity.issuer,
        subject: &identity.subject,
        groups: &identity.groups,
        created_at: now,
    };
    issue(door, &new, client).await?;
    Ok(minted.token)
}

/// The templates `identity` may mint from (on their first database), as
/// Vault lists a token's policies.
pub fn templates_allowed(runtime: &Runtime, identity: &Identity) -> Vec<String> {
    let config = &runtime.config;
    config
        .roles
        .iter()
        .filter(|(name, t)| {
            t.databases.first().is_some_and(|db| {
                crate::auth::policy::authorize(config, &runtime.policy, identity, name, db).is_ok()
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
    auth: Authenticated,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::POST && method != Method::PUT {
        return Err(crate::control::method_not_allowed_error());
    }
    if auth.caller()?.is_operator() {
        return Ok(envelope(json!({
            "display_name": "operator",
            "policies": ["root"],
            "meta": null,
            "type": "service",
        })));
    }
    let door = door(&state)?;
    if let Some(answer) = super::tokens::lookup_self_stored(door, &headers) {
        return Ok(answer);
    }
    let identity = auth.workload()?;
    let ttl = identity
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Ok(envelope(json!({
        "display_name": identity.subject,
        "policies": templates_allowed(&door.shared.runtime(), identity),
        "meta": { "identity": identity.subject, "issuer": identity.issuer },
        "expire_time": humantime::format_rfc3339_seconds(identity.expires_at).to_string(),
        "ttl": ttl.as_secs(),
        "renewable": false,
        "type": "service",
    })))
}
