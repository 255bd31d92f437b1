//! One client connection, top to bottom.
//!
//! ```text
//! handshake ─► token ─► policy ─► mint ─► backend login ─► forward startup ─► splice
//!                                   └──── hand the role to the revoker on every way out ◄──┘
//! ```
//!
//! The role's name is known before its mint is sent, so even a mint that
//! fails or times out (and may still commit later) hands it to the revoker.
//! A session never waits for its revocation: the revoker retries it until
//! it is done, and shutdown waits for the revoker.
//!
//! [`run`] is the whole story; each step lives in its own file:
//! [`handshake`] (encryption, startup, token), [`backend`] (login as the
//! minted role), [`relay`] (startup forwarding, splice) and [`wire`] (the
//! messages rolemint encodes and decodes itself).

pub mod backend;
pub mod handshake;
pub mod relay;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use self::handshake::{Hello, Refused};
use self::relay::End;
use crate::error::ClientError;
use crate::lease::{self, Lease, LeaseKind, NewLease};
use crate::mint::{MintError, MintRequest};
use crate::revoke::Why;
use crate::state::Shared;
use crate::tls::ClientStream;

/// Serves one accepted connection until it is done. `permit` is `None` when
/// the connection limit was reached: the client then learns so with
/// SQLSTATE 53300 once it has said who it is, like PostgreSQL does.
pub async fn run(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) {
    crate::tls::tune_tcp(&tcp);
    let deadline = shared.config.proxy.handshake_timeout;
    let hello =
        match tokio::time::timeout(deadline, handshake::accept(tcp, shared.client_tls.as_ref()))
            .await
        {
            Ok(Ok(hello)) => hello,
            Ok(Err(refused)) => return refuse(refused, peer).await,
            Err(_) => {
                tracing::debug!(%peer, "handshake timed out");
                return;
            }
        };
    match hello {
        Hello::Cancel {
            process_id,
            secret_key,
        } => cancel(&shared, process_id, secret_key, peer).await,
        Hello::Startup { stream, startup } => match permit {
            Some(permit) => session(shared, stream, startup, peer, permit).await,
            None => refuse_with(stream, ClientError::TooManyConnections, peer, "").await,
        },
    }
}

