//! The admin HTTP listener: health, metrics and the lease API.
//!
//! ```text
//! AdminListener (TCP, optional TLS, hyper with bounded waits)  listener.rs
//!   └─ axum Router ── observe (token checked once, failure limiter,
//!        │                     timeout, metrics, admin.request audit)
//!        ├─ /healthz /readyz /metrics             health.rs  (no token, no query)
//!        ├─ /v1/sys/leases/...                     leases/    (Vault's shape)
//!        ├─ /v1/rolemint/leases[/revoke]           leases/    (rolemint's own)
//!        ├─ /.well-known/rolemint-login, /v1/rolemint/whoami   people.rs
//!        ├─ /v1/rolemint/requests[/<id>[/approve|deny|revoke]]  requests.rs
//!        ├─ /v1/auth/.., /v1/database/.., /v1/sys/health   door/ (Vault-compatible)
//!        └─ anything else: 404 / 405 as {"errors": [...]}   vault.rs
//! ```
//!
//! Off unless `[admin] listen` is set. [`AdminListener::bind`] runs in
//! `Server::bind` (a taken port fails startup, like the proxy's), and
//! [`serve`] runs next to the proxy until the server has drained: during the
//! drain `/readyz` answers 503 and `/metrics` keeps working. What keeps
//! slow, idle or many sockets from holding the listener down is
//! `listener.rs`'s story.
//!
//! Who may do what is [`auth::Caller`]'s business; what a lease is, the
//! [`leases::LeaseDirectory`] behind the API: on a running server
//! [`directory::RegistryDirectory`] (this instance's lease registry and
//! every instance's leases in the catalog), in tests `memory.rs`.
//!
//! The folder owns the HTTP side: routes, callers, Vault's JSON shapes.
//! It must not run SQL or end leases itself: it asks `lease` (the
//! registry, the revoker, credential leases) and `pg` (the catalog).

pub mod access;
pub mod auth;
pub mod directory;
pub mod door;
pub mod health;
pub mod leases;
pub mod listener;
#[cfg(any(test, feature = "testkit"))]
pub mod memory;
pub mod people;
pub mod requests;
pub mod vault;
pub mod webhook;
pub mod wiring;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use self::auth::{Authenticated, OperatorToken};
use self::health::Probe;
use self::leases::LeaseDirectory;
use self::vault::ApiError;
use crate::auth::acl::{BuiltinOnly, PolicyCache, PolicyTexts};
use crate::auth::identity::FailureLimiter;
use crate::config::Config;
use crate::observe::audit::{Audit, AuditError, Event};

pub use self::listener::{serve, AdminListener, ClientAddr};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Longest path written to the audit log.
const MAX_AUDITED_PATH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin listener: binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin listener TLS: {0}")]
    Tls(String),
}

/// What the handlers share.
pub struct AdminState {
    /// The operators' token hash; `None`: no operator can authenticate.
    pub operator: Option<OperatorToken>,
    /// Where leases are looked up, renewed and revoked.
    pub directory: Arc<dyn LeaseDirectory>,
    /// Checks the admin connections for `/readyz`.
    pub probe: Arc<dyn Probe>,
    /// Every database a template names, and the admin database.
    pub databases: Vec<String>,
    /// Cancelled when shutdown begins: `/readyz` turns 503.
    pub shutdown: CancellationToken,
    pub audit: Audit,
    pub request_timeout: Duration,
    pub ready_timeout: Duration,
    pub max_body_bytes: usize,
    /// The Vault-compatible routes (`[vault]`); `None`: off.
    pub vault: Option<Arc<door::VaultDoor>>,
    /// `/.well-known/rolemint-login` and `/v1/rolemint/whoami`; `None` in
    /// tests without a server.
    pub people: Option<Arc<people::People>>,
    /// Wrong tokens per client source, under `[auth.failure_rate]`.
    pub failures: Arc<FailureLimiter>,
    /// What `/readyz` and `/metrics` read: the background checks' results.
    pub probes: health::ProbeResults,
    /// Stored Vault policies by name (the store; none before it).
    pub policies: Arc<dyn PolicyTexts>,
    /// Stored policies, compiled.
    pub policy_cache: PolicyCache,
    /// `vault.jwt_mounts`: their logins need no token.
    pub jwt_mounts: Vec<String>,
    /// `vault.database_mount`: where `creds/<template>` lives.
    pub database_mount: String,
    /// The access-request webhook (`[access] webhook_url`), if any.
    pub webhook: Option<Arc<webhook::Webhook>>,
}

