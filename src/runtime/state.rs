//! What every session and every request shares: the config, TLS, the
//! token verifier, the admin-database client, the lease registry, the
//! revoker and the audit log. (What only the proxy's sessions share, the
//! cancel keys and the kernel splice, is [`crate::proxy::Proxy`].)
//!
//! It lives apart from the accept loop (`server`) and from the sessions
//! (`session`) so that neither of those needs the other: the server builds
//! a [`Shared`] and hands it to each session it spawns.
//!
//! What SIGHUP may change (templates, policy, issuers and keys, static
//! tokens, client certificates) is one [`Runtime`] behind an [`ArcSwap`]:
//! a session takes it once, at its start, and keeps that view to the end of
//! its handshake, so a reload never changes a session half-way (see
//! `reload`).

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashSet;

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::identity::Verifier;
use crate::auth::policy::Policy;
use crate::config::Config;
use crate::lease::registry::Leases;
use crate::lease::revoker::Revoker;
use crate::lease::warm_pool::WarmPool;
use crate::observe::audit::Audit;
use crate::pg::AdminClient;

/// What a reload replaces as one piece.
pub struct Runtime {
    /// The config as last loaded; its templates and `[auth]` are current.
    /// `roles` holds the config file's templates and those written
    /// through the API (see `templates.rs`).
    pub config: Config,
    /// TLS for clients; `None` when only plaintext is configured.
    pub client_tls: Option<TlsAcceptor>,
    /// Checks identity tokens. Dropping it (when the last session that
    /// took a runtime holding it lets go) stops its JWKS refresh tasks.
    /// Shared by the runtimes a store change swaps in.
    pub verifier: Arc<Verifier>,
    /// The templates of `config.roles` that came from the store; the
    /// others are the config file's.
    pub stored_templates: BTreeSet<String>,
    /// The allow lists of `config.roles`, compiled once per runtime (not
    /// once per connection); `auth::policy::authorize` takes both.
    pub policy: Policy,
}

impl Runtime {
    /// Builds everything a reload swaps from a validated config: the
    /// client TLS, the token verifier and the compiled policy. Certificates
    /// and keys are read here, so a bad file fails the build and nothing is
    /// swapped. Touches
    /// no network; call [`Runtime::start`] once it is in use.
    pub fn build(config: Config) -> anyhow::Result<Runtime> {
        let client_tls = match (&config.proxy.tls_cert, &config.proxy.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsAcceptor::from(crate::tls::server_config(cert, key)?))
            }
            _ => None,
        };
        let verifier = Verifier::from_config(&config.auth)?;
        let policy = Policy::compile(&config);
        Ok(Runtime {
            config,
            client_tls,
            verifier: Arc::new(verifier),
            stored_templates: BTreeSet::new(),
            policy,
        })
    }

    /// The rules a credential lease is decided by, from this runtime.
    pub fn creds_rules<'a>(
        &'a self,
        approvals: &'a (dyn crate::lease::creds::Approvals + Sync),
    ) -> crate::lease::creds::Rules<'a> {
        crate::lease::creds::Rules {
            config: &self.config,
            policy: &self.policy,
            approvals,
        }
    }

    /// Starts the verifier's JWKS refresh tasks (needs a tokio runtime).
    pub fn start(&self) {
        self.verifier.start_refresh();
    }
}

/// What every session shares.
pub struct Shared {
    /// The config the server started with: the settings that need a
    /// restart (listen address, backend, admin pool, timeouts, `[mint]`).
    /// Templates and `[auth]` are read from [`Shared::runtime`] instead.
    pub config: Config,
    /// What SIGHUP reloads; take it with [`Shared::runtime`].
    pub runtime: ArcSwap<Runtime>,
    /// TLS for backend connections; `None` for plaintext.
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
    /// Creates, renews and drops roles over the admin pool.
    pub admin_client: Arc<AdminClient>,
    /// Live leases and their deadlines.
    pub leases: Arc<Leases>,
    /// Where every role goes when its lease is over; retries until done.
    pub revoker: Arc<Revoker>,
    /// The audit log (`[audit] path`); a disabled one writes nothing.
    pub audit: Audit,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
    /// What each principal holds of this instance (`[quotas]`).
    pub quotas: Arc<crate::lease::quota::Quotas>,
    /// Roles whose mint is in flight on this instance: committed, perhaps,
    /// but not yet registered as a lease. The reaper must not take them for
    /// orphans (a mint slowed by a busy server can outlast a short
    /// `reap_grace`). At most one entry per session slot.
    pub minting: DashSet<String>,
    /// Roles minted ahead with their backends logged in, for templates with
    /// `warm_pool > 0`; filled by `warm_pool::Filler`, claimed by sessions.
    pub warm: WarmPool,
    /// What is written through the API (templates, policies, auth roles),
    /// kept in the admin database and current on every instance.
    pub store: crate::store::Store,
    /// Stored Vault policies, compiled (a Vault token's session asks them).
    pub policy_cache: crate::auth::acl::PolicyCache,
}