async fn session(
    shared: Arc<Shared>,
    mut stream: ClientStream,
    startup: handshake::Startup,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
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

    let token = match tokio::time::timeout(
        config.proxy.handshake_timeout,
        handshake::read_token(&mut stream, &startup, config.proxy.max_token_bytes),
    )
    .await
    {
        Ok(Ok(token)) => token,
        Ok(Err((error, detail))) => return refuse_with(stream, error, peer, &detail).await,
        Err(_) => return tracing::debug!(%peer, "timed out waiting for the token"),
    };
    // Every reason gets the same 28P01; the reason goes to the log only.
    let verified = shared
        .verifier
        .authenticate_from(peer.ip(), token.expose())
        .await;
    drop(token);
    let identity = match verified {
        Ok(identity) => identity,
        Err(reason) => {
            let detail = format!(
                "template={template} database={database}: reason={}: {reason}",
                reason.reason()
            );
            return refuse_with(stream, ClientError::BadToken, peer, &detail).await;
        }
    };
    let grant = match crate::policy::authorize(config, &identity, template, database) {
        Ok(grant) => grant,
        Err(refusal) => {
            let detail = format!(
                "identity={:?} issuer={} template={template}: {}",
                identity.subject, identity.issuer, refusal.rule
            );
            return refuse_with(stream, refusal.error, peer, &detail).await;
        }
    };
    tracing::debug!(
        identity = ?identity.subject, issuer = %identity.issuer, template,
        rule = %grant.rule, "policy allowed"
    );

    let started = Instant::now();
    let lease_id = lease::new_lease_id(LeaseKind::Session, grant.template_name);
    let request = MintRequest {
        identity: &identity,
        template_name: grant.template_name,
        template: grant.template,
        database,
        ttl: grant.ttl,
        lease_id: &lease_id,
    };
    let prepared = match shared.minter.render_mint(&request) {
        Ok(prepared) => prepared,
        Err(e) => {
            let detail = format!("lease={lease_id}: mint refused: {e}");
            return refuse_with(stream, ClientError::MintFailed, peer, &detail).await;
        }
    };
    let created = tokio::time::timeout(
        config.admin_operation_timeout(),
        shared.minter.create(&prepared),
    )
    .await;
    if let Err(error) = mint_outcome(&shared, &prepared, grant.template_name, created) {
        let detail = format!(
            "lease={lease_id} identity={}: mint failed",
            identity.subject
        );
        return refuse_with(stream, error, peer, &detail).await;
    }
    let minted = prepared.role;
    let registered = shared.leases.register(Lease::new(NewLease {
        id: lease_id,
        role: minted.name.clone(),
        template: grant.template_name.to_owned(),
        database: database.to_owned(),
        identity: identity.subject.clone(),
        groups: identity.groups.clone(),
        client_addr: Some(peer),
        issued_at: SystemTime::now(),
        expires_at: minted.expires_at,
    }));
    let lease = &registered.lease;
    tracing::info!(
        lease = %lease.id, role = %lease.role, identity = %lease.identity,
        template = %lease.template, database, %peer,
        mint_ms = started.elapsed().as_millis() as u64,
        "lease minted"
    );

    crate::failpoint::hit(crate::failpoint::AFTER_MINT).await;
    let (end, traffic) = connect_and_splice(
        &shared,
        stream,
        &startup,
        &minted.name,
        &minted.password,
        lease,
    )
    .await;
    drop(minted);
    lease.set_traffic(traffic.client_to_backend, traffic.backend_to_client);
    // The session is over: its slot is free while the role is revoked.
    drop(permit);
    let why = match end {
        End::Lease(reason) => Why::from(reason),
        _ => lease.end_reason().map_or(Why::SessionEnded, Why::from),
    };
    shared
        .revoker
        .schedule(&lease.role, &lease.database, Some(&lease.template), why);
    tracing::info!(
        lease = %lease.id, role = %lease.role, end = ?end,
        bytes_in = traffic.client_to_backend, bytes_out = traffic.backend_to_client,
        duration_ms = started.elapsed().as_millis() as u64,
        "session ended; role handed to the revoker"
    );
    // Only now does the registry forget the lease: until the revoker has
    // it, the role counts as held (the reaper asks).
    drop(registered);
}

/// What a mint's outcome means for the client; on any failure the role's
/// name goes to the revoker, since the role may exist (or come to exist
/// when a batch we stopped waiting for commits).
fn mint_outcome(
    shared: &Shared,
    prepared: &crate::mint::PreparedMint,
    template: &str,
    created: Result<Result<(), MintError>, tokio::time::error::Elapsed>,
) -> Result<(), ClientError> {
    let role = &prepared.role.name;
    let settle = prepared.settle_time(shared.minter.statement_timeout());
    let (error, settle) = match created {
        Ok(Ok(())) => return Ok(()),
        // The server answered (the batch is over, rolled back), or the
        // batch was never sent: one check that the role is not there is
        // enough.
        Ok(Err(e @ (MintError::Sql { .. } | MintError::Connect { .. }))) => {
            tracing::warn!(role, "mint failed: {e}");
            let error = if e.is_transient() {
                ClientError::BackendUnavailable
            } else {
                ClientError::MintFailed
            };
            (error, std::time::Duration::ZERO)
        }
        Ok(Err(e)) => {
            tracing::warn!(role, "mint failed: {e}");
            let error = if e.is_transient() {
                ClientError::BackendUnavailable
            } else {
                ClientError::MintFailed
            };
            (error, settle)
        }
        Err(_) => {
            tracing::warn!(role, "mint timed out");
            (ClientError::BackendUnavailable, settle)
        }
    };
    let database = prepared.database();
    shared
        .revoker
        .schedule_failed_mint(role, database, Some(template), settle);
    Err(error)
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
            tracing::warn!(lease = %lease.id, role, "backend login failed: {e}");
            relay::send_fatal(&mut stream, &ClientError::BackendUnavailable).await;
            return failed;
        }
        Err(_) => {
            tracing::warn!(lease = %lease.id, role, "backend login timed out");
            relay::send_fatal(&mut stream, &ClientError::BackendUnavailable).await;
            return failed;
        }
    };
    crate::failpoint::hit(crate::failpoint::AFTER_LOGIN).await;
    let cancel_key = shared.cancels.issue(login.key, role);
    let framer = match relay::forward_startup(&mut stream, &mut login, cancel_key.key).await {
        Ok(framer) => framer,
        Err(e) => {
            tracing::debug!(lease = %lease.id, "client went away during startup: {e}");
            return failed;
        }
    };
    relay::splice(stream, login.stream, framer, lease).await
}

