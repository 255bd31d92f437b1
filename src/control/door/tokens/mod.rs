//! Vault tokens at the door: `auth/token/*`, and how a request presenting
//! one becomes a caller.
//!
//! ```text
//! POST auth/token/create, create-orphan     a child (or orphan) of the caller's token
//! GET|POST auth/token/lookup-self           the caller's token
//! POST auth/token/lookup {"token"}          any token the caller holds
//! POST auth/token/lookup-accessor {"accessor"}   operators
//! POST auth/token/renew-self, renew {"token"}    (with "increment")
//! POST auth/token/renew-accessor {"accessor"}    operators
//! POST auth/token/revoke-self, revoke {"token"}  204; children and leases with it
//! POST auth/token/revoke-accessor {"accessor"}   operators; 204
//! ```
//!
//! Tokens live in PostgreSQL (`store/tokens.rs`), so a request may reach
//! any instance. [`resolve`], a layer around every admin route, reads the
//! presented token once per request (spending a use when counted) and
//! holds it in [`LiveTokens`] while the request runs; the synchronous
//! [`super::VaultDoor::principal`] (behind `AdminState::authenticate`)
//! finds it there. A revocation on any instance is seen by the next
//! request anywhere.
//!
//! Creating a child takes `update` on `auth/token/create` (or
//! `create-orphan`) in the caller's policies, as in Vault; `sudo` there
//! lifts the subset rule. Knowing a token is authority over it: `lookup`, `renew` and `revoke`
//! with the token in the body are open to any authenticated caller.
//! Accessor routes are the operator's (policies may open them, see
//! `auth/acl`). Revoking a token revokes its subtree and every credential
//! lease any of them created, before the 204.
//!
//! Every token is issued by [`issue`], where the per-principal quota
//! (`[quotas] max_tokens_per_principal`) refuses one more with 429.
//!
//! Here: the routes, one handler a verb ([`Target`] says which token the
//! request names). Beside it: `live.rs` (the per-request reads, the
//! caller a token stands for), `view.rs` (tokens as the answers show
//! them), `token_leases.rs` (the leases a token created, revoked with it;
//! the sweep).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{door, VaultDoor};
use crate::auth::acl::Capability;
use crate::auth::fields;
use crate::auth::token::{
    self, accessor_of, is_token, plan_create, CreateRequest, Creator, Limits, Plan, TokenError,
    TokenHash, MAX_TOKEN_TTL,
};
use crate::config::Config;
use crate::control::auth::{presented_token, Caller};
use crate::control::leases::parse_body;
use crate::control::vault::{auth_envelope_with_warnings, envelope, ApiError};
use crate::control::{AdminState, ClientAddr};
use crate::observe::audit::Event;
use crate::store::tokens::{NewToken, StoredToken, TokenStoreError};

mod live;
mod token_leases;
mod view;

pub use live::{principal_of, resolve, LiveTokens};
pub use token_leases::{record_lease, revoke_tokens, sweep, SWEEP_INTERVAL};
use view::lookup_view;
pub use view::{auth_view, AuthView};

/// The quota's name in the `quota.refused` audit line and the
/// `rolemint_quota_refusals_total` label.
pub const TOKEN_QUOTA: &str = "tokens";

/// 503 for a store that cannot answer; the detail goes to the log.
pub fn store_error(e: TokenStoreError) -> ApiError {
    match e {
        TokenStoreError::Full => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        TokenStoreError::ParentGone => ApiError::permission_denied(),
        TokenStoreError::PrincipalFull(_) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        }
        other => {
            tracing::warn!("token store: {other}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the token store is unavailable; try again",
            )
        }
    }
}

fn token_error(e: TokenError) -> ApiError {
    match e {
        TokenError::Random | TokenError::TimeOutOfRange => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
        other => ApiError::bad_request(other.to_string()),
    }
}

/// The TTL bounds of the door's tokens.
pub fn limits(door: &VaultDoor) -> Limits {
    Limits {
        default_ttl: door.shared.config.vault.client_token_ttl,
        max_ttl: MAX_TOKEN_TTL,
    }
}