impl AdminState {
    /// The state for `config`'s listener, with the probe and directory given.
    pub fn from_config(
        config: &Config,
        probe: Arc<dyn Probe>,
        directory: Arc<dyn LeaseDirectory>,
        audit: Audit,
        shutdown: CancellationToken,
    ) -> AdminState {
        AdminState {
            operator: config
                .admin
                .operator_token_sha256
                .as_deref()
                .and_then(OperatorToken::from_hex),
            directory,
            probe,
            databases: databases(config),
            shutdown,
            audit,
            request_timeout: config.admin.request_timeout,
            ready_timeout: health::ready_timeout(config),
            max_body_bytes: config.admin.max_body_bytes,
            vault: None,
            people: None,
            failures: Arc::new(FailureLimiter::new(&config.auth.failure_rate)),
            probes: Default::default(),
            policies: Arc::new(BuiltinOnly),
            policy_cache: PolicyCache::default(),
            jwt_mounts: config.vault.jwt_mounts.clone(),
            database_mount: config.vault.database_mount.clone(),
            webhook: None,
        }
    }

    /// Who a request's token says it is: the operator, or (with the Vault
    /// routes on) a workload by its client token, identity JWT or static
    /// token. Called once per request, by [`observe`]; handlers read the
    /// answer as the [`Authenticated`] extractor.
    pub fn identify(&self, headers: &axum::http::HeaderMap) -> Authenticated {
        let Some(token) = auth::presented_token(headers) else {
            return Authenticated::Anonymous;
        };
        if self.operator.as_ref().is_some_and(|op| op.matches(token)) {
            return Authenticated::Operator;
        }
        self.vault
            .as_ref()
            .and_then(|door| door.principal(token))
            .map_or(Authenticated::Invalid, |p| Authenticated::Workload {
                identity: p.identity,
                policies: p.policies,
            })
    }

    /// The caller of a request, or 403: [`AdminState::identify`]'s answer
    /// as a [`auth::Caller`]. Handlers that have the request's
    /// [`Authenticated`] use that instead of asking again.
    pub fn authenticate(&self, headers: &axum::http::HeaderMap) -> Result<auth::Caller, ApiError> {
        self.identify(headers).caller()
    }

    /// Writes an audit line before the action it reports is acknowledged.
    async fn audit_durable(&self, event: Event) -> Result<(), ApiError> {
        self.audit
            .record_durable(event)
            .await
            .map_err(|e: AuditError| {
                tracing::error!("audit: {e}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot write the audit log",
                )
            })
    }
}

/// The admin database and every database a template names, sorted, once.
pub fn databases(config: &Config) -> Vec<String> {
    let mut all: Vec<String> = config
        .roles
        .values()
        .flat_map(|t| t.databases.iter().cloned())
        .chain([config.backend.admin_database.clone()])
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The routes, with their limits and observation.
pub fn router(state: Arc<AdminState>) -> Router {
    use leases::*;
    let vault = door::routes(&state);
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/sys/leases/lookup", any(lookup_root))
        .route("/v1/sys/leases/lookup/", any(lookup_root))
        .route("/v1/sys/leases/lookup/{*prefix}", any(lookup_prefix))
        .route("/v1/sys/leases/renew", post(renew).put(renew))
        .route(
            "/v1/sys/leases/renew/{*lease_id}",
            post(renew_path).put(renew_path),
        )
        .route("/v1/sys/leases/revoke", post(revoke).put(revoke))
        .route(
            "/v1/sys/leases/revoke/{*lease_id}",
            post(revoke_path).put(revoke_path),
        )
        .route(
            "/v1/sys/leases/revoke-prefix/{*prefix}",
            post(revoke_prefix).put(revoke_prefix),
        )
        .route("/v1/rolemint/leases", get(list_full))
        .route("/v1/rolemint/whoami", get(people::whoami))
        .route(
            "/v1/rolemint/requests",
            get(requests::list).post(requests::create),
        )
        .route("/v1/rolemint/requests/{id}", get(requests::get_one))
        .route(
            "/v1/rolemint/requests/{id}/{step}",
            post(requests::decide).put(requests::decide),
        )
        .route("/.well-known/rolemint-login", get(people::login_metadata))
        .route(
            "/v1/rolemint/leases/revoke",
            post(revoke_selected).put(revoke_selected),
        )
        .merge(vault)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Innermost: the caller's policies, once `observe` said who it is.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            access::gate,
        ))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            observe,
        ))
        // A Vault token is read from the store once, before anything asks
        // who the caller is (the audit line included).
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            door::tokens::resolve,
        ))
        // A source over its failure budget reaches neither.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            refuse_over_budget,
        ))
        // Outermost: an error answered before the body was read ends the
        // connection, saying so.
        .layer(axum::middleware::from_fn(close_after_early_error))
        .with_state(state)
}

