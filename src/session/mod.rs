//! One client connection, top to bottom.
//!
//! ```text
//! handshake ─► token ─► policy ─► mint ─► backend login ─► forward startup ─► splice
//!                                   └──────────── revoke on every way out ◄──┘
//! ```
//!
//! [`run`] is the whole story; each step lives in its own file:
//! [`handshake`] (encryption, startup, token), [`params`] (the startup
//! parameters allowed through), [`backend`] and [`login`] (login as the
//! minted role: the sockets, and the state machine over the messages), [`relay`] (startup forwarding, splice) and [`wire`] (the
//! messages rolemint encodes and decodes itself).

pub mod backend;
pub mod handshake;
pub mod login;
pub mod params;
pub mod relay;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::handshake::{Hello, Refused};
use self::relay::End;
use crate::error::ClientError;
use crate::lease::{self, Lease};
use crate::mint::MintRequest;
use crate::server::Shared;
use crate::tls::ClientStream;

/// The two limits a connection passes through.
pub struct Admission {
    /// Held from accept until the token has been read: handshakes in flight
    /// are bounded by `proxy.max_handshakes`, apart from sessions.
    pub handshake: OwnedSemaphorePermit,
    /// Session slots (`proxy.max_connections`): one is taken only once the
    /// client has said who it is, so idle sockets never hold one.
    pub sessions: Arc<Semaphore>,
}

/// Serves one accepted connection until it is done. A client past the
/// session limit learns so with SQLSTATE 53300 once it has said who it is,
/// like PostgreSQL does.
pub async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, admission: Admission) {
    crate::tls::tune_tcp(&tcp);
    // One deadline for the whole handshake, token included: a client that
    // trickles bytes cannot reset it by finishing one step.
    let deadline = tokio::time::Instant::now() + shared.config.proxy.handshake_timeout;
    let accept = handshake::accept(tcp, shared.client_tls.as_ref());
    let hello = match tokio::time::timeout_at(deadline, accept).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(refused)) => return refuse(refused, peer).await,
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    match hello {
        Hello::Cancel {
            stream,
            process_id,
            secret_key,
        } => cancel(&shared, stream, process_id, secret_key, peer).await,
        Hello::Startup { stream, startup } => {
            let Ok(permit) = Arc::clone(&admission.sessions).try_acquire_owned() else {
                return refuse_with(stream, ClientError::TooManyConnections, peer, "").await;
            };
            let handshake = Handshake {
                permit: admission.handshake,
                deadline,
            };
            session(shared, stream, startup, peer, permit, handshake).await
        }
    }
}

/// What is left of the handshake once the startup packet is in.
struct Handshake {
    permit: OwnedSemaphorePermit,
    deadline: tokio::time::Instant,
}

/// A client-supplied string (a startup parameter, a claim, a backend's
/// message) on its way into a log line: control characters and backslashes
/// are escaped, so a `\n` in a value cannot forge a second line.
pub struct LogSafe<'a>(pub &'a str);

