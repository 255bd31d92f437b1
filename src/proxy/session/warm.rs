//! A session served from the warm pool (see [`crate::lease::warm_pool`]): the
//! claim instead of the mint and the login, with the lease registered and
//! audited exactly as a minted one.
//!
//! Any way the pool cannot serve (empty, `options` among the startup
//! parameters, a dead pooled backend, a failed or slow bind) returns `None`
//! and the session mints as usual; a role taken out of the pool and not
//! bound goes to the revoker, never back.

use std::net::SocketAddr;
use std::time::Instant;

use super::{handshake, Minted};
use crate::auth::identity::Identity;
use crate::auth::policy::Grant;
use crate::lease::end::EndReason;
use crate::lease::minted::{self, NewRole, Source};
use crate::lease::registry::{self, LeaseKind};
use crate::lease::warm_pool::Claim;
use crate::observe::logging::LogSafe;
use crate::runtime::state::Shared;

/// Claims a pooled role for this session, or `None` to mint one.
pub(super) async fn claim(
    shared: &Shared,
    identity: &Identity,
    grant: &Grant<'_>,
    startup: &handshake::Startup,
    peer: SocketAddr,
) -> Option<Minted> {
    let template = grant.template_name;
    let database = startup.database.as_str();
    if grant.template.warm_pool == 0 {
        return None;
    }
    if !crate::lease::warm_pool::can_claim(&startup.forward) {
        tracing::debug!(template, "warm pool not used: the client sent options");
        crate::observe::metrics::warm_pool_claim(template, "fallback");
        return None;
    }
    let Some(entry) = shared.warm.take(template, database) else {
        tracing::debug!(template, database, "warm pool empty: minting");
        crate::observe::metrics::warm_pool_claim(template, "miss");
        return None;
    };
    let started = Instant::now();
    let role = entry.role.clone();
    // Held until registered, so the reaper never sees it unowned.
    let minting = shared.minting(&role);
    let lease_id = registry::new_lease_id(LeaseKind::Session, template);
    let request = Claim {
        lease_id: &lease_id,
        identity: &identity.subject,
        issuer: &identity.issuer,
        ttl: grant.ttl,
        forward: &startup.forward,
    };
    let claim = crate::lease::warm_pool::claim(&shared.admin_client, entry, &request);
    let claimed = match tokio::time::timeout(shared.config.admin_operation_timeout(), claim).await {
        Ok(Ok(claimed)) => claimed,
        Ok(Err(e)) => return fall_back(shared, &role, template, database, &e.to_string()),
        Err(_) => return fall_back(shared, &role, template, database, "timed out"),
    };
    let new = NewRole {
        lease_id,
        role: claimed.role,
        template,
        database,
        identity,
        client_addr: Some(peer),
        expires_at: claimed.expires_at,
    };
    let took = started.elapsed();
    let registered = minted::register(&shared.leases, &shared.audit, new, Source::WarmPool, took);
    drop(minting);
    crate::observe::metrics::warm_pool_claim(template, "hit");
    Some(Minted {
        registered,
        // Never used: the backend is logged in already.
        password: crate::secret::Secret::new(""),
        warm: Some(Box::new(claimed.login)),
        quota: None,
    })
}

/// A claimed entry that could not be bound: its role to the revoker, the
/// session to the normal mint.
fn fall_back(
    shared: &Shared,
    role: &str,
    template: &str,
    database: &str,
    why: &str,
) -> Option<Minted> {
    tracing::warn!(
        role,
        template,
        database,
        "warm pool claim failed, minting instead: {}",
        LogSafe(why)
    );
    crate::observe::metrics::warm_pool_claim(template, "fallback");
    shared
        .revoker
        .schedule(role, database, Some(template), EndReason::Unclaimed);
    None
}
