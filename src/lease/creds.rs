//! Credential leases: a username and password handed to a workload that
//! logs in to PostgreSQL directly (the Vault-compatible
//! `GET /v1/database/creds/<template>`), rather than through the proxy.
//!
//! A credential role is minted exactly as a session's (same template,
//! policy, `rolemint_managed` marker and lease comment, with kind `creds`),
//! plus membership of `rolemint_direct`, so pg_hba can let it in from
//! anywhere while proxied roles are only let in from rolemint's address.
//!
//! A credential lease has no session to end it, so it is registered in the
//! lease registry like a session's (its deadline fires there) and a small
//! task waits for its end: expiry or revocation hands the role to the
//! revoker, which terminates the role's backends and drops it. Those tasks
//! are bounded by `vault.max_credential_leases`, and one principal's by
//! its quota (`[quotas] max_credential_leases_per_principal`).
//!
//! At shutdown a credential lease is *not* revoked: as in Vault, the
//! credentials outlive a restart. The role carries its expiry (`VALID
//! UNTIL` and the comment), and the reaper of any instance drops it, its
//! backends terminated, once that has passed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::auth::identity::Identity;
use crate::auth::policy::{authorize_with, Entitlement, Grant, Policy, Refusal};
use crate::config::Config;
use crate::lease::end::EndReason;
use crate::lease::minted::{self, NewRole, Source};
use crate::lease::quota::{self, QuotaKind, Quotas};
use crate::lease::registry::{self, LeaseKind, Leases, Registered};
use crate::lease::revoker::Revoker;
use crate::observe::audit::Audit;
use crate::pg::{AdminClient, MintRequest, MintedRole, DIRECT_MARKER_ROLE};
use crate::secret::Secret;

/// Why no credentials were issued. The `Display` text is what the caller
/// may be told.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error("unknown role: {0}")]
    UnknownTemplate(String),
    /// The policy refused; the rule is for the log only.
    #[error("permission denied")]
    NotAllowed { rule: String },
    /// The template needs an approved access request; the message says how
    /// to ask for one.
    #[error("{0}")]
    NeedsApproval(String),
    #[error("too many credential leases; try again later")]
    TooMany,
    #[error("rolemint is shutting down")]
    ShuttingDown,
    /// The principal is at one of its quotas (`[quotas]`).
    #[error("{0}")]
    Quota(crate::lease::quota::QuotaExceeded),
    /// `mint.max_pending_revocations` roles wait to be revoked.
    #[error("too many roles are waiting to be revoked; try again later")]
    Backlog,
    /// The mint failed or timed out; the detail is for the log only.
    #[error("could not create the credentials")]
    Mint(String),
}

/// Credentials just minted: the one place a password leaves rolemint.
#[derive(Debug)]
pub struct Issued {
    /// `database/creds/<template>/<random>`.
    pub lease_id: String,
    pub username: String,
    /// 256 random bits; PostgreSQL only ever saw its SCRAM verifier.
    pub password: Secret,
    /// The lease's TTL, whole seconds.
    pub lease_duration: Duration,
    pub template: String,
    pub database: String,
    pub expires_at: SystemTime,
}

/// What credential leases need of the server, and nothing more.
pub struct Services {
    pub admin_client: Arc<AdminClient>,
    /// Where a credential lease is registered (its deadline fires there).
    pub leases: Arc<Leases>,
    /// Where its role goes when it ends, or when its mint failed.
    pub revoker: Arc<Revoker>,
    pub quotas: Arc<Quotas>,
    pub audit: Audit,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
}

/// Applies a template's approval rule (`approval`) to a grant: the grant
/// of a current access request caps it; without one, the refusal names
/// `rolemint request`. One check for the proxy door and for `creds`.
pub trait Approvals {
    fn require(&self, grant: &mut Grant<'_>, identity: &Identity) -> Result<(), Refusal>;
}

/// The rules a request is decided by, as currently loaded (SIGHUP and
/// store changes swap them), like a session's.
pub struct Rules<'a> {
    pub config: &'a Config,
    /// The templates' allow lists, compiled.
    pub policy: &'a Policy,
    pub approvals: &'a (dyn Approvals + Sync),
}

/// Issues credential leases, at most `vault.max_credential_leases` live at
/// once on this instance.
pub struct Credentials {
    live: Arc<Semaphore>,
    services: Arc<Services>,
}

impl Credentials {
    pub fn new(max_live: usize, services: Services) -> Credentials {
        Credentials {
            live: Arc::new(Semaphore::new(max_live.max(1))),
            services: Arc::new(services),
        }
    }

