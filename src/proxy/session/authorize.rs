//! Who the client is and whether it may have the session it asks for: the
//! password read as a Vault token or an identity token, the grant (a Vault
//! token's policies, else the template's allow lists), and what a client
//! whose token failed is told. The reasons go to the log and the audit
//! line, never to the client.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::handshake::{self, Startup};
use super::Handshake;
use crate::auth::identity::Identity;
use crate::auth::policy::Grant;
use crate::auth::token::TokenHash;
use crate::error::ClientError;
use crate::lease::quota::{self, QuotaKind};
use crate::lease::registry::LeaseKind;
use crate::observe::audit::Event;
use crate::runtime::state::{Runtime, Shared};
use crate::secret::Secret;
use crate::tls::ClientStream;

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
    runtime: &'a Runtime,
    identity: &crate::auth::identity::Identity,
    vault_token: Option<&(crate::auth::token::TokenHash, Vec<String>)>,
    template: &str,
    database: &str,
) -> Result<crate::auth::policy::Grant<'a>, crate::auth::policy::Refusal> {
    use crate::auth::policy::{authorize, authorize_with, Entitlement};
    let (config, policy) = (&runtime.config, &runtime.policy);
    let Some((_, policies)) = vault_token else {
        return authorize(config, policy, identity, template, database);
    };
    let stored = crate::control::door::policy::StoredPolicies(shared.store.clone());
    let acl = shared.policy_cache.acl(policies, &stored);
    let entitlement = Entitlement::Policies {
        acl: &acl,
        database_mount: &config.vault.database_mount,
    };
    authorize_with(config, policy, identity, template, database, entitlement)
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

/// Who a session's password says the client is.
pub(super) struct Caller {
    pub identity: Identity,
    /// The Vault token the password was, with its policies; `None` for an
    /// identity token.
    pub vault_token: Option<(TokenHash, Vec<String>)>,
}

/// The password, read within the handshake's deadline. Once it is in,
/// the handshake slot goes to the next client.
pub(super) async fn read_token(
    stream: &mut ClientStream,
    startup: &Startup,
    handshake: Handshake,
    max_token_bytes: usize,
) -> Result<Secret, (ClientError, String)> {
    let read = handshake::read_token(stream, startup, max_token_bytes);
    let token = match tokio::time::timeout_at(handshake.deadline, read).await {
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
    Ok(token)
}

/// The identity behind the password, or the refusal: every reason gets
/// the same 28P01 (or the rate limit's); the reason goes to the log and
/// the `auth.failed` line only.
pub(super) async fn authenticate(
    shared: &Shared,
    runtime: &Runtime,
    startup: &Startup,
    peer: SocketAddr,
    token: Secret,
) -> Result<Caller, (ClientError, String)> {
    let verified = verify_password(shared, runtime, peer, token.expose()).await;
    drop(token);
    let reason = match verified {
        Ok((identity, vault_token)) => {
            return Ok(Caller {
                identity,
                vault_token,
            })
        }
        Err(reason) => reason,
    };
    // The verifier's messages name a check, never a claim value.
    crate::observe::metrics::auth(false, reason.reason(), None);
    let audit_reason = format!("{}: {reason}", reason.reason());
    shared
        .audit
        .record(auth_failed(audit_reason, None, startup, peer));
    let (template, database) = (startup.template.as_str(), startup.database.as_str());
    let mut detail = format!(
        "template={template} database={database}: reason={}: {reason}",
        reason.reason()
    );
    let error = client_error(shared, &reason, template);
    if let ClientError::CredentialLease(_) = &error {
        detail.push_str(&format!("; {error}"));
    }
    Err((error, detail))
}

/// The policy's decision on the session the client asks for: a grant
/// (the template's current access request applied), or the refusal.
/// Counted and audited (`auth.ok`, `auth.failed`) either way.
pub(super) fn authorize<'a>(
    shared: &Shared,
    runtime: &'a Runtime,
    caller: &Caller,
    startup: &Startup,
    peer: SocketAddr,
) -> Result<Grant<'a>, (ClientError, String)> {
    let identity = &caller.identity;
    let (template, database) = (startup.template.as_str(), startup.database.as_str());
    let vault_token = caller.vault_token.as_ref();
    let authorized = session_grant(shared, runtime, identity, vault_token, template, database)
        .and_then(|mut grant| {
            shared.require_approval(&mut grant, identity)?;
            Ok(grant)
        });
    let grant = match authorized {
        Ok(grant) => grant,
        Err(refusal) => {
            crate::observe::metrics::auth(false, refusal.error.kind(), Some(&identity.issuer));
            let reason = format!("{}: {}", refusal.error.kind(), refusal.rule);
            shared
                .audit
                .record(auth_failed(reason, Some(identity), startup, peer));
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
    Ok(grant)
}

/// The `auth.failed` line: the reason, and the identity when the token
/// named one.
fn auth_failed(
    reason: String,
    identity: Option<&Identity>,
    startup: &Startup,
    peer: SocketAddr,
) -> Event {
    Event::AuthFailed {
        reason,
        issuer: identity.map(|i| i.issuer.clone()),
        identity: identity.map(|i| i.subject.clone()),
        client_addr: peer.to_string(),
        template: startup.template.clone(),
        database: startup.database.clone(),
    }
}

/// Room for one more session of an allowed client: none while too many
/// roles wait to be revoked, else the principal's own share of this
/// instance (`[quotas]`) and the template's (its own caps), held for the
/// session's life.
pub(super) fn admit(
    shared: &Shared,
    identity: &Identity,
    template: quota::Template<'_>,
    peer: SocketAddr,
) -> Result<quota::Slot, (ClientError, String)> {
    let (caps, template) = (template, template.name);
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
    shared
        .quotas
        .take(
            QuotaKind::Sessions,
            &identity.issuer,
            &identity.subject,
            caps,
        )
        .map_err(|refused| {
            let event = quota::refusal_event(&refused, identity, template, Some(peer));
            shared.audit.record(event);
            let detail = format!(
                "identity={:?} issuer={} template={template}: {refused}",
                identity.subject, identity.issuer
            );
            (ClientError::QuotaExceeded(refused.to_string()), detail)
        })
}
