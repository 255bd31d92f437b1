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
//! allowed through are [`crate::pg::backend::params`]), the login as the
//! minted role ([`crate::pg::backend`]: the sockets, and the state machine
//! over the messages), [`relay`] (startup forwarding, splice) and [`wire`]
//! (the messages rolemint encodes and decodes itself).

pub mod handshake;
mod kernel;
pub mod relay;
pub mod statements;
mod warm;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::handshake::{Hello, Refused};
use self::relay::End;
use crate::error::ClientError;
use crate::lease::quota::{self, QuotaKind};
use crate::lease::registry::{self, EndReason, Lease, LeaseKind, NewLease};
use crate::lease::revoker::Why;
use crate::observe::audit::Event;
use crate::observe::metrics::{ConnectionResult, Direction};
use crate::pg::backend::{self, CancelSecret};
use crate::pg::{MintError, MintRequest};
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

/// The identity behind a session's password: a Vault token (`rmv.`, read
/// from the token store with a use spent; an unknown one counts against
/// the address like any failure), else an identity token.
async fn verify_password(
    shared: &Shared,
    runtime: &Runtime,
    peer: SocketAddr,
    password: &str,
) -> Result<
    (
        crate::auth::identity::Identity,
        Option<(crate::auth::token::TokenHash, Vec<String>)>,
    ),
    crate::auth::identity::IdentityError,
> {
    use crate::auth::identity::{Identity, IdentityError};
    if !crate::auth::token::is_token(password) {
        let identity = runtime
            .verifier
            .authenticate_from(peer.ip(), password)
            .await?;
        return Ok((identity, None));
    }
    let failures = &runtime.verifier.failures;
    if let Some(wait) = failures.retry_after(peer.ip()) {
        let retry_after_secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        return Err(IdentityError::RateLimited { retry_after_secs });
    }
    let hash = crate::auth::token::TokenHash::of(password);
    match vault_tokens(shared).use_once(&hash).await {
        Ok(Some(t)) => Ok((
            Identity {
                subject: t.subject,
                groups: t.groups,
                expires_at: t
                    .expires_at
                    .unwrap_or_else(|| SystemTime::now() + crate::auth::token::MAX_TOKEN_TTL),
                issuer: t.issuer,
            },
            Some((hash, t.policies)),
        )),
        Ok(None) => {
            failures.failed(peer.ip());
            Err(IdentityError::VaultToken("unknown, expired or used up"))
        }
        Err(e) => {
            tracing::warn!("token store: {e}");
            Err(IdentityError::VaultToken("could not be checked"))
        }
    }
}

/// What entitles a session: a Vault token's policies (`read` on
/// `<database mount>/creds/<template>`, beside the allow lists), else the
/// template's allow lists, as on the HTTP door.
fn session_grant<'a>(
    shared: &Shared,
    config: &'a crate::config::Config,
    identity: &crate::auth::identity::Identity,
    vault_token: Option<&(crate::auth::token::TokenHash, Vec<String>)>,
    template: &str,
    database: &str,
) -> Result<crate::auth::policy::Grant<'a>, crate::auth::policy::Refusal> {
    use crate::auth::policy::{authorize, authorize_with, Entitlement};
    let Some((_, policies)) = vault_token else {
        return authorize(config, identity, template, database);
    };
    let stored = crate::control::door::policy::StoredPolicies(shared.store.clone());
    let acl = shared.policy_cache.acl(policies, &stored);
    let entitlement = Entitlement::Policies {
        acl: &acl,
        database_mount: &config.vault.database_mount,
    };
    authorize_with(config, identity, template, database, entitlement)
}

/// The token store, over the admin pool.
fn vault_tokens(shared: &Shared) -> crate::store::tokens::Tokens {
    crate::store::tokens::Tokens::new(
        std::sync::Arc::clone(&shared.admin_client),
        shared.config.vault.max_client_tokens,
    )
}

