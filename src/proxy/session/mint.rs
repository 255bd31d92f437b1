//! The mint of a session's role: its lease recorded under the Vault token
//! that opens it, and what a failed mint means for the client. Whatever
//! the failure, the role's name goes to the revoker (the role may exist).

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use super::authorize::{vault_tokens, Caller};
use super::handshake::Startup;
use super::Minted;
use crate::auth::policy::Grant;
use crate::error::ClientError;
use crate::lease::registry::{self, Lease, LeaseKind, NewLease};
use crate::observe::audit::Event;
use crate::observe::logging::LogSafe;
use crate::pg::{MintError, MintRequest};
use crate::runtime::state::Shared;

/// Mints a role for the session and registers its lease. The role's name
/// is held as minting until the lease is registered, so the reaper never
/// takes it for an orphan.
pub(super) async fn mint(
    shared: &Shared,
    caller: &Caller,
    grant: &Grant<'_>,
    startup: &Startup,
    peer: SocketAddr,
) -> Result<Minted, (ClientError, String)> {
    let identity = &caller.identity;
    let started = Instant::now();
    let lease_id = registry::new_lease_id(LeaseKind::Session, grant.template_name);
    if let Some((hash, _)) = &caller.vault_token {
        record_token_lease(shared, hash, &lease_id, grant.ttl).await?;
    }
    let request = MintRequest {
        identity,
        template_name: grant.template_name,
        template: grant.template,
        database: &startup.database,
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
        database: startup.database.clone(),
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
        template = %lease.template, database = %lease.database, %peer,
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
        quota: None,
    })
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