/// Forwards a CancelRequest whose key is ours; any other goes to
/// [`cancel_elsewhere`] (a session another instance holds), or is ignored.
async fn cancel(shared: &Shared, process_id: i32, secret_key: i32, peer: SocketAddr) {
    match shared.cancels.lookup(process_id, secret_key) {
        None => cancel_elsewhere(shared, process_id, secret_key, peer).await,
        Some(key) => {
            let config = &shared.config.backend;
            if let Err(e) = backend::cancel(config, shared.backend_tls.as_ref(), key).await {
                tracing::warn!(%peer, "forwarding cancel request failed: {e}");
            }
        }
    }
}

/// A key this instance did not issue: in a cluster, verifies it against the
/// database and cancels through the admin pool (see [`crate::cancel`]);
/// otherwise, or when it does not verify, ignores it silently, as
/// PostgreSQL does.
async fn cancel_elsewhere(shared: &Shared, process_id: i32, secret_key: i32, peer: SocketAddr) {
    let Some(cluster) = shared.cancels.cluster() else {
        tracing::debug!(%peer, "cancel request with an unknown key ignored");
        return;
    };
    // Each check costs a query and is a guess at a 32-bit secret: an
    // address that keeps guessing wrong is no longer asked about.
    if process_id <= 0 || !shared.cancels.may_verify(peer.ip()) {
        tracing::debug!(%peer, "cancel request ignored (invalid pid or rate limited)");
        return;
    }
    let minter = &shared.minter;
    let verify_and_cancel = async {
        let Some(role) = minter.minted_backend_role(process_id).await? else {
            return Ok(None);
        };
        if !cluster.verify(process_id, &role, secret_key) {
            return Ok(None);
        }
        minter.cancel_backend(process_id, &role).await.map(Some)
    };
    match tokio::time::timeout(shared.config.admin_operation_timeout(), verify_and_cancel).await {
        Ok(Ok(Some(signalled))) => {
            tracing::debug!(%peer, process_id, signalled, "cluster cancel key verified")
        }
        Ok(Ok(None)) => {
            shared.cancels.verify_failed(peer.ip());
            tracing::debug!(%peer, "cancel request with an unknown key ignored");
        }
        Ok(Err(e)) => tracing::warn!(%peer, "cancelling through the admin pool failed: {e}"),
        Err(_) => tracing::warn!(%peer, "cancelling through the admin pool timed out"),
    }
}

async fn refuse(refused: Refused, peer: SocketAddr) {
    match refused.stream {
        Some(stream) => refuse_with(stream, refused.error, peer, &refused.detail).await,
        None => tracing::debug!(%peer, "handshake failed: {}", refused.detail),
    }
}

/// Sends the client its error, and logs the reason with the detail the
/// client is not told.
async fn refuse_with(mut stream: ClientStream, error: ClientError, peer: SocketAddr, detail: &str) {
    tracing::info!(%peer, sqlstate = error.sqlstate(), kind = error.kind(), "refused: {detail}");
    relay::send_fatal(&mut stream, &error).await;
}
