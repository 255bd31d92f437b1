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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{door, Principal, VaultDoor};
use crate::auth::acl::Capability;
use crate::auth::fields;
use crate::auth::token::{
    self, accessor_of, is_token, plan_create, CreateRequest, Creator, Limits, Plan, TokenError,
    TokenHash, MAX_TOKEN_TTL,
};
use crate::config::Config;
use crate::control::auth::{presented_token, Caller};
use crate::control::leases::{parse_body, LeaseDirectory};
use crate::control::vault::{auth_envelope_with_warnings, envelope, ApiError};
use crate::control::{AdminState, ClientAddr};
use crate::lease::end::EndReason;
use crate::observe::audit::Event;
use crate::store::tokens::{NewToken, Revoked, StoredToken, TokenStoreError, Tokens};

/// Leases revoked at once when a token goes.
const LEASE_REVOKES_IN_FLIGHT: usize = 16;
/// The quota's name in the `quota.refused` audit line and the
/// `rolemint_quota_refusals_total` label.
pub const TOKEN_QUOTA: &str = "tokens";
/// How often expired tokens are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Stored tokens of the requests running now, by hash.
#[derive(Default)]
pub struct LiveTokens {
    map: Mutex<HashMap<TokenHash, (Arc<StoredToken>, usize)>>,
}

impl std::fmt::Debug for LiveTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveTokens(..)")
    }
}

impl LiveTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenHash, (Arc<StoredToken>, usize)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token `hash` as read for a request running now.
    pub fn get(&self, hash: &TokenHash) -> Option<Arc<StoredToken>> {
        self.lock().get(hash).map(|(t, _)| Arc::clone(t))
    }

    fn hold(&self, token: StoredToken) {
        let mut map = self.lock();
        let entry = map
            .entry(token.hash)
            .or_insert((Arc::new(token.clone()), 0));
        // The newest read wins (uses left, a renewed expiry).
        entry.0 = Arc::new(token);
        entry.1 += 1;
    }

    fn release(&self, hash: &TokenHash) {
        let mut map = self.lock();
        if let Some((_, n)) = map.get_mut(hash) {
            *n -= 1;
            if *n == 0 {
                map.remove(hash);
            }
        }
    }
}

/// Drops a request's hold on its token, also when the request's future is
/// dropped (a timeout).
struct Held {
    door: Arc<VaultDoor>,
    hash: TokenHash,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.door.live.release(&self.hash);
    }
}

/// The layer that reads a presented Vault token from the store for the
/// request (see the module doc). Unknown, expired and used-up tokens are
/// left unresolved: the route then answers 403 as for any wrong token.
pub async fn resolve(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(door) = state.vault.clone() else {
        return next.run(request).await;
    };
    let hash = match presented_token(request.headers()) {
        Some(t) if is_token(t) => TokenHash::of(t),
        _ => return next.run(request).await,
    };
    match door.tokens.use_once(&hash).await {
        Ok(Some(token)) => {
            door.live.hold(token);
            let _held = Held {
                door: Arc::clone(&door),
                hash,
            };
            next.run(request).await
        }
        Ok(None) => next.run(request).await,
        Err(e) => store_error(e).into_response(),
    }
}

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

fn seconds(d: Duration) -> u64 {
    d.as_secs()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn ttl_left(token: &StoredToken, now: SystemTime) -> u64 {
    token
        .expires_at
        .map_or(0, |e| e.duration_since(now).unwrap_or_default().as_secs())
}

/// `meta` as Vault shows it: `null` when empty.
fn meta_view(meta: &std::collections::BTreeMap<String, String>) -> Value {
    if meta.is_empty() {
        Value::Null
    } else {
        json!(meta)
    }
}

/// A token as `lookup` answers it. `id`: the token when the caller gave it.
fn lookup_view(token: &StoredToken, id: &str, accessor: &str) -> Value {
    let now = SystemTime::now();
    let mut v = json!({
        "accessor": accessor,
        "creation_time": unix(token.created_at),
        "creation_ttl": seconds(token.creation_ttl),
        "display_name": token.display_name,
        "entity_id": "",
        "expire_time": token.expires_at.map(crate::pg::rfc3339),
        "explicit_max_ttl": seconds(token.explicit_max_ttl),
        "id": id,
        "issue_time": crate::pg::rfc3339(token.created_at),
        "meta": meta_view(&token.meta),
        "num_uses": token.uses_left,
        "orphan": token.orphan,
        "path": token.path,
        "policies": token.policies,
        "renewable": token.renewable,
        "ttl": ttl_left(token, now),
        "type": "service",
    });
    if !token.role.is_empty() {
        v["role"] = json!(token.role);
    }
    v
}

/// A token as `create`, `login` and `renew` answer it, in `auth`.
pub fn auth_view(token: &str, plan_or_stored: AuthView<'_>) -> Value {
    json!({
        "client_token": token,
        "accessor": if token.is_empty() { String::new() } else { accessor_of(token) },
        "policies": plan_or_stored.policies,
        "token_policies": plan_or_stored.policies,
        "identity_policies": null,
        "metadata": meta_view(plan_or_stored.meta),
        "lease_duration": plan_or_stored.lease_duration,
        "renewable": plan_or_stored.renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": plan_or_stored.orphan,
        "num_uses": plan_or_stored.num_uses,
        "mfa_requirement": null,
    })
}

/// What [`auth_view`] shows.
pub struct AuthView<'a> {
    pub policies: &'a [String],
    pub meta: &'a std::collections::BTreeMap<String, String>,
    pub lease_duration: u64,
    pub renewable: bool,
    pub orphan: bool,
    pub num_uses: u32,
}

