//! Who the client is and whether it may have the session it asks for: the
//! password read as a Vault token or an identity token, the grant (a Vault
//! token's policies, else the template's allow lists), and what a client
//! whose token failed is told. The reasons go to the log and the audit
//! line, never to the client.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::error::ClientError;
use crate::lease::registry::LeaseKind;
use crate::runtime::state::{Runtime, Shared};

/// The identity behind a session's password: a Vault token (`rmv.`, read
/// from the token store with a use spent; an unknown one counts against
/// the address like any failure), else an identity token.
pub(super) async fn verify_password(
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
pub(super) fn session_grant<'a>(
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
pub(super) fn vault_tokens(shared: &Shared) -> crate::store::tokens::Tokens {
    crate::store::tokens::Tokens::new(
        std::sync::Arc::clone(&shared.admin_client),
        shared.config.vault.max_client_tokens,
    )
}

/// What a client whose token failed is told: that it is rate limited (and
/// for how long), that it sent a credential lease's password to the proxy
/// door, or only that the token is bad.
pub(super) fn client_error(
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
