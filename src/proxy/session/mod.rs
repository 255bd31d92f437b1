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
use std::time::{Instant, SystemTime};

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::authorize::{client_error, session_grant, verify_password};
use self::cancel_request::cancel;
use self::handshake::Hello;
use self::mint::{mint_outcome, record_token_lease};
use self::refuse::{refuse, refuse_early, refuse_with};
use self::serve::serve_lease;
use crate::error::ClientError;
use crate::lease::quota::{self, QuotaKind};
use crate::lease::registry::{self, Lease, LeaseKind, NewLease};
use crate::observe::audit::Event;
use crate::observe::metrics::ConnectionResult;
use crate::pg::backend;
use crate::pg::MintRequest;
use crate::runtime::state::{Runtime, Shared};
use crate::tls::ClientStream;

/// A connection's place among the handshakes in flight: one of
/// `proxy.max_handshakes`, and one of its source's
/// `proxy.max_handshakes_per_source`.
pub struct HandshakeSlot {
    pub _global: OwnedSemaphorePermit,
    pub _source: crate::auth::source::SourceSlot,
}

/// The two limits a connection passes through.
pub struct Admission {
    /// Held from accept until the token has been read: handshakes in flight
    /// are bounded by `proxy.max_handshakes` (and per source), apart from
    /// sessions.
    pub handshake: HandshakeSlot,
    /// Session slots (`proxy.max_connections`): one is taken only once the
    /// client has said who it is, so idle sockets never hold one.
    pub sessions: Arc<Semaphore>,
}

/// Serves one accepted connection until it is done. A client past the
/// session limit learns so with SQLSTATE 53300 once it has said who it is,
/// like PostgreSQL does.
pub async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, admission: Admission) {
    let accepted = Instant::now();
    crate::tls::tune_tcp(&tcp);
    let runtime = shared.runtime();
    // One deadline for the whole handshake, token included: a client that
    // trickles bytes cannot reset it by finishing one step.
    let deadline = tokio::time::Instant::now() + runtime.config.proxy.handshake_timeout;
    let accept = handshake::accept(tcp, runtime.client_tls.as_ref());
    let hello = match tokio::time::timeout_at(deadline, accept).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(refused)) => return refuse(&shared, refused, peer).await,
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
        } => cancel(&shared, stream, process_id, secret, peer).await,
        Hello::Startup { stream, startup } => {
            let Ok(permit) = Arc::clone(&admission.sessions).try_acquire_owned() else {
                return refuse_early(&shared, stream, ClientError::TooManyConnections, peer).await;
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
            session(shared, runtime, stream, startup, started, handshake).await
        }
    }
}

/// What is left of the handshake once the startup packet is in.
struct Handshake {
    permit: HandshakeSlot,
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
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    mut stream: ClientStream,
    startup: handshake::Startup,
    started: Started,
    handshake: Handshake,
) {
    let peer = started.peer;
    if shared.shutdown.is_cancelled() {
        return refuse_early(&shared, stream, ClientError::ShuttingDown, peer).await;
    }
    if !stream.is_tls() && !runtime.config.proxy.allow_plaintext {
        return refuse_early(&shared, stream, ClientError::TlsRequired, peer).await;
    }
    let minted =
        match authorize_and_mint(&shared, &runtime, &mut stream, &startup, peer, handshake).await {
            Ok(minted) => minted,
            Err((error, detail)) => {
                crate::observe::metrics::connection(ConnectionResult::Refused);
                return refuse_with(stream, error, peer, &detail).await;
            }
        };
    // From here on the session needs only what it minted.
    drop(runtime);
    serve_lease(&shared, stream, &startup, minted, started).await;
}