impl<'a> From<&'a Plan> for AuthView<'a> {
    fn from(p: &'a Plan) -> AuthView<'a> {
        AuthView {
            policies: &p.policies,
            meta: &p.meta,
            lease_duration: p.ttl.as_secs(),
            renewable: p.renewable,
            orphan: p.orphan,
            num_uses: p.num_uses,
        }
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

/// `POST auth/token/create`.
pub async fn create(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    create_common(&state, client, &headers, body, false).await
}

/// `POST auth/token/create-orphan`.
pub async fn create_orphan(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    create_common(&state, client, &headers, body, true).await
}

async fn create_common(
    state: &AdminState,
    client: SocketAddr,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    orphan_path: bool,
) -> Result<Response, ApiError> {
    let door = door(state)?;
    let caller = state.authenticate(headers)?;
    let body: Value = parse_body(body)?;
    let request = CreateRequest::from_json(&body).map_err(token_error)?;
    let root = vec!["root".to_owned()];
    let parent = door.presented(headers);
    let creator = match (&caller, &parent) {
        (Caller::Operator, _) => Creator {
            policies: &root,
            sudo: true,
            num_uses: 0,
            expires_at: None,
        },
        (_, Some(p)) => {
            // As Vault: creating a token takes `update` (or `create`) on
            // the path, which the `default` policy does not grant.
            let path = if orphan_path {
                "auth/token/create-orphan"
            } else {
                "auth/token/create"
            };
            let granted = state.policy_acl(&caller).capabilities(path, false);
            if !granted.grants(Capability::Update) && !granted.grants(Capability::Create) {
                return Err(ApiError::permission_denied());
            }
            Creator {
                policies: &p.policies,
                sudo: state.sudo(&caller, path),
                num_uses: p.num_uses,
                expires_at: p.expires_at,
            }
        }
        // An identity JWT is not a token: it has no place in the tree.
        (_, None) => return Err(ApiError::permission_denied()),
    };
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

/// `POST auth/token/lookup`.
pub async fn lookup(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    state.authenticate(&headers)?;
    let body: Value = parse_body(body)?;
    let (token, found) = named_token(door, &body).await?;
    Ok(envelope(lookup_view(&found, &token, &accessor_of(&token))))
}

/// `POST auth/token/lookup-accessor`: the token without its id.
pub async fn lookup_accessor(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Value = parse_body(body)?;
    let (accessor, found) = by_accessor(&state, &headers, &body).await?;
    Ok(envelope(lookup_view(&found, "", &accessor)))
}

/// `GET|POST auth/token/lookup-self` for a stored token; `None` when the
/// caller presented something else.
pub fn lookup_self_stored(door: &VaultDoor, headers: &HeaderMap) -> Option<Response> {
    let token = presented_token(headers)?;
    let found = door.presented(headers)?;
    Some(envelope(lookup_view(&found, token, &accessor_of(token))))
}

/// `POST auth/token/renew-self`.
pub async fn renew_self(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    state.authenticate(&headers)?;
    let body: Value = parse_body(body)?;
    let found = door
        .presented(&headers)
        .ok_or_else(ApiError::permission_denied)?;
    let token = presented_token(&headers).unwrap_or_default().to_owned();
    renew_common(door, &token, &found, &body).await
}

/// `POST auth/token/renew`.
pub async fn renew(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    state.authenticate(&headers)?;
    let body: Value = parse_body(body)?;
    let (token, found) = named_token(door, &body).await?;
    renew_common(door, &token, &found, &body).await
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

/// `POST auth/token/renew-accessor` (operators): answers without the token.
pub async fn renew_accessor(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Value = parse_body(body)?;
    let (_, found) = by_accessor(&state, &headers, &body).await?;
    let door = door(&state)?;
    renew_common(door, "", &found, &body).await
}

/// `POST auth/token/revoke-self`.
pub async fn revoke_self(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    state.authenticate(&headers)?;
    let found = door
        .presented(&headers)
        .ok_or_else(ApiError::permission_denied)?;
    revoke_tokens(door, &state.directory, &[found.hash]).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST auth/token/revoke`: 204, also for a token that is already gone.
pub async fn revoke(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let door = door(&state)?;
    state.authenticate(&headers)?;
    let body: Value = parse_body(body)?;
    let token = body_field(&body, "token")?;
    if is_token(&token) {
        revoke_tokens(door, &state.directory, &[TokenHash::of(&token)]).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST auth/token/revoke-accessor`.
pub async fn revoke_accessor(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Value = parse_body(body)?;
    let (_, found) = by_accessor(&state, &headers, &body).await?;
    let door = door(&state)?;
    revoke_tokens(door, &state.directory, &[found.hash]).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Revokes `roots` with their subtrees, then every lease they created
/// (waiting for each role to be dropped, a few at a time).
pub async fn revoke_tokens(
    door: &VaultDoor,
    directory: &Arc<dyn LeaseDirectory>,
    roots: &[TokenHash],
) -> Result<Revoked, ApiError> {
    let revoked = door.tokens.revoke(roots).await.map_err(store_error)?;
    revoke_leases(directory, &revoked.leases).await;
    if revoked.tokens > 0 {
        tracing::info!(
            tokens = revoked.tokens,
            leases = revoked.leases.len(),
            "tokens revoked"
        );
    }
    Ok(revoked)
}

async fn revoke_leases(directory: &Arc<dyn LeaseDirectory>, leases: &[String]) {
    if leases.is_empty() {
        return;
    }
    let directory = Arc::clone(directory);
    let leases = leases.to_vec();
    // On a task of its own: the tokens are deleted already, so their leases
    // must go even if the caller stops waiting (a request timeout drops
    // the handler, and a dropped JoinSet would abort its revocations).
    let task = tokio::spawn(async move {
        for chunk in leases.chunks(LEASE_REVOKES_IN_FLIGHT) {
            let mut set = tokio::task::JoinSet::new();
            for lease in chunk {
                let directory = Arc::clone(&directory);
                let lease = lease.clone();
                set.spawn(async move {
                    if let Err(e) = directory
                        .revoke(lease.clone(), EndReason::RevokedByToken, true)
                        .await
                    {
                        // The role still carries its VALID UNTIL; the
                        // reaper of any instance drops it then.
                        tracing::warn!(lease = %lease, "revoking a revoked token's lease: {e}");
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
    });
    if let Err(e) = task.await {
        tracing::error!("revoking a revoked token's leases: {e}");
    }
}

/// Sweeps expired and used-up tokens (their subtrees and leases with them)
/// every [`SWEEP_INTERVAL`], a bounded batch per round, until `stop`.
pub async fn sweep(
    tokens: Tokens,
    directory: Arc<dyn LeaseDirectory>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
        loop {
            match tokens.sweep().await {
                Ok(revoked) => {
                    revoke_leases(&directory, &revoked.leases).await;
                    if revoked.tokens > 0 {
                        tracing::info!(tokens = revoked.tokens, "expired tokens swept");
                    }
                    // A full batch: more may be waiting.
                    if revoked.tokens < crate::store::tokens::SWEEP_BATCH || stop.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("token sweep: {e}");
                    break;
                }
            }
        }
    }
}

/// Records that the caller's token created `lease_id`, so revoking the
/// token revokes the lease. A token revoked meanwhile (or a store that
/// cannot say) takes the lease down at once: 403 (503).
pub async fn record_lease(
    state: &AdminState,
    principal: &Principal,
    lease_id: &str,
    expires_at: SystemTime,
) -> Result<(), ApiError> {
    let Some(token) = &principal.token else {
        return Ok(());
    };
    let door = door(state)?;
    let refused = match door
        .tokens
        .add_lease(&token.hash, lease_id, expires_at)
        .await
    {
        Ok(true) => return Ok(()),
        Ok(false) => ApiError::permission_denied(),
        Err(e) => store_error(e),
    };
    revoke_leases(&state.directory, &[lease_id.to_owned()]).await;
    Err(refused)
}

/// The principal of a stored token, as a caller.
pub fn principal_of(token: &Arc<StoredToken>) -> Principal {
    Principal {
        identity: crate::auth::identity::Identity {
            subject: token.subject.clone(),
            groups: token.groups.clone(),
            expires_at: token
                .expires_at
                .unwrap_or_else(|| SystemTime::now() + MAX_TOKEN_TTL),
            issuer: token.issuer.clone(),
        },
        policies: token.policies.clone(),
        token: Some(Arc::clone(token)),
    }
}

/// Methods `lookup-self` answers.
pub fn is_lookup_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::POST || *method == Method::PUT
}

#[cfg(test)]
mod tests {
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