    /// Mints credentials of `template` for `identity`: policy as for a
    /// session, on the template's first database.
    pub async fn issue(
        &self,
        rules: Rules<'_>,
        identity: &Identity,
        template: &str,
        client_addr: Option<SocketAddr>,
        entitlement: Entitlement<'_>,
    ) -> Result<Issued, CredsError> {
        let services = &*self.services;
        let permit = self.admit()?;
        let (grant, database) = authorize(&rules, identity, template, entitlement)?;
        let quota = take_quota(services, identity, &grant, client_addr)?;
        let started = Instant::now();
        let lease_id = registry::new_lease_id(LeaseKind::Creds, grant.template_name);
        let request = MintRequest {
            identity,
            template_name: grant.template_name,
            template: grant.template,
            database: &database,
            ttl: grant.ttl,
            lease_id: &lease_id,
        };
        let role = mint(services, rules.config, &request).await?;
        let new = NewRole {
            lease_id: lease_id.clone(),
            role: role.name.clone(),
            template: grant.template_name,
            database: &database,
            identity,
            client_addr,
            expires_at: role.expires_at,
        };
        let took = started.elapsed();
        let registered = minted::register(
            &services.leases,
            &services.audit,
            new,
            Source::Credentials,
            took,
        );
        watch(Arc::clone(&self.services), registered, (permit, quota));
        Ok(Issued {
            lease_id,
            username: role.name,
            password: role.password,
            lease_duration: grant.ttl,
            template: grant.template_name.to_owned(),
            database,
            expires_at: role.expires_at,
        })
    }

    /// Room for one more credential lease: not while shutting down or
    /// while too many roles wait to be revoked, and at most
    /// `vault.max_credential_leases` at once.
    fn admit(&self) -> Result<OwnedSemaphorePermit, CredsError> {
        if self.services.shutdown.is_cancelled() {
            return Err(CredsError::ShuttingDown);
        }
        if self.services.revoker.backlogged() {
            return Err(CredsError::Backlog);
        }
        Arc::clone(&self.live)
            .try_acquire_owned()
            .map_err(|_| CredsError::TooMany)
    }
}

/// The policy's grant of `template` to `identity` (its access request
/// applied), on the template's first database.
fn authorize<'a>(
    rules: &Rules<'a>,
    identity: &Identity,
    template: &str,
    entitlement: Entitlement<'_>,
) -> Result<(Grant<'a>, String), CredsError> {
    let config = rules.config;
    let database = config
        .template(template)
        .and_then(|t| t.databases.first())
        .ok_or_else(|| CredsError::UnknownTemplate(template.to_owned()))?
        .clone();
    let mut grant = authorize_with(
        config,
        rules.policy,
        identity,
        template,
        &database,
        entitlement,
    )
    .map_err(|refusal| CredsError::NotAllowed { rule: refusal.rule })?;
    rules
        .approvals
        .require(&mut grant, identity)
        .map_err(|refusal| CredsError::NeedsApproval(refusal.error.to_string()))?;
    Ok((grant, database))
}

/// The principal's own share (`[quotas]`), held until the lease ends; a
/// refusal is audited.
fn take_quota(
    services: &Services,
    identity: &Identity,
    grant: &Grant<'_>,
    client_addr: Option<SocketAddr>,
) -> Result<quota::Slot, CredsError> {
    let template = quota::Template::of(grant.template_name, grant.template);
    services
        .quotas
        .take(
            QuotaKind::CredentialLeases,
            &identity.issuer,
            &identity.subject,
            template,
        )
        .map_err(|refused| {
            let event = quota::refusal_event(&refused, identity, template.name, client_addr);
            services.audit.record(event);
            CredsError::Quota(refused)
        })
}

/// Mints the credential role: the template's statements plus membership
/// of `rolemint_direct`. A failed or timed-out mint's role goes to the
/// revoker, as a session's does.
async fn mint(
    services: &Services,
    config: &Config,
    request: &MintRequest<'_>,
) -> Result<MintedRole, CredsError> {
    let mut direct = request.template.clone();
    direct.creation_statements.push(format!(
        "GRANT {} TO \"{{{{name}}}}\"",
        postgres_protocol::escape::escape_identifier(DIRECT_MARKER_ROLE)
    ));
    let request = MintRequest {
        template: &direct,
        ..*request
    };
    let prepared = services
        .admin_client
        .render_mint(&request)
        .map_err(|e| CredsError::Mint(e.to_string()))?;
    let created = tokio::time::timeout(
        config.admin_operation_timeout(),
        services.admin_client.create(&prepared),
    )
    .await;
    let statement_timeout = services.admin_client.statement_timeout();
    let template = request.template_name;
    minted::settle(
        &services.revoker,
        statement_timeout,
        &prepared,
        template,
        created,
    )
    .map_err(|failure| CredsError::Mint(format!("role {}: {failure}", prepared.role.name)))?;
    Ok(prepared.role)
}

/// Registers the lease and waits, on its own task, for it to end: expiry
/// or revocation hands the role to the revoker; shutdown leaves it to its
/// `VALID UNTIL` and the reaper. The permit is held until then.
fn watch(
    services: Arc<Services>,
    registered: Registered,
    permit: (OwnedSemaphorePermit, quota::Slot),
) {
    tokio::spawn(async move {
        let lease = Arc::clone(&registered.lease);
        let reason = lease.ended().await;
        match reason {
            EndReason::Shutdown => tracing::info!(
                lease = %lease.id, role = %lease.role,
                "credential lease left to its expiry: it outlives this instance"
            ),
            _ => {
                // With its lease id, so the `lease.revoked` line names it.
                services.revoker.schedule_lease(
                    &lease.id,
                    &lease.role,
                    &lease.database,
                    Some(&lease.template),
                    reason,
                );
                tracing::info!(
                    lease = %lease.id, role = %lease.role, reason = reason.as_str(),
                    "credential lease ended; role handed to the revoker"
                );
            }
        }
        // The revoker holds the role now (the reaper asks either).
        drop(registered);
        drop(permit);
    });
}
