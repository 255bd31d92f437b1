//! The credential leases a token created (`rolemint.token_leases`):
//! recorded when the token reads credentials, and revoked with the token,
//! when it is revoked or when the sweep finds it expired or used up.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::super::{door, Principal, VaultDoor};
use super::store_error;
use crate::auth::token::TokenHash;
use crate::control::leases::LeaseDirectory;
use crate::control::vault::ApiError;
use crate::control::AdminState;
use crate::lease::end::EndReason;
use crate::store::tokens::{Revoked, Tokens};

/// Leases revoked at once when a token goes.
const LEASE_REVOKES_IN_FLIGHT: usize = 16;
/// How often expired tokens are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Revokes `roots` with their subtrees, then every lease they created
/// (waiting for each role to be dropped, a few at a time).
pub async fn revoke_tokens(
    door: &VaultDoor,
    directory: &Arc<dyn LeaseDirectory>,
    roots: &[TokenHash],
) -> Result<Revoked, ApiError> {
    let revoked = door.tokens.revoke(roots).await.map_err(store_error)?;
    revoke_leases(directory, &revoked.leases).await;
    if revoked.tokens > 0 {
        tracing::info!(
            tokens = revoked.tokens,
            leases = revoked.leases.len(),
            "tokens revoked"
        );
    }
    Ok(revoked)
}

async fn revoke_leases(directory: &Arc<dyn LeaseDirectory>, leases: &[String]) {
    if leases.is_empty() {
        return;
    }
    let directory = Arc::clone(directory);
    let leases = leases.to_vec();
    // On a task of its own: the tokens are deleted already, so their leases
    // must go even if the caller stops waiting (a request timeout drops
    // the handler, and a dropped JoinSet would abort its revocations).
    let task = tokio::spawn(async move {
        for chunk in leases.chunks(LEASE_REVOKES_IN_FLIGHT) {
            let mut set = tokio::task::JoinSet::new();
            for lease in chunk {
                let directory = Arc::clone(&directory);
                let lease = lease.clone();
                set.spawn(async move {
                    if let Err(e) = directory
                        .revoke(lease.clone(), EndReason::RevokedByToken, true)
                        .await
                    {
                        // The role still carries its VALID UNTIL; the
                        // reaper of any instance drops it then.
                        tracing::warn!(lease = %lease, "revoking a revoked token's lease: {e}");
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
    });
    if let Err(e) = task.await {
        tracing::error!("revoking a revoked token's leases: {e}");
    }
}

/// Sweeps expired and used-up tokens (their subtrees and leases with them)
/// every [`SWEEP_INTERVAL`], a bounded batch per round, until `stop`.
pub async fn sweep(
    tokens: Tokens,
    directory: Arc<dyn LeaseDirectory>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
        loop {
            match tokens.sweep().await {
                Ok(revoked) => {
                    revoke_leases(&directory, &revoked.leases).await;
                    if revoked.tokens > 0 {
                        tracing::info!(tokens = revoked.tokens, "expired tokens swept");
                    }
                    // A full batch: more may be waiting.
                    if revoked.tokens < crate::store::tokens::SWEEP_BATCH || stop.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("token sweep: {e}");
                    break;
                }
            }
        }
    }
}

/// Records that the caller's token created `lease_id`, so revoking the
/// token revokes the lease. A token revoked meanwhile (or a store that
/// cannot say) takes the lease down at once: 403 (503).
pub async fn record_lease(
    state: &AdminState,
    principal: &Principal,
    lease_id: &str,
    expires_at: SystemTime,
) -> Result<(), ApiError> {
    let Some(token) = &principal.token else {
        return Ok(());
    };
    let door = door(state)?;
    let refused = match door
        .tokens
        .add_lease(&token.hash, lease_id, expires_at)
        .await
    {
        Ok(true) => return Ok(()),
        Ok(false) => ApiError::permission_denied(),
        Err(e) => store_error(e),
    };
    revoke_leases(&state.directory, &[lease_id.to_owned()]).await;
    Err(refused)
}