/// The token, the policy and the mint: a registered lease, or what to tell
/// the client (and the log). Counts and audits each decision.
async fn authorize_and_mint(
    shared: &Shared,
    runtime: &Runtime,
    stream: &mut ClientStream,
    startup: &handshake::Startup,
    peer: SocketAddr,
    handshake: Handshake,
) -> Result<Minted, (ClientError, String)> {
    let config = &runtime.config;
    let template = startup.template.as_str();
    let database = startup.database.as_str();

    let read_token = handshake::read_token(stream, startup, config.proxy.max_token_bytes);
    let token = match tokio::time::timeout_at(handshake.deadline, read_token).await {
        Ok(Ok(token)) => token,
        Ok(Err((error, detail))) => {
            crate::observe::metrics::auth(false, "no_token", None);
            return Err((error, detail));
        }
        Err(_) => {
            crate::observe::metrics::auth(false, "timeout", None);
            return Err((
                ClientError::BadToken,
                "handshake timed out waiting for the token".into(),
            ));
        }
    };
    // The handshake is over: the next client may start one.
    drop(handshake.permit);
    // Every reason gets the same 28P01; the reason goes to the log only.
    let verified = verify_password(shared, runtime, peer, token.expose()).await;
    drop(token);
    let failed =
        |reason: String, identity: Option<&crate::auth::identity::Identity>| Event::AuthFailed {
            reason,
            issuer: identity.map(|i| i.issuer.clone()),
            identity: identity.map(|i| i.subject.clone()),
            client_addr: peer.to_string(),
            template: template.to_owned(),
            database: database.to_owned(),
        };
    let (identity, vault_token) = match verified {
        Ok(found) => found,
        Err(reason) => {
            // The verifier's messages name a check, never a claim value.
            crate::observe::metrics::auth(false, reason.reason(), None);
            shared
                .audit
                .record(failed(format!("{}: {reason}", reason.reason()), None));
            let mut detail = format!(
                "template={template} database={database}: reason={}: {reason}",
                reason.reason()
            );
            let error = client_error(shared, &reason, template);
            if let ClientError::CredentialLease(_) = &error {
                detail.push_str(&format!("; {error}"));
            }
            return Err((error, detail));
        }
    };
    let authorized = session_grant(
        shared,
        config,
        &identity,
        vault_token.as_ref(),
        template,
        database,
    )
    .and_then(|mut grant| {
        shared.require_approval(&mut grant, &identity)?;
        Ok(grant)
    });
    let grant = match authorized {
        Ok(grant) => grant,
        Err(refusal) => {
            crate::observe::metrics::auth(false, refusal.error.kind(), Some(&identity.issuer));
            shared.audit.record(failed(
                format!("{}: {}", refusal.error.kind(), refusal.rule),
                Some(&identity),
            ));
            let detail = format!(
                "identity={:?} issuer={} template={template}: {}",
                identity.subject, identity.issuer, refusal.rule
            );
            return Err((refusal.error, detail));
        }
    };
    crate::observe::metrics::auth(true, "ok", Some(&identity.issuer));
    shared.audit.record(Event::AuthOk {
        identity: identity.subject.clone(),
        issuer: Some(identity.issuer.clone()),
        client_addr: peer.to_string(),
        template: template.to_owned(),
        database: database.to_owned(),
    });
    tracing::debug!(
        identity = ?identity.subject, issuer = %identity.issuer, template,
        rule = %grant.rule, "policy allowed"
    );
    // Every session ends in a revocation: while too many wait (PostgreSQL
    // down), add none, or the queue grows with every client retry.
    if shared.revoker.backlogged() {
        let detail = format!(
            "identity={:?} template={template}: {} roles wait to be revoked",
            identity.subject,
            shared.revoker.pending()
        );
        return Err((ClientError::RevocationBacklog, detail));
    }
    // The principal's own share of this instance (`[quotas]`), held for
    // the session's life.
    let quota = shared
        .quotas
        .take(QuotaKind::Sessions, &identity.issuer, &identity.subject)
        .map_err(|refused| {
            shared.audit.record(quota::refusal_event(
                &refused,
                &identity,
                template,
                Some(peer),
            ));
            let detail = format!(
                "identity={:?} issuer={} template={template}: {refused}",
                identity.subject, identity.issuer
            );
            (ClientError::QuotaExceeded(refused.to_string()), detail)
        })?;
    // A Vault token's session is minted for it, so its lease is recorded
    // under the token before the role exists; warm roles are for the rest.
    if vault_token.is_none() {
        if let Some(mut minted) = warm::claim(shared, &identity, &grant, startup, peer).await {
            minted.quota = Some(quota);
            return Ok(minted);
        }
    }

    let started = Instant::now();
    let lease_id = registry::new_lease_id(LeaseKind::Session, grant.template_name);
    if let Some((hash, _)) = &vault_token {
        record_token_lease(shared, hash, &lease_id, grant.ttl).await?;
    }
    let request = MintRequest {
        identity: &identity,
        template_name: grant.template_name,
        template: grant.template,
        database,
        ttl: grant.ttl,
        lease_id: &lease_id,
    };
    let prepared = match shared.admin_client.render_mint(&request) {
        Ok(prepared) => prepared,
        Err(e) => {
            let detail = format!("lease={lease_id}: mint refused: {e}");
            return Err((ClientError::MintFailed, detail));
        }
    };
    let minting = shared.minting(&prepared.role.name);
    let created = tokio::time::timeout(
        shared.config.admin_operation_timeout(),
        shared.admin_client.create(&prepared),
    )
    .await;
    if matches!(created, Ok(Ok(()))) {
        crate::observe::metrics::mint_duration(started.elapsed());
    }
    if let Err(error) = mint_outcome(shared, &prepared, grant.template_name, created) {
        let detail = format!(
            "lease={lease_id} identity={}: mint failed",
            identity.subject
        );
        return Err((error, detail));
    }
    let minted = prepared.role;
    let registered = shared.leases.register(Lease::new(NewLease {
        id: lease_id,
        role: minted.name.clone(),
        template: grant.template_name.to_owned(),
        database: database.to_owned(),
        identity: identity.subject.clone(),
        issuer: identity.issuer.clone(),
        groups: identity.groups.clone(),
        client_addr: Some(peer),
        issued_at: SystemTime::now(),
        expires_at: minted.expires_at,
    }));
    drop(minting);
    let lease = &registered.lease;
    tracing::info!(
        lease = %lease.id, role = %lease.role, identity = %LogSafe(&lease.identity),
        template = %lease.template, database, %peer,
        mint_ms = started.elapsed().as_millis() as u64,
        "lease minted"
    );
    shared.audit.record(Event::LeaseMinted {
        lease_id: lease.id.clone(),
        role: lease.role.clone(),
        identity: lease.identity.clone(),
        issuer: lease.issuer.clone(),
        groups: lease.groups.clone(),
        template: lease.template.clone(),
        database: lease.database.clone(),
        expire_time: humantime::format_rfc3339_seconds(minted.expires_at).to_string(),
        client_addr: Some(peer.to_string()),
    });
    Ok(Minted {
        registered,
        password: minted.password,
        warm: None,
        quota: Some(quota),
    })
}
