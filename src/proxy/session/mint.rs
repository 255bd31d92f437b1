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
use crate::lease::minted::{self, NewRole, Source};
use crate::lease::registry::{self, LeaseKind};
use crate::pg::{MintRequest, PreparedMint};
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
    if let Err(error) = create(shared, &prepared, grant.template_name, started).await {
        let detail = format!(
            "lease={lease_id} identity={}: mint failed",
            identity.subject
        );
        return Err((error, detail));
    }
    let minted = prepared.role;
    let new = NewRole {
        lease_id,
        role: minted.name,
        template: grant.template_name,
        database: &startup.database,
        identity,
        client_addr: Some(peer),
        expires_at: minted.expires_at,
    };
    let took = started.elapsed();
    let registered = minted::register(&shared.leases, &shared.audit, new, Source::Session, took);
    drop(minting);
    Ok(Minted {
        registered,
        password: minted.password,
        warm: None,
        quota: None,
    })
}

/// Creates the role, within the admin operation timeout; a failure is
/// what the client is told (the role's name has gone to the revoker).
async fn create(
    shared: &Shared,
    prepared: &PreparedMint,
    template: &str,
    started: Instant,
) -> Result<(), ClientError> {
    let created = tokio::time::timeout(
        shared.config.admin_operation_timeout(),
        shared.admin_client.create(prepared),
    )
    .await;
    if matches!(created, Ok(Ok(()))) {
        crate::observe::metrics::mint_duration(started.elapsed());
    }
    let statement_timeout = shared.admin_client.statement_timeout();
    minted::settle(
        &shared.revoker,
        statement_timeout,
        prepared,
        template,
        created,
    )
    .map_err(|failure| {
        tracing::warn!(role = %prepared.role.name, "mint failed: {failure}");
        if failure.is_transient() {
            ClientError::BackendUnavailable
        } else {
            ClientError::MintFailed
        }
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
