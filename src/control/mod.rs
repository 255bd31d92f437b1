//! The admin HTTP listener: health, metrics and the lease API.
//!
//! ```text
//! AdminListener (TCP, optional TLS, bounded connections)
//!   └─ axum Router ── observe (timeout, metrics, admin.request audit)
//!        ├─ /healthz /readyz /metrics             health.rs  (no token)
//!        ├─ /v1/sys/leases/...                     leases.rs  (Vault's shape)
//!        ├─ /v1/rolemint/leases[/revoke]           leases.rs  (rolemint's own)
//!        ├─ /.well-known/rolemint-login, /v1/rolemint/whoami   people.rs
//!        ├─ /v1/auth/.., /v1/database/.., /v1/sys/health   door.rs (Vault-compatible)
//!        └─ anything else: 404 / 405 as {"errors": [...]}   vault.rs
//! ```
//!
//! Off unless `[admin] listen` is set. [`AdminListener::bind`] runs in
//! `Server::bind` (a taken port fails startup, like the proxy's), and
//! [`serve`] runs next to the proxy until the server has drained: during the
//! drain `/readyz` answers 503 and `/metrics` keeps working.
//!
//! Who may do what is [`auth::Caller`]'s business; what a lease is, the
//! [`leases::LeaseDirectory`] behind the API: on a running server
//! [`directory::RegistryDirectory`] (this instance's lease registry and
//! every instance's leases in the catalog), in tests `memory.rs`.
//!
//! The folder owns the HTTP side: routes, callers, Vault's JSON shapes.
//! It must not run SQL or end leases itself: it asks `lease` (the
//! registry, the revoker, credential leases) and `pg` (the catalog).

pub mod auth;
pub mod directory;
pub mod door;
pub mod health;
pub mod leases;
#[cfg(any(test, feature = "testkit"))]
pub mod memory;
pub mod people;
pub mod vault;
pub mod wiring;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use self::auth::OperatorToken;
use self::health::Probe;
use self::leases::LeaseDirectory;
use self::vault::ApiError;
use crate::config::Config;
use crate::observe::audit::{Audit, AuditError, Event};
use crate::tls::{ClientStream, MaybeTls};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Longest a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
        }
    }

    /// The caller of a request, or 403: the operator, or (with the Vault
    /// routes on) a workload by its client token, identity JWT or static
    /// token.
    pub fn authenticate(&self, headers: &axum::http::HeaderMap) -> Result<auth::Caller, ApiError> {
        auth::authenticate(self.operator.as_ref(), headers).or_else(|denied| {
            self.vault
                .as_ref()
                .and_then(|door| auth::presented_token(headers).and_then(|t| door.principal(t)))
                .map(|principal| door::workload(&principal))
                .ok_or(denied)
        })
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
        .route("/.well-known/rolemint-login", get(people::login_metadata))
        .route(
            "/v1/rolemint/leases/revoke",
            post(revoke_selected).put(revoke_selected),
        )
        .merge(vault)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            observe,
        ))
        // Outermost: a Vault token is read from the store once, before
        // anything asks who the caller is (the audit line included).
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            door::tokens::resolve,
        ))
        .with_state(state)
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

/// Bounds every request by `request_timeout`, counts it, and writes its
/// `admin.request` audit line: awaited for requests that change something,
/// so the line is on disk before the caller hears "done". Probes of
/// `/healthz`, `/readyz` and `/metrics` are counted but not audited: they
/// come every few seconds and carry no decision.
async fn observe(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path: String = request
        .uri()
        .path()
        .chars()
        .take(MAX_AUDITED_PATH)
        .collect();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let caller = caller_label(&state, request.headers());
    let response = match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "request timed out").into_response()
        }
    };
    let status = response.status().as_u16();
    crate::observe::metrics::admin_request(&route, status);
    let probe = matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics");
    if probe && (method == Method::GET || method == Method::HEAD) {
        return response;
    }
    let event = Event::AdminRequest {
        method: method.as_str().to_owned(),
        path,
        status,
        caller,
        client_addr: client.to_string(),
    };
    if method == Method::GET || method == Method::HEAD || method.as_str() == "LIST" {
        state.audit.record(event);
    } else if let Err(e) = state.audit.record_durable(event).await {
        tracing::error!("audit: {e}");
    }
    response
}

