//! The lease directory of a running server: the lease registry of this
//! instance and the catalog of every instance, behind
//! [`LeaseDirectory`].
//!
//! The database is the record of every lease (issue 10): any instance's
//! lease API lists, looks up, renews and revokes the leases of every
//! instance. What only the holding instance knows (client address, bytes,
//! last renewal, the session to tell "lease revoked") comes from the local
//! registry when the lease is ours.
//!
//! | lease | renew | revoke |
//! |---|---|---|
//! | a session here | `VALID UNTIL` and comment, then the registry's deadline re-armed | its session ends with 57P01 "lease revoked" and hands the role to the revoker |
//! | credentials here | the same | ended in the registry, and the role handed to the revoker |
//! | another instance's | `VALID UNTIL` and comment (that instance re-reads the expiry before it ends the session) | the role handed to this revoker: NOLOGIN, its backends terminated wherever they are (the client gets the backend's 57P01), dropped |
//!
//! A lease is found by id through the lease index (`rolemint.leases`,
//! lease id to role, checked against the role's comment), and through the
//! catalog's comments when the index does not know it
//! ([`AdminClient::catalog_lease`](crate::pg::AdminClient::catalog_lease)).
//!
//! Lists and mass revocations read a page at a time ([`CATALOG_PAGE`]
//! leases) and go on to the last page: there is no bound past which leases
//! are silently left out. Lists read the catalog (keyset by role name); a
//! mass revocation reads the lease index, then the catalog for what the
//! index missed (`revoke_pages`). A
//! mass revocation (`revoke-prefix`, revoke by identity, template or
//! database) runs in a task of its own, so it reaches the last page even if
//! its caller stops waiting; it waits for each page to be settled before
//! it reads the next, so it holds one page of leases, and the revoker's
//! queue about one page, however many match. At most [`MAX_MASS_REVOKES`]
//! run at once.
//!
//! A synchronous revoke waits until the revoker has settled the role, a
//! bounded time (three quarters of `admin.request_timeout`, so the caller
//! hears this directory's answer rather than the listener's timeout). The
//! wait polls the registry and the revoker every [`POLL`]: neither offers a
//! per-role notification, and a few checks a second cost nothing next to
//! the `DROP ROLE` being waited for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::leases::{
    renewal, DirFuture, LeaseApiError, LeaseDirectory, LeaseFilter, LeasePage, LeaseView,
    PageRequest, Renewed,
};
use crate::lease::end::EndReason;
use crate::lease::registry::{Lease, LeaseKind};
use crate::pg::{CatalogFilter, CatalogLease, LeaseComment, MintError, CATALOG_PAGE};
use crate::runtime::state::{GrantEnd, Shared};

/// How often a synchronous revoke checks whether it is done.
const POLL: Duration = Duration::from_millis(25);

/// How long a session of this instance has, once told its lease was
/// revoked, to hand its role to the revoker before the directory does it
/// itself (terminating the backend under the session).
const HANDOVER: Duration = Duration::from_secs(5);

/// Mass revocations running at once; one more is refused with 503. Each
/// holds a page of leases, and they share one revoker: more at once would
/// not finish sooner.
pub const MAX_MASS_REVOKES: usize = 4;

/// The directory over the server's shared state.
#[derive(Clone)]
pub struct RegistryDirectory {
    shared: Arc<Shared>,
    /// Longest wait of a synchronous revoke.
    wait: Duration,
    /// Permits of the mass revocations under way ([`MAX_MASS_REVOKES`]).
    mass_revokes: Arc<Semaphore>,
}

impl RegistryDirectory {
    pub fn new(shared: Arc<Shared>) -> RegistryDirectory {
        let wait = shared.config.admin.request_timeout * 3 / 4;
        RegistryDirectory {
            shared,
            wait: wait.max(Duration::from_secs(1)),
            mass_revokes: Arc::new(Semaphore::new(MAX_MASS_REVOKES)),
        }
    }