/// Who a new token acts as: its parent's principal when it has a parent
/// token (Vault's child inherits the entity), else `token` and its
/// display name with a short, non-secret part of its hash (two tokens
/// named alike are still two principals).
fn child_principal(
    parent: Option<&StoredToken>,
    plan: &Plan,
    hash: &TokenHash,
) -> (String, String, Vec<String>) {
    match parent {
        Some(p) if !plan.orphan => (p.issuer.clone(), p.subject.clone(), p.groups.clone()),
        _ => (
            "token".into(),
            format!("{}-{}", plan.display_name, hash.short()),
            Vec::new(),
        ),
    }
}

/// Most live tokens one principal holds (`[quotas]
/// max_tokens_per_principal`): by default a tenth of the global
/// `vault.max_client_tokens`, as every per-principal quota divides its
/// global limit (`lease/quota.rs`).
pub fn max_per_principal(config: &Config) -> usize {
    config
        .quotas
        .max_tokens_per_principal
        .unwrap_or_else(|| (config.vault.max_client_tokens / 10).max(1))
}

/// Stores a new token: the one place every token is issued (create,
/// create-orphan, login). A principal `(new.issuer, new.subject)` at its
/// quota of live tokens is refused with 429, audited and counted as the
/// other quotas are.
pub async fn issue(
    door: &VaultDoor,
    new: &NewToken<'_>,
    client: SocketAddr,
) -> Result<(), ApiError> {
    let refused = match door.tokens.insert(new).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if let TokenStoreError::PrincipalFull(limit) = refused {
        crate::observe::metrics::quota_refused(TOKEN_QUOTA);
        door.shared.audit.record(Event::QuotaRefused {
            issuer: new.issuer.to_owned(),
            identity: new.subject.to_owned(),
            quota: TOKEN_QUOTA.to_owned(),
            limit,
            template: String::new(),
            client_addr: Some(client.to_string()),
        });
    }
    Err(store_error(refused))
}

/// `POST auth/token/create` and, with `orphan_path`, `create-orphan`.
pub async fn create(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    orphan_path: bool,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    let caller = state.authenticate(&headers)?;
    let body: Value = parse_body(body)?;
    let request = CreateRequest::from_json(&body).map_err(token_error)?;
    let root = vec!["root".to_owned()];
    let parent = door.presented(&headers);
    let creator = creator(&state, &caller, parent.as_deref(), &root, orphan_path)?;
    let now = SystemTime::now();
    let plan =
        plan_create(&request, &creator, orphan_path, &limits(door), now).map_err(token_error)?;
    let minted = token::mint().map_err(token_error)?;
    let parent = if caller.is_operator() { None } else { parent };
    let (issuer, subject, groups) = child_principal(parent.as_deref(), &plan, &minted.hash);
    let new = NewToken {
        hash: minted.hash,
        accessor_hash: minted.accessor_hash,
        parent: parent.as_ref().filter(|_| !plan.orphan).map(|p| p.hash),
        plan: &plan,
        role: "",
        issuer: &issuer,
        subject: &subject,
        groups: &groups,
        created_at: now,
    };
    issue(door, &new, client).await?;
    tracing::info!(
        accessor_hash = %minted.accessor_hash.short(), caller = %caller.label(),
        policies = ?plan.policies, "token created"
    );
    Ok(auth_envelope_with_warnings(
        auth_view(minted.token.expose(), AuthView::from(&plan)),
        Vec::new(),
    ))
}

/// What the creator of a new token may hand on: everything for the
/// operator, the parent token's policies and limits for a workload that
/// holds `update` (or `create`) on the path, as in Vault.
fn creator<'a>(
    state: &AdminState,
    caller: &Caller,
    parent: Option<&'a StoredToken>,
    root: &'a [String],
    orphan_path: bool,
) -> Result<Creator<'a>, ApiError> {
    match (caller, parent) {
        (Caller::Operator, _) => Ok(Creator {
            policies: root,
            sudo: true,
            num_uses: 0,
            expires_at: None,
        }),
        (_, Some(p)) => {
            // The `default` policy does not grant creating tokens.
            let path = if orphan_path {
                "auth/token/create-orphan"
            } else {
                "auth/token/create"
            };
            let granted = state.policy_acl(caller).capabilities(path, false);
            if !granted.grants(Capability::Update) && !granted.grants(Capability::Create) {
                return Err(ApiError::permission_denied());
            }
            Ok(Creator {
                policies: &p.policies,
                sudo: state.sudo(caller, path),
                num_uses: p.num_uses,
                expires_at: p.expires_at,
            })
        }
        // An identity JWT is not a token: it has no place in the tree.
        (_, None) => Err(ApiError::permission_denied()),
    }
}

