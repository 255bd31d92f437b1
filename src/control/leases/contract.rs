//! What the lease API asks of a directory of leases: the
//! [`LeaseDirectory`] trait (implemented over the lease registry in
//! `control/directory.rs`, and in memory for tests), the types it speaks
//! in (a lease as shown, filters, pages, renewals), its errors, and the
//! one renewal rule every directory shares.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize, Serializer};

use crate::control::vault::ApiError;
use crate::lease::end::EndReason;
use crate::lease::registry::LeaseKind;

/// Largest `increment` a renewal may ask for. Every lease is capped at its
/// template's `max_ttl` (at most 7 days) anyway; past this bound the number
/// is nonsense, and near `u64::MAX` seconds `now + increment` would
/// overflow the clock.
pub const MAX_INCREMENT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Most leases one page of a listing holds: bounds the memory of a page
/// (and of the answer of `/v1/rolemint/leases`, which pages explicitly).
pub const MAX_PAGE: usize = 1_000;

/// Leases per directory read while a `LIST` gathers every key. A catalog
/// read costs about the same whatever its size when PostgreSQL plans it by
/// reading every managed role first (at 100,000 leases ~250 ms a read),
/// so ten times fewer reads make the whole list up to ten times faster.
/// Bounded: a read of this many rows is a few MiB, and only the keys are
/// kept.
pub const LIST_PAGE: usize = 10_000;

/// Most keys one `LIST` answers. Vault's clients expect the whole list, so
/// the directory is read to its end; this bounds the answer (about 50 MB of
/// keys) and is far beyond the leases one cluster holds. A prefix with more
/// keys gets an error that says so, never a silently cut list.
pub const MAX_LIST_KEYS: usize = 1_000_000;

/// A boxed future, so the directory can sit behind `Arc<dyn ...>`.
pub type DirFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LeaseApiError>> + Send + 'a>>;

/// What the directory can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseApiError {
    #[error("lease not found")]
    NotFound,
    #[error("past the max TTL, cannot renew")]
    PastMaxTtl,
    #[error("lease is not renewable")]
    NotRenewable,
    #[error("{0}")]
    BadRequest(String),
    /// The directory cannot answer now (backend down, not wired).
    #[error("{0}")]
    Unavailable(String),
    /// A failure whose detail is for the log, not the caller.
    #[error("internal error")]
    Internal(String),
}