    /// A live lease of this instance, or one of the catalog.
    async fn find(&self, id: &str) -> Result<Option<Found>, LeaseApiError> {
        if let Some(lease) = self.shared.leases.get(id) {
            // Ended: its role is on the way to the revoker; the lease is over.
            return Ok(lease.end_reason().is_none().then_some(Found::Local(lease)));
        }
        let remote = self
            .shared
            .admin_client
            .catalog_lease(id)
            .await
            .map_err(backend_error)?;
        Ok(remote.map(|r| Found::Remote(Box::new(r))))
    }

    /// `(default_ttl, max_ttl)` of a template of the running config.
    fn ttls(&self, template: &str) -> Option<(Duration, Duration)> {
        self.shared
            .runtime()
            .config
            .template(template)
            .map(|t| (t.default_ttl, t.max_ttl))
    }

    /// A renewal of a lease whose template needs approval stops where the
    /// grant covering its principal ends (the sessions opened under a grant
    /// end with it, whatever the lease TTL says); with no grant left it is
    /// refused.
    fn within_grant(
        &self,
        view: &LeaseView,
        now: SystemTime,
        expiry: SystemTime,
        granted: Duration,
    ) -> Result<(SystemTime, Duration), LeaseApiError> {
        let (end, request) = match self
            .shared
            .grant_end(&view.issuer, &view.identity, &view.template)
        {
            GrantEnd::NoApproval => return Ok((expiry, granted)),
            GrantEnd::Lapsed => {
                return Err(LeaseApiError::BadRequest(format!(
                    "template {} needs an access grant, and none covers this lease any more: it cannot be renewed",
                    view.template
                )))
            }
            GrantEnd::At(end, _) if expiry <= end => return Ok((expiry, granted)),
            GrantEnd::At(end, request) => (end, request),
        };
        if end <= view.expire_time + Duration::from_secs(1) {
            return Err(LeaseApiError::BadRequest(format!(
                "the lease already ends when access grant {request} does ({}): it cannot be renewed past it",
                humantime::format_rfc3339_seconds(end)
            )));
        }
        let left = end.duration_since(now).unwrap_or_default();
        Ok((end, Duration::from_secs(left.as_secs())))
    }

    fn local_view(&self, lease: &Lease) -> LeaseView {
        let expire_time = lease.expires_at();
        LeaseView {
            id: lease.id.clone(),
            issue_time: lease.issued_at,
            expire_time,
            last_renewal: lease.last_renewal(),
            renewable: self.ttls(&lease.template).is_some(),
            ttl: seconds_left(expire_time),
            identity: lease.identity.clone(),
            issuer: lease.issuer.clone(),
            role: lease.role.clone(),
            template: lease.template.clone(),
            database: lease.database.clone(),
            client_addr: lease.client_addr.map(|a| a.to_string()),
            bytes_in: lease.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            bytes_out: lease.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
            instance: self.shared.admin_client.instance().to_owned(),
            kind: lease.kind,
        }
    }

    fn remote_view(&self, lease: &CatalogLease) -> LeaseView {
        let c = &lease.comment;
        let expire_time = lease.expires_at().unwrap_or(UNIX_EPOCH);
        LeaseView {
            id: c.lease_id.clone(),
            issue_time: lease.issued_at().unwrap_or(UNIX_EPOCH),
            expire_time,
            last_renewal: None,
            // The cap counts from the issue time: without it, no renewal.
            renewable: lease.issued_at().is_some() && self.ttls(&c.template).is_some(),
            ttl: seconds_left(expire_time),
            identity: c.identity.clone(),
            issuer: c.issuer.clone(),
            role: lease.role.clone(),
            template: c.template.clone(),
            database: c.database.clone(),
            client_addr: None,
            bytes_in: 0,
            bytes_out: 0,
            instance: c.instance.clone(),
            kind: if c.kind == LeaseKind::Creds.comment_word() {
                LeaseKind::Creds
            } else {
                LeaseKind::Session
            },
        }
    }