/// A token named in a body (`token` or `accessor`), bounded.
fn body_field(body: &Value, field: &str) -> Result<String, ApiError> {
    fields::string(body, field, token::MAX_TOKEN_BYTES)
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("missing {field}")))
}

/// The stored token a body names by `token`: known to the caller, so
/// theirs to act on. 403 when it is no live token.
async fn named_token(door: &VaultDoor, body: &Value) -> Result<(String, StoredToken), ApiError> {
    let token = body_field(body, "token")?;
    if !is_token(&token) {
        return Err(ApiError::permission_denied());
    }
    let found = door
        .tokens
        .lookup(&TokenHash::of(&token))
        .await
        .map_err(store_error)?
        .ok_or_else(ApiError::permission_denied)?;
    Ok((token, found))
}

/// The stored token an operator names by `accessor`; 400 when none.
async fn by_accessor(
    state: &AdminState,
    headers: &HeaderMap,
    body: &Value,
) -> Result<(String, StoredToken), ApiError> {
    let door = door(state)?;
    let caller = state.authenticate(headers)?;
    if !caller.is_operator() && !state.sudo(&caller, "auth/token/lookup-accessor") {
        return Err(ApiError::permission_denied());
    }
    let accessor = body_field(body, "accessor")?;
    let found = door
        .tokens
        .lookup_accessor(&TokenHash::of(&accessor))
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::bad_request("invalid accessor"))?;
    Ok((accessor, found))
}

/// Which token an `auth/token/*` request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The caller's own (`*-self`).
    Presented,
    /// The one `token` in the body names: knowing it is authority over it.
    Token,
    /// The one `accessor` in the body names (operators); the answer never
    /// shows the token.
    Accessor,
}

/// The token a request names, as read.
struct Named {
    /// The token, as the answer may show it; empty for an accessor route.
    id: String,
    accessor: String,
    found: StoredToken,
}

/// Authenticates the request and finds the token `target` names; also
/// the parsed body (`Null` when there is none to read).
async fn named(
    state: &AdminState,
    headers: &HeaderMap,
    body: Option<Result<Bytes, BytesRejection>>,
    target: Target,
) -> Result<(Named, Value), ApiError> {
    let parse = |body: Option<Result<Bytes, BytesRejection>>| match body {
        Some(body) => parse_body(body),
        None => Ok(Value::Null),
    };
    if target == Target::Accessor {
        let body = parse(body)?;
        let (accessor, found) = by_accessor(state, headers, &body).await?;
        let id = String::new();
        return Ok((
            Named {
                id,
                accessor,
                found,
            },
            body,
        ));
    }
    let door = door(state)?;
    state.authenticate(headers)?;
    let body = parse(body)?;
    let (id, found) = match target {
        Target::Token => named_token(door, &body).await?,
        _ => {
            let found = door
                .presented(headers)
                .ok_or_else(ApiError::permission_denied)?;
            let id = presented_token(headers).unwrap_or_default().to_owned();
            (id, (*found).clone())
        }
    };
    let accessor = accessor_of(&id);
    Ok((
        Named {
            id,
            accessor,
            found,
        },
        body,
    ))
}

/// `POST auth/token/lookup` and `lookup-accessor` (`lookup-self`:
/// [`lookup_self_stored`]).
pub async fn lookup(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    target: Target,
) -> Result<Response, ApiError> {
    let (named, _) = named(&state, &headers, Some(body), target).await?;
    Ok(envelope(lookup_view(
        &named.found,
        &named.id,
        &named.accessor,
    )))
}

/// `GET|POST auth/token/lookup-self` for a stored token; `None` when the
/// caller presented something else.
pub fn lookup_self_stored(door: &VaultDoor, headers: &HeaderMap) -> Option<Response> {
    let token = presented_token(headers)?;
    let found = door.presented(headers)?;
    Some(envelope(lookup_view(&found, token, &accessor_of(token))))
}

/// `POST auth/token/renew`, `renew-self` and `renew-accessor`.
pub async fn renew(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    target: Target,
) -> Result<Response, ApiError> {
    let (named, body) = named(&state, &headers, Some(body), target).await?;
    renew_common(door(&state)?, &named.id, &named.found, &body).await
}

