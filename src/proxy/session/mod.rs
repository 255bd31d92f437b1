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
//! Every decision is counted (`rolemint_connections_total{result}`,
//! `rolemint_auth_total{result,reason,issuer}`, the mint, login and connect
//! histograms, `rolemint_sessions_active{template}`, relay bytes) and
//! written to the audit log where it is made: `connection.refused`,
//! `auth.failed`, `auth.ok`, `lease.minted`, `session.ended`. The revoker
//! writes what happens to the role afterwards.
//!
//! A session takes the reloadable [`Runtime`] once, before its handshake,
//! and lets go of it once its role is minted: a reload never changes the
//! certificate, verifier or template a session is half-way through, and
//! a session that runs for hours does not keep a replaced verifier (and
//! its JWKS refresh) alive.
//!
//! [`run`] is the whole story; each step lives in its own file:
//! [`handshake`] (encryption, startup, token; the startup parameters
//! allowed through are [`crate::pg::backend::params`]), `authorize` (the
//! password's identity and the grant), `warm` (a role claimed from the
//! warm pool) or `mint` (a role minted for the session), `serve` (the
//! login as the minted role, through [`crate::pg::backend`], until the
//! session ends), [`relay`] (startup forwarding, splice), `kernel` (the
//! splice in the kernel) and [`wire`] (the messages rolemint encodes and
//! decodes itself). `refuse` turns a client away; `cancel_request`
//! serves a CancelRequest.

mod authorize;
mod cancel_request;
pub mod handshake;
mod kernel;
mod mint;
mod refuse;
pub mod relay;
mod serve;
pub mod statements;
mod warm;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use self::cancel_request::cancel;
use self::handshake::Hello;
use self::refuse::{refuse, refuse_early, refuse_with};
use self::serve::serve_lease;
use crate::auth::policy::Grant;
use crate::error::ClientError;
use crate::lease::quota;
use crate::lease::registry;
use crate::observe::metrics::ConnectionResult;
use crate::pg::backend;
use crate::proxy::admission::{Admission, HandshakeSlot};
use crate::proxy::Proxy;
use crate::runtime::state::{Runtime, Shared};
use crate::tls::ClientStream;

/// Serves one accepted connection until it is done. A client past the
/// session limit learns so with SQLSTATE 53300 once it has said who it is,
/// like PostgreSQL does.
pub async fn run(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, admission: Admission) {
    let accepted = Instant::now();
    let shared = &*proxy.shared;
    crate::tls::tune_tcp(&tcp);
    let runtime = shared.runtime();
    // One deadline for the whole handshake, token included: a client that
    // trickles bytes cannot reset it by finishing one step.
    let deadline = tokio::time::Instant::now() + runtime.config.proxy.handshake_timeout;
    let accept = handshake::accept(tcp, runtime.client_tls.as_ref());
    let hello = match tokio::time::timeout_at(deadline, accept).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(refused)) => return refuse(shared, refused, peer).await,
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            crate::observe::metrics::connection(ConnectionResult::ProtocolError);
            return;
        }
    };
    match hello {
        Hello::Cancel {
            stream,
            process_id,
            secret,
        } => cancel(&proxy, stream, process_id, secret, peer).await,
        Hello::Startup { stream, startup } => {
            let Ok(permit) = Arc::clone(&admission.sessions).try_acquire_owned() else {
                return refuse_early(shared, stream, ClientError::TooManyConnections, peer).await;
            };
            let handshake = Handshake {
                permit: admission.handshake,
                deadline,
            };
            let started = Started {
                peer,
                accepted,
                permit,
            };
            session(&proxy, runtime, stream, startup, started, handshake).await
        }
    }
}

/// What is left of the handshake once the startup packet is in.
struct Handshake {
    permit: HandshakeSlot,
    deadline: tokio::time::Instant,
}

/// What a session carries from its accept.
struct Started {
    peer: SocketAddr,
    /// When the connection was accepted: the start of
    /// `rolemint_connect_duration_seconds`.
    accepted: Instant,
    /// Its slot under `proxy.max_connections`.
    permit: OwnedSemaphorePermit,
}

/// A role minted for a session, and what it takes to log in as it.
struct Minted {
    registered: registry::Registered,
    password: crate::secret::Secret,
    /// A backend already logged in as the role: the warm pool's (`warm.rs`).
    warm: Option<Box<backend::Login>>,
    /// The session's place in its principal's quota, given back when the
    /// session ends.
    quota: Option<quota::Slot>,
}

async fn session(
    proxy: &Proxy,
    runtime: Arc<Runtime>,
    mut stream: ClientStream,
    startup: handshake::Startup,
    started: Started,
    handshake: Handshake,
) {
    let peer = started.peer;
    let shared = &*proxy.shared;
    if shared.shutdown.is_cancelled() {
        return refuse_early(shared, stream, ClientError::ShuttingDown, peer).await;
    }
    if !stream.is_tls() && !runtime.config.proxy.allow_plaintext {
        return refuse_early(shared, stream, ClientError::TlsRequired, peer).await;
    }
    let minted =
        match authorize_and_mint(shared, &runtime, &mut stream, &startup, peer, handshake).await {
            Ok(minted) => minted,
            Err((error, detail)) => {
                crate::observe::metrics::connection(ConnectionResult::Refused);
                return refuse_with(stream, error, peer, &detail).await;
            }
        };
    // From here on the session needs only what it minted.
    drop(runtime);
    serve_lease(proxy, stream, &startup, minted, started).await;
}

/// The token, the policy and the role: a registered lease, or what to tell
/// the client (and the log). Each step counts and audits its decision.
async fn authorize_and_mint(
    shared: &Shared,
    runtime: &Runtime,
    stream: &mut ClientStream,
    startup: &handshake::Startup,
    peer: SocketAddr,
    handshake: Handshake,
) -> Result<Minted, (ClientError, String)> {
    let max_token_bytes = runtime.config.proxy.max_token_bytes;
    let token = authorize::read_token(stream, startup, handshake, max_token_bytes).await?;
    let caller = authorize::authenticate(shared, runtime, startup, peer, token).await?;
    let grant = authorize::authorize(shared, runtime, &caller, startup, peer)?;
    let template = quota::Template::of(grant.template_name, grant.template);
    let quota = authorize::admit(shared, &caller.identity, template, peer)?;
    let mut minted = acquire(shared, &caller, &grant, startup, peer).await?;
    minted.quota = Some(quota);
    Ok(minted)
}

/// A role for the session: claimed from the warm pool, else minted. A
/// Vault token's session is minted for it, so its lease is recorded under
/// the token before the role exists; warm roles are for the rest.
async fn acquire(
    shared: &Shared,
    caller: &authorize::Caller,
    grant: &Grant<'_>,
    startup: &handshake::Startup,
    peer: SocketAddr,
) -> Result<Minted, (ClientError, String)> {
    if caller.vault_token.is_none() {
        if let Some(minted) = warm::claim(shared, &caller.identity, grant, startup, peer).await {
            return Ok(minted);
        }
    }
    mint::mint(shared, caller, grant, startup, peer).await
}