    /// A page of the live leases matching `filter`, after the role named
    /// `after`: the catalog's, with this instance's own taken from the
    /// registry; and the marker of the next page.
    async fn page(
        &self,
        filter: &LeaseFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Found>, Option<String>), LeaseApiError> {
        let page = self
            .shared
            .admin_client
            .catalog_page(&catalog_filter(filter), after, limit)
            .await
            .map_err(backend_error)?;
        Ok((self.found(filter, page.leases), page.next))
    }

    /// A page of the live leases matching `filter` that the lease index
    /// knows, in lease-id order after the id `after`, and the marker of
    /// the next; `None` when the index is not in use.
    async fn indexed_page(
        &self,
        filter: &LeaseFilter,
        after: Option<&str>,
    ) -> Result<Option<(Vec<Found>, Option<String>)>, LeaseApiError> {
        let page = self
            .shared
            .admin_client
            .lease_index_page(&catalog_filter(filter), after, CATALOG_PAGE)
            .await
            .map_err(backend_error)?;
        Ok(page.map(|page| (self.found(filter, page.leases), page.next)))
    }

    /// Leases the catalog says are live, this instance's own taken from the
    /// registry (and left out once over there), that match `filter`.
    fn found(&self, filter: &LeaseFilter, leases: Vec<CatalogLease>) -> Vec<Found> {
        leases
            .into_iter()
            .filter_map(
                |remote| match self.shared.leases.get(&remote.comment.lease_id) {
                    // Ours, and over: not a lease any more.
                    Some(local) if local.end_reason().is_some() => None,
                    Some(local) => Some(Found::Local(local)),
                    None => Some(Found::Remote(Box::new(remote))),
                },
            )
            .filter(|f| filter.matches(&f.view(self)))
            .collect()
    }

    /// Revokes every lease matching `filter`, a page at a time, each page
    /// settled (or waited for as long as a synchronous revoke waits) before
    /// the next is read; counts the leases begun in `begun`. Ends with an
    /// error when a page could not be read, or when some revocation was
    /// still under way after its wait (the revoker goes on with it).
    ///
    /// Two passes. The lease index first (`pg/lease_index.rs`): its pages
    /// come from a range of its key, a few milliseconds each whatever the
    /// catalog holds, where a catalog page reads every minted role's
    /// membership and comments (most of a revoke-prefix's time at 100,000
    /// leases). Then the catalog, to the last page, for every lease the
    /// index did not know: a row is a hint, and a lease may have none (just
    /// minted on another instance, minted before the index, its row lost).
    /// By then the leases of the first pass can no longer log in, so the
    /// catalog's pages hold only what is left.
    async fn revoke_pages(
        self,
        filter: LeaseFilter,
        by: EndReason,
        begun: Arc<AtomicUsize>,
        _permit: OwnedSemaphorePermit,
    ) -> Result<usize, LeaseApiError> {
        let mut unsettled = 0;
        let mut after: Option<String> = None;
        // The index's next page is read, and its revocations begun, while
        // the revoker still works on the page before: the revoker is never
        // idle waiting for a read. Two pages are held at most.
        let mut previous: Vec<Revocation> = Vec::new();
        loop {
            self.still_serving()?;
            let Some((found, next)) = self.indexed_page(&filter, after.as_deref()).await? else {
                break;
            };
            let started = self.start_all(found, by, &begun);
            unsettled += settle(Arc::clone(&self.shared), previous, self.wait).await;
            previous = started;
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        // Settled before the catalog is read, which must no longer find them.
        unsettled += settle(Arc::clone(&self.shared), previous, self.wait).await;
        let mut after: Option<String> = None;
        loop {
            self.still_serving()?;
            let (found, next) = self.page(&filter, after.as_deref(), CATALOG_PAGE).await?;
            unsettled += self.revoke_found(found, by, &begun).await;
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let total = begun.load(Ordering::Relaxed);
        if unsettled > 0 {
            return Err(LeaseApiError::Unavailable(format!(
                "{unsettled} of {total} revocation(s) still under way; they are retried until done"
            )));
        }
        Ok(total)
    }

    /// Begins revoking each of `found` and waits until they are settled
    /// (at most `self.wait`); how many are still under way.
    async fn revoke_found(&self, found: Vec<Found>, by: EndReason, begun: &AtomicUsize) -> usize {
        let started = self.start_all(found, by, begun);
        settle(Arc::clone(&self.shared), started, self.wait).await
    }

    /// Begins revoking each of `found`, counted in `begun`.
    fn start_all(&self, found: Vec<Found>, by: EndReason, begun: &AtomicUsize) -> Vec<Revocation> {
        let started: Vec<Revocation> = found.into_iter().map(|f| self.start(f, by)).collect();
        begun.fetch_add(started.len(), Ordering::Relaxed);
        started
    }

    /// A mass revocation stops between pages once rolemint shuts down.
    fn still_serving(&self) -> Result<(), LeaseApiError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(LeaseApiError::Unavailable(
                "rolemint is shutting down; revoke again on another instance".into(),
            ));
        }
        Ok(())
    }