/// An error answered to a request that carried a body: a refusal (over
/// budget, no policy, unknown path) answers before reading it, so the
/// connection cannot carry another request, and hyper closes it after the
/// answer. Said in the answer (`Connection: close`), so a client does not
/// send its next request on a connection about to close (hvac's pooled
/// session otherwise met "Remote end closed connection without response").
async fn close_after_early_error(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    let mut response = next.run(request).await;
    if has_body && (response.status().is_client_error() || response.status().is_server_error()) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown path")
}

async fn method_not_allowed() -> ApiError {
    method_not_allowed_error()
}

pub(crate) fn method_not_allowed_error() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation")
}

/// Checks the request's token (once), bounds the request by
/// `request_timeout`, counts it, and writes its `admin.request` audit
/// line: awaited for requests that change something, so the line is on
/// disk before the caller hears "done". Probes of `/healthz`, `/readyz` and
/// `/metrics` are counted but not audited: they come every few seconds and
/// carry no decision. Every wrong token counts against its source in the
/// failure limiter ([`refuse_over_budget`] turns the source away once it
/// is over).
async fn observe(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let seen = Seen::of(&request, client);
    let authenticated = state.identify(request.headers());
    if matches!(authenticated, Authenticated::Invalid) {
        state.failures.failed(client.ip());
    }
    let caller = authenticated.label();
    request.extensions_mut().insert(authenticated);
    let answer = tokio::time::timeout(state.request_timeout, next.run(request)).await;
    let response = answer.unwrap_or_else(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "request timed out").into_response()
    });
    seen.record(&state, response.status(), caller).await;
    response
}

/// The outermost layer: a request presenting a token from a source with
/// too many wrong tokens lately gets 429 with `Retry-After`, before its
/// token is read (from the store, or verified), as the proxy door's 28P01
/// says "retry in N s". Counted and audited as caller `rate-limited`.
async fn refuse_over_budget(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    request: Request,
    next: Next,
) -> Response {
    if auth::presented_token(request.headers()).is_none() {
        return next.run(request).await;
    }
    let Some(wait) = state.failures.retry_after(client.ip()) else {
        return next.run(request).await;
    };
    let response = too_many_failures(wait);
    Seen::of(&request, client)
        .record(&state, response.status(), "rate-limited".to_owned())
        .await;
    response
}

/// What the audit line and the metric of a request say about it.
struct Seen {
    method: Method,
    path: String,
    route: String,
    client: SocketAddr,
}

impl Seen {
    fn of(request: &Request, client: SocketAddr) -> Seen {
        Seen {
            method: request.method().clone(),
            path: request
                .uri()
                .path()
                .chars()
                .take(MAX_AUDITED_PATH)
                .collect(),
            route: request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |m| m.as_str())
                .to_owned(),
            client,
        }
    }

    /// Counts the request and writes its audit line (see [`observe`]).
    async fn record(self, state: &AdminState, status: StatusCode, caller: String) {
        let status = status.as_u16();
        crate::observe::metrics::admin_request(&self.route, status);
        let probe = matches!(self.route.as_str(), "/healthz" | "/readyz" | "/metrics");
        let read = self.method == Method::GET || self.method == Method::HEAD;
        if probe && read {
            return;
        }
        let event = Event::AdminRequest {
            method: self.method.as_str().to_owned(),
            path: self.path,
            status,
            caller,
            client_addr: self.client.to_string(),
        };
        // A request nobody authenticated changed nothing, and its line is
        // rate limited (`Audit::record`): never waited for.
        if read || self.method.as_str() == "LIST" || event.is_pre_auth() {
            state.audit.record(event);
        } else if let Err(e) = state.audit.record_durable(event).await {
            tracing::error!("audit: {e}");
        }
    }
}

/// 429 in Vault's shape, with `Retry-After`.
fn too_many_failures(wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed authentications from this address; retry in {secs} s"),
    );
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    response
}