impl std::fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c == '\\' || c.is_control() {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

async fn session(
    shared: Arc<Shared>,
    mut stream: ClientStream,
    startup: handshake::Startup,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    handshake: Handshake,
) {
    let config = &shared.config;
    let template = startup.template.as_str();
    let database = startup.database.as_str();
    if shared.shutdown.is_cancelled() {
        return refuse_with(stream, ClientError::ShuttingDown, peer, "").await;
    }
    if !stream.is_tls() && !config.proxy.allow_plaintext {
        return refuse_with(stream, ClientError::TlsRequired, peer, "").await;
    }

    let read_token = handshake::read_token(&mut stream, &startup, config.proxy.max_token_bytes);
    let token = match tokio::time::timeout_at(handshake.deadline, read_token).await {
        Ok(Ok(token)) => token,
        Ok(Err((error, detail))) => return refuse_with(stream, error, peer, &detail).await,
        Err(_) => return tracing::debug!(%peer, "handshake timed out waiting for the token"),
    };
    // The handshake is over: the next client may start one.
    drop(handshake.permit);
    let identity = match shared.verifier.verify(token.expose()) {
        Ok(identity) => identity,
        Err(reason) => {
            let detail = format!("template={template} database={database}: {reason}");
            return refuse_with(stream, ClientError::BadToken, peer, &detail).await;
        }
    };
    drop(token);
    let grant = match crate::policy::authorize(config, &identity, template, database) {
        Ok(grant) => grant,
        Err(error) => {
            let detail = format!("identity={}", identity.subject);
            return refuse_with(stream, error, peer, &detail).await;
        }
    };

    let started = Instant::now();
    let lease_id = lease::new_lease_id();
    let request = MintRequest {
        identity: &identity,
        template_name: grant.template_name,
        template: grant.template,
        database,
        ttl: grant.ttl,
        lease_id: &lease_id,
    };
    let mint = shared.minter.mint(&request);
    let minted = match tokio::time::timeout(config.admin_operation_timeout(), mint).await {
        Ok(Ok(minted)) => minted,
        Ok(Err(e)) => {
            // Transient: the backend is down, restarting or overloaded.
            let error = if e.is_transient() {
                ClientError::BackendUnavailable
            } else {
                ClientError::MintFailed
            };
            let detail = format!(
                "lease={lease_id} identity={}: mint failed: {e}",
                identity.subject
            );
            return refuse_with(stream, error, peer, &detail).await;
        }
        Err(_) => {
            // The batch may still commit after we stop waiting: the role
            // then has VALID UNTIL and a lease comment, and is the reaper's.
            let detail = format!("lease={lease_id}: mint timed out");
            return refuse_with(stream, ClientError::BackendUnavailable, peer, &detail).await;
        }
    };
    let registered = shared.leases.register(Lease::new(
        lease_id,
        minted.name.clone(),
        grant.template_name.to_owned(),
        database.to_owned(),
        identity.subject.clone(),
        minted.expires_at,
    ));
    let lease = &registered.lease;
    tracing::info!(
        lease = %lease.id, role = %lease.role, identity = %LogSafe(&lease.identity),
        template = %lease.template, database, %peer,
        mint_ms = started.elapsed().as_millis() as u64,
        "lease minted"
    );

    let end = connect_and_splice(
        &shared,
        stream,
        &startup,
        &minted.name,
        &minted.password,
        lease,
    )
    .await;
    drop(minted);
    // The session is over: its slot is free while the role is revoked (the
    // admin pool bounds how many revocations run at once).
    drop(permit);
    let revoked = lease::revoke_until_done(&shared.minter, config, lease, &shared.shutdown).await;
    tracing::info!(
        lease = %lease.id, role = %lease.role, end = ?end.0,
        bytes_in = end.1.client_to_backend, bytes_out = end.1.backend_to_client,
        duration_ms = started.elapsed().as_millis() as u64, revoked,
        "session ended"
    );
    drop(registered);
}

/// Logs in as the minted role and splices; every outcome ends here so that
/// the caller revokes in one place.
async fn connect_and_splice(
    shared: &Shared,
    mut stream: ClientStream,
    startup: &handshake::Startup,
    role: &str,
    password: &crate::secret::Secret,
    lease: &Lease,
) -> (End, relay::Traffic) {
    let failed = (End::Failed, relay::Traffic::default());
    let backend_config = &shared.config.backend;
    let login = async {
        let conn = backend::connect(backend_config, shared.backend_tls.as_ref()).await?;
        backend::login(
            conn,
            role,
            password,
            &startup.database,
            &startup.forward,
            backend_config.allow_weak_auth,
        )
        .await
    };
    let mut login = match tokio::time::timeout(2 * backend_config.connect_timeout, login).await {
        Ok(Ok(login)) => login,
        Ok(Err(e)) => {
            let e = e.to_string();
            tracing::warn!(lease = %lease.id, role, "backend login failed: {}", LogSafe(&e));
            relay::send_fatal(&mut stream, &ClientError::BackendUnavailable).await;
            return failed;
        }
        Err(_) => {
            tracing::warn!(lease = %lease.id, role, "backend login timed out");
            relay::send_fatal(&mut stream, &ClientError::BackendUnavailable).await;
            return failed;
        }
    };
    let cancel_key = shared.cancels.register(login.key);
    let framer = match relay::forward_startup(&mut stream, &mut login, cancel_key.key).await {
        Ok(framer) => framer,
        Err(e) => {
            tracing::debug!(lease = %lease.id, "client went away during startup: {e}");
            return failed;
        }
    };
    relay::splice(stream, login.stream, framer, lease).await
}

/// Forwards a CancelRequest whose key is ours (any other is ignored, as
/// PostgreSQL does), then closes the client's connection. A cancel that came
/// inside TLS (libpq 17 sends it so) is closed with close_notify: libpq
/// reads an EOF without it as an SSL error and reports the cancel failed.
async fn cancel(
    shared: &Shared,
    mut stream: ClientStream,
    process_id: i32,
    secret_key: i32,
    peer: SocketAddr,
) {
    match shared.cancels.lookup(process_id, secret_key) {
        None => tracing::debug!(%peer, "cancel request with an unknown key ignored"),
        Some(key) => {
            let config = &shared.config.backend;
            if let Err(e) = backend::cancel(config, shared.backend_tls.as_ref(), key).await {
                tracing::warn!(%peer, "forwarding cancel request failed: {e}");
            }
        }
    }
    // Bounded: a client that does not read cannot hold the task.
    let close = tokio::io::AsyncWriteExt::shutdown(&mut stream);
    if let Err(e) = tokio::time::timeout(CLOSE_TIMEOUT, close).await {
        tracing::debug!(%peer, "closing a cancel connection: {e}");
    }
}

/// Longest wait to close a connection cleanly (TLS close_notify).
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn refuse(refused: Refused, peer: SocketAddr) {
    match refused.stream {
        Some(stream) => refuse_with(stream, refused.error, peer, &refused.detail).await,
        None => tracing::debug!(%peer, "handshake failed: {}", LogSafe(&refused.detail)),
    }
}

/// Sends the client its error, and logs the reason with the detail the
/// client is not told.
async fn refuse_with(mut stream: ClientStream, error: ClientError, peer: SocketAddr, detail: &str) {
    let detail = LogSafe(detail);
    tracing::info!(%peer, sqlstate = error.sqlstate(), kind = error.kind(), "refused: {detail}");
    relay::send_fatal(&mut stream, &error).await;
}