    /// Starts [`Self::revoke_pages`] in a task of its own and, with
    /// `sync`, waits for it up to `self.wait`.
    async fn revoke_every(
        &self,
        filter: LeaseFilter,
        by: EndReason,
        sync: bool,
    ) -> Result<usize, LeaseApiError> {
        let permit = Arc::clone(&self.mass_revokes)
            .try_acquire_owned()
            .map_err(|_| {
                LeaseApiError::Unavailable(format!(
                    "{MAX_MASS_REVOKES} mass revocations are under way; try again when one has finished"
                ))
            })?;
        let begun = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (dir, begun) = (self.clone(), Arc::clone(&begun));
            async move {
                let what = format!("{filter:?}");
                let result = dir.revoke_pages(filter, by, begun, permit).await;
                match &result {
                    Ok(n) => tracing::info!(filter = %what, revoked = n, "mass revocation done"),
                    Err(e) => tracing::warn!(filter = %what, "mass revocation: {e}"),
                }
                result
            }
        });
        if !sync {
            return Ok(begun.load(Ordering::Relaxed));
        }
        match tokio::time::timeout(self.wait, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(LeaseApiError::Internal(format!(
                "mass revocation task: {join}"
            ))),
            Err(_) => Err(LeaseApiError::Unavailable(format!(
                "{} lease(s) revoked or being revoked after {}s; the revocation goes on until every matching lease is revoked",
                begun.load(Ordering::Relaxed),
                self.wait.as_secs()
            ))),
        }
    }

    async fn renew_lease(
        &self,
        id: String,
        increment: Option<Duration>,
    ) -> Result<Renewed, LeaseApiError> {
        let found = self.find(&id).await?.ok_or(LeaseApiError::NotFound)?;
        let view = found.view(self);
        let (default_ttl, max_ttl) = self
            .ttls(&view.template)
            .filter(|_| view.renewable)
            .ok_or(LeaseApiError::NotRenewable)?;
        let requested = increment.unwrap_or(default_ttl);
        let now = SystemTime::now();
        let (expiry, granted) =
            renewal(view.issue_time, view.expire_time, max_ttl, now, requested)?;
        let (expiry, granted) = self.within_grant(&view, now, expiry, granted)?;
        // Whole seconds, as VALID UNTIL keeps it: the registry and the role
        // expire at the same instant.
        let expiry = whole_seconds(expiry);
        let admin_client = &self.shared.admin_client;
        let lease = match found {
            Found::Local(lease) => {
                let comment = lease.comment(admin_client.instance(), expiry);
                admin_client
                    .renew(&lease.role, &lease.database, expiry, &comment)
                    .await
                    .map_err(backend_error)?;
                let lease = self
                    .shared
                    .leases
                    .renew(&id, expiry)
                    .map_err(|_| LeaseApiError::NotFound)?;
                self.local_view(&lease)
            }
            Found::Remote(remote) => {
                // The comment stays the minting instance's, with the new expiry.
                let comment = LeaseComment {
                    expires_at: crate::pg::rfc3339(expiry),
                    ..remote.comment.clone()
                };
                admin_client
                    .renew(&remote.role, &remote.comment.database, expiry, &comment)
                    .await
                    .map_err(backend_error)?;
                let renewed = CatalogLease {
                    valid_until: Some(expiry),
                    comment,
                    ..*remote
                };
                let mut view = self.remote_view(&renewed);
                view.last_renewal = Some(now);
                view
            }
        };
        tracing::info!(lease = %id, role = %lease.role, granted_s = granted.as_secs(), "lease renewed");
        Ok(Renewed {
            lease,
            requested,
            granted,
        })
    }

    /// Begins revoking each lease, then (with `sync`) waits until all are
    /// settled. The `lease.revoked` line of each is the revoker's, written
    /// once the role is gone; with `sync` that is before this returns, and
    /// the request's own `admin.request` line (written durably, after it in
    /// the same queue) is on disk before the answer. The caller (`by`) is in
    /// that `admin.request` line.
    async fn revoke_all(
        &self,
        found: Vec<Found>,
        by: EndReason,
        sync: bool,
    ) -> Result<usize, LeaseApiError> {
        let started: Vec<Revocation> = found.into_iter().map(|f| self.start(f, by)).collect();
        let count = started.len();
        let settle = settle(Arc::clone(&self.shared), started, self.wait);
        if !sync {
            // Bounded by `self.wait`; it only re-hands a stuck session's
            // role to the revoker.
            tokio::spawn(settle);
            return Ok(count);
        }
        match settle.await {
            0 => Ok(count),
            left => Err(LeaseApiError::Unavailable(format!(
                "{left} revocation(s) still under way after {}s; they are retried until done",
                self.wait.as_secs()
            ))),
        }
    }

    /// Ends a lease here, or hands its role to the revoker.
    /// `by` is who revoked it: the session's client is told, and the
    /// revoker's `lease.revoked` line says so.
    fn start(&self, found: Found, by: EndReason) -> Revocation {
        match found {
            Found::Local(lease) => {
                // The session tells its client "lease revoked" and hands its
                // role over; credentials have no session to do so.
                lease.end(by);
                let handed = lease.kind == LeaseKind::Creds;
                if handed {
                    self.schedule(&lease.role, &lease.database, &lease.template, by);
                }
                Revocation {
                    id: lease.id.clone(),
                    role: lease.role.clone(),
                    database: lease.database.clone(),
                    template: lease.template.clone(),
                    handed,
                }
            }
            Found::Remote(remote) => {
                let CatalogLease {
                    role, comment: c, ..
                } = *remote;
                self.schedule(&role, &c.database, &c.template, by);
                Revocation {
                    id: c.lease_id,
                    role,
                    database: c.database,
                    template: c.template,
                    handed: true,
                }
            }
        }
    }

    fn schedule(&self, role: &str, database: &str, template: &str, by: EndReason) {
        self.shared
            .revoker
            .schedule(role, database, Some(template), by);
    }
}

