//! A session served from the warm pool (see [`crate::lease::warm_pool`]): the
//! claim instead of the mint and the login, with the lease registered and
//! audited exactly as a minted one.
//!
//! Any way the pool cannot serve (empty, `options` among the startup
//! parameters, a dead pooled backend, a failed or slow bind) returns `None`
//! and the session mints as usual; a role taken out of the pool and not
//! bound goes to the revoker, never back.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use super::{handshake, Minted};
use crate::auth::identity::Identity;
use crate::auth::policy::Grant;
use crate::lease::registry::{self, Lease, LeaseKind, NewLease};
use crate::lease::revoker::Why;
use crate::lease::warm_pool::Claim;
use crate::observe::audit::Event;
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
    let registered = shared.leases.register(Lease::new(NewLease {
        id: lease_id,
        role: claimed.role,
        template: template.to_owned(),
        database: database.to_owned(),
        identity: identity.subject.clone(),
        issuer: identity.issuer.clone(),
        groups: identity.groups.clone(),
        client_addr: Some(peer),
        issued_at: SystemTime::now(),
        expires_at: claimed.expires_at,
    }));
    drop(minting);
    crate::observe::metrics::warm_pool_claim(template, "hit");
    let lease = &registered.lease;
    tracing::info!(
        lease = %lease.id, role = %lease.role, identity = %LogSafe(&lease.identity),
        template = %lease.template, database, %peer,
        claim_ms = started.elapsed().as_millis() as u64,
        "lease minted from the warm pool"
    );
    shared.audit.record(Event::LeaseMinted {
        lease_id: lease.id.clone(),
        role: lease.role.clone(),
        identity: lease.identity.clone(),
        issuer: lease.issuer.clone(),
        groups: lease.groups.clone(),
        template: lease.template.clone(),
        database: lease.database.clone(),
        expire_time: humantime::format_rfc3339_seconds(claimed.expires_at).to_string(),
        client_addr: Some(peer.to_string()),
    });
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
        .schedule(role, database, Some(template), Why::Unclaimed);
    None
}