impl From<LeaseApiError> for ApiError {
    fn from(e: LeaseApiError) -> ApiError {
        match &e {
            LeaseApiError::NotFound
            | LeaseApiError::PastMaxTtl
            | LeaseApiError::NotRenewable
            | LeaseApiError::BadRequest(_) => ApiError::bad_request(e.to_string()),
            LeaseApiError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            LeaseApiError::Internal(detail) => {
                tracing::error!("lease API: {detail}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

/// One lease as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseView {
    /// `database/sessions/<template>/<random>` or `database/creds/...`.
    pub id: String,
    #[serde(serialize_with = "rfc3339")]
    pub issue_time: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub expire_time: SystemTime,
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_renewal: Option<SystemTime>,
    pub renewable: bool,
    /// Seconds left.
    pub ttl: u64,
    pub identity: String,
    /// The issuer entry of `identity`; empty for a lease minted before
    /// leases recorded it (operators only may act on those).
    pub issuer: String,
    pub role: String,
    pub template: String,
    pub database: String,
    pub client_addr: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub instance: String,
    pub kind: LeaseKind,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// Which leases: every set field must match (all unset: every lease).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseFilter {
    pub identity: Option<String>,
    /// With `identity`: the issuer entry of the principal.
    pub issuer: Option<String>,
    pub template: Option<String>,
    pub database: Option<String>,
    /// Lease ids starting with this.
    #[serde(skip)]
    pub prefix: Option<String>,
}

impl LeaseFilter {
    pub fn matches(&self, lease: &LeaseView) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.identity, &lease.identity)
            && eq(&self.issuer, &lease.issuer)
            && eq(&self.template, &lease.template)
            && eq(&self.database, &lease.database)
            && self
                .prefix
                .as_deref()
                .is_none_or(|p| lease.id.starts_with(p))
    }

    pub(super) fn is_unrestricted(&self) -> bool {
        self.identity.is_none()
            && self.issuer.is_none()
            && self.template.is_none()
            && self.database.is_none()
            && self.prefix.is_none()
    }
}

/// Which page of a listing: the leases after the marker `after` (the
/// `next` of the page before; `None` for the first), at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: usize,
}

impl PageRequest {
    /// The first read of a whole listing: [`LIST_PAGE`] leases.
    pub fn first() -> PageRequest {
        PageRequest {
            after: None,
            limit: LIST_PAGE,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeasePage {
    /// At most the page's `limit`; maybe fewer, even none, when `next` is
    /// set (the directory filters after it reads).
    pub leases: Vec<LeaseView>,
    /// The marker the next page starts after; `None` on the last page.
    /// Opaque to callers: each directory orders its leases its own way.
    pub next: Option<String>,
}

/// The outcome of a renewal.
#[derive(Debug, Clone, PartialEq)]
pub struct Renewed {
    /// The lease with its new expiry.
    pub lease: LeaseView,
    /// The increment asked for (or the template's default TTL).
    pub requested: Duration,
    /// What was granted: shorter than `requested` when capped at max_ttl.
    pub granted: Duration,
}

/// The new expiry of a renewal: `now + increment`, capped at
/// `issue_time + max_ttl`. A lease whose expiry already is at the cap (or
/// past it) cannot be renewed. For directories to share one rule.
pub fn renewal(
    issue_time: SystemTime,
    expire_time: SystemTime,
    max_ttl: Duration,
    now: SystemTime,
    increment: Duration,
) -> Result<(SystemTime, Duration), LeaseApiError> {
    let cap = issue_time
        .checked_add(max_ttl)
        .ok_or_else(|| LeaseApiError::BadRequest("max_ttl out of range".into()))?;
    // Within a second of the cap counts as at it: expiries are whole
    // seconds (VALID UNTIL), so a capped lease may sit a fraction below.
    let at_cap = cap
        .duration_since(expire_time)
        .map_or(true, |left| left < Duration::from_secs(1));
    if at_cap || now >= cap {
        return Err(LeaseApiError::PastMaxTtl);
    }
    match now.checked_add(increment) {
        Some(expiry) if expiry < cap => Ok((expiry, increment)),
        // At or past the cap, or beyond what the clock can hold: capped.
        _ => {
            let granted = cap.duration_since(now).unwrap_or_default();
            Ok((cap, Duration::from_secs(granted.as_secs())))
        }
    }
}

/// The leases rolemint knows, wherever they live. Implemented over the
/// lease registry (and, in tests, in memory: `memory.rs`).
pub trait LeaseDirectory: Send + Sync + 'static {
    /// A page of the leases matching `filter`; a listing reads pages until
    /// one has no `next`.
    fn list(&self, filter: LeaseFilter, page: PageRequest) -> DirFuture<'_, LeasePage>;
    /// One lease, or `None`.
    fn lookup(&self, lease_id: String) -> DirFuture<'_, Option<LeaseView>>;
    /// Moves the lease's deadline (and the role's VALID UNTIL) by
    /// `increment` from now, `None` meaning the template's default TTL;
    /// capped as [`renewal`] says.
    fn renew(&self, lease_id: String, increment: Option<Duration>) -> DirFuture<'_, Renewed>;
    /// Ends a lease: its session gets 57P01, its backend is terminated, its
    /// role dropped. With `sync`, resolves once the role is gone and the
    /// `lease.revoked` audit line is written. `false` when there was no
    /// such lease.
    fn revoke(&self, lease_id: String, by: EndReason, sync: bool) -> DirFuture<'_, bool>;
    /// Revokes every lease matching `filter`, however many there are: a
    /// directory that reads them in pages goes on to the last page (also
    /// when the caller stops waiting). With `sync`, resolves when all are
    /// revoked, with how many, or with an error when that did not happen
    /// in time (the revocation goes on); without, once it is under way,
    /// with how many were begun by then.
    fn revoke_matching(
        &self,
        filter: LeaseFilter,
        by: EndReason,
        sync: bool,
    ) -> DirFuture<'_, usize>;
}
