//! What follows a mint, whichever door asked for it (a proxied session, a
//! session served from the warm pool, a credential lease): a role that
//! was created becomes a registered lease with its `lease.minted` audit
//! line; one whose mint failed goes to the revoker, since it may exist.
//!
//! Owns those two endings only: the mint itself is
//! [`crate::pg::AdminClient`]'s, and what the client is told is the
//! door's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::auth::identity::Identity;
use crate::lease::registry::{Lease, Leases, NewLease, Registered};
use crate::lease::revoker::Revoker;
use crate::observe::audit::{Audit, Event};
use crate::observe::logging::LogSafe;
use crate::pg::{MintError, PreparedMint};

/// How a lease's role came to be, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Minted for a proxied session.
    Session,
    /// Claimed from the warm pool for a proxied session.
    WarmPool,
    /// Minted as a credential lease (Vault's `creds`).
    Credentials,
}

impl Source {
    fn message(self) -> &'static str {
        match self {
            Source::Session => "lease minted",
            Source::WarmPool => "lease minted from the warm pool",
            Source::Credentials => "credential lease minted",
        }
    }
}

/// A role just minted (or claimed), and for whom.
#[derive(Debug)]
pub struct NewRole<'a> {
    pub lease_id: String,
    pub role: String,
    pub template: &'a str,
    pub database: &'a str,
    pub identity: &'a Identity,
    /// The client's address (sessions), or the API caller's.
    pub client_addr: Option<SocketAddr>,
    pub expires_at: SystemTime,
}

/// Registers a role just minted (or claimed) as a lease issued now, and
/// says so: a log line and the `lease.minted` audit line. `took` is how
/// long the mint or claim took, for the log.
pub fn register(
    leases: &Arc<Leases>,
    audit: &Audit,
    role: NewRole<'_>,
    source: Source,
    took: Duration,
) -> Registered {
    let new = NewLease {
        id: role.lease_id,
        role: role.role,
        template: role.template.to_owned(),
        database: role.database.to_owned(),
        identity: role.identity.subject.clone(),
        issuer: role.identity.issuer.clone(),
        groups: role.identity.groups.clone(),
        client_addr: role.client_addr,
        issued_at: SystemTime::now(),
        expires_at: role.expires_at,
    };
    let expires_at = new.expires_at;
    let registered = leases.register(Lease::new(new));
    let lease = &registered.lease;
    tracing::info!(
        lease = %lease.id, role = %lease.role, identity = %LogSafe(&lease.identity),
        template = %lease.template, database = %lease.database,
        client = ?lease.client_addr, took_ms = took.as_millis() as u64,
        "{}", source.message()
    );
    audit.record(Event::LeaseMinted {
        lease_id: lease.id.clone(),
        role: lease.role.clone(),
        identity: lease.identity.clone(),
        issuer: lease.issuer.clone(),
        groups: lease.groups.clone(),
        template: lease.template.clone(),
        database: lease.database.clone(),
        expire_time: crate::pg::rfc3339(expires_at),
        client_addr: lease.client_addr.map(|a| a.to_string()),
    });
    registered
}

/// Why a mint gave no role.
#[derive(Debug, thiserror::Error)]
pub enum MintFailure {
    /// No admin connection: the batch never reached PostgreSQL.
    #[error("{0}")]
    NotSent(MintError),
    /// PostgreSQL answered with an error, or the batch broke off.
    #[error("{0}")]
    Failed(MintError),
    /// No answer within the admin operation timeout.
    #[error("mint timed out")]
    TimedOut,
}

impl MintFailure {
    /// Whether the backend (not the template) is to blame, so a retry may
    /// succeed: the client is told the backend is unavailable.
    pub fn is_transient(&self) -> bool {
        match self {
            MintFailure::NotSent(_) | MintFailure::TimedOut => true,
            MintFailure::Failed(e) => e.is_transient(),
        }
    }
}

/// A mint's outcome, `created` within its timeout. On any failure the
/// role's name goes to the revoker, since the role may exist (or come to
/// exist when a batch we stopped waiting for commits) — except when the
/// batch was never sent: then no role exists, and queueing its name would
/// let a client retrying against a down database grow the revoker's
/// queue without bound.
pub fn settle(
    revoker: &Revoker,
    statement_timeout: Duration,
    prepared: &PreparedMint,
    template: &str,
    created: Result<Result<(), MintError>, tokio::time::error::Elapsed>,
) -> Result<(), MintFailure> {
    let settle = prepared.settle_time(statement_timeout);
    let (failure, settle) = match created {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e @ MintError::Connect { .. })) => return Err(MintFailure::NotSent(e)),
        // The server answered (the batch is over, rolled back): one check
        // that the role is not there is enough.
        Ok(Err(e @ MintError::Sql { .. })) => (MintFailure::Failed(e), Duration::ZERO),
        Ok(Err(e)) => (MintFailure::Failed(e), settle),
        Err(_) => (MintFailure::TimedOut, settle),
    };
    revoker.schedule_failed_mint(
        &prepared.role.name,
        prepared.database(),
        Some(template),
        settle,
    );
    Err(failure)
}