/// The catalog's (and the index's) form of an API filter.
fn catalog_filter(filter: &LeaseFilter) -> CatalogFilter {
    CatalogFilter {
        lease_id: None,
        prefix: filter.prefix.clone(),
        identity: filter.identity.clone(),
        template: filter.template.clone(),
        database: filter.database.clone(),
    }
}

/// A lease found by id.
enum Found {
    /// Held by this instance.
    Local(Arc<Lease>),
    /// Only in the catalog: another instance's, or ours from before.
    Remote(Box<CatalogLease>),
}

impl Found {
    fn view(&self, dir: &RegistryDirectory) -> LeaseView {
        match self {
            Found::Local(lease) => dir.local_view(lease),
            Found::Remote(remote) => dir.remote_view(remote),
        }
    }
}

/// A revocation under way.
struct Revocation {
    id: String,
    role: String,
    database: String,
    template: String,
    /// This directory gave the role to the revoker itself (credentials,
    /// another instance's lease, or a session that did not hand it over in
    /// time); otherwise the session does.
    handed: bool,
}

/// Waits up to `within` until every revocation is settled: the revoker no
/// longer holds the role (and a session of ours has left the registry,
/// which it does after handing its role over). A session
/// that has not handed its role over within [`HANDOVER`] gets it revoked
/// under it. Returns how many are still under way.
async fn settle(shared: Arc<Shared>, mut left: Vec<Revocation>, within: Duration) -> usize {
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        left.retain_mut(|r| {
            let here = shared.leases.get(&r.id).is_some();
            if here && !r.handed && elapsed >= HANDOVER {
                tracing::warn!(lease = %r.id, role = %r.role, "session did not end within {HANDOVER:?} of its revocation; revoking its role under it");
                shared
                    .revoker
                    .schedule(&r.role, &r.database, Some(&r.template), EndReason::RevokedByOperator);
                r.handed = true;
            }
            // A role this directory handed over is settled once the revoker
            // is done with it, whatever became of its holder; a session's,
            // once the session has handed it over (leaving the registry
            // after) and the revoker is done.
            shared.revoker.is_pending(&r.role) || (here && !r.handed)
        });
        if left.is_empty() || elapsed >= within {
            return left.len();
        }
        tokio::time::sleep(POLL).await;
    }
}