async fn renew_common(
    door: &VaultDoor,
    token: &str,
    found: &StoredToken,
    body: &Value,
) -> Result<Response, ApiError> {
    let increment = fields::duration(body, "increment", MAX_TOKEN_TTL)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let lifetime = token::Lifetime {
        created_at: found.created_at,
        creation_ttl: found.creation_ttl,
        explicit_max_ttl: found.explicit_max_ttl,
        renewable: found.renewable,
        expires_at: found.expires_at,
    };
    let now = SystemTime::now();
    let renewal = token::renew(&lifetime, increment, &limits(door), now).map_err(token_error)?;
    if !door
        .tokens
        .set_expiry(&found.hash, renewal.expires_at)
        .await
        .map_err(store_error)?
    {
        return Err(ApiError::permission_denied());
    }
    let view = AuthView {
        policies: &found.policies,
        meta: &found.meta,
        lease_duration: renewal.ttl.as_secs(),
        renewable: found.renewable,
        orphan: found.orphan,
        num_uses: found.uses_left,
    };
    Ok(auth_envelope_with_warnings(
        auth_view(token, view),
        renewal.warning.into_iter().collect(),
    ))
}

/// `POST auth/token/revoke`, `revoke-self` and `revoke-accessor`: 204,
/// for `revoke` also when the token is already gone.
pub async fn revoke(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    target: Target,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    let hash = match target {
        Target::Token => {
            state.authenticate(&headers)?;
            let body: Value = parse_body(body)?;
            let token = body_field(&body, "token")?;
            if !is_token(&token) {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            TokenHash::of(&token)
        }
        // `revoke-self` reads no body.
        Target::Presented => named(&state, &headers, None, target).await?.0.found.hash,
        Target::Accessor => {
            named(&state, &headers, Some(body), target)
                .await?
                .0
                .found
                .hash
        }
    };
    revoke_tokens(door, &state.directory, &[hash]).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Methods `lookup-self` answers.
pub fn is_lookup_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::POST || *method == Method::PUT
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn stored(uses_left: u32) -> StoredToken {
        StoredToken {
            hash: TokenHash::of("rmv.t"),
            parent: None,
            orphan: true,
            policies: vec!["default".into()],
            display_name: "token".into(),
            meta: Default::default(),
            path: "auth/token/create".into(),
            role: String::new(),
            issuer: "token".into(),
            subject: "token-1".into(),
            groups: Vec::new(),
            created_at: SystemTime::now(),
            creation_ttl: Duration::from_secs(60),
            explicit_max_ttl: Duration::ZERO,
            renewable: true,
            expires_at: Some(SystemTime::now() + Duration::from_secs(60)),
            num_uses: 3,
            uses_left,
        }
    }

    #[test]
    fn a_held_token_lives_while_any_request_holds_it_and_the_newest_read_wins() {
        let live = LiveTokens::default();
        let hash = TokenHash::of("rmv.t");
        assert!(live.get(&hash).is_none());
        live.hold(stored(2));
        live.hold(stored(1));
        assert_eq!(live.get(&hash).unwrap().uses_left, 1);
        live.release(&hash);
        assert!(live.get(&hash).is_some(), "one request still holds it");
        live.release(&hash);
        assert!(
            live.get(&hash).is_none(),
            "forgotten after the last request"
        );
        live.release(&hash);
    }

    #[test]
    fn created_tokens_act_as_token_principals_and_children_inherit() {
        let plan = plan_create(
            &CreateRequest::default(),
            &Creator {
                policies: &["root".to_owned()],
                sudo: true,
                num_uses: 0,
                expires_at: None,
            },
            false,
            &Limits {
                default_ttl: Duration::from_secs(60),
                max_ttl: MAX_TOKEN_TTL,
            },
            SystemTime::now(),
        )
        .unwrap();
        let h = TokenHash::of("rmv.child");
        let (issuer, subject, _) = child_principal(None, &plan, &h);
        assert_eq!(issuer, "token");
        assert_eq!(subject, format!("token-{}", h.short()));
        let mut parent = stored(0);
        parent.issuer = "local".into();
        parent.subject = "alice".into();
        let (issuer, subject, _) = child_principal(Some(&parent), &plan, &h);
        assert_eq!((issuer.as_str(), subject.as_str()), ("local", "alice"));
        let orphan = Plan {
            orphan: true,
            ..plan
        };
        assert_eq!(child_principal(Some(&parent), &orphan, &h).0, "token");
    }
}