/// `operator`, `anonymous` (no token) or `invalid-token`.
fn caller_label(state: &AdminState, headers: &axum::http::HeaderMap) -> String {
    match auth::presented_token(headers) {
        None => "anonymous".into(),
        Some(_) => match state.authenticate(headers) {
            Ok(caller) => caller.label(),
            Err(_) => "invalid-token".into(),
        },
    }
}

/// Serves `router(state)` on `listener` until `stop` is cancelled; requests
/// in flight then finish.
pub async fn serve(
    listener: AdminListener,
    state: AdminState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    crate::observe::metrics::handle();
    let app = router(Arc::new(state)).into_make_service_with_connect_info::<ClientAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// The peer of an admin connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<axum::serve::IncomingStream<'_, AdminListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdminListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// The admin listener's socket: TCP, with TLS when configured, and at most
/// `max_connections` connections at once.
///
/// A task accepts and runs TLS handshakes concurrently (one slow client
/// cannot hold up the others), each within [`TLS_HANDSHAKE_TIMEOUT`], and
/// hands finished connections to `accept`. Dropping the listener stops it.
pub struct AdminListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(AdminIo, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl AdminListener {
    /// Binds `addr`; `tls` makes it HTTPS.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        max_connections: usize,
    ) -> Result<AdminListener, AdminError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local = tcp
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        let (tx, ready) = mpsc::channel(64);
        let limit = Arc::new(Semaphore::new(max_connections.max(1)));
        let acceptor = tokio::spawn(accept_loop(tcp, tls.map(TlsAcceptor::from), limit, tx));
        Ok(AdminListener {
            local,
            ready,
            acceptor,
        })
    }

    /// `[admin]` of `config`, when `listen` is set.
    pub async fn from_config(config: &Config) -> Result<Option<AdminListener>, AdminError> {
        let a = &config.admin;
        let Some(addr) = a.listen else {
            return Ok(None);
        };
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => {
                let proxy = crate::tls::server_config(cert, key)
                    .map_err(|e| AdminError::Tls(e.to_string()))?;
                // The proxy's config offers only ALPN "postgresql"; an HTTPS
                // client offering "http/1.1" would be refused by it.
                let mut http = (*proxy).clone();
                http.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(Arc::new(http))
            }
            _ => None,
        };
        AdminListener::bind(addr, tls, a.max_connections)
            .await
            .map(Some)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
    ready: mpsc::Sender<(AdminIo, SocketAddr)>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match tcp.accept().await {
            Ok(conn) => {
                backoff = Duration::from_millis(10);
                conn
            }
            Err(e) => {
                tracing::warn!("admin listener: accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                let io = AdminIo {
                    stream: MaybeTls::Plain(stream),
                    _permit: permit,
                };
                if ready.send((io, peer)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let (acceptor, ready) = (acceptor.clone(), ready.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            let io = AdminIo {
                                stream: MaybeTls::Tls(Box::new(tls)),
                                _permit: permit,
                            };
                            let _ = ready.send((io, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "admin TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = AdminIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (AdminIo, SocketAddr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (it only does when aborted): serve
            // nothing more, and let graceful shutdown end the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// One admin connection; holds its slot of `max_connections` until closed.
pub struct AdminIo {
    stream: ClientStream,
    _permit: OwnedSemaphorePermit,
}

// Forwards only read, write, flush and shutdown (no vectored writes), as
// the admin stream always has.
impl AsyncRead for AdminIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdminIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