impl Shared {
    /// The current runtime (templates, policy, verifier, client TLS).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Runs the reaper of this server until `stop` (see `lease::reaper`):
    /// it is given the admin client, the revoker, the audit log and its
    /// settings, and asks [`Shared::holds_role`] whether a role is held.
    pub async fn run_reaper(self: Arc<Self>, stop: CancellationToken) {
        let setup = crate::lease::reaper::Setup::new(
            &self.config,
            Arc::clone(&self.admin_client),
            Arc::clone(&self.revoker),
            self.audit.clone(),
        );
        crate::lease::reaper::run(setup, move |role| self.holds_role(role), stop).await;
    }

    /// Whether a live lease of this instance holds `role`: the question the
    /// reaper asks before it sweeps a role with no backend.
    pub fn holds_role(&self, role: &str) -> bool {
        self.minting.contains(role)
            || self.leases.holds_role(role)
            || self.revoker.is_pending(role)
            || self.warm.holds(role)
    }

    /// For a template with an `approval` rule: the current grant (an
    /// approved access request in the store) of `identity`, whose end then
    /// caps the lease; the refusal naming `rolemint request` without one.
    /// One check for the proxy door and for `database/creds`.
    pub fn require_approval(
        &self,
        grant: &mut crate::auth::policy::Grant<'_>,
        identity: &crate::auth::identity::Identity,
    ) -> Result<(), crate::auth::policy::Refusal> {
        if grant.template.approval.is_none() {
            return Ok(());
        }
        let snapshot = self.store.snapshot();
        let requests = crate::auth::access::parse_all(
            snapshot
                .iter(crate::store::Kind::AccessRequest)
                .map(|(_, s)| &s.body),
        );
        crate::auth::policy::require_approval(
            grant,
            identity,
            &requests,
            std::time::SystemTime::now(),
        )
    }

    /// For a template with an `approval` rule: when the grant that covers
    /// `(issuer, identity)` on it now ends. A renewal never carries a lease
    /// past it: the grant's end ends the sessions opened under it, whatever
    /// the lease TTL says.
    pub fn grant_end(&self, issuer: &str, identity: &str, template: &str) -> GrantEnd {
        let runtime = self.runtime();
        let needs_grant = runtime
            .config
            .template(template)
            .is_some_and(|t| t.approval.is_some());
        if !needs_grant {
            return GrantEnd::NoApproval;
        }
        let snapshot = self.store.snapshot();
        let requests = crate::auth::access::parse_all(
            snapshot
                .iter(crate::store::Kind::AccessRequest)
                .map(|(_, s)| &s.body),
        );
        let who = crate::auth::access::Principal {
            issuer: issuer.to_owned(),
            identity: identity.to_owned(),
        };
        let now = std::time::SystemTime::now();
        match crate::auth::access::active_grant(&requests, &who, template, now) {
            Some(grant) => GrantEnd::At(
                std::time::SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_secs(grant.granted_until.unwrap_or(0)),
                grant.id.clone(),
            ),
            None => GrantEnd::Lapsed,
        }
    }

    /// What credential leases use of the server.
    pub fn creds_services(&self) -> crate::lease::creds::Services {
        crate::lease::creds::Services {
            admin_client: Arc::clone(&self.admin_client),
            leases: Arc::clone(&self.leases),
            revoker: Arc::clone(&self.revoker),
            quotas: Arc::clone(&self.quotas),
            audit: self.audit.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Marks `role` as being minted here until the returned guard drops
    /// (after the lease is registered, or the failed mint handed to the
    /// revoker).
    pub fn minting(&self, role: &str) -> Minting<'_> {
        self.minting.insert(role.to_owned());
        Minting {
            shared: self,
            role: role.to_owned(),
        }
    }
}

impl crate::lease::creds::Approvals for Shared {
    fn require(
        &self,
        grant: &mut crate::auth::policy::Grant<'_>,
        identity: &crate::auth::identity::Identity,
    ) -> Result<(), crate::auth::policy::Refusal> {
        self.require_approval(grant, identity)
    }
}

/// See [`Shared::grant_end`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantEnd {
    /// The template has no `approval` rule: no grant bounds its leases.
    NoApproval,
    /// The grant (its request id) ends at this time.
    At(std::time::SystemTime, String),
    /// No grant covers the principal any more (ended, revoked).
    Lapsed,
}

/// See [`Shared::minting`].
pub struct Minting<'a> {
    shared: &'a Shared,
    role: String,
}

impl Drop for Minting<'_> {
    fn drop(&mut self) {
        self.shared.minting.remove(&self.role);
    }
}