/// Records that the Vault token `hash` opens the session lease `lease_id`
/// (before the mint), so revoking the token ends the session. A token
/// revoked meanwhile refuses the session.
async fn record_token_lease(
    shared: &Shared,
    hash: &crate::auth::token::TokenHash,
    lease_id: &str,
    ttl: std::time::Duration,
) -> Result<(), (ClientError, String)> {
    let expires_at = SystemTime::now() + ttl;
    match vault_tokens(shared)
        .add_lease(hash, lease_id, expires_at)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err((
            ClientError::BadToken,
            format!("lease={lease_id}: vault token revoked before the mint"),
        )),
        Err(e) => Err((
            ClientError::BadToken,
            format!("lease={lease_id}: token store: {e}"),
        )),
    }
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

/// Logs in as the minted role, splices until the session ends, and hands
/// the role to the revoker.
async fn serve_lease(
    shared: &Shared,
    stream: ClientStream,
    startup: &handshake::Startup,
    minted: Minted,
    started: Started,
) {
    let Minted {
        registered,
        password,
        warm,
        quota,
    } = minted;
    let lease = &registered.lease;
    crate::failpoint::hit(crate::failpoint::AFTER_MINT).await;
    let (end, traffic) = connect_and_splice(
        shared,
        stream,
        startup,
        &password,
        warm,
        lease,
        started.accepted,
    )
    .await;
    drop(password);
    lease.set_traffic(traffic.client_to_backend, traffic.backend_to_client);
    crate::observe::metrics::relay_bytes(Direction::ClientToBackend, traffic.client_to_backend);
    crate::observe::metrics::relay_bytes(Direction::BackendToClient, traffic.backend_to_client);
    // The session is over: its slots are free while the role is revoked.
    drop(started.permit);
    drop(quota);
    let why = match end {
        End::Lease(reason) => Why::from(reason),
        _ => lease.end_reason().map_or(Why::SessionEnded, Why::from),
    };
    let duration = lease
        .issued_at
        .elapsed()
        .unwrap_or_else(|_| started.accepted.elapsed());
    shared.audit.record(Event::SessionEnded {
        lease_id: lease.id.clone(),
        role: lease.role.clone(),
        identity: lease.identity.clone(),
        reason: end_reason(&end, why).to_owned(),
        duration_seconds: duration.as_secs_f64(),
        bytes_in: traffic.client_to_backend,
        bytes_out: traffic.backend_to_client,
    });
    shared.revoker.schedule_lease(
        &lease.id,
        &lease.role,
        &lease.database,
        Some(&lease.template),
        why,
    );
    tracing::info!(
        lease = %lease.id, role = %lease.role, end = ?end,
        bytes_in = traffic.client_to_backend, bytes_out = traffic.backend_to_client,
        duration_ms = duration.as_millis() as u64,
        "session ended; role handed to the revoker"
    );
    // Only now does the registry forget the lease: until the revoker has
    // it, the role counts as held (the reaper asks).
    drop(registered);
}

/// `session.ended`'s reason: `client`, `ttl`, `revoked`, `shutdown`,
/// `backend` or `error`.
fn end_reason(end: &End, why: Why) -> &'static str {
    match (end, why) {
        (End::Lease(EndReason::Expired), _) | (_, Why::Expired) => "ttl",
        (End::Lease(EndReason::Revoked), _) | (_, Why::Revoked) => "revoked",
        (End::Lease(EndReason::Shutdown), _) | (_, Why::Shutdown) => "shutdown",
        (End::ClientClosed, _) => "client",
        (End::BackendClosed, _) => "backend",
        _ => "error",
    }
}

/// Keeps `rolemint_sessions_active{template}` true on every way out of a
/// splice, a panic included.
struct ActiveSession<'a>(&'a str);

impl<'a> ActiveSession<'a> {
    fn start(template: &'a str) -> ActiveSession<'a> {
        crate::observe::metrics::session_started(template);
        ActiveSession(template)
    }
}

impl Drop for ActiveSession<'_> {
    fn drop(&mut self) {
        crate::observe::metrics::session_ended(self.0);
    }
}

