//! The mint of a session's role: its lease recorded under the Vault token
//! that opens it, and what a failed mint means for the client. Whatever
//! the failure, the role's name goes to the revoker (the role may exist).

use std::time::SystemTime;

use super::authorize::vault_tokens;
use crate::error::ClientError;
use crate::pg::MintError;
use crate::runtime::state::Shared;

/// Records that the Vault token `hash` opens the session lease `lease_id`
/// (before the mint), so revoking the token ends the session. A token
/// revoked meanwhile refuses the session.
pub(super) async fn record_token_lease(
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
pub(super) fn mint_outcome(
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
