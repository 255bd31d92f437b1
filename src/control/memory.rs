//! A lease directory in memory: leases that are records only, with no
//! session or role behind them. It backs the lease API's own tests and the
//! `rolemint leases` command's, and shows what a directory must do.
//!
//! Test scaffolding: compiled only for this crate's tests (`cfg(test)`, or
//! the `testkit` feature that its dev-dependency on itself turns on), never
//! into `cargo build` or a release binary.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::leases::{
    renewal, DirFuture, LeaseApiError, LeaseDirectory, LeaseFilter, LeasePage, LeaseView,
    PageRequest, Renewed, MAX_PAGE,
};
use crate::lease::end::EndReason;

/// Leases by id, with each one's max TTL and default TTL.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    leases: Mutex<BTreeMap<String, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    view: LeaseView,
    default_ttl: Duration,
    max_ttl: Duration,
    revoked_by: Option<EndReason>,
}

impl MemoryDirectory {
    /// Adds a lease (its `ttl` is recomputed on every read).
    pub fn insert(&self, view: LeaseView, default_ttl: Duration, max_ttl: Duration) {
        self.lock().insert(
            view.id.clone(),
            Entry {
                view,
                default_ttl,
                max_ttl,
                revoked_by: None,
            },
        );
    }

    /// Ids of the live (not revoked) leases.
    pub fn live(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter(|e| e.revoked_by.is_none())
            .map(|e| e.view.id.clone())
            .collect()
    }

    /// Who revoked `id`, if it was.
    pub fn revoked_by(&self, id: &str) -> Option<EndReason> {
        self.lock().get(id).and_then(|e| e.revoked_by)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self, id: &str) -> Option<LeaseView> {
        self.lock()
            .get(id)
            .filter(|e| e.revoked_by.is_none())
            .map(|e| with_ttl(e.view.clone()))
    }
}

fn with_ttl(mut view: LeaseView) -> LeaseView {
    view.ttl = view
        .expire_time
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    view
}

impl LeaseDirectory for MemoryDirectory {
    fn list(&self, filter: LeaseFilter, page: PageRequest) -> DirFuture<'_, LeasePage> {
        // By lease id, the marker being the last id of the page.
        let limit = page.limit.clamp(1, MAX_PAGE);
        let leases = self.lock();
        let start = match &page.after {
            Some(after) => Bound::Excluded(after.clone()),
            None => Bound::Unbounded,
        };
        let mut found: Vec<LeaseView> = leases
            .range((start, Bound::Unbounded))
            .map(|(_, e)| e)
            .filter(|e| e.revoked_by.is_none() && filter.matches(&e.view))
            .take(limit + 1)
            .map(|e| with_ttl(e.view.clone()))
            .collect();
        let next = (found.len() > limit).then(|| {
            found.truncate(limit);
            found[limit - 1].id.clone()
        });
        Box::pin(async move {
            Ok(LeasePage {
                leases: found,
                next,
            })
        })
    }

    fn lookup(&self, lease_id: String) -> DirFuture<'_, Option<LeaseView>> {
        let found = self.current(&lease_id);
        Box::pin(async move { Ok(found) })
    }

    fn renew(&self, lease_id: String, increment: Option<Duration>) -> DirFuture<'_, Renewed> {
        let result = (|| {
            let mut leases = self.lock();
            let entry = leases
                .get_mut(&lease_id)
                .filter(|e| e.revoked_by.is_none())
                .ok_or(LeaseApiError::NotFound)?;
            if !entry.view.renewable {
                return Err(LeaseApiError::NotRenewable);
            }
            let requested = increment.unwrap_or(entry.default_ttl);
            let now = SystemTime::now();
            let (expire_time, granted) = renewal(
                entry.view.issue_time,
                entry.view.expire_time,
                entry.max_ttl,
                now,
                requested,
            )?;
            entry.view.expire_time = expire_time;
            entry.view.last_renewal = Some(now);
            Ok(Renewed {
                lease: with_ttl(entry.view.clone()),
                requested,
                granted,
            })
        })();
        Box::pin(async move { result })
    }

    fn revoke(&self, lease_id: String, by: EndReason, _sync: bool) -> DirFuture<'_, bool> {
        let found = match self.lock().get_mut(&lease_id) {
            Some(e) if e.revoked_by.is_none() => {
                e.revoked_by = Some(by);
                true
            }
            _ => false,
        };
        Box::pin(async move { Ok(found) })
    }

    fn revoke_matching(
        &self,
        filter: LeaseFilter,
        by: EndReason,
        _sync: bool,
    ) -> DirFuture<'_, usize> {
        let mut n = 0;
        for e in self.lock().values_mut() {
            if e.revoked_by.is_none() && filter.matches(&e.view) {
                e.revoked_by = Some(by);
                n += 1;
            }
        }
        Box::pin(async move { Ok(n) })
    }
}