/// What a mint's outcome means for the client; on any failure the role's
/// name goes to the revoker, since the role may exist (or come to exist
/// when a batch we stopped waiting for commits).
fn mint_outcome(
    shared: &Shared,
    prepared: &crate::pg::PreparedMint,
    template: &str,
    created: Result<Result<(), MintError>, tokio::time::error::Elapsed>,
) -> Result<(), ClientError> {
    let role = &prepared.role.name;
    let settle = prepared.settle_time(shared.admin_client.statement_timeout());
    let (error, settle) = match created {
        Ok(Ok(())) => return Ok(()),
        // The server answered (the batch is over, rolled back), or the
        // batch was never sent: one check that the role is not there is
        // enough.
        // No admin connection: the batch never reached PostgreSQL, so no
        // role exists, and queueing its name would let a client retrying
        // against a down database grow the revoker's queue without bound.
        Ok(Err(e @ MintError::Connect { .. })) => {
            tracing::warn!(role, "mint failed: {e}");
            return Err(ClientError::BackendUnavailable);
        }
        Ok(Err(e @ MintError::Sql { .. })) => {
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
    password: &crate::secret::Secret,
    warm: Option<Box<backend::Login>>,
    lease: &Lease,
    accepted: Instant,
) -> (End, relay::Traffic) {
    let failed = (End::Failed, relay::Traffic::default());
    let role = lease.role.as_str();
    let backend_config = &shared.config.backend;
    let login_started = Instant::now();
    let warm_hit = warm.is_some();
    let login = async {
        if let Some(login) = warm {
            return Ok(*login);
        }
        let conn = backend::connect(backend_config, shared.backend_tls.as_ref()).await?;
        backend::login(
            conn,
            role,
            password,
            &startup.database,
            &startup.forward,
            backend_config,
        )
        .await
    };
    let mut login = match tokio::time::timeout(2 * backend_config.connect_timeout, login).await {
        Ok(Ok(login)) => login,
        Ok(Err(e)) => {
            let e = e.to_string();
            tracing::warn!(lease = %lease.id, role, "backend login failed: {}", LogSafe(&e));
            crate::observe::metrics::connection(ConnectionResult::Refused);
            relay::send_fatal(&mut stream, &ClientError::BackendUnavailable).await;
            return failed;
        }
        Err(_) => {
            tracing::warn!(lease = %lease.id, role, "backend login timed out");
            crate::observe::metrics::connection(ConnectionResult::Refused);
            relay::send_fatal(&mut stream, &ClientError::BackendUnavailable).await;
            return failed;
        }
    };
    if !warm_hit {
        crate::observe::metrics::backend_login_duration(login_started.elapsed());
    }
    crate::failpoint::hit(crate::failpoint::AFTER_LOGIN).await;
    // A protocol 3.2 client gets a long secret, whatever the backend speaks.
    let long_key = startup.minor >= wire::LATEST_MINOR;
    let cancel_key = shared.cancels.issue(login.key.clone(), role, long_key);
    let audited = statement_audit(shared, lease);
    // Into the kernel before the client can send anything more: it waits
    // for its first ReadyForQuery. Not a session whose statements are
    // audited: the kernel would never show rolemint its bytes.
    let mut kernel = shared
        .sockmap
        .as_ref()
        .filter(|_| audited.is_none())
        .and_then(|map| kernel::begin(map, &stream, &login.stream, login.leftover.len()));
    let framer = match relay::forward_startup(&mut stream, &mut login, &cancel_key.key).await {
        Ok((framer, written)) => {
            if let Some(k) = kernel.as_mut() {
                k.wrote_to_client(written);
            }
            framer
        }
        Err(e) => {
            tracing::debug!(lease = %lease.id, "client went away during startup: {e}");
            crate::observe::metrics::connection(ConnectionResult::ProtocolError);
            return failed;
        }
    };
    // The client has its first ReadyForQuery.
    crate::observe::metrics::connection(ConnectionResult::Ok);
    crate::observe::metrics::connect_duration(accepted.elapsed());
    let _active = ActiveSession::start(&lease.template);
    match kernel {
        Some(k) => {
            k.run(shared, stream, login.stream, lease, login.key.process_id)
                .await
        }
        None => relay::splice(stream, login.stream, framer, lease, audited).await,
    }
}

/// The statement audit of `lease`'s session, when its template asks for
/// one (`audit_queries`): each statement becomes a `session.statement`
/// line. Read from the current runtime, as the template is right after
/// the mint.
fn statement_audit<'a>(shared: &'a Shared, lease: &'a Lease) -> Option<relay::Audited<'a>> {
    let runtime = shared.runtime();
    let template = runtime.config.template(&lease.template)?;
    if !template.audit_queries {
        return None;
    }
    let tap = statements::StatementTap::new(template.audit_parameters);
    let sink = move |s: statements::Statement| {
        shared.audit.record(Event::SessionStatement {
            lease_id: lease.id.clone(),
            role: lease.role.clone(),
            identity: lease.identity.clone(),
            template: lease.template.clone(),
            database: lease.database.clone(),
            seq: s.seq,
            kind: s.kind.as_str(),
            name: s.name,
            statement: s.text,
            params: s.params,
            truncated: s.truncated,
        });
    };
    Some(relay::Audited {
        tap,
        sink: Box::new(sink),
    })
}

/// Forwards a CancelRequest whose key is ours (any other is ignored, as
/// PostgreSQL does), then closes the client's connection. A cancel that came
/// inside TLS (libpq 17 sends it so) is closed with close_notify: libpq
/// reads an EOF without it as an SSL error and reports the cancel failed.
async fn cancel(
    shared: &Shared,
    mut stream: ClientStream,
    process_id: i32,
    secret: CancelSecret,
    peer: SocketAddr,
) {
    match shared.cancels.lookup(process_id, &secret) {
        None if shared.cancels.holds(process_id) => {
            tracing::debug!(%peer, "cancel request with a wrong key for our session ignored");
            crate::observe::metrics::cancel_request("unknown");
            shared.cancels.verify_failed(peer.ip());
        }
        None => cancel_elsewhere(shared, process_id, &secret, peer).await,
        Some(key) => {
            let config = &shared.config.backend;
            match backend::cancel(config, shared.backend_tls.as_ref(), key).await {
                Ok(()) => crate::observe::metrics::cancel_request("forwarded"),
                Err(e) => {
                    crate::observe::metrics::cancel_request("failed");
                    tracing::warn!(%peer, "forwarding cancel request failed: {e}");
                }
            }
        }
    }
    // Bounded: a client that does not read cannot hold the task.
    let close = tokio::io::AsyncWriteExt::shutdown(&mut stream);
    if let Err(e) = tokio::time::timeout(CLOSE_TIMEOUT, close).await {
        tracing::debug!(%peer, "closing a cancel connection: {e}");
    }
}

/// A key this instance did not issue: in a cluster, verifies it against the
/// database and cancels through the admin pool (see [`crate::proxy::cancel`]);
/// otherwise, or when it does not verify, ignores it silently, as
/// PostgreSQL does.
async fn cancel_elsewhere(
    shared: &Shared,
    process_id: i32,
    secret: &CancelSecret,
    peer: SocketAddr,
) {
    let Some(cluster) = shared.cancels.cluster() else {
        tracing::debug!(%peer, "cancel request with an unknown key ignored");
        crate::observe::metrics::cancel_request("unknown");
        return;
    };
    // Each check costs a query and is a guess at a 32-bit secret: an
    // address that keeps guessing wrong is no longer asked about.
    if process_id <= 0 || !shared.cancels.may_verify(peer.ip()) {
        tracing::debug!(%peer, "cancel request ignored (invalid pid or rate limited)");
        crate::observe::metrics::cancel_request("unknown");
        return;
    }
    let admin_client = &shared.admin_client;
    let verify_and_cancel = async {
        let Some(role) = admin_client.minted_backend_role(process_id).await? else {
            return Ok(None);
        };
        if !cluster.verify(process_id, &role, secret) {
            return Ok(None);
        }
        admin_client
            .cancel_backend(process_id, &role)
            .await
            .map(Some)
    };
    match tokio::time::timeout(shared.config.admin_operation_timeout(), verify_and_cancel).await {
        Ok(Ok(Some(signalled))) => {
            crate::observe::metrics::cancel_request("forwarded");
            tracing::debug!(%peer, process_id, signalled, "cluster cancel key verified")
        }
        Ok(Ok(None)) => {
            crate::observe::metrics::cancel_request("unknown");
            shared.cancels.verify_failed(peer.ip());
            tracing::debug!(%peer, "cancel request with an unknown key ignored");
        }
        Ok(Err(e)) => {
            crate::observe::metrics::cancel_request("failed");
            tracing::warn!(%peer, "cancelling through the admin pool failed: {e}")
        }
        Err(_) => {
            crate::observe::metrics::cancel_request("failed");
            tracing::warn!(%peer, "cancelling through the admin pool timed out")
        }
    }
}

/// What a client whose token failed is told: that it is rate limited (and
/// for how long), that it sent a credential lease's password to the proxy
/// door, or only that the token is bad.
fn client_error(
    shared: &Shared,
    reason: &crate::auth::identity::IdentityError,
    user: &str,
) -> ClientError {
    use crate::auth::identity::IdentityError;
    match reason {
        IdentityError::RateLimited { retry_after_secs } => {
            ClientError::RateLimited(*retry_after_secs)
        }
        // Not token-shaped, and the user name is a live credential role of
        // this instance: a password from the Vault-compatible door.
        IdentityError::Malformed(_) | IdentityError::UnknownStaticToken
            if shared
                .leases
                .list()
                .iter()
                .any(|l| l.kind == LeaseKind::Creds && l.role == user) =>
        {
            let b = &shared.config.backend;
            ClientError::CredentialLease(format!("{}:{}", b.host, b.port))
        }
        _ => ClientError::BadToken,
    }
}

/// Longest wait to close a connection cleanly (TLS close_notify).
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A handshake that failed: counted as a protocol error; audited when the
/// client is still there to be told (a bare TCP probe is not an event).
async fn refuse(shared: &Shared, refused: Refused, peer: SocketAddr) {
    crate::observe::metrics::connection(ConnectionResult::ProtocolError);
    match refused.stream {
        Some(stream) => {
            shared.audit.record(Event::ConnectionRefused {
                client_addr: peer.to_string(),
                reason: "protocol".into(),
            });
            refuse_with(stream, refused.error, peer, &refused.detail).await
        }
        None => tracing::debug!(%peer, "handshake failed: {}", LogSafe(&refused.detail)),
    }
}

/// Turns a connection away before its token is read: counted, audited as
/// `connection.refused`, and told why.
async fn refuse_early(shared: &Shared, stream: ClientStream, error: ClientError, peer: SocketAddr) {
    let result = match error {
        ClientError::TooManyConnections => ConnectionResult::TooMany,
        ClientError::ShuttingDown => ConnectionResult::ShuttingDown,
        ClientError::TlsRequired => ConnectionResult::TlsRequired,
        _ => ConnectionResult::Refused,
    };
    crate::observe::metrics::connection(result);
    shared.audit.record(Event::ConnectionRefused {
        client_addr: peer.to_string(),
        reason: error.kind().to_owned(),
    });
    refuse_with(stream, error, peer, "").await
}

/// Sends the client its error, and logs the reason with the detail the
/// client is not told.
async fn refuse_with(mut stream: ClientStream, error: ClientError, peer: SocketAddr, detail: &str) {
    let detail = LogSafe(detail);
    tracing::info!(%peer, sqlstate = error.sqlstate(), kind = error.kind(), "refused: {detail}");
    relay::send_fatal(&mut stream, &error).await;
}