fn seconds_left(expiry: SystemTime) -> u64 {
    expiry
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs()
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// What the caller is told when the database fails; the detail goes to the
/// log.
fn backend_error(e: MintError) -> LeaseApiError {
    match &e {
        // The role went away between the read and the change.
        MintError::NotManaged { .. } => LeaseApiError::NotFound,
        _ if e.sqlstate() == Some("42704") => LeaseApiError::NotFound,
        _ if e.is_transient() => {
            tracing::warn!("lease directory: {e}");
            LeaseApiError::Unavailable("the database is unavailable; try again".into())
        }
        _ => LeaseApiError::Internal(e.to_string()),
    }
}

impl LeaseDirectory for RegistryDirectory {
    fn list(&self, filter: LeaseFilter, page: PageRequest) -> DirFuture<'_, LeasePage> {
        Box::pin(async move {
            let (found, next) = self
                .page(&filter, page.after.as_deref(), page.limit)
                .await?;
            Ok(LeasePage {
                leases: found.iter().map(|f| f.view(self)).collect(),
                next,
            })
        })
    }

    fn lookup(&self, lease_id: String) -> DirFuture<'_, Option<LeaseView>> {
        Box::pin(async move { Ok(self.find(&lease_id).await?.map(|f| f.view(self))) })
    }

    fn renew(&self, lease_id: String, increment: Option<Duration>) -> DirFuture<'_, Renewed> {
        Box::pin(self.renew_lease(lease_id, increment))
    }

    fn revoke(&self, lease_id: String, by: EndReason, sync: bool) -> DirFuture<'_, bool> {
        Box::pin(async move {
            let Some(found) = self.find(&lease_id).await? else {
                return Ok(false);
            };
            Ok(self.revoke_all(vec![found], by, sync).await? == 1)
        })
    }

    fn revoke_matching(
        &self,
        filter: LeaseFilter,
        by: EndReason,
        sync: bool,
    ) -> DirFuture<'_, usize> {
        Box::pin(self.revoke_every(filter, by, sync))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_whole_seconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        assert_eq!(
            whole_seconds(t),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }

    #[test]
    fn database_errors_are_told_without_detail() {
        let gone = MintError::Sql {
            database: "appdb".into(),
            sqlstate: "42704".into(),
            message: "role \"v-x\" does not exist".into(),
            detail: None,
        };
        assert_eq!(backend_error(gone), LeaseApiError::NotFound);
        let down = MintError::Connect {
            database: "postgres".into(),
            sqlstate: None,
            message: "connection refused".into(),
        };
        let e = backend_error(down);
        assert!(
            matches!(&e, LeaseApiError::Unavailable(m) if !m.contains("refused")),
            "{e:?}"
        );
        let denied = MintError::Sql {
            database: "appdb".into(),
            sqlstate: "42501".into(),
            message: "permission denied".into(),
            detail: None,
        };
        assert_eq!(backend_error(denied).to_string(), "internal error");
    }
}
